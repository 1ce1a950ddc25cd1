//! Persistence: the record types riegel keeps and the traits a backend
//! implements. `store` imports nothing from `auth`, `web` or `proxy`: it
//! owns its records, and the rules that change them live above it.
//!
//! A backend implements five small traits ([`Accounts`], [`Sessions`],
//! [`Counters`], [`Tokens`], [`MailSpool`]) and [`Store::flush`]. Every
//! change that must be atomic is one call: a user update is a closure run
//! inside one transaction (compare-and-set, retried under contention), a
//! reservation against several regulation counters is one transaction over
//! all of them, a one-time token is consumed by the user update that uses
//! it, and a queued mail is claimed by one instance at a time.
//!
//! Only `store::sled_store` knows sled, only `store::postgres` knows
//! PostgreSQL. [`CachedStore`] sits in front of a
//! backend: it keeps sessions in memory so that the per-request check costs
//! no database read, and compares each session with its user's security
//! stamp when it loads one.

mod cached;
mod keys;
#[cfg(test)]
pub(crate) mod memory;
mod postgres;
mod sled_store;

pub use cached::CachedStore;
pub use keys::{login_key, CounterKey, TokenKind};
pub use postgres::{PgOptions, PgStore};
pub use sled_store::SledStore;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use crate::clock::UnixTime;

/// The store traits, for calling their methods: `use crate::store::prelude::*;`.
pub mod prelude {
    pub use super::{Accounts, Counters, MailSpool, Sessions, Store, Tokens};
}

/// The schema this binary reads and writes. A store with a newer one is
/// refused; an older one is migrated when it is opened.
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store at {path} is in use by another process (is `riegel serve` running?)")]
    Locked { path: String },
    #[error("store: {0}")]
    Backend(String),
    #[error("the store is unreachable: {0}")]
    Unavailable(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store has schema version {found}; this riegel understands up to {SCHEMA_VERSION}")]
    Schema { found: u32 },
    #[error("{field} '{value}' is already taken")]
    Conflict { field: &'static str, value: String },
    #[error("no such user")]
    NoSuchUser,
    #[error("the target store is not empty; riegel copies only into an empty store")]
    NotEmpty,
}

/// A random session id.
pub type SessionId = [u8; 16];

/// How far a session has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// The first factor was right; the second is still missing. Such a
    /// session never reaches the portal.
    Password = 1,
    /// Both factors done.
    Full = 2,
}

/// One authenticator app of a user. The secret is sealed with the storage
/// key (bound to the user id) by the layer above.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authenticator {
    /// Unique within the user, never reused.
    pub id: u32,
    /// The name the user gave it ("Handy", "Tablet"); empty for the first.
    pub name: String,
    #[serde(with = "b64")]
    pub sealed: Vec<u8>,
    pub created_at: UnixTime,
    pub last_used_at: Option<UnixTime>,
    /// The last accepted TOTP time step of this authenticator; codes of
    /// this or earlier steps are refused.
    pub last_step: Option<i64>,
}

/// An enrolment in progress: shown again on reload until confirmed or expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAuthenticator {
    #[serde(with = "b64")]
    pub sealed: Vec<u8>,
    pub created_at: UnixTime,
    pub name: String,
    /// The session that started it, when it must be confirmed there.
    #[serde(default, with = "opt_sid")]
    pub sid: Option<SessionId>,
}

/// A single-use link's token, by its hash; only the newest one of a kind is valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimeToken {
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    pub expires_at: UnixTime,
    /// The session the link belongs to (a new-device link works only in
    /// the browser session that asked for it).
    #[serde(default, with = "opt_sid")]
    pub sid: Option<SessionId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub username: String,
    pub email: Option<String>,
    pub display_name: String,
    /// PHC (argon2) or modular crypt (bcrypt) string; `None` until the user
    /// sets a password through the reset flow (or for accounts whose
    /// password the portal checks).
    pub password_hash: Option<String>,
    pub disabled: bool,
    pub created_at: UnixTime,
    pub updated_at: UnixTime,
    pub authenticators: Vec<Authenticator>,
    pub pending_authenticator: Option<PendingAuthenticator>,
    /// The id the next authenticator gets.
    pub next_authenticator_id: u32,
    /// Set once the first authenticator was confirmed: from then on a user
    /// without one needs a proof beyond the password to enrol again.
    pub enrolled_once: bool,
    /// Keyed hashes (hex) of unused recovery codes.
    pub recovery_codes: Vec<String>,
    pub reset: Option<OneTimeToken>,
    /// The "Neues Gerät einrichten" link mailed after a lost phone.
    pub new_device: Option<OneTimeToken>,
    /// Raised by every change that ends the user's sessions (password,
    /// disable, e-mail, authenticators removed by an operator, "end all
    /// sessions"). Every session carries the stamp it was issued under and
    /// is valid only while the two are equal, so a session written by a
    /// login racing the change is never accepted after it.
    pub stamp: u64,
}

