//! [`Runtime`]: load a component as a [`Tool`] (digest, compile-or-cache, link, describe: in
//! `load.rs`) and run it under [`Limits`] and an [`EffectivePolicy`], classifying the end of
//! every run into an [`Outcome`] (the types a caller reads are in `outcome.rs`, the output
//! contract in `output.rs`).

use crate::bindings::exports::guild::tool::tool as wit;
use crate::cache::DiskCache;
use crate::cancel::{CancellationToken, Cancelled, arm_deadline, elapsed_ms};
use crate::command::{CommandIo, Passthrough};
use crate::egress::BreakerSettings;
use crate::egress::connect::{Connections, HTTP_CONNECTIONS_MAX_DEFAULT};
use crate::egress::hook::{EgressHooks, EgressRun};
use crate::engine::{EngineSettings, build_engine, deadline_ticks, spawn_epoch_ticker};
use crate::error::{RunError, RuntimeError};
use crate::gpu::GpuRun;
use crate::guard::{Guard, Stop};
use crate::hermetic::RunMode;
use crate::logs::{LogLine, LogSink, LogSource};
use crate::quota::MountQuotas;
use crate::record::{Recorder, SeededRandom, TapeMonotonicClock, TapeWallClock};
use crate::recording::RecordingConfig;
use crate::state::{HostState, RunLimiter};
use crate::{LimitHit, Limits};
use guild_vocab::Access;
use guild_vocab::EngineFingerprint;
use guild_vocab::{EffectivePolicy, Grants};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wasmtime_wasi_http::WasiHttpCtx;

pub use crate::outcome::RunReport;

/// Whom a run is for, and which revision of its tool's name runs: both named in the bundle's
/// `action.json` (the principal may read the bundle back).
#[derive(Clone)]
pub struct RunFor<'a> {
    /// The tenant and subject the run is for.
    pub principal: &'a guild_replay::Principal,
    /// The revision of the tool's name, when the host keeps revisions.
    pub revision: Option<u32>,
    /// The budgets its LLM requests are held to (asked before each, told after each response).
    pub meter: Option<Arc<dyn guild_replay::cost::TokenMeter>>,
    /// The price table its cost is reckoned at as it is sealed, into its exec record.
    pub pricing: Option<Arc<guild_replay::cost::PriceTable>>,
    /// The host's keyed egress limits and upstream throttles its live requests are held to.
    pub gate: Option<Arc<dyn guild_vocab::egress::EgressGate>>,
}
use guild_vocab::{Outcome, ToolErrorKind};

mod call;
mod load;
mod prepared;
pub(crate) mod types;

pub use prepared::Prepared;
pub use types::Tool;
pub(crate) use types::{Entry, Execution, RunEnv};

use crate::output::check_output;
use call::{Call, Returned, call_entry, command_io, exited};
use load::LoadedTools;

/// How the runtime is set up.
#[derive(Clone, Default)]
pub struct RuntimeConfig {
    /// Directory for compiled artifacts (`<GUILD_HOME>/cache`); `None` keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Engine-wide settings, fixed for the runtime's life: the wasm stack, the pools' sizes and
    /// the ceilings no run's limits may exceed, fuel metering.
    pub engine: EngineSettings,
    /// Loaded tools kept in memory; the least recently used is dropped past this.
    pub tools_loaded_max: usize,
    /// Where to record a bundle of every run; `None` records nothing.
    pub recording: Option<RecordingConfig>,
    /// Circuit breakers for egress upstreams.
    pub breakers: BreakerSettings,
    /// Outgoing HTTP connections open at once across all runs (0: the default,
    /// [`HTTP_CONNECTIONS_MAX_DEFAULT`]); a request that finds them all in use waits up to its
    /// connect timeout.
    pub http_connections_max: usize,
    /// PEM files of CA certificates trusted for egress TLS besides the webpki roots.
    pub tls_ca_files: Vec<PathBuf>,
    /// What to do with GPU work (the device is opened on the first dispatch that needs it).
    pub gpu: guild_gpu::GpuConfig,
    /// What a hermetic run may hold of its mounts (snapshot bytes, file identities, listings).
    pub hermetic: crate::HermeticBounds,
    /// What checking a value against a tool's own JSON Schema may use (fuel, memory).
    pub schema_check: crate::SchemaCheckLimits,
}

