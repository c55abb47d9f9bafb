//! Running one process in a container with `runc`.
//!
//! rbuild is a multithreaded tokio process, so it never clones itself into namespaces: it writes an OCI bundle and
//! starts `runc run` as an ordinary child process, the runtime BuildKit uses, which brings Docker-equivalent isolation
//! (see [`spec`], and [`seccomp`] for the syscall filter) from a well-kept project. [`Runtime::run`] blocks; callers on
//! an async runtime run it on a blocking thread.
//!
//! Output: runc's stdout and stderr share one pipe and every line is handed to a callback as it arrives (progress
//! display) while the last [`TAIL_LINES`] are kept for the error message of a failed step. Lines of one stream
//! keep their order; between stdout and stderr the order is only approximate, because `runc run` copies the
//! container's two streams through its own pipes separately (as with `docker build`). runc's *own* messages go to a JSON log file in the bundle (`--log`), not
//! into that stream: an `error` entry there means the process never started (bad cwd, missing executable, mount
//! failure) and becomes [`RuntimeError::Start`]; otherwise runc's exit code is the process's.
//!
//! Cleanup is unconditional (a drop guard): `runc delete -f`, removing mount-point stubs (see [`stubs`]) and
//! deleting the bundle directory, whether the step succeeded, failed, or the callback panicked.
//!
//! Each container gets its own cgroup (runc's default: one named by the container id, under rbuild's own), where
//! the build's [`ContainerOptions`] limits apply — including a default pids limit, so a fork bomb stops there.
//! crun is driven the same way (see [`kind`]); on a hybrid cgroup host it is started in a mount namespace without
//! the v2 hierarchy and given the same cgroup placement explicitly ([`cgroups::V1View`]).
//!
//! Not done here: AppArmor and cancellation by timeout.

pub mod cgroups;
pub mod kind;
pub mod network;
pub mod options;
pub mod privileged;
pub mod seccomp;
pub mod spec;
pub mod stubs;

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::cancel::{Cancelled, Canceller, Registration};
use crate::user::{ResolvedUser, resolve_in_root};
pub use kind::RuntimeKind;
pub use options::ContainerOptions;
use stubs::MountStubs;

/// How many lines of output [`RunResult::tail`] keeps.
pub const TAIL_LINES: usize = 20;

/// A line longer than this is passed on in pieces, so a process printing without newlines cannot exhaust memory.
const MAX_LINE: usize = 64 * 1024;

/// The network a container sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkMode {
    /// The host's network namespace (`RUN --network=host`, with the `network.host` entitlement).
    Host,
    /// A fresh network namespace with only a loopback interface (`RUN --network=none`).
    None,
    /// An existing network namespace, bound to the file `netns` (the build's [`network::NetworkStack`], the
    /// default). With a `nameserver`, the container's `/etc/resolv.conf` names it instead of the host's servers.
    Join { netns: PathBuf, nameserver: Option<std::net::IpAddr> },
}

/// A host path bound into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: String,
    pub readonly: bool,
}

/// An empty tmpfs mounted into the container (`RUN --mount=type=tmpfs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsMount {
    /// Absolute path inside the container.
    pub destination: String,
    /// Size limit in bytes; the kernel's default (half of RAM) if `None`.
    pub size: Option<u64>,
}

/// What to run and where.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The merged overlay directory (a mount point); used in place, never copied. Two concurrent runs must not
    /// share one rootfs: each creates and removes mount-point stubs in it.
    pub rootfs: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// Absolute working directory; created (owned by `user`) if it does not exist, as BuildKit does.
    pub cwd: String,
    pub user: ResolvedUser,
    /// Empty: keep the host's name.
    pub hostname: String,
    pub network: NetworkMode,
    pub mounts: Vec<BindMount>,
    pub tmpfs: Vec<TmpfsMount>,
    /// Where to write this run's bundle instead of the runtime's bundle directory: a tmpfs when the config holds
    /// a secret (an `env` secret is in `config.json`), so it never reaches a disk.
    pub bundle_dir: Option<PathBuf>,
    /// Limits, extra hosts, `/dev/shm` size and rlimits (the build's flags).
    pub options: ContainerOptions,
    /// `RUN --security=insecure`: every capability, no seccomp, the host's devices (see [`privileged`]).
    pub privileged: bool,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    /// The exit code, or 128 + signal number if the process was killed.
    pub exit_code: i32,
    /// The last [`TAIL_LINES`] lines of combined stdout and stderr.
    pub tail: Vec<String>,
}

