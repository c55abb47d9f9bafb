//! Stopping a build part-way (Ctrl-C, SIGTERM) without leaving containers, mounts or directories behind.
//!
//! Running steps are blocked in `runc run` on worker threads, so cancelling cannot just drop futures: the
//! containers themselves must die, after which every step unwinds through its ordinary cleanup (the runtime's
//! drop guard deletes the container and its bundle, the worker unmounts its overlays and removes its work dirs).
//! So a [`Canceller`] knows every container that is about to run or running, and [`Canceller::cancel`] refuses new
//! ones and sends `SIGKILL` to the rest through `runc kill` until none is left. Registration and the cancelled
//! flag share one lock, so a container is either refused or seen by the killing loop; the loop repeats because a
//! container registered a moment ago may not exist in runc's state yet.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often the killing loop retries while containers remain.
const KILL_INTERVAL: Duration = Duration::from_millis(50);

/// The build was cancelled before this step could start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the build was cancelled")]
pub struct Cancelled;

/// Shared between the worker (which registers containers) and whoever handles signals (which cancels).
#[derive(Debug, Clone, Default)]
pub struct Canceller {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    cancelled: bool,
    /// Container id → (runc binary, runc state dir).
    running: BTreeMap<String, (PathBuf, PathBuf)>,
}

/// A registered container; unregisters when dropped (after the container is gone).
#[derive(Debug)]
pub struct Registration {
    canceller: Canceller,
    id: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.canceller.state().running.remove(&self.id);
    }
}

impl Canceller {
    pub fn new() -> Canceller {
        Canceller::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind; keep using it.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn is_cancelled(&self) -> bool {
        self.state().cancelled
    }

    /// Fails once the build is cancelled; for steps that run no container.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() { Err(Cancelled) } else { Ok(()) }
    }

    /// Records that container `id` (of `runc` with state dir `state_dir`) is about to run, unless cancelled.
    pub fn register(&self, id: &str, runc: PathBuf, state_dir: PathBuf) -> Result<Registration, Cancelled> {
        let mut state = self.state();
        if state.cancelled {
            return Err(Cancelled);
        }
        state.running.insert(id.to_string(), (runc, state_dir));
        Ok(Registration { canceller: self.clone(), id: id.to_string() })
    }

    /// How many containers are registered.
    pub fn running(&self) -> usize {
        self.state().running.len()
    }

    /// Refuses new containers and kills the registered ones, returning when none is left or after `timeout`.
    /// Returns how many were still registered at the end (0 when everything stopped). Blocks: call it from a
    /// blocking thread.
    pub fn cancel(&self, timeout: Duration) -> usize {
        self.state().cancelled = true;
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<(String, PathBuf, PathBuf)> =
                self.state().running.iter().map(|(id, (r, s))| (id.clone(), r.clone(), s.clone())).collect();
            if running.is_empty() || Instant::now() >= deadline {
                return running.len();
            }
            for (id, runc, state_dir) in running {
                let killed = Command::new(&runc)
                    .arg("--root")
                    .arg(&state_dir)
                    .args(["kill", &id, "KILL"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                tracing::debug!(%id, ?killed, "runc kill");
            }
            std::thread::sleep(KILL_INTERVAL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_after_cancel_and_tracks_registrations() {
        let c = Canceller::new();
        let reg = c.register("a", PathBuf::from("/nonexistent/runc"), PathBuf::from("/nonexistent"));
        let reg = reg.expect("not cancelled yet");
        assert_eq!(c.running(), 1);
        assert!(c.check().is_ok());
        // The kill loop cannot kill (no runc), so it gives up at the timeout and reports what is left.
        let c2 = c.clone();
        let left = std::thread::spawn(move || c2.cancel(Duration::from_millis(120)));
        let left = left.join().expect("cancel thread");
        assert_eq!(left, 1);
        assert_eq!(c.check(), Err(Cancelled));
        assert!(c.register("b", PathBuf::new(), PathBuf::new()).is_err());
        drop(reg);
        assert_eq!(c.running(), 0);
        assert_eq!(c.cancel(Duration::from_secs(5)), 0, "nothing left: returns at once");
    }
}
