//! An in-memory backend for unit tests of the layers above (`web::handle`
//! without a disk): everything under one lock, so every call is atomic.
//! It passes the same conformance suite as the real backends.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::sled_store::{new_user_record, validate_new};
use super::{
    login_key, Accounts, Counter, CounterKey, Counters, CountersFn, MailSpool, NewUser, QueuedMail, SessionId,
    SessionRecord, Sessions, Store, StoreError, TokenKind, Tokens, Update, User, UserFn,
};
use crate::clock::UnixTime;

/// A change to one user record.
type UserChange = Box<dyn FnOnce(&mut User) + Send>;

#[derive(Default)]
struct Inner {
    next_id: u64,
    users: BTreeMap<u64, User>,
    logins: HashMap<String, u64>,
    sessions: BTreeMap<(u64, SessionId), SessionRecord>,
    counters: HashMap<Vec<u8>, Counter>,
    tokens: HashMap<String, (TokenKind, u64)>,
    mail: BTreeMap<u64, QueuedMail>,
    /// A change committed right before the next `update_user` runs.
    before_update: Option<UserChange>,
}

#[derive(Default)]
pub struct MemStore(Mutex<Inner>);

impl MemStore {
    /// `f` changes the user right before the next `update_user` reads it:
    /// another writer (an operator's command) landing between a request's
    /// check and its update.
    pub fn before_next_update(&self, f: impl FnOnce(&mut User) + Send + 'static) {
        if let Ok(mut g) = self.0.lock() {
            g.before_update = Some(Box::new(f));
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> Result<T, StoreError> {
        let mut g = self.0.lock().map_err(|_| StoreError::Backend("poisoned".into()))?;
        Ok(f(&mut g))
    }
}

fn key(uid: u64, sid: &[u8]) -> Option<(u64, SessionId)> {
    Some((uid, sid.try_into().ok()?))
}

#[async_trait]
impl Accounts for MemStore {
    async fn insert_users(&self, users: Vec<NewUser>, now: UnixTime) -> Result<Vec<User>, StoreError> {
        for u in &users {
            validate_new(u)?;
        }
        self.with(|s| {
            let mut taken: Vec<String> = Vec::new();
            for u in &users {
                let keys = std::iter::once(("username", &u.username)).chain(u.email.iter().map(|e| ("e-mail", e)));
                for (field, k) in keys {
                    let k2 = login_key(k);
                    if s.logins.contains_key(&k2) || taken.contains(&k2) {
                        return Err(StoreError::Conflict { field, value: k.clone() });
                    }
                    taken.push(k2);
                }
            }
            let mut out = Vec::new();
            for u in &users {
                s.next_id += 1;
                let rec = new_user_record(s.next_id, u, now);
                s.logins.insert(login_key(&u.username), rec.id);
                if let Some(e) = &u.email {
                    s.logins.insert(login_key(e), rec.id);
                }
                s.users.insert(rec.id, rec.clone());
                out.push(rec);
            }
            Ok(out)
        })?
    }

    async fn user(&self, id: u64) -> Result<Option<User>, StoreError> {
        self.with(|s| s.users.get(&id).cloned())
    }

    async fn find_user(&self, login: &str) -> Result<Option<User>, StoreError> {
        self.with(|s| s.logins.get(&login_key(login)).and_then(|id| s.users.get(id)).cloned())
    }

    async fn users(&self) -> Result<Vec<User>, StoreError> {
        self.with(|s| s.users.values().cloned().collect())
    }

    async fn update_user(&self, id: u64, f: &mut UserFn<'_>) -> Result<Option<User>, StoreError> {
        self.with(|s| {
            if let (Some(h), Some(u)) = (s.before_update.take(), s.users.get_mut(&id)) {
                h(u);
            }
            let old = s.users.get(&id).cloned().ok_or(StoreError::NoSuchUser)?;
            let mut new = old.clone();
            if f(&mut new) == Update::Abort {
                return Ok(None);
            }
            new.id = old.id;
            new.username = old.username.clone();
            new.created_at = old.created_at;
            if new.email != old.email {
                if let Some(e) = &new.email {
                    if s.logins.get(&login_key(e)).is_some_and(|other| *other != id) {
                        return Err(StoreError::Conflict { field: "e-mail", value: e.clone() });
                    }
                }
                if let Some(e) = &old.email {
                    s.logins.remove(&login_key(e));
                }
                if let Some(e) = &new.email {
                    s.logins.insert(login_key(e), id);
                }
            }
            s.users.insert(id, new.clone());
            Ok(Some(new))
        })?
    }

    async fn delete_user(&self, id: u64) -> Result<bool, StoreError> {
        self.with(|s| {
            let Some(old) = s.users.remove(&id) else { return false };
            s.logins.remove(&login_key(&old.username));
            if let Some(e) = &old.email {
                s.logins.remove(&login_key(e));
            }
            s.sessions.retain(|k, _| k.0 != id);
            for t in old.reset.iter().chain(old.new_device.iter()) {
                s.tokens.remove(&t.token_hash);
            }
            true
        })
    }
}

#[async_trait]
impl Sessions for MemStore {
    async fn put_session(&self, r: &SessionRecord) -> Result<(), StoreError> {
        let k = key(r.uid, &r.sid).ok_or_else(|| StoreError::Corrupt("session id".into()))?;
        self.with(|s| _ = s.sessions.insert(k, r.clone()))
    }
    async fn session(&self, uid: u64, sid: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        self.with(|s| s.sessions.get(&(uid, *sid)).cloned())
    }
    async fn sessions_of(&self, uid: u64) -> Result<Vec<SessionRecord>, StoreError> {
        self.with(|s| s.sessions.iter().filter(|(k, _)| k.0 == uid).map(|(_, v)| v.clone()).collect())
    }
    async fn touch_session(&self, uid: u64, sid: &SessionId, now: UnixTime) -> Result<(), StoreError> {
        self.with(|s| {
            if let Some(r) = s.sessions.get_mut(&(uid, *sid)) {
                r.last_seen = r.last_seen.max(now);
            }
        })
    }
    async fn set_portal_jar(&self, uid: u64, sid: &SessionId, jar: Option<Vec<u8>>) -> Result<bool, StoreError> {
        self.with(|s| match s.sessions.get_mut(&(uid, *sid)) {
            Some(r) => {
                r.portal_jar = jar;
                true
            }
            None => false,
        })
    }
    async fn delete_session(&self, uid: u64, sid: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        self.with(|s| s.sessions.remove(&(uid, *sid)))
    }
    async fn delete_sessions_of(&self, uid: u64, keep: Option<&SessionId>) -> Result<Vec<SessionRecord>, StoreError> {
        self.with(|s| {
            let gone: Vec<_> = s.sessions.keys().filter(|k| k.0 == uid && Some(&k.1) != keep).copied().collect();
            gone.iter().filter_map(|k| s.sessions.remove(k)).collect()
        })
    }
    async fn purge_sessions(&self, now: UnixTime, idle: i64) -> Result<Vec<SessionRecord>, StoreError> {
        self.with(|s| {
            let gone: Vec<_> =
                s.sessions.iter().filter(|(_, r)| now >= r.expires_at || now - r.last_seen > idle).map(|(k, _)| *k).collect();
            gone.iter().filter_map(|k| s.sessions.remove(k)).collect()
        })
    }
    async fn count_sessions(&self) -> Result<usize, StoreError> {
        self.with(|s| s.sessions.len())
    }
}

#[async_trait]
impl Counters for MemStore {
    async fn counter(&self, key: &CounterKey) -> Result<Counter, StoreError> {
        self.with(|s| s.counters.get(&key.to_bytes()).cloned().unwrap_or_default())
    }
    async fn update_counters(&self, keys: &[CounterKey], f: &mut CountersFn<'_>) -> Result<Option<Vec<Counter>>, StoreError> {
        self.with(|s| {
            let encoded: Vec<Vec<u8>> = keys.iter().map(CounterKey::to_bytes).collect();
            let mut c: Vec<Counter> = encoded.iter().map(|k| s.counters.get(k).cloned().unwrap_or_default()).collect();
            if f(&mut c) == Update::Abort {
                return None;
            }
            for (k, v) in encoded.into_iter().zip(&c) {
                if *v == Counter::default() {
                    s.counters.remove(&k);
                } else {
                    s.counters.insert(k, v.clone());
                }
            }
            Some(c)
        })
    }
    async fn delete_counter(&self, key: &CounterKey) -> Result<bool, StoreError> {
        self.with(|s| s.counters.remove(&key.to_bytes()).is_some())
    }
    async fn count_bans(&self, now: UnixTime) -> Result<usize, StoreError> {
        self.with(|s| s.counters.values().filter(|c| now < c.banned_until).count())
    }
}

#[async_trait]
impl Tokens for MemStore {
    async fn put_token(&self, token_hash: &str, kind: TokenKind, uid: u64) -> Result<(), StoreError> {
        self.with(|s| _ = s.tokens.insert(token_hash.to_string(), (kind, uid)))
    }
    async fn token(&self, token_hash: &str, kind: TokenKind) -> Result<Option<u64>, StoreError> {
        self.with(|s| s.tokens.get(token_hash).filter(|(k, _)| *k == kind).map(|(_, uid)| *uid))
    }
    async fn delete_token(&self, token_hash: &str) -> Result<(), StoreError> {
        self.with(|s| _ = s.tokens.remove(token_hash))
    }
}

#[async_trait]
impl MailSpool for MemStore {
    async fn enqueue_mail(&self, sealed: Vec<u8>, to_domain: &str, now: UnixTime) -> Result<u64, StoreError> {
        self.with(|s| {
            s.next_id += 1;
            let m = QueuedMail { id: s.next_id, sealed, to_domain: to_domain.into(), accepted_at: now, attempts: 0, next_attempt_at: now };
            s.mail.insert(m.id, m);
            s.next_id
        })
    }
    async fn claim_mails(&self, now: UnixTime, lease_until: UnixTime, limit: usize) -> Result<Vec<QueuedMail>, StoreError> {
        self.with(|s| {
            let mut out = Vec::new();
            for m in s.mail.values_mut().filter(|m| m.next_attempt_at <= now).take(limit) {
                m.next_attempt_at = lease_until;
                out.push(m.clone());
            }
            out
        })
    }
    async fn finish_mail(&self, id: u64) -> Result<(), StoreError> {
        self.with(|s| _ = s.mail.remove(&id))
    }
    async fn retry_mail(&self, id: u64, attempts: u32, at: UnixTime) -> Result<(), StoreError> {
        self.with(|s| {
            if let Some(m) = s.mail.get_mut(&id) {
                m.attempts = attempts;
                m.next_attempt_at = at;
            }
        })
    }
    async fn mail_queue_depth(&self) -> Result<usize, StoreError> {
        self.with(|s| s.mail.len())
    }
}

#[async_trait]
impl Store for MemStore {
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn healthy(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance() {
        crate::store::conformance::run_all(std::sync::Arc::new(super::MemStore::default())).await;
    }
}
