//! `riegel demo --portal-login`: a legacy-style demo portal with its own
//! login (the tests' portal for `first_factor: portal` too). It has its
//! own users and passwords, a login form with a hidden CSRF field bound
//! to a pre-login cookie, its own session cookie `PORTALSID`, a reset
//! page of its own, and it ignores `Remote-User` entirely. Its pages say
//! which portal session the request carried. It remembers every request
//! line and Cookie it saw ([`LoginPortal::seen`]) so tests can check what
//! reached it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// The demo portal's user (name, password, display name).
pub const PORTAL_USER: (&str, &str, &str) = ("mieterin", "Portal-Passwort-2024", "Maria Mieterin");

/// The portal's session cookie.
pub const PORTAL_COOKIE: &str = "PORTALSID";

#[derive(Default)]
struct State {
    /// Pre-login sessions and their CSRF tokens.
    pre: HashMap<String, String>,
    /// Logged-in sessions: their user and number.
    sessions: HashMap<String, (String, u64)>,
    /// Request lines with their Cookie header, in order.
    seen: Vec<String>,
    /// Numbers the tokens handed out.
    counter: u64,
}

/// A running login portal.
#[derive(Clone)]
pub struct LoginPortal {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl LoginPortal {
    /// `METHOD target | cookie` for every request so far.
    pub fn seen(&self) -> Vec<String> {
        self.state.lock().map(|s| s.seen.clone()).unwrap_or_default()
    }

    /// The portal's sessions that are still logged in.
    pub fn live_sessions(&self) -> Vec<String> {
        self.state.lock().map(|s| s.sessions.keys().cloned().collect()).unwrap_or_default()
    }
}

/// Starts the login portal on `addr` (port 0: a free one) in its own thread.
pub fn start_login_portal(addr: SocketAddr) -> std::io::Result<LoginPortal> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let portal = LoginPortal { addr: std_listener.local_addr()?, state: Arc::new(Mutex::new(State::default())) };
    let p = portal.clone();
    std::thread::Builder::new().name("demo-login-portal".into()).spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() else { return };
        rt.block_on(async move {
            let Ok(listener) = TcpListener::from_std(std_listener) else { return };
            loop {
                let Ok((sock, _)) = listener.accept().await else { continue };
                let p = p.clone();
                tokio::spawn(async move {
                    let _ = serve_conn(sock, p).await;
                });
            }
        });
    })?;
    Ok(portal)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn cookie<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
        .flat_map(|(_, v)| v.split(';'))
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn token(st: &mut State, prefix: &str) -> String {
    st.counter += 1;
    let r: [u8; 12] = crate::auth::crypto::random_array(&crate::auth::OsRandom);
    format!("{prefix}{}{}", st.counter, data_encoding::HEXLOWER.encode(&r))
}

struct Answer {
    status: &'static str,
    headers: Vec<String>,
    body: String,
}

fn redirect(to: &str, headers: Vec<String>) -> Answer {
    let mut h = vec![format!("Location: {to}")];
    h.extend(headers);
    Answer { status: "302 Found", headers: h, body: String::new() }
}

