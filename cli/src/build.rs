//! `rbuild build`: flags → a [`BuildRequest`] for the builder library, and what comes back rendered: progress
//! on stderr, errors with their Dockerfile line, the image ID and pushed digests.

use crate::Env;
use crate::render;
use anyhow::{Context as _, Result, bail};
use rbuild_builder::container as options;
use rbuild_builder::{BuildError, BuildRequest, Builder, Canceller, Dockerfile, Entitlements, NetworkMode};
use rbuild_frontend::NoCache;
use rbuild_image::registry::ImageRef;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Name (and optionally tag) for the image; may be repeated
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    tags: Vec<String>,
    /// The Dockerfile, `-` for stdin [default: CONTEXT/Dockerfile, else CONTEXT/dockerfile]
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
    /// Grant an entitlement: network.host (RUN --network=host, --network host), security.insecure
    /// (RUN --security=insecure); repeatable, or comma-separated
    #[arg(long = "allow", value_name = "ENTITLEMENT", value_delimiter = ',')]
    allow: Vec<String>,
    /// Set a label on the image (KEY=VALUE; wins over a LABEL of the same key in the Dockerfile)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// A cache to read, searched after the local store and before the next --cache-from: REF,
    /// type=registry,ref=REF or type=local,src=DIR; repeatable
    #[arg(long = "cache-from", value_name = "SOURCE")]
    cache_from: Vec<String>,
    /// Where to export the build cache: type=registry,ref=REF | type=local,dest=DIR | type=inline, with
    /// mode=min|max, ignore-error=true, max-size=SIZE, max-age=DURATION; repeatable
    #[arg(long = "cache-to", value_name = "TARGET")]
    cache_to: Vec<String>,
    #[command(flatten)]
    outputs: crate::outputs::OutputArgs,
    #[command(flatten)]
    progress: crate::progress::ProgressArgs,
    #[command(flatten)]
    buildx: crate::buildx_flags::BuildxArgs,
    #[command(flatten)]
    container: ContainerArgs,
    #[command(flatten)]
    call: crate::call::CallArgs,
    #[command(flatten)]
    runtime: crate::runtime_arg::RuntimeArgs,
    /// The build context: a directory, `-` (a tar or a Dockerfile on stdin), a Git URL
    /// (https://host/repo.git#ref:subdir, git@host:repo.git) or an http(s) URL of a tarball
    context: PathBuf,
}

/// The settings of RUN containers, as `docker build` defines them (sizes like `64m`, `1g`); see
/// [`rbuild_builder::container`].
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

impl From<NetworkFlag> for NetworkMode {
    fn from(flag: NetworkFlag) -> NetworkMode {
        match flag {
            NetworkFlag::Default => NetworkMode::Default,
            NetworkFlag::None => NetworkMode::None,
            NetworkFlag::Host => NetworkMode::Host,
        }
    }
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

/// What the build reads besides the request: a fetched or stdin context (removed when dropped), and the
/// additional contexts.
struct Inputs {
    source: crate::source::Source,
    named: crate::named_contexts::NamedContexts,
    buildx: crate::buildx_flags::Requests,
}

/// The build the flags describe.
fn request(args: &BuildArgs, inputs: &Inputs) -> Result<BuildRequest> {
    let mount_sources =
        crate::secrets::mount_sources(&args.secrets, &args.ssh, &|name: &str| std::env::var(name).ok())?;
    let context = inputs.source.context.clone();
    if !context.is_dir() {
        bail!("build context {} is not a directory", context.display());
    }
    let path = inputs.source.dockerfile.clone().unwrap_or_else(|| Dockerfile::default_path(&context));
    let dockerfile = Dockerfile::read(&path).with_context(|| format!("reading the Dockerfile {}", path.display()))?;
    let mut tags = Vec::new();
    for t in &args.tags {
        tags.push(ImageRef::parse(t).with_context(|| format!("invalid tag {t:?}"))?);
    }
    if args.push && tags.is_empty() {
        bail!("--push needs a name to push to: add -t REGISTRY/REPOSITORY[:TAG]");
    }
    let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => {
            Some(v.parse::<i64>().with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?)
        }
        _ => None,
    };
    Ok(BuildRequest {
        context,
        dockerfile,
        build_args: crate::call::with_check_env(parse_build_args(&args.build_args)?),
        target: args.target.clone(),
        platforms: crate::outputs::platforms(&args.outputs)?,
        no_cache: if args.no_cache {
            NoCache::All
        } else if args.no_cache_filter.is_empty() {
            NoCache::None
        } else {
            NoCache::Stages(args.no_cache_filter.clone())
        },
        pull: args.pull,
        jobs: args.jobs,
        mount_sources,
        network: args.network.into(),
        entitlements: parse_entitlements(&args.allow)?,
        container: args.container.options()?,
        labels: parse_labels(&args.labels)?,
        outputs: crate::outputs::plan(&args.outputs, &tags, args.push)?,
        tags,
        metadata_file: args.outputs.metadata_file.clone(),
        index_digest: args.iidfile.is_some(),
        explain_cache: args.explain_cache,
        provenance: crate::outputs::provenance(&crate::outputs::OutputArgs {
            provenance: inputs.buildx.provenance.clone().or(args.outputs.provenance.clone()),
            ..args.outputs.clone()
        })?,
        sbom: crate::outputs::sbom(&crate::outputs::OutputArgs {
            sbom: inputs.buildx.sbom.clone().or(args.outputs.sbom.clone()),
            ..args.outputs.clone()
        })?,
        source_date_epoch,
        named_contexts: inputs.named.dirs(),
        image_contexts: inputs.named.images(),
        manifest_annotations: inputs.buildx.manifest_annotations.clone(),
        index_annotations: inputs.buildx.index_annotations.clone(),
        temporary_context: inputs.source.is_temporary(),
        cache_from: args.cache_from.iter().map(|s| crate::cache_flags::cache_from(s)).collect::<Result<_>>()?,
        cache_to: args.cache_to.iter().map(|s| crate::cache_flags::cache_to(s)).collect::<Result<_>>()?,
    })
}