/// Fuel `describe` may burn when a tool is loaded (~0.1 s of compute).
pub const DESCRIBE_FUEL_UNITS: u64 = 2_000_000_000;
/// Wall-clock limit for `describe` when a tool is loaded.
pub const DESCRIBE_TIMEOUT_MS: u64 = 5_000;

/// Default for [`RuntimeConfig::tools_loaded_max`].
pub const TOOLS_LOADED_MAX_DEFAULT: usize = 256;

/// The engine, linker and caches. Cheap to share behind an `Arc`; runs are independent.
///
/// A tool's life in three calls: [`Runtime::load`] (hash, compile or take from the cache, link,
/// call `describe` once), [`Runtime::run`] (one call under grants and limits, recorded as a
/// bundle when the runtime has a store), and [`Runtime::replay`] (that bundle re-run from its
/// tape and compared). The example runs the `echo` tool built by `guild-test-artifacts`:
///
/// ```
/// use guild_replay::{Bundle, DirStore, HostKey};
/// use guild_runtime::{
///     CacheSource, Grants, Limits, Outcome, RecordingConfig, ReplayOptions, Runtime, RuntimeConfig,
/// };
/// use std::sync::Arc;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let home = tempfile::tempdir()?;
/// let store = Arc::new(DirStore::open(home.path().join("store"))?);
/// let recording = RecordingConfig::new(store.clone(), Arc::new(HostKey::generate()?));
/// let runtime = Runtime::new(RuntimeConfig { recording: Some(recording), ..RuntimeConfig::default() })?;
///
/// // The pipeline is async (wasmtime's async API); the CLI drives it on a current-thread runtime.
/// let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// tokio.block_on(async {
///     // Load: the first load of a component compiles it; its `describe` answer is kept.
///     let bytes = std::fs::read(guild_test_artifacts::ECHO)?;
///     let (tool, source) = runtime.load(&bytes).await?;
///     assert!(matches!(source, CacheSource::Compiled));
///     assert_eq!(tool.info().name, "echo");
///
///     // Run: no mounts, hosts or secrets granted; default limits (fuel, memory, time, ...).
///     let input = r#"{"message":"hi"}"#;
///     let report = runtime.run(&tool, input, &Grants::default(), &Limits::default()).await?;
///     assert_eq!(report.outcome, Outcome::Output { output: input.to_string() });
///
///     // Replay: open the recorded bundle (signature and digests checked), re-run it from its tape.
///     let (manifest, signature) = store.get_bundle(&report.bundle.ok_or("recording is on")?)?;
///     let bundle = Bundle::open(store.as_ref(), &manifest, &signature, None)?;
///     let replayed = runtime.replay(&bundle, store.as_ref(), &ReplayOptions::default()).await?;
///     assert_eq!(replayed.mismatch, None);
///     assert_eq!(replayed.fuel_replayed_units, report.fuel_used_units);
///     Ok(())
/// })
/// # }
/// ```
pub struct Runtime {
    engine: Engine,
    fingerprint: EngineFingerprint,
    settings: EngineSettings,
    hermetic: crate::HermeticBounds,
    schema_check: crate::SchemaCheckLimits,
    linker: Linker<HostState>,
    /// Preview-1 modules' linker: wasmtime-wasi's preview 1, nothing else.
    module_linker: wasmtime::Linker<HostState>,
    disk: DiskCache,
    tools: Mutex<LoadedTools>,
    recording: Option<RecordingConfig>,
    breakers: Arc<guild_breaker::Breakers>,
    connections: Arc<Connections>,
    tls: Arc<rustls::ClientConfig>,
    gpu: Arc<guild_gpu::GpuHost>,
}

