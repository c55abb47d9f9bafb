//! `--progress tty`: a live view on stderr, redrawn in place by `indicatif` (which measures the terminal on every
//! draw, so a resize re-wraps instead of garbling). Like BuildKit's: a header with the elapsed time and
//! finished/total steps, then one line per step with its own timer, and under each running step its last few output
//! lines. A step that prints nothing still shows it is alive: its timer ticks. When the solve ends the view is
//! cleared and the plain summary of what ran is left in its place.
//!
//! Step output is drawn only after [`drawable`] removed terminal control from it, and without a UTF-8 locale
//! everything drawn is ASCII.

use super::Renderer;
use super::text::{Numbers, drawable, secs};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use rbuild_solver::{Event, Graph, Progress, VertexId};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Output lines shown under a running step.
const TAIL_LINES: usize = 6;
/// Finished steps kept in the live view; older ones are in the summary at the end.
const FINISHED_SHOWN: usize = 12;
const TICK: Duration = Duration::from_millis(100);

pub struct TtyProgress {
    multi: MultiProgress,
    utf8: bool,
    started: Instant,
    numbers: Numbers,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    header: Option<ProgressBar>,
    steps: BTreeMap<VertexId, Step>,
    /// Steps in the order they appeared, for the summary.
    order: Vec<VertexId>,
    /// Finished steps' bars still in the view, oldest first.
    shown_finished: VecDeque<ProgressBar>,
    /// Build-level work before the steps (pulling a base image): its line, text and start, while it runs.
    working: Vec<(ProgressBar, String, Instant)>,
    /// That work once done, for the summary: `#0 pulling X` and its time.
    worked: Vec<(String, Duration)>,
    finished: bool,
}

struct Step {
    number: usize,
    name: String,
    bar: ProgressBar,
    /// One bar per output line shown under the step while it runs.
    tail: Vec<ProgressBar>,
    lines: VecDeque<String>,
    /// `CACHED`, `DONE 1.2s`, ...: what the summary says.
    outcome: Option<String>,
    reasons: Vec<String>,
}

/// A template key that prints how long a bar has existed, as BuildKit prints times (`3.2s`).
fn timer(state: &ProgressState, w: &mut dyn std::fmt::Write) {
    let _ = write!(w, "{}", secs(state.elapsed()));
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants of this file; a typo is a bug caught by the unit test below.
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner()).with_key("secs", timer)
}

impl TtyProgress {
    pub fn new(utf8: bool) -> Self {
        TtyProgress {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)),
            utf8,
            started: Instant::now(),
            numbers: Numbers::default(),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn header_text(&self, state: &State, done: bool) -> String {
        let (pos, len) = state.header.as_ref().map_or((0, 0), |h| (h.position(), h.length().unwrap_or(0)));
        let end = if done { " FINISHED" } else { "" };
        format!("[+] Building {} ({pos}/{len}){end}", secs(self.started.elapsed()))
    }

