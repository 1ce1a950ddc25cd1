//! Which portal paths need no login: the public-path rule.
//!
//! A path is public when `public_paths` lists it (exactly, or by a prefix
//! ending in `*`) and it is plain: every server, whatever it makes of path
//! parameters, escapes and dot segments, resolves it to the same place.
//! Anything unusual needs a session: riegel fails closed, because the
//! portal may resolve `/assets/..;/secret` (Tomcat, Jetty), `/assets/..#`
//! (anything that cuts the fragment), `/assets/%252e%252e/secret` (a
//! second decoding), `/assets/%c0%ae%c0%ae/` (overlong UTF-8) or
//! `/assets/..%20/` (trimming) to a page that is not public.

/// Whether `path` (raw, not decoded, without the query) may reach the
/// portal without a session.
pub fn is_public(public: &[String], path: &str) -> bool {
    let listed = public.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == p,
    });
    listed && plain_path(path)
}

/// An unreserved character (RFC 3986 2.3): the only ones an escape may
/// stand for.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// A character a plain path may hold as it is: unreserved ones, `/`, and
/// `@` and `+`, which asset names use (`logo@2x.png`) and no server reads
/// as anything but themselves in a path.
fn plain_byte(b: u8) -> bool {
    unreserved(b) || matches!(b, b'/' | b'@' | b'+')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// A path that means the same to every server: it starts with `/`; it
/// holds only plain bytes (`plain_byte`) and `%XX` escapes of unreserved characters
/// (so no `;`, `#`, `\`, `%`, controls, spaces or non-ASCII bytes, raw or
/// escaped); no segment is empty but the last (no `//`); and no segment,
/// escapes decoded, is only dots (`.`, `..`, `...`).
pub fn plain_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else { return false };
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if seg.is_empty() {
            if last {
                break;
            }
            return false;
        }
        let b = seg.as_bytes();
        let (mut i, mut only_dots) = (0, true);
        while i < b.len() {
            let c = if b[i] == b'%' {
                let (Some(&h), Some(&l)) = (b.get(i + 1), b.get(i + 2)) else { return false };
                let (Some(h), Some(l)) = (hex(h), hex(l)) else { return false };
                let d = h * 16 + l;
                if !unreserved(d) {
                    return false;
                }
                i += 3;
                d
            } else if plain_byte(b[i]) {
                i += 1;
                b[i - 1]
            } else {
                return false;
            };
            only_dots &= c == b'.';
        }
        if only_dots {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public() -> Vec<String> {
        vec!["/favicon.ico".to_string(), "/assets/*".to_string()]
    }

    #[test]
    fn listed_plain_paths_are_public() {
        let p = public();
        for ok in [
            "/favicon.ico",
            "/assets/app.css",
            "/assets/app.min.css",
            "/assets/a..b.css",
            "/assets/.hidden",
            "/assets/img/logo@2x.png",
            "/assets/c++.pdf",
            "/assets/x-y_z~1.js",
            "/assets/%61pp.css",
            "/assets/a%2eb.css",
            "/assets/dir/",
        ] {
            assert!(is_public(&p, ok), "{ok}");
        }
        for no in ["/favicon.ico/x", "/favicon.icox", "/", "/asset/x", "/assetsx/y", "/mieter"] {
            assert!(!is_public(&p, no), "{no}");
        }
    }

    #[test]
    fn paths_a_server_could_resolve_elsewhere_are_never_public() {
        let p = public();
        for sneaky in [
            // Path parameters (Tomcat, Jetty strip them).
            "/assets/..;/mieter",
            "/assets/..;jsessionid=1/mieter",
            "/assets/;/../mieter",
            "/assets/x;a=b",
            // Fragments.
            "/assets/..#",
            "/assets/..#/x",
            "/assets/x#y",
            // Dot segments, raw and escaped, and empty segments.
            "/assets/../mieter/konto",
            "/assets/./x/../../mieter",
            "/assets/..",
            "/assets/.",
            "/assets/...",
            "/assets/....",
            "/assets/%2e%2e/mieter",
            "/assets/%2E%2e/mieter",
            "/assets/.%2e/mieter",
            "/assets/%2e./mieter",
            "/assets/%2e",
            "/assets//../mieter",
            "/assets//x",
            // Escapes of anything but unreserved characters, double and
            // overlong encodings, %u, broken escapes.
            "/assets/..%2fmieter",
            "/assets/..%2Fmieter",
            "/assets/..%5Cmieter",
            "/assets/x%00.css",
            "/assets/%252e%252e/mieter",
            "/assets/%25%32%65%25%32%65/mieter",
            "/assets/%c0%ae%c0%ae/mieter",
            "/assets/%C0%AE./mieter",
            "/assets/%e0%80%ae/mieter",
            "/assets/%u002e%u002e/mieter",
            "/assets/%U002E./mieter",
            "/assets/..%09/mieter",
            "/assets/..%20/mieter",
            "/assets/..%0d%0a/mieter",
            "/assets/x%3f.css",
            "/assets/x%40y.css",
            "/assets/%",
            "/assets/%2",
            "/assets/%zz",
            // Backslashes, controls, spaces, non-ASCII, other punctuation.
            "/assets/..\\mieter",
            "/assets\\..\\mieter",
            "/assets/x\ty",
            "/assets/x y",
            "/assets/\u{e4}.css",
            "/assets/x'.css",
            "/assets/x\".css",
            "/assets/x{y}.css",
            "/assets/x|y.css",
            "/assets/x`y.css",
            "/assets/x^y.css",
            "/assets/x:y.css",
            "/assets/x!y.css",
            "/assets/x$y.css",
            "/assets/x&y.css",
            "/assets/x*y.css",
            "/assets/x=y.css",
            "/assets/x,y.css",
            "/assets/x(y).css",
            "/assets/x[y].css",
            "/assets/x<y>.css",
        ] {
            assert!(!is_public(&p, sneaky), "{sneaky}");
            assert!(!plain_path(sneaky), "{sneaky}");
        }
        assert!(!plain_path("assets/x"));
        assert!(!plain_path(""));
        assert!(!plain_path("*"));
    }
}
