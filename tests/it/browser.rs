//! The whole customer guide in a real browser: headless Chromium driven
//! through chromedriver's W3C WebDriver API. Every page is saved as a
//! screenshot under `artifacts/screenshots/<lang>/<width>/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver() -> Option<Driver> {
    let chromedriver = tool("chromedriver")?;
    tool("chromium")?;
    let port = free_port();
    let child = Command::new(chromedriver)
        .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Driver { child, addr })
}

fn wd(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Value {
    let body = body.map(|b| b.to_string());
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(b) = &body {
        raw.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()));
    } else {
        raw.push_str("\r\n");
    }
    let resp = raw_request(addr, raw.as_bytes());
    let v: Value = serde_json::from_str(&resp.body).unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}: {}", resp.body));
    if resp.status != 200 {
        panic!("webdriver {method} {path} -> {}: {}", resp.status, v);
    }
    v["value"].clone()
}

struct Browser {
    driver: SocketAddr,
    session: String,
    shots: PathBuf,
    n: u32,
    size: (u32, u32),
}

impl Browser {
    fn new(d: &Driver, width: u32, height: u32, shots: PathBuf) -> Browser {
        let profile = tempdir("chromium-profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", format!("--user-data-dir={}", profile.display()),
                         format!("--window-size={width},{height}")]
            }
        }}});
        // Chrome can fail to start on a loaded machine: try a few times.
        let mut v = Value::Null;
        for attempt in 0..3 {
            match std::panic::catch_unwind(|| wd(d.addr, "POST", "/session", Some(caps.clone()))) {
                Ok(x) => {
                    v = x;
                    break;
                }
                Err(e) if attempt == 2 => std::panic::resume_unwind(e),
                Err(_) => std::thread::sleep(Duration::from_secs(1)),
            }
        }
        let session = v["sessionId"].as_str().expect("session id").to_string();
        let b = Browser { driver: d.addr, session, shots, n: 0, size: (width, height) };
        b.cmd("POST", "/window/rect", Some(json!({"width": width, "height": height})));
        // Element look-ups wait for the next page to be there.
        b.cmd("POST", "/timeouts", Some(json!({"implicit": 5000, "pageLoad": 20000})));
        std::fs::create_dir_all(&b.shots).expect("screenshot dir");
        b
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        wd(self.driver, method, &format!("/session/{}{path}", self.session), body)
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url})));
    }

    /// Waits until the URL ends with `suffix` (navigation after a click).
    fn wait_url(&self, suffix: &str) {
        let start = Instant::now();
        loop {
            let u = self.url();
            if u.ends_with(suffix) {
                return;
            }
            if start.elapsed() > Duration::from_secs(15) {
                panic!("expected a URL ending in {suffix}, at {u}:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the page source contains `needle` (the answer to a POST).
    fn wait_source(&self, needle: &str) {
        let start = Instant::now();
        while !self.source().contains(needle) {
            if start.elapsed() > Duration::from_secs(15) {
                panic!("expected {needle:?} on {}:\n{}", self.url(), self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        self.cmd("GET", "/url", None).as_str().unwrap_or("").to_string()
    }

    fn source(&self) -> String {
        self.cmd("GET", "/source", None).as_str().unwrap_or("").to_string()
    }

    /// Visible text of the page.
    fn text(&self) -> String {
        self.cmd("POST", "/execute/sync", Some(json!({"script": "return document.body.innerText;", "args": []})))
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn find(&self, css: &str) -> String {
        let v = self.cmd("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css} on {}: {v}\n{}", self.url(), self.source())).to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/clear"), Some(json!({})));
        self.cmd("POST", &format!("/element/{e}/value"), Some(json!({"text": text})));
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    /// The element that has focus, as its `name` or `id`.
    fn focused(&self) -> String {
        self.cmd("POST", "/execute/sync", Some(json!({"script": "var a=document.activeElement; return a ? (a.name || a.id || a.tagName) : '';", "args": []})))
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Fills the login form and submits it.
    fn sign_in(&self, user: &str, password: &str) {
        self.type_into("input[name=username]", user);
        self.type_into("input[name=password]", password);
        self.click("button[type=submit]");
    }

    /// A full-page screenshot: the window grows to the page's height for it.
    fn shot(&mut self, name: &str) {
        self.n += 1;
        let full = self
            .cmd("POST", "/execute/sync", Some(json!({"script": "return document.documentElement.scrollHeight;", "args": []})))
            .as_u64()
            .unwrap_or(0) as u32;
        let (w, h) = self.size;
        if full > h {
            self.cmd("POST", "/window/rect", Some(json!({"width": w, "height": full + 140})));
        }
        let b64 = self.cmd("GET", "/screenshot", None);
        if full > h {
            self.cmd("POST", "/window/rect", Some(json!({"width": w, "height": h})));
        }
        let png = data_encoding::BASE64.decode(b64.as_str().expect("png").as_bytes()).expect("base64");
        std::fs::write(self.shots.join(format!("{:02}-{name}.png", self.n)), png).expect("save screenshot");
    }

    /// No i18n key name and no placeholder may be visible.
    fn assert_texts_translated(&self) {
        let t = self.text();
        for bad in ["err_", "error_", "notice_", "login_", "setup_", "verify_", "reset_", "forgot_", "{minutes}", "{min}", "undefined"] {
            assert!(!t.contains(bad), "untranslated text {bad:?} on {}:\n{t}", self.url());
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| wd(self.driver, "DELETE", &format!("/session/{}", self.session), None));
    }
}

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
    let _ = std::fs::remove_dir_all(&shots);
    let mut b = Browser::new(d, width, height, shots);

    // 1.1: the portal sends to the login page.
    b.go(&format!("{}/mieter/start", r.base));
    assert!(b.url().contains("/_riegel/login"), "{}", b.url());
    assert_eq!(b.focused(), "username", "focus on the first field");
    b.assert_texts_translated();
    if lang == "de" {
        let t = b.text();
        for w in ["Benutzername oder E-Mail", "Ihr Passwort", "Jetzt anmelden!", "Sie können nicht auf Ihr Konto zugreifen?", "IMMO PRO Immobilien GmbH", "Portal"] {
            assert!(t.contains(w), "login page lacks {w:?}:\n{t}");
        }
    }
    b.shot("login");
    b.sign_in("anna", "falsch-falsch");
    b.assert_texts_translated();
    b.shot("login-failed");
    b.sign_in("anna", "Sommer-2024!");

    // 1.1.1: enrolment.
    b.wait_url("/_riegel/setup");
    b.assert_texts_translated();
    b.shot("setup");
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
    b.shot("confirm");
    b.type_into("input[name=code]", &totp_code(&secret, r.now()));
    b.click("button[type=submit]");
    b.wait_source("code-list");
    if !words.activated.is_empty() {
        assert!(b.text().contains(words.activated), "{}", b.text());
    }
    b.assert_texts_translated();
    b.shot("activated");
    assert_eq!(recovery_codes_of(&b.source()).len(), 10);
    b.click("a[href='/mieter/start']");

    // The portal with the identity headers.
    b.wait_url("/mieter/start");
    assert!(b.text().lines().any(|l| l.trim() == "anna"), "portal does not show Remote-User");
    b.shot("portal");
    b.click("#logout");
    b.wait_source("/_riegel/login\"");
    b.assert_texts_translated();
    b.shot("logged-out");

    // 2.1: the next login asks for the code again.
    r.clock.advance(30);
    b.go(&format!("{}/", r.base));
    b.sign_in("anna@example.at", "Sommer-2024!");
    b.wait_url("/_riegel/verify");
    assert_eq!(b.focused(), "code");
    b.assert_texts_translated();
    b.shot("verify");
    b.click("a[href$='/_riegel/recovery']");
    b.assert_texts_translated();
    b.shot("recovery");
    b.go(&format!("{}/_riegel/verify", r.base));
    b.type_into("input[name=code]", "123");
    b.click("button[type=submit]");
    b.assert_texts_translated();
    b.shot("verify-error");
    b.type_into("input[name=code]", &totp_code(&secret, r.now()));
    b.click("button[type=submit]");
    b.wait_source("Demo-Portal");
    b.go(&format!("{}/_riegel/logout", r.base));
    b.assert_texts_translated();
    b.shot("logout-confirm");
    b.click("button[type=submit]");
    b.wait_source("/_riegel/login\"");

    // 3: forgotten password.
    b.go(&format!("{}/_riegel/login", r.base));
    b.click("a[href$='/_riegel/forgot']");
    b.assert_texts_translated();
    b.shot("forgot");
    b.type_into("input[name=username]", "anna");
    b.click("button[type=submit]");
    // The answer comes after a flushed store write: wait for the page.
    b.wait_source("page-forgot-sent");
    b.assert_texts_translated();
    if lang == "de" {
        assert!(b.text().to_uppercase().contains("SPAM"), "spam hint missing");
    }
    b.shot("forgot-sent");
    let mails = r.smtp.wait_for(1, Duration::from_secs(10));
    let text = mails.last().expect("reset mail").text();
    let start = text.find(&format!("{}/_riegel/reset/", r.base)).expect("link");
    let link: String = text[start..].chars().take_while(|c| !c.is_whitespace() && *c != '"' && *c != '<').collect();
    b.go(&link);
    b.assert_texts_translated();
    b.shot("reset");
    b.type_into("input[name=password]", "kurz");
    b.type_into("input[name=password2]", "kurz");
    b.click("button[type=submit]");
    b.assert_texts_translated();
    b.shot("reset-error");
    b.type_into("input[name=password]", "Neues-Passwort-2025");
    b.type_into("input[name=password2]", "Neues-Passwort-2025");
    b.click("button[type=submit]");
    // The new password is hashed first (argon2, lowest CPU class).
    b.wait_source("page-reset-done");
    b.assert_texts_translated();
    b.shot("reset-done");

    // Log in with the new password: the code is still asked for.
    r.clock.advance(30);
    b.go(&format!("{}/mieter/start", r.base));
    b.sign_in("anna", "Neues-Passwort-2025");
    b.wait_url("/_riegel/verify");
    b.type_into("input[name=code]", &totp_code(&secret, r.now()));
    b.click("button[type=submit]");
    b.wait_url("/mieter/start");
    b.shot("portal-again");

    // Error pages.
    b.go(&format!("{}/_riegel/nichts", r.base));
    b.assert_texts_translated();
    b.shot("error-404");
    b.go(&format!("{}/_riegel/reset/{}", r.base, "x".repeat(43)));
    b.assert_texts_translated();
    b.shot("error-reset-invalid");
}

/// One browser at a time: three Chromium instances starting at once on a
/// 2-core machine sometimes fail to start.
static ONE_BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn with_driver(f: impl FnOnce(&Driver)) {
    let _turn = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    match start_driver() {
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
        let mut b = Browser::new(d, 1280, 900, shots);
        b.go(&format!("{}/favicon.ico", r.base));
        b.assert_texts_translated();
        b.shot("error-502");
    });
}
