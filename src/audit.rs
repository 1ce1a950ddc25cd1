//! The audit log: one JSON line per security event (README, "Audit log",
//! documents every field). `web` and `admin` describe what happened as an
//! [`Event`]; [`Audit::record`] adds the time, the client's address and
//! User-Agent, counts logins in [`crate::metrics`] and hands the line to a
//! [`Sink`]: stderr, or `log.audit_file` ([`FileSink`], appended, mode
//! 0600, created if missing, [`FileSink::reopen`] after a rotation).
//!
//! An event never carries a secret: no password, code, recovery code,
//! token, cookie or mail body, and no login name that matches no account
//! (it may be a mistyped password). Only names of existing accounts, as
//! stored, are written.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::clock::UnixTime;
use crate::metrics::{self, LoginResult, LoginStage};

/// What happened. The name is the line's `event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A login step: `stage`, `result` (success, failure, banned).
    Login,
    /// An attempt started a ban: `scope`, `until`.
    Ban,
    /// An enrolment page showed a new key (first authenticator).
    EnrolmentStarted,
    /// The first code of a new first authenticator: `result`.
    Enrolment,
    /// "Sie können nicht auf Ihr Konto zugreifen?": `result` (mail_queued,
    /// no_mail, rate_limited).
    ResetRequested,
    /// A new password set through a reset link.
    ResetCompleted,
    /// A password change on "Mein Zugang": `result`.
    PasswordChanged,
    /// A code asked for on "Mein Zugang" before a change: `purpose`,
    /// `method` (totp, recovery_code), `result`.
    AccountCode,
    /// Adding an authenticator on "Mein Zugang" started.
    AuthenticatorAddStarted,
    /// An authenticator added on "Mein Zugang": `result`.
    AuthenticatorAdded,
    AuthenticatorRemoved,
    RecoveryCodesRenewed,
    /// One session ended on "Mein Zugang".
    SessionEnded,
    /// Every other session ended on "Mein Zugang": `sessions_ended`.
    SessionsEnded,
    Logout,
    /// The lost-phone link: `result` (mail_queued, no_mail, rate_limited,
    /// opened).
    NewDeviceLink,
    /// A `riegel user ...` command: `command`, `result`, `via`.
    Admin,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Login => "login",
            Kind::Ban => "ban",
            Kind::EnrolmentStarted => "enrolment_started",
            Kind::Enrolment => "enrolment",
            Kind::ResetRequested => "reset_requested",
            Kind::ResetCompleted => "reset_completed",
            Kind::PasswordChanged => "password_changed",
            Kind::AccountCode => "account_code",
            Kind::AuthenticatorAddStarted => "authenticator_add_started",
            Kind::AuthenticatorAdded => "authenticator_added",
            Kind::AuthenticatorRemoved => "authenticator_removed",
            Kind::RecoveryCodesRenewed => "recovery_codes_renewed",
            Kind::SessionEnded => "session_ended",
            Kind::SessionsEnded => "sessions_ended",
            Kind::Logout => "logout",
            Kind::NewDeviceLink => "new_device_link",
            Kind::Admin => "admin",
        }
    }
}

