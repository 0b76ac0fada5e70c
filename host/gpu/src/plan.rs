//! Checking a dispatch against its kernel and planning it: element types, shapes and parameters
//! are checked here, once, and turned into the uniform block and the workgroup counts. The guest
//! never chooses a dispatch size; everything below is derived from shapes.

use crate::GpuError;
use crate::catalogue::{Kernel, KernelId};
use crate::params::{self, Params};
use crate::tensor::{DType, Scalar, TensorMeta, show_shape};

/// Threads per workgroup in the one-dimensional kernels.
pub const WORKGROUP_THREADS: u32 = 256;
/// Output tile of the matmul kernel, per side.
pub const MATMUL_TILE: u32 = 64;
/// Most workgroups along one dimension (WebGPU's default limit).
pub const WORKGROUPS_PER_DIMENSION_MAX: u32 = 65_535;
/// Most results `cosine_topk` returns: its selection is one workgroup, k passes over the scores.
pub const TOPK_K_MAX: u32 = 1_024;
/// `layer_norm`'s epsilon when the guest passes none.
pub const LAYER_NORM_EPS_DEFAULT: f32 = 1e-5;

/// What a binding of a stage refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The uniform block.
    Params,
    /// The i-th input.
    Input(usize),
    /// The i-th output.
    Output(usize),
    /// The i-th scratch buffer.
    Scratch(usize),
}

/// One compute pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// The WGSL entry point.
    pub entry: &'static str,
    /// `(binding, slot)` pairs of group 0.
    pub bindings: Vec<(u32, Slot)>,
    /// Workgroups in x and y.
    pub workgroups: [u32; 2],
}

/// A checked dispatch, ready for a device or the CPU reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The kernel the plan dispatches; its WGSL and CPU reference are chosen by it.
    pub id: KernelId,
    /// The uniform block.
    pub uniform: Params,
    /// Passes, in order.
    pub stages: Vec<Stage>,
    /// Sizes of scratch buffers.
    pub scratch_bytes: Vec<u64>,
    /// Floating-point operations, roughly, for throughput figures.
    pub flops: u64,
}

