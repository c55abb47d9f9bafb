//! Issue 12's RUN-container flags through real `rbuild build` runs on runc: cgroup limits (`--memory`, the default
//! pids limit and `--pids-limit`), `--add-host`, `--shm-size`, `--ulimit`, and (issue 11 item 11) a step's tmpfs
//! at `/dev/shm` replacing the default one. Each test asserts what the step saw or what stopped it.

use crate::support::{Run, Workspace, require};
use serde_json::Value;

/// A file of image `name`'s top-most layer that has it.
fn image_file(ws: &Workspace, store: &str, name: &str, path: &str) -> String {
    let run = ws.rbuild(store, &["inspect", name]).success();
    let doc: Value = serde_json::from_str(&run.stdout).expect("inspect prints JSON");
    let layers: Vec<String> = doc["Config"]["rootfs"]["diff_ids"]
        .as_array()
        .expect("diff_ids")
        .iter()
        .filter_map(|d| d.as_str().map(|d| d.trim_start_matches("sha256:").to_string()))
        .collect();
    layers
        .iter()
        .rev()
        .map(|l| ws.path(store).join("snapshots").join(l).join(path.trim_start_matches('/')))
        .find(|p| p.exists())
        .map(|p| std::fs::read_to_string(&p).expect("read"))
        .unwrap_or_else(|| panic!("{path} is not in image {name}"))
}

/// Builds `FROM base` plus `body` with extra flags.
fn build(ws: &Workspace, name: &str, body: &str, flags: &[&str]) -> Run {
    let ctx = ws.context(name, &[("Dockerfile", &format!("FROM base\n{body}\n"))]);
    let mut args = vec!["build", "-t", name];
    args.extend_from_slice(flags);
    let ctx = ctx.to_str().expect("utf-8").to_string();
    args.push(&ctx);
    ws.rbuild("s", &args)
}

/// The numbers a fork loop printed as `started N`, the last one.
fn last_started(run: &Run) -> Option<u32> {
    run.stderr.lines().filter_map(|l| l.split("started ").nth(1)).filter_map(|n| n.trim().parse().ok()).next_back()
}

#[test]
fn memory_limit_kills_a_step_that_allocates_more() {
    if !require(&["runc"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("s", "base");
    // busybox `tail` keeps its whole input when it has no newline: 200 MiB of real memory.
    let body = "RUN head -c 200m /dev/zero | tail > /dev/null";
    let limited = build(&ws, "mem", body, &["--memory", "64m"]);
    assert_ne!(limited.code, Some(0), "a 200 MiB step passed under --memory 64m:\n{}", limited.stderr);
    assert!(limited.stderr.contains("exit code: 137"), "killed by SIGKILL:\n{}", limited.stderr);
    assert!(limited.stderr.contains("most likely out of memory"), "the error says why:\n{}", limited.stderr);
    // The same step without the limit passes: it was the limit that stopped it.
    build(&ws, "mem", body, &["--no-cache"]).success();
}

/// The pids cgroup limit of the process `pid`, read on the host from its cgroup (v1 `pids` or v2 unified).
fn pids_max_of(pid: &str) -> Option<String> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = match controllers {
            "pids" => format!("/sys/fs/cgroup/pids{path}/pids.max"),
            "" => format!("/sys/fs/cgroup{path}/pids.max"),
            _ => continue,
        };
        if let Ok(v) = std::fs::read_to_string(file) {
            return Some(v.trim().to_string());
        }
    }
    None
}

