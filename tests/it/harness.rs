//! One harness for every integration test: riegel in-process on an
//! ephemeral loopback port with an adjustable clock, the demo portal as the
//! echo upstream, and a real SMTP server (a small in-process sink that
//! speaks SMTP to lettre) on loopback.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use riegel::clock::OffsetClock;
use riegel::config::{Config, ProcessEnv};
use riegel::store::prelude::*;
use riegel::web::Services;

/// Runs a future to completion on this test thread (the store and the
/// admin commands are async; the tests are not).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    thread_local! {
        static RT: tokio::runtime::Runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("test runtime");
    }
    RT.with(|rt| rt.block_on(f))
}

static N: AtomicU32 = AtomicU32::new(0);

pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("riegel-it-{}-{tag}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tempdir");
    d
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A tool the tests need. On CI (CI set) a missing tool fails the test;
/// elsewhere the caller may skip.
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file())
    });
    if found.is_none() && std::env::var_os("CI").is_some() {
        panic!("{name} is required on CI (CI is set) but is not installed");
    }
    found
}

// ---------------- SMTP sink ----------------

/// One mail as the SMTP server received it.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub from: String,
    pub to: Vec<String>,
    /// The message as it came over the wire.
    pub data: String,
}

impl ReceivedMail {
    /// The message parsed by a real MIME parser (mail-parser).
    pub fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default().parse(self.data.as_bytes()).expect("a MIME message")
    }

    pub fn subject(&self) -> String {
        self.parsed().subject().unwrap_or("").to_string()
    }

    /// The decoded plain-text body (quoted-printable or base64 undone).
    pub fn plain(&self) -> String {
        self.parsed().body_text(0).map(|t| t.into_owned()).unwrap_or_default()
    }

    /// The decoded HTML body, if any.
    pub fn html(&self) -> Option<String> {
        self.parsed().body_html(0).map(|t| t.into_owned())
    }

    /// Subject and every decoded text part, for searching a mail's text.
    pub fn text(&self) -> String {
        format!("{}\n{}\n{}", self.subject(), self.plain(), self.html().unwrap_or_default())
    }
}

/// The state a sink handler shares: what arrived, and whether the server
/// is "down" (it then refuses every session with a transient error).
#[derive(Clone, Default)]
struct SinkState {
    mails: Arc<Mutex<Vec<ReceivedMail>>>,
    down: Arc<AtomicBool>,
}

/// A mailin-embedded handler: collects each mail.
#[derive(Clone, Default)]
struct SinkHandler {
    state: SinkState,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

impl mailin_embedded::Handler for SinkHandler {
    fn helo(&mut self, _ip: std::net::IpAddr, _domain: &str) -> mailin_embedded::Response {
        if self.state.down.load(Ordering::SeqCst) {
            return mailin_embedded::response::INTERNAL_ERROR;
        }
        mailin_embedded::response::OK
    }
    fn mail(&mut self, _ip: std::net::IpAddr, _domain: &str, from: &str) -> mailin_embedded::Response {
        if self.state.down.load(Ordering::SeqCst) {
            return mailin_embedded::response::INTERNAL_ERROR;
        }
        self.from = from.to_string();
        self.to.clear();
        mailin_embedded::response::OK
    }
    fn rcpt(&mut self, to: &str) -> mailin_embedded::Response {
        self.to.push(to.to_string());
        mailin_embedded::response::OK
    }
    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, _to: &[String]) -> mailin_embedded::Response {
        self.data.clear();
        mailin_embedded::response::OK
    }
    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }
    fn data_end(&mut self) -> mailin_embedded::Response {
        if self.state.down.load(Ordering::SeqCst) {
            return mailin_embedded::response::INTERNAL_ERROR;
        }
        let mail = ReceivedMail { from: self.from.clone(), to: self.to.clone(), data: String::from_utf8_lossy(&self.data).into_owned() };
        self.state.mails.lock().expect("lock").push(mail);
        mailin_embedded::response::OK
    }
}

/// A real SMTP server (mailin-embedded) on a loopback port; lettre talks
/// the whole SMTP dialogue to it. The one SMTP sink of the tests.
pub struct SmtpSink {
    pub addr: SocketAddr,
    pub mails: Arc<Mutex<Vec<ReceivedMail>>>,
    down: Arc<AtomicBool>,
}