/// An event-specific value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Int(i64),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl From<usize> for Value {
    fn from(n: usize) -> Self {
        Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

/// One security event, before time and client are added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: Kind,
    pub result: Option<&'static str>,
    /// The account's name as stored, when the event concerns one that
    /// exists.
    pub user: Option<String>,
    /// The login step, for [`Kind::Login`] (also counted in the metrics).
    pub login: Option<(LoginStage, LoginResult)>,
    pub fields: Vec<(&'static str, Value)>,
}

impl Event {
    pub fn new(kind: Kind) -> Self {
        Self { kind, result: None, user: None, login: None, fields: Vec::new() }
    }

    /// A login step.
    pub fn login(stage: LoginStage, result: LoginResult) -> Self {
        Self { login: Some((stage, result)), result: Some(result.as_str()), ..Self::new(Kind::Login) }
    }

    /// The first code of a first authenticator: the second factor of a
    /// first login (counted as one in the metrics).
    pub fn enrolment(result: LoginResult) -> Self {
        Self { login: Some((LoginStage::SecondFactor, result)), result: Some(result.as_str()), ..Self::new(Kind::Enrolment) }
    }

    pub fn result(mut self, r: &'static str) -> Self {
        self.result = Some(r);
        self
    }

    pub fn user(mut self, name: &str) -> Self {
        self.user = Some(name.to_string());
        self
    }

    pub fn field(mut self, name: &'static str, v: impl Into<Value>) -> Self {
        self.fields.push((name, v.into()));
        self
    }
}

/// Where the lines go. One call per line, the line ends with `\n`.
pub trait Sink: Send + Sync {
    fn write_line(&self, line: &str);
}

/// Lines to stderr (when `log.audit_file` is absent), each in one write.
pub struct Stderr;

impl Sink for Stderr {
    fn write_line(&self, line: &str) {
        if std::io::stderr().lock().write_all(line.as_bytes()).is_err() {
            metrics::audit_write_error();
        }
    }
}

/// Lines appended to a file (`log.audit_file`), each in one `write` on a
/// file opened with `O_APPEND`, so lines of several processes (the server
/// and a `riegel user` command) never interleave. Created with mode 0600.
pub struct FileSink {
    path: PathBuf,
    file: Mutex<File>,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

impl FileSink {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Self { path: path.to_path_buf(), file: Mutex::new(open_append(path)?) })
    }

    /// Opens the file by its path again (after a log rotation moved it):
    /// the next line goes to the file now at the path. On failure the old
    /// file stays in use.
    pub fn reopen(&self) -> std::io::Result<()> {
        let fresh = open_append(&self.path)?;
        *self.file.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Sink for FileSink {
    fn write_line(&self, line: &str) {
        let mut f = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = f.write_all(line.as_bytes()) {
            metrics::audit_write_error();
            tracing::error!(path = %self.path.display(), error = %e, "could not write to the audit log");
        }
    }
}

/// Lines kept in memory (tests).
#[derive(Default)]
pub struct Memory(pub Mutex<Vec<String>>);

impl Memory {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Sink for Memory {
    fn write_line(&self, line: &str) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(line.trim_end().to_string());
    }
}

/// The longest User-Agent written (cut at a character boundary): a client
/// can send kilobytes.
pub const MAX_USER_AGENT: usize = 256;

/// The audit log of a process: formats each event and hands it to its sink.
#[derive(Clone)]
pub struct Audit {
    sink: Arc<dyn Sink>,
    /// The file sink, when there is one (for [`Audit::reopen`]).
    file: Option<Arc<FileSink>>,
}

impl Default for Audit {
    /// To stderr.
    fn default() -> Self {
        Self { sink: Arc::new(Stderr), file: None }
    }
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.file {
            Some(file) => write!(f, "Audit({})", file.path().display()),
            None => f.write_str("Audit(sink)"),
        }
    }
}

impl Audit {
    /// The audit log `log.audit_file` names, or stderr.
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
        match path {
            None => Ok(Self::default()),
            Some(p) => {
                let file = Arc::new(FileSink::open(p)?);
                Ok(Self { sink: file.clone(), file: Some(file) })
            }
        }
    }

    /// Lines to `sink` (tests).
    pub fn to_sink(sink: Arc<dyn Sink>) -> Self {
        Self { sink, file: None }
    }

    /// Opens `log.audit_file` again after a log rotation (SIGHUP); nothing
    /// to do for stderr.
    pub fn reopen(&self) -> std::io::Result<()> {
        match &self.file {
            Some(f) => f.reopen(),
            None => Ok(()),
        }
    }

    /// Writes one event: `time` is riegel's clock (seconds), `client` the
    /// client's address after the trusted-proxy rules.
    pub fn record(&self, time: UnixTime, client: Option<IpAddr>, user_agent: Option<&str>, e: &Event) {
        if let Some((stage, result)) = e.login {
            metrics::login(stage, result);
        }
        self.sink.write_line(&line(time, client, user_agent, e));
    }
}

/// `s` as a JSON string.
fn json_str(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(q) => out.push_str(&q),
        Err(_) => out.push_str("\"\""),
    }
}

