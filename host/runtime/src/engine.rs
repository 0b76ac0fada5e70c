//! The wasmtime engine Guild runs every tool on: determinism settings, the pooling allocator,
//! the epoch ticker behind wall-clock deadlines, and the fingerprint that names this exact
//! engine configuration in caches and bundles.

use crate::RuntimeError;
use guild_vocab::{Determinism, EngineFingerprint};
use serde::{Deserialize, Serialize};
use std::hash::{Hash, Hasher};
use std::time::Duration;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch ticker advances the engine's epoch; deadlines are rounded up to it.
pub const EPOCH_TICK_MS: u64 = 10;

/// Engine-wide settings. Unlike [`crate::Limits`] these shape the compiled code or the pools, so
/// they are part of the engine fingerprint (stack size) or fixed for the host's lifetime (pools).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// The wasm stack every run gets. Fixed, so that deep recursion fails at the same depth on
    /// every machine; part of the fingerprint.
    pub wasm_stack_bytes: u64,
    /// Runs that can be live at once; the pooling allocator reserves slots for this many.
    pub concurrent_runs_max: u32,
    /// The largest linear memory any run can be granted (the pool's slot size). Per-run
    /// `memory_bytes_max` must not exceed it.
    pub memory_bytes_ceiling: u64,
    /// The largest table any run can be granted (the pool's table slot size).
    pub table_elements_ceiling: u32,
    /// Core instances one component may contain.
    pub core_instances_per_component_max: u32,
    /// Memories one component may define.
    pub memories_per_component_max: u32,
    /// Tables one component may define.
    pub tables_per_component_max: u32,
    /// Meter execution in fuel. Always on in production: fuel is the deterministic measure of a
    /// run and the CPU limit. Off only to measure what metering costs (`cargo bench`); runs
    /// then have only the wall-clock limit and report zero fuel.
    pub fuel_metering: bool,
}

/// Default wasm stack: 1 MiB, deep enough for ordinary recursion, shallow enough to fail fast.
pub const WASM_STACK_BYTES_DEFAULT: u64 = 1024 * 1024;
/// Default concurrency the pools are sized for.
pub const CONCURRENT_RUNS_MAX_DEFAULT: u32 = 64;
/// Default memory ceiling: 4 GiB, the whole 32-bit address space a wasm32 guest can use.
pub const MEMORY_BYTES_CEILING_DEFAULT: u64 = 4 << 30;

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            wasm_stack_bytes: WASM_STACK_BYTES_DEFAULT,
            concurrent_runs_max: CONCURRENT_RUNS_MAX_DEFAULT,
            memory_bytes_ceiling: MEMORY_BYTES_CEILING_DEFAULT,
            table_elements_ceiling: guild_vocab::limits::TABLE_ELEMENTS_MAX_DEFAULT,
            core_instances_per_component_max: 64,
            memories_per_component_max: 4,
            tables_per_component_max: 8,
            fuel_metering: true,
        }
    }
}

/// Build the engine for `settings`.
pub(crate) fn build_engine(settings: &EngineSettings) -> Result<(Engine, EngineFingerprint), RuntimeError> {
    let engine_error = |e: wasmtime::Error| RuntimeError::Engine(format!("{e:#}"));
    let stack_bytes = usize::try_from(settings.wasm_stack_bytes)
        .map_err(|_| RuntimeError::Config("wasm_stack_bytes does not fit this machine".into()))?;
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .consume_fuel(settings.fuel_metering)
        .epoch_interruption(true)
        .cranelift_nan_canonicalization(true)
        .relaxed_simd_deterministic(true)
        // Shared-memory threads stay off: wasmtime is built without its `threads` feature.
        .max_wasm_stack(stack_bytes)
        // Fiber stacks host the wasm stack plus host frames of WASI calls.
        .async_stack_size(stack_bytes + 1024 * 1024)
        .parallel_compilation(true);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(settings)?));
    let engine = Engine::new(&config).map_err(engine_error)?;
    let fingerprint = fingerprint(&engine, settings);
    Ok((engine, fingerprint))
}

fn pooling(settings: &EngineSettings) -> Result<PoolingAllocationConfig, RuntimeError> {
    let runs = settings.concurrent_runs_max.max(1);
    let memory_ceiling = usize::try_from(settings.memory_bytes_ceiling)
        .map_err(|_| RuntimeError::Config("memory_bytes_ceiling does not fit this machine".into()))?;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(runs)
        .total_core_instances(runs * settings.core_instances_per_component_max)
        .total_memories(runs * settings.memories_per_component_max)
        .total_tables(runs * settings.tables_per_component_max)
        .total_stacks(runs)
        .max_core_instances_per_component(settings.core_instances_per_component_max)
        .max_memories_per_component(settings.memories_per_component_max)
        .max_tables_per_component(settings.tables_per_component_max)
        .max_memories_per_module(1)
        .max_tables_per_module(1)
        .table_elements(settings.table_elements_ceiling as usize)
        .max_memory_size(memory_ceiling)
        // Interpreter components carry large vmctx/instance state.
        .max_core_instance_size(4 * 1024 * 1024)
        .max_component_instance_size(4 * 1024 * 1024)
        // Returning slots to the kernel one madvise at a time serialises threads on the process's
        // memory map; batching keeps two threads from being slower than one (measured).
        .decommit_batch_size(DECOMMIT_BATCH_SLOTS)
        .async_stack_keep_resident(ASYNC_STACK_KEEP_RESIDENT_BYTES)
        .table_keep_resident(TABLE_KEEP_RESIDENT_BYTES)
        .linear_memory_keep_resident(LINEAR_MEMORY_KEEP_RESIDENT_BYTES)
        // Reset only the pages a run touched (Linux 6.7+ PAGEMAP_SCAN) instead of memsetting the
        // whole kept-resident prefix: that memset was ~14% of a daemon's CPU per trivial run.
        // Same memory contents afterwards either way, so nothing a guest sees changes.
        .pagemap_scan(wasmtime::Enabled::Auto);
    Ok(pool)
}

