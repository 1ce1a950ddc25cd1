//! Serves a client connection from accept to close. Each request head is
//! read here, under the header timeout, and looked at before Pingora parses
//! it: a GET or HEAD without a body, upgrade or `Expect` (what almost every
//! click is) is answered on Pingora's HTTP/1 session directly, by riegel's
//! own pages or the short way to the portal ([`super::direct`]). Anything
//! else goes, head included, to Pingora's proxy framework with
//! [`super::Gateway`]; the connection comes back here afterwards.

use std::future::pending;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora::ErrorType;
use tokio::io::AsyncReadExt;

use super::direct::Direct;
use super::{log_request, peer_ip, write_reply, Core, Gateway};
use crate::web::{self, Outcome};

/// Requests served on one connection before riegel asks the client to open
/// a new one.
const REQUESTS_PER_CONNECTION: u32 = 10_000;

/// Largest request head read here; a longer one goes to Pingora, which
/// refuses it (its own limit is 1 MiB).
const MAX_HEAD: usize = 1 << 20;

/// Headers looked at when deciding the way; a request with more takes the
/// framework's (Pingora allows 256).
const HEADERS_LOOKED_AT: usize = 96;

/// What a request head, read in full, asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Way {
    /// GET or HEAD without body, upgrade or `Expect`: served here.
    Short,
    /// Anything else, including heads Pingora will refuse.
    Framework,
}

/// Decides the way for the bytes read so far; `None` while the head is
/// incomplete.
pub(super) fn way(buf: &[u8]) -> Option<Way> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_LOOKED_AT];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Way::Framework),
        Ok(httparse::Status::Complete(_)) => {
            if !matches!(req.method, Some("GET" | "HEAD")) {
                return Some(Way::Framework);
            }
            for h in req.headers.iter() {
                let n = h.name.as_bytes();
                let bodiless_length = n.eq_ignore_ascii_case(b"content-length") && h.value == b"0";
                if !bodiless_length
                    && (n.eq_ignore_ascii_case(b"content-length")
                        || n.eq_ignore_ascii_case(b"transfer-encoding")
                        || n.eq_ignore_ascii_case(b"upgrade")
                        || n.eq_ignore_ascii_case(b"expect"))
                {
                    return Some(Way::Framework);
                }
            }
            Some(Way::Short)
        }
    }
}

