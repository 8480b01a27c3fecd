//! JSON bodies for the refusals hyper writes itself. A request hyper cannot parse (a malformed
//! request line or header, a bad `Content-Length`, a header section over the limit, an over-long
//! URI) never reaches a route: hyper answers it with an empty `400`, `431` or `414` and closes the
//! connection. [`FramingErrors`] wraps a connection's stream and rewrites exactly that answer, the
//! last bytes hyper writes on such a connection, into a response carrying the same status and the
//! `{"code", "message"}` body of every other refusal (README, table of limits). hyper has no hook
//! for this response; ADR 0009 says why the rewrite lives in the stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// hyper's automatic answers, as it writes them (hyper 1.x: the status line, `connection: close`,
/// `content-length: 0`, then only `date`), with the code and message each becomes.
const AUTOMATIC: [(&[u8], &str, &str); 3] = [
    (
        b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n",
        "MALFORMED_HTTP",
        "the request line or a header cannot be parsed (method, URI, version, header syntax or Content-Length)",
    ),
    (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n",
        "HEADERS_TOO_LARGE",
        "the request's header section is larger than the server reads",
    ),
    (
        b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\n",
        "URI_TOO_LONG",
        "the request URI is too long",
    ),
];

/// The response to send instead of `written` when `written` is one of hyper's automatic answers:
/// the same status line and `date`, `content-type: application/json` and the error body. `None`
/// for anything else (every response of a route carries a `content-type`).
pub fn rewrite(written: &[u8]) -> Option<Vec<u8>> {
    for (head, code, message) in AUTOMATIC {
        // hyper writes its answer alone, as one write.
        let Some(rest) = written.strip_prefix(head) else { continue };
        // Only the `date` header and the blank line may follow: no body, nothing else.
        let single_date_line = rest.starts_with(b"date: ")
            && rest.ends_with(b"\r\n\r\n")
            && rest.len() <= 64
            && rest.windows(2).filter(|w| *w == b"\r\n").count() == 2;
        if !single_date_line {
            continue;
        }
        let body = serde_json::json!({ "code": code, "message": message }).to_string();
        let status_line_end = head.windows(2).position(|w| w == b"\r\n").map_or(0, |i| i + 2);
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&head[..status_line_end]);
        out.extend_from_slice(b"connection: close\r\ncontent-type: application/json\r\n");
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        out.extend_from_slice(rest);
        out.extend_from_slice(body.as_bytes());
        return Some(out);
    }
    None
}

/// The HTTP/2 connection preface (RFC 9113 §3.4): a client speaking HTTP/2 sends it first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection speaks, as far as its first bytes tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// Fewer bytes than the HTTP/2 preface read so far, all of them a prefix of it.
    Undecided,
    Http1,
    /// HTTP/2: writes are frames, never rewritten.
    Http2,
}

/// A connection's stream whose writes pass through unchanged, except, on an HTTP/1 connection,
/// hyper's automatic answer to an unparseable request, which is replaced once by [`rewrite`].
/// The replacement is written before any later write, flush or shutdown completes.
pub struct FramingErrors<I> {
    inner: I,
    protocol: Protocol,
    /// Bytes read so far while the protocol is undecided.
    seen: usize,
    /// Whether the one rewrite has happened.
    rewritten: bool,
    /// A replacement not yet fully written, and how much of it has been.
    pending: Option<(Vec<u8>, usize)>,
}

impl<I> FramingErrors<I> {
    pub fn new(inner: I) -> Self {
        FramingErrors { inner, protocol: Protocol::Undecided, seen: 0, rewritten: false, pending: None }
    }

    /// Follows the first bytes read until they tell HTTP/2 (the whole preface) from HTTP/1.
    fn observe(&mut self, read: &[u8]) {
        if self.protocol != Protocol::Undecided {
            return;
        }
        let expected = &H2_PREFACE[self.seen.min(H2_PREFACE.len())..];
        let n = read.len().min(expected.len());
        if read[..n] != expected[..n] {
            self.protocol = Protocol::Http1;
            return;
        }
        self.seen += n;
        if self.seen == H2_PREFACE.len() {
            self.protocol = Protocol::Http2;
        }
    }
}