fn page(title: &str, main: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="de"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body {{ font: 16px/1.5 system-ui, sans-serif; margin: 0; background: #f4f1ea; color: #222; }}
header {{ background: #6b3e12; color: #fff; padding: 0.8rem 1rem; font-weight: 600; }}
main {{ max-width: 40rem; margin: 0 auto; padding: 1rem; }} .card {{ background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 1rem; }}
label {{ display: block; margin-top: 0.6rem; }} input {{ font: inherit; padding: 0.4rem; width: 100%; box-sizing: border-box; }}
code {{ word-break: break-all; }}</style></head>
<body><header>Altes Hausverwaltungs-Portal (Demo mit eigener Anmeldung)</header><main>{main}</main></body></html>"#
    )
}

fn login_form(csrf: &str, error: bool) -> String {
    let err = if error { r#"<p id="portal-error" role="alert">Benutzername oder Passwort falsch.</p>"# } else { "" };
    page(
        "Portal-Anmeldung",
        &format!(
            r#"<div class="card"><h1>Anmeldung am Portal</h1>{err}
<form method="post" action="/login"><input type="hidden" name="csrf_token" value="{csrf}">
<label>Benutzer <input name="username" autocomplete="username"></label>
<label>Kennwort <input type="password" name="password" autocomplete="current-password"></label>
<p><button type="submit" name="login" value="1">Anmelden</button></p></form>
<p><a href="/password-reset">Kennwort vergessen?</a></p></div>"#
        ),
    )
}

fn answer(method: &str, target: &str, headers: &[(String, String)], body: &[u8], st: &mut State) -> Answer {
    let path = target.split('?').next().unwrap_or(target);
    let sid = cookie(headers, PORTAL_COOKIE).map(str::to_string);
    let user = sid.as_ref().and_then(|s| st.sessions.get(s)).cloned();
    let number = st.counter + 1;
    match (method, path) {
        ("GET", "/login") => {
            // A fresh pre-login session with its CSRF token.
            let pre = token(st, "pre-");
            let csrf = token(st, "csrf-");
            st.pre.insert(pre.clone(), csrf.clone());
            Answer {
                status: "200 OK",
                headers: vec![format!("Set-Cookie: {PORTAL_COOKIE}={pre}; Path=/; HttpOnly")],
                body: login_form(&csrf, target.contains("error")),
            }
        }
        ("POST", "/login") => {
            let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
            let f = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
            let csrf_ok = sid.as_ref().and_then(|s| st.pre.get(s)).is_some_and(|c| c == f("csrf_token"));
            let (name, pw, _) = PORTAL_USER;
            if csrf_ok && f("username").eq_ignore_ascii_case(name) && f("password") == pw && f("login") == "1" {
                if let Some(s) = &sid {
                    st.pre.remove(s);
                }
                let new = token(st, "s-");
                st.sessions.insert(new.clone(), (name.to_string(), number));
                redirect(
                    "/start",
                    vec![format!("Set-Cookie: {PORTAL_COOKIE}={new}; Path=/; HttpOnly"), "Set-Cookie: portal_theme=braun; Path=/".into()],
                )
            } else {
                redirect("/login?error=1", vec![])
            }
        }
        ("GET", "/logout") => {
            if let Some(s) = &sid {
                st.sessions.remove(s);
            }
            redirect("/login", vec![format!("Set-Cookie: {PORTAL_COOKIE}=; Path=/; Max-Age=0")])
        }
        ("GET", "/favicon.ico") => Answer { status: "404 Not Found", headers: vec![], body: String::new() },
        ("GET", "/password-reset") => Answer {
            status: "200 OK",
            // Like many portals, it starts a session on every page.
            headers: vec![format!("Set-Cookie: {PORTAL_COOKIE}={}; Path=/", token(st, "pre-")), "Set-Cookie: portal_lang=de; Path=/".into()],
            body: page("Kennwort vergessen", r#"<div class="card"><h1 id="portal-reset">Kennwort vergessen</h1><p>Bitte wenden Sie sich an die Hausverwaltung.</p></div>"#),
        },
        (_, "/rotate") if user.is_some() => {
            // The portal renews its session id (as some do on privilege changes).
            let old = sid.clone().unwrap_or_default();
            let new = token(st, "s-");
            if let Some((u, _)) = st.sessions.remove(&old) {
                st.sessions.insert(new.clone(), (u, number));
            }
            redirect("/start", vec![format!("Set-Cookie: {PORTAL_COOKIE}={new}; Path=/; HttpOnly")])
        }
        (_, _) => match user {
            None => redirect("/login", vec![]),
            Some((u, n)) => {
                let remote = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("remote-user")).map(|(_, v)| v.as_str()).unwrap_or("—");
                Answer {
                    status: "200 OK",
                    headers: vec![],
                    body: page(
                        "Portal",
                        &format!(
                            r#"<div class="card"><h1>Willkommen im Portal, <span id="portal-user">{}</span>!</h1>
<p>Diese Seite kam mit der Portal-Sitzung <strong id="portal-session">Nr. {}</strong> (das Sitzungs-Cookie des Portals sieht nur riegel, nie der Browser).</p>
<p>riegel meldet außerdem Remote-User: <code id="remote-user">{}</code> (dieses Portal ignoriert das).</p>
<p>Angefragt: <code id="portal-path">{}</code></p>
<p><a id="portal-logout" href="/_riegel/logout">Abmelden</a></p></div>"#,
                            esc(&u),
                            n,
                            esc(remote),
                            esc(target)
                        ),
                    ),
                }
            }
        },
    }
}

async fn serve_conn(sock: tokio::net::TcpStream, p: LoginPortal) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    loop {
        let mut request_line = String::new();
        if r.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let mut headers: Vec<(String, String)> = Vec::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.to_string(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len.min(1 << 20)];
        r.read_exact(&mut body).await?;
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("/").to_string();
        let close = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close"));
        let a = {
            let Ok(mut st) = p.state.lock() else { return Ok(()) };
            let cookies: Vec<&str> = headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("cookie")).map(|(_, v)| v.as_str()).collect();
            st.seen.push(format!("{method} {target} | {}", cookies.join(" + ")));
            answer(&method, &target, &headers, &body, &mut st)
        };
        let mut head = format!("HTTP/1.1 {}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\n", a.status, a.body.len());
        for h in &a.headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        w.write_all(head.as_bytes()).await?;
        w.write_all(a.body.as_bytes()).await?;
        w.flush().await?;
        if close {
            return Ok(());
        }
    }
}

/// The `first_factor: portal` keys for the login portal.
pub const PORTAL_LOGIN_YAML: &str = r#"first_factor: portal
public_paths: ["/favicon.ico", "/password-reset"]
portal_login:
  form_url: "/login"
  post_url: "/login"
  username_field: "username"
  password_field: "password"
  success: { redirect_not_to: ["/login"], set_cookie: "PORTALSID" }
  session_cookies: ["PORTALSID"]
  logout_url: "/logout"
  forgot_url: "/password-reset"
"#;
