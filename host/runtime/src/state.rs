//! The per-run store state: the WASI (0.2, or preview 1 for a module) and `wasi:http` contexts with the run's egress hooks, the
//! resource table and limiter, the log sink, the GPU state, the call guard and the mounts'
//! write quotas; and the host side of `guild:tool/log`.

use crate::bindings::guild::tool::{log, types};
use crate::egress::hook::EgressHooks;
use crate::gpu::{GpuRun, GpuView};
use crate::guard::{Guard, Guarded};
use crate::logs::{LogLevel, LogSink};
use crate::quota::QuotaFs;
use crate::{LimitHit, Limits};
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::filesystem::WasiFilesystemCtxView;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// What a [`wasmtime::Store`] holds for one run.
pub(crate) struct HostState {
    pub(crate) wasi: WasiCtx,
    /// A preview-1 module's WASI context (its own resource table inside); `None` for a component.
    pub(crate) p1: Option<WasiP1Ctx>,
    pub(crate) http: WasiHttpCtx,
    pub(crate) egress: EgressHooks,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: RunLimiter,
    pub(crate) logs: LogSink,
    pub(crate) gpu: GpuRun,
    pub(crate) guard: Guard,
    pub(crate) quotas: crate::quota::MountQuotas,
    /// A hermetic run's virtual time, which its timers advance (`virtual_time.rs`).
    pub(crate) synthetic: Option<std::sync::Arc<crate::record::SyntheticClock>>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.egress }
    }
}

impl HostState {
    /// What wasmtime-wasi's preview 1 sees. A store is built with one for every preview-1 run;
    /// one built without gets an empty context (no arguments, streams or mounts), never more.
    pub(crate) fn p1_ctx(&mut self) -> &mut WasiP1Ctx {
        self.p1.get_or_insert_with(|| WasiCtxBuilder::new().build_p1())
    }

    /// The filesystem the guest sees: wasmtime-wasi's, behind the mounts' write quotas.
    pub(crate) fn quota_fs(&mut self) -> QuotaFs<'_> {
        QuotaFs {
            fs: WasiFilesystemCtxView { ctx: self.wasi.filesystem(), table: &mut self.table },
            quotas: &mut self.quotas,
        }
    }
}

impl HostState {
    /// What `wasi:clocks/monotonic-clock` sees: the clocks, and virtual time in a hermetic run.
    pub(crate) fn virtual_clock(&mut self) -> crate::virtual_time::VirtualClock<'_> {
        crate::virtual_time::VirtualClock {
            clocks: wasmtime_wasi::clocks::WasiClocksCtxView { ctx: self.wasi.clocks(), table: &mut self.table },
            synthetic: self.synthetic.as_ref(),
        }
    }

    /// What `guild:tool/gpu` sees: the resource table and the GPU part.
    pub(crate) fn gpu_view(&mut self) -> GpuView<'_> {
        GpuView { table: &mut self.table, gpu: &mut self.gpu }
    }
}

impl Guarded for HostState {
    fn guard(&self) -> &Guard {
        &self.guard
    }

    fn guard_mut(&mut self) -> &mut Guard {
        &mut self.guard
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        self.logs.log(level, message).map_err(wasmtime::Error::new)
    }
}

/// Enforces a run's memory, table and instance limits. A refused growth traps with a
/// [`LimitHit`] so the run's outcome names the limit instead of a generic trap.
pub(crate) struct RunLimiter {
    memory_bytes_max: u64,
    memory_bytes_used: u64,
    table_elements_max: u32,
    instances_max: u32,
}

impl RunLimiter {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            memory_bytes_max: limits.memory_bytes_max,
            memory_bytes_used: 0,
            table_elements_max: limits.table_elements_max,
            instances_max: limits.instances_max,
        }
    }

    /// Peak linear memory the run has held, over all its memories.
    pub(crate) fn memory_bytes_used(&self) -> u64 {
        self.memory_bytes_used
    }
}

impl ResourceLimiter for RunLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current) as u64;
        let next = self.memory_bytes_used.saturating_add(growth);
        if next > self.memory_bytes_max {
            return Err(wasmtime::Error::new(LimitHit::Memory { limit_bytes: self.memory_bytes_max }));
        }
        self.memory_bytes_used = next;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // The engine's own ceiling refused the growth: to the tool it is the same limit.
        Err(wasmtime::Error::new(LimitHit::Memory { limit_bytes: self.memory_bytes_max }))
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired as u64 > u64::from(self.table_elements_max) {
            return Err(wasmtime::Error::new(LimitHit::Table { limit_elements: self.table_elements_max }));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.instances_max as usize
    }

    fn tables(&self) -> usize {
        self.instances_max as usize
    }

    fn memories(&self) -> usize {
        self.instances_max as usize
    }
}
