//! The mailer against a real SMTP server (the harness's sink) and the
//! outbox, over a real store: delivery, retries, the spool's limits, and
//! that an accepted mail survives a restart and a crash.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use riegel::clock::SystemClock;
use riegel::config::{MailConfig, MailTransport, SmtpConfig, SmtpTls};
use riegel::mail::{Mail, MailError, MailQueue, MailStats, Mailer};
use riegel::store::{SledStore, Store};

use mail_parser::MimeHeaders;

use crate::harness::*;

const LINK: &str = "https://portal.example.at/_riegel/reset/Zq3xV9kPwL2mN8rT4yB6cD1fG7hJ0sA5eU-_QwErTyUiOpAsDfGhJk";
const SUBJECT: &str = "Passwort zurücksetzen – Portal";
const KEY: [u8; 32] = [7; 32];

fn smtp_config(port: u16, queue_size: usize, max_attempts: u32) -> MailConfig {
    MailConfig {
        from: "Portal <portal@example.at>".into(),
        transport: MailTransport::Smtp(SmtpConfig {
            host: "127.0.0.1".into(),
            port,
            tls: SmtpTls::None,
            username: None,
            password: None,
            timeout: Duration::from_secs(2),
        }),
        queue_size,
        max_attempts,
    }
}

fn reset_mail(to: &str) -> Mail {
    Mail {
        to: to.into(),
        subject: SUBJECT.into(),
        text: format!(
            "Hallo Jürgen,\n\nÖffnen Sie diesen Link, um ein neues Passwort zu setzen:\n{LINK}\n\n\
             Prüfen Sie bitte auch Ihren Spam-Ordner. Grüße, Ihr Portal-Team\n"
        ),
        html: None,
    }
}

fn dead_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A mailer over a fresh sled store in `dir`.
fn mailer(cfg: &MailConfig, dir: &std::path::Path) -> (Mailer, Arc<dyn Store>) {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.join("data")).expect("store"));
    let m = Mailer::start(cfg, store.clone(), riegel::app::mail_sealer(&KEY), Arc::new(SystemClock)).expect("mailer");
    (m, store)
}

fn send(m: &Mailer, mail: Mail) -> Result<(), MailError> {
    block_on(m.send(mail))
}

fn drain(m: &Mailer, limit: Duration) -> bool {
    block_on(m.drain(limit))
}

/// Runs `f` on its own thread; `None` when it has not returned within
/// `limit` (a bound for "never returns", not a speed check).
fn returns_within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

#[test]
fn smtp_delivers_utf8_plain_mail() {
    let smtp = SmtpSink::start();
    let dir = tempdir("mail");
    let (m, _) = mailer(&smtp_config(smtp.addr.port(), 10, 3), &dir);
    send(&m, reset_mail("Anna Müller <anna@kunde.example>")).expect("send");
    assert!(drain(&m, Duration::from_secs(10)), "not drained: {:?}", m.stats());
    let got = smtp.wait_for(1, Duration::from_secs(10));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].from, "portal@example.at");
    assert_eq!(got[0].to, vec!["anna@kunde.example".to_string()]);
    // The raw subject is encoded (7-bit clean header), not raw UTF-8.
    assert!(got[0].data.is_ascii(), "message on the wire is not 7-bit clean");
    let msg = got[0].parsed();
    assert_eq!(msg.subject(), Some(SUBJECT));
    assert_eq!(msg.from().and_then(|a| a.first()).and_then(|a| a.address()), Some("portal@example.at"));
    assert_eq!(msg.to().and_then(|a| a.first()).and_then(|a| a.address()), Some("anna@kunde.example"));
    let id = msg.message_id().expect("message id");
    assert!(id.ends_with("@example.at"), "{id}");
    assert!(msg.date().is_some());
    assert!(got[0].data.contains("MIME-Version: 1.0"));
    assert_eq!(msg.parts.len(), 1, "a plain mail is one part");
    let ct = msg.parts[0].content_type().expect("content type");
    assert_eq!((ct.ctype(), ct.subtype()), ("text", Some("plain")));
    assert!(ct.attribute("charset").is_some_and(|c| c.eq_ignore_ascii_case("utf-8")));
    let text = got[0].plain();
    assert!(text.contains(LINK), "{text}");
    assert!(text.contains("Hallo Jürgen,"));
    assert!(text.contains("Prüfen Sie bitte auch Ihren Spam-Ordner"));
    assert_eq!(m.stats(), MailStats { queued: 1, sent: 1, failed: 0, dropped: 0, retried: 0 });
}

