//! Conversion checked against what the reference BuildKit (0.13, in Docker 26) wrote for the same Dockerfiles:
//! history strings, config fields, and the shape of the graph for heredocs, remote sources and stage references.

use rbuild_frontend::{BuildPlan, ConvertError, ConvertOptions, HistoryStep, ImageResolver, NoCache, ResolvedImage};
use rbuild_solver::{ExecMount, FileAction, Op};
use rbuild_types::Digest;
use rbuild_types::oci::{ContainerConfig, ImageConfig, Platform};
use std::collections::BTreeMap;

/// Knows `base` (a config with a CMD and an ONBUILD trigger, like a parent image) and fails for anything else.
struct Resolver;

impl ImageResolver for Resolver {
    fn resolve(
        &self,
        reference: &str,
        _platform: &Platform,
    ) -> Result<ResolvedImage, Box<dyn std::error::Error + Send + Sync>> {
        let config = match reference {
            "base" => ContainerConfig {
                env: Some(vec!["PATH=/usr/bin:/bin".into()]),
                cmd: Some(vec!["sh".into()]),
                ..Default::default()
            },
            "parent" => ContainerConfig {
                on_build: Some(vec!["RUN echo from-parent".into(), "ENV CHILD=1".into()]),
                ..Default::default()
            },
            other => return Err(format!("{other}: not found").into()),
        };
        Ok(ResolvedImage {
            reference: reference.to_string(),
            digest: Digest::of(reference.as_bytes()),
            config: ImageConfig { architecture: "amd64".into(), os: "linux".into(), config, ..Default::default() },
        })
    }
}

pub fn opts(build_args: &[(&str, &str)], target: Option<&str>) -> ConvertOptions {
    ConvertOptions {
        build_args: build_args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        target: target.map(str::to_string),
        platform: Platform { architecture: "amd64".into(), os: "linux".into(), variant: None },
        build_platform: Platform { architecture: "amd64".into(), os: "linux".into(), variant: None },
        no_cache: NoCache::None,
        context_excludes: vec!["secret.txt".into()],
        named_contexts: Default::default(),
    }
}

pub fn convert_with(src: &str, o: &ConvertOptions) -> Result<BuildPlan, ConvertError> {
    let ast = rbuild_frontend::parser::parse(src).expect("test Dockerfiles parse");
    rbuild_frontend::convert(&ast, o, &Resolver)
}

pub fn convert(src: &str) -> BuildPlan {
    convert_with(src, &opts(&[], None)).unwrap_or_else(|e| panic!("{e} at {:?} ({:?})", e.location, e.hint))
}

pub fn history(plan: &BuildPlan) -> Vec<String> {
    plan.history
        .iter()
        .filter_map(|h| match h {
            HistoryStep::Base(_) => None,
            HistoryStep::Layer { created_by, .. } | HistoryStep::Meta { created_by } => Some(created_by.clone()),
        })
        .collect()
}

