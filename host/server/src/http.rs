//! Serving the API over HTTP/1.1 with the bounds a listener facing untrusted clients needs: at
//! most `connections_max` connections at once, request headers within `header_bytes_max` bytes,
//! read within `header_read_timeout_ms` (a client that trickles headers, or a connection left
//! idle between requests, is closed).
//!
//! When every place is taken and another client connects, the connection that has been idle
//! longest (one with no request being served: still waiting for its first headers, or between
//! requests) is closed to make room, so clients that open connections and send nothing cannot
//! lock everyone else out; a client that sends its request at once is served. Only when every
//! connection is serving a request does the listener wait (the kernel's backlog holds new ones).
//!
//! On shutdown it stops accepting, lets each connection finish the request in flight, and
//! closes what is still open after `close_wait` (the daemon's drain deadline).
//!
//! Hand-written on hyper's connection builder because `axum::serve` sets none of these limits.

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

/// Default for [`HttpConfig::connections_max`].
pub const CONNECTIONS_MAX_DEFAULT: usize = 1024;
/// Default for [`HttpConfig::header_bytes_max`].
pub const HEADER_BYTES_MAX_DEFAULT: usize = 64 * 1024;
/// Default for [`HttpConfig::header_read_timeout_ms`].
pub const HEADER_READ_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default for [`HttpConfig::body_read_timeout_ms`].
pub const BODY_READ_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// The smallest header limit the daemon accepts (a browser's request headers fit it).
pub const HEADER_BYTES_MIN: usize = 8192;

/// One open connection, as the listener sees it when it must make room.
struct Slot {
    /// Requests being served on it (from headers received until the response is sent).
    serving: AtomicUsize,
    /// When it last became idle, as nanoseconds since the listener started.
    idle_since_ns: AtomicU64,
    /// Told to close when it is chosen to make room.
    evict: Notify,
}

/// The open connections, so the longest idle one can be found when every place is taken.
struct Slots {
    started: Instant,
    open: Mutex<HashMap<u64, Arc<Slot>>>,
}

impl Slots {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn open(&self, id: u64) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            serving: AtomicUsize::new(0),
            idle_since_ns: AtomicU64::new(self.now_ns()),
            evict: Notify::new(),
        });
        self.open.lock().unwrap_or_else(|p| p.into_inner()).insert(id, slot.clone());
        slot
    }

    fn close(&self, id: u64) {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// Tell the connection idle longest to close; false when every one is serving a request.
    fn evict_longest_idle(&self) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = open
            .iter()
            .filter(|(_, slot)| slot.serving.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, slot)| slot.idle_since_ns.load(Ordering::Acquire))
            .map(|(id, _)| *id);
        match oldest.and_then(|id| open.remove(&id)) {
            Some(slot) => {
                slot.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Marks its connection as serving a request until the response has been sent (or dropped).
struct Serving {
    slot: Arc<Slot>,
    slots: Arc<Slots>,
}

impl Serving {
    fn begin(slot: &Arc<Slot>, slots: &Arc<Slots>) -> Self {
        slot.serving.fetch_add(1, Ordering::AcqRel);
        Self { slot: slot.clone(), slots: slots.clone() }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.slot.idle_since_ns.store(self.slots.now_ns(), Ordering::Release);
        self.slot.serving.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes its connection out of [`Slots`] when the connection's task ends, however it ends.
struct OpenSlot {
    slots: Arc<Slots>,
    id: u64,
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.slots.close(self.id);
    }
}

/// A response body that holds something until its last byte is sent: its connection's
/// [`Serving`] mark here, a tenant's place among requests in flight for an MCP call whose
/// answer streams long after the response head.
pub(crate) struct HoldingBody<T> {
    inner: axum::body::Body,
    _held: T,
}

impl<T> HoldingBody<T> {
    /// `inner`, holding `held` until it is sent (or dropped).
    pub(crate) fn new(inner: axum::body::Body, held: T) -> Self {
        Self { inner, _held: held }
    }
}

impl<T: Unpin> hyper::body::Body for HoldingBody<T> {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// `[http]`: bounds on the daemon's listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Connections open at once. One more closes the connection idle longest, or waits to be
    /// accepted while every connection is serving a request.
    pub connections_max: usize,
    /// Bytes of a request's line and headers (at least 8192); a larger request gets 431 and the
    /// connection is closed.
    pub header_bytes_max: usize,
    /// Time a client has to send its request headers, ms.
    pub header_read_timeout_ms: u64,
    /// Time a client has to send a request's body once its headers are in, ms.
    pub body_read_timeout_ms: u64,
    /// Requests one tenant may have being served at once; one more is answered 429.
    pub tenant_requests_max: usize,
}

/// Default for `http.tenant_requests_max` (and [`crate::Tenant::with_requests_max`]): HTTP
/// requests one tenant may have in flight.
pub const TENANT_REQUESTS_MAX_DEFAULT: usize = 256;

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            connections_max: CONNECTIONS_MAX_DEFAULT,
            header_bytes_max: HEADER_BYTES_MAX_DEFAULT,
            header_read_timeout_ms: HEADER_READ_TIMEOUT_MS_DEFAULT,
            body_read_timeout_ms: BODY_READ_TIMEOUT_MS_DEFAULT,
            tenant_requests_max: TENANT_REQUESTS_MAX_DEFAULT,
        }
    }
}

