//! Unit tests of source selection and content hashing.

use super::*;
use crate::confined::Root;
use rbuild_types::Digest;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

fn write(root: &Path, rel: &str, data: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn set_mtime(path: &Path, secs: i64, nsec: i64) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let ts = [libc::timespec { tv_sec: secs, tv_nsec: nsec }, libc::timespec { tv_sec: secs, tv_nsec: nsec }];
    // SAFETY: valid path and two timespecs, as utimensat requires.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

fn sel(sources: &[&str]) -> Selection {
    Selection { sources: sources.iter().map(|s| s.to_string()).collect(), follow_symlinks: true }
}

fn none(_: &str) -> bool {
    false
}

fn rt(path: &Path) -> Root {
    Root::open(path).unwrap()
}

fn digest(root: &Path, sources: &[&str]) -> Digest {
    content_digest(&rt(root), &sel(sources), &none, None).unwrap()
}

#[test]
fn clean_source_stays_inside_root() {
    assert_eq!(clean_source("a/../b").unwrap(), PathBuf::from("b"));
    assert_eq!(clean_source("/a/./b/").unwrap(), PathBuf::from("a/b"));
    assert_eq!(clean_source(".").unwrap(), PathBuf::new());
    for bad in ["../x", "a/../../x", "/.."] {
        let err = clean_source(bad).unwrap_err();
        assert!(matches!(&err, ContentHashError::EscapesRoot { name } if name == bad), "{bad}: {err}");
        assert!(err.to_string().contains(bad));
    }
    assert_eq!(clean_clamped("/../../x/./y/"), PathBuf::from("x/y"));
}

#[test]
fn go_match_semantics() {
    let cases: &[(&str, &str, bool)] = &[
        ("*.txt", "a.txt", true),
        ("*.txt", ".hidden.txt", true),
        ("*.txt", "a.txt.bak", false),
        ("a?c", "abc", true),
        ("a?c", "ac", false),
        ("[a-c]x", "bx", true),
        ("[a-c]x", "dx", false),
        ("[^a-c]x", "dx", true),
        ("[^a-c]x", "ax", false),
        ("[\\]]", "]", true),
        ("\\*", "*", true),
        ("\\*", "a", false),
        ("a*b*c", "axxbyyc", true),
        ("a*b", "acb_", false),
        ("*", "", true),
        ("", "a", false),
    ];
    for &(p, n, want) in cases {
        assert_eq!(match_component(p, n), Ok(want), "{p:?} vs {n:?}");
    }
    for bad in ["[", "[]a]", "[a-]", "a\\", "[^]"] {
        assert!(match_component(bad, "a").is_err(), "{bad:?} should be a bad pattern");
    }
    assert!(has_wildcards("a/*.txt") && has_wildcards("[ab]") && !has_wildcards("a\\*b") && !has_wildcards("plain"));
}

/// `keys/` ignored, and every kind of link into it: a source must find nothing wherever it is led from.
#[test]
fn dockerignore_applies_to_where_a_source_leads() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(root, "keys/id_rsa", "secret");
    write(root, "sub/ok.txt", "ok");
    symlink("keys", root.join("kl")).unwrap();
    symlink("/keys", root.join("abs")).unwrap();
    symlink("sub/../keys", root.join("dotdot")).unwrap();
    symlink("../../../keys", root.join("sub/up")).unwrap();
    symlink("kl", root.join("chain")).unwrap();
    symlink("keys/id_rsa", root.join("idl")).unwrap();
    let keys = |p: &str| p == "keys" || p.starts_with("keys/");
    let r = rt(root);
    for source in ["kl/id_rsa", "abs/id_rsa", "dotdot/id_rsa", "sub/up/id_rsa", "chain/id_rsa", "idl", "kl", "kl/"] {
        let err = walk_selection(&r, &sel(&[source]), &keys).unwrap_err();
        assert!(matches!(&err, ContentHashError::NotFound { name } if name == source), "{source}: {err}");
        let shown = format!("\"/{}\": not found", clean_clamped(source).display());
        assert_eq!(err.to_string(), shown);
    }
    for pattern in ["k*/id_rsa", "*/id_rsa", "id*"] {
        let trees = walk_selection(&r, &sel(&[pattern]), &keys).unwrap();
        assert!(trees.is_empty(), "{pattern} selected {trees:?}");
    }
    // The directory a wildcard looks in leads into the ignored one: missing, as BuildKit's context lacks it.
    for pattern in ["kl/*", "chain/*"] {
        let err = walk_selection(&r, &sel(&[pattern]), &keys).unwrap_err();
        assert!(matches!(err, ContentHashError::WildcardBaseMissing { .. }), "{pattern}: {err}");
    }
    // Named straight at it: reported as excluded, so the caller can say by what.
    let err = walk_selection(&r, &sel(&["keys/id_rsa"]), &keys).unwrap_err();
    assert!(matches!(err, ContentHashError::Excluded { .. }), "{err}");
    // The whole root: the links are entries (copied as links), the ignored directory is not.
    let trees = walk_selection(&r, &sel(&["."]), &keys).unwrap();
    let rels: Vec<String> = trees[0].entries.iter().map(|e| rel_string(&e.rel)).collect();
    assert_eq!(rels, ["", "abs", "chain", "dotdot", "idl", "kl", "sub", "sub/ok.txt", "sub/up"]);
    // A re-included file below the ignored directory is reachable through the link, and only it.
    let reinclude = |p: &str| keys(p) && p != "keys/pub";
    write(root, "keys/pub", "public");
    let trees = walk_selection(&r, &sel(&["kl"]), &reinclude).unwrap();
    let rels: Vec<String> = trees[0].entries.iter().map(|e| rel_string(&e.real)).collect();
    assert_eq!(rels, ["keys", "keys/pub"]);
    assert!(walk_selection(&r, &sel(&["kl/id_rsa"]), &reinclude).is_err());
}

