//! riegel's routes and pages, without sockets: the proxy turns each HTTP
//! request into a [`Request`] and calls [`handle`], which answers with an
//! [`Outcome`]: a [`Reply`] to send, or [`Outcome::Forward`] to pass the
//! request on to the portal with an identity.
//!
//! `web` does no network or file I/O and never reads the system clock: time,
//! randomness, the store and the mail queue come in through [`Services`].
//! Blocking work (argon2, store flushes) goes through
//! [`Services::blocking_hash`] and [`Services::flush`], which run it off the
//! async executor; the hashing threads are started outside `web`
//! ([`crate::hashpool`]) and handed in.

pub mod pages;
pub mod paths;

mod account;
mod device;
mod forms;
/// For the form fuzz target (fuzz/).
#[doc(hidden)]
pub use forms::Form;
#[cfg(test)]
mod journey_tests;
mod lang;
mod login;
pub mod portal;
mod regulation;
mod reset;
mod second;
mod useragent;
mod when;

use crate::store::prelude::*;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use minijinja::context;
use crate::auth::crypto::{derive_key, SecretBox};
use crate::auth::password::Hasher;
use crate::auth::redirect::{encode_rd, safe_redirect};
use crate::auth::regulation::Limits;
use crate::auth::session::{find_cookie, SessionClaims, SessionCodec, Stage};
use crate::auth::Random;
use crate::clock::{Clock, UnixTime};
use crate::config::{Config, Language};
use crate::hashpool::{HashPool, PoolError};
use crate::mail::{MailError, MailQueue};
use crate::store::{CachedStore, SessionRecord, Store, StoreError};

pub use pages::Pages;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Other,
}

/// One request, as the proxy saw it. Borrowed: building it allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: Method,
    /// The raw path, not decoded.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The Cookie header's bytes (several Cookie fields joined by `; `):
    /// not necessarily UTF-8, browsers send raw UTF-8 and some clients
    /// Latin-1.
    pub cookie: Option<&'a [u8]>,
    pub origin: Option<&'a str>,
    pub sec_fetch_site: Option<&'a str>,
    pub content_type: Option<&'a str>,
    /// The browser's User-Agent: kept with a new session for the sessions
    /// list on "Mein Zugang".
    pub user_agent: Option<&'a str>,
    /// The browser's `Accept-Language`: the page language when no language
    /// cookie is set. Needed only on riegel's own pages.
    pub accept_language: Option<&'a str>,
    /// The client address after the trusted-proxy rules.
    pub client_ip: IpAddr,
    /// The form body (POST to riegel's own routes only).
    pub body: &'a [u8],
}

/// Who the portal is told the user is: a view of the session record
/// (shared, so forwarding a request copies no strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity(Arc<SessionRecord>);

impl Identity {
    pub fn user(&self) -> &str {
        &self.0.username
    }
    pub fn email(&self) -> &str {
        self.0.email.as_deref().unwrap_or("")
    }
    pub fn name(&self) -> &str {
        &self.0.display_name
    }
}

#[derive(Debug)]
pub enum Outcome {
    Reply(Reply),
    /// Forward to the portal; `None` for public paths.
    Forward(Option<Identity>),
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Failures inside a handler; they become the 500 page.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error("page: {0}")]
    Page(#[from] pages::PagesError),
    #[error("background task failed: {0}")]
    Task(String),
    /// No hashing thread became free within `password.hash_queue_timeout`:
    /// the 503 page ("please try again").
    #[error("busy: {0}")]
    Busy(String),
    /// The request's session was revoked (or its user disabled) while it
    /// ran: its update aborted, and the browser goes back to the login.
    #[error("the session was revoked meanwhile")]
    Revoked,
    #[error("{0}")]
    Internal(String),
}

