//! How a step is found in the cache: the op as its key sees it, the other names a step is looked up by (the
//! content of what it selects from another step, its inputs' layers), lookups that report unreadable entries, and
//! why remote sources missed.

use super::{Ctx, Solved, blocking};
use crate::explain::{MissReason, StepInputs, explain};
use crate::graph::{FileAction, Graph, Op, VertexId};
use crate::key::cache_key;
use crate::worker::{CacheRecord, CacheStore, Event, Output, Progress, WorkerError};
use rbuild_types::Digest;
use std::sync::Arc;

/// The op as its key sees it. A copy from a directory is keyed by the content digest of exactly what it selects
/// (paths included), so its exclude patterns are left out: a `.dockerignore` edit that selects the same files must
/// not invalidate the step, and one that selects different files already changes the content digest.
pub(super) fn key_op<'a>(op: &'a Op, inputs: &[Output]) -> std::borrow::Cow<'a, Op> {
    let by_content = |c: &crate::graph::CopyAction| matches!(inputs.get(c.src), Some(Output::Dir(_)));
    match op {
        Op::File(file)
            if file.actions.iter().any(
                |a| matches!(a, FileAction::Copy(c) if by_content(c) && !(c.excludes.is_empty() && c.dockerignore.is_empty())),
            ) =>
        {
            let mut file = file.clone();
            for action in &mut file.actions {
                if let FileAction::Copy(c) = action
                    && by_content(c)
                {
                    c.excludes.clear();
                    c.dockerignore.clear();
                }
            }
            std::borrow::Cow::Owned(Op::File(file))
        }
        other => std::borrow::Cow::Borrowed(other),
    }
}

/// Why the remote sources did not have a step: which had a record of it from another build and what differed, or
/// that none had it.
pub(super) fn explain_sources(records: Option<Vec<(String, StepInputs)>>, now: &StepInputs) -> Vec<MissReason> {
    let Some(records) = records else { return Vec::new() };
    if records.is_empty() {
        return vec![MissReason::NotInSources];
    }
    records
        .into_iter()
        .map(|(source, prev)| {
            let reasons = if prev.key == now.key { vec![MissReason::ResultRemoved] } else { explain(&prev, now) };
            MissReason::Source { source, reasons }
        })
        .collect()
}

/// The digest that names a step's output by content: its layers.
pub(super) fn layers_digest(output: &Output) -> Digest {
    let layers = serde_json::to_vec(output.layers()).unwrap_or_default();
    Digest::of(&[b"layers:".as_slice(), &layers].concat())
}

/// A cache lookup in which an entry that cannot be read is a miss, its error kept in `unreadable` (as text, with
/// its causes) for the step to report: the step then runs and its result replaces the entry.
pub(super) fn lookup(cache: &dyn CacheStore, key: &Digest, unreadable: &mut Vec<String>) -> Option<CacheRecord> {
    cache.get(key).unwrap_or_else(|e| {
        unreadable.push(rbuild_types::error_chain(&e));
        None
    })
}

/// What happens to an unreadable entry of a step that still hit under another of its keys (which then rewrites it).
pub(super) const FOUND_UNDER_ANOTHER_KEY: &str =
    "the step's result was found under another of its keys, which replaces it";
/// What happens to an unreadable entry of a step that missed.
pub(super) const RUNS_AGAIN: &str = "the step runs again and replaces it";

/// Reports the cache entries [`lookup`] could not read for step `v`, and what becomes of them (`outcome`).
pub(super) fn warn_unreadable(progress: &dyn Progress, v: VertexId, unreadable: Vec<String>, outcome: &str) {
    for text in unreadable {
        progress.event(Event::Warning { vertex: v, message: format!("{text}; {outcome}") });
    }
}

/// Whether `vertex` reads only part of some step's output (a COPY source, a bind mount's source).
pub(super) fn reads_part_of_a_step(graph: &Graph, vertex: &crate::graph::Vertex) -> bool {
    selections_by_input(&vertex.op).iter().any(|(pos, _)| {
        !is_root_input(&vertex.op, *pos)
            && vertex.inputs.get(*pos).is_some_and(|&i| matches!(graph.vertices[i].op, Op::Exec(_) | Op::File(_)))
    })
}

/// The second key of a step that reads part of another step's output: that input is named by the content digest
/// of exactly what is read instead of by its layers.
pub(super) async fn selection_based_key(
    ctx: &Arc<Ctx>,
    vertex: &crate::graph::Vertex,
    keyed_op: &Op,
    input_keys: &[Digest],
    inputs: &[Solved],
    content: &[Digest],
) -> Result<Digest, WorkerError> {
    let selections = selections_by_input(&vertex.op);
    let mut keys = input_keys.to_vec();
    let mut content = content.to_vec();
    for (pos, &input) in vertex.inputs.iter().enumerate() {
        let read_in_part = !is_root_input(&vertex.op, pos)
            && matches!(ctx.graph.vertices[input].op, Op::Exec(_) | Op::File(_))
            && selections.iter().any(|(i, _)| *i == pos);
        if !read_in_part {
            continue;
        }
        keys[pos] = Digest::of(b"by-content");
        for (_, selection) in selections.iter().filter(|(i, _)| *i == pos) {
            let (worker, output, selection) = (ctx.worker.clone(), inputs[pos].output.clone(), selection.clone());
            content.push(blocking(move || worker.content_digest(&output, &selection)).await?);
        }
    }
    Ok(cache_key(keyed_op, &keys, &content))
}

/// Whether input `pos` is the root filesystem `op` builds on.
fn is_root_input(op: &Op, pos: usize) -> bool {
    match op {
        Op::Exec(_) => pos == 0,
        Op::File(f) => f.dest == Some(pos),
        _ => false,
    }
}

/// What `op` reads in part from each input, as copy selections: COPY sources, and the source of bind mounts.
fn selections_by_input(op: &Op) -> Vec<(usize, crate::graph::CopyAction)> {
    match op {
        Op::File(f) => f
            .actions
            .iter()
            .filter_map(|a| match a {
                FileAction::Copy(c) => Some((c.src, c.clone())),
                _ => None,
            })
            .collect(),
        Op::Exec(e) => e
            .mounts
            .iter()
            .filter_map(|m| match m {
                crate::graph::ExecMount::Bind { input, source, .. } if *input != 0 => Some((
                    *input,
                    crate::graph::CopyAction {
                        src: *input,
                        sources: vec![source.clone()],
                        dest: "/".into(),
                        chown: None,
                        chmod: None,
                        extract_archives: false,
                        keep_owner: true,
                        excludes: Vec::new(),
                        dockerignore: Vec::new(),
                        parents: false,
                    },
                )),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}
