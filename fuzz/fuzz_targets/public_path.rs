//! The public-path check (`web::paths`): an accepted path starts with `/`
//! and holds no `;`, `#`, `\`, `?`, empty segment but the last, dot
//! segment (escapes decoded), or `%` escape that decodes to anything but
//! an unreserved character; and a listed path is public only if plain.
#![no_main]

use libfuzzer_sys::fuzz_target;
use riegel::web::paths::{is_public, plain_path};

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The path's segments with escapes decoded, or why it is not plain.
fn decoded_segments(p: &str) -> Result<Vec<Vec<u8>>, String> {
    let rest = p.strip_prefix('/').ok_or("no leading /")?;
    let mut out = Vec::new();
    for seg in rest.split('/') {
        let b = seg.as_bytes();
        let mut d = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'%' => {
                    let hex = b.get(i + 1..i + 3).ok_or("short escape")?;
                    let hex = std::str::from_utf8(hex).map_err(|_| "escape not ASCII")?;
                    let v = u8::from_str_radix(hex, 16).map_err(|_| format!("bad escape %{hex}"))?;
                    if !unreserved(v) {
                        return Err(format!("escape %{hex} of a reserved character"));
                    }
                    d.push(v);
                    i += 3;
                }
                c if unreserved(c) || c == b'@' || c == b'+' => {
                    d.push(c);
                    i += 1;
                }
                c => return Err(format!("byte {c:#x}")),
            }
        }
        out.push(d);
    }
    Ok(out)
}

const PUBLIC: [&str; 3] = ["/assets/*", "/favicon.ico", "/"];

fuzz_target!(|data: &[u8]| {
    let Ok(p) = std::str::from_utf8(data) else { return };
    let public: Vec<String> = PUBLIC.iter().map(|s| s.to_string()).collect();
    let plain = plain_path(p);
    if is_public(&public, p) {
        assert!(plain, "{p:?} public but not plain");
    }
    if !plain {
        return;
    }
    for c in [';', '#', '\\', '?'] {
        assert!(!p.contains(c), "{p:?} plain with {c:?}");
    }
    let segs = decoded_segments(p).unwrap_or_else(|e| panic!("{p:?} plain: {e}"));
    let last = segs.len() - 1;
    for (i, s) in segs.iter().enumerate() {
        assert!(!s.is_empty() || i == last, "{p:?} plain with an empty segment");
        assert!(s.is_empty() || !s.iter().all(|&b| b == b'.'), "{p:?} plain with a dot segment");
    }
});
