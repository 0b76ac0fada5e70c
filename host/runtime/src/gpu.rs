//! The host side of `guild:tool/gpu`: buffers as resources charged to the run's quota, and
//! dispatches handed to the host's shared [`GpuHost`], each recorded on the tape with its
//! outputs as bundle blobs. In a replay, dispatches are answered from the tape without touching
//! a device; with `--recompute-gpu` they are also re-run here and compared with the recording.

use crate::LimitHit;
use crate::bindings::guild::tool::gpu as wit;
use crate::gpu_buffer::GpuBuffer;
use crate::record::{Lane, Recorder};
use guild_gpu::{DType, DispatchRequest, GpuError, GpuHost, JobQuota, Scalar, TensorMeta, reference};
use guild_replay::{Digest, Effect, TensorRecord};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::component::{HasData, Resource, ResourceTable};

/// One dispatch re-run during a replay with `--recompute-gpu`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuCheck {
    /// The recomputed dispatch's kernel, by its catalogue name (`matmul`).
    pub kernel: String,
    /// Where the original ran.
    pub recorded_on: String,
    /// Where it was recomputed.
    pub recomputed_on: String,
    /// Whether bits were compared (deterministic kernels) or the kernel's tolerance.
    pub exact: bool,
    /// How the results differ, when they do beyond what the kernel allows.
    pub mismatch: Option<String>,
}

/// What a replay answers dispatches with.
#[derive(Clone)]
pub(crate) struct GpuReplay {
    /// The recorded outputs, by digest.
    pub(crate) outputs: Arc<HashMap<Digest, Vec<u8>>>,
    /// Also re-run each dispatch and compare.
    pub(crate) recompute: bool,
    /// The comparisons made.
    pub(crate) checks: Arc<Mutex<Vec<GpuCheck>>>,
}

/// One run's GPU state.
pub(crate) struct GpuRun {
    host: Arc<GpuHost>,
    tool: String,
    declared: bool,
    quota: JobQuota,
    timeout: Duration,
    recorder: Option<Recorder>,
    replay: Option<GpuReplay>,
    /// Time live dispatches took: on a device, and on the CPU reference.
    time: GpuTime,
}

/// Time a run's live GPU dispatches took, µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GpuTime {
    /// On a device.
    pub(crate) device_us: u64,
    /// On the CPU reference.
    pub(crate) cpu_us: u64,
}

/// How a failed dispatch ends: an error the guest handles, or the end of the run.
enum Ending {
    Guest(GpuError),
    Job(wasmtime::Error),
}

impl GpuRun {
    pub(crate) fn new(
        host: Arc<GpuHost>,
        tool: &str,
        declared: bool,
        limits: &crate::Limits,
        recorder: Option<Recorder>,
        replay: Option<GpuReplay>,
    ) -> Self {
        Self {
            host,
            tool: tool.to_string(),
            declared,
            quota: JobQuota::new(guild_gpu::GpuLimits::from(limits)),
            timeout: Duration::from_millis(limits.gpu_dispatch_timeout_ms),
            recorder,
            replay,
            time: GpuTime::default(),
        }
    }

    /// Time its live dispatches took so far.
    pub(crate) fn time(&self) -> GpuTime {
        self.time
    }

    fn allowed(&self) -> Result<(), GpuError> {
        if self.declared {
            return Ok(());
        }
        Err(GpuError::Unavailable(format!(
            "tool {} does not declare gpu in its capabilities (Info::gpu() in the SDK)",
            self.tool
        )))
    }

