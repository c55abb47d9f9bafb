//! Mounting a snapshot's layers as one overlayfs root, so a RUN step sees the merged tree and its changes land in
//! a fresh upper directory that *is* the layer diff.
//!
//! The classic `mount(2)` call takes all options as one string of at most a page (4096 bytes), which an image
//! with a few dozen layers stored under a long root path overflows. So the mount is made with the new mount API
//! (`fsopen`/`fsconfig`/`fsmount`/`move_mount`) and one `lowerdir+` parameter per layer (Linux 6.8+): there is
//! no total length limit then, only overlayfs's own limit of [`MAX_LOWERS`] layers and the `fsconfig` limit of
//! 255 bytes per path. On kernels without `fsopen` or without `lowerdir+`, or when a path is longer than 255
//! bytes, the classic call is used, and it fails with [`OverlayError::OptionsTooLong`] when the option string
//! does not fit in a page. The old trick of mounting with relative paths after a `chdir` is not used: `chdir`
//! changes the working directory of every thread of this (multithreaded) process.
//!
//! Options: `index=off`, `redirect_dir=off` and `metacopy=off`, as Docker and containerd use them, so that the
//! upper directory is a self-contained diff: a renamed directory is copied up whole instead of being recorded as a
//! redirect xattr that points into a lower layer, and no file is a metadata-only copy whose data stays below.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// overlayfs refuses more lower layers than this (`OVL_MAX_STACK`).
pub const MAX_LOWERS: usize = 500;

/// Longest value `fsconfig(FSCONFIG_SET_STRING)` accepts, in bytes (the kernel copies at most 256 with the NUL).
pub const MAX_FSCONFIG_VALUE: usize = 255;

/// Longest option string the classic `mount(2)` call accepts: one page, including the trailing NUL.
pub const MAX_LEGACY_OPTIONS: usize = 4095;

/// The options every rbuild overlay is mounted with, see the module docs.
const FIXED_OPTIONS: [(&str, &str); 3] = [("index", "off"), ("redirect_dir", "off"), ("metacopy", "off")];

/// [`FIXED_OPTIONS`], except that `userxattr` (in a user namespace) conflicts with `redirect_dir=off` (which
/// still follows redirects) and needs `nofollow`: redirects are then neither made nor followed.
fn fixed_options() -> [(&'static str, &'static str); 3] {
    let mut options = FIXED_OPTIONS;
    if rbuild_cache::overlay_xattr::user_xattrs() {
        options[1] = ("redirect_dir", "nofollow");
    }
    options
}

// Values from <linux/mount.h>; not every libc version exports them.
const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 0x1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// Errors of mounting and unmounting overlays.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OverlayError {
    #[error("overlay path {path} must be absolute")]
    NotAbsolute { path: PathBuf },
    #[error("overlay path {path} contains a NUL byte or a newline")]
    BadPath { path: PathBuf },
    #[error("overlayfs takes at most {MAX_LOWERS} lower layers, got {count}")]
    TooManyLowers { count: usize },
    #[error(
        "overlay options for {target} are {len} bytes, more than the {MAX_LEGACY_OPTIONS} mount(2) takes, and this \
         kernel has no fsconfig lowerdir+ (Linux 6.8+) or a path is longer than {MAX_FSCONFIG_VALUE} bytes"
    )]
    OptionsTooLong { target: PathBuf, len: usize },
    #[error("creating directory {path} for the overlay")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting overlay at {target}: {step} failed{}", kernel_detail(.kernel_log))]
    Mount {
        target: PathBuf,
        step: String,
        /// Messages the kernel logged on the filesystem context, e.g. "overlapping lowerdir path".
        kernel_log: Vec<String>,
        #[source]
        source: io::Error,
    },
    #[error("unmounting overlay at {target}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn kernel_detail(log: &[String]) -> String {
    if log.is_empty() { String::new() } else { format!(" ({})", log.join("; ")) }
}

/// A mounted overlay; unmounted when dropped (lazily detached if it is busy).
#[derive(Debug)]
pub struct OverlayMount {
    target: PathBuf,
    mounted: bool,
    /// The empty lower layer of a mount without lowers, removed after the unmount.
    empty_lower: Option<tempfile::TempDir>,
}

