//! `--progress quiet` and `-q`: nothing on stderr but errors (which the caller prints), and with `-q` the image ID
//! alone on stdout, as `docker buildx build -q` does.

use super::Renderer;
use rbuild_solver::{Event, Progress};

pub struct QuietProgress {
    /// `-q`: print the image ID on stdout.
    pub print_id: bool,
}

impl Progress for QuietProgress {
    fn event(&self, _: Event) {}
}

impl Renderer for QuietProgress {
    fn message(&self, _: &str) {}
    fn status(&self, _: &str) {}
    fn result(&self, _: &str) {}
    fn image_id(&self, id: &str) {
        if self.print_id {
            println!("{id}");
        }
    }
}
