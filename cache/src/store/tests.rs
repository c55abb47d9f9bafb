use super::tmpdirs::{mounts_under, unescape_mountinfo};
use super::*;

#[test]
fn blobs_round_trip_and_detect_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = store.write_blob(b"hello").unwrap();
    assert_eq!(store.read_blob(&d).unwrap(), b"hello");
    fs::write(store.blob_path(&d), b"jello").unwrap();
    assert!(matches!(store.read_blob(&d), Err(StoreError::CorruptBlob { .. })));
}

#[test]
fn cache_entries_need_their_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let layer = Digest::of(b"layer");
    let key = Digest::of(b"key");
    store.put(&key, &Output::RootFs(vec![layer.clone()])).unwrap();
    assert!(store.get(&key).unwrap().is_none(), "snapshot missing: must be a miss");
    let snap = store.tmp_dir("snap").unwrap();
    fs::write(snap.join("f"), b"x").unwrap();
    store.commit_snapshot(&snap, &layer).unwrap();
    assert_eq!(store.get(&key).unwrap().unwrap().output, Output::RootFs(vec![layer.clone()]));
    // A second commit of the same layer keeps the first and discards the new dir.
    let again = store.tmp_dir("snap").unwrap();
    store.commit_snapshot(&again, &layer).unwrap();
    assert!(!again.exists() && store.snapshot_path(&layer).join("f").exists());
}

#[test]
fn tags_with_registry_names() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rec = ImageRecord {
        name: "127.0.0.1:5000/a/b:1.0".into(),
        config: Digest::of(b"c"),
        manifest: None,
        platforms: Vec::new(),
    };
    store.set_tag(&rec).unwrap();
    assert_eq!(store.tag("127.0.0.1:5000/a/b:1.0").unwrap(), Some(rec.clone()));
    assert_eq!(store.tags().unwrap(), vec![rec]);
    store.remove_tag("127.0.0.1:5000/a/b:1.0").unwrap();
    assert!(matches!(store.remove_tag("127.0.0.1:5000/a/b:1.0"), Err(StoreError::NoSuchImage(_))));
}

#[test]
fn dead_tmp_dirs_are_collected_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let live = Store::open(dir.path()).unwrap();
    let live_tmp = live.tmp_dir("x").unwrap();
    let dead = dir.path().join("tmp/999999-0");
    fs::create_dir_all(dead.join("sub")).unwrap();
    File::create(dead.join(".lock")).unwrap();
    let _second = Store::open(dir.path()).unwrap();
    assert!(!dead.exists(), "a dead process's tmp dir is removed");
    assert!(live_tmp.exists(), "a live process's tmp dir is kept");
}

#[test]
fn mountinfo_escapes_are_decoded() {
    assert_eq!(unescape_mountinfo("/var/tmp/a\\040b\\134c"), "/var/tmp/a b\\c");
    assert_eq!(unescape_mountinfo("/plain"), "/plain");
}

/// Regression: collecting a dead process's tmp dir must never delete through a mount left inside it.
#[test]
fn dead_tmp_dirs_with_mounts_are_unmounted_not_deleted_through() {
    if !rbuild_test_support::require(&[]) {
        return;
    }
    let dir = tempfile::Builder::new().tempdir_in("/var/tmp").unwrap();
    let precious = dir.path().join("precious");
    fs::create_dir(&precious).unwrap();
    fs::write(precious.join("keep.txt"), b"keep").unwrap();
    let store_root = dir.path().join("store");
    drop(Store::open(&store_root).unwrap());
    let dead = store_root.join("tmp/999998-0");
    let target = dead.join("run-0/merged");
    fs::create_dir_all(&target).unwrap();
    File::create(dead.join(".lock")).unwrap();
    let (src, dst) = (
        std::ffi::CString::new(precious.to_str().unwrap()).unwrap(),
        std::ffi::CString::new(target.to_str().unwrap()).unwrap(),
    );
    // SAFETY: valid NUL-terminated paths; a plain bind mount.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) };
    assert_eq!(rc, 0, "bind mount: {}", io::Error::last_os_error());
    let _store = Store::open(&store_root).unwrap();
    assert!(!dead.exists(), "the dead tmp dir is collected");
    assert_eq!(fs::read(precious.join("keep.txt")).unwrap(), b"keep", "nothing was deleted through the mount");
    assert!(mounts_under(&store_root).is_empty(), "no mount is left behind");
}

/// Regression: a store opening while another one is being created must never collect the other's fresh tmp
/// dir (it used to, in the moment between creating the dir and locking the lock file inside it).
#[test]
fn concurrent_opens_never_collect_each_others_tmp_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let root = root.clone();
            std::thread::spawn(move || {
                for _ in 0..40 {
                    let store = Store::open(&root).expect("open");
                    let work = store.tmp_dir("w").expect("own tmp dir is intact");
                    fs::write(work.join("f"), b"x").expect("write in own tmp dir");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let left: Vec<_> = fs::read_dir(root.join("tmp")).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "closed stores leave nothing in tmp/: {left:?}");
}

/// Regression (adversarial review, hole 4): the store was created 0755, so any local user could run a
/// setuid-root binary from `snapshots/` or open device nodes made by RUN steps.
#[test]
fn the_store_root_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("a/store");
    drop(Store::open(&fresh).unwrap());
    assert_eq!(fs::metadata(&fresh).unwrap().permissions().mode() & 0o7777, 0o700);
    assert_eq!(root_problem(&fresh), None);
    // An existing store with wider permissions is reported, and tightened when opened.
    fs::set_permissions(&fresh, fs::Permissions::from_mode(0o755)).unwrap();
    assert!(root_problem(&fresh).is_some_and(|p| p.contains("0755")), "{:?}", root_problem(&fresh));
    assert_eq!(Store::open(&fresh).unwrap().was_exposed(), Some(0o755));
    assert_eq!(fs::metadata(&fresh).unwrap().permissions().mode() & 0o7777, 0o700);
}

/// Regression (adversarial review, item 10): one malformed tag file made `images` and `check` fail.
#[test]
fn a_malformed_tag_file_hides_no_other_image() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let config = store.write_blob(b"{}").unwrap();
    store.set_tag(&ImageRecord { name: "good".into(), config, manifest: None, platforms: Vec::new() }).unwrap();
    fs::write(dir.path().join("index/tags/broken.json"), b"{not json").unwrap();
    let tags = store.tags().unwrap();
    assert_eq!(tags.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["good"]);
    let (_, bad) = store.tags_checked().unwrap();
    assert_eq!(bad.len(), 1);
    assert!(bad[0].to_string().contains("broken.json"), "{}", bad[0]);
}

/// The reaper sees a dead process's tmp dir before it is removed (so its containers die before their mounts).
#[test]
fn the_reaper_runs_before_dead_tmp_dirs_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let dead = dir.path().join("tmp/999997-0");
    fs::create_dir_all(dead.join("bundles-0")).unwrap();
    File::create(tmp_lock_path(&dead)).unwrap();
    let seen = std::sync::Mutex::new(Vec::new());
    let reaper = |dirs: &[PathBuf]| {
        for d in dirs {
            seen.lock().unwrap().push((d.clone(), d.join("bundles-0").exists()));
        }
        vec!["killed container x".to_string()]
    };
    let store = Store::open_reaping(dir.path(), LockMode::Shared, &reaper).unwrap().unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![(dead.clone(), true)]);
    assert_eq!(store.reaped(), ["killed container x".to_string()]);
    assert!(!dead.exists());
}
