//! The wgpu side: opening the host's one device, compiling a kernel's pipelines the first time
//! it is used, and running a [`Plan`]: upload inputs, record its passes, copy outputs back, wait
//! with a deadline. Faults are caught (error scopes, a device-lost callback, an uncaptured-error
//! handler instead of wgpu's default panic) and reported as [`Fault`]s for the host to act on.

use crate::GpuError;
use crate::catalogue::{Catalogue, Kernel, KernelId};
use crate::plan::{Plan, Slot};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a host's adapter is, for `guild gpu info`, health reports and tapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdapterReport {
    /// The adapter's name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// `vulkan`, `metal`, ...
    pub backend: String,
    /// `cpu`, `discrete-gpu`, ...
    pub device_type: String,
    /// The driver's name.
    pub driver: String,
    /// The driver's version text.
    pub driver_info: String,
    /// Limits that bound what one dispatch can do.
    pub limits: DeviceLimits,
}

impl AdapterReport {
    /// One line naming adapter and driver, as written on tapes.
    pub fn label(&self) -> String {
        format!("{} · {} · {} {}", self.name, self.backend, self.driver, self.driver_info)
    }
}

/// The device limits that matter to Guild's kernels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceLimits {
    /// Largest buffer the device allocates, in bytes.
    pub max_buffer_size: u64,
    /// Largest storage-buffer binding: the largest tensor one dispatch can take.
    pub max_storage_buffer_binding_size: u64,
    /// Workgroups per grid dimension.
    pub max_compute_workgroups_per_dimension: u32,
    /// Threads per workgroup.
    pub max_compute_invocations_per_workgroup: u32,
    /// Bytes of workgroup (shared) memory one workgroup may use; the tiled `matmul` needs it.
    pub max_compute_workgroup_storage_size: u32,
}

/// Why a run on the device failed.
#[derive(Debug)]
pub(crate) enum Fault {
    /// The request itself cannot run here (too large for the device): the guest's to fix.
    Refused(GpuError),
    /// Did not complete in time: the device may be wedged; rebuild it.
    Timeout,
    /// The device is gone or faulted; rebuild it.
    Lost(String),
}

/// An open device and its compiled pipelines.
pub(crate) struct Device {
    device: wgpu::Device,
    queue: wgpu::Queue,
    pipelines: HashMap<(KernelId, &'static str), wgpu::ComputePipeline>,
    report: AdapterReport,
    /// Set by the device-lost callback or the uncaptured-error handler.
    fault: Arc<Mutex<Option<String>>>,
}

/// Open the best adapter's device, or say why there is none.
pub(crate) fn open() -> Result<Device, String> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let options =
        wgpu::RequestAdapterOptions { power_preference: wgpu::PowerPreference::HighPerformance, ..Default::default() };
    let adapter = pollster::block_on(instance.request_adapter(&options)).map_err(|e| e.to_string())?;
    let info = adapter.get_info();
    let required_limits = adapter.limits();
    let descriptor =
        wgpu::DeviceDescriptor { label: Some("guild"), required_limits: required_limits.clone(), ..Default::default() };
    let (device, queue) = pollster::block_on(adapter.request_device(&descriptor)).map_err(|e| e.to_string())?;
    let fault = Arc::new(Mutex::new(None::<String>));
    let on_lost = fault.clone();
    device.set_device_lost_callback(move |reason, message| {
        *on_lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{reason:?}: {message}"));
    });
    let on_error = fault.clone();
    device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
        *on_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
    }));
    let limits = device.limits();
    let report = AdapterReport {
        name: info.name,
        backend: info.backend.to_string(),
        device_type: format!("{:?}", info.device_type).to_lowercase(),
        driver: info.driver,
        driver_info: info.driver_info,
        limits: DeviceLimits {
            max_buffer_size: limits.max_buffer_size,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
        },
    };
    Ok(Device { device, queue, pipelines: HashMap::new(), report, fault })
}

impl Device {
    pub(crate) fn report(&self) -> &AdapterReport {
        &self.report
    }

