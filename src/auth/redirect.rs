//! Validation of redirect targets (`rd`): only same-origin relative paths.

/// Accepts `/path?query` only: exactly one leading `/`, no `//` or `/\`
/// (protocol-relative), no backslashes, no control characters, and none of
/// these hidden behind percent-encoding. Anything else falls back to `/`.
pub fn safe_redirect(rd: &str) -> Option<&str> {
    if rd.is_empty() || rd.len() > 2048 {
        return None;
    }
    let b = rd.as_bytes();
    if b[0] != b'/' {
        return None;
    }
    if b.len() > 1 && (b[1] == b'/' || b[1] == b'\\') {
        return None;
    }
    if rd.bytes().any(|c| c.is_ascii_control() || c == b'\\' || c == b' ' || c >= 0x80) {
        return None;
    }
    // Look through percent-encoding, again and again (double encoding and
    // more), until nothing changes; a target still changing after
    // `MAX_DECODINGS` is refused. Controls include C1 (`%C2%85`, found by
    // fuzz/redirect).
    let mut decoded = rd.to_string();
    for _ in 0..MAX_DECODINGS {
        let next = percent_encoding::percent_decode_str(&decoded).decode_utf8_lossy().into_owned();
        if next.chars().any(|c| c.is_control() || c == '\\') {
            return None;
        }
        let nb = next.as_bytes();
        if nb.len() > 1 && nb[0] == b'/' && (nb[1] == b'/' || nb[1] == b'\\') {
            return None;
        }
        if next == decoded {
            return Some(rd);
        }
        decoded = next;
    }
    None
}

/// Percent-decodings of `rd` looked through; a real target needs one or two.
const MAX_DECODINGS: usize = 8;

/// Percent-encodes a path-and-query for use as the `rd` query value.
pub fn encode_rd(path_and_query: &str) -> String {
    percent_encoding::utf8_percent_encode(path_and_query, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_same_origin_paths() {
        for ok in ["/", "/mieter/dokumente", "/a?b=c&d=%2Fe", "/path#frag", "/a/./b"] {
            assert_eq!(safe_redirect(ok), Some(ok), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "https://evil.example/",
            "//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/%2Fevil.example",
            "/%2fevil.example",
            "/%5Cevil.example",
            "/%252Fevil.example",
            "javascript:alert(1)",
            "/a\r\nSet-Cookie: x=y",
            "/a%0d%0aSet-Cookie:x",
            "/a%00",
            "evil.example",
            "/ä",
            // Found by fuzz/redirect: a C1 control, and encodings deeper than
            // three decodings.
            "/%C2%85evil",
            "/a%C2%9B",
            "/%2525252F%2525252Fevil.example",
            "/%25252525252525252541",
        ] {
            assert_eq!(safe_redirect(bad), None, "{bad:?} accepted");
        }
    }

    #[test]
    fn encoding_round_trips() {
        let e = encode_rd("/a b?x=1&y=/z");
        assert_eq!(e, "%2Fa%20b%3Fx%3D1%26y%3D%2Fz");
        assert_eq!(percent_encoding::percent_decode_str(&e).decode_utf8().expect("utf8"), "/a b?x=1&y=/z");
    }
}
