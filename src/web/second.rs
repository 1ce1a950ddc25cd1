//! The second factor: TOTP enrolment (`/setup`, `/setup/confirm`), the code
//! at every login (`/verify`) and recovery codes (`/recovery`). Each is
//! reached only with a password-stage session; success replaces it with a
//! new, full session.

use minijinja::context;

use super::forms::{check_post, form_page, Form, PostCheck};
use super::login::start_session;
use super::{
    fail_slowly, error_page, page, redirect, regulation_check, session, RegulationKeys, Reply, Request,
    Services, WebError,
};
use crate::auth::session::{SessionClaims, Stage};
use crate::auth::totp;
use crate::store::{SealedSecret, SessionRecord, Update, User};

struct Pending {
    claims: SessionClaims,
    rec: std::sync::Arc<SessionRecord>,
    user: User,
}

/// The password-stage session and its (enabled) user, or the way back to login.
fn pending(req: &Request<'_>, s: &Services) -> Result<Result<Pending, Reply>, WebError> {
    let expired = || redirect(&format!("{}?notice=login_expired", s.route("login")));
    let Some((claims, rec)) = session(req, s) else { return Ok(Err(expired())) };
    if claims.stage != Stage::Password {
        // Already fully signed in.
        return Ok(Err(redirect(rec.rd.as_deref().unwrap_or("/"))));
    }
    match s.store.user(claims.uid)? {
        Some(user) if !user.disabled => Ok(Ok(Pending { claims, rec, user })),
        _ => Ok(Err(expired())),
    }
}

macro_rules! pending_or_return {
    ($req:expr, $s:expr) => {
        match pending($req, $s)? {
            Ok(p) => p,
            Err(reply) => return Ok(reply),
        }
    };
}

fn binding(uid: u64) -> Vec<u8> {
    format!("riegel-totp:{uid}").into_bytes()
}

fn open_secret(s: &Services, uid: u64, sealed: &SealedSecret) -> Result<Vec<u8>, WebError> {
    s.secret_box
        .open(&sealed.sealed, &binding(uid))
        .map_err(|e| WebError::Internal(format!("TOTP secret of user {uid}: {e}")))
}

fn pending_is_fresh(s: &Services, p: &SealedSecret) -> bool {
    s.now() - p.created_at < s.cfg.totp.enrollment_timeout.as_secs() as i64
}

// ---------- enrolment ----------

