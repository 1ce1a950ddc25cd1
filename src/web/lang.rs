//! The language of each request: the language cookie (set by the switch
//! link every page carries when more than one language is configured),
//! else the best match in `Accept-Language` (q-values), else the
//! configured default (`branding.language`).

use super::{cookie_header, Method, Request, Services};
use crate::auth::redirect::{encode_rd, safe_redirect};
use crate::auth::session::find_cookie;
use crate::config::Language;

/// How long the language cookie is kept (a year).
const COOKIE_MAX_AGE: i64 = 365 * 24 * 3600;

/// The language to answer `req` in.
pub(crate) fn choose(req: &Request<'_>, s: &Services) -> Language {
    let offered = &s.cfg.branding.languages;
    let default = s.cfg.branding.language;
    if offered.len() < 2 {
        return default;
    }
    let from_cookie = req
        .cookie
        .and_then(|c| find_cookie(c, &s.lang_cookie_name))
        .and_then(Language::from_code)
        .filter(|l| offered.contains(l));
    from_cookie.or_else(|| req.accept_language.and_then(|h| from_accept_language(h, offered, default))).unwrap_or(default)
}

/// The best of `offered` for an `Accept-Language` value: the highest
/// q-value wins, the earlier one on a tie; `de-AT` matches `de`, `*` the
/// default; `q=0` refuses. `None` when nothing offered is acceptable.
pub(crate) fn from_accept_language(header: &str, offered: &[Language], default: Language) -> Option<Language> {
    let mut best: Option<(u16, Language)> = None;
    for item in header.split(',').take(32) {
        let mut parts = item.split(';');
        let tag = parts.next().unwrap_or("").trim();
        let mut q = 1000u16;
        for p in parts {
            let p = p.trim();
            if let Some(v) = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
                q = parse_q(v.trim()).unwrap_or(0);
            }
        }
        if q == 0 || tag.is_empty() {
            continue;
        }
        let primary = tag.split('-').next().unwrap_or("").to_ascii_lowercase();
        let lang = if primary == "*" { Some(default) } else { Language::from_code(&primary).filter(|l| offered.contains(l)) };
        if let Some(l) = lang {
            if best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, l));
            }
        }
    }
    best.map(|(_, l)| l)
}

/// A q-value (`0`, `0.5`, `1.000`) in thousandths; `None` if malformed.
fn parse_q(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole = match int {
        "0" => 0u16,
        "1" => 1000,
        _ => return None,
    };
    let mut f = 0u16;
    for (i, b) in frac.bytes().enumerate() {
        f += u16::from(b - b'0') * [100, 10, 1][i];
    }
    let q = whole + f;
    (q <= 1000).then_some(q)
}

/// The name a language is offered under, in its own language.
pub(crate) fn native_name(l: Language) -> &'static str {
    match l {
        Language::De => "Deutsch",
        Language::En => "English",
    }
}

/// Where the switch link returns to: this page (a GET's path and query;
/// for a POST the page of the form, which every POST route has, or "Mein
/// Zugang" for its forms).
fn return_to(req: &Request<'_>, s: &Services) -> String {
    let mut target = req.path.to_string();
    let account = format!("{}/account/", s.prefix);
    if matches!(req.method, Method::Get | Method::Head) {
        if let Some(q) = req.query {
            target.push('?');
            target.push_str(q);
        }
    } else if target.starts_with(&account) {
        target = s.route("account");
    }
    safe_redirect(&target).map(str::to_string).unwrap_or_else(|| s.route("login"))
}

/// The links to the other configured languages, for the page's switch:
/// a list of `{code, name, href}`.
pub(crate) fn switch_links(req: &Request<'_>, s: &Services, current: Language) -> minijinja::Value {
    let offered = &s.cfg.branding.languages;
    if offered.len() < 2 {
        return minijinja::Value::from(Vec::<minijinja::Value>::new());
    }
    let rd = encode_rd(&return_to(req, s));
    let links: Vec<minijinja::Value> = offered
        .iter()
        .filter(|l| **l != current)
        .map(|l| {
            minijinja::context! {
                code => l.code(),
                name => native_name(*l),
                href => format!("{}/language/{}?rd={rd}", s.prefix, l.code()),
            }
        })
        .collect();
    minijinja::Value::from(links)
}

/// `GET /_riegel/language/<code>?rd=...`: remembers the choice in a cookie
/// and goes back to the page.
pub(super) fn switch(req: &Request<'_>, s: &Services, code: &str) -> super::Reply {
    let back = super::rd_param(req).unwrap_or_else(|| s.route("login"));
    let mut r = super::redirect(&back);
    if let Some(l) = Language::from_code(code).filter(|l| s.cfg.branding.languages.contains(l)) {
        r.headers.push(("set-cookie", cookie_header(s, &s.lang_cookie_name, l.code(), Some(COOKIE_MAX_AGE), "Lax")));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use Language::{De, En};

    #[test]
    fn accept_language_q_values_and_subtags() {
        let both = [De, En];
        let pick = |h: &str| from_accept_language(h, &both, De);
        assert_eq!(pick("en-GB,en;q=0.9,de;q=0.8"), Some(En));
        assert_eq!(pick("de-AT,de;q=0.9,en;q=0.8"), Some(De));
        assert_eq!(pick("fr-FR, en;q=0.5, de;q=0.7"), Some(De));
        assert_eq!(pick("en;q=0.5, de;q=0.5"), Some(En), "a tie goes to the earlier one");
        assert_eq!(pick("EN-us"), Some(En));
        assert_eq!(pick("fr, it"), None);
        assert_eq!(pick("*"), Some(De));
        assert_eq!(pick("fr, *;q=0.1"), Some(De));
        assert_eq!(pick("en;q=0, de;q=0.1"), Some(De), "q=0 refuses");
        assert_eq!(pick("en;q=0"), None);
        assert_eq!(pick("en;q=abc, de;q=0.2"), Some(De), "a malformed q counts as 0");
        assert_eq!(pick("en;q=1.5"), None);
        assert_eq!(pick("en;q=0.0001"), None);
        assert_eq!(pick(""), None);
        assert_eq!(pick(",,;;==,"), None);
        assert_eq!(pick("en"), Some(En));
        assert_eq!(from_accept_language("en", &[De], De), None, "only configured languages");
        assert_eq!(parse_q("0.5"), Some(500));
        assert_eq!(parse_q("1.000"), Some(1000));
        assert_eq!(parse_q("1.001"), None);
        assert_eq!(parse_q(".5"), None);
    }
}