#[test]
fn smtp_delivers_plain_and_html_alternative() {
    let smtp = SmtpSink::start();
    let dir = tempdir("mail");
    let (m, _) = mailer(&smtp_config(smtp.addr.port(), 10, 3), &dir);
    let mut mail = reset_mail("anna@kunde.example");
    mail.html = Some(format!("<p>Hallo Jürgen,</p><p><a href=\"{LINK}\">Passwort ändern</a></p>"));
    send(&m, mail).expect("send");
    // A second mail reuses the pooled connection.
    send(&m, reset_mail("bernd@kunde.example")).expect("send");
    assert!(drain(&m, Duration::from_secs(10)));
    let got = smtp.wait_for(2, Duration::from_secs(10));
    assert_eq!(got.len(), 2);
    let html_mail = got.iter().find(|r| r.to == ["anna@kunde.example"]).expect("anna's mail");
    let msg = html_mail.parsed();
    let ct = msg.content_type().expect("content type");
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("alternative")));
    assert!(html_mail.data.contains("MIME-Version: 1.0"));
    assert!(html_mail.plain().contains(LINK));
    assert!(html_mail.html().expect("html part").contains(&format!("<a href=\"{LINK}\">Passwort ändern</a>")));
    assert_eq!(m.stats().sent, 2);
}

#[test]
fn outbox_writes_private_eml_files() {
    use std::os::unix::fs::PermissionsExt;
    let base = tempdir("outbox");
    let dir = base.join("nested").join("outbox");
    let cfg = MailConfig { from: "Portal <portal@example.at>".into(), transport: MailTransport::Outbox(dir.clone()), queue_size: 10, max_attempts: 3 };
    let (m, _) = mailer(&cfg, &base);
    assert_eq!(std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777, 0o700);
    for i in 0..3 {
        let mut mail = reset_mail(&format!("user{i}@kunde.example"));
        mail.text = format!("Mail {i}: {LINK}");
        send(&m, mail).expect("send");
    }
    assert!(drain(&m, Duration::from_secs(10)));
    let mut bodies = Vec::new();
    for e in std::fs::read_dir(&dir).expect("outbox") {
        let path = e.expect("entry").path();
        assert_eq!(path.extension().and_then(|x| x.to_str()), Some("eml"), "{}", path.display());
        assert_eq!(std::fs::metadata(&path).expect("file").permissions().mode() & 0o777, 0o600, "{}", path.display());
        let raw = std::fs::read_to_string(&path).expect("eml");
        let r = ReceivedMail { from: String::new(), to: vec![], data: raw };
        let msg = r.parsed();
        assert_eq!(msg.subject(), Some(SUBJECT));
        assert!(msg.from().and_then(|a| a.first()).and_then(|a| a.address()) == Some("portal@example.at"));
        assert!(msg.message_id().is_some() && msg.date().is_some());
        let to = msg.to().and_then(|a| a.first()).and_then(|a| a.address()).expect("to").to_string();
        bodies.push((to, r.plain().trim_end().to_string()));
    }
    bodies.sort();
    let expected: Vec<(String, String)> = (0..3).map(|i| (format!("user{i}@kunde.example"), format!("Mail {i}: {LINK}"))).collect();
    assert_eq!(bodies, expected);
    assert_eq!(m.stats().sent, 3);
}

#[test]
fn dead_server_never_slows_send_and_failures_are_counted() {
    // A server that accepts connections and never says a word: a send
    // that waited for the network would wait for the 30 s attempt
    // timeout. All 100 sends return while nothing has been delivered or
    // given up, so none of them waited for the server.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut cfg = smtp_config(silent.local_addr().expect("addr").port(), 200, 1);
    if let MailTransport::Smtp(smtp) = &mut cfg.transport {
        smtp.timeout = Duration::from_secs(10);
    }
    let dir = tempdir("mail");
    let (m, _) = mailer(&cfg, &dir);
    let m = Arc::new(m);
    let m2 = m.clone();
    let sent = returns_within(Duration::from_secs(60), move || {
        (0..100).map(|i| send(&m2, reset_mail(&format!("user{i}@kunde.example")))).collect::<Vec<_>>()
    })
    .expect("send waited for the silent server");
    assert!(sent.iter().all(Result::is_ok), "{sent:?}");
    let stats = m.stats();
    assert_eq!((stats.queued, stats.sent, stats.failed), (100, 0, 0), "{stats:?}");
    drop(silent);

    // A dead port: every mail fails, is retried once after the 1 s
    // backoff and then counted as failed.
    let dir = tempdir("mail");
    let (m, _) = mailer(&smtp_config(dead_port(), 200, 2), &dir);
    for i in 0..100 {
        send(&m, reset_mail(&format!("user{i}@kunde.example"))).expect("send");
    }
    assert!(drain(&m, Duration::from_secs(60)), "not drained: {:?}", m.stats());
    assert_eq!(m.stats(), MailStats { queued: 100, sent: 0, failed: 100, dropped: 0, retried: 100 });
}

