//! Account administration for the `riegel user ...` commands. Each command
//! is an [`AdminRequest`] executed against the store by [`execute`]. The CLI
//! opens the store directly when it can; while `riegel serve` holds the
//! store (sled allows one process), the CLI sends the request over a unix
//! socket (mode 0600, beside the store) and the server executes it.
//! Passwords are hashed in the CLI process; only hashes cross the socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::audit::{Audit, Event, Kind};
use crate::clock::Clock;
use crate::store::{CounterKey, NewUser, SessionRecord, Store, StoreError, Update, User};

/// What else ends with the sessions a command removed. In portal login
/// mode each one's portal session ends too (the portal's `logout_url`,
/// called with the session's sealed cookies): `app` implements it over the
/// running server's services (the admin socket) or over a portal client of
/// the command's own (when the command opens the store itself).
#[async_trait::async_trait]
pub trait SessionEnds: Send + Sync {
    /// Called after `recs` are removed and flushed; how many portal
    /// sessions ended and how many could not be ended.
    async fn ended(&self, recs: &[SessionRecord]) -> (usize, usize);
}

/// Nothing else ends (`first_factor: local`).
pub struct NothingElse;

#[async_trait::async_trait]
impl SessionEnds for NothingElse {
    async fn ended(&self, _recs: &[SessionRecord]) -> (usize, usize) {
        (0, 0)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum AdminRequest {
    Add { user: NewUserSpec },
    Import { users: Vec<NewUserSpec> },
    List,
    Show { user: String },
    Disable { user: String },
    Enable { user: String },
    SetPassword { user: String, password_hash: String },
    SetEmail { user: String, email: Option<String> },
    ResetTotp { user: String },
    Unban { user: String },
    Delete { user: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NewUserSpec {
    pub username: String,
    pub email: Option<String>,
    pub display_name: String,
    pub password_hash: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AdminResponse {
    pub ok: bool,
    pub message: String,
}

impl AdminResponse {
    fn ok(m: impl Into<String>) -> Self {
        Self { ok: true, message: m.into() }
    }
    fn err(m: impl Into<String>) -> Self {
        Self { ok: false, message: m.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("admin socket {path}: {source}")]
    Socket { path: String, source: std::io::Error },
    #[error("admin socket: bad answer: {0}")]
    Protocol(String),
}

/// Checks a new user's fields; returns every problem.
pub fn validate_user(u: &NewUserSpec) -> Vec<String> {
    let mut errs = Vec::new();
    if u.username.is_empty() {
        errs.push("username is empty".to_string());
    }
    if u.username.contains('@') {
        errs.push(format!("username '{}' contains '@' (usernames and e-mail addresses must be told apart)", u.username));
    }
    if u.username.chars().any(|c| c.is_whitespace() || c.is_control()) || u.username.len() > 128 {
        errs.push(format!("username '{}' has spaces or control characters or is longer than 128 bytes", u.username));
    }
    if let Some(e) = &u.email {
        if !crate::config::valid_email(e) {
            errs.push(format!("'{e}' is not an e-mail address"));
        }
    }
    if u.display_name.chars().any(|c| c.is_control()) || u.display_name.len() > 256 {
        errs.push("display name has control characters or is longer than 256 bytes".to_string());
    }
    if let Some(h) = &u.password_hash {
        if !crate::auth::password::hash_is_supported(h) {
            errs.push("password hash is not an argon2 (PHC) or bcrypt ($2a$/$2b$/$2y$) hash".to_string());
        }
    }
    errs
}

fn to_new(u: &NewUserSpec) -> NewUser {
    NewUser {
        username: u.username.clone(),
        email: u.email.clone().filter(|e| !e.is_empty()),
        display_name: if u.display_name.is_empty() { u.username.clone() } else { u.display_name.clone() },
        password_hash: u.password_hash.clone().filter(|h| !h.is_empty()),
    }
}

fn describe(u: &User) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}",
        u.username,
        u.email.as_deref().unwrap_or("-"),
        u.display_name,
        if u.disabled { "disabled" } else { "enabled" },
        if u.authenticators.is_empty() { "no-totp" } else { "totp" },
        if u.password_hash.is_some() { "password" } else { "no-password" },
    )
}

impl AdminRequest {
    /// The command's name in the audit log, and the account it names;
    /// `None` for the commands that change nothing (list, show).
    fn audit_name(&self) -> Option<(&'static str, Option<&str>)> {
        Some(match self {
            AdminRequest::Add { user } => ("add", Some(user.username.as_str())),
            AdminRequest::Import { .. } => ("import", None),
            AdminRequest::List | AdminRequest::Show { .. } => return None,
            AdminRequest::Disable { user } => ("disable", Some(user.as_str())),
            AdminRequest::Enable { user } => ("enable", Some(user.as_str())),
            AdminRequest::SetPassword { user, .. } => ("set_password", Some(user.as_str())),
            AdminRequest::SetEmail { user, .. } => ("set_email", Some(user.as_str())),
            AdminRequest::ResetTotp { user } => ("reset_totp", Some(user.as_str())),
            AdminRequest::Unban { user } => ("unban", Some(user.as_str())),
            AdminRequest::Delete { user } => ("delete", Some(user.as_str())),
        })
    }
}

/// Runs one admin request. Every change that affects access ends the
/// user's sessions (through the user's security stamp, atomic with the
/// change); every change is flushed before the answer. Every command but
/// `list` and `show` is written to the audit log (`event: admin`), with
/// `via` (`cli`: the command opened the store itself; `admin_socket`: a
/// running server executed it).
///
/// The sessions a command ends are removed and flushed, then handed to
/// `ends` (in portal login mode: the portal's sessions end too).
pub async fn execute(store: &dyn Store, clock: &dyn Clock, audit: &Audit, via: &'static str, ends: &dyn SessionEnds, req: AdminRequest) -> AdminResponse {
    let named = req.audit_name().map(|(c, u)| (c, u.map(str::to_string), import_size(&req)));
    let resp = match run(store, clock, ends, req).await {
        Ok(r) => r,
        Err(e) => AdminResponse::err(e.to_string()),
    };
    if let Some((command, user, count)) = named {
        let mut e = Event::new(Kind::Admin).result(if resp.ok { "success" } else { "failure" }).field("command", command).field("via", via);
        if let Some(u) = &user {
            // The name as the operator typed it (it names an account, or
            // the command failed).
            e = e.user(u);
        }
        if let Some(n) = count {
            e = e.field("count", n);
        }
        if !resp.ok {
            e = e.field("error", resp.message.clone());
        }
        audit.record(clock.now(), None, None, &e);
    }
    resp
}

fn import_size(req: &AdminRequest) -> Option<usize> {
    match req {
        AdminRequest::Import { users } => Some(users.len()),
        _ => None,
    }
}

async fn find(store: &dyn Store, login: &str) -> Result<User, StoreError> {
    store.find_user(login).await?.ok_or(StoreError::NoSuchUser)
}

async fn change(store: &dyn Store, login: &str, f: &mut (dyn FnMut(&mut User) + Send)) -> Result<User, StoreError> {
    let u = find(store, login).await?;
    let updated = store
        .update_user(u.id, &mut |u| {
            f(u);
            Update::Commit
        })
        .await?
        .ok_or(StoreError::NoSuchUser)?;
    Ok(updated)
}

/// Ends the sessions a stamp change has made invalid (the stamp already
/// refuses them; this removes the records, durably) and what belongs to
/// them ([`SessionEnds`]). What ended, for the command's answer.
async fn end_sessions(store: &dyn Store, ends: &dyn SessionEnds, uid: u64) -> Result<String, StoreError> {
    let gone = store.delete_sessions_of(uid, None).await?;
    if gone.is_empty() {
        return Ok("ended 0 sessions".into());
    }
    store.flush().await?;
    let mut said = format!("ended {} sessions", gone.len());
    match ends.ended(&gone).await {
        (0, 0) => {}
        (n, 0) => said.push_str(&format!(" (and {n} portal sessions)")),
        (n, failed) => said.push_str(&format!(
            " (and {n} portal sessions; {failed} could not be ended, the portal's logout_url failed: they last until the portal's own timeout)"
        )),
    }
    Ok(said)
}

/// `u` refuses logins and every session issued so far (`disable`, and
/// `delete` before the account goes).
fn disable(u: &mut User, now: crate::clock::UnixTime) {
    u.disabled = true;
    u.revoke_sessions();
    u.updated_at = now;
}

/// The counters that lock or slow down logins to `u`: its account counter,
/// and the unknown-login counters of its name and address (from before the
/// account existed). Exact keys: no other account's counter is touched.
fn login_counters(u: &User) -> Vec<CounterKey> {
    let mut keys = vec![CounterKey::Account(u.id), CounterKey::login(&u.username)];
    keys.extend(u.email.iter().map(|e| CounterKey::login(e)));
    keys
}

async fn run(store: &dyn Store, clock: &dyn Clock, ends: &dyn SessionEnds, req: AdminRequest) -> Result<AdminResponse, StoreError> {
    let now = clock.now();
    let resp = match req {
        AdminRequest::Add { user } => {
            let errs = validate_user(&user);
            if !errs.is_empty() {
                return Ok(AdminResponse::err(errs.join("; ")));
            }
            let u = store.insert_user(to_new(&user), now).await?;
            AdminResponse::ok(format!("added user {}", u.username))
        }
        AdminRequest::Import { users } => {
            let mut errs = Vec::new();
            for (i, u) in users.iter().enumerate() {
                for e in validate_user(u) {
                    errs.push(format!("row {}: {e}", i + 1));
                }
            }
            if !errs.is_empty() {
                return Ok(AdminResponse::err(format!("nothing imported:\n{}", errs.join("\n"))));
            }
            let n = store.insert_users(users.iter().map(to_new).collect(), now).await?.len();
            AdminResponse::ok(format!("imported {n} users"))
        }
        AdminRequest::List => {
            let mut users = store.users().await?;
            users.sort_by(|a, b| a.username.cmp(&b.username));
            let lines: Vec<String> = users.iter().map(describe).collect();
            return Ok(AdminResponse::ok(lines.join("\n")));
        }
        AdminRequest::Show { user } => {
            let u = find(store, &user).await?;
            let c = store.counter(&CounterKey::Account(u.id)).await?;
            let authenticators = if u.authenticators.is_empty() {
                match (u.pending_authenticator.is_some(), u.enrolled_once) {
                    (true, _) => "enrolment pending".to_string(),
                    (false, true) => "none (had one: enrolling again needs the mailed new-device link, unless totp.reenrol_proof is none)".to_string(),
                    (false, false) => "none".to_string(),
                }
            } else {
                let names: Vec<&str> = u.authenticators.iter().map(|a| if a.name.is_empty() { "-" } else { a.name.as_str() }).collect();
                format!("{} confirmed ({})", u.authenticators.len(), names.join(", "))
            };
            return Ok(AdminResponse::ok(format!(
                "username: {}\ne-mail: {}\nname: {}\nstatus: {}\nauthenticators: {}\nrecovery codes left: {}\npassword: {}\nfailures in a row: {}\nbanned until: {}",
                u.username,
                u.email.as_deref().unwrap_or("-"),
                u.display_name,
                if u.disabled { "disabled" } else { "enabled" },
                authenticators,
                u.recovery_codes.len(),
                match &u.password_hash {
                    Some(h) if h.starts_with("$2") => "set (bcrypt, upgraded at next login)",
                    Some(_) => "set",
                    None => "not set (use the reset link)",
                },
                c.consecutive,
                if c.banned_until == crate::auth::regulation::LOCKED {
                    "locked (riegel user unban)".to_string()
                } else if c.banned_until > now {
                    format!("in {} min", (c.banned_until - now + 59) / 60)
                } else {
                    "-".to_string()
                },
            )));
        }
        AdminRequest::Disable { user } => {
            let u = change(store, &user, &mut |u| disable(u, now)).await?;
            let n = end_sessions(store, ends, u.id).await?;
            AdminResponse::ok(format!("disabled {}; {n}", u.username))
        }
        AdminRequest::Enable { user } => {
            let u = change(store, &user, &mut |u| {
                u.disabled = false;
                u.updated_at = now;
            })
            .await?;
            AdminResponse::ok(format!("enabled {}", u.username))
        }
        AdminRequest::SetPassword { user, password_hash } => {
            if !crate::auth::password::hash_is_supported(&password_hash) {
                return Ok(AdminResponse::err("not a supported password hash"));
            }
            let u = change(store, &user, &mut |u| {
                u.set_password(password_hash.clone(), now);
            })
            .await?;
            let n = end_sessions(store, ends, u.id).await?;
            store.delete_counter(&CounterKey::Account(u.id)).await?;
            AdminResponse::ok(format!("password of {} set; {n}", u.username))
        }
        AdminRequest::SetEmail { user, email } => {
            let email = email.filter(|e| !e.is_empty());
            if let Some(e) = &email {
                if !crate::config::valid_email(e) {
                    return Ok(AdminResponse::err(format!("'{e}' is not an e-mail address")));
                }
            }
            let u = change(store, &user, &mut |u| {
                u.email = email.clone();
                u.reset = None;
                u.new_device = None;
                u.revoke_sessions();
                u.updated_at = now;
            })
            .await?;
            let n = end_sessions(store, ends, u.id).await?;
            AdminResponse::ok(format!("e-mail of {} set to {}; {n}", u.username, u.email.as_deref().unwrap_or("-")))
        }
        AdminRequest::ResetTotp { user } => {
            let mut old_link = None;
            let u = change(store, &user, &mut |u| {
                u.authenticators.clear();
                u.pending_authenticator = None;
                u.recovery_codes.clear();
                old_link = u.new_device.take().map(|t| t.token_hash);
                u.revoke_sessions();
                u.updated_at = now;
            })
            .await?;
            if let Some(h) = old_link {
                store.delete_token(&h).await?;
            }
            let n = end_sessions(store, ends, u.id).await?;
            // `enrolled_once` stays: the password alone no longer enrols
            // (web::device, with totp.reenrol_proof: email).
            let next = match (&u.email, u.enrolled_once) {
                (_, false) => "the next login enrols with the password, as for a new account".to_string(),
                (Some(e), true) => format!("the next login mails a 'Neues Gerät einrichten' link to {e} (unless totp.reenrol_proof is none)"),
                (None, true) => "no e-mail address: set one (riegel user set-email) so the next login can mail the new-device link, or the user is asked to contact you (unless totp.reenrol_proof is none)".to_string(),
            };
            AdminResponse::ok(format!("authenticators of {} removed; {next}; {n}", u.username))
        }
        AdminRequest::Unban { user } => {
            let u = find(store, &user).await?;
            let mut n = 0;
            for k in login_counters(&u) {
                n += usize::from(store.delete_counter(&k).await?);
            }
            AdminResponse::ok(format!("unbanned {} ({n} counters cleared)", u.username))
        }
        AdminRequest::Delete { user } => {
            // Refused and its sessions revoked first (no login slips in
            // between), then the sessions removed (so their portal
            // sessions end too), then the account.
            let u = change(store, &user, &mut |u| disable(u, now)).await?;
            let n = end_sessions(store, ends, u.id).await?;
            store.delete_user(u.id).await?;
            for k in login_counters(&u).into_iter().chain([CounterKey::ResetAccount(u.id)]) {
                store.delete_counter(&k).await?;
            }
            AdminResponse::ok(format!("deleted {}; {n}", u.username))
        }
    };
    store.flush().await?;
    Ok(resp)
}

/// Serves admin requests on a unix socket (mode 0600) in a background
/// thread, one JSON line in, one JSON line out per connection.
pub fn serve_socket(path: &Path, store: Arc<dyn Store>, clock: Arc<dyn Clock>, audit: Audit, ends: Arc<dyn SessionEnds>) -> Result<(), AdminError> {
    let sock_err = |source| AdminError::Socket { path: path.display().to_string(), source };
    if path.exists() {
        // A stale socket from an earlier run (we hold the store lock, so no
        // other server is using it).
        std::fs::remove_file(path).map_err(sock_err)?;
    }
    let old = unsafe_umask(0o177);
    let listener = UnixListener::bind(path);
    unsafe_umask(old);
    let listener = listener.map_err(sock_err)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(sock_err)?;
    }
    std::thread::Builder::new()
        .name("riegel-admin".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "admin socket: no runtime");
                    return;
                }
            };
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if let Err(e) = rt.block_on(handle_conn(conn, store.as_ref(), clock.as_ref(), &audit, ends.as_ref())) {
                    tracing::warn!(error = %e, "admin socket request failed");
                }
            }
        })
        .map_err(sock_err)?;
    Ok(())
}

