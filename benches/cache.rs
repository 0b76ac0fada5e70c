//! What the result cache costs and saves, printed as Markdown (`cargo bench --bench cache`).
//!
//! 1. **Hit latency inside the daemon**: a daemon (the same `guild_server::start` that `guild
//!    serve` runs, its home on the disk under `TMPDIR`) with the `hash` tool registered twice, as
//!    `hash` with `cache = true` and as `hash-plain` without. One call stores the entry; then
//!    sequential calls of it are timed from `Daemon::submit` to its answer — the request's path
//!    inside the server, without HTTP — beside plain runs of the same call, and the part a hit
//!    spends in the cache itself (its answer's `wall_time_us`: lookup to answer) is shown apart
//!    from the rest (admission, the run table, the queue, the audit record's group commit, which
//!    every answer waits for). Run it with `TMPDIR` on a tmpfs to see the path without the disk's
//!    flush.
//! 2. **A replayed trace of repeated calls**: 4 000 calls drawn from 400 distinct texts with a
//!    Zipf(1) popularity (a fixed seed), through the cached tool: hit ratio, and fuel charged
//!    against the fuel the same trace burns with no cache.

use guild_replay::{DirStore, HostKey};
use guild_runtime::{RecordingConfig, Runtime, RuntimeConfig};
use guild_server::config::DaemonConfig;
use guild_server::{DaemonSetup, RunRequest, Submitted};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-token";
/// Timed calls of each kind.
const CALLS: usize = 2000;
/// The trace.
const TRACE_CALLS: usize = 4000;
const TRACE_DISTINCT: usize = 400;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    rt.block_on(bench());
}

async fn bench() {
    let home = tempfile::tempdir().expect("tempdir");
    let config = format!(
        r#"
[[tools]]
path = "{hash}"
cache = true

[[tools]]
path = "{hash}"
name = "hash-plain"

[[tenants]]
name = "bench"
token_blake3 = "{digest}"
tools = ["*"]
rate_per_second = 1000000.0
burst = 1000000
"#,
        hash = guild_test_artifacts::HASH,
        digest = blake3::hash(TOKEN.as_bytes()).to_hex(),
    );
    let (config, _) = DaemonConfig::load(&config, Path::new("bench.toml"), Vec::new()).expect("config");
    let store = Arc::new(DirStore::open(home.path().join("store")).expect("store"));
    let recording =
        RecordingConfig::batched(store.clone(), Arc::new(HostKey::generate().expect("key")), config.signing)
            .expect("signer");
    let runtime = Arc::new(
        Runtime::new(RuntimeConfig { recording: Some(recording), ..RuntimeConfig::default() }).expect("runtime"),
    );
    let setup = DaemonSetup {
        config,
        runtime,
        store,
        state_dir: home.path().to_path_buf(),
        default_token: None,
        extra_tools: Vec::new(),
    };
    let daemon = guild_server::start(setup).await.expect("daemon").daemon;
    let tenant = daemon.tenant_for(TOKEN).expect("tenant");
    let call = |tool: &str, text: &str| RunRequest {
        tool: tool.into(),
        input: serde_json::json!({ "text": text }),
        asynchronous: false,
        idempotency_key: None,
        cancel: None,
        subject: None,
        agent: None,
        priority: None,
    };
    let answer = |submitted: Submitted| match submitted {
        Submitted::Finished { finished, .. } | Submitted::Replayed { finished, .. } => finished,
        Submitted::Accepted { .. } => panic!("a sync call answers"),
    };
    let text = "the quick brown fox jumps over the lazy dog";
    let first = answer(daemon.submit(&tenant, call("hash", text)).await.expect("stored"));
    assert_eq!(first.cache.as_ref().map(ToString::to_string).as_deref(), Some("stored"));

    println!(
        "| path (sequential, in the daemon, no HTTP) | calls | median | p99 | of which in the cache: prepare + lookup (median) |"
    );
    println!("|---|---|---|---|---|");
    for (label, tool) in
        [("plain run of `hash` (recorded, audited)", "hash-plain"), ("cache hit of the same call", "hash")]
    {
        for _ in 0..100 {
            daemon.submit(&tenant, call(tool, text)).await.expect("warm-up");
        }
        let mut samples = Vec::with_capacity(CALLS);
        let mut inside = Vec::with_capacity(CALLS);
        for _ in 0..CALLS {
            let started = Instant::now();
            let finished = answer(daemon.submit(&tenant, call(tool, text)).await.expect("call"));
            samples.push(started.elapsed());
            inside.push(Duration::from_micros(finished.wall_time_us));
        }
        samples.sort();
        inside.sort();
        let in_cache = if tool == "hash" { ns(inside[CALLS / 2]) } else { "—".into() };
        println!("| {label} | {CALLS} | {} | {} | {in_cache} |", us(samples[CALLS / 2]), us(samples[CALLS * 99 / 100]));
    }

    // The trace: Zipf(1) over TRACE_DISTINCT texts, drawn with a fixed xorshift seed.
    let weights: Vec<f64> = (1..=TRACE_DISTINCT).map(|rank| 1.0 / rank as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut draw = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut point = (state >> 11) as f64 / (1u64 << 53) as f64 * total;
        weights
            .iter()
            .position(|w| {
                point -= w;
                point <= 0.0
            })
            .unwrap_or(TRACE_DISTINCT - 1)
    };
    let trace: Vec<usize> = (0..TRACE_CALLS).map(|_| draw()).collect();
    let (mut hits, mut charged, mut uncached) = (0usize, 0u64, 0u64);
    let mut fuel_of = vec![0u64; TRACE_DISTINCT];
    let started = Instant::now();
    for &n in &trace {
        let finished = answer(daemon.submit(&tenant, call("hash", &format!("document {n}"))).await.expect("call"));
        charged += finished.fuel_used_units;
        if finished.cache.as_ref().is_some_and(|c| c.cached()) {
            hits += 1;
        } else {
            fuel_of[n] = finished.fuel_used_units;
        }
    }
    let elapsed = started.elapsed();
    for &n in &trace {
        uncached += fuel_of[n];
    }
    let distinct = trace.iter().collect::<std::collections::BTreeSet<_>>().len();
    println!();
    println!(
        "| trace | calls | distinct | hits | hit ratio | fuel charged | fuel without the cache | saved | calls/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| Zipf(1) over {TRACE_DISTINCT} texts, `hash` | {TRACE_CALLS} | {distinct} | {hits} | {:.1}% | {charged} | {uncached} | {:.1}% | {:.0} |",
        100.0 * hits as f64 / TRACE_CALLS as f64,
        100.0 * (1.0 - charged as f64 / uncached as f64),
        TRACE_CALLS as f64 / elapsed.as_secs_f64()
    );
    let _ = daemon.drain(Duration::from_secs(10)).await;
}

/// A duration counted in whole µs (a run's `wall_time_us`).
fn ns(d: Duration) -> String {
    if d.is_zero() { "< 1 µs".into() } else { format!("{} µs", d.as_micros()) }
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}
