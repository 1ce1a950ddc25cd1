//! Serves a client connection from accept to close. Each request head is
//! read here, under the header timeout, and looked at before anything else
//! ([`h1::way`]): a head riegel refuses gets the 400 page and the
//! connection ends; an HTTP/1.1 GET or HEAD without a body, upgrade or
//! `Expect` (what almost every click is) is answered on bytes, by riegel's
//! own pages or the short way to the portal ([`super::direct`]). Anything
//! else goes, head included, to Pingora's proxy framework with
//! [`super::Gateway`]; the connection comes back here afterwards.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

use super::direct::{write_client, Failure};
use super::h1::{self, push_header, Cookies, ShortHead, Way};
use super::policy::{valid_value, HeaderPolicy, Refusal};
use super::wait::Deadline;
use super::{inet_ip, log_request, Core, Gateway, Live};
use crate::web::{self, Method, Outcome, Reply};

/// Requests served on one connection before riegel asks the client to open
/// a new one.
const REQUESTS_PER_CONNECTION: u32 = 10_000;

/// Largest request head read (Pingora's own limit is 1 MiB too); a longer
/// one is refused.
const MAX_HEAD: usize = 1 << 20;

/// Longest wait for a connection's orderly close.
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads until `buf` holds a whole request head; `None` when the client
/// closed or failed first.
async fn read_head(stream: &mut Stream, buf: &mut BytesMut, policy: &HeaderPolicy, peer: IpAddr) -> Option<Way> {
    loop {
        if !buf.is_empty() {
            if let Some(w) = h1::way(buf, policy, peer) {
                return Some(w);
            }
            if buf.len() > MAX_HEAD {
                return Some(Way::Refuse { why: Refusal::HeadTooLarge, head_only: false });
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// The client's address as the socket sees it.
fn peer_of(stream: &Stream) -> IpAddr {
    inet_ip(stream.get_socket_digest().as_deref().and_then(|d| d.peer_addr()))
}

/// The Cookie fields' bytes of a short-way head.
fn cookie_bytes<'a>(buf: &'a [u8], c: &'a Option<Cookies>) -> Option<&'a [u8]> {
    match c {
        None => None,
        Some(Cookies::One(r)) => Some(&buf[r.clone()]),
        Some(Cookies::Joined(v)) => Some(v),
    }
}

/// `Date` for riegel's own answers, formatted once per second per thread.
fn http_date() -> String {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let secs = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        d.1.clone()
    })
}

/// One of riegel's own answers as bytes; `None` when a header value has
/// control characters (it could only come from stored data).
fn reply_bytes(reply: &Reply, head_only: bool, close: bool) -> Option<Vec<u8>> {
    if !reply.headers.iter().all(|(_, v)| valid_value(v.as_bytes())) {
        return None;
    }
    let mut out = Vec::with_capacity(256 + reply.body.len());
    let reason = http::StatusCode::from_u16(reply.status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    out.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\n", reply.status).as_bytes());
    for (name, value) in &reply.headers {
        push_header(&mut out, name, value.as_bytes());
    }
    push_header(&mut out, "content-length", reply.body.len().to_string().as_bytes());
    push_header(&mut out, "date", http_date().as_bytes());
    if close {
        push_header(&mut out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&reply.body);
    }
    Some(out)
}

/// A connection cap, the header timeout and the choice of way around
/// Pingora's proxy framework.
pub(super) struct Front {
    /// The running configuration; taken afresh for every request head.
    live: Arc<Live>,
    proxy: Arc<HttpProxy<Gateway>>,
    open: Arc<AtomicUsize>,
    /// Set, and idle connections woken, when the server shuts down.
    closing: AtomicBool,
    idle: Notify,
}

struct OpenGuard(Arc<AtomicUsize>);
impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Front {
    pub(super) fn new(live: Arc<Live>, proxy: HttpProxy<Gateway>, open: Arc<AtomicUsize>) -> Self {
        Self { live, proxy: Arc::new(proxy), open, closing: AtomicBool::new(false), idle: Notify::new() }
    }

    /// One of riegel's own answers as bytes, or the 500 page (closing the
    /// connection) when the answer cannot be sent as it is.
    fn answer(core: &Core, reply: &Reply, head_only: bool, close: bool) -> Vec<u8> {
        reply_bytes(reply, head_only, close).unwrap_or_else(|| {
            tracing::warn!(status = reply.status, "answer header with control characters; 500 instead");
            let page = web::error_page(&core.services, 500, "error_500");
            // The error page's headers are riegel's own constants.
            reply_bytes(&page, head_only, true).unwrap_or_default()
        })
    }

    /// Serves requests until the client leaves, idles past the header
    /// timeout, a request ends the connection, or the server shuts down.
    async fn serve(&self, mut stream: Stream, shutdown: &ShutdownWatch) {
        let peer = peer_of(&stream);
        let mut buf = BytesMut::new();
        let mut served = 0u32;
        // Created before the flag is read, so a shutdown in between still
        // wakes it; it stays armed for the connection's life.
        let mut idle = std::pin::pin!(self.idle.notified());
        let mut deadline = Deadline::new();
        loop {
            if self.closing.load(Ordering::Relaxed) {
                return;
            }
            let mut core = self.live.core();
            let head = tokio::select! {
                biased;
                r = deadline.within(core.services.cfg.server.header_timeout, read_head(&mut stream, &mut buf, &core.policy, peer)) => r,
                _ = idle.as_mut() => return,
            };
            // Ok(None): the client closed; Err: no whole head within the
            // header timeout (slowloris, or an idle keep-alive connection).
            let Ok(Some(mut way)) = head else { return };
            // A reload while the head was awaited (an idle keep-alive
            // connection): the request is served, and its head judged,
            // by the configuration running now.
            if !self.live.is_current(&core) {
                core = self.live.core();
                match h1::way(&buf, &core.policy, peer) {
                    Some(w) => way = w,
                    None => return,
                }
            }
            let core = &*core;
            let write_timeout = core.services.cfg.server.write_timeout;
            served += 1;
            super::count_request();
            let last = served >= REQUESTS_PER_CONNECTION || self.closing.load(Ordering::Relaxed);
            match way {
                Way::Short(head) => {
                    let len = head.len;
                    if !Self::short(core, &mut stream, &buf, head, last).await {
                        return;
                    }
                    buf.advance(len);
                    // A huge head once does not pin its buffer for the
                    // connection's life.
                    if buf.is_empty() && buf.capacity() > 16 * 1024 {
                        buf = BytesMut::new();
                    }
                }
                Way::Refuse { why, head_only } => {
                    tracing::debug!(reason = %why, "request refused");
                    crate::metrics::request(crate::metrics::RequestOutcome::Refused);
                    let reply = web::error_page(&core.services, 400, "error_400");
                    let _ = write_client(&mut stream, Self::answer(core, &reply, head_only, true).as_slice(), write_timeout).await;
                    log_request(&core.services, "-", "-", 400, Some("refused"));
                    let _ = tokio::time::timeout(SHUTDOWN_WAIT, stream.shutdown()).await;
                    return;
                }
                Way::Framework => {
                    let mut session = ServerSession::new_http1(stream);
                    // A client that stops reading an answer is cut, as on
                    // the short way.
                    session.set_write_timeout(Some(write_timeout));
                    session.set_pipelined_prefix(std::mem::take(&mut buf));
                    if last {
                        session.set_keepalive_reuses_remaining(Some(0));
                    }
                    let Some(reused) = self.proxy.process_new_http(session, shutdown).await else { return };
                    // The settings would carry bytes of a pipelined next
                    // request only with Pingora's pipelining on, which riegel
                    // leaves off: Pingora then closes instead of reusing.
                    stream = reused.consume().0;
                }
            }
        }
    }

    /// One request the short way; whether the connection can carry the
    /// next one.
    async fn short(core: &Core, stream: &mut Stream, buf: &[u8], head: ShortHead, last: bool) -> bool {
        let write_timeout = core.services.cfg.server.write_timeout;
        let text = |r: &Option<std::ops::Range<usize>>| r.clone().and_then(|r| std::str::from_utf8(&buf[r]).ok());
        let Ok(path) = std::str::from_utf8(&buf[head.path.clone()]) else { return false };
        let req = web::Request {
            method: if head.head_only { Method::Head } else { Method::Get },
            path,
            query: text(&head.query),
            cookie: cookie_bytes(buf, &head.cookie),
            origin: text(&head.origin),
            sec_fetch_site: text(&head.sec_fetch_site),
            content_type: None,
            user_agent: text(&head.user_agent),
            accept_language: text(&head.accept_language),
            client_ip: head.client,
            body: &[],
        };
        let method = if head.head_only { "HEAD" } else { "GET" };
        let close = head.close || last;
        let outcome = web::handle(&req, &core.services).await;
        super::count_outcome(&core.services, path, &outcome);
        let (status, keep) = match outcome {
            Outcome::Reply(reply) => {
                let ok = write_client(stream, Self::answer(core, &reply, head.head_only, close).as_slice(), write_timeout).await.is_ok();
                (reply.status, ok && !close)
            }
            Outcome::Forward(identity) => {
                let mut up = head.upstream;
                if let Some(id) = &identity {
                    if !HeaderPolicy::identity_ok(id) {
                        tracing::warn!("identity value with control characters; not forwarded");
                        let reply = web::error_page(&core.services, 500, "error_500");
                        let _ = write_client(stream, Self::answer(core, &reply, head.head_only, true).as_slice(), write_timeout).await;
                        log_request(&core.services, method, path, 500, Some("identity value"));
                        return false;
                    }
                    let Ok(()) = core.policy.write_identity(id, &mut up);
                }
                if core.policy.portal_mode() {
                    let jar = identity.as_ref().and_then(|id| web::portal::cookie_for(&core.services, id));
                    let Ok(()) = core.policy.write_cookie(req.cookie, jar.as_deref(), &mut up);
                }
                up.extend_from_slice(b"\r\n");
                match core.direct.forward(stream, &up, head.head_only, close, (&core.services, identity.as_ref())).await {
                    Ok(a) => (a.status, !a.close_client),
                    Err(Failure::Portal { status, reason, started }) => {
                        tracing::warn!(status, error = %reason, "portal request failed");
                        if !started {
                            let reply = web::upstream_error_page(&core.services, status);
                            let _ = write_client(stream, Self::answer(core, &reply, head.head_only, true).as_slice(), write_timeout).await;
                        }
                        log_request(&core.services, method, path, status, Some("portal"));
                        return false;
                    }
                    Err(Failure::Client(e)) => {
                        tracing::debug!(error = %e, "client went away");
                        (0, false)
                    }
                }
            }
        };
        log_request(&core.services, method, path, status, None);
        if !keep {
            // Bounded: after a write timeout the flush in shutdown would
            // wait for the same silent client.
            let _ = tokio::time::timeout(SHUTDOWN_WAIT, stream.shutdown()).await;
        }
        keep
    }
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let max = self.live.core().services.cfg.server.max_connections;
        if self.open.fetch_add(1, Ordering::Relaxed) >= max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(max, "connection cap reached; connection refused");
            return None;
        }
        let _guard = OpenGuard(self.open.clone());
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // HTTP/2 (ALPN on the TLS listener) is Pingora's framework's:
            // every request goes through `Gateway`, the same header policy
            // and `web::handle` as HTTP/1.1's framework way.
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }
        self.serve(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.idle.notify_waiters();
        self.proxy.http_cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::reply_bytes;
    use crate::web::Reply;

    #[test]
    fn own_answers_carry_length_date_and_close_when_asked() {
        let r = Reply { status: 303, headers: vec![("location", "/_riegel/login".to_string())], body: bytes::Bytes::from_static(b"see") };
        let s = String::from_utf8(reply_bytes(&r, false, false).expect("valid")).expect("utf8");
        assert!(s.starts_with("HTTP/1.1 303 See Other\r\nlocation: /_riegel/login\r\ncontent-length: 3\r\ndate: "), "{s}");
        assert!(s.ends_with(" GMT\r\n\r\nsee"), "{s}");
        assert!(!s.contains("connection"));
        let s = String::from_utf8(reply_bytes(&r, true, true).expect("valid")).expect("utf8");
        assert!(s.ends_with("connection: close\r\n\r\n"), "{s}");
        let bad = Reply { status: 200, headers: vec![("x-user", "a\r\nSet-Cookie: x=1".to_string())], body: bytes::Bytes::new() };
        assert!(reply_bytes(&bad, false, false).is_none());
    }
}
