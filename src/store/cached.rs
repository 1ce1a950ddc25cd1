//! A decorator that keeps session records in memory, so checking a session
//! on every proxied request costs no database read and no decoding. Every
//! session write and delete goes through here (the web layer and the admin
//! socket share one store object per process), so the cache is exact.
//!
//! Every change to sessions raises a generation number, both before and
//! after it reaches the database, and a record read from the database
//! enters the cache only if the generation did not move meanwhile: a
//! request racing a logout cannot put the logged-out session back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
    generation: AtomicU64,
}

impl<S: Store> CachedStore<S> {
    pub fn new(inner: S) -> Self {
        Self { inner, sessions: RwLock::new(HashMap::new()), generation: AtomicU64::new(0) }
    }

    fn key(uid: u64, sid: &[u8]) -> Option<Key> {
        let sid: SessionId = sid.try_into().ok()?;
        Some((uid, sid))
    }

    /// Applies `f` to the cache and raises the generation (also when the
    /// map is unusable).
    fn change(&self, f: impl FnOnce(&mut HashMap<Key, Arc<SessionRecord>>)) {
        let mut m = self.sessions.write();
        if let Ok(m) = m.as_mut() {
            f(m);
        }
        // Raised while the lock is held: a read caches under the same lock.
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Changes sessions in the database with `write`, the cache before and
    /// after it with `forget`.
    fn change_around<T>(
        &self,
        forget: impl Fn(&mut HashMap<Key, Arc<SessionRecord>>),
        write: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Before: a failed write must not leave a usable cache entry.
        self.change(&forget);
        let r = write();
        // After: a reader that fetched the old record meanwhile does not
        // cache it (the generation moved).
        self.change(&forget);
        r
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
        self.change_around(|m| m.retain(|k, _| k.0 != id), || self.inner.delete_user(id))
    }

    fn put_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        // Not cached here: the next read caches it, under the generation
        // rule (a revocation right after this write must win).
        let key = Self::key(s.uid, &s.sid);
        self.change_around(|m| _ = key.map(|k| m.remove(&k)), || self.inner.put_session(s))
    }

