//! Plain progress on stderr: a line when a step starts and when it ends (`CACHED` or its duration), and its
//! output lines in between, prefixed with the step number so parallel steps stay readable.

use rbuild_builder::Reporter;
use rbuild_solver::{Event, Progress};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

pub struct PlainProgress {
    started: Instant,
    numbers: Mutex<BTreeMap<usize, usize>>,
    /// The last lines of each step's output, for the failure report.
    pub tails: Mutex<BTreeMap<usize, Vec<String>>>,
}

impl PlainProgress {
    pub fn new() -> Self {
        PlainProgress {
            started: Instant::now(),
            numbers: Mutex::new(BTreeMap::new()),
            tails: Mutex::new(BTreeMap::new()),
        }
    }

    fn number(&self, vertex: usize) -> usize {
        let mut n = self.numbers.lock().unwrap_or_else(|p| p.into_inner());
        let next = n.len() + 1;
        *n.entry(vertex).or_insert(next)
    }
}

impl Progress for PlainProgress {
    fn event(&self, event: Event) {
        let mut err = std::io::stderr().lock();
        let _ = match event {
            Event::Started { vertex, name } => writeln!(err, "#{} {name}", self.number(vertex)),
            Event::Cached { vertex, name } => {
                let n = self.number(vertex);
                writeln!(err, "#{n} {name}\n#{n} CACHED")
            }
            Event::Done { vertex, elapsed, .. } => {
                writeln!(err, "#{} DONE {:.1}s", self.number(vertex), elapsed.as_secs_f64())
            }
            Event::Failed { vertex, elapsed, .. } => {
                writeln!(err, "#{} ERROR after {:.1}s", self.number(vertex), elapsed.as_secs_f64())
            }
            Event::Canceled { vertex, elapsed, .. } => {
                writeln!(err, "#{} CANCELED after {:.1}s", self.number(vertex), elapsed.as_secs_f64())
            }
            Event::Explained { vertex, reasons } => {
                let n = self.number(vertex);
                let mut r = Ok(());
                for reason in reasons {
                    r = r.and(writeln!(err, "#{n} cache miss: {reason}"));
                }
                r
            }
            Event::Log { vertex, line } => {
                let n = self.number(vertex);
                let t = self.started.elapsed().as_secs_f64();
                let mut tails = self.tails.lock().unwrap_or_else(|p| p.into_inner());
                let tail = tails.entry(vertex).or_default();
                tail.push(line.clone());
                if tail.len() > 20 {
                    tail.remove(0);
                }
                writeln!(err, "#{n} {t:.3} {line}")
            }
        };
    }
}

impl Reporter for PlainProgress {
    fn message(&self, text: &str) {
        eprintln!("#0 {text}");
    }

    fn warning(&self, text: &str) {
        eprintln!("{text}");
    }
}
