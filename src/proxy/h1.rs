//! HTTP/1.1 heads and framing for the short way, on bytes: a request head
//! is parsed once (httparse), the fields riegel decides on are kept as
//! ranges into the client's buffer, and the head the portal gets is written
//! in the same pass; the portal's answer is parsed once, its head copied
//! without hop-by-hop headers, its body relayed as it comes (chunked bodies
//! are scanned, not decoded, to find their end). No I/O here.

use std::ops::Range;

use crate::web::headers::same_header;

/// Headers looked at in a request head; a request with more takes Pingora's
/// way (Pingora allows 256).
const MAX_REQUEST_HEADERS: usize = 96;

/// Headers in an answer from the portal; more is a bad answer.
const MAX_RESPONSE_HEADERS: usize = 128;

/// What a request head, read in full, asks for.
// Not boxed: `Short` is what nearly every request is, and a box would be
// one more allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Way {
    /// An HTTP/1.1 GET or HEAD in origin form, without body, upgrade or
    /// `Expect`, and no header that would need Pingora's rules: served on
    /// bytes.
    Short(ShortHead),
    /// Anything else, including heads Pingora will refuse.
    Framework,
}

/// A request head for the short way. Ranges index the client's buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ShortHead {
    /// Length of the head, blank line included.
    pub len: usize,
    pub head_only: bool,
    pub path: Range<usize>,
    pub query: Option<Range<usize>>,
    pub cookie: Option<Range<usize>>,
    pub origin: Option<Range<usize>>,
    pub sec_fetch_site: Option<Range<usize>>,
    pub host: Option<Range<usize>>,
    pub x_forwarded_for: Option<Range<usize>>,
    pub x_forwarded_proto: Option<Range<usize>>,
    pub x_forwarded_host: Option<Range<usize>>,
    /// The client asked to close the connection after this request.
    pub close: bool,
    /// The head for the portal so far: request line and the client's
    /// headers minus hop-by-hop ones, identity headers in any spelling,
    /// X-Forwarded-* and riegel's cookies. No blank line yet.
    pub upstream: Vec<u8>,
}

