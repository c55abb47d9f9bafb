//! Unit tests of COPY and ADD.

use super::*;
use rbuild_cache::confined::Root;
use rbuild_cache::contenthash::{self, ContentHashError, Selection};
use std::fs;
use std::io;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

struct Fixture {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    dst: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let dst = tmp.path().join("rootfs");
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&dst).unwrap();
    Fixture { _tmp: tmp, src, dst }
}

fn write(root: &Path, rel: &str, data: &str, mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, data).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn none(_: &str) -> bool {
    false
}

fn run(f: &Fixture, sources: &[&str], dest: &str, opts: &CopyOptions) -> Result<(), CopyError> {
    let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
    copy(&f.src, &sources, &none, &f.dst, dest, opts)
}

/// Every entry under `root` as "path type mode uid:gid [content|->target]", sorted.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for n in names {
            let p = dir.join(&n);
            let md = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let own = format!("{}:{}", md.uid(), md.gid());
            if md.is_dir() {
                out.push(format!("{rel}/ {:o} {own}", md.mode() & 0o7777));
                walk(root, &p, out);
            } else if md.file_type().is_symlink() {
                out.push(format!("{rel} -> {}", fs::read_link(&p).unwrap().display()));
            } else {
                out.push(format!("{rel} {:o} {own} {}", md.mode() & 0o7777, fs::read_to_string(&p).unwrap()));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

fn ctx() -> Fixture {
    let f = fixture();
    write(&f.src, "a.txt", "A", 0o640);
    write(&f.src, "b.txt", "B", 0o644);
    write(&f.src, "dir/x", "X", 0o755);
    write(&f.src, "dir/sub/y", "Y", 0o600);
    fs::set_permissions(f.src.join("dir/sub"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(f.src.join("dir"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("../a.txt", f.src.join("dir/rel-link")).unwrap();
    symlink("a.txt", f.src.join("link")).unwrap();
    for p in ["a.txt", "b.txt", "dir", "dir/x", "dir/sub", "dir/sub/y", "dir/rel-link", "link"] {
        std::os::unix::fs::lchown(f.src.join(p), Some(1000), Some(1000)).unwrap();
    }
    f
}

#[test]
fn copy_table() {
    let ctx_opts = CopyOptions::default();
    let cases: &[(&str, &[&str], &str, &[&str])] = &[
        ("file to new name", &["a.txt"], "/x", &["x 640 0:0 A"]),
        ("file into dir by trailing slash", &["a.txt"], "/x/", &["x/ 755 0:0", "x/a.txt 640 0:0 A"]),
        ("file into deep missing parents", &["a.txt"], "/p/q/r", &["p/ 755 0:0", "p/q/ 755 0:0", "p/q/r 640 0:0 A"]),
        (
            "dir copies contents",
            &["dir"],
            "/d",
            &["d/ 755 0:0", "d/rel-link -> ../a.txt", "d/sub/ 750 0:0", "d/sub/y 600 0:0 Y", "d/x 755 0:0 X"],
        ),
        (
            "dir with trailing slash copies contents",
            &["dir/"],
            "/d/",
            &["d/ 755 0:0", "d/rel-link -> ../a.txt", "d/sub/ 750 0:0", "d/sub/y 600 0:0 Y", "d/x 755 0:0 X"],
        ),
        ("wildcard into dir", &["*.txt"], "/dst/", &["dst/ 755 0:0", "dst/a.txt 640 0:0 A", "dst/b.txt 644 0:0 B"]),
        ("single-match wildcard names a file", &["a*.txt"], "/single", &["single 640 0:0 A"]),
        ("several sources into dir", &["a.txt", "dir/x"], "/m/", &["m/ 755 0:0", "m/a.txt 640 0:0 A", "m/x 755 0:0 X"]),
        ("final symlink is followed", &["link"], "/l", &["l 640 0:0 A"]),
        ("final symlink into dir keeps its name", &["link"], "/l/", &["l/ 755 0:0", "l/link 640 0:0 A"]),
        ("dot source is the whole root", &["sub"], "/", &["y 600 0:0 Y"]),
    ];
    for &(name, sources, dest, want) in cases {
        let f = ctx();
        // "sub" case copies from a nested root to exercise `/` as dest.
        let f = if sources == ["sub"] { Fixture { src: f.src.join("dir"), ..f } } else { f };
        run(&f, sources, dest, &ctx_opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(tree(&f.dst), want, "{name}");
    }
}

/// BuildKit copies several sources one after the other onto `dest` as it then is (issue 11 item 8).
#[test]
fn several_sources_land_one_after_the_other() {
    let f = ctx();
    run(&f, &["a.txt", "b.txt"], "/two", &CopyOptions::default()).unwrap();
    assert_eq!(fs::read_to_string(f.dst.join("two")).unwrap(), "B", "the last file wins");
    run(&f, &["*.txt"], "/glob", &CopyOptions::default()).unwrap();
    assert_eq!(fs::read_to_string(f.dst.join("glob")).unwrap(), "B");
    run(&f, &["dir", "a.txt"], "/mixed", &CopyOptions::default()).unwrap();
    assert!(f.dst.join("mixed/x").is_file() && f.dst.join("mixed/a.txt").is_file(), "a file lands inside");
    run(&f, &["a.txt", "nomatch*", "dir/none*"], "/one", &CopyOptions::default()).unwrap();
    assert_eq!(fs::read_to_string(f.dst.join("one")).unwrap(), "A", "empty wildcards are ignored");
    run(&f, &["nomatch*"], "/empty/", &CopyOptions::default()).unwrap();
    assert!(!f.dst.join("empty").exists(), "an empty wildcard creates nothing");
    let err = run(&f, &["none/*"], "/x/", &CopyOptions::default()).unwrap_err();
    assert!(err.to_string().contains("lstat /none: no such file or directory"), "{err}");
    let err = run(&f, &["a.txt", "dir"], "/filefirst", &CopyOptions::default()).unwrap_err();
    assert!(matches!(err, CopyError::NotADirectory { .. }), "{err}");
}

/// The directory a directory's contents are copied into gets the source directory's times, created or not;
/// its mode and owner stay those of a created parent or of the existing directory (BuildKit 0.13, item 6).
#[test]
fn the_destination_of_a_directory_takes_its_times() {
    let f = ctx();
    let set = |p: &Path, sec: i64| {
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        let ts = [libc::timespec { tv_sec: sec, tv_nsec: 0 }, libc::timespec { tv_sec: sec, tv_nsec: 0 }];
        // SAFETY: valid path and timespecs.
        assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) }, 0);
    };
    fs::set_permissions(f.src.join("dir"), fs::Permissions::from_mode(0o705)).unwrap();
    set(&f.src.join("dir"), 1_000_000);
    fs::create_dir(f.dst.join("etc")).unwrap();
    fs::set_permissions(f.dst.join("etc"), fs::Permissions::from_mode(0o711)).unwrap();
    run(&f, &["dir"], "/etc/", &CopyOptions::default()).unwrap();
    run(&f, &["dir"], "/new/deeper", &CopyOptions { chown: Some((7, 8)), chmod: Some(0o700), ..Default::default() })
        .unwrap();
    let etc = fs::metadata(f.dst.join("etc")).unwrap();
    assert_eq!((etc.mtime(), etc.mode() & 0o7777), (1_000_000, 0o711));
    let deeper = fs::metadata(f.dst.join("new/deeper")).unwrap();
    assert_eq!((deeper.mtime(), deeper.mode() & 0o7777, deeper.uid()), (1_000_000, 0o755, 7));
    assert_ne!(fs::metadata(f.dst.join("new")).unwrap().mtime(), 1_000_000, "a created parent is new");
    // Two directories into one: the last one's times.
    set(&f.src.join("dir/sub"), 2_000_000);
    run(&f, &["dir", "dir/sub"], "/both/", &CopyOptions::default()).unwrap();
    assert_eq!(fs::metadata(f.dst.join("both")).unwrap().mtime(), 2_000_000);
}

#[test]
fn owners_and_modes() {
    let f = ctx();
    run(&f, &["dir"], "/keep", &CopyOptions { keep_owner: true, ..Default::default() }).unwrap();
    assert_eq!(fs::metadata(f.dst.join("keep/sub/y")).unwrap().uid(), 1000);
    assert_eq!(fs::symlink_metadata(f.dst.join("keep/rel-link")).unwrap().uid(), 1000);

    let opts = CopyOptions { chown: Some((7, 8)), chmod: Some(0o700), ..Default::default() };
    run(&f, &["dir"], "/new/parent/chowned", &opts).unwrap();
    let t = tree(&f.dst.join("new"));
    assert_eq!(
        t,
        [
            "parent/ 755 7:8",
            // A missing destination directory is made like a parent: --chmod is for what is copied.
            "parent/chowned/ 755 7:8",
            "parent/chowned/rel-link -> ../a.txt",
            "parent/chowned/sub/ 700 7:8",
            "parent/chowned/sub/y 700 7:8 Y",
            "parent/chowned/x 700 7:8 X",
        ]
    );
    assert_eq!(fs::symlink_metadata(f.dst.join("new/parent/chowned/rel-link")).unwrap().uid(), 7);

    // Set-id bits survive the chown that would clear them.
    write(&f.src, "suid", "S", 0o4755);
    run(&f, &["suid"], "/bin/suid", &CopyOptions::default()).unwrap();
    assert_eq!(fs::metadata(f.dst.join("bin/suid")).unwrap().mode() & 0o7777, 0o4755);
}

#[test]
fn existing_dest_dir_keeps_its_metadata_and_times_are_copied() {
    let f = ctx();
    fs::set_permissions(&f.dst, fs::Permissions::from_mode(0o711)).unwrap();
    let c = std::ffi::CString::new(f.src.join("dir/x").as_os_str().as_bytes()).unwrap();
    let ts = [libc::timespec { tv_sec: 1_000_000, tv_nsec: 7 }, libc::timespec { tv_sec: 1_000_000, tv_nsec: 7 }];
    // SAFETY: valid path and timespecs.
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) }, 0);
    let sub_mtime = fs::metadata(f.src.join("dir/sub")).unwrap().mtime();
    run(&f, &["dir"], "/", &CopyOptions::default()).unwrap();
    assert_eq!(fs::metadata(&f.dst).unwrap().mode() & 0o7777, 0o711, "COPY dir / must not chmod /");
    let md = fs::metadata(f.dst.join("x")).unwrap();
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_000_000, 7));
    assert_eq!(fs::metadata(f.dst.join("sub")).unwrap().mtime(), sub_mtime, "dir mtime set after its children");
}