/// Failures to run a container (as opposed to a process that ran and failed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("runc not found on PATH ({path})")]
    RuncNotFound { path: String },
    #[error("{runtime} not found on PATH ({path})")]
    NotFound { runtime: RuntimeKind, path: String },
    #[error("{runtime} cannot run containers here: {reason}")]
    Unsupported { runtime: RuntimeKind, reason: String },
    #[error("creating directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {path} of the runtime bundle")]
    WriteBundle {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("building the OCI runtime config")]
    Spec {
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("mount destination {destination:?} is not an absolute path")]
    BadMountDestination { destination: String },
    #[error("the command to run is empty")]
    EmptyArgs,
    #[error("working directory {cwd:?} is not an absolute path")]
    RelativeCwd { cwd: String },
    #[error("creating working directory {cwd} in the rootfs")]
    Cwd {
        cwd: String,
        #[source]
        source: io::Error,
    },
    #[error("inspecting mount destinations in {rootfs}")]
    MountStubs {
        rootfs: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("starting {runc}")]
    Spawn {
        runc: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the output of container {id}")]
    Output {
        id: String,
        #[source]
        source: io::Error,
    },
    #[error("container {id} could not start the process: {message}")]
    Start { id: String, message: String },
    #[error("not starting a container")]
    Cancelled(#[from] Cancelled),
}

/// Runs containers with one `runc` binary and state directory.
#[derive(Debug, Clone)]
pub struct Runtime {
    runc: PathBuf,
    state_dir: PathBuf,
    bundle_parent: PathBuf,
    resolv_conf: PathBuf,
    canceller: Canceller,
    /// False when rootless without a delegated cgroup (see [`cgroups`]): containers then get no limits.
    cgroup_limits: bool,
    /// crun on a hybrid cgroup host: started with the v2 hierarchy hidden (see [`cgroups::V1View`]).
    v1_view: Option<cgroups::V1View>,
}

impl Runtime {
    /// Uses the `runc` found on `PATH`, keeping runc's state in `state_dir` (e.g. `/run/rbuild-runc`) and writing
    /// bundles under `bundle_parent`. Both directories are created.
    pub fn new(state_dir: PathBuf, bundle_parent: PathBuf) -> Result<Runtime, RuntimeError> {
        let runc = find_executable("runc").map_err(|path| RuntimeError::RuncNotFound { path })?;
        Runtime::with_runc(runc, state_dir, bundle_parent)
    }

    /// Uses `kind`'s program from `PATH`, failing early when it is missing or cannot work on this host.
    pub fn with_kind(kind: RuntimeKind, state_dir: PathBuf, bundle_parent: PathBuf) -> Result<Runtime, RuntimeError> {
        let program = kind.find().map_err(|path| RuntimeError::NotFound { runtime: kind, path })?;
        if let Some(reason) = kind.unsupported_reason() {
            return Err(RuntimeError::Unsupported { runtime: kind, reason });
        }
        let mut runtime = Runtime::with_runc(program, state_dir, bundle_parent)?;
        if kind == RuntimeKind::Crun && cgroups::v2_controllers_beside_v1(Path::new("/sys/fs/cgroup")).is_some() {
            runtime.v1_view = Some(cgroups::V1View::of_this_process());
        }
        Ok(runtime)
    }

    /// Uses the given `runc` binary (or another runtime with runc's command line, such as crun).
    pub fn with_runc(runc: PathBuf, state_dir: PathBuf, bundle_parent: PathBuf) -> Result<Runtime, RuntimeError> {
        for dir in [&state_dir, &bundle_parent] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| RuntimeError::CreateDir { path: dir.clone(), source })?;
        }
        Ok(Runtime {
            runc,
            state_dir,
            bundle_parent,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            canceller: Canceller::new(),
            cgroup_limits: cgroups::limits_available(),
            v1_view: None,
        })
    }

    /// Registers every container with `canceller`, so cancelling it kills them (see [`crate::cancel`]).
    pub fn with_canceller(mut self, canceller: Canceller) -> Runtime {
        self.canceller = canceller;
        self
    }

    /// runc's state directory (`runc --root`).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Copies `path` instead of the host's `/etc/resolv.conf` into containers.
    pub fn with_resolv_conf(mut self, path: PathBuf) -> Runtime {
        self.resolv_conf = path;
        self
    }

    /// The runc binary in use.
    pub fn runc(&self) -> &Path {
        &self.runc
    }

    /// Runs `spec` to completion. Every output line goes to `on_output` as it arrives. A non-zero exit is a
    /// [`RunResult`]; errors mean the process could not be started.
    pub fn run(&self, spec: &RunSpec, on_output: &mut dyn FnMut(&str)) -> Result<RunResult, RuntimeError> {
        if spec.args.is_empty() {
            return Err(RuntimeError::EmptyArgs);
        }
        if !spec.cwd.starts_with('/') {
            return Err(RuntimeError::RelativeCwd { cwd: spec.cwd.clone() });
        }
        let bundle_parent = spec.bundle_dir.as_ref().unwrap_or(&self.bundle_parent);
        let bundle = tempfile::Builder::new()
            .prefix(&format!("rbuild-{}-", std::process::id()))
            .tempdir_in(bundle_parent)
            .map_err(|source| RuntimeError::CreateDir { path: bundle_parent.clone(), source })?;
        let id = bundle.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();

        let hosts = bundle.path().join("hosts");
        write_file(&hosts, hosts_file(&spec.hostname, &spec.options.extra_hosts).as_bytes())?;
        let resolv_conf = bundle.path().join("resolv.conf");
        let mut resolver = read_host_resolv_conf(&self.resolv_conf);
        if let NetworkMode::Join { nameserver: Some(ns), .. } = &spec.network {
            resolver = with_nameserver(&resolver, *ns);
        }
        write_file(&resolv_conf, &resolver)?;

        let destinations = spec::SYSTEM_MOUNT_DESTINATIONS
            .iter()
            .copied()
            .chain(spec.mounts.iter().map(|m| m.destination.as_str()))
            .chain(spec.tmpfs.iter().map(|m| m.destination.as_str()));
        let stubs = MountStubs::record(&spec.rootfs, destinations)
            .map_err(|source| RuntimeError::MountStubs { rootfs: spec.rootfs.clone(), source })?;
        // From here on, everything is undone by the guard, in field order: container, stubs, bundle.
        let mut guard = Cleanup {
            runtime: self,
            id: id.clone(),
            child: None,
            stubs: Some(stubs),
            bundle: Some(bundle),
            registration: None,
            exited: false,
        };

        ensure_cwd(&spec.rootfs, &spec.cwd, &spec.user)?;
        let mut oci = spec::build_spec(spec, &hosts, &resolv_conf)?;
        if !self.cgroup_limits {
            if cgroups::asked_for_limits(&spec.options) {
                cgroups::warn_unavailable();
            }
            if let Some(linux) = oci.linux_mut() {
                linux.set_resources(None);
            }
        } else if let (Some(view), Some(linux)) = (&self.v1_view, oci.linux_mut()) {
            linux.set_cgroups_path(Some(view.cgroups_path(&id)));
        }
        let bundle_dir = guard.bundle_path();
        let config = bundle_dir.join("config.json");
        let json = serde_json::to_vec_pretty(&oci)
            .map_err(|e| RuntimeError::WriteBundle { path: config.clone(), source: e.into() })?;
        write_file(&config, &json)?;

        let log = bundle_dir.join("runc.log");
        guard.registration = Some(self.canceller.register(&id, self.runc.clone(), self.state_dir.clone())?);
        let (reader, writer) = io::pipe().map_err(|source| RuntimeError::Spawn { runc: self.runc.clone(), source })?;
        {
            let stderr =
                writer.try_clone().map_err(|source| RuntimeError::Spawn { runc: self.runc.clone(), source })?;
            let mut command = Command::new(&self.runc);
            command
                .arg("--root")
                .arg(&self.state_dir)
                .arg("--log")
                .arg(&log)
                .args(["--log-format", "json", "run", "--bundle"])
                .arg(&bundle_dir)
                .arg(&id)
                .stdin(Stdio::null())
                .stdout(writer)
                .stderr(stderr);
            self.hide_unified_cgroup(&mut command);
            let child = command.spawn().map_err(|source| RuntimeError::Spawn { runc: self.runc.clone(), source })?;
            guard.child = Some(child);
            // `command` and its copies of the pipe's write end are dropped here, so EOF comes when runc exits.
        }

        let tail = pump_lines(reader, on_output).map_err(|source| RuntimeError::Output { id: id.clone(), source })?;
        let status = match guard.child.take() {
            Some(mut child) => child.wait().map_err(|source| RuntimeError::Output { id: id.clone(), source })?,
            None => return Err(RuntimeError::Output { id, source: io::Error::other("runc process lost") }),
        };
        let runc_errors = runc_log_errors(&log);
        // `runc run` deletes its container when it exits by itself (normally or with an error it logged).
        guard.exited = status.code().is_some();
        drop(guard);

        if !runc_errors.is_empty() {
            return Err(RuntimeError::Start { id, message: runc_errors.join("; ") });
        }
        let exit_code = status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(-1);
        let mut tail = tail;
        if let Some(hint) = oom_hint(exit_code, &spec.options) {
            tail.push(hint);
        }
        Ok(RunResult { exit_code, tail })
    }
}

