//! Opening the store for a build: containers left by dead processes are stopped first, and the snapshotter is chosen
//! once per store.

use anyhow::Context as _;
use rbuild_cache::{LockMode, Store};
use rbuild_executor::runtime::RuntimeKind;
use rbuild_executor::snapshotter::Snapshotter;
use std::path::{Path, PathBuf};

/// Opens the store at `root` locked as `mode`, first stopping containers that dead rbuild processes left running
/// (`kill -9` during a RUN), so that their mounts can be collected. `None` when `mode` is a try and the store is
/// busy.
pub fn open_store(root: &Path, mode: LockMode) -> anyhow::Result<Option<Store>> {
    // Each runtime keeps its containers in its own state directory in the store (`runc/`, `crun/`).
    let reaper = |dead: &[PathBuf]| {
        let runtimes = RuntimeKind::ALL.into_iter();
        runtimes
            .filter_map(|kind| Some((kind.find().ok()?, root.join(kind.name()))))
            .flat_map(|(program, state)| rbuild_executor::reap::reap_containers(&program, &state, dead))
            .collect()
    };
    Store::open_reaping(root, mode, &reaper).with_context(|| format!("opening the store at {}", root.display()))
}

/// The snapshotter builds in this store use: `requested`, else the one recorded for the store, else the first that
/// works here (probed once, in a scratch directory of the store).
pub fn choose_snapshotter(store: &Store, requested: Option<Snapshotter>) -> anyhow::Result<Snapshotter> {
    let scratch = store.tmp_dir("probe").context("creating a directory to probe snapshotters in")?;
    let chosen = rbuild_executor::snapshotter::choose(store.root(), &scratch, requested);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(chosen?)
}