/// Everything the handlers need, injected.
pub struct Services {
    pub cfg: Arc<Config>,
    pub store: Arc<CachedStore>,
    pub clock: Arc<dyn Clock>,
    pub rng: Arc<dyn Random>,
    pub mail: Arc<dyn MailQueue>,
    pub pages: Pages,
    pub codec: SessionCodec,
    pub hasher: Hasher,
    pub dummy_hash: String,
    pub secret_box: SecretBox,
    pub recovery_pepper: [u8; 32],
    /// Shared with the services of a reloaded configuration.
    hash_pool: Arc<HashPool>,
    pub cookie_name: String,
    pub csrf_cookie_name: String,
    /// The cookie that remembers the language chosen with the switch link.
    pub lang_cookie_name: String,
    /// `branding.timezone`, from the time zone data compiled into riegel.
    pub tz: jiff::tz::TimeZone,
    pub account_limits: Limits,
    pub address_limits: Limits,
    /// Where riegel's own routes live, e.g. `/_riegel`.
    pub prefix: String,
    origin: String,
    /// The HTTP client to the portal for `first_factor: portal`, set by
    /// the proxy when it knows the upstream ([`portal::PortalClient`]).
    pub portal: std::sync::OnceLock<Arc<dyn portal::PortalClient>>,
    /// Seals the portal's cookies in session records.
    jar_box: SecretBox,
    /// Where security events go ([`Services::audit`]): `log.audit_file`
    /// or stderr.
    pub audit_log: crate::audit::Audit,
}

impl Services {
    /// Every part injected: the app builds them (`app::build`), the tests
    /// their own.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Arc<Config>,
        store: Arc<CachedStore>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Random>,
        mail: Arc<dyn MailQueue>,
        pages: Pages,
        hash_pool: impl Into<Arc<HashPool>>,
        audit_log: crate::audit::Audit,
    ) -> Result<Self, WebError> {
        let hash_pool = hash_pool.into();
        let hasher = Hasher::new(&cfg.password.argon2).map_err(|e| WebError::Internal(e.to_string()))?;
        let dummy_hash = hasher.dummy_hash(rng.as_ref()).map_err(|e| WebError::Internal(e.to_string()))?;
        // This thread hashes nothing else.
        crate::auth::password::release_scratch();
        let origin = cfg.public_url.origin().ascii_serialization();
        Ok(Self {
            codec: SessionCodec::new(&cfg.secrets.session_keys),
            secret_box: SecretBox::new(&cfg.secrets.storage_key),
            recovery_pepper: derive_key(&cfg.secrets.storage_key, "riegel/recovery-codes/v1"),
            jar_box: portal::jar_box(&cfg.secrets.storage_key),
            portal: std::sync::OnceLock::new(),
            hash_pool,
            cookie_name: cfg.cookie_name(),
            csrf_cookie_name: cfg.csrf_cookie_name(),
            lang_cookie_name: format!("{}_lang", cfg.cookie_name()),
            tz: when::zone(&cfg.branding.timezone),
            account_limits: Limits::account(&cfg.regulation),
            address_limits: Limits::address(&cfg.regulation),
            prefix: cfg.prefix.clone(),
            origin,
            audit_log,
            hasher,
            dummy_hash,
            cfg,
            store,
            clock,
            rng,
            mail,
            pages,
        })
    }

    /// The services for a reloaded configuration `cfg`: its pages and mail
    /// queue, and this one's store, clock, randomness and hashing threads.
    pub fn reconfigured(&self, cfg: Arc<Config>, pages: Pages, mail: Arc<dyn MailQueue>) -> Result<Self, WebError> {
        Self::new(cfg, self.store.clone(), self.clock.clone(), self.rng.clone(), mail, pages, self.hash_pool.clone(), self.audit_log.clone())
    }

    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// Runs password hashing off the executor on the hashing threads, at
    /// most `max_concurrent_hashes` at once; further logins wait their turn,
    /// for at most `password.hash_queue_timeout` ([`WebError::Busy`]).
    pub async fn blocking_hash<T, F>(&self, f: F) -> Result<T, WebError>
    where
        F: FnOnce(&Hasher) -> T + Send + 'static,
        T: Send + 'static,
    {
        let hasher = self.hasher.clone();
        self.hash_pool.run(move || f(&hasher)).await.map_err(|e| match e {
            PoolError::Busy(_) => WebError::Busy(e.to_string()),
            PoolError::Stopped | PoolError::Start(_) => WebError::Task(e.to_string()),
        })
    }

    /// Writes a security event to the audit log, with the time and the
    /// request's client address and User-Agent. Never a secret in `e`.
    pub(crate) fn audit(&self, req: &Request<'_>, e: crate::audit::Event) {
        self.audit_log.record(self.now(), Some(req.client_ip), req.user_agent, &e);
    }

    /// Logins (and password changes) waiting for a free hashing thread now.
    pub fn hash_queue_depth(&self) -> usize {
        self.hash_pool.waiting()
    }

    /// Waits until the store's writes are durable. Called before
    /// acknowledging a write.
    pub async fn flush(&self) -> Result<(), WebError> {
        Ok(self.store.flush().await?)
    }

    fn route(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    fn route_rd(&self, name: &str, rd: Option<&str>) -> String {
        match rd {
            Some(rd) if rd != "/" => format!("{}/{name}?rd={}", self.prefix, encode_rd(rd)),
            _ => self.route(name),
        }
    }
}

