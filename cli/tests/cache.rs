//! The cache is exact: what a step selects decides whether it reruns, nothing else (issue #4). Also the store
//! under concurrent builds, `du`/`prune`/`check`, automatic GC, and `--explain-cache`.

use crate::support::{Run, Workspace, require};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

const DOCKERFILE: &str = "\
FROM local/busybox
COPY app/ /app/
COPY conf.txt /conf.txt
RUN cat /conf.txt && ls /app
";

/// How each step whose name contains `needle` ended: `CACHED` or `DONE` (from the plain progress output).
fn status(run: &Run, needle: &str) -> String {
    let mut number = None;
    for line in run.stderr.lines() {
        let Some((n, text)) = line.strip_prefix('#').and_then(|l| l.split_once(' ')) else { continue };
        if number.is_none() && text.starts_with('[') && text.contains(needle) {
            number = Some(n.to_string());
        } else if Some(n) == number.as_deref() && (text == "CACHED" || text.starts_with("DONE")) {
            return text.split(' ').next().unwrap_or_default().to_string();
        }
    }
    panic!("no step {needle:?} in:\n{}", run.stderr)
}

fn steps_that_ran(run: &Run) -> usize {
    run.stderr.lines().filter(|l| l.starts_with('#') && l.contains(" DONE ")).count()
}

/// A store with the busybox base and the context of [`DOCKERFILE`].
fn setup(ws: &Workspace) -> std::path::PathBuf {
    ws.build_base("store", "local/busybox");
    ws.context(
        "app",
        &[
            ("Dockerfile", DOCKERFILE),
            ("app/a.txt", "alpha"),
            ("app/b.txt", "beta"),
            ("app/notes.md", "notes"),
            ("conf.txt", "conf-1"),
            ("unused.txt", "not copied"),
            (".dockerignore", "app/*.md\n"),
        ],
    )
}

fn build(ws: &Workspace, ctx: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["build"];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    ws.rbuild("store", &args).success()
}

