//! The remote cache (issue 13) between two "runners": separate stores, the context at different paths, a real
//! registry on loopback (logging every request) and OCI layout directories read back by skopeo.

use crate::support::Registry;
use crate::support::{Run, Workspace, cmd, require, unique};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const TOOLS: &[&str] = &["docker-registry", "skopeo", "curl", "busybox"];

/// A two-stage build on `FROM scratch` (no base image to pull): an intermediate stage whose RUN output the final
/// stage copies, and a RUN in the final stage. `marker` changes the keys of every step.
fn context(ws: &Workspace, name: &str, marker: &str) -> PathBuf {
    let ctx = ws.context(
        name,
        &[
            (
                "Dockerfile",
                &format!(
                    "FROM scratch AS tools\nCOPY busybox /bin/busybox\n\
                     RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox mkdir -p /out && echo {marker} > /out/x\"]\n\
                     FROM scratch\nCOPY busybox /bin/busybox\nCOPY a.txt /a.txt\nCOPY --from=tools /out/x /x\n\
                     RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo {marker} >> /a.txt\"]\n"
                ),
            ),
            ("a.txt", "hello\n"),
        ],
    );
    std::fs::copy("/bin/busybox", ctx.join("busybox")).expect("busybox-static provides /bin/busybox");
    // COPY keeps mtimes, which are not part of a key: contexts made at different times would give the same key
    // different layers (the cache then keeps the first writer's, and steps after it follow that one).
    let fixed = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    for f in ["busybox", "a.txt"] {
        std::fs::File::options().write(true).open(ctx.join(f)).unwrap().set_modified(fixed).unwrap();
    }
    ctx
}

/// Step lines that were CACHED, by step name, and the steps that ran.
fn outcome(run: &Run) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut names = std::collections::BTreeMap::new();
    let (mut cached, mut ran) = (BTreeSet::new(), BTreeSet::new());
    for line in run.stderr.lines() {
        let Some((num, rest)) = line.strip_prefix('#').and_then(|l| l.split_once(' ')) else { continue };
        if num == "0" {
            continue;
        }
        match rest {
            "CACHED" => {
                cached.insert(names.get(num).cloned().unwrap_or_default());
            }
            r if r.starts_with("DONE") => {
                ran.insert(names.get(num).cloned().unwrap_or_default());
            }
            r if r.starts_with('[') => {
                names.insert(num.to_string(), r.to_string());
            }
            _ => {}
        }
    }
    (cached, ran)
}

