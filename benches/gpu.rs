//! GPU figures for the README (`cargo bench --bench gpu`): the cost of one dispatch from a guest
//! to a kernel and back, against the same dispatch made on the host directly and against the CPU
//! reference mode; then matmul throughput on the device at several sizes against the CPU
//! reference. Printed as Markdown rows. `GUILD_BENCH_GPU_SIZES` (default `256,1024,2048`) picks
//! the matmul sizes.

use guild_gpu::{DType, DispatchRequest, GpuConfig, GpuHost, GpuMode, TensorMeta, f32_bytes, plan, reference};
use guild_runtime::{Grants, Limits, Outcome, Runtime, RuntimeConfig};
use guild_test_artifacts::MATMUL;
use std::time::{Duration, Instant};

const REPEAT: u32 = 1000;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio");
    println!("| measurement | result |");
    println!("|---|---|");
    for mode in [GpuMode::Device, GpuMode::Cpu] {
        rt.block_on(guest_overhead(mode));
    }
    host_overhead();
    let sizes: Vec<u32> = std::env::var("GUILD_BENCH_GPU_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![256, 1024, 2048]);
    for n in sizes {
        matmul_throughput(n);
    }
}

fn row(what: &str, result: String) {
    println!("| {what} | {result} |");
}

/// Per-dispatch time seen by a guest: a run of REPEAT 1×1 matmuls minus a run of one, per dispatch.
async fn guest_overhead(mode: GpuMode) {
    let config = RuntimeConfig { gpu: GpuConfig { mode, ..GpuConfig::default() }, ..RuntimeConfig::default() };
    let runtime = Runtime::new(config).expect("runtime");
    let (tool, _) = runtime.load_file(MATMUL.as_ref()).await.expect("load");
    let limits = Limits { gpu_dispatches_max: REPEAT, ..Limits::default() };
    let time = |repeat: u32| {
        let input = format!(r#"{{"random":{{"m":1,"k":1,"n":1}},"repeat":{repeat}}}"#);
        let (runtime, tool, limits) = (&runtime, &tool, &limits);
        async move {
            let mut best = Duration::MAX;
            for _ in 0..5 {
                let report = runtime.run(tool, &input, &Grants::default(), limits).await.expect("run");
                assert!(matches!(report.outcome, Outcome::Output { .. }), "{:?}", report.outcome);
                best = best.min(report.wall_time);
            }
            best
        }
    };
    let one = time(1).await;
    let many = time(REPEAT).await;
    let per = many.saturating_sub(one) / (REPEAT - 1);
    let label = match mode {
        GpuMode::Cpu => "guest → CPU reference → guest, one 1×1 matmul (--gpu cpu)",
        _ => "guest → kernel on lavapipe → guest, one 1×1 matmul",
    };
    row(label, format!("{:.1} µs per dispatch (best of 5 runs of {REPEAT})", per.as_secs_f64() * 1e6));
}

/// The same dispatch made by the host itself: what the device round trip costs without the guest.
fn host_overhead() {
    let host = GpuHost::new(GpuConfig { mode: GpuMode::Device, ..GpuConfig::default() }).expect("catalogue");
    let meta = TensorMeta::new(DType::F32, &[1, 1]);
    let bytes = f32_bytes(&[0.5]);
    let request = DispatchRequest {
        kernel: "matmul",
        inputs: vec![(&meta, &bytes), (&meta, &bytes)],
        outputs: vec![&meta],
        params: &[],
        timeout: Duration::from_secs(10),
    };
    host.dispatch(&request).expect("warm");
    let started = Instant::now();
    for _ in 0..REPEAT {
        host.dispatch(&request).expect("dispatch");
    }
    let per = started.elapsed() / REPEAT;
    row("host → kernel on lavapipe → host, one 1×1 matmul", format!("{:.1} µs per dispatch", per.as_secs_f64() * 1e6));
}

fn matmul_throughput(n: u32) {
    let host = GpuHost::new(GpuConfig { mode: GpuMode::Device, ..GpuConfig::default() }).expect("catalogue");
    let meta = TensorMeta::new(DType::F32, &[n, n]);
    let values: Vec<f32> = (0..n * n).map(|i| ((i * 2_654_435_761u32) >> 8) as f32 / (1 << 24) as f32 - 0.5).collect();
    let bytes = f32_bytes(&values);
    let request = DispatchRequest {
        kernel: "matmul",
        inputs: vec![(&meta, &bytes), (&meta, &bytes)],
        outputs: vec![&meta],
        params: &[],
        timeout: Duration::from_secs(600),
    };
    let done = host.dispatch(&request).expect("warm");
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        host.dispatch(&request).expect("dispatch");
        best = best.min(started.elapsed());
    }
    let flops = 2.0 * f64::from(n).powi(3);
    let kernel = host.catalogue().get("matmul").expect("matmul");
    let planned = plan::plan(kernel, &[&meta, &meta], &[&meta], &[]).expect("plan");
    let started = Instant::now();
    let expected = reference::run(&planned, &[&bytes, &bytes]);
    let cpu = started.elapsed();
    let agrees = reference::compare(kernel, &[&meta], &expected, &done.outputs, false).is_ok();
    row(
        &format!("matmul {n}×{n}×{n}: device (best of 3, upload and read-back included) vs CPU reference"),
        format!(
            "{:.2} GFLOP/s ({:.1} ms) vs {:.2} GFLOP/s ({:.1} ms); agree within tolerance: {agrees}",
            flops / best.as_secs_f64() / 1e9,
            best.as_secs_f64() * 1e3,
            flops / cpu.as_secs_f64() / 1e9,
            cpu.as_secs_f64() * 1e3
        ),
    );
}
