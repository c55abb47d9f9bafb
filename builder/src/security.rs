//! The `security.insecure` entitlement: `RUN --security=insecure` runs privileged only when `--allow` granted it
//! (the executor's `runtime::privileged` says what privileged means); otherwise the build stops at that step's line
//! before anything runs.

use crate::request::Entitlements;
use rbuild_frontend::{BuildPlan, ConvertError, ErrorKind};
use rbuild_solver::Op;

/// Refuses `RUN --security=insecure` that the `security.insecure` entitlement does not allow, naming the first
/// step that asks for it.
pub fn check_security(plan: &BuildPlan, allowed: &Entitlements) -> Result<(), ConvertError> {
    if allowed.security_insecure {
        return Ok(());
    }
    let insecure = plan.graph.vertices.iter().position(|v| matches!(&v.op, Op::Exec(e) if e.insecure));
    match insecure {
        None => Ok(()),
        Some(id) => Err(ConvertError::new(
            ErrorKind::Entitlement,
            "RUN --security=insecure needs the security.insecure entitlement",
        )
        .hint("pass --allow security.insecure to run this step privileged")
        .located(plan.locations.get(&id).cloned())),
    }
}
