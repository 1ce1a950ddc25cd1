//! The Pingora glue, and the only module that knows Pingora. Each request
//! becomes a [`web::Request`]; [`web::handle`] decides; this module writes
//! riegel's own replies, or forwards to the portal what the one header
//! policy (`proxy::policy`) lets through, with riegel's X-Forwarded-* and the
//! identity.
//!
//! Connections are served by `front::Front`: it reads each request head
//! itself, serves bodiless GET/HEAD requests (most clicks) on Pingora's
//! HTTP/1 sessions directly, and hands everything else, head included, to
//! Pingora's proxy framework with [`Gateway`] as its `ProxyHttp`.

use std::cell::Cell;
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::apps::ServerApp;
use pingora::http::{IntoCaseHeaderName, RequestHeader, ResponseHeader};
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::protocols::Stream;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{BackgroundService, GenBackgroundService};
use pingora::services::listening::Service;
use pingora::services::ServiceReadyNotifier;
use pingora::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use pingora::{Error, ErrorType, OrErr, Result};

mod certs;
mod direct;
mod front;
#[doc(hidden)]
pub mod fuzzing;
mod h1;
mod moved;
mod policy;
mod portal;
mod wait;

use crate::sched::{self, Policy};
use crate::web::{self, Identity, Method, Outcome, Reply, Services};
use policy::{check_target, Field, HeaderPolicy, Put, Refusal, Sink};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot resolve upstream {0}: {1}")]
    Resolve(String, String),
    #[error("TLS listener: {0}")]
    Tls(String),
}

/// What both ways of serving a request share; one for all shards, built
/// from one configuration and replaced whole by a reload ([`Live`]).
pub(crate) struct Core {
    services: Arc<Services>,
    /// The one header policy both ways apply.
    policy: HeaderPolicy,
    /// The portal; its options carry the connect, read, write and idle
    /// timeouts.
    peer: HttpPeer,
    /// The short way to the portal with its per-thread pools; kept over a
    /// reload that changes neither the portal nor the write timeout.
    direct: Arc<direct::Direct>,
}

/// What the proxy serves new requests with: the [`Core`] of the running
/// configuration and the TLS listener's certificate. Each request takes
/// the core once (one atomic load and a reference count) and keeps it to
/// its end, so a reload never changes a request half-way and never drops a
/// connection.
pub struct Live {
    core: arc_swap::ArcSwap<Core>,
    certs: Option<Arc<certs::Certs>>,
}

impl Live {
    pub fn new(services: Arc<Services>) -> std::result::Result<Self, ProxyError> {
        let certs = match &services.cfg.tls {
            Some(t) => Some(Arc::new(certs::Certs::new(t)?)),
            None => None,
        };
        let core = Core::new(services, None)?;
        Ok(Self { core: arc_swap::ArcSwap::from_pointee(core), certs })
    }

    /// The core for one request.
    fn core(&self) -> Arc<Core> {
        self.core.load_full()
    }

    /// Whether `core` is still the running one (no reference taken).
    fn is_current(&self, core: &Arc<Core>) -> bool {
        Arc::ptr_eq(core, &self.core.load())
    }

    /// The services new requests are served with.
    pub fn services(&self) -> Arc<Services> {
        self.core.load().services.clone()
    }

    /// New requests (and new TLS handshakes) are served with `services`
    /// from now on; requests under way finish with what they started with.
    /// Everything is prepared (the portal's address resolved, the
    /// certificate read and checked against its key) before anything is
    /// replaced: on an error nothing changes. A certificate is taken only
    /// when the listener has TLS; whether it has is fixed at start.
    pub fn replace(&self, services: Arc<Services>) -> std::result::Result<(), ProxyError> {
        let cert = match (&self.certs, &services.cfg.tls) {
            (Some(_), Some(t)) => Some(certs::load(t)?),
            _ => None,
        };
        let core = Core::new(services, Some(&self.core.load()))?;
        if let (Some(certs), Some(cert)) = (&self.certs, cert) {
            certs.replace(cert);
        }
        self.core.store(Arc::new(core));
        Ok(())
    }
}

/// A client to the portal itself for `first_factor: portal` (login
/// replay, logout) outside a running proxy: the command line ends the
/// portal's sessions with it when it opens the store itself.
pub fn portal_client(cfg: &crate::config::Config) -> std::result::Result<Arc<dyn web::portal::PortalClient>, ProxyError> {
    Ok(Arc::new(portal::PortalHttp::new(upstream_peer(&cfg.upstream)?, &cfg.public_url)))
}

