//! Scheduler tests with a toy worker: each "RUN" appends its argument to a list of fake layers and counts how
//! often it ran, so deduplication, parallelism, cancellation and cache hits can be asserted exactly.
// A test fails by panicking on an unexpected value, so unwrap/expect are how tests assert.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rbuild_solver::*;
use rbuild_types::Digest;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long a toy step waits for the event it expects (its partners at a rendezvous, or `cancel`) before it gives
/// up. Only a broken scheduler makes a step wait this long, so the tests fail instead of hanging.
const PATIENCE: Duration = Duration::from_secs(30);

/// The toy worker. Its commands:
/// - `meet:GROUP:N[:then]`: wait at a barrier until N steps of GROUP are running at once, then do `then`
///   (`ok` if absent, `fail` to exit 3, `block` to run until canceled; more fields only make ops distinct).
///   A barrier, not a sleep, proves overlap: the steps can only pass it together.
/// - `fail`: exits 3 at once. Anything else: succeeds at once.
/// - a command starting with `stamp` (or `meet:GROUP:N:stamp`) makes a layer that differs on every run (as file
///   times do in a real RUN).
struct Toy {
    runs: Mutex<HashMap<String, usize>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    /// How many steps have arrived at each rendezvous group.
    arrived: Mutex<HashMap<String, usize>>,
    arrival: Condvar,
    /// How long a step waits at a rendezvous before it goes on alone (and counts in `lonely`).
    meet_timeout: Duration,
    lonely: AtomicUsize,
    /// Set by `cancel`: a running `block` step ends (with an error, like a killed container) when it sees it.
    cancelled: Mutex<bool>,
    cancel_signal: Condvar,
    cancel_calls: AtomicUsize,
    /// `block` steps that ended because they saw `cancel` (not because their patience ran out).
    saw_cancel: AtomicUsize,
}

impl Default for Toy {
    fn default() -> Self {
        Toy::with_meet_timeout(PATIENCE)
    }
}

impl Toy {
    fn with_meet_timeout(meet_timeout: Duration) -> Self {
        Toy {
            runs: Mutex::default(),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
            arrived: Mutex::default(),
            arrival: Condvar::new(),
            meet_timeout,
            lonely: AtomicUsize::new(0),
            cancelled: Mutex::new(false),
            cancel_signal: Condvar::new(),
            cancel_calls: AtomicUsize::new(0),
            saw_cancel: AtomicUsize::new(0),
        }
    }

    /// A barrier with a deadline: true once `n` steps of `group` have arrived, false if the wait timed out.
    fn meet(&self, group: &str, n: usize) -> bool {
        let mut arrived = self.arrived.lock().unwrap();
        *arrived.entry(group.to_string()).or_default() += 1;
        self.arrival.notify_all();
        let (mut arrived, timeout) = self
            .arrival
            .wait_timeout_while(arrived, self.meet_timeout, |a| a.get(group).copied().unwrap_or(0) < n)
            .unwrap();
        if timeout.timed_out() {
            // It leaves, so steps that come later, one at a time, do not add up to a meeting.
            *arrived.entry(group.to_string()).or_default() -= 1;
            self.lonely.fetch_add(1, Ordering::SeqCst);
        }
        !timeout.timed_out()
    }

    /// Runs until `cancel` is called; true if it was.
    fn block(&self) -> bool {
        let cancelled = self.cancelled.lock().unwrap();
        let (_cancelled, timeout) = self.cancel_signal.wait_timeout_while(cancelled, PATIENCE, |c| !*c).unwrap();
        if !timeout.timed_out() {
            self.saw_cancel.fetch_add(1, Ordering::SeqCst);
        }
        !timeout.timed_out()
    }

    fn act(&self, cmd: &str) -> Result<(), WorkerError> {
        let mut then = cmd;
        if let Some(rest) = cmd.strip_prefix("meet:") {
            let mut parts = rest.split(':');
            let group = parts.next().unwrap();
            let n = parts.next().unwrap().parse().unwrap();
            self.meet(group, n);
            then = parts.next().unwrap_or("ok");
        }
        let exit = |code| Err(WorkerError::ExitCode { command: cmd.to_string(), code, tail: vec![] });
        match then {
            "fail" => exit(3),
            "unmountable" => Err(WorkerError::new(FailureKind::Mount, ToyError(format!("cannot mount {cmd:?}")))),
            "block" if self.block() => exit(137),
            _ => Ok(()),
        }
    }
}

