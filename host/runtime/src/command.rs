//! WASI commands as tools: a component of the `wasi:cli/command` world (exporting `wasi:cli/run`)
//! takes `{"args", "stdin", "env"}` as its input and answers `{"exit_code", "stdout", "stderr"}`.
//! This module owns that contract: the input's parsing and the operator's checks on it
//! ([`CommandConfig`]), the bounded captures of stdout and stderr, and the output document.
//! Everything else (limits, mounts, egress, recording, replay) is the same pipeline as a
//! `guild-tool` component's.

use crate::LimitHit;
use crate::logs::{LogLevel, LogLine, LogSource};
use base64::Engine as _;
use bytes::Bytes;
use guild_vocab::{Capabilities, DirRequest, Grants, ToolInfo};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// What an operator says about a command: the name clients call it by, a description, the
/// environment variables a caller may set, and arguments put before the caller's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandConfig {
    /// The tool's name (bundles, the audit log and the API name it by); empty: `command`.
    pub name: String,
    /// Description for people and agents; empty: a generic one.
    pub description: String,
    /// Environment variables a caller may set (`None`: any, as `guild run --env` and replay do).
    pub env_allowed: Option<Vec<String>>,
    /// Arguments every run gets after `argv[0]` and before the caller's `args`.
    pub args_prefix: Vec<String>,
}

/// The name a command gets when nothing names it.
pub const COMMAND_NAME_DEFAULT: &str = "command";

/// A command's input: `{"args": [...], "stdin": "...", "stdin_encoding": "base64", "env": {...}}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommandInput {
    /// Arguments after `argv[0]` (the tool's name).
    #[serde(default)]
    pub(crate) args: Vec<String>,
    /// Bytes on stdin; absent: stdin is at its end from the start.
    #[serde(default)]
    pub(crate) stdin: Option<String>,
    /// `utf-8` (the default) or `base64` for binary stdin.
    #[serde(default)]
    pub(crate) stdin_encoding: Option<String>,
    /// Environment variables, each one the operator allows.
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
}

/// The parts of a command's store that its input fills: argv, environment, stdin, and where
/// stdout and stderr go.
pub(crate) struct CommandIo {
    pub(crate) argv: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) stdin: Option<Bytes>,
    pub(crate) stdout: Capture,
    pub(crate) stderr: Capture,
}

/// Why a command's input was refused before it ran.
pub(crate) enum InputRefused {
    /// Not the command input shape.
    Invalid(String),
    /// An environment variable the operator does not allow.
    Denied(String),
}

impl CommandInput {
    /// Parse `input` and check it against `config`.
    pub(crate) fn parse(input: &str, config: &CommandConfig) -> Result<Self, InputRefused> {
        let parsed: Self = serde_json::from_str(input).map_err(|e| {
            InputRefused::Invalid(format!(
                "a command's input is {{\"args\": [strings], \"stdin\": string, \"stdin_encoding\": \"utf-8\"|\"base64\", \"env\": {{name: value}}}}: {e}"
            ))
        })?;
        let forbidden = config
            .env_allowed
            .as_ref()
            .and_then(|allowed| parsed.env.keys().find(|name| !allowed.contains(name)).map(|name| (name, allowed)));
        if let Some((name, allowed)) = forbidden {
            let allowed = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
            return Err(InputRefused::Denied(format!(
                "environment variable {name} is not allowed for this command (allowed: {allowed}); the operator lists them in the tool's `env`"
            )));
        }
        if let Some(name) = parsed.env.keys().find(|n| n.is_empty() || n.contains('=') || n.contains('\0')) {
            return Err(InputRefused::Invalid(format!("{name:?} is not an environment variable name")));
        }
        Ok(parsed)
    }

