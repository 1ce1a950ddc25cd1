//! The gateway core: redirects, sessions, identity headers, upstream
//! failures, slow clients, check-config.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn unauthenticated_requests_are_sent_to_login_with_encoded_rd() {
    let r = Riegel::start();
    let mut c = r.client();
    let resp = c.get("/mieter/dokumente?jahr=2024&typ=a%20b");
    assert_eq!(resp.status, 303);
    assert_eq!(resp.location(), "/_riegel/login?rd=%2Fmieter%2Fdokumente%3Fjahr%3D2024%26typ%3Da%2520b");
    // Not even HEAD or POST reach the portal without a session.
    assert_eq!(c.request("POST", "/mieter", &[], Some("a=b")).status, 303);
    // A protocol-relative target never becomes the redirect.
    let resp = c.get("//evil.example/x");
    assert_eq!(resp.status, 303);
    assert!(resp.location().starts_with("/_riegel/login"), "{}", resp.location());
    assert!(!resp.location().contains("evil"), "{}", resp.location());
}

#[test]
fn public_paths_pass_without_a_session_and_without_identity() {
    let r = Riegel::start();
    let mut c = r.client();
    let resp = c.request("GET", "/favicon.ico", &[("Remote-User", "admin")], None);
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(resp.body.contains("Demo-Portal"));
    assert!(resp.echoed("remote-user").is_empty(), "spoofed header reached the portal: {:?}", resp.echoed_headers());
}

#[test]
fn healthz_and_unknown_routes() {
    let r = Riegel::start();
    let mut c = r.client();
    let h = c.get("/_riegel/healthz");
    assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
    let nf = c.get("/_riegel/nope");
    assert_eq!(nf.status, 404);
    assert!(nf.header("content-type").unwrap_or("").starts_with("text/html"));
    // A known path with a method it does not take: 405; unknown: 404.
    for (method, path, status) in [
        ("PUT", "/_riegel/login", 405),
        ("DELETE", "/_riegel/reset/abc", 405),
        ("POST", "/_riegel/healthz", 405),
        ("POST", "/_riegel/setup", 405),
        ("POST", "/_riegel/static/riegel.css", 405),
        ("POST", "/_riegel/", 404),
        ("PUT", "/_riegel/nope", 404),
    ] {
        assert_eq!(c.request(method, path, &[], Some("")).status, status, "{method} {path}");
    }
    assert_eq!(c.request("HEAD", "/_riegel/healthz", &[], None).status, 200);
}