impl Worker for Toy {
    fn source(&self, _: &Op) -> Result<Output, WorkerError> {
        Ok(Output::RootFs(vec![]))
    }
    fn content_digest(&self, _: &Output, _: &CopyAction) -> Result<Digest, WorkerError> {
        Ok(Digest::of(b"ctx"))
    }
    fn exec(&self, op: &ExecOp, inputs: &[Output], _: &mut dyn FnMut(&str)) -> Result<Output, WorkerError> {
        let cmd = op.args.join(" ");
        // The number of this run, taken as it starts (two concurrent runs of one command each get their own).
        let runs = {
            let mut all = self.runs.lock().unwrap();
            let count = all.entry(cmd.clone()).or_default();
            *count += 1;
            *count
        };
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        let result = self.act(&cmd);
        self.running.fetch_sub(1, Ordering::SeqCst);
        result?;
        let mut layers = inputs[0].layers().to_vec();
        for i in &inputs[1..] {
            layers.extend_from_slice(i.layers());
        }
        // A `stamp` step makes other bytes every time it runs, as a real RUN does (file times).
        let stamps = cmd.starts_with("stamp") || cmd.ends_with(":stamp");
        let made = if stamps { format!("{cmd} run {runs}") } else { cmd.clone() };
        layers.push(Digest::of(made.as_bytes()));
        Ok(Output::RootFs(layers))
    }
    fn file(&self, _: &FileOp, inputs: &[Output]) -> Result<Output, WorkerError> {
        Ok(inputs[0].clone())
    }
    fn cancel(&self) {
        self.cancel_calls.fetch_add(1, Ordering::SeqCst);
        *self.cancelled.lock().unwrap() = true;
        self.cancel_signal.notify_all();
    }
}

/// A worker's own typed error, as an executor would return it.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
struct ToyError(String);

/// Records every progress event.
#[derive(Default)]
struct Events(Mutex<Vec<Event>>);