/// The answer to one request.
pub async fn handle(req: &Request<'_>, s: &Arc<Services>) -> Outcome {
    let Some(rest) = req.path.strip_prefix(s.prefix.as_str()) else {
        return store_down_or(portal_request(req, s).await, s);
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        // e.g. /_riegelx is a portal path.
        return store_down_or(portal_request(req, s).await, s);
    }
    let result = route(req, rest, s).await;
    Outcome::Reply(match result {
        Ok(r) => r,
        Err(WebError::Revoked) => {
            let mut r = redirect(&format!("{}?notice=login_expired", s.route("login")));
            r.headers.push(("set-cookie", clear_session_cookie(s)));
            r
        }
        Err(e @ (WebError::Busy(_) | WebError::Store(StoreError::Unavailable(_)))) => {
            tracing::warn!(error = %e, path = %loggable_path(&s.prefix, req.path), "request turned away");
            error_reply(s, req, 503, "error_503")
        }
        Err(e) => {
            tracing::error!(error = %e, path = %loggable_path(&s.prefix, req.path), "request failed");
            error_reply(s, req, 500, "error_500")
        }
    })
}

/// A portal request without a usable session while the store cannot be
/// reached gets the 503 page ("try again later"), not a login form that
/// could not work. A request with a valid session has already been let
/// through (on PostgreSQL a session is only trusted from the cache while
/// the database's notifications arrive).
fn store_down_or(out: Outcome, s: &Services) -> Outcome {
    match out {
        Outcome::Reply(_) if matches!(s.store.state(), crate::store::StoreState::Down(_)) => {
            Outcome::Reply(error_page(s, 503, "error_503"))
        }
        out => out,
    }
}

