//! Wires the parts together: config -> store, mail, pages, hashing
//! threads -> services -> proxy. Used by `riegel serve`, `riegel demo` and
//! the test harness.

use std::sync::Arc;

use crate::admin;
use crate::auth::{OsRandom, Random};
use crate::clock::Clock;
use crate::config::Config;
use crate::hashpool::{self, HashPool};
use crate::mail::{MailQueue, Mailer};
use crate::store::{CachedStore, SledStore, Store};
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
}

/// The pages with `branding`'s overrides read from disk
/// ([`crate::assets`]); every problem is reported, one per line.
pub fn load_pages(cfg: &Config) -> Result<Pages, StartError> {
    crate::assets::load_pages(&cfg.branding, &cfg.prefix)
        .map_err(|errs| StartError::Pages(errs.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n")))
}

/// Everything a running gateway needs. `mail` may be injected (tests).
pub fn build(
    cfg: Config,
    clock: Arc<dyn Clock>,
    mail: Option<Arc<dyn MailQueue>>,
) -> Result<Arc<Services>, StartError> {
    let cfg = Arc::new(cfg);
    let pages = load_pages(&cfg)?;
    let store: Arc<dyn Store> = Arc::new(CachedStore::new(SledStore::open(&cfg.store_path)?));
    let mail: Arc<dyn MailQueue> = match mail {
        Some(m) => m,
        None => Arc::new(Mailer::start(&cfg.mail)?),
    };
    let rng: Arc<dyn Random> = Arc::new(OsRandom);
    let hashing = HashPool::start(hashpool::Settings {
        threads: cfg.password.max_concurrent_hashes,
        queue_timeout: cfg.password.hash_queue_timeout,
        on_idle: crate::auth::password::release_scratch,
    })?;
    let services = Services::new(cfg.clone(), store.clone(), clock.clone(), rng, mail, pages, hashing)?;
    admin::serve_socket(&cfg.admin_socket, store.clone(), clock.clone())?;
    spawn_janitor(store, clock, cfg.session.idle_timeout.as_secs() as i64);
    Ok(Arc::new(services))
}

/// Removes dead session records every few minutes.
fn spawn_janitor(store: Arc<dyn Store>, clock: Arc<dyn Clock>, idle: i64) {
    let _ = std::thread::Builder::new().name("riegel-janitor".into()).spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_secs(300));
        match store.purge_sessions(clock.now(), idle) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "expired sessions removed"),
            Err(e) => tracing::warn!(error = %e, "session clean-up failed"),
        }
    });
}
