//! The portal's own login (`first_factor: portal`), without I/O.
//!
//! riegel shows its own login page; the password goes to the portal's form
//! server-side: `GET form_url` (its hidden fields, such as a CSRF token,
//! and its pre-login cookies), then `POST post_url` with them and the
//! credentials. The answer is judged by `portal_login.success`. The HTTP
//! exchanges themselves are the proxy's ([`PortalClient`], implemented in
//! `proxy::portal` over the upstream address, injected into
//! [`Services::portal`]): this module builds the requests and reads the
//! answers as plain data.
//!
//! The portal's session cookies (`portal_login.session_cookies`) form the
//! jar: sealed with a key derived from the storage key (bound to the user
//! id) in riegel's session record, added to the `Cookie` header of every
//! request forwarded for a full session, updated from the portal's
//! `Set-Cookie` answers, and never sent to the browser. The password is
//! never stored or logged.

use std::net::IpAddr;

use async_trait::async_trait;

use super::{Identity, Services, WebError};
use crate::auth::crypto::SecretBox;
use crate::config::PortalLoginConfig;
use crate::store::prelude::*;
use crate::store::SessionRecord;

/// Most redirects followed when fetching the login form.
const MAX_FORM_REDIRECTS: usize = 3;

/// One request riegel sends to the portal itself. Its `Debug` shows
/// neither the cookies nor the form (which holds the password).
#[derive(Clone, PartialEq, Eq)]
pub struct PortalRequest {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// A path on the portal (with its query).
    pub target: String,
    /// The `Cookie` header to send, if any.
    pub cookie: Option<String>,
    /// A form body (`application/x-www-form-urlencoded`), for POST.
    pub form: Option<String>,
    /// The client riegel acts for (sent as X-Forwarded-For).
    pub client_ip: IpAddr,
}

impl std::fmt::Debug for PortalRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalRequest")
            .field("method", &self.method)
            .field("target", &self.target)
            .field("cookie", &self.cookie.as_ref().map(|_| "<hidden>"))
            .field("form", &self.form.as_ref().map(|b| format!("<{} bytes hidden>", b.len())))
            .field("client_ip", &self.client_ip)
            .finish()
    }
}

/// The portal's answer, as far as riegel reads it. Its `Debug` shows the
/// cookies' names only and the body's length.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PortalResponse {
    pub status: u16,
    pub location: Option<String>,
    /// The values of every `Set-Cookie` field.
    pub set_cookies: Vec<String>,
    /// The body (bounded by the client), for the form's hidden fields.
    pub body: Vec<u8>,
}

impl std::fmt::Debug for PortalResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .set_cookies
            .iter()
            .map(|c| c.split(';').next().and_then(|p| p.split_once('=')).map_or("<nameless>", |(n, _)| n.trim()))
            .collect();
        // A location may carry a session id (`;jsessionid=`) or a token.
        let location = self.location.as_deref().map(|l| l.split(['?', ';', '#']).next().unwrap_or(""));
        f.debug_struct("PortalResponse")
            .field("status", &self.status)
            .field("location", &location)
            .field("set_cookies", &names)
            .field("body", &format!("<{} bytes>", self.body.len()))
            .finish()
    }
}

/// Why the portal could not be asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PortalError {
    #[error("portal unreachable: {0}")]
    Unreachable(String),
    #[error("portal too slow")]
    Timeout,
    #[error("portal answered nonsense: {0}")]
    Bad(String),
}

/// The HTTP client to the portal (the proxy implements it).
#[async_trait]
pub trait PortalClient: Send + Sync {
    async fn send(&self, req: PortalRequest) -> Result<PortalResponse, PortalError>;
}

/// The portal's cookies riegel holds: names and values, in order. Its
/// `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Jar(Vec<(String, String)>);

impl std::fmt::Debug for Jar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Jar").field(&self.0.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()).finish()
    }
}

/// A `Set-Cookie` value's name, value and whether it removes the cookie
/// (empty value, `Max-Age` of zero or less, or an `Expires` before `now`).
pub fn parse_set_cookie(v: &str, now: i64) -> Option<(&str, &str, bool)> {
    let mut parts = v.split(';');
    let (name, value) = parts.next()?.split_once('=')?;
    let (name, value) = (name.trim(), value.trim().trim_matches('"'));
    if name.is_empty() {
        return None;
    }
    let mut expired = value.is_empty();
    for attr in parts {
        let (k, val) = attr.split_once('=').unwrap_or((attr, ""));
        let (k, val) = (k.trim(), val.trim());
        if k.eq_ignore_ascii_case("max-age") {
            expired = expired || val.parse::<i64>().is_ok_and(|n| n <= 0);
        } else if k.eq_ignore_ascii_case("expires") {
            if let Ok(t) = httpdate::parse_http_date(val) {
                let secs = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
                expired = expired || secs <= now;
            }
        }
    }
    Some((name, value, expired))
}

