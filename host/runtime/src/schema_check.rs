//! Checking a JSON value against a tool's own JSON Schema, with a bound on the work.
//!
//! A tool declares its input and output schemas, so a schema is as hostile as the tool, and
//! JSON Schema lets a few hundred bytes describe a check that runs for hours: references that fan
//! out (`allOf` of two references to the level below, twenty levels deep), patterns that
//! backtrack, `uniqueItems` over numbers that hash alike. The cost grows with the value too, so no
//! bound on the schema alone holds. Checks therefore run inside a sandbox, like tools: the
//! checker (`host/schema-check`, jsonschema compiled to a component) runs on its own wasmtime
//! engine under [`SchemaCheckLimits`]: fuel for each compile and each check, and a memory limit.
//! A check that runs past them fails with [`SchemaCheckError::Limit`]; nothing runs on after it.
//!
//! The checker component is compiled once per process (and kept in the disk cache beside the
//! tools' compiled code). One instance holds one compiled schema; a [`CompiledSchema`] keeps
//! instances between checks (at most [`CHECKERS_IDLE_PER_SCHEMA_MAX`] per schema, and
//! [`CHECKERS_IDLE_MAX`] holding at most [`CHECKERS_IDLE_MEMORY_BYTES_MAX`] in a process) so that
//! a check costs a call, not a compile. An instance that hit a limit or trapped is dropped,
//! never reused.
//!
//! Most schemas never start the checker: a plain schema (the subset `schemars` writes, see
//! [`plain`]) is checked by the host itself in steps bounded by the value's size, and only a value
//! the host cannot call valid goes to the checker, which names its violation. A schema that is not
//! plain is compiled in the checker at once, so that a schema jsonschema refuses is refused there.

mod plain;

use crate::cache::DiskCache;
use guild_replay::Digest;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../schema-check/wit",
        world: "schema-checker",
        additional_derives: [PartialEq, Eq],
    });
}

use bindings::SchemaCheckerPre;
pub use bindings::exports::guild::schema_check::checker::Violation;

/// The checker component (`host/schema-check` built for `wasm32-wasip2` by `build.rs`, which
/// also names the build: `GUILD_SCHEMA_CHECK_ID`, a hash of these bytes).
const CHECKER_WASM: &[u8] = include_bytes!(env!("GUILD_SCHEMA_CHECK_WASM"));

/// Default for [`SchemaCheckLimits::fuel_units`]: about 0.1 s of this machine's compute, some
/// hundred times what compiling an ordinary schema or checking a small value takes.
pub const SCHEMA_CHECK_FUEL_UNITS_DEFAULT: u64 = 500_000_000;
/// Default for [`SchemaCheckLimits::fuel_units_per_byte`]: reading a value costs the checker up
/// to ~430 units a byte (an array of small numbers, measured); twice that leaves room to check it.
pub const SCHEMA_CHECK_FUEL_UNITS_PER_BYTE_DEFAULT: u64 = 1_000;
/// Default for [`SchemaCheckLimits::memory_bytes`]: room for a 1 MiB value read into memory
/// (a JSON array of small numbers takes ~30 times its text) beside the compiled schema.
pub const SCHEMA_CHECK_MEMORY_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;
/// The least [`SchemaCheckLimits::fuel_units`] an operator may set: a few times what compiling a
/// small schema takes (with its meta-schema check: ~12 million units for a 1.5 KB one).
pub const SCHEMA_CHECK_FUEL_UNITS_MIN: u64 = 50_000_000;
/// The least [`SchemaCheckLimits::memory_bytes`] an operator may set: the checker's own memory.
pub const SCHEMA_CHECK_MEMORY_BYTES_MIN: u64 = 4 * 1024 * 1024;
/// Checker instances kept between checks in one process, over all schemas; past this an instance
/// is dropped after its check, and the next check of that schema compiles it again.
pub const CHECKERS_IDLE_MAX: usize = 64;
/// Checker instances one schema keeps between checks (more are made while checks overlap).
pub const CHECKERS_IDLE_PER_SCHEMA_MAX: usize = 2;
/// The linear memory all kept instances of a process may hold together, bytes.
pub const CHECKERS_IDLE_MEMORY_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// An instance whose memory grew past this is not kept between checks (one large value should
/// not keep its memory held).
pub const CHECKER_IDLE_MEMORY_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// What one compile of a schema, and one check of a value against it, may use. Operators set
/// them (`[schema_check]` in the daemon's config); a tool cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaCheckLimits {
    /// Fuel (about one unit per wasm instruction of the checker) one compile or one check may
    /// burn, units, besides [`Self::fuel_units_per_byte`].
    pub fuel_units: u64,
    /// Fuel allowed on top of `fuel_units` for each byte of the schema compiled or the value
    /// checked (JSON text), units per byte: reading a large value honestly costs in proportion.
    pub fuel_units_per_byte: u64,
    /// Linear memory one checker may hold (the compiled schema and the value it checks), bytes.
    pub memory_bytes: u64,
}

