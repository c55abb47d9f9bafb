//! `--output`, `--push` and `--platform` parsed into the builder's terms, and the `save`/`load` commands.
//!
//! The `--output` syntax is buildx's (`type=oci,dest=out.tar,compression=zstd`, CSV with quoting so
//! `name="a,b"` names two images). Every spec is parsed before the build starts, so a typo costs nothing. The
//! work itself is the builder's ([`rbuild_builder::outputs`]) and the image crate's.

use crate::Env;
use anyhow::{Context as _, Result, bail};
use rbuild_image::export::{self, ArchiveKind, ExportImage};
use rbuild_image::layer::Compression;
use rbuild_image::local::{Assembled, assemble};
use rbuild_image::registry::ImageRef;
use rbuild_types::Digest;
use rbuild_types::oci::Platform;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct OutputArgs {
    /// Output destination: type=oci|docker|local|tar|image, with dest=PATH, name=NAME, push=true, tar=false,
    /// compression=gzip|zstd|uncompressed, compression-level=N; may be repeated
    #[arg(short = 'o', long = "output", value_name = "type=TYPE,...")]
    pub outputs: Vec<String>,
    /// Write the image's digests (JSON, as buildx does) to this file
    #[arg(long = "metadata-file", value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// The platforms to build for and to pick base images by: os/arch[/variant], comma-separated for a
    /// multi-platform image [default: this machine's]
    #[arg(long, value_name = "OS/ARCH[/VARIANT],...")]
    pub platform: Option<String>,
    /// SLSA provenance attestation: false, true, mode=min or mode=max [default: mode=min for multi-platform
    /// images, none for one platform]
    #[arg(long, value_name = "false|true|mode=min|mode=max", num_args = 0..=1, default_missing_value = "true")]
    pub provenance: Option<String>,
    /// Attach an SPDX SBOM of the image's packages (dpkg, apk, Python, npm): true or false [default: false]
    #[arg(long, value_name = "true|false", num_args = 0..=1, default_missing_value = "true")]
    pub sbom: Option<String>,
    /// Layer compression for --push: gzip, zstd or uncompressed [default: gzip]
    #[arg(long = "compression", value_name = "ALGORITHM")]
    pub compression: Option<String>,
}

pub use rbuild_builder::Output;

/// Splits `a=b,"c=d,e",f` as buildx does (see [`rbuild_types::csv`]), trimming fields and dropping empty ones.
fn split_csv(s: &str) -> Result<Vec<String>> {
    let fields = rbuild_types::csv::split_record(s).with_context(|| format!("--output {s:?}"))?;
    Ok(fields.into_iter().map(|f| f.trim().to_string()).filter(|f| !f.is_empty()).collect())
}

/// The compression named by `algorithm` (and `level`, if given).
pub fn parse_compression(algorithm: Option<&str>, level: Option<&str>) -> Result<Compression> {
    let level = match level {
        Some(l) => Some(l.parse::<i32>().with_context(|| format!("compression-level={l:?} is not a number"))?),
        None => None,
    };
    Ok(match algorithm.unwrap_or("gzip") {
        "gzip" => {
            let level = level.unwrap_or(6);
            if !(0..=9).contains(&level) {
                bail!("compression-level={level} is out of range for gzip (0..=9)");
            }
            Compression::Gzip { level: level as u32 }
        }
        "zstd" => {
            let level = level.unwrap_or(3);
            if !(1..=22).contains(&level) {
                bail!("compression-level={level} is out of range for zstd (1..=22)");
            }
            Compression::Zstd { level }
        }
        "uncompressed" | "none" => Compression::None,
        other => bail!("unknown compression {other:?} (expected gzip, zstd or uncompressed)"),
    })
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => bail!("{key}={v:?} is not true or false"),
    }
}

