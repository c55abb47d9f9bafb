//! `rbuild history [IMAGE]`: an image's layers and the instructions that made them, newest first, as `docker
//! history` prints them. Without IMAGE, the most recently created image in the store (by its config's `created`).

use crate::{Env, dir_size, open_store};
use anyhow::{Context as _, Result};
use rbuild_builder::human_size;
use rbuild_types::oci::ImageConfig;
use std::io::Write as _;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct HistoryArgs {
    /// Do not truncate the CREATED BY column
    #[arg(long)]
    no_trunc: bool,
    /// Only print the IDs of layers (the diff IDs of steps that made one; `<missing>` for the others)
    #[arg(short, long)]
    quiet: bool,
    /// Image name, image ID or ID prefix [default: the most recently created image]
    image: Option<String>,
}

pub fn run(env: &Env, args: HistoryArgs) -> Result<ExitCode> {
    let store = open_store(env)?;
    let rec = match &args.image {
        Some(name) => crate::images::find_one(&store, name)?,
        None => {
            let mut newest = None;
            for rec in store.tags()? {
                let created = read_config(&store, &rec).ok().and_then(|c| c.created).unwrap_or_default();
                if newest.as_ref().is_none_or(|(c, _)| created > *c) {
                    newest = Some((created, rec));
                }
            }
            newest.map(|(_, r)| r).context("the store has no images: build one, or name an image")?
        }
    };
    let config = read_config(&store, &rec)?;
    let mut layers = config.rootfs.diff_ids.iter();
    let mut rows = Vec::new();
    for h in &config.history {
        let layer = if h.empty_layer { None } else { layers.next() };
        let size = layer.map_or(0, |d| dir_size(&store.snapshot_path(d)));
        let mut by = h.created_by.clone().unwrap_or_default();
        if !args.no_trunc && by.chars().count() > 45 {
            by = by.chars().take(44).collect::<String>() + "…";
        }
        let id = layer.map_or_else(|| "<missing>".to_string(), |d| d.hex()[..12].to_string());
        rows.push((
            id,
            h.created.clone().unwrap_or_default(),
            by,
            human_size(size),
            h.comment.clone().unwrap_or_default(),
        ));
    }
    let mut out = std::io::stdout().lock();
    if !args.quiet {
        let _ = writeln!(out, "{:<14} {:<22} {:<46} {:>10} COMMENT", "LAYER", "CREATED", "CREATED BY", "SIZE");
    }
    for (id, created, by, size, comment) in rows.into_iter().rev() {
        let line = if args.quiet { id } else { format!("{id:<14} {created:<22} {by:<46} {size:>10} {comment}") };
        if writeln!(out, "{}", line.trim_end()).is_err() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_config(store: &rbuild_cache::Store, rec: &rbuild_cache::ImageRecord) -> Result<ImageConfig> {
    let bytes = store.read_blob(&rec.config)?;
    serde_json::from_slice(&bytes).with_context(|| format!("image config {}", rec.config))
}
