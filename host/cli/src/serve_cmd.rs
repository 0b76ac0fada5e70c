//! `guild serve`, `guild audit verify` and `guild token new|hash`: wiring the daemon from its config
//! (or the embedded default: the example tools on 127.0.0.1 for one admin token), logging as
//! JSON lines, and stopping cleanly on SIGTERM or Ctrl-C.

use crate::args::{AuditCommand, Global, ServeArgs, TokenCommand, ToolFlags};
use crate::exit::{Exit, Failure};
use crate::run_cmd::{home_dir, host_key};
use guild_audit as audit;
use guild_replay::{Digest, DirStore, PENDING_BYTES_MAX_DEFAULT};
use guild_runtime::{EngineSettings, Grants, Limits, RecordingConfig, Runtime, RuntimeConfig};
use guild_server::DaemonSetup;
use guild_server::config::{DaemonConfig, LogFormat};
use guild_server::registry::{ToolSource, ToolSpec};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

include!(concat!(env!("OUT_DIR"), "/embedded_tools.rs"));

pub(crate) fn serve(global: &Global, args: ServeArgs) -> Result<Exit, Failure> {
    let home = home_dir(global)?;
    let mut config = start_config(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(url) = args.redis {
        // `--redis` names one node: it replaces whichever shape the config gave.
        config.redis.url = Some(url);
        config.redis.cluster.clear();
        config.redis.sentinel = None;
    }
    let state_dir = config.state.clone().unwrap_or_else(|| home.clone());
    let default_token = if config.tenants.is_empty() { Some(bearer_token(&state_dir)?) } else { None };
    let (runtime, store) = open_runtime(global, &config, &home)?;
    let extra_tools = extra_tools(&args.tools, args.config.is_none());
    let drain = Duration::from_millis(config.queue.drain_timeout_ms);
    let notice = Duration::from_millis(config.queue.drain_notice_ms);
    let listen = config.listen;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::host(format!("cannot start the async runtime: {e}")))?;
    tokio.block_on(async {
        let setup = DaemonSetup { config, runtime, store, state_dir, default_token, extra_tools };
        let parts = guild_server::start(setup).await.map_err(|e| Failure::usage(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| Failure::usage(format!("cannot listen on {listen}: {e} (change `listen` or --listen)")))?;
        let addr = listener.local_addr().map_err(|e| Failure::host(e.to_string()))?;
        let tools: Vec<String> = parts.daemon.tools().all().iter().map(|t| t.name.clone()).collect();
        tracing::info!(addr = %addr, tools = ?tools, runs_restored = parts.runs_restored, "listening on http://{addr}");
        tokio::spawn(reload_on_hangup(parts.daemon.clone(), args.config.clone(), args.tools.clone()));
        let drained = guild_server::run(parts.daemon, listener, shutdown_signal(), notice, drain)
            .await
            .map_err(|e| Failure::host(e.to_string()))?;
        if !drained {
            tracing::warn!("the drain deadline passed with runs still queued or running");
        }
        Ok(Exit::Success)
    })
}

/// On every SIGHUP, read the config again and put it in force ([`Daemon::reload`]): a file that
/// does not load is refused with its field named, and the old config stays.
async fn reload_on_hangup(daemon: Arc<guild_server::Daemon>, path: Option<PathBuf>, tools: ToolFlags) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: the config is not reloadable");
        return;
    };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the config");
        let config = match load_config(path.as_deref()) {
            Ok(config) => config,
            Err(failure) => {
                tracing::error!(error = %failure.message, "the config does not load; the old one stays in force");
                continue;
            }
        };
        match daemon.reload(&config, extra_tools(&tools, path.is_none())).await {
            Ok(summary) => tracing::info!(%summary, "config reloaded"),
            Err(e) => tracing::error!(error = %e, "the config was refused; the old one stays in force"),
        }
    }
}

/// Read the config (or the embedded default), apply `GUILD_*` overrides, start logging on
/// stderr (once per process), and warn about variables that name no field. Tracing is not
/// started: [`start_config`] does that for the long-running commands.
pub(crate) fn load_config(path: Option<&Path>) -> Result<DaemonConfig, Failure> {
    load(path, false)
}

/// [`load_config`] for `serve`, `worker` and `mcp`: with `[telemetry]` or the `OTEL_*`
/// variables configured, spans are exported from here on. Read once, at start: a reload
/// (SIGHUP) does not change where spans go.
pub(crate) fn start_config(path: Option<&Path>) -> Result<DaemonConfig, Failure> {
    load(path, true)
}

fn load(path: Option<&Path>, traced: bool) -> Result<DaemonConfig, Failure> {
    let (text, origin) = match path {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| Failure::usage(format!("cannot read the config {}: {e}", path.display())))?,
            path.to_path_buf(),
        ),
        None => (String::new(), PathBuf::from("(embedded default config)")),
    };
    let (config, ignored) =
        DaemonConfig::load(&text, &origin, std::env::vars()).map_err(|e| Failure::usage(e.to_string()))?;
    let telemetry = match traced {
        true => config
            .telemetry
            .resolve(|name| std::env::var(name).ok())
            .map_err(|e| Failure::usage(format!("cannot start tracing: {e}")))?,
        false => None,
    };
    let style = match config.log_format {
        LogFormat::Json => guild_telemetry::LogStyle::Json,
        LogFormat::Text => guild_telemetry::LogStyle::Text,
    };
    let installed = guild_telemetry::install(style, telemetry.as_ref()).map_err(|e| Failure::usage(e.to_string()))?;
    if let (true, Some(telemetry)) = (installed, &telemetry) {
        tracing::info!(
            endpoint = %telemetry.shown_endpoint,
            service = %telemetry.service_name,
            sampler = ?telemetry.sampler,
            queue_spans_max = telemetry.queue_spans_max,
            "exporting traces over OTLP/HTTP"
        );
    }
    for variable in ignored {
        tracing::warn!(variable = %variable, "ignoring an environment variable that names no config field");
    }
    Ok(config)
}