#[test]
fn hardlinks_stay_linked_and_existing_files_are_replaced() {
    let f = ctx();
    write(&f.src, "h/one", "same inode", 0o644);
    fs::hard_link(f.src.join("h/one"), f.src.join("h/two")).unwrap();
    write(&f.dst, "out/one", "old content", 0o600);
    symlink("/etc/passwd", f.dst.join("out/two")).unwrap();
    run(&f, &["h"], "/out", &CopyOptions::default()).unwrap();
    let a = fs::metadata(f.dst.join("out/one")).unwrap();
    let b = fs::symlink_metadata(f.dst.join("out/two")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(fs::read_to_string(f.dst.join("out/two")).unwrap(), "same inode");
}

#[test]
fn source_escapes_are_rejected_or_contained() {
    let f = ctx();
    let err = run(&f, &["../x"], "/x", &CopyOptions::default()).unwrap_err();
    assert!(err.to_string().contains("../x"), "{err}");
    assert!(matches!(err, CopyError::Select(ContentHashError::EscapesRoot { .. })));

    // A source symlink to /etc resolves inside the source root: the host's /etc/passwd is never read.
    symlink("/etc", f.src.join("etc-link")).unwrap();
    let err = run(&f, &["etc-link/passwd"], "/p", &CopyOptions::default()).unwrap_err();
    assert!(matches!(err, CopyError::Select(ContentHashError::NotFound { .. })), "{err}");
    write(&f.src, "etc/passwd", "context passwd", 0o644);
    run(&f, &["etc-link/passwd"], "/p", &CopyOptions::default()).unwrap();
    assert_eq!(fs::read_to_string(f.dst.join("p")).unwrap(), "context passwd");

    // Inside a copied directory the link stays a link (copied as is, not followed).
    fs::create_dir(f.src.join("withlink")).unwrap();
    symlink("/etc", f.src.join("withlink/etc")).unwrap();
    run(&f, &["withlink"], "/w", &CopyOptions::default()).unwrap();
    assert_eq!(fs::read_link(f.dst.join("w/etc")).unwrap(), PathBuf::from("/etc"));
}

#[test]
fn dest_symlinks_resolve_inside_dest_root() {
    let f = ctx();
    symlink("/", f.dst.join("evil")).unwrap();
    symlink("../../../../../..", f.dst.join("up")).unwrap();
    run(&f, &["a.txt"], "/evil/escaped.txt", &CopyOptions::default()).unwrap();
    assert_eq!(fs::read_to_string(f.dst.join("escaped.txt")).unwrap(), "A");
    assert!(!Path::new("/escaped.txt").exists());
    run(&f, &["b.txt"], "/up/tmp/", &CopyOptions::default()).unwrap();
    assert_eq!(fs::read_to_string(f.dst.join("tmp/b.txt")).unwrap(), "B");
    // Dest path with `..` is clamped at the root too.
    run(&f, &["a.txt"], "/../../clamped", &CopyOptions::default()).unwrap();
    assert!(f.dst.join("clamped").is_file());

    // Merging a tree into /bin -> usr/bin writes into usr/bin and keeps the link.
    fs::create_dir_all(f.dst.join("usr/bin")).unwrap();
    symlink("usr/bin", f.dst.join("bin")).unwrap();
    write(&f.src, "rootfs/bin/tool", "T", 0o755);
    run(&f, &["rootfs"], "/", &CopyOptions::default()).unwrap();
    assert!(fs::symlink_metadata(f.dst.join("bin")).unwrap().file_type().is_symlink());
    assert_eq!(fs::read_to_string(f.dst.join("usr/bin/tool")).unwrap(), "T");

    // A file where a directory must go is an error naming the path.
    write(&f.dst, "blocker", "", 0o644);
    let err = run(&f, &["a.txt"], "/blocker/x/", &CopyOptions::default()).unwrap_err();
    assert!(matches!(err, CopyError::NotADirectory { .. }), "{err}");
}

/// Issue #9 hole 5, deterministically: the source directory is swapped for a symlink to a host directory (with
/// files of the same names) while the copy walks it. Nothing of the host directory may be copied.
#[test]
fn a_source_dir_swapped_for_a_symlink_mid_copy_is_never_followed() {
    let f = fixture();
    let host = f.src.parent().unwrap().join("host");
    write(&f.src, "d/f1", "context", 0o644);
    write(&f.src, "d/f2", "context", 0o644);
    write(&host, "f1", "CANARY", 0o644);
    write(&host, "f2", "CANARY", 0o644);
    let swapped = std::sync::atomic::AtomicBool::new(false);
    let swap = |p: &str| {
        if p == "d/f1" && !swapped.swap(true, std::sync::atomic::Ordering::SeqCst) {
            fs::rename(f.src.join("d"), f.src.join("d.real")).unwrap();
            symlink(&host, f.src.join("d")).unwrap();
        }
        false
    };
    let result = copy(&f.src, &["d/".to_string()], &swap, &f.dst, "/out/", &CopyOptions::default());
    assert!(swapped.load(std::sync::atomic::Ordering::SeqCst), "the swap happened during the copy");
    for name in ["f1", "f2"] {
        let copied = fs::read_to_string(f.dst.join("out").join(name)).unwrap_or_default();
        assert!(!copied.contains("CANARY"), "the host's {name} was copied: {result:?}");
    }
    assert!(result.is_err(), "the copy notices the change");
}

#[test]
fn a_copy_checks_it_copies_what_was_hashed() {
    let f = ctx();
    let root = Root::open(&f.src).unwrap();
    let sel = Selection { sources: vec!["dir".into()], follow_symlinks: true };
    let hashed = contenthash::hash_selection(&root, &sel, &none, None).unwrap();
    let sources = ["dir".to_string()];
    copy_checked(&f.src, &sources, &none, &f.dst, "/same/", &CopyOptions::default(), Some(&hashed.fingerprint))
        .unwrap();
    fs::write(f.src.join("dir/x"), "edited after hashing").unwrap();
    let err =
        copy_checked(&f.src, &sources, &none, &f.dst, "/late/", &CopyOptions::default(), Some(&hashed.fingerprint))
            .unwrap_err();
    assert!(matches!(err, CopyError::Select(ContentHashError::Changed { .. })), "{err}");
}

#[test]
fn exclusions_apply_to_the_copy() {
    let f = ctx();
    let excluded = |p: &str| p == "dir/sub" || p.starts_with("dir/sub/") || p == "b.txt";
    copy(&f.src, &["*".to_string()], &excluded, &f.dst, "/e/", &CopyOptions::default()).unwrap();
    assert!(f.dst.join("e/a.txt").exists());
    assert!(!f.dst.join("e/b.txt").exists());
    assert!(f.dst.join("e/x").exists(), "dir matched by * copies its contents");
    assert!(!f.dst.join("e/sub").exists());
}

fn tar_bytes(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_uid(1234);
    h.set_gid(4321);
    h.set_mtime(1_500_000_000);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data).unwrap();
}