#[test]
fn full_session_reaches_portal_with_identity_and_spoofs_never_do() {
    let r = Riegel::start();
    r.add_user("anna", Some("anna@example.at"), Some("Sommer-2024!"));
    let mut c = r.client();
    login_and_enrol(&r, &mut c, "anna", "Sommer-2024!");
    c.jar.insert("portal_sid".into(), "p0rtal".into());
    let spoofs: &[(&str, &str)] = &[
        ("Remote-User", "admin"),
        ("remote-user", "admin2"),
        ("REMOTE-USER", "admin3"),
        ("Remote_User", "admin4"),
        ("remote_user", "admin5"),
        ("rEmOtE_uSeR", "admin6"),
        ("Remote-Email", "boss@example.at"),
        ("remote_email", "boss2@example.at"),
        ("Remote-Name", "Boss"),
        ("REMOTE_NAME", "Boss2"),
        ("X-Secret-Internal", "should-go"),
        ("Connection", "keep-alive, X-Secret-Internal"),
    ];
    // Duplicate headers too: the raw request repeats them.
    let resp = c.request("GET", "/mieter?x=1", spoofs, None);
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.echoed("remote-user"), vec!["anna"], "{:?}", resp.echoed_headers());
    assert_eq!(resp.echoed("remote-email"), vec!["anna@example.at"]);
    assert_eq!(resp.echoed("remote-name"), vec!["anna Muster"]);
    for (name, _) in resp.echoed_headers() {
        let n = name.to_ascii_lowercase().replace('_', "-");
        assert!(n != "x-secret-internal", "Connection-listed header reached the portal");
        if n.starts_with("remote-") {
            assert!(name == "remote-user" || name == "remote-email" || name == "remote-name" || name.starts_with("Remote-"), "{name}");
        }
    }
    let all: Vec<String> = resp.echoed_headers().iter().map(|(_, v)| v.clone()).collect();
    for (_, v) in spoofs {
        if v.starts_with("admin") || v.starts_with("boss") || v.starts_with("Boss") {
            assert!(!all.contains(&v.to_string()), "spoofed value {v} reached the portal");
        }
    }
    // riegel's cookies are removed; the portal's pass untouched.
    let cookie = resp.echoed("cookie").join("; ");
    assert!(cookie.contains("portal_sid=p0rtal"), "{cookie}");
    assert!(!cookie.contains("riegel_session"), "{cookie}");
    // X-Forwarded-*
    assert_eq!(resp.echoed("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(resp.echoed("x-forwarded-proto"), vec!["http"]);
    assert_eq!(resp.echoed("x-forwarded-host"), vec![r.addr.to_string()]);
}

#[test]
fn tampered_expired_revoked_and_password_only_cookies_are_no_session() {
    let r = Riegel::start();
    r.add_user("bert", Some("bert@example.at"), Some("Winter-2024!"));
    let mut c = r.client();
    login_and_enrol(&r, &mut c, "bert", "Winter-2024!");
    assert_eq!(c.get("/").status, 200);
    let good = c.session_cookie().expect("cookie");

    // Tampered: flip one character of the payload.
    let mut t = c.clone();
    let mut bytes = good.clone().into_bytes();
    bytes[5] = if bytes[5] == b'A' { b'B' } else { b'A' };
    t.jar.insert("riegel_session".into(), String::from_utf8(bytes).expect("ascii"));
    assert_eq!(t.get("/").status, 303);

    // Password-only: a fresh login without the second factor.
    let mut p = r.client();
    assert_eq!(p.login("bert", "Winter-2024!").status, 303);
    let resp = p.get("/");
    assert_eq!(resp.status, 303);
    assert!(resp.location().starts_with("/_riegel/login"));
    assert!(p.get("/_riegel/auth").status == 401);

    // Revoked: logout ends the session server-side; a copy of the cookie stops working.
    let copy = c.clone();
    let out = c.submit("/_riegel/logout", "/_riegel/logout", &[]);
    assert_eq!(out.status, 200, "{}", out.body);
    let mut copy = copy;
    assert_eq!(copy.get("/").status, 303, "copied cookie still works after logout");

    // Expired: idle timeout (30m) passes.
    let mut d = r.client();
    login_full(&r, &mut d, "bert", "Winter-2024!", &login_secret(&r, "bert"));
    assert_eq!(d.get("/").status, 200);
    r.clock.advance(31 * 60);
    assert_eq!(d.get("/").status, 303);
}

/// The TOTP secret of an enrolled user, read back with the storage key (test-only shortcut).
fn login_secret(r: &Riegel, user: &str) -> String {
    let u = r.user(user).expect("user");
    let sealed = u.authenticators.first().expect("enrolled");
    let secret = r.services.secret_box.open(&sealed.sealed, format!("riegel-totp:{}", u.id).as_bytes()).expect("opens");
    data_encoding::BASE32_NOPAD.encode(&secret)
}

#[test]
fn forward_auth_endpoint() {
    let r = Riegel::start();
    r.add_user("carla", None, Some("Fruehling-2024"));
    let mut c = r.client();
    assert_eq!(c.get("/_riegel/auth").status, 401);
    login_and_enrol(&r, &mut c, "carla", "Fruehling-2024");
    let ok = c.get("/_riegel/auth");
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-riegel-user"), Some("carla"));
}

/// The peer closed the connection (end of stream or reset) before `within`
/// passed without an answer byte; a timeout or any data is `false`.
fn closed_by_peer(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted),
    }
}

#[test]
fn upstream_down_gives_branded_502_quickly_and_gateway_stays_up() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    // The listener is dropped: nothing listens there now.
    let r = Riegel::start_with(Options { upstream: Some(closed), ..Options::default() });
    let mut c = r.client();
    let resp = c.get("/favicon.ico");
    // A refused connect is answered at once; only retrying (a regression)
    // takes seconds, so this bound is loose on purpose.
    let t = Instant::now();
    let resp2 = c.get("/favicon.ico");
    assert!(t.elapsed() < Duration::from_secs(8), "502 took {:?}", t.elapsed());
    for resp in [resp, resp2] {
        assert_eq!(resp.status, 502);
        assert!(resp.header("content-type").unwrap_or("").starts_with("text/html"));
        assert!(!resp.body.is_empty());
        assert_ne!(resp.header("server"), Some("Pingora"));
    }
    assert_eq!(c.get("/_riegel/healthz").status, 200);
}

