//! Lingering close. When the server closes an HTTP/1 connection while the client is still sending
//! a request body (a body refused for its size, or a route that answers without reading it), a
//! plain close makes the kernel answer the unread bytes with a TCP reset, and a client that is
//! still writing sees a broken pipe instead of the refusal sitting in its receive buffer.
//! [`Linger`] wraps a connection's stream so that its shutdown first sends FIN, then, if a request
//! body may still be arriving (a flag the HTTP layer keeps), reads and discards what the client
//! still sends, until the client closes, [`LINGER_BYTES`] have been discarded or [`LINGER_TIME`]
//! has passed (nginx's `lingering_close`, for the same reason). An idle keep-alive connection
//! closes at once. A graceful stop drops every connection, lingering or not, at its drain timeout.
//! Nothing read while lingering reaches hyper. ADR 0009 says why this lives in the stream.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most a lingering close discards: 64 MiB (a body declared larger is not waited for).
pub const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// The longest a lingering close waits for the client: 5 s.
pub const LINGER_TIME: Duration = Duration::from_secs(5);

/// A connection's stream whose shutdown lingers (module docs). Reads and writes pass through.
pub struct Linger<I> {
    inner: I,
    /// Whether the client may still be sending a request body: set by the HTTP layer. When it is
    /// not, a shutdown only sends FIN: an idle keep-alive connection has nothing to drain.
    unread: Arc<AtomicBool>,
    max_bytes: usize,
    max_time: Duration,
    /// Set once the write side is shut down: what is left of the lingering.
    draining: Option<Draining>,
}

struct Draining {
    deadline: Pin<Box<tokio::time::Sleep>>,
    discarded: usize,
}

impl<I> Linger<I> {
    /// Lingers up to [`LINGER_BYTES`] and [`LINGER_TIME`], when `unread` is set at shutdown.
    pub fn new(inner: I, unread: Arc<AtomicBool>) -> Self {
        Self::with_limits(inner, unread, LINGER_BYTES, LINGER_TIME)
    }

    fn with_limits(inner: I, unread: Arc<AtomicBool>, max_bytes: usize, max_time: Duration) -> Self {
        Self { inner, unread, max_bytes, max_time, draining: None }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Linger<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Linger<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Sends FIN (the inner shutdown), then discards input until EOF, an error, `max_bytes` or
    /// `max_time`. Always ends `Ok` once the inner shutdown has: lingering is a courtesy.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.draining.is_none() {
            std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            if !this.unread.load(Ordering::Relaxed) {
                return Poll::Ready(Ok(()));
            }
            this.draining = Some(Draining { deadline: Box::pin(tokio::time::sleep(this.max_time)), discarded: 0 });
        }
        let Some(draining) = this.draining.as_mut() else { return Poll::Ready(Ok(())) };
        let mut scratch = [0_u8; 16 * 1024];
        loop {
            if draining.discarded >= this.max_bytes || draining.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => draining.discarded += buf.filled().len(),
                // EOF (the client has closed) or an error (it reset): nothing left to wait for.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                // The deadline was polled above, so a wake-up comes from whichever is first.
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The peer keeps writing after the server's answer and shutdown: every write succeeds and the
    /// answer is read whole, which a plain close (a reset) does not guarantee.
    #[tokio::test]
    async fn a_client_still_writing_reads_the_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut stream = Linger::new(stream, Arc::new(AtomicBool::new(true)));
            let mut head = [0_u8; 64];
            let _ = stream.read(&mut head).await.expect("read the start");
            stream.write_all(b"refused").await.expect("answer");
            stream.shutdown().await.expect("shutdown lingers, then ends");
        });
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..64 {
            client.write_all(&chunk).await.expect("every write of the 4 MiB body succeeds");
        }
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("read the answer");
        assert_eq!(answer, b"refused");
        drop(client);
        server.await.expect("server task");
    }

    /// A peer that neither sends nor closes is not waited for beyond the linger time; one that
    /// sends more than the byte limit is not read beyond it.
    #[tokio::test]
    async fn lingering_ends_at_its_limits() {
        let (server_side, _silent) = tokio::io::duplex(1024);
        let unread = Arc::new(AtomicBool::new(true));
        let mut stream = Linger::with_limits(server_side, unread.clone(), LINGER_BYTES, Duration::from_millis(20));
        stream.shutdown().await.expect("ends at the time limit");

        let (server_side, mut flood) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            let chunk = vec![b'x'; 4096];
            let mut sent = 0;
            while flood.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
            }
            sent
        });
        let mut stream = Linger::with_limits(server_side, unread, 256 * 1024, Duration::from_secs(3600));
        stream.shutdown().await.expect("ends at the byte limit");
        drop(stream);
        let sent = writer.await.expect("writer");
        assert!((256 * 1024..=(256 + 64 + 16 + 4) * 1024).contains(&sent), "{sent}");
    }

    /// A connection whose last request body was read to the end closes at once: nothing to drain.
    #[tokio::test]
    async fn no_lingering_when_every_body_was_read() {
        let (server_side, _silent) = tokio::io::duplex(1024);
        let mut stream =
            Linger::with_limits(server_side, Arc::new(AtomicBool::new(false)), LINGER_BYTES, Duration::from_secs(3600));
        stream.shutdown().await.expect("closes without waiting for the silent client");
    }
}