impl Progress for Events {
    fn event(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

#[derive(Default)]
struct MemCache(Mutex<HashMap<Digest, CacheRecord>>);

impl CacheStore for MemCache {
    fn get(&self, key: &Digest) -> Result<Option<CacheRecord>, CacheError> {
        Ok(self.0.lock().unwrap().get(key).cloned())
    }
    fn put(&self, key: &Digest, output: &Output) -> Result<CacheRecord, CacheError> {
        let r = CacheRecord { output: output.clone(), created: 1 };
        self.0.lock().unwrap().insert(key.clone(), r.clone());
        Ok(r)
    }
}

fn run(g: &mut Graph, input: VertexId, extra: &[VertexId], cmd: &str) -> VertexId {
    let mut inputs = vec![input];
    inputs.extend_from_slice(extra);
    g.add(Vertex {
        op: Op::Exec(ExecOp {
            args: vec![cmd.into()],
            env: vec![],
            cwd: "/".into(),
            user: String::new(),
            network: Network::Host,
            mounts: Vec::new(),
            settings: Vec::new(),
            hostname: String::new(),
            platform: None,
            insecure: false,
        }),
        inputs,
        name: cmd.into(),
        ignore_cache: false,
    })
}

fn solve_now(
    g: &Graph,
    target: VertexId,
    worker: Arc<Toy>,
    cache: Arc<MemCache>,
    jobs: usize,
) -> Result<Vec<Option<Solved>>, SolveError> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(solve(
        Arc::new(g.clone()),
        &[target],
        worker,
        cache,
        Arc::new(NoProgress),
        SolveOptions::with_jobs(jobs),
    ))
}

#[test]
fn shared_vertex_runs_once_and_independent_ones_run_in_parallel() {
    let mut g = Graph::default();
    let scratch = g.add(Vertex { op: Op::Scratch, inputs: vec![], name: "scratch".into(), ignore_cache: false });
    let common = run(&mut g, scratch, &[], "common");
    let a = run(&mut g, common, &[], "meet:abc:3");
    let b = run(&mut g, common, &[], "meet:abc:3:ok:b");
    let c = run(&mut g, common, &[], "meet:abc:3:ok:c");
    let fin = run(&mut g, a, &[b, c], "final");
    let unused = run(&mut g, scratch, &[], "unused");
    let _ = unused;
    let worker = Arc::new(Toy::default());
    let out = solve_now(&g, fin, worker.clone(), Arc::new(MemCache::default()), 4).unwrap();
    let runs = worker.runs.lock().unwrap().clone();
    assert_eq!(runs.get("common"), Some(&1), "a vertex needed three times runs once");
    assert_eq!(runs.get("unused"), None, "vertices the target does not need never run");
    assert_eq!(worker.lonely.load(Ordering::SeqCst), 0, "the three independent steps met at the barrier");
    assert_eq!(worker.max_running.load(Ordering::SeqCst), 3, "independent steps overlap");
    assert_eq!(out[fin].as_ref().unwrap().output.layers().len(), 7);
}

#[test]
fn jobs_caps_concurrent_runs() {
    let mut g = Graph::default();
    let scratch = g.add(Vertex { op: Op::Scratch, inputs: vec![], name: "scratch".into(), ignore_cache: false });
    // Each step waits (briefly) at a barrier for a partner: with the cap working none comes, so every step goes on
    // alone; without it the three would meet at once. Proving that nothing overlaps needs some wait.
    let a = run(&mut g, scratch, &[], "meet:cap:2");
    let b = run(&mut g, scratch, &[], "meet:cap:2:ok:b");
    let c = run(&mut g, scratch, &[], "meet:cap:2:ok:c");
    let fin = run(&mut g, a, &[b, c], "final");
    let worker = Arc::new(Toy::with_meet_timeout(Duration::from_millis(200)));
    solve_now(&g, fin, worker.clone(), Arc::new(MemCache::default()), 1).unwrap();
    assert_eq!(worker.max_running.load(Ordering::SeqCst), 1);
    assert_eq!(worker.lonely.load(Ordering::SeqCst), 3, "no step found a partner at the barrier");
}

#[test]
fn second_solve_hits_the_cache_and_changes_invalidate_downstream_only() {
    let cache = Arc::new(MemCache::default());
    let build = |last: &str| {
        let mut g = Graph::default();
        let scratch = g.add(Vertex { op: Op::Scratch, inputs: vec![], name: "scratch".into(), ignore_cache: false });
        let one = run(&mut g, scratch, &[], "one");
        let two = run(&mut g, one, &[], last);
        (g, two)
    };
    let worker = Arc::new(Toy::default());
    let (g, t) = build("two");
    solve_now(&g, t, worker.clone(), cache.clone(), 2).unwrap();
    let out = solve_now(&g, t, worker.clone(), cache.clone(), 2).unwrap();
    assert!(out[t].as_ref().unwrap().cached);
    let (g, t) = build("three");
    solve_now(&g, t, worker.clone(), cache.clone(), 2).unwrap();
    let runs = worker.runs.lock().unwrap().clone();
    assert_eq!((runs["one"], runs["two"], runs["three"]), (1, 1, 1));
}

/// A cache whose entries read as corrupt once `corrupt_all` is called, until they are written again.
#[derive(Default)]
struct CorruptingCache {
    entries: MemCache,
    corrupt: Mutex<std::collections::HashSet<Digest>>,
}

impl CorruptingCache {
    fn corrupt_all(&self) {
        let keys: Vec<Digest> = self.entries.0.lock().unwrap().keys().cloned().collect();
        self.corrupt.lock().unwrap().extend(keys);
    }
}

impl CacheStore for CorruptingCache {
    fn get(&self, key: &Digest) -> Result<Option<CacheRecord>, CacheError> {
        if self.corrupt.lock().unwrap().contains(key) {
            let source = std::io::Error::other("expected value at line 1 column 1");
            return Err(CacheError { context: format!("entry {key}"), source });
        }
        self.entries.get(key)
    }
    fn put(&self, key: &Digest, output: &Output) -> Result<CacheRecord, CacheError> {
        self.corrupt.lock().unwrap().remove(key);
        self.entries.put(key, output)
    }
}

/// Regression (issue #10): an entry the cache could not read was a silent miss. The step reports it, runs again
/// and its result replaces the entry.
#[test]
fn an_unreadable_cache_entry_is_reported_and_the_step_reruns() {
    let mut g = Graph::default();
    let scratch = g.add(Vertex { op: Op::Scratch, inputs: vec![], name: "scratch".into(), ignore_cache: false });
    let one = run(&mut g, scratch, &[], "one");
    let two = run(&mut g, one, &[], "two");
    let (worker, cache) = (Arc::new(Toy::default()), Arc::new(CorruptingCache::default()));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let solve_with_events = || {
        let events = Arc::new(Events::default());
        let (graph, opts) = (Arc::new(g.clone()), SolveOptions::with_jobs(2));
        rt.block_on(solve(graph, &[two], worker.clone(), cache.clone(), events.clone(), opts)).unwrap();
        events.0.lock().unwrap().clone()
    };
    let warnings = |events: &[Event]| -> Vec<(VertexId, String)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Warning { vertex, message } => Some((*vertex, message.clone())),
                _ => None,
            })
            .collect()
    };
    assert!(warnings(&solve_with_events()).is_empty());
    cache.corrupt_all();
    let events = solve_with_events();
    let warned = warnings(&events);
    // One warning per unreadable entry: a step is looked up under each of its keys (see solve.rs), so it may have
    // several.
    let mut vertices = warned.iter().map(|(v, _)| *v).collect::<Vec<_>>();
    vertices.dedup();
    assert_eq!(vertices, [one, two], "{events:?}");
    for (_, message) in &warned {
        assert!(message.starts_with("cache index: entry sha256:"), "{message}");
        assert!(
            message.ends_with(": expected value at line 1 column 1; the step runs again and replaces it"),
            "{message}"
        );
    }
    let runs = worker.runs.lock().unwrap().clone();
    assert_eq!((runs["one"], runs["two"]), (2, 2), "both steps ran again");
    let events = solve_with_events();
    assert!(warnings(&events).is_empty(), "the reruns replaced the entries: {events:?}");
    assert!(events.iter().filter(|e| matches!(e, Event::Cached { .. })).count() == 2, "{events:?}");
}

