//! Configuration: one YAML file, parsed and validated in one step into a
//! typed [`Config`]. Every problem is collected with its key path, so an
//! operator sees all of them at once (`riegel check-config`).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::{Mapping, Value};

/// One problem in the configuration, with the key path it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// All problems found in one configuration file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    De,
    En,
}

impl Language {
    pub fn code(self) -> &'static str {
        match self {
            Language::De => "de",
            Language::En => "en",
        }
    }

    /// The language of a code (`de`, `en`), if riegel ships it.
    pub fn from_code(code: &str) -> Option<Language> {
        match code {
            "de" => Some(Language::De),
            "en" => Some(Language::En),
            _ => None,
        }
    }
}

/// How the operator can be reached (`branding.contact`): shown in mails,
/// on the lockout page and on the recovery pages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contact {
    pub phone: Option<String>,
    pub email: Option<String>,
}

/// What a user who had an authenticator and has none left (a lost phone,
/// `riegel user reset-totp`) must show besides the password before a new
/// one can be enrolled (`totp.reenrol_proof`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReenrolProof {
    /// A one-time link mailed to the user's address, opened in the same
    /// browser session.
    Email,
    /// The password alone (as for a new account).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    None,
    StartTls,
    Tls,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// Value for SNI / Host verification when `tls` is set.
    pub sni: String,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    /// Time a user has between the password and the second factor.
    pub login_timeout: Duration,
    pub cookie_name: String,
}

#[derive(Debug, Clone)]
pub struct HeaderNames {
    pub user: String,
    pub email: String,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub threads: usize,
    /// One work-stealing runtime (true) or one runtime per thread (false).
    pub work_stealing: bool,
    /// Shard threads in `SCHED_BATCH` while busy (see `crate::sched`).
    pub adaptive_scheduling: bool,
    /// A client must send each request head within this.
    pub header_timeout: Duration,
    /// A body riegel reads (a form) or forwards must arrive whole within
    /// this, counted from the end of its head.
    pub body_timeout: Duration,
    /// Longest wait for a client to take the next piece of an answer, on
    /// both ways (nginx's `send_timeout`).
    pub write_timeout: Duration,
    pub max_connections: usize,
    pub max_form_bytes: usize,
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone)]
pub struct Argon2Params {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

#[derive(Debug, Clone)]
pub struct PasswordConfig {
    pub argon2: Argon2Params,
    pub min_length: usize,
    pub max_concurrent_hashes: usize,
    /// The longest a login waits for a free hashing thread before it gets
    /// the "please try again" page (503).
    pub hash_queue_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RegulationConfig {
    /// Failures within `find_time` that lead to a ban.
    pub max_failures: u32,
    pub find_time: Duration,
    pub ban_time: Duration,
    /// Failures after which each further attempt is slowed down.
    pub delay_after: u32,
    pub delay_step: Duration,
    /// Hard ceiling of consecutive failures per account before a ban,
    /// whatever the window (NIST 800-63B: at most 100).
    pub max_consecutive: u32,
}

#[derive(Debug, Clone)]
pub struct ResetConfig {
    pub token_lifetime: Duration,
}

/// `mail.smtp`. `Debug` never prints the password.
#[derive(Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<String>,
    pub timeout: Duration,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "(hidden)"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub enum MailTransport {
    Smtp(SmtpConfig),
    Outbox(PathBuf),
}

#[derive(Debug, Clone)]
pub struct MailConfig {
    pub from: String,
    pub transport: MailTransport,
    pub queue_size: usize,
    pub max_attempts: u32,
}

#[derive(Debug, Clone)]
pub struct BrandingConfig {
    pub company: String,
    pub portal_name: String,
    /// The default language: used when neither the language cookie nor
    /// `Accept-Language` names one of `languages`. Always in `languages`.
    pub language: Language,
    /// The languages offered (`branding.languages`), the default first.
    pub languages: Vec<Language>,
    /// The IANA time zone of times in mails and on "Mein Zugang"
    /// (validated against the time zone data compiled into riegel).
    pub timezone: String,
    pub contact: Contact,
    pub logo_file: Option<PathBuf>,
    pub primary_color: String,
    pub imprint_url: Option<String>,
    pub privacy_url: Option<String>,
    /// Directory with templates, CSS, images and translation files that
    /// replace the built-in ones.
    pub pages_dir: Option<PathBuf>,
    /// Per-key overrides of the UI texts, by language.
    pub texts: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Debug, Clone)]
pub struct TotpConfig {
    pub issuer: String,
    pub enrollment_timeout: Duration,
    pub reenrol_proof: ReenrolProof,
}

/// `first_factor`: who checks the password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirstFactor {
    /// riegel's own accounts and password hashes (the default).
    #[default]
    Local,
    /// The portal's own login form, replayed by riegel (`portal_login`).
    Portal,
}

/// `portal_login.success`: how a successful portal login is told from a
/// failed one. Every rule given must hold; at least one is given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortalSuccess {
    /// A redirect (3xx with Location) whose target path starts with none
    /// of these paths.
    pub redirect_not_to: Option<Vec<String>>,
    /// A `Set-Cookie` of this name with a value that does not expire it.
    pub set_cookie: Option<String>,
}

/// `portal_login`: the portal's own login form (with `first_factor: portal`).
/// Every URL is a path on the upstream (`/login`, `/app/login?x=1`): the
/// replay goes to `upstream.url` only, never to another host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalLoginConfig {
    pub form_url: String,
    pub post_url: String,
    pub username_field: String,
    pub password_field: String,
    pub success: PortalSuccess,
    /// The portal's session cookie names: kept sealed in riegel's session
    /// record, stripped from what the browser sends and from what the
    /// portal answers.
    pub session_cookies: Vec<String>,
    pub logout_url: String,
    /// Where "Sie können nicht auf Ihr Konto zugreifen?" leads: a path on
    /// the portal (listed in `public_paths`) or an http(s) URL.
    pub forgot_url: Option<String>,
    /// The longest the whole replay (GET form, POST) may take.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub json: bool,
    /// `log.audit_file`: the audit log's JSON lines; stderr when absent.
    pub audit_file: Option<PathBuf>,
}

/// `metrics:`: the Prometheus listener, off when `listen` is absent.
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    pub listen: Option<SocketAddr>,
}

/// The secrets, loaded. `Debug` never prints them.
#[derive(Clone)]
pub struct Secrets {
    /// The first key signs; all verify.
    pub session_keys: Vec<Vec<u8>>,
    pub storage_key: Vec<u8>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} session keys, storage key: [redacted])", self.session_keys.len())
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    pub public_url: url::Url,
    /// True when `public_url` is plain http: cookies lose `Secure` and the
    /// `__Host-` prefix. For local use only.
    pub plain_http: bool,
    pub prefix: String,
    pub public_paths: Vec<String>,
    pub upstream: UpstreamConfig,
    pub store: StoreConfig,
    pub secrets: Secrets,
    pub session: SessionConfig,
    pub headers: HeaderNames,
    pub server: ServerConfig,
    pub password: PasswordConfig,
    pub regulation: RegulationConfig,
    pub reset: ResetConfig,
    pub mail: MailConfig,
    pub branding: BrandingConfig,
    pub totp: TotpConfig,
    pub log: LogConfig,
    /// `first_factor`: local (riegel's accounts) or portal (`portal_login`).
    pub first_factor: FirstFactor,
    /// `portal_login`: set exactly when `first_factor` is `portal`.
    pub portal_login: Option<PortalLoginConfig>,
    pub metrics: MetricsConfig,
    /// Things that work but should not be so (e.g. one key for two
    /// purposes); `riegel check-config` prints them, `serve` logs them.
    pub warnings: Vec<ConfigError>,
}

/// Where riegel keeps its data: `store.path` (sled) or `store.postgres`.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// sled in a directory of this machine, for one instance (the default).
    Sled {
        path: PathBuf,
        /// The running server's admin socket (`store.admin_socket`,
        /// default `<path>/admin.sock`): the command line talks to it while
        /// the server holds the store.
        admin_socket: PathBuf,
    },
    /// PostgreSQL, for one or several instances.
    Postgres(PostgresConfig),
}

impl StoreConfig {
    /// The sled directory, if that is the backend.
    pub fn sled_path(&self) -> Option<&Path> {
        match self {
            StoreConfig::Sled { path, .. } => Some(path),
            StoreConfig::Postgres(_) => None,
        }
    }
}

/// `store.postgres`. The URL carries a password: `Debug` never prints it.
#[derive(Clone)]
pub struct PostgresConfig {
    /// `store.postgres.url`, the contents of `url_file`, or the environment
    /// variable `RIEGEL_POSTGRES_URL`.
    pub url: String,
    /// `store.postgres.pool_size`: connections per instance.
    pub pool_size: usize,
    /// `store.postgres.timeout`: a database call without an answer within
    /// this time fails (riegel answers "try again later").
    pub timeout: Duration,
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresConfig {{ url: [redacted], pool_size: {}, timeout: {:?} }}", self.pool_size, self.timeout)
    }
}

