//! Helpers the targets share: heads parsed the reference way.

#![allow(dead_code)]

/// A head's fields as httparse reads them (up to 256, as riegel and
/// Pingora read at most), with method, target, version and length.
pub struct Parsed {
    pub method: Vec<u8>,
    pub target: Vec<u8>,
    pub version: u8,
    pub len: usize,
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

/// httparse over a request head; `None` unless complete and valid.
pub fn request(buf: &[u8]) -> Option<Parsed> {
    let mut h = vec![httparse::EMPTY_HEADER; 256];
    let mut r = httparse::Request::new(&mut h);
    let httparse::Status::Complete(len) = r.parse(buf).ok()? else { return None };
    Some(Parsed {
        method: r.method?.as_bytes().to_vec(),
        target: r.path?.as_bytes().to_vec(),
        version: r.version?,
        len,
        fields: r.headers.iter().map(|f| (f.name.as_bytes().to_vec(), f.value.to_vec())).collect(),
    })
}

/// The fields of a head riegel wrote (no blank line yet): it must parse,
/// whole, as HTTP/1.1.
pub fn own_head(head: &[u8]) -> Parsed {
    let mut b = head.to_vec();
    b.extend_from_slice(b"\r\n");
    let p = request(&b).unwrap_or_else(|| panic!("riegel wrote a head httparse cannot read: {:?}", String::from_utf8_lossy(head)));
    assert_eq!(p.len, b.len(), "riegel's head ends early: {:?}", String::from_utf8_lossy(head));
    p
}

/// Header names compared as the policy does: any case, `_` as `-`.
pub fn fold(n: &[u8]) -> Vec<u8> {
    n.iter().map(|&b| if b == b'_' { b'-' } else { b.to_ascii_lowercase() }).collect()
}

/// Fields grouped by name (any case) in first-appearance order, the
/// order Pingora's header map keeps: (lower-case name, values in order).
pub fn grouped(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<(Vec<u8>, Vec<Vec<u8>>)> {
    let mut out: Vec<(Vec<u8>, Vec<Vec<u8>>)> = Vec::new();
    for (n, v) in fields {
        let n = n.to_ascii_lowercase();
        match out.iter_mut().find(|(m, _)| *m == n) {
            Some((_, vs)) => vs.push(v.clone()),
            None => out.push((n, vec![v.clone()])),
        }
    }
    out
}
