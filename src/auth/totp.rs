//! TOTP (RFC 6238) as every authenticator app supports it: SHA-1, six
//! digits, 30-second steps. A code is accepted within one step either way,
//! and each time step only once: the caller stores the returned step and
//! passes it back as `last_used_step`, so a replayed code (or one from before
//! a clock step backwards) is refused.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};

use super::crypto::{hmac_sha256, random_array, Random};
use crate::clock::UnixTime;

pub const SECRET_LEN: usize = 20;
pub const DIGITS: usize = 6;
pub const PERIOD: i64 = 30;
/// Steps accepted either side of the current one.
pub const SKEW: i64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TotpError {
    #[error("a code has six digits")]
    Format,
    #[error("the code is wrong or expired")]
    Invalid,
    #[error("the code was already used")]
    Replayed,
}

pub fn generate_secret(rng: &dyn Random) -> [u8; SECRET_LEN] {
    random_array::<SECRET_LEN>(rng)
}

pub fn step_of(t: UnixTime) -> i64 {
    t.div_euclid(PERIOD)
}

fn totp(secret: &[u8], digits: usize, alg: Algorithm) -> TOTP {
    TOTP::new_unchecked(alg, digits, 0, PERIOD as u64, secret.to_vec())
}

/// The code for a time step (HOTP with the step as counter).
pub fn code_for_step(secret: &[u8], step: i64) -> String {
    let step = u64::try_from(step).unwrap_or(0);
    totp(secret, DIGITS, Algorithm::SHA1).generate(step * PERIOD as u64)
}

/// Normalises user input: spaces removed; then exactly six ASCII digits.
pub fn normalize_code(input: &str) -> Result<[u8; DIGITS], TotpError> {
    let mut out = [0u8; DIGITS];
    let mut n = 0;
    for b in input.bytes() {
        match b {
            b' ' | b'\t' | b'-' => continue,
            b'0'..=b'9' if n < DIGITS => {
                out[n] = b;
                n += 1;
            }
            _ => return Err(TotpError::Format),
        }
    }
    if n == DIGITS {
        Ok(out)
    } else {
        Err(TotpError::Format)
    }
}

/// Checks `input` at time `now`. Returns the matching time step, which the
/// caller must record atomically as the new `last_used_step`.
pub fn verify(secret: &[u8], input: &str, now: UnixTime, last_used_step: Option<i64>) -> Result<i64, TotpError> {
    let code = normalize_code(input)?;
    let current = step_of(now);
    let mut matched: Option<i64> = None;
    // Compute every candidate and compare in constant time, whatever matches.
    for step in current - SKEW..=current + SKEW {
        let expected = code_for_step(secret, step);
        if bool::from(expected.as_bytes().ct_eq(&code)) && matched.is_none() {
            matched = Some(step);
        }
    }
    match matched {
        None => Err(TotpError::Invalid),
        Some(step) if last_used_step.is_some_and(|last| step <= last) => Err(TotpError::Replayed),
        Some(step) => Ok(step),
    }
}

/// RFC 3986 unreserved characters stay; everything else is encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

pub fn secret_base32(secret: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(secret)
}

/// The key for manual entry, in groups of four.
pub fn group_secret(b32: &str) -> String {
    b32.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `otpauth://totp/ISSUER:ACCOUNT?secret=...&issuer=...&algorithm=SHA1&digits=6&period=30`
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let i = utf8_percent_encode(issuer, COMPONENT);
    let a = utf8_percent_encode(account, COMPONENT);
    format!(
        "otpauth://totp/{i}:{a}?secret={}&issuer={i}&algorithm=SHA1&digits={DIGITS}&period={PERIOD}",
        secret_base32(secret)
    )
}

/// The URI as an inline SVG QR code (black on white, with a quiet zone).
pub fn qr_svg(uri: &str) -> Option<String> {
    let code = qrcode::QrCode::with_error_correction_level(uri.as_bytes(), qrcode::EcLevel::M).ok()?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(240, 240)
        .quiet_zone(true)
        .dark_color(qrcode::render::svg::Color("#000000"))
        .light_color(qrcode::render::svg::Color("#ffffff"))
        .build();
    // Drop the XML declaration: the SVG is inlined into HTML.
    let start = svg.find("<svg")?;
    let svg = &svg[start..];
    // Make it scale with CSS and describe it for screen readers.
    Some(svg.replacen("<svg ", "<svg class=\"qr\" role=\"img\" aria-label=\"QR code\" ", 1))
}

// ---- recovery codes ----

pub const RECOVERY_CODES: usize = 10;
/// Unambiguous lowercase letters and digits (no 0/o, 1/l/i).
const RECOVERY_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// Ten codes like `k3v9x-7mqtd`, about 49 bits each.
pub fn generate_recovery_codes(rng: &dyn Random) -> Vec<String> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let bytes = random_array::<10>(rng);
            let mut s = String::with_capacity(11);
            for (i, b) in bytes.iter().enumerate() {
                if i == 5 {
                    s.push('-');
                }
                // 256 % 31 bias is < 1 %; acceptable for 49-bit codes.
                s.push(RECOVERY_ALPHABET[*b as usize % RECOVERY_ALPHABET.len()] as char);
            }
            s
        })
        .collect()
}

pub fn normalize_recovery_code(input: &str) -> String {
    input.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect()
}

