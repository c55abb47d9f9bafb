//! The scheduler: runs the vertices a target needs, each at most once, independent ones concurrently.
//!
//! Every vertex becomes one shared future that first awaits its inputs, then computes its cache key, then either
//! takes the cached result or runs the op on the blocking pool. Sharing the futures is what deduplicates work (a
//! stage used by two others runs once); awaiting inputs concurrently is what runs independent stages in parallel.
//! The first failure drops the remaining futures, so nothing new starts after it.

use crate::Digest;
use crate::graph::{FileAction, Graph, Op, VertexId};
use crate::key::cache_key;
use crate::worker::{CacheStore, Event, Output, Progress, Worker, WorkerError};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared, try_join_all};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// A vertex's result.
#[derive(Debug, Clone)]
pub struct Solved {
    pub key: Digest,
    pub output: Output,
    /// True when the result came from the cache and nothing ran.
    pub cached: bool,
    /// When the result was made (unix seconds); for sources, when they were resolved.
    pub created: i64,
}

/// A step that failed, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{name}: {source}")]
pub struct SolveError {
    pub vertex: VertexId,
    pub name: String,
    #[source]
    pub source: Arc<WorkerError>,
}

#[derive(Debug, Clone)]
pub struct SolveOptions {
    /// How many RUN steps may run at once.
    pub jobs: usize,
}

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions { jobs: std::thread::available_parallelism().map_or(2, |n| n.get()).max(2) }
    }
}

type VertexFuture = Shared<BoxFuture<'static, Result<Solved, SolveError>>>;

struct Ctx {
    graph: Arc<Graph>,
    worker: Arc<dyn Worker>,
    cache: Arc<dyn CacheStore>,
    progress: Arc<dyn Progress>,
    run_slots: Semaphore,
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
    let ctx =
        Arc::new(Ctx { graph: graph.clone(), worker, cache, progress, run_slots: Semaphore::new(opts.jobs.max(1)) });
    let mut futures: Vec<Option<VertexFuture>> = vec![None; graph.vertices.len()];
    for v in graph.needed(targets) {
        let inputs: Vec<VertexFuture> = graph.vertices[v].inputs.iter().filter_map(|&i| futures[i].clone()).collect();
        let ctx = ctx.clone();
        futures[v] = Some(run_vertex(ctx, v, inputs).boxed().shared());
    }
    try_join_all(targets.iter().filter_map(|&t| futures[t].clone())).await?;
    Ok(futures.into_iter().map(|f| f.and_then(|f| f.peek().and_then(|r| r.as_ref().ok().cloned()))).collect())
}

async fn run_vertex(ctx: Arc<Ctx>, v: VertexId, inputs: Vec<VertexFuture>) -> Result<Solved, SolveError> {
    let inputs = try_join_all(inputs).await?;
    let vertex = &ctx.graph.vertices[v];
    let fail = |e: WorkerError| SolveError { vertex: v, name: vertex.name.clone(), source: Arc::new(e) };
    let input_keys: Vec<Digest> = inputs.iter().map(|s| s.key.clone()).collect();
    let input_outputs: Vec<Output> = inputs.iter().map(|s| s.output.clone()).collect();

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
    let key = cache_key(&vertex.op, &input_keys, &content);

    match &vertex.op {
        Op::Scratch | Op::Context { .. } | Op::Image { .. } => {
            let (worker, op) = (ctx.worker.clone(), vertex.op.clone());
            let output = blocking(move || worker.source(&op)).await.map_err(fail)?;
            Ok(Solved { key, output, cached: false, created: now_unix() })
        }
        Op::Exec(_) | Op::File(_) => {
            if !vertex.ignore_cache
                && let Some(record) = ctx.cache.get(&key)
            {
                ctx.progress.event(Event::Cached { vertex: v, name: vertex.name.clone() });
                return Ok(Solved { key, output: record.output, cached: true, created: record.created });
            }
            let is_exec = matches!(vertex.op, Op::Exec(_));
            let _slot = if is_exec { ctx.run_slots.acquire().await.ok() } else { None };
            ctx.progress.event(Event::Started { vertex: v, name: vertex.name.clone() });
            let started = Instant::now();
            let c = ctx.clone();
            let result = blocking(move || {
                let vertex = &c.graph.vertices[v];
                match &vertex.op {
                    Op::Exec(exec) => {
                        let progress = c.progress.clone();
                        let mut log = |line: &str| progress.event(Event::Log { vertex: v, line: line.to_string() });
                        c.worker.exec(exec, &input_outputs, &mut log)
                    }
                    Op::File(file) => c.worker.file(file, &input_outputs),
                    _ => unreachable!("sources are handled above"),
                }
            })
            .await;
            let elapsed = started.elapsed();
            let name = vertex.name.clone();
            match result {
                Ok(output) => {
                    let record = ctx
                        .cache
                        .put(&key, &output)
                        .map_err(|e| fail(WorkerError::failed("recording the result in the cache", e)))?;
                    ctx.progress.event(Event::Done { vertex: v, name, elapsed });
                    Ok(Solved { key, output, cached: false, created: record.created })
                }
                Err(e) => {
                    ctx.progress.event(Event::Failed { vertex: v, name, elapsed });
                    Err(fail(e))
                }
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
        Err(e) => Err(WorkerError::failed("a build step's worker thread panicked", e)),
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
