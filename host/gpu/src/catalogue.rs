//! The kernel catalogue: the WGSL files under `host/gpu/kernels/`, compiled into the host, each
//! with a name, a version, whether its results are bit-deterministic, the tolerance its results
//! are held to against the CPU reference, and the blake3 digest of its source that identifies it
//! on tapes. [`Catalogue::load`] parses and validates every file with naga before anything runs,
//! so a broken kernel stops the host at start, not a job later.

use crate::GpuError;
use guild_replay::Digest;
use serde::Serialize;

/// Which kernel; the plan and the CPU reference match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelId {
    /// `out = a + b`.
    Add,
    /// `out = a * b`.
    Mul,
    /// `out = a * factor`.
    Scale,
    /// `out = max(a, 0)`.
    Relu,
    /// GELU, tanh form.
    Gelu,
    /// Matrix product.
    Matmul,
    /// Row sums.
    Sum,
    /// Row maxima.
    Max,
    /// Row softmax.
    Softmax,
    /// Row layer norm.
    LayerNorm,
    /// Cosine similarity of a query against a matrix's rows, then the top k.
    CosineTopk,
}

/// How far a result may be from the CPU reference: `|found − expected| ≤ abs + rel·|expected|`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tolerance {
    /// Absolute part.
    pub abs: f32,
    /// Relative part.
    pub rel: f32,
}

impl Tolerance {
    /// Bit-for-bit.
    pub const EXACT: Tolerance = Tolerance { abs: 0.0, rel: 0.0 };

    /// Whether `found` is close enough to `expected` (NaN only matches NaN).
    pub fn accepts(&self, expected: f32, found: f32) -> bool {
        if expected.is_nan() || found.is_nan() {
            return expected.is_nan() && found.is_nan();
        }
        if expected == found {
            return true;
        }
        (found - expected).abs() <= self.abs + self.rel * expected.abs()
    }
}

/// A kernel as the catalogue declares it.
#[derive(Debug, Serialize)]
pub struct KernelSpec {
    /// Which one.
    pub id: KernelId,
    /// Its name in `dispatch`.
    pub name: &'static str,
    /// Bumped whenever its semantics change.
    pub version: u32,
    /// Whether two runs on any conformant device give the same bits.
    pub deterministic: bool,
    /// How close to the CPU reference its results are held.
    pub tolerance: Tolerance,
    /// Input buffers, in order, as `name: dtype[shape]`.
    pub inputs: &'static [&'static str],
    /// Output buffers, in order.
    pub outputs: &'static [&'static str],
    /// Scalar parameters, in order.
    pub params: &'static [&'static str],
    /// One line for people.
    pub description: &'static str,
    /// The WGSL source.
    #[serde(skip)]
    pub wgsl: &'static str,
    /// Entry points the host dispatches, in order.
    #[serde(skip)]
    pub entries: &'static [&'static str],
}

const ELEMENTWISE: Tolerance = Tolerance::EXACT;

