//! Every kernel on the real device (lavapipe here and in CI) against its CPU reference, on
//! random inputs of several shapes, including sizes that are not multiples of the tiles and
//! workgroups; and the device's failure paths.

use guild_gpu::{
    CPU_REFERENCE, DType, DispatchRequest, Dispatched, GpuConfig, GpuError, GpuHost, GpuMode, Scalar, TensorMeta,
    f32_bytes, f32s, reference, u32s,
};
use std::sync::OnceLock;
use std::time::Duration;

/// A small deterministic generator, so a failure reproduces from its seed.
struct Seeded(u64);

impl Seeded {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn tensor(&mut self, shape: &[u32]) -> (TensorMeta, Vec<u8>) {
        let meta = TensorMeta::new(DType::F32, shape);
        let n = meta.elements().expect("small");
        let values: Vec<f32> = (0..n).map(|_| self.next_f32() * 3.0).collect();
        (meta, f32_bytes(&values))
    }
}

fn host() -> &'static GpuHost {
    static HOST: OnceLock<GpuHost> = OnceLock::new();
    HOST.get_or_init(|| GpuHost::new(GpuConfig { mode: GpuMode::Device, ..GpuConfig::default() }).expect("catalogue"))
}

fn dispatch(
    host: &GpuHost,
    kernel: &str,
    inputs: &[(TensorMeta, Vec<u8>)],
    outputs: &[TensorMeta],
    params: &[Scalar],
) -> Result<Dispatched, GpuError> {
    host.dispatch(&DispatchRequest {
        kernel,
        inputs: inputs.iter().map(|(m, b)| (m, b.as_slice())).collect(),
        outputs: outputs.iter().collect(),
        params,
        timeout: Duration::from_secs(60),
    })
}

/// Run on the device and on the CPU reference and hold them to the kernel's tolerance.
fn agree(kernel: &str, inputs: &[(TensorMeta, Vec<u8>)], outputs: &[TensorMeta], params: &[Scalar]) {
    let host = host();
    let found = dispatch(host, kernel, inputs, outputs, params).unwrap_or_else(|e| panic!("{kernel}: {e}"));
    assert_ne!(found.executor, CPU_REFERENCE, "a device ran it");
    let metas: Vec<&TensorMeta> = inputs.iter().map(|(m, _)| m).collect();
    let outs: Vec<&TensorMeta> = outputs.iter().collect();
    let (k, plan) = host.check(kernel, &metas, &outs, params).expect("plan");
    let data: Vec<&[u8]> = inputs.iter().map(|(_, b)| b.as_slice()).collect();
    let expected = reference::run(&plan, &data);
    if let Err(e) = reference::compare(k, &outs, &expected, &found.outputs, false) {
        panic!("{kernel} {:?}: {e}", metas.iter().map(|m| m.to_string()).collect::<Vec<_>>());
    }
    if k.spec.deterministic {
        reference::compare(k, &outs, &expected, &found.outputs, true).expect("bit-exact");
    }
}

#[test]
fn elementwise_kernels_agree_with_the_reference() {
    let mut rng = Seeded(0x9e37_79b9_7f4a_7c15);
    for shape in [vec![1], vec![255], vec![257], vec![3, 333], vec![70_001]] {
        let meta = TensorMeta::new(DType::F32, &shape);
        let (a, b) = (rng.tensor(&shape), rng.tensor(&shape));
        agree("add", &[a.clone(), b.clone()], std::slice::from_ref(&meta), &[]);
        agree("mul", &[a.clone(), b], std::slice::from_ref(&meta), &[]);
        agree("scale", std::slice::from_ref(&a), std::slice::from_ref(&meta), &[Scalar::F32(-0.37)]);
        agree("relu", std::slice::from_ref(&a), std::slice::from_ref(&meta), &[]);
        agree("gelu", &[a], &[meta], &[]);
    }
}

#[test]
fn matmul_agrees_on_tile_and_odd_shapes() {
    let mut rng = Seeded(42);
    for (m, k, n) in [(1, 1, 1), (64, 64, 64), (65, 17, 63), (100, 129, 31), (7, 300, 130)] {
        let (a, b) = (rng.tensor(&[m, k]), rng.tensor(&[k, n]));
        agree("matmul", &[a, b], &[TensorMeta::new(DType::F32, &[m, n])], &[]);
    }
}

