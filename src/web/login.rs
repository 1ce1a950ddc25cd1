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
    let ctx = context! {
        action => s.route_rd("login", rd),
        forgot_url => s.route("forgot"),
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
    if super::device::needs_proof(s, &user) {
        // A lost phone: the password alone shows no QR code.
        return super::device::after_password(req, s, &user, rd).await;
    }
    let (cookie, _) = start_session(s, req, &user, Stage::Password, rd.clone(), None).await?;
    let next = if user.authenticators.is_empty() { "setup" } else { "verify" };
    let mut r = redirect(&s.route(next));
    r.headers.push(("set-cookie", cookie));
    Ok(r)
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
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct NewSession {
    /// Ends then instead of after the stage's lifetime.
    pub expires_at: Option<crate::clock::UnixTime>,
    /// The session opened the mailed new-device link.
    pub device_proof: bool,
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
        portal_jar: None,
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
    if let Some((claims, rec)) = session(req, s).await {
        s.store.delete_session(claims.uid, &claims.sid).await?;
        s.flush().await?;
        s.audit(req, Event::new(Kind::Logout).user(&rec.username));
    }
    let mut r = page(s, req, 200, "logged_out", context! { login_url => s.route("login") })?;
    r.headers.push(("set-cookie", clear_session_cookie(s)));
    Ok(r)
}