impl SmtpSink {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind smtp");
        let addr = listener.local_addr().expect("addr");
        let state = SinkState::default();
        let (mails, down) = (state.mails.clone(), state.down.clone());
        let mut server = mailin_embedded::Server::new(SinkHandler { state, ..SinkHandler::default() });
        server.with_name("sink.test").with_num_threads(8).with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        SmtpSink { addr, mails, down }
    }

    /// From now on every delivery fails with a transient error (421/451),
    /// as from a server that is down; `up` undoes it.
    pub fn stop(&self) {
        self.down.store(true, Ordering::SeqCst);
    }

    pub fn up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let start = Instant::now();
        loop {
            let got = self.mails.lock().expect("lock").clone();
            if got.len() >= n || start.elapsed() > timeout {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---------------- the store backend ----------------

/// The tests run on sled unless `RIEGEL_TEST_STORE=postgres`; then every
/// [`Riegel`] gets a fresh PostgreSQL database of its own, dropped at the end.
pub fn on_postgres() -> bool {
    match std::env::var("RIEGEL_TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("sled") | Err(_) => false,
        Ok(other) => panic!("RIEGEL_TEST_STORE is sled or postgres, not {other:?}"),
    }
}

/// PostgreSQL for the tests: `RIEGEL_TEST_POSTGRES_URL` names a role that
/// may create databases.
pub mod pg {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    pub const DEFAULT_URL: &str = "postgres://riegel_test:riegel@127.0.0.1:5432/postgres";

    pub const HOW_TO_START: &str = "start one with:
    apt-get install postgresql && pg_ctlcluster 15 main start
    runuser -u postgres -- psql -c \"create role riegel_test login createdb password 'riegel'\"
  or point RIEGEL_TEST_POSTGRES_URL at a role that may create databases";

    pub fn admin_url() -> String {
        std::env::var("RIEGEL_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_string())
    }

    /// Runs statements one at a time on a connection of its own.
    pub fn sql(url: &str, sql: &str) -> Result<Vec<Vec<String>>, String> {
        let (url, sql) = (url.to_string(), sql.to_string());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut cfg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| e.to_string())?;
                cfg.connect_timeout(Duration::from_secs(3));
                let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
                let driver = tokio::spawn(conn);
                let mut rows = Vec::new();
                for stmt in sql.split(';').filter(|s| !s.trim().is_empty()) {
                    match client.simple_query(stmt).await {
                        Ok(msgs) => {
                            for m in msgs {
                                if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                                    rows.push((0..r.len()).map(|i| r.get(i).unwrap_or("").to_string()).collect());
                                }
                            }
                        }
                        Err(e) => return Err(e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string())),
                    }
                }
                drop(client);
                let _ = driver.await;
                Ok(rows)
            })
        })
        .join()
        .map_err(|_| "sql thread panicked".to_string())?
    }

    /// A fresh database, dropped (connections and all) when this is.
    pub struct TestDb {
        pub url: String,
        pub name: String,
    }

    impl TestDb {
        /// `None` after saying how to start a server when none answers,
        /// unless `CI` is set (or `required`): then it panics.
        pub fn create(tag: &str, required: bool) -> Option<TestDb> {
            static N: AtomicU32 = AtomicU32::new(0);
            let name = format!("riegel_it_{}_{}_{tag}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
            if let Err(e) = sql(&admin_url(), &format!("DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}")) {
                let msg = format!("no PostgreSQL server for the tests at RIEGEL_TEST_POSTGRES_URL ({e}); {HOW_TO_START}");
                if required || std::env::var_os("CI").is_some() {
                    panic!("{msg}");
                }
                eprintln!("SKIPPED (PostgreSQL): {msg}");
                return None;
            }
            let mut url = url::Url::parse(&admin_url()).expect("RIEGEL_TEST_POSTGRES_URL is a URL");
            url.set_path(&format!("/{name}"));
            Some(TestDb { url: url.to_string(), name })
        }

        pub fn sql(&self, q: &str) -> Vec<Vec<String>> {
            sql(&self.url, q).unwrap_or_else(|e| panic!("{q}: {e}"))
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let _ = sql(&admin_url(), &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }

    /// Writes the URL to `dir/pg.url` (mode 600) and returns the YAML of
    /// the `store:` section that reads it.
    pub fn store_yaml(db: &TestDb, dir: &std::path::Path) -> String {
        use std::os::unix::fs::PermissionsExt;
        let f = dir.join("pg.url");
        std::fs::write(&f, &db.url).expect("url file");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        "store:\n  postgres:\n    url_file: pg.url\n".to_string()
    }
}

// ---------------- riegel ----------------

pub struct Riegel {
    pub addr: SocketAddr,
    pub base: String,
    pub clock: OffsetClock,
    pub services: Arc<Services>,
    /// What the server's admin commands end besides the sessions.
    session_ends: Arc<dyn riegel::admin::SessionEnds>,
    /// What the proxy serves with (a reload replaces its services).
    pub live: Arc<riegel::proxy::Live>,
    pub mailer: Option<Arc<riegel::mail::Mailer>>,
    pub upstream: SocketAddr,
    pub smtp: SmtpSink,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// The database of this instance (`RIEGEL_TEST_STORE=postgres`).
    pub db: Option<pg::TestDb>,
}

pub struct Options {
    /// Extra YAML appended to the generated config.
    pub extra_yaml: String,
    /// Replace the upstream address (e.g. a closed port).
    pub upstream: Option<SocketAddr>,
    pub upstream_read_timeout: &'static str,
    /// branding.language
    pub language: &'static str,
    /// More keys under `branding:`, each line indented by two spaces.
    pub branding_yaml: String,
    /// public_url is https (the test adds a `tls:` listener).
    pub https: bool,
    /// More keys under `server:`, each line indented by two spaces.
    pub server_yaml: String,
    /// More keys under `password:` (after [`TEST_ARGON`]'s), each line
    /// indented by two spaces.
    pub password_yaml: String,
    /// More keys under `totp:`, each line indented by two spaces.
    pub totp_yaml: String,
}

impl Default for Options {
    fn default() -> Self {
        Options { extra_yaml: String::new(), upstream: None, upstream_read_timeout: "2s", language: "de", branding_yaml: String::new(), https: false, server_yaml: String::new(), password_yaml: String::new(), totp_yaml: String::new() }
    }
}

/// Argon2 parameters at the allowed minimum keep the tests quick; the
/// defaults are measured in benches/.
pub const TEST_ARGON: &str = "password:\n  argon2: { memory_kib: 19456, iterations: 2, parallelism: 1 }\n  max_concurrent_hashes: 4\n";

impl Riegel {
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Self {
        let dir = tempdir("riegel");
        for k in ["session.key", "storage.key"] {
            riegel::demo::write_key(&dir.join(k)).expect("key");
        }
        let upstream = match opts.upstream {
            Some(u) => u,
            None => riegel::demo::start_portal("127.0.0.1:0".parse().expect("addr")).expect("portal"),
        };
        let smtp = SmtpSink::start();
        let db = on_postgres().then(|| pg::TestDb::create("riegel", true)).flatten();
        let store_yaml = match &db {
            Some(db) => pg::store_yaml(db, &dir),
            None => format!("store:\n  path: \"{}\"\n", dir.join("data").display()),
        };
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let yaml = format!(
            r#"listen: "{addr}"
public_url: "{scheme}://{addr}"
upstream:
  url: "http://{upstream}"
  connect_timeout: 1s
  read_timeout: {read}
{store}secrets:
  session_key_file: session.key
  storage_key_file: storage.key
server:
  # Pingora's one-runtime-per-thread mode keeps its handles in a
  # process-wide thread-local, which does not survive many servers
  # starting and stopping in one test process; `riegel serve` runs one.
  work_stealing: true
{server}mail:
  from: "IMMO PRO Portal <portal@example.at>"
  smtp: {{ host: "127.0.0.1", port: {smtp}, tls: none, timeout: 2s }}
  max_attempts: 2
branding:
  company: "IMMO PRO Immobilien GmbH"
  language: {lang}
{branding}totp:
  issuer: "IMMO PRO"
{totp}{TEST_ARGON}{password}{extra}"#,
            read = opts.upstream_read_timeout,
            store = store_yaml,
            smtp = smtp.addr.port(),
            extra = opts.extra_yaml,
            lang = opts.language,
            scheme = if opts.https { "https" } else { "http" },
            server = opts.server_yaml,
            branding = opts.branding_yaml,
            password = opts.password_yaml,
            totp = opts.totp_yaml,
        );
        let config_path = dir.join("riegel.yaml");
        std::fs::write(&config_path, &yaml).expect("config");
        let cfg = Config::parse(&yaml, &dir, &ProcessEnv).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let clock = OffsetClock::new();
        let app = riegel::app::build(cfg, Arc::new(clock.clone()), None).expect("build services");
        let services = app.services.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let live = app.live.clone();
        let served = app.live.clone();
        std::thread::spawn(move || {
            let sd = riegel::proxy::ChannelShutdown(tokio::sync::Mutex::new(rx));
            riegel::proxy::run_live(live, Some(Box::new(sd))).expect("proxy run");
        });
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "riegel did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Riegel { base: format!("http://{addr}"), addr, clock, services, session_ends: app.session_ends, live: served, mailer: app.mailer, upstream, smtp, dir, config_path, shutdown: Some(tx), db }
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    /// Adds a user through the same code as `riegel user add`.
    pub fn add_user(&self, username: &str, email: Option<&str>, password: Option<&str>) {
        let hash = password.map(|p| self.services.hasher.hash(p, &riegel::auth::OsRandom).expect("hash"));
        let r = self.admin(riegel::admin::AdminRequest::Add {
            user: riegel::admin::NewUserSpec {
                username: username.into(),
                email: email.map(Into::into),
                display_name: format!("{username} Muster"),
                password_hash: hash,
            },
        });
        assert!(r.ok, "{}", r.message);
    }

    pub fn admin(&self, req: riegel::admin::AdminRequest) -> riegel::admin::AdminResponse {
        block_on(riegel::admin::execute(self.services.store.as_ref(), &self.clock, &self.services.audit_log, "cli", self.session_ends.as_ref(), req))
    }

    /// The stored user record (from the store riegel runs on).
    pub fn user(&self, login: &str) -> Option<riegel::store::User> {
        block_on(self.services.store.find_user(login)).expect("store")
    }

    pub fn counter(&self, key: &riegel::store::CounterKey) -> riegel::store::Counter {
        block_on(self.services.store.counter(key)).expect("store")
    }

    pub fn now(&self) -> i64 {
        use riegel::clock::Clock;
        self.clock.now()
    }
}

impl Drop for Riegel {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.smtp.stop();
    }
}

// ---------------- HTTP client ----------------

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub raw_body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
    pub fn session_cookie_set(&self) -> bool {
        self.headers_named("set-cookie").iter().any(|c| c.starts_with("riegel_session=") && !c.starts_with("riegel_session=;"))
    }
    pub fn location(&self) -> &str {
        self.header("location").unwrap_or("")
    }
    /// Header lines the echo portal received: (name as sent, value).
    pub fn echoed_headers(&self) -> Vec<(String, String)> {
        let start = self.body.find("<pre id=\"headers\">").map(|i| i + "<pre id=\"headers\">".len());
        let Some(start) = start else { return vec![] };
        let end = self.body[start..].find("</pre>").map(|e| start + e).unwrap_or(self.body.len());
        self.body[start..end]
            .lines()
            .filter_map(|l| l.split_once(": ").map(|(k, v)| (html_unescape(k), html_unescape(v))))
            .collect()
    }
    pub fn echoed(&self, name: &str) -> Vec<String> {
        self.echoed_headers().into_iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v).collect()
    }
    /// The value of `<input name=NAME value=...>` in the page.
    pub fn input(&self, name: &str) -> Option<String> {
        input_value(&self.body, name)
    }
}

