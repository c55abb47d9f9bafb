//! What a build sets for all of its RUN containers: cgroup limits, extra `/etc/hosts` entries, the size of
//! `/dev/shm` and rlimits — `docker build`'s `--memory`, `--memory-swap`, `--cpu-shares`, `--cpu-period`,
//! `--cpu-quota`, `--cpuset-cpus`, `--add-host`, `--shm-size` and `--ulimit`.
//!
//! The parsers take Docker's value syntax (`64m`, `1g`, `-1` for unlimited swap, `nofile=1024:2048`,
//! `host:ip`/`host=ip`) so a pipeline's flags keep their meaning. There is one limit Docker does not set: a
//! [`DEFAULT_PIDS_LIMIT`] on the number of tasks, so a fork bomb in a RUN step stops inside its own cgroup instead
//! of exhausting the host's process table.

use std::net::IpAddr;

use oci_spec::runtime::PosixRlimitType;

/// Tasks (processes and threads) one RUN container may have unless the build says otherwise. BuildKit and Docker
/// set none; Podman uses 2048, which a parallel compiler or test run with many threads can reach on a big machine.
/// 16384 still stops a fork bomb long before the host's `pid_max`.
pub const DEFAULT_PIDS_LIMIT: i64 = 16384;

/// The smallest `--memory` Docker accepts (6 MiB); below it a container cannot even start its process.
pub const MIN_MEMORY: i64 = 6 * 1024 * 1024;

/// The CFS period `--cpus` uses, Docker's (100 ms).
pub const CPUS_PERIOD: u64 = 100_000;

/// The size of `/dev/shm` unless `--shm-size` says otherwise: Docker's 64 MiB.
pub const DEFAULT_SHM_SIZE: u64 = 64 * 1024 * 1024;

/// Settings every RUN container of a build gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerOptions {
    /// Memory limit in bytes (`--memory`).
    pub memory: Option<i64>,
    /// Memory plus swap in bytes, `-1` for unlimited swap (`--memory-swap`); OCI's `memory.swap` has this meaning.
    pub memory_swap: Option<i64>,
    /// Relative CPU weight (`--cpu-shares`).
    pub cpu_shares: Option<u64>,
    /// CFS period in microseconds (`--cpu-period`).
    pub cpu_period: Option<u64>,
    /// CFS quota in microseconds per period (`--cpu-quota`).
    pub cpu_quota: Option<i64>,
    /// CPUs the container may run on, e.g. `0-2,4` (`--cpuset-cpus`).
    pub cpuset_cpus: Option<String>,
    /// Maximum number of tasks; `None` for no limit.
    pub pids_limit: Option<i64>,
    /// Lines added to the container's `/etc/hosts` (`--add-host`), in order.
    pub extra_hosts: Vec<HostEntry>,
    /// Size of `/dev/shm` in bytes (`--shm-size`).
    pub shm_size: u64,
    /// Resource limits of the process (`--ulimit`); the ones not named are inherited from rbuild.
    pub ulimits: Vec<Ulimit>,
}

impl Default for ContainerOptions {
    fn default() -> ContainerOptions {
        ContainerOptions {
            memory: None,
            memory_swap: None,
            cpu_shares: None,
            cpu_period: None,
            cpu_quota: None,
            cpuset_cpus: None,
            pids_limit: Some(DEFAULT_PIDS_LIMIT),
            extra_hosts: Vec::new(),
            shm_size: DEFAULT_SHM_SIZE,
            ulimits: Vec::new(),
        }
    }
}

impl ContainerOptions {
    /// The settings that change what a step can produce, as `name=value` lines for the step's cache key (see
    /// `ExecOp::settings`): extra hosts, ulimits, a non-default `/dev/shm` size. Resource limits are left out:
    /// they decide whether a step finishes, not what it writes (BuildKit does not key them either).
    pub fn key_settings(&self) -> Vec<String> {
        let mut out: Vec<String> = self.extra_hosts.iter().map(|h| format!("add-host={}:{}", h.host, h.ip)).collect();
        out.extend(self.ulimits.iter().map(|u| format!("ulimit={:?}={}:{}", u.typ, u.soft, u.hard)));
        if self.shm_size != DEFAULT_SHM_SIZE {
            out.push(format!("shm-size={}", self.shm_size));
        }
        out
    }

