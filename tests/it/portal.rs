//! Portal login mode (`first_factor: portal`) against a legacy-style portal
//! with its own login (riegel::demo::start_login_portal: hidden CSRF field
//! bound to a pre-login cookie, its own session cookie PORTALSID, a
//! redirect on success, the form again on failure, Remote-User ignored).

use crate::harness::*;
use riegel::demo::{start_login_portal, LoginPortal, PORTAL_COOKIE, PORTAL_LOGIN_YAML, PORTAL_USER};
use riegel::admin::AdminRequest;
use riegel::store::CounterKey;

fn start() -> (Riegel, LoginPortal) {
    let portal = start_login_portal("127.0.0.1:0".parse().expect("addr")).expect("portal");
    let r = Riegel::start_with(Options { upstream: Some(portal.addr), extra_yaml: PORTAL_LOGIN_YAML.into(), ..Options::default() });
    (r, portal)
}

/// Every answer a browser got, head and body, as text.
fn everything(answers: &[&Resp]) -> String {
    answers.iter().map(|a| format!("{:?}\n{}", a.headers, a.body)).collect::<Vec<_>>().join("\n")
}

/// The portal's one live session id (what only riegel may hold).
fn portal_sid(p: &LoginPortal) -> String {
    let live = p.live_sessions();
    assert_eq!(live.len(), 1, "{live:?}");
    live[0].clone()
}

#[test]
fn one_login_on_riegels_page_enrol_then_portal_pages_carry_the_portal_cookie_never_the_browser() {
    let (r, portal) = start();
    let (user, password, _) = PORTAL_USER;
    let mut c = r.client();
    // The guide's page, unchanged; the forgot link goes to the portal's page.
    let form = c.get("/_riegel/login");
    assert!(form.body.contains("Jetzt anmelden!"), "{}", form.body);
    assert!(form.body.contains("href=\"/password-reset\""), "{}", form.body);
    // The name as typed in another case: the account is the folded one.
    let e = login_and_enrol(&r, &mut c, "Mieterin", password);
    assert!(e.activated.body.contains("Erfolgreich aktiviert"), "{}", e.activated.body);
    let u = r.user(user).expect("account created at the first portal login");
    assert_eq!((u.username.as_str(), u.password_hash.is_none()), ("mieterin", true));

    let sid = portal_sid(&portal);
    let page = c.get("/start");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("id=\"portal-user\">mieterin<"), "{}", page.body);
    // The framework's way (a POST to a portal page) carries it too.
    let posted = c.post("/start", &[("a", "1")]);
    assert_eq!(posted.status, 200, "{}", posted.body);
    let seen = portal.seen();
    let with_cookie = |path: &str| seen.iter().any(|l| l.starts_with(path) && l.contains(&format!("{PORTAL_COOKIE}={sid}")));
    assert!(with_cookie("GET /start "), "{seen:#?}");
    assert!(with_cookie("POST /start "), "{seen:#?}");
    // Replayed: GET form (pre-login cookie), POST with its CSRF field.
    assert!(seen.iter().any(|l| l.starts_with("GET /login ")), "{seen:#?}");
    assert!(seen.iter().any(|l| l.starts_with("POST /login | PORTALSID=pre-")), "{seen:#?}");
    // The browser never holds the portal's cookie; other portal cookies pass.
    assert!(!c.jar.contains_key(PORTAL_COOKIE), "{:?}", c.jar);
    assert!(!everything(&[&form, &e.activated, &page, &posted]).contains(&sid));
    assert!(!c.jar.values().any(|v| v.contains(&sid)));
}

#[test]
fn a_wrong_password_gets_the_normal_failure_page_and_counts() {
    let (r, portal) = start();
    let mut c = r.client();
    let resp = c.login("mieterin", "falsch-falsch");
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(resp.body.contains("Jetzt anmelden!"), "{}", resp.body);
    assert!(resp.header("location").is_none());
    assert!(c.session_cookie().is_none());
    assert_eq!(r.counter(&CounterKey::login("mieterin")).failures, 1);
    assert!(r.user("mieterin").is_none(), "no account for a refused login");
    assert!(portal.live_sessions().is_empty());
    // Once the account exists, failures count on it.
    let (_, password, _) = PORTAL_USER;
    let _ = login_and_enrol(&r, &mut r.client(), "mieterin", password);
    let uid = r.user("mieterin").expect("user").id;
    let resp = r.client().login("mieterin", "noch-falscher");
    assert_eq!(resp.status, 200);
    assert_eq!(r.counter(&CounterKey::Account(uid)).failures, 1);
}

