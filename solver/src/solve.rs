//! The scheduler: runs the vertices a target needs, each at most once, independent ones concurrently.
//!
//! Every vertex becomes one shared future that first awaits its inputs, then computes its cache key, then either
//! takes the cached result or runs the op on the blocking pool. Sharing the futures is what deduplicates work (a
//! stage used by two others runs once); awaiting inputs concurrently is what runs independent stages in parallel.
//! The first failure cancels the rest, as BuildKit does: nothing new starts, the worker stops the steps that are
//! running (they are reported `CANCELED`), and the solve returns only once they have ended, so no output of a
//! sibling step appears after the error and the process does not wait for them to run to completion.
//!
//! A step is keyed by its definition: the op and its inputs' keys, as BuildKit keys an exec, never by the layers an
//! input produced (they carry file times, so no two machines would agree). Only after a step that ran with the cache
//! ignored (`--no-cache-filter`) is an input named by its layers, since its definition key may name an older
//! result. A result is stored under every name this build knows it by (definition, content of what it read,
//! layers of its inputs) so that a later build finds it whichever way it names its inputs.

use crate::explain::{InputRef, MissReason, StepInputs, explain, step_identity};
use crate::graph::{FileAction, Graph, Op, VertexId};
use crate::key::cache_key;
use crate::worker::{CacheStore, Event, Output, Progress, SolverFailure, Worker, WorkerError};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared, try_join_all};
use rbuild_types::Digest;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};

mod lookup;
use lookup::{
    FOUND_UNDER_ANOTHER_KEY, RUNS_AGAIN, explain_sources, key_op, layers_digest, lookup, reads_part_of_a_step,
    selection_based_key, warn_unreadable,
};

/// How long a failed solve waits for the steps it cancelled to end.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// A vertex's result.
#[derive(Debug, Clone)]
pub struct Solved {
    /// The definition key: the op and its inputs' definition keys (and the content of context files it reads), the
    /// same on every machine. What a remote cache exports and what `--explain-cache` compares.
    pub key: Digest,
    pub output: Output,
    /// True when the result came from the cache and nothing ran.
    pub cached: bool,
    /// When the result was made (unix seconds); for sources, when they were resolved.
    pub created: i64,
    /// The second key of a step that reads part of another step's output (keyed by the content of what it reads),
    /// when it was computed: a remote cache exports it too, so another machine whose stage produced other layers
    /// but the same files still hits.
    pub selection_key: Option<Digest>,
    /// The result named by what it holds: its layers for a step, its key for a source.
    pub content_name: Digest,
    /// This step, or one it was built on, ran with the cache ignored in this build (`--no-cache-filter`): its
    /// definition key may name an older result, so what follows names it by [`Solved::content_name`].
    pub rebuilt: bool,
    /// What went into the key, under the step's portable identity ([`SolveOptions::source_scope`]): exported with
    /// a remote cache so that another machine's `--explain-cache` can say what differs. Only kept when asked for.
    pub record: Option<(String, Arc<StepInputs>)>,
}

impl Solved {
    /// How the steps after this one name it in their keys (see [`Solved::rebuilt`]).
    pub fn name(&self) -> &Digest {
        if self.rebuilt { &self.content_name } else { &self.key }
    }
}

/// A step that failed, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{name}: {source}")]
pub struct SolveError {
    pub vertex: VertexId,
    pub name: String,
    #[source]
    pub source: Arc<WorkerError>,
    /// The step did not fail by itself: it was stopped because another one failed.
    pub canceled: bool,
}

#[derive(Debug, Clone)]
pub struct SolveOptions {
    /// How many RUN steps may run at once.
    pub jobs: usize,
    /// Where steps that run record what went into their keys (e.g. the Dockerfile's path and target), so a later
    /// miss can be explained; `None` records nothing.
    pub record_scope: Option<String>,
    /// Emit [`Event::Explained`] for every step that runs.
    pub explain: bool,
    /// The scope of steps as remote cache sources know them, free of host paths (the Dockerfile's name and the
    /// target): with it, every step's [`Solved::record`] is kept, and a step that misses is explained against the
    /// sources' records too.
    pub source_scope: Option<String>,
}

impl SolveOptions {
    /// Default options with `jobs` RUN steps at once.
    pub fn with_jobs(jobs: usize) -> Self {
        SolveOptions { jobs, ..Self::default() }
    }
}

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions {
            // RUN steps often wait on the network, disk or `sleep` rather than a core (BuildKit sets no limit at
            // all), so twice the cores, and at least 4, keeps a small machine busy without thrashing a large one.
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()).saturating_mul(2).max(4),
            record_scope: None,
            explain: false,
            source_scope: None,
        }
    }
}

