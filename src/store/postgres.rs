//! The PostgreSQL backend, for several riegel instances on one database.
//! Tables (see `postgres/migrations/`): `users` (id, unique username and
//! e-mail keys, the record as jsonb), `sessions` (uid, sid, record,
//! expires_at, last_seen), `counters` (key bytea, record, banned_until),
//! `tokens` (hash, kind, uid), `mail` (the spool), `riegel_schema` (the
//! versions applied).
//!
//! Every trait method is one statement or one transaction with the same
//! guarantees as sled's: a user update locks the row (`SELECT … FOR
//! UPDATE`), so the closure runs once and a TOTP step recorded on one
//! instance is seen by every other; a counter reservation locks all its
//! rows in key order (no deadlock between two reservations); a mail is
//! claimed with `FOR UPDATE SKIP LOCKED`, so two instances never claim the
//! same one. Every statement is committed, and durable (unless the server
//! runs with `synchronous_commit = off`, which [`PgStore::open`] warns
//! about), when it returns: [`Store::flush`] has nothing left to do.
//!
//! Every change that touches a session, or a user's stamp or disabled
//! flag, sends `NOTIFY riegel, '<kind>:<uid>[:<sid hex>]'` in its own
//! transaction (so it is delivered only once committed): `user:<uid>` or
//! `session:<uid>:<sid hex>`. [`PgStore::listen`] keeps a `LISTEN riegel`
//! connection and passes each notification to the cache in front of the
//! backend ([`Invalidate`]); while that connection is down the cache is
//! not trusted.
//!
//! Runtimes: riegel runs many tokio runtimes, some of them only driven
//! inside `block_on`. A tokio-postgres connection must be driven by a
//! runtime that always runs, and its socket belongs to the runtime that
//! created it. So the backend owns one runtime thread, `riegel-store`:
//! every connection (the pool's and the listener's) is created on it and
//! its connection task runs there. The [`tokio_postgres::Client`] handles
//! talk to those tasks through channels and work from any runtime.

mod listen;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Connect, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Json;
use tokio_postgres::NoTls;

use super::sled_store::{new_user_record, validate_new};
use super::{
    login_key, Accounts, Counter, CounterKey, Counters, CountersFn, Dump, Invalidate, MailSpool, NewUser, QueuedMail,
    SessionId, SessionRecord, Sessions, Snapshot, Store, StoreError, StoreState, TokenKind, Tokens, Update, User, UserFn,
    SCHEMA_VERSION,
};
use crate::clock::UnixTime;

/// The notification channel.
const CHANNEL: &str = "riegel";

/// The versioned migrations, applied in order at start-up, each in its own
/// transaction. The last one's version is [`SCHEMA_VERSION`].
const MIGRATIONS: &[(u32, &str)] = &[(2, include_str!("postgres/migrations/0002_tables.sql"))];

/// Serialises migrations of instances starting at the same time
/// (`pg_advisory_xact_lock`; the number is riegel's own).
const MIGRATION_LOCK: i64 = 0x7269_6567_656c_0001;

/// How often a reservation that met a concurrent change starts over.
const ATTEMPTS: usize = 10;

/// How to reach the database. `url` carries a password: it is never
/// logged and not printed by `Debug`.
#[derive(Clone)]
pub struct PgOptions {
    pub url: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// A call that gets no answer within this time fails with
    /// [`StoreError::Unavailable`] (also the connect timeout).
    pub timeout: Duration,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgOptions {{ url: [redacted], pool_size: {}, timeout: {:?} }}", self.pool_size, self.timeout)
    }
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions { url: url.into(), pool_size: 16, timeout: Duration::from_secs(5) }
    }
}

/// What the calls and the listener know of the database, for
/// [`Store::state`].
#[derive(Default)]
struct Health {
    /// The last call failed for want of a database.
    down: AtomicBool,
    /// The LISTEN connection is up (or nobody listens: the command line).
    listening: AtomicBool,
    /// Why, for health output (no secrets: error texts of the client).
    why: Mutex<String>,
    /// The server process of the LISTEN connection (0: none yet).
    listener_pid: std::sync::atomic::AtomicI32,
}

impl Health {
    fn set_down(&self, why: &str) {
        if let Ok(mut w) = self.why.lock() {
            why.clone_into(&mut w);
        }
        self.down.store(true, Ordering::Release);
    }
    fn why(&self) -> String {
        self.why.lock().map(|w| w.clone()).unwrap_or_default()
    }
}

/// The runtime thread that drives every connection. Dropping it stops the
/// thread, which closes the connections.
struct StoreRuntime {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl StoreRuntime {
    fn start() -> Result<Self, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("riegel-store".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| StoreError::Backend(format!("store thread: {e}")))?;
        let handle = rx
            .recv()
            .map_err(|_| StoreError::Backend("the store thread did not start".into()))?
            .map_err(|e| StoreError::Backend(format!("store runtime: {e}")))?;
        Ok(StoreRuntime { handle, _stop: stop })
    }

