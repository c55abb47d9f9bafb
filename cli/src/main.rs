//! `rbuild`: the command line. Parses arguments, reads the environment and config files once, renders progress
//! and errors, and picks exit codes; the build logic itself lives in the library crates.

// Doc comments on the argument structs are `--help` text (`HOST[:PORT]`), not links.
#![allow(rustdoc::broken_intra_doc_links)]

mod build;
mod buildx_flags;
mod cache_flags;
mod call;
mod completion;
mod docker_load;
mod gotemplate;
mod history;
mod images;
mod info;
mod inspect;
mod interrupt;
mod login;
mod named_contexts;
mod outputs;
mod progress;
mod render;
mod rmi;
mod rootless;
mod runtime_arg;
mod secrets;
mod source;
mod storage;
mod version;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use rbuild_cache::Store;
use rbuild_image::registry::{ImageRef, RegistryClient, RegistryOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "rbuild",
    version = version::LONG,
    about = "Build OCI images from Dockerfiles",
    long_about = "Build OCI images from Dockerfiles, daemonless, with BuildKit's semantics and docker buildx's \
                  flags. Images go to a local store (rbuild images), a registry (--push), archives (-o type=oci|docker) \
                  or the local Docker daemon (--load). RUN steps run in runc containers: run rbuild as root.",
    after_help = "Examples:\n  \
        rbuild build -t registry.example.com/team/app:1.2 --push .\n  \
        rbuild build -t app -f docker/Dockerfile --build-arg VERSION=1.2 --target release .\n  \
        rbuild build -t app https://github.com/org/repo.git#main:subdir\n  \
        rbuild build -t app - < context.tar.gz\n  \
        rbuild build -o type=local,dest=out .\n  \
        rbuild images --format '{{.Repository}}:{{.Tag}} {{.ID}}'\n  \
        rbuild inspect --format '{{json .Config.Labels}}' app\n\n\
        Environment: RBUILD_ROOT (the store), DOCKER_CONFIG (registry credentials), DOCKER_HOST (--load), \
        SOURCE_DATE_EPOCH (reproducible images), RBUILD_CONTEXT_LIMIT (largest stdin/remote context), RBUILD_LOG.\n\
        'rbuild COMMAND --help' describes each command's flags.",
    propagate_version = true
)]
pub struct Cli {
    /// The store directory [default: $RBUILD_ROOT, else ~/.local/share/rbuild]
    #[arg(long, global = true, env = "RBUILD_ROOT")]
    root: Option<PathBuf>,
    /// Registries (host[:port]) that may be reached over plain HTTP (loopback always may)
    #[arg(long = "insecure-registry", global = true, value_name = "HOST")]
    insecure_registries: Vec<String>,
    /// How layers are assembled for steps: auto, overlayfs, fuse-overlayfs or native (a copy; needs nothing)
    #[arg(long, global = true, env = "RBUILD_SNAPSHOTTER", default_value = "auto")]
    snapshotter: String,
    #[command(flatten)]
    registry_flags: login::RegistryFlags,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build an image from a Dockerfile
    Build(Box<build::BuildArgs>),
    /// List images in the local store
    Images(images::ImagesArgs),
    /// Show the history (layers and the instructions that made them) of an image
    History(history::HistoryArgs),
    /// Show rbuild's version and the commit it was built from
    Version,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Push an image from the local store to its registry
    Push {
        /// Image name (as tagged)
        name: String,
        /// Layer compression: gzip, zstd or uncompressed
        #[arg(long, default_value = "gzip")]
        compression: String,
        /// Compression level (gzip 0..=9, zstd 1..=22)
        #[arg(long = "compression-level")]
        compression_level: Option<String>,
    },
    /// Pull an image into the local store
    Pull {
        name: String,
        /// The platform to pick from a multi-platform image [default: this machine's]
        #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
        platform: Option<String>,
    },
    /// Log in to a registry (credentials are checked, then saved in Docker's config.json)
    Login(login::LoginArgs),
    /// Forget the credentials for a registry
    Logout { registry: Option<String> },
    /// Write images to a docker or OCI archive
    Save(outputs::SaveArgs),
    /// Read images from a docker or OCI archive into the store
    Load(outputs::LoadArgs),
    /// Give an image in the store another name
    Tag { source: String, target: String },
    /// Remove names from the local store, by name, image ID or ID prefix
    Rmi(rmi::RmiArgs),
    /// Print an image's config (or --format fields of it)
    Inspect(inspect::InspectArgs),
    /// Show the store's disk usage per kind
    Du,
    /// Remove build cache (never tagged images)
    Prune(storage::PruneArgs),
    /// Verify the store's integrity (blobs, tags, cache index, permissions, leftovers of dead processes)
    Check(storage::CheckArgs),
    /// Show the store, snapshotter, runtime, network and rootless settings a build here uses
    Info,
    /// Tools for looking inside rbuild
    Debug {
        #[command(subcommand)]
        command: DebugCmd,
    },
}

