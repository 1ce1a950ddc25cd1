//! Two `riegel serve` processes on one PostgreSQL database, as behind a
//! load balancer: one set of users, sessions, bans and used codes. Also
//! failing closed when the database goes away, and `riegel store copy`.
//!
//! These tests need a PostgreSQL server (`RIEGEL_TEST_POSTGRES_URL`, see
//! harness::pg); without one they skip and say how to start one, unless
//! `CI` is set.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::harness::*;

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Files both instances share: the key files, the database URL, the
/// portal and the SMTP server.
struct Site {
    dir: PathBuf,
    db: pg::TestDb,
    portal: SocketAddr,
    smtp: SmtpSink,
}

impl Site {
    fn new(tag: &str) -> Option<Site> {
        let db = pg::TestDb::create(tag, false)?;
        let dir = tempdir(tag);
        for k in ["session.key", "storage.key"] {
            riegel::demo::write_key(&dir.join(k)).expect("key");
        }
        pg::store_yaml(&db, &dir);
        let portal = riegel::demo::start_portal("127.0.0.1:0".parse().expect("addr")).expect("portal");
        Some(Site { dir, db, portal, smtp: SmtpSink::start() })
    }

    /// The config of one instance on `port`, with the shared store.
    fn config(&self, name: &str, port: u16, store: &str) -> PathBuf {
        let cfg = self.dir.join(format!("{name}.yaml"));
        let yaml = format!(
            "listen: \"127.0.0.1:{port}\"\npublic_url: \"http://127.0.0.1:{port}\"\nupstream: {{ url: \"http://{portal}\" }}\n{store}\
             secrets: {{ session_key_file: session.key, storage_key_file: storage.key }}\n\
             mail:\n  from: \"P <p@example.at>\"\n  smtp: {{ host: \"127.0.0.1\", port: {smtp}, tls: none, timeout: 2s }}\n  max_attempts: 2\n\
             regulation: {{ max_failures: 3, find_time: 10m, ban_time: 15m, delay_after: 10 }}\n\
             branding: {{ company: \"IMMO PRO Immobilien GmbH\", language: de }}\n{TEST_ARGON}",
            portal = self.portal,
            smtp = self.smtp.addr.port(),
        );
        std::fs::write(&cfg, yaml).expect("config");
        cfg
    }

    fn pg_store(&self) -> &'static str {
        "store:\n  postgres:\n    url_file: pg.url\n    timeout: 2s\n"
    }

    /// `riegel serve` on the shared database.
    fn serve(&self, name: &str) -> Instance {
        let port = free_port();
        let cfg = self.config(name, port, self.pg_store());
        Instance::start(cfg, port)
    }

    fn cli(&self, cfg: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        cli(cfg, args, stdin)
    }
}

