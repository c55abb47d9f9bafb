//! The differential suite: every `testdata/diff/<case>/` is built by rbuild and by the reference BuildKit (the
//! dockerd of Debian 13's docker.io, BuildKit 0.13, started by `shared/tools/buildkit-up.sh`), and the final file
//! trees (path, type, mode, owner, content, link target) and config fields must be equal.
//!
//! A case is a build context; `args` (one word per line) adds build flags, and a `parent/` directory is built
//! first as `rbuild-diff/<case>-parent` (for ONBUILD). `sockets` lists paths (one a line) where a unix socket is
//! made in the context before the build (git cannot store one). Both builders start from the same busybox base,
//! built by each from `testdata/busybox-base`. rbuild's tree is its layer snapshots applied in order (overlayfs
//! format); BuildKit's is its `docker save` layers applied in order (tar whiteouts).
//!
//! The number of layers and each history entry's `created_by` and `empty_layer` are compared too (a RUN that
//! changes nothing adds an empty layer in both). Timestamps: every entry of the context is given the mtime
//! [`CONTEXT_MTIME`] before the build, and an entry that has that mtime in one image must have it in the other
//! (so a directory that keeps its source's time in BuildKit must keep it in rbuild); other times (of files a step
//! made, and the config's `created`) differ between any two builds and are not compared.
//!
//! A case with a `fail` file must fail on both builders, and each line of `fail` must appear in both builders'
//! error output (`rbuild: TEXT` or `buildkit: TEXT` for one builder only): so the failure is compared, not just
//! "both failed". Name the Dockerfile line (`Dockerfile:3`): both print it.
//!
//! BuildKit is retried when its outcome is not the expected one, and rebuilt (twice at most) while its image differs
//! from rbuild's (see [`run_case`]: flakes of the reference; rbuild's image is built once).
//!
//! rbuild and BuildKit build each case at the same time, and a few cases run at once (`RBUILD_DIFF_JOBS`, default
//! 3), to keep the suite short.

use crate::support::{Workspace, docker, require, skip, testdata};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The mtime every entry of a case's context gets (2001-09-09T01:46:40Z), so that an image entry that keeps its
/// source's time can be told from one made at build time.
const CONTEXT_MTIME: i64 = 1_000_000_000;

/// One file-system entry, as both builders must produce it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: char,
    mode: u32,
    uid: u64,
    gid: u64,
    /// A file's bytes (see [`sha`]), a symlink's target, or empty.
    content: String,
    /// Whether the mtime is [`CONTEXT_MTIME`] (kept from the context).
    context_time: bool,
}

type Tree = BTreeMap<String, Entry>;

fn remove_subtree(tree: &mut Tree, path: &str, keep_self: bool) {
    let prefix = format!("{path}/");
    tree.retain(|k, _| !k.starts_with(&prefix) && (keep_self || k != path));
}

/// A file's content as compared: short text as itself (so a difference is readable), anything else by sha256.
fn sha(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if bytes.len() <= 200 => format!("text:{text}"),
        _ => hex::encode(Sha256::digest(bytes)),
    }
}

/// Applies one `docker save` layer tar.
fn apply_tar(tree: &mut Tree, bytes: &[u8]) {
    let mut ar = tar::Archive::new(bytes);
    let mut links: Vec<(String, String)> = Vec::new();
    for entry in ar.entries().unwrap() {
        let mut e = entry.unwrap();
        let path = e.path().unwrap().to_string_lossy().trim_start_matches("./").trim_end_matches('/').to_string();
        if path.is_empty() {
            continue;
        }
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", &path));
        if name == ".wh..wh..opq" {
            remove_subtree(tree, parent, true);
            continue;
        }
        if let Some(gone) = name.strip_prefix(".wh.") {
            let p = if parent.is_empty() { gone.to_string() } else { format!("{parent}/{gone}") };
            remove_subtree(tree, &p, false);
            continue;
        }
        let h = e.header().clone();
        let (kind, content) = match h.entry_type() {
            tar::EntryType::Directory => ('d', String::new()),
            tar::EntryType::Symlink => ('l', h.link_name().unwrap().unwrap().to_string_lossy().into_owned()),
            tar::EntryType::Link => {
                links.push((path.clone(), h.link_name().unwrap().unwrap().to_string_lossy().into_owned()));
                continue;
            }
            tar::EntryType::Fifo => ('p', String::new()),
            tar::EntryType::Char => ('c', String::new()),
            _ => {
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                ('f', sha(&data))
            }
        };
        if kind != 'd' {
            remove_subtree(tree, &path, false);
        }
        let entry = Entry {
            kind,
            mode: h.mode().unwrap() & 0o7777,
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            content,
            context_time: h.mtime().unwrap() as i64 == CONTEXT_MTIME,
        };
        tree.insert(path, entry);
    }
    for (path, target) in links {
        if let Some(t) = tree.get(target.trim_start_matches("./")).cloned() {
            tree.insert(path, t);
        }
    }
}

