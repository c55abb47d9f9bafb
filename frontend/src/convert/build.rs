//! Building one stage: its base image or context vertex, its variables and history, and the steps it adds.

use super::*;
use crate::instructions::{Location, parse_instruction};
use crate::parser;
use crate::shell::EnvLookup;
use rbuild_solver::{CopyAction, FileAction, FileOp, Op, Vertex, VertexId};
use rbuild_types::oci::{ImageConfig, Platform};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

/// A stage's history: what it inherited from its parent stage, shared rather than copied (a chain of N stages
/// would otherwise copy N²/2 entries), and its own steps.
#[derive(Clone, Default)]
pub(super) struct HistoryLog {
    pub(super) inherited: Option<Rc<HistoryLog>>,
    pub(super) own: Vec<HistoryStep>,
}

impl HistoryLog {
    pub(super) fn push(&mut self, step: HistoryStep) {
        self.own.push(step);
    }

    /// Everything, oldest first; iterative, however long the chain of parents.
    pub(super) fn flatten(&self) -> Vec<HistoryStep> {
        let mut parts = vec![&self.own];
        let mut next = self.inherited.as_deref();
        while let Some(log) = next {
            parts.push(&log.own);
            next = log.inherited.as_deref();
        }
        parts.into_iter().rev().flatten().cloned().collect()
    }
}

impl Drop for HistoryLog {
    /// Unlinks the chain one parent at a time: the default drop would recurse once per ancestor.
    fn drop(&mut self) {
        let mut next = self.inherited.take();
        while let Some(rc) = next {
            match Rc::try_unwrap(rc) {
                Ok(mut log) => next = log.inherited.take(),
                Err(_) => break,
            }
        }
    }
}

#[derive(Clone)]
pub(super) struct StageState {
    pub(super) rootfs: VertexId,
    pub(super) config: ImageConfig,
    pub(super) history: HistoryLog,
    /// ARGs declared in this stage, in order, with their values (`None`: declared without a value). A redeclared
    /// ARG is listed again, as BuildKit 0.13 lists it in the `|N K=V` history prefix.
    pub(super) args: Vec<(String, Option<String>)>,
    /// Where the latest declaration of each ARG is in `args`.
    pub(super) arg_pos: HashMap<String, usize>,
    /// Where each variable is in `config.config.env` (its first entry).
    pub(super) env_pos: HashMap<String, usize>,
    pub(super) cmd_set: bool,
    pub(super) no_cache: bool,
    pub(super) checks: StageChecks,
    /// What the stage is built for: its base images are resolved for it and its RUN steps run as it.
    pub(super) platform: Platform,
}

impl StageState {
    pub(super) fn new(
        rootfs: VertexId,
        config: ImageConfig,
        history: Vec<HistoryStep>,
        no_cache: bool,
        platform: Platform,
    ) -> Self {
        let mut s = StageState {
            rootfs,
            config,
            history: HistoryLog { inherited: None, own: history },
            args: Vec::new(),
            arg_pos: HashMap::new(),
            env_pos: HashMap::new(),
            cmd_set: false,
            no_cache,
            checks: StageChecks::default(),
            platform,
        };
        for (i, e) in s.config.config.env.iter().flatten().enumerate() {
            s.env_pos.entry(env_key(e).to_string()).or_insert(i);
        }
        s
    }

    /// Declares (or redeclares) an ARG.
    pub(super) fn set_arg(&mut self, key: &str, value: Option<String>) {
        self.arg_pos.insert(key.to_string(), self.args.len());
        self.args.push((key.to_string(), value));
    }

    /// The latest declaration of each ARG, in order of those declarations.
    pub(super) fn current_args(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.args
            .iter()
            .enumerate()
            .filter(|(i, (k, _))| self.arg_pos.get(k) == Some(i))
            .map(|(_, (k, v))| (k.as_str(), v.as_deref()))
    }

    /// Sets an ENV variable: replaces its entry in place (BuildKit's `addEnv`) or appends one.
    pub(super) fn set_env(&mut self, key: &str, value: &str) {
        let env = self.config.config.env.get_or_insert_with(Vec::new);
        let entry = format!("{key}={value}");
        match self.env_pos.get(key) {
            Some(&i) if i < env.len() => env[i] = entry,
            _ => {
                self.env_pos.insert(key.to_string(), env.len());
                env.push(entry);
            }
        }
    }

    pub(super) fn has_env(&self, key: &str) -> bool {
        self.env_pos.contains_key(key)
    }

    /// Bytes held by the stage's variables: what a child stage copies.
    pub(super) fn variable_bytes(&self) -> usize {
        let env: usize = self.config.config.env.iter().flatten().map(String::len).sum();
        let args: usize = self.args.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, String::len)).sum();
        let labels: usize = self.config.config.labels.iter().flatten().map(|(k, v)| k.len() + v.len()).sum();
        env + args + labels
    }
}

