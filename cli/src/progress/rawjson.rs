//! `--progress rawjson`: every event as one line of JSON in the shape of BuildKit's `client.SolveStatus`, with
//! field names, `omitempty` and base64 log data as Go's `encoding/json` writes them, so that tools reading
//! `docker buildx build --progress rawjson` read rbuild's (checked against buildx 0.29 / BuildKit 0.25's output).
//!
//! A vertex's `digest` is not an LLB digest (rbuild has no LLB): it is a digest of the step's position, name and
//! inputs' digests, stable within a build and unique per step, which is all a reader can rely on. `inputs` name
//! only steps (sources, which report no progress, are left out). As in BuildKit, every step is first written
//! without `started`, when the build is planned. Warnings are `warnings`. Build-level lines before the steps end
//! (pulling a base image) are vertexes of their own, from start to end; those after ("writing image",
//! "naming to") are `statuses` of an `exporting to image` vertex, as BuildKit writes them. Byte counts (`total`)
//! are not reported.

use super::Renderer;
use base64::Engine as _;
use rbuild_solver::{Event, Graph, Op, Progress, VertexId};
use rbuild_types::Digest;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Mutex;

pub struct RawJsonProgress {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    digests: BTreeMap<VertexId, Digest>,
    inputs: BTreeMap<VertexId, Vec<Digest>>,
    started: BTreeMap<VertexId, String>,
    messages: usize,
    /// The build-level work that [`Renderer::status`] started and [`Renderer::status_end`] ends.
    working: Vec<Vertex>,
    /// The solve is over: build-level lines are statuses of an "exporting to image" vertex, as in BuildKit.
    solved: bool,
    /// That vertex's digest and start, once it was written.
    export: Option<(Digest, String)>,
}

/// BuildKit's `client.SolveStatus`.
#[derive(Serialize, Default)]
pub struct SolveStatus {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vertexes: Vec<Vertex>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<VertexStatus>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<VertexLog>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<VertexWarning>,
}

/// BuildKit's `client.VertexWarning`, as far as rbuild's warnings go: a level (1, as BuildKit's Dockerfile checks)
/// and the text, base64 as Go writes `[]byte`. rbuild's warnings carry their `file:line` in the text.
#[derive(Serialize)]
pub struct VertexWarning {
    pub level: u8,
    pub short: String,
}

/// BuildKit's `client.VertexStatus`: a named piece of a vertex's work ("naming to X" under "exporting to image").
#[derive(Serialize)]
pub struct VertexStatus {
    pub id: String,
    pub vertex: String,
    pub current: i64,
    pub timestamp: String,
    pub started: String,
    pub completed: String,
}

/// BuildKit's `client.Vertex`.
#[derive(Serialize, Default, Clone)]
pub struct Vertex {
    pub digest: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// BuildKit's `client.VertexLog`: `data` is the raw bytes, base64 as Go writes `[]byte`; stream 1 is stdout.
#[derive(Serialize)]
pub struct VertexLog {
    pub vertex: String,
    pub stream: u8,
    pub data: String,
    pub timestamp: String,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

impl RawJsonProgress {
    pub fn new() -> Self {
        RawJsonProgress { state: Mutex::new(State::default()) }
    }

    fn emit(status: &SolveStatus) {
        if let Ok(line) = serde_json::to_string(status) {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
    }

    fn log(state: &State, vertex: VertexId, text: &str) -> SolveStatus {
        let data = base64::engine::general_purpose::STANDARD.encode(format!("{text}\n"));
        let log = VertexLog { vertex: state.digest(vertex).to_string(), stream: 1, data, timestamp: now() };
        SolveStatus { logs: vec![log], ..SolveStatus::default() }
    }
}

impl State {
    fn digest(&self, vertex: VertexId) -> Digest {
        self.digests.get(&vertex).cloned().unwrap_or_else(|| Digest::of(format!("rbuild step {vertex}").as_bytes()))
    }

    fn vertex(&self, vertex: VertexId, name: String) -> Vertex {
        Vertex {
            digest: self.digest(vertex).to_string(),
            inputs: self.inputs.get(&vertex).map(|i| i.iter().map(|d| d.to_string()).collect()).unwrap_or_default(),
            name,
            ..Vertex::default()
        }
    }

