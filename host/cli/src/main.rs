//! The `guild` binary: parses arguments, wires the crates together, and maps outcomes to exit
//! codes. No run logic lives here; it all sits in guild-runtime.

mod admin_cmd;
mod args;
mod bundle_cmd;
mod exit;
mod gpu_cmd;
mod mcp_cmd;
mod run_cmd;
mod scaffold;
mod scaffold_lang;
mod serve_cmd;
mod units;
mod worker_cmd;

use clap::Parser;
use std::process::ExitCode;

/// The process's allocator for Rust's allocations: mimalloc rather than glibc's malloc, for 1.2×
/// the daemon's runs/s and 0.9× its CPU per run at the cost of more resident memory
/// (`benches/RESULTS.md`, 2026-12-02). Only this binary: the library crates' tests and the
/// in-process benchmarks keep the system allocator, and C libraries (zstd, the Vulkan loader)
/// keep glibc's. Guest linear memory is not this heap: wasmtime maps it itself.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `println!` that ignores a closed stdout (`guild describe x.wasm | head`) instead of panicking.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    // `guild run --summary-json` promises one JSON line on stderr, refused runs included.
    let summary_json = matches!(&cli.command, args::Command::Run(run) if run.summary_json);
    let result = match cli.command {
        args::Command::Run(run) => run_cmd::run(&cli.global, run),
        args::Command::Describe(describe) => run_cmd::describe(&cli.global, describe),
        args::Command::Tool(tool) => admin_cmd::tool(tool),
        args::Command::Rollout(rollout) => admin_cmd::rollout(rollout),
        args::Command::Cache(cache) => admin_cmd::cache(cache),
        args::Command::Usage(usage) => admin_cmd::usage(usage),
        args::Command::Bundle(args::BundleCommand::Verify(a)) => bundle_cmd::verify(&cli.global, a),
        args::Command::Bundle(args::BundleCommand::Inspect(a)) => bundle_cmd::inspect(&cli.global, a),
        args::Command::Bundle(args::BundleCommand::Export(a)) => bundle_cmd::export(&cli.global, a),
        args::Command::Bundle(args::BundleCommand::Cost(a)) => bundle_cmd::cost(&cli.global, a),
        args::Command::Replay(a) => bundle_cmd::replay(&cli.global, a),
        args::Command::Key(args::KeyCommand::Show) => bundle_cmd::key_show(&cli.global),
        args::Command::Serve(a) => serve_cmd::serve(&cli.global, a),
        args::Command::Mcp(a) => mcp_cmd::mcp(&cli.global, a),
        args::Command::Audit(a) => serve_cmd::audit(&cli.global, a),
        args::Command::Worker(a) => worker_cmd::worker(&cli.global, a),
        args::Command::Jobs(a) => worker_cmd::jobs(a),
        args::Command::Token(a) => serve_cmd::token(a),
        args::Command::Gpu(args::GpuCommand::Info(a)) => gpu_cmd::info(&cli.global, a),
        args::Command::Gpu(args::GpuCommand::Bench(a)) => gpu_cmd::bench(&cli.global, a),
    };
    // Spans still waiting go to the collector (within its export timeout) before the exit.
    guild_telemetry::shutdown();
    match result {
        Ok(code) => code.into(),
        Err(failure) if summary_json => {
            let summary = serde_json::json!({
                "status": "error",
                "exit_code": failure.code as u8,
                "message": failure.message,
            });
            eprintln!("{summary}");
            failure.code.into()
        }
        Err(failure) => {
            eprintln!("guild: error: {}", failure.message);
            failure.code.into()
        }
    }
}