/// Where the environment comes from; tests inject their own.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Config::parse(&text, base, &ProcessEnv)
    }

    /// Parses YAML text. Relative paths are taken relative to `base`.
    pub fn parse(text: &str, base: &Path, env: &dyn Env) -> Result<Config, ConfigErrors> {
        let root: Value = serde_yaml::from_str(text).map_err(|e| {
            let loc = e.location().map(|l| format!(" (line {}, column {})", l.line(), l.column()));
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("not valid YAML: {e}{}", loc.unwrap_or_default()),
            }])
        })?;
        let mut errs = Vec::new();
        let empty = Mapping::new();
        let map = match &root {
            Value::Mapping(m) => m,
            Value::Null => &empty,
            _ => {
                return Err(ConfigErrors(vec![ConfigError {
                    path: String::new(),
                    message: "the configuration must be a mapping of keys".into(),
                }]))
            }
        };
        let cfg = {
            let mut s = Section::new(map, String::new(), &mut errs, base);
            build(&mut s, env)
        };
        match cfg {
            Some(mut c) if errs.is_empty() => {
                c.warnings = warnings(&c);
                Ok(c)
            }
            _ => {
                if errs.is_empty() {
                    errs.push(ConfigError { path: String::new(), message: "invalid configuration".into() });
                }
                Err(ConfigErrors(errs))
            }
        }
    }

    pub fn cookie_name(&self) -> String {
        if self.plain_http {
            self.session.cookie_name.clone()
        } else {
            format!("__Host-{}", self.session.cookie_name)
        }
    }

    pub fn csrf_cookie_name(&self) -> String {
        if self.plain_http {
            format!("{}_csrf", self.session.cookie_name)
        } else {
            format!("__Host-{}_csrf", self.session.cookie_name)
        }
    }
}

