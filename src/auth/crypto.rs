//! Small cryptographic building blocks: randomness (injected), token
//! hashing, keyed MACs and the AEAD that encrypts TOTP secrets at rest.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub type HmacSha256 = Hmac<Sha256>;

/// A source of secure randomness; tests inject a deterministic one.
pub trait Random: Send + Sync + 'static {
    fn fill(&self, buf: &mut [u8]);
}

/// The operating system's CSPRNG.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl Random for OsRandom {
    fn fill(&self, buf: &mut [u8]) {
        use rand::RngCore;
        rand::rngs::OsRng.fill_bytes(buf);
    }
}

pub fn random_array<const N: usize>(rng: &dyn Random) -> [u8; N] {
    let mut b = [0u8; N];
    rng.fill(&mut b);
    b
}

/// A random token of `N` bytes as URL-safe base64 without padding.
pub fn random_token<const N: usize>(rng: &dyn Random) -> String {
    data_encoding::BASE64URL_NOPAD.encode(&random_array::<N>(rng))
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Derives a purpose-specific key from a master key, so one configured key
/// never serves two purposes directly.
pub fn derive_key(master: &[u8], purpose: &str) -> [u8; 32] {
    hmac_sha256(master, purpose.as_bytes())
}

pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; new_from_slice cannot fail.
    let mut mac = match <HmacSha256 as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0u8; 32],
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("ciphertext is malformed")]
    Malformed,
    #[error("ciphertext does not decrypt with this key and binding")]
    Decrypt,
}

/// Encrypts small secrets at rest with XChaCha20-Poly1305. The associated
/// data binds a ciphertext to its owner (e.g. the user id), so a record
/// copied onto another user does not decrypt.
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox([redacted])")
    }
}

impl SecretBox {
    /// The box for TOTP secrets.
    pub fn new(storage_key: &[u8]) -> Self {
        Self::for_purpose(storage_key, "riegel/totp-secret/v1")
    }

    /// A box with its own key derived for `purpose` (one key per kind of
    /// secret: TOTP secrets, spooled mails, portal cookies).
    pub fn for_purpose(storage_key: &[u8], purpose: &str) -> Self {
        let key = derive_key(storage_key, purpose);
        Self { cipher: XChaCha20Poly1305::new(&key.into()) }
    }

    /// nonce (24 bytes) || ciphertext+tag
    pub fn seal(&self, rng: &dyn Random, plaintext: &[u8], binding: &[u8]) -> Vec<u8> {
        let nonce = random_array::<24>(rng);
        let mut out = nonce.to_vec();
        // Encryption with a valid key and nonce length cannot fail.
        if let Ok(ct) = self.cipher.encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: binding }) {
            out.extend_from_slice(&ct);
        }
        out
    }

    pub fn open(&self, sealed: &[u8], binding: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < 24 + 16 {
            return Err(CryptoError::Malformed);
        }
        let (nonce, ct) = sealed.split_at(24);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: binding })
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// A deterministic "random" source for tests: a counter run through SHA-256.
#[derive(Debug, Default)]
pub struct TestRandom(std::sync::atomic::AtomicU64);

impl Random for TestRandom {
    fn fill(&self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(32) {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let h = sha256(&n.to_le_bytes());
            chunk.copy_from_slice(&h[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_box_round_trip_and_binding() {
        let rng = TestRandom::default();
        let b = SecretBox::new(&[7u8; 32]);
        let sealed = b.seal(&rng, b"secret", b"user:1");
        assert_eq!(b.open(&sealed, b"user:1").expect("opens"), b"secret");
        assert_eq!(b.open(&sealed, b"user:2"), Err(CryptoError::Decrypt));
        let other = SecretBox::new(&[8u8; 32]);
        assert_eq!(other.open(&sealed, b"user:1"), Err(CryptoError::Decrypt));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(b.open(&tampered, b"user:1"), Err(CryptoError::Decrypt));
        assert_eq!(b.open(&sealed[..10], b"user:1"), Err(CryptoError::Malformed));
    }

    #[test]
    fn same_plaintext_gives_different_ciphertexts() {
        let rng = TestRandom::default();
        let b = SecretBox::new(&[7u8; 32]);
        assert_ne!(b.seal(&rng, b"x", b"u"), b.seal(&rng, b"x", b"u"));
    }
}