/// The portal as Pingora's peer, with the configured timeouts. Pingora's
/// own rules for the upstream request (hop-by-hop fields, names in
/// Connection, upgrades) are off: riegel's policy sees the client's fields
/// as they came and decides alone, the same on both ways.
fn upstream_peer(u: &crate::config::UpstreamConfig) -> std::result::Result<HttpPeer, ProxyError> {
    let addr = (u.host.as_str(), u.port)
        .to_socket_addrs()
        .map_err(|e| ProxyError::Resolve(u.host.clone(), e.to_string()))?
        .next()
        .ok_or_else(|| ProxyError::Resolve(u.host.clone(), "no address".into()))?;
    let mut peer = HttpPeer::new(addr, u.tls, u.sni.clone());
    peer.options.connection_timeout = Some(u.connect_timeout);
    peer.options.total_connection_timeout = Some(u.connect_timeout);
    peer.options.read_timeout = Some(u.read_timeout);
    peer.options.write_timeout = Some(u.write_timeout);
    peer.options.idle_timeout = Some(u.idle_timeout);
    peer.options.http_upstream_request_policy = HttpUpstreamRequestPolicy::preserve();
    Ok(peer)
}

/// An IP address from a socket address Pingora recorded (unspecified when
/// there is none, e.g. a Unix socket).
fn inet_ip(addr: Option<&pingora::protocols::l4::socket::SocketAddr>) -> IpAddr {
    addr.and_then(|a| a.as_inet()).map(|a| a.ip().to_canonical()).unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// The client's address as the socket sees it.
fn peer_ip(session: &ServerSession) -> IpAddr {
    inet_ip(session.client_addr())
}

/// A field of a request head as Pingora read it. `N` is the name as
/// Pingora keeps it (with its case, or a plain `HeaderName`).
struct PingoraField<'a, N> {
    case: &'a N,
    name: &'a [u8],
    value: &'a http::HeaderValue,
}

impl<N> Field for PingoraField<'_, N> {
    fn name(&self) -> &[u8] {
        self.name
    }
    fn value(&self) -> &[u8] {
        self.value.as_bytes()
    }
}

/// Something done with the fields of a request head as Pingora keeps them
/// (see [`with_fields`]); generic over the name type, which Pingora does
/// not export by name.
trait WithFields {
    type Out;
    fn with<N: Clone + IntoCaseHeaderName>(self, fields: &[PingoraField<'_, N>]) -> Self::Out;
}

/// Runs `w` over the fields of `h`, in the order Pingora keeps them (by
/// name, in the order each name first came).
fn with_fields<W: WithFields>(h: &RequestHeader, w: W) -> W::Out {
    if h.has_case() {
        let f: Vec<_> = h.case_header_iter().map(|(n, value)| PingoraField { case: n, name: n.as_slice(), value }).collect();
        w.with(&f)
    } else {
        let f: Vec<_> = h.headers.iter().map(|(n, value)| PingoraField { case: n, name: n.as_str().as_bytes(), value }).collect();
        w.with(&f)
    }
}

/// The client's address, or why the head is refused.
struct ClientOf<'a> {
    policy: &'a HeaderPolicy,
    peer: IpAddr,
}

impl WithFields for ClientOf<'_> {
    type Out = std::result::Result<IpAddr, Refusal>;
    fn with<N: Clone + IntoCaseHeaderName>(self, fields: &[PingoraField<'_, N>]) -> Self::Out {
        self.policy.survey(self.peer, fields).map(|s| s.client)
    }
}

/// The portal's head, into `out`: see [`Core::prepare`].
struct Prepare<'a> {
    core: &'a Core,
    peer: IpAddr,
    identity: Option<&'a Identity>,
    /// Portal login mode: the client's cookies and the session's jar.
    cookie: (Option<&'a [u8]>, Option<&'a str>),
    websocket: bool,
    out: &'a mut RequestHeader,
}

impl WithFields for Prepare<'_> {
    type Out = Result<()>;
    fn with<N: Clone + IntoCaseHeaderName>(self, fields: &[PingoraField<'_, N>]) -> Self::Out {
        self.core.prepare(self.peer, fields, self.identity, self.cookie, self.websocket, self.out)
    }
}

/// Pingora's request header as the framework's way's sink.
struct HeaderSink<'r> {
    req: &'r mut RequestHeader,
    scratch: Vec<u8>,
}

impl<N: Clone + IntoCaseHeaderName> Sink<PingoraField<'_, N>> for HeaderSink<'_> {
    fn keep(&mut self, f: &PingoraField<'_, N>) -> Result<()> {
        self.req.append_header(f.case.clone(), f.value.clone()).map(|_| ())
    }
}

