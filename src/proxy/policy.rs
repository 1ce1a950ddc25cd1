//! The one header policy: what of a client's request head reaches the
//! portal, decided on header name and value bytes. Both ways call it:
//! riegel's own HTTP/1.1 code (`h1`, bodiless GET and HEAD) with the fields
//! httparse found, and Pingora's framework (`Gateway`) with the header list
//! Pingora read, before anything was removed from it (Pingora's own
//! upstream request rules are switched off:
//! `HttpUpstreamRequestPolicy::preserve()`). No name or value goes through
//! `to_str()`: a raw UTF-8 or Latin-1 byte is a byte like any other.
//!
//! The portal's head, in this order:
//! 1. The client's fields ([`HeaderPolicy::write_fields`]), grouped by name
//!    in the order each name first appears (the order Pingora's header map
//!    keeps), without
//!    - hop-by-hop fields (RFC 9110 7.6.1) and those meant for a proxy:
//!      Connection, Keep-Alive, Proxy-Connection, TE, Trailer,
//!      Transfer-Encoding, Upgrade, HTTP2-Settings, Proxy-Authorization,
//!      Proxy-Authenticate, and `Proxy` (httpoxy);
//!    - Content-Length: each way frames the body itself;
//!    - forwarding fields, which riegel sets or a portal might believe:
//!      every X-Forwarded-*, Forwarded, X-Real-IP, X-Client-IP,
//!      True-Client-IP, X-Original-URL, X-Original-URI, X-Rewrite-URL;
//!    - the identity fields;
//!    - every field the client names in Connection;
//!
//!    each in any spelling (any case, `_` for `-`); and riegel's own
//!    cookies are cut out of every Cookie field (a field left empty goes).
//! 2. X-Forwarded-For, -Proto and -Host as riegel decides them
//!    ([`HeaderPolicy::write_forwarding`]; see [`Survey`]).
//! 3. The identity, for a session ([`HeaderPolicy::write_identity`]).
//!
//! A head is refused with 400 ([`Refusal`]) when its Connection fields list
//! more than [`MAX_CONNECTION_TOKENS`] names, a name that is not a token, or
//! a field riegel reads or sets; when it has several Host fields or a Host
//! with `@`; when a trusted proxy's X-Forwarded-For does not name the next
//! hop; and ([`check_framing`], [`check_target`]) when its framing or its
//! request target is anything but plain.

use std::io::Write as _;
use std::net::IpAddr;

use crate::web::Identity;

/// Most comma-separated pieces a request's Connection fields may hold, on
/// both ways: each name is checked against every field.
pub(crate) const MAX_CONNECTION_TOKENS: usize = 32;

/// Most X-Forwarded-For hops walked from a trusted peer.
const MAX_HOPS: usize = 16;

/// Why a request head is refused (answered with 400, the connection closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("a head httparse cannot read")]
    Unreadable,
    #[error("a head longer than riegel reads")]
    HeadTooLarge,
    #[error("Connection lists more than {MAX_CONNECTION_TOKENS} names")]
    ConnectionTooLong,
    #[error("Connection lists something that is not a token")]
    ConnectionNotToken,
    #[error("Connection names a field riegel reads or sets")]
    ConnectionProtected,
    #[error("more than one Host field")]
    SeveralHosts,
    #[error("Host with userinfo")]
    HostUserinfo,
    #[error("X-Forwarded-For from a trusted proxy does not name the next hop")]
    ForwardedFor,
    #[error("X-Forwarded-For from trusted proxies has more than {MAX_HOPS} hops")]
    ForwardedForTooLong,
    #[error("more than one Content-Length, or one that is not a number")]
    ContentLength,
    #[error("a transfer coding other than one `chunked`")]
    TransferEncoding,
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndCoding,
    #[error("a request target with a fragment")]
    Fragment,
    #[error("a request target not in origin form")]
    TargetForm,
    #[error("a request target with a byte Pingora's way refuses, or longer than it reads")]
    TargetBytes,
}

/// A field of the client's request head.
pub(crate) trait Field {
    fn name(&self) -> &[u8];
    fn value(&self) -> &[u8];
}

impl Field for httparse::Header<'_> {
    fn name(&self) -> &[u8] {
        self.name.as_bytes()
    }
    fn value(&self) -> &[u8] {
        self.value
    }
}

/// Where a way writes the fields riegel makes: bytes on the short way,
/// Pingora's request header on the framework's way.
pub(crate) trait Put {
    type Error;
    /// A field riegel writes: `value` appends the value to the buffer it is
    /// given and says whether there is one after all.
    fn put(&mut self, name: &[u8], value: impl FnOnce(&mut Vec<u8>) -> bool) -> Result<(), Self::Error>;
}

/// Where a way writes the portal's head, the client's fields included.
pub(crate) trait Sink<F>: Put {
    /// The client's field, as it came.
    fn keep(&mut self, field: &F) -> Result<(), Self::Error>;
}

/// The short way writes header lines straight into the portal's head.
impl Put for Vec<u8> {
    type Error = std::convert::Infallible;

