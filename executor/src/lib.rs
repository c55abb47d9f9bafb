//! Runs build steps: one process in a runc container on an overlayfs snapshot, or a file copy into one.
//!
//! The executor never decides anything about caching; it is handed a root filesystem (layer directories) and an
//! op, and returns the directory of changes. Container processes are started by `runc` as a child process, never
//! by cloning the (multithreaded) rbuild process itself.

pub mod cancel;
pub mod copy;
pub mod emulation;
pub mod mounts;
pub mod overlay;
pub mod reap;
pub mod remote;
pub mod runtime;
pub mod snapshotter;
pub mod user;
pub mod userns;
pub mod worker;