impl SchemaCheckLimits {
    /// The fuel one compile of, or one check of, `bytes` of JSON text may burn, units.
    pub fn fuel_for(&self, bytes: usize) -> u64 {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.fuel_units.saturating_add(self.fuel_units_per_byte.saturating_mul(bytes))
    }
}

impl Default for SchemaCheckLimits {
    fn default() -> Self {
        Self {
            fuel_units: SCHEMA_CHECK_FUEL_UNITS_DEFAULT,
            fuel_units_per_byte: SCHEMA_CHECK_FUEL_UNITS_PER_BYTE_DEFAULT,
            memory_bytes: SCHEMA_CHECK_MEMORY_BYTES_DEFAULT,
        }
    }
}

/// Why a schema could not be compiled or a value not checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaCheckError {
    /// The schema is not JSON, or not a JSON Schema the checker can use (jsonschema's reason).
    #[error("{0}")]
    Invalid(String),
    /// Checking a value ran past a bound.
    #[error(
        "checking the value against the schema {0}; the schema is too costly for this value (references that fan \
         out, patterns that backtrack, uniqueItems over large arrays): the tool's author can simplify it, and the \
         daemon's operator can raise [schema_check] (guild run uses the defaults)"
    )]
    Limit(SchemaCheckLimit),
    /// Compiling the schema ran past a bound.
    #[error(
        "compiling the schema {0}: the tool's author can simplify it, and the daemon's operator can raise \
         [schema_check] (guild run uses the defaults)"
    )]
    CompileLimit(SchemaCheckLimit),
    /// The checker itself could not be started (compiled, linked or instantiated).
    #[error("the schema checker could not start: {0}")]
    Host(String),
}

/// The bound a compile or a check ran past.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SchemaCheckLimit {
    /// It burned all its fuel.
    #[error(
        "took more than {limit_units} fuel units (schema_check.fuel_units, plus schema_check.fuel_units_per_byte \
         for each byte)"
    )]
    Fuel {
        /// The limit, units.
        limit_units: u64,
    },
    /// It needed more memory than allowed.
    #[error("needed more than {limit_bytes} bytes of memory (schema_check.memory_bytes)")]
    Memory {
        /// The limit, bytes.
        limit_bytes: u64,
    },
    /// It recursed deeper than the checker's stack allows.
    #[error("recursed deeper than the checker's stack allows (the schema or the value is nested too deeply)")]
    Stack,
}

/// The checker component, compiled and linked once per process.
struct Checker {
    engine: Engine,
    pre: SchemaCheckerPre<CheckState>,
    /// Instances kept between checks, over all schemas.
    idle: AtomicUsize,
    /// Their linear memory, bytes.
    idle_bytes: AtomicU64,
}

/// The process's checker once one started. A start that failed is not kept: the next call tries
/// again (callers treat [`SchemaCheckError::Host`] as the host's state, not the schema's).
static CHECKER: Mutex<Option<Arc<Checker>>> = Mutex::new(None);

/// The process's checker; the first call compiles it (or reads it from `disk`), one at a time.
fn checker(disk: &DiskCache) -> Result<Arc<Checker>, SchemaCheckError> {
    let mut started = CHECKER.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(checker) = started.as_ref() {
        return Ok(checker.clone());
    }
    let checker = Arc::new(Checker::start(disk).map_err(SchemaCheckError::Host)?);
    *started = Some(checker.clone());
    Ok(checker)
}

impl Checker {
    fn start(disk: &DiskCache) -> Result<Self, String> {
        let mut config = Config::new();
        config.wasm_component_model(true).consume_fuel(true).parallel_compilation(true);
        let engine = Engine::new(&config).map_err(|e| format!("{e:#}"))?;
        // The key names the checker's build and the engine it is compiled for: another build of
        // either never reads this one's compiled code.
        let engine_id = Digest::from_bytes(crate::engine::compatibility_id(&engine)).to_hex();
        let key = format!("schema-check-{}-{}", env!("GUILD_SCHEMA_CHECK_ID"), &engine_id[..32]);
        // The checker is the same for every Guild home: kept in the user's cache too, so that a new
        // home (every test, a fresh container volume) does not compile its megabytes again.
        let user = DiskCache::new(dirs::cache_dir().map(|dir| dir.join("guild")));
        let component =
            DiskCache::load_or_compile_own(&[disk, &user], &engine, &key, CHECKER_WASM).map_err(|e| format!("{e}"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| format!("{e:#}"))?;
        let pre = linker.instantiate_pre(&component).map_err(|e| format!("{e:#}"))?;
        let pre = SchemaCheckerPre::new(pre).map_err(|e| format!("{e:#}"))?;
        Ok(Self { engine, pre, idle: AtomicUsize::new(0), idle_bytes: AtomicU64::new(0) })
    }
}

/// A schema ready to check values: plain (checked by the host, the checker started for a value
/// it cannot call valid) or compiled in a checker, under `limits`.
pub struct CompiledSchema {
    /// The schema's plan when it is plain.
    plain: Option<plain::Plan>,
    /// The process's checker, once this schema needed it.
    checker: std::sync::OnceLock<Arc<Checker>>,
    /// Where the checker's compiled code is kept, for a start this schema causes.
    disk: DiskCache,
    /// The schema's JSON text, to compile it again in a new instance.
    schema: String,
    limits: SchemaCheckLimits,
    idle: Mutex<Vec<Instance>>,
}

impl std::fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledSchema")
            .field("schema", &self.schema)
            .field("plain", &self.plain.is_some())
            .field("limits", &self.limits)
            .finish()
    }
}