pub fn html_unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#x27;", "'").replace("&#39;", "'").replace("&#x2f;", "/").replace("&#x2F;", "/").replace("&amp;", "&")
}

pub fn input_value(html: &str, name: &str) -> Option<String> {
    let needle = format!("name=\"{name}\"");
    let mut from = 0;
    while let Some(i) = html[from..].find(&needle) {
        let at = from + i;
        let tag_start = html[..at].rfind('<')?;
        let tag_end = at + html[at..].find('>')?;
        let tag = &html[tag_start..tag_end];
        if tag.starts_with("<input") {
            if let Some(v) = tag.find("value=\"") {
                let rest = &tag[v + 7..];
                let end = rest.find('"')?;
                return Some(html_unescape(&rest[..end]));
            }
        }
        from = tag_end;
    }
    None
}

/// Sends raw bytes, reads the whole response (the request asks to close).
pub fn raw_request(addr: SocketAddr, raw: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    s.write_all(raw).expect("write");
    // Read the head, then exactly the body: some servers keep the
    // connection open despite `Connection: close`.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)));
            let chunked = head.lines().any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
            let body = &buf[head_end + 4..];
            let done = match len {
                Some(n) => body.len() >= n,
                None if chunked => body.ends_with(b"0\r\n\r\n"),
                None => false,
            };
            if done {
                break;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> Resp {
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
    let headers: Vec<(String, String)> = lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    let mut body = buf[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
    } else if let Some(len) = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.parse::<usize>().ok()) {
        body.truncate(len);
    }
    Resp { status, headers, body: String::from_utf8_lossy(&body).into_owned(), raw_body: body }
}

fn dechunk(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(nl) = b[i..].windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[i..i + nl]).trim(), 16).unwrap_or(0);
        i += nl + 2;
        if size == 0 || i + size > b.len() {
            break;
        }
        out.extend_from_slice(&b[i..i + size]);
        i += size + 2;
    }
    out
}

