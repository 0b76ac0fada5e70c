//! Command-line arguments, parsed raw by clap; `run_cmd` turns them into a validated request.

use crate::exit::{BUNDLE_EXIT_CODES_HELP, EXIT_CODES_HELP};
use clap::{Args, Parser, Subcommand};
use guild_runtime::egress::{EgressRule, SecretSource};
use guild_runtime::{Access, Mount};
use std::path::PathBuf;

/// Default of `guild run --stdin-bytes`: 16 MiB.
pub(crate) const STDIN_BYTES_MAX_DEFAULT: u64 = 16 << 20;

/// Guild: run WebAssembly tools for AI agents under hard limits and explicit capabilities.
#[derive(Debug, Parser)]
#[command(name = "guild", version, about, long_about = None, after_help = EXIT_CODES_HELP)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Where Guild keeps what it keeps (compiled-component cache; later bundles, keys, audit log).
    /// Defaults to the platform data directory, e.g. ~/.local/share/guild.
    #[arg(long, global = true, env = "GUILD_HOME", value_name = "DIR")]
    pub(crate) home: Option<PathBuf>,
    /// The bundle store: every run's signed replay bundle, and the blobs they share.
    /// Defaults to HOME/store.
    #[arg(long, global = true, env = "GUILD_STORE", value_name = "DIR")]
    pub(crate) store: Option<PathBuf>,
    /// GPU work: auto (the adapter, else the CPU reference), device (the adapter, else refuse),
    /// cpu (always the CPU reference), off (refuse). Replay never needs a device.
    #[arg(long, global = true, env = "GUILD_GPU", value_name = "MODE", default_value = "auto")]
    pub(crate) gpu: guild_runtime::GpuMode,
}

// Parsed once per process: the size of the largest variant costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a tool once: output JSON on stdout, one summary line on stderr.
    #[command(after_help = EXIT_CODES_HELP)]
    Run(RunArgs),
    /// Print what a tool says about itself (name, schemas, capabilities) as JSON.
    #[command(after_help = EXIT_CODES_HELP)]
    Describe(DescribeArgs),
    /// Work with tool sources, and with a running daemon's tools: upload a revision, list
    /// revisions, switch a tool off and on.
    #[command(subcommand)]
    Tool(ToolCommand),
    /// Change a tool safely on a running daemon: check a candidate revision against recorded
    /// runs (the replay gate), ramp it on a share of calls, promote it or roll back.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// A running daemon's result cache: entries held per cached tool, and dropping them.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// What runs cost, from the daemon's usage ledger (`GET /v1/usage`): your tenant's, or with
    /// an admin token any tenant's. Needs `[pricing]` in the daemon's config.
    Usage(UsageArgs),
    /// Verify, inspect and export replay bundles.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Re-run a bundle offline with every effect answered from its tape, and compare.
    #[command(after_help = BUNDLE_EXIT_CODES_HELP)]
    Replay(ReplayArgs),
    /// The host's signing key.
    #[command(subcommand)]
    Key(KeyCommand),
    /// The GPU: adapter, limits and kernel catalogue; kernel throughput.
    #[command(subcommand)]
    Gpu(GpuCommand),
    /// Run the daemon: the HTTP API (and MCP at /mcp) over the run pipeline. Without a config it
    /// serves the example tools on 127.0.0.1 with one bearer token (GUILD_TOKEN, or generated on
    /// first start, printed once and kept under the home). Traces go to an OpenTelemetry
    /// collector when OTEL_EXPORTER_OTLP_ENDPOINT (or the config's [telemetry]) names one.
    Serve(ServeArgs),
    /// Serve the tools to an MCP client over stdio (the client launches `guild mcp`): the same
    /// pipeline as the daemon, every call recorded in a bundle. Logs go to stderr.
    Mcp(McpArgs),
    /// Run jobs from the Redis queue (filled by `guild serve --redis URL`) on this machine:
    /// components are fetched by digest, leases renewed, dead workers' jobs taken over.
    Worker(WorkerArgs),
    /// The Redis queue's dead-letter stream: list dead jobs, requeue one.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// The daemon's audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Bearer tokens for the daemon's tenants.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The daemon's TOML configuration (see guild.example.toml). Without one, Guild serves its
    /// example tools on 127.0.0.1 to one admin tenant. Every field can be set from the
    /// environment as GUILD_<FIELD> (nested: GUILD_QUEUE__DEPTH_MAX, GUILD_TENANTS__<NAME>__BURST).
    #[arg(long, env = "GUILD_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on (overrides the config's `listen`).
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<std::net::SocketAddr>,
    /// Enqueue runs into this Redis (`redis://HOST:PORT/DB`) for `guild worker`s instead of
    /// running them here (replaces the config's `redis.url`, `redis.cluster` or `redis.sentinel`).
    #[arg(long, value_name = "URL")]
    pub(crate) redis: Option<String>,
    #[command(flatten)]
    pub(crate) tools: ToolFlags,
}