/// Applies one rbuild snapshot (an overlayfs upper directory).
fn apply_snapshot(tree: &mut Tree, root: &Path, dir: &Path) {
    let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for p in names {
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let md = std::fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            remove_subtree(tree, &rel, false);
            continue;
        }
        let (kind, content) = if ft.is_dir() {
            if matches!(xattr::get(&p, "trusted.overlay.opaque"), Ok(Some(v)) if v == b"y") {
                remove_subtree(tree, &rel, true);
            }
            ('d', String::new())
        } else if ft.is_symlink() {
            ('l', std::fs::read_link(&p).unwrap().to_string_lossy().into_owned())
        } else if ft.is_fifo() {
            ('p', String::new())
        } else if ft.is_char_device() {
            ('c', String::new())
        } else {
            ('f', sha(&std::fs::read(&p).unwrap()))
        };
        if kind != 'd' {
            remove_subtree(tree, &rel, false);
        }
        let context_time = md.mtime() == CONTEXT_MTIME;
        let entry =
            Entry { kind, mode: md.mode() & 0o7777, uid: md.uid().into(), gid: md.gid().into(), content, context_time };
        tree.insert(rel, entry);
        if kind == 'd' {
            apply_snapshot(tree, root, &p);
        }
    }
}

/// BuildKit's image: its tree and its config, from `docker save`.
fn docker_image(env: &[(String, String)], name: &str, tmp: &Path) -> (Tree, Value) {
    let file = tmp.join(format!("{}.tar", name.replace(['/', ':'], "_")));
    // Retried like the builds (see `run_case`): the reference's overlay mounts now and then vanish under load.
    let save = || docker(env, &["save", "-o", file.to_str().unwrap(), name]);
    let mut saved = save();
    for _ in 0..3 {
        if saved.code == Some(0) {
            break;
        }
        eprintln!("differential: docker save {name} failed, retrying:\n{}", saved.stderr);
        saved = save();
    }
    saved.success();
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut ar = tar::Archive::new(std::fs::File::open(&file).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        files.insert(p, data);
    }
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let config: Value = serde_json::from_slice(&files[manifest[0]["Config"].as_str().unwrap()]).unwrap();
    let mut tree = Tree::new();
    for layer in manifest[0]["Layers"].as_array().unwrap() {
        apply_tar(&mut tree, &files[layer.as_str().unwrap()]);
    }
    (tree, config)
}

/// rbuild's image: its tree from the store's snapshots and its config.
fn rbuild_image(ws: &Workspace, store: &str, name: &str) -> (Tree, Value) {
    let run = ws.rbuild(store, &["inspect", name]).success();
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    let config = doc["Config"].clone();
    let mut tree = Tree::new();
    for id in config["rootfs"]["diff_ids"].as_array().unwrap() {
        let hex = id.as_str().unwrap().trim_start_matches("sha256:");
        let snap = ws.path(store).join("snapshots").join(hex);
        apply_snapshot(&mut tree, &snap, &snap);
    }
    (tree, config)
}

