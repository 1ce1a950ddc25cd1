//! "Mein Zugang" (`/account`): a tenant's own account, for a fully
//! authenticated session only (anyone else goes through the login with
//! `rd=/_riegel/account`). Name and e-mail, the password, the
//! authenticators, the recovery codes and the sessions.
//!
//! Rules:
//! - Every POST passes the CSRF and Origin checks ([`check_post`]).
//! - A change that needs a second factor (starting an enrolment, removing
//!   an authenticator, new recovery codes) takes a current code of any of
//!   the user's authenticators (the one being removed included) or a
//!   recovery code, through [`Attempt`] against the login's own counters
//!   (reserved before the check). So does the current password.
//! - An enrolment started in this session (by such a code, or by the
//!   recovery code of the login just made) goes on without another code;
//!   its confirmation takes a code from the *new* app.
//! - The last authenticator cannot be removed here (an operator's
//!   `riegel user reset-totp` can).
//! - A password change and "end all other sessions" raise the user's
//!   security stamp (every session issued before dies, racing logins
//!   included) and re-issue the current session under a new id.
//! - Every change is audited (target `audit`, never a secret) and followed
//!   by a notice mail in the page's language.

use crate::store::prelude::*;
use std::sync::Arc;

use minijinja::context;

use super::forms::{check_post, form_page, Form, PostCheck};
use super::regulation::Attempt;
use crate::audit::{Event, Kind};
use super::second::{
    confirm_enrolment, enrolment_context, enrolment_secret, matching_authenticator, new_recovery_codes, open_secret,
    pending_is_fresh, update_unrevoked, use_recovery_code, use_step,
};
use super::{clear_session_cookie, error_reply, page, redirect, session, session_cookie, Reply, Request, Services, WebError};
use crate::auth::crypto::sha256;
use crate::auth::password::{check_policy, Verified, MAX_PASSWORD_BYTES};
use crate::auth::session::{SessionClaims, SessionCodec, Stage};
use crate::auth::totp;
use crate::config::Language;
use crate::store::{PendingAuthenticator, SessionRecord, Update, User};

/// The longest name an authenticator may have, in characters.
const MAX_NAME_CHARS: usize = 40;

/// A fully authenticated request and its user.
struct Account {
    claims: SessionClaims,
    rec: Arc<SessionRecord>,
    user: User,
    lang: Language,
}

/// The account of this request, or the way to the login (and back here).
async fn account(req: &Request<'_>, s: &Services) -> Result<Result<Account, Reply>, WebError> {
    let to_login = || redirect(&s.route_rd("login", Some(&s.route("account"))));
    let Some((claims, rec)) = session(req, s).await else { return Ok(Err(to_login())) };
    if claims.stage != Stage::Full {
        return Ok(Err(to_login()));
    }
    match s.store.user(claims.uid).await? {
        Some(user) if !user.disabled && user.stamp == rec.stamp => {
            let now = s.now();
            if now - rec.last_seen >= 60 {
                if let Err(e) = s.store.touch_session(claims.uid, &claims.sid, now).await {
                    tracing::warn!(error = %e, "could not record session activity");
                }
            }
            Ok(Ok(Account { claims, rec, user, lang: super::lang::choose(req, s) }))
        }
        _ => Ok(Err(to_login())),
    }
}

macro_rules! account_or_return {
    ($req:expr, $s:expr) => {
        match account($req, $s).await? {
            Ok(a) => a,
            Err(reply) => return Ok(reply),
        }
    };
}

/// A form's error on the page: which form, which text, the minutes of a ban.
#[derive(Debug, Clone, Copy, Default)]
struct FormError<'a> {
    form: &'a str,
    key: &'a str,
    minutes: i64,
}

/// The public handle of a session in the page (never the session id).
fn handle(sid: &[u8]) -> String {
    let mut input = b"riegel-session-handle:".to_vec();
    input.extend_from_slice(sid);
    data_encoding::HEXLOWER.encode(&sha256(&input)[..8])
}

