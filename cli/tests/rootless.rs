//! Rootless builds (issue 14): an ordinary user with subordinate id ranges builds the two-stage image (RUN as root
//! and as `USER app`, COPY --chown, cache and secret mounts, a whiteout) and pushes it; with `SOURCE_DATE_EPOCH`
//! the manifest digest is the one root's build of the same Dockerfile pushes, and podman runs the image.
//!
//! The user (`rbuild-rootless`, made here when missing, with a range in /etc/subuid and /etc/subgid) runs the
//! binary through `runuser`, from a copy in the test's own directory (the target dir may not be reachable by it).

use crate::support::{Registry, Run, Workspace, cmd, require, unique};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const USER: &str = "rbuild-rootless";

const APP: &str = r#"# syntax=docker/dockerfile:1
ARG BASE
FROM ${BASE} AS builder
WORKDIR /src
COPY hello.txt ./
RUN --mount=type=cache,target=/cache echo cached > /cache/x && echo "built from $(cat hello.txt)" > built.txt
RUN --mount=type=secret,id=token test "$(wc -c < /run/secrets/token)" -eq 6 && echo used-secret > secret-ok

FROM ${BASE}
COPY --from=builder /src/built.txt /src/secret-ok /app/
RUN rm /etc/motd && mkdir -p /data && chown app:app /data
COPY --chown=app:app app.sh /app/
USER app
RUN echo "made by $(id -u):$(id -g)" > /data/by-app
CMD ["/app/app.sh"]
"#;

const APP_SH: &str =
    "#!/bin/sh\necho \"$(cat /app/built.txt); $(cat /data/by-app); motd gone: $(test -e /etc/motd || echo yes)\"\n";

/// Makes the unprivileged test user (with subordinate ranges) if it does not exist yet.
fn ensure_user() {
    if cmd("id", &["-u", USER]).code != Some(0) {
        cmd("useradd", &["--create-home", "--shell", "/bin/sh", USER]).success();
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if !text.lines().any(|l| l.starts_with(&format!("{USER}:"))) {
            let flag = if file.ends_with("uid") { "--add-subuids" } else { "--add-subgids" };
            cmd("usermod", &[flag, "300000-365535", USER]).success();
        }
    }
    // A rootless network stack opens /dev/net/tun, fuse-overlayfs /dev/fuse; Debian's udev makes them 0666, some
    // VMs leave them 0600.
    for dev in ["/dev/net/tun", "/dev/fuse"] {
        let dev = Path::new(dev);
        if std::fs::metadata(dev).is_ok_and(|m| m.permissions().mode() & 0o006 != 0o006) {
            std::fs::set_permissions(dev, std::fs::Permissions::from_mode(0o666)).unwrap();
        }
    }
}

/// A directory the test user owns, inside the workspace.
fn user_dir(ws: &Workspace, name: &str) -> PathBuf {
    let dir = ws.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    cmd("chown", &["-R", &format!("{USER}:{USER}"), dir.to_str().unwrap()]).success();
    dir
}

