//! The integration tests of `rbuild-frontend`, compiled into one binary.
// A test fails by panicking on an unexpected value, so unwrap/expect are how tests assert.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod checks;
mod conformance;
mod convert;
mod hostile;
