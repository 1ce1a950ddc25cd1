//! The HTTP client riegel uses to talk to the portal itself in portal
//! login mode ([`web::portal::PortalClient`]): the login replay (GET the
//! form, POST the credentials) and the logout call. One new connection per
//! request (`Connection: close`) to the upstream address through Pingora's
//! connector (TLS as configured), each step within the upstream's connect,
//! read and write timeouts; answers are read up to [`MAX_ANSWER`] bytes.

use std::net::IpAddr;

use async_trait::async_trait;
use pingora::connectors::TransportConnector;
use pingora::upstreams::peer::HttpPeer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::web::portal::{PortalClient, PortalError, PortalRequest, PortalResponse};

/// The most of an answer read (a login page with its hidden fields).
const MAX_ANSWER: usize = 1024 * 1024;

/// Most header fields read from an answer.
const MAX_FIELDS: usize = 128;

pub(crate) struct PortalHttp {
    connector: TransportConnector,
    peer: HttpPeer,
    /// The Host riegel sends: the public one, as browsers' requests carry.
    host: String,
    /// `http` or `https`: X-Forwarded-Proto.
    proto: &'static str,
}

impl PortalHttp {
    pub(crate) fn new(peer: HttpPeer, public_url: &url::Url) -> Self {
        let host = match (public_url.host_str(), public_url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => "localhost".to_string(),
        };
        let proto = if public_url.scheme() == "https" { "https" } else { "http" };
        Self { connector: TransportConnector::new(None), peer, host, proto }
    }

    fn head(&self, req: &PortalRequest) -> Result<Vec<u8>, PortalError> {
        let clean = |v: &str| v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
        if !clean(&req.target) || req.target.contains(' ') || req.cookie.as_deref().is_some_and(|c| !clean(c)) {
            return Err(PortalError::Bad("request with control characters".into()));
        }
        let mut h = format!("{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: riegel\r\nAccept: text/html\r\n", req.method, req.target, self.host);
        h.push_str(&format!("X-Forwarded-For: {}\r\nX-Forwarded-Proto: {}\r\n", fmt_ip(req.client_ip), self.proto));
        if let Some(c) = &req.cookie {
            h.push_str(&format!("Cookie: {c}\r\n"));
        }
        match &req.form {
            Some(body) => {
                h.push_str(&format!("Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n", body.len()));
                h.push_str(body);
            }
            None => h.push_str("\r\n"),
        }
        Ok(h.into_bytes())
    }
}

fn fmt_ip(ip: IpAddr) -> String {
    ip.to_canonical().to_string()
}

fn io(e: std::io::Error) -> PortalError {
    if e.kind() == std::io::ErrorKind::TimedOut {
        PortalError::Timeout
    } else {
        PortalError::Unreachable(e.kind().to_string())
    }
}

#[async_trait]
impl PortalClient for PortalHttp {
    async fn send(&self, req: PortalRequest) -> Result<PortalResponse, PortalError> {
        let head = self.head(&req)?;
        let opts = &self.peer.options;
        let mut stream = self.connector.new_stream(&self.peer).await.map_err(|e| match e.etype() {
            pingora::ErrorType::ConnectTimedout => PortalError::Timeout,
            t => PortalError::Unreachable(t.as_str().to_string()),
        })?;
        let write = async {
            stream.write_all(&head).await?;
            stream.flush().await
        };
        match opts.write_timeout {
            Some(t) => tokio::time::timeout(t, write).await.map_err(|_| PortalError::Timeout)?.map_err(io)?,
            None => write.await.map_err(io)?,
        }
        let mut buf = Vec::with_capacity(16 * 1024);
        let read_timeout = opts.read_timeout.unwrap_or(std::time::Duration::from_secs(60));
        loop {
            if let Some(r) = parse(&buf, false)? {
                return Ok(r);
            }
            if buf.len() > MAX_ANSWER {
                return parse(&buf, true)?.ok_or_else(|| PortalError::Bad("answer too long".into()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = tokio::time::timeout(read_timeout, stream.read(&mut chunk)).await.map_err(|_| PortalError::Timeout)?.map_err(io)?;
            if n == 0 {
                return parse(&buf, true)?.ok_or_else(|| PortalError::Bad("the portal closed the connection mid-answer".into()));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The answer in `buf` once it is whole (`ended`: the connection closed,
/// or the read limit was reached: what is there is the body).
fn parse(buf: &[u8], ended: bool) -> Result<Option<PortalResponse>, PortalError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut res = httparse::Response::new(&mut fields);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if ended => return Err(PortalError::Bad("incomplete answer head".into())),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(PortalError::Bad(e.to_string())),
    };
    let status = res.code.unwrap_or(0);
    if (100..200).contains(&status) {
        // 100 Continue and friends: the real answer follows.
        return parse(&buf[len..], ended);
    }
    let mut out = PortalResponse { status, ..PortalResponse::default() };
    let mut length = None;
    let mut chunked = false;
    for f in res.headers.iter() {
        let text = || String::from_utf8_lossy(f.value).into_owned();
        if f.name.eq_ignore_ascii_case("set-cookie") {
            out.set_cookies.push(text());
        } else if f.name.eq_ignore_ascii_case("location") {
            out.location = Some(text());
        } else if f.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(f.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
        } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = f.value.to_ascii_lowercase().ends_with(b"chunked");
        }
    }
    let body = &buf[len..];
    let bodiless = status == 204 || status == 304;
    out.body = if bodiless {
        Vec::new()
    } else if chunked {
        match dechunk(body) {
            Some(b) => b,
            None if ended => body.to_vec(),
            None => return Ok(None),
        }
    } else if let Some(n) = length {
        if body.len() < n {
            if ended {
                return Err(PortalError::Bad("answer shorter than its Content-Length".into()));
            }
            return Ok(None);
        }
        body[..n].to_vec()
    } else if ended {
        body.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(out))
}

/// A whole chunked body decoded; `None` while it is not complete.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_by_length_chunks_or_close() {
        let r = parse(b"HTTP/1.1 302 Found\r\nLocation: /home\r\nSet-Cookie: S=1; Path=/\r\nSet-Cookie: t=2\r\nContent-Length: 0\r\n\r\n", false)
            .expect("ok")
            .expect("whole");
        assert_eq!((r.status, r.location.as_deref(), r.set_cookies.len()), (302, Some("/home"), 2));
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", false).expect("ok"), None);
        let r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n", false).expect("ok").expect("whole");
        assert_eq!(r.body, b"abcde");
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\n\r\nuntil close", false).expect("ok"), None);
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\n\r\nuntil close", true).expect("ok").expect("whole").body, b"until close");
        let r = parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", false).expect("ok").expect("whole");
        assert_eq!(r.status, 204);
        assert!(parse(b"garbage\r\n\r\n", false).is_err());
    }
}