#[derive(Subcommand)]
enum DebugCmd {
    /// Print a Dockerfile's syntax tree in BuildKit's dump format
    DumpAst { file: PathBuf },
}

/// `RBUILD_LOG=debug` (or any `tracing` filter, e.g. `rbuild_executor=debug`) shows the libraries' events on stderr.
fn init_logging() {
    let Ok(filter) = std::env::var("RBUILD_LOG") else { return };
    match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(filter) => {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
        }
        Err(e) => eprintln!("warning: ignoring RBUILD_LOG={filter:?}: {e}"),
    }
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let needs_namespace = !matches!(
        cli.command,
        Cmd::Login(_) | Cmd::Logout { .. } | Cmd::Debug { .. } | Cmd::Version | Cmd::Completion { .. }
    );
    let store = store_root(&cli, rbuild_executor::userns::effective_uid() != 0).ok();
    let lazy = matches!(cli.command, Cmd::Build(_));
    let mode = match rootless::start(needs_namespace, lazy, store.as_deref()) {
        Ok(mode) => mode,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli, mode)) {
        Ok(code) => code,
        Err(e) => {
            render::error(&e);
            ExitCode::from(1)
        }
    }
}

/// Settings read once from the environment and config files, passed down.
pub struct Env {
    pub root: PathBuf,
    pub registry: RegistryOptions,
    /// Collect the store after a build when it grows past this many bytes.
    pub gc_keep_storage: Option<u64>,
    /// `--snapshotter`; `None` is auto (the store's recorded or detected one).
    pub snapshotter: Option<rbuild_executor::snapshotter::Snapshotter>,
}

fn env_for(cli: &Cli, mode: &rootless::Mode) -> Result<Env> {
    let root = store_root(cli, mode.is_rootless())?;
    // Overlay mounts and runc bundles need absolute paths into the store.
    let root = std::path::absolute(&root).with_context(|| format!("resolving the store path {}", root.display()))?;
    let gc_keep_storage = storage::configured_keep_storage(&root)?;
    Ok(Env {
        root,
        registry: login::registry_options(&cli.registry_flags, cli.insecure_registries.clone()),
        gc_keep_storage,
        snapshotter: rbuild_executor::snapshotter::Snapshotter::parse(&cli.snapshotter)?,
    })
}

/// `--root`, else (rootless) `$XDG_DATA_HOME/rbuild`, else `~/.local/share/rbuild`.
fn store_root(cli: &Cli, rootless: bool) -> Result<PathBuf> {
    let xdg_data = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty() && rootless);
    let root = match (&cli.root, xdg_data) {
        (Some(r), _) => r.clone(),
        // An ordinary user's store follows the XDG base directory spec.
        (None, Some(data)) => PathBuf::from(data).join("rbuild"),
        (None, None) => {
            let home = std::env::var_os("HOME").map(PathBuf::from).context("HOME is not set; pass --root")?;
            home.join(".local/share/rbuild")
        }
    };
    Ok(root)
}

