//! What the fuzz targets (fuzz/) found, over real sockets: each request or
//! answer that broke a rule before its fix.

use std::io::{Read, Write};
use std::net::TcpListener;

use crate::attack::{once, riegel_with_portal, session};
use crate::harness::*;

/// fuzz/differential: httparse takes these targets, Pingora's way refuses
/// them; the short way forwarded them to the portal. Now both ways answer
/// 400 and the portal sees nothing, public path or not.
#[test]
fn targets_pingora_refuses_never_reach_the_portal_on_either_way() {
    let (r, portal) = riegel_with_portal("");
    // With a session: before the fix the GET reached the portal.
    let c = format!("Cookie: riegel_session={}\r\n", session(&r));
    let _ = portal.take();
    let odd = ["`", "a<b", "a>b", "a?q=\"x\"", "a?q=<x>", "a?q=>"];
    for target in odd.iter().flat_map(|o| [format!("/pub/{o}"), format!("/mieter/{o}")]) {
        for req in [
            format!("GET {target} HTTP/1.1\r\nHost: riegel.test\r\n{c}\r\n"),
            format!("HEAD {target} HTTP/1.1\r\nHost: riegel.test\r\n{c}\r\n"),
            format!("POST {target} HTTP/1.1\r\nHost: riegel.test\r\n{c}Content-Length: 3\r\n\r\nabc"),
        ] {
            let a = once(r.addr, req.as_bytes());
            let seen = portal.take();
            assert!(seen.is_empty(), "{req:?} reached the portal: {:?}", seen.iter().map(|s| s.request_line()).collect::<Vec<_>>());
            if let Some(a) = a {
                assert_eq!(a.status, 400, "{req:?}");
            }
        }
    }
    // Escaped, the target is readable: not plain, so it needs a session
    // (the login page); a plain public path still reaches the portal.
    let a = once(r.addr, b"GET /pub/%60 HTTP/1.1\r\nHost: riegel.test\r\n\r\n").expect("answer");
    assert_eq!(a.status, 303);
    assert!(portal.take().is_empty());
    let a = once(r.addr, b"GET /pub/a HTTP/1.1\r\nHost: riegel.test\r\n\r\n").expect("answer");
    assert_eq!(a.status, 200);
    assert_eq!(portal.take().len(), 1);
}

/// fuzz/answer: httparse reads any three digits as a status, and the short
/// way relayed `002` to the client. Now it is a bad answer (502).
#[test]
fn an_answer_with_a_status_below_100_is_a_bad_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind portal");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 002 KO\r\nContent-Length: 2\r\n\r\nok");
            });
        }
    });
    let r = Riegel::start_with(Options {
        upstream: Some(addr),
        extra_yaml: "public_paths: [\"/pub/*\"]\n".into(),
        ..Options::default()
    });
    for req in [&b"GET /pub/a HTTP/1.1\r\nHost: riegel.test\r\n\r\n"[..], b"HEAD /pub/a HTTP/1.1\r\nHost: riegel.test\r\n\r\n"] {
        let a = once(r.addr, req).expect("an answer");
        assert_eq!(a.status, 502, "{:?}: {a:?}", String::from_utf8_lossy(req));
    }
}
