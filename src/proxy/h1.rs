//! HTTP/1.1 heads and framing on bytes, no I/O. Every request head is
//! parsed here once (httparse) before anything else, whichever way it then
//! takes ([`way`]): a head riegel refuses is answered with 400; a bodiless
//! GET or HEAD takes the short way, with the fields riegel decides on kept
//! as ranges into the client's buffer and the portal's head written in the
//! same pass by the header policy ([`super::policy`]); everything else goes
//! to Pingora's framework. The portal's answer to a short-way request is
//! parsed once, its head copied without hop-by-hop headers, its body
//! relayed as it comes (chunked bodies are scanned, not decoded, to find
//! their end).

use std::net::IpAddr;
use std::ops::Range;

use super::policy::{check_framing, check_target, same_header, Body, HeaderPolicy, Refusal};

/// Headers a short-way request may have; with more it takes Pingora's way.
const MAX_REQUEST_HEADERS: usize = 96;

/// Headers read in any request head, as Pingora reads at most.
const MAX_HEADERS: usize = 256;

/// Headers in an answer from the portal; more is a bad answer.
const MAX_RESPONSE_HEADERS: usize = 128;

/// What a request head, read in full, asks for.
// Not boxed: `Short` is what nearly every request is, and a box would be
// one more allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Way {
    /// An HTTP/1.1 GET or HEAD in origin form, without body, upgrade or
    /// `Expect`: served on bytes.
    Short(ShortHead),
    /// Anything else riegel serves: Pingora's framework.
    Framework,
    /// Refused: answered with 400, the connection closed. `head_only`: the
    /// request was a HEAD.
    Refuse { why: Refusal, head_only: bool },
}

/// The Cookie fields of a short-way head.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Cookies {
    /// One field: its value in the client's buffer.
    One(Range<usize>),
    /// Several, joined by `; ` (rare: HTTP/1.1 clients send one).
    Joined(Vec<u8>),
}

/// A request head for the short way. Ranges index the client's buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ShortHead {
    /// Length of the head, blank line included.
    pub len: usize,
    pub head_only: bool,
    pub path: Range<usize>,
    pub query: Option<Range<usize>>,
    pub cookie: Option<Cookies>,
    /// The first Origin, Sec-Fetch-Site, User-Agent and Accept-Language fields.
    pub origin: Option<Range<usize>>,
    pub sec_fetch_site: Option<Range<usize>>,
    pub user_agent: Option<Range<usize>>,
    pub accept_language: Option<Range<usize>>,
    /// The client's address after the trusted-proxy rules.
    pub client: IpAddr,
    /// The client asked to close the connection after this request.
    pub close: bool,
    /// The head for the portal so far: request line, the client's fields
    /// the policy keeps, and X-Forwarded-*. No identity, no blank line yet.
    pub upstream: Vec<u8>,
}

fn range(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

fn is(name: &str, lower: &str) -> bool {
    name.eq_ignore_ascii_case(lower)
}

/// Decides the way for the bytes read so far (`peer`: the socket's
/// address); `None` while the head is incomplete.
pub(super) fn way(buf: &[u8], policy: &HeaderPolicy, peer: IpAddr) -> Option<Way> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => None,
        Ok(httparse::Status::Complete(len)) => Some(decide(buf, &req, len, policy, peer, true)),
        Err(httparse::Error::TooManyHeaders) => {
            // Rare: a second parse with room for as many as Pingora reads.
            let mut many = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut many);
            match req.parse(buf) {
                Ok(httparse::Status::Partial) => None,
                Ok(httparse::Status::Complete(len)) => Some(decide(buf, &req, len, policy, peer, false)),
                Err(_) => Some(Way::Refuse { why: Refusal::Unreadable, head_only: false }),
            }
        }
        Err(_) => Some(Way::Refuse { why: Refusal::Unreadable, head_only: false }),
    }
}

