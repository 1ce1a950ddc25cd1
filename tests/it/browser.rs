//! The whole customer guide in a real browser: headless Chromium driven
//! by fantoccini through chromedriver. Every page is saved as a screenshot
//! under `artifacts/screenshots/<lang>/<width>/` and checked with axe-core
//! (0 violations).
//!
//! `Driver` (one chromedriver, its own process group) and `Session` (one
//! browser window with a fresh profile) are the helpers other browser tests
//! reuse. `Session` is synchronous: it owns a current-thread tokio runtime
//! and blocks on each WebDriver call, so a journey mixes freely with the
//! harness's blocking calls (riegel runs on its own threads).

use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fantoccini::error::CmdError;
use fantoccini::wd::TimeoutConfiguration;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::harness::*;

/// The longest any one WebDriver call may take before the test fails
/// (a hung chromedriver must not hang the test run).
const CALL_LIMIT: Duration = Duration::from_secs(60);
/// How long `wait_url` and `wait_source` wait for the next page.
const PAGE_LIMIT: Duration = Duration::from_secs(15);

// ---------------- chromedriver ----------------

/// A chromedriver on a free loopback port, in a process group of its own.
/// Dropping it kills the whole group: chromedriver and every Chromium
/// process it started, also when the test panicked.
pub struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Driver {
    /// `None` when chromium or chromedriver is not installed (outside CI;
    /// on CI `tool` fails the test instead).
    pub fn start() -> Option<Driver> {
        let chromedriver = tool("chromedriver")?;
        tool("chromium")?;
        let port = free_port();
        let child = Command::new(chromedriver)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group, so Drop can end Chromium's processes too.
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) };
        let start = Instant::now();
        while std::net::TcpStream::connect(driver.addr).is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(driver)
    }

    /// The process group: chromedriver's pid.
    pub fn pgid(&self) -> i32 {
        self.child.id() as i32
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: killpg only sends a signal. The group is the one this
        // Driver made; chromedriver is not reaped yet, so its pid (the
        // group's id) cannot belong to anyone else.
        unsafe {
            libc::killpg(self.pgid(), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

// ---------------- axe-core ----------------

/// Where `.ci/run` installs axe-core (`npm install --prefix target/axe`).
const AXE_DEFAULT: &str = "target/axe/node_modules/axe-core/axe.min.js";

/// axe.min.js from `AXE_CORE_JS` or the default location. On CI (CI set) a
/// missing file fails the test; elsewhere the check is skipped with a note.
fn axe_source() -> Option<&'static str> {
    static AXE: OnceLock<Option<String>> = OnceLock::new();
    AXE.get_or_init(|| {
        let path = std::env::var_os("AXE_CORE_JS")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(AXE_DEFAULT));
        match std::fs::read_to_string(&path) {
            Ok(js) => Some(js),
            Err(e) => {
                let how = "npm install --prefix target/axe axe-core@4.14.1, as .ci/run does, or set AXE_CORE_JS";
                if std::env::var_os("CI").is_some() {
                    panic!("axe-core is required on CI (CI is set): {}: {e}; {how}", path.display());
                }
                eprintln!("axe-core not found at {}: {e}; accessibility checks skipped ({how})", path.display());
                None
            }
        }
    })
    .as_deref()
}

/// Runs axe on the current document (its default rules: WCAG 2.x A and AA
/// and best practices) and hands back the violations with their elements,
/// the rules it left undecided and how many passed. The last argument of
/// an async WebDriver script is its callback.
const AXE_RUN: &str = r#"
const done = arguments[arguments.length - 1];
axe.run(document, { resultTypes: ['violations'] }).then(function (r) {
  done({
    version: axe.version,
    passes: r.passes.length,
    incomplete: r.incomplete.map(function (v) {
      return v.id + ' (' + v.nodes.map(function (n) {
        var why = (n.any.concat(n.all, n.none)).map(function (c) { return c.message; }).join('; ');
        return n.target.join(' ') + ': ' + why;
      }).join(', ') + ')';
    }),
    violations: r.violations.map(function (v) {
      return {
        id: v.id, impact: v.impact, help: v.help,
        nodes: v.nodes.map(function (n) {
          return { target: n.target.join(' '), html: n.html, summary: n.failureSummary };
        })
      };
    })
  });
}, function (e) { done({ error: String(e) }); });
"#;

/// What axe-core found on one page.
#[derive(Debug, Clone)]
pub struct AxeReport {
    pub version: String,
    /// How many rules passed.
    pub passes: u64,
    /// Rules axe could not decide (left to a person): id (element: why).
    pub incomplete: Vec<String>,
    pub violations: Vec<Violation>,
}

/// One rule that axe found broken, with the elements that break it.
#[derive(Debug, Clone)]
pub struct Violation {
    pub id: String,
    pub impact: String,
    pub help: String,
    /// (CSS selector, the element's HTML, axe's summary)
    pub nodes: Vec<(String, String, String)>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "  {} [{}]: {}", self.id, self.impact, self.help)?;
        for (target, html, summary) in &self.nodes {
            writeln!(f, "    {target}: {html}")?;
            for line in summary.lines() {
                writeln!(f, "      {line}")?;
            }
        }
        Ok(())
    }
}

