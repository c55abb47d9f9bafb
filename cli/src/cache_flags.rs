//! `--cache-from` and `--cache-to` in buildx's syntax, into the builder's [`CacheSource`] and [`CacheTarget`].
//!
//! `--cache-from REF` | `type=registry,ref=REF` | `type=local,src=DIR`;
//! `--cache-to type=registry,ref=REF` | `type=local,dest=DIR` | `type=inline`, with `mode=min|max`,
//! `compression=gzip|zstd`, `compression-level=N`, `ignore-error=true|false`, `max-size=SIZE`,
//! `max-age=DURATION` (`90s`, `30m`, `12h`, `7d`), and rbuild's `cache-mounts=true` with `cache-mounts-max-size=SIZE`. Keys buildx has and rbuild does not use (`oci-mediatypes`,
//! `image-manifest`, `force-compression`) are accepted and ignored; unknown ones are errors.

use anyhow::{Context as _, Result, bail};
use rbuild_builder::{CacheMode, CacheSource, CacheTarget};
use rbuild_cache::remote::Limits;
use rbuild_image::registry::ImageRef;
use rbuild_image::remote_cache::CacheLocation;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The largest cache mount exported by default (compressed): 1 GiB.
const DEFAULT_CACHE_MOUNTS_MAX: u64 = 1 << 30;

/// Buildx keys that change nothing here.
const IGNORED: &[&str] = &["oci-mediatypes", "image-manifest", "force-compression", "store"];

fn fields(flag: &str, spec: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            bail!("invalid {flag} {spec:?}: {part:?} is not KEY=VALUE");
        };
        if out.insert(k.trim().to_string(), v.trim().to_string()).is_some() {
            bail!("invalid {flag} {spec:?}: {k} is given twice");
        }
    }
    Ok(out)
}

fn registry_ref(flag: &str, spec: &str, value: Option<String>) -> Result<CacheLocation> {
    let value = value.with_context(|| format!("{flag} {spec:?} needs ref=REGISTRY/REPOSITORY[:TAG]"))?;
    let r = ImageRef::parse(&value).with_context(|| format!("invalid ref {value:?} in {flag} {spec:?}"))?;
    Ok(CacheLocation::Registry(r))
}

fn check_known(flag: &str, spec: &str, f: &BTreeMap<String, String>, known: &[&str]) -> Result<()> {
    for k in f.keys() {
        if !known.contains(&k.as_str()) && !IGNORED.contains(&k.as_str()) {
            bail!("invalid {flag} {spec:?}: unknown key {k:?} (known: {})", known.join(", "));
        }
    }
    Ok(())
}

/// One `--cache-from`.
pub fn cache_from(spec: &str) -> Result<CacheSource> {
    const FLAG: &str = "--cache-from";
    if !spec.contains('=') {
        // The shorthand: a registry reference (a cache manifest or an image with an inline cache).
        return Ok(CacheSource { location: registry_ref(FLAG, spec, Some(spec.to_string()))? });
    }
    let mut f = fields(FLAG, spec)?;
    let kind = f.remove("type").unwrap_or_else(|| "registry".into());
    let location = match kind.as_str() {
        "registry" => {
            check_known(FLAG, spec, &f, &["ref"])?;
            registry_ref(FLAG, spec, f.remove("ref"))?
        }
        "local" => {
            check_known(FLAG, spec, &f, &["src", "digest", "tag"])?;
            let src = f.remove("src").with_context(|| format!("{FLAG} {spec:?} needs src=DIR"))?;
            CacheLocation::Layout(PathBuf::from(src))
        }
        other => bail!("{FLAG} type={other} is not supported: use registry or local"),
    };
    Ok(CacheSource { location })
}

