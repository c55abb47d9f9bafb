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
