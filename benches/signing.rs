//! What signing costs a busy host, printed as a Markdown table (`cargo bench --bench signing`).
//!
//! Measured: recorded warm calls of `echo` into a write-behind store (as a daemon records), run
//! by `concurrency` tasks at once on a multi-threaded runtime with two workers, each bundle
//! signed alone (`RecordingConfig::new`, as every bundle was before batching) and signed in
//! batches (`RecordingConfig::batched`, as a daemon does), the two interleaved level by level;
//! for each, the process's CPU time (user + system, every thread: the runtime's workers, the
//! store's writer, the signer) per sealed bundle, the calls per second, and the bundles per
//! signature. CPU time is read from
//! `/proc/self/stat` (clock ticks of 10 ms), so each level runs long enough for that to be fine.

use guild_replay::{BundleSignature, DirStore, HostKey};
use guild_runtime::{Grants, Limits, Outcome, RecordingConfig, Runtime, RuntimeConfig, SignBatchLimits, Tool};
use guild_test_artifacts::ECHO;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Recorded calls per concurrency level.
const CALLS: usize = 4000;
/// Concurrency levels measured.
const LEVELS: [usize; 4] = [1, 4, 16, 64];

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    rt.block_on(bench());
}

/// CPU time this process has used, all threads, user + system.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The command name (field 2) may hold spaces; the fields after its ')' are plain.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat") + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // USER_HZ is 100 on Linux, whatever the kernel's own tick.
    Duration::from_millis(ticks * 10)
}

struct Host {
    store: Arc<DirStore>,
    runtime: Arc<Runtime>,
    echo: Arc<Tool>,
}

async fn host(dir: &std::path::Path, batched: bool) -> Host {
    let store = Arc::new(DirStore::open_write_behind(dir, guild_replay::PENDING_BYTES_MAX_DEFAULT).expect("store"));
    let key = Arc::new(HostKey::generate().expect("key"));
    let recording = if batched {
        RecordingConfig::batched(store.clone(), key, SignBatchLimits::default()).expect("signer")
    } else {
        RecordingConfig::new(store.clone(), key)
    };
    let runtime = Arc::new(
        Runtime::new(RuntimeConfig { recording: Some(recording), ..RuntimeConfig::default() }).expect("runtime"),
    );
    let echo = runtime.load_file(ECHO.as_ref()).await.expect("load").0;
    Host { store, runtime, echo }
}

/// Run `CALLS` recorded calls, `concurrency` at a time; returns CPU per bundle, calls per second
/// and bundles per signature.
async fn measure(host: &Host, concurrency: usize) -> (Duration, f64, f64) {
    host.store.flush().expect("flush");
    let (cpu_before, started) = (cpu(), Instant::now());
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (runtime, echo) = (host.runtime.clone(), host.echo.clone());
            tokio::spawn(async move {
                let mut bundles = Vec::new();
                for _ in 0..CALLS / concurrency {
                    let report = runtime
                        .run(&echo, r#"{"message":"hello"}"#, &Grants::default(), &Limits::default())
                        .await
                        .expect("run");
                    assert!(matches!(report.outcome, Outcome::Output { .. }), "{:?}", report.outcome);
                    bundles.push(report.bundle.expect("every call is sealed"));
                }
                bundles
            })
        })
        .collect();
    let mut bundles = Vec::new();
    for task in tasks {
        bundles.extend(task.await.expect("task"));
    }
    host.store.flush().expect("flush");
    let (cpu_used, wall) = (cpu() - cpu_before, started.elapsed());
    let calls = bundles.len() as f64;
    let mut signatures: Vec<String> = bundles
        .iter()
        .map(|id| {
            let (_, signature) = host.store.get_bundle(id).expect("bundle");
            serde_json::from_slice::<BundleSignature>(&signature).expect("signature").signature
        })
        .collect();
    signatures.sort_unstable();
    signatures.dedup();
    (cpu_used.div_f64(calls), calls / wall.as_secs_f64(), calls / signatures.len() as f64)
}

async fn bench() {
    let home = tempfile::tempdir().expect("tempdir");
    let alone = host(&home.path().join("alone"), false).await;
    let batched = host(&home.path().join("batched"), true).await;
    println!(
        "| recorded warm calls of echo, {CALLS} per row | CPU per sealed bundle | calls/s | bundles per signature |"
    );
    println!("|---|---|---|---|");
    for concurrency in LEVELS {
        for (name, host) in [("signed alone", &alone), ("signed in batches", &batched)] {
            let (cpu, rate, per_signature) = measure(host, concurrency).await;
            println!(
                "| concurrency {concurrency}, {name} | {:.1} µs | {rate:.0} | {per_signature:.1} |",
                cpu.as_secs_f64() * 1e6
            );
        }
    }
}
