//! Layer tests. They create whiteouts (mknod), chown files and set `trusted.*` xattrs, so they need root; without it
//! they are skipped with a message rather than failing for the wrong reason.

use super::*;
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::process::Command;
use tar::EntryType;
use tempfile::TempDir;

const T: i64 = 1_600_000_000; // 2020-09-13 12:26:40 UTC

/// Layer tests need root: mknod, chown, `trusted.*` xattrs.
fn is_root() -> bool {
    rbuild_test_support::require(&[])
}

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

/// A snapshot directory under construction.
struct Snap {
    tmp: TempDir,
}

impl Snap {
    fn new() -> Snap {
        Snap { tmp: TempDir::new().unwrap() }
    }
    fn root(&self) -> &Path {
        self.tmp.path()
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }
    fn dir(&self, rel: &str, mode: u32, owner: (u32, u32)) -> &Snap {
        fs::create_dir(self.p(rel)).unwrap();
        self.meta(rel, mode, owner)
    }
    fn file(&self, rel: &str, data: &[u8], mode: u32, owner: (u32, u32)) -> &Snap {
        fs::write(self.p(rel), data).unwrap();
        self.meta(rel, mode, owner)
    }
    fn meta(&self, rel: &str, mode: u32, (uid, gid): (u32, u32)) -> &Snap {
        std::os::unix::fs::lchown(self.p(rel), Some(uid), Some(gid)).unwrap();
        fs::set_permissions(self.p(rel), fs::Permissions::from_mode(mode)).unwrap();
        self
    }
    fn symlink(&self, rel: &str, target: &str) -> &Snap {
        std::os::unix::fs::symlink(target, self.p(rel)).unwrap();
        self
    }
    fn hardlink(&self, rel: &str, existing: &str) -> &Snap {
        fs::hard_link(self.p(existing), self.p(rel)).unwrap();
        self
    }
    fn node(&self, rel: &str, mode: libc::mode_t, dev: libc::dev_t) -> &Snap {
        // SAFETY: valid C string; mknod has no other preconditions.
        assert_eq!(unsafe { libc::mknod(c(&self.p(rel)).as_ptr(), mode, dev) }, 0, "mknod {rel}");
        self
    }
    fn whiteout(&self, rel: &str) -> &Snap {
        self.node(rel, libc::S_IFCHR, 0)
    }
    fn xattr(&self, rel: &str, name: &str, value: &[u8]) -> &Snap {
        xattr::set(self.p(rel), name, value).unwrap();
        self
    }
    /// Sets every mtime in the tree (the root included) to `t`, so tars are reproducible.
    fn all_mtimes(&self, t: i64) -> &Snap {
        fn walk(path: &Path, t: i64) {
            let meta = fs::symlink_metadata(path).unwrap();
            if meta.is_dir() {
                for entry in fs::read_dir(path).unwrap() {
                    walk(&entry.unwrap().path(), t);
                }
            }
            set_time(path, t);
        }
        walk(self.root(), t);
        self
    }
}

