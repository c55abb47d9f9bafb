//! Issue 12, "Flags and forms": buildx flags a CI pipeline passes. `--annotation` and `--output type=registry`
//! (read back by skopeo), `--load` into the reference dockerd (read back by `docker image inspect`) and without a
//! daemon, `--cache-from`/`--cache-to` and attestation flags (a clear error or accepted when switched off, never a
//! usage error), and every `--secret` form buildx has (the RUN step itself checks the value it sees).

use crate::sources::rbuild_stdin;
use crate::support::{Registry, Run, Workspace, cmd, require, unique};

const SCRATCH: &str = "FROM scratch\nLABEL built=yes\n";

fn build(ws: &Workspace, name: &str, flags: &[&str], env: &[(&str, &str)]) -> Run {
    let ctx = ws.context(name, &[("Dockerfile", SCRATCH)]);
    let mut args = vec!["build"];
    args.extend_from_slice(flags);
    let ctx = ctx.to_str().expect("utf-8").to_string();
    args.push(&ctx);
    rbuild_stdin(ws, "s", &args, b"", env)
}

#[test]
fn annotations_reach_the_manifest_pushed_by_output_type_registry() {
    if !require(&["docker-registry", "skopeo"]) {
        return;
    }
    let ws = Workspace::new();
    let reg = Registry::start();
    let name = format!("{}/rbuild-test/{}:1", reg.addr, unique("annotated"));
    let output = format!("type=registry,name={name}");
    let flags = [
        "--annotation",
        "org.opencontainers.image.title=app",
        "--annotation",
        "manifest:com.example.team=build",
        "--annotation",
        "manifest[linux/s390x]:only.there=1",
        "-o",
        &output,
    ];
    let run = build(&ws, "annotated", &flags, &[]).success();
    assert!(run.stdout.contains(&format!("{name}@sha256:")), "pushed: {}", run.stdout);
    let raw = cmd("skopeo", &["inspect", "--raw", "--tls-verify=false", &format!("docker://{name}")]).success();
    let manifest: serde_json::Value = serde_json::from_str(&raw.stdout).expect("manifest JSON");
    assert_eq!(manifest["annotations"]["org.opencontainers.image.title"], "app", "{manifest}");
    assert_eq!(manifest["annotations"]["com.example.team"], "build", "{manifest}");
    assert!(manifest["annotations"].get("only.there").is_none(), "another platform's annotation: {manifest}");
    let config = cmd("skopeo", &["inspect", "--config", "--tls-verify=false", &format!("docker://{name}")]).success();
    assert!(config.stdout.contains("\"built\": \"yes\""), "{}", config.stdout);

    let run = build(&ws, "annotated", &["--annotation", "index:k=v"], &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("annotations need an image index"), "{}", run.stderr);
}

#[test]
fn load_puts_the_image_into_the_docker_daemon() {
    if !require(&["curl", "flock"]) {
        return;
    }
    let ws = Workspace::new();
    // No daemon: a clear error before anything is built.
    let nowhere = format!("unix://{}", ws.path("no-docker.sock").display());
    let run = build(&ws, "load", &["-t", "loaded", "--load"], &[("DOCKER_HOST", &nowhere)]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("no Docker daemon answers at"), "{}", run.stderr);
    assert!(!run.stderr.contains("writing image"), "failed before the build: {}", run.stderr);

    let Some(env) = rbuild_test_support::Reference::Docker26.require() else { return };
    let _one_at_a_time = crate::outputs::DOCKER_LOADS.lock().unwrap_or_else(|e| e.into_inner());
    let docker_host = env.iter().find(|(k, _)| k == "DOCKER_HOST").map(|(_, v)| v.clone()).expect("DOCKER_HOST");
    let name = format!("rbuild-test/{}:1", unique("load"));
    let iid = ws.path("iid");
    let iid_arg = iid.to_str().unwrap().to_string();
    build(&ws, "load", &["-t", &name, "--load", "--iidfile", &iid_arg], &[("DOCKER_HOST", &docker_host)]).success();
    let id = std::fs::read_to_string(&iid).expect("iidfile");
    let inspect = crate::support::docker(&env, &["image", "inspect", "--format", "{{.Id}} {{.Config.Labels}}", &name]);
    let inspect = inspect.success();
    assert!(inspect.stdout.starts_with(&id), "docker has the image rbuild built ({id}): {}", inspect.stdout);
    assert!(inspect.stdout.contains("built:yes"), "{}", inspect.stdout);
    let _ = crate::support::docker(&env, &["image", "rm", &name]);
}

#[test]
fn attestation_and_builder_flags_are_accepted_or_refused_clearly() {
    if !require(&[]) {
        return;
    }
    let ws = Workspace::new();
    // Switched off: accepted, and the build happens.
    let off = ["--provenance=false", "--sbom", "false", "--attest", "type=sbom,disabled=true", "-t", "noattest"];
    build(&ws, "attest", &off, &[]).success();
    ws.rbuild("s", &["inspect", "noattest"]).success();
    let run = build(&ws, "attest", &["--builder", "mybuilder", "-D", "-t", "withbuilder"], &[]).success();
    assert!(run.stderr.contains("--builder mybuilder is ignored"), "{}", run.stderr);
    ws.rbuild("s", &["inspect", "withbuilder"]).success();
    let run = build(&ws, "attest", &["--cgroup-parent", "/ci"], &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("--cgroup-parent /ci: not supported"), "{}", run.stderr);
    // Switched on (issue 15 built them): accepted, in both spellings; an unknown type is refused.
    for flags in [&["--provenance=mode=max"][..], &["--sbom=true"], &["--attest", "type=provenance,mode=min"]] {
        build(&ws, "attest", flags, &[]).success();
    }
    let run = build(&ws, "attest", &["--attest", "type=spdx"], &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("unknown attestation type"), "{}", run.stderr);
    // Annotations are never silently dropped: a type rbuild does not know is refused (the multi-platform ones are
    // tested in multiplatform.rs).
    let run = build(&ws, "attest", &["--platform", "linux/amd64,linux/arm64", "--annotation", "layer:k=v"], &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("unknown annotation type \"layer\""), "{}", run.stderr);
}

