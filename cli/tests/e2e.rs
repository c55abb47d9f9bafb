//! The end-to-end path of issue #2: build a base image from nothing, push it, build a two-stage image on it from
//! an empty store, push that, and check everything with skopeo, umoci and runc.

use crate::support::{Registry, Workspace, cmd, require, unique};
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// Each step of a build and how it ended (`CACHED`, `DONE`, `ERROR`), from the plain progress output.
fn steps(stderr: &str) -> Vec<(String, String)> {
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut order = Vec::new();
    let mut status: BTreeMap<String, String> = BTreeMap::new();
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix('#') else { continue };
        let Some((n, text)) = rest.split_once(' ') else { continue };
        if n == "0" {
            continue;
        }
        if text == "CACHED" || text.starts_with("DONE ") || text.starts_with("ERROR") {
            status.insert(n.to_string(), text.split(' ').next().unwrap_or("").to_string());
        } else if !names.contains_key(n) && text.starts_with('[') {
            names.insert(n.to_string(), text.to_string());
            order.push(n.to_string());
        }
    }
    order.iter().map(|n| (names[n].clone(), status.get(n).cloned().unwrap_or_default())).collect()
}

fn json(run: &crate::support::Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", run.what, run.stdout))
}

fn pushed_digest(stdout: &str) -> String {
    stdout.lines().find_map(|l| l.split_once('@').map(|(_, d)| d.trim().to_string())).expect("push prints NAME@DIGEST")
}

