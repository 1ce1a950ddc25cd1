//! The session cookie: a random session id, the user, the stage, issued-at
//! and expiry, signed with HMAC-SHA256. The signature is checked in
//! constant time over the cookie text before anything in it is parsed.
//! Several keys may be configured: the first signs, all verify.
//!
//! The cookie alone never grants access: the session record in the store
//! must exist too, so logout and "end all sessions" really end them.

use hmac::Mac;

use super::crypto::{derive_key, random_array, HmacSha256, Random};
use crate::clock::UnixTime;

pub use crate::store::{SessionId, Stage};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionClaims {
    pub sid: SessionId,
    pub uid: u64,
    pub stage: Stage,
    pub issued_at: UnixTime,
    pub expires_at: UnixTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("cookie is malformed")]
    Malformed,
    #[error("cookie signature is not valid")]
    BadSignature,
    #[error("session has expired")]
    Expired,
}

const VERSION: u8 = 1;
const PAYLOAD_LEN: usize = 1 + 1 + 16 + 8 + 8 + 8;
const TAG_LEN: usize = 32;
const B64: data_encoding::Encoding = data_encoding::BASE64URL_NOPAD;

/// Signs and verifies session cookies. Cheap to clone; keyed MAC states
/// are prepared once.
#[derive(Clone)]
pub struct SessionCodec {
    macs: Vec<HmacSha256>,
    csrf_key: [u8; 32],
}

impl std::fmt::Debug for SessionCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionCodec({} keys)", self.macs.len())
    }
}

impl SessionCodec {
    /// `keys[0]` signs; every key verifies. `keys` must not be empty.
    pub fn new(keys: &[Vec<u8>]) -> Self {
        let macs = keys
            .iter()
            .filter_map(|k| <HmacSha256 as Mac>::new_from_slice(&derive_key(k, "riegel/session-cookie/v1")).ok())
            .collect();
        let csrf_key = keys.first().map(|k| derive_key(k, "riegel/csrf/v1")).unwrap_or([0; 32]);
        Self { macs, csrf_key }
    }

    pub fn new_session_id(rng: &dyn Random) -> SessionId {
        random_array::<16>(rng)
    }

    pub fn encode(&self, c: &SessionClaims) -> String {
        let mut p = [0u8; PAYLOAD_LEN];
        p[0] = VERSION;
        p[1] = c.stage as u8;
        p[2..18].copy_from_slice(&c.sid);
        p[18..26].copy_from_slice(&c.uid.to_be_bytes());
        p[26..34].copy_from_slice(&c.issued_at.to_be_bytes());
        p[34..42].copy_from_slice(&c.expires_at.to_be_bytes());
        let mut out = B64.encode(&p);
        let tag = match self.macs.first() {
            Some(m) => {
                let mut m = m.clone();
                m.update(out.as_bytes());
                m.finalize().into_bytes()
            }
            None => return String::new(),
        };
        out.push('.');
        out.push_str(&B64.encode(&tag));
        out
    }

