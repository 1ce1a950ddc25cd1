//! Static files served under `/static/`: content types by file name and
//! strong ETags.

use std::sync::Arc;

#[derive(Debug)]
pub struct StaticAsset {
    pub content_type: &'static str,
    pub body: Arc<[u8]>,
    /// A strong ETag, quoted, ready for the `ETag` header.
    pub etag: String,
}

pub(super) fn content_type_for(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "css" => "text/css; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        _ => return None,
    })
}

pub(super) fn asset(content_type: &'static str, body: Vec<u8>) -> StaticAsset {
    // FNV-1a, 64 bit: stable across builds and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in &body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    StaticAsset {
        content_type,
        etag: format!("\"{h:016x}-{:x}\"", body.len()),
        body: Arc::from(body),
    }
}
