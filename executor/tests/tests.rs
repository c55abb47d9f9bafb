//! The executor's integration tests: one binary, one module per area. Tests that need root and runc are gated by
//! `support::privileged()`: they fail under `CI=true` and print SKIPPED elsewhere.

mod overlay;
mod runtime;
mod support;
