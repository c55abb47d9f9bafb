//! The store: content-addressed blobs, snapshots, the cache index and image tags, plus context content hashing.
//!
//! Nothing here knows about Dockerfiles. Every write goes to `tmp/`, is fsynced and renamed into place, so a crash
//! at any point leaves the store readable, and several rbuild processes can share one store.

pub mod confined;
pub mod contenthash;
pub mod gc;
pub mod overlay_xattr;
pub mod remote;
pub mod store;

pub use store::{ImageRecord, LayerBlob, LockMode, Store, StoreError};