#[test]
fn regulation_bans_before_the_portal_is_asked() {
    let (r, portal) = start();
    for _ in 0..5 {
        let _ = r.client().login("mieterin", "falsch-falsch");
    }
    let posts = || portal.seen().iter().filter(|l| l.starts_with("POST /login")).count();
    let before = posts();
    let (_, password, _) = PORTAL_USER;
    let banned = r.client().login("mieterin", password);
    assert_eq!(banned.status, 429, "{}", banned.body);
    assert_eq!(posts(), before, "a banned attempt never reaches the portal");
}

#[test]
fn logout_ends_the_portal_session_too() {
    let (r, portal) = start();
    let (_, password, _) = PORTAL_USER;
    let mut c = r.client();
    let _ = login_and_enrol(&r, &mut c, "mieterin", password);
    let sid = portal_sid(&portal);
    // The portal's own logout link points at riegel's logout.
    let out = c.request("POST", "/_riegel/logout", &[("Origin", &r.base), ("Sec-Fetch-Site", "same-origin")], Some(""));
    assert_eq!(out.status, 200, "{}", out.body);
    let seen = portal.seen();
    assert!(seen.iter().any(|l| l.starts_with("GET /logout ") && l.contains(&sid)), "{seen:#?}");
    assert!(portal.live_sessions().is_empty());
    assert_eq!(c.get("/start").status, 303, "riegel's session is gone too");
}

#[test]
fn a_portal_that_is_down_gives_the_branded_502_at_login() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let r = Riegel::start_with(Options { upstream: Some(closed), extra_yaml: PORTAL_LOGIN_YAML.into(), ..Options::default() });
    let resp = r.client().login("mieterin", "whatever-it-is");
    assert_eq!(resp.status, 502, "{}", resp.body);
    assert!(resp.body.contains("IMMO PRO"), "branded: {}", resp.body);
    assert_eq!(r.counter(&CounterKey::login("mieterin")).failures, 0, "not the user's failure");
}

#[test]
fn the_browser_cannot_bring_its_own_portal_cookie_or_log_in_to_the_portal_past_riegel() {
    let (r, portal) = start();
    let (_, password, _) = PORTAL_USER;
    let mut c = r.client();
    let _ = login_and_enrol(&r, &mut c, "mieterin", password);
    let sid = portal_sid(&portal);
    // A planted copy (fixation) never reaches the portal: only the jar's.
    c.jar.insert(PORTAL_COOKIE.into(), "s-attacker".into());
    let page = c.get("/start");
    assert_eq!(page.status, 200);
    let last = portal.seen().last().cloned().unwrap_or_default();
    assert!(last.contains(&format!("{PORTAL_COOKIE}={sid}")) && !last.contains("attacker"), "{last}");
    c.jar.remove(PORTAL_COOKIE);
    // Posting another person's password to the portal's own form through a
    // full session would skip that person's second factor: never forwarded,
    // and riegel's session ends.
    let before = portal.seen().len();
    let body = form_encode(&[("username", "someone-else"), ("password", "their-password")]);
    let resp = c.request("POST", "/login", &[], Some(&body));
    assert_eq!(resp.status, 303, "{}", resp.body);
    assert!(resp.location().starts_with("/_riegel/login"), "{}", resp.location());
    assert!(!portal.seen()[before..].iter().any(|l| l.starts_with("POST /login")), "{:#?}", portal.seen());
    assert_eq!(c.get("/start").status, 303);
}

#[test]
fn a_renewed_portal_session_updates_the_sealed_jar_not_the_browser() {
    let (r, portal) = start();
    let (_, password, _) = PORTAL_USER;
    let mut c = r.client();
    let _ = login_and_enrol(&r, &mut c, "mieterin", password);
    let old = portal_sid(&portal);
    let rotated = c.get("/rotate");
    assert_eq!(rotated.status, 302, "{}", rotated.body);
    assert!(rotated.headers_named("set-cookie").iter().all(|v| !v.starts_with(PORTAL_COOKIE)), "{:?}", rotated.headers);
    let new = portal_sid(&portal);
    assert_ne!(old, new);
    let page = c.get("/start");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(portal.seen().last().is_some_and(|l| l.contains(&new)));
    assert!(!everything(&[&rotated, &page]).contains(&new));
    // The same through Pingora's framework (a POST): held back, jar updated.
    let posted = c.post("/rotate", &[("x", "1")]);
    assert_eq!(posted.status, 302, "{}", posted.body);
    assert!(posted.headers_named("set-cookie").iter().all(|v| !v.starts_with(PORTAL_COOKIE)), "{:?}", posted.headers);
    let newer = portal_sid(&portal);
    assert_ne!(new, newer);
    assert_eq!(c.get("/start").status, 200);
    assert!(portal.seen().last().is_some_and(|l| l.contains(&newer)), "{:#?}", portal.seen());
    assert!(!everything(&[&posted]).contains(&newer));
}

