//! The progress sink a build reports to. The builder never prints: the CLI decides how events look (plain lines,
//! a live terminal view, JSON), and a library user can collect them.

use rbuild_solver::{Event, Progress};

/// Where a build reports what it does: the solver's step events ([`Progress`]), plus lines about the build as a
/// whole.
pub trait Reporter: Progress {
    /// A line about the build as a whole: a base image being pulled, the image written, an output exported.
    fn message(&self, text: &str);
    /// A warning about the Dockerfile or the request (a build check, an unused build arg), already formatted.
    fn warning(&self, text: &str);
}

/// A reporter that drops everything.
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _: Event) {}
}

impl Reporter for Silent {
    fn message(&self, _: &str) {}
    fn warning(&self, _: &str) {}
}
