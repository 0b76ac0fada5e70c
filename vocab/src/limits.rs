//! The limits a run is held to. Each has a name with its unit, a default, and an error that says
//! which flag raises it. Engine-wide settings (pool sizes, the wasm stack) live in the runtime's
//! `EngineSettings` because changing them changes the engine, not one run.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Per-run limits. A guest that pushes against one ends with a [`LimitHit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Fuel units the run may burn (roughly one per wasm instruction; ~11 billion per second on
    /// the reference 2-core machine). Deterministic, unlike wall time. `--fuel`.
    pub fuel_units: u64,
    /// Wall-clock deadline for the whole call, enforced by epoch interruption with
    /// the runtime's `EPOCH_TICK_MS` granularity. Catches guests blocked in host calls too. `--timeout`.
    pub timeout_ms: u64,
    /// Linear memory a run may grow to, over all its memories. `--memory`.
    pub memory_bytes_max: u64,
    /// Elements any one table may hold.
    pub table_elements_max: u32,
    /// Core and component instances a run may create (a component holds several core ones).
    pub instances_max: u32,
    /// Bytes of JSON output `run` may return. `--output-bytes`.
    pub output_bytes_max: u64,
    /// Bytes of log lines, stdout and stderr together, a run may emit. `--log-bytes`.
    pub log_bytes_max: u64,
    /// Outgoing HTTP requests a run may make. `--http-requests`.
    pub http_requests_max: u32,
    /// Bytes of one outgoing request body.
    pub http_request_body_bytes_max: u64,
    /// Bytes of one response body the guest may receive. `--http-response-bytes`.
    pub http_response_bytes_max: u64,
    /// Time to resolve and connect to an upstream.
    pub http_connect_timeout_ms: u64,
    /// Time for one whole exchange, connect to last body byte.
    pub http_timeout_ms: u64,
    /// Bytes of GPU buffers a run may hold at once. `--gpu-buffer-bytes`.
    pub gpu_buffer_bytes_max: u64,
    /// GPU buffers a run may hold at once. `--gpu-buffers`.
    pub gpu_buffers_max: u32,
    /// GPU dispatches a run may make. `--gpu-dispatches`.
    pub gpu_dispatches_max: u32,
    /// Time one GPU dispatch may take, waiting for the shared device included. `--gpu-timeout`.
    pub gpu_dispatch_timeout_ms: u64,
    /// Bytes of recording a run may make the host hold: tape events plus the HTTP bodies they
    /// name. Past it the guest is stopped at that host call. `--recording-bytes`.
    pub recording_bytes_max: u64,
    /// WASI resources a run may hold at once: open files and directories, streams, pollables,
    /// HTTP requests and responses. Each open file is a host descriptor, so this also bounds
    /// the descriptors one run takes from the host process. `--wasi-resources`.
    pub wasi_resources_max: u32,
    /// Bytes a run may write into each writable mount (every write counts, and growing a file
    /// by truncation or by writing past its end counts the gap). `--mount-write-bytes`.
    pub mount_write_bytes_max: u64,
    /// Files, directories and links a run may create in each writable mount.
    /// `--mount-write-entries`.
    pub mount_write_entries_max: u64,
}

