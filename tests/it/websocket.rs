//! WebSocket upgrades after login: HTTP/1.1 `Upgrade: websocket` through
//! riegel to the portal, with the identity and without riegel's cookie;
//! frames both ways over the upgraded connection. Without a session the
//! upgrade never reaches the portal.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use sha1::{Digest, Sha1};

use crate::harness::*;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    data_encoding::BASE64.encode(&h.finalize())
}

fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap_or(0) == 0 {
            break;
        }
        buf.push(b[0]);
    }
    String::from_utf8_lossy(&buf).to_string()
}

/// One WebSocket frame: (opcode, payload), unmasked.
fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).expect("frame head");
    let masked = h[1] & 0x80 != 0;
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        let mut l = [0u8; 2];
        s.read_exact(&mut l).expect("len");
        len = u64::from(u16::from_be_bytes(l));
    }
    assert!(len < 126 || len < 65536, "short frames only");
    let mut mask = [0u8; 4];
    if masked {
        s.read_exact(&mut mask).expect("mask");
    }
    let mut p = vec![0u8; len as usize];
    s.read_exact(&mut p).expect("payload");
    if masked {
        for (i, b) in p.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    (h[0] & 0x0f, p)
}

fn write_frame(s: &mut TcpStream, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    assert!(payload.len() < 126);
    let mut f = vec![0x80 | opcode, payload.len() as u8 | if mask.is_some() { 0x80 } else { 0 }];
    match mask {
        Some(m) => {
            f.extend_from_slice(&m);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    s.write_all(&f).expect("frame");
}

/// A WebSocket echo portal: answers every upgrade with 101, echoes text
/// frames with a prefix, and reports each request head it got.
fn ws_portal() -> (SocketAddr, mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let head = read_head(&mut s);
                let _ = tx.send(head.clone());
                let key = head
                    .lines()
                    .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key")).map(|(_, v)| v.trim().to_string()));
                let Some(key) = key else {
                    let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
                    return;
                };
                let _ = write!(s, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n", accept_key(&key));
                loop {
                    let (op, p) = read_frame(&mut s);
                    if op == 8 {
                        write_frame(&mut s, 8, &[], None);
                        return;
                    }
                    let mut out = b"echo: ".to_vec();
                    out.extend_from_slice(&p);
                    write_frame(&mut s, 1, &out, None);
                }
            });
        }
    });
    (addr, rx)
}

fn upgrade(addr: SocketAddr, cookie: Option<&str>) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let cookie = cookie.map(|c| format!("Cookie: portal_pref=1; {c}\r\n")).unwrap_or_default();
    write!(
        s,
        "GET /chat HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nRemote-User: admin\r\n{cookie}\r\n"
    )
    .expect("write");
    let head = read_head(&mut s);
    (s, head)
}

#[test]
fn websocket_upgrade_after_login_reaches_the_portal_with_the_identity() {
    let (portal, heads) = ws_portal();
    let r = Riegel::start_with(Options { upstream: Some(portal), ..Options::default() });
    r.add_user("wilma", Some("wilma@example.at"), Some("Passwort-2024!"));

    // Without a session: the login page, and the portal hears nothing.
    let (_, head) = upgrade(r.addr, None);
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    assert!(heads.recv_timeout(Duration::from_millis(300)).is_err(), "an upgrade without session reached the portal");

    let mut c = r.client();
    login_and_enrol(&r, &mut c, "wilma", "Passwort-2024!");
    let session = c.session_cookie().expect("session");
    let (mut ws, head) = upgrade(r.addr, Some(&format!("riegel_session={session}")));
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    let seen = heads.recv_timeout(Duration::from_secs(5)).expect("the portal got the upgrade");
    let lower = seen.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket") && lower.contains("connection: upgrade"), "{seen}");
    assert!(seen.lines().any(|l| l.eq_ignore_ascii_case("remote-user: wilma")), "{seen}");
    assert!(!lower.contains("remote-user: admin"), "{seen}");
    assert!(!seen.contains(&session) && lower.contains("portal_pref=1"), "{seen}");

    // Frames both ways, several times, over the upgraded connection.
    for msg in ["Guten Tag", "zweite Nachricht"] {
        write_frame(&mut ws, 1, msg.as_bytes(), Some([1, 2, 3, 4]));
        let (op, p) = read_frame(&mut ws);
        assert_eq!((op, String::from_utf8_lossy(&p).to_string()), (1, format!("echo: {msg}")));
    }
    write_frame(&mut ws, 8, &[], Some([9, 9, 9, 9]));
    assert_eq!(read_frame(&mut ws).0, 8);
}