fn sample_tar() -> Vec<u8> {
    tar_bytes(|b| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o750);
        h.set_size(0);
        h.set_mtime(1_500_000_000);
        b.append_data(&mut h, "pkg/", io::empty()).unwrap();
        add_file(b, "pkg/bin/run", b"#!/bin/sh\n", 0o755);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "pkg/link", "bin/run").unwrap();
        // A hardlink's header carries its file's metadata, as tar writers do (ADD applies it to the inode).
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        h.set_mode(0o755);
        h.set_uid(1234);
        h.set_gid(4321);
        h.set_mtime(1_500_000_000);
        b.append_link(&mut h, "pkg/hard", "pkg/bin/run").unwrap();
    })
}

#[test]
fn add_extracts_plain_and_gzip_tars() {
    let f = fixture();
    fs::write(f.src.join("plain.tar"), sample_tar()).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&sample_tar()).unwrap();
    fs::write(f.src.join("pkg.tgz"), gz.finish().unwrap()).unwrap();
    fs::write(f.src.join("notes.tar"), "not really a tar").unwrap();
    let add = CopyOptions { extract_archives: true, ..Default::default() };

    run(&f, &["plain.tar"], "/opt", &add).unwrap();
    run(&f, &["pkg.tgz"], "/gz/", &add).unwrap();
    run(&f, &["notes.tar"], "/notes/", &add).unwrap();
    for base in ["opt", "gz"] {
        let t = tree(&f.dst.join(base));
        assert_eq!(
            t,
            [
                "pkg/ 750 0:0",
                "pkg/bin/ 755 0:0",
                "pkg/bin/run 755 1234:4321 #!/bin/sh\n",
                "pkg/hard 755 1234:4321 #!/bin/sh\n",
                "pkg/link -> bin/run",
            ],
            "{base}"
        );
        let run_md = fs::metadata(f.dst.join(base).join("pkg/bin/run")).unwrap();
        assert_eq!(run_md.mtime(), 1_500_000_000);
        assert_eq!(run_md.ino(), fs::metadata(f.dst.join(base).join("pkg/hard")).unwrap().ino());
    }
    assert_eq!(fs::read_to_string(f.dst.join("notes/notes.tar")).unwrap(), "not really a tar");

    // --chown applies to extracted entries; COPY (no extraction) copies the archive as a file.
    run(&f, &["plain.tar"], "/owned", &CopyOptions { chown: Some((5, 6)), ..add.clone() }).unwrap();
    assert_eq!(fs::metadata(f.dst.join("owned/pkg/bin/run")).unwrap().uid(), 5);
    run(&f, &["plain.tar"], "/copied.tar", &CopyOptions::default()).unwrap();
    assert!(f.dst.join("copied.tar").is_file());
}

