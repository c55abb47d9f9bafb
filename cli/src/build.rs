//! `rbuild build`: Dockerfile → plan → solve → image config → store (and registry).

use crate::progress::PlainProgress;
use crate::render;
use crate::resolver::StoreResolver;
use crate::{Env, open_store};
use anyhow::{Context as _, Result, bail};
use rbuild_cache::ImageRecord;
use rbuild_executor::runtime::options;
use rbuild_executor::worker::LocalWorker;
use rbuild_frontend::{ConvertOptions, NoCache, convert};
use rbuild_image::registry::{ImageRef, RegistryClient};
use rbuild_solver::oci::to_canonical_json;
use rbuild_solver::{SolveOptions, WorkerError, solve};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Name (and optionally tag) for the image; may be repeated
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    tags: Vec<String>,
    /// The Dockerfile [default: CONTEXT/Dockerfile, else CONTEXT/dockerfile]
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Set a build-time variable (KEY=VALUE, or KEY to take it from the environment)
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    build_args: Vec<String>,
    /// The stage to build
    #[arg(long)]
    target: Option<String>,
    /// Run every step, ignoring the cache
    #[arg(long)]
    no_cache: bool,
    /// Run every step of these stages, ignoring the cache
    #[arg(long = "no-cache-filter", value_name = "STAGE")]
    no_cache_filter: Vec<String>,
    /// Ask the registry for base images even if they are in the local store
    #[arg(long)]
    pull: bool,
    /// Push the image to the registry named by each -t
    #[arg(long)]
    push: bool,
    /// How many RUN steps may run at once [default: twice the number of CPUs, at least 4]
    #[arg(long)]
    jobs: Option<usize>,
    /// Write the image ID to this file
    #[arg(long, value_name = "FILE")]
    iidfile: Option<PathBuf>,
    /// A secret for RUN --mount=type=secret: id=NAME,src=FILE or id=NAME,env=VAR
    #[arg(long = "secret", value_name = "id=NAME,src=FILE|env=VAR")]
    secrets: Vec<String>,
    /// An SSH agent for RUN --mount=type=ssh: default (from $SSH_AUTH_SOCK) or ID=SOCKET
    #[arg(long = "ssh", value_name = "default|ID[=SOCKET]")]
    ssh: Vec<String>,
    /// Say, for every step that runs, why it missed the cache (changed instruction, file, build arg, input)
    #[arg(long)]
    explain_cache: bool,
    /// The network of RUN steps without --network: default (a private namespace with outbound access through
    /// slirp4netns), none (only loopback) or host (the host's; needs --allow network.host)
    #[arg(long, value_enum, default_value = "default")]
    network: NetworkFlag,
    /// Grant an entitlement: network.host (RUN --network=host, --network host), security.insecure; repeatable,
    /// or comma-separated
    #[arg(long = "allow", value_name = "ENTITLEMENT", value_delimiter = ',')]
    allow: Vec<String>,
    /// Set a label on the image (KEY=VALUE; wins over a LABEL of the same key in the Dockerfile)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    #[command(flatten)]
    outputs: crate::outputs::OutputArgs,
    #[command(flatten)]
    container: ContainerArgs,
    #[command(flatten)]
    runtime: crate::runtime_arg::RuntimeArgs,
    /// The build context directory
    context: PathBuf,
}