/// Slots returned to the kernel in one batch.
const DECOMMIT_BATCH_SLOTS: usize = 16;
/// Bytes of each fiber stack zeroed in place instead of decommitted.
const ASYNC_STACK_KEEP_RESIDENT_BYTES: usize = 64 * 1024;
/// Bytes of each linear memory zeroed in place instead of decommitted. A Rust tool touches its
/// first ~1.1 MiB (the shadow stack sits below 1 MiB); zeroing 2 MiB costs a few microseconds
/// per call but spares the page faults and madvise calls that made two threads no faster than
/// one (measured: 55k calls/s on both 1 and 2 threads without it, 39k and 76k with it).
const LINEAR_MEMORY_KEEP_RESIDENT_BYTES: usize = 2 << 20;
/// Bytes of each table zeroed in place instead of decommitted.
const TABLE_KEEP_RESIDENT_BYTES: usize = 64 * 1024;

/// Feeds `Hash` output into blake3, so the fingerprint is stable across Rust releases (unlike
/// `DefaultHasher`).
struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn finish(&self) -> u64 {
        let bytes = self.0.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&bytes.as_bytes()[..8]);
        u64::from_le_bytes(first)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn fingerprint(engine: &Engine, settings: &EngineSettings) -> EngineFingerprint {
    let determinism = Determinism {
        nan_canonicalization: true,
        relaxed_simd_deterministic: true,
        threads: false,
        fuel: settings.fuel_metering,
        wasm_stack_bytes: settings.wasm_stack_bytes,
    };
    let version = format!("wasmtime {}", wasmtime_version());
    let mut hasher = Blake3Hasher(blake3::Hasher::new());
    version.hash(&mut hasher);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    determinism.hash(&mut hasher);
    let id = hasher.0.finalize().to_hex()[..32].to_string();
    EngineFingerprint { engine: version, id, determinism }
}

/// 32 bytes naming what `engine`'s compiled code is compatible with (wasmtime's own
/// compatibility hash, fed through blake3 so that it is stable across Rust releases).
pub(crate) fn compatibility_id(engine: &Engine) -> [u8; 32] {
    let mut hasher = Blake3Hasher(blake3::Hasher::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    *hasher.0.finalize().as_bytes()
}

/// The wasmtime version this host was built with.
pub fn wasmtime_version() -> &'static str {
    // Pinned in the workspace manifest; a bump there must bump this too (a unit test checks).
    "48.0.8"
}

/// Advance the engine's epoch every [`EPOCH_TICK_MS`] until the engine is dropped.
pub(crate) fn spawn_epoch_ticker(engine: &Engine) -> Result<(), RuntimeError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("guild-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
            }
        })
        .map_err(|e| RuntimeError::Engine(format!("could not start the epoch ticker thread: {e}")))?;
    Ok(())
}

/// Epoch ticks for a deadline of `timeout_ms`: rounded up, plus one because the current tick may
/// be nearly over.
pub(crate) fn deadline_ticks(timeout_ms: u64) -> u64 {
    timeout_ms.div_ceil(EPOCH_TICK_MS).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_and_sensitive_to_the_stack() {
        let settings = EngineSettings { concurrent_runs_max: 2, ..EngineSettings::default() };
        let (_, a) = build_engine(&settings).expect("engine builds");
        let (_, b) = build_engine(&settings).expect("engine builds");
        assert_eq!(a, b);
        let deeper = EngineSettings { wasm_stack_bytes: 2 << 20, ..settings };
        let (_, c) = build_engine(&deeper).expect("engine builds");
        assert_ne!(a.id, c.id);
    }

    #[test]
    fn pinned_wasmtime_version_matches_the_manifest() {
        let manifest = include_str!("../../../Cargo.toml");
        assert!(manifest.contains(&format!("wasmtime = {{ version = \"={}\"", wasmtime_version())));
    }

    #[test]
    fn deadlines_round_up() {
        assert_eq!(deadline_ticks(0), 1);
        assert_eq!(deadline_ticks(10), 2);
        assert_eq!(deadline_ticks(11), 3);
    }
}