#[test]
fn slow_upstream_gives_504_after_read_timeout() {
    let r = Riegel::start_with(Options {
        upstream_read_timeout: "1s",
        extra_yaml: "public_paths: [\"/favicon.ico\", \"/slow*\"]\n".into(),
        ..Options::default()
    });
    let mut c = r.client();
    // The portal would answer after 20 s; the 504 comes after the 1 s read
    // timeout, long before that (a loose bound: only waiting for the portal
    // crosses it).
    let t = Instant::now();
    let resp = c.get("/slow?ms=20000");
    assert_eq!(resp.status, 504, "{}", resp.body);
    assert!(t.elapsed() < Duration::from_secs(15), "504 took {:?}", t.elapsed());
    assert!(resp.header("content-type").unwrap_or("").starts_with("text/html"));
    assert_eq!(c.get("/_riegel/healthz").status, 200);
}

#[test]
fn slowloris_connections_are_closed_after_the_header_timeout() {
    let r = Riegel::start_with(Options { server_yaml: "  header_timeout: 1s\n".into(), ..Options::default() });
    let mut s = TcpStream::connect(r.addr).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: ").expect("write");
    // The client never finishes its head; riegel closes after 1 s. A read
    // that times out (15 s) means the connection was held.
    assert!(closed_by_peer(&mut s, Duration::from_secs(15)), "the half-sent head was not cut off");
    // And others are still served.
    assert_eq!(r.client().get("/_riegel/healthz").status, 200);
}

#[test]
fn check_config_reports_three_mistakes_and_exits_2() {
    let dir = tempdir("checkconfig");
    let cfg = dir.join("bad.yaml");
    std::fs::write(
        &cfg,
        "listen: \"127.0.0.1:8080\"\npublic_url: \"https://portal.example.at\"\nupstream: { url: \"not a url\" }\nstore: { path: /tmp/x }\nsecrets: {}\nsession: { idle_timeout: soon }\nmail: { from: \"P <p@example.at>\", outbox: /tmp/o, colour: red }\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_riegel"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .env("RIEGEL_SESSION_KEY", "k".repeat(64))
        .env("RIEGEL_STORAGE_KEY", "s".repeat(64))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("upstream.url"), "{err}");
    assert!(err.contains("session.idle_timeout"), "{err}");
    assert!(err.contains("mail.colour: unknown key"), "{err}");
    assert!(err.contains("3 problem(s)"), "{err}");
}

#[test]
fn override_directory_and_logo_are_picked_up_without_rebuilding() {
    let dir = tempdir("overrides");
    std::fs::create_dir_all(dir.join("templates")).expect("dir");
    let builtin = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pages/templates/login.html")).expect("login template");
    // The operator's change: a notice above the form.
    let changed = builtin.replacen("{% block content %}", "{% block content %}<p id=\"operator-notice\">Wartung am Sonntag</p>", 1);
    assert_ne!(changed, builtin, "login template has no content block");
    std::fs::write(dir.join("templates/login.html"), changed).expect("write");
    let logo = dir.join("logo.svg");
    std::fs::write(&logo, "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 10 10\"><rect width=\"10\" height=\"10\" fill=\"#c00\"/><!--operator-logo--></svg>").expect("logo");
    let r = Riegel::start_with(Options {
        branding_yaml: format!("  pages_dir: \"{}\"\n  logo_file: \"{}\"\n", dir.display(), logo.display()),
        ..Options::default()
    });
    let mut c = r.client();
    let page = c.get("/_riegel/login");
    assert!(page.body.contains("operator-notice"), "override template not used");
    assert!(page.body.contains("/_riegel/static/logo"), "configured logo not referenced");
    let l = c.get("/_riegel/static/logo");
    assert_eq!(l.status, 200);
    assert_eq!(l.header("content-type"), Some("image/svg+xml"));
    assert!(l.body.contains("operator-logo"));

    // A broken override is reported by check-config, not at a user's request.
    std::fs::write(dir.join("templates/login.html"), "{% block content %}{{ broken(").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_riegel"))
        .args(["check-config", "--config"])
        .arg(&r.config_path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("login"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn tls_listener_serves_https_with_host_prefixed_secure_cookies_and_hsts() {
    let (Some(openssl), Some(curl)) = (tool("openssl"), tool("curl")) else {
        eprintln!("openssl/curl missing: TLS test skipped (it fails on CI)");
        return;
    };
    let dir = tempdir("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let st = std::process::Command::new(openssl)
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(st.success());
    let r = Riegel::start_with(Options {
        extra_yaml: format!("tls: {{ cert_file: \"{}\", key_file: \"{}\" }}\n", cert.display(), key.display()),
        https: true,
        ..Options::default()
    });
    let out = std::process::Command::new(curl)
        .args(["-s", "-i", "--cacert"])
        .arg(&cert)
        .arg(format!("https://127.0.0.1:{}/_riegel/login", r.addr.port()))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/2 200"), "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("strict-transport-security: max-age="), "{text}");
    let cookie = text.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).expect("cookie");
    assert!(cookie.contains("__Host-riegel_session_csrf="), "{cookie}");
    assert!(cookie.contains("; Secure") && cookie.contains("Path=/") && cookie.contains("HttpOnly"), "{cookie}");
    assert!(!cookie.to_ascii_lowercase().contains("domain="), "{cookie}");
    // Portal paths still redirect to the login page over https.
    let out = std::process::Command::new(tool("curl").expect("curl"))
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "--cacert"])
        .arg(&cert)
        .arg(format!("https://127.0.0.1:{}/mieter", r.addr.port()))
        .output()
        .expect("curl");
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.starts_with("303 https://127.0.0.1:"), "{s}");
    assert!(s.contains("/_riegel/login?rd=%2Fmieter"), "{s}");
}