fn build(s: &mut Section<'_, '_>, env: &dyn Env) -> Option<Config> {
    let listen = s.parse_req::<SocketAddr>("listen", "an address such as 127.0.0.1:8080");
    let tls = s.opt_section("tls").and_then(|mut t| {
        let cert_file = t.existing_file_req("cert_file");
        let key_file = t.existing_file_req("key_file");
        t.finish();
        Some(TlsConfig { cert_file: cert_file?, key_file: key_file? })
    });
    let public_url = s.url_req("public_url", &["http", "https"]);
    if let Some(u) = &public_url {
        if u.path() != "/" || u.query().is_some() || u.fragment().is_some() {
            s.error("public_url", "must be an origin only (scheme, host, optional port), without a path");
        }
    }
    let plain_http = public_url.as_ref().map(|u| u.scheme() == "http").unwrap_or(false);
    let prefix = s.string_or("prefix", "/_riegel");
    if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.len() < 2 || prefix.contains(['?', '#', ' ']) {
        s.error("prefix", "must start with '/', not end with '/', and contain no spaces, '?' or '#'");
    }
    let public_paths = s.string_list_or("public_paths", &["/favicon.ico"]);
    for (i, p) in public_paths.iter().enumerate() {
        if !p.starts_with('/') {
            s.error(&format!("public_paths[{i}]"), "must start with '/'");
        }
        if p.starts_with(&prefix) {
            s.error(&format!("public_paths[{i}]"), "must not be under the riegel prefix");
        }
    }

    let upstream = s.req_section("upstream").and_then(|mut u| {
        let url = u.url_req("url", &["http", "https"]);
        let connect_timeout = u.duration_or("connect_timeout", Duration::from_secs(5));
        let read_timeout = u.duration_or("read_timeout", Duration::from_secs(60));
        let write_timeout = u.duration_or("write_timeout", Duration::from_secs(60));
        let idle_timeout = u.duration_or("idle_timeout", Duration::from_secs(60));
        let sni = u.opt_string("tls_server_name");
        if url.as_ref().is_some_and(|u| u.path() != "/") {
            u.error("url", "must not have a path; riegel forwards the request path as it is");
        }
        u.finish();
        let url = url?;
        let host = url.host_str()?.trim_start_matches('[').trim_end_matches(']').to_string();
        let tls = url.scheme() == "https";
        let port = url.port_or_known_default()?;
        Some(UpstreamConfig {
            sni: sni.unwrap_or_else(|| host.clone()),
            host,
            port,
            tls,
            connect_timeout,
            read_timeout,
            write_timeout,
            idle_timeout,
        })
    });

    let store = s.req_section("store").and_then(|mut st| {
        let path = st.opt_path("path");
        let admin_socket = st.opt_path("admin_socket");
        let has_pg = st.has("postgres");
        let pg = st.opt_section("postgres").map(|mut p| {
            let inline = p.opt_string("url");
            let from_file = p.has("url_file");
            let secret = p.secret_string("url_file", "RIEGEL_POSTGRES_URL", env);
            let pool_size = p.uint_or("pool_size", 16, 1, 1000) as usize;
            let timeout = p.duration_or("timeout", Duration::from_secs(5));
            if timeout.is_zero() {
                p.error("timeout", "must be more than 0s");
            }
            let url = match (inline, from_file) {
                (Some(_), true) => {
                    p.error("url", "store.postgres.url and store.postgres.url_file are both set; choose one");
                    None
                }
                (Some(u), false) => Some(u),
                (None, _) => secret,
            };
            let url = match url.map(|u| u.trim().to_string()) {
                None => {
                    p.error("url", "missing (or set url_file, or the environment variable RIEGEL_POSTGRES_URL)");
                    None
                }
                // The text itself is never repeated: it may hold a password.
                Some(u) if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) => {
                    p.error("url", "must be a URL starting with postgres:// or postgresql://");
                    None
                }
                Some(u) => Some(u),
            };
            p.finish();
            url.map(|url| PostgresConfig { url, pool_size, timeout })
        });
        let out = match (path, has_pg) {
            (Some(_), true) => {
                st.error("postgres", "store.path and store.postgres are both set; choose one backend");
                None
            }
            (None, true) => {
                if admin_socket.is_some() {
                    st.error("admin_socket", "applies to store.path (sled) only; with PostgreSQL the command line talks to the database");
                }
                pg.flatten().map(StoreConfig::Postgres)
            }
            (Some(path), false) => {
                let admin_socket = admin_socket.unwrap_or_else(|| path.join("admin.sock"));
                Some(StoreConfig::Sled { path, admin_socket })
            }
            (None, false) => {
                st.error("path", "missing (a directory for the data, or store.postgres for PostgreSQL)");
                None
            }
        };
        st.finish();
        out
    });

    let secrets = s.req_section("secrets").and_then(|mut k| {
        let session = k.secret_keys("session_key_file", "RIEGEL_SESSION_KEY", env);
        let storage = k.secret_keys("storage_key_file", "RIEGEL_STORAGE_KEY", env);
        if storage.as_ref().is_some_and(|keys| keys.len() > 1) {
            k.error("storage_key_file", "holds several keys; the storage key cannot be rotated this way");
        }
        k.finish();
        let storage = storage?;
        Some(Secrets { session_keys: session?, storage_key: storage.into_iter().next()? })
    });

    let session = {
        let mut ss = s.section("session");
        let idle_timeout = ss.duration_or("idle_timeout", Duration::from_secs(30 * 60));
        let max_lifetime = ss.duration_or("max_lifetime", Duration::from_secs(12 * 3600));
        let login_timeout = ss.duration_or("login_timeout", Duration::from_secs(10 * 60));
        let cookie_name = ss.string_or("cookie_name", "riegel_session");
        if cookie_name.is_empty() || !cookie_name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            ss.error("cookie_name", "may only contain letters, digits, '_' and '-'");
        }
        if idle_timeout > max_lifetime {
            ss.error("idle_timeout", "must not be longer than session.max_lifetime");
        }
        ss.finish();
        SessionConfig { idle_timeout, max_lifetime, login_timeout, cookie_name }
    };

    let headers = {
        let mut h = s.section("headers");
        let user = h.header_name_or("user", "Remote-User");
        let email = h.header_name_or("email", "Remote-Email");
        let name = h.header_name_or("name", "Remote-Name");
        h.finish();
        HeaderNames { user, email, name }
    };

    let server = {
        let mut sv = s.section("server");
        let threads = sv.uint_or("threads", default_threads() as u64, 1, 256) as usize;
        let work_stealing = sv.bool_or("work_stealing", false);
        let adaptive_scheduling = sv.bool_or("adaptive_scheduling", true);
        let header_timeout = sv.duration_or("header_timeout", Duration::from_secs(10));
        let body_timeout = sv.duration_or("body_timeout", Duration::from_secs(10));
        let write_timeout = sv.duration_or("write_timeout", Duration::from_secs(60));
        let max_connections = sv.uint_or("max_connections", 10_000, 1, 1_000_000) as usize;
        let max_form_bytes = sv.uint_or("max_form_bytes", 16 * 1024, 1024, 1024 * 1024) as usize;
        let list = sv.string_list_or("trusted_proxies", &[]);
        let mut trusted_proxies = Vec::new();
        for (i, p) in list.iter().enumerate() {
            let parsed = p
                .parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(n) => trusted_proxies.push(n),
                Err(_) => sv.error(&format!("trusted_proxies[{i}]"), "not an IP address or CIDR network"),
            }
        }
        sv.finish();
        ServerConfig {
            threads,
            work_stealing,
            adaptive_scheduling,
            header_timeout,
            body_timeout,
            write_timeout,
            max_connections,
            max_form_bytes,
            trusted_proxies,
        }
    };

    let password = {
        let mut p = s.section("password");
        let argon2 = {
            let mut a = p.section("argon2");
            let memory_kib = a.uint_or("memory_kib", 19 * 1024, 19 * 1024, 4 * 1024 * 1024) as u32;
            let iterations = a.uint_or("iterations", 2, 2, 100) as u32;
            let parallelism = a.uint_or("parallelism", 1, 1, 64) as u32;
            a.finish();
            Argon2Params { memory_kib, iterations, parallelism }
        };
        let min_length = p.uint_or("min_length", 10, 8, 1024) as usize;
        // Half the cores by default: a login storm never takes every core from proxying.
        let default_hashes = (default_threads() / 2).max(1) as u64;
        let max_concurrent_hashes = p.uint_or("max_concurrent_hashes", default_hashes, 1, 256) as usize;
        let hash_queue_timeout = p.duration_or("hash_queue_timeout", Duration::from_secs(10));
        p.finish();
        PasswordConfig { argon2, min_length, max_concurrent_hashes, hash_queue_timeout }
    };

    let regulation = {
        let mut r = s.section("regulation");
        let max_failures = r.uint_or("max_failures", 5, 1, 100) as u32;
        let find_time = r.duration_or("find_time", Duration::from_secs(10 * 60));
        let ban_time = r.duration_or("ban_time", Duration::from_secs(15 * 60));
        let delay_after = r.uint_or("delay_after", 3, 1, 100) as u32;
        let delay_step = r.duration_or("delay_step", Duration::from_millis(500));
        let max_consecutive = r.uint_or("max_consecutive", 100, 1, 100) as u32;
        if delay_step > Duration::from_secs(5) {
            r.error("delay_step", "must be at most 5s");
        }
        r.finish();
        RegulationConfig { max_failures, find_time, ban_time, delay_after, delay_step, max_consecutive }
    };

    let reset = {
        let mut r = s.section("reset");
        let token_lifetime = r.duration_or("token_lifetime", Duration::from_secs(30 * 60));
        if token_lifetime > Duration::from_secs(24 * 3600) {
            r.error("token_lifetime", "must be at most 24h");
        }
        r.finish();
        ResetConfig { token_lifetime }
    };

    let mail = s.req_section("mail").and_then(|mut m| {
        let from = m.string_req("from");
        if let Some(f) = &from {
            if f.parse::<lettre_free_mailbox::Mailbox>().is_err() {
                m.error("from", "not a mail address such as \"Portal <portal@example.at>\"");
            }
        }
        let smtp = m.opt_section("smtp").and_then(|mut sm| {
            let host = sm.string_req("host");
            let port = sm.uint_or("port", 25, 1, 65535) as u16;
            let tls = match sm.string_or("tls", "starttls").as_str() {
                "none" => Some(SmtpTls::None),
                "starttls" => Some(SmtpTls::StartTls),
                "tls" => Some(SmtpTls::Tls),
                _ => {
                    sm.error("tls", "must be one of none, starttls, tls");
                    None
                }
            };
            let username = sm.opt_string("username");
            let password = sm.secret_string("password_file", "RIEGEL_SMTP_PASSWORD", env);
            let timeout = sm.duration_or("timeout", Duration::from_secs(10));
            if username.is_some() != password.is_some() {
                sm.error("username", "username and password_file (or RIEGEL_SMTP_PASSWORD) go together");
            }
            sm.finish();
            Some(SmtpConfig { host: host?, port, tls: tls?, username, password, timeout })
        });
        let outbox = m.opt_path("outbox");
        let queue_size = m.uint_or("queue_size", 1000, 1, 1_000_000) as usize;
        let max_attempts = m.uint_or("max_attempts", 5, 1, 100) as u32;
        let had_smtp = m.has("smtp");
        let transport = match (smtp, outbox) {
            (Some(_), Some(_)) => {
                m.error("outbox", "set either mail.smtp or mail.outbox, not both");
                None
            }
            (Some(s), None) => Some(MailTransport::Smtp(s)),
            (None, Some(o)) => Some(MailTransport::Outbox(o)),
            (None, None) => {
                if !had_smtp {
                    m.error("smtp", "missing: set mail.smtp or mail.outbox");
                }
                None
            }
        };
        m.finish();
        Some(MailConfig { from: from?, transport: transport?, queue_size, max_attempts })
    });

    let branding = {
        let mut b = s.section("branding");
        let company = b.string_or("company", "riegel");
        let portal_name = b.string_or("portal_name", "Portal");
        // `language` is the default, `languages` the offer; either implies
        // the other when it is the only one given.
        let language = b.opt_string("language").and_then(|l| match Language::from_code(&l) {
            Some(l) => Some(l),
            None => {
                b.error("language", "must be de or en");
                None
            }
        });
        let listed = if b.has("languages") {
            Some(b.string_list_or("languages", &[]))
        } else {
            let _ = b.get("languages"); // `languages: null` is the default, not an unknown key
            None
        };
        let mut languages: Vec<Language> = Vec::new();
        for (i, code) in listed.iter().flatten().enumerate() {
            match Language::from_code(code) {
                Some(l) if languages.contains(&l) => b.error(&format!("languages[{i}]"), &format!("'{code}' is listed twice")),
                Some(l) => languages.push(l),
                None => b.error(&format!("languages[{i}]"), &format!("'{code}' is not a language riegel ships (de, en)")),
            }
        }
        if listed.as_ref().is_some_and(|l| l.is_empty()) {
            b.error("languages", "must list at least one language (de, en)");
        }
        let language = match (language, languages.first().copied()) {
            (Some(l), _) if listed.is_none() => {
                languages = vec![l];
                l
            }
            (Some(l), Some(_)) if !languages.contains(&l) => {
                b.error("language", &format!("'{}' is not in branding.languages; the default language must be one of them", l.code()));
                l
            }
            (Some(l), _) => l,
            (None, Some(first)) => first,
            (None, None) => {
                languages = vec![Language::De];
                Language::De
            }
        };
        // The default first: it is what a request without a choice gets.
        languages.retain(|l| *l != language);
        languages.insert(0, language);
        let timezone = b.string_or("timezone", "Europe/Vienna");
        if jiff::tz::db().get(&timezone).is_err() {
            b.error("timezone", &format!("'{timezone}' is not a time zone riegel knows (an IANA name such as Europe/Vienna)"));
        }
        let contact = match b.opt_section("contact") {
            Some(mut c) => {
                let phone = c.opt_string("phone").map(|p| p.trim().to_string());
                if let Some(p) = &phone {
                    let digits = p.bytes().filter(u8::is_ascii_digit).count();
                    if digits < 3 || !p.chars().all(|ch| ch.is_ascii_digit() || " +-/()".contains(ch)) {
                        c.error("phone", &format!("'{p}' is not a phone number (digits, spaces and + - / ( ) only)"));
                    }
                }
                let email = c.opt_string("email").map(|e| e.trim().to_string());
                if let Some(e) = &email {
                    if !valid_email(e) {
                        c.error("email", &format!("'{e}' is not an e-mail address"));
                    }
                }
                c.finish();
                Contact { phone, email }
            }
            None => Contact::default(),
        };
        let logo_file = b.opt_existing_file("logo_file");
        if let Some(l) = &logo_file {
            let ok = matches!(
                l.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref(),
                Some("png" | "svg" | "jpg" | "jpeg" | "webp" | "gif")
            );
            if !ok {
                b.error("logo_file", "must be a .png, .svg, .jpg, .webp or .gif file");
            }
        }
        let primary_color = b.string_or("primary_color", "#3d7d16");
        let hex = primary_color.strip_prefix('#').unwrap_or("");
        if !(hex.len() == 6 || hex.len() == 3) || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            b.error("primary_color", "must be a hex colour such as #3d7d16");
        }
        let imprint_url = b.opt_url_string("imprint_url");
        let privacy_url = b.opt_url_string("privacy_url");
        let pages_dir = b.opt_path("pages_dir");
        if let Some(d) = &pages_dir {
            if !d.is_dir() {
                b.error("pages_dir", &format!("{} is not a directory", d.display()));
            }
        }
        let mut texts = BTreeMap::new();
        if let Some(mut t) = b.opt_section("texts") {
            for lang in ["de", "en"] {
                if let Some(mut l) = t.opt_section(lang) {
                    let mut m = BTreeMap::new();
                    for k in l.keys() {
                        if let Some(v) = l.string_req(&k) {
                            m.insert(k, v);
                        }
                    }
                    l.finish();
                    texts.insert(lang.to_string(), m);
                }
            }
            t.finish();
        }
        b.finish();
        BrandingConfig {
            company,
            portal_name,
            language,
            languages,
            timezone,
            contact,
            logo_file,
            primary_color,
            imprint_url,
            privacy_url,
            pages_dir,
            texts,
        }
    };

    let totp = {
        let mut t = s.section("totp");
        let issuer = t.string_or("issuer", &branding.company);
        if issuer.contains(':') {
            t.error("issuer", "must not contain ':'");
        }
        let enrollment_timeout = t.duration_or("enrollment_timeout", Duration::from_secs(3600));
        let reenrol_proof = match t.string_or("reenrol_proof", "email").as_str() {
            "email" => ReenrolProof::Email,
            "none" => ReenrolProof::None,
            _ => {
                t.error("reenrol_proof", "must be email or none");
                ReenrolProof::Email
            }
        };
        t.finish();
        TotpConfig { issuer, enrollment_timeout, reenrol_proof }
    };

    let log = {
        let mut l = s.section("log");
        let level = l.string_or("level", "info");
        if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
            l.error("level", "must be one of error, warn, info, debug, trace");
        }
        let json = match l.string_or("format", "text").as_str() {
            "text" => false,
            "json" => true,
            _ => {
                l.error("format", "must be text or json");
                false
            }
        };
        let audit_file = l.opt_path("audit_file");
        if let Some(f) = &audit_file {
            if f.is_dir() {
                l.error("audit_file", &format!("{} is a directory; name a file in it, e.g. audit.jsonl", f.display()));
            } else if !f.parent().is_some_and(Path::is_dir) {
                l.error("audit_file", &format!("the directory of {} does not exist", f.display()));
            }
        }
        l.finish();
        LogConfig { level, json, audit_file }
    };

    let metrics = {
        let mut m = s.section("metrics");
        let mut at = if m.has("listen") { m.parse_req::<SocketAddr>("listen", "an address such as 127.0.0.1:9464") } else { None };
        // Never on the public port: the portal's users would read them.
        let public = listen;
        if let (Some(a), Some(p)) = (at, public) {
            if a.port() == p.port() && (a.ip() == p.ip() || a.ip().is_unspecified() || p.ip().is_unspecified()) {
                m.error("listen", &format!("{a} is the public listener (`listen`); the metrics need an address of their own, e.g. 127.0.0.1:9464"));
                at = None;
            }
        }
        m.finish();
        MetricsConfig { listen: at }
    };

    let (first_factor, portal_login) = first_factor(s, &public_paths, &session.cookie_name);

    s.finish();
    Some(Config {
        listen: listen?,
        tls,
        public_url: public_url?,
        plain_http,
        prefix,
        public_paths,
        upstream: upstream?,
        store: store?,
        secrets: secrets?,
        session,
        headers,
        server,
        password,
        regulation,
        reset,
        mail: mail?,
        branding,
        totp,
        log,
        first_factor,
        portal_login,
        metrics,
        warnings: Vec::new(),
    })
}