impl Jar {
    /// From a `Cookie` header value (`a=1; b=2`).
    pub fn parse(header: &str) -> Self {
        Jar(header
            .split(';')
            .filter_map(|p| p.split_once('='))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .filter(|(n, _)| !n.is_empty())
            .collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The `Cookie` header value.
    pub fn header(&self) -> String {
        self.0.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("; ")
    }

    /// Applies one `Set-Cookie` when its name passes `keep`; whether the
    /// jar changed. Values with bytes a header cannot carry are ignored.
    pub fn apply(&mut self, set_cookie: &str, now: i64, keep: impl Fn(&str) -> bool) -> bool {
        let Some((name, value, expired)) = parse_set_cookie(set_cookie, now) else { return false };
        if !keep(name) || !value.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b';' && b != b',') {
            return false;
        }
        let at = self.0.iter().position(|(n, _)| n == name);
        match (at, expired) {
            (Some(i), true) => {
                self.0.remove(i);
                true
            }
            (None, true) => false,
            (Some(i), false) if self.0[i].1 == value => false,
            (Some(i), false) => {
                self.0[i].1 = value.to_string();
                true
            }
            (None, false) => {
                self.0.push((name.to_string(), value.to_string()));
                true
            }
        }
    }

    /// Only the cookies called one of `names`.
    fn only(mut self, names: &[String]) -> Self {
        self.0.retain(|(n, _)| names.contains(n));
        self
    }
}

/// Decodes the few character references a form's attribute values carry.
fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest.find(';').filter(|&e| e <= 10);
        let decoded = end.and_then(|e| {
            let ent = &rest[1..e];
            let c = match ent {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => match ent.strip_prefix('#') {
                    Some(h) if h.starts_with(['x', 'X']) => u32::from_str_radix(&h[1..], 16).ok().and_then(char::from_u32),
                    Some(d) => d.parse::<u32>().ok().and_then(char::from_u32),
                    None => None,
                },
            };
            c.map(|c| (c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &rest[e + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The attributes of one tag's text (after the tag name), names lowercased.
fn attributes(tag: &str) -> Vec<(String, String)> {
    let b = tag.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'/' {
            i += 1;
        }
        if start == i {
            break;
        }
        let name = tag[start..i].to_ascii_lowercase();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let q = b[i];
                let vs = i + 1;
                i = vs;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                value = unescape(&tag[vs..i.min(b.len())]);
                i += 1;
            } else {
                let vs = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                value = unescape(&tag[vs..i]);
            }
        }
        out.push((name, value));
    }
    out
}

/// The tags called `name` in `html` (case-insensitive): each tag's text
/// after its name, up to `>`, with its byte offset.
fn tags<'h>(html: &'h str, lower: &'h str, name: &'h str) -> impl Iterator<Item = (usize, &'h str)> + 'h {
    let open = format!("<{name}");
    let mut from = 0;
    std::iter::from_fn(move || loop {
        let at = from + lower.get(from..)?.find(&open)?;
        let after = at + open.len();
        from = after;
        // `<input` but not `<inputx`.
        if !lower.as_bytes().get(after).is_some_and(|b| b.is_ascii_whitespace() || *b == b'>' || *b == b'/') {
            continue;
        }
        let end = after + lower[after..].find('>').unwrap_or(lower.len() - after);
        return Some((at, &html[after..end]));
    })
}

/// The fields the login form sends besides the credentials: its hidden
/// inputs (CSRF tokens), checked checkboxes and radios, and its first named
/// submit button. The form is the one holding `password_field`, else the
/// first form. Attribute values are decoded; nothing is executed.
pub fn form_fields(html: &str, password_field: &str, username_field: &str) -> Vec<(String, String)> {
    let lower = html.to_ascii_lowercase();
    let forms: Vec<(usize, usize)> = tags(html, &lower, "form")
        .map(|(at, _)| (at, lower[at..].find("</form").map_or(lower.len(), |e| at + e)))
        .collect();
    let names_password = |&(a, e): &(usize, usize)| {
        tags(&html[a..e], &lower[a..e], "input").any(|(_, t)| attributes(t).iter().any(|(k, v)| k == "name" && v == password_field))
    };
    let Some(&(start, end)) = forms.iter().find(|f| names_password(f)).or(forms.first()) else { return Vec::new() };
    let (h, l) = (&html[start..end], &lower[start..end]);
    let mut out = Vec::new();
    let mut submit = false;
    let mut controls: Vec<(usize, &str, bool)> = tags(h, l, "input").map(|(at, t)| (at, t, false)).collect();
    controls.extend(tags(h, l, "button").map(|(at, t)| (at, t, true)));
    controls.sort_by_key(|c| c.0);
    for (_, t, button) in controls {
        let a = attributes(t);
        let get = |k: &str| a.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let Some(name) = get("name").filter(|n| !n.is_empty()) else { continue };
        if name == password_field || name == username_field || get("disabled").is_some() {
            continue;
        }
        let kind = get("type").unwrap_or(if button { "submit" } else { "text" }).to_ascii_lowercase();
        let value = get("value").unwrap_or("").to_string();
        match kind.as_str() {
            "hidden" => out.push((name.to_string(), value)),
            "checkbox" | "radio" if get("checked").is_some() => out.push((name.to_string(), if value.is_empty() { "on".into() } else { value })),
            "submit" | "image" if !submit => {
                submit = true;
                out.push((name.to_string(), value));
            }
            _ => {}
        }
    }
    out
}

/// The path a `Location` leads to, resolved against `base` (a path on the
/// portal); `None` when it cannot be read.
pub fn location_path(base: &str, location: &str) -> Option<String> {
    let base = url::Url::parse("http://portal.invalid").ok()?.join(base).ok()?;
    let to = base.join(location.trim()).ok()?;
    Some(to.path().to_string())
}

/// Whether the portal's answer to the POST is a successful login: every
/// rule of `portal_login.success` holds.
pub fn accepted(cfg: &PortalLoginConfig, r: &PortalResponse, now: i64) -> bool {
    let mut ok = true;
    if let Some(paths) = &cfg.success.redirect_not_to {
        let to = r.location.as_deref().filter(|_| (300..400).contains(&r.status)).and_then(|l| location_path(&cfg.post_url, l));
        ok &= to.is_some_and(|p| !paths.iter().any(|x| p.starts_with(x.split('?').next().unwrap_or(x))));
    }
    if let Some(name) = &cfg.success.set_cookie {
        ok &= r.set_cookies.iter().any(|c| parse_set_cookie(c, now).is_some_and(|(n, _, expired)| n == name && !expired));
    }
    ok
}

/// How the replay ended.
#[derive(Debug)]
pub(super) enum Replay {
    /// The portal took the password; its session cookies.
    Accepted(Jar),
    /// The portal refused it (or answered in a way no rule calls success).
    Refused,
}

fn client(s: &Services) -> Result<&dyn PortalClient, PortalError> {
    s.portal.get().map(|c| &**c).ok_or_else(|| PortalError::Unreachable("no portal client".into()))
}

/// A 5xx from the portal is the portal failing, not a refusal.
fn answered(r: PortalResponse) -> Result<PortalResponse, PortalError> {
    if r.status >= 500 {
        return Err(PortalError::Bad(format!("status {}", r.status)));
    }
    Ok(r)
}

/// Logs in to the portal with `login` and `password`: the form, then the
/// POST. Every cookie of the form's answer goes with the POST; the jar
/// keeps only the session cookies.
pub(super) async fn replay(s: &Services, cfg: &PortalLoginConfig, login: &str, password: &str, ip: IpAddr) -> Result<Replay, PortalError> {
    let c = client(s)?;
    let now = s.now();
    let mut cookies = Jar::default();
    let mut target = cfg.form_url.clone();
    let mut form = None;
    for _ in 0..=MAX_FORM_REDIRECTS {
        let cookie = (!cookies.is_empty()).then(|| cookies.header());
        let r = answered(c.send(PortalRequest { method: "GET", target: target.clone(), cookie, form: None, client_ip: ip }).await?)?;
        for v in &r.set_cookies {
            cookies.apply(v, now, |_| true);
        }
        match (r.status, r.location.as_deref()) {
            (300..=399, Some(l)) => {
                // Same portal only: a redirect elsewhere (SSO) is not followed.
                let next = url::Url::parse("http://portal.invalid").ok().and_then(|b| b.join(&target).ok()).and_then(|b| b.join(l.trim()).ok());
                match next {
                    Some(u) if u.host_str() == Some("portal.invalid") => {
                        target = match u.query() {
                            Some(q) => format!("{}?{q}", u.path()),
                            None => u.path().to_string(),
                        };
                    }
                    _ => return Err(PortalError::Bad("the login form redirects to another site".into())),
                }
            }
            (200..=299, _) => {
                form = Some(r.body);
                break;
            }
            (st, _) => return Err(PortalError::Bad(format!("login form: status {st}"))),
        }
    }
    let Some(html) = form else { return Err(PortalError::Bad("login form: too many redirects".into())) };
    let html = String::from_utf8_lossy(&html);
    let body = {
        let mut body = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in form_fields(&html, &cfg.password_field, &cfg.username_field) {
            body.append_pair(&k, &v);
        }
        body.append_pair(&cfg.username_field, login);
        body.append_pair(&cfg.password_field, password);
        body.finish()
    };
    let cookie = (!cookies.is_empty()).then(|| cookies.header());
    let r = answered(c.send(PortalRequest { method: "POST", target: cfg.post_url.clone(), cookie, form: Some(body), client_ip: ip }).await?)?;
    if !accepted(cfg, &r, now) {
        return Ok(Replay::Refused);
    }
    for v in &r.set_cookies {
        cookies.apply(v, now, |_| true);
    }
    let jar = cookies.only(&cfg.session_cookies);
    if jar.is_empty() {
        // Nothing to carry the portal session: no login.
        tracing::warn!("portal login looked successful but set none of portal_login.session_cookies");
        return Ok(Replay::Refused);
    }
    Ok(Replay::Accepted(jar))
}

fn binding(uid: u64) -> Vec<u8> {
    format!("portal-jar:{uid}").into_bytes()
}

/// The jar sealed for `uid`'s session record.
pub(super) fn seal(s: &Services, uid: u64, jar: &Jar) -> Vec<u8> {
    s.jar_box.seal(s.rng.as_ref(), jar.header().as_bytes(), &binding(uid))
}

/// The jar of a session record, opened (`None`: none, or it does not open).
pub fn open(s: &Services, rec: &SessionRecord) -> Option<Jar> {
    open_with(&s.jar_box, rec)
}

fn open_with(jar_box: &SecretBox, rec: &SessionRecord) -> Option<Jar> {
    let sealed = rec.portal_jar.as_deref()?;
    match jar_box.open(sealed, &binding(rec.uid)) {
        Ok(plain) => Some(Jar::parse(&String::from_utf8_lossy(&plain))),
        Err(_) => {
            tracing::error!(user = %rec.username, "a session's portal cookies do not open (storage key changed?)");
            None
        }
    }
}

/// The `Cookie` value to add to a request forwarded for `id` (portal login
/// mode; `None` otherwise).
pub fn cookie_for(s: &Services, id: &Identity) -> Option<String> {
    s.cfg.portal_login.as_ref()?;
    open(s, &id.0).filter(|j| !j.is_empty()).map(|j| j.header())
}

/// The session cookies the portal set in an answer to a forwarded
/// request: the jar of `id`'s session takes them. A jar left empty means
/// the portal ended its session: riegel's ends too. Without a session
/// (a public path) they are dropped.
pub async fn take_set_cookies(s: &Services, id: Option<&Identity>, values: &[Vec<u8>]) {
    let (Some(cfg), Some(id)) = (s.cfg.portal_login.as_ref(), id) else { return };
    if values.is_empty() {
        return;
    }
    let rec = &id.0;
    let Some(sid) = rec.sid() else { return };
    let now = s.now();
    let mut jar = open(s, rec).unwrap_or_default();
    let mut changed = false;
    for v in values {
        let v = String::from_utf8_lossy(v);
        changed |= jar.apply(&v, now, |n| cfg.session_cookies.iter().any(|c| c.eq_ignore_ascii_case(n)));
    }
    if !changed {
        return;
    }
    let r = if jar.is_empty() {
        tracing::info!(target: "audit", event = "logout", user = %rec.username, "the portal ended its session; riegel's ends too");
        s.store.delete_session(rec.uid, &sid).await.map(|_| ())
    } else {
        s.store.set_portal_jar(rec.uid, &sid, Some(seal(s, rec.uid, &jar))).await.map(|_| ())
    };
    if let Err(e) = r.and(s.store.flush().await) {
        tracing::warn!(error = %e, "could not keep the portal's new cookies");
    }
}

/// The key that seals the portal's cookies in session records, from the
/// storage key.
pub fn jar_box(storage_key: &[u8]) -> SecretBox {
    SecretBox::for_purpose(storage_key, "riegel/portal-jar/v1")
}

/// How many `portal_login.timeout`s a reply waits for the logouts it
/// causes at most.
const REPLY_PATIENCE: u32 = 2;

/// How many `portal_login.timeout`s the janitor and the operator's
/// commands wait for their logouts at most.
const PATIENCE: u32 = 10;

/// Most portal logouts under way at once for one ending.
const PARALLEL_LOGOUTS: usize = 8;

/// What ending the portal's sessions of ended riegel sessions needs: the
/// mode's settings, the jar's key and the client. The web layer takes it
/// from [`Services`]; the command line (`riegel user disable`, ...) builds
/// it from the configuration when it opens the store itself.
pub struct Logouts<'a> {
    cfg: &'a PortalLoginConfig,
    jar_box: &'a SecretBox,
    client: &'a dyn PortalClient,
}

/// How a [`Logouts`] run went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ended {
    /// Portal sessions whose `logout_url` answered (any status below 500).
    pub ended: usize,
    /// Calls that failed (unreachable, too slow, a 5xx): the portal
    /// session lasts until the portal's own timeout.
    pub failed: usize,
}

impl<'a> Logouts<'a> {
    pub fn new(cfg: &'a PortalLoginConfig, jar_box: &'a SecretBox, client: &'a dyn PortalClient) -> Self {
        Self { cfg, jar_box, client }
    }