fn unsafe_umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask only swaps the process file-creation mask.
    unsafe { libc::umask(mask) }
}

async fn handle_conn(conn: UnixStream, store: &dyn Store, clock: &dyn Clock, audit: &Audit, ends: &dyn SessionEnds) -> std::io::Result<()> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.by_ref().take(64 * 1024 * 1024).read_line(&mut line)?;
    let resp = match serde_json::from_str::<AdminRequest>(&line) {
        Ok(req) => execute(store, clock, audit, "admin_socket", ends, req).await,
        Err(e) => AdminResponse::err(format!("bad request: {e}")),
    };
    let mut w = conn;
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out)
}

use std::io::Read as _;

/// Sends one request to a running server.
pub fn send(path: &Path, req: &AdminRequest) -> Result<AdminResponse, AdminError> {
    let sock_err = |source| AdminError::Socket { path: path.display().to_string(), source };
    let mut conn = UnixStream::connect(path).map_err(sock_err)?;
    let mut line = serde_json::to_vec(req).map_err(|e| AdminError::Protocol(e.to_string()))?;
    line.push(b'\n');
    conn.write_all(&line).map_err(sock_err)?;
    let mut answer = String::new();
    BufReader::new(conn).read_line(&mut answer).map_err(sock_err)?;
    serde_json::from_str(&answer).map_err(|e| AdminError::Protocol(e.to_string()))
}

