//! SLSA provenance v1 for each platform's image, in BuildKit's shape, attached as an in-toto attestation
//! (see `rbuild_image::index`), so `docker buildx imagetools inspect --format '{{json .Provenance}}'` reads it.
//!
//! `mode=min` records what was built and from what: the Dockerfile's name, the target, the platform, the base
//! images by digest, the times. `mode=max` adds the build arguments and the steps' commands. Nothing secret goes
//! in: secrets never reach the graph, build arguments with secret-like names (BuildKit's `SecretsUsedInArgOrEnv`
//! rule) are left out, and steps are recorded by their arguments, never their environment.

use rbuild_image::index::Attestation;
use rbuild_solver::{Graph, Op, VertexId};
use rbuild_types::Digest;
use rbuild_types::oci::Platform;
use std::collections::BTreeMap;

pub const PREDICATE_SLSA_V1: &str = "https://slsa.dev/provenance/v1";
const BUILD_TYPE: &str = "https://github.com/moby/buildkit/blob/master/docs/attestations/slsa-definitions.md";

/// `--provenance mode=min|max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvenanceMode {
    Min,
    Max,
}

/// What one platform's provenance says.
pub(crate) struct Facts<'a> {
    pub mode: ProvenanceMode,
    pub dockerfile: &'a str,
    pub target: Option<&'a str>,
    pub platform: &'a Platform,
    pub build_args: &'a BTreeMap<String, String>,
    /// The merged graph and this platform's vertices in it.
    pub graph: &'a Graph,
    pub vertices: &'a [VertexId],
    /// The manifest digest of a base image, by its config digest, where known.
    pub manifest_of: &'a dyn Fn(&Digest) -> Option<Digest>,
    pub started: chrono::DateTime<chrono::Utc>,
    pub finished: chrono::DateTime<chrono::Utc>,
    pub invocation: &'a str,
}

fn percent_platform(p: &Platform) -> String {
    rbuild_frontend::platform::format(&rbuild_frontend::platform::normalize(p)).replace('/', "%2F")
}

/// The SLSA v1 provenance of one platform's image.
pub(crate) fn provenance(f: &Facts) -> Attestation {
    let platform = rbuild_frontend::platform::format(&rbuild_frontend::platform::normalize(f.platform));
    let mut materials = Vec::new();
    let mut steps = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for &v in f.vertices {
        let Some(vertex) = f.graph.vertices.get(v) else { continue };
        match &vertex.op {
            Op::Image { reference, digest } => {
                let named = (f.manifest_of)(digest).unwrap_or_else(|| digest.clone());
                if seen.insert((reference.clone(), named.clone())) {
                    materials.push(serde_json::json!({
                        "uri": format!("pkg:docker/{reference}?platform={}", percent_platform(f.platform)),
                        "digest": {"sha256": named.hex()},
                    }));
                }
            }
            Op::Exec(exec) if f.mode == ProvenanceMode::Max => {
                steps.push(serde_json::json!({"id": format!("step{v}"), "exec": {"args": exec.args, "cwd": exec.cwd}}))
            }
            _ => {}
        }
    }
    let mut args = serde_json::Map::new();
    if let Some(t) = f.target {
        args.insert("target".into(), t.into());
    }
    if f.mode == ProvenanceMode::Max {
        for (k, v) in f.build_args {
            if !rbuild_frontend::lint::is_secret_name(k) {
                args.insert(format!("build-arg:{k}"), v.clone().into());
            }
        }
    }
    let mut internal = serde_json::json!({ "builderPlatform": rbuild_frontend::platform::format(&Platform::host()) });
    if f.mode == ProvenanceMode::Max {
        internal["buildConfig"] = serde_json::json!({ "llbDefinition": steps });
    }
    let time = |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let predicate = serde_json::json!({
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "configSource": {"path": f.dockerfile},
                "request": {
                    "frontend": "dockerfile.v0",
                    "args": args,
                    "locals": [{"name": "context"}, {"name": "dockerfile"}],
                    "platform": platform,
                },
            },
            "internalParameters": internal,
            "resolvedDependencies": materials,
        },
        "runDetails": {
            "builder": {"id": ""},
            "metadata": {
                "invocationID": f.invocation,
                "startedOn": time(&f.started),
                "finishedOn": time(&f.finished),
                "buildkit_completeness": {"request": true, "resolvedDependencies": true},
                "buildkit_hermetic": false,
                "buildkit_reproducible": false,
            },
        },
    });
    Attestation { predicate_type: PREDICATE_SLSA_V1.into(), predicate }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbuild_solver::Vertex;

    #[test]
    fn records_bases_by_manifest_and_never_secret_like_args() {
        let mut graph = Graph::default();
        let config = Digest::of(b"config");
        let manifest = Digest::of(b"manifest");
        graph.add(Vertex {
            op: Op::Image { reference: "docker.io/library/busybox:1".into(), digest: config.clone() },
            inputs: vec![],
            name: "load".into(),
            ignore_cache: false,
        });
        let args: BTreeMap<String, String> =
            [("VERSION".to_string(), "1.2".to_string()), ("GITHUB_TOKEN".to_string(), "hunter2".to_string())].into();
        let platform = rbuild_frontend::platform::parse("linux/arm64/v8").unwrap();
        let found = manifest.clone();
        let manifest_of = move |c: &Digest| (*c == config).then(|| found.clone());
        let now = chrono::Utc::now();
        let facts = |mode| Facts {
            mode,
            dockerfile: "Dockerfile",
            target: None,
            platform: &platform,
            build_args: &args,
            graph: &graph,
            vertices: &[0],
            manifest_of: &manifest_of,
            started: now,
            finished: now,
            invocation: "x",
        };
        for mode in [ProvenanceMode::Min, ProvenanceMode::Max] {
            let a = provenance(&facts(mode));
            let text = a.predicate.to_string();
            assert_eq!(a.predicate_type, PREDICATE_SLSA_V1);
            assert!(!text.contains("hunter2") && !text.contains("GITHUB_TOKEN"), "{text}");
            let dep = &a.predicate["buildDefinition"]["resolvedDependencies"][0];
            assert_eq!(dep["uri"], "pkg:docker/docker.io/library/busybox:1?platform=linux%2Farm64");
            assert_eq!(dep["digest"]["sha256"], manifest.hex());
            assert_eq!(text.contains("build-arg:VERSION"), mode == ProvenanceMode::Max, "{text}");
        }
    }
}
