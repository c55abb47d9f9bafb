//! Conversion: typed stages → a build graph for the target stage, plus its image config and history.
//!
//! Only the stages the target needs are converted (and so only their base images are resolved): a broken stage
//! that nothing uses cannot fail a build. Expansion happens here because which variables a word sees depends on
//! where it stands: ARGs before the first FROM are visible to FROM lines only, a stage sees the ARGs it declares
//! and its ENV, and ENV wins over ARG.
//!
//! The Dockerfile is untrusted input, so conversion is bounded in time, stack and memory:
//! - a stage's variables are looked up through indexes, never copied per instruction, so ENV/ARG handling is
//!   linear in the number of lines;
//! - stages are converted in dependency order found up front (FROM and `COPY --from` are known from the global
//!   ARGs alone), so a chain of a thousand `FROM sN AS sN+1` stages needs no recursion; only references that are
//!   known late (`COPY --from` in an ONBUILD trigger of a base image) recurse, at most [`MAX_STAGE_NESTING`]
//!   deep;
//! - every byte that expansion adds, and every copy of a stage's environment (inherited by a child stage, handed
//!   to a RUN), is charged to one budget of [`MAX_VARIABLE_BYTES`] for the whole conversion.

use crate::instructions::{Command, CopyInstr, HealthcheckInstr, Instruction, Located, Location, parse_instruction};
use crate::lint::{Check, Lint};
use crate::parser::{self, Ast};
use crate::shell::{EnvLookup, Lexer};
use rbuild_solver::{CopyAction, ExecOp, FileAction, FileOp, Graph, Network, Op, Vertex, VertexId};
use rbuild_types::Digest;
use rbuild_types::oci::{Healthcheck, History, ImageConfig, Platform};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;

mod checks;
pub use checks::CheckReport;
use checks::StageChecks;

/// How deeply stage conversions may nest through references found only while converting (`COPY --from` in an
/// ONBUILD trigger of a base image); references known up front never nest.
pub const MAX_STAGE_NESTING: usize = 16;

/// The bytes a conversion may spend on variable values beyond the Dockerfile's own text: growth by expansion,
/// environments inherited by child stages and copied into RUN steps (256 MiB).
pub const MAX_VARIABLE_BYTES: usize = 256 << 20;

/// A base image, resolved.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The canonical reference (e.g. `docker.io/library/busybox:latest`).
    pub reference: String,
    /// The manifest digest (its identity for cache keys).
    pub digest: Digest,
    pub config: ImageConfig,
}

/// Looks up base images; the CLI implements it over the store and registries, tests with a table.
pub trait ImageResolver {
    fn resolve(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<ResolvedImage, Box<dyn std::error::Error + Send + Sync>>;
}

/// The build arg that names the RUN containers' host (BuildKit's `dockerui` reads it the same way): it needs no
/// ARG, never reaches the environment, and is part of every RUN's key (see `ExecOp::hostname`).
pub const SANDBOX_HOSTNAME_ARG: &str = "BUILDKIT_SANDBOX_HOSTNAME";

#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub build_args: BTreeMap<String, String>,
    /// The stage to build (case-insensitive name or index); the last stage if `None`.
    pub target: Option<String>,
    /// The target platform: what `TARGETPLATFORM` names and what stages without `FROM --platform` are built for.
    pub platform: Platform,
    /// The platform of the machine that builds: what `BUILDPLATFORM` names. RUN steps of stages for another
    /// platform carry theirs in [`ExecOp::platform`](rbuild_solver::ExecOp), so the executor emulates them.
    pub build_platform: Platform,
    /// Stages whose steps ignore the cache (`--no-cache` = all).
    pub no_cache: NoCache,
    /// `.dockerignore` patterns, applied to every read of the build context.
    pub context_excludes: Vec<String>,
    /// Names of local directories given as named contexts (`--build-context NAME=DIR`): `COPY --from=NAME` reads
    /// the directory (an `Op::Context` of that name) instead of an image. Image named contexts
    /// (`docker-image://`) need nothing here: the image resolver maps their names.
    pub named_contexts: std::collections::BTreeSet<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NoCache {
    #[default]
    None,
    All,
    Stages(Vec<String>),
}

/// One entry of the image history, completed after the build knows which steps made layers.
#[derive(Debug, Clone)]
pub enum HistoryStep {
    /// Inherited from the base image as is.
    Base(History),
    /// A step that may have made a layer: it did if `output` has more layers than `input`.
    Layer { created_by: String, input: VertexId, output: VertexId },
    /// A step that only changed the config.
    Meta { created_by: String },
}

/// What to build and what the image will say.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    pub graph: Graph,
    /// The vertex whose output is the target stage's root filesystem.
    pub target: VertexId,
    /// The target's config (`rootfs` and `history` are filled in by the caller from the results).
    pub config: ImageConfig,
    pub history: Vec<HistoryStep>,
    pub warnings: Vec<String>,
    /// Build-check findings ([`crate::lint`]), for the CLI to print with their source lines.
    pub checks: Vec<Check>,
    /// The Dockerfile lines each vertex comes from, so a failing step can be shown in its source.
    pub locations: BTreeMap<VertexId, Location>,
}

/// Why a Dockerfile cannot be converted, with where it is. `kind` tells the caller what to do about it (fix the
/// Dockerfile, check the registry, raise a limit, grant an entitlement); `source` is the cause, when another
/// component's error is behind it.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConvertError {
    pub kind: ErrorKind,
    pub message: String,
    pub hint: Option<String>,
    pub location: Option<Location>,
    #[source]
    pub source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// What kind of problem a [`ConvertError`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The Dockerfile is wrong as written: syntax, an unknown stage, a cycle, a bad flag value.
    Dockerfile,
    /// A base image could not be resolved (the registry, the network or the store said no).
    BaseImage { reference: String },
    /// A bound on the work a Dockerfile may ask for was exceeded (variable sizes, nesting).
    Limit,
    /// A build check failed and the Dockerfile asked for checks to be errors (`# check=error=true`).
    Check,
    /// The build needs an entitlement it was not granted (`--allow`).
    Entitlement,
}

impl PartialEq for ConvertError {
    /// Equal when they say the same thing at the same place; the source is not compared.
    fn eq(&self, other: &Self) -> bool {
        (&self.kind, &self.message, &self.hint, &self.location)
            == (&other.kind, &other.message, &other.hint, &other.location)
    }
}

impl Eq for ConvertError {}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl ConvertError {
    /// An error of `kind` with no location (the whole Dockerfile, or the request).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ConvertError { kind, message: message.into(), hint: None, location: None, source: None }
    }
    /// A mistake in the Dockerfile at `location`.
    pub(crate) fn at(location: &Location, message: impl Into<String>) -> Self {
        ConvertError { location: Some(location.clone()), ..ConvertError::new(ErrorKind::Dockerfile, message) }
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn located(mut self, location: Option<Location>) -> Self {
        self.location = location;
        self
    }
    fn kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }
}

impl From<crate::instructions::InstructionError> for ConvertError {
    fn from(e: crate::instructions::InstructionError) -> Self {
        ConvertError { hint: e.hint, location: Some(e.location), ..ConvertError::new(ErrorKind::Dockerfile, e.message) }
    }
}

struct Stage {
    name: Option<String>,
    base: String,
    platform: Option<String>,
    from: Location,
    instructions: Vec<Located>,
}

/// A stage's history: what it inherited from its parent stage, shared rather than copied (a chain of N stages
/// would otherwise copy N²/2 entries), and its own steps.
#[derive(Clone, Default)]
struct HistoryLog {
    inherited: Option<Rc<HistoryLog>>,
    own: Vec<HistoryStep>,
}

impl HistoryLog {
    fn push(&mut self, step: HistoryStep) {
        self.own.push(step);
    }