/// The first `max` bytes of `s`, cut at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// RFC 3339 in UTC, to the second.
fn rfc3339(t: UnixTime) -> String {
    jiff::Timestamp::from_second(t).map(|ts| ts.to_string()).unwrap_or_else(|_| t.to_string())
}

/// The JSON line of an event, fields in a fixed order: `time`, `event`,
/// `result`, `user`, `client`, `user_agent`, then the event's own. Absent
/// values are left out.
pub fn line(time: UnixTime, client: Option<IpAddr>, user_agent: Option<&str>, e: &Event) -> String {
    let mut out = String::with_capacity(160);
    out.push_str("{\"time\":\"");
    out.push_str(&rfc3339(time));
    out.push_str("\",\"event\":\"");
    out.push_str(e.kind.as_str());
    out.push('"');
    fn put(out: &mut String, name: &str, v: &str) {
        out.push_str(",\"");
        out.push_str(name);
        out.push_str("\":");
        json_str(out, v);
    }
    if let Some(r) = e.result {
        put(&mut out, "result", r);
    }
    if let Some(u) = &e.user {
        put(&mut out, "user", u);
    }
    if let Some(c) = client {
        put(&mut out, "client", &c.to_string());
    }
    if let Some(ua) = user_agent.filter(|ua| !ua.is_empty()) {
        put(&mut out, "user_agent", cut(ua, MAX_USER_AGENT));
    }
    if let Some((stage, _)) = e.login {
        put(&mut out, "stage", stage.as_str());
    }
    for (name, v) in &e.fields {
        match v {
            Value::Str(s) => put(&mut out, name, s),
            Value::Int(n) => {
                let _ = write!(out, ",\"{name}\":{n}");
            }
        }
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_of_json_with_the_fixed_fields_first() {
        let e = Event::login(LoginStage::Password, LoginResult::Failure).user("anna\"\n").field("remaining", 3usize);
        let l = line(1_796_000_000, Some("192.0.2.7".parse().expect("ip")), Some("Mozilla/5.0\r\nX: y"), &e);
        assert!(l.ends_with("}\n") && l.matches('\n').count() == 1, "{l}");
        let v: serde_json::Value = serde_json::from_str(&l).expect("json");
        assert_eq!(v["time"], "2026-11-30T00:53:20Z");
        assert_eq!(v["event"], "login");
        assert_eq!(v["result"], "failure");
        assert_eq!(v["stage"], "password");
        assert_eq!(v["user"], "anna\"\n");
        assert_eq!(v["client"], "192.0.2.7");
        assert_eq!(v["user_agent"], "Mozilla/5.0\r\nX: y");
        assert_eq!(v["remaining"], 3);
        assert!(l.starts_with("{\"time\":"), "{l}");
    }

    #[test]
    fn absent_values_are_left_out_and_long_user_agents_cut() {
        let ua = "é".repeat(300);
        let l = line(0, None, Some(&ua), &Event::new(Kind::Logout));
        let v: serde_json::Value = serde_json::from_str(&l).expect("json");
        assert!(v.get("user").is_none() && v.get("client").is_none() && v.get("result").is_none());
        assert!(v["user_agent"].as_str().expect("ua").len() <= MAX_USER_AGENT);
    }

    #[test]
    fn the_file_is_appended_created_0600_and_reopened_after_a_rotation() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("riegel-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("audit.jsonl");
        std::fs::write(&path, "{\"earlier\":1}\n").expect("earlier");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let a = Audit::open(Some(&path)).expect("open");
        a.record(0, None, None, &Event::new(Kind::Logout));
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 2, "appended: {text}");
        std::fs::rename(&path, dir.join("audit.jsonl.1")).expect("rotate");
        a.record(1, None, None, &Event::new(Kind::Logout));
        a.reopen().expect("reopen");
        a.record(2, None, None, &Event::new(Kind::Logout));
        assert_eq!(std::fs::read_to_string(dir.join("audit.jsonl.1")).expect("old").lines().count(), 3);
        let fresh = std::fs::read_to_string(&path).expect("new");
        assert_eq!(fresh.lines().count(), 1, "{fresh}");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