pub fn form_encode(fields: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish()
}

/// A browser-like client with a cookie jar.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub jar: BTreeMap<String, String>,
    pub extra: Vec<(String, String)>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Client { addr, jar: BTreeMap::new(), extra: vec![] }
    }

    fn cookie_header(&self) -> Option<String> {
        if self.jar.is_empty() {
            return None;
        }
        Some(self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "))
    }

    fn store_cookies(&mut self, r: &Resp) {
        for sc in r.headers_named("set-cookie") {
            let first = sc.split(';').next().unwrap_or("");
            if let Some((k, v)) = first.split_once('=') {
                let expired = sc.to_ascii_lowercase().contains("max-age=0");
                if expired || v.is_empty() {
                    self.jar.remove(k.trim());
                } else {
                    self.jar.insert(k.trim().to_string(), v.trim().to_string());
                }
            }
        }
    }

    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Resp {
        let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.addr);
        if let Some(c) = self.cookie_header() {
            raw.push_str(&format!("Cookie: {c}\r\n"));
        }
        for (k, v) in self.extra.iter() {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        for (k, v) in headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            raw.push_str(&format!("Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n", b.len()));
        }
        raw.push_str("\r\n");
        if let Some(b) = body {
            raw.push_str(b);
        }
        let r = raw_request(self.addr, raw.as_bytes());
        self.store_cookies(&r);
        r
    }

    pub fn get(&mut self, path: &str) -> Resp {
        self.request("GET", path, &[], None)
    }

    pub fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Resp {
        let body = form_encode(fields);
        let origin = format!("http://{}", self.addr);
        self.request("POST", path, &[("Origin", &origin), ("Sec-Fetch-Site", "same-origin")], Some(&body))
    }

    /// GET a form page, then POST it with its CSRF token.
    pub fn submit(&mut self, page: &str, action: &str, fields: &[(&str, &str)]) -> Resp {
        let form = self.get(page);
        let csrf = form.input("csrf").unwrap_or_else(|| panic!("no csrf field on {page}: {} {}", form.status, form.body));
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        all.push(("csrf", &csrf));
        self.post(action, &all)
    }

    /// Password step; returns the response to the POST.
    pub fn login(&mut self, user: &str, password: &str) -> Resp {
        self.submit("/_riegel/login", "/_riegel/login", &[("username", user), ("password", password)])
    }

    pub fn session_cookie(&self) -> Option<String> {
        self.jar.get("riegel_session").cloned()
    }
}

