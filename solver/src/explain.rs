//! Why a step missed the cache: `rbuild build --explain-cache`.
//!
//! A key is a digest, and a digest cannot say what changed. So whenever a step runs, the solver keeps what went
//! into its key ([`StepInputs`]: the op as JSON, its inputs' keys and names, and for context copies the digest of
//! every selected file) under a *step identity* that survives edits of the instruction itself: the stage label of
//! the step's name (`[build]`) plus its depth in the stage's chain of steps. When the same step misses later, the
//! two records are compared field by field. Recording happens only when a step runs (which costs far more than a
//! small JSON write), so an unchanged rebuild pays nothing; the price is that a step that went back to an older,
//! still-cached state is compared with the newest record rather than the one it hit last.

use rbuild_types::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One input of a step as it was when the step last ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRef {
    pub name: String,
    pub key: Digest,
}

/// Everything that went into a step's cache key, kept so a later miss can be explained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepInputs {
    pub key: Digest,
    /// The step's progress name (its instruction as written).
    pub name: String,
    /// The op, encoded as in the cache key.
    pub op: serde_json::Value,
    pub inputs: Vec<InputRef>,
    /// Content digests of what each copy selected from a directory.
    pub content: Vec<Digest>,
    /// Per copy from a directory: every selected path and the digest of its entry (metadata and bytes).
    #[serde(default)]
    pub files: Vec<Vec<(String, Digest)>>,
}

/// One reason a step ran instead of coming from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissReason {
    /// `--no-cache` or `--no-cache-filter` asked for it.
    NoCacheRequested,
    /// Nothing is known about an earlier run of this step.
    NoRecord,
    /// The key is the one recorded, but its result is gone (pruned).
    ResultRemoved,
    /// The instruction (or its expanded form) changed.
    Instruction { before: String, after: String, fields: Vec<String> },
    /// A variable the step sees (build arg or ENV) changed; `None` means unset.
    Variable { name: String, before: Option<String>, after: Option<String> },
    /// An input (the previous step or a stage copied from) has a different key.
    Input { name: String },
    /// Files selected by a copy changed.
    Files { changed: Vec<String>, added: Vec<String>, removed: Vec<String> },
    /// No remote cache source (`--cache-from`) had the step's key, nor a record of the step from another build.
    NotInSources,
    /// A remote cache source had this step from another build (a near match), which differed in these ways.
    Source { source: String, reasons: Vec<MissReason> },
}

impl std::fmt::Display for MissReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn list(f: &mut std::fmt::Formatter<'_>, what: &str, items: &[String]) -> std::fmt::Result {
            const SHOWN: usize = 5;
            write!(f, "{what}: {}", items.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", "))?;
            if items.len() > SHOWN {
                write!(f, " and {} more", items.len() - SHOWN)?;
            }
            Ok(())
        }
        match self {
            MissReason::NoCacheRequested => write!(f, "the cache was disabled for this step (--no-cache)"),
            MissReason::NoRecord => write!(f, "no earlier build of this step is recorded"),
            MissReason::ResultRemoved => write!(f, "nothing changed, but the cached result was pruned"),
            MissReason::Instruction { before, after, .. } if before != after => {
                write!(f, "instruction changed: {before:?} -> {after:?}")
            }
            MissReason::Instruction { fields, .. } => {
                write!(f, "the expanded instruction changed ({})", fields.join(", "))
            }
            MissReason::Variable { name, before, after } => {
                let show = |v: &Option<String>| v.as_ref().map_or_else(|| "unset".to_string(), |v| format!("{v:?}"));
                write!(f, "variable {name} changed: {} -> {}", show(before), show(after))
            }
            MissReason::Input { name } => write!(f, "its input changed: {name}"),
            MissReason::NotInSources => write!(f, "no cache source has its key or this step from another build"),
            MissReason::Source { source, reasons } if reasons.iter().all(|r| *r == MissReason::ResultRemoved) => {
                write!(f, "cache source {source} has this step with the same inputs but not its result")
            }
            MissReason::Source { source, reasons } => {
                let reasons: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
                write!(f, "cache source {source} has this step from another build: {}", reasons.join("; "))
            }
            MissReason::Files { changed, added, removed } => {
                let mut parts = Vec::new();
                for (what, items) in [("changed", changed), ("added", added), ("removed", removed)] {
                    if !items.is_empty() {
                        parts.push((what, items));
                    }
                }
                if parts.is_empty() {
                    return write!(f, "the selected files changed");
                }
                write!(f, "files ")?;
                for (i, (what, items)) in parts.into_iter().enumerate() {
                    if i > 0 {
                        write!(f, "; ")?;
                    }
                    list(f, what, items)?;
                }
                Ok(())
            }
        }
    }
}