/// `riegel serve` as a process in a new directory, in front of `upstream`.
fn serve_binary(upstream: std::net::SocketAddr, extra: &str) -> ServeProcess {
    ServeProcess::start(&tempdir("serve"), upstream, extra)
}

#[test]
fn riegel_serve_binary_proxies_with_default_runtime_and_stops_on_sigterm() {
    let portal = riegel::demo::start_portal("127.0.0.1:0".parse().expect("addr")).expect("portal");
    let s = serve_binary(portal, "");
    let mut c = Client::new(s.addr);
    for _ in 0..20 {
        // Several requests, so both runtime threads get work.
        assert_eq!(c.get("/favicon.ico").status, 200);
        assert_eq!(c.get("/mieter").status, 303);
    }
    assert_eq!(c.get("/_riegel/healthz").status, 200);
    s.stop();
}

#[test]
fn connection_cap_refuses_connections_beyond_the_limit() {
    let r = Riegel::start_with(Options { server_yaml: "  max_connections: 3\n  header_timeout: 5s\n".into(), ..Options::default() });
    // The harness's start-up probe and this request are connections too;
    // they count until riegel has seen them close.
    assert_eq!(r.client().get("/_riegel/healthz").status, 200);
    std::thread::sleep(Duration::from_millis(500));
    // Three connections in the middle of their request headers fill the cap.
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(r.addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
            s.write_all(b"GET /_riegel/healthz HTTP/1.1\r\nHost: x\r\n").expect("write");
            s
        })
        .collect();
    // Give the server time to accept all three, even on a busy machine.
    std::thread::sleep(Duration::from_millis(1000));
    let mut extra = TcpStream::connect(r.addr).expect("connect");
    extra.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let _ = extra.write_all(b"GET /_riegel/healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(closed_by_peer(&mut extra, Duration::from_secs(3)), "a connection beyond the cap was served or held");
    // The three were the ones counted: each is served once its head ends.
    for s in &mut held {
        s.write_all(b"\r\n").expect("write");
        let mut head = [0u8; 12];
        s.read_exact(&mut head).expect("answer");
        assert_eq!(&head, b"HTTP/1.1 200");
    }
    // Once they go, new connections are served again.
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(r.client().get("/_riegel/healthz").status, 200);
}