    fn run(
        &mut self,
        kernel: &str,
        inputs: &[&GpuBuffer],
        outputs: &[TensorMeta],
        params: &[Scalar],
        span: &tracing::Span,
    ) -> Result<Vec<Vec<u8>>, Ending> {
        let in_metas: Vec<&TensorMeta> = inputs.iter().map(|b| &b.meta).collect();
        let out_metas: Vec<&TensorMeta> = outputs.iter().collect();
        let (spec, hash) = {
            let (k, _) = self.host.check(kernel, &in_metas, &out_metas, params).map_err(Ending::Guest)?;
            (k.spec, k.hash)
        };
        self.quota.dispatch().map_err(|e| Ending::Job(limit(&e)))?;
        let record = |digests: Option<&[Vec<u8>]>, device: String, error: Option<String>| Effect::GpuDispatch {
            kernel: spec.name.to_string(),
            version: spec.version,
            wgsl: hash,
            inputs: inputs.iter().map(|b| tensor_record(&b.meta, Some(&b.data))).collect(),
            params: params.iter().map(Scalar::record).collect(),
            outputs: outputs
                .iter()
                .enumerate()
                .map(|(i, m)| tensor_record(m, digests.map(|d| d[i].as_slice())))
                .collect(),
            device,
            error,
        };
        let request = DispatchRequest {
            kernel,
            inputs: inputs.iter().map(|b| (&b.meta, b.data.as_slice())).collect(),
            outputs: out_metas.clone(),
            params,
            timeout: self.timeout,
        };
        if let Some(replay) = self.replay.clone() {
            span.record("guild.gpu.executor", "tape");
            let asked = record(None, String::new(), None);
            return self.answer_from_tape(asked, &replay, &request);
        }
        let started = std::time::Instant::now();
        let dispatched = self.host.dispatch(&request);
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let (effect, result) = match dispatched {
            Ok(done) => {
                span.record("guild.gpu.executor", done.executor.as_str());
                let spent = if done.executor == guild_gpu::CPU_REFERENCE {
                    &mut self.time.cpu_us
                } else {
                    &mut self.time.device_us
                };
                *spent = spent.saturating_add(took);
                if let Some(recorder) = &self.recorder {
                    for output in &done.outputs {
                        // Past recording_bytes_max the guest is stopped as this call returns.
                        if recorder.attach_blob(output).is_none() {
                            break;
                        }
                    }
                }
                (record(Some(&done.outputs), done.executor, None), Ok(done.outputs))
            }
            Err(error) => {
                let (text, ending) = environment_error(error);
                (record(None, String::new(), Some(text)), Err(ending))
            }
        };
        if let Some(recorder) = &self.recorder {
            recorder.record(effect);
        }
        result
    }

    /// Answer from the tape; record what this replay asked, so a different request diverges.
    fn answer_from_tape(
        &self,
        asked: Effect,
        replay: &GpuReplay,
        request: &DispatchRequest<'_>,
    ) -> Result<Vec<Vec<u8>>, Ending> {
        let recorder = self.recorder.as_ref();
        let same = |expected: &Effect| match (expected, &asked) {
            (Effect::GpuDispatch { outputs: e_out, .. }, Effect::GpuDispatch { outputs: a_out, .. }) => {
                same_request(Some(expected), &asked) && shapes(e_out) == shapes(a_out)
            }
            _ => false,
        };
        // A replay is answered by the next event; a candidate revision by the first recorded
        // dispatch not yet used that asked the same, wherever it is.
        let expected = match recorder {
            Some(recorder) if recorder.is_candidate() => recorder.take_matching(Lane::Gpu, same),
            _ => recorder.and_then(Recorder::expected_next).filter(same),
        };
        let Some(Effect::GpuDispatch { outputs, device, error, .. }) = expected else {
            let text = "unavailable: replay: the original run dispatched something else here".to_string();
            if let (Some(recorder), Effect::GpuDispatch { .. }) = (recorder, &asked) {
                recorder.note_new_effect(asked.clone());
                recorder.record(with_error(asked, text.clone()));
            }
            return Err(environment_error(GpuError::Unavailable(text)).1);
        };
        if let Some(recorder) = recorder {
            recorder.record(with_outcome(asked, &outputs, &device, &error));
        }
        if let Some(text) = error {
            return Err(recorded_error(&text));
        }
        let mut found = Vec::new();
        for (record, meta) in outputs.iter().zip(&request.outputs) {
            let bytes = record
                .digest
                .and_then(|d| replay.outputs.get(&d))
                .ok_or_else(|| Ending::Job(wasmtime::Error::msg("replay: the bundle lacks a recorded gpu output")))?;
            if meta.size_bytes().ok() != Some(bytes.len() as u64) {
                return Err(Ending::Job(wasmtime::Error::msg("replay: a recorded gpu output has the wrong size")));
            }
            found.push(bytes.clone());
        }
        if replay.recompute {
            replay.checks.lock().unwrap_or_else(|p| p.into_inner()).push(self.recompute(request, &found, &device));
        }
        Ok(found)
    }

