//! SIGHUP: riegel reads its configuration file again. A valid file takes
//! effect for new requests (branding, texts, pages, public paths,
//! regulation, session lifetimes and keys, mail, the portal's address, the
//! TLS certificate) without dropping a connection; requests under way end
//! with the configuration they started with. An invalid one changes
//! nothing: every problem is logged with its key path. Both are counted in
//! `riegel_config_reloads_total{result="success"|"failure"}`.
//!
//! Some settings are fixed while the process runs (the listen address, TLS
//! on or off, the store, the storage key, the threads, the hashing
//! threads, logging): a reload that changes one logs it as "needs a
//! restart" and keeps the running value, and takes the rest.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use crate::app;
use crate::config::{Config, StoreConfig};
use crate::mail::{MailQueue, Mailer};
use crate::proxy::Live;

/// `riegel_config_reloads_total`, registered in the default registry
/// (none only if the crate refused the constant name).
fn counter() -> Option<&'static prometheus::IntCounterVec> {
    static C: OnceLock<Option<prometheus::IntCounterVec>> = OnceLock::new();
    C.get_or_init(|| {
        let opts = prometheus::Opts::new("riegel_config_reloads_total", "Configuration reloads (SIGHUP), by result.");
        let c = prometheus::IntCounterVec::new(opts, &["result"]).ok()?;
        if let Err(e) = prometheus::default_registry().register(Box::new(c.clone())) {
            tracing::warn!(error = %e, "riegel_config_reloads_total not registered");
        }
        // Both series exist from the start, at 0.
        c.with_label_values(&["success"]);
        c.with_label_values(&["failure"]);
        Some(c)
    })
    .as_ref()
}

/// How one reload ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Result {
    Success,
    Failure,
}

/// What a reload works with: the file, what the proxy serves, and the
/// mailer this process runs.
pub struct Reloader {
    path: PathBuf,
    live: Arc<Live>,
    /// The mailer started by `app::build` (none when one was injected:
    /// then mail settings are not reloaded).
    mailer: Mutex<Option<Arc<Mailer>>>,
    /// One reload at a time.
    busy: Mutex<()>,
}

/// The settings a running process keeps, by key path, with whether `new`
/// differs from `running` there; `new` gets the running value.
fn keep_fixed(running: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    let mut keep = |key: &'static str, differs: bool| {
        if differs {
            kept.push(key);
        }
    };
    keep("listen", running.listen != new.listen);
    new.listen = running.listen;
    keep("tls", running.tls.is_some() != new.tls.is_some());
    if running.tls.is_some() != new.tls.is_some() {
        new.tls = running.tls.clone();
    }
    keep("store", !same_store(&running.store, &new.store));
    new.store = running.store.clone();
    keep("secrets.storage_key_file", running.secrets.storage_key != new.secrets.storage_key);
    new.secrets.storage_key = running.secrets.storage_key.clone();
    let (rs, ns) = (&running.server, &mut new.server);
    keep("server.threads", rs.threads != ns.threads);
    keep("server.work_stealing", rs.work_stealing != ns.work_stealing);
    keep("server.adaptive_scheduling", rs.adaptive_scheduling != ns.adaptive_scheduling);
    (ns.threads, ns.work_stealing, ns.adaptive_scheduling) = (rs.threads, rs.work_stealing, rs.adaptive_scheduling);
    let (rp, np) = (&running.password, &mut new.password);
    keep("password.max_concurrent_hashes", rp.max_concurrent_hashes != np.max_concurrent_hashes);
    keep("password.hash_queue_timeout", rp.hash_queue_timeout != np.hash_queue_timeout);
    (np.max_concurrent_hashes, np.hash_queue_timeout) = (rp.max_concurrent_hashes, rp.hash_queue_timeout);
    keep("log.level", running.log.level != new.log.level);
    keep("log.json", running.log.json != new.log.json);
    keep("log.audit_file", running.log.audit_file != new.log.audit_file);
    new.log = running.log.clone();
    // The metrics listener is bound once, at start.
    keep("metrics.listen", running.metrics.listen != new.metrics.listen);
    new.metrics = running.metrics.clone();
    kept
}