fn when(s: &Services, t: i64, lang: Language) -> String {
    super::when::date_time(t, &s.tz, lang)
}

/// The user's live sessions (this one first, then by last activity).
async fn live_sessions(s: &Services, a: &Account) -> Result<Vec<SessionRecord>, WebError> {
    let now = s.now();
    let idle = s.cfg.session.idle_timeout.as_secs() as i64;
    let mut list: Vec<SessionRecord> = s
        .store
        .sessions_of(a.user.id)
        .await?
        .into_iter()
        .filter(|r| r.stamp == a.user.stamp && now < r.expires_at && now - r.last_seen <= idle)
        .collect();
    let current = a.claims.sid.to_vec();
    list.sort_by_key(|r| (r.sid != current, std::cmp::Reverse(r.last_seen)));
    Ok(list)
}

async fn render_account(req: &Request<'_>, s: &Services, a: &Account, status: u16, notice: Option<&str>, err: FormError<'_>) -> Result<Reply, WebError> {
    let lang = a.lang;
    let can_remove = a.user.authenticators.len() > 1;
    let authenticators: Vec<minijinja::Value> = a
        .user
        .authenticators
        .iter()
        .map(|x| {
            context! {
                id => x.id,
                name => x.name.clone(),
                added => when(s, x.created_at, lang),
                last_used => x.last_used_at.map(|t| when(s, t, lang)),
                remove_action => s.route(&format!("account/authenticators/{}/remove", x.id)),
                form => format!("remove-{}", x.id),
            }
        })
        .collect();
    let current = a.claims.sid.to_vec();
    let sessions: Vec<minijinja::Value> = live_sessions(s, a)
        .await?
        .iter()
        .map(|r| {
            let device = super::useragent::parse(r.user_agent.as_deref().unwrap_or(""));
            let id = handle(&r.sid);
            context! {
                id => id.clone(),
                browser => device.browser,
                system => device.system,
                ip => r.ip.clone(),
                started => when(s, r.created_at, lang),
                last_seen => when(s, r.last_seen, lang),
                current => r.sid == current,
                unfinished => r.stage != crate::store::Stage::Full,
                end_action => s.route(&format!("account/sessions/{id}/end")),
            }
        })
        .collect();
    let others = sessions.len().saturating_sub(1);
    let ctx = context! {
        display_name => a.user.display_name.clone(),
        username => a.user.username.clone(),
        email => a.user.email.clone(),
        authenticators => authenticators,
        can_remove => can_remove,
        recovery_left => a.user.recovery_codes.len(),
        sessions => sessions,
        other_sessions => others,
        notice => notice,
        error_form => err.form,
        error => (!err.key.is_empty()).then_some(err.key),
        minutes => err.minutes,
        min_length => s.cfg.password.min_length,
        // Portal login mode: the portal owns the password.
        password_action => s.cfg.portal_login.is_none().then(|| s.route("account/password")),
        add_action => s.route("account/authenticators"),
        codes_action => s.route("account/recovery-codes"),
        end_others_action => s.route("account/sessions/end-others"),
        logout_url => s.route("logout"),
        portal_url => "/",
    };
    form_page(req, s, status, "account", ctx)
}

/// `GET /account`.
pub(super) async fn get(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let a = account_or_return!(req, s);
    let notice = req.query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "notice").and_then(|(_, v)| {
            const KNOWN: &[&str] = &[
                "password_changed",
                "authenticator_added",
                "authenticator_removed",
                "session_ended",
                "sessions_ended",
                "session_gone",
                "enrolment_expired",
            ];
            KNOWN.iter().find(|k| **k == v).copied()
        })
    });
    let notice = notice.map(|n| format!("account_notice_{n}"));
    render_account(req, s, &a, 200, notice.as_deref(), FormError::default()).await
}

fn done(s: &Services, notice: &str) -> Reply {
    redirect(&format!("{}?notice={notice}", s.route("account")))
}

