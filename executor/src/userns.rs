//! Rootless: how an ordinary user's rbuild becomes root of a user namespace of its own.
//!
//! rbuild re-executes itself (`/proc/self/exe`, same arguments) in a new user and mount namespace, before any
//! other thread exists in the child. The child's uid and gid 0 map to the user's own ids and ids 1..=N to the
//! user's subordinate range of `/etc/subuid` and `/etc/subgid`, written by the setuid `newuidmap`/`newgidmap`
//! of Debian's `uidmap` (the same as podman, buildah and rootlesskit do). Inside, the whole pipeline runs as it
//! does as root: chown to any mapped id works, so a file a Dockerfile gives to 1000:1000 is 1000:1000 in the
//! layer, whatever host ids back it.
//!
//! Without a subordinate range the child gets a single mapping (0 to the user's own id), which builds what
//! never changes an owner; anything else fails with a message naming the line to add to `/etc/subuid`.
//!
//! The mapping is written while the child waits in `pre_exec` (between fork and exec), so that its `exec` of
//! rbuild already runs as uid 0 of the namespace and keeps the namespace's capabilities. `Command::spawn` waits for
//! that exec, so a helper thread of the parent does the mapping. The child dies with the parent (`PR_SET_PDEATHSIG`),
//! and its mounts with its mount namespace. The parent only waits, forwards SIGTERM and SIGHUP, and exits with the
//! child's code. (Not done: a pid namespace that would take runc's containers down with a killed rbuild; a
//! process that `unshare`s `CLONE_NEWPID` can no longer start threads, so it needs an extra fork.)

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};

/// Set in the re-executed child: `HOSTUID:HOSTGID:MAPPING`, where MAPPING is `ranges` or `single`.
pub const CHILD_ENV: &str = "_RBUILD_USERNS";

/// A range of subordinate ids: `count` ids from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub start: u32,
    pub count: u32,
}

/// Failures to enter the user namespace.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsernsError {
    #[error(
        "{tool} not found on PATH: rootless builds need it to map the subordinate ids of /etc/subuid and \
         /etc/subgid (Debian: apt-get install uidmap)"
    )]
    ToolMissing { tool: &'static str },
    #[error("mapping ids into rbuild's user namespace: {message}")]
    Map { message: String },
    #[error("creating rbuild's user namespace (is kernel.unprivileged_userns_clone or user.max_user_namespaces 0?)")]
    Spawn {
        #[source]
        source: io::Error,
    },
    #[error("waiting for rbuild in its user namespace")]
    Wait {
        #[source]
        source: io::Error,
    },
}

/// How the child was mapped, as recorded in [`CHILD_ENV`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildInfo {
    pub host_uid: u32,
    pub host_gid: u32,
    /// True with subordinate ranges, false with the single-id fallback.
    pub ranges: bool,
}

impl ChildInfo {
    /// This process's mapping, if it is a re-executed rootless child.
    pub fn from_env() -> Option<ChildInfo> {
        let v = std::env::var(CHILD_ENV).ok()?;
        let mut parts = v.split(':');
        let host_uid = parts.next()?.parse().ok()?;
        let host_gid = parts.next()?.parse().ok()?;
        let ranges = parts.next()? == "ranges";
        Some(ChildInfo { host_uid, host_gid, ranges })
    }
}

/// The ranges `/etc/subuid`-format `text` gives the user named `name` with id `id` (lines `NAME:START:COUNT` or
/// `ID:START:COUNT`); malformed lines and comments are skipped.
pub fn subordinate_ranges(text: &str, name: &str, id: u32) -> Vec<IdRange> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.trim().split(':');
            let owner = parts.next()?;
            let start = parts.next()?.trim().parse().ok()?;
            let count: u32 = parts.next()?.trim().parse().ok()?;
            let matches = owner == name || owner.parse::<u32>().is_ok_and(|o| o == id);
            (matches && count > 0).then_some(IdRange { start, count })
        })
        .collect()
}

/// The `newuidmap`/`newgidmap` arguments after the pid: 0 → `own`, then 1.. → each range in turn.
pub fn map_args(own: u32, ranges: &[IdRange]) -> Vec<String> {
    let mut args = vec!["0".to_string(), own.to_string(), "1".to_string()];
    let mut next: u64 = 1;
    for r in ranges {
        args.extend([next.to_string(), r.start.to_string(), r.count.to_string()]);
        next += u64::from(r.count);
    }
    args
}

/// The line(s) to add when a user has no subordinate ids.
pub fn subid_hint(user: &str) -> String {
    format!(
        "add `{user}:100000:65536` to /etc/subuid and /etc/subgid (as root: usermod --add-subuids 100000-165535 \
         --add-subgids 100000-165535 {user}), choosing a range no other user has"
    )
}

/// Whether this process runs in a user namespace other than the initial one (its uid map is not the identity
/// of all 2^32 ids): then overlayfs needs `userxattr` and cgroups may not be writable.
pub fn in_user_namespace() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => map.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"],
        Err(_) => false,
    }
}