    /// Docker's swap default: with a memory limit and no `--memory-swap`, as much swap as memory (memory plus swap
    /// is twice the limit). Only where the kernel accounts swap (`host_limits_swap`): runc fails to set a swap
    /// limit the cgroup has no file for.
    pub fn with_swap_default(mut self, host_limits_swap: bool) -> ContainerOptions {
        if host_limits_swap
            && self.memory_swap.is_none()
            && let Some(memory) = self.memory
        {
            self.memory_swap = Some(memory.saturating_mul(2));
        }
        self
    }

    /// Checks the combination of memory flags as Docker does: a swap limit needs a memory limit no larger than it.
    pub fn validate(&self) -> Result<(), OptionError> {
        if let Some(memory) = self.memory
            && memory < MIN_MEMORY
        {
            return Err(OptionError::MemoryTooSmall { memory });
        }
        if let Some(period) = self.cpu_period
            && !(1000..=1_000_000).contains(&period)
        {
            return Err(OptionError::CpuPeriod { period });
        }
        if let Some(quota) = self.cpu_quota
            && quota != -1
            && quota < 1000
        {
            return Err(OptionError::CpuQuota { quota });
        }
        match (self.memory, self.memory_swap) {
            (None, Some(swap)) if swap != -1 => Err(OptionError::SwapWithoutMemory),
            (Some(memory), Some(swap)) if swap != -1 && swap < memory => {
                Err(OptionError::SwapBelowMemory { memory, swap })
            }
            _ => Ok(()),
        }
    }
}

/// Whether this host's cgroups can limit swap: cgroup v2 (`memory.swap.max`), or cgroup v1 with swap accounting
/// (`memory.memsw.limit_in_bytes`).
pub fn host_limits_swap() -> bool {
    let cgroup = std::path::Path::new("/sys/fs/cgroup");
    cgroup.join("cgroup.controllers").exists() || cgroup.join("memory/memory.memsw.limit_in_bytes").exists()
}

/// One `--add-host` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub host: String,
    pub ip: IpAddr,
}

/// One `--ulimit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ulimit {
    pub typ: PosixRlimitType,
    pub soft: u64,
    pub hard: u64,
}

/// A flag value that is not in Docker's syntax.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum OptionError {
    #[error("invalid size {value:?}: use a number with an optional unit b, k, m or g (e.g. 64m)")]
    Size { value: String },
    #[error("invalid --memory-swap {value:?}: use a size (e.g. 1g) or -1 for unlimited swap")]
    Swap { value: String },
    #[error("--memory {memory} is below the minimum of 6 MiB")]
    MemoryTooSmall { memory: i64 },
    #[error("--cpu-period {period} is out of range: use 1000 to 1000000 microseconds")]
    CpuPeriod { period: u64 },
    #[error("--cpu-quota {quota} is out of range: use at least 1000 microseconds, or -1 for none")]
    CpuQuota { quota: i64 },
    #[error("invalid --cpus {value:?}: use a positive number of CPUs, e.g. 1.5")]
    Cpus { value: String },
    #[error("--memory-swap needs --memory: set the memory limit too")]
    SwapWithoutMemory,
    #[error("--memory-swap {swap} is below --memory {memory}: it is the total of memory and swap")]
    SwapBelowMemory { memory: i64, swap: i64 },
    #[error("invalid number {value:?} for {flag}")]
    Number { flag: &'static str, value: String },
    #[error("invalid --cpuset-cpus {value:?}: use CPU numbers and ranges, e.g. 0-2,4")]
    Cpuset { value: String },
    #[error("invalid --add-host {value:?}: use HOST:IP or HOST=IP")]
    AddHost { value: String },
    #[error("--add-host {value:?}: host-gateway is not supported (rbuild has no gateway address to name)")]
    HostGateway { value: String },
    #[error("invalid --ulimit {value:?}: use NAME=SOFT[:HARD], e.g. nofile=1024:2048")]
    Ulimit { value: String },
    #[error("invalid --ulimit {value:?}: unknown limit {name:?}")]
    UlimitName { value: String, name: String },
    #[error("invalid --ulimit {value:?}: the soft limit is above the hard limit")]
    UlimitOrder { value: String },
}

