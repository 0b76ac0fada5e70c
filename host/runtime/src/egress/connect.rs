//! HTTP/1.1 exchanges with addresses the policy already checked: connect to exactly that address
//! (no second DNS lookup, so no rebinding window), TLS with the request's host name for SNI and
//! certificate checks, and bodies read within their caps. Connections are counted host-wide
//! (`http_connections_max`) and kept alive per (checked address, TLS name), so pooling never
//! lets a request reach an address that was not checked for it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::Error;
use wasmtime_wasi_http::io::TokioIo;

/// What came back.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Bytes,
}

/// The TLS client configuration: the webpki roots plus any CA certificates an operator added
/// (PEM files, e.g. a company proxy's CA). Egress and the daemon's OAuth issuer client share it.
///
/// # Errors
/// A message naming the CA file that cannot be read or holds no PEM certificate.
pub fn tls_config(extra_ca_files: &[std::path::PathBuf]) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
    for path in extra_ca_files {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("CA file {} is not PEM certificates: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("CA file {} holds no certificate", path.display()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| format!("CA file {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Headers as (name, value) pairs in order, values decoded lossily, as the tape records them.
pub(crate) fn header_pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers.iter().map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect()
}

/// Default for [`crate::RuntimeConfig::http_connections_max`]: outgoing connections open at once
/// across every run of a runtime.
pub const HTTP_CONNECTIONS_MAX_DEFAULT: usize = 256;
/// An idle pooled connection older than this is closed instead of reused.
const IDLE_MS_MAX: u64 = 30_000;
/// Idle connections kept per (address, TLS name).
const IDLE_PER_KEY_MAX: usize = 8;

/// Where a pooled connection goes: the address the screening checked, and the name TLS checked
/// the certificate against. A connection is only ever reused for a request whose own checks
/// chose the same address and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    addr: SocketAddr,
    tls_name: Option<String>,
}

/// An open HTTP/1.1 connection and the permit that counts it.
struct Open {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    _permit: OwnedSemaphorePermit,
    idle_since: Instant,
}

/// The host's outgoing connections: at most `connections_max` open at once (in use or idle),
/// idle ones kept per (checked address, TLS name) for keep-alive.
pub(crate) struct Connections {
    connections_max: usize,
    permits: Arc<Semaphore>,
    idle: Mutex<HashMap<PoolKey, Vec<Open>>>,
}

impl Connections {
    pub(crate) fn new(connections_max: usize) -> Self {
        let connections_max = connections_max.max(1);
        Self { connections_max, permits: Arc::new(Semaphore::new(connections_max)), idle: Mutex::default() }
    }

    fn take_idle(&self, key: &PoolKey) -> Option<Open> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let open = idle.get_mut(key)?;
        let fresh = Duration::from_millis(IDLE_MS_MAX);
        while let Some(candidate) = open.pop() {
            if candidate.idle_since.elapsed() < fresh && candidate.sender.is_ready() {
                return Some(candidate);
            }
        }
        idle.remove(key);
        None
    }

    fn put_idle(&self, key: PoolKey, mut open: Open) {
        if !open.sender.is_ready() {
            return;
        }
        open.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let kept = idle.entry(key).or_default();
        if kept.len() < IDLE_PER_KEY_MAX {
            kept.push(open);
        }
    }

    /// Close the idle connection that waited longest, to free its permit.
    fn evict_one(&self) -> bool {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = idle
            .iter()
            .filter_map(|(key, open)| open.first().map(|o| (key.clone(), o.idle_since)))
            .min_by_key(|(_, since)| *since)
            .map(|(key, _)| key);
        let Some(key) = oldest else { return false };
        if let Some(open) = idle.get_mut(&key) {
            open.remove(0);
            if open.is_empty() {
                idle.remove(&key);
            }
        }
        true
    }

    /// A permit for one more connection: free, or freed by closing an idle one, or waited for.
    async fn permit(&self, wait: Duration) -> Result<OwnedSemaphorePermit, Error> {
        loop {
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => return Ok(permit),
                Err(_) if self.evict_one() => continue,
                Err(_) => break,
            }
        }
        match tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Error::InternalError(Some(format!(
                "all {} outgoing connections of this host are in use (http_connections_max); retry later",
                self.connections_max
            )))),
        }
    }
}

/// Send `request` to `addr`, over a pooled connection when one to the same checked address and
/// TLS name is idle. The request's URI is reduced to `path_and_query`: the normalised path the
/// rules were checked on, and the guest's query.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn exchange(
    connections: &Connections,
    tls: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    host: &str,
    https: bool,
    mut request: http::Request<Full<Bytes>>,
    path_and_query: &str,
    connect_timeout: Duration,
    response_bytes_max: u64,
) -> Result<Answer, Error> {
    *request.uri_mut() = path_and_query.parse().map_err(|_| Error::HttpRequestUriInvalid)?;
    let key = PoolKey { addr, tls_name: https.then(|| host.to_string()) };
    let mut open = match connections.take_idle(&key) {
        Some(open) => open,
        None => connect(connections, tls, &key, connect_timeout).await?,
    };
    let response = open.sender.send_request(request).await.map_err(Error::Hyper)?;
    let status = response.status().as_u16();
    let headers = header_pairs(response.headers());
    let limited = Limited::new(response.into_body(), usize::try_from(response_bytes_max).unwrap_or(usize::MAX));
    let body = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Error::HttpResponseBodySize(Some(response_bytes_max)));
        }
        Err(_) => return Err(Error::HttpResponseIncomplete),
    };
    // The whole response was read: the connection may carry the next request to this address.
    connections.put_idle(key, open);
    Ok(Answer { status, headers, body })
}

/// Open a new connection to exactly `key.addr` (TLS checked against `key.tls_name`).
async fn connect(
    connections: &Connections,
    tls: Arc<rustls::ClientConfig>,
    key: &PoolKey,
    connect_timeout: Duration,
) -> Result<Open, Error> {
    let permit = connections.permit(connect_timeout).await?;
    let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(key.addr)).await {
        Err(_) => return Err(Error::ConnectionTimeout),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Err(Error::ConnectionRefused),
        Ok(Err(e)) => return Err(Error::Connect(e)),
        Ok(Ok(stream)) => stream,
    };
    let sender = match &key.tls_name {
        Some(host) => {
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(Error::InvalidDnsNameError)?;
            let tls = tokio_rustls::TlsConnector::from(tls);
            let stream = tokio::time::timeout(connect_timeout, tls.connect(name, stream))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(Error::Tls)?;
            handshake(TokioIo::new(stream)).await?
        }
        None => handshake(TokioIo::new(stream)).await?,
    };
    Ok(Open { sender, _permit: permit, idle_since: Instant::now() })
}

async fn handshake<S>(io: TokioIo<S>) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(Error::Hyper)?;
    // The connection future drives the socket; it ends when its sender is dropped (the pool
    // closed it, or the exchange failed) or the upstream closes it.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Read a body within `limit` bytes.
pub(crate) async fn collect_capped<B>(body: B, limit: u64) -> Result<Bytes, Error>
where
    B: hyper::body::Body<Data = Bytes, Error = Error>,
{
    let mut bytes = Vec::new();
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() as u64 + data.len() as u64 > limit {
                return Err(Error::HttpRequestBodySize(Some(limit)));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(bytes))
}