/// Default fuel: about a second of compute on the reference machine.
pub const FUEL_UNITS_DEFAULT: u64 = 10_000_000_000;
/// Default wall-clock limit for a whole call: 10 s. The default fuel is about 1 s of compute, so
/// a computing guest runs out of fuel first; this catches one blocked in host calls.
pub const TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default memory: enough for interpreters (Python, JS) inside components, small enough that a
/// machine holds hundreds of concurrent runs. Measured: the Python `summarize-csv`
/// (componentize-py 0.25, 13 MiB initial memory) peaks at 12.9 MiB on a small CSV, the
/// JavaScript `markdown-links` (componentize-js 0.22) at 10.1 MiB; a Rust tool at ~1 MiB.
pub const MEMORY_BYTES_MAX_DEFAULT: u64 = 256 * 1024 * 1024;
/// Default table size: interpreter components have thousands of functions in tables (measured:
/// 5 672 elements in componentize-py's, 7 745 in componentize-js's); ten times that leaves room
/// for larger interpreters and extension modules.
pub const TABLE_ELEMENTS_MAX_DEFAULT: u32 = 100_000;
/// Default instance count: a Rust tool uses ~4; componentize-py components hold 14 core modules,
/// componentize-js ones 4 (plus the component instance).
pub const INSTANCES_MAX_DEFAULT: u32 = 64;
/// Default cap on the JSON `run` returns: 1 MiB.
pub const OUTPUT_BYTES_MAX_DEFAULT: u64 = 1024 * 1024;
/// Default cap on a run's log lines, stdout and stderr together: 256 KiB.
pub const LOG_BYTES_MAX_DEFAULT: u64 = 256 * 1024;
/// Default number of outgoing requests per run.
pub const HTTP_REQUESTS_MAX_DEFAULT: u32 = 32;
/// Default cap on one request body.
pub const HTTP_REQUEST_BODY_BYTES_MAX_DEFAULT: u64 = 1024 * 1024;
/// Default cap on one response body.
pub const HTTP_RESPONSE_BYTES_MAX_DEFAULT: u64 = 8 * 1024 * 1024;
/// Default recording cap: the tape of a busy tool plus a few large HTTP bodies.
pub const RECORDING_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;
/// Default WASI resources: a tool rarely holds more than a few dozen; interpreters hold more
/// pollables and streams. 256 per run keeps 64 concurrent runs within 16 384 descriptors.
pub const WASI_RESOURCES_MAX_DEFAULT: u32 = 256;
/// Default write quota per writable mount.
pub const MOUNT_WRITE_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;
/// Default number of entries a run may create per writable mount.
pub const MOUNT_WRITE_ENTRIES_MAX_DEFAULT: u64 = 10_000;
/// Default GPU buffer bytes held at once per run: 256 MiB.
pub const GPU_BUFFER_BYTES_MAX_DEFAULT: u64 = 256 * 1024 * 1024;
/// Default GPU buffers held at once per run.
pub const GPU_BUFFERS_MAX_DEFAULT: u32 = 64;
/// Default GPU dispatches per run.
pub const GPU_DISPATCHES_MAX_DEFAULT: u32 = 10_000;
/// Default time one GPU dispatch may take: a 2048² matmul on lavapipe takes seconds.
pub const GPU_DISPATCH_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// Default time to resolve and connect to an upstream: 5 s.
pub const HTTP_CONNECT_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Default timeout for a whole exchange.
pub const HTTP_TIMEOUT_MS_DEFAULT: u64 = 30_000;

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel_units: FUEL_UNITS_DEFAULT,
            timeout_ms: TIMEOUT_MS_DEFAULT,
            memory_bytes_max: MEMORY_BYTES_MAX_DEFAULT,
            table_elements_max: TABLE_ELEMENTS_MAX_DEFAULT,
            instances_max: INSTANCES_MAX_DEFAULT,
            output_bytes_max: OUTPUT_BYTES_MAX_DEFAULT,
            log_bytes_max: LOG_BYTES_MAX_DEFAULT,
            http_requests_max: HTTP_REQUESTS_MAX_DEFAULT,
            http_request_body_bytes_max: HTTP_REQUEST_BODY_BYTES_MAX_DEFAULT,
            http_response_bytes_max: HTTP_RESPONSE_BYTES_MAX_DEFAULT,
            http_connect_timeout_ms: HTTP_CONNECT_TIMEOUT_MS_DEFAULT,
            http_timeout_ms: HTTP_TIMEOUT_MS_DEFAULT,
            gpu_buffer_bytes_max: GPU_BUFFER_BYTES_MAX_DEFAULT,
            gpu_buffers_max: GPU_BUFFERS_MAX_DEFAULT,
            gpu_dispatches_max: GPU_DISPATCHES_MAX_DEFAULT,
            gpu_dispatch_timeout_ms: GPU_DISPATCH_TIMEOUT_MS_DEFAULT,
            recording_bytes_max: RECORDING_BYTES_MAX_DEFAULT,
            wasi_resources_max: WASI_RESOURCES_MAX_DEFAULT,
            mount_write_bytes_max: MOUNT_WRITE_BYTES_MAX_DEFAULT,
            mount_write_entries_max: MOUNT_WRITE_ENTRIES_MAX_DEFAULT,
        }
    }
}