/// The settings of RUN containers, as `docker build` defines them (sizes like `64m`, `1g`); see
/// [`rbuild_executor::runtime::options`].
#[derive(Debug, Clone, clap::Args)]
struct ContainerArgs {
    /// Memory limit of each RUN step (e.g. 64m, 1g)
    #[arg(short = 'm', long, value_name = "BYTES", value_parser = options::parse_memory)]
    memory: Option<i64>,
    /// Memory plus swap limit of each RUN step; -1 for unlimited swap
    #[arg(long, value_name = "BYTES", value_parser = options::parse_memory_swap, allow_hyphen_values = true)]
    memory_swap: Option<i64>,
    /// CPU shares (relative weight) of RUN steps
    #[arg(short = 'c', long, value_name = "SHARES")]
    cpu_shares: Option<u64>,
    /// CFS period of RUN steps, in microseconds
    #[arg(long, value_name = "MICROSECONDS")]
    cpu_period: Option<u64>,
    /// CFS quota of RUN steps, in microseconds per period
    #[arg(long, value_name = "MICROSECONDS", allow_hyphen_values = true)]
    cpu_quota: Option<i64>,
    /// Number of CPUs each RUN step may use (e.g. 1.5): a CFS quota per 100 ms period
    #[arg(long, value_name = "CPUS", value_parser = options::parse_cpus, conflicts_with_all = ["cpu_period", "cpu_quota"])]
    cpus: Option<i64>,
    /// CPUs RUN steps may use (e.g. 0-2,4)
    #[arg(long, value_name = "CPUS", value_parser = options::parse_cpuset)]
    cpuset_cpus: Option<String>,
    /// Maximum number of processes and threads in each RUN step (rbuild's; -1 or 0 for no limit)
    #[arg(long, value_name = "N", default_value_t = options::DEFAULT_PIDS_LIMIT, allow_hyphen_values = true)]
    pids_limit: i64,
    /// Add a host to the /etc/hosts of RUN steps: HOST:IP or HOST=IP; repeatable
    #[arg(long = "add-host", value_name = "HOST:IP", value_parser = options::parse_add_host)]
    add_hosts: Vec<options::HostEntry>,
    /// Size of /dev/shm in RUN steps [default: 64m]
    #[arg(long, value_name = "BYTES", value_parser = options::parse_shm_size)]
    shm_size: Option<u64>,
    /// A resource limit of RUN steps: NAME=SOFT[:HARD] (e.g. nofile=1024:2048); repeatable
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]", value_parser = options::parse_ulimit)]
    ulimits: Vec<options::Ulimit>,
}

impl ContainerArgs {
    fn options(&self) -> Result<options::ContainerOptions> {
        let out = options::ContainerOptions {
            memory: self.memory,
            memory_swap: self.memory_swap,
            cpu_shares: self.cpu_shares,
            cpu_period: self.cpu_period.or(self.cpus.map(|_| options::CPUS_PERIOD)),
            cpu_quota: self.cpu_quota.or(self.cpus),
            cpuset_cpus: self.cpuset_cpus.clone(),
            pids_limit: Some(self.pids_limit).filter(|n| *n > 0),
            extra_hosts: self.add_hosts.clone(),
            shm_size: self.shm_size.unwrap_or(options::DEFAULT_SHM_SIZE),
            ulimits: self.ulimits.clone(),
        };
        out.validate()?;
        Ok(out.with_swap_default(options::host_limits_swap()))
    }
}

/// `--network`: the network mode RUN steps get unless they say otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum NetworkFlag {
    Default,
    None,
    Host,
}

/// What `--allow` granted (buildx's entitlements).
#[derive(Debug, Default, PartialEq, Eq)]
struct Entitlements {
    network_host: bool,
    /// Parsed for buildx compatibility; `RUN --security=insecure` stays refused (every step runs sandboxed).
    security_insecure: bool,
}

fn parse_entitlements(allow: &[String]) -> Result<Entitlements> {
    let mut out = Entitlements::default();
    for a in allow.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
        match a {
            "network.host" => out.network_host = true,
            "security.insecure" => out.security_insecure = true,
            other => bail!("unknown entitlement {other:?} in --allow: use network.host or security.insecure"),
        }
    }
    Ok(out)
}

const NETWORK_HOST_HINT: &str = "pass --allow network.host to rbuild build to let steps use the host's network";

/// Gives every RUN step that did not choose a network the build's (`--network`), and refuses host networking
/// that the `network.host` entitlement does not allow, naming the first step that asks for it.
fn apply_network(
    plan: &mut rbuild_frontend::BuildPlan,
    flag: NetworkFlag,
    allowed: &Entitlements,
) -> Result<(), rbuild_frontend::ConvertError> {
    use rbuild_solver::{Network, Op};
    let build_default = match flag {
        NetworkFlag::Default => Network::Default,
        NetworkFlag::None => Network::None,
        NetworkFlag::Host => Network::Host,
    };
    for (id, vertex) in plan.graph.vertices.iter_mut().enumerate() {
        let Op::Exec(exec) = &mut vertex.op else { continue };
        if exec.network == Network::Default {
            exec.network = build_default;
        } else if exec.network == Network::Host && !allowed.network_host {
            return Err(rbuild_frontend::ConvertError {
                message: "RUN --network=host needs the network.host entitlement".into(),
                hint: Some(NETWORK_HOST_HINT.into()),
                location: plan.locations.get(&id).cloned(),
            });
        }
    }
    Ok(())
}

