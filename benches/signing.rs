//! What signing costs a busy host, printed as a Markdown table (`cargo bench --bench signing`).
//!
//! Measured: recorded warm calls of `echo` into a write-behind store (as a daemon records), run
//! by `concurrency` tasks at once on a multi-threaded runtime with two workers, each bundle
//! signed alone (`RecordingConfig::new`, as every bundle was before batching), signed in
//! batches (`RecordingConfig::batched`, as a daemon does), and in batches that wait up to a
//! millisecond to fill, interleaved level by level;
//! for each, the process's CPU time (user + system, every thread: the runtime's workers, the
//! store's writer, the signer) per sealed bundle, the calls per second, and the bundles per
//! signature. Then the signature alone, without runs: ids signed one by one by several threads,
//! with the key per id or through one batch signer. CPU time is read from
//! `/proc/self/stat` (clock ticks of 10 ms), so each level runs long enough for that to be fine.

use guild_replay::{BundleSignature, Digest, DirStore, HostKey};
use guild_runtime::{
    BatchSigner, Grants, Limits, Outcome, RecordingConfig, Runtime, RuntimeConfig, SignBatchLimits, Tool,
};
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

/// A host whose bundles are signed alone (`None`) or in batches that wait up to `Some(wait_us)`.
async fn host(dir: &std::path::Path, batched: Option<u64>) -> Host {
    let store = Arc::new(DirStore::open_write_behind(dir, guild_replay::PENDING_BYTES_MAX_DEFAULT).expect("store"));
    let key = Arc::new(HostKey::generate().expect("key"));
    let recording = match batched {
        Some(wait_us) => {
            let limits = SignBatchLimits { wait_us, ..SignBatchLimits::default() };
            RecordingConfig::batched(store.clone(), key, limits).expect("signer")
        }
        None => RecordingConfig::new(store.clone(), key),
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

/// Rounds of each row, interleaved; the median is printed.
const ROUNDS: usize = 3;

async fn bench() {
    let home = tempfile::tempdir().expect("tempdir");
    let hosts = [
        ("signed alone", host(&home.path().join("alone"), None).await),
        ("signed in batches", host(&home.path().join("batched"), Some(0)).await),
        ("signed in batches, wait_us 1000", host(&home.path().join("lingering"), Some(1000)).await),
    ];
    println!(
        "| recorded warm calls of echo, {CALLS} per row, median of {ROUNDS} | CPU per sealed bundle | calls/s | bundles per signature |"
    );
    println!("|---|---|---|---|");
    for concurrency in LEVELS {
        let mut rows: Vec<Vec<(Duration, f64, f64)>> = vec![Vec::new(); hosts.len()];
        for _ in 0..ROUNDS {
            for ((_, host), samples) in hosts.iter().zip(&mut rows) {
                samples.push(measure(host, concurrency).await);
            }
        }
        for ((name, _), mut samples) in hosts.iter().zip(rows) {
            samples.sort_by_key(|s| s.0);
            let cpu = samples[ROUNDS / 2].0;
            let mut rates: Vec<f64> = samples.iter().map(|s| s.1).collect();
            rates.sort_by(f64::total_cmp);
            let per_signature = samples.iter().map(|s| s.2).sum::<f64>() / ROUNDS as f64;
            println!(
                "| concurrency {concurrency}, {name} | {:.1} µs | {:.0} | {per_signature:.2} |",
                cpu.as_secs_f64() * 1e6,
                rates[ROUNDS / 2]
            );
        }
    }
    signer_alone();
}

/// The signature alone, without runs: `threads` OS threads (each standing for a core sealing
/// bundles) each sign `IDS` ids one after another, with the key per id or through one shared
/// [`BatchSigner`].
fn signer_alone() {
    const IDS: usize = 20_000;
    println!();
    println!("| {IDS} ids from each thread, signature only | CPU per id | ids per signature |");
    println!("|---|---|---|");
    let key = Arc::new(HostKey::generate().expect("key"));
    for threads in [1, 2, 8, 32] {
        let ids = IDS * threads;
        let before = cpu();
        std::thread::scope(|scope| {
            for t in 0..threads {
                let key = key.clone();
                scope.spawn(move || {
                    for i in 0..IDS {
                        std::hint::black_box(key.sign(&Digest::of(format!("{t}/{i}").as_bytes())));
                    }
                });
            }
        });
        let per_id = (cpu() - before).div_f64(ids as f64);
        println!("| {threads} threads, each id signed alone | {:.1} µs | 1.00 |", per_id.as_secs_f64() * 1e6);

        let signer = BatchSigner::start(key.clone(), SignBatchLimits::default()).expect("signer");
        let before = cpu();
        let signatures: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let signer = &signer;
                    scope.spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread().build().expect("tokio");
                        (0..IDS)
                            .map(|i| {
                                let id = Digest::of(format!("{t}/{i}").as_bytes());
                                rt.block_on(signer.sign(id)).expect("signed").signature
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().expect("thread")).collect()
        });
        let per_id = (cpu() - before).div_f64(ids as f64);
        let mut distinct = signatures;
        distinct.sort_unstable();
        distinct.dedup();
        println!(
            "| {threads} threads, through the batch signer | {:.1} µs | {:.2} |",
            per_id.as_secs_f64() * 1e6,
            ids as f64 / distinct.len() as f64
        );
    }
}
