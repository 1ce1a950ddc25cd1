//! The narrowest public face of `h1` and `policy` for the fuzz targets in
//! fuzz/ (their own crate): owned results, no Pingora types. Not an API.

use std::net::IpAddr;
use std::ops::Range;

use super::h1::{self, Chunks, Cookies, Framing, Response, Way};
use super::policy::{Field, HeaderPolicy};

/// The identity field names and riegel's cookie names the targets use.
pub const IDENTITY: [&str; 3] = ["Remote-User", "Remote-Email", "Remote-Name"];
pub const COOKIES: [&str; 2] = ["riegel_session", "riegel_session_csrf"];

/// The proxy riegel trusts in the targets: `peer(true)` is inside it.
pub const TRUSTED: &str = "10.0.0.0/8";

/// A socket peer: the trusted proxy or a client on the internet.
pub fn peer(trusted: bool) -> IpAddr {
    if trusted {
        IpAddr::from([10, 0, 0, 1])
    } else {
        IpAddr::from([198, 51, 100, 7])
    }
}

/// The way decided for a head, with what the short way keeps.
#[derive(Debug)]
pub enum WayView {
    Short(ShortView),
    Framework,
    Refused(String),
}

/// A short-way head: ranges index the buffer given to [`Fuzz::way`].
#[derive(Debug)]
pub struct ShortView {
    pub len: usize,
    pub head_only: bool,
    pub path: Range<usize>,
    pub query: Option<Range<usize>>,
    /// The Cookie fields as riegel reads them (several joined by `; `).
    pub cookie: Option<Vec<u8>>,
    pub origin: Option<Range<usize>>,
    pub client: IpAddr,
    pub close: bool,
    /// The portal's head without identity and blank line.
    pub upstream: Vec<u8>,
}

/// The portal's answer head as the short way reads it.
#[derive(Debug)]
pub enum AnswerView {
    Partial,
    Informational(usize),
    Final { len: usize, status: u16, framing: FramingView, upstream_close: bool, downstream: Vec<u8> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingView {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A field as the policy sees it.
struct Pair<'a>(&'a [u8], &'a [u8]);

impl Field for Pair<'_> {
    fn name(&self) -> &[u8] {
        self.0
    }
    fn value(&self) -> &[u8] {
        self.1
    }
}

/// The header policy of the targets (trusting [`TRUSTED`]).
pub struct Fuzz(HeaderPolicy);

impl Default for Fuzz {
    fn default() -> Self {
        let trusted = TRUSTED.parse().map(|n| vec![n]).unwrap_or_default();
        Self(HeaderPolicy::new(IDENTITY, COOKIES.map(str::to_string), trusted, false))
    }
}

impl Fuzz {
    /// [`h1::way`] for the bytes read so far; `None`: incomplete.
    pub fn way(&self, buf: &[u8], peer: IpAddr) -> Option<WayView> {
        Some(match h1::way(buf, &self.0, peer)? {
            Way::Framework => WayView::Framework,
            Way::Refuse { why, .. } => WayView::Refused(why.to_string()),
            Way::Short(h) => WayView::Short(ShortView {
                len: h.len,
                head_only: h.head_only,
                path: h.path,
                query: h.query,
                cookie: h.cookie.map(|c| match c {
                    Cookies::One(r) => buf.get(r).unwrap_or_default().to_vec(),
                    Cookies::Joined(v) => v,
                }),
                origin: h.origin,
                client: h.client,
                close: h.close,
                upstream: h.upstream,
            }),
        })
    }

    /// The policy over one list of fields (name, value) from `peer`: the
    /// portal's fields and X-Forwarded-*, or why the head is refused.
    pub fn portal_fields(&self, fields: &[(&[u8], &[u8])], peer: IpAddr) -> Result<Vec<u8>, String> {
        let f: Vec<Pair<'_>> = fields.iter().map(|(n, v)| Pair(n, v)).collect();
        let s = self.0.survey(peer, &f).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let Ok(()) = self.0.write_fields(&f, &s, &mut out);
        let Ok(()) = self.0.write_forwarding(&s, &mut out);
        Ok(out)
    }
}

/// [`h1::response`]: the portal's answer to a GET (`head_only`: HEAD).
pub fn answer(buf: &[u8], head_only: bool) -> Result<AnswerView, String> {
    Ok(match h1::response(buf, head_only).map_err(|e| e.to_string())? {
        Response::Partial => AnswerView::Partial,
        Response::Informational(n) => AnswerView::Informational(n),
        Response::Final(h) => AnswerView::Final {
            len: h.len,
            status: h.status,
            framing: match h.framing {
                Framing::Empty => FramingView::Empty,
                Framing::Length(n) => FramingView::Length(n),
                Framing::Chunked => FramingView::Chunked,
                Framing::UntilClose => FramingView::UntilClose,
            },
            upstream_close: h.upstream_close,
            downstream: h.downstream,
        },
    })
}

/// The chunk scanner fed `pieces` in turn: where the body ends, counted
/// from the start of the first piece (`Ok(None)`: not yet), or the error.
pub fn chunked_end<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Result<Option<usize>, String> {
    let mut c = Chunks::default();
    let mut at = 0;
    for p in pieces {
        if let Some(n) = c.feed(p).map_err(|e| e.to_string())? {
            return Ok(Some(at + n));
        }
        at += p.len();
    }
    Ok(c.is_done().then_some(at))
}
