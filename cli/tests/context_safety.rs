//! Reads from the build context stay in the context and respect `.dockerignore` (issue #9, holes 1 and 5): a source
//! that leads into an ignored path through a symlink finds nothing, as in BuildKit, for COPY, ADD, wildcards and
//! bind mounts; and a writer swapping context directories for symlinks while a build reads them never gets a host
//! file into a layer.

use crate::support::{Workspace, require};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY----- ctx-test-secret";

/// A context whose `.dockerignore` ignores `keys/` (which holds a key), with symlinks leading into it every way a
/// link can: relative, absolute (resolved at the context root, as BuildKit does), through `..`, chained, and one
/// straight at the ignored file.
fn keys_context(ws: &Workspace, name: &str, dockerfile: &str) -> PathBuf {
    let ctx = ws.context(
        name,
        &[("Dockerfile", dockerfile), (".dockerignore", "keys/\n"), ("keys/id_rsa", KEY), ("sub/ok.txt", "fine\n")],
    );
    symlink("keys", ctx.join("kl")).unwrap();
    symlink("/keys", ctx.join("abs")).unwrap();
    symlink("sub/../keys", ctx.join("dotdot")).unwrap();
    symlink("kl", ctx.join("chain")).unwrap();
    symlink("keys/id_rsa", ctx.join("idl")).unwrap();
    ctx
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if ft.is_file()
            && let Ok(bytes) = fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            found.push(path);
        }
    }
    found
}

#[test]
fn copy_through_a_symlink_into_an_ignored_dir_is_not_found() {
    if !require(&[]) {
        return;
    }
    let ws = Workspace::new();
    for (i, source) in ["kl/id_rsa", "abs/id_rsa", "dotdot/id_rsa", "chain/id_rsa", "idl", "kl/", "./kl/../kl/id_rsa"]
        .iter()
        .enumerate()
    {
        let ctx = keys_context(&ws, &format!("copy{i}"), &format!("FROM scratch\nCOPY {source} /leak\n"));
        let run = ws.build("store", &ctx, &[]);
        assert_ne!(run.code, Some(0), "COPY {source} must fail:\n{}", run.stderr);
        assert!(!run.stderr.contains("ctx-test-secret"), "{}", run.stderr);
        let shown = format!("/{}", rbuild_cache::contenthash::clean_clamped(source).display());
        assert!(run.stderr.contains(&format!("\"{shown}\": not found")), "COPY {source}:\n{}", run.stderr);
        assert!(run.stderr.contains(&format!("COPY {source} /leak")), "the error names the step:\n{}", run.stderr);
    }
    assert!(files_containing(&ws.path("store"), KEY.as_bytes()).is_empty(), "the key reached the store");
}

#[test]
fn add_and_wildcards_through_a_symlink_into_an_ignored_dir_find_nothing() {
    if !require(&[]) {
        return;
    }
    let ws = Workspace::new();
    let cases = [
        ("ADD kl/id_rsa /leak", "\"/kl/id_rsa\": not found"),
        ("ADD chain/ /leak/", "\"/chain\": not found"),
        ("COPY kl/* /leak/", "lstat /kl: no such file or directory"),
    ];
    for (i, (step, want)) in cases.iter().enumerate() {
        let ctx = keys_context(&ws, &format!("add{i}"), &format!("FROM scratch\n{step}\n"));
        let run = ws.build("store", &ctx, &[]);
        assert_ne!(run.code, Some(0), "{step} must fail:\n{}", run.stderr);
        assert!(run.stderr.contains(want), "{step}: want {want:?} in\n{}", run.stderr);
        assert!(run.stderr.contains(step), "the error names the step:\n{}", run.stderr);
    }
    // A wildcard that matches only ignored paths matches nothing, which BuildKit allows: the build succeeds and
    // copies nothing.
    for (i, step) in ["COPY k*/id_rsa /leak/", "COPY */id_rsa /leak/", "COPY id* /leak/"].iter().enumerate() {
        let ctx = keys_context(&ws, &format!("glob{i}"), &format!("FROM scratch\n{step}\n"));
        let out = ws.path(&format!("out-glob{i}"));
        ws.build("store", &ctx, &["-o", &format!("type=local,dest={}", out.display())]).success();
        assert!(!out.join("leak").exists(), "{step} copied something");
    }
    // Copying the whole context copies the links as links and leaves the ignored directory out.
    let ctx = keys_context(&ws, "all", "FROM scratch\nCOPY . /all/\n");
    let out = ws.path("out-all");
    ws.build("store", &ctx, &["-o", &format!("type=local,dest={}", out.display())]).success();
    assert!(!out.join("all/keys").exists());
    assert_eq!(fs::read_link(out.join("all/kl")).unwrap(), PathBuf::from("keys"));
    assert_eq!(fs::read_to_string(out.join("all/sub/ok.txt")).unwrap(), "fine\n");
    assert!(files_containing(&ws.path("store"), KEY.as_bytes()).is_empty(), "the key reached the store");
    assert!(files_containing(&out, KEY.as_bytes()).is_empty(), "the key reached the output");
}

#[test]
fn reincluded_files_stay_reachable_through_a_symlink() {
    if !require(&[]) {
        return;
    }
    let ws = Workspace::new();
    let ctx = keys_context(&ws, "reinclude", "FROM scratch\nCOPY kl/ /k/\n");
    fs::write(ctx.join(".dockerignore"), "keys/\n!keys/pub.txt\n").unwrap();
    fs::write(ctx.join("keys/pub.txt"), "public\n").unwrap();
    let out = ws.path("out");
    ws.build("store", &ctx, &["-o", &format!("type=local,dest={}", out.display())]).success();
    assert_eq!(fs::read_to_string(out.join("k/pub.txt")).unwrap(), "public\n");
    assert!(!out.join("k/id_rsa").exists(), "only the re-included file is copied");
}