// ---------------- TOTP from outside riegel ----------------

/// The current code for a base32 secret, computed by `oathtool` (an
/// implementation that is not riegel's own) when installed, else by a
/// small independent RFC 6238 implementation here.
pub fn totp_code(secret_b32: &str, at: i64) -> String {
    if let Some(oathtool) = tool("oathtool") {
        let out = std::process::Command::new(oathtool)
            .args(["--totp", "-b", secret_b32, "-N", &format!("@{at}")])
            .output()
            .expect("oathtool");
        assert!(out.status.success(), "oathtool failed: {}", String::from_utf8_lossy(&out.stderr));
        return String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    independent_totp(secret_b32, at)
}

fn independent_totp(secret_b32: &str, at: i64) -> String {
    use hmac::{Hmac, Mac};
    let key = data_encoding::BASE32_NOPAD.decode(secret_b32.replace(' ', "").to_uppercase().as_bytes()).expect("b32");
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(&key).expect("key");
    mac.update(&((at / 30) as u64).to_be_bytes());
    let h = mac.finalize().into_bytes();
    let o = (h[19] & 0xf) as usize;
    let v = (u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]) & 0x7fff_ffff) % 1_000_000;
    format!("{v:06}")
}


// ---------------- QR code as a phone reads it ----------------

