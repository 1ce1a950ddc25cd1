//! The sled 0.34 backend, for one machine (the default). Trees: `users`
//! (id -> JSON), `logins` (lower-case username or e-mail -> id), `sessions`
//! (uid ++ sid -> JSON), `counters` ([`CounterKey`] bytes -> JSON),
//! `tokens` (token hash -> kind ++ uid), `mail` (id -> JSON), `meta`
//! (schema version). sled is synchronous and fast (its pages are cached in
//! memory); only [`Store::flush`] waits for the disk, and it runs on a
//! blocking thread, at most four at once.

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use sled::transaction::{abort, ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use super::{
    login_key, Accounts, Counter, CounterKey, Counters, CountersFn, Dump, MailSpool, NewUser, QueuedMail, SessionId,
    SessionRecord, Sessions, Snapshot, Store, StoreError, TokenKind, Tokens, Update, User, UserFn, SCHEMA_VERSION,
};
use crate::clock::UnixTime;

pub struct SledStore {
    db: sled::Db,
    users: sled::Tree,
    logins: sled::Tree,
    sessions: sled::Tree,
    counters: sled::Tree,
    tokens: sled::Tree,
    mail: sled::Tree,
    flush_slots: Arc<tokio::sync::Semaphore>,
}

fn be(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => be(e),
    }
}

fn session_key(uid: u64, sid: &[u8]) -> Vec<u8> {
    let mut k = uid.to_be_bytes().to_vec();
    k.extend_from_slice(sid);
    k
}

/// The uid of a session key, which is exactly 8 + 16 bytes.
fn session_key_uid(k: &[u8]) -> Option<u64> {
    if k.len() != 8 + 16 {
        return None;
    }
    k.get(..8)?.try_into().ok().map(u64::from_be_bytes)
}

fn decode<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(corrupt)
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn id_of(v: &[u8], what: &str) -> Result<u64, StoreError> {
    v.try_into().map(u64::from_be_bytes).map_err(|_| StoreError::Corrupt(what.into()))
}

/// The rules every backend applies to a new account's name.
pub(crate) fn validate_new(u: &NewUser) -> Result<(), StoreError> {
    if u.username.is_empty() || u.username.contains('@') || u.username.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(StoreError::Conflict { field: "username", value: u.username.clone() });
    }
    Ok(())
}

/// A new account's record.
pub(crate) fn new_user_record(id: u64, new: &NewUser, now: UnixTime) -> User {
    User {
        id,
        username: new.username.clone(),
        email: new.email.clone(),
        display_name: new.display_name.clone(),
        password_hash: new.password_hash.clone(),
        disabled: false,
        created_at: now,
        updated_at: now,
        authenticators: Vec::new(),
        pending_authenticator: None,
        next_authenticator_id: 1,
        enrolled_once: false,
        recovery_codes: Vec::new(),
        reset: None,
        new_device: None,
        stamp: 0,
    }
}

/// The one-time token hashes a user record refers to.
fn token_hashes(u: &User) -> impl Iterator<Item = &str> {
    u.reset.iter().chain(u.new_device.iter()).map(|t| t.token_hash.as_str())
}

