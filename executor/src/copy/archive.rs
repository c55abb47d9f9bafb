//! ADD archive extraction: recognising a tar archive by content, decompressing it and unpacking it into `dest`.

use super::*;
use rbuild_cache::confined::Root;
use rbuild_cache::contenthash::{self, SelectedEntry};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Seek};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

impl Copier<'_> {
    pub(super) fn extract(&mut self, e: &SelectedEntry, kind: Compression, dir: &Path) -> Result<(), CopyError> {
        let archive_path = self.src.path().join(&e.real);
        let archive = archive_path.as_path();
        let arch_err = |source| CopyError::Archive { archive: archive.to_path_buf(), source };
        let dir_rel = dir.strip_prefix(self.dest_root).unwrap_or(Path::new("")).to_path_buf();
        let file = contenthash::open_entry(self.src, e)?;
        let check = file.try_clone().map_err(arch_err)?;
        let mut stream = Decompressed::open(file, archive, kind)?;
        {
            let mut ar = tar::Archive::new(&mut stream.reader);
            for entry in ar.entries().map_err(arch_err)? {
                let mut entry = entry.map_err(arch_err)?;
                let raw = entry.path_bytes().into_owned();
                let name = String::from_utf8_lossy(&raw).into_owned();
                let breakout = || CopyError::ArchiveBreakout { archive: archive.to_path_buf(), entry: name.clone() };
                let parts = clean_archive_path(&raw).ok_or_else(breakout)?;
                let Some((last, parents)) = parts.split_last() else { continue };
                let header = entry.header();
                let kind = header.entry_type();
                // Empty numeric fields read as 0, as Go's archive/tar (what Docker uses) reads them.
                let (uid, gid) = match self.opts.chown {
                    Some(o) => o,
                    None => (
                        header.uid().ok().and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
                        header.gid().ok().and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
                    ),
                };
                let mtime = header.mtime().ok().and_then(|v| i64::try_from(v).ok()).unwrap_or(0);
                let mode = header.mode().unwrap_or(0) & 0o7777;
                let dev = (header.device_major().ok().flatten(), header.device_minor().ok().flatten());
                let link = entry.link_name_bytes().map(|l| l.into_owned());
                let mut xattrs = Vec::new();
                if let Some(pax) = entry.pax_extensions().map_err(arch_err)? {
                    for ext in pax {
                        let ext = ext.map_err(arch_err)?;
                        if let Some(x) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.")
                            && !contenthash::is_ignored_xattr(x)
                        {
                            xattrs.push((OsStr::from_bytes(x).to_os_string(), ext.value_bytes().to_vec()));
                        }
                    }
                }
                let meta = Meta {
                    uid,
                    gid,
                    mode: if kind.is_symlink() { None } else { Some(mode) },
                    xattrs,
                    times: [(mtime, 0), (mtime, 0)],
                };
                let parent = self.mkdir_all(&dir_rel.join(parents.iter().collect::<PathBuf>()))?;
                let target = parent.join(last);
                if kind.is_dir() {
                    self.make_dir(&target, &meta)?;
                    continue;
                }
                self.clear_target(&target)?;
                if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
                    let mut f = create_file(&target)?;
                    io::copy(&mut entry, &mut f).map_err(arch_err)?;
                } else if kind.is_symlink() {
                    let link = link.unwrap_or_default();
                    std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target)
                        .map_err(io_err("create symlink", &target))?;
                } else if kind.is_hard_link() {
                    let link = link.unwrap_or_default();
                    let link_name = String::from_utf8_lossy(&link).into_owned();
                    let link_parts = clean_archive_path(&link).ok_or_else(breakout)?;
                    let rel = dir_rel.join(link_parts.iter().collect::<PathBuf>());
                    let src = contenthash::resolve_in_root(self.dest_root, &rel, false)?;
                    if lstat_opt(&src)?.is_none_or(|m| m.is_dir()) {
                        return Err(CopyError::ArchiveLink {
                            archive: archive.to_path_buf(),
                            entry: name,
                            target: link_name,
                        });
                    }
                    fs::hard_link(&src, &target).map_err(io_err("hard link", &target))?;
                    continue;
                } else if kind.is_fifo() {
                    mknod(&target, libc::S_IFIFO, 0)?;
                } else if kind.is_character_special() || kind.is_block_special() {
                    let (major, minor) = (dev.0.unwrap_or(0), dev.1.unwrap_or(0));
                    let t = if kind.is_character_special() { libc::S_IFCHR } else { libc::S_IFBLK };
                    mknod(&target, t, libc::makedev(major, minor))?;
                } else {
                    tracing::debug!(entry = %name, "skipping unsupported tar entry type in ADD archive");
                    continue;
                }
                self.apply(&target, &meta, false)?;
            }
        }
        stream.finish(archive)?;
        contenthash::check_unchanged(&check, e)?;
        Ok(())
    }
}