/// The history strings and config of the probe Dockerfile the reference built (`docker build` with BuildKit 0.13,
/// `--build-arg A1=ba1 --build-arg A2=ba2`): byte for byte what it wrote.
#[test]
fn history_and_config_match_buildkit() {
    let src = "FROM base AS b0\nRUN echo b0 > /b0\n\nFROM b0\nARG A1\nARG A2=two\nARG A3=three\nARG A4\n\
ENV E1=e1 A3=env3\nRUN echo $A1 $A2\nCOPY --chown=1:1 --chmod=644 a.txt /x/\nCOPY --from=b0 /etc/passwd /p\n\
COPY <<EOF /h.txt\nhello\nEOF\nCOPY <<A <<B /hd/\naaa\nA\nbbb\nB\nADD a.txt /y\nWORKDIR /w\n\
RUN <<EOF\necho heredoc > /r.txt\nEOF\nRUN <<EOF\n#!/bin/sh\necho shebang > /s.txt\nEOF\nRUN cat <<X > /t.txt\ntt\nX\n\
EXPOSE 80 53/udp\nVOLUME /data /d2\nLABEL k=v \"a b\"=c\nUSER 1000\nSTOPSIGNAL SIGINT\nSHELL [\"/bin/sh\", \"-xc\"]\n\
HEALTHCHECK --interval=5s --retries=3 CMD echo ok\nONBUILD RUN echo onb\nMAINTAINER me\nCMD echo cmd\n\
ENTRYPOINT [\"/bin/sh\"]\n";
    let plan = convert_with(src, &opts(&[("A1", "ba1"), ("A2", "ba2")], None)).unwrap();
    let p = "|4 A1=ba1 A2=ba2 A3=env3 A4=";
    let expected = vec![
        "RUN /bin/sh -c echo b0 > /b0 # buildkit".to_string(),
        "ARG A1".into(),
        "ARG A2=two".into(),
        "ARG A3=three".into(),
        "ARG A4".into(),
        "ENV E1=e1 A3=env3".into(),
        format!("RUN {p} /bin/sh -c echo $A1 $A2 # buildkit"),
        "COPY --chown=1:1 --chmod=644 a.txt /x/ # buildkit".into(),
        "COPY /etc/passwd /p # buildkit".into(),
        "COPY <<EOF /h.txt # buildkit".into(),
        "COPY <<A <<B /hd/ # buildkit".into(),
        "ADD a.txt /y # buildkit".into(),
        "WORKDIR /w".into(),
        format!("RUN {p} /bin/sh -c echo heredoc > /r.txt\n # buildkit"),
        format!("RUN {p} /bin/sh -c /dev/pipes/EOF # buildkit"),
        format!("RUN {p} /bin/sh -c cat <<X > /t.txt\ntt\nX # buildkit"),
        "EXPOSE map[53/udp:{} 80/tcp:{}]".into(),
        "VOLUME [/data /d2]".into(),
        "LABEL k=v a b=c".into(),
        "USER 1000".into(),
        "STOPSIGNAL SIGINT".into(),
        "SHELL [/bin/sh -xc]".into(),
        "HEALTHCHECK &{[\"CMD-SHELL\" \"echo ok\"] \"5s\" \"0s\" \"0s\" \"0s\" '\\x03'}".into(),
        "MAINTAINER me".into(),
        "CMD [\"/bin/sh\" \"-xc\" \"echo cmd\"]".into(),
        "ENTRYPOINT [\"/bin/sh\"]".into(),
    ];
    assert_eq!(history(&plan), expected);
    let c = &plan.config.config;
    assert_eq!(plan.config.author.as_deref(), Some("me"));
    assert_eq!(c.env.as_deref(), Some(&["PATH=/usr/bin:/bin".to_string(), "E1=e1".into(), "A3=env3".into()][..]));
    assert_eq!(c.cmd.as_deref(), Some(&["/bin/sh".to_string(), "-xc".into(), "echo cmd".into()][..]));
    assert_eq!(c.args_escaped, Some(true));
    assert_eq!(c.on_build.as_deref(), Some(&["RUN echo onb".to_string()][..]));
    assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
    let hc = c.healthcheck.as_ref().unwrap();
    assert_eq!((hc.interval, hc.retries, hc.timeout), (Some(5_000_000_000), Some(3), None));
    assert_eq!(c.exposed_ports.keys().collect::<Vec<_>>(), ["53/udp", "80/tcp"]);
    assert_eq!(c.working_dir.as_deref(), Some("/w"));
}

#[test]
fn copy_heredocs_become_files_copied_with_copy_semantics() {
    let plan = convert("FROM base\nARG V=1\nCOPY --chmod=600 <<EOF <<'RAW' /etc/\nv=$V\nEOF\nv=$V\nRAW\n");
    let mkfiles: Vec<(String, String, u32)> = plan
        .graph
        .vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::File(f) if f.dest.is_none() => Some(f.actions.iter().filter_map(|a| match a {
                FileAction::MkFile { path, data, mode, .. } => Some((path.clone(), data.clone(), *mode)),
                _ => None,
            })),
            _ => None,
        })
        .flatten()
        .collect();
    // An unquoted delimiter expands, a quoted one does not.
    assert_eq!(mkfiles, vec![("/EOF".into(), "v=1\n".into(), 0o644), ("/RAW".into(), "v=$V\n".into(), 0o644)]);
    let Op::File(copy) = &plan.graph.vertices[plan.target].op else { panic!("COPY is a file op") };
    let FileAction::Copy(c) = &copy.actions[0] else { panic!("a copy action") };
    assert_eq!(
        (c.sources.clone(), c.dest.as_str(), c.chmod),
        (vec!["EOF".to_string(), "RAW".into()], "/etc/", Some(0o600))
    );
}

