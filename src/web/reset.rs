//! Forgotten password: `/forgot` asks for a mail, `/reset/<token>` sets a
//! new password. The answer to `/forgot` is the same page whatever the
//! account, and it comes no sooner than a fixed time after the request
//! ([`FORGOT_ANSWER_TIME`]), so the work done for an existing account (a
//! token, a mail in the spool) does not show in the time either; the mail
//! is durable before the answer says it is on its way. `GET
//! /reset/<token>` never consumes the token (mail scanners prefetch
//! links); only the POST does.

use crate::store::prelude::*;
use std::sync::Arc;
use std::time::Duration;

use minijinja::context;

use super::forms::{check_post, form_page, Form, PostCheck};
use super::regulation::Attempt;
use crate::audit::{Event, Kind};
use super::{error_reply, error_reply_with, page, Reply, Request, Services, WebError};
use crate::config::Language;
use crate::auth::crypto::{random_token, sha256};
use crate::auth::password::check_policy;
use crate::mail::Mail;
use crate::store::{CounterKey, OneTimeToken, TokenKind, Update, User};

/// The least time between a `/forgot` request and its answer: longer than
/// the work for an existing account takes (a few store writes and a
/// flush), so existing and unknown accounts are answered equally late.
const FORGOT_ANSWER_TIME: Duration = Duration::from_millis(300);

fn render_forgot(req: &Request<'_>, s: &Services, status: u16, username: &str, error: Option<&str>) -> Result<Reply, WebError> {
    let ctx = context! {
        action => s.route("forgot"),
        back_url => s.route("login"),
        username => username,
        error => error,
    };
    form_page(req, s, status, "forgot", ctx)
}

/// The form, with the name typed on the login page when the link carried
/// it (`?username=`: the login page's script adds it, as the guide says:
/// type the name, then click "Sie können nicht auf Ihr Konto zugreifen?").
pub(super) fn forgot_get(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let typed = req
        .query
        .and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "username").map(|(_, v)| v.trim().to_string()))
        .filter(|v| v.len() <= 320 && !v.chars().any(char::is_control))
        .unwrap_or_default();
    render_forgot(req, s, 200, &typed, None)
}

pub(super) async fn forgot_post(req: &Request<'_>, s: &Arc<Services>) -> Result<Reply, WebError> {
    let answer_time = tokio::time::sleep(FORGOT_ANSWER_TIME);
    let form = Form::parse(req.body);
    let login = form.get("username").trim().to_string();
    match check_post(req, s, &form) {
        PostCheck::CrossSite => return Ok(error_reply(s, req, 403, "error_403")),
        PostCheck::BadToken => return render_forgot(req, s, 403, &login, Some("err_csrf")),
        PostCheck::Ok => {}
    }
    if login.is_empty() || login.len() > 320 {
        return render_forgot(req, s, 200, "", Some("err_required"));
    }
    // Every request counts against the client network (reset requests
    // have their own counters, with the regulation's limits).
    if let Err(refused) = Attempt::reset_request(s, req.client_ip).charge(s, req).await? {
        s.audit(req, Event::new(Kind::ResetRequested).result("rate_limited"));
        return Ok(error_reply_with(s, req, 429, "error_429", refused.minutes));
    }
    send_reset_mail(s, req, &login).await?;
    // The store is durable here in both cases (a flush either way).
    s.flush().await?;
    answer_time.await;
    let minutes = s.cfg.reset.token_lifetime.as_secs().div_ceil(60);
    page(s, req, 200, "forgot_sent", context! { back_url => s.route("login"), minutes => minutes })
}

async fn send_reset_mail(s: &Services, req: &Request<'_>, login: &str) -> Result<(), WebError> {
    let lang = super::lang::choose(req, s);
    let user = s.store.find_user(login).await?;
    let Some(user) = user.filter(|u| !u.disabled && u.email.is_some()) else {
        // An unknown, disabled or mail-less account; no name is written
        // (an unknown one may be anything typed).
        s.audit(req, Event::new(Kind::ResetRequested).result("no_mail"));
        return Ok(());
    };
    if Attempt::reset_mail(s, &user).charge(s, req).await?.is_err() {
        s.audit(req, Event::new(Kind::ResetRequested).result("rate_limited").user(&user.username));
        return Ok(());
    }
    let token = random_token::<32>(s.rng.as_ref());
    let hash = data_encoding::HEXLOWER.encode(&sha256(token.as_bytes()));
    let expires_at = s.now() + s.cfg.reset.token_lifetime.as_secs() as i64;
    let mut previous: Option<String> = None;
    let updated = s
        .store
        .update_user(user.id, &mut |u| {
            // A newer token cancels the older one.
            previous = u.reset.as_ref().map(|r| r.token_hash.clone());
            u.reset = Some(OneTimeToken { token_hash: hash.clone(), expires_at, sid: None });
            Update::Commit
        })
        .await?;
    let Some(updated) = updated else { return Ok(()) };
    if let Some(p) = previous {
        s.store.delete_token(&p).await?;
    }
    s.store.put_token(&hash, TokenKind::Reset, user.id).await?;
    let link = format!("{}{}/reset/{token}", s.cfg.public_url.as_str().trim_end_matches('/'), s.prefix);
    let minutes = s.cfg.reset.token_lifetime.as_secs().div_ceil(60);
    // Durable (flushed) before it returns.
    notify(s, lang, &updated, "reset", context! { link => link, minutes => minutes }).await;
    s.audit(req, Event::new(Kind::ResetRequested).result("mail_queued").user(&user.username));
    Ok(())
}