/// Cleans an archive member name; `None` when `..` would climb above the extraction directory.
pub(super) fn clean_archive_path(raw: &[u8]) -> Option<Vec<OsString>> {
    let mut parts: Vec<OsString> = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop()?;
            }
            p => parts.push(OsStr::from_bytes(p).to_os_string()),
        }
    }
    Some(parts)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

impl Compression {
    fn from_magic(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b, 0x08]) {
            Compression::Gzip
        } else if head.starts_with(b"BZh") {
            Compression::Bzip2
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    fn program(self) -> Option<&'static str> {
        match self {
            Compression::Bzip2 => Some("bzip2"),
            Compression::Xz => Some("xz"),
            // gzip and zstd are decoded in process, with the crates layers use.
            Compression::None | Compression::Gzip | Compression::Zstd => None,
        }
    }
}

/// A decompressed view of an archive file; external decompressors are reaped (or killed) when done.
struct Decompressed {
    reader: Box<dyn Read>,
    child: Option<(Child, &'static str)>,
}

impl Decompressed {
    /// Reads `file` (the archive at `archive`, named in errors) decompressed as `kind`.
    fn open(file: File, archive: &Path, kind: Compression) -> Result<Decompressed, CopyError> {
        if let Some(program) = kind.program() {
            let mut child = Command::new(program)
                .arg("-dc")
                .stdin(Stdio::from(file))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|source| CopyError::DecompressorSpawn { archive: archive.to_path_buf(), program, source })?;
            let Some(stdout) = child.stdout.take() else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CopyError::DecompressorSpawn {
                    archive: archive.to_path_buf(),
                    program,
                    source: io::Error::other("no stdout pipe"),
                });
            };
            return Ok(Decompressed { reader: Box::new(stdout), child: Some((child, program)) });
        }
        let buffered = io::BufReader::new(file);
        let reader: Box<dyn Read> = match kind {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(buffered)
                    .map_err(|source| CopyError::Archive { archive: archive.to_path_buf(), source })?,
            ),
            _ => Box::new(buffered),
        };
        Ok(Decompressed { reader, child: None })
    }

    /// Drains the stream (so the decompressor is not blocked on a full pipe) and checks its exit status.
    fn finish(mut self, archive: &Path) -> Result<(), CopyError> {
        io::copy(&mut self.reader, &mut io::sink())
            .map_err(|source| CopyError::Archive { archive: archive.to_path_buf(), source })?;
        if let Some((mut child, program)) = self.child.take() {
            let status =
                child.wait().map_err(|source| CopyError::Archive { archive: archive.to_path_buf(), source })?;
            if !status.success() {
                return Err(CopyError::DecompressorFailed { archive: archive.to_path_buf(), program, status });
            }
        }
        Ok(())
    }
}

impl Drop for Decompressed {
    fn drop(&mut self) {
        if let Some((child, _)) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether `path` is a tar archive (possibly compressed), judged by content as Docker does.
pub(super) fn sniff_archive(src: &Root, e: &SelectedEntry) -> Result<Option<Compression>, CopyError> {
    let path = &src.path().join(&e.real);
    let mut head = [0u8; 6];
    let mut f = contenthash::open_entry(src, e)?;
    let n = read_full(&mut f, &mut head).map_err(io_err("read", path))?;
    let kind = Compression::from_magic(&head[..n]);
    f.seek(io::SeekFrom::Start(0)).map_err(io_err("read", path))?;
    let mut stream = Decompressed::open(f, path, kind)?;
    let mut block = [0u8; 512];
    // A decompression error means "not an archive" (Docker copies such files as they are).
    let got = read_full(&mut stream.reader, &mut block).unwrap_or(0);
    Ok((got == block.len() && is_tar_header(&block)).then_some(kind))
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A 512-byte block is a tar header when its checksum field matches the sum of its bytes (with the field itself
/// counted as spaces); historic tars summed signed bytes, so both sums are accepted.
pub(super) fn is_tar_header(block: &[u8; 512]) -> bool {
    let field = &block[148..156];
    let digits: Vec<u8> =
        field.iter().copied().skip_while(|&b| b == b' ').take_while(|b| (b'0'..=b'7').contains(b)).collect();
    if digits.is_empty() {
        return false;
    }
    let Ok(want) = u64::from_str_radix(&String::from_utf8_lossy(&digits), 8) else { return false };
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    want == unsigned || i64::try_from(want).is_ok_and(|w| w == signed)
}