    fn session(&self, uid: u64, sid: &SessionId) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        let key = (uid, *sid);
        if let Ok(m) = self.sessions.read() {
            if let Some(r) = m.get(&key) {
                return Ok(Some(r.clone()));
            }
        }
        let generation = self.generation.load(Ordering::Acquire);
        let found = self.inner.session(uid, sid)?;
        if let (Some(r), Ok(mut m)) = (&found, self.sessions.write()) {
            // Only if no change happened since the database was asked.
            if self.generation.load(Ordering::Acquire) == generation {
                if m.len() >= MAX_ENTRIES {
                    m.clear();
                }
                m.insert(key, r.clone());
            }
        }
        Ok(found)
    }

    fn touch_session(&self, uid: u64, sid: &SessionId, now: UnixTime) -> Result<(), StoreError> {
        self.inner.touch_session(uid, sid, now)?;
        // Refreshed in place rather than forgotten: an entry that is gone
        // (a racing delete) stays gone. A read that fetched the record
        // before the touch does not cache it (the generation moves).
        self.change(|m| {
            if let Some(r) = m.get_mut(&(uid, *sid)) {
                let mut rec = (**r).clone();
                rec.last_seen = rec.last_seen.max(now);
                *r = Arc::new(rec);
            }
        });
        Ok(())
    }

    fn delete_session(&self, uid: u64, sid: &SessionId) -> Result<(), StoreError> {
        self.change_around(|m| _ = m.remove(&(uid, *sid)), || self.inner.delete_session(uid, sid))
    }

    fn delete_sessions_of(&self, uid: u64, keep: Option<&SessionId>) -> Result<usize, StoreError> {
        self.change_around(|m| m.retain(|k, _| k.0 != uid || Some(&k.1) == keep), || self.inner.delete_sessions_of(uid, keep))
    }

    fn purge_sessions(&self, now: UnixTime, idle: i64) -> Result<usize, StoreError> {
        self.change_around(|m| m.retain(|_, s| now < s.expires_at && now - s.last_seen <= idle), || self.inner.purge_sessions(now, idle))
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

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, Weak};

    use super::*;
    use crate::auth::session::Stage;
    use crate::store::SledStore;

    type Hook = Box<dyn FnOnce() + Send>;

    /// The database, with a hook that runs inside the next session read or
    /// write: after the database, before the cache.
    struct Hooked {
        db: SledStore,
        hook: Mutex<Option<Hook>>,
    }

    impl Hooked {
        fn run_hook(&self) {
            let hook = self.hook.lock().expect("hook").take();
            if let Some(h) = hook {
                h();
            }
        }
    }

    impl Store for Hooked {
        fn insert_user(&self, user: NewUser, now: UnixTime) -> Result<User, StoreError> {
            self.db.insert_user(user, now)
        }
        fn insert_users(&self, users: Vec<NewUser>, now: UnixTime) -> Result<Vec<User>, StoreError> {
            self.db.insert_users(users, now)
        }
        fn user(&self, id: u64) -> Result<Option<User>, StoreError> {
            self.db.user(id)
        }
        fn find_user(&self, login: &str) -> Result<Option<User>, StoreError> {
            self.db.find_user(login)
        }
        fn users(&self) -> Result<Vec<User>, StoreError> {
            self.db.users()
        }
        fn update_user(&self, id: u64, f: &mut dyn FnMut(&mut User) -> Update) -> Result<Option<User>, StoreError> {
            self.db.update_user(id, f)
        }
        fn delete_user(&self, id: u64) -> Result<bool, StoreError> {
            self.db.delete_user(id)
        }
        fn put_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
            let r = self.db.put_session(s);
            self.run_hook();
            r
        }
        fn session(&self, uid: u64, sid: &SessionId) -> Result<Option<Arc<SessionRecord>>, StoreError> {
            let r = self.db.session(uid, sid);
            self.run_hook();
            r
        }
        fn touch_session(&self, uid: u64, sid: &SessionId, now: UnixTime) -> Result<(), StoreError> {
            self.db.touch_session(uid, sid, now)
        }
        fn delete_session(&self, uid: u64, sid: &SessionId) -> Result<(), StoreError> {
            self.db.delete_session(uid, sid)
        }
        fn delete_sessions_of(&self, uid: u64, keep: Option<&SessionId>) -> Result<usize, StoreError> {
            self.db.delete_sessions_of(uid, keep)
        }
        fn purge_sessions(&self, now: UnixTime, idle: i64) -> Result<usize, StoreError> {
            self.db.purge_sessions(now, idle)
        }
        fn counter(&self, key: &str) -> Result<Counter, StoreError> {
            self.db.counter(key)
        }
        fn update_counter(&self, key: &str, f: &dyn Fn(Counter) -> Counter) -> Result<Counter, StoreError> {
            self.db.update_counter(key, f)
        }
        fn delete_counters(&self, prefix: &str) -> Result<usize, StoreError> {
            self.db.delete_counters(prefix)
        }
        fn put_reset_index(&self, token_hash: &str, uid: u64) -> Result<(), StoreError> {
            self.db.put_reset_index(token_hash, uid)
        }
        fn reset_index(&self, token_hash: &str) -> Result<Option<u64>, StoreError> {
            self.db.reset_index(token_hash)
        }
        fn delete_reset_index(&self, token_hash: &str) -> Result<(), StoreError> {
            self.db.delete_reset_index(token_hash)
        }
        fn flush(&self) -> Result<(), StoreError> {
            self.db.flush()
        }
    }

    fn cached() -> (Arc<CachedStore<Hooked>>, std::path::PathBuf) {
        use std::sync::atomic::AtomicU32;
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!("riegel-cached-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&p);
        let db = SledStore::open(&p).expect("open");
        (Arc::new(CachedStore::new(Hooked { db, hook: Mutex::new(None) })), p)
    }

    fn rec(uid: u64, sid: u8) -> SessionRecord {
        SessionRecord {
            uid,
            sid: vec![sid; 16],
            stage: Stage::Full,
            created_at: 1,
            last_seen: 1,
            expires_at: 1_000,
            username: "u".into(),
            email: None,
            display_name: "U".into(),
            rd: None,
        }
    }

    fn on_next_access(c: &Arc<CachedStore<Hooked>>, f: impl FnOnce(&CachedStore<Hooked>) + Send + 'static) {
        let weak: Weak<CachedStore<Hooked>> = Arc::downgrade(c);
        *c.inner.hook.lock().expect("hook") = Some(Box::new(move || {
            if let Some(c) = weak.upgrade() {
                f(&c);
            }
        }));
    }

    #[test]
    fn a_read_racing_a_logout_does_not_bring_the_session_back() {
        let (c, p) = cached();
        // In the database only: the next read misses the cache.
        c.inner.db.put_session(&rec(1, 1)).expect("put");
        on_next_access(&c, |c| c.delete_session(1, &[1; 16]).expect("delete"));
        // This read began before the logout and may still see the session;
        assert!(c.session(1, &[1; 16]).expect("get").is_some());
        // every read after the logout must not, on any thread.
        assert!(c.session(1, &[1; 16]).expect("get").is_none());
        let other = c.clone();
        assert!(std::thread::spawn(move || other.session(1, &[1; 16]).expect("get").is_none()).join().expect("thread"));
        // A revocation right after a login's database write wins.
        on_next_access(&c, |c| _ = c.delete_sessions_of(3, None).expect("revoke"));
        c.put_session(&rec(3, 3)).expect("put");
        assert!(c.session(3, &[3; 16]).expect("get").is_none());
        // The same for revoking all of a user's sessions and for deleting the user.
        c.inner.db.put_session(&rec(2, 2)).expect("put");
        on_next_access(&c, |c| _ = c.delete_sessions_of(2, None).expect("delete"));
        assert!(c.session(2, &[2; 16]).expect("get").is_some());
        assert!(c.session(2, &[2; 16]).expect("get").is_none());
        let _ = std::fs::remove_dir_all(p);
    }

    #[test]
    fn every_thread_sees_every_change() {
        let (c, p) = cached();
        c.put_session(&rec(1, 1)).expect("put");
        c.put_session(&rec(1, 2)).expect("put");
        let read = |c: &Arc<CachedStore<Hooked>>, sid: u8| {
            let c = c.clone();
            let here = c.session(1, &[sid; 16]).expect("get").map(|r| r.last_seen);
            let there = std::thread::spawn(move || c.session(1, &[sid; 16]).expect("get").map(|r| r.last_seen)).join().expect("thread");
            assert_eq!(here, there);
            here
        };
        // Read twice so that both layers hold it on this thread.
        assert_eq!(read(&c, 1), Some(1));
        assert_eq!(read(&c, 1), Some(1));
        c.touch_session(1, &[1; 16], 50).expect("touch");
        assert_eq!(read(&c, 1), Some(50));
        assert_eq!(c.inner.db.session(1, &[1; 16]).expect("get").map(|r| r.last_seen), Some(50));
        // A new stage under the same id replaces the copy.
        let mut partial = rec(1, 1);
        partial.stage = Stage::Password;
        c.put_session(&partial).expect("put");
        assert_eq!(c.session(1, &[1; 16]).expect("get").map(|r| r.stage), Some(Stage::Password));
        c.delete_session(1, &[1; 16]).expect("delete");
        assert_eq!(read(&c, 1), None);
        assert_eq!(read(&c, 2), Some(1));
        assert_eq!(c.purge_sessions(2_000, 10).expect("purge"), 1);
        assert_eq!(read(&c, 2), None);
        let _ = std::fs::remove_dir_all(p);
    }
}
