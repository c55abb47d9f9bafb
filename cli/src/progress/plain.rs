//! Plain progress on stderr, BuildKit's format: a line when a step starts and when it ends (`CACHED` or its
//! duration), and its output lines in between, prefixed with the step number so parallel steps stay readable.

use super::Renderer;
use super::text::Numbers;
use rbuild_solver::{Event, Progress};
use std::io::Write;
use std::time::Instant;

pub struct PlainProgress {
    started: Instant,
    numbers: Numbers,
}

impl PlainProgress {
    pub fn new() -> Self {
        PlainProgress { started: Instant::now(), numbers: Numbers::default() }
    }
}

impl Progress for PlainProgress {
    fn event(&self, event: Event) {
        let mut err = std::io::stderr().lock();
        let _ = match event {
            Event::Started { vertex, name } => writeln!(err, "#{} {name}", self.numbers.of(vertex)),
            Event::Cached { vertex, name } => {
                let n = self.numbers.of(vertex);
                writeln!(err, "#{n} {name}\n#{n} CACHED")
            }
            Event::Done { vertex, elapsed, .. } => {
                writeln!(err, "#{} DONE {:.1}s", self.numbers.of(vertex), elapsed.as_secs_f64())
            }
            Event::Failed { vertex, elapsed, .. } => {
                writeln!(err, "#{} ERROR after {:.1}s", self.numbers.of(vertex), elapsed.as_secs_f64())
            }
            Event::Canceled { vertex, elapsed, .. } => {
                writeln!(err, "#{} CANCELED after {:.1}s", self.numbers.of(vertex), elapsed.as_secs_f64())
            }
            Event::Explained { vertex, reasons } => {
                let n = self.numbers.of(vertex);
                let mut r = Ok(());
                for reason in reasons {
                    r = r.and(writeln!(err, "#{n} cache miss: {reason}"));
                }
                r
            }
            Event::Warning { vertex, message } => writeln!(err, "#{} WARNING: {message}", self.numbers.of(vertex)),
            Event::Log { vertex, line } => {
                let n = self.numbers.of(vertex);
                let t = self.started.elapsed().as_secs_f64();
                writeln!(err, "#{n} {t:.3} {line}")
            }
        };
    }
}

impl Renderer for PlainProgress {}

impl rbuild_builder::Reporter for PlainProgress {
    fn message(&self, text: &str) {
        eprintln!("{text}");
    }
}
