//! Ctrl-C and SIGTERM during `rbuild build`: stop cleanly, then exit 130.
//!
//! Without a handler the default action kills rbuild at once and leaves runc containers running, overlays mounted
//! and work directories behind. With it, the first signal cancels the build: no new step starts, running
//! containers are killed, and each step unwinds through its own cleanup before the process exits (the runtime's
//! shutdown waits for the blocking worker threads). A second signal exits immediately, for a build stuck in
//! something that cannot be cancelled (a slow registry).

use rbuild_builder::Canceller;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};

/// How long cancelling waits for killed containers to go away.
const KILL_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a signal asked the build to stop.
#[derive(Clone, Default)]
pub struct Interrupted(Arc<AtomicBool>);

impl Interrupted {
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Starts watching for SIGINT and SIGTERM; the first one cancels `canceller`, a second one exits at once.
///
/// The signals are handled on a thread of their own with its own small runtime, never on the build's runtime:
/// a build whose worker threads are all busy (a pull unpacking layers, a stuck registry call) must still hear the
/// second Ctrl-C and exit.
pub fn watch(canceller: Canceller) -> std::io::Result<Interrupted> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (mut int, mut term) = {
        let _entered = runtime.enter();
        (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?)
    };
    let flag = Interrupted::default();
    let set = flag.clone();
    std::thread::Builder::new().name("rbuild-signals".into()).spawn(move || {
        runtime.block_on(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            set.0.store(true, Ordering::SeqCst);
            eprintln!("interrupted: stopping running steps (press Ctrl-C again to exit at once)");
            // Cancelling waits for containers to die: on a thread of its own, so this one keeps listening.
            std::thread::spawn(move || canceller.cancel(KILL_TIMEOUT));
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            eprintln!("interrupted again: exiting now");
            std::process::exit(130);
        })
    })?;
    Ok(flag)
}
