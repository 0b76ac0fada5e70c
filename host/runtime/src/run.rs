//! [`Runtime`]: load a component as a [`Tool`] (digest, compile-or-cache, link, describe) and run
//! it under [`Limits`] and an [`EffectivePolicy`], classifying the end of every run into an
//! [`Outcome`].

use crate::bindings::exports::guild::tool::tool as wit;
use crate::bindings::{GuildTool, GuildToolPre};
use crate::cache::{CacheSource, DiskCache};
use crate::cancel::{CancellationToken, Cancelled, arm_deadline, elapsed_ms};
use crate::egress::BreakerSettings;
use crate::egress::breaker::Breakers;
use crate::egress::hook::{EgressHooks, EgressRun};
use crate::engine::{EngineFingerprint, EngineSettings, build_engine, deadline_ticks, spawn_epoch_ticker};
use crate::error::{LoadError, RunError, RuntimeError};
use crate::gpu::{GpuReplay, GpuRun};
use crate::info::{Access, ToolInfo};
use crate::logs::{LogLine, LogSink, LogSource};
use crate::policy::{EffectivePolicy, Grants};
use crate::record::{Recorder, SeededRandom, TapeMonotonicClock, TapeWallClock, fresh_seed};
use crate::recording::{RecordingConfig, record_prelude};
use crate::state::{HostState, RunLimiter};
use crate::{LimitHit, Limits};
use guild_replay::BlobStore;
use guild_replay::Digest;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wasmtime_wasi_http::WasiHttpCtx;

/// How the runtime is set up.
#[derive(Clone, Default)]
pub struct RuntimeConfig {
    /// Directory for compiled artifacts (`<GUILD_HOME>/cache`); `None` keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Engine-wide settings.
    pub engine: EngineSettings,
    /// Loaded tools kept in memory; the least recently used is dropped past this.
    pub tools_loaded_max: usize,
    /// Where to record a bundle of every run; `None` records nothing.
    pub recording: Option<RecordingConfig>,
    /// Circuit breakers for egress upstreams.
    pub breakers: BreakerSettings,
    /// PEM files of CA certificates trusted for egress TLS besides the webpki roots.
    pub tls_ca_files: Vec<PathBuf>,
    /// What to do with GPU work (the device is opened on the first dispatch that needs it).
    pub gpu: guild_gpu::GpuConfig,
}

/// Fuel `describe` may burn when a tool is loaded (~0.1 s of compute).
pub const DESCRIBE_FUEL_UNITS: u64 = 2_000_000_000;
/// Wall-clock limit for `describe` when a tool is loaded.
pub const DESCRIBE_TIMEOUT_MS: u64 = 5_000;

/// Default for [`RuntimeConfig::tools_loaded_max`].
pub const TOOLS_LOADED_MAX_DEFAULT: usize = 256;

/// A component ready to run: compiled, linked, and described.
pub struct Tool {
    digest: Digest,
    info: ToolInfo,
    pre: GuildToolPre<HostState>,
    size_bytes: u64,
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

/// The kind of error a tool returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolErrorKind {
    /// Bad input.
    InvalidInput,
    /// The tool failed.
    Failed,
    /// The tool was refused something.
    Denied,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// `run` returned JSON.
    Output {
        /// The JSON text.
        output: String,
    },
    /// `run` returned an error.
    ToolError {
        /// Which kind.
        kind: ToolErrorKind,
        /// The tool's message.
        message: String,
    },
    /// A limit stopped the run.
    Limit(LimitHit),
    /// The guest trapped (a panic, an `unreachable`, an out-of-bounds access, an exit).
    Trap {
        /// What happened, with the tail of the guest's stderr.
        message: String,
    },
    /// Whoever asked for the run cancelled it before it ended.
    Cancelled {
        /// Wall time from the call to the cancellation (a replay stops at the same point).
        after_ms: u64,
    },
}