    /// Runs `fut` on the store runtime and waits for it on this thread
    /// (start-up and the command line; never inside a request).
    fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| StoreError::Backend("the store runtime stopped".into()))
    }
}

/// The pool's way to connect: on the store runtime, whatever runtime asks.
struct OnStoreRuntime(tokio::runtime::Handle);

impl Connect for OnStoreRuntime {
    fn connect(
        &self,
        pg: &tokio_postgres::Config,
    ) -> futures_boxed::BoxFuture<'_, Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>> {
        let pg = pg.clone();
        let task = self.0.spawn(async move {
            let (client, connection) = pg.connect(NoTls).await?;
            // Spawned from the store runtime: the connection runs there.
            let driver = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "database connection ended");
                }
            });
            Ok((client, driver))
        });
        Box::pin(async move {
            match task.await {
                Ok(r) => r,
                // Only when the store runtime is gone: no connection then.
                Err(_) => Err(tokio_postgres::Error::__private_api_timeout()),
            }
        })
    }
}

/// `BoxFuture` as deadpool's `Connect` spells it, without the futures crate.
mod futures_boxed {
    pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
}

pub struct PgStore {
    pool: Pool,
    pg: tokio_postgres::Config,
    health: Arc<Health>,
    timeout: Duration,
    // Last: the pool's connections close with the runtime.
    rt: StoreRuntime,
}

