//! The metrics listener (`metrics.listen`): Prometheus text at /metrics
//! on its own port, counters that move with logins and requests, and
//! nothing of it on the public port.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::*;

fn scrape(at: SocketAddr) -> String {
    let start = Instant::now();
    while TcpStream::connect(at).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "the metrics listener did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = raw_request(at, format!("GET /metrics HTTP/1.1\r\nHost: {at}\r\nConnection: close\r\n\r\n").as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("content-type").is_some_and(|t| t.starts_with("text/plain")), "{:?}", r.headers);
    r.body
}

/// The value of one series (`name{labels}` exactly as Prometheus writes
/// it, labels sorted by name), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

fn logins(stage: &str, result: &str) -> String {
    format!("riegel_logins_total{{result=\"{result}\",stage=\"{stage}\"}}")
}

fn requests(outcome: &str) -> String {
    format!("riegel_requests_total{{outcome=\"{outcome}\"}}")
}

/// Counters of the process: other tests running at the same time move
/// them too, so each is checked to have moved at least by this test's
/// share.
#[test]
fn counters_move_with_a_failed_and_a_successful_login_and_the_public_port_has_none() {
    let port = free_port();
    let at: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let r = Riegel::start_with(Options { extra_yaml: format!("metrics:\n  listen: \"{at}\"\n"), ..Options::default() });
    r.add_user("mia", Some("mia@example.at"), Some("Mia-Passwort-123"));
    let before = scrape(at);
    for name in ["riegel_active_sessions", "riegel_bans_active", "riegel_mail_queue_depth", "riegel_hash_queue_depth", "riegel_upstream_duration_seconds_bucket"] {
        assert!(before.contains(name), "{name} missing:\n{before}");
    }

    let mut c = r.client();
    // A portal page without a session: sent to the login page.
    assert_eq!(c.get("/mieter/start").status, 303);
    assert_eq!(c.login("mia", "Falsch-Passwort-1").status, 200);
    let enrolled = login_and_enrol(&r, &mut c, "mia", "Mia-Passwort-123");
    assert!(!enrolled.secret.is_empty());
    // Forwarded with the session, through both ways (GET: the short way,
    // POST: Pingora's framework).
    assert_eq!(c.get("/mieter/start").status, 200);
    assert_eq!(c.post("/mieter/formular", &[("a", "b")]).status, 200);
    // A refused head.
    assert_eq!(raw_request(r.addr, b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").status, 400);

    let after = scrape(at);
    let moved = |series: &str, by: f64| {
        let (b, a) = (value(&before, series), value(&after, series));
        assert!(a >= b + by, "{series}: {b} -> {a}, expected +{by}\n{after}");
    };
    moved(&logins("password", "failure"), 1.0);
    moved(&logins("password", "success"), 1.0);
    moved(&logins("second_factor", "success"), 1.0);
    moved(&requests("login_redirect"), 1.0);
    moved(&requests("forwarded"), 2.0);
    moved(&requests("own_page"), 4.0);
    moved(&requests("refused"), 1.0);
    moved("riegel_upstream_duration_seconds_count", 2.0);
    // The gauges are read from the store at scrape time.
    assert!(value(&after, "riegel_active_sessions") >= 1.0, "{after}");

    // The public port serves no metrics: riegel's own route does not
    // exist, and /metrics is the portal's path like any other.
    let mut anon = r.client();
    for path in ["/_riegel/metrics", "/metrics"] {
        let resp = anon.get(path);
        assert!(!resp.body.contains("riegel_requests_total"), "{path} on the public port shows metrics");
    }
    assert_eq!(anon.get("/_riegel/metrics").status, 404);
    assert_eq!(anon.get("/metrics").status, 303, "a portal path without a session goes to the login page");
    let with_session = c.get("/metrics");
    assert!(!with_session.body.contains("riegel_"), "the portal's /metrics, not riegel's: {}", with_session.body);
    assert!(with_session.echoed("remote-user").contains(&"mia".to_string()), "forwarded to the portal");
}

/// One `riegel serve` process: the figures are exactly this test's.
#[test]
fn a_serve_process_counts_exactly_and_refuses_metrics_on_the_public_address() {
    let dir = tempdir("metrics-serve");
    let portal = riegel::demo::start_portal("127.0.0.1:0".parse().expect("addr")).expect("portal");
    let port = free_port();
    let at: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let serve = ServeProcess::start(&dir, portal, &format!("metrics:\n  listen: \"{at}\"\n"));
    let out = serve.cli(&["user", "add", "nora"], Some("Nora-Passwort-12\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = scrape(at);
    assert_eq!(value(&before, &logins("password", "failure")), 0.0, "{before}");
    let mut c = Client::new(serve.addr);
    assert_eq!(c.login("nora", "Falsch-Passwort-1").status, 200);
    assert_eq!(c.login("nora", "Nora-Passwort-12").status, 303);
    let after = scrape(at);
    assert_eq!(value(&after, &logins("password", "failure")), 1.0, "{after}");
    assert_eq!(value(&after, &logins("password", "success")), 1.0, "{after}");
    assert_eq!(value(&after, &logins("second_factor", "success")), 0.0);
    // One password-stage session.
    assert_eq!(value(&after, "riegel_active_sessions"), 1.0, "{after}");
    assert_eq!(value(&after, "riegel_bans_active"), 0.0);
    assert_eq!(value(&after, "riegel_hash_queue_depth"), 0.0);
    serve.stop();

    // The public address is refused as the metrics' address.
    let cfg = std::fs::read_to_string(dir.join("riegel.yaml")).expect("config");
    let public = cfg.lines().find_map(|l| l.strip_prefix("listen: ")).expect("listen").trim_matches('"').to_string();
    std::fs::write(dir.join("riegel.yaml"), cfg.replace(&format!("listen: \"{at}\""), &format!("listen: \"{public}\""))).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_riegel")).args(["check-config", "--config"]).arg(dir.join("riegel.yaml")).output().expect("check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("metrics.listen"), "{err}");
}
