//! Where conversion runs the build checks ([`crate::lint`]): FROM lines of every stage before conversion, and
//! per instruction while dispatching, with the stage's variables, as BuildKit's dispatcher does.

use super::{Converter, StageState, StageVars, platform_args};
use crate::instructions::{Instruction, Located, Location, parse_instruction};
use crate::lint::Check;
use crate::parser::Ast;
use std::collections::{BTreeMap, BTreeSet};

/// The most variables a stage may have for UndefinedVar to look for a close name among them.
const MAX_SUGGESTION_OPTIONS: usize = 256;

/// What BuildKit tracks per stage for the checks: whether a WORKDIR was set in this Dockerfile (inherited from a
/// parent stage), and where the last CMD, ENTRYPOINT and HEALTHCHECK were (not inherited).
#[derive(Debug, Clone, Default)]
pub(super) struct StageChecks {
    pub workdir_set: bool,
    pub cmd: Option<Location>,
    pub entrypoint: Option<Location>,
    pub healthcheck: Option<Location>,
}

/// The result of `--call check`: the findings, and the error that stopped conversion, if any (as BuildKit's lint
/// request reports a build error next to the warnings found before it).
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub checks: Vec<Check>,
    pub error: Option<super::ConvertError>,
}

/// The instruction keyword as written (`cmd`, `Env`): BuildKit's messages quote it that way.
pub(super) fn written_keyword(located: &Located) -> &str {
    located.original.split_whitespace().next().unwrap_or_default()
}

/// Global scope with no build arguments: the platform ARGs and the meta ARGs' own defaults.
fn default_globals(ast: &Ast, opts: &super::ConvertOptions, lexer: crate::shell::Lexer) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = platform_args(opts).into_iter().collect();
    for node in &ast.root.children {
        if node.value == "from" {
            break;
        }
        let Ok(Located { instruction: Instruction::Arg(args), .. }) = parse_instruction(node) else { continue };
        for (k, default) in args {
            if let Some(d) = default
                && let Ok(v) = lexer.process_word(&d, &env)
            {
                env.insert(k, v);
            }
        }
    }
    env
}