/// A portal that answers by path with every framing riegel must relay, on
/// keep-alive connections; it records each request head it gets.
fn framing_portal() -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    seen.lock().expect("lock").push(head.clone());
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let w = |s: &mut TcpStream, b: &[u8]| s.write_all(b).is_ok();
                    let ok = match path.as_str() {
                        "/chunked" => {
                            w(&mut s, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
                                && {
                                    std::thread::sleep(Duration::from_millis(50));
                                    w(&mut s, b"6;x=y\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")
                                }
                        }
                        "/early" => w(&mut s, b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly"),
                        "/big" => {
                            let body = vec![b'x'; 300_000];
                            w(&mut s, format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes()) && w(&mut s, &body)
                        }
                        "/304" => w(&mut s, b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n"),
                        "/hop" => w(&mut s, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=9\r\n\r\nhop"),
                        "/close" => {
                            let _ = w(&mut s, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end");
                            return;
                        }
                        p if head.starts_with("HEAD ") => w(&mut s, format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", p.len()).as_bytes()),
                        p => w(&mut s, format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{p}", p.len()).as_bytes()),
                    };
                    if !ok {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

/// Splits a stream of answers (to requests in `methods`) into status,
/// lowercased head and body.
fn answers(mut b: &[u8], methods: &[&str]) -> Vec<(u16, String, Vec<u8>)> {
    let mut out = Vec::new();
    for m in methods {
        let end = b.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(b)));
        let head = String::from_utf8_lossy(&b[..end]).to_ascii_lowercase();
        let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
        b = &b[end + 4..];
        let len = head.lines().find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().expect("length")));
        let body = if *m == "HEAD" || status == 304 {
            Vec::new()
        } else if head.contains("transfer-encoding: chunked") {
            // The last chunk, then the trailer section up to its blank line.
            let last = b.windows(5).position(|w| w == b"\r\n0\r\n").expect("last chunk") + 2;
            let trailer_end = if b[last + 3..].starts_with(b"\r\n") {
                last + 5
            } else {
                b[last + 3..].windows(4).position(|w| w == b"\r\n\r\n").expect("trailer end") + last + 3 + 4
            };
            let body = b[..trailer_end].to_vec();
            b = &b[trailer_end..];
            body
        } else if let Some(n) = len {
            let body = b[..n].to_vec();
            b = &b[n..];
            body
        } else {
            let body = b.to_vec();
            b = &[];
            body
        };
        out.push((status, head, body));
    }
    assert!(b.is_empty(), "bytes after the last answer: {:?}", String::from_utf8_lossy(b));
    out
}

#[test]
fn short_way_relays_every_framing_pipelined_on_one_connection() {
    let (portal, heads) = framing_portal();
    let r = Riegel::start_with(Options { upstream: Some(portal), extra_yaml: "public_paths: [\"/*\"]\n".into(), ..Options::default() });
    check_framing(r.addr, &heads);
}

#[test]
fn short_way_relays_every_framing_with_the_default_runtime() {
    // The production set-up: shards, client sockets moved to their shard,
    // answers written past the write buffer (vectored head and body).
    let (portal, heads) = framing_portal();
    let s = serve_binary(portal, "public_paths: [\"/*\"]\n");
    for _ in 0..4 {
        // New connections, so that every shard serves one.
        heads.lock().expect("lock").clear();
        check_framing(s.addr, &heads);
    }
    s.stop();
}

/// Pipelines one request for each framing on one connection to riegel at
/// `addr` (in front of [`framing_portal`]) and checks every answer and what
/// the portal got.
fn check_framing(addr: std::net::SocketAddr, heads: &std::sync::Mutex<Vec<String>>) {
    let paths = ["/plain", "/chunked", "/early", "/big", "/304", "/hop", "/plain", "/close"];
    let methods = ["GET", "GET", "GET", "GET", "GET", "GET", "HEAD", "GET"];
    let mut raw = String::new();
    for (m, p) in methods.iter().zip(paths) {
        raw.push_str(&format!("{m} {p} HTTP/1.1\r\nHost: portal.example\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nRemote_User: admin\r\n\r\n"));
    }
    // All at once: the requests are pipelined, answered in order.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(raw.as_bytes()).expect("write");
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("read until riegel closes");
    let a = answers(&got, &methods);
    assert_eq!(a.len(), paths.len());
    assert_eq!((a[0].0, a[0].2.as_slice()), (200, &b"/plain"[..]));
    assert!(a[1].1.contains("transfer-encoding: chunked"), "{}", a[1].1);
    assert_eq!(a[1].2, b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n");
    assert_eq!((a[2].0, a[2].2.as_slice()), (200, &b"early"[..]), "the 103 is not passed on");
    assert_eq!(a[3].2.len(), 300_000);
    assert!(a[3].2.iter().all(|&c| c == b'x'));
    assert_eq!(a[4].0, 304);
    assert!(a[4].1.contains("etag: \"v1\""));
    assert_eq!(a[5].2, b"hop");
    assert!(!a[5].1.contains("x-secret") && !a[5].1.contains("keep-alive: timeout"), "hop-by-hop headers passed on: {}", a[5].1);
    assert_eq!((a[6].0, a[6].1.contains("content-length: 6"), a[6].2.len()), (200, true, 0));
    // Delimited by close: riegel closes the client connection too.
    assert_eq!(a[7].2, b"until the end");
    assert!(a[7].1.contains("connection: close"), "{}", a[7].1);
    // What the portal got: no hop-by-hop headers, no spoofed identity,
    // riegel's X-Forwarded-*; and the pooled connection served them all in
    // step.
    let heads = heads.lock().expect("lock").clone();
    assert_eq!(heads.len(), paths.len(), "{heads:?}");
    for h in &heads {
        let l = h.to_ascii_lowercase();
        assert!(l.contains("\r\nhost: portal.example"), "{h}");
        assert!(l.contains("\r\nx-forwarded-for: 127.0.0.1"), "{h}");
        assert!(l.contains("\r\nx-forwarded-proto: http"), "{h}");
        assert!(l.contains("\r\nx-forwarded-host: portal.example"), "{h}");
        for gone in ["x-drop", "connection", "remote_user", "remote-user"] {
            assert!(!l.contains(&format!("\r\n{gone}:")), "{gone} reached the portal: {h}");
        }
    }
}

#[test]
fn dot_segments_never_make_a_path_public_and_huge_connection_lists_are_refused() {
    let r = Riegel::start_with(Options { extra_yaml: "public_paths: [\"/favicon.ico\", \"/assets/*\"]\n".into(), ..Options::default() });
    let mut c = r.client();
    assert_eq!(c.get("/assets/app.css").status, 200);
    for sneaky in ["/assets/../mieter", "/assets/%2e%2e/mieter", "/assets/..%2fmieter"] {
        let resp = c.get(sneaky);
        assert_eq!(resp.status, 303, "{sneaky} passed without a login");
        assert!(resp.location().contains("/_riegel/login"), "{sneaky}: {}", resp.location());
    }
    // Both ways: a GET (short way) and a POST (Pingora's way).
    let names: Vec<String> = (0..40).map(|i| format!("x-{i}")).collect();
    let conn = names.join(", ");
    let get = raw_request(r.addr, format!("GET /assets/app.css HTTP/1.1\r\nHost: x\r\nConnection: close, {conn}\r\n\r\n").as_bytes());
    assert_eq!(get.status, 400);
    let post = raw_request(r.addr, format!("POST /assets/app.css HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close, {conn}\r\n\r\n").as_bytes());
    assert_eq!(post.status, 400);
}

/// The system clock, as `riegel serve` reads it.
fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

#[test]
fn debug_and_trace_logs_hold_no_password_code_cookie_or_token() {
    for level in ["debug", "trace"] {
        logs_hold_no_secrets(level);
    }
}

/// A login with enrolment, portal requests (GET and POST, with a portal
/// cookie, one whose answer sets a cookie, one whose answer head is
/// unreadable), a refused head, a reset and a logout, against `riegel serve` with `RIEGEL_LOG=level`; then its log
/// is searched for every secret that passed.
fn logs_hold_no_secrets(level: &str) {
    let portal = crate::attack::RecordingPortal::start();
    let s = ServeProcess::start_with_env(&tempdir("serve"), portal.addr, "public_paths: [\"/pub/*\"]\n", &[("RIEGEL_LOG", level)]);
    let log = s.dir.join("stderr.log");
    let password = "Geheim-Passwort-4711";
    let mut add = std::process::Command::new(env!("CARGO_BIN_EXE_riegel"))
        .args(["user", "add", "lena", "--email", "lena@example.at", "--config"])
        .arg(&s.config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("user add");
    add.stdin.take().expect("stdin").write_all(format!("{password}\n").as_bytes()).expect("password");
    assert!(add.wait().expect("user add").success(), "user add failed");
    let mut secrets: Vec<String> = vec![password.to_string()];
    let mut codes: Vec<String> = Vec::new();
    let mut c = Client::new(s.addr);

    // Password, enrolment with the QR code, first code.
    let page = c.get("/_riegel/login");
    secrets.push(page.input("csrf").expect("csrf"));
    let resp = c.login("lena", password);
    assert_eq!((resp.status, resp.location()), (303, "/_riegel/setup"), "{}", resp.body);
    secrets.extend(c.jar.values().cloned());
    let setup = c.get("/_riegel/setup");
    let secret = secret_of_uri(&decode_qr_svg(&qr_svg_of(&setup.body)));
    secrets.push(secret.clone());
    let code = totp_code(&secret, unix_now());
    codes.push(code.clone());
    let activated = c.submit("/_riegel/setup/confirm", "/_riegel/setup/confirm", &[("code", &code)]);
    assert_eq!(activated.status, 200, "{}", activated.body);
    secrets.extend(recovery_codes_of(&activated.body));
    secrets.extend(c.jar.values().cloned());

    // The portal, both ways, with the portal's own cookie.
    let portal_cookie = "p0rtal-s3ssion-c00kie-value";
    c.jar.insert("portal_sid".into(), portal_cookie.into());
    secrets.push(portal_cookie.into());
    assert_eq!(c.get("/mieter/konto?auth=query-s3cret-token").status, 200);
    secrets.push("query-s3cret-token".into());
    assert_eq!(c.request("POST", "/mieter/konto", &[], Some("field=form-b0dy-s3cret")).status, 200);
    secrets.push("form-b0dy-s3cret".into());
    assert_eq!(c.request("POST", "/pub/cookie", &[], Some("a=b")).status, 200);
    assert_eq!(c.get("/pub/cookie").status, 200);
    secrets.push(crate::attack::PORTAL_SET_COOKIE.into());
    // An answer no parser takes is a 502 on both ways, and its bytes (a
    // cookie among them) are not quoted in the log.
    assert_eq!(c.get("/pub/badhead").status, 502);
    assert_eq!(c.request("POST", "/pub/badhead", &[], Some("a=b")).status, 502);
    let seen = portal.seen();
    assert!(seen.iter().any(|r| r.text().contains(portal_cookie)), "the portal cookie reached the portal");
    // A head riegel refuses, cookies and all.
    let session = c.session_cookie().expect("session");
    let refused = raw_request(s.addr, format!("GET /mieter HTTP/1.1\r\nHost: x\r\nCookie: portal_sid={portal_cookie}; riegel_session={session}\r\nBad Header: x\r\n\r\n").as_bytes());
    assert_eq!(refused.status, 400);

    // A reset: the token arrives by mail (the outbox).
    let sent = c.submit("/_riegel/forgot", "/_riegel/forgot", &[("username", "lena")]);
    assert_eq!(sent.status, 200, "{}", sent.body);
    let outbox = s.dir.join("outbox");
    let start = Instant::now();
    let mail = loop {
        let found = std::fs::read_dir(&outbox).ok().and_then(|d| d.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "eml")));
        if let Some(p) = found {
            let data = std::fs::read_to_string(&p).expect("mail");
            let text = ReceivedMail { from: String::new(), to: Vec::new(), data }.text();
            if text.contains("/_riegel/reset/") {
                break text;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no reset mail in {}", outbox.display());
        std::thread::sleep(Duration::from_millis(50));
    };
    let at = mail.find("/_riegel/reset/").expect("link");
    let path: String = mail[at..].chars().take_while(|c| !c.is_whitespace() && *c != '"' && *c != '<').collect();
    let token = path.trim_start_matches("/_riegel/reset/").to_string();
    assert!(token.len() >= 16, "{path}");
    secrets.push(token);
    let new_password = "Neues-Passwort-0815";
    secrets.push(new_password.into());
    let mut r = Client::new(s.addr);
    let done = r.submit(&path, &path, &[("password", new_password), ("password2", new_password)]);
    assert!(done.status == 200 || done.status == 303, "{} {}", done.status, done.body);
    secrets.extend(r.jar.values().cloned());
    // And out.
    let out = c.submit("/_riegel/logout", "/_riegel/logout", &[]);
    assert_eq!(out.status, 200, "{}", out.body);
    s.stop();

    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("DEBUG") && text.contains("request"), "{level}: riegel did not log at debug:\n{text}");
    for secret in secrets.iter().filter(|v| v.len() >= 6) {
        assert!(!text.contains(secret.as_str()), "{level}: the log holds a secret ({secret}):\n{text}");
    }
    // A 6-digit code may only turn up as the microseconds of a timestamp.
    for code in &codes {
        for (at, _) in text.match_indices(code.as_str()) {
            let before = text[..at].chars().last();
            let after = text[at + code.len()..].chars().next();
            assert!(before == Some('.') && after == Some('Z'), "{level}: the log holds the code {code}:\n{text}");
        }
    }
}