/// Parses one `--output` value. `tags` are the build's `-t` names, used when an output names nothing itself.
pub fn parse_output(spec: &str, tags: &[String]) -> Result<Output> {
    let mut kind = None;
    let mut dest = None;
    let mut names: Vec<String> = Vec::new();
    let mut push = false;
    let mut tar = true;
    let (mut algorithm, mut level) = (None, None);
    let fields = split_csv(spec)?;
    // `--output DIR` alone is buildx's shorthand for type=local; `--output -` for a tar of the files on stdout.
    if fields.len() == 1 && !fields[0].contains('=') {
        if fields[0] == "-" {
            return Ok(Output::Tar { dest: PathBuf::from("-") });
        }
        return Ok(Output::Local { dest: PathBuf::from(&fields[0]) });
    }
    for field in fields {
        let (k, v) = field.split_once('=').unwrap_or((field.as_str(), ""));
        match k {
            "type" => kind = Some(v.to_string()),
            "dest" => dest = Some(PathBuf::from(v)),
            "name" => names.extend(v.split(',').map(str::trim).filter(|n| !n.is_empty()).map(String::from)),
            "push" => push = parse_bool(k, v)?,
            "tar" => tar = parse_bool(k, v)?,
            "compression" => algorithm = Some(v.to_string()),
            "compression-level" => level = Some(v.to_string()),
            // Accepted for buildx compatibility; rbuild always writes what was asked for.
            "force-compression" | "oci-mediatypes" | "store" | "unpack" => {}
            other => bail!("unknown --output option {other:?} in {spec:?}"),
        }
    }
    let compression = parse_compression(algorithm.as_deref(), level.as_deref())?;
    if names.is_empty() {
        names = tags.to_vec();
    }
    for n in &names {
        ImageRef::parse(n).with_context(|| format!("invalid name {n:?} in --output {spec:?}"))?;
    }
    let need_dest = |what: &str| dest.clone().with_context(|| format!("--output type={what} needs dest=PATH"));
    Ok(match kind.as_deref() {
        Some("oci") => Output::Archive { kind: ArchiveKind::Oci, dest: need_dest("oci")?, tar, names, compression },
        Some("docker") => {
            Output::Archive { kind: ArchiveKind::Docker, dest: need_dest("docker")?, tar, names, compression }
        }
        // A directory cannot go to stdout: buildx writes the same files as a tar there.
        Some("local") if dest.as_deref() == Some(Path::new("-")) => Output::Tar { dest: PathBuf::from("-") },
        Some("local") => Output::Local { dest: need_dest("local")? },
        Some("tar") => Output::Tar { dest: need_dest("tar")? },
        Some("image" | "registry") => {
            if names.is_empty() {
                bail!("--output type=image needs name=NAME (or -t NAME)");
            }
            Output::Image { names, push: push || kind.as_deref() == Some("registry"), compression }
        }
        Some(other) => bail!("unknown --output type {other:?} (expected oci, docker, local, tar, image or registry)"),
        None => bail!("--output {spec:?} has no type="),
    })
}

/// `os/arch[/variant]`.
pub fn parse_platform(s: &str) -> Result<Platform> {
    if s.contains(',') {
        bail!("--platform {s:?}: one platform here (a list of platforms is for rbuild build)");
    }
    let mut p = rbuild_frontend::platform::parse(s).with_context(|| format!("invalid --platform {s:?}"))?;
    // rbuild names 64-bit ARM with its variant, as the images it picks from an index do.
    if p.architecture == "arm64" && p.variant.is_none() {
        p.variant = Some("v8".into());
    }
    Ok(p)
}

/// The platforms to build for (`--platform linux/amd64,linux/arm64`, buildx's list); this machine's when none is
/// named. A platform named twice is built once.
pub fn platforms(args: &OutputArgs) -> Result<Vec<Platform>> {
    let Some(list) = args.platform.as_deref() else { return Ok(vec![Platform::host()]) };
    let mut out: Vec<Platform> = Vec::new();
    for one in list.split(',').map(str::trim) {
        let p = parse_platform(one)?;
        let norm = rbuild_frontend::platform::normalize(&p);
        if !out.iter().any(|q| rbuild_frontend::platform::normalize(q) == norm) {
            out.push(p);
        }
    }
    Ok(out)
}

/// `--provenance`, as buildx spells it.
pub fn provenance(args: &OutputArgs) -> Result<rbuild_builder::Provenance> {
    use rbuild_builder::Provenance;
    use rbuild_builder::provenance::ProvenanceMode;
    let Some(v) = args.provenance.as_deref() else { return Ok(Provenance::Default) };
    Ok(match v.trim() {
        "false" | "0" => Provenance::Off,
        "true" | "1" | "" | "mode=min" | "min" => Provenance::On(ProvenanceMode::Min),
        "mode=max" | "max" => Provenance::On(ProvenanceMode::Max),
        other => bail!("--provenance {other:?}: expected false, true, mode=min or mode=max"),
    })
}

