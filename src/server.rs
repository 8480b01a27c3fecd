//! The HTTP server loop: hyper (through `hyper-util`) with the limits `axum::serve` does not
//! offer — a cap on open connections, a deadline for a connection's first request (a client that
//! connects and sends nothing, a partial HTTP/2 preface, or a TLS session with no request cannot
//! hold a slot), a header read timeout, a write timeout (a client that never reads its response
//! cannot pin it in memory), HTTP/1 and HTTP/2 — and graceful shutdown that drains in-flight
//! requests. Request and body timeouts and the in-flight cap are tower layers on the router (see
//! `bootstrap`). With `[tls]` each connection first completes a rustls handshake, bounded by the
//! same header read timeout, on its own task (a slow handshake never holds the accept loop).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_io_timeout::TimeoutStream;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// Connection-level limits.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// Open connections at most; further connections wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// Time a client has to complete the TLS handshake, and then to send its first request's
    /// headers (and every later request's, on HTTP/1).
    pub header_read_timeout: Duration,
    /// Longest a write to the client may wait (a client that stops reading its response); also
    /// how long a connection may sit idle after a request before it is closed.
    pub write_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
}

/// Serves `app` on `listener` (HTTPS when `tls` is set) until `shutdown` resolves, then drains
/// open connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: ConnLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
    let mut shutdown = std::pin::pin!(shutdown);
    // Set once the drain timeout has passed: every connection still open is then dropped.
    let (closing, closed) = tokio::sync::watch::channel(false);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        metrics::gauge!("vitalflow_http_connections")
            .set((limits.max_connections - permits.available_permits()) as f64);
        let _ = stream.set_nodelay(true);
        let mut io = TimeoutStream::new(stream);
        io.set_write_timeout(Some(limits.write_timeout));
        let io = Box::pin(io);
        let conn = Conn {
            app: app.clone(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
            permit,
            closed: closed.clone(),
        };
        let (timeout, idle) = (limits.header_read_timeout, limits.write_timeout.max(Duration::from_secs(1)));
        match tls.clone() {
            None => {
                tokio::spawn(conn.serve(io, timeout, idle));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(io)).await {
                        Ok(Ok(io)) => conn.serve(io, timeout, idle).await,
                        Ok(Err(e)) => {
                            metrics::counter!("vitalflow_http_tls_handshake_failures_total").increment(1);
                            tracing::debug!(error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!("vitalflow_http_tls_handshake_failures_total").increment(1);
                        }
                    }
                });
            }
        }
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!("connections still open after the drain timeout; closing them");
            let _ = closing.send(true);
        }
    }
}

/// One accepted connection, holding its slot until it ends.
struct Conn {
    app: Router,
    builder: Builder<TokioExecutor>,
    watcher: Watcher,
    permit: OwnedSemaphorePermit,
    /// Becomes `true` when shutdown's drain timeout has passed: the connection is dropped then,
    /// whatever it is doing (a request, a lingering close), so that a stop is bounded.
    closed: tokio::sync::watch::Receiver<bool>,
}

impl Conn {
    /// Serves HTTP/1 or HTTP/2 on `io`. Closes it if no request has arrived within
    /// `first_request` (hyper reads the HTTP/2 preface without a timer, so an idle or stalled
    /// client would otherwise hold the slot forever), or once no request has been running for
    /// `idle` (an HTTP/2 client answers keep-alive pings, so an idle one is never closed by hyper).
    async fn serve<I>(self, io: I, first_request: Duration, idle: Duration)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn { app, builder, watcher, permit, mut closed } = self;
        let activity = Arc::new(Activity::default());
        let seen = activity.clone();
        // Until a request has come and its body has been read to the end, a close lingers.
        let unread = Arc::new(AtomicBool::new(true));
        let body_read = unread.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let guard = seen.begin();
            let body_read = body_read.clone();
            let fut = app.clone().oneshot(req.map(|body| axum::body::Body::new(TrackedBody::new(body, body_read))));
            async move {
                let response = fut.await;
                drop(guard);
                response
            }
        });
        let conn = watcher.watch(
            builder
                .serve_connection_with_upgrades(
                    TokioIo::new(crate::linger::Linger::new(crate::framing::FramingErrors::new(io), unread)),
                    service,
                )
                .into_owned(),
        );
        let watchdog = async {
            tokio::time::sleep(first_request).await;
            if activity.requests.load(Ordering::Relaxed) == 0 {
                return;
            }
            loop {
                tokio::time::sleep(idle / 4).await;
                if activity.running.load(Ordering::Relaxed) == 0 && activity.idle_for() >= idle {
                    return;
                }
            }
        };
        tokio::select! {
            _ = conn => {}
            () = watchdog => {
                metrics::counter!("vitalflow_http_idle_connections_closed_total").increment(1);
            }
            _ = closed.wait_for(|closed| *closed) => {}
        }
        drop(permit);
    }
}

/// What a connection's requests are doing: how many have started, how many run, and when the
/// last one ended.
#[derive(Default)]
struct Activity {
    requests: AtomicUsize,
    running: AtomicUsize,
    /// Milliseconds since `EPOCH` at the end of the last request.
    last_end_ms: AtomicU64,
}

static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

impl Activity {
    fn begin(self: &Arc<Self>) -> RunningRequest {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.running.fetch_add(1, Ordering::Relaxed);
        RunningRequest(self.clone())
    }

    fn idle_for(&self) -> Duration {
        let now = EPOCH.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_end_ms.load(Ordering::Relaxed)))
    }
}

/// Held while a request runs (its handler, not the streaming of its body: `idle` is long enough
/// for that, and the write timeout bounds a client that stops reading).
struct RunningRequest(Arc<Activity>);

impl Drop for RunningRequest {
    fn drop(&mut self) {
        self.0.last_end_ms.store(EPOCH.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request body that records, in its connection's flag, whether it has been read to the end:
/// `true` (unread) from the request's start until its last frame, so that a connection closed
/// with a body still arriving lingers ([`crate::linger::Linger`]) and one closed between requests
/// does not.
struct TrackedBody {
    inner: Incoming,
    unread: Arc<AtomicBool>,
}

impl TrackedBody {
    fn new(inner: Incoming, unread: Arc<AtomicBool>) -> Self {
        use hyper::body::Body as _;
        unread.store(!inner.is_end_stream(), Ordering::Relaxed);
        Self { inner, unread }
    }
}

impl hyper::body::Body for TrackedBody {
    type Data = hyper::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.unread.store(false, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
