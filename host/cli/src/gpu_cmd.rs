//! `guild gpu info` and `guild gpu bench`: what GPU this host has (or why it has none), its
//! limits and kernel catalogue; and each kernel's throughput on the device against its CPU
//! reference, with matmul at several sizes.

use crate::args::{Global, GpuBenchArgs, GpuInfoArgs};
use crate::exit::{Exit, Failure};
use guild_gpu::{DType, DispatchRequest, GpuConfig, GpuHost, GpuMode, Scalar, TensorMeta, f32_bytes, reference};
use serde::Serialize;
use std::time::{Duration, Instant};

fn open(global: &Global) -> Result<GpuHost, Failure> {
    GpuHost::new(GpuConfig { mode: global.gpu, ..GpuConfig::default() }).map_err(|e| Failure::host(e.to_string()))
}

pub(crate) fn info(global: &Global, args: GpuInfoArgs) -> Result<Exit, Failure> {
    let info = open(global)?.info();
    if args.json {
        crate::out!("{}", serde_json::to_string_pretty(&info).map_err(|e| Failure::host(e.to_string()))?);
        return Ok(Exit::Success);
    }
    crate::out!(
        "mode:     {}",
        serde_json::to_value(info.mode).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    );
    match (&info.adapter, &info.no_adapter) {
        (Some(a), _) => {
            crate::out!("adapter:  {} ({}, {})", a.name, a.backend, a.device_type);
            crate::out!("driver:   {} {}", a.driver, a.driver_info);
            let l = &a.limits;
            crate::out!(
                "limits:   buffer {} · storage binding {} · {} workgroups per dimension · {} threads per workgroup · {} workgroup memory",
                guild_runtime::human_bytes(l.max_buffer_size),
                guild_runtime::human_bytes(l.max_storage_buffer_binding_size),
                l.max_compute_workgroups_per_dimension,
                l.max_compute_invocations_per_workgroup,
                guild_runtime::human_bytes(u64::from(l.max_compute_workgroup_storage_size)),
            );
        }
        (None, reason) => {
            let fallback = match info.mode {
                GpuMode::Auto | GpuMode::Cpu => "dispatches run on the CPU reference",
                GpuMode::Device | GpuMode::Off => "dispatches are refused",
            };
            crate::out!("adapter:  none ({}); {fallback}", reason.as_deref().unwrap_or("unknown"));
        }
    }
    crate::out!("kernels:  {} (compiled into this host; validated at start)", info.kernels.len());
    for k in &info.kernels {
        let det = if k.spec.deterministic { "deterministic" } else { "tolerance" };
        crate::out!(
            "  {:<12} v{} {:<13} wgsl {}  {}",
            k.spec.name,
            k.spec.version,
            det,
            k.hash.short(),
            k.spec.description
        );
    }
    Ok(Exit::Success)
}

/// One line of the benchmark.
#[derive(Debug, Serialize)]
struct BenchRow {
    kernel: String,
    shape: String,
    device_ms: f64,
    device_gflops: f64,
    cpu_ms: Option<f64>,
    cpu_gflops: Option<f64>,
    executor: String,
}

