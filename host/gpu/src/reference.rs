//! The CPU reference of every kernel: the semantics the WGSL must match (within the kernel's
//! tolerance), what tests and `guild gpu bench` compare against, and what runs when a host has
//! no adapter and is configured to fall back. Plain loops, written for clarity, not speed.

use crate::catalogue::{Kernel, KernelId};
use crate::plan::Plan;
use crate::tensor::{DType, TensorMeta, f32_bytes, f32s, u32_bytes, u32s};

/// Run `plan` on the CPU: the outputs' bytes, in order.
pub fn run(plan: &Plan, inputs: &[&[u8]]) -> Vec<Vec<u8>> {
    let u = plan.uniform;
    let x: Vec<Vec<f32>> = inputs.iter().map(|b| f32s(b)).collect();
    let (n, m, k) = (u.n as usize, u.m as usize, u.k as usize);
    let one = |values: Vec<f32>| vec![f32_bytes(&values)];
    match plan.id {
        KernelId::Add => one(x[0].iter().zip(&x[1]).map(|(a, b)| a + b).collect()),
        KernelId::Mul => one(x[0].iter().zip(&x[1]).map(|(a, b)| a * b).collect()),
        KernelId::Scale => one(x[0].iter().map(|a| a * u.f0).collect()),
        KernelId::Relu => one(x[0].iter().map(|a| a.max(0.0)).collect()),
        KernelId::Gelu => one(x[0].iter().map(|&a| gelu(a)).collect()),
        KernelId::Matmul => one(matmul(&x[0], &x[1], m, k, n)),
        KernelId::Sum => one(x[0].chunks(n).map(|row| row.iter().sum()).collect()),
        KernelId::Max => one(x[0].chunks(n).map(|row| row.iter().copied().fold(row[0], f32::max)).collect()),
        KernelId::Softmax => one(x[0].chunks(n).flat_map(softmax).collect()),
        KernelId::LayerNorm => one(x[0].chunks(n).flat_map(|row| layer_norm(row, &x[1], &x[2], u.f0)).collect()),
        KernelId::CosineTopk => {
            let (indices, scores) = cosine_topk(&x[0], &x[1], m, n, k);
            vec![u32_bytes(&indices), f32_bytes(&scores)]
        }
    }
}

fn gelu(x: f32) -> f32 {
    let t = (0.797_884_6 * (x + 0.044715 * x * x * x)).clamp(-10.0, 10.0);
    0.5 * x * (1.0 + t.tanh())
}

/// `a[m, k] · b[k, n]`, each output summing its products in order, as the kernel does.
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    for i in 0..m {
        let row = &mut out[i * n..(i + 1) * n];
        for p in 0..k {
            let av = a[i * k + p];
            let brow = &b[p * n..(p + 1) * n];
            for (o, bv) in row.iter_mut().zip(brow) {
                *o += av * bv;
            }
        }
    }
    out
}

fn softmax(row: &[f32]) -> Vec<f32> {
    let top = row.iter().copied().fold(row[0], f32::max);
    let exps: Vec<f32> = row.iter().map(|v| (v - top).exp()).collect();
    let total: f32 = exps.iter().sum();
    exps.iter().map(|e| e / total).collect()
}

fn layer_norm(row: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
    let count = row.len() as f32;
    let mean = row.iter().sum::<f32>() / count;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / count;
    let inv = 1.0 / (var + eps).sqrt();
    row.iter().zip(gamma).zip(beta).map(|((v, g), b)| (v - mean) * inv * g + b).collect()
}

/// Cosine similarity of `query` against each of `rows` rows of `matrix`, then the `k` best, best
/// first, ties to the lower index; NaN scores count as -2 and zero vectors score 0.
pub fn cosine_topk(query: &[f32], matrix: &[f32], rows: usize, d: usize, k: usize) -> (Vec<u32>, Vec<f32>) {
    let norm_q: f32 = query.iter().map(|q| q * q).sum();
    let mut scored: Vec<(f32, u32)> = (0..rows)
        .map(|r| {
            let row = &matrix[r * d..(r + 1) * d];
            let dot: f32 = query.iter().zip(row).map(|(q, v)| q * v).sum();
            let norm_m: f32 = row.iter().map(|v| v * v).sum();
            let mut s = if norm_q > 0.0 && norm_m > 0.0 { dot / (norm_q.sqrt() * norm_m.sqrt()) } else { 0.0 };
            if s.is_nan() {
                s = -2.0;
            }
            (s, u32::try_from(r).unwrap_or(u32::MAX))
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.truncate(k);
    (scored.iter().map(|s| s.1).collect(), scored.iter().map(|s| s.0).collect())
}

/// Compare outputs against expected ones under `kernel`'s tolerance (exactly when `exact`).
///
/// # Errors
/// A message saying where they first differ and by how much: an output whose length differs, a
/// float element outside the tolerance, or any difference in a non-float output (top-k indices
/// may swap only where their scores tie within the tolerance).
pub fn compare(
    kernel: &Kernel,
    metas: &[&TensorMeta],
    expected: &[Vec<u8>],
    found: &[Vec<u8>],
    exact: bool,
) -> Result<(), String> {
    let tolerance = if exact { crate::Tolerance::EXACT } else { kernel.spec.tolerance };
    for (i, meta) in metas.iter().enumerate() {
        let (want, got) = (&expected[i], &found[i]);
        if want.len() != got.len() {
            return Err(format!("output {i}: {} bytes expected, {} found", want.len(), got.len()));
        }
        if want == got {
            continue;
        }
        if meta.dtype != DType::F32 {
            // Top-k indices may swap where two scores tie within the tolerance.
            if kernel.spec.id == KernelId::CosineTopk && !exact {
                topk_indices_agree(&u32s(want), &u32s(got), &f32s(&expected[1]), &f32s(&found[1]), tolerance)?;
                continue;
            }
            return Err(format!("output {i} ({}) differs", meta.dtype));
        }
        let (want, got) = (f32s(want), f32s(got));
        for (j, (w, g)) in want.iter().zip(&got).enumerate() {
            if !tolerance.accepts(*w, *g) {
                return Err(format!(
                    "output {i} element {j}: expected {w}, found {g} (tolerance {} + {}·|expected|)",
                    tolerance.abs, tolerance.rel
                ));
            }
        }
    }
    Ok(())
}

fn topk_indices_agree(
    want: &[u32],
    got: &[u32],
    want_scores: &[f32],
    got_scores: &[f32],
    tolerance: crate::Tolerance,
) -> Result<(), String> {
    for (j, (w, g)) in want.iter().zip(got).enumerate() {
        if w != g && !tolerance.accepts(want_scores[j], got_scores[j]) {
            return Err(format!("top-k position {j}: row {w} expected, row {g} found"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_compute_what_they_say() {
        assert_eq!(matmul(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0], 2, 2, 2), vec![19.0, 22.0, 43.0, 50.0]);
        let s = softmax(&[1.0, 1.0]);
        assert_eq!(s, vec![0.5, 0.5]);
        let (idx, scores) = cosine_topk(&[1.0, 0.0], &[0.0, 1.0, 2.0, 0.0, 1.0, 1.0, 0.0, 0.0], 4, 2, 3);
        assert_eq!(idx, vec![1, 2, 0]);
        assert!((scores[1] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert!(gelu(-20.0).abs() < 1e-6 && (gelu(20.0) - 20.0).abs() < 1e-4);
    }
}
