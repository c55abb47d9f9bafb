//! The integration tests of `rbuild-frontend`, compiled into one binary.

mod checks;
mod conformance;
mod convert;
mod hostile;
