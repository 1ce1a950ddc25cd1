//! Differential: whenever riegel's way decision accepts a head (the short
//! way or Pingora's framework), httparse and Pingora's own HTTP/1 reader
//! (the one the framework's way reads the head with) accept it too and
//! read the same method, target and fields (same names, same value bytes,
//! in order), and the same head length.
//! Input: one flag byte (bit 0: from the trusted proxy), then the bytes.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use std::io::Cursor;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pingora::protocols::http::v1::server::HttpSession;
use riegel::proxy::fuzzing::{peer, Fuzz, WayView};

static POLICY: OnceLock<Fuzz> = OnceLock::new();

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, buf)) = data.split_first() else { return };
    let policy = POLICY.get_or_init(Fuzz::default);
    let way = policy.way(buf, peer(flags & 1 == 1));
    let (Some(WayView::Short(_)) | Some(WayView::Framework)) = way else { return };
    let h = common::request(buf).expect("riegel accepted a head httparse refuses");

    // Pingora's reader over the same bytes, as the framework's way gets them.
    let pingora = RT.with(|rt| {
        rt.block_on(async {
            let mut s = HttpSession::new(Box::new(Cursor::new(buf.to_vec())));
            match s.read_request().await {
                Ok(Some(len)) => Ok((len, s.req_header().clone())),
                Ok(None) => Err("no head".to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
    });
    let (len, req) = pingora.unwrap_or_else(|e| {
        panic!("riegel accepted ({}) a head Pingora refuses: {e}", if matches!(way, Some(WayView::Short(_))) { "short" } else { "framework" })
    });
    assert_eq!(len, h.len, "Pingora's head ends elsewhere");
    assert_eq!(req.method.as_str().as_bytes(), &h.method[..], "method");
    assert_eq!(req.raw_path(), &h.target[..], "target");
    // Pingora's map groups fields by name in first-appearance order.
    let mut theirs: Vec<(Vec<u8>, Vec<Vec<u8>>)> = Vec::new();
    for (n, v) in req.headers.iter() {
        let n = n.as_str().as_bytes().to_vec();
        match theirs.iter_mut().find(|(m, _)| *m == n) {
            Some((_, vs)) => vs.push(v.as_bytes().to_vec()),
            None => theirs.push((n, vec![v.as_bytes().to_vec()])),
        }
    }
    assert_eq!(theirs, common::grouped(&h.fields), "fields");
});