/// Recovery codes are stored as a keyed hash bound to the user, so a stolen
/// database alone does not allow guessing them offline.
pub fn hash_recovery_code(pepper: &[u8], uid: u64, code: &str) -> [u8; 32] {
    let mut data = uid.to_be_bytes().to_vec();
    data.extend_from_slice(normalize_recovery_code(code).as_bytes());
    hmac_sha256(pepper, &data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::crypto::TestRandom;

    const RFC_SECRET: &[u8] = b"12345678901234567890";

    #[test]
    fn rfc4226_appendix_d() {
        let expected = ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489"];
        for (counter, want) in expected.iter().enumerate() {
            assert_eq!(code_for_step(RFC_SECRET, counter as i64), *want, "counter {counter}");
        }
    }

    #[test]
    fn rfc6238_appendix_b_sha1() {
        // 8-digit SHA-1 vectors of RFC 6238 appendix B.
        let cases = [
            (59u64, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
            (20000000000, "65353130"),
        ];
        for (t, want) in cases {
            assert_eq!(totp(RFC_SECRET, 8, Algorithm::SHA1).generate(t), want, "t={t}");
        }
    }

    #[test]
    fn rfc6238_appendix_b_sha256_sha512() {
        let s256 = b"12345678901234567890123456789012";
        let s512 = b"1234567890123456789012345678901234567890123456789012345678901234";
        assert_eq!(totp(s256, 8, Algorithm::SHA256).generate(59), "46119246");
        assert_eq!(totp(s256, 8, Algorithm::SHA256).generate(1234567890), "91819424");
        assert_eq!(totp(s512, 8, Algorithm::SHA512).generate(59), "90693936");
        assert_eq!(totp(s512, 8, Algorithm::SHA512).generate(2000000000), "38618901");
    }

    #[test]
    fn skew_of_one_step_accepted_two_rejected() {
        let t = 1_700_000_000;
        let s = step_of(t);
        for (delta, ok) in [(-2, false), (-1, true), (0, true), (1, true), (2, false)] {
            let code = code_for_step(RFC_SECRET, s + delta);
            assert_eq!(verify(RFC_SECRET, &code, t, None).is_ok(), ok, "delta {delta}");
        }
    }

    #[test]
    fn replay_is_rejected_and_clock_step_back_does_not_help() {
        let t = 1_700_000_000;
        let code = code_for_step(RFC_SECRET, step_of(t));
        let used = verify(RFC_SECRET, &code, t, None).expect("first use");
        assert_eq!(verify(RFC_SECRET, &code, t, Some(used)), Err(TotpError::Replayed));
        // The server clock jumps back a minute: the old step's code and the one
        // before it must not become usable again.
        let earlier = code_for_step(RFC_SECRET, step_of(t) - 1);
        assert_eq!(verify(RFC_SECRET, &earlier, t - 60, Some(used)), Err(TotpError::Replayed));
        assert!(verify(RFC_SECRET, &code, t - 60, Some(used)).is_err());
        // Even within the window after the jump back, the used step stays used.
        assert_eq!(verify(RFC_SECRET, &code, t - 30, Some(used)), Err(TotpError::Replayed));
        // The next step is fine.
        let next = code_for_step(RFC_SECRET, step_of(t) + 1);
        assert_eq!(verify(RFC_SECRET, &next, t + 30, Some(used)), Ok(used + 1));
    }

    #[test]
    fn input_normalisation() {
        assert_eq!(normalize_code(" 123 456 "), Ok(*b"123456"));
        assert_eq!(normalize_code("123-456"), Ok(*b"123456"));
        assert_eq!(normalize_code("12345"), Err(TotpError::Format));
        assert_eq!(normalize_code("1234567"), Err(TotpError::Format));
        assert_eq!(normalize_code("12345a"), Err(TotpError::Format));
        assert_eq!(normalize_code("١٢٣٤٥٦"), Err(TotpError::Format)); // Arabic-Indic digits
        assert_eq!(normalize_code("１２３４５６"), Err(TotpError::Format)); // full-width digits
    }

    #[test]
    fn uri_encoding() {
        let uri = otpauth_uri("IMMO PRO", "anna+test@example.at", &[0u8; 20]);
        assert_eq!(
            uri,
            "otpauth://totp/IMMO%20PRO:anna%2Btest%40example.at?secret=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&issuer=IMMO%20PRO&algorithm=SHA1&digits=6&period=30"
        );
        let uri = otpauth_uri("Müller & Söhne", "jörg", &[0u8; 20]);
        assert!(uri.starts_with("otpauth://totp/M%C3%BCller%20%26%20S%C3%B6hne:j%C3%B6rg?"), "{uri}");
        assert!(uri.contains("&issuer=M%C3%BCller%20%26%20S%C3%B6hne&"), "{uri}");
    }

    #[test]
    fn secret_grouping_and_qr() {
        let s = generate_secret(&TestRandom::default());
        let b32 = secret_base32(&s);
        assert_eq!(b32.len(), 32);
        let g = group_secret(&b32);
        assert_eq!(g.split(' ').count(), 8);
        assert!(g.split(' ').all(|p| p.len() == 4));
        let svg = qr_svg(&otpauth_uri("I", "a", &s)).expect("svg");
        assert!(svg.starts_with("<svg class=\"qr\""));
    }

    #[test]
    fn recovery_codes_are_distinct_and_hash_per_user() {
        let codes = generate_recovery_codes(&TestRandom::default());
        assert_eq!(codes.len(), 10);
        let set: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(set.len(), 10);
        assert!(codes.iter().all(|c| c.len() == 11 && c.as_bytes()[5] == b'-'));
        let h = hash_recovery_code(b"pepper", 1, &codes[0]);
        assert_eq!(h, hash_recovery_code(b"pepper", 1, &codes[0].to_uppercase().replace('-', " ")));
        assert_ne!(h, hash_recovery_code(b"pepper", 2, &codes[0]));
    }
}