/// A connection error, a closed connection or a server shutting down is
/// "unavailable"; everything else the database said is a backend error.
fn pg_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // 08: connection exception; 57P01-57P03: shutdown, cannot connect now.
        if code.starts_with("08") || code.starts_with("57P") || code == "53300" {
            return StoreError::Unavailable(format!("{code}: {}", db.message()));
        }
        return StoreError::Backend(format!("{code}: {}", db.message()));
    }
    if e.is_closed() || e.code().is_none() && std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()) {
        return StoreError::Unavailable(e.to_string());
    }
    StoreError::Backend(e.to_string())
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => match pg_err(e) {
            // Any failure to get a connection means no database.
            StoreError::Backend(m) => StoreError::Unavailable(m),
            other => other,
        },
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn corrupt(e: tokio_postgres::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn is_retryable(e: &tokio_postgres::Error) -> bool {
    matches!(e.code(), Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE)
}

/// Which unique rule a failed insert or update broke, if any.
fn unique_violation(e: &tokio_postgres::Error) -> Option<&str> {
    let db = e.as_db_error()?;
    (*db.code() == SqlState::UNIQUE_VIOLATION).then(|| db.constraint().unwrap_or(""))
}

/// Ids are u64 above and bigint here: the same 64 bits both ways.
fn to_db(id: u64) -> i64 {
    id as i64
}

fn from_db(id: i64) -> u64 {
    id as u64
}

fn hex(sid: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(sid)
}

fn user_note(uid: u64) -> String {
    format!("user:{uid}")
}

fn session_note(uid: u64, sid: &[u8]) -> String {
    format!("session:{uid}:{}", hex(sid))
}

fn session_of(row: &tokio_postgres::Row) -> Result<SessionRecord, StoreError> {
    let Json(mut rec): Json<SessionRecord> = row.try_get(0).map_err(corrupt)?;
    rec.last_seen = row.try_get(1).map_err(corrupt)?;
    Ok(rec)
}

const SESSION_COLS: &str = "data, last_seen";

impl PgStore {
    /// Connects, applies the migrations this binary has (refusing a newer
    /// schema) and checks that commits are durable. Blocks this thread
    /// until done or failed; call it outside async code (start-up, the
    /// command line).
    pub fn open(opts: &PgOptions) -> Result<Self, StoreError> {
        let mut pg: tokio_postgres::Config = opts
            .url
            .parse()
            .map_err(|e| StoreError::Backend(format!("the PostgreSQL URL is not valid: {e}")))?;
        if pg.get_application_name().is_none() {
            pg.application_name("riegel");
        }
        pg.connect_timeout(opts.timeout);
        // A connection whose peer vanished without a word (a cable, a
        // firewall) is ended by the kernel, so the pool drops it instead
        // of handing it out again: unacknowledged data for longer than the
        // call timeout, or silence answered by no keepalive.
        pg.tcp_user_timeout(opts.timeout);
        pg.keepalives(true);
        pg.keepalives_idle(Duration::from_secs(30));
        pg.keepalives_interval(Duration::from_secs(5));
        pg.keepalives_retries(3);
        let rt = StoreRuntime::start()?;
        let mgr = Manager::from_connect(
            pg.clone(),
            OnStoreRuntime(rt.handle.clone()),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(mgr)
            .max_size(opts.pool_size.max(1))
            .build()
            .map_err(|e| StoreError::Backend(format!("connection pool: {e}")))?;
        let store = PgStore { pool, pg, health: Arc::new(Health::default()), timeout: opts.timeout, rt };
        store.health.listening.store(true, Ordering::Release);
        let pool = store.pool.clone();
        let timeout = store.timeout;
        store.rt.run(async move {
            match tokio::time::timeout(timeout * 4, migrate(&pool)).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Unavailable("no answer from the database at start-up".into())),
            }
        })??;
        Ok(store)
    }

    /// Keeps a `LISTEN riegel` connection and tells `target` of every
    /// change made elsewhere. `target` is not trusted until the first
    /// LISTEN is established; this waits for that up to `wait` and says
    /// whether it happened (if not, it goes on trying in the background).
    pub fn listen(&self, target: Weak<dyn Invalidate>, wait: Duration) -> bool {
        if let Some(t) = target.upgrade() {
            t.set_trusted(false);
        }
        self.health.listening.store(false, Ordering::Release);
        let (tx, rx) = std::sync::mpsc::channel();
        self.rt.handle.spawn(listen::run(self.pg.clone(), target, self.health.clone(), self.timeout, tx));
        rx.recv_timeout(wait).is_ok()
    }

    /// Runs one call within the time limit and records whether it reached
    /// the database.
    async fn call<T>(&self, fut: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        // The timer belongs to the store runtime, which always runs: the
        // limit holds whichever runtime polls this call.
        let sleep = {
            let _rt = self.rt.handle.enter();
            tokio::time::sleep(self.timeout)
        };
        let r = tokio::select! {
            biased;
            r = fut => r,
            () = sleep => Err(StoreError::Unavailable(format!("no answer from the database within {:?}", self.timeout))),
        };
        match &r {
            Err(StoreError::Unavailable(why)) => self.health.set_down(why),
            _ => self.health.down.store(false, Ordering::Release),
        }
        r
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    /// One statement with parameters on a pooled connection, its statement
    /// prepared once per connection.
    async fn query(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        self.call(async {
            let c = self.client().await?;
            let stmt = c.prepare_cached(sql).await.map_err(pg_err)?;
            c.query(&stmt, params).await.map_err(pg_err)
        })
        .await
    }

    async fn execute(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<u64, StoreError> {
        self.call(async {
            let c = self.client().await?;
            let stmt = c.prepare_cached(sql).await.map_err(pg_err)?;
            c.execute(&stmt, params).await.map_err(pg_err)
        })
        .await
    }

    /// Inserts a user record under its id.
    async fn insert_in_tx(tx: &deadpool_postgres::Transaction<'_>, user: &User) -> Result<(), StoreError> {
        let email_key = user.email.as_deref().map(login_key);
        let r = tx
            .execute(
                "INSERT INTO users (id, username_key, email_key, data) VALUES ($1, $2, $3, $4)",
                &[&to_db(user.id), &login_key(&user.username), &email_key, &Json(user)],
            )
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) => Err(match unique_violation(&e) {
                Some("users_email_unique") => StoreError::Conflict { field: "e-mail", value: user.email.clone().unwrap_or_default() },
                Some(_) => StoreError::Conflict { field: "username", value: user.username.clone() },
                None => pg_err(e),
            }),
        }
    }

    async fn notify(tx: &deadpool_postgres::Transaction<'_>, notes: &[String]) -> Result<(), StoreError> {
        if notes.is_empty() {
            return Ok(());
        }
        tx.execute("SELECT pg_notify($1, n) FROM unnest($2::text[]) AS n", &[&CHANNEL, &notes]).await.map_err(pg_err)?;
        Ok(())
    }
}

/// Applies the migrations this binary has and the database lacks.
async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut c = pool.get().await.map_err(pool_err)?;
    for (version, sql) in MIGRATIONS {
        let tx = c.transaction().await.map_err(pg_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg_err)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS riegel_schema (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            .await
            .map_err(pg_err)?;
        let found: Option<i32> = tx.query_one("SELECT max(version) FROM riegel_schema", &[]).await.map_err(pg_err)?.try_get(0).map_err(corrupt)?;
        let found = found.map(|v| v.max(0) as u32);
        if let Some(found) = found.filter(|f| *f > SCHEMA_VERSION) {
            return Err(StoreError::Schema { found });
        }
        if found.is_some_and(|f| f >= *version) {
            tx.commit().await.map_err(pg_err)?;
            continue;
        }
        tx.batch_execute(sql).await.map_err(pg_err)?;
        tx.execute("INSERT INTO riegel_schema (version) VALUES ($1)", &[&(*version as i32)]).await.map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        tracing::info!(version, "database schema migrated");
    }
    let sync: String = c.query_one("SHOW synchronous_commit", &[]).await.map_err(pg_err)?.try_get(0).map_err(corrupt)?;
    if sync == "off" {
        tracing::warn!(
            "the database runs with synchronous_commit = off: a crash of the database server can lose changes riegel has acknowledged"
        );
    }
    Ok(())
}

