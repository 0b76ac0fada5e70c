//! guild-gpu: GPU work for Guild tools through a host-owned kernel catalogue, never raw device
//! access.
//!
//! It owns the [`Catalogue`] of WGSL kernels (validated when the host starts, identified by the
//! blake3 digest of their source), the uniform block every kernel reads ([`params`], in Rust and
//! WGSL), the checks and plans that turn a guest's buffers into workgroup counts ([`plan`]), one
//! wgpu device per host shared by all runs ([`GpuHost`], with a bounded queue and rebuilt after a
//! loss), the CPU reference of every kernel ([`reference`](mod@reference)), and the per-job quotas
//! ([`GpuLimits`]). It knows nothing of wasmtime: the runtime links the `guild:tool/gpu`
//! interface to it and records each dispatch on the tape.

mod catalogue;
mod device;
mod error;
mod host;
mod limits;
pub mod params;
pub mod plan;
pub mod reference;
mod tensor;

pub use catalogue::{CATALOGUE_VERSION, Catalogue, KERNELS, Kernel, KernelId, KernelSpec, Tolerance};
pub use device::{AdapterReport, DeviceLimits};
pub use error::GpuError;
pub use host::{
    CPU_REFERENCE, DispatchRequest, Dispatched, GPU_QUEUE_DEPTH_MAX_DEFAULT, GpuConfig, GpuHost, GpuInfo, GpuMode,
};
pub use limits::{
    GPU_BUFFER_BYTES_MAX_DEFAULT, GPU_BUFFERS_MAX_DEFAULT, GPU_DISPATCH_TIMEOUT_MS_DEFAULT, GPU_DISPATCHES_MAX_DEFAULT,
    GpuLimits, JobQuota,
};
pub use tensor::{DType, Scalar, TensorMeta, f32_bytes, f32s, show_shape, u32_bytes, u32s};