/// Reads until `buf` holds a whole request head; `None` when the client
/// closed or failed first.
async fn read_head(stream: &mut Stream, buf: &mut BytesMut) -> Option<Way> {
    loop {
        if !buf.is_empty() {
            if let Some(w) = way(buf) {
                return Some(w);
            }
            if buf.len() > MAX_HEAD {
                return Some(Way::Framework);
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

/// A connection cap, the header timeout and the choice of way around
/// Pingora's proxy framework.
pub(super) struct Front {
    core: Arc<Core>,
    proxy: Arc<HttpProxy<Gateway>>,
    direct: Direct,
    open: Arc<AtomicUsize>,
}

struct OpenGuard(Arc<AtomicUsize>);
impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Front {
    pub(super) fn new(core: Arc<Core>, proxy: HttpProxy<Gateway>, open: Arc<AtomicUsize>) -> Self {
        let direct = Direct::new(core.peer.clone());
        Self { core, proxy: Arc::new(proxy), direct, open }
    }

    /// Serves requests until the client leaves, idles past the header
    /// timeout, a request ends the connection, or the server shuts down.
    async fn serve(&self, mut stream: Stream, shutdown: &ShutdownWatch) {
        let server = &self.core.services.cfg.server;
        let mut stop = shutdown.clone();
        let mut buf = BytesMut::new();
        let mut served = 0u32;
        loop {
            if *stop.borrow() {
                return;
            }
            let head = tokio::select! {
                biased;
                r = tokio::time::timeout(server.header_timeout, read_head(&mut stream, &mut buf)) => r,
                _ = async { if stop.changed().await.is_err() { pending::<()>().await } } => return,
            };
            // Ok(None): the client closed; Err: no whole head within the
            // header timeout (slowloris, or an idle keep-alive connection).
            let Ok(Some(way)) = head else { return };
            served += 1;
            let mut session = ServerSession::new_http1(stream);
            session.set_pipelined_prefix(std::mem::take(&mut buf));
            if served >= REQUESTS_PER_CONNECTION {
                session.set_keepalive_reuses_remaining(Some(0));
            }
            let next = match way {
                Way::Short => self.short(session, served >= REQUESTS_PER_CONNECTION).await,
                Way::Framework => self.proxy.process_new_http(session, shutdown).await.map(|r| (r.consume().0, None)),
            };
            let Some((s, rest)) = next else { return };
            stream = s;
            buf = rest.unwrap_or_default();
        }
    }

    /// One request the short way; the connection back when it can carry
    /// the next one, with any bytes of that one already read.
    async fn short(&self, mut session: ServerSession, last: bool) -> Option<(Stream, Option<BytesMut>)> {
        match session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                if matches!(e.etype(), ErrorType::InvalidHTTPHeader) {
                    let _ = session.respond_error(400).await;
                }
                session.shutdown().await;
                return None;
            }
        }
        // read_request applies the client's keep-alive wish; riegel's own
        // limits come on top.
        if last {
            session.set_keepalive_reuses_remaining(Some(0));
        }
        session.set_pipelining_enabled(true);
        let core = &*self.core;
        let peer = peer_ip(&session);
        let client = core.resolve_client_ip(peer, session.req_header());
        let head_only = session.req_header().method == http::Method::HEAD;
        let outcome = web::handle(&core.web_request(session.req_header(), client, &[]), &core.services).await;
        let done = match outcome {
            Outcome::Reply(reply) => write_reply(&mut session, reply, head_only).await,
            Outcome::Forward(identity) => {
                let mut req = session.req_header().clone();
                match core.prepare_upstream(peer, client, identity.as_ref(), &mut req) {
                    Ok(()) => self.direct.forward(&mut session, req).await,
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = done {
            let status = core.fail(&mut session, &e).await;
            log_request(&core.services, session.req_header(), status, Some(&e));
            return None;
        }
        let status = session.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
        log_request(&core.services, session.req_header(), status, None);
        match session.finish().await {
            Ok(Some(reusable)) => Some(reusable.into_parts()),
            _ => None,
        }
    }
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let max = self.core.services.cfg.server.max_connections;
        if self.open.fetch_add(1, Ordering::Relaxed) >= max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(max, "connection cap reached; connection refused");
            return None;
        }
        let _guard = OpenGuard(self.open.clone());
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // Not offered by riegel's listener; should a client get it
            // anyway, Pingora's framework speaks it.
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }
        self.serve(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::{way, Way};

    #[test]
    fn only_whole_bodiless_gets_and_heads_without_upgrade_take_the_short_way() {
        let w = |s: &str| way(s.as_bytes());
        assert_eq!(w("GET /mieter HTTP/1.1\r\nHost: a\r\n\r\n"), Some(Way::Short));
        assert_eq!(w("HEAD / HTTP/1.0\r\n\r\n"), Some(Way::Short));
        assert_eq!(w("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), Some(Way::Short));
        // Incomplete heads wait for more bytes.
        assert_eq!(w("GET /mieter HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(w("GE"), None);
        // Everything else is the framework's.
        assert_eq!(w("POST /_riegel/login HTTP/1.1\r\nContent-Length: 3\r\n\r\na=b"), Some(Way::Framework));
        assert_eq!(w("PUT / HTTP/1.1\r\n\r\n"), Some(Way::Framework));
        assert_eq!(w("OPTIONS * HTTP/1.1\r\n\r\n"), Some(Way::Framework));
        assert_eq!(w("GET / HTTP/1.1\r\ncontent-LENGTH: 5\r\n\r\nhello"), Some(Way::Framework));
        assert_eq!(w("GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 7\r\n\r\n"), Some(Way::Framework));
        assert_eq!(w("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), Some(Way::Framework));
        assert_eq!(w("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"), Some(Way::Framework));
        assert_eq!(w("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"), Some(Way::Framework));
        // Heads httparse refuses, and heads with very many headers, too:
        // Pingora answers them.
        assert_eq!(w("GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"), Some(Way::Framework));
        let many: String = (0..200).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(w(&format!("GET / HTTP/1.1\r\n{many}\r\n")), Some(Way::Framework));
    }
}