fn set_time(path: &Path, t: i64) {
    let ts = libc::timespec { tv_sec: t as libc::time_t, tv_nsec: 0 };
    // SAFETY: valid C string and two initialised timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c(path).as_ptr(), [ts, ts].as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

/// The snapshot most tests use: every entry type, a hardlink whose data holder sorts first, a whiteout, an opaque
/// directory carrying overlay-internal xattrs, setuid/sticky modes, owners, a user xattr, and names whose byte order
/// differs from walk order (`x-y` < `x/` bytewise, but a directory's children come right after it).
fn sample() -> Snap {
    let s = Snap::new();
    s.file("z", b"shared", 0o644, (0, 0)).hardlink("a", "z");
    s.dir("bin", 0o755, (0, 0)).file("bin/sh", b"#!sh", 0o4755, (0, 0)).symlink("bin/link", "sh");
    s.dir("dev", 0o755, (0, 0)).node("dev/null", libc::S_IFCHR, libc::makedev(1, 3)).meta("dev/null", 0o666, (0, 0));
    s.dir("etc", 0o750, (1000, 1001)).file("etc/passwd", b"root:x:0:0\n", 0o644, (1000, 1001));
    s.xattr("etc/passwd", "user.comment", b"hello").xattr("etc/passwd", "trusted.overlay.origin", b"\x00\xfb");
    s.node("fifo", libc::S_IFIFO | 0o640, 0);
    s.whiteout("gone");
    s.dir("opq", 0o755, (0, 0)).xattr("opq", "trusted.overlay.opaque", b"y").xattr(
        "opq",
        "trusted.overlay.impure",
        b"y",
    );
    s.file("opq/new", b"new", 0o600, (0, 0));
    s.dir("sticky", 0o1777, (0, 0));
    s.dir("x", 0o755, (0, 0)).file("x/y", b"", 0o644, (0, 0)).file("x-y", b"", 0o644, (0, 0));
    std::os::unix::net::UnixListener::bind(s.p("socket")).unwrap();
    s.all_mtimes(T);
    s
}

#[derive(Debug)]
struct Listed {
    name: String,
    kind: EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: Option<String>,
    xattrs: Vec<(String, Vec<u8>)>,
    data: Vec<u8>,
}

fn list(tar_bytes: &[u8]) -> Vec<Listed> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().unwrap() {
            for record in pax {
                let record = record.unwrap();
                if let Some(name) = record.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.push((name.to_string(), record.value_bytes().to_vec()));
                }
            }
        }
        let h = entry.header();
        let mut listed = Listed {
            name: String::from_utf8(entry.path_bytes().into_owned()).unwrap(),
            kind: h.entry_type(),
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            link: entry.link_name_bytes().map(|l| String::from_utf8(l.into_owned()).unwrap()),
            xattrs,
            data: Vec::new(),
        };
        entry.read_to_end(&mut listed.data).unwrap();
        out.push(listed);
    }
    out
}

fn tar_of(dir: &Path, opts: &LayerOptions) -> Vec<u8> {
    write_layer_tar(dir, Vec::new(), opts).unwrap()
}

#[test]
fn sample_layer_has_sorted_typed_entries() {
    if !is_root() {
        return;
    }
    let s = sample();
    let entries = list(&tar_of(s.root(), &LayerOptions::default()));
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "a",
            "bin/",
            "bin/link",
            "bin/sh",
            "dev/",
            "dev/null",
            "etc/",
            "etc/passwd",
            "fifo",
            ".wh.gone",
            "opq/",
            "opq/.wh..wh..opq",
            "opq/new",
            "sticky/",
            "x/",
            "x/y",
            "x-y",
            "z",
        ]
    );
    let by = |name: &str| entries.iter().find(|e| e.name == name).unwrap();

    let a = by("a");
    assert_eq!((a.kind, a.mode, a.data.as_slice()), (EntryType::Regular, 0o644, &b"shared"[..]));
    let z = by("z");
    assert_eq!((z.kind, z.link.as_deref(), z.data.len()), (EntryType::Link, Some("a"), 0));

    let sh = by("bin/sh");
    assert_eq!((sh.kind, sh.mode, sh.uid, sh.data.as_slice()), (EntryType::Regular, 0o4755, 0, &b"#!sh"[..]));
    let link = by("bin/link");
    assert_eq!((link.kind, link.link.as_deref()), (EntryType::Symlink, Some("sh")));

    let null = by("dev/null");
    assert_eq!(null.kind, EntryType::Char);
    assert_eq!(null.mode, 0o666);

    let etc = by("etc/");
    assert_eq!((etc.kind, etc.mode, etc.uid, etc.gid), (EntryType::Directory, 0o750, 1000, 1001));
    let passwd = by("etc/passwd");
    assert_eq!((passwd.uid, passwd.gid, passwd.mode), (1000, 1001, 0o644));
    assert_eq!(passwd.xattrs, [("user.comment".to_string(), b"hello".to_vec())], "overlay xattrs must be dropped");
    assert!(by("opq/").xattrs.is_empty(), "opaque/impure are overlay-internal");

    assert_eq!((by("fifo").kind, by("fifo").mode), (EntryType::Fifo, 0o640));
    for marker in [".wh.gone", "opq/.wh..wh..opq"] {
        let m = by(marker);
        assert_eq!((m.kind, m.mode, m.uid, m.gid, m.data.len()), (EntryType::Regular, 0, 0, 0, 0), "{marker}");
    }
    assert_eq!(by("sticky/").mode, 0o1777);
    assert!(entries.iter().all(|e| e.mtime == T as u64), "mtimes in seconds");
}

