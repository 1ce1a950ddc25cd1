//! The PostgreSQL backend against a real server: the conformance suite,
//! the runtime rules, migrations, cross-instance invalidation and failing
//! closed. Each test makes its own database and drops it at the end.
//!
//! The server: `RIEGEL_TEST_POSTGRES_URL` (a role that may create
//! databases), by default `postgres://riegel_test:riegel@127.0.0.1:5432/postgres`.
//! Without a server the tests skip with instructions, unless `CI` is set.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::*;
use crate::store::{CachedStore, SledStore, Stage};

const DEFAULT_URL: &str = "postgres://riegel_test:riegel@127.0.0.1:5432/postgres";

/// How a developer gets a server for these tests.
pub(crate) const HOW_TO_START: &str = "start one with:
    apt-get install postgresql && pg_ctlcluster 15 main start
    runuser -u postgres -- psql -c \"create role riegel_test login createdb password 'riegel'\"
  or point RIEGEL_TEST_POSTGRES_URL at a role that may create databases";

fn admin_url() -> String {
    std::env::var("RIEGEL_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_string())
}

/// Runs statements on a connection of its own, on a runtime of its own.
fn admin(url: &str, sql: &str) -> Result<(), String> {
    let url = url.to_string();
    let sql = sql.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async {
            let mut cfg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| e.to_string())?;
            cfg.connect_timeout(Duration::from_secs(3));
            let (client, conn) = cfg.connect(NoTls).await.map_err(|e| e.to_string())?;
            let driver = tokio::spawn(conn);
            // One statement at a time: CREATE DATABASE refuses a transaction.
            let mut r = Ok(());
            for stmt in sql.split(';').filter(|s| !s.trim().is_empty()) {
                if let Err(e) = client.batch_execute(stmt).await {
                    r = Err(e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string()));
                    break;
                }
            }
            drop(client);
            let _ = driver.await;
            r
        })
    })
    .join()
    .map_err(|_| "admin thread panicked".to_string())?
}

/// A fresh database, dropped when this is.
pub(crate) struct TestDb {
    pub url: String,
    name: String,
}

