//! The customer guide's journey over real HTTP, as a phone would do it: the
//! QR code decoded from the page, codes from oathtool.

use std::sync::{Arc, Barrier};

use crate::harness::*;

#[test]
fn the_whole_guide_enrol_activate_portal_logout_login_again() {
    let r = Riegel::start();
    r.add_user("anna", Some("anna@example.at"), Some("Sommer-2024!"));
    let mut c = r.client();

    // 1.1: the portal without a session -> login.
    let first = c.get("/mieter/start");
    assert_eq!(first.status, 303);
    let login_url = first.location().to_string();
    let login = c.get(&login_url);
    assert_eq!(login.status, 200);
    let csrf = login.input("csrf").expect("csrf");
    let resp = c.post(&login_url, &[("username", "anna"), ("password", "Sommer-2024!"), ("csrf", &csrf)]);
    assert_eq!(resp.location(), "/_riegel/setup");
    // A password-only session does not reach the portal.
    assert_eq!(c.get("/mieter/start").status, 303);

    // 1.1.1: the enrolment page with QR code and manual key.
    let setup = c.get("/_riegel/setup");
    assert_eq!(setup.status, 200);
    let svg = qr_svg_of(&setup.body);
    let uri = decode_qr_svg(&svg);
    assert!(uri.starts_with("otpauth://totp/IMMO%20PRO:anna?secret="), "{uri}");
    assert!(uri.ends_with("&issuer=IMMO%20PRO&algorithm=SHA1&digits=6&period=30"), "{uri}");
    if let Some(z) = decode_qr_zbar(&svg, &r.dir) {
        assert_eq!(z, uri, "zbarimg reads a different code");
    }
    let secret = secret_of_uri(&uri);
    assert_eq!(secret.len(), 32, "20-byte secret");
    let grouped: String = secret.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).expect("ascii")).collect::<Vec<_>>().join(" ");
    assert!(setup.body.contains(&grouped), "manual key (grouped in fours) missing");
    // Reloading shows the same secret until it is confirmed.
    let again = c.get("/_riegel/setup");
    assert_eq!(secret_of_uri(&decode_qr_svg(&qr_svg_of(&again.body))), secret);

    // "Zwei-Faktor-Authentifizierung aktivieren" -> "Bestätigungscode eingeben".
    let confirm = c.get("/_riegel/setup/confirm");
    assert_eq!(confirm.status, 200);
    // A wrong code first.
    let wrong = c.post("/_riegel/setup/confirm", &[("code", "000000"), ("csrf", &confirm.input("csrf").expect("csrf"))]);
    assert_eq!(wrong.status, 200);
    assert!(c.get("/mieter/start").status == 303);
    let code = totp_code(&secret, r.now());
    let activated = c.post("/_riegel/setup/confirm", &[("code", &code), ("csrf", &confirm.input("csrf").expect("csrf"))]);
    assert_eq!(activated.status, 200, "{}", activated.body);
    assert!(activated.body.contains("Erfolgreich aktiviert"), "{}", activated.body);
    assert!(activated.body.contains("/mieter/start"), "continue goes to the page first asked for");
    let recovery = recovery_codes_of(&activated.body);
    assert_eq!(recovery.len(), 10, "ten recovery codes: {recovery:?}");

    // The portal, with the identity.
    let portal = c.get("/mieter/start");
    assert_eq!(portal.status, 200);
    assert_eq!(portal.echoed("remote-user"), vec!["anna"]);

    // The code that confirmed enrolment cannot be used to log in.
    let mut d = r.client();
    assert_eq!(d.login("anna", "Sommer-2024!").location(), "/_riegel/verify");
    let replay = d.submit("/_riegel/verify", "/_riegel/verify", &[("code", &code)]);
    assert_eq!(replay.status, 200, "enrolment code accepted again");
    assert_eq!(d.get("/").status, 303);

    // Logout, then 2.1: password + a fresh code every time.
    let out = c.submit("/_riegel/logout", "/_riegel/logout", &[]);
    assert_eq!(out.status, 200);
    assert_eq!(c.get("/mieter/start").status, 303);
    let ok = login_full(&r, &mut c, "anna", "Sommer-2024!", &secret);
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert_eq!(ok.location(), "/");
    assert_eq!(c.get("/").echoed("remote-user"), vec!["anna"]);

    // A reused code is refused.
    let used = totp_code(&secret, r.now());
    let mut e = r.client();
    e.login("anna", "Sommer-2024!");
    let resp = e.submit("/_riegel/verify", "/_riegel/verify", &[("code", &used)]);
    assert_eq!(resp.status, 200);
    assert_eq!(e.get("/").status, 303);

    // "Code nicht zur Hand?": a recovery code works once, and a notice is mailed.
    let rec = e.submit("/_riegel/recovery", "/_riegel/recovery", &[("code", &recovery[0])]);
    // The page after it offers "Neues Gerät einrichten" at once (tests/it/account.rs).
    assert_eq!(rec.status, 200, "{}", rec.body);
    assert!(rec.body.contains("Mit Wiederherstellungscode angemeldet") && rec.session_cookie_set(), "{}", rec.body);
    assert_eq!(e.get("/").status, 200);
    let mut f = r.client();
    f.login("anna", "Sommer-2024!");
    let twice = f.submit("/_riegel/recovery", "/_riegel/recovery", &[("code", &recovery[0])]);
    assert_eq!(twice.status, 200, "recovery code accepted twice");
    let mails = r.smtp.wait_for(1, std::time::Duration::from_secs(10));
    assert_eq!(mails.len(), 1, "recovery notice not mailed");
    assert_eq!(mails[0].to, vec!["anna@example.at"]);
    // Never the secret or codes in the mail.
    assert!(!mails[0].text().contains(&recovery[0]));
}