impl Put for HeaderSink<'_> {
    type Error = Box<Error>;

    fn put(&mut self, name: &[u8], value: impl FnOnce(&mut Vec<u8>) -> bool) -> Result<()> {
        self.scratch.clear();
        if !value(&mut self.scratch) {
            return Ok(());
        }
        let v = http::HeaderValue::from_bytes(&self.scratch).or_err(ErrorType::InvalidHTTPHeader, "header value")?;
        self.req.append_header(Bytes::copy_from_slice(name), v).map(|_| ())
    }
}

impl Core {
    /// The core for `services`; the short way's pools of `previous` are
    /// kept when the portal and the write timeout are the same.
    fn new(services: Arc<Services>, previous: Option<&Core>) -> std::result::Result<Self, ProxyError> {
        let cfg = &services.cfg;
        let h = &cfg.headers;
        let policy = HeaderPolicy::new(
            [&h.user, &h.email, &h.name],
            [services.cookie_name.clone(), services.csrf_cookie_name.clone()],
            cfg.server.trusted_proxies.clone(),
            cfg.tls.is_some(),
        )
        .with_portal_cookies(cfg.portal_login.as_ref().map(|p| p.session_cookies.clone()).unwrap_or_default());
        let peer = upstream_peer(&cfg.upstream)?;
        let write_timeout = cfg.server.write_timeout;
        let portal_cookies = cfg.portal_login.as_ref().map(|p| p.session_cookies.clone()).unwrap_or_default();
        let direct = match previous {
            Some(p)
                if p.services.cfg.upstream == cfg.upstream
                    && p.services.cfg.server.write_timeout == write_timeout
                    && p.direct.portal_cookies() == portal_cookies.as_slice() =>
            {
                p.direct.clone()
            }
            _ => Arc::new(direct::Direct::new(peer.clone(), write_timeout, portal_cookies)),
        };
        if cfg.portal_login.is_some() {
            // The login replay and logout calls go to the same upstream.
            let _ = services.portal.set(Arc::new(portal::PortalHttp::new(peer.clone(), &cfg.public_url)));
        }
        Ok(Self { policy, peer, services, direct })
    }

    /// The portal's head on the framework's way, into `out` (a fresh
    /// request header): the policy's fields, forwarding and identity, in
    /// the same order as the short way writes them, then the body's
    /// framing as the client sent it (Pingora frames the body by it) and a
    /// WebSocket upgrade, when it is one.
    fn prepare<N: Clone + IntoCaseHeaderName>(
        &self,
        peer: IpAddr,
        fields: &[PingoraField<'_, N>],
        identity: Option<&Identity>,
        cookie: (Option<&[u8]>, Option<&str>),
        websocket: bool,
        out: &mut RequestHeader,
    ) -> Result<()> {
        let survey = self.policy.survey(peer, fields).or_err(ErrorType::InvalidHTTPHeader, "refused")?;
        let mut sink = HeaderSink { req: out, scratch: Vec::new() };
        self.policy.write_fields(fields, &survey, &mut sink)?;
        self.policy.write_forwarding(&survey, &mut sink)?;
        if let Some(id) = identity {
            if !HeaderPolicy::identity_ok(id) {
                return Error::e_explain(ErrorType::HTTPStatus(500), "identity value with control characters");
            }
            self.policy.write_identity(id, &mut sink)?;
        }
        self.policy.write_cookie(cookie.0, cookie.1, &mut sink)?;
        for f in fields {
            if f.name.eq_ignore_ascii_case(b"content-length") || f.name.eq_ignore_ascii_case(b"transfer-encoding") {
                sink.keep(f)?;
            }
        }
        if websocket {
            sink.put(b"connection", |v| {
                v.extend_from_slice(b"Upgrade");
                true
            })?;
            sink.put(b"upgrade", |v| {
                v.extend_from_slice(b"websocket");
                true
            })?;
        }
        Ok(())
    }

    /// Answers a request that could not be forwarded: the status it gets
    /// (0: none, the client is gone), with riegel's error page when nothing
    /// has been written yet. The connection is not reused afterwards.
    /// Logged with the error's kind only: its text can hold bytes of the
    /// request or the portal's answer (cookies).
    async fn fail(&self, session: &mut ServerSession, e: &Error) -> u16 {
        let code = failure_status(e);
        if code > 0 && session.response_written().is_none() {
            let reply = match code {
                502 | 504 => web::upstream_error_page(&self.services, code),
                400 => web::error_page(&self.services, 400, "error_400"),
                408 => web::error_page(&self.services, 408, "error_400"),
                _ => web::error_page(&self.services, 500, "error_500"),
            };
            if let Err(we) = write_reply(session, reply, false).await {
                tracing::debug!(error = %we.etype().as_str(), "could not send the error page");
            }
        }
        if code >= 500 {
            tracing::warn!(status = code, error = e.etype().as_str(), source = e.esource().as_str(), "portal request failed");
        }
        code
    }
}

/// The status for a failed request: 408 when the client's body is too
/// slow, 502 when the portal cannot be reached or answers nonsense, 504
/// when it is too slow, 400 for a bad request, 0 when the client went away.
fn failure_status(e: &Error) -> u16 {
    let downstream = *e.esource() == pingora::ErrorSource::Downstream;
    match e.etype() {
        ErrorType::HTTPStatus(c) => *c,
        ErrorType::ReadTimedout if downstream => 408,
        ErrorType::WriteTimedout if downstream => 0,
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
        ErrorType::ConnectTimedout | ErrorType::ConnectRefused | ErrorType::ConnectNoRoute | ErrorType::ConnectError => 502,
        _ => match e.esource() {
            pingora::ErrorSource::Upstream => 502,
            pingora::ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            _ => 500,
        },
    }
}

fn method_of(m: &http::Method) -> Method {
    match *m {
        http::Method::GET => Method::Get,
        http::Method::HEAD => Method::Head,
        http::Method::POST => Method::Post,
        _ => Method::Other,
    }
}

/// The first field called `name`, when its value is UTF-8.
fn first_text<'a>(h: &'a RequestHeader, name: &str) -> Option<&'a str> {
    h.headers.get(name).and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
}