#[test]
fn shebang_heredoc_runs_as_a_mounted_script() {
    let plan = convert("FROM base\nRUN <<-EOF\n\t#!/bin/sh\n\techo hi\n\tEOF\n");
    let Op::Exec(exec) = &plan.graph.vertices[plan.target].op else { panic!("RUN is an exec op") };
    assert_eq!(exec.args, ["/bin/sh", "-c", "/dev/pipes/EOF"]);
    let [ExecMount::Bind { target, input, source, readonly }] = exec.mounts.as_slice() else {
        panic!("one bind mount: {:?}", exec.mounts)
    };
    assert_eq!((target.as_str(), source.as_str(), *readonly), ("/dev/pipes", "/", true));
    let script = plan.graph.vertices[plan.target].inputs[*input];
    let Op::File(f) = &plan.graph.vertices[script].op else { panic!("the script is a file op") };
    // <<- strips leading tabs.
    assert_eq!(
        f.actions,
        [FileAction::MkFile { path: "/EOF".into(), data: "#!/bin/sh\necho hi\n".into(), mode: 0o755, owner: None }]
    );
}

#[test]
fn add_urls_and_git_repositories_are_sources() {
    let plan = convert(
        "FROM base\nADD --checksum=sha256:0000000000000000000000000000000000000000000000000000000000000000 \
https://example.com/dl/tool.tar.gz?x=1 /opt/\nADD https://github.com/moby/moby.git#v1.0:docs /src\n\
ADD git@github.com:moby/buildkit.git /bk\n",
    );
    let sources: Vec<&Op> =
        plan.graph.vertices.iter().map(|v| &v.op).filter(|o| matches!(o, Op::Http { .. } | Op::Git { .. })).collect();
    assert_eq!(
        sources,
        [
            &Op::Http {
                url: "https://example.com/dl/tool.tar.gz?x=1".into(),
                checksum: Some(format!("sha256:{}", "0".repeat(64))),
                filename: "tool.tar.gz".into()
            },
            &Op::Git {
                remote: "https://github.com/moby/moby.git".into(),
                reference: "v1.0".into(),
                keep_git_dir: false
            },
            &Op::Git {
                remote: "git@github.com:moby/buildkit.git".into(),
                reference: String::new(),
                keep_git_dir: false
            },
        ]
    );
    let err = convert_with("FROM base\nADD --checksum=sha256:00 a.txt /\n", &opts(&[], None)).unwrap_err();
    assert!(err.message.contains("non-HTTP"), "{}", err.message);
}

/// Issue 11 item 15: `COPY --from` a stage defined later built; BuildKit 0.13 refuses it (checked against the
/// reference: "cannot copy from stage \"b\", it needs to be defined before current stage \"a\"").
#[test]
fn copy_from_a_later_stage_is_an_error_and_a_cycle_says_so() {
    let err =
        convert_with("FROM base AS a\nCOPY --from=b /x /x\nFROM base AS b\nRUN touch /x\nFROM a\n", &opts(&[], None))
            .unwrap_err();
    assert_eq!(err.message, "cannot copy from stage \"b\", it needs to be defined before current stage \"a\"");
    assert_eq!(err.location.map(|l| l.start_line), Some(2));
    // A stage the target does not need may name a later one: BuildKit only checks what it converts.
    assert!(convert_with("FROM base\nCOPY --from=1 /y /y\nFROM base\nRUN true\n", &opts(&[], None)).is_ok());
    let err = convert_with(
        "FROM base AS a\nCOPY --from=b /x /x\nFROM base AS b\nCOPY --from=a /y /y\n",
        &opts(&[], Some("a")),
    )
    .unwrap_err();
    assert!(err.message.contains("circular dependency"), "{}", err.message);
    assert_eq!(err.location.map(|l| l.start_line), Some(2), "points at the COPY that starts the cycle");
    let err = convert_with("FROM base AS a\nCOPY --from=a /y /y\n", &opts(&[], None)).unwrap_err();
    assert!(err.message.contains("circular dependency"), "{}", err.message);
    // FROM only sees earlier stages: a later one is an error at the FROM line, not an image pull.
    let err = convert_with("FROM base\nFROM later AS x\nFROM base AS later\n", &opts(&[], Some("x"))).unwrap_err();
    assert!(err.message.contains("used before it is defined"), "{}", err.message);
    assert_eq!(err.location.map(|l| l.start_line), Some(2));
}

