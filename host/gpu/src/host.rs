//! [`GpuHost`]: the one GPU service of a host, shared by all its runs. It owns the kernel
//! catalogue, the device (opened on first use, rebuilt after a loss or a wedged dispatch), a
//! bounded count of dispatches waiting for it, and the choice of what to do without an adapter.

use crate::catalogue::{Catalogue, Kernel};
use crate::device::{self, AdapterReport, Device, Fault};
use crate::plan::{Plan, plan};
use crate::tensor::{Scalar, TensorMeta};
use crate::{GpuError, reference};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Default for [`GpuConfig::queue_depth_max`].
pub const GPU_QUEUE_DEPTH_MAX_DEFAULT: usize = 64;
/// What tapes name as the executor when the CPU reference ran a dispatch.
pub const CPU_REFERENCE: &str = "cpu-reference";

/// What a host does with GPU work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuMode {
    /// Use the adapter; without one, run the CPU reference.
    #[default]
    Auto,
    /// Use the adapter; without one, refuse.
    Device,
    /// Always run the CPU reference (never open a device).
    Cpu,
    /// Refuse all GPU work (never open a device).
    Off,
}

impl std::str::FromStr for GpuMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(GpuMode::Auto),
            "device" => Ok(GpuMode::Device),
            "cpu" => Ok(GpuMode::Cpu),
            "off" => Ok(GpuMode::Off),
            other => Err(format!("unknown gpu mode {other:?}; use auto, device, cpu or off")),
        }
    }
}

/// How the GPU service is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuConfig {
    /// What to do with GPU work (`--gpu`, `GUILD_GPU`).
    pub mode: GpuMode,
    /// Dispatches that may wait for the shared device at once; more are refused as busy.
    pub queue_depth_max: usize,
}

impl Default for GpuConfig {
    fn default() -> Self {
        Self { mode: GpuMode::Auto, queue_depth_max: GPU_QUEUE_DEPTH_MAX_DEFAULT }
    }
}

/// One dispatch, as the host receives it.
#[derive(Debug)]
pub struct DispatchRequest<'a> {
    /// The kernel's name.
    pub kernel: &'a str,
    /// Input buffers and their bytes.
    pub inputs: Vec<(&'a TensorMeta, &'a [u8])>,
    /// The output buffers' types and shapes, in the kernel's order; their bytes come back in
    /// [`Dispatched::outputs`].
    pub outputs: Vec<&'a TensorMeta>,
    /// The kernel's scalar parameters, in its declared order (`scale`'s factor, ...).
    pub params: &'a [Scalar],
    /// How long the dispatch may take, waiting for the device included.
    pub timeout: Duration,
}

/// What a dispatch produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatched {
    /// Each output's bytes.
    pub outputs: Vec<Vec<u8>>,
    /// Who computed them: the adapter's label, or [`CPU_REFERENCE`].
    pub executor: String,
}

/// What `guild gpu info` shows.
#[derive(Debug, Clone, Serialize)]
pub struct GpuInfo {
    /// The configured mode.
    pub mode: GpuMode,
    /// The adapter, when one was opened.
    pub adapter: Option<AdapterReport>,
    /// Why there is none, when there is none.
    pub no_adapter: Option<String>,
    /// The catalogue's version ([`CATALOGUE_VERSION`](crate::CATALOGUE_VERSION)).
    pub catalogue_version: u32,
    /// Every kernel of the catalogue: its declaration and the blake3 of its WGSL.
    pub kernels: Vec<Kernel>,
}

enum Slot {
    Unopened,
    Open(Box<Device>),
    Absent(String),
}

/// The host's GPU service. Share it behind an `Arc`.
pub struct GpuHost {
    catalogue: Catalogue,
    config: GpuConfig,
    device: parking_lot::Mutex<Slot>,
    waiting: AtomicUsize,
}

