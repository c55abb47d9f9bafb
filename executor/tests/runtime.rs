//! Real containers: runc on a busybox rootfs behind an overlay (root only).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rbuild_executor::cancel::Canceller;
use rbuild_executor::overlay::{OverlayMount, mount_overlay};
use rbuild_executor::runtime::network::{NetworkError, NetworkStack};
use rbuild_executor::runtime::{BindMount, NetworkMode, RunResult, RunSpec, Runtime, RuntimeError, TmpfsMount};
use rbuild_executor::user::{ResolvedUser, resolve_user};

use crate::support::{TestDir, busybox_rootfs, privileged, test_runtime};

/// A busybox lower layer, a fresh upper, the overlay mounted, and a runtime with its own state directory.
struct Sandbox {
    // Fields drop in order: unmount before the directories are removed.
    mount: Option<OverlayMount>,
    runtime: Runtime,
    t: TestDir,
}

impl Sandbox {
    fn new(name: &str) -> Sandbox {
        Sandbox::with_lower(name, busybox_rootfs)
    }

    fn with_lower(name: &str, build: impl FnOnce(&Path)) -> Sandbox {
        let t = TestDir::new(name);
        build(&t.path("lower"));
        let mount = mount_overlay(&[t.path("lower")], &t.path("upper"), &t.path("work"), &t.path("merged"))
            .expect("mount overlay");
        let runtime = Runtime::with_kind(test_runtime(), t.path("runc-state"), t.path("bundles")).expect("runtime");
        let runtime = runtime.with_resolv_conf(write_resolv_conf(&t));
        Sandbox { mount: Some(mount), runtime, t }
    }

    fn merged(&self) -> PathBuf {
        self.t.path("merged")
    }

    fn upper(&self) -> PathBuf {
        self.t.path("upper")
    }

    fn spec(&self, args: &[&str]) -> RunSpec {
        RunSpec {
            rootfs: self.merged(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            cwd: "/".into(),
            user: ResolvedUser::default(),
            hostname: "rbuild-test".into(),
            network: NetworkMode::Host,
            mounts: Vec::new(),
            tmpfs: Vec::new(),
            bundle_dir: None,
            options: Default::default(),
            privileged: false,
        }
    }

    /// Runs and returns the result plus every line seen by the callback.
    fn run(&self, spec: &RunSpec) -> (RunResult, Vec<String>) {
        let mut lines = Vec::new();
        let result = self.runtime.run(spec, &mut |l| lines.push(l.to_string())).expect("run");
        (result, lines)
    }

    fn sh(&self, script: &str) -> (RunResult, Vec<String>) {
        self.run(&self.spec(&["/bin/sh", "-c", script]))
    }

    /// Unmounts the overlay so the upper directory can be inspected as a finished diff.
    fn finish(&mut self) {
        if let Some(mount) = self.mount.take() {
            mount.unmount().expect("unmount");
        }
    }

    fn upper_entries(&self) -> Vec<String> {
        let mut out: Vec<String> = walk(&self.upper())
            .into_iter()
            .filter_map(|p| p.strip_prefix(self.upper()).ok().map(|r| r.to_string_lossy().into_owned()))
            .collect();
        out.sort();
        out
    }
}

fn write_resolv_conf(t: &TestDir) -> PathBuf {
    let path = t.path("host-resolv.conf");
    std::fs::write(&path, "nameserver 192.0.2.53\n").expect("resolv.conf");
    path
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            out.push(path.clone());
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(walk(&path));
            }
        }
    }
    out
}

macro_rules! gate {
    ($name:expr) => {
        if !privileged($name) {
            return;
        }
    };
}

#[test]
fn echo_output_reaches_callback_and_tail() {
    gate!("echo_output_reaches_callback_and_tail");
    let sb = Sandbox::new("echo");
    let (result, lines) = sb.run(&sb.spec(&["echo", "hi"]));
    assert_eq!(result.exit_code, 0);
    assert_eq!(lines, ["hi"]);
    assert_eq!(result.tail, ["hi"]);
    // Stdout and stderr both reach the callback (runc copies them separately, so their relative order is not
    // guaranteed); the bundle is gone afterwards.
    let (result, mut lines) = sb.sh("echo one; echo two >&2; echo three");
    assert_eq!(result.exit_code, 0);
    lines.sort();
    assert_eq!(lines, ["one", "three", "two"]);
    assert_eq!(std::fs::read_dir(sb.t.path("bundles")).expect("bundles").count(), 0, "bundle dir removed");
}