/// Issue 11 item 16: two stages of one name were an error; BuildKit builds, the last one wins for `--from` and
/// `--target`, a FROM line means the last one before it, and newer BuildKit warns (DuplicateStageName).
#[test]
fn duplicate_stage_names_warn_and_the_last_wins() {
    let src = "FROM base AS a\nRUN echo first\nFROM a AS a\nRUN echo second\nFROM base\nCOPY --from=a /x /x\n";
    let plan = convert(src);
    assert_eq!(
        plan.checks.iter().map(|c| c.short()).collect::<Vec<_>>(),
        ["DuplicateStageName: Duplicate stage name \"a\", stage names should be unique (line 3)"]
    );
    let runs: Vec<String> = plan
        .graph
        .vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::Exec(e) => e.args.last().cloned(),
            _ => None,
        })
        .collect();
    assert_eq!(runs, ["echo first", "echo second"], "the second a is built FROM the first");
    let plan = convert_with(src, &opts(&[], Some("a"))).unwrap();
    assert_eq!(history(&plan).last().map(String::as_str), Some("RUN /bin/sh -c echo second # buildkit"));
}

/// Issue 11 item 15: `RUN --mount=from=$VAR` built (and an unset VAR mounted the context); BuildKit refuses any
/// variable in `from`, because it resolves stage dependencies before expanding.
#[test]
fn mount_from_a_variable_is_refused_like_buildkit() {
    for src in [
        "FROM base\nRUN --mount=from=$NOPE,target=/m true\n",
        "FROM base AS s\nFROM base\nARG P=s\nRUN --mount=from=${P},target=/m true\n",
    ] {
        let err = convert_with(src, &opts(&[], None)).unwrap_err();
        assert!(
            err.message.contains("'from' doesn't support variable expansion, define alias stage instead"),
            "{}",
            err.message
        );
    }
}

#[test]
fn unknown_stage_names_suggest_the_stage() {
    let err =
        convert_with("FROM base AS builder\nFROM base\nCOPY --from=buidler /a /a\n", &opts(&[], None)).unwrap_err();
    assert_eq!(err.location.map(|l| l.start_line), Some(3));
    assert_eq!(err.hint.as_deref(), Some("no stage is named \"buidler\"; did you mean \"builder\"?"));
    let err = convert_with("FROM base AS builder\nFROM bulder\n", &opts(&[], None)).unwrap_err();
    assert_eq!(err.location.map(|l| l.start_line), Some(2));
    assert!(err.hint.unwrap_or_default().contains("\"builder\""));
}

#[test]
fn onbuild_triggers_run_in_the_child_only() {
    let plan = convert("FROM parent\nRUN echo child\n");
    let h = history(&plan);
    assert_eq!(h[0], "RUN /bin/sh -c echo from-parent # buildkit");
    assert_eq!(h[1], "ENV CHILD=1");
    assert_eq!(plan.config.config.on_build, None, "triggers are not inherited further");
}

#[test]
fn unused_build_args_make_one_warning() {
    let plan = convert_with(
        "FROM base\nARG USED\n",
        &opts(&[("USED", "1"), ("B", "2"), ("A", "3"), ("HTTP_PROXY", "p")], None),
    )
    .unwrap();
    assert_eq!(plan.warnings, ["[Warning] One or more build-args [A B] were not consumed"]);
}

#[test]
fn copy_keeps_dockerignore_apart_from_exclude() {
    let plan = convert("FROM base\nCOPY --exclude=*.md --parents a/ /dst/\n");
    let Op::File(f) = &plan.graph.vertices[plan.target].op else { panic!("COPY is a file op") };
    let FileAction::Copy(c) = &f.actions[0] else { panic!("a copy") };
    assert_eq!(
        (c.excludes.clone(), c.dockerignore.clone(), c.parents),
        (vec!["*.md".to_string()], vec!["secret.txt".to_string()], true)
    );
    assert_eq!(history(&plan).last().map(String::as_str), Some("COPY --parents a/ /dst/ # buildkit"));
}

