//! Platform specifiers (`linux/arm64/v8`), parsed and normalized as containerd's `platforms` package does.
//!
//! BuildKit hands every `--platform` value (the build flag and `FROM --platform`) to containerd's
//! `platforms.Parse`, so that is the grammar: one to three `/`-separated components of `[A-Za-z0-9_-]`, the
//! well-known aliases folded (`x86_64` is `amd64`, `aarch64` is `arm64`, `armhf` is `arm/v7`), and a single
//! component accepted only if it is a known OS or architecture. Anything else (`foo`, `linux/`, `linux/amd64/../x`,
//! a comma-separated list) is an error, never a platform with a strange architecture.

use rbuild_types::oci::Platform;

/// Why a platform specifier was refused; messages follow containerd's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    #[error("{specifier:?}: wildcards not yet supported: invalid argument")]
    Wildcard { specifier: String },
    #[error(
        "{component:?} is an invalid component of {specifier:?}: platform specifier component must match \"^[A-Za-z0-9_-]+$\": invalid argument"
    )]
    InvalidComponent { specifier: String, component: String },
    #[error("{specifier:?}: unknown operating system or architecture: invalid argument")]
    Unknown { specifier: String },
    #[error("{specifier:?}: cannot parse platform specifier: invalid argument")]
    TooManyComponents { specifier: String },
}

const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "windows",
    "zos",
];

const KNOWN_ARCH: &[&str] = &[
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "ppc64",
    "ppc64le",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

fn normalize_os(os: &str) -> String {
    let os = os.to_lowercase();
    if os == "macos" { "darwin".into() } else { os }
}

/// containerd's `normalizeArch`: aliases to Go's names, and the variant each implies.
fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let (arch, variant) = (arch.to_lowercase(), variant.to_lowercase());
    match arch.as_str() {
        "i386" => ("386".into(), String::new()),
        "x86_64" | "x86-64" | "amd64" => ("amd64".into(), if variant == "v1" { String::new() } else { variant }),
        "aarch64" | "arm64" => {
            let v = match variant.as_str() {
                "8" | "v8" | "v8.0" => String::new(),
                "9" | "9.0" | "v9.0" => "v9".into(),
                _ => variant,
            };
            ("arm64".into(), v)
        }
        "armhf" => ("arm".into(), "v7".into()),
        "armel" => ("arm".into(), "v6".into()),
        "arm" => {
            let v = match variant.as_str() {
                "" | "7" => "v7".into(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            };
            ("arm".into(), v)
        }
        _ => (arch, variant),
    }
}

fn variant(v: String) -> Option<String> {
    (!v.is_empty()).then_some(v)
}

/// containerd's `platforms.Parse`. A lone OS gets the architecture of this machine, a lone architecture the OS
/// `linux`.
pub fn parse(specifier: &str) -> Result<Platform, PlatformError> {
    if specifier.contains('*') {
        return Err(PlatformError::Wildcard { specifier: specifier.into() });
    }
    let parts: Vec<&str> = specifier.split('/').collect();
    for part in &parts {
        if part.is_empty() || !part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(PlatformError::InvalidComponent { specifier: specifier.into(), component: part.to_string() });
        }
    }
    match parts.as_slice() {
        [one] => {
            let os = normalize_os(one);
            if KNOWN_OS.contains(&os.as_str()) {
                let host = Platform::host();
                return Ok(Platform { os, architecture: host.architecture, variant: host.variant });
            }
            let (arch, v) = normalize_arch(one, "");
            let v = if arch == "arm" && v == "v7" { String::new() } else { v };
            if KNOWN_ARCH.contains(&arch.as_str()) {
                return Ok(Platform { os: "linux".into(), architecture: arch, variant: variant(v) });
            }
            Err(PlatformError::Unknown { specifier: specifier.into() })
        }
        [os, arch] => {
            let (arch, v) = normalize_arch(arch, "");
            let v = if arch == "arm" && v == "v7" { String::new() } else { v };
            Ok(Platform { os: normalize_os(os), architecture: arch, variant: variant(v) })
        }
        [os, arch, v] => {
            let (arch, v) = normalize_arch(arch, v);
            let v = if arch == "arm64" && v.is_empty() { "v8".into() } else { v };
            Ok(Platform { os: normalize_os(os), architecture: arch, variant: variant(v) })
        }
        _ => Err(PlatformError::TooManyComponents { specifier: specifier.into() }),
    }
}

/// containerd's `platforms.Normalize`: the form in which two platforms compare equal (`arm64/v8` is `arm64`,
/// `arm` is `arm/v7`).
pub fn normalize(p: &Platform) -> Platform {
    let (architecture, v) = normalize_arch(&p.architecture, p.variant.as_deref().unwrap_or(""));
    Platform { os: normalize_os(&p.os), architecture, variant: variant(v) }
}

/// `os/arch[/variant]`.
pub fn format(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        match parse(s) {
            Ok(p) => format(&p),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn parses_like_containerd() {
        assert_eq!(p("linux/amd64"), "linux/amd64");
        assert_eq!(p("Linux/x86_64"), "linux/amd64");
        assert_eq!(p("linux/aarch64"), "linux/arm64");
        assert_eq!(p("linux/arm64/v8"), "linux/arm64/v8");
        assert_eq!(p("linux/armhf"), "linux/arm");
        assert_eq!(p("linux/arm"), "linux/arm");
        assert_eq!(p("linux/arm/7"), "linux/arm/v7");
        assert_eq!(p("linux/armel"), "linux/arm/v6");
        assert_eq!(p("linux/i386"), "linux/386");
        assert_eq!(p("arm64"), "linux/arm64");
        assert_eq!(p("macos/arm64"), "darwin/arm64");
        assert!(p("linux").starts_with("linux/"));
    }

    /// Issue 9 item 12: these were taken as platforms (`foo`, an arch of `amd64,linux`, ...).
    #[test]
    fn refuses_what_containerd_refuses() {
        for bad in
            ["foo", "linux/", "/amd64", "", "linux/amd64/../../x", "linux/amd64,linux/arm64", "linux/*", "a/b/c/d"]
        {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(p("foo"), "error: \"foo\": unknown operating system or architecture: invalid argument");
        assert_eq!(p("a/b/c/d"), "error: \"a/b/c/d\": cannot parse platform specifier: invalid argument");
        assert!(p("linux/").contains("\"\" is an invalid component of \"linux/\""), "{}", p("linux/"));
    }

    #[test]
    fn normalized_forms_compare_equal() {
        let a = parse("linux/arm64/v8").unwrap();
        let b = parse("linux/aarch64").unwrap();
        assert_eq!(normalize(&a), normalize(&b));
        assert_eq!(normalize(&parse("linux/arm").unwrap()), normalize(&parse("linux/arm/v7").unwrap()));
        assert_ne!(normalize(&parse("linux/arm/v6").unwrap()), normalize(&parse("linux/arm/v7").unwrap()));
    }
}