    /// A step's line in the view, created when it first shows up.
    fn step<'a>(&self, state: &'a mut State, vertex: VertexId, name: &str) -> &'a mut Step {
        state.steps.entry(vertex).or_insert_with(|| {
            let number = self.numbers.of(vertex);
            let bar = self.multi.add(ProgressBar::new_spinner());
            bar.set_style(style(" => {wide_msg} {secs:>7}"));
            bar.set_message(drawable(name, self.utf8));
            bar.enable_steady_tick(TICK);
            state.order.push(vertex);
            Step {
                number,
                name: name.to_string(),
                bar,
                tail: Vec::new(),
                lines: VecDeque::new(),
                outcome: None,
                reasons: Vec::new(),
            }
        })
    }

    /// Ends a step's line: its status in front of its name, its time (if it ran) at the end.
    fn end(&self, state: &mut State, vertex: VertexId, name: &str, word: Option<&str>, elapsed: Option<Duration>) {
        let summary = match (word, elapsed) {
            (None, Some(e)) => format!("DONE {}", secs(e)),
            (Some(w), Some(e)) => format!("{w} after {}", secs(e)),
            (Some(w), None) => w.to_string(),
            (None, None) => "DONE".to_string(),
        };
        let utf8 = self.utf8;
        let step = self.step(state, vertex, name);
        for bar in step.tail.drain(..) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        let shown = drawable(&step.name, utf8);
        let text = match word {
            Some(w) => format!("{w} {shown}"),
            None => shown,
        };
        step.bar.disable_steady_tick();
        step.bar.set_style(style(" => {wide_msg} {prefix:>7}"));
        step.bar.set_prefix(elapsed.map(secs).unwrap_or_default());
        step.bar.finish_with_message(text);
        step.outcome = Some(summary);
        let bar = step.bar.clone();
        if let Some(h) = &state.header {
            h.inc(1);
        }
        state.shown_finished.push_back(bar);
        while state.shown_finished.len() > FINISHED_SHOWN {
            if let Some(old) = state.shown_finished.pop_front() {
                self.multi.remove(&old);
            }
        }
    }

    fn log(&self, state: &mut State, vertex: VertexId, line: &str) {
        let utf8 = self.utf8;
        let step = self.step(state, vertex, "");
        if step.outcome.is_some() {
            return;
        }
        step.lines.push_back(drawable(line, utf8));
        while step.lines.len() > TAIL_LINES {
            step.lines.pop_front();
        }
        while step.tail.len() < step.lines.len() {
            let after = step.tail.last().unwrap_or(&step.bar).clone();
            let bar = self.multi.insert_after(&after, ProgressBar::new_spinner());
            bar.set_style(style(" => => # {wide_msg}"));
            step.tail.push(bar);
        }
        for (bar, text) in step.tail.iter().zip(&step.lines) {
            bar.set_message(text.clone());
        }
    }

    /// Ends the build-level work lines that are running (those saying `only`, if given).
    fn end_work(&self, state: &mut State) {
        self.end_work_of(state, None);
    }

    fn end_work_of(&self, state: &mut State, only: Option<&str>) {
        let (ended, running): (Vec<_>, Vec<_>) =
            std::mem::take(&mut state.working).into_iter().partition(|(_, text, _)| only.is_none_or(|o| o == text));
        state.working = running;
        for (bar, text, started) in ended {
            let elapsed = started.elapsed();
            bar.disable_steady_tick();
            bar.set_style(style(" => {wide_msg} {prefix:>7}"));
            bar.set_prefix(secs(elapsed));
            bar.finish();
            // Kept (a dropped bar would leave the view): the header goes above it when the steps begin.
            state.shown_finished.push_back(bar);
            state.worked.push((text, elapsed));
        }
    }

    /// The plain summary left when the view goes: what each step did.
    fn summary(&self, state: &State) -> String {
        let mut out = self.header_text(state, true);
        out.push('\n');
        for (text, elapsed) in &state.worked {
            let _ = writeln!(out, "#0 {} {}", drawable(text, self.utf8), secs(*elapsed));
        }
        for v in &state.order {
            let Some(step) = state.steps.get(v) else { continue };
            let n = step.number;
            let _ = writeln!(out, "#{n} {}", drawable(&step.name, self.utf8));
            for r in &step.reasons {
                let _ = writeln!(out, "#{n} cache miss: {}", drawable(r, self.utf8));
            }
            let _ = writeln!(out, "#{n} {}", step.outcome.as_deref().unwrap_or("CANCELED"));
        }
        out
    }
}

impl Progress for TtyProgress {
    fn event(&self, event: Event) {
        let mut state = self.lock();
        if state.finished {
            return;
        }
        match event {
            Event::Started { vertex, name } => {
                self.step(&mut state, vertex, &name);
            }
            Event::Cached { vertex, name } => self.end(&mut state, vertex, &name, Some("CACHED"), None),
            Event::Done { vertex, name, elapsed } => self.end(&mut state, vertex, &name, None, Some(elapsed)),
            Event::Failed { vertex, name, elapsed, .. } => {
                self.end(&mut state, vertex, &name, Some("ERROR"), Some(elapsed))
            }
            Event::Canceled { vertex, name, elapsed } => {
                self.end(&mut state, vertex, &name, Some("CANCELED"), Some(elapsed))
            }
            Event::Log { vertex, line } => self.log(&mut state, vertex, &line),
            Event::Warning { message, .. } => {
                // Above the live view, where it stays after the step's lines are gone.
                drop(state);
                rbuild_builder::Reporter::warning(self, &format!("warning: {message}"));
            }
            Event::Explained { vertex, reasons } => {
                let step = self.step(&mut state, vertex, "");
                step.reasons.extend(reasons.iter().map(|r| r.to_string()));
                for r in reasons {
                    self.log(&mut state, vertex, &format!("cache miss: {r}"));
                }
            }
        }
    }
}