/// One `--cache-to`.
pub fn cache_to(spec: &str) -> Result<CacheTarget> {
    const FLAG: &str = "--cache-to";
    let mut f = fields(FLAG, spec)?;
    let kind = f.remove("type").with_context(|| format!("{FLAG} {spec:?} needs type=registry|local|inline"))?;
    let common = [
        "mode",
        "compression",
        "compression-level",
        "ignore-error",
        "max-size",
        "max-age",
        "cache-mounts",
        "cache-mounts-max-size",
    ];
    let location = match kind.as_str() {
        "registry" => {
            check_known(FLAG, spec, &f, &[&common[..], &["ref"]].concat())?;
            Some(registry_ref(FLAG, spec, f.remove("ref"))?)
        }
        "local" => {
            check_known(FLAG, spec, &f, &[&common[..], &["dest"]].concat())?;
            let dest = f.remove("dest").with_context(|| format!("{FLAG} {spec:?} needs dest=DIR"))?;
            Some(CacheLocation::Layout(PathBuf::from(dest)))
        }
        "inline" => {
            check_known(FLAG, spec, &f, &common)?;
            None
        }
        other => bail!("{FLAG} type={other} is not supported: use registry, local or inline"),
    };
    let mode = match f.get("mode").map(String::as_str) {
        None | Some("min") => CacheMode::Min,
        Some("max") if location.is_some() => CacheMode::Max,
        Some("max") => bail!("{FLAG} type=inline supports only mode=min (the image holds its own layers)"),
        Some(other) => bail!("invalid mode={other} in {FLAG} {spec:?}: use min or max"),
    };
    let ignore_error = match f.get("ignore-error").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => bail!("invalid ignore-error={other} in {FLAG} {spec:?}: use true or false"),
    };
    let compression = crate::outputs::parse_compression(
        f.get("compression").map(String::as_str),
        f.get("compression-level").map(String::as_str),
    )?;
    let max_size = match f.get("max-size") {
        Some(v) => {
            Some(rbuild_builder::container::parse_size(v).with_context(|| format!("invalid max-size={v} in {FLAG}"))?)
        }
        None => None,
    };
    let max_age = match f.get("max-age") {
        Some(v) => Some(parse_duration(v).with_context(|| format!("invalid max-age={v} in {FLAG}"))?),
        None => None,
    };
    let cache_mounts = match (f.get("cache-mounts").map(String::as_str), location.is_some()) {
        (None | Some("false"), _) => None,
        (Some("true"), true) => Some(match f.get("cache-mounts-max-size") {
            Some(v) => rbuild_builder::container::parse_size(v)
                .with_context(|| format!("invalid cache-mounts-max-size={v} in {FLAG}"))?,
            None => DEFAULT_CACHE_MOUNTS_MAX,
        }),
        (Some("true"), false) => bail!("{FLAG} type=inline cannot carry cache mounts: use type=registry or type=local"),
        (Some(other), _) => bail!("invalid cache-mounts={other} in {FLAG} {spec:?}: use true or false"),
    };
    Ok(CacheTarget { location, mode, ignore_error, limits: Limits { max_age, max_size }, compression, cache_mounts })
}

/// `90s`, `30m`, `12h`, `7d` (or plain seconds) → seconds.
fn parse_duration(v: &str) -> Result<i64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: i64 = n.parse().with_context(|| format!("{v:?} is not a duration like 90s, 30m, 12h or 7d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("{v:?} is not a duration like 90s, 30m, 12h or 7d"),
    };
    n.checked_mul(scale).context("duration too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildx_spellings() {
        let s = cache_from("127.0.0.1:5000/cache/app:buildcache").unwrap();
        assert!(matches!(s.location, CacheLocation::Registry(r) if r.repository == "cache/app"));
        let s = cache_from("type=local,src=/tmp/c").unwrap();
        assert_eq!(s.location, CacheLocation::Layout("/tmp/c".into()));
        let t = cache_to("type=registry,ref=r.example/c:1,mode=max,max-age=7d,max-size=1g,ignore-error=true").unwrap();
        assert_eq!(t.mode, CacheMode::Max);
        assert!(t.ignore_error);
        assert_eq!(t.limits, Limits { max_age: Some(7 * 86_400), max_size: Some(1 << 30) });
        assert!(cache_to("type=inline").unwrap().location.is_none());
        assert!(cache_to("type=inline,mode=max").is_err());
        assert!(cache_to("type=gha").is_err());
        assert!(cache_to("type=local").unwrap_err().to_string().contains("dest=DIR"));
        assert!(cache_to("type=local,dest=x,bogus=1").unwrap_err().to_string().contains("bogus"));
    }
}
