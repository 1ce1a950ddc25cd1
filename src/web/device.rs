//! A lost phone, done safely. A user who had an authenticator and has none
//! left (`riegel user reset-totp`, or the last one removed by an operator)
//! gets no QR code for the password alone: with `totp.reenrol_proof: email`
//! the next login mails a one-time "Neues Gerät einrichten" link, valid 30
//! minutes (or `session.idle_timeout` if shorter), single use, that works
//! only in the browser session that logged in. `GET /new-device/<token>`
//! shows a button and consumes nothing (mail scanners prefetch links);
//! its POST consumes the token and issues a new password-stage session with
//! `device_proof` set, and only such a session reaches the enrolment page
//! (`second::setup_get` and the confirm step check it). A user without an
//! e-mail address is asked to contact the operator.

use crate::store::prelude::*;
use std::time::Duration;

use minijinja::context;

use super::forms::{check_post, form_page, Form, PostCheck};
use super::login::{start_session_with, NewSession};
use super::regulation::Attempt;
use crate::audit::{Event, Kind};
use super::{error_reply, redirect, session, Reply, Request, Services, WebError};
use crate::auth::crypto::{ct_eq, random_token, sha256};
use crate::auth::session::Stage;
use crate::config::ReenrolProof;
use crate::store::{OneTimeToken, SessionRecord, TokenKind, Update, User};

/// How long a new-device link works at most.
pub(crate) const LINK_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// The user must prove more than the password before enrolling again.
pub(super) fn needs_proof(s: &Services, user: &User) -> bool {
    user.enrolled_once && user.authenticators.is_empty() && s.cfg.totp.reenrol_proof == ReenrolProof::Email
}

/// The link's lifetime here: 30 minutes, or less when a session would go
/// idle sooner (the link works only while its session lives).
fn lifetime(s: &Services) -> i64 {
    LINK_LIFETIME.min(s.cfg.session.idle_timeout).min(s.cfg.session.max_lifetime).as_secs() as i64
}

fn minutes(s: &Services) -> i64 {
    (lifetime(s) + 59) / 60
}

fn token_hash(token: &str) -> String {
    data_encoding::HEXLOWER.encode(&sha256(token.as_bytes()))
}

/// The password was right for a user who needs the proof: a password-stage
/// session that lives as long as the link, the link mailed to the user (if
/// the user has an address and is not over the mail limit), and the page
/// that says so.
pub(super) async fn after_password(
    req: &Request<'_>,
    s: &Services,
    user: &User,
    rd: Option<String>,
    portal_jar: Option<Vec<u8>>,
) -> Result<Reply, WebError> {
    let opts = NewSession { expires_at: Some(s.now() + lifetime(s)), device_proof: false, portal_jar };
    let (cookie, rec) = start_session_with(s, req, user, Stage::Password, rd, None, opts).await?;
    send_link(req, s, user, &rec).await?;
    let mut r = redirect(&s.route("new-device"));
    r.headers.push(("set-cookie", cookie));
    Ok(r)
}

/// Mails a fresh link bound to `rec` (a newer link cancels the older one).
/// Counts against the same per-account mail limit as reset mails.
async fn send_link(req: &Request<'_>, s: &Services, user: &User, rec: &SessionRecord) -> Result<bool, WebError> {
    if user.email.is_none() {
        s.audit(req, Event::new(Kind::NewDeviceLink).result("no_mail").user(&user.username));
        return Ok(false);
    }
    if Attempt::reset_mail(s, user).charge(s, req).await?.is_err() {
        s.audit(req, Event::new(Kind::NewDeviceLink).result("rate_limited").user(&user.username));
        return Ok(false);
    }
    let token = random_token::<32>(s.rng.as_ref());
    let hash = token_hash(&token);
    let expires_at = s.now() + lifetime(s);
    let sid = rec.sid();
    let mut previous: Option<String> = None;
    let updated = s
        .store
        .update_user(user.id, &mut |u| {
            previous = u.new_device.as_ref().map(|t| t.token_hash.clone());
            u.new_device = Some(OneTimeToken { token_hash: hash.clone(), expires_at, sid });
            Update::Commit
        })
        .await?;
    let Some(updated) = updated else { return Ok(false) };
    if let Some(p) = previous {
        s.store.delete_token(&p).await?;
    }
    s.store.put_token(&hash, TokenKind::NewDevice, user.id).await?;
    s.flush().await?;
    let link = format!("{}{}/new-device/{token}", s.cfg.public_url.as_str().trim_end_matches('/'), s.prefix);
    super::reset::notify(s, super::lang::choose(req, s), &updated, "new_device", context! { link => link, minutes => minutes(s) }).await;
    s.audit(req, Event::new(Kind::NewDeviceLink).result("mail_queued").user(&user.username));
    Ok(true)
}

