//! Per-job GPU quotas: what one job may hold and do, with defaults, and the accounting that
//! refuses a request past them with the flag that raises the quota.

use crate::GpuError;
use serde::{Deserialize, Serialize};

// The defaults are part of a run's limits, declared with them in `guild-vocab`.
pub use guild_vocab::limits::{
    GPU_BUFFER_BYTES_MAX_DEFAULT, GPU_BUFFERS_MAX_DEFAULT, GPU_DISPATCH_TIMEOUT_MS_DEFAULT, GPU_DISPATCHES_MAX_DEFAULT,
};

/// What one job may do with the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuLimits {
    /// Bytes of buffers a job may hold at once. `--gpu-buffer-bytes`.
    pub buffer_bytes_max: u64,
    /// Buffers a job may hold at once. `--gpu-buffers`.
    pub buffers_max: u32,
    /// Dispatches a job may make. `--gpu-dispatches`.
    pub dispatches_max: u32,
    /// How long one dispatch may take to complete, waiting for the shared device included.
    /// `--gpu-timeout`.
    pub dispatch_timeout_ms: u64,
}

impl Default for GpuLimits {
    fn default() -> Self {
        Self {
            buffer_bytes_max: GPU_BUFFER_BYTES_MAX_DEFAULT,
            buffers_max: GPU_BUFFERS_MAX_DEFAULT,
            dispatches_max: GPU_DISPATCHES_MAX_DEFAULT,
            dispatch_timeout_ms: GPU_DISPATCH_TIMEOUT_MS_DEFAULT,
        }
    }
}

impl From<&guild_vocab::Limits> for GpuLimits {
    /// The GPU part of a run's limits.
    fn from(limits: &guild_vocab::Limits) -> Self {
        Self {
            buffer_bytes_max: limits.gpu_buffer_bytes_max,
            buffers_max: limits.gpu_buffers_max,
            dispatches_max: limits.gpu_dispatches_max,
            dispatch_timeout_ms: limits.gpu_dispatch_timeout_ms,
        }
    }
}

/// One job's use so far.
#[derive(Debug, Clone, Default)]
pub struct JobQuota {
    limits: GpuLimits,
    bytes_held: u64,
    buffers_held: u32,
    dispatches: u32,
}

impl JobQuota {
    /// Nothing used yet.
    pub fn new(limits: GpuLimits) -> Self {
        Self { limits, ..Self::default() }
    }

    /// The job's GPU limits this quota charges against, as it was made with.
    pub fn limits(&self) -> GpuLimits {
        self.limits
    }

    /// Charge a new buffer of `bytes`.
    ///
    /// # Errors
    /// [`GpuError::Quota`] (`buffer count`) when the job already holds `buffers_max` buffers, or
    /// (`buffer bytes`) when this one would take it past `buffer_bytes_max`. Nothing is charged
    /// then.
    pub fn allocate(&mut self, bytes: u64) -> Result<(), GpuError> {
        if self.buffers_held >= self.limits.buffers_max {
            return Err(GpuError::Quota {
                quota: "buffer count",
                requested: format!("{} buffers", u64::from(self.buffers_held) + 1),
                limit: format!("{}", self.limits.buffers_max),
                flag: "--gpu-buffers",
            });
        }
        let total = self.bytes_held.saturating_add(bytes);
        if total > self.limits.buffer_bytes_max {
            return Err(GpuError::Quota {
                quota: "buffer bytes",
                requested: human_bytes(total),
                limit: human_bytes(self.limits.buffer_bytes_max),
                flag: "--gpu-buffer-bytes",
            });
        }
        self.bytes_held = total;
        self.buffers_held += 1;
        Ok(())
    }

    /// Give back a dropped buffer of `bytes`.
    pub fn release(&mut self, bytes: u64) {
        self.bytes_held = self.bytes_held.saturating_sub(bytes);
        self.buffers_held = self.buffers_held.saturating_sub(1);
    }

    /// Charge one dispatch.
    ///
    /// # Errors
    /// [`GpuError::Quota`] (`dispatch`) when the job has already made `dispatches_max` dispatches.
    pub fn dispatch(&mut self) -> Result<(), GpuError> {
        if self.dispatches >= self.limits.dispatches_max {
            return Err(GpuError::Quota {
                quota: "dispatch",
                requested: format!("{} dispatches", u64::from(self.dispatches) + 1),
                limit: format!("{}", self.limits.dispatches_max),
                flag: "--gpu-dispatches",
            });
        }
        self.dispatches += 1;
        Ok(())
    }

    /// Dispatches so far.
    pub fn dispatches(&self) -> u32 {
        self.dispatches
    }
}

/// `80 MiB`, `512 B`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (name, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{} {name}", bytes / size);
        }
        if bytes >= size {
            return format!("{:.1} {name}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_refuse_with_the_flag_to_raise() {
        let mut quota = JobQuota::new(GpuLimits {
            buffer_bytes_max: 64 << 20,
            buffers_max: 2,
            dispatches_max: 1,
            ..GpuLimits::default()
        });
        let e = quota.allocate(80 << 20).expect_err("over");
        assert_eq!(e.to_string(), "gpu buffer bytes quota: 80 MiB requested of 64 MiB (raise --gpu-buffer-bytes)");
        quota.allocate(1).expect("fits");
        quota.allocate(1).expect("fits");
        assert!(quota.allocate(1).expect_err("count").to_string().contains("--gpu-buffers"));
        quota.release(1);
        quota.allocate(1).expect("fits again");
        quota.dispatch().expect("one");
        assert!(quota.dispatch().expect_err("two").to_string().contains("--gpu-dispatches"));
    }
}