impl Runtime {
    /// Build the engine, the linker and the caches.
    ///
    /// # Errors
    /// [`RuntimeError::Config`] when a size setting does not fit this machine or a CA file cannot
    /// be read or holds no certificate; [`RuntimeError::Engine`] when wasmtime refuses the
    /// configuration or the linker, the epoch ticker thread cannot start, or a GPU kernel does not
    /// validate.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let (engine, fingerprint) = build_engine(&config.engine)?;
        spawn_epoch_ticker(&engine)?;
        let mut linker = Linker::new(&engine);
        let link_error = |e: wasmtime::Error| RuntimeError::Engine(format!("{e:#}"));
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link_error)?;
        // Guild's wasi:filesystem, with the mounts' write quotas in front of wasmtime-wasi's.
        crate::quota::add_to_linker(&mut linker, HostState::quota_fs).map_err(link_error)?;
        // Guild's wasi:clocks/monotonic-clock: a hermetic run's timers on its virtual time.
        crate::virtual_time::add_to_linker(&mut linker, HostState::virtual_clock).map_err(link_error)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(link_error)?;
        // guild:tool's own imports: types and log on the run's state, gpu on its GPU view.
        use crate::bindings::guild::tool::{gpu, log, types};
        types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(link_error)?;
        log::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(link_error)?;
        gpu::add_to_linker::<_, crate::gpu::GpuData>(&mut linker, HostState::gpu_view).map_err(link_error)?;
        let mut module_linker = wasmtime::Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut module_linker, HostState::p1_ctx).map_err(link_error)?;
        if let Some(recording) = &config.recording {
            crate::recording::sweep_snapshots(&recording.store);
        }
        let cache_dir = config.cache_dir.map(|dir| dir.join(&fingerprint.id));
        let max = if config.tools_loaded_max == 0 { TOOLS_LOADED_MAX_DEFAULT } else { config.tools_loaded_max };
        Ok(Self {
            engine,
            fingerprint,
            settings: config.engine,
            hermetic: config.hermetic,
            schema_check: config.schema_check,
            linker,
            module_linker,
            disk: DiskCache::new(cache_dir),
            tools: Mutex::new(LoadedTools::new(max)),
            recording: config.recording,
            breakers: Arc::new(crate::egress::breaker::breakers(config.breakers)),
            connections: Arc::new(Connections::new(match config.http_connections_max {
                0 => HTTP_CONNECTIONS_MAX_DEFAULT,
                n => n,
            })),
            tls: crate::egress::connect::tls_config(&config.tls_ca_files).map_err(RuntimeError::Config)?,
            gpu: Arc::new(guild_gpu::GpuHost::new(config.gpu).map_err(|e| RuntimeError::Engine(e.to_string()))?),
        })
    }

    /// Every egress upstream (`scheme://host:port`) a breaker tracks, and whether it refuses
    /// requests now (open or half-open).
    pub fn breaker_states(&self) -> Vec<(String, bool)> {
        self.breakers.states()
    }

    /// The host's GPU service, shared by all runs.
    pub fn gpu(&self) -> &Arc<guild_gpu::GpuHost> {
        &self.gpu
    }

    /// Sign `digest` (a document kept beside bundles, such as a rollout gate's report) with the
    /// host key this runtime signs bundles with: the same signature document a bundle gets,
    /// checked with [`guild_replay::BundleSignature::verify`].
    ///
    /// # Errors
    /// [`RunError::Record`] when the runtime records nothing (it holds no key) or its signer
    /// has stopped.
    pub async fn sign(&self, digest: guild_replay::Digest) -> Result<guild_replay::BundleSignature, RunError> {
        match &self.recording {
            Some(recording) => recording.sign(digest).await,
            None => Err(RunError::Record("this runtime records nothing, so it holds no key to sign with".into())),
        }
    }

    /// The public half of the key this runtime signs bundles with; `None` when it records
    /// nothing.
    pub fn public_key(&self) -> Option<guild_replay::PublicKey> {
        self.recording.as_ref().map(|r| r.key.public())
    }

    /// The fingerprint of this engine.
    pub fn fingerprint(&self) -> &EngineFingerprint {
        &self.fingerprint
    }

    /// Run `tool` on `input` with `grants` under `limits`, recording a bundle when the runtime
    /// was configured with a store.
    ///
    /// # Errors
    /// Only for a run that never started or could not be recorded: [`RunError::Denied`] when
    /// `grants` do not fit what the tool asks for; [`RunError::Limits`] when `limits` exceed what
    /// this engine was built for (or a mount is too large, or holds a name, a bundle cannot
    /// record); [`RunError::Busy`] when every run slot is taken; [`RunError::Host`] when the host
    /// fails; [`RunError::Record`] when the store fails, and the result is not trusted either.
    /// Every run that starts ends in a [`RunReport`] whose [`Outcome`] says how.
    ///
    /// The example on [`Runtime`] loads a tool, runs it and replays the run.
    pub async fn run(&self, tool: &Tool, input: &str, grants: &Grants, limits: &Limits) -> Result<RunReport, RunError> {
        self.run_cancellable(tool, input, grants, limits, CancellationToken::new()).await
    }

    /// [`Runtime::run`], stopped early when `cancel` is cancelled: the run then ends in
    /// [`Outcome::Cancelled`] and is recorded like any other.
    ///
    /// # Errors
    /// As [`Runtime::run`].
    pub async fn run_cancellable(
        &self,
        tool: &Tool,
        input: &str,
        grants: &Grants,
        limits: &Limits,
        cancel: CancellationToken,
    ) -> Result<RunReport, RunError> {
        self.run_as(tool, input, grants, limits, cancel, None).await
    }

    /// [`Runtime::run_cancellable`] on behalf of `run_for.principal`, whom the bundle names as
    /// the one who may read it back, naming the revision that ran.
    ///
    /// # Errors
    /// As [`Runtime::run`].
    pub async fn run_as(
        &self,
        tool: &Tool,
        input: &str,
        grants: &Grants,
        limits: &Limits,
        cancel: CancellationToken,
        run_for: Option<&RunFor<'_>>,
    ) -> Result<RunReport, RunError> {
        let prepared = self.prepare(tool, input, grants, limits, RunMode::Live).await?;
        self.run_prepared(tool, prepared, grants, limits, cancel, run_for).await
    }

    /// [`Runtime::run`] of a WASI command whose stdout and stderr also go to `passthrough` as
    /// the program writes them (each write once accepted within its bound: `output_bytes_max`
    /// for stdout, `log_bytes_max` for stderr), as `guild run` shows them; they are captured,
    /// recorded and returned as for any run. A `guild-tool` component's streams are its log and
    /// are not passed through.
    ///
    /// # Errors
    /// As [`Runtime::run`].
    pub async fn run_passing_through(
        &self,
        tool: &Tool,
        input: &str,
        grants: &Grants,
        limits: &Limits,
        passthrough: &Passthrough,
    ) -> Result<RunReport, RunError> {
        let prepared = self.prepare(tool, input, grants, limits, RunMode::Live).await?;
        let cancel = CancellationToken::new();
        self.run_prepared_inner(tool, prepared, grants, limits, cancel, None, Some(passthrough)).await
    }

    /// Instantiate and call `run` once: the part a live run and a replay share.
    pub(crate) async fn execute(
        &self,
        tool: &Tool,
        input: &str,
        policy: &EffectivePolicy,
        limits: &Limits,
        env: RunEnv,
    ) -> Result<Execution, RunError> {
        let RunEnv { seed, recorder, replay_bodies, secrets, replay_gpu, cancel, stop, passthrough, meter, gate } = env;
        let egress = Arc::new(
            EgressRun::new(
                tool.info.name.clone(),
                policy.egress.clone(),
                policy.tool_hosts.clone(),
                limits.clone(),
                recorder.clone(),
                replay_bodies,
            )
            .with_secrets(policy.secret_grants.clone(), secrets)
            .with_network(self.breakers.clone(), self.connections.clone())
            .with_tls(self.tls.clone())
            .with_meter(meter)
            .with_gate(gate),
        );
        let info = &tool.info;
        let gpu =
            GpuRun::new(self.gpu.clone(), &info.name, info.capabilities.gpu, limits, recorder.clone(), replay_gpu);
        let recorder = recorder.as_ref();
        let command = match command_io(tool, input, limits, passthrough.as_ref()) {
            Ok(command) => command,
            Err(refused) => return Ok(Execution::refused(refused)),
        };
        let captured = command.as_ref().map(|io| (io.stdout.clone(), io.stderr.clone()));
        let call = self.call_for(tool, policy).await?;
        let preview1 = matches!(call, Call::Preview1(_));
        let hooks =
            StoreHooks { egress: egress.clone(), gpu, cancel: Some(&cancel), stop: stop.clone(), command, preview1 };
        let mut store = self.new_store(policy, limits, &seed, recorder, hooks)?;
        let started = Instant::now();
        // The epoch deadline interrupts wasm; this outer deadline also covers a guest parked in a
        // host call. Dropping the future abandons the run and its store.
        let backstop = limits.timeout() + Duration::from_millis(2 * crate::EPOCH_TICK_MS);
        // Cancelling drops a guest parked in a host call here; a computing guest traps with
        // `Cancelled` at its next epoch check.
        let called = tokio::select! {
            called = tokio::time::timeout(backstop, call_entry(&call, &mut store, input)) => Some(called),
            () = cancel.cancelled() => None,
        };
        let wall_time = started.elapsed();
        let logs = store.data().logs.finish();
        let outcome = match called {
            None => Outcome::Cancelled { after_ms: elapsed_ms(wall_time) },
            Some(Err(_elapsed)) => Outcome::Limit(LimitHit::Timeout { limit_ms: limits.timeout_ms }),
            Some(Ok(Ok(Returned::Tool(Ok(output))))) => check_output(output, tool.output_schema.as_ref()),
            Some(Ok(Ok(Returned::Tool(Err(error))))) => tool_error(error),
            // `exit(n)` and returning from `main` are how a command answers, not failures.
            Some(Ok(Ok(Returned::Command(status)))) => exited(i32::from(status.is_err()), captured.as_ref()),
            Some(Ok(Err(error))) if captured.is_some() && error.downcast_ref::<wasmtime_wasi::I32Exit>().is_some() => {
                let code = error.downcast_ref::<wasmtime_wasi::I32Exit>().map_or(1, |exit| exit.0);
                exited(code, captured.as_ref())
            }
            Some(Ok(Err(trap))) if trap.downcast_ref::<Cancelled>().is_some() => {
                Outcome::Cancelled { after_ms: elapsed_ms(wall_time) }
            }
            // `run` returned (no wasm frame is on the error) and copying its result out of the
            // guest failed.
            Some(Ok(Err(error)))
                if store.data().guard.returned()
                    && error.downcast_ref::<wasmtime::WasmBacktrace>().is_none()
                    && error.downcast_ref::<Trap>().is_none()
                    && error.downcast_ref::<LimitHit>().is_none()
                    && stop.hit().is_none() =>
            {
                result_error(&error, limits)
            }
            Some(Ok(Err(trap))) => {
                // A command's stderr is not in the log: show its tail from the capture.
                let stderr = captured.as_ref().map(|(_, stderr)| stderr.log_lines());
                self.classify_trap(&trap, limits, stderr.as_deref().unwrap_or(&logs))?
            }
        };
        // A limit raised inside a host call ends the run with that limit, whatever the guest
        // did after it was told (a write past a quota the tool caught and reported, say).
        let outcome = match (stop.hit(), outcome) {
            (_, cancelled @ Outcome::Cancelled { .. }) => cancelled,
            (Some(hit), _) => Outcome::Limit(hit),
            (None, outcome) => outcome,
        };
        // Read where the guest stopped, whatever stopped it: a timed-out or cancelled run is
        // charged what it burnt (to within FUEL_YIELD_INTERVAL_UNITS), not what it had burnt
        // at its last host call.
        let fuel_used_units = match store.get_fuel() {
            Ok(left) => limits.fuel_units.saturating_sub(left),
            Err(_) => 0,
        };
        Ok(Execution {
            outcome,
            fuel_used_units,
            memory_bytes_peak: store.data().limiter.memory_bytes_used(),
            wall_time,
            logs,
            egress_denials: egress.denials(),
            egress_refusals: egress.refusals(),
            egress_requests: egress.requests(),
            egress_upstream_failures: egress.upstream_failures(),
            egress_throttled_ms: egress.throttled_ms(),
            egress_limited: egress.limited(),
            gpu_time: store.data().gpu.time(),
            host_identity_read: store.data().quotas.host_identity_read,
            trace: guild_telemetry::ids(&tracing::Span::current()),
        })
    }

    fn check_limits(&self, limits: &Limits) -> Result<(), RunError> {
        if limits.memory_bytes_max > self.settings.memory_bytes_ceiling {
            return Err(RunError::Limits(format!(
                "memory limit {} is above this host's ceiling of {} (memory_bytes_ceiling)",
                crate::human_bytes(limits.memory_bytes_max),
                crate::human_bytes(self.settings.memory_bytes_ceiling)
            )));
        }
        if limits.table_elements_max > self.settings.table_elements_ceiling {
            return Err(RunError::Limits(format!(
                "table limit {} is above this host's ceiling of {} (table_elements_ceiling)",
                limits.table_elements_max, self.settings.table_elements_ceiling
            )));
        }
        Ok(())
    }

    fn new_store(
        &self,
        policy: &EffectivePolicy,
        limits: &Limits,
        seed: &[u8; 32],
        recorder: Option<&Recorder>,
        hooks: StoreHooks<'_>,
    ) -> Result<Store<HostState>, RunError> {
        let StoreHooks { egress, gpu, cancel, stop, command, preview1 } = hooks;
        let logs = LogSink::new(limits.log_bytes_max, recorder.cloned());
        let mut wasi = WasiCtxBuilder::new();
        match command {
            // A command's stdout and stderr are its output; its stdin, unless given, is at its end.
            Some(io) => {
                wasi.args(&io.argv).envs(&io.env).stdout(io.stdout).stderr(io.stderr);
                if let Some(stdin) = io.stdin {
                    wasi.stdin(wasmtime_wasi::p2::pipe::MemoryInputPipe::new(stdin));
                }
            }
            None => {
                wasi.stdout(logs.stdio(LogSource::Stdout)).stderr(logs.stdio(LogSource::Stderr));
            }
        }
        // All of the guest's randomness flows from the seed, so the seed alone replays it.
        let mut insecure_seed = [0u8; 16];
        rand::TryRng::try_fill_bytes(&mut SeededRandom::new(seed, "insecure-seed"), &mut insecure_seed)
            .unwrap_or_else(|never| match never {});
        wasi.secure_random(SeededRandom::new(seed, "secure"))
            .insecure_random(SeededRandom::new(seed, "insecure"))
            .insecure_random_seed(u128::from_le_bytes(insecure_seed));
        if let Some(recorder) = recorder {
            wasi.wall_clock(TapeWallClock(recorder.clone()))
                .monotonic_clock(TapeMonotonicClock { recorder: recorder.clone(), start: Instant::now() });
        }
        for mount in &policy.mounts {
            let perms = match mount.access {
                Access::ReadOnly => FsPerms::ReadOnly,
                Access::ReadWrite => FsPerms::ReadWrite,
            };
            wasi.preopened_dir(&mount.host_path, &mount.guest_path, perms).map_err(|e| {
                RunError::Host(format!("cannot open {} for mounting: {e:#}", mount.host_path.display()))
            })?;
        }
        // Every WASI resource (an open file, a stream, a pollable) is an entry in this table:
        // bounding it bounds the host descriptors one run holds, at the same count every time.
        let mut table = ResourceTable::new();
        table.set_max_capacity(usize::try_from(limits.wasi_resources_max).unwrap_or(usize::MAX));
        // Every entry into the host notes the fuel left, so each effect records when it happened
        // in the guest's own deterministic time.
        let quotas = MountQuotas::new(policy, limits, &stop)
            .hermetic(recorder.is_some_and(|r| r.synthetic().is_some()).then_some(self.hermetic));
        let guard = Guard::new(stop, recorder.map(Recorder::fuel_gauge), limits.output_bytes_max);
        let (wasi, p1) = if preview1 {
            // Preview 1 keeps its descriptors in its own table: bounded the same way.
            let mut p1 = wasi.build_p1();
            wasmtime_wasi::WasiView::ctx(&mut p1)
                .table
                .set_max_capacity(usize::try_from(limits.wasi_resources_max).unwrap_or(usize::MAX));
            (WasiCtxBuilder::new().build(), Some(p1))
        } else {
            (wasi.build(), None)
        };
        let state = HostState {
            wasi,
            p1,
            http: WasiHttpCtx::new(),
            egress: EgressHooks(egress),
            table,
            limiter: RunLimiter::new(limits),
            logs,
            gpu,
            guard,
            quotas,
            synthetic: recorder.and_then(Recorder::synthetic),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        if self.settings.fuel_metering {
            store.set_fuel(limits.fuel_units).map_err(|e| RunError::Host(format!("{e:#}")))?;
            store
                .fuel_async_yield_interval(Some(FUEL_YIELD_INTERVAL_UNITS))
                .map_err(|e| RunError::Host(format!("{e:#}")))?;
        }
        arm_deadline(&mut store, deadline_ticks(limits.timeout_ms), cancel);
        crate::guard::install(&mut store, self.settings.fuel_metering);
        Ok(store)
    }

    fn classify_trap(&self, error: &wasmtime::Error, limits: &Limits, logs: &[LogLine]) -> Result<Outcome, RunError> {
        if let Some(hit) = error.downcast_ref::<LimitHit>() {
            return Ok(Outcome::Limit(hit.clone()));
        }
        if resource_table_full(error) {
            return Ok(Outcome::Limit(LimitHit::Resources { limit_resources: limits.wasi_resources_max }));
        }
        if error.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() {
            return Err(RunError::Busy { slots: self.settings.concurrent_runs_max });
        }
        if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return Ok(Outcome::Trap { message: with_stderr(format!("the tool exited with code {}", exit.0), logs) });
        }
        let hit = match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => {
                Some(LimitHit::Fuel { used_units: limits.fuel_units, limit_units: limits.fuel_units })
            }
            Some(Trap::Interrupt) => Some(LimitHit::Timeout { limit_ms: limits.timeout_ms }),
            Some(Trap::StackOverflow) => Some(LimitHit::Stack { stack_bytes: self.settings.wasm_stack_bytes }),
            _ => None,
        };
        Ok(match hit {
            Some(hit) => Outcome::Limit(hit),
            None => Outcome::Trap { message: with_stderr(format!("the tool trapped: {}", trap_summary(error)), logs) },
        })
    }
}

