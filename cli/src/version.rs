//! `rbuild version`: the version, the commit it was built from (see `build.rs`) and the platform it builds for.

use std::process::ExitCode;

/// `0.1.0 (commit 0123456789ab)`, also what `--version` prints.
pub const LONG: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("RBUILD_COMMIT"), ")");

pub fn run() -> ExitCode {
    let platform = rbuild_types::oci::Platform::host();
    println!("rbuild {}", env!("CARGO_PKG_VERSION"));
    println!(" commit:   {}", env!("RBUILD_COMMIT"));
    println!(" platform: {}/{}", platform.os, platform.architecture);
    ExitCode::SUCCESS
}