pub(super) async fn setup_get(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let p = pending_or_return!(req, s);
    if p.user.totp.is_some() {
        return Ok(redirect(&s.route("verify")));
    }
    let secret = match p.user.pending_totp.as_ref().filter(|x| pending_is_fresh(s, x)) {
        Some(sealed) => open_secret(s, p.user.id, sealed)?,
        None => {
            // A new secret; kept server-side (sealed) until confirmed or expired,
            // so a reload shows the same QR code.
            let secret = totp::generate_secret(s.rng.as_ref()).to_vec();
            let sealed = SealedSecret { sealed: s.secret_box.seal(s.rng.as_ref(), &secret, &binding(p.user.id)), created_at: s.now() };
            let mut chosen: Option<SealedSecret> = None;
            let updated = s.store.update_user(p.user.id, &mut |u| {
                if let Some(existing) = u.pending_totp.as_ref().filter(|x| pending_is_fresh(s, x)) {
                    // Another tab was quicker: show its secret.
                    chosen = Some(existing.clone());
                    return Update::Abort;
                }
                u.pending_totp = Some(sealed.clone());
                Update::Commit
            })?;
            s.flush().await?;
            match (updated, chosen) {
                (Some(_), _) => {
                    tracing::info!(target: "audit", event = "totp_enrolment_started", user = %p.user.username, ip = %req.client_ip, "authenticator enrolment started");
                    secret
                }
                (None, Some(other)) => open_secret(s, p.user.id, &other)?,
                (None, None) => return Err(WebError::Internal("enrolment update aborted".into())),
            }
        }
    };
    let b32 = totp::secret_base32(&secret);
    let account = p.user.username.clone();
    let uri = totp::otpauth_uri(&s.cfg.totp.issuer, &account, &secret);
    let qr = totp::qr_svg(&uri).ok_or_else(|| WebError::Internal("QR code could not be rendered".into()))?;
    let ctx = context! {
        qr_svg => minijinja::Value::from_safe_string(qr),
        secret_grouped => totp::group_secret(&b32),
        otpauth_uri => uri,
        continue_url => s.route("setup/confirm"),
    };
    page(s, 200, "setup", ctx)
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

pub(super) fn confirm_get(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let p = pending_or_return!(req, s);
    if p.user.totp.is_some() {
        return Ok(redirect(&s.route("verify")));
    }
    if !p.user.pending_totp.as_ref().is_some_and(|x| pending_is_fresh(s, x)) {
        return Ok(redirect(&s.route("setup")));
    }
    render_confirm(req, s, 200, None, 0)
}

pub(super) async fn confirm_post(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let form = Form::parse(req.body);
    match check_post(req, s, &form) {
        PostCheck::CrossSite => return Ok(error_page(s, 403, "error_403")),
        PostCheck::BadToken => return render_confirm(req, s, 403, Some("err_csrf"), 0),
        PostCheck::Ok => {}
    }
    let p = pending_or_return!(req, s);
    if p.user.totp.is_some() {
        return Ok(redirect(&s.route("verify")));
    }
    let Some(sealed) = p.user.pending_totp.clone().filter(|x| pending_is_fresh(s, x)) else {
        return Ok(redirect(&s.route("setup")));
    };
    let code = form.get("code");
    if totp::normalize_code(code).is_err() {
        return render_confirm(req, s, 200, Some("err_code_format"), 0);
    }
    let reg = RegulationKeys::new(Some(p.user.id), "", req.client_ip);
    let keys = reg.with_limits(s);
    if let Some(minutes) = regulation_check(s, &keys)? {
        return render_confirm(req, s, 429, Some("err_banned"), minutes);
    }
    let secret = open_secret(s, p.user.id, &sealed)?;
    let step = totp::verify(&secret, code, s.now(), p.user.last_totp_step);
    let codes = totp::generate_recovery_codes(s.rng.as_ref());
    let hashes: Vec<String> = codes
        .iter()
        .map(|c| data_encoding::HEXLOWER.encode(&totp::hash_recovery_code(&s.recovery_pepper, p.user.id, c)))
        .collect();
    let committed = match step {
        Ok(step) => s.store.update_user(p.user.id, &mut |u| {
            if u.totp.is_some() || u.pending_totp.as_ref() != Some(&sealed) || u.last_totp_step.is_some_and(|l| l >= step) {
                return Update::Abort;
            }
            u.totp = u.pending_totp.take();
            u.last_totp_step = Some(step);
            u.recovery_codes = hashes.clone();
            Update::Commit
        })?,
        Err(_) => None,
    };
    if committed.is_none() {
        tracing::info!(target: "audit", event = "totp_enrolment_confirm", outcome = "failure", user = %p.user.username, ip = %req.client_ip, "enrolment code refused");
        fail_slowly(s, &keys).await?;
        return render_confirm(req, s, 200, Some("err_code_invalid"), 0);
    }
    reg.succeed(s)?;
    // A new authenticator ends every other session of the user.
    s.store.delete_sessions_of(p.user.id, Some(&p.claims.sid))?;
    let (cookie, rec) = start_session(s, &p.user, Stage::Full, p.rec.rd.clone(), Some(&p.claims)).await?;
    tracing::info!(target: "audit", event = "totp_enrolment_confirm", outcome = "success", user = %p.user.username, ip = %req.client_ip, "authenticator activated");
    let ctx = context! {
        recovery_codes => codes,
        continue_url => rec.rd.clone().unwrap_or_else(|| "/".into()),
    };
    let mut r = page(s, 200, "activated", ctx)?;
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

pub(super) fn verify_get(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let p = pending_or_return!(req, s);
    if p.user.totp.is_none() {
        return Ok(redirect(&s.route("setup")));
    }
    render_verify(req, s, 200, None, 0)
}

pub(super) async fn verify_post(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let form = Form::parse(req.body);
    match check_post(req, s, &form) {
        PostCheck::CrossSite => return Ok(error_page(s, 403, "error_403")),
        PostCheck::BadToken => return render_verify(req, s, 403, Some("err_csrf"), 0),
        PostCheck::Ok => {}
    }
    let p = pending_or_return!(req, s);
    let Some(sealed) = p.user.totp.clone() else {
        return Ok(redirect(&s.route("setup")));
    };
    let code = form.get("code");
    if totp::normalize_code(code).is_err() {
        return render_verify(req, s, 200, Some("err_code_format"), 0);
    }
    let reg = RegulationKeys::new(Some(p.user.id), "", req.client_ip);
    let keys = reg.with_limits(s);
    if let Some(minutes) = regulation_check(s, &keys)? {
        return render_verify(req, s, 429, Some("err_banned"), minutes);
    }
    let secret = open_secret(s, p.user.id, &sealed)?;
    // Record the used step atomically: of many concurrent submissions of one
    // code exactly one commits.
    let committed = match totp::verify(&secret, code, s.now(), p.user.last_totp_step) {
        Ok(step) => s.store.update_user(p.user.id, &mut |u| {
            if u.totp.as_ref() != Some(&sealed) || u.last_totp_step.is_some_and(|l| l >= step) {
                return Update::Abort;
            }
            u.last_totp_step = Some(step);
            Update::Commit
        })?,
        Err(_) => None,
    };
    if committed.is_none() {
        tracing::info!(target: "audit", event = "totp_verify", outcome = "failure", user = %p.user.username, ip = %req.client_ip, "TOTP code refused");
        fail_slowly(s, &keys).await?;
        return render_verify(req, s, 200, Some("err_code_invalid"), 0);
    }
    reg.succeed(s)?;
    let (cookie, rec) = start_session(s, &p.user, Stage::Full, p.rec.rd.clone(), Some(&p.claims)).await?;
    tracing::info!(target: "audit", event = "totp_verify", outcome = "success", user = %p.user.username, ip = %req.client_ip, "second factor accepted");
    let mut r = redirect(rec.rd.as_deref().unwrap_or("/"));
    r.headers.push(("set-cookie", cookie));
    Ok(r)
}

// ---------- recovery codes ----------

fn render_recovery(req: &Request<'_>, s: &Services, status: u16, error: Option<&str>, minutes: i64) -> Result<Reply, WebError> {
    let ctx = context! {
        action => s.route("recovery"),
        back_url => s.route("verify"),
        error => error,
        minutes => minutes,
    };
    form_page(req, s, status, "recovery", ctx)
}

pub(super) fn recovery_get(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let p = pending_or_return!(req, s);
    if p.user.totp.is_none() {
        return Ok(redirect(&s.route("setup")));
    }
    render_recovery(req, s, 200, None, 0)
}

pub(super) async fn recovery_post(req: &Request<'_>, s: &Services) -> Result<Reply, WebError> {
    let form = Form::parse(req.body);
    match check_post(req, s, &form) {
        PostCheck::CrossSite => return Ok(error_page(s, 403, "error_403")),
        PostCheck::BadToken => return render_recovery(req, s, 403, Some("err_csrf"), 0),
        PostCheck::Ok => {}
    }
    let p = pending_or_return!(req, s);
    if p.user.totp.is_none() {
        return Ok(redirect(&s.route("setup")));
    }
    let code = form.get("code");
    if totp::normalize_recovery_code(code).len() != 10 {
        return render_recovery(req, s, 200, Some("err_recovery_invalid"), 0);
    }
    let reg = RegulationKeys::new(Some(p.user.id), "", req.client_ip);
    let keys = reg.with_limits(s);
    if let Some(minutes) = regulation_check(s, &keys)? {
        return render_recovery(req, s, 429, Some("err_banned"), minutes);
    }
    let hash = data_encoding::HEXLOWER.encode(&totp::hash_recovery_code(&s.recovery_pepper, p.user.id, code));
    let committed = s.store.update_user(p.user.id, &mut |u| {
        let before = u.recovery_codes.len();
        u.recovery_codes.retain(|h| !crate::auth::crypto::ct_eq(h.as_bytes(), hash.as_bytes()));
        if u.recovery_codes.len() == before {
            Update::Abort
        } else {
            Update::Commit
        }
    })?;
    let Some(updated) = committed else {
        tracing::info!(target: "audit", event = "recovery_code", outcome = "failure", user = %p.user.username, ip = %req.client_ip, "recovery code refused");
        fail_slowly(s, &keys).await?;
        return render_recovery(req, s, 200, Some("err_recovery_invalid"), 0);
    };
    reg.succeed(s)?;
    let (cookie, rec) = start_session(s, &p.user, Stage::Full, p.rec.rd.clone(), Some(&p.claims)).await?;
    let remaining = updated.recovery_codes.len();
    tracing::warn!(target: "audit", event = "recovery_code", outcome = "success", user = %p.user.username, ip = %req.client_ip, remaining, "recovery code used instead of TOTP");
    super::reset::notify(s, &updated, "recovery_used", context! { remaining => remaining });
    let mut r = redirect(rec.rd.as_deref().unwrap_or("/"));
    r.headers.push(("set-cookie", cookie));
    Ok(r)
}