    fn put(&mut self, name: &[u8], value: impl FnOnce(&mut Vec<u8>) -> bool) -> Result<(), Self::Error> {
        let start = self.len();
        self.extend_from_slice(name);
        self.extend_from_slice(b": ");
        if value(self) {
            self.extend_from_slice(b"\r\n");
        } else {
            self.truncate(start);
        }
        Ok(())
    }
}

impl<F: Field> Sink<F> for Vec<u8> {
    fn keep(&mut self, field: &F) -> Result<(), Self::Error> {
        push_line(self, field.name(), field.value());
        Ok(())
    }
}

/// `name: value` and CRLF.
pub(crate) fn push_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A name byte for comparison: lower case, `_` as `-` (some servers fold
/// `_` into `-`, CGI-style ones the other way).
fn fold(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

/// Whether two header names are the same modulo case and `_`/`-`.
pub(crate) fn same_header(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| fold(x) == fold(y))
}

/// Whether `name` starts with `prefix` (lower case, `-`) modulo case and
/// `_`/`-`.
fn starts_like(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len() && name.iter().zip(prefix).all(|(&x, &y)| fold(x) == y)
}

/// Fields that never reach the portal from the client, in any spelling;
/// besides every `x-forwarded-*`.
const NEVER_FORWARDED: [&[u8]; 20] = [
    // Hop-by-hop, or meant for a proxy.
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"http2-settings",
    b"proxy-authorization",
    b"proxy-authenticate",
    b"proxy",
    // Framing: each way writes its own.
    b"content-length",
    // Forwarding: riegel's own, or what a portal might take for it.
    b"forwarded",
    b"x-real-ip",
    b"x-client-ip",
    b"true-client-ip",
    b"x-original-url",
    b"x-original-uri",
    b"x-rewrite-url",
    b"x-forwarded",
];

/// Fields riegel reads or sets: a Connection field may not name them (the
/// two ways, or riegel and the portal, would disagree about them).
const PROTECTED: [&[u8]; 12] = [
    b"host",
    b"cookie",
    b"origin",
    b"sec-fetch-site",
    b"content-type",
    b"content-length",
    b"transfer-encoding",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"forwarded",
];

/// A token character (RFC 9110 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Without leading and trailing spaces and tabs.
fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.len() >= needle.len() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether `value` can be sent as a field value: no control characters but
/// tab (so no CR, LF or NUL).
pub(crate) fn valid_value(value: &[u8]) -> bool {
    value.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Whether a `Set-Cookie` value sets a cookie called one of `names` (in
/// any case: held back rather than let through).
pub(crate) fn sets_one_of(names: &[String], value: &[u8]) -> bool {
    let name = value.split(|&b| b == b'=').next().unwrap_or(value).trim_ascii();
    names.iter().any(|c| c.as_bytes().eq_ignore_ascii_case(name))
}

/// The policy with its configuration: identity field names, riegel's
/// cookie names, the trusted proxies.
pub(crate) struct HeaderPolicy {
    identity: [Box<[u8]>; 3],
    cookies: [String; 2],
    trusted: Vec<ipnet::IpNet>,
    tls_listener: bool,
    /// Portal login mode: the portal's session cookie names. A client's
    /// copies are cut out; the session's sealed jar supplies them. The
    /// Cookie fields are then written last, as one field
    /// ([`HeaderPolicy::write_cookie`]).
    portal_cookies: Vec<String>,
}

/// What a request head says about itself, read once from the client's
/// fields before any is removed.
///
/// The client's address: the socket's peer, unless the peer is a trusted
/// proxy (`server.trusted_proxies`). Then X-Forwarded-For (all its fields
/// as one list, the last field right-most) is walked from the right, one
/// element at a time, as bytes: a trusted address is one more proxy and
/// the walk goes on; the first address that is not trusted is the client;
/// empty elements are skipped; when every element is trusted, the
/// left-most is the client. An element that is not an address (`\xff`,
/// `unknown`, `1.2.3`) ends the walk there: the hop that wrote it (a
/// trusted proxy, as every hop to its right is one) did not say who its
/// client was, so riegel cannot tell who sent the request. Such a request
/// is refused with 400 ([`Refusal::ForwardedFor`]): it is never put on the
/// trusted proxy's own address (an attacker behind it could otherwise ban
/// it for everyone), and never on an address the client chose. Garbage to
/// the left of the client (`\xff, 203.0.113.9` from a trusted peer) is
/// never read: the client is 203.0.113.9.
///
/// The portal gets as X-Forwarded-For only the verified part, the client
/// first: the addresses walked (client, then the trusted hops to its right)
/// and the peer; from an untrusted peer, the peer alone. X-Forwarded-Proto
/// and -Host from a trusted peer are kept (the last field of each; Proto
/// only when `http` or `https`); otherwise the listener's scheme and Host.
pub(crate) struct Survey<'a> {
    nominated: [&'a [u8]; MAX_CONNECTION_TOKENS],
    nominated_len: usize,
    /// The client asked to close the connection after this request.
    pub close: bool,
    /// The client's address after the trusted-proxy rules.
    pub client: IpAddr,
    peer: IpAddr,
    /// X-Forwarded-For hops walked, right to left: the client last.
    hops: [IpAddr; MAX_HOPS],
    hops_len: usize,
    proto: &'static str,
    host: Option<&'a [u8]>,
}

impl Survey<'_> {
    fn nominated(&self) -> &[&[u8]] {
        &self.nominated[..self.nominated_len]
    }
}

/// What riegel does with a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Keep,
    Drop,
    Cookie,
}

/// A field of one X-Forwarded-For element: `v4`, `v6`, `v4:port` or
/// `[v6]:port`.
fn parse_hop(e: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(e).ok()?;
    let ip = s.parse::<IpAddr>().ok().or_else(|| s.parse::<std::net::SocketAddr>().ok().map(|sa| sa.ip()))?;
    Some(ip.to_canonical())
}

impl HeaderPolicy {
    /// `identity`: the three identity field names (Remote-User, -Email,
    /// -Name by default), as they are to be sent; `cookies`: riegel's
    /// session and CSRF cookie names.
    pub(crate) fn new(identity: [&str; 3], cookies: [String; 2], trusted: Vec<ipnet::IpNet>, tls_listener: bool) -> Self {
        Self { identity: identity.map(|n| n.as_bytes().into()), cookies, trusted, tls_listener, portal_cookies: Vec::new() }
    }

    /// Portal login mode with these session cookie names (none: off).
    pub(crate) fn with_portal_cookies(mut self, names: Vec<String>) -> Self {
        self.portal_cookies = names;
        self
    }

    /// Portal login mode: Cookie goes last, merged with the jar.
    pub(crate) fn portal_mode(&self) -> bool {
        !self.portal_cookies.is_empty()
    }

    /// Whether an answer's `Set-Cookie` value sets one of the portal's
    /// session cookies: it never reaches the browser (the jar takes it).
    pub(crate) fn is_portal_set_cookie(&self, value: &[u8]) -> bool {
        sets_one_of(&self.portal_cookies, value)
    }

    /// Portal login mode, after the identity: one Cookie field with the
    /// client's cookies (`client`: all its Cookie fields joined by `; `)
    /// without riegel's and without any copy of the portal's session
    /// cookies, then the session's `jar`. Nothing when both are empty.
    pub(crate) fn write_cookie<S: Put>(&self, client: Option<&[u8]>, jar: Option<&str>, sink: &mut S) -> Result<(), S::Error> {
        if !self.portal_mode() {
            return Ok(());
        }
        let ours = self.cookie_names();
        sink.put(b"cookie", |out| {
            let mut kept = false;
            for part in client.unwrap_or_default().split(|&b| b == b';') {
                let part = part.trim_ascii();
                let key = part.split(|&b| b == b'=').next().unwrap_or(part).trim_ascii();
                // The portal's names in any case: a portal that reads them
                // case-insensitively gets no planted copy either.
                if key.is_empty() || ours.iter().any(|n| key == n.as_bytes()) || self.portal_cookies.iter().any(|n| key.eq_ignore_ascii_case(n.as_bytes())) {
                    continue;
                }
                if kept {
                    out.extend_from_slice(b"; ");
                }
                out.extend_from_slice(part);
                kept = true;
            }
            match jar.filter(|j| !j.is_empty() && valid_value(j.as_bytes())) {
                Some(j) => {
                    if kept {
                        out.extend_from_slice(b"; ");
                    }
                    out.extend_from_slice(j.as_bytes());
                    true
                }
                None => kept,
            }
        })
    }

    pub(crate) fn cookie_names(&self) -> [&str; 2] {
        [self.cookies[0].as_str(), self.cookies[1].as_str()]
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// Reads the head's fields once; see [`Survey`]. `peer`: the socket's
    /// address.
    pub(crate) fn survey<'a, F: Field>(&self, peer: IpAddr, fields: &'a [F]) -> Result<Survey<'a>, Refusal> {
        let peer = peer.to_canonical();
        let trusted_peer = self.is_trusted(peer);
        let mut s = Survey {
            nominated: [&[]; MAX_CONNECTION_TOKENS],
            nominated_len: 0,
            close: false,
            client: peer,
            peer,
            hops: [peer; MAX_HOPS],
            hops_len: 0,
            proto: if self.tls_listener { "https" } else { "http" },
            host: None,
        };
        let mut pieces = 0;
        let (mut xfp, mut xfh) = (None, None);
        for f in fields {
            let (n, v) = (f.name(), f.value());
            if n.eq_ignore_ascii_case(b"connection") {
                for piece in v.split(|&b| b == b',') {
                    pieces += 1;
                    if pieces > MAX_CONNECTION_TOKENS {
                        return Err(Refusal::ConnectionTooLong);
                    }
                    let t = trim_ows(piece);
                    if t.is_empty() || t.eq_ignore_ascii_case(b"keep-alive") || t.eq_ignore_ascii_case(b"upgrade") {
                        continue;
                    }
                    if !t.iter().all(|&b| is_tchar(b)) {
                        return Err(Refusal::ConnectionNotToken);
                    }
                    if t.eq_ignore_ascii_case(b"close") {
                        s.close = true;
                        continue;
                    }
                    if PROTECTED.iter().any(|p| same_header(t, p)) || self.identity.iter().any(|id| same_header(t, id)) {
                        return Err(Refusal::ConnectionProtected);
                    }
                    s.nominated[s.nominated_len] = t;
                    s.nominated_len += 1;
                }
            } else if n.eq_ignore_ascii_case(b"host") {
                if s.host.is_some() {
                    return Err(Refusal::SeveralHosts);
                }
                if v.contains(&b'@') {
                    return Err(Refusal::HostUserinfo);
                }
                s.host = Some(v);
            } else if trusted_peer && n.eq_ignore_ascii_case(b"x-forwarded-proto") {
                xfp = Some(trim_ows(v));
            } else if trusted_peer && n.eq_ignore_ascii_case(b"x-forwarded-host") {
                xfh = Some(v);
            }
        }
        if !trusted_peer {
            return Ok(s);
        }
        let xff = fields.iter().rev().filter(|f| f.name().eq_ignore_ascii_case(b"x-forwarded-for"));
        'walk: for v in xff.map(Field::value) {
            for e in v.rsplit(|&b| b == b',') {
                let e = trim_ows(e);
                if e.is_empty() {
                    continue;
                }
                let ip = parse_hop(e).ok_or(Refusal::ForwardedFor)?;
                if s.hops_len == MAX_HOPS {
                    return Err(Refusal::ForwardedForTooLong);
                }
                s.hops[s.hops_len] = ip;
                s.hops_len += 1;
                if !self.is_trusted(ip) {
                    break 'walk;
                }
            }
        }
        if s.hops_len > 0 {
            s.client = s.hops[s.hops_len - 1];
        }
        match xfp {
            Some(p) if p.eq_ignore_ascii_case(b"https") => s.proto = "https",
            Some(p) if p.eq_ignore_ascii_case(b"http") => s.proto = "http",
            _ => {}
        }
        if xfh.is_some() {
            s.host = xfh;
        }
        Ok(s)
    }

    /// What happens to fields called `name`.
    fn class(&self, name: &[u8], s: &Survey<'_>) -> Class {
        if NEVER_FORWARDED.iter().any(|n| same_header(name, n))
            || starts_like(name, b"x-forwarded-")
            || self.identity.iter().any(|id| same_header(name, id))
            || s.nominated().iter().any(|t| same_header(name, t))
        {
            Class::Drop
        } else if name.eq_ignore_ascii_case(b"cookie") {
            if self.portal_mode() {
                // Written last, merged with the jar (`write_cookie`).
                return Class::Drop;
            }
            Class::Cookie
        } else {
            Class::Keep
        }
    }

    /// One field of a kept group.
    fn write_one<F: Field, S: Sink<F>>(&self, f: &F, class: Class, sink: &mut S) -> Result<(), S::Error> {
        match class {
            Class::Drop => Ok(()),
            Class::Keep => sink.keep(f),
            Class::Cookie => {
                let v = f.value();
                if self.cookies.iter().any(|c| contains(v, c.as_bytes())) {
                    let names = self.cookie_names();
                    sink.put(f.name(), |out| crate::auth::session::strip_cookie(v, &names, out))
                } else {
                    sink.keep(f)
                }
            }
        }
    }

    /// Writes the client's fields that reach the portal (rule 1 of the
    /// module documentation), grouped by name in the order each name first
    /// appears.
    pub(crate) fn write_fields<F: Field, S: Sink<F>>(&self, fields: &[F], s: &Survey<'_>, sink: &mut S) -> Result<(), S::Error> {
        let mut done = Done::new(fields.len());
        for (i, f) in fields.iter().enumerate() {
            if done.get(i) {
                continue;
            }
            let name = f.name();
            let class = self.class(name, s);
            self.write_one(f, class, sink)?;
            for (j, g) in fields.iter().enumerate().skip(i + 1) {
                if !done.get(j) && g.name().eq_ignore_ascii_case(name) {
                    done.set(j);
                    self.write_one(g, class, sink)?;
                }
            }
        }
        Ok(())
    }

    /// Writes X-Forwarded-For, -Proto and -Host (rule 2).
    pub(crate) fn write_forwarding<S: Put>(&self, s: &Survey<'_>, sink: &mut S) -> Result<(), S::Error> {
        sink.put(b"x-forwarded-for", |out| {
            for ip in s.hops[..s.hops_len].iter().rev() {
                let _ = write!(out, "{ip}, ");
            }
            let _ = write!(out, "{}", s.peer);
            true
        })?;
        sink.put(b"x-forwarded-proto", |out| {
            out.extend_from_slice(s.proto.as_bytes());
            true
        })?;
        if let Some(h) = s.host {
            sink.put(b"x-forwarded-host", |out| {
                out.extend_from_slice(h);
                true
            })?;
        }
        Ok(())
    }

    /// Whether the identity can be sent: no control characters in a value
    /// (they could only come from stored data). Both ways answer 500
    /// otherwise.
    pub(crate) fn identity_ok(id: &Identity) -> bool {
        [id.user(), id.email(), id.name()].iter().all(|v| valid_value(v.as_bytes()))
    }

    /// Writes the identity fields (rule 3); see [`Self::identity_ok`].
    pub(crate) fn write_identity<S: Put>(&self, id: &Identity, sink: &mut S) -> Result<(), S::Error> {
        for (name, value) in self.identity.iter().zip([id.user(), id.email(), id.name()]) {
            sink.put(name, |out| {
                out.extend_from_slice(value.as_bytes());
                true
            })?;
        }
        Ok(())
    }
}