#[test]
fn exit_code_is_a_result_not_an_error() {
    gate!("exit_code_is_a_result_not_an_error");
    let sb = Sandbox::new("exit");
    let (result, _) = sb.sh("echo failing; exit 3");
    assert_eq!(result.exit_code, 3);
    assert_eq!(result.tail, ["failing"]);
    let (result, _) = sb.run(&sb.spec(&["false"]));
    assert_eq!(result.exit_code, 1);
    // A child killed by a signal, reported by the shell as 128 + 9.
    let (result, _) = sb.sh("sh -c 'kill -9 $$'; exit $?");
    assert_eq!(result.exit_code, 137);
}

#[test]
fn runs_as_resolved_user_with_home_and_groups() {
    gate!("runs_as_resolved_user_with_home_and_groups");
    let sb = Sandbox::new("user");
    let mut spec = sb.spec(&["/bin/sh", "-c", "id; echo HOME=$HOME; echo PATH=$PATH"]);
    spec.user = resolve_user(&sb.merged(), "app").expect("resolve app");
    let (result, lines) = sb.run(&spec);
    assert_eq!(result.exit_code, 0, "{lines:?}");
    assert!(lines[0].starts_with("uid=1000(app) gid=1000(app)"), "{lines:?}");
    assert!(lines[0].contains("2000(extra)"), "supplementary group: {lines:?}");
    assert_eq!(lines[1], "HOME=/home/app");
    assert_eq!(lines[2], "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
}

#[test]
fn capabilities_are_dockers_default_set() {
    gate!("capabilities_are_dockers_default_set");
    let sb = Sandbox::new("caps");
    let (result, lines) = sb.run(&sb.spec(&["cat", "/proc/self/status"]));
    assert_eq!(result.exit_code, 0);
    let field =
        |name: &str| lines.iter().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).unwrap_or_default();
    assert_eq!(field("CapEff:"), "00000000a80425fb");
    assert_eq!(field("CapBnd:"), "00000000a80425fb");
    assert_eq!(field("CapPrm:"), "00000000a80425fb");
    assert_eq!(field("CapInh:"), "0000000000000000");
    assert_eq!(field("CapAmb:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
}

#[test]
fn pid_namespace_hides_host_processes() {
    gate!("pid_namespace_hides_host_processes");
    let sb = Sandbox::new("pidns");
    let (result, lines) = sb.run(&sb.spec(&["ls", "-1", "/proc"]));
    assert_eq!(result.exit_code, 0);
    let pids: Vec<&String> = lines.iter().filter(|l| l.chars().all(|c| c.is_ascii_digit())).collect();
    assert!(!pids.is_empty() && pids.len() <= 2, "only the container's own pids: {pids:?}");
}

/// Both runtimes (crun on a hybrid cgroup host through its v1 view) enforce the pids limit, and place the container
/// in a cgroup below rbuild's own v1 memory cgroup, so a memory limit that holds rbuild holds its containers too.
#[test]
fn limits_hold_and_the_cgroup_nests_under_ours() {
    gate!("limits_hold_and_the_cgroup_nests_under_ours");
    let sb = Sandbox::new("cgroup");
    let mut spec =
        sb.spec(&["/bin/sh", "-c", "cat /proc/self/cgroup; for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; wait"]);
    spec.options.pids_limit = Some(4);
    let (_, lines) = sb.run(&spec);
    assert!(lines.iter().any(|l| l.contains("can't fork")), "the 4-process limit stops the loop: {lines:?}");
    let memory_of = |listing: &str| {
        listing.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            controllers.split(',').any(|c| c == "memory").then(|| path.to_string())
        })
    };
    let ours = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    if let Some(ours) = memory_of(&ours) {
        let theirs = memory_of(&lines.join("\n")).expect("the container's memory cgroup");
        let parent = if ours == "/" { String::from("/") } else { format!("{ours}/") };
        assert!(theirs.starts_with(&parent) && theirs.len() > parent.len(), "{theirs} is not below {ours}");
    }
}