#[test]
fn add_extracts_bzip2_and_xz_in_process() {
    let f = fixture();
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    bz.write_all(&sample_tar()).unwrap();
    fs::write(f.src.join("pkg.tar.bz2"), bz.finish().unwrap()).unwrap();
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
    xz.write_all(&sample_tar()).unwrap();
    fs::write(f.src.join("pkg.tar.xz"), xz.finish().unwrap()).unwrap();
    let add = CopyOptions { extract_archives: true, ..Default::default() };
    run(&f, &["pkg.tar.bz2"], "/b", &add).unwrap();
    run(&f, &["pkg.tar.xz"], "/x", &add).unwrap();
    assert_eq!(tree(&f.dst.join("b")), tree(&f.dst.join("x")));
    assert_eq!(fs::read_to_string(f.dst.join("x/pkg/bin/run")).unwrap(), "#!/bin/sh\n");
}

/// A member named ../../evil, written raw (the builder refuses such names).
fn climbing_tar() -> Vec<u8> {
    tar_bytes(|b| {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..11].copy_from_slice(b"../../evil\0");
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
    })
}

#[test]
fn archive_breakouts_are_contained() {
    let f = fixture();
    // BuildKit extracts as in a chroot at the destination: `..` at its top stays there (checked against 0.13).
    fs::write(f.src.join("evil.tar"), climbing_tar()).unwrap();
    let add = CopyOptions { extract_archives: true, ..Default::default() };
    run(&f, &["evil.tar"], "/x", &add).unwrap();
    assert_eq!(fs::read_to_string(f.dst.join("x/evil")).unwrap(), "x");
    assert!(!f.dst.join("evil").exists() && !f.dst.parent().unwrap().join("evil").exists());

    // A symlink to / followed by a member through it lands inside the extraction directory, as with BuildKit.
    let through = tar_bytes(|b| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "l", "/").unwrap();
        add_file(b, "l/tmp/pwned", b"p", 0o644);
    });
    fs::write(f.src.join("through.tar"), through).unwrap();
    run(&f, &["through.tar"], "/y", &add).unwrap();
    assert_eq!(fs::read_to_string(f.dst.join("y/tmp/pwned")).unwrap(), "p");
    assert!(!f.dst.join("tmp/pwned").exists());
    assert!(!Path::new("/tmp/pwned").exists());
}