#[test]
fn row_kernels_agree_with_the_reference() {
    let mut rng = Seeded(7);
    for shape in [vec![1], vec![5], vec![300], vec![3, 257], vec![2, 3, 1000], vec![700, 3]] {
        let x = rng.tensor(&shape);
        let reduced = if shape.len() == 1 { vec![1] } else { shape[..shape.len() - 1].to_vec() };
        let same = TensorMeta::new(DType::F32, &shape);
        agree("sum", std::slice::from_ref(&x), &[TensorMeta::new(DType::F32, &reduced)], &[]);
        agree("max", std::slice::from_ref(&x), &[TensorMeta::new(DType::F32, &reduced)], &[]);
        agree("softmax", std::slice::from_ref(&x), std::slice::from_ref(&same), &[]);
        let n = *shape.last().expect("rank 1+");
        let (gamma, beta) = (rng.tensor(&[n]), rng.tensor(&[n]));
        agree("layer_norm", &[x.clone(), gamma.clone(), beta.clone()], std::slice::from_ref(&same), &[]);
        agree("layer_norm", &[x, gamma, beta], &[same], &[Scalar::F32(1e-3)]);
    }
}

#[test]
fn cosine_topk_agrees_and_ranks() {
    let mut rng = Seeded(99);
    for (rows, d, k) in [(1, 3, 1), (10, 8, 10), (1000, 33, 5), (3000, 64, 17)] {
        let (query, matrix) = (rng.tensor(&[d]), rng.tensor(&[rows, d]));
        let outputs = [TensorMeta::new(DType::U32, &[k]), TensorMeta::new(DType::F32, &[k])];
        agree("cosine_topk", &[query.clone(), matrix.clone()], &outputs, &[]);
        let found = dispatch(host(), "cosine_topk", &[query, matrix], &outputs, &[]).expect("runs");
        let scores = f32s(&found.outputs[1]);
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");
        let mut indices = u32s(&found.outputs[0]);
        indices.dedup();
        assert_eq!(indices.len(), k as usize, "distinct rows");
    }
}

#[test]
fn requests_that_cannot_run_get_clear_errors() {
    let host = host();
    let mut rng = Seeded(1);
    let a = rng.tensor(&[4]);
    let e = dispatch(host, "conv2d", std::slice::from_ref(&a), &[], &[]).expect_err("unknown");
    assert!(matches!(e, GpuError::UnknownKernel { .. }) && e.to_string().contains("matmul"), "{e}");
    let e =
        dispatch(host, "relu", std::slice::from_ref(&a), &[TensorMeta::new(DType::F32, &[5])], &[]).expect_err("shape");
    assert_eq!(e.to_string(), "gpu relu: the output must be [4], got [5]");
    let e =
        dispatch(host, "relu", std::slice::from_ref(&a), &[TensorMeta::new(DType::U32, &[4])], &[]).expect_err("dtype");
    assert!(e.to_string().contains("must be f32, got u32"), "{e}");
    let short = (a.0.clone(), vec![0u8; 3]);
    let e = dispatch(host, "relu", &[short], std::slice::from_ref(&a.0), &[]).expect_err("bytes");
    assert!(e.to_string().contains("holds 3 bytes"), "{e}");
}

#[test]
fn a_lost_device_fails_one_dispatch_and_is_rebuilt() {
    // Its own host: destroying the shared one would race the other tests.
    let host = GpuHost::new(GpuConfig { mode: GpuMode::Device, ..GpuConfig::default() }).expect("catalogue");
    let mut rng = Seeded(5);
    let a = rng.tensor(&[16]);
    let out = [a.0.clone()];
    dispatch(&host, "relu", std::slice::from_ref(&a), &out, &[]).expect("first");
    host.destroy_device();
    let e = dispatch(&host, "relu", std::slice::from_ref(&a), &out, &[]).expect_err("lost");
    assert!(matches!(e, GpuError::DeviceLost { .. }) && e.ends_job(), "{e}");
    assert!(e.to_string().contains("rebuilt"), "{e}");
    dispatch(&host, "relu", std::slice::from_ref(&a), &out, &[]).expect("rebuilt device");
}

#[test]
fn modes_without_a_device() {
    let mut rng = Seeded(3);
    let a = rng.tensor(&[8]);
    let out = [a.0.clone()];
    let cpu = GpuHost::new(GpuConfig { mode: GpuMode::Cpu, ..GpuConfig::default() }).expect("catalogue");
    let done = dispatch(&cpu, "relu", std::slice::from_ref(&a), &out, &[]).expect("cpu");
    assert_eq!(done.executor, CPU_REFERENCE);
    let off = GpuHost::new(GpuConfig { mode: GpuMode::Off, ..GpuConfig::default() }).expect("catalogue");
    let e = dispatch(&off, "relu", std::slice::from_ref(&a), &out, &[]).expect_err("off");
    assert!(matches!(e, GpuError::Unavailable(_)) && e.to_string().contains("--gpu auto"), "{e}");
    let busy = GpuHost::new(GpuConfig { mode: GpuMode::Device, queue_depth_max: 0 }).expect("catalogue");
    let e = dispatch(&busy, "relu", &[a], &out, &[]).expect_err("busy");
    assert!(matches!(e, GpuError::Busy { .. }), "{e}");
}
