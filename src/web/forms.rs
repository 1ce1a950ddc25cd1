//! Form bodies, the CSRF cookie and token (signed double submit) and the
//! same-origin check on every POST.

use super::{cookie_header, page, Reply, Request, Services, WebError};
use crate::auth::crypto::random_token;
use crate::auth::session::find_cookie;

/// A parsed `application/x-www-form-urlencoded` body.
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        Form(url::form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
    }

    /// The first value of a field, or "" when absent.
    pub fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("")
    }
}

/// The CSRF token to put into a form, and a cookie to set when the client
/// has none yet.
pub struct Csrf {
    pub token: String,
    pub set_cookie: Option<String>,
}

pub fn csrf(req: &Request<'_>, s: &Services) -> Csrf {
    if let Some(v) = req.cookie.and_then(|c| find_cookie(c, &s.csrf_cookie_name)) {
        if v.len() >= 20 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Csrf { token: s.codec.csrf_token(v), set_cookie: None };
        }
    }
    let v = random_token::<18>(s.rng.as_ref());
    Csrf { token: s.codec.csrf_token(&v), set_cookie: Some(cookie_header(s, &s.csrf_cookie_name, &v, None, "Strict")) }
}

/// Renders a page with a form: adds the CSRF token to `ctx`, and sets the
/// CSRF cookie when the client has none yet.
pub fn form_page(req: &Request<'_>, s: &Services, status: u16, name: &str, ctx: minijinja::Value) -> Result<Reply, WebError> {
    let c = csrf(req, s);
    let ctx = minijinja::context! { ..ctx, ..minijinja::context! { csrf => c.token } };
    let mut r = page(s, req, status, name, ctx)?;
    if let Some(sc) = c.set_cookie {
        r.headers.push(("set-cookie", sc));
    }
    Ok(r)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostCheck {
    Ok,
    /// The browser says the form came from another site.
    CrossSite,
    /// Missing or wrong token (e.g. a page left open across a restart of
    /// the browser): the form is shown again with a message.
    BadToken,
}

/// Every POST: the browser's own origin signals first (`Sec-Fetch-Site`,
/// `Origin`), then the token.
pub fn check_post(req: &Request<'_>, s: &Services, form: &Form) -> PostCheck {
    if let Some(site) = req.sec_fetch_site {
        if !matches!(site, "same-origin" | "none") {
            return PostCheck::CrossSite;
        }
    }
    // `Origin: null` carries no information (browsers send it under a
    // no-referrer policy, e.g. on the reset page); the token still decides.
    if let Some(origin) = req.origin.filter(|o| *o != "null") {
        if origin != s.origin {
            return PostCheck::CrossSite;
        }
    }
    let cookie = req.cookie.and_then(|c| find_cookie(c, &s.csrf_cookie_name)).unwrap_or("");
    if s.codec.csrf_ok(cookie, form.get("csrf")) {
        PostCheck::Ok
    } else {
        PostCheck::BadToken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_parsing() {
        let f = Form::parse(b"username=anna%40example.at&password=a+b%26c&x=1&x=2");
        assert_eq!(f.get("username"), "anna@example.at");
        assert_eq!(f.get("password"), "a b&c");
        assert_eq!(f.get("x"), "1");
        assert_eq!(f.get("missing"), "");
    }
}