    /// Verifies the signature (constant time, every key), then parses, then
    /// checks the expiry against `now`.
    pub fn decode(&self, value: &str, now: UnixTime) -> Result<SessionClaims, SessionError> {
        let (body, tag_b64) = value.split_once('.').ok_or(SessionError::Malformed)?;
        if tag_b64.len() != B64.encode_len(TAG_LEN) || body.len() != B64.encode_len(PAYLOAD_LEN) {
            return Err(SessionError::Malformed);
        }
        let mut tag = [0u8; TAG_LEN];
        B64.decode_mut(tag_b64.as_bytes(), &mut tag).map_err(|_| SessionError::Malformed)?;
        let mut ok = false;
        for m in &self.macs {
            let mut m = m.clone();
            m.update(body.as_bytes());
            // verify_slice compares in constant time.
            ok |= m.verify_slice(&tag).is_ok();
        }
        if !ok {
            return Err(SessionError::BadSignature);
        }
        let mut p = [0u8; PAYLOAD_LEN];
        B64.decode_mut(body.as_bytes(), &mut p).map_err(|_| SessionError::Malformed)?;
        if p[0] != VERSION {
            return Err(SessionError::Malformed);
        }
        let stage = match p[1] {
            1 => Stage::Password,
            2 => Stage::Full,
            _ => return Err(SessionError::Malformed),
        };
        let mut sid = [0u8; 16];
        sid.copy_from_slice(&p[2..18]);
        let be8 = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&p[r]);
            b
        };
        let claims = SessionClaims {
            sid,
            uid: u64::from_be_bytes(be8(18..26)),
            stage,
            issued_at: i64::from_be_bytes(be8(26..34)),
            expires_at: i64::from_be_bytes(be8(34..42)),
        };
        if now >= claims.expires_at {
            return Err(SessionError::Expired);
        }
        Ok(claims)
    }

    /// The CSRF form token for a CSRF cookie value (signed double submit).
    pub fn csrf_token(&self, csrf_cookie: &str) -> String {
        B64.encode(&super::crypto::hmac_sha256(&self.csrf_key, csrf_cookie.as_bytes()))
    }

    pub fn csrf_ok(&self, csrf_cookie: &str, form_token: &str) -> bool {
        !csrf_cookie.is_empty() && super::crypto::ct_eq(self.csrf_token(csrf_cookie).as_bytes(), form_token.as_bytes())
    }
}

/// Without leading and trailing ASCII whitespace.
fn trim(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if !first.is_ascii_whitespace() {
            break;
        }
        b = rest;
    }
    while let [rest @ .., last] = b {
        if !last.is_ascii_whitespace() {
            break;
        }
        b = rest;
    }
    b
}

/// Finds the value of cookie `name` in a `Cookie` header's bytes without
/// allocating. The header may hold any bytes (browsers send raw UTF-8, some
/// clients Latin-1): only the value found must be UTF-8, else there is no
/// such cookie.
pub fn find_cookie<'a>(header: &'a [u8], name: &str) -> Option<&'a str> {
    let value = header.split(|&b| b == b';').find_map(|part| {
        let eq = part.iter().position(|&b| b == b'=')?;
        (trim(&part[..eq]) == name.as_bytes()).then(|| {
            let mut v = trim(&part[eq + 1..]);
            while let [b'"', rest @ ..] = v {
                v = rest;
            }
            while let [rest @ .., b'"'] = v {
                v = rest;
            }
            v
        })
    })?;
    std::str::from_utf8(value).ok()
}

