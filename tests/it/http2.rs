//! HTTP/2 on riegel's TLS listener (ALPN `h2`, `http/1.1`), with a real
//! HTTP/2 client (curl, nghttp2 inside): the login page, the whole login
//! and a portal page with the identity, and the same rules as HTTP/1.1:
//! riegel's cookie removed from every one of h2's split `cookie` fields,
//! client-sent identity fields dropped, public paths, CSRF.

use std::collections::BTreeMap;

use crate::harness::*;
use crate::reload::make_cert;

/// A client speaking HTTP/2 through curl, with a cookie jar.
struct H2 {
    base: String,
    jar: BTreeMap<String, String>,
}

impl H2 {
    /// curl `--http2` (or other `proto` flags) for `path`; `None` when
    /// curl is missing (fails on CI).
    fn request(&mut self, proto: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Option<(String, Resp)> {
        let curl = tool("curl")?;
        let mut cmd = std::process::Command::new(curl);
        cmd.args(["-sS", "-k", "-i", "--path-as-is", "--max-time", "10", proto, "-X", method]);
        if !self.jar.is_empty() {
            let c = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
            cmd.arg("-H").arg(format!("cookie: {c}"));
        }
        for (k, v) in headers {
            cmd.arg("-H").arg(format!("{k}: {v}"));
        }
        if let Some(b) = body {
            cmd.args(["-H", "content-type: application/x-www-form-urlencoded", "--data-binary", b]);
        }
        let out = cmd.arg(format!("{}{path}", self.base)).output().expect("curl");
        assert!(out.status.success(), "curl {path}: {}", String::from_utf8_lossy(&out.stderr));
        let first = String::from_utf8_lossy(out.stdout.split(|b| *b == b'\r').next().unwrap_or_default()).to_string();
        let r = parse_response(&out.stdout);
        for sc in r.headers_named("set-cookie") {
            if let Some((k, v)) = sc.split(';').next().and_then(|f| f.split_once('=')) {
                if v.is_empty() || sc.to_ascii_lowercase().contains("max-age=0") {
                    self.jar.remove(k.trim());
                } else {
                    self.jar.insert(k.trim().to_string(), v.trim().to_string());
                }
            }
        }
        Some((first, r))
    }

    fn get(&mut self, path: &str) -> Option<(String, Resp)> {
        self.request("--http2", "GET", path, &[], None)
    }

    fn post(&mut self, path: &str, fields: &[(&str, &str)], csrf_page: &str) -> Option<(String, Resp)> {
        let (_, page) = self.get(csrf_page)?;
        let csrf = page.input("csrf").unwrap_or_else(|| panic!("no csrf on {csrf_page}: {}", page.body));
        let mut all = fields.to_vec();
        all.push(("csrf", &csrf));
        let origin = self.base.clone();
        self.request("--http2", "POST", path, &[("origin", &origin), ("sec-fetch-site", "same-origin")], Some(&form_encode(&all)))
    }
}

fn start() -> (Riegel, H2) {
    let dir = tempdir("h2");
    make_cert(&dir, "127.0.0.1");
    let r = Riegel::start_with(Options {
        extra_yaml: format!(
            "tls: {{ cert_file: \"{}\", key_file: \"{}\" }}\npublic_paths: [\"/oeffentlich\"]\n",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        ),
        https: true,
        ..Options::default()
    });
    let base = format!("https://127.0.0.1:{}", r.addr.port());
    (r, H2 { base, jar: BTreeMap::new() })
}

const SESSION: &str = "__Host-riegel_session";

#[test]
fn curl_http2_gets_the_login_page_and_with_a_session_the_portal_with_identity() {
    let (r, mut c) = start();
    r.add_user("hanna", Some("hanna@example.at"), Some("Passwort-2024!"));
    let Some((line, login)) = c.get("/_riegel/login") else { return };
    assert!(line.starts_with("HTTP/2 200"), "{line}");
    assert!(login.body.contains("Jetzt anmelden"), "{}", login.body);
    // No session: to the login page, over HTTP/2 too.
    let (line, to_login) = c.get("/mieter/vertrag").expect("curl");
    assert!(line.starts_with("HTTP/2 303"), "{line}");
    assert!(to_login.location().starts_with("/_riegel/login?rd="), "{}", to_login.location());

    // The whole login over HTTP/2: password, enrolment, first code.
    let (_, pw) = c.post("/_riegel/login", &[("username", "hanna"), ("password", "Passwort-2024!")], "/_riegel/login").expect("curl");
    assert_eq!((pw.status, pw.location()), (303, "/_riegel/setup"), "{}", pw.body);
    let (_, setup) = c.get("/_riegel/setup").expect("curl");
    let secret = secret_of_uri(&decode_qr_svg(&qr_svg_of(&setup.body)));
    let code = totp_code(&secret, r.now());
    let (_, done) = c.post("/_riegel/setup/confirm", &[("code", &code)], "/_riegel/setup/confirm").expect("curl");
    assert_eq!(done.status, 200, "{}", done.body);
    let session = c.jar.get(SESSION).cloned().expect("session cookie");

    // A portal page over HTTP/2, with the identity; the client's own
    // identity fields and riegel's cookie are not forwarded.
    let (line, page) = c
        .request("--http2", "GET", "/mieter/vertrag", &[("remote-user", "admin"), ("x-forwarded-for", "1.2.3.4"), ("remote_email", "x@y")], None)
        .expect("curl");
    assert!(line.starts_with("HTTP/2 200"), "{line}");
    assert_eq!(page.echoed("Remote-User"), vec!["hanna".to_string()], "{}", page.body);
    assert_eq!(page.echoed("Remote-Email"), vec!["hanna@example.at".to_string()]);
    assert!(page.echoed("remote_email").is_empty());
    assert_eq!(page.echoed("X-Forwarded-For"), vec!["127.0.0.1".to_string()]);
    assert_eq!(page.echoed("X-Forwarded-Proto"), vec!["https".to_string()]);
    // The portal gets the host HTTP/2 sent as :authority.
    assert_eq!(page.echoed("host"), vec![format!("127.0.0.1:{}", r.addr.port())], "{}", page.body);
    assert!(!page.body.contains(&session), "riegel's session cookie reached the portal: {}", page.body);

    // h2 sends each cookie as a field of its own: riegel's is found and
    // cut out of any of them, the portal's own are kept.
    let jar = std::mem::take(&mut c.jar);
    let mut fields: Vec<String> = vec!["portal_a=1".into()];
    fields.extend(jar.iter().map(|(k, v)| format!("{k}={v}")));
    fields.push("portal_b=2".into());
    let owned: Vec<(&str, &str)> = fields.iter().map(|f| ("cookie", f.as_str())).collect();
    let (line, split) = c.request("--http2", "GET", "/mieter/split", &owned, None).expect("curl");
    assert!(line.starts_with("HTTP/2 200"), "{line}: the session in one of several cookie fields was not found");
    assert_eq!(split.echoed("Remote-User"), vec!["hanna".to_string()]);
    let cookies = split.echoed("cookie").join("; ");
    assert!(cookies.contains("portal_a=1") && cookies.contains("portal_b=2"), "{cookies}");
    assert!(!cookies.contains(SESSION) && !cookies.contains(&session), "{cookies}");
    c.jar = jar;

    // A POST to the portal (a body through the framework) over HTTP/2.
    let (line, posted) = c
        .request("--http2", "POST", "/mieter/nachricht", &[("origin", &c.base.clone())], Some("text=Hallo"))
        .expect("curl");
    assert!(line.starts_with("HTTP/2 200"), "{line}");
    assert!(posted.body.contains("text=Hallo"), "{}", posted.body);
    assert_eq!(posted.echoed("Remote-User"), vec!["hanna".to_string()]);

    // The same page over HTTP/1.1 on the same listener (ALPN http/1.1).
    let (line, h1) = c.request("--http1.1", "GET", "/mieter/vertrag", &[], None).expect("curl");
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    assert_eq!(h1.echoed("Remote-User"), vec!["hanna".to_string()]);

    // CSRF over HTTP/2: a logout from another site is refused, and so is
    // a login form with a wrong token.
    let (_, cross) = c
        .request("--http2", "POST", "/_riegel/logout", &[("origin", "https://boese.example"), ("sec-fetch-site", "cross-site")], Some("csrf=falsch"))
        .expect("curl");
    assert_eq!(cross.status, 403, "{}", cross.body);
    let mut other = H2 { base: c.base.clone(), jar: BTreeMap::new() };
    let _ = other.get("/_riegel/login").expect("curl");
    let body = form_encode(&[("username", "hanna"), ("password", "Passwort-2024!"), ("csrf", "falsch")]);
    let (_, forged) = other
        .request("--http2", "POST", "/_riegel/login", &[("origin", &c.base.clone()), ("sec-fetch-site", "same-origin")], Some(&body))
        .expect("curl");
    assert_ne!(forged.status, 303, "a login with a wrong CSRF token went through: {}", forged.body);
    assert!(!other.jar.contains_key(SESSION));
    let (_, still) = c.get("/mieter/vertrag").expect("curl");
    assert_eq!(still.status, 200, "a cross-site logout ended the session");
}

#[test]
fn http2_keeps_the_public_path_rule_and_drops_te() {
    let (_r, mut c) = start();
    let Some((line, public)) = c.get("/oeffentlich") else { return };
    assert!(line.starts_with("HTTP/2 200"), "{line}");
    assert!(public.echoed("Remote-User").is_empty());
    // Not plain: a session is needed, over HTTP/2 as over HTTP/1.1.
    for path in ["/oeffentlich/../mieter", "/oeffentlich;x", "/oeffentlich%2f..%2fmieter", "/oeffentlich/"] {
        let (line, r) = c.request("--http2", "GET", path, &[("remote-user", "admin")], None).expect("curl");
        assert!(!line.starts_with("HTTP/2 200"), "{path}: {line} {}", r.body);
        assert!(r.echoed("Remote-User").is_empty());
    }
    // `te: trailers` is the one TE value HTTP/2 allows: it does not break
    // the request and is not passed on as a hop-by-hop field.
    let (line, te) = c.request("--http2", "GET", "/oeffentlich", &[("te", "trailers")], None).expect("curl");
    assert!(line.starts_with("HTTP/2 200"), "{line}");
    assert!(te.echoed("te").is_empty(), "{}", te.body);
}

/// nghttp (nghttp2-client) sends what curl will not: connection-specific
/// fields and a `:path` of its own choosing.
#[test]
fn http2_resets_streams_with_connection_specific_fields() {
    let (_r, c) = start();
    let Some(nghttp) = tool("nghttp") else { return };
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(&nghttp)
            .args(["-v", "-n", "--timeout=5"])
            .args(extra)
            .arg(format!("{}/oeffentlich", c.base))
            .output()
            .expect("nghttp");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let ok = run(&[]);
    assert!(ok.contains(":status: 200"), "{ok}");
    for bad in ["connection: keep-alive", "transfer-encoding: chunked", "upgrade: websocket", "keep-alive: 5", "proxy-connection: x"] {
        let out = run(&["-H", bad]);
        assert!(!out.contains(":status: 200"), "{bad} was accepted over HTTP/2:\n{out}");
        // The stream is reset as malformed (RFC 9113, 8.2.2).
        assert!(out.contains("RST_STREAM") && out.contains("PROTOCOL_ERROR"), "{bad}:\n{out}");
    }
    // `:path` as the client writes it, unnormalised: dot segments,
    // escapes, absolute form and `*` never reach the portal as public.
    for path in ["/oeffentlich/../mieter", "/oeffentlich/%2e%2e/mieter", "//oeffentlich", "http://127.0.0.1/oeffentlich", "*"] {
        let out = run(&["-H", &format!(":path: {path}")]);
        assert!(!out.contains(":status: 200"), ":path {path} was forwarded:\n{out}");
    }
}