#[test]
fn riegels_reset_is_not_offered_the_portals_is() {
    let (r, _portal) = start();
    let mut c = r.client();
    let forgot = c.get("/_riegel/forgot");
    assert_eq!((forgot.status, forgot.location()), (303, "/password-reset"));
    let page = c.get("/password-reset");
    assert_eq!(page.status, 200, "a public portal page");
    assert!(page.body.contains("portal-reset"));
    // A public page's portal session cookie is held back; others pass.
    assert!(page.headers_named("set-cookie").iter().all(|v| !v.starts_with(PORTAL_COOKIE)), "{:?}", page.headers);
    assert!(page.headers_named("set-cookie").iter().any(|v| v.starts_with("portal_lang=de")), "{:?}", page.headers);
    assert_eq!(c.get("/_riegel/reset/abc").status, 404);
    // Mein Zugang offers no password change: the portal owns the password.
    let (_, password, _) = PORTAL_USER;
    let _ = login_and_enrol(&r, &mut c, "mieterin", password);
    let account = c.get("/_riegel/account");
    assert_eq!(account.status, 200, "{}", account.body);
    assert!(!account.body.contains("change-password"), "{}", account.body);
    assert!(account.body.contains("recovery-codes") || account.body.contains("authenticators"), "{}", account.body);
    let changed = c.post("/_riegel/account/password", &[("current_password", password), ("password", "x"), ("password2", "x")]);
    assert_eq!(changed.status, 404);
}

#[test]
fn the_password_is_never_written_to_the_store_or_the_log() {
    let portal = start_login_portal("127.0.0.1:0".parse().expect("addr")).expect("portal");
    let dir = tempdir("portal-serve");
    let p = ServeProcess::start(&dir, portal.addr, PORTAL_LOGIN_YAML);
    let (_, password, _) = PORTAL_USER;
    let mut c = Client::new(p.addr);
    let wrong = c.login("mieterin", "Falsches-Kennwort-77");
    assert_eq!(wrong.status, 200);
    let resp = c.login("mieterin", password);
    assert_eq!(resp.status, 303, "{}", resp.body);
    let setup = c.get("/_riegel/setup");
    assert_eq!(setup.status, 200);
    let sid = portal_sid(&portal);
    p.stop();
    let mut files = vec![dir.join("stderr.log")];
    let mut stack = vec![dir.join("data")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("dir").flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    assert!(files.len() > 2, "{files:?}");
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_default();
        for secret in [password, "Falsches-Kennwort-77", sid.as_str()] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} in {}", f.display());
        }
    }
}

/// Whether the portal saw its logout URL with `sid`.
fn logged_out(p: &LoginPortal, sid: &str) -> bool {
    p.seen().iter().any(|l| l.starts_with("GET /logout ") && l.contains(&format!("{PORTAL_COOKIE}={sid}")))
}

