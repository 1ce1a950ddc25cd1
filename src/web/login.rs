//! The first factor (`/login`) and logout.

use crate::store::prelude::*;
use minijinja::context;

use super::forms::{check_post, form_page, Form, PostCheck};
use super::regulation::Attempt;
use crate::audit::{Event, Kind};
use crate::metrics::{LoginResult, LoginStage};
use super::{clear_session_cookie, error_reply, page, rd_param, redirect, session, session_cookie, Reply, Request, Services, WebError};
use crate::auth::password::{Verified, MAX_PASSWORD_BYTES};
use crate::auth::session::{SessionClaims, SessionCodec, Stage};
use crate::store::{SessionRecord, Update, User};

pub(super) async fn get(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let rd = rd_param(req);
    // Already signed in: go on.
    if session(req, s).await.is_some_and(|(claims, _)| claims.stage == Stage::Full) {
        return Ok(redirect(rd.as_deref().unwrap_or("/")));
    }
    let notice = req.query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "notice").and_then(|(_, v)| match v.as_ref() {
            "logged_out" => Some("notice_logged_out"),
            "password_changed" => Some("notice_password_changed"),
            "login_expired" => Some("notice_login_expired"),
            "sessions_ended" => Some("notice_sessions_ended"),
            _ => None,
        })
    });
    render_login(req, s, 200, rd.as_deref(), "", None, notice, 0)
}

#[allow(clippy::too_many_arguments)]
fn render_login(
    req: &Request<'_>,
    s: &Services,
    status: u16,
    rd: Option<&str>,
    username: &str,
    error: Option<&str>,
    notice: Option<&str>,
    minutes: i64,
) -> Result<Reply, WebError> {
    let forgot_url = match &s.cfg.portal_login {
        // The portal owns the passwords: its own reset page, if any.
        Some(p) => p.forgot_url.clone(),
        None => Some(s.route("forgot")),
    };
    let ctx = context! {
        action => s.route_rd("login", rd),
        forgot_url => forgot_url,
        username => username,
        error => error,
        notice => notice,
        minutes => minutes,
    };
    form_page(req, s, status, "login", ctx)
}

pub(super) async fn post(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let rd = rd_param(req);
    let form = Form::parse(req.body);
    let login = form.get("username").trim().to_string();
    let password = form.get("password").to_string();
    if password.len() > MAX_PASSWORD_BYTES {
        return Ok(error_reply(s, req, 413, "error_413"));
    }
    match check_post(req, s, &form) {
        PostCheck::CrossSite => return Ok(error_reply(s, req, 403, "error_403")),
        PostCheck::BadToken => return render_login(req, s, 403, rd.as_deref(), &login, Some("err_csrf"), None, 0),
        PostCheck::Ok => {}
    }
    if login.is_empty() || password.is_empty() {
        return render_login(req, s, 200, rd.as_deref(), &login, Some("err_required"), None, 0);
    }
    if let Some(cfg) = &s.cfg.portal_login {
        return portal_post(req, s, cfg, rd, &login, &password).await;
    }
    let user = s.store.find_user(&login).await?;
    // The attempt is counted before the hash is computed: of any number of
    // guesses sent at once, at most the regulation's allowance is checked.
    let attempt = Attempt::login(s, user.as_ref(), &login, req.client_ip);
    // Only the name of an account that exists reaches the audit log: an
    // unknown name may be a password typed into the wrong field.
    let known = user.as_ref().map(|u| u.username.clone());
    let password_step = |result| {
        let e = Event::login(LoginStage::Password, result);
        match &known {
            Some(name) => e.user(name),
            None => e,
        }
    };
    if let Err(refused) = attempt.reserve(s).await? {
        s.audit(req, password_step(LoginResult::Banned));
        return render_login(req, s, 429, rd.as_deref(), "", Some("err_banned"), None, refused.minutes);
    }

    // Always run one argon2 verification, whether the user exists or not.
    let usable = user.as_ref().filter(|u| !u.disabled).and_then(|u| u.password_hash.clone());
    let stored = usable.clone().unwrap_or_else(|| s.dummy_hash.clone());
    let pw = password.clone();
    let verdict = s.blocking_hash(move |h| h.verify(&stored, &pw)).await?;
    let ok_user = match (verdict, usable.is_some(), user) {
        (Ok(Verified::Right { upgrade }), true, Some(u)) => Some((u, upgrade)),
        (Err(e), true, Some(u)) => {
            tracing::error!(error = %e, user = %u.username, "stored password hash is unusable");
            None
        }
        _ => None,
    };
    let Some((user, upgrade)) = ok_user else {
        s.audit(req, password_step(LoginResult::Failure));
        attempt.failed(s, req).await?;
        // The typed name is not echoed: wrong password, unknown and disabled
        // accounts get byte-identical pages.
        return render_login(req, s, 200, rd.as_deref(), "", Some("err_login_failed"), None, 0);
    };

    attempt.succeeded(s).await?;
    if upgrade {
        upgrade_hash(s, &user, password).await;
    }
    s.audit(req, password_step(LoginResult::Success));
    after_first_factor(req, s, &user, rd, None).await
}

