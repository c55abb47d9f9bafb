//! `docker buildx build` flags that a CI pipeline passes and that rbuild maps onto its outputs: `--annotation`,
//! `--load`, `--attest` (as `--provenance`/`--sbom`), `--build-context`, `--builder`, `-D`, `--cgroup-parent`.
//!
//! A flag rbuild cannot honour yet is still parsed (never a clap usage error, which would break a pipeline with
//! exit 2 and a usage dump) and refused before anything is built, with a sentence that says what to do. Values
//! that switch a feature off (`--provenance=false`, `--attest type=sbom,disabled=true`) are accepted: rbuild attaches
//! no attestations, which is what they ask for.

use anyhow::{Result, bail};
use rbuild_image::index::IndexAnnotations;
use rbuild_types::oci::Platform;
use std::collections::BTreeMap;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct BuildxArgs {
    /// Add an annotation: KEY=VALUE or manifest:KEY=VALUE (the image manifests), manifest[os/arch]:KEY=VALUE (one
    /// platform's), and with several platforms index:, index-descriptor: and manifest-descriptor[os/arch]:, as
    /// buildx; repeatable
    #[arg(long = "annotation", value_name = "[TYPE[,TYPE][[os/arch]]:]KEY=VALUE")]
    pub annotations: Vec<String>,
    /// Also load the image into the local Docker daemon ($DOCKER_HOST, default unix:///var/run/docker.sock), as
    /// `docker load` does
    #[arg(long)]
    pub load: bool,
    /// An additional context: NAME=DIR, NAME=URL (Git or http(s) tarball) or NAME=docker-image://REF, usable as
    /// `COPY --from=NAME` (and `FROM NAME` for images); repeatable
    #[arg(long = "build-context", value_name = "NAME=DIR|URL|docker-image://REF")]
    pub build_contexts: Vec<String>,
    /// Attestation parameters: type=provenance[,mode=min|max] or type=sbom, with disabled=true to switch one off
    /// (the same as --provenance and --sbom)
    #[arg(long = "attest", value_name = "type=TYPE[,mode=MODE][,disabled=true]")]
    pub attest: Vec<String>,
    /// buildx's builder instance: rbuild has none (it builds in-process), so this is ignored with a warning
    #[arg(long, value_name = "NAME")]
    pub builder: Option<String>,
    /// buildx's debug logging: use RBUILD_LOG=debug instead (accepted, with a warning)
    #[arg(short = 'D', long)]
    pub debug: bool,
    /// The parent cgroup of RUN steps: not supported (an error)
    #[arg(long, value_name = "CGROUP")]
    pub cgroup_parent: Option<String>,
}

/// What the flags ask of the build's outputs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Requests {
    /// Annotations on the image manifest (one platform).
    pub manifest_annotations: BTreeMap<String, String>,
    /// Annotations of the image index and its parts (several platforms; one, when attestations make an index).
    pub index_annotations: IndexAnnotations,
    pub load: bool,
    /// `--attest type=provenance,...` as a `--provenance` value (`false`, `true`, `mode=max`).
    pub provenance: Option<String>,
    /// `--attest type=sbom,...` as an `--sbom` value.
    pub sbom: Option<String>,
}

impl BuildxArgs {
    /// Checks every flag before the build starts; `platforms` are the ones being built (none: the machine's).
    pub fn check(&self, platforms: &[Platform]) -> Result<Requests> {
        let (mut provenance, mut sbom) = (None, None);
        for spec in &self.attest {
            match parse_attest(spec)? {
                Attest::Provenance(v) => provenance = Some(v),
                Attest::Sbom(v) => sbom = Some(v),
            }
        }
        if let Some(parent) = &self.cgroup_parent {
            bail!("--cgroup-parent {parent}: not supported; RUN steps get a cgroup of their own under rbuild's");
        }
        if let Some(b) = &self.builder {
            eprintln!("warning: --builder {b} is ignored: rbuild builds in-process, without builder instances");
        }
        if self.debug {
            eprintln!("warning: --debug is ignored: set RBUILD_LOG=debug for rbuild's debug log");
        }
        let (manifest_annotations, index_annotations) = annotations(&self.annotations, platforms)?;
        Ok(Requests { manifest_annotations, index_annotations, load: self.load, provenance, sbom })
    }
}