/// The identity of a step across builds: the stage the frontend says it belongs to ([`crate::Graph::stage`]), and
/// its depth in the chain of steps (0 for a source). Stable when an instruction is edited; shifts when a step is
/// inserted before it.
pub fn step_identity(stage: &str, depth: usize) -> String {
    format!("[{stage}]#{depth}")
}

fn env_map(op: &serde_json::Value) -> Option<BTreeMap<String, String>> {
    let env = op.get("exec")?.get("env")?.as_array()?;
    Some(
        env.iter()
            .filter_map(|e| e.as_str())
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (e.to_string(), String::new()),
            })
            .collect(),
    )
}

/// The fields of two ops that differ (top-level fields of the op's body), leaving out `env` for exec ops.
fn changed_fields(before: &serde_json::Value, after: &serde_json::Value) -> Vec<String> {
    let body = |v: &serde_json::Value| -> Option<(String, serde_json::Map<String, serde_json::Value>)> {
        let (kind, body) = v.as_object()?.iter().next()?;
        Some((kind.clone(), body.as_object()?.clone()))
    };
    match (body(before), body(after)) {
        (Some((kb, b)), Some((ka, a))) if kb == ka => {
            let mut names: Vec<String> = b.keys().chain(a.keys()).cloned().collect();
            names.sort();
            names.dedup();
            names.retain(|n| !(kb == "exec" && n == "env") && b.get(n) != a.get(n));
            names
        }
        _ if before != after => vec!["kind".to_string()],
        _ => Vec::new(),
    }
}

