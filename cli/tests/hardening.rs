//! Regression tests for the adversarial review (issue 9): a killed build's container, the store's permissions and
//! integrity checks, option injection into `git`/`curl`, registries that stall, and Ctrl-C.

use crate::support::{Workspace, cmd, require};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The ids of the containers in the store's runc state directory.
fn containers(store: &Path) -> Vec<String> {
    // Each runtime keeps its state in its own directory of the store; `auto` may have chosen either.
    let mut ids = Vec::new();
    for runtime in ["runc", "crun"] {
        if !store.join(runtime).is_dir() {
            continue;
        }
        let out = Command::new(runtime).arg("--root").arg(store.join(runtime)).args(["list", "-q"]).output().unwrap();
        ids.extend(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).filter(|l| !l.is_empty()));
    }
    ids
}

/// `rbuild build CTX` into the workspace's store, running in the background, its output discarded.
fn spawn_build(ws: &Workspace, ctx: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .arg("--root")
        .arg(ws.path("store"))
        .args(["build", ctx.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Processes whose command line contains `needle`.
fn processes_with(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(needle))
        })
        .count()
}

/// Item 8: `kill -9` of rbuild during a RUN left the container running; the next start must stop it before it
/// collects the dead process's mounts, and `rbuild check` must report it.
#[test]
fn a_container_of_a_killed_build_is_stopped_and_reported_by_the_next_start() {
    if !require(&["runc"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("store", "base");
    let marker = format!("sleep 4{}", std::process::id() % 1000 + 1000);
    let ctx = ws.context("slow", &[("Dockerfile", &format!("FROM base\nRUN {marker}\n"))]);
    let mut child = spawn_build(&ws, &ctx);
    let deadline = Instant::now() + Duration::from_secs(60);
    while processes_with(&marker) == 0 {
        assert!(Instant::now() < deadline, "the RUN step never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(containers(&ws.path("store")).len(), 1, "precondition: the container outlives a SIGKILLed rbuild");
    let check = ws.rbuild("store", &["check"]);
    assert_eq!(check.code, Some(1), "{}\n{}", check.stdout, check.stderr);
    assert!(check.stdout.contains("left a container running"), "{}", check.stdout);
    assert!(containers(&ws.path("store")).is_empty(), "the container is deleted");
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_with(&marker) > 0 {
        assert!(Instant::now() < deadline, "the container's process is still running");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(ws.path("store").to_str().unwrap()), "no mount is left in the store");
    ws.rbuild("store", &["check"]).success();
}

/// Item 4: the store was world-traversable, so any local user could run a setuid-root binary from `snapshots/`.
#[test]
fn the_store_is_private_and_check_reports_one_that_is_not() {
    if !require(&["runc", "setpriv"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("store", "base");
    let store = ws.path("store");
    let mode = std::fs::metadata(&store).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "a new store is 0700");
    // The workspace itself is private to root too: let `nobody` reach the store's parent, so only the store's own
    // mode stands between `nobody` and its content.
    std::fs::set_permissions(ws.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = cmd(
        "setpriv",
        &["--reuid=65534", "--regid=65534", "--clear-groups", "ls", store.join("snapshots").to_str().unwrap()],
    );
    assert_ne!(as_nobody.code, Some(0), "another user can list the store: {}", as_nobody.stdout);
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
    let check = cmd(env!("CARGO_BIN_EXE_rbuild"), &["--root", store.to_str().unwrap(), "check"]);
    assert_eq!(check.code, Some(1), "{}", check.stdout);
    assert!(check.stdout.contains("had mode 0755"), "{}", check.stdout);
    // Opening it (any command) makes it private again.
    ws.rbuild("store", &["images"]).success();
    assert_eq!(std::fs::metadata(&store).unwrap().permissions().mode() & 0o7777, 0o700);
}

/// Item 10: `check` did not look inside snapshots, and one malformed tag file made `images` and `check` fail.
#[test]
fn check_deep_finds_an_edited_snapshot_and_a_bad_tag_file_is_only_reported() {
    if !require(&["runc"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("store", "base");
    let ctx = ws.context("app", &[("Dockerfile", "FROM base\nCOPY app.txt /app.txt\n"), ("app.txt", "original\n")]);
    ws.rbuild("store", &["build", "-t", "app", ctx.to_str().unwrap()]).success();
    ws.rbuild("store", &["check", "--deep"]).success();
    let edited = std::fs::read_dir(ws.path("store/snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("app.txt"))
        .find(|p| p.exists())
        .expect("the COPY's snapshot");
    std::fs::write(&edited, "tampered\n").unwrap();
    let shallow = ws.rbuild("store", &["check"]);
    assert_eq!(shallow.code, Some(0), "a plain check does not read snapshots: {}", shallow.stdout);
    let deep = ws.rbuild("store", &["check", "--deep"]);
    assert_eq!(deep.code, Some(1), "{}\n{}", deep.stdout, deep.stderr);
    assert!(deep.stdout.contains("was modified"), "{}", deep.stdout);

    std::fs::write(ws.path("store/index/tags/broken.json"), "{ not json").unwrap();
    let images = ws.rbuild("store", &["images"]).success();
    assert!(images.stdout.contains("app"), "{}", images.stdout);
    assert!(images.stderr.contains("broken.json"), "{}", images.stderr);
    let check = ws.rbuild("store", &["check"]);
    assert_eq!(check.code, Some(1));
    assert!(check.stdout.contains("broken.json"), "{}", check.stdout);
}

/// Issue 10, small bug: `rbuild images | head -1` must not panic on the closed pipe.
#[test]
fn images_into_a_closed_pipe_exits_quietly() {
    let ws = Workspace::new();
    let store = ws.path("store");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .arg("--root")
        .arg(&store)
        .arg("images")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(status.code(), Some(0), "{stderr}");
}

/// Item 2: a Git ref or URL is never taken as an option by `git` or `curl`, and only network schemes are fetched.
#[test]
fn add_never_passes_refs_or_urls_to_git_and_curl_as_options() {
    if !require(&["git", "curl"]) {
        return;
    }
    let ws = Workspace::new();
    let secret = ws.path("host-secret");
    std::fs::write(&secret, "TOPSECRET-HOST-FILE\n").unwrap();
    let sources = [
        format!("http://127.0.0.1:1/repo.git?ref=--pathspec-from-file={}", secret.display()),
        format!("http://127.0.0.1:1/repo.git#--pathspec-from-file={}", secret.display()),
        "ssh://-oProxyCommand=touch%20/tmp/pwned/x.git".to_string(),
    ];
    for (i, src) in sources.iter().enumerate() {
        let ctx = ws.context(&format!("git{i}"), &[("Dockerfile", &format!("FROM scratch\nADD {src} /r\n"))]);
        let run = ws.rbuild("store", &["build", ctx.to_str().unwrap()]);
        assert_eq!(run.code, Some(1), "{src}: {}", run.stderr);
        assert!(run.stderr.contains("refusing"), "{src}: {}", run.stderr);
        assert!(!run.stderr.contains("TOPSECRET"), "{src}: the host file leaked: {}", run.stderr);
    }
}

/// Item 9: a registry that trickles hits the deadline with a message saying so; and after a first Ctrl-C, a
/// second one exits at once even while a pull hangs.
#[test]
fn a_trickling_registry_times_out_and_a_second_ctrl_c_exits_at_once() {
    let ws = Workspace::new();
    let addr = rbuild_test_support::trickling_registry(Duration::from_millis(200));
    let ctx = ws.context("slow", &[("Dockerfile", &format!("FROM {addr}/slow/base:1\nRUN true\n"))]);
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .arg("--root")
        .arg(ws.path("store"))
        .args(["build", ctx.to_str().unwrap()])
        .env("RBUILD_REGISTRY_DEADLINE", "2")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did not finish within 2s"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());

    let mut child = spawn_build(&ws, &ctx);
    std::thread::sleep(Duration::from_millis(1500));
    let pid = child.id().to_string();
    cmd("kill", &["-INT", &pid]);
    std::thread::sleep(Duration::from_millis(300));
    let second = Instant::now();
    cmd("kill", &["-INT", &pid]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rbuild did not exit within 5 s of the second Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    assert!(second.elapsed() < Duration::from_secs(2), "exit took {:?}", second.elapsed());
}

/// A registry on loopback whose one image has a layer that is not a tar (its digest is right, so only unpacking
/// it fails, with a cause below "layer X"). Returns the image reference.
fn lying_registry() -> String {
    use sha2::{Digest as _, Sha256};
    let sha = |b: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(b)));
    let evil = vec![b'x'; 1024];
    let claimed = sha(&evil);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{claimed}"]}},"config":{{}}}}"#
    )
    .into_bytes();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{claimed}","size":{}}}]}}"#,
        sha(&config),
        config.len(),
        evil.len()
    )
    .into_bytes();
    let config_digest = sha(&config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten().take(200) {
            let mut conn = conn;
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
            let path = line.split_whitespace().nth(1).unwrap_or_default().to_string();
            let (ctype, body): (&str, &[u8]) = if path == "/v2/" {
                ("application/json", b"{}")
            } else if path.contains("/manifests/") {
                ("application/vnd.oci.image.manifest.v1+json", &manifest)
            } else if path.ends_with(&config_digest) {
                ("application/octet-stream", &config)
            } else {
                ("application/octet-stream", &evil)
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            if !line.starts_with("HEAD") {
                let _ = conn.write_all(body);
            }
        }
    });
    format!("{addr}/liar/base:1")
}

/// Item 11: `build` showed "failed to resolve base image ... layer ..." and dropped why; `pull` printed it. Both
/// must say what was wrong with the layer.
#[test]
fn a_bad_base_image_layer_error_keeps_its_cause_in_build_as_in_pull() {
    let ws = Workspace::new();
    let image = lying_registry();
    let pull = ws.rbuild("store", &["pull", &image]);
    assert_eq!(pull.code, Some(1), "{}", pull.stderr);
    assert!(pull.stderr.contains("layer"), "pull: {}", pull.stderr);
    let ctx = ws.context("liar", &[("Dockerfile", &format!("FROM {image}\nRUN true\n"))]);
    let build = ws.rbuild("store", &["build", ctx.to_str().unwrap()]);
    assert_eq!(build.code, Some(1), "{}", build.stderr);
    assert!(build.stderr.contains("Dockerfile:1"), "names the line: {}", build.stderr);
    let innermost = pull.stderr.lines().rev().find_map(|l| l.trim().strip_prefix("caused by: ")).unwrap();
    let tail = &innermost[..innermost.len().min(40)];
    assert!(build.stderr.contains(tail), "build must show the cause {tail:?} that pull shows:\n{}", build.stderr);
}

/// Item 12: `--platform linux/arm64` on a base that has only linux/amd64 silently built amd64. It must fail,
/// naming the platform the base has.
#[test]
fn a_base_without_the_requested_platform_is_an_error_naming_what_it_has() {
    if !require(&["runc", "docker-registry"]) {
        return;
    }
    let ws = Workspace::new();
    let registry = crate::support::Registry::start();
    let base = format!("{}/{}:1", registry.addr, crate::support::unique("amd64-only"));
    let ctx = ws.context_from("busybox-base");
    ws.rbuild("a", &["build", "-t", &base, "--push", ctx.to_str().unwrap()]).success();
    let app = ws.context("app", &[("Dockerfile", &format!("FROM {base}\nRUN true\n"))]);
    let run = ws.rbuild("b", &["build", "--platform", "linux/arm64", app.to_str().unwrap()]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("linux/arm64") && run.stderr.contains("linux/amd64"), "{}", run.stderr);
    // The same with the base only in the local store: it is amd64, not what was asked for.
    let local = ws.rbuild("a", &["build", "--platform", "linux/arm64", app.to_str().unwrap()]);
    assert_eq!(local.code, Some(1), "{}", local.stderr);
    assert!(local.stderr.contains("linux/amd64"), "{}", local.stderr);
}