#[test]
fn privileged_operations_are_refused() {
    gate!("privileged_operations_are_refused");
    let sb = Sandbox::new("unpriv");
    let (result, _) = sb.run(&sb.spec(&["mount", "-t", "tmpfs", "none", "/mnt"]));
    assert_ne!(result.exit_code, 0, "mount needs CAP_SYS_ADMIN");
    let (result, _) = sb.sh("echo evil > /proc/sys/kernel/hostname");
    assert_ne!(result.exit_code, 0, "/proc/sys is read-only");
    let (result, lines) = sb.run(&sb.spec(&["cat", "/proc/kcore"]));
    assert!(result.exit_code != 0 || lines.iter().all(|l| l.is_empty()), "/proc/kcore is masked: {lines:?}");
    let (result, _) = sb.sh("echo 1 > /sys/kernel/profiling");
    assert_ne!(result.exit_code, 0, "/sys is read-only");
}

#[test]
fn network_none_has_only_loopback() {
    gate!("network_none_has_only_loopback");
    let sb = Sandbox::new("netnone");
    let mut spec = sb.spec(&["cat", "/proc/net/dev"]);
    spec.network = NetworkMode::None;
    let (result, lines) = sb.run(&spec);
    assert_eq!(result.exit_code, 0);
    let interfaces: Vec<&str> = lines.iter().skip(2).filter_map(|l| l.split(':').next()).map(str::trim).collect();
    assert_eq!(interfaces, ["lo"]);

    // The host network shows the host's interfaces (when it has more than loopback).
    let host = std::fs::read_to_string("/proc/net/dev").expect("host net");
    if host.lines().skip(2).count() > 1 {
        spec.network = NetworkMode::Host;
        let (_, lines) = sb.run(&spec);
        assert!(lines.iter().skip(2).count() > 1, "host interfaces visible: {lines:?}");
    }
}

#[test]
fn joined_network_stack_is_private_and_torn_down_on_drop() {
    gate!("joined_network_stack_is_private_and_torn_down_on_drop");
    let path = std::env::var_os("PATH").unwrap_or_default();
    if !std::env::split_paths(&path).any(|dir| dir.join("slirp4netns").is_file()) {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI needs slirp4netns");
        eprintln!("SKIPPED: needs slirp4netns");
        return;
    }
    let sb = Sandbox::new("netjoin");
    let dir = sb.t.path("net");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let stack = NetworkStack::start(&dir).expect("network stack");
    let pid = stack.pid().expect("running");
    let mut spec = sb.spec(&["/bin/sh", "-c", "ip -o -4 addr show | awk '{print $2, $4}'; cat /etc/resolv.conf"]);
    spec.network = stack.mode();
    // Two runs see the same namespace (one per build, joined by every step).
    for _ in 0..2 {
        let (result, lines) = sb.run(&spec);
        assert_eq!(result.exit_code, 0, "{lines:?}");
        assert_eq!(lines, ["lo 127.0.0.1/8", "tap0 10.0.2.100/24", "nameserver 10.0.2.3"]);
    }
    drop(stack);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "slirp4netns was stopped and reaped");
    assert!(!dir.exists(), "the namespace file and its directory are gone");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(dir.to_str().expect("utf-8")), "the namespace file is no longer bound");
}

