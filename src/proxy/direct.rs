//! The short way to the portal for what most clicks are: an HTTP/1.1 GET or
//! HEAD without a body or an upgrade (chosen by [`super::h1::way`]). The
//! head prepared on bytes goes to a pooled upstream connection; the answer's
//! head is parsed once ([`super::h1::response`]) and its body relayed as it
//! arrives, framed by length, chunks or close. No header maps, no copies of
//! the request, no proxy framework (two halves joined by a channel and an
//! idle-watcher task per request).

use std::cell::RefCell;
use std::future::Future;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use pingora::connectors::TransportConnector;
use pingora::protocols::Stream;
use pingora::upstreams::peer::HttpPeer;
use thread_local::ThreadLocal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::h1::{self, Chunks, Framing, Response};
use super::wait::{soon, Deadline};

/// Idle upstream connections kept per thread.
const POOL_PER_THREAD: usize = 64;

/// Informational answers (103 Early Hints …) skipped before the real one.
const MAX_INFORMATIONAL: usize = 8;

/// Longest answer head accepted from the portal.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Read buffer for the portal's answer.
const READ_BUFFER: usize = 8 * 1024;

/// Why a request could not be answered.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    /// The portal could not be reached, was too slow or answered nonsense.
    /// `started`: part of the answer has already gone to the client.
    #[error("portal: {reason}")]
    Portal { status: u16, reason: String, started: bool },
    /// Writing to the client failed: it is gone.
    #[error("client: {0}")]
    Client(std::io::Error),
}

impl Failure {
    fn portal(status: u16, reason: impl Into<String>) -> Self {
        Failure::Portal { status, reason: reason.into(), started: false }
    }
}

/// How a forwarded request ended.
#[derive(Debug)]
pub(super) struct Answered {
    pub status: u16,
    /// The answer was delimited by closing: the client connection ends too.
    pub close_client: bool,
}

pub(super) struct Direct {
    connector: TransportConnector,
    /// Longest wait for a client to take the next piece of an answer
    /// (`server.write_timeout`, nginx's `send_timeout`): a client that
    /// stops reading does not hold the portal's connection for ever.
    write_timeout: Duration,
    /// The portal; its options carry the read, write and idle timeouts.
    peer: HttpPeer,
    /// Per thread, so that a connection is taken and given back without a
    /// lock; with one shard per thread it never changes threads.
    pool: ThreadLocal<RefCell<Vec<Upstream>>>,
    /// Portal login mode: the portal's session cookie names, whose
    /// `Set-Cookie` never reaches the browser.
    portal_cookies: Vec<String>,
}

/// A connection to the portal with its own timer for reads.
struct Upstream {
    stream: Stream,
    deadline: Deadline,
    /// Idle since no later than then: the start of its last request (the
    /// portal's own idle timer cannot start before it had the request), so
    /// that an idle connection expires early rather than late.
    idle_since: Instant,
}

fn io_failure(e: std::io::Error, started: bool) -> Failure {
    let status = if e.kind() == std::io::ErrorKind::TimedOut { 504 } else { 502 };
    Failure::Portal { status, reason: e.to_string(), started }
}

impl Direct {
    pub(super) fn new(peer: HttpPeer, write_timeout: Duration, portal_cookies: Vec<String>) -> Self {
        Self { connector: TransportConnector::new(None), write_timeout, peer, pool: ThreadLocal::new(), portal_cookies }
    }

    /// The portal's session cookie names it holds back.
    pub(super) fn portal_cookies(&self) -> &[String] {
        &self.portal_cookies
    }

    /// Whether a `Set-Cookie` value sets one of the portal's session cookies.
    fn holds(&self, value: &[u8]) -> bool {
        super::policy::sets_one_of(&self.portal_cookies, value)
    }