/// The first factor passed: the new-device proof where due, else a
/// password-stage session (with the portal's sealed cookies in portal
/// login mode) and on to the second factor.
async fn after_first_factor(req: &Request<'_>, s: &Services, user: &User, rd: Option<String>, jar: Option<Vec<u8>>) -> Result<Reply, WebError> {
    if super::device::needs_proof(s, user) {
        // A lost phone: the password alone shows no QR code.
        return super::device::after_password(req, s, user, rd, jar).await;
    }
    let opts = NewSession { portal_jar: jar, ..NewSession::default() };
    let (cookie, _) = start_session_with(s, req, user, Stage::Password, rd, None, opts).await?;
    let next = if user.authenticators.is_empty() { "setup" } else { "verify" };
    let mut r = redirect(&s.route(next));
    r.headers.push(("set-cookie", cookie));
    Ok(r)
}

/// `first_factor: portal`: the password is replayed to the portal's own
/// form (never stored), reserved in the regulation first exactly like a
/// local one. On success the account is found or created (the name as
/// the portal took it, case-folded, no password hash) and the portal's
/// session cookies go sealed into the new session record.
async fn portal_post(
    req: &Request<'_>,
    s: &Services,
    cfg: &crate::config::PortalLoginConfig,
    rd: Option<String>,
    login: &str,
    password: &str,
) -> Result<Reply, WebError> {
    use super::portal::{replay, seal, Replay};
    let folded = login.to_lowercase();
    let user = s.store.find_user(&folded).await?;
    let attempt = Attempt::login(s, user.as_ref(), &folded, req.client_ip);
    // As for a local login: only an existing account's name is audited.
    let known = user.as_ref().map(|u| u.username.clone());
    let step = |result, name: Option<&str>| {
        let e = Event::login(LoginStage::Password, result).field("first_factor", "portal");
        match name {
            Some(n) => e.user(n),
            None => e,
        }
    };
    if let Err(refused) = attempt.reserve(s).await? {
        s.audit(req, step(LoginResult::Banned, known.as_deref()));
        return render_login(req, s, 429, rd.as_deref(), "", Some("err_banned"), None, refused.minutes);
    }
    let outcome = match tokio::time::timeout(cfg.timeout, replay(s, cfg, login, password, req.client_ip)).await {
        Ok(r) => r,
        Err(_) => Err(super::portal::PortalError::Timeout),
    };
    let jar = match outcome {
        Ok(Replay::Accepted(jar)) => jar,
        Ok(Replay::Refused) => {
            s.audit(req, step(LoginResult::Failure, known.as_deref()));
            attempt.failed(s, req).await?;
            return render_login(req, s, 200, rd.as_deref(), "", Some("err_login_failed"), None, 0);
        }
        Err(e) => {
            // Not the user's fault: the attempt is given back.
            attempt.released(s).await?;
            tracing::warn!(error = %e, "portal login could not be checked");
            let status = if matches!(e, super::portal::PortalError::Timeout) { 504 } else { 502 };
            return Ok(super::upstream_error_page(s, status));
        }
    };
    let user = match user {
        Some(u) => u,
        None => match s
            .store
            .insert_user(crate::store::NewUser { username: folded.clone(), email: None, display_name: login.to_string(), password_hash: None }, s.now())
            .await
        {
            Ok(u) => {
                tracing::info!(user = %u.username, "account created at the first portal login");
                u
            }
            // Created by a login racing this one.
            Err(crate::store::StoreError::Conflict { .. }) => s.store.find_user(&folded).await?.ok_or(crate::store::StoreError::NoSuchUser)?,
            Err(e) => return Err(e.into()),
        },
    };
    let sealed = seal(s, user.id, &jar);
    if user.disabled {
        s.audit(req, step(LoginResult::Failure, Some(&user.username)));
        attempt.failed(s, req).await?;
        let rec = crate::store::SessionRecord { uid: user.id, portal_jar: Some(sealed), ..portal_only(&user) };
        super::portal::end(s, &rec).await;
        return render_login(req, s, 200, rd.as_deref(), "", Some("err_login_failed"), None, 0);
    }
    attempt.succeeded(s).await?;
    s.audit(req, step(LoginResult::Success, Some(&user.username)));
    after_first_factor(req, s, &user, rd, Some(sealed)).await
}

/// A record that only carries a jar to [`super::portal::end`].
fn portal_only(user: &User) -> SessionRecord {
    SessionRecord {
        uid: user.id,
        sid: Vec::new(),
        stage: Stage::Password,
        created_at: 0,
        last_seen: 0,
        expires_at: 0,
        username: user.username.clone(),
        email: None,
        display_name: String::new(),
        rd: None,
        stamp: 0,
        user_agent: None,
        ip: None,
        device_proof: false,
        portal_jar: None,
    }
}