impl Limits {
    /// The wall-clock limit as a [`Duration`].
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Which limit a run hit, with the numbers a person needs to decide what to raise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "limit", rename_all = "snake_case")]
pub enum LimitHit {
    /// All fuel was burnt.
    #[error("fuel exhausted: used {used_units} of {limit_units} units (raise --fuel)")]
    Fuel {
        /// Fuel units burnt when the run stopped: all it had, so equal to `limit_units`.
        used_units: u64,
        /// The run's [`Limits::fuel_units`].
        limit_units: u64,
    },
    /// The wall-clock deadline passed.
    #[error("timed out after {} (raise --timeout)", human_ms(*limit_ms))]
    Timeout {
        /// The run's [`Limits::timeout_ms`].
        limit_ms: u64,
    },
    /// Linear memory (or a table) could not grow within the limit.
    #[error("memory limit {} reached (raise --memory)", human_bytes(*limit_bytes))]
    Memory {
        /// The run's [`Limits::memory_bytes_max`].
        limit_bytes: u64,
    },
    /// A table could not grow within the limit.
    #[error("table limit of {limit_elements} elements reached")]
    Table {
        /// The run's [`Limits::table_elements_max`].
        limit_elements: u32,
    },
    /// The wasm stack overflowed, usually unbounded recursion.
    #[error("wasm stack of {} exhausted: the tool recursed too deeply", human_bytes(*stack_bytes))]
    Stack {
        /// The engine's fixed stack size.
        stack_bytes: u64,
    },
    /// `run` returned more output than allowed; it was refused before being copied out of the
    /// guest, so its size is not known.
    #[error("output exceeds the limit of {} (raise --output-bytes)", human_bytes(*limit_bytes))]
    Output {
        /// The run's [`Limits::output_bytes_max`].
        limit_bytes: u64,
    },
    /// The guest caused more recorded effects than a tape holds.
    #[error("tape limit of {limit_events} events reached: the tool read the clock or logged too often")]
    Tape {
        /// Events a tape holds at most (`guild_replay::TAPE_EVENTS_MAX`).
        limit_events: u64,
    },
    /// A GPU quota, the GPU deadline, or a full device queue; the message names the flag.
    #[error("{message}")]
    Gpu {
        /// What was exceeded and what to raise.
        message: String,
    },
    /// The run's recording (tape events and the HTTP bodies they name) outgrew its cap.
    #[error("recording limit of {} reached: the tool's effects (clock reads, logs, HTTP bodies) outgrew it (raise --recording-bytes)", human_bytes(*limit_bytes))]
    Recording {
        /// The run's [`Limits::recording_bytes_max`].
        limit_bytes: u64,
    },
    /// The run held as many WASI resources (open files, streams, pollables) as allowed.
    #[error(
        "WASI resource limit of {limit_resources} reached: the tool held too many open files, streams or pollables at once (raise --wasi-resources)"
    )]
    Resources {
        /// The run's [`Limits::wasi_resources_max`].
        limit_resources: u32,
    },
    /// A write into a writable mount went past its quota, or the mount outgrew what a bundle
    /// records.
    #[error("mount {guest_path}: {what} ({flag})")]
    MountWrite {
        /// The mount, as the guest sees it.
        guest_path: String,
        /// What went past the limit.
        what: String,
        /// What to do: the flag that raises the limit.
        flag: String,
    },
    /// The tool logged (or printed) more than allowed.
    #[error("log limit of {} reached (raise --log-bytes)", human_bytes(*limit_bytes))]
    Log {
        /// The run's [`Limits::log_bytes_max`].
        limit_bytes: u64,
    },
}

/// `1500` → `1.5s`, `2000` → `2s`, `250` → `250ms`.
pub fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// `67108864` → `64 MiB`; exact multiples print without decimals.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            return if bytes.is_multiple_of(size) {
                format!("{} {unit}", bytes / size)
            } else {
                format!("{:.1} {unit}", bytes as f64 / size as f64)
            };
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_raise() {
        let fuel = LimitHit::Fuel { used_units: 1_000_000, limit_units: 1_000_000 };
        assert_eq!(fuel.to_string(), "fuel exhausted: used 1000000 of 1000000 units (raise --fuel)");
        assert_eq!(LimitHit::Timeout { limit_ms: 2000 }.to_string(), "timed out after 2s (raise --timeout)");
        assert_eq!(
            LimitHit::Memory { limit_bytes: 64 << 20 }.to_string(),
            "memory limit 64 MiB reached (raise --memory)"
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(human_ms(250), "250ms");
        assert_eq!(human_ms(1500), "1.5s");
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1 << 30), "1 GiB");
    }
}