    /// The store's side of this input, for the command named `name`; its streams also go to
    /// `passthrough` when given.
    pub(crate) fn into_io(
        self,
        name: &str,
        limits: &crate::Limits,
        passthrough: Option<&Passthrough>,
    ) -> Result<CommandIo, InputRefused> {
        let stdin = match (self.stdin, self.stdin_encoding.as_deref()) {
            (None, _) => None,
            (Some(text), None | Some("utf-8")) => Some(Bytes::from(text)),
            (Some(text), Some("base64")) => Some(Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(text.as_bytes())
                    .map_err(|e| InputRefused::Invalid(format!("stdin is not valid base64: {e}")))?,
            )),
            (Some(_), Some(other)) => {
                return Err(InputRefused::Invalid(format!(
                    "stdin_encoding {other:?} is neither \"utf-8\" nor \"base64\""
                )));
            }
        };
        // `args_prefix` is already in `args`: the runtime put it there before recording the input.
        let argv = std::iter::once(name.to_string()).chain(self.args).collect();
        Ok(CommandIo {
            argv,
            env: self.env.into_iter().collect(),
            stdin,
            stdout: Capture::new(limits.output_bytes_max, LimitHit::Output { limit_bytes: limits.output_bytes_max })
                .passing_to(passthrough.map(|p| p.stdout.clone())),
            stderr: Capture::new(limits.log_bytes_max, LimitHit::Log { limit_bytes: limits.log_bytes_max })
                .passing_to(passthrough.map(|p| p.stderr.clone())),
        })
    }
}

/// The output document of a command that ran to its end: its exit code, stdout and stderr, each
/// stream as text when it is UTF-8, else base64 with `<stream>_encoding: "base64"`.
pub(crate) fn command_output(exit_code: i32, stdout: &[u8], stderr: &[u8]) -> String {
    let mut doc = serde_json::Map::new();
    doc.insert("exit_code".into(), exit_code.into());
    for (name, bytes) in [("stdout", stdout), ("stderr", stderr)] {
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                doc.insert(name.into(), text.into());
            }
            Err(_) => {
                doc.insert(name.into(), base64::engine::general_purpose::STANDARD.encode(bytes).into());
                doc.insert(format!("{name}_encoding"), "base64".into());
            }
        }
    }
    serde_json::Value::Object(doc).to_string()
}

/// A command's output document read back: what a caller that passes the streams through
/// (`guild run`) writes out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// The program's exit code.
    pub exit_code: i32,
    /// What it wrote on stdout.
    pub stdout: Vec<u8>,
    /// What it wrote on stderr.
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    /// Read a command's output document; `None` when `output` is not one.
    pub fn parse(output: &str) -> Option<Self> {
        let doc: serde_json::Value = serde_json::from_str(output).ok()?;
        let stream = |name: &str| -> Option<Vec<u8>> {
            let text = doc.get(name)?.as_str()?;
            match doc.get(format!("{name}_encoding")).and_then(|e| e.as_str()) {
                Some("base64") => base64::engine::general_purpose::STANDARD.decode(text).ok(),
                _ => Some(text.as_bytes().to_vec()),
            }
        };
        Some(Self {
            exit_code: i32::try_from(doc.get("exit_code")?.as_i64()?).ok()?,
            stdout: stream("stdout")?,
            stderr: stream("stderr")?,
        })
    }
}

/// What a command tells the host about itself, in place of `describe`.
pub(crate) fn command_info(config: &CommandConfig, version: String) -> ToolInfo {
    let name = if config.name.is_empty() { COMMAND_NAME_DEFAULT.to_string() } else { config.name.clone() };
    let description = if config.description.is_empty() {
        format!(
            "The WASI command {name}: runs with the given arguments, stdin and environment; answers its exit code, stdout and stderr"
        )
    } else {
        config.description.clone()
    };
    let env = match &config.env_allowed {
        Some(names) => {
            let properties: serde_json::Map<String, serde_json::Value> =
                names.iter().map(|n| (n.clone(), serde_json::json!({"type": "string"}))).collect();
            serde_json::json!({"type": "object", "properties": properties, "additionalProperties": false})
        }
        None => serde_json::json!({"type": "object", "additionalProperties": {"type": "string"}}),
    };
    ToolInfo {
        name,
        version,
        description,
        input_schema: serde_json::json!({
            "type": "object",
            "properties": {
                "args": {"type": "array", "items": {"type": "string"}, "description": "arguments after the program's name"},
                "stdin": {"type": "string", "description": "what the program reads on stdin; absent: end of input at once"},
                "stdin_encoding": {"enum": ["utf-8", "base64"]},
                "env": env,
            },
            "additionalProperties": false,
        }),
        output_schema: Some(serde_json::json!({
            "type": "object",
            "properties": {
                "exit_code": {"type": "integer"},
                "stdout": {"type": "string"},
                "stderr": {"type": "string"},
                "stdout_encoding": {"const": "base64"},
                "stderr_encoding": {"const": "base64"},
            },
            "required": ["exit_code", "stdout", "stderr"],
        })),
        capabilities: Capabilities::default(),
    }
}

