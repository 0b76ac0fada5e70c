//! `guild run` and `guild describe`: load a component through the runtime, run it once, print
//! the output on stdout and a summary on stderr, and map the outcome to an exit code.

use crate::args::{DescribeArgs, Global, RunArgs};
use crate::exit::{Exit, Failure};
use guild_replay::tree::TreeLimits;
use guild_replay::{DirStore, HostKey};
use guild_runtime::egress::{Secret, SecretGrant};
use guild_runtime::{
    CacheSource, EngineSettings, GpuConfig, Grants, Limits, LoadError, Outcome, RecordingConfig, RunError, RunReport,
    Runtime, RuntimeConfig, human_bytes,
};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

/// Runs one command needs at most (describe, then run); keeps the pools small for a quick start.
const CLI_CONCURRENT_RUNS_MAX: u32 = 4;

pub(crate) fn run(global: &Global, args: RunArgs) -> Result<Exit, Failure> {
    let input = if args.input.is_none() && args.input_file.is_none() { None } else { Some(read_input(&args)?) };
    let tree_limits =
        TreeLimits { bytes_max: args.mount_bytes, entries_max: args.mount_entries, ..TreeLimits::default() };
    let runtime = open_runtime(global, Some(tree_limits), &args.tls_ca)?;
    let limits = Limits {
        fuel_units: args.fuel,
        timeout_ms: args.timeout,
        memory_bytes_max: args.memory,
        output_bytes_max: args.output_bytes,
        log_bytes_max: args.log_bytes,
        http_requests_max: args.http_requests,
        http_response_bytes_max: args.http_response_bytes,
        gpu_buffer_bytes_max: args.gpu_buffer_bytes,
        gpu_buffers_max: args.gpu_buffers,
        gpu_dispatches_max: args.gpu_dispatches,
        gpu_dispatch_timeout_ms: args.gpu_timeout,
        recording_bytes_max: args.recording_bytes,
        wasi_resources_max: args.wasi_resources,
        mount_write_bytes_max: args.mount_write_bytes,
        mount_write_entries_max: args.mount_write_entries,
        ..Limits::default()
    };
    let (secrets, secret_grants) = load_secrets(&args)?;
    let grants = Grants { mounts: args.dirs.clone(), egress: args.allow_hosts.clone(), secrets, secret_grants };
    let mut command_exit = None;
    let exit = block_on(async {
        let (tool, source) = runtime.load_file(&args.component).await.map_err(load_failure)?;
        if tool.is_command() && input.is_some() && (!args.envs.is_empty() || !args.command_args.is_empty()) {
            return Err(Failure::usage(
                "give a command either --input JSON ({\"args\", \"stdin\", \"env\"}) or --env and arguments after --, not both",
            ));
        }
        if !tool.is_command() && (!args.envs.is_empty() || !args.command_args.is_empty()) {
            return Err(Failure::usage(format!(
                "{} is a guild-tool component: --env and arguments after -- are for WASI commands; give it --input JSON",
                tool.info().name
            )));
        }
        let input = match input {
            Some(input) => input,
            None if tool.is_command() => command_input(&args)?,
            None => "{}".to_string(),
        };
        let report = if tool.is_command() {
            runtime.run_passing_through(&tool, &input, &grants, &limits, &terminal_passthrough()).await
        } else {
            runtime.run(&tool, &input, &grants, &limits).await
        }
        .map_err(run_failure)?;
        if tool.is_command() {
            command_exit = exit_code_of(&report, &args);
            if command_exit.is_some() {
                return Ok(Exit::Success);
            }
        }
        Ok(print_report(&report, source, &args, tool.is_command()))
    });
    // A command's own exit code, as `wasmtime run` exits: after the runtime (and the store
    // behind it) is dropped, so the bundle is written whole.
    drop(runtime);
    match command_exit {
        Some(code) => {
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            std::process::exit(code)
        }
        None => exit,
    }
}

/// A command's input from `guild run`'s own arguments, environment flags and stdin (read to its
/// end unless it is a terminal, which stays at its end: a recorded run needs all of its input).
fn command_input(args: &RunArgs) -> Result<String, Failure> {
    use std::io::IsTerminal as _;
    let env: serde_json::Map<String, serde_json::Value> =
        args.envs.iter().map(|(name, value)| (name.clone(), value.clone().into())).collect();
    let mut input = serde_json::json!({"args": args.command_args, "env": env});
    if !std::io::stdin().is_terminal() {
        let stdin = read_stdin(args.stdin_bytes_max)?;
        input["stdin"] = match String::from_utf8(stdin) {
            Ok(text) => text.into(),
            Err(bytes) => {
                input["stdin_encoding"] = "base64".into();
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes.as_bytes()).into()
            }
        };
    }
    Ok(input.to_string())
}

/// A command's stdout and stderr, passed to this process's own as the program writes them
/// (flushed at each write, so a pipe or a terminal sees them at once); the run also records them.
fn terminal_passthrough() -> guild_runtime::Passthrough {
    use std::io::Write as _;
    guild_runtime::Passthrough {
        stdout: Arc::new(|bytes: &[u8]| {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(bytes).and_then(|()| out.flush());
        }),
        stderr: Arc::new(|bytes: &[u8]| {
            let _ = std::io::stderr().lock().write_all(bytes);
        }),
    }
}

