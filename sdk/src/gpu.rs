//! GPU work from a tool: typed, shaped [`Tensor`]s held by the host, and kernels from the host's
//! catalogue run on them. The host picks the device (or its CPU reference), sizes every dispatch
//! from the shapes, charges the buffers to the run's quota, and records each dispatch for replay.
//! A tool that uses this must ask for it with [`Info::gpu`](crate::Info::gpu).
//!
//! The example is compiled but not run (`no_run`): tensors live in the Guild host, which answers
//! these `guild:tool/gpu` imports; in a native build no host is there to answer them.
//!
//! ```no_run
//! use guild_sdk::gpu::{self, Tensor};
//!
//! # fn demo() -> Result<(), gpu::GpuError> {
//! let a = Tensor::from_f32(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?;
//! let b = Tensor::from_f32(&[3, 1], &[1.0, 0.0, -1.0])?;
//! let c = gpu::matmul(&a, &b)?; // [2, 1]
//! assert_eq!(c.to_f32()?, vec![-2.0, -2.0]);
//! # Ok(())
//! # }
//! ```

use crate::ToolError;
use crate::bindings::guild::tool::gpu as wit;
use std::fmt;

pub use wit::{Dtype as DType, KernelInfo, Scalar};

/// Why a GPU call failed. Convert it into a [`ToolError`] with `?` in a tool's function.
#[derive(Debug, Clone)]
pub struct GpuError(wit::GpuError);

impl GpuError {
    /// The host's message.
    pub fn message(&self) -> &str {
        match &self.0 {
            wit::GpuError::UnknownKernel(m)
            | wit::GpuError::Shape(m)
            | wit::GpuError::Dtype(m)
            | wit::GpuError::Invalid(m)
            | wit::GpuError::Unavailable(m)
            | wit::GpuError::Denied(m) => m,
        }
    }

    /// Whether the host has no way to run GPU work now (a tool may fall back to the CPU).
    pub fn is_unavailable(&self) -> bool {
        matches!(self.0, wit::GpuError::Unavailable(_))
    }

    fn local(message: String) -> Self {
        Self(wit::GpuError::Invalid(message))
    }
}

impl fmt::Display for GpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for GpuError {}

impl From<wit::GpuError> for GpuError {
    fn from(error: wit::GpuError) -> Self {
        Self(error)
    }
}

impl From<GpuError> for ToolError {
    fn from(error: GpuError) -> Self {
        match error.0 {
            wit::GpuError::Denied(m) => ToolError::Denied(m),
            other => ToolError::Failed(GpuError(other).to_string()),
        }
    }
}

/// A buffer on the host: an element type, a shape, and its contents. Dropping it gives its bytes
/// back to the run's quota.
#[derive(Debug)]
pub struct Tensor {
    buffer: wit::Buffer,
    shape: Vec<u32>,
    dtype: DType,
}

impl Tensor {
    /// A zero-filled tensor.
    ///
    /// # Errors
    /// A [`GpuError`] that converts to [`ToolError::Denied`] when the tool did not ask for `gpu`,
    /// or an `invalid` one when the shape's size overflows. Past the run's buffer quota the host
    /// ends the run instead.
    pub fn zeros(dtype: DType, shape: &[u32]) -> Result<Self, GpuError> {
        let buffer = wit::Buffer::create(dtype, shape)?;
        Ok(Self { buffer, shape: shape.to_vec(), dtype })
    }

    /// A float tensor holding `values` (row-major; as many as the shape has elements).
    ///
    /// # Errors
    /// As [`Tensor::zeros`], and an `invalid` [`GpuError`] when `values` are not as many as the
    /// shape has elements.
    pub fn from_f32(shape: &[u32], values: &[f32]) -> Result<Self, GpuError> {
        let tensor = Self::zeros(DType::F32, shape)?;
        tensor.write_f32(values)?;
        Ok(tensor)
    }

    /// An unsigned-integer tensor holding `values`.
    ///
    /// # Errors
    /// As [`Tensor::from_f32`].
    pub fn from_u32(shape: &[u32], values: &[u32]) -> Result<Self, GpuError> {
        let tensor = Self::zeros(DType::U32, shape)?;
        tensor.buffer.write(&values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>())?;
        Ok(tensor)
    }