impl Renderer for TtyProgress {}

impl rbuild_builder::Reporter for TtyProgress {
    fn plan(&self, graph: &Graph, targets: &[VertexId]) {
        let mut state = self.lock();
        self.end_work(&mut state);
        let header = self.multi.insert(0, ProgressBar::new(super::steps(graph, targets) as u64));
        // The build's time, not the bar's: the view starts after the Dockerfile was read and base images pulled.
        let started = self.started;
        let total = move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{}", secs(started.elapsed()));
        };
        header.set_style(style("[+] Building {total} ({pos}/{len})").with_key("total", total));
        header.enable_steady_tick(TICK);
        state.header = Some(header);
    }

    /// Pulling a base image: a line with a timer until the next such line or the steps begin (the resolver pulls
    /// one image at a time, before any step runs).
    fn status(&self, text: &str) {
        let mut state = self.lock();
        if state.finished || self.multi.is_hidden() {
            drop(state);
            return self.message(&format!("#0 {text}"));
        }
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(style(" => {wide_msg} {secs:>7}"));
        bar.set_message(drawable(text, self.utf8));
        bar.enable_steady_tick(TICK);
        state.working.push((bar, text.to_string(), Instant::now()));
    }

    fn status_end(&self, text: &str) {
        self.end_work_of(&mut self.lock(), Some(text));
    }

    fn message(&self, text: &str) {
        let text = drawable(text, self.utf8);
        // Above the live view while it is drawn; as a plain line when it is not (or no longer).
        if self.multi.is_hidden() || self.lock().finished || self.multi.println(&text).is_err() {
            eprintln!("{text}");
        }
    }

    fn finish(&self) {
        let mut state = self.lock();
        if std::mem::replace(&mut state.finished, true) {
            return;
        }
        if let Some(h) = &state.header {
            h.disable_steady_tick();
        }
        for step in state.steps.values() {
            step.bar.disable_steady_tick();
        }
        self.end_work(&mut state);
        let _ = self.multi.clear();
        self.multi.set_draw_target(ProgressDrawTarget::hidden());
        eprint!("{}", self.summary(&state));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse() {
        for t in [
            " => {wide_msg} {secs:>7}",
            " => {wide_msg} {prefix:>7}",
            " => => # {wide_msg}",
            "[+] Building {total} ({pos}/{len})",
        ] {
            ProgressStyle::with_template(t).expect(t);
        }
    }

    #[test]
    fn summary_lists_steps_in_order_with_their_outcome() {
        let p = TtyProgress::new(false);
        p.multi.set_draw_target(ProgressDrawTarget::hidden());
        p.event(Event::Started { vertex: 4, name: "[stage-0] RUN echo größe".into() });
        p.event(Event::Cached { vertex: 2, name: "[stage-0] COPY a /a".into() });
        p.event(Event::Log { vertex: 4, line: "\u{1b}[31mhi\u{1b}[0m".into() });
        p.event(Event::Done {
            vertex: 4,
            name: "[stage-0] RUN echo größe".into(),
            elapsed: Duration::from_millis(1240),
        });
        let state = p.lock();
        let summary = p.summary(&state);
        let lines: Vec<&str> = summary.lines().skip(1).collect();
        assert_eq!(
            lines,
            ["#1 [stage-0] RUN echo gr??e", "#1 DONE 1.2s", "#2 [stage-0] COPY a /a", "#2 CACHED"],
            "{summary}"
        );
        assert!(summary.starts_with("[+] Building "), "{summary}");
    }
}