/// Extracts `archive` with ADD (at `/add` in a fresh root) and as a layer (into a fresh directory); returns both
/// outcomes, ADD's error unwrapped to the extractor's.
fn add_and_layer(
    archive: &[u8],
) -> (Fixture, Result<(), rbuild_image::layer::LayerError>, Result<(), rbuild_image::layer::LayerError>) {
    let f = fixture();
    fs::write(f.src.join("a.tar"), archive).unwrap();
    let add = CopyOptions { extract_archives: true, ..Default::default() };
    let added = match run(&f, &["a.tar"], "/add/", &add) {
        Ok(()) => Ok(()),
        Err(CopyError::Archive { source, .. }) => Err(*source),
        Err(other) => panic!("ADD failed outside the extractor: {other}"),
    };
    let layer_dir = f.dst.parent().unwrap().join("layer");
    fs::create_dir(&layer_dir).unwrap();
    let layered = rbuild_image::layer::extract_layer(archive, &layer_dir).map(|_| ());
    (f, added, layered)
}

#[test]
fn add_keeps_whiteout_names_that_layers_interpret() {
    // BuildKit's ADD writes `.wh.` names as they are (checked against 0.13); a layer turns them into whiteouts.
    let (f, added, layered) = add_and_layer(&tar_bytes(|b| {
        add_file(b, "d/.wh.gone", b"w", 0o644);
        add_file(b, "d/.wh..wh..opq", b"o", 0o644);
    }));
    added.unwrap();
    layered.unwrap();
    assert_eq!(
        tree(&f.dst.join("add")),
        ["d/ 755 0:0", "d/.wh..wh..opq 644 1234:4321 o", "d/.wh.gone 644 1234:4321 w"]
    );
    let layer = f.dst.parent().unwrap().join("layer/d");
    assert!(fs::symlink_metadata(layer.join("gone")).unwrap().file_type().is_char_device());
    assert!(!layer.join(".wh.gone").exists());
    assert_eq!(xattr::get(&layer, "trusted.overlay.opaque").unwrap().as_deref(), Some(&b"y"[..]));
}