#[test]
fn device_numbers_are_written() {
    if !is_root() {
        return;
    }
    let s = sample();
    let tar_bytes = tar_of(s.root(), &LayerOptions::default());
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let null = archive.entries().unwrap().map(|e| e.unwrap()).find(|e| &*e.path_bytes() == b"dev/null").unwrap();
    assert_eq!(null.header().device_major().unwrap(), Some(1));
    assert_eq!(null.header().device_minor().unwrap(), Some(3));
}

#[test]
fn round_trip_is_byte_identical() {
    if !is_root() {
        return;
    }
    let s = sample();
    let opts = LayerOptions::default();
    let first = tar_of(s.root(), &opts);
    let dest = TempDir::new().unwrap();
    let extracted_id = extract_layer(first.as_slice(), dest.path()).unwrap();
    assert_eq!(extracted_id, Digest::of(&first));
    let second = tar_of(dest.path(), &opts);
    assert!(first == second, "rewriting an extracted layer must give the same bytes");
    assert_eq!(diff_id(dest.path(), &opts).unwrap(), (Digest::of(&first), first.len() as u64));

    let d = dest.path();
    let gone = fs::symlink_metadata(d.join("gone")).unwrap();
    assert!(gone.file_type().is_char_device() && gone.rdev() == 0, "whiteout becomes a 0:0 char device");
    assert_eq!(xattr::get(d.join("opq"), "trusted.overlay.opaque").unwrap().as_deref(), Some(&b"y"[..]));
    assert_eq!(xattr::get(d.join("opq"), "trusted.overlay.impure").unwrap(), None);
    assert_eq!(fs::metadata(d.join("a")).unwrap().ino(), fs::metadata(d.join("z")).unwrap().ino());
    assert_eq!(fs::read(d.join("z")).unwrap(), b"shared");
    assert_eq!(fs::read_link(d.join("bin/link")).unwrap(), Path::new("sh"));
    assert_eq!(fs::metadata(d.join("bin/sh")).unwrap().mode() & 0o7777, 0o4755);
    let etc = fs::metadata(d.join("etc")).unwrap();
    assert_eq!((etc.uid(), etc.gid(), etc.mode() & 0o7777), (1000, 1001, 0o750));
    assert_eq!(etc.mtime(), T, "directory mtimes survive their children being written");
    assert_eq!(xattr::get(d.join("etc/passwd"), "user.comment").unwrap().as_deref(), Some(&b"hello"[..]));
    assert!(fs::symlink_metadata(d.join("fifo")).unwrap().file_type().is_fifo());
    let null = fs::symlink_metadata(d.join("dev/null")).unwrap();
    assert_eq!(null.rdev(), libc::makedev(1, 3));
}

