//! Sizes and durations as users type them, parsed in one place.
//!
//! Three crates read them: the frontend (`RUN --mount=type=tmpfs,size=64m`, `HEALTHCHECK --interval=30s`), the
//! executor's `--memory`/`--shm-size`, and the cache's `--keep-storage`/`until=24h`. They used to have a parser
//! each, and the copies disagreed at the edges (`5ki`, `5bb`). There are two size spellings on purpose:
//! [`ram_in_bytes`] is Docker's `units.RAMInBytes` (every unit is binary: `1g` is 1 GiB), which `docker build`
//! flags and BuildKit mount options use; [`human_size`] is the store's `--keep-storage`, where `GB` is 10^9 and
//! `GiB` is 2^30, as `docker system df` prints them. Durations are Go's `time.ParseDuration`; the store's
//! `until=` filter also takes days (`7d`).

use std::time::Duration;

/// Docker's `RAMInBytes`: a number (with an optional fraction), optional spaces, then an optional unit `b`, or one
/// of `k`, `m`, `g`, `t`, `p` (binary multiples) optionally followed by `b` or `ib`, in any case.
pub fn ram_in_bytes(s: &str) -> Option<u64> {
    parse_size(s, |unit| {
        let power = unit_power(unit, "kmgtp", &["", "b", "ib"])?;
        Some(1024f64.powi(power))
    })
}

/// The store's sizes: bytes, or `k`/`m`/`g`/`t` with `b` for decimal multiples (`10GB`), with `i`/`ib` for binary
/// ones (`1.5 MiB`), in any case.
pub fn human_size(s: &str) -> Option<u64> {
    parse_size(s, |unit| {
        let binary = unit.ends_with('i') || unit.ends_with("ib");
        let power = unit_power(unit, "kmgt", &["", "b", "i", "ib"])?;
        Some(if binary { 1024f64 } else { 1000f64 }.powi(power))
    })
}

/// The power of 1000 or 1024 that `unit` names (0 for `` and `b`): its first letter's place in `letters`, plus
/// one, when the rest is one of `suffixes`.
fn unit_power(unit: &str, letters: &str, suffixes: &[&str]) -> Option<i32> {
    if unit.is_empty() || unit == "b" {
        return Some(0);
    }
    let first = unit.chars().next()?;
    let place = letters.find(first)?;
    suffixes.contains(&&unit[first.len_utf8()..]).then_some(place as i32 + 1)
}

fn parse_size(s: &str, multiplier: impl Fn(&str) -> Option<f64>) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    let bytes = number * multiplier(&unit.trim_start().to_ascii_lowercase())?;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// Go's `time.ParseDuration` without a sign: `300ms`, `1h2m3.5s`, `0`. A bare number other than `0` is an error.
/// Values too large for a `Duration` saturate.
pub fn go_duration(s: &str) -> Option<Duration> {
    duration(s, false)
}

/// [`go_duration`] that also takes days (`7d`, `1d12h`), for the store's `until=` filter.
pub fn go_duration_or_days(s: &str) -> Option<Duration> {
    duration(s, true)
}

fn duration(s: &str, days: bool) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut nanos: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let n: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let multiplier = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" if days => 86400e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        nanos += n * multiplier;
    }
    // `as` saturates, so a huge duration is the longest one rather than a panic.
    Some(Duration::from_nanos(nanos as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_sizes_are_binary() {
        for (s, n) in [
            ("64m", 64 << 20),
            ("1G", 1 << 30),
            ("1.5k", 1536),
            ("2MiB", 2 << 20),
            ("2mb", 2 << 20),
            ("100b", 100),
            ("100", 100),
            ("3 p", 3 << 50),
        ] {
            assert_eq!(ram_in_bytes(s), Some(n), "{s:?}");
        }
        for bad in ["", "m", "64x", "-1", "1..2m", "64 mm", "5ki", "5bb", "5ib", "nan", "1e3"] {
            assert_eq!(ram_in_bytes(bad), None, "{bad:?}");
        }
        assert_eq!(ram_in_bytes("99999999999999999999p"), None, "too large for u64");
    }

    #[test]
    fn store_sizes_are_decimal_unless_binary() {
        assert_eq!(human_size("10GB"), Some(10_000_000_000));
        assert_eq!(human_size("10g"), Some(10_000_000_000));
        assert_eq!(human_size("1.5 MiB"), Some(1_572_864));
        assert_eq!(human_size("2ki"), Some(2048));
        assert_eq!(human_size("42"), Some(42));
        for bad in ["ten", "5XB", "5pb", "5kbi", ""] {
            assert_eq!(human_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn durations_are_gos() {
        assert_eq!(go_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(go_duration("1.5µs"), Some(Duration::from_nanos(1500)));
        assert_eq!(go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "5", "1d", "s", "-1s", "1x"] {
            assert_eq!(go_duration(bad), None, "{bad:?}");
        }
        assert_eq!(go_duration_or_days("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(go_duration_or_days("1d12h"), Some(Duration::from_secs(129_600)));
        assert!(go_duration("999999999999999999999h").is_some(), "saturates instead of panicking");
    }
}
