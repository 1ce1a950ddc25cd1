#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use minijinja::context;
use minijinja::value::Value;

use super::render::overlay;
use super::samples::{mail_sample_variants, sample_variants};
use super::texts::{fill_placeholders, leftover_placeholder, TextMap, LANGUAGES};
use super::theme::{accessible_on_white, contrast_with_white, parse_hex_color};
use super::*;

/// The branding of the tests.
pub(crate) fn branding() -> BrandingConfig {
    BrandingConfig {
        company: "IMMO PRO Immobilien GmbH".into(),
        portal_name: "Portal".into(),
        language: Language::De,
        languages: vec![Language::De, Language::En],
        timezone: "Europe/Vienna".into(),
        contact: crate::config::Contact { phone: Some("+43 1 234 56 78".into()), email: Some("hausverwaltung@example.at".into()) },
        logo_file: None,
        primary_color: "#5a9e1b".into(),
        imprint_url: Some("https://www.immopro.at/impressum".into()),
        privacy_url: Some("https://www.immopro.at/datenschutz".into()),
        pages_dir: None,
        texts: BTreeMap::new(),
    }
}

fn pages() -> Pages {
    match Pages::new(&branding(), "/_riegel", OverrideFiles::default()) {
        Ok(p) => p,
        Err(errs) => panic!("load failed: {errs:#?}"),
    }
}

