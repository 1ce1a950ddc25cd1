//! Wires the parts together: config -> store, mail, pages, hashing
//! threads -> services -> proxy. Used by `riegel serve`, `riegel demo` and
//! the test harness.

use std::sync::Arc;

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
    let services = Services::new(cfg.clone(), store.clone(), clock.clone(), rng, mail, pages, hashing, audit.clone())?;
    if let StoreConfig::Sled { admin_socket, .. } = &cfg.store {
        // With PostgreSQL the command line talks to the database itself.
        admin::serve_socket(admin_socket, store.clone(), clock.clone(), audit.clone())?;
    }
    let services = Arc::new(services);
    spawn_janitor(store, clock, cfg.session.idle_timeout.as_secs() as i64, services.clone());
    Ok(App { services, audit, mailer })
}

/// Removes dead session records every few minutes.
/// In portal login mode the portal's sessions of idle and expired ones are
/// ended too (`portal_login.logout_url`).
fn spawn_janitor(store: Arc<CachedStore>, clock: Arc<dyn Clock>, idle: i64, services: Arc<Services>) {
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
            match rt.block_on(store.purge_sessions(clock.now(), idle)) {
                Ok(v) if v.is_empty() => {}
                Ok(v) => {
                    tracing::debug!(removed = v.len(), "expired sessions removed");
                    rt.block_on(crate::web::portal::end_all(&services, &v));
                }
                Err(e) => tracing::warn!(error = %e, "session clean-up failed"),
            }
        }
    });
}