    fn recompute(&self, request: &DispatchRequest<'_>, recorded: &[Vec<u8>], recorded_on: &str) -> GpuCheck {
        let mut check = GpuCheck {
            kernel: request.kernel.to_string(),
            recorded_on: recorded_on.to_string(),
            recomputed_on: String::new(),
            exact: false,
            mismatch: None,
        };
        let kernel = match self.host.catalogue().get(request.kernel) {
            Ok(kernel) => kernel,
            Err(e) => {
                check.mismatch = Some(e.to_string());
                return check;
            }
        };
        check.exact = kernel.spec.deterministic;
        match self.host.dispatch(request) {
            Ok(done) => {
                check.recomputed_on = done.executor;
                check.mismatch =
                    reference::compare(kernel, &request.outputs, recorded, &done.outputs, check.exact).err();
            }
            Err(e) => check.mismatch = Some(format!("could not recompute: {e}")),
        }
        check
    }
}

fn shapes(records: &[TensorRecord]) -> Vec<(&str, &[u32])> {
    records.iter().map(|r| (r.dtype.as_str(), r.shape.as_slice())).collect()
}

/// Same kernel, source, inputs and parameters.
fn same_request(expected: Option<&Effect>, asked: &Effect) -> bool {
    match (expected, asked) {
        (
            Some(Effect::GpuDispatch { kernel: k1, version: v1, wgsl: w1, inputs: i1, params: p1, .. }),
            Effect::GpuDispatch { kernel: k2, version: v2, wgsl: w2, inputs: i2, params: p2, .. },
        ) => k1 == k2 && v1 == v2 && w1 == w2 && i1 == i2 && p1 == p2,
        _ => false,
    }
}

fn with_error(effect: Effect, text: String) -> Effect {
    match effect {
        Effect::GpuDispatch { kernel, version, wgsl, inputs, params, outputs, .. } => Effect::GpuDispatch {
            kernel,
            version,
            wgsl,
            inputs,
            params,
            outputs,
            device: String::new(),
            error: Some(text),
        },
        other => other,
    }
}

fn with_outcome(effect: Effect, recorded: &[TensorRecord], device: &str, error: &Option<String>) -> Effect {
    match effect {
        Effect::GpuDispatch { kernel, version, wgsl, inputs, params, .. } => Effect::GpuDispatch {
            kernel,
            version,
            wgsl,
            inputs,
            params,
            outputs: recorded.to_vec(),
            device: device.to_string(),
            error: error.clone(),
        },
        other => other,
    }
}

fn tensor_record(meta: &TensorMeta, data: Option<&[u8]>) -> TensorRecord {
    TensorRecord { dtype: meta.dtype.name().to_string(), shape: meta.shape.clone(), digest: data.map(Digest::of) }
}

fn limit(error: &GpuError) -> wasmtime::Error {
    wasmtime::Error::new(LimitHit::Gpu { message: error.to_string() })
}