impl Runtime {
    /// Starts `command` (the runtime) in the [`cgroups::V1View`] when this runtime needs one.
    fn hide_unified_cgroup(&self, command: &mut Command) {
        if self.v1_view.is_some() {
            use std::os::unix::process::CommandExt;
            // SAFETY: `V1View::enter` makes only async-signal-safe system calls, as `pre_exec` requires.
            unsafe {
                command.pre_exec(cgroups::V1View::enter);
            }
        }
    }
}

/// Undoes a run: kills and deletes the container, removes mount stubs, deletes the bundle.
struct Cleanup<'a> {
    runtime: &'a Runtime,
    id: String,
    /// Still running (or not yet waited for) runc.
    child: Option<Child>,
    stubs: Option<MountStubs>,
    bundle: Option<tempfile::TempDir>,
    /// Known to the canceller until the container is deleted.
    registration: Option<Registration>,
    /// runc exited on its own, having deleted the container: no `runc delete` needed.
    exited: bool,
}

impl Cleanup<'_> {
    fn bundle_path(&self) -> PathBuf {
        self.bundle.as_ref().map(|b| b.path().to_path_buf()).unwrap_or_default()
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        // `runc run` deletes its container when the process exits; this covers runc dying or us bailing out early.
        if !self.exited {
            let mut delete = Command::new(&self.runtime.runc);
            delete
                .arg("--root")
                .arg(&self.runtime.state_dir)
                .args(["delete", "-f", &self.id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            self.runtime.hide_unified_cgroup(&mut delete);
            let deleted = delete.status();
            tracing::debug!(id = %self.id, ?deleted, "runc delete -f");
        }
        if let Some(mut child) = self.child.take() {
            if let Err(err) = child.kill() {
                tracing::debug!(id = %self.id, error = %err, "killing runc");
            }
            if let Err(err) = child.wait() {
                tracing::warn!(id = %self.id, error = %err, "waiting for runc");
            }
        }
        self.registration.take();
        if let Some(stubs) = self.stubs.take() {
            let removed = stubs.remove();
            tracing::debug!(id = %self.id, ?removed, "removed mount stubs");
        }
        if let Some(bundle) = self.bundle.take() {
            let path = bundle.path().to_path_buf();
            if let Err(err) = bundle.close() {
                tracing::warn!(path = %path.display(), error = %err, "removing runtime bundle");
            }
        }
    }
}

/// The first executable `name` on `PATH`; the `PATH` searched, as the error.
pub(crate) fn find_executable(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| path.to_string_lossy().into_owned())
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

fn write_file(path: &Path, contents: &[u8]) -> Result<(), RuntimeError> {
    std::fs::write(path, contents).map_err(|source| RuntimeError::WriteBundle { path: path.to_path_buf(), source })
}

/// A line for the step's error when it was killed (SIGKILL: exit code 137) under a memory limit: the kernel's OOM
/// killer is the likely cause, and `docker build` users expect to be told. (runc removes the container's cgroup,
/// and with it the OOM counter, before rbuild could read it.)
fn oom_hint(exit_code: i32, options: &ContainerOptions) -> Option<String> {
    let limit = options.memory?;
    (exit_code == 128 + 9).then(|| {
        format!("rbuild: killed (SIGKILL) under --memory {} MiB: most likely out of memory", limit / (1024 * 1024))
    })
}

/// The container's `/etc/hosts`: localhost, the container's name, then the `--add-host` entries in order.
pub fn hosts_file(hostname: &str, extra: &[options::HostEntry]) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost");
    if !hostname.is_empty() && hostname != "localhost" {
        out.push('\t');
        out.push_str(hostname);
    }
    out.push_str("\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for entry in extra {
        out.push_str(&format!("{}\t{}\n", entry.ip, entry.host));
    }
    out
}

