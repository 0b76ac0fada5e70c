//! guild-replay: everything an auditor needs to check a Guild run, and nothing that runs one.
//! This crate never depends on wasmtime, so an auditor's code stays small.
//!
//! It owns content addressing ([`Digest`], [`BlobStore`], [`DirStore`]), Merkle trees of
//! directories ([`tree`]), the hash-chained [`Tape`] of effects, the bundle format and its
//! verification ([`Bundle`], [`BundleWriter`]), ed25519 signing of bundles one by one or in
//! batches through a Merkle tree ([`HostKey`], [`merkle`]), and the
//! normalised `.tar.zst` archive ([`archive`]).

pub mod archive;
mod behind;
mod bundle;
pub mod canonical;
pub mod cost;
mod digest;
pub mod file;
mod hex;
pub mod merkle;
mod pack;
mod sign;
mod store;
mod tape;
pub mod tree;

pub use behind::PENDING_BYTES_MAX_DEFAULT;
pub use bundle::{
    Action, BlobRef, Bundle, BundleWriter, FORMAT, Manifest, OutputTree, Principal, RunResult, Sealed, ToolRef,
    Unsigned, VerifyError,
};
pub use digest::{Digest, DigestParseError};
pub use sign::{
    ALGORITHM, BundleSignature, HostKey, Inclusion, KeyError, PublicKey, SIGNATURE_DOCUMENT_BYTES_MAX,
    SIGNATURE_FORMAT, SignatureError,
};
pub use store::{BLOB_BYTES_MAX, BlobStore, DirStore, MemoryStore, StoreError};
pub use tape::{
    Effect, Event, HttpRequestRecord, HttpResponseRecord, TAPE_EVENTS_MAX, Tape, TapeError, TensorRecord, genesis,
};