/// How an error from the device side is written on the tape, and how it ends the call.
fn environment_error(error: GpuError) -> (String, Ending) {
    let text = match &error {
        GpuError::Busy { .. } | GpuError::Deadline { .. } | GpuError::Quota { .. } => format!("limit: {error}"),
        GpuError::DeviceLost { .. } => format!("lost: {error}"),
        GpuError::Unavailable(message) => format!("unavailable: {message}"),
        other => format!("unavailable: {other}"),
    };
    let ending = recorded_error(&text);
    (text, ending)
}

/// The ending a recorded error text stands for.
fn recorded_error(text: &str) -> Ending {
    let (kind, message) = text.split_once(": ").unwrap_or(("unavailable", text));
    match kind {
        "limit" => Ending::Job(wasmtime::Error::new(LimitHit::Gpu { message: message.to_string() })),
        "lost" => Ending::Job(wasmtime::Error::msg(message.to_string())),
        _ => Ending::Guest(GpuError::Unavailable(message.to_string())),
    }
}

fn to_wit(error: GpuError) -> wit::GpuError {
    match error {
        GpuError::UnknownKernel { .. } => wit::GpuError::UnknownKernel(error.to_string()),
        GpuError::Shape { .. } => wit::GpuError::Shape(error.to_string()),
        GpuError::DType { .. } => wit::GpuError::Dtype(error.to_string()),
        GpuError::Unavailable(message) => wit::GpuError::Unavailable(message),
        other => wit::GpuError::Invalid(other.to_string()),
    }
}

fn dtype(d: wit::Dtype) -> DType {
    match d {
        wit::Dtype::F32 => DType::F32,
        wit::Dtype::U32 => DType::U32,
        wit::Dtype::I32 => DType::I32,
    }
}

fn scalar(s: wit::Scalar) -> Scalar {
    match s {
        wit::Scalar::F32(v) => Scalar::F32(v),
        wit::Scalar::U32(v) => Scalar::U32(v),
        wit::Scalar::I32(v) => Scalar::I32(v),
    }
}

/// What `guild:tool/gpu` sees of a run's state: its resource table (where buffers live) and its
/// GPU part. The linker hands it out through [`GpuData`].
pub(crate) struct GpuView<'a> {
    pub(crate) table: &'a mut ResourceTable,
    pub(crate) gpu: &'a mut GpuRun,
}

/// The `HasData` marker the linker uses for [`GpuView`].
pub(crate) struct GpuData;

impl HasData for GpuData {
    type Data<'a> = GpuView<'a>;
}

impl wit::HostBuffer for GpuView<'_> {
    fn create(
        &mut self,
        element_type: wit::Dtype,
        shape: Vec<u32>,
    ) -> wasmtime::Result<Result<Resource<GpuBuffer>, wit::GpuError>> {
        if let Err(e) = self.gpu.allowed() {
            return Ok(Err(wit::GpuError::Denied(e.to_string())));
        }
        let meta = TensorMeta { dtype: dtype(element_type), shape };
        let bytes = match meta.size_bytes() {
            Ok(bytes) => bytes,
            Err(e) => return Ok(Err(to_wit(e))),
        };
        self.gpu.quota.allocate(bytes).map_err(|e| limit(&e))?;
        let data = vec![0u8; usize::try_from(bytes).map_err(wasmtime::Error::msg)?];
        Ok(Ok(self.table.push(GpuBuffer { meta, data })?))
    }

    fn element_type(&mut self, buffer: Resource<GpuBuffer>) -> wasmtime::Result<wit::Dtype> {
        Ok(match self.table.get(&buffer)?.meta.dtype {
            DType::F32 => wit::Dtype::F32,
            DType::U32 => wit::Dtype::U32,
            DType::I32 => wit::Dtype::I32,
        })
    }

    fn shape(&mut self, buffer: Resource<GpuBuffer>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&buffer)?.meta.shape.clone())
    }

    fn write(&mut self, buffer: Resource<GpuBuffer>, bytes: Vec<u8>) -> wasmtime::Result<Result<(), wit::GpuError>> {
        let target = self.table.get_mut(&buffer)?;
        if bytes.len() != target.data.len() {
            return Ok(Err(wit::GpuError::Invalid(format!(
                "gpu: a {} buffer takes {} bytes, got {}",
                target.meta,
                target.data.len(),
                bytes.len()
            ))));
        }
        target.data = bytes;
        Ok(Ok(()))
    }

    fn read(&mut self, buffer: Resource<GpuBuffer>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&buffer)?.data.clone())
    }

    fn drop(&mut self, buffer: Resource<GpuBuffer>) -> wasmtime::Result<()> {
        let gone = self.table.delete(buffer)?;
        self.gpu.quota.release(gone.data.len() as u64);
        Ok(())
    }
}

