//! Persistence behind the [`Store`] trait, so another backend (PostgreSQL
//! for several instances) can follow. Only `store::sled_store` knows sled.
//!
//! Every method is synchronous and quick except [`Store::flush`], which
//! waits for the disk: callers run it off the async executor, and call it
//! before acknowledging anything to a user.

mod cached;
mod sled_store;

pub use cached::CachedStore;
pub use sled_store::SledStore;

use serde::{Deserialize, Serialize};

use crate::auth::regulation::Counter;
use crate::auth::session::{SessionId, Stage};
use crate::clock::UnixTime;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store at {path} is in use by another process (is `riegel serve` running?)")]
    Locked { path: String },
    #[error("store: {0}")]
    Backend(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store has schema version {found}; this riegel understands {SCHEMA_VERSION}")]
    Schema { found: u32 },
    #[error("{field} '{value}' is already taken")]
    Conflict { field: &'static str, value: String },
    #[error("no such user")]
    NoSuchUser,
}

/// A confirmed or pending authenticator secret, sealed with the storage key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    #[serde(with = "b64")]
    pub sealed: Vec<u8>,
    pub created_at: UnixTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetState {
    /// Hex SHA-256 of the token; only the newest token is valid.
    pub token_hash: String,
    pub expires_at: UnixTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub username: String,
    pub email: Option<String>,
    pub display_name: String,
    /// PHC (argon2) or modular crypt (bcrypt) string; `None` until the user
    /// sets a password through the reset flow.
    pub password_hash: Option<String>,
    pub disabled: bool,
    pub created_at: UnixTime,
    pub updated_at: UnixTime,
    /// The confirmed authenticator.
    pub totp: Option<SealedSecret>,
    /// An enrolment in progress (shown again on reload until confirmed or expired).
    pub pending_totp: Option<SealedSecret>,
    /// The last accepted TOTP time step; codes of this or earlier steps are refused.
    pub last_totp_step: Option<i64>,
    /// Keyed hashes (hex) of unused recovery codes.
    pub recovery_codes: Vec<String>,
    pub reset: Option<ResetState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub username: String,
    pub email: Option<String>,
    pub display_name: String,
    pub password_hash: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub uid: u64,
    #[serde(with = "b64")]
    pub sid: Vec<u8>,
    pub stage: Stage,
    pub created_at: UnixTime,
    pub last_seen: UnixTime,
    pub expires_at: UnixTime,
    pub username: String,
    pub email: Option<String>,
    pub display_name: String,
    /// Where to go after the second factor.
    pub rd: Option<String>,
}

/// Outcome of an update closure.
pub enum Update {
    Commit,
    Abort,
}

pub trait Store: Send + Sync + 'static {
    // users
    fn insert_user(&self, user: NewUser, now: UnixTime) -> Result<User, StoreError>;
    /// All or nothing: if any user conflicts, none is inserted.
    fn insert_users(&self, users: Vec<NewUser>, now: UnixTime) -> Result<Vec<User>, StoreError>;
    fn user(&self, id: u64) -> Result<Option<User>, StoreError>;
    /// By username or e-mail, case-insensitive.
    fn find_user(&self, login: &str) -> Result<Option<User>, StoreError>;
    fn users(&self) -> Result<Vec<User>, StoreError>;
    /// Atomically reads, changes and writes one user (the closure may run
    /// more than once under contention). Returns the committed user, or
    /// `None` if the closure aborted. Username and e-mail indexes follow.
    fn update_user(&self, id: u64, f: &mut dyn FnMut(&mut User) -> Update) -> Result<Option<User>, StoreError>;
    fn delete_user(&self, id: u64) -> Result<bool, StoreError>;

    // sessions
    fn put_session(&self, s: &SessionRecord) -> Result<(), StoreError>;
    fn session(&self, uid: u64, sid: &SessionId) -> Result<Option<std::sync::Arc<SessionRecord>>, StoreError>;
    /// Records activity: sets `last_seen` only if the session still exists
    /// (a logout racing a request must not bring the session back).
    fn touch_session(&self, uid: u64, sid: &SessionId, now: UnixTime) -> Result<(), StoreError>;
    fn delete_session(&self, uid: u64, sid: &SessionId) -> Result<(), StoreError>;
    /// Ends every session of a user, except `keep`. Returns how many ended.
    fn delete_sessions_of(&self, uid: u64, keep: Option<&SessionId>) -> Result<usize, StoreError>;
    fn purge_sessions(&self, now: UnixTime, idle: i64) -> Result<usize, StoreError>;

    // regulation
    fn counter(&self, key: &str) -> Result<Counter, StoreError>;
    fn update_counter(&self, key: &str, f: &dyn Fn(Counter) -> Counter) -> Result<Counter, StoreError>;
    fn delete_counters(&self, prefix: &str) -> Result<usize, StoreError>;

    // reset tokens: hash -> user id
    fn put_reset_index(&self, token_hash: &str, uid: u64) -> Result<(), StoreError>;
    fn reset_index(&self, token_hash: &str) -> Result<Option<u64>, StoreError>;
    fn delete_reset_index(&self, token_hash: &str) -> Result<(), StoreError>;

    /// Waits until every write so far is on disk.
    fn flush(&self) -> Result<(), StoreError>;
}

/// Lower-cased key for the login index.
pub fn login_key(s: &str) -> String {
    s.trim().to_lowercase()
}

mod b64 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&data_encoding::BASE64.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        data_encoding::BASE64.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}
