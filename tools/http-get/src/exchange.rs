//! One HTTP exchange over `wasi:http/outgoing-handler`, through the `wasip2` crate's bindings.
//!
//! The URL is parsed by the `http` crate and handed to the host as its scheme, authority and
//! path unchanged: nothing is resolved or normalised here, so the host's egress rules judge
//! exactly what the tool asked for. The request body is written whole and the response body read
//! whole; every call blocks, since a tool makes one request at a time.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::{Parts, Uri};
use std::fmt;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::{OutputStream, StreamError};

/// Bytes asked of the host per read of a response body. The host bounds the body as a whole
/// (`--http-response-bytes`); this only sets how many host calls reading it takes.
const READ_CHUNK_BYTES: u64 = 1 << 20;

/// Why an exchange did not produce a response.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The host answered with a `wasi:http` error code: a refusal by its egress rules, or what
    /// went wrong on the way to the upstream and back.
    Http(ErrorCode),
    /// The request could not be built, or the host would not take a part of it.
    Request(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http(code) => write!(f, "{code}"),
            Self::Request(reason) => f.write_str(reason),
        }
    }
}

impl From<ErrorCode> for Failure {
    fn from(code: ErrorCode) -> Self {
        Self::Http(code)
    }
}

/// A request to send: its method, URL, headers and body.
pub(crate) struct Request {
    method: Method,
    uri: Parts,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Request {
    /// A request with no headers and an empty body; fails when `url` is not a URI.
    pub(crate) fn new(method: Method, url: &str) -> Result<Self, Failure> {
        let uri = url.parse::<Uri>().map_err(|e| Failure::Request(e.to_string()))?;
        Ok(Self { method, uri: uri.into_parts(), headers: HeaderMap::new(), body: Vec::new() })
    }

    /// Sets header `name` (replacing an earlier value of it); fails when `value` is not a valid
    /// header value.
    pub(crate) fn header(&mut self, name: HeaderName, value: String) -> Result<(), Failure> {
        let value = HeaderValue::try_from(value).map_err(|e| Failure::Request(e.to_string()))?;
        self.headers.insert(name, value);
        Ok(())
    }

    /// Sets the body.
    pub(crate) fn body(&mut self, body: Vec<u8>) {
        self.body = body;
    }

    /// Sends the request and waits for the response's status and headers. The body is written
    /// after the host has the request's head, as a streaming client does, so the host can refuse
    /// the request without reading any of it.
    pub(crate) fn send(self) -> Result<Response, Failure> {
        let entries: Vec<(String, Vec<u8>)> =
            self.headers.iter().map(|(name, value)| (name.to_string(), value.as_bytes().to_vec())).collect();
        let fields = Fields::from_list(&entries).map_err(|e| Failure::Request(e.to_string()))?;
        let request = OutgoingRequest::new(fields);
        request.set_method(&self.method).map_err(|()| rejected("method"))?;
        if let Some(scheme) = &self.uri.scheme {
            request.set_scheme(Some(&wasi_scheme(scheme.as_str()))).map_err(|()| rejected("scheme"))?;
        }
        if let Some(authority) = &self.uri.authority {
            request.set_authority(Some(authority.as_str())).map_err(|()| rejected("authority"))?;
        }
        if let Some(path) = &self.uri.path_and_query {
            request.set_path_with_query(Some(path.as_str())).map_err(|()| rejected("path_with_query"))?;
        }
        let body = request.body().map_err(|()| write_failed())?;
        let pending = outgoing_handler::handle(request, None)?;
        write_body(&body, &self.body)?;
        OutgoingBody::finish(body, None)?;
        let response = loop {
            match pending.get() {
                Some(answer) => break answer.map_err(|()| Failure::Request("response already taken".into()))??,
                None => pending.subscribe().block(),
            }
        };
        let mut headers = Vec::new();
        for (name, value) in response.headers().entries() {
            let name = HeaderName::try_from(name).map_err(|e| Failure::Request(e.to_string()))?;
            let value = HeaderValue::try_from(value).map_err(|e| Failure::Request(e.to_string()))?;
            headers.push((name, value));
        }
        let body = response.consume().map_err(|()| Failure::Request("response body already taken".into()))?;
        Ok(Response { status: response.status(), headers, body })
    }
}

/// A response whose status and headers have arrived; its body is read on demand.
pub(crate) struct Response {
    /// The HTTP status code.
    pub(crate) status: u16,
    /// The headers in the order the host gave them, repeated names repeated.
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    body: IncomingBody,
}

impl Response {
    /// Reads the whole body.
    pub(crate) fn body(self) -> Result<Vec<u8>, String> {
        let stream = self.body.stream().map_err(|()| "response body already read".to_string())?;
        let mut bytes = Vec::new();
        loop {
            match stream.blocking_read(READ_CHUNK_BYTES) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => return Ok(bytes),
                Err(e) => return Err(format!("input_stream read failed: {e:?}")),
            }
        }
    }
}

fn wasi_scheme(scheme: &str) -> Scheme {
    match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_string()),
    }
}

fn rejected(part: &str) -> Failure {
    Failure::Request(format!("failed to set {part}"))
}

fn write_failed() -> Failure {
    Failure::Request("outgoing request write failed".into())
}

/// Writes `bytes` into the request body as fast as the host takes them: wait until the stream
/// is ready, write what it permits, and again; then flush and wait for the flush to land.
fn write_body(body: &OutgoingBody, bytes: &[u8]) -> Result<(), Failure> {
    if bytes.is_empty() {
        return Ok(());
    }
    let stream = body.write().map_err(|()| write_failed())?;
    write_all(&stream, bytes).map_err(|e| Failure::Request(e.to_string()))
}

fn write_all(stream: &OutputStream, mut bytes: &[u8]) -> Result<(), StreamError> {
    let ready = stream.subscribe();
    while !bytes.is_empty() {
        ready.block();
        let permitted = usize::try_from(stream.check_write()?).unwrap_or(usize::MAX);
        let (now, later) = bytes.split_at(bytes.len().min(permitted));
        stream.write(now)?;
        bytes = later;
    }
    stream.flush()?;
    ready.block();
    stream.check_write().map(drop)
}