/// The CSRF and Origin checks of every account form: `Err` is the answer
/// (a cross-site POST gets the 403 page; a missing or stale token the
/// account page with "the form has expired" at `form`).
async fn checked(req: &Request<'_>, s: &Services, form: &Form, name: &str) -> Result<Result<Account, Reply>, WebError> {
    match check_post(req, s, form) {
        PostCheck::CrossSite => return Ok(Err(error_reply(s, req, 403, "error_403"))),
        PostCheck::BadToken => {
            return Ok(match account(req, s).await? {
                Ok(a) => Err(render_account(req, s, &a, 403, None, FormError { form: name, key: "err_csrf", minutes: 0 }).await?),
                Err(r) => Err(r),
            })
        }
        PostCheck::Ok => {}
    }
    account(req, s).await
}

macro_rules! checked_or_return {
    ($req:expr, $s:expr, $form:expr, $name:expr) => {
        match checked($req, $s, $form, $name).await? {
            Ok(a) => a,
            Err(reply) => return Ok(reply),
        }
    };
}

/// Why a second-factor check on these pages did not pass.
enum Refusal {
    Format,
    Banned(i64),
    Wrong,
}

impl Refusal {
    fn error<'a>(&self, form: &'a str) -> (u16, FormError<'a>) {
        match self {
            Refusal::Format => (200, FormError { form, key: "err_code_format", minutes: 0 }),
            Refusal::Banned(m) => (429, FormError { form, key: "err_banned", minutes: *m }),
            Refusal::Wrong => (200, FormError { form, key: "err_account_code_invalid", minutes: 0 }),
        }
    }
}

/// Checks `code` as a second factor of `a`'s user: a current code of any
/// authenticator (each with its own replay protection) or an unused
/// recovery code (used up, and a notice mailed). Regulated like the login.
/// Returns the user as committed.
async fn second_factor(req: &Request<'_>, s: &Services, a: &Account, code: &str, purpose: &str) -> Result<Result<User, Refusal>, WebError> {
    let is_totp = totp::normalize_code(code).is_ok();
    let is_recovery = !is_totp && totp::normalize_recovery_code(code).len() == 10;
    if !is_totp && !is_recovery {
        return Ok(Err(Refusal::Format));
    }
    let method = if is_totp { "totp" } else { "recovery_code" };
    let code_event = |result| Event::new(Kind::AccountCode).result(result).user(&a.user.username).field("purpose", purpose).field("method", method);
    let attempt = Attempt::user(s, &a.user, req.client_ip);
    if let Err(refused) = attempt.reserve(s).await? {
        s.audit(req, code_event("banned"));
        return Ok(Err(Refusal::Banned(refused.minutes)));
    }
    let committed = if is_totp {
        match matching_authenticator(s, &a.user, code)? {
            Some((id, step)) => use_step(s, &a.user, id, step, a.rec.stamp).await?,
            None => None,
        }
    } else {
        use_recovery_code(s, &a.user, code, a.rec.stamp).await?
    };
    let Some(user) = committed else {
        s.audit(req, code_event("failure"));
        attempt.failed(s, req).await?;
        return Ok(Err(Refusal::Wrong));
    };
    attempt.succeeded(s).await?;
    s.flush().await?;
    let remaining = user.recovery_codes.len();
    s.audit(req, if is_recovery { code_event("success").field("remaining", remaining) } else { code_event("success") });
    if is_recovery {
        super::reset::notify(s, a.lang, &user, "recovery_used", context! { remaining => remaining }).await;
    }
    Ok(Ok(user))
}