#[test]
fn add_and_layers_share_one_extractor() {
    // What both should do alike: an ordinary archive gives the same tree (owners, modes, links, contents).
    let (f, added, layered) = add_and_layer(&sample_tar());
    added.unwrap();
    layered.unwrap();
    assert_eq!(tree(&f.dst.join("add")), tree(&f.dst.parent().unwrap().join("layer")));
    let run_md = fs::metadata(f.dst.parent().unwrap().join("layer/pkg/bin/run")).unwrap();
    assert_eq!(run_md.mtime(), fs::metadata(f.dst.join("add/pkg/bin/run")).unwrap().mtime());

    // Hostile archives both refuse, the same way.
    let hard = |target: &'static str| {
        tar_bytes(move |b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(0o755);
            b.append_data(&mut h, "d/", io::empty()).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            b.append_link(&mut h, "h", target).unwrap();
        })
    };
    let raw_header = |kind: u8, uid: &[u8]| {
        tar_bytes(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_mode(0o644);
            h.set_path("f").unwrap();
            h.as_mut_bytes()[156] = kind;
            h.as_old_mut().uid[..uid.len()].copy_from_slice(uid);
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
        })
    };
    let mut truncated = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    truncated.write_all(&sample_tar()).unwrap();
    let mut truncated = truncated.finish().unwrap();
    truncated.truncate(truncated.len() - 12);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("hardlink out of the root", hard("../../../etc/passwd")),
        ("hardlink to a missing file", hard("nothing")),
        ("hardlink to a directory", hard("d")),
        ("garbage in a numeric field", raw_header(b'0', b"zz")),
        ("unsupported entry type", raw_header(b'X', b"0000000")),
        ("a file naming the root", tar_bytes(|b| add_file(b, ".", b"x", 0o644))),
        ("truncated gzip stream", truncated),
    ];
    for (what, archive) in cases {
        let (_f, added, layered) = add_and_layer(&archive);
        let (Err(a), Err(l)) = (&added, &layered) else { panic!("{what}: ADD {added:?}, layer {layered:?}") };
        assert_eq!(std::mem::discriminant(a), std::mem::discriminant(l), "{what}: ADD {a:?}, layer {l:?}");
    }
}

