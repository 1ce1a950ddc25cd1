//! The audit log (`log.audit_file`): one JSON line per security event, over
//! a whole journey, and never a secret in it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::harness::*;

fn audit_yaml() -> String {
    // No delays: the ban below takes five wrong passwords in a row.
    "log:\n  audit_file: audit.jsonl\nregulation:\n  delay_after: 50\n".to_string()
}

/// Every line of the audit log, parsed; a line that is not one JSON object
/// fails the test.
fn lines(r: &Riegel) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(r.dir.join("audit.jsonl")).expect("audit file");
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v.is_object(), "{l}");
            v
        })
        .collect()
}

fn find<'a>(all: &'a [serde_json::Value], event: &str, pred: impl Fn(&serde_json::Value) -> bool) -> &'a serde_json::Value {
    all.iter()
        .find(|v| v["event"] == event && pred(v))
        .unwrap_or_else(|| panic!("no {event} line matching; the log:\n{}", all.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("\n")))
}

fn link_path(r: &Riegel, mail: &ReceivedMail) -> String {
    let text = mail.text();
    let start = text.find(&format!("{}/_riegel/reset/", r.base)).unwrap_or_else(|| panic!("no reset link in\n{text}"));
    let link = text[start..].split(|c: char| c.is_whitespace() || c == '"' || c == '<').next().expect("link");
    link.strip_prefix(&r.base).expect("on base").to_string()
}

/// Every cookie value the client holds now.
fn cookie_values(c: &Client, into: &mut BTreeSet<String>) {
    into.extend(c.jar.values().filter(|v| v.len() >= 8).cloned());
}

#[test]
fn a_journey_writes_one_json_line_per_event_and_never_a_secret() {
    let r = Riegel::start_with(Options { extra_yaml: audit_yaml(), ..Options::default() });
    let mut secrets: BTreeSet<String> = BTreeSet::new();
    let (pw, pw2, wrong) = ("Anna-Sommer-2024", "Anna-Winter-2025", "Falsch-Passwort-9");
    secrets.extend([pw, pw2, wrong].map(String::from));
    r.add_user("anna", Some("anna@example.at"), Some(pw));
    r.add_user("bert", Some("bert@example.at"), Some("Bert-Passwort-1"));
    secrets.insert("Bert-Passwort-1".into());
    let ua = "Mozilla/5.0 (Audit-Test; rv:1) Gecko/20100101";

    // A failed login of an existing account, and one of a name no account
    // has (it could be a password typed into the wrong field).
    let mut c = r.client();
    c.extra.push(("User-Agent".into(), ua.into()));
    assert_eq!(c.login("anna", wrong).status, 200);
    let unknown_name = "Geheim-Tippfehler-77";
    secrets.insert(unknown_name.into());
    assert_eq!(c.login(unknown_name, wrong).status, 200);

    // Login, enrolment, verification of a later login with a wrong code first.
    let enrolled = login_and_enrol(&r, &mut c, "anna", pw);
    cookie_values(&c, &mut secrets);
    secrets.insert(enrolled.secret.clone());
    secrets.extend(enrolled.recovery_codes.iter().cloned());
    let mut d = r.client();
    r.clock.advance(30);
    assert_eq!(d.login("anna", pw).location(), "/_riegel/verify");
    let good = totp_code(&enrolled.secret, r.now());
    let bad = if good == "000000" { "111111" } else { "000000" };
    secrets.insert(good.clone());
    assert_eq!(d.submit("/_riegel/verify", "/_riegel/verify", &[("code", bad)]).status, 200);
    assert_eq!(d.submit("/_riegel/verify", "/_riegel/verify", &[("code", &good)]).status, 303);
    cookie_values(&d, &mut secrets);

    // A recovery code instead of the app.
    let mut e = r.client();
    r.clock.advance(30);
    assert_eq!(e.login("anna", pw).location(), "/_riegel/verify");
    let rec = e.submit("/_riegel/recovery", "/_riegel/recovery", &[("code", &enrolled.recovery_codes[0])]);
    // A page that says so (and offers new codes), with a full session.
    assert_eq!(rec.status, 200, "{}", rec.body);
    assert_eq!(e.get("/").echoed("remote-user"), vec!["anna"]);
    cookie_values(&e, &mut secrets);
    // Logout.
    let out = e.submit("/_riegel/logout", "/_riegel/logout", &[]);
    assert_eq!(out.status, 200);

    // A reset: request, link, new password.
    let mut f = r.client();
    assert_eq!(f.submit("/_riegel/forgot", "/_riegel/forgot", &[("username", "anna")]).status, 200);
    let start = Instant::now();
    let mail = loop {
        let mails = r.smtp.mails.lock().expect("lock").clone();
        if let Some(m) = mails.into_iter().find(|m| m.text().contains("/_riegel/reset/")) {
            break m;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no reset mail");
        std::thread::sleep(Duration::from_millis(20));
    };
    let path = link_path(&r, &mail);
    secrets.insert(path.trim_start_matches("/_riegel/reset/").to_string());
    let done = f.submit(&path, &path, &[("password", pw2), ("password2", pw2)]);
    assert_eq!(done.status, 200, "{}", done.body);
    cookie_values(&f, &mut secrets);

    // Five wrong passwords ban bert; the sixth attempt is refused; an
    // operator lifts the ban.
    let mut g = r.client();
    for _ in 0..5 {
        assert_eq!(g.login("bert", wrong).status, 200);
    }
    assert_eq!(g.login("bert", "Bert-Passwort-1").status, 429);
    cookie_values(&g, &mut secrets);
    let unban = r.admin(riegel::admin::AdminRequest::Unban { user: "bert".into() });
    assert!(unban.ok, "{}", unban.message);
    assert_eq!(g.login("bert", "Bert-Passwort-1").status, 303);

    let all = lines(&r);
    // The fixed fields of every line.
    for v in &all {
        let time = v["time"].as_str().unwrap_or_else(|| panic!("no time: {v}"));
        assert!(time.parse::<jiff::Timestamp>().is_ok() && time.ends_with('Z'), "time is RFC 3339 UTC: {v}");
        assert!(v["event"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        if v["event"] != "admin" {
            assert_eq!(v["client"], "127.0.0.1", "{v}");
        }
    }
    let failed = find(&all, "login", |v| v["stage"] == "password" && v["result"] == "failure" && v["user"] == "anna");
    assert_eq!(failed["user_agent"], ua);
    // The unknown name is not written: a failure without a user.
    find(&all, "login", |v| v["stage"] == "password" && v["result"] == "failure" && v.get("user").is_none());
    find(&all, "login", |v| v["stage"] == "password" && v["result"] == "success" && v["user"] == "anna");
    find(&all, "enrolment_started", |v| v["user"] == "anna");
    find(&all, "enrolment", |v| v["result"] == "success" && v["user"] == "anna");
    find(&all, "login", |v| v["stage"] == "second_factor" && v["result"] == "failure" && v["user"] == "anna");
    find(&all, "login", |v| v["stage"] == "second_factor" && v["result"] == "success" && v["user"] == "anna");
    let used = find(&all, "login", |v| v["stage"] == "recovery_code" && v["result"] == "success");
    assert_eq!(used["remaining"], 9);
    find(&all, "logout", |v| v["user"] == "anna");
    find(&all, "reset_requested", |v| v["result"] == "mail_queued" && v["user"] == "anna");
    find(&all, "reset_completed", |v| v["user"] == "anna" && v["sessions_ended"].is_number());
    let ban = find(&all, "ban", |v| v["scope"] == "account");
    assert_eq!(ban["user"], "bert");
    assert!(ban["until"].as_str().is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()), "{ban}");
    find(&all, "login", |v| v["stage"] == "password" && v["result"] == "banned" && v["user"] == "bert");
    let admin = find(&all, "admin", |v| v["command"] == "unban");
    assert_eq!((admin["user"].as_str(), admin["result"].as_str()), (Some("bert"), Some("success")));

    // No secret anywhere in the file: passwords, the TOTP key and codes,
    // recovery codes, the reset token, cookie values, CSRF tokens.
    let text = std::fs::read_to_string(r.dir.join("audit.jsonl")).expect("audit file");
    secrets.retain(|s| !s.is_empty());
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "a secret ({} bytes) is in the audit log", s.len());
    }
    // Nor the codes without their dash, nor the name typed for no account.
    for code in &enrolled.recovery_codes {
        assert!(!text.contains(&code.replace('-', "")), "recovery code in the audit log");
    }
    assert!(!text.contains(unknown_name));
}

