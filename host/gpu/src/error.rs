//! [`GpuError`]: every way a GPU request fails, with a message that says what happened, to what,
//! and what to change.

/// Why a GPU request failed.
///
/// The first group ([`GpuError::UnknownKernel`] to [`GpuError::Unavailable`]) is the guest's to
/// handle; quotas, deadlines and a lost device end the job (the runtime turns them into a limit
/// or a trap).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// No kernel of that name in the catalogue.
    #[error("unknown gpu kernel {name:?}; the catalogue has: {known}")]
    UnknownKernel {
        /// The name asked for.
        name: String,
        /// The catalogue's names, comma-separated.
        known: String,
    },
    /// A buffer's shape does not fit the kernel.
    #[error("gpu {kernel}: {message}")]
    Shape {
        /// The kernel dispatched, by its catalogue name (`matmul`).
        kernel: String,
        /// What is wrong, with the expected and found shapes.
        message: String,
    },
    /// A buffer's element type does not fit the kernel.
    #[error("gpu {kernel}: {message}")]
    DType {
        /// The kernel dispatched, by its catalogue name.
        kernel: String,
        /// What is wrong, with the expected and found types.
        message: String,
    },
    /// Anything else malformed: parameters, buffer sizes, data lengths.
    #[error("gpu: {0}")]
    Invalid(String),
    /// No device can run the request under this host's configuration.
    #[error("gpu unavailable: {0}")]
    Unavailable(String),
    /// A per-job quota would be exceeded.
    #[error("gpu {quota} quota: {requested} requested of {limit} (raise {flag})")]
    Quota {
        /// Which quota: `buffer bytes`, `buffer count`, `dispatch`.
        quota: &'static str,
        /// What the job would hold or have done, for people.
        requested: String,
        /// The quota, for people.
        limit: String,
        /// The flag that raises it.
        flag: &'static str,
    },
    /// The shared device's submission queue is full.
    #[error("gpu busy: {queued} dispatches already waiting for the shared device (its queue_depth_max); retry later")]
    Busy {
        /// Dispatches already waiting for the device (at least the host's `queue_depth_max`).
        queued: usize,
    },
    /// A dispatch did not complete in time.
    #[error("gpu deadline: {kernel} did not complete within {limit_ms} ms (raise --gpu-timeout)")]
    Deadline {
        /// The kernel that did not complete, by its catalogue name.
        kernel: String,
        /// The dispatch's timeout in ms (the run's `gpu_dispatch_timeout_ms`), waiting for the
        /// device included.
        limit_ms: u64,
    },
    /// The device was lost (driver reset, removal, or a fault); it is rebuilt for the next job.
    #[error("gpu device lost during {kernel}: {reason}; the device is rebuilt for the next job, rerun this one")]
    DeviceLost {
        /// The kernel running when the device was lost, by its catalogue name.
        kernel: String,
        /// What the driver said.
        reason: String,
    },
    /// A kernel file failed validation when the host started.
    #[error("gpu kernel {kernel} does not validate: {message}")]
    Catalogue {
        /// The kernel whose WGSL does not validate, by its catalogue name.
        kernel: String,
        /// The validator's message.
        message: String,
    },
}

impl GpuError {
    /// Whether this error ends the job rather than being returned to the guest.
    pub fn ends_job(&self) -> bool {
        matches!(
            self,
            GpuError::Quota { .. } | GpuError::Busy { .. } | GpuError::Deadline { .. } | GpuError::DeviceLost { .. }
        )
    }
}
