//! The journey at the boundary the proxy calls: `web::handle` with an
//! in-memory store, a fixed clock, recorded mails and deterministic
//! randomness; no socket, no disk. One test (at least) per route family.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::*;
use crate::admin::{self, AdminRequest, NewUserSpec};
use crate::auth::crypto::TestRandom;
use crate::auth::totp;
use crate::clock::FixedClock;
use crate::config::Env;
use crate::hashpool::{self, HashPool};
use crate::mail::{Mail, MailError};
use crate::store::memory::MemStore;
use crate::store::prelude::*;

const T0: i64 = 1_800_000_000;
const PASSWORD: &str = "Richtig-Passwort-1";

struct Keys;
impl Env for Keys {
    fn var(&self, name: &str) -> Option<String> {
        match name {
            "RIEGEL_SESSION_KEY" => Some("s".repeat(64)),
            "RIEGEL_STORAGE_KEY" => Some("k".repeat(64)),
            _ => None,
        }
    }
}

/// Mails as the handlers queue them.
#[derive(Default)]
struct Recorded(Mutex<Vec<Mail>>);

#[async_trait]
impl MailQueue for Recorded {
    async fn send(&self, mail: Mail) -> Result<(), MailError> {
        self.0.lock().map_err(|_| MailError::Closed)?.push(mail);
        Ok(())
    }
}

struct Kit {
    s: Arc<Services>,
    /// The backend under the session cache.
    mem: Arc<MemStore>,
    clock: FixedClock,
    mails: Arc<Recorded>,
    audit: Arc<crate::audit::Memory>,
}

impl Kit {
    fn new(extra: &str) -> Kit {
        let yaml = format!(
            "listen: 127.0.0.1:8080\npublic_url: https://portal.example.at\nupstream: {{ url: http://127.0.0.1:9000 }}\n\
             store: {{ path: /nonexistent/riegel }}\nsecrets: {{}}\nmail: {{ from: \"P <p@example.at>\", outbox: /nonexistent/outbox }}\n\
             public_paths: [\"/favicon.ico\", \"/assets/*\"]\n\
             password: {{ argon2: {{ memory_kib: 19456, iterations: 2, parallelism: 1 }} }}\n{extra}"
        );
        let cfg = Arc::new(Config::parse(&yaml, std::path::Path::new("/nonexistent"), &Keys).unwrap_or_else(|e| panic!("{e}")));
        let clock = FixedClock::at(T0);
        let mails = Arc::new(Recorded::default());
        let mem = Arc::new(MemStore::default());
        let store = Arc::new(CachedStore::new(mem.clone()));
        let pages = Pages::new(&cfg.branding, &cfg.prefix, Default::default()).unwrap_or_else(|e| panic!("{e:?}"));
        let pool = HashPool::start(hashpool::Settings {
            threads: 2,
            queue_timeout: std::time::Duration::from_secs(30),
            on_idle: crate::auth::password::release_scratch,
        })
        .expect("pool");
        let audit = Arc::new(crate::audit::Memory::default());
        let log = crate::audit::Audit::to_sink(audit.clone());
        let s = Services::new(cfg, store, Arc::new(clock.clone()), Arc::new(TestRandom::default()), mails.clone(), pages, pool, log)
            .expect("services");
        Kit { s: Arc::new(s), mem, clock, mails, audit }
    }

    async fn add_user(&self, name: &str, email: Option<&str>) {
        let hash = self.s.hasher.hash(PASSWORD, &TestRandom::default()).expect("hash");
        let spec = NewUserSpec { username: name.into(), email: email.map(Into::into), display_name: format!("{name} Muster"), password_hash: Some(hash) };
        let r = admin::execute(self.s.store.as_ref(), &self.clock, &self.s.audit_log, "cli", &admin::NothingElse, AdminRequest::Add { user: spec }).await;
        assert!(r.ok, "{}", r.message);
    }

    fn browser(&self) -> Browser {
        Browser { s: self.s.clone(), jar: BTreeMap::new(), ip: "203.0.113.9".parse().expect("ip") }
    }

    fn advance(&self, secs: i64) {
        self.clock.set(self.clock.now() + secs);
    }

    /// The audit lines so far, parsed.
    fn audit(&self) -> Vec<serde_json::Value> {
        self.audit.lines().iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
    }

    fn mails(&self) -> Vec<Mail> {
        self.mails.0.lock().expect("mails").clone()
    }
}

/// A browser: a cookie jar in front of `web::handle`.
struct Browser {
    s: Arc<Services>,
    jar: BTreeMap<String, String>,
    ip: IpAddr,
}

/// What `handle` answered.
enum Got {
    Page(Reply),
    Forwarded(Option<Identity>),
}

impl Got {
    fn reply(self) -> Reply {
        match self {
            Got::Page(r) => r,
            Got::Forwarded(id) => panic!("forwarded to the portal as {id:?}"),
        }
    }
}

