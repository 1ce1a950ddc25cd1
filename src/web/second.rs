//! The second factor: TOTP enrolment (`/setup`, `/setup/confirm`), the code
//! at every login (`/verify`) and recovery codes (`/recovery`). Each is
//! reached only with a password-stage session; success replaces it with a
//! new, full session.

use crate::store::prelude::*;
use minijinja::context;

use super::forms::{check_post, form_page, Form, PostCheck};
use super::login::start_session;
use super::regulation::Attempt;
use crate::audit::{Event, Kind};
use crate::metrics::{LoginResult, LoginStage};
use super::{error_reply, page, redirect, session, Reply, Request, Services, WebError};
use crate::auth::session::{SessionClaims, Stage};
use crate::auth::totp;
use crate::store::{Authenticator, PendingAuthenticator, SessionRecord, Update, User};

struct Pending {
    claims: SessionClaims,
    rec: std::sync::Arc<SessionRecord>,
    user: User,
}

/// The password-stage session and its (enabled) user, or the way back to login.
async fn pending(req: &Request<'_>, s: &Services) -> Result<Result<Pending, Reply>, WebError> {
    let expired = || redirect(&format!("{}?notice=login_expired", s.route("login")));
    let Some((claims, rec)) = session(req, s).await else { return Ok(Err(expired())) };
    if claims.stage != Stage::Password {
        // Already fully signed in.
        return Ok(Err(redirect(rec.rd.as_deref().unwrap_or("/"))));
    }
    match s.store.user(claims.uid).await? {
        Some(user) if !user.disabled => Ok(Ok(Pending { claims, rec, user })),
        _ => Ok(Err(expired())),
    }
}

macro_rules! pending_or_return {
    ($req:expr, $s:expr) => {
        match pending($req, $s).await? {
            Ok(p) => p,
            Err(reply) => return Ok(reply),
        }
    };
}

/// What a sealed TOTP secret is bound to: the user it belongs to.
pub(super) fn binding(uid: u64) -> Vec<u8> {
    format!("riegel-totp:{uid}").into_bytes()
}

pub(super) fn open_secret(s: &Services, uid: u64, sealed: &[u8]) -> Result<Vec<u8>, WebError> {
    s.secret_box.open(sealed, &binding(uid)).map_err(|e| WebError::Internal(format!("TOTP secret of user {uid}: {e}")))
}

pub(super) fn pending_is_fresh(s: &Services, p: &PendingAuthenticator) -> bool {
    s.now() - p.created_at < s.cfg.totp.enrollment_timeout.as_secs() as i64
}

/// Which of the user's authenticators `code` is the current code of, and
/// its time step; every authenticator is checked, each against its own
/// last used step.
pub(super) fn matching_authenticator(s: &Services, user: &User, code: &str) -> Result<Option<(u32, i64)>, WebError> {
    let now = s.now();
    let mut found = None;
    for a in &user.authenticators {
        let secret = open_secret(s, user.id, &a.sealed)?;
        if let Ok(step) = totp::verify(&secret, code, now, a.last_step) {
            found = found.or(Some((a.id, step)));
        }
    }
    Ok(found)
}

/// Records `step` as used on authenticator `id`, atomically: of many
/// concurrent submissions of one code exactly one commits. The sealed
/// secret must still be the one that was checked.
///
/// `stamp` is the stamp the request's session was checked with: when the
/// user's moved meanwhile (a revocation) or the user was disabled, nothing
/// is recorded and the answer is [`WebError::Revoked`], in the same
/// transaction, so an operator's command racing the check is never undone.
pub(super) async fn use_step(s: &Services, user: &User, id: u32, step: i64, stamp: u64) -> Result<Option<User>, WebError> {
    let Some(checked) = user.authenticator(id).map(|a| a.sealed.clone()) else { return Ok(None) };
    let now = s.now();
    update_unrevoked(s, user.id, stamp, &mut |u| {
        let Some(a) = u.authenticators.iter_mut().find(|a| a.id == id) else { return Update::Abort };
        if a.sealed != checked || a.last_step.is_some_and(|l| l >= step) {
            return Update::Abort;
        }
        a.last_step = Some(step);
        a.last_used_at = Some(now);
        Update::Commit
    })
    .await
}

