//! `--call targets` and `--call outline`: what a Dockerfile offers, read from its text alone (BuildKit's
//! `ListTargets` and `Outline`): the stages with their doc comments, and for one target the build arguments,
//! secrets and SSH agents it uses.
//!
//! Doc comments are BuildKit's: a comment line directly above `FROM ... AS name` or `ARG name` that starts with
//! the name and a space (`# build compiles the binary`) describes it. No base image is resolved, so what base
//! images' ONBUILD triggers would add is not listed (BuildKit lists it); everything else follows BuildKit.

use crate::convert::{ConvertError, ErrorKind};
use crate::instructions::{Instruction, Located, parse_instruction};
use crate::mounts::{MountType, parse_mount};
use crate::parser::{Ast, Node};
use crate::shell::{Lexer, NoEnv};
use rbuild_types::oci::Platform;
use std::collections::{BTreeMap, BTreeSet};

/// One stage, as `--call targets` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: Option<String>,
    pub description: String,
    /// The last stage, built without `--target`.
    pub default: bool,
    pub base: String,
    pub platform: Option<String>,
    pub line: usize,
}

/// A build argument the target uses, with its value for this build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlineArg {
    pub name: String,
    pub value: Option<String>,
    pub description: String,
    pub line: usize,
}

/// A secret or SSH agent a RUN mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlineMount {
    pub name: String,
    pub required: bool,
    pub line: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outline {
    pub name: Option<String>,
    pub description: String,
    pub args: Vec<OutlineArg>,
    pub secrets: Vec<OutlineMount>,
    pub ssh: Vec<OutlineMount>,
}

/// BuildKit's `getDocComment`.
fn doc_comment(comments: &[String], name: &str) -> String {
    if name.is_empty() {
        return String::new();
    }
    let prefix = format!("{name} ");
    comments.iter().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_default().to_string()
}

struct Parsed<'a> {
    /// Meta ARGs: (instruction, its node).
    meta: Vec<(Located, &'a Node)>,
    /// Stages: FROM, then the instructions with their nodes.
    stages: Vec<Vec<(Located, &'a Node)>>,
}

fn parse(ast: &Ast) -> Result<Parsed<'_>, ConvertError> {
    let mut p = Parsed { meta: Vec::new(), stages: Vec::new() };
    for node in &ast.root.children {
        let located = parse_instruction(node)?;
        if matches!(located.instruction, Instruction::From { .. }) {
            p.stages.push(vec![(located, node)]);
        } else if let Some(stage) = p.stages.last_mut() {
            stage.push((located, node));
        } else {
            p.meta.push((located, node));
        }
    }
    if p.stages.is_empty() {
        return Err(ConvertError::new(ErrorKind::Dockerfile, "the Dockerfile has no FROM instruction")
            .hint("start with FROM <image> or FROM scratch"));
    }
    Ok(p)
}

fn from_parts(stage: &[(Located, &Node)]) -> (Option<String>, String, Option<String>, usize, Vec<String>) {
    match stage.first() {
        Some((Located { instruction: Instruction::From { image, name, platform }, location, .. }, node)) => {
            (name.clone(), image.clone(), platform.clone(), location.start_line, node.prev_comment.clone())
        }
        _ => (None, String::new(), None, 0, Vec::new()),
    }
}

/// Every stage, in order (`--call targets`).
pub fn targets(ast: &Ast) -> Result<Vec<Target>, ConvertError> {
    let p = parse(ast)?;
    let n = p.stages.len();
    Ok(p.stages
        .iter()
        .enumerate()
        .map(|(i, stage)| {
            let (name, base, platform, line, comments) = from_parts(stage);
            Target {
                description: doc_comment(&comments, name.as_deref().unwrap_or_default()),
                name,
                default: i + 1 == n,
                base,
                platform,
                line,
            }
        })
        .collect())
}

