//! Pure header rules used by the proxy: which client headers must be
//! removed before the identity headers are added, and the client address.

use std::net::IpAddr;

/// Normalises a header name for comparison: lower case, `_` as `-`.
fn norm(name: &str) -> impl Iterator<Item = u8> + '_ {
    name.bytes().map(|b| if b == b'_' { b'-' } else { b.to_ascii_lowercase() })
}

pub fn same_header(a: &str, b: &str) -> bool {
    a.len() == b.len() && norm(a).eq(norm(b))
}

/// Returns the names of all request headers that must be removed: every
/// spelling (case, `_` for `-`) of the identity headers, and every header
/// the client lists in `Connection` (hop-by-hop by the client's own word,
/// which some servers would otherwise treat specially).
pub fn headers_to_strip<'a>(
    present: impl Iterator<Item = &'a str> + Clone,
    connection_values: impl Iterator<Item = &'a str>,
    identity: &[&str],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |n: &str| {
        if !out.iter().any(|o| o.eq_ignore_ascii_case(n)) {
            out.push(n.to_string());
        }
    };
    for name in present.clone() {
        if identity.iter().any(|id| same_header(name, id)) {
            push(name);
        }
    }
    for v in connection_values {
        for token in v.split(',') {
            let t = token.trim();
            if t.is_empty() || t.eq_ignore_ascii_case("close") || t.eq_ignore_ascii_case("keep-alive") || t.eq_ignore_ascii_case("upgrade") {
                continue;
            }
            push(t);
            // Also any present header that is the same modulo `_`/case.
            for name in present.clone() {
                if same_header(name, t) {
                    push(name);
                }
            }
        }
    }
    out
}

/// The first value of header `name` (any case) in a complete request head
/// as it came from the client (request line, header lines, blank line).
/// For the few headers only riegel's own pages read (`User-Agent`,
/// `Accept-Language`), which the proxy's short way does not pick out.
pub fn raw_header<'a>(head: &'a [u8], name: &str) -> Option<&'a str> {
    let mut lines = head.split(|&b| b == b'\n');
    lines.next()?; // the request line
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        if line[..colon].eq_ignore_ascii_case(name.as_bytes()) {
            return std::str::from_utf8(&line[colon + 1..]).ok().map(str::trim);
        }
    }
    None
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy;
/// then the right-most address in `X-Forwarded-For` that is not itself a
/// trusted proxy. A malformed header never "fails open": the last trusted
/// hop (the peer or the proxy that sent the garbage) is used instead.
pub fn client_ip(peer: IpAddr, xff: &[&str], trusted: &[ipnet::IpNet]) -> IpAddr {
    if !trusted.iter().any(|n| n.contains(&peer)) {
        return peer;
    }
    let mut current = peer;
    let hops: Vec<&str> = xff.iter().flat_map(|v| v.split(',')).map(str::trim).collect();
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            return current;
        };
        if trusted.iter().any(|n| n.contains(&ip)) {
            current = ip;
            continue;
        }
        return ip;
    }
    current
}

fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    // "[v6]:port" or "v4:port"
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: [&str; 3] = ["Remote-User", "Remote-Email", "Remote-Name"];

    #[test]
    fn every_spelling_of_identity_headers_is_stripped() {
        let present = ["remote-user", "REMOTE_USER", "Remote_Email", "rEmOtE-nAmE", "Accept", "X-Remote-User"];
        let s = headers_to_strip(present.iter().copied(), std::iter::empty(), &ID);
        assert_eq!(s, vec!["remote-user", "REMOTE_USER", "Remote_Email", "rEmOtE-nAmE"]);
    }

    #[test]
    fn connection_listed_headers_are_stripped() {
        let present = ["X-Api-Key", "Accept", "x_api_key"];
        let s = headers_to_strip(present.iter().copied(), ["keep-alive, X-Api-Key", "close"].into_iter(), &ID);
        assert_eq!(s, vec!["X-Api-Key", "x_api_key"]);
    }

    #[test]
    fn client_ip_without_trusted_proxies_is_the_peer() {
        let peer: IpAddr = "203.0.113.9".parse().expect("ip");
        assert_eq!(client_ip(peer, &["1.2.3.4"], &[]), peer);
    }

    #[test]
    fn client_ip_through_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let peer: IpAddr = "10.0.0.1".parse().expect("ip");
        assert_eq!(client_ip(peer, &["198.51.100.7, 10.0.0.5"], &trusted), "198.51.100.7".parse::<IpAddr>().expect("ip"));
        // The client cannot choose its address by prepending entries.
        assert_eq!(
            client_ip(peer, &["1.1.1.1, 198.51.100.7"], &trusted),
            "198.51.100.7".parse::<IpAddr>().expect("ip")
        );
        // Malformed: the last trusted hop, never the spoofed value.
        assert_eq!(client_ip(peer, &["1.1.1.1, garbage"], &trusted), peer);
        assert_eq!(client_ip(peer, &[], &trusted), peer);
        assert_eq!(client_ip(peer, &["[2001:db8::1]:443"], &trusted), "2001:db8::1".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn raw_header_finds_the_first_value_in_any_case() {
        let head = b"GET /_riegel/login HTTP/1.1\r\nHost: x\r\naccept-language:  de-AT,de;q=0.9 \r\nUser-Agent: A\r\nUser-Agent: B\r\n\r\nbody: no\r\n";
        assert_eq!(raw_header(head, "Accept-Language"), Some("de-AT,de;q=0.9"));
        assert_eq!(raw_header(head, "user-agent"), Some("A"));
        assert_eq!(raw_header(head, "body"), None, "nothing after the blank line");
        assert_eq!(raw_header(head, "GET /_riegel/login HTTP/1.1\r\nHost"), None);
        assert_eq!(raw_header(b"GET / HTTP/1.1\nX: \xff\n\n", "x"), None, "not UTF-8");
        assert_eq!(raw_header(b"", "x"), None);
    }
}