/// The names that never reach the portal from the client.
pub(super) struct Strip<'a> {
    pub identity: [&'a str; 3],
    pub cookies: [&'a str; 2],
}

fn range(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

fn is(name: &str, lower: &str) -> bool {
    name.eq_ignore_ascii_case(lower)
}

/// Hop-by-hop headers (RFC 9110 7.6.1), and the forwarding headers riegel
/// sets itself, in any spelling (`_` for `-`: some servers fold them).
fn never_forwarded(name: &str) -> bool {
    ["connection", "keep-alive", "proxy-connection", "te", "trailer"].iter().any(|h| is(name, h))
        || FORWARDING.iter().any(|h| same_header(name, h))
}

/// Forwarding headers: riegel's own X-Forwarded-* replace the client's;
/// a client's `Forwarded` would be a second, unchecked say.
pub(crate) const FORWARDING: [&str; 4] = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"];

/// Headers a request must not name in `Connection` for the short way: riegel
/// decides on them, so removing them would make the two ways differ.
const READ_BY_RIEGEL: [&str; 8] =
    ["host", "cookie", "origin", "sec-fetch-site", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "content-length"];

/// `Content_Length`, `transfer_encoding` and the like: the framing headers
/// in a spelling only a server that folds `_` into `-` understands.
pub(super) fn folded_framing(name: &str) -> bool {
    (same_header(name, "content-length") && !is(name, "content-length"))
        || (same_header(name, "transfer-encoding") && !is(name, "transfer-encoding"))
}

/// How many names one `Connection` value lists, counted as both ways count
/// them against their limit: every comma-separated piece.
pub(super) fn connection_names(value: &[u8]) -> usize {
    value.split(|&b| b == b',').count()
}

/// Decides the way for the bytes read so far; `None` while the head is
/// incomplete.
pub(super) fn way(buf: &[u8], strip: &Strip<'_>) -> Option<Way> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some(Way::Framework),
        Ok(httparse::Status::Complete(len)) => len,
    };
    Some(short(buf, &req, len, strip).map_or(Way::Framework, Way::Short))
}

fn short(buf: &[u8], req: &httparse::Request<'_, '_>, len: usize, strip: &Strip<'_>) -> Option<ShortHead> {
    let method = req.method?;
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return None,
    };
    let target = req.path?;
    if req.version != Some(1) || !target.starts_with('/') {
        return None;
    }
    let mut h = ShortHead {
        len,
        head_only,
        path: range(buf, target.as_bytes()),
        query: None,
        cookie: None,
        origin: None,
        sec_fetch_site: None,
        host: None,
        x_forwarded_for: None,
        x_forwarded_proto: None,
        x_forwarded_host: None,
        close: false,
        upstream: Vec::with_capacity(len + 256),
    };
    if let Some(q) = target.find('?') {
        h.path = h.path.start..h.path.start + q;
        h.query = Some(h.path.end + 1..h.path.start + target.len());
    }
    // First pass: what the head says about itself.
    let mut connection_tokens: Vec<&str> = Vec::new();
    let mut connection_count = 0;
    for hd in req.headers.iter() {
        let n = hd.name;
        let once = |slot: &mut Option<Range<usize>>| -> Option<()> {
            if slot.is_some() {
                return None; // repeated: Pingora's way
            }
            std::str::from_utf8(hd.value).ok()?;
            *slot = Some(range(buf, hd.value));
            Some(())
        };
        if is(n, "content-length") {
            if hd.value != b"0" {
                return None;
            }
        } else if is(n, "transfer-encoding") || is(n, "upgrade") || is(n, "expect") {
            return None;
        } else if folded_framing(n) {
            // A server that folds `_` would see a body riegel does not;
            // Pingora's way decides (and drops the header).
            return None;
        } else if is(n, "cookie") {
            once(&mut h.cookie)?;
        } else if is(n, "origin") {
            once(&mut h.origin)?;
        } else if is(n, "sec-fetch-site") {
            once(&mut h.sec_fetch_site)?;
        } else if is(n, "host") {
            once(&mut h.host)?;
        } else if is(n, "x-forwarded-for") {
            once(&mut h.x_forwarded_for)?;
        } else if is(n, "x-forwarded-proto") {
            once(&mut h.x_forwarded_proto)?;
        } else if is(n, "x-forwarded-host") {
            once(&mut h.x_forwarded_host)?;
        } else if is(n, "connection") {
            connection_count += connection_names(hd.value);
            if connection_count > super::MAX_CONNECTION_TOKENS {
                return None; // Pingora's way refuses it
            }
            for t in std::str::from_utf8(hd.value).ok()?.split(',').map(str::trim) {
                if is(t, "close") {
                    h.close = true;
                } else if !t.is_empty() && !is(t, "keep-alive") {
                    if READ_BY_RIEGEL.iter().chain(strip.identity.iter()).any(|r| same_header(t, r)) {
                        return None;
                    }
                    connection_tokens.push(t);
                }
            }
        }
    }
    // Second pass: the head for the portal.
    let up = &mut h.upstream;
    up.extend_from_slice(method.as_bytes());
    up.push(b' ');
    up.extend_from_slice(target.as_bytes());
    up.extend_from_slice(b" HTTP/1.1\r\n");
    for hd in req.headers.iter() {
        let n = hd.name;
        if never_forwarded(n)
            || is(n, "content-length")
            || strip.identity.iter().any(|id| same_header(n, id))
            || connection_tokens.iter().any(|t| same_header(n, t))
        {
            continue;
        }
        if is(n, "cookie") {
            let value = std::str::from_utf8(hd.value).ok()?;
            if strip.cookies.iter().any(|c| value.contains(c)) {
                if let Some(kept) = crate::auth::session::strip_cookie(value, &strip.cookies) {
                    push_header(up, "cookie", kept.as_bytes());
                }
                continue;
            }
        }
        push_header(up, n, hd.value);
    }
    Some(h)
}

/// Whether `value` can be sent as a header value as is: no control
/// characters but tab (so no CR or LF).
pub(super) fn valid_value(value: &[u8]) -> bool {
    value.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

pub(super) fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How the portal's answer body ends.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Read until the portal closes: neither connection is reused.
    UntilClose,
}

/// A final answer head from the portal.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The portal's connection cannot carry another request.
    pub upstream_close: bool,
    /// The head for the client so far: status line and headers minus
    /// hop-by-hop ones. No blank line yet.
    pub downstream: Vec<u8>,
}