/// `run` returned but its result could not be copied out of the guest. The copy is bounded by
/// wasmtime's hostcall fuel, which the call hook set to `output_bytes_max` for exactly this copy;
/// wasmtime reports running out of it as a private error type, so it is recognised by its text
/// (wasmtime is pinned; `huge_outputs_are_refused_before_they_are_copied` fails if it changes).
/// Anything else is a result the guest laid out wrongly.
fn result_error(error: &wasmtime::Error, limits: &Limits) -> Outcome {
    if error.chain().any(|e| e.to_string().contains("fuel allocated for hostcalls has been exhausted")) {
        return Outcome::Limit(LimitHit::Output { limit_bytes: limits.output_bytes_max });
    }
    Outcome::Trap { message: format!("the tool's result could not be read: {error:#}") }
}

/// Whether wasmtime refused a new resource because the run's table was full.
fn resource_table_full(error: &wasmtime::Error) -> bool {
    use wasmtime::component::ResourceTableError;
    error.chain().any(|e| matches!(e.downcast_ref::<ResourceTableError>(), Some(ResourceTableError::Full)))
}

fn tool_error(error: wit::ToolError) -> Outcome {
    let (kind, message) = match error {
        wit::ToolError::InvalidInput(m) => (ToolErrorKind::InvalidInput, m),
        wit::ToolError::Failed(m) => (ToolErrorKind::Failed, m),
        wit::ToolError::Denied(m) => (ToolErrorKind::Denied, m),
    };
    Outcome::ToolError { kind, message }
}

