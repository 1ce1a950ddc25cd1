//! The Pingora glue, and the only module that knows Pingora. Each request
//! becomes a [`web::Request`]; [`web::handle`] decides; this module writes
//! riegel's own replies, or forwards to the portal with the identity headers
//! after removing every client-sent copy of them.
//!
//! Connections are served by [`front::Front`]: it reads each request head
//! itself, serves bodiless GET/HEAD requests (most clicks) on Pingora's
//! HTTP/1 sessions directly, and hands everything else, head included, to
//! Pingora's proxy framework with [`Gateway`] as its `ProxyHttp`.

use std::cell::Cell;
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::apps::ServerApp;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::protocols::Stream;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{BackgroundService, GenBackgroundService};
use pingora::services::listening::Service;
use pingora::services::ServiceReadyNotifier;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

mod direct;
mod front;
mod h1;
mod moved;
mod wait;

use crate::auth::session::strip_cookie;
use crate::sched::{self, Policy};
use crate::web::headers::{client_ip, headers_to_strip, same_header};
use crate::web::{self, Identity, Method, Outcome, Reply, Services};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot resolve upstream {0}: {1}")]
    Resolve(String, String),
    #[error("TLS listener: {0}")]
    Tls(String),
}

/// What both ways of serving a request share; one for all shards.
pub(crate) struct Core {
    services: Arc<Services>,
    /// Leaked once at start-up: `&'static str` header names cost Pingora no
    /// allocation per request.
    identity_headers: [&'static str; 3],
    strip_cookies: [String; 2],
    tls_listener: bool,
    /// The portal; its options carry the connect, read, write and idle
    /// timeouts.
    peer: HttpPeer,
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

/// The portal as Pingora's peer, with the configured timeouts.
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
    Ok(peer)
}

/// An IP address from a socket address Pingora recorded (unspecified when
/// there is none, e.g. a Unix socket).
fn inet_ip(addr: Option<&pingora::protocols::l4::socket::SocketAddr>) -> IpAddr {
    addr.and_then(|a| a.as_inet()).map(|a| a.ip()).unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// The client's address as the socket sees it.
fn peer_ip(session: &ServerSession) -> IpAddr {
    inet_ip(session.client_addr())
}

impl Core {
    fn new(services: Arc<Services>, tls_listener: bool, peer: HttpPeer) -> Self {
        let h = &services.cfg.headers;
        Self {
            identity_headers: [leak(&h.user), leak(&h.email), leak(&h.name)],
            strip_cookies: [services.cookie_name.clone(), services.csrf_cookie_name.clone()],
            tls_listener,
            peer,
            services,
        }
    }

    /// The client's address after the trusted-proxy rules; `xff`: the
    /// request's X-Forwarded-For values.
    fn resolve_client_ip(&self, peer: IpAddr, xff: &[&str]) -> IpAddr {
        let trusted = &self.services.cfg.server.trusted_proxies;
        if trusted.is_empty() {
            return peer;
        }
        client_ip(peer, xff, trusted)
    }

    /// X-Forwarded-* for the portal: a trusted proxy's values are kept and
    /// extended, anyone else's replaced. `prev_xff`, `proto` and
    /// `fwd_host` are the request's own X-Forwarded-For, -Proto and -Host,
    /// `host` its Host.
    fn forwarded(&self, peer: IpAddr, client: IpAddr, prev_xff: &[&str], proto: Option<&str>, fwd_host: Option<&str>, host: Option<&str>) -> Forwarded {
        let trusted = self.services.cfg.server.trusted_proxies.iter().any(|n| n.contains(&peer));
        let xff = if trusted && !prev_xff.is_empty() { format!("{}, {peer}", prev_xff.join(", ")) } else { client.to_string() };
        let proto = match (trusted, proto) {
            (true, Some("https")) => "https",
            (true, Some("http")) => "http",
            _ if self.tls_listener => "https",
            _ => "http",
        };
        let host = if trusted { fwd_host.or(host) } else { host }.map(str::to_string);
        Forwarded { xff, proto, host }
    }

    /// The request as [`web::handle`] sees it.
    fn web_request<'a>(&self, h: &'a RequestHeader, client_ip: IpAddr, body: &'a [u8]) -> web::Request<'a> {
        web::Request {
            method: method_of(&h.method),
            path: h.uri.path(),
            query: h.uri.query(),
            cookie: header_str(h, "cookie"),
            origin: header_str(h, "origin"),
            sec_fetch_site: header_str(h, "sec-fetch-site"),
            content_type: header_str(h, "content-type"),
            user_agent: header_str(h, "user-agent"),
            accept_language: header_str(h, "accept-language"),
            client_ip,
            body,
        }
    }

    /// The request as the portal gets it: client-sent identity headers and
    /// riegel's cookies removed, the identity and X-Forwarded-* added.
    /// `peer` is the socket's address, `client` the one after the
    /// trusted-proxy rules.
    fn prepare_upstream(&self, peer: IpAddr, client: IpAddr, identity: Option<&Identity>, req: &mut RequestHeader) -> Result<()> {
        // 1. Remove every client-sent copy of the identity headers, in any
        //    spelling, and whatever the client names in Connection.
        let ids = self.identity_headers;
        let strip = {
            let present: Vec<&str> = req.headers.keys().map(|k| k.as_str()).collect();
            let conn = req.headers.get_all("connection").iter().filter_map(|v| v.to_str().ok());
            headers_to_strip(present.iter().copied(), conn, &ids)
        };
        for name in &strip {
            req.remove_header(name.as_str());
        }
        // The X-Forwarded-* riegel sends, from what is left; then every
        // spelling of the client's own forwarding headers goes, and any
        // `Content_Length`-like name a `_`-folding server would misread.
        let fwd = {
            let prev: Vec<&str> = req.headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
            let host = header_str(req, "host").or_else(|| req.uri.host());
            self.forwarded(peer, client, &prev, header_str(req, "x-forwarded-proto"), header_str(req, "x-forwarded-host"), host)
        };
        let spoofable: Vec<String> = req
            .headers
            .keys()
            .map(|k| k.as_str())
            .filter(|n| {
                h1::FORWARDING.iter().any(|f| same_header(n, f)) || h1::folded_framing(n)
            })
            .map(str::to_string)
            .collect();
        for name in &spoofable {
            req.remove_header(name.as_str());
        }
        // 2. riegel's own cookies never reach the portal (the header is only
        //    rewritten when one of them is in it).
        let ours = req
            .headers
            .get_all("cookie")
            .iter()
            .any(|v| self.strip_cookies.iter().any(|n| memchr_contains(v.as_bytes(), n.as_bytes())));
        let cookies: Vec<String> = if ours {
            req.headers.get_all("cookie").iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect()
        } else {
            Vec::new()
        };
        if !cookies.is_empty() {
            req.remove_header("cookie");
            let names = [self.strip_cookies[0].as_str(), self.strip_cookies[1].as_str()];
            let kept: Vec<String> = cookies.iter().filter_map(|c| strip_cookie(c, &names)).collect();
            if !kept.is_empty() {
                req.insert_header("cookie", kept.join("; "))?;
            }
        }
        // 3. The identity.
        if let Some(id) = identity {
            req.insert_header(ids[0], id.user())?;
            req.insert_header(ids[1], id.email())?;
            req.insert_header(ids[2], id.name())?;
        }
        // 4. X-Forwarded-*.
        req.insert_header("x-forwarded-for", fwd.xff)?;
        req.insert_header("x-forwarded-proto", fwd.proto)?;
        match fwd.host {
            Some(h) => req.insert_header("x-forwarded-host", h)?,
            None => {
                req.remove_header("x-forwarded-host");
            }
        }
        Ok(())
    }

    /// Answers a request that could not be forwarded: the status it gets
    /// (0: none, the client is gone), with riegel's error page when nothing
    /// has been written yet. The connection is not reused afterwards.
    async fn fail(&self, session: &mut ServerSession, e: &Error) -> u16 {
        let code = failure_status(e);
        if code > 0 && session.response_written().is_none() {
            let reply = match code {
                502 | 504 => web::upstream_error_page(&self.services, code),
                400 => web::error_page(&self.services, 400, "error_400"),
                _ => web::error_page(&self.services, 500, "error_500"),
            };
            if let Err(we) = write_reply(session, reply, false).await {
                tracing::debug!(error = %we, "could not send the error page");
            }
        }
        if code >= 500 {
            tracing::warn!(status = code, error = %e, "portal request failed");
        }
        code
    }
}

/// X-Forwarded-* values for the portal.
struct Forwarded {
    xff: String,
    proto: &'static str,
    host: Option<String>,
}

/// The status for a failed request: 502 when the portal cannot be reached
/// or answers nonsense, 504 when it is too slow, 400 for a bad request,
/// 0 when the client went away.
fn failure_status(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(c) => *c,
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

fn header_str<'a>(h: &'a RequestHeader, name: &str) -> Option<&'a str> {
    h.headers.get(name).and_then(|v| v.to_str().ok())
}

fn memchr_contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
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

/// Most names a request's `Connection` headers may list.
const MAX_CONNECTION_TOKENS: usize = 32;

/// Per-request state of the framework's way.
pub struct Ctx {
    identity: Option<Identity>,
    client_ip: Option<IpAddr>,
}

/// The `ProxyHttp` of Pingora's proxy framework: serves what the short way
/// does not (POST, bodies, upgrades, other methods).
pub struct Gateway(Arc<Core>);

impl Gateway {
    /// Reads a form body, at most `max` bytes, within the body timeout.
    async fn read_body(&self, session: &mut Session) -> std::result::Result<Bytes, u16> {
        let server = &self.0.services.cfg.server;
        let max = server.max_form_bytes;
        if let Some(len) = session.req_header().headers.get("content-length").and_then(|v| v.to_str().ok()?.parse::<usize>().ok()) {
            if len > max {
                return Err(413);
            }
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
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx { identity: None, client_ip: None }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let core = &*self.0;
        // Each name in Connection is checked against every header: a head
        // naming thousands would cost seconds of CPU.
        let tokens: usize = session.req_header().headers.get_all("connection").iter().map(|v| h1::connection_names(v.as_bytes())).sum();
        if tokens > MAX_CONNECTION_TOKENS {
            write_reply(session.as_downstream_mut(), web::error_page(&core.services, 400, "error_400"), false).await?;
            return Ok(true);
        }
        let ip = {
            let xff: Vec<&str> =
                session.req_header().headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
            core.resolve_client_ip(peer_ip(session), &xff)
        };
        ctx.client_ip = Some(ip);
        let method = method_of(&session.req_header().method);
        let ours = {
            let path = session.req_header().uri.path();
            path.strip_prefix(core.services.prefix.as_str()).is_some_and(|r| r.is_empty() || r.starts_with('/'))
        };
        let body = if ours && method == Method::Post {
            match self.read_body(session).await {
                Ok(b) => b,
                Err(status) => {
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
        let outcome = web::handle(&core.web_request(session.req_header(), ip, &body), &core.services).await;
        match outcome {
            Outcome::Reply(reply) => {
                write_reply(session.as_downstream_mut(), reply, method == Method::Head).await?;
                Ok(true)
            }
            Outcome::Forward(identity) => {
                ctx.identity = identity;
                Ok(false)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.0.peer.clone()))
    }

    async fn upstream_request_filter(&self, session: &mut Session, req: &mut RequestHeader, ctx: &mut Ctx) -> Result<()> {
        let peer = peer_ip(session);
        self.0.prepare_upstream(peer, ctx.client_ip.unwrap_or(peer), ctx.identity.as_ref(), req)
    }

    fn fail_to_connect(&self, _session: &mut Session, _peer: &HttpPeer, _ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
        // One upstream: a failed connect is answered at once, never retried.
        e.set_retry(false);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy {
        let code = self.0.fail(session.as_downstream_mut(), e).await;
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    /// What Pingora puts into its own log lines: no query string (it may
    /// carry secrets) and no reset token.
    fn request_summary(&self, session: &Session, _ctx: &Ctx) -> String {
        let h = session.req_header();
        format!("{} {}", h.method, web::loggable_path(&self.0.services.prefix, h.uri.path()))
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, _ctx: &mut Ctx) {
        let status = session.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
        let h = session.req_header();
        log_request(&self.0.services, h.method.as_str(), h.uri.path(), status, e.map(|e| e.etype().as_str()));
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
/// TCP connection moves to the shard's reactor too ([`moved`]).
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
    let cfg = services.cfg.clone();
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
    let core = Arc::new(Core::new(services.clone(), cfg.tls.is_some(), upstream_peer(&cfg.upstream)?));
    let front = || {
        let proxy = pingora::proxy::http_proxy(&server_conf, Gateway(core.clone()));
        front::Front::new(core.clone(), proxy, open.clone())
    };
    // 4 KiB read buffers instead of Pingora's 64 KiB: request headers and
    // login forms are small (larger ones take more reads), and idle
    // keep-alive connections stay cheap.
    let buffers = L4BufferSettings::new(4 * 1024, 1460);
    let mut listener = ListenerConfig::tcp(cfg.listen.to_string()).l4_buffer(buffers);
    if let Some(t) = &cfg.tls {
        let tls = TlsSettings::intermediate(&t.cert_file.display().to_string(), &t.key_file.display().to_string())
            .map_err(|e| ProxyError::Tls(e.to_string()))?;
        listener = listener.tls(tls);
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
    let args = match shutdown {
        Some(s) => RunArgs { shutdown_signal: s },
        None => RunArgs::default(),
    };
    server.run(args);
    Ok(())
}
