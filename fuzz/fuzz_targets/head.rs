//! riegel's request-head parser and way decision (`h1::way`): never a
//! panic; a short-way head keeps ranges into the buffer, and the head it
//! writes for the portal parses whole, holds only fields the client sent
//! (riegel's cookies cut out, no hop-by-hop, forwarding or identity field
//! in any spelling) and then riegel's own X-Forwarded-*.
//! Input: one flag byte (bit 0: from the trusted proxy), then the bytes.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use riegel::auth::session::find_cookie;
use riegel::proxy::fuzzing::{peer, Fuzz, WayView, COOKIES, IDENTITY};

static POLICY: OnceLock<Fuzz> = OnceLock::new();

/// Fields that never reach the portal from the client (folded names).
const DROPPED: [&str; 20] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy",
    "content-length",
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-forwarded",
];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, buf)) = data.split_first() else { return };
    let policy = POLICY.get_or_init(Fuzz::default);
    let from = peer(flags & 1 == 1);
    let Some(way) = policy.way(buf, from) else {
        // Incomplete: httparse must agree that nothing complete is there.
        assert!(common::request(buf).is_none(), "riegel waits for more of a complete head");
        return;
    };
    // What follows the head (a pipelined request) changes nothing.
    let mut more = buf.to_vec();
    more.extend_from_slice(b"GET / HTTP/1.1\r\n");
    let again = policy.way(&more, from);
    assert_eq!(format!("{:?}", Some(&way)), format!("{again:?}"), "bytes after the head change the decision");
    let WayView::Short(h) = way else { return };
    let p = common::request(buf).expect("riegel took the short way with a head httparse refuses");
    assert_eq!(h.len, p.len);
    assert!(h.len <= buf.len());
    assert!(p.method == b"GET" || p.method == b"HEAD");
    assert_eq!(h.head_only, p.method == b"HEAD");
    assert_eq!(p.version, 1);
    let path = &buf[h.path.clone()];
    assert_eq!(path.first(), Some(&b'/'));
    assert!(!path.contains(&b'?') && !path.contains(&b'#'));
    let target = match &h.query {
        Some(q) => {
            assert_eq!(q.start, h.path.end + 1);
            assert_eq!(buf[h.path.end], b'?');
            &buf[h.path.start..q.end]
        }
        None => path,
    };
    assert_eq!(target, &p.target[..]);
    // riegel reads the Cookie fields it was sent, all of them, in order.
    let cookies: Vec<&[u8]> = p.fields.iter().filter(|(n, _)| n.eq_ignore_ascii_case(b"cookie")).map(|(_, v)| &v[..]).collect();
    assert_eq!(h.cookie, (!cookies.is_empty()).then(|| cookies.join(&b"; "[..])));
    if let Some(o) = &h.origin {
        let first = p.fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(b"origin")).map(|(_, v)| &v[..]);
        assert_eq!(Some(&buf[o.clone()]), first);
    }
    if flags & 1 == 0 {
        assert_eq!(h.client, from, "an untrusted peer chose its address");
    }
    // The portal's head.
    let up = common::own_head(&h.upstream);
    assert_eq!(up.method, p.method);
    assert_eq!(up.target, p.target);
    let n = up.fields.len();
    assert!(n >= 2, "no X-Forwarded-*");
    let own = up.fields.iter().rposition(|(n, _)| n == b"x-forwarded-for").expect("X-Forwarded-For");
    let client = String::from_utf8_lossy(&up.fields[own].1).into_owned();
    assert!(client.starts_with(&h.client.to_string()), "X-Forwarded-For {client:?} for {}", h.client);
    assert!(client.ends_with(&from.to_string()), "X-Forwarded-For {client:?} without the peer {from}");
    let nominated: Vec<Vec<u8>> = p
        .fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
        .flat_map(|(_, v)| v.split(|&b| b == b',').map(|t| common::fold(t.trim_ascii())).collect::<Vec<_>>())
        .collect();
    let mut from_client = p.fields.iter();
    for (name, value) in &up.fields[..own] {
        let f = common::fold(name);
        assert!(
            !DROPPED.contains(&&*String::from_utf8_lossy(&f)) && !f.starts_with(b"x-forwarded-"),
            "{:?} reached the portal",
            String::from_utf8_lossy(name)
        );
        assert!(!IDENTITY.iter().any(|i| common::fold(i.as_bytes()) == f), "an identity field reached the portal");
        assert!(!nominated.contains(&f), "a field named in Connection reached the portal");
        if name.eq_ignore_ascii_case(b"cookie") {
            for c in COOKIES {
                assert!(find_cookie(value, c).is_none(), "riegel's cookie {c} reached the portal");
            }
            assert!(from_client.any(|(n, _)| n == name), "a Cookie field riegel made up");
        } else {
            // Each field as the client sent it (same name spelling, same
            // value bytes); groups keep the order within a name.
            assert!(
                p.fields.iter().any(|(n, v)| n == name && v == value),
                "{:?} is not a field the client sent",
                String::from_utf8_lossy(name)
            );
        }
    }
});