/// Where the Redis queue is: `--redis`, else the config's `[redis]`.
#[derive(Debug, Args)]
pub(crate) struct RedisArgs {
    /// The queue's Redis, one node: `redis://HOST:PORT/DB` (replaces the config's `redis.url`,
    /// `redis.cluster` or `redis.sentinel`).
    #[arg(long, value_name = "URL")]
    pub(crate) redis: Option<String>,
    /// A daemon config whose `[redis]` settings apply (and, for a worker, its `[secrets]`,
    /// `[[egress_limits]]` and `store`: give workers the API nodes' config).
    #[arg(long, env = "GUILD_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    #[command(flatten)]
    pub(crate) redis: RedisArgs,
    /// Jobs run at once. Defaults to the number of CPUs.
    #[arg(long, value_name = "N")]
    pub(crate) concurrency: Option<usize>,
    /// This worker's name in the queue and in metrics; must be unique among live workers.
    /// Defaults to worker-HOST-PID.
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// After SIGTERM, how long running jobs may take to finish before the worker exits (their
    /// leases then lapse and other workers take them over).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::units::parse_duration_ms)]
    pub(crate) drain: u64,
    /// An operator label this worker carries (repeatable): jobs of tools that need it
    /// (`needs.labels` in the tool's config) go only to workers with it.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = guild_queue::parse_label)]
    pub(crate) labels: Vec<(String, String)>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum JobsCommand {
    /// List the dead-letter stream, oldest first: job, tenant, tool, attempts, last error, bundle.
    Dead {
        #[command(flatten)]
        redis: RedisArgs,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put a dead job back in the queue with fresh attempts.
    Retry {
        /// The job (run) id.
        id: String,
        #[command(flatten)]
        redis: RedisArgs,
    },
}

#[derive(Debug, Args)]
pub(crate) struct McpArgs {
    /// The daemon's TOML configuration (see guild.example.toml): its tools, limits and grants.
    /// Without one, Guild serves its example tools.
    #[arg(long, env = "GUILD_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Call tools as this tenant of the config (its tools, rate, fuel budget). Without tenants
    /// in the config, calls are made as one local tenant that may call every tool.
    #[arg(long, value_name = "NAME")]
    pub(crate) tenant: Option<String>,
    #[command(flatten)]
    pub(crate) tools: ToolFlags,
}

/// Tools to serve besides the config's, and what they are granted.
#[derive(Debug, Clone, Args)]
pub(crate) struct ToolFlags {
    /// Register a tool component (repeatable), beside the config's; clients call it by its name.
    #[arg(long = "tool", value_name = "COMPONENT.wasm")]
    pub(crate) tools: Vec<PathBuf>,
    /// Egress rules for the example tools and `--tool` tools (see `guild run --help`).
    #[arg(long = "allow-host", value_name = "RULE", value_parser = parse_rule)]
    pub(crate) allow_hosts: Vec<EgressRule>,
    /// Mount a directory into the example tools and `--tool` tools: HOST::GUEST[:ro|:rw].
    #[arg(long = "dir", value_name = "HOST::GUEST[:ro|:rw]", value_parser = parse_mount)]
    pub(crate) dirs: Vec<Mount>,
    /// Do not serve the embedded example tools when there is no config.
    #[arg(long)]
    pub(crate) no_examples: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the audit log's hash chain and head; names the first broken record (exit 10).
    Verify {
        /// The log; defaults to the config's `state`/audit.log, else HOME/audit.log.
        #[arg(value_name = "FILE")]
        log: Option<PathBuf>,
        /// The daemon's configuration, to find the log under its `state` directory.
        #[arg(long, env = "GUILD_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Make a new bearer token; prints it and the `token_blake3` line for a tenant's config.
    New,
    /// Print the `token_blake3` line for a token read from stdin.
    Hash,
}

#[derive(Debug, Subcommand)]
pub(crate) enum GpuCommand {
    /// Show the adapter (or why there is none), its backend and limits, and the kernel catalogue
    /// with each kernel's version and WGSL hash.
    Info(GpuInfoArgs),
    /// Time every kernel on the device against its CPU reference, and matmul at several sizes.
    Bench(GpuBenchArgs),
}

#[derive(Debug, Args)]
pub(crate) struct GpuInfoArgs {
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct GpuBenchArgs {
    /// Matmul sizes (square), comma-separated.
    #[arg(long, value_name = "N,N,...", value_delimiter = ',', default_values_t = [256u32, 1024, 2048])]
    pub(crate) matmul: Vec<u32>,
    /// Skip the CPU reference for matmuls larger than this (it is slow).
    #[arg(long, value_name = "N", default_value_t = 2048)]
    pub(crate) cpu_max: u32,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BundleCommand {
    /// Check a bundle's signature, every digest and size, and its tape's hash chain, without
    /// running anything.
    #[command(after_help = BUNDLE_EXIT_CODES_HELP)]
    Verify(BundleArgs),
    /// Show a bundle for a person to audit: tool, input, grants, effects, result, fuel, signer.
    Inspect(InspectArgs),
    /// Write a bundle from the store as a normalised .tar.zst.
    Export(ExportArgs),
    /// What a run cost, re-derived from its bundle alone (fuel, wall time, memory, GPU time, HTTP
    /// exchanges and tokens, bytes recorded) at the `[pricing]` of a daemon config, beside the
    /// cost the bundle records (signed in when it was sealed).
    #[command(after_help = BUNDLE_EXIT_CODES_HELP)]
    Cost(CostArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CostArgs {
    #[command(flatten)]
    pub(crate) bundle: BundleArgs,
    /// The daemon config whose `[pricing]` prices the run.
    #[arg(long, value_name = "FILE", env = "GUILD_CONFIG")]
    pub(crate) config: PathBuf,
    /// Print JSON: `{"bundle", "quantities", "cost", "recorded", "matches_recorded"}` (`recorded`:
    /// the bundle's own cost, `null` when sealed without a price table).
    #[arg(long)]
    pub(crate) json: bool,
    /// Exit 18 unless the re-derived cost is the one the bundle records.
    #[arg(long)]
    pub(crate) check: bool,
}

#[derive(Debug, Args)]
pub(crate) struct BundleArgs {
    /// A bundle file (.tar.zst) or a bundle id (or a unique prefix of at least 6 hex digits) in the store.
    #[arg(value_name = "FILE|ID")]
    pub(crate) bundle: String,
    /// Require the bundle to be signed by this public key (hex, from `guild key show`).
    #[arg(long, value_name = "PUBLIC_KEY")]
    pub(crate) key: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    #[command(flatten)]
    pub(crate) bundle: BundleArgs,
    /// Write the run as one self-contained HTML page (no server, no script, nothing fetched):
    /// the console's run view, for an auditor to open in any browser.
    #[arg(long, requires = "output")]
    pub(crate) html: bool,
    /// Where to write the HTML page (with `--html`).
    #[arg(short, long, value_name = "FILE.html", requires = "html")]
    pub(crate) output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// A bundle id (or a unique prefix of at least 6 hex digits) in the store.
    #[arg(value_name = "ID")]
    pub(crate) bundle: String,
    /// Where to write the archive.
    #[arg(short, long, value_name = "FILE.tar.zst")]
    pub(crate) output: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    pub(crate) bundle: BundleArgs,
    /// Replay even if the bundle was recorded by a different engine configuration.
    #[arg(long)]
    pub(crate) allow_engine_mismatch: bool,
    /// Also re-run every GPU dispatch here (this host's device, or the CPU reference) and
    /// compare: exactly for deterministic kernels, within each kernel's tolerance otherwise.
    #[arg(long)]
    pub(crate) recompute_gpu: bool,
    /// Wall-clock backstop for a replay whose original did not time out (a replay is bound by
    /// fuel, like its original); default: 5 minutes or ten times the recorded timeout.
    #[arg(long, value_name = "DURATION", value_parser = crate::units::parse_duration_ms)]
    pub(crate) backstop: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Print the public half of the host's signing key (created on first use).
    Show,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The tool: a WebAssembly component (.wasm) built for wasm32-wasip2 — a `guild-tool`
    /// component or a WASI command — or a WASI preview-1 module (adapted into a command).
    #[arg(value_name = "COMPONENT.wasm")]
    pub(crate) component: PathBuf,
    /// Input JSON. Defaults to `{}`.
    #[arg(long, value_name = "JSON", conflicts_with = "input_file")]
    pub(crate) input: Option<String>,
    /// Read the input JSON from a file (`-` for stdin).
    #[arg(long, value_name = "PATH")]
    pub(crate) input_file: Option<PathBuf>,
    /// Mount a host directory: HOST::GUEST[:ro|:rw] (read-only unless `:rw`). The tool must ask
    /// for GUEST in its capabilities; the access is the lesser of yours and the tool's. A WASI
    /// command asks for nothing: it gets exactly what you mount.
    #[arg(long = "dir", value_name = "HOST::GUEST[:ro|:rw]", value_parser = parse_mount)]
    pub(crate) dirs: Vec<Mount>,
    /// Fuel units the run may burn (~11 billion per second of compute).
    #[arg(long, value_name = "UNITS", default_value_t = guild_runtime::FUEL_UNITS_DEFAULT)]
    pub(crate) fuel: u64,
    /// Wall-clock limit, e.g. 2s or 500ms.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::units::parse_duration_ms)]
    pub(crate) timeout: u64,
    /// Linear memory limit, e.g. 64MiB.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = crate::units::parse_size)]
    pub(crate) memory: u64,
    /// Largest output the tool may return, e.g. 1MiB (a WASI command: its stdout, passed
    /// through as it is written; past this the run ends, exit 3).
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = crate::units::parse_size)]
    pub(crate) output_bytes: u64,
    /// Log budget (log lines, stdout and stderr together), e.g. 256KiB (a WASI command: its
    /// stderr, passed through as it is written; past this the run ends, exit 3).
    #[arg(long, value_name = "SIZE", default_value = "256KiB", value_parser = crate::units::parse_size)]
    pub(crate) log_bytes: u64,
    /// Allow outgoing HTTP matching RULE: [METHODS ]SCHEME://HOST[:PORT][/PATH-PREFIX], e.g.
    /// https://api.github.com, https://*.example.com:8443, GET http://127.0.0.1:8080/v1.
    /// Deny by default; names never reach private, loopback or link-local addresses unless a
    /// rule names the address.
    #[arg(long = "allow-host", value_name = "RULE", value_parser = parse_rule)]
    pub(crate) allow_hosts: Vec<EgressRule>,
    /// Define a secret: NAME=env:VARIABLE or NAME=file:PATH. Its value never enters the sandbox:
    /// a tool writes {{secret:NAME}} in a header and the host fills it in at send time.
    #[arg(long = "secret", value_name = "NAME=env:VAR|file:PATH", value_parser = parse_secret_source)]
    pub(crate) secrets: Vec<(String, SecretSource)>,
    /// Let secret NAME be sent to destinations matching RULE (repeatable).
    #[arg(long = "grant-secret", value_name = "NAME=RULE", value_parser = parse_secret_grant)]
    pub(crate) secret_grants: Vec<(String, EgressRule)>,
    /// Trust the CA certificates in this PEM file for egress TLS, besides the webpki roots.
    #[arg(long = "tls-ca", value_name = "FILE.pem")]
    pub(crate) tls_ca: Vec<PathBuf>,
    /// Outgoing HTTP requests the run may make.
    #[arg(long, value_name = "COUNT", default_value_t = guild_runtime::HTTP_REQUESTS_MAX_DEFAULT)]
    pub(crate) http_requests: u32,
    /// Largest HTTP response body the tool may receive, e.g. 8MiB.
    #[arg(long, value_name = "SIZE", default_value = "8MiB", value_parser = crate::units::parse_size)]
    pub(crate) http_response_bytes: u64,
    /// Largest mount that can be recorded into the run's bundle (file contents), e.g. 1GiB.
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = crate::units::parse_size)]
    pub(crate) mount_bytes: u64,
    /// Most files, directories and links a recorded mount may hold.
    #[arg(long, value_name = "COUNT", default_value_t = guild_replay::tree::TREE_LIMITS_DEFAULT.entries_max)]
    pub(crate) mount_entries: u64,
    /// Bytes of GPU buffers the run may hold at once, e.g. 64MiB.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = crate::units::parse_size)]
    pub(crate) gpu_buffer_bytes: u64,
    /// GPU buffers the run may hold at once.
    #[arg(long, value_name = "COUNT", default_value_t = guild_runtime::GPU_BUFFERS_MAX_DEFAULT)]
    pub(crate) gpu_buffers: u32,
    /// GPU dispatches the run may make.
    #[arg(long, value_name = "COUNT", default_value_t = guild_runtime::GPU_DISPATCHES_MAX_DEFAULT)]
    pub(crate) gpu_dispatches: u32,
    /// Time one GPU dispatch may take to complete, e.g. 30s.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::units::parse_duration_ms)]
    pub(crate) gpu_timeout: u64,
    /// Bytes of recording the run may make the host hold (tape events and the HTTP bodies they
    /// name), e.g. 64MiB; past it the tool is stopped.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = crate::units::parse_size)]
    pub(crate) recording_bytes: u64,
    /// WASI resources the run may hold at once: open files and directories, streams, pollables.
    #[arg(long, value_name = "COUNT", default_value_t = guild_runtime::WASI_RESOURCES_MAX_DEFAULT)]
    pub(crate) wasi_resources: u32,
    /// Bytes the run may write into each writable mount, e.g. 64MiB.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = crate::units::parse_size)]
    pub(crate) mount_write_bytes: u64,
    /// Files, directories and links the run may create in each writable mount.
    #[arg(long, value_name = "COUNT", default_value_t = guild_runtime::MOUNT_WRITE_ENTRIES_MAX_DEFAULT)]
    pub(crate) mount_write_entries: u64,
    /// Print the tool's log lines on stderr.
    #[arg(long)]
    pub(crate) logs: bool,
    /// Print the summary on stderr as one JSON object instead of a line for people.
    #[arg(long)]
    pub(crate) summary_json: bool,
    /// Most bytes read from stdin (a command's stdin, or `--input-file -`): a recorded run keeps
    /// all of its input, so it is read whole before the run starts.
    #[arg(long = "stdin-bytes", value_name = "BYTES", default_value_t = STDIN_BYTES_MAX_DEFAULT)]
    pub(crate) stdin_bytes_max: u64,
    /// WASI commands only: set the environment variable NAME for the program (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    pub(crate) envs: Vec<(String, String)>,
    /// WASI commands only: the program's arguments, after `--`. Its stdin is this process's (read
    /// whole first), its stdout and stderr are passed to this process's as it writes them (and
    /// recorded), and `guild` exits with the program's exit code (134 when it traps).
    #[arg(last = true, value_name = "ARGS")]
    pub(crate) command_args: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct DescribeArgs {
    /// The tool component.
    #[arg(value_name = "COMPONENT.wasm")]
    pub(crate) component: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ToolCommand {
    /// Scaffold a new tool (Rust, Python or JavaScript) that builds to a component with one command.
    New(NewToolArgs),
    /// Upload a component to a running daemon as a revision of its tool name (it never changes
    /// what callers get until a rollout or promotion says so).
    Upload(UploadArgs),
    /// List a tool's revisions on a running daemon: which is current, which the candidate.
    Revisions(ToolNameArgs),
    /// Switch a tool (every revision) off on a running daemon, for everyone or one tenant:
    /// calls get 403 `tool_disabled` with the reason.
    Disable(FlagArgs),
    /// Switch a disabled tool back on: for one tenant, or (without --tenant) for everyone,
    /// clearing every tenant's switch too.
    Enable(FlagArgs),
}

/// Where the daemon is; its admin token comes from `GUILD_TOKEN`.
#[derive(Debug, Args)]
#[command(after_help = "The admin tenant's token is read from GUILD_TOKEN. Exit codes: 0 done (a check that passed), \
1 refused by the gate or a conflict (409), 2 a bad request or unknown tool/revision (400, 404), 4 not allowed \
(401, 403), 5 the daemon unreachable or failing.")]
pub(crate) struct DaemonFlags {
    /// The daemon's base URL (plain HTTP: loopback or a private network).
    #[arg(long, env = "GUILD_URL", default_value = "http://127.0.0.1:8480", value_name = "URL")]
    pub(crate) url: String,
    /// Print the daemon's JSON answer instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct UploadArgs {
    /// The component.
    #[arg(value_name = "COMPONENT.wasm")]
    pub(crate) component: PathBuf,
    /// Add it under this name (default: the name its `describe` gives).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// A note kept with the revision.
    #[arg(long, default_value = "")]
    pub(crate) note: String,
    #[command(flatten)]
    pub(crate) daemon: DaemonFlags,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CacheCommand {
    /// Entries and bytes held per cached tool, with each tool's policy.
    Stats(CacheStatsArgs),
    /// Drop the entries of one tool (--tool) or of every tool; the next identical calls run.
    Purge(CachePurgeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct UsageArgs {
    #[command(flatten)]
    pub(crate) daemon: DaemonFlags,
    /// Only this tenant's (an admin token; others see only their own).
    #[arg(long)]
    pub(crate) tenant: Option<String>,
    /// Only this tool's.
    #[arg(long)]
    pub(crate) tool: Option<String>,
    /// Only this agent label's runs.
    #[arg(long)]
    pub(crate) agent: Option<String>,
    /// From this time, seconds since the Unix epoch (whole hours: the hour it falls in counts).
    #[arg(long, value_name = "UNIX_S")]
    pub(crate) from: Option<u64>,
    /// Before this time, seconds since the Unix epoch (whole hours: an hour starting before it
    /// counts).
    #[arg(long, value_name = "UNIX_S")]
    pub(crate) to: Option<u64>,
    /// Any of hour, day, tenant, tool, agent, comma-separated.
    #[arg(long, value_name = "KEYS", default_value = "tenant,tool")]
    pub(crate) group_by: String,
    /// Print CSV: period,tenant,tool,agent,currency,runs,total.
    #[arg(long)]
    pub(crate) csv: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CacheStatsArgs {
    #[command(flatten)]
    pub(crate) daemon: DaemonFlags,
}

#[derive(Debug, Args)]
pub(crate) struct CachePurgeArgs {
    /// Only this tool's entries.
    #[arg(long, value_name = "NAME")]
    pub(crate) tool: Option<String>,
    #[command(flatten)]
    pub(crate) daemon: DaemonFlags,
}

#[derive(Debug, Args)]
pub(crate) struct ToolNameArgs {
    /// The tool's name.
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) daemon: DaemonFlags,
}

#[derive(Debug, Args)]
pub(crate) struct FlagArgs {
    /// The tool's name.
    pub(crate) name: String,
    /// Only for this tenant (default: everyone).
    #[arg(long)]
    pub(crate) tenant: Option<String>,
    /// Why (required to disable): callers of a disabled tool are told, and the audit log
    /// keeps it.
    #[arg(long, default_value = "")]
    pub(crate) reason: String,
    #[command(flatten)]
    pub(crate) daemon: DaemonFlags,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RolloutCommand {
    /// Run a candidate on the current revision's last recorded runs, every effect answered from
    /// their tapes, and report each run: identical, output_changed, new_effect, missing_effect,
    /// error_changed, trap or limit.
    Check(CheckArgs),
    /// Start (or change) a rollout: the candidate answers PERCENT of calls, shadows more.
    Start(StartArgs),
    /// The tool's revisions, candidate, ramp and guard-rail window.
    Status(ToolNameArgs),
    /// Make the candidate the current revision.
    Promote(PromoteArgs),
    /// Send every call back to the current revision (ending the ramp), or with --to make an
    /// earlier revision current at once.
    Rollback(RollbackArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The tool's name.
    pub(crate) name: String,
    /// The candidate: a revision's component digest (or its number).
    #[arg(long, value_name = "DIGEST")]
    pub(crate) candidate: String,
    /// How many of the newest recorded runs to check.
    #[arg(long, value_name = "N")]
    pub(crate) last: Option<u64>,
    /// Only runs recorded within this long (e.g. 1h, 30m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) since: Option<std::time::Duration>,
    #[command(flatten)]
    pub(crate) daemon: DaemonFlags,
}

#[derive(Debug, Args)]
pub(crate) struct StartArgs {
    /// The tool's name.
    pub(crate) name: String,
    /// The candidate: a revision's component digest (or its number).
    #[arg(long, value_name = "DIGEST")]
    pub(crate) candidate: String,
    /// Share of calls the candidate answers, percent.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) percent: f64,
    /// Share of the current revision's calls the candidate also runs on (against their tapes,
    /// after the reply), percent.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) shadow: f64,
    /// Only these tenants' calls (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub(crate) tenants: Vec<String>,
    /// Start even though the replay gate fails (audited).
    #[arg(long)]
    pub(crate) force: bool,
    /// Replace another revision that is the candidate now.
    #[arg(long)]
    pub(crate) replace: bool,
    /// Why, for the audit log.
    #[arg(long, default_value = "")]
    pub(crate) reason: String,
    #[command(flatten)]
    pub(crate) daemon: DaemonFlags,
}

#[derive(Debug, Args)]
pub(crate) struct PromoteArgs {
    /// The tool's name.
    pub(crate) name: String,
    /// Promote a candidate that was started over a failed gate (audited).
    #[arg(long)]
    pub(crate) force: bool,
    /// Why, for the audit log.
    #[arg(long, default_value = "")]
    pub(crate) reason: String,
    #[command(flatten)]
    pub(crate) daemon: DaemonFlags,
}

#[derive(Debug, Args)]
pub(crate) struct RollbackArgs {
    /// The tool's name.
    pub(crate) name: String,
    /// Make this revision (number or component digest) current at once.
    #[arg(long, value_name = "REVISION")]
    pub(crate) to: Option<String>,
    /// Why, for the audit log.
    #[arg(long, default_value = "")]
    pub(crate) reason: String,
    #[command(flatten)]
    pub(crate) daemon: DaemonFlags,
}

#[derive(Debug, Args)]
pub(crate) struct NewToolArgs {
    /// The tool's name: lowercase letters, digits and `-`, starting with a letter.
    pub(crate) name: String,
    /// Directory to create (defaults to ./NAME).
    #[arg(long, value_name = "DIR")]
    pub(crate) path: Option<PathBuf>,
    /// The language to write the tool in.
    #[arg(long, value_enum, default_value = "rust")]
    pub(crate) lang: ToolLang,
    /// Path to guild-sdk (defaults to the sdk/ of the source tree this guild was built from).
    /// Rust tools only.
    #[arg(long, value_name = "DIR")]
    pub(crate) sdk: Option<PathBuf>,
}

/// The languages `guild tool new` scaffolds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ToolLang {
    /// A Rust crate on guild-sdk, built with cargo for wasm32-wasip2.
    Rust,
    /// A Python module built with componentize-py.
    Python,
    /// A JavaScript module built with componentize-js.
    Js,
}

fn parse_secret_source(text: &str) -> Result<(String, SecretSource), String> {
    let (name, source) =
        text.split_once('=').ok_or_else(|| format!("{text:?} is not NAME=env:VAR or NAME=file:PATH"))?;
    guild_runtime::egress::secrets::check_name(name)?;
    let source = SecretSource::parse(source).map_err(|e| format!("secret {name}: {e}"))?;
    Ok((name.to_string(), source))
}

fn parse_secret_grant(text: &str) -> Result<(String, EgressRule), String> {
    let (name, rule) = text.split_once('=').ok_or_else(|| format!("{text:?} is not NAME=RULE"))?;
    guild_runtime::egress::secrets::check_name(name)?;
    Ok((name.to_string(), parse_rule(rule)?))
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

fn parse_rule(text: &str) -> Result<EgressRule, String> {
    EgressRule::parse(text).map_err(|e| e.to_string())
}

/// Parse `HOST::GUEST[:ro|:rw]`.
fn parse_mount(text: &str) -> Result<Mount, String> {
    // The guest path a bare directory would be mounted at, to suggest (Guild's guest paths are
    // absolute; `wasmtime run --dir DIR` takes DIR for both).
    let suggested = |dir: &str| {
        let name = std::path::Path::new(dir).file_name().map(|n| n.to_string_lossy().into_owned());
        format!("/{}", name.unwrap_or_else(|| "data".into()))
    };
    let (host, rest) = text.split_once("::").ok_or_else(|| {
        format!(
            "{text:?} is not HOST::GUEST[:ro|:rw]; to mount it read-only at {0}: --dir {text}::{0}",
            suggested(text)
        )
    })?;
    let (guest, access) = match rest.rsplit_once(':') {
        Some((guest, "ro")) => (guest, Access::ReadOnly),
        Some((guest, "rw")) => (guest, Access::ReadWrite),
        Some((_, other)) => return Err(format!("unknown access {other:?} in {text:?}; use :ro or :rw")),
        None => (rest, Access::ReadOnly),
    };
    if host.is_empty() || guest.is_empty() {
        return Err(format!("{text:?} needs both a host directory and a guest path"));
    }
    if !guest.starts_with('/') {
        return Err(format!(
            "the guest path {guest:?} in {text:?} is relative; guest paths are absolute, e.g. --dir {host}::{}",
            suggested(guest)
        ));
    }
    Ok(Mount { host_path: PathBuf::from(host), guest_path: guest.to_string(), access })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_parse() {
        let m = parse_mount("./docs::/data:rw").expect("valid");
        assert_eq!(
            (m.host_path, m.guest_path.as_str(), m.access),
            (PathBuf::from("./docs"), "/data", Access::ReadWrite)
        );
        let m = parse_mount("/tmp/x::/data").expect("valid");
        assert_eq!(m.access, Access::ReadOnly);
        assert!(parse_mount("/tmp/x").is_err());
        assert!(parse_mount("/tmp/x::/data:rx").is_err());
        assert!(parse_mount("::/data").is_err());
        let relative = parse_mount("./d::data").expect_err("a relative guest path is a usage error");
        assert!(relative.contains("--dir ./d::/data"), "{relative}");
        let bare = parse_mount("./reports").expect_err("a bare directory");
        assert!(bare.contains("--dir ./reports::/reports"), "{bare}");
    }
}