pub async fn run(env: &Env, args: BuildArgs) -> Result<ExitCode> {
    let progress = args.progress.renderer()?;
    let canceller = Canceller::new();
    let interrupted = crate::interrupt::watch(canceller.clone()).context("installing the Ctrl-C handler")?;
    // `-`, `-f -`, Git and http(s) contexts become local directories first; flags that cannot apply fail now.
    let limits = crate::source::Limits::from_env()?;
    let platforms = crate::outputs::platforms(&args.outputs)?;
    let buildx = args.buildx.check(&platforms)?;
    let docker = buildx.load.then(|| crate::docker_load::Daemon::find(std::env::var("DOCKER_HOST").ok().as_deref()));
    let docker = docker.transpose()?;
    let inputs = Inputs {
        source: crate::source::resolve(&args.context, args.file.as_deref(), &mut std::io::stdin(), limits)?,
        named: crate::named_contexts::NamedContexts::parse(&args.buildx.build_contexts, limits)?,
        buildx,
    };
    let req = request(&args, &inputs)?;
    let names: Vec<String> = req.tags.iter().map(|t| t.to_string()).collect();
    let builder = Builder {
        root: env.root.clone(),
        registry: env.registry.clone(),
        gc_keep_storage: env.gc_keep_storage,
        snapshotter: env.snapshotter,
        runtime: args.runtime.kind()?,
    };
    if let Some(call) = args.call.selected()? {
        return crate::call::run(&call, &builder, req, progress).await;
    }
    let result = builder.build(req, progress.clone(), canceller).await;
    // A live view stops redrawing before errors are printed under it.
    progress.finish();
    match result {
        Ok(result) => {
            if let Some(f) = &args.iidfile {
                // A multi-platform image's ID is its index's digest, as buildx writes it.
                let id = result.index.as_ref().unwrap_or(&result.image);
                std::fs::write(f, id.as_str()).with_context(|| format!("writing {}", f.display()))?;
            }
            for p in &result.pushed {
                progress.result(&format!("{}@{}", p.name, p.digest));
            }
            if let Some(daemon) = &docker {
                let store = crate::open_store(env)?;
                let annotations = &inputs.buildx.manifest_annotations;
                crate::docker_load::load(daemon, &store, &result.image, &names, annotations)?;
            }
            progress.image_id(result.image.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Err(BuildError::Parse { dockerfile, error }) => {
            render::parse_error(&dockerfile.name, &dockerfile.text, &error);
            Ok(ExitCode::from(1))
        }
        Err(BuildError::Convert { dockerfile, error }) => {
            render::convert_error(&dockerfile.name, &dockerfile.text, &error);
            Ok(ExitCode::from(1))
        }
        Err(BuildError::Step(failure)) => {
            render::step_failure(&failure);
            Ok(ExitCode::from(if interrupted.get() { 130 } else { 1 }))
        }
        Err(BuildError::Interrupted) => Ok(ExitCode::from(130)),
        Err(BuildError::Other(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