pub(crate) fn bench(global: &Global, args: GpuBenchArgs) -> Result<Exit, Failure> {
    let host = open(global)?;
    let info = host.info();
    let mut cases: Vec<Case> = vec![
        Case::new("add", &[&[1 << 22], &[1 << 22]], &[(DType::F32, &[1 << 22])], &[]),
        Case::new("mul", &[&[1 << 22], &[1 << 22]], &[(DType::F32, &[1 << 22])], &[]),
        Case::new("scale", &[&[1 << 22]], &[(DType::F32, &[1 << 22])], &[Scalar::F32(0.5)]),
        Case::new("relu", &[&[1 << 22]], &[(DType::F32, &[1 << 22])], &[]),
        Case::new("gelu", &[&[1 << 22]], &[(DType::F32, &[1 << 22])], &[]),
        Case::new("sum", &[&[4096, 1024]], &[(DType::F32, &[4096])], &[]),
        Case::new("max", &[&[4096, 1024]], &[(DType::F32, &[4096])], &[]),
        Case::new("softmax", &[&[4096, 1024]], &[(DType::F32, &[4096, 1024])], &[]),
        Case::new("layer_norm", &[&[4096, 1024], &[1024], &[1024]], &[(DType::F32, &[4096, 1024])], &[]),
        Case::new("cosine_topk", &[&[256], &[50_000, 256]], &[(DType::U32, &[10]), (DType::F32, &[10])], &[]),
    ];
    for &n in &args.matmul {
        cases.push(Case::new("matmul", &[&[n, n], &[n, n]], &[(DType::F32, &[n, n])], &[]));
    }
    let mut rows = Vec::new();
    for case in &cases {
        let run_cpu = case.kernel != "matmul" || case.inputs[0].0.shape[0] <= args.cpu_max;
        rows.push(case.run(&host, run_cpu)?);
    }
    if args.json {
        let value = serde_json::json!({ "adapter": info.adapter, "no_adapter": info.no_adapter, "rows": rows });
        crate::out!("{value}");
        return Ok(Exit::Success);
    }
    let device = info.adapter.as_ref().map(|a| a.label()).unwrap_or_else(|| "none (CPU reference only)".into());
    crate::out!("device: {device}");
    crate::out!(
        "{:<12} {:<28} {:>11} {:>10} {:>11} {:>10} {:>8}",
        "kernel",
        "shape",
        "device ms",
        "GFLOP/s",
        "cpu-ref ms",
        "GFLOP/s",
        "speedup"
    );
    for r in &rows {
        let cpu_ms = r.cpu_ms.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        let cpu_g = r.cpu_gflops.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        let speedup = r.cpu_ms.map(|c| format!("{:.1}×", c / r.device_ms)).unwrap_or_else(|| "-".into());
        crate::out!(
            "{:<12} {:<28} {:>11.2} {:>10.2} {:>11} {:>10} {:>8}",
            r.kernel,
            r.shape,
            r.device_ms,
            r.device_gflops,
            cpu_ms,
            cpu_g,
            speedup
        );
    }
    Ok(Exit::Success)
}

struct Case {
    kernel: &'static str,
    inputs: Vec<(TensorMeta, Vec<u8>)>,
    outputs: Vec<TensorMeta>,
    params: Vec<Scalar>,
}

impl Case {
    fn new(kernel: &'static str, inputs: &[&[u32]], outputs: &[(DType, &[u32])], params: &[Scalar]) -> Self {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let inputs = inputs
            .iter()
            .map(|shape| {
                let meta = TensorMeta::new(DType::F32, shape);
                let n = meta.elements().unwrap_or(0);
                let values: Vec<f32> = (0..n)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                    })
                    .collect();
                (meta, f32_bytes(&values))
            })
            .collect();
        let outputs = outputs.iter().map(|(d, s)| TensorMeta::new(*d, s)).collect();
        Self { kernel, inputs, outputs, params: params.to_vec() }
    }

    fn run(&self, host: &GpuHost, run_cpu: bool) -> Result<BenchRow, Failure> {
        let request = DispatchRequest {
            kernel: self.kernel,
            inputs: self.inputs.iter().map(|(m, b)| (m, b.as_slice())).collect(),
            outputs: self.outputs.iter().collect(),
            params: &self.params,
            timeout: Duration::from_secs(600),
        };
        let fail = |e: guild_gpu::GpuError| Failure::host(format!("{}: {e}", self.kernel));
        // The first dispatch compiles the pipeline; time the best of the next three.
        let first = host.dispatch(&request).map_err(fail)?;
        let mut best = f64::MAX;
        for _ in 0..3 {
            let started = Instant::now();
            host.dispatch(&request).map_err(fail)?;
            best = best.min(started.elapsed().as_secs_f64());
        }
        let metas: Vec<&TensorMeta> = self.inputs.iter().map(|(m, _)| m).collect();
        let (_, plan) = host.check(self.kernel, &metas, &request.outputs, &self.params).map_err(fail)?;
        let gflops = |seconds: f64| plan.flops as f64 / seconds / 1e9;
        let cpu = run_cpu.then(|| {
            let data: Vec<&[u8]> = self.inputs.iter().map(|(_, b)| b.as_slice()).collect();
            let started = Instant::now();
            let _ = reference::run(&plan, &data);
            started.elapsed().as_secs_f64()
        });
        let shape = metas.iter().map(|m| guild_gpu::show_shape(&m.shape)).collect::<Vec<_>>().join("·");
        Ok(BenchRow {
            kernel: self.kernel.to_string(),
            shape,
            device_ms: best * 1e3,
            device_gflops: gflops(best),
            cpu_ms: cpu.map(|s| s * 1e3),
            cpu_gflops: cpu.map(gflops),
            executor: first.executor,
        })
    }
}
