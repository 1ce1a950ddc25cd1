//! A decorator that keeps valid session records in memory, so checking a
//! session on every proxied request costs no database read and no
//! decoding. Every session write and delete in the process goes through
//! here (the web layer and the admin socket share one object per process),
//! so the cache is exact; other instances' changes arrive through
//! [`CachedStore::forget_user`] and friends (PostgreSQL's LISTEN/NOTIFY),
//! and while that channel is down the cache is not used at all
//! ([`CachedStore::set_trusted`]).
//!
//! A session enters the cache only after its user's security stamp was
//! compared with the session's ([`crate::store::User::stamp`]), and every
//! change that moves a stamp or deletes sessions removes the user's
//! entries. Every change raises a generation number both before and after
//! it reaches the database, and a record read from the database enters the
//! cache only if the generation did not move meanwhile: a request racing a
//! logout or a revocation cannot put the old session back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use super::{
    Accounts, Counter, CounterKey, Counters, CountersFn, Invalidate, MailSpool, NewUser, QueuedMail, SessionId,
    SessionRecord, Sessions, Store, StoreError, StoreState, TokenKind, Tokens, User, UserFn,
};
use crate::clock::UnixTime;

/// Beyond this many cached sessions the cache starts over (it only ever
/// holds what the database holds, so dropping it is always safe).
const MAX_ENTRIES: usize = 200_000;

type Key = (u64, SessionId);
type Map = HashMap<Key, Arc<SessionRecord>>;