/// What one run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Tool name from `describe`.
    pub tool: String,
    /// Tool version.
    pub tool_version: String,
    /// The component's digest.
    pub component: Digest,
    /// How it ended.
    pub outcome: Outcome,
    /// Fuel burnt.
    pub fuel_used_units: u64,
    /// Peak linear memory.
    pub memory_bytes_peak: u64,
    /// Wall time of instantiate + call.
    pub wall_time: Duration,
    /// Everything the tool logged or printed.
    pub logs: Vec<LogLine>,
    /// The policy the run had.
    pub policy: EffectivePolicy,
    /// The limits the run had.
    pub limits: Limits,
    /// The id of the run's bundle, when the runtime records.
    pub bundle: Option<Digest>,
    /// Outgoing requests refused or failed, with the reason, for the operator.
    pub egress_denials: Vec<String>,
    /// Outgoing requests the guest attempted (sent, refused or failed).
    pub egress_requests: u32,
    /// Of those sent, how many found the upstream failing (5xx, timeout, unreachable): a
    /// tool that failed after one may succeed if run again.
    pub egress_upstream_failures: u32,
    /// Bytes the run's bundle holds (its blobs, manifest and signature), 0 when not recorded.
    pub bundle_bytes: u64,
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
}

/// What executing a tool once produced, before it becomes a report or a replay verdict.
pub(crate) struct Execution {
    pub(crate) outcome: Outcome,
    pub(crate) fuel_used_units: u64,
    pub(crate) memory_bytes_peak: u64,
    pub(crate) wall_time: Duration,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) egress_denials: Vec<String>,
    pub(crate) egress_requests: u32,
    pub(crate) egress_upstream_failures: u32,
}

/// The engine, linker and caches. Cheap to share behind an `Arc`; runs are independent.
pub struct Runtime {
    engine: Engine,
    fingerprint: EngineFingerprint,
    settings: EngineSettings,
    linker: Linker<HostState>,
    disk: DiskCache,
    tools: Mutex<LoadedTools>,
    recording: Option<RecordingConfig>,
    breakers: Arc<Breakers>,
    tls: Arc<rustls::ClientConfig>,
    gpu: Arc<guild_gpu::GpuHost>,
}

struct LoadedTools {
    by_digest: HashMap<Digest, (Arc<Tool>, u64)>,
    clock: u64,
    max: usize,
}