#[test]
fn long_names_and_link_targets_use_pax() {
    if !is_root() {
        return;
    }
    let s = Snap::new();
    let d1 = "d".repeat(90);
    let d2 = format!("{d1}/{}", "e".repeat(90));
    let file = format!("{d2}/{}", "f".repeat(120));
    let target = format!("../{}", "t".repeat(150));
    s.dir(&d1, 0o755, (0, 0)).dir(&d2, 0o755, (0, 0)).file(&file, b"long", 0o644, (0, 0));
    s.symlink("s", &target).hardlink("h", &file).all_mtimes(T);
    let tar_bytes = tar_of(s.root(), &LayerOptions::default());
    let entries = list(&tar_bytes);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let (d1s, d2s) = (format!("{d1}/"), format!("{d2}/"));
    // `h` sorts after the `ddd…` directory, so the long name holds the data and `h` links to it.
    assert_eq!(names, [d1s.as_str(), d2s.as_str(), file.as_str(), "h", "s"]);
    assert_eq!(entries[2].data, b"long");
    assert_eq!(entries[3].link.as_deref(), Some(file.as_str()));
    assert_eq!(entries[4].link.as_deref(), Some(target.as_str()));

    let dest = TempDir::new().unwrap();
    extract_layer(tar_bytes.as_slice(), dest.path()).unwrap();
    assert_eq!(fs::read(dest.path().join(&file)).unwrap(), b"long");
    assert_eq!(fs::read_link(dest.path().join("s")).unwrap(), Path::new(&target));
    assert_eq!(tar_of(dest.path(), &LayerOptions::default()), tar_bytes);

    if let Some(listing) = gnu_tar_list(&tar_bytes) {
        assert!(listing.contains(&format!("-rw-r--r-- 0/0 4 2020-09-13 12:26 {file}")), "{listing}");
        assert!(listing.contains(&format!("lrwxrwxrwx 0/0 0 2020-09-13 12:26 s -> {target}")), "{listing}");
    }
}

#[test]
fn mtimes_are_clamped_to_the_epoch() {
    if !is_root() {
        return;
    }
    let s = Snap::new();
    s.file("new", b"", 0o644, (0, 0)).file("old", b"", 0o644, (0, 0)).whiteout("wh");
    s.dir("o", 0o755, (0, 0)).xattr("o", "trusted.overlay.opaque", b"y");
    s.all_mtimes(2_000_000_000);
    set_time(&s.p("old"), 1_000_000_000);
    let entries = list(&tar_of(s.root(), &LayerOptions { clamp_mtime: Some(1_500_000_000) }));
    let times: Vec<(&str, u64)> = entries.iter().map(|e| (e.name.as_str(), e.mtime)).collect();
    assert_eq!(
        times,
        [
            ("new", 1_500_000_000),
            ("o/", 1_500_000_000),
            ("o/.wh..wh..opq", 1_500_000_000),
            ("old", 1_000_000_000),
            (".wh.wh", 1_500_000_000)
        ]
    );
}

#[test]
fn compressed_layer_digests_describe_the_blob_and_the_tar() {
    if !is_root() {
        return;
    }
    let s = sample();
    let opts = LayerOptions::default();
    let plain = tar_of(s.root(), &opts);

    let mut blob = Vec::new();
    let d = write_compressed_layer(s.root(), &mut blob, Compression::Gzip { level: 6 }, &opts).unwrap();
    assert_eq!(&blob[..2], &[0x1f, 0x8b]);
    assert_eq!((d.digest.clone(), d.size), (Digest::of(&blob), blob.len() as u64));
    assert_eq!((d.diff_id.clone(), d.diff_size), (Digest::of(&plain), plain.len() as u64));
    assert_eq!(diff_id(s.root(), &opts).unwrap(), (d.diff_id.clone(), d.diff_size));
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(blob.as_slice()).read_to_end(&mut unzipped).unwrap();
    assert!(unzipped == plain);

    let dest = TempDir::new().unwrap();
    assert_eq!(extract_layer(blob.as_slice(), dest.path()).unwrap(), d.diff_id, "gzip is detected by magic");

    let mut raw = Vec::new();
    let n = write_compressed_layer(s.root(), &mut raw, Compression::None, &opts).unwrap();
    assert!(raw == plain);
    assert_eq!((n.digest, n.size), (n.diff_id, n.diff_size));

    let err = write_compressed_layer(s.root(), Vec::new(), Compression::Gzip { level: 10 }, &opts).unwrap_err();
    assert!(matches!(err, LayerError::CompressionLevel { level: 10, .. }), "{err}");
}