/// How a command that ran to an exit ended (its streams were passed through as it wrote them);
/// `None` when it did not exit (a limit, a trap, a refused input), which is reported as any run.
fn exit_code_of(report: &RunReport, args: &RunArgs) -> Option<i32> {
    let Outcome::Output { output } = &report.outcome else { return None };
    let output = guild_runtime::CommandOutput::parse(output)?;
    if args.summary_json {
        let summary = serde_json::json!({
            "status": "ok",
            "exit_code": output.exit_code,
            "tool": report.tool,
            "component": report.component,
            "fuel_used_units": report.fuel_used_units,
            "bundle": report.bundle,
        });
        eprintln!("{summary}");
    }
    Some(output.exit_code)
}

/// Read each `--secret` value and gather `--grant-secret` rules by name.
fn load_secrets(args: &RunArgs) -> Result<(Vec<Secret>, Vec<SecretGrant>), Failure> {
    let mut secrets = Vec::new();
    for (name, source) in &args.secrets {
        secrets.push(Secret::read(name, source).map_err(Failure::usage)?);
    }
    let mut grants: Vec<SecretGrant> = Vec::new();
    for (name, rule) in &args.secret_grants {
        if !secrets.iter().any(|s: &Secret| s.name() == name) {
            return Err(Failure::usage(format!("--grant-secret {name}: no --secret {name}=... defines it")));
        }
        match grants.iter_mut().find(|g| g.name == *name) {
            Some(grant) => grant.rules.push(rule.clone()),
            None => grants.push(SecretGrant { name: name.clone(), rules: vec![rule.clone()] }),
        }
    }
    Ok((secrets, grants))
}

pub(crate) fn describe(global: &Global, args: DescribeArgs) -> Result<Exit, Failure> {
    let runtime = open_runtime(global, None, &[])?;
    block_on(async {
        let (tool, _) = runtime.load_file(&args.component).await.map_err(load_failure)?;
        let mut value = serde_json::to_value(tool.info()).map_err(|e| Failure::host(e.to_string()))?;
        if let Some(object) = value.as_object_mut() {
            object.insert("component".into(), tool.digest().to_hex().into());
        }
        let text = serde_json::to_string_pretty(&value).map_err(|e| Failure::host(e.to_string()))?;
        crate::out!("{text}");
        Ok(Exit::Success)
    })
}

pub(crate) fn block_on<F: std::future::Future<Output = Result<Exit, Failure>>>(future: F) -> Result<Exit, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::host(format!("cannot start the async runtime: {e}")))?
        .block_on(future)
}

/// All of stdin, at most `max` bytes.
///
/// # Errors
/// A usage failure naming `--stdin-bytes` when there is more, or the read's error.
fn read_stdin(max: u64) -> Result<Vec<u8>, Failure> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::usage(format!("cannot read stdin: {e}")))?;
    if bytes.len() as u64 > max {
        return Err(Failure::usage(format!(
            "stdin holds more than {max} bytes, the most a run reads (a recorded run keeps all its input); \
             raise --stdin-bytes or pass a file through --dir"
        )));
    }
    Ok(bytes)
}

fn read_input(args: &RunArgs) -> Result<String, Failure> {
    let text = match (&args.input, &args.input_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) if path.as_os_str() == "-" => String::from_utf8(read_stdin(args.stdin_bytes_max)?)
            .map_err(|e| Failure::usage(format!("the input on stdin is not UTF-8: {e}")))?,
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("cannot read input file {}: {e}", path.display())))?,
        (None, None) => "{}".to_string(),
    };
    serde_json::from_str::<serde::de::IgnoredAny>(&text)
        .map_err(|e| Failure::usage(format!("input is not valid JSON: {e}")))?;
    Ok(text)
}

/// The directory Guild keeps its state in: `--home`, `GUILD_HOME`, or the platform data dir.
pub(crate) fn home_dir(global: &Global) -> Result<PathBuf, Failure> {
    let home = match &global.home {
        Some(home) => home.clone(),
        None => dirs::data_dir()
            .map(|d| d.join("guild"))
            .ok_or_else(|| Failure::usage("no data directory on this platform; set GUILD_HOME or pass --home"))?,
    };
    std::fs::create_dir_all(&home)
        .map_err(|e| Failure::host(format!("cannot create Guild's home {}: {e}", home.display())))?;
    Ok(home)
}

/// The bundle store: `--store`, `GUILD_STORE`, or `HOME/store`.
pub(crate) fn open_store(global: &Global) -> Result<DirStore, Failure> {
    DirStore::open(store_dir(global)?).map_err(|e| Failure::host(format!("cannot open the bundle store: {e}")))
}

/// Where the bundle store lives: `--store`, `GUILD_STORE`, or `HOME/store`.
pub(crate) fn store_dir(global: &Global) -> Result<PathBuf, Failure> {
    match &global.store {
        Some(dir) => Ok(dir.clone()),
        None => Ok(home_dir(global)?.join("store")),
    }
}

