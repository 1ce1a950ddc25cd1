//! The first factor: login by name or e-mail, neutral failures, the ban,
//! CSRF and origin checks, size limits, CSV import and the admin CLI.

use std::process::{Command, Stdio};
use std::io::Write;

use crate::harness::*;

#[test]
fn login_by_username_and_by_email_case_insensitive() {
    let r = Riegel::start();
    r.add_user("dora", Some("Dora@Example.at"), Some("Herbst-2024!"));
    let mut a = r.client();
    let resp = a.login("DORA", "Herbst-2024!");
    assert_eq!(resp.status, 303, "{}", resp.body);
    assert_eq!(resp.location(), "/_riegel/setup");
    let mut b = r.client();
    let resp = b.login("dora@example.AT", "Herbst-2024!");
    assert_eq!(resp.status, 303, "{}", resp.body);
    // New session id at login: no fixation.
    assert_ne!(a.session_cookie(), b.session_cookie());
    // Passwords are exact: no trimming, no case folding.
    for wrong in ["herbst-2024!", "Herbst-2024! ", " Herbst-2024!"] {
        assert_eq!(r.client().login("dora", wrong).status, 200, "{wrong:?} accepted");
    }
}

#[test]
fn wrong_password_and_unknown_user_give_identical_responses() {
    let r = Riegel::start();
    r.add_user("emil", Some("emil@example.at"), Some("Passwort-123"));
    r.add_user("frida", None, Some("Passwort-123"));
    r.admin(riegel::admin::AdminRequest::Disable { user: "frida".into() });
    let mut c = r.client();
    let page = c.get("/_riegel/login");
    let csrf = page.input("csrf").expect("csrf");
    let attempt = |c: &mut Client, user: &str| {
        let mut resp = c.post("/_riegel/login", &[("username", user), ("password", "falsch-falsch"), ("csrf", &csrf)]);
        resp.headers.retain(|(k, _)| !k.eq_ignore_ascii_case("date"));
        resp
    };
    let wrong = attempt(&mut c, "emil");
    let unknown = attempt(&mut c, "niemand");
    let disabled = c.post("/_riegel/login", &[("username", "frida"), ("password", "Passwort-123"), ("csrf", &csrf)]);
    assert_eq!(wrong.status, 200);
    assert_eq!(wrong.status, unknown.status);
    assert_eq!(wrong.headers, unknown.headers);
    assert_eq!(wrong.raw_body, unknown.raw_body, "wrong password and unknown user differ");
    // A disabled user with the right password sees the same page too.
    assert_eq!(disabled.status, 200);
    assert_eq!(disabled.raw_body, wrong.raw_body, "a disabled user sees a different page");
    // The typed name is not echoed back (that alone would tell the pages apart).
    assert!(!wrong.body.contains("emil") && !unknown.body.contains("niemand"));
}

#[test]
fn ban_engages_and_lifts_with_the_clock() {
    let r = Riegel::start_with(Options {
        extra_yaml: "regulation: { max_failures: 3, find_time: 10m, ban_time: 15m, delay_after: 10 }\n".into(),
        ..Options::default()
    });
    r.add_user("gustav", None, Some("Richtig-2024"));
    let mut c = r.client();
    for _ in 0..3 {
        assert_eq!(c.login("gustav", "falsch-12345").status, 200);
    }
    // Banned: even the right password is refused now, and the page says so.
    let banned = c.login("gustav", "Richtig-2024");
    assert_eq!(banned.status, 429, "{}", banned.body);
    // Unknown accounts are banned the same way (no enumeration by ban).
    let mut u = r.client();
    for _ in 0..3 {
        u.login("unbekannt", "falsch-12345");
    }
    assert_eq!(u.login("unbekannt", "falsch-12345").status, 429);
    // The counters are in the store: they survive a restart (checked in the store itself).
    assert!(r.counter(&riegel::store::CounterKey::Account(r.user("gustav").expect("u").id)).banned_until > r.now());
    r.clock.advance(14 * 60);
    assert_eq!(c.login("gustav", "Richtig-2024").status, 429);
    r.clock.advance(2 * 60);
    let ok = c.login("gustav", "Richtig-2024");
    assert_eq!(ok.status, 303, "{}", ok.body);
}