async fn run(cli: Cli, mode: rootless::Mode) -> Result<ExitCode> {
    // These need no store, no HOME and no config.
    match &cli.command {
        Cmd::Version => return Ok(version::run()),
        Cmd::Completion { shell } => return Ok(completion::run(*shell)),
        _ => {}
    }
    let env = env_for(&cli, &mode)?;
    match cli.command {
        Cmd::Build(args) => build::run(&env, *args).await,
        Cmd::Du => storage::du(&env),
        Cmd::Info => info::info(&env, &mode),
        Cmd::Prune(args) => storage::prune(&env, args),
        Cmd::Check(args) => storage::check(&env, args),
        Cmd::Debug { command: DebugCmd::DumpAst { file } } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            match rbuild_frontend::parser::parse(&text) {
                Ok(ast) => {
                    println!("{}", ast.root.dump());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    render::parse_error(&file.display().to_string(), &text, &e);
                    Ok(ExitCode::from(1))
                }
            }
        }
        Cmd::Images(args) => images::list(&env, args),
        Cmd::History(args) => history::run(&env, args),
        Cmd::Version => Ok(version::run()),
        Cmd::Completion { shell } => Ok(completion::run(shell)),
        Cmd::Push { name, compression, compression_level } => {
            let compression = outputs::parse_compression(Some(&compression), compression_level.as_deref())?;
            let store = open_store(&env)?;
            let r = ImageRef::parse(&name)?;
            let rec =
                store.tag(&r.to_string())?.with_context(|| format!("no image named {name} in the local store"))?;
            let client = RegistryClient::new(env.registry.clone());
            let outputs = [outputs::Output::Image { names: vec![r.to_string()], push: true, compression }];
            let reporter = progress::PlainProgress::new();
            let pushed = if rec.platforms.is_empty() {
                rbuild_builder::outputs::finish(&store, &client, &rec.config, &outputs, None, None, &reporter).await?
            } else {
                rbuild_builder::index_outputs::finish(
                    &store,
                    &client,
                    &rec.platforms,
                    &[],
                    &outputs,
                    rbuild_builder::index_outputs::Wanted {
                        metadata_file: None,
                        index_digest: false,
                        annotations: &Default::default(),
                    },
                    None,
                    &reporter,
                )
                .await?
                .pushed
            };
            for p in pushed {
                progress::Renderer::result(&reporter, &format!("{}@{}", p.name, p.digest));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Login(args) => login::login(&env.registry, args).await,
        Cmd::Logout { registry } => login::logout(registry),
        Cmd::Save(args) => outputs::save(&env, args),
        Cmd::Load(args) => outputs::load(&env, args),
        Cmd::Pull { name, platform } => {
            let store = open_store(&env)?;
            let r = ImageRef::parse(&name)?;
            let client = RegistryClient::new(env.registry.clone());
            let platform = match platform {
                Some(p) => outputs::parse_platform(&p)?,
                None => rbuild_types::oci::Platform::host(),
            };
            let pulled = rbuild_image::local::pull(&client, &store, &r, &platform).await?;
            println!("{r}: image {}", pulled.record.config);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Tag { source, target } => {
            let store = open_store(&env)?;
            let src = ImageRef::parse(&source)?.to_string();
            let rec = store.tag(&src)?.with_context(|| format!("no image named {source} in the local store"))?;
            let dst = ImageRef::parse(&target)?.to_string();
            store.set_tag(&rbuild_cache::ImageRecord { name: dst, ..rec })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Rmi(args) => rmi::run(&env, args),
        Cmd::Inspect(args) => inspect::run(&env, args),
    }
}

pub fn open_store(env: &Env) -> Result<Store> {
    open_store_as(&env.root, rbuild_cache::LockMode::Shared)?
        .with_context(|| format!("opening the store at {}", env.root.display()))
}

/// Opens the store at `root` locked as `mode` (see [`rbuild_builder::open_store`]), saying which containers of
/// dead rbuild processes it stopped.
pub fn open_store_as(root: &Path, mode: rbuild_cache::LockMode) -> Result<Option<Store>> {
    let store = rbuild_builder::open_store(root, mode)?;
    if let Some(s) = &store {
        for r in s.reaped() {
            eprintln!("warning: stopped a container left running by a dead rbuild process: {r}");
        }
    }
    Ok(store)
}

pub fn image_size(store: &Store, config: &rbuild_types::Digest) -> Option<u64> {
    let cfg: rbuild_types::oci::ImageConfig = serde_json::from_slice(&store.read_blob(config).ok()?).ok()?;
    let mut total = 0;
    for id in &cfg.rootfs.diff_ids {
        total += dir_size(&store.snapshot_path(id));
    }
    Some(total)
}

pub fn dir_size(p: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