/// A reload that switches `first_factor` is refused whole: it would
/// strand the sealed portal sessions of running sessions (no logout_url
/// to end them) or leave sessions without the portal's cookies, and the
/// rest of the file was checked against the other mode. The
/// `portal_login` settings themselves reload.
fn switches_first_factor(running: &Config, new: &Config) -> Option<(String, String)> {
    (running.first_factor != new.first_factor).then(|| {
        ("first_factor".to_string(), format!("switching between local and portal needs a restart (running: {:?})", running.first_factor).to_lowercase())
    })
}

fn same_store(a: &StoreConfig, b: &StoreConfig) -> bool {
    match (a, b) {
        (StoreConfig::Sled { path: p, admin_socket: s }, StoreConfig::Sled { path: q, admin_socket: t }) => p == q && s == t,
        (StoreConfig::Postgres(x), StoreConfig::Postgres(y)) => x.url == y.url && x.pool_size == y.pool_size && x.timeout == y.timeout,
        _ => false,
    }
}

/// Whether two mail configurations differ (compared whole, the SMTP
/// password included; never logged).
fn mail_changed(a: &Config, b: &Config) -> bool {
    // `Debug` hides the SMTP password, so it is compared on its own.
    let password = |c: &Config| match &c.mail.transport {
        crate::config::MailTransport::Smtp(s) => s.password.clone(),
        crate::config::MailTransport::Outbox(_) => None,
    };
    format!("{:?}", a.mail) != format!("{:?}", b.mail) || password(a) != password(b)
}

impl Reloader {
    pub fn new(path: PathBuf, live: Arc<Live>, mailer: Option<Arc<Mailer>>) -> Self {
        // The counter's series exist from the start.
        let _ = counter();
        Self { path, live, mailer: Mutex::new(mailer), busy: Mutex::new(()) }
    }