#[test]
fn overlay_metacopy_is_refused() {
    if !is_root() {
        return;
    }
    let s = Snap::new();
    s.file("f", b"", 0o644, (0, 0)).xattr("f", "trusted.overlay.metacopy", b"");
    let err = write_layer_tar(s.root(), Vec::new(), &LayerOptions::default()).unwrap_err();
    assert!(matches!(&err, LayerError::OverlayFeature { path, .. } if path.ends_with("f")), "{err}");
}

/// A raw tar entry: name and link bytes go into the header unchecked, as a hostile tool would write them.
struct Raw<'a> {
    name: &'a str,
    kind: EntryType,
    link: &'a str,
    data: &'a [u8],
}

fn raw(name: &str, kind: EntryType) -> Raw<'_> {
    Raw { name, kind, link: "", data: b"" }
}

fn raw_tar(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        let old = h.as_old_mut();
        old.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
        old.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        h.set_entry_type(e.kind);
        h.set_mode(0o644);
        h.set_size(e.data.len() as u64);
        h.set_cksum();
        builder.append(&h, e.data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// A scratch area with `dest/` (the extraction target) and `outside/secret` next to it.
fn arena() -> (TempDir, PathBuf, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let dest = tmp.path().join("dest");
    let outside = tmp.path().join("outside");
    fs::create_dir(&dest).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"secret").unwrap();
    (tmp, dest, outside)
}

#[test]
fn escaping_names_are_rejected() {
    if !is_root() {
        return;
    }
    for name in ["../evil", "a/../../evil", "/evil", "./../evil"] {
        let (tmp, dest, _) = arena();
        let err = extract_layer(raw_tar(&[Raw { data: b"x", ..raw(name, EntryType::Regular) }]).as_slice(), &dest)
            .unwrap_err();
        assert!(matches!(&err, LayerError::UnsafePath { entry, .. } if entry == name), "{name}: {err}");
        assert!(!tmp.path().join("evil").exists() && !Path::new("/evil").exists());
    }
}

#[test]
fn symlinks_in_the_layer_are_never_followed() {
    if !is_root() {
        return;
    }
    let (_tmp, dest, outside) = arena();
    let out = outside.to_str().unwrap();
    // Writing through an absolute and through a relative symlink.
    for absolute in [true, false] {
        let (_tmp, dest, outside) = arena();
        let link = if absolute { outside.to_str().unwrap().to_string() } else { "../outside".to_string() };
        let tar_bytes = raw_tar(&[
            Raw { link: &link, ..raw("a", EntryType::Symlink) },
            Raw { data: b"pwned", ..raw("a/passwd", EntryType::Regular) },
        ]);
        let err = extract_layer(tar_bytes.as_slice(), &dest).unwrap_err();
        assert!(matches!(&err, LayerError::UnsafePath { entry, .. } if entry == "a/passwd"), "{err}");
        assert!(!outside.join("passwd").exists());
    }

    // A hardlink through a symlinked parent, and one climbing out.
    for target in ["a/secret", "../outside/secret", "/etc/passwd", "missing"] {
        let (_tmp, dest, outside) = arena();
        let link = outside.to_str().unwrap();
        let tar_bytes =
            raw_tar(&[Raw { link, ..raw("a", EntryType::Symlink) }, Raw { link: target, ..raw("h", EntryType::Link) }]);
        let err = extract_layer(tar_bytes.as_slice(), &dest).unwrap_err();
        assert!(matches!(&err, LayerError::UnsafeLink { entry, .. } if entry == "h"), "{target}: {err}");
        assert!(!dest.join("h").exists());
        assert_eq!(fs::metadata(outside.join("secret")).unwrap().nlink(), 1);
    }

    // A file or directory entry replaces a symlink instead of writing through it.
    let target = outside.join("secret");
    let tar_bytes = raw_tar(&[
        Raw { link: target.to_str().unwrap(), ..raw("f", EntryType::Symlink) },
        Raw { data: b"mine", ..raw("f", EntryType::Regular) },
        Raw { link: out, ..raw("d", EntryType::Symlink) },
        raw("d/", EntryType::Directory),
        raw("d/inner", EntryType::Regular),
    ]);
    extract_layer(tar_bytes.as_slice(), &dest).unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"secret");
    assert_eq!(fs::read(dest.join("f")).unwrap(), b"mine");
    assert!(fs::symlink_metadata(dest.join("d")).unwrap().is_dir());
    assert!(dest.join("d/inner").exists() && !outside.join("inner").exists());
}