/// The Cookie fields' bytes, joined by `; ` into `joined` when there are
/// several (as the short way joins them).
fn cookie_bytes<'a>(h: &'a RequestHeader, joined: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    let mut all = h.headers.get_all("cookie").iter();
    let first = all.next()?;
    let Some(second) = all.next() else { return Some(first.as_bytes()) };
    joined.extend_from_slice(first.as_bytes());
    for v in std::iter::once(second).chain(all) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    Some(joined)
}

/// Writes one of riegel's own replies, header and body in one go.
async fn write_reply(session: &mut ServerSession, reply: Reply, head_only: bool) -> Result<()> {
    let mut h = ResponseHeader::build(reply.status, Some(reply.headers.len() + 1))?;
    for (name, value) in &reply.headers {
        h.append_header(*name, value.as_str())?;
    }
    h.insert_header("content-length", reply.body.len().to_string())?;
    let body = if head_only { Bytes::new() } else { reply.body };
    session.response_duplex_vec(vec![HttpTask::Header(Box::new(h), false), HttpTask::Body(Some(body), true)]).await?;
    Ok(())
}

/// Debug log line of a finished request: path only (queries may carry
/// tokens; cookies are never logged), no reset token.
fn log_request(services: &Services, method: &str, path: &str, status: u16, error: Option<&str>) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        let path = web::loggable_path(&services.prefix, path);
        tracing::debug!(method, path = %path, status, error, "request");
    }
}

/// Per-request state of the framework's way.
pub struct Ctx {
    /// The configuration this request is served with, from its start.
    core: Arc<Core>,
    identity: Option<Identity>,
    /// Portal login mode: the session's portal cookies (`Cookie` value).
    jar: Option<String>,
    /// When a forwarded body must have arrived whole.
    body_deadline: Option<Instant>,
    /// When the portal request began (for `riegel_upstream_duration_seconds`).
    upstream_start: Option<Instant>,
}

/// Whether `path` is one of riegel's own (`/_riegel`, `/_riegel/...`).
fn own_path(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix).is_some_and(|r| r.is_empty() || r.starts_with('/'))
}

/// Counts what became of a request in `riegel_requests_total` (both ways).
fn count_outcome(services: &Services, path: &str, outcome: &Outcome) {
    use crate::metrics::RequestOutcome as O;
    let o = match outcome {
        Outcome::Forward(_) => O::Forwarded,
        Outcome::Reply(r) if r.status == 303 && !own_path(&services.prefix, path) => O::LoginRedirect,
        Outcome::Reply(_) => O::OwnPage,
    };
    crate::metrics::request(o);
}

/// The `ProxyHttp` of Pingora's proxy framework: serves what the short way
/// does not (POST, bodies, upgrades, other methods).
pub struct Gateway(Arc<Live>);

