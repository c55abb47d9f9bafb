//! Stages: splitting the Dockerfile into stages, the order they are converted in, and finding a stage by name or index.

use super::*;
use crate::instructions::{Instruction, Location, parse_instruction};
use crate::parser::Ast;
use std::collections::BTreeMap;

impl Converter<'_> {
    pub(super) fn split_stages(&mut self, ast: &Ast) -> Result<(), ConvertError> {
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

    pub(super) fn target_index(&self) -> Result<usize, ConvertError> {
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

    /// Validates every stage's `FROM --platform` as BuildKit does before converting anything: the value, expanded
    /// with the global ARGs, must be one platform that containerd can parse.
    pub(super) fn check_platforms(&mut self) -> Result<(), ConvertError> {
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
    pub(super) fn static_order(&self, target: usize) -> Vec<usize> {
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
    pub(super) fn static_deps(&self, index: usize, earlier_only: bool) -> Vec<usize> {
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
    pub(super) fn find_stage(
        &self,
        reference: &str,
        current: usize,
        at: &Location,
    ) -> Result<Option<usize>, ConvertError> {
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
    pub(super) fn find_stage_from(
        &self,
        reference: &str,
        current: usize,
        at: &Location,
    ) -> Result<Option<usize>, ConvertError> {
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
    pub(super) fn stage_name(&self, index: usize) -> String {
        self.stages[index].name.clone().unwrap_or_else(|| format!("stage-{index}"))
    }

    /// Whether stage `from` depends on stage `to` through references known up front (an explicit-stack search).
    pub(super) fn reaches(&self, from: usize, to: usize) -> bool {
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
    pub(super) fn stage_hint(&self, reference: &str) -> Option<String> {
        let names: Vec<&str> = self.stages.iter().filter_map(|s| s.name.as_deref()).collect();
        crate::suggest(reference, &names).map(|s| format!("no stage is named {reference:?}; did you mean {s:?}?"))
    }
}

pub(super) fn valid_stage_name(n: &str) -> bool {
    n.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}