/// Raises the user's stamp (done by the caller's update), then gives this
/// browser a new session id under the new stamp, with the old session's
/// start, end, return path, device and portal jar, and removes every other
/// session (telling the portal to end theirs). Returns the cookie and how
/// many sessions ended.
async fn reissue(s: &Services, a: &Account, user: &User) -> Result<(String, usize), WebError> {
    let now = s.now();
    let sid = SessionCodec::new_session_id(s.rng.as_ref());
    let mut rec = (*a.rec).clone();
    rec.sid = sid.to_vec();
    rec.stamp = user.stamp;
    rec.last_seen = now;
    rec.email = user.email.clone();
    rec.display_name = user.display_name.clone();
    s.store.put_session(&rec).await?;
    // The other sessions' portal logins end too (portal login mode); this
    // browser's own jar lives on in the new record.
    let ended = super::portal::end_others(s, user.id, &sid, Some(&a.rec.sid)).await?;
    let value = s.codec.encode(&SessionClaims { sid, uid: user.id, stage: Stage::Full, issued_at: now, expires_at: rec.expires_at });
    Ok((session_cookie(s, &value), ended))
}

// ---------- password ----------

/// `POST /account/password`: `current_password`, `password`, `password2`.
/// The reset form's policy and messages; ends every other session.
pub(super) async fn password_post(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let form = Form::parse(req.body);
    let current = form.get("current_password").to_string();
    let new = form.get("password").to_string();
    if current.len() > MAX_PASSWORD_BYTES || new.len() > MAX_PASSWORD_BYTES {
        return Ok(error_reply(s, req, 413, "error_413"));
    }
    let a = checked_or_return!(req, s, &form, "password");
    let fail = |key| FormError { form: "password", key, minutes: 0 };
    if current.is_empty() {
        return render_account(req, s, &a, 200, None, fail("err_required")).await;
    }
    if let Err(e) = check_policy(&new, form.get("password2"), s.cfg.password.min_length, &a.user.username, a.user.email.as_deref()) {
        return render_account(req, s, &a, 200, None, fail(e.text_key())).await;
    }
    let attempt = Attempt::user(s, &a.user, req.client_ip);
    if let Err(refused) = attempt.reserve(s).await? {
        s.audit(req, Event::new(Kind::PasswordChanged).result("banned").user(&a.user.username));
        return render_account(req, s, &a, 429, None, FormError { form: "password", key: "err_banned", minutes: refused.minutes }).await;
    }
    let Some(stored) = a.user.password_hash.clone() else {
        s.audit(req, Event::new(Kind::PasswordChanged).result("failure").user(&a.user.username));
        attempt.failed(s, req).await?;
        return render_account(req, s, &a, 200, None, fail("err_current_password")).await;
    };
    let check = stored.clone();
    let verdict = s.blocking_hash(move |h| h.verify(&check, &current)).await?;
    if !matches!(verdict, Ok(Verified::Right { .. })) {
        s.audit(req, Event::new(Kind::PasswordChanged).result("failure").user(&a.user.username));
        attempt.failed(s, req).await?;
        return render_account(req, s, &a, 200, None, fail("err_current_password")).await;
    }
    attempt.succeeded(s).await?;
    let rng = s.rng.clone();
    let new_hash = s.blocking_hash(move |h| h.hash(&new, rng.as_ref())).await?.map_err(|e| WebError::Internal(e.to_string()))?;
    let now = s.now();
    // Revoked meanwhile (an operator, another tab's "end others"): this
    // session is over, never re-issued under a new stamp.
    let updated = update_unrevoked(s, a.user.id, a.rec.stamp, &mut |u| {
        if u.password_hash.as_deref() != Some(stored.as_str()) {
            return Update::Abort;
        }
        u.set_password(new_hash.clone(), now);
        Update::Commit
    })
    .await;
    let updated = match updated {
        Err(WebError::Revoked) => {
            s.audit(req, Event::new(Kind::PasswordChanged).result("failure").user(&a.user.username).field("reason", "session_revoked"));
            return Ok(redirect(&s.route_rd("login", Some(&s.route("account")))));
        }
        r => r?,
    };
    let Some(user) = updated else {
        // Changed meanwhile (another tab, an operator): ask again.
        return render_account(req, s, &a, 409, None, fail("err_current_password")).await;
    };
    let (cookie, ended) = reissue(s, &a, &user).await?;
    s.audit(req, Event::new(Kind::PasswordChanged).result("success").user(&user.username).field("sessions_ended", ended));
    super::reset::notify(s, a.lang, &user, "password_changed", context! {}).await;
    let mut r = done(s, "password_changed");
    r.headers.push(("set-cookie", cookie));
    Ok(r)
}

