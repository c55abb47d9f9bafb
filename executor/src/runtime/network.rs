//! The private network namespace of a build and the user-mode network stack that connects it outward.
//!
//! Why: in the host's network namespace a RUN step holds `CAP_NET_RAW` there, so it can sniff loopback traffic (a
//! concurrent push's `Authorization` header), reach every service bound to host loopback, and connect to the host's
//! abstract unix sockets (they are per network namespace). Docker's builder gives each RUN its own namespace; so
//! does rbuild, by default.
//!
//! One namespace per build, made lazily by the first RUN that needs it and joined by every later one (runc's
//! `linux.namespaces[].path`): a RUN then costs what it cost before, instead of a namespace plus a stack start each
//! time. RUN steps of one build share it, as they share everything else of the build.
//!
//! The stack is `slirp4netns`, not `pasta`. Measured on this project's Debian 12 machine (passt 2023-03-09,
//! slirp4netns 1.2.0, 300 MB over HTTP from a server in another namespace, median of 5): start 36 ms vs 76 ms,
//! throughput 580 MB/s vs 680 MB/s, 3.4 MB vs 30 MB resident. Both start once per build and either is far faster
//! than what builds download from; what decided is containment: this pasta cannot drop to `nobody` when it joins
//! a namespace as root ("Couldn't switch to pasta namespaces") and keeps `CAP_SYS_ADMIN`, and forwards host ports
//! both ways unless told not to, while slirp4netns runs sandboxed (`--enable-sandbox`: empty root, no
//! capabilities; `--enable-seccomp`), refuses the gateway-to-host-loopback mapping (`--disable-host-loopback`),
//! and exits by itself when rbuild dies (`--exit-fd`: the read end of a pipe only rbuild holds the write end of).
//! The namespace sees `10.0.2.100/24`, gateway `10.0.2.2`, DNS forwarder [`NAMESERVER`] (which reads the host's
//! `/etc/resolv.conf`, so a loopback resolver such as systemd-resolved's works too).
//!
//! Cleanup: [`NetworkStack`]'s drop kills the stack, detaches the namespace file and removes it. The file lives in
//! a directory under the store's per-process tmp dir, so when rbuild is killed the next rbuild's collection of dead
//! tmp dirs detaches and removes it; the stack is already gone then (`--exit-fd`).
//!
//! The namespace is created without forking the (multithreaded) rbuild: a short-lived thread `unshare`s its own
//! network namespace (allowed per thread) and bind-mounts `/proc/thread-self/ns/net` onto the file.

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// How long slirp4netns may take to configure the namespace (it takes tens of milliseconds).
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The DNS forwarder slirp4netns offers inside the namespace.
pub const NAMESERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 3));

/// Failures to set up a build's network.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    #[error(
        "slirp4netns not found on PATH ({path}); RUN steps need it for their network (Debian: apt-get install \
         slirp4netns), or build with --network none"
    )]
    SlirpNotFound { path: String },
    #[error("creating the network namespace file {path}")]
    CreateFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating a network namespace")]
    Unshare {
        #[source]
        source: nix::Error,
    },
    #[error("binding the network namespace to {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("the thread creating the network namespace panicked")]
    Thread,
    #[error("starting {slirp}")]
    Spawn {
        slirp: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("slirp4netns exited before its network was up: {log}")]
    NotReady { log: String },
    #[error(
        "rootless RUN steps need /dev/net/tun for their network, and this user may not open it (as root: chmod 0666 \
         /dev/net/tun, as Debian's udev rules make it), or build with --network none"
    )]
    TunNotAccessible,
}

/// A network namespace bound to a file, connected outward by a running slirp4netns. Dropping it tears both down.
#[derive(Debug)]
pub struct NetworkStack {
    dir: PathBuf,
    netns: PathBuf,
    child: Option<Child>,
    /// The write end of slirp4netns' `--exit-fd`: closing it (or rbuild dying) stops the stack.
    exit: Option<io::PipeWriter>,
    mounted: bool,
}

impl NetworkStack {
    /// Starts a stack with the `slirp4netns` on `PATH`, keeping its files in `dir` (which must exist and belong to
    /// this process alone, e.g. a store tmp dir).
    pub fn start(dir: &Path) -> Result<NetworkStack, NetworkError> {
        let slirp =
            crate::runtime::find_executable("slirp4netns").map_err(|path| NetworkError::SlirpNotFound { path })?;
        // Root of a user namespace opens devices with the host's permission bits for "other".
        if crate::userns::in_user_namespace()
            && nix::unistd::access("/dev/net/tun", nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK)
                .is_err()
        {
            return Err(NetworkError::TunNotAccessible);
        }
        NetworkStack::start_with(&slirp, dir)
    }