#[test]
fn editing_an_unselected_context_file_reruns_nothing() {
    if !require(&["runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    let ctx = setup(&ws);
    assert_eq!(status(&build(&ws, &ctx, &[]), "COPY app/"), "DONE");
    fs::write(ctx.join("unused.txt"), "edited, and longer than before").unwrap();
    fs::write(ctx.join("new-unused.txt"), "added").unwrap();
    fs::write(ctx.join("app/notes.md"), "ignored by .dockerignore, so not selected").unwrap();
    let again = build(&ws, &ctx, &[]);
    assert_eq!(steps_that_ran(&again), 0, "nothing may rerun:\n{}", again.stderr);
    assert_eq!(status(&again, "RUN cat"), "CACHED");
}

#[test]
fn a_dockerignore_change_reruns_only_the_copy_whose_selection_changed() {
    if !require(&["runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    let ctx = setup(&ws);
    build(&ws, &ctx, &[]);
    // A new pattern that selects the same files changes nothing.
    fs::write(ctx.join(".dockerignore"), "app/*.md\nno-such-file\n").unwrap();
    assert_eq!(steps_that_ran(&build(&ws, &ctx, &[])), 0);
    // Re-including notes.md changes what `COPY app/` selects: it reruns (and what builds on it), `COPY conf.txt`'s
    // own selection did not change but its input did.
    fs::write(ctx.join(".dockerignore"), "unused.txt\n").unwrap();
    let run = build(&ws, &ctx, &["--explain-cache"]);
    assert_eq!(status(&run, "COPY app/"), "DONE");
    assert!(run.stderr.contains("files added: app/notes.md"), "{}", run.stderr);
    assert!(
        run.stderr.lines().any(|l| l.ends_with(" notes.md") && !l.contains("cache miss")),
        "the RUN sees the new file:\n{}",
        run.stderr
    );
}

#[test]
fn chmod_of_a_copied_file_reruns_the_copy() {
    if !require(&["runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    let ctx = setup(&ws);
    build(&ws, &ctx, &[]);
    fs::set_permissions(ctx.join("app/a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    let run = build(&ws, &ctx, &["--explain-cache"]);
    assert_eq!(status(&run, "COPY app/"), "DONE");
    assert!(run.stderr.contains("cache miss: files changed: app/a.txt"), "{}", run.stderr);
    // Only the mode changed, and the content hash never sees mtimes: restoring the mode is a cache hit again.
    fs::set_permissions(ctx.join("app/a.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(steps_that_ran(&build(&ws, &ctx, &[])), 0);
}

#[test]
fn a_same_size_edit_right_after_a_cached_build_reruns_the_copy() {
    if !require(&["runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    let ctx = setup(&ws);
    build(&ws, &ctx, &[]);
    // The cached build records conf.txt's stat; the edit lands within the same second, same size
    // (moby/buildkit#4817).
    let cached = build(&ws, &ctx, &[]);
    assert_eq!(status(&cached, "COPY conf.txt"), "CACHED");
    fs::write(ctx.join("conf.txt"), "conf-2").unwrap();
    let run = build(&ws, &ctx, &[]);
    assert_eq!(status(&run, "COPY conf.txt"), "DONE");
    assert_eq!(status(&run, "COPY app/"), "CACHED");
    assert!(run.stderr.contains("conf-2"), "the RUN sees the edit:\n{}", run.stderr);
}

#[test]
fn explain_cache_names_the_changed_build_arg_and_instruction() {
    if !require(&["runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("store", "local/busybox");
    let dockerfile = "FROM local/busybox\nARG V=1\nRUN echo v=$V > /v\nRUN echo done\n";
    let ctx = ws.context("explain", &[("Dockerfile", dockerfile)]);
    build(&ws, &ctx, &[]);
    let run = build(&ws, &ctx, &["--explain-cache", "--build-arg", "V=2"]);
    assert!(run.stderr.contains("cache miss: variable V changed: \"1\" -> \"2\""), "{}", run.stderr);
    // Step names show build args expanded, as BuildKit's progress titles do.
    assert!(run.stderr.contains("cache miss: its input changed: [stage-0] RUN echo v=2 > /v"), "{}", run.stderr);
    fs::write(ctx.join("Dockerfile"), dockerfile.replace("echo done", "echo finished")).unwrap();
    let run = build(&ws, &ctx, &["--explain-cache", "--build-arg", "V=2"]);
    assert_eq!(steps_that_ran(&run), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "cache miss: instruction changed: \"[stage-0] RUN echo done\" -> \"[stage-0] RUN echo finished\""
        ),
        "{}",
        run.stderr
    );
    let run = build(&ws, &ctx, &["--explain-cache", "--no-cache"]);
    assert!(run.stderr.contains("cache miss: the cache was disabled for this step"), "{}", run.stderr);
}

#[test]
fn four_concurrent_builds_on_one_store_succeed_and_leave_it_consistent() {
    if !require(&["runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    let ctx = setup(&ws);
    // Two pairs: the same build twice (racing on the same keys and layers) and two that differ in one file.
    let other = ws.context("other", &[("Dockerfile", DOCKERFILE), ("app/a.txt", "x"), ("conf.txt", "other")]);
    let children: Vec<_> = [&ctx, &ctx, &other, &other]
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Command::new(env!("CARGO_BIN_EXE_rbuild"))
                .arg("--root")
                .arg(ws.path("store"))
                .args(["build", "-t", &format!("local/concurrent-{i}"), c.to_str().unwrap()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        Run::from(out, format!("concurrent build {i}")).success();
    }
    let check = ws.rbuild("store", &["check"]).success();
    assert!(check.stdout.contains("store is consistent"), "{}", check.stdout);
    let tmp: Vec<_> = fs::read_dir(ws.path("store/tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "every build removed its tmp dir: {tmp:?}");
    // Everything the four recorded is usable: both contexts rebuild fully cached.
    assert_eq!(steps_that_ran(&build(&ws, &ctx, &[])), 0);
    assert_eq!(steps_that_ran(&build(&ws, &other, &[])), 0);
}

/// The number of cache entries `rbuild du` reports.
fn cache_entries(ws: &Workspace) -> usize {
    let du = ws.rbuild("store", &["du"]).success();
    du.stdout
        .lines()
        .find_map(|l| l.strip_prefix("cache entries: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no cache entry count in:\n{}", du.stdout))
}

/// Bytes a directory tree takes on disk, measured independently of rbuild.
fn disk_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = fs::symlink_metadata(p) else { return 0 };
    let mut n = md.blocks() * 512;
    if md.is_dir() {
        for e in fs::read_dir(p).unwrap().flatten() {
            n += disk_bytes(&e.path());
        }
    }
    n
}

#[test]
fn prune_keeps_tagged_images_and_frees_space() {
    if !require(&["runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    let ctx = setup(&ws);
    build(&ws, &ctx, &["-t", "local/app"]);
    // An untagged build with a big layer: dangling cache.
    let big = ws.context("big", &[("Dockerfile", "FROM local/busybox\nRUN head -c 3000000 /dev/zero > /big\n")]);
    build(&ws, &big, &[]);
    // A cache mount directory, as RUN --mount=type=cache leaves them.
    fs::create_dir_all(ws.path("store/cachemounts/m1")).unwrap();
    fs::write(ws.path("store/cachemounts/m1/data"), vec![1u8; 100_000]).unwrap();
    let du = ws.rbuild("store", &["du"]).success();
    let mounts = du.stdout.lines().find(|l| l.starts_with("cache mounts")).unwrap_or_default();
    assert!(mounts.contains(" 1 "), "du counts the cache mount: {}", du.stdout);
    let entries_before = cache_entries(&ws);
    let before = disk_bytes(&ws.path("store"));

    let pruned = ws.rbuild("store", &["prune"]).success();
    assert!(pruned.stdout.contains("Total reclaimed space"), "{}", pruned.stdout);
    let after = disk_bytes(&ws.path("store"));
    assert!(after + 3_000_000 <= before, "prune freed the dangling layer: {before} -> {after}");
    assert!(!ws.path("store/cachemounts/m1").exists(), "cache mounts are removed");
    let entries_after = cache_entries(&ws);
    assert!(entries_after < entries_before);
    // Tagged images, and the cache that builds them, survive a plain prune.
    let images = ws.rbuild("store", &["images"]).success();
    assert!(images.stdout.contains("local/app") && images.stdout.contains("local/busybox"), "{}", images.stdout);
    assert_eq!(steps_that_ran(&build(&ws, &ctx, &["-t", "local/app"])), 0);
    assert_eq!(status(&build(&ws, &big, &[]), "RUN head"), "DONE", "the dangling result was pruned");

    // --all drops all cache but no tagged image: builds on them still work.
    ws.rbuild("store", &["prune", "--all"]).success();
    assert_eq!(cache_entries(&ws), 0);
    ws.rbuild("store", &["inspect", "local/app"]).success();
    let on_app = ws.context("on-app", &[("Dockerfile", "FROM local/app\nRUN cat /conf.txt /app/a.txt\n")]);
    let run = build(&ws, &on_app, &[]);
    assert!(run.stderr.contains("conf-1"), "{}", run.stderr);
    let check = ws.rbuild("store", &["check"]).success();
    assert!(check.stdout.contains("store is consistent"), "{}", check.stdout);
}

#[test]
fn automatic_gc_keeps_the_store_under_the_configured_size_but_keeps_tagged_images() {
    if !require(&["runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("store", "local/busybox");
    fs::write(ws.path("store/config.json"), r#"{"gc": {"keep_storage": "1MB"}}"#).unwrap();
    let big = ws.context("big", &[("Dockerfile", "FROM local/busybox\nRUN head -c 3000000 /dev/zero > /big\n")]);
    let run = build(&ws, &big, &[]);
    assert!(run.stderr.contains("gc: store was over"), "{}", run.stderr);
    assert_eq!(cache_entries(&ws), 0, "all cache was collected");
    ws.rbuild("store", &["inspect", "local/busybox"]).success();
    let check = ws.rbuild("store", &["check"]).success();
    assert!(check.stdout.contains("store is consistent"), "{}", check.stdout);
}

#[test]
fn no_cache_filter_reruns_only_the_named_stage() {
    if !require(&["runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("store", "local/busybox");
    let dockerfile = "\
FROM local/busybox AS deps
RUN echo deps > /deps
FROM local/busybox AS build
RUN echo build > /build
FROM local/busybox
COPY --from=deps /deps /deps
COPY --from=build /build /build
";
    let ctx = ws.context("filter", &[("Dockerfile", dockerfile)]);
    build(&ws, &ctx, &[]);
    let run = build(&ws, &ctx, &["--no-cache-filter", "build"]);
    assert_eq!(status(&run, "RUN echo build"), "DONE");
    assert_eq!(status(&run, "RUN echo deps"), "CACHED");
    // The rerun wrote the same file, so what copies it is still cached (keyed by the content it reads).
    assert_eq!(status(&run, "COPY --from=build"), "CACHED");
    let all = build(&ws, &ctx, &["--no-cache"]);
    assert_eq!(steps_that_ran(&all), 4, "{}", all.stderr);
}

#[test]
fn pull_re_resolves_a_tag_that_is_already_in_the_store() {
    if !require(&["runc", "busybox", "docker-registry"]) {
        return;
    }
    let ws = Workspace::new();
    let reg = crate::support::Registry::start();
    let base = format!("{}/{}/base:latest", reg.addr, crate::support::unique("pull"));
    let base_ctx = ws.context_from("busybox-base");
    ws.rbuild("publisher", &["build", "-t", &base, "--push", base_ctx.to_str().unwrap()]).success();
    let ctx = ws.context("on-base", &[("Dockerfile", &format!("FROM {base}\nRUN cat /version 2>/dev/null; true\n"))]);
    let first = build(&ws, &ctx, &[]);
    assert!(first.stderr.contains("pulling"), "the first build pulls:\n{}", first.stderr);

    // A new image is pushed under the same tag.
    fs::write(base_ctx.join("version"), "v2").unwrap();
    let df = fs::read_to_string(base_ctx.join("Dockerfile")).unwrap();
    fs::write(base_ctx.join("Dockerfile"), format!("{df}COPY version /version\n")).unwrap();
    ws.rbuild("publisher", &["build", "-t", &base, "--push", base_ctx.to_str().unwrap()]).success();

    // Without --pull the tag in the local store is used, as Docker does.
    let local = build(&ws, &ctx, &[]);
    assert!(!local.stderr.contains("pulling"), "{}", local.stderr);
    assert_eq!(status(&local, "RUN cat /version"), "CACHED");
    let pulled = build(&ws, &ctx, &["--pull"]);
    assert!(pulled.stderr.contains("pulling"), "{}", pulled.stderr);
    assert_eq!(status(&pulled, "RUN cat /version"), "DONE");
    assert!(pulled.stderr.lines().any(|l| l.ends_with(" v2")), "the new base is used:\n{}", pulled.stderr);
}

/// Regression (issue #10): an unreadable cache index entry was a silent miss. Now the build names it, reruns the
/// step and replaces the entry; `rbuild check` finds it before that.
#[test]
fn a_corrupt_cache_entry_is_reported_rerun_and_replaced() {
    if !require(&["runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    let ctx = setup(&ws);
    let entries = || -> std::collections::BTreeSet<_> {
        fs::read_dir(ws.path("store/index/cache"))
            .unwrap()
            .flat_map(|shard| fs::read_dir(shard.unwrap().path()).unwrap())
            .map(|e| e.unwrap().path())
            .collect()
    };
    let base_entries = entries();
    build(&ws, &ctx, &[]);
    // One of the app's steps (the base image's build made other entries), under every key it is stored by (its
    // definition key, and its content key where that differs): all of them corrupt, so the step must run again.
    let new_entries: Vec<_> = entries().difference(&base_entries).cloned().collect();
    let output_of = |p: &std::path::Path| -> Option<serde_json::Value> {
        serde_json::from_slice::<serde_json::Value>(&fs::read(p).ok()?).ok().map(|v| v["output"].clone())
    };
    let step_output = output_of(new_entries.first().expect("the build recorded cache entries"));
    let corrupt: Vec<_> = new_entries.iter().filter(|p| output_of(p) == step_output).cloned().collect();
    for entry in &corrupt {
        fs::write(entry, b"{\"output\": truncated").unwrap();
    }
    let hexes: Vec<String> = corrupt.iter().map(|e| e.file_stem().unwrap().to_str().unwrap().to_string()).collect();

    let check = ws.rbuild("store", &["check"]);
    assert_eq!(check.code, Some(1), "check fails on a corrupt entry:\n{}", check.stdout);
    for entry in &corrupt {
        assert!(check.stdout.contains(&format!("malformed cache entry {}", entry.display())), "{}", check.stdout);
    }

    let run = build(&ws, &ctx, &[]);
    let warnings: Vec<&str> = run.stderr.lines().filter(|l| l.contains("WARNING: cache index")).collect();
    assert!(!warnings.is_empty(), "no warning about the corrupt entry:\n{}", run.stderr);
    for warning in &warnings {
        assert!(
            hexes.iter().any(|hex| warning.contains(&format!("cannot use the entry for sha256:{hex}"))),
            "{warning}"
        );
        assert!(warning.contains("malformed index entry"), "{warning}");
        assert!(warning.ends_with("the step runs again and replaces it"), "{warning}");
    }
    assert_eq!(steps_that_ran(&run), 1, "only the step whose entries were corrupt reruns:\n{}", run.stderr);

    let again = build(&ws, &ctx, &[]);
    assert_eq!(steps_that_ran(&again), 0, "the rerun replaced the entry:\n{}", again.stderr);
    assert!(!again.stderr.contains("WARNING"), "{}", again.stderr);
    let check = ws.rbuild("store", &["check"]).success();
    assert!(check.stdout.contains("store is consistent"), "{}", check.stdout);
}
