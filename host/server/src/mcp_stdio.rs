//! The stdio transport of `guild mcp`: one JSON-RPC message per line, each screened
//! ([`crate::jsonrpc`]) before rmcp sees it, so that every request gets exactly one answer. rmcp's
//! own stdio transport skips a line it cannot parse without answering; this one answers it.
//!
//! Lines are bounded by `frame_bytes_max`: a longer one is skipped to its end and answered as an
//! invalid request. One task writes stdout, so answers from the screen and from rmcp never
//! interleave within a line.

use crate::jsonrpc::{self, INVALID_REQUEST, Screened};
use rmcp::RoleServer;
use rmcp::model::{ClientJsonRpcMessage, ClientNotification, JsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::Transport;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// Lines queued for stdout at most; a client that stops reading slows the server down.
const LINES_QUEUED_MAX: usize = 64;
/// Requests a client may have in flight at once (each is answered before its id is free).
pub(crate) const REQUESTS_IN_FLIGHT_MAX: usize = 1024;

/// stdin and stdout as an rmcp transport.
pub(crate) struct GuardedStdio<R> {
    reader: BufReader<R>,
    /// The line being read (kept across cancellations of `receive`).
    line: Vec<u8>,
    /// True while skipping the rest of a line that was too long.
    skipping: bool,
    frame_bytes_max: usize,
    out: mpsc::Sender<Vec<u8>>,
    /// An answer of the screen's, waiting for room in `out`.
    pending: Option<Vec<u8>>,
    /// Ids of requests passed on and not answered yet (as JSON text), so a second request with
    /// an id in flight is refused rather than left with no answer of its own.
    in_flight: std::collections::HashSet<String>,
}

impl<R: AsyncRead + Unpin + Send> GuardedStdio<R> {
    /// The transport, and the task writing `output` (it ends when the transport is dropped and
    /// everything it was given is written).
    pub(crate) fn new<W: AsyncWrite + Unpin + Send + 'static>(
        input: R,
        mut output: W,
        frame_bytes_max: usize,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (out, mut lines) = mpsc::channel::<Vec<u8>>(LINES_QUEUED_MAX);
        let writer = tokio::spawn(async move {
            while let Some(line) = lines.recv().await {
                if output.write_all(&line).await.is_err() || output.flush().await.is_err() {
                    return;
                }
            }
        });
        let transport = Self {
            reader: BufReader::new(input),
            line: Vec::new(),
            skipping: false,
            frame_bytes_max,
            out,
            pending: None,
            in_flight: std::collections::HashSet::new(),
        };
        (transport, writer)
    }

    /// The next whole line, bounded; `None` at the end of input. Cancel-safe: what was read
    /// stays in `self.line`.
    async fn next_line(&mut self) -> Option<Result<Vec<u8>, usize>> {
        loop {
            let available = match self.reader.fill_buf().await {
                Ok(available) => available,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the MCP client's input failed");
                    return None;
                }
            };
            if available.is_empty() {
                // The client closed its end; a last unterminated line still counts.
                if self.line.is_empty() || self.skipping {
                    return None;
                }
                return Some(Ok(std::mem::take(&mut self.line)));
            }
            let (chunk, ends) = match available.iter().position(|b| *b == b'\n') {
                Some(newline) => (&available[..newline], Some(newline + 1)),
                None => (available, None),
            };
            if !self.skipping {
                if self.line.len() + chunk.len() > self.frame_bytes_max {
                    self.skipping = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(chunk);
                }
            }
            let consumed = ends.unwrap_or(available.len());
            self.reader.consume(consumed);
            if ends.is_some() {
                if std::mem::take(&mut self.skipping) {
                    return Some(Err(self.frame_bytes_max));
                }
                return Some(Ok(std::mem::take(&mut self.line)));
            }
        }
    }
}

impl<R> GuardedStdio<R> {
    /// Track a request's id until it is answered; refuse one whose id is in flight, or one too
    /// many. A cancellation frees the id it names.
    fn admit(&mut self, message: ClientJsonRpcMessage) -> Result<ClientJsonRpcMessage, serde_json::Value> {
        match &message {
            JsonRpcMessage::Request(request) => {
                let id = serde_json::to_string(&request.id).expect("a request id is a number or a string");
                if self.in_flight.contains(&id) {
                    let id_value = serde_json::to_value(&request.id).expect("a request id is a number or a string");
                    return Err(jsonrpc::error(
                        id_value,
                        INVALID_REQUEST,
                        "Invalid Request: a request with this id is still in flight; use a new id",
                    ));
                }
                if self.in_flight.len() >= REQUESTS_IN_FLIGHT_MAX {
                    let id_value = serde_json::to_value(&request.id).expect("a request id is a number or a string");
                    let message = format!("{REQUESTS_IN_FLIGHT_MAX} requests are in flight already; wait for answers");
                    return Err(jsonrpc::error(id_value, -32000, message));
                }
                self.in_flight.insert(id);
            }
            JsonRpcMessage::Notification(notification) => {
                if let ClientNotification::CancelledNotification(cancelled) = &notification.notification
                    && let Ok(id) = serde_json::to_string(&cancelled.params.request_id)
                {
                    self.in_flight.remove(&id);
                }
            }
            _ => {}
        }
        Ok(message)
    }
}

fn line_of(value: &serde_json::Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).expect("a JSON value serializes");
    line.push(b'\n');
    line
}

impl<R: AsyncRead + Unpin + Send> Transport<RoleServer> for GuardedStdio<R> {
    type Error = std::io::Error;

    fn send(&mut self, item: ServerJsonRpcMessage) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let answered = match &item {
            JsonRpcMessage::Response(response) => serde_json::to_string(&response.id).ok(),
            JsonRpcMessage::Error(error) => error.id.as_ref().and_then(|id| serde_json::to_string(id).ok()),
            _ => None,
        };
        if let Some(id) = answered {
            self.in_flight.remove(&id);
        }
        let out = self.out.clone();
        let line = serde_json::to_vec(&item).map(|mut line| {
            line.push(b'\n');
            line
        });
        async move {
            let line = line.map_err(std::io::Error::other)?;
            out.send(line).await.map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stdout is closed"))
        }
    }

    async fn receive(&mut self) -> Option<ClientJsonRpcMessage> {
        loop {
            if self.pending.is_some() {
                let permit = self.out.reserve().await.ok()?;
                permit.send(self.pending.take().unwrap_or_default());
            }
            let line = match self.next_line().await? {
                Ok(line) => line,
                Err(limit) => {
                    tracing::warn!(limit, "an MCP frame longer than the limit was skipped");
                    let message =
                        format!("Invalid Request: the frame is longer than {limit} bytes (request_bytes_max)");
                    self.pending = Some(line_of(&jsonrpc::error(serde_json::Value::Null, INVALID_REQUEST, message)));
                    continue;
                }
            };
            match jsonrpc::screen(&line) {
                Screened::Pass(message) => match self.admit(*message) {
                    Ok(message) => return Some(message),
                    Err(answer) => self.pending = Some(line_of(&answer)),
                },
                Screened::Reply(answer) => {
                    tracing::warn!(error = %answer["error"], "answered an MCP frame rmcp would not: {}", answer["error"]["message"]);
                    self.pending = Some(line_of(&answer));
                }
                Screened::Drop(reason) => tracing::warn!(reason = %reason, "dropped an MCP frame that needs no answer"),
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}
