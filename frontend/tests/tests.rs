//! The integration tests of `rbuild-frontend`, compiled into one binary.

mod conformance;
mod checks;
mod convert;
mod hostile;