impl SledStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path).map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
        }
        let db = sled::Config::new().path(path.join("db")).open().map_err(|e| {
            let msg = e.to_string();
            if msg.contains("lock") || msg.contains("WouldBlock") || msg.contains("Resource temporarily unavailable") {
                StoreError::Locked { path: path.display().to_string() }
            } else {
                be(e)
            }
        })?;
        let store = Self {
            users: db.open_tree("users").map_err(be)?,
            logins: db.open_tree("logins").map_err(be)?,
            sessions: db.open_tree("sessions").map_err(be)?,
            counters: db.open_tree("counters").map_err(be)?,
            tokens: db.open_tree("tokens").map_err(be)?,
            mail: db.open_tree("mail").map_err(be)?,
            flush_slots: Arc::new(tokio::sync::Semaphore::new(4)),
            db,
        };
        let meta = store.db.open_tree("meta").map_err(be)?;
        let found = meta.get("schema_version").map_err(be)?.map(|v| v.as_ref().try_into().map(u32::from_be_bytes).unwrap_or(0));
        match found {
            None => {}
            Some(SCHEMA_VERSION) => {}
            Some(1) => migrate::from_v1(&store)?,
            Some(found) => return Err(StoreError::Schema { found }),
        }
        meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes()).map_err(be)?;
        store.release_mail_leases()?;
        store.db.flush().map_err(be)?;
        Ok(store)
    }

    fn insert_in_tx(
        u: &TransactionalTree,
        l: &TransactionalTree,
        id: u64,
        new: &NewUser,
        now: UnixTime,
    ) -> Result<User, ConflictableTransactionError<StoreError>> {
        let name_key = login_key(&new.username);
        if l.get(name_key.as_bytes())?.is_some() {
            return abort(StoreError::Conflict { field: "username", value: new.username.clone() });
        }
        l.insert(name_key.as_bytes(), &id.to_be_bytes())?;
        if let Some(e) = &new.email {
            let ek = login_key(e);
            if l.get(ek.as_bytes())?.is_some() {
                return abort(StoreError::Conflict { field: "e-mail", value: e.clone() });
            }
            l.insert(ek.as_bytes(), &id.to_be_bytes())?;
        }
        let user = new_user_record(id, new, now);
        let bytes = encode(&user).map_err(ConflictableTransactionError::Abort)?;
        u.insert(&id.to_be_bytes(), bytes)?;
        Ok(user)
    }

    /// Mails claimed by a process that has ended (sled admits one process
    /// at a time, so every lease found at open is such a one) are due
    /// again at once, rather than when their lease would have run out.
    fn release_mail_leases(&self) -> Result<(), StoreError> {
        for kv in self.mail.iter() {
            let (k, v) = kv.map_err(be)?;
            let mut m: QueuedMail = decode(&v)?;
            if m.next_attempt_at != 0 {
                m.next_attempt_at = 0;
                self.mail.insert(k, encode(&m)?).map_err(be)?;
            }
        }
        Ok(())
    }

    fn session_records(&self, uid: u64) -> Result<Vec<(sled::IVec, SessionRecord)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.sessions.scan_prefix(uid.to_be_bytes()) {
            let (k, v) = kv.map_err(be)?;
            // The prefix is the fixed-width uid: still, compare it whole.
            if session_key_uid(&k) != Some(uid) {
                continue;
            }
            out.push((k, decode(&v)?));
        }
        Ok(out)
    }
}

#[async_trait]
impl Accounts for SledStore {
    async fn insert_users(&self, users: Vec<NewUser>, now: UnixTime) -> Result<Vec<User>, StoreError> {
        for u in &users {
            validate_new(u)?;
        }
        let mut ids = Vec::with_capacity(users.len());
        for _ in &users {
            ids.push(self.db.generate_id().map_err(be)?.saturating_add(1));
        }
        (&self.users, &self.logins)
            .transaction(|(u, l)| {
                let mut out = Vec::with_capacity(users.len());
                for (new, id) in users.iter().zip(&ids) {
                    out.push(Self::insert_in_tx(u, l, *id, new, now)?);
                }
                Ok(out)
            })
            .map_err(tx_err)
    }

    async fn user(&self, id: u64) -> Result<Option<User>, StoreError> {
        self.users.get(id.to_be_bytes()).map_err(be)?.map(|v| decode(&v)).transpose()
    }

    async fn find_user(&self, login: &str) -> Result<Option<User>, StoreError> {
        let Some(id) = self.logins.get(login_key(login).as_bytes()).map_err(be)? else {
            return Ok(None);
        };
        self.user(id_of(&id, "login index")?).await
    }

