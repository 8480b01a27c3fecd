//! The HTTP server loop: hyper (through `hyper-util`) with the limits `axum::serve` does not
//! offer — a cap on open connections, a header read timeout (a client that trickles its headers
//! cannot hold a connection), HTTP/1 and HTTP/2 — and graceful shutdown that drains in-flight
//! requests. Request and body timeouts and the in-flight cap are tower layers on the router
//! (see `bootstrap`). With `[tls]` each connection first completes a rustls handshake, bounded by
//! the same header read timeout, on its own task (a slow handshake never holds the accept loop).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// Connection-level limits.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// Open connections at most; further connections wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// Time a client has to send a request's headers.
    pub header_read_timeout: Duration,
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
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        match tls.clone() {
            None => {
                let first_byte_timeout = limits.header_read_timeout;
                tokio::spawn(async move {
                    // hyper reads the protocol preface without a timer: a client that connects and
                    // sends nothing would hold its connection slot forever.
                    let mut probe = [0_u8; 1];
                    match tokio::time::timeout(first_byte_timeout, stream.peek(&mut probe)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => {
                            metrics::counter!("vitalflow_http_idle_connections_closed_total").increment(1);
                            return;
                        }
                    }
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                    drop(permit);
                });
            }
            Some(acceptor) => {
                let handshake_timeout = limits.header_read_timeout;
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            metrics::counter!("vitalflow_http_tls_handshake_failures_total").increment(1);
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics::counter!("vitalflow_http_tls_handshake_failures_total").increment(1);
                            return;
                        }
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                    drop(permit);
                });
            }
        }
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!("connections still open after the drain timeout; closing them");
        }
    }
}