#[test]
fn build_push_and_read_back_with_skopeo_umoci_runc() {
    if !require(&["runc", "docker-registry", "skopeo", "umoci", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    let reg = Registry::start();
    let repo = unique("e2e");
    let base = format!("{}/{repo}/base/busybox:latest", reg.addr);
    let app = format!("{}/{repo}/app:1.0", reg.addr);

    // The base image, built from nothing in one store and pushed.
    let ctx = ws.context_from("busybox-base");
    ws.rbuild("store-a", &["build", "-t", &base, "--push", ctx.to_str().unwrap()]).success();

    // The application, from an empty store: the base comes from the registry.
    let ctx = ws.context_from("e2e-app");
    let base_arg = format!("BASE={}/{repo}/base/busybox", reg.addr);
    let iid = ws.path("iid");
    let build = |store: &str| {
        ws.rbuild(
            store,
            &[
                "build",
                "-t",
                &app,
                "--build-arg",
                &base_arg,
                "--push",
                "--iidfile",
                iid.to_str().unwrap(),
                ctx.to_str().unwrap(),
            ],
        )
        .success()
    };
    let first = build("store-b");
    let first_id = std::fs::read_to_string(&iid).unwrap();
    let first_digest = pushed_digest(&first.stdout);
    assert!(steps(&first.stderr).iter().all(|(_, s)| s == "DONE"), "a first build runs every step:\n{}", first.stderr);

    // skopeo reads the pushed config.
    let cfg =
        json(&cmd("skopeo", &["inspect", "--config", "--tls-verify=false", &format!("docker://{app}")]).success());
    let c = &cfg["config"];
    let env: Vec<&str> = c["Env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(env.contains(&"GREETING=hello") && env.contains(&"APP_HOME=/app"), "{env:?}");
    assert!(env.iter().any(|e| e.starts_with("PATH=")), "{env:?}");
    assert_eq!(c["Cmd"], serde_json::json!(["/app/app.sh"]));
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/sh"]));
    assert_eq!(c["WorkingDir"], "/app");
    assert_eq!(c["User"], "app");
    assert_eq!(c["ExposedPorts"], serde_json::json!({"53/udp": {}, "8080/tcp": {}}));
    assert_eq!(c["Labels"], serde_json::json!({"org.example.name": "demo", "version": "1.0"}));
    let history = cfg["history"].as_array().unwrap();
    let layers = cfg["rootfs"]["diff_ids"].as_array().unwrap();
    let non_empty = history.iter().filter(|h| h["empty_layer"].as_bool() != Some(true)).count();
    assert_eq!(non_empty, layers.len(), "one history entry per layer: {history:#?}");
    let manifest =
        json(&cmd("skopeo", &["inspect", "--raw", "--tls-verify=false", &format!("docker://{app}")]).success());
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(manifest["layers"].as_array().unwrap().len(), layers.len());

    // skopeo copies it to an OCI layout, umoci unpacks it: files, contents, modes, owners, the whiteout.
    let layout = ws.path("layout");
    cmd(
        "skopeo",
        &["copy", "--src-tls-verify=false", &format!("docker://{app}"), &format!("oci:{}:app", layout.display())],
    )
    .success();
    let bundle = ws.path("bundle");
    cmd("umoci", &["unpack", "--image", &format!("{}:app", layout.display()), bundle.to_str().unwrap()]).success();
    let rootfs = bundle.join("rootfs");
    let built = rootfs.join("app/built.txt");
    assert_eq!(std::fs::read_to_string(&built).unwrap(), "built from hello world\n");
    let m = std::fs::metadata(&built).unwrap();
    assert_eq!((m.permissions().mode() & 0o7777, m.uid(), m.gid()), (0o604, 0, 0));
    let script = std::fs::metadata(rootfs.join("app/app.sh")).unwrap();
    assert_eq!((script.permissions().mode() & 0o7777, script.uid(), script.gid()), (0o755, 1000, 1000));
    assert_eq!(std::fs::read_to_string(rootfs.join("etc/demo/demo.conf")).unwrap(), "color=blue\n");
    assert_eq!(std::fs::read_link(rootfs.join("bin/sh")).unwrap().to_str(), Some("/bin/busybox"));
    assert!(rootfs.join("etc/passwd").is_file());
    assert!(!rootfs.join("etc/motd").exists(), "the RUN rm must leave a whiteout that hides /etc/motd");
    assert!(
        !rootfs.join("etc/hosts").exists() && !rootfs.join("etc/resolv.conf").exists(),
        "runtime files leaked into a layer"
    );

    // The image runs: runc on umoci's bundle prints what CMD says.
    let config_path = bundle.join("config.json");
    let mut spec: Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    spec["process"]["terminal"] = Value::Bool(false);
    std::fs::write(&config_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let id = unique("e2e-run");
    let ran = cmd("runc", &["run", "--bundle", bundle.to_str().unwrap(), &id]);
    let _ = cmd("runc", &["delete", "-f", &id]);
    let ran = ran.success();
    assert_eq!(ran.stdout.trim(), "hello from app in /app: built from hello world");

    // An identical rebuild runs nothing and gives the same image.
    let second = build("store-b");
    let st = steps(&second.stderr);
    assert!(!st.is_empty() && st.iter().all(|(_, s)| s == "CACHED"), "every step CACHED:\n{}", second.stderr);
    assert_eq!(std::fs::read_to_string(&iid).unwrap(), first_id, "same image ID");
    assert_eq!(pushed_digest(&second.stdout), first_digest, "same manifest digest");

    // Editing the file of the last COPY re-runs that step and the ones after it only.
    std::fs::write(ctx.join("app.sh"), "#!/bin/sh\necho changed\n").unwrap();
    let third = build("store-b");
    let st = steps(&third.stderr);
    let ran: Vec<&str> = st.iter().filter(|(_, s)| s == "DONE").map(|(n, _)| n.as_str()).collect();
    assert_eq!(ran, ["[stage-1] COPY --chown=app:app app.sh ./", "[stage-1] RUN chmod 755 app.sh"], "{}", third.stderr);
    assert!(st.iter().all(|(_, s)| s == "DONE" || s == "CACHED"));
}

#[test]
fn failing_run_names_step_command_and_exit_code_and_keeps_the_store() {
    if !require(&["runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("store", "local/busybox");
    let ctx =
        ws.context("fail", &[("Dockerfile", "FROM local/busybox\nRUN echo about to fail && exit 3\nRUN echo never\n")]);
    let run = ws.rbuild("store", &["build", "-t", "local/fail", ctx.to_str().unwrap()]);
    assert_ne!(run.code, Some(0));
    assert!(run.stderr.contains("RUN echo about to fail && exit 3"), "names the step:\n{}", run.stderr);
    assert!(run.stderr.contains("exit code: 3"), "names the code:\n{}", run.stderr);
    assert!(run.stderr.contains(" --> Dockerfile:2:1"), "points at the Dockerfile line:\n{}", run.stderr);
    assert!(run.stderr.contains("about to fail"), "shows the output:\n{}", run.stderr);
    assert!(!run.stderr.contains("never"), "nothing after the failure runs:\n{}", run.stderr);
    // The store is intact: the earlier image is there and builds on it still work.
    let images = ws.rbuild("store", &["images"]).success();
    assert!(images.stdout.contains("local/busybox") && !images.stdout.contains("local/fail"), "{}", images.stdout);
    let ok = ws.context("ok", &[("Dockerfile", "FROM local/busybox\nRUN echo fine > /f\n")]);
    ws.rbuild("store", &["build", "-t", "local/ok", ok.to_str().unwrap()]).success();
}

#[test]
fn bad_dockerfile_points_at_the_line() {
    let ws = Workspace::new();
    let ctx = ws.context("bad", &[("Dockerfile", "FROM scratch\nRUNN echo hi\n")]);
    let run = ws.rbuild("store", &["build", ctx.to_str().unwrap()]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("Dockerfile:2:1"), "{}", run.stderr);
    assert!(run.stderr.contains("did you mean RUN?"), "{}", run.stderr);
}

#[test]
fn stages_copies_archives_and_layer_edge_cases_survive_a_push() {
    if !require(&["runc", "docker-registry", "skopeo", "umoci", "busybox", "tar"]) {
        return;
    }
    let ws = Workspace::new();
    let reg = Registry::start();
    ws.build_base("store", "local/busybox");
    let dockerfile = "\
FROM local/busybox AS base
RUN mkdir -p /data/sub && echo old > /data/sub/old.txt && echo keep > /keep.txt

FROM base AS middle
RUN rm -rf /data && mkdir -p /data && echo new > /data/new.txt && ln /keep.txt /hard.txt && ln -s /keep.txt /soft.txt

FROM middle
COPY --from=0 /keep.txt /from-index.txt
COPY *.conf /etc/app/
ADD files.tar /opt/
VOLUME /var/lib/app
STOPSIGNAL SIGQUIT
";
    let ctx = ws.context(
        "features",
        &[
            ("build.Dockerfile", dockerfile),
            ("a.conf", "a\n"),
            ("b.conf", "b\n"),
            ("c.txt", "not copied\n"),
            ("src/a.txt", "A\n"),
            ("src/dir/b.txt", "B\n"),
        ],
    );
    cmd(
        "tar",
        &["-C", ctx.join("src").to_str().unwrap(), "-cf", ctx.join("files.tar").to_str().unwrap(), "a.txt", "dir"],
    )
    .success();
    let name = format!("{}/{}/features:1", reg.addr, unique("e2e"));
    let file = ctx.join("build.Dockerfile");
    ws.rbuild("store", &["build", "-f", file.to_str().unwrap(), "-t", &name, ctx.to_str().unwrap()]).success();

    // `rbuild push NAME` pushes what the store holds.
    let pushed = ws.rbuild("store", &["push", &name]).success();
    assert!(pushed.stdout.contains("@sha256:"), "{}", pushed.stdout);
    let cfg =
        json(&cmd("skopeo", &["inspect", "--config", "--tls-verify=false", &format!("docker://{name}")]).success());
    assert_eq!(cfg["config"]["Volumes"], serde_json::json!({"/var/lib/app": {}}));
    assert_eq!(cfg["config"]["StopSignal"], "SIGQUIT");

    let layout = ws.path("layout");
    cmd(
        "skopeo",
        &["copy", "--src-tls-verify=false", &format!("docker://{name}"), &format!("oci:{}:x", layout.display())],
    )
    .success();
    let bundle = ws.path("bundle");
    cmd("umoci", &["unpack", "--image", &format!("{}:x", layout.display()), bundle.to_str().unwrap()]).success();
    let root = bundle.join("rootfs");
    // Deleted-then-recreated directory: an opaque directory hides the old contents.
    assert!(!root.join("data/sub").exists(), "opaque /data must hide /data/sub");
    assert_eq!(std::fs::read_to_string(root.join("data/new.txt")).unwrap(), "new\n");
    // Hardlinks stay hardlinks, symlinks stay symlinks.
    let (keep, hard) =
        (std::fs::metadata(root.join("keep.txt")).unwrap(), std::fs::metadata(root.join("hard.txt")).unwrap());
    assert_eq!(keep.ino(), hard.ino(), "hard.txt is a hardlink of keep.txt");
    assert_eq!(std::fs::read_link(root.join("soft.txt")).unwrap().to_str(), Some("/keep.txt"));
    // COPY --from=<index>, wildcards, ADD of a local tar.
    assert_eq!(std::fs::read_to_string(root.join("from-index.txt")).unwrap(), "keep\n");
    assert_eq!(std::fs::read_to_string(root.join("etc/app/a.conf")).unwrap(), "a\n");
    assert_eq!(std::fs::read_to_string(root.join("etc/app/b.conf")).unwrap(), "b\n");
    assert!(!root.join("etc/app/c.txt").exists());
    assert_eq!(std::fs::read_to_string(root.join("opt/a.txt")).unwrap(), "A\n");
    assert_eq!(std::fs::read_to_string(root.join("opt/dir/b.txt")).unwrap(), "B\n");
    assert!(!root.join("opt/files.tar").exists(), "ADD extracts local archives");

    // --target builds only what the target needs.
    let mid = ws
        .rbuild(
            "store",
            &["build", "-f", file.to_str().unwrap(), "--target", "middle", "-t", "local/middle", ctx.to_str().unwrap()],
        )
        .success();
    assert!(!mid.stderr.contains("from-index"), "steps after the target must not run:\n{}", mid.stderr);
    // --no-cache runs every step again.
    let again = ws
        .rbuild("store", &["build", "-f", file.to_str().unwrap(), "--no-cache", "-t", &name, ctx.to_str().unwrap()])
        .success();
    let st = steps(&again.stderr);
    assert!(!st.is_empty() && st.iter().all(|(_, s)| s == "DONE"), "--no-cache runs everything:\n{}", again.stderr);

    // rmi removes the name, and only the name.
    ws.rbuild("store", &["rmi", &name]).success();
    let images = ws.rbuild("store", &["images"]).success();
    assert!(!images.stdout.contains(&name) && images.stdout.contains("local/middle"), "{}", images.stdout);
    let missing = ws.rbuild("store", &["rmi", &name]);
    assert_ne!(missing.code, Some(0));
    assert!(missing.stderr.contains("no image named"), "{}", missing.stderr);
}