    /// The mailer running now (to drain it at shutdown).
    pub fn mailer(&self) -> Option<Arc<Mailer>> {
        self.mailer.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Reads, checks and, when valid, applies the configuration file;
    /// logs and counts the result.
    pub fn reload(&self) -> Result {
        let _one = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        let file = self.path.display().to_string();
        // The audit file is opened by its path again (after a rotation that
        // moved it), whatever the new configuration says.
        if let Err(e) = self.live.services().audit_log.reopen() {
            tracing::error!(error = %e, "audit log: reopening after SIGHUP failed; writing on to the old file");
        }
        let result = match self.try_reload() {
            Ok(kept) => {
                for key in &kept {
                    tracing::warn!(key, file = %file, "configuration reload: this setting needs a restart; the running value stays");
                }
                tracing::info!(file = %file, "configuration reloaded");
                Result::Success
            }
            Err(problems) => {
                for (key, problem) in &problems {
                    tracing::error!(key = %key, problem = %problem, file = %file, "configuration reload refused");
                }
                tracing::error!(file = %file, problems = problems.len(), "configuration reload refused; the running configuration stays");
                Result::Failure
            }
        };
        if let Some(c) = counter() {
            c.with_label_values(&[match result {
                Result::Success => "success",
                Result::Failure => "failure",
            }])
            .inc();
        }
        result
    }

    /// The reload itself: the settings that need a restart, or every
    /// problem as (key path, problem).
    fn try_reload(&self) -> std::result::Result<Vec<&'static str>, Vec<(String, String)>> {
        let mut cfg = Config::load(&self.path).map_err(|errs| errs.0.into_iter().map(|e| (e.path, e.message)).collect::<Vec<_>>())?;
        let running = self.live.services();
        if let Some(problem) = switches_first_factor(&running.cfg, &cfg) {
            return Err(vec![problem]);
        }
        let kept = keep_fixed(&running.cfg, &mut cfg);
        for w in &cfg.warnings {
            tracing::warn!(warning = %w, "configuration");
        }
        let pages = app::load_pages(&cfg).map_err(|e| vec![("branding.pages_dir".to_string(), e.to_string())])?;
        let current = self.mailer();
        let fresh = match &current {
            Some(_) if mail_changed(&running.cfg, &cfg) => Some(Arc::new(
                Mailer::start(&cfg.mail, running.store.clone(), app::mail_sealer(&cfg.secrets.storage_key), running.clock.clone())
                    .map_err(|e| vec![("mail".to_string(), e.to_string())])?,
            )),
            _ => None,
        };
        let mail: Arc<dyn MailQueue> = match &fresh {
            Some(m) => m.clone(),
            None => running.mail.clone(),
        };
        let services = running.reconfigured(Arc::new(cfg), pages, mail).map_err(|e| vec![(String::new(), e.to_string())])?;
        let replaced = self.live.replace(Arc::new(services));
        if let Err(e) = replaced {
            if let Some(m) = fresh {
                m.stop();
            }
            let key = match e {
                crate::proxy::ProxyError::Resolve(..) => "upstream.url",
                crate::proxy::ProxyError::Tls(_) => "tls",
            };
            return Err(vec![(key.to_string(), e.to_string())]);
        }
        if let Some(m) = fresh {
            *self.mailer.lock().unwrap_or_else(PoisonError::into_inner) = Some(m);
            if let Some(old) = current {
                // New requests send through the new mailer; the old one
                // ends after the deliveries it has started (the spool is
                // shared, so nothing waiting is lost).
                old.stop();
                let until = std::time::Instant::now() + Duration::from_secs(60);
                while !old.finished() && std::time::Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        Ok(kept)
    }
}

/// Reloads on every SIGHUP, on a thread of its own, from now on (the
/// handler is in place when this returns).
pub fn on_sighup(reloader: Arc<Reloader>) -> std::io::Result<()> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new().name("riegel-reload".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_io().build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        rt.block_on(async move {
            let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(()));
            while hup.recv().await.is_some() {
                reloader.reload();
            }
        });
    })?;
    rx.recv().map_err(|_| std::io::Error::other("the reload thread did not start"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use crate::config::tests::{MapEnv, MINIMAL};
    use std::path::Path;

    fn parse(yaml: &str, storage: char) -> Config {
        parse_with(yaml, storage, "eins")
    }

    fn parse_with(yaml: &str, storage: char, smtp_password: &str) -> Config {
        let env = MapEnv(HashMap::from([
            ("RIEGEL_SESSION_KEY".to_string(), "a".repeat(64)),
            ("RIEGEL_STORAGE_KEY".to_string(), storage.to_string().repeat(64)),
            ("RIEGEL_SMTP_PASSWORD".to_string(), smtp_password.to_string()),
        ]));
        Config::parse(yaml, Path::new("/"), &env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// config's minimal file with a company.
    fn base() -> String {
        format!("{MINIMAL}branding: {{ company: \"Alt\" }}\n")
    }

    #[test]
    fn the_metrics_listener_and_the_audit_file_need_a_restart() {
        let running = parse(&base(), 'b');
        let mut new = parse(&(base() + "metrics: { listen: \"127.0.0.1:9464\" }\nlog: { audit_file: /tmp/riegel-audit.jsonl }\n"), 'b');
        assert_eq!(keep_fixed(&running, &mut new), vec!["log.audit_file", "metrics.listen"]);
        assert_eq!((new.metrics.listen, new.log.audit_file), (None, None));
    }

    #[test]
    fn fixed_settings_keep_their_running_values_and_are_named() {
        let running = parse(&base(), 'b');
        let mut same = parse(&base(), 'b');
        assert!(keep_fixed(&running, &mut same).is_empty());

        let changed = base()
            .replace("127.0.0.1:8080", "127.0.0.1:9090")
            .replace("/tmp/riegel-test", "/tmp/riegel-other")
            .replace("\"Alt\"", "\"Neu\"")
            .replace("upstream: { url: \"http://127.0.0.1:9000\" }", "upstream: { url: \"http://127.0.0.1:9001\" }")
            + "server: { threads: 7, header_timeout: 3s }\nlog: { level: debug }\npassword: { max_concurrent_hashes: 3 }\n";
        let mut new = parse(&changed, 'c');
        let kept = keep_fixed(&running, &mut new);
        assert_eq!(kept, vec!["listen", "store", "secrets.storage_key_file", "server.threads", "password.max_concurrent_hashes", "log.level"]);
        assert_eq!(new.listen, running.listen);
        assert!(same_store(&new.store, &running.store));
        assert_eq!(new.secrets.storage_key, running.secrets.storage_key);
        assert_eq!((new.server.threads, new.password.max_concurrent_hashes), (running.server.threads, running.password.max_concurrent_hashes));
        assert_eq!(new.log.level, running.log.level);
        // What a reload is for is taken.
        assert_eq!(new.branding.company, "Neu");
        assert_eq!(new.upstream.port, 9001);
        assert_eq!(new.server.header_timeout, Duration::from_secs(3));
    }

    #[test]
    fn the_first_factor_cannot_be_switched_but_the_portals_settings_can_change() {
        let portal = "first_factor: portal\nportal_login: { form_url: /login, post_url: /login, username_field: u, password_field: p, success: { set_cookie: S }, session_cookies: [S], logout_url: /logout }\n";
        let local = parse(&base(), 'b');
        let running = parse(&(base() + portal), 'b');
        let (key, problem) = switches_first_factor(&local, &running).expect("refused");
        assert_eq!(key, "first_factor");
        assert!(problem.contains("needs a restart") && problem.contains("running: local"), "{problem}");
        assert!(switches_first_factor(&running, &local).is_some_and(|(_, p)| p.contains("running: portal")));
        let mut moved = parse(&(base() + &portal.replace("logout_url: /logout", "logout_url: /abmelden")), 'b');
        assert!(switches_first_factor(&running, &moved).is_none());
        assert!(keep_fixed(&running, &mut moved).is_empty());
        assert_eq!(moved.portal_login.map(|p| p.logout_url), Some("/abmelden".to_string()));
    }

    #[test]
    fn tls_can_be_renewed_but_not_switched_on_or_off() {
        let dir = std::env::temp_dir().join(format!("riegel-reload-tls-{}", std::process::id()));
        for d in ["a", "b"] {
            std::fs::create_dir_all(dir.join(d)).expect("dir");
            for f in ["cert.pem", "key.pem"] {
                std::fs::write(dir.join(d).join(f), "-").expect("file");
            }
        }
        let with_tls = base() + &format!("tls: {{ cert_file: {0}/a/cert.pem, key_file: {0}/a/key.pem }}\n", dir.display());
        let running = parse(&base(), 'b');
        let mut new = parse(&with_tls, 'b');
        assert_eq!(keep_fixed(&running, &mut new), vec!["tls"]);
        assert!(new.tls.is_none());
        let running = parse(&with_tls, 'b');
        let mut renewed = parse(&with_tls.replace("/a/", "/b/"), 'b');
        assert!(keep_fixed(&running, &mut renewed).is_empty());
        assert_eq!(renewed.tls.map(|t| t.cert_file), Some(dir.join("b/cert.pem")));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn mail_changes_are_seen_also_in_the_smtp_password() {
        let smtp = base().replace("outbox: \"/tmp/outbox\"", "smtp: { host: 127.0.0.1, port: 25, tls: none, username: u }");
        let (a, b) = (parse(&smtp, 'b'), parse_with(&smtp, 'b', "zwei"));
        assert!(mail_changed(&a, &b));
        assert!(!mail_changed(&a, &parse(&smtp, 'b')));
        // Compared, never printed.
        let printed = format!("{b:?}");
        assert!(!printed.contains("zwei") && printed.contains("(hidden)"), "{printed}");
    }
}