/// Issue 11 item 5: WorkingDir was written as "/" when the base image has none; BuildKit keeps the base's (unset)
/// value unless the Dockerfile sets one. A scratch stage starts from BuildKit's empty image, whose WorkingDir is
/// "/" (checked against the reference BuildKit in `testdata/diff/workdir-unset`).
#[test]
fn working_dir_is_the_base_images_unless_the_dockerfile_sets_one() {
    for src in ["FROM base\nCOPY a.txt /\n", "FROM base AS b\nFROM b\nRUN true\n"] {
        let plan = convert(src);
        assert_eq!(plan.config.config.working_dir, None, "{src}");
    }
    assert_eq!(convert("FROM scratch\nRUN true\n").config.config.working_dir.as_deref(), Some("/"));
    let plan = convert("FROM scratch\nWORKDIR app\nRUN true\n");
    assert_eq!(plan.config.config.working_dir.as_deref(), Some("/app"));
    let run = plan.graph.vertices.iter().find_map(|v| match &v.op {
        Op::Exec(e) => Some(e.cwd.clone()),
        _ => None,
    });
    assert_eq!(run.as_deref(), Some("/app"));
}

/// Issue 11 item 17: progress titles showed `${VERSION}` where BuildKit prints the value. Checked against the
/// reference: `RUN --mount=from=s,target=/m echo $V ${E} $NOPE "q" \$V` is shown as
/// `RUN --mount=from=s,target=/m echo dev e1 $NOPE "q" $V`.
#[test]
fn step_titles_show_variables_expanded_as_buildkit_prints_them() {
    let src = "FROM base AS s\nFROM base\nARG V=dev\nENV E=e1\n\
run --mount=from=s,target=/m echo $V ${E} $NOPE \"q\" \\$V\nCOPY --chmod=644 \"a.txt\" /$V/$E/$NOPE\nWORKDIR /w/$V\n\
RUN --mount=type=secret,id=t,env=V echo $V\n";
    let plan = convert(src);
    let names: Vec<&str> =
        plan.graph.vertices.iter().map(|v| v.name.as_str()).filter(|n| n.starts_with("[stage-1]")).collect();
    assert_eq!(
        names,
        [
            "[stage-1] RUN --mount=from=s,target=/m echo dev e1 $NOPE \"q\" $V",
            "[stage-1] COPY --chmod=644 a.txt /dev/e1/",
            "[stage-1] WORKDIR /w/dev",
            "[stage-1] RUN --mount=type=secret,id=t,env=V echo $V",
        ]
    );
}

/// Issue 11 item 15: an unknown `# syntax=` was silently ignored; the built-in one is accepted quietly.
#[test]
fn syntax_directive_other_than_the_builtin_frontend_warns() {
    for ok in [
        "docker/dockerfile:1",
        "docker/dockerfile:1.7",
        "docker.io/docker/dockerfile:1.4.3-labs",
        "docker/dockerfile:1@sha256:ac85",
    ] {
        let plan = convert(&format!("# syntax={ok}\nFROM base\n"));
        assert!(plan.warnings.is_empty(), "{ok}: {:?}", plan.warnings);
    }
    for other in
        ["docker/dockerfile:2", "example.com/my/frontend", "docker/dockerfile-upstream:master", "docker/dockerfile:1.x"]
    {
        let plan = convert(&format!("# syntax={other}\nFROM base\n"));
        assert_eq!(plan.warnings.len(), 1, "{other}");
        assert!(
            plan.warnings[0].starts_with(&format!("line 1: # syntax={other} is not supported")),
            "{:?}",
            plan.warnings
        );
    }
}

/// A redeclared ARG: BuildKit 0.13 (the reference) writes `RUN |3 A=3 B=2 A=3 ...`; the RUN sees each once.
#[test]
fn redeclared_args_in_the_run_prefix_match_buildkit() {
    let plan = convert("FROM base\nARG A=1\nARG B=2\nARG A=3\nRUN true\n");
    assert_eq!(history(&plan).last().map(String::as_str), Some("RUN |3 A=3 B=2 A=3 /bin/sh -c true # buildkit"));
    let env = plan.graph.vertices.iter().find_map(|v| match &v.op {
        Op::Exec(e) => Some(e.env.clone()),
        _ => None,
    });
    assert_eq!(env.unwrap_or_default(), ["PATH=/usr/bin:/bin", "B=2", "A=3"]);
}

