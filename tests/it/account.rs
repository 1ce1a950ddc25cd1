//! "Mein Zugang" over real HTTP: every form, the second-factor rules and
//! their regulation, the sessions, the lost-phone link, languages, and the
//! dead ends found when the journey was tried as a new user would.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::harness::*;
use riegel::store::prelude::*;

const PW: &str = "Sommer-2024!";
const FIREFOX: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1";

fn with_contact() -> Options {
    Options {
        branding_yaml: "  contact: { phone: \"+43 1 234 56 78\", email: \"hausverwaltung@example.at\" }\n".into(),
        ..Options::default()
    }
}

/// A user with an e-mail address, enrolled; the client has a full session.
fn enrolled(r: &Riegel, user: &str) -> (Client, Enrolled) {
    r.add_user(user, Some(&format!("{user}@example.at")), Some(PW));
    let mut c = r.client();
    let e = login_and_enrol(r, &mut c, user, PW);
    (c, e)
}

/// GETs "Mein Zugang" for its CSRF token, then POSTs `fields` to `path`.
fn account_post(c: &mut Client, path: &str, fields: &[(&str, &str)]) -> Resp {
    c.submit("/_riegel/account", path, fields)
}

/// The mails to `to` so far, waiting until there are at least `n`.
fn mails_to(r: &Riegel, to: &str, n: usize) -> Vec<ReceivedMail> {
    let start = Instant::now();
    loop {
        let got: Vec<ReceivedMail> = r.smtp.mails.lock().expect("lock").iter().filter(|m| m.to == vec![to.to_string()]).cloned().collect();
        if got.len() >= n || start.elapsed() > Duration::from_secs(10) {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mail_with(r: &Riegel, to: &str, subject: &str) -> ReceivedMail {
    let start = Instant::now();
    loop {
        if let Some(m) = mails_to(r, to, 0).into_iter().rev().find(|m| m.subject().contains(subject)) {
            return m;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no mail {subject:?} to {to}: {:?}", mails_to(r, to, 0).iter().map(|m| m.subject()).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The actions `…/<handle>/end` of the sessions list.
fn end_actions(html: &str) -> Vec<String> {
    html.split("action=\"").skip(1).filter_map(|r| r.split('"').next()).filter(|a| a.starts_with("/_riegel/account/sessions/") && a.ends_with("/end")).map(str::to_string).collect()
}

/// Password and a code from `secret`: the login ends on the portal (or `rd`).
fn logs_in_with(r: &Riegel, user: &str, secret: &str) -> bool {
    let mut c = r.client();
    let resp = login_full(r, &mut c, user, PW, secret);
    resp.status == 303 && resp.session_cookie_set()
}

#[test]
fn the_account_page_needs_a_full_session_and_shows_the_account() {
    let r = Riegel::start();
    r.add_user("anna", Some("anna@example.at"), Some(PW));
    let mut c = r.client();
    c.extra.push(("User-Agent".into(), FIREFOX.into()));
    let first = c.get("/_riegel/account");
    assert_eq!((first.status, first.location()), (303, "/_riegel/login?rd=%2F%5Friegel%2Faccount"));
    // The password alone is not enough.
    c.login("anna", PW);
    assert_eq!(c.get("/_riegel/account").location(), "/_riegel/login?rd=%2F%5Friegel%2Faccount");
    let mut c = r.client();
    c.extra.push(("User-Agent".into(), FIREFOX.into()));
    let e = login_and_enrol(&r, &mut c, "anna", PW);
    let mut phone = r.client();
    phone.extra.push(("User-Agent".into(), IPHONE.into()));
    // The login journey with rd comes back here.
    r.clock.advance(30);
    let login = phone.submit("/_riegel/login?rd=%2F_riegel%2Faccount", "/_riegel/login?rd=%2F_riegel%2Faccount", &[("username", "anna"), ("password", PW)]);
    assert_eq!(login.location(), "/_riegel/verify");
    let code = totp_code(&e.secret, r.now());
    let done = phone.submit("/_riegel/verify", "/_riegel/verify", &[("code", &code)]);
    assert_eq!(done.location(), "/_riegel/account");
    let page = phone.get("/_riegel/account");
    assert_eq!(page.status, 200, "{}", page.body);
    for s in ["Mein Zugang", "anna Muster", "anna@example.at", "Authenticator App", "noch 10 unbenutzte Wiederherstellungscodes", "Safari · iOS", "Firefox · Windows", "dieses Gerät", "127.0.0.1", "Auf allen anderen Geräten abmelden", " Uhr"] {
        assert!(page.body.contains(s), "account page lacks {s:?}:\n{}", page.body);
    }
    // This device first, and it has no "end" button of its own.
    assert!(page.body.find("Safari · iOS") < page.body.find("Firefox · Windows"));
    assert_eq!(end_actions(&page.body).len(), 1);
    // No session id in the page.
    let sid_hint = phone.session_cookie().expect("cookie");
    assert!(!page.body.contains(&sid_hint[..12]));
    // Unknown browsers are said to be unknown.
    let mut curl = r.client();
    curl.extra.push(("User-Agent".into(), "curl/8.5.0".into()));
    login_full(&r, &mut curl, "anna", PW, &e.secret);
    assert!(curl.get("/_riegel/account").body.contains("Unbekannter Browser · unbekanntes System"));
    // HEAD and other methods.
    assert_eq!(phone.request("DELETE", "/_riegel/account", &[], None).status, 405);
    assert_eq!(phone.get("/_riegel/account/password").status, 405);
}

#[test]
fn a_password_change_keeps_the_policy_and_ends_the_other_sessions() {
    let r = Riegel::start_with(with_contact());
    let (mut a, e) = enrolled(&r, "bea");
    let mut b = r.client();
    assert_eq!(login_full(&r, &mut b, "bea", PW, &e.secret).status, 303);
    assert_eq!(b.get("/").status, 200);
    let change = |c: &mut Client, current: &str, new: &str, new2: &str| {
        account_post(c, "/_riegel/account/password", &[("current_password", current), ("password", new), ("password2", new2)])
    };
    let wrong = change(&mut a, "falsch-falsch", "Neues-Passwort-2025", "Neues-Passwort-2025");
    assert_eq!(wrong.status, 200);
    assert!(wrong.body.contains("Das aktuelle Passwort ist nicht korrekt."), "{}", wrong.body);
    let short = change(&mut a, PW, "kurz", "kurz");
    assert!(short.body.contains("mindestens 10 Zeichen lang"), "the reset form's message");
    let mismatch = change(&mut a, PW, "Neues-Passwort-2025", "Neues-Passwort-2052");
    assert!(mismatch.body.contains("Die beiden Passwörter stimmen nicht überein."));
    let is_name = change(&mut a, PW, "bea@example.at", "bea@example.at");
    assert!(is_name.body.contains("nicht Ihr Benutzername oder Ihre E-Mail-Adresse"));
    let empty = change(&mut a, "", "Neues-Passwort-2025", "Neues-Passwort-2025");
    assert!(empty.body.contains("Bitte füllen Sie alle Pflichtfelder aus."));
    assert_eq!(b.get("/").status, 200, "failed attempts change nothing");
    let ok = change(&mut a, PW, "Neues-Passwort-2025", "Neues-Passwort-2025");
    assert_eq!((ok.status, ok.location()), (303, "/_riegel/account?notice=password_changed"), "{}", ok.body);
    assert!(ok.session_cookie_set(), "this browser gets a new session id");
    let page = a.get(ok.location());
    assert!(page.body.contains("Ihr Passwort wurde geändert."), "{}", page.body);
    assert_eq!(a.get("/").status, 200, "this session goes on");
    assert_eq!(b.get("/").status, 303, "the other session ended");
    assert_eq!(r.client().login("bea", PW).status, 200, "the old password is dead");
    assert_eq!(r.client().login("bea", "Neues-Passwort-2025").status, 303);
    let mail = mail_with(&r, "bea@example.at", "Ihr Passwort wurde geändert");
    let text = mail.plain();
    assert!(text.contains(" Uhr geändert.") && text.contains(" um "), "time as Austrians write it: {text}");
    assert!(text.contains("Telefon: +43 1 234 56 78") && text.contains("E-Mail: hausverwaltung@example.at"), "{text}");
    assert!(!text.contains("Neues-Passwort"), "never the password");
}

#[test]
fn a_second_authenticator_logs_in_and_a_removed_one_does_not() {
    let r = Riegel::start();
    let (mut c, first) = enrolled(&r, "carl");
    r.clock.advance(30);
    // No code, a wrong code, no name: refused.
    let no_code = account_post(&mut c, "/_riegel/account/authenticators", &[("name", "Tablet"), ("code", "")]);
    assert!(no_code.body.contains("nicht das richtige Format"), "{}", no_code.body);
    let wrong = account_post(&mut c, "/_riegel/account/authenticators", &[("name", "Tablet"), ("code", "000000")]);
    assert!(wrong.body.contains("aus einer Ihrer Authenticator Apps oder einen unbenutzten Wiederherstellungscode"), "{}", wrong.body);
    let code = totp_code(&first.secret, r.now());
    let nameless = account_post(&mut c, "/_riegel/account/authenticators", &[("name", "  "), ("code", &code)]);
    assert!(nameless.body.contains("Bitte geben Sie dem Gerät einen Namen"));
    // Name and a current code of the first app: the QR code of a new one.
    let started = account_post(&mut c, "/_riegel/account/authenticators", &[("name", "Tablet"), ("code", &code)]);
    assert_eq!(started.status, 200, "{}", started.body);
    assert!(started.body.contains("„Tablet“"));
    let second = secret_of_uri(&decode_qr_svg(&qr_svg_of(&started.body)));
    assert_ne!(second, first.secret);
    // Reloading (the same POST again) shows the same secret without a new code.
    let again = account_post(&mut c, "/_riegel/account/authenticators", &[("name", "Tablet"), ("code", "")]);
    assert_eq!(secret_of_uri(&decode_qr_svg(&qr_svg_of(&again.body))), second);
    assert_eq!(secret_of_uri(&decode_qr_svg(&qr_svg_of(&c.get("/_riegel/account/authenticators").body))), second);
    // Confirming takes a code of the new app, not of the old one.
    r.clock.advance(30);
    let old = totp_code(&first.secret, r.now());
    let refused = c.submit("/_riegel/account", "/_riegel/account/authenticators/confirm", &[("code", &old)]);
    assert!(refused.body.contains("Datum und Uhrzeit Ihres Smartphones"), "the clock and key hint: {}", refused.body);
    let new_code = totp_code(&second, r.now());
    let added = c.submit("/_riegel/account", "/_riegel/account/authenticators/confirm", &[("code", &new_code)]);
    assert_eq!((added.status, added.location()), (303, "/_riegel/account?notice=authenticator_added"), "{}", added.body);
    let mail = mail_with(&r, "carl@example.at", "Neues Gerät");
    assert!(mail.plain().contains("das Gerät „Tablet“"), "{}", mail.plain());
    let user = r.user("carl").expect("user");
    assert_eq!(user.authenticators.len(), 2);
    // Either app logs in, each with its own replay protection.
    assert!(logs_in_with(&r, "carl", &second), "the second app's code logs in");
    assert!(logs_in_with(&r, "carl", &first.secret), "the first app still works");
    // The account page lists both; remove the first with a code of the second.
    let page = c.get("/_riegel/account");
    assert!(page.body.contains("Tablet") && page.body.contains("/_riegel/account/authenticators/1/remove"));
    r.clock.advance(30);
    let bad = account_post(&mut c, "/_riegel/account/authenticators/1/remove", &[("code", "123456")]);
    assert!(bad.body.contains("Der Code ist nicht korrekt"), "{}", bad.body);
    let code2 = totp_code(&second, r.now());
    let removed = account_post(&mut c, "/_riegel/account/authenticators/1/remove", &[("code", &code2)]);
    assert_eq!(removed.location(), "/_riegel/account?notice=authenticator_removed", "{}", removed.body);
    mail_with(&r, "carl@example.at", "Gerät für die Anmeldung entfernt");
    assert!(!logs_in_with(&r, "carl", &first.secret), "a removed app's code must not log in");
    assert!(logs_in_with(&r, "carl", &second));
    // The last one cannot be removed this way, not even with its own code.
    r.clock.advance(30);
    let last_id = r.user("carl").expect("user").authenticators[0].id;
    let code2 = totp_code(&second, r.now());
    let last = account_post(&mut c, &format!("/_riegel/account/authenticators/{last_id}/remove"), &[("code", &code2)]);
    assert_eq!(last.status, 409);
    assert!(last.body.contains("Das letzte Gerät kann nicht entfernt werden"), "{}", last.body);
    assert_eq!(r.user("carl").expect("user").authenticators.len(), 1);
    assert_eq!(account_post(&mut c, "/_riegel/account/authenticators/99/remove", &[("code", &code2)]).status, 404);
    assert_eq!(account_post(&mut c, "/_riegel/account/authenticators/x%2F/remove", &[("code", &code2)]).status, 404);
}

#[test]
fn new_recovery_codes_replace_the_old_ones() {
    let r = Riegel::start();
    let (mut c, e) = enrolled(&r, "dora");
    assert!(c.get("/_riegel/account").body.contains("noch 10 unbenutzte"));
    r.clock.advance(30);
    let code = totp_code(&e.secret, r.now());
    let fresh = account_post(&mut c, "/_riegel/account/recovery-codes", &[("code", &code)]);
    assert_eq!(fresh.status, 200, "{}", fresh.body);
    let new_codes = recovery_codes_of(&fresh.body);
    assert_eq!(new_codes.len(), 10);
    assert!(fresh.body.contains("data-print-label=\"Drucken\"") && fresh.body.contains("data-copy-label=\"Kopieren\""));
    assert!(new_codes.iter().all(|n| !e.recovery_codes.contains(n)));
    mail_with(&r, "dora@example.at", "Neue Wiederherstellungscodes");
    // The same code again is a replay.
    let replay = account_post(&mut c, "/_riegel/account/recovery-codes", &[("code", &code)]);
    assert!(replay.body.contains("Der Code ist nicht korrekt"));
    // An old code is dead; a new one logs in, once.
    r.clock.advance(30);
    let mut d = r.client();
    d.login("dora", PW);
    let dead = d.submit("/_riegel/recovery", "/_riegel/recovery", &[("code", &e.recovery_codes[0])]);
    assert_eq!(dead.status, 200, "an old recovery code still works");
    let ok = d.submit("/_riegel/recovery", "/_riegel/recovery", &[("code", &new_codes[0])]);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body.contains("Mit Wiederherstellungscode angemeldet") && ok.session_cookie_set());
    // A recovery code is a second factor on the account pages too (and mailed about).
    let with_recovery = account_post(&mut c, "/_riegel/account/recovery-codes", &[("code", &new_codes[1])]);
    assert_eq!(recovery_codes_of(&with_recovery.body).len(), 10);
    let used = mail_with(&r, "dora@example.at", "Wiederherstellungscode verwendet");
    assert!(!used.text().contains(&new_codes[1]));
}

#[test]
fn a_recovery_login_offers_a_new_device_at_once() {
    let r = Riegel::start();
    let (_, e) = enrolled(&r, "emil");
    r.clock.advance(30);
    let mut c = r.client();
    c.login("emil", PW);
    let done = c.submit("/_riegel/recovery", "/_riegel/recovery", &[("code", &e.recovery_codes[3])]);
    assert!(done.body.contains("Neues Smartphone?") && done.body.contains("Neues Gerät einrichten"), "{}", done.body);
    assert!(done.body.contains("noch 9 unbenutzte"));
    assert_eq!(c.get("/").status, 200, "the recovery login is a full login");
    // The recovery code just given started the enrolment: no second code.
    let csrf = done.input("csrf").expect("csrf");
    let qr = c.post("/_riegel/account/authenticators", &[("name", "Neues Handy"), ("csrf", &csrf)]);
    assert_eq!(qr.status, 200, "{}", qr.body);
    let secret = secret_of_uri(&decode_qr_svg(&qr_svg_of(&qr.body)));
    let added = c.submit("/_riegel/account", "/_riegel/account/authenticators/confirm", &[("code", &totp_code(&secret, r.now()))]);
    assert_eq!(added.location(), "/_riegel/account?notice=authenticator_added", "{}", added.body);
    assert!(logs_in_with(&r, "emil", &secret));
    // Another browser's session cannot continue that enrolment without a code.
    let mut other = r.client();
    login_full(&r, &mut other, "emil", PW, &secret);
    let refused = account_post(&mut other, "/_riegel/account/authenticators", &[("name", "Fremd"), ("code", "")]);
    assert!(refused.body.contains("nicht das richtige Format"), "{}", refused.body);
}

#[test]
fn ending_sessions_one_and_all_others() {
    let r = Riegel::start();
    let (mut a, e) = enrolled(&r, "fini");
    let mut b = r.client();
    let mut c = r.client();
    login_full(&r, &mut b, "fini", PW, &e.secret);
    login_full(&r, &mut c, "fini", PW, &e.secret);
    let page = a.get("/_riegel/account");
    let ends = end_actions(&page.body);
    assert_eq!(ends.len(), 2, "two other sessions: {}", page.body);
    // End one of them (the most recently active is listed first: c).
    let one = account_post(&mut a, &ends[0], &[]);
    assert_eq!(one.location(), "/_riegel/account?notice=session_ended");
    assert_eq!(c.get("/").status, 303);
    assert_eq!(b.get("/").status, 200);
    // Gone already: said so, nothing else happens.
    assert_eq!(account_post(&mut a, &ends[0], &[]).location(), "/_riegel/account?notice=session_gone");
    assert_eq!(account_post(&mut a, "/_riegel/account/sessions/zz/end", &[]).location(), "/_riegel/account?notice=session_gone");
    // A password-stage session (someone with the password) is listed and ended too.
    let mut p = r.client();
    p.login("fini", PW);
    assert!(a.get("/_riegel/account").body.contains("Nur das Passwort wurde eingegeben"));
    let all = account_post(&mut a, "/_riegel/account/sessions/end-others", &[]);
    assert_eq!((all.status, all.location()), (303, "/_riegel/account?notice=sessions_ended"));
    assert!(all.session_cookie_set());
    assert_eq!(b.get("/").status, 303);
    assert_eq!(p.get("/_riegel/verify").location(), "/_riegel/login?notice=login_expired");
    assert_eq!(a.get("/").status, 200, "this session stays");
    let page = a.get("/_riegel/account");
    assert!(page.body.contains("Sie sind nur auf diesem Gerät angemeldet."), "{}", page.body);
    assert!(end_actions(&page.body).is_empty());
    let uid = r.user("fini").expect("user").id;
    assert_eq!(block_on(r.services.store.sessions_of(uid)).expect("store").len(), 1, "only this session is left");
    mail_with(&r, "fini@example.at", "Auf allen anderen Geräten abgemeldet");
    // Ending this browser's own session is a logout.
    let own = account_post(&mut a, &format!("/_riegel/account/sessions/{}/end", only_handle(&r, uid)), &[]);
    assert!(own.body.contains("Sie sind abgemeldet"), "{}", own.body);
    assert_eq!(a.get("/").status, 303);
}

/// The handle "Mein Zugang" shows for the only session `uid` has left
/// (SHA-256 of a label and the session id, first 8 bytes, hex).
fn only_handle(r: &Riegel, uid: u64) -> String {
    use sha2::Digest;
    let list = block_on(r.services.store.sessions_of(uid)).expect("store");
    assert_eq!(list.len(), 1);
    let mut h = sha2::Sha256::new();
    h.update(b"riegel-session-handle:");
    h.update(&list[0].sid);
    data_encoding::HEXLOWER.encode(&h.finalize()[..8])
}

#[test]
fn every_account_post_needs_the_token_and_the_same_origin() {
    let r = Riegel::start();
    let (mut c, e) = enrolled(&r, "gabi");
    let mut other = r.client();
    login_full(&r, &mut other, "gabi", PW, &e.secret);
    let handle = end_actions(&c.get("/_riegel/account").body).pop().expect("the other session");
    let csrf = c.get("/_riegel/account").input("csrf").expect("csrf");
    let code = totp_code(&e.secret, r.now() + 60);
    let routes: Vec<(String, Vec<(&str, &str)>)> = vec![
        ("/_riegel/account/password".into(), vec![("current_password", PW), ("password", "Neues-Passwort-2025"), ("password2", "Neues-Passwort-2025")]),
        ("/_riegel/account/authenticators".into(), vec![("name", "X"), ("code", &code)]),
        ("/_riegel/account/authenticators/confirm".into(), vec![("code", &code)]),
        ("/_riegel/account/authenticators/1/remove".into(), vec![("code", &code)]),
        ("/_riegel/account/recovery-codes".into(), vec![("code", &code)]),
        (handle.clone(), vec![]),
        ("/_riegel/account/sessions/end-others".into(), vec![]),
    ];
    let before = r.user("gabi").expect("user");
    let origin = format!("http://{}", r.addr);
    for (path, fields) in &routes {
        let mut with_token = fields.clone();
        with_token.push(("csrf", &csrf));
        let body = form_encode(&with_token);
        let evil = c.request("POST", path, &[("Origin", "https://evil.example")], Some(&body));
        assert_eq!(evil.status, 403, "{path} from another origin");
        let cross = c.request("POST", path, &[("Sec-Fetch-Site", "cross-site"), ("Origin", &origin)], Some(&body));
        assert_eq!(cross.status, 403, "{path} cross-site");
        let no_token = c.request("POST", path, &[("Origin", &origin)], Some(&form_encode(fields)));
        assert_eq!(no_token.status, 403, "{path} without a token");
        let bad_token = c.request("POST", path, &[("Origin", &origin)], Some(&form_encode(&[fields.clone(), vec![("csrf", "x".repeat(40).as_str())]].concat())));
        assert_eq!(bad_token.status, 403, "{path} with a wrong token");
        assert!(!bad_token.session_cookie_set());
    }
    assert_eq!(r.user("gabi").expect("user"), before, "nothing changed");
    assert_eq!(other.get("/").status, 200, "no session ended");
    assert_eq!(c.get("/").status, 200);
    // Without a session, a valid token leads to the login, not to a change.
    let mut anon = r.client();
    let token = anon.get("/_riegel/login").input("csrf").expect("csrf");
    let r2 = anon.post("/_riegel/account/sessions/end-others", &[("csrf", &token)]);
    assert_eq!(r2.location(), "/_riegel/login?rd=%2F%5Friegel%2Faccount");
}

#[test]
fn second_factor_checks_on_the_account_pages_are_regulated() {
    let r = Riegel::start_with(Options { extra_yaml: "regulation: { max_failures: 5, delay_after: 10 }\n".into(), ..Options::default() });
    let (mut c, e) = enrolled(&r, "hugo");
    let csrf = c.get("/_riegel/account").input("csrf").expect("csrf");
    let barrier = Arc::new(Barrier::new(50));
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let mut c = c.clone();
            let (b, csrf) = (barrier.clone(), csrf.clone());
            std::thread::spawn(move || {
                let code = format!("{:06}", 100_000 + i);
                b.wait();
                let resp = c.post("/_riegel/account/recovery-codes", &[("code", &code), ("csrf", &csrf)]);
                (resp.status, resp.body.contains("Der Code ist nicht korrekt"))
            })
        })
        .collect();
    let results: Vec<(u16, bool)> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
    let evaluated = results.iter().filter(|(_, wrong)| *wrong).count();
    let refused = results.iter().filter(|(s, _)| *s == 429).count();
    assert!(evaluated <= 5, "{evaluated} of 50 wrong codes were checked: {results:?}");
    assert_eq!(evaluated + refused, 50, "{results:?}");
    // The same counters as the login: now even the right code is refused,
    // here and at the login's second step.
    let right = totp_code(&e.secret, r.now() + 30);
    r.clock.advance(30);
    let banned = account_post(&mut c, "/_riegel/account/recovery-codes", &[("code", &right)]);
    assert_eq!(banned.status, 429, "{}", banned.body);
    assert!(banned.body.contains("Zu viele fehlgeschlagene Versuche"));
    let mut d = r.client();
    assert_eq!(d.login("hugo", PW).status, 429, "the login shares the account's counter");
    // The current password is regulated the same way.
    let pw = account_post(&mut c, "/_riegel/account/password", &[("current_password", PW), ("password", "Neues-Passwort-2025"), ("password2", "Neues-Passwort-2025")]);
    assert_eq!(pw.status, 429);
}

/// The path of the new-device link in the newest such mail to `to`.
pub(crate) fn new_device_path(r: &Riegel, to: &str, n: usize) -> String {
    let mails = mails_to(r, to, n);
    let m = mails.iter().rev().find(|m| m.subject().contains("Neues Gerät einrichten")).expect("new-device mail");
    let text = m.plain();
    let start = text.find(&format!("{}/_riegel/new-device/", r.base)).unwrap_or_else(|| panic!("link in {text}"));
    let link: String = text[start..].chars().take_while(|c| !c.is_whitespace()).collect();
    link.strip_prefix(&r.base).expect("on base").to_string()
}

#[test]
fn a_lost_phone_needs_the_mailed_link_in_the_same_browser_once() {
    let r = Riegel::start_with(with_contact());
    let (mut c, first) = enrolled(&r, "ilse");
    let resp = r.admin(riegel::admin::AdminRequest::ResetTotp { user: "ilse".into() });
    assert!(resp.ok && resp.message.contains("mails a 'Neues Gerät einrichten' link to ilse@example.at"), "{}", resp.message);
    assert_eq!(c.get("/").status, 303, "reset-totp ended the session");
    // The password alone shows no QR code.
    r.clock.advance(30);
    let mut d = r.client();
    let login = d.login("ilse", PW);
    assert_eq!(login.location(), "/_riegel/new-device");
    let waiting = d.get("/_riegel/new-device");
    assert!(waiting.body.contains("i…@example.at") && waiting.body.contains("30 Minuten"), "{}", waiting.body);
    assert!(!waiting.body.contains("<svg class=\"qr\""));
    for p in ["/_riegel/setup", "/_riegel/setup/confirm", "/_riegel/verify"] {
        let resp = d.get(p);
        assert!(!resp.body.contains("<svg class=\"qr\""), "{p} shows a QR code");
        assert!(resp.status == 303, "{p}: {}", resp.status);
    }
    let csrf = waiting.input("csrf").expect("csrf");
    let confirm = d.post("/_riegel/setup/confirm", &[("code", "123456"), ("csrf", &csrf)]);
    assert_eq!(confirm.location(), "/_riegel/new-device");
    let link = new_device_path(&r, "ilse@example.at", 1);
    let mail = mail_with(&r, "ilse@example.at", "Neues Gerät einrichten");
    assert!(mail.plain().contains("30 Minuten gültig") && mail.plain().contains("Telefon: +43 1 234 56 78"));
    // Another browser, with or without a session of its own, gets nowhere.
    let elsewhere = r.client().get(&link);
    assert_eq!(elsewhere.status, 403);
    assert!(elsewhere.body.contains("nur in dem Browser"), "{}", elsewhere.body);
    // GET shows a button and consumes nothing (mail scanners prefetch).
    let shown = d.get(&link);
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(shown.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(d.get(&link).status, 200);
    let opened = d.submit(&link, &link, &[]);
    assert_eq!((opened.status, opened.location()), (303, "/_riegel/setup"), "{}", opened.body);
    // Only now the enrolment page.
    let setup = d.get("/_riegel/setup");
    let secret = secret_of_uri(&decode_qr_svg(&qr_svg_of(&setup.body)));
    assert_ne!(secret, first.secret);
    // Once: the link is used up.
    assert_eq!(d.get(&link).status, 410);
    let activated = d.submit("/_riegel/setup/confirm", "/_riegel/setup/confirm", &[("code", &totp_code(&secret, r.now()))]);
    assert!(activated.body.contains("Erfolgreich aktiviert"), "{}", activated.body);
    assert!(logs_in_with(&r, "ilse", &secret));
    assert!(!logs_in_with(&r, "ilse", &first.secret));
}

#[test]
fn a_new_device_link_dies_after_30_minutes_and_with_a_newer_one() {
    let r = Riegel::start();
    let (_, _) = enrolled(&r, "jana");
    r.admin(riegel::admin::AdminRequest::ResetTotp { user: "jana".into() });
    let mut d = r.client();
    d.login("jana", PW);
    let first = new_device_path(&r, "jana@example.at", 1);
    // A second login (another browser) mails a newer link: the first dies.
    let mut e = r.client();
    e.login("jana", PW);
    let second = new_device_path(&r, "jana@example.at", 2);
    assert_ne!(first, second);
    assert_eq!(d.get(&first).status, 410);
    assert_eq!(d.get(&second).status, 403, "the newer link belongs to the other browser");
    assert_eq!(e.get(&second).status, 200);
    // "Link erneut senden" in e: a third link, the second dies.
    let resent = e.submit("/_riegel/new-device", "/_riegel/new-device", &[]);
    assert!(resent.body.contains("Wir haben Ihnen einen neuen Link gesendet"), "{}", resent.body);
    let third = new_device_path(&r, "jana@example.at", 3);
    assert_eq!(e.get(&second).status, 410);
    // 30 minutes later the link (and the waiting session) are gone.
    r.clock.advance(30 * 60 + 1);
    assert_eq!(e.get(&third).status, 410);
    let consumed = e.submit("/_riegel/login", &third, &[]);
    assert_eq!(consumed.status, 410);
    assert!(r.user("jana").expect("user").authenticators.is_empty());
}

#[test]
fn without_an_address_the_user_is_asked_to_contact_the_operator_and_none_means_the_password_enrols() {
    let r = Riegel::start_with(with_contact());
    r.add_user("karl", None, Some(PW));
    let mut c = r.client();
    login_and_enrol(&r, &mut c, "karl", PW);
    r.admin(riegel::admin::AdminRequest::ResetTotp { user: "karl".into() });
    let mut d = r.client();
    assert_eq!(d.login("karl", PW).location(), "/_riegel/new-device");
    let page = d.get("/_riegel/new-device");
    assert!(page.body.contains("keine E-Mail-Adresse hinterlegt") && page.body.contains("tel:+4312345678"), "{}", page.body);
    assert!(page.input("csrf").is_none() || !page.body.contains("Link erneut senden"));

    let r = Riegel::start_with(Options { totp_yaml: "  reenrol_proof: none\n".into(), ..Options::default() });
    r.add_user("lena", Some("lena@example.at"), Some(PW));
    let mut c = r.client();
    login_and_enrol(&r, &mut c, "lena", PW);
    r.admin(riegel::admin::AdminRequest::ResetTotp { user: "lena".into() });
    r.clock.advance(30);
    let mut d = r.client();
    login_and_enrol(&r, &mut d, "lena", PW);
}

#[test]
fn languages_from_the_browser_the_switch_and_the_mails() {
    let r = Riegel::start_with(Options { branding_yaml: "  languages: [de, en]\n".into(), ..Options::default() });
    r.add_user("mara", Some("mara@example.at"), Some(PW));
    let mut en = r.client();
    en.extra.push(("Accept-Language".into(), "en-GB,en;q=0.9,de;q=0.5".into()));
    let page = en.get("/_riegel/login");
    assert!(page.body.contains("<html lang=\"en\">") && page.body.contains("Log in now!"), "{}", page.body);
    assert!(page.body.contains("hreflang=\"de\">Deutsch</a>"));
    let mut de = r.client();
    de.extra.push(("Accept-Language".into(), "de-AT,de;q=0.9,en;q=0.8".into()));
    assert!(de.get("/_riegel/login").body.contains("Jetzt anmelden!"));
    assert!(r.client().get("/_riegel/login").body.contains("Jetzt anmelden!"), "no header: the default");
    // The switch link: remembered in a cookie, back to the page.
    let switch = de.get("/_riegel/language/en?rd=%2F_riegel%2Fforgot");
    assert_eq!((switch.status, switch.location()), (303, "/_riegel/forgot"));
    assert!(switch.header("set-cookie").is_some_and(|c| c.starts_with("riegel_session_lang=en;")), "{:?}", switch.headers);
    let forgot = de.get("/_riegel/forgot");
    assert!(forgot.body.contains("<html lang=\"en\">"), "the cookie beats Accept-Language");
    // Hostile values change nothing.
    assert_eq!(de.get("/_riegel/language/fr?rd=%2F%2Fevil.example").location(), "/_riegel/login");
    assert!(de.get("/_riegel/login").body.contains("Log in now!"));
    // A mail goes out in the language of the page that caused it.
    let sent = de.submit("/_riegel/forgot", "/_riegel/forgot", &[("username", "mara")]);
    assert_eq!(sent.status, 200);
    let mail = mails_to(&r, "mara@example.at", 1).pop().expect("mail");
    assert!(mail.subject().contains("New password"), "{}", mail.subject());
    // One configured language: no switch, and Accept-Language is ignored.
    let one = Riegel::start();
    let mut c = one.client();
    c.extra.push(("Accept-Language".into(), "en".into()));
    let page = c.get("/_riegel/login");
    assert!(page.body.contains("Jetzt anmelden!") && !page.body.contains("lang-switch"));
}

#[test]
fn the_dead_ends_have_a_way_on() {
    let r = Riegel::start_with(Options {
        extra_yaml: "regulation: { max_failures: 2, delay_after: 10 }\n".into(),
        ..with_contact()
    });
    r.add_user("nora", Some("nora@example.at"), Some(PW));
    let mut c = r.client();
    // The name typed on the login page reaches the forgot form.
    let forgot = c.get("/_riegel/forgot?username=nora%40example.at");
    assert_eq!(forgot.input("username").as_deref(), Some("nora@example.at"));
    assert!(c.get("/_riegel/login").body.contains("/_riegel/static/login.js"));
    // A used or unknown reset link: "Neues Passwort anfordern" as the main button.
    let gone = c.get(&format!("/_riegel/reset/{}", "x".repeat(43)));
    assert_eq!(gone.status, 410);
    assert!(gone.body.contains("class=\"btn btn-primary\" href=\"/_riegel/forgot\">Neues Passwort anfordern<"), "{}", gone.body);
    assert!(!gone.body.contains("Fehler 410"));
    // The 404 page has no "Erneut versuchen".
    let missing = c.get("/_riegel/nichts");
    assert_eq!(missing.status, 404);
    assert!(!missing.body.contains("Erneut versuchen") && !missing.body.contains("Fehler 404"), "{}", missing.body);
    // The lockout says that a new password ends the lock, and how to reach the operator.
    c.login("nora", "falsch-falsch-1");
    c.login("nora", "falsch-falsch-2");
    let locked = c.login("nora", PW);
    assert_eq!(locked.status, 429);
    assert!(locked.body.contains("Über „Sie können nicht auf Ihr Konto zugreifen?“ können Sie ein neues Passwort anfordern"), "{}", locked.body);
    assert!(locked.body.contains("tel:+4312345678"));
    // ... and it does.
    c.submit("/_riegel/forgot", "/_riegel/forgot", &[("username", "nora")]);
    let mail = mails_to(&r, "nora@example.at", 1).pop().expect("reset mail");
    let text = mail.plain();
    let start = text.find("/_riegel/reset/").expect("link");
    let path: String = text[start..].chars().take_while(|c| !c.is_whitespace()).collect();
    let done = c.submit(&path, &path, &[("password", "Neues-Passwort-2025"), ("password2", "Neues-Passwort-2025")]);
    assert_eq!(done.status, 200);
    assert_eq!(c.login("nora", "Neues-Passwort-2025").status, 303, "the reset lifted the lock");
    // The recovery page shows the operator's contact too.
    let mut d = r.client();
    let e = login_and_enrol(&r, &mut d, "nora", "Neues-Passwort-2025");
    let _ = e;
    r.clock.advance(30);
    let mut f = r.client();
    f.login("nora", "Neues-Passwort-2025");
    assert!(f.get("/_riegel/recovery").body.contains("mailto:hausverwaltung@example.at"));
}