/// A racing writer swaps a directory for a symlink to a host directory after the walk opened it (here: from the
/// exclusion callback, which the walk calls while listing). The files listed are then read beneath the root
/// without following anything, so the hash fails instead of reading the host's files.
#[test]
fn a_directory_swapped_for_a_symlink_mid_walk_is_never_followed() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("ctx");
    let host = t.path().join("host");
    write(&root, "d/f1", "context");
    write(&root, "d/f2", "context");
    write(&host, "f1", "CANARY");
    write(&host, "f2", "CANARY");
    let swapped = std::sync::atomic::AtomicBool::new(false);
    let swap = |p: &str| {
        if p == "d/f1" && !swapped.swap(true, Ordering::SeqCst) {
            fs::rename(root.join("d"), root.join("d.real")).unwrap();
            symlink(&host, root.join("d")).unwrap();
        }
        false
    };
    let err = content_digest(&rt(&root), &sel(&["d"]), &swap, None).unwrap_err();
    assert!(matches!(err, ContentHashError::Changed { .. }), "{err}");
    assert!(swapped.load(Ordering::SeqCst));
    // And from now on `d` resolves inside the root (to nothing): the host directory is never a source.
    let err = content_digest(&rt(&root), &sel(&["d/f1"]), &none, None).unwrap_err();
    assert!(matches!(err, ContentHashError::NotFound { .. }), "{err}");
}

#[test]
fn walk_fingerprint_moves_with_any_selected_change() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(root, "d/a", "a");
    write(root, "other", "o");
    let r = rt(root);
    let fp = || fingerprint(&walk_selection(&r, &sel(&["d"]), &none).unwrap());
    let hashed = hash_selection(&r, &sel(&["d"]), &none, None).unwrap();
    assert_eq!(hashed.fingerprint, fp());
    fs::write(root.join("other"), "unselected").unwrap();
    assert_eq!(fp(), hashed.fingerprint, "an unselected file does not count");
    fs::write(root.join("d/a"), "b").unwrap();
    assert_ne!(fp(), hashed.fingerprint, "same size, new bytes: mtime/ctime moved");
    let edited = fp();
    write(root, "d/new", "");
    assert_ne!(fp(), edited, "a new file counts");
}