/// The name part of a `K=V` environment entry.
pub(super) fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// The variables a word in a stage sees: its declared ARGs, overridden by its ENV. A view through the stage's
/// indexes, so that no instruction copies the whole environment.
pub(super) struct StageVars<'a>(pub(super) &'a StageState);

impl EnvLookup for StageVars<'_> {
    fn lookup(&self, name: &str) -> Option<&str> {
        let s = self.0;
        if let Some(&i) = s.env_pos.get(name)
            && let Some(e) = s.config.config.env.as_ref().and_then(|env| env.get(i))
        {
            return Some(e.split_once('=').map_or("", |(_, v)| v));
        }
        s.arg_pos.get(name).and_then(|&i| s.args.get(i)).and_then(|(_, v)| v.as_deref())
    }
}

/// The automatic platform ARGs, available without a value in the global scope: `TARGET*` of the target platform,
/// `BUILD*` of the machine's.
pub(super) fn platform_args(opts: &ConvertOptions) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (prefix, p) in [("TARGET", &opts.platform), ("BUILD", &opts.build_platform)] {
        // BuildKit's values are containerd's normalized form: `linux/arm64`, not `linux/arm64/v8`.
        let p = &crate::platform::normalize(p);
        let plat = crate::platform::format(p);
        let variant = p.variant.clone().unwrap_or_default();
        out.push((format!("{prefix}PLATFORM"), plat));
        out.push((format!("{prefix}OS"), p.os.clone()));
        out.push((format!("{prefix}ARCH"), p.architecture.clone()));
        out.push((format!("{prefix}VARIANT"), variant.clone()));
    }
    out
}