/// A size in Docker's syntax (`units.RAMInBytes`, see [`rbuild_types::units::ram_in_bytes`]): `64m` is 64 MiB.
pub fn parse_size(value: &str) -> Result<u64, OptionError> {
    rbuild_types::units::ram_in_bytes(value).ok_or_else(|| OptionError::Size { value: value.to_string() })
}

/// `--memory`: a size that must be above zero.
pub fn parse_memory(value: &str) -> Result<i64, OptionError> {
    let bytes = parse_size(value)?;
    i64::try_from(bytes).ok().filter(|b| *b > 0).ok_or(OptionError::Size { value: value.to_string() })
}

/// `--memory-swap`: a size, or `-1` for unlimited swap.
pub fn parse_memory_swap(value: &str) -> Result<i64, OptionError> {
    if value.trim() == "-1" {
        return Ok(-1);
    }
    let bytes = parse_size(value).map_err(|_| OptionError::Swap { value: value.to_string() })?;
    i64::try_from(bytes).ok().filter(|b| *b > 0).ok_or(OptionError::Swap { value: value.to_string() })
}

/// `--shm-size`: a size above zero.
pub fn parse_shm_size(value: &str) -> Result<u64, OptionError> {
    Some(parse_size(value)?).filter(|b| *b > 0).ok_or(OptionError::Size { value: value.to_string() })
}

/// `--cpuset-cpus`: comma-separated CPU numbers and `a-b` ranges.
pub fn parse_cpuset(value: &str) -> Result<String, OptionError> {
    let err = || OptionError::Cpuset { value: value.to_string() };
    let v = value.trim();
    if v.is_empty() {
        return Err(err());
    }
    for part in v.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: u32 = a.parse().map_err(|_| err())?;
        let b: u32 = b.parse().map_err(|_| err())?;
        if a > b {
            return Err(err());
        }
    }
    Ok(v.to_string())
}

/// `--add-host`: `HOST:IP` or `HOST=IP` (buildx's form; an IPv6 address keeps its colons after the first `:`).
pub fn parse_add_host(value: &str) -> Result<HostEntry, OptionError> {
    let err = || OptionError::AddHost { value: value.to_string() };
    let (host, ip) = value.split_once('=').or_else(|| value.split_once(':')).ok_or_else(err)?;
    let host = host.trim();
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '#') {
        return Err(err());
    }
    let ip = ip.trim().trim_start_matches('[').trim_end_matches(']');
    if ip == "host-gateway" {
        return Err(OptionError::HostGateway { value: value.to_string() });
    }
    let ip: IpAddr = ip.parse().map_err(|_| err())?;
    Ok(HostEntry { host: host.to_string(), ip })
}