    async fn users(&self) -> Result<Vec<User>, StoreError> {
        self.users.iter().values().map(|v| decode(&v.map_err(be)?)).collect()
    }

    async fn update_user(&self, id: u64, f: &mut UserFn<'_>) -> Result<Option<User>, StoreError> {
        let f = RefCell::new(f);
        (&self.users, &self.logins)
            .transaction(|(u, l)| {
                let Some(old) = u.get(id.to_be_bytes())? else {
                    return abort(StoreError::NoSuchUser);
                };
                let old: User = decode(&old).map_err(ConflictableTransactionError::Abort)?;
                let mut new = old.clone();
                let mut f = f.borrow_mut();
                if let Update::Abort = (*f)(&mut new) {
                    return Ok(None);
                }
                new.id = old.id;
                new.username = old.username.clone();
                new.created_at = old.created_at;
                if new.email != old.email {
                    // Old key out first, so a change of letter case keeps its entry.
                    if let Some(e) = &old.email {
                        l.remove(login_key(e).as_bytes())?;
                    }
                    if let Some(e) = &new.email {
                        let ek = login_key(e);
                        if l.get(ek.as_bytes())?.is_some() {
                            return abort(StoreError::Conflict { field: "e-mail", value: e.clone() });
                        }
                        l.insert(ek.as_bytes(), &id.to_be_bytes())?;
                    }
                }
                let bytes = encode(&new).map_err(ConflictableTransactionError::Abort)?;
                u.insert(&id.to_be_bytes(), bytes)?;
                Ok(Some(new))
            })
            .map_err(tx_err)
    }

    async fn delete_user(&self, id: u64) -> Result<bool, StoreError> {
        let removed = (&self.users, &self.logins)
            .transaction(|(u, l)| {
                let Some(old) = u.remove(&id.to_be_bytes())? else { return Ok(None) };
                let old: User = decode(&old).map_err(ConflictableTransactionError::Abort)?;
                l.remove(login_key(&old.username).as_bytes())?;
                if let Some(e) = &old.email {
                    l.remove(login_key(e).as_bytes())?;
                }
                Ok(Some(old))
            })
            .map_err(tx_err)?;
        let Some(old) = removed else { return Ok(false) };
        self.delete_sessions_of(id, None).await?;
        for h in token_hashes(&old) {
            self.tokens.remove(h.as_bytes()).map_err(be)?;
        }
        Ok(true)
    }
}

#[async_trait]
impl Sessions for SledStore {
    async fn put_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        self.sessions.insert(session_key(s.uid, &s.sid), encode(s)?).map_err(be)?;
        Ok(())
    }

    async fn session(&self, uid: u64, sid: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        self.sessions.get(session_key(uid, sid)).map_err(be)?.map(|v| decode(&v)).transpose()
    }

    async fn sessions_of(&self, uid: u64) -> Result<Vec<SessionRecord>, StoreError> {
        Ok(self.session_records(uid)?.into_iter().map(|(_, r)| r).collect())
    }

    async fn touch_session(&self, uid: u64, sid: &SessionId, now: UnixTime) -> Result<(), StoreError> {
        self.sessions
            .update_and_fetch(session_key(uid, sid), |old| {
                let mut rec: SessionRecord = serde_json::from_slice(old?).ok()?;
                rec.last_seen = rec.last_seen.max(now);
                serde_json::to_vec(&rec).ok()
            })
            .map_err(be)?;
        Ok(())
    }

    async fn set_portal_jar(&self, uid: u64, sid: &SessionId, jar: Option<Vec<u8>>) -> Result<bool, StoreError> {
        let out = self
            .sessions
            .update_and_fetch(session_key(uid, sid), |old| {
                let mut rec: SessionRecord = serde_json::from_slice(old?).ok()?;
                rec.portal_jar = jar.clone();
                serde_json::to_vec(&rec).ok()
            })
            .map_err(be)?;
        Ok(out.is_some())
    }

    async fn delete_session(&self, uid: u64, sid: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        self.sessions.remove(session_key(uid, sid)).map_err(be)?.map(|v| decode(&v)).transpose()
    }

    async fn delete_sessions_of(&self, uid: u64, keep: Option<&SessionId>) -> Result<Vec<SessionRecord>, StoreError> {
        let keep_key = keep.map(|k| session_key(uid, k));
        let mut out = Vec::new();
        for (k, rec) in self.session_records(uid)? {
            if keep_key.as_deref() == Some(k.as_ref()) {
                continue;
            }
            if self.sessions.remove(&k).map_err(be)?.is_some() {
                out.push(rec);
            }
        }
        Ok(out)
    }

    async fn purge_sessions(&self, now: UnixTime, idle: i64) -> Result<Vec<SessionRecord>, StoreError> {
        let mut out = Vec::new();
        for kv in self.sessions.iter() {
            let (k, v) = kv.map_err(be)?;
            match serde_json::from_slice::<SessionRecord>(&v) {
                Ok(s) if now < s.expires_at && now - s.last_seen <= idle => {}
                Ok(s) => {
                    self.sessions.remove(k).map_err(be)?;
                    out.push(s);
                }
                Err(_) => {
                    self.sessions.remove(k).map_err(be)?;
                }
            }
        }
        Ok(out)
    }

    async fn count_sessions(&self) -> Result<usize, StoreError> {
        Ok(self.sessions.len())
    }
}

