//! RUN: the command, its environment and its mounts.

use super::*;
use crate::instructions::{Command, Located, Location};
use crate::parser;
use crate::shell::EnvLookup;
use rbuild_solver::{ExecOp, FileAction, FileOp, Network, Op, Vertex, VertexId};

impl Converter<'_> {
    /// Environment of a RUN: the image's ENV plus the stage's ARGs (ENV wins), plus proxy build args.
    pub(super) fn run_env(&mut self, state: &StageState) -> Vec<String> {
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

    pub(super) fn dispatch_run(
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
        let insecure = match run.security.as_deref() {
            None | Some("sandbox") => false,
            Some("insecure") => true,
            Some(other) => {
                return Err(ConvertError::at(at, format!("unsupported security mode {other:?}"))
                    .hint("use --security=sandbox or insecure"));
            }
        };
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
            insecure,
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
    pub(super) fn run_mounts(
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
}