#[test]
fn symlinks_resolve_inside_root() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(root, "etc/passwd", "inside");
    write(root, "real/file", "x");
    symlink("/etc", root.join("abs")).unwrap();
    symlink("../../../../..", root.join("up")).unwrap();
    symlink("real", root.join("rel")).unwrap();
    symlink("loop2", root.join("loop1")).unwrap();
    symlink("loop1", root.join("loop2")).unwrap();
    assert_eq!(resolve_in_root(root, Path::new("abs/passwd"), true).unwrap(), root.join("etc/passwd"));
    assert_eq!(resolve_in_root(root, Path::new("up/etc/passwd"), true).unwrap(), root.join("etc/passwd"));
    assert_eq!(resolve_in_root(root, Path::new("rel/file"), true).unwrap(), root.join("real/file"));
    assert_eq!(resolve_in_root(root, Path::new("rel"), false).unwrap(), root.join("rel"));
    assert_eq!(resolve_in_root(root, Path::new("rel/new/deeper"), true).unwrap(), root.join("real/new/deeper"));
    assert!(matches!(resolve_in_root(root, Path::new("loop1/x"), true), Err(ContentHashError::SymlinkLoop { .. })));

    // A source through a symlink to /etc sees the root's etc, never the host's.
    let got = resolve_sources(&rt(root), &["abs/passwd".to_string()], &none).unwrap();
    assert_eq!(got[0].real, PathBuf::from("etc/passwd"));
    assert_eq!(got[0].rel, PathBuf::from("abs/passwd"));
    let err = resolve_sources(&rt(root), &["abs/shadow".to_string()], &none).unwrap_err();
    assert!(matches!(&err, ContentHashError::NotFound { name } if name == "abs/shadow"), "{err}");
}

#[test]
fn wildcards_and_errors() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(root, "d1/f1.txt", "1");
    write(root, "d1/g.txt", "g");
    write(root, "d2/f2.txt", "2");
    write(root, "e/f3.txt", "3");
    let got = resolve_sources(&rt(root), &["d*/f?.txt".to_string()], &none).unwrap();
    let rels: Vec<_> = got.iter().map(|s| s.rel.clone()).collect();
    assert_eq!(rels, vec![PathBuf::from("d1/f1.txt"), PathBuf::from("d2/f2.txt")]);
    assert!(got.iter().all(|s| s.wildcard));

    // A wildcard matching nothing selects nothing, alone or next to a source that matches (BuildKit).
    assert!(resolve_sources(&rt(root), &["*.nope".to_string()], &none).unwrap().is_empty());
    assert!(resolve_sources(&rt(root), &["e/f3.txt/*".to_string()], &none).unwrap().is_empty());
    let err = resolve_sources(&rt(root), &["nodir/sub/*.txt".to_string()], &none).unwrap_err();
    assert!(err.to_string().starts_with("lstat /nodir: no such file or directory"), "{err}");
    let got = resolve_sources(&rt(root), &["e/f3.txt".to_string(), "*.nope".to_string()], &none).unwrap();
    assert_eq!(got.len(), 1);
    let err = resolve_sources(&rt(root), &["missing.txt".to_string()], &none).unwrap_err();
    assert!(err.to_string().contains("missing.txt") && err.to_string().contains("not found"));
    let err = resolve_sources(&rt(root), &["[".to_string()], &none).unwrap_err();
    assert!(matches!(err, ContentHashError::BadPattern { .. }));
    // Everything the wildcard matched is excluded: same as matching nothing.
    let got = resolve_sources(&rt(root), &["d1/*.txt".to_string()], &|p: &str| p.ends_with(".txt")).unwrap();
    assert!(got.is_empty());
}