/// A cookie name as RFC 6265 allows it (an HTTP token).
fn cookie_name_ok(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A path on the upstream: one leading `/`, no `//`, no scheme or host, no
/// fragment, no spaces or control characters.
fn upstream_path_ok(p: &str) -> bool {
    p.starts_with('/')
        && !p.starts_with("//")
        && !p.contains('#')
        && !p.contains('\\')
        && p.bytes().all(|b| b > 0x20 && b != 0x7f)
}

/// `first_factor` and `portal_login`, checked together.
fn first_factor(s: &mut Section<'_, '_>, public_paths: &[String], riegel_cookie: &str) -> (FirstFactor, Option<PortalLoginConfig>) {
    let ff = match s.string_or("first_factor", "local").as_str() {
        "local" => FirstFactor::Local,
        "portal" => FirstFactor::Portal,
        other => {
            s.error("first_factor", &format!("'{other}' must be local or portal"));
            FirstFactor::Local
        }
    };
    let had = s.has("portal_login");
    if ff == FirstFactor::Local {
        if had {
            let _ = s.get("portal_login");
            s.error("portal_login", "applies to first_factor: portal only (first_factor is local)");
        }
        return (ff, None);
    }
    let Some(mut p) = s.req_section("portal_login") else { return (ff, None) };
    let path = |p: &mut Section<'_, '_>, key: &str, default: Option<&str>| -> Option<String> {
        let v = match default {
            Some(d) => Some(p.string_or(key, d)),
            None => p.string_req(key),
        }?;
        if !upstream_path_ok(&v) {
            p.error(key, &format!("'{v}' must be a path on the upstream, such as /login (no scheme, host or fragment)"));
            return None;
        }
        Some(v)
    };
    let form_url = path(&mut p, "form_url", None);
    let post_url = path(&mut p, "post_url", None);
    let logout_url = path(&mut p, "logout_url", None);
    let field = |p: &mut Section<'_, '_>, key: &str, default: &str| -> String {
        let v = p.string_or(key, default);
        if v.is_empty() || v.bytes().any(|b| b.is_ascii_control()) {
            p.error(key, "must be a form field name (not empty, no control characters)");
        }
        v
    };
    let username_field = field(&mut p, "username_field", "username");
    let password_field = field(&mut p, "password_field", "password");
    if username_field == password_field {
        p.error("password_field", "must differ from username_field");
    }
    let session_cookies = p.string_list_or("session_cookies", &[]);
    if session_cookies.is_empty() && !p.errs.iter().any(|e| e.path == p.key_path("session_cookies")) {
        p.error("session_cookies", "must list the portal's session cookie names (e.g. [JSESSIONID])");
    }
    for (i, c) in session_cookies.iter().enumerate() {
        if !cookie_name_ok(c) {
            p.error(&format!("session_cookies[{i}]"), &format!("'{c}' is not a cookie name"));
        } else if c == riegel_cookie || *c == format!("__Host-{riegel_cookie}") || c.starts_with(&format!("{riegel_cookie}_")) || c.starts_with(&format!("__Host-{riegel_cookie}_")) {
            p.error(&format!("session_cookies[{i}]"), &format!("'{c}' is riegel's own cookie (session.cookie_name)"));
        } else if session_cookies[..i].contains(c) {
            p.error(&format!("session_cookies[{i}]"), &format!("'{c}' is listed twice"));
        }
    }
    let success = match p.opt_section("success") {
        Some(mut sc) => {
            let redirect_not_to = if sc.has("redirect_not_to") {
                let list = sc.string_list_or("redirect_not_to", &[]);
                for (i, r) in list.iter().enumerate() {
                    if !upstream_path_ok(r) {
                        sc.error(&format!("redirect_not_to[{i}]"), &format!("'{r}' must be a path such as /login"));
                    }
                }
                if list.is_empty() {
                    sc.error("redirect_not_to", "must list at least one path (the login page a failed login returns to)");
                }
                Some(list)
            } else {
                let _ = sc.get("redirect_not_to");
                None
            };
            let set_cookie = sc.opt_string("set_cookie");
            if let Some(c) = &set_cookie {
                if !cookie_name_ok(c) {
                    sc.error("set_cookie", &format!("'{c}' is not a cookie name"));
                } else if !session_cookies.contains(c) {
                    sc.error("set_cookie", &format!("'{c}' must be one of portal_login.session_cookies"));
                }
            }
            if redirect_not_to.is_none() && set_cookie.is_none() && !sc.errs.iter().any(|e| e.path.starts_with(&sc.path)) {
                sc.error("redirect_not_to", "success needs at least one rule: redirect_not_to, set_cookie, or both");
            }
            sc.finish();
            Some(PortalSuccess { redirect_not_to, set_cookie })
        }
        None => {
            if !p.errs.iter().any(|e| e.path == p.key_path("success")) {
                p.error("success", "missing: how riegel tells a successful login (redirect_not_to, set_cookie, or both)");
            }
            None
        }
    };
    let forgot_url = p.opt_url_string("forgot_url");
    if let Some(f) = &forgot_url {
        if f.starts_with('/') {
            let bare = f.split(['?', '#']).next().unwrap_or(f);
            if !public_paths.iter().any(|pp| pp == bare) {
                p.error("forgot_url", &format!("'{bare}' is a portal path, so it must be listed in public_paths (it is opened without a login)"));
            }
        }
    }
    let timeout = p.duration_or("timeout", Duration::from_secs(10));
    if timeout > Duration::from_secs(300) {
        p.error("timeout", "must be at most 5m (a tenant waits that long for the login page's answer)");
    }
    p.finish();
    let cfg = PortalLoginConfig {
        form_url: form_url.unwrap_or_default(),
        post_url: post_url.unwrap_or_default(),
        username_field,
        password_field,
        success: success.unwrap_or_default(),
        session_cookies,
        logout_url: logout_url.unwrap_or_default(),
        forgot_url,
        timeout,
    };
    (ff, Some(cfg))
}

/// What is allowed but unwise in a valid configuration.
fn warnings(c: &Config) -> Vec<ConfigError> {
    let mut w = Vec::new();
    if c.secrets.session_keys.contains(&c.secrets.storage_key) {
        w.push(ConfigError {
            path: "secrets.storage_key_file".into(),
            message: "the storage key is also a session key: use two keys (`openssl rand -hex 32` for each), or a leaked \
                      cookie key also opens the stored TOTP secrets"
                .into(),
        });
    }
    w
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

/// Minimal mailbox syntax check that does not pull lettre into config.
mod lettre_free_mailbox {
    pub struct Mailbox;
    impl std::str::FromStr for Mailbox {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let addr = match (s.rfind('<'), s.rfind('>')) {
                (Some(a), Some(b)) if a < b && b == s.len() - 1 => &s[a + 1..b],
                (None, None) => s.trim(),
                _ => return Err(()),
            };
            crate::config::valid_email(addr).then_some(Mailbox).ok_or(())
        }
    }
}

/// A pragmatic e-mail syntax check: one '@', a non-empty local part, a
/// dotted or local domain, no spaces or control characters.
pub fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else { return false };
    !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && s.len() <= 254
        && !s.chars().any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>' || c == ',')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
}

