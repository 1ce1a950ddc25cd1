//! Wires the parts together: config -> store, mail, pages, hashing
//! threads -> services -> proxy. Used by `riegel serve`, `riegel demo` and
//! the test harness.

use std::sync::{Arc, Weak};

mod probe;

use crate::admin;
use crate::auth::crypto::SecretBox;
use crate::auth::{OsRandom, Random};
use crate::clock::Clock;
use crate::config::Config;
use crate::hashpool::{self, HashPool};
use crate::mail::{MailQueue, Mailer, Sealer};
use crate::config::StoreConfig;
use crate::store::prelude::*;
use crate::store::{Backend, CachedStore, Invalidate, PgOptions, PgStore, SledStore, StoreError};
use crate::proxy::Live;
use crate::store::SessionRecord;
use crate::web::{Pages, Services};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("mail: {0}")]
    Mail(#[from] crate::mail::MailError),
    #[error("pages:\n{0}")]
    Pages(String),
    #[error("{0}")]
    Web(#[from] crate::web::WebError),
    #[error("password hashing: {0}")]
    Hashing(#[from] hashpool::PoolError),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ProxyError),
    #[error("audit log: {0}")]
    Audit(String),
}

/// The pages with `branding`'s overrides read from disk
/// ([`crate::assets`]); every problem is reported, one per line.
pub fn load_pages(cfg: &Config) -> Result<Pages, StartError> {
    crate::assets::load_pages(&cfg.branding, &cfg.prefix)
        .map_err(|errs| StartError::Pages(errs.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n")))
}

/// Spooled mails are sealed with their own key derived from the storage key.
struct MailSeal(SecretBox);

impl Sealer for MailSeal {
    fn seal(&self, plain: &[u8]) -> Vec<u8> {
        self.0.seal(&OsRandom, plain, b"riegel-mail")
    }
    fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        self.0.open(sealed, b"riegel-mail").ok()
    }
}

/// The mail sealer for a storage key.
pub fn mail_sealer(storage_key: &[u8]) -> Arc<dyn Sealer> {
    Arc::new(MailSeal(SecretBox::for_purpose(storage_key, "riegel/mail-spool/v1")))
}

/// How long start-up waits for the first LISTEN on PostgreSQL; without it
/// riegel starts all the same and reads every session from the database
/// until the listener is up.
const FIRST_LISTEN: std::time::Duration = std::time::Duration::from_secs(10);

/// The PostgreSQL backend's options from the config.
pub fn pg_options(pg: &crate::config::PostgresConfig) -> PgOptions {
    PgOptions { url: pg.url.clone(), pool_size: pg.pool_size, timeout: pg.timeout }
}

/// The configured backend alone, without the cache or a listener (the
/// command line, `riegel store copy`).
pub fn open_backend(cfg: &Config) -> Result<Arc<dyn Backend>, StoreError> {
    Ok(match &cfg.store {
        StoreConfig::Sled { path, .. } => Arc::new(SledStore::open(path)?),
        StoreConfig::Postgres(pg) => Arc::new(PgStore::open(&pg_options(pg))?),
    })
}

/// The configured store backend, behind the session cache. On PostgreSQL
/// the cache hears of other instances' changes (LISTEN/NOTIFY).
pub fn open_store(cfg: &Config) -> Result<Arc<CachedStore>, StartError> {
    match &cfg.store {
        StoreConfig::Sled { path, .. } => {
            let backend: Arc<dyn Store> = Arc::new(SledStore::open(path)?);
            Ok(Arc::new(CachedStore::new(backend)))
        }
        StoreConfig::Postgres(pg) => {
            let backend = Arc::new(PgStore::open(&pg_options(pg))?);
            let cached = Arc::new(CachedStore::new(backend.clone()));
            let weak: std::sync::Weak<dyn Invalidate> = Arc::downgrade(&cached) as _;
            if !backend.listen(weak, FIRST_LISTEN) {
                tracing::warn!("not yet listening for other instances' changes; every session check reads the database until then");
            }
            Ok(cached)
        }
    }
}

/// A running gateway's parts. `mail` may be injected (tests).
pub struct App {
    pub services: Arc<Services>,
    /// What the proxy serves with ([`crate::proxy::run_live`]); a reload
    /// replaces its services. The janitor and the admin socket follow it.
    pub live: Arc<Live>,
    /// What ends with the sessions a `riegel user ...` command ends, for
    /// commands this process runs (the admin socket uses the same).
    pub session_ends: Arc<dyn admin::SessionEnds>,
    /// The audit log (`log.audit_file`): [`crate::audit::Audit::reopen`]
    /// after a log rotation.
    pub audit: crate::audit::Audit,
    /// The mailer the app started (none when one was injected).
    pub mailer: Option<Arc<Mailer>>,
}

/// Everything a running gateway needs. `mail` may be injected (tests).
pub fn build(cfg: Config, clock: Arc<dyn Clock>, mail: Option<Arc<dyn MailQueue>>) -> Result<App, StartError> {
    let cfg = Arc::new(cfg);
    let pages = load_pages(&cfg)?;
    let store = open_store(&cfg)?;
    let (mail, mailer): (Arc<dyn MailQueue>, _) = match mail {
        Some(m) => (m, None),
        None => {
            let m = Arc::new(Mailer::start(&cfg.mail, store.clone(), mail_sealer(&cfg.secrets.storage_key), clock.clone())?);
            (m.clone(), Some(m))
        }
    };
    let rng: Arc<dyn Random> = Arc::new(OsRandom);
    let hashing = HashPool::start(hashpool::Settings {
        threads: cfg.password.max_concurrent_hashes,
        queue_timeout: cfg.password.hash_queue_timeout,
        on_idle: crate::auth::password::release_scratch,
    })?;
    let audit = crate::audit::Audit::open(cfg.log.audit_file.as_deref())
        .map_err(|e| StartError::Audit(format!("log.audit_file {}: {e}", cfg.log.audit_file.as_deref().unwrap_or(std::path::Path::new("")).display())))?;
    if cfg.metrics.listen.is_some() {
        crate::metrics::set_probe(Arc::new(probe::StoreProbe::start(store.clone(), clock.clone(), hashing.depth())));
    }
    let services = Arc::new(Services::new(cfg.clone(), store.clone(), clock.clone(), rng, mail, pages, hashing, audit.clone())?);
    // The portal's address resolved, its client set (portal login mode).
    let live = Arc::new(Live::new(services.clone())?);
    let session_ends: Arc<dyn admin::SessionEnds> = Arc::new(LiveEnds(Arc::downgrade(&live)));
    if let StoreConfig::Sled { admin_socket, .. } = &cfg.store {
        // With PostgreSQL the command line talks to the database itself.
        admin::serve_socket(admin_socket, store.clone(), clock.clone(), audit.clone(), session_ends.clone())?;
    }
    spawn_janitor(Arc::downgrade(&live));
    Ok(App { services, live, session_ends, audit, mailer })
}

/// The sessions the running server's admin commands end: their portal
/// sessions end through the services running now (after a reload, the new
/// configuration's).
struct LiveEnds(Weak<Live>);

#[async_trait::async_trait]
impl admin::SessionEnds for LiveEnds {
    async fn ended(&self, recs: &[SessionRecord]) -> (usize, usize) {
        let Some(live) = self.0.upgrade() else {
            // The server is stopping: no portal client any more.
            let n = recs.iter().filter(|r| r.portal_jar.is_some()).count();
            return (0, n);
        };
        let services = live.services();
        drop(live);
        let e = crate::web::portal::end_all_patiently(&services, recs).await;
        (e.ended, e.failed)
    }
}

/// The sessions a command that opened the store itself ends: in portal
/// login mode their portal sessions end through a client of its own,
/// made when a command first ends a session that has one (so `list` or
/// `show` never needs the portal's address).
struct CommandEnds {
    cfg: Arc<Config>,
    jar_box: SecretBox,
    client: std::sync::OnceLock<Option<Arc<dyn crate::web::portal::PortalClient>>>,
}

#[async_trait::async_trait]
impl admin::SessionEnds for CommandEnds {
    async fn ended(&self, recs: &[SessionRecord]) -> (usize, usize) {
        let Some(p) = self.cfg.portal_login.as_ref() else { return (0, 0) };
        let with_jar = recs.iter().filter(|r| r.portal_jar.is_some()).count();
        if with_jar == 0 {
            return (0, 0);
        }
        let client = self.client.get_or_init(|| match crate::proxy::portal_client(&self.cfg) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "no client to the portal (upstream.url)");
                None
            }
        });
        let Some(client) = client else { return (0, with_jar) };
        let e = crate::web::portal::Logouts::new(p, &self.jar_box, client.as_ref()).patiently(recs).await;
        (e.ended, e.failed)
    }
}

