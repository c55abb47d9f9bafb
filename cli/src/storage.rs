//! `rbuild du`, `rbuild prune`, `rbuild check`, and the automatic collection after a build.
//!
//! The GC limit comes from `$RBUILD_ROOT/config.json` (`{"gc": {"keep_storage": "10GB"}}`), overridden by the
//! `RBUILD_GC_KEEP_STORAGE` environment variable; both are read once, in [`crate::env_for`].

use crate::Env;
use anyhow::{Context as _, Result};
use rbuild_builder::human_size;
use rbuild_cache::gc::{self, PruneOptions};
use rbuild_cache::{LockMode, Store};
use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct PruneArgs {
    /// Remove all build cache, not only results no tagged image uses (tagged images are always kept)
    #[arg(short, long)]
    all: bool,
    /// Remove least recently used cache only until the store takes at most this much (e.g. 10GB)
    #[arg(long, value_name = "SIZE")]
    keep_storage: Option<String>,
    /// Keep cache used more recently than this (until=DURATION, e.g. until=24h)
    #[arg(long, value_name = "FILTER")]
    filter: Vec<String>,
    /// Do not ask for confirmation (docker's flag; rbuild never asks, so this changes nothing)
    #[arg(short, long)]
    force: bool,
}

/// The GC limit configured for the store at `root`, if any.
pub fn configured_keep_storage(root: &Path) -> Result<Option<u64>> {
    if let Ok(v) = std::env::var("RBUILD_GC_KEEP_STORAGE")
        && !v.is_empty()
    {
        return Ok(Some(gc::parse_size(&v).context("RBUILD_GC_KEEP_STORAGE")?));
    }
    let path = root.join("config.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let doc: serde_json::Value =
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not valid JSON", path.display()))?;
    match doc.get("gc").and_then(|g| g.get("keep_storage")) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => {
            Ok(Some(gc::parse_size(s).with_context(|| format!("{}: gc.keep_storage", path.display()))?))
        }
        Some(serde_json::Value::Number(n)) => Ok(n.as_u64()),
        Some(other) => anyhow::bail!("{}: gc.keep_storage must be a size like \"10GB\", not {other}", path.display()),
    }
}

pub fn du(env: &Env) -> Result<ExitCode> {
    let store = crate::open_store(env)?;
    let u = gc::disk_usage(&store)?;
    println!("{:<14} {:>8} {:>10}", "KIND", "COUNT", "SIZE");
    println!("{:<14} {:>8} {:>10}", "snapshots", u.snapshot_count, human_size(u.snapshots));
    println!("{:<14} {:>8} {:>10}", "blobs", u.blob_count, human_size(u.blobs));
    println!("{:<14} {:>8} {:>10}", "cache mounts", u.cache_mount_count, human_size(u.cache_mounts));
    println!("{:<14} {:>8} {:>10}", "other", "", human_size(u.other));
    println!("{:<14} {:>8} {:>10}", "total", "", human_size(u.total()));
    println!("cache entries: {}", u.cache_entries);
    Ok(ExitCode::SUCCESS)
}

pub fn prune(env: &Env, args: PruneArgs) -> Result<ExitCode> {
    let _ = args.force;
    let mut opts = PruneOptions { all: args.all, ..Default::default() };
    if let Some(s) = &args.keep_storage {
        opts.keep_storage = Some(gc::parse_size(s)?);
    }
    for f in &args.filter {
        opts.until = Some(gc::parse_filter(f)?);
    }
    let store = open_exclusive(&env.root)?;
    let r = gc::prune(&store, &opts)?;
    println!(
        "removed {} cache entries, {} snapshots, {} blobs, {} cache mounts",
        r.cache_entries, r.snapshots, r.blobs, r.cache_mounts
    );
    println!("Total reclaimed space: {}", human_size(r.freed));
    Ok(ExitCode::SUCCESS)
}

/// `rbuild check [--deep]`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// Also re-compute every snapshot's content digest (reads every file in the store)
    #[arg(long)]
    deep: bool,
}

pub fn check(env: &Env, args: CheckArgs) -> Result<ExitCode> {
    let store = open_exclusive(&env.root)?;
    let mut r = gc::check(&store)?;
    if args.deep {
        deep_check_snapshots(&store, &mut r.problems)?;
    }
    println!(
        "{} blobs, {} snapshots, {} tags, {} cache entries ({} stale: clean misses)",
        r.blobs, r.snapshots, r.tags, r.cache_entries, r.stale_entries
    );
    for p in &r.problems {
        println!("problem: {p}");
    }
    if r.problems.is_empty() {
        println!("store is consistent");
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(1))
    }
}

/// Re-computes each snapshot's diff_id: a file edited in `snapshots/` would otherwise go into the next RUN unseen.
fn deep_check_snapshots(store: &Store, problems: &mut Vec<String>) -> Result<()> {
    use rbuild_image::rootfs::{SnapshotCheck, verify_snapshot};
    let dir = store.root().join("snapshots");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut unverifiable = 0;
    for name in names {
        let Ok(diff_id) = format!("sha256:{name}").parse::<rbuild_types::Digest>() else { continue };
        match verify_snapshot(store, &diff_id) {
            Ok(SnapshotCheck::Intact) => {}
            Ok(SnapshotCheck::Modified { actual }) => {
                problems.push(format!("snapshot {diff_id} was modified: its content now hashes to {actual}"))
            }
            Ok(SnapshotCheck::Unverifiable) => unverifiable += 1,
            Err(e) => problems.push(format!("snapshot {diff_id}: {:#}", anyhow::Error::from(e))),
        }
    }
    if unverifiable > 0 {
        println!("{unverifiable} snapshots unpacked from other builders' layers have no stored blob to verify against");
    }
    Ok(())
}

/// Opens the store alone, saying so when it has to wait for running builds.
fn open_exclusive(root: &Path) -> Result<Store> {
    if let Some(s) = crate::open_store_as(root, LockMode::TryExclusive)? {
        return Ok(s);
    }
    eprintln!("waiting for running builds to finish...");
    crate::open_store_as(root, LockMode::Exclusive)?
        .with_context(|| format!("opening the store at {} exclusively", root.display()))
}