/// The config fields that must agree.
fn config_fields(c: &Value) -> Value {
    let keys = [
        "User",
        "ExposedPorts",
        "Env",
        "Entrypoint",
        "Cmd",
        "Volumes",
        "WorkingDir",
        "Labels",
        "StopSignal",
        "Healthcheck",
        "OnBuild",
        "Shell",
        "ArgsEscaped",
    ];
    let cfg = &c["config"];
    let mut out = serde_json::Map::new();
    for k in keys {
        let v = cfg.get(k).cloned().unwrap_or(Value::Null);
        // Docker writes empty maps and lists where rbuild leaves a field out; both mean "none".
        let empty = matches!(&v, Value::Object(m) if m.is_empty()) || matches!(&v, Value::Array(a) if a.is_empty());
        out.insert(k.to_string(), if empty { Value::Null } else { v });
    }
    out.insert("author".into(), c.get("author").cloned().unwrap_or(Value::Null));
    let history: Vec<Value> = c["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|e| {
                    let created_by = e.get("created_by").cloned().unwrap_or(Value::Null);
                    let empty = e.get("empty_layer").and_then(Value::as_bool).unwrap_or(false);
                    serde_json::json!({ "created_by": created_by, "empty_layer": empty })
                })
                .collect()
        })
        .unwrap_or_default();
    out.insert("history".into(), Value::Array(history));
    let layers = c["rootfs"]["diff_ids"].as_array().map_or(0, Vec::len);
    out.insert("layers".into(), Value::from(layers));
    Value::Object(out)
}

/// BuildKit leaves the empty mount points of its RUN containers (`/dev`, `/proc`, `/sys`) in the layer, and at
/// times (depending on what its cache holds) the empty stubs of `/etc/hosts` and `/etc/resolv.conf`; rbuild
/// does not write them (a container runtime creates them anyway). Not compared.
fn is_mount_point(p: &str, e: &Entry) -> bool {
    (matches!(p, "dev" | "proc" | "sys") && e.kind == 'd')
        || (matches!(p, "etc/hosts" | "etc/resolv.conf") && e.kind == 'f' && e.content == "text:")
}

fn tree_diff(ours: &Tree, theirs: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (p, e) in theirs {
        if is_mount_point(p, e) && !ours.contains_key(p) {
            continue;
        }
        match ours.get(p) {
            None => out.push(format!("only in BuildKit: /{p} {e:?}")),
            Some(o) if o != e => out.push(format!("differs: /{p}\n    rbuild   {o:?}\n    BuildKit {e:?}")),
            _ => {}
        }
    }
    for (p, e) in ours {
        if !theirs.contains_key(p) {
            out.push(format!("only in rbuild: /{p} {e:?}"));
        }
    }
    out
}

/// The files of a case directory that describe the case rather than belong to its build context.
const CASE_FILES: [&str; 4] = ["args", "fail", "sockets", "parent"];

/// Copies a case's context to `to`: its sockets made, every mtime set to [`CONTEXT_MTIME`].
fn copy_context(from: &Path, to: &Path) {
    crate::support::copy_dir(from, to);
    for name in CASE_FILES {
        let _ = std::fs::remove_file(to.join(name));
        let _ = std::fs::remove_dir_all(to.join(name));
    }
    for rel in std::fs::read_to_string(from.join("sockets")).unwrap_or_default().lines().filter(|l| !l.is_empty()) {
        let path = to.join(rel);
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap_or_else(|e| panic!("socket {rel}: {e}")));
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o751)).unwrap();
    }
    set_mtimes(to);
}

fn set_mtimes(path: &Path) {
    if std::fs::symlink_metadata(path).unwrap().is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            set_mtimes(&e.unwrap().path());
        }
    }
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let t = libc::timespec { tv_sec: CONTEXT_MTIME as libc::time_t, tv_nsec: 0 };
    // SAFETY: a NUL-terminated path and two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

/// A word no earlier run of the suite used.
fn unique() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}-{}", std::process::id(), now.as_nanos())
}

/// What a `fail` case expects: (needle, in rbuild's output, in BuildKit's).
fn expected_failure(case: &Path) -> Option<Vec<(String, bool, bool)>> {
    let text = std::fs::read_to_string(case.join("fail")).ok()?;
    let lines = text.lines().filter(|l| !l.trim().is_empty());
    Some(
        lines
            .map(|l| {
                if let Some(t) = l.strip_prefix("rbuild: ") {
                    (t.to_string(), true, false)
                } else if let Some(t) = l.strip_prefix("buildkit: ") {
                    (t.to_string(), false, true)
                } else {
                    (l.to_string(), true, true)
                }
            })
            .collect(),
    )
}