/// `rbuild` with `args`, as root or (with `as_user`) as the test user, with `SOURCE_DATE_EPOCH`.
fn rbuild(bin: &Path, as_user: bool, store: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = if as_user {
        let mut c = Command::new("runuser");
        c.args(["-u", USER, "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    c.arg("--root").arg(store).args(args).stdin(Stdio::null()).env("SOURCE_DATE_EPOCH", "1700000000");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    Run::from(out, format!("rbuild {} (as {})", args.join(" "), if as_user { USER } else { "root" }))
}

fn pushed_digest(stdout: &str) -> String {
    stdout.lines().find_map(|l| l.split_once('@').map(|(_, d)| d.trim().to_string())).expect("push prints NAME@DIGEST")
}

#[test]
fn rootless_build_pushes_the_same_manifest_as_root_and_podman_runs_it() {
    let tools =
        ["runc", "newuidmap", "slirp4netns", "fuse-overlayfs", "docker-registry", "podman", "busybox", "runuser"];
    if !require(&tools) {
        return;
    }
    ensure_user();
    let ws = Workspace::new();
    std::fs::set_permissions(ws.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let reg = Registry::start();
    let repo = unique("rootless");
    let bin = ws.path("rbuild");
    std::fs::copy(env!("CARGO_BIN_EXE_rbuild"), &bin).unwrap();
    let base_ctx = ws.context_from("busybox-base");
    let app_ctx = ws.context("app", &[("Dockerfile", APP), ("hello.txt", "hello"), ("app.sh", APP_SH)]);
    std::fs::set_permissions(app_ctx.join("app.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = ws.path("token");
    std::fs::write(&secret, "s3cret").unwrap();
    cmd("chmod", &["-R", "a+rX", base_ctx.to_str().unwrap(), app_ctx.to_str().unwrap(), secret.to_str().unwrap()])
        .success();

    // The same names for both: the same manifest digest.
    let shared_base = format!("{}/{repo}/shared/base:1", reg.addr);
    let shared_app = format!("{}/{repo}/shared/app:1", reg.addr);
    let mut same = Vec::new();
    for as_user in [false, true] {
        let store = if as_user { user_dir(&ws, "store-user") } else { ws.path("store-root") };
        rbuild(&bin, as_user, &store, &["build", "-t", &shared_base, base_ctx.to_str().unwrap()], &[]).success();
        let secret_arg = format!("id=token,src={}", secret.display());
        let base_arg = format!("BASE={shared_base}");
        let app_dir = app_ctx.to_str().unwrap();
        let args = ["build", "-t", &shared_app, "--push", "--secret", &secret_arg, "--build-arg", &base_arg, app_dir];
        let built = rbuild(&bin, as_user, &store, &args, &[]).success();
        assert!(!built.stderr.contains("s3cret"), "the secret reached the log:\n{}", built.stderr);
        same.push(pushed_digest(&built.stdout));
    }
    assert_eq!(same[0], same[1], "root's and the rootless build's manifest digests differ");

    // Every snapshotter builds the same image, rootless (each in a store of its own, so nothing is cached).
    for snapshotter in ["overlayfs", "fuse-overlayfs", "native"] {
        let store = user_dir(&ws, &format!("store-{snapshotter}"));
        let name = format!("{}/{repo}/{snapshotter}/app:1", reg.addr);
        let snap = format!("--snapshotter={snapshotter}");
        rbuild(&bin, true, &store, &[&snap, "build", "-t", &shared_base, base_ctx.to_str().unwrap()], &[]).success();
        let secret_arg = format!("id=token,src={}", secret.display());
        let base_arg = format!("BASE={shared_base}");
        let app_dir = app_ctx.to_str().unwrap();
        let args = [&snap, "build", "-t", &name, "--push", "--secret", &secret_arg, "--build-arg", &base_arg, app_dir];
        let built = rbuild(&bin, true, &store, &args, &[]).success();
        assert_eq!(pushed_digest(&built.stdout), same[0], "--snapshotter={snapshotter} built another image");
        let info = rbuild(&bin, true, &store, &[&snap, "info"], &[]).success();
        assert!(info.stdout.contains(&format!("snapshotter: {snapshotter}")), "{}", info.stdout);
        assert!(info.stdout.contains("rootless: yes"), "{}", info.stdout);
    }

    // The user's store is the user's: nothing in it belongs to root.
    let owned = cmd("find", &[ws.path("store-user").to_str().unwrap(), "-maxdepth", "1", "-user", "root"]).success();
    assert!(owned.stdout.trim().is_empty(), "root-owned files in the user's store:\n{}", owned.stdout);

    // podman runs what the user pushed: the RUN as `USER app` wrote as 1000:1000, the whiteout hides /etc/motd.
    // Its storage lives in this test's directory; runc (Debian's crun refuses a hybrid cgroup host) and explicit NOFILE and
    // NPROC limits (a CI machine's hard limits may be below podman's defaults for root).
    let (proot, prun) = (ws.path("podman-root"), ws.path("podman-run"));
    let _reset = PodmanReset(proot.clone(), prun.clone());
    let ran = cmd(
        "podman",
        &[
            "--root",
            proot.to_str().unwrap(),
            "--runroot",
            prun.to_str().unwrap(),
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "run",
            "--rm",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--tls-verify=false",
            "--network=none",
            &shared_app,
        ],
    )
    .success();
    assert_eq!(ran.stdout.trim(), "built from hello; made by 1000:1000; motd gone: yes");
}

#[test]
fn rootless_without_subordinate_ids_names_the_line_to_add() {
    if !require(&["runuser"]) {
        return;
    }
    // `nobody` has no subordinate ranges; the single-id fallback builds nothing here (no store of its own), but
    // the warning must say exactly what to add.
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", env!("CARGO_BIN_EXE_rbuild"), "--root", "/nonexistent/rbuild", "images"])
        .stdin(Stdio::null())
        .output();
    let out = out.expect("runuser runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nobody:100000:65536") && stderr.contains("/etc/subuid"), "{stderr}");
}

/// The user's processes whose command line contains `pattern`, oldest first.
fn user_pids(pattern: &str) -> Vec<i32> {
    let out = cmd("pgrep", &["-u", USER, "-f", pattern]);
    out.stdout.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[test]
fn rootless_build_killed_with_sigkill_leaves_nothing_behind() {
    if !require(&["runc", "newuidmap", "slirp4netns", "busybox", "runuser", "pgrep"]) {
        return;
    }
    ensure_user();
    let ws = Workspace::new();
    std::fs::set_permissions(ws.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = ws.path("rbuild");
    std::fs::copy(env!("CARGO_BIN_EXE_rbuild"), &bin).unwrap();
    let base_ctx = ws.context_from("busybox-base");
    let marker = unique("sleep-marker");
    let ctx = ws.context("slow", &[("Dockerfile", &format!("FROM base\nRUN sleep 1000 && echo {marker}\n"))]);
    cmd("chmod", &["-R", "a+rX", base_ctx.to_str().unwrap(), ctx.to_str().unwrap()]).success();
    let store = user_dir(&ws, "store");
    rbuild(&bin, true, &store, &["build", "-t", "base", base_ctx.to_str().unwrap()], &[]).success();

    let mut build = Command::new("runuser")
        .args(["-u", USER, "--"])
        .arg(&bin)
        .arg("--root")
        .arg(&store)
        .args(["build", ctx.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while user_pids(&marker).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the RUN step never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The parent rbuild (the one runuser started; its re-executed child is younger).
    let rbuild_pids = user_pids(&format!("{} --root {}", bin.display(), store.display()));
    let parent = *rbuild_pids.first().expect("rbuild runs");
    cmd("kill", &["-KILL", &parent.to_string()]).success();
    let _ = build.wait();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !user_pids(&format!("{}", store.display())).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(user_pids(&format!("{}", store.display())).iter().all(|p| *p != parent), "rbuild survived SIGKILL");

    // The next rbuild stops the orphaned container and collects the rest.
    let next = rbuild(&bin, true, &store, &["images"], &[]).success();
    assert!(next.stderr.contains("stopped a container left running by a killed rbuild"), "{}", next.stderr);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !user_pids(&marker).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(user_pids(&marker).is_empty(), "the RUN step's process survived");
    assert!(user_pids(&format!("{}", store.display())).is_empty(), "runc or slirp4netns survived");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(store.to_str().unwrap()), "mounts left behind:\n{mounts}");
    for dir in ["tmp", "runc"] {
        let left: Vec<_> =
            std::fs::read_dir(store.join(dir)).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "left in {dir}/: {left:?}");
    }
    // And it builds again.
    let ctx2 = ws.context("again", &[("Dockerfile", "FROM base\nRUN echo again > /again\n")]);
    cmd("chmod", &["-R", "a+rX", ctx2.to_str().unwrap()]).success();
    rbuild(&bin, true, &store, &["build", ctx2.to_str().unwrap()], &[]).success();
}

/// The programs a rootless rbuild runs (besides itself), for the image [`rootless_rbuild_runs_inside_podman_as_a_non_root_user`]
/// makes: runc, the id mappers and the network stack, each with the shared libraries `ldd` names.
const IN_CONTAINER: [&str; 5] = ["runc", "newuidmap", "newgidmap", "slirp4netns", "busybox"];

/// Makes `rootfs`: static busybox as `/bin/sh`, `rbuild`, [`IN_CONTAINER`] and their libraries, a user `builder`
/// (1000:1000) with the subordinate range 100000-165535. `newuidmap`/`newgidmap` carry file capabilities
/// (`cap_setuid`/`cap_setgid`) instead of Debian's setuid bit: a setuid newuidmap opens `/proc/PID/uid_map` as root,
/// and the kernel then wants CAP_SYS_ADMIN over the new namespace's parent, which a container does not give
/// (podman's own images do the same).
fn container_rootfs(rootfs: &Path, rbuild: &Path) {
    for dir in ["bin", "usr/bin", "etc", "tmp", "home/builder", "proc", "sys", "dev", "run"] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mut programs: Vec<PathBuf> = IN_CONTAINER.iter().map(|t| crate::support::which(t).unwrap()).collect();
    programs.push(rbuild.to_path_buf());
    for program in &programs {
        let dest = if program == rbuild {
            rootfs.join("usr/bin/rbuild")
        } else {
            rootfs.join("usr/bin").join(program.file_name().unwrap())
        };
        std::fs::copy(program, &dest).unwrap();
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
        let ldd = cmd("ldd", &[program.to_str().unwrap()]);
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and `/lib64/ld-linux-x86-64.so.2 (0x...)`.
        for lib in ldd.stdout.split_whitespace().filter(|w| w.starts_with('/')) {
            let dest = rootfs.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(lib, &dest).unwrap();
        }
    }
    std::os::unix::fs::symlink("/usr/bin/busybox", rootfs.join("bin/sh")).unwrap();
    cmd("setcap", &["cap_setuid=ep", rootfs.join("usr/bin/newuidmap").to_str().unwrap()]).success();
    cmd("setcap", &["cap_setgid=ep", rootfs.join("usr/bin/newgidmap").to_str().unwrap()]).success();
    let etc = rootfs.join("etc");
    std::fs::write(etc.join("passwd"), "root:x:0:0::/root:/bin/sh\nbuilder:x:1000:1000::/home/builder:/bin/sh\n")
        .unwrap();
    std::fs::write(etc.join("group"), "root:x:0:\nbuilder:x:1000:\n").unwrap();
    std::fs::write(etc.join("subuid"), "builder:100000:65536\n").unwrap();
    std::fs::write(etc.join("subgid"), "builder:100000:65536\n").unwrap();
    cmd("chown", &["1000:1000", rootfs.join("home/builder").to_str().unwrap()]).success();
}

/// Podman storage of a test's own (`--root`, `--runroot`), reset on drop, failed or not: podman leaves its overlay
/// directory mounted, which would keep the workspace from being removed.
struct PodmanReset(PathBuf, PathBuf);

impl Drop for PodmanReset {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .arg("--root")
            .arg(&self.0)
            .arg("--runroot")
            .arg(&self.1)
            .args(["system", "reset", "--force"])
            .stdin(Stdio::null())
            .output();
    }
}

/// This process's hard limit of `resource`.
fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(resource, &mut limit) }, 0);
    limit.rlim_max
}

/// Issue 14: rbuild as a non-root user inside a `podman run` container builds an image whose RUN steps run (as root
/// and as `USER app`, with the private network), given only `seccomp=unconfined` (podman's profile lets
/// `sethostname` through only with CAP_SYS_ADMIN, and runc sets the RUN container's hostname),
/// `systempaths=unconfined` (the kernel mounts a fresh `/proc` in a user namespace only where no part of `/proc` is
/// masked) and `/dev/net/tun` (for slirp4netns). No capability is added and the container has no user namespace
/// of its own. The store is the user's default one inside the container (overlay on overlay does not work, so
/// `auto` chooses the copying snapshotter), and the result is checked from outside.
#[test]
fn rootless_rbuild_runs_inside_podman_as_a_non_root_user() {
    if !require(&["podman", "runc", "newuidmap", "newgidmap", "slirp4netns", "busybox", "setcap", "ldd", "tar"]) {
        return;
    }
    let ws = Workspace::new();
    let rootfs = ws.path("rootfs");
    container_rootfs(&rootfs, Path::new(env!("CARGO_BIN_EXE_rbuild")));
    let base_ctx = ws.context_from("busybox-base");
    let app = "FROM base\nRUN echo \"root: $(id -u) on $(hostname)\" > /by-root && ulimit -Hn > /nofile\n\
               RUN --network=host ls /sys/class/net > /host-nics\nUSER app\n\
               RUN echo \"app: $(id -u):$(id -g)\" > /home/app/by-app && ip -o -4 addr show | grep -v ' lo ' | wc -l > /home/app/nics\n";
    let app_ctx = ws.context("app", &[("Dockerfile", app)]);
    let out = ws.path("out");
    std::fs::create_dir_all(&out).unwrap();
    cmd("chown", &["1000:1000", out.to_str().unwrap()]).success();
    cmd("chmod", &["-R", "a+rX", base_ctx.to_str().unwrap(), app_ctx.to_str().unwrap()]).success();

    let (proot, prun) = (ws.path("podman-root"), ws.path("podman-run"));
    let _reset = PodmanReset(proot.clone(), prun.clone());
    let podman = |args: &[&str]| {
        let mut all = vec!["--root", proot.to_str().unwrap(), "--runroot", prun.to_str().unwrap()];
        all.extend_from_slice(args);
        cmd("podman", &all)
    };
    let image = format!("localhost/{}:1", unique("rbuild-in-podman"));
    // GNU tar keeps the file capabilities (security.capability) only when asked.
    let tarball = ws.path("rootfs.tar");
    cmd(
        "tar",
        &[
            "--xattrs",
            "--xattrs-include=security.capability",
            "-C",
            rootfs.to_str().unwrap(),
            "-cf",
            tarball.to_str().unwrap(),
            ".",
        ],
    )
    .success();
    podman(&["import", "-q", tarball.to_str().unwrap(), &image]).success();

    let script = "rbuild build -t base /ctx/base && rbuild build --ulimit nofile=1048576 --allow network.host -o type=local,dest=/out/app /ctx/app \
                  && rbuild info";
    let (nofile, nproc) = (format!("nofile={0}:{0}", hard_limit(libc::RLIMIT_NOFILE)), hard_limit(libc::RLIMIT_NPROC));
    // Podman's processes run with NPROC at kernel.pid_max at most; more needs CAP_SYS_RESOURCE.
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    let nproc = format!("nproc={0}:{0}", nproc.min(pid_max));
    let base_mount = format!("{}:/ctx/base:ro", base_ctx.display());
    let app_mount = format!("{}:/ctx/app:ro", app_ctx.display());
    let out_mount = format!("{}:/out", out.display());
    let ran = podman(&[
        "run",
        "--rm",
        // This host's podman: Debian's crun refuses hybrid cgroups, there is no systemd, and root may not raise
        // rlimits (no CAP_SYS_RESOURCE) above the hard limits it has, below podman's defaults.
        "--runtime",
        "runc",
        "--cgroup-manager",
        "cgroupfs",
        "--ulimit",
        &nofile,
        "--ulimit",
        &nproc,
        // No bridge network: podman's CNI setup races with other podman users of /run/netns, and the RUN steps'
        // private network (slirp4netns) needs none outside.
        "--network",
        "none",
        // What rbuild needs.
        "--user",
        "1000:1000",
        "--security-opt",
        "seccomp=unconfined",
        "--security-opt",
        "systempaths=unconfined",
        "--device",
        "/dev/net/tun",
        "-v",
        &base_mount,
        "-v",
        &app_mount,
        "-v",
        &out_mount,
        &image,
        "sh",
        "-c",
        script,
    ])
    .success();
    assert!(ran.stdout.contains("rootless: yes (uid 1000, subordinate ranges)"), "{}", ran.stdout);
    assert!(ran.stdout.contains("snapshotter: native"), "{}", ran.stdout);
    let read = |p: &str| std::fs::read_to_string(out.join("app").join(p)).unwrap();
    assert_eq!(read("by-root"), "root: 0 on buildkitsandbox\n");
    // A --ulimit above what the container allows is lowered to it (runc would refuse it).
    assert_eq!(read("nofile"), format!("{}\n", hard_limit(libc::RLIMIT_NOFILE)));
    // The host's network: /sys is the container's, bound (rbuild's user namespace may not mount a sysfs for it).
    assert!(read("host-nics").lines().any(|l| l == "lo"), "{}", read("host-nics"));
    assert_eq!(read("home/app/by-app"), "app: 1000:1000\n");
    assert_eq!(read("home/app/nics"), "1\n", "the RUN step has no private network interface");
}
