//! The run pipeline's types, apart from the pipeline (`mod.rs`) so that what seals and replays
//! a run (`recording.rs`, `replaying.rs`) can name them without reaching into it: a loaded
//! [`Tool`], where a run's outside effects come from ([`RunEnv`]), and what executing it once
//! produced ([`Execution`]).

use crate::bindings::GuildToolPre;
use crate::cache::DiskCache;
use crate::cancel::CancellationToken;
use crate::command::{CommandConfig, InputRefused, command_capabilities, command_info};
use crate::gpu::GpuReplay;
use crate::guard::Stop;
use crate::logs::LogLine;
use crate::record::Recorder;
use crate::schema_check::{CompiledSchema, SchemaCheckError, SchemaCheckLimits};
use crate::state::HostState;
use guild_replay::Digest;
use guild_vocab::{Capabilities, Grants, Outcome, ToolErrorKind, ToolInfo};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use wasmtime_wasi::p2::bindings::CommandPre;

/// What a component exports, compiled and linked, ready to instantiate per run.
pub(crate) enum Entry {
    /// The `guild-tool` world: `describe` and `run(json)`.
    Tool(GuildToolPre<HostState>),
    /// The `wasi:cli/command` world: `wasi:cli/run`.
    Command(CommandPre<HostState>, CommandConfig),
    /// A preview-1 module: its `_start`, on wasmtime-wasi's preview-1 implementation.
    Preview1(Arc<Preview1>, CommandConfig),
}

/// A preview-1 command module, linked against wasmtime-wasi's preview-1 implementation (what
/// `wasmtime run` uses). A run granted a writable mount runs the same module adapted into a
/// command component instead (`adapt.rs`), made on first need: wasmtime-wasi's preview 1 writes
/// files through its own filesystem, in front of which Guild cannot put the mounts' write quotas
/// (`quota.rs`), so only the component path can charge them.
pub(crate) struct Preview1 {
    /// The module, linked, ready to instantiate.
    pub(crate) module: wasmtime::InstancePre<HostState>,
    /// The module's bytes, to adapt on first need.
    pub(crate) bytes: Arc<[u8]>,
    /// The adapted command component, once a run needed it.
    pub(crate) adapted: tokio::sync::OnceCell<CommandPre<HostState>>,
}

/// A component ready to run: compiled, linked, and described.
pub struct Tool {
    /// blake3 of the component's bytes: the tool's identity.
    pub(super) digest: Digest,
    /// What `describe` said (a command: what its [`CommandConfig`] says).
    pub(super) info: ToolInfo,
    /// Compiled and linked, ready to instantiate per run.
    pub(crate) entry: Entry,
    /// Size of the component, bytes.
    pub(super) size_bytes: u64,
    /// The output schema the tool declares, compiled: every output is checked against it.
    pub(super) output_schema: Option<CompiledSchema>,
    /// The input schema it declares, compiled on first need ([`Tool::input_schema`]).
    pub(super) input_schema: OnceLock<Result<CompiledSchema, SchemaCheckError>>,
    /// What its schemas are compiled and checked under, and where the checker's code is cached.
    pub(super) schema_check: (SchemaCheckLimits, DiskCache),
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

    /// The tool's input schema, compiled in the schema checker the first time it is asked for.
    ///
    /// # Errors
    /// [`SchemaCheckError`] when it does not compile (not a JSON Schema, or past the limits):
    /// the same error every time; or when the checker could not start ([`SchemaCheckError::Host`],
    /// tried again at the next call).
    pub fn input_schema(&self) -> Result<&CompiledSchema, SchemaCheckError> {
        if let Some(compiled) = self.input_schema.get() {
            return compiled.as_ref().map_err(Clone::clone);
        }
        let (limits, disk) = &self.schema_check;
        let compiled = CompiledSchema::compile(&self.info.input_schema, *limits, disk);
        // The checker failing to start is the host's state, not the schema's: asked again next time.
        if let Err(host @ SchemaCheckError::Host(_)) = compiled {
            return Err(host);
        }
        let compiled = self.input_schema.get_or_init(|| compiled);
        compiled.as_ref().map_err(Clone::clone)
    }

    /// Whether it is a WASI command (`wasi:cli/run`) rather than a `guild-tool` component.
    pub fn is_command(&self) -> bool {
        matches!(self.entry, Entry::Command(..) | Entry::Preview1(..))
    }

    /// Whether it is a preview-1 module (run on wasmtime-wasi's preview-1 implementation).
    pub fn is_preview1(&self) -> bool {
        matches!(self.entry, Entry::Preview1(..))
    }

    /// The arguments an operator fixed for every run of this command, put before the caller's
    /// (empty for a `guild-tool` component).
    pub fn args_prefix(&self) -> &[String] {
        self.command_config().map_or(&[], |config| &config.args_prefix)
    }

    /// A command's configuration; `None` for a `guild-tool` component.
    pub(crate) fn command_config(&self) -> Option<&CommandConfig> {
        match &self.entry {
            Entry::Tool(_) => None,
            Entry::Command(_, config) | Entry::Preview1(_, config) => Some(config),
        }
    }

