//! SIGHUP reload of `riegel serve`: a valid file takes effect for new
//! requests while connections opened before stay usable; a broken one
//! leaves the running configuration serving and says why, key by key;
//! settings that need a restart are reported and kept; a renewed TLS
//! certificate is served after SIGHUP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::*;

/// One request on an open keep-alive connection; the answer's status and
/// body (framed by Content-Length).
pub fn keep_alive(s: &mut TcpStream, addr: SocketAddr, path: &str) -> (u16, String) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("write");
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read head");
        assert_eq!(n, 1, "connection closed; got so far: {}", String::from_utf8_lossy(&buf));
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status");
    let len: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).map(|(_, v)| v.trim().parse().expect("length")))
        .expect("content-length");
    assert!(!head.to_ascii_lowercase().contains("connection: close"), "{head}");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("body");
    (status, String::from_utf8_lossy(&body).to_string())
}

/// Rewrites the server's config file with `f`.
fn edit(serve: &ServeProcess, f: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(&serve.config).expect("config");
    std::fs::write(&serve.config, f(text)).expect("config");
}

/// Sends SIGHUP and waits for the `n`-th line with `marker` in the log.
fn hup_and_wait(serve: &mut ServeProcess, marker: &str) -> String {
    let before = serve.log().matches(marker).count();
    serve.hup();
    let t = Instant::now();
    loop {
        let log = serve.log();
        if log.matches(marker).count() > before {
            return log;
        }
        assert!(serve.running(), "riegel serve ended on SIGHUP:\n{log}");
        assert!(t.elapsed() < Duration::from_secs(20), "no {marker:?} after SIGHUP:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const RELOADED: &str = "configuration reloaded";
const REFUSED: &str = "configuration reload refused; the running configuration stays";

#[test]
fn sighup_takes_branding_and_public_paths_keeping_connections() {
    let dir = tempdir("reload-ok");
    let portal = riegel::demo::start_portal("127.0.0.1:0".parse().expect("addr")).expect("portal");
    let mut serve = ServeProcess::start(&dir, portal, "branding: { company: \"Alte Hausverwaltung GmbH\" }\n");
    let addr = serve.addr;
    // Opened before the reload, and kept.
    let mut kept = TcpStream::connect(addr).expect("connect");
    kept.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let (status, body) = keep_alive(&mut kept, addr, "/_riegel/login");
    assert_eq!(status, 200);
    assert!(body.contains("Alte Hausverwaltung GmbH"), "{body}");
    let (status, _) = keep_alive(&mut kept, addr, "/oeffentlich/info");
    assert_eq!(status, 303, "not public yet: to the login page");

    edit(&serve, |t| {
        t.replace("Alte Hausverwaltung GmbH", "Neue Hausverwaltung GmbH") + "public_paths: [\"/oeffentlich/*\"]\n"
    });
    let log = hup_and_wait(&mut serve, RELOADED);
    assert!(!log.contains("needs a restart"), "{log}");

    // The connection opened before carries new requests with the new
    // configuration.
    let (status, body) = keep_alive(&mut kept, addr, "/_riegel/login");
    assert_eq!(status, 200);
    assert!(body.contains("Neue Hausverwaltung GmbH") && !body.contains("Alte Hausverwaltung"), "{body}");
    let (status, body) = keep_alive(&mut kept, addr, "/oeffentlich/info");
    assert_eq!(status, 200, "public now: forwarded to the portal: {body}");
    assert!(body.contains("/oeffentlich/info"), "{body}");
    // A POST on it (Pingora's framework way) too.
    write!(kept, "POST /oeffentlich/form HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 3\r\n\r\nabc").expect("post");
    let mut c = Client::new(addr);
    let fresh = c.get("/_riegel/login");
    assert!(fresh.body.contains("Neue Hausverwaltung GmbH"), "{}", fresh.body);
    // Still not public: a path outside the new entry.
    assert_eq!(c.get("/oeffentlichkeit").status, 303);
    // The connection is still there after all of that.
    let mut rest = [0u8; 4096];
    let n = kept.read(&mut rest).expect("answer to the POST");
    assert!(String::from_utf8_lossy(&rest[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&rest[..n]));
    serve.stop();
}

#[test]
fn a_broken_file_on_sighup_leaves_the_running_config_serving() {
    let dir = tempdir("reload-bad");
    let portal = riegel::demo::start_portal("127.0.0.1:0".parse().expect("addr")).expect("portal");
    let mut serve = ServeProcess::start(&dir, portal, "branding: { company: \"Alte Hausverwaltung GmbH\" }\n");
    let addr = serve.addr;
    let good = std::fs::read_to_string(&serve.config).expect("config");
    // Three problems at once: an unknown key, a bad duration, a bad URL.
    edit(&serve, |t| {
        t.replace("Alte Hausverwaltung GmbH", "Kaputte Firma")
            .replace("upstream: { url: ", "upstream: { url: \"ftp://nowhere\", x_url: ")
            + "session: { idle_timeout: bald }\nbranding_typo: 1\n"
    });
    let log = hup_and_wait(&mut serve, REFUSED);
    for key in ["session.idle_timeout", "branding_typo", "upstream"] {
        assert!(log.lines().any(|l| l.contains("configuration reload refused") && l.contains(key)), "no line for {key}:\n{log}");
    }
    let mut c = Client::new(addr);
    let page = c.get("/_riegel/login");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Alte Hausverwaltung GmbH") && !page.body.contains("Kaputte"), "{}", page.body);

    // A file that parses but names a portal that cannot be resolved, or a
    // TLS key file that is not there: refused as well.
    edit(&serve, |_| good.replace(&format!("http://{portal}"), "http://portal.invalid:9").replace("Alte", "Kaputte"));
    let log = hup_and_wait(&mut serve, REFUSED);
    assert!(log.lines().any(|l| l.contains("configuration reload refused") && l.contains("upstream.url")), "{log}");
    assert!(c.get("/_riegel/login").body.contains("Alte Hausverwaltung GmbH"));

    // Fixed settings are reported and kept; the rest is taken.
    let other = free_port();
    edit(&serve, |_| good.replace(&format!("127.0.0.1:{}\"\npublic_url", addr.port()), &format!("127.0.0.1:{other}\"\npublic_url")).replace("Alte", "Neue"));
    let log = hup_and_wait(&mut serve, RELOADED);
    assert!(log.lines().any(|l| l.contains("needs a restart") && l.contains("listen")), "{log}");
    assert!(c.get("/_riegel/login").body.contains("Neue Hausverwaltung GmbH"));
    assert!(TcpStream::connect(("127.0.0.1", other)).is_err(), "the listen address changed without a restart");
    serve.stop();
}

/// A self-signed certificate for 127.0.0.1 with `cn`, by openssl.
pub fn make_cert(dir: &Path, cn: &str) {
    let openssl = tool("openssl").expect("openssl");
    let out = std::process::Command::new(openssl)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={cn}"), "-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `curl -k` of `url` with `args`: (the handshake and head lines on
/// stderr, the body).
pub fn curl(args: &[&str], url: &str) -> Option<(String, String)> {
    let curl = tool("curl")?;
    let out = std::process::Command::new(curl).args(["-sS", "-k", "-v", "--max-time", "10"]).args(args).arg(url).output().expect("curl");
    Some((String::from_utf8_lossy(&out.stderr).to_string(), String::from_utf8_lossy(&out.stdout).to_string()))
}

#[test]
fn a_renewed_certificate_is_served_after_sighup() {
    let dir = tempdir("reload-tls");
    make_cert(&dir, "riegel-eins");
    let portal = riegel::demo::start_portal("127.0.0.1:0".parse().expect("addr")).expect("portal");
    let mut serve = ServeProcess::start(&dir, portal, "tls: { cert_file: cert.pem, key_file: key.pem }\n");
    let url = format!("https://127.0.0.1:{}/_riegel/login", serve.addr.port());
    let Some((v, _)) = curl(&[], &url) else { return };
    assert!(v.contains("CN=riegel-eins") || v.contains("CN = riegel-eins"), "{v}");
    // Renewed in place, as certbot or acme.sh do.
    make_cert(&dir, "riegel-zwei");
    let log = hup_and_wait(&mut serve, RELOADED);
    assert!(!log.contains("needs a restart"), "{log}");
    let (v, body) = curl(&[], &url).expect("curl");
    assert!(v.contains("CN=riegel-zwei") || v.contains("CN = riegel-zwei"), "{v}");
    assert!(body.contains("Jetzt anmelden"), "{body}");
    // A key that does not belong to the certificate: refused, the renewed
    // one stays.
    let key = std::fs::read(dir.join("key.pem")).expect("key");
    make_cert(&dir, "riegel-drei");
    std::fs::write(dir.join("key.pem"), key).expect("key");
    let log = hup_and_wait(&mut serve, REFUSED);
    assert!(log.lines().any(|l| l.contains("configuration reload refused") && l.contains("tls")), "{log}");
    let (v, _) = curl(&[], &url).expect("curl");
    assert!(v.contains("riegel-zwei"), "{v}");
    serve.stop();
}

/// `.eml` files in `dir`.
fn mails_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "eml")).count()).unwrap_or(0)
}

#[test]
fn mail_settings_are_taken_on_sighup() {
    let dir = tempdir("reload-mail");
    let portal = riegel::demo::start_portal("127.0.0.1:0".parse().expect("addr")).expect("portal");
    let mut serve = ServeProcess::start(&dir, portal, "");
    let out = serve.cli(&["user", "add", "dora", "--email", "dora@example.at", "--name", "Dora"], Some("Passwort-2024!\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let forgot = |serve: &ServeProcess| {
        let page = Client::new(serve.addr).submit("/_riegel/forgot", "/_riegel/forgot", &[("username", "dora")]);
        assert_eq!(page.status, 200, "{}", page.body);
    };
    let wait = |d: &Path, n: usize| {
        let t = Instant::now();
        while mails_in(d) < n {
            assert!(t.elapsed() < Duration::from_secs(20), "no mail in {}", d.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    forgot(&serve);
    wait(&dir.join("outbox"), 1);
    edit(&serve, |t| t.replace("outbox: outbox", "outbox: neu"));
    let log = hup_and_wait(&mut serve, RELOADED);
    assert_eq!(log.matches("mailer started").count(), 2, "{log}");
    forgot(&serve);
    wait(&dir.join("neu"), 1);
    assert_eq!(mails_in(&dir.join("outbox")), 1, "the old mailer still delivered");
    serve.stop();
}

#[test]
fn sighup_reopens_a_rotated_audit_file() {
    let dir = tempdir("reload-audit");
    let portal = riegel::demo::start_portal("127.0.0.1:0".parse().expect("addr")).expect("portal");
    let mut serve = ServeProcess::start(&dir, portal, "log: { audit_file: audit.jsonl }\n");
    let failed_login = |serve: &ServeProcess, user: &str| {
        let page = Client::new(serve.addr).login(user, "falsch-falsch");
        assert_eq!(page.status, 200, "{}", page.body);
    };
    let out = serve.cli(&["user", "add", "ida", "--email", "ida@example.at", "--name", "Ida"], Some("Passwort-2024!\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    failed_login(&serve, "ida");
    let audit = dir.join("audit.jsonl");
    let rotated = dir.join("audit.jsonl.1");
    std::fs::rename(&audit, &rotated).expect("rotate");
    hup_and_wait(&mut serve, RELOADED);
    failed_login(&serve, "ida");
    let (old, new) = (std::fs::read_to_string(&rotated).expect("rotated"), std::fs::read_to_string(&audit).expect("reopened"));
    let logins = |text: &str| text.lines().filter(|l| l.contains("\"event\":\"login\"") && l.contains("\"user\":\"ida\"")).count();
    assert_eq!((logins(&old), logins(&new)), (1, 1), "before the rotation:\n{old}\nafter it:\n{new}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&audit).expect("meta").permissions().mode() & 0o777, 0o600);
    serve.stop();
}