/// What a command may be granted: a command declares nothing, so the operator's grant is the
/// whole policy — each granted mount at the granted access, every granted egress rule.
pub(crate) fn command_capabilities(grants: &Grants) -> Capabilities {
    Capabilities {
        dirs: grants
            .mounts
            .iter()
            .map(|m| DirRequest { guest_path: m.guest_path.clone(), access: m.access, purpose: String::new() })
            .collect(),
        hosts: grants.egress.iter().map(|rule| rule.as_str().to_string()).collect(),
        secrets: vec!["*".to_string()],
        gpu: false,
    }
}

/// Where a command's stream also goes as the program writes it: called with each write the
/// capture accepted, in order, from the host call that made it.
pub type StreamSink = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Where a command's stdout and stderr also go as it writes them (`guild run` passes them to
/// its own), besides the captures that make its output and bundle.
#[derive(Clone)]
pub struct Passthrough {
    /// Each write to stdout, once within `output_bytes_max`.
    pub stdout: StreamSink,
    /// Each write to stderr, once within `log_bytes_max`.
    pub stderr: StreamSink,
}

/// A bounded capture of a command's stdout or stderr: past its bound the run ends with `hit`.
#[derive(Clone)]
pub(crate) struct Capture {
    bytes: Arc<Mutex<Vec<u8>>>,
    bytes_max: u64,
    hit: LimitHit,
    /// Where accepted writes also go.
    sink: Option<StreamSink>,
}

impl Capture {
    fn new(bytes_max: u64, hit: LimitHit) -> Self {
        Self { bytes: Arc::default(), bytes_max, hit, sink: None }
    }

    fn passing_to(self, sink: Option<StreamSink>) -> Self {
        Self { sink, ..self }
    }

    fn append(&self, bytes: &[u8]) -> Result<(), LimitHit> {
        let mut held = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        if held.len() as u64 + bytes.len() as u64 > self.bytes_max {
            return Err(self.hit.clone());
        }
        held.extend_from_slice(bytes);
        if let Some(sink) = &self.sink {
            sink(bytes);
        }
        Ok(())
    }

    /// What was written so far, as stderr log lines (for a trap's message).
    pub(crate) fn log_lines(&self) -> Vec<LogLine> {
        let held = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&held)
            .lines()
            .map(|line| LogLine { level: LogLevel::Warn, source: LogSource::Stderr, message: line.to_string() })
            .collect()
    }

    /// What was written so far.
    pub(crate) fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.bytes.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

#[async_trait::async_trait]
impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes).map_err(|hit| StreamError::Trap(wasmtime::Error::new(hit)))
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Writes are charged when they happen; a guest may always try.
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.append(buf).map(|()| buf.len()).map_err(std::io::Error::other))
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
    fn binary_streams_are_base64_with_their_encoding() {
        let doc: serde_json::Value =
            serde_json::from_str(&command_output(3, b"hi\n", &[0xff, 0x00])).expect("valid JSON");
        assert_eq!(doc["exit_code"], 3);
        assert_eq!(doc["stdout"], "hi\n");
        assert!(doc.get("stdout_encoding").is_none());
        assert_eq!(doc["stderr"], "/wA=");
        assert_eq!(doc["stderr_encoding"], "base64");
    }

    #[test]
    fn output_documents_read_back() {
        let read = CommandOutput::parse(&command_output(7, &[0xfe, b'a'], b"e")).expect("a command output");
        assert_eq!(read, CommandOutput { exit_code: 7, stdout: vec![0xfe, b'a'], stderr: b"e".to_vec() });
    }

    #[test]
    fn env_names_are_checked_against_the_operators_list() {
        let config = CommandConfig { env_allowed: Some(vec!["LANG".into()]), ..CommandConfig::default() };
        assert!(CommandInput::parse(r#"{"env":{"LANG":"C"}}"#, &config).is_ok());
        assert!(matches!(CommandInput::parse(r#"{"env":{"HOME":"/"}}"#, &config), Err(InputRefused::Denied(_))));
        assert!(matches!(CommandInput::parse(r#"{"argv":[]}"#, &config), Err(InputRefused::Invalid(_))));
    }

    #[test]
    fn captures_stop_at_their_bound() {
        let capture = Capture::new(4, LimitHit::Output { limit_bytes: 4 });
        capture.append(b"abcd").expect("at the bound");
        assert!(capture.append(b"e").is_err());
        assert_eq!(capture.take(), b"abcd");
    }
}
