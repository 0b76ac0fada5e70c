//! guild-replay: everything an auditor needs to check a Guild run, and nothing that runs one.
//! This crate never depends on wasmtime, so an auditor's code stays small.
//!
//! It owns content addressing ([`Digest`], [`BlobStore`], [`DirStore`]), Merkle trees of
//! directories ([`tree`]), the hash-chained [`Tape`] of effects, the bundle format and its
//! verification ([`Bundle`], [`BundleWriter`]), ed25519 signing ([`HostKey`]), and the
//! normalised `.tar.zst` archive ([`archive`]).

pub mod archive;
mod behind;
mod bundle;
pub mod canonical;
mod digest;
mod file;
mod hex;
mod pack;
mod sign;
mod store;
mod tape;
pub mod tree;

pub use behind::PENDING_BYTES_MAX_DEFAULT;
pub use bundle::{
    Action, BlobRef, Bundle, BundleWriter, FORMAT, Manifest, OutputTree, Principal, RunResult, Sealed, ToolRef,
    VerifyError,
};
pub use digest::{Digest, DigestParseError};
pub use sign::{ALGORITHM, BundleSignature, HostKey, KeyError, PublicKey, SignatureError};
pub use store::{BLOB_BYTES_MAX, BlobStore, DirStore, MemoryStore, StoreError};
pub use tape::{
    Effect, Event, HttpRequestRecord, HttpResponseRecord, TAPE_EVENTS_MAX, Tape, TapeError, TensorRecord, genesis,
};
