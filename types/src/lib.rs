//! The types several rbuild crates share, each with one public name: content digests ([`Digest`]), the OCI image
//! documents ([`oci`]) and `.dockerignore` patterns ([`patterns`]).
//!
//! They live here, below every other crate, because they are vocabulary rather than logic: a digest parsed from a
//! registry, computed from a layer and used as a cache key must be the same type everywhere, and the frontend (which
//! reads `.dockerignore`) and the cache (which applies it) must match patterns the same way.

pub mod csv;
pub mod digest;
pub mod error;
pub mod glob;
pub mod ids;
pub mod io;
pub mod oci;
pub mod path;
pub mod patterns;
pub mod units;

pub use digest::{Digest, DigestWriter, InvalidDigest};
pub use error::error_chain;
pub use io::IoError;
