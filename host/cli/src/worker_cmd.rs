//! `guild worker` (run jobs from the Redis queue) and `guild jobs dead|retry` (its dead-letter
//! stream).

use crate::args::{Global, JobsCommand, RedisArgs, WorkerArgs};
use crate::exit::{Exit, Failure};
use crate::run_cmd::home_dir;
use crate::serve_cmd::{load_config, open_runtime, shutdown_signal, start_config};
use guild_queue::{RedisQueue, RedisSettings};
use guild_runtime::egress::{Secret, SecretSource};
use guild_server::config::DaemonConfig;
use guild_worker::{WorkerSetup, run_worker};
use std::time::Duration;

pub(crate) fn worker(global: &Global, args: WorkerArgs) -> Result<Exit, Failure> {
    let home = home_dir(global)?;
    let config = start_config(args.redis.config.as_deref())?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::host(format!("cannot start the async runtime: {e}")))?;
    let _in_tokio = tokio.enter();
    let queue = open_queue(&args.redis, &config)?;
    let queue_for_gate = queue.clone();
    let secrets = secrets(&config)?;
    let (runtime, store) = open_runtime(global, &config, &home)?;
    let concurrency = args.concurrency.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    if concurrency == 0 {
        return Err(Failure::usage("--concurrency must be at least 1"));
    }
    // A worker's jobs carry their tools' limits; the config's tools say how many resources a
    // run may hold at most (the default when it names none).
    let resources = config.tools.iter().map(|t| t.limits.wasi_resources_max).max().unwrap_or(0);
    let budget = guild_server::descriptors::Budget {
        runs: concurrency as u64,
        resources_per_run: u64::from(resources.max(guild_runtime::WASI_RESOURCES_MAX_DEFAULT)),
        connections: 0,
        egress_connections: config.egress_connections_max as u64,
    };
    let limit = guild_server::descriptors::raise_limit().map_err(Failure::host)?;
    budget.check(limit).map_err(Failure::usage)?;
    let labels: std::collections::BTreeMap<String, String> = args.labels.iter().cloned().collect();
    guild_queue::check_labels(&labels).map_err(|e| Failure::usage(format!("--label: {e}")))?;
    let advertisement = advertise(global, &runtime, labels);
    let name = args.name.unwrap_or_else(|| format!("worker-{}-{}", guild_server::host_name(), std::process::id()));
    tokio.block_on(async {
        tracing::info!(
            worker = %name,
            concurrency,
            queue = %queue.settings().queue,
            redis = %queue.settings().describe(),
            gpu = %advertisement.gpu.as_ref().map_or("none", |g| g.adapter.as_str()),
            labels = ?advertisement.labels,
            "worker started"
        );
        let shared_store = guild_server::shared_store(&config).map_err(|e| Failure::usage(e.to_string()))?;
        let mut trusted_keys: Vec<guild_replay::PublicKey> = runtime.public_key().into_iter().collect();
        // The config was validated: every key parses.
        trusted_keys.extend(config.cache.trusted_keys.iter().filter_map(|k| k.parse::<guild_replay::PublicKey>().ok()));
        if config.cache.trusted_keys.is_empty() {
            tracing::info!(
                key = %runtime.public_key().map(|k| k.to_string()).unwrap_or_default(),
                "shared result cache entries are trusted only when this worker signed them; list every worker's key \
                 (`guild key show`) in [cache] trusted_keys for hits across workers"
            );
        }
        let setup = WorkerSetup {
            queue,
            runtime,
            store: store.clone(),
            name: name.clone(),
            concurrency,
            secrets,
            shared_store,
            trusted_keys,
            gate: std::sync::Arc::new(guild_queue::EgressGates::shared(
                config.egress_limits(),
                config.egress_throttle_ms_max,
                queue_for_gate,
            )),
            advertisement,
        };
        let summary = run_worker(setup, shutdown_signal(), Duration::from_millis(args.drain)).await;
        if let Err(e) = store.flush() {
            tracing::error!(error = %e, "bundles could not be written");
        }
        tracing::info!(
            worker = %name,
            completed = summary.completed,
            duplicates = summary.duplicates,
            retried = summary.retried,
            dead = summary.dead,
            "worker stopped"
        );
        Ok(Exit::Success)
    })
}

