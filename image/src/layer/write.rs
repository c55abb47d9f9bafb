//! Snapshot directory → layer tar.
//!
//! The walk is depth-first with siblings in byte order, so parents come before children and the output depends only
//! on the snapshot's content. Headers are ustar; whatever does not fit (long names and link targets, xattrs, huge
//! ids and sizes) goes into a PAX extended header in front of the entry, as Go's `archive/tar` does.

use super::{LayerError, LayerOptions};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use tar::{EntryType, Header};

/// Output buffer: tar writes 512-byte headers, which should not each become a write to a file or a compressor.
pub(super) const BUFFER: usize = 256 * 1024;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";
/// Width of the ustar name and linkname fields.
const NAME_FIELD: usize = 100;
/// Largest value of the 8-byte octal uid/gid fields and the 12-byte octal size field.
const MAX_ID: u64 = 0o7_777_777;
const MAX_SIZE: u64 = 0o77_777_777_777;

type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

pub(super) fn write_tar<W: Write>(dir: &Path, out: W, opts: &LayerOptions) -> Result<W, LayerError> {
    let mut walk = Walk { builder: tar::Builder::new(out), opts, links: HashMap::new() };
    let mut pending = sorted_children(dir, &[])?;
    pending.reverse();
    while let Some(rel) = pending.pop() {
        let path = dir.join(OsStr::from_bytes(&rel));
        let meta =
            fs::symlink_metadata(&path).map_err(|source| LayerError::ReadSnapshot { path: path.clone(), source })?;
        walk.entry(&rel, &path, &meta)?;
        if meta.is_dir() {
            let mut children = sorted_children(&path, &rel)?;
            children.reverse();
            pending.append(&mut children);
        }
    }
    walk.builder.into_inner().map_err(|source| LayerError::WriteTar { path: dir.to_path_buf(), source })
}

/// The children of `path` as layer-relative names (`prefix/child`), in byte order.
fn sorted_children(path: &Path, prefix: &[u8]) -> Result<Vec<Vec<u8>>, LayerError> {
    let read_err = |source| LayerError::ReadSnapshot { path: path.to_path_buf(), source };
    let mut names = Vec::new();
    for entry in fs::read_dir(path).map_err(read_err)? {
        let name = entry.map_err(read_err)?.file_name();
        let mut rel = Vec::with_capacity(prefix.len() + 1 + name.len());
        if !prefix.is_empty() {
            rel.extend_from_slice(prefix);
            rel.push(b'/');
        }
        rel.extend_from_slice(name.as_bytes());
        names.push(rel);
    }
    names.sort_unstable();
    Ok(names)
}

struct Walk<'o, W: Write> {
    builder: tar::Builder<W>,
    opts: &'o LayerOptions,
    /// (device, inode) of multiply-linked files already written → the name that holds the data.
    links: HashMap<(u64, u64), Vec<u8>>,
}

