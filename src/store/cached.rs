//! A decorator that keeps session records in memory, so checking a session
//! on every proxied request costs no database read and no decoding. Every
//! session write and delete goes through here (the web layer and the admin
//! socket share one store object per process), so the cache is exact.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::{NewUser, SessionRecord, Store, StoreError, Update, User};
use crate::auth::regulation::Counter;
use crate::auth::session::SessionId;
use crate::clock::UnixTime;

/// Beyond this many cached sessions the cache starts over (it only ever
/// holds what the database holds, so dropping it is always safe).
const MAX_ENTRIES: usize = 200_000;

type Key = (u64, SessionId);

pub struct CachedStore<S> {
    inner: S,
    sessions: RwLock<HashMap<Key, Arc<SessionRecord>>>,
}

impl<S: Store> CachedStore<S> {
    pub fn new(inner: S) -> Self {
        Self { inner, sessions: RwLock::new(HashMap::new()) }
    }

    fn key(uid: u64, sid: &[u8]) -> Option<Key> {
        let sid: SessionId = sid.try_into().ok()?;
        Some((uid, sid))
    }

    fn forget_user(&self, uid: u64) {
        if let Ok(mut m) = self.sessions.write() {
            m.retain(|k, _| k.0 != uid);
        }
    }
}

impl<S: Store> Store for CachedStore<S> {
    fn insert_user(&self, user: NewUser, now: UnixTime) -> Result<User, StoreError> {
        self.inner.insert_user(user, now)
    }
    fn insert_users(&self, users: Vec<NewUser>, now: UnixTime) -> Result<Vec<User>, StoreError> {
        self.inner.insert_users(users, now)
    }
    fn user(&self, id: u64) -> Result<Option<User>, StoreError> {
        self.inner.user(id)
    }
    fn find_user(&self, login: &str) -> Result<Option<User>, StoreError> {
        self.inner.find_user(login)
    }
    fn users(&self) -> Result<Vec<User>, StoreError> {
        self.inner.users()
    }
    fn update_user(&self, id: u64, f: &mut dyn FnMut(&mut User) -> Update) -> Result<Option<User>, StoreError> {
        self.inner.update_user(id, f)
    }
    fn delete_user(&self, id: u64) -> Result<bool, StoreError> {
        let r = self.inner.delete_user(id);
        self.forget_user(id);
        r
    }

    fn put_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        self.inner.put_session(s)?;
        if let (Some(k), Ok(mut m)) = (Self::key(s.uid, &s.sid), self.sessions.write()) {
            if m.len() >= MAX_ENTRIES {
                m.clear();
            }
            m.insert(k, Arc::new(s.clone()));
        }
        Ok(())
    }

    fn session(&self, uid: u64, sid: &SessionId) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        if let Ok(m) = self.sessions.read() {
            if let Some(r) = m.get(&(uid, *sid)) {
                return Ok(Some(r.clone()));
            }
        }
        let found = self.inner.session(uid, sid)?;
        if let (Some(r), Ok(mut m)) = (&found, self.sessions.write()) {
            if m.len() >= MAX_ENTRIES {
                m.clear();
            }
            m.insert((uid, *sid), r.clone());
        }
        Ok(found)
    }

    fn touch_session(&self, uid: u64, sid: &SessionId, now: UnixTime) -> Result<(), StoreError> {
        self.inner.touch_session(uid, sid, now)?;
        // Only refresh an entry that is still there: deletes remove the
        // entry before the record, so a racing delete always wins.
        if let Ok(mut m) = self.sessions.write() {
            if let Some(r) = m.get_mut(&(uid, *sid)) {
                let mut rec = (**r).clone();
                rec.last_seen = rec.last_seen.max(now);
                *r = Arc::new(rec);
            }
        }
        Ok(())
    }

    fn delete_session(&self, uid: u64, sid: &SessionId) -> Result<(), StoreError> {
        // Forget first: a failed delete must not leave a usable cache entry.
        if let Ok(mut m) = self.sessions.write() {
            m.remove(&(uid, *sid));
        }
        self.inner.delete_session(uid, sid)
    }

    fn delete_sessions_of(&self, uid: u64, keep: Option<&SessionId>) -> Result<usize, StoreError> {
        if let Ok(mut m) = self.sessions.write() {
            m.retain(|k, _| k.0 != uid || Some(&k.1) == keep);
        }
        self.inner.delete_sessions_of(uid, keep)
    }

    fn purge_sessions(&self, now: UnixTime, idle: i64) -> Result<usize, StoreError> {
        if let Ok(mut m) = self.sessions.write() {
            m.retain(|_, s| now < s.expires_at && now - s.last_seen <= idle);
        }
        self.inner.purge_sessions(now, idle)
    }

    fn counter(&self, key: &str) -> Result<Counter, StoreError> {
        self.inner.counter(key)
    }
    fn update_counter(&self, key: &str, f: &dyn Fn(Counter) -> Counter) -> Result<Counter, StoreError> {
        self.inner.update_counter(key, f)
    }
    fn delete_counters(&self, prefix: &str) -> Result<usize, StoreError> {
        self.inner.delete_counters(prefix)
    }
    fn put_reset_index(&self, token_hash: &str, uid: u64) -> Result<(), StoreError> {
        self.inner.put_reset_index(token_hash, uid)
    }
    fn reset_index(&self, token_hash: &str) -> Result<Option<u64>, StoreError> {
        self.inner.reset_index(token_hash)
    }
    fn delete_reset_index(&self, token_hash: &str) -> Result<(), StoreError> {
        self.inner.delete_reset_index(token_hash)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
}