/// The bundle store and a runtime recording into it, with the compiled cache under `home`.
pub(crate) fn open_runtime(
    global: &Global,
    config: &DaemonConfig,
    home: &Path,
) -> Result<(Arc<Runtime>, Arc<DirStore>), Failure> {
    let store_dir = global.store.clone().or_else(|| config.store.clone()).unwrap_or_else(|| home.join("store"));
    let store = Arc::new(
        DirStore::open_write_behind(&store_dir, PENDING_BYTES_MAX_DEFAULT)
            .map_err(|e| Failure::host(format!("cannot open the bundle store {}: {e}", store_dir.display())))?,
    );
    // Runs at once share one signer: bundles sealed together share one signature.
    let recording = RecordingConfig::batched(store.clone(), Arc::new(host_key(global)?), config.signing)
        .map_err(|e| Failure::host(format!("cannot start the bundle signer: {e}")))?;
    let runtime_config = RuntimeConfig {
        cache_dir: Some(home.join("cache")),
        engine: EngineSettings::default(),
        recording: Some(recording),
        http_connections_max: config.egress_connections_max,
        gpu: guild_runtime::GpuConfig { mode: global.gpu, ..guild_runtime::GpuConfig::default() },
        hermetic: config.cache.hermetic(),
        schema_check: config.schema_check,
        ..RuntimeConfig::default()
    };
    let runtime = Arc::new(Runtime::new(runtime_config).map_err(|e| Failure::host(e.to_string()))?);
    Ok((runtime, store))
}

/// The embedded example tools (without a config) and `--tool` components, with the `--dir`
/// mounts each asks for and the `--allow-host` rules.
pub(crate) fn extra_tools(args: &ToolFlags, examples: bool) -> Vec<ToolSpec> {
    let grants = Grants { mounts: args.dirs.clone(), egress: args.allow_hosts.clone(), ..Grants::default() };
    let spec = |source: ToolSource, field: String| ToolSpec {
        source,
        name: None,
        digest: None,
        grants: grants.clone(),
        limits: Limits::default(),
        field,
        only_requested_mounts: true,
        command: Default::default(),
        cache: None,
        needs: Default::default(),
    };
    let mut specs = Vec::new();
    if examples && !args.no_examples {
        for (artifact, bytes) in EMBEDDED_TOOLS {
            specs.push(spec(ToolSource::Embedded { label: format!("embedded {artifact}"), bytes }, "--tool".into()));
        }
    }
    for path in &args.tools {
        specs.push(spec(ToolSource::File(path.clone()), "--tool".into()));
    }
    specs
}

/// Resolves on SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// `GUILD_TOKEN`, else the token kept in the state directory, else a new one (printed once).
fn bearer_token(state_dir: &Path) -> Result<String, Failure> {
    if let Ok(token) = std::env::var("GUILD_TOKEN")
        && !token.trim().is_empty()
    {
        return Ok(token.trim().to_string());
    }
    let path = state_dir.join("token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        return Ok(token.trim().to_string());
    }
    let token = new_token()?;
    std::fs::create_dir_all(state_dir)
        .and_then(|()| write_private(&path, &token))
        .map_err(|e| Failure::host(format!("cannot keep the token in {}: {e}", path.display())))?;
    eprintln!("guild: generated an API token (kept in {}): {token}", path.display());
    Ok(token)
}

pub(crate) fn new_token() -> Result<String, Failure> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| Failure::host(format!("no randomness for a token: {e}")))?;
    Ok(Digest::from_bytes(secret).to_hex())
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}

pub(crate) fn audit(global: &Global, command: AuditCommand) -> Result<Exit, Failure> {
    let AuditCommand::Verify { log, config } = command;
    let path = match (log, config) {
        (Some(path), _) => path,
        (None, Some(config)) => match load_config(Some(&config))?.state {
            Some(state) => state.join("audit.log"),
            None => home_dir(global)?.join("audit.log"),
        },
        (None, None) => home_dir(global)?.join("audit.log"),
    };
    if !path.exists() {
        return Err(Failure::usage(format!("no audit log at {}", path.display())));
    }
    match audit::verify(&path, |_| {}) {
        Ok(head) => {
            crate::out!("audit log {}: intact, {} records, head {}", path.display(), head.seq, head.hash.short());
            Ok(Exit::Success)
        }
        Err(e) => Err(Failure::new(Exit::InvalidBundle, e.to_string())),
    }
}

pub(crate) fn token(command: TokenCommand) -> Result<Exit, Failure> {
    let token = match command {
        TokenCommand::New => {
            let token = new_token()?;
            crate::out!("token: {token}");
            token
        }
        TokenCommand::Hash => {
            let mut token = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut token)
                .map_err(|e| Failure::usage(format!("cannot read the token from stdin: {e}")))?;
            token.trim().to_string()
        }
    };
    crate::out!("token_blake3 = \"{}\"", Digest::of(token.as_bytes()));
    Ok(Exit::Success)
}
