use super::*;
use crate::ImageRecord;
use rbuild_solver::{CacheStore, Output};
use rbuild_types::oci::{RootFs, to_canonical_json};

/// Commits a snapshot holding one file of `bytes` bytes; returns its (made-up) diff_id.
fn snapshot(store: &Store, name: &str, bytes: usize) -> Digest {
    let d = Digest::of(name.as_bytes());
    let dir = store.tmp_dir("snap").unwrap();
    fs::write(dir.join("f"), vec![7u8; bytes]).unwrap();
    store.commit_snapshot(&dir, &d).unwrap();
    d
}

fn tag(store: &Store, name: &str, layers: &[Digest]) -> Digest {
    let config =
        ImageConfig { rootfs: RootFs { diff_ids: layers.to_vec(), ..Default::default() }, ..Default::default() };
    let c = store.write_blob(&to_canonical_json(&config)).unwrap();
    store
        .set_tag(&ImageRecord { name: name.into(), config: c.clone(), manifest: None, platforms: Vec::new() })
        .unwrap();
    c
}

fn set_used(store: &Store, key: &Digest, ago: Duration) {
    let f = fs::File::options().write(true).open(store.cache_path(key)).unwrap();
    f.set_modified(SystemTime::now() - ago).unwrap();
}

#[test]
fn prune_needs_an_exclusive_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(matches!(prune(&store, &PruneOptions::default()), Err(GcError::NotExclusive)));
    assert!(Store::open_with(dir.path(), LockMode::TryExclusive).unwrap().is_none(), "a shared holder blocks");
    drop(store);
    assert!(Store::open_with(dir.path(), LockMode::TryExclusive).unwrap().is_some());
}

#[test]
fn plain_prune_keeps_tagged_images_and_their_cache_all_keeps_only_images() {
    let dir = tempfile::tempdir().unwrap();
    // A store of its own making (a tempdir is 0755, which opening reports and tightens).
    let store = Store::open_exclusive(&dir.path().join("store")).unwrap();
    let base = snapshot(&store, "base", 10);
    let app = snapshot(&store, "app", 10);
    let junk = snapshot(&store, "junk", 100_000);
    let orphan = snapshot(&store, "orphan", 100);
    let config = tag(&store, "app:1", &[base.clone(), app.clone()]);
    let untagged_config = store.write_blob(b"{}").unwrap();
    let (k_app, k_junk, k_base) = (Digest::of(b"k1"), Digest::of(b"k2"), Digest::of(b"k3"));
    store.put(&k_app, &Output::RootFs(vec![base.clone(), app.clone()])).unwrap();
    store.put(&k_junk, &Output::RootFs(vec![base.clone(), junk.clone()])).unwrap();
    store.put(&k_base, &Output::RootFs(vec![base.clone()])).unwrap();
    let before = disk_usage(&store).unwrap();
    assert_eq!((before.snapshot_count, before.cache_entries), (4, 3));

    let r = prune(&store, &PruneOptions::default()).unwrap();
    assert_eq!((r.cache_entries, r.snapshots, r.blobs), (1, 2, 1));
    assert!(r.freed >= 100_000, "freed {}", r.freed);
    assert!(
        store.get(&k_app).unwrap().is_some()
            && store.get(&k_base).unwrap().is_some()
            && store.get(&k_junk).unwrap().is_none()
    );
    assert!(!store.has_snapshot(&junk) && !store.has_snapshot(&orphan) && !store.has_blob(&untagged_config));
    assert!(store.has_blob(&config));
    let after = disk_usage(&store).unwrap();
    assert!(after.snapshots < before.snapshots);

    let r = prune(&store, &PruneOptions { all: true, ..Default::default() }).unwrap();
    assert_eq!(r.cache_entries, 2);
    assert!(store.has_snapshot(&base) && store.has_snapshot(&app) && store.has_blob(&config));
    let ok = check(&store).unwrap();
    assert!(ok.problems.is_empty(), "{:?}", ok.problems);
}

#[test]
fn until_spares_recent_entries_and_keep_storage_drops_lru_first() {
    let dir = tempfile::tempdir().unwrap();
    // A store of its own making (a tempdir is 0755, which opening reports and tightens).
    let store = Store::open_exclusive(&dir.path().join("store")).unwrap();
    let keys: Vec<Digest> = (0..3u8).map(|i| Digest::of(&[i])).collect();
    for (i, k) in keys.iter().enumerate() {
        let s = snapshot(&store, &format!("s{i}"), 200_000);
        store.put(k, &Output::RootFs(vec![s])).unwrap();
        set_used(&store, k, Duration::from_secs(3600 * (10 - i as u64)));
    }
    // Entries were used 10h, 9h and 8h ago.
    let r = prune(&store, &PruneOptions { until: Some(Duration::from_secs(9 * 3600 + 1800)), ..Default::default() })
        .unwrap();
    assert_eq!(r.cache_entries, 1);
    assert!(store.get(&keys[0]).unwrap().is_none() && store.get(&keys[1]).unwrap().is_some());
    // A hit refreshes the last use: entry 1 becomes the most recent, so LRU drops entry 2 first.
    let total = disk_usage(&store).unwrap().total();
    let r = prune(&store, &PruneOptions { all: true, keep_storage: Some(total - 1000), until: None }).unwrap();
    assert_eq!(r.cache_entries, 1);
    assert!(store.get(&keys[1]).unwrap().is_some() && store.get(&keys[2]).unwrap().is_none());
}

#[test]
fn check_finds_corrupt_blobs_missing_configs_and_malformed_entries() {
    let dir = tempfile::tempdir().unwrap();
    // A store of its own making (a tempdir is 0755, which opening reports and tightens).
    let store = Store::open_exclusive(&dir.path().join("store")).unwrap();
    let b = store.write_blob(b"hello").unwrap();
    fs::write(store.blob_path(&b), b"jello").unwrap();
    store
        .set_tag(&ImageRecord {
            name: "x:1".into(),
            config: Digest::of(b"none"),
            manifest: None,
            platforms: Vec::new(),
        })
        .unwrap();
    let k = Digest::of(b"k");
    store.put(&k, &Output::RootFs(vec![Digest::of(b"gone")])).unwrap();
    let bad = store.cache_path(&Digest::of(b"bad"));
    fs::create_dir_all(bad.parent().unwrap()).unwrap();
    fs::write(&bad, b"{").unwrap();
    let r = check(&store).unwrap();
    assert_eq!(r.stale_entries, 1, "a stale entry is a clean miss");
    assert_eq!(r.problems.len(), 3, "{:?}", r.problems);
    assert!(r.problems[0].contains("corrupt"));
    assert!(r.problems[1].contains("x:1"));
    assert!(r.problems[2].contains("malformed"));
}

#[test]
fn sizes_and_durations_parse() {
    assert_eq!(parse_size("10GB").unwrap(), 10_000_000_000);
    assert_eq!(parse_size("1.5 MiB").unwrap(), 1_572_864);
    assert_eq!(parse_size("42").unwrap(), 42);
    assert!(parse_size("ten").is_err() && parse_size("5XB").is_err());
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_filter("until=2d").unwrap(), Duration::from_secs(172_800));
    assert!(parse_duration("10").is_err() && parse_filter("label=x").is_err());
}