fn decide(buf: &[u8], req: &httparse::Request<'_, '_>, len: usize, policy: &HeaderPolicy, peer: IpAddr, few: bool) -> Way {
    let (method, target) = (req.method.unwrap_or(""), req.path.unwrap_or(""));
    let head_only = method == "HEAD";
    let refuse = |why| Way::Refuse { why, head_only };
    if let Err(why) = check_target(method.as_bytes(), target.as_bytes()) {
        return refuse(why);
    }
    let body = match check_framing(req.headers, req.version == Some(0)) {
        Ok(b) => b,
        Err(why) => return refuse(why),
    };
    let survey = match policy.survey(peer, req.headers) {
        Ok(s) => s,
        Err(why) => return refuse(why),
    };
    let short = few
        && (method == "GET" || head_only)
        && req.version == Some(1)
        && matches!(body, Body::None | Body::Length(0))
        && !req.headers.iter().any(|h| is(h.name, "upgrade") || is(h.name, "expect"));
    if !short {
        return Way::Framework;
    }
    let mut h = ShortHead {
        len,
        head_only,
        path: range(buf, target.as_bytes()),
        query: None,
        cookie: None,
        origin: None,
        sec_fetch_site: None,
        user_agent: None,
        accept_language: None,
        client: survey.client,
        close: survey.close,
        upstream: Vec::with_capacity(len + 256),
    };
    if let Some(q) = target.find('?') {
        h.path = h.path.start..h.path.start + q;
        h.query = Some(h.path.end + 1..h.path.start + target.len());
    }
    for hd in req.headers.iter() {
        let n = hd.name;
        if is(n, "cookie") {
            h.cookie = Some(match h.cookie.take() {
                None => Cookies::One(range(buf, hd.value)),
                Some(Cookies::One(r)) => Cookies::Joined([&buf[r], hd.value].join(&b"; "[..])),
                Some(Cookies::Joined(mut v)) => {
                    v.extend_from_slice(b"; ");
                    v.extend_from_slice(hd.value);
                    Cookies::Joined(v)
                }
            });
        } else if is(n, "origin") && h.origin.is_none() {
            h.origin = Some(range(buf, hd.value));
        } else if is(n, "sec-fetch-site") && h.sec_fetch_site.is_none() {
            h.sec_fetch_site = Some(range(buf, hd.value));
        } else if is(n, "user-agent") && h.user_agent.is_none() {
            h.user_agent = Some(range(buf, hd.value));
        } else if is(n, "accept-language") && h.accept_language.is_none() {
            h.accept_language = Some(range(buf, hd.value));
        }
    }
    let up = &mut h.upstream;
    up.extend_from_slice(method.as_bytes());
    up.push(b' ');
    up.extend_from_slice(target.as_bytes());
    up.extend_from_slice(b" HTTP/1.1\r\n");
    let Ok(()) = policy.write_fields(req.headers, &survey, up);
    let Ok(()) = policy.write_forwarding(&survey, up);
    Way::Short(h)
}

pub(super) fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    super::policy::push_line(out, name.as_bytes(), value);
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
    /// `Set-Cookie` values kept from the client (portal login mode: the
    /// portal's session cookies, for the session's jar).
    pub held_cookies: Vec<Vec<u8>>,
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
    response_holding(buf, head_only, &|_| false)
}