/// Serve `router` on `listener` until `shutdown` resolves, then let the requests in flight
/// finish, closing the connections still open after `close_wait` (event streams, idle clients).
///
/// # Errors
/// Only when the listener itself fails; a failed connection is logged and served no more.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    close_wait: Duration,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(config.connections_max.max(1)));
    let slots = Arc::new(Slots { started: Instant::now(), open: Mutex::new(HashMap::new()) });
    let (closing, closed) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut next_id: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: the connections in flight will free some.
                    tracing::warn!(error = %e, "accepting a connection failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Every place is taken: make room by closing the connection idle longest (its
                // place comes back as its task ends), or wait for a request to finish.
                if slots.evict_longest_idle() {
                    tracing::debug!("closed the connection idle longest to make room for a new one");
                }
                tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        next_id += 1;
        let id = next_id;
        let slot = slots.open(id);
        let body_deadline = Duration::from_millis(config.body_read_timeout_ms);
        // HTTP/1.1 serves a connection's requests one after another, so the mark set when a
        // request's headers are in is the one its response takes along.
        let current: Arc<Mutex<Option<Serving>>> = Arc::new(Mutex::new(None));
        let (request_slot, request_slots, begun) = (slot.clone(), slots.clone(), current.clone());
        let service = TowerToHyperService::new(
            tower::ServiceBuilder::new()
                .map_request(move |request: hyper::Request<hyper::body::Incoming>| {
                    let serving = Serving::begin(&request_slot, &request_slots);
                    *begun.lock().unwrap_or_else(|p| p.into_inner()) = Some(serving);
                    request.map(|body| axum::body::Body::new(DeadlineBody::new(body, body_deadline)))
                })
                .map_response(move |response: axum::response::Response| {
                    let serving = current.lock().unwrap_or_else(|p| p.into_inner()).take();
                    response.map(|inner| HoldingBody::new(inner, serving))
                })
                .service(router.clone()),
        );
        let mut closed = closed.clone();
        let config = config.clone();
        let slots = slots.clone();
        connections.spawn(async move {
            let _permit = permit;
            let _open = OpenSlot { slots, id };
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Some(Duration::from_millis(config.header_read_timeout_ms)))
                .max_header_size(config.header_bytes_max.max(HEADER_BYTES_MIN))
                .keep_alive(true);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                _ = closed.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
                // Chosen to make room while idle: dropped, which closes it.
                () = slot.evict.notified() => {}
            }
        });
    }
    let _ = closing.send(true);
    if tokio::time::timeout(close_wait, async { while connections.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!(open = connections.len(), "closing connections still open after shutdown");
        connections.abort_all();
    }
    Ok(())
}

/// A request body that must arrive within a deadline: past it, reading fails, so a client that
/// sends a body a byte at a time cannot hold its connection (and a place) for ever.
struct DeadlineBody<B> {
    inner: B,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl<B> DeadlineBody<B> {
    fn new(inner: B, limit: Duration) -> Self {
        Self { inner, deadline: Box::pin(tokio::time::sleep(limit)), limit }
    }
}

/// A body was not received within `http.body_read_timeout_ms`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?} (http.body_read_timeout_ms)")]
struct BodyTooSlow(Duration);

impl<B> hyper::body::Body for DeadlineBody<B>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::future::Future;
        if let std::task::Poll::Ready(frame) = std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            return std::task::Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let limit = self.limit;
        match self.deadline.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Some(Err(Box::new(BodyTooSlow(limit))))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
