//! The engine a run ran on, as its bundle records it: what must match for a replay to be trusted
//! bit for bit (the runtime computes it from wasmtime's compatibility hash and its settings).

use serde::{Deserialize, Serialize};
use std::fmt;

impl fmt::Display for EngineFingerprint {
    /// `wasmtime 48.0.8 (<id>)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.engine, self.id)
    }
}

/// The engine fingerprint: what must match for a compiled artifact to be reused and for a replay
/// to be trusted bit for bit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EngineFingerprint {
    /// `wasmtime <version>`, for people: a replay refusing another engine names both.
    pub engine: String,
    /// Hex blake3 over wasmtime's compatibility hash and Guild's determinism settings.
    pub id: String,
    /// The determinism settings, spelled out for people (a bundle from a version that spelled
    /// fewer reads with the rest at their defaults: its `id` still tells engines apart).
    #[serde(default)]
    pub determinism: Determinism,
}

/// Settings that make a run repeatable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Determinism {
    /// NaN results are canonicalised.
    pub nan_canonicalization: bool,
    /// Relaxed SIMD gives the same answer everywhere.
    pub relaxed_simd_deterministic: bool,
    /// Shared-memory threads are off.
    pub threads: bool,
    /// Execution is measured in fuel.
    pub fuel: bool,
    /// The fixed wasm stack.
    pub wasm_stack_bytes: u64,
}
