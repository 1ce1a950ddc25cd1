//! Password hashing (argon2id) and the password policy. Verification also
//! accepts argon2i/argon2d and bcrypt hashes, so users imported from the
//! portal keep their passwords; such hashes are flagged for an upgrade.
//! These functions are CPU-heavy and blocking: callers run them off the
//! async executor.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::password_hash::{Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use super::crypto::{random_array, Random};
use crate::config::Argon2Params;

/// Longer passwords are refused before any hashing.
pub const MAX_PASSWORD_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("the stored hash is not a supported argon2 or bcrypt hash")]
    UnsupportedHash,
    #[error("argon2 parameters are invalid: {0}")]
    Params(String),
    #[error("password is longer than {MAX_PASSWORD_BYTES} bytes")]
    TooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    Wrong,
    /// Right; `upgrade` asks the caller to store a fresh argon2id hash.
    Right { upgrade: bool },
}

#[derive(Clone)]
pub struct Hasher {
    argon: Argon2<'static>,
    params: Argon2Params,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hasher({:?})", self.params)
    }
}

impl Hasher {
    pub fn new(p: &Argon2Params) -> Result<Self, PasswordError> {
        let params = Params::new(p.memory_kib, p.iterations, p.parallelism, None)
            .map_err(|e| PasswordError::Params(e.to_string()))?;
        Ok(Self { argon: Argon2::new(Algorithm::Argon2id, Version::V0x13, params), params: p.clone() })
    }

    pub fn hash(&self, password: &str, rng: &dyn Random) -> Result<String, PasswordError> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(PasswordError::TooLong);
        }
        let salt_bytes = random_array::<16>(rng);
        let salt = SaltString::encode_b64(&salt_bytes).map_err(params_error)?;
        // What argon2's `hash_password` does, on this thread's working
        // memory (see [`SCRATCH`]).
        let params = self.argon.params();
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        let out = out.get_mut(..params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)).ok_or(PasswordError::Params("output length".into()))?;
        with_scratch(params.block_count(), |memory| self.argon.hash_password_into_with_memory(password.as_bytes(), &salt_bytes, out, memory))?
            .map_err(params_error)?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: params.try_into().map_err(params_error)?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(out).map_err(params_error)?),
        };
        Ok(phc.to_string())
    }

    /// Checks a password against a stored argon2 or bcrypt hash. Passwords
    /// are compared exactly as typed.
    pub fn verify(&self, stored: &str, password: &str) -> Result<Verified, PasswordError> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(PasswordError::TooLong);
        }
        if is_bcrypt(stored) {
            return match bcrypt::verify(password.as_bytes(), stored) {
                Ok(true) => Ok(Verified::Right { upgrade: true }),
                Ok(false) => Ok(Verified::Wrong),
                Err(_) => Err(PasswordError::UnsupportedHash),
            };
        }
        let parsed = PasswordHash::new(stored).map_err(|_| PasswordError::UnsupportedHash)?;
        if !parsed.algorithm.as_str().starts_with("argon2") {
            return Err(PasswordError::UnsupportedHash);
        }
        // Verify with the parameters recorded in the hash itself.
        if verify_argon2(&parsed, password.as_bytes())? {
            Ok(Verified::Right { upgrade: self.weaker_than_configured(&parsed) })
        } else {
            Ok(Verified::Wrong)
        }
    }

    fn weaker_than_configured(&self, h: &PasswordHash<'_>) -> bool {
        if h.algorithm.as_str() != "argon2id" {
            return true;
        }
        let get = |k: &str| h.params.get_decimal(k).unwrap_or(0);
        get("m") < self.params.memory_kib || get("t") < self.params.iterations || get("p") < self.params.parallelism
    }

    /// A hash of a random password, verified against when the user is unknown
    /// so that unknown users cost the same time as wrong passwords.
    pub fn dummy_hash(&self, rng: &dyn Random) -> Result<String, PasswordError> {
        let pw = super::crypto::random_token::<24>(rng);
        self.hash(&pw, rng)
    }
}

fn params_error(e: impl std::fmt::Display) -> PasswordError {
    PasswordError::Params(e.to_string())
}