/// What a portal's bytes hold so far.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Response {
    Partial,
    /// 1xx (but 101): skip `len` bytes and read on.
    Informational(usize),
    Final(ResponseHead),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad answer from the portal: {0}")]
pub(super) struct BadResponse(pub &'static str);

/// Parses the portal's answer to a GET (`head_only`: HEAD).
pub(super) fn response(buf: &[u8], head_only: bool) -> Result<Response, BadResponse> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(Response::Partial),
        Ok(httparse::Status::Complete(len)) => len,
        Err(_) => return Err(BadResponse("unparsable head")),
    };
    let status = res.code.ok_or(BadResponse("no status"))?;
    if status == 101 {
        return Err(BadResponse("101 without an upgrade request"));
    }
    if (100..200).contains(&status) {
        return Ok(Response::Informational(len));
    }
    let http10 = res.version == Some(0);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut other_coding = false;
    let mut close = http10;
    let mut connection_tokens: Vec<&str> = Vec::new();
    for hd in res.headers.iter() {
        let n = hd.name;
        if is(n, "content-length") {
            let v = std::str::from_utf8(hd.value).ok().filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
            let v: u64 = v.and_then(|v| v.parse().ok()).ok_or(BadResponse("bad Content-Length"))?;
            if length.is_some_and(|l| l != v) {
                return Err(BadResponse("conflicting Content-Length"));
            }
            length = Some(v);
        } else if is(n, "transfer-encoding") {
            let v = std::str::from_utf8(hd.value).map_err(|_| BadResponse("bad Transfer-Encoding"))?;
            let last = v.rsplit(',').next().map(str::trim).unwrap_or("");
            chunked = is(last, "chunked");
            other_coding = !chunked;
        } else if is(n, "connection") {
            let v = std::str::from_utf8(hd.value).map_err(|_| BadResponse("bad Connection"))?;
            for t in v.split(',').map(str::trim) {
                if is(t, "close") {
                    close = true;
                } else if is(t, "keep-alive") {
                    close = close && !http10;
                } else if !t.is_empty() && !is(t, "content-length") && !is(t, "transfer-encoding") {
                    // Framing headers stay whatever Connection says: the
                    // client needs them to find the end of the answer.
                    connection_tokens.push(t);
                }
            }
        }
    }
    let bodiless = head_only || status == 204 || status == 304;
    let framing = if bodiless {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if other_coding {
        Framing::UntilClose
    } else if let Some(l) = length {
        Framing::Length(l)
    } else {
        Framing::UntilClose
    };
    // Both Content-Length and Transfer-Encoding: answered by the coding,
    // and the portal's connection is not trusted with another request.
    // After HEAD the portal's connection is not reused either: a portal that
    // runs GET for HEAD may send the body late, and the next request on
    // that connection would read it as its answer. (204 and 304 are trusted
    // to have no body, as nginx does.)
    let upstream_close = close || head_only || framing == Framing::UntilClose || (length.is_some() && (chunked || other_coding));
    // Room for `Connection: close` and the blank line the relay appends.
    let mut out = Vec::with_capacity(len + 64);
    out.extend_from_slice(b"HTTP/1.1 ");
    // httparse reads the status as exactly three digits.
    out.extend_from_slice(&[b'0' + (status / 100 % 10) as u8, b'0' + (status / 10 % 10) as u8, b'0' + (status % 10) as u8]);
    out.push(b' ');
    out.extend_from_slice(res.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for hd in res.headers.iter() {
        let n = hd.name;
        if ["connection", "keep-alive", "proxy-connection", "trailer"].iter().any(|h| is(n, h))
            || connection_tokens.iter().any(|t| same_header(n, t))
            || (is(n, "content-length") && (chunked || other_coding))
        {
            continue;
        }
        push_header(&mut out, n, hd.value);
    }
    Ok(Response::Final(ResponseHead { len, status, framing, upstream_close, downstream: out }))
}

/// Finds the end of a chunked body in the bytes it is fed, without
/// decoding it (the bytes go to the client as they are).
#[derive(Debug, Default)]
pub(super) struct Chunks {
    state: ChunkState,
    /// The size being read (hex digits may arrive in several pieces).
    size: u64,
    /// Bytes of the current size or trailer line, for the line limit.
    line: usize,
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
enum ChunkState {
    /// Reading the hex size.
    #[default]
    Size,
    /// Past the size: extensions until LF.
    Ext,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines; `true` once the line has bytes.
    Trailer(bool),
    Done,
}

/// Longest size or trailer line accepted.
const MAX_CHUNK_LINE: usize = 8 * 1024;

impl Chunks {
    /// The body's end has been seen.
    pub(super) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Feeds the next bytes; `Some(n)`: the body ends after `n` of them.
    pub(super) fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, BadResponse> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                ChunkState::Done => return Ok(Some(i)),
                ChunkState::Size => {
                    self.line += 1;
                    if let Some(d) = (b as char).to_digit(16) {
                        self.size = self
                            .size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(u64::from(d)))
                            .ok_or(BadResponse("chunk size overflow"))?;
                    } else if self.line == 1 {
                        return Err(BadResponse("no chunk size"));
                    } else if b == b'\r' || b == b';' || b == b' ' || b == b'\t' {
                        self.state = ChunkState::Ext;
                    } else if b == b'\n' {
                        self.end_size_line();
                    } else {
                        return Err(BadResponse("bad chunk size"));
                    }
                }
                ChunkState::Ext => {
                    self.line += 1;
                    if b == b'\n' {
                        self.end_size_line();
                    }
                }
                ChunkState::Data(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(data.len() - i) as u64;
                    i += take as usize;
                    let left = n - take;
                    self.state = if left == 0 { ChunkState::DataCr } else { ChunkState::Data(left) };
                    continue;
                }
                ChunkState::DataCr => {
                    self.state = match b {
                        b'\r' => ChunkState::DataLf,
                        b'\n' => ChunkState::Size,
                        _ => return Err(BadResponse("no CRLF after chunk data")),
                    };
                    self.line = 0;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(BadResponse("no CRLF after chunk data"));
                    }
                    self.state = ChunkState::Size;
                    self.line = 0;
                }
                ChunkState::Trailer(has_bytes) => {
                    self.line += 1;
                    match b {
                        b'\n' if !has_bytes => {
                            self.state = ChunkState::Done;
                            return Ok(Some(i + 1));
                        }
                        b'\n' => {
                            self.state = ChunkState::Trailer(false);
                            self.line = 0;
                        }
                        b'\r' => {}
                        _ => self.state = ChunkState::Trailer(true),
                    }
                }
            }
            if self.line > MAX_CHUNK_LINE {
                return Err(BadResponse("chunk line too long"));
            }
            i += 1;
        }
        Ok(if self.state == ChunkState::Done { Some(data.len()) } else { None })
    }

    fn end_size_line(&mut self) {
        self.line = 0;
        self.state = if self.size == 0 { ChunkState::Trailer(false) } else { ChunkState::Data(self.size) };
        self.size = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRIP: Strip<'static> = Strip { identity: ["X-Riegel-User", "X-Riegel-Email", "X-Riegel-Name"], cookies: ["riegel_session", "riegel_csrf"] };

    fn short_head(s: &str) -> ShortHead {
        match way(s.as_bytes(), &STRIP) {
            Some(Way::Short(h)) => h,
            other => panic!("{s:?}: {other:?}"),
        }
    }

    fn slice<'a>(s: &'a str, r: &Option<Range<usize>>) -> Option<&'a str> {
        r.clone().map(|r| &s[r])
    }

    #[test]
    fn only_whole_bodiless_http11_gets_and_heads_take_the_short_way() {
        let w = |s: &str| way(s.as_bytes(), &STRIP).map(|w| matches!(w, Way::Short(_)));
        assert_eq!(w("GET /mieter HTTP/1.1\r\nHost: a\r\n\r\n"), Some(true));
        assert_eq!(w("HEAD / HTTP/1.1\r\n\r\n"), Some(true));
        assert_eq!(w("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), Some(true));
        // Incomplete heads wait for more bytes.
        assert_eq!(w("GET /mieter HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(w("GE"), None);
        // Everything else is the framework's.
        for s in [
            "POST /_riegel/login HTTP/1.1\r\nContent-Length: 3\r\n\r\na=b",
            "PUT / HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://portal/x HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\ncontent-LENGTH: 5\r\n\r\nhello",
            "GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 7\r\n\r\n",
            "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
            "GET / HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            "GET / HTTP/1.1\r\nContent_Length: 40\r\n\r\n",
            "GET / HTTP/1.1\r\nTransfer_Encoding: chunked\r\n\r\n",
            // Connection naming a header riegel reads.
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: X_Forwarded_For\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: x-riegel-user\r\n\r\n",
        ] {
            assert_eq!(w(s), Some(false), "{s:?}");
        }
        // Both ways allow 32 names in Connection, counted the same way.
        let names = |n: usize| (0..n).map(|i| format!("x-{i}")).collect::<Vec<_>>().join(", ");
        assert_eq!(w(&format!("GET / HTTP/1.1\r\nConnection: {}\r\n\r\n", names(32))), Some(true));
        assert_eq!(w(&format!("GET / HTTP/1.1\r\nConnection: close, {}\r\n\r\n", names(32))), Some(false));
        assert!(folded_framing("Content_Length") && folded_framing("transfer_ENCODING"));
        assert!(!folded_framing("content-length") && !folded_framing("Transfer-Encoding") && !folded_framing("x-length"));
        let many: String = (0..200).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(w(&format!("GET / HTTP/1.1\r\n{many}\r\n")), Some(false));
    }

    #[test]
    fn a_short_head_keeps_what_riegel_decides_on_and_writes_the_portals_head() {
        let s = "GET /mieter/konto?x=1&y=2 HTTP/1.1\r\nHost: portal.example\r\nCookie: riegel_session=abc; lang=de\r\nOrigin: https://portal.example\r\nSec-Fetch-Site: same-origin\r\nX-Forwarded-For: 9.9.9.9\r\nx-forwarded-proto: https\r\nX-Forwarded-Host: evil\r\nX_Forwarded_For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nx_riegel_user: admin\r\nX-RIEGEL-EMAIL: a@b\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nAccept: */*\r\n\r\nNEXT";
        let h = short_head(s);
        assert_eq!(h.len, s.len() - 4);
        assert!(!h.head_only && !h.close);
        assert_eq!(&s[h.path.clone()], "/mieter/konto");
        assert_eq!(slice(s, &h.query), Some("x=1&y=2"));
        assert_eq!(slice(s, &h.cookie), Some("riegel_session=abc; lang=de"));
        assert_eq!(slice(s, &h.origin), Some("https://portal.example"));
        assert_eq!(slice(s, &h.sec_fetch_site), Some("same-origin"));
        assert_eq!(slice(s, &h.host), Some("portal.example"));
        assert_eq!(slice(s, &h.x_forwarded_for), Some("9.9.9.9"));
        assert_eq!(slice(s, &h.x_forwarded_proto), Some("https"));
        assert_eq!(slice(s, &h.x_forwarded_host), Some("evil"));
        assert_eq!(
            String::from_utf8(h.upstream).expect("utf8"),
            "GET /mieter/konto?x=1&y=2 HTTP/1.1\r\nHost: portal.example\r\ncookie: lang=de\r\nOrigin: https://portal.example\r\nSec-Fetch-Site: same-origin\r\nAccept: */*\r\n"
        );
    }

    #[test]
    fn riegels_cookies_alone_leave_no_cookie_header_and_close_is_noticed() {
        let h = short_head("HEAD /a HTTP/1.1\r\nCookie: riegel_session=x; riegel_csrf=y\r\nConnection: close\r\n\r\n");
        assert!(h.head_only && h.close);
        assert_eq!(String::from_utf8(h.upstream).expect("utf8"), "HEAD /a HTTP/1.1\r\n");
        let h = short_head("GET /a HTTP/1.1\r\nCookie: theme=dark\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(String::from_utf8(h.upstream).expect("utf8"), "GET /a HTTP/1.1\r\nCookie: theme=dark\r\n");
    }

    fn final_head(s: &str, head_only: bool) -> ResponseHead {
        match response(s.as_bytes(), head_only) {
            Ok(Response::Final(h)) => h,
            other => panic!("{s:?}: {other:?}"),
        }
    }

    #[test]
    fn answers_are_framed_by_length_chunks_or_close() {
        let h = final_head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\n\r\nhello", false);
        assert_eq!((h.status, h.framing, h.upstream_close), (200, Framing::Length(5), false));
        assert_eq!(h.len, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\n\r\n".len());
        assert_eq!(String::from_utf8(h.downstream).expect("utf8"), "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n");
        let h = final_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false);
        assert_eq!((h.framing, h.upstream_close), (Framing::Chunked, false));
        // Both: the coding wins, Content-Length is dropped, and the portal's
        // connection is not reused.
        let h = final_head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", false);
        assert_eq!((h.framing, h.upstream_close), (Framing::Chunked, true));
        assert_eq!(String::from_utf8(h.downstream).expect("utf8"), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n");
        let h = final_head("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((h.framing, h.upstream_close), (Framing::UntilClose, true));
        let h = final_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false);
        assert_eq!(h.framing, Framing::UntilClose);
        let h = final_head("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", false);
        assert_eq!((h.framing, h.upstream_close), (Framing::Empty, false));
        let h = final_head("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true);
        assert_eq!((h.framing, h.upstream_close), (Framing::Empty, true));
        // Connection cannot take the framing away from the client.
        let h = final_head("HTTP/1.1 200 OK\r\nConnection: content-length, transfer-encoding\r\nContent-Length: 5\r\n\r\n", false);
        assert_eq!(String::from_utf8(h.downstream).expect("utf8"), "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n");
        let h = final_head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false);
        assert!(h.upstream_close);
        let h = final_head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n", false);
        assert!(!h.upstream_close);
        let h = final_head("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\r\n", false);
        assert!(h.upstream_close);
        assert_eq!(String::from_utf8(h.downstream).expect("utf8"), "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n");
    }

    #[test]
    fn informational_partial_and_bad_answers() {
        assert_eq!(response(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200", false), Ok(Response::Informational("HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n".len())));
        assert_eq!(response(b"HTTP/1.1 200 OK\r\nContent-Le", false), Ok(Response::Partial));
        assert!(response(b"HTTP/1.1 101 Switching\r\n\r\n", false).is_err());
        assert!(response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false).is_err());
        assert!(response(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false).is_err());
        assert!(response(b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n", false).is_err());
        assert!(response(b"NOT HTTP\r\n\r\n", false).is_err());
        // The same length twice is fine.
        assert!(response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n", false).is_ok());
    }

    #[test]
    fn the_end_of_a_chunked_body_is_found_across_any_split() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\n";
        for split in 0..=body.len() {
            let mut c = Chunks::default();
            let (a, b) = body.split_at(split);
            let first = c.feed(a).expect("valid");
            let end = match first {
                Some(n) => n,
                None => split + c.feed(b).expect("valid").expect("end"),
            };
            assert_eq!(end, body.len(), "split at {split}");
        }
        // Bytes after the end are not part of the body.
        let mut c = Chunks::default();
        assert_eq!(c.feed(b"0\r\n\r\nHTTP/1.1").expect("valid"), Some(5));
        // Byte by byte, bare LF line ends too.
        let mut c = Chunks::default();
        let lf = b"3\nabc\n0\n\n";
        let mut end = None;
        for (i, b) in lf.iter().enumerate() {
            if let Some(n) = c.feed(std::slice::from_ref(b)).expect("valid") {
                end = Some(i + n);
                break;
            }
        }
        assert_eq!(end, Some(lf.len()));
    }

    #[test]
    fn bad_chunked_bodies_are_refused() {
        for bad in [&b"x\r\n"[..], b"5\r\nhelloXX", b"fffffffffffffffffff\r\n", b";\r\n"] {
            assert!(Chunks::default().feed(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = vec![b'a'; MAX_CHUNK_LINE + 10];
        let mut c = Chunks::default();
        assert!(c.feed(b"1;").expect("ok").is_none());
        assert!(c.feed(&long).is_err());
    }

    #[test]
    fn header_values_with_control_characters_are_not_sent() {
        assert!(valid_value(b"M\xc3\xbcller, Anna\tX"));
        assert!(!valid_value(b"a\r\nX-Evil: 1"));
        assert!(!valid_value(b"a\0"));
    }
}
