//! guild-replay: content addressing for Guild. Everything an auditor needs to check a run lives
//! here, and so this crate never depends on wasmtime: an auditor's code stays small.
//!
//! Today it owns [`Digest`], the blake3 content address that names components, inputs and blobs.
//! Bundles, the tape and verification build on it.

mod digest;

pub use digest::{Digest, DigestParseError};
