//! `docker buildx build` flags that a CI pipeline passes and that rbuild maps onto its outputs: `--annotation`,
//! `--load`, `--attest` (as `--provenance`/`--sbom`), `--build-context`, `--builder`, `-D`, `--cgroup-parent`.
//!
//! A flag rbuild cannot honour yet is still parsed (never a clap usage error, which would break a pipeline with
//! exit 2 and a usage dump) and refused before anything is built, with a sentence that says what to do. Values
//! that switch a feature off (`--provenance=false`, `--attest type=sbom,disabled=true`) are accepted: rbuild attaches
//! no attestations, which is what they ask for.

use anyhow::{Result, bail};
use rbuild_types::oci::Platform;
use std::collections::BTreeMap;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct BuildxArgs {
    /// Add an annotation to the image manifest: KEY=VALUE, manifest:KEY=VALUE or manifest[os/arch]:KEY=VALUE;
    /// repeatable (index and descriptor annotations are refused: rbuild annotates the image manifests only)
    #[arg(long = "annotation", value_name = "[manifest:]KEY=VALUE")]
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
    /// Annotations on the image manifest.
    pub manifest_annotations: BTreeMap<String, String>,
    pub load: bool,
    /// `--attest type=provenance,...` as a `--provenance` value (`false`, `true`, `mode=max`).
    pub provenance: Option<String>,
    /// `--attest type=sbom,...` as an `--sbom` value.
    pub sbom: Option<String>,
}

impl BuildxArgs {
    /// Checks every flag before the build starts; `platform` is the one being built.
    pub fn check(&self, platform: &Platform) -> Result<Requests> {
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
        let mut manifest_annotations = BTreeMap::new();
        for a in &self.annotations {
            if let Some((k, v)) = parse_annotation(a, platform)? {
                manifest_annotations.insert(k, v);
            }
        }
        Ok(Requests { manifest_annotations, load: self.load, provenance, sbom })
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

/// One `--annotation`, as buildx parses it: `[TYPE[,TYPE][\[PLATFORM\]]:]KEY=VALUE`. Returns the manifest
/// annotation, or `None` when it is for another platform than the one built.
fn parse_annotation(spec: &str, platform: &Platform) -> Result<Option<(String, String)>> {
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
    let Some(types) = types else { return Ok(Some((key.to_string(), value.to_string()))) };
    let (types, wanted_platform) = match types.split_once('[') {
        Some((t, p)) => (t, Some(p.trim_end_matches(']'))),
        None => (types, None),
    };
    for t in types.split(',') {
        match t {
            "manifest" => {}
            "index" | "index-descriptor" | "manifest-descriptor" => bail!(
                "--annotation {spec:?}: {t} annotations are not supported yet (rbuild annotates the image \
                 manifests, not the index of a multi-platform image or its descriptors); use manifest:KEY=VALUE"
            ),
            other => bail!("--annotation {spec:?}: unknown annotation type {other:?} (manifest)"),
        }
    }
    if let Some(p) = wanted_platform {
        let p = crate::outputs::parse_platform(p)?;
        if (p.os.as_str(), p.architecture.as_str()) != (platform.os.as_str(), platform.architecture.as_str()) {
            return Ok(None);
        }
    }
    Ok(Some((key.to_string(), value.to_string())))
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
        let p = amd64();
        let ok = |s: &str| parse_annotation(s, &p).expect(s);
        assert_eq!(
            ok("org.opencontainers.image.title=app"),
            Some(("org.opencontainers.image.title".into(), "app".into()))
        );
        assert_eq!(ok("manifest:a=b=c"), Some(("a".into(), "b=c".into())));
        assert_eq!(ok("manifest[linux/amd64]:k=v"), Some(("k".into(), "v".into())));
        assert_eq!(ok("manifest[linux/arm64]:k=v"), None, "another platform's");
        assert_eq!(ok("com.example:k=v"), Some(("com.example:k".into(), "v".into())));
        let err = parse_annotation("index:k=v", &p).expect_err("index");
        assert!(err.to_string().contains("not supported"), "{err}");
        assert!(parse_annotation("novalue", &p).is_err());
    }

    #[test]
    fn attest_maps_to_the_provenance_and_sbom_flags() {
        let args = |attest: &[&str]| BuildxArgs {
            attest: attest.iter().map(|s| s.to_string()).collect(),
            ..BuildxArgs::default()
        };
        let r = args(&["type=sbom,disabled=true", "type=provenance,mode=max"]).check(&amd64()).expect("valid");
        assert_eq!((r.provenance.as_deref(), r.sbom.as_deref()), (Some("mode=max"), Some("false")));
        let r = args(&["type=provenance,disabled"]).check(&amd64()).expect("valid");
        assert_eq!(r.provenance.as_deref(), Some("false"));
        assert!(args(&["type=spdx"]).check(&amd64()).is_err());
        assert!(args(&["mode=max"]).check(&amd64()).is_err());
    }
}