/// `--sbom`: `true`/`false`, or buildx's `generator=...` form (which means true; the packages are read by rbuild).
pub fn sbom(args: &OutputArgs) -> Result<bool> {
    Ok(match args.sbom.as_deref().map(str::trim) {
        None | Some("false" | "0") => false,
        Some("true" | "1" | "") => true,
        Some(v) if v.starts_with("generator=") => true,
        Some(other) => bail!("--sbom {other:?}: expected true or false"),
    })
}

/// Parses every output of a build, adding `--push` as an image output.
pub fn plan(args: &OutputArgs, tags: &[ImageRef], push: bool) -> Result<Vec<Output>> {
    let names: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
    let mut outputs = args.outputs.iter().map(|o| parse_output(o, &names)).collect::<Result<Vec<_>>>()?;
    if push {
        let compression = parse_compression(args.compression.as_deref(), None)?;
        outputs.push(Output::Image { names, push: true, compression });
    }
    let to_stdout = outputs.iter().filter(|o| o.to_stdout()).count();
    if to_stdout > 1 {
        anyhow::bail!("only one --output can write to stdout (dest=-)");
    }
    if to_stdout == 1 && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        anyhow::bail!("refusing to write an archive to a terminal (dest=-): redirect stdout to a file or a pipe");
    }
    Ok(outputs)
}

#[derive(clap::Args)]
pub struct SaveArgs {
    /// Write to this file [default: standard output]
    #[arg(short = 'o', long = "output", value_name = "FILE", default_value = "-")]
    output: PathBuf,
    /// Archive format: docker (loads with `docker load`) or oci
    #[arg(long, default_value = "docker")]
    format: String,
    /// Layer compression: gzip, zstd or uncompressed
    #[arg(long, default_value = "gzip")]
    compression: String,
    /// Images to save
    #[arg(required = true)]
    names: Vec<String>,
}

#[derive(clap::Args)]
pub struct LoadArgs {
    /// Read from this file [default: standard input]
    #[arg(short = 'i', long = "input", value_name = "FILE", default_value = "-")]
    input: PathBuf,
    /// The platform to load from a multi-platform archive
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
}

pub fn save(env: &Env, args: SaveArgs) -> Result<ExitCode> {
    let kind = match args.format.as_str() {
        "docker" => ArchiveKind::Docker,
        "oci" => ArchiveKind::Oci,
        other => bail!("unknown --format {other:?} (expected docker or oci)"),
    };
    let compression = parse_compression(Some(&args.compression), None)?;
    let store = crate::open_store(env)?;
    // Names that point at the same image share one entry.
    let mut groups: Vec<(Digest, Vec<String>)> = Vec::new();
    for name in &args.names {
        let full = ImageRef::parse(name)?.to_string();
        let rec = store.tag(&full)?.with_context(|| format!("no image named {name} in the local store"))?;
        match groups.iter_mut().find(|(c, _)| *c == rec.config) {
            Some((_, names)) => names.push(full),
            None => groups.push((rec.config, vec![full])),
        }
    }
    let assembled: Vec<(Assembled, Vec<String>)> = groups
        .into_iter()
        .map(|(config, names)| Ok((assemble(&store, &config, compression)?, names)))
        .collect::<Result<_>>()?;
    let images: Vec<ExportImage> =
        assembled.iter().map(|(a, names)| ExportImage { image: a, names: names.clone() }).collect();
    rbuild_builder::outputs::write_archive_to(&args.output, true, &images, kind, 0)?;
    Ok(ExitCode::SUCCESS)
}

