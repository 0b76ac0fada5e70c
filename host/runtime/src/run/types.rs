//! The run pipeline's types, apart from the pipeline (`mod.rs`) so that what seals and replays
//! a run (`recording.rs`, `replaying.rs`) can name them without reaching into it: a loaded
//! [`Tool`], where a run's outside effects come from ([`RunEnv`]), and what executing it once
//! produced ([`Execution`]).

use crate::bindings::GuildToolPre;
use crate::cancel::CancellationToken;
use crate::gpu::GpuReplay;
use crate::guard::Stop;
use crate::logs::LogLine;
use crate::record::Recorder;
use crate::state::HostState;
use guild_replay::Digest;
use guild_vocab::{Outcome, ToolInfo};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A component ready to run: compiled, linked, and described.
pub struct Tool {
    /// blake3 of the component's bytes: the tool's identity.
    pub(super) digest: Digest,
    /// What `describe` said.
    pub(super) info: ToolInfo,
    /// Compiled and linked, ready to instantiate per run.
    pub(super) pre: GuildToolPre<HostState>,
    /// Size of the component, bytes.
    pub(super) size_bytes: u64,
    /// The output schema the tool declares, compiled: every output is checked against it.
    pub(super) output_schema: Option<jsonschema::Validator>,
}

impl Tool {
    /// The blake3 digest of the component's bytes.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// What the tool says about itself.
    pub fn info(&self) -> &ToolInfo {
        &self.info
    }

    /// Size of the component file.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
}

/// Where a run's outside effects come from.
pub(crate) struct RunEnv {
    /// The seed of all its randomness.
    pub(crate) seed: [u8; 32],
    /// Its tape, when recorded or replayed.
    pub(crate) recorder: Option<Recorder>,
    /// In a replay: the HTTP response bodies the tape names.
    pub(crate) replay_bodies: Option<HashMap<Digest, bytes::Bytes>>,
    /// Values of the secrets the policy grants (none in a replay: it never sends).
    pub(crate) secrets: Vec<crate::egress::Secret>,
    /// In a replay: the GPU outputs the tape names, and whether to recompute them.
    pub(crate) replay_gpu: Option<GpuReplay>,
    /// Stops the run early.
    pub(crate) cancel: CancellationToken,
    /// Where a limit raised inside a host call stops the run (the recorder's, when recording).
    pub(crate) stop: Arc<Stop>,
}

/// What executing a tool once produced, before it becomes a report or a replay verdict.
pub(crate) struct Execution {
    pub(crate) outcome: Outcome,
    pub(crate) fuel_used_units: u64,
    pub(crate) memory_bytes_peak: u64,
    pub(crate) wall_time: Duration,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) egress_denials: Vec<String>,
    pub(crate) egress_refusals: u32,
    pub(crate) egress_requests: u32,
    pub(crate) egress_upstream_failures: u32,
}