impl OverlayMount {
    /// The merged directory.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Unmounts now. A busy mount is detached lazily (it disappears when its last user goes away) and counts as
    /// unmounted; any other failure is returned.
    pub fn unmount(mut self) -> Result<(), OverlayError> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<(), OverlayError> {
        if !self.mounted {
            return Ok(());
        }
        let result = match nix::mount::umount2(&self.target, MntFlags::empty()) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EBUSY) => {
                tracing::warn!(target = %self.target.display(), "overlay busy, detaching lazily");
                nix::mount::umount2(&self.target, MntFlags::MNT_DETACH)
            }
            Err(err) => Err(err),
        };
        self.mounted = false;
        result.map_err(|errno| OverlayError::Unmount { target: self.target.clone(), source: errno.into() })?;
        if let Some(dir) = self.empty_lower.take() {
            let path = dir.path().to_path_buf();
            dir.close().map_err(|source| OverlayError::Unmount { target: path, source })?;
        }
        Ok(())
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        if let Err(err) = self.unmount_inner() {
            tracing::warn!(error = %err, "unmount failed in drop, detaching");
            if let Err(err) = nix::mount::umount2(&self.target, MntFlags::MNT_DETACH) {
                tracing::warn!(target = %self.target.display(), error = %err, "lazy detach failed");
            }
        }
    }
}

/// Mounts an overlay of `lowers` (top-most first) with `upper` and `work` (same filesystem) at `target`.
///
/// `upper`, `work` and `target` are created if missing. Without lowers, an empty directory next to `work` is used
/// as the only lower layer (overlayfs needs one) and removed with the mount.
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<OverlayMount, OverlayError> {
    let lowers = distinct_lowers(lowers);
    let lowers = lowers.as_slice();
    if lowers.len() > MAX_LOWERS {
        return Err(OverlayError::TooManyLowers { count: lowers.len() });
    }
    for path in lowers.iter().map(PathBuf::as_path).chain([upper, work, target]) {
        check_path(path)?;
    }
    for dir in [upper, work, target] {
        std::fs::create_dir_all(dir).map_err(|source| OverlayError::CreateDir { path: dir.to_path_buf(), source })?;
    }
    let empty_lower = if lowers.is_empty() { Some(make_empty_lower(work)?) } else { None };
    let lowers: Vec<PathBuf> = match &empty_lower {
        Some(dir) => vec![dir.path().to_path_buf()],
        None => lowers.to_vec(),
    };
    let params = overlay_params(&lowers, upper, work);
    let use_new_api = params.iter().all(|(_, value)| value.len() <= MAX_FSCONFIG_VALUE);
    let mounted = if use_new_api {
        match mount_with_fsconfig(&params, target) {
            Err(NewApiFailure::Unsupported) => mount_legacy(&lowers, upper, work, target),
            Err(NewApiFailure::Failed(err)) => Err(err),
            Ok(()) => Ok(()),
        }
    } else {
        mount_legacy(&lowers, upper, work, target)
    };
    mounted?;
    Ok(OverlayMount { target: target.to_path_buf(), mounted: true, empty_lower })
}

/// `lowers` (top-most first) with every repeated layer kept only at its top-most place. Overlayfs refuses a
/// directory that appears twice (ELOOP, "Too many levels of symbolic links"), and two steps that add the same
/// files (`COPY a /a` twice) have the same snapshot. Dropping the lower copy changes nothing: everything that layer
/// sets, deletes or makes opaque, the same layer higher up sets, deletes or makes opaque again over all of it.
fn distinct_lowers(lowers: &[PathBuf]) -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    lowers.iter().filter(|l| seen.insert(l.as_path())).cloned().collect()
}

fn check_path(path: &Path) -> Result<(), OverlayError> {
    if !path.is_absolute() {
        return Err(OverlayError::NotAbsolute { path: path.to_path_buf() });
    }
    if path.as_os_str().as_bytes().iter().any(|b| *b == 0 || *b == b'\n') {
        return Err(OverlayError::BadPath { path: path.to_path_buf() });
    }
    Ok(())
}