#[test]
fn final_symlink_follows_only_when_asked() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(root, "target.txt", "content");
    symlink("target.txt", root.join("link")).unwrap();
    let followed = resolve_selection(&rt(root), &sel(&["link"]), &none).unwrap();
    assert_eq!(followed[0].0.real, PathBuf::from("target.txt"));
    let kept = resolve_selection(&rt(root), &Selection { sources: vec!["link".into()], follow_symlinks: false }, &none)
        .unwrap();
    assert_eq!(kept[0].0.real, PathBuf::from("link"));
}

#[test]
fn exclusions_keep_reincluded_files_below_excluded_dirs() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(root, "src/a.rs", "a");
    write(root, "node_modules/x/y.js", "y");
    write(root, "vendor/keep.txt", "k");
    write(root, "vendor/drop.txt", "d");
    write(root, "secret.key", "s");
    let excluded = |p: &str| {
        (p == "node_modules" || p.starts_with("node_modules/") || p == "vendor" || p == "vendor/drop.txt")
            || p == "secret.key"
    };
    let trees = walk_selection(&rt(root), &sel(&["."]), &excluded).unwrap();
    let rels: Vec<String> = trees[0].entries.iter().map(|e| rel_string(&e.rel)).collect();
    assert_eq!(rels, vec!["", "src", "src/a.rs", "vendor", "vendor/keep.txt"]);
    // Excluded paths are reported apart from missing ones, so a COPY can say what hid them.
    let err = walk_selection(&rt(root), &sel(&["secret.key"]), &excluded).unwrap_err();
    assert!(matches!(&err, ContentHashError::Excluded { name } if name == "secret.key"), "{err}");
    let err = walk_selection(&rt(root), &sel(&["node_modules"]), &excluded).unwrap_err();
    assert!(matches!(&err, ContentHashError::Excluded { name } if name == "node_modules"), "{err}");
    let err = walk_selection(&rt(root), &sel(&["missing.txt"]), &excluded).unwrap_err();
    assert!(matches!(err, ContentHashError::NotFound { .. }), "{err}");
}

#[test]
fn digest_tracks_content_mode_owner_and_membership_but_not_time() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(root, "app/main.rs", "fn main() {}");
    write(root, "app/lib.rs", "pub fn f() {}");
    write(root, "other.txt", "unselected");
    let base = digest(root, &["app"]);
    assert_eq!(base, digest(root, &["app"]), "digest is deterministic");

    set_mtime(&root.join("app/main.rs"), 1_000_000, 5);
    set_mtime(&root.join("app"), 1_000_000, 5);
    assert_eq!(digest(root, &["app"]), base, "mtime must not count");

    fs::write(root.join("other.txt"), "changed").unwrap();
    assert_eq!(digest(root, &["app"]), base, "an unselected file must not count");

    fs::write(root.join("app/main.rs"), "fn main() {1}").unwrap();
    let edited = digest(root, &["app"]);
    assert_ne!(edited, base);
    fs::write(root.join("app/main.rs"), "fn main() {}").unwrap();
    assert_eq!(digest(root, &["app"]), base);

    fs::set_permissions(root.join("app/lib.rs"), fs::Permissions::from_mode(0o755)).unwrap();
    let chmodded = digest(root, &["app"]);
    assert_ne!(chmodded, base);
    fs::set_permissions(root.join("app/lib.rs"), fs::Permissions::from_mode(0o644)).unwrap();
    let restored = digest(root, &["app"]);

    std::os::unix::fs::lchown(root.join("app/lib.rs"), Some(1234), Some(5678)).unwrap();
    assert_ne!(digest(root, &["app"]), restored, "owner must count");
    std::os::unix::fs::lchown(root.join("app/lib.rs"), Some(0), Some(0)).unwrap();

    let before_new = digest(root, &["app"]);
    write(root, "app/new.rs", "");
    assert_ne!(digest(root, &["app"]), before_new, "a new empty file must count");

    // Excluded files do not count.
    let excl = |p: &str| p == "app/new.rs";
    let with_excl = content_digest(&rt(root), &sel(&["app"]), &excl, None).unwrap();
    fs::write(root.join("app/new.rs"), "changed").unwrap();
    assert_eq!(content_digest(&rt(root), &sel(&["app"]), &excl, None).unwrap(), with_excl);
}