/// Check `inputs`, `outputs` and `params` against `kernel` and plan the dispatch.
///
/// # Errors
/// [`GpuError::Invalid`] when the count of inputs, outputs or parameters is not the kernel's, or a
/// shape's element count overflows; [`GpuError::DType`] when a buffer or parameter has the wrong
/// element type; [`GpuError::Shape`] when a shape does not fit the kernel (an empty input,
/// dimensions that disagree, `k` out of range) or needs more workgroups than one dispatch runs.
pub fn plan(
    kernel: &Kernel,
    inputs: &[&TensorMeta],
    outputs: &[&TensorMeta],
    params: &[Scalar],
) -> Result<Plan, GpuError> {
    let spec = kernel.spec;
    let check = Check { kernel: spec.name };
    check.count("input", spec.inputs, inputs.len())?;
    check.count("output", spec.outputs, outputs.len())?;
    let optional_params = usize::from(spec.id == KernelId::LayerNorm);
    if params.len() > spec.params.len() || params.len() + optional_params < spec.params.len() {
        return Err(GpuError::Invalid(format!(
            "{} takes {} parameter(s) ({}), got {}",
            spec.name,
            spec.params.len(),
            spec.params.join(", "),
            params.len()
        )));
    }
    for (i, meta) in inputs.iter().enumerate() {
        check.dtype(&format!("input {i} ({})", spec.inputs[i]), meta, DType::F32)?;
        check.non_empty(&format!("input {i}"), meta)?;
    }
    for (i, meta) in outputs.iter().enumerate() {
        let want = if spec.id == KernelId::CosineTopk && i == 0 { DType::U32 } else { DType::F32 };
        check.dtype(&format!("output {i} ({})", spec.outputs[i]), meta, want)?;
    }
    let float = |i: usize, default: f32| match params.get(i) {
        None => Ok(default),
        Some(Scalar::F32(v)) => Ok(*v),
        Some(other) => Err(GpuError::DType {
            kernel: spec.name.to_string(),
            message: format!("parameter {i} ({}) must be f32, got {}", spec.params[i], other.record()),
        }),
    };
    match spec.id {
        KernelId::Add | KernelId::Mul | KernelId::Scale | KernelId::Relu | KernelId::Gelu => {
            for (i, meta) in inputs.iter().enumerate().skip(1) {
                check.same_shape(&format!("input {i}"), meta, inputs[0])?;
            }
            check.same_shape("the output", outputs[0], inputs[0])?;
            let n = check.elements_u32(inputs[0])?;
            let (groups, stage_groups) = grid(spec.name, n.div_ceil(WORKGROUP_THREADS))?;
            let uniform = Params { n, groups_x: groups, f0: float(0, 1.0)?, ..Params::default() };
            Ok(single(spec.id, uniform, stage_groups, inputs.len(), 1, u64::from(n)))
        }
        KernelId::Matmul => matmul(&check, inputs, outputs),
        KernelId::Sum | KernelId::Max | KernelId::Softmax | KernelId::LayerNorm => {
            let (rows, n) = check.rows(inputs[0])?;
            let reduced = spec.id == KernelId::Sum || spec.id == KernelId::Max;
            if reduced {
                let shape = &inputs[0].shape;
                let want = if shape.len() == 1 { vec![1] } else { shape[..shape.len() - 1].to_vec() };
                check.shape("the output", outputs[0], &want)?;
            } else {
                check.same_shape("the output", outputs[0], inputs[0])?;
            }
            if spec.id == KernelId::LayerNorm {
                check.shape("gamma", inputs[1], &[n])?;
                check.shape("beta", inputs[2], &[n])?;
            }
            let (groups, stage_groups) = grid(spec.name, rows)?;
            let eps = float(0, LAYER_NORM_EPS_DEFAULT)?;
            let uniform = Params { n, m: rows, groups_x: groups, f0: eps, ..Params::default() };
            let flops = u64::from(rows) * u64::from(n) * if reduced { 1 } else { 5 };
            Ok(single(spec.id, uniform, stage_groups, inputs.len(), 1, flops))
        }
        KernelId::CosineTopk => cosine_topk(&check, inputs, outputs),
    }
}

fn single(id: KernelId, uniform: Params, workgroups: [u32; 2], inputs: usize, outputs: usize, flops: u64) -> Plan {
    let mut bindings = vec![(params::BINDING, Slot::Params)];
    // Binding numbers after the parameters: inputs, then outputs (a handful: the catalogue's
    // kernels take at most a few tensors).
    let binding = |n: usize| 1 + u32::try_from(n).expect("a kernel binds a handful of tensors");
    bindings.extend((0..inputs).map(|i| (binding(i), Slot::Input(i))));
    bindings.extend((0..outputs).map(|i| (binding(inputs + i), Slot::Output(i))));
    Plan { id, uniform, stages: vec![Stage { entry: "main", bindings, workgroups }], scratch_bytes: vec![], flops }
}

fn matmul(check: &Check, inputs: &[&TensorMeta], outputs: &[&TensorMeta]) -> Result<Plan, GpuError> {
    let (a, b) = (inputs[0], inputs[1]);
    if a.shape.len() != 2 || b.shape.len() != 2 {
        return Err(check.shape_error(format!(
            "a and b must be matrices, got a {} and b {}",
            show_shape(&a.shape),
            show_shape(&b.shape)
        )));
    }
    let (m, k, n) = (a.shape[0], a.shape[1], b.shape[1]);
    if b.shape[0] != k {
        return Err(check.shape_error(format!(
            "inner dimensions differ: a is {} and b is {} (a's columns must equal b's rows)",
            show_shape(&a.shape),
            show_shape(&b.shape)
        )));
    }
    check.shape("the output", outputs[0], &[m, n])?;
    check.elements_u32(outputs[0])?;
    let gx = n.div_ceil(MATMUL_TILE);
    let gy = m.div_ceil(MATMUL_TILE);
    if gx > WORKGROUPS_PER_DIMENSION_MAX || gy > WORKGROUPS_PER_DIMENSION_MAX {
        return Err(check.shape_error(format!("a {m}×{n} result is more tiles than one dispatch runs")));
    }
    let uniform = Params { n, m, k, groups_x: gx, ..Params::default() };
    let flops = 2 * u64::from(m) * u64::from(n) * u64::from(k);
    Ok(single(KernelId::Matmul, uniform, [gx, gy], 2, 1, flops))
}

