//! `rbuild info`, and the store's snapshotter (chosen once per store, see [`rbuild_executor::snapshotter`]).

use crate::rootless::Mode;
use crate::{Env, open_store};
use anyhow::Result;
use rbuild_executor::userns::{self, Mapping};
use std::process::ExitCode;

/// `rbuild info`: what a build here would use.
pub fn info(env: &Env, mode: &Mode) -> Result<ExitCode> {
    let store = open_store(env)?;
    println!("store: {}", env.root.display());
    match rbuild_builder::choose_snapshotter(&store, env.snapshotter) {
        Ok(s) => println!("snapshotter: {}", s.name()),
        Err(e) => println!("snapshotter: none works here ({e:#})"),
    }
    let runc = rbuild_executor::reap::find_runc();
    println!("runtime: {}", runc.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "runc not found".into()));
    println!("network: private namespace per build through slirp4netns (--network none|host to change)");
    let limits = rbuild_executor::runtime::cgroups::limits_available();
    println!("cgroup limits: {}", if limits { "applied" } else { "not available (no delegated cgroup v2 subtree)" });
    match mode {
        Mode::Root => println!("rootless: no (root)"),
        Mode::UserNamespace(Some(Mapping { host_uid, ranges, .. })) => {
            println!("rootless: yes (uid {host_uid}, {})", if *ranges { "subordinate ranges" } else { "single id" });
        }
        Mode::UserNamespace(None) => println!("rootless: yes (started in a user namespace)"),
    }
    for (kind, file) in [("uid", "/proc/self/uid_map"), ("gid", "/proc/self/gid_map")] {
        let map = std::fs::read_to_string(file).unwrap_or_default();
        let lines: Vec<String> =
            map.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).filter(|l| !l.is_empty()).collect();
        println!("{kind} map (inside host count): {}", lines.join(", "));
    }
    if let Mode::UserNamespace(Some(info)) = mode
        && !info.ranges
    {
        println!("hint: {}", userns::subid_hint(&userns::user_name(info.host_uid)));
    }
    Ok(ExitCode::SUCCESS)
}