/// `f` as one update of user `uid`, unless the user no longer accepts a
/// session issued under `stamp` (the request's session was revoked or its
/// user disabled since the request's check): then nothing changes and the
/// answer is [`WebError::Revoked`], decided inside the same transaction.
/// Every update that leads to a session, or acts for one, goes through
/// here, so an operator's command racing the request is never undone.
pub(super) async fn update_unrevoked(s: &Services, uid: u64, stamp: u64, f: &mut crate::store::UserFn<'_>) -> Result<Option<User>, WebError> {
    let mut revoked = false;
    let r = s
        .store
        .update_user(uid, &mut |u| {
            revoked = u.disabled || u.stamp != stamp;
            if revoked {
                return Update::Abort;
            }
            f(u)
        })
        .await?;
    if revoked {
        return Err(WebError::Revoked);
    }
    Ok(r)
}

/// A fresh enrolment secret for `user`, or the one in progress (so a
/// reload shows the same QR code): the plain secret.
pub(super) async fn enrolment_secret(
    s: &Services,
    user: &User,
    name: &str,
    sid: Option<crate::store::SessionId>,
) -> Result<Vec<u8>, WebError> {
    let reusable = |p: &PendingAuthenticator| pending_is_fresh(s, p) && p.sid == sid && p.name == name;
    if let Some(p) = user.pending_authenticator.as_ref().filter(|p| reusable(p)) {
        return open_secret(s, user.id, &p.sealed);
    }
    // Kept server-side (sealed) until confirmed or expired.
    let secret = totp::generate_secret(s.rng.as_ref()).to_vec();
    let sealed = PendingAuthenticator {
        sealed: s.secret_box.seal(s.rng.as_ref(), &secret, &binding(user.id)),
        created_at: s.now(),
        name: name.to_string(),
        sid,
    };
    let mut chosen: Option<PendingAuthenticator> = None;
    let updated = s
        .store
        .update_user(user.id, &mut |u| {
            chosen = None;
            if let Some(existing) = u.pending_authenticator.as_ref().filter(|p| reusable(p)) {
                // Another tab was quicker: show its secret.
                chosen = Some(existing.clone());
                return Update::Abort;
            }
            u.pending_authenticator = Some(sealed.clone());
            Update::Commit
        })
        .await?;
    s.flush().await?;
    match (updated, chosen) {
        (Some(_), _) => Ok(secret),
        (None, Some(other)) => open_secret(s, user.id, &other.sealed),
        (None, None) => Err(WebError::Internal("enrolment update aborted".into())),
    }
}

/// The QR code, the grouped key and the otpauth URI of a secret.
pub(super) fn enrolment_context(s: &Services, user: &User, secret: &[u8]) -> Result<minijinja::Value, WebError> {
    let b32 = totp::secret_base32(secret);
    let uri = totp::otpauth_uri(&s.cfg.totp.issuer, &user.username, secret);
    let qr = totp::qr_svg(&uri).ok_or_else(|| WebError::Internal("QR code could not be rendered".into()))?;
    Ok(context! {
        qr_svg => minijinja::Value::from_safe_string(qr),
        secret_grouped => totp::group_secret(&b32),
        otpauth_uri => uri,
    })
}

/// Turns the pending enrolment into an authenticator if `code` is its
/// current code. Returns the committed user, or `None` when the code is
/// wrong or the enrolment changed meanwhile.
pub(super) async fn confirm_enrolment(
    s: &Services,
    user: &User,
    pending: &PendingAuthenticator,
    code: &str,
    stamp: u64,
    extra: &mut (dyn FnMut(&mut User) + Send),
) -> Result<Option<User>, WebError> {
    let secret = open_secret(s, user.id, &pending.sealed)?;
    let Ok(step) = totp::verify(&secret, code, s.now(), None) else { return Ok(None) };
    let now = s.now();
    // Checked before `extra` runs (it may raise the stamp itself).
    update_unrevoked(s, user.id, stamp, &mut |u| {
        if u.pending_authenticator.as_ref() != Some(pending) {
            return Update::Abort;
        }
        let Some(p) = u.pending_authenticator.take() else { return Update::Abort };
        let id = u.next_authenticator_id.max(1);
        u.next_authenticator_id = id.saturating_add(1);
        u.authenticators.push(Authenticator {
            id,
            name: p.name,
            sealed: p.sealed,
            created_at: now,
            last_used_at: Some(now),
            last_step: Some(step),
        });
        u.enrolled_once = true;
        u.updated_at = now;
        extra(u);
        Update::Commit
    })
    .await
}