#[test]
fn the_operators_commands_end_the_portal_sessions_too() {
    let (r, portal) = start();
    let (user, password, _) = PORTAL_USER;
    // Two devices; `user disable` ends both portal sessions.
    let mut c = r.client();
    let e = login_and_enrol(&r, &mut c, user, password);
    let mut d = r.client();
    assert_eq!(login_full(&r, &mut d, user, password, &e.secret).status, 303);
    let two = portal.live_sessions();
    assert_eq!(two.len(), 2, "{two:?}");
    let out = r.admin(AdminRequest::Disable { user: user.into() });
    assert!(out.ok, "{}", out.message);
    assert!(out.message.contains("ended 2 sessions (and 2 portal sessions)"), "{}", out.message);
    assert!(two.iter().all(|s| logged_out(&portal, s)), "{:#?}", portal.seen());
    assert!(portal.live_sessions().is_empty(), "{:?}", portal.live_sessions());
    assert_eq!(c.get("/start").status, 303);
    assert_eq!(d.get("/start").status, 303);

    // `user delete`: the portal session ends before the account goes.
    assert!(r.admin(AdminRequest::Enable { user: user.into() }).ok);
    assert_eq!(login_full(&r, &mut c, user, password, &e.secret).status, 303);
    let sid = portal_sid(&portal);
    let out = r.admin(AdminRequest::Delete { user: user.into() });
    assert!(out.ok && out.message.contains("ended 1 sessions (and 1 portal sessions)"), "{}", out.message);
    assert!(logged_out(&portal, &sid));
    assert!(portal.live_sessions().is_empty());

    // The next portal login makes the account again; `user reset-totp`
    // ends that session and its portal session.
    let mut c = r.client();
    let _ = login_and_enrol(&r, &mut c, user, password);
    let sid = portal_sid(&portal);
    let out = r.admin(AdminRequest::ResetTotp { user: user.into() });
    assert!(out.ok && out.message.contains("ended 1 sessions (and 1 portal sessions)"), "{}", out.message);
    assert!(logged_out(&portal, &sid));
    assert!(portal.live_sessions().is_empty());
    assert_eq!(c.get("/start").status, 303);
}