impl<W: Write> Walk<'_, W> {
    fn entry(&mut self, rel: &[u8], path: &Path, meta: &Metadata) -> Result<(), LayerError> {
        let kind = meta.file_type();
        let mtime = self.mtime(meta.mtime());
        if kind.is_char_device() && meta.rdev() == 0 {
            let name = sibling(rel, WHITEOUT_PREFIX);
            return self.append(path, &name, None, marker_header(mtime), &[], io::empty());
        }
        if kind.is_socket() {
            // Sockets cannot be archived; Docker and BuildKit skip them too.
            return Ok(());
        }
        let (xattrs, opaque) = read_xattrs(path)?;
        let mut header = Header::new_ustar();
        header.set_mode(meta.mode() & 0o7777);
        header.set_uid(u64::from(meta.uid()));
        header.set_gid(u64::from(meta.gid()));
        header.set_mtime(mtime);
        header.set_size(0);

        if !kind.is_dir() && meta.nlink() > 1 {
            match self.links.entry((meta.dev(), meta.ino())) {
                Entry::Occupied(first) => {
                    let first = first.get().clone();
                    header.set_entry_type(EntryType::Link);
                    return self.append(path, rel, Some(&first), header, &[], io::empty());
                }
                Entry::Vacant(slot) => {
                    slot.insert(rel.to_vec());
                }
            }
        }

        if kind.is_dir() {
            header.set_entry_type(EntryType::Directory);
            let mut name = rel.to_vec();
            name.push(b'/');
            self.append(path, &name, None, header, &xattrs, io::empty())?;
            if opaque {
                let mut marker = name;
                marker.extend_from_slice(OPAQUE_MARKER);
                self.append(path, &marker, None, marker_header(mtime), &[], io::empty())?;
            }
            Ok(())
        } else if kind.is_file() {
            let size = meta.len();
            header.set_entry_type(EntryType::Regular);
            header.set_size(size);
            let file = File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(|source| LayerError::ReadSnapshot { path: path.to_path_buf(), source })?;
            let mut data = ExactReader { file: &file, remaining: size, short: false };
            let written = self.append(path, rel, None, header, &xattrs, &mut data);
            if data.short {
                return Err(LayerError::Changed { path: path.to_path_buf(), expected: size });
            }
            written?;
            let now =
                file.metadata().map_err(|source| LayerError::ReadSnapshot { path: path.to_path_buf(), source })?;
            if now.len() != size {
                return Err(LayerError::Changed { path: path.to_path_buf(), expected: size });
            }
            Ok(())
        } else if kind.is_symlink() {
            let target =
                fs::read_link(path).map_err(|source| LayerError::ReadSnapshot { path: path.to_path_buf(), source })?;
            header.set_entry_type(EntryType::Symlink);
            self.append(path, rel, Some(target.as_os_str().as_bytes()), header, &xattrs, io::empty())
        } else if kind.is_fifo() {
            header.set_entry_type(EntryType::Fifo);
            self.append(path, rel, None, header, &xattrs, io::empty())
        } else {
            header.set_entry_type(if kind.is_char_device() { EntryType::Char } else { EntryType::Block });
            let rdev = meta.rdev();
            let dev_err = |source| LayerError::WriteTar { path: path.to_path_buf(), source };
            header.set_device_major(libc::major(rdev)).map_err(dev_err)?;
            header.set_device_minor(libc::minor(rdev)).map_err(dev_err)?;
            self.append(path, rel, None, header, &xattrs, io::empty())
        }
    }

    fn mtime(&self, mtime: i64) -> u64 {
        let clamped = self.opts.clamp_mtime.map_or(mtime, |epoch| mtime.min(epoch));
        // ustar cannot express times before 1970 without PAX, and such times carry no meaning in an image.
        u64::try_from(clamped).unwrap_or(0)
    }

    /// Appends one entry, preceded by a PAX header when the ustar header cannot hold everything.
    fn append(
        &mut self,
        path: &Path,
        name: &[u8],
        link: Option<&[u8]>,
        mut header: Header,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        data: impl Read,
    ) -> Result<(), LayerError> {
        let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let old = header.as_old_mut();
        if name.len() > NAME_FIELD {
            records.push((b"path".to_vec(), name.to_vec()));
        }
        set_field(&mut old.name, name);
        if let Some(link) = link {
            if link.len() > NAME_FIELD {
                records.push((b"linkpath".to_vec(), link.to_vec()));
            }
            set_field(&mut old.linkname, link);
        }
        let write_err = |source| LayerError::WriteTar { path: path.to_path_buf(), source };
        for (field, value) in [("uid", header.uid()), ("gid", header.gid())] {
            let value = value.map_err(write_err)?;
            if value > MAX_ID {
                records.push((field.as_bytes().to_vec(), value.to_string().into_bytes()));
            }
        }
        let size = header.size().map_err(write_err)?;
        if size > MAX_SIZE {
            records.push((b"size".to_vec(), size.to_string().into_bytes()));
        }
        for (key, value) in xattrs {
            records.push(([PAX_XATTR_PREFIX, key].concat(), value.clone()));
        }
        if !records.is_empty() {
            records.sort();
            let mut body = Vec::new();
            for (key, value) in &records {
                pax_record(&mut body, key, value);
            }
            let mut pax = Header::new_ustar();
            set_field(&mut pax.as_old_mut().name, &pax_name(name));
            pax.set_entry_type(EntryType::XHeader);
            pax.set_mode(0);
            pax.set_uid(0);
            pax.set_gid(0);
            pax.set_mtime(0);
            pax.set_size(body.len() as u64);
            pax.set_cksum();
            self.builder.append(&pax, body.as_slice()).map_err(write_err)?;
        }
        header.set_cksum();
        self.builder.append(&header, data).map_err(write_err)
    }
}

