//! The portal's answer head (`h1::response`) and the chunk scanner
//! (`h1::Chunks`): never a panic; the head riegel writes for the client
//! parses whole and has no hop-by-hop field; a chunked body's end is found
//! at the same byte however the body is split into reads.
//! Input: one flag byte (bit 0: the request was HEAD; the rest: where to
//! split the body), then the portal's bytes.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use riegel::proxy::fuzzing::{answer, chunked_end, AnswerView, FramingView};

/// The scanner over `body` whole, in two reads split at `at`, and byte by
/// byte (short bodies): one answer.
fn scan(body: &[u8], at: usize) -> Result<Option<usize>, String> {
    let whole = chunked_end([body]);
    let at = at.min(body.len());
    let (a, b) = body.split_at(at);
    assert_eq!(whole, chunked_end([a, b]), "split at {at} changes the end");
    if body.len() <= 512 {
        assert_eq!(whole, chunked_end(body.chunks(1)), "byte by byte changes the end");
    }
    if let Ok(Some(n)) = whole {
        assert!(n <= body.len());
        // The body ends where it ends: what follows is not read.
        assert_eq!(chunked_end([&body[..n]]), Ok(Some(n)), "the body is not whole without what follows");
    }
    whole
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, buf)) = data.split_first() else { return };
    let head_only = flags & 1 == 1;
    let at = usize::from(flags >> 1);
    // Any bytes through the scanner, framed or not.
    let _ = scan(buf, at);
    let Ok(view) = answer(buf, head_only) else { return };
    match view {
        AnswerView::Partial => {}
        AnswerView::Informational(n) => assert!(n <= buf.len() && n > 0),
        AnswerView::Final { len, status, framing, upstream_close, downstream } => {
            assert!(len <= buf.len());
            assert!((200..1000).contains(&status) && status != 101);
            let mut d = downstream.clone();
            d.extend_from_slice(b"\r\n");
            let mut h = vec![httparse::EMPTY_HEADER; 256];
            let mut r = httparse::Response::new(&mut h);
            let parsed = r.parse(&d);
            assert_eq!(parsed, Ok(httparse::Status::Complete(d.len())), "riegel wrote an answer head httparse cannot read: {:?}", String::from_utf8_lossy(&d));
            assert_eq!(r.code, Some(status));
            assert_eq!(r.version, Some(1));
            for f in r.headers.iter() {
                let n = f.name.to_ascii_lowercase();
                assert!(!["connection", "keep-alive", "proxy-connection", "trailer"].contains(&n.as_str()), "{n} reached the client");
                if framing == FramingView::Chunked {
                    assert_ne!(n, "content-length", "Content-Length next to chunked");
                }
            }
            if head_only || status == 204 || status == 304 {
                assert_eq!(framing, FramingView::Empty);
            }
            if framing == FramingView::UntilClose || head_only {
                assert!(upstream_close, "a portal connection without a known end is reused");
            }
            if framing == FramingView::Chunked {
                let _ = scan(&buf[len..], at);
            }
        }
    }
});