#[test]
fn a_stack_that_dies_at_start_is_an_error_with_its_message_and_leaves_nothing() {
    gate!("a_stack_that_dies_at_start_is_an_error_with_its_message_and_leaves_nothing");
    let t = TestDir::new("netfail");
    let fake = t.path("slirp4netns");
    std::fs::write(&fake, "#!/bin/sh\necho 'cannot open tap: no such device' >&2\nexit 1\n").expect("write");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let dir = t.path("net");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let err = NetworkStack::start_with(&fake, &dir).expect_err("the stack died");
    assert!(matches!(err, NetworkError::NotReady { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot open tap: no such device"), "{err}");
    assert!(!dir.exists(), "the namespace file and its directory are gone");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(dir.to_str().expect("utf-8")), "the namespace file is no longer bound");
}

#[test]
fn hostname_hosts_and_resolv_conf() {
    gate!("hostname_hosts_and_resolv_conf");
    let sb = Sandbox::new("etcfiles");
    let (result, lines) = sb.sh("hostname; cat /etc/hosts; cat /etc/resolv.conf; echo x >> /etc/hosts");
    assert_ne!(result.exit_code, 0, "/etc/hosts is read-only: {lines:?}");
    // stdout and stderr are copied by runc separately, so the error of the last command may come first.
    assert!(lines.iter().any(|l| l == "rbuild-test"), "hostname: {lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("127.0.0.1") && l.contains("localhost") && l.contains("rbuild-test")));
    assert!(lines.iter().any(|l| l == "nameserver 192.0.2.53"), "{lines:?}");
}

#[test]
fn writes_and_deletes_land_in_upper_as_a_diff() {
    gate!("writes_and_deletes_land_in_upper_as_a_diff");
    let mut sb = Sandbox::with_lower("diff", |dir| {
        busybox_rootfs(dir);
        std::fs::write(dir.join("deleteme"), "old").expect("write");
    });
    let (result, lines) = sb.sh("echo data > /newfile && rm /deleteme");
    assert_eq!(result.exit_code, 0, "{lines:?}");
    sb.finish();
    assert_eq!(std::fs::read_to_string(sb.upper().join("newfile")).expect("newfile"), "data\n");
    let meta = std::fs::symlink_metadata(sb.upper().join("deleteme")).expect("whiteout");
    assert!(meta.file_type().is_char_device(), "whiteout is a char device");
    assert_eq!(meta.rdev(), 0, "whiteout is 0:0");
}

#[test]
fn mount_points_leave_no_trace_in_upper() {
    gate!("mount_points_leave_no_trace_in_upper");
    // The lower has /etc (passwd) but none of /proc, /dev, /sys, /etc/hosts, /etc/resolv.conf, /data.
    let mut sb = Sandbox::new("stubs");
    let src = sb.t.path("bind-src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("input"), "from host\n").expect("write");
    let mut spec = sb.spec(&["/bin/sh", "-c", "cat /data/input; ls -d /proc/1 /dev/null /sys/kernel; echo > /data/x"]);
    spec.mounts.push(BindMount { source: src.clone(), destination: "/data/in".into(), readonly: true });
    spec.mounts[0].destination = "/data".into();
    let (result, lines) = sb.run(&spec);
    assert_ne!(result.exit_code, 0, "the bind mount is read-only: {lines:?}");
    assert!(lines.iter().any(|l| l == "from host"), "the bind mount's file (stderr may come first): {lines:?}");
    assert!(!src.join("x").exists());
    sb.finish();
    let entries = sb.upper_entries();
    for trace in ["proc", "dev", "sys", "etc/hosts", "etc/resolv.conf", "data"] {
        assert!(!entries.iter().any(|e| e == trace), "{trace} left in upper: {entries:?}");
    }
    // Only the copied-up parent of /etc/hosts may remain, as an empty directory the layer differ skips.
    assert!(entries.iter().all(|e| e == "etc"), "{entries:?}");
}

#[test]
fn no_trace_at_all_when_etc_is_missing() {
    gate!("no_trace_at_all_when_etc_is_missing");
    let mut sb = Sandbox::with_lower("noetc", |dir| {
        busybox_rootfs(dir);
        std::fs::remove_dir_all(dir.join("etc")).expect("rm etc");
    });
    let (result, lines) = sb.sh("touch /tmp/made");
    assert_eq!(result.exit_code, 0, "{lines:?}");
    sb.finish();
    assert_eq!(sb.upper_entries(), ["tmp", "tmp/made"]);
}

#[test]
fn missing_cwd_is_created_for_the_user() {
    gate!("missing_cwd_is_created_for_the_user");
    let mut sb = Sandbox::new("cwd");
    let mut spec = sb.spec(&["/bin/sh", "-c", "pwd; touch mine"]);
    spec.cwd = "/work/app".into();
    spec.user = resolve_user(&sb.merged(), "app").expect("app");
    let (result, lines) = sb.run(&spec);
    assert_eq!(result.exit_code, 0, "{lines:?}");
    assert_eq!(lines, ["/work/app"]);
    sb.finish();
    let meta = std::fs::metadata(sb.upper().join("work/app")).expect("cwd in upper");
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    assert!(sb.upper().join("work/app/mine").is_file());
}

#[test]
fn unknown_executable_is_a_start_error_with_runc_message() {
    gate!("unknown_executable_is_a_start_error_with_runc_message");
    let sb = Sandbox::new("noexec");
    let err = sb.runtime.run(&sb.spec(&["/no/such/binary"]), &mut |_| {}).expect_err("cannot start");
    match &err {
        RuntimeError::Start { message, .. } => assert!(message.contains("/no/such/binary"), "{message}"),
        other => panic!("expected a start error, got {other:?}"),
    }
    assert_eq!(std::fs::read_dir(sb.t.path("bundles")).expect("bundles").count(), 0, "bundle removed on error");
    // A working directory runc cannot enter is a start error too.
    let mut spec = sb.spec(&["true"]);
    spec.cwd = "/etc/passwd".into();
    let err = sb.runtime.run(&spec, &mut |_| {}).expect_err("cwd is a file");
    assert!(matches!(&err, RuntimeError::Start { message, .. } if message.contains("/etc/passwd")), "{err:?}");
    // The runtime is still usable afterwards.
    let (result, _) = sb.run(&sb.spec(&["true"]));
    assert_eq!(result.exit_code, 0);
}

/// Several containers at once, on separate overlays (a rootfs is never shared by concurrent runs), sharing one
/// runc state directory.
#[test]
fn concurrent_runs_do_not_interfere() {
    gate!("concurrent_runs_do_not_interfere");
    let sandboxes: Vec<Sandbox> = (0..4).map(|i| Sandbox::new(&format!("parallel{i}"))).collect();
    let runtime = &sandboxes[0].runtime;
    std::thread::scope(|scope| {
        let handles: Vec<_> = sandboxes
            .iter()
            .enumerate()
            .map(|(i, sb)| {
                scope.spawn(move || {
                    let spec = sb.spec(&["/bin/sh", "-c", &format!("echo run-{i} > /tmp/out; cat /tmp/out")]);
                    let mut lines = Vec::new();
                    let result = runtime.run(&spec, &mut |l| lines.push(l.to_string())).expect("run");
                    (result, lines)
                })
            })
            .collect();
        for (i, handle) in handles.into_iter().enumerate() {
            let (result, lines) = handle.join().expect("thread");
            assert_eq!(result.exit_code, 0);
            assert_eq!(lines, [format!("run-{i}")]);
        }
    });
}

#[test]
fn cancelling_kills_a_running_container_and_refuses_new_ones() {
    gate!("cancelling_kills_a_running_container_and_refuses_new_ones");
    let sb = Sandbox::new("cancel");
    let canceller = Canceller::new();
    let runtime = sb.runtime.clone().with_canceller(canceller.clone());
    let spec = sb.spec(&["/bin/sh", "-c", "echo started; sleep 300"]);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let run = {
        let (runtime, spec) = (runtime.clone(), spec.clone());
        std::thread::spawn(move || {
            runtime.run(&spec, &mut |line| {
                if line == "started" {
                    let _ = started_tx.send(());
                }
            })
        })
    };
    started_rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the container started");
    assert_eq!(canceller.running(), 1);
    assert_eq!(canceller.cancel(std::time::Duration::from_secs(60)), 0, "every container stopped");
    let result = run.join().expect("run thread").expect("a killed process is a result");
    assert_eq!(result.exit_code, 128 + 9);
    let list = std::process::Command::new(runtime.runc())
        .arg("--root")
        .arg(runtime.state_dir())
        .args(["list", "-q"])
        .output()
        .expect("runc list");
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "", "no container left");
    assert_eq!(std::fs::read_dir(sb.t.path("bundles")).expect("bundles").count(), 0, "bundle removed");
    let err = runtime.run(&spec, &mut |_| {}).expect_err("cancelled: nothing starts");
    assert!(matches!(err, RuntimeError::Cancelled(_)), "{err:?}");
}

#[test]
fn tmpfs_mounts_are_sized_and_leave_no_trace() {
    gate!("tmpfs_mounts_are_sized_and_leave_no_trace");
    let mut sb = Sandbox::new("tmpfs");
    let mut spec = sb.spec(&[
        "/bin/sh",
        "-c",
        "{ echo x > /scratch/deep/f; } 2>/dev/null; mkdir /scratch/d && df -k /scratch | tail -1",
    ]);
    spec.tmpfs.push(TmpfsMount { destination: "/scratch".into(), size: Some(2 << 20) });
    let (result, lines) = sb.run(&spec);
    assert_eq!(result.exit_code, 0, "{lines:?}");
    // Found by its mount point: stdout and stderr lines arrive in either order (the failed redirection's message
    // once came after df's line while `2>/dev/null` stood after the redirection it was meant to silence).
    let fields: Vec<&str> =
        lines.iter().find(|l| l.ends_with(" /scratch")).map(|l| l.split_whitespace().collect()).unwrap_or_default();
    assert_eq!(fields.get(1), Some(&"2048"), "{lines:?}");
    sb.finish();
    assert!(sb.upper_entries().iter().all(|e| !e.starts_with("scratch")), "{:?}", sb.upper_entries());
}

/// Docker's default seccomp profile is in force, and the tools a build script uses still work under it.
#[test]
fn seccomp_filter_is_active_and_everyday_tools_still_work() {
    gate!("seccomp_filter_is_active_and_everyday_tools_still_work");
    let sb = Sandbox::new("seccomp-ok");
    let (result, lines) = sb.run(&sb.spec(&["cat", "/proc/self/status"]));
    assert_eq!(result.exit_code, 0);
    let field =
        |name: &str| lines.iter().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).unwrap_or_default();
    assert_eq!(field("Seccomp:"), "2", "filter mode: {lines:?}");
    let script = "set -e
        cd /tmp
        mkdir -p d/sub && echo hello > d/sub/f && cat d/sub/f
        cp d/sub/f d/g && chmod 640 d/g && chown 1000:1000 d/g && ln -s g d/link && ln d/g d/hard
        ls -l d >/dev/null
        tar -cf d.tar d && gzip -9 d.tar && rm -r d && tar -xzf d.tar.gz && test -L d/link
        find d -type f | sort
        wget -h 2>&1 | head -1 >/dev/null || true
        date +%Y >/dev/null && sleep 0.1 && id -u
        linux32 true && chroot / true && ionice -c 3 true && nproc >/dev/null
        echo done";
    let (result, lines) = sb.sh(script);
    assert_eq!(result.exit_code, 0, "{lines:?}");
    assert_eq!(lines, ["hello", "d/g", "d/hard", "d/sub/f", "0", "done"]);
    // As a user, too (setuid/setgroups are allowed; runc sets the user after the filter is loaded).
    let mut spec = sb.spec(&["/bin/sh", "-c", "id -u && echo x > mine && chmod 600 mine && cat mine"]);
    spec.user = resolve_user(&sb.merged(), "app").expect("app");
    spec.cwd = "/home/app".into();
    let (result, lines) = sb.run(&spec);
    assert_eq!(result.exit_code, 0, "{lines:?}");
    assert_eq!(lines, ["1000", "x"]);
}

/// What the profile refuses although the capability set alone would allow it.
#[test]
fn seccomp_refuses_new_namespaces() {
    gate!("seccomp_refuses_new_namespaces");
    let sb = Sandbox::new("seccomp-deny");
    // A user namespace needs no capability; only the filter (clone/unshare with CLONE_NEWUSER) stops it.
    for args in [["unshare", "-U", "true"], ["unshare", "-r", "true"], ["unshare", "-m", "true"]] {
        let (result, lines) = sb.run(&sb.spec(&args));
        assert_ne!(result.exit_code, 0, "{args:?} must fail: {lines:?}");
        assert!(lines.iter().any(|l| l.contains("Operation not permitted")), "{args:?}: {lines:?}");
    }
    // Docker refuses unshare(2) altogether without CAP_SYS_ADMIN, even with no flags (which the kernel allows).
    let (result, lines) = sb.run(&sb.spec(&["unshare", "true"]));
    assert_ne!(result.exit_code, 0, "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("unshare(0x0): Operation not permitted")), "{lines:?}");
    // nsenter needs setns, which is refused (EPERM from the filter rather than a missing namespace file).
    let (result, lines) = sb.run(&sb.spec(&["nsenter", "-t", "1", "-U", "true"]));
    assert_ne!(result.exit_code, 0, "{lines:?}");
}
