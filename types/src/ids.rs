//! The point a rootless rbuild's work waits at until its ids are mapped.
//!
//! An ordinary user's rbuild enters its own user namespace first thing, while it has one thread, but the maps of
//! that namespace are written by `newuidmap` and `newgidmap`, setuid programs that take a few milliseconds to
//! start. The build does not wait for them before it needs to: reading the Dockerfile and the store's indexes,
//! converting and resolving images from the store give the same results with the ids mapped or not. What does
//! depend on the maps (the owner of a file as `stat` reports it, `chown`, mounts, runc, reading or removing files
//! that subordinate ids own) runs only after [`wait`]: choosing the snapshotter, the worker's creation, extracting a
//! layer, writing a snapshot's tar, applying a snapshot, removing another process's tmp dirs, collecting the store,
//! and the programs rbuild runs outside steps (git, credential helpers). Everywhere else (root, a container, commands other
//! than `build`) [`wait`] returns at once.

use std::sync::Mutex;

/// Finishes the mapping; `Err` holds the message to report.
pub type Finish = Box<dyn FnOnce() -> Result<(), String> + Send>;

static PENDING: Mutex<Option<Finish>> = Mutex::new(None);

/// Records how to finish the mapping; the first [`wait`] runs it.
pub fn defer(finish: Finish) {
    *PENDING.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(finish);
}

/// Returns once this process's ids are mapped (at once when nothing is pending). A mapping that failed ends the
/// process with its message: nothing in the build can go on without it, and nothing was written yet that a later
/// build would not clean up (tmp dirs of dead processes are collected).
pub fn wait() {
    // Holding the lock while finishing makes every other waiting thread wait for the same outcome.
    let mut pending = PENDING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(finish) = pending.take()
        && let Err(message) = finish()
    {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}