thread_local! {
    /// argon2's working memory (19 MiB with the defaults), kept between
    /// hashes on this thread: allocating and returning it for every login
    /// makes the kernel map, fault in and unmap 19 MiB per login, and the
    /// unmapping interrupts every other thread of the process (TLB
    /// shootdown). The hashing pool (`crate::hashpool`) releases it on each
    /// of its threads that has had no work for a moment.
    /// It is mapped from the system directly, not taken from the memory
    /// allocator, so that releasing it returns it at once (an allocator
    /// keeps freed memory for a while).
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// Bytes of argon2 working memory mapped on all threads together.
static SCRATCH_BYTES: AtomicUsize = AtomicUsize::new(0);

/// One thread's working memory; counted in [`SCRATCH_BYTES`] while it lives.
struct Scratch(memmap2::MmapMut);

impl Scratch {
    fn map(bytes: usize) -> Result<Self, PasswordError> {
        // Faulted in by the kernel in one go rather than page by page.
        let map = memmap2::MmapOptions::new().len(bytes.max(1)).populate().map_anon().map_err(|e| PasswordError::Params(format!("argon2 memory: {e}")))?;
        SCRATCH_BYTES.fetch_add(map.len(), Ordering::Relaxed);
        Ok(Self(map))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        SCRATCH_BYTES.fetch_sub(self.0.len(), Ordering::Relaxed);
    }
}

/// Gives this thread's argon2 working memory back.
pub fn release_scratch() {
    SCRATCH.with(|s| *s.borrow_mut() = None);
}

/// How many bytes of argon2 working memory all threads together hold
/// now (mapped and not yet released).
pub fn scratch_bytes() -> usize {
    SCRATCH_BYTES.load(Ordering::Relaxed)
}

/// Runs `f` on at least `blocks` blocks of this thread's working memory.
fn with_scratch<T>(blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> Result<T, PasswordError> {
    let bytes = blocks.checked_mul(std::mem::size_of::<Block>()).ok_or(PasswordError::Params("memory size".into()))?;
    SCRATCH.with(|s| {
        let mut map = s.borrow_mut();
        if map.as_ref().is_none_or(|m| m.0.len() < bytes) {
            *map = None;
            *map = Some(Scratch::map(bytes)?);
        }
        let map = &mut map.as_mut().ok_or(PasswordError::Params("argon2 memory".into()))?.0;
        // SAFETY: the mapping is at least `blocks` blocks long, page-aligned
        // (a `Block` needs 64), zero-filled by the kernel (a valid `Block`
        // is any bit pattern: it is a `[u64; 128]`), and borrowed mutably
        // for as long as the slice lives.
        let memory = unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr().cast::<Block>(), blocks) };
        Ok(f(memory))
    })
}

/// What argon2's `verify_password` does, on this thread's reused working
/// memory: the algorithm, version, parameters, salt and output length all
/// come from the stored hash; the comparison is constant-time.
fn verify_argon2(parsed: &PasswordHash<'_>, password: &[u8]) -> Result<bool, PasswordError> {
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(PasswordError::UnsupportedHash);
    };
    fn unsupported<E>(_: E) -> PasswordError {
        PasswordError::UnsupportedHash
    }
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(unsupported)?;
    let version = parsed.version.map(Version::try_from).transpose().map_err(unsupported)?.unwrap_or_default();
    let params = Params::try_from(parsed).map_err(unsupported)?;
    let mut salt_buf = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_buf).map_err(unsupported)?;
    let blocks = params.block_count();
    let out_len = expected.len();
    let argon = Argon2::new(algorithm, version, params);
    let mut out = [0u8; Output::MAX_LENGTH];
    let out = out.get_mut(..out_len).ok_or(PasswordError::UnsupportedHash)?;
    with_scratch(blocks, |memory| argon.hash_password_into_with_memory(password, salt, out, memory))?.map_err(params_error)?;
    let computed = Output::new(out).map_err(unsupported)?;
    // `Output`'s equality is constant-time.
    Ok(computed == expected)
}