#[test]
fn bind_mount_through_a_symlink_into_an_ignored_dir_is_not_found() {
    if !require(&["runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("store", "local/busybox");
    for source in ["kl", "abs", "chain/id_rsa", "idl"] {
        let dockerfile =
            format!("FROM local/busybox\nRUN --mount=type=bind,source={source},target=/m cat /m /m/id_rsa || true\n");
        let ctx = keys_context(&ws, &format!("bind-{source}").replace('/', "-"), &dockerfile);
        let run = ws.build("store", &ctx, &[]);
        assert!(!run.stderr.contains("ctx-test-secret"), "the key was readable through {source}:\n{}", run.stderr);
        assert_ne!(run.code, Some(0), "mounting {source} must fail:\n{}", run.stderr);
        let shown = format!("\"/{source}\": not found");
        assert!(run.stderr.contains(&shown), "{source}: want {shown:?} in\n{}", run.stderr);
    }
}

#[test]
fn dockerignore_itself_is_read_inside_the_context() {
    if !require(&[]) {
        return;
    }
    let ws = Workspace::new();
    // An absolute link resolves at the context root, as every context path does: the context's own file applies.
    let ctx = keys_context(&ws, "ignorelink", "FROM scratch\nCOPY keys/id_rsa /leak\n");
    fs::rename(ctx.join(".dockerignore"), ctx.join("real.dockerignore")).unwrap();
    symlink("/real.dockerignore", ctx.join(".dockerignore")).unwrap();
    let run = ws.build("store", &ctx, &[]);
    assert_ne!(run.code, Some(0), "the in-context .dockerignore (through an absolute link) applies:\n{}", run.stderr);
    assert!(run.stderr.contains("excluded by .dockerignore"), "{}", run.stderr);

    // A link to a host file is not followed out of the context: that file's patterns (which would ignore the key)
    // are never read, so here nothing is ignored and the build copies the key.
    let host = ws.path("host-ignore");
    fs::write(&host, "keys/\n").unwrap();
    fs::remove_file(ctx.join(".dockerignore")).unwrap();
    symlink(&host, ctx.join(".dockerignore")).unwrap();
    let out = ws.path("out");
    ws.build("store", &ctx, &["-o", &format!("type=local,dest={}", out.display())]).success();
    assert!(out.join("leak").is_file(), "the host file's patterns were not applied");
}

/// Hole 5: a thread swaps `ctx/d` for a symlink to a host directory holding a canary under the same names, while
/// builds `COPY d/ /out/`. Before the fix the walk listed `d` and then opened `ctx/d/<name>` by path, following
/// whatever `d` was by then. The canary must never reach a layer or an output.
#[test]
fn racing_symlink_swaps_never_copy_host_files() {
    if !require(&[]) {
        return;
    }
    let ws = Workspace::new();
    let ctx = ws.context("race", &[("Dockerfile", "FROM scratch\nCOPY d/ /out/\n")]);
    let canary_dir = ws.path("canary");
    fs::create_dir_all(ctx.join("d")).unwrap();
    fs::create_dir_all(&canary_dir).unwrap();
    const CANARY: &str = "CANARY-host-file-ctx-test";
    for i in 0..300 {
        fs::write(ctx.join(format!("d/f{i:03}")), format!("context file {i}\n")).unwrap();
        fs::write(canary_dir.join(format!("f{i:03}")), format!("{CANARY} {i}\n")).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, ctx, canary_dir) = (stop.clone(), ctx.clone(), canary_dir.clone());
        std::thread::spawn(move || {
            let (d, real, link) = (ctx.join("d"), ctx.join("d.real"), ctx.join("d.link"));
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // d -> canary, then back, each an atomic rename so `d` always exists.
                let _ = fs::remove_file(&link);
                symlink(&canary_dir, &link).unwrap();
                fs::rename(&d, &real).unwrap();
                fs::rename(&link, &d).unwrap();
                std::thread::sleep(Duration::from_micros(200));
                fs::rename(&d, &link).unwrap();
                fs::rename(&real, &d).unwrap();
                std::thread::sleep(Duration::from_millis(3));
                swaps += 1;
            }
            swaps
        })
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut tries, mut built) = (0, 0);
    let mut leaked = Vec::new();
    while tries < 40 && Instant::now() < deadline {
        let out = ws.path(&format!("out{tries}"));
        let run = ws.build("store", &ctx, &["--no-cache", "-o", &format!("type=local,dest={}", out.display())]);
        if run.code == Some(0) {
            built += 1;
        } else if let Some(line) = run.stderr.lines().find(|l| l.starts_with("error:")) {
            println!("race: build {tries}: {line}");
        }
        leaked.extend(files_containing(&out, CANARY.as_bytes()));
        tries += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    // Control: with the writer gone the same build works and copies the context's files.
    let out = ws.path("out-after");
    ws.build("store", &ctx, &["-o", &format!("type=local,dest={}", out.display())]).success();
    assert_eq!(fs::read_to_string(out.join("out/f007")).unwrap(), "context file 7\n");
    leaked.extend(files_containing(&ws.path("store"), CANARY.as_bytes()));
    println!("race: {tries} builds, {built} succeeded, {swaps} swaps");
    assert!(swaps > 0 && tries >= 10, "the race ran: {tries} builds, {swaps} swaps");
    let shown: Vec<_> = leaked.iter().take(5).collect();
    assert!(leaked.is_empty(), "{} host files reached the image or the store, e.g. {shown:?}", leaked.len());
}
