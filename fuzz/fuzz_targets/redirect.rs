//! The `rd` redirect-target check (`auth::redirect::safe_redirect`): an
//! accepted target is the input itself, starts with exactly one `/`, and
//! neither it nor any decoding of it (percent-decoded again and again)
//! starts with `//` or `/\`, or holds a backslash or a control character.
#![no_main]

use libfuzzer_sys::fuzz_target;
use riegel::auth::redirect::{encode_rd, safe_redirect};

fn check(original: &str, s: &str) {
    let b = s.as_bytes();
    assert!(!(b.len() > 1 && b[0] == b'/' && (b[1] == b'/' || b[1] == b'\\')), "{original:?} accepted: decodes to {s:?}");
    assert!(!s.contains('\\'), "{original:?} accepted: decodes to {s:?} with a backslash");
    assert!(!s.chars().any(char::is_control), "{original:?} accepted: decodes to {s:?} with a control character");
}

fuzz_target!(|data: &[u8]| {
    let Ok(rd) = std::str::from_utf8(data) else { return };
    let Some(ok) = safe_redirect(rd) else { return };
    assert_eq!(ok, rd);
    assert!(rd.starts_with('/'), "{rd:?} accepted without a leading /");
    check(rd, rd);
    let mut s = rd.to_string();
    // Every escape decoded shortens the text: this ends.
    loop {
        let next = percent_encoding::percent_decode_str(&s).decode_utf8_lossy().into_owned();
        check(rd, &next);
        if next == s {
            break;
        }
        s = next;
    }
    // What the login page puts into its links decodes back.
    let enc = encode_rd(rd);
    assert_eq!(percent_encoding::percent_decode_str(&enc).decode_utf8_lossy(), rd);
});