// ---------- authenticators ----------

/// The enrolment this session started, if it is still fresh.
fn own_enrolment(s: &Services, a: &Account, user: &User) -> Option<PendingAuthenticator> {
    user.pending_authenticator.clone().filter(|p| pending_is_fresh(s, p) && p.sid == Some(a.claims.sid))
}

fn valid_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("err_name_required");
    }
    if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err("err_name_invalid");
    }
    Ok(())
}

fn render_add(req: &Request<'_>, s: &Services, user: &User, p: &PendingAuthenticator, status: u16, error: Option<&str>, minutes: i64) -> Result<Reply, WebError> {
    let secret = open_secret(s, user.id, &p.sealed)?;
    let ctx = context! {
        ..enrolment_context(s, user, &secret)?,
        ..context! {
            name => p.name.clone(),
            action => s.route("account/authenticators/confirm"),
            back_url => s.route("account"),
            error => error,
            minutes => minutes,
        }
    };
    form_page(req, s, status, "account_add", ctx)
}

/// `GET /account/authenticators`: the enrolment this session started, or
/// back to the account page.
pub(super) async fn add_get(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let a = account_or_return!(req, s);
    match own_enrolment(s, &a, &a.user) {
        Some(p) if !p.name.is_empty() => render_add(req, s, &a.user, &p, 200, None, 0),
        _ => Ok(redirect(&format!("{}#authenticators", s.route("account")))),
    }
}

/// `POST /account/authenticators`: `name`, and `code` unless this session
/// has an enrolment in progress. Answers with the QR code and the
/// confirmation form.
pub(super) async fn add_post(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let form = Form::parse(req.body);
    let a = checked_or_return!(req, s, &form, "add");
    let name = form.get("name").trim().to_string();
    if let Err(key) = valid_name(&name) {
        return render_account(req, s, &a, 200, None, FormError { form: "add", key, minutes: 0 }).await;
    }
    if let Some(p) = own_enrolment(s, &a, &a.user) {
        // Started in this session (by a code, or by the recovery login):
        // the same secret, under the name now given.
        let renamed = if p.name == name {
            Some(a.user.clone())
        } else {
            s.store
                .update_user(a.user.id, &mut |u| match u.pending_authenticator.as_mut() {
                    Some(q) if q.sealed == p.sealed => {
                        q.name = name.clone();
                        Update::Commit
                    }
                    _ => Update::Abort,
                })
                .await?
        };
        if let Some(p) = renamed.as_ref().and_then(|u| own_enrolment(s, &a, u)) {
            s.flush().await?;
            return render_add(req, s, &a.user, &p, 200, None, 0);
        }
    }
    let user = match second_factor(req, s, &a, form.get("code"), "add_authenticator").await? {
        Ok(u) => u,
        Err(refusal) => {
            let (status, err) = refusal.error("add");
            return render_account(req, s, &a, status, None, err).await;
        }
    };
    enrolment_secret(s, &user, &name, Some(a.claims.sid)).await?;
    let user = s.store.user(user.id).await?.ok_or(crate::store::StoreError::NoSuchUser)?;
    let Some(p) = own_enrolment(s, &a, &user) else {
        return Err(WebError::Internal("enrolment not stored".into()));
    };
    s.audit(req, Event::new(Kind::AuthenticatorAddStarted).user(&user.username));
    render_add(req, s, &user, &p, 200, None, 0)
}