impl Converter<'_> {
    pub(super) fn image_vertex(
        &mut self,
        reference: &str,
        platform: &Platform,
        at: &Location,
    ) -> Result<(VertexId, ResolvedImage), ConvertError> {
        let table_key = (reference.to_string(), crate::platform::format(platform));
        if let Some(v) = self.images.get(&table_key) {
            return Ok(v.clone());
        }
        let resolved = self.resolver.resolve(reference, platform).map_err(|e| {
            let mut err = ConvertError::at(at, format!("failed to resolve base image {reference:?}: {e}"))
                .kind(ErrorKind::BaseImage { reference: reference.to_string() });
            err.source = Some(Arc::from(e));
            match self.stage_hint(reference) {
                Some(h) => err.hint(h),
                None => err,
            }
        })?;
        let v = self.add(Vertex {
            op: Op::Image { reference: resolved.reference.clone(), digest: resolved.digest.clone() },
            inputs: vec![],
            name: format!("[internal] load {}", resolved.reference),
            ignore_cache: false,
        });
        self.images.insert(table_key, (v, resolved.clone()));
        Ok((v, resolved))
    }

    /// A named local context (`--build-context NAME=DIR`), one vertex per name.
    pub(super) fn named_context_vertex(&mut self, name: &str) -> VertexId {
        let op = Op::Context { name: name.to_string() };
        if let Some(v) = self.graph.vertices.iter().position(|v| v.op == op) {
            return v;
        }
        self.graph.add(Vertex {
            op,
            inputs: vec![],
            name: format!("[internal] load build context {name}"),
            ignore_cache: false,
        })
    }

    pub(super) fn context_vertex(&mut self) -> VertexId {
        *self.context.get_or_insert_with(|| {
            self.graph.add(Vertex {
                op: Op::Context { name: "context".into() },
                inputs: vec![],
                name: "[internal] load build context".into(),
                ignore_cache: false,
            })
        })
    }

    pub(super) fn build_stage(&mut self, index: usize) -> Result<Rc<StageState>, ConvertError> {
        if let Some(s) = &self.built[index] {
            return Ok(s.clone());
        }
        if self.in_progress[index] {
            return Err(ConvertError::at(&self.stages[index].from, "circular dependency between stages"));
        }
        if self.nesting >= MAX_STAGE_NESTING {
            return Err(ConvertError::at(
                &self.stages[index].from,
                format!("stages depend on each other more than {MAX_STAGE_NESTING} levels deep"),
            )
            .kind(ErrorKind::Limit)
            .hint("a chain of ONBUILD triggers that copy from stages this long is not supported"));
        }
        self.nesting += 1;
        self.converting.push(index);
        let r = self.build_stage_inner(index);
        self.converting.pop();
        self.nesting -= 1;
        r
    }

    /// Adds a vertex to the graph; a step (not a source) is given the identity of the stage being converted, which
    /// the solver uses to find the step's previous run for `--explain-cache`.
    pub(super) fn add(&mut self, vertex: Vertex) -> VertexId {
        let is_source = matches!(vertex.op, Op::Scratch | Op::Image { .. } | Op::Context { .. });
        let v = self.graph.add(vertex);
        if !is_source && let Some(&stage) = self.converting.last() {
            let label = self.stage_name(stage);
            self.graph.set_stage(v, label);
        }
        v
    }

    pub(super) fn build_stage_inner(&mut self, index: usize) -> Result<Rc<StageState>, ConvertError> {
        self.in_progress[index] = true;
        let from_at = self.stages[index].from.clone();
        let raw_base = self.stages[index].base.clone();
        let base = self.expand(&raw_base, &self.global, &from_at)?;
        if base.is_empty() {
            // BuildKit's wording.
            return Err(ConvertError::at(&from_at, format!("base name ({raw_base}) should not be blank")));
        }
        // The stage's platform: `FROM --platform` (valid: `check_platforms` saw every stage before conversion
        // started), else the target's.
        let platform = match self.stages[index].platform.clone() {
            Some(p) => {
                let p = self.expand(&p, &self.global, &from_at)?;
                crate::platform::parse(&p).map_err(|e| ConvertError::at(&from_at, format!("FROM --platform: {e}")))?
            }
            None => self.opts.platform.clone(),
        };
        let no_cache = match &self.opts.no_cache {
            NoCache::None => false,
            NoCache::All => true,
            NoCache::Stages(names) => {
                let name = self.stages[index].name.clone().unwrap_or_default();
                names.iter().any(|n| n.eq_ignore_ascii_case(&name) || n == &index.to_string())
            }
        };
        let dir_context =
            self.find_stage(&base, index, &from_at)?.is_none() && self.opts.named_contexts.contains(&base);
        let mut state = if base.eq_ignore_ascii_case("scratch") || dir_context {
            // `FROM NAME` of a `--build-context NAME=DIR`: the directory's content is the root filesystem, with
            // the config of an empty image, as BuildKit gives a local context.
            let mut v =
                self.add(Vertex { op: Op::Scratch, inputs: vec![], name: "scratch".into(), ignore_cache: false });
            if dir_context {
                // A copy of the whole directory into one layer: the solver keys it by the files' content.
                let dir = self.named_context_vertex(&base);
                let copy = CopyAction {
                    src: 1,
                    sources: vec!["/".into()],
                    dest: "/".into(),
                    chown: None,
                    chmod: None,
                    extract_archives: false,
                    keep_owner: false,
                    excludes: Vec::new(),
                    dockerignore: Vec::new(),
                    parents: false,
                };
                v = self.add(Vertex {
                    op: Op::File(FileOp { dest: Some(0), actions: vec![FileAction::Copy(copy)] }),
                    inputs: vec![v, dir],
                    name: format!("[internal] load build context {base} as the root filesystem"),
                    ignore_cache: false,
                });
            }
            let config = ImageConfig {
                architecture: platform.architecture.clone(),
                os: platform.os.clone(),
                variant: platform.variant.clone(),
                config: rbuild_types::oci::ContainerConfig {
                    env: Some(vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()]),
                    // BuildKit's `emptyImage` (checked against the reference): "/" for scratch.
                    working_dir: Some("/".into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            StageState::new(v, config, vec![], no_cache, platform)
        } else if let Some(parent) = self.find_stage(&base, index, &from_at)? {
            let p = self.build_stage(parent)?;
            // The child holds its own copy of everything the parent's variables hold; the history is shared.
            self.charge(p.variable_bytes(), &from_at)?;
            StageState {
                rootfs: p.rootfs,
                config: p.config.clone(),
                history: HistoryLog { inherited: Some(Rc::new(p.history.clone())), own: Vec::new() },
                args: Vec::new(),
                arg_pos: HashMap::new(),
                env_pos: p.env_pos.clone(),
                cmd_set: false,
                no_cache,
                checks: StageChecks { workdir_set: p.checks.workdir_set, ..StageChecks::default() },
                platform: p.platform.clone(),
            }
        } else {
            let (v, img) = self.image_vertex(&base, &platform, &from_at)?;
            self.check_base_platform(&base, &img.config, &platform, &from_at);
            let mut config = img.config.clone();
            let history = config.history.drain(..).map(HistoryStep::Base).collect();
            config.rootfs = Default::default();
            if config.config.env.is_none() {
                config.config.env =
                    Some(vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()]);
            }
            StageState::new(v, config, history, no_cache, platform)
        };
        // WorkingDir stays as the base image left it (often unset) unless the Dockerfile sets one, as BuildKit
        // writes it; steps still run in "/" when it is unset.
        // ONBUILD triggers of the base run first, and are not inherited further.
        let triggers = state.config.config.on_build.take().unwrap_or_default();
        for trigger in triggers {
            let ast = parser::parse(&trigger).map_err(|e| {
                ConvertError::at(&from_at, format!("invalid ONBUILD trigger {trigger:?} in the base image: {e}"))
            })?;
            for node in &ast.root.children {
                let mut located = parse_instruction(node).map_err(|e| {
                    ConvertError::at(&from_at, format!("invalid ONBUILD trigger {trigger:?}: {}", e.message))
                })?;
                located.location = from_at.clone();
                self.dispatch(index, &mut state, &located)?;
            }
        }
        let instructions = self.stages[index].instructions.clone();
        for located in &instructions {
            self.dispatch(index, &mut state, located)?;
        }
        self.in_progress[index] = false;
        let state = Rc::new(state);
        self.built[index] = Some(state.clone());
        Ok(state)
    }
}
