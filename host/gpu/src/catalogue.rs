//! The kernel catalogue: the WGSL files under `host/gpu/kernels/`, each after the shared
//! `Params` header (`params.wgsl`), compiled into the host, each with a name, a version, whether
//! its results are bit-deterministic, the tolerance its results are held to against the CPU
//! reference, and the blake3 digest of its source that identifies it on tapes.
//! [`Catalogue::validate`] parses and validates every kernel with naga; the test suite runs it
//! (and `guild gpu info` shows it), so a broken kernel never ships. Loading the catalogue only
//! hashes the sources: a process that never dispatches pays nothing for WGSL it does not use
//! (parsing all of it cost ~2.6 ms of every `guild run`), and the device validates what it
//! compiles again.

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
    /// `out[m, n] = a[m, k] · b[k, n]`, each output summing its k products in order.
    Matmul,
    /// The sum over the last axis: one value per row.
    Sum,
    /// The maximum over the last axis: one value per row.
    Max,
    /// Softmax over the last axis, each row on its own; the output has the input's shape.
    Softmax,
    /// Row layer norm.
    LayerNorm,
    /// Cosine similarity of a query against a matrix's rows, then the top k.
    CosineTopk,
}

/// How far a result may be from the CPU reference: `|found − expected| ≤ abs + rel·|expected|`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tolerance {
    /// `abs`: the difference always allowed, in the result's own units.
    pub abs: f32,
    /// `rel`: the difference allowed per unit of `|expected|` (`1e-5` is 10 ppm).
    pub rel: f32,
}

impl Tolerance {
    /// No difference at all: the bits must match (deterministic kernels).
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
    /// The kernel this entry declares: what the host and its CPU reference dispatch on.
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
    /// The WGSL source: the shared `Params` header, then the kernel's own files.
    #[serde(skip)]
    pub wgsl: &'static str,
    /// Entry points the host dispatches, in order.
    #[serde(skip)]
    pub entries: &'static [&'static str],
}

/// The catalogue's version: bumped whenever any kernel's source, and so its id (the blake3 of the
/// source), changes, even where no kernel's semantics do (those bump the kernel's own `version`).
/// A test pins every id against it. 1: the catalogue as first shipped; 2: the `Params` header
/// every kernel repeated moved into one file, `params.wgsl`.
pub const CATALOGUE_VERSION: u32 = 2;

/// A kernel's source as compiled in: the shared `Params` header (`params.wgsl`, beside its Rust
/// twin), then the named files of `host/gpu/kernels/`, joined at compile time.
macro_rules! wgsl {
    ($($file:literal),+) => {
        concat!(include_str!("params.wgsl"), $(include_str!(concat!("../kernels/", $file))),+)
    };
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
        wgsl: wgsl!("add.wgsl"),
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
        wgsl: wgsl!("mul.wgsl"),
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
        wgsl: wgsl!("scale.wgsl"),
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
        wgsl: wgsl!("relu.wgsl"),
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
        wgsl: wgsl!("gelu.wgsl"),
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
        wgsl: wgsl!("matmul.wgsl"),
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
        wgsl: wgsl!("sum.wgsl", "rows.wgsl"),
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
        wgsl: wgsl!("max.wgsl", "rows.wgsl"),
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
        wgsl: wgsl!("softmax.wgsl", "rows.wgsl"),
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
        wgsl: wgsl!("layer_norm.wgsl", "rows.wgsl"),
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
        wgsl: wgsl!("cosine_topk.wgsl"),
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
    /// Every kernel, identified by the blake3 of its WGSL.
    pub fn load() -> Self {
        Self { kernels: KERNELS.iter().map(|spec| Kernel { spec, hash: Digest::of(spec.wgsl.as_bytes()) }).collect() }
    }

    /// Parse and validate every kernel's WGSL with naga.
    ///
    /// # Errors
    /// [`GpuError::Catalogue`], naming the kernel, for the first whose WGSL does not parse or
    /// validate, or lacks an entry point the host dispatches.
    pub fn validate(&self) -> Result<(), GpuError> {
        self.kernels.iter().try_for_each(|kernel| validate(kernel.spec))
    }

    /// The kernels, in catalogue order.
    pub fn kernels(&self) -> &[Kernel] {
        &self.kernels
    }

    /// The kernel called `name`.
    ///
    /// # Errors
    /// [`GpuError::UnknownKernel`], listing the catalogue's names, when no kernel is called `name`.
    pub fn get(&self, name: &str) -> Result<&Kernel, GpuError> {
        self.kernels.iter().find(|k| k.spec.name == name).ok_or_else(|| GpuError::UnknownKernel {
            name: name.to_string(),
            known: self.kernels.iter().map(|k| k.spec.name).collect::<Vec<_>>().join(", "),
        })
    }
}