#[test]
fn full_queue_refuses_and_counts() {
    let dir = tempdir("mail");
    let (m, _) = mailer(&smtp_config(dead_port(), 2, 2), &dir);
    let results: Vec<_> = (0..10).map(|i| send(&m, reset_mail(&format!("user{i}@kunde.example")))).collect();
    // The two accepted mails stay in the spool for the 1 s backoff, so the rest is refused.
    assert!(results[..2].iter().all(Result::is_ok), "{results:?}");
    assert!(results[2..].iter().all(|r| matches!(r, Err(MailError::QueueFull))), "{results:?}");
    let stats = m.stats();
    assert_eq!((stats.queued, stats.dropped), (2, 8));
    assert!(drain(&m, Duration::from_secs(30)));
    assert_eq!(m.stats().failed, 2);
    // Space again once drained.
    assert!(send(&m, reset_mail("late@kunde.example")).is_ok());
}

#[test]
fn silent_server_is_bounded_by_the_attempt_timeout() {
    // Accepts TCP connections (kernel backlog) but never says a word.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut cfg = smtp_config(listener.local_addr().expect("addr").port(), 10, 1);
    if let MailTransport::Smtp(smtp) = &mut cfg.transport {
        // One attempt may take three timeouts: 3 s.
        smtp.timeout = Duration::from_secs(1);
    }
    let dir = tempdir("mail");
    let (m, _) = mailer(&cfg, &dir);
    send(&m, reset_mail("anna@kunde.example")).expect("send");
    // The attempt is still waiting for the server (it cannot end before
    // its 3 s are up) ...
    assert!(!drain(&m, Duration::from_millis(100)), "cannot have finished yet");
    assert_eq!((m.stats().sent, m.stats().failed), (0, 0));
    // ... and is given up once they are, not held for ever.
    assert!(drain(&m, Duration::from_secs(30)), "{:?}", m.stats());
    assert_eq!(m.stats().failed, 1);
    drop(listener);
}

#[test]
fn start_and_drop_inside_a_runtime() {
    let dir = tempdir("mail");
    block_on(async {
        let (m, _) = mailer(&smtp_config(dead_port(), 10, 1), &dir);
        m.send(reset_mail("anna@kunde.example")).await.expect("send");
        drop(m);
        tokio::time::sleep(Duration::from_millis(50)).await;
    });
}

#[test]
fn invalid_input_is_rejected() {
    let dir = tempdir("mail");
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.join("data")).expect("store"));
    let start = |cfg: &MailConfig| Mailer::start(cfg, store.clone(), riegel::app::mail_sealer(&KEY), Arc::new(SystemClock));
    let mut cfg = smtp_config(dead_port(), 10, 1);
    cfg.from = "not an address".into();
    assert!(matches!(start(&cfg), Err(MailError::Invalid(_))));
    assert!(matches!(start(&smtp_config(dead_port(), 0, 1)), Err(MailError::Invalid(_))));
    let mut half_auth = smtp_config(dead_port(), 10, 1);
    if let MailTransport::Smtp(smtp) = &mut half_auth.transport {
        smtp.username = Some("portal".into());
    }
    assert!(matches!(start(&half_auth), Err(MailError::Invalid(_))));
    let file = dir.join("notadir");
    std::fs::write(&file, b"x").expect("file");
    let outbox = MailConfig { transport: MailTransport::Outbox(file), ..smtp_config(1, 10, 1) };
    assert!(matches!(start(&outbox), Err(MailError::Transport(_))));

    let m = start(&smtp_config(dead_port(), 10, 1)).expect("mailer");
    assert!(matches!(send(&m, reset_mail("no-at-sign")), Err(MailError::Invalid(_))));
    let mut injected = reset_mail("anna@kunde.example");
    injected.subject = "Hallo\r\nBcc: evil@example.com".into();
    assert!(matches!(send(&m, injected), Err(MailError::Invalid(_))));
    assert_eq!(m.stats(), MailStats::default());
    assert_eq!(block_on(store.mail_queue_depth()).expect("depth"), 0, "a refused mail was spooled");
}