    /// A live pooled connection (`true`), or a new one.
    async fn checkout(&self, now: Instant) -> Result<(Upstream, bool), Failure> {
        let pool = self.pool.get_or(|| RefCell::new(Vec::new()));
        loop {
            let taken = pool.borrow_mut().pop();
            let Some(mut up) = taken else { break };
            if self.peer.options.idle_timeout.is_some_and(|t| now.saturating_duration_since(up.idle_since) >= t) {
                continue;
            }
            // An idle connection must have nothing to read: EOF means the
            // portal closed it, data means it is out of step. Unconstrained:
            // with the task's co-operative budget spent, tokio would answer
            // Pending even for a closed connection.
            let mut probe = [0u8; 1];
            let idle = {
                let mut read = std::pin::pin!(tokio::task::unconstrained(up.stream.read(&mut probe)));
                read.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending()
            };
            if idle {
                return Ok((up, true));
            }
        }
        Ok((self.connect().await?, false))
    }

    /// A new connection to the portal.
    async fn connect(&self) -> Result<Upstream, Failure> {
        match self.connector.new_stream(&self.peer).await {
            Ok(stream) => Ok(Upstream { stream, deadline: Deadline::new(), idle_since: Instant::now() }),
            Err(e) => {
                let status = if matches!(e.etype(), pingora::ErrorType::ConnectTimedout) { 504 } else { 502 };
                Err(Failure::portal(status, e.to_string()))
            }
        }
    }

    /// Pools a connection whose answer ended exactly. `now`: the time the
    /// request began.
    fn checkin(&self, mut up: Upstream, now: Instant) {
        up.idle_since = now;
        let mut pool = self.pool.get_or(|| RefCell::new(Vec::new())).borrow_mut();
        // The pool is used from the top: connections at the bottom may idle
        // past the timeout unseen. One look per check-in closes them.
        if let (Some(first), Some(t)) = (pool.first(), self.peer.options.idle_timeout) {
            if now.saturating_duration_since(first.idle_since) >= t {
                pool.remove(0);
            }
        }
        if pool.len() < POOL_PER_THREAD {
            pool.push(up);
        }
    }

    /// Sends `head` (the portal's request head, blank line included) and
    /// relays the answer to `client`. When a pooled connection fails before
    /// the first byte of an answer (the portal closed it meanwhile), the
    /// request is sent once more, on a new connection: it is a GET or HEAD.
    /// `close_client`: the client connection ends after this answer.
    /// In portal login mode the session cookies the portal sets go to
    /// `jar` (the services and the request's identity) before the answer
    /// is relayed, never to the client.
    pub(super) async fn forward(
        &self,
        client: &mut Stream,
        head: &[u8],
        head_only: bool,
        close_client: bool,
        jar: (&crate::web::Services, Option<&crate::web::Identity>),
    ) -> Result<Answered, Failure> {
        let now = Instant::now();
        let (mut up, reused) = self.checkout(now).await?;
        let mut buf = BytesMut::with_capacity(READ_BUFFER);
        let response = match self.exchange(&mut up, head, head_only, &mut buf).await {
            Ok(r) => r,
            // Not after a timeout: that would double the wait.
            Err(Failure::Portal { status: 502, .. }) if reused && buf.is_empty() => {
                up = self.connect().await?;
                self.exchange(&mut up, head, head_only, &mut buf).await?
            }
            Err(e) => return Err(e),
        };
        crate::metrics::upstream_duration(now.elapsed());
        if !response.held_cookies.is_empty() {
            crate::web::portal::take_set_cookies(jar.0, jar.1, &response.held_cookies).await;
        }
        self.relay(up, client, response, buf, close_client, now).await
    }