    /// Replace the contents of a float tensor.
    ///
    /// # Errors
    /// An `invalid` [`GpuError`] when the tensor is not f32 or `values` are not as many as its
    /// elements.
    pub fn write_f32(&self, values: &[f32]) -> Result<(), GpuError> {
        self.expect(DType::F32)?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(self.buffer.write(&bytes)?)
    }

    /// The contents of a float tensor.
    ///
    /// # Errors
    /// An `invalid` [`GpuError`] when the tensor is not f32.
    pub fn to_f32(&self) -> Result<Vec<f32>, GpuError> {
        self.expect(DType::F32)?;
        Ok(self.buffer.read().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// The contents of an unsigned-integer tensor.
    ///
    /// # Errors
    /// An `invalid` [`GpuError`] when the tensor is not u32.
    pub fn to_u32(&self) -> Result<Vec<u32>, GpuError> {
        self.expect(DType::U32)?;
        Ok(self.buffer.read().chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// Its shape, outermost first.
    pub fn shape(&self) -> &[u32] {
        &self.shape
    }

    /// Its element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn expect(&self, dtype: DType) -> Result<(), GpuError> {
        if self.dtype == dtype {
            return Ok(());
        }
        Err(GpuError::local(format!("the tensor holds {:?}, not {dtype:?}", self.dtype)))
    }
}

/// Run `kernel` from the host's catalogue: the host checks shapes and types and sizes the work.
///
/// # Errors
/// A [`GpuError`]: `denied` when the tool did not ask for `gpu`; `unknown-kernel` when the
/// catalogue has no `kernel`; `shape`, `dtype` or `invalid` when the tensors or `params` do not fit
/// it; `unavailable` ([`GpuError::is_unavailable`]) when the host cannot run GPU work now. Past a
/// quota, the host's GPU queue or a deadline, or when the device is lost, the host ends the run
/// instead.
pub fn dispatch(kernel: &str, inputs: &[&Tensor], outputs: &[&Tensor], params: &[Scalar]) -> Result<(), GpuError> {
    let inputs: Vec<&wit::Buffer> = inputs.iter().map(|t| &t.buffer).collect();
    let outputs: Vec<&wit::Buffer> = outputs.iter().map(|t| &t.buffer).collect();
    Ok(wit::dispatch(kernel, &inputs, &outputs, params)?)
}

/// The host's kernels: name, version, WGSL hash, whether bit-deterministic, signature.
pub fn kernels() -> Vec<KernelInfo> {
    wit::list_kernels()
}

/// `a[m, k] · b[k, n]`.
///
/// # Errors
/// An `invalid` [`GpuError`] when `a` or `b` is not a matrix; otherwise as [`Tensor::zeros`] and
/// [`dispatch`] (a `shape` error when the inner dimensions differ).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor, GpuError> {
    let (m, n) = match (a.shape(), b.shape()) {
        ([m, _], [_, n]) => (*m, *n),
        _ => return Err(GpuError::local("matmul takes two matrices".into())),
    };
    let out = Tensor::zeros(DType::F32, &[m, n])?;
    dispatch("matmul", &[a, b], &[&out], &[])?;
    Ok(out)
}

/// The `k` rows of `matrix` most similar to `query` by cosine similarity, best first, as
/// `(row, score)` pairs.
///
/// # Errors
/// As [`Tensor::zeros`] and [`dispatch`] (a `shape` error when `query` is not `[d]`, `matrix` not
/// `[rows, d]`, or `k` is 0, more than the rows or more than the host allows).
pub fn cosine_top_k(query: &Tensor, matrix: &Tensor, k: u32) -> Result<Vec<(u32, f32)>, GpuError> {
    let indices = Tensor::zeros(DType::U32, &[k])?;
    let scores = Tensor::zeros(DType::F32, &[k])?;
    dispatch("cosine_topk", &[query, matrix], &[&indices, &scores], &[])?;
    Ok(indices.to_u32()?.into_iter().zip(scores.to_f32()?).collect())
}

/// An elementwise or row-wise kernel with one input and an output of the same shape (`relu`,
/// `gelu`, `softmax`; `scale` with its factor as a parameter).
///
/// # Errors
/// As [`Tensor::zeros`] and [`dispatch`].
pub fn map(kernel: &str, input: &Tensor, params: &[Scalar]) -> Result<Tensor, GpuError> {
    let out = Tensor::zeros(DType::F32, input.shape())?;
    dispatch(kernel, &[input], &[&out], params)?;
    Ok(out)
}