/// Regression (issue 11, item 13): `--build-arg http_proxy=...` reached RUN only as `http_proxy`; BuildKit's proxy
/// environment has both spellings. Neither changes the step's cache key or its history.
#[test]
fn proxy_build_args_reach_run_in_both_spellings_and_stay_out_of_keys() {
    use rbuild_solver::{Op, key::cache_key};
    let run_env = |args: &[(&str, &str)]| {
        let plan = convert_with("FROM base\nRUN fetch\n", &opts(args, None)).unwrap();
        let exec = plan.graph.vertices.iter().find_map(|v| match &v.op {
            Op::Exec(e) => Some(e.clone()),
            _ => None,
        });
        let exec = exec.expect("a RUN");
        let key = cache_key(&Op::Exec(exec.clone()), &[], &[]);
        (exec.env, key, history(&plan))
    };
    let (env, key, hist) = run_env(&[("http_proxy", "http://proxy:3128"), ("NO_PROXY", "localhost")]);
    for want in
        ["HTTP_PROXY=http://proxy:3128", "http_proxy=http://proxy:3128", "NO_PROXY=localhost", "no_proxy=localhost"]
    {
        assert!(env.iter().any(|e| e == want), "{want} missing from {env:?}");
    }
    let (_, plain_key, plain_hist) = run_env(&[]);
    assert_eq!(key, plain_key, "proxies stay out of the cache key");
    assert_eq!(hist, plain_hist, "and out of the history");
}

/// Issue 11 item 17: `--build-arg BUILDKIT_SANDBOX_HOSTNAME=h` names every RUN container's host, needs no ARG, is no
/// unused build arg, and is part of the RUN's key (a different host can print a different file).
#[test]
fn sandbox_hostname_build_arg_sets_the_run_hostname_and_its_key() {
    use rbuild_solver::{Op, key::cache_key};
    let run = |args: &[(&str, &str)]| {
        let plan = convert_with("FROM base\nRUN hostname > /h\nFROM base\nRUN true\n", &opts(args, None)).unwrap();
        let exec = plan.graph.vertices.iter().find_map(|v| match &v.op {
            Op::Exec(e) => Some(e.clone()),
            _ => None,
        });
        let exec = exec.expect("a RUN");
        (exec.hostname.clone(), cache_key(&Op::Exec(exec.clone()), &[], &[]), exec.env, plan.warnings)
    };
    let (host, key, env, warnings) = run(&[("BUILDKIT_SANDBOX_HOSTNAME", "box1")]);
    assert_eq!(host, "box1");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(!env.iter().any(|e| e.starts_with("BUILDKIT_SANDBOX_HOSTNAME")), "{env:?}");
    let (default_host, default_key, _, _) = run(&[]);
    assert_eq!(default_host, "", "empty: the executor's default, buildkitsandbox");
    assert_ne!(key, default_key);
}

/// `FROM $UNSET` fails at the FROM line with BuildKit's words, not as an image named "".
#[test]
fn a_blank_base_name_is_refused_like_buildkit() {
    let err = convert_with("ARG IMAGE\nFROM $IMAGE\nRUN true\n", &opts(&[], None)).unwrap_err();
    assert_eq!(err.message, "base name ($IMAGE) should not be blank");
    assert_eq!(err.location.map(|l| l.start_line), Some(2));
}