async fn route(req: &Request<'_>, rest: &str, s: &Arc<Services>) -> Result<Reply, WebError> {
    use Method::*;
    let m = if req.method == Head { Get } else { req.method };
    // Each path once; a known path asked with a method it does not take
    // gets 405.
    let not_allowed = || Ok(error_reply(s, req, 405, "error_400"));
    if let Some(p) = &s.cfg.portal_login {
        // The portal owns the passwords: riegel's reset and password
        // change are not there; "forgotten" leads to the portal's page.
        match rest {
            "/forgot" => {
                return Ok(match &p.forgot_url {
                    Some(u) if m == Get => redirect(u),
                    _ => error_reply(s, req, 404, "error_404"),
                })
            }
            "/account/password" => return Ok(error_reply(s, req, 404, "error_404")),
            r if r.starts_with("/reset/") => return Ok(error_reply(s, req, 404, "error_404")),
            _ => {}
        }
    }
    match rest {
        "/login" => match m {
            Get => login::get(req, s).await,
            Post => login::post(req, s).await,
            _ => not_allowed(),
        },
        "/logout" => match m {
            Get => login::logout_get(req, s),
            Post => login::logout_post(req, s).await,
            _ => not_allowed(),
        },
        "/setup" => match m {
            Get => second::setup_get(req, s).await,
            _ => not_allowed(),
        },
        "/setup/confirm" => match m {
            Get => second::confirm_get(req, s).await,
            Post => second::confirm_post(req, s).await,
            _ => not_allowed(),
        },
        "/verify" => match m {
            Get => second::verify_get(req, s).await,
            Post => second::verify_post(req, s).await,
            _ => not_allowed(),
        },
        "/recovery" => match m {
            Get => second::recovery_get(req, s).await,
            Post => second::recovery_post(req, s).await,
            _ => not_allowed(),
        },
        "/account" => match m {
            Get => account::get(req, s).await,
            _ => not_allowed(),
        },
        "/account/password" => match m {
            Post => account::password_post(req, s).await,
            _ => not_allowed(),
        },
        "/account/authenticators" => match m {
            Get => account::add_get(req, s).await,
            Post => account::add_post(req, s).await,
            _ => not_allowed(),
        },
        "/account/authenticators/confirm" => match m {
            Post => account::confirm_post(req, s).await,
            _ => not_allowed(),
        },
        "/account/recovery-codes" => match m {
            Post => account::codes_post(req, s).await,
            _ => not_allowed(),
        },
        "/account/sessions/end-others" => match m {
            Post => account::end_others_post(req, s).await,
            _ => not_allowed(),
        },
        p if p.starts_with("/account/authenticators/") && p.ends_with("/remove") => {
            let id = &p["/account/authenticators/".len()..p.len() - "/remove".len()];
            match m {
                Post => account::remove_post(req, s, id).await,
                _ => not_allowed(),
            }
        }
        p if p.starts_with("/account/sessions/") && p.ends_with("/end") => {
            let id = &p["/account/sessions/".len()..p.len() - "/end".len()];
            match m {
                Post => account::end_post(req, s, id).await,
                _ => not_allowed(),
            }
        }
        "/new-device" => match m {
            Get => device::waiting_get(req, s).await,
            Post => device::resend_post(req, s).await,
            _ => not_allowed(),
        },
        p if p.starts_with("/new-device/") => {
            let token = &p["/new-device/".len()..];
            match m {
                Get => device::link_get(req, s, token).await,
                Post => device::link_post(req, s, token).await,
                _ => not_allowed(),
            }
        }
        p if p.starts_with("/language/") => match m {
            Get => Ok(lang::switch(req, s, &p["/language/".len()..])),
            _ => not_allowed(),
        },
        "/forgot" => match m {
            Get => reset::forgot_get(req, s),
            Post => reset::forgot_post(req, s).await,
            _ => not_allowed(),
        },
        "/healthz" => match m {
            Get => Ok(healthz(s).await),
            _ => not_allowed(),
        },
        "/auth" => match m {
            Get => Ok(forward_auth(req, s).await),
            _ => not_allowed(),
        },
        p if p.starts_with("/static/") => match m {
            Get => Ok(static_asset(s, req, &p["/static/".len()..])),
            _ => not_allowed(),
        },
        p if p.starts_with("/reset/") => {
            let token = &p["/reset/".len()..];
            match m {
                Get => reset::reset_get(req, s, token).await,
                Post => reset::reset_post(req, s, token).await,
                _ => not_allowed(),
            }
        }
        "" | "/" if m == Get => Ok(redirect(&s.route("login"))),
        _ => Ok(error_reply(s, req, 404, "error_404")),
    }
}