fn is_false(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "false" | "0")
}

/// One `--attest`, as the value of the flag it stands for.
enum Attest {
    Provenance(String),
    Sbom(String),
}

/// `--attest type=provenance,mode=max` / `type=sbom,disabled=true` (buildx's CSV; `disabled` without a value is
/// true).
fn parse_attest(spec: &str) -> Result<Attest> {
    let (mut kind, mut disabled, mut mode) = (None, false, None);
    for field in spec.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        match field.split_once('=') {
            Some(("type", v)) => kind = Some(v.to_string()),
            Some(("disabled", v)) => disabled = !is_false(v),
            Some(("mode", v)) => mode = Some(v.to_string()),
            None if field == "disabled" => disabled = true,
            // buildx's generator=, builder-id= and the like: rbuild makes its own documents.
            _ => {}
        }
    }
    let value = |on: String| if disabled { "false".to_string() } else { on };
    match kind.as_deref() {
        Some("provenance") => Ok(Attest::Provenance(value(mode.map_or("true".into(), |m| format!("mode={m}"))))),
        Some("sbom") => Ok(Attest::Sbom(value("true".into()))),
        Some(other) => bail!("--attest {spec}: unknown attestation type {other:?} (provenance or sbom)"),
        None => bail!("--attest {spec}: type= is required (type=provenance or type=sbom)"),
    }
}

/// Where an `--annotation` goes (buildx's types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Manifest,
    ManifestDescriptor,
    Index,
    IndexDescriptor,
}

/// One `--annotation`, as buildx parses it: `[TYPE[,TYPE][\[PLATFORM\]]:]KEY=VALUE`, no type being `manifest`.
#[derive(Debug, PartialEq, Eq)]
struct Annotation {
    targets: Vec<Target>,
    platform: Option<Platform>,
    key: String,
    value: String,
}

fn parse_annotation(spec: &str) -> Result<Annotation> {
    let Some((key, value)) = spec.split_once('=') else {
        bail!("--annotation {spec:?}: expected KEY=VALUE");
    };
    let (types, key) = match key.split_once(':') {
        // A prefix is lowercase letters and '-' (and a platform): `org.example:thing` is a plain key.
        Some((prefix, rest)) if is_type_prefix(prefix) => (Some(prefix), rest),
        _ => (None, key),
    };
    if key.is_empty() {
        bail!("--annotation {spec:?}: the key is empty");
    }
    let (key, value) = (key.to_string(), value.to_string());
    let Some(types) = types else {
        return Ok(Annotation { targets: vec![Target::Manifest], platform: None, key, value });
    };
    let (types, platform) = match types.split_once('[') {
        Some((t, p)) => (t, Some(crate::outputs::parse_platform(p.trim_end_matches(']'))?)),
        None => (types, None),
    };
    let mut targets = Vec::new();
    for t in types.split(',') {
        targets.push(match t {
            "manifest" => Target::Manifest,
            "manifest-descriptor" => Target::ManifestDescriptor,
            "index" => Target::Index,
            "index-descriptor" => Target::IndexDescriptor,
            other => bail!(
                "--annotation {spec:?}: unknown annotation type {other:?} (manifest, manifest-descriptor, index, \
                 index-descriptor)"
            ),
        });
    }
    if platform.is_some() && targets.iter().any(|t| matches!(t, Target::Index | Target::IndexDescriptor)) {
        bail!("--annotation {spec:?}: a platform only selects manifests, not the index");
    }
    Ok(Annotation { targets, platform, key, value })
}