pub fn load(env: &Env, args: LoadArgs) -> Result<ExitCode> {
    let platform = args.platform.as_deref().map_or_else(|| Ok(Platform::host()), parse_platform)?;
    let store = crate::open_store(env)?;
    let loaded = if args.input == Path::new("-") {
        export::load(&store, std::io::stdin().lock(), Path::new("<stdin>"), &platform)?
    } else {
        let f = std::fs::File::open(&args.input).with_context(|| format!("opening {}", args.input.display()))?;
        export::load(&store, std::io::BufReader::with_capacity(1 << 20, f), &args.input, &platform)?
    };
    for l in &loaded {
        if l.names.is_empty() {
            println!("Loaded image ID: {}", l.config);
        }
        for n in &l.names {
            println!("Loaded image: {n}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags() -> Vec<String> {
        vec!["docker.io/library/app:1".to_string()]
    }

    #[test]
    fn outputs_parse_like_buildx() {
        assert_eq!(
            parse_output("type=oci,dest=out.tar,compression=zstd,compression-level=5", &tags()).unwrap(),
            Output::Archive {
                kind: ArchiveKind::Oci,
                dest: "out.tar".into(),
                tar: true,
                names: tags(),
                compression: Compression::Zstd { level: 5 }
            }
        );
        assert_eq!(parse_output("./dir", &[]).unwrap(), Output::Local { dest: "./dir".into() });
        // Regression (issue 11, item 3): `-o -` made a directory named `-`.
        assert_eq!(parse_output("-", &[]).unwrap(), Output::Tar { dest: "-".into() });
        assert_eq!(parse_output("type=local,dest=-", &[]).unwrap(), Output::Tar { dest: "-".into() });
        assert_eq!(
            parse_output(r#"type=image,"name=reg.example/a:1,reg.example/b:2",push=true"#, &[]).unwrap(),
            Output::Image {
                names: vec!["reg.example/a:1".into(), "reg.example/b:2".into()],
                push: true,
                compression: Compression::Gzip { level: 6 }
            }
        );
        let Output::Archive { tar, compression, .. } =
            parse_output("type=docker,dest=d,tar=false,compression=uncompressed", &[]).unwrap()
        else {
            panic!("docker archive")
        };
        assert_eq!((tar, compression), (false, Compression::None));
    }

    #[test]
    fn bad_outputs_say_what_is_wrong() {
        let err = |s: &str| format!("{:#}", parse_output(s, &[]).unwrap_err());
        assert!(err("type=oci").contains("dest=PATH"));
        assert!(err("type=floppy,dest=x").contains("unknown --output type"));
        assert!(err("type=oci,dest=x,colour=red").contains("colour"));
        assert!(err("type=oci,dest=x,compression=brotli").contains("brotli"));
        assert!(err("type=oci,dest=x,compression=gzip,compression-level=12").contains("0..=9"));
        assert!(err("type=image").contains("name="));
        assert!(err(r#"type=image,name="a"#).contains("quotes"));
    }

    #[test]
    fn platforms() {
        assert_eq!(
            parse_platform("linux/amd64").unwrap(),
            Platform { os: "linux".into(), architecture: "amd64".into(), variant: None }
        );
        assert_eq!(parse_platform("linux/arm64").unwrap().variant.as_deref(), Some("v8"));
        assert_eq!(parse_platform("linux/arm/v6").unwrap().variant.as_deref(), Some("v6"));
        // containerd's grammar: a lone OS takes this machine's architecture, aliases fold.
        assert_eq!(parse_platform("linux").unwrap().architecture, Platform::host().architecture);
        assert_eq!(parse_platform("linux/x86_64").unwrap().architecture, "amd64");
        for bad in ["foo", "linux/", "", "linux/amd64/../../x"] {
            assert!(parse_platform(bad).is_err(), "{bad:?}");
        }
        // Issue 11 item 2: a list was parsed as one platform with arch "amd64,linux".
        let e = parse_platform("linux/amd64,linux/arm64").unwrap_err().to_string();
        assert!(e.contains("a list of platforms is for rbuild build"), "{e}");
        let args = |p: &str| OutputArgs { platform: Some(p.into()), ..Default::default() };
        let list = super::platforms(&args("linux/amd64, linux/arm64,linux/x86_64")).unwrap();
        let shown: Vec<String> = list.iter().map(rbuild_frontend::platform::format).collect();
        assert_eq!(shown, ["linux/amd64", "linux/arm64/v8"]);
        assert!(super::platforms(&args("linux/amd64,")).is_err());
    }
}
