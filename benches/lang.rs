//! Tools in three languages side by side (`cargo bench --bench lang`): the Rust `wc`, the Python
//! `summarize-csv` (componentize-py) and the JavaScript `markdown-links` (componentize-js), each
//! reading one small file from a mount. Printed as a Markdown table for `benches/RESULTS.md`.
//!
//! Per tool: component size; cold compile (Cranelift, median of `GUILD_BENCH_COLD` runs,
//! default 3, 0 to skip); load from the disk cache (deserialize + link + `describe`); a warm call (fresh
//! pooled store + instantiate + call + drop, unrecorded; p50 and p99 of `GUILD_BENCH_LANG_CALLS`,
//! default 300) with its fuel and memory; and one recorded `guild run` process per call.
//!
//! `GUILD_BENCH_CACHE_DIR` names a compiled-artifact cache for the warm calls, so that repeated
//! runs skip the 20–35 s compile of each interpreter component; `GUILD_BENCH_PROCESS=0` skips the
//! `guild run` processes (each compiles the component once into its own fresh home);
//! `GUILD_BENCH_LANG_ONLY=python` measures only the rows whose label contains that word;
//! `GUILD_BENCH_LANG_DIR` reads the components (same file names) from a copy, which a build in
//! another work tree sharing the target directory cannot rewrite in the middle of a measurement.

use guild_runtime::{Access, Grants, Limits, Mount, Outcome, Runtime, RuntimeConfig, Tool};
use guild_test_artifacts::{MARKDOWN_LINKS, SUMMARIZE_CSV, WC};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Case {
    label: &'static str,
    component: &'static str,
    input: &'static str,
}