/// Ten new recovery codes, and their keyed hashes for the store.
pub(super) fn new_recovery_codes(s: &Services, uid: u64) -> (Vec<String>, Vec<String>) {
    let codes = totp::generate_recovery_codes(s.rng.as_ref());
    let hashes = codes.iter().map(|c| recovery_hash(s, uid, c)).collect();
    (codes, hashes)
}

pub(super) fn recovery_hash(s: &Services, uid: u64, code: &str) -> String {
    data_encoding::HEXLOWER.encode(&totp::hash_recovery_code(&s.recovery_pepper, uid, code))
}

// ---------- enrolment ----------

/// After a lost phone the enrolment needs the new-device link opened in
/// this session first (`totp.reenrol_proof: email`).
fn lacks_proof(s: &Services, p: &Pending) -> bool {
    super::device::needs_proof(s, &p.user) && !p.rec.device_proof
}

pub(super) async fn setup_get(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let p = pending_or_return!(req, s);
    if !p.user.authenticators.is_empty() {
        return Ok(redirect(&s.route("verify")));
    }
    if lacks_proof(s, &p) {
        return Ok(redirect(&s.route("new-device")));
    }
    let fresh = p.user.pending_authenticator.as_ref().is_none_or(|x| !pending_is_fresh(s, x) || x.sid.is_some());
    let secret = enrolment_secret(s, &p.user, "", None).await?;
    if fresh {
        s.audit(req, Event::new(Kind::EnrolmentStarted).user(&p.user.username));
    }
    let ctx = context! { ..enrolment_context(s, &p.user, &secret)?, ..context! { continue_url => s.route("setup/confirm") } };
    page(s, req, 200, "setup", ctx)
}

fn render_confirm(req: &Request<'_>, s: &Services, status: u16, error: Option<&str>, minutes: i64) -> Result<Reply, WebError> {
    let ctx = context! {
        action => s.route("setup/confirm"),
        back_url => s.route("setup"),
        error => error,
        minutes => minutes,
    };
    form_page(req, s, status, "setup_confirm", ctx)
}

/// The first enrolment of this login, if one is in progress.
fn first_enrolment(s: &Services, user: &User) -> Option<PendingAuthenticator> {
    user.pending_authenticator.clone().filter(|x| pending_is_fresh(s, x) && x.sid.is_none())
}

pub(super) async fn confirm_get(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let p = pending_or_return!(req, s);
    if !p.user.authenticators.is_empty() {
        return Ok(redirect(&s.route("verify")));
    }
    if lacks_proof(s, &p) {
        return Ok(redirect(&s.route("new-device")));
    }
    if first_enrolment(s, &p.user).is_none() {
        return Ok(redirect(&s.route("setup")));
    }
    render_confirm(req, s, 200, None, 0)
}