/// Checks a case that must fail on both builders; returns its problems.
fn check_failure(
    want: &[(String, bool, bool)],
    ours: &crate::support::Run,
    theirs: &crate::support::Run,
) -> Vec<String> {
    let mut problems = Vec::new();
    if want.is_empty() {
        problems.push("`fail` names no text the errors must show".to_string());
    }
    for (who, run, idx) in [("rbuild", ours, 1), ("BuildKit", theirs, 2)] {
        if run.code == Some(0) {
            problems.push(format!("{who} succeeded; the case must fail"));
            continue;
        }
        for (needle, in_ours, in_theirs) in want {
            let applies = if idx == 1 { *in_ours } else { *in_theirs };
            if applies && !run.stderr.contains(needle.as_str()) {
                problems.push(format!("{who}'s error lacks {needle:?}:\n{}", run.stderr));
            }
        }
    }
    problems
}

#[test]
fn rbuild_and_buildkit_build_the_same_images() {
    if !require(&["runc", "busybox"]) {
        return;
    }
    let env = match rbuild_test_support::Reference::Docker26.start() {
        Ok(env) if docker(&env, &["version"]).code == Some(0) => env,
        Ok(_) => return skip("the reference BuildKit did not answer (docker version failed)"),
        Err(e) => return skip(&format!("the reference BuildKit could not be started: {e}")),
    };
    let only = std::env::var("RBUILD_DIFF_CASE").ok();
    let ws = Workspace::new();
    let store = "store";
    let base = ws.context_from("busybox-base");
    ws.rbuild(store, &["build", "-t", "rbuild-diff/busybox", base.to_str().unwrap()]).success();
    docker(&env, &["build", "--network", "host", "-q", "-t", "rbuild-diff/busybox", base.to_str().unwrap()]).success();

    let mut all: Vec<PathBuf> =
        std::fs::read_dir(testdata("diff")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    all.sort();
    // RBUILD_DIFF_CASE: names separated by commas, `prefix*` for every case starting with prefix.
    let picked = |name: &str| {
        only.as_ref().is_none_or(|o| {
            o.split(',').any(|p| p == name || p.strip_suffix('*').is_some_and(|pre| name.starts_with(pre)))
        })
    };
    let cases: Vec<&PathBuf> = all.iter().filter(|c| picked(&c.file_name().unwrap().to_string_lossy())).collect();
    // A few cases at a time (rbuild processes share a store safely; BuildKit runs builds in parallel anyway): most
    // of a case's time is waiting on BuildKit. RBUILD_DIFF_JOBS overrides.
    let jobs: usize = std::env::var("RBUILD_DIFF_JOBS").ok().and_then(|j| j.parse().ok()).unwrap_or(3).max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<(usize, Result<(), String>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..jobs)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let Some(case) = cases.get(i) else { break out };
                        out.push((i, run_case(&ws, store, &env, case)));
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("a differential worker")).collect()
    });
    let mut results = results;
    results.sort_by_key(|(i, _)| *i);
    let failures: Vec<String> = results.into_iter().filter_map(|(_, r)| r.err()).collect();
    println!("differential: {} passed, {} failed", cases.len() - failures.len(), failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(all.len() >= 80 || only.is_some(), "at least 80 differential cases, found {}", all.len());
}

