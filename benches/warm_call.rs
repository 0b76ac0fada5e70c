//! Guild's performance figures, printed as a Markdown table (`cargo bench --bench warm_call`).
//!
//! Measured: warm-call latency of a trivial tool (fresh store from the pooled `InstancePre`,
//! instantiate, call, drop); cold compile vs disk-cached vs in-memory load; calls per second on
//! one and two threads; fuel metering against epoch-only on a CPU-heavy guest; and, for scale,
//! one `guild run` process per call. Iteration counts come from `GUILD_BENCH_CALLS` (default
//! 20000) so a quick run is possible.

use guild_runtime::{EngineSettings, Grants, Limits, Outcome, Runtime, RuntimeConfig, Tool};
use guild_test_artifacts::{ECHO, HOSTILE};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ECHO_INPUT: &str = r#"{"message":"hello"}"#;
const SPIN_ROUNDS: u64 = 50_000_000;

fn main() {
    let calls: usize = std::env::var("GUILD_BENCH_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio");
    println!("| measurement | result |");
    println!("|---|---|");
    rt.block_on(load_paths());
    let runtime = runtime(EngineSettings::default(), None);
    let echo = rt.block_on(load(&runtime, ECHO));
    rt.block_on(warm_latency(&runtime, &echo, calls));
    throughput(&runtime, &echo, calls, 1);
    throughput(&runtime, &echo, calls, 2);
    rt.block_on(fuel_overhead());
    process_per_call();
}

fn runtime(engine: EngineSettings, cache_dir: Option<std::path::PathBuf>) -> Arc<Runtime> {
    Arc::new(Runtime::new(RuntimeConfig { cache_dir, engine, ..RuntimeConfig::default() }).expect("runtime"))
}

async fn load(runtime: &Runtime, path: &str) -> Arc<Tool> {
    runtime.load_file(path.as_ref()).await.expect("load").0
}

async fn call(runtime: &Runtime, tool: &Tool, input: &str) -> guild_runtime::RunReport {
    let report = runtime.run(tool, input, &Grants::default(), &Limits::default()).await.expect("run");
    assert!(matches!(report.outcome, Outcome::Output { .. }), "{:?}", report.outcome);
    report
}

fn row(what: &str, result: String) {
    println!("| {what} | {result} |");
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

async fn load_paths() {
    let cache = tempfile::tempdir().expect("tempdir");
    let bytes = std::fs::read(ECHO).expect("echo.wasm");
    let mut cold = Vec::new();
    let mut disk = Vec::new();
    for _ in 0..5 {
        let _ = std::fs::remove_dir_all(cache.path());
        let fresh = runtime(EngineSettings::default(), Some(cache.path().to_path_buf()));
        let started = Instant::now();
        fresh.load(&bytes).await.expect("compile");
        cold.push(started.elapsed());
        let again = runtime(EngineSettings::default(), Some(cache.path().to_path_buf()));
        let started = Instant::now();
        again.load(&bytes).await.expect("from disk");
        disk.push(started.elapsed());
    }
    let warm = runtime(EngineSettings::default(), None);
    warm.load(&bytes).await.expect("load");
    let started = Instant::now();
    for _ in 0..1000 {
        warm.load(&bytes).await.expect("from memory");
    }
    let memory = started.elapsed() / 1000;
    cold.sort();
    disk.sort();
    row(&format!("load echo.wasm ({} KiB): cold compile, median of 5", bytes.len() / 1024), millis(cold[2]));
    row("load echo.wasm: from the disk cache, median of 5", millis(disk[2]));
    row("load echo.wasm: already in memory (hash + lookup)", micros(memory));
}

async fn warm_latency(runtime: &Runtime, echo: &Tool, calls: usize) {
    for _ in 0..1000 {
        call(runtime, echo, ECHO_INPUT).await;
    }
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        call(runtime, echo, ECHO_INPUT).await;
        samples.push(started.elapsed());
    }
    samples.sort();
    // Nearest-rank percentile: a rank in [0, len), as a float first.
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "q is in [0, 1]")]
    let p = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    row(&format!("warm call of echo, p50 ({calls} calls)"), micros(p(0.50)));
    row(&format!("warm call of echo, p99 ({calls} calls)"), micros(p(0.99)));
}

fn throughput(runtime: &Arc<Runtime>, echo: &Arc<Tool>, calls: usize, threads: usize) {
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (runtime, echo) = (runtime.clone(), echo.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio");
                rt.block_on(async {
                    for _ in 0..calls {
                        call(&runtime, &echo, ECHO_INPUT).await;
                    }
                });
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker");
    }
    let per_second = (calls * threads) as f64 / started.elapsed().as_secs_f64();
    row(&format!("calls per second, {threads} thread(s)"), format!("{per_second:.0}"));
}

async fn fuel_overhead() {
    let input = format!(r#"{{"attack":"spin","rounds":{SPIN_ROUNDS}}}"#);
    let mut timings = Vec::new();
    for fuel_metering in [true, false] {
        let runtime = runtime(EngineSettings { fuel_metering, ..EngineSettings::default() }, None);
        let tool = load(&runtime, HOSTILE).await;
        call(&runtime, &tool, &input).await;
        let mut samples: Vec<Duration> = Vec::new();
        let mut fuel = 0;
        for _ in 0..7 {
            let report = call(&runtime, &tool, &input).await;
            samples.push(report.wall_time);
            fuel = report.fuel_used_units;
        }
        samples.sort();
        timings.push((samples[3], fuel));
    }
    let (on, fuel) = timings[0];
    let (off, _) = timings[1];
    row(&format!("CPU-heavy guest ({SPIN_ROUNDS} rounds), fuel + epoch, median of 7"), millis(on));
    row("CPU-heavy guest, epoch only, median of 7", millis(off));
    row(
        "fuel metering overhead",
        format!(
            "{:+.1}% ({fuel} units, {:.1} billion units/s)",
            (on.as_secs_f64() / off.as_secs_f64() - 1.0) * 100.0,
            fuel as f64 / on.as_secs_f64() / 1e9
        ),
    );
}

fn process_per_call() {
    let home = tempfile::tempdir().expect("tempdir");
    let run = || {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_guild"))
            .args(["run", ECHO, "--input", ECHO_INPUT])
            .env("GUILD_HOME", home.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("guild runs");
        assert!(status.success());
    };
    run();
    let started = Instant::now();
    for _ in 0..20 {
        run();
    }
    row("one `guild run` process per call (cached compile), mean of 20", millis(started.elapsed() / 20));
}