fn body(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn input(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    let tag_start = html[..at].rfind('<')?;
    let tag = &html[tag_start..at + html[at..].find('>')?];
    let v = tag.find("value=\"")? + 7;
    Some(tag[v..v + tag[v..].find('"')?].to_string())
}

impl Browser {
    async fn send(&mut self, method: Method, target: &str, body: &[u8]) -> Got {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let cookie = (!self.jar.is_empty()).then(|| self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "));
        let origin = self.s.cfg.public_url.origin().ascii_serialization();
        let req = Request {
            method,
            path,
            query,
            cookie: cookie.as_deref().map(str::as_bytes),
            origin: (method == Method::Post).then_some(origin.as_str()),
            sec_fetch_site: (method == Method::Post).then_some("same-origin"),
            content_type: (method == Method::Post).then_some("application/x-www-form-urlencoded"),
            user_agent: Some("Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0"),
            accept_language: None,
            client_ip: self.ip,
            body,
        };
        match handle(&req, &self.s).await {
            Outcome::Reply(r) => {
                for (n, v) in &r.headers {
                    if *n != "set-cookie" {
                        continue;
                    }
                    let first = v.split(';').next().unwrap_or("");
                    if let Some((k, val)) = first.split_once('=') {
                        if val.is_empty() || v.contains("Max-Age=0") {
                            self.jar.remove(k);
                        } else {
                            self.jar.insert(k.to_string(), val.to_string());
                        }
                    }
                }
                Got::Page(r)
            }
            Outcome::Forward(id) => Got::Forwarded(id),
        }
    }

    async fn get(&mut self, target: &str) -> Got {
        self.send(Method::Get, target, b"").await
    }

    /// GETs `page`, then POSTs `fields` to `action` with the page's CSRF token.
    async fn submit(&mut self, page: &str, action: &str, fields: &[(&str, &str)]) -> Reply {
        let form = self.get(page).await.reply();
        let csrf = input(&body(&form), "csrf").unwrap_or_else(|| panic!("no csrf on {page}: {}", body(&form)));
        let mut all = fields.to_vec();
        all.push(("csrf", &csrf));
        let encoded = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(all).finish();
        self.send(Method::Post, action, encoded.as_bytes()).await.reply()
    }

    async fn login(&mut self, user: &str, password: &str) -> Reply {
        self.submit("/_riegel/login", "/_riegel/login", &[("username", user), ("password", password)]).await
    }
}

fn location(r: &Reply) -> &str {
    r.header("location").unwrap_or("")
}

/// The key on the set-up page (the "copy" button's value).
async fn setup_secret(b: &mut Browser) -> Vec<u8> {
    let page = body(&b.get("/_riegel/setup").await.reply());
    let start = page.find("data-copy=\"").expect("key on the page") + "data-copy=\"".len();
    let b32 = &page[start..start + page[start..].find('"').expect("end")];
    data_encoding::BASE32_NOPAD.decode(b32.as_bytes()).expect("base32 key")
}

/// Password, enrolment and first code: the browser ends with a full
/// session; returns the secret.
async fn enrol(k: &Kit, b: &mut Browser, user: &str) -> Vec<u8> {
    let r = b.login(user, PASSWORD).await;
    assert_eq!((r.status, location(&r)), (303, "/_riegel/setup"), "{}", body(&r));
    let secret = setup_secret(b).await;
    let code = totp::code_for_step(&secret, totp::step_of(k.clock.now()));
    let done = b.submit("/_riegel/setup/confirm", "/_riegel/setup/confirm", &[("code", &code)]).await;
    assert_eq!(done.status, 200, "{}", body(&done));
    assert!(body(&done).contains("Erfolgreich aktiviert"));
    secret
}

/// The codes were shown once; instead of reading them back from the page,
/// give the user a fresh set through the store. Returns codes and hashes.
async fn known_recovery_codes(k: &Kit, uid: u64) -> (Vec<String>, Vec<String>) {
    let (codes, hashes) = super::second::new_recovery_codes(&k.s, uid);
    k.s.store
        .update_user(uid, &mut |u| {
            u.recovery_codes = hashes.clone();
            crate::store::Update::Commit
        })
        .await
        .expect("codes");
    (codes, hashes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_requests_need_a_full_session_and_public_paths_do_not() {
    let k = Kit::new("");
    let mut b = k.browser();
    let r = b.get("/mieter/konto?x=1").await.reply();
    assert_eq!((r.status, location(&r)), (303, "/_riegel/login?rd=%2Fmieter%2Fkonto%3Fx%3D1"));
    assert!(matches!(b.get("/assets/app.css").await, Got::Forwarded(None)));
    assert!(matches!(b.get("/favicon.ico").await, Got::Forwarded(None)));
    // Not plain, so not public.
    assert_eq!(b.get("/assets/../mieter").await.reply().status, 303);
    k.add_user("anna", Some("anna@example.at")).await;
    enrol(&k, &mut b, "anna").await;
    match b.get("/mieter/konto").await {
        Got::Forwarded(Some(id)) => assert_eq!((id.user(), id.email(), id.name()), ("anna", "anna@example.at", "anna Muster")),
        _ => panic!("a full session is forwarded with its identity"),
    }
    // A password-only session is not enough.
    let mut half = k.browser();
    half.login("anna", PASSWORD).await;
    assert_eq!(half.get("/mieter/konto").await.reply().status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_are_neutral_and_regulated() {
    let k = Kit::new("regulation: { max_failures: 3, delay_after: 50 }\n");
    k.add_user("bernd", None).await;
    let mut b = k.browser();
    let wrong = b.login("bernd", "falsch-falsch-1").await;
    let unknown = b.login("niemand", "falsch-falsch-1").await;
    assert_eq!((wrong.status, body(&wrong)), (unknown.status, body(&unknown)));
    assert!(body(&wrong).contains("nicht korrekt"));
    b.login("bernd", "falsch-falsch-2").await;
    b.login("bernd", "falsch-falsch-3").await;
    assert_eq!(b.login("bernd", PASSWORD).await.status, 429, "the ban refuses the right password too");
    k.advance(16 * 60);
    let ok = b.login("bernd", PASSWORD).await;
    assert_eq!((ok.status, location(&ok)), (303, "/_riegel/setup"));
    // The form needs its token and a same-origin post.
    let mut c = k.browser();
    let posted = c.send(Method::Post, "/_riegel/login", b"username=bernd&password=Richtig-Passwort-1").await.reply();
    assert_eq!(posted.status, 403);
}

/// The audit log names existing accounts only, writes the ban once when
/// it starts, and the refused attempts during it as `banned`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lines_name_only_existing_accounts_and_mark_the_ban() {
    let k = Kit::new("regulation: { max_failures: 3, delay_after: 50 }\n");
    k.add_user("bernd", None).await;
    let mut b = k.browser();
    // A password typed into the name field is not written.
    b.login("Passwort-im-Namensfeld-9", "x-x-x-x-x-1").await;
    for i in 1..=3 {
        b.login("bernd", &format!("falsch-falsch-{i}")).await;
    }
    b.login("bernd", PASSWORD).await;
    b.login("bernd", PASSWORD).await;
    let lines = k.audit.lines().join("\n");
    assert!(!lines.contains("Passwort-im-Namensfeld-9") && !lines.contains("falsch-falsch") && !lines.contains(PASSWORD), "{lines}");
    let all = k.audit();
    let logins: Vec<_> = all.iter().filter(|v| v["event"] == "login").collect();
    assert_eq!(logins.len(), 6, "{lines}");
    assert!(logins[0].get("user").is_none() && logins[0]["result"] == "failure", "{}", logins[0]);
    assert!(logins[1..4].iter().all(|v| v["user"] == "bernd" && v["result"] == "failure" && v["stage"] == "password"), "{lines}");
    assert!(logins[4..].iter().all(|v| v["user"] == "bernd" && v["result"] == "banned"), "{lines}");
    let bans: Vec<_> = all.iter().filter(|v| v["event"] == "ban").collect();
    assert_eq!(bans.len(), 1, "one ban, when it starts: {lines}");
    assert_eq!((bans[0]["scope"].as_str(), bans[0]["user"].as_str()), (Some("account"), Some("bernd")));
    assert_eq!(bans[0]["client"], "203.0.113.9");
    assert_eq!(bans[0]["minutes"], 15);
    assert!(all.iter().all(|v| v["user_agent"].as_str().is_some_and(|ua| ua.starts_with("Mozilla/5.0")) || v["event"] == "admin"));
    // The operator's unban is written too.
    let r = admin::execute(k.s.store.as_ref(), &k.clock, &k.s.audit_log, "cli", &admin::NothingElse, AdminRequest::Unban { user: "bernd".into() }).await;
    assert!(r.ok);
    let last = k.audit().pop().expect("a line");
    assert_eq!((last["event"].as_str(), last["command"].as_str(), last["via"].as_str()), (Some("admin"), Some("unban"), Some("cli")));
    assert!(last.get("client").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_then_every_login_needs_a_fresh_code_and_replays_fail() {
    let k = Kit::new("");
    k.add_user("clara", None).await;
    let mut b = k.browser();
    let secret = enrol(&k, &mut b, "clara").await;
    // Next login: password, then the code page.
    k.advance(30);
    let mut c = k.browser();
    let r = c.login("clara", PASSWORD).await;
    assert_eq!(location(&r), "/_riegel/verify");
    assert_eq!(c.get("/_riegel/setup").await.reply().status, 303, "no second enrolment");
    let code = totp::code_for_step(&secret, totp::step_of(k.clock.now()));
    let r = c.submit("/_riegel/verify", "/_riegel/verify", &[("code", &code)]).await;
    assert_eq!((r.status, location(&r)), (303, "/"));
    assert!(matches!(c.get("/mieter").await, Got::Forwarded(Some(_))));
    // The same code again, in the same step, on another login: refused.
    let mut d = k.browser();
    d.login("clara", PASSWORD).await;
    let again = d.submit("/_riegel/verify", "/_riegel/verify", &[("code", &code)]).await;
    assert_eq!(again.status, 200);
    assert!(body(&again).contains("nicht korrekt"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_codes_work_once_and_mail_a_notice() {
    let k = Kit::new("");
    k.add_user("dora", Some("dora@example.at")).await;
    let mut b = k.browser();
    enrol(&k, &mut b, "dora").await;
    let u = k.s.store.find_user("dora").await.expect("store").expect("dora");
    assert_eq!(u.recovery_codes.len(), 10);
    let (codes, _) = known_recovery_codes(&k, u.id).await;
    let mut c = k.browser();
    c.login("dora", PASSWORD).await;
    let r = c.submit("/_riegel/recovery", "/_riegel/recovery", &[("code", &codes[0])]).await;
    // A page that offers a new device right away, with a full session.
    assert_eq!(r.status, 200, "{}", body(&r));
    assert!(body(&r).contains("Neues Gerät einrichten"), "{}", body(&r));
    assert!(matches!(c.get("/mieter").await, Got::Forwarded(Some(_))));
    let mut d = k.browser();
    d.login("dora", PASSWORD).await;
    let again = d.submit("/_riegel/recovery", "/_riegel/recovery", &[("code", &codes[0])]).await;
    assert_eq!(again.status, 200);
    let mails = k.mails();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(mails[0].to, "dora@example.at");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_session_on_the_server() {
    let k = Kit::new("");
    k.add_user("emil", None).await;
    let mut b = k.browser();
    enrol(&k, &mut b, "emil").await;
    let copied = b.jar.clone();
    assert_eq!(b.get("/_riegel/logout").await.reply().status, 200);
    let r = b.submit("/_riegel/logout", "/_riegel/logout", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(b.get("/mieter").await.reply().status, 303);
    // A copy of the cookie is dead too.
    let mut thief = k.browser();
    thief.jar = copied;
    assert_eq!(thief.get("/mieter").await.reply().status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgot_and_reset_set_a_new_password_once() {
    let k = Kit::new("");
    k.add_user("frida", Some("frida@example.at")).await;
    let mut b = k.browser();
    let known = b.submit("/_riegel/forgot", "/_riegel/forgot", &[("username", "frida")]).await;
    let unknown = b.submit("/_riegel/forgot", "/_riegel/forgot", &[("username", "niemand")]).await;
    assert_eq!((known.status, body(&known)), (unknown.status, body(&unknown)));
    let mails = k.mails();
    assert_eq!(mails.len(), 1);
    let link = mails[0].text.split_whitespace().find(|w| w.contains("/_riegel/reset/")).expect("link").to_string();
    let path = &link[link.find("/_riegel/").expect("path")..];
    assert_eq!(b.get(path).await.reply().status, 200, "GET does not consume the token");
    let done = b.submit(path, path, &[("password", "Ganz-Neu-2024!"), ("password2", "Ganz-Neu-2024!")]).await;
    assert_eq!(done.status, 200, "{}", body(&done));
    assert_eq!(b.get(path).await.reply().status, 410, "used once");
    assert_eq!(b.login("frida", "Ganz-Neu-2024!").await.status, 303);
    assert_eq!(b.login("frida", PASSWORD).await.status, 200);
    // Expired tokens are refused.
    b.submit("/_riegel/forgot", "/_riegel/forgot", &[("username", "frida")]).await;
    let link = k.mails().last().expect("mail").text.split_whitespace().find(|w| w.contains("/_riegel/reset/")).expect("link").to_string();
    k.advance(31 * 60);
    assert_eq!(b.get(&link[link.find("/_riegel/").expect("path")..]).await.reply().status, 410);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_forward_auth_static_files_and_unknown_routes() {
    let k = Kit::new("");
    let mut b = k.browser();
    assert_eq!(b.get("/_riegel/healthz").await.reply().status, 200);
    assert_eq!(b.get("/_riegel/auth").await.reply().status, 401);
    let css = b.get("/_riegel/static/riegel.css").await.reply();
    assert_eq!(css.status, 200);
    assert!(css.header("content-type").is_some_and(|c| c.starts_with("text/css")));
    assert_eq!(b.get("/_riegel/static/nope.css").await.reply().status, 404);
    assert_eq!(b.get("/_riegel/nowhere").await.reply().status, 404);
    assert_eq!(b.send(Method::Post, "/_riegel/healthz", b"").await.reply().status, 405);
    assert_eq!(location(&b.get("/_riegel").await.reply()), "/_riegel/login");
    k.add_user("gustav", Some("g@example.at")).await;
    enrol(&k, &mut b, "gustav").await;
    let ok = b.get("/_riegel/auth").await.reply();
    assert_eq!((ok.status, ok.header("x-riegel-user")), (200, Some("gustav")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_revocation_ends_sessions_at_once() {
    let k = Kit::new("");
    k.add_user("hanna", None).await;
    let mut b = k.browser();
    enrol(&k, &mut b, "hanna").await;
    assert!(matches!(b.get("/mieter").await, Got::Forwarded(Some(_))));
    let r = admin::execute(k.s.store.as_ref(), &k.clock, &k.s.audit_log, "cli", &admin::NothingElse, AdminRequest::Disable { user: "hanna".into() }).await;
    assert!(r.ok);
    assert_eq!(b.get("/mieter").await.reply().status, 303);
    let r = admin::execute(k.s.store.as_ref(), &k.clock, &k.s.audit_log, "cli", &admin::NothingElse, AdminRequest::Enable { user: "hanna".into() }).await;
    assert!(r.ok);
    assert_eq!(b.get("/mieter").await.reply().status, 303, "enabling again does not revive old sessions");
}

/// POSTs `fields` to `action` with `page`'s CSRF token, `between` run
/// after the page was read.
async fn post_after(b: &mut Browser, page: &str, action: &str, fields: &[(&str, &str)], between: impl FnOnce()) -> Reply {
    let form = b.get(page).await.reply();
    let csrf = input(&body(&form), "csrf").expect("csrf");
    between();
    let mut all = fields.to_vec();
    all.push(("csrf", &csrf));
    let encoded = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(all).finish();
    b.send(Method::Post, action, encoded.as_bytes()).await.reply()
}

/// An operator's command that lands inside a login step's code check
/// (after the pending session was checked, before the code is recorded)
/// never gets a full session issued past it, nor one that enabling the
/// account again would revive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_racing_a_code_check_issues_no_full_session() {
    let k = Kit::new("");
    k.add_user("sara", Some("sara@example.at")).await;
    let expired = "/_riegel/login?notice=login_expired";
    let revoke = || k.mem.before_next_update(|u| u.revoke_sessions());
    // The enrolment's confirmation.
    let mut a = k.browser();
    let r = a.login("sara", PASSWORD).await;
    assert_eq!(location(&r), "/_riegel/setup");
    let secret = setup_secret(&mut a).await;
    let code = totp::code_for_step(&secret, totp::step_of(k.clock.now()));
    let r = post_after(&mut a, "/_riegel/setup/confirm", "/_riegel/setup/confirm", &[("code", &code)], revoke).await;
    assert_eq!((r.status, location(&r)), (303, expired), "{}", body(&r));
    assert_eq!(a.get("/mieter").await.reply().status, 303);
    // Nothing of the enrolment was kept (no authenticator, no codes).
    let u = k.s.store.find_user("sara").await.expect("store").expect("sara");
    assert!(u.authenticators.is_empty() && u.recovery_codes.is_empty() && !u.enrolled_once, "{:?}", u.authenticators);
    k.advance(30);
    let secret = enrol(&k, &mut k.browser(), "sara").await;
    // The code check of a login.
    k.advance(30);
    let mut b = k.browser();
    assert_eq!(location(&b.login("sara", PASSWORD).await), "/_riegel/verify");
    let code = totp::code_for_step(&secret, totp::step_of(k.clock.now()));
    let r = post_after(&mut b, "/_riegel/verify", "/_riegel/verify", &[("code", &code)], revoke).await;
    assert_eq!((r.status, location(&r)), (303, expired), "{}", body(&r));
    assert_eq!(b.get("/mieter").await.reply().status, 303);
    // A recovery code while the account is disabled; enabling it again
    // revives nothing.
    let uid = k.s.store.find_user("sara").await.expect("store").expect("sara").id;
    let (codes, _) = known_recovery_codes(&k, uid).await;
    let mut c = k.browser();
    assert_eq!(location(&c.login("sara", PASSWORD).await), "/_riegel/verify");
    let r = post_after(&mut c, "/_riegel/recovery", "/_riegel/recovery", &[("code", &codes[0])], || k.mem.before_next_update(|u| u.disabled = true)).await;
    assert_eq!((r.status, location(&r)), (303, expired), "{}", body(&r));
    k.s.store
        .update_user(uid, &mut |u| {
            u.disabled = false;
            crate::store::Update::Commit
        })
        .await
        .expect("enable");
    assert_eq!(c.get("/mieter").await.reply().status, 303);
    let full = k.s.store.sessions_of(uid).await.expect("sessions").iter().filter(|r| r.stage == Stage::Full).count();
    assert_eq!(full, 1, "only the one enrolment that ran undisturbed wrote a full session");
}

/// An operator's revocation (`riegel user reset-totp`, `set-email`) that
/// lands after a request's session check and before its update is never
/// undone by the fresh session "end others" or a password change issues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_racing_end_others_or_a_password_change_is_never_undone() {
    let k = Kit::new("");
    k.add_user("rita", Some("rita@example.at")).await;
    let mut a = k.browser();
    let secret = enrol(&k, &mut a, "rita").await;
    let uid = k.s.store.find_user("rita").await.expect("store").expect("rita").id;
    let before = k.s.store.user(uid).await.expect("store").expect("rita");
    let to_login = "/_riegel/login?rd=%2F%5Friegel%2Faccount";
    let r = post_after(&mut a, "/_riegel/account", "/_riegel/account/sessions/end-others", &[], || k.mem.before_next_update(|u| u.revoke_sessions())).await;
    assert_eq!((r.status, location(&r)), (303, to_login), "{}", body(&r));
    assert!(r.headers.iter().all(|(n, _)| *n != "set-cookie"), "{:?}", r.headers);
    let after = k.s.store.user(uid).await.expect("store").expect("rita");
    assert_eq!(after.stamp, before.stamp + 1, "only the operator's revocation");
    assert_eq!(a.get("/mieter").await.reply().status, 303, "revoked stays revoked");

    // The same for a password change: nothing changes, no new session.
    k.advance(30);
    let mut b = k.browser();
    b.login("rita", PASSWORD).await;
    let code = totp::code_for_step(&secret, totp::step_of(k.clock.now()));
    assert_eq!(b.submit("/_riegel/verify", "/_riegel/verify", &[("code", &code)]).await.status, 303);
    assert!(matches!(b.get("/mieter").await, Got::Forwarded(Some(_))));
    let new = "Ganz-Neu-Passwort-8";
    let fields = [("current_password", PASSWORD), ("password", new), ("password2", new)];
    let r = post_after(&mut b, "/_riegel/account", "/_riegel/account/password", &fields, || k.mem.before_next_update(|u| u.revoke_sessions())).await;
    assert_eq!((r.status, location(&r)), (303, to_login), "{}", body(&r));
    let now = k.s.store.user(uid).await.expect("store").expect("rita");
    assert_eq!(now.password_hash, before.password_hash, "the password stays");
    assert_eq!(b.get("/mieter").await.reply().status, 303);
}

/// "Mein Zugang" at the `handle` boundary: it needs a full session; ending
/// the other sessions, new recovery codes and a password change each take
/// effect at once and mail a notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_pages_end_others_renew_codes_and_change_the_password() {
    let k = Kit::new("");
    k.add_user("ida", Some("ida@example.at")).await;
    let mut stranger = k.browser();
    let r = stranger.get("/_riegel/account").await.reply();
    assert_eq!((r.status, location(&r)), (303, "/_riegel/login?rd=%2F%5Friegel%2Faccount"));
    let mut a = k.browser();
    let secret = enrol(&k, &mut a, "ida").await;
    let page = body(&a.get("/_riegel/account").await.reply());
    assert!(page.contains("ida@example.at") && page.contains("ida Muster"), "{page}");
    // A password-only session of the same user does not get the page.
    let mut half = k.browser();
    half.login("ida", PASSWORD).await;
    assert_eq!(half.get("/_riegel/account").await.reply().status, 303);

    // A second device logs in fully.
    k.advance(30);
    let mut other = k.browser();
    other.login("ida", PASSWORD).await;
    let code = totp::code_for_step(&secret, totp::step_of(k.clock.now()));
    assert_eq!(other.submit("/_riegel/verify", "/_riegel/verify", &[("code", &code)]).await.status, 303);
    assert!(matches!(other.get("/mieter").await, Got::Forwarded(Some(_))));
    let before = k.mails().len();
    let r = a.submit("/_riegel/account", "/_riegel/account/sessions/end-others", &[]).await;
    assert_eq!((r.status, location(&r)), (303, "/_riegel/account?notice=sessions_ended"), "{}", body(&r));
    assert!(matches!(a.get("/mieter").await, Got::Forwarded(Some(_))), "this browser stays logged in");
    assert_eq!(other.get("/mieter").await.reply().status, 303, "the other device is logged out");
    assert_eq!(half.get("/_riegel/verify").await.reply().status, 303, "the half session ended too");
    assert_eq!(k.mails().len(), before + 1, "a notice");

    // New recovery codes: the old ones stop working.
    let u = k.s.store.find_user("ida").await.expect("store").expect("ida");
    let (old, hashes) = known_recovery_codes(&k, u.id).await;
    let wrong = a.submit("/_riegel/account", "/_riegel/account/recovery-codes", &[("code", "000000")]).await;
    assert_eq!(wrong.status, 200);
    let kept = k.s.store.find_user("ida").await.expect("store").expect("ida").recovery_codes;
    assert_eq!(kept, hashes, "a wrong code renews nothing");
    k.advance(30);
    let code = totp::code_for_step(&secret, totp::step_of(k.clock.now()));
    let shown = a.submit("/_riegel/account", "/_riegel/account/recovery-codes", &[("code", &code)]).await;
    assert_eq!(shown.status, 200, "{}", body(&shown));
    let renewed = k.s.store.find_user("ida").await.expect("store").expect("ida").recovery_codes;
    assert_eq!(renewed.len(), 10);
    assert!(renewed.iter().all(|h| !hashes.contains(h)), "all codes are new");
    let mut c = k.browser();
    c.login("ida", PASSWORD).await;
    let r = c.submit("/_riegel/recovery", "/_riegel/recovery", &[("code", &old[0])]).await;
    assert!(matches!(c.get("/mieter").await, Got::Page(_)), "an old recovery code is dead: {}", body(&r));

    // The password: the wrong current one changes nothing; the right one
    // ends the other sessions, keeps this one, and the new password works.
    k.advance(30);
    let mut third = k.browser();
    third.login("ida", PASSWORD).await;
    let code = totp::code_for_step(&secret, totp::step_of(k.clock.now()));
    assert_eq!(third.submit("/_riegel/verify", "/_riegel/verify", &[("code", &code)]).await.status, 303);
    let new = "Ganz-Neu-Passwort-7";
    let bad = a
        .submit("/_riegel/account", "/_riegel/account/password", &[("current_password", "falsch-falsch-1"), ("password", new), ("password2", new)])
        .await;
    assert_eq!(bad.status, 200);
    assert!(matches!(third.get("/mieter").await, Got::Forwarded(Some(_))), "a failed change ends nothing");
    let before = k.mails().len();
    let r = a
        .submit("/_riegel/account", "/_riegel/account/password", &[("current_password", PASSWORD), ("password", new), ("password2", new)])
        .await;
    assert_eq!((r.status, location(&r)), (303, "/_riegel/account?notice=password_changed"), "{}", body(&r));
    assert!(matches!(a.get("/mieter").await, Got::Forwarded(Some(_))), "this browser stays logged in");
    assert_eq!(third.get("/mieter").await.reply().status, 303, "the other session ended");
    assert_eq!(k.mails().len(), before + 1, "a notice");
    assert_eq!(location(&k.browser().login("ida", new).await), "/_riegel/verify");
    assert_eq!(k.browser().login("ida", PASSWORD).await.status, 200, "the old password is refused");
}

/// A portal with its own login form, as data: what riegel sent, and the
/// answers of a form with a hidden token and a session cookie.
/// Each successful login gets its own session: `sess42`, `sess43`, …
#[derive(Default)]
struct FakePortal(Mutex<Vec<portal::PortalRequest>>, std::sync::atomic::AtomicU32);

#[async_trait]
impl portal::PortalClient for FakePortal {
    async fn send(&self, req: portal::PortalRequest) -> Result<portal::PortalResponse, portal::PortalError> {
        let answer = match (req.method, req.target.as_str()) {
            ("GET", "/login") => portal::PortalResponse {
                status: 200,
                set_cookies: vec!["SID=pre1; Path=/".into()],
                body: br#"<form method=post action=/login><input type=hidden name=tok value="t&amp;1"><input name=username><input type=password name=password></form>"#.to_vec(),
                ..Default::default()
            },
            ("POST", "/login") if req.form.as_deref().is_some_and(|f| f.contains("password=Portal-Geheim-9")) => portal::PortalResponse {
                status: 302,
                location: Some("/home".into()),
                set_cookies: vec![format!("SID=sess{}; Path=/; HttpOnly", 42 + self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst))],
                ..Default::default()
            },
            ("POST", "/login") => portal::PortalResponse { status: 302, location: Some("/login?failed".into()), ..Default::default() },
            _ => portal::PortalResponse { status: 200, ..Default::default() },
        };
        self.0.lock().map_err(|_| portal::PortalError::Timeout)?.push(req);
        Ok(answer)
    }
}

const PORTAL_YAML: &str = "first_factor: portal\nportal_login: { form_url: /login, post_url: /login, success: { redirect_not_to: [/login], set_cookie: SID }, session_cookies: [SID], logout_url: /logout }\n";

impl FakePortal {
    /// The cookies riegel sent with each call of the logout URL.
    fn logouts(&self) -> Vec<String> {
        self.0.lock().expect("sent").iter().filter(|r| r.target == "/logout").map(|r| r.cookie.clone().unwrap_or_default()).collect()
    }
}

/// A kit in portal login mode in front of a [`FakePortal`].
fn portal_kit() -> (Kit, Arc<FakePortal>) {
    let k = Kit::new(PORTAL_YAML);
    let fake = Arc::new(FakePortal::default());
    let _ = k.s.portal.set(fake.clone());
    (k, fake)
}


#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_login_replays_the_form_seals_the_jar_and_forwards_it_only_after_the_second_factor() {
    let (k, fake) = portal_kit();
    let mut b = k.browser();
    let r = b.login("Hausmeister", "Portal-Geheim-9").await;
    assert_eq!(location(&r), "/_riegel/setup", "{}", body(&r));
    {
        let sent = fake.0.lock().expect("sent");
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[1].cookie.as_deref(), Some("SID=pre1"));
        let form = sent[1].form.as_deref().unwrap_or("");
        assert!(form.starts_with("tok=t%261&username=Hausmeister&password=Portal-Geheim-9"), "{form}");
        assert_eq!(sent[1].client_ip, b.ip);
    }
    let user = k.s.store.find_user("hausmeister").await.expect("store").expect("created");
    assert_eq!((user.username.as_str(), user.password_hash.is_none()), ("hausmeister", true));
    // The password stage never reaches the portal.
    assert!(matches!(b.get("/home").await, Got::Page(_)));
    let sessions = k.s.store.sessions_of(user.id).await.expect("sessions");
    let stored = serde_json::to_string(&sessions).expect("json");
    for secret in ["sess42", "Portal-Geheim-9"] {
        assert!(!stored.contains(secret), "{secret} in the session record");
    }
    // Enrol; the full session carries the jar on.
    let secret = setup_secret(&mut b).await;
    let code = totp::code_for_step(&secret, totp::step_of(k.clock.now()));
    let done = b.submit("/_riegel/setup/confirm", "/_riegel/setup/confirm", &[("code", &code)]).await;
    assert!(body(&done).contains("Erfolgreich aktiviert"), "{}", body(&done));
    let Got::Forwarded(Some(id)) = b.get("/home").await else { panic!("not forwarded") };
    assert_eq!(portal::cookie_for(&k.s, &id).as_deref(), Some("SID=sess42"));
    // The portal's renewal goes into the jar; the portal's logout ends both.
    portal::take_set_cookies(&k.s, Some(&id), &[b"SID=sess43; Path=/".to_vec()]).await;
    let Got::Forwarded(Some(id)) = b.get("/home").await else { panic!("not forwarded") };
    assert_eq!(portal::cookie_for(&k.s, &id).as_deref(), Some("SID=sess43"));
    portal::take_set_cookies(&k.s, Some(&id), &[b"SID=; Max-Age=0".to_vec()]).await;
    assert!(matches!(b.get("/home").await, Got::Page(_)), "the portal ended its session: riegel's ends too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_login_refusal_counts_and_a_missing_portal_is_a_502_not_a_failure() {
    let k = Kit::new(PORTAL_YAML);
    let mut b = k.browser();
    let r = b.login("hausmeister", "Portal-Geheim-9").await;
    assert_eq!(r.status, 502, "no portal client: {}", body(&r));
    assert_eq!(k.s.store.counter(&crate::store::CounterKey::login("hausmeister")).await.expect("counter").failures, 0);
    let _ = k.s.portal.set(Arc::new(FakePortal::default()));
    let r = b.login("hausmeister", "falsch").await;
    assert_eq!(r.status, 200);
    assert!(body(&r).contains("login-error"), "{}", body(&r));
    assert_eq!(k.s.store.counter(&crate::store::CounterKey::login("hausmeister")).await.expect("counter").failures, 1);
    assert!(k.s.store.find_user("hausmeister").await.expect("store").is_none());
}

/// "Auf allen anderen Geräten abmelden" in portal login mode ends the
/// portal sessions of the other devices, never this browser's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_the_other_sessions_logs_them_out_of_the_portal_too() {
    let (k, fake) = portal_kit();
    let mut a = k.browser();
    assert_eq!(location(&a.login("hausmeister", "Portal-Geheim-9").await), "/_riegel/setup");
    let secret = setup_secret(&mut a).await;
    let code = totp::code_for_step(&secret, totp::step_of(k.clock.now()));
    a.submit("/_riegel/setup/confirm", "/_riegel/setup/confirm", &[("code", &code)]).await;
    k.advance(30);
    let mut other = k.browser();
    assert_eq!(location(&other.login("hausmeister", "Portal-Geheim-9").await), "/_riegel/verify");
    let code = totp::code_for_step(&secret, totp::step_of(k.clock.now()));
    other.submit("/_riegel/verify", "/_riegel/verify", &[("code", &code)]).await;
    let Got::Forwarded(Some(id)) = other.get("/home").await else { panic!("not forwarded") };
    assert_eq!(portal::cookie_for(&k.s, &id).as_deref(), Some("SID=sess43"));
    assert!(fake.logouts().is_empty());
    let r = a.submit("/_riegel/account", "/_riegel/account/sessions/end-others", &[]).await;
    assert_eq!((r.status, location(&r)), (303, "/_riegel/account?notice=sessions_ended"), "{}", body(&r));
    assert_eq!(fake.logouts(), ["SID=sess43"], "the other device's portal session, and only that");
    let Got::Forwarded(Some(id)) = a.get("/home").await else { panic!("this browser stays logged in") };
    assert_eq!(portal::cookie_for(&k.s, &id).as_deref(), Some("SID=sess42"), "with its portal session");
    assert!(matches!(other.get("/home").await, Got::Page(_)));
}

/// A new authenticator ends every other session of the user; in portal
/// login mode their portal sessions are logged out too, never this one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolment_logs_the_other_sessions_out_of_the_portal_too() {
    let (k, fake) = portal_kit();
    let mut a = k.browser();
    assert_eq!(location(&a.login("hausmeister", "Portal-Geheim-9").await), "/_riegel/setup");
    let mut other = k.browser();
    assert_eq!(location(&other.login("hausmeister", "Portal-Geheim-9").await), "/_riegel/setup");
    let secret = setup_secret(&mut a).await;
    let code = totp::code_for_step(&secret, totp::step_of(k.clock.now()));
    let done = a.submit("/_riegel/setup/confirm", "/_riegel/setup/confirm", &[("code", &code)]).await;
    assert!(body(&done).contains("Erfolgreich aktiviert"), "{}", body(&done));
    assert_eq!(fake.logouts(), ["SID=sess43"], "the other browser's portal session, and only that");
    let Got::Forwarded(Some(id)) = a.get("/home").await else { panic!("this browser is logged in") };
    assert_eq!(portal::cookie_for(&k.s, &id).as_deref(), Some("SID=sess42"));
    assert!(location(&other.get("/_riegel/setup").await.reply()).starts_with("/_riegel/login"), "the other session ended");
}