/// Header of a whiteout or opaque marker: an empty regular file owned by root with mode 0.
fn marker_header(mtime: u64) -> Header {
    let mut header = Header::new_ustar();
    header.set_entry_type(EntryType::Regular);
    header.set_mode(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    header.set_size(0);
    header
}

/// `dir/name` → `dir/<prefix>name`.
fn sibling(rel: &[u8], prefix: &[u8]) -> Vec<u8> {
    let split = rel.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
    [&rel[..split], prefix, &rel[split..]].concat()
}

/// Name of the PAX header of `name`: `dir/PaxHeaders.0/base`, like Go; readers ignore it.
fn pax_name(name: &[u8]) -> Vec<u8> {
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    let mut out = sibling(trimmed, b"PaxHeaders.0/");
    out.truncate(NAME_FIELD);
    out
}

/// Copies `value` into a zero-filled header field, truncated to the field (a full field needs no NUL).
fn set_field(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
    field[n..].fill(0);
}

/// One `"<len> <key>=<value>\n"` record, where `<len>` counts the whole record including its own digits.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = key.len() + value.len() + 3;
    let digits = |n: usize| n.to_string().len();
    let mut len = rest + digits(rest);
    if digits(len) != digits(rest) {
        len += 1;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// The xattrs to archive (sorted by name, without overlayfs' own) and whether the directory is opaque.
fn read_xattrs(path: &Path) -> Result<(Xattrs, bool), LayerError> {
    let read_err = |source| LayerError::ReadSnapshot { path: path.to_path_buf(), source };
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok((Vec::new(), false)),
        Err(e) => return Err(read_err(e)),
    };
    let mut xattrs = Vec::new();
    let mut opaque = false;
    for name in names {
        let Some(value) = xattr::get(path, &name).map_err(read_err)? else { continue };
        if let Some(overlay) = rbuild_cache::overlay_xattr::strip_overlay_prefix(name.as_bytes()) {
            match overlay {
                b"opaque" => opaque = value == b"y",
                b"metacopy" | b"redirect" => {
                    return Err(LayerError::OverlayFeature {
                        path: path.to_path_buf(),
                        xattr: name.to_string_lossy().into_owned(),
                    });
                }
                _ => {}
            }
            continue;
        }
        xattrs.push((name.as_bytes().to_vec(), value));
    }
    xattrs.sort();
    Ok((xattrs, opaque))
}

/// Reads exactly the size written in the header; a file that shrank would otherwise corrupt the archive.
struct ExactReader<'f> {
    file: &'f File,
    remaining: u64,
    short: bool,
}

impl Read for ExactReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            self.short = true;
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being archived"));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        for value_len in 0..1200 {
            let value = vec![b'x'; value_len];
            let mut out = Vec::new();
            pax_record(&mut out, b"path", &value);
            let (len, _) = std::str::from_utf8(&out[..out.iter().position(|&b| b == b' ').unwrap()])
                .map(|s| (s.parse::<usize>().unwrap(), ()))
                .unwrap();
            assert_eq!(len, out.len(), "value length {value_len}");
        }
    }

    #[test]
    fn whiteout_and_pax_names() {
        assert_eq!(sibling(b"a/b/c", b".wh."), b"a/b/.wh.c");
        assert_eq!(sibling(b"top", b".wh."), b".wh.top");
        assert_eq!(pax_name(b"a/dir/"), b"a/PaxHeaders.0/dir");
        assert_eq!(pax_name(&[b'x'; 300]).len(), NAME_FIELD);
    }
}