/// Issue 15: a build for arm64 on amd64. `TARGET*` name the target and `BUILD*` the machine (normalized, as
/// BuildKit's: no `v8`); a `FROM --platform=$BUILDPLATFORM` stage resolves its base for the machine and its RUN
/// steps run natively, the target's carry their platform for the executor to emulate.
#[test]
fn platform_args_and_per_stage_platforms() {
    struct Recording(std::cell::RefCell<Vec<(String, String)>>);
    impl ImageResolver for Recording {
        fn resolve(
            &self,
            reference: &str,
            platform: &Platform,
        ) -> Result<ResolvedImage, Box<dyn std::error::Error + Send + Sync>> {
            self.0.borrow_mut().push((reference.into(), format!("{}/{}", platform.os, platform.architecture)));
            let config = ImageConfig {
                architecture: platform.architecture.clone(),
                os: platform.os.clone(),
                ..Default::default()
            };
            let digest = Digest::of(format!("{reference}/{}", platform.architecture).as_bytes());
            Ok(ResolvedImage { reference: reference.into(), digest, config })
        }
    }
    let mut o = opts(&[], None);
    o.platform = Platform { architecture: "arm64".into(), os: "linux".into(), variant: Some("v8".into()) };
    let src = "FROM --platform=$BUILDPLATFORM base AS build\n\
               ARG TARGETPLATFORM BUILDPLATFORM TARGETVARIANT\n\
               RUN echo $TARGETPLATFORM $BUILDPLATFORM [$TARGETVARIANT]\n\
               FROM base\n\
               ARG TARGETARCH BUILDARCH\n\
               COPY --from=build / /\n\
               RUN echo $TARGETARCH $BUILDARCH\n";
    let ast = rbuild_frontend::parser::parse(src).unwrap();
    let resolver = Recording(Default::default());
    let plan = rbuild_frontend::convert(&ast, &o, &resolver).unwrap();
    let mut asked = resolver.0.take();
    asked.sort();
    asked.dedup();
    assert_eq!(asked, [("base".to_string(), "linux/amd64".to_string()), ("base".into(), "linux/arm64".into())]);
    let runs: Vec<(String, Option<String>)> = plan
        .graph
        .vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::Exec(e) => Some((e.args.join(" "), e.platform.as_ref().map(|p| p.architecture.clone()))),
            _ => None,
        })
        .collect();
    assert_eq!(
        runs,
        [
            ("/bin/sh -c echo $TARGETPLATFORM $BUILDPLATFORM [$TARGETVARIANT]".to_string(), None),
            ("/bin/sh -c echo $TARGETARCH $BUILDARCH".to_string(), Some("arm64".to_string())),
        ]
    );
    let envs: Vec<Vec<String>> = plan
        .graph
        .vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::Exec(e) => Some(
                e.env
                    .iter()
                    .filter(|x| x.contains("PLATFORM=") || x.contains("ARCH=") || x.contains("VARIANT="))
                    .cloned()
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    assert_eq!(
        envs,
        [
            vec!["TARGETPLATFORM=linux/arm64", "BUILDPLATFORM=linux/amd64", "TARGETVARIANT="],
            vec!["TARGETARCH=arm64", "BUILDARCH=amd64"],
        ]
    );
    assert_eq!(plan.config.architecture, "arm64");
}

/// `FROM NAME` of a `--build-context NAME=DIR`: the directory copied onto scratch (a real layer the RUN runs on),
/// never an image lookup; a stage of that name still wins.
#[test]
fn from_a_directory_context_copies_it_onto_scratch() {
    let mut o = opts(&[], None);
    o.named_contexts.insert("extra".into());
    let plan = convert_with("FROM extra\nRUN --security=insecure true\n", &o).unwrap_or_else(|e| panic!("{e}"));
    let v = &plan.graph.vertices;
    let Op::Exec(exec) = &v[plan.target].op else { panic!("RUN is an exec op") };
    assert!(exec.insecure, "RUN --security=insecure marks the step");
    let root = &v[v[plan.target].inputs[0]];
    let Op::File(f) = &root.op else { panic!("the rootfs is a copy: {:?}", root.op) };
    let [FileAction::Copy(c)] = f.actions.as_slice() else { panic!("{:?}", f.actions) };
    assert_eq!((c.sources.as_slice(), c.dest.as_str(), f.dest), (&["/".to_string()][..], "/", Some(0)));
    assert_eq!(v[root.inputs[0]].op, Op::Scratch);
    assert_eq!(v[root.inputs[1]].op, Op::Context { name: "extra".into() });
    assert!(
        rbuild_frontend::image_references(&rbuild_frontend::parser::parse("FROM extra\n").unwrap(), &o, false)
            .is_empty()
    );

    let staged = convert_with("FROM base AS extra\nFROM extra\nRUN true\n", &o).unwrap_or_else(|e| panic!("{e}"));
    assert!(!staged.graph.vertices.iter().any(|v| matches!(v.op, Op::Context { .. })), "the stage wins");
    let bad = convert_with("FROM base\nRUN --security=root true\n", &o).err().map(|e| e.to_string());
    assert!(bad.is_some_and(|e| e.contains("unsupported security mode \"root\"")));
}