impl Gateway {
    /// Reads a form body, at most `max` bytes, within the body timeout.
    async fn read_body(core: &Core, session: &mut Session) -> std::result::Result<Bytes, u16> {
        let server = &core.services.cfg.server;
        let max = server.max_form_bytes;
        let length = session.req_header().headers.get("content-length").and_then(|v| std::str::from_utf8(v.as_bytes()).ok()?.parse::<usize>().ok());
        if length.is_some_and(|len| len > max) {
            return Err(413);
        }
        let expects_continue =
            session.req_header().headers.get("expect").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue && session.as_downstream_mut().write_continue_response().await.is_err() {
            return Err(400);
        }
        let read = async {
            let mut buf = BytesMut::new();
            loop {
                match session.read_request_body().await {
                    Ok(Some(chunk)) => {
                        if buf.len() + chunk.len() > max {
                            return Err(413);
                        }
                        buf.extend_from_slice(&chunk);
                    }
                    Ok(None) => return Ok(buf.freeze()),
                    Err(_) => return Err(400),
                }
            }
        };
        match tokio::time::timeout(server.body_timeout, read).await {
            Ok(r) => r,
            Err(_) => Err(408),
        }
    }

    /// Answers a refused head with 400; the connection is not reused.
    async fn refuse(core: &Core, session: &mut Session, why: Refusal) -> Result<bool> {
        tracing::debug!(reason = %why, "request refused");
        crate::metrics::request(crate::metrics::RequestOutcome::Refused);
        session.set_keepalive(None);
        write_reply(session.as_downstream_mut(), web::error_page(&core.services, 400, "error_400"), false).await?;
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx { core: self.0.core(), identity: None, jar: None, body_deadline: None, upstream_start: None }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let core = ctx.core.clone();
        let core = &*core;
        // The policy reads the head as Pingora read it, before anything is
        // removed. Every HTTP/1 head has passed `h1::way` already; this
        // covers any other.
        let peer = peer_ip(session);
        let decided = {
            let h = session.req_header();
            check_target(h.method.as_str().as_bytes(), h.raw_path()).and_then(|()| with_fields(h, ClientOf { policy: &core.policy, peer }))
        };
        let ip = match decided {
            Ok(ip) => ip,
            Err(why) => return Self::refuse(core, session, why).await,
        };
        let method = method_of(&session.req_header().method);
        let ours = own_path(&core.services.prefix, session.req_header().uri.path());
        let body = if ours && method == Method::Post {
            match Self::read_body(core, session).await {
                Ok(b) => b,
                Err(status) => {
                    crate::metrics::request(crate::metrics::RequestOutcome::Refused);
                    let key = match status {
                        413 => "error_413",
                        _ => "error_400",
                    };
                    let reply = web::error_page(&core.services, status, key);
                    write_reply(session.as_downstream_mut(), reply, false).await?;
                    return Ok(true);
                }
            }
        } else {
            Bytes::new()
        };
        let outcome = {
            let h = session.req_header();
            let mut joined = Vec::new();
            let req = web::Request {
                method,
                path: h.uri.path(),
                query: h.uri.query(),
                cookie: cookie_bytes(h, &mut joined),
                origin: first_text(h, "origin"),
                sec_fetch_site: first_text(h, "sec-fetch-site"),
                content_type: first_text(h, "content-type"),
                user_agent: first_text(h, "user-agent"),
                accept_language: first_text(h, "accept-language"),
                client_ip: ip,
                body: &body,
            };
            let outcome = web::handle(&req, &core.services).await;
            count_outcome(&core.services, req.path, &outcome);
            outcome
        };
        match outcome {
            Outcome::Reply(reply) => {
                write_reply(session.as_downstream_mut(), reply, method == Method::Head).await?;
                Ok(true)
            }
            Outcome::Forward(identity) => {
                if core.policy.portal_mode() {
                    ctx.jar = identity.as_ref().and_then(|id| web::portal::cookie_for(&core.services, id));
                }
                ctx.identity = identity;
                if !session.is_body_empty() {
                    // The whole body within the body timeout: each read
                    // may take at most what is left of it
                    // (`request_body_filter`), so a drip is cut too.
                    let limit = core.services.cfg.server.body_timeout;
                    ctx.body_deadline = Some(Instant::now() + limit);
                    session.set_read_timeout(Some(limit));
                }
                Ok(false)
            }
        }
    }

