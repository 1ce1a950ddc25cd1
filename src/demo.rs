//! `riegel demo`: a small demo portal (a page that shows which identity
//! headers it received), a fresh data directory with generated keys, a demo
//! user, and a config that wires them together. The test harness uses the
//! same portal as its echo upstream.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod login_portal;
pub use login_portal::{start_login_portal, LoginPortal, PORTAL_COOKIE, PORTAL_LOGIN_YAML, PORTAL_USER};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// Starts the demo portal on `addr` (port 0 picks a free one) in its own
/// thread and runtime; returns the bound address.
pub fn start_portal(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;
    std::thread::Builder::new().name("demo-portal".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "demo portal runtime");
                return;
            }
        };
        rt.block_on(async move {
            let Ok(listener) = TcpListener::from_std(std_listener) else { return };
            loop {
                let Ok((sock, _)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    let _ = serve_conn(sock).await;
                });
            }
        });
    })?;
    Ok(bound)
}

async fn serve_conn(sock: tokio::net::TcpStream) -> std::io::Result<()> {
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
        // /slow?ms=N lets tests make the portal too slow (504).
        if let Some(ms) = target.strip_prefix("/slow?ms=").and_then(|v| v.parse::<u64>().ok()) {
            tokio::time::sleep(Duration::from_millis(ms.min(120_000))).await;
        }
        let page = render(&method, &target, &headers, &body);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\r\n",
            page.len()
        );
        w.write_all(head.as_bytes()).await?;
        w.write_all(page.as_bytes()).await?;
        w.flush().await?;
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The demo portal's one page: who riegel says the user is (the identity
/// headers), links to "Mein Zugang" and to logout, and the request as it
/// arrived. Readable on a phone; the ids and the `<pre id="headers">`
/// lines ("Name: value") are what the tests read.
fn render(method: &str, target: &str, headers: &[(String, String)], body: &[u8]) -> String {
    let get = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| esc(v));
    let mut rows = String::new();
    for (k, v) in headers {
        rows.push_str(&format!("{}: {}\n", esc(k), esc(v)));
    }
    let dash = || "—".to_string();
    let greeting = match get("remote-name") {
        Some(n) => format!("Willkommen, <strong id=\"remote-name\">{n}</strong>!"),
        None => "Diese Seite ist öffentlich: riegel hat keine Anmeldung mitgeschickt.".to_string(),
    };
    format!(
        r#"<!doctype html>
<html lang="de"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Demo-Portal</title>
<style>
:root {{ color-scheme: light; --green: #2f6111; --line: #d6dcd2; --soft: #f3f6f1; }}
* {{ box-sizing: border-box; }}
body {{ margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1c2418; background: var(--soft); }}
header {{ background: var(--green); color: #fff; padding: 0.9rem 1rem; }}
header p {{ margin: 0; font-weight: 600; }}
main {{ max-width: 44rem; margin: 0 auto; padding: 1rem; }}
h1 {{ font-size: 1.5rem; margin: 0.5rem 0 0.25rem; }}
h2 {{ font-size: 1.1rem; margin: 0 0 0.5rem; }}
.card {{ background: #fff; border: 1px solid var(--line); border-radius: 0.5rem; padding: 1rem; margin: 1rem 0; }}
dl {{ display: grid; grid-template-columns: max-content 1fr; gap: 0.25rem 1rem; margin: 0; }}
dt {{ font-weight: 600; }}
dd {{ margin: 0; overflow-wrap: anywhere; }}
.actions {{ display: flex; flex-wrap: wrap; gap: 0.75rem; align-items: center; }}
.actions a, .actions button {{ font: inherit; padding: 0.6rem 1rem; border-radius: 0.4rem; border: 2px solid var(--green); cursor: pointer; text-decoration: none; }}
.actions a {{ color: var(--green); background: #fff; }}
.actions button {{ color: #fff; background: var(--green); }}
.actions form {{ margin: 0; }}
pre {{ white-space: pre-wrap; overflow-wrap: anywhere; font-size: 0.85rem; background: var(--soft); padding: 0.5rem; border-radius: 0.3rem; margin: 0.5rem 0 0; }}
.note {{ color: #465040; font-size: 0.9rem; }}
</style></head>
<body>
<header><p>Demo-Portal</p></header>
<main>
<h1>Demo-Portal</h1>
<p>{greeting}</p>
<section class="card" aria-labelledby="who">
<h2 id="who">Was riegel dem Portal mitteilt</h2>
<dl>
<dt>Remote-User</dt><dd id="remote-user">{user}</dd>
<dt>Remote-Email</dt><dd id="remote-email">{email}</dd>
<dt>Remote-Name</dt><dd>{name}</dd>
</dl>
</section>
<section class="card actions" aria-label="Konto">
<a href="/_riegel/account" id="account">Mein Zugang</a>
<form method="post" action="/_riegel/logout"><button type="submit" id="logout">Abmelden</button></form>
</section>
<section class="card" aria-labelledby="req">
<h2 id="req">Die Anfrage, wie sie beim Portal ankam</h2>
<p class="note">Der Cookie von riegel ist entfernt, die Identität hat riegel selbst gesetzt.</p>
<pre id="request-line">{method} {target}</pre>
<pre id="headers">
{rows}</pre>
<pre id="body">{body}</pre>
</section>
</main>
</body></html>
"#,
        user = get("remote-user").unwrap_or_else(dash),
        email = get("remote-email").unwrap_or_else(dash),
        name = get("remote-name").unwrap_or_else(dash),
        method = esc(method),
        target = esc(target),
        rows = rows,
        body = esc(&String::from_utf8_lossy(body)),
    )
}

/// Writes a key file with 32 random bytes as hex, mode 0600.
pub fn write_key(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = data_encoding::HEXLOWER.encode(&crate::auth::crypto::random_array::<32>(&crate::auth::OsRandom));
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    writeln!(f, "{key}")
}

/// The demo's files: a config, two keys, the store and the outbox, all in `dir`.
pub struct DemoFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub outbox: PathBuf,
}

pub fn write_demo_config(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<DemoFiles> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    write_key(&dir.join("session.key"))?;
    write_key(&dir.join("storage.key"))?;
    let outbox = dir.join("outbox");
    let config = dir.join("riegel.yaml");
    let text = format!(
        r#"# Written by `riegel demo`.
listen: "{listen}"
public_url: "http://{listen}"
upstream:
  url: "http://{upstream}"
store:
  path: "{store}"
secrets:
  session_key_file: session.key
  storage_key_file: storage.key
mail:
  from: "IMMO PRO Portal <portal@example.invalid>"
  outbox: "{outbox}"
branding:
  company: "IMMO PRO Immobilien GmbH"
  portal_name: "Portal"
  language: de
totp:
  issuer: "IMMO PRO (Demo)"
"#,
        store = dir.join("data").display(),
        outbox = outbox.display(),
    );
    std::fs::write(&config, text)?;
    Ok(DemoFiles { dir: dir.to_path_buf(), config, outbox })
}

/// [`write_demo_config`] in portal login mode, for [`start_login_portal`].
pub fn write_portal_demo_config(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<DemoFiles> {
    let files = write_demo_config(dir, listen, upstream)?;
    let mut text = std::fs::read_to_string(&files.config)?;
    text.push_str(PORTAL_LOGIN_YAML);
    std::fs::write(&files.config, text)?;
    Ok(files)
}