#[async_trait]
impl Counters for SledStore {
    async fn counter(&self, key: &CounterKey) -> Result<Counter, StoreError> {
        Ok(self.counters.get(key.to_bytes()).map_err(be)?.map(|v| decode(&v)).transpose()?.unwrap_or_default())
    }

    async fn update_counters(&self, keys: &[CounterKey], f: &mut CountersFn<'_>) -> Result<Option<Vec<Counter>>, StoreError> {
        let encoded: Vec<Vec<u8>> = keys.iter().map(CounterKey::to_bytes).collect();
        let f = RefCell::new(f);
        self.counters
            .transaction(|t| {
                let mut counters = Vec::with_capacity(encoded.len());
                for k in &encoded {
                    let c = match t.get(k)? {
                        Some(v) => decode(&v).map_err(ConflictableTransactionError::Abort)?,
                        None => Counter::default(),
                    };
                    counters.push(c);
                }
                let mut f = f.borrow_mut();
                if let Update::Abort = (*f)(&mut counters) {
                    return Ok(None);
                }
                for (k, c) in encoded.iter().zip(&counters) {
                    if *c == Counter::default() {
                        t.remove(k.as_slice())?;
                    } else {
                        t.insert(k.as_slice(), encode(c).map_err(ConflictableTransactionError::Abort)?)?;
                    }
                }
                Ok(Some(counters))
            })
            .map_err(tx_err)
    }

    async fn delete_counter(&self, key: &CounterKey) -> Result<bool, StoreError> {
        Ok(self.counters.remove(key.to_bytes()).map_err(be)?.is_some())
    }

    async fn count_bans(&self, now: UnixTime) -> Result<usize, StoreError> {
        let mut n = 0;
        for v in self.counters.iter().values() {
            let c: Counter = decode(&v.map_err(be)?)?;
            if now < c.banned_until {
                n += 1;
            }
        }
        Ok(n)
    }
}

#[async_trait]
impl Tokens for SledStore {
    async fn put_token(&self, token_hash: &str, kind: TokenKind, uid: u64) -> Result<(), StoreError> {
        let mut v = vec![kind as u8];
        v.extend_from_slice(&uid.to_be_bytes());
        self.tokens.insert(token_hash.as_bytes(), v).map_err(be)?;
        Ok(())
    }