#[test]
fn the_command_line_ends_portal_sessions_through_the_server_and_on_its_own() {
    let portal = start_login_portal("127.0.0.1:0".parse().expect("addr")).expect("portal");
    let dir = tempdir("portal-cli");
    let p = ServeProcess::start(&dir, portal.addr, PORTAL_LOGIN_YAML);
    let (user, password, _) = PORTAL_USER;
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs() as i64;
    let mut c = Client::new(p.addr);
    let _ = login_and_enrol_at(&mut c, user, password, now());
    let sid = portal_sid(&portal);
    // While the server runs, the command goes through its admin socket.
    let out = p.cli(&["user", "disable", user], None);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("ended 1 sessions (and 1 portal sessions)"), "{said}");
    assert!(logged_out(&portal, &sid), "{:#?}", portal.seen());
    assert_eq!(c.get("/start").status, 303);
    // In portal login mode riegel holds no passwords to set.
    let out = p.cli(&["user", "set-password", user], Some("Ein-neues-Kennwort-1\n"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("first_factor: portal"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = p.cli(&["user", "add", "neu"], Some("Ein-neues-Kennwort-1\n"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-password"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = p.cli(&["user", "add", "neu", "--no-password", "--email", "neu@example.at"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let csv = dir.join("import.csv");
    std::fs::write(&csv, "username,email,display_name,password_hash\nzweite,,Zweite,$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\n").expect("csv");
    let out = p.cli(&["user", "import", csv.to_str().expect("path")], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("zweite has a password_hash"), "{}", String::from_utf8_lossy(&out.stderr));

    // With the server stopped, the command opens the store and asks the
    // portal itself (a session left from before the stop).
    assert!(p.cli(&["user", "enable", user], None).status.success());
    let mut c = Client::new(p.addr);
    let resp = c.login(user, password);
    assert_eq!(resp.status, 303, "{}", resp.body);
    assert_eq!(resp.location(), "/_riegel/verify", "{}", resp.body);
    let sid = portal_sid(&portal);
    let config = dir.join("riegel.yaml");
    p.stop();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_riegel")).args(["user", "reset-totp", user, "--config"]).arg(&config).output().expect("cli");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("ended 1 sessions (and 1 portal sessions)"), "{said}");
    assert!(logged_out(&portal, &sid), "{:#?}", portal.seen());
    assert!(portal.live_sessions().is_empty());
}

#[test]
fn a_lost_phone_in_portal_mode_logs_in_at_the_portal_then_needs_the_mailed_link() {
    let (r, portal) = start();
    let (user, password, _) = PORTAL_USER;
    let mut c = r.client();
    let first = login_and_enrol(&r, &mut c, user, password);
    // The operator has the tenant's address, then the phone is lost.
    let out = r.admin(AdminRequest::SetEmail { user: user.into(), email: Some("maria@example.at".into()) });
    assert!(out.ok && out.message.contains("(and 1 portal sessions)"), "{}", out.message);
    let out = r.admin(AdminRequest::ResetTotp { user: user.into() });
    assert!(out.ok && out.message.contains("mails a 'Neues Gerät einrichten' link to maria@example.at"), "{}", out.message);
    assert!(portal.live_sessions().is_empty());
    // The portal takes the password; riegel wants the mailed link before a
    // QR code, and nothing reaches the portal's pages meanwhile.
    r.clock.advance(30);
    let mut d = r.client();
    let login = d.login(user, password);
    assert_eq!((login.status, login.location()), (303, "/_riegel/new-device"), "{}", login.body);
    let sid = portal_sid(&portal);
    let waiting = d.get("/_riegel/new-device");
    assert!(waiting.body.contains("m…@example.at"), "{}", waiting.body);
    assert!(!waiting.body.contains("<svg class=\"qr\""));
    let seen = portal.seen().len();
    assert_eq!(d.get("/start").status, 303);
    assert!(portal.seen()[seen..].iter().all(|l| !l.starts_with("GET /start")), "{:#?}", portal.seen());
    let link = crate::account::new_device_path(&r, "maria@example.at", 1);
    assert_eq!(r.client().get(&link).status, 403, "another browser");
    let opened = d.submit(&link, &link, &[]);
    assert_eq!((opened.status, opened.location()), (303, "/_riegel/setup"), "{}", opened.body);
    let setup = d.get("/_riegel/setup");
    let secret = secret_of_uri(&decode_qr_svg(&qr_svg_of(&setup.body)));
    assert_ne!(secret, first.secret);
    let activated = d.submit("/_riegel/setup/confirm", "/_riegel/setup/confirm", &[("code", &totp_code(&secret, r.now()))]);
    assert!(activated.body.contains("Erfolgreich aktiviert"), "{}", activated.body);
    // The portal session of this login carried through the link and the
    // enrolment; the browser never saw it.
    let page = d.get("/start");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(portal.seen().last().is_some_and(|l| l.contains(&format!("{PORTAL_COOKIE}={sid}"))), "{:#?}", portal.seen());
    assert!(!everything(&[&login, &waiting, &opened, &setup, &activated, &page]).contains(&sid));
    assert!(!d.jar.values().any(|v| v.contains(&sid)));
}

#[test]
fn the_janitor_ends_idle_portal_sessions_with_the_configuration_running_now() {
    let (r, portal) = start();
    let (user, password, _) = PORTAL_USER;
    let mut c = r.client();
    let _ = login_and_enrol(&r, &mut c, user, password);
    let sid = portal_sid(&portal);
    // A reload moves the portal's logout; the janitor follows it.
    let yaml = std::fs::read_to_string(&r.config_path).expect("config");
    assert!(yaml.contains("logout_url: \"/logout\""), "{yaml}");
    std::fs::write(&r.config_path, yaml.replace("logout_url: \"/logout\"", "logout_url: \"/logout?after=reload\"")).expect("write");
    let reloader = riegel::reload::Reloader::new(r.config_path.clone(), r.live.clone(), None);
    assert_eq!(reloader.reload(), riegel::reload::Result::Success);
    // Not idle yet: nothing goes.
    assert_eq!(block_on(riegel::app::purge_once(&r.live.services())), 0);
    r.clock.advance(31 * 60);
    assert_eq!(block_on(riegel::app::purge_once(&r.live.services())), 1);
    let seen = portal.seen();
    assert!(seen.iter().any(|l| l.starts_with("GET /logout?after=reload ") && l.contains(&format!("{PORTAL_COOKIE}={sid}"))), "{seen:#?}");
    assert!(portal.live_sessions().is_empty());
    assert_eq!(c.get("/start").status, 303);
}

#[test]
fn logging_out_of_an_idle_session_ends_its_portal_session_at_once() {
    let (r, portal) = start();
    let (user, password, _) = PORTAL_USER;
    let mut c = r.client();
    let _ = login_and_enrol(&r, &mut c, user, password);
    let sid = portal_sid(&portal);
    // Past the idle timeout the session no longer serves requests, but its
    // record (and the portal's session) wait for the janitor; "Abmelden"
    // ends both now.
    r.clock.advance(31 * 60);
    assert_eq!(c.get("/start").status, 303);
    assert!(!logged_out(&portal, &sid));
    let out = c.request("POST", "/_riegel/logout", &[("Origin", &r.base), ("Sec-Fetch-Site", "same-origin")], Some(""));
    assert_eq!(out.status, 200, "{}", out.body);
    assert!(logged_out(&portal, &sid), "{:#?}", portal.seen());
    assert!(portal.live_sessions().is_empty());
    assert_eq!(block_on(riegel::app::purge_once(&r.live.services())), 0, "nothing left for the janitor");
}
