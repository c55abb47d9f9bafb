//! `RUN --security=insecure` (issue 12): with `--allow security.insecure` the step runs privileged as BuildKit's
//! insecure mode does (every capability, no seccomp filter, the host's devices, mounts allowed); without the
//! entitlement the build is refused at the step's line; the mode is part of the step's cache key.

use crate::support::{Workspace, require};
use std::path::Path;

/// The effective capability mask of a privileged step: every capability rbuild holds (this test's own, as rbuild
/// is its child), of the 41 the OCI spec knows.
fn all_caps_mask() -> String {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let own = status.lines().find_map(|l| l.strip_prefix("CapEff:")).expect("CapEff");
    let own = u64::from_str_radix(own.trim(), 16).expect("hex");
    format!("{:016x}", own & ((1u64 << 41) - 1))
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// `RUN [--security=insecure] <probe>` exported to a local directory.
fn probe_dockerfile(insecure: bool) -> String {
    let flag = if insecure { "--security=insecure " } else { "" };
    format!(
        "FROM base\nRUN {flag}sh -c 'grep CapEff /proc/self/status > /capeff; grep Seccomp: /proc/self/status > \
         /seccomp; ls /dev > /devs; mkdir -p /m && mount -t tmpfs none /m && echo yes > /mounted || echo no > \
         /mounted'\n"
    )
}

#[test]
fn insecure_step_runs_privileged_only_with_the_entitlement() {
    if !require(&["runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("s", "base");

    // Sandboxed first: Docker's capabilities, the filter on, mounting refused.
    let sandbox = ws.context("sandbox", &[("Dockerfile", &probe_dockerfile(false))]);
    let out = ws.path("sandbox-out");
    let dest = format!("type=local,dest={}", out.display());
    let args = ["build", "--allow", "security.insecure", "-o", &dest, sandbox.to_str().expect("utf-8")];
    ws.rbuild("s", &args).success();
    assert_eq!(read(&out, "capeff").trim(), "CapEff:\t00000000a80425fb");
    assert_eq!(read(&out, "seccomp").trim(), "Seccomp:\t2", "filtered");
    assert_eq!(read(&out, "mounted").trim(), "no", "a sandboxed step cannot mount");

    // The same command with --security=insecure: not a cache hit of the sandboxed step, and privileged.
    let insecure = ws.context("insecure", &[("Dockerfile", &probe_dockerfile(true))]);
    let ctx = insecure.to_str().expect("utf-8");
    let out = ws.path("insecure-out");
    let dest = format!("type=local,dest={}", out.display());
    let run = ws.rbuild("s", &["build", "--allow", "security.insecure", "-o", &dest, ctx]).success();
    assert!(!run.stderr.contains("CACHED"), "the mode is part of the key:\n{}", run.stderr);
    assert_eq!(read(&out, "capeff").trim(), format!("CapEff:\t{}", all_caps_mask()));
    assert_eq!(read(&out, "seccomp").trim(), "Seccomp:\t0", "no filter");
    assert_eq!(read(&out, "mounted").trim(), "yes", "a privileged step can mount");
    let devs = read(&out, "devs");
    for host_only in ["kmsg", "loop-control", "mem"].into_iter().filter(|d| Path::new("/dev").join(d).exists()) {
        assert!(devs.lines().any(|l| l == host_only), "the host's /dev/{host_only} is visible:\n{devs}");
    }

    // Without the entitlement: refused at the step's line, before anything runs.
    let refused = ws.rbuild("s", &["build", "--no-cache", ctx]);
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("RUN --security=insecure needs the security.insecure entitlement"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("Dockerfile:2"), "names the step: {}", refused.stderr);
    assert!(refused.stderr.contains("--allow security.insecure"), "hint: {}", refused.stderr);

    // An unknown mode is an error at its line too.
    let bad = ws.context("bad", &[("Dockerfile", "FROM base\nRUN --security=privileged true\n")]);
    let bad = ws.rbuild("s", &["build", "--allow", "security.insecure", bad.to_str().expect("utf-8")]);
    assert!(bad.code == Some(1) && bad.stderr.contains("unsupported security mode \"privileged\""), "{}", bad.stderr);
    assert!(bad.stderr.contains("Dockerfile:2"), "{}", bad.stderr);
}