/// Fields already written, by index (no allocation up to 256 fields, the
/// most Pingora and `h1` read).
enum Done {
    Small([u64; 4]),
    Big(Vec<bool>),
}

impl Done {
    fn new(n: usize) -> Self {
        if n <= 256 {
            Done::Small([0; 4])
        } else {
            Done::Big(vec![false; n])
        }
    }
    fn get(&self, i: usize) -> bool {
        match self {
            Done::Small(b) => b[i / 64] & (1 << (i % 64)) != 0,
            Done::Big(v) => v[i],
        }
    }
    fn set(&mut self, i: usize) {
        match self {
            Done::Small(b) => b[i / 64] |= 1 << (i % 64),
            Done::Big(v) => v[i] = true,
        }
    }
}

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    None,
    Length(u64),
    Chunked,
}

/// The body's framing, when it is plain: at most one Content-Length, all
/// digits; at most one Transfer-Encoding, exactly `chunked` (any case), and
/// then no Content-Length and not HTTP/1.0. Anything else could be read
/// one way by riegel and another by the portal.
pub(crate) fn check_framing<F: Field>(fields: &[F], http10: bool) -> Result<Body, Refusal> {
    let (mut length, mut coding) = (None, false);
    for f in fields {
        let n = f.name();
        if n.eq_ignore_ascii_case(b"content-length") {
            let v = f.value();
            if length.is_some() || v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                return Err(Refusal::ContentLength);
            }
            length = std::str::from_utf8(v).ok().and_then(|v| v.parse::<u64>().ok());
            if length.is_none() {
                return Err(Refusal::ContentLength);
            }
        } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
            if coding || http10 || !f.value().eq_ignore_ascii_case(b"chunked") {
                return Err(Refusal::TransferEncoding);
            }
            coding = true;
        }
    }
    match (length, coding) {
        (Some(_), true) => Err(Refusal::LengthAndCoding),
        (_, true) => Ok(Body::Chunked),
        (Some(n), false) => Ok(Body::Length(n)),
        (None, false) => Ok(Body::None),
    }
}