/// Parses `30s`, `15m`, `12h`, `7d`, `500ms`, or combinations like `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("'{t}' has no unit; write e.g. {t}s or {t}m"));
    }
    humantime::parse_duration(t).map_err(|e| format!("'{t}' is not a duration such as 30s, 15m or 12h ({e})"))
}

/// A walker over one YAML mapping that records which keys it read, so
/// unknown keys are reported, and collects every error with its path.
pub(crate) struct Section<'a, 'e> {
    map: &'a Mapping,
    path: String,
    used: HashSet<String>,
    errs: &'e mut Vec<ConfigError>,
    base: &'a Path,
}

static EMPTY: std::sync::OnceLock<Mapping> = std::sync::OnceLock::new();

impl<'a, 'e> Section<'a, 'e> {
    fn new(map: &'a Mapping, path: String, errs: &'e mut Vec<ConfigError>, base: &'a Path) -> Self {
        Self { map, path, used: HashSet::new(), errs, base }
    }

    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn error(&mut self, key: &str, msg: &str) {
        let path = self.key_path(key);
        self.errs.push(ConfigError { path, message: msg.to_string() });
    }

    fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }

    fn get(&mut self, key: &str) -> Option<&'a Value> {
        self.used.insert(key.to_string());
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    fn keys(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for k in self.map.keys() {
            match k.as_str() {
                Some(s) => out.push(s.to_string()),
                None => {
                    let p = self.path.clone();
                    self.errs.push(ConfigError { path: p, message: format!("key {k:?} is not a string") });
                }
            }
        }
        out
    }

    fn finish(&mut self) {
        let mut unknown = Vec::new();
        for k in self.map.keys() {
            let name = match k {
                Value::String(s) => s.clone(),
                other => format!("{other:?}"),
            };
            if !self.used.contains(&name) {
                unknown.push(name);
            }
        }
        for name in unknown {
            let path = self.key_path(&name);
            self.errs.push(ConfigError { path, message: "unknown key".into() });
        }
        self.used.clear();
        self.used.extend(self.map.keys().filter_map(|k| k.as_str().map(str::to_string)));
    }

    /// An optional section; absent means all defaults.
    fn section(&mut self, key: &str) -> Section<'a, '_> {
        let path = self.key_path(key);
        let map = match self.get(key) {
            Some(Value::Mapping(m)) => m,
            Some(_) => {
                self.error(key, "must be a mapping of keys");
                EMPTY.get_or_init(Mapping::new)
            }
            None => EMPTY.get_or_init(Mapping::new),
        };
        Section::new(map, path, self.errs, self.base)
    }

    fn opt_section(&mut self, key: &str) -> Option<Section<'a, '_>> {
        let v = self.get(key)?;
        match v {
            Value::Mapping(m) => {
                let path = self.key_path(key);
                Some(Section::new(m, path, self.errs, self.base))
            }
            _ => {
                self.error(key, "must be a mapping of keys");
                None
            }
        }
    }

    fn req_section(&mut self, key: &str) -> Option<Section<'a, '_>> {
        if self.map.get(key).is_none_or(|v| v.is_null()) {
            self.used.insert(key.to_string());
            self.error(key, "missing");
            return None;
        }
        self.opt_section(key)
    }

    fn opt_string(&mut self, key: &str) -> Option<String> {
        let v = self.get(key)?;
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => {
                self.error(key, "must be a string");
                None
            }
        }
    }

    fn string_req(&mut self, key: &str) -> Option<String> {
        let v = self.opt_string(key);
        if v.is_none() && !self.errs.iter().any(|e| e.path == self.key_path(key)) {
            self.error(key, "missing");
        }
        v
    }

    fn string_or(&mut self, key: &str, default: &str) -> String {
        self.opt_string(key).unwrap_or_else(|| default.to_string())
    }

    fn string_list_or(&mut self, key: &str, default: &[&str]) -> Vec<String> {
        let Some(v) = self.get(key) else {
            return default.iter().map(|s| s.to_string()).collect();
        };
        match v {
            Value::Sequence(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.as_str() {
                        Some(s) => out.push(s.to_string()),
                        None => self.error(&format!("{key}[{i}]"), "must be a string"),
                    }
                }
                out
            }
            _ => {
                self.error(key, "must be a list");
                Vec::new()
            }
        }
    }

    fn parse_req<T: std::str::FromStr>(&mut self, key: &str, what: &str) -> Option<T> {
        let s = self.string_req(key)?;
        match s.parse::<T>() {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(key, &format!("'{s}' is not {what}"));
                None
            }
        }
    }

    fn bool_or(&mut self, key: &str, default: bool) -> bool {
        match self.get(key) {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.error(key, "must be true or false");
                default
            }
        }
    }

    fn uint_or(&mut self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        let Some(v) = self.get(key) else { return default };
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => n,
            Some(n) => {
                self.error(key, &format!("{n} is out of range ({min}..={max})"));
                default
            }
            None => {
                self.error(key, "must be a whole number");
                default
            }
        }
    }

    fn duration_or(&mut self, key: &str, default: Duration) -> Duration {
        let Some(s) = self.opt_string(key) else { return default };
        match parse_duration(&s) {
            Ok(d) if d.is_zero() => {
                self.error(key, "must be longer than zero");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.error(key, &e);
                default
            }
        }
    }

    fn url_req(&mut self, key: &str, schemes: &[&str]) -> Option<url::Url> {
        let s = self.string_req(key)?;
        match url::Url::parse(&s) {
            Ok(u) if schemes.contains(&u.scheme()) && u.host_str().is_some_and(|h| !h.is_empty()) => Some(u),
            Ok(_) => {
                self.error(key, &format!("'{s}' must be an {} URL with a host", schemes.join(" or ")));
                None
            }
            Err(e) => {
                self.error(key, &format!("'{s}' is not a URL ({e})"));
                None
            }
        }
    }

    fn opt_url_string(&mut self, key: &str) -> Option<String> {
        let s = self.opt_string(key)?;
        let ok = s.starts_with('/') && !s.starts_with("//")
            || url::Url::parse(&s).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
        if !ok {
            self.error(key, &format!("'{s}' is not an http(s) URL or an absolute path"));
            return None;
        }
        Some(s)
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let path = PathBuf::from(p);
        if path.is_absolute() {
            path
        } else {
            self.base.join(path)
        }
    }

    fn opt_path(&mut self, key: &str) -> Option<PathBuf> {
        let s = self.opt_string(key)?;
        if s.is_empty() {
            self.error(key, "must not be empty");
            return None;
        }
        Some(self.resolve(&s))
    }

    fn path_req(&mut self, key: &str) -> Option<PathBuf> {
        let s = self.string_req(key)?;
        if s.is_empty() {
            self.error(key, "must not be empty");
            return None;
        }
        Some(self.resolve(&s))
    }

    fn opt_existing_file(&mut self, key: &str) -> Option<PathBuf> {
        let p = self.opt_path(key)?;
        if !p.is_file() {
            self.error(key, &format!("{} does not exist or is not a file", p.display()));
            return None;
        }
        Some(p)
    }

    fn existing_file_req(&mut self, key: &str) -> Option<PathBuf> {
        let p = self.path_req(key)?;
        if !p.is_file() {
            self.error(key, &format!("{} does not exist or is not a file", p.display()));
            return None;
        }
        Some(p)
    }

    fn header_name_or(&mut self, key: &str, default: &str) -> String {
        let name = self.string_or(key, default);
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            self.error(key, &format!("'{name}' is not a header name (letters, digits and '-')"));
        }
        name
    }

    /// A secret from a file (`key`) or an environment variable. Files must
    /// not be readable by group or others. Each non-empty line is one key
    /// of at least 32 bytes.
    /// Keys from a file (or the environment), one per line. Every problem
    /// of the file is reported, not just the first: a key file that is too
    /// short *and* readable by others gets both messages.
    fn secret_keys(&mut self, key: &str, env_name: &str, env: &dyn Env) -> Option<Vec<Vec<u8>>> {
        let (text, origin, mut ok) = match (self.opt_path(key), env.var(env_name)) {
            (Some(p), _) => {
                let (text, problems) = read_secret_file_all(&p);
                let ok = problems.is_empty();
                for e in problems {
                    self.error(key, &e);
                }
                (text?, p.display().to_string(), ok)
            }
            (None, Some(v)) => (v, env_name.to_string(), true),
            (None, None) => {
                self.error(
                    key,
                    &format!("missing (or set the environment variable {env_name}); create a key with `openssl rand -hex 32 > FILE && chmod 600 FILE`"),
                );
                return None;
            }
        };
        let keys: Vec<Vec<u8>> = text
            .split(['\n', ','])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| l.as_bytes().to_vec())
            .collect();
        if keys.is_empty() {
            self.error(key, &format!("{origin} holds no key; create one with `openssl rand -hex 32`"));
            return None;
        }
        for (i, k) in keys.iter().enumerate() {
            if k.len() < 32 {
                self.error(key, &format!("key {} in {origin} is {} bytes; at least 32 are needed (`openssl rand -hex 32`)", i + 1, k.len()));
                ok = false;
            }
        }
        ok.then_some(keys)
    }

    fn secret_string(&mut self, key: &str, env_name: &str, env: &dyn Env) -> Option<String> {
        match (self.opt_path(key), env.var(env_name)) {
            (Some(p), _) => match read_secret_file(&p) {
                Ok(t) => Some(t.trim_end_matches(['\n', '\r']).to_string()),
                Err(e) => {
                    self.error(key, &e);
                    None
                }
            },
            (None, v) => v,
        }
    }
}

