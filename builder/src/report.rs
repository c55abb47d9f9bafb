//! The progress sink a build reports to. The builder never prints: the CLI decides how events look (plain lines,
//! a live terminal view, JSON), and a library user can collect them.

use rbuild_solver::{Event, Graph, Progress, VertexId};

/// Where a build reports what it does: the solver's step events ([`Progress`]), plus lines about the build as a
/// whole.
pub trait Reporter: Progress {
    /// Called once before the solve with the graph and its targets (one per platform), so that a view can count
    /// the steps to come.
    fn plan(&self, graph: &Graph, targets: &[VertexId]) {
        let _ = (graph, targets);
    }
    /// A line about the build as a whole that belongs to no step: the image written, its names, an output
    /// exported, a push.
    fn message(&self, text: &str);
    /// A warning about the Dockerfile or the request (a build check, an unused build arg), already formatted.
    fn warning(&self, text: &str) {
        self.message(text);
    }
    /// Build-level work that takes time and that BuildKit numbers `#0` ("pulling X"); several may run at once.
    fn status(&self, text: &str) {
        self.message(&format!("#0 {text}"));
    }
    /// The work [`Reporter::status`] announced with `text` ended (a live view stops its timer).
    fn status_end(&self, text: &str) {
        let _ = text;
    }
    /// The solve is over: a live view stops redrawing and leaves a plain summary. Messages may follow.
    fn finish(&self) {}
}

/// A reporter that drops everything.
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _: Event) {}
}

impl Reporter for Silent {
    fn message(&self, _: &str) {}
    fn status(&self, _: &str) {}
}