/// One checker instance holding one compiled schema.
struct Instance {
    store: Store<CheckState>,
    bindings: bindings::SchemaChecker,
}

impl CompiledSchema {
    /// Compile `schema` under `limits`: a plain schema (valid JSON Schema by construction) at
    /// once in the host; any other in the checker, against its draft's meta-schema. `disk` keeps
    /// the checker's own compiled code the first time it starts.
    ///
    /// # Errors
    /// [`SchemaCheckError::Invalid`] when it is not a JSON Schema, [`SchemaCheckError::Limit`]
    /// when compiling it ran past `limits`, [`SchemaCheckError::Host`] when the checker could not
    /// start.
    pub(crate) fn compile(
        schema: &serde_json::Value,
        limits: SchemaCheckLimits,
        disk: &DiskCache,
    ) -> Result<Self, SchemaCheckError> {
        Self::compile_as(schema, limits, disk, plain::Plan::of(schema))
    }

    /// [`Self::compile`] in the checker, plain or not: for tests of the checker itself.
    #[cfg(test)]
    pub(crate) fn compile_in_checker(
        schema: &serde_json::Value,
        limits: SchemaCheckLimits,
        disk: &DiskCache,
    ) -> Result<Self, SchemaCheckError> {
        Self::compile_as(schema, limits, disk, None)
    }

    fn compile_as(
        schema: &serde_json::Value,
        limits: SchemaCheckLimits,
        disk: &DiskCache,
        plain: Option<plain::Plan>,
    ) -> Result<Self, SchemaCheckError> {
        let compiled = Self {
            plain,
            checker: std::sync::OnceLock::new(),
            disk: disk.clone(),
            schema: schema.to_string(),
            limits,
            idle: Mutex::new(Vec::new()),
        };
        if compiled.plain.is_none() {
            let instance = compiled.instance()?;
            compiled.keep(instance);
        }
        Ok(compiled)
    }

    /// Whether the host checks this schema itself (the checker only for values it cannot call
    /// valid).
    #[cfg(test)]
    pub(crate) fn is_plain(&self) -> bool {
        self.plain.is_some()
    }

    /// The process's checker, started on first need.
    fn checker(&self) -> Result<&Arc<Checker>, SchemaCheckError> {
        if let Some(started) = self.checker.get() {
            return Ok(started);
        }
        let started = checker(&self.disk)?;
        Ok(self.checker.get_or_init(|| started))
    }

    /// Check `value` (JSON text) against the schema: `None` when it matches, else the first way
    /// it breaks it.
    ///
    /// # Errors
    /// [`SchemaCheckError::Limit`] when the check ran past the limits (the value is then neither
    /// accepted nor refused), [`SchemaCheckError::Invalid`] when `value` is not JSON,
    /// [`SchemaCheckError::Host`] when no checker could be started.
    pub fn check(&self, value: &str) -> Result<Option<Violation>, SchemaCheckError> {
        if self.plain.as_ref().is_some_and(|plan| plan.accepts(value)) {
            return Ok(None);
        }
        self.check_in_checker(value)
    }

    /// [`Self::check`] in the checker, whatever the schema.
    fn check_in_checker(&self, value: &str) -> Result<Option<Violation>, SchemaCheckError> {
        let checker = self.checker()?;
        let popped = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut instance = match popped {
            Some(instance) => {
                checker.idle.fetch_sub(1, Ordering::Relaxed);
                checker.idle_bytes.fetch_sub(instance.memory_bytes(), Ordering::Relaxed);
                instance
            }
            None => self.instance()?,
        };
        self.refuel(&mut instance.store, value.len())?;
        let called = instance.bindings.guild_schema_check_checker().call_check(&mut instance.store, value);
        let checked = called.map_err(|trap| self.classify(&trap, &instance.store))?;
        self.keep(instance);
        checked.map_err(SchemaCheckError::Invalid)
    }

    /// A new instance with the schema compiled in it.
    fn instance(&self) -> Result<Instance, SchemaCheckError> {
        let checker = self.checker()?;
        let state = CheckState::new(self.limits.memory_bytes);
        let mut store = Store::new(&checker.engine, state);
        store.limiter(|state| &mut state.limiter);
        self.refuel(&mut store, self.schema.len())?;
        let compiling = |error: SchemaCheckError| match error {
            SchemaCheckError::Limit(limit) => SchemaCheckError::CompileLimit(limit),
            other => other,
        };
        let bindings = checker.pre.instantiate(&mut store).map_err(|e| compiling(self.classify(&e, &store)))?;
        let compiled = bindings.guild_schema_check_checker().call_compile(&mut store, &self.schema);
        compiled.map_err(|trap| compiling(self.classify(&trap, &store)))?.map_err(SchemaCheckError::Invalid)?;
        Ok(Instance { store, bindings })
    }