/// Why `now` missed, given the record of the step's previous run.
pub fn explain(prev: &StepInputs, now: &StepInputs) -> Vec<MissReason> {
    if prev.key == now.key {
        return vec![MissReason::ResultRemoved];
    }
    let mut reasons = Vec::new();
    let fields = changed_fields(&prev.op, &now.op);
    if !fields.is_empty() {
        reasons.push(MissReason::Instruction { before: prev.name.clone(), after: now.name.clone(), fields });
    }
    if let (Some(b), Some(a)) = (env_map(&prev.op), env_map(&now.op)) {
        let mut names: Vec<&String> = b.keys().chain(a.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            if b.get(name) != a.get(name) {
                reasons.push(MissReason::Variable {
                    name: name.clone(),
                    before: b.get(name).cloned(),
                    after: a.get(name).cloned(),
                });
            }
        }
    }
    if prev.content != now.content {
        let (mut changed, mut added, mut removed) = (Vec::new(), Vec::new(), Vec::new());
        let empty = Vec::new();
        for i in 0..prev.files.len().max(now.files.len()) {
            let b: BTreeMap<&String, &Digest> =
                prev.files.get(i).unwrap_or(&empty).iter().map(|(p, d)| (p, d)).collect();
            let a: BTreeMap<&String, &Digest> =
                now.files.get(i).unwrap_or(&empty).iter().map(|(p, d)| (p, d)).collect();
            for (p, d) in &a {
                match b.get(p) {
                    None => added.push((*p).clone()),
                    Some(old) if old != d => changed.push((*p).clone()),
                    Some(_) => {}
                }
            }
            removed.extend(b.keys().filter(|p| !a.contains_key(*p)).map(|p| (*p).clone()));
        }
        reasons.push(MissReason::Files { changed, added, removed });
    }
    for (i, input) in now.inputs.iter().enumerate() {
        if prev.inputs.get(i).is_none_or(|p| p.key != input.key) {
            reasons.push(MissReason::Input { name: input.name.clone() });
        }
    }
    if reasons.is_empty() {
        // Same op, inputs and content, different key: the key encoding itself changed (a new rbuild version).
        reasons.push(MissReason::NoRecord);
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{ExecOp, Network, Op};

    fn step(name: &str, env: &[&str], input: &[u8], files: Vec<(&str, &[u8])>) -> StepInputs {
        let op = Op::Exec(ExecOp {
            args: vec!["sh".into(), "-c".into(), name.into()],
            env: env.iter().map(|s| s.to_string()).collect(),
            cwd: "/".into(),
            user: String::new(),
            network: Network::Host,
            mounts: vec![],
            settings: Vec::new(),
            hostname: String::new(),
            platform: None,
            insecure: false,
        });
        let files: Vec<(String, Digest)> = files.into_iter().map(|(p, d)| (p.to_string(), Digest::of(d))).collect();
        let content = if files.is_empty() { vec![] } else { vec![Digest::of(format!("{files:?}").as_bytes())] };
        let op = serde_json::to_value(&op).unwrap();
        let key = Digest::of(format!("{op}{input:?}{content:?}").as_bytes());
        StepInputs {
            key,
            name: format!("[build] RUN {name}"),
            op,
            inputs: vec![InputRef { name: "[build] FROM base".into(), key: Digest::of(input) }],
            content,
            files: if files.is_empty() { vec![] } else { vec![files] },
        }
    }

    #[test]
    fn identity_is_the_stage_and_the_depth() {
        assert_ne!(step_identity("build", 3), step_identity("test", 3));
        assert_ne!(step_identity("build", 3), step_identity("build", 4));
        assert_eq!(step_identity("", 0), "[]#0");
    }

    #[test]
    fn names_changed_instruction_variable_input_and_files() {
        let a = step("make", &["A=1", "B=2"], b"base1", vec![("src/a.c", b"1"), ("src/b.c", b"2")]);
        let b = step("make", &["A=1", "B=3", "C=4"], b"base1", vec![("src/a.c", b"1"), ("src/b.c", b"2")]);
        assert_eq!(
            explain(&a, &b),
            vec![
                MissReason::Variable { name: "B".into(), before: Some("2".into()), after: Some("3".into()) },
                MissReason::Variable { name: "C".into(), before: None, after: Some("4".into()) },
            ]
        );
        let c = step("make all", &["A=1", "B=2"], b"base2", vec![("src/a.c", b"1"), ("src/c.c", b"3")]);
        let reasons = explain(&a, &c);
        assert!(matches!(&reasons[0], MissReason::Instruction { before, after, fields }
                if before == "[build] RUN make" && after == "[build] RUN make all" && fields == &["args"]));
        assert_eq!(
            reasons[1],
            MissReason::Files { changed: vec![], added: vec!["src/c.c".into()], removed: vec!["src/b.c".into()] }
        );
        assert_eq!(reasons[2], MissReason::Input { name: "[build] FROM base".into() });
        assert_eq!(reasons.len(), 3);
        let d = step("make", &["A=1", "B=2"], b"base1", vec![("src/a.c", b"9"), ("src/b.c", b"2")]);
        assert_eq!(
            explain(&a, &d),
            vec![MissReason::Files { changed: vec!["src/a.c".into()], added: vec![], removed: vec![] }]
        );
        assert_eq!(explain(&a, &a), vec![MissReason::ResultRemoved]);
    }

    #[test]
    fn reasons_read_as_sentences() {
        let r =
            MissReason::Files { changed: (0..7).map(|i| format!("f{i}")).collect(), added: vec![], removed: vec![] };
        assert_eq!(r.to_string(), "files changed: f0, f1, f2, f3, f4 and 2 more");
        let v = MissReason::Variable { name: "V".into(), before: None, after: Some("x".into()) };
        assert_eq!(v.to_string(), "variable V changed: unset -> \"x\"");
    }
}
