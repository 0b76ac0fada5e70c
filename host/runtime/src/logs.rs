//! Everything a run says: `guild:tool/log` lines plus the guest's stdout and stderr, split into
//! lines, all charged to one byte budget (`log_bytes_max`). Past the budget the run ends with
//! [`LimitHit::Log`] rather than the host buffering without bound.

use crate::LimitHit;
use crate::record::Recorder;
use bytes::Bytes;
use guild_replay::Effect;
use serde::{Deserialize, Serialize};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal progress.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something failed.
    Error,
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    /// The tool's own `guild:tool/log` calls, at the level it chose.
    Tool,
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr (where a Rust guest's panic message goes).
    Stderr,
}

/// One line a run emitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Severity: the tool's choice for `guild:tool/log`, `info` for stdout, `warn` for stderr.
    pub level: LogLevel,
    /// Whether the line came from `guild:tool/log`, stdout or stderr.
    pub source: LogSource,
    /// The text, without its newline.
    pub message: String,
}

impl LogLevel {
    /// The name used in JSON and on the tape.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl LogSource {
    /// The name used in JSON and on the tape.
    pub fn as_str(self) -> &'static str {
        match self {
            LogSource::Tool => "tool",
            LogSource::Stdout => "stdout",
            LogSource::Stderr => "stderr",
        }
    }
}

impl LogLine {
    /// The tape effect for this line.
    fn effect(&self) -> Effect {
        Effect::Log {
            level: self.level.as_str().to_string(),
            source: self.source.as_str().to_string(),
            message: self.message.clone(),
        }
    }
}

/// The shared, bounded log of one run.
#[derive(Clone)]
pub(crate) struct LogSink(Arc<Mutex<LogBuffer>>);

struct LogBuffer {
    recorder: Option<Recorder>,
    lines: Vec<LogLine>,
    bytes_used: u64,
    bytes_max: u64,
    /// Bytes of stdout and stderr after their last newline.
    partial_stdout: Vec<u8>,
    partial_stderr: Vec<u8>,
}

impl LogSink {
    pub(crate) fn new(bytes_max: u64, recorder: Option<Recorder>) -> Self {
        Self(Arc::new(Mutex::new(LogBuffer {
            recorder,
            lines: Vec::new(),
            bytes_used: 0,
            bytes_max,
            partial_stdout: Vec::new(),
            partial_stderr: Vec::new(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, LogBuffer> {
        // A panic while holding the lock cannot leave the buffer inconsistent in a way that
        // matters for a log; keep going.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Record a `guild:tool/log` line.
    pub(crate) fn log(&self, level: LogLevel, message: String) -> Result<(), LimitHit> {
        let mut buffer = self.lock();
        buffer.charge(message.len())?;
        buffer.push(LogLine { level, source: LogSource::Tool, message });
        Ok(())
    }

    /// Record bytes the guest wrote to stdout or stderr.
    fn write_stdio(&self, source: LogSource, bytes: &[u8]) -> Result<(), LimitHit> {
        let mut buffer = self.lock();
        buffer.charge(bytes.len())?;
        let partial = buffer.partial(source);
        partial.extend_from_slice(bytes);
        let mut complete = Vec::new();
        while let Some(newline) = partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = partial.drain(..=newline).collect();
            complete.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
        }
        for message in complete {
            buffer.push(LogLine { level: stdio_level(source), source, message });
        }
        Ok(())
    }

    /// The lines so far, with any unterminated stdout/stderr text as final lines.
    pub(crate) fn finish(&self) -> Vec<LogLine> {
        let mut buffer = self.lock();
        for source in [LogSource::Stdout, LogSource::Stderr] {
            let partial = std::mem::take(buffer.partial(source));
            if !partial.is_empty() {
                let message = String::from_utf8_lossy(&partial).into_owned();
                buffer.push(LogLine { level: stdio_level(source), source, message });
            }
        }
        std::mem::take(&mut buffer.lines)
    }

    /// A stream for the guest's stdout or stderr that writes into this sink.
    pub(crate) fn stdio(&self, source: LogSource) -> GuestStdio {
        GuestStdio { sink: self.clone(), source }
    }
}

impl LogBuffer {
    /// The unterminated text of stdout or stderr.
    fn partial(&mut self, source: LogSource) -> &mut Vec<u8> {
        match source {
            LogSource::Stderr => &mut self.partial_stderr,
            _ => &mut self.partial_stdout,
        }
    }

    fn push(&mut self, line: LogLine) {
        if let Some(recorder) = &self.recorder {
            recorder.record(line.effect());
        }
        self.lines.push(line);
    }

    fn charge(&mut self, len: usize) -> Result<(), LimitHit> {
        let next = self.bytes_used.saturating_add(len as u64);
        if next > self.bytes_max {
            return Err(LimitHit::Log { limit_bytes: self.bytes_max });
        }
        self.bytes_used = next;
        Ok(())
    }
}

fn stdio_level(source: LogSource) -> LogLevel {
    match source {
        LogSource::Stderr => LogLevel::Warn,
        _ => LogLevel::Info,
    }
}

/// The guest's stdout or stderr.
#[derive(Clone)]
pub(crate) struct GuestStdio {
    sink: LogSink,
    source: LogSource,
}

impl IsTerminal for GuestStdio {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStdio {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for GuestStdio {
    async fn ready(&mut self) {}
}

#[async_trait::async_trait]
impl OutputStream for GuestStdio {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.sink.write_stdio(self.source, &bytes).map_err(|hit| StreamError::Trap(wasmtime::Error::new(hit)))
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Writes are charged when they happen; a guest may always try.
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for GuestStdio {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = self.sink.write_stdio(self.source, buf).map(|()| buf.len());
        Poll::Ready(result.map_err(std::io::Error::other))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_is_split_into_lines_and_partials_kept() {
        let sink = LogSink::new(1024, None);
        sink.write_stdio(LogSource::Stdout, b"one\ntw").expect("within budget");
        sink.write_stdio(LogSource::Stdout, b"o\nthree").expect("within budget");
        sink.log(LogLevel::Info, "from tool".into()).expect("within budget");
        let lines: Vec<String> = sink.finish().into_iter().map(|l| l.message).collect();
        assert_eq!(lines, ["one", "two", "from tool", "three"]);
    }

    #[test]
    fn budget_is_shared_and_enforced() {
        let sink = LogSink::new(10, None);
        sink.log(LogLevel::Info, "12345".into()).expect("within budget");
        sink.write_stdio(LogSource::Stderr, b"1234\n").expect("exactly at budget");
        let hit = sink.log(LogLevel::Info, "x".into()).expect_err("over budget");
        assert_eq!(hit, LimitHit::Log { limit_bytes: 10 });
    }
}