#[test]
fn tls_transports_build() {
    let dir = tempdir("mail");
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.join("data")).expect("store"));
    for tls in [SmtpTls::StartTls, SmtpTls::Tls] {
        let mut cfg = smtp_config(dead_port(), 10, 1);
        if let MailTransport::Smtp(smtp) = &mut cfg.transport {
            smtp.host = "smtp.example.at".into();
            smtp.tls = tls;
            smtp.username = Some("portal".into());
            smtp.password = Some("secret".into());
        }
        assert!(Mailer::start(&cfg, store.clone(), riegel::app::mail_sealer(&KEY), Arc::new(SystemClock)).is_ok());
    }
}

#[test]
fn accepted_mails_survive_a_restart_and_are_sealed_in_the_store() {
    let smtp = SmtpSink::start();
    smtp.stop();
    let dir = tempdir("mail");
    let cfg = smtp_config(smtp.addr.port(), 10, 5);
    {
        let (m, store) = mailer(&cfg, &dir);
        for i in 0..3 {
            send(&m, reset_mail(&format!("user{i}@kunde.example"))).expect("send");
        }
        // The server is down: nothing is delivered, all three wait for a retry.
        assert!(!drain(&m, Duration::from_millis(300)));
        assert_eq!(block_on(store.mail_queue_depth()).expect("depth"), 3);
        drop(m);
    }
    // What the store holds on disk never shows the mail's text or link.
    let token = &LINK[LINK.rfind('/').expect("slash") + 1..];
    for e in walk(&dir.join("data")) {
        let bytes = std::fs::read(&e).expect("read");
        assert!(!bytes.windows(token.len()).any(|w| w == token.as_bytes()), "reset token in clear in {}", e.display());
        assert!(!bytes.windows(7).any(|w| w == b"J\xc3\xbcrgen"), "mail text in clear in {}", e.display());
    }
    // A new process on the same store, with the server back: all three arrive.
    smtp.up();
    let (m, _) = mailer(&cfg, &dir);
    assert!(drain(&m, Duration::from_secs(30)), "{:?}", m.stats());
    let got = smtp.wait_for(3, Duration::from_secs(10));
    let mut to: Vec<String> = got.iter().flat_map(|r| r.to.clone()).collect();
    to.sort();
    assert_eq!(to, vec!["user0@kunde.example", "user1@kunde.example", "user2@kunde.example"]);
    assert!(got.iter().all(|r| r.plain().contains(LINK)));
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_reset_mail_acknowledged_before_a_crash_is_sent_after_it() {
    let smtp = SmtpSink::start();
    smtp.stop();
    let portal = riegel::demo::start_portal("127.0.0.1:0".parse().expect("addr")).expect("portal");
    let dir = tempdir("crash");
    let extra = format!(
        "mail: {{ from: \"P <p@example.at>\", smtp: {{ host: 127.0.0.1, port: {}, tls: none, timeout: 2s }}, max_attempts: 20 }}\n",
        smtp.addr.port()
    );
    let serve = ServeProcess::start(&dir, portal, &extra);
    r_add_user(&serve, "dora", "dora@example.at");
    let mut c = Client::new(serve.addr);
    let page = c.submit("/_riegel/forgot", "/_riegel/forgot", &[("username", "dora")]);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.to_lowercase().contains("spam"), "{}", page.body);
    // The answer said the mail is on its way; the process dies at once.
    serve.kill9();
    smtp.up();
    let serve = ServeProcess::start(&dir, portal, &extra);
    let got = smtp.wait_for(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "the acknowledged reset mail was lost");
    assert_eq!(got[0].to, vec!["dora@example.at".to_string()]);
    assert!(got[0].plain().contains("/_riegel/reset/"));
    serve.stop();
}

/// `riegel user add` against a running server (over its admin socket).
fn r_add_user(serve: &ServeProcess, name: &str, email: &str) {
    let out = serve.cli(&["user", "add", name, "--email", email, "--name", name], Some("Passwort-2024!\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