#[test]
fn the_audit_file_is_created_0600_and_appended_by_the_command_line_too() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir("audit-serve");
    let portal = riegel::demo::start_portal("127.0.0.1:0".parse().expect("addr")).expect("portal");
    let serve = ServeProcess::start(&dir, portal, "log:\n  audit_file: audit.jsonl\n");
    let file = dir.join("audit.jsonl");
    // `riegel user add` while the server runs: the server executes it over
    // the admin socket and writes the line.
    let out = serve.cli(&["user", "add", "cleo"], Some("Cleo-Passwort-12\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut c = Client::new(serve.addr);
    assert_eq!(c.login("cleo", "Falsch-aber-lang-1").status, 200);
    let mode = std::fs::metadata(&file).expect("audit file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    serve.stop();
    // With the server stopped the command opens the store itself and
    // appends its own line.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_riegel"))
        .args(["user", "disable", "cleo", "--config"])
        .arg(dir.join("riegel.yaml"))
        .output()
        .expect("cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&file).expect("read");
    let all: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    let add = all.iter().find(|v| v["event"] == "admin" && v["command"] == "add").expect("add line");
    assert_eq!((add["user"].as_str(), add["via"].as_str()), (Some("cleo"), Some("admin_socket")));
    assert!(all.iter().any(|v| v["event"] == "login" && v["result"] == "failure" && v["user"] == "cleo"), "{text}");
    let disable = all.iter().find(|v| v["event"] == "admin" && v["command"] == "disable").expect("disable line");
    assert_eq!(disable["via"], "cli");
    assert!(!text.contains("Cleo-Passwort-12") && !text.contains("Falsch-aber-lang-1"));
}