    /// Fuel for one call over `bytes` of JSON text; the store remembers it to name the limit.
    fn refuel(&self, store: &mut Store<CheckState>, bytes: usize) -> Result<(), SchemaCheckError> {
        let fuel = self.limits.fuel_for(bytes);
        store.data_mut().fuel_units = fuel;
        store.set_fuel(fuel).map_err(|e| SchemaCheckError::Host(format!("{e:#}")))
    }

    /// Keep `instance` for the next check, unless this schema or the process keeps enough
    /// already, or it holds much memory.
    fn keep(&self, instance: Instance) {
        let Some(checker) = self.checker.get() else { return };
        let bytes = instance.memory_bytes();
        if bytes > CHECKER_IDLE_MEMORY_BYTES_MAX {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= CHECKERS_IDLE_PER_SCHEMA_MAX {
            return;
        }
        let counted = checker
            .idle
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < CHECKERS_IDLE_MAX).then_some(n + 1));
        if counted.is_err() {
            return;
        }
        let sized = checker.idle_bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
            held.checked_add(bytes).filter(|&total| total <= CHECKERS_IDLE_MEMORY_BYTES_MAX)
        });
        if sized.is_err() {
            checker.idle.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        idle.push(instance);
    }

    /// A trap as the limit it hit; any other trap (the checker panicked, say) means this schema
    /// or value cannot be checked.
    fn classify(&self, error: &wasmtime::Error, store: &Store<CheckState>) -> SchemaCheckError {
        if let Some(limit) = error.downcast_ref::<SchemaCheckLimit>() {
            return SchemaCheckError::Limit(*limit);
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => {
                SchemaCheckError::Limit(SchemaCheckLimit::Fuel { limit_units: store.data().fuel_units })
            }
            Some(Trap::StackOverflow) => SchemaCheckError::Limit(SchemaCheckLimit::Stack),
            Some(trap) => {
                SchemaCheckError::Invalid(format!("the schema checker stopped on this schema or value: {trap}"))
            }
            None => SchemaCheckError::Host(format!("the schema checker failed: {error:#}")),
        }
    }
}

impl Drop for CompiledSchema {
    fn drop(&mut self) {
        let Some(checker) = self.checker.get() else { return };
        let idle = self.idle.get_mut().unwrap_or_else(|p| p.into_inner());
        checker.idle.fetch_sub(idle.len(), Ordering::Relaxed);
        let bytes = idle.iter().map(Instance::memory_bytes).sum();
        checker.idle_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl Instance {
    /// The linear memory the instance holds, bytes.
    fn memory_bytes(&self) -> u64 {
        self.store.data().limiter.memory_bytes
    }
}

/// A checker instance's state: WASI with nothing granted, and its memory limit.
struct CheckState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: CheckLimiter,
    /// The fuel the current call was given, units.
    fuel_units: u64,
}

impl CheckState {
    fn new(memory_bytes_max: u64) -> Self {
        // Nothing to read, nowhere to write; its randomness (hash seeds) fixed, so a check's
        // outcome and its fuel are the same on every machine.
        let wasi = WasiCtxBuilder::new()
            .secure_random(crate::record::SeededRandom::new(&[0; 32], "schema-check secure"))
            .insecure_random(crate::record::SeededRandom::new(&[0; 32], "schema-check insecure"))
            .insecure_random_seed(0)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: CheckLimiter { memory_bytes: 0, memory_bytes_max },
            fuel_units: 0,
        }
    }
}