impl Converter<'_> {
    /// The FROM-line rules over every stage: InvalidDefaultArgInFrom (with defaults only), then per stage
    /// UndefinedArgInFrom for the image and the platform, RedundantTargetPlatform and
    /// FromPlatformFlagConstDisallowed.
    pub(super) fn check_from_lines(&mut self, ast: &Ast) {
        let defaults = default_globals(ast, self.opts, self.lexer);
        for stage in &self.stages {
            if let Ok(expanded) = self.lexer.process_word(&stage.base, &defaults) {
                self.lint.default_arg_in_from(&stage.base, &expanded, &stage.from);
            }
        }
        let mut declared: BTreeSet<String> = self.global.keys().cloned().collect();
        declared.extend(self.declared_meta_args.iter().cloned());
        declared.extend(["BUILDOSVERSION", "TARGETOSVERSION", "TARGETSTAGE"].map(String::from));
        // As for UndefinedVar, no "did you mean" among very many names.
        let options: Vec<&str> = if declared.len() <= MAX_SUGGESTION_OPTIONS {
            declared.iter().map(String::as_str).collect()
        } else {
            Vec::new()
        };
        let is_declared = |name: &str| declared.contains(name);
        let target_platform = self.global.get("TARGETPLATFORM").cloned().unwrap_or_default();
        for i in 0..self.stages.len() {
            let (base, platform, name, at) = {
                let s = &self.stages[i];
                (s.base.clone(), s.platform.clone(), s.name.clone().unwrap_or_default(), s.from.clone())
            };
            if let Ok(p) = self.lexer.process(&base, &self.global) {
                self.lint.undefined_arg_in_from(&p.unmatched, &is_declared, &options, &at);
            }
            if let Some(expr) = platform
                && let Ok(p) = self.lexer.process(&expr, &self.global)
            {
                self.lint.undefined_arg_in_from(&p.unmatched, &is_declared, &options, &at);
                self.lint.from_platform(&expr, &p, &target_platform, &name, &at);
            }
        }
    }

    /// UndefinedVar for one word the stage expands.
    pub(super) fn check_undefined(&mut self, word: &str, state: &StageState, at: &Location) {
        if !self.lint.enabled(&crate::lint::rules::UNDEFINED_VAR) || !word.contains('$') {
            return;
        }
        let Ok(p) = self.lexer.process(word, &StageVars(state)) else { return };
        if p.unmatched.is_empty() {
            return;
        }
        let declared = |name: &str| state.arg_pos.contains_key(name);
        if p.unmatched.iter().all(|v| declared(v)) {
            return;
        }
        // "Did you mean" compares against every variable of the stage: skipped for stages with very many, so
        // that a Dockerfile of thousands of ENV lines stays linear.
        let count = state.config.config.env.as_ref().map_or(0, Vec::len) + state.args.len();
        let mut options: Vec<&str> = Vec::new();
        if count <= MAX_SUGGESTION_OPTIONS {
            let env = state.config.config.env.iter().flatten();
            options.extend(env.map(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k)));
            options.extend(state.current_args().filter(|(_, v)| v.is_some()).map(|(k, _)| k));
        }
        self.lint.undefined_vars(&p.unmatched, &declared, options, at);
    }

    /// The checks that look at an instruction as a whole before it is dispatched: UndefinedVar for the words
    /// BuildKit expands up front (not ARG, whose defaults see the ARGs before them, nor RUN/CMD/ENTRYPOINT),
    /// LegacyKeyValueFormat, and, with the stage's state, JSONArgsRecommended, MultipleInstructionsDisallowed and
    /// WorkdirRelativePath.
    pub(super) fn check_instruction(&mut self, state: &mut StageState, located: &Located) {
        let at = &located.location;
        let kw = written_keyword(located);
        let mut words: Vec<&str> = Vec::new();
        match &located.instruction {
            Instruction::Env(pairs) | Instruction::Label(pairs) => {
                for (k, v) in pairs {
                    words.extend([k.as_str(), v.as_str()]);
                }
                if self.lint.legacy_kv_lines.contains(&at.start_line) {
                    self.lint.legacy_key_value(kw, at);
                }
            }
            Instruction::User(w) | Instruction::Stopsignal(w) => words.push(w),
            Instruction::Workdir(w) => {
                words.push(w);
                let path = self.lexer.process_word(w, &StageVars(state)).unwrap_or_else(|_| w.clone());
                self.lint.workdir(&path, state.checks.workdir_set, at);
                state.checks.workdir_set = true;
            }
            Instruction::Volume(ws) | Instruction::Expose(ws) => words.extend(ws.iter().map(String::as_str)),
            Instruction::Copy(c) | Instruction::Add(c) => {
                words.extend(c.chown.as_deref());
                words.extend(c.chmod.as_deref());
                words.extend(c.sources.iter().map(String::as_str).filter(|w| !w.starts_with("<<")));
                words.push(&c.dest);
            }
            Instruction::Cmd(cmd) | Instruction::Entrypoint(cmd) => {
                let is_cmd = matches!(located.instruction, Instruction::Cmd(_));
                let slot = if is_cmd { &mut state.checks.cmd } else { &mut state.checks.entrypoint };
                let previous = slot.replace(at.clone());
                self.lint.used_once(kw, previous.as_ref());
                if matches!(cmd, crate::instructions::Command::Shell(_)) {
                    let shell_set = state.config.config.shell.as_ref().is_some_and(|s| !s.is_empty());
                    self.lint.json_args(kw, shell_set, at);
                }
            }
            Instruction::Healthcheck(_) => {
                let previous = state.checks.healthcheck.replace(at.clone());
                self.lint.used_once(kw, previous.as_ref());
            }
            _ => {}
        }
        for w in words {
            self.check_undefined(w, state, at);
        }
    }

    /// ExposeProtoCasing and ExposeInvalidFormat for the expanded words of an EXPOSE.
    pub(super) fn check_expose(&mut self, word: &str, at: &Location) {
        self.lint.expose(word, at);
    }

    /// CopyIgnoredFile for a source path read from the build context.
    pub(super) fn check_copy_source(&mut self, is_add: bool, src: &str, at: &Location) {
        if let Some(m) = &self.ignore_matcher {
            self.lint.copy_ignored(if is_add { "Add" } else { "Copy" }, src, m, at);
        }
    }

    /// InvalidBaseImagePlatform: the resolved base image is for another OS or architecture than the build.
    /// InvalidBaseImagePlatform: the base image resolved for `platform` (the stage's) is for another one.
    pub(super) fn check_base_platform(
        &mut self,
        image: &str,
        config: &rbuild_types::oci::ImageConfig,
        platform: &rbuild_types::oci::Platform,
        at: &Location,
    ) {
        let expected = crate::platform::normalize(platform);
        let actual = crate::platform::normalize(&rbuild_types::oci::Platform {
            os: config.os.clone(),
            architecture: config.architecture.clone(),
            variant: config.variant.clone(),
        });
        if actual.os.is_empty() && actual.architecture.is_empty() {
            return;
        }
        if expected.os != actual.os || expected.architecture != actual.architecture {
            self.lint.base_image_platform(
                image,
                &crate::platform::format(&expected),
                &crate::platform::format(&actual),
                at,
            );
        }
    }
}