/// A request for the portal: forward it with an identity, pass it if
/// public, or send the user to the login page.
async fn portal_request(req: &Request<'_>, s: &Services) -> Outcome {
    if let Some(p) = &s.cfg.portal_login {
        if portal::is_portal_login(p, req.method == Method::Post, req.path) {
            return Outcome::Reply(portal_login_elsewhere(req, s).await);
        }
    }
    if paths::is_public(&s.cfg.public_paths, req.path) {
        return Outcome::Forward(None);
    }
    match full_session(req, s).await {
        Some(id) => Outcome::Forward(Some(id)),
        None => {
            let mut target = req.path.to_string();
            if let Some(q) = req.query {
                target.push('?');
                target.push_str(q);
            }
            let rd = safe_redirect(&target).unwrap_or("/");
            Outcome::Reply(redirect(&s.route_rd("login", Some(rd))))
        }
    }
}

/// A POST to the portal's own login action (portal login mode): never
/// forwarded. With a session it means the portal lost its session (it
/// showed its form again): riegel's ends too, and the user logs in again on
/// riegel's page, second factor included.
async fn portal_login_elsewhere(req: &Request<'_>, s: &Services) -> Reply {
    let mut r = redirect(&format!("{}?notice=login_expired", s.route("login")));
    if let Some((_, rec)) = session(req, s).await {
        tracing::info!(target: "audit", event = "logout", user = %rec.username, ip = %req.client_ip, "the portal's own login was asked for; session ended");
        if let Err(e) = portal::end_session(s, &rec).await {
            tracing::warn!(error = %e, "could not end the session");
        }
        r.headers.push(("set-cookie", clear_session_cookie(s)));
    }
    r
}

/// The path as it may be logged: reset and new-device tokens are secrets
/// and are cut off.
pub fn loggable_path<'a>(prefix: &str, path: &'a str) -> std::borrow::Cow<'a, str> {
    let rest = path.strip_prefix(prefix);
    if rest.and_then(|r| r.strip_prefix("/reset/")).is_some() {
        return std::borrow::Cow::Owned(format!("{prefix}/reset/[token]"));
    }
    if rest.and_then(|r| r.strip_prefix("/new-device/")).is_some() {
        return std::borrow::Cow::Owned(format!("{prefix}/new-device/[token]"));
    }
    std::borrow::Cow::Borrowed(path)
}

/// The identity of a valid, fully authenticated session, if any.
pub async fn full_session(req: &Request<'_>, s: &Services) -> Option<Identity> {
    let now = s.now();
    let (claims, rec) = session_at(req, s, now).await?;
    if claims.stage != Stage::Full {
        return None;
    }
    if now - rec.last_seen >= 60 {
        // Keep idle tracking coarse: at most one write a minute per session.
        if let Err(e) = s.store.touch_session(claims.uid, &claims.sid, now).await {
            tracing::warn!(error = %e, "could not record session activity");
        }
    }
    Some(Identity(rec))
}

/// A session whose cookie verifies and whose record still exists, was
/// issued under its user's current security stamp, matches the cookie's
/// stage and is neither idle too long nor past its lifetime.
async fn session(req: &Request<'_>, s: &Services) -> Option<(SessionClaims, Arc<SessionRecord>)> {
    session_at(req, s, s.now()).await
}

/// What the request's session cookie says, when it verifies and has not
/// expired at `now` (whether its record still exists and is valid is
/// [`session_at`]'s question).
fn claims_at(req: &Request<'_>, s: &Services, now: UnixTime) -> Option<SessionClaims> {
    s.codec.decode(find_cookie(req.cookie?, &s.cookie_name)?, now).ok()
}

/// [`session`] at `now`. A cached session costs no I/O and no allocation.
async fn session_at(req: &Request<'_>, s: &Services, now: UnixTime) -> Option<(SessionClaims, Arc<SessionRecord>)> {
    let claims = claims_at(req, s, now)?;
    let rec = match s.store.cached_session(claims.uid, &claims.sid) {
        Some(r) => r,
        None => match s.store.valid_session(claims.uid, &claims.sid).await {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(error = %e, "session lookup failed");
                return None;
            }
        },
    };
    let idle = s.cfg.session.idle_timeout.as_secs() as i64;
    if rec.stage != claims.stage || now >= rec.expires_at || now - rec.last_seen > idle {
        return None;
    }
    Some((claims, rec))
}