/// The first line of a trap's message: the trap itself, without wasmtime's backtrace.
fn trap_summary(error: &wasmtime::Error) -> String {
    match error.downcast_ref::<Trap>() {
        Some(Trap::MemoryOutOfBounds) => format!(
            "{} (in a Rust tool this is often its shadow stack overflowing from deep recursion)",
            Trap::MemoryOutOfBounds
        ),
        Some(trap) => trap.to_string(),
        None => format!("{error}").lines().next().unwrap_or("unknown error").to_string(),
    }
}

/// Append the last lines of the guest's stderr (a Rust panic message lands there).
fn with_stderr(summary: String, logs: &[LogLine]) -> String {
    const STDERR_LINES_SHOWN: usize = 5;
    let stderr: Vec<&str> = logs.iter().filter(|l| l.source == LogSource::Stderr).map(|l| l.message.as_str()).collect();
    if stderr.is_empty() {
        return summary;
    }
    let tail = &stderr[stderr.len().saturating_sub(STDERR_LINES_SHOWN)..];
    format!("{summary}; stderr: {}", tail.join(" | "))
}

/// The host services a run's store is wired to.
struct StoreHooks<'a> {
    egress: Arc<EgressRun>,
    gpu: GpuRun,
    cancel: Option<&'a CancellationToken>,
    stop: Arc<Stop>,
    /// A command's argv, environment, stdin and captured stdout and stderr.
    command: Option<CommandIo>,
    /// Whether the store runs a preview-1 module (its WASI context is preview 1's).
    preview1: bool,
}

/// Fuel a computing guest burns between two flushes of its fuel count to the store (and two
/// yields to the async runtime). The count a timeout or a cancellation reads is at most this far
/// behind (about 7 ms of compute on the reference machine, at ~15 billion units/s), and a guest
/// that never calls the host still lets other tasks on its thread run that often. Measured on the
/// 2-core reference machine (`cargo bench --bench warm_call`, a 1.5-billion-unit spin): every
/// 10 million units cost +72% over epoch-only metering, every 100 million +1.3%.
pub const FUEL_YIELD_INTERVAL_UNITS: u64 = 100_000_000;
