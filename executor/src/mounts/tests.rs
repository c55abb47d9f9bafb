//! Preparing and managing mounts, without root where possible.

use super::*;
use rbuild_cache::Store;
use rbuild_solver::{CacheSharing, ExecMount, Output};
use std::os::unix::fs::MetadataExt;

fn has_owner_and_mode(path: &Path, uid: u32, gid: u32, mode: u32) -> bool {
    fs::metadata(path).map(|m| m.uid() == uid && m.gid() == gid && m.mode() & 0o7777 == mode).unwrap_or(false)
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    (dir, store)
}

fn cache(id: &str, sharing: CacheSharing) -> ExecMount {
    ExecMount::Cache {
        target: "/cache".into(),
        id: id.into(),
        sharing,
        from: None,
        source: "/".into(),
        mode: 0o750,
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        readonly: false,
    }
}

#[test]
fn cache_mounts_persist_are_listed_and_pruned() {
    let (dir, store) = store();
    let sources = MountSources::default();
    let p = prepare(&store, &sources, &[cache("go-build", CacheSharing::Shared)], &[]).expect("prepare");
    let host = p.binds[0].source.clone();
    assert!(host.starts_with(cache_mounts_dir(dir.path())), "{}", host.display());
    assert!(has_owner_and_mode(&host, nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw(), 0o750));
    fs::write(host.join("f"), b"12345").expect("write");
    drop(p);
    // The next step sees what the last one left.
    let p = prepare(&store, &sources, &[cache("go-build", CacheSharing::Locked)], &[]).expect("prepare");
    assert_eq!(fs::read(p.binds[0].source.join("f")).expect("read"), b"12345");
    let listed = list_cache_mounts(dir.path()).expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].id.as_str(), listed[0].size), ("go-build", 5));
    // A cache in use is not pruned.
    let pruned = remove_cache_mounts(dir.path()).expect("prune");
    assert_eq!(pruned, PrunedCacheMounts { removed: 0, bytes: 0, in_use: 1 });
    drop(p);
    let pruned = remove_cache_mounts(dir.path()).expect("prune");
    assert_eq!(pruned, PrunedCacheMounts { removed: 1, bytes: 5, in_use: 0 });
    assert!(list_cache_mounts(dir.path()).expect("list").is_empty());
    assert_eq!(cache_mounts_size(dir.path()).expect("size"), 0);
}

#[test]
fn private_cache_in_use_gets_a_throwaway_copy() {
    let (_dir, store) = store();
    let sources = MountSources::default();
    let first = prepare(&store, &sources, &[cache("p", CacheSharing::Private)], &[]).expect("prepare");
    fs::write(first.binds[0].source.join("a"), b"x").expect("write");
    let second = prepare(&store, &sources, &[cache("p", CacheSharing::Private)], &[]).expect("prepare");
    assert_ne!(first.binds[0].source, second.binds[0].source);
    assert!(second.binds[0].source.join("a").is_file(), "the copy starts from the cache's content");
    fs::write(second.binds[0].source.join("b"), b"y").expect("write");
    let copy = second.binds[0].source.clone();
    drop(second);
    assert!(!copy.exists(), "the copy is removed");
    assert!(!first.binds[0].source.join("b").exists(), "writes to the copy are discarded");
}

#[test]
fn cache_ids_are_separate_and_source_is_a_subdirectory() {
    let (_dir, store) = store();
    let sources = MountSources::default();
    let mut m = cache("a", CacheSharing::Shared);
    if let ExecMount::Cache { source, .. } = &mut m {
        *source = "/sub/dir".into();
    }
    let p = prepare(&store, &sources, &[m, cache("b", CacheSharing::Shared)], &[]).expect("prepare");
    assert!(p.binds[0].source.ends_with("data/sub/dir") && p.binds[0].source.is_dir());
    assert_ne!(p.binds[0].source.parent(), p.binds[1].source.parent());
}

#[test]
fn missing_secrets_and_agents_fail_only_when_required() {
    let (_dir, store) = store();
    let sources = MountSources::default();
    let secret = |required| ExecMount::Secret {
        id: "tok".into(),
        target: Some("/run/secrets/tok".into()),
        env: None,
        required,
        mode: 0o400,
        uid: 0,
        gid: 0,
    };
    let p = prepare(&store, &sources, &[secret(false)], &[]).expect("optional");
    assert!(p.binds.is_empty() && p.bundle_dir.is_none());
    let err = prepare(&store, &sources, &[secret(true)], &[]).expect_err("required");
    assert!(matches!(err, MountError::MissingSecret { ref id } if id == "tok"), "{err}");
    let ssh = ExecMount::Ssh { id: "default".into(), target: "/s".into(), required: true, mode: 0o600, uid: 0, gid: 0 };
    let err = prepare(&store, &sources, &[ssh], &[]).expect_err("required");
    assert!(matches!(err, MountError::MissingSsh { .. }), "{err}");
}

#[test]
fn bind_needs_an_existing_source() {
    let (dir, store) = store();
    let ctx = dir.path().join("ctx");
    fs::create_dir_all(ctx.join("sub")).expect("mkdir");
    let bind = |source: &str| ExecMount::Bind { target: "/m".into(), input: 1, source: source.into(), readonly: true };
    let inputs = [Output::RootFs(vec![]), Output::Dir(ctx.clone())];
    let p = prepare(&store, &MountSources::default(), &[bind("/sub")], &inputs).expect("prepare");
    assert_eq!(p.binds[0].source, ctx.join("sub"));
    assert!(p.binds[0].readonly);
    let err = prepare(&store, &MountSources::default(), &[bind("/nope")], &inputs).expect_err("missing");
    assert!(matches!(err, MountError::NoSource { .. }), "{err}");
    let err = prepare(
        &store,
        &MountSources::default(),
        &[ExecMount::Bind { target: "/m".into(), input: 7, source: "/".into(), readonly: true }],
        &inputs,
    )
    .expect_err("no input");
    assert!(matches!(err, MountError::NoInput { input: 7 }));
}

#[test]
fn secret_debug_hides_the_value() {
    let s = SecretValue::new(b"hunter2".to_vec());
    assert_eq!(format!("{s:?}"), "SecretValue(<7 bytes>)");
}
