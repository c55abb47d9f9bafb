//! rbuild's end-to-end tests: the real binary, real containers, a real registry, and independent tools (skopeo,
//! umoci, runc) reading what it wrote. One test binary (see STYLE.md); each test has its own store and registry.

mod cache;
mod compat;
mod context_safety;
mod differential;
mod e2e;
mod errors;
mod executor;
mod frontend_builds;
mod hardening;
mod limits;
mod network;
mod outputs;
mod pull;
mod registry;
mod remote_cache;
mod support;