#[async_trait]
impl Accounts for PgStore {
    async fn insert_users(&self, users: Vec<NewUser>, now: UnixTime) -> Result<Vec<User>, StoreError> {
        for u in &users {
            validate_new(u)?;
        }
        self.call(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(pg_err)?;
            let n = users.len() as i64;
            let ids = tx
                .query("SELECT nextval(pg_get_serial_sequence('users', 'id')) FROM generate_series(1, $1::bigint)", &[&n])
                .await
                .map_err(pg_err)?;
            let mut out = Vec::with_capacity(users.len());
            for (new, row) in users.iter().zip(&ids) {
                let id: i64 = row.try_get(0).map_err(corrupt)?;
                let user = new_user_record(from_db(id), new, now);
                Self::insert_in_tx(&tx, &user).await?;
                out.push(user);
            }
            tx.commit().await.map_err(pg_err)?;
            Ok(out)
        })
        .await
    }

    async fn user(&self, id: u64) -> Result<Option<User>, StoreError> {
        let rows = self.query("SELECT data FROM users WHERE id = $1", &[&to_db(id)]).await?;
        rows.first().map(|r| r.try_get::<_, Json<User>>(0).map(|j| j.0).map_err(corrupt)).transpose()
    }

    async fn find_user(&self, login: &str) -> Result<Option<User>, StoreError> {
        let key = login_key(login);
        let rows = self.query("SELECT data FROM users WHERE username_key = $1 OR email_key = $1 ORDER BY id LIMIT 1", &[&key]).await?;
        rows.first().map(|r| r.try_get::<_, Json<User>>(0).map(|j| j.0).map_err(corrupt)).transpose()
    }

    async fn users(&self) -> Result<Vec<User>, StoreError> {
        let rows = self.query("SELECT data FROM users ORDER BY id", &[]).await?;
        rows.iter().map(|r| r.try_get::<_, Json<User>>(0).map(|j| j.0).map_err(corrupt)).collect()
    }

    async fn update_user(&self, id: u64, f: &mut UserFn<'_>) -> Result<Option<User>, StoreError> {
        self.call(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(pg_err)?;
            let stmt = tx.prepare_cached("SELECT data FROM users WHERE id = $1 FOR UPDATE").await.map_err(pg_err)?;
            let Some(row) = tx.query_opt(&stmt, &[&to_db(id)]).await.map_err(pg_err)? else {
                tx.rollback().await.map_err(pg_err)?;
                return Err(StoreError::NoSuchUser);
            };
            let Json(old): Json<User> = row.try_get(0).map_err(corrupt)?;
            let mut new = old.clone();
            if let Update::Abort = f(&mut new) {
                tx.rollback().await.map_err(pg_err)?;
                return Ok(None);
            }
            new.id = old.id;
            new.username = old.username.clone();
            new.created_at = old.created_at;
            let email_key = new.email.as_deref().map(login_key);
            let stmt = tx.prepare_cached("UPDATE users SET email_key = $2, data = $3 WHERE id = $1").await.map_err(pg_err)?;
            if let Err(e) = tx.execute(&stmt, &[&to_db(id), &email_key, &Json(&new)]).await {
                return Err(match unique_violation(&e) {
                    Some(_) => StoreError::Conflict { field: "e-mail", value: new.email.clone().unwrap_or_default() },
                    None => pg_err(e),
                });
            }
            if (old.stamp, old.disabled) != (new.stamp, new.disabled) {
                Self::notify(&tx, &[user_note(id)]).await?;
            }
            tx.commit().await.map_err(pg_err)?;
            Ok(Some(new))
        })
        .await
    }

    async fn delete_user(&self, id: u64) -> Result<bool, StoreError> {
        self.call(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(pg_err)?;
            let n = tx.execute("DELETE FROM users WHERE id = $1", &[&to_db(id)]).await.map_err(pg_err)?;
            if n == 0 {
                tx.rollback().await.map_err(pg_err)?;
                return Ok(false);
            }
            tx.execute("DELETE FROM sessions WHERE uid = $1", &[&to_db(id)]).await.map_err(pg_err)?;
            tx.execute("DELETE FROM tokens WHERE uid = $1", &[&to_db(id)]).await.map_err(pg_err)?;
            Self::notify(&tx, &[user_note(id)]).await?;
            tx.commit().await.map_err(pg_err)?;
            Ok(true)
        })
        .await
    }
}

