//! Scheduler tests with a toy worker: each "RUN" appends its argument to a list of fake layers and counts how
//! often it ran, so deduplication, parallelism, cancellation and cache hits can be asserted exactly.
// A test fails by panicking on an unexpected value, so unwrap/expect are how tests assert.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rbuild_solver::*;
use rbuild_types::Digest;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Toy {
    runs: Mutex<HashMap<String, usize>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    /// Set by `cancel`: a running "wait" step ends (with an error) as soon as it sees it.
    cancelled: std::sync::atomic::AtomicBool,
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
        *self.runs.lock().unwrap().entry(cmd.clone()).or_default() += 1;
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        if let Some(ms) = cmd.strip_prefix("sleep ") {
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap()));
        }
        if let Some(ms) = cmd.strip_prefix("wait ") {
            // Like a container: runs until its time is up or it is killed.
            let until = std::time::Instant::now() + Duration::from_millis(ms.parse().unwrap());
            while std::time::Instant::now() < until {
                if self.cancelled.load(Ordering::SeqCst) {
                    self.running.fetch_sub(1, Ordering::SeqCst);
                    return Err(WorkerError::ExitCode { command: cmd, code: 137, tail: vec![] });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        if cmd == "fail" {
            return Err(WorkerError::ExitCode { command: cmd, code: 3, tail: vec![] });
        }
        let mut layers = inputs[0].layers().to_vec();
        for i in &inputs[1..] {
            layers.extend_from_slice(i.layers());
        }
        layers.push(Digest::of(cmd.as_bytes()));
        Ok(Output::RootFs(layers))
    }
    fn file(&self, _: &FileOp, inputs: &[Output]) -> Result<Output, WorkerError> {
        Ok(inputs[0].clone())
    }
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }
}

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
    fn get(&self, key: &Digest) -> Option<CacheRecord> {
        self.0.lock().unwrap().get(key).cloned()
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
    let a = run(&mut g, common, &[], "sleep 300");
    let b = run(&mut g, common, &[], "sleep 301");
    let c = run(&mut g, common, &[], "sleep 302");
    let fin = run(&mut g, a, &[b, c], "final");
    let unused = run(&mut g, scratch, &[], "unused");
    let _ = unused;
    let worker = Arc::new(Toy::default());
    let out = solve_now(&g, fin, worker.clone(), Arc::new(MemCache::default()), 4).unwrap();
    let runs = worker.runs.lock().unwrap().clone();
    assert_eq!(runs.get("common"), Some(&1), "a vertex needed three times runs once");
    assert_eq!(runs.get("unused"), None, "vertices the target does not need never run");
    assert!(worker.max_running.load(Ordering::SeqCst) >= 2, "independent steps overlap");
    assert_eq!(out[fin].as_ref().unwrap().output.layers().len(), 7);
}

#[test]
fn jobs_caps_concurrent_runs() {
    let mut g = Graph::default();
    let scratch = g.add(Vertex { op: Op::Scratch, inputs: vec![], name: "scratch".into(), ignore_cache: false });
    let a = run(&mut g, scratch, &[], "sleep 100");
    let b = run(&mut g, scratch, &[], "sleep 101");
    let c = run(&mut g, scratch, &[], "sleep 102");
    let fin = run(&mut g, a, &[b, c], "final");
    let worker = Arc::new(Toy::default());
    solve_now(&g, fin, worker.clone(), Arc::new(MemCache::default()), 1).unwrap();
    assert_eq!(worker.max_running.load(Ordering::SeqCst), 1);
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

/// Regression (issue 11, item 4): when a step failed, steps running beside it ran to completion (15 s where
/// BuildKit stops in 1.3 s) and printed after the error. They are canceled, the error is the failing step's, and
/// the solve returns only after they ended.
#[test]
fn a_failure_cancels_running_siblings_and_reports_the_failing_step() {
    let mut g = Graph::default();
    let scratch = g.add(Vertex { op: Op::Scratch, inputs: vec![], name: "scratch".into(), ignore_cache: false });
    let slow = run(&mut g, scratch, &[], "wait 20000");
    let bad = run(&mut g, scratch, &[], "fail");
    let fin = run(&mut g, slow, &[bad], "final");
    let worker = Arc::new(Toy::default());
    let events = Arc::new(Events::default());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let t0 = std::time::Instant::now();
    let err = rt
        .block_on(solve(
            Arc::new(g.clone()),
            &[fin],
            worker.clone(),
            Arc::new(MemCache::default()),
            events.clone(),
            SolveOptions::with_jobs(4),
        ))
        .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
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