fn cosine_topk(check: &Check, inputs: &[&TensorMeta], outputs: &[&TensorMeta]) -> Result<Plan, GpuError> {
    let (query, matrix) = (inputs[0], inputs[1]);
    if query.shape.len() != 1 || matrix.shape.len() != 2 || matrix.shape[1] != query.shape[0] {
        return Err(check.shape_error(format!(
            "query must be [d] and matrix [rows, d]; got query {} and matrix {}",
            show_shape(&query.shape),
            show_shape(&matrix.shape)
        )));
    }
    let (rows, d) = (matrix.shape[0], query.shape[0]);
    check.elements_u32(matrix)?;
    let k = match outputs[0].shape.as_slice() {
        [k] => *k,
        other => return Err(check.shape_error(format!("indices must be [k], got {}", show_shape(other)))),
    };
    if k == 0 || k > rows || k > TOPK_K_MAX {
        return Err(check.shape_error(format!(
            "k = {k} must be between 1 and the matrix's {rows} rows (and at most {TOPK_K_MAX})"
        )));
    }
    check.shape("scores", outputs[1], &[k])?;
    let (groups, workgroups) = grid("cosine_topk", rows.div_ceil(WORKGROUP_THREADS))?;
    let uniform = Params { n: d, m: rows, k, groups_x: groups, ..Params::default() };
    let scores = Stage {
        entry: "scores_stage",
        bindings: vec![
            (params::BINDING, Slot::Params),
            (1, Slot::Input(0)),
            (2, Slot::Input(1)),
            (5, Slot::Scratch(0)),
        ],
        workgroups,
    };
    let select = Stage {
        entry: "topk_stage",
        bindings: vec![
            (params::BINDING, Slot::Params),
            (3, Slot::Output(0)),
            (4, Slot::Output(1)),
            (5, Slot::Scratch(0)),
        ],
        workgroups: [1, 1],
    };
    Ok(Plan {
        id: KernelId::CosineTopk,
        uniform,
        stages: vec![scores, select],
        scratch_bytes: vec![u64::from(rows) * 4],
        flops: 6 * u64::from(rows) * u64::from(d) + u64::from(k) * u64::from(rows),
    })
}

/// Lay `groups` workgroups out as x × y within the per-dimension limit.
fn grid(kernel: &str, groups: u32) -> Result<(u32, [u32; 2]), GpuError> {
    let x = groups.clamp(1, WORKGROUPS_PER_DIMENSION_MAX);
    let y = groups.div_ceil(x).max(1);
    if y > WORKGROUPS_PER_DIMENSION_MAX {
        return Err(GpuError::Shape {
            kernel: kernel.to_string(),
            message: "too many elements for one dispatch".into(),
        });
    }
    Ok((x, [x, y]))
}

struct Check {
    kernel: &'static str,
}

impl Check {
    fn shape_error(&self, message: String) -> GpuError {
        GpuError::Shape { kernel: self.kernel.to_string(), message }
    }

    fn count(&self, what: &str, declared: &[&str], got: usize) -> Result<(), GpuError> {
        if declared.len() == got {
            return Ok(());
        }
        Err(GpuError::Invalid(format!(
            "{} takes {} {what} buffer(s) ({}), got {got}",
            self.kernel,
            declared.len(),
            declared.join(", ")
        )))
    }