#[async_trait]
impl Sessions for PgStore {
    async fn put_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        self.execute(
            "WITH w AS (INSERT INTO sessions (uid, sid, data, expires_at, last_seen) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (uid, sid) DO UPDATE SET data = EXCLUDED.data, expires_at = EXCLUDED.expires_at, last_seen = EXCLUDED.last_seen \
             RETURNING 1) SELECT pg_notify($6, $7) FROM w",
            &[&to_db(s.uid), &s.sid, &Json(s), &s.expires_at, &s.last_seen, &CHANNEL, &session_note(s.uid, &s.sid)],
        )
        .await?;
        Ok(())
    }

    async fn session(&self, uid: u64, sid: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let rows = self.query("SELECT data, last_seen FROM sessions WHERE uid = $1 AND sid = $2", &[&to_db(uid), &sid.as_slice()]).await?;
        rows.first().map(session_of).transpose()
    }

    async fn sessions_of(&self, uid: u64) -> Result<Vec<SessionRecord>, StoreError> {
        let rows = self.query(&format!("SELECT {SESSION_COLS} FROM sessions WHERE uid = $1 ORDER BY sid"), &[&to_db(uid)]).await?;
        rows.iter().map(session_of).collect()
    }

    async fn touch_session(&self, uid: u64, sid: &SessionId, now: UnixTime) -> Result<(), StoreError> {
        // Other instances drop their copy: their idle check must see this.
        self.execute(
            "WITH t AS (UPDATE sessions SET last_seen = GREATEST(last_seen, $3) WHERE uid = $1 AND sid = $2 RETURNING 1) \
             SELECT pg_notify($4, $5) FROM t",
            &[&to_db(uid), &sid.as_slice(), &now, &CHANNEL, &session_note(uid, sid)],
        )
        .await?;
        Ok(())
    }

    async fn set_portal_jar(&self, uid: u64, sid: &SessionId, jar: Option<Vec<u8>>) -> Result<bool, StoreError> {
        let value = match jar {
            Some(j) => serde_json::Value::String(data_encoding::BASE64.encode(&j)),
            None => serde_json::Value::Null,
        };
        let n = self
            .execute(
                "WITH t AS (UPDATE sessions SET data = jsonb_set(data, '{portal_jar}', $3) WHERE uid = $1 AND sid = $2 RETURNING 1) \
                 SELECT pg_notify($4, $5) FROM t",
                &[&to_db(uid), &sid.as_slice(), &Json(value), &CHANNEL, &session_note(uid, sid)],
            )
            .await?;
        Ok(n > 0)
    }

    async fn delete_session(&self, uid: u64, sid: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let rows = self
            .query(
                "WITH d AS (DELETE FROM sessions WHERE uid = $1 AND sid = $2 RETURNING data, last_seen) \
                 SELECT d.data, d.last_seen FROM d, LATERAL (SELECT pg_notify($3, $4)) AS n",
                &[&to_db(uid), &sid.as_slice(), &CHANNEL, &session_note(uid, sid)],
            )
            .await?;
        rows.first().map(session_of).transpose()
    }

    async fn delete_sessions_of(&self, uid: u64, keep: Option<&SessionId>) -> Result<Vec<SessionRecord>, StoreError> {
        let keep = keep.map(|k| k.as_slice());
        self.call(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(pg_err)?;
            let rows = tx
                .query(
                    "DELETE FROM sessions WHERE uid = $1 AND ($2::bytea IS NULL OR sid <> $2) RETURNING data, last_seen",
                    &[&to_db(uid), &keep],
                )
                .await
                .map_err(pg_err)?;
            let out = rows.iter().map(session_of).collect::<Result<Vec<_>, _>>()?;
            let notes: Vec<String> = out.iter().map(|r| session_note(uid, &r.sid)).collect();
            Self::notify(&tx, &notes).await?;
            tx.commit().await.map_err(pg_err)?;
            Ok(out)
        })
        .await
    }

    async fn purge_sessions(&self, now: UnixTime, idle: i64) -> Result<Vec<SessionRecord>, StoreError> {
        self.call(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(pg_err)?;
            let rows = tx
                .query(
                    "DELETE FROM sessions WHERE expires_at <= $1 OR $1 - last_seen > $2 RETURNING uid, sid, data, last_seen",
                    &[&now, &idle],
                )
                .await
                .map_err(pg_err)?;
            let mut out = Vec::with_capacity(rows.len());
            let mut notes = Vec::with_capacity(rows.len());
            for row in &rows {
                let uid: i64 = row.try_get(0).map_err(corrupt)?;
                let sid: Vec<u8> = row.try_get(1).map_err(corrupt)?;
                notes.push(session_note(from_db(uid), &sid));
                // A record that does not decode is removed all the same.
                if let Ok(Json(mut rec)) = row.try_get::<_, Json<SessionRecord>>(2) {
                    rec.last_seen = row.try_get(3).map_err(corrupt)?;
                    out.push(rec);
                }
            }
            Self::notify(&tx, &notes).await?;
            tx.commit().await.map_err(pg_err)?;
            Ok(out)
        })
        .await
    }

    async fn count_sessions(&self) -> Result<usize, StoreError> {
        let rows = self.query("SELECT count(*) FROM sessions", &[]).await?;
        count(&rows)
    }
}