    /// Everything, oldest first; iterative, however long the chain of parents.
    fn flatten(&self) -> Vec<HistoryStep> {
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
struct StageState {
    rootfs: VertexId,
    config: ImageConfig,
    history: HistoryLog,
    /// ARGs declared in this stage, in order, with their values (`None`: declared without a value). A redeclared
    /// ARG is listed again, as BuildKit 0.13 lists it in the `|N K=V` history prefix.
    args: Vec<(String, Option<String>)>,
    /// Where the latest declaration of each ARG is in `args`.
    arg_pos: HashMap<String, usize>,
    /// Where each variable is in `config.config.env` (its first entry).
    env_pos: HashMap<String, usize>,
    cmd_set: bool,
    no_cache: bool,
    checks: StageChecks,
    /// What the stage is built for: its base images are resolved for it and its RUN steps run as it.
    platform: Platform,
}

impl StageState {
    fn new(
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
    fn set_arg(&mut self, key: &str, value: Option<String>) {
        self.arg_pos.insert(key.to_string(), self.args.len());
        self.args.push((key.to_string(), value));
    }

    /// The latest declaration of each ARG, in order of those declarations.
    fn current_args(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.args
            .iter()
            .enumerate()
            .filter(|(i, (k, _))| self.arg_pos.get(k) == Some(i))
            .map(|(_, (k, v))| (k.as_str(), v.as_deref()))
    }

    /// Sets an ENV variable: replaces its entry in place (BuildKit's `addEnv`) or appends one.
    fn set_env(&mut self, key: &str, value: &str) {
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

    fn has_env(&self, key: &str) -> bool {
        self.env_pos.contains_key(key)
    }

    /// Bytes held by the stage's variables: what a child stage copies.
    fn variable_bytes(&self) -> usize {
        let env: usize = self.config.config.env.iter().flatten().map(String::len).sum();
        let args: usize = self.args.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, String::len)).sum();
        let labels: usize = self.config.config.labels.iter().flatten().map(|(k, v)| k.len() + v.len()).sum();
        env + args + labels
    }
}

/// The name part of a `K=V` environment entry.
fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// The variables a word in a stage sees: its declared ARGs, overridden by its ENV. A view through the stage's
/// indexes, so that no instruction copies the whole environment.
struct StageVars<'a>(&'a StageState);

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
fn platform_args(opts: &ConvertOptions) -> Vec<(String, String)> {
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

struct Converter<'a> {
    opts: &'a ConvertOptions,
    resolver: &'a dyn ImageResolver,
    lexer: Lexer,
    stages: Vec<Stage>,
    /// Values of the ARGs declared before the first FROM (after --build-arg overrides).
    meta_args: BTreeMap<String, String>,
    /// The scope FROM lines and `COPY --from` see: the platform ARGs and the meta ARGs.
    global: BTreeMap<String, String>,
    /// Converted stages; shared, since a stage named by `COPY --from` needs only its root filesystem.
    built: Vec<Option<Rc<StageState>>>,
    /// Stage names (lowercase) to indexes; with duplicate names, the last stage.
    names: HashMap<String, usize>,
    /// Stage names (lowercase) to the indexes of every stage of that name, ascending.
    all_names: HashMap<String, Vec<usize>>,
    in_progress: Vec<bool>,
    /// How many stage conversions are under way inside each other.
    nesting: usize,
    /// The stages being converted, innermost last.
    converting: Vec<usize>,
    /// Bytes charged against [`MAX_VARIABLE_BYTES`].
    spent: Cell<usize>,
    lint: Lint,
    /// `.dockerignore` as a matcher, for CopyIgnoredFile (none without one).
    ignore_matcher: Option<rbuild_types::patterns::PatternMatcher>,
    /// Names of the ARGs declared before the first FROM, with or without a value.
    declared_meta_args: BTreeSet<String>,
    graph: Graph,
    context: Option<VertexId>,
    /// Images by reference and platform (`os/arch[/variant]`).
    images: BTreeMap<(String, String), (VertexId, ResolvedImage)>,
    used_args: BTreeSet<String>,
    warnings: Vec<String>,
    locations: BTreeMap<VertexId, Location>,
}

/// Converts a parsed Dockerfile into a build plan for its target stage.
pub fn convert(ast: &Ast, opts: &ConvertOptions, resolver: &dyn ImageResolver) -> Result<BuildPlan, ConvertError> {
    let mut c = Converter::new(ast, opts, resolver)?;
    let target = c.target_index()?;
    // Dependencies first, so that converting a stage finds the stages it names already converted.
    for i in c.static_order(target) {
        c.build_stage(i)?;
    }
    let state = Rc::unwrap_or_clone(c.build_stage(target)?);
    let unused: Vec<&str> = opts
        .build_args
        .keys()
        .filter(|name| {
            !c.used_args.contains(*name)
                && !rbuild_solver::key::PROXY_VARS.contains(&name.as_str())
                && name.as_str() != crate::lint::CHECK_BUILD_ARG
        })
        .filter(|name| name.as_str() != SANDBOX_HOSTNAME_ARG)
        .map(String::as_str)
        .collect();
    if !unused.is_empty() {
        c.warnings.push(format!("[Warning] One or more build-args [{}] were not consumed", unused.join(" ")));
    }
    if let Some(e) = c.lint.error() {
        return Err(e);
    }
    Ok(BuildPlan {
        graph: c.graph,
        target: state.rootfs,
        config: state.config,
        history: state.history.flatten(),
        warnings: c.warnings,
        checks: c.lint.checks,
        locations: c.locations,
    })
}

/// The images converting `ast` for `opts.target` will ask the resolver for, as far as they are known before
/// converting: the FROM lines of the stages the target needs, their `COPY --from` and their `RUN --mount=from=`
/// sources that are not stages, expanded with the global ARGs exactly as conversion expands them. The caller
/// resolves them (network and store I/O, concurrently) and hands conversion the answers, so that conversion stays
/// pure. A reference known only during conversion (a mount source named by a stage variable, an ONBUILD trigger
/// of a base image) is asked for by [`convert`] through its resolver; the caller resolves it then and converts
/// again. Errors are left to conversion, which reports them at their line. With `every_stage`, the images of every
/// stage, as [`check`] converts them all.
pub fn image_references(ast: &Ast, opts: &ConvertOptions, every_stage: bool) -> Vec<String> {
    struct Unresolved;
    impl ImageResolver for Unresolved {
        fn resolve(&self, r: &str, _: &Platform) -> Result<ResolvedImage, Box<dyn std::error::Error + Send + Sync>> {
            Err(format!("{r} is not resolved").into())
        }
    }
    let Ok(c) = Converter::new(ast, opts, &Unresolved) else { return Vec::new() };
    let Ok(target) = c.target_index() else { return Vec::new() };
    let stages = if every_stage && opts.target.is_none() {
        (0..c.stages.len()).collect()
    } else {
        let mut stages = c.static_order(target);
        stages.push(target);
        stages
    };
    let mut out = BTreeSet::new();
    for index in stages {
        c.static_images(index, &mut out);
    }
    out.into_iter().collect()
}

/// Runs the build checks without building (`--call check`): converts every stage (or, with a target, the stages
/// it needs), resolving base images, and returns what the checks found; an error that stops conversion is
/// returned next to the findings made before it, as BuildKit's lint request does.
pub fn check(ast: &Ast, opts: &ConvertOptions, resolver: &dyn ImageResolver) -> CheckReport {
    let mut c = match Converter::new(ast, opts, resolver) {
        Ok(c) => c,
        Err(error) => return CheckReport { checks: Vec::new(), error: Some(error) },
    };
    let result = (|| {
        let order: Vec<usize> = match &opts.target {
            None => (0..c.stages.len()).collect(),
            Some(_) => {
                let t = c.target_index()?;
                c.static_order(t).into_iter().chain([t]).collect()
            }
        };
        for i in order {
            c.build_stage(i)?;
        }
        Ok::<(), ConvertError>(())
    })();
    let error = result.err().or_else(|| c.lint.error());
    CheckReport { checks: c.lint.checks, error }
}

impl<'a> Converter<'a> {
    fn new(ast: &Ast, opts: &'a ConvertOptions, resolver: &'a dyn ImageResolver) -> Result<Self, ConvertError> {
        let check_arg = opts.build_args.get(crate::lint::CHECK_BUILD_ARG).map(String::as_str);
        let mut c = Converter {
            opts,
            resolver,
            lexer: Lexer::new(ast.escape),
            stages: Vec::new(),
            meta_args: BTreeMap::new(),
            global: BTreeMap::new(),
            built: Vec::new(),
            names: HashMap::new(),
            all_names: HashMap::new(),
            in_progress: Vec::new(),
            nesting: 0,
            converting: Vec::new(),
            spent: Cell::new(0),
            lint: Lint::new(ast, check_arg)?,
            ignore_matcher: None,
            declared_meta_args: BTreeSet::new(),
            graph: Graph::default(),
            context: None,
            images: BTreeMap::new(),
            used_args: BTreeSet::new(),
            warnings: Vec::new(),
            locations: BTreeMap::new(),
        };
        if !opts.context_excludes.is_empty() {
            c.ignore_matcher = rbuild_types::patterns::PatternMatcher::new(&opts.context_excludes).ok();
        }
        if let Some(w) = syntax_warning(ast) {
            c.warnings.push(w);
        }
        crate::lint::syntax::check(ast, &mut c.lint);
        c.split_stages(ast)?;
        c.check_from_lines(ast);
        c.check_platforms()?;
        Ok(c)
    }