/// What `target` (the last stage if `None`) uses: build arguments (with this build's values), secrets and SSH
/// agents, each once, in Dockerfile order (`--call outline`).
pub fn outline(
    ast: &Ast,
    build_args: &BTreeMap<String, String>,
    target: Option<&str>,
    platform: &Platform,
) -> Result<Outline, ConvertError> {
    let p = parse(ast)?;
    let lexer = Lexer::new(ast.escape);
    let names: Vec<Option<String>> = p.stages.iter().map(|s| from_parts(s).0).collect();
    let index = match target {
        None => p.stages.len() - 1,
        Some(t) => names.iter().rposition(|n| n.as_deref() == Some(&t.to_lowercase())).ok_or_else(|| {
            ConvertError::new(ErrorKind::Dockerfile, format!("target stage {t:?} could not be found"))
        })?,
    };
    // The global scope: platform ARGs, then the meta ARGs (build arguments win).
    let mut global: BTreeMap<String, String> = BTreeMap::new();
    let plat = crate::platform::format(platform);
    for (k, v) in [
        ("TARGETPLATFORM", &plat),
        ("BUILDPLATFORM", &plat),
        ("TARGETOS", &platform.os),
        ("TARGETARCH", &platform.architecture),
    ] {
        global.insert(k.to_string(), v.clone());
    }
    let mut meta: BTreeMap<String, OutlineArg> = BTreeMap::new();
    for (located, node) in &p.meta {
        if let Instruction::Arg(args) = &located.instruction {
            for (k, default) in args {
                let value = build_args
                    .get(k)
                    .cloned()
                    .or_else(|| default.as_ref().map(|d| lexer.process_word(d, &global).unwrap_or_else(|_| d.clone())));
                if let Some(v) = &value {
                    global.insert(k.clone(), v.clone());
                }
                let description = doc_comment(&node.prev_comment, k);
                meta.insert(
                    k.clone(),
                    OutlineArg { name: k.clone(), value, description, line: located.location.start_line },
                );
            }
        }
    }
    let by_name = |word: &str, before: usize| -> Option<usize> {
        let w = word.to_lowercase();
        names[..before]
            .iter()
            .rposition(|n| n.as_deref() == Some(&w))
            .or_else(|| w.parse::<usize>().ok().filter(|i| *i < before))
    };
    let mut out = Outline::default();
    let (name, _, _, _, comments) = from_parts(&p.stages[index]);
    out.description = doc_comment(&comments, name.as_deref().unwrap_or_default());
    out.name = name;
    let mut seen_args = BTreeSet::new();
    let mut seen_secrets = BTreeSet::new();
    let mut seen_ssh = BTreeSet::new();
    let mut queue = vec![index];
    let mut visited = BTreeSet::new();
    while let Some(i) = queue.pop() {
        if !visited.insert(i) {
            continue;
        }
        let (_, base, platform_expr, _, _) = from_parts(&p.stages[i]);
        for word in [Some(base.clone()), platform_expr].into_iter().flatten() {
            if let Ok(w) = lexer.process(&word, &global) {
                for m in &w.matched {
                    if let Some(a) = meta.get(m)
                        && seen_args.insert(m.clone())
                    {
                        out.args.push(a.clone());
                    }
                }
            }
        }
        let base = lexer.process_word(&base, &global).unwrap_or(base);
        queue.extend(by_name(&base, i));
        let mut ssh_index = 0;
        for (located, node) in &p.stages[i][1..] {
            let line = located.location.start_line;
            match &located.instruction {
                Instruction::Arg(args) => {
                    for (k, default) in args {
                        if !seen_args.insert(k.clone()) {
                            continue;
                        }
                        match (default, meta.get(k)) {
                            (None, Some(a)) if !build_args.contains_key(k) => out.args.push(a.clone()),
                            _ => out.args.push(OutlineArg {
                                name: k.clone(),
                                value: build_args.get(k).cloned().or_else(|| default.clone()),
                                description: doc_comment(&node.prev_comment, k),
                                line,
                            }),
                        }
                    }
                }
                Instruction::Copy(c) | Instruction::Add(c) => {
                    if let Some(from) = &c.from {
                        let from = lexer.process_word(from, &global).unwrap_or_else(|_| from.clone());
                        queue.extend(by_name(&from, p.stages.len()));
                    }
                }
                Instruction::Run(r) => {
                    for flag in &r.mounts {
                        let mut literal = |w: &str| lexer.process_word(w, &NoEnv).map_err(|e| e.to_string());
                        let Ok(spec) = parse_mount(flag, "/", ssh_index, &mut literal) else { continue };
                        match spec.typ {
                            MountType::Secret if seen_secrets.insert(spec.id.clone()) => {
                                out.secrets.push(OutlineMount { name: spec.id, required: spec.required, line });
                            }
                            MountType::Ssh => {
                                ssh_index += 1;
                                if seen_ssh.insert(spec.id.clone()) {
                                    out.ssh.push(OutlineMount { name: spec.id, required: spec.required, line });
                                }
                            }
                            _ => {
                                if let Some(from) = &spec.from {
                                    queue.extend(by_name(from, p.stages.len()));
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    out.args.sort_by_key(|a| a.line);
    out.secrets.sort_by_key(|s| s.line);
    out.ssh.sort_by_key(|s| s.line);
    Ok(out)
}