#[test]
fn fifty_concurrent_submissions_of_one_code_give_exactly_one_success() {
    let r = Riegel::start();
    r.add_user("bernd", None, Some("Sommer-2024!"));
    let mut c = r.client();
    let enrolled = login_and_enrol(&r, &mut c, "bernd", "Sommer-2024!");
    r.clock.advance(30);
    let mut p = r.client();
    assert_eq!(p.login("bernd", "Sommer-2024!").location(), "/_riegel/verify");
    let page = p.get("/_riegel/verify");
    let csrf = page.input("csrf").expect("csrf");
    let code = totp_code(&enrolled.secret, r.now());
    let barrier = Arc::new(Barrier::new(50));
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let mut c = p.clone();
            let (b, csrf, code) = (barrier.clone(), csrf.clone(), code.clone());
            std::thread::spawn(move || {
                b.wait();
                let resp = c.post("/_riegel/verify", &[("code", &code), ("csrf", &csrf)]);
                // Success is the redirect to the portal with a new session;
                // a lost race is a refused code or "log in again".
                (resp.status, resp.location().to_string(), resp.session_cookie_set())
            })
        })
        .collect();
    let statuses: Vec<(u16, String, bool)> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
    let successes = statuses.iter().filter(|(s, loc, cookie)| *s == 303 && loc == "/" && *cookie).count();
    assert_eq!(successes, 1, "statuses: {statuses:?}");
}

#[test]
fn reset_totp_ends_sessions_and_the_password_alone_enrols_no_more() {
    let r = Riegel::start();
    r.add_user("clara", None, Some("Sommer-2024!"));
    let mut c = r.client();
    login_and_enrol(&r, &mut c, "clara", "Sommer-2024!");
    assert_eq!(c.get("/").status, 200);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_riegel"))
        .args(["user", "reset-totp", "clara", "--config"])
        .arg(&r.config_path)
        .output()
        .expect("cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no e-mail address"), "{}", String::from_utf8_lossy(&out.stdout));
    // On PostgreSQL the CLI changes the database and the server's session
    // cache hears of it through NOTIFY, usually within milliseconds (the
    // bound is loose: only a missed notification crosses it).
    let start = std::time::Instant::now();
    while c.get("/").status != 303 {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "session survived reset-totp");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // A lost phone (tests/it/account.rs has the whole path): clara has no
    // e-mail address, so she is asked to contact the operator, and no QR
    // code is shown for the password alone.
    let mut d = r.client();
    r.clock.advance(30);
    assert_eq!(d.login("clara", "Sommer-2024!").location(), "/_riegel/new-device");
    let page = d.get("/_riegel/new-device");
    assert!(page.body.contains("keine E-Mail-Adresse hinterlegt"), "{}", page.body);
    let setup = d.get("/_riegel/setup");
    assert_eq!((setup.status, setup.location()), (303, "/_riegel/new-device"));
    assert!(!d.get("/_riegel/setup/confirm").body.contains("<svg class=\"qr\""));
}

#[test]
fn abandoned_enrolment_never_locks_anyone_out() {
    let r = Riegel::start();
    r.add_user("dana", None, Some("Sommer-2024!"));
    let mut c = r.client();
    c.login("dana", "Sommer-2024!");
    let setup = c.get("/_riegel/setup");
    let s1 = secret_of_uri(&decode_qr_svg(&qr_svg_of(&setup.body)));
    // The user walks away; an hour later the enrolment expired: a new QR code.
    r.clock.advance(2 * 3600);
    let mut d = r.client();
    assert_eq!(d.login("dana", "Sommer-2024!").location(), "/_riegel/setup");
    let s2 = secret_of_uri(&decode_qr_svg(&qr_svg_of(&d.get("/_riegel/setup").body)));
    assert_ne!(s1, s2);
    let code = totp_code(&s2, r.now());
    let done = d.submit("/_riegel/setup/confirm", "/_riegel/setup/confirm", &[("code", &code)]);
    assert_eq!(done.status, 200);
    assert_eq!(d.get("/").status, 200);
}

#[test]
fn secrets_are_encrypted_at_rest_and_bound_to_the_user() {
    let r = Riegel::start();
    r.add_user("emma", None, Some("Sommer-2024!"));
    r.add_user("fritz", None, Some("Sommer-2024!"));
    let mut c = r.client();
    let e = login_and_enrol(&r, &mut c, "emma", "Sommer-2024!");
    let emma = r.user("emma").expect("u");
    let sealed = emma.authenticators.first().cloned().expect("sealed");
    let raw = data_encoding::BASE32_NOPAD.decode(e.secret.as_bytes()).expect("b32");
    assert!(!sealed.sealed.windows(raw.len()).any(|w| w == raw.as_slice()), "secret stored in clear");
    let json = serde_json::to_string(&emma).expect("json");
    assert!(!json.contains(&e.secret));
    // Copying emma's sealed secret onto fritz does not give fritz a working authenticator.
    let fritz = r.user("fritz").expect("u");
    assert!(r.services.secret_box.open(&sealed.sealed, format!("riegel-totp:{}", fritz.id).as_bytes()).is_err());
    // Recovery codes are stored hashed.
    assert!(emma.recovery_codes.iter().all(|h| h.len() == 64 && !e.recovery_codes.contains(h)));
}