#[test]
fn overlay_xattrs_in_a_tar_are_dropped() {
    if !is_root() {
        return;
    }
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_pax_extensions([
            ("SCHILY.xattr.trusted.overlay.redirect", &b"/elsewhere"[..]),
            ("SCHILY.xattr.user.kept", &b"1"[..]),
        ])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    builder.append_data(&mut h, "d/", std::io::empty()).unwrap();
    let dest = TempDir::new().unwrap();
    extract_layer(builder.into_inner().unwrap().as_slice(), dest.path()).unwrap();
    assert_eq!(xattr::get(dest.path().join("d"), "trusted.overlay.redirect").unwrap(), None);
    assert_eq!(xattr::get(dest.path().join("d"), "user.kept").unwrap().as_deref(), Some(&b"1"[..]));
}

#[test]
fn zstd_layers_extract_to_the_same_diff_id_as_plain() {
    let s = Snap::new();
    s.dir("a", 0o755, (0, 0)).file("a/b.txt", b"zstd content", 0o644, (0, 0));
    let opts = LayerOptions::default();
    let mut blob = Vec::new();
    let d = write_compressed_layer(s.root(), &mut blob, Compression::Zstd { level: 3 }, &opts).unwrap();
    assert_eq!(&blob[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
    assert_ne!(d.digest, d.diff_id);
    let dest = TempDir::new().unwrap();
    assert_eq!(extract_layer(blob.as_slice(), dest.path()).unwrap(), d.diff_id);
    assert_eq!(std::fs::read(dest.path().join("a/b.txt")).unwrap(), b"zstd content");
    let err = write_compressed_layer(s.root(), Vec::new(), Compression::Zstd { level: 23 }, &opts).unwrap_err();
    assert!(matches!(err, LayerError::CompressionLevel { level: 23, .. }), "{err}");
}

#[test]
fn truncated_zstd_is_an_error_not_an_empty_layer() {
    let dest = TempDir::new().unwrap();
    assert!(extract_layer(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0][..], dest.path()).is_err());
}

/// `tar -tvf` of `bytes` with whitespace runs collapsed, or `None` when GNU tar is not installed.
fn gnu_tar_list(bytes: &[u8]) -> Option<String> {
    let tmp = TempDir::new().unwrap();
    let file = tmp.path().join("layer.tar");
    fs::write(&file, bytes).unwrap();
    let out = match Command::new("tar").env("TZ", "UTC").arg("--numeric-owner").arg("-tvf").arg(&file).output() {
        Ok(out) => out,
        Err(_) => {
            eprintln!("GNU tar not installed; interoperability not checked");
            return None;
        }
    };
    assert!(out.status.success(), "tar -tvf failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    Some(text.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect::<Vec<_>>().join("\n"))
}

#[test]
fn gnu_tar_reads_our_layers() {
    if !is_root() {
        return;
    }
    let s = sample();
    let tar_bytes = tar_of(s.root(), &LayerOptions::default());
    let Some(listing) = gnu_tar_list(&tar_bytes) else { return };
    let when = "2020-09-13 12:26";
    let expected = [
        format!("-rw-r--r-- 0/0 6 {when} a"),
        format!("drwxr-xr-x 0/0 0 {when} bin/"),
        format!("lrwxrwxrwx 0/0 0 {when} bin/link -> sh"),
        format!("-rwsr-xr-x 0/0 4 {when} bin/sh"),
        format!("drwxr-xr-x 0/0 0 {when} dev/"),
        format!("crw-rw-rw- 0/0 1,3 {when} dev/null"),
        format!("drwxr-x--- 1000/1001 0 {when} etc/"),
        format!("-rw-r--r-- 1000/1001 11 {when} etc/passwd"),
        format!("prw-r----- 0/0 0 {when} fifo"),
        format!("---------- 0/0 0 {when} .wh.gone"),
        format!("drwxr-xr-x 0/0 0 {when} opq/"),
        format!("---------- 0/0 0 {when} opq/.wh..wh..opq"),
        format!("-rw------- 0/0 3 {when} opq/new"),
        format!("drwxrwxrwt 0/0 0 {when} sticky/"),
        format!("drwxr-xr-x 0/0 0 {when} x/"),
        format!("-rw-r--r-- 0/0 0 {when} x/y"),
        format!("-rw-r--r-- 0/0 0 {when} x-y"),
        format!("hrw-r--r-- 0/0 0 {when} z link to a"),
    ];
    assert_eq!(listing, expected.join("\n"));

    // GNU tar also understands the PAX xattr records.
    let tmp = TempDir::new().unwrap();
    let file = tmp.path().join("layer.tar");
    fs::write(&file, &tar_bytes).unwrap();
    let out_dir = tmp.path().join("x");
    fs::create_dir(&out_dir).unwrap();
    let status = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "-xf"])
        .arg(&file)
        .arg("-C")
        .arg(&out_dir)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(xattr::get(out_dir.join("etc/passwd"), "user.comment").unwrap().as_deref(), Some(&b"hello"[..]));
}