/// This process's effective uid.
pub fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The user's name from `/etc/passwd`, or the number.
pub fn user_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let mut p = l.split(':');
            let name = p.next()?;
            p.next()?;
            (p.next()?.parse::<u32>().ok()? == uid).then(|| name.to_string())
        })
        .unwrap_or_else(|| uid.to_string())
}

/// What [`reexec`] will map, read from `/etc/subuid` and `/etc/subgid`.
#[derive(Debug, Clone)]
pub struct Plan {
    pub uid: u32,
    pub gid: u32,
    pub user: String,
    pub uid_ranges: Vec<IdRange>,
    pub gid_ranges: Vec<IdRange>,
}

impl Plan {
    /// The plan for the calling user.
    pub fn for_current_user() -> Plan {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let user = user_name(uid);
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Plan {
            uid,
            gid,
            uid_ranges: subordinate_ranges(&read("/etc/subuid"), &user, uid),
            gid_ranges: subordinate_ranges(&read("/etc/subgid"), &user, uid),
            user,
        }
    }

    /// True when both files give the user a range.
    pub fn has_ranges(&self) -> bool {
        !self.uid_ranges.is_empty() && !self.gid_ranges.is_empty()
    }
}

/// Runs this program again, with the same arguments, as root of a new user, mount and pid namespace, and waits for
/// it. Returns its exit code (128 + signal when it was killed).
pub fn reexec(plan: &Plan) -> Result<i32, UsernsError> {
    let ranges = plan.has_ranges();
    if ranges {
        for tool in ["newuidmap", "newgidmap"] {
            if crate::runtime::find_executable(tool).is_err() {
                return Err(UsernsError::ToolMissing { tool });
            }
        }
    }
    let (pid_r, pid_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let helper_plan = plan.clone();
    let helper = std::thread::spawn(move || map_child(pid_r, go_w, &helper_plan));

    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("rbuild"));
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0(arg0)
        .args(args)
        .env(CHILD_ENV, format!("{}:{}:{}", plan.uid, plan.gid, if ranges { "ranges" } else { "single" }));
    let (pid_wfd, go_rfd) = (pid_w.as_raw_fd(), go_r.as_raw_fd());
    // SAFETY: the closure only makes async-signal-safe system calls (prctl, unshare, getpid, write, read).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                || libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0
            {
                return Err(io::Error::last_os_error());
            }
            let pid = libc::getpid().to_ne_bytes();
            if libc::write(pid_wfd, pid.as_ptr().cast(), pid.len()) != pid.len() as isize {
                return Err(io::Error::last_os_error());
            }
            let mut ok = [1u8];
            if libc::read(go_rfd, ok.as_mut_ptr().cast(), 1) != 1 || ok[0] != 0 {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            // Mapped: uid and gid 0 now. Drop the host's supplementary groups (unmapped ids inside).
            if ranges && libc::setgroups(0, std::ptr::null()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The parent: Ctrl-C reaches the child from the terminal (same process group); SIGTERM and SIGHUP sent to
    // this process are passed on.
    ignore_interactive_signals();
    let spawned = command.spawn();
    drop(pid_w);
    drop(go_r);
    let mapped = helper.join().unwrap_or_else(|_| Err("the mapping thread panicked".to_string()));
    let mut child = match (spawned, mapped) {
        (Ok(child), _) => child,
        (Err(_), Err(message)) => return Err(UsernsError::Map { message }),
        (Err(source), Ok(())) => return Err(UsernsError::Spawn { source }),
    };
    forward_signals_to(child.id());
    let status = child.wait().map_err(|source| UsernsError::Wait { source })?;
    Ok(status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1))
}

fn pipe() -> Result<(OwnedFd, OwnedFd), UsernsError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| UsernsError::Spawn { source: e.into() })
}

/// The helper thread: reads the child's pid, writes its maps, and tells it to go on (0) or give up (1).
fn map_child(pid_r: OwnedFd, go_w: OwnedFd, plan: &Plan) -> Result<(), String> {
    let mut pid = [0u8; 4];
    let mut reader = std::fs::File::from(pid_r);
    reader.read_exact(&mut pid).map_err(|e| format!("the child did not start: {e}"))?;
    let pid = i32::from_ne_bytes(pid);
    let result = if plan.has_ranges() { map_ranges(pid, plan) } else { map_single(pid, plan) };
    let mut go = std::fs::File::from(go_w);
    let _ = go.write_all(&[u8::from(result.is_err())]);
    result
}

/// Runs `newuidmap` and `newgidmap` side by side (each is a setuid program that takes a few milliseconds to start,
/// and every rootless command waits for both).
fn map_ranges(pid: i32, plan: &Plan) -> Result<(), String> {
    let mut running = Vec::new();
    for (tool, own, ranges) in [("newuidmap", plan.uid, &plan.uid_ranges), ("newgidmap", plan.gid, &plan.gid_ranges)] {
        let child = Command::new(tool)
            .arg(pid.to_string())
            .args(map_args(own, ranges))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running {tool}: {e}"))?;
        running.push((tool, child));
    }
    let mut failures = Vec::new();
    for (tool, child) in running {
        match child.wait_with_output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => failures.push(format!("{tool} failed: {}", String::from_utf8_lossy(&out.stderr).trim())),
            Err(e) => failures.push(format!("waiting for {tool}: {e}")),
        }
    }
    if failures.is_empty() { Ok(()) } else { Err(failures.join("; ")) }
}