/// Builds one case with both builders and compares the results; Err says how they differ.
fn run_case(ws: &Workspace, store: &str, env: &[(String, String)], case: &Path) -> Result<(), String> {
    let name = case.file_name().unwrap().to_string_lossy().into_owned();
    // A name of its own in every run: BuildKit keeps the context it was last sent under the same directory name
    // and syncs it incrementally, which leaves directories with the times of an earlier run.
    let ctx = ws.path(&format!("diff-{name}-{}", unique()));
    copy_context(case, &ctx);
    let extra = std::fs::read_to_string(case.join("args")).unwrap_or_default();
    let extra: Vec<&str> = extra.lines().filter(|l| !l.is_empty()).collect();
    if case.join("parent").is_dir() {
        let parent = format!("rbuild-diff/{name}-parent");
        let pctx = ws.path(&format!("diff-{name}-parent-{}", unique()));
        copy_context(case, &pctx);
        std::fs::copy(case.join("parent/Dockerfile"), pctx.join("Dockerfile")).unwrap();
        ws.rbuild(store, &["build", "-t", &parent, pctx.to_str().unwrap()]).success();
        docker(env, &["build", "--no-cache", "--network", "host", "-q", "-t", &parent, pctx.to_str().unwrap()])
            .success();
    }
    let tag = format!("rbuild-diff/case-{name}");
    let mut args = vec!["build", "-t", tag.as_str()];
    args.extend(&extra);
    args.push(ctx.to_str().unwrap());
    // Without its cache: BuildKit's cache keys ignore mtimes, so a layer cached from an earlier run of the suite
    // would carry that run's times.
    let mut dargs = vec!["build", "--no-cache", "--network", "host", "--progress=plain", "-t", tag.as_str()];
    dargs.extend(&extra);
    dargs.push(ctx.to_str().unwrap());
    let (ours, mut theirs) = std::thread::scope(|s| {
        let theirs = s.spawn(|| docker(env, &dargs));
        let ours = ws.rbuild(store, &args);
        (ours, theirs.join().expect("the docker build thread"))
    });
    let want = expected_failure(case);
    // The reference on a loaded machine now and then runs a step in an empty root filesystem ("runc run failed:
    // ... exec: "/bin/sh": stat /bin/sh: no such file or directory", also with no rbuild running next to it) and
    // builds it the next time. Retries keep such a flake out of the verdict: BuildKit is retried while its outcome
    // is not the one the case expects (a build, or a failure with the listed texts); a real difference persists.
    let expected_by_buildkit = |theirs: &crate::support::Run| match &want {
        None => theirs.code == Some(0),
        Some(w) => theirs.code != Some(0) && w.iter().all(|(t, _, bk)| !bk || theirs.stderr.contains(t.as_str())),
    };
    for _ in 0..3 {
        if (ours.code != Some(0) && want.is_none()) || expected_by_buildkit(&theirs) {
            break;
        }
        let tail: Vec<&str> = theirs.stderr.lines().rev().take(25).collect();
        eprintln!(
            "differential: {name}: BuildKit failed unexpectedly, retrying:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        theirs = docker(env, &dargs);
    }
    if let Some(want) = want {
        let problems = check_failure(&want, &ours, &theirs);
        return if problems.is_empty() { Ok(()) } else { Err(format!("{name}:\n  {}", problems.join("\n  "))) };
    }
    if ours.code != Some(0) || theirs.code != Some(0) {
        return Err(format!(
            "{name}: rbuild exit {:?}, BuildKit exit {:?}\n--- rbuild\n{}\n--- BuildKit\n{}",
            ours.code, theirs.code, ours.stderr, theirs.stderr
        ));
    }
    let (our_tree, our_config) = rbuild_image(ws, store, &tag);
    let compare = || {
        let (their_tree, their_config) = docker_image(env, &tag, ws.dir.path());
        let mut problems = tree_diff(&our_tree, &their_tree);
        let (a, b) = (config_fields(&our_config), config_fields(&their_config));
        for (k, theirs) in b.as_object().unwrap() {
            let ours = &a[k.as_str()];
            if ours != theirs {
                problems.push(format!("config {k} differs:\n    rbuild   {ours}\n    BuildKit {theirs}"));
            }
        }
        problems
    };
    let mut problems = compare();
    // The reference's own output varies under load: now and then a RUN --mount target it created stays in its
    // layer as an empty directory although BuildKit removes such stubs (seen for both cache mounts of
    // run-mount-cache, one at a time, with no "failed to remove mount stub" warning in dockerd's log; see
    // executor/src/runtime/stubs.rs). So BuildKit builds the case again while the trees differ: rbuild's image is
    // built once and stays as it is, and a real difference persists in every BuildKit build.
    for _ in 0..2 {
        if problems.is_empty() {
            break;
        }
        eprintln!(
            "differential: {name}: differs from BuildKit, building it with BuildKit again:\n  {}",
            problems.join("\n  ")
        );
        theirs = docker(env, &dargs);
        if theirs.code != Some(0) {
            return Err(format!("{name}: BuildKit failed on a rebuild:\n{}", theirs.stderr));
        }
        problems = compare();
    }
    if problems.is_empty() { Ok(()) } else { Err(format!("{name}:\n  {}", problems.join("\n  "))) }
}