    async fn token(&self, token_hash: &str, kind: TokenKind) -> Result<Option<u64>, StoreError> {
        let Some(v) = self.tokens.get(token_hash.as_bytes()).map_err(be)? else { return Ok(None) };
        let (&k, uid) = v.split_first().ok_or_else(|| StoreError::Corrupt("token index".into()))?;
        if TokenKind::from_byte(k) != Some(kind) {
            return Ok(None);
        }
        Ok(Some(id_of(uid, "token index")?))
    }

    async fn delete_token(&self, token_hash: &str) -> Result<(), StoreError> {
        self.tokens.remove(token_hash.as_bytes()).map_err(be)?;
        Ok(())
    }
}

#[async_trait]
impl MailSpool for SledStore {
    async fn enqueue_mail(&self, sealed: Vec<u8>, to_domain: &str, now: UnixTime) -> Result<u64, StoreError> {
        let id = self.db.generate_id().map_err(be)?.saturating_add(1);
        let m = QueuedMail { id, sealed, to_domain: to_domain.to_string(), accepted_at: now, attempts: 0, next_attempt_at: now };
        self.mail.insert(id.to_be_bytes(), encode(&m)?).map_err(be)?;
        Ok(id)
    }

    async fn claim_mails(&self, now: UnixTime, lease_until: UnixTime, limit: usize) -> Result<Vec<QueuedMail>, StoreError> {
        let mut out = Vec::new();
        // Ids grow with time: key order is acceptance order.
        for kv in self.mail.iter() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv.map_err(be)?;
            let m: QueuedMail = decode(&v)?;
            if m.next_attempt_at > now {
                continue;
            }
            let mut claimed = m.clone();
            claimed.next_attempt_at = lease_until;
            // Compare-and-swap: a mail claimed meanwhile is left alone.
            if self.mail.compare_and_swap(&k, Some(v), Some(encode(&claimed)?)).map_err(be)?.is_ok() {
                out.push(claimed);
            }
        }
        Ok(out)
    }

    async fn finish_mail(&self, id: u64) -> Result<(), StoreError> {
        self.mail.remove(id.to_be_bytes()).map_err(be)?;
        Ok(())
    }

    async fn retry_mail(&self, id: u64, attempts: u32, at: UnixTime) -> Result<(), StoreError> {
        self.mail
            .update_and_fetch(id.to_be_bytes(), |old| {
                let mut m: QueuedMail = serde_json::from_slice(old?).ok()?;
                m.attempts = attempts;
                m.next_attempt_at = at;
                serde_json::to_vec(&m).ok()
            })
            .map_err(be)?;
        Ok(())
    }

    async fn mail_queue_depth(&self) -> Result<usize, StoreError> {
        Ok(self.mail.len())
    }
}

#[async_trait]
impl Store for SledStore {
    async fn flush(&self) -> Result<(), StoreError> {
        let _permit = self.flush_slots.acquire().await.map_err(|e| StoreError::Backend(e.to_string()))?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            // A blocking thread started from a shard inherits the shard's
            // class, SCHED_BATCH at times; a flush keeps the default one.
            let _ = crate::sched::set_this_thread(crate::sched::Policy::Normal);
            db.flush()
        })
        .await
        .map_err(|e| StoreError::Backend(format!("flush task: {e}")))?
        .map_err(be)?;
        Ok(())
    }

    async fn healthy(&self) -> Result<(), StoreError> {
        self.db.get("health").map_err(be)?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "sled"
    }
}