fn is_bcrypt(s: &str) -> bool {
    ["$2a$", "$2b$", "$2y$", "$2x$"].iter().any(|p| s.starts_with(p))
}

/// Checks that a stored hash is something `verify` understands (import).
pub fn hash_is_supported(s: &str) -> bool {
    if is_bcrypt(s) {
        return s.len() == 60;
    }
    PasswordHash::new(s).is_ok_and(|h| h.algorithm.as_str().starts_with("argon2") && h.hash.is_some())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyError {
    Required,
    TooShort,
    TooLong,
    Mismatch,
    IsName,
}

impl PolicyError {
    /// The i18n key of the message shown on the form.
    pub fn text_key(self) -> &'static str {
        match self {
            PolicyError::Required => "err_required",
            PolicyError::TooShort => "err_password_short",
            PolicyError::TooLong => "err_password_long",
            PolicyError::Mismatch => "err_password_mismatch",
            PolicyError::IsName => "err_password_is_name",
        }
    }
}

/// The policy for a new password. Length counts characters, not bytes.
pub fn check_policy(
    password: &str,
    repeated: &str,
    min_chars: usize,
    username: &str,
    email: Option<&str>,
) -> Result<(), PolicyError> {
    if password.is_empty() {
        return Err(PolicyError::Required);
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(PolicyError::TooLong);
    }
    if password.chars().count() < min_chars {
        return Err(PolicyError::TooShort);
    }
    if password != repeated {
        return Err(PolicyError::Mismatch);
    }
    let lower = password.to_lowercase();
    if lower == username.to_lowercase() || email.is_some_and(|e| lower == e.to_lowercase()) {
        return Err(PolicyError::IsName);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::crypto::TestRandom;

    fn fast() -> Hasher {
        // Smallest parameters to keep unit tests quick; defaults are tested in benches.
        Hasher::new(&Argon2Params { memory_kib: 1024, iterations: 1, parallelism: 1 }).expect("params")
    }

    #[test]
    fn hash_and_verify_exactly_as_typed() {
        let h = fast();
        let r = TestRandom::default();
        let stored = h.hash("Sommer 2024!", &r).expect("hash");
        assert!(stored.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
        assert_eq!(h.verify(&stored, "Sommer 2024!"), Ok(Verified::Right { upgrade: false }));
        assert_eq!(h.verify(&stored, "sommer 2024!"), Ok(Verified::Wrong));
        assert_eq!(h.verify(&stored, "Sommer 2024! "), Ok(Verified::Wrong));
        assert_eq!(h.verify(&stored, " Sommer 2024!"), Ok(Verified::Wrong));
    }

    #[test]
    fn hashes_on_reused_memory_like_argon2_itself() {
        use argon2::password_hash::PasswordHasher;
        for p in [Argon2Params { memory_kib: 1024, iterations: 1, parallelism: 1 }, Argon2Params { memory_kib: 2048, iterations: 2, parallelism: 2 }] {
            let ours = Hasher::new(&p).expect("params").hash("Sommer 2024!", &TestRandom::default()).expect("hash");
            let salt = SaltString::encode_b64(&random_array::<16>(&TestRandom::default())).expect("salt");
            let params = Params::new(p.memory_kib, p.iterations, p.parallelism, None).expect("params");
            let reference = Argon2::new(Algorithm::Argon2id, Version::V0x13, params).hash_password(b"Sommer 2024!", &salt).expect("hash").to_string();
            assert_eq!(ours, reference);
        }
        // The memory goes, and comes back when needed.
        release_scratch();
        assert!(SCRATCH.with(|s| s.borrow().is_none()));
        let stored = fast().hash("x", &TestRandom::default()).expect("hash");
        assert_eq!(fast().verify(&stored, "x"), Ok(Verified::Right { upgrade: false }));
        assert!(SCRATCH.with(|s| s.borrow().as_ref().is_some_and(|m| m.0.len() >= 1024 * 1024)));
    }

    #[test]
    fn reused_memory_verifies_like_argon2_itself() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let salt = SaltString::encode_b64(b"0123456789abcdef").expect("salt");
        // Every algorithm and version, odd parameters and output lengths;
        // the same thread's memory is reused (and grown) between them.
        let cases = [
            (Algorithm::Argon2id, Version::V0x13, Params::new(1024, 1, 1, None)),
            (Algorithm::Argon2i, Version::V0x13, Params::new(2048, 2, 2, Some(16))),
            (Algorithm::Argon2d, Version::V0x10, Params::new(1100, 3, 1, Some(64))),
            (Algorithm::Argon2id, Version::V0x10, Params::new(512, 1, 4, Some(40))),
        ];
        for (alg, ver, params) in cases {
            let argon = Argon2::new(alg, ver, params.expect("params"));
            let stored = argon.hash_password(b"Sommer 2024!", &salt).expect("hash").to_string();
            let parsed = PasswordHash::new(&stored).expect("parse");
            for (pw, right) in [(&b"Sommer 2024!"[..], true), (b"Sommer 2024?", false), (b"", false)] {
                assert_eq!(verify_argon2(&parsed, pw), Ok(right), "{stored} {pw:?}");
                assert_eq!(Argon2::default().verify_password(pw, &parsed).is_ok(), right, "reference {stored}");
            }
            release_scratch();
        }
        // A hash without its output cannot be checked.
        let bare = PasswordHash::new("$argon2id$v=19$m=1024,t=1,p=1$MDEyMzQ1Njc4OWFiY2RlZg").expect("parse");
        assert_eq!(verify_argon2(&bare, b"x"), Err(PasswordError::UnsupportedHash));
    }

    #[test]
    fn too_long_is_refused_before_hashing() {
        let h = fast();
        let long = "x".repeat(MAX_PASSWORD_BYTES + 1);
        assert_eq!(h.verify("$argon2id$garbage", &long), Err(PasswordError::TooLong));
        assert_eq!(h.hash(&long, &TestRandom::default()), Err(PasswordError::TooLong));
    }

    #[test]
    fn bcrypt_verifies_and_asks_for_upgrade() {
        let stored = bcrypt::hash_with_salt("alt-passwort", 4, [1u8; 16]).expect("bcrypt").format_for_version(bcrypt::Version::TwoB);
        assert!(hash_is_supported(&stored));
        let h = fast();
        assert_eq!(h.verify(&stored, "alt-passwort"), Ok(Verified::Right { upgrade: true }));
        assert_eq!(h.verify(&stored, "falsch"), Ok(Verified::Wrong));
    }

    #[test]
    fn weaker_argon2_asks_for_upgrade() {
        let weak = fast().hash("pw-1234567", &TestRandom::default()).expect("hash");
        let strong = Hasher::new(&Argon2Params { memory_kib: 2048, iterations: 2, parallelism: 1 }).expect("params");
        assert_eq!(strong.verify(&weak, "pw-1234567"), Ok(Verified::Right { upgrade: true }));
    }

    #[test]
    fn unsupported_hashes() {
        assert!(!hash_is_supported("plaintext"));
        assert!(!hash_is_supported("$1$md5$hash"));
        assert_eq!(fast().verify("$1$abc$def", "x"), Err(PasswordError::UnsupportedHash));
    }

    #[test]
    fn policy() {
        assert_eq!(check_policy("", "", 10, "anna", None), Err(PolicyError::Required));
        assert_eq!(check_policy("kurz", "kurz", 10, "anna", None), Err(PolicyError::TooShort));
        assert_eq!(check_policy("äöüäöüäöüä", "äöüäöüäöüä", 10, "anna", None), Ok(()));
        assert_eq!(check_policy("lang-genug-1", "lang-genug-2", 10, "anna", None), Err(PolicyError::Mismatch));
        assert_eq!(check_policy("AnnaMueller", "AnnaMueller", 10, "annamueller", None), Err(PolicyError::IsName));
        assert_eq!(
            check_policy("anna@example.at", "anna@example.at", 10, "anna", Some("Anna@Example.at")),
            Err(PolicyError::IsName)
        );
        let long = "x".repeat(MAX_PASSWORD_BYTES + 1);
        assert_eq!(check_policy(&long, &long, 10, "anna", None), Err(PolicyError::TooLong));
    }
}