    async fn request_body_filter(&self, session: &mut Session, _body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut Ctx) -> Result<()> {
        let Some(deadline) = ctx.body_deadline else { return Ok(()) };
        if end_of_stream || session.was_upgraded() {
            ctx.body_deadline = None;
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::explain(ErrorType::ReadTimedout, "request body slower than server.body_timeout").into_down());
        }
        session.set_read_timeout(Some(left));
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        ctx.upstream_start = Some(Instant::now());
        Ok(Box::new(ctx.core.peer.clone()))
    }

    async fn upstream_response_filter(&self, _session: &mut Session, _answer: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        if let Some(start) = ctx.upstream_start.take() {
            crate::metrics::upstream_duration(start.elapsed());
        }
        Ok(())
    }

    /// The portal's head, written afresh from the client's fields as
    /// Pingora read them (`session.req_header()`, untouched), not from
    /// `req`.
    async fn upstream_request_filter(&self, session: &mut Session, req: &mut RequestHeader, ctx: &mut Ctx) -> Result<()> {
        let peer = peer_ip(session);
        let original = session.req_header();
        let websocket = original.version == http::Version::HTTP_11
            && original.headers.get("upgrade").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let mut fresh = RequestHeader::build(req.method.clone(), req.raw_path(), Some(original.headers.len() + 6))?;
        fresh.set_version(http::Version::HTTP_11);
        let mut joined = Vec::new();
        let cookie = (cookie_bytes(original, &mut joined), ctx.jar.as_deref());
        with_fields(original, Prepare { core: &ctx.core, peer, identity: ctx.identity.as_ref(), cookie, websocket, out: &mut fresh })?;
        // HTTP/2 names the host in `:authority`, often without a Host
        // field: the portal (HTTP/1.1) gets it as Host.
        if original.version == http::Version::HTTP_2 && fresh.headers.get(http::header::HOST).is_none() {
            if let Some(a) = original.uri.authority() {
                fresh.insert_header(http::header::HOST, a.as_str())?;
            }
        }
        *req = fresh;
        Ok(())
    }

    /// Portal login mode: the portal's session cookies in an answer go to
    /// the session's sealed jar, never to the browser; other cookies pass.
    async fn response_filter(&self, _session: &mut Session, upstream_response: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        let policy = &ctx.core.policy;
        if !policy.portal_mode() {
            return Ok(());
        }
        let all: Vec<http::HeaderValue> = upstream_response.headers.get_all("set-cookie").iter().cloned().collect();
        if !all.iter().any(|v| policy.is_portal_set_cookie(v.as_bytes())) {
            return Ok(());
        }
        upstream_response.remove_header("set-cookie");
        let mut held = Vec::new();
        for v in all {
            if policy.is_portal_set_cookie(v.as_bytes()) {
                held.push(v.as_bytes().to_vec());
            } else {
                upstream_response.append_header("set-cookie", v)?;
            }
        }
        web::portal::take_set_cookies(&ctx.core.services, ctx.identity.as_ref(), &held).await;
        Ok(())
    }

    fn fail_to_connect(&self, _session: &mut Session, _peer: &HttpPeer, _ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
        // One upstream: a failed connect is answered at once, never retried.
        e.set_retry(false);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = ctx.core.fail(session.as_downstream_mut(), e).await;
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    /// riegel logs failures itself (`Core::fail`, `logging`): Pingora's own
    /// lines carry the error's text, which can hold request or answer bytes.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error) -> bool {
        true
    }

    fn suppress_proxy_warn_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error, _context: ProxyWarnLogContext) -> bool {
        true
    }

    /// What Pingora puts into its own log lines: no query string (it may
    /// carry secrets) and no reset token.
    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        let h = session.req_header();
        format!("{} {}", h.method, web::loggable_path(&ctx.core.services.prefix, h.uri.path()))
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
        let h = session.req_header();
        log_request(&ctx.core.services, h.method.as_str(), h.uri.path(), status, e.map(|e| e.etype().as_str()));
    }
}

/// The short way's work on one request head (parse, header policy, the
/// portal's head), for benches/riegel.rs.
#[doc(hidden)]
pub struct ShortHeadBench(HeaderPolicy);

impl ShortHeadBench {
    pub fn new(identity: [&str; 3], cookies: [&str; 2]) -> Self {
        Self(HeaderPolicy::new(identity, cookies.map(str::to_string), Vec::new(), false))
    }

    /// The length of the portal's head so far; 0 when `head` does not take
    /// the short way.
    pub fn short_head(&self, head: &[u8]) -> usize {
        match h1::way(head, &self.0, IpAddr::from([127, 0, 0, 1])) {
            Some(h1::Way::Short(h)) => h.upstream.len(),
            _ => 0,
        }
    }
}