fn count(rows: &[tokio_postgres::Row]) -> Result<usize, StoreError> {
    let n: i64 = rows.first().ok_or_else(|| StoreError::Backend("count returned nothing".into()))?.try_get(0).map_err(corrupt)?;
    Ok(n.max(0) as usize)
}

/// What one attempt of a reservation came to.
enum Reservation {
    Done(Option<Vec<Counter>>),
    /// A counter was removed by a concurrent reservation after this one
    /// created its row: start over.
    Again,
}

impl PgStore {
    async fn reserve_once(&self, keys: &[Vec<u8>], sorted: &[Vec<u8>], f: &mut CountersFn<'_>) -> Result<Reservation, tokio_postgres::Error> {
        let mut c = match self.pool.get().await {
            Ok(c) => c,
            Err(deadpool_postgres::PoolError::Backend(e)) => return Err(e),
            Err(_) => return Err(tokio_postgres::Error::__private_api_timeout()),
        };
        let tx = c.transaction().await?;
        // Rows for the missing keys, created in key order like the locks
        // below: two reservations never wait for each other in a circle.
        let zero = Json(Counter::default());
        let stmt = tx
            .prepare_cached("INSERT INTO counters (key, data) SELECT k, $2 FROM unnest($1::bytea[]) AS k ORDER BY k ON CONFLICT (key) DO NOTHING")
            .await?;
        tx.execute(&stmt, &[&sorted, &zero]).await?;
        let stmt = tx.prepare_cached("SELECT key, data FROM counters WHERE key = ANY($1) ORDER BY key FOR UPDATE").await?;
        let rows = tx.query(&stmt, &[&sorted]).await?;
        if rows.len() != sorted.len() {
            // A row went away between the insert and the lock.
            tx.rollback().await?;
            return Ok(Reservation::Again);
        }
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let k: Vec<u8> = row.try_get(0)?;
            let Json(c): Json<Counter> = row.try_get(1)?;
            found.insert(k, c);
        }
        let mut counters: Vec<Counter> = keys.iter().map(|k| found.get(k).cloned().unwrap_or_default()).collect();
        if let Update::Abort = f(&mut counters) {
            tx.rollback().await?;
            return Ok(Reservation::Done(None));
        }
        // The last value of a key listed twice wins, as in sled.
        let mut last: std::collections::BTreeMap<&[u8], &Counter> = std::collections::BTreeMap::new();
        for (k, c) in keys.iter().zip(&counters) {
            last.insert(k.as_slice(), c);
        }
        let (mut gone, mut keep_k, mut keep_v, mut keep_b) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (k, c) in last {
            if *c == Counter::default() {
                gone.push(k.to_vec());
            } else {
                keep_k.push(k.to_vec());
                keep_v.push(Json(c.clone()));
                keep_b.push(c.banned_until);
            }
        }
        if !gone.is_empty() {
            let stmt = tx.prepare_cached("DELETE FROM counters WHERE key = ANY($1)").await?;
            tx.execute(&stmt, &[&gone]).await?;
        }
        if !keep_k.is_empty() {
            let stmt = tx
                .prepare_cached(
                    "UPDATE counters AS c SET data = v.data, banned_until = v.b \
                     FROM unnest($1::bytea[], $2::jsonb[], $3::int8[]) AS v(k, data, b) WHERE c.key = v.k",
                )
                .await?;
            tx.execute(&stmt, &[&keep_k, &keep_v, &keep_b]).await?;
        }
        tx.commit().await?;
        Ok(Reservation::Done(Some(counters)))
    }
}

#[async_trait]
impl Counters for PgStore {
    async fn counter(&self, key: &CounterKey) -> Result<Counter, StoreError> {
        let rows = self.query("SELECT data FROM counters WHERE key = $1", &[&key.to_bytes()]).await?;
        Ok(rows.first().map(|r| r.try_get::<_, Json<Counter>>(0).map(|j| j.0).map_err(corrupt)).transpose()?.unwrap_or_default())
    }

    async fn update_counters(&self, keys: &[CounterKey], f: &mut CountersFn<'_>) -> Result<Option<Vec<Counter>>, StoreError> {
        let encoded: Vec<Vec<u8>> = keys.iter().map(CounterKey::to_bytes).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        sorted.dedup();
        self.call(async {
            for _ in 0..ATTEMPTS {
                match self.reserve_once(&encoded, &sorted, f).await {
                    Ok(Reservation::Done(r)) => return Ok(r),
                    Ok(Reservation::Again) => continue,
                    Err(e) if is_retryable(&e) => continue,
                    Err(e) => return Err(pg_err(e)),
                }
            }
            Err(StoreError::Backend(format!("counter reservation gave up after {ATTEMPTS} attempts under contention")))
        })
        .await
    }

    async fn delete_counter(&self, key: &CounterKey) -> Result<bool, StoreError> {
        Ok(self.execute("DELETE FROM counters WHERE key = $1", &[&key.to_bytes()]).await? > 0)
    }