/// What this worker tells the queue it has. A GPU only when it will run GPU work on one: its
/// adapter, or the CPU reference when the operator chose `--gpu cpu`; `--gpu auto` without an
/// adapter would fall back to the CPU, so it serves no GPU lane.
fn advertise(
    global: &Global,
    runtime: &guild_runtime::Runtime,
    labels: std::collections::BTreeMap<String, String>,
) -> guild_queue::Advertisement {
    let gpu = match global.gpu {
        guild_runtime::GpuMode::Off => None,
        guild_runtime::GpuMode::Cpu => {
            Some(guild_queue::GpuAdvert { adapter: guild_gpu::CPU_REFERENCE.to_string(), memory_bytes: None })
        }
        guild_runtime::GpuMode::Auto | guild_runtime::GpuMode::Device => {
            let info = runtime.gpu().info();
            match info.adapter {
                Some(adapter) => Some(guild_queue::GpuAdvert {
                    adapter: adapter.name,
                    memory_bytes: Some(adapter.limits.max_buffer_size),
                }),
                None => {
                    tracing::warn!(
                        why = %info.no_adapter.unwrap_or_default(),
                        "no GPU adapter: this worker reads no GPU lane (`--gpu cpu` would serve them on the CPU reference)"
                    );
                    None
                }
            }
        }
    };
    guild_queue::Advertisement {
        gpu,
        memory_bytes: guild_queue::machine_memory_bytes(),
        arch: std::env::consts::ARCH.to_string(),
        labels,
    }
}

pub(crate) fn jobs(command: JobsCommand) -> Result<Exit, Failure> {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::host(format!("cannot start the async runtime: {e}")))?;
    let _in_tokio = tokio.enter();
    let unreachable = |e: guild_queue::QueueError| Failure::host(e.to_string());
    match command {
        JobsCommand::Dead { redis, limit, json } => {
            let queue = open_queue(&redis, &load_config(redis.config.as_deref())?)?;
            let dead = tokio.block_on(queue.dead(limit)).map_err(unreachable)?;
            if json {
                for job in &dead {
                    crate::out!("{}", serde_json::to_string(job).expect("a dead job is plain data"));
                }
            } else if dead.is_empty() {
                crate::out!("no dead jobs");
            } else {
                crate::out!(
                    "{:<32}  {:<12}  {:<14}  {:>8}  {:<12}  error",
                    "job",
                    "tenant",
                    "tool",
                    "attempts",
                    "bundle"
                );
                for job in &dead {
                    let error = job.error.as_ref().map(|f| f.message.as_str()).unwrap_or_default();
                    let bundle = job.bundle.map(|b| b.short()).unwrap_or_else(|| "-".into());
                    crate::out!(
                        "{:<32}  {:<12}  {:<14}  {:>8}  {bundle:<12}  {error}",
                        job.id,
                        job.tenant,
                        job.tool,
                        job.attempts
                    );
                }
            }
            Ok(Exit::Success)
        }
        JobsCommand::Retry { id, redis } => {
            let queue = open_queue(&redis, &load_config(redis.config.as_deref())?)?;
            if tokio.block_on(queue.requeue(&id)).map_err(unreachable)? {
                crate::out!("job {id} is back in the queue with fresh attempts");
                Ok(Exit::Success)
            } else {
                Err(Failure::usage(format!("job {id} is not in the dead-letter stream (see `guild jobs dead`)")))
            }
        }
    }
}

/// The queue `--redis` (or the config's `[redis]`) names.
fn open_queue(args: &RedisArgs, config: &DaemonConfig) -> Result<RedisQueue, Failure> {
    let settings = match &args.redis {
        // `--redis` names one node: it replaces whichever shape the config gave.
        Some(url) => RedisSettings { url: Some(url.clone()), cluster: Vec::new(), sentinel: None, ..config.redis.clone() },
        None => config.redis.configured().cloned().ok_or_else(|| {
            Failure::usage(
                "no Redis: pass --redis redis://HOST:PORT/DB, or set redis.url, redis.cluster or redis.sentinel in the config (GUILD_REDIS__URL)",
            )
        })?,
    };
    RedisQueue::open(settings).map_err(|e| Failure::usage(e.to_string()))
}

/// Every secret the config's `[secrets]` defines: jobs name the ones they are granted.
fn secrets(config: &DaemonConfig) -> Result<Vec<Secret>, Failure> {
    config
        .secrets
        .iter()
        .map(|(name, source)| {
            let source =
                SecretSource::parse(source).map_err(|e| Failure::usage(format!("config: secrets.{name}: {e}")))?;
            Secret::read(name, &source).map_err(|e| Failure::usage(format!("config: secrets.{name}: {e}")))
        })
        .collect()
}