/// Longest request target Pingora's way reads (the `http` crate's limit).
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// The request target: origin form (`/path?query`), or `*` for OPTIONS;
/// never a fragment (a portal would cut it and serve what is before it);
/// and nothing the other way would refuse. httparse takes every visible
/// ASCII byte, but Pingora's way (the `http` crate's URI) refuses `<`, `>`
/// and `` ` `` in the path and `"`, `<` and `>` in the query, and targets
/// of 64 KiB: the short way must not forward to the portal what the other
/// way answers with 400 (found by fuzz/differential).
pub(crate) fn check_target(method: &[u8], target: &[u8]) -> Result<(), Refusal> {
    if target.contains(&b'#') {
        return Err(Refusal::Fragment);
    }
    if !(target.first() == Some(&b'/') || (target == b"*" && method == b"OPTIONS")) {
        return Err(Refusal::TargetForm);
    }
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], &target[q + 1..]),
        None => (target, &[][..]),
    };
    if target.len() > MAX_TARGET || path.iter().any(|b| b"<>`".contains(b)) || query.iter().any(|b| b"\"<>".contains(b)) {
        return Err(Refusal::TargetBytes);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(head: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        head.split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').expect("field");
                (n.as_bytes().to_vec(), v.trim().as_bytes().to_vec())
            })
            .collect()
    }

    impl Field for (Vec<u8>, Vec<u8>) {
        fn name(&self) -> &[u8] {
            &self.0
        }
        fn value(&self) -> &[u8] {
            &self.1
        }
    }

    fn policy(trusted: &[&str]) -> HeaderPolicy {
        HeaderPolicy::new(
            ["Remote-User", "Remote-Email", "Remote-Name"],
            ["riegel_session".into(), "riegel_session_csrf".into()],
            trusted.iter().map(|t| t.parse().expect("net")).collect(),
            false,
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// The portal's lines for `head` from `peer` (fields and forwarding).
    fn portal_head(p: &HeaderPolicy, peer: &str, head: &str) -> Result<String, Refusal> {
        let f = fields(head);
        let s = p.survey(ip(peer), &f)?;
        let mut out = Vec::new();
        let Ok(()) = p.write_fields(&f, &s, &mut out);
        let Ok(()) = p.write_forwarding(&s, &mut out);
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn hop_by_hop_forwarding_identity_and_nominated_fields_go_in_every_spelling() {
        let p = policy(&[]);
        let head = "Host: a\r\nREMOTE_user: x\r\nremote-EMAIL: x\r\nRemote_Name: x\r\nX-Remote-User: kept\r\nConnection: keep-alive, X-Api-Key\r\nx_api_key: 1\r\nX-API-KEY: 2\r\nKeep_Alive: 1\r\nTE: trailers\r\nProxy-Authorization: Basic x\r\nproxy_authorization: x\r\nProxy: http://evil\r\nX-Forwarded-Port: 1\r\nx_forwarded_for: 1.2.3.4\r\nX-Forwarded: x\r\nForwarded: for=1\r\nX_Real_IP: 1\r\nX-Original-URL: /admin\r\nx-rewrite-url: /admin\r\nContent_Length: 5\r\nTransfer_Encoding: chunked\r\nHTTP2-Settings: x\r\nUpgrade: h2c\r\nAccept: */*";
        assert_eq!(
            portal_head(&p, "127.0.0.1", head).expect("ok"),
            "Host: a\r\nX-Remote-User: kept\r\nAccept: */*\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: a\r\n"
        );
    }

    #[test]
    fn fields_are_grouped_by_name_in_first_appearance_order() {
        let p = policy(&[]);
        let head = "Host: a\r\nX-A: 1\r\nX-B: 2\r\nx-a: 3\r\nX_A: 4\r\nX-B: 5\r\nX-C: 6";
        assert_eq!(
            portal_head(&p, "127.0.0.1", head).expect("ok"),
            "Host: a\r\nX-A: 1\r\nx-a: 3\r\nX-B: 2\r\nX-B: 5\r\nX_A: 4\r\nX-C: 6\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: a\r\n"
        );
    }

    #[test]
    fn riegels_cookies_are_cut_out_of_every_cookie_field_bytes_kept() {
        let p = policy(&[]);
        let head = "Cookie: name=J\u{fc}rgen; riegel_session=abc;  lang=de\r\nCookie: riegel_session_csrf=x\r\ncookie: theme=dark\r\nCookie: a=1;riegel_session=2";
        assert_eq!(
            portal_head(&p, "127.0.0.1", head).expect("ok"),
            "Cookie: name=J\u{fc}rgen; lang=de\r\ncookie: theme=dark\r\nCookie: a=1\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\n"
        );
        // Latin-1 bytes stay bytes.
        let f = vec![(b"Cookie".to_vec(), b"n=J\xfcrgen; riegel_session=abc".to_vec())];
        let s = p.survey(ip("127.0.0.1"), &f).expect("ok");
        let mut out = Vec::new();
        let Ok(()) = p.write_fields(&f, &s, &mut out);
        assert_eq!(out, b"Cookie: n=J\xfcrgen\r\n");
    }

    #[test]
    fn connection_fields_are_limited_and_may_not_name_what_riegel_reads() {
        let p = policy(&[]);
        let names = |n: usize| (0..n).map(|i| format!("x-{i}")).collect::<Vec<_>>().join(", ");
        assert!(portal_head(&p, "127.0.0.1", &format!("Connection: {}", names(32))).is_ok());
        assert_eq!(portal_head(&p, "127.0.0.1", &format!("Connection: close, {}", names(32))), Err(Refusal::ConnectionTooLong));
        assert_eq!(portal_head(&p, "127.0.0.1", &format!("Connection: {}\r\nConnection: a", names(32))), Err(Refusal::ConnectionTooLong));
        for bad in ["\"x-a\"", "x a", "x/a", ":authority", "x\u{fc}"] {
            assert_eq!(portal_head(&p, "127.0.0.1", &format!("Connection: {bad}")), Err(Refusal::ConnectionNotToken), "{bad}");
        }
        for protected in ["host", "Cookie", "x_forwarded_for", "X-Forwarded-Host", "forwarded", "remote_user", "REMOTE-NAME", "content-length", "Transfer_Encoding", "origin", "expect"] {
            assert_eq!(portal_head(&p, "127.0.0.1", &format!("Connection: keep-alive, {protected}")), Err(Refusal::ConnectionProtected), "{protected}");
        }
        let f = fields("Connection: Keep-Alive, CLOSE, upgrade, , te");
        let s = p.survey(ip("127.0.0.1"), &f).expect("ok");
        assert!(s.close);
        assert_eq!(s.nominated(), [&b"te"[..]]);
        assert_eq!(portal_head(&p, "127.0.0.1", "Host: a\r\nhost: b"), Err(Refusal::SeveralHosts));
        assert_eq!(portal_head(&p, "127.0.0.1", "Host: user@a"), Err(Refusal::HostUserinfo));
    }

    fn client(p: &HeaderPolicy, peer: &str, xff: &[&[u8]]) -> Result<(IpAddr, String), Refusal> {
        let f: Vec<(Vec<u8>, Vec<u8>)> = xff.iter().map(|v| (b"X-Forwarded-For".to_vec(), v.to_vec())).collect();
        let s = p.survey(ip(peer), &f)?;
        let mut out = Vec::new();
        let Ok(()) = p.write_forwarding(&s, &mut out);
        let text = String::from_utf8(out).expect("ascii");
        let xff = text.lines().next().and_then(|l| l.strip_prefix("x-forwarded-for: ")).unwrap_or("").to_string();
        Ok((s.client, xff))
    }

    #[test]
    fn forwarded_for_is_walked_from_the_right_as_bytes() {
        let p = policy(&["10.0.0.0/8", "2001:db8:f::/48"]);
        let ok = |peer, xff: &[&[u8]]| client(&p, peer, xff).expect("ok");
        // An untrusted peer's header is not read, garbage and all.
        assert_eq!(ok("203.0.113.1", &[b"1.2.3.4", b"\xff"]), (ip("203.0.113.1"), "203.0.113.1".into()));
        // The case: garbage left of the client is never reached.
        assert_eq!(ok("10.0.0.1", &[b"\xff, 203.0.113.9"]), (ip("203.0.113.9"), "203.0.113.9, 10.0.0.1".into()));
        assert_eq!(ok("10.0.0.1", &[b"1.1.1.1, 198.51.100.7, 10.0.0.5"]), (ip("198.51.100.7"), "198.51.100.7, 10.0.0.5, 10.0.0.1".into()));
        // Several fields are one list; empty elements are skipped.
        assert_eq!(ok("10.0.0.1", &[b"1.1.1.1, 198.51.100.7", b" ,10.0.0.5,, "]), (ip("198.51.100.7"), "198.51.100.7, 10.0.0.5, 10.0.0.1".into()));
        // Ports, brackets, case, IPv4-mapped addresses.
        assert_eq!(ok("10.0.0.1", &[b"198.51.100.7:4711"]).0, ip("198.51.100.7"));
        assert_eq!(ok("10.0.0.1", &[b"[2001:DB8::1]:443"]), (ip("2001:db8::1"), "2001:db8::1, 10.0.0.1".into()));
        assert_eq!(ok("10.0.0.1", &[b"::ffff:198.51.100.7"]).0, ip("198.51.100.7"));
        assert_eq!(ok("::ffff:10.0.0.1", &[b"198.51.100.7"]), (ip("198.51.100.7"), "198.51.100.7, 10.0.0.1".into()));
        // All trusted: the left-most; none: the peer.
        assert_eq!(ok("10.0.0.1", &[b"10.0.0.9, 2001:db8:f::1"]), (ip("10.0.0.9"), "10.0.0.9, 2001:db8:f::1, 10.0.0.1".into()));
        assert_eq!(ok("10.0.0.1", &[]), (ip("10.0.0.1"), "10.0.0.1".into()));
        // Garbage where the next hop should be: refused, whatever it is.
        for bad in [&b"198.51.100.7, \xff"[..], b"garbage", b"unknown", b"1.2.3", b"10.0.0.5, 01.2.3.4", b"x, 10.0.0.5", b"fe80::1%eth0", b"1.2.3.4:99999"] {
            assert_eq!(client(&p, "10.0.0.1", &[bad]), Err(Refusal::ForwardedFor), "{:?}", String::from_utf8_lossy(bad));
        }
        // A chain of trusted hops longer than anyone runs.
        let long = vec!["10.0.0.2"; MAX_HOPS + 1].join(", ");
        assert_eq!(client(&p, "10.0.0.1", &[long.as_bytes()]), Err(Refusal::ForwardedForTooLong));
    }

    #[test]
    fn forwarded_proto_and_host_only_from_a_trusted_peer() {
        let p = policy(&["10.0.0.0/8"]);
        let head = "Host: portal.example\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Host: outer.example";
        let untrusted = portal_head(&p, "203.0.113.1", head).expect("ok");
        assert!(untrusted.ends_with("x-forwarded-proto: http\r\nx-forwarded-host: portal.example\r\n"), "{untrusted}");
        let trusted = portal_head(&p, "10.0.0.1", head).expect("ok");
        assert!(trusted.ends_with("x-forwarded-proto: https\r\nx-forwarded-host: outer.example\r\n"), "{trusted}");
        let odd = portal_head(&p, "10.0.0.1", "X-Forwarded-Proto: gopher").expect("ok");
        assert!(odd.ends_with("x-forwarded-proto: http\r\n"), "{odd}");
    }

    #[test]
    fn framing_must_be_plain() {
        let f = |h: &str| check_framing(&fields(h), false);
        assert_eq!(f("Host: a"), Ok(Body::None));
        assert_eq!(f("Content-Length: 0"), Ok(Body::Length(0)));
        assert_eq!(f("content-length: 42"), Ok(Body::Length(42)));
        assert_eq!(f("Transfer-Encoding: Chunked"), Ok(Body::Chunked));
        for bad in ["Content-Length: -1", "Content-Length: +1", "Content-Length: 0x1", "Content-Length: 1, 1", "Content-Length: 1\r\nContent-Length: 1", "Content-Length: 99999999999999999999", "Content-Length: "] {
            assert_eq!(f(bad), Err(Refusal::ContentLength), "{bad}");
        }
        for bad in ["Transfer-Encoding: chunked, identity", "Transfer-Encoding: identity, chunked", "Transfer-Encoding: gzip", "Transfer-Encoding: xchunked", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"] {
            assert_eq!(f(bad), Err(Refusal::TransferEncoding), "{bad}");
        }
        assert_eq!(f("Content-Length: 3\r\nTransfer-Encoding: chunked"), Err(Refusal::LengthAndCoding));
        assert_eq!(check_framing(&fields("Transfer-Encoding: chunked"), true), Err(Refusal::TransferEncoding));
        // Folded spellings are no framing to riegel (and never forwarded).
        assert_eq!(f("Content_Length: 5\r\nTransfer_Encoding: chunked"), Ok(Body::None));
    }

    #[test]
    fn targets_must_be_origin_form_without_fragment() {
        assert_eq!(check_target(b"GET", b"/a?b"), Ok(()));
        assert_eq!(check_target(b"OPTIONS", b"*"), Ok(()));
        assert_eq!(check_target(b"GET", b"*"), Err(Refusal::TargetForm));
        assert_eq!(check_target(b"GET", b"http://a/b"), Err(Refusal::TargetForm));
        assert_eq!(check_target(b"CONNECT", b"a:443"), Err(Refusal::TargetForm));
        assert_eq!(check_target(b"GET", b"/a#b"), Err(Refusal::Fragment));
        assert_eq!(check_target(b"GET", b"/assets/..#"), Err(Refusal::Fragment));
        // What Pingora's way refuses, the short way refuses too (found by
        // fuzz/differential: `GET /pub/` + backtick took the short way).
        for bad in [&b"/pub/`"[..], b"/a<b", b"/a>b", b"/?q=\"", b"/?q=<", b"/?a>"] {
            assert_eq!(check_target(b"GET", bad), Err(Refusal::TargetBytes), "{}", String::from_utf8_lossy(bad));
        }
        for ok in [&b"/a\"b{c}|d^e[f]\\g"[..], b"/?q=`{}|^", b"/caf\xc3\xa9?x=\xff"] {
            assert_eq!(check_target(b"GET", ok), Ok(()), "{}", String::from_utf8_lossy(ok));
        }
        let mut long = vec![b'/'];
        long.resize(MAX_TARGET, b'a');
        assert_eq!(check_target(b"GET", &long), Ok(()));
        long.push(b'a');
        assert_eq!(check_target(b"GET", &long), Err(Refusal::TargetBytes));
    }

    #[test]
    fn values_with_control_characters_are_not_sent() {
        assert!(valid_value("M\u{fc}ller, Anna\tX".as_bytes()));
        assert!(valid_value(b"J\xfcrgen"));
        assert!(!valid_value(b"a\r\nX-Evil: 1"));
        assert!(!valid_value(b"a\0"));
        assert!(!valid_value(b"a\x7f"));
    }

    #[test]
    fn same_header_folds_case_and_underscores() {
        assert!(same_header(b"Remote_User", b"remote-user"));
        assert!(same_header(b"X-A", b"x_a"));
        assert!(!same_header(b"X-A", b"X-AB"));
        assert!(starts_like(b"X_Forwarded_Port", b"x-forwarded-"));
        assert!(!starts_like(b"X-Forward", b"x-forwarded-"));
    }

    #[test]
    fn portal_mode_one_cookie_field_last_client_copies_of_the_portal_cookie_cut_the_jar_added() {
        let p = policy(&[]).with_portal_cookies(vec!["JSESSIONID".into()]);
        let head = "Host: a\r\nCookie: theme=dark; JSESSIONID=planted; riegel_session=x\r\nCookie: jsessionid=other-case\r\nAccept: */*";
        let f = fields(head);
        let s = p.survey(ip("127.0.0.1"), &f).expect("ok");
        let mut out = Vec::new();
        let Ok(()) = p.write_fields(&f, &s, &mut out);
        let joined = b"theme=dark; JSESSIONID=planted; riegel_session=x; jsessionid=other-case";
        let Ok(()) = p.write_cookie(Some(joined), Some("JSESSIONID=real"), &mut out);
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text, "Host: a\r\nAccept: */*\r\ncookie: theme=dark; JSESSIONID=real\r\n");
        // Without a jar (a public path) the client's other cookies still go.
        let mut out = Vec::new();
        let Ok(()) = p.write_cookie(Some(b"JSESSIONID=planted"), None, &mut out);
        assert!(out.is_empty());
        let mut out = Vec::new();
        let Ok(()) = p.write_cookie(None, Some("JSESSIONID=a\r\nX-Evil: 1"), &mut out);
        assert!(out.is_empty(), "a jar with control characters is never written");
        // Outside portal mode nothing changes.
        let mut out = Vec::new();
        let Ok(()) = policy(&[]).write_cookie(Some(b"a=1"), Some("J=1"), &mut out);
        assert!(out.is_empty());
        assert!(p.is_portal_set_cookie(b"JSESSIONID=1; Path=/") && p.is_portal_set_cookie(b" JSESSIONID =1"));
        assert!(!p.is_portal_set_cookie(b"JSESSIONIDX=1") && !p.is_portal_set_cookie(b"theme=dark"));
    }
}