impl TestDb {
    /// `None` (after saying why and how to start a server) when no server
    /// answers, unless `CI` is set: then the test fails.
    pub(crate) fn new(tag: &str) -> Option<TestDb> {
        static N: AtomicU32 = AtomicU32::new(0);
        let admin_url = admin_url();
        let name = format!("riegel_u_{}_{}_{tag}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        if let Err(e) = admin(&admin_url, &format!("DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}")) {
            let msg = format!("no PostgreSQL server for the tests ({e}); {HOW_TO_START}");
            if std::env::var_os("CI").is_some() {
                panic!("{msg}");
            }
            eprintln!("SKIPPED (PostgreSQL): {msg}");
            return None;
        }
        let mut url = url::Url::parse(&admin_url).expect("RIEGEL_TEST_POSTGRES_URL is a URL");
        url.set_path(&format!("/{name}"));
        Some(TestDb { url: url.to_string(), name })
    }

    pub(crate) fn opts(&self) -> PgOptions {
        PgOptions { timeout: Duration::from_secs(2), ..PgOptions::new(&self.url) }
    }

    pub(crate) fn sql(&self, sql: &str) {
        admin(&self.url, sql).expect("sql");
    }

    /// The URL with another host and port (through a [`Cable`]).
    fn via(&self, port: u16) -> String {
        let mut url = url::Url::parse(&self.url).expect("url");
        url.set_port(Some(port)).expect("port");
        url.to_string()
    }

    fn server_port(&self) -> u16 {
        url::Url::parse(&self.url).expect("url").port().unwrap_or(5432)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = admin(&admin_url(), &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

fn open(db: &TestDb) -> Arc<PgStore> {
    Arc::new(PgStore::open(&db.opts()).expect("open"))
}

/// A backend with a listening cache in front, as `app::open_store` wires it.
fn instance(opts: &PgOptions) -> (Arc<PgStore>, Arc<CachedStore>) {
    let pg = Arc::new(PgStore::open(opts).expect("open"));
    let cached = Arc::new(CachedStore::new(pg.clone()));
    let weak: Weak<CachedStore> = Arc::downgrade(&cached);
    assert!(pg.listen(weak, Duration::from_secs(10)), "LISTEN was not established");
    (pg, cached)
}

fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn new(name: &str) -> NewUser {
    NewUser { username: name.into(), email: None, display_name: name.into(), password_hash: None }
}

fn rec(uid: u64, sid: u8, stamp: u64) -> SessionRecord {
    SessionRecord {
        uid,
        sid: vec![sid; 16],
        stage: Stage::Full,
        created_at: 1,
        last_seen: 1,
        expires_at: i64::MAX,
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

/// A loopback TCP forwarder to the server that can be cut (every
/// connection closed, new ones refused) and mended: a database that
/// becomes unreachable and comes back.
struct Cable {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Cable {
    fn to(server_port: u16) -> Cable {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c2, o2) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                if c2.load(Ordering::SeqCst) {
                    drop(conn);
                    continue;
                }
                let Ok(up) = TcpStream::connect(("127.0.0.1", server_port)) else { continue };
                for s in [&conn, &up] {
                    if let Ok(s) = s.try_clone() {
                        o2.lock().expect("open").push(s);
                    }
                }
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                };
                if let (Ok(c), Ok(u)) = (conn.try_clone(), up.try_clone()) {
                    pipe(c, up);
                    pipe(u, conn);
                }
            }
        });
        Cable { port, cut, open }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().expect("open").drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn mend(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    let Some(db) = TestDb::new("conf") else { return };
    let s = tokio::task::spawn_blocking({
        let o = db.opts();
        move || PgStore::open(&o).expect("open")
    })
    .await
    .expect("open task");
    crate::store::conformance::run_all(Arc::new(s)).await;
    // Two instances: two backends (two pools) on one database.
    let Some(db2) = TestDb::new("two") else { return };
    let o = db2.opts();
    let (a, b) = tokio::task::spawn_blocking(move || (PgStore::open(&o).expect("open"), PgStore::open(&o).expect("open")))
        .await
        .expect("open task");
    crate::store::conformance::run_two(Arc::new(a), Arc::new(b)).await;
}

fn tmp_sled(tag: &str) -> (Arc<SledStore>, std::path::PathBuf) {
    let p = std::env::temp_dir().join(format!("riegel-pgcopy-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    (Arc::new(SledStore::open(&p).expect("sled")), p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_conformance_sled_to_postgres_and_back() {
    let Some(db) = TestDb::new("copy1") else { return };
    let Some(db2) = TestDb::new("copy2") else { return };
    let (o1, o2) = (db.opts(), db2.opts());
    let (p1, p2) = tokio::task::spawn_blocking(move || (open_opts(&o1), open_opts(&o2))).await.expect("open");
    let (s1, d1) = tmp_sled("a");
    crate::store::conformance::run_copy(s1, p1).await;
    let (s2, d2) = tmp_sled("b");
    crate::store::conformance::run_copy(p2.clone(), s2).await;
    let _ = std::fs::remove_dir_all(d1);
    let _ = std::fs::remove_dir_all(d2);
    // PostgreSQL to PostgreSQL, and a full copy in one transaction: a
    // failing import leaves the target empty.
    let Some(db3) = TestDb::new("copy3") else { return };
    let o3 = db3.opts();
    let p3 = tokio::task::spawn_blocking(move || open_opts(&o3)).await.expect("open");
    let mut snap = p2.export().await.expect("export");
    let twin = snap.users[0].clone();
    snap.users.push(User { id: twin.id + 100, ..twin });
    assert!(matches!(p3.import(&snap).await, Err(StoreError::Conflict { .. })));
    assert!(p3.is_empty().await.expect("empty"));
}

fn open_opts(o: &PgOptions) -> Arc<PgStore> {
    Arc::new(PgStore::open(o).expect("open"))
}

#[test]
fn works_from_every_runtime_and_after_the_first_one_is_gone() {
    let Some(db) = TestDb::new("rt") else { return };
    let store = open(&db);
    // First used from a current-thread runtime that is then dropped.
    let id = {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let id = rt.block_on(store.insert_user(new("rt"), 1)).expect("insert").id;
        rt.block_on(store.put_session(&rec(id, 1, 0))).expect("session");
        id
    };
    // A multi-thread runtime on another thread keeps querying...
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let s = store.clone();
                let found = rt.block_on(async move { tokio::spawn(async move { s.find_user("rt").await }).await }).expect("task");
                assert_eq!(found.expect("find").map(|u| u.id), Some(id));
                n += 1;
            }
            n
        })
    };
    // ...while one that is only driven now and then (like the tests'
    // `block_on`) sleeps between its calls.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    for i in 0..5 {
        let touched = rt.block_on(store.touch_session(id, &[1; 16], 10 + i));
        touched.expect("touch");
        assert_eq!(rt.block_on(store.session(id, &[1; 16])).expect("get").map(|r| r.last_seen), Some(10 + i));
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    assert!(busy.join().expect("busy thread") > 0);
    // And a runtime without a timer of its own: the call's time limit is
    // the store runtime's.
    let bare = tokio::runtime::Builder::new_current_thread().build().expect("rt");
    assert_eq!(bare.block_on(store.user(id)).expect("user").map(|u| u.id), Some(id));
}