/// 200 "ok" while the store answers (with a note when the store works
/// without other instances' notifications), else 503 with its state.
async fn healthz(s: &Services) -> Reply {
    use crate::store::StoreState;
    match (s.store.healthy().await, s.store.state()) {
        (Ok(()), StoreState::Degraded(why)) => plain(200, &format!("ok\nstore {}: degraded: {why}\n", s.store.kind())),
        (Ok(()), _) => plain(200, "ok\n"),
        (Err(e), _) => plain(503, &format!("store {} unavailable: {e}\n", s.store.kind())),
    }
}

/// `GET /_riegel/auth` for nginx `auth_request`, Traefik and Caddy
/// forward auth: 200 with the identity headers, or 401.
async fn forward_auth(req: &Request<'_>, s: &Services) -> Reply {
    match full_session(req, s).await {
        Some(id) => {
            let mut r = plain(200, "");
            r.headers.push(("x-riegel-user", id.user().to_string()));
            r.headers.push(("x-riegel-email", id.email().to_string()));
            r.headers.push(("x-riegel-name", id.name().to_string()));
            r
        }
        None => plain(401, ""),
    }
}

fn static_asset(s: &Services, req: &Request<'_>, name: &str) -> Reply {
    match s.pages.static_asset(name) {
        Some(a) => Reply {
            status: 200,
            headers: vec![
                ("content-type", a.content_type.to_string()),
                ("cache-control", "public, max-age=3600".to_string()),
                ("etag", a.etag.clone()),
                ("x-content-type-options", "nosniff".to_string()),
            ],
            body: Bytes::copy_from_slice(&a.body),
        },
        None => error_reply(s, req, 404, "error_404"),
    }
}

pub fn plain(status: u16, body: &str) -> Reply {
    Reply {
        status,
        headers: vec![
            ("content-type", "text/plain; charset=utf-8".to_string()),
            ("cache-control", "no-store".to_string()),
            ("x-content-type-options", "nosniff".to_string()),
        ],
        body: Bytes::copy_from_slice(body.as_bytes()),
    }
}

pub fn redirect(location: &str) -> Reply {
    Reply {
        status: 303,
        headers: vec![("location", location.to_string()), ("cache-control", "no-store".to_string())],
        body: Bytes::new(),
    }
}

/// Security headers on every page riegel renders.
fn page_headers(s: &Services) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("content-type", "text/html; charset=utf-8".to_string()),
        (
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
                .to_string(),
        ),
        ("x-content-type-options", "nosniff".to_string()),
        ("x-frame-options", "DENY".to_string()),
        ("referrer-policy", "same-origin".to_string()),
        ("cache-control", "no-store".to_string()),
    ];
    if !s.cfg.plain_http {
        h.push(("strict-transport-security", "max-age=31536000".to_string()));
    }
    h
}

/// A page in the language of `req`, with the switch to the other
/// configured languages.
pub(crate) fn page(s: &Services, req: &Request<'_>, status: u16, name: &str, ctx: minijinja::Value) -> Result<Reply, WebError> {
    let lang = lang::choose(req, s);
    let ctx = context! { ..context! { lang_links => lang::switch_links(req, s, lang) }, ..ctx };
    let html = s.pages.render_in(lang, name, ctx)?;
    Ok(Reply { status, headers: page_headers(s), body: Bytes::from(html) })
}

/// The error page in the default language (for the proxy, which has no
/// `web::Request` at hand); never fails (falls back to plain text).
pub fn error_page(s: &Services, status: u16, key: &str) -> Reply {
    render_error(s, s.cfg.branding.language, minijinja::Value::from(Vec::<minijinja::Value>::new()), status, key, 0)
}