/// Renders and queues a mail to the user in `lang` (the language of the
/// page that caused it), if the user has an address; the mail is durable
/// when this returns. `time` is now in `branding.timezone`, written as
/// people there write it. Failures are logged; they never fail the request.
pub(super) async fn notify(s: &Services, lang: Language, user: &User, template: &str, extra: minijinja::Value) {
    let Some(to) = user.email.clone() else { return };
    let time = super::when::date_time(s.now(), &s.tz, lang);
    let name = if user.display_name.is_empty() { user.username.clone() } else { user.display_name.clone() };
    let ctx = context! { ..extra, ..context! { name => name, time => time } };
    match s.pages.render_mail_in(lang, template, ctx) {
        Ok((subject, text, html)) => {
            if let Err(e) = s.mail.send(Mail { to, subject, text, html: Some(html) }).await {
                tracing::error!(error = %e, template, "mail not queued");
            }
        }
        Err(e) => tracing::error!(error = %e, template, "mail template failed"),
    }
}

/// The user a reset token belongs to, if the token is the newest, unused
/// and unexpired one of that user.
async fn token_user(s: &Services, token: &str) -> Result<Option<(User, String)>, WebError> {
    if token.len() != 43 || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Ok(None);
    }
    let hash = data_encoding::HEXLOWER.encode(&sha256(token.as_bytes()));
    let Some(uid) = s.store.token(&hash, TokenKind::Reset).await? else { return Ok(None) };
    let Some(user) = s.store.user(uid).await? else { return Ok(None) };
    let valid = !user.disabled
        && user.reset.as_ref().is_some_and(|r| crate::auth::crypto::ct_eq(r.token_hash.as_bytes(), hash.as_bytes()) && s.now() < r.expires_at);
    Ok(valid.then_some((user, hash)))
}

fn no_referrer(mut r: Reply) -> Reply {
    for h in r.headers.iter_mut() {
        if h.0 == "referrer-policy" {
            h.1 = "no-referrer".into();
        }
    }
    if !r.headers.iter().any(|h| h.0 == "referrer-policy") {
        r.headers.push(("referrer-policy", "no-referrer".into()));
    }
    r
}

fn render_reset(req: &Request<'_>, s: &Services, token: &str, status: u16, error: Option<&str>) -> Result<Reply, WebError> {
    let ctx = context! {
        action => format!("{}/reset/{token}", s.prefix),
        error => error,
        min_length => s.cfg.password.min_length,
    };
    Ok(no_referrer(form_page(req, s, status, "reset", ctx)?))
}

pub(super) async fn reset_get(req: &Request<'_>, s: &Services, token: &str) -> Result<Reply, WebError> {
    if token_user(s, token).await?.is_none() {
        return Ok(no_referrer(error_reply(s, req, 410, "error_reset_invalid")));
    }
    render_reset(req, s, token, 200, None)
}

pub(super) async fn reset_post(req: &Request<'_>, s: &Services, token: &str) -> Result<Reply, WebError> {
    let form = Form::parse(req.body);
    match check_post(req, s, &form) {
        PostCheck::CrossSite => return Ok(error_reply(s, req, 403, "error_403")),
        PostCheck::BadToken => return render_reset(req, s, token, 403, Some("err_csrf")),
        PostCheck::Ok => {}
    }
    let Some((user, hash)) = token_user(s, token).await? else {
        return Ok(no_referrer(error_reply(s, req, 410, "error_reset_invalid")));
    };
    let pw = form.get("password").to_string();
    if let Err(e) = check_policy(&pw, form.get("password2"), s.cfg.password.min_length, &user.username, user.email.as_deref()) {
        return render_reset(req, s, token, 200, Some(e.text_key()));
    }
    let rng = s.rng.clone();
    let new_hash = s
        .blocking_hash(move |h| h.hash(&pw, rng.as_ref()))
        .await?
        .map_err(|e| WebError::Internal(e.to_string()))?;
    let now = s.now();
    let updated = s
        .store
        .update_user(user.id, &mut |u| {
            // Single use: only if this token is still the current one.
            if !u.reset.as_ref().is_some_and(|r| r.token_hash == hash && now < r.expires_at) {
                return Update::Abort;
            }
            // A reset ends every session; the authenticator stays.
            u.set_password(new_hash.clone(), now);
            Update::Commit
        })
        .await?;
    let Some(updated) = updated else {
        return Ok(no_referrer(error_reply(s, req, 410, "error_reset_invalid")));
    };
    s.store.delete_token(&hash).await?;
    let gone = s.store.delete_sessions_of(user.id, None).await?;
    let ended = gone.len();
    // A reset lifts a lock on this account (and only this one).
    s.store.delete_counter(&CounterKey::Account(user.id)).await?;
    s.flush().await?;
    // (Resets are riegel's own, so never in portal login mode; should that
    // change, the portal's sessions end with riegel's here too.)
    super::portal::end_all(s, &gone).await;
    s.audit(req, Event::new(Kind::ResetCompleted).result("success").user(&user.username).field("sessions_ended", ended));
    notify(s, super::lang::choose(req, s), &updated, "password_changed", context! {}).await;
    Ok(no_referrer(page(s, req, 200, "reset_done", context! { login_url => s.route("login") })?))
}