impl User {
    /// Ends every session issued so far (see [`User::stamp`]).
    pub fn revoke_sessions(&mut self) {
        self.stamp = self.stamp.wrapping_add(1);
    }

    /// A new password (a hash) at `now`: an open reset link dies and every
    /// session issued so far ends.
    pub fn set_password(&mut self, hash: String, now: UnixTime) {
        self.password_hash = Some(hash);
        self.reset = None;
        self.updated_at = now;
        self.revoke_sessions();
    }

    pub fn authenticator(&self, id: u32) -> Option<&Authenticator> {
        self.authenticators.iter().find(|a| a.id == id)
    }
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
    /// The user's [`User::stamp`] when the session was issued.
    #[serde(default)]
    pub stamp: u64,
    /// The browser's User-Agent (cut to a few hundred bytes), for "Mein Zugang".
    #[serde(default)]
    pub user_agent: Option<String>,
    /// The client address at login, for "Mein Zugang".
    #[serde(default)]
    pub ip: Option<String>,
    /// This password-stage session opened the mailed new-device link.
    #[serde(default)]
    pub device_proof: bool,
    /// The portal's own session cookies (portal login mode), sealed with
    /// the storage key by the layer above. Never sent to the browser.
    #[serde(default, with = "opt_b64")]
    pub portal_jar: Option<Vec<u8>>,
}

impl SessionRecord {
    pub fn sid(&self) -> Option<SessionId> {
        self.sid.as_slice().try_into().ok()
    }
}

/// Failures counted against one [`CounterKey`] (brute-force regulation).
/// The rules that change it are `auth::regulation`'s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// Attempts in the current window that were not successes (attempts
    /// in progress count: they are reserved before the work they limit).
    pub failures: u32,
    pub window_start: UnixTime,
    /// Attempts since the last success.
    pub consecutive: u32,
    pub banned_until: UnixTime,
}

/// A mail riegel has accepted and not yet delivered or given up. Its
/// content is sealed by the layer above (it carries reset links).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMail {
    pub id: u64,
    #[serde(with = "b64")]
    pub sealed: Vec<u8>,
    /// The recipient's domain, for logs.
    pub to_domain: String,
    pub accepted_at: UnixTime,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// Due from then on; a claimed mail is due again when its lease ends.
    pub next_attempt_at: UnixTime,
}

/// Outcome of an update closure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    Commit,
    Abort,
}

/// A closure run inside one transaction; it may run more than once under
/// contention, so it must only compute from what it is given (and may
/// record what it decided in captured variables, overwritten on each run).
pub type UserFn<'a> = dyn FnMut(&mut User) -> Update + Send + 'a;
pub type CountersFn<'a> = dyn FnMut(&mut [Counter]) -> Update + Send + 'a;

