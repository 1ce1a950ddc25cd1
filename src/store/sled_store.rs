//! The sled 0.34 backend. Trees: `users` (id -> JSON), `logins` (lower-case
//! username or e-mail -> id), `sessions` (uid ++ sid -> JSON), `counters`
//! (key -> JSON), `resets` (token hash -> id), `meta` (schema version).

use std::cell::RefCell;
use std::path::Path;

use sled::transaction::{abort, ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use super::{login_key, NewUser, SessionRecord, Store, StoreError, Update, User, SCHEMA_VERSION};
use crate::auth::regulation::Counter;
use crate::auth::session::SessionId;
use crate::clock::UnixTime;

pub struct SledStore {
    db: sled::Db,
    users: sled::Tree,
    logins: sled::Tree,
    sessions: sled::Tree,
    counters: sled::Tree,
    resets: sled::Tree,
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

fn decode_user(v: &[u8]) -> Result<User, StoreError> {
    serde_json::from_slice(v).map_err(corrupt)
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn validate_new(u: &NewUser) -> Result<(), StoreError> {
    if u.username.is_empty() || u.username.contains('@') || u.username.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(StoreError::Conflict { field: "username", value: u.username.clone() });
    }
    Ok(())
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
        let meta = db.open_tree("meta").map_err(be)?;
        match meta.get("schema_version").map_err(be)? {
            None => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes()).map_err(be)?;
            }
            Some(v) => {
                let found = v.as_ref().try_into().map(u32::from_be_bytes).unwrap_or(0);
                if found != SCHEMA_VERSION {
                    return Err(StoreError::Schema { found });
                }
            }
        }
        Ok(Self {
            users: db.open_tree("users").map_err(be)?,
            logins: db.open_tree("logins").map_err(be)?,
            sessions: db.open_tree("sessions").map_err(be)?,
            counters: db.open_tree("counters").map_err(be)?,
            resets: db.open_tree("resets").map_err(be)?,
            db,
        })
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
        let user = User {
            id,
            username: new.username.clone(),
            email: new.email.clone(),
            display_name: new.display_name.clone(),
            password_hash: new.password_hash.clone(),
            disabled: false,
            created_at: now,
            updated_at: now,
            totp: None,
            pending_totp: None,
            last_totp_step: None,
            recovery_codes: Vec::new(),
            reset: None,
        };
        let bytes = encode(&user).map_err(ConflictableTransactionError::Abort)?;
        u.insert(&id.to_be_bytes(), bytes)?;
        Ok(user)
    }
}

impl Store for SledStore {
    fn insert_user(&self, user: NewUser, now: UnixTime) -> Result<User, StoreError> {
        Ok(self.insert_users(vec![user], now)?.remove(0))
    }