fn cli(cfg: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_riegel"))
        .args(args)
        .arg("--config")
        .arg(cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cli");
    if let Some(s) = stdin {
        child.stdin.take().expect("stdin").write_all(s.as_bytes()).expect("stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("cli");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// One `riegel serve` process, killed when dropped.
struct Instance {
    child: Child,
    addr: SocketAddr,
    cfg: PathBuf,
}

impl Instance {
    fn start(cfg: PathBuf, port: u16) -> Instance {
        let child = Command::new(env!("CARGO_BIN_EXE_riegel"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut i = Instance { child, addr, cfg };
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(st)) = i.child.try_wait() {
                panic!("riegel serve exited at start: {st:?}");
            }
            assert!(start.elapsed() < Duration::from_secs(20), "riegel serve did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        i
    }

    fn client(&self) -> Client {
        Client::new(self.addr)
    }

    /// The same browser (cookies) talking to this instance.
    fn take(&self, c: &Client) -> Client {
        let mut c = c.clone();
        c.addr = self.addr;
        c
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Password, QR code, first code: a full session. Returns the secret and
/// the step that code was of.
fn enrol(c: &mut Client, user: &str, password: &str) -> (String, i64) {
    let resp = c.login(user, password);
    assert_eq!((resp.status, resp.location()), (303, "/_riegel/setup"), "{}", resp.body);
    let setup = c.get("/_riegel/setup");
    assert_eq!(setup.status, 200, "{}", setup.body);
    let secret = secret_of_uri(&decode_qr_svg(&qr_svg_of(&setup.body)));
    let t = now();
    let done = c.submit("/_riegel/setup/confirm", "/_riegel/setup/confirm", &[("code", &totp_code(&secret, t))]);
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(!recovery_codes_of(&done.body).is_empty(), "no recovery codes shown: {}", done.body);
    (secret, t / 30)
}

/// Password, then the code of `step` (one step ahead of the clock is
/// accepted, so no test waits for the next step).
fn second_factor(c: &mut Client, user: &str, password: &str, secret: &str, step: i64) -> Resp {
    let resp = c.login(user, password);
    assert_eq!((resp.status, resp.location()), (303, "/_riegel/verify"), "{}", resp.body);
    c.submit("/_riegel/verify", "/_riegel/verify", &[("code", &totp_code(secret, step * 30))])
}

fn within(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_instances_share_users_sessions_logouts_codes_and_bans() {
    let Some(site) = Site::new("two") else { return };
    let a = site.serve("a");
    let b = site.serve("b");
    // A user added with the CLI (straight to the database) logs in on both.
    let (ok, out) = site.cli(&a.cfg, &["user", "add", "paula", "--email", "paula@example.at"], Some("Sommer-Wind-24\n"));
    assert!(ok, "{out}");
    for i in [&a, &b] {
        assert_eq!(i.client().login("paula", "Sommer-Wind-24").location(), "/_riegel/setup");
    }
    // A session made on A works on B.
    let mut on_a = a.client();
    let (secret, step) = enrol(&mut on_a, "paula", "Sommer-Wind-24");
    assert_eq!(on_a.get("/mieter").status, 200);
    let mut on_b = b.take(&on_a);
    assert_eq!(on_b.get("/mieter").status, 200, "A's session does not work on B");
    // Logout on B is refused on A within a second.
    assert_eq!(on_b.submit("/_riegel/logout", "/_riegel/logout", &[]).status, 200);
    let mut stale = a.take(&on_a);
    within("logout on B reaches A", Duration::from_secs(1), || stale.get("/mieter").status == 303);
    // A code used on A is refused on B.
    let mut c = a.client();
    let first = second_factor(&mut c, "paula", "Sommer-Wind-24", &secret, step + 1);
    assert_eq!((first.status, first.location()), (303, "/"), "{}", first.body);
    let mut d = b.client();
    let again = second_factor(&mut d, "paula", "Sommer-Wind-24", &secret, step + 1);
    assert_eq!(again.status, 200, "the code used on A worked on B: {}", again.location());
    // Failures split between A and B ban at the configured limit (3).
    let (ok, out) = site.cli(&b.cfg, &["user", "add", "quirin"], Some("Herbst-Laub-24\n"));
    assert!(ok, "{out}");
    for i in [&a, &b, &a] {
        assert_eq!(i.client().login("quirin", "falsch-falsch").status, 200);
    }
    for i in [&a, &b] {
        assert_eq!(i.client().login("quirin", "Herbst-Laub-24").status, 429, "no ban after 3 failures over two instances");
    }
    // The operator lifts it on one; the other sees it at once.
    let (ok, out) = site.cli(&a.cfg, &["user", "unban", "quirin"], None);
    assert!(ok, "{out}");
    let r = b.client().login("quirin", "Herbst-Laub-24");
    assert_eq!(r.status, 303, "{}", r.body);
    // The session check from A's cache: disabling with the CLI ends it on
    // both within a second.
    let mut full = c;
    let mut full_b = b.take(&full);
    assert_eq!((full.get("/mieter").status, full_b.get("/mieter").status), (200, 200));
    let (ok, out) = site.cli(&a.cfg, &["user", "disable", "paula"], None);
    assert!(ok, "{out}");
    within("disable reaches A", Duration::from_secs(1), || full.get("/mieter").status == 303);
    within("disable reaches B", Duration::from_secs(1), || full_b.get("/mieter").status == 303);
}

#[test]
fn fifty_concurrent_wrong_codes_over_two_instances_are_evaluated_at_most_the_limit() {
    let Some(site) = Site::new("fifty") else { return };
    let a = site.serve("a");
    let b = site.serve("b");
    let (ok, out) = site.cli(&a.cfg, &["user", "add", "rosa"], Some("Sommer-Wind-24\n"));
    assert!(ok, "{out}");
    let mut c = a.client();
    let (secret, step) = enrol(&mut c, "rosa", "Sommer-Wind-24");
    let mut p = a.client();
    assert_eq!(p.login("rosa", "Sommer-Wind-24").location(), "/_riegel/verify");
    let csrf = p.get("/_riegel/verify").input("csrf").expect("csrf");
    // A code that is wrong for every step near now.
    let wrong = (0..1_000_000u32)
        .map(|n| format!("{n:06}"))
        .find(|w| (step - 3..=step + 3).all(|s| totp_code(&secret, s * 30) != *w))
        .expect("a wrong code");
    let barrier = Arc::new(Barrier::new(50));
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let mut c = if i % 2 == 0 { a.take(&p) } else { b.take(&p) };
            let (barrier, csrf, wrong) = (barrier.clone(), csrf.clone(), wrong.clone());
            std::thread::spawn(move || {
                barrier.wait();
                c.post("/_riegel/verify", &[("code", &wrong), ("csrf", &csrf)]).status
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
    // 200: the code was checked and refused; 429: refused unchecked (ban).
    let evaluated = statuses.iter().filter(|s| **s == 200).count();
    assert!(evaluated <= 3, "{evaluated} codes evaluated, the limit is 3: {statuses:?}");
    assert!(evaluated >= 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    let failures = site.db.sql("SELECT count(*) FROM counters WHERE banned_until > 0");
    assert_eq!(failures[0][0], "1", "one ban (the account; the address has its own, higher limits)");
}

#[test]
fn a_reset_link_mailed_by_one_instance_works_once_on_either() {
    let Some(site) = Site::new("reset") else { return };
    let a = site.serve("a");
    let b = site.serve("b");
    let (ok, out) = site.cli(&a.cfg, &["user", "add", "sara", "--email", "sara@example.at", "--no-password"], None);
    assert!(ok, "{out}");
    let mut c = a.client();
    let sent = c.submit("/_riegel/forgot", "/_riegel/forgot", &[("username", "sara@example.at")]);
    assert_eq!(sent.status, 200, "{}", sent.body);
    let mails = site.smtp.wait_for(1, Duration::from_secs(15));
    assert_eq!(mails.len(), 1, "one mail, sent once by one of the two instances");
    let text = mails[0].text();
    let start = text.find("/_riegel/reset/").expect("link");
    let path: String = text[start..].chars().take_while(|c| !c.is_whitespace() && *c != '"' && *c != '<').collect();
    // Opened on B (the link names A; behind a load balancer it is one name).
    let mut u = b.client();
    assert_eq!(u.get(&path).status, 200);
    let done = u.submit(&path, &path, &[("password", "Neues-Passwort-24"), ("password2", "Neues-Passwort-24")]);
    assert_eq!(done.status, 200, "{}", done.body);
    // Used: refused on both.
    assert_eq!(b.client().get(&path).status, 410);
    assert_eq!(a.client().get(&path).status, 410);
    assert_eq!(a.client().login("sara", "Neues-Passwort-24").location(), "/_riegel/setup");
    // No second copy of the reset mail went out (a notice that the
    // password changed may follow).
    std::thread::sleep(Duration::from_millis(500));
    let resets = site.smtp.mails.lock().expect("mails").iter().filter(|m| m.text().contains("/_riegel/reset/")).count();
    assert_eq!(resets, 1);
}

#[test]
fn kill_9_right_after_an_acknowledged_enrolment_loses_nothing() {
    let Some(site) = Site::new("kill") else { return };
    let mut a = site.serve("a");
    let b = site.serve("b");
    let (ok, out) = site.cli(&a.cfg, &["user", "add", "till"], Some("Sommer-Wind-24\n"));
    assert!(ok, "{out}");
    let mut c = a.client();
    let (secret, step) = enrol(&mut c, "till", "Sommer-Wind-24");
    a.kill9();
    // B serves the enrolment: the password leads to the code, not to a new QR code.
    let mut d = b.client();
    let r = second_factor(&mut d, "till", "Sommer-Wind-24", &secret, step + 1);
    assert_eq!((r.status, r.location()), (303, "/"), "{}", r.body);
    assert_eq!(d.get("/mieter").status, 200);
    // And the session made on A before the kill works on B.
    assert_eq!(b.take(&c).get("/mieter").status, 200);
}

#[test]
fn an_unreachable_database_gets_the_503_page_and_riegel_reconnects_by_itself() {
    let Some(site) = Site::new("down") else { return };
    let a = site.serve("a");
    let (ok, out) = site.cli(&a.cfg, &["user", "add", "uwe"], Some("Sommer-Wind-24\n"));
    assert!(ok, "{out}");
    let mut c = a.client();
    enrol(&mut c, "uwe", "Sommer-Wind-24");
    assert_eq!(c.get("/mieter").status, 200);
    let h = a.client().get("/_riegel/healthz");
    assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
    // The database goes away (no new connections, the open ones ended).
    pg::sql(
        &pg::admin_url(),
        &format!("ALTER DATABASE {0} ALLOW_CONNECTIONS false; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}'", site.db.name),
    )
    .expect("cut");
    let branded = |r: &Resp| r.status == 503 && r.body.contains("IMMO PRO") && r.header("content-type").unwrap_or("").starts_with("text/html");
    // The cached session is not trusted without the notifications.
    within("the session fails closed", Duration::from_secs(10), || branded(&c.get("/mieter")));
    let anon = a.client().get("/mieter");
    assert!(branded(&anon), "{} {}", anon.status, anon.body);
    let login = a.client().login("uwe", "Sommer-Wind-24");
    assert!(branded(&login), "{} {}", login.status, login.body);
    let h = a.client().get("/_riegel/healthz");
    assert_eq!(h.status, 503);
    assert!(h.body.contains("store postgres unavailable"), "{}", h.body);
    // Nothing was acknowledged: the CLI cannot add a user either.
    let (ok, out) = site.cli(&a.cfg, &["user", "add", "never"], Some("Sommer-Wind-24\n"));
    assert!(!ok, "{out}");
    // Back: riegel reconnects by itself; the session works again.
    pg::sql(&pg::admin_url(), &format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", site.db.name)).expect("mend");
    within("healthz recovers", Duration::from_secs(20), || a.client().get("/_riegel/healthz").status == 200);
    within("the session works again", Duration::from_secs(10), || c.get("/mieter").status == 200);
    assert_eq!(site.db.sql("SELECT count(*) FROM users WHERE username_key = 'never'")[0][0], "0");
}

#[test]
fn store_copy_moves_a_sled_installation_to_postgres_and_back() {
    let Some(site) = Site::new("copy") else { return };
    // A sled installation with an enrolled user and a session.
    let sled_port = free_port();
    let sled_cfg = site.config("sled", sled_port, "store: { path: data }\n");
    let (ok, out) = cli(&sled_cfg, &["user", "add", "vera", "--email", "vera@example.at"], Some("Sommer-Wind-24\n"));
    assert!(ok, "{out}");
    let mut old = Instance::start(sled_cfg.clone(), sled_port);
    let mut c = old.client();
    let (secret, step) = enrol(&mut c, "vera", "Sommer-Wind-24");
    // A sled store in use is not copied.
    let pg_port = free_port();
    let pg_cfg = site.config("pg", pg_port, site.pg_store());
    let copy = |from: &Path, to: &Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_riegel")).args(["store", "copy", "--from"]).arg(from).arg("--to").arg(to).output().expect("copy");
        (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    };
    let (ok, out) = copy(&sled_cfg, &pg_cfg);
    assert!(!ok && out.contains("in use"), "{out}");
    old.kill9();
    let (ok, out) = copy(&sled_cfg, &pg_cfg);
    assert!(ok, "{out}");
    assert!(out.contains("copied 1 users, 1 sessions"), "{out}");
    // Not twice.
    let (ok, out) = copy(&sled_cfg, &pg_cfg);
    assert!(!ok && out.contains("not empty"), "{out}");
    // The copy serves the user: the same secret, the same session.
    let new = Instance::start(pg_cfg.clone(), pg_port);
    assert_eq!(new.take(&c).get("/mieter").status, 200, "the copied session");
    let mut d = new.client();
    let r = second_factor(&mut d, "vera", "Sommer-Wind-24", &secret, step + 1);
    assert_eq!((r.status, r.location()), (303, "/"), "{}", r.body);
    // The code used before the copy stays used.
    let mut e = new.client();
    assert_eq!(second_factor(&mut e, "vera", "Sommer-Wind-24", &secret, step).status, 200);
    // And back to a new sled store, while the PostgreSQL instance runs.
    let back_cfg = site.config("back", free_port(), "store: { path: back }\n");
    let (ok, out) = copy(&pg_cfg, &back_cfg);
    assert!(ok, "{out}");
    let (ok, out) = cli(&back_cfg, &["user", "show", "vera"], None);
    assert!(ok && out.contains("vera@example.at"), "{out}");
    // Another storage key: refused, nothing written.
    let other = site.dir.join("other");
    std::fs::create_dir_all(&other).expect("dir");
    let text = std::fs::read_to_string(&back_cfg).expect("cfg").replace("store: { path: back }", "store: { path: other/data }").replace("storage_key_file: storage.key", "storage_key_file: other/storage.key");
    riegel::demo::write_key(&other.join("storage.key")).expect("key");
    let other_cfg = site.dir.join("other.yaml");
    std::fs::write(&other_cfg, text).expect("cfg");
    let (ok, out) = copy(&pg_cfg, &other_cfg);
    assert!(!ok && out.contains("storage keys"), "{out}");
}