    /// `None` outside portal login mode (or before the proxy set the
    /// client).
    pub fn of(s: &'a Services) -> Option<Self> {
        Some(Self::new(s.cfg.portal_login.as_ref()?, &s.jar_box, s.portal.get()?.as_ref()))
    }

    /// `GET logout_url` with `rec`'s `jar`, within `portal_login.timeout`;
    /// whether the portal answered.
    async fn one(&self, rec: &SessionRecord, jar: Jar) -> bool {
        let ip = rec.ip.as_deref().and_then(|i| i.parse().ok()).unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let req = PortalRequest { method: "GET", target: self.cfg.logout_url.clone(), cookie: Some(jar.header()), form: None, client_ip: ip };
        let r = tokio::time::timeout(self.cfg.timeout, self.client.send(req)).await.unwrap_or(Err(PortalError::Timeout)).and_then(answered);
        match r {
            Ok(r) => {
                tracing::debug!(status = r.status, "portal session ended");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, user = %rec.username, "could not end the portal's session; it lasts until the portal's own timeout");
                false
            }
        }
    }

    /// Ends the portal session of each record that has one, at most
    /// [`PARALLEL_LOGOUTS`] at once, each call within
    /// `portal_login.timeout`. With `budget` (a reply waits for this) no
    /// call starts once less than one timeout of it is left: those count
    /// as failed, and the whole takes `budget` at most however many
    /// sessions a user has. Without (the janitor, the operator's
    /// commands) every record gets its call.
    pub async fn all(&self, recs: &[SessionRecord], budget: Option<std::time::Duration>) -> Ended {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        // A budget too large to add is no budget.
        let last_start = budget.and_then(|b| tokio::time::Instant::now().checked_add(b.saturating_sub(self.cfg.timeout)));
        let may_start = || last_start.is_none_or(|t| tokio::time::Instant::now() <= t);
        // Only portal sessions there are: a jar that does not open (logged
        // by `open_with`) or holds nothing is no call and no failure.
        let mut waiting = recs.iter().filter_map(|r| Some((r, open_with(self.jar_box, r).filter(|j| !j.is_empty())?)));
        let mut running = FuturesUnordered::new();
        let mut e = Ended::default();
        loop {
            while running.len() < PARALLEL_LOGOUTS && may_start() {
                let Some((r, jar)) = waiting.next() else { break };
                running.push(self.one(r, jar));
            }
            match running.next().await {
                Some(true) => e.ended += 1,
                Some(false) => e.failed += 1,
                None => break,
            }
        }
        let late = waiting.count();
        if late > 0 {
            tracing::warn!(late, "portal logouts not started within the time a reply may wait; those portal sessions last until the portal's own timeout");
            e.failed += late;
        }
        e
    }