    fn insert_users(&self, users: Vec<NewUser>, now: UnixTime) -> Result<Vec<User>, StoreError> {
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

    fn user(&self, id: u64) -> Result<Option<User>, StoreError> {
        self.users.get(id.to_be_bytes()).map_err(be)?.map(|v| decode_user(&v)).transpose()
    }

    fn find_user(&self, login: &str) -> Result<Option<User>, StoreError> {
        let Some(id) = self.logins.get(login_key(login).as_bytes()).map_err(be)? else {
            return Ok(None);
        };
        let id = id.as_ref().try_into().map(u64::from_be_bytes).map_err(|_| StoreError::Corrupt("login index".into()))?;
        self.user(id)
    }

    fn users(&self) -> Result<Vec<User>, StoreError> {
        self.users.iter().values().map(|v| decode_user(&v.map_err(be)?)).collect()
    }

    fn update_user(&self, id: u64, f: &mut dyn FnMut(&mut User) -> Update) -> Result<Option<User>, StoreError> {
        let f = RefCell::new(f);
        (&self.users, &self.logins)
            .transaction(|(u, l)| {
                let Some(old) = u.get(id.to_be_bytes())? else {
                    return abort(StoreError::NoSuchUser);
                };
                let old = decode_user(&old).map_err(ConflictableTransactionError::Abort)?;
                let mut new = old.clone();
                let mut f = f.borrow_mut();
                if let Update::Abort = (*f)(&mut new) {
                    return Ok(None);
                }
                new.id = old.id;
                new.username = old.username.clone();
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

    fn delete_user(&self, id: u64) -> Result<bool, StoreError> {
        let removed = (&self.users, &self.logins)
            .transaction(|(u, l)| {
                let Some(old) = u.remove(&id.to_be_bytes())? else { return Ok(None) };
                let old = decode_user(&old).map_err(ConflictableTransactionError::Abort)?;
                l.remove(login_key(&old.username).as_bytes())?;
                if let Some(e) = &old.email {
                    l.remove(login_key(e).as_bytes())?;
                }
                Ok(Some(old))
            })
            .map_err(tx_err)?;
        if let Some(old) = &removed {
            self.delete_sessions_of(id, None)?;
            if let Some(r) = &old.reset {
                self.delete_reset_index(&r.token_hash)?;
            }
        }
        Ok(removed.is_some())
    }

    fn put_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        self.sessions.insert(session_key(s.uid, &s.sid), encode(s)?).map_err(be)?;
        Ok(())
    }

    fn session(&self, uid: u64, sid: &SessionId) -> Result<Option<std::sync::Arc<SessionRecord>>, StoreError> {
        self.sessions
            .get(session_key(uid, sid))
            .map_err(be)?
            .map(|v| serde_json::from_slice(&v).map(std::sync::Arc::new).map_err(corrupt))
            .transpose()
    }

    fn touch_session(&self, uid: u64, sid: &SessionId, now: UnixTime) -> Result<(), StoreError> {
        self.sessions
            .update_and_fetch(session_key(uid, sid), |old| {
                let old = old?;
                let mut rec: SessionRecord = serde_json::from_slice(old).ok()?;
                rec.last_seen = rec.last_seen.max(now);
                serde_json::to_vec(&rec).ok()
            })
            .map_err(be)?;
        Ok(())
    }

    fn delete_session(&self, uid: u64, sid: &SessionId) -> Result<(), StoreError> {
        self.sessions.remove(session_key(uid, sid)).map_err(be)?;
        Ok(())
    }

    fn delete_sessions_of(&self, uid: u64, keep: Option<&SessionId>) -> Result<usize, StoreError> {
        let keep_key = keep.map(|k| session_key(uid, k));
        let mut n = 0;
        for kv in self.sessions.scan_prefix(uid.to_be_bytes()) {
            let (k, _) = kv.map_err(be)?;
            if keep_key.as_deref() == Some(k.as_ref()) {
                continue;
            }
            self.sessions.remove(k).map_err(be)?;
            n += 1;
        }
        Ok(n)
    }

    fn purge_sessions(&self, now: UnixTime, idle: i64) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.sessions.iter() {
            let (k, v) = kv.map_err(be)?;
            let dead = match serde_json::from_slice::<SessionRecord>(&v) {
                Ok(s) => now >= s.expires_at || now - s.last_seen > idle,
                Err(_) => true,
            };
            if dead {
                self.sessions.remove(k).map_err(be)?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn counter(&self, key: &str) -> Result<Counter, StoreError> {
        Ok(self
            .counters
            .get(key.as_bytes())
            .map_err(be)?
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default())
    }

    fn update_counter(&self, key: &str, f: &dyn Fn(Counter) -> Counter) -> Result<Counter, StoreError> {
        let out = self
            .counters
            .update_and_fetch(key.as_bytes(), |old| {
                let c = old.and_then(|v| serde_json::from_slice::<Counter>(v).ok()).unwrap_or_default();
                let c = f(c);
                if c == Counter::default() {
                    None
                } else {
                    serde_json::to_vec(&c).ok()
                }
            })
            .map_err(be)?;
        Ok(out.and_then(|v| serde_json::from_slice(&v).ok()).unwrap_or_default())
    }

    fn delete_counters(&self, prefix: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.counters.scan_prefix(prefix.as_bytes()) {
            let (k, _) = kv.map_err(be)?;
            self.counters.remove(k).map_err(be)?;
            n += 1;
        }
        Ok(n)
    }

    fn put_reset_index(&self, token_hash: &str, uid: u64) -> Result<(), StoreError> {
        self.resets.insert(token_hash.as_bytes(), &uid.to_be_bytes()).map_err(be)?;
        Ok(())
    }

    fn reset_index(&self, token_hash: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .resets
            .get(token_hash.as_bytes())
            .map_err(be)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    fn delete_reset_index(&self, token_hash: &str) -> Result<(), StoreError> {
        self.resets.remove(token_hash.as_bytes()).map_err(be)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(be)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::session::Stage;

    fn tmp() -> (SledStore, std::path::PathBuf) {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!("riegel-store-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&p);
        (SledStore::open(&p).expect("open"), p)
    }

    fn new(name: &str, email: Option<&str>) -> NewUser {
        NewUser { username: name.into(), email: email.map(Into::into), display_name: name.into(), password_hash: None }
    }

    #[test]
    fn users_by_name_and_email_case_insensitive() {
        let (s, p) = tmp();
        let u = s.insert_user(new("Anna", Some("Anna@Example.at")), 1).expect("insert");
        assert_eq!(s.find_user("anna").expect("find").map(|x| x.id), Some(u.id));
        assert_eq!(s.find_user("ANNA@example.AT").expect("find").map(|x| x.id), Some(u.id));
        assert!(s.find_user("bob").expect("find").is_none());
        assert!(matches!(s.insert_user(new("anna", None), 1), Err(StoreError::Conflict { field: "username", .. })));
        assert!(matches!(s.insert_user(new("bob", Some("anna@example.at")), 1), Err(StoreError::Conflict { field: "e-mail", .. })));
        assert!(matches!(s.insert_user(new("a@b", None), 1), Err(StoreError::Conflict { .. })));
        drop(s);
        let _ = std::fs::remove_dir_all(p);
    }

    #[test]
    fn batch_insert_is_all_or_nothing() {
        let (s, p) = tmp();
        s.insert_user(new("taken", None), 1).expect("insert");
        let r = s.insert_users(vec![new("fresh", None), new("taken", None)], 1);
        assert!(r.is_err());
        assert!(s.find_user("fresh").expect("find").is_none());
        drop(s);
        let _ = std::fs::remove_dir_all(p);
    }

    #[test]
    fn email_change_moves_the_index() {
        let (s, p) = tmp();
        let u = s.insert_user(new("anna", Some("a@x.at")), 1).expect("insert");
        s.insert_user(new("bob", Some("b@x.at")), 1).expect("insert");
        let r = s.update_user(u.id, &mut |u| {
            u.email = Some("b@x.at".into());
            Update::Commit
        });
        assert!(matches!(r, Err(StoreError::Conflict { .. })));
        s.update_user(u.id, &mut |u| {
            u.email = Some("new@x.at".into());
            Update::Commit
        })
        .expect("update");
        assert!(s.find_user("a@x.at").expect("find").is_none());
        // A change of letter case only keeps the address findable.
        s.update_user(u.id, &mut |u| {
            u.email = Some("New@X.at".into());
            Update::Commit
        })
        .expect("update");
        assert_eq!(s.find_user("new@x.at").expect("find").map(|x| x.id), Some(u.id));
        drop(s);
        let _ = std::fs::remove_dir_all(p);
    }

    #[test]
    fn sessions_end_per_user() {
        let (s, p) = tmp();
        let rec = |uid, sid: u8| SessionRecord {
            uid,
            sid: vec![sid; 16],
            stage: Stage::Full,
            created_at: 1,
            last_seen: 1,
            expires_at: 100,
            username: "u".into(),
            email: None,
            display_name: "U".into(),
            rd: None,
        };
        for (uid, sid) in [(1, 1), (1, 2), (1, 3), (2, 4)] {
            s.put_session(&rec(uid, sid)).expect("put");
        }
        assert_eq!(s.delete_sessions_of(1, Some(&[2; 16])).expect("del"), 2);
        assert!(s.session(1, &[2; 16]).expect("get").is_some());
        assert!(s.session(1, &[1; 16]).expect("get").is_none());
        assert!(s.session(2, &[4; 16]).expect("get").is_some());
        // Touching a deleted session does not bring it back.
        s.touch_session(1, &[1; 16], 50).expect("touch");
        assert!(s.session(1, &[1; 16]).expect("get").is_none());
        s.touch_session(1, &[2; 16], 50).expect("touch");
        assert_eq!(s.session(1, &[2; 16]).expect("get").map(|r| r.last_seen), Some(50));
        drop(s);
        let _ = std::fs::remove_dir_all(p);
    }

    #[test]
    fn counters_persist_across_reopen() {
        let (s, p) = tmp();
        s.update_counter("u:1", &|mut c| {
            c.consecutive = 7;
            c
        })
        .expect("update");
        s.flush().expect("flush");
        drop(s);
        let s = SledStore::open(&p).expect("reopen");
        assert_eq!(s.counter("u:1").expect("get").consecutive, 7);
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
}