    /// Starts a stack with the given `slirp4netns` binary.
    pub fn start_with(slirp: &Path, dir: &Path) -> Result<NetworkStack, NetworkError> {
        let netns = dir.join("netns");
        std::fs::File::create(&netns).map_err(|source| NetworkError::CreateFile { path: netns.clone(), source })?;
        // From here on, drop undoes whatever was done.
        let mut stack = NetworkStack { dir: dir.to_path_buf(), netns, child: None, exit: None, mounted: false };
        let target = stack.netns.clone();
        std::thread::spawn(move || bind_new_netns(&target)).join().map_err(|_| NetworkError::Thread)??;
        stack.mounted = true;

        let spawn_err = |source| NetworkError::Spawn { slirp: slirp.to_path_buf(), source };
        let (exit_r, exit_w) = io::pipe().map_err(spawn_err)?;
        let (mut ready_r, ready_w) = io::pipe().map_err(spawn_err)?;
        let log_path = dir.join("slirp4netns.log");
        let log = std::fs::File::create(&log_path).map_err(spawn_err)?;
        let log2 = log.try_clone().map_err(spawn_err)?;
        let (exit_fd, ready_fd) = (exit_r.as_raw_fd(), ready_w.as_raw_fd());
        let mut command = Command::new(slirp);
        command
            .args(["--configure", "--mtu=65520", "--disable-host-loopback", "--enable-sandbox", "--enable-seccomp"])
            .arg(format!("--exit-fd={exit_fd}"))
            .arg(format!("--ready-fd={ready_fd}"))
            .args(["--netns-type=path"])
            .arg(&stack.netns)
            .arg("tap0")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a terminal's Ctrl-C goes to rbuild, which stops containers first, then this.
            .process_group(0);
        // SAFETY: between fork and exec only `fcntl`, which is async-signal-safe, runs; it clears close-on-exec on
        // the two pipe ends slirp4netns is told about (every other descriptor of rbuild stays close-on-exec).
        unsafe {
            command.pre_exec(move || {
                for fd in [exit_fd, ready_fd] {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let spawned = command.spawn().map_err(spawn_err);
        // The child has its copies; ours of its ends must go, so that its death reads as EOF on `ready_r`.
        drop(exit_r);
        drop(ready_w);
        stack.child = Some(spawned?);
        stack.exit = Some(exit_w);

        // slirp4netns writes "1" once the interface is configured, or exits (EOF) on failure; one that does neither
        // within READY_TIMEOUT is given up on (and killed by the drop).
        let mut pollfd = libc::pollfd { fd: ready_r.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let timeout_ms = i32::try_from(READY_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `pollfd` is one valid, initialised entry for an fd this function owns.
        let polled = unsafe { libc::poll(&mut pollfd, 1, timeout_ms) };
        let mut byte = [0u8; 1];
        let ready = polled > 0 && matches!(ready_r.read(&mut byte), Ok(1));
        if !ready {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let mut log =
                log.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("; ");
            if polled == 0 {
                log = format!("no sign of life within {}s; {log}", READY_TIMEOUT.as_secs());
            }
            return Err(NetworkError::NotReady { log });
        }
        tracing::debug!(netns = %stack.netns.display(), "network stack up");
        Ok(stack)
    }

    /// The namespace's file, for runc's `linux.namespaces[].path`.
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    /// How a container joins this network.
    pub fn mode(&self) -> crate::runtime::NetworkMode {
        crate::runtime::NetworkMode::Join { netns: self.netns.clone(), nameserver: Some(NAMESERVER) }
    }

    /// The stack's process id (for tests and diagnostics).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// Runs on a thread of its own: moves that thread into a new network namespace and binds the namespace to `target`.
fn bind_new_netns(target: &Path) -> Result<(), NetworkError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| NetworkError::Unshare { source })?;
    nix::mount::mount(
        Some("/proc/thread-self/ns/net"),
        target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|source| NetworkError::Bind { path: target.to_path_buf(), source })
}

impl Drop for NetworkStack {
    fn drop(&mut self) {
        self.exit.take();
        if let Some(mut child) = self.child.take() {
            if let Err(err) = child.kill() {
                tracing::debug!(error = %err, "killing slirp4netns");
            }
            if let Err(err) = child.wait() {
                tracing::warn!(error = %err, "waiting for slirp4netns");
            }
        }
        if self.mounted
            && let Err(err) = nix::mount::umount2(&self.netns, nix::mount::MntFlags::MNT_DETACH)
        {
            tracing::warn!(path = %self.netns.display(), error = %err, "detaching the build's network namespace");
            // Leave the directory: removing files under a mount point that is still there would be wrong.
            return;
        }
        if let Err(err) = std::fs::remove_dir_all(&self.dir) {
            tracing::debug!(path = %self.dir.display(), error = %err, "removing the network directory");
        }
    }
}
