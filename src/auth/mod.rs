//! The rules of authentication: sessions, passwords, TOTP, recovery codes,
//! reset tokens and brute-force regulation. Nothing here does I/O or reads
//! the system clock: time and randomness are passed in, so every rule is a
//! plain unit test. `web` combines these rules with the store.

pub mod crypto;
pub mod password;
pub mod redirect;
pub mod regulation;
pub mod session;
pub mod totp;

pub use crypto::{OsRandom, Random};
