//! Rootless start-up: an ordinary user's rbuild becomes root of a user namespace of its own (see
//! [`rbuild_executor::userns`]) before anything else runs, and marks the process as rootless (overlay metadata in
//! `user.overlay.*`).

use rbuild_executor::userns::{self, Mapping, Plan};
use std::path::Path;
use std::process::ExitCode;

/// What this process is, as far as privileges go.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Real root in the initial user namespace.
    Root,
    /// Root of a user namespace: rbuild's own (with how it was mapped) or one it was started in (a container).
    UserNamespace(Option<Mapping>),
}

impl Mode {
    pub fn is_rootless(&self) -> bool {
        matches!(self, Mode::UserNamespace(_))
    }
}

/// Enters rbuild's own user namespace when run by an ordinary user (an error is reported and returned as the
/// exit code); everything else goes on as `Mode`. `needs_namespace` is false for commands that touch no store
/// (login, debug). With `lazy`, the wait for the id maps is left to the first work that needs them
/// ([`rbuild_types::ids::wait`]); a build reads its Dockerfile and the store meanwhile. `store` is where the store
/// would be for this user: containers a killed rootless build left running there are stopped before the build
/// starts (see [`userns::kill_orphaned_containers`]).
pub fn start(needs_namespace: bool, lazy: bool, store: Option<&Path>) -> Result<Mode, ExitCode> {
    if userns::effective_uid() == 0 {
        if userns::in_user_namespace() {
            rbuild_cache::overlay_xattr::set_user_namespace(true);
            return Ok(Mode::UserNamespace(None));
        }
        return Ok(Mode::Root);
    }
    if !needs_namespace {
        return Ok(Mode::UserNamespace(None));
    }
    if let Some(store) = store {
        for id in userns::kill_orphaned_containers(&store.join("runc")) {
            eprintln!("warning: stopped a container left running by a killed rbuild: {id}");
        }
    }
    let plan = Plan::for_current_user();
    if !plan.has_ranges() {
        eprintln!(
            "warning: {} has no subordinate ids, so the build can only make files owned by root (0:0); to build \
             images with other owners, {}",
            plan.user,
            userns::subid_hint(&plan.user)
        );
    }
    let hint = (!plan.has_ranges()).then(|| format!("\nhint: {}", userns::subid_hint(&plan.user)));
    let failed =
        move |e: userns::UsernsError| format!("{:#}{}", anyhow::Error::from(e), hint.as_deref().unwrap_or_default());
    let pending = userns::enter(&plan).map_err(|e| {
        eprintln!("error: {}", failed(e));
        ExitCode::from(1)
    })?;
    rbuild_cache::overlay_xattr::set_user_namespace(true);
    let mapping = pending.mapping().clone();
    rbuild_types::ids::defer(Box::new(move || pending.finish().map_err(failed)));
    if !lazy {
        rbuild_types::ids::wait();
    }
    Ok(Mode::UserNamespace(Some(mapping)))
}