fn parse_build_args(args: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in args {
        match a.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            Some(_) => bail!("invalid --build-arg {a:?}: the name is empty"),
            None => {
                // Docker takes `--build-arg NAME` from the environment, and ignores it when unset.
                if let Ok(v) = std::env::var(a) {
                    out.insert(a.clone(), v);
                }
            }
        }
    }
    Ok(out)
}

/// `--label KEY=VALUE` (as docker: `--label KEY` alone is an empty value).
fn parse_labels(args: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in args {
        let (k, v) = a.split_once('=').unwrap_or((a.as_str(), ""));
        if k.is_empty() {
            bail!("invalid --label {a:?}: the key is empty");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// The largest Dockerfile (and `.dockerignore`) rbuild reads: 10 MiB, like BuildKit's limit on a Dockerfile.
/// Both come from the build's input, so `-f /dev/zero` or a huge file must be an error, not unbounded memory.
const MAX_INPUT_FILE: u64 = 10 << 20;

/// Reads a text file of at most [`MAX_INPUT_FILE`] bytes.
fn read_limited(path: &Path, what: &str) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?.take(MAX_INPUT_FILE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_INPUT_FILE {
        return Err(std::io::Error::other(format!("{what} is larger than the limit of {} MiB", MAX_INPUT_FILE >> 20)));
    }
    Ok(text)
}

/// `.dockerignore` patterns: `<Dockerfile>.dockerignore` beside the Dockerfile wins over the context's. A file in
/// the context is context content, read beneath it (a `.dockerignore` linking to `/etc/shadow` reads the context's
/// own `etc/shadow`, if any); one outside it was named by whoever ran the build and is read as named.
fn ignore_patterns(context: &Path, dockerfile: &Path) -> Result<Vec<String>> {
    let root = rbuild_cache::confined::Root::open(context)
        .with_context(|| format!("opening the build context {}", context.display()))?;
    let beside = PathBuf::from(format!("{}.dockerignore", dockerfile.display()));
    for candidate in [beside, context.join(".dockerignore")] {
        let read = match candidate.strip_prefix(context) {
            Ok(rel) => root.read_in_root(rel).and_then(|bytes| {
                if bytes.len() as u64 > MAX_INPUT_FILE {
                    Err(std::io::Error::other(format!(
                        ".dockerignore is larger than the limit of {} MiB",
                        MAX_INPUT_FILE >> 20
                    )))
                } else {
                    Ok(String::from_utf8_lossy(&bytes).into_owned())
                }
            }),
            Err(_) => read_limited(&candidate, ".dockerignore"),
        };
        match read {
            Ok(text) => return Ok(rbuild_frontend::dockerignore::read_ignore_file(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", candidate.display())),
        }
    }
    Ok(Vec::new())
}

pub async fn run(env: &Env, args: BuildArgs) -> Result<ExitCode> {
    let canceller = rbuild_executor::cancel::Canceller::new();
    let interrupted = crate::interrupt::watch(canceller.clone()).context("installing the Ctrl-C handler")?;
    let mount_sources =
        crate::secrets::mount_sources(&args.secrets, &args.ssh, &|name: &str| std::env::var(name).ok())?;
    let context = args.context.clone();
    if !context.is_dir() {
        bail!("build context {} is not a directory", context.display());
    }
    // Like docker build: `Dockerfile`, else `dockerfile`.
    let dockerfile = args.file.clone().unwrap_or_else(|| {
        let upper = context.join("Dockerfile");
        let lower = context.join("dockerfile");
        if !upper.exists() && lower.exists() { lower } else { upper }
    });
    let text = read_limited(&dockerfile, "the Dockerfile")
        .with_context(|| format!("reading the Dockerfile {}", dockerfile.display()))?;
    let shown_name =
        dockerfile.file_name().map_or_else(|| dockerfile.display().to_string(), |n| n.to_string_lossy().into_owned());
    let ast = match rbuild_frontend::parser::parse(&text) {
        Ok(a) => a,
        Err(e) => {
            render::parse_error(&shown_name, &text, &e);
            return Ok(ExitCode::from(1));
        }
    };
    for w in &ast.warnings {
        eprintln!("warning: {shown_name}:{}: {}", w.line, w.message);
    }
    let mut tags = Vec::new();
    for t in &args.tags {
        tags.push(ImageRef::parse(t).with_context(|| format!("invalid tag {t:?}"))?);
    }
    if args.push && tags.is_empty() {
        bail!("--push needs a name to push to: add -t REGISTRY/REPOSITORY[:TAG]");
    }
    let outputs = crate::outputs::plan(&args.outputs, &tags, args.push)?;
    let labels = parse_labels(&args.labels)?;
    let platform = crate::outputs::platform(&args.outputs)?;
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => {
            Some(v.parse::<i64>().with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?)
        }
        _ => None,
    };

    let entitlements = parse_entitlements(&args.allow)?;
    let container_options = args.container.options()?;
    if args.network == NetworkFlag::Host && !entitlements.network_host {
        bail!("--network host needs the network.host entitlement; {NETWORK_HOST_HINT}");
    }

    let store = Arc::new(open_store(env)?);
    let client = Arc::new(RegistryClient::new(env.registry.clone()));
    let opts = ConvertOptions {
        build_args: parse_build_args(&args.build_args)?,
        target: args.target.clone(),
        platform,
        no_cache: if args.no_cache {
            NoCache::All
        } else if args.no_cache_filter.is_empty() {
            NoCache::None
        } else {
            NoCache::Stages(args.no_cache_filter.clone())
        },
        context_excludes: ignore_patterns(&context, &dockerfile)?,
    };
    let resolver = StoreResolver {
        store: store.clone(),
        client: client.clone(),
        handle: tokio::runtime::Handle::current(),
        pull: args.pull,
    };
    let plan = tokio::task::spawn_blocking(move || convert(&ast, &opts, &resolver)).await?;
    let mut plan = match plan {
        Ok(p) => p,
        Err(e) => {
            render::convert_error(&shown_name, &text, &e);
            return Ok(ExitCode::from(1));
        }
    };
    for w in &plan.warnings {
        eprintln!("{w}");
    }
    if let Err(e) = apply_network(&mut plan, args.network, &entitlements) {
        render::convert_error(&shown_name, &text, &e);
        return Ok(ExitCode::from(1));
    }
    // `--add-host`, `--ulimit` and `--shm-size` change what a RUN can produce: they are part of its key.
    let settings = container_options.key_settings();
    for vertex in &mut plan.graph.vertices {
        if let rbuild_solver::Op::Exec(exec) = &mut vertex.op {
            exec.settings.clone_from(&settings);
        }
    }

    let context_abs = std::fs::canonicalize(&context).with_context(|| format!("resolving {}", context.display()))?;
    let worker = Arc::new(
        LocalWorker::new(store.clone(), context_abs, epoch)?
            .with_runtime(args.runtime.kind()?)?
            .with_mount_sources(mount_sources)
            .with_container_options(container_options)
            .with_canceller(canceller),
    );
    let progress = Arc::new(PlainProgress::new());
    let graph = Arc::new(std::mem::take(&mut plan.graph));
    let mut solve_opts = SolveOptions::default();
    if let Some(j) = args.jobs {
        solve_opts.jobs = j.max(1);
    }
    // Steps are remembered per Dockerfile and target, so --explain-cache compares a step with its own last run.
    let dockerfile_abs = std::fs::canonicalize(&dockerfile).unwrap_or_else(|_| dockerfile.clone());
    solve_opts.record_scope =
        Some(format!("{}\n{}", dockerfile_abs.display(), args.target.as_deref().unwrap_or_default()));
    solve_opts.explain = args.explain_cache;
    let result =
        solve(graph.clone(), &[plan.target], worker.clone(), store.clone(), progress.clone(), solve_opts).await;
    worker.finish();
    let solved = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("------");
            eprintln!(" > {}:", e.name);
            let tail = match e.source.as_ref() {
                WorkerError::ExitCode { tail, .. } => tail.clone(),
                _ => Vec::new(),
            };
            for line in tail.iter().rev().take(10).rev() {
                eprintln!("   {line}");
            }
            eprintln!("------");
            let mut msg = format!("error: failed to solve: {}", e.source);
            let mut cause = std::error::Error::source(e.source.as_ref());
            while let Some(c) = cause {
                let text = c.to_string();
                if !msg.contains(&text) {
                    msg.push_str(&format!(": {text}"));
                }
                cause = c.source();
            }
            eprintln!("{msg}");
            if let Some(loc) = plan.locations.get(&e.vertex) {
                eprint!("{}", render::snippet(&shown_name, &text, loc.start_line, loc.end_line));
            }
            return Ok(ExitCode::from(if interrupted.get() { 130 } else { 1 }));
        }
    };
    if interrupted.get() {
        return Ok(ExitCode::from(130));
    }

    let mut config = rbuild_frontend::history::image_config(&plan, &solved, chrono::Utc::now().timestamp(), epoch);
    if !labels.is_empty() {
        config.config.labels.get_or_insert_with(Default::default).extend(labels);
    }
    let config_digest = store.write_blob(&to_canonical_json(&config))?;
    eprintln!("writing image {config_digest}");
    for t in &tags {
        store.set_tag(&ImageRecord { name: t.to_string(), config: config_digest.clone(), manifest: None })?;
        eprintln!("naming to {t}");
    }
    if let Some(f) = &args.iidfile {
        std::fs::write(f, config_digest.as_str()).with_context(|| format!("writing {}", f.display()))?;
    }
    crate::outputs::finish(&store, &client, &config_digest, &outputs, args.outputs.metadata_file.as_deref(), epoch)
        .await?;
    let ran = solved.iter().zip(&graph.vertices).any(|(s, v)| {
        s.as_ref().is_some_and(|s| !s.cached) && matches!(v.op, rbuild_solver::Op::Exec(_) | rbuild_solver::Op::File(_))
    });
    if ran {
        // The store must be released first: collection needs it to itself.
        drop(worker);
        drop(store);
        crate::storage::auto_gc(env);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbuild_frontend::instructions::Location;
    use rbuild_solver::{ExecOp, Graph, Network, Op, Vertex};

    fn plan(networks: &[Network]) -> rbuild_frontend::BuildPlan {
        let mut graph = Graph::default();
        let mut locations = BTreeMap::new();
        let base = graph.add(Vertex { op: Op::Scratch, inputs: vec![], name: "scratch".into(), ignore_cache: false });
        for (i, network) in networks.iter().enumerate() {
            let exec = ExecOp {
                args: vec!["true".into()],
                env: vec![],
                cwd: "/".into(),
                user: String::new(),
                network: *network,
                mounts: vec![],
                settings: Vec::new(),
            };
            let v = graph.add(Vertex {
                op: Op::Exec(exec),
                inputs: vec![base],
                name: format!("RUN {i}"),
                ignore_cache: false,
            });
            locations.insert(v, Location { start_line: i + 2, end_line: i + 2 });
        }
        rbuild_frontend::BuildPlan {
            graph,
            target: base,
            config: Default::default(),
            history: vec![],
            warnings: vec![],
            locations,
        }
    }

    fn networks(plan: &rbuild_frontend::BuildPlan) -> Vec<Network> {
        plan.graph
            .vertices
            .iter()
            .filter_map(|v| match &v.op {
                Op::Exec(e) => Some(e.network),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn allow_takes_repeats_and_comma_lists_and_refuses_unknown_names() {
        let all = ["security.insecure".to_string(), "network.host".to_string()];
        assert_eq!(
            parse_entitlements(&all).expect("known"),
            Entitlements { network_host: true, security_insecure: true }
        );
        assert_eq!(parse_entitlements(&[]).expect("none"), Entitlements::default());
        let err = parse_entitlements(&["network.hots".to_string()]).expect_err("unknown");
        assert!(err.to_string().contains("network.hots"), "{err}");
    }

    #[test]
    fn network_flag_fills_in_steps_that_did_not_choose() {
        let granted = Entitlements { network_host: true, ..Entitlements::default() };
        for (flag, want) in [
            (NetworkFlag::Default, Network::Default),
            (NetworkFlag::None, Network::None),
            (NetworkFlag::Host, Network::Host),
        ] {
            let mut p = plan(&[Network::Default, Network::None, Network::Host]);
            apply_network(&mut p, flag, &granted).expect("allowed");
            assert_eq!(networks(&p), [want, Network::None, Network::Host], "{flag:?}");
        }
    }

    #[test]
    fn run_network_host_without_the_entitlement_names_its_line() {
        let mut p = plan(&[Network::Default, Network::Host]);
        let err = apply_network(&mut p, NetworkFlag::Default, &Entitlements::default()).expect_err("refused");
        assert_eq!(err.message, "RUN --network=host needs the network.host entitlement");
        assert_eq!(err.location, Some(Location { start_line: 3, end_line: 3 }));
        assert!(err.hint.as_deref().is_some_and(|h| h.contains("--allow network.host")), "{err:?}");
    }

    #[derive(clap::Parser, Debug)]
    struct ContainerFlags {
        #[command(flatten)]
        container: ContainerArgs,
    }

    fn container_options(args: &[&str]) -> Result<options::ContainerOptions> {
        use clap::Parser as _;
        let flags = ContainerFlags::try_parse_from(std::iter::once("build").chain(args.iter().copied()))?;
        flags.container.options()
    }

    #[test]
    fn container_flags_take_dockers_syntax() {
        let o = container_options(&[
            "--memory=64m",
            "--memory-swap",
            "-1",
            "--cpu-shares=512",
            "--cpu-quota=-1",
            "--cpuset-cpus=0-1",
            "--add-host=db:10.1.2.3",
            "--add-host",
            "cache=10.1.2.4",
            "--shm-size=128m",
            "--ulimit",
            "nofile=100:200",
        ])
        .expect("valid");
        assert_eq!(
            (o.memory, o.memory_swap, o.cpu_shares, o.cpu_quota),
            (Some(64 << 20), Some(-1), Some(512), Some(-1))
        );
        assert_eq!(o.cpuset_cpus.as_deref(), Some("0-1"));
        let hosts: Vec<String> = o.extra_hosts.iter().map(|h| format!("{}={}", h.host, h.ip)).collect();
        assert_eq!(hosts, ["db=10.1.2.3", "cache=10.1.2.4"]);
        assert_eq!(o.shm_size, 128 << 20);
        assert_eq!((o.ulimits[0].soft, o.ulimits[0].hard), (100, 200));
        assert_eq!(o.pids_limit, Some(options::DEFAULT_PIDS_LIMIT));

        let d = container_options(&[]).expect("defaults");
        assert_eq!(d, options::ContainerOptions::default());
        assert_eq!(container_options(&["--pids-limit=-1"]).expect("unlimited").pids_limit, None);
        assert_eq!(container_options(&["--pids-limit=50"]).expect("50").pids_limit, Some(50));
        let cpus = container_options(&["--cpus=1.5"]).expect("cpus");
        assert_eq!((cpus.cpu_period, cpus.cpu_quota), (Some(100_000), Some(150_000)));
        assert!(container_options(&["--cpus=1", "--cpu-quota=5000"]).is_err(), "conflicting, as in Docker");
    }

    #[test]
    fn container_flags_refuse_bad_values_clearly() {
        let err = container_options(&["--memory-swap=1g"]).expect_err("no memory");
        assert!(err.to_string().contains("--memory-swap needs --memory"), "{err}");
        let err = container_options(&["--memory=1g", "--memory-swap=512m"]).expect_err("below");
        assert!(err.to_string().contains("below --memory"), "{err}");
        let err = container_options(&["--add-host=gw:host-gateway"]).expect_err("gateway");
        assert!(err.to_string().contains("host-gateway is not supported"), "{err}");
        for bad in [&["--memory=lots"][..], &["--ulimit=nofile"], &["--add-host=db"], &["--shm-size=0"]] {
            assert!(container_options(bad).is_err(), "{bad:?}");
        }
    }
}