const CASES: [Case; 3] = [
    Case { label: "Rust `wc`", component: WC, input: r#"{"path":"/data/notes.md"}"# },
    Case { label: "Python `summarize-csv`", component: SUMMARIZE_CSV, input: r#"{"path":"/data/people.csv"}"# },
    Case { label: "JavaScript `markdown-links`", component: MARKDOWN_LINKS, input: r#"{"path":"/data/notes.md"}"# },
];

fn main() {
    // 0 skips the compile measurements (minutes for the interpreter components).
    let cold_runs: usize = env_number("GUILD_BENCH_COLD", 3);
    let calls: usize = env_number("GUILD_BENCH_LANG_CALLS", 300).max(10);
    let processes = env_number("GUILD_BENCH_PROCESS", 1) != 0;
    let cache_dir = std::env::var_os("GUILD_BENCH_CACHE_DIR").map(std::path::PathBuf::from);
    let only = std::env::var("GUILD_BENCH_LANG_ONLY").unwrap_or_default().to_lowercase();
    let components = std::env::var_os("GUILD_BENCH_LANG_DIR").map(std::path::PathBuf::from);
    let data = tempfile::tempdir().expect("tempdir");
    std::fs::write(data.path().join("people.csv"), "name,age,city\nann,31,Oslo\nbob,45,Lima\ncid,,Oslo\n")
        .expect("write");
    std::fs::write(
        data.path().join("notes.md"),
        "# Notes\n\nSee [the guide](guide.md) and [Rust](https://rust-lang.org).\n",
    )
    .expect("write");
    let grants = Grants {
        mounts: vec![Mount {
            host_path: data.path().to_path_buf(),
            guest_path: "/data".into(),
            access: Access::ReadOnly,
        }],
        ..Grants::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio");
    println!(
        "| tool | component | cold compile | load from disk cache | warm call p50 / p99 | fuel per call | memory | `guild run` process |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for case in CASES.iter().filter(|c| c.label.to_lowercase().contains(&only)) {
        let component = match &components {
            Some(dir) => dir.join(Path::new(case.component).file_name().expect("a file")),
            None => case.component.into(),
        };
        let bytes = std::fs::read(&component).expect("component built by guild-test-artifacts");
        let (cold, disk) = if cold_runs > 0 {
            let (cold, disk) = rt.block_on(load_times(&bytes, cold_runs));
            (millis(cold), millis(disk))
        } else {
            ("—".to_string(), "—".to_string())
        };
        let (p50, p99, fuel, memory) = rt.block_on(warm_calls(case, &component, &grants, calls, cache_dir.as_deref()));
        let process =
            if processes { millis(process_per_call(case, &component, data.path())) } else { "—".to_string() };
        println!(
            "| {} | {:.1} MiB | {} | {} | {} / {} | {} | {:.1} MiB | {} |",
            case.label,
            bytes.len() as f64 / 1048576.0,
            cold,
            disk,
            micros(p50),
            micros(p99),
            fuel,
            memory as f64 / 1048576.0,
            process,
        );
    }
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn runtime(cache_dir: Option<&Path>) -> Arc<Runtime> {
    let config = RuntimeConfig { cache_dir: cache_dir.map(Path::to_path_buf), ..RuntimeConfig::default() };
    Arc::new(Runtime::new(config).expect("runtime"))
}

/// Median cold compile and median load from the disk cache.
async fn load_times(bytes: &[u8], runs: usize) -> (Duration, Duration) {
    let cache = tempfile::tempdir().expect("tempdir");
    let (mut cold, mut disk) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let _ = std::fs::remove_dir_all(cache.path());
        let started = Instant::now();
        runtime(Some(cache.path())).load(bytes).await.expect("compile");
        cold.push(started.elapsed());
        for _ in 0..2 {
            let started = Instant::now();
            runtime(Some(cache.path())).load(bytes).await.expect("from disk");
            disk.push(started.elapsed());
        }
    }
    (median(cold), median(disk))
}

async fn call(runtime: &Runtime, tool: &Tool, case: &Case, grants: &Grants) -> guild_runtime::RunReport {
    let report = runtime.run(tool, case.input, grants, &Limits::default()).await.expect("run");
    assert!(matches!(report.outcome, Outcome::Output { .. }), "{}: {:?}", case.label, report.outcome);
    report
}

/// p50 and p99 of warm calls, and the fuel and peak memory of one.
async fn warm_calls(
    case: &Case,
    component: &Path,
    grants: &Grants,
    calls: usize,
    cache_dir: Option<&Path>,
) -> (Duration, Duration, u64, u64) {
    let runtime = runtime(cache_dir);
    let tool = runtime.load_file(component).await.expect("load").0;
    for _ in 0..calls / 10 {
        call(&runtime, &tool, case, grants).await;
    }
    let mut samples = Vec::with_capacity(calls);
    let mut last = None;
    for _ in 0..calls {
        let started = Instant::now();
        last = Some(call(&runtime, &tool, case, grants).await);
        samples.push(started.elapsed());
    }
    samples.sort();
    let report = last.expect("at least one call");
    let p99 = samples[(samples.len() * 99 / 100).min(samples.len() - 1)];
    (samples[samples.len() / 2], p99, report.fuel_used_units, report.memory_bytes_peak)
}

/// Mean wall time of one recorded `guild run` process, compiled code from the disk cache.
fn process_per_call(case: &Case, component: &Path, data: &Path) -> Duration {
    let home = tempfile::tempdir().expect("tempdir");
    let mount = format!("{}::/data:ro", data.display());
    let run = || {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_guild"))
            .arg("run")
            .arg(component)
            .args(["--input", case.input, "--dir", &mount])
            .env("GUILD_HOME", home.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("guild runs");
        assert!(status.success(), "{}", case.label);
    };
    run();
    let started = Instant::now();
    for _ in 0..10 {
        run();
    }
    started.elapsed() / 10
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn micros(d: Duration) -> String {
    if d >= Duration::from_millis(1) { millis(d) } else { format!("{:.0} µs", d.as_secs_f64() * 1e6) }
}

fn millis(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}
