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

use crate::instructions::{Instruction, Located, Location};
use crate::lint::{Check, Lint};
use crate::parser::Ast;
use crate::shell::{EnvLookup, Lexer};
use rbuild_solver::{Graph, VertexId};
use rbuild_types::Digest;
use rbuild_types::oci::{History, ImageConfig, Platform};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;

mod build;
mod checks;
mod config;
mod copy;
mod dispatch;
mod run;
mod stages;

use build::*;
pub use checks::CheckReport;
use checks::StageChecks;
pub use config::*;
use copy::*;

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
                || self.opts.named_contexts.contains(name)
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
