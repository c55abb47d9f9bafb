//! Multi-platform builds: one plan per target platform, merged into one graph that is solved once.
//!
//! Merging is what makes a `FROM --platform=$BUILDPLATFORM` stage run once for all targets, and what puts every
//! platform's steps under one `--jobs` budget: vertices with the same op and the same (merged) inputs are one
//! vertex, exactly as they would have one cache key. Steps that differ per platform (another base image, a RUN
//! that the executor emulates, a `$TARGETARCH` in a command) stay apart and are shown with their platform, as
//! BuildKit shows `[linux/arm64 2/3] RUN ...`.

use rbuild_frontend::BuildPlan;
use rbuild_frontend::instructions::Location;
use rbuild_solver::{Graph, Vertex, VertexId};
use rbuild_types::oci::Platform;
use std::collections::{BTreeMap, HashMap};

/// The plans of every platform as one graph.
pub(crate) struct Merged {
    pub graph: Graph,
    /// Each plan's target vertex in `graph`.
    pub targets: Vec<VertexId>,
    /// For each plan, its vertex ids mapped to `graph`'s.
    pub maps: Vec<Vec<VertexId>>,
    pub locations: BTreeMap<VertexId, Location>,
}

/// Merges the plans' graphs (taken out of them), deduplicating equal vertices. With one plan its graph is kept as
/// it is.
pub(crate) fn merge(plans: &mut [BuildPlan], platforms: &[Platform]) -> Merged {
    if let [plan] = plans {
        let graph = std::mem::take(&mut plan.graph);
        let map = (0..graph.vertices.len()).collect();
        return Merged { graph, targets: vec![plan.target], maps: vec![map], locations: plan.locations.clone() };
    }
    let mut graph = Graph::default();
    let mut seen: HashMap<Vec<u8>, VertexId> = HashMap::new();
    let mut users: Vec<Vec<usize>> = Vec::new();
    let mut maps = Vec::with_capacity(plans.len());
    let mut targets = Vec::with_capacity(plans.len());
    let mut locations = BTreeMap::new();
    for (i, plan) in plans.iter_mut().enumerate() {
        let own = std::mem::take(&mut plan.graph);
        let mut map = Vec::with_capacity(own.vertices.len());
        for (old, vertex) in own.vertices.into_iter().enumerate() {
            let inputs: Vec<VertexId> = vertex.inputs.iter().map(|&v| map[v]).collect();
            // The identity of a vertex: what its cache key is made of (names are not).
            let identity = serde_json::to_vec(&(&vertex.op, &inputs, vertex.ignore_cache)).unwrap_or_default();
            let id = match seen.get(&identity) {
                Some(&id) => id,
                None => {
                    let id = graph.add(Vertex { inputs, ..vertex });
                    seen.insert(identity, id);
                    users.push(Vec::new());
                    id
                }
            };
            if !users[id].contains(&i) {
                users[id].push(i);
            }
            if let Some(at) = plan.locations.get(&old) {
                locations.entry(id).or_insert_with(|| at.clone());
            }
            if let Some(stage) = own.stages.get(&old) {
                graph.stages.entry(id).or_insert_with(|| stage.clone());
            }
            map.push(id);
        }
        targets.push(map[plan.target]);
        maps.push(map);
    }
    for (vertex, users) in graph.vertices.iter_mut().zip(&users) {
        if let [only] = users.as_slice() {
            vertex.name = with_platform(&vertex.name, &platforms[*only]);
        }
    }
    // A step of one platform is a different step from the same line's for another (its identity for
    // --explain-cache); shared steps keep their stage's.
    for (id, users) in users.iter().enumerate() {
        if let ([only], Some(stage)) = (users.as_slice(), graph.stages.get_mut(&id)) {
            let p = rbuild_frontend::platform::format(&rbuild_frontend::platform::normalize(&platforms[*only]));
            *stage = format!("{p} {stage}");
        }
    }
    Merged { graph, targets, maps, locations }
}

/// `[stage 2/3] RUN x` shown for one platform: `[linux/arm64 stage 2/3] RUN x`.
fn with_platform(name: &str, platform: &Platform) -> String {
    let p = rbuild_frontend::platform::format(&rbuild_frontend::platform::normalize(platform));
    match name.strip_prefix('[') {
        Some(rest) => format!("[{p} {rest}"),
        None => format!("[{p}] {name}"),
    }
}

/// Each plan's results, by its own vertex ids.
pub(crate) fn split<T: Clone>(merged: &[Option<T>], map: &[VertexId]) -> Vec<Option<T>> {
    map.iter().map(|&v| merged.get(v).cloned().flatten()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbuild_solver::Op;

    fn plan(steps: &[&str]) -> BuildPlan {
        let mut graph = Graph::default();
        let mut last =
            graph.add(Vertex { op: Op::Scratch, inputs: vec![], name: "scratch".into(), ignore_cache: false });
        for s in steps {
            let exec = rbuild_solver::ExecOp {
                args: vec![s.to_string()],
                env: vec![],
                cwd: "/".into(),
                user: String::new(),
                network: rbuild_solver::Network::None,
                mounts: vec![],
                settings: vec![],
                platform: None,
                hostname: String::new(),
                insecure: false,
            };
            last = graph.add(Vertex {
                op: Op::Exec(exec),
                inputs: vec![last],
                name: format!("[s] {s}"),
                ignore_cache: false,
            });
        }
        BuildPlan {
            graph,
            target: last,
            config: Default::default(),
            history: vec![],
            warnings: vec![],
            checks: vec![],
            locations: BTreeMap::new(),
        }
    }

    #[test]
    fn equal_steps_are_one_vertex_and_the_rest_carry_their_platform() {
        let arm = rbuild_frontend::platform::parse("linux/arm64/v8").unwrap();
        let amd = rbuild_frontend::platform::parse("linux/amd64").unwrap();
        let mut plans = vec![plan(&["build", "amd"]), plan(&["build", "arm"])];
        let m = merge(&mut plans, &[amd, arm]);
        let names: Vec<&str> = m.graph.vertices.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["scratch", "[s] build", "[linux/amd64 s] amd", "[linux/arm64 s] arm"]);
        assert_eq!(m.targets, [2, 3]);
        assert_eq!(m.maps[1], [0, 1, 3]);
        let solved = vec![Some('a'), Some('b'), Some('c'), Some('d')];
        assert_eq!(split(&solved, &m.maps[1]), [Some('a'), Some('b'), Some('d')]);
    }
}