pub(super) async fn confirm_post(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let form = Form::parse(req.body);
    match check_post(req, s, &form) {
        PostCheck::CrossSite => return Ok(error_reply(s, req, 403, "error_403")),
        PostCheck::BadToken => return render_confirm(req, s, 403, Some("err_csrf"), 0),
        PostCheck::Ok => {}
    }
    let p = pending_or_return!(req, s);
    if !p.user.authenticators.is_empty() {
        return Ok(redirect(&s.route("verify")));
    }
    if lacks_proof(s, &p) {
        return Ok(redirect(&s.route("new-device")));
    }
    let Some(enrolment) = first_enrolment(s, &p.user) else {
        return Ok(redirect(&s.route("setup")));
    };
    let code = form.get("code");
    if totp::normalize_code(code).is_err() {
        return render_confirm(req, s, 200, Some("err_code_format"), 0);
    }
    let attempt = Attempt::user(s, &p.user, req.client_ip);
    if let Err(refused) = attempt.reserve(s).await? {
        s.audit(req, Event::enrolment(LoginResult::Banned).user(&p.user.username));
        return render_confirm(req, s, 429, Some("err_banned"), refused.minutes);
    }
    let (codes, hashes) = new_recovery_codes(s, p.user.id);
    let committed = confirm_enrolment(s, &p.user, &enrolment, code, p.rec.stamp, &mut |u| {
        u.recovery_codes = hashes.clone();
        u.new_device = None;
        // A new authenticator ends every other session of the user.
        u.revoke_sessions();
    })
    .await?;
    let Some(user) = committed else {
        s.audit(req, Event::enrolment(LoginResult::Failure).user(&p.user.username));
        attempt.failed(s, req).await?;
        // The first code of a new app: the usual causes are the phone's
        // clock and a mistyped key.
        return render_confirm(req, s, 200, Some("err_enrol_code_invalid"), 0);
    };
    attempt.succeeded(s).await?;
    // In portal login mode their portal sessions end too.
    super::portal::end_others(s, user.id, &p.claims.sid, None).await?;
    let (cookie, rec) = start_session(s, req, &user, Stage::Full, p.rec.rd.clone(), Some(&p.claims)).await?;
    s.audit(req, Event::enrolment(LoginResult::Success).user(&user.username));
    let ctx = context! {
        recovery_codes => codes,
        continue_url => rec.rd.clone().unwrap_or_else(|| "/".into()),
    };
    let mut r = page(s, req, 200, "activated", ctx)?;
    r.headers.push(("set-cookie", cookie));
    Ok(r)
}

// ---------- every login ----------

fn render_verify(req: &Request<'_>, s: &Services, status: u16, error: Option<&str>, minutes: i64) -> Result<Reply, WebError> {
    let ctx = context! {
        action => s.route("verify"),
        recovery_url => s.route("recovery"),
        error => error,
        minutes => minutes,
    };
    form_page(req, s, status, "verify", ctx)
}

pub(super) async fn verify_get(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let p = pending_or_return!(req, s);
    if p.user.authenticators.is_empty() {
        return Ok(redirect(&s.route("setup")));
    }
    render_verify(req, s, 200, None, 0)
}

pub(super) async fn verify_post(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let form = Form::parse(req.body);
    match check_post(req, s, &form) {
        PostCheck::CrossSite => return Ok(error_reply(s, req, 403, "error_403")),
        PostCheck::BadToken => return render_verify(req, s, 403, Some("err_csrf"), 0),
        PostCheck::Ok => {}
    }
    let p = pending_or_return!(req, s);
    if p.user.authenticators.is_empty() {
        return Ok(redirect(&s.route("setup")));
    }
    let code = form.get("code");
    if totp::normalize_code(code).is_err() {
        return render_verify(req, s, 200, Some("err_code_format"), 0);
    }
    let attempt = Attempt::user(s, &p.user, req.client_ip);
    if let Err(refused) = attempt.reserve(s).await? {
        s.audit(req, Event::login(LoginStage::SecondFactor, LoginResult::Banned).user(&p.user.username));
        return render_verify(req, s, 429, Some("err_banned"), refused.minutes);
    }
    let committed = match matching_authenticator(s, &p.user, code)? {
        Some((id, step)) => use_step(s, &p.user, id, step, p.rec.stamp).await?,
        None => None,
    };
    let Some(user) = committed else {
        s.audit(req, Event::login(LoginStage::SecondFactor, LoginResult::Failure).user(&p.user.username));
        attempt.failed(s, req).await?;
        return render_verify(req, s, 200, Some("err_code_invalid"), 0);
    };
    attempt.succeeded(s).await?;
    let (cookie, rec) = start_session(s, req, &user, Stage::Full, p.rec.rd.clone(), Some(&p.claims)).await?;
    s.audit(req, Event::login(LoginStage::SecondFactor, LoginResult::Success).user(&user.username));
    let mut r = redirect(rec.rd.as_deref().unwrap_or("/"));
    r.headers.push(("set-cookie", cookie));
    Ok(r)
}

