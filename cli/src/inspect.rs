//! `rbuild inspect [--format TEMPLATE] IMAGE`: by name, image ID or ID prefix.
//!
//! Without `--format` it prints rbuild's document (`Name`, `Id`, `ManifestDigest`, and `Config`, the image config
//! as stored). `--format` is evaluated (see [`crate::gotemplate`]) over the fields of `docker image inspect`, so
//! docker's templates work unchanged: `.Id`, `.RepoTags`, `.RepoDigests`, `.Created`, `.Author`,
//! `.Architecture`, `.Os`, `.Variant`, `.Config` (`.Config.Env`, `.Config.Cmd`, `.Config.Entrypoint`,
//! `.Config.Labels`, `.Config.WorkingDir`, `.Config.User`, `.Config.ExposedPorts`, `.Config.Volumes`),
//! `.RootFS.Type`, `.RootFS.Layers`, `.Size` (bytes of the unpacked layers) and `.History`.

use crate::gotemplate::Template;
use crate::{Env, image_size, open_store};
use anyhow::Result;
use serde_json::{Value, json};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Format the output with a Go template over docker's `image inspect` fields (e.g. '{{.Id}}',
    /// '{{json .Config.Labels}}', '{{index .Config.Labels "k"}}')
    #[arg(short, long)]
    format: Option<String>,
    /// Image name, image ID or ID prefix
    name: String,
}

pub fn run(env: &Env, args: InspectArgs) -> Result<ExitCode> {
    let template = args.format.as_deref().map(Template::parse).transpose()?;
    let store = open_store(env)?;
    let rec = crate::images::find_one(&store, &args.name)?;
    let config: Value = serde_json::from_slice(&store.read_blob(&rec.config)?)?;
    let Some(template) = template else {
        let doc = json!({"Name": rec.name, "Id": rec.config, "ManifestDigest": rec.manifest, "Config": config});
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    };
    let same: Vec<_> = store.tags()?.into_iter().filter(|r| r.config == rec.config).collect();
    let familiar = |n: &str| rbuild_image::export::familiar_name(n);
    let repo_digests: Vec<String> = same
        .iter()
        .filter_map(|r| {
            let name = familiar(&r.name);
            let repo = crate::images::split_tag(&name).0;
            r.manifest.as_ref().map(|m| format!("{repo}@{m}"))
        })
        .collect();
    let docker = json!({
        "Id": rec.config,
        "RepoTags": same.iter().map(|r| familiar(&r.name)).collect::<Vec<_>>(),
        "RepoDigests": repo_digests,
        "Created": config["created"],
        "Author": config.get("author").cloned().unwrap_or_else(|| "".into()),
        "Architecture": config["architecture"],
        "Os": config["os"],
        "Variant": config.get("variant").cloned().unwrap_or_else(|| "".into()),
        "Config": config["config"],
        "RootFS": {"Type": "layers", "Layers": config["rootfs"]["diff_ids"]},
        "Size": image_size(&store, &rec.config).unwrap_or(0),
        "History": config["history"],
    });
    let out = template.render(&docker)?;
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}