#[async_trait]
impl Dump for SledStore {
    async fn export(&self) -> Result<Snapshot, StoreError> {
        let users = self.users().await?;
        let sessions = self.sessions.iter().values().map(|v| decode(&v.map_err(be)?)).collect::<Result<Vec<_>, _>>()?;
        let counters = self
            .counters
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(be)?;
                Ok((k.to_vec(), decode(&v)?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let tokens = self
            .tokens
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(be)?;
                let hash = String::from_utf8(k.to_vec()).map_err(|_| StoreError::Corrupt("token hash".into()))?;
                let (&kind, uid) = v.split_first().ok_or_else(|| StoreError::Corrupt("token index".into()))?;
                Ok((hash, kind, id_of(uid, "token index")?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mails = self.mail.iter().values().map(|v| decode(&v.map_err(be)?)).collect::<Result<Vec<_>, _>>()?;
        Ok(Snapshot { users, sessions, counters, tokens, mails })
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok([&self.users, &self.logins, &self.sessions, &self.counters, &self.tokens, &self.mail].iter().all(|t| t.is_empty()))
    }

    async fn import(&self, s: &Snapshot) -> Result<(), StoreError> {
        if !self.is_empty().await? {
            return Err(StoreError::NotEmpty);
        }
        (&self.users, &self.logins)
            .transaction(|(u, l)| {
                for user in &s.users {
                    let new = NewUser {
                        username: user.username.clone(),
                        email: user.email.clone(),
                        display_name: user.display_name.clone(),
                        password_hash: None,
                    };
                    // The index entries (and their conflicts) as for a new user.
                    Self::insert_in_tx(u, l, user.id, &new, user.created_at)?;
                    u.insert(&user.id.to_be_bytes(), encode(user).map_err(ConflictableTransactionError::Abort)?)?;
                }
                Ok(())
            })
            .map_err(tx_err)?;
        for r in &s.sessions {
            self.sessions.insert(session_key(r.uid, &r.sid), encode(r)?).map_err(be)?;
        }
        for (k, c) in &s.counters {
            self.counters.insert(k.as_slice(), encode(c)?).map_err(be)?;
        }
        for (hash, kind, uid) in &s.tokens {
            let mut v = vec![*kind];
            v.extend_from_slice(&uid.to_be_bytes());
            self.tokens.insert(hash.as_bytes(), v).map_err(be)?;
        }
        for m in &s.mails {
            self.mail.insert(m.id.to_be_bytes(), encode(m)?).map_err(be)?;
        }
        // Ids handed out from now on are higher than every copied one.
        let top = s.users.iter().map(|u| u.id).chain(s.mails.iter().map(|m| m.id)).max().unwrap_or(0);
        while self.db.generate_id().map_err(be)?.saturating_add(1) <= top {}
        self.db.flush_async().await.map_err(be)?;
        Ok(())
    }
}

/// Schema 1 (riegel up to the first round) to 2: one authenticator became
/// a list, the reset index became a token index, counter keys became typed.
mod migrate {
    use serde::Deserialize;

    use super::{be, decode, encode, SledStore};
    use crate::store::{Authenticator, CounterKey, OneTimeToken, PendingAuthenticator, StoreError, TokenKind, User};

    #[derive(Deserialize)]
    struct SealedV1 {
        #[serde(with = "crate::store::b64")]
        sealed: Vec<u8>,
        created_at: i64,
    }

    #[derive(Deserialize)]
    struct ResetV1 {
        token_hash: String,
        expires_at: i64,
    }

    #[derive(Deserialize)]
    struct UserV1 {
        id: u64,
        username: String,
        email: Option<String>,
        display_name: String,
        password_hash: Option<String>,
        disabled: bool,
        created_at: i64,
        updated_at: i64,
        totp: Option<SealedV1>,
        pending_totp: Option<SealedV1>,
        last_totp_step: Option<i64>,
        recovery_codes: Vec<String>,
        reset: Option<ResetV1>,
    }

    impl From<UserV1> for User {
        fn from(u: UserV1) -> User {
            let enrolled = u.totp.is_some();
            User {
                id: u.id,
                username: u.username,
                email: u.email,
                display_name: u.display_name,
                password_hash: u.password_hash,
                disabled: u.disabled,
                created_at: u.created_at,
                updated_at: u.updated_at,
                authenticators: u
                    .totp
                    .map(|t| Authenticator {
                        id: 1,
                        name: String::new(),
                        sealed: t.sealed,
                        created_at: t.created_at,
                        last_used_at: None,
                        last_step: u.last_totp_step,
                    })
                    .into_iter()
                    .collect(),
                pending_authenticator: u
                    .pending_totp
                    .map(|p| PendingAuthenticator { sealed: p.sealed, created_at: p.created_at, name: String::new(), sid: None }),
                next_authenticator_id: 2,
                enrolled_once: enrolled,
                recovery_codes: u.recovery_codes,
                reset: u.reset.map(|r| OneTimeToken { token_hash: r.token_hash, expires_at: r.expires_at, sid: None }),
                new_device: None,
                stamp: 0,
            }
        }
    }

    /// `u:ID`, `n:NAME`, `ip:ADDR`, `reset-ip:ADDR`, `reset-u:ID`.
    fn counter_key_v1(k: &str) -> Option<CounterKey> {
        if let Some(id) = k.strip_prefix("reset-u:") {
            return id.parse().ok().map(CounterKey::ResetAccount);
        }
        if let Some(ip) = k.strip_prefix("reset-ip:") {
            return ip.parse().ok().map(CounterKey::reset_address);
        }
        if let Some(id) = k.strip_prefix("u:") {
            return id.parse().ok().map(CounterKey::Account);
        }
        if let Some(n) = k.strip_prefix("n:") {
            return Some(CounterKey::login(n));
        }
        k.strip_prefix("ip:").and_then(|ip| ip.parse().ok()).map(CounterKey::address)
    }

    pub(super) fn from_v1(s: &SledStore) -> Result<(), StoreError> {
        for kv in s.users.iter() {
            let (k, v) = kv.map_err(be)?;
            let old: UserV1 = decode(&v)?;
            let new: User = old.into();
            s.users.insert(k, encode(&new)?).map_err(be)?;
        }
        let old_counters: Vec<_> = s.counters.iter().collect::<Result<_, _>>().map_err(be)?;
        for (k, v) in old_counters {
            s.counters.remove(&k).map_err(be)?;
            // Unknown keys (none were written) are dropped.
            if let Some(key) = std::str::from_utf8(&k).ok().and_then(counter_key_v1) {
                s.counters.insert(key.to_bytes(), v).map_err(be)?;
            }
        }
        let resets = s.db.open_tree("resets").map_err(be)?;
        for kv in resets.iter() {
            let (k, v) = kv.map_err(be)?;
            let mut t = vec![TokenKind::Reset as u8];
            t.extend_from_slice(&v);
            s.tokens.insert(k, t).map_err(be)?;
        }
        s.db.drop_tree("resets").map_err(be)?;
        tracing::info!("store migrated from schema 1 to 2");
        Ok(())
    }

    #[cfg(test)]
    pub(super) mod fixture {
        /// A schema-1 user as riegel 1 wrote it.
        pub const USER_V1: &str = r#"{"id":7,"username":"anna","email":"anna@example.at","display_name":"Anna","password_hash":"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA","disabled":false,"created_at":1,"updated_at":2,"totp":{"sealed":"AAEC","created_at":3},"pending_totp":null,"last_totp_step":55,"recovery_codes":["ab"],"reset":{"token_hash":"ff00","expires_at":99}}"#;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> (SledStore, std::path::PathBuf) {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!("riegel-store-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&p);
        (SledStore::open(&p).expect("open"), p)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance() {
        let (s, p) = tmp();
        let s = Arc::new(s);
        crate::store::conformance::run_all(s.clone()).await;
        // One handle only: sled allows one process.
        crate::store::conformance::run_two(s.clone(), s).await;
        let _ = std::fs::remove_dir_all(p);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn copy_conformance() {
        let (a, pa) = tmp();
        let (b, pb) = tmp();
        crate::store::conformance::run_copy(Arc::new(a), Arc::new(b)).await;
        let _ = std::fs::remove_dir_all(pa);
        let _ = std::fs::remove_dir_all(pb);
    }

    #[tokio::test]
    async fn counters_and_mail_persist_across_reopen() {
        let (s, p) = tmp();
        s.update_counters(&[CounterKey::Account(1)], &mut |c| {
            c[0].consecutive = 7;
            Update::Commit
        })
        .await
        .expect("update");
        let id = s.enqueue_mail(vec![1, 2, 3], "example.at", 10).await.expect("enqueue");
        s.flush().await.expect("flush");
        drop(s);
        let s = SledStore::open(&p).expect("reopen");
        assert_eq!(s.counter(&CounterKey::Account(1)).await.expect("get").consecutive, 7);
        let claimed = s.claim_mails(10, 100, 10).await.expect("claim");
        assert_eq!(claimed.iter().map(|m| m.id).collect::<Vec<_>>(), vec![id]);
        drop(s);
        let _ = std::fs::remove_dir_all(p);
    }

    #[test]
    fn second_open_reports_locked() {
        let (s, p) = tmp();
        match SledStore::open(&p) {
            Err(StoreError::Locked { .. }) => {}
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("expected Locked, opened twice"),
        }
        drop(s);
        let _ = std::fs::remove_dir_all(p);
    }

    #[tokio::test]
    async fn a_schema_1_store_is_migrated_and_a_newer_one_refused() {
        let p = std::env::temp_dir().join(format!("riegel-store-v1-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        {
            let db = sled::Config::new().path(p.join("db")).open().expect("sled");
            db.open_tree("meta").expect("meta").insert("schema_version", &1u32.to_be_bytes()).expect("v");
            db.open_tree("users").expect("users").insert(7u64.to_be_bytes(), migrate::fixture::USER_V1).expect("user");
            db.open_tree("logins").expect("logins").insert("anna", &7u64.to_be_bytes()).expect("login");
            let c = db.open_tree("counters").expect("counters");
            c.insert("u:7", r#"{"failures":2,"window_start":5,"consecutive":9,"banned_until":0}"#).expect("c");
            c.insert("n:annalena", r#"{"failures":1,"window_start":5,"consecutive":1,"banned_until":0}"#).expect("c");
            c.insert("ip:2001:db8::5", r#"{"failures":1,"window_start":5,"consecutive":1,"banned_until":0}"#).expect("c");
            db.open_tree("resets").expect("resets").insert("ff00", &7u64.to_be_bytes()).expect("reset");
            db.flush().expect("flush");
        }
        let s = SledStore::open(&p).expect("migrated");
        let u = s.find_user("anna").await.expect("find").expect("user");
        assert_eq!(u.authenticators.len(), 1);
        assert_eq!(u.authenticators[0].sealed, vec![0, 1, 2]);
        assert_eq!(u.authenticators[0].last_step, Some(55));
        assert!(u.enrolled_once);
        assert_eq!(u.next_authenticator_id, 2);
        assert_eq!(u.reset.as_ref().map(|r| r.token_hash.as_str()), Some("ff00"));
        assert_eq!(s.counter(&CounterKey::Account(7)).await.expect("c").consecutive, 9);
        assert_eq!(s.counter(&CounterKey::login("annalena")).await.expect("c").failures, 1);
        assert_eq!(s.counter(&CounterKey::address("2001:db8::1".parse().expect("ip"))).await.expect("c").failures, 1);
        assert_eq!(s.token("ff00", TokenKind::Reset).await.expect("t"), Some(7));
        drop(s);
        {
            let db = sled::Config::new().path(p.join("db")).open().expect("sled");
            db.open_tree("meta").expect("meta").insert("schema_version", &99u32.to_be_bytes()).expect("v");
            db.flush().expect("flush");
        }
        assert!(matches!(SledStore::open(&p), Err(StoreError::Schema { found: 99 })));
        let _ = std::fs::remove_dir_all(p);
    }
}
