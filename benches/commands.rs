//! A WASI command beside a `guild-tool` component doing the same work (`cargo bench --bench
//! commands`): echoing a short message. Per call: a warm call through the runtime (fresh pooled
//! store + instantiate + call + drop, unrecorded; p50 and p99 of `GUILD_BENCH_COMMAND_CALLS`,
//! default 2000), one `guild run` process (recorded, compiled code from the disk cache), and one
//! `wasmtime run` process of the same command when `WASMTIME` names a wasmtime binary. Printed as
//! a Markdown table for `benches/RESULTS.md`.

use guild_runtime::{Grants, Limits, Outcome, Runtime, RuntimeConfig, Tool};
use guild_test_artifacts::{ECHO, WASI_COMMAND};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PROCESS_RUNS: u32 = 30;

fn main() {
    let calls: usize = std::env::var("GUILD_BENCH_COMMAND_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let home = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
    let (tool, command) = tokio.block_on(async {
        let (tool, _) = runtime.load_file(ECHO.as_ref()).await.expect("echo");
        let (command, _) = runtime.load_file(WASI_COMMAND.as_ref()).await.expect("command");
        (tool, command)
    });
    println!("| what | guild-tool `echo` | WASI command `echo` |");
    println!("|---|---|---|");
    let tool_input = r#"{"message":"hello"}"#;
    let command_input = r#"{"args":["echo","hello"]}"#;
    let (tool_p50, tool_p99) = tokio.block_on(warm(&runtime, &tool, tool_input, calls));
    let (command_p50, command_p99) = tokio.block_on(warm(&runtime, &command, command_input, calls));
    println!(
        "| warm call p50 / p99 ({calls} calls) | {} / {} | {} / {} |",
        us(tool_p50),
        us(tool_p99),
        us(command_p50),
        us(command_p99)
    );
    let guild_tool = process(|| guild(home.path()).args(["run", ECHO, "--input", tool_input]).status());
    let guild_command = process(|| guild(home.path()).args(["run", WASI_COMMAND, "--", "echo", "hello"]).status());
    println!("| one `guild run` process (recorded) | {} | {} |", ms(guild_tool), ms(guild_command));
    if let Some(wasmtime) = std::env::var_os("WASMTIME") {
        let peer = process(|| {
            Command::new(&wasmtime).args(["run", WASI_COMMAND, "echo", "hello"]).stdout(Stdio::null()).status()
        });
        println!("| one `wasmtime run` process | — | {} |", ms(peer));
    }
}

/// p50 and p99 of `calls` warm calls, after as many to warm up.
async fn warm(runtime: &Runtime, tool: &Tool, input: &str, calls: usize) -> (Duration, Duration) {
    let mut samples = Vec::with_capacity(calls);
    for i in 0..calls * 2 {
        let started = Instant::now();
        let report = runtime.run(tool, input, &Grants::default(), &Limits::default()).await.expect("run");
        assert!(matches!(report.outcome, Outcome::Output { .. }), "{:?}", report.outcome);
        if i >= calls {
            samples.push(started.elapsed());
        }
    }
    samples.sort();
    (samples[calls / 2], samples[calls * 99 / 100])
}

fn guild(home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_guild"));
    command.env("GUILD_HOME", home).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    command
}

/// Mean wall time of one process, after one that fills the compiled-code cache.
fn process(mut run: impl FnMut() -> std::io::Result<std::process::ExitStatus>) -> Duration {
    assert!(run().expect("starts").success());
    let started = Instant::now();
    for _ in 0..PROCESS_RUNS {
        assert!(run().expect("starts").success());
    }
    started.elapsed() / PROCESS_RUNS
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}