/// The error page in the language of `req`.
pub(crate) fn error_reply(s: &Services, req: &Request<'_>, status: u16, key: &str) -> Reply {
    error_reply_with(s, req, status, key, 0)
}

pub(crate) fn error_reply_with(s: &Services, req: &Request<'_>, status: u16, key: &str, minutes: i64) -> Reply {
    let lang = lang::choose(req, s);
    render_error(s, lang, lang::switch_links(req, s, lang), status, key, minutes)
}

/// What an error page offers: the main button (URL, text key) and a
/// second link, by error. A dead end offers the way on ("Neues Passwort
/// anfordern" for a used reset link), never "try again" where trying again
/// cannot help (a page that does not exist).
fn error_actions(s: &Services, key: &str) -> ((String, &'static str), Option<(String, &'static str)>) {
    let home = || ("/".to_string(), "error_home");
    let login = || (s.route("login"), "to_login");
    match key {
        "error_reset_invalid" => ((s.route("forgot"), "forgot_submit"), Some(login())),
        "error_new_device_invalid" => (login(), None),
        "error_new_device_browser" => (login(), None),
        "error_404" | "error_400" | "error_413" => (home(), None),
        "error_502" | "error_504" => (("/".to_string(), "error_retry"), None),
        _ => ((s.route("login"), "error_retry"), Some(home())),
    }
}

fn render_error(s: &Services, lang: Language, lang_links: minijinja::Value, status: u16, key: &str, minutes: i64) -> Reply {
    let ((primary_url, primary_key), second) = error_actions(s, key);
    let (second_url, second_key) = match second {
        Some((u, k)) => (Some(u), Some(k)),
        None => (None, None),
    };
    let ctx = context! {
        title_key => format!("{key}_title"),
        message_key => format!("{key}_text"),
        minutes => minutes,
        primary_url => primary_url,
        primary_key => primary_key,
        second_url => second_url,
        second_key => second_key,
        lang_links => lang_links,
    };
    match s.pages.render_in(lang, "error", ctx) {
        Ok(html) => Reply { status, headers: page_headers(s), body: Bytes::from(html) },
        Err(e) => {
            tracing::error!(error = %e, "error page failed to render");
            plain(status, "error\n")
        }
    }
}

/// The branded 502/504 pages the proxy shows when the portal fails.
pub fn upstream_error_page(s: &Services, status: u16) -> Reply {
    let key = if status == 504 { "error_504" } else { "error_502" };
    error_page(s, status, key)
}

/// A `Set-Cookie` value with the attributes riegel always uses.
pub(crate) fn cookie_header(s: &Services, name: &str, value: &str, max_age: Option<i64>, same_site: &str) -> String {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite={same_site}");
    if !s.cfg.plain_http {
        c.push_str("; Secure");
    }
    if let Some(a) = max_age {
        c.push_str(&format!("; Max-Age={a}"));
    }
    c
}

fn session_cookie(s: &Services, value: &str) -> String {
    cookie_header(s, &s.cookie_name, value, None, "Lax")
}

fn clear_session_cookie(s: &Services) -> String {
    cookie_header(s, &s.cookie_name, "", Some(0), "Lax")
}

/// Validated `rd` from the query, if any.
fn rd_param<'a>(req: &Request<'a>) -> Option<String> {
    let q = req.query?;
    url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "rd")
        .and_then(|(_, v)| safe_redirect(&v).map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_tokens_never_reach_the_log() {
        assert_eq!(loggable_path("/_riegel", "/_riegel/reset/abcDEF123"), "/_riegel/reset/[token]");
        assert_eq!(loggable_path("/_riegel", "/_riegel/login"), "/_riegel/login");
        assert_eq!(loggable_path("/_riegel", "/mieter/reset/x"), "/mieter/reset/x");
        assert_eq!(loggable_path("/_riegel", "/_riegel/new-device/abcDEF123"), "/_riegel/new-device/[token]");
    }
}