#[test]
fn digest_tracks_symlink_targets_xattrs_and_matched_names() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(root, "d/a.txt", "same");
    symlink("a.txt", root.join("d/l")).unwrap();
    let base = digest(root, &["d"]);
    fs::remove_file(root.join("d/l")).unwrap();
    symlink("b.txt", root.join("d/l")).unwrap();
    assert_ne!(digest(root, &["d"]), base, "symlink target must count");

    let before = digest(root, &["d"]);
    if xattr::set(root.join("d/a.txt"), "user.test", b"v").is_ok() {
        assert_ne!(digest(root, &["d"]), before, "xattr must count");
    }

    // Renaming what a wildcard matched changes what gets copied, so it changes the digest.
    write(root, "w/x1.txt", "same");
    let w1 = digest(root, &["w/*.txt"]);
    fs::rename(root.join("w/x1.txt"), root.join("w/x2.txt")).unwrap();
    assert_ne!(digest(root, &["w/*.txt"]), w1);

    // Two files' bytes cannot be shifted across the boundary.
    write(root, "c1/a", "ab");
    write(root, "c1/b", "c");
    write(root, "c2/a", "a");
    write(root, "c2/b", "bc");
    assert_ne!(digest(root, &["c1"]), digest(root, &["c2"]));
}

#[test]
fn stat_cache_hit_avoids_reading_and_survives_save() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("ctx");
    write(&root, "a.txt", "aaa");
    write(&root, "b.txt", "bbb");
    let old = now_ns() / 1_000_000_000 - 3600;
    set_mtime(&root.join("a.txt"), old, 0);
    set_mtime(&root.join("b.txt"), old, 0);
    let cache_path = t.path().join("state/statcache");

    let cache = StatCache::load(&cache_path);
    assert!(cache.is_empty());
    let d1 = content_digest(&rt(&root), &sel(&["."]), &none, Some(&cache)).unwrap();
    assert_eq!(cache.files_read(), 2);
    // `set_mtime` just moved the files' ctime to now; pretend they were hashed a few seconds later, as a next
    // build would, so the racy rule does not apply.
    for e in cache.inner.lock().unwrap().entries.values_mut() {
        e.recorded_ns += 3 * RACY_MARGIN_NS;
    }
    cache.save().unwrap();

    let cache = StatCache::load(&cache_path);
    assert_eq!(cache.len(), 2);
    let d2 = content_digest(&rt(&root), &sel(&["."]), &none, Some(&cache)).unwrap();
    assert_eq!(d2, d1);
    assert_eq!(cache.files_read(), 0, "unchanged old files must come from the cache");
    assert_eq!(d1, content_digest(&rt(&root), &sel(&["."]), &none, None).unwrap(), "cache must not alter the digest");

    // A real edit (mtime moves) is re-read.
    fs::write(root.join("a.txt"), "AAAA").unwrap();
    let d3 = content_digest(&rt(&root), &sel(&["."]), &none, Some(&cache)).unwrap();
    assert_ne!(d3, d1);
    assert_eq!(cache.files_read(), 1);
}