fn validate(spec: &'static KernelSpec) -> Result<(), GpuError> {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_validates_and_has_a_distinct_hash() {
        let catalogue = Catalogue::load();
        catalogue.validate().expect("every kernel parses and validates");
        assert_eq!(catalogue.kernels().len(), 11);
        let mut hashes: Vec<_> = catalogue.kernels().iter().map(|k| k.hash).collect();
        hashes.sort_by_key(|d| d.to_hex());
        hashes.dedup();
        assert_eq!(hashes.len(), 11);
        let unknown = catalogue.get("conv2d").expect_err("unknown");
        assert!(unknown.to_string().contains("matmul"), "{unknown}");
    }

    #[test]
    fn every_kernel_starts_with_the_shared_params_header() {
        for spec in KERNELS {
            assert!(spec.wgsl.starts_with(crate::params::WGSL), "{}", spec.name);
            assert_eq!(spec.wgsl.matches("struct Params").count(), 1, "{} declares Params once", spec.name);
        }
    }

    /// Every kernel's id at [`CATALOGUE_VERSION`]. When a kernel's source changes this fails: bump
    /// the version, then copy the new ids from the failure.
    const PINNED: (u32, &[(&str, &str)]) = (
        2,
        &[
            ("add", "3e47f87c4ea34eb9379511196e6f0b1fae5a3e595c9ee40a658dee014a46cceb"),
            ("mul", "827605d4a22d85bb7afd4b1619f596700f3bb06739d566bc44ea1f4ffb725c06"),
            ("scale", "f687a9516d53b40f765a24eb574043fe03f61f2d10d2eb3c50daf00524c89a97"),
            ("relu", "e5c9b566c04a1ce3330f82a236fc81e5069ee0dd3d7a4464ad48a65d2e40739b"),
            ("gelu", "9f8d6828f9a7422a61c137d460a5b13f5307480e8a1b6745d27f0e229608706c"),
            ("matmul", "ecd31740aa7eac4a957acafb075f4174fb62a3d4c0493e2a82bfbe2d23aab4db"),
            ("sum", "1557026541852c52ecf45a4c2f20727a983cdd4d467e36b1940e143eb079165a"),
            ("max", "83b0a005d6bc4d65bf7dd0b45c90f2e819f43b1a6b2e17c825eac70510f9f1e4"),
            ("softmax", "8c8735c79b5a8b551687c4296b5323a3fba0774f89e81df919a1d02f9279322b"),
            ("layer_norm", "93caea408e9504062d7f7bdaa8e1ee44104985932d9f10277c8cd1c923d76808"),
            ("cosine_topk", "e9959d6eeaf50309b413be7cc49854217206519ea75f0c7ab23e9727b8402cd7"),
        ],
    );

    #[test]
    fn kernel_ids_are_pinned_to_the_catalogue_version() {
        let catalogue = Catalogue::load();
        let ids: Vec<(&str, String)> = catalogue.kernels().iter().map(|k| (k.spec.name, k.hash.to_hex())).collect();
        let pinned: Vec<(&str, String)> = PINNED.1.iter().map(|(name, id)| (*name, id.to_string())).collect();
        let listed: String = ids.iter().map(|(name, id)| format!("\n            (\"{name}\", \"{id}\"),")).collect();
        assert!(ids == pinned, "kernel ids changed: bump CATALOGUE_VERSION, then pin these{listed}");
        assert_eq!(PINNED.0, CATALOGUE_VERSION, "the ids are pinned at another catalogue version");
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