#[test]
fn every_secret_form_buildx_has_reaches_the_step() {
    if !require(&["runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("s", "base");
    let file = ws.path("secret.txt");
    std::fs::write(&file, "s3cret").unwrap();
    let f = file.to_str().unwrap();
    let dockerfile = "FROM base\nRUN --mount=type=secret,id=tok grep -qx 's3cre[t]' /run/secrets/tok\n";
    let ctx = ws.context("secrets", &[("Dockerfile", dockerfile)]);
    let ctx = ctx.to_str().unwrap();
    let forms = [
        format!("id=tok,src={f}"),
        format!("id=tok,source={f}"),
        format!("type=file,id=tok,src={f}"),
        "id=tok,env=MY_SECRET".to_string(),
        "type=env,id=tok,env=MY_SECRET".to_string(),
        "type=env,id=tok".to_string(),
        "id=tok".to_string(),
    ];
    let env = [("MY_SECRET", "s3cret"), ("tok", "s3cret")];
    for form in &forms {
        let run = rbuild_stdin(&ws, "s", &["build", "--no-cache", "--secret", form, ctx], b"", &env);
        assert_eq!(run.code, Some(0), "--secret {form}: {}", run.stderr);
        assert!(!run.stderr.contains("s3cret"), "the value is never logged: {}", run.stderr);
    }
    // A wrong value fails the step: the test above could fail.
    let run = rbuild_stdin(
        &ws,
        "s",
        &["build", "--no-cache", "--secret", "id=tok,env=MY_SECRET", ctx],
        b"",
        &[("MY_SECRET", "nope")],
    );
    assert_ne!(run.code, Some(0), "{}", run.stderr);
}

#[test]
fn build_contexts_feed_copy_from_and_from() {
    if !require(&["curl", "busybox", "runc"]) {
        return;
    }
    let ws = Workspace::new();
    let base =
        ws.context("realbase", &[("Dockerfile", "FROM scratch\nCOPY b.txt /b.txt\n"), ("b.txt", "from the image\n")]);
    ws.rbuild("s", &["build", "-t", "realbase", base.to_str().unwrap()]).success();
    let extra = ws.context("extra", &[("e.txt", "from a directory\n")]);
    let www = ws.path("www");
    std::fs::create_dir_all(&www).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(10);
    h.set_mode(0o644);
    tar.append_data(&mut h, "w.txt", &b"from http\n"[..]).unwrap();
    std::fs::write(www.join("web.tar"), tar.into_inner().unwrap()).unwrap();
    let url = crate::sources::serve_dir(&www);

    let df =
        "FROM alias\nCOPY --from=extra e.txt /e.txt\nCOPY --from=web w.txt /w.txt\nCOPY --from=img /b.txt /again.txt\n";
    let ctx = ws.context("main", &[("Dockerfile", df)]);
    let out = ws.path("out");
    let contexts = [
        "alias=docker-image://realbase".to_string(),
        format!("extra={}", extra.display()),
        format!("web={url}/web.tar"),
        "img=docker-image://realbase:latest".to_string(),
    ];
    let mut args = vec!["build".to_string(), "-o".into(), format!("type=local,dest={}", out.display())];
    for c in &contexts {
        args.extend(["--build-context".to_string(), c.clone()]);
    }
    args.push(ctx.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ws.rbuild("s", &args).success();
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    assert_eq!(read("b.txt"), "from the image\n", "FROM alias is the docker-image context");
    assert_eq!(read("e.txt"), "from a directory\n");
    assert_eq!(read("w.txt"), "from http\n");
    assert_eq!(read("again.txt"), "from the image\n");

    // The directory context is read by content: an edit reaches the next build.
    std::fs::write(extra.join("e.txt"), "edited\n").unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    ws.rbuild("s", &args).success();
    assert_eq!(read("e.txt"), "edited\n");

    // FROM a directory context: its content is the stage's root filesystem, and steps run on it.
    let busybox = std::fs::read(crate::support::which("busybox").expect("busybox")).unwrap();
    std::fs::create_dir_all(extra.join("bin")).unwrap();
    std::fs::write(extra.join("bin/busybox"), busybox).unwrap();
    std::fs::set_permissions(extra.join("bin/busybox"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let df = "FROM extra\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox cat /e.txt > /ran.txt\"]\n";
    let from_dir = ws.context("fromdir", &[("Dockerfile", df)]);
    let out = ws.path("fromdir-out");
    let dest = format!("type=local,dest={}", out.display());
    let ctx_arg = format!("extra={}", extra.display());
    ws.rbuild("s", &["build", "--build-context", &ctx_arg, "-o", &dest, from_dir.to_str().unwrap()]).success();
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    assert_eq!(read("e.txt"), "edited\n", "the directory is the root filesystem");
    assert_eq!(read("ran.txt"), "edited\n", "a RUN step ran on it");
}