#[test]
fn racy_same_size_edit_with_restored_mtime_is_seen() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("ctx");
    write(&root, "f.txt", "before");
    let md = fs::metadata(root.join("f.txt")).unwrap();
    let cache_path = t.path().join("statcache");
    let cache = StatCache::load(&cache_path);
    let d1 = content_digest(&rt(&root), &sel(&["f.txt"]), &none, Some(&cache)).unwrap();
    cache.save().unwrap();

    fs::write(root.join("f.txt"), "after!").unwrap();
    set_mtime(&root.join("f.txt"), md.mtime(), md.mtime_nsec());
    let cache = StatCache::load(&cache_path);
    let d2 = content_digest(&rt(&root), &sel(&["f.txt"]), &none, Some(&cache)).unwrap();
    assert_ne!(d2, d1);
    assert_eq!(cache.files_read(), 1);
}

#[test]
fn racy_entries_are_not_trusted_even_when_the_whole_stat_matches() {
    // Simulates a filesystem with coarse timestamps, where an edit leaves every stat field unchanged.
    let cache = StatCache::load(Path::new("/nonexistent/statcache"));
    let key = StatKey { size: 3, mtime_ns: 10_000_000_000, ctime_ns: 10_000_000_000, ino: 7, mode: 0o100644 };
    let p = Path::new("/ctx/f");
    let h = |b: u8| Hashed { digest: [b; 32], xattrs: vec![("user.k".into(), vec![b])] };
    cache.insert(p, key, key.mtime_ns + 500_000_000, h(1));
    assert_eq!(cache.lookup(p, &key), None, "hashed in the same tick as the last write: racy");
    cache.insert(p, key, key.mtime_ns + RACY_MARGIN_NS + 1, h(2));
    assert_eq!(cache.lookup(p, &key), Some(h(2)));
    let moved = StatKey { ctime_ns: key.ctime_ns + 1, ..key };
    assert_eq!(cache.lookup(p, &moved), None);
    // A recent ctime (chmod, chown, setxattr right before hashing) is racy too, even with an old mtime.
    let recent_ctime = StatKey { ctime_ns: key.mtime_ns + RACY_MARGIN_NS, ..key };
    cache.insert(p, recent_ctime, key.mtime_ns + RACY_MARGIN_NS + 1, h(3));
    assert_eq!(cache.lookup(p, &recent_ctime), None);
}

#[test]
fn corrupt_cache_file_loads_empty() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("c");
    let cache = StatCache::load(&p);
    let key = StatKey { size: 1, mtime_ns: 1, ctime_ns: 1, ino: 1, mode: 1 };
    let hashed = Hashed { digest: [3; 32], xattrs: vec![("user.a".into(), b"1".to_vec())] };
    cache.insert(Path::new("/x"), key, 10_000_000_000, hashed.clone());
    cache.save().unwrap();
    let loaded = StatCache::load(&p);
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded.inner.lock().unwrap().entries[b"/x".as_slice()].hashed, hashed, "xattrs survive a save");
    let mut bytes = fs::read(&p).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&p, &bytes).unwrap();
    assert!(StatCache::load(&p).is_empty());
    fs::write(&p, &bytes[..10]).unwrap();
    assert!(StatCache::load(&p).is_empty());
}

#[test]
fn content_files_names_what_changed_and_agrees_with_the_digest() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(root, "app/a.txt", "a");
    write(root, "app/b.txt", "b");
    let (d1, files1) = content_files(&rt(root), &sel(&["app"]), &none, None).unwrap();
    assert_eq!(d1, digest(root, &["app"]));
    let names: Vec<&str> = files1.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["app", "app/a.txt", "app/b.txt"]);
    fs::set_permissions(root.join("app/b.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    let (d2, files2) = content_files(&rt(root), &sel(&["app"]), &none, None).unwrap();
    assert_ne!(d1, d2);
    let changed: Vec<&str> =
        files1.iter().zip(&files2).filter(|(a, b)| a.1 != b.1).map(|(a, _)| a.0.as_str()).collect();
    assert_eq!(changed, ["app/b.txt"]);
}