#[async_trait]
pub trait Accounts: Send + Sync {
    async fn insert_user(&self, user: NewUser, now: UnixTime) -> Result<User, StoreError> {
        let mut v = self.insert_users(vec![user], now).await?;
        v.pop().ok_or_else(|| StoreError::Backend("insert returned nothing".into()))
    }
    /// All or nothing: if any user conflicts, none is inserted.
    async fn insert_users(&self, users: Vec<NewUser>, now: UnixTime) -> Result<Vec<User>, StoreError>;
    async fn user(&self, id: u64) -> Result<Option<User>, StoreError>;
    /// By username or e-mail, case-insensitive.
    async fn find_user(&self, login: &str) -> Result<Option<User>, StoreError>;
    async fn users(&self) -> Result<Vec<User>, StoreError>;
    /// Atomically reads, changes and writes one user. Returns the
    /// committed user, or `None` if the closure aborted. The username and
    /// e-mail index follows; `id`, `username` and `created_at` stay.
    async fn update_user(&self, id: u64, f: &mut UserFn<'_>) -> Result<Option<User>, StoreError>;
    /// Deletes the user, its sessions and its one-time tokens.
    async fn delete_user(&self, id: u64) -> Result<bool, StoreError>;
}

#[async_trait]
pub trait Sessions: Send + Sync {
    async fn put_session(&self, s: &SessionRecord) -> Result<(), StoreError>;
    /// The record as stored (no stamp check; [`CachedStore::session`] does that).
    async fn session(&self, uid: u64, sid: &SessionId) -> Result<Option<SessionRecord>, StoreError>;
    /// Every session record of a user.
    async fn sessions_of(&self, uid: u64) -> Result<Vec<SessionRecord>, StoreError>;
    /// Records activity: sets `last_seen` only if the session still exists
    /// (a logout racing a request must not bring the session back).
    async fn touch_session(&self, uid: u64, sid: &SessionId, now: UnixTime) -> Result<(), StoreError>;
    /// Replaces the sealed portal cookies of a session that still exists.
    async fn set_portal_jar(&self, uid: u64, sid: &SessionId, jar: Option<Vec<u8>>) -> Result<bool, StoreError>;
    /// Removes the session; returns the record it had.
    async fn delete_session(&self, uid: u64, sid: &SessionId) -> Result<Option<SessionRecord>, StoreError>;
    /// Removes every session of a user except `keep`; returns the removed records.
    async fn delete_sessions_of(&self, uid: u64, keep: Option<&SessionId>) -> Result<Vec<SessionRecord>, StoreError>;
    /// Removes sessions past their lifetime or idle longer than `idle`.
    async fn purge_sessions(&self, now: UnixTime, idle: i64) -> Result<Vec<SessionRecord>, StoreError>;
    /// How many sessions are stored.
    async fn count_sessions(&self) -> Result<usize, StoreError>;
}

#[async_trait]
pub trait Counters: Send + Sync {
    async fn counter(&self, key: &CounterKey) -> Result<Counter, StoreError>;
    /// Reads the counters of `keys` (absent ones as zero), lets `f` change
    /// them and writes them back, all in one transaction: of concurrent
    /// reservations each sees the others' effect. Returns the committed
    /// counters, or `None` if `f` aborted. Counters back at zero are removed.
    async fn update_counters(&self, keys: &[CounterKey], f: &mut CountersFn<'_>) -> Result<Option<Vec<Counter>>, StoreError>;
    /// Removes exactly this counter; true if it existed.
    async fn delete_counter(&self, key: &CounterKey) -> Result<bool, StoreError>;
    /// How many counters are banned at `now`.
    async fn count_bans(&self, now: UnixTime) -> Result<usize, StoreError>;
}

#[async_trait]
pub trait Tokens: Send + Sync {
    /// Indexes a token hash to its user (the user record holds the token itself).
    async fn put_token(&self, token_hash: &str, kind: TokenKind, uid: u64) -> Result<(), StoreError>;
    async fn token(&self, token_hash: &str, kind: TokenKind) -> Result<Option<u64>, StoreError>;
    async fn delete_token(&self, token_hash: &str) -> Result<(), StoreError>;
}

#[async_trait]
pub trait MailSpool: Send + Sync {
    /// Stores a mail to send; returns its id. Durable after [`Store::flush`].
    async fn enqueue_mail(&self, sealed: Vec<u8>, to_domain: &str, now: UnixTime) -> Result<u64, StoreError>;
    /// Claims up to `limit` due mails (`next_attempt_at <= now`) by moving
    /// their `next_attempt_at` to `lease_until`: another instance (or this
    /// one) takes them again only when the lease ends. Oldest first.
    async fn claim_mails(&self, now: UnixTime, lease_until: UnixTime, limit: usize) -> Result<Vec<QueuedMail>, StoreError>;
    /// The mail was delivered or given up.
    async fn finish_mail(&self, id: u64) -> Result<(), StoreError>;
    /// Another attempt at `at`.
    async fn retry_mail(&self, id: u64, attempts: u32, at: UnixTime) -> Result<(), StoreError>;
    async fn mail_queue_depth(&self) -> Result<usize, StoreError>;
}

/// A backend: every piece, plus durability.
#[async_trait]
pub trait Store: Accounts + Sessions + Counters + Tokens + MailSpool + 'static {
    /// Waits until every write so far is durable. Runs off the async
    /// executor where it blocks.
    async fn flush(&self) -> Result<(), StoreError>;
    /// Whether the backend answers (for `/_riegel/healthz`).
    async fn healthy(&self) -> Result<(), StoreError>;
    /// A short name for logs and health output ("sled", "postgres").
    fn kind(&self) -> &'static str;
    /// The backend's state as far as it knows without asking the database.
    fn state(&self) -> StoreState {
        StoreState::Up
    }
}

/// What a backend says about itself (`/_riegel/healthz`), without I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreState {
    /// The last call reached the database, and changes made by other
    /// instances reach this one.
    Up,
    /// The database answers, but the channel that tells this process of
    /// other instances' changes is down: every session check reads the
    /// database until it is back.
    Degraded(String),
    /// The last call did not reach the database.
    Down(String),
}