impl<I: AsyncWrite + Unpin> FramingErrors<I> {
    /// Writes what is left of a replacement; ready once nothing is left.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &mut self.pending {
            if *done == bytes.len() {
                self.pending = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FramingErrors<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_ready() && buf.filled().len() > before {
            let this = &mut *self;
            this.observe(&buf.filled()[before..]);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FramingErrors<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        // hyper's automatic answer is short and written in one piece; anything longer is a route's.
        if self.protocol == Protocol::Http1
            && !self.rewritten
            && buf.len() <= 512
            && let Some(replacement) = rewrite(buf)
        {
            self.rewritten = true;
            self.pending = Some((replacement, 0));
            // The caller's bytes count as written; the replacement goes out now or with the next
            // flush.
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // hyper writes its automatic answer as one buffer: only a write of one non-empty slice that
        // starts like it goes through the check (no copy of any other write).
        let mut non_empty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (non_empty.next(), non_empty.next())
            && self.protocol == Protocol::Http1
            && !self.rewritten
            && only.starts_with(b"HTTP/1.1 4")
        {
            return self.poll_write(cx, only);
        }
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &[u8] = b"date: Sun, 29 Nov 2026 22:11:54 GMT\r\n\r\n";

    #[test]
    fn hyper_automatic_answers_get_a_json_body() {
        for (head, code, _) in AUTOMATIC {
            let written = [head, DATE].concat();
            let out = rewrite(&written).expect("rewritten");
            let text = String::from_utf8(out).expect("utf-8");
            let (headers, body) = text.split_once("\r\n\r\n").expect("head and body");
            assert!(headers.starts_with(std::str::from_utf8(&head[..12]).expect("status")), "{headers}");
            assert!(headers.contains("content-type: application/json"), "{headers}");
            assert!(headers.contains(&format!("content-length: {}", body.len())), "{headers}");
            assert!(headers.contains("date: Sun, 29 Nov 2026"), "{headers}");
            let json: serde_json::Value = serde_json::from_str(body).expect("json");
            assert_eq!(json["code"], code);
        }
    }

    #[tokio::test]
    async fn http2_frames_are_never_rewritten() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (head, _, _) = AUTOMATIC[0];
        let answer = [head, DATE].concat();
        // On HTTP/1 (a bad preface is HTTP/1 too) the automatic answer is rewritten, once; on HTTP/2
        // never.
        for (first_bytes, rewritten) in
            [(b"GET / HTTP/1.1\r\n".as_slice(), true), (H2_PREFACE, false), (b"PRI * HTTP/2.0\r\n\r\nXX", true)]
        {
            let (client, server) = tokio::io::duplex(4096);
            let mut stream = FramingErrors::new(server);
            let (mut client_read, mut client_write) = tokio::io::split(client);
            // The preface may arrive in pieces.
            for piece in first_bytes.chunks(5) {
                client_write.write_all(piece).await.expect("write");
                let mut buf = vec![0; piece.len()];
                stream.read_exact(&mut buf).await.expect("read");
            }
            stream.write_all(&answer).await.expect("write");
            stream.write_all(&answer).await.expect("write");
            stream.flush().await.expect("flush");
            drop(stream);
            let mut got = Vec::new();
            client_read.read_to_end(&mut got).await.expect("read");
            let first = if rewritten { rewrite(&answer).expect("rewritten") } else { answer.clone() };
            assert_eq!(got, [first, answer.clone()].concat(), "{}", String::from_utf8_lossy(first_bytes));
        }
    }

    #[test]
    fn a_route_response_passes_unchanged() {
        // A response with a body, another status, more headers, or text after the date is a
        // route's: never rewritten.
        let (head, _, _) = AUTOMATIC[0];
        let with_body = [head, DATE, b"x"].concat();
        let more_headers = [head, b"x-other: 1\r\n", DATE].concat();
        let other_status =
            [b"HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n".as_slice(), DATE].concat();
        let json_400 =
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}".to_vec();
        let after_other_bytes = [b"x".as_slice(), head, DATE].concat();
        for written in [with_body, more_headers, other_status, json_400, after_other_bytes, DATE.to_vec(), Vec::new()] {
            assert_eq!(rewrite(&written), None, "{}", String::from_utf8_lossy(&written));
        }
    }
}
