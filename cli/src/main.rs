//! `rbuild`: the command line. Parses arguments, reads the environment and config files once, renders progress
//! and errors, and picks exit codes; the build logic itself lives in the library crates.

// Doc comments on the argument structs are `--help` text (`HOST[:PORT]`), not links.
#![allow(rustdoc::broken_intra_doc_links)]

mod build;
mod interrupt;
mod login;
mod outputs;
mod progress;
mod render;
mod resolver;
mod runtime_arg;
mod secrets;
mod storage;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use rbuild_cache::Store;
use rbuild_image::registry::{ImageRef, RegistryClient, RegistryOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "rbuild", version, about = "Build OCI images from Dockerfiles", propagate_version = true)]
struct Cli {
    /// The store directory [default: $RBUILD_ROOT, else ~/.local/share/rbuild]
    #[arg(long, global = true, env = "RBUILD_ROOT")]
    root: Option<PathBuf>,
    /// Registries (host[:port]) that may be reached over plain HTTP (loopback always may)
    #[arg(long = "insecure-registry", global = true, value_name = "HOST")]
    insecure_registries: Vec<String>,
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
    Images,
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
    /// Remove a name from the local store
    Rmi {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Print an image's config
    Inspect { name: String },
    /// Show the store's disk usage per kind
    Du,
    /// Remove build cache (never tagged images)
    Prune(storage::PruneArgs),
    /// Verify the store's integrity (blobs, tags, cache index, permissions, leftovers of dead processes)
    Check(storage::CheckArgs),
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
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
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
}

fn env_for(cli: &Cli) -> Result<Env> {
    let root = match &cli.root {
        Some(r) => r.clone(),
        None => {
            let home = std::env::var_os("HOME").map(PathBuf::from).context("HOME is not set; pass --root")?;
            home.join(".local/share/rbuild")
        }
    };
    // Overlay mounts and runc bundles need absolute paths into the store.
    let root = std::path::absolute(&root).with_context(|| format!("resolving the store path {}", root.display()))?;
    let gc_keep_storage = storage::configured_keep_storage(&root)?;
    Ok(Env {
        root,
        registry: login::registry_options(&cli.registry_flags, cli.insecure_registries.clone()),
        gc_keep_storage,
    })
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let env = env_for(&cli)?;
    match cli.command {
        Cmd::Build(args) => build::run(&env, *args).await,
        Cmd::Du => storage::du(&env),
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
        Cmd::Images => {
            let store = open_store(&env)?;
            let _ = writeln!(std::io::stdout(), "{:<60} {:<20} {:>10}", "NAME", "IMAGE ID", "SIZE");
            let (tags, bad) = store.tags_checked()?;
            for e in bad {
                eprintln!("warning: {:#}", anyhow::Error::from(e));
            }
            let mut out = std::io::stdout().lock();
            for rec in tags {
                let size = image_size(&store, &rec.config).map(human_size).unwrap_or_else(|| "?".into());
                // A closed pipe (`rbuild images | head -1`) ends the listing, successfully.
                if writeln!(out, "{:<60} {:<20} {:>10}", rec.name, &rec.config.hex()[..12], size).is_err() {
                    break;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Push { name, compression, compression_level } => {
            let compression = outputs::parse_compression(Some(&compression), compression_level.as_deref())?;
            let store = open_store(&env)?;
            let r = ImageRef::parse(&name)?;
            let rec =
                store.tag(&r.to_string())?.with_context(|| format!("no image named {name} in the local store"))?;
            let client = RegistryClient::new(env.registry.clone());
            let outputs = [outputs::Output::Image { names: vec![r.to_string()], push: true, compression }];
            outputs::finish(&store, &client, &rec.config, &outputs, None, None).await?;
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
                None => rbuild_solver::oci::Platform::host(),
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
        Cmd::Rmi { names } => {
            let store = open_store(&env)?;
            for name in names {
                let full = ImageRef::parse(&name)?.to_string();
                store.remove_tag(&full)?;
                println!("Untagged: {full}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Inspect { name } => {
            let store = open_store(&env)?;
            let full = ImageRef::parse(&name)?.to_string();
            let rec = store.tag(&full)?.with_context(|| format!("no image named {name} in the local store"))?;
            let config: serde_json::Value = serde_json::from_slice(&store.read_blob(&rec.config)?)?;
            let doc =
                serde_json::json!({"Name": full, "Id": rec.config, "ManifestDigest": rec.manifest, "Config": config});
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn open_store(env: &Env) -> Result<Store> {
    open_store_as(&env.root, rbuild_cache::LockMode::Shared)?
        .with_context(|| format!("opening the store at {}", env.root.display()))
}

/// Opens the store at `root` locked as `mode`, first stopping containers that dead rbuild processes left running
/// (`kill -9` during a RUN), so that their mounts can be collected.
pub fn open_store_as(root: &Path, mode: rbuild_cache::LockMode) -> Result<Option<Store>> {
    // Each runtime keeps its containers in its own state directory in the store (`runc/`, `crun/`).
    let reaper = |dead: &[PathBuf]| {
        let runtimes = rbuild_executor::runtime::RuntimeKind::ALL.into_iter();
        runtimes
            .filter_map(|kind| Some((kind.find().ok()?, root.join(kind.name()))))
            .flat_map(|(program, state)| rbuild_executor::reap::reap_containers(&program, &state, dead))
            .collect()
    };
    let store =
        Store::open_reaping(root, mode, &reaper).with_context(|| format!("opening the store at {}", root.display()))?;
    if let Some(s) = &store {
        for r in s.reaped() {
            eprintln!("warning: stopped a container left running by a dead rbuild process: {r}");
        }
    }
    Ok(store)
}

fn image_size(store: &Store, config: &rbuild_solver::Digest) -> Option<u64> {
    let cfg: rbuild_solver::oci::ImageConfig = serde_json::from_slice(&store.read_blob(config).ok()?).ok()?;
    let mut total = 0;
    for id in &cfg.rootfs.diff_ids {
        total += dir_size(&store.snapshot_path(id));
    }
    Some(total)
}

fn dir_size(p: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 { format!("{n}B") } else { format!("{v:.1}{}", units[i]) }
}