#[test]
fn failure_reports_the_step_and_stops_dependents() {
    let mut g = Graph::default();
    let scratch = g.add(Vertex { op: Op::Scratch, inputs: vec![], name: "scratch".into(), ignore_cache: false });
    let bad = run(&mut g, scratch, &[], "fail");
    let after = run(&mut g, bad, &[], "after");
    let worker = Arc::new(Toy::default());
    let err = solve_now(&g, after, worker.clone(), Arc::new(MemCache::default()), 2).unwrap_err();
    assert_eq!(err.vertex, bad);
    assert!(matches!(err.source.as_ref(), WorkerError::ExitCode { code: 3, .. }));
    assert_eq!(worker.runs.lock().unwrap().get("after"), None);
}

/// A worker's typed failure reaches the caller whole: its kind for the solver and the builder to match on, the
/// worker's own error by downcast, and its message in the step's Failed event.
#[test]
fn a_typed_failure_keeps_its_kind_and_the_workers_error() {
    let mut g = Graph::default();
    let scratch = g.add(Vertex { op: Op::Scratch, inputs: vec![], name: "scratch".into(), ignore_cache: false });
    let bad = run(&mut g, scratch, &[], "unmountable");
    let (_, events, err) = solve_to_failure(&g, bad, 2);
    assert_eq!(err.source.kind(), FailureKind::Mount);
    assert_eq!(err.source.downcast_ref::<ToyError>(), Some(&ToyError("cannot mount \"unmountable\"".into())));
    assert_eq!(err.to_string(), "unmountable: cannot mount \"unmountable\"");
    let failed = events.0.lock().unwrap().iter().find_map(|e| match e {
        Event::Failed { error, .. } => Some(error.clone()),
        _ => None,
    });
    assert_eq!(failed.as_deref(), Some("cannot mount \"unmountable\""));
}

