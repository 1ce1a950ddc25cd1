//! The session cookie (`SessionCodec::decode`) and the Cookie header
//! splitting the policy uses (`find_cookie`, `strip_cookie`, and the policy
//! over a Cookie field): never a panic; what is stripped cannot be found
//! again; a cookie changed in any byte is refused; claims round-trip.
//! Input: one byte (which position to change, and to what), then bytes
//! used as a Cookie header, a cookie value and claims.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use riegel::auth::session::{find_cookie, strip_cookie, SessionClaims, SessionCodec, Stage};
use riegel::proxy::fuzzing::{peer, Fuzz, COOKIES};

static CODEC: OnceLock<(SessionCodec, SessionCodec)> = OnceLock::new();
static POLICY: OnceLock<Fuzz> = OnceLock::new();

const NOW: i64 = 1_780_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, header)) = data.split_first() else { return };
    let (codec, other) = CODEC.get_or_init(|| (SessionCodec::new(&[vec![7; 32], vec![9; 32]]), SessionCodec::new(&[vec![8; 32]])));

    // The Cookie header: riegel's cookies cut out, byte for byte otherwise.
    let mut out = vec![b'x'];
    let kept = strip_cookie(header, &COOKIES, &mut out);
    assert_eq!(kept, out.len() > 1);
    let out = &out[1..];
    for c in COOKIES {
        assert!(find_cookie(out, c).is_none(), "{c} survived strip_cookie");
    }
    for part in out.split(|&b| b == b';') {
        let part = part.trim_ascii();
        assert!(part.is_empty() || header.windows(part.len()).any(|w| w == part), "strip_cookie made up {part:?}");
    }
    // The policy over a Cookie field holding these bytes (when a field
    // could hold them): no riegel cookie reaches the portal.
    let policy = POLICY.get_or_init(Fuzz::default);
    if header.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)) {
        let lines = policy.portal_fields(&[(b"Cookie", header), (b"cookie", b"a=1")], peer(false)).expect("a Cookie field alone is never refused");
        for line in lines.split(|&b| b == b'\n') {
            if let Some(v) = line.strip_prefix(b"Cookie: ").or_else(|| line.strip_prefix(b"cookie: ")) {
                for c in COOKIES {
                    assert!(find_cookie(v, c).is_none(), "{c} reached the portal");
                }
            }
        }
    }

    // Any text as a session cookie: an error, never a panic.
    let text = String::from_utf8_lossy(header);
    if let Some(v) = find_cookie(header, COOKIES[0]) {
        let _ = codec.decode(v, NOW);
    }
    let _ = codec.decode(&text, NOW);

    // Claims from the bytes: a round trip; any changed byte refused; a
    // cookie of another key refused.
    if header.len() >= 33 {
        let be = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[r]);
            b
        };
        let mut sid = [0u8; 16];
        sid.copy_from_slice(&header[..16]);
        let claims = SessionClaims {
            sid,
            uid: u64::from_be_bytes(be(16..24)),
            stage: if header[24] & 1 == 0 { Stage::Password } else { Stage::Full },
            issued_at: i64::from_be_bytes(be(25..33)),
            expires_at: NOW + 1 + i64::from(header[24] >> 1),
        };
        let cookie = codec.encode(&claims);
        assert_eq!(codec.decode(&cookie, NOW), Ok(claims.clone()));
        assert!(other.decode(&cookie, NOW).is_err(), "a cookie of another key was accepted");
        assert!(codec.decode(&cookie, claims.expires_at).is_err(), "an expired cookie was accepted");
        let mut changed = cookie.clone().into_bytes();
        let i = usize::from(pick) % changed.len();
        let to = header[33..].first().copied().unwrap_or(b'A');
        if changed[i] != to {
            changed[i] = to;
            let changed = String::from_utf8_lossy(&changed);
            assert!(codec.decode(&changed, NOW).is_err(), "a changed cookie was accepted: {changed}");
        }
    }
});