    /// [`Logouts::all`] for a reply: twice `portal_login.timeout` at most.
    pub async fn for_reply(&self, recs: &[SessionRecord]) -> Ended {
        self.all(recs, Some(self.cfg.timeout.saturating_mul(REPLY_PATIENCE))).await
    }

    /// [`Logouts::all`] for the janitor and the operator's commands (nobody
    /// waits on a page): ten times `portal_login.timeout` at most, so a
    /// portal that answers gets a call for every record, and a hung one
    /// holds a command (and the admin socket, one command at a time) that
    /// long at most.
    pub async fn patiently(&self, recs: &[SessionRecord]) -> Ended {
        self.all(recs, Some(self.cfg.timeout.saturating_mul(PATIENCE))).await
    }
}

/// Ends the portal's session of a riegel session that ended: `GET
/// logout_url` with its jar. Failures are logged; riegel's session is gone
/// either way.
pub async fn end(s: &Services, rec: &SessionRecord) {
    end_all(s, std::slice::from_ref(rec)).await;
}

/// [`end`] for each record, concurrently, within the time a reply may
/// wait ([`Logouts::for_reply`]).
pub async fn end_all(s: &Services, recs: &[SessionRecord]) -> Ended {
    match Logouts::of(s) {
        Some(l) if !recs.is_empty() => l.for_reply(recs).await,
        _ => Ended::default(),
    }
}