/// `--ulimit`: `NAME=SOFT[:HARD]` with Docker's names (`nofile`, `nproc`, `core`, ...); `-1` or `unlimited` for
/// no limit; without a hard limit it equals the soft one.
pub fn parse_ulimit(value: &str) -> Result<Ulimit, OptionError> {
    let err = || OptionError::Ulimit { value: value.to_string() };
    let (name, limits) = value.split_once('=').ok_or_else(err)?;
    let typ = match name.trim() {
        "core" => PosixRlimitType::RlimitCore,
        "cpu" => PosixRlimitType::RlimitCpu,
        "data" => PosixRlimitType::RlimitData,
        "fsize" => PosixRlimitType::RlimitFsize,
        "locks" => PosixRlimitType::RlimitLocks,
        "memlock" => PosixRlimitType::RlimitMemlock,
        "msgqueue" => PosixRlimitType::RlimitMsgqueue,
        "nice" => PosixRlimitType::RlimitNice,
        "nofile" => PosixRlimitType::RlimitNofile,
        "nproc" => PosixRlimitType::RlimitNproc,
        "rss" => PosixRlimitType::RlimitRss,
        "rtprio" => PosixRlimitType::RlimitRtprio,
        "rttime" => PosixRlimitType::RlimitRttime,
        "sigpending" => PosixRlimitType::RlimitSigpending,
        "stack" => PosixRlimitType::RlimitStack,
        other => return Err(OptionError::UlimitName { value: value.to_string(), name: other.to_string() }),
    };
    let limit = |s: &str| match s.trim() {
        "-1" | "unlimited" => Ok(u64::MAX),
        n => n.parse::<u64>().map_err(|_| err()),
    };
    let (soft, hard) = match limits.split_once(':') {
        Some((soft, hard)) => (limit(soft)?, limit(hard)?),
        None => {
            let l = limit(limits)?;
            (l, l)
        }
    };
    if soft > hard {
        return Err(OptionError::UlimitOrder { value: value.to_string() });
    }
    Ok(Ulimit { typ, soft, hard })
}

/// `--cpus`: a number of CPUs, as the CFS quota per [`CPUS_PERIOD`] (`1.5` is 150000 per 100000).
pub fn parse_cpus(value: &str) -> Result<i64, OptionError> {
    let err = || OptionError::Cpus { value: value.to_string() };
    let cpus: f64 = value.trim().parse().map_err(|_| err())?;
    let quota = (cpus * CPUS_PERIOD as f64).round();
    if !quota.is_finite() || quota < 1000.0 || quota > i64::MAX as f64 {
        return Err(err());
    }
    Ok(quota as i64)
}

