//! One HTTP/1.1 exchange with an address the policy already checked: connect to exactly that
//! address (no second DNS lookup, so no rebinding window), TLS with the request's host name for
//! SNI and certificate checks, and bodies read within their caps.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use wasmtime_wasi_http::Error;
use wasmtime_wasi_http::io::TokioIo;

/// What came back.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Bytes,
}

/// The TLS client configuration: the webpki roots plus any CA certificates an operator added
/// (PEM files, e.g. a company proxy's CA).
pub(crate) fn tls_config(extra_ca_files: &[std::path::PathBuf]) -> Result<Arc<rustls::ClientConfig>, String> {
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

/// Send `request` (whose URI is reduced to its path here) to `addr`.
pub(crate) async fn exchange(
    tls: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    host: &str,
    https: bool,
    mut request: http::Request<Full<Bytes>>,
    connect_timeout: Duration,
    response_bytes_max: u64,
) -> Result<Answer, Error> {
    let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(Error::ConnectionTimeout),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Err(Error::ConnectionRefused),
        Ok(Err(e)) => return Err(Error::Connect(e)),
        Ok(Ok(stream)) => stream,
    };
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    *request.uri_mut() = path.parse().map_err(|_| Error::HttpRequestUriInvalid)?;
    let response = if https {
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(Error::InvalidDnsNameError)?;
        let tls = tokio_rustls::TlsConnector::from(tls);
        let stream = tokio::time::timeout(connect_timeout, tls.connect(name, stream))
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(Error::Tls)?;
        send(TokioIo::new(stream), request).await?
    } else {
        send(TokioIo::new(stream), request).await?
    };
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
    Ok(Answer { status, headers, body })
}

async fn send<S>(
    io: TokioIo<S>,
    request: http::Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(Error::Hyper)?;
    // The connection future drives the socket; it ends when the exchange does.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.send_request(request).await.map_err(Error::Hyper)
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