/// The password-stage session of this request and its user, if the user
/// still needs the proof.
async fn waiting(req: &Request<'_>, s: &Services) -> Result<Option<(std::sync::Arc<SessionRecord>, User)>, WebError> {
    let Some((claims, rec)) = session(req, s).await else { return Ok(None) };
    if claims.stage != Stage::Password {
        return Ok(None);
    }
    match s.store.user(claims.uid).await? {
        Some(u) if !u.disabled => Ok(Some((rec, u))),
        _ => Ok(None),
    }
}

/// Where a session that no longer waits for the link goes.
fn onward(s: &Services, rec: Option<&SessionRecord>, user: Option<&User>) -> Reply {
    match (rec, user) {
        (Some(r), Some(u)) if r.device_proof || !needs_proof(s, u) => {
            redirect(&s.route(if u.authenticators.is_empty() { "setup" } else { "verify" }))
        }
        _ => redirect(&format!("{}?notice=login_expired", s.route("login"))),
    }
}

fn masked(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}…@{domain}")
        }
        None => "…".into(),
    }
}

fn render_waiting(req: &Request<'_>, s: &Services, rec: &SessionRecord, user: &User, status: u16, resent: bool) -> Result<Reply, WebError> {
    let sent = user.new_device.as_ref().is_some_and(|t| t.sid == rec.sid() && s.now() < t.expires_at);
    let state = match (&user.email, sent) {
        (None, _) => "contact",
        (Some(_), true) => "sent",
        (Some(_), false) => "not_sent",
    };
    let ctx = context! {
        state => state,
        email => user.email.as_deref().map(masked),
        minutes => minutes(s),
        resent => resent,
        action => s.route("new-device"),
        back_url => s.route("login"),
    };
    form_page(req, s, status, "new_device", ctx)
}

/// `GET /new-device`: "we have mailed you a link" (or "please contact us").
pub(super) async fn waiting_get(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let Some((rec, user)) = waiting(req, s).await? else { return Ok(onward(s, None, None)) };
    if rec.device_proof || !needs_proof(s, &user) {
        return Ok(onward(s, Some(&rec), Some(&user)));
    }
    render_waiting(req, s, &rec, &user, 200, false)
}

/// `POST /new-device`: send the link again (a newer link cancels the older).
pub(super) async fn resend_post(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let form = Form::parse(req.body);
    if check_post(req, s, &form) != PostCheck::Ok {
        return Ok(error_reply(s, req, 403, "error_403"));
    }
    let Some((rec, user)) = waiting(req, s).await? else { return Ok(onward(s, None, None)) };
    if rec.device_proof || !needs_proof(s, &user) {
        return Ok(onward(s, Some(&rec), Some(&user)));
    }
    let sent = send_link(req, s, &user, &rec).await?;
    let user = s.store.user(user.id).await?.unwrap_or(user);
    render_waiting(req, s, &rec, &user, 200, sent)
}

/// What a link token is: valid for this browser session, valid but opened
/// in another browser (or after the session ended), or not valid at all.
enum Link {
    Here { rec: std::sync::Arc<SessionRecord>, user: Box<User>, hash: String },
    ElseWhere,
    Invalid,
}