/// Re-hashes an imported (bcrypt) or weaker hash with argon2id after a
/// successful login. A failure here never fails the login.
async fn upgrade_hash(s: &Services, user: &User, password: String) {
    let rng = s.rng.clone();
    let old = user.password_hash.clone();
    let new = match s.blocking_hash(move |h| h.hash(&password, rng.as_ref())).await {
        Ok(Ok(h)) => h,
        _ => return,
    };
    let r = s
        .store
        .update_user(user.id, &mut |u| {
            if u.password_hash != old {
                return Update::Abort;
            }
            u.password_hash = Some(new.clone());
            Update::Commit
        })
        .await;
    match r {
        Ok(Some(_)) => tracing::info!(user = %user.username, "password hash upgraded to argon2id"),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "password hash upgrade failed"),
    }
}

/// Issues a new session id at `stage` (never reusing the old one) under
/// the user's current security stamp, stores its record, ends `replaces`,
/// flushes, and returns the cookie header.
pub(super) async fn start_session(
    s: &Services,
    req: &Request<'_>,
    user: &User,
    stage: Stage,
    rd: Option<String>,
    replaces: Option<&SessionClaims>,
) -> Result<(String, SessionRecord), WebError> {
    start_session_with(s, req, user, stage, rd, replaces, NewSession::default()).await
}

/// What [`start_session_with`] may set beyond the defaults.
#[derive(Debug, Default, Clone)]
pub(super) struct NewSession {
    /// Ends then instead of after the stage's lifetime.
    pub expires_at: Option<crate::clock::UnixTime>,
    /// The session opened the mailed new-device link.
    pub device_proof: bool,
    /// The portal's session cookies, sealed (portal login mode).
    pub portal_jar: Option<Vec<u8>>,
}

/// The most of a User-Agent kept with a session.
const MAX_USER_AGENT: usize = 300;

/// [`start_session`] with an end of its own or the new-device proof.
pub(super) async fn start_session_with(
    s: &Services,
    req: &Request<'_>,
    user: &User,
    stage: Stage,
    rd: Option<String>,
    replaces: Option<&SessionClaims>,
    opts: NewSession,
) -> Result<(String, SessionRecord), WebError> {
    let now = s.now();
    let sid = SessionCodec::new_session_id(s.rng.as_ref());
    let lifetime = match stage {
        Stage::Password => s.cfg.session.login_timeout,
        Stage::Full => s.cfg.session.max_lifetime,
    };
    let expires_at = opts.expires_at.unwrap_or(now + lifetime.as_secs() as i64);
    // A new session id for the next stage carries the portal's cookies on.
    let portal_jar = match (opts.portal_jar, replaces) {
        (Some(j), _) => Some(j),
        (None, Some(old)) if s.cfg.portal_login.is_some() => s.store.session(old.uid, &old.sid).await?.and_then(|r| r.portal_jar),
        (None, _) => None,
    };
    let rec = SessionRecord {
        uid: user.id,
        sid: sid.to_vec(),
        stage,
        created_at: now,
        last_seen: now,
        expires_at,
        username: user.username.clone(),
        email: user.email.clone(),
        display_name: user.display_name.clone(),
        rd,
        stamp: user.stamp,
        user_agent: req.user_agent.map(|ua| cut(ua, MAX_USER_AGENT).to_string()),
        ip: Some(req.client_ip.to_string()),
        device_proof: opts.device_proof,
        portal_jar,
    };
    s.store.put_session(&rec).await?;
    if let Some(old) = replaces {
        s.store.delete_session(old.uid, &old.sid).await?;
    }
    s.flush().await?;
    let value = s.codec.encode(&SessionClaims { sid, uid: user.id, stage, issued_at: now, expires_at });
    Ok((session_cookie(s, &value), rec))
}

/// The first `max` bytes of `s`, cut at a character boundary.
pub(super) fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub(super) fn logout_get(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    form_page(req, s, 200, "logout", context! { action => s.route("logout") })
}

/// Ends the session server-side, so a copied cookie stops working too.
/// Accepted with a valid CSRF token, or from a same-origin page without one
/// (so the portal's own logout link or form can point here).
pub(super) async fn logout_post(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let form = Form::parse(req.body);
    let same_origin = req.sec_fetch_site == Some("same-origin") || req.origin == Some(s.origin.as_str());
    match check_post(req, s, &form) {
        PostCheck::CrossSite => return Ok(error_reply(s, req, 403, "error_403")),
        PostCheck::BadToken if !same_origin => return Ok(error_reply(s, req, 403, "error_403")),
        _ => {}
    }
    // The session the cookie names, also one that went idle (its record
    // waits for the janitor): removed now, and its portal session ended
    // now. A signed, unexpired cookie is proof enough to end it.
    if let Some(claims) = super::claims_at(req, s, s.now()) {
        if let Some(rec) = s.store.delete_session(claims.uid, &claims.sid).await? {
            s.flush().await?;
            s.audit(req, Event::new(Kind::Logout).user(&rec.username));
            // The portal's session ends with riegel's (the jar as removed).
            super::portal::end(s, &rec).await;
        }
    }
    let mut r = page(s, req, 200, "logged_out", context! { login_url => s.route("login") })?;
    r.headers.push(("set-cookie", clear_session_cookie(s)));
    Ok(r)
}