/// [`response`], holding back the `Set-Cookie` fields `hold` picks
/// (into [`ResponseHead::held_cookies`]).
pub(super) fn response_holding(buf: &[u8], head_only: bool, hold: &dyn Fn(&[u8]) -> bool) -> Result<Response, BadResponse> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(Response::Partial),
        Ok(httparse::Status::Complete(len)) => len,
        Err(_) => return Err(BadResponse("unparsable head")),
    };
    let status = res.code.ok_or(BadResponse("no status"))?;
    // httparse reads any three digits; below 100 is no status at all (and
    // Pingora's way refuses it too: the client must not get `002`).
    if status < 100 {
        return Err(BadResponse("status below 100"));
    }
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
    let mut held_cookies = Vec::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    // httparse reads the status as exactly three digits.
    out.extend_from_slice(&[b'0' + (status / 100 % 10) as u8, b'0' + (status / 10 % 10) as u8, b'0' + (status % 10) as u8]);
    out.push(b' ');
    out.extend_from_slice(res.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for hd in res.headers.iter() {
        let n = hd.name;
        if ["connection", "keep-alive", "proxy-connection", "trailer"].iter().any(|h| is(n, h))
            || connection_tokens.iter().any(|t| same_header(n.as_bytes(), t.as_bytes()))
            || (is(n, "content-length") && (chunked || other_coding))
        {
            continue;
        }
        if is(n, "set-cookie") && hold(hd.value) {
            held_cookies.push(hd.value.to_vec());
            continue;
        }
        push_header(&mut out, n, hd.value);
    }
    Ok(Response::Final(ResponseHead { len, status, framing, upstream_close, downstream: out, held_cookies }))
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

    fn policy() -> HeaderPolicy {
        HeaderPolicy::new(["X-Riegel-User", "X-Riegel-Email", "X-Riegel-Name"], ["riegel_session".into(), "riegel_csrf".into()], vec![], false)
    }

    fn peer() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    fn short_head(s: &str) -> ShortHead {
        match way(s.as_bytes(), &policy(), peer()) {
            Some(Way::Short(h)) => h,
            other => panic!("{s:?}: {other:?}"),
        }
    }

    fn slice<'a>(s: &'a str, r: &Option<Range<usize>>) -> Option<&'a str> {
        r.clone().map(|r| &s[r])
    }

    /// `Some(Ok(true))`: short, `Some(Ok(false))`: framework,
    /// `Some(Err(why))`: refused.
    fn w(s: &str) -> Option<Result<bool, Refusal>> {
        way(s.as_bytes(), &policy(), peer()).map(|w| match w {
            Way::Short(_) => Ok(true),
            Way::Framework => Ok(false),
            Way::Refuse { why, .. } => Err(why),
        })
    }

    #[test]
    fn only_whole_bodiless_http11_gets_and_heads_take_the_short_way() {
        assert_eq!(w("GET /mieter HTTP/1.1\r\nHost: a\r\n\r\n"), Some(Ok(true)));
        assert_eq!(w("HEAD / HTTP/1.1\r\n\r\n"), Some(Ok(true)));
        assert_eq!(w("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), Some(Ok(true)));
        // Repeated Cookie and X-Forwarded-* fields, and a name in
        // Connection, are the policy's business on both ways alike.
        assert_eq!(w("GET / HTTP/1.1\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n"), Some(Ok(true)));
        assert_eq!(w("GET / HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\n\r\n"), Some(Ok(true)));
        assert_eq!(w("GET / HTTP/1.1\r\nContent_Length: 40\r\n\r\n"), Some(Ok(true)));
        assert_eq!(w("GET / HTTP/1.1\r\nConnection: keep-alive, X-Secret\r\n\r\n"), Some(Ok(true)));
        // Incomplete heads wait for more bytes.
        assert_eq!(w("GET /mieter HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(w("GE"), None);
        // The framework's.
        for s in [
            "POST /_riegel/login HTTP/1.1\r\nContent-Length: 3\r\n\r\na=b",
            "PUT / HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET / HTTP/1.1\r\ncontent-LENGTH: 5\r\n\r\nhello",
            "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
        ] {
            assert_eq!(w(s), Some(Ok(false)), "{s:?}");
        }
        let many: String = (0..200).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(w(&format!("GET / HTTP/1.1\r\n{many}\r\n")), Some(Ok(false)));
        // Refused, whatever the method.
        for (s, why) in [
            ("GET http://portal/x HTTP/1.1\r\n\r\n", Refusal::TargetForm),
            ("GET * HTTP/1.1\r\n\r\n", Refusal::TargetForm),
            ("GET /a#b HTTP/1.1\r\n\r\n", Refusal::Fragment),
            ("GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 7\r\n\r\n", Refusal::ContentLength),
            ("POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", Refusal::LengthAndCoding),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n", Refusal::TransferEncoding),
            ("GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", Refusal::Unreadable),
            ("GET /a b HTTP/1.1\r\n\r\n", Refusal::Unreadable),
            ("GET / HTTP/1.1\r\nX-A: b\r\n c\r\n\r\n", Refusal::Unreadable),
            ("GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n", Refusal::ConnectionProtected),
            ("POST / HTTP/1.1\r\nConnection: X_Forwarded_For\r\nContent-Length: 0\r\n\r\n", Refusal::ConnectionProtected),
            ("GET / HTTP/1.1\r\nConnection: x-riegel-user\r\n\r\n", Refusal::ConnectionProtected),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Refusal::SeveralHosts),
        ] {
            assert_eq!(w(s), Some(Err(why)), "{s:?}");
        }
        let huge: String = (0..300).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(w(&format!("GET / HTTP/1.1\r\n{huge}\r\n")), Some(Err(Refusal::Unreadable)));
        // Both ways allow 32 names in Connection, counted the same way.
        let names = |n: usize| (0..n).map(|i| format!("x-{i}")).collect::<Vec<_>>().join(", ");
        assert_eq!(w(&format!("GET / HTTP/1.1\r\nConnection: {}\r\n\r\n", names(32))), Some(Ok(true)));
        assert_eq!(w(&format!("GET / HTTP/1.1\r\nConnection: close, {}\r\n\r\n", names(32))), Some(Err(Refusal::ConnectionTooLong)));
    }

    #[test]
    fn a_short_head_keeps_what_riegel_decides_on_and_writes_the_portals_head() {
        let s = "GET /mieter/konto?x=1&y=2 HTTP/1.1\r\nHost: portal.example\r\nCookie: riegel_session=abc; lang=de\r\nOrigin: https://portal.example\r\nSec-Fetch-Site: same-origin\r\nX-Forwarded-For: 9.9.9.9\r\nx-forwarded-proto: https\r\nX-Forwarded-Host: evil\r\nX_Forwarded_For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nx_riegel_user: admin\r\nX-RIEGEL-EMAIL: a@b\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\nAccept: */*\r\n\r\nNEXT";
        let h = short_head(s);
        assert_eq!(h.len, s.len() - 4);
        assert!(!h.head_only && !h.close);
        assert_eq!(&s[h.path.clone()], "/mieter/konto");
        assert_eq!(slice(s, &h.query), Some("x=1&y=2"));
        assert_eq!(h.cookie.as_ref().map(|c| match c {
            Cookies::One(r) => &s[r.clone()],
            Cookies::Joined(_) => "joined",
        }), Some("riegel_session=abc; lang=de"));
        assert_eq!(slice(s, &h.origin), Some("https://portal.example"));
        assert_eq!(slice(s, &h.sec_fetch_site), Some("same-origin"));
        assert_eq!(h.client, peer());
        assert_eq!(
            String::from_utf8(h.upstream).expect("utf8"),
            "GET /mieter/konto?x=1&y=2 HTTP/1.1\r\nHost: portal.example\r\nCookie: lang=de\r\nOrigin: https://portal.example\r\nSec-Fetch-Site: same-origin\r\nAccept: */*\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: portal.example\r\n"
        );
        let h = short_head("GET / HTTP/1.1\r\nCookie: a=1\r\nX-A: 1\r\ncookie: riegel_session=x; b=\u{e4}\r\n\r\n");
        assert_eq!(h.cookie, Some(Cookies::Joined("a=1; riegel_session=x; b=\u{e4}".as_bytes().to_vec())));
        assert_eq!(String::from_utf8(h.upstream).expect("utf8"), "GET / HTTP/1.1\r\nCookie: a=1\r\ncookie: b=\u{e4}\r\nX-A: 1\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\n");
    }

    #[test]
    fn riegels_cookies_alone_leave_no_cookie_header_and_close_is_noticed() {
        let h = short_head("HEAD /a HTTP/1.1\r\nCookie: riegel_session=x; riegel_csrf=y\r\nConnection: close\r\n\r\n");
        assert!(h.head_only && h.close);
        assert_eq!(String::from_utf8(h.upstream).expect("utf8"), "HEAD /a HTTP/1.1\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\n");
        let h = short_head("GET /a HTTP/1.1\r\nCookie: theme=dark\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(String::from_utf8(h.upstream).expect("utf8"), "GET /a HTTP/1.1\r\nCookie: theme=dark\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\n");
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
        // Found by fuzz/answer: httparse reads `002` as status 2.
        assert_eq!(response(b"HTTP/1.1 002 KO\r\nContent-Length: 0\r\n\r\n", false), Err(BadResponse("status below 100")));
        assert_eq!(response(b"HTTP/1.1 000 \r\n\r\n", false), Err(BadResponse("status below 100")));
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
}