/// Every kernel the host ships.
pub static KERNELS: &[KernelSpec] = &[
    KernelSpec {
        id: KernelId::Add,
        name: "add",
        version: 1,
        deterministic: true,
        tolerance: ELEMENTWISE,
        inputs: &["a: f32[...]", "b: f32[same shape]"],
        outputs: &["out: f32[same shape]"],
        params: &[],
        description: "elementwise a + b",
        wgsl: include_str!("../kernels/add.wgsl"),
        entries: &["main"],
    },
    KernelSpec {
        id: KernelId::Mul,
        name: "mul",
        version: 1,
        deterministic: true,
        tolerance: ELEMENTWISE,
        inputs: &["a: f32[...]", "b: f32[same shape]"],
        outputs: &["out: f32[same shape]"],
        params: &[],
        description: "elementwise a * b",
        wgsl: include_str!("../kernels/mul.wgsl"),
        entries: &["main"],
    },
    KernelSpec {
        id: KernelId::Scale,
        name: "scale",
        version: 1,
        deterministic: true,
        tolerance: ELEMENTWISE,
        inputs: &["a: f32[...]"],
        outputs: &["out: f32[same shape]"],
        params: &["factor: f32"],
        description: "elementwise a * factor",
        wgsl: include_str!("../kernels/scale.wgsl"),
        entries: &["main"],
    },
    KernelSpec {
        id: KernelId::Relu,
        name: "relu",
        version: 1,
        deterministic: true,
        tolerance: ELEMENTWISE,
        inputs: &["a: f32[...]"],
        outputs: &["out: f32[same shape]"],
        params: &[],
        description: "elementwise max(a, 0)",
        wgsl: include_str!("../kernels/relu.wgsl"),
        entries: &["main"],
    },
    KernelSpec {
        id: KernelId::Gelu,
        name: "gelu",
        version: 1,
        deterministic: false,
        tolerance: Tolerance { abs: 1e-5, rel: 1e-4 },
        inputs: &["a: f32[...]"],
        outputs: &["out: f32[same shape]"],
        params: &[],
        description: "elementwise GELU (tanh approximation)",
        wgsl: include_str!("../kernels/gelu.wgsl"),
        entries: &["main"],
    },
    KernelSpec {
        id: KernelId::Matmul,
        name: "matmul",
        version: 1,
        deterministic: false,
        tolerance: Tolerance { abs: 1e-3, rel: 1e-3 },
        inputs: &["a: f32[m, k]", "b: f32[k, n]"],
        outputs: &["out: f32[m, n]"],
        params: &[],
        description: "matrix product, tiled 64×64 (each output sums its k products in order)",
        wgsl: include_str!("../kernels/matmul.wgsl"),
        entries: &["main"],
    },
    KernelSpec {
        id: KernelId::Sum,
        name: "sum",
        version: 1,
        deterministic: false,
        tolerance: Tolerance { abs: 1e-3, rel: 1e-4 },
        inputs: &["x: f32[..., n]"],
        outputs: &["out: f32[...] (f32[1] for a vector)"],
        params: &[],
        description: "sum over the last axis",
        wgsl: concat!(include_str!("../kernels/sum.wgsl"), include_str!("../kernels/rows.wgsl")),
        entries: &["main"],
    },
    KernelSpec {
        id: KernelId::Max,
        name: "max",
        version: 1,
        deterministic: true,
        tolerance: Tolerance::EXACT,
        inputs: &["x: f32[..., n]"],
        outputs: &["out: f32[...] (f32[1] for a vector)"],
        params: &[],
        description: "maximum over the last axis (NaN inputs give an unspecified result)",
        wgsl: concat!(include_str!("../kernels/max.wgsl"), include_str!("../kernels/rows.wgsl")),
        entries: &["main"],
    },
    KernelSpec {
        id: KernelId::Softmax,
        name: "softmax",
        version: 1,
        deterministic: false,
        tolerance: Tolerance { abs: 1e-6, rel: 1e-4 },
        inputs: &["x: f32[..., n]"],
        outputs: &["out: f32[same shape]"],
        params: &[],
        description: "softmax over the last axis",
        wgsl: concat!(include_str!("../kernels/softmax.wgsl"), include_str!("../kernels/rows.wgsl")),
        entries: &["main"],
    },
    KernelSpec {
        id: KernelId::LayerNorm,
        name: "layer_norm",
        version: 1,
        deterministic: false,
        tolerance: Tolerance { abs: 1e-4, rel: 1e-4 },
        inputs: &["x: f32[..., n]", "gamma: f32[n]", "beta: f32[n]"],
        outputs: &["out: f32[same shape as x]"],
        params: &["eps: f32 (optional, default 1e-5)"],
        description: "layer normalisation over the last axis, then gamma * x + beta",
        wgsl: concat!(include_str!("../kernels/layer_norm.wgsl"), include_str!("../kernels/rows.wgsl")),
        entries: &["main"],
    },
    KernelSpec {
        id: KernelId::CosineTopk,
        name: "cosine_topk",
        version: 1,
        deterministic: false,
        tolerance: Tolerance { abs: 1e-5, rel: 1e-4 },
        inputs: &["query: f32[d]", "matrix: f32[rows, d]"],
        outputs: &["indices: u32[k]", "scores: f32[k]"],
        params: &[],
        description: "cosine similarity of query against each row, the k best first (ties to the lower index)",
        wgsl: include_str!("../kernels/cosine_topk.wgsl"),
        entries: &["scores_stage", "topk_stage"],
    },
];

/// A validated kernel with its identity.
#[derive(Debug, Clone, Serialize)]
pub struct Kernel {
    /// What the catalogue declares.
    pub spec: &'static KernelSpec,
    /// blake3 of its WGSL source.
    pub hash: Digest,
}

/// All kernels, validated.
#[derive(Debug, Clone)]
pub struct Catalogue {
    kernels: Vec<Kernel>,
}

impl Catalogue {
    /// Parse and validate every kernel's WGSL, and hash it. Fails on the first that does not
    /// validate or lacks an entry point the host dispatches.
    pub fn load() -> Result<Self, GpuError> {
        let kernels = KERNELS.iter().map(validate).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { kernels })
    }

    /// The kernels, in catalogue order.
    pub fn kernels(&self) -> &[Kernel] {
        &self.kernels
    }

    /// The kernel called `name`.
    pub fn get(&self, name: &str) -> Result<&Kernel, GpuError> {
        self.kernels.iter().find(|k| k.spec.name == name).ok_or_else(|| GpuError::UnknownKernel {
            name: name.to_string(),
            known: self.kernels.iter().map(|k| k.spec.name).collect::<Vec<_>>().join(", "),
        })
    }
}

fn validate(spec: &'static KernelSpec) -> Result<Kernel, GpuError> {
    let fail = |message: String| GpuError::Catalogue { kernel: spec.name.to_string(), message };
    let module = naga::front::wgsl::parse_str(spec.wgsl).map_err(|e| fail(e.emit_to_string(spec.wgsl)))?;
    let mut validator =
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty());
    validator.validate(&module).map_err(|e| fail(e.emit_to_string(spec.wgsl)))?;
    for entry in spec.entries {
        if !module.entry_points.iter().any(|e| e.name == *entry) {
            return Err(fail(format!("no entry point {entry}")));
        }
    }
    Ok(Kernel { spec, hash: Digest::of(spec.wgsl.as_bytes()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_validates_and_has_a_distinct_hash() {
        let catalogue = Catalogue::load().expect("valid catalogue");
        assert_eq!(catalogue.kernels().len(), 11);
        let mut hashes: Vec<_> = catalogue.kernels().iter().map(|k| k.hash).collect();
        hashes.sort_by_key(|d| d.to_hex());
        hashes.dedup();
        assert_eq!(hashes.len(), 11);
        let unknown = catalogue.get("conv2d").expect_err("unknown");
        assert!(unknown.to_string().contains("matmul"), "{unknown}");
    }

    #[test]
    fn tolerance() {
        let t = Tolerance { abs: 0.01, rel: 0.1 };
        assert!(t.accepts(10.0, 10.9));
        assert!(!t.accepts(10.0, 11.2));
        assert!(t.accepts(f32::NAN, f32::NAN));
        assert!(!Tolerance::EXACT.accepts(1.0, 1.0 + f32::EPSILON));
    }
}
