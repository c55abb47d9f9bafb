//! The image config a build produces: the plan's config, the target's layers, and one history entry per
//! instruction with the time its result was made.
//!
//! Times come from the cache: a step that was not re-run keeps the time it was first made, so an unchanged rebuild
//! produces the same config bytes (and image digest). Metadata-only instructions take the time of the step before
//! them. With `SOURCE_DATE_EPOCH`, every time this build writes is clamped to it.

use crate::convert::{BuildPlan, HistoryStep};
use rbuild_solver::Solved;
use rbuild_types::oci::{History, ImageConfig};

/// What BuildKit writes as the history comment of Dockerfile steps.
const COMMENT: &str = "buildkit.dockerfile.v0";

fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn parse_time(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp())
}

/// The final image config of `plan` given the solve results (indexed by vertex). `now` is used only when nothing
/// in the build has a time (a `FROM scratch` image with no layers); `epoch` is `SOURCE_DATE_EPOCH`.
pub fn image_config(plan: &BuildPlan, solved: &[Option<Solved>], now: i64, epoch: Option<i64>) -> ImageConfig {
    let result = |v: usize| solved.get(v).and_then(|s| s.as_ref());
    let clamp = |t: i64| epoch.map_or(t, |e| t.min(e));
    let mut config = plan.config.clone();
    let first_layer_time = plan.history.iter().find_map(|h| match h {
        HistoryStep::Layer { output, .. } => result(*output).map(|s| s.created),
        _ => None,
    });
    let mut running = config.created.as_deref().and_then(parse_time).or(first_layer_time).unwrap_or(now);
    let mut history = Vec::with_capacity(plan.history.len());
    for step in &plan.history {
        match step {
            HistoryStep::Base(h) => history.push(h.clone()),
            HistoryStep::Layer { created_by, input, output } => {
                let layers = |v: usize| result(v).map_or(0, |s| s.output.layers().len());
                running = result(*output).map(|s| clamp(s.created)).unwrap_or(running);
                history.push(History {
                    created: Some(rfc3339(running)),
                    created_by: Some(created_by.clone()),
                    comment: Some(COMMENT.into()),
                    empty_layer: layers(*output) == layers(*input),
                    ..Default::default()
                });
            }
            HistoryStep::Meta { created_by } => history.push(History {
                created: Some(rfc3339(clamp(running))),
                created_by: Some(created_by.clone()),
                comment: Some(COMMENT.into()),
                empty_layer: true,
                ..Default::default()
            }),
        }
    }
    config.created = history.last().and_then(|h| h.created.clone()).or_else(|| Some(rfc3339(clamp(running))));
    config.history = history;
    config.rootfs.diff_ids = result(plan.target).map(|s| s.output.layers().to_vec()).unwrap_or_default();
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbuild_solver::{Graph, Output};
    use rbuild_types::Digest;

    fn solved(layers: usize, created: i64) -> Option<Solved> {
        let layers = (0..layers).map(|i| Digest::of(&[i as u8])).collect();
        Some(Solved {
            key: Digest::of(b"k"),
            output: Output::RootFs(layers),
            cached: false,
            created,
            selection_key: None,
            content_name: Digest::of(b"c"),
            rebuilt: false,
            record: None,
        })
    }

    fn plan(history: Vec<HistoryStep>, target: usize) -> BuildPlan {
        BuildPlan {
            graph: Graph::default(),
            target,
            config: ImageConfig::default(),
            history,
            warnings: vec![],
            checks: vec![],
            locations: Default::default(),
        }
    }

    #[test]
    fn layers_times_and_empty_markers() {
        let p = plan(
            vec![
                HistoryStep::Meta { created_by: "ENV A=1".into() },
                HistoryStep::Layer { created_by: "RUN a".into(), input: 0, output: 1 },
                HistoryStep::Layer { created_by: "RUN b".into(), input: 1, output: 2 },
                HistoryStep::Meta { created_by: "CMD [\"sh\"]".into() },
            ],
            2,
        );
        let results = vec![solved(0, 0), solved(1, 1_000_000), solved(1, 2_000_000)];
        let c = image_config(&p, &results, 9_999_999, None);
        let h: Vec<(&str, &str, bool)> = c
            .history
            .iter()
            .map(|h| (h.created_by.as_deref().unwrap(), h.created.as_deref().unwrap(), h.empty_layer))
            .collect();
        assert_eq!(
            h,
            [
                ("ENV A=1", "1970-01-12T13:46:40Z", true),
                ("RUN a", "1970-01-12T13:46:40Z", false),
                ("RUN b", "1970-01-24T03:33:20Z", true),
                ("CMD [\"sh\"]", "1970-01-24T03:33:20Z", true),
            ]
        );
        assert_eq!(c.created.as_deref(), Some("1970-01-24T03:33:20Z"));
        assert_eq!(c.rootfs.diff_ids.len(), 1);
        let non_empty = c.history.iter().filter(|h| !h.empty_layer).count();
        assert_eq!(non_empty, c.rootfs.diff_ids.len(), "one non-empty history entry per layer");
    }

    #[test]
    fn source_date_epoch_clamps_what_this_build_writes() {
        let p = plan(vec![HistoryStep::Layer { created_by: "RUN a".into(), input: 0, output: 1 }], 1);
        let c = image_config(&p, &[solved(0, 0), solved(1, 2_000_000)], 3_000_000, Some(86_400));
        assert_eq!(c.history[0].created.as_deref(), Some("1970-01-02T00:00:00Z"));
        assert_eq!(c.created.as_deref(), Some("1970-01-02T00:00:00Z"));
    }
}