/// Appends to `out` a `Cookie` header's cookies without those called one
/// of `names`, every other cookie byte for byte, joined by `; `. Returns
/// whether anything was kept (`out` is unchanged when not).
pub fn strip_cookie(header: &[u8], names: &[&str], out: &mut Vec<u8>) -> bool {
    let mut kept = false;
    for part in header.split(|&b| b == b';') {
        let part = trim(part);
        let key = trim(part.split(|&b| b == b'=').next().unwrap_or(part));
        if key.is_empty() || names.iter().any(|n| key == n.as_bytes()) {
            continue;
        }
        if kept {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(part);
        kept = true;
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::crypto::TestRandom;

    fn claims() -> SessionClaims {
        SessionClaims { sid: [9; 16], uid: 42, stage: Stage::Full, issued_at: 1_000, expires_at: 2_000 }
    }

    #[test]
    fn round_trip() {
        let c = SessionCodec::new(&[b"k".repeat(32)]);
        let v = c.encode(&claims());
        assert_eq!(c.decode(&v, 1_500), Ok(claims()));
    }

    #[test]
    fn every_tampered_byte_is_refused() {
        let c = SessionCodec::new(&[b"k".repeat(32)]);
        let v = c.encode(&claims());
        for i in 0..v.len() {
            let mut bytes = v.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(bytes).expect("ascii");
            if t == v {
                continue;
            }
            assert!(c.decode(&t, 1_500).is_err(), "tampered at {i} accepted");
        }
        assert_eq!(c.decode("", 1_500), Err(SessionError::Malformed));
        assert_eq!(c.decode("abc.def", 1_500), Err(SessionError::Malformed));
    }

    #[test]
    fn stage_cannot_be_upgraded_without_the_key() {
        let c = SessionCodec::new(&[b"k".repeat(32)]);
        let mut cl = claims();
        cl.stage = Stage::Password;
        let v = c.encode(&cl);
        let forged = SessionCodec::new(&[b"x".repeat(32)]).encode(&claims());
        let (body, _) = forged.split_once('.').expect("dot");
        let (_, tag) = v.split_once('.').expect("dot");
        assert_eq!(c.decode(&format!("{body}.{tag}"), 1_500), Err(SessionError::BadSignature));
    }

    #[test]
    fn expiry_with_injected_time() {
        let c = SessionCodec::new(&[b"k".repeat(32)]);
        let v = c.encode(&claims());
        assert!(c.decode(&v, 1_999).is_ok());
        assert_eq!(c.decode(&v, 2_000), Err(SessionError::Expired));
    }

    #[test]
    fn key_rotation_first_signs_all_verify() {
        let old = SessionCodec::new(&[b"old".repeat(11)]);
        let rotated = SessionCodec::new(&[b"new".repeat(11), b"old".repeat(11)]);
        let new_only = SessionCodec::new(&[b"new".repeat(11)]);
        let by_old = old.encode(&claims());
        assert!(rotated.decode(&by_old, 1_500).is_ok());
        assert_eq!(new_only.decode(&by_old, 1_500), Err(SessionError::BadSignature));
        let by_rotated = rotated.encode(&claims());
        assert!(new_only.decode(&by_rotated, 1_500).is_ok());
        assert!(old.decode(&by_rotated, 1_500).is_err());
    }

    #[test]
    fn csrf_tokens() {
        let c = SessionCodec::new(&[b"k".repeat(32)]);
        let t = c.csrf_token("cookie-a");
        assert!(c.csrf_ok("cookie-a", &t));
        assert!(!c.csrf_ok("cookie-b", &t));
        assert!(!c.csrf_ok("", &c.csrf_token("")));
    }

    #[test]
    fn session_ids_are_random() {
        let r = TestRandom::default();
        assert_ne!(SessionCodec::new_session_id(&r), SessionCodec::new_session_id(&r));
    }

    fn stripped(h: &[u8], names: &[&str]) -> Option<Vec<u8>> {
        let mut out = b"x".to_vec();
        strip_cookie(h, names, &mut out).then(|| out.split_off(1))
    }

    #[test]
    fn cookie_helpers() {
        let h = b"a=1; riegel_session=xyz; b=\"2\"";
        assert_eq!(find_cookie(h, "riegel_session"), Some("xyz"));
        assert_eq!(find_cookie(h, "b"), Some("2"));
        assert_eq!(find_cookie(h, "c"), None);
        assert_eq!(stripped(h, &["riegel_session"]).as_deref(), Some(&b"a=1; b=\"2\""[..]));
        assert_eq!(stripped(b"riegel_session=x", &["riegel_session"]), None);
        assert_eq!(stripped(b"  riegel_session=x ;; =y", &["riegel_session"]), None);
    }

    #[test]
    fn cookie_helpers_work_on_any_bytes() {
        // Raw UTF-8 and Latin-1 around riegel's cookie.
        let h = "name=J\u{fc}rgen; riegel_session=xyz; x=\u{e4}".as_bytes();
        assert_eq!(find_cookie(h, "riegel_session"), Some("xyz"));
        assert_eq!(stripped(h, &["riegel_session"]).as_deref(), Some("name=J\u{fc}rgen; x=\u{e4}".as_bytes()));
        let h = b"name=J\xfcrgen;riegel_session=xyz;riegel_session_csrf=c";
        assert_eq!(find_cookie(h, "riegel_session"), Some("xyz"));
        assert_eq!(find_cookie(h, "riegel_session_csrf"), Some("c"));
        assert_eq!(stripped(h, &["riegel_session", "riegel_session_csrf"]).as_deref(), Some(&b"name=J\xfcrgen"[..]));
        // A value that is not UTF-8 is no session cookie.
        assert_eq!(find_cookie(b"riegel_session=\xff", "riegel_session"), None);
        // The first cookie of that name counts.
        assert_eq!(find_cookie(b"riegel_session=a; riegel_session=b", "riegel_session"), Some("a"));
    }
}