/// Renders the page's inline SVG QR code to pixels and decodes it with
/// rqrr; returns the otpauth URI.
pub fn decode_qr_svg(svg: &str) -> String {
    let attr = |name: &str| -> usize {
        let key = format!(" {name}=\"");
        let i = svg.find(&key).unwrap_or_else(|| panic!("svg has no {name}")) + key.len();
        svg[i..].split('"').next().and_then(|v| v.parse().ok()).expect("number")
    };
    let (w, h) = (attr("width"), attr("height"));
    let mut px = vec![255u8; w * h];
    let d_start = svg.find(" d=\"").expect("path") + 4;
    let d = &svg[d_start..d_start + svg[d_start..].find('"').expect("end")];
    for seg in d.split('M').filter(|s| !s.is_empty()) {
        // "{left} {top}h{w}v{h}H{left}V{top}"
        let (xy, rest) = seg.split_once('h').expect("h");
        let (x, y) = xy.split_once(' ').expect("xy");
        let (rw, rest) = rest.split_once('v').expect("v");
        let rh = rest.split('H').next().expect("H");
        let (x, y, rw, rh): (usize, usize, usize, usize) = (x.parse().expect("x"), y.parse().expect("y"), rw.parse().expect("w"), rh.parse().expect("h"));
        for yy in y..(y + rh).min(h) {
            for xx in x..(x + rw).min(w) {
                px[yy * w + xx] = 0;
            }
        }
    }
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| px[y * w + x]);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "expected one QR code in the SVG");
    grids[0].decode().expect("QR decodes").1
}

/// Decodes the SVG with zbarimg as a second, independent reader (CI).
pub fn decode_qr_zbar(svg: &str, dir: &Path) -> Option<String> {
    let rsvg = tool("rsvg-convert")?;
    let zbar = tool("zbarimg")?;
    let svg_path = dir.join("qr.svg");
    let png_path = dir.join("qr.png");
    std::fs::write(&svg_path, svg).expect("write svg");
    let st = std::process::Command::new(rsvg).args(["-w", "400", "-b", "white", "-o"]).arg(&png_path).arg(&svg_path).status().expect("rsvg");
    assert!(st.success(), "rsvg-convert failed");
    let out = std::process::Command::new(zbar).args(["-q", "--raw"]).arg(&png_path).output().expect("zbarimg");
    assert!(out.status.success(), "zbarimg found no code");
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The inline `<svg class="qr" ...>...</svg>` of a page.
pub fn qr_svg_of(html: &str) -> String {
    let start = html.find("<svg class=\"qr\"").expect("page has the QR svg");
    let end = start + html[start..].find("</svg>").expect("svg end") + 6;
    html[start..end].to_string()
}

pub fn secret_of_uri(uri: &str) -> String {
    let q = uri.split_once('?').expect("query").1;
    url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "secret").map(|(_, v)| v.into_owned()).expect("secret")
}

// ---------------- the guide's journey, as helpers ----------------

pub struct Enrolled {
    pub secret: String,
    pub recovery_codes: Vec<String>,
    pub activated: Resp,
}

/// Password, then the enrolment page, QR decoded, first code confirmed.
/// The client ends with a full session.
pub fn login_and_enrol(r: &Riegel, c: &mut Client, user: &str, password: &str) -> Enrolled {
    login_and_enrol_at(c, user, password, r.now())
}