/// [`end_all`] for the janitor and the operator's commands
/// ([`Logouts::patiently`]).
pub async fn end_all_patiently(s: &Services, recs: &[SessionRecord]) -> Ended {
    match Logouts::of(s) {
        Some(l) if !recs.is_empty() => l.patiently(recs).await,
        _ => Ended::default(),
    }
}

/// Whether a request to the portal is its own login action (a POST to
/// `post_url`, by path): riegel alone logs in to the portal, so such a
/// request is never forwarded. Otherwise a user past riegel's second
/// factor could post someone else's password to the portal's form and be
/// that person in the portal without that person's second factor. (A GET
/// of the form is forwarded: a portal that lost its session shows its
/// form, and posting it leads to riegel's login.)
pub(super) fn is_portal_login(cfg: &PortalLoginConfig, post: bool, path: &str) -> bool {
    let action = cfg.post_url.split('?').next().unwrap_or(&cfg.post_url);
    post && action.trim_end_matches('/') == path.trim_end_matches('/')
}

/// A session whose portal login ended: deleted, and the portal told.
/// The jar logged out is the one removed (the portal may have renewed it
/// since `rec` was read); a session another request removed first was
/// logged out there.
pub(super) async fn end_session(s: &Services, rec: &SessionRecord) -> Result<(), WebError> {
    let Some(sid) = rec.sid() else { return Ok(()) };
    let gone = s.store.delete_session(rec.uid, &sid).await?;
    s.flush().await?;
    if let Some(gone) = gone {
        end(s, &gone).await;
    }
    Ok(())
}