/// The host's signing key, created on first use under `HOME/keys`.
pub(crate) fn host_key(global: &Global) -> Result<HostKey, Failure> {
    let path = home_dir(global)?.join("keys").join("host.key");
    HostKey::load_or_create(&path).map_err(|e| Failure::host(e.to_string()))
}

/// A runtime for this command; recording every run into the store, with mounts bounded by
/// `record`, when it is given.
pub(crate) fn open_runtime(
    global: &Global,
    record: Option<TreeLimits>,
    tls_ca: &[PathBuf],
) -> Result<Runtime, Failure> {
    let home = home_dir(global)?;
    let recording = match record {
        Some(tree_limits) => Some(RecordingConfig {
            tree_limits,
            ..RecordingConfig::new(Arc::new(open_store(global)?), Arc::new(host_key(global)?))
        }),
        None => None,
    };
    let config = RuntimeConfig {
        cache_dir: Some(home.join("cache")),
        engine: EngineSettings { concurrent_runs_max: CLI_CONCURRENT_RUNS_MAX, ..EngineSettings::default() },
        recording,
        tls_ca_files: tls_ca.to_vec(),
        gpu: GpuConfig { mode: global.gpu, ..GpuConfig::default() },
        ..RuntimeConfig::default()
    };
    Runtime::new(config).map_err(|e| match e {
        guild_runtime::RuntimeError::Config(_) => Failure::usage(e.to_string()),
        other => Failure::host(other.to_string()),
    })
}

fn load_failure(error: LoadError) -> Failure {
    match error {
        LoadError::Read { .. } => Failure::usage(error.to_string()),
        _ => Failure::host(error.to_string()),
    }
}

fn run_failure(error: RunError) -> Failure {
    match error {
        RunError::Denied(_) => Failure::new(Exit::Denied, error.to_string()),
        RunError::Limits(_) => Failure::usage(error.to_string()),
        RunError::Busy { .. } | RunError::Host(_) | RunError::Record(_) => Failure::host(error.to_string()),
    }
}

/// This process's peak resident memory (Linux: `VmHWM` in `/proc/self/status`), so what a run
/// made the host hold can be seen from outside; `None` where it cannot be read.
fn host_rss_bytes_peak() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// Print output and summary; return the exit code the outcome maps to (a WASI `command`'s
/// trap: 134, as under `wasmtime run`).
fn print_report(report: &RunReport, source: CacheSource, args: &RunArgs, command: bool) -> Exit {
    if args.logs {
        for line in &report.logs {
            eprintln!("[{:?} {:?}] {}", line.level, line.source, line.message);
        }
    }
    for denial in &report.egress_denials {
        eprintln!("guild: {denial}");
    }
    // The exit code, the label and the message are the outcome's own: the API, MCP, metrics and
    // the audit log read the same ones.
    let exit = if command { Exit::for_command_outcome(&report.outcome) } else { Exit::for_outcome(&report.outcome) };
    let (status, message) = match &report.outcome {
        Outcome::Output { output } => {
            crate::out!("{output}");
            ("ok", None)
        }
        other => (other.label(), Some(other.message())),
    };
    if args.summary_json {
        let summary = serde_json::json!({
            "status": status,
            "exit_code": exit as u8,
            "message": message,
            "tool": report.tool,
            "tool_version": report.tool_version,
            "component": report.component,
            "fuel_used_units": report.fuel_used_units,
            "memory_bytes_peak": report.memory_bytes_peak,
            "wall_time_us": u64::try_from(report.wall_time.as_micros()).unwrap_or(u64::MAX),
            "log_lines": report.logs.len(),
            "cache": source,
            "bundle": report.bundle,
            "egress_denials": report.egress_denials,
            "egress_refusals": report.egress_refusals,
            "outcome": report.outcome,
            "host_rss_bytes_peak": host_rss_bytes_peak(),
        });
        eprintln!("{summary}");
        return exit;
    }
    if let Some(message) = &message {
        // A command's stderr was passed through as it was written: the tail the trap's message
        // repeats (the bundle and the API keep it) would show it twice.
        let message = match (command, &report.outcome) {
            (true, Outcome::Trap { .. }) => message.split("; stderr: ").next().unwrap_or(message),
            _ => message,
        };
        eprintln!("guild: {message}");
    }
    let bundle = report.bundle.map(|id| format!(" · bundle {}", id.short())).unwrap_or_default();
    eprintln!(
        "guild: {} {} {status} · fuel {} units · {:.2} ms · memory {} · {} log lines · compiled code from {}{bundle}",
        report.tool,
        report.tool_version,
        report.fuel_used_units,
        report.wall_time.as_secs_f64() * 1000.0,
        human_bytes(report.memory_bytes_peak),
        report.logs.len(),
        match source {
            CacheSource::Memory | CacheSource::Disk => "cache",
            CacheSource::Compiled => "a fresh compile",
        },
    );
    exit
}