// ---------------- the browser ----------------

/// Runs `call` on `rt` for at most `limit`; `None` when it did not finish.
fn block<T>(rt: &tokio::runtime::Runtime, limit: Duration, call: impl Future<Output = T>) -> Option<T> {
    rt.block_on(async { tokio::time::timeout(limit, call).await.ok() })
}

/// One Chromium window with a fresh profile, driven through `driver`.
/// Dropping it closes the window (Chromium quits) and removes the profile.
pub struct Session<'d> {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    /// The Driver outlives its sessions.
    driver: PhantomData<&'d Driver>,
    profile: PathBuf,
    shots: PathBuf,
    n: u32,
    size: (u32, u32),
    axe_checked: Vec<String>,
}

impl<'d> Session<'d> {
    /// A window of `width` x `height` CSS pixels; screenshots go to `shots`
    /// (emptied first).
    pub fn open(driver: &'d Driver, width: u32, height: u32, shots: PathBuf) -> Session<'d> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        // From here on, Drop removes the profile, also when opening fails.
        let mut s = Session { rt, client: None, driver: PhantomData, profile: tempdir("chromium-profile"), shots, n: 0, size: (width, height), axe_checked: Vec::new() };
        // Chromium can fail to start on a loaded machine: try a few times,
        // each with a profile of its own (a Chromium that started late
        // would still hold the last one).
        for attempt in 1..=3 {
            let caps = json!({
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             "--disable-dev-shm-usage", format!("--user-data-dir={}/{attempt}", s.profile.display()),
                             format!("--window-size={width},{height}")]
                }
            });
            let Value::Object(caps) = caps else { unreachable!("capabilities are an object") };
            let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            builder.capabilities(caps);
            match block(&s.rt, CALL_LIMIT, builder.connect(&driver.url())) {
                Some(Ok(c)) => {
                    s.client = Some(c);
                    break;
                }
                Some(Err(e)) if attempt == 3 => panic!("no browser session after {attempt} attempts: {e}"),
                None if attempt == 3 => panic!("no browser session after {attempt} attempts: no answer in {CALL_LIMIT:?}"),
                _ => std::thread::sleep(Duration::from_secs(1)),
            }
        }
        let _ = std::fs::remove_dir_all(&s.shots);
        std::fs::create_dir_all(&s.shots).expect("screenshot dir");
        s.run("set window size", s.client().set_window_size(width, height));
        // Element look-ups wait up to 5 s for the next page to be there.
        let timeouts = TimeoutConfiguration::new(Some(Duration::from_secs(30)), Some(Duration::from_secs(20)), Some(Duration::from_secs(5)));
        s.run("set timeouts", s.client().update_timeouts(timeouts));
        s
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("session open")
    }

    /// Blocks on one WebDriver call; an error or no answer within
    /// `CALL_LIMIT` fails the test.
    fn run<T>(&self, what: &str, call: impl Future<Output = Result<T, CmdError>>) -> T {
        match block(&self.rt, CALL_LIMIT, call) {
            Some(Ok(v)) => v,
            Some(Err(e)) => panic!("webdriver {what}: {e}"),
            None => panic!("webdriver {what}: no answer in {CALL_LIMIT:?}"),
        }
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub fn execute(&self, script: &str) -> Value {
        self.run("execute", self.client().execute(script, vec![]))
    }

    /// The profile directory (one folder in it per start attempt);
    /// Chromium's command lines name it.
    pub fn profile(&self) -> &Path {
        &self.profile
    }

    pub fn goto(&self, url: &str) {
        self.run(&format!("goto {url}"), self.client().goto(url));
    }

    pub fn url(&self) -> String {
        self.run("current url", self.client().current_url()).to_string()
    }

    pub fn source(&self) -> String {
        self.run("source", self.client().source())
    }

    /// Visible text of the page.
    pub fn text(&self) -> String {
        self.execute("return document.body ? document.body.innerText : '';").as_str().unwrap_or("").to_string()
    }

    /// The element that has focus, as its `name` or `id`.
    pub fn focused(&self) -> String {
        self.execute("var a=document.activeElement; return a ? (a.name || a.id || a.tagName) : '';")
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Waits until the URL ends with `suffix` (navigation after a click).
    pub fn wait_url(&self, suffix: &str) {
        let start = Instant::now();
        loop {
            let u = self.url();
            if u.ends_with(suffix) {
                return;
            }
            if start.elapsed() > PAGE_LIMIT {
                panic!("expected a URL ending in {suffix}, at {u}:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the page source contains `needle` (the answer to a POST).
    pub fn wait_source(&self, needle: &str) {
        let start = Instant::now();
        while !self.source().contains(needle) {
            if start.elapsed() > PAGE_LIMIT {
                panic!("expected {needle:?} on {}:\n{}", self.url(), self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn find(&self, css: &str) -> fantoccini::elements::Element {
        match block(&self.rt, CALL_LIMIT, self.client().find(Locator::Css(css))) {
            Some(Ok(e)) => e,
            Some(Err(e)) => panic!("no element {css} on {}: {e}\n{}", self.url(), self.source()),
            None => panic!("webdriver find {css}: no answer in {CALL_LIMIT:?}"),
        }
    }

    /// Clears the field and types `text` into it.
    pub fn fill(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.run(&format!("clear {css}"), e.clear());
        self.run(&format!("type into {css}"), e.send_keys(text));
    }

    pub fn click(&self, css: &str) {
        let e = self.find(css);
        self.run(&format!("click {css}"), e.click());
    }

    /// Fills the login form and submits it.
    pub fn sign_in(&self, user: &str, password: &str) {
        self.fill("input[name=username]", user);
        self.fill("input[name=password]", password);
        self.click("button[type=submit]");
    }

    /// A full-page screenshot, `NN-label.png`: the window grows until the
    /// viewport holds the whole page.
    pub fn screenshot(&mut self, label: &str) {
        self.n += 1;
        let sizes = self.execute("return [document.documentElement.scrollHeight, window.innerHeight];");
        let px = |i: usize| sizes[i].as_u64().unwrap_or(0) as u32;
        let (full, viewport) = (px(0), px(1));
        let (w, h) = self.size;
        // The window is taller than its viewport by the browser's own bars.
        let grow = full > viewport;
        if grow {
            self.run("grow window", self.client().set_window_size(w, full + h.saturating_sub(viewport)));
        }
        let png = self.run("screenshot", self.client().screenshot());
        if grow {
            self.run("restore window", self.client().set_window_size(w, h));
        }
        std::fs::write(self.shots.join(format!("{:02}-{label}.png", self.n)), png).expect("save screenshot");
    }

    /// axe-core's findings on the current page, or `None` when axe-core is
    /// not installed (outside CI). axe goes in through WebDriver script
    /// execution, which the page's Content-Security-Policy does not govern
    /// (`axe_runs_under_riegels_csp_and_reports_violations`).
    pub fn axe(&self) -> Option<AxeReport> {
        let axe = axe_source()?;
        let present = self.execute("return typeof window.axe === 'object';");
        if present != Value::Bool(true) {
            self.execute(axe);
        }
        let r = self.run("axe.run", self.client().execute_async(AXE_RUN, vec![]));
        if let Some(e) = r.get("error") {
            panic!("axe failed on {}: {e}", self.url());
        }
        let text = |v: &Value| v.as_str().unwrap_or("").to_string();
        let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
        let report = AxeReport {
            version: text(&r["version"]),
            passes: r["passes"].as_u64().unwrap_or(0),
            incomplete: list(&r["incomplete"]).iter().map(text).collect(),
            violations: list(&r["violations"])
                .iter()
                .map(|v| Violation {
                    id: text(&v["id"]),
                    impact: text(&v["impact"]),
                    help: text(&v["help"]),
                    nodes: list(&v["nodes"]).iter().map(|n| (text(&n["target"]), text(&n["html"]), text(&n["summary"]))).collect(),
                })
                .collect(),
        };
        assert!(report.passes > 0, "axe checked nothing on {}: {r}", self.url());
        Some(report)
    }

    /// axe-core on the current page: any violation fails the test, listed
    /// with rule, elements and axe's advice. Each checked page adds a line
    /// to `axe.txt` beside the screenshots (rules passed, rules axe could
    /// not decide and leaves to a person).
    pub fn axe_check(&mut self, label: &str) {
        let Some(report) = self.axe() else { return };
        if !report.violations.is_empty() {
            let list: String = report.violations.iter().map(|v| v.to_string()).collect();
            panic!("axe {}: {} violation(s) on page {label} ({}):\n{list}", report.version, report.violations.len(), self.url());
        }
        let line = format!(
            "{:02}-{label}: axe {}, 0 violations, {} rules passed, needs review: {}\n",
            self.n,
            report.version,
            report.passes,
            if report.incomplete.is_empty() { "none".to_string() } else { report.incomplete.join(", ") }
        );
        let mut summary = std::fs::OpenOptions::new().create(true).append(true).open(self.shots.join("axe.txt")).expect("axe.txt");
        std::io::Write::write_all(&mut summary, line.as_bytes()).expect("write axe.txt");
        self.axe_checked.push(label.to_string());
    }

    /// The labels of the pages `axe_check` passed, in order (empty when
    /// axe-core is not installed).
    pub fn axe_checked(&self) -> &[String] {
        &self.axe_checked
    }

    /// Nothing sticks out sideways: no horizontal scrolling at this width
    /// (long German words break).
    pub fn assert_no_overflow(&self) {
        let v = self.execute("return [document.documentElement.scrollWidth, window.innerWidth];");
        let (content, viewport) = (v[0].as_u64().unwrap_or(0), v[1].as_u64().unwrap_or(0));
        assert!(content <= viewport, "the page is {content} px wide in a {viewport} px window: {}", self.url());
    }

    /// Screenshot and axe check of the page on screen.
    pub fn check_page(&mut self, label: &str) {
        self.screenshot(label);
        self.axe_check(label);
    }

    /// No i18n key name and no placeholder may be visible.
    pub fn assert_texts_translated(&self) {
        let t = self.text();
        for bad in ["err_", "error_", "notice_", "login_", "setup_", "verify_", "reset_", "forgot_", "account_", "new_device_", "recovery_done", "{minutes}", "{min}", "{when}", "{device}", "undefined"] {
            assert!(!t.contains(bad), "untranslated text {bad:?} on {}:\n{t}", self.url());
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // Closing the session makes chromedriver quit Chromium; if that
        // fails, the Driver's group kill still ends it.
        if let Some(c) = self.client.take() {
            let _ = block(&self.rt, Duration::from_secs(10), c.close());
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

// ---------------- the journey ----------------

/// The pages every journey shows and checks with axe, in order.
const JOURNEY_PAGES: &[&str] = &[
    "login", "login-failed", "setup", "confirm", "activated", "portal", "logged-out", "verify", "recovery", "verify-error",
    "logout-confirm", "forgot", "forgot-sent", "reset", "reset-error", "reset-done", "portal-again", "error-404",
    "error-reset-invalid",
];

struct Words {
    activated: &'static str,
    confirm: &'static str,
}

fn journey(d: &Driver, lang: &str, width: u32, height: u32, label: &str) {
    let r = Riegel::start_with(Options { language: if lang == "de" { "de" } else { "en" }, ..Options::default() });
    let words = match lang {
        "de" => Words { activated: "Erfolgreich aktiviert", confirm: "Bestätigungscode eingeben" },
        _ => Words { activated: "", confirm: "" },
    };
    r.add_user("anna", Some("anna@example.at"), Some("Sommer-2024!"));
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("artifacts/screenshots").join(lang).join(label);
    let mut b = Session::open(d, width, height, shots);

    // 1.1: the portal sends to the login page.
    b.goto(&format!("{}/mieter/start", r.base));
    assert!(b.url().contains("/_riegel/login"), "{}", b.url());
    assert_eq!(b.focused(), "username", "focus on the first field");
    b.assert_texts_translated();
    if lang == "de" {
        let t = b.text();
        for w in ["Benutzername oder E-Mail", "Ihr Passwort", "Jetzt anmelden!", "Sie können nicht auf Ihr Konto zugreifen?", "IMMO PRO Immobilien GmbH", "Portal"] {
            assert!(t.contains(w), "login page lacks {w:?}:\n{t}");
        }
    }
    b.check_page("login");
    b.sign_in("anna", "falsch-falsch");
    b.wait_source("login-error");
    b.assert_texts_translated();
    b.check_page("login-failed");
    b.sign_in("anna", "Sommer-2024!");

    // 1.1.1: enrolment.
    b.wait_url("/_riegel/setup");
    b.assert_texts_translated();
    b.check_page("setup");
    let src = b.source();
    let uri = decode_qr_svg(&qr_svg_of(&src));
    let secret = secret_of_uri(&uri);
    if lang == "de" {
        let t = b.text();
        for w in ["Google Authenticator", "Microsoft Authenticator", "2FAS", "Zwei-Faktor-Authentifizierung aktivieren"] {
            assert!(t.contains(w), "setup page lacks {w:?}");
        }
    }
    b.click("a[href$='/_riegel/setup/confirm']");
    b.wait_url("/_riegel/setup/confirm");
    if !words.confirm.is_empty() {
        assert!(b.text().contains(words.confirm));
    }
    b.assert_texts_translated();
    b.check_page("confirm");
    b.fill("input[name=code]", &totp_code(&secret, r.now()));
    b.click("button[type=submit]");
    b.wait_source("code-list");
    if !words.activated.is_empty() {
        assert!(b.text().contains(words.activated), "{}", b.text());
    }
    b.assert_texts_translated();
    b.check_page("activated");
    assert_eq!(recovery_codes_of(&b.source()).len(), 10);
    b.click("a[href='/mieter/start']");

    // The portal with the identity headers.
    b.wait_url("/mieter/start");
    assert!(b.text().lines().any(|l| l.trim() == "anna"), "portal does not show Remote-User");
    b.check_page("portal");
    b.click("#logout");
    b.wait_source("/_riegel/login\"");
    b.assert_texts_translated();
    b.check_page("logged-out");

    // 2.1: the next login asks for the code again.
    r.clock.advance(30);
    b.goto(&format!("{}/", r.base));
    b.sign_in("anna@example.at", "Sommer-2024!");
    b.wait_url("/_riegel/verify");
    assert_eq!(b.focused(), "code");
    b.assert_texts_translated();
    b.check_page("verify");
    b.click("a[href$='/_riegel/recovery']");
    b.wait_url("/_riegel/recovery");
    b.assert_texts_translated();
    b.check_page("recovery");
    b.goto(&format!("{}/_riegel/verify", r.base));
    b.fill("input[name=code]", "123");
    b.click("button[type=submit]");
    b.wait_source("code-error");
    b.assert_texts_translated();
    b.check_page("verify-error");
    b.fill("input[name=code]", &totp_code(&secret, r.now()));
    b.click("button[type=submit]");
    b.wait_source("Demo-Portal");
    b.goto(&format!("{}/_riegel/logout", r.base));
    b.assert_texts_translated();
    b.check_page("logout-confirm");
    b.click("button[type=submit]");
    b.wait_source("/_riegel/login\"");

    // 3: forgotten password.
    b.goto(&format!("{}/_riegel/login", r.base));
    b.click("a[href$='/_riegel/forgot']");
    b.wait_url("/_riegel/forgot");
    b.assert_texts_translated();
    b.check_page("forgot");
    b.fill("input[name=username]", "anna");
    b.click("button[type=submit]");
    // The answer comes after a flushed store write: wait for the page.
    b.wait_source("page-forgot-sent");
    b.assert_texts_translated();
    if lang == "de" {
        assert!(b.text().to_uppercase().contains("SPAM"), "spam hint missing");
    }
    b.check_page("forgot-sent");
    let mails = r.smtp.wait_for(1, Duration::from_secs(10));
    let text = mails.last().expect("reset mail").text();
    let start = text.find(&format!("{}/_riegel/reset/", r.base)).expect("link");
    let link: String = text[start..].chars().take_while(|c| !c.is_whitespace() && *c != '"' && *c != '<').collect();
    b.goto(&link);
    b.assert_texts_translated();
    b.check_page("reset");
    b.fill("input[name=password]", "kurz");
    b.fill("input[name=password2]", "kurz");
    b.click("button[type=submit]");
    // Too short for the field's minlength: the browser keeps the form.
    assert_eq!(b.execute("return document.getElementById('password').validity.tooShort;"), Value::Bool(true));
    assert!(!b.source().contains("field-error"), "the short password was not sent");
    // Two different passwords: riegel's own error.
    b.fill("input[name=password]", "Neues-Passwort-2025");
    b.fill("input[name=password2]", "Neues-Passwort-2052");
    b.click("button[type=submit]");
    b.wait_source("password2-error");
    b.assert_texts_translated();
    b.check_page("reset-error");
    b.fill("input[name=password]", "Neues-Passwort-2025");
    b.fill("input[name=password2]", "Neues-Passwort-2025");
    b.click("button[type=submit]");
    // The new password is hashed first (argon2, lowest CPU class).
    b.wait_source("page-reset-done");
    b.assert_texts_translated();
    b.check_page("reset-done");

    // Log in with the new password: the code is still asked for.
    r.clock.advance(30);
    b.goto(&format!("{}/mieter/start", r.base));
    b.sign_in("anna", "Neues-Passwort-2025");
    b.wait_url("/_riegel/verify");
    b.fill("input[name=code]", &totp_code(&secret, r.now()));
    b.click("button[type=submit]");
    b.wait_url("/mieter/start");
    b.check_page("portal-again");

    // Error pages.
    b.goto(&format!("{}/_riegel/nichts", r.base));
    b.assert_texts_translated();
    b.check_page("error-404");
    b.goto(&format!("{}/_riegel/reset/{}", r.base, "x".repeat(43)));
    b.assert_texts_translated();
    b.check_page("error-reset-invalid");

    if axe_source().is_some() {
        assert_eq!(b.axe_checked(), JOURNEY_PAGES, "axe checked every page of the journey");
    }
}

// ---------------- "Mein Zugang" ----------------

/// The pages the "Mein Zugang" walk shows and checks with axe, in order.
const ACCOUNT_PAGES: &[&str] = &[
    "account", "account-password-error", "account-password-changed", "account-add", "account-add-error", "account-added",
    "account-codes", "account-remove-error", "account-removed", "account-sessions", "account-others-ended", "lockout",
    "new-device", "new-device-open", "new-device-setup",
];

/// "Mein Zugang" in `lang` at one width: the language chosen with the
/// switch link, every form, the lost-phone link; screenshots and axe on
/// every page, and no page wider than the window.
fn account_walk(d: &Driver, lang: &str, width: u32, height: u32, label: &str) {
    let r = Riegel::start_with(Options {
        branding_yaml: "  languages: [de, en]\n  contact: { phone: \"+43 1 234 56 78\", email: \"hausverwaltung@example.at\" }\n".into(),
        extra_yaml: "regulation: { max_failures: 3, delay_after: 10 }\n".into(),
        ..Options::default()
    });
    let de = lang == "de";
    let pick = |de_text: &'static str, en_text: &'static str| if de { de_text } else { en_text };
    r.add_user("anna", Some("anna@example.at"), Some("Sommer-2024!"));
    r.add_user("otto", Some("otto@example.at"), Some("Sommer-2024!"));
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("artifacts/screenshots").join(lang).join(format!("account-{label}"));
    let mut b = Session::open(d, width, height, shots);

    // The language by the switch link on the page (the browser's own
    // Accept-Language may say either).
    b.goto(&format!("{}/_riegel/account", r.base));
    assert!(b.url().contains("/_riegel/login?rd="), "{}", b.url());
    let other = if de { "en" } else { "de" };
    if b.source().contains(&format!("<html lang=\"{other}\">")) {
        b.click(&format!("a[hreflang={lang}]"));
        b.wait_source(&format!("<html lang=\"{lang}\">"));
    }
    assert!(b.url().contains("/_riegel/login?rd="), "the switch comes back to the page: {}", b.url());
    b.sign_in("anna", "Sommer-2024!");
    b.wait_url("/_riegel/setup");
    let secret = secret_of_uri(&decode_qr_svg(&qr_svg_of(&b.source())));
    b.goto(&format!("{}/_riegel/setup/confirm", r.base));
    b.fill("input[name=code]", &totp_code(&secret, r.now()));
    b.click("button[type=submit]");
    b.wait_source("code-list");
    b.goto(&format!("{}/_riegel/account", r.base));
    b.wait_source("page-account");
    b.assert_texts_translated();
    b.assert_no_overflow();
    let t = b.text();
    for w in [pick("Mein Zugang", "My account"), "anna@example.at", pick("dieses Gerät", "this device"), pick("Auf allen anderen Geräten abmelden", "Log out on all other devices")] {
        if w.contains("abmelden") || w.contains("Log out on") {
            continue; // only with another session (below)
        }
        assert!(t.contains(w), "account page lacks {w:?}:\n{t}");
    }
    b.check_page("account");

    // Password: a mismatch, then the change.
    b.fill("#current_password", "Sommer-2024!");
    b.fill("#password", "Neues-Passwort-2025");
    b.fill("#password2", "Neues-Passwort-2052");
    b.click("#change-password button[type=submit]");
    b.wait_source("password2-error");
    b.assert_texts_translated();
    b.assert_no_overflow();
    b.check_page("account-password-error");
    b.fill("#current_password", "Sommer-2024!");
    b.fill("#password", "Neues-Passwort-2025");
    b.fill("#password2", "Neues-Passwort-2025");
    b.click("#change-password button[type=submit]");
    b.wait_url("notice=password_changed");
    b.assert_texts_translated();
    b.check_page("account-password-changed");

    // A second authenticator: the QR code, a wrong first code, the right one.
    r.clock.advance(30);
    b.fill("#add-name", "Tablet");
    b.fill("#add-code", &totp_code(&secret, r.now()));
    b.click("form[action$='/_riegel/account/authenticators'] button[type=submit]");
    b.wait_source("page-account-add");
    b.assert_texts_translated();
    b.assert_no_overflow();
    b.check_page("account-add");
    let tablet = secret_of_uri(&decode_qr_svg(&qr_svg_of(&b.source())));
    b.fill("input[name=code]", "000000");
    b.click("form[action$='/confirm'] button[type=submit]");
    b.wait_source("code-error");
    assert!(b.text().contains(pick("Datum und Uhrzeit", "date and time")), "the clock hint:\n{}", b.text());
    b.check_page("account-add-error");
    b.fill("input[name=code]", &totp_code(&tablet, r.now()));
    b.click("form[action$='/confirm'] button[type=submit]");
    b.wait_url("notice=authenticator_added");
    assert!(b.text().contains("Tablet"));
    b.check_page("account-added");

    // New recovery codes, shown once with copy and print buttons.
    r.clock.advance(30);
    b.fill("#codes-code", &totp_code(&tablet, r.now()));
    b.click("#recovery-codes button[type=submit]");
    b.wait_source("page-account-codes");
    assert_eq!(recovery_codes_of(&b.source()).len(), 10);
    assert!(b.text().contains(pick("Drucken", "Print")) && b.text().contains(pick("Kopieren", "Copy")), "{}", b.text());
    b.assert_texts_translated();
    b.assert_no_overflow();
    b.check_page("account-codes");
    b.click("a.btn-primary[href$='/_riegel/account']");
    b.wait_source("page-account");

    // Remove the first app: a wrong code, then one from the tablet.
    b.click("details.remove summary");
    b.fill("#code-remove-1", "123456");
    b.click("form[action$='/authenticators/1/remove'] button[type=submit]");
    b.wait_source("error-remove-1");
    b.assert_texts_translated();
    b.check_page("account-remove-error");
    r.clock.advance(30);
    b.fill("#code-remove-1", &totp_code(&tablet, r.now()));
    b.click("form[action$='/authenticators/1/remove'] button[type=submit]");
    b.wait_url("notice=authenticator_removed");
    b.check_page("account-removed");

    // Another device logs in; "log out on all other devices" ends it.
    let mut phone = r.client();
    phone.extra.push(("User-Agent".into(), "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36".into()));
    login_full(&r, &mut phone, "anna", "Neues-Passwort-2025", &tablet);
    assert_eq!(phone.get("/").status, 200);
    b.goto(&format!("{}/_riegel/account", r.base));
    assert!(b.text().contains("Chrome · Android"), "{}", b.text());
    b.assert_no_overflow();
    b.check_page("account-sessions");
    b.click("form[action$='/end-others'] button[type=submit]");
    b.wait_url("notice=sessions_ended");
    assert_eq!(phone.get("/").status, 303, "the other device is logged out");
    b.check_page("account-others-ended");

    // The lockout page (another account): the way out and the contact.
    b.goto(&format!("{}/_riegel/logout", r.base));
    b.click("button[type=submit]");
    b.wait_source("page-logged-out");
    for _ in 0..4 {
        b.goto(&format!("{}/_riegel/login", r.base));
        b.sign_in("otto", "falsch-falsch");
        b.wait_source("login-error");
    }
    b.wait_source("lockout");
    assert!(b.text().contains(pick("neues Passwort anfordern", "request a new password")), "{}", b.text());
    b.assert_texts_translated();
    b.assert_no_overflow();
    b.check_page("lockout");

    // A lost phone: after reset-totp the password leads to the mailed link.
    r.admin(riegel::admin::AdminRequest::ResetTotp { user: "anna".into() });
    r.clock.advance(30);
    b.goto(&format!("{}/_riegel/login", r.base));
    b.sign_in("anna", "Neues-Passwort-2025");
    b.wait_url("/_riegel/new-device");
    assert!(!b.source().contains("<svg class=\"qr\""));
    b.assert_texts_translated();
    b.assert_no_overflow();
    b.check_page("new-device");
    let mails = r.smtp.wait_for(1, Duration::from_secs(10));
    let text = mails.iter().rev().find(|m| m.text().contains("/_riegel/new-device/")).expect("new-device mail").plain();
    let start = text.find(&format!("{}/_riegel/new-device/", r.base)).expect("link");
    let link: String = text[start..].chars().take_while(|c| !c.is_whitespace()).collect();
    b.goto(&link);
    b.assert_texts_translated();
    b.check_page("new-device-open");
    b.click("button[type=submit]");
    b.wait_url("/_riegel/setup");
    b.assert_texts_translated();
    b.assert_no_overflow();
    b.check_page("new-device-setup");

    if axe_source().is_some() {
        assert_eq!(b.axe_checked(), ACCOUNT_PAGES, "axe checked every page of the walk");
    }
}

#[test]
fn browser_account_german_and_english_desktop_and_phone() {
    with_driver(|d| {
        for lang in ["de", "en"] {
            account_walk(d, lang, 1280, 900, "desktop");
            account_walk(d, lang, 390, 844, "phone");
        }
    });
}

/// One browser at a time: three Chromium instances starting at once on a
/// 2-core machine sometimes fail to start.
static ONE_BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn with_driver(f: impl FnOnce(&Driver)) {
    let _turn = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    match Driver::start() {
        Some(d) => f(&d),
        None => eprintln!("chromium/chromedriver not installed: browser test skipped (it fails on CI)"),
    }
}

#[test]
fn browser_journey_german_desktop_and_phone() {
    with_driver(|d| {
        journey(d, "de", 1280, 900, "desktop");
        journey(d, "de", 390, 844, "phone");
    });
}

#[test]
fn browser_journey_english_desktop_and_phone() {
    with_driver(|d| {
        journey(d, "en", 1280, 900, "desktop");
        journey(d, "en", 390, 844, "phone");
    });
}

#[test]
fn upstream_error_page_in_the_browser() {
    with_driver(|d| {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        let r = Riegel::start_with(Options { upstream: Some(closed), ..Options::default() });
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("artifacts/screenshots/de/desktop-errors");
        let mut b = Session::open(d, 1280, 900, shots);
        b.goto(&format!("{}/favicon.ico", r.base));
        b.assert_texts_translated();
        b.check_page("error-502");
    });
}

/// riegel's CSP stops a script the page did not bring (an injected inline
/// script does not run), yet axe, sent through WebDriver, runs on the
/// page; and axe does report what it should (so 0 is not an empty check).
#[test]
fn axe_runs_under_riegels_csp_and_reports_violations() {
    with_driver(|d| {
        let Some(_) = axe_source() else { return };
        let r = Riegel::start();
        let b = Session::open(d, 1280, 900, PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("artifacts/screenshots/axe"));
        b.goto(&format!("{}/_riegel/login", r.base));
        let inline_ran = b.execute(
            "var s = document.createElement('script'); s.textContent = 'window.__injected = 1;';
             document.head.appendChild(s); return window.__injected === 1;",
        );
        assert_eq!(inline_ran, Value::Bool(false), "the page's CSP should block an injected inline script");
        let login = b.axe().expect("axe installed");
        assert!(login.violations.is_empty(), "login page: {:?}", login.violations);

        b.goto("data:text/html,<!doctype html><html><body><img src=x><input></body></html>");
        let found: Vec<String> = b.axe().expect("axe installed").violations.into_iter().map(|v| v.id).collect();
        for rule in ["html-has-lang", "image-alt", "label"] {
            assert!(found.iter().any(|f| f == rule), "axe should report {rule}: {found:?}");
        }
    });
}

/// The processes (not yet reaped) in process group `pgid` or with `marker`
/// on their command line.
fn processes_of(pgid: i32, marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return found };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and ')'.
        let Some((comm, rest)) = stat.rsplit_once(") ") else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) || (!marker.is_empty() && cmdline.contains(marker)) {
            found.push(format!("{pid} {}: {cmdline}", comm.split_once('(').map_or(comm, |c| c.1)));
        }
    }
    found
}

/// A journey that fails half-way leaves no chromedriver or Chromium behind.
#[test]
fn browser_processes_end_when_a_test_fails() {
    const FAILURE: &str = "deliberate failure: the cleanup test checks what it leaves behind";
    let _turn = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let pgid = std::sync::Mutex::new(None);
    let profile = std::sync::Mutex::new(String::new());
    let failed = std::panic::catch_unwind(|| {
        let Some(d) = Driver::start() else { return };
        *pgid.lock().unwrap_or_else(|e| e.into_inner()) = Some(d.pgid());
        let b = Session::open(&d, 800, 600, PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("artifacts/screenshots/cleanup"));
        *profile.lock().unwrap_or_else(|e| e.into_inner()) = b.profile().display().to_string();
        b.goto("data:text/html,<!doctype html><title>x</title><p>x</p>");
        let running = processes_of(d.pgid(), &b.profile().display().to_string());
        assert!(running.iter().any(|p| p.contains("chromium")), "Chromium runs: {running:?}");
        std::panic::panic_any(FAILURE);
    });
    let Some(pgid) = pgid.into_inner().unwrap_or_else(|e| e.into_inner()) else {
        eprintln!("chromium/chromedriver not installed: browser test skipped (it fails on CI)");
        return;
    };
    match failed {
        Err(e) if e.downcast_ref::<&str>() == Some(&FAILURE) => {}
        Err(e) => std::panic::resume_unwind(e),
        Ok(()) => panic!("the journey should have failed"),
    }
    let profile = profile.into_inner().unwrap_or_else(|e| e.into_inner());
    // Orphaned children are reaped by init; give that generous time.
    let start = Instant::now();
    loop {
        let left = processes_of(pgid, &profile);
        if left.is_empty() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "processes left after the failed test: {left:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!Path::new(&profile).exists(), "the profile directory is removed");
}

/// `riegel demo --portal-login` in German: the portal keeps its own login
/// form, riegel's page takes the password, the guide's enrolment follows,
/// and the portal's pages come with its own session (by number), whose
/// cookie the browser never holds; logout ends the portal's session too.
#[test]
fn browser_portal_login_demo_in_german() {
    with_driver(|d| {
        let portal = riegel::demo::start_login_portal("127.0.0.1:0".parse().expect("addr")).expect("portal");
        let r = Riegel::start_with(Options { upstream: Some(portal.addr), extra_yaml: riegel::demo::PORTAL_LOGIN_YAML.into(), ..Options::default() });
        let (user, password, _) = riegel::demo::PORTAL_USER;
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("artifacts/screenshots/de/portal-login");
        let mut b = Session::open(d, 1280, 900, shots);
        b.goto(&format!("{}/start", r.base));
        b.wait_url("/_riegel/login?rd=%2Fstart");
        let t = b.text();
        for w in ["Benutzername oder E-Mail", "Ihr Passwort", "Jetzt anmelden!", "Sie können nicht auf Ihr Konto zugreifen?"] {
            assert!(t.contains(w), "login page lacks {w:?}:\n{t}");
        }
        b.check_page("login");
        b.sign_in(user, "falsch-falsch");
        b.wait_source("login-error");
        b.sign_in(user, password);
        b.wait_url("/_riegel/setup");
        assert!(b.text().contains("Zwei-Faktor-Authentifizierung aktivieren"));
        b.check_page("setup");
        let secret = secret_of_uri(&decode_qr_svg(&qr_svg_of(&b.source())));
        b.click("a[href$='/_riegel/setup/confirm']");
        b.wait_url("/_riegel/setup/confirm");
        assert!(b.text().contains("Bestätigungscode eingeben"));
        b.fill("input[name=code]", &totp_code(&secret, r.now()));
        b.click("button[type=submit]");
        b.wait_source("code-list");
        assert!(b.text().contains("Erfolgreich aktiviert"));
        b.click("a[href='/start']");
        b.wait_url("/start");
        b.wait_source("portal-session");
        assert!(b.text().contains("Willkommen im Portal, mieterin!"), "{}", b.text());
        b.screenshot("portal");
        let cookies = b.run("cookies", b.client().get_all_cookies());
        assert!(cookies.iter().all(|c| c.name() != "PORTALSID"), "{cookies:?}");
        assert_eq!(portal.live_sessions().len(), 1);
        // The portal's logout link points at riegel's.
        b.click("#portal-logout");
        b.wait_url("/_riegel/logout");
        b.click("button[type=submit]");
        b.wait_source("/_riegel/login\"");
        assert!(portal.live_sessions().is_empty(), "the portal's session ended with riegel's");
    });
}
