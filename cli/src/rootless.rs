//! Rootless start-up: an ordinary user's rbuild re-executes itself as root of a user namespace (see
//! [`rbuild_executor::userns`]) before anything else runs, and the re-executed child marks the process as
//! rootless (overlay metadata in `user.overlay.*`).

use rbuild_executor::userns::{self, ChildInfo, Plan};
use std::path::Path;
use std::process::ExitCode;

/// What this process is, as far as privileges go.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Real root in the initial user namespace.
    Root,
    /// Root of a user namespace: rbuild's own (with how it was mapped) or one it was started in (a container).
    UserNamespace(Option<ChildInfo>),
}

impl Mode {
    pub fn is_rootless(&self) -> bool {
        matches!(self, Mode::UserNamespace(_))
    }
}

/// A non-root parent returns the exit code of its re-executed child;
/// everything else goes on as `Mode`. `needs_namespace` is false for commands that touch no store (login, debug).
/// `store` is where the store would be for this user: containers a killed rootless build left running there are
/// stopped before the build starts (see [`userns::kill_orphaned_containers`]).
pub fn start(needs_namespace: bool, store: Option<&Path>) -> Result<Mode, ExitCode> {
    if let Some(info) = ChildInfo::from_env() {
        if let Err(e) = userns::child_setup() {
            eprintln!("error: setting up rbuild's user namespace: {e}");
            return Err(ExitCode::from(1));
        }
        rbuild_cache::overlay_xattr::set_user_namespace(true);
        return Ok(Mode::UserNamespace(Some(info)));
    }
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
    match userns::reexec(&plan) {
        Ok(code) => Err(ExitCode::from(u8::try_from(code).unwrap_or(1))),
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::from(e));
            if !plan.has_ranges() {
                eprintln!("hint: {}", userns::subid_hint(&plan.user));
            }
            Err(ExitCode::from(1))
        }
    }
}
