//! rbuild's end-to-end tests: the real binary, real containers, a real registry, and independent tools (skopeo,
//! umoci, runc) reading what it wrote. One test binary (see STYLE.md); each test has its own store and registry.
// A test fails by panicking on an unexpected value, so unwrap/expect are how tests assert.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod buildx_flags;
mod cache;
mod checks;
mod commands;
mod compat;
mod context_safety;
mod differential;
mod e2e;
mod errors;
mod executor;
mod frontend_builds;
mod hardening;
mod limits;
mod multiplatform;
mod network;
mod outputs;
mod progress;
mod pull;
mod registry;
mod rootless;
mod sources;
mod support;