/// What ends with the sessions of a `riegel user ...` command that opens
/// the store itself (no server holds it, or the store is PostgreSQL).
pub fn command_session_ends(cfg: &Arc<Config>) -> Arc<dyn admin::SessionEnds> {
    if cfg.portal_login.is_none() {
        return Arc::new(admin::NothingElse);
    }
    Arc::new(CommandEnds { cfg: cfg.clone(), jar_box: crate::web::portal::jar_box(&cfg.secrets.storage_key), client: std::sync::OnceLock::new() })
}

/// Removes dead session records every few minutes, with the services
/// running then (a reload's new ones), until the server is gone.
/// In portal login mode the portal's sessions of idle and expired ones are
/// ended too (`portal_login.logout_url`).
fn spawn_janitor(live: Weak<Live>) {
    let _ = std::thread::Builder::new().name("riegel-janitor".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "session clean-up: no runtime");
                return;
            }
        };
        loop {
            std::thread::sleep(std::time::Duration::from_secs(300));
            let Some(live) = live.upgrade() else { return };
            let services = live.services();
            drop(live);
            rt.block_on(purge_once(&services));
        }
    });
}

/// One round of the janitor with `services` (the running ones: their
/// session lifetimes and portal settings): dead sessions removed, their
/// portal sessions ended. How many were removed.
pub async fn purge_once(services: &Services) -> usize {
    let idle = services.cfg.session.idle_timeout.as_secs() as i64;
    match services.store.purge_sessions(services.clock.now(), idle).await {
        Ok(v) if v.is_empty() => 0,
        Ok(v) => {
            tracing::debug!(removed = v.len(), "expired sessions removed");
            // Gone for good before the portal hears of it.
            if let Err(e) = services.store.flush().await {
                tracing::warn!(error = %e, "session clean-up: flush failed");
            }
            crate::web::portal::end_all_patiently(services, &v).await;
            v.len()
        }
        Err(e) => {
            tracing::warn!(error = %e, "session clean-up failed");
            0
        }
    }
}