/// Solves `target` with a fresh toy worker and an event recorder, expecting a failure within a third of the toy's
/// patience (a canceled step waits out its whole patience if the cancel never reaches it).
fn solve_to_failure(g: &Graph, target: VertexId, jobs: usize) -> (Arc<Toy>, Arc<Events>, SolveError) {
    let worker = Arc::new(Toy::default());
    let events = Arc::new(Events::default());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let t0 = std::time::Instant::now();
    let err = rt
        .block_on(solve(
            Arc::new(g.clone()),
            &[target],
            worker.clone(),
            Arc::new(MemCache::default()),
            events.clone(),
            SolveOptions::with_jobs(jobs),
        ))
        .unwrap_err();
    assert!(t0.elapsed() < PATIENCE / 3, "the solve returned promptly, took {:?}", t0.elapsed());
    (worker, events, err)
}

/// Regression (issue 11, item 4): when a step failed, steps running beside it ran to completion (15 s where
/// BuildKit stops in 1.3 s) and printed after the error. They are canceled, the error is the failing step's, and
/// the solve returns only after they ended. The barrier makes sure the sibling is running when the failure comes.
#[test]
fn a_failure_cancels_running_siblings_and_reports_the_failing_step() {
    let mut g = Graph::default();
    let scratch = g.add(Vertex { op: Op::Scratch, inputs: vec![], name: "scratch".into(), ignore_cache: false });
    let slow = run(&mut g, scratch, &[], "meet:x:2:block");
    let bad = run(&mut g, scratch, &[], "meet:x:2:fail");
    let fin = run(&mut g, slow, &[bad], "final");
    let (worker, events, err) = solve_to_failure(&g, fin, 4);
    assert_eq!(worker.lonely.load(Ordering::SeqCst), 0, "both steps were running when one failed");
    assert!(worker.cancel_calls.load(Ordering::SeqCst) >= 1, "the worker was told to cancel");
    assert_eq!(worker.saw_cancel.load(Ordering::SeqCst), 1, "the running sibling ended because it was canceled");
    assert_eq!(err.vertex, bad, "the error is the failing step's, not the canceled one's");
    assert!(!err.canceled);
    assert_eq!(worker.running.load(Ordering::SeqCst), 0, "nothing is left running when solve returns");
    let events = events.0.lock().unwrap();
    let failed = events.iter().position(|e| matches!(e, Event::Failed { vertex, .. } if *vertex == bad));
    let canceled = events.iter().position(|e| matches!(e, Event::Canceled { vertex, .. } if *vertex == slow));
    assert!(failed.is_some() && canceled.is_some(), "{events:?}");
    assert!(failed < canceled, "ERROR is reported before CANCELED");
    let error = events.iter().find_map(|e| match e {
        Event::Failed { error, .. } => Some(error.clone()),
        _ => None,
    });
    assert_eq!(error, Some(err.source.to_string()), "the event carries the step's error, for rawjson");
    assert!(!events.iter().any(|e| matches!(e, Event::Started { vertex, .. } if *vertex == fin)));
}

/// Every running sibling is canceled, not only the first.
#[test]
fn a_failure_cancels_every_running_step() {
    let mut g = Graph::default();
    let scratch = g.add(Vertex { op: Op::Scratch, inputs: vec![], name: "scratch".into(), ignore_cache: false });
    let one = run(&mut g, scratch, &[], "meet:y:3:block");
    let two = run(&mut g, scratch, &[], "meet:y:3:block:two");
    let bad = run(&mut g, scratch, &[], "meet:y:3:fail");
    let fin = run(&mut g, one, &[two, bad], "final");
    let (worker, events, err) = solve_to_failure(&g, fin, 3);
    assert_eq!(err.vertex, bad);
    assert_eq!(worker.saw_cancel.load(Ordering::SeqCst), 2, "both running siblings saw the cancel");
    assert_eq!(worker.running.load(Ordering::SeqCst), 0);
    let events = events.0.lock().unwrap();
    for v in [one, two] {
        assert!(events.iter().any(|e| matches!(e, Event::Canceled { vertex, .. } if *vertex == v)), "{events:?}");
    }
}