    async fn count_bans(&self, now: UnixTime) -> Result<usize, StoreError> {
        count(&self.query("SELECT count(*) FROM counters WHERE banned_until > $1", &[&now]).await?)
    }
}

#[async_trait]
impl Tokens for PgStore {
    async fn put_token(&self, token_hash: &str, kind: TokenKind, uid: u64) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO tokens (hash, kind, uid) VALUES ($1, $2, $3) ON CONFLICT (hash) DO UPDATE SET kind = EXCLUDED.kind, uid = EXCLUDED.uid",
            &[&token_hash, &(kind as i16), &to_db(uid)],
        )
        .await?;
        Ok(())
    }

    async fn token(&self, token_hash: &str, kind: TokenKind) -> Result<Option<u64>, StoreError> {
        let rows = self.query("SELECT uid FROM tokens WHERE hash = $1 AND kind = $2", &[&token_hash, &(kind as i16)]).await?;
        rows.first().map(|r| r.try_get::<_, i64>(0).map(from_db).map_err(corrupt)).transpose()
    }

    async fn delete_token(&self, token_hash: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM tokens WHERE hash = $1", &[&token_hash]).await?;
        Ok(())
    }
}

fn mail_of(row: &tokio_postgres::Row) -> Result<QueuedMail, StoreError> {
    Ok(QueuedMail {
        id: from_db(row.try_get(0).map_err(corrupt)?),
        sealed: row.try_get(1).map_err(corrupt)?,
        to_domain: row.try_get(2).map_err(corrupt)?,
        accepted_at: row.try_get(3).map_err(corrupt)?,
        attempts: row.try_get::<_, i32>(4).map_err(corrupt)?.max(0) as u32,
        next_attempt_at: row.try_get(5).map_err(corrupt)?,
    })
}

const MAIL_COLS: &str = "id, sealed, to_domain, accepted_at, attempts, next_attempt_at";

#[async_trait]
impl MailSpool for PgStore {
    async fn enqueue_mail(&self, sealed: Vec<u8>, to_domain: &str, now: UnixTime) -> Result<u64, StoreError> {
        let rows = self
            .query(
                "INSERT INTO mail (sealed, to_domain, accepted_at, attempts, next_attempt_at) VALUES ($1, $2, $3, 0, $3) RETURNING id",
                &[&sealed, &to_domain, &now],
            )
            .await?;
        let id: i64 = rows.first().ok_or_else(|| StoreError::Backend("insert returned nothing".into()))?.try_get(0).map_err(corrupt)?;
        Ok(from_db(id))
    }

    async fn claim_mails(&self, now: UnixTime, lease_until: UnixTime, limit: usize) -> Result<Vec<QueuedMail>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(
                &format!(
                    "UPDATE mail SET next_attempt_at = $2 WHERE id IN \
                     (SELECT id FROM mail WHERE next_attempt_at <= $1 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
                     RETURNING {MAIL_COLS}"
                ),
                &[&now, &lease_until, &limit],
            )
            .await?;
        let mut out = rows.iter().map(mail_of).collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|m| m.id);
        Ok(out)
    }

    async fn finish_mail(&self, id: u64) -> Result<(), StoreError> {
        self.execute("DELETE FROM mail WHERE id = $1", &[&to_db(id)]).await?;
        Ok(())
    }

    async fn retry_mail(&self, id: u64, attempts: u32, at: UnixTime) -> Result<(), StoreError> {
        let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
        self.execute("UPDATE mail SET attempts = $2, next_attempt_at = $3 WHERE id = $1", &[&to_db(id), &attempts, &at]).await?;
        Ok(())
    }

    async fn mail_queue_depth(&self) -> Result<usize, StoreError> {
        count(&self.query("SELECT count(*) FROM mail", &[]).await?)
    }
}

