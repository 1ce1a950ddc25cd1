//! Wires the parts together: config -> store, mail, pages, hashing
//! threads -> services -> proxy. Used by `riegel serve`, `riegel demo` and
//! the test harness.

use std::sync::Arc;

use crate::admin;
use crate::auth::crypto::SecretBox;
use crate::auth::{OsRandom, Random};
use crate::clock::Clock;
use crate::config::Config;
use crate::hashpool::{self, HashPool};
use crate::mail::{MailQueue, Mailer, Sealer};
use crate::store::prelude::*;
use crate::store::{CachedStore, SledStore};
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

/// The configured store backend, behind the session cache.
pub fn open_store(cfg: &Config) -> Result<Arc<CachedStore>, StartError> {
    let backend: Arc<dyn Store> = Arc::new(SledStore::open(&cfg.store_path)?);
    Ok(Arc::new(CachedStore::new(backend)))
}

/// A running gateway's parts. `mail` may be injected (tests).
pub struct App {
    pub services: Arc<Services>,
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
    let services = Services::new(cfg.clone(), store.clone(), clock.clone(), rng, mail, pages, hashing)?;
    admin::serve_socket(&cfg.admin_socket, store.clone(), clock.clone())?;
    spawn_janitor(store, clock, cfg.session.idle_timeout.as_secs() as i64);
    Ok(App { services: Arc::new(services), mailer })
}

/// Removes dead session records every few minutes.
fn spawn_janitor(store: Arc<CachedStore>, clock: Arc<dyn Clock>, idle: i64) {
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
                Ok(v) => tracing::debug!(removed = v.len(), "expired sessions removed"),
                Err(e) => tracing::warn!(error = %e, "session clean-up failed"),
            }
        }
    });
}
