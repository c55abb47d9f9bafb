//! Helpers for image config values: Go-style durations and healthchecks, paths, ports, signals and warnings.

use crate::parser::Ast;
use crate::parser::quote::{go_quote, go_quote_list};
use rbuild_types::oci::Healthcheck;

/// rbuild has one built-in frontend, BuildKit's `docker/dockerfile:1`. A `# syntax=` naming it (any 1.x tag, with
/// or without `docker.io/`, a `-labs` suffix or a digest) is accepted without pulling anything; any other value is
/// not run either, and gets a warning that says so: an error would refuse Dockerfiles that build fine with the
/// built-in frontend, which is what almost every `# syntax=` line asks for.
pub(super) fn syntax_warning(ast: &Ast) -> Option<String> {
    let d = ast.directives.iter().find(|d| d.name == "syntax")?;
    let image = d.value.split('@').next().unwrap_or_default();
    let image = image.strip_prefix("docker.io/").unwrap_or(image);
    let builtin = match image.strip_prefix("docker/dockerfile:") {
        Some(tag) => {
            let version = tag.strip_suffix("-labs").unwrap_or(tag);
            version == "1"
                || version
                    .strip_prefix("1.")
                    .is_some_and(|v| v.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
        }
        None => image == "docker/dockerfile",
    };
    (!builtin).then(|| {
        format!(
            "line {}: # syntax={} is not supported: rbuild has one built-in frontend (docker/dockerfile:1) and builds with it",
            d.line, d.value
        )
    })
}

/// A word as shown in an error message: quoted, and at most 200 characters of it.
pub(super) fn short(word: &str) -> String {
    if word.chars().count() <= 200 {
        format!("{word:?}")
    } else {
        format!("{:?}...", word.chars().take(197).collect::<String>())
    }
}

pub(super) fn keyword(original: &str) -> String {
    original.split_whitespace().next().unwrap_or("").to_uppercase()
}

pub(super) fn one_line(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 100 { format!("{}...", s.chars().take(97).collect::<String>()) } else { s }
}

/// Go's `time.Duration.String()` of nanoseconds: `1m30s`, `500ms`, `0s`.
pub fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = ns < 0;
    let u = ns.unsigned_abs();
    let sign = if neg { "-" } else { "" };
    let frac = |v: u64, unit: u64| -> String {
        let whole = v / unit;
        let rest = v % unit;
        if rest == 0 {
            return whole.to_string();
        }
        let digits = unit.to_string().len() - 1;
        let f = format!("{rest:0digits$}");
        format!("{whole}.{}", f.trim_end_matches('0'))
    };
    if u < 1_000 {
        return format!("{sign}{u}ns");
    }
    if u < 1_000_000 {
        return format!("{sign}{}µs", frac(u, 1_000));
    }
    if u < 1_000_000_000 {
        return format!("{sign}{}ms", frac(u, 1_000_000));
    }
    let (h, rem) = (u / 3_600_000_000_000, u % 3_600_000_000_000);
    let (m, rem) = (rem / 60_000_000_000, rem % 60_000_000_000);
    let secs = frac(rem, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{sign}{secs}s"),
        (0, m) => format!("{sign}{m}m{secs}s"),
        (h, m) => format!("{sign}{h}h{m}m{secs}s"),
    }
}

/// BuildKit's history entry for HEALTHCHECK: Go's `%q` of the config struct,
/// `&{["CMD-SHELL" "curl x"] "30s" "3s" "0s" "0s" '\x03'}`.
pub(super) fn go_healthcheck(h: &Healthcheck) -> String {
    let d = |v: Option<i64>| go_quote(&go_duration(v.unwrap_or(0)));
    let retries = h.retries.unwrap_or(0);
    // Retries is an int printed with %q: a quoted rune literal ('\x03').
    let r = match u32::try_from(retries).ok().and_then(char::from_u32) {
        Some('\'') => "'\\''".to_string(),
        Some('"') => "'\"'".to_string(),
        Some(c) => {
            let q = go_quote(&c.to_string());
            format!("'{}'", &q[1..q.len() - 1])
        }
        None => retries.to_string(),
    };
    format!(
        "&{{{} {} {} {} {} {}}}",
        go_quote_list(h.test.as_deref().unwrap_or_default()),
        d(h.interval),
        d(h.timeout),
        d(h.start_period),
        d(h.start_interval),
        r
    )
}

/// Joins a path onto the working directory and cleans it lexically (no `.`/`..`, no doubled slashes).
pub fn join_path(base: &str, path: &str) -> String {
    let full = if path.starts_with('/') { path.to_string() } else { format!("{base}/{path}") };
    // `..` at the top stays at `/`, as it does inside the container.
    format!("/{}", rbuild_types::path::clean_in_root(&full).parts.join("/"))
}

/// `80`, `53/udp`, `8000-8002/tcp` → the ports Docker records (a range becomes one entry per port). Like Docker's
/// `nat.ParsePortSpecs`, a published form (`127.0.0.1:80:80`, `[::1]:8080:8080`, `5000:5000`) exposes its
/// container port.
pub(super) fn normalize_ports(p: &str) -> Option<Vec<String>> {
    let (spec, proto) = match p.split_once('/') {
        Some((port, proto)) => (port, proto.to_lowercase()),
        None => (p, "tcp".to_string()),
    };
    let rest = match spec.strip_prefix('[') {
        Some(after) => after.split_once("]:")?.1,
        None => spec,
    };
    let port = rest.rsplit_once(':').map_or(rest, |(_, container)| container);
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return None;
    }
    let (a, b) = match port.split_once('-') {
        Some((a, b)) => (a.parse::<u16>().ok()?, b.parse::<u16>().ok()?),
        None => {
            let n = port.parse::<u16>().ok()?;
            (n, n)
        }
    };
    if b < a {
        return None;
    }
    Some((a..=b).map(|n| format!("{n}/{proto}")).collect())
}

pub(super) fn valid_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<u32>() {
        return (1..=64).contains(&n);
    }
    let name = s.strip_prefix("SIG").unwrap_or(s);
    name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+' || c == '-') && !name.is_empty()
}

/// Go-style durations (`1h2m3.5s`, `300ms`) in nanoseconds (see [`rbuild_types::units::go_duration`]).
pub fn parse_duration(s: &str) -> Option<i64> {
    rbuild_types::units::go_duration(s).map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