    /// A fault the driver reported since the last check.
    fn fault(&self) -> Option<String> {
        self.fault.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Compile every kernel's pipelines now (for `guild gpu info` and benchmarks).
    pub(crate) fn warm(&mut self, catalogue: &Catalogue) -> Result<(), Fault> {
        for kernel in catalogue.kernels() {
            for entry in kernel.spec.entries {
                self.pipeline(kernel, entry)?;
            }
        }
        Ok(())
    }

    fn pipeline(&mut self, kernel: &Kernel, entry: &'static str) -> Result<wgpu::ComputePipeline, Fault> {
        if let Some(pipeline) = self.pipelines.get(&(kernel.spec.id, entry)) {
            return Ok(pipeline.clone());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(kernel.spec.name),
            source: wgpu::ShaderSource::Wgsl(kernel.spec.wgsl.into()),
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(Fault::Lost(format!("kernel {} does not compile on this device: {error}", kernel.spec.name)));
        }
        self.pipelines.insert((kernel.spec.id, entry), pipeline.clone());
        Ok(pipeline)
    }

    /// Run `plan` and read its outputs back.
    pub(crate) fn run(
        &mut self,
        kernel: &Kernel,
        plan: &Plan,
        inputs: &[&[u8]],
        output_bytes: &[u64],
        timeout: Duration,
    ) -> Result<Vec<Vec<u8>>, Fault> {
        if let Some(fault) = self.fault() {
            return Err(Fault::Lost(fault));
        }
        let largest = self.report.limits.max_storage_buffer_binding_size;
        for size in inputs.iter().map(|b| b.len() as u64).chain(output_bytes.iter().copied()) {
            if size > largest {
                return Err(Fault::Refused(GpuError::Invalid(format!(
                    "a {size}-byte buffer is larger than this device binds ({largest} bytes); split the work"
                ))));
            }
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let storage = |size: u64, usage: wgpu::BufferUsages| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: size.max(4),
                usage: wgpu::BufferUsages::STORAGE | usage,
                mapped_at_creation: false,
            })
        };
        let uniform_bytes = plan.uniform.to_bytes();
        let uniform = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: uniform_bytes.len() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&uniform, 0, &uniform_bytes);
        let input_buffers: Vec<wgpu::Buffer> = inputs
            .iter()
            .map(|bytes| {
                let buffer = storage(bytes.len() as u64, wgpu::BufferUsages::COPY_DST);
                self.queue.write_buffer(&buffer, 0, bytes);
                buffer
            })
            .collect();
        let outputs: Vec<wgpu::Buffer> =
            output_bytes.iter().map(|&size| storage(size, wgpu::BufferUsages::COPY_SRC)).collect();
        let scratch: Vec<wgpu::Buffer> =
            plan.scratch_bytes.iter().map(|&size| storage(size, wgpu::BufferUsages::empty())).collect();
        let readback: Vec<wgpu::Buffer> = output_bytes
            .iter()
            .map(|&size| {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("readback"),
                    size: size.max(4),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        for stage in &plan.stages {
            let pipeline = self.pipeline(kernel, stage.entry)?;
            let entries: Vec<wgpu::BindGroupEntry<'_>> = stage
                .bindings
                .iter()
                .map(|&(binding, slot)| {
                    let buffer = match slot {
                        Slot::Params => &uniform,
                        Slot::Input(i) => &input_buffers[i],
                        Slot::Output(i) => &outputs[i],
                        Slot::Scratch(i) => &scratch[i],
                    };
                    wgpu::BindGroupEntry { binding, resource: buffer.as_entire_binding() }
                })
                .collect();
            let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
            let mut pass =
                encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(stage.workgroups[0], stage.workgroups[1], 1);
        }
        for ((output, back), &size) in outputs.iter().zip(&readback).zip(output_bytes) {
            encoder.copy_buffer_to_buffer(output, 0, back, 0, size.max(4));
        }
        let submission = self.queue.submit([encoder.finish()]);
        let (sender, receiver) = std::sync::mpsc::channel();
        for (i, back) in readback.iter().enumerate() {
            let sender = sender.clone();
            back.slice(..).map_async(wgpu::MapMode::Read, move |result| {
                let _ = sender.send((i, result.is_ok()));
            });
        }
        let waited =
            self.device.poll(wgpu::PollType::Wait { submission_index: Some(submission), timeout: Some(timeout) });
        match waited {
            Ok(_) => {}
            Err(wgpu::PollError::Timeout) => return Err(Fault::Timeout),
            Err(other) => return Err(Fault::Lost(other.to_string())),
        }
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(Fault::Lost(format!("the device rejected the dispatch: {error}")));
        }
        if let Some(fault) = self.fault() {
            return Err(Fault::Lost(fault));
        }
        drop(sender);
        let mapped: Vec<(usize, bool)> = receiver.try_iter().collect();
        if mapped.len() != readback.len() || mapped.iter().any(|(_, ok)| !ok) {
            return Err(Fault::Lost("reading results back from the device failed".into()));
        }
        readback
            .iter()
            .zip(output_bytes)
            .map(|(back, &size)| {
                let bytes = {
                    let view = back.slice(..).get_mapped_range().map_err(|e| Fault::Lost(e.to_string()))?;
                    let size = usize::try_from(size)
                        .map_err(|_| Fault::Lost(format!("{size} bytes do not fit this machine's memory")))?;
                    view[..size].to_vec()
                };
                back.unmap();
                Ok(bytes)
            })
            .collect()
    }

    /// Destroy the device, as a driver reset would (for tests and operators).
    pub(crate) fn destroy(&self) {
        self.device.destroy();
    }
}
