//! The host's side of a guest's `guild:tool/gpu.buffer`: a tensor's shape and bytes, kept in
//! host memory for the run (the bindings name this type for the resource).

use guild_gpu::TensorMeta;

/// A guest's buffer: lives in host memory for the run.
#[allow(unreachable_pub)] // bindgen re-exports it as the `buffer` resource type.
pub struct GpuBuffer {
    /// Its element type and shape.
    pub(crate) meta: TensorMeta,
    /// Its bytes, `meta.size_bytes()` of them.
    pub(crate) data: Vec<u8>,
}