/// A shutdown signal for embedding riegel (tests): fires when the sender
/// says so.
pub struct ChannelShutdown(pub tokio::sync::Mutex<tokio::sync::oneshot::Receiver<()>>);

#[async_trait]
impl ShutdownSignalWatch for ChannelShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.lock().await;
        let _ = (&mut *rx).await;
        ShutdownSignal::FastShutdown
    }
}

/// One shard: a single-threaded runtime of its own. Connections handed to
/// it stay there for their whole life, together with the app that serves
/// them and its upstream keep-alive pools.
struct Shard {
    handle: OnceLock<tokio::runtime::Handle>,
    /// `server.adaptive_scheduling`: see [`crate::sched`].
    adaptive: bool,
}

/// The Pingora service that owns a shard's runtime: it records the handle,
/// samples the shard every [`sched::SAMPLE_EVERY`] for its scheduling
/// class ([`sched::ShardRule`]) and waits for shutdown.
struct ShardRuntime(Arc<Shard>);

thread_local! {
    /// Request heads read on this thread (a shard's runtime is one thread).
    static REQUESTS: Cell<u64> = const { Cell::new(0) };
}

/// Counts a request on the calling shard.
fn count_request() {
    REQUESTS.with(|r| r.set(r.get() + 1));
}

/// What the calling shard's runtime has done since it started.
fn shard_totals(handle: &tokio::runtime::Handle) -> (u64, u64) {
    (handle.metrics().worker_park_count(0), REQUESTS.with(Cell::get))
}

#[async_trait]
impl BackgroundService for ShardRuntime {
    async fn start_with_ready_notifier(&self, mut shutdown: ShutdownWatch, ready: ServiceReadyNotifier) {
        let handle = tokio::runtime::Handle::current();
        let _ = self.0.handle.set(handle.clone());
        ready.notify_ready();
        // This task runs on the shard's one thread: the policy set here is
        // that thread's.
        let mut adaptive = self.0.adaptive;
        let mut rule = sched::ShardRule::default();
        let mut tick = tokio::time::interval(sched::SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = (std::time::Instant::now(), shard_totals(&handle));
        while !*shutdown.borrow() {
            tokio::select! {
                changed = shutdown.changed() => if changed.is_err() { break },
                _ = tick.tick(), if adaptive => {
                    // The time of the reading, not the tick's deadline: the
                    // two counters cover exactly this interval.
                    let now = (std::time::Instant::now(), shard_totals(&handle));
                    let sample = sched::Sample {
                        interval: now.0.duration_since(last.0),
                        parks: now.1 .0.saturating_sub(last.1 .0),
                        requests: now.1 .1.saturating_sub(last.1 .1),
                    };
                    last = now;
                    let was = rule.policy();
                    if let Some(want) = rule.next(&sample) {
                        if sched::set_this_thread(want) {
                            tracing::debug!(target: "riegel::sched", ?want, ?sample, "shard scheduling policy");
                        } else {
                            let error = std::io::Error::last_os_error();
                            tracing::info!(?want, %error, "the system refused a scheduling policy; adaptive scheduling ends for this shard");
                            rule.refused(was);
                            adaptive = false;
                        }
                    }
                }
            }
        }
        // Shutting down: the grace period runs in the default class.
        if rule.policy() != Policy::Normal && !sched::set_this_thread(Policy::Normal) {
            tracing::debug!("could not put a shard back into SCHED_OTHER");
        }
    }
}

/// Accepts on the listener and hands each new connection, round robin, to a
/// shard, where it is served by that shard's app until it closes. A plain
/// TCP connection moves to the shard's reactor too (`moved`).
pub struct Dispatch<A> {
    shards: Vec<(Arc<Shard>, Arc<A>)>,
    next: AtomicUsize,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Dispatch<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        let (shard, app) = &self.shards[i];
        let app = app.clone();
        let shutdown = shutdown.clone();
        let stream = moved::detach(stream);
        let serve = async move {
            let stream = match stream {
                Ok(fd) => match moved::attach(fd) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "could not move a client connection to its shard");
                        return;
                    }
                },
                Err(stream) => stream,
            };
            let mut next = A::process_new(&app, stream, &shutdown).await;
            while let Some(s) = next {
                next = A::process_new(&app, s, &shutdown).await;
            }
        };
        match shard.handle.get() {
            Some(h) => {
                h.spawn(serve);
            }
            // The listener waits for the shards to be ready; should one not
            // be, the connection is served here rather than dropped.
            None => serve.await,
        }
        None
    }

    async fn cleanup(&self) {
        for (_, app) in &self.shards {
            app.cleanup().await;
        }
    }
}