type VertexFuture = Shared<BoxFuture<'static, Result<Solved, SolveError>>>;

struct Ctx {
    graph: Arc<Graph>,
    worker: Arc<dyn Worker>,
    cache: Arc<dyn CacheStore>,
    progress: Arc<dyn Progress>,
    run_slots: Semaphore,
    /// Per vertex: its depth in its chain of steps (see [`crate::explain::step_identity`]).
    depth: Vec<usize>,
    record_scope: Option<String>,
    explain: bool,
    source_scope: Option<String>,
    /// Set by the first step that fails; every step that ends in an error after it was canceled.
    failed: AtomicBool,
    /// The first failure: what the solve reports, whichever future happens to end first.
    first_error: std::sync::Mutex<Option<SolveError>>,
    /// Steps on the blocking pool right now, and a wake-up for when that count drops.
    in_flight: AtomicUsize,
    landed: Notify,
}

/// Counts a step as running on the blocking pool until dropped (which happens on that thread, whatever the fate
/// of the future that started it).
struct InFlight(Arc<Ctx>);

impl InFlight {
    fn new(ctx: &Arc<Ctx>) -> InFlight {
        ctx.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(ctx.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.landed.notify_waiters();
    }
}

/// Waits until no step is running on the blocking pool, or `limit` passed.
async fn wait_for_running_steps(ctx: &Ctx, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let landed = ctx.landed.notified();
        if ctx.in_flight.load(Ordering::SeqCst) == 0 {
            return;
        }
        if tokio::time::timeout_at(deadline, landed).await.is_err() {
            return;
        }
    }
}

/// Solves `targets`; returns the result of every vertex they needed (indexed by vertex id; `None` where unneeded).
pub async fn solve(
    graph: Arc<Graph>,
    targets: &[VertexId],
    worker: Arc<dyn Worker>,
    cache: Arc<dyn CacheStore>,
    progress: Arc<dyn Progress>,
    opts: SolveOptions,
) -> Result<Vec<Option<Solved>>, SolveError> {
    let ctx = Arc::new(Ctx {
        graph: graph.clone(),
        worker,
        cache,
        progress,
        run_slots: Semaphore::new(opts.jobs.max(1)),
        depth: chain_depths(&graph),
        record_scope: opts.record_scope,
        explain: opts.explain,
        source_scope: opts.source_scope,
        failed: AtomicBool::new(false),
        first_error: std::sync::Mutex::new(None),
        in_flight: AtomicUsize::new(0),
        landed: Notify::new(),
    });
    let mut futures: Vec<Option<VertexFuture>> = vec![None; graph.vertices.len()];
    for v in graph.needed(targets) {
        let inputs: Vec<VertexFuture> = graph.vertices[v].inputs.iter().filter_map(|&i| futures[i].clone()).collect();
        let ctx = ctx.clone();
        futures[v] = Some(run_vertex(ctx, v, inputs).boxed().shared());
    }
    if let Err(e) = try_join_all(targets.iter().filter_map(|&t| futures[t].clone())).await {
        // The failing step has cancelled the others; let them end (killed) before the error is reported.
        wait_for_running_steps(&ctx, CANCEL_WAIT).await;
        let first = ctx.first_error.lock().unwrap_or_else(|p| p.into_inner()).take();
        return Err(first.unwrap_or(e));
    }
    Ok(futures.into_iter().map(|f| f.and_then(|f| f.peek().and_then(|r| r.as_ref().ok().cloned()))).collect())
}

/// Depth of each vertex in its chain of steps: sources are 0, a step is one more than the input it builds on.
fn chain_depths(graph: &Graph) -> Vec<usize> {
    let mut depth = vec![0; graph.vertices.len()];
    for (v, vertex) in graph.vertices.iter().enumerate() {
        let parent = match &vertex.op {
            Op::Exec(_) => vertex.inputs.first(),
            Op::File(f) => f.dest.and_then(|d| vertex.inputs.get(d)),
            _ => continue,
        };
        depth[v] = parent.and_then(|&p| depth.get(p).copied()).unwrap_or(0) + 1;
    }
    depth
}