/// The `--annotation`s of a build for `platforms`: one platform's manifest annotations (an image with no index
/// has no other place for them), or a multi-platform image's, by where they go.
fn annotations(specs: &[String], platforms: &[Platform]) -> Result<(BTreeMap<String, String>, IndexAnnotations)> {
    let (mut manifest, mut index) = (BTreeMap::new(), IndexAnnotations::default());
    for spec in specs {
        let a = parse_annotation(spec)?;
        for t in &a.targets {
            let entry = (a.platform.clone(), a.key.clone(), a.value.clone());
            match t {
                Target::Manifest => index.manifest.push(entry),
                Target::ManifestDescriptor => index.manifest_descriptor.push(entry),
                Target::Index => {
                    index.index.insert(entry.1, entry.2);
                }
                Target::IndexDescriptor => {
                    index.index_descriptor.insert(entry.1, entry.2);
                }
            }
            if platforms.len() < 2 && *t != Target::Manifest {
                bail!(
                    "--annotation {spec:?}: index and descriptor annotations need an image index: build several \
                     --platform values, or use manifest:KEY=VALUE"
                );
            }
        }
        let this = platforms.first().cloned().unwrap_or_else(Platform::host);
        let mine = a.platform.as_ref().is_none_or(|p| (&p.os, &p.architecture) == (&this.os, &this.architecture));
        if platforms.len() < 2 && mine {
            manifest.insert(a.key, a.value);
        }
    }
    Ok((manifest, index))
}

fn is_type_prefix(prefix: &str) -> bool {
    let types = prefix.split('[').next().unwrap_or_default();
    !types.is_empty() && types.chars().all(|c| c.is_ascii_lowercase() || c == '-' || c == ',')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amd64() -> Platform {
        Platform { os: "linux".into(), architecture: "amd64".into(), variant: None }
    }

    #[test]
    fn annotations_parse_as_buildx() {
        let one = [amd64()];
        let ok = |s: &str| annotations(&[s.to_string()], &one).expect(s).0;
        let map = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(ok("org.opencontainers.image.title=app"), map("org.opencontainers.image.title", "app"));
        assert_eq!(ok("manifest:a=b=c"), map("a", "b=c"));
        assert_eq!(ok("manifest[linux/amd64]:k=v"), map("k", "v"));
        assert_eq!(ok("manifest[linux/arm64]:k=v"), BTreeMap::new(), "another platform's");
        assert_eq!(ok("com.example:k=v"), map("com.example:k", "v"));
        let err = annotations(&["index:k=v".to_string()], &one).expect_err("index");
        assert!(err.to_string().contains("need an image index"), "{err}");
        assert!(parse_annotation("novalue").is_err());
        assert!(parse_annotation("index[linux/amd64]:k=v").is_err());

        let arm64 = Platform { os: "linux".into(), architecture: "arm64".into(), variant: Some("v8".into()) };
        let specs: Vec<String> =
            ["index,manifest:a=1", "index-descriptor:b=2", "manifest-descriptor[linux/arm64]:c=3", "d=4"]
                .map(String::from)
                .to_vec();
        let (manifest, index) = annotations(&specs, &[amd64(), arm64.clone()]).expect("valid");
        assert!(manifest.is_empty());
        assert_eq!(index.index, map("a", "1"));
        assert_eq!(index.index_descriptor, map("b", "2"));
        assert_eq!(index.manifest, [(None, "a".into(), "1".into()), (None, "d".into(), "4".into())]);
        assert_eq!(index.manifest_descriptor, [(Some(arm64), "c".into(), "3".into())]);
    }

    #[test]
    fn attest_maps_to_the_provenance_and_sbom_flags() {
        let args = |attest: &[&str]| BuildxArgs {
            attest: attest.iter().map(|s| s.to_string()).collect(),
            ..BuildxArgs::default()
        };
        let r = args(&["type=sbom,disabled=true", "type=provenance,mode=max"]).check(&[amd64()]).expect("valid");
        assert_eq!((r.provenance.as_deref(), r.sbom.as_deref()), (Some("mode=max"), Some("false")));
        let r = args(&["type=provenance,disabled"]).check(&[amd64()]).expect("valid");
        assert_eq!(r.provenance.as_deref(), Some("false"));
        assert!(args(&["type=spdx"]).check(&[amd64()]).is_err());
        assert!(args(&["mode=max"]).check(&[amd64()]).is_err());
    }
}