pub struct CachedStore {
    inner: Arc<dyn Store>,
    sessions: RwLock<Map>,
    generation: AtomicU64,
    /// False while changes made elsewhere might not reach this process.
    trusted: AtomicBool,
    #[cfg(test)]
    hook: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl CachedStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            sessions: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            trusted: AtomicBool::new(true),
            #[cfg(test)]
            hook: std::sync::Mutex::new(None),
        }
    }

    /// The backend behind the cache.
    pub fn backend(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    /// A cached, valid session: no I/O, no allocation. `None` when it is
    /// not cached (ask [`CachedStore::valid_session`]).
    pub fn cached_session(&self, uid: u64, sid: &SessionId) -> Option<Arc<SessionRecord>> {
        if !self.trusted.load(Ordering::Acquire) {
            return None;
        }
        self.sessions.read().ok()?.get(&(uid, *sid)).cloned()
    }

    /// The session if it exists and its user exists, is enabled and still
    /// has the stamp the session was issued under; cached when it is.
    pub async fn valid_session(&self, uid: u64, sid: &SessionId) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        if let Some(r) = self.cached_session(uid, sid) {
            return Ok(Some(r));
        }
        let generation = self.generation.load(Ordering::Acquire);
        let Some(rec) = self.inner.session(uid, sid).await? else { return Ok(None) };
        let valid = match self.inner.user(uid).await? {
            Some(u) => !u.disabled && u.stamp == rec.stamp,
            None => false,
        };
        self.run_hook();
        if !valid {
            return Ok(None);
        }
        let rec = Arc::new(rec);
        if self.trusted.load(Ordering::Acquire) {
            if let Ok(mut m) = self.sessions.write() {
                // Only if no change happened since the database was asked
                // (the generation moves under this lock).
                if self.generation.load(Ordering::Acquire) == generation {
                    if m.len() >= MAX_ENTRIES {
                        m.clear();
                    }
                    m.insert((uid, *sid), rec.clone());
                }
            }
        }
        Ok(Some(rec))
    }

    /// Applies `f` to the cache and raises the generation (also when the
    /// map is unusable).
    fn change(&self, f: impl FnOnce(&mut Map)) {
        let mut m = self.sessions.write();
        if let Ok(m) = m.as_mut() {
            f(m);
        }
        // Raised while the lock is held: a read caches under the same lock.
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Forgets every cached session of a user (a change elsewhere).
    pub fn forget_user(&self, uid: u64) {
        self.change(|m| m.retain(|k, _| k.0 != uid));
    }

    /// Forgets one cached session (a change elsewhere).
    pub fn forget_session(&self, uid: u64, sid: &SessionId) {
        self.change(|m| _ = m.remove(&(uid, *sid)));
    }

    /// Whether the cache may be used. Turned off, it is emptied and every
    /// check reads the database until it is turned on again (then it is
    /// emptied once more: nothing from before is trusted).
    pub fn set_trusted(&self, trusted: bool) {
        self.change(|m| m.clear());
        self.trusted.store(trusted, Ordering::Release);
        self.change(|m| m.clear());
    }

    /// How many sessions are cached.
    pub fn cached_len(&self) -> usize {
        self.sessions.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Changes sessions in the database with `write`, the cache before and
    /// after it with `forget`.
    async fn change_around<T, F>(&self, forget: impl Fn(&mut Map), write: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        // Before: a failed write must not leave a usable cache entry.
        self.change(&forget);
        let r = write.await;
        self.run_hook();
        // After: a reader that fetched the old record meanwhile does not
        // cache it (the generation moved).
        self.change(&forget);
        r
    }

    #[cfg(test)]
    fn run_hook(&self) {
        let hook = self.hook.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = hook {
            h();
        }
    }

    #[cfg(not(test))]
    fn run_hook(&self) {}
}

#[async_trait]
impl Accounts for CachedStore {
    async fn insert_users(&self, users: Vec<NewUser>, now: UnixTime) -> Result<Vec<User>, StoreError> {
        self.inner.insert_users(users, now).await
    }
    async fn user(&self, id: u64) -> Result<Option<User>, StoreError> {
        self.inner.user(id).await
    }
    async fn find_user(&self, login: &str) -> Result<Option<User>, StoreError> {
        self.inner.find_user(login).await
    }
    async fn users(&self) -> Result<Vec<User>, StoreError> {
        self.inner.users().await
    }
    async fn update_user(&self, id: u64, f: &mut UserFn<'_>) -> Result<Option<User>, StoreError> {
        // Any update may move the stamp or disable the user: the user's
        // entries go before and, if it did, after the write.
        self.change(|m| m.retain(|k, _| k.0 != id));
        let mut before: Option<(u64, bool)> = None;
        let r = self
            .inner
            .update_user(id, &mut |u| {
                before = Some((u.stamp, u.disabled));
                f(u)
            })
            .await;
        self.run_hook();
        let moved = match &r {
            Ok(Some(u)) => before != Some((u.stamp, u.disabled)),
            Ok(None) => false,
            Err(_) => true,
        };
        if moved {
            self.change(|m| m.retain(|k, _| k.0 != id));
        } else {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        r
    }
    async fn delete_user(&self, id: u64) -> Result<bool, StoreError> {
        self.change_around(|m| m.retain(|k, _| k.0 != id), self.inner.delete_user(id)).await
    }
}

#[async_trait]
impl Sessions for CachedStore {
    async fn put_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        // Not cached here: the next read caches it, under the generation
        // rule (a revocation right after this write must win).
        let key = s.sid().map(|sid| (s.uid, sid));
        self.change_around(|m| _ = key.map(|k| m.remove(&k)), self.inner.put_session(s)).await
    }
    /// The stored record, uncached and unchecked: web asks
    /// [`CachedStore::valid_session`].
    async fn session(&self, uid: u64, sid: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        self.inner.session(uid, sid).await
    }
    async fn sessions_of(&self, uid: u64) -> Result<Vec<SessionRecord>, StoreError> {
        self.inner.sessions_of(uid).await
    }
    async fn touch_session(&self, uid: u64, sid: &SessionId, now: UnixTime) -> Result<(), StoreError> {
        self.inner.touch_session(uid, sid, now).await?;
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
    async fn set_portal_jar(&self, uid: u64, sid: &SessionId, jar: Option<Vec<u8>>) -> Result<bool, StoreError> {
        self.change_around(|m| _ = m.remove(&(uid, *sid)), self.inner.set_portal_jar(uid, sid, jar.clone())).await
    }
    async fn delete_session(&self, uid: u64, sid: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        self.change_around(|m| _ = m.remove(&(uid, *sid)), self.inner.delete_session(uid, sid)).await
    }
    async fn delete_sessions_of(&self, uid: u64, keep: Option<&SessionId>) -> Result<Vec<SessionRecord>, StoreError> {
        self.change_around(|m| m.retain(|k, _| k.0 != uid || Some(&k.1) == keep), self.inner.delete_sessions_of(uid, keep)).await
    }
    async fn purge_sessions(&self, now: UnixTime, idle: i64) -> Result<Vec<SessionRecord>, StoreError> {
        self.change_around(|m| m.retain(|_, s| now < s.expires_at && now - s.last_seen <= idle), self.inner.purge_sessions(now, idle))
            .await
    }
    async fn count_sessions(&self) -> Result<usize, StoreError> {
        self.inner.count_sessions().await
    }
}

#[async_trait]
impl Counters for CachedStore {
    async fn counter(&self, key: &CounterKey) -> Result<Counter, StoreError> {
        self.inner.counter(key).await
    }
    async fn update_counters(&self, keys: &[CounterKey], f: &mut CountersFn<'_>) -> Result<Option<Vec<Counter>>, StoreError> {
        self.inner.update_counters(keys, f).await
    }
    async fn delete_counter(&self, key: &CounterKey) -> Result<bool, StoreError> {
        self.inner.delete_counter(key).await
    }
    async fn count_bans(&self, now: UnixTime) -> Result<usize, StoreError> {
        self.inner.count_bans(now).await
    }
}

#[async_trait]
impl Tokens for CachedStore {
    async fn put_token(&self, token_hash: &str, kind: TokenKind, uid: u64) -> Result<(), StoreError> {
        self.inner.put_token(token_hash, kind, uid).await
    }
    async fn token(&self, token_hash: &str, kind: TokenKind) -> Result<Option<u64>, StoreError> {
        self.inner.token(token_hash, kind).await
    }
    async fn delete_token(&self, token_hash: &str) -> Result<(), StoreError> {
        self.inner.delete_token(token_hash).await
    }
}

#[async_trait]
impl MailSpool for CachedStore {
    async fn enqueue_mail(&self, sealed: Vec<u8>, to_domain: &str, now: UnixTime) -> Result<u64, StoreError> {
        self.inner.enqueue_mail(sealed, to_domain, now).await
    }
    async fn claim_mails(&self, now: UnixTime, lease_until: UnixTime, limit: usize) -> Result<Vec<QueuedMail>, StoreError> {
        self.inner.claim_mails(now, lease_until, limit).await
    }
    async fn finish_mail(&self, id: u64) -> Result<(), StoreError> {
        self.inner.finish_mail(id).await
    }
    async fn retry_mail(&self, id: u64, attempts: u32, at: UnixTime) -> Result<(), StoreError> {
        self.inner.retry_mail(id, attempts, at).await
    }
    async fn mail_queue_depth(&self) -> Result<usize, StoreError> {
        self.inner.mail_queue_depth().await
    }
}

#[async_trait]
impl Store for CachedStore {
    async fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush().await
    }
    async fn healthy(&self) -> Result<(), StoreError> {
        self.inner.healthy().await
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn state(&self) -> StoreState {
        self.inner.state()
    }
}

/// Other processes' changes, as the backend hears of them.
impl Invalidate for CachedStore {
    fn forget_user(&self, uid: u64) {
        CachedStore::forget_user(self, uid);
    }
    fn forget_session(&self, uid: u64, sid: &SessionId) {
        CachedStore::forget_session(self, uid, sid);
    }
    fn set_trusted(&self, trusted: bool) {
        CachedStore::set_trusted(self, trusted);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Weak;

    use super::*;
    use crate::store::{SledStore, Stage, Update};

    fn cached() -> (Arc<CachedStore>, std::path::PathBuf) {
        use std::sync::atomic::AtomicU32;
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!("riegel-cached-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&p);
        let db = SledStore::open(&p).expect("open");
        (Arc::new(CachedStore::new(Arc::new(db))), p)
    }

    async fn user(c: &CachedStore, name: &str) -> u64 {
        let u = NewUser { username: name.into(), email: None, display_name: name.into(), password_hash: None };
        c.insert_user(u, 1).await.expect("user").id
    }

    fn rec(uid: u64, sid: u8, stamp: u64) -> SessionRecord {
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
            stamp,
            user_agent: None,
            ip: None,
            device_proof: false,
            portal_jar: None,
        }
    }

    /// Runs `f` inside the next database access, after the database and
    /// before the cache.
    fn on_next_access<F>(c: &Arc<CachedStore>, f: impl FnOnce(Arc<CachedStore>) -> F + Send + 'static)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let weak: Weak<CachedStore> = Arc::downgrade(c);
        let handle = tokio::runtime::Handle::current();
        *c.hook.lock().expect("hook") = Some(Box::new(move || {
            if let Some(c) = weak.upgrade() {
                // The hook runs on a runtime thread: finish the change on
                // another thread before the interrupted access goes on.
                std::thread::spawn(move || handle.block_on(f(c))).join().expect("hook thread");
            }
        }));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_racing_a_logout_or_revocation_does_not_bring_the_session_back() {
        let (c, p) = cached();
        let a = user(&c, "a").await;
        // In the database only: the next read misses the cache.
        c.backend().put_session(&rec(a, 1, 0)).await.expect("put");
        on_next_access(&c, move |c| async move { _ = c.delete_session(a, &[1; 16]).await.expect("delete") });
        // This read began before the logout and may still see the session;
        assert!(c.valid_session(a, &[1; 16]).await.expect("get").is_some());
        // every read after the logout must not.
        assert!(c.valid_session(a, &[1; 16]).await.expect("get").is_none());
        // A revocation (stamp) right after a login's database write wins.
        let b = user(&c, "b").await;
        on_next_access(&c, move |c| async move {
            c.update_user(b, &mut |u| {
                u.revoke_sessions();
                Update::Commit
            })
            .await
            .expect("revoke");
        });
        c.put_session(&rec(b, 3, 0)).await.expect("put");
        assert!(c.valid_session(b, &[3; 16]).await.expect("get").is_none());
        // A revocation inside a read: that read may pass, no later one does,
        // and the session written by a login that read the old stamp never does.
        let d = user(&c, "d").await;
        c.backend().put_session(&rec(d, 4, 0)).await.expect("put");
        on_next_access(&c, move |c| async move {
            c.update_user(d, &mut |u| {
                u.revoke_sessions();
                Update::Commit
            })
            .await
            .expect("revoke");
        });
        let _ = c.valid_session(d, &[4; 16]).await.expect("get");
        assert!(c.valid_session(d, &[4; 16]).await.expect("get").is_none());
        assert!(c.cached_session(d, &[4; 16]).is_none());
        let _ = std::fs::remove_dir_all(p);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_login_that_read_the_user_before_a_revocation_never_gets_a_valid_session() {
        let (c, p) = cached();
        let a = user(&c, "a").await;
        // A login reads the user (and its stamp), then checks the password …
        let read = c.user(a).await.expect("user").expect("there").stamp;
        // … meanwhile the password is changed: stamp raised, sessions removed …
        c.update_user(a, &mut |u| {
            u.revoke_sessions();
            Update::Commit
        })
        .await
        .expect("revoke");
        c.delete_sessions_of(a, None).await.expect("end sessions");
        // … and then the login writes its session, after the removal.
        c.put_session(&rec(a, 7, read)).await.expect("put");
        assert!(c.backend().session(a, &[7; 16]).await.expect("get").is_some(), "the record is there");
        assert!(c.valid_session(a, &[7; 16]).await.expect("get").is_none(), "a session from before the revocation was accepted");
        // A login that read the new stamp gets a valid session.
        c.put_session(&rec(a, 8, read + 1)).await.expect("put");
        assert!(c.valid_session(a, &[8; 16]).await.expect("get").is_some());
        let _ = std::fs::remove_dir_all(p);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stamps_disable_and_every_change_reach_the_cache() {
        let (c, p) = cached();
        let a = user(&c, "a").await;
        c.put_session(&rec(a, 1, 0)).await.expect("put");
        c.put_session(&rec(a, 2, 0)).await.expect("put");
        // A session issued under another stamp is never valid.
        c.put_session(&rec(a, 3, 5)).await.expect("put");
        assert!(c.valid_session(a, &[3; 16]).await.expect("get").is_none());
        assert_eq!(c.valid_session(a, &[1; 16]).await.expect("get").map(|r| r.last_seen), Some(1));
        assert!(c.cached_session(a, &[1; 16]).is_some());
        c.touch_session(a, &[1; 16], 50).await.expect("touch");
        assert_eq!(c.cached_session(a, &[1; 16]).map(|r| r.last_seen), Some(50));
        assert_eq!(c.backend().session(a, &[1; 16]).await.expect("get").map(|r| r.last_seen), Some(50));
        // An update that moves nothing keeps sessions valid.
        c.update_user(a, &mut |u| {
            u.display_name = "A".into();
            Update::Commit
        })
        .await
        .expect("update");
        assert!(c.valid_session(a, &[1; 16]).await.expect("get").is_some());
        // Disabling ends them (also without a stamp change), at once.
        c.update_user(a, &mut |u| {
            u.disabled = true;
            Update::Commit
        })
        .await
        .expect("disable");
        assert!(c.cached_session(a, &[1; 16]).is_none());
        assert!(c.valid_session(a, &[1; 16]).await.expect("get").is_none());
        c.update_user(a, &mut |u| {
            u.disabled = false;
            u.revoke_sessions();
            Update::Commit
        })
        .await
        .expect("enable");
        assert!(c.valid_session(a, &[2; 16]).await.expect("get").is_none());
        // Untrusted: nothing cached is used, checks go to the database.
        c.put_session(&rec(a, 6, 1)).await.expect("put");
        assert!(c.valid_session(a, &[6; 16]).await.expect("get").is_some());
        c.set_trusted(false);
        assert!(c.cached_session(a, &[6; 16]).is_none());
        assert!(c.valid_session(a, &[6; 16]).await.expect("get").is_some());
        assert_eq!(c.cached_len(), 0);
        c.set_trusted(true);
        assert!(c.valid_session(a, &[6; 16]).await.expect("get").is_some());
        assert_eq!(c.cached_len(), 1);
        c.forget_user(a);
        assert_eq!(c.cached_len(), 0);
        // Deleting the user ends its sessions.
        assert!(c.valid_session(a, &[6; 16]).await.expect("get").is_some());
        c.delete_user(a).await.expect("delete");
        assert!(c.valid_session(a, &[6; 16]).await.expect("get").is_none());
        let _ = std::fs::remove_dir_all(p);
    }
}