/// A plain number flag (`--cpu-shares`, `--cpu-period`, `--cpu-quota`).
pub fn parse_number<T: std::str::FromStr>(flag: &'static str, value: &str) -> Result<T, OptionError> {
    value.trim().parse().map_err(|_| OptionError::Number { flag, value: value.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_dockers_units() {
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("2mb"), Ok(2 << 20));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("100b"), Ok(100));
        for bad in ["", "m", "64x", "-1", "1..2m", "64 mm"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert!(parse_memory("0").is_err());
        assert_eq!(parse_shm_size("128m"), Ok(128 << 20));
    }

    #[test]
    fn memory_swap_takes_minus_one_and_must_cover_memory() {
        assert_eq!(parse_memory_swap("-1"), Ok(-1));
        assert_eq!(parse_memory_swap("1g"), Ok(1 << 30));
        assert!(matches!(parse_memory_swap("-2"), Err(OptionError::Swap { .. })));
        let opts = |memory, memory_swap| ContainerOptions { memory, memory_swap, ..ContainerOptions::default() };
        assert_eq!(opts(None, Some(1 << 30)).validate(), Err(OptionError::SwapWithoutMemory));
        assert_eq!(
            opts(Some(2 << 30), Some(1 << 30)).validate(),
            Err(OptionError::SwapBelowMemory { memory: 2 << 30, swap: 1 << 30 })
        );
        assert_eq!(opts(Some(1 << 30), Some(-1)).validate(), Ok(()));
        assert_eq!(opts(None, Some(-1)).validate(), Ok(()));
        assert_eq!(opts(Some(1 << 30), Some(2 << 30)).validate(), Ok(()));
        assert_eq!(opts(Some(1 << 30), None).with_swap_default(true).memory_swap, Some(2 << 30));
        assert_eq!(opts(Some(1 << 30), None).with_swap_default(false).memory_swap, None);
        assert_eq!(opts(Some(1 << 30), Some(-1)).with_swap_default(true).memory_swap, Some(-1));
        assert_eq!(opts(None, None).with_swap_default(true).memory_swap, None);
    }

    #[test]
    fn add_host_takes_colon_and_equals_forms_and_refuses_host_gateway() {
        let entry = |host: &str, ip: &str| HostEntry { host: host.into(), ip: ip.parse().expect("ip") };
        assert_eq!(parse_add_host("db:10.1.2.3"), Ok(entry("db", "10.1.2.3")));
        assert_eq!(parse_add_host("db=10.1.2.3"), Ok(entry("db", "10.1.2.3")));
        assert_eq!(parse_add_host("v6:::1"), Ok(entry("v6", "::1")));
        assert_eq!(parse_add_host("v6=[fd00::2]"), Ok(entry("v6", "fd00::2")));
        assert!(matches!(parse_add_host("gw:host-gateway"), Err(OptionError::HostGateway { .. })));
        for bad in ["db", ":10.0.0.1", "db:not-an-ip", "d b:10.0.0.1"] {
            assert!(matches!(parse_add_host(bad), Err(OptionError::AddHost { .. })), "{bad:?}");
        }
    }

    #[test]
    fn ulimits_take_soft_and_hard() {
        assert_eq!(
            parse_ulimit("nofile=1024:2048"),
            Ok(Ulimit { typ: PosixRlimitType::RlimitNofile, soft: 1024, hard: 2048 })
        );
        assert_eq!(parse_ulimit("nproc=50"), Ok(Ulimit { typ: PosixRlimitType::RlimitNproc, soft: 50, hard: 50 }));
        assert_eq!(
            parse_ulimit("core=-1"),
            Ok(Ulimit { typ: PosixRlimitType::RlimitCore, soft: u64::MAX, hard: u64::MAX })
        );
        assert!(matches!(parse_ulimit("nofile=2048:1024"), Err(OptionError::UlimitOrder { .. })));
        assert!(matches!(parse_ulimit("files=1"), Err(OptionError::UlimitName { .. })));
        for bad in ["nofile", "nofile=", "nofile=a:b", "nofile=1:"] {
            assert!(matches!(parse_ulimit(bad), Err(OptionError::Ulimit { .. })), "{bad:?}");
        }
    }

    #[test]
    fn memory_and_cpu_ranges_are_dockers() {
        let check = |o: ContainerOptions| o.validate();
        let d = ContainerOptions::default;
        assert_eq!(
            check(ContainerOptions { memory: Some(1 << 20), ..d() }),
            Err(OptionError::MemoryTooSmall { memory: 1 << 20 })
        );
        assert_eq!(check(ContainerOptions { memory: Some(MIN_MEMORY), ..d() }), Ok(()));
        assert_eq!(
            check(ContainerOptions { cpu_period: Some(999), ..d() }),
            Err(OptionError::CpuPeriod { period: 999 })
        );
        assert_eq!(check(ContainerOptions { cpu_quota: Some(10), ..d() }), Err(OptionError::CpuQuota { quota: 10 }));
        assert_eq!(check(ContainerOptions { cpu_quota: Some(-1), cpu_period: Some(1000), ..d() }), Ok(()));
        assert_eq!(parse_cpus("1.5"), Ok(150_000));
        assert_eq!(parse_cpus("0.01"), Ok(1000));
        for bad in ["0", "-1", "x", "0.001"] {
            assert!(matches!(parse_cpus(bad), Err(OptionError::Cpus { .. })), "{bad:?}");
        }
    }

    #[test]
    fn cpuset_and_numbers() {
        assert_eq!(parse_cpuset("0-2,4"), Ok("0-2,4".to_string()));
        assert_eq!(parse_cpuset("1"), Ok("1".to_string()));
        for bad in ["", "a", "2-1", "1,", "0-"] {
            assert!(parse_cpuset(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_number::<u64>("--cpu-shares", "512"), Ok(512));
        assert!(parse_number::<u64>("--cpu-period", "-5").is_err());
        assert_eq!(parse_number::<i64>("--cpu-quota", "-1"), Ok(-1));
    }

    #[test]
    fn defaults_limit_pids_and_give_dockers_shm() {
        let d = ContainerOptions::default();
        assert_eq!(d.pids_limit, Some(DEFAULT_PIDS_LIMIT));
        assert_eq!(d.shm_size, 64 << 20);
        assert!(d.memory.is_none() && d.ulimits.is_empty() && d.extra_hosts.is_empty());
    }
}