impl Runtime {
    /// Build the engine, the linker and the caches.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let (engine, fingerprint) = build_engine(&config.engine)?;
        spawn_epoch_ticker(&engine)?;
        let mut linker = Linker::new(&engine);
        let link_error = |e: wasmtime::Error| RuntimeError::Engine(format!("{e:#}"));
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link_error)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(link_error)?;
        GuildTool::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(link_error)?;
        let cache_dir = config.cache_dir.map(|dir| dir.join(&fingerprint.id));
        let max = if config.tools_loaded_max == 0 { TOOLS_LOADED_MAX_DEFAULT } else { config.tools_loaded_max };
        Ok(Self {
            engine,
            fingerprint,
            settings: config.engine,
            linker,
            disk: DiskCache::new(cache_dir),
            tools: Mutex::new(LoadedTools { by_digest: HashMap::new(), clock: 0, max }),
            recording: config.recording,
            breakers: Arc::new(Breakers::new(config.breakers)),
            tls: crate::egress::connect::tls_config(&config.tls_ca_files).map_err(RuntimeError::Config)?,
            gpu: Arc::new(guild_gpu::GpuHost::new(config.gpu).map_err(|e| RuntimeError::Engine(e.to_string()))?),
        })
    }

    /// The host's GPU service, shared by all runs.
    pub fn gpu(&self) -> &Arc<guild_gpu::GpuHost> {
        &self.gpu
    }

    /// The fingerprint of this engine.
    pub fn fingerprint(&self) -> &EngineFingerprint {
        &self.fingerprint
    }

    /// Read and load a component file.
    pub async fn load_file(&self, path: &std::path::Path) -> Result<(Arc<Tool>, CacheSource), LoadError> {
        let bytes =
            std::fs::read(path).map_err(|source| LoadError::Read { path: path.display().to_string(), source })?;
        self.load(&bytes).await
    }

    /// Load a component: from memory if this process has it, else from the disk cache, else by
    /// compiling it. Then link it and call `describe` once.
    pub async fn load(&self, bytes: &[u8]) -> Result<(Arc<Tool>, CacheSource), LoadError> {
        check_header(bytes)?;
        let digest = Digest::of(bytes);
        if let Some(tool) = self.loaded(&digest) {
            return Ok((tool, CacheSource::Memory));
        }
        // Compiling takes ~100 ms of CPU per component: off the async workers, so a daemon
        // keeps answering while a new tool compiles.
        let (disk, engine, owned) = (self.disk.clone(), self.engine.clone(), bytes.to_vec());
        let (component, source) = tokio::task::spawn_blocking(move || disk.load_or_compile(&engine, &digest, &owned))
            .await
            .map_err(|e| LoadError::Invalid(format!("the compilation task failed: {e}")))??;
        if let Some(recording) = &self.recording {
            // Bundles refer to the component by digest; keep it (once) in the store.
            recording.store.put(bytes).map_err(|e| LoadError::Store(e.to_string()))?;
        }
        let instance_pre = self.linker.instantiate_pre(&component).map_err(link_error)?;
        let pre = GuildToolPre::new(instance_pre).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let info = self.describe(&pre).await?;
        let tool = Arc::new(Tool { digest, info, pre, size_bytes: bytes.len() as u64 });
        self.remember(tool.clone());
        Ok((tool, source))
    }

    fn loaded(&self, digest: &Digest) -> Option<Arc<Tool>> {
        let mut tools = self.tools.lock().unwrap_or_else(|p| p.into_inner());
        tools.clock += 1;
        let now = tools.clock;
        tools.by_digest.get_mut(digest).map(|(tool, used)| {
            *used = now;
            tool.clone()
        })
    }

    fn remember(&self, tool: Arc<Tool>) {
        let mut tools = self.tools.lock().unwrap_or_else(|p| p.into_inner());
        if tools.by_digest.len() >= tools.max {
            let oldest = tools.by_digest.iter().min_by_key(|(_, (_, used))| *used).map(|(d, _)| *d);
            if let Some(oldest) = oldest {
                tools.by_digest.remove(&oldest);
            }
        }
        tools.clock += 1;
        let now = tools.clock;
        tools.by_digest.insert(tool.digest, (tool, now));
    }

    async fn describe(&self, pre: &GuildToolPre<HostState>) -> Result<ToolInfo, LoadError> {
        // `describe` only returns constants: a tool that computes for longer is broken or
        // hostile, and loading it must not cost a full run's budget.
        let limits = Limits { fuel_units: DESCRIBE_FUEL_UNITS, timeout_ms: DESCRIBE_TIMEOUT_MS, ..Limits::default() };
        let no_egress = Arc::new(EgressRun::new(String::new(), Vec::new(), Vec::new(), limits.clone(), None, None));
        let no_gpu = GpuRun::new(self.gpu.clone(), "", false, &limits, None, None);
        let mut store = self
            .new_store(
                &EffectivePolicy::default(),
                &limits,
                &fresh_seed(),
                None,
                StoreHooks { egress: no_egress, gpu: no_gpu, cancel: None },
            )
            .map_err(|e| LoadError::Describe(e.to_string()))?;
        let instance = pre.instantiate_async(&mut store).await.map_err(|e| LoadError::Describe(format!("{e:#}")))?;
        let info = instance
            .guild_tool_tool()
            .call_describe(&mut store)
            .await
            .map_err(|e| LoadError::Describe(format!("{e:#}")))?;
        ToolInfo::from_wit(info).map_err(LoadError::Describe)
    }

    /// Run `tool` on `input` with `grants` under `limits`, recording a bundle when the runtime
    /// was configured with a store.
    ///
    /// `Err` means the run never started (denied, busy, bad limits) or could not be recorded;
    /// every run that starts ends in a [`RunReport`] whose [`Outcome`] says how.
    pub async fn run(&self, tool: &Tool, input: &str, grants: &Grants, limits: &Limits) -> Result<RunReport, RunError> {
        self.run_cancellable(tool, input, grants, limits, CancellationToken::new()).await
    }

    /// [`Runtime::run`], stopped early when `cancel` is cancelled: the run then ends in
    /// [`Outcome::Cancelled`] and is recorded like any other.
    pub async fn run_cancellable(
        &self,
        tool: &Tool,
        input: &str,
        grants: &Grants,
        limits: &Limits,
        cancel: CancellationToken,
    ) -> Result<RunReport, RunError> {
        let policy = EffectivePolicy::resolve(&tool.info.name, grants, &tool.info.capabilities)?;
        self.check_limits(limits)?;
        let seed = fresh_seed();
        let recorder = match &self.recording {
            Some(recording) => {
                let recorder = Recorder::live(limits.fuel_units);
                off_the_async_workers(!policy.mounts.is_empty(), || {
                    record_prelude(
                        &recorder,
                        recording.store.as_ref(),
                        &policy,
                        &seed,
                        recording.tree_limits,
                        Some(&recording.file_digests),
                    )
                })?;
                Some(recorder)
            }
            None => None,
        };
        let secrets = grants
            .secrets
            .iter()
            .filter(|s| policy.secret_grants.iter().any(|g| g.name == s.name()))
            .cloned()
            .collect();
        let env = RunEnv { seed, recorder: recorder.clone(), replay_bodies: None, secrets, replay_gpu: None, cancel };
        let execution = self.execute(tool, input, &policy, limits, env).await?;
        let (bundle, bundle_bytes) = match (&self.recording, &recorder) {
            (Some(recording), Some(recorder)) => {
                let writable = policy.mounts.iter().any(|m| m.access == crate::Access::ReadWrite);
                let sealed = off_the_async_workers(writable, || {
                    recording.seal(&self.fingerprint, tool, input, &policy, limits, &execution, recorder)
                })?;
                (Some(sealed.id), sealed.size_bytes)
            }
            _ => (None, 0),
        };
        Ok(RunReport {
            tool: tool.info.name.clone(),
            tool_version: tool.info.version.clone(),
            component: tool.digest,
            outcome: execution.outcome,
            fuel_used_units: execution.fuel_used_units,
            memory_bytes_peak: execution.memory_bytes_peak,
            wall_time: execution.wall_time,
            logs: execution.logs,
            policy,
            limits: limits.clone(),
            bundle,
            egress_denials: execution.egress_denials,
            egress_requests: execution.egress_requests,
            egress_upstream_failures: execution.egress_upstream_failures,
            bundle_bytes,
        })
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
        let RunEnv { seed, recorder, replay_bodies, secrets, replay_gpu, cancel } = env;
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
            .with_breakers(self.breakers.clone())
            .with_tls(self.tls.clone()),
        );
        let info = &tool.info;
        let gpu =
            GpuRun::new(self.gpu.clone(), &info.name, info.capabilities.gpu, limits, recorder.clone(), replay_gpu);
        let recorder = recorder.as_ref();
        let hooks = StoreHooks { egress: egress.clone(), gpu, cancel: Some(&cancel) };
        let mut store = self.new_store(policy, limits, &seed, recorder, hooks)?;
        let started = Instant::now();
        // The epoch deadline interrupts wasm; this outer deadline also covers a guest parked in a
        // host call. Dropping the future abandons the run and its store.
        let backstop = limits.timeout() + Duration::from_millis(2 * crate::EPOCH_TICK_MS);
        // Cancelling drops a guest parked in a host call here; a computing guest traps with
        // `Cancelled` at its next epoch check.
        let called = tokio::select! {
            called = tokio::time::timeout(backstop, call_run(&tool.pre, &mut store, input)) => Some(called),
            () = cancel.cancelled() => None,
        };
        let wall_time = started.elapsed();
        let logs = store.data().logs.finish();
        let mut outcome = match called {
            None => Outcome::Cancelled { after_ms: elapsed_ms(wall_time) },
            Some(Err(_elapsed)) => Outcome::Limit(LimitHit::Timeout { limit_ms: limits.timeout_ms }),
            Some(Ok(Ok(Ok(output)))) => check_output(output, limits),
            Some(Ok(Ok(Err(error)))) => tool_error(error),
            Some(Ok(Err(trap))) if trap.downcast_ref::<Cancelled>().is_some() => {
                Outcome::Cancelled { after_ms: elapsed_ms(wall_time) }
            }
            Some(Ok(Err(trap))) => self.classify_trap(&trap, limits, &logs)?,
        };
        if recorder.is_some_and(Recorder::overflowed) {
            outcome = Outcome::Limit(LimitHit::Tape { limit_events: guild_replay::TAPE_EVENTS_MAX });
        }
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
            egress_requests: egress.requests(),
            egress_upstream_failures: egress.upstream_failures(),
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
        let StoreHooks { egress, gpu, cancel } = hooks;
        let logs = LogSink::new(limits.log_bytes_max, recorder.cloned());
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(logs.stdio(LogSource::Stdout)).stderr(logs.stdio(LogSource::Stderr));
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
        let state = HostState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            egress: EgressHooks(egress),
            table: ResourceTable::new(),
            limiter: RunLimiter::new(limits),
            logs,
            gpu,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        if self.settings.fuel_metering {
            store.set_fuel(limits.fuel_units).map_err(|e| RunError::Host(format!("{e:#}")))?;
        }
        arm_deadline(&mut store, deadline_ticks(limits.timeout_ms), cancel);
        if let Some(recorder) = recorder
            && self.settings.fuel_metering
        {
            // Every entry into the host notes the fuel left, so each effect records when it
            // happened in the guest's own deterministic time.
            let gauge = recorder.fuel_gauge();
            store.call_hook(move |context, hook| {
                if hook.entering_host()
                    && let Ok(left) = context.get_fuel()
                {
                    gauge.store(left, Ordering::Relaxed);
                }
                Ok(())
            });
        }
        Ok(store)
    }

    fn classify_trap(&self, error: &wasmtime::Error, limits: &Limits, logs: &[LogLine]) -> Result<Outcome, RunError> {
        if let Some(hit) = error.downcast_ref::<LimitHit>() {
            return Ok(Outcome::Limit(hit.clone()));
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

async fn call_run(
    pre: &GuildToolPre<HostState>,
    store: &mut Store<HostState>,
    input: &str,
) -> wasmtime::Result<Result<String, wit::ToolError>> {
    let instance = pre.instantiate_async(&mut *store).await?;
    instance.guild_tool_tool().call_run(&mut *store, input).await
}

fn check_output(output: String, limits: &Limits) -> Outcome {
    let got_bytes = output.len() as u64;
    if got_bytes > limits.output_bytes_max {
        return Outcome::Limit(LimitHit::Output { got_bytes, limit_bytes: limits.output_bytes_max });
    }
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&output) {
        return Outcome::ToolError {
            kind: ToolErrorKind::Failed,
            message: format!("the tool returned output that is not JSON: {e}"),
        };
    }
    Outcome::Output { output }
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

fn link_error(error: wasmtime::Error) -> LoadError {
    let text = format!("{error:#}");
    match text.split('`').nth(1) {
        Some(name) if text.contains("matching implementation was not found") => {
            LoadError::UnsupportedImport(name.to_string())
        }
        _ => LoadError::Invalid(text),
    }
}

fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    const MAGIC: &[u8; 4] = b"\0asm";
    const CORE_VERSION: [u8; 4] = [1, 0, 0, 0];
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(LoadError::NotWasm);
    }
    if bytes[4..8] == CORE_VERSION {
        return Err(LoadError::CoreModule);
    }
    Ok(())
}

/// The host services a run's store is wired to.
struct StoreHooks<'a> {
    egress: Arc<EgressRun>,
    gpu: GpuRun,
    cancel: Option<&'a CancellationToken>,
}

/// Run file-system work that can take long (capturing a mount's tree, hashing a writable
/// mount's outputs) without stalling the async workers: on a multi-threaded runtime tokio hands
/// this worker's other tasks (a daemon's HTTP requests) to another thread meanwhile. Skipped
/// when there is no such work, since the hand-off itself costs a few microseconds.
fn off_the_async_workers<T>(heavy: bool, work: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if heavy && multi_thread { tokio::task::block_in_place(work) } else { work() }
}
