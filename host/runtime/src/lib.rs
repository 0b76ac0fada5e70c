//! guild-runtime: the one run pipeline that `guild run`, the daemon and workers all call.
//!
//! It owns the wasmtime engine (determinism settings, pooling allocator, epoch ticker), the
//! compiled-component cache, and the enforcement of what a run is allowed: the [`Limits`] and
//! [`Grants`] it is given are `guild-vocab`'s types (re-exported here), held to here by the
//! store's limiter and call hook, the mounts' write quotas, the egress hook and the GPU quotas.
//! A run goes: resolve the tool by blake3 digest → intersect grants with what the tool asks for
//! → instantiate a fresh store from the cached `InstancePre` with fuel, an epoch deadline and
//! memory/table/instance limits → call `run`, recording every effect on the tape → classify
//! what happened into an [`Outcome`] → seal the bundle. [`Runtime::replay`] re-runs a bundle
//! from its tape; [`Runtime::check_candidate`] runs another revision of the tool on it (the
//! rollout gate, whose [`GateReport`] and [`GatePolicy`] are here too). It knows nothing of the HTTP API or Redis (its only HTTP is the guest's
//! egress).

mod adapt;
mod bindings;
mod blocking;
mod cache;
mod cancel;
mod candidate;
mod command;
pub mod egress;
mod engine;
mod error;
mod gate;
mod gpu;
mod gpu_buffer;
mod guard;
mod hermetic;
mod info;
mod logs;
mod outcome;
mod output;
mod quota;
mod record;
mod recording;
mod replaying;
mod run;
mod schema_check;
mod signer;
mod state;
pub mod trace;
mod virtual_time;

pub use cache::CacheSource;
pub use cancel::{CANCEL_CHECK_TICKS, CancellationToken};
pub use candidate::{CandidateCheck, CandidateVerdict, OUTPUT_DIFF_ENTRIES_MAX, OutputChange};
pub use command::{COMMAND_NAME_DEFAULT, CommandConfig, CommandOutput, Passthrough, StreamSink};
pub use engine::{
    CONCURRENT_RUNS_MAX_DEFAULT, EPOCH_TICK_MS, EngineSettings, MEMORY_BYTES_CEILING_DEFAULT, WASM_STACK_BYTES_DEFAULT,
    wasmtime_version,
};
pub use error::{LoadError, RunError, RuntimeError};
pub use gate::{GatePolicy, GatePolicyError, GateReport, VerdictCounts};
pub use gpu::GpuCheck;
pub use guard::HOSTCALL_BYTES_MAX;
pub use guild_gpu::{GpuConfig, GpuHost, GpuMode};
pub use guild_replay::{Digest, Principal};
pub use guild_vocab::limits::{
    FUEL_UNITS_DEFAULT, GPU_BUFFER_BYTES_MAX_DEFAULT, GPU_BUFFERS_MAX_DEFAULT, GPU_DISPATCH_TIMEOUT_MS_DEFAULT,
    GPU_DISPATCHES_MAX_DEFAULT, HTTP_CONNECT_TIMEOUT_MS_DEFAULT, HTTP_REQUEST_BODY_BYTES_MAX_DEFAULT,
    HTTP_REQUESTS_MAX_DEFAULT, HTTP_RESPONSE_BYTES_MAX_DEFAULT, HTTP_TIMEOUT_MS_DEFAULT, INSTANCES_MAX_DEFAULT,
    LOG_BYTES_MAX_DEFAULT, LimitHit, Limits, MEMORY_BYTES_MAX_DEFAULT, MOUNT_WRITE_BYTES_MAX_DEFAULT,
    MOUNT_WRITE_ENTRIES_MAX_DEFAULT, OUTPUT_BYTES_MAX_DEFAULT, RECORDING_BYTES_MAX_DEFAULT, TABLE_ELEMENTS_MAX_DEFAULT,
    TIMEOUT_MS_DEFAULT, WASI_RESOURCES_MAX_DEFAULT, human_bytes, human_ms,
};
pub use guild_vocab::{
    Access, AttemptEnd, Capabilities, Determinism, DirRequest, EffectivePolicy, EngineFingerprint, Failure,
    FailureCode, Grants, Mount, Outcome, PolicyError, PolicyRecord, RunStatus, ToolErrorKind, ToolInfo,
};
pub use hermetic::{
    HERMETIC_IDENTITIES_MAX, HERMETIC_LISTINGS_BYTES_MAX, HERMETIC_MOUNT_BYTES_MAX, Hermetic, HermeticBounds,
    NotCacheable, RunMode,
};
pub use logs::{LogLevel, LogLine, LogSource};
pub use record::Divergence;
pub use recording::RecordingConfig;
pub use replaying::{DivergenceClass, Mismatch, REPLAY_BACKSTOP_MS_DEFAULT, ReplayError, ReplayOptions, ReplayReport};
pub use run::{
    DESCRIBE_FUEL_UNITS, DESCRIBE_TIMEOUT_MS, FUEL_YIELD_INTERVAL_UNITS, Prepared, RunFor, RunReport, Runtime,
    RuntimeConfig, TOOLS_LOADED_MAX_DEFAULT, Tool,
};
pub use schema_check::{
    CHECKER_IDLE_MEMORY_BYTES_MAX, CHECKERS_IDLE_MAX, CHECKERS_IDLE_MEMORY_BYTES_MAX, CHECKERS_IDLE_PER_SCHEMA_MAX,
    CompiledSchema, SCHEMA_CHECK_FUEL_UNITS_DEFAULT, SCHEMA_CHECK_FUEL_UNITS_MIN,
    SCHEMA_CHECK_FUEL_UNITS_PER_BYTE_DEFAULT, SCHEMA_CHECK_MEMORY_BYTES_DEFAULT, SCHEMA_CHECK_MEMORY_BYTES_MIN,
    SchemaCheckError, SchemaCheckLimit, SchemaCheckLimits, Violation,
};
pub use signer::{
    BatchSigner, SIGN_BATCH_LEAVES_MAX_DEFAULT, SIGN_BATCH_WAIT_US_DEFAULT, SIGN_BATCH_WAIT_US_MAX, SignBatchLimits,
    SignerStopped,
};
