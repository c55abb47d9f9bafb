//! The Dockerfile frontend: text in, typed stages and a build graph out.
//!
//! Everything here is pure: no filesystem, no network. The build context's file list, `.dockerignore` text and
//! base-image configs come in through arguments and traits, so every test of this crate runs offline and the
//! conformance suites can compare it byte for byte against BuildKit's parser.

pub mod dockerignore;
pub mod parser;
pub mod shell;