/// Tensors whose shapes a GPU dispatch's span lists, at most (inputs and outputs each).
const SHAPES_SHOWN: usize = 8;

impl wit::Host for GpuView<'_> {
    fn list_kernels(&mut self) -> wasmtime::Result<Vec<wit::KernelInfo>> {
        Ok(self
            .gpu
            .host
            .catalogue()
            .kernels()
            .iter()
            .map(|k| wit::KernelInfo {
                name: k.spec.name.to_string(),
                version: k.spec.version,
                hash: k.hash.to_hex(),
                deterministic: k.spec.deterministic,
                inputs: k.spec.inputs.iter().map(|s| s.to_string()).collect(),
                outputs: k.spec.outputs.iter().map(|s| s.to_string()).collect(),
                params: k.spec.params.iter().map(|s| s.to_string()).collect(),
                description: k.spec.description.to_string(),
            })
            .collect())
    }

    fn dispatch(
        &mut self,
        kernel: String,
        inputs: Vec<Resource<GpuBuffer>>,
        outputs: Vec<Resource<GpuBuffer>>,
        params: Vec<wit::Scalar>,
    ) -> wasmtime::Result<Result<(), wit::GpuError>> {
        if let Err(e) = self.gpu.allowed() {
            return Ok(Err(wit::GpuError::Denied(e.to_string())));
        }
        let params: Vec<Scalar> = params.into_iter().map(scalar).collect();
        let out_metas =
            outputs.iter().map(|o| Ok(self.table.get(o)?.meta.clone())).collect::<wasmtime::Result<Vec<_>>>()?;
        let GpuView { table, gpu } = self;
        let buffers = inputs.iter().map(|i| table.get(i)).collect::<Result<Vec<_>, _>>()?;
        // A dispatch waits on the device (or computes the CPU reference) for up to its timeout:
        // off the async workers, so a daemon keeps answering meanwhile.
        let span = guild_telemetry::span!(
            "gpu dispatch",
            otel.name = %format_args!("gpu dispatch {}", guild_telemetry::clip(&kernel)),
            guild.gpu.kernel = guild_telemetry::clip(&kernel),
            guild.gpu.input_shapes = ?buffers.iter().take(SHAPES_SHOWN).map(|b| &b.meta.shape).collect::<Vec<_>>(),
            guild.gpu.output_shapes = ?out_metas.iter().take(SHAPES_SHOWN).map(|m| &m.shape).collect::<Vec<_>>(),
            guild.gpu.executor = tracing::field::Empty,
            error.r#type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let ran =
            crate::blocking::off_the_async_workers(true, || gpu.run(&kernel, &buffers, &out_metas, &params, &span));
        if ran.is_err() {
            span.record("error.type", "gpu_error");
            span.record("otel.status_code", "ERROR");
        }
        let results = match ran {
            Ok(results) => results,
            Err(Ending::Guest(e)) => return Ok(Err(to_wit(e))),
            Err(Ending::Job(e)) => return Err(e),
        };
        for (output, bytes) in outputs.iter().zip(results) {
            self.table.get_mut(output)?.data = bytes;
        }
        Ok(Ok(()))
    }
}
