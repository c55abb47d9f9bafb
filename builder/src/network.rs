//! The build's network mode applied to the plan, and the `network.host` entitlement that host networking needs.

use crate::request::{Entitlements, NetworkMode};
use rbuild_frontend::{BuildPlan, ConvertError, ErrorKind};
use rbuild_solver::{Network, Op};

pub(crate) const NETWORK_HOST_HINT: &str =
    "pass --allow network.host to rbuild build to let steps use the host's network";

/// Gives every RUN step that did not choose a network the build's (`--network`), and refuses host networking
/// that the `network.host` entitlement does not allow, naming the first step that asks for it.
pub fn apply_network(plan: &mut BuildPlan, mode: NetworkMode, allowed: &Entitlements) -> Result<(), ConvertError> {
    let build_default = match mode {
        NetworkMode::Default => Network::Default,
        NetworkMode::None => Network::None,
        NetworkMode::Host => Network::Host,
    };
    for (id, vertex) in plan.graph.vertices.iter_mut().enumerate() {
        let Op::Exec(exec) = &mut vertex.op else { continue };
        if exec.network == Network::Default {
            exec.network = build_default;
        } else if exec.network == Network::Host && !allowed.network_host {
            return Err(ConvertError::new(
                ErrorKind::Entitlement,
                "RUN --network=host needs the network.host entitlement",
            )
            .hint(NETWORK_HOST_HINT)
            .located(plan.locations.get(&id).cloned()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbuild_frontend::instructions::Location;
    use rbuild_solver::{ExecOp, Graph, Vertex};
    use std::collections::BTreeMap;

    fn plan(networks: &[Network]) -> BuildPlan {
        let mut graph = Graph::default();
        let mut locations = BTreeMap::new();
        let base = graph.add(Vertex { op: Op::Scratch, inputs: vec![], name: "scratch".into(), ignore_cache: false });
        for (i, network) in networks.iter().enumerate() {
            let exec = ExecOp {
                args: vec!["true".into()],
                env: vec![],
                cwd: "/".into(),
                user: String::new(),
                network: *network,
                mounts: vec![],
                settings: Vec::new(),
                platform: None,
                hostname: String::new(),
                insecure: false,
            };
            let v = graph.add(Vertex {
                op: Op::Exec(exec),
                inputs: vec![base],
                name: format!("RUN {i}"),
                ignore_cache: false,
            });
            locations.insert(v, Location { start_line: i + 2, end_line: i + 2 });
        }
        BuildPlan {
            graph,
            target: base,
            config: Default::default(),
            history: vec![],
            warnings: vec![],
            checks: vec![],
            locations,
        }
    }

    fn networks(plan: &BuildPlan) -> Vec<Network> {
        plan.graph
            .vertices
            .iter()
            .filter_map(|v| match &v.op {
                Op::Exec(e) => Some(e.network),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn network_mode_fills_in_steps_that_did_not_choose() {
        let granted = Entitlements { network_host: true, ..Entitlements::default() };
        for (mode, want) in [
            (NetworkMode::Default, Network::Default),
            (NetworkMode::None, Network::None),
            (NetworkMode::Host, Network::Host),
        ] {
            let mut p = plan(&[Network::Default, Network::None, Network::Host]);
            apply_network(&mut p, mode, &granted).expect("allowed");
            assert_eq!(networks(&p), [want, Network::None, Network::Host], "{mode:?}");
        }
    }

    #[test]
    fn run_network_host_without_the_entitlement_names_its_line() {
        let mut p = plan(&[Network::Default, Network::Host]);
        let err = apply_network(&mut p, NetworkMode::Default, &Entitlements::default()).expect_err("refused");
        assert_eq!(err.message, "RUN --network=host needs the network.host entitlement");
        assert_eq!(err.location, Some(Location { start_line: 3, end_line: 3 }));
        assert!(err.hint.as_deref().is_some_and(|h| h.contains("--allow network.host")), "{err:?}");
    }
}