fn make_empty_lower(work: &Path) -> Result<tempfile::TempDir, OverlayError> {
    let parent = work.parent().unwrap_or(work);
    let dir = tempfile::Builder::new()
        .prefix(".rbuild-empty-lower-")
        .tempdir_in(parent)
        .map_err(|source| OverlayError::CreateDir { path: parent.join(".rbuild-empty-lower-*"), source })?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(|source| OverlayError::CreateDir { path: dir.path().to_path_buf(), source })?;
    Ok(dir)
}

/// The `fsconfig` parameters of an overlay, in the order they are set: every lower top-most first, then the
/// upper and work directories, then the fixed options.
pub fn overlay_params(lowers: &[PathBuf], upper: &Path, work: &Path) -> Vec<(String, Vec<u8>)> {
    let mut params: Vec<(String, Vec<u8>)> =
        lowers.iter().map(|l| ("lowerdir+".to_string(), l.as_os_str().as_bytes().to_vec())).collect();
    // overlayfs unescapes `upperdir` and `workdir` values (but not `lowerdir+` ones).
    let mut escaped_upper = Vec::new();
    push_escaped(&mut escaped_upper, upper);
    let mut escaped_work = Vec::new();
    push_escaped(&mut escaped_work, work);
    params.push(("upperdir".to_string(), escaped_upper));
    params.push(("workdir".to_string(), escaped_work));
    for (key, value) in fixed_options() {
        params.push((key.to_string(), value.as_bytes().to_vec()));
    }
    // A flag (no value): in a user namespace overlayfs keeps its metadata in `user.overlay.*`.
    if rbuild_cache::overlay_xattr::user_xattrs() {
        params.push(("userxattr".to_string(), Vec::new()));
    }
    params
}

/// The option string of the classic `mount(2)` call. `:`, `,` and `\` in paths are escaped with a backslash, as
/// overlayfs's option parser expects.
pub fn legacy_options(lowers: &[PathBuf], upper: &Path, work: &Path) -> Vec<u8> {
    let escaped = push_escaped;
    let mut out = b"lowerdir=".to_vec();
    for (i, lower) in lowers.iter().enumerate() {
        if i > 0 {
            out.push(b':');
        }
        escaped(&mut out, lower);
    }
    out.extend_from_slice(b",upperdir=");
    escaped(&mut out, upper);
    out.extend_from_slice(b",workdir=");
    escaped(&mut out, work);
    for (key, value) in fixed_options() {
        out.extend_from_slice(format!(",{key}={value}").as_bytes());
    }
    if rbuild_cache::overlay_xattr::user_xattrs() {
        out.extend_from_slice(b",userxattr");
    }
    out
}