#[test]
fn migrations_are_idempotent_concurrent_and_refuse_a_newer_schema() {
    let Some(db) = TestDb::new("schema") else { return };
    // Two instances starting at once: both come up, the schema once.
    let (o1, o2) = (db.opts(), db.opts());
    let a = std::thread::spawn(move || PgStore::open(&o1).map(|_| ()));
    let b = std::thread::spawn(move || PgStore::open(&o2).map(|_| ()));
    a.join().expect("a").expect("open a");
    b.join().expect("b").expect("open b");
    drop(open(&db));
    db.sql("INSERT INTO riegel_schema (version) VALUES (99)");
    match PgStore::open(&db.opts()) {
        Err(e @ StoreError::Schema { found: 99 }) => assert!(e.to_string().contains("99"), "{e}"),
        Err(e) => panic!("expected a schema error, got {e}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
    assert_eq!(MIGRATIONS.last().map(|m| m.0), Some(SCHEMA_VERSION));
}

#[test]
fn a_bad_url_or_no_server_is_a_clear_error_without_the_password() {
    let e = PgStore::open(&PgOptions::new("mysql://x")).err().expect("refused");
    assert!(e.to_string().contains("not valid"), "{e}");
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let url = format!("postgres://riegel:s3cret-pw@127.0.0.1:{closed}/x");
    let e = PgStore::open(&PgOptions { timeout: Duration::from_secs(1), ..PgOptions::new(url) }).err().expect("refused");
    assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    assert!(!format!("{:?}", PgOptions::new("postgres://u:s3cret@h/d")).contains("s3cret"));
}

/// Reads the session on `b` until it is cached there (the notification of
/// its own writing may arrive after the first read and drop it again).
fn cached_on(rt: &tokio::runtime::Runtime, b: &CachedStore, uid: u64, sid: u8) {
    until("the session is cached", Duration::from_secs(2), || {
        rt.block_on(b.valid_session(uid, &[sid; 16])).expect("b").is_some() && b.cached_session(uid, &[sid; 16]).is_some()
    });
}

#[test]
fn a_change_on_one_instance_reaches_the_other_within_a_second() {
    let Some(db) = TestDb::new("inval") else { return };
    let (_, a) = instance(&db.opts());
    let (bpg, b) = instance(&db.opts());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let uid = rt.block_on(a.insert_user(new("nora"), 1)).expect("insert").id;
    // Logout on A.
    rt.block_on(a.put_session(&rec(uid, 1, 0))).expect("put");
    cached_on(&rt, &b, uid, 1);
    rt.block_on(a.delete_session(uid, &[1; 16])).expect("logout");
    until("logout reaches B", Duration::from_secs(1), || b.cached_session(uid, &[1; 16]).is_none());
    assert!(rt.block_on(b.valid_session(uid, &[1; 16])).expect("b").is_none());
    // Revocation (stamp) and disabling on A.
    rt.block_on(a.put_session(&rec(uid, 2, 0))).expect("put");
    cached_on(&rt, &b, uid, 2);
    rt.block_on(a.update_user(uid, &mut |u| {
        u.revoke_sessions();
        Update::Commit
    }))
    .expect("revoke");
    until("revocation reaches B", Duration::from_secs(1), || b.cached_session(uid, &[2; 16]).is_none());
    assert!(rt.block_on(b.valid_session(uid, &[2; 16])).expect("b").is_none());
    rt.block_on(a.put_session(&rec(uid, 3, 1))).expect("put");
    cached_on(&rt, &b, uid, 3);
    rt.block_on(a.update_user(uid, &mut |u| {
        u.disabled = true;
        Update::Commit
    }))
    .expect("disable");
    until("disabling reaches B", Duration::from_secs(1), || b.cached_session(uid, &[3; 16]).is_none());
    assert!(rt.block_on(b.valid_session(uid, &[3; 16])).expect("b").is_none());
    rt.block_on(a.update_user(uid, &mut |u| {
        u.disabled = false;
        Update::Commit
    }))
    .expect("enable");
    // B's LISTEN connection ended by the server: B stops trusting its
    // cache at once and trusts it again once it listens again.
    // (The enabling's own notification may still be on its way to B.)
    until("B caches the session", Duration::from_secs(1), || {
        rt.block_on(b.valid_session(uid, &[3; 16])).expect("b").is_some() && b.cached_len() == 1
    });
    let pid = bpg.health.listener_pid.load(Ordering::Acquire);
    assert!(pid > 0);
    db.sql(&format!("SELECT pg_terminate_backend({pid})"));
    until("B untrusted", Duration::from_secs(2), || b.cached_session(uid, &[3; 16]).is_none());
    until("B listens again", Duration::from_secs(10), || {
        bpg.state() == StoreState::Up && bpg.health.listener_pid.load(Ordering::Acquire) != pid
    });
    assert!(rt.block_on(b.valid_session(uid, &[3; 16])).expect("b").is_some());
    until("B caches again", Duration::from_secs(2), || b.cached_session(uid, &[3; 16]).is_some());
}

#[test]
fn an_unreachable_database_fails_closed_and_is_reconnected_by_itself() {
    let Some(db) = TestDb::new("cable") else { return };
    let (_, a) = instance(&db.opts());
    let cable = Cable::to(db.server_port());
    let b_opts = PgOptions { url: db.via(cable.port), ..db.opts() };
    let (bpg, b) = instance(&b_opts);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let uid = rt.block_on(a.insert_user(new("olga"), 1)).expect("insert").id;
    rt.block_on(a.put_session(&rec(uid, 1, 0))).expect("put");
    rt.block_on(a.put_session(&rec(uid, 2, 0))).expect("put");
    assert!(rt.block_on(b.valid_session(uid, &[1; 16])).expect("b").is_some());
    assert!(rt.block_on(b.valid_session(uid, &[2; 16])).expect("b").is_some());
    assert_eq!(bpg.state(), StoreState::Up);
    cable.cut();
    // Untrusted at once: nothing cached passes, and the database cannot
    // be asked, so the check fails rather than says yes.
    until("B untrusted", Duration::from_secs(5), || b.cached_session(uid, &[1; 16]).is_none());
    assert!(matches!(rt.block_on(b.valid_session(uid, &[1; 16])), Err(StoreError::Unavailable(_))));
    assert!(matches!(rt.block_on(b.insert_user(new("never"), 1)), Err(StoreError::Unavailable(_))));
    assert!(matches!(rt.block_on(b.healthy()), Err(StoreError::Unavailable(_))));
    assert!(matches!(bpg.state(), StoreState::Down(_)), "{:?}", bpg.state());
    // Nothing was stored that was refused.
    assert!(rt.block_on(a.find_user("never")).expect("find").is_none());
    // A revocation while B cannot hear of it.
    rt.block_on(a.delete_session(uid, &[2; 16])).expect("logout");
    cable.mend();
    until("B listens again", Duration::from_secs(15), || {
        matches!(bpg.state(), StoreState::Up) || rt.block_on(b.healthy()).is_ok() && bpg.state() == StoreState::Up
    });
    assert!(rt.block_on(b.valid_session(uid, &[2; 16])).expect("b").is_none(), "a session ended while B was cut off came back");
    assert!(rt.block_on(b.valid_session(uid, &[1; 16])).expect("b").is_some());
    rt.block_on(b.insert_user(new("later"), 1)).expect("insert after reconnecting");
}