async fn check_link(req: &Request<'_>, s: &Services, token: &str) -> Result<Link, WebError> {
    if token.len() != 43 || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Ok(Link::Invalid);
    }
    let hash = token_hash(token);
    let Some(uid) = s.store.token(&hash, TokenKind::NewDevice).await? else { return Ok(Link::Invalid) };
    let Some(user) = s.store.user(uid).await? else { return Ok(Link::Invalid) };
    let now = s.now();
    let Some(t) = user.new_device.clone().filter(|t| !user.disabled && ct_eq(t.token_hash.as_bytes(), hash.as_bytes()) && now < t.expires_at)
    else {
        return Ok(Link::Invalid);
    };
    match session(req, s).await {
        Some((claims, rec)) if claims.stage == Stage::Password && claims.uid == uid && t.sid == Some(claims.sid) => {
            Ok(Link::Here { rec, user: Box::new(user), hash })
        }
        _ => Ok(Link::ElseWhere),
    }
}

fn no_referrer(mut r: Reply) -> Reply {
    r.headers.retain(|h| h.0 != "referrer-policy");
    r.headers.push(("referrer-policy", "no-referrer".into()));
    r
}

fn link_refused(req: &Request<'_>, s: &Services, link: &Link) -> Reply {
    let (status, key) = match link {
        Link::ElseWhere => (403, "error_new_device_browser"),
        _ => (410, "error_new_device_invalid"),
    };
    no_referrer(error_reply(s, req, status, key))
}

/// `GET /new-device/<token>`: a button, nothing consumed.
pub(super) async fn link_get(req: &Request<'_>, s: &Services, token: &str) -> Result<Reply, WebError> {
    let link = check_link(req, s, token).await?;
    if !matches!(link, Link::Here { .. }) {
        return Ok(link_refused(req, s, &link));
    }
    let ctx = context! { action => format!("{}/new-device/{token}", s.prefix) };
    Ok(no_referrer(form_page(req, s, 200, "new_device_open", ctx)?))
}

/// `POST /new-device/<token>`: uses the link up and lets this browser
/// session enrol.
pub(super) async fn link_post(req: &Request<'_>, s: &Services, token: &str) -> Result<Reply, WebError> {
    let form = Form::parse(req.body);
    match check_post(req, s, &form) {
        PostCheck::Ok => {}
        _ => return Ok(no_referrer(error_reply(s, req, 403, "error_403"))),
    }
    let link = check_link(req, s, token).await?;
    let Link::Here { rec, user, hash } = link else {
        return Ok(link_refused(req, s, &link));
    };
    let now = s.now();
    let sid = rec.sid();
    // An operator's command since this request's check wins.
    let consumed = super::second::update_unrevoked(s, user.id, rec.stamp, &mut |u| {
        // Once: only while this token is still the current one.
        if !u.new_device.as_ref().is_some_and(|t| t.token_hash == hash && now < t.expires_at && t.sid == sid) {
            return Update::Abort;
        }
        u.new_device = None;
        Update::Commit
    })
    .await?;
    let Some(user) = consumed else {
        return Ok(link_refused(req, s, &Link::Invalid));
    };
    s.store.delete_token(&hash).await?;
    let Some(claims) = super::session(req, s).await.map(|(c, _)| c) else {
        return Ok(link_refused(req, s, &Link::ElseWhere));
    };
    let opts = NewSession { expires_at: None, device_proof: true, portal_jar: None };
    let (cookie, _) = start_session_with(s, req, &user, Stage::Password, rec.rd.clone(), Some(&claims), opts).await?;
    s.audit(req, Event::new(Kind::NewDeviceLink).result("opened").user(&user.username));
    let mut r = no_referrer(redirect(&s.route("setup")));
    r.headers.push(("set-cookie", cookie));
    Ok(r)
}