    /// The command as `config` names and bounds it (its name, description, allowed environment
    /// and argument prefix); `None` for a `guild-tool` component, which describes itself.
    pub fn configured(&self, config: CommandConfig) -> Option<Tool> {
        let entry = match &self.entry {
            Entry::Tool(_) => return None,
            Entry::Command(pre, _) => Entry::Command(pre.clone(), config.clone()),
            Entry::Preview1(module, _) => Entry::Preview1(module.clone(), config.clone()),
        };
        Some(Tool {
            digest: self.digest,
            info: command_info(&config, self.info.version.clone()),
            entry,
            size_bytes: self.size_bytes,
            output_schema: None,
            input_schema: OnceLock::new(),
            schema_check: self.schema_check.clone(),
        })
    }

    /// `input` with a command's fixed arguments put before the caller's (unchanged for a
    /// `guild-tool` component, a command without them, or input that is not a JSON object,
    /// which the run refuses anyway). [`crate::Runtime::run`] applies it; a node that hands the
    /// run to another (a Redis job) applies it before, as the other knows no configuration.
    pub fn with_args_prefix<'a>(&self, input: &'a str) -> Cow<'a, str> {
        let Some(config) = self.command_config() else { return Cow::Borrowed(input) };
        if config.args_prefix.is_empty() {
            return Cow::Borrowed(input);
        }
        let Ok(serde_json::Value::Object(mut object)) = serde_json::from_str::<serde_json::Value>(input) else {
            return Cow::Borrowed(input);
        };
        let given = match object.remove("args") {
            Some(serde_json::Value::Array(args)) => args,
            None => Vec::new(),
            Some(_) => return Cow::Borrowed(input),
        };
        let args = config.args_prefix.iter().cloned().map(serde_json::Value::String).chain(given).collect();
        object.insert("args".into(), serde_json::Value::Array(args));
        Cow::Owned(serde_json::Value::Object(object).to_string())
    }

    /// The policy each run of this tool under `grants` gets: granted ∩ what the tool asks for.
    ///
    /// # Errors
    /// The [`PolicyError`](guild_vocab::PolicyError) a run under `grants` would be refused with.
    pub fn effective_policy(&self, grants: &Grants) -> Result<guild_vocab::EffectivePolicy, guild_vocab::PolicyError> {
        guild_vocab::EffectivePolicy::resolve(&self.info.name, grants, &self.capabilities_for(grants))
    }

    /// What the tool asks to be granted, against which `grants` are checked: its own
    /// `describe`'s answer, or for a command (which declares nothing) what `grants` name.
    pub(crate) fn capabilities_for(&self, grants: &Grants) -> Cow<'_, Capabilities> {
        match self.entry {
            Entry::Tool(_) => Cow::Borrowed(&self.info.capabilities),
            Entry::Command(..) | Entry::Preview1(..) => Cow::Owned(command_capabilities(grants)),
        }
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
    /// Where a command's streams also go as it writes them (`guild run`).
    pub(crate) passthrough: Option<crate::command::Passthrough>,
    /// The budgets a live run's LLM requests are held to.
    pub(crate) meter: Option<Arc<dyn guild_replay::cost::TokenMeter>>,
    /// The host's egress limits and throttles a live run's requests are held to.
    pub(crate) gate: Option<Arc<dyn guild_vocab::egress::EgressGate>>,
}

impl Execution {
    /// A command whose input was refused before anything ran.
    pub(crate) fn refused(refused: InputRefused) -> Self {
        let (kind, message) = match refused {
            InputRefused::Invalid(message) => (ToolErrorKind::InvalidInput, message),
            InputRefused::Denied(message) => (ToolErrorKind::Denied, message),
        };
        Self {
            outcome: Outcome::ToolError { kind, message },
            fuel_used_units: 0,
            memory_bytes_peak: 0,
            wall_time: Duration::ZERO,
            logs: Vec::new(),
            egress_denials: Vec::new(),
            egress_refusals: 0,
            egress_requests: 0,
            egress_upstream_failures: 0,
            egress_throttled_ms: None,
            egress_limited: 0,
            gpu_time: crate::gpu::GpuTime::default(),
            host_identity_read: false,
            trace: guild_telemetry::ids(&tracing::Span::current()),
        }
    }
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
    /// The longest an egress limit or an upstream's throttle asked a refused request to wait, ms.
    pub(crate) egress_throttled_ms: Option<u64>,
    /// Requests a limit or a throttle refused.
    pub(crate) egress_limited: u32,
    /// Time its live GPU dispatches took.
    pub(crate) gpu_time: crate::gpu::GpuTime,
    /// A hermetic run read something of the host's its action digest does not name.
    pub(crate) host_identity_read: bool,
    /// The trace and span id of the span the run executed in, when tracing is on.
    pub(crate) trace: Option<(String, String)>,
}