// ---------- recovery codes ----------

fn render_recovery(req: &Request<'_>, s: &Services, status: u16, error: Option<&str>, minutes: i64) -> Result<Reply, WebError> {
    let ctx = context! {
        action => s.route("recovery"),
        back_url => s.route("verify"),
        forgot_url => s.route("forgot"),
        error => error,
        minutes => minutes,
    };
    form_page(req, s, status, "recovery", ctx)
}

pub(super) async fn recovery_get(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let p = pending_or_return!(req, s);
    if p.user.authenticators.is_empty() {
        return Ok(redirect(&s.route("setup")));
    }
    render_recovery(req, s, 200, None, 0)
}

/// Uses up recovery code `code` of `user`, atomically (each code once).
/// `stamp` as for [`use_step`].
pub(super) async fn use_recovery_code(s: &Services, user: &User, code: &str, stamp: u64) -> Result<Option<User>, WebError> {
    let hash = recovery_hash(s, user.id, code);
    update_unrevoked(s, user.id, stamp, &mut |u| {
        let before = u.recovery_codes.len();
        u.recovery_codes.retain(|h| !crate::auth::crypto::ct_eq(h.as_bytes(), hash.as_bytes()));
        if u.recovery_codes.len() == before {
            Update::Abort
        } else {
            Update::Commit
        }
    })
    .await
}

pub(super) async fn recovery_post(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let form = Form::parse(req.body);
    match check_post(req, s, &form) {
        PostCheck::CrossSite => return Ok(error_reply(s, req, 403, "error_403")),
        PostCheck::BadToken => return render_recovery(req, s, 403, Some("err_csrf"), 0),
        PostCheck::Ok => {}
    }
    let p = pending_or_return!(req, s);
    if p.user.authenticators.is_empty() {
        return Ok(redirect(&s.route("setup")));
    }
    let code = form.get("code");
    if totp::normalize_recovery_code(code).len() != 10 {
        return render_recovery(req, s, 200, Some("err_recovery_invalid"), 0);
    }
    let attempt = Attempt::user(s, &p.user, req.client_ip);
    if let Err(refused) = attempt.reserve(s).await? {
        s.audit(req, Event::login(LoginStage::RecoveryCode, LoginResult::Banned).user(&p.user.username));
        return render_recovery(req, s, 429, Some("err_banned"), refused.minutes);
    }
    let Some(updated) = use_recovery_code(s, &p.user, code, p.rec.stamp).await? else {
        s.audit(req, Event::login(LoginStage::RecoveryCode, LoginResult::Failure).user(&p.user.username));
        attempt.failed(s, req).await?;
        return render_recovery(req, s, 200, Some("err_recovery_invalid"), 0);
    };
    attempt.succeeded(s).await?;
    let (cookie, rec) = start_session(s, req, &updated, Stage::Full, p.rec.rd.clone(), Some(&p.claims)).await?;
    let remaining = updated.recovery_codes.len();
    s.audit(req, Event::login(LoginStage::RecoveryCode, LoginResult::Success).user(&p.user.username).field("remaining", remaining));
    super::reset::notify(s, super::lang::choose(req, s), &updated, "recovery_used", context! { remaining => remaining }).await;
    // Most who reach for a recovery code have a new phone: the code just
    // given also starts its enrolment, bound to the new session, so "Neues
    // Gerät einrichten" on the next page needs no second code.
    enrolment_secret(s, &updated, "", rec.sid()).await?;
    let ctx = context! {
        remaining => remaining,
        add_action => s.route("account/authenticators"),
        continue_url => rec.rd.clone().unwrap_or_else(|| "/".into()),
        account_url => s.route("account"),
    };
    // The page carries a form: the CSRF cookie is already set (the
    // recovery form had it).
    let mut r = form_page(req, s, 200, "recovery_done", ctx)?;
    r.headers.push(("set-cookie", cookie));
    Ok(r)
}