/// The index (config blob) of the cache manifest a local cache directory holds, as JSON.
fn layout_index(dir: &Path) -> serde_json::Value {
    let raw = cmd("skopeo", &["inspect", "--raw", &format!("oci:{}:latest", dir.display())]).success();
    let manifest: serde_json::Value = serde_json::from_str(&raw.stdout).unwrap();
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.rbuild.cache.index.v1+json", "{manifest}");
    let digest = manifest["config"]["digest"].as_str().unwrap();
    let bytes = std::fs::read(dir.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The index of the cache manifest at `reference` in the registry.
fn registry_index(addr: &str, reference: &str) -> serde_json::Value {
    let raw = cmd("skopeo", &["inspect", "--tls-verify=false", "--raw", &format!("docker://{reference}")]).success();
    let manifest: serde_json::Value = serde_json::from_str(&raw.stdout).unwrap();
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.rbuild.cache.index.v1+json", "{manifest}");
    let (repo, _) = reference.strip_prefix(&format!("{addr}/")).unwrap().rsplit_once(':').unwrap();
    let digest = manifest["config"]["digest"].as_str().unwrap();
    let blob = cmd("curl", &["-sf", &format!("http://{addr}/v2/{repo}/blobs/{digest}")]).success();
    serde_json::from_str(&blob.stdout).unwrap()
}

fn keys(index: &serde_json::Value) -> BTreeSet<String> {
    index["entries"].as_object().unwrap().keys().cloned().collect()
}

/// Runner A exports (mode=max), runner B (empty store, context elsewhere) hits every step, then pushes: every
/// layer is mounted from the cache repository, nothing is downloaded, no layer is uploaded.
#[test]
fn runner_b_hits_every_step_and_its_push_only_mounts() {
    if !require(TOOLS) {
        return;
    }
    let ws = Workspace::new();
    let reg = Registry::start_own();
    let cache = format!("{}/{}:buildcache", reg.addr, unique("cache/app"));
    let a_ctx = context(&ws, "runner-a", "one");
    let a = ws.build("store-a", &a_ctx, &["--cache-to", &format!("type=registry,ref={cache},mode=max")]).success();
    assert!(a.stderr.contains("exported cache to"), "{}", a.stderr);

    let b_ctx = ws.path("elsewhere/deeper/runner-b");
    std::fs::create_dir_all(b_ctx.parent().unwrap()).unwrap();
    std::fs::rename(&a_ctx, &b_ctx).unwrap();
    let image = format!("{}/{}:1", reg.addr, unique("team/app"));
    let before = reg.log().len();
    let b = ws.build("store-b", &b_ctx, &["--cache-from", &cache, "-t", &image, "--push"]).success();
    let (cached, ran) = outcome(&b);
    assert!(ran.is_empty(), "nothing runs on runner B: {ran:?}\n{}", b.stderr);
    assert_eq!(cached.len(), 6, "every step is CACHED: {cached:?}\n{}", b.stderr);
    assert!(b.stderr.contains("0 layers (0 bytes) downloaded"), "{}", b.stderr);
    assert!(b.stderr.contains(": 1 uploaded, 4 mounted"), "only the image config is uploaded:\n{}", b.stderr);

    // The registry saw cross-repository mounts for the layers and no upload but the config's.
    let log = &reg.log()[before..];
    let mounts =
        log.lines().filter(|l| l.contains("uploads/?mount=") && l.contains("http.request.method=POST")).count();
    assert!(mounts >= 4, "layers are mounted:\n{log}");
    let blob_gets =
        log.lines().filter(|l| l.contains("http.request.method=GET") && l.contains("/blobs/sha256:")).count();
    assert_eq!(blob_gets, 1, "runner B reads the cache index blob and no layer:\n{log}");
    let uploads =
        log.lines().filter(|l| l.contains("http.request.method=PUT") && l.contains("/blobs/uploads/")).count();
    assert_eq!(uploads, 1, "one blob upload (the image config):\n{log}");
    let inspect = cmd("skopeo", &["inspect", "--tls-verify=false", &format!("docker://{image}")]).success();
    assert!(inspect.stdout.contains("\"Layers\""), "{}", inspect.stdout);
    // The image is tagged in store B without its files; a build on top of it pulls them then, and runs.
    let next =
        ws.context("next", &[("Dockerfile", &format!("FROM {image}\nRUN [\"/bin/busybox\", \"cat\", \"/x\"]\n"))]);
    let n = ws.build("store-b", &next, &[]).success();
    assert!(n.stderr.contains("pulling"), "{}", n.stderr);
}

/// Keys are portable: two stores, the context at two paths, the same keys, step for step.
#[test]
fn keys_are_the_same_in_any_store_and_context_path() {
    if !require(TOOLS) {
        return;
    }
    let ws = Workspace::new();
    let one = context(&ws, "first", "same");
    let other = ws.path("some/other/place");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    cmd("cp", &["-a", one.to_str().unwrap(), other.to_str().unwrap()]).success();
    let (d1, d2) = (ws.path("cache-1"), ws.path("cache-2"));
    // No SOURCE_DATE_EPOCH: the two RUNs make layers with other file times, which must not reach any key.
    for (store, ctx, dest) in [("store-1", &one, &d1), ("store-2", &other, &d2)] {
        let to = format!("type=local,dest={},mode=max", dest.display());
        ws.build(store, ctx, &["--cache-to", &to]).success();
        // A second apart at least, so the RUNs' file times differ.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let (i1, i2) = (layout_index(&d1), layout_index(&d2));
    assert!(keys(&i1).len() >= 6, "every step of both stages: {i1}");
    assert_eq!(keys(&i1), keys(&i2), "the same build gives the same keys anywhere");
    let layers = |i: &serde_json::Value| {
        i["entries"].as_object().unwrap().values().map(|e| e["layers"].clone()).collect::<Vec<_>>()
    };
    assert_ne!(layers(&i1), layers(&i2), "from layers that differ (file times): {i1}\n{i2}");
    let text = serde_json::to_string(&i1).unwrap();
    assert!(!text.contains(ws.dir.path().to_str().unwrap()), "no host path in the cache: {text}");
    // And the directory cache works in a third, empty store.
    let c = ws.build("store-3", &other, &["--cache-from", &format!("type=local,src={}", d1.display())]).success();
    let (cached, ran) = outcome(&c);
    assert!(ran.is_empty() && cached.len() == 6, "{}", c.stderr);
}

/// mode=min holds the final image's steps; the intermediate stage's RUN is a hit only with mode=max.
#[test]
fn an_intermediate_stage_is_a_hit_only_with_mode_max() {
    if !require(TOOLS) {
        return;
    }
    let ws = Workspace::new();
    let reg = Registry::start_own();
    let min = format!("{}/{}:min", reg.addr, unique("cache/modes"));
    let max = format!("{}/{}:max", reg.addr, unique("cache/modes"));
    let ctx = context(&ws, "modes", "m");
    ws.build(
        "store-a",
        &ctx,
        &[
            "--cache-to",
            &format!("type=registry,ref={min}"),
            "--cache-to",
            &format!("type=registry,ref={max},mode=max"),
        ],
    )
    .success();
    let tools_run = |set: &BTreeSet<String>| set.iter().any(|s| s.starts_with("[tools] RUN"));
    let b = ws.build("store-b", &ctx, &["--cache-from", &min]).success();
    let (cached, ran) = outcome(&b);
    assert!(tools_run(&ran) && !tools_run(&cached), "min: the tools stage runs\n{}", b.stderr);
    assert!(cached.iter().any(|s| s.starts_with("[stage-1] RUN")), "min: the final stage hits\n{}", b.stderr);
    let c = ws.build("store-c", &ctx, &["--cache-from", &max]).success();
    let (cached, ran) = outcome(&c);
    assert!(ran.is_empty() && tools_run(&cached), "max: everything hits\n{}", c.stderr);
    assert!(keys(&registry_index(&reg.addr, &min)).len() < keys(&registry_index(&reg.addr, &max)).len());
}

/// `--cache-to type=inline` puts the cache in the pushed image's config; `--cache-from IMAGE` reads it back.
#[test]
fn inline_cache_is_read_back_from_the_image() {
    if !require(TOOLS) {
        return;
    }
    let ws = Workspace::new();
    let reg = Registry::start_own();
    let image = format!("{}/{}:1", reg.addr, unique("team/inline"));
    let ctx = context(&ws, "inline", "i");
    ws.build("store-a", &ctx, &["--cache-to", "type=inline", "-t", &image, "--push"]).success();
    let config =
        cmd("skopeo", &["inspect", "--tls-verify=false", "--config", "--raw", &format!("docker://{image}")]).success();
    assert!(config.stdout.contains("rbuild.cache.v1"), "{}", config.stdout);
    let b = ws.build("store-b", &ctx, &["--cache-from", &image]).success();
    let (cached, _) = outcome(&b);
    assert!(cached.iter().any(|s| s.starts_with("[stage-1] RUN")), "the final stage hits\n{}", b.stderr);
}

/// The manifest at `reference` (`host/repo:tag`), exactly as the registry serves it.
fn raw_manifest(addr: &str, reference: &str) -> Vec<u8> {
    let (repo, tag) = reference.strip_prefix(&format!("{addr}/")).unwrap().rsplit_once(':').unwrap();
    let url = format!("http://{addr}/v2/{repo}/manifests/{tag}");
    let out = std::process::Command::new("curl")
        .args(["-sf", "-H", "Accept: application/vnd.oci.image.manifest.v1+json", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "GET {url}");
    out.stdout
}

/// Puts `manifest` under `reference`'s tag, as a writer that lost a race would.
fn put_manifest(ws: &Workspace, addr: &str, reference: &str, manifest: &[u8]) {
    let (repo, tag) = reference.strip_prefix(&format!("{addr}/")).unwrap().rsplit_once(':').unwrap();
    let file = ws.path("manifest.json");
    std::fs::write(&file, manifest).unwrap();
    let url = format!("http://{addr}/v2/{repo}/manifests/{tag}");
    let data = format!("@{}", file.display());
    let args = ["-sf", "-X", "PUT", "-H", "Content-Type: application/vnd.oci.image.manifest.v1+json"];
    cmd("curl", &[&args[..], &["--data-binary", &data, &url]].concat()).success();
}

/// Two runners exporting different builds to one ref both keep their entries: even when the second one's write of
/// the main tag is replaced by a writer that read the index before it (the lost update a registry without
/// compare-and-swap allows, forced here), and when two exports really run at the same time.
#[test]
fn concurrent_exports_to_one_ref_keep_both_entries() {
    if !require(TOOLS) {
        return;
    }
    let ws = Workspace::new();
    let reg = Registry::start_own();
    let cache = format!("{}/{}:shared", reg.addr, unique("cache/shared"));
    let to = format!("type=registry,ref={cache},mode=max");
    let every_step_hits = |store: &str, ctx: &Path| {
        let r = ws.build(store, ctx, &["--cache-from", &cache]).success();
        let (cached, ran) = outcome(&r);
        assert!(ran.is_empty() && cached.len() == 6, "{store}: every step of its writer is kept\n{}", r.stderr);
    };

    // The lost update, step by step: writer 2 merges after writer 1, then a stale writer puts back the index it
    // read before writer 2's export.
    let (c1, c2) = (context(&ws, "writer-1", "w1"), context(&ws, "writer-2", "w2"));
    ws.build("store-1", &c1, &["--cache-to", &to]).success();
    let stale = raw_manifest(&reg.addr, &cache);
    ws.build("store-2", &c2, &["--cache-to", &to]).success();
    let both = keys(&registry_index(&reg.addr, &cache));
    put_manifest(&ws, &reg.addr, &cache, &stale);
    let after = keys(&registry_index(&reg.addr, &cache));
    assert!(after.len() < both.len(), "writer 2's entries are gone from the main tag: {after:?} vs {both:?}");
    every_step_hits("fresh-1", &c1);
    every_step_hits("fresh-2", &c2);

    // Two exports at the same time (built first, so the exports, not the builds, race).
    let (c3, c4) = (context(&ws, "writer-3", "w3"), context(&ws, "writer-4", "w4"));
    for (store, ctx) in [("store-3", &c3), ("store-4", &c4)] {
        ws.build(store, ctx, &[]).success();
    }
    let spawn = |store: &str, ctx: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rbuild"))
            .arg("--root")
            .arg(ws.path(store))
            .args(["build", "--cache-to", &to, ctx.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (p3, p4) = (spawn("store-3", &c3), spawn("store-4", &c4));
    for p in [p3, p4] {
        let out = p.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for (store, ctx) in [("fresh-1b", &c1), ("fresh-2b", &c2), ("fresh-3", &c3), ("fresh-4", &c4)] {
        every_step_hits(store, ctx);
    }
}

/// A cache source that cannot be reached is a warning; an export that fails fails the build unless
/// `ignore-error=true`.
#[test]
fn a_broken_cache_source_warns_and_the_build_goes_on() {
    if !require(TOOLS) {
        return;
    }
    let ws = Workspace::new();
    let ctx = context(&ws, "broken", "b");
    let r = ws.build("store", &ctx, &["--cache-from", "127.0.0.1:9/nothing/here:cache"]).success();
    assert!(r.stderr.contains("warning: cache source 127.0.0.1:9/nothing/here:cache cannot be read"), "{}", r.stderr);
    let failed = ws.build("store", &ctx, &["--cache-to", "type=registry,ref=127.0.0.1:9/nothing/here:cache"]);
    assert_ne!(failed.code, Some(0), "{}", failed.stderr);
    assert!(failed.stderr.contains("exporting the cache to 127.0.0.1:9/nothing/here:cache"), "{}", failed.stderr);
    let ignored =
        ws.build("store", &ctx, &["--cache-to", "type=registry,ref=127.0.0.1:9/nothing/here:cache,ignore-error=true"]);
    let ignored = ignored.success();
    assert!(ignored.stderr.contains("ignore-error=true"), "{}", ignored.stderr);
}

/// `cache-mounts=true`: a RUN that appends to a cache mount sees the previous runner's content on a runner with an
/// empty store (moby/buildkit#1474).
#[test]
fn cache_mount_contents_travel_to_the_next_runner() {
    if !require(TOOLS) {
        return;
    }
    let ws = Workspace::new();
    let reg = Registry::start_own();
    let cache = format!("{}/{}:mounts", reg.addr, unique("cache/mounts"));
    let ctx = ws.context(
        "mounts",
        &[(
            "Dockerfile",
            "FROM scratch\nCOPY busybox /bin/busybox\nARG RUNNER\n\
             RUN --mount=type=cache,id=downloads,target=/cache [\"/bin/busybox\", \"sh\", \"-c\", \
             \"echo $RUNNER >> /cache/log && /bin/busybox cp /cache/log /seen\"]\n",
        )],
    );
    std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    let to = format!("type=registry,ref={cache},cache-mounts=true");
    let a = ws.build("store-a", &ctx, &["--build-arg", "RUNNER=a", "--cache-to", &to]).success();
    assert!(a.stderr.contains("1 cache mounts"), "{}", a.stderr);
    let out = ws.path("out-b");
    let b = ws
        .build(
            "store-b",
            &ctx,
            &[
                "--build-arg",
                "RUNNER=b",
                "--cache-from",
                &cache,
                "--output",
                &format!("type=local,dest={}", out.display()),
            ],
        )
        .success();
    let seen = std::fs::read_to_string(out.join("seen")).unwrap();
    assert_eq!(seen, "a\nb\n", "runner B's RUN sees runner A's cache mount\n{}", b.stderr);
}

/// `--explain-cache` with `--cache-from`: a step another runner exported from other files says which source had
/// it and what differs; a step no source knows says so.
#[test]
fn a_remote_miss_is_explained_against_the_source() {
    if !require(TOOLS) {
        return;
    }
    let ws = Workspace::new();
    let reg = Registry::start_own();
    let cache = format!("{}/{}:explain", reg.addr, unique("cache/explain"));
    let a_ctx = context(&ws, "explain-a", "e");
    ws.build("store-a", &a_ctx, &["--cache-to", &format!("type=registry,ref={cache},mode=max")]).success();
    let b_ctx = context(&ws, "explain-b", "e");
    std::fs::write(b_ctx.join("a.txt"), "changed\n").unwrap();
    let dockerfile = std::fs::read_to_string(b_ctx.join("Dockerfile")).unwrap();
    std::fs::write(b_ctx.join("Dockerfile"), format!("{dockerfile}RUN [\"/bin/busybox\", \"true\"]\n")).unwrap();
    let b = ws.build("store-b", &b_ctx, &["--explain-cache", "--cache-from", &cache]).success();
    let (cached, ran) = outcome(&b);
    assert!(cached.iter().any(|s| s.starts_with("[tools] RUN")), "{}", b.stderr);
    assert!(ran.iter().any(|s| s.contains("COPY a.txt")), "{}", b.stderr);
    let near = format!("cache miss: cache source {cache} has this step from another build: files changed: a.txt");
    assert!(b.stderr.contains(&near), "the near match and what differs:\n{}", b.stderr);
    assert!(
        b.stderr.contains("cache miss: no cache source has its key or this step from another build"),
        "the new step:\n{}",
        b.stderr
    );
}