    /// The images stage `index` names that can be known without converting it (see [`image_references`]).
    fn static_images(&self, index: usize, out: &mut BTreeSet<String>) {
        let expand = |w: &str| self.lexer.process_word(w, &self.global).ok();
        let is_stage = |name: &str| {
            name.eq_ignore_ascii_case("scratch")
                || self.all_names.contains_key(&name.to_lowercase())
                || name.parse::<usize>().is_ok()
        };
        let stage = &self.stages[index];
        out.extend(expand(&stage.base).filter(|b| !b.is_empty() && !is_stage(b)));
        for located in &stage.instructions {
            match &located.instruction {
                Instruction::Copy(c) => {
                    out.extend(c.from.as_deref().and_then(expand).filter(|f| !f.is_empty() && !is_stage(f)));
                }
                Instruction::Run(r) => {
                    for flag in &r.mounts {
                        let mut literal =
                            |w: &str| self.lexer.process_word(w, &crate::shell::NoEnv).map_err(|e| e.to_string());
                        if let Ok(spec) = crate::mounts::parse_mount(flag, "/", 0, &mut literal)
                            && matches!(spec.typ, crate::mounts::MountType::Bind | crate::mounts::MountType::Cache)
                            && let Some(from) = spec.from.filter(|f| !f.is_empty() && !is_stage(f))
                        {
                            out.insert(from);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

impl Converter<'_> {
    fn split_stages(&mut self, ast: &Ast) -> Result<(), ConvertError> {
        let mut global: BTreeMap<String, String> = platform_args(self.opts).into_iter().collect();
        for node in &ast.root.children {
            let located = parse_instruction(node)?;
            match &located.instruction {
                Instruction::From { image, name, platform } => {
                    if let Some(n) = name {
                        // BuildKit builds with a warning: the last stage of a name is the one `--from`,
                        // `--target` and later FROM lines mean.
                        if n.parse::<usize>().is_ok() || !valid_stage_name(n) {
                            return Err(ConvertError::at(&located.location, format!("invalid stage name {n:?}")).hint(
                                "stage names start with a letter and contain letters, digits, '-', '_' and '.'",
                            ));
                        }
                    }
                    if let Some(n) = name {
                        self.names.insert(n.clone(), self.stages.len());
                        self.all_names.entry(n.clone()).or_default().push(self.stages.len());
                    }
                    self.stages.push(Stage {
                        name: name.clone(),
                        base: image.clone(),
                        platform: platform.clone(),
                        from: located.location.clone(),
                        instructions: Vec::new(),
                    });
                }
                Instruction::Arg(args) if self.stages.is_empty() => {
                    for (k, default) in args {
                        self.declared_meta_args.insert(k.clone());
                        let value = match self.opts.build_args.get(k) {
                            Some(v) => {
                                self.used_args.insert(k.clone());
                                Some(v.clone())
                            }
                            None => match default {
                                Some(d) => Some(self.expand(d, &global, &located.location)?),
                                None => None,
                            },
                        };
                        if let Some(v) = value {
                            self.charge(v.len(), &located.location)?;
                            global.insert(k.clone(), v.clone());
                            self.meta_args.insert(k.clone(), v);
                        }
                    }
                }
                _ if self.stages.is_empty() => {
                    return Err(ConvertError::at(
                        &located.location,
                        format!("{} before the first FROM", keyword(&located.original)),
                    )
                    .hint("only ARG can come before the first FROM"));
                }
                _ => {
                    if let Some(stage) = self.stages.last_mut() {
                        stage.instructions.push(located);
                    }
                }
            }
        }
        if self.stages.is_empty() {
            return Err(ConvertError::new(ErrorKind::Dockerfile, "the Dockerfile has no FROM instruction")
                .hint("start with FROM <image> or FROM scratch"));
        }
        self.built = vec![None; self.stages.len()];
        self.in_progress = vec![false; self.stages.len()];
        self.global = global;
        Ok(())
    }

    fn target_index(&self) -> Result<usize, ConvertError> {
        match &self.opts.target {
            None => Ok(self.stages.len() - 1),
            Some(t) => {
                let t = t.to_lowercase();
                self.names.get(&t).copied().ok_or_else(|| {
                    let names: Vec<&str> = self.stages.iter().filter_map(|s| s.name.as_deref()).collect();
                    let hint = match crate::suggest(&t, &names) {
                        Some(s) => format!("did you mean {s:?}?"),
                        None => format!("stages are: {}", names.join(", ")),
                    };
                    ConvertError::new(ErrorKind::Dockerfile, format!("target stage {t:?} could not be found"))
                        .hint(hint)
                })
            }
        }
    }

    /// Charges `bytes` against [`MAX_VARIABLE_BYTES`]; the error names the instruction that went over.
    fn charge(&self, bytes: usize, at: &Location) -> Result<(), ConvertError> {
        let spent = self.spent.get().saturating_add(bytes);
        self.spent.set(spent);
        if spent > MAX_VARIABLE_BYTES {
            return Err(ConvertError::at(
                at,
                format!("variable values in this Dockerfile exceed {} MiB", MAX_VARIABLE_BYTES >> 20),
            )
            .kind(ErrorKind::Limit)
            .hint("expansions, environments inherited by stages and handed to RUN steps all count; a variable is probably doubled or copied many times"));
        }
        Ok(())
    }

    /// Expands one word; what expansion adds to it is charged to the budget.
    fn expand(&self, word: &str, env: &dyn EnvLookup, at: &Location) -> Result<String, ConvertError> {
        let r = self
            .lexer
            .process_word(word, env)
            .map_err(|e| ConvertError::at(at, format!("failed to expand {}: {e}", short(word))))?;
        self.charge(r.len().saturating_sub(word.len()), at)?;
        Ok(r)
    }

    /// Like [`Converter::expand`], split into words.
    fn expand_words(&self, word: &str, env: &dyn EnvLookup, at: &Location) -> Result<Vec<String>, ConvertError> {
        let r = self
            .lexer
            .process_words(word, env)
            .map_err(|e| ConvertError::at(at, format!("failed to expand {}: {e}", short(word))))?;
        self.charge(r.iter().map(String::len).sum::<usize>().saturating_sub(word.len()), at)?;
        Ok(r)
    }

    /// Validates every stage's `FROM --platform` as BuildKit does before converting anything: the value, expanded
    /// with the global ARGs, must be one platform that containerd can parse.
    fn check_platforms(&mut self) -> Result<(), ConvertError> {
        for i in 0..self.stages.len() {
            let Some(p) = self.stages[i].platform.clone() else { continue };
            let at = self.stages[i].from.clone();
            let value = self.expand(&p, &self.global, &at)?;
            if value.is_empty() {
                return Err(ConvertError::at(&at, format!("empty platform value from expression {p}"))
                    .hint("FROM --platform=<os>/<arch>[/<variant>], e.g. linux/amd64 or $BUILDPLATFORM"));
            }
            if let Err(e) = crate::platform::parse(&value) {
                return Err(ConvertError::at(&at, format!("failed to parse platform {p}: {e}"))
                    .hint("FROM --platform=<os>/<arch>[/<variant>], e.g. linux/amd64 or $BUILDPLATFORM"));
            }
        }
        Ok(())
    }

    /// The stages `target` needs that can be found without converting anything (FROM a stage, `COPY --from`, and
    /// `RUN --mount=from=` with no variables), in an order where each comes after the stages it needs. Found with
    /// an explicit stack: a chain of any length takes no recursion. References that are errors are left out, and
    /// a cycle gives no order at all; converting finds and reports them at their line.
    fn static_order(&self, target: usize) -> Vec<usize> {
        let mut order = Vec::new();
        let mut state = vec![0u8; self.stages.len()]; // 0: new, 1: on the stack, 2: done
        let mut stack: Vec<(usize, Vec<usize>)> = vec![(target, self.static_deps(target, true))];
        state[target] = 1;
        while let Some((node, deps)) = stack.last_mut() {
            let node = *node;
            match deps.pop() {
                Some(d) if state[d] == 0 => {
                    state[d] = 1;
                    let dd = self.static_deps(d, true);
                    stack.push((d, dd));
                }
                // A cycle: leave the order to conversion, which reports the cycle at the line that closes it.
                Some(d) if state[d] == 1 => return Vec::new(),
                Some(_) => {}
                None => {
                    stack.pop();
                    state[node] = 2;
                    if node != target {
                        order.push(node);
                    }
                }
            }
        }
        order
    }

    /// The stages stage `index` names in ways known before converting it (see [`Converter::static_order`]);
    /// with `earlier_only`, only those defined before it (a later one is an error when converting).
    fn static_deps(&self, index: usize, earlier_only: bool) -> Vec<usize> {
        let stage = &self.stages[index];
        let by_name = |name: &str| {
            let lower = name.to_lowercase();
            self.names.get(&lower).copied().or_else(|| name.parse::<usize>().ok())
        };
        let expand = |w: &str| self.lexer.process_word(w, &self.global).ok();
        let mut deps = Vec::new();
        let base = expand(&stage.base).unwrap_or_default();
        let parent = match self.all_names.get(&base.to_lowercase()) {
            Some(all) => all.partition_point(|&i| i < index).checked_sub(1).map(|p| all[p]),
            None => base.parse::<usize>().ok().filter(|i| *i < index),
        };
        deps.extend(parent);
        for located in &stage.instructions {
            match &located.instruction {
                Instruction::Copy(c) => {
                    if let Some(i) = c.from.as_deref().and_then(expand).as_deref().and_then(by_name)
                        && (i < index || !earlier_only)
                    {
                        deps.push(i);
                    }
                }
                Instruction::Run(r) => {
                    for flag in &r.mounts {
                        let mut literal =
                            |w: &str| self.lexer.process_word(w, &crate::shell::NoEnv).map_err(|e| e.to_string());
                        if let Ok(spec) = crate::mounts::parse_mount(flag, "/", 0, &mut literal)
                            && let Some(i) = spec.from.as_deref().and_then(by_name).filter(|i| *i < index)
                        {
                            deps.push(i);
                        }
                    }
                }
                _ => {}
            }
        }
        // Popped from the end: reverse, so that stages are converted in the order the Dockerfile names them.
        deps.retain(|i| *i < self.stages.len() && *i != index);
        deps.reverse();
        deps
    }

    /// A stage referred to by `--from`/`FROM`: a name (case-insensitive) or an index of an earlier stage.
    fn find_stage(&self, reference: &str, current: usize, at: &Location) -> Result<Option<usize>, ConvertError> {
        let lower = reference.to_lowercase();
        if let Some(all) = self.all_names.get(&lower) {
            // The last stage of that name defined before this one, as BuildKit finds it while adding stages.
            let before = all.partition_point(|&i| i < current);
            if before > 0 {
                return Ok(Some(all[before - 1]));
            }
            return Err(ConvertError::at(
                at,
                format!("stage {reference:?} is used before it is defined (or by itself)"),
            )
            .hint(format!(
                "stage {reference:?} starts on line {}; a stage can only use earlier stages",
                self.stages[all[0]].from.start_line
            )));
        }
        if let Ok(i) = reference.parse::<usize>() {
            if i >= current {
                return Err(ConvertError::at(at, format!("stage index {i} is not an earlier stage"))
                    .hint(format!("stage indexes start at 0; this is stage {current}")));
            }
            return Ok(Some(i));
        }
        Ok(None)
    }

    /// A stage named by `COPY --from`: unlike FROM it may be defined later (BuildKit allows that); the stage
    /// itself, or one whose conversion is under way (a cycle), is an error at the referring line.
    fn find_stage_from(&self, reference: &str, current: usize, at: &Location) -> Result<Option<usize>, ConvertError> {
        let lower = reference.to_lowercase();
        let found = match self.names.get(&lower) {
            Some(&i) => Some(i),
            None => match reference.parse::<usize>() {
                Ok(i) if i < self.stages.len() => Some(i),
                Ok(i) => {
                    return Err(ConvertError::at(at, format!("invalid stage index {i}"))
                        .hint(format!("stages are numbered from 0 to {}", self.stages.len() - 1)));
                }
                Err(_) => None,
            },
        };
        if let Some(i) = found
            && (i == current || self.in_progress[i] || (i > current && self.reaches(i, current)))
        {
            return Err(ConvertError::at(at, format!("circular dependency detected on stage: {reference}")).hint(
                format!(
                    "stage {reference:?} (line {}) depends on the stage being built here",
                    self.stages[i].from.start_line
                ),
            ));
        }
        if let Some(i) = found
            && i > current
        {
            return Err(ConvertError::at(
                at,
                format!(
                    "cannot copy from stage {:?}, it needs to be defined before current stage {:?}",
                    self.stage_name(i),
                    self.stage_name(current)
                ),
            )
            .hint(format!(
                "stage {reference:?} starts on line {}; move it above this stage",
                self.stages[i].from.start_line
            )));
        }
        Ok(found)
    }

    /// BuildKit's name for a stage in messages: its name, or `stage-N`.
    fn stage_name(&self, index: usize) -> String {
        self.stages[index].name.clone().unwrap_or_else(|| format!("stage-{index}"))
    }

    /// Whether stage `from` depends on stage `to` through references known up front (an explicit-stack search).
    fn reaches(&self, from: usize, to: usize) -> bool {
        let mut seen = vec![false; self.stages.len()];
        let mut stack = vec![from];
        while let Some(i) = stack.pop() {
            if i == to {
                return true;
            }
            if !std::mem::replace(&mut seen[i], true) {
                stack.extend(self.static_deps(i, false));
            }
        }
        false
    }

    /// A hint for a name that is no stage and could not be resolved as an image: the stage it was probably meant to be.
    fn stage_hint(&self, reference: &str) -> Option<String> {
        let names: Vec<&str> = self.stages.iter().filter_map(|s| s.name.as_deref()).collect();
        crate::suggest(reference, &names).map(|s| format!("no stage is named {reference:?}; did you mean {s:?}?"))
    }

    fn image_vertex(
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
    fn named_context_vertex(&mut self, name: &str) -> VertexId {
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

    fn context_vertex(&mut self) -> VertexId {
        *self.context.get_or_insert_with(|| {
            self.graph.add(Vertex {
                op: Op::Context { name: "context".into() },
                inputs: vec![],
                name: "[internal] load build context".into(),
                ignore_cache: false,
            })
        })
    }

    fn build_stage(&mut self, index: usize) -> Result<Rc<StageState>, ConvertError> {
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
    fn add(&mut self, vertex: Vertex) -> VertexId {
        let is_source = matches!(vertex.op, Op::Scratch | Op::Image { .. } | Op::Context { .. });
        let v = self.graph.add(vertex);
        if !is_source && let Some(&stage) = self.converting.last() {
            let label = self.stage_name(stage);
            self.graph.set_stage(v, label);
        }
        v
    }

    fn build_stage_inner(&mut self, index: usize) -> Result<Rc<StageState>, ConvertError> {
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
        let mut state = if base.eq_ignore_ascii_case("scratch") {
            let v = self.add(Vertex { op: Op::Scratch, inputs: vec![], name: "scratch".into(), ignore_cache: false });
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

    /// A step's progress title: the instruction with the stage's variables expanded, as BuildKit prints it
    /// (`RUN echo dev` for `RUN echo $VERSION`). For RUN (`run`) quotes and unset variables stay as written; for
    /// COPY, ADD and WORKDIR quotes are removed and unset variables are empty. A RUN that maps secrets to
    /// environment variables is shown as written, so that no variable of that name is printed. The first word is
    /// upper-cased; a word that does not expand is shown as written.
    fn step_name(&self, index: usize, state: &StageState, original: &str, run: Option<bool>) -> String {
        let stage = self.stages[index].name.clone().unwrap_or_else(|| format!("stage-{index}"));
        let lexer = match run {
            Some(true) => None,
            Some(false) => Some(self.lexer.raw_quotes(true).skip_unset_env(true)),
            None => Some(self.lexer),
        };
        let shown = lexer
            .and_then(|l| l.process_word(original, &StageVars(state)).ok())
            .filter(|w| self.charge(w.len().saturating_sub(original.len()), &self.stages[index].from).is_ok())
            .unwrap_or_else(|| original.to_string());
        let shown = match shown.split_once(char::is_whitespace) {
            Some((kw, rest)) => format!("{} {rest}", kw.to_uppercase()),
            None => shown.to_uppercase(),
        };
        format!("[{stage}] {}", one_line(&shown))
    }

    /// Dispatches one instruction and records its location for every vertex it added (vertices of other stages
    /// converted on the way, for `COPY --from`, were recorded by their own instructions first).
    fn dispatch(&mut self, index: usize, state: &mut StageState, located: &Located) -> Result<(), ConvertError> {
        let before = self.graph.vertices.len();
        let result = self.dispatch_one(index, state, located);
        for v in before..self.graph.vertices.len() {
            self.locations.entry(v).or_insert_with(|| located.location.clone());
        }
        result
    }

    fn dispatch_one(&mut self, index: usize, state: &mut StageState, located: &Located) -> Result<(), ConvertError> {
        let at = &located.location;
        self.check_instruction(state, located);
        match &located.instruction {
            Instruction::From { .. } => unreachable!("FROM starts a stage"),
            Instruction::Arg(args) => {
                // History shows the ARG as declared (default expanded); a --build-arg override shows only in
                // the `|N K=V` prefix of later RUNs, as BuildKit writes it.
                let mut shown = Vec::new();
                for (k, default) in args {
                    self.lint.secret_key("ARG", k, at);
                    if let Some(d) = default {
                        self.check_undefined(d, state, at);
                    }
                    let declared = match default {
                        Some(d) => Some(self.expand(d, &StageVars(state), at)?),
                        None => None,
                    };
                    shown.push(match &declared {
                        Some(d) => format!("{k}={d}"),
                        None => k.clone(),
                    });
                    let value = if let Some(v) = self.opts.build_args.get(k) {
                        self.used_args.insert(k.clone());
                        Some(v.clone())
                    } else if declared.is_some() {
                        declared
                    } else if let Some(v) = self.meta_args.get(k) {
                        Some(v.clone())
                    } else {
                        platform_args(self.opts).into_iter().find(|(n, _)| n == k).map(|(_, v)| v)
                    };
                    state.set_arg(k, value);
                }
                state.history.push(HistoryStep::Meta { created_by: format!("ARG {}", shown.join(" ")) });
            }
            Instruction::Env(pairs) => {
                // Every word sees the variables as they were before this ENV (`ENV A=1 B=$A` does not see A=1),
                // as in BuildKit: expand all of them, then set them.
                let mut expanded = Vec::with_capacity(pairs.len());
                for (k, v) in pairs {
                    let vars = StageVars(state);
                    expanded.push((self.expand(k, &vars, at)?, self.expand(v, &vars, at)?));
                }
                let mut shown = Vec::new();
                for (k, v) in expanded {
                    self.lint.secret_key("ENV", &k, at);
                    state.set_env(&k, &v);
                    shown.push(format!("{k}={v}"));
                }
                state.history.push(HistoryStep::Meta { created_by: format!("ENV {}", shown.join(" ")) });
            }
            Instruction::Label(pairs) => {
                let mut shown = Vec::new();
                for (k, v) in pairs {
                    let k = self.expand(k, &StageVars(state), at)?;
                    let v = self.expand(v, &StageVars(state), at)?;
                    shown.push(format!("{k}={v}"));
                    state.config.config.labels.get_or_insert_with(BTreeMap::new).insert(k, v);
                }
                state.history.push(HistoryStep::Meta { created_by: format!("LABEL {}", shown.join(" ")) });
            }
            Instruction::Maintainer(m) => {
                state.config.author = Some(m.clone());
                state.history.push(HistoryStep::Meta { created_by: format!("MAINTAINER {m}") });
            }
            Instruction::Expose(ports) => {
                let mut shown = Vec::new();
                for p in ports {
                    for word in self.expand_words(p, &StageVars(state), at)? {
                        self.check_expose(&word, at);
                        let ports = normalize_ports(&word).ok_or_else(|| {
                            ConvertError::at(at, format!("invalid port {word:?}"))
                                .hint("EXPOSE <port>[/tcp|/udp|/sctp]")
                        })?;
                        for port in ports {
                            shown.push(port.clone());
                            state.config.config.exposed_ports.insert(port, serde_json::json!({}));
                        }
                    }
                }
                // Go's `%v` of the port set: `map[53/udp:{} 80/tcp:{}]`, sorted.
                shown.sort();
                shown.dedup();
                let set: Vec<String> = shown.iter().map(|p| format!("{p}:{{}}")).collect();
                state.history.push(HistoryStep::Meta { created_by: format!("EXPOSE map[{}]", set.join(" ")) });
            }
            Instruction::User(u) => {
                let u = self.expand(u, &StageVars(state), at)?;
                state.config.config.user = Some(u.clone());
                state.history.push(HistoryStep::Meta { created_by: format!("USER {u}") });
            }
            Instruction::Stopsignal(s) => {
                let s = self.expand(s, &StageVars(state), at)?;
                if !valid_signal(&s) {
                    return Err(ConvertError::at(at, format!("invalid signal {s:?}"))
                        .hint("STOPSIGNAL SIGTERM, STOPSIGNAL 15, ..."));
                }
                state.config.config.stop_signal = Some(s.clone());
                state.history.push(HistoryStep::Meta { created_by: format!("STOPSIGNAL {s}") });
            }
            Instruction::Volume(vols) => {
                let mut shown = Vec::new();
                for v in vols {
                    let v = self.expand(v, &StageVars(state), at)?;
                    if v.is_empty() {
                        return Err(ConvertError::at(at, "VOLUME specified can not be an empty string"));
                    }
                    shown.push(v.clone());
                    state.config.config.volumes.insert(v, serde_json::json!({}));
                }
                state.history.push(HistoryStep::Meta { created_by: format!("VOLUME [{}]", shown.join(" ")) });
            }
            Instruction::Cmd(c) => {
                let args = self.command_args(state, c);
                state.history.push(HistoryStep::Meta { created_by: format!("CMD {}", go_quote_list(&args)) });
                state.config.config.cmd = Some(args);
                state.config.config.args_escaped = Some(true);
                state.cmd_set = true;
            }
            Instruction::Entrypoint(c) => {
                let args = self.command_args(state, c);
                state.history.push(HistoryStep::Meta { created_by: format!("ENTRYPOINT {}", go_quote_list(&args)) });
                state.config.config.entrypoint = Some(args);
                if !state.cmd_set {
                    state.config.config.cmd = None;
                }
            }
            Instruction::Shell(args) => {
                state.config.config.shell = Some(args.clone());
                state.history.push(HistoryStep::Meta { created_by: format!("SHELL [{}]", args.join(" ")) });
            }
            Instruction::Onbuild(trigger) => {
                // BuildKit records ONBUILD in the config only, not in the history.
                state.config.config.on_build.get_or_insert_with(Vec::new).push(trigger.clone());
            }
            Instruction::Healthcheck(h) => {
                let hc = self.healthcheck(state, h, at)?;
                state.history.push(HistoryStep::Meta { created_by: format!("HEALTHCHECK {}", go_healthcheck(&hc)) });
                state.config.config.healthcheck = Some(hc);
            }
            Instruction::Workdir(w) => {
                let w = self.expand(w, &StageVars(state), at)?;
                let path = join_path(state.config.config.working_dir.as_deref().unwrap_or("/"), &w);
                state.config.config.working_dir = Some(path.clone());
                let owner = state.config.config.user.clone().filter(|u| !u.is_empty());
                let input = state.rootfs;
                let name = self.step_name(index, state, &located.original, None);
                state.rootfs = self.add(Vertex {
                    op: Op::File(FileOp {
                        dest: Some(0),
                        actions: vec![FileAction::Mkdir { path: path.clone(), mode: 0o755, owner }],
                    }),
                    inputs: vec![input],
                    name,
                    ignore_cache: state.no_cache,
                });
                state.history.push(HistoryStep::Layer {
                    created_by: format!("WORKDIR {path}"),
                    input,
                    output: state.rootfs,
                });
            }
            Instruction::Run(run) => self.dispatch_run(index, state, located, run)?,
            Instruction::Copy(c) => self.dispatch_copy(index, state, located, c, false)?,
            Instruction::Add(c) => self.dispatch_copy(index, state, located, c, true)?,
        }
        Ok(())
    }

    fn shell(state: &StageState) -> Vec<String> {
        state.config.config.shell.clone().unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    fn command_args(&self, state: &StageState, c: &Command) -> Vec<String> {
        match c {
            Command::Exec(v) => v.clone(),
            Command::Shell(s) => {
                let mut v = Self::shell(state);
                v.push(s.clone());
                v
            }
        }
    }

    fn healthcheck(
        &self,
        state: &StageState,
        h: &HealthcheckInstr,
        at: &Location,
    ) -> Result<Healthcheck, ConvertError> {
        let dur = |v: &Option<String>, name: &str| -> Result<Option<i64>, ConvertError> {
            match v {
                None => Ok(None),
                Some(s) => parse_duration(s).map(Some).ok_or_else(|| {
                    ConvertError::at(at, format!("invalid duration {s:?} for --{name}"))
                        .hint("durations look like 30s, 1m30s, 500ms")
                }),
            }
        };
        let test = match &h.test {
            None => vec!["NONE".to_string()],
            Some(Command::Exec(v)) => std::iter::once("CMD".to_string()).chain(v.iter().cloned()).collect(),
            Some(Command::Shell(s)) => vec!["CMD-SHELL".to_string(), s.clone()],
        };
        let _ = state;
        let retries = match &h.retries {
            None => None,
            Some(r) => Some(
                r.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| ConvertError::at(at, format!("invalid --retries value {r:?}")))?,
            ),
        };
        Ok(Healthcheck {
            test: Some(test),
            interval: dur(&h.interval, "interval")?,
            timeout: dur(&h.timeout, "timeout")?,
            start_period: dur(&h.start_period, "start-period")?,
            start_interval: dur(&h.start_interval, "start-interval")?,
            retries,
        })
    }

    /// Environment of a RUN: the image's ENV plus the stage's ARGs (ENV wins), plus proxy build args.
    fn run_env(&mut self, state: &StageState) -> Vec<String> {
        let mut env: Vec<String> = state.config.config.env.clone().unwrap_or_default();
        for (k, v) in state.current_args() {
            if let Some(v) = v
                && !state.has_env(k)
            {
                env.push(format!("{k}={v}"));
            }
        }
        // A proxy build arg reaches RUN in both spellings, as BuildKit's proxy environment does: tools read
        // `http_proxy` or `HTTP_PROXY`, whichever they know. (Neither reaches the cache key or the history.)
        for pair in rbuild_solver::key::PROXY_VARS.chunks(2) {
            let [upper, lower] = pair else { continue };
            let declared = |name: &str| state.arg_pos.get(name).is_some_and(|&i| state.args[i].1.is_some());
            let value = [upper, lower].into_iter().find_map(|p| self.opts.build_args.get(*p).map(|v| (*p, v.clone())));
            let Some((given, value)) = value else { continue };
            if declared(upper) || declared(lower) {
                continue;
            }
            self.used_args.insert(given.to_string());
            for name in [upper, lower] {
                if !state.has_env(name) {
                    env.push(format!("{name}={value}"));
                }
            }
        }
        env
    }

    fn dispatch_run(
        &mut self,
        index: usize,
        state: &mut StageState,
        located: &Located,
        run: &crate::instructions::RunInstr,
    ) -> Result<(), ConvertError> {
        let at = &located.location;
        let network = match run.network.as_deref() {
            None | Some("default") => Network::Default,
            Some("host") => Network::Host,
            Some("none") => Network::None,
            Some(other) => {
                return Err(ConvertError::at(at, format!("unsupported network mode {other:?}"))
                    .hint("use --network=default, none or host"));
            }
        };
        if let Some(sec) = &run.security
            && sec != "sandbox"
        {
            return Err(ConvertError::at(at, format!("RUN --security={sec} is not allowed"))
                .hint("rbuild runs every step sandboxed"));
        }
        let mut pipe = None;
        let args = match (&run.command, run.heredocs.as_slice()) {
            (Command::Exec(v), _) => v.clone(),
            (Command::Shell(cmd), [first, ..]) if is_heredoc_marker(cmd) => {
                // `RUN <<EOF` alone: the heredoc is the script. With a `#!` line BuildKit writes it to a file
                // mounted at /dev/pipes/<name> and runs that; otherwise the shell runs the text.
                let data =
                    if first.chomp { parser::chomp_heredoc_content(&first.content) } else { first.content.clone() };
                let mut v = Self::shell(state);
                if data.starts_with("#!") {
                    let file = self.add(Vertex {
                        op: Op::File(FileOp {
                            dest: None,
                            actions: vec![FileAction::MkFile {
                                path: format!("/{}", first.name),
                                data,
                                mode: 0o755,
                                owner: None,
                            }],
                        }),
                        inputs: vec![],
                        name: "[internal] preparing inline document".into(),
                        ignore_cache: false,
                    });
                    pipe = Some(file);
                    v.push(format!("/dev/pipes/{}", first.name));
                } else {
                    v.push(data);
                }
                v
            }
            (Command::Shell(cmd), docs) => {
                // Several heredocs, or one inside a longer command: the shell reads them itself.
                let mut script = cmd.clone();
                for d in docs {
                    script.push('\n');
                    script.push_str(&d.content);
                    script.push_str(&d.name);
                }
                let mut v = Self::shell(state);
                v.push(script);
                v
            }
        };
        let mut env = self.run_env(state);
        self.charge(env.iter().map(String::len).sum(), at)?;
        let input = state.rootfs;
        let (mut mounts, mut extra_inputs) = self.run_mounts(index, state, at, &run.mounts, &mut env)?;
        if let Some(file) = pipe {
            extra_inputs.push(file);
            mounts.push(rbuild_solver::ExecMount::Bind {
                target: "/dev/pipes".into(),
                input: extra_inputs.len(),
                source: "/".into(),
                readonly: true,
            });
        }
        let secret_env = run.mounts.iter().any(|m| m.contains("secret") && m.contains("env"));
        let name = self.step_name(index, state, &located.original, Some(secret_env));
        let exec = ExecOp {
            args: args.clone(),
            env,
            cwd: state.config.config.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into()),
            user: state.config.config.user.clone().unwrap_or_default(),
            network,
            mounts,
            settings: Vec::new(),
            hostname: self.opts.build_args.get(SANDBOX_HOSTNAME_ARG).cloned().unwrap_or_default(),
            platform: (crate::platform::normalize(&state.platform)
                != crate::platform::normalize(&self.opts.build_platform))
            .then(|| state.platform.clone()),
        };
        let inputs = std::iter::once(input).chain(extra_inputs).collect();
        state.rootfs = self.add(Vertex { op: Op::Exec(exec), inputs, name, ignore_cache: state.no_cache });
        // BuildKit's `|N K=V ...` prefix: every ARG declaration of the stage (a redeclared one twice, as BuildKit 0.13
        // writes it), each with its current value, the ENV value where ENV overrides it.
        let arg_prefix = if state.args.is_empty() {
            String::new()
        } else {
            let vars = StageVars(state);
            let shown: Vec<String> =
                state.args.iter().map(|(k, _)| format!("{k}={}", vars.lookup(k).unwrap_or(""))).collect();
            format!("|{} {} ", shown.len(), shown.join(" "))
        };
        self.charge(arg_prefix.len(), at)?;
        state.history.push(HistoryStep::Layer {
            created_by: format!("RUN {arg_prefix}{} # buildkit", args.join(" ")),
            input,
            output: state.rootfs,
        });
        Ok(())
    }

    /// The graph mounts of a RUN's `--mount` flags, and the vertices they read (inputs 1, 2, ... of the step).
    /// Files of the build context are first copied into a layer of their own, so `.dockerignore` applies and the
    /// step's key covers exactly their content.
    fn run_mounts(
        &mut self,
        index: usize,
        state: &StageState,
        at: &Location,
        flags: &[String],
        env: &mut Vec<String>,
    ) -> Result<(Vec<rbuild_solver::ExecMount>, Vec<VertexId>), ConvertError> {
        use crate::mounts::{MountType, parse_mount};
        let vars = StageVars(state);
        let workdir = state.config.config.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into());
        let (mut mounts, mut inputs, mut ssh) = (Vec::new(), Vec::<VertexId>::new(), 0);
        for flag in flags {
            let this = &*self;
            let spec = parse_mount(flag, &workdir, ssh, &mut |w| this.expand(w, &vars, at).map_err(|e| e.message))
                .map_err(|e| {
                    let err = ConvertError::at(at, e.to_string());
                    match e.hint {
                        Some(h) => err.hint(h),
                        None => err,
                    }
                })?;
            let source_vertex = match (spec.typ, spec.from.as_deref()) {
                (MountType::Bind | MountType::Cache, Some(from)) => Some(match self.find_stage(from, index, at)? {
                    Some(i) => self.build_stage(i)?.rootfs,
                    None => self.image_vertex(from, &state.platform, at)?.0,
                }),
                (MountType::Bind, None) => {
                    self.charge(self.dockerignore_bytes(), at)?;
                    Some(self.context_copy(&spec.source, &located_name(at)))
                }
                _ => None,
            };
            let input = source_vertex.map(|v| match inputs.iter().position(|i| *i == v) {
                Some(p) => p + 1,
                None => {
                    inputs.push(v);
                    inputs.len()
                }
            });
            let mut mount = spec.to_exec_mount(input);
            if let (rbuild_solver::ExecMount::Bind { source, .. }, None) = (&mut mount, spec.from.as_deref()) {
                // The context copy holds the selected path at /mount (see `context_copy`).
                *source = "/mount".into();
            }
            if spec.typ == MountType::Ssh {
                if ssh == 0 && !env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
                    env.push(format!("SSH_AUTH_SOCK={}", spec.target.clone().unwrap_or_default()));
                }
                ssh += 1;
            }
            mounts.push(mount);
        }
        Ok((mounts, inputs))
    }

    /// The size of the `.dockerignore` patterns, which every step reading the context carries a copy of.
    fn dockerignore_bytes(&self) -> usize {
        self.opts.context_excludes.iter().map(String::len).sum()
    }

    /// A layer holding `source` of the build context at `/mount`, for a bind mount without `from`.
    fn context_copy(&mut self, source: &str, name: &str) -> VertexId {
        let context = self.context_vertex();
        let source = join_path("/", source);
        self.add(Vertex {
            op: Op::File(FileOp {
                dest: None,
                actions: vec![FileAction::Copy(CopyAction {
                    src: 0,
                    sources: vec![source.clone()],
                    dest: "/mount".into(),
                    chown: None,
                    chmod: None,
                    extract_archives: false,
                    keep_owner: false,
                    excludes: Vec::new(),
                    dockerignore: self.opts.context_excludes.clone(),
                    parents: false,
                })],
            }),
            inputs: vec![context],
            name: format!("[internal] {name}: context files {source} for a bind mount"),
            ignore_cache: false,
        })
    }

    fn dispatch_copy(
        &mut self,
        index: usize,
        state: &mut StageState,
        located: &Located,
        c: &CopyInstr,
        is_add: bool,
    ) -> Result<(), ConvertError> {
        let at = &located.location;
        let kw = if is_add { "ADD" } else { "COPY" };
        let vars = StageVars(state);
        let env: &dyn EnvLookup = &vars;
        let expand_opt = |this: &Self, v: &Option<String>| match v {
            Some(v) => this.expand(v, env, at).map(Some),
            None => Ok(None),
        };
        let chown = expand_opt(self, &c.chown)?;
        let chmod_word = expand_opt(self, &c.chmod)?;
        let chmod = match &chmod_word {
            Some(v) => Some(u32::from_str_radix(v, 8).ok().filter(|m| *m <= 0o7777).ok_or_else(|| {
                ConvertError::at(at, format!("invalid --chmod value {v:?}"))
                    .hint("--chmod takes an octal mode such as 755")
            })?),
            None => None,
        };
        let checksum = expand_opt(self, &c.checksum)?;
        let mut excludes = Vec::new();
        for e in &c.excludes {
            excludes.push(self.expand(e, env, at)?);
        }

        // Sources: heredocs (`<<EOF`), URLs and Git repositories (ADD), and paths in the context or --from.
        let mut heredocs = c.heredocs.iter();
        let mut inline: Vec<(String, String)> = Vec::new();
        let mut remote: Vec<(String, Op)> = Vec::new();
        let mut paths = Vec::new();
        let mut shown = Vec::new();
        for word in &c.sources {
            if let Ok(Some(marker)) = parser::parse_heredoc(word)
                && let Some(doc) = heredocs.next()
            {
                let _ = marker;
                let mut data =
                    if doc.chomp { parser::chomp_heredoc_content(&doc.content) } else { doc.content.clone() };
                if doc.expand {
                    let raw = Lexer::new('\\').skip_process_quotes(true);
                    let expanded = raw
                        .process_word(&data, env)
                        .map_err(|e| ConvertError::at(at, format!("failed to expand heredoc <<{}: {e}", doc.name)))?;
                    self.charge(expanded.len().saturating_sub(data.len()), at)?;
                    data = expanded;
                }
                shown.push(format!("<<{}", doc.name));
                inline.push((doc.name.clone(), data));
                continue;
            }
            let src = self.expand(word, env, at)?;
            shown.push(src.clone());
            if is_add && c.from.is_none() {
                if let Some(op) = git_source(&src, c.keep_git_dir) {
                    remote.push((src, op));
                    continue;
                }
                if src.starts_with("http://") || src.starts_with("https://") {
                    let filename = url_filename(&src);
                    remote.push((src.clone(), Op::Http { url: src, checksum: checksum.clone(), filename }));
                    continue;
                }
            }
            if c.from.is_none() {
                self.check_copy_source(is_add, &src, at);
            }
            paths.push(src);
        }
        if checksum.is_some() && (remote.is_empty() || !paths.is_empty()) {
            return Err(ConvertError::at(at, "checksum can't be specified for non-HTTP(S) sources")
                .hint("ADD --checksum=sha256:<hex> https://example.com/file /dest"));
        }
        if c.keep_git_dir && !remote.iter().any(|(_, op)| matches!(op, Op::Git { .. })) {
            return Err(ConvertError::at(at, "--keep-git-dir is only valid for a Git repository source"));
        }
        if shown.is_empty() {
            return Err(
                ConvertError::at(at, format!("{kw} needs at least one source")).hint(format!("{kw} <src>... <dest>"))
            );
        }
        // Destination: joined with WORKDIR; a trailing slash (or several sources) means "into this directory".
        let dest = self.expand(&c.dest, env, at)?;
        let workdir = state.config.config.working_dir.clone().unwrap_or_else(|| "/".into());
        let dir_dest = dest.ends_with('/') || dest == "." || dest.ends_with("/.") || dest.is_empty();
        let mut dest_path = join_path(&workdir, &dest);
        if dir_dest && !dest_path.ends_with('/') {
            dest_path.push('/');
        }

        let mut inputs = vec![state.rootfs];
        let mut actions = Vec::new();
        let copy = |src: usize, sources: Vec<String>, keep_owner: bool, dockerignore: Vec<String>| {
            FileAction::Copy(CopyAction {
                src,
                sources,
                dest: dest_path.clone(),
                chown: chown.clone(),
                chmod,
                extract_archives: is_add,
                keep_owner,
                excludes: excludes.clone(),
                dockerignore,
                parents: c.parents,
            })
        };
        if !paths.is_empty() {
            let (src_vertex, keep_owner, dockerignore) = match &c.from {
                None => {
                    self.charge(self.dockerignore_bytes(), at)?;
                    (self.context_vertex(), false, self.opts.context_excludes.clone())
                }
                Some(from) => {
                    let from = self.expand(from, &self.global, at)?;
                    match self.find_stage_from(&from, index, at)? {
                        Some(i) => (self.build_stage(i)?.rootfs, true, Vec::new()),
                        // Like the build context: files are owned by root unless --chown says otherwise.
                        None if self.opts.named_contexts.contains(&from) => {
                            (self.named_context_vertex(&from), false, Vec::new())
                        }
                        None => (self.image_vertex(&from, &state.platform, at)?.0, true, Vec::new()),
                    }
                }
            };
            inputs.push(src_vertex);
            actions.push(copy(inputs.len() - 1, paths, keep_owner, dockerignore));
        }
        for (url, op) in remote {
            let filename = match &op {
                Op::Http { filename, .. } => format!("/{filename}"),
                _ => "/".into(),
            };
            let v =
                self.add(Vertex { op, inputs: vec![], name: format!("[internal] fetch {url}"), ignore_cache: false });
            inputs.push(v);
            // A downloaded file is copied as a file (never extracted); a repository's tree as a directory.
            let mut action = copy(inputs.len() - 1, vec![filename], false, Vec::new());
            if let FileAction::Copy(a) = &mut action {
                a.extract_archives = false;
            }
            actions.push(action);
        }
        if !inline.is_empty() {
            let names: Vec<String> = inline.iter().map(|(n, _)| n.clone()).collect();
            let files = inline
                .into_iter()
                .map(|(name, data)| FileAction::MkFile { path: format!("/{name}"), data, mode: 0o644, owner: None })
                .collect();
            let v = self.add(Vertex {
                op: Op::File(FileOp { dest: None, actions: files }),
                inputs: vec![],
                name: "[internal] preparing inline document".into(),
                ignore_cache: false,
            });
            inputs.push(v);
            let mut action = copy(inputs.len() - 1, names, true, Vec::new());
            if let FileAction::Copy(a) = &mut action {
                a.extract_archives = false;
            }
            actions.push(action);
        }
        let input = state.rootfs;
        let name = self.step_name(index, state, &located.original, None);
        state.rootfs = self.add(Vertex {
            op: Op::File(FileOp { dest: Some(0), actions }),
            inputs,
            name,
            ignore_cache: state.no_cache,
        });
        // BuildKit's history: flags that change the result, sources as expanded (heredocs as <<NAME), dest as
        // written; never --from.
        let mut flags = String::new();
        if c.parents {
            flags.push_str(" --parents");
        }
        if let Some(o) = &chown {
            flags.push_str(&format!(" --chown={o}"));
        }
        if let Some(m) = &chmod_word {
            flags.push_str(&format!(" --chmod={m}"));
        }
        state.history.push(HistoryStep::Layer {
            created_by: format!("{kw}{flags} {} {dest} # buildkit", shown.join(" ")),
            input,
            output: state.rootfs,
        });
        Ok(())
    }
}

/// rbuild has one built-in frontend, BuildKit's `docker/dockerfile:1`. A `# syntax=` naming it (any 1.x tag, with
/// or without `docker.io/`, a `-labs` suffix or a digest) is accepted without pulling anything; any other value is
/// not run either, and gets a warning that says so: an error would refuse Dockerfiles that build fine with the
/// built-in frontend, which is what almost every `# syntax=` line asks for.
fn syntax_warning(ast: &Ast) -> Option<String> {
    let d = ast.directives.iter().find(|d| d.name == "syntax")?;
    let image = d.value.split('@').next().unwrap_or_default();
    let image = image.strip_prefix("docker.io/").unwrap_or(image);
    let builtin = match image.strip_prefix("docker/dockerfile:") {
        Some(tag) => {
            let version = tag.strip_suffix("-labs").unwrap_or(tag);
            version == "1"
                || version
                    .strip_prefix("1.")
                    .is_some_and(|v| v.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
        }
        None => image == "docker/dockerfile",
    };
    (!builtin).then(|| {
        format!(
            "line {}: # syntax={} is not supported: rbuild has one built-in frontend (docker/dockerfile:1) and builds with it",
            d.line, d.value
        )
    })
}

/// A word as shown in an error message: quoted, and at most 200 characters of it.
fn short(word: &str) -> String {
    if word.chars().count() <= 200 {
        format!("{word:?}")
    } else {
        format!("{:?}...", word.chars().take(197).collect::<String>())
    }
}

/// True when the whole command is one heredoc marker (`<<EOF`, `<<-"EOF"`), as BuildKit's MustParseHeredoc decides.
fn is_heredoc_marker(cmd: &str) -> bool {
    matches!(parser::parse_heredoc(cmd.trim()), Ok(Some(_)))
}

fn located_name(at: &Location) -> String {
    format!("line {}", at.start_line)
}

/// `ADD` of a Git repository: `git@host:repo`, `git://...`, or an http(s) URL whose path ends in `.git`
/// (optionally with `#ref[:subdir]`). `None` for anything else.
fn git_source(src: &str, keep_git_dir: bool) -> Option<Op> {
    let (remote, fragment) = match src.split_once('#') {
        Some((r, f)) => (r, f),
        None => (src, ""),
    };
    let is_http_git = (remote.starts_with("https://") || remote.starts_with("http://"))
        && remote.split('?').next().is_some_and(|p| p.ends_with(".git"));
    if !(remote.starts_with("git@") || remote.starts_with("git://") || remote.starts_with("ssh://") || is_http_git) {
        return None;
    }
    let (remote, keep) = match remote.split_once('?') {
        // BuildKit's query form: `?ref=v1&keep-git-dir=1`.
        Some((r, q)) => {
            let mut reference = fragment.to_string();
            let mut keep = keep_git_dir;
            for kv in q.split('&') {
                match kv.split_once('=') {
                    Some(("ref", v)) => reference = v.to_string(),
                    Some(("keep-git-dir", v)) => keep = v == "1" || v == "true",
                    _ => {}
                }
            }
            return Some(Op::Git { remote: r.to_string(), reference, keep_git_dir: keep });
        }
        None => (remote, keep_git_dir),
    };
    let reference = fragment.split(':').next().unwrap_or("").to_string();
    Some(Op::Git { remote: remote.to_string(), reference, keep_git_dir: keep })
}

/// The name a downloaded file gets: the URL path's last component, as BuildKit names it.
fn url_filename(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    let path = without_query.splitn(4, '/').nth(3).unwrap_or("");
    match path.rsplit('/').next() {
        Some(n) if !n.is_empty() && n != "." && n != ".." => n.to_string(),
        _ => "__unnamed__".to_string(),
    }
}

fn valid_stage_name(n: &str) -> bool {
    n.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

fn keyword(original: &str) -> String {
    original.split_whitespace().next().unwrap_or("").to_uppercase()
}

fn one_line(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 100 { format!("{}...", s.chars().take(97).collect::<String>()) } else { s }
}

use crate::parser::quote::{go_quote, go_quote_list};

/// Go's `time.Duration.String()` of nanoseconds: `1m30s`, `500ms`, `0s`.
pub fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = ns < 0;
    let u = ns.unsigned_abs();
    let sign = if neg { "-" } else { "" };
    let frac = |v: u64, unit: u64| -> String {
        let whole = v / unit;
        let rest = v % unit;
        if rest == 0 {
            return whole.to_string();
        }
        let digits = unit.to_string().len() - 1;
        let f = format!("{rest:0digits$}");
        format!("{whole}.{}", f.trim_end_matches('0'))
    };
    if u < 1_000 {
        return format!("{sign}{u}ns");
    }
    if u < 1_000_000 {
        return format!("{sign}{}µs", frac(u, 1_000));
    }
    if u < 1_000_000_000 {
        return format!("{sign}{}ms", frac(u, 1_000_000));
    }
    let (h, rem) = (u / 3_600_000_000_000, u % 3_600_000_000_000);
    let (m, rem) = (rem / 60_000_000_000, rem % 60_000_000_000);
    let secs = frac(rem, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{sign}{secs}s"),
        (0, m) => format!("{sign}{m}m{secs}s"),
        (h, m) => format!("{sign}{h}h{m}m{secs}s"),
    }
}

/// BuildKit's history entry for HEALTHCHECK: Go's `%q` of the config struct,
/// `&{["CMD-SHELL" "curl x"] "30s" "3s" "0s" "0s" '\x03'}`.
fn go_healthcheck(h: &Healthcheck) -> String {
    let d = |v: Option<i64>| go_quote(&go_duration(v.unwrap_or(0)));
    let retries = h.retries.unwrap_or(0);
    // Retries is an int printed with %q: a quoted rune literal ('\x03').
    let r = match u32::try_from(retries).ok().and_then(char::from_u32) {
        Some('\'') => "'\\''".to_string(),
        Some('"') => "'\"'".to_string(),
        Some(c) => {
            let q = go_quote(&c.to_string());
            format!("'{}'", &q[1..q.len() - 1])
        }
        None => retries.to_string(),
    };
    format!(
        "&{{{} {} {} {} {} {}}}",
        go_quote_list(h.test.as_deref().unwrap_or_default()),
        d(h.interval),
        d(h.timeout),
        d(h.start_period),
        d(h.start_interval),
        r
    )
}

/// Joins a path onto the working directory and cleans it lexically (no `.`/`..`, no doubled slashes).
pub fn join_path(base: &str, path: &str) -> String {
    let full = if path.starts_with('/') { path.to_string() } else { format!("{base}/{path}") };
    // `..` at the top stays at `/`, as it does inside the container.
    format!("/{}", rbuild_types::path::clean_in_root(&full).parts.join("/"))
}

/// `80`, `53/udp`, `8000-8002/tcp` → the ports Docker records (a range becomes one entry per port). Like Docker's
/// `nat.ParsePortSpecs`, a published form (`127.0.0.1:80:80`, `[::1]:8080:8080`, `5000:5000`) exposes its
/// container port.
fn normalize_ports(p: &str) -> Option<Vec<String>> {
    let (spec, proto) = match p.split_once('/') {
        Some((port, proto)) => (port, proto.to_lowercase()),
        None => (p, "tcp".to_string()),
    };
    let rest = match spec.strip_prefix('[') {
        Some(after) => after.split_once("]:")?.1,
        None => spec,
    };
    let port = rest.rsplit_once(':').map_or(rest, |(_, container)| container);
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return None;
    }
    let (a, b) = match port.split_once('-') {
        Some((a, b)) => (a.parse::<u16>().ok()?, b.parse::<u16>().ok()?),
        None => {
            let n = port.parse::<u16>().ok()?;
            (n, n)
        }
    };
    if b < a {
        return None;
    }
    Some((a..=b).map(|n| format!("{n}/{proto}")).collect())
}

fn valid_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<u32>() {
        return (1..=64).contains(&n);
    }
    let name = s.strip_prefix("SIG").unwrap_or(s);
    name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+' || c == '-') && !name.is_empty()
}

/// Go-style durations (`1h2m3.5s`, `300ms`) in nanoseconds (see [`rbuild_types::units::go_duration`]).
pub fn parse_duration(s: &str) -> Option<i64> {
    rbuild_types::units::go_duration(s).map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_like_workdir() {
        assert_eq!(join_path("/", "app"), "/app");
        assert_eq!(join_path("/app", "src/../lib"), "/app/lib");
        assert_eq!(join_path("/app", "/abs"), "/abs");
        assert_eq!(join_path("/app", "."), "/app");
    }

    #[test]
    fn durations_and_ports() {
        assert_eq!(parse_duration("30s"), Some(30_000_000_000));
        assert_eq!(parse_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_duration("500ms"), Some(500_000_000));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(normalize_ports("80"), Some(vec!["80/tcp".to_string()]));
        assert_eq!(normalize_ports("53/UDP"), Some(vec!["53/udp".to_string()]));
        assert_eq!(normalize_ports("8000-8002").map(|v| v.len()), Some(3));
        assert_eq!(normalize_ports("http"), None);
        // Issue 11 item 16: published forms expose the container port, as Docker's nat.ParsePortSpecs does.
        assert_eq!(normalize_ports("127.0.0.1:80:80"), Some(vec!["80/tcp".to_string()]));
        assert_eq!(normalize_ports("[::1]:8080:8081/udp"), Some(vec!["8081/udp".to_string()]));
        assert_eq!(normalize_ports("5000:5001"), Some(vec!["5001/tcp".to_string()]));
        assert_eq!(normalize_ports("[::1]8080"), None);
        assert_eq!(go_duration(30_000_000_000), "30s");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(500_000_000), "500ms");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(0), "0s");
    }
}