/// Decrements the waiting count however a dispatch ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl GpuHost {
    /// A host over the catalogue. No device is opened, and no kernel parsed, until the first
    /// dispatch needs one.
    ///
    /// # Errors
    /// None today (the catalogue is validated by the test suite, see [`Catalogue::validate`]);
    /// kept fallible for settings that may need checking.
    pub fn new(config: GpuConfig) -> Result<Self, GpuError> {
        Ok(Self {
            catalogue: Catalogue::load(),
            config,
            device: parking_lot::Mutex::new(Slot::Unopened),
            waiting: AtomicUsize::new(0),
        })
    }

    /// The kernel catalogue: what guests may dispatch.
    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// The mode (auto, device, cpu, off) and wait-queue bound this host was made with.
    pub fn config(&self) -> GpuConfig {
        self.config
    }

    /// Check a dispatch against its kernel without running it (replay does only this).
    ///
    /// # Errors
    /// [`GpuError::UnknownKernel`] when the catalogue has no `kernel`; otherwise as
    /// [`plan`](crate::plan::plan).
    pub fn check(
        &self,
        kernel: &str,
        inputs: &[&TensorMeta],
        outputs: &[&TensorMeta],
        params: &[Scalar],
    ) -> Result<(&Kernel, Plan), GpuError> {
        let kernel = self.catalogue.get(kernel)?;
        let plan = plan(kernel, inputs, outputs, params)?;
        Ok((kernel, plan))
    }

    /// Open the device (unless the mode never uses one), compile every pipeline, and report.
    pub fn info(&self) -> GpuInfo {
        let mut info = GpuInfo {
            mode: self.config.mode,
            adapter: None,
            no_adapter: None,
            catalogue_version: crate::CATALOGUE_VERSION,
            kernels: self.catalogue.kernels().to_vec(),
        };
        if matches!(self.config.mode, GpuMode::Cpu | GpuMode::Off) {
            info.no_adapter = Some(format!("not opened: the gpu mode is {:?}", self.config.mode).to_lowercase());
            return info;
        }
        let mut slot = self.device.lock();
        match ensure_open(&mut slot) {
            Ok(device) => match device.warm(&self.catalogue) {
                Ok(()) => info.adapter = Some(device.report().clone()),
                Err(fault) => info.no_adapter = Some(format!("the device failed compiling the catalogue: {fault:?}")),
            },
            Err(reason) => info.no_adapter = Some(reason),
        }
        info
    }

    /// Run a dispatch on the device, or on the CPU reference where the configuration says so.
    ///
    /// # Errors
    /// As [`GpuHost::check`], and [`GpuError::Invalid`] when an input's bytes are not its shape's
    /// size or a buffer is larger than the device binds; [`GpuError::Unavailable`] when the mode is
    /// `off`, or `device` finds no adapter; [`GpuError::Busy`] when `queue_depth_max` dispatches
    /// already wait; [`GpuError::Deadline`] when the device is not free within `timeout`, or the
    /// run then takes longer than `timeout`; [`GpuError::DeviceLost`] when the device fails. After
    /// a run's timeout or a loss the device is rebuilt for the next dispatch.
    pub fn dispatch(&self, request: &DispatchRequest<'_>) -> Result<Dispatched, GpuError> {
        let metas: Vec<&TensorMeta> = request.inputs.iter().map(|(m, _)| *m).collect();
        let (kernel, plan) = self.check(request.kernel, &metas, &request.outputs, request.params)?;
        for (i, (meta, bytes)) in request.inputs.iter().enumerate() {
            if meta.size_bytes()? != bytes.len() as u64 {
                return Err(GpuError::Invalid(format!("input {i} is {meta} but holds {} bytes", bytes.len())));
            }
        }
        let data: Vec<&[u8]> = request.inputs.iter().map(|(_, b)| *b).collect();
        let cpu = || Dispatched { outputs: reference::run(&plan, &data), executor: CPU_REFERENCE.to_string() };
        match self.config.mode {
            GpuMode::Off => {
                return Err(GpuError::Unavailable(
                    "GPU work is off on this host (--gpu off / GUILD_GPU=off); an operator can enable it with --gpu auto"
                        .into(),
                ));
            }
            GpuMode::Cpu => return Ok(cpu()),
            GpuMode::Auto | GpuMode::Device => {}
        }
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        if queued >= self.config.queue_depth_max {
            return Err(GpuError::Busy { queued });
        }
        let deadline = || GpuError::Deadline {
            kernel: request.kernel.to_string(),
            limit_ms: u64::try_from(request.timeout.as_millis()).unwrap_or(u64::MAX),
        };
        // One deadline for the whole dispatch: the wait for the device, opening it, and the run.
        let started = std::time::Instant::now();
        let mut slot = self.device.try_lock_for(request.timeout).ok_or_else(deadline)?;
        let device = match ensure_open(&mut slot) {
            Ok(device) => device,
            Err(_) if self.config.mode == GpuMode::Auto => {
                drop(slot);
                return Ok(cpu());
            }
            Err(reason) => {
                return Err(GpuError::Unavailable(format!(
                    "no GPU adapter on this host ({reason}) and --gpu device refuses the CPU reference; \
                     use --gpu auto or --gpu cpu to run it there"
                )));
            }
        };
        let sizes: Vec<u64> = request.outputs.iter().map(|m| m.size_bytes()).collect::<Result<_, _>>()?;
        let left = request.timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(deadline());
        }
        match device.run(kernel, &plan, &data, &sizes, left) {
            Ok(outputs) => Ok(Dispatched { outputs, executor: device.report().label() }),
            Err(Fault::Refused(error)) => Err(error),
            Err(Fault::Timeout) => {
                *slot = Slot::Unopened;
                Err(deadline())
            }
            Err(Fault::Lost(reason)) => {
                *slot = Slot::Unopened;
                Err(GpuError::DeviceLost { kernel: request.kernel.to_string(), reason })
            }
        }
    }

    /// Destroy the open device, as a driver reset would; the next dispatch finds it lost and
    /// the one after gets a rebuilt device. For tests and operators' drills.
    pub fn destroy_device(&self) {
        if let Slot::Open(device) = &*self.device.lock() {
            device.destroy();
        }
    }
}

fn ensure_open(slot: &mut Slot) -> Result<&mut Device, String> {
    if let Slot::Unopened = slot {
        *slot = match device::open() {
            Ok(device) => Slot::Open(Box::new(device)),
            Err(reason) => Slot::Absent(format!("no GPU adapter: {reason}")),
        };
    }
    match slot {
        Slot::Open(device) => Ok(device),
        Slot::Absent(reason) => Err(reason.clone()),
        Slot::Unopened => Err("the device could not be opened".into()),
    }
}