/// Removes every session of `uid` but `keep`, durably, then ends the
/// portal sessions of those removed (portal login mode), except the one
/// whose jar `moved` into another record. How many riegel sessions ended
/// (not counting `moved`).
pub(super) async fn end_others(s: &Services, uid: u64, keep: &crate::store::SessionId, moved: Option<&[u8]>) -> Result<usize, WebError> {
    let gone = s.store.delete_sessions_of(uid, Some(keep)).await?;
    s.flush().await?;
    let others: Vec<SessionRecord> = gone.into_iter().filter(|r| Some(r.sid.as_slice()) != moved).collect();
    end_all(s, &others).await;
    Ok(others.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PortalSuccess;

    fn cfg(success: PortalSuccess) -> PortalLoginConfig {
        PortalLoginConfig {
            form_url: "/login".into(),
            post_url: "/login".into(),
            username_field: "username".into(),
            password_field: "password".into(),
            success,
            session_cookies: vec!["SESSIONID".into()],
            logout_url: "/logout".into(),
            forgot_url: None,
            timeout: std::time::Duration::from_secs(5),
        }
    }

    #[test]
    fn hidden_fields_of_the_password_form_are_found_decoded() {
        let html = r#"<html><form action="/search"><input type="hidden" name="q" value="x"></form>
            <FORM method=post action="/login"><INPUT type=hidden name=csrf value="a&amp;b&#x3d;&quot;">
            <input name="username"><input type="password" name="password" value="prefill">
            <input type="checkbox" name="remember" checked><input type="checkbox" name="news">
            <input type="hidden" name="off" value="1" disabled>
            <button type="submit" name="go" value="Anmelden">Anmelden</button><input type=submit name=second value=2></form>"#;
        let f = form_fields(html, "password", "username");
        assert_eq!(
            f,
            vec![("csrf".to_string(), "a&b=\"".to_string()), ("remember".into(), "on".into()), ("go".into(), "Anmelden".into())]
        );
        assert!(form_fields("<p>no form</p>", "password", "username").is_empty());
        // Broken markup does not panic.
        for bad in ["<form", "<form><input name='x", "<input type=hidden name=a value=&#xZZ;>", "<form><input name=a value=\"é&#99999999;\">"] {
            let _ = form_fields(bad, "password", "username");
        }
    }

    #[test]
    fn debug_output_never_shows_cookie_values_or_the_form() {
        let jar = Jar::parse("SESSIONID=geheim-123; XSRF=auch-geheim");
        assert_eq!(format!("{jar:?}"), r#"Jar(["SESSIONID", "XSRF"])"#);
        assert!(!format!("{:?}", Replay::Accepted(jar.clone())).contains("geheim"));
        let req = PortalRequest {
            method: "POST",
            target: "/login".into(),
            cookie: Some(jar.header()),
            form: Some("username=anna&password=Kennwort-geheim".into()),
            client_ip: IpAddr::from([192, 0, 2, 1]),
        };
        let shown = format!("{req:?}");
        assert!(!shown.contains("geheim") && !shown.contains("anna"), "{shown}");
        assert!(shown.contains("/login") && shown.contains("bytes hidden"), "{shown}");
        let answer = PortalResponse {
            status: 302,
            location: Some("/home;jsessionid=geheim-1?t=geheim-2".into()),
            set_cookies: vec!["SESSIONID=geheim-9; Path=/".into(), "geheim-3; Path=/".into()],
            body: b"geheim".to_vec(),
        };
        let shown = format!("{answer:?}");
        assert!(!shown.contains("geheim") && shown.contains("SESSIONID") && shown.contains("<nameless>"), "{shown}");
        assert!(shown.contains("\"/home\"") && shown.contains("<6 bytes>"), "{shown}");
    }

    #[test]
    fn set_cookie_expiry_and_the_jar() {
        assert_eq!(parse_set_cookie("SESSIONID=abc; Path=/; HttpOnly", 0), Some(("SESSIONID", "abc", false)));
        assert_eq!(parse_set_cookie("SESSIONID=; Max-Age=0", 0), Some(("SESSIONID", "", true)));
        assert_eq!(parse_set_cookie("S=x; Max-Age=0", 0), Some(("S", "x", true)));
        assert_eq!(parse_set_cookie("S=x; Expires=Thu, 01 Jan 1970 00:00:00 GMT", 100), Some(("S", "x", true)));
        assert_eq!(parse_set_cookie("noequals", 0), None);
        let mut j = Jar::parse("SESSIONID=1; other=2");
        assert!(j.apply("SESSIONID=3; Path=/", 0, |_| true));
        assert!(!j.apply("SESSIONID=3", 0, |_| true));
        assert!(!j.apply("new=1", 0, |n| n == "SESSIONID"));
        assert!(!j.apply("SESSIONID=a\u{7f}b", 0, |_| true), "a value a header cannot carry");
        assert_eq!(j.header(), "SESSIONID=3; other=2");
        assert!(j.apply("SESSIONID=; Max-Age=0", 0, |_| true));
        assert_eq!(j.header(), "other=2");
        assert_eq!(Jar::parse("a=1; b=2").only(&["b".into()]).header(), "b=2");
    }

    #[test]
    fn success_rules_all_hold() {
        let redirect = cfg(PortalSuccess { redirect_not_to: Some(vec!["/login".into()]), set_cookie: None });
        let r = |status, loc: Option<&str>, cookies: &[&str]| PortalResponse {
            status,
            location: loc.map(str::to_string),
            set_cookies: cookies.iter().map(|c| c.to_string()).collect(),
            body: Vec::new(),
        };
        assert!(accepted(&redirect, &r(302, Some("/home"), &[]), 0));
        assert!(accepted(&redirect, &r(303, Some("http://portal.example.at/home"), &[]), 0));
        assert!(!accepted(&redirect, &r(302, Some("/login?error=1"), &[]), 0));
        assert!(!accepted(&redirect, &r(302, Some("http://portal.example.at/login"), &[]), 0));
        assert!(!accepted(&redirect, &r(200, None, &[]), 0), "the form again");
        assert!(!accepted(&redirect, &r(200, Some("/home"), &[]), 0), "Location without a redirect");
        assert!(!accepted(&redirect, &r(302, None, &[]), 0));
        let cookie = cfg(PortalSuccess { redirect_not_to: None, set_cookie: Some("SESSIONID".into()) });
        assert!(accepted(&cookie, &r(200, None, &["SESSIONID=x; Path=/"]), 0));
        assert!(!accepted(&cookie, &r(200, None, &["SESSIONID=; Max-Age=0"]), 0));
        assert!(!accepted(&cookie, &r(200, None, &["OTHER=x"]), 0));
        let both = cfg(PortalSuccess { redirect_not_to: Some(vec!["/login".into()]), set_cookie: Some("SESSIONID".into()) });
        assert!(accepted(&both, &r(302, Some("/home"), &["SESSIONID=x"]), 0));
        assert!(!accepted(&both, &r(302, Some("/home"), &[]), 0));
        assert!(!accepted(&both, &r(302, Some("/login"), &["SESSIONID=x"]), 0));
    }

    /// A portal whose logout answers after `delay`, or never (`None`).
    struct SlowLogout {
        delay: Option<std::time::Duration>,
        calls: std::sync::Mutex<Vec<String>>,
        at_once: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl PortalClient for SlowLogout {
        async fn send(&self, req: PortalRequest) -> Result<PortalResponse, PortalError> {
            use std::sync::atomic::Ordering::SeqCst;
            assert_eq!((req.method, req.target.as_str(), req.form), ("GET", "/logout", None));
            self.calls.lock().expect("calls").push(req.cookie.unwrap_or_default());
            // Under way until answered or given up (dropped).
            struct Busy<'a>(&'a std::sync::atomic::AtomicUsize);
            impl Drop for Busy<'_> {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, SeqCst);
                }
            }
            let n = self.at_once.fetch_add(1, SeqCst) + 1;
            let _busy = Busy(&self.at_once);
            self.most.fetch_max(n, SeqCst);
            match self.delay {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending::<()>().await,
            }
            Ok(PortalResponse { status: 302, ..PortalResponse::default() })
        }
    }

    fn records(b: &SecretBox, n: usize) -> Vec<SessionRecord> {
        (0..n)
            .map(|i| SessionRecord {
                uid: 7,
                sid: vec![i as u8; 16],
                stage: crate::store::Stage::Full,
                created_at: 0,
                last_seen: 0,
                expires_at: 0,
                username: "anna".into(),
                email: None,
                display_name: "Anna".into(),
                rd: None,
                stamp: 0,
                user_agent: None,
                ip: Some("192.0.2.9".into()),
                device_proof: false,
                // Every third without a portal session (a jar never set).
                portal_jar: (i % 3 != 2).then(|| b.seal(&crate::auth::OsRandom, format!("SESSIONID=s{i}").as_bytes(), &binding(7))),
            })
            .collect()
    }

    fn slow(delay: Option<u64>) -> SlowLogout {
        SlowLogout { delay: delay.map(std::time::Duration::from_secs), calls: Default::default(), at_once: Default::default(), most: Default::default() }
    }

    #[tokio::test(start_paused = true)]
    async fn many_logouts_run_side_by_side_and_a_reply_waits_twice_the_timeout_at_most() {
        use std::sync::atomic::Ordering::SeqCst;
        let b = jar_box(&[9u8; 32]);
        let c = cfg(PortalSuccess::default());
        // 30 sessions, 20 with a portal session, each logout 3 s: eight at
        // once, so three rounds (9 s), not 60 s one after the other.
        let p = slow(Some(3));
        let recs = records(&b, 30);
        let t = tokio::time::Instant::now();
        let e = Logouts::new(&c, &b, &p).all(&recs, None).await;
        assert_eq!(e, Ended { ended: 20, failed: 0 });
        assert_eq!(t.elapsed(), std::time::Duration::from_secs(9));
        assert_eq!(p.most.load(SeqCst), PARALLEL_LOGOUTS);
        let mut calls = p.calls.lock().expect("calls").clone();
        calls.sort();
        let mut want: Vec<String> = (0..30).filter(|i| i % 3 != 2).map(|i| format!("SESSIONID=s{i}")).collect();
        want.sort();
        assert_eq!(calls, want, "each session's own jar, once");
        // A reply's budget (twice the 5 s timeout): no call starts after
        // 5 s, so the third round never begins; its four count as failed.
        let p = slow(Some(3));
        let t = tokio::time::Instant::now();
        let e = Logouts::new(&c, &b, &p).all(&recs, Some(c.timeout * 2)).await;
        assert_eq!(e, Ended { ended: 16, failed: 4 });
        assert_eq!(t.elapsed(), std::time::Duration::from_secs(6));
        assert_eq!(p.calls.lock().expect("calls").len(), 16);
        // A jar sealed for another user does not open: not sent.
        let mut other = records(&b, 1);
        other[0].uid = 8;
        assert_eq!(Logouts::new(&c, &b, &p).all(&other, None).await, Ended::default());
        assert_eq!(p.calls.lock().expect("calls").len(), 16);
    }

    #[tokio::test(start_paused = true)]
    async fn a_portal_that_never_answers_holds_a_reply_up_for_twice_the_timeout_at_most() {
        use std::sync::atomic::Ordering::SeqCst;
        let b = jar_box(&[9u8; 32]);
        let c = cfg(PortalSuccess::default());
        let recs = records(&b, 60);
        // Each call gives up after the timeout (5 s): two rounds of eight
        // start within the budget of 10 s; the other 24 never start (no
        // connection opened only to be dropped); all 40 failed.
        let hung = slow(None);
        let t = tokio::time::Instant::now();
        let e = Logouts::new(&c, &b, &hung).all(&recs, Some(c.timeout * 2)).await;
        assert_eq!(e, Ended { ended: 0, failed: 40 });
        assert_eq!(t.elapsed(), c.timeout * 2);
        assert_eq!(hung.calls.lock().expect("calls").len(), 16);
        assert_eq!((hung.at_once.load(SeqCst), hung.most.load(SeqCst)), (0, PARALLEL_LOGOUTS));
        // Without a budget (the janitor, a command) every one gets its
        // call: five rounds of one timeout.
        let hung = slow(None);
        let t = tokio::time::Instant::now();
        let e = Logouts::new(&c, &b, &hung).all(&recs, None).await;
        assert_eq!(e, Ended { ended: 0, failed: 40 });
        assert_eq!(t.elapsed(), c.timeout * 5);
        assert_eq!(hung.calls.lock().expect("calls").len(), 40);
        // A 5xx is a failure too (its own short client).
        struct Broken;
        #[async_trait]
        impl PortalClient for Broken {
            async fn send(&self, _: PortalRequest) -> Result<PortalResponse, PortalError> {
                Ok(PortalResponse { status: 503, ..PortalResponse::default() })
            }
        }
        assert_eq!(Logouts::new(&c, &b, &Broken).all(&records(&b, 3), None).await, Ended { ended: 0, failed: 2 });
        // A budget too large for the clock is none (no overflow panic).
        assert_eq!(Logouts::new(&c, &b, &Broken).all(&records(&b, 3), Some(std::time::Duration::MAX)).await, Ended { ended: 0, failed: 2 });
    }

    #[test]
    fn the_portals_own_login_is_recognised_by_path() {
        let c = cfg(PortalSuccess::default());
        assert!(is_portal_login(&c, true, "/login"));
        assert!(is_portal_login(&c, true, "/login/"));
        assert!(!is_portal_login(&c, false, "/login"), "the form itself may be shown");
        assert!(!is_portal_login(&c, true, "/loginx"));
        assert!(!is_portal_login(&c, true, "/home"));
    }
}