/// A copy of many files writes them on several threads; the result is the same as copying them a few at a time
/// (one thread): contents, modes, owners, times, hard links and symlinks.
#[test]
fn many_files_copy_on_several_threads_as_on_one() {
    let f = fixture();
    for d in 0..4 {
        for i in 0..60 {
            let rel = format!("tree/d{d}/f{i:02}");
            write(&f.src, &rel, &rel, [0o600, 0o640, 0o755][i % 3]);
            let t = filetime_of(1_600_000_000 + d * 1000 + i as i64);
            set_mtime(&f.src.join(&rel), t);
        }
        symlink(format!("f0{d}"), f.src.join(format!("tree/d{d}/link"))).unwrap();
    }
    fs::hard_link(f.src.join("tree/d0/f01"), f.src.join("tree/d1/hard")).unwrap();
    for opts in [
        CopyOptions::default(),
        CopyOptions { chown: Some((1000, 1001)), ..Default::default() },
        CopyOptions { keep_owner: true, chmod: Some(0o700), ..Default::default() },
    ] {
        let _ = fs::remove_dir_all(&f.dst);
        fs::create_dir_all(&f.dst).unwrap();
        // 242 files: side by side. Each directory alone (61 or 62): one thread.
        run(&f, &["tree/"], "/all/", &opts).unwrap();
        for d in 0..4 {
            run(&f, &[&format!("tree/d{d}/")], &format!("/each/d{d}/"), &opts).unwrap();
        }
        // The dN directories themselves differ by design: under /all they are copied entries (with --chmod),
        // under /each each is a copy's destination (made like a missing parent).
        let below = |root: &str| -> Vec<String> {
            tree(&f.dst.join(root)).into_iter().filter(|l| !l.split(' ').next().unwrap().ends_with('/')).collect()
        };
        let all = below("all");
        assert_eq!(all.len(), 4 * 61 + 1, "{} entries", all.len());
        let (uid, gid) = opts.chown.unwrap_or((0, 0));
        for d in 0..4 {
            for i in 0..60 {
                let mode = opts.chmod.unwrap_or([0o600, 0o640, 0o755][i % 3]);
                let want = format!("d{d}/f{i:02} {mode:o} {uid}:{gid} tree/d{d}/f{i:02}");
                assert!(all.contains(&want), "{want} missing");
            }
        }
        assert!(all == below("each"), "a copy on several threads differs from one on one thread");
        for d in 0..4 {
            for i in 0..60 {
                let rel = format!("d{d}/f{i:02}");
                let (a, e) = (f.dst.join("all").join(&rel), f.dst.join("each").join(&rel));
                let (a, e) = (fs::metadata(a).unwrap(), fs::metadata(e).unwrap());
                assert_eq!((a.mtime(), a.mtime_nsec()), (e.mtime(), e.mtime_nsec()), "{rel}");
                assert_eq!(a.mtime(), 1_600_000_000 + d * 1000 + i as i64, "{rel}");
            }
        }
        let (h1, h2) = (f.dst.join("all/d0/f01"), f.dst.join("all/d1/hard"));
        assert_eq!(fs::metadata(h1).unwrap().ino(), fs::metadata(h2).unwrap().ino(), "the hard link is kept");
    }
}

fn filetime_of(secs: i64) -> libc::timespec {
    libc::timespec { tv_sec: secs as libc::time_t, tv_nsec: 0 }
}

fn set_mtime(path: &Path, t: libc::timespec) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path and the array holds the two timespecs utimensat reads.
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), 0) }, 0);
}