#[test]
fn gnu_tar_archives_extract() {
    if !is_root() {
        return;
    }
    let src = Snap::new();
    let long = format!("{}/{}", "l".repeat(80), "m".repeat(120));
    src.dir(&"l".repeat(80), 0o755, (0, 0)).file(&long, b"gnu", 0o640, (7, 8)).hardlink("hl", &long);
    src.symlink("sl", &"q".repeat(130)).all_mtimes(T);
    let tmp = TempDir::new().unwrap();
    let file = tmp.path().join("gnu.tar");
    let made = Command::new("tar").args(["--format=gnu", "-C"]).arg(src.root()).arg("-cf").arg(&file).arg(".").status();
    let Ok(status) = made else {
        eprintln!("GNU tar not installed; interoperability not checked");
        return;
    };
    assert!(status.success());
    let bytes = fs::read(&file).unwrap();
    let dest = TempDir::new().unwrap();
    // GNU tar pads to 10 KiB records: the digest must cover the padding after the end-of-archive blocks too.
    assert_eq!(extract_layer(bytes.as_slice(), dest.path()).unwrap(), Digest::of(&bytes));
    let d = dest.path();
    let meta = fs::metadata(d.join(&long)).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777, meta.mtime()), (7, 8, 0o640, T));
    assert_eq!(meta.ino(), fs::metadata(d.join("hl")).unwrap().ino());
    assert_eq!(fs::read_link(d.join("sl")).unwrap(), Path::new(&"q".repeat(130)));
}

/// An overlayfs mount, unmounted on drop.
struct Overlay {
    merged: PathBuf,
}

impl Overlay {
    /// Mounts `lowers` (topmost first) with an optional upper; `None` when this kernel or sandbox has no overlayfs.
    fn mount(merged: &Path, lowers: &[&Path], upper: Option<(&Path, &Path)>) -> Option<Overlay> {
        let lower: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        let mut data = format!("lowerdir={}", lower.join(":"));
        if let Some((upper, work)) = upper {
            data += &format!(",upperdir={},workdir={},redirect_dir=off,metacopy=off", upper.display(), work.display());
        }
        let (src, fstype, data) = (c(Path::new("overlay")), c(Path::new("overlay")), c(Path::new(&data)));
        // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
        let rc = unsafe { libc::mount(src.as_ptr(), c(merged).as_ptr(), fstype.as_ptr(), 0, data.as_ptr().cast()) };
        if rc != 0 {
            eprintln!("skipped: cannot mount overlayfs: {}", std::io::Error::last_os_error());
            return None;
        }
        Some(Overlay { merged: merged.to_path_buf() })
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        // SAFETY: valid C string.
        unsafe { libc::umount2(c(&self.merged).as_ptr(), libc::MNT_DETACH) };
    }
}