    /// Writes the request and reads up to the final answer head.
    async fn exchange(&self, up: &mut Upstream, head: &[u8], head_only: bool, buf: &mut BytesMut) -> Result<h1::ResponseHead, Failure> {
        let opts = &self.peer.options;
        let stream = &mut up.stream;
        soon(opts.write_timeout, async {
            stream.write_all(head).await?;
            stream.flush().await
        })
        .await
        .map_err(|e| io_failure(e, false))?;
        let mut informational = 0;
        loop {
            if !buf.is_empty() {
                match h1::response_holding(buf, head_only, &|v| self.holds(v)).map_err(|e| Failure::portal(502, e.to_string()))? {
                    Response::Final(h) => return Ok(h),
                    Response::Informational(len) if informational < MAX_INFORMATIONAL => {
                        informational += 1;
                        buf.advance(len);
                        continue;
                    }
                    Response::Informational(_) => return Err(Failure::portal(502, "too many informational answers")),
                    Response::Partial if buf.len() > MAX_RESPONSE_HEAD => return Err(Failure::portal(502, "answer head too long")),
                    Response::Partial => {}
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(READ_BUFFER);
            }
            let n = up.deadline.io(opts.read_timeout, up.stream.read_buf(buf)).await.map_err(|e| io_failure(e, false))?;
            if n == 0 {
                return Err(Failure::portal(502, "the portal closed the connection before answering"));
            }
        }
    }

    /// Copies the answer's head and body to the client; the portal's
    /// connection goes back to the pool when the body ended exactly.
    async fn relay(
        &self,
        mut up: Upstream,
        client: &mut Stream,
        r: h1::ResponseHead,
        mut buf: BytesMut,
        close_client: bool,
        now: Instant,
    ) -> Result<Answered, Failure> {
        let close_client = close_client || r.framing == Framing::UntilClose;
        let mut out = r.downstream;
        if close_client {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        buf.advance(r.len);
        let mut chunks = Chunks::default();
        let mut left = match r.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        // Takes the body's share of what was read; whether the body ended,
        // and whether bytes beyond it were read (the connection is then out
        // of step).
        let mut take = |buf: &mut BytesMut| -> Result<(BytesMut, bool, bool), Failure> {
            let piece_len = match r.framing {
                Framing::Empty => 0,
                Framing::UntilClose => buf.len(),
                Framing::Length(_) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    left -= n as u64;
                    n
                }
                Framing::Chunked => match chunks.feed(buf).map_err(|e| Failure::Portal { status: 502, reason: e.to_string(), started: true })? {
                    Some(end) => end,
                    None => buf.len(),
                },
            };
            let piece = buf.split_to(piece_len);
            let done = match r.framing {
                Framing::Empty => true,
                Framing::UntilClose => false,
                Framing::Length(_) => left == 0,
                Framing::Chunked => chunks.is_done(),
            };
            Ok((piece, done, !buf.is_empty()))
        };
        // Nothing has reached the client yet: a bad first piece still gets
        // the 502 page.
        let (piece, mut done, mut extra) = take(&mut buf).map_err(|e| match e {
            Failure::Portal { status, reason, .. } => Failure::Portal { status, reason, started: false },
            other => other,
        })?;
        write_head_and_body(client, out, &piece, self.write_timeout).await?;
        let opts = &self.peer.options;
        while !done && !extra {
            buf.clear();
            if buf.capacity() < READ_BUFFER / 2 {
                buf.reserve(READ_BUFFER);
            }
            let n = up.deadline.io(opts.read_timeout, up.stream.read_buf(&mut buf)).await.map_err(|e| io_failure(e, true))?;
            if n == 0 {
                if r.framing == Framing::UntilClose {
                    break;
                }
                return Err(Failure::Portal { status: 502, reason: "the portal closed the connection mid-answer".into(), started: true });
            }
            let (piece, d, x) = take(&mut buf)?;
            (done, extra) = (d, x);
            write_client(client, &piece[..], self.write_timeout).await?;
        }
        if done && !extra && !r.upstream_close {
            self.checkin(up, now);
        }
        Ok(Answered { status: r.status, close_client })
    }
}

/// The answer's head and the body read with it, in one write: vectored
/// where the client's stream takes that (no copy of the body), else copied
/// behind the head.
async fn write_head_and_body(client: &mut Stream, mut head: Vec<u8>, body: &[u8], limit: Duration) -> Result<(), Failure> {
    if body.is_empty() || !client.is_write_vectored() {
        head.extend_from_slice(body);
        return write_client(client, head.as_slice(), limit).await;
    }
    write_client(client, Buf::chain(head.as_slice(), body), limit).await
}

/// Writes `bytes` to the client and flushes, within `limit` (the write
/// timeout) from the moment the client's socket could not take all of it
/// at once.
pub(super) async fn write_client(client: &mut Stream, mut bytes: impl Buf, limit: Duration) -> Result<(), Failure> {
    let w = async {
        client.write_all_buf(&mut bytes).await?;
        client.flush().await
    };
    soon(Some(limit), w).await.map_err(Failure::Client)
}