/// Without subordinate ids an unprivileged process may still map its own uid and gid (after denying setgroups).
fn map_single(pid: i32, plan: &Plan) -> Result<(), String> {
    let proc = Path::new("/proc").join(pid.to_string());
    let write = |file: &str, data: String| {
        std::fs::write(proc.join(file), data).map_err(|e| format!("writing /proc/{pid}/{file}: {e}"))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("0 {} 1\n", plan.uid))?;
    write("gid_map", format!("0 {} 1\n", plan.gid))
}

static CHILD_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward(signal: libc::c_int) {
    let pid = CHILD_PID.load(std::sync::atomic::Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, signal) };
    }
}

fn ignore_interactive_signals() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    for s in [Signal::SIGINT, Signal::SIGQUIT] {
        // SAFETY: SIG_IGN installs no code.
        let _ = unsafe { signal(s, SigHandler::SigIgn) };
    }
}

fn forward_signals_to(pid: u32) {
    use nix::sys::signal::{SigHandler, Signal, signal};
    CHILD_PID.store(pid as i32, std::sync::atomic::Ordering::SeqCst);
    for s in [Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only reads an atomic and calls kill, both async-signal-safe.
        let _ = unsafe { signal(s, SigHandler::Handler(forward)) };
    }
}

/// In the re-executed child, first thing: makes every mount private to this namespace, so nothing rbuild mounts
/// propagates anywhere and everything it mounts goes away with the namespace.
pub fn child_setup() -> io::Result<()> {
    use nix::mount::MsFlags;
    nix::mount::mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(io::Error::from)
}

/// Run by the unprivileged parent before it re-executes: kills the containers (in `runc_state`, runc's `--root`)
/// that a rootless rbuild killed with SIGKILL left running. The new rbuild, root of another user namespace, has no
/// power over processes of the old one; this process has (their user namespace is owned by its uid). A container
/// is an orphan when the rbuild named in its id (`rbuild-PID-...`) no longer runs in the container's user
/// namespace; the pid is checked against runc's recorded start time, so a reused pid is never hit. Killing the
/// container's init ends its pid namespace, and runc (waiting for it) exits. Returns the ids killed.
pub fn kill_orphaned_containers(runc_state: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(runc_state) else { return Vec::new() };
    let mut killed = Vec::new();
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("state.json")) else { continue };
        let Ok(state) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        let (Some(pid), Some(start), Some(id)) =
            (state["init_process_pid"].as_i64(), state["init_process_start"].as_u64(), state["id"].as_str())
        else {
            continue;
        };
        if start_time(pid) != Some(start) {
            continue;
        }
        let owner = id.split('-').nth(1).and_then(|p| p.parse::<i64>().ok());
        let ns = |p: i64| std::fs::read_link(format!("/proc/{p}/ns/user")).ok();
        if owner.is_some_and(|o| ns(o).is_some() && ns(o) == ns(pid)) {
            continue; // its rbuild is alive
        }
        // SAFETY: kill has no memory-safety preconditions; the pid was just checked to be the container's init.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } == 0 {
            killed.push(id.to_string());
        }
    }
    killed
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat` field 22), as runc records it.
fn start_time(pid: i64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it start past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_match_name_or_id_and_skip_junk() {
        let text = "# comment\nalice:100000:65536\n1001:300000:10\nbob:200000:65536\nalice:bad:1\nalice:5:0\n";
        assert_eq!(
            subordinate_ranges(text, "alice", 1001),
            [IdRange { start: 100000, count: 65536 }, IdRange { start: 300000, count: 10 }]
        );
        assert!(subordinate_ranges(text, "carol", 7).is_empty());
    }

    #[test]
    fn map_args_put_the_user_at_zero_then_the_ranges() {
        let ranges = [IdRange { start: 100000, count: 65536 }, IdRange { start: 300000, count: 10 }];
        assert_eq!(map_args(1001, &ranges), ["0", "1001", "1", "1", "100000", "65536", "65537", "300000", "10"]);
    }

    #[test]
    fn start_time_reads_field_22_past_the_command_name() {
        let me = i64::from(std::process::id());
        assert!(start_time(me).is_some_and(|t| t > 0));
        assert_eq!(start_time(-1), None);
        assert!(kill_orphaned_containers(Path::new("/nonexistent")).is_empty());
    }

    #[test]
    fn child_info_round_trips() {
        // SAFETY: tests of this module do not read CHILD_ENV concurrently.
        unsafe { std::env::set_var(CHILD_ENV, "1001:1002:ranges") };
        assert_eq!(ChildInfo::from_env(), Some(ChildInfo { host_uid: 1001, host_gid: 1002, ranges: true }));
        unsafe { std::env::remove_var(CHILD_ENV) };
    }
}
