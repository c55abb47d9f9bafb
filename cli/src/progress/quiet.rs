//! `--progress quiet` and `-q`: nothing on stderr but errors (which the caller prints), and the image ID alone on
//! stdout, as `docker buildx build -q` and `--progress quiet` do (both checked against buildx 0.29).

use super::Renderer;
use rbuild_solver::{Event, Progress};

pub struct QuietProgress;

impl Progress for QuietProgress {
    fn event(&self, _: Event) {}
}

impl rbuild_builder::Reporter for QuietProgress {
    fn message(&self, _: &str) {}
    fn warning(&self, _: &str) {}
    fn status(&self, _: &str) {}
}

impl Renderer for QuietProgress {
    fn result(&self, _: &str) {}
    fn image_id(&self, id: &str) {
        println!("{id}");
    }
}
