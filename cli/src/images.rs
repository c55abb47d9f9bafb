//! `rbuild images [-q] [--format F] [--filter K=V]`, and finding an image by name, ID or ID prefix for the
//! commands that take one (`rmi`, `inspect`, `history`).
//!
//! The rows and `--format` fields are docker's (`.ID`, `.Repository`, `.Tag`, `.Digest`, `.CreatedAt`, `.Size`),
//! so `docker images --format` lines work unchanged. Filters: `reference=PATTERN` (docker's glob on the short
//! name, `*` not crossing `/`), `label=KEY` or `label=KEY=VALUE`, and `dangling=true|false` (a store has no
//! untagged images, so `dangling=true` lists none).

use crate::gotemplate::Template;
use crate::{Env, image_size, open_store};
use anyhow::{Context as _, Result, bail};
use rbuild_builder::human_size;
use rbuild_cache::{ImageRecord, Store};
use rbuild_image::registry::ImageRef;
use rbuild_types::oci::ImageConfig;
use serde_json::{Value, json};
use std::io::Write as _;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ImagesArgs {
    /// Only print image IDs (each once)
    #[arg(short, long)]
    quiet: bool,
    /// Format each row with a Go template: {{.ID}}, {{.Repository}}, {{.Tag}}, {{.Digest}}, {{.CreatedAt}},
    /// {{.Size}}; `table ...` adds a header; `json` prints one JSON object per image
    #[arg(long)]
    format: Option<String>,
    /// Filter: reference=PATTERN, label=KEY[=VALUE], dangling=true|false; repeatable (all must match)
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    filters: Vec<String>,
    /// Also show the full image ID (sha256:...)
    #[arg(long)]
    no_trunc: bool,
}

/// An image as a row of `images`, with docker's field names.
fn row(store: &Store, rec: &ImageRecord, full_id: bool) -> Value {
    let short = rbuild_image::export::familiar_name(&rec.name);
    let (repository, tag) = split_tag(&short);
    let config: Option<ImageConfig> = store.read_blob(&rec.config).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let size = image_size(store, &rec.config).map(human_size).unwrap_or_else(|| "?".into());
    json!({
        "ID": if full_id { rec.config.to_string() } else { rec.config.hex()[..12].to_string() },
        "Repository": repository,
        "Tag": tag,
        "Digest": rec.manifest.as_ref().map_or_else(|| "<none>".to_string(), |d| d.to_string()),
        "CreatedAt": config.as_ref().and_then(|c| c.created.clone()).unwrap_or_default(),
        "Size": size,
        "Labels": config.and_then(|c| c.config.labels).unwrap_or_default(),
    })
}

/// `repo:tag` → (`repo`, `tag`); a digest reference has no tag.
pub fn split_tag(name: &str) -> (String, String) {
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_slash..].rfind(':') {
        Some(i) if !name.contains('@') => (name[..last_slash + i].to_string(), name[last_slash + i + 1..].to_string()),
        _ => (name.to_string(), "<none>".to_string()),
    }
}

/// docker's `path.Match`-style glob: `*` and `?` never match `/`.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pattern[1..], name) || (name.first().is_some_and(|c| *c != b'/') && glob(pattern, &name[1..]))
        }
        (Some(b'?'), Some(c)) if *c != b'/' => glob(&pattern[1..], &name[1..]),
        (Some(p), Some(c)) if p == c => glob(&pattern[1..], &name[1..]),
        _ => false,
    }
}

fn matches(filters: &[(String, String)], row: &Value) -> bool {
    filters.iter().all(|(k, v)| match k.as_str() {
        "reference" => {
            let repo = row["Repository"].as_str().unwrap_or_default();
            let full = format!("{repo}:{}", row["Tag"].as_str().unwrap_or_default());
            glob(v.as_bytes(), repo.as_bytes()) || glob(v.as_bytes(), full.as_bytes())
        }
        "label" => match v.split_once('=') {
            Some((key, want)) => row["Labels"][key].as_str() == Some(want),
            None => row["Labels"].get(v).is_some(),
        },
        "dangling" => v == "false",
        _ => false,
    })
}