impl WasiView for CheckState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Refuses memory past the limit with [`SchemaCheckLimit::Memory`] (a trap, not a failed
/// allocation the checker could mistake for something else).
struct CheckLimiter {
    memory_bytes: u64,
    memory_bytes_max: u64,
}

impl ResourceLimiter for CheckLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        if desired > self.memory_bytes_max {
            return Err(wasmtime::Error::new(SchemaCheckLimit::Memory { limit_bytes: self.memory_bytes_max }));
        }
        self.memory_bytes = self.memory_bytes.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= guild_vocab::limits::TABLE_ELEMENTS_MAX_DEFAULT as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(schema: &serde_json::Value, limits: SchemaCheckLimits) -> Result<CompiledSchema, SchemaCheckError> {
        CompiledSchema::compile(schema, limits, &DiskCache::new(None))
    }

    /// A schema compiled in the checker even when it is plain.
    fn in_checker(schema: &serde_json::Value, limits: SchemaCheckLimits) -> CompiledSchema {
        CompiledSchema::compile_in_checker(schema, limits, &DiskCache::new(None)).expect("compiles")
    }

    /// `$defs` a1..a`levels`, each an `anyOf` of two references to the level below: the check
    /// of a value that breaks the innermost rule must try every way, 2^levels visits of it (at 22
    /// levels of `allOf`, whose every error was collected, one check took 14.6 s of host CPU
    /// before checks ran in the checker).
    fn fan_out(levels: usize) -> serde_json::Value {
        let mut defs = serde_json::Map::new();
        defs.insert("a0".into(), json!({"type": "string", "minLength": 2}));
        for level in 1..=levels {
            let below = format!("#/$defs/a{}", level - 1);
            defs.insert(format!("a{level}"), json!({"anyOf": [{"$ref": below}, {"$ref": below}]}));
        }
        json!({"$defs": defs, "$ref": format!("#/$defs/a{levels}")})
    }

    #[test]
    fn a_value_is_checked_and_the_first_violation_named() {
        let schema = json!({
            "type": "object",
            "properties": {"n": {"type": "integer"}, "a/b": {"type": "object", "required": ["c~d"]}},
            "additionalProperties": false
        });
        let compiled = compile(&schema, SchemaCheckLimits::default()).expect("compiles");
        assert!(compiled.is_plain(), "the host checks it, and asks the checker about a violation");
        assert_eq!(compiled.check(r#"{"n": 1}"#), Ok(None));
        let wrong = compiled.check(r#"{"n": "x"}"#).expect("checked").expect("invalid");
        assert_eq!((wrong.instance_path.as_str(), wrong.field.as_str()), ("/n", "/n"));
        assert!(wrong.message.contains("integer"), "{}", wrong.message);
        let missing = compiled.check(r#"{"a/b": {}}"#).expect("checked").expect("invalid");
        assert_eq!((missing.instance_path.as_str(), missing.field.as_str()), ("/a~1b", "/a~1b/c~0d"));
        // The same instance answers again after a refusal.
        assert_eq!(compiled.check(r#"{"n": 2}"#), Ok(None));
        assert!(matches!(compiled.check("{"), Err(SchemaCheckError::Invalid(m)) if m.contains("not JSON")));
    }

    #[test]
    fn a_schema_that_is_not_json_schema_is_refused_with_the_reason() {
        let refused = compile(&json!({"type": "nonsense"}), SchemaCheckLimits::default()).expect_err("refused");
        assert!(matches!(&refused, SchemaCheckError::Invalid(m) if m.contains("nonsense")), "{refused:?}");
    }

    /// The check that took 14.6 s stops at the fuel limit, and the schema still checks the next
    /// value (in a fresh instance: the one that ran out is dropped).
    #[test]
    fn a_check_that_fans_out_stops_at_the_fuel_limit() {
        let compiled = compile(&fan_out(22), SchemaCheckLimits::default()).expect("compiles");
        assert!(compiled.is_plain(), "the host gives up at its step bound and the checker stops at its fuel");
        let started = std::time::Instant::now();
        let stopped = compiled.check(r#""x""#);
        let took = started.elapsed();
        let limit_units = SchemaCheckLimits::default().fuel_for(r#""x""#.len());
        assert_eq!(stopped, Err(SchemaCheckError::Limit(SchemaCheckLimit::Fuel { limit_units })));
        eprintln!("stopped after {took:?}");
        let message = stopped.expect_err("limit").to_string();
        assert!(message.contains("schema_check.fuel_units"), "{message}");
        // A value that matches visits each level once on the way that succeeds.
        assert_eq!(compiled.check(r#""xy""#), Ok(None));
    }

    /// Compiling is bounded too: a schema past the fuel limit does not compile.
    #[test]
    fn a_compile_past_the_fuel_limit_is_refused() {
        let limits = SchemaCheckLimits { fuel_units: 100_000, fuel_units_per_byte: 0, ..SchemaCheckLimits::default() };
        let refused =
            CompiledSchema::compile_in_checker(&fan_out(3), limits, &DiskCache::new(None)).expect_err("refused");
        assert_eq!(refused, SchemaCheckError::CompileLimit(SchemaCheckLimit::Fuel { limit_units: 100_000 }));
        assert!(refused.to_string().starts_with("compiling the schema took more than 100000 fuel units"), "{refused}");
    }

    /// `uniqueItems` over large integers that jsonschema hashes alike (4.45 s for 1 MiB) and a
    /// pattern that backtracks are bounded the same way.
    #[test]
    fn unique_items_and_backtracking_patterns_stop_at_the_fuel_limit() {
        let limits =
            SchemaCheckLimits { fuel_units: 50_000_000, fuel_units_per_byte: 0, ..SchemaCheckLimits::default() };
        // The default allowance per byte, so that reading the 1.2 MB array fits.
        let per_byte = SchemaCheckLimits { fuel_units: 50_000_000, ..SchemaCheckLimits::default() };
        let unique = compile(&json!({"uniqueItems": true}), per_byte).expect("compiles");
        let numbers: Vec<String> = (0..60_000u64).map(|i| (u64::MAX - i).to_string()).collect();
        let numbers = format!("[{}]", numbers.join(","));
        let limit_units = per_byte.fuel_for(numbers.len());
        assert_eq!(unique.check(&numbers), Err(SchemaCheckError::Limit(SchemaCheckLimit::Fuel { limit_units })));
        // Reading the same array fits the same limits: it is uniqueItems that ran out.
        let any_array = in_checker(&json!({"type": "array"}), per_byte);
        assert_eq!(any_array.check(&numbers), Ok(None));
        let fuel = SchemaCheckError::Limit(SchemaCheckLimit::Fuel { limit_units: 50_000_000 });
        // A back-reference sends the pattern to fancy-regex's backtracking engine: ~32 ms a
        // string natively, so an array of them was minutes.
        let backtracking = json!({"items": {"type": "string", "pattern": "^(?:(a*)*\\1b|.*!)"}});
        let pattern = compile(&backtracking, limits).expect("compiles");
        let strings = format!("[{}]", vec![format!("\"{}\"", "a".repeat(24)); 1000].join(","));
        assert_eq!(pattern.check(&strings), Err(fuel));
        let any_strings = in_checker(&json!({"items": {"type": "string"}}), limits);
        assert_eq!(any_strings.check(&strings), Ok(None), "reading them fits: the pattern ran out");
        assert_eq!(pattern.check(r#"["aab", "x!"]"#), Ok(None));
    }

    /// A large honest value is checked: the fuel grows with its bytes (4 MiB of small numbers,
    /// the daemon's largest request, reads in ~1.7 billion units, past the flat allowance).
    #[test]
    fn a_large_value_gets_fuel_for_its_bytes() {
        let schema = json!({"type": "array", "items": {"type": "integer"}});
        let big = format!("[{}0]", "0,".repeat(2 << 20));
        assert_eq!(in_checker(&schema, SchemaCheckLimits::default()).check(&big), Ok(None));
        // The host's own check of a plain schema is bounded by the value's bytes too, and this
        // value is well within it.
        let plain = compile(&schema, SchemaCheckLimits::default()).expect("compiles");
        assert!(plain.plain.as_ref().is_some_and(|plan| plan.accepts(&big)));
        let flat = SchemaCheckLimits { fuel_units_per_byte: 0, ..SchemaCheckLimits::default() };
        let flat = in_checker(&json!({"type": "array"}), flat);
        assert!(matches!(flat.check(&big), Err(SchemaCheckError::Limit(SchemaCheckLimit::Fuel { .. }))));
    }

    /// A value whose parsed form needs more memory than the limit stops there.
    #[test]
    fn a_check_past_the_memory_limit_stops_there() {
        let limits = SchemaCheckLimits { memory_bytes: 8 << 20, ..SchemaCheckLimits::default() };
        let compiled = in_checker(&json!({"type": "array"}), limits);
        let big = format!("[{}0]", "0,".repeat(1 << 20));
        assert_eq!(
            compiled.check(&big),
            Err(SchemaCheckError::Limit(SchemaCheckLimit::Memory { limit_bytes: 8 << 20 }))
        );
        assert_eq!(compiled.check("[1]"), Ok(None));
    }

    /// At most [`CHECKERS_IDLE_MAX`] instances are kept in a process, whatever the number of
    /// schemas: past it a schema keeps none (and compiles again on its next check). One schema
    /// keeps at most [`CHECKERS_IDLE_PER_SCHEMA_MAX`], however many checks overlapped.
    #[test]
    fn idle_instances_are_capped_per_process() {
        let schemas: Vec<CompiledSchema> = (0..CHECKERS_IDLE_MAX + 8)
            .map(|i| in_checker(&json!({"maxLength": i}), SchemaCheckLimits::default()))
            .collect();
        let keeping = schemas.iter().filter(|s| !s.idle.lock().expect("lock").is_empty()).count();
        assert!(keeping <= CHECKERS_IDLE_MAX, "{keeping} schemas keep an instance");
        let last = schemas.last().expect("schemas");
        assert_eq!(last.check(r#""x""#), Ok(None));
        drop(schemas);
        let kept = in_checker(&json!({"minLength": 1}), SchemaCheckLimits::default());
        assert_eq!(kept.idle.lock().expect("lock").len(), 1, "dropped schemas gave their places back");
        let overlapping: Vec<Instance> = (0..4).map(|_| kept.instance().expect("instance")).collect();
        overlapping.into_iter().for_each(|instance| kept.keep(instance));
        assert_eq!(kept.idle.lock().expect("lock").len(), CHECKERS_IDLE_PER_SCHEMA_MAX);
    }

    /// The one promise of plain checks: a value the host calls valid, jsonschema (in the
    /// checker) calls valid. Schemas drawn from the plain grammar, values drawn to fit them and
    /// then spoiled; every schema drawn must be plain and compile in the checker (so a plain
    /// schema is a JSON Schema), and the host must call enough values valid for the test to mean
    /// something.
    #[test]
    fn plain_checks_agree_with_the_checker() {
        let mut draw = Draw(0x9e37_79b9_7f4a_7c15);
        let (mut accepted, mut checked, mut left_to_the_checker) = (0, 0, 0);
        for round in 0..300 {
            let schema = draw.root_schema();
            let plan = plain::Plan::of(&schema).unwrap_or_else(|| panic!("round {round}: not plain: {schema}"));
            let checker =
                CompiledSchema::compile_in_checker(&schema, SchemaCheckLimits::default(), &DiskCache::new(None))
                    .unwrap_or_else(|e| panic!("round {round}: the checker refuses a plain schema ({e}): {schema}"));
            for _ in 0..20 {
                let value = draw.value_for(&schema, &schema, 0).to_string();
                let verdict = checker.check_in_checker(&value).expect("checked");
                checked += 1;
                if plan.accepts(&value) {
                    accepted += 1;
                    assert_eq!(verdict, None, "round {round}: the host accepts {value} for {schema}");
                } else if verdict.is_none() {
                    left_to_the_checker += 1;
                }
            }
        }
        eprintln!(
            "{checked} values: {accepted} accepted by the host, {left_to_the_checker} valid ones left to the checker"
        );
        assert!(accepted * 4 >= checked, "only {accepted} of {checked} accepted: the draw says little");
    }

    /// Kinds of schemas and values the host must not misjudge.
    #[test]
    fn plain_checks_leave_what_they_cannot_decide_exactly_to_the_checker() {
        let cases = [
            (json!({"type": "integer"}), "1.0", false),
            (json!({"type": "integer"}), "9007199254740993", true),
            (json!({"maximum": 9007199254740992u64}), "9007199254740993", false),
            (json!({"minimum": 0.5}), "9007199254740993", false),
            (json!({"minimum": 0.5}), "1", true),
            (json!({"enum": [1]}), "1.0", true),
            (json!({"enum": [9_007_199_254_740_993u64]}), "9007199254740992.0", false),
            (json!({"const": {"a": [1, "x"]}}), r#"{"a": [1, "x"]}"#, true),
            (json!({"maxLength": 2}), r#""éé""#, true),
            (json!({"format": "email", "type": "string"}), r#""not an email""#, true),
            (json!({"type": "string"}), r#""x"#, false),
            (
                json!({"$defs": {"t": {"type": "object", "properties": {"c": {"$ref": "#/$defs/t"}}}}, "$ref": "#/$defs/t"}),
                r#"{"c": {"c": {}}}"#,
                true,
            ),
        ];
        for (schema, value, plain_yes) in cases {
            let plan = plain::Plan::of(&schema).expect("plain");
            assert_eq!(plan.accepts(value), plain_yes, "{value} against {schema}");
            let compiled = compile(&schema, SchemaCheckLimits::default()).expect("compiles");
            let in_checker = in_checker(&schema, SchemaCheckLimits::default());
            assert_eq!(compiled.check(value), in_checker.check(value), "{value} against {schema}");
        }
        for not_plain in [
            json!({"$schema": "http://json-schema.org/draft-07/schema#"}),
            json!({"pattern": "a"}),
            json!({"type": "strnig"}),
            json!({"required": ["a", "a"]}),
            json!({"minLength": 1.0}),
            json!({"$ref": "#/$defs/missing"}),
            json!({"$defs": {"a~b": true}}),
            json!({"properties": {"a": {"$id": "x"}}}),
            json!({"anyOf": []}),
            json!({"x-custom": 1}),
            json!({"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/b"}]}, "b": {"allOf": [{"$ref": "#/$defs/a"}]}}}),
        ] {
            assert!(plain::Plan::of(&not_plain).is_none(), "{not_plain} is taken as plain");
        }
    }

    /// A small deterministic generator (xorshift) of plain schemas and values.
    struct Draw(u64);

    impl Draw {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).expect("small")
        }
        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }
        fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
            &from[self.below(from.len())]
        }

        const NAMES: [&'static str; 5] = ["a", "b", "c", "é", "a/b"];
        const TYPES: [&'static str; 7] = ["null", "boolean", "object", "array", "number", "string", "integer"];

        fn number(&mut self) -> serde_json::Value {
            let numbers = [
                json!(0),
                json!(1),
                json!(-1),
                json!(3),
                json!(1.0),
                json!(1.5),
                json!(-2.5),
                json!(0.1),
                json!(9_007_199_254_740_993u64),
                json!(u64::MAX),
                json!(i64::MIN),
                json!(1e300),
            ];
            self.pick(&numbers).clone()
        }

        fn root_schema(&mut self) -> serde_json::Value {
            let defs = self.below(3);
            let mut root = serde_json::Map::new();
            if defs > 0 {
                let mut map = serde_json::Map::new();
                for i in 0..defs {
                    // A definition refers only to those before it: no reference loops that
                    // consume nothing, which jsonschema itself does not bound.
                    map.insert(format!("d{i}"), self.schema(2, i));
                }
                root.insert("$defs".into(), map.into());
            }
            if self.chance(50) {
                root.insert("$schema".into(), "https://json-schema.org/draft/2020-12/schema".into());
            }
            if let serde_json::Value::Object(body) = self.schema(0, defs) {
                root.extend(body);
            }
            root.into()
        }

        fn schema(&mut self, depth: usize, defs: usize) -> serde_json::Value {
            if self.chance(8) {
                return json!(self.chance(70));
            }
            let mut s = serde_json::Map::new();
            let deeper = depth < 3;
            if self.chance(70) {
                let t = if self.chance(75) {
                    json!(self.pick(&Self::TYPES))
                } else {
                    json!([self.pick(&Self::TYPES[..3]), self.pick(&Self::TYPES[3..])])
                };
                s.insert("type".into(), t);
            }
            if deeper && self.chance(40) {
                let mut properties = serde_json::Map::new();
                for _ in 0..=self.below(3) {
                    properties.insert((*self.pick(&Self::NAMES)).into(), self.schema(depth + 1, defs));
                }
                s.insert("properties".into(), properties.into());
            }
            if self.chance(25) {
                let mut required: Vec<&str> = Self::NAMES.iter().copied().filter(|_| self.chance(30)).collect();
                required.dedup();
                s.insert("required".into(), json!(required));
            }
            if deeper && self.chance(25) {
                let additional = if self.chance(50) { json!(self.chance(50)) } else { self.schema(depth + 1, defs) };
                s.insert("additionalProperties".into(), additional);
            }
            if deeper && self.chance(30) {
                s.insert("items".into(), self.schema(depth + 1, defs));
            }
            if self.chance(8) {
                let options: Vec<_> = (0..=self.below(3)).map(|_| self.scalar()).collect();
                s.insert("enum".into(), options.into());
            }
            if self.chance(4) {
                s.insert("const".into(), self.scalar());
            }
            for keyword in ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] {
                if self.chance(8) {
                    s.insert(keyword.into(), self.number());
                }
            }
            for keyword in ["minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"] {
                if self.chance(8) {
                    s.insert(keyword.into(), json!(self.below(4)));
                }
            }
            for keyword in ["anyOf", "allOf"] {
                if deeper && self.chance(10) {
                    let branches: Vec<_> = (0..=self.below(2)).map(|_| self.schema(depth + 1, defs)).collect();
                    s.insert(keyword.into(), branches.into());
                }
            }
            if defs > 0 && self.chance(25) {
                s.insert("$ref".into(), format!("#/$defs/d{}", self.below(defs)).into());
            }
            for (keyword, value) in [
                ("title", json!("T")),
                ("description", json!("D")),
                ("format", json!(self.pick(&["email", "uint32", "date-time"]))),
                ("default", json!(null)),
                ("examples", json!([1])),
                ("deprecated", json!(true)),
            ] {
                if self.chance(10) {
                    s.insert(keyword.into(), value);
                }
            }
            s.into()
        }

        fn string(&mut self) -> serde_json::Value {
            let pieces = ["", "a", "é", "ab", "a/b", "xyz", "ééé"];
            json!(self.pick(&pieces))
        }

        fn scalar(&mut self) -> serde_json::Value {
            match self.below(5) {
                0 => json!(null),
                1 => json!(self.chance(50)),
                2 => self.number(),
                3 => self.string(),
                _ => json!([self.number()]),
            }
        }

        /// A value meant to fit `schema` (within `root`, for references), spoiled now and then.
        fn value_for(
            &mut self,
            schema: &serde_json::Value,
            root: &serde_json::Value,
            depth: usize,
        ) -> serde_json::Value {
            if depth > 6 || self.chance(10) {
                return self.scalar();
            }
            let Some(s) = schema.as_object() else { return self.scalar() };
            if let Some(options) = s.get("enum").and_then(|o| o.as_array()) {
                return self.pick(options).clone();
            }
            if let Some(constant) = s.get("const") {
                return constant.clone();
            }
            if let Some(target) = s.get("$ref").and_then(|r| r.as_str()).and_then(|r| r.strip_prefix("#/$defs/"))
                && self.chance(50)
            {
                return self.value_for(&root["$defs"][target], root, depth + 1);
            }
            if let Some(branches) = s.get("anyOf").and_then(|b| b.as_array())
                && self.chance(50)
            {
                let branch = self.pick(branches).clone();
                return self.value_for(&branch, root, depth + 1);
            }
            let type_name = match s.get("type") {
                Some(serde_json::Value::String(t)) => t.clone(),
                Some(serde_json::Value::Array(ts)) => self.pick(ts).as_str().unwrap_or("null").to_owned(),
                _ => (*self.pick(&Self::TYPES)).to_owned(),
            };
            match type_name.as_str() {
                "null" => json!(null),
                "boolean" => json!(self.chance(50)),
                "number" | "integer" => self.number(),
                "string" => self.string(),
                "array" => {
                    let items = s.get("items").cloned().unwrap_or(json!(true));
                    (0..self.below(4)).map(|_| self.value_for(&items, root, depth + 1)).collect()
                }
                _ => {
                    let mut object = serde_json::Map::new();
                    let properties = s.get("properties").and_then(|p| p.as_object()).cloned().unwrap_or_default();
                    for (name, property) in &properties {
                        if self.chance(70) {
                            object.insert(name.clone(), self.value_for(property, root, depth + 1));
                        }
                    }
                    for name in s.get("required").and_then(|r| r.as_array()).into_iter().flatten() {
                        let name = name.as_str().unwrap_or_default().to_owned();
                        if !object.contains_key(&name) && self.chance(90) {
                            let property = properties.get(&name).cloned().unwrap_or(json!(true));
                            object.insert(name, self.value_for(&property, root, depth + 1));
                        }
                    }
                    if self.chance(20) {
                        object.insert("extra".into(), self.scalar());
                    }
                    object.into()
                }
            }
        }
    }
}