#[test]
fn operator_unban_lifts_the_ban() {
    let r = Riegel::start_with(Options { extra_yaml: "regulation: { max_failures: 2, delay_after: 10 }\n".into(), ..Options::default() });
    r.add_user("hanna", None, Some("Richtig-2024"));
    let mut c = r.client();
    c.login("hanna", "x-falsch-1");
    c.login("hanna", "x-falsch-2");
    assert_eq!(c.login("hanna", "Richtig-2024").status, 429);
    // Through the CLI while the server runs: the admin socket.
    let out = Command::new(env!("CARGO_BIN_EXE_riegel"))
        .args(["user", "unban", "hanna", "--config"])
        .arg(&r.config_path)
        .output()
        .expect("cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The address counter is separate and higher; the account is free again.
    assert_eq!(c.login("hanna", "Richtig-2024").status, 303);
}

#[test]
fn cross_site_posts_and_missing_tokens_are_refused() {
    let r = Riegel::start();
    r.add_user("ida", None, Some("Richtig-2024"));
    let mut c = r.client();
    let page = c.get("/_riegel/login");
    let csrf = page.input("csrf").expect("csrf");
    let body = form_encode(&[("username", "ida"), ("password", "Richtig-2024"), ("csrf", &csrf)]);
    let evil = c.request("POST", "/_riegel/login", &[("Origin", "https://evil.example")], Some(&body));
    assert_eq!(evil.status, 403);
    let cross = c.request("POST", "/_riegel/login", &[("Sec-Fetch-Site", "cross-site")], Some(&body));
    assert_eq!(cross.status, 403);
    let no_token = c.request("POST", "/_riegel/login", &[], Some(&form_encode(&[("username", "ida"), ("password", "Richtig-2024")])));
    assert_eq!(no_token.status, 403);
    assert!(c.session_cookie().is_none());
    // Without Origin headers (old clients) the token alone is enough.
    let plain = c.request("POST", "/_riegel/login", &[], Some(&body));
    assert_eq!(plain.status, 303);
}

#[test]
fn oversized_passwords_get_413_without_hashing() {
    let r = Riegel::start();
    let mut c = r.client();
    let page = c.get("/_riegel/login");
    let csrf = page.input("csrf").expect("csrf");
    let huge = "a".repeat(1024 * 1024);
    let resp = c.post("/_riegel/login", &[("username", "x"), ("password", &huge), ("csrf", &csrf)]);
    assert_eq!(resp.status, 413);
    // Just over the limit but inside the form size: refused before argon2 too.
    let over = "b".repeat(1025);
    let resp = c.post("/_riegel/login", &[("username", "x"), ("password", &over), ("csrf", &csrf)]);
    assert_eq!(resp.status, 413);
}

#[test]
fn rd_is_carried_through_the_whole_login() {
    let r = Riegel::start();
    r.add_user("jan", None, Some("Richtig-2024"));
    let mut c = r.client();
    let first = c.get("/mieter/abrechnung?jahr=2024");
    let login_url = first.location().to_string();
    let page = c.get(&login_url);
    let csrf = page.input("csrf").expect("csrf");
    let resp = c.post(&login_url, &[("username", "jan"), ("password", "Richtig-2024"), ("csrf", &csrf)]);
    assert_eq!(resp.status, 303);
    let setup = c.get("/_riegel/setup");
    let secret = secret_of_uri(&decode_qr_svg(&qr_svg_of(&setup.body)));
    let code = totp_code(&secret, r.now());
    let done = c.submit("/_riegel/setup/confirm", "/_riegel/setup/confirm", &[("code", &code)]);
    assert!(done.body.contains("/mieter/abrechnung?jahr=2024"), "continue link missing: {}", done.body);
}

#[test]
fn csv_import_with_argon2_and_bcrypt_hashes_keeps_passwords_and_upgrades_bcrypt() {
    let r = Riegel::start();
    let argon = r.services.hasher.hash("Argon-Passwort-1", &riegel::auth::OsRandom).expect("hash");
    let bcrypt = bcrypt::hash("Bcrypt-Passwort-1", 4).expect("bcrypt");
    let dir = tempdir("import");
    let csv = dir.join("users.csv");
    std::fs::write(
        &csv,
        format!("username,email,display_name,password_hash\nkarl,karl@example.at,Karl Kurz,{argon}\nlena,lena@example.at,\"Lena, L.\",{bcrypt}\nmax,max@example.at,Max Ohne,\n"),
    )
    .expect("csv");
    // Through the CLI, while the server holds the store: the admin socket.
    let out = Command::new(env!("CARGO_BIN_EXE_riegel"))
        .args(["user", "import"])
        .arg(&csv)
        .arg("--config")
        .arg(&r.config_path)
        .output()
        .expect("cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 3 users"));
    assert_eq!(r.client().login("karl", "Argon-Passwort-1").status, 303);
    assert_eq!(r.client().login("lena@example.at", "Bcrypt-Passwort-1").status, 303);
    let lena = r.user("lena").expect("user");
    assert!(lena.password_hash.as_deref().unwrap_or("").starts_with("$argon2id$"), "bcrypt hash not upgraded");
    assert_eq!(r.client().login("lena", "Bcrypt-Passwort-1").status, 303, "upgraded hash must still verify");
    // A user without a hash cannot log in (sets a password through reset).
    assert_eq!(r.client().login("max", "").status, 200);

    // Bad rows: reported with their line numbers, nothing imported.
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "nina,nina@example.at,Nina\nbad@name,o@example.at,O\npaul,kein-mail,Paul\n").expect("csv");
    let out = Command::new(env!("CARGO_BIN_EXE_riegel")).args(["user", "import"]).arg(&bad).arg("--config").arg(&r.config_path).output().expect("cli");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("line 3"), "{err}");
    assert!(r.user("nina").is_none(), "half-imported");
}