/// Parses the import CSV: `username,email,display_name,password_hash`
/// (a header row with these names is skipped). Every bad row is reported
/// with its line number.
pub fn parse_csv(text: &str) -> Result<Vec<NewUserSpec>, Vec<String>> {
    let mut rdr = csv::ReaderBuilder::new().has_headers(false).flexible(true).trim(csv::Trim::All).from_reader(text.as_bytes());
    let mut out = Vec::new();
    let mut errs = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 1;
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                errs.push(format!("line {line}: {e}"));
                continue;
            }
        };
        if line == 1 && rec.get(0).is_some_and(|f| f.eq_ignore_ascii_case("username")) {
            continue;
        }
        if rec.iter().all(str::is_empty) {
            continue;
        }
        // An unquoted argon2 PHC string ($argon2id$v=19$m=19456,t=2,p=1$...)
        // has commas of its own: take everything after the third field.
        let hash_field = if rec.len() > 4 && rec.get(3).is_some_and(|f| f.starts_with("$argon2")) {
            Some(rec.iter().skip(3).collect::<Vec<_>>().join(","))
        } else {
            rec.get(3).map(str::to_string)
        };
        if rec.len() < 3 || (rec.len() > 4 && !hash_field.as_deref().is_some_and(|h| h.starts_with("$argon2"))) {
            errs.push(format!("line {line}: expected 3 or 4 fields (username,email,display_name[,password_hash]), found {}", rec.len()));
            continue;
        }
        let spec = NewUserSpec {
            username: rec[0].to_string(),
            email: Some(rec[1].to_string()).filter(|e| !e.is_empty()),
            display_name: rec[2].to_string(),
            password_hash: hash_field.filter(|h| !h.is_empty()),
        };
        for e in validate_user(&spec) {
            errs.push(format!("line {line}: {e}"));
        }
        out.push(spec);
    }
    let mut seen = std::collections::HashMap::new();
    for (i, u) in out.iter().enumerate() {
        for key in std::iter::once(u.username.to_lowercase()).chain(u.email.iter().map(|e| e.to_lowercase())) {
            if let Some(prev) = seen.insert(key.clone(), i) {
                errs.push(format!("'{key}' appears twice (records {} and {})", prev + 1, i + 1));
            }
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_unquoted_argon2_hash_is_taken_whole() {
        let h = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
        let users = parse_csv(&format!("anna,anna@example.at,Anna,{h}\n")).expect("valid");
        assert_eq!(users[0].password_hash.as_deref(), Some(h));
    }

    #[test]
    fn csv_good_and_bad_rows() {
        let good = "username,email,display_name,password_hash\nanna,anna@example.at,Anna Huber,\nbob,,Bob,\n";
        let users = parse_csv(good).expect("valid");
        assert_eq!(users.len(), 2);
        assert_eq!(users[1].email, None);
        let bad = "anna,anna@example.at,Anna\nbad@name,x@y.at,X\ncarl,not-an-email,Carl\ndora,d@x.at,Dora,plaintext\nanna,a2@x.at,Dup\n";
        let errs = parse_csv(bad).expect_err("invalid");
        let joined = errs.join("\n");
        assert!(joined.contains("line 2"), "{joined}");
        assert!(joined.contains("line 3"), "{joined}");
        assert!(joined.contains("line 4"), "{joined}");
        assert!(joined.contains("appears twice"), "{joined}");
        assert!(!joined.contains("line 1:"), "{joined}");
    }
}
