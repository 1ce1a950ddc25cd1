//! "Sie können nicht auf Ihr Konto zugreifen?": the reset mail over real
//! SMTP, the link, single use, expiry, neutrality.

use std::time::{Duration, Instant};

use crate::harness::*;

fn link_of(mail: &ReceivedMail) -> String {
    let text = mail.text();
    let start = text.find("http://").unwrap_or_else(|| panic!("link in mail:\n{}\n---raw---\n{}", text, mail.data));
    text[start..].split(|c: char| c.is_whitespace() || c == '"' || c == '<').next().expect("link").to_string()
}

/// Waits for the next reset mail to `to` after the first `seen` mails, and
/// returns its link's path.
fn next_reset_path(r: &Riegel, to: &str, seen: &mut usize) -> String {
    let start = Instant::now();
    loop {
        let mails = r.smtp.mails.lock().expect("lock").clone();
        if let Some((i, m)) = mails.iter().enumerate().skip(*seen).find(|(_, m)| m.to == vec![to.to_string()] && m.text().contains("/_riegel/reset/")) {
            *seen = i + 1;
            return path_of(&link_of(m), r);
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no reset mail to {to}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn path_of(link: &str, r: &Riegel) -> String {
    link.strip_prefix(&r.base).unwrap_or_else(|| panic!("link {link} is not on {}", r.base)).to_string()
}

fn forgot(c: &mut Client, who: &str) -> Resp {
    c.submit("/_riegel/forgot", "/_riegel/forgot", &[("username", who)])
}

#[test]
fn reset_journey_link_works_once_and_totp_still_follows() {
    let r = Riegel::start();
    r.add_user("anna", Some("anna@example.at"), Some("Altes-Passwort-1"));
    let mut c = r.client();
    let enrolled = login_and_enrol(&r, &mut c, "anna", "Altes-Passwort-1");

    let mut u = r.client();
    // A hostile Host header does not change the link.
    u.extra.push(("X-Forwarded-Host".into(), "evil.example".into()));
    let page = u.get("/_riegel/forgot");
    let csrf = page.input("csrf").expect("csrf");
    let body = form_encode(&[("username", "anna@example.at"), ("csrf", &csrf)]);
    let raw = format!(
        "POST /_riegel/forgot HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\nCookie: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        u.jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "),
        body.len()
    );
    let sent = raw_request(r.addr, raw.as_bytes());
    assert_eq!(sent.status, 200, "{}", sent.body);
    let mails = r.smtp.wait_for(1, Duration::from_secs(10));
    assert_eq!(mails.len(), 1, "no reset mail");
    assert_eq!(mails[0].to, vec!["anna@example.at"]);
    let link = link_of(&mails[0]);
    assert!(link.starts_with(&format!("{}/_riegel/reset/", r.base)), "{link}");
    assert!(!link.contains("evil"), "{link}");
    let path = path_of(&link, &r);

    // GET twice (mail scanners) does not consume the token.
    for _ in 0..2 {
        let g = u.get(&path);
        assert_eq!(g.status, 200, "{}", g.body);
        assert_eq!(g.header("referrer-policy"), Some("no-referrer"));
    }
    // Policy: too short, mismatch, equal to the name -> message, nothing changes.
    for (a, b) in [("kurz", "kurz"), ("Lang-genug-123", "Lang-genug-124"), ("anna@example.at", "anna@example.at")] {
        let resp = u.submit(&path, &path, &[("password", a), ("password2", b)]);
        assert_eq!(resp.status, 200);
        assert!(resp.input("csrf").is_some(), "form shown again");
    }
    let done = u.submit(&path, &path, &[("password", "Neues-Passwort-2"), ("password2", "Neues-Passwort-2")]);
    assert_eq!(done.status, 200, "{}", done.body);
    // Reuse is refused.
    assert_eq!(u.get(&path).status, 410);
    let again = u.post(&path, &[("password", "Drittes-Passwort-3"), ("password2", "Drittes-Passwort-3"), ("csrf", &csrf)]);
    assert_eq!(again.status, 410);

    // All sessions ended; the old password fails, the new one works, then TOTP.
    assert_eq!(c.get("/").status, 303, "session survived the reset");
    assert_eq!(r.client().login("anna", "Altes-Passwort-1").status, 200);
    let mut n = r.client();
    let full = login_full(&r, &mut n, "anna", "Neues-Passwort-2", &enrolled.secret);
    assert_eq!(full.status, 303);
    assert_eq!(n.get("/").echoed("remote-user"), vec!["anna"]);
    // A notice about the change was mailed.
    let mails = r.smtp.wait_for(2, Duration::from_secs(10));
    assert_eq!(mails.len(), 2, "no password-changed notice");
}

#[test]
fn expired_cancelled_and_foreign_tokens_are_refused() {
    let r = Riegel::start();
    r.add_user("bert", Some("bert@example.at"), Some("Altes-Passwort-1"));
    r.add_user("cora", Some("cora@example.at"), Some("Cora-Passwort-1"));
    let mut c = r.client();
    let mut seen = 0;
    forgot(&mut c, "bert");
    let first = next_reset_path(&r, "bert@example.at", &mut seen);
    // A newer token cancels the older one.
    forgot(&mut c, "bert");
    let second = next_reset_path(&r, "bert@example.at", &mut seen);
    assert_ne!(first, second);
    assert_eq!(c.get(&first).status, 410);
    assert_eq!(c.get(&second).status, 200);
    // Bert's token changes only Bert's password, never Cora's.
    let done = c.submit(&second, &second, &[("password", "Bert-Neu-12345"), ("password2", "Bert-Neu-12345")]);
    assert_eq!(done.status, 200);
    assert_eq!(r.client().login("cora", "Cora-Passwort-1").status, 303);
    assert_eq!(r.client().login("cora", "Bert-Neu-12345").status, 200);
    // Expiry with the clock: 30 minutes by default.
    forgot(&mut c, "cora");
    let cora = next_reset_path(&r, "cora@example.at", &mut 0);
    assert_eq!(c.get(&cora).status, 200);
    r.clock.advance(31 * 60);
    assert_eq!(c.get(&cora).status, 410);
    // Garbage tokens.
    assert_eq!(c.get("/_riegel/reset/abc").status, 410);
    assert_eq!(c.get(&format!("/_riegel/reset/{}", "A".repeat(43))).status, 410);
}

#[test]
fn forgot_answers_are_identical_for_existing_unknown_and_smtp_down() {
    let r = Riegel::start();
    r.add_user("dora", Some("dora@example.at"), Some("Passwort-123"));
    r.add_user("emil", None, Some("Passwort-123"));
    let mut c = r.client();
    let normalise = |mut resp: Resp| {
        resp.headers.retain(|(k, _)| !k.eq_ignore_ascii_case("date"));
        resp
    };
    let t = Instant::now();
    let existing = normalise(forgot(&mut c, "dora"));
    let unknown = normalise(forgot(&mut c, "niemand@example.at"));
    let no_mail = normalise(forgot(&mut c, "emil"));
    assert_eq!(existing.status, 200);
    assert_eq!((existing.status, &existing.headers, &existing.raw_body), (unknown.status, &unknown.headers, &unknown.raw_body));
    assert_eq!(existing.raw_body, no_mail.raw_body);
    r.smtp.wait_for(1, Duration::from_secs(10));
    // SMTP down: same page, normal time, and riegel keeps serving.
    r.smtp.stop();
    let t2 = Instant::now();
    let down = normalise(forgot(&mut c, "dora"));
    assert!(t2.elapsed() < Duration::from_secs(8), "forgot took {:?} with SMTP down", t2.elapsed());
    assert_eq!(down.raw_body, existing.raw_body);
    assert_eq!(down.headers, existing.headers);
    assert_eq!(c.get("/_riegel/healthz").status, 200);
    let _ = t;
    // Only one mail was ever sent: to dora, while SMTP was up.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(r.smtp.mails.lock().expect("lock").len(), 1);
}
