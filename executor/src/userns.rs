//! Rootless: how an ordinary user's rbuild becomes root of a user namespace of its own.
//!
//! First thing in `main`, while it has one thread, rbuild `unshare`s a new user and mount namespace ([`enter`]).
//! Its uid and gid 0 map to the user's own ids and ids 1..=N to the user's subordinate range of `/etc/subuid` and
//! `/etc/subgid`, written by the setuid `newuidmap`/`newgidmap` of Debian's `uidmap` (the same as podman, buildah
//! and rootlesskit do), which a helper forked just before the `unshare` runs from outside. Inside, the whole
//! pipeline runs as it does as root: chown to any mapped id works, so a file a Dockerfile gives to 1000:1000 is
//! 1000:1000 in the layer, whatever host ids back it.
//!
//! Without a subordinate range the mapping is single (0 to the user's own id), which builds what never changes an
//! owner; anything else fails with a message naming the line to add to `/etc/subuid`.
//!
//! The process stays the one the user started (no re-execution: that cost a rootless command about 3 ms of its
//! 8 ms of fixed cost), so signals reach it directly, and its mounts go away with its mount namespace. A build
//! does not wait for the maps until it needs them ([`rbuild_types::ids`]): the helpers' ~4 ms overlap its reading
//! of the Dockerfile and the store. (Not done:
//! a pid namespace that would take runc's containers down with a killed rbuild; a process that `unshare`s
//! `CLONE_NEWPID` can no longer start threads, so it needs an extra fork.)

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};

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
    #[error("entering a user namespace needs a single-threaded process (a bug in rbuild's start-up)")]
    Threaded,
    #[error("setting up rbuild's user namespace")]
    Setup {
        #[source]
        source: io::Error,
    },
}

/// How [`enter`] mapped this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub host_uid: u32,
    pub host_gid: u32,
    /// True with subordinate ranges, false with the single-id fallback.
    pub ranges: bool,
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

/// What [`enter`] will map, read from `/etc/subuid` and `/etc/subgid`.
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

/// Makes this process root of a new user and mount namespace: forks a helper that stays outside (only a process
/// there may run the setuid `newuidmap`/`newgidmap` on it) and `unshare`s. The helper writes the maps meanwhile;
/// [`Pending::finish`] waits for it. Must run before the process has a second thread (`unshare(CLONE_NEWUSER)`
/// refuses otherwise); threads started after it are in the namespace too.
pub fn enter(plan: &Plan) -> Result<Pending, UsernsError> {
    if plan.has_ranges() {
        for tool in ["newuidmap", "newgidmap"] {
            if crate::runtime::find_executable(tool).is_err() {
                return Err(UsernsError::ToolMissing { tool });
            }
        }
    }
    if thread_count() != Some(1) {
        return Err(UsernsError::Threaded);
    }
    let (go_r, go_w) = pipe()?;
    let (done_r, done_w) = pipe()?;
    let target = nix::unistd::getpid();
    // SAFETY: the process is single-threaded (checked above), so the child may allocate, spawn and exit freely.
    let helper = match unsafe { nix::unistd::fork() } {
        Err(e) => return Err(UsernsError::Spawn { source: e.into() }),
        Ok(nix::unistd::ForkResult::Child) => {
            drop((go_w, done_r));
            // SAFETY: prctl and _exit have no memory-safety preconditions.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::_exit(map_for(go_r, done_w, target.as_raw(), plan))
            }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => child,
    };
    drop((go_r, done_w));
    let mut go = std::fs::File::from(go_w);
    // SAFETY: unshare has no memory-safety preconditions.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) } != 0 {
        let source = io::Error::last_os_error();
        // Without the go byte the helper sees end-of-file and exits.
        drop(go);
        let _ = nix::sys::wait::waitpid(helper, None);
        return Err(UsernsError::Spawn { source });
    }
    let _ = go.write_all(&[0]);
    let mapping = Mapping { host_uid: plan.uid, host_gid: plan.gid, ranges: plan.has_ranges() };
    Ok(Pending { helper, done: done_r, mapping })
}

/// A namespace [`enter`]ed whose maps the helper is still writing.
#[derive(Debug)]
pub struct Pending {
    helper: nix::unistd::Pid,
    done: OwnedFd,
    mapping: Mapping,
}

impl Pending {
    /// What the maps will be.
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// Waits for the helper, then drops the host's supplementary groups (unmapped ids inside) and makes every
    /// mount private to this namespace, so nothing rbuild mounts propagates anywhere and everything it mounts goes
    /// away with it.
    pub fn finish(self) -> Result<(), UsernsError> {
        let mut message = String::new();
        let read = std::fs::File::from(self.done).read_to_string(&mut message);
        let _ = nix::sys::wait::waitpid(self.helper, None);
        if let Err(e) = read {
            message = format!("the mapping helper failed: {e}");
        }
        if !message.is_empty() {
            return Err(UsernsError::Map { message });
        }
        // SAFETY: setgroups with an empty list reads no memory (glibc applies it to every thread).
        if self.mapping.ranges && unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
            return Err(UsernsError::Setup { source: io::Error::last_os_error() });
        }
        use nix::mount::MsFlags;
        nix::mount::mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
            .map_err(|e| UsernsError::Setup { source: e.into() })
    }
}

/// The number of threads of this process (`/proc/self/stat` field 20).
fn thread_count() -> Option<u64> {
    stat_field("self", 20)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), UsernsError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| UsernsError::Spawn { source: e.into() })
}

/// The forked helper: waits until `target` has unshared, writes its maps, and reports what failed (nothing when
/// all went well) on `done`. Returns its exit code.
fn map_for(go: OwnedFd, done: OwnedFd, target: i32, plan: &Plan) -> i32 {
    let mut byte = [0u8; 1];
    if std::fs::File::from(go).read_exact(&mut byte).is_err() {
        return 1;
    }
    let result = if plan.has_ranges() { map_ranges(target, plan) } else { map_single(target, plan) };
    let mut done = std::fs::File::from(done);
    match result {
        Ok(()) => 0,
        Err(message) => {
            let _ = done.write_all(message.as_bytes());
            1
        }
    }
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

/// Run by the unprivileged process before it enters its namespace: kills the containers (in `runc_state`, runc's `--root`)
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
    stat_field(&pid.to_string(), 22)
}

/// Numeric field `n` (from 1) of `/proc/PID/stat`, for a field after the command name.
fn stat_field(pid: &str, n: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it start past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
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
}