/// A chain of steps after one whose layers differ on every run (file times): two cold solves in two stores give
/// the same key for every step, because a step's inputs are named by their definition keys, not by their layers.
#[test]
fn keys_are_the_same_in_two_cold_solves_whatever_the_layers() {
    let (g, t) = chain(false);
    // One worker for both, so its `stamp` makes other layers the second time (two machines, two clocks).
    let worker = Arc::new(Toy::default());
    let solve_cold = || {
        let out = solve_now(&g, t, worker.clone(), Arc::new(MemCache::default()), 2).unwrap();
        out.into_iter().map(|s| s.map(|s| (s.key, s.output))).collect::<Vec<_>>()
    };
    let (one, two) = (solve_cold(), solve_cold());
    let keys = |o: &[Option<(Digest, Output)>]| o.iter().map(|s| s.as_ref().map(|s| s.0.clone())).collect::<Vec<_>>();
    assert_eq!(keys(&one), keys(&two), "the same keys");
    assert_ne!(one[t].as_ref().unwrap().1, two[t].as_ref().unwrap().1, "from other layers");
}

/// scratch → `stamp` → `after` → `last`, with the cache ignored for `stamp` when `rerun`.
fn chain(rerun: bool) -> (Graph, VertexId) {
    let mut g = Graph::default();
    let scratch = g.add(Vertex { op: Op::Scratch, inputs: vec![], name: "scratch".into(), ignore_cache: false });
    let stamp = run(&mut g, scratch, &[], "stamp");
    g.vertices[stamp].ignore_cache = rerun;
    let after = run(&mut g, stamp, &[], "after");
    let last = run(&mut g, after, &[], "last");
    (g, last)
}

/// `--no-cache-filter`: a step re-run with the cache ignored made new layers, so the steps after it (whose
/// definition keys did not change) must run again on them, and a plain build afterwards hits the newest results.
#[test]
fn steps_after_a_rerun_step_that_made_new_layers_run_again() {
    let (cache, worker) = (Arc::new(MemCache::default()), Arc::new(Toy::default()));
    let (g, t) = chain(false);
    let first = solve_now(&g, t, worker.clone(), cache.clone(), 2).unwrap();
    let (g2, _) = chain(true);
    let rerun = solve_now(&g2, t, worker.clone(), cache.clone(), 2).unwrap();
    let runs = worker.runs.lock().unwrap().clone();
    assert_eq!((runs["stamp"], runs["after"], runs["last"]), (2, 2, 2), "everything after the re-run step ran");
    assert_ne!(first[t].as_ref().unwrap().output, rerun[t].as_ref().unwrap().output);
    let again = solve_now(&g, t, worker.clone(), cache.clone(), 2).unwrap();
    assert!(again.iter().flatten().skip(1).all(|s| s.cached), "a plain build after it is all cached");
    assert_eq!(again[t].as_ref().unwrap().output, rerun[t].as_ref().unwrap().output, "with the newest results");
}

/// Regression (the flaky `an_intermediate_stage_is_a_hit_only_with_mode_max`): two stages begin with the same step
/// (one key), which makes other layers in each (a directory it creates gets the current second, and the two ran a
/// second apart). A cache keeps one result per key, so when the steps after each were keyed by the layers they
/// were built on, one stage's steps could never hit again. Keyed by their inputs' keys, both do.
#[test]
fn steps_after_two_runs_of_one_key_that_made_other_layers_all_hit() {
    let mut g = Graph::default();
    let scratch = g.add(Vertex { op: Op::Scratch, inputs: vec![], name: "scratch".into(), ignore_cache: false });
    // Both runs of the one key meet at a barrier, so both missed the cache and ran (neither found the other's result).
    let stamp = "meet:stamp:2:stamp";
    let (one, two) = (run(&mut g, scratch, &[], stamp), run(&mut g, scratch, &[], stamp));
    let (x, y) = (run(&mut g, one, &[], "x"), run(&mut g, two, &[], "y"));
    let fin = run(&mut g, x, &[y], "final");
    let (cache, worker) = (Arc::new(MemCache::default()), Arc::new(Toy::default()));
    let first = solve_now(&g, fin, worker.clone(), cache.clone(), 4).unwrap();
    let layers = |v: VertexId| first[v].as_ref().unwrap().output.clone();
    assert_ne!(layers(one), layers(two), "the two runs of the one key made other layers");
    let again = solve_now(&g, fin, Arc::new(Toy::default()), cache, 4).unwrap();
    assert!(again.iter().flatten().skip(1).all(|s| s.cached), "every step hits");
}
