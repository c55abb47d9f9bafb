//! Dispatching one instruction: the config instructions (ENV, LABEL, CMD, HEALTHCHECK, ...) and the step names.

use super::*;
use crate::instructions::{Command, HealthcheckInstr, Instruction, Located, Location};
use crate::parser::quote::go_quote_list;
use rbuild_solver::{FileAction, FileOp, Op, Vertex};
use rbuild_types::oci::Healthcheck;
use std::collections::BTreeMap;

impl Converter<'_> {
    /// A step's progress title: the instruction with the stage's variables expanded, as BuildKit prints it
    /// (`RUN echo dev` for `RUN echo $VERSION`). For RUN (`run`) quotes and unset variables stay as written; for
    /// COPY, ADD and WORKDIR quotes are removed and unset variables are empty. A RUN that maps secrets to
    /// environment variables is shown as written, so that no variable of that name is printed. The first word is
    /// upper-cased; a word that does not expand is shown as written.
    pub(super) fn step_name(&self, index: usize, state: &StageState, original: &str, run: Option<bool>) -> String {
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
    pub(super) fn dispatch(
        &mut self,
        index: usize,
        state: &mut StageState,
        located: &Located,
    ) -> Result<(), ConvertError> {
        let before = self.graph.vertices.len();
        let result = self.dispatch_one(index, state, located);
        for v in before..self.graph.vertices.len() {
            self.locations.entry(v).or_insert_with(|| located.location.clone());
        }
        result
    }

    pub(super) fn dispatch_one(
        &mut self,
        index: usize,
        state: &mut StageState,
        located: &Located,
    ) -> Result<(), ConvertError> {
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

    pub(super) fn shell(state: &StageState) -> Vec<String> {
        state.config.config.shell.clone().unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    pub(super) fn command_args(&self, state: &StageState, c: &Command) -> Vec<String> {
        match c {
            Command::Exec(v) => v.clone(),
            Command::Shell(s) => {
                let mut v = Self::shell(state);
                v.push(s.clone());
                v
            }
        }
    }

    pub(super) fn healthcheck(
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
}