    fn ended(&mut self, vertex: VertexId, name: String, error: String) -> SolveStatus {
        let completed = now();
        let started = self.started.remove(&vertex).unwrap_or_else(|| completed.clone());
        let v = Vertex { started: Some(started), completed: Some(completed), error, ..self.vertex(vertex, name) };
        SolveStatus { vertexes: vec![v], ..SolveStatus::default() }
    }
}

impl Progress for RawJsonProgress {
    fn event(&self, event: Event) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let status = match event {
            Event::Started { vertex, name } => {
                let started = now();
                state.started.insert(vertex, started.clone());
                let v = Vertex { started: Some(started), ..state.vertex(vertex, name) };
                SolveStatus { vertexes: vec![v], ..SolveStatus::default() }
            }
            Event::Cached { vertex, name } => {
                let at = now();
                let v = Vertex {
                    started: Some(at.clone()),
                    completed: Some(at),
                    cached: true,
                    ..state.vertex(vertex, name)
                };
                SolveStatus { vertexes: vec![v], ..SolveStatus::default() }
            }
            Event::Done { vertex, name, .. } => state.ended(vertex, name, String::new()),
            Event::Failed { vertex, name, error, .. } => state.ended(vertex, name, error),
            // BuildKit's words for a vertex stopped because another one failed.
            Event::Canceled { vertex, name, .. } => state.ended(vertex, name, "context canceled".into()),
            Event::Log { vertex, line } => Self::log(&state, vertex, &line),
            Event::Warning { message, .. } => {
                let short = base64::engine::general_purpose::STANDARD.encode(message);
                SolveStatus { warnings: vec![VertexWarning { level: 1, short }], ..SolveStatus::default() }
            }
            Event::Explained { vertex, reasons } => {
                let text: Vec<String> = reasons.iter().map(|r| format!("cache miss: {r}")).collect();
                Self::log(&state, vertex, &text.join("\n"))
            }
        };
        Self::emit(&status);
    }
}

impl Renderer for RawJsonProgress {}

impl rbuild_builder::Reporter for RawJsonProgress {
    fn plan(&self, graph: &Graph, targets: &[VertexId]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut pending = Vec::new();
        let is_step = |v: VertexId| matches!(graph.vertices[v].op, Op::Exec(_) | Op::File(_));
        for v in graph.needed(targets) {
            let vertex = &graph.vertices[v];
            // Sources report no progress: naming them as inputs would point at vertexes no line describes.
            let inputs: Vec<Digest> = vertex.inputs.iter().filter(|&&i| is_step(i)).map(|&i| state.digest(i)).collect();
            let mut text = format!("rbuild step\n{v}\n{}\n", vertex.name);
            for i in &inputs {
                text.push_str(&format!("{i}\n"));
            }
            state.digests.insert(v, Digest::of(text.as_bytes()));
            state.inputs.insert(v, inputs);
            if is_step(v) {
                pending.push(state.vertex(v, vertex.name.clone()));
            }
        }
        // Like BuildKit, every step first appears once without a start: a reader knows the whole build up front.
        if !pending.is_empty() {
            Self::emit(&SolveStatus { vertexes: pending, ..SolveStatus::default() });
        }
    }

    fn finish(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).solved = true;
    }

    fn message(&self, text: &str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let at = now();
        if state.solved {
            let (digest, _) = state.export.get_or_insert_with(|| {
                let digest = Digest::of(b"rbuild exporting to image");
                let v = Vertex {
                    digest: digest.to_string(),
                    name: "exporting to image".into(),
                    started: Some(at.clone()),
                    ..Vertex::default()
                };
                Self::emit(&SolveStatus { vertexes: vec![v], ..SolveStatus::default() });
                (digest, at.clone())
            });
            let status = VertexStatus {
                id: text.to_string(),
                vertex: digest.to_string(),
                current: 0,
                timestamp: at.clone(),
                started: at.clone(),
                completed: at,
            };
            Self::emit(&SolveStatus { statuses: vec![status], ..SolveStatus::default() });
            return;
        }
        state.messages += 1;
        let v = Vertex {
            digest: Digest::of(format!("rbuild message\n{}\n{text}", state.messages).as_bytes()).to_string(),
            name: text.to_string(),
            started: Some(at.clone()),
            completed: Some(at),
            ..Vertex::default()
        };
        Self::emit(&SolveStatus { vertexes: vec![v], ..SolveStatus::default() });
    }

    /// A vertex that starts now and completes at [`Renderer::status_end`] (or at the next status).
    fn status(&self, text: &str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.messages += 1;
        let v = Vertex {
            digest: Digest::of(format!("rbuild message\n{}\n{text}", state.messages).as_bytes()).to_string(),
            name: text.to_string(),
            started: Some(now()),
            ..Vertex::default()
        };
        Self::emit(&SolveStatus { vertexes: vec![v.clone()], ..SolveStatus::default() });
        state.working.push(v);
    }

    fn status_end(&self, text: &str) {
        let working = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let at = state.working.iter().position(|v| v.name == text);
            at.map(|i| state.working.remove(i))
        };
        if let Some(v) = working {
            let v = Vertex { completed: Some(now()), ..v };
            Self::emit(&SolveStatus { vertexes: vec![v], ..SolveStatus::default() });
        }
    }

    fn warning(&self, text: &str) {
        let short = base64::engine::general_purpose::STANDARD.encode(text);
        let w = VertexWarning { level: 1, short };
        Self::emit(&SolveStatus { warnings: vec![w], ..SolveStatus::default() });
    }
}

impl Drop for RawJsonProgress {
    /// The export vertex ends with the build.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some((digest, started)) = state.export.take() {
            let v = Vertex {
                digest: digest.to_string(),
                name: "exporting to image".into(),
                started: Some(started),
                completed: Some(now()),
                ..Vertex::default()
            };
            Self::emit(&SolveStatus { vertexes: vec![v], ..SolveStatus::default() });
        }
    }
}