/// Every RUN step runs under a pids limit by default, so a fork bomb stops there (the fork loop itself is shown
/// stopped by a limit in `pids_limit_flag_sets_the_limit`; reaching the default one would take 16k processes from
/// the whole machine). Read on the host from the step's own cgroup while it runs.
#[test]
fn every_step_runs_under_the_default_pids_limit() {
    if !require(&["runc"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("s", "base");
    let marker = format!("sleep 6{}", std::process::id() % 1000 + 1000);
    let ctx = ws.context("pids-default", &[("Dockerfile", &format!("FROM base\nRUN {marker}\n"))]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .arg("--root")
        .arg(ws.path("s"))
        .args(["build", ctx.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let limit = loop {
        let found = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let pid = e.file_name().to_string_lossy().into_owned();
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            (String::from_utf8_lossy(&cmdline).replace('\0', " ").trim() == marker).then_some(pid)
        });
        if let Some(limit) = found.and_then(|pid| pids_max_of(&pid)) {
            break limit;
        }
        assert!(std::time::Instant::now() < deadline, "the step never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // Ctrl-C: the build stops its container and cleans up.
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    assert_eq!(limit, rbuild_executor::runtime::options::DEFAULT_PIDS_LIMIT.to_string());
}

#[test]
fn pids_limit_flag_sets_the_limit() {
    if !require(&["runc"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("s", "base");
    let body = "RUN n=0; while [ $n -lt 200 ]; do sleep 300 & n=$((n+1)); echo started $n; done; \
                kill $(jobs -p); echo all started";
    let run = build(&ws, "pids", body, &["--pids-limit", "64"]);
    assert_ne!(run.code, Some(0), "200 processes started under --pids-limit 64:\n{}", run.stderr);
    assert!(run.stderr.contains("can't fork"), "{}", run.stderr);
    let last = last_started(&run).expect("progress lines");
    assert!((50..64).contains(&last), "stopped at the limit, after {last}");
    // Without a limit the same loop completes.
    let free = build(&ws, "pids", body, &["--pids-limit", "-1", "--no-cache"]).success();
    assert_eq!(last_started(&free), Some(200));
}

#[test]
fn add_host_entries_show_in_etc_hosts() {
    if !require(&["runc"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("s", "base");
    build(
        &ws,
        "hosts",
        "RUN cat /etc/hosts > /hosts",
        &["--add-host", "db:10.1.2.3", "--add-host=cache=10.1.2.4", "--add-host", "v6:fd00::5"],
    )
    .success();
    let hosts = image_file(&ws, "s", "hosts", "/hosts");
    let lines: Vec<&str> = hosts.lines().collect();
    assert_eq!(lines[lines.len() - 3..], ["10.1.2.3\tdb", "10.1.2.4\tcache", "fd00::5\tv6"], "{hosts}");
    assert!(hosts.starts_with("127.0.0.1\tlocalhost"), "{hosts}");
    // The entries are part of the step's key (as in BuildKit's exec op): another address re-runs it, the same
    // ones hit the cache.
    build(&ws, "hosts", "RUN cat /etc/hosts > /hosts", &["--add-host", "db:10.9.9.9"]).success();
    assert!(image_file(&ws, "s", "hosts", "/hosts").ends_with("10.9.9.9\tdb\n"));
    let again = build(&ws, "hosts", "RUN cat /etc/hosts > /hosts", &["--add-host", "db:10.9.9.9"]).success();
    assert!(again.stderr.contains("CACHED"), "{}", again.stderr);
    let refused = build(&ws, "gw", "RUN true", &["--add-host", "gw:host-gateway"]);
    assert_ne!(refused.code, Some(0));
    assert!(refused.stderr.contains("host-gateway is not supported"), "{}", refused.stderr);
}

#[test]
fn shm_size_sets_the_size_of_dev_shm() {
    if !require(&["runc"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("s", "base");
    let body = "RUN df -k /dev/shm | tail -1 | awk '{print $2}' > /shm";
    build(&ws, "shm", body, &["--shm-size", "128m"]).success();
    assert_eq!(image_file(&ws, "s", "shm", "/shm").trim(), "131072");
    build(&ws, "shm-default", body, &["--no-cache"]).success();
    assert_eq!(image_file(&ws, "s", "shm-default", "/shm").trim(), "65536", "Docker's 64m by default");
}

#[test]
fn ulimit_sets_the_steps_rlimits() {
    if !require(&["runc"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("s", "base");
    build(&ws, "ulimit", "RUN echo $(ulimit -Sn) $(ulimit -Hn) > /nofile", &["--ulimit", "nofile=100:200"]).success();
    assert_eq!(image_file(&ws, "s", "ulimit", "/nofile").trim(), "100 200");
}

#[test]
fn tmpfs_mount_at_dev_shm_replaces_the_default_one() {
    if !require(&["runc"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("s", "base");
    build(
        &ws,
        "shm-mount",
        "RUN --mount=type=tmpfs,target=/dev/shm,size=1m grep ' /dev/shm ' /proc/self/mountinfo > /mounts",
        &[],
    )
    .success();
    let mounts = image_file(&ws, "s", "shm-mount", "/mounts");
    assert_eq!(mounts.lines().count(), 1, "one /dev/shm mount:\n{mounts}");
    assert!(mounts.contains("size=1024k"), "the step's size:\n{mounts}");
}

#[test]
fn cpuset_cpus_and_cpus_apply_to_the_step() {
    if !require(&["runc"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("s", "base");
    let body = "RUN grep Cpus_allowed_list /proc/self/status | awk '{print $2}' > /cpus";
    build(&ws, "cpuset", body, &["--cpuset-cpus", "0", "--cpus", "0.5"]).success();
    assert_eq!(image_file(&ws, "s", "cpuset", "/cpus").trim(), "0");
    // A tenth of a CPU: a busy loop's CPU time is about a tenth of its wall time. (Unlimited, it is more than half
    // even on a loaded 2-core machine; a shared machine only lowers the ratio further, so the bound is one-sided.)
    let body = "RUN busybox time -f '%e %U %S' sh -c 'i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done' 2> /time";
    build(&ws, "quota", body, &["--cpus", "0.1"]).success();
    let time = image_file(&ws, "s", "quota", "/time");
    let nums: Vec<f64> = time.split_whitespace().filter_map(|n| n.parse().ok()).collect();
    let [wall, user, sys] = nums[..] else { panic!("busybox time printed {time:?}") };
    assert!(wall > 0.5, "the loop ran long enough to measure: {time}");
    assert!((user + sys) / wall < 0.3, "throttled to a tenth of a CPU: {time}");
}