/// What a cache in front of a backend must forget when another instance
/// (or the command line) changed the database. [`CachedStore`] implements
/// it; a backend that shares its database with other processes
/// ([`PgStore`]) calls it.
pub trait Invalidate: Send + Sync {
    /// Every session of the user may have changed (its stamp, its
    /// disabled flag, a deletion).
    fn forget_user(&self, uid: u64);
    /// This session changed or is gone.
    fn forget_session(&self, uid: u64, sid: &SessionId);
    /// Whether changes made elsewhere are known to reach this process.
    /// Each call empties the cache.
    fn set_trusted(&self, trusted: bool);
}

/// Everything a store holds, as records, for `riegel store copy`.
/// Counter keys and token kinds are kept as their raw encodings, so a copy
/// never drops what it cannot name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub users: Vec<User>,
    pub sessions: Vec<SessionRecord>,
    /// [`CounterKey::to_bytes`] and the counter.
    pub counters: Vec<(Vec<u8>, Counter)>,
    /// Token hash, [`TokenKind`] as a byte, user id.
    pub tokens: Vec<(String, u8, u64)>,
    pub mails: Vec<QueuedMail>,
}

impl Snapshot {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.sessions.is_empty() && self.counters.is_empty() && self.tokens.is_empty() && self.mails.is_empty()
    }
}

/// Raw export and import of a whole store (`riegel store copy`).
#[async_trait]
pub trait Dump: Send + Sync {
    /// Every record, users in id order.
    async fn export(&self) -> Result<Snapshot, StoreError>;
    /// Whether the store holds nothing at all.
    async fn is_empty(&self) -> Result<bool, StoreError>;
    /// Writes every record as it is (user and mail ids kept; ids handed
    /// out later are higher). Refuses a store that is not empty
    /// ([`StoreError::NotEmpty`]).
    async fn import(&self, s: &Snapshot) -> Result<(), StoreError>;
}

/// A backend that can also be copied whole.
pub trait Backend: Store + Dump {}
impl<T: Store + Dump> Backend for T {}

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

mod opt_b64 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&data_encoding::BASE64.encode(v)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| data_encoding::BASE64.decode(s.as_bytes()).map_err(serde::de::Error::custom)).transpose()
    }
}

mod opt_sid {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<super::SessionId>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&data_encoding::BASE64.encode(v)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<super::SessionId>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| {
            let v = data_encoding::BASE64.decode(s.as_bytes()).map_err(serde::de::Error::custom)?;
            v.as_slice().try_into().map_err(|_| serde::de::Error::custom("a session id has 16 bytes"))
        })
        .transpose()
    }
}

/// The same behaviour from every backend: each backend's tests run these.
#[cfg(test)]
pub(crate) mod conformance;