#[async_trait]
impl Store for PgStore {
    /// Nothing to wait for: each statement was committed, and is durable,
    /// when it returned.
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn healthy(&self) -> Result<(), StoreError> {
        self.query("SELECT 1", &[]).await?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn state(&self) -> StoreState {
        if self.health.down.load(Ordering::Acquire) {
            return StoreState::Down(self.health.why());
        }
        if !self.health.listening.load(Ordering::Acquire) {
            return StoreState::Degraded("no notifications from the database; every session check reads it".into());
        }
        StoreState::Up
    }
}

#[async_trait]
impl Dump for PgStore {
    /// One snapshot of the whole database (a repeatable-read transaction):
    /// instances may go on running while it is taken.
    async fn export(&self) -> Result<Snapshot, StoreError> {
        let mut c = self.client().await?;
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_err)?;
        let rows = tx.query("SELECT data FROM users ORDER BY id", &[]).await.map_err(pg_err)?;
        let users = rows.iter().map(|r| r.try_get::<_, Json<User>>(0).map(|j| j.0).map_err(corrupt)).collect::<Result<Vec<_>, _>>()?;
        let rows = tx.query(&format!("SELECT {SESSION_COLS} FROM sessions ORDER BY uid, sid"), &[]).await.map_err(pg_err)?;
        let sessions = rows.iter().map(session_of).collect::<Result<Vec<_>, _>>()?;
        let rows = tx.query("SELECT key, data FROM counters ORDER BY key", &[]).await.map_err(pg_err)?;
        let counters = rows
            .iter()
            .map(|r| Ok((r.try_get(0).map_err(corrupt)?, r.try_get::<_, Json<Counter>>(1).map_err(corrupt)?.0)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let rows = tx.query("SELECT hash, kind, uid FROM tokens ORDER BY hash COLLATE \"C\"", &[]).await.map_err(pg_err)?;
        let tokens = rows
            .iter()
            .map(|r| {
                let kind: i16 = r.try_get(1).map_err(corrupt)?;
                let kind = u8::try_from(kind).map_err(|_| StoreError::Corrupt(format!("token kind {kind}")))?;
                Ok((r.try_get(0).map_err(corrupt)?, kind, from_db(r.try_get(2).map_err(corrupt)?)))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let rows = tx.query(&format!("SELECT {MAIL_COLS} FROM mail ORDER BY id"), &[]).await.map_err(pg_err)?;
        let mails = rows.iter().map(mail_of).collect::<Result<Vec<_>, _>>()?;
        tx.commit().await.map_err(pg_err)?;
        Ok(Snapshot { users, sessions, counters, tokens, mails })
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        let rows = self
            .query(
                "SELECT NOT (EXISTS (SELECT 1 FROM users) OR EXISTS (SELECT 1 FROM sessions) OR EXISTS (SELECT 1 FROM counters) \
                 OR EXISTS (SELECT 1 FROM tokens) OR EXISTS (SELECT 1 FROM mail))",
                &[],
            )
            .await?;
        rows.first().ok_or_else(|| StoreError::Backend("no answer".into()))?.try_get(0).map_err(corrupt)
    }

    async fn import(&self, s: &Snapshot) -> Result<(), StoreError> {
        let mut c = self.client().await.inspect_err(|e| self.health.set_down(&e.to_string()))?;
        let tx = c.transaction().await.map_err(pg_err)?;
        // Nobody else writes while the copy runs (and a second copy waits).
        tx.batch_execute("LOCK TABLE users, sessions, counters, tokens, mail IN EXCLUSIVE MODE").await.map_err(pg_err)?;
        let busy: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM users) OR EXISTS (SELECT 1 FROM sessions) OR EXISTS (SELECT 1 FROM counters) \
                 OR EXISTS (SELECT 1 FROM tokens) OR EXISTS (SELECT 1 FROM mail)",
                &[],
            )
            .await
            .map_err(pg_err)?
            .try_get(0)
            .map_err(corrupt)?;
        if busy {
            return Err(StoreError::NotEmpty);
        }
        for u in &s.users {
            Self::insert_in_tx(&tx, u).await?;
        }
        for r in &s.sessions {
            tx.execute(
                "INSERT INTO sessions (uid, sid, data, expires_at, last_seen) VALUES ($1, $2, $3, $4, $5)",
                &[&to_db(r.uid), &r.sid, &Json(r), &r.expires_at, &r.last_seen],
            )
            .await
            .map_err(pg_err)?;
        }
        for (k, c) in &s.counters {
            tx.execute("INSERT INTO counters (key, data, banned_until) VALUES ($1, $2, $3)", &[k, &Json(c), &c.banned_until])
                .await
                .map_err(pg_err)?;
        }
        for (h, kind, uid) in &s.tokens {
            tx.execute("INSERT INTO tokens (hash, kind, uid) VALUES ($1, $2, $3)", &[h, &i16::from(*kind), &to_db(*uid)])
                .await
                .map_err(pg_err)?;
        }
        for m in &s.mails {
            let attempts = i32::try_from(m.attempts).unwrap_or(i32::MAX);
            tx.execute(
                &format!("INSERT INTO mail ({MAIL_COLS}) VALUES ($1, $2, $3, $4, $5, $6)"),
                &[&to_db(m.id), &m.sealed, &m.to_domain, &m.accepted_at, &attempts, &m.next_attempt_at],
            )
            .await
            .map_err(pg_err)?;
        }
        // Ids handed out from now on are higher than every copied one.
        tx.batch_execute(
            "SELECT setval(pg_get_serial_sequence('users', 'id'), GREATEST((SELECT max(id) FROM users), 1)); \
             SELECT setval(pg_get_serial_sequence('mail', 'id'), GREATEST((SELECT max(id) FROM mail), 1))",
        )
        .await
        .map_err(pg_err)?;
        let notes: Vec<String> = s.users.iter().map(|u| user_note(u.id)).collect();
        Self::notify(&tx, &notes).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
