//! This process's tmp dir, and collecting the ones dead processes left: each tmp dir is owned by whoever holds the
//! lock file beside it, and a dir is removed only after every mount below it is detached.

use super::{Reaper, StoreError, io_err};
use rbuild_types::IoError;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// The lock file of the tmp dir `dir`: a sibling, `tmp/<pid>-<n>.lock`, taken *before* the dir is created and
/// released only after it is removed. A collector that finds the lock free knows the dir (if any) is dead; a dir
/// whose lock is held is never touched, and a dir is only ever created by the process holding its lock.
pub(super) fn tmp_lock_path(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

/// Whether the open file `f` is still the file at `path` (not unlinked or replaced since it was opened).
pub(super) fn still_linked(f: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), fs::metadata(path)) {
        (Ok(held), Ok(at_path)) => held.ino() == at_path.ino() && held.dev() == at_path.dev(),
        _ => false,
    }
}

/// Creates this process's tmp dir, locked for as long as the store is open.
pub(super) fn own_tmp_dir(tmp_root: &Path) -> Result<(PathBuf, File), StoreError> {
    for attempt in 0u32..1000 {
        let dir = tmp_root.join(format!("{}-{attempt}", std::process::id()));
        let lock_path = tmp_lock_path(&dir);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path, "create tmp lock"))?;
        if f.try_lock().is_err() {
            continue;
        }
        // A collector may have judged the file dead and unlinked it between our open and our lock: only a lock on
        // the file that is still at that path counts.
        if !still_linked(&f, &lock_path) {
            continue;
        }
        // We hold the lock, so whatever is at `dir` was left by a dead process with our pid.
        if dir.exists() {
            remove_unmounted(&dir);
        }
        match fs::create_dir(&dir) {
            Ok(()) => return Ok((dir, f)),
            Err(_) => continue,
        }
    }
    Err(StoreError::Io(IoError::new(
        "create a tmp dir in",
        tmp_root,
        io::Error::new(io::ErrorKind::AlreadyExists, "no free name"),
    )))
}

/// Removes tmp dirs left behind by processes that died (their lock is no longer held); returns them, and what
/// `reaper` stopped in them first.
pub(super) fn collect_dead_tmp(tmp_root: &Path, reaper: Reaper) -> (Vec<PathBuf>, Vec<String>) {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(tmp_root) else { return (found, Vec::new()) };
    let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    names.sort();
    // First find the dead (holding their locks), then let the reaper stop what runs there, then collect.
    let mut dead_locked = Vec::new();
    let mut dead_unlocked = Vec::new();
    for p in names {
        if p.extension().is_some_and(|e| e == "lock") {
            // A lock file: free means its process is gone. Remove the dir first, then the lock, while holding it.
            let Ok(f) = File::options().write(true).open(&p) else { continue };
            if f.try_lock().is_err() || !still_linked(&f, &p) {
                // Held, or unlinked by its owner after we opened it (a new owner may hold a new file there now).
                continue;
            }
            dead_locked.push((p, f));
        } else if !tmp_lock_path(&p).exists() {
            // A dir with no lock beside it was never owned under the current scheme (its creator holds the lock
            // before creating it and removes the dir before the lock), unless an older rbuild made it with the
            // lock inside: that one is alive while its inner lock is held.
            let alive = File::open(p.join(".lock")).is_ok_and(|f| f.try_lock().is_err());
            if !alive {
                dead_unlocked.push(p);
            }
        }
    }
    let mut dirs: Vec<PathBuf> = dead_locked.iter().map(|(p, _)| p.with_extension("")).collect();
    dirs.extend(dead_unlocked.iter().cloned());
    if dirs.is_empty() {
        return (found, Vec::new());
    }
    // Their files may belong to subordinate ids.
    rbuild_types::ids::wait();
    let reaped = if dirs.is_empty() { Vec::new() } else { reaper(&dirs) };
    for (lock, _held) in &dead_locked {
        let dir = lock.with_extension("");
        if dir.exists() {
            remove_unmounted(&dir);
            found.push(dir);
        }
        let _ = fs::remove_file(lock);
    }
    for p in dead_unlocked {
        if p.is_dir() {
            remove_unmounted(&p);
        } else {
            let _ = fs::remove_file(&p);
        }
        found.push(p);
    }
    (found, reaped)
}

/// Removes `dir` after detaching every mount at or below it. `remove_dir_all` does not stop at mount points: run
/// on a directory that still holds a mount (left by a process that was killed mid-step), it would delete through
/// the mount into whatever is mounted there. If any mount cannot be detached, the directory is left alone.
pub(super) fn remove_unmounted(dir: &Path) {
    for mount in mounts_under(dir) {
        let Ok(c) = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes()) else { return };
        // SAFETY: `c` is a valid NUL-terminated path; umount2 has no other preconditions.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            return;
        }
    }
    let _ = fs::remove_dir_all(dir);
}

/// Mount points at or below `dir`, deepest first, from this process's `/proc/self/mountinfo`.
pub(super) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    out.dedup();
    out
}

/// mountinfo writes space, tab, newline and backslash in paths as octal escapes (`\040`).
pub(super) fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