/// Appends `path` with `:`, `,` and `\` escaped by a backslash.
fn push_escaped(out: &mut Vec<u8>, path: &Path) {
    for &b in path.as_os_str().as_bytes() {
        if matches!(b, b':' | b',' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
}

fn mount_legacy(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<(), OverlayError> {
    let data = legacy_options(lowers, upper, work);
    if data.len() > MAX_LEGACY_OPTIONS {
        return Err(OverlayError::OptionsTooLong { target: target.to_path_buf(), len: data.len() });
    }
    let data = OsStr::from_bytes(&data);
    nix::mount::mount(Some("overlay"), target, Some("overlay"), MsFlags::empty(), Some(data)).map_err(|errno| {
        OverlayError::Mount {
            target: target.to_path_buf(),
            step: "mount(2)".to_string(),
            kernel_log: Vec::new(),
            source: errno.into(),
        }
    })
}

enum NewApiFailure {
    /// The kernel lacks the new mount API or `lowerdir+`: retry with `mount(2)`.
    Unsupported,
    Failed(OverlayError),
}

fn cstring(bytes: &[u8]) -> Result<CString, io::Error> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn mount_with_fsconfig(params: &[(String, Vec<u8>)], target: &Path) -> Result<(), NewApiFailure> {
    let failed = |step: String, fd: Option<&OwnedFd>, source: io::Error| {
        NewApiFailure::Failed(OverlayError::Mount {
            target: target.to_path_buf(),
            step,
            kernel_log: fd.map(read_fs_context_log).unwrap_or_default(),
            source,
        })
    };
    let fstype = c"overlay";
    // SAFETY: fsopen takes a NUL-terminated name and flags and returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) };
    if raw < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOSYS) => Err(NewApiFailure::Unsupported),
            _ => Err(failed("fsopen".to_string(), None, err)),
        };
    }
    // SAFETY: `raw` is a freshly opened descriptor that nothing else owns.
    let fs_fd = unsafe { OwnedFd::from_raw_fd(raw as libc::c_int) };

    for (key, value) in params {
        let key_c = cstring(key.as_bytes()).map_err(|e| failed(format!("fsconfig {key}"), None, e))?;
        let value_c = cstring(value).map_err(|e| failed(format!("fsconfig {key}"), None, e))?;
        // An empty value is a flag (`userxattr`), set without a value.
        let (cmd, value_ptr) = if value.is_empty() {
            (FSCONFIG_SET_FLAG, std::ptr::null())
        } else {
            (FSCONFIG_SET_STRING, value_c.as_ptr())
        };
        // SAFETY: both strings are NUL-terminated and outlive the call (or the value is null for a flag); aux is
        // unused for SET_STRING and SET_FLAG.
        let rc = unsafe {
            libc::syscall(libc::SYS_fsconfig, fs_fd.as_raw_fd(), cmd, key_c.as_ptr(), value_ptr, 0 as libc::c_int)
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if key == "lowerdir+" && err.raw_os_error() == Some(libc::EINVAL) {
                let log = read_fs_context_log(&fs_fd);
                // Kernels before 6.8 reject the parameter name itself; a bad path is a real error.
                if log.is_empty() || log.iter().any(|l| l.contains("nknown parameter")) {
                    return Err(NewApiFailure::Unsupported);
                }
                return Err(NewApiFailure::Failed(OverlayError::Mount {
                    target: target.to_path_buf(),
                    step: format!("fsconfig {key}={}", String::from_utf8_lossy(value)),
                    kernel_log: log,
                    source: err,
                }));
            }
            return Err(failed(format!("fsconfig {key}={}", String::from_utf8_lossy(value)), Some(&fs_fd), err));
        }
    }

    // SAFETY: CMD_CREATE takes no key or value.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs_fd.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0 as libc::c_int,
        )
    };
    if rc < 0 {
        return Err(failed("creating the overlay superblock".to_string(), Some(&fs_fd), io::Error::last_os_error()));
    }

    // SAFETY: fsmount takes the context fd, flags and mount attributes, and returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_fsmount, fs_fd.as_raw_fd(), FSMOUNT_CLOEXEC, 0 as libc::c_uint) };
    if raw < 0 {
        return Err(failed("fsmount".to_string(), Some(&fs_fd), io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a freshly opened descriptor that nothing else owns.
    let mnt_fd = unsafe { OwnedFd::from_raw_fd(raw as libc::c_int) };

    let target_c = cstring(target.as_os_str().as_bytes()).map_err(|e| failed("move_mount".to_string(), None, e))?;
    // SAFETY: the empty path with F_EMPTY_PATH names `mnt_fd` itself; the target is NUL-terminated.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt_fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(failed("move_mount".to_string(), None, io::Error::last_os_error()));
    }
    Ok(())
}

/// Drains the messages the kernel queued on a filesystem context (each read returns one, e.g. "e overlay: ...").
fn read_fs_context_log(fd: &OwnedFd) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    // The kernel keeps at most 8 messages; the bound only guards against a surprise.
    for _ in 0..16 {
        // SAFETY: reads into a buffer we own, of the length we pass.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        let len = usize::try_from(n).unwrap_or(0).min(buf.len());
        out.push(String::from_utf8_lossy(&buf[..len]).trim_end().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_escape_upper_and_work_only() {
        let params = overlay_params(&[PathBuf::from("/l:1")], Path::new("/u:1"), Path::new("/w,\\"));
        let values: Vec<String> = params.iter().take(3).map(|(_, v)| String::from_utf8_lossy(v).into_owned()).collect();
        assert_eq!(values, ["/l:1", "/u\\:1", "/w\\,\\\\"]);
    }

    #[test]
    fn params_keep_lower_order_and_fixed_options() {
        let lowers = vec![PathBuf::from("/s/top"), PathBuf::from("/s/mid"), PathBuf::from("/s/base")];
        let params = overlay_params(&lowers, Path::new("/u"), Path::new("/w"));
        let rendered: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v))).collect();
        assert_eq!(
            rendered,
            [
                "lowerdir+=/s/top",
                "lowerdir+=/s/mid",
                "lowerdir+=/s/base",
                "upperdir=/u",
                "workdir=/w",
                "index=off",
                "redirect_dir=off",
                "metacopy=off"
            ]
        );
    }

    #[test]
    fn legacy_options_escape_separators() {
        let lowers = vec![PathBuf::from("/a:b"), PathBuf::from("/c,d")];
        let data = legacy_options(&lowers, Path::new("/u\\x"), Path::new("/w"));
        assert_eq!(
            String::from_utf8_lossy(&data),
            "lowerdir=/a\\:b:/c\\,d,upperdir=/u\\\\x,workdir=/w,index=off,redirect_dir=off,metacopy=off"
        );
    }

    #[test]
    fn rejects_relative_paths_and_too_many_lowers() {
        let err = mount_overlay(&[PathBuf::from("rel")], Path::new("/u"), Path::new("/w"), Path::new("/t"))
            .expect_err("relative");
        assert!(matches!(err, OverlayError::NotAbsolute { ref path } if path == Path::new("rel")), "{err:?}");
        let many: Vec<PathBuf> = (0..=MAX_LOWERS).map(|i| PathBuf::from(format!("/l{i}"))).collect();
        let err = mount_overlay(&many, Path::new("/u"), Path::new("/w"), Path::new("/t")).expect_err("too many");
        assert!(matches!(err, OverlayError::TooManyLowers { count } if count == MAX_LOWERS + 1), "{err:?}");
    }

    /// Both mount paths, with separator characters in every path (root only: skipped otherwise).
    #[test]
    fn both_mount_apis_handle_separators_in_paths() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED both_mount_apis_handle_separators_in_paths: needs root");
            return;
        }
        for legacy in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let base = dir.path().join("odd:dir,name\\x");
            let (top, bottom) = (base.join("top:1"), base.join("bottom,2"));
            for (layer, content) in [(&top, "top"), (&bottom, "bottom")] {
                std::fs::create_dir_all(layer).expect("mkdir");
                std::fs::write(layer.join("f"), content).expect("write");
                std::fs::write(layer.join(content), "").expect("write");
            }
            let (upper, work, target) = (base.join("up:per"), base.join("wo,rk"), base.join("mer:ged"));
            let lowers = vec![top.clone(), bottom.clone()];
            let mount = if legacy {
                for d in [&upper, &work, &target] {
                    std::fs::create_dir_all(d).expect("mkdir");
                }
                mount_legacy(&lowers, &upper, &work, &target).expect("legacy mount");
                OverlayMount { target: target.clone(), mounted: true, empty_lower: None }
            } else {
                mount_overlay(&lowers, &upper, &work, &target).expect("fsconfig mount")
            };
            assert_eq!(std::fs::read_to_string(target.join("f")).expect("read"), "top", "legacy={legacy}");
            assert!(target.join("bottom").exists() && target.join("top").exists(), "legacy={legacy}");
            std::fs::write(target.join("new"), "n").expect("write");
            mount.unmount().expect("unmount");
            assert!(upper.join("new").is_file(), "legacy={legacy}");
        }
    }

    #[test]
    fn legacy_mount_refuses_options_longer_than_a_page() {
        let lowers: Vec<PathBuf> = (0..200).map(|i| PathBuf::from(format!("/store/snapshots/{i:060}"))).collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let err =
            mount_legacy(&lowers, &dir.path().join("u"), &dir.path().join("w"), dir.path()).expect_err("too long");
        assert!(matches!(err, OverlayError::OptionsTooLong { len, .. } if len > MAX_LEGACY_OPTIONS), "{err:?}");
    }
}