/// The built-in texts: (de, en).
fn builtin_texts() -> (TextMap, TextMap) {
    let mut errors = Vec::new();
    let b = builtin::load(&mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let get = |lang: Language| {
        b.texts
            .iter()
            .find(|t| t.0 == lang)
            .map(|t| t.2.clone())
            .unwrap()
    };
    (get(Language::De), get(Language::En))
}

/// The source of a built-in template, by its name in the environment.
fn builtin_template(name: &str) -> String {
    let mut errors = Vec::new();
    builtin::load(&mut errors)
        .templates
        .into_iter()
        .find(|t| t.0 == name)
        .map(|t| t.2)
        .unwrap()
}

/// Override files as the edge would hand them in: (directory, file name,
/// content), under a made-up `/branding/pages`.
fn files(entries: Vec<(&str, &str, Content)>) -> OverrideFiles {
    let mut dirs: Vec<OverrideDir> = Vec::new();
    for (dir, name, content) in entries {
        let path = format!("/branding/pages/{dir}");
        if !dirs.iter().any(|d| d.name == dir) {
            let entries = OVERRIDE_DIRS.contains(&dir).then(Vec::new);
            dirs.push(OverrideDir {
                name: dir.to_string(),
                path: path.clone(),
                entries,
            });
        }
        let d = dirs.iter_mut().find(|d| d.name == dir).unwrap();
        if let Some(entries) = &mut d.entries {
            entries.push(OverrideEntry {
                name: name.to_string(),
                path: format!("{path}/{name}"),
                content,
            });
        }
    }
    OverrideFiles {
        dirs,
        ..OverrideFiles::default()
    }
}

fn text(s: &str) -> Content {
    Content::File(s.as_bytes().to_vec())
}

/// ` onclick=` and the like.
fn has_event_handler(html: &str) -> bool {
    html.match_indices(" on").any(|(i, _)| {
        let rest = &html[i + 3..];
        let n = rest.bytes().take_while(u8::is_ascii_lowercase).count();
        n > 0 && rest.as_bytes().get(n) == Some(&b'=')
    })
}

fn ctx_with(name: &str, extra: Value) -> Value {
    overlay(&[sample_context(name), extra])
}

#[test]
fn text_files_have_identical_keys_and_no_empty_values() {
    let (de, en) = builtin_texts();
    let dk: BTreeSet<_> = de.keys().collect();
    let ek: BTreeSet<_> = en.keys().collect();
    assert_eq!(
        dk,
        ek,
        "de.yaml and en.yaml differ: {:?}",
        dk.symmetric_difference(&ek).collect::<Vec<_>>()
    );
    for (k, v) in de.iter().chain(en.iter()) {
        assert!(!v.trim().is_empty(), "empty text for {k}");
        assert!(
            k.contains('_'),
            "key {k} should contain '_' so leaks are detectable"
        );
    }
}

#[test]
fn dynamically_referenced_keys_exist() {
    let (de, _) = builtin_texts();
    let mut keys = vec![
        "err_login_failed",
        "err_banned",
        "err_csrf",
        "err_required",
        "err_code_format",
        "err_code_invalid",
        "err_recovery_invalid",
        "err_password_short",
        "err_password_long",
        "err_password_mismatch",
        "err_password_is_name",
        "notice_logged_out",
        "notice_password_changed",
        "notice_login_expired",
        "mail_reset_subject",
        "mail_password_changed_subject",
        "mail_recovery_used_subject",
        "error_reset_invalid_title",
        "error_reset_invalid_text",
        "error_new_device_invalid_title",
        "error_new_device_invalid_text",
        "error_new_device_browser_title",
        "error_new_device_browser_text",
        "err_enrol_code_invalid",
        "err_account_code_invalid",
        "err_current_password",
        "err_name_required",
        "err_name_invalid",
        "err_last_authenticator",
        "err_locked",
        "notice_sessions_ended",
        "account_notice_password_changed",
        "account_notice_authenticator_added",
        "account_notice_authenticator_removed",
        "account_notice_session_ended",
        "account_notice_sessions_ended",
        "account_notice_session_gone",
        "account_notice_enrolment_expired",
        "mail_new_device_subject",
        "mail_authenticator_added_subject",
        "mail_authenticator_removed_subject",
        "mail_recovery_codes_new_subject",
        "mail_sessions_ended_subject",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    for c in [
        "400", "403", "404", "413", "429", "500", "502", "503", "504",
    ] {
        keys.push(format!("error_{c}_title"));
        keys.push(format!("error_{c}_text"));
    }
    for k in keys {
        assert!(de.contains_key(&k), "missing key {k}");
    }
}

#[test]
fn every_page_and_mail_renders_in_both_languages() {
    let p = pages();
    let keys: Vec<String> = p.texts[0].keys().cloned().collect();
    for lang in LANGUAGES {
        for name in Pages::page_names() {
            for ctx in sample_variants(name) {
                let html = p.render_in(lang, name, ctx).unwrap();
                assert!(
                    html.contains(&format!("<html lang=\"{}\">", lang.code())),
                    "{name}"
                );
                assert!(
                    leftover_placeholder(&html).is_none(),
                    "{name}: {:?}",
                    leftover_placeholder(&html)
                );
                for k in &keys {
                    assert!(
                        !html.contains(k.as_str()),
                        "{name} ({}) shows key name {k}",
                        lang.code()
                    );
                }
                assert!(
                    !html.contains(">none") && !html.contains("None"),
                    "{name}: none rendered"
                );
                assert!(!html.contains("style="), "{name}: inline style");
                assert!(!html.contains("<style"), "{name}: inline style element");
                assert!(!html.contains("<script>"), "{name}: inline script");
                assert!(!has_event_handler(&html), "{name}: event handler attribute");
            }
        }
        for name in Pages::mail_names() {
            for ctx in mail_sample_variants(name) {
                let (subject, text, html) = p.render_mail_in(lang, name, ctx).unwrap();
                assert!(!subject.is_empty() && !subject.contains('\n'));
                assert!(subject.contains("IMMO PRO"));
                for body in [&subject, &text, &html] {
                    assert!(leftover_placeholder(body).is_none(), "{name}");
                    assert!(!body.contains('{'), "{name}: brace left in {body}");
                    for k in &keys {
                        assert!(!body.contains(k.as_str()), "mail {name} shows key {k}");
                    }
                }
                assert!(html.contains(&format!("<html lang=\"{}\">", lang.code())));
                assert!(text.contains("Maria Muster"));
            }
        }
    }
}

#[test]
fn german_wording_from_the_guide() {
    let p = pages();
    let login = p.render("login", sample_context("login")).unwrap();
    for s in [
        "Benutzername oder E-Mail",
        "Ihr Passwort",
        "Jetzt anmelden!",
        "Sie können nicht auf Ihr Konto zugreifen?",
    ] {
        assert!(login.contains(s), "login lacks {s}");
    }
    assert!(login.contains(">Portal</h1>"));
    assert!(login.contains("IMMO PRO Immobilien GmbH"));
    assert!(
        login.contains("autocomplete=\"username\"")
            && login.contains("autocomplete=\"current-password\"")
    );
    let setup = p.render("setup", sample_context("setup")).unwrap();
    assert!(setup.contains("Zwei-Faktor-Authentifizierung aktivieren"));
    assert!(setup.contains("Google Authenticator"));
    assert!(setup.contains("KOSTENLOSE APP verwenden, diese genügt!"));
    assert!(setup.contains("JBSW Y3DP"));
    assert!(setup.contains("<svg"), "QR svg must not be escaped");
    for name in ["setup_confirm", "verify"] {
        let html = p.render(name, sample_context(name)).unwrap();
        assert!(html.contains("Bestätigungscode eingeben"), "{name}");
        assert!(html.contains("autocomplete=\"one-time-code\""));
        assert!(html.contains("inputmode=\"numeric\""));
    }
    let verify = p.render("verify", sample_context("verify")).unwrap();
    assert!(verify.contains("KEINE Benachrichtigung (SMS...)"));
    assert!(verify.contains("Code nicht zur Hand?"));
    let act = p.render("activated", sample_context("activated")).unwrap();
    assert!(act.contains("Erfolgreich aktiviert"));
    assert!(act.contains("k7d2m-x9q4t"));
    let sent = p
        .render("forgot_sent", sample_context("forgot_sent"))
        .unwrap();
    assert!(sent.contains("bitte auch den JUNK/SPAM-Eingang kontrollieren"));
    assert!(sent.contains("30 Minuten"));
    let en = p
        .render_in(Language::En, "login", sample_context("login"))
        .unwrap();
    assert!(en.contains("Log in now!") && !en.contains("Jetzt anmelden!"));
}

#[test]
fn errors_are_attached_to_the_field() {
    let p = pages();
    let html = p
        .render(
            "login",
            ctx_with("login", context! { error => "err_banned", minutes => 12 }),
        )
        .unwrap();
    assert!(html.contains("in 12 Minuten"));
    assert!(html.contains("role=\"alert\""));
    let html = p
        .render(
            "login",
            ctx_with("login", context! { error => "err_login_failed" }),
        )
        .unwrap();
    assert!(
        html.contains("aria-invalid=\"true\"") && html.contains("aria-describedby=\"login-error\"")
    );
    let html = p
        .render(
            "reset",
            ctx_with("reset", context! { error => "err_password_short" }),
        )
        .unwrap();
    assert!(html.contains("mindestens 10 Zeichen lang"));
    let html = p
        .render(
            "verify",
            ctx_with("verify", context! { error => "err_code_invalid" }),
        )
        .unwrap();
    assert!(html.contains("aria-describedby=\"code-hint code-error\""));
    let html = p.render("error", ctx_with("error", context! { status => 429, title_key => "error_429_title", message_key => "error_429_text", minutes => 5 })).unwrap();
    assert!(!html.contains("Fehler 429") && html.contains("5 Minuten"), "no status code as a heading");
    // err_banned without minutes is a render error, not an empty gap.
    assert!(p
        .render(
            "login",
            ctx_with("login", context! { error => "err_banned" })
        )
        .is_err());
}

#[test]
fn username_is_escaped() {
    let p = pages();
    let html = p
        .render(
            "login",
            ctx_with(
                "login",
                context! { username => "<script>alert(1)</script>" },
            ),
        )
        .unwrap();
    assert!(!html.contains("<script>alert"));
    assert!(html.contains("&lt;script&gt;"));
    let (_, text, html) = p
        .render_mail(
            "reset",
            ctx_with("mail/reset", context! { name => "<b>Eve</b>" }),
        )
        .unwrap();
    assert!(html.contains("&lt;b&gt;Eve") && !html.contains("<b>Eve"));
    assert!(text.contains("<b>Eve</b>"), "text mails are not escaped");
}

#[test]
fn missing_variable_fails() {
    let p = pages();
    assert!(p
        .render(
            "login",
            context! { username => "x", csrf => "c", forgot_url => "/f" }
        )
        .is_err());
    assert!(p
        .render("activated", context! { continue_url => "/" })
        .is_err());
    assert!(p.render("nope", context! {}).is_err());
    assert!(p.render_mail("reset", context! { name => "x" }).is_err());
    assert!(p
        .render(
            "login",
            ctx_with("login", context! { error => "err_nonexistent" })
        )
        .is_err());
}

#[test]
fn theme_and_static_assets() {
    let p = pages();
    let theme = p.static_asset("theme.css").unwrap();
    let css = std::str::from_utf8(&theme.body).unwrap();
    assert!(css.starts_with(":root{--primary:#"));
    let c = parse_hex_color(&css[16..23]).unwrap();
    assert!(contrast_with_white(c) >= 4.5, "{css}");
    assert!(contrast_with_white(parse_hex_color("#3d7d16").unwrap()) >= 4.5);
    assert_eq!(accessible_on_white([0x3d, 0x7d, 0x16]), [0x3d, 0x7d, 0x16]);
    assert_eq!(parse_hex_color("#abc"), Some([0xaa, 0xbb, 0xcc]));
    assert!(parse_hex_color("#abcd").is_none() && parse_hex_color("3d7d16").is_none());
    for n in ["riegel.css", "copy.js", "logo", "logo.svg"] {
        let a = p.static_asset(n).unwrap();
        assert!(!a.body.is_empty() && a.etag.starts_with('"'), "{n}");
    }
    assert_eq!(
        p.static_asset("logo").unwrap().content_type,
        "image/svg+xml"
    );
    assert!(p.static_asset("../etc/passwd").is_none());
    let login = p.render("login", sample_context("login")).unwrap();
    assert!(
        login.contains("href=\"/_riegel/static/theme.css\"")
            && login.contains("href=\"/_riegel/static/riegel.css\"")
    );
    assert_eq!(p.text("login_submit"), "Jetzt anmelden!");
    assert_eq!(p.text("no_such_key"), "no_such_key");
}

/// The overrides `overrides_are_picked_up` applies (`crate::assets`' tests
/// read the same from disk): (directory, file name, content).
pub(crate) fn sample_overrides() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let login = builtin_template("login.html").replace(
        "{% block content %}",
        "{% block content %}<p class=\"custom-banner\">{{ t.login_title }}</p>",
    );
    vec![
        ("templates", "login.html", login.into_bytes()),
        ("i18n", "en.yaml", b"login_submit: \"Sign in\"\n".to_vec()),
        ("static", "extra.png", b"\x89PNG".to_vec()),
    ]
}

/// The logo file that goes with [`sample_overrides`] (a `.png`).
pub(crate) const SAMPLE_LOGO: &[u8] = b"\x89PNG\r\n\x1a\nlogo";

/// [`branding`] with `pages_dir` and `logo_file` as given, a primary colour
/// and a German text of its own.
pub(crate) fn overriding_branding(pages_dir: &str, logo_file: &str) -> BrandingConfig {
    let mut b = branding();
    b.pages_dir = Some(pages_dir.into());
    b.logo_file = Some(logo_file.into());
    b.primary_color = "#0055aa".into();
    b.texts.insert(
        "de".into(),
        BTreeMap::from([("login_submit".to_string(), "Anmelden".to_string())]),
    );
    b
}

/// Checks that `p` (loaded with [`sample_overrides`], [`SAMPLE_LOGO`] and
/// [`overriding_branding`], prefix `/_riegel/`) shows every override.
pub(crate) fn check_overrides_applied(p: &Pages) {
    let html = p.render("login", sample_context("login")).unwrap();
    assert!(html.contains("custom-banner"));
    assert!(html.contains(">Anmelden<") && !html.contains("Jetzt anmelden!"));
    assert!(html.contains("class=\"brand-logo\""));
    assert!(html.contains("src=\"/_riegel/static/logo\""));
    let en = p
        .render_in(Language::En, "login", sample_context("login"))
        .unwrap();
    assert!(en.contains("Sign in"));
    let logo = p.static_asset("logo").unwrap();
    assert_eq!(logo.content_type, "image/png");
    assert!(logo.body.ends_with(b"logo"));
    assert!(p.static_asset("extra.png").is_some());
    assert!(
        std::str::from_utf8(&p.static_asset("theme.css").unwrap().body)
            .unwrap()
            .contains("--primary:#0055aa")
    );
}

#[test]
fn overrides_are_picked_up() {
    let mut f = files(
        sample_overrides()
            .into_iter()
            .map(|(d, n, bytes)| (d, n, Content::File(bytes)))
            .collect(),
    );
    f.logo = Some(Ok(SAMPLE_LOGO.to_vec()));
    let b = overriding_branding("/branding/pages", "/branding/logo.png");
    check_overrides_applied(&Pages::new(&b, "/_riegel/", f).unwrap());
    // A theme.css of its own replaces the generated one.
    let f = files(vec![(
        "static",
        "theme.css",
        text(":root{--primary:#123456}"),
    )]);
    let p = Pages::new(&branding(), "/_riegel", f).unwrap();
    assert_eq!(
        &*p.static_asset("theme.css").unwrap().body,
        b":root{--primary:#123456}"
    );
}

#[test]
fn broken_overrides_fail_at_load() {
    let mut f = files(vec![
        (
            "templates",
            "login.html",
            text("{% extends \"base.html\" %}{% block content %}{{ oops "),
        ),
        ("templates", "lgoin.html", text("x")),
        ("templates", "partials", Content::Dir),
        (
            "templates",
            "logout.html",
            Content::File(b"\xff{{ x }}".to_vec()),
        ),
        (
            "templates",
            "verify.html",
            Content::Unreadable("Permission denied (os error 13)".into()),
        ),
        ("mail", "reset.txt", text("{{ t.mail_greeting }}")),
        ("mail", "welcome.txt", text("x")),
        ("static", "logo", text("x")),
        ("static", "film.mp4", text("x")),
        ("static", "bad name.css", text("x")),
        ("static", "fonts", Content::Dir),
        (
            "static",
            "extra.css",
            Content::Unreadable("Permission denied (os error 13)".into()),
        ),
        ("i18n", "fr.yaml", text("x: y")),
        ("i18n", "de.yaml", text("login_submit: [unclosed")),
        ("i18n", "en.yml", Content::Dir),
        ("img", "big.bin", text("never read")),
    ]);
    f.problems
        .push("/branding/pages/static/logo-\u{fffd}.png: file name is not UTF-8".into());
    let mut b = branding();
    b.pages_dir = Some("/branding/pages".into());
    b.texts.insert(
        "de".into(),
        BTreeMap::from([("login_submt".to_string(), "x".to_string())]),
    );
    b.texts.insert("fr".into(), BTreeMap::new());
    b.logo_file = Some("/branding/missing.png".into());
    f.logo = Some(Err("No such file or directory (os error 2)".into()));
    b.primary_color = "green".into();
    let errs = match Pages::new(&b, "/_riegel", f) {
        Ok(_) => panic!("broken overrides must fail"),
        Err(e) => e.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    let all = errs.join("\n");
    let t = "/branding/pages/templates";
    let s = "/branding/pages/static";
    for expected in [
        format!("{t}/login.html: syntax error"),
        format!("{t}/lgoin.html: unknown template name (known: account.html, account_add.html, account_codes.html, activated.html, base.html,"),
        format!("{t}/partials: unknown template name"),
        format!("{t}/logout.html: cannot read: not UTF-8 text"),
        format!("{t}/verify.html: cannot read: Permission denied"),
        "/branding/pages/mail/welcome.txt: unknown template name (known: authenticator_added.html, authenticator_added.txt, authenticator_removed.html,".to_string(),
        format!("{s}/logo: unsupported static file"),
        format!("{s}/film.mp4: unsupported static file"),
        format!("{s}/bad name.css: unsupported static file"),
        format!("{s}/fonts: unsupported static file"),
        format!("{s}/extra.css: cannot read: Permission denied"),
        format!("{s}/logo-\u{fffd}.png: file name is not UTF-8"),
        "/branding/pages/i18n/fr.yaml: unknown text file (expected de.yaml or en.yaml)".to_string(),
        "/branding/pages/i18n/de.yaml: ".to_string(),
        "/branding/pages/i18n/en.yml: cannot read: is a directory".to_string(),
        "/branding/pages/img: unknown directory in pages_dir".to_string(),
        "branding.texts.de: unknown text key 'login_submt'".to_string(),
        "branding.texts: unknown language 'fr'".to_string(),
        "branding.logo_file /branding/missing.png: cannot read: No such file".to_string(),
        "branding.primary_color: 'green' is not a hex colour".to_string(),
    ] {
        assert!(all.contains(&expected), "missing {expected:?} in\n{all}");
    }

    // With syntax fine but a text placeholder left unfilled, the start-up render catches it.
    let f = files(vec![(
        "mail",
        "reset.txt",
        text("{{ t.mail_greeting }} {{ link }}"),
    )]);
    let errs = Pages::new(&branding(), "/_riegel", f).err().unwrap();
    assert!(
        errs.iter().any(|e| e.to_string().contains("{name}")),
        "{errs:?}"
    );

    // A text override that uses a placeholder the page cannot fill.
    let mut b = branding();
    b.texts.insert(
        "en".into(),
        BTreeMap::from([("login_title".to_string(), "Hi {nobody}".to_string())]),
    );
    assert!(Pages::new(&b, "/_riegel", OverrideFiles::default()).is_err());

    // A template that references a missing variable fails at load, not at request time.
    let f = files(vec![(
        "templates",
        "logout.html",
        text("{% extends \"base.html\" %}{% block content %}{{ nothere }}{% endblock %}"),
    )]);
    let errs = Pages::new(&branding(), "/_riegel", f).err().unwrap();
    assert!(
        errs.iter().any(|e| e
            .to_string()
            .starts_with("/branding/pages/templates/logout.html: [de]")),
        "{errs:?}"
    );

    // A logo file the edge did not read is reported, not silently dropped.
    let mut b = branding();
    b.logo_file = Some("/branding/logo.png".into());
    let errs = Pages::new(&b, "/_riegel", OverrideFiles::default())
        .err()
        .unwrap();
    assert!(
        errs.iter().any(|e| e
            .to_string()
            .contains("branding.logo_file /branding/logo.png: not read")),
        "{errs:?}"
    );
    // A logo that is no image.
    b.logo_file = Some("/branding/logo.css".into());
    let f = OverrideFiles {
        logo: Some(Ok(b"x".to_vec())),
        ..OverrideFiles::default()
    };
    let errs = Pages::new(&b, "/_riegel", f).err().unwrap();
    assert!(
        errs.iter().any(|e| e
            .to_string()
            .contains("must be a .png, .svg, .jpg, .webp or .gif file")),
        "{errs:?}"
    );
}

#[test]
fn the_built_in_files_are_all_there() {
    let mut errors = Vec::new();
    let b = builtin::load(&mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let names: BTreeSet<&str> = b.templates.iter().map(|t| t.0.as_str()).collect();
    for page in Pages::page_names() {
        assert!(names.contains(format!("{page}.html").as_str()), "{page}");
    }
    for mail in Pages::mail_names() {
        for ext in ["txt", "html"] {
            assert!(
                names.contains(format!("mail/{mail}.{ext}").as_str()),
                "{mail}.{ext}"
            );
        }
    }
    assert!(
        names.contains("base.html")
            && names.contains("macros.html")
            && names.contains("mail/layout.html")
    );
    let statics: BTreeSet<&str> = b.statics.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        statics,
        BTreeSet::from(["copy.js", "login.js", "logo.svg", "riegel.css"])
    );
    assert_eq!(b.texts.len(), 2);
    // What the binary holds is what the source tree holds.
    let login = std::str::from_utf8(include_bytes!("../../../pages/templates/login.html")).unwrap();
    assert_eq!(builtin_template("login.html"), login);
}

#[test]
fn the_busy_page_asks_to_try_again() {
    let p = pages();
    let ctx = |lang| {
        p.render_in(
            lang,
            "error",
            context! { title_key => "error_503_title", message_key => "error_503_text", primary_url => "/_riegel/login", primary_key => "error_retry" },
        )
        .unwrap()
    };
    let de = ctx(Language::De);
    assert!(
        !de.contains("Fehler 503") && de.contains("Bitte versuchen Sie es gleich noch einmal.") && de.contains("Erneut versuchen"),
        "{de}"
    );
    let en = ctx(Language::En);
    assert!(
        !en.contains("Error 503") && en.contains("Please try again in a moment."),
        "{en}"
    );
}

#[test]
fn pages_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Pages>();
    assert!(format!("{:?}", pages()).contains("login.html"));
}

#[test]
fn fill_placeholders_rules() {
    let look = |n: &str| (n == "a").then(|| Value::from(5));
    assert_eq!(fill_placeholders("x {a} y", look).unwrap(), "x 5 y");
    assert_eq!(
        fill_placeholders("{ a } {A} {", look).unwrap(),
        "{ a } {A} {"
    );
    assert!(fill_placeholders("{b}", look).is_err());
}

#[test]
fn error_pages_offer_the_way_on_without_status_headings() {
    let p = pages();
    let html = p
        .render(
            "error",
            context! { title_key => "error_reset_invalid_title", message_key => "error_reset_invalid_text", primary_url => "/_riegel/forgot", primary_key => "forgot_submit", second_url => "/_riegel/login", second_key => "to_login" },
        )
        .unwrap();
    assert!(html.contains("class=\"btn btn-primary\" href=\"/_riegel/forgot\">Neues Passwort anfordern<"), "{html}");
    assert!(!html.contains("Fehler 410") && !html.contains("Fehler"), "{html}");
    let html = p.render("error", sample_context("error")).unwrap();
    assert!(!html.contains("Erneut versuchen") && html.contains("Zur Startseite"));
}

#[test]
fn the_operators_contact_on_lockout_recovery_and_mails() {
    let p = pages();
    let lock = p.render("login", ctx_with("login", context! { error => "err_banned", minutes => 15 })).unwrap();
    assert!(lock.contains("Sie können nicht auf Ihr Konto zugreifen?“ können Sie ein neues Passwort anfordern"), "{lock}");
    assert!(lock.contains("href=\"tel:+4312345678\">+43 1 234 56 78</a>") && lock.contains("mailto:hausverwaltung@example.at"));
    let locked = p.render("login", ctx_with("login", context! { error => "err_banned", minutes => 0 })).unwrap();
    assert!(locked.contains("Ihr Konto ist nach zu vielen fehlgeschlagenen Versuchen gesperrt.") && !locked.contains("0 Minuten"));
    let plain_login = p.render("login", sample_context("login")).unwrap();
    assert!(!plain_login.contains("tel:"), "the contact is for the lockout, not every login");
    let rec = p.render("recovery", sample_context("recovery")).unwrap();
    assert!(rec.contains("tel:+4312345678"));
    for name in Pages::mail_names() {
        for ctx in mail_sample_variants(name) {
            let (_, text, html) = p.render_mail(name, ctx).unwrap();
            assert!(text.contains("Telefon: +43 1 234 56 78") && text.contains("E-Mail: hausverwaltung@example.at"), "{name}: {text}");
            assert!(html.contains("tel:+4312345678"), "{name}");
        }
    }
    // Without a contact, nothing of it shows.
    let mut b = branding();
    b.contact = crate::config::Contact::default();
    let p = Pages::new(&b, "/_riegel", OverrideFiles::default()).unwrap();
    let (_, text, _) = p.render_mail("sessions_ended", sample_context("mail/sessions_ended")).unwrap();
    assert!(!text.contains("Telefon") && !text.contains("So erreichen"), "{text}");
}

#[test]
fn the_language_switch_links_the_other_language() {
    let p = pages();
    let links = vec![context! { code => "en", name => "English", href => "/_riegel/language/en?rd=%2F_riegel%2Flogin" }];
    let html = p.render("login", ctx_with("login", context! { lang_links => links })).unwrap();
    assert!(html.contains("<nav class=\"lang-switch\" aria-label=\"Sprache\">"), "{html}");
    assert!(html.contains("lang=\"en\" hreflang=\"en\">English</a>"));
    let html = p.render("login", sample_context("login")).unwrap();
    assert!(!html.contains("lang-switch"), "one language: no switch");
}

#[test]
fn long_german_words_may_break() {
    let p = pages();
    let css = std::str::from_utf8(&p.static_asset("riegel.css").unwrap().body).unwrap().to_string();
    assert!(css.contains("hyphens: auto") && css.contains("overflow-wrap: anywhere"));
}

#[test]
fn account_pages_show_what_the_issue_lists() {
    let p = pages();
    let html = p.render("account", sample_context("account")).unwrap();
    for s in ["Mein Zugang", "Maria Muster", "maria@example.at", "Authenticator App", "Tablet", "Hinzugefügt am 1. Dezember 2026 um 18:30 Uhr", "noch 7 unbenutzte", "Firefox · Windows", "dieses Gerät", "Unbekannter Browser", "Auf allen anderen Geräten abmelden", "name=\"current_password\"", "name=\"password2\"", "/_riegel/account/authenticators/2/remove"] {
        assert!(html.contains(s), "account page lacks {s}");
    }
    let codes = p.render("account_codes", sample_context("account_codes")).unwrap();
    assert!(codes.contains("data-print-label=\"Drucken\"") && codes.contains("data-copy-label=\"Kopieren\"") && codes.contains("j6k7m-n8p9q"));
    let en = p.render_in(Language::En, "account", sample_context("account")).unwrap();
    assert!(en.contains("My account") && en.contains("this device") && en.contains("Log out on all other devices"));
    let add = p.render("account_add", ctx_with("account_add", context! { error => "err_enrol_code_invalid" })).unwrap();
    assert!(add.contains("Datum und Uhrzeit Ihres Smartphones") && add.contains("„Neues Handy“"));
}