/// What went into a step's key, with the per-file digests of its context copies.
async fn step_inputs(
    ctx: &Arc<Ctx>,
    v: VertexId,
    keyed_op: &Op,
    key: &Digest,
    inputs: &[Solved],
    content: &[Digest],
) -> Result<StepInputs, WorkerError> {
    let vertex = &ctx.graph.vertices[v];
    let mut files = Vec::new();
    if let Op::File(file) = &vertex.op {
        for action in &file.actions {
            if let FileAction::Copy(copy) = action
                && let Some(input @ Output::Dir(_)) = inputs.get(copy.src).map(|s| &s.output)
            {
                let (worker, input, copy) = (ctx.worker.clone(), input.clone(), copy.clone());
                let list = blocking(move || worker.content_files(&input, &copy)).await?;
                files.push(list);
            }
        }
    }
    Ok(StepInputs {
        key: key.clone(),
        name: vertex.name.clone(),
        op: serde_json::to_value(keyed_op).unwrap_or_default(),
        inputs: vertex
            .inputs
            .iter()
            .zip(inputs)
            .map(|(&i, s)| InputRef { name: ctx.graph.vertices[i].name.clone(), key: s.key.clone() })
            .collect(),
        content: content.to_vec(),
        files,
    })
}

/// Runs one vertex; the first failure of the whole solve is recorded and cancels the other steps.
async fn run_vertex(ctx: Arc<Ctx>, v: VertexId, inputs: Vec<VertexFuture>) -> Result<Solved, SolveError> {
    let result = run_vertex_inner(ctx.clone(), v, inputs).await;
    if let Err(e) = &result
        && !e.canceled
        && ctx.first_failure(e)
    {
        let worker = ctx.worker.clone();
        tokio::task::spawn_blocking(move || worker.cancel());
    }
    result
}

impl Ctx {
    /// Records `e` if it is the solve's first failure; true if it was.
    fn first_failure(&self, e: &SolveError) -> bool {
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if self.failed.swap(true, Ordering::SeqCst) {
            return false;
        }
        *first = Some(e.clone());
        true
    }
}