/// [`login_and_enrol`] on a server whose clock is `now` (a `riegel serve`
/// process runs on the real one).
pub fn login_and_enrol_at(c: &mut Client, user: &str, password: &str, now: i64) -> Enrolled {
    let resp = c.login(user, password);
    assert_eq!(resp.status, 303, "login: {}", resp.body);
    assert_eq!(resp.location(), "/_riegel/setup");
    let setup = c.get("/_riegel/setup");
    assert_eq!(setup.status, 200, "{}", setup.body);
    let uri = decode_qr_svg(&qr_svg_of(&setup.body));
    let secret = secret_of_uri(&uri);
    let code = totp_code(&secret, now);
    let activated = c.submit("/_riegel/setup/confirm", "/_riegel/setup/confirm", &[("code", &code)]);
    assert_eq!(activated.status, 200, "{}", activated.body);
    let recovery_codes = recovery_codes_of(&activated.body);
    Enrolled { secret, recovery_codes, activated }
}

/// Password + TOTP for an enrolled user. The clock moves one step first,
/// so the code is never the one used last.
pub fn login_full(r: &Riegel, c: &mut Client, user: &str, password: &str, secret: &str) -> Resp {
    r.clock.advance(30);
    let resp = c.login(user, password);
    assert_eq!(resp.status, 303, "login: {}", resp.body);
    assert_eq!(resp.location(), "/_riegel/verify");
    let code = totp_code(secret, r.now());
    c.submit("/_riegel/verify", "/_riegel/verify", &[("code", &code)])
}

/// Recovery codes, shown as `<code>abcde-fghjk</code>` items.
pub fn recovery_codes_of(html: &str) -> Vec<String> {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    html.split("<code>")
        .skip(1)
        .filter_map(|rest| rest.split("</code>").next())
        .filter(|c| c.len() == 11 && c.as_bytes()[5] == b'-' && c.chars().enumerate().all(|(i, ch)| i == 5 || ok(ch)))
        .map(str::to_string)
        .collect()
}

// ---------------- riegel serve as a process ----------------

/// `riegel serve` as a child process with its default runtime (one shard
/// per CPU), in `dir` (keys, config, store and its stderr log there; an
/// existing store in `dir` is used again), in front of `upstream`.
/// `extra` is more configuration; without a `mail:` key, mail goes to an
/// outbox in `dir`.
pub struct ServeProcess {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub config: PathBuf,
    child: Option<std::process::Child>,
}

impl ServeProcess {
    pub fn start(dir: &Path, upstream: SocketAddr, extra: &str) -> Self {
        Self::start_with_env(dir, upstream, extra, &[])
    }

    /// [`ServeProcess::start`] with environment variables for the process
    /// (such as `RIEGEL_LOG`).
    pub fn start_with_env(dir: &Path, upstream: SocketAddr, extra: &str, env: &[(&str, &str)]) -> Self {
        for k in ["session.key", "storage.key"] {
            if !dir.join(k).exists() {
                riegel::demo::write_key(&dir.join(k)).expect("key");
            }
        }
        let port = free_port();
        let config = dir.join("riegel.yaml");
        let mail = if extra.contains("mail:") { "" } else { "mail: { from: \"P <p@example.at>\", outbox: outbox }\n" };
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:{port}\"\npublic_url: \"http://127.0.0.1:{port}\"\nupstream: {{ url: \"http://{upstream}\" }}\nstore: {{ path: data }}\nsecrets: {{ session_key_file: session.key, storage_key_file: storage.key }}\n{TEST_ARGON}{mail}{extra}"
            ),
        )
        .expect("config");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("stderr.log")).expect("log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_riegel"))
            .args(["serve", "--config"])
            .arg(&config)
            .envs(env.iter().copied())
            .stderr(log)
            .spawn()
            .expect("serve");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "riegel serve did not start:\n{}", std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(50));
        }
        ServeProcess { addr, dir: dir.to_path_buf(), config, child: Some(child) }
    }

    /// A `riegel` command with this server's config, `stdin` fed to it.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_riegel"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cli");
        if let (Some(input), Some(mut w)) = (stdin, child.stdin.take()) {
            w.write_all(input.as_bytes()).expect("stdin");
        }
        child.wait_with_output().expect("cli output")
    }

    /// Sends SIGHUP (what `systemctl reload` sends).
    pub fn hup(&self) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let st = std::process::Command::new("kill").args(["-HUP", &pid]).status().expect("kill");
        assert!(st.success());
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// The process dies at once (SIGKILL): nothing is flushed or drained.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and a clean exit within a generous bound.
    pub fn stop(mut self) {
        let Some(mut child) = self.child.take() else { return };
        let t = Instant::now();
        let st = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
        assert!(st.success());
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "riegel serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{status:?}");
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
