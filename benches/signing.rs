//! What signing costs a busy host, printed as a Markdown table (`cargo bench --bench signing`).
//!
//! Measured: recorded warm calls of `echo` into a write-behind store (as a daemon records), run
//! by `concurrency` tasks at once on a multi-threaded runtime with two workers; for each level,
//! the process's CPU time (user + system, every thread: the runtime's workers, the store's
//! writer, the signer) per sealed bundle, and the calls per second. CPU time is read from
//! `/proc/self/stat` (clock ticks of 10 ms), so each level runs long enough for that to be fine.

use guild_replay::{DirStore, HostKey};
use guild_runtime::{Grants, Limits, Outcome, RecordingConfig, Runtime, RuntimeConfig};
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

async fn bench() {
    let home = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(
        DirStore::open_write_behind(home.path().join("store"), guild_replay::PENDING_BYTES_MAX_DEFAULT).expect("store"),
    );
    let recording = RecordingConfig::new(store.clone(), Arc::new(HostKey::generate().expect("key")));
    let runtime = Arc::new(
        Runtime::new(RuntimeConfig { recording: Some(recording), ..RuntimeConfig::default() }).expect("runtime"),
    );
    let echo = Arc::new(runtime.load_file(ECHO.as_ref()).await.expect("load").0);

    println!("| recorded warm calls of echo, {CALLS} per level | CPU per sealed bundle | calls/s |");
    println!("|---|---|---|");
    for concurrency in LEVELS {
        store.flush().expect("flush");
        let (cpu_before, started) = (cpu(), Instant::now());
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (runtime, echo) = (runtime.clone(), echo.clone());
                tokio::spawn(async move {
                    for _ in 0..CALLS / concurrency {
                        let report = runtime
                            .run(&echo, r#"{"message":"hello"}"#, &Grants::default(), &Limits::default())
                            .await
                            .expect("run");
                        assert!(matches!(report.outcome, Outcome::Output { .. }), "{:?}", report.outcome);
                        assert!(report.bundle.is_some(), "every call is sealed");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        store.flush().expect("flush");
        let (cpu_used, wall) = (cpu() - cpu_before, started.elapsed());
        let calls = (CALLS / concurrency * concurrency) as f64;
        println!(
            "| concurrency {concurrency} | {:.1} µs | {:.0} |",
            cpu_used.as_secs_f64() * 1e6 / calls,
            calls / wall.as_secs_f64()
        );
    }
}