fn parse_filters(filters: &[String]) -> Result<Vec<(String, String)>> {
    filters
        .iter()
        .map(|f| {
            let (k, v) = f.split_once('=').with_context(|| format!("--filter {f:?}: expected KEY=VALUE"))?;
            match k {
                "reference" | "label" => {}
                "dangling" if v == "true" || v == "false" => {}
                "dangling" => bail!("--filter {f:?}: dangling is true or false"),
                other => bail!("--filter {f:?}: unknown filter {other:?} (reference, label, dangling)"),
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

pub fn list(env: &Env, args: ImagesArgs) -> Result<ExitCode> {
    let filters = parse_filters(&args.filters)?;
    let template = match args.format.as_deref() {
        Some("json") => Some(Template::parse("{{json .}}")?),
        Some(f) => Some(Template::parse(f)?),
        None => None,
    };
    let store = open_store(env)?;
    let (tags, bad) = store.tags_checked()?;
    for e in bad {
        eprintln!("warning: {:#}", anyhow::Error::from(e));
    }
    let mut out = std::io::stdout().lock();
    let mut lines = Vec::new();
    match &template {
        Some(t) if t.table => lines.push(t.header()),
        None if !args.quiet => lines.push(format!("{:<60} {:<20} {:>10}", "NAME", "IMAGE ID", "SIZE")),
        _ => {}
    }
    let mut seen = std::collections::BTreeSet::new();
    for rec in &tags {
        let mut r = row(&store, rec, args.no_trunc);
        if !matches(&filters, &r) {
            continue;
        }
        if args.quiet {
            if seen.insert(r["ID"].as_str().unwrap_or_default().to_string()) {
                lines.push(r["ID"].as_str().unwrap_or_default().to_string());
            }
            continue;
        }
        match &template {
            Some(t) => {
                if let Value::Object(o) = &mut r {
                    o.remove("Labels");
                }
                lines.push(t.render(&r)?)
            }
            None => lines.push(format!(
                "{:<60} {:<20} {:>10}",
                rec.name,
                r["ID"].as_str().unwrap_or_default(),
                r["Size"].as_str().unwrap_or_default()
            )),
        }
    }
    for line in lines {
        // A closed pipe (`rbuild images | head -1`) ends the listing, successfully.
        if writeln!(out, "{line}").is_err() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every tag whose name, image ID or ID prefix (at least 4 hex digits, with or without `sha256:`) is `arg`.
/// A name matches only its own tag; an ID matches every tag of that image.
pub fn find(store: &Store, arg: &str) -> Result<Vec<ImageRecord>> {
    if let Ok(r) = ImageRef::parse(arg)
        && let Some(rec) = store.tag(&r.to_string())?
    {
        return Ok(vec![rec]);
    }
    let hex = arg.strip_prefix("sha256:").unwrap_or(arg);
    if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let hex = hex.to_ascii_lowercase();
        let found: Vec<ImageRecord> = store.tags()?.into_iter().filter(|r| r.config.hex().starts_with(&hex)).collect();
        let ids: std::collections::BTreeSet<_> = found.iter().map(|r| r.config.clone()).collect();
        if ids.len() > 1 {
            bail!("{arg} is the prefix of {} image IDs: give more digits", ids.len());
        }
        if !found.is_empty() {
            return Ok(found);
        }
    }
    bail!("no image named {arg} in the local store (by name, image ID or ID prefix)")
}

/// One image by name or ID (its first tag, for an ID).
pub fn find_one(store: &Store, arg: &str) -> Result<ImageRecord> {
    let mut found = find(store, arg)?;
    Ok(found.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_globs_do_not_cross_slashes() {
        assert!(glob(b"app*", b"app-1"));
        assert!(glob(b"team/*", b"team/app"));
        assert!(!glob(b"*", b"team/app"));
        assert!(glob(b"*/*:1", b"team/app:1"));
        assert!(!glob(b"ap?", b"app1"));
    }

    #[test]
    fn names_split_into_repository_and_tag() {
        assert_eq!(split_tag("app:1"), ("app".into(), "1".into()));
        assert_eq!(split_tag("localhost:5000/app:1"), ("localhost:5000/app".into(), "1".into()));
        assert_eq!(split_tag("localhost:5000/app"), ("localhost:5000/app".into(), "<none>".into()));
    }
}