    fn dtype(&self, what: &str, meta: &TensorMeta, want: DType) -> Result<(), GpuError> {
        if meta.dtype == want {
            return Ok(());
        }
        Err(GpuError::DType {
            kernel: self.kernel.to_string(),
            message: format!("{what} must be {want}, got {}", meta.dtype),
        })
    }

    fn non_empty(&self, what: &str, meta: &TensorMeta) -> Result<(), GpuError> {
        if meta.elements()? == 0 {
            return Err(self.shape_error(format!("{what} is empty ({})", show_shape(&meta.shape))));
        }
        Ok(())
    }

    fn shape(&self, what: &str, meta: &TensorMeta, want: &[u32]) -> Result<(), GpuError> {
        if meta.shape == want {
            return Ok(());
        }
        Err(self.shape_error(format!("{what} must be {}, got {}", show_shape(want), show_shape(&meta.shape))))
    }

    fn same_shape(&self, what: &str, meta: &TensorMeta, like: &TensorMeta) -> Result<(), GpuError> {
        self.shape(what, meta, &like.shape)
    }

    fn elements_u32(&self, meta: &TensorMeta) -> Result<u32, GpuError> {
        u32::try_from(meta.elements()?)
            .map_err(|_| self.shape_error(format!("{} has more than 2^32 elements", show_shape(&meta.shape))))
    }

    /// `(rows, row length)` of a tensor reduced over its last axis.
    fn rows(&self, meta: &TensorMeta) -> Result<(u32, u32), GpuError> {
        let n = *meta.shape.last().ok_or_else(|| self.shape_error("x must have at least one axis".into()))?;
        let total = self.elements_u32(meta)?;
        Ok((total / n.max(1), n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Catalogue;

    fn f32s(shape: &[u32]) -> TensorMeta {
        TensorMeta::new(DType::F32, shape)
    }

    #[test]
    fn shapes_and_types_are_checked_with_clear_messages() {
        let catalogue = Catalogue::load();
        let matmul = catalogue.get("matmul").expect("matmul");
        let p = plan(matmul, &[&f32s(&[100, 70]), &f32s(&[70, 33])], &[&f32s(&[100, 33])], &[]).expect("plan");
        assert_eq!(p.stages[0].workgroups, [1, 2]);
        let e = plan(matmul, &[&f32s(&[100, 70]), &f32s(&[71, 33])], &[&f32s(&[100, 33])], &[]).expect_err("bad");
        assert!(e.to_string().contains("inner dimensions differ"), "{e}");
        let ints = TensorMeta::new(DType::I32, &[4]);
        let add = catalogue.get("add").expect("add");
        let e = plan(add, &[&ints, &ints], &[&f32s(&[4])], &[]).expect_err("dtype");
        assert!(matches!(e, GpuError::DType { .. }) && e.to_string().contains("must be f32, got i32"), "{e}");
        let e = plan(catalogue.get("scale").expect("scale"), &[&f32s(&[4])], &[&f32s(&[4])], &[]).expect_err("param");
        assert!(e.to_string().contains("factor"), "{e}");
        let e = plan(catalogue.get("sum").expect("sum"), &[&f32s(&[3, 4])], &[&f32s(&[4])], &[]).expect_err("shape");
        assert!(e.to_string().contains("must be [3], got [4]"), "{e}");
        let topk = catalogue.get("cosine_topk").expect("topk");
        let idx = TensorMeta::new(DType::U32, &[9]);
        let e = plan(topk, &[&f32s(&[8]), &f32s(&[5, 8])], &[&idx, &f32s(&[9])], &[]).expect_err("k");
        assert!(e.to_string().contains("k = 9"), "{e}");
    }

    #[test]
    fn large_inputs_use_a_two_dimensional_grid() {
        let (x, [gx, gy]) = grid("add", 70_000).expect("fits");
        assert_eq!((x, gx, gy), (65_535, 65_535, 2));
    }
}