/// The host's resolver config; a host without one gives the container an empty file, as Docker does.
fn read_host_resolv_conf(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|err| {
        tracing::warn!(path = %path.display(), error = %err, "no resolver config to copy into containers");
        Vec::new()
    })
}

/// The host's resolver config with its `nameserver` lines replaced by `nameserver` (a user-mode stack's DNS
/// forwarder: the host's own servers may be loopback addresses, unreachable from the container's namespace).
/// `search`, `domain` and `options` lines are kept, as Docker keeps them.
fn with_nameserver(host: &[u8], nameserver: std::net::IpAddr) -> Vec<u8> {
    let mut out = format!("nameserver {nameserver}\n").into_bytes();
    for line in host.split_inclusive(|b| *b == b'\n') {
        let first = line.split(|b| b.is_ascii_whitespace()).find(|w| !w.is_empty());
        if first != Some(b"nameserver".as_slice()) {
            out.extend_from_slice(line);
        }
    }
    if out.last() != Some(&b'\n') {
        out.push(b'\n');
    }
    out
}

/// Creates `cwd` inside `rootfs` if it is missing; new directories are 0755 and owned by the process user, so
/// runc can always `chdir` there and the user can write to a directory it caused to exist (BuildKit's rule).
fn ensure_cwd(rootfs: &Path, cwd: &str, user: &ResolvedUser) -> Result<(), RuntimeError> {
    let wrap = |source: io::Error| RuntimeError::Cwd { cwd: cwd.to_string(), source };
    for missing in stubs::missing_prefixes(rootfs, Path::new(cwd)).map_err(wrap)? {
        let host = resolve_in_root(rootfs, &missing).map_err(wrap)?;
        std::fs::DirBuilder::new().mode(0o755).create(&host).map_err(wrap)?;
        // The mode passed to mkdir is filtered by the umask; set it exactly.
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o755)).map_err(wrap)?;
        std::os::unix::fs::lchown(&host, Some(user.uid), Some(user.gid)).map_err(wrap)?;
    }
    Ok(())
}

/// Reads `reader` to EOF, calling `on_output` for every line (without its newline), and returns the last lines.
fn pump_lines(mut reader: impl Read, on_output: &mut dyn FnMut(&str)) -> io::Result<Vec<String>> {
    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
    let mut emit = |bytes: &[u8]| {
        let line = String::from_utf8_lossy(bytes);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        on_output(line);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_string());
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(pos) = pending[start..].iter().position(|b| *b == b'\n') {
            emit(&pending[start..start + pos]);
            start += pos + 1;
        }
        pending.drain(..start);
        while pending.len() >= MAX_LINE {
            emit(&pending[..MAX_LINE]);
            pending.drain(..MAX_LINE);
        }
    }
    if !pending.is_empty() {
        emit(&pending);
    }
    Ok(tail.into())
}

/// The messages of `error` and `fatal` entries in runc's JSON log; a missing or unreadable log has none.
fn runc_log_errors(log: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(log) else { return Vec::new() };
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| matches!(entry["level"].as_str(), Some("error" | "fatal" | "panic")))
        .filter_map(|entry| entry["msg"].as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests;