/// A secret file's text (if it can be read) and every problem with it.
fn read_secret_file_all(p: &Path) -> (Option<String>, Vec<String>) {
    use std::os::unix::fs::PermissionsExt;
    let mut problems = Vec::new();
    match std::fs::metadata(p) {
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => problems.push(format!(
            "{} is readable by group or others (mode {:o}); run `chmod 600 {}`",
            p.display(),
            meta.permissions().mode() & 0o777,
            p.display()
        )),
        Ok(_) => {}
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                format!("; create it with `openssl rand -hex 32 > {0} && chmod 600 {0}`", p.display())
            } else {
                String::new()
            };
            return (None, vec![format!("cannot read {}: {e}{hint}", p.display())]);
        }
    }
    match std::fs::read_to_string(p) {
        Ok(t) => (Some(t), problems),
        Err(e) => {
            problems.push(format!("cannot read {}: {e}", p.display()));
            (None, problems)
        }
    }
}

fn read_secret_file(p: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is readable by group or others (mode {:o}); run `chmod 600 {}`",
            p.display(),
            meta.permissions().mode() & 0o777,
            p.display()
        ));
    }
    std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The environment as a map (also `reload`'s tests).
    pub(crate) struct MapEnv(pub(crate) HashMap<String, String>);
    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    fn env_with_keys() -> MapEnv {
        MapEnv(HashMap::from([
            ("RIEGEL_SESSION_KEY".to_string(), "a".repeat(64)),
            ("RIEGEL_STORAGE_KEY".to_string(), "b".repeat(64)),
        ]))
    }

    pub(crate) const MINIMAL: &str = r#"
listen: "127.0.0.1:8080"
public_url: "https://portal.example.at"
upstream: { url: "http://127.0.0.1:9000" }
store: { path: "/tmp/riegel-test" }
secrets: {}
mail: { from: "Portal <portal@example.at>", outbox: "/tmp/outbox" }
"#;

    #[test]
    fn a_key_file_with_two_problems_reports_both_and_one_key_for_both_purposes_warns() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("riegel-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let short = dir.join("short.key");
        std::fs::write(&short, "too-short\n").expect("key");
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o644)).expect("mode");
        let yaml = MINIMAL.replace("secrets: {}", &format!("secrets: {{ session_key_file: {}, storage_key_file: {}/missing.key }}", short.display(), dir.display()));
        let errs = Config::parse(&yaml, Path::new("/"), &MapEnv(HashMap::new())).expect_err("invalid").0;
        let on = |k: &str| errs.iter().filter(|e| e.path == k).map(|e| e.message.clone()).collect::<Vec<_>>();
        let session = on("secrets.session_key_file");
        assert!(session.iter().any(|m| m.contains("readable by group or others")), "{errs:?}");
        assert!(session.iter().any(|m| m.contains("at least 32")), "{errs:?}");
        let storage = on("secrets.storage_key_file");
        assert!(storage.iter().any(|m| m.contains("openssl rand -hex 32")), "{errs:?}");
        // One key for both: valid, with a warning.
        let same = MapEnv(HashMap::from([
            ("RIEGEL_SESSION_KEY".to_string(), "a".repeat(64)),
            ("RIEGEL_STORAGE_KEY".to_string(), "a".repeat(64)),
        ]));
        let c = Config::parse(MINIMAL, Path::new("/"), &same).expect("valid");
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert_eq!(c.warnings[0].path, "secrets.storage_key_file");
        assert!(Config::parse(MINIMAL, Path::new("/"), &env_with_keys()).expect("valid").warnings.is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn minimal_config_parses_with_defaults() {
        let c = Config::parse(MINIMAL, Path::new("/"), &env_with_keys()).expect("valid");
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.session.idle_timeout, Duration::from_secs(1800));
        assert_eq!(c.headers.user, "Remote-User");
        assert!(!c.plain_http);
        assert_eq!(c.cookie_name(), "__Host-riegel_session");
        assert_eq!(c.secrets.session_keys.len(), 1);
        assert_eq!(c.password.argon2.memory_kib, 19456);
        assert_eq!(c.regulation.max_consecutive, 100);
        assert!(c.server.adaptive_scheduling);
        assert!(!c.server.work_stealing);
    }

    #[test]
    fn adaptive_scheduling_can_be_turned_off_and_takes_only_booleans() {
        let off = format!("{MINIMAL}server: {{ adaptive_scheduling: false }}\n");
        let c = Config::parse(&off, Path::new("/"), &env_with_keys()).expect("valid");
        assert!(!c.server.adaptive_scheduling);
        let bad = format!("{MINIMAL}server: {{ adaptive_scheduling: sometimes }}\n");
        let errs = Config::parse(&bad, Path::new("/"), &env_with_keys()).expect_err("invalid").0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "server.adaptive_scheduling", "{errs:?}");
    }

    #[test]
    fn server_timeouts_have_defaults_and_take_durations() {
        let c = Config::parse(MINIMAL, Path::new("/"), &env_with_keys()).expect("valid");
        assert_eq!(c.server.header_timeout, Duration::from_secs(10));
        assert_eq!(c.server.body_timeout, Duration::from_secs(10));
        assert_eq!(c.server.write_timeout, Duration::from_secs(60));
        let set = format!("{MINIMAL}server: {{ body_timeout: 3s, write_timeout: 2m }}\n");
        let c = Config::parse(&set, Path::new("/"), &env_with_keys()).expect("valid");
        assert_eq!((c.server.body_timeout, c.server.write_timeout), (Duration::from_secs(3), Duration::from_secs(120)));
        let bad = format!("{MINIMAL}server: {{ write_timeout: 0s, body_timeout: soon }}\n");
        let errs = Config::parse(&bad, Path::new("/"), &env_with_keys()).expect_err("invalid").0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths.len(), 2, "{errs:?}");
        assert!(paths.contains(&"server.write_timeout") && paths.contains(&"server.body_timeout"), "{errs:?}");
    }

    #[test]
    fn hash_queue_timeout_defaults_to_ten_seconds_and_takes_durations() {
        let c = Config::parse(MINIMAL, Path::new("/"), &env_with_keys()).expect("valid");
        assert_eq!(c.password.hash_queue_timeout, Duration::from_secs(10));
        let short = format!("{MINIMAL}password: {{ hash_queue_timeout: 250ms }}\n");
        let c = Config::parse(&short, Path::new("/"), &env_with_keys()).expect("valid");
        assert_eq!(c.password.hash_queue_timeout, Duration::from_millis(250));
        for bad in ["0s", "10", "soon", "-1s"] {
            let text = format!("{MINIMAL}password: {{ hash_queue_timeout: \"{bad}\" }}\n");
            let errs = Config::parse(&text, Path::new("/"), &env_with_keys()).expect_err(bad).0;
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert_eq!(errs[0].path, "password.hash_queue_timeout", "{bad}: {errs:?}");
        }
    }

    #[test]
    fn metrics_are_off_by_default_and_never_on_the_public_address() {
        let c = Config::parse(MINIMAL, Path::new("/"), &env_with_keys()).expect("valid");
        assert_eq!(c.metrics.listen, None);
        let on = format!("{MINIMAL}metrics: {{ listen: \"127.0.0.1:9464\" }}\n");
        let c = Config::parse(&on, Path::new("/"), &env_with_keys()).expect("valid");
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().expect("addr")));
        // The public address itself, or every address on its port.
        for bad in ["127.0.0.1:8080", "0.0.0.0:8080", "[::]:8080"] {
            let text = format!("{MINIMAL}metrics: {{ listen: \"{bad}\" }}\n");
            let errs = Config::parse(&text, Path::new("/"), &env_with_keys()).expect_err(bad).0;
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert_eq!(errs[0].path, "metrics.listen", "{bad}: {errs:?}");
        }
        for bad in ["nowhere", "9464"] {
            let text = format!("{MINIMAL}metrics: {{ listen: \"{bad}\" }}\n");
            let errs = Config::parse(&text, Path::new("/"), &env_with_keys()).expect_err(bad).0;
            assert_eq!(errs[0].path, "metrics.listen", "{bad}: {errs:?}");
        }
        let unknown = format!("{MINIMAL}metrics: {{ listen: \"127.0.0.1:9464\", path: /m }}\n");
        let errs = Config::parse(&unknown, Path::new("/"), &env_with_keys()).expect_err("unknown key").0;
        assert_eq!(errs[0].path, "metrics.path", "{errs:?}");
    }

    #[test]
    fn the_audit_file_needs_an_existing_directory_and_is_not_one() {
        let c = Config::parse(MINIMAL, Path::new("/"), &env_with_keys()).expect("valid");
        assert_eq!(c.log.audit_file, None);
        let dir = std::env::temp_dir();
        let ok = format!("{MINIMAL}log: {{ audit_file: audit.jsonl }}\n");
        let c = Config::parse(&ok, &dir, &env_with_keys()).expect("valid");
        assert_eq!(c.log.audit_file, Some(dir.join("audit.jsonl")), "relative to the config's directory");
        for (bad, says) in [("/nonexistent-riegel/audit.jsonl", "does not exist"), ("/tmp", "is a directory")] {
            let text = format!("{MINIMAL}log: {{ audit_file: {bad} }}\n");
            let errs = Config::parse(&text, Path::new("/"), &env_with_keys()).expect_err(bad).0;
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert_eq!(errs[0].path, "log.audit_file");
            assert!(errs[0].message.contains(says), "{bad}: {errs:?}");
        }
    }

    fn with_store(store: &str, env: &MapEnv) -> Result<Config, ConfigErrors> {
        Config::parse(&MINIMAL.replace(r#"store: { path: "/tmp/riegel-test" }"#, store), Path::new("/etc/riegel"), env)
    }

    fn errors(r: Result<Config, ConfigErrors>) -> Vec<ConfigError> {
        match r {
            Ok(_) => panic!("accepted"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn the_store_is_sled_or_postgres_never_both_and_the_url_is_a_secret() {
        use std::os::unix::fs::PermissionsExt;
        let env = env_with_keys();
        let c = Config::parse(MINIMAL, Path::new("/"), &env).expect("valid");
        match &c.store {
            StoreConfig::Sled { path, admin_socket } => {
                assert_eq!(path, Path::new("/tmp/riegel-test"));
                assert_eq!(admin_socket, Path::new("/tmp/riegel-test/admin.sock"));
            }
            other => panic!("{other:?}"),
        }
        let url = "postgres://riegel:s3cret@db.example.at:5432/riegel";
        let c = with_store(&format!("store: {{ postgres: {{ url: \"{url}\", pool_size: 4, timeout: 2s }} }}"), &env).expect("valid");
        let StoreConfig::Postgres(pg) = &c.store else { panic!("{:?}", c.store) };
        assert_eq!((pg.url.as_str(), pg.pool_size, pg.timeout), (url, 4, Duration::from_secs(2)));
        assert!(!format!("{c:?}").contains("s3cret"), "Debug shows the password");
        assert_eq!(c.store.sled_path(), None);
        // Both backends: one error, at the key.
        let errs = errors(with_store(&format!("store: {{ path: data, postgres: {{ url: \"{url}\" }} }}"), &env));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "store.postgres");
        // The admin socket is sled's.
        let errs = errors(with_store(&format!("store: {{ admin_socket: /tmp/a.sock, postgres: {{ url: \"{url}\" }} }}"), &env));
        assert_eq!(errs.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["store.admin_socket"]);
        // Neither.
        assert_eq!(errors(with_store("store: {}", &env))[0].path, "store.path");
        // A wrong scheme is refused without repeating the text.
        let errs = errors(with_store("store: { postgres: { url: \"mysql://u:s3cret@h/d\" } }", &env));
        assert_eq!(errs[0].path, "store.postgres.url");
        assert!(!errs[0].message.contains("s3cret"), "{errs:?}");
        // No URL anywhere.
        let errs = errors(with_store("store: { postgres: {} }", &env));
        assert!(errs[0].path == "store.postgres.url" && errs[0].message.contains("RIEGEL_POSTGRES_URL"), "{errs:?}");
        // From the environment.
        let mut env2 = env_with_keys();
        env2.0.insert("RIEGEL_POSTGRES_URL".into(), url.into());
        let c = with_store("store: { postgres: {} }", &env2).expect("valid");
        assert!(matches!(&c.store, StoreConfig::Postgres(pg) if pg.url == url));
        // From a file, readable by its owner only.
        let dir = std::env::temp_dir().join(format!("riegel-cfg-pg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("pg.url");
        std::fs::write(&f, format!("{url}\n")).expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let text = format!("store: {{ postgres: {{ url_file: {f:?} }} }}");
        let errs = errors(with_store(&text, &env));
        assert!(errs[0].path == "store.postgres.url_file" && errs[0].message.contains("chmod 600"), "{errs:?}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = with_store(&text, &env).expect("valid");
        assert!(matches!(&c.store, StoreConfig::Postgres(pg) if pg.url == url));
        // url and url_file both: choose one.
        let text = format!("store: {{ postgres: {{ url: \"{url}\", url_file: {f:?} }} }}");
        assert_eq!(errors(with_store(&text, &env))[0].path, "store.postgres.url");
        for bad in ["pool_size: 0", "timeout: 0s", "colour: red"] {
            let text = format!("store: {{ postgres: {{ url: \"{url}\", {bad} }} }}");
            let errs = errors(with_store(&text, &env));
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert!(errs[0].path.starts_with("store.postgres."), "{bad}: {errs:?}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn three_mistakes_are_all_reported_with_paths() {
        let text = r#"
listen: "127.0.0.1:8080"
public_url: "https://portal.example.at"
upstream: { url: "not a url" }
store: { path: "/tmp/x" }
secrets: {}
session: { idle_timeout: "soon" }
mail: { from: "Portal <portal@example.at>", outbox: "/tmp/o", colour: red }
"#;
        let errs = Config::parse(text, Path::new("/"), &env_with_keys()).expect_err("invalid").0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"upstream.url"), "{errs:?}");
        assert!(paths.contains(&"session.idle_timeout"), "{errs:?}");
        assert!(paths.contains(&"mail.colour"), "{errs:?}");
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn missing_sections_and_secrets_are_reported() {
        let errs = Config::parse("listen: x", Path::new("/"), &MapEnv(HashMap::new())).expect_err("invalid").0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for p in ["listen", "public_url", "upstream", "store", "secrets", "mail"] {
            assert!(paths.contains(&p), "{p} missing in {errs:?}");
        }
    }

    #[test]
    fn short_and_world_readable_key_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("riegel-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let short = dir.join("short.key");
        std::fs::write(&short, "tooshort\n").expect("write");
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let open = dir.join("open.key");
        std::fs::write(&open, "c".repeat(64)).expect("write");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let text = MINIMAL.replace(
            "secrets: {}",
            &format!("secrets: {{ session_key_file: {:?}, storage_key_file: {:?} }}", short, open),
        );
        let errs = Config::parse(&text, Path::new("/"), &MapEnv(HashMap::new())).expect_err("invalid").0;
        assert!(errs.iter().any(|e| e.path == "secrets.session_key_file" && e.message.contains("at least 32")), "{errs:?}");
        assert!(errs.iter().any(|e| e.path == "secrets.storage_key_file" && e.message.contains("chmod 600")), "{errs:?}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn key_rotation_reads_several_keys_first_signs() {
        let env = MapEnv(HashMap::from([
            ("RIEGEL_SESSION_KEY".to_string(), format!("{}\n{}\n", "n".repeat(40), "o".repeat(40))),
            ("RIEGEL_STORAGE_KEY".to_string(), "b".repeat(64)),
        ]));
        let c = Config::parse(MINIMAL, Path::new("/"), &env).expect("valid");
        assert_eq!(c.secrets.session_keys, vec![b"n".repeat(40), b"o".repeat(40)]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43200)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn plain_http_mode_drops_host_prefix() {
        let text = MINIMAL.replace("https://portal.example.at", "http://127.0.0.1:8080");
        let c = Config::parse(&text, Path::new("/"), &env_with_keys()).expect("valid");
        assert!(c.plain_http);
        assert_eq!(c.cookie_name(), "riegel_session");
    }

    #[test]
    fn public_url_with_path_is_refused() {
        let text = MINIMAL.replace("https://portal.example.at", "https://portal.example.at/app");
        let errs = Config::parse(&text, Path::new("/"), &env_with_keys()).expect_err("invalid").0;
        assert!(errs.iter().any(|e| e.path == "public_url"), "{errs:?}");
    }

    #[test]
    fn example_config_parses() {
        // The example names /etc paths for the key files; point them at real
        // files so the whole example is checked, keys and all.
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("riegel-example-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        for k in ["session.key", "storage.key"] {
            let p = dir.join(k);
            std::fs::write(&p, "d".repeat(64)).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        let text = include_str!("../config/riegel.example.yaml")
            .replace("/etc/riegel/session.key", &dir.join("session.key").display().to_string())
            .replace("/etc/riegel/storage.key", &dir.join("storage.key").display().to_string());
        let c = Config::parse(&text, &dir, &MapEnv(HashMap::new())).expect("example config is valid");
        assert_eq!(c.branding.company, "IMMO PRO Immobilien GmbH");
        assert_eq!(c.totp.issuer, "IMMO PRO");
        assert_eq!(c.branding.languages, vec![Language::De, Language::En]);
        assert_eq!(c.branding.contact.phone.as_deref(), Some("+43 1 234 56 78"));
        assert_eq!(c.password.hash_queue_timeout, Duration::from_secs(10));
        assert!(matches!(c.mail.transport, MailTransport::Smtp(_)));
        let _ = std::fs::remove_dir_all(dir);
    }

    fn branding(extra: &str) -> Result<Config, Vec<ConfigError>> {
        let text = format!("{MINIMAL}{extra}");
        Config::parse(&text, Path::new("/"), &env_with_keys()).map_err(|e| e.0)
    }

    #[test]
    fn languages_default_to_the_one_language_and_the_default_comes_first() {
        let c = branding("").expect("valid");
        assert_eq!((c.branding.language, c.branding.languages.clone()), (Language::De, vec![Language::De]));
        let c = branding("branding: { language: en }\n").expect("valid");
        assert_eq!((c.branding.language, c.branding.languages.clone()), (Language::En, vec![Language::En]));
        let c = branding("branding: { languages: [de, en] }\n").expect("valid");
        assert_eq!((c.branding.language, c.branding.languages.clone()), (Language::De, vec![Language::De, Language::En]));
        let c = branding("branding: { languages: [de, en], language: en }\n").expect("valid");
        assert_eq!((c.branding.language, c.branding.languages.clone()), (Language::En, vec![Language::En, Language::De]));
        let c = branding("branding: { languages: [en] }\n").expect("valid");
        assert_eq!(c.branding.language, Language::En);
        let c = branding("branding: { languages: null }\n").expect("valid");
        assert_eq!(c.branding.languages, vec![Language::De]);
    }

    #[test]
    fn language_mistakes_are_reported_with_their_key_paths() {
        let errs = branding("branding: { languages: [de, fr, de, 3], language: en }\n").expect_err("invalid");
        let all: Vec<String> = errs.iter().map(ToString::to_string).collect();
        for want in [
            "branding.languages[1]: 'fr' is not a language riegel ships (de, en)",
            "branding.languages[2]: 'de' is listed twice",
            "branding.languages[3]: must be a string",
            "branding.language: 'en' is not in branding.languages",
        ] {
            assert!(all.iter().any(|e| e.starts_with(want)), "{want} missing in {all:#?}");
        }
        assert_eq!(all.len(), 4, "{all:#?}");
        let errs = branding("branding: { languages: [] }\n").expect_err("invalid");
        assert_eq!(errs[0].path, "branding.languages");
        let errs = branding("branding: { languages: de }\n").expect_err("invalid");
        assert_eq!((errs[0].path.as_str(), errs[0].message.as_str()), ("branding.languages", "must be a list"));
        let errs = branding("branding: { language: fr }\n").expect_err("invalid");
        assert_eq!(errs[0].path, "branding.language");
    }

    #[test]
    fn timezone_contact_and_reenrol_proof() {
        let c = branding("").expect("valid");
        assert_eq!(c.branding.timezone, "Europe/Vienna");
        assert_eq!(c.branding.contact, Contact::default());
        assert_eq!(c.totp.reenrol_proof, ReenrolProof::Email);
        let c = branding(
            "branding: { timezone: America/New_York, contact: { phone: \"+43 1 234 56-78\", email: hv@example.at } }\ntotp: { reenrol_proof: none }\n",
        )
        .expect("valid");
        assert_eq!(c.branding.timezone, "America/New_York");
        assert_eq!(c.branding.contact.phone.as_deref(), Some("+43 1 234 56-78"));
        assert_eq!(c.branding.contact.email.as_deref(), Some("hv@example.at"));
        assert_eq!(c.totp.reenrol_proof, ReenrolProof::None);
        let errs = branding(
            "branding: { timezone: Europe/Wien, contact: { phone: \"ruf an\", email: nobody, fax: 1 } }\ntotp: { reenrol_proof: sms }\n",
        )
        .expect_err("invalid");
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["branding.timezone", "branding.contact.phone", "branding.contact.email", "branding.contact.fax", "totp.reenrol_proof"],
            "{errs:#?}"
        );
    }

    fn portal(extra: &str) -> Result<Config, Vec<ConfigError>> {
        Config::parse(&format!("{MINIMAL}{extra}"), Path::new("/"), &env_with_keys()).map_err(|e| e.0)
    }

    #[test]
    fn first_factor_defaults_to_local_and_portal_login_needs_portal() {
        let c = portal("").expect("valid");
        assert_eq!((c.first_factor, c.portal_login.is_none()), (FirstFactor::Local, true));
        let errs = portal("portal_login: { form_url: /login }\n").expect_err("portal_login without portal");
        assert!(errs.iter().any(|e| e.path == "portal_login" && e.message.contains("first_factor: portal")), "{errs:?}");
        let errs = portal("first_factor: portal\n").expect_err("portal without portal_login");
        assert!(errs.iter().any(|e| e.path == "portal_login" && e.message == "missing"), "{errs:?}");
        let errs = portal("first_factor: ldap\n").expect_err("unknown");
        assert!(errs.iter().any(|e| e.path == "first_factor"), "{errs:?}");
    }

    #[test]
    fn a_full_portal_login_section_parses() {
        let c = portal(
            "first_factor: portal\npublic_paths: [/favicon.ico, /password-reset]\nportal_login:\n  form_url: /login\n  post_url: /login?do=1\n  \
             username_field: user\n  password_field: pass\n  success: { redirect_not_to: [/login], set_cookie: SESSIONID }\n  \
             session_cookies: [SESSIONID, XSRF-TOKEN]\n  logout_url: /logout\n  forgot_url: /password-reset\n  timeout: 5s\n",
        )
        .expect("valid");
        assert_eq!(c.first_factor, FirstFactor::Portal);
        let p = c.portal_login.expect("section");
        assert_eq!((p.form_url.as_str(), p.post_url.as_str(), p.logout_url.as_str()), ("/login", "/login?do=1", "/logout"));
        assert_eq!((p.username_field.as_str(), p.password_field.as_str()), ("user", "pass"));
        assert_eq!(p.success.redirect_not_to, Some(vec!["/login".to_string()]));
        assert_eq!(p.success.set_cookie.as_deref(), Some("SESSIONID"));
        assert_eq!(p.session_cookies, vec!["SESSIONID", "XSRF-TOKEN"]);
        assert_eq!(p.forgot_url.as_deref(), Some("/password-reset"));
        assert_eq!(p.timeout, Duration::from_secs(5));
    }

    #[test]
    fn every_portal_login_mistake_is_reported_with_its_key_path() {
        let errs = portal(
            "first_factor: portal\nportal_login:\n  form_url: http://evil.example/login\n  post_url: //evil.example/login\n  \
             username_field: pw\n  password_field: pw\n  success: { set_cookie: OTHER }\n  session_cookies: [riegel_session, 'a b']\n  \
             forgot_url: /reset\n  colour: red\n  timeout: 1h\n",
        )
        .expect_err("invalid");
        for path in [
            "portal_login.form_url",
            "portal_login.post_url",
            "portal_login.logout_url",
            "portal_login.password_field",
            "portal_login.success.set_cookie",
            "portal_login.session_cookies[0]",
            "portal_login.session_cookies[1]",
            "portal_login.forgot_url",
            "portal_login.colour",
            "portal_login.timeout",
        ] {
            assert!(errs.iter().any(|e| e.path == path), "{path} not in {errs:?}");
        }
        let errs = portal("first_factor: portal\nportal_login: { form_url: /l, post_url: /l, logout_url: /o, success: {}, session_cookies: [] }\n")
            .expect_err("no rule, no cookies");
        assert!(errs.iter().any(|e| e.path == "portal_login.success.redirect_not_to" && e.message.contains("at least one rule")), "{errs:?}");
        assert!(errs.iter().any(|e| e.path == "portal_login.session_cookies"), "{errs:?}");
        let errs = portal("first_factor: portal\nportal_login: { form_url: /l, post_url: /l, logout_url: /o, success: { set_cookie: S }, session_cookies: [S], timeout: 0s }\n")
            .expect_err("no time at all");
        assert!(errs.iter().any(|e| e.path == "portal_login.timeout"), "{errs:?}");
        let errs = portal("first_factor: portal\nportal_login: { form_url: /l, post_url: /l, logout_url: /o, session_cookies: [S] }\n")
            .expect_err("no success");
        assert!(errs.iter().any(|e| e.path == "portal_login.success"), "{errs:?}");
    }
}