async fn run_vertex_inner(ctx: Arc<Ctx>, v: VertexId, inputs: Vec<VertexFuture>) -> Result<Solved, SolveError> {
    let inputs = try_join_all(inputs).await?;
    let vertex = &ctx.graph.vertices[v];
    let fail =
        |e: WorkerError| SolveError { vertex: v, name: vertex.name.clone(), source: Arc::new(e), canceled: false };
    // An input is named by its definition key, which any machine computes alike (BuildKit keys an exec by its
    // inputs' keys), except one that ran with the cache ignored in this build (`--no-cache-filter`), or was built
    // on one: its definition no longer says what it holds, so it is named by its content (its layers).
    let names = |name: fn(&Solved) -> &Digest| inputs.iter().map(|s| name(s).clone()).collect::<Vec<Digest>>();
    let definition_names = names(|s| &s.key);
    let primary_names = names(Solved::name);
    let content_names = names(|s| &s.content_name);
    // An input that was found (or made) by the content of what a step read from it is known by that key too.
    let selection_names: Vec<Digest> =
        inputs.iter().map(|s| s.selection_key.clone().unwrap_or_else(|| s.name().clone())).collect();
    let input_outputs: Vec<Output> = inputs.iter().map(|s| s.output.clone()).collect();
    let rebuilt =
        inputs.iter().any(|s| s.rebuilt) || (vertex.ignore_cache && matches!(vertex.op, Op::Exec(_) | Op::File(_)));

    // Content digests of the files each COPY selects from a directory input (the build context).
    let mut content = Vec::new();
    if let Op::File(file) = &vertex.op {
        for action in &file.actions {
            if let FileAction::Copy(copy) = action
                && let Some(input @ Output::Dir(_)) = input_outputs.get(copy.src)
            {
                let (worker, input, copy) = (ctx.worker.clone(), input.clone(), copy.clone());
                content.push(blocking(move || worker.content_digest(&input, &copy)).await.map_err(fail)?);
            }
        }
    }
    let keyed_op = key_op(&vertex.op, &input_outputs);
    // The portable key: what a remote cache exports and what explanations compare.
    let key = cache_key(&keyed_op, &definition_names, &content);
    // The keys this build may trust, in the order they are looked up; the result is stored under all of them (and
    // under `key`), so a later build finds it whichever way it names its inputs.
    let mut lookups: Vec<Digest> = Vec::new();
    for names in [&primary_names, &selection_names, &content_names] {
        let k = cache_key(&keyed_op, names, &content);
        if !lookups.contains(&k) {
            lookups.push(k);
        }
    }
    let content_name = |output: &Output| match vertex.op {
        Op::Exec(_) | Op::File(_) => layers_digest(output),
        _ => key.clone(),
    };

    match &vertex.op {
        Op::Scratch | Op::Context { .. } | Op::Image { .. } | Op::Http { .. } | Op::Git { .. } => {
            let (worker, op) = (ctx.worker.clone(), vertex.op.clone());
            let output = blocking(move || worker.source(&op)).await.map_err(fail)?;
            let content_name = content_name(&output);
            Ok(Solved {
                key,
                output,
                cached: false,
                created: now_unix(),
                selection_key: None,
                content_name,
                rebuilt,
                record: None,
            })
        }
        Op::Exec(_) | Op::File(_) => {
            // A step that reads part of another stage (COPY --from, RUN --mount=from=) has a second key, made from
            // the content of exactly what it reads: asked for when the first misses, so a stage rebuilt to other
            // layers but the same selected files still hits (BuildKit's content-based cache).
            let step = step_identity(ctx.graph.stage(v), ctx.depth.get(v).copied().unwrap_or(0));
            let identity = ctx.record_scope.as_ref().map(|scope| format!("{scope}\n{step}"));
            let source_identity = ctx.source_scope.as_ref().map(|scope| format!("{scope}\n{step}"));
            let mut selection_key = None;
            let mut unreadable = Vec::new();
            if !vertex.ignore_cache {
                let mut hit =
                    lookups.iter().find_map(|k| Some((k.clone(), lookup(ctx.cache.as_ref(), k, &mut unreadable)?)));
                if hit.is_none() && reads_part_of_a_step(&ctx.graph, vertex) {
                    let k = selection_based_key(&ctx, vertex, &keyed_op, &primary_names, &inputs, &content)
                        .await
                        .map_err(fail)?;
                    hit = lookup(ctx.cache.as_ref(), &k, &mut unreadable).map(|r| (k.clone(), r));
                    selection_key = Some(k);
                }
                if let Some((found, record)) = hit {
                    // Every name this build knows the step by gives the same result from now on.
                    let mut names = std::iter::once(&key).chain(&lookups).collect::<Vec<_>>();
                    names.dedup();
                    for k in names.into_iter().filter(|k| **k != found) {
                        let _ = ctx.cache.put(k, &record.output);
                    }
                    ctx.progress.event(Event::Cached { vertex: v, name: vertex.name.clone() });
                    warn_unreadable(ctx.progress.as_ref(), v, unreadable, FOUND_UNDER_ANOTHER_KEY);
                    let content_name = content_name(&record.output);
                    // The record of its last run, if that made this very key (kept only for an export).
                    let kept = match (&source_identity, &identity) {
                        (Some(portable), Some(id)) => ctx
                            .cache
                            .previous_step(id)
                            .filter(|r| r.key == key)
                            .map(|r| (portable.clone(), Arc::new(r))),
                        _ => None,
                    };
                    return Ok(Solved {
                        key,
                        output: record.output,
                        cached: true,
                        created: record.created,
                        selection_key,
                        content_name,
                        rebuilt,
                        record: kept,
                    });
                }
            }
            let step_record = match &identity {
                Some(_) => Some(step_inputs(&ctx, v, &keyed_op, &key, &inputs, &content).await.map_err(fail)?),
                None => None,
            };
            let reasons = ctx.explain.then(|| {
                let previous = identity.as_deref().and_then(|id| ctx.cache.previous_step(id));
                let mut reasons = match (&previous, &step_record) {
                    _ if vertex.ignore_cache => vec![MissReason::NoCacheRequested],
                    (Some(prev), Some(now)) => explain(prev, now),
                    _ => vec![MissReason::NoRecord],
                };
                if let (false, Some(portable), Some(now)) = (vertex.ignore_cache, &source_identity, &step_record) {
                    reasons.extend(explain_sources(ctx.cache.source_records(portable), now));
                }
                reasons
            });
            let is_exec = matches!(vertex.op, Op::Exec(_));
            let _slot = if is_exec { ctx.run_slots.acquire().await.ok() } else { None };
            ctx.progress.event(Event::Started { vertex: v, name: vertex.name.clone() });
            warn_unreadable(ctx.progress.as_ref(), v, unreadable, RUNS_AGAIN);
            if let Some(reasons) = reasons {
                ctx.progress.event(Event::Explained { vertex: v, reasons });
            }
            let started = Instant::now();
            let c = ctx.clone();
            let running = InFlight::new(&ctx);
            let result = blocking(move || {
                let _running = running;
                let vertex = &c.graph.vertices[v];
                let error = |e: WorkerError, canceled| SolveError {
                    vertex: v,
                    name: vertex.name.clone(),
                    source: Arc::new(e),
                    canceled,
                };
                if c.failed.load(Ordering::SeqCst) {
                    c.progress.event(Event::Canceled {
                        vertex: v,
                        name: vertex.name.clone(),
                        elapsed: started.elapsed(),
                    });
                    return Ok(Err(error(SolverFailure::Canceled.into(), true)));
                }
                let result = match &vertex.op {
                    Op::Exec(exec) => {
                        let progress = c.progress.clone();
                        let mut log = |line: &str| progress.event(Event::Log { vertex: v, line: line.to_string() });
                        c.worker.exec(exec, &input_outputs, &mut log)
                    }
                    Op::File(file) => c.worker.file(file, &input_outputs),
                    _ => unreachable!("sources are handled above"),
                };
                // Reported here, on the step's own thread, so the order is right even after the solve gave up on
                // this step's future: the first failure, then the steps it canceled.
                let e = match result {
                    Ok(output) => return Ok(Ok(output)),
                    Err(e) => e,
                };
                let (name, elapsed) = (vertex.name.clone(), started.elapsed());
                if c.failed.load(Ordering::SeqCst) {
                    c.progress.event(Event::Canceled { vertex: v, name, elapsed });
                    return Ok(Err(error(e, true)));
                }
                let e = error(e, false);
                if c.first_failure(&e) {
                    c.progress.event(Event::Failed { vertex: v, name, elapsed, error: e.source.to_string() });
                    c.worker.cancel();
                } else {
                    c.progress.event(Event::Canceled { vertex: v, name, elapsed });
                }
                Ok(Err(e))
            })
            .await;
            // The step's own failure was handled on its thread; only a panic is left to report here.
            let result = match result {
                Ok(r) => r,
                Err(e) => Err(fail(e)),
            };
            match result {
                Ok(output) => {
                    let (name, elapsed) = (vertex.name.clone(), started.elapsed());
                    let made = ctx.cache.put(&key, &output).map_err(|e| fail(SolverFailure::RecordResult(e).into()))?;
                    for k in lookups.iter().chain(&selection_key).filter(|k| **k != key) {
                        ctx.cache.put(k, &output).map_err(|e| fail(SolverFailure::RecordResult(e).into()))?;
                    }
                    if let (Some(id), Some(inputs)) = (&identity, &step_record) {
                        ctx.cache.record_step(id, inputs).map_err(|e| fail(SolverFailure::RecordInputs(e).into()))?;
                    }
                    ctx.progress.event(Event::Done { vertex: v, name, elapsed });
                    let content_name = content_name(&output);
                    let record = source_identity.zip(step_record).map(|(id, r)| (id, Arc::new(r)));
                    Ok(Solved {
                        key,
                        output,
                        cached: false,
                        created: made.created,
                        selection_key,
                        content_name,
                        rebuilt,
                        record,
                    })
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Runs blocking work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WorkerError> + Send + 'static,
) -> Result<T, WorkerError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(SolverFailure::Panicked(e).into()),
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{CopyAction, FileOp};

    fn copy(excludes: &[&str]) -> Op {
        Op::File(FileOp {
            dest: Some(0),
            actions: vec![FileAction::Copy(CopyAction {
                src: 1,
                sources: vec!["app/".into()],
                dest: "/app/".into(),
                chown: None,
                chmod: None,
                extract_archives: false,
                keep_owner: false,
                excludes: excludes.iter().map(|s| s.to_string()).collect(),
                dockerignore: excludes.iter().map(|s| s.to_string()).collect(),
                parents: false,
            })],
        })
    }

    #[test]
    fn exclude_patterns_key_only_copies_that_are_not_hashed_by_content() {
        let key = |op: &Op, src: Output| {
            let inputs = [Output::RootFs(vec![]), src];
            cache_key(&key_op(op, &inputs), &[], &[])
        };
        let dir = || Output::Dir("/ctx".into());
        let stage = || Output::RootFs(vec![Digest::of(b"layer")]);
        // From the context, the content digest already says exactly which files were selected.
        assert_eq!(key(&copy(&["*.md"]), dir()), key(&copy(&["*.md", "nothing"]), dir()));
        // From a stage, nothing else does.
        assert_ne!(key(&copy(&["*.md"]), stage()), key(&copy(&["*.md", "nothing"]), stage()));
    }
}
