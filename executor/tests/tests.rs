//! The executor's integration tests: one binary, one module per area. Tests that need root and runc are gated by
//! `support::privileged()`: they fail under `CI=true` and print SKIPPED elsewhere.
// A test fails by panicking on an unexpected value, so unwrap/expect are how tests assert.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod overlay;
mod runtime;
mod support;
mod worker;