/// `POST /account/authenticators/confirm`: `code` from the new app.
pub(super) async fn confirm_post(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let form = Form::parse(req.body);
    let a = checked_or_return!(req, s, &form, "add");
    let Some(p) = own_enrolment(s, &a, &a.user) else {
        return Ok(done(s, "enrolment_expired"));
    };
    let code = form.get("code");
    if totp::normalize_code(code).is_err() {
        return render_add(req, s, &a.user, &p, 200, Some("err_code_format"), 0);
    }
    let attempt = Attempt::user(s, &a.user, req.client_ip);
    if let Err(refused) = attempt.reserve(s).await? {
        s.audit(req, Event::new(Kind::AuthenticatorAdded).result("banned").user(&a.user.username));
        return render_add(req, s, &a.user, &p, 429, Some("err_banned"), refused.minutes);
    }
    let Some(user) = confirm_enrolment(s, &a.user, &p, code, a.rec.stamp, &mut |u| u.new_device = None).await? else {
        s.audit(req, Event::new(Kind::AuthenticatorAdded).result("failure").user(&a.user.username));
        attempt.failed(s, req).await?;
        return render_add(req, s, &a.user, &p, 200, Some("err_enrol_code_invalid"), 0);
    };
    attempt.succeeded(s).await?;
    s.flush().await?;
    s.audit(req, Event::new(Kind::AuthenticatorAdded).result("success").user(&user.username).field("authenticators", user.authenticators.len()));
    super::reset::notify(s, a.lang, &user, "authenticator_added", context! { device => p.name.clone() }).await;
    Ok(done(s, "authenticator_added"))
}

/// `POST /account/authenticators/<id>/remove`: `code`.
pub(super) async fn remove_post(req: &Request<'_>, s: &Services, id: &str) -> Result<Reply, WebError> {
    let form = Form::parse(req.body);
    let a = checked_or_return!(req, s, &form, &format!("remove-{id}"));
    let Some(target) = id.parse::<u32>().ok().and_then(|id| a.user.authenticator(id)).cloned() else {
        return Ok(error_reply(s, req, 404, "error_404"));
    };
    let form_name = format!("remove-{}", target.id);
    if a.user.authenticators.len() < 2 {
        return render_account(req, s, &a, 409, None, FormError { form: &form_name, key: "err_last_authenticator", minutes: 0 }).await;
    }
    let user = match second_factor(req, s, &a, form.get("code"), "remove_authenticator").await? {
        Ok(u) => u,
        Err(refusal) => {
            let (status, err) = refusal.error(&form_name);
            return render_account(req, s, &a, status, None, err).await;
        }
    };
    let now = s.now();
    let removed = s
        .store
        .update_user(user.id, &mut |u| {
            // Never the last one, whatever ran meanwhile.
            if u.authenticators.len() < 2 || u.authenticator(target.id).is_none() {
                return Update::Abort;
            }
            u.authenticators.retain(|x| x.id != target.id);
            u.updated_at = now;
            Update::Commit
        })
        .await?;
    let Some(user) = removed else {
        return render_account(req, s, &a, 409, None, FormError { form: &form_name, key: "err_last_authenticator", minutes: 0 }).await;
    };
    s.flush().await?;
    s.audit(req, Event::new(Kind::AuthenticatorRemoved).user(&user.username).field("authenticators", user.authenticators.len()));
    super::reset::notify(s, a.lang, &user, "authenticator_removed", context! { device => target.name.clone() }).await;
    Ok(done(s, "authenticator_removed"))
}

// ---------- recovery codes ----------

/// `POST /account/recovery-codes`: `code`. Ten new codes, shown once; the
/// old ones stop working.
pub(super) async fn codes_post(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let form = Form::parse(req.body);
    let a = checked_or_return!(req, s, &form, "codes");
    let user = match second_factor(req, s, &a, form.get("code"), "recovery_codes").await? {
        Ok(u) => u,
        Err(refusal) => {
            let (status, err) = refusal.error("codes");
            return render_account(req, s, &a, status, None, err).await;
        }
    };
    let (codes, hashes) = new_recovery_codes(s, user.id);
    let now = s.now();
    let updated = s
        .store
        .update_user(user.id, &mut |u| {
            u.recovery_codes = hashes.clone();
            u.updated_at = now;
            Update::Commit
        })
        .await?
        .ok_or(crate::store::StoreError::NoSuchUser)?;
    s.flush().await?;
    s.audit(req, Event::new(Kind::RecoveryCodesRenewed).user(&updated.username));
    super::reset::notify(s, a.lang, &updated, "recovery_codes_new", context! {}).await;
    let ctx = context! { recovery_codes => codes, back_url => s.route("account") };
    page(s, req, 200, "account_codes", ctx)
}