/// Builds the Pingora server for `services` and runs it until `shutdown`
/// fires (SIGTERM/SIGINT in `riegel serve`).
///
/// With `server.work_stealing: false` (the default) riegel runs one shard per
/// thread (see [`Dispatch`]): a request, its upstream connection and
/// Pingora's idle watcher of that connection then stay on one thread. With
/// one proxy shared by several runtimes, Pingora parks every released
/// upstream connection's watcher on a random runtime: a cross-thread wake-up
/// and back on almost every proxied request.
pub fn run(services: Arc<Services>, shutdown: Option<Box<dyn ShutdownSignalWatch>>) -> std::result::Result<(), ProxyError> {
    run_live(Arc::new(Live::new(services)?), shutdown)
}

/// [`run`] with what it serves in `live`, which a reload replaces
/// ([`Live::replace`]). The listen address, TLS on or off, the threads and
/// the runtime's kind are those of the configuration `live` starts with.
pub fn run_live(live: Arc<Live>, shutdown: Option<Box<dyn ShutdownSignalWatch>>) -> std::result::Result<(), ProxyError> {
    let cfg = live.services().cfg.clone();
    let shards = if cfg.server.work_stealing { 1 } else { cfg.server.threads };
    // Each pooled upstream connection holds a 64 KiB read buffer (not
    // configurable in Pingora 0.9): 128 connections in all, spread over the
    // shards.
    let conf = ServerConf {
        threads: cfg.server.threads,
        work_stealing: cfg.server.work_stealing,
        grace_period_seconds: Some(5),
        graceful_shutdown_timeout_seconds: Some(5),
        upstream_keepalive_pool_size: (128 / shards).max(16),
        // Pingora counts tries, not retries: 1 means "no retry".
        max_retries: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let open = Arc::new(AtomicUsize::new(0));
    let server_conf = server.configuration.clone();
    // HTTP/2 (offered by ALPN on the TLS listener): an idle connection is
    // closed after the header timeout, as an idle HTTP/1.1 one is.
    let mut h2 = pingora::apps::HttpServerOptions::default();
    h2.h2_idle_timeout = Some(cfg.server.header_timeout);
    let front = || {
        let mut proxy = pingora::proxy::http_proxy(&server_conf, Gateway(live.clone()));
        proxy.server_options = Some(h2.clone());
        front::Front::new(live.clone(), proxy, open.clone())
    };
    // 4 KiB read buffers instead of Pingora's 64 KiB: request headers and
    // login forms are small (larger ones take more reads), and idle
    // keep-alive connections stay cheap.
    let buffers = L4BufferSettings::new(4 * 1024, 1460);
    let mut listener = ListenerConfig::tcp(cfg.listen.to_string()).l4_buffer(buffers);
    if let Some(c) = &live.certs {
        listener = listener.tls(certs::settings(c.clone())?);
    }
    if cfg.server.work_stealing {
        let mut service = Service::new("riegel".to_string(), front());
        service.add_listener(listener);
        server.add_service(service);
    } else {
        let mut parts = Vec::with_capacity(shards);
        let mut handles = Vec::with_capacity(shards);
        for i in 0..shards {
            let shard = Arc::new(Shard { handle: OnceLock::new(), adaptive: cfg.server.adaptive_scheduling });
            let mut bg = GenBackgroundService::new(format!("riegel shard {i}"), Arc::new(ShardRuntime(shard.clone())));
            bg.threads = Some(1);
            handles.push(server.add_service(bg));
            parts.push((shard, Arc::new(front())));
        }
        let mut service = Service::new("riegel".to_string(), Dispatch { shards: parts, next: AtomicUsize::new(0) });
        // The listener thread only accepts and hands connections over.
        service.threads = Some(1);
        service.add_listener(listener);
        let listening = server.add_service(service);
        for h in &handles {
            listening.add_dependency(h);
        }
    }
    if let Some(at) = cfg.metrics.listen {
        // Pingora's Prometheus service on a listener of its own, never the
        // public one (config refuses the same address).
        crate::metrics::init();
        let mut metrics = pingora_prometheus::prometheus_http_service();
        metrics.threads = Some(1);
        metrics.add_tcp(&at.to_string());
        server.add_service(metrics);
        tracing::info!(listen = %at, "metrics at /metrics");
    }
    let args = match shutdown {
        Some(s) => RunArgs { shutdown_signal: s },
        None => RunArgs::default(),
    };
    server.run(args);
    Ok(())
}