#[test]
fn cli_user_commands_work_while_serving() {
    let r = Riegel::start();
    let cli = |args: &[&str], stdin: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_riegel"));
        cmd.args(args).arg("--config").arg(&r.config_path).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        if let Some(s) = stdin {
            child.stdin.take().expect("stdin").write_all(s.as_bytes()).expect("write");
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("wait");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (ok, out) = cli(&["user", "add", "olga", "--email", "olga@example.at", "--name", "Olga Ö"], Some("Neues-Passwort-1\n"));
    assert!(ok, "{out}");
    assert_eq!(r.client().login("olga", "Neues-Passwort-1").status, 303);
    let (ok, out) = cli(&["user", "list"], None);
    assert!(ok && out.contains("olga\tolga@example.at\tOlga Ö"), "{out}");
    let (ok, out) = cli(&["user", "set-password", "olga"], Some("Anderes-Passwort-2\n"));
    assert!(ok, "{out}");
    assert_eq!(r.client().login("olga", "Neues-Passwort-1").status, 200);
    assert_eq!(r.client().login("olga", "Anderes-Passwort-2").status, 303);
    let (ok, out) = cli(&["user", "disable", "olga"], None);
    assert!(ok, "{out}");
    assert_eq!(r.client().login("olga", "Anderes-Passwort-2").status, 200);
    let (ok, _) = cli(&["user", "enable", "olga"], None);
    assert!(ok);
    let (ok, out) = cli(&["user", "set-email", "olga", "o2@example.at"], None);
    assert!(ok, "{out}");
    assert_eq!(r.client().login("o2@example.at", "Anderes-Passwort-2").status, 303);
    let (ok, out) = cli(&["user", "show", "olga"], None);
    assert!(ok && out.contains("o2@example.at"), "{out}");
    let (ok, out) = cli(&["user", "delete", "olga"], None);
    assert!(ok, "{out}");
    assert_eq!(r.client().login("olga", "Anderes-Passwort-2").status, 200);
    let (ok, out) = cli(&["user", "show", "olga"], None);
    assert!(!ok && out.contains("no such user"), "{out}");
    // hash-password: the hash of what comes on stdin, usable for import.
    let mut child = Command::new(env!("CARGO_BIN_EXE_riegel"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().expect("stdin").write_all(b"Ein-Passwort-9\n").expect("write");
    let out = child.wait_with_output().expect("wait");
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
    assert_eq!(r.services.hasher.verify(&hash, "Ein-Passwort-9"), Ok(riegel::auth::password::Verified::Right { upgrade: false }));
    // The socket is private to the service account.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(r.dir.join("data").join("admin.sock")).expect("socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}