/// Files under `root`, relative, sorted (directories with a trailing slash).
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &path, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// The real producer of snapshots: a build step's overlay upperdir. Its whiteouts (which this kernel may create as
/// hardlinks of one shared inode) and opaque directory must become `.wh.` entries, and the extracted layer must give
/// the same merged view under overlayfs and under umoci, an independent OCI unpacker.
#[test]
fn overlay_upperdir_round_trips_through_overlayfs_and_umoci() {
    if !is_root() {
        return;
    }
    let base = Snap::new();
    base.file("keep", b"k", 0o644, (0, 0)).file("del1", b"1", 0o644, (0, 0)).file("del2", b"2", 0o644, (0, 0));
    base.dir("dir", 0o755, (0, 0)).file("dir/old", b"o", 0o644, (0, 0)).all_mtimes(T);
    let tmp = TempDir::new().unwrap();
    let [upper, work, merged, snap, view] = ["upper", "work", "merged", "snap", "view"].map(|n| {
        let p = tmp.path().join(n);
        fs::create_dir(&p).unwrap();
        p
    });
    {
        let Some(_mount) = Overlay::mount(&merged, &[base.root()], Some((&upper, &work))) else { return };
        fs::remove_file(merged.join("del1")).unwrap();
        fs::remove_file(merged.join("del2")).unwrap();
        fs::remove_dir_all(merged.join("dir")).unwrap();
        fs::create_dir(merged.join("dir")).unwrap();
        fs::write(merged.join("dir/new"), b"n").unwrap();
        fs::write(merged.join("added"), b"a").unwrap();
    }
    let opts = LayerOptions { clamp_mtime: Some(T) };
    let layer = tar_of(&upper, &opts);
    let names: Vec<String> = list(&layer).into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["added", ".wh.del1", ".wh.del2", "dir/", "dir/.wh..wh..opq", "dir/new"]);

    assert_eq!(extract_layer(layer.as_slice(), &snap).unwrap(), Digest::of(&layer));
    let expected = ["added", "dir/", "dir/new", "keep"];
    {
        let Some(_mount) = Overlay::mount(&view, &[&snap, base.root()], None) else { return };
        assert_eq!(tree(&view), expected);
    }

    let Ok(version) = Command::new("umoci").arg("--version").output() else {
        eprintln!("umoci not installed; OCI unpack not checked");
        return;
    };
    assert!(version.status.success());
    let layout = tmp.path().join("oci");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let put = |bytes: &[u8]| {
        let digest = Digest::of(bytes);
        fs::write(layout.join("blobs/sha256").join(digest.hex()), bytes).unwrap();
        serde_json::json!({ "digest": digest.as_str(), "size": bytes.len() })
    };
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for dir in [base.root(), upper.as_path()] {
        let mut blob = Vec::new();
        let d = write_compressed_layer(dir, &mut blob, Compression::Gzip { level: 1 }, &opts).unwrap();
        let mut desc = put(&blob);
        desc["mediaType"] = Compression::Gzip { level: 1 }.oci_media_type().into();
        layers.push(desc);
        diff_ids.push(d.diff_id.to_string());
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let mut config_desc = put(&serde_json::to_vec(&config).unwrap());
    config_desc["mediaType"] = rbuild_types::oci::MEDIA_OCI_CONFIG.into();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": rbuild_types::oci::MEDIA_OCI_MANIFEST, "config": config_desc, "layers": layers,
    });
    let mut manifest_desc = put(&serde_json::to_vec(&manifest).unwrap());
    manifest_desc["mediaType"] = rbuild_types::oci::MEDIA_OCI_MANIFEST.into();
    manifest_desc["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": "t" });
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": [manifest_desc] });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let rootfs = tmp.path().join("rootfs");
    let out = Command::new("umoci")
        .args(["raw", "unpack", "--image"])
        .arg(format!("{}:t", layout.display()))
        .arg(&rootfs)
        .output()
        .unwrap();
    assert!(out.status.success(), "umoci: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tree(&rootfs), expected);
}
