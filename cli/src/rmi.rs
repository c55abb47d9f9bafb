//! `rbuild rmi [-f] IMAGE...`: remove names from the store, by name, image ID or ID prefix (as `docker rmi`).
//!
//! A name removes that name only. An ID removes the image's one name; when several names point at it, `-f` is
//! needed to remove them all (docker's "must be forced" rule). The layers stay until `rbuild prune` collects them.

use crate::{Env, open_store};
use anyhow::{Result, bail};
use rbuild_image::registry::ImageRef;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct RmiArgs {
    /// Remove every name of an image given by ID
    #[arg(short, long)]
    force: bool,
    /// Image names, image IDs or ID prefixes
    #[arg(required = true)]
    names: Vec<String>,
}

pub fn run(env: &Env, args: RmiArgs) -> Result<ExitCode> {
    let store = open_store(env)?;
    let mut failed = false;
    for arg in &args.names {
        let by_name = ImageRef::parse(arg).ok().map(|r| r.to_string()).filter(|n| matches!(store.tag(n), Ok(Some(_))));
        let records = match by_name {
            Some(name) => vec![name],
            None => match crate::images::find(&store, arg) {
                Ok(found) if found.len() > 1 && !args.force => {
                    let names: Vec<&str> = found.iter().map(|r| r.name.as_str()).collect();
                    eprintln!(
                        "error: image {arg} has {} names ({}): pass -f to remove them all, or name one",
                        names.len(),
                        names.join(", ")
                    );
                    failed = true;
                    continue;
                }
                Ok(found) => found.into_iter().map(|r| r.name).collect(),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    failed = true;
                    continue;
                }
            },
        };
        for name in records {
            store.remove_tag(&name)?;
            println!("Untagged: {name}");
        }
    }
    if failed {
        bail!("some images were not removed");
    }
    Ok(ExitCode::SUCCESS)
}