// ---------- sessions ----------

/// `POST /account/sessions/<id>/end`. This browser's own session is a
/// logout.
pub(super) async fn end_post(req: &Request<'_>, s: &Services, id: &str) -> Result<Reply, WebError> {
    let form = Form::parse(req.body);
    let a = checked_or_return!(req, s, &form, "sessions");
    let all = s.store.sessions_of(a.user.id).await?;
    let Some(target) = all.iter().find(|r| handle(&r.sid) == id) else {
        return Ok(done(s, "session_gone"));
    };
    let Some(sid) = target.sid() else { return Ok(done(s, "session_gone")) };
    let gone = s.store.delete_session(a.user.id, &sid).await?;
    s.flush().await?;
    // The record as removed (its jar as the portal last renewed it).
    if let Some(gone) = gone {
        super::portal::end(s, &gone).await;
    }
    s.audit(req, Event::new(Kind::SessionEnded).user(&a.user.username).field("own", if sid == a.claims.sid { "yes" } else { "no" }));
    if sid == a.claims.sid {
        let mut r = page(s, req, 200, "logged_out", context! { login_url => s.route("login") })?;
        r.headers.push(("set-cookie", clear_session_cookie(s)));
        return Ok(r);
    }
    Ok(done(s, "session_ended"))
}

/// `POST /account/sessions/end-others`: "Auf allen anderen Geräten
/// abmelden".
pub(super) async fn end_others_post(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let form = Form::parse(req.body);
    let a = checked_or_return!(req, s, &form, "sessions");
    let now = s.now();
    let updated = update_unrevoked(s, a.user.id, a.rec.stamp, &mut |u| {
        u.revoke_sessions();
        u.updated_at = now;
        Update::Commit
    })
    .await;
    let user = match updated {
        Ok(Some(user)) => user,
        // Revoked since this request's check: nothing to keep.
        Err(WebError::Revoked) => return Ok(redirect(&s.route_rd("login", Some(&s.route("account"))))),
        Ok(None) => return Err(crate::store::StoreError::NoSuchUser.into()),
        Err(e) => return Err(e),
    };
    let (cookie, ended) = reissue(s, &a, &user).await?;
    s.audit(req, Event::new(Kind::SessionsEnded).user(&user.username).field("sessions_ended", ended));
    super::reset::notify(s, a.lang, &user, "sessions_ended", context! { count => ended }).await;
    let mut r = done(s, "sessions_ended");
    r.headers.push(("set-cookie", cookie));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_handles_are_stable_short_and_not_the_id() {
        let sid = [7u8; 16];
        let h = handle(&sid);
        assert_eq!(h.len(), 16);
        assert_eq!(h, handle(&sid));
        assert_ne!(h, handle(&[8u8; 16]));
        assert!(!h.contains(&data_encoding::HEXLOWER.encode(&sid)[..8]));
    }

    #[test]
    fn authenticator_names() {
        assert_eq!(valid_name(""), Err("err_name_required"));
        assert_eq!(valid_name("Handy"), Ok(()));
        assert_eq!(valid_name("Tablet – Küche"), Ok(()));
        assert_eq!(valid_name(&"ä".repeat(40)), Ok(()));
        assert_eq!(valid_name(&"ä".repeat(41)), Err("err_name_invalid"));
        assert_eq!(valid_name("a\u{0}b"), Err("err_name_invalid"));
        assert_eq!(valid_name("a\nb"), Err("err_name_invalid"));
    }
}
