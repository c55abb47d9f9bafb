//! Layers, image documents and registries.
//!
//! This crate turns snapshot directories into layer tars (and back), writes image configs and manifests, exports
//! OCI and docker archives, and speaks the registry protocol. It owns every byte format that leaves rbuild, so other
//! tools (skopeo, umoci, docker load, registries) are its judges.

pub mod auth;
pub mod export;
pub mod index;
pub mod layer;
pub mod local;
pub mod registry;
pub mod remote_cache;
pub mod rootfs;
