//! The user-facing pages and mails: templates, texts (i18n) and static assets.
//!
//! Everything built in is compiled into the binary (`include_str!`), then
//! overridden from `branding.pages_dir` (same layout as `pages/` in the source
//! tree: `templates/`, `mail/`, `static/`, `i18n/`) and `branding.texts`.
//! Every problem with an override is reported by [`Pages::load`], which also
//! renders every page and mail once per language with a sample context, so a
//! broken override fails at start-up and never at a user's request.
//!
//! Texts are flat maps key -> text. Placeholders such as `{minutes}` are filled
//! by the `fill` filter from its keyword arguments or the render context.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use minijinja::value::{Kwargs, Value};
use minijinja::{context, AutoEscape, Environment, ErrorKind, State, UndefinedBehavior};

use crate::config::{BrandingConfig, Language};

#[derive(Debug, thiserror::Error)]
pub enum PagesError {
    #[error("{file}: {message}")]
    Template { file: String, message: String },
    #[error("{file}: {message}")]
    Texts { file: String, message: String },
    #[error("{0}")]
    Io(String),
}

#[derive(Debug)]
pub struct StaticAsset {
    pub content_type: &'static str,
    pub body: Arc<[u8]>,
    /// A strong ETag, quoted, ready for the `ETag` header.
    pub etag: String,
}

macro_rules! builtin_str {
    ($p:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/pages/", $p))
    };
}
macro_rules! builtin_bytes {
    ($p:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/pages/", $p))
    };
}

const PAGE_NAMES: &[&str] = &[
    "login",
    "setup",
    "setup_confirm",
    "activated",
    "verify",
    "recovery",
    "forgot",
    "forgot_sent",
    "reset",
    "reset_done",
    "logout",
    "logged_out",
    "error",
];

const MAIL_NAMES: &[&str] = &["reset", "password_changed", "recovery_used"];

/// Built-in templates: (name in the environment, path under pages/, source).
const BUILTIN_TEMPLATES: &[(&str, &str, &str)] = &[
    (
        "base.html",
        "templates/base.html",
        builtin_str!("templates/base.html"),
    ),
    (
        "macros.html",
        "templates/macros.html",
        builtin_str!("templates/macros.html"),
    ),
    (
        "login.html",
        "templates/login.html",
        builtin_str!("templates/login.html"),
    ),
    (
        "setup.html",
        "templates/setup.html",
        builtin_str!("templates/setup.html"),
    ),
    (
        "setup_confirm.html",
        "templates/setup_confirm.html",
        builtin_str!("templates/setup_confirm.html"),
    ),
    (
        "activated.html",
        "templates/activated.html",
        builtin_str!("templates/activated.html"),
    ),
    (
        "verify.html",
        "templates/verify.html",
        builtin_str!("templates/verify.html"),
    ),
    (
        "recovery.html",
        "templates/recovery.html",
        builtin_str!("templates/recovery.html"),
    ),
    (
        "forgot.html",
        "templates/forgot.html",
        builtin_str!("templates/forgot.html"),
    ),
    (
        "forgot_sent.html",
        "templates/forgot_sent.html",
        builtin_str!("templates/forgot_sent.html"),
    ),
    (
        "reset.html",
        "templates/reset.html",
        builtin_str!("templates/reset.html"),
    ),
    (
        "reset_done.html",
        "templates/reset_done.html",
        builtin_str!("templates/reset_done.html"),
    ),
    (
        "logout.html",
        "templates/logout.html",
        builtin_str!("templates/logout.html"),
    ),
    (
        "logged_out.html",
        "templates/logged_out.html",
        builtin_str!("templates/logged_out.html"),
    ),
    (
        "error.html",
        "templates/error.html",
        builtin_str!("templates/error.html"),
    ),
    (
        "mail/layout.html",
        "mail/layout.html",
        builtin_str!("mail/layout.html"),
    ),
    (
        "mail/reset.txt",
        "mail/reset.txt",
        builtin_str!("mail/reset.txt"),
    ),
    (
        "mail/reset.html",
        "mail/reset.html",
        builtin_str!("mail/reset.html"),
    ),
    (
        "mail/password_changed.txt",
        "mail/password_changed.txt",
        builtin_str!("mail/password_changed.txt"),
    ),
    (
        "mail/password_changed.html",
        "mail/password_changed.html",
        builtin_str!("mail/password_changed.html"),
    ),
    (
        "mail/recovery_used.txt",
        "mail/recovery_used.txt",
        builtin_str!("mail/recovery_used.txt"),
    ),
    (
        "mail/recovery_used.html",
        "mail/recovery_used.html",
        builtin_str!("mail/recovery_used.html"),
    ),
];

const BUILTIN_STATIC: &[(&str, &[u8])] = &[
    ("riegel.css", builtin_bytes!("static/riegel.css")),
    ("copy.js", builtin_bytes!("static/copy.js")),
    ("logo.svg", builtin_bytes!("static/logo.svg")),
];

const BUILTIN_TEXTS: &[(Language, &str, &str)] = &[
    (Language::De, "i18n/de.yaml", builtin_str!("i18n/de.yaml")),
    (Language::En, "i18n/en.yaml", builtin_str!("i18n/en.yaml")),
];

const LANGUAGES: [Language; 2] = [Language::De, Language::En];

/// Optional page variables that default to a value when the handler leaves them out.
fn optional_defaults(name: &str) -> Value {
    let none = Value::from(());
    match name {
        "login" => context! { error => none.clone(), notice => none, username => "" },
        "forgot" => context! { error => none, username => "" },
        "setup_confirm" | "verify" | "recovery" | "reset" => context! { error => none },
        "error" => {
            context! { minutes => none.clone(), retry_url => none.clone(), home_url => none }
        }
        _ => context! {},
    }
}

type TextMap = BTreeMap<String, String>;

pub struct Pages {
    env: Environment<'static>,
    language: Language,
    /// Texts per language (index: [`lang_index`]), as plain map and as template value.
    texts: [Arc<TextMap>; 2],
    text_values: [Value; 2],
    /// Common context without `t` and `lang`.
    common: BTreeMap<&'static str, Value>,
    /// Template name -> where it came from (for error messages).
    origins: BTreeMap<String, String>,
    assets: BTreeMap<String, StaticAsset>,
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pages")
            .field("language", &self.language)
            .field("templates", &self.origins)
            .field("assets", &self.assets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn lang_index(lang: Language) -> usize {
    match lang {
        Language::De => 0,
        Language::En => 1,
    }
}

fn lang_from_code(code: &str) -> Option<Language> {
    LANGUAGES.into_iter().find(|l| l.code() == code)
}

impl Pages {
    /// Compiles the built-in templates/CSS/texts, applies the overrides from
    /// `branding.pages_dir` and `branding.texts`, and renders every page and
    /// mail once per language. Returns every problem found.
    pub fn load(branding: &BrandingConfig, prefix: &str) -> Result<Pages, Vec<PagesError>> {
        let mut errors = Vec::new();
        let prefix = prefix.trim_end_matches('/').to_string();

        // --- Texts ---------------------------------------------------------
        let mut texts: [TextMap; 2] = [TextMap::new(), TextMap::new()];
        for (lang, file, src) in BUILTIN_TEXTS {
            match parse_texts(src) {
                Ok(map) => texts[lang_index(*lang)] = map,
                Err(message) => errors.push(PagesError::Texts {
                    file: (*file).to_string(),
                    message,
                }),
            }
        }
        let known: BTreeSet<String> = texts[0].keys().cloned().collect();
        let other: BTreeSet<String> = texts[1].keys().cloned().collect();
        if known != other {
            let diff: Vec<&String> = known.symmetric_difference(&other).collect();
            errors.push(PagesError::Texts {
                file: "i18n".into(),
                message: format!("built-in de.yaml and en.yaml differ in keys: {diff:?}"),
            });
        }

        // --- Overrides from pages_dir ---------------------------------------
        let overrides = match &branding.pages_dir {
            Some(dir) => read_overrides(dir, &known, &mut errors),
            None => Overrides::default(),
        };
        for (lang, file, map) in &overrides.texts {
            let target = &mut texts[lang_index(*lang)];
            for (k, v) in map {
                if known.contains(k) {
                    target.insert(k.clone(), v.clone());
                } else {
                    errors.push(PagesError::Texts {
                        file: file.clone(),
                        message: format!("unknown text key '{k}'"),
                    });
                }
            }
        }
        for (code, map) in &branding.texts {
            let Some(lang) = lang_from_code(code) else {
                errors.push(PagesError::Texts {
                    file: "branding.texts".into(),
                    message: format!("unknown language '{code}' (expected de or en)"),
                });
                continue;
            };
            let target = &mut texts[lang_index(lang)];
            for (k, v) in map {
                if known.contains(k) {
                    target.insert(k.clone(), v.clone());
                } else {
                    errors.push(PagesError::Texts {
                        file: format!("branding.texts.{code}"),
                        message: format!("unknown text key '{k}'"),
                    });
                }
            }
        }

        // --- Templates --------------------------------------------------------
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        env.set_formatter(html_formatter);
        env.add_filter("fill", fill_filter);
        let mut origins = BTreeMap::new();
        for (name, path, src) in BUILTIN_TEMPLATES {
            let (origin, source) = match overrides.templates.get(*name) {
                Some((file, text)) => (file.clone(), text.clone()),
                None => (format!("built-in pages/{path}"), (*src).to_string()),
            };
            if let Err(e) = env.add_template_owned((*name).to_string(), source) {
                errors.push(PagesError::Template {
                    file: origin.clone(),
                    message: describe(&e),
                });
            }
            origins.insert((*name).to_string(), origin);
        }

        // --- Static assets ---------------------------------------------------
        let mut assets = BTreeMap::new();
        for (name, body) in BUILTIN_STATIC {
            if let Some(ct) = content_type_for(name) {
                assets.insert((*name).to_string(), asset(ct, body.to_vec()));
            }
        }
        for (name, (ct, body)) in &overrides.statics {
            assets.insert(name.clone(), asset(ct, body.clone()));
        }
        let accessible = match parse_hex_color(&branding.primary_color) {
            Some(c) => accessible_on_white(c),
            None => {
                errors.push(PagesError::Texts {
                    file: "branding.primary_color".into(),
                    message: format!(
                        "'{}' is not a hex colour such as #3d7d16",
                        branding.primary_color
                    ),
                });
                DEFAULT_PRIMARY
            }
        };
        if !assets.contains_key("theme.css") {
            let brand = parse_hex_color(&branding.primary_color).unwrap_or(DEFAULT_PRIMARY);
            assets.insert(
                "theme.css".into(),
                asset(
                    "text/css; charset=utf-8",
                    theme_css(accessible, brand).into_bytes(),
                ),
            );
        }
        let logo_url = match &branding.logo_file {
            Some(path) => {
                let ct = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(content_type_for);
                match (ct, std::fs::read(path)) {
                    (Some(ct), Ok(body)) if ct.starts_with("image/") => {
                        assets.insert("logo".into(), asset(ct, body));
                    }
                    (_, Err(e)) => errors.push(PagesError::Io(format!(
                        "branding.logo_file {}: cannot read: {e}",
                        path.display()
                    ))),
                    _ => errors.push(PagesError::Io(format!(
                        "branding.logo_file {}: must be a .png, .svg, .jpg, .webp or .gif file",
                        path.display()
                    ))),
                }
                Value::from(format!("{prefix}/static/logo"))
            }
            None => {
                if let Some(svg) = assets.get("logo.svg") {
                    let copy = StaticAsset {
                        content_type: svg.content_type,
                        body: svg.body.clone(),
                        etag: svg.etag.clone(),
                    };
                    assets.insert("logo".into(), copy);
                }
                Value::from(())
            }
        };

        if !errors.is_empty() {
            return Err(errors);
        }

        let opt = |v: &Option<String>| {
            v.as_ref()
                .map_or(Value::from(()), |s| Value::from(s.as_str()))
        };
        let mut common = BTreeMap::new();
        common.insert("company", Value::from(branding.company.as_str()));
        common.insert("portal_name", Value::from(branding.portal_name.as_str()));
        common.insert("logo_url", logo_url);
        common.insert("prefix", Value::from(prefix.as_str()));
        common.insert("static", Value::from(format!("{prefix}/static")));
        common.insert("imprint_url", opt(&branding.imprint_url));
        common.insert("privacy_url", opt(&branding.privacy_url));
        common.insert("primary_color", Value::from(hex(accessible)));

        let [de, en] = texts;
        let text_values = [Value::from(de.clone()), Value::from(en.clone())];
        let pages = Pages {
            env,
            language: branding.language,
            texts: [Arc::new(de), Arc::new(en)],
            text_values,
            common,
            origins,
            assets,
        };
        let errors = pages.self_check();
        if errors.is_empty() {
            Ok(pages)
        } else {
            Err(errors)
        }
    }

    /// Renders a page in the configured language. `ctx` is the page-specific part.
    pub fn render(&self, name: &str, ctx: Value) -> Result<String, PagesError> {
        self.render_in(self.language, name, ctx)
    }

    pub fn render_in(&self, lang: Language, name: &str, ctx: Value) -> Result<String, PagesError> {
        if !PAGE_NAMES.contains(&name) {
            return Err(PagesError::Template {
                file: name.to_string(),
                message: "unknown page".into(),
            });
        }
        let full = self.full_context(lang, ctx, optional_defaults(name));
        self.render_template(&format!("{name}.html"), &full)
    }

    /// Mail: (subject, text, html) for template `name` in the configured language.
    pub fn render_mail(
        &self,
        name: &str,
        ctx: Value,
    ) -> Result<(String, String, String), PagesError> {
        self.render_mail_in(self.language, name, ctx)
    }

    /// Like [`Pages::render_mail`], in the given language.
    pub fn render_mail_in(
        &self,
        lang: Language,
        name: &str,
        ctx: Value,
    ) -> Result<(String, String, String), PagesError> {
        if !MAIL_NAMES.contains(&name) {
            return Err(PagesError::Template {
                file: format!("mail/{name}"),
                message: "unknown mail".into(),
            });
        }
        let full = self.full_context(lang, ctx, context! {});
        let key = format!("mail_{name}_subject");
        let raw = self.texts[lang_index(lang)]
            .get(&key)
            .cloned()
            .unwrap_or_default();
        let subject = fill_placeholders(&raw, |p| {
            full.get_attr(p)
                .ok()
                .filter(|v| !v.is_undefined() && !v.is_none())
        })
        .map_err(|message| PagesError::Texts {
            file: key.clone(),
            message,
        })?;
        // A header value: no line breaks.
        let subject = subject.split_whitespace().collect::<Vec<_>>().join(" ");
        let text = self.render_template(&format!("mail/{name}.txt"), &full)?;
        let html = self.render_template(&format!("mail/{name}.html"), &full)?;
        Ok((subject, text, html))
    }

    /// A text by key in the configured language; the key itself if missing.
    pub fn text(&self, key: &str) -> String {
        self.texts[lang_index(self.language)]
            .get(key)
            .cloned()
            .unwrap_or_else(|| key.to_string())
    }

    /// Static assets by file name under static/: "riegel.css", "theme.css"
    /// (generated), "copy.js", "logo.svg", "logo" (the configured logo file, or
    /// the default logo.svg) and any extra file from `pages_dir/static/`.
    pub fn static_asset(&self, name: &str) -> Option<&StaticAsset> {
        self.assets.get(name)
    }

    /// Names of all pages, for tests.
    pub fn page_names() -> &'static [&'static str] {
        PAGE_NAMES
    }

    /// Names of all mails, for tests.
    pub fn mail_names() -> &'static [&'static str] {
        MAIL_NAMES
    }

    fn full_context(&self, lang: Language, ctx: Value, defaults: Value) -> Value {
        // Later layers win: the common part cannot be overridden by a handler.
        let mut common: BTreeMap<&str, Value> = self.common.clone();
        common.insert("t", self.text_values[lang_index(lang)].clone());
        common.insert("lang", Value::from(lang.code()));
        overlay(&[defaults, ctx, Value::from(common)])
    }

    fn render_template(&self, template: &str, ctx: &Value) -> Result<String, PagesError> {
        let origin = |name: Option<&str>| {
            let name = name.unwrap_or(template);
            self.origins
                .get(name)
                .cloned()
                .unwrap_or_else(|| name.to_string())
        };
        let tmpl = self
            .env
            .get_template(template)
            .map_err(|e| PagesError::Template {
                file: origin(None),
                message: describe(&e),
            })?;
        tmpl.render(ctx).map_err(|e| PagesError::Template {
            file: origin(e.name()),
            message: describe(&e),
        })
    }

    /// Renders every page and mail in every language with the sample contexts
    /// (including every error/notice key a handler may pass).
    fn self_check(&self) -> Vec<PagesError> {
        let mut errors = Vec::new();
        for lang in LANGUAGES {
            for name in PAGE_NAMES {
                for ctx in sample_variants(name) {
                    match self.render_in(lang, name, ctx) {
                        Ok(html) => {
                            if let Some(p) = leftover_placeholder(&html) {
                                errors.push(PagesError::Texts {
                                    file: origin_or(&self.origins, &format!("{name}.html")),
                                    message: format!(
                                        "[{}] placeholder {p} is not filled (use the fill filter)",
                                        lang.code()
                                    ),
                                });
                            }
                        }
                        Err(e) => errors.push(tag(e, lang)),
                    }
                }
            }
            for name in MAIL_NAMES {
                for ctx in mail_sample_variants(name) {
                    match self.render_mail_in(lang, name, ctx) {
                        Ok((subject, text, html)) => {
                            for (part, body) in
                                [("subject", &subject), ("txt", &text), ("html", &html)]
                            {
                                if let Some(p) = leftover_placeholder(body) {
                                    errors.push(PagesError::Texts {
                                        file: format!("mail/{name} ({part})"),
                                        message: format!(
                                            "[{}] placeholder {p} is not filled",
                                            lang.code()
                                        ),
                                    });
                                }
                            }
                        }
                        Err(e) => errors.push(tag(e, lang)),
                    }
                }
            }
        }
        // One report per distinct problem is enough.
        let mut seen = BTreeSet::new();
        errors.retain(|e| seen.insert(e.to_string()));
        errors
    }
}

fn origin_or(origins: &BTreeMap<String, String>, name: &str) -> String {
    origins
        .get(name)
        .cloned()
        .unwrap_or_else(|| name.to_string())
}

fn tag(e: PagesError, lang: Language) -> PagesError {
    match e {
        PagesError::Template { file, message } => PagesError::Template {
            file,
            message: format!("[{}] {message}", lang.code()),
        },
        PagesError::Texts { file, message } => PagesError::Texts {
            file,
            message: format!("[{}] {message}", lang.code()),
        },
        other => other,
    }
}

fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let _ = write!(s, ": {inner}");
        src = inner.source();
    }
    s
}

fn parse_texts(src: &str) -> Result<TextMap, String> {
    let map: Option<TextMap> = serde_yaml::from_str(src).map_err(|e| e.to_string())?;
    Ok(map.unwrap_or_default())
}

/// Prints values: undefined and none are errors (strict), HTML escaping of
/// `& < > " '` only (minijinja's default also escapes `/`, which makes URLs and
/// texts like "JUNK/SPAM" needlessly hard to read in the source).
fn html_formatter(
    out: &mut minijinja::Output,
    state: &State,
    value: &Value,
) -> Result<(), minijinja::Error> {
    if value.is_undefined() {
        return Err(minijinja::Error::new(
            ErrorKind::UndefinedError,
            "undefined value printed",
        ));
    }
    if value.is_none() {
        return Err(minijinja::Error::new(
            ErrorKind::UndefinedError,
            "none value printed (check it with if first)",
        ));
    }
    if value.is_safe() || state.auto_escape() != AutoEscape::Html {
        return minijinja::escape_formatter(out, state, value);
    }
    let text = value.to_string();
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    out.write_str(&escaped)
        .map_err(|_| minijinja::Error::new(ErrorKind::WriteFailure, "write failed"))
}

/// Merges maps; keys of later maps win. Non-map values are ignored.
fn overlay(layers: &[Value]) -> Value {
    let mut out: BTreeMap<Value, Value> = BTreeMap::new();
    for layer in layers {
        if layer.kind() != minijinja::value::ValueKind::Map {
            continue;
        }
        if let Ok(keys) = layer.try_iter() {
            for key in keys {
                if let Ok(v) = layer.get_item(&key) {
                    if !v.is_undefined() {
                        out.insert(key, v);
                    }
                }
            }
        }
    }
    Value::from(out)
}

// --- Placeholders ---------------------------------------------------------------

/// Replaces `{name}` placeholders (lowercase letters, digits, `_`) using `lookup`.
/// Any other brace is left alone. A placeholder without a value is an error.
fn fill_placeholders(text: &str, lookup: impl Fn(&str) -> Option<Value>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match placeholder_len(after) {
            Some(len) => {
                let name = &after[..len];
                match lookup(name) {
                    Some(v) => {
                        let _ = write!(out, "{v}");
                    }
                    None => return Err(format!("no value for placeholder {{{name}}}")),
                }
                rest = &after[len + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Length of the name if `s` starts with `name}`.
fn placeholder_len(s: &str) -> Option<usize> {
    let len = s
        .bytes()
        .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
        .count();
    (len > 0 && s.as_bytes().get(len) == Some(&b'}')).then_some(len)
}

fn leftover_placeholder(s: &str) -> Option<String> {
    let mut rest = s;
    while let Some(i) = rest.find('{') {
        let after = &rest[i + 1..];
        if let Some(len) = placeholder_len(after) {
            return Some(format!("{{{}}}", &after[..len]));
        }
        rest = after;
    }
    None
}

/// `{{ t.err_banned|fill }}` / `{{ t.reset_text|fill(min=min_length) }}`:
/// placeholders are taken from the keyword arguments, else from the context.
fn fill_filter(state: &State, text: String, kwargs: Kwargs) -> Result<String, minijinja::Error> {
    fill_placeholders(&text, |name| {
        let v = if kwargs.has(name) {
            kwargs.get::<Value>(name).ok()
        } else {
            state.lookup(name)
        };
        v.filter(|v| !v.is_undefined() && !v.is_none())
    })
    .map_err(|m| minijinja::Error::new(ErrorKind::UndefinedError, m))
}

// --- Overrides ------------------------------------------------------------------------

#[derive(Default)]
struct Overrides {
    /// Environment name -> (file, source).
    templates: BTreeMap<String, (String, String)>,
    statics: BTreeMap<String, (&'static str, Vec<u8>)>,
    texts: Vec<(Language, String, TextMap)>,
}

fn list_dir(dir: &Path, errors: &mut Vec<PagesError>) -> Vec<(String, std::path::PathBuf, bool)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(PagesError::Io(format!(
                "{}: cannot read directory: {e}",
                dir.display()
            )));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => {
                let path = entry.path();
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    errors.push(PagesError::Io(format!(
                        "{}: file name is not UTF-8",
                        path.display()
                    )));
                    continue;
                };
                if name.starts_with('.') {
                    continue;
                }
                let is_dir = path.is_dir();
                out.push((name, path, is_dir));
            }
            Err(e) => errors.push(PagesError::Io(format!("{}: {e}", dir.display()))),
        }
    }
    out.sort();
    out
}

fn read_overrides(
    dir: &Path,
    known_keys: &BTreeSet<String>,
    errors: &mut Vec<PagesError>,
) -> Overrides {
    let mut o = Overrides::default();
    let known_templates: BTreeSet<&str> = BUILTIN_TEMPLATES.iter().map(|(n, _, _)| *n).collect();
    for (name, path, is_dir) in list_dir(dir, errors) {
        if !is_dir {
            continue; // README and the like
        }
        match name.as_str() {
            "templates" | "mail" => {
                for (file, fpath, sub_dir) in list_dir(&path, errors) {
                    let env_name = if name == "mail" {
                        format!("mail/{file}")
                    } else {
                        file.clone()
                    };
                    if sub_dir || !known_templates.contains(env_name.as_str()) {
                        let known: Vec<&str> = known_templates
                            .iter()
                            .filter(|n| n.starts_with("mail/") == (name == "mail"))
                            .map(|n| n.trim_start_matches("mail/"))
                            .collect();
                        errors.push(PagesError::Template {
                            file: fpath.display().to_string(),
                            message: format!("unknown template name (known: {})", known.join(", ")),
                        });
                        continue;
                    }
                    match std::fs::read_to_string(&fpath) {
                        Ok(src) => {
                            o.templates
                                .insert(env_name, (fpath.display().to_string(), src));
                        }
                        Err(e) => errors.push(PagesError::Io(format!(
                            "{}: cannot read: {e}",
                            fpath.display()
                        ))),
                    }
                }
            }
            "static" => {
                for (file, fpath, sub_dir) in list_dir(&path, errors) {
                    let ct = content_type_for(&file);
                    let valid_name = file
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                    match ct {
                        Some(ct) if !sub_dir && valid_name && file != "logo" => match std::fs::read(&fpath) {
                            Ok(body) => {
                                o.statics.insert(file, (ct, body));
                            }
                            Err(e) => errors.push(PagesError::Io(format!("{}: cannot read: {e}", fpath.display()))),
                        },
                        _ => errors.push(PagesError::Io(format!(
                            "{}: unsupported static file (use letters, digits, . _ - and one of .css .js .svg .png .jpg .webp .gif .ico .woff2)",
                            fpath.display()
                        ))),
                    }
                }
            }
            "i18n" => {
                for (file, fpath, _) in list_dir(&path, errors) {
                    let lang = file
                        .strip_suffix(".yaml")
                        .or_else(|| file.strip_suffix(".yml"))
                        .and_then(lang_from_code);
                    let Some(lang) = lang else {
                        errors.push(PagesError::Texts {
                            file: fpath.display().to_string(),
                            message: "unknown text file (expected de.yaml or en.yaml)".into(),
                        });
                        continue;
                    };
                    let file_name = fpath.display().to_string();
                    match std::fs::read_to_string(&fpath) {
                        Ok(src) => match parse_texts(&src) {
                            Ok(map) => {
                                let _ = known_keys; // unknown keys are reported when applied
                                o.texts.push((lang, file_name, map));
                            }
                            Err(message) => errors.push(PagesError::Texts {
                                file: file_name,
                                message,
                            }),
                        },
                        Err(e) => {
                            errors.push(PagesError::Io(format!("{file_name}: cannot read: {e}")))
                        }
                    }
                }
            }
            _ => errors.push(PagesError::Io(format!(
                "{}: unknown directory in pages_dir (expected templates/, mail/, static/, i18n/)",
                path.display()
            ))),
        }
    }
    o
}

// --- Static assets --------------------------------------------------------------------------

fn content_type_for(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "css" => "text/css; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        _ => return None,
    })
}

fn asset(content_type: &'static str, body: Vec<u8>) -> StaticAsset {
    // FNV-1a, 64 bit: stable across builds and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in &body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    StaticAsset {
        content_type,
        etag: format!("\"{h:016x}-{:x}\"", body.len()),
        body: Arc::from(body),
    }
}

type Rgb = [u8; 3];
const DEFAULT_PRIMARY: Rgb = [0x3d, 0x7d, 0x16];

fn parse_hex_color(s: &str) -> Option<Rgb> {
    let h = s.trim().strip_prefix('#')?;
    if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let digit = |i: usize| u8::from_str_radix(h.get(i..=i)?, 16).ok();
    match h.len() {
        3 => Some([digit(0)? * 17, digit(1)? * 17, digit(2)? * 17]),
        6 => {
            let byte = |i: usize| u8::from_str_radix(h.get(i..i + 2)?, 16).ok();
            Some([byte(0)?, byte(2)?, byte(4)?])
        }
        _ => None,
    }
}

fn hex(c: Rgb) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

fn luminance(c: Rgb) -> f64 {
    let lin = |v: u8| {
        let s = f64::from(v) / 255.0;
        if s <= 0.04045 {
            s / 12.92
        } else {
            ((s + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2])
}

/// Contrast ratio of white on `c`.
fn contrast_with_white(c: Rgb) -> f64 {
    1.05 / (luminance(c) + 0.05)
}

fn scale(c: Rgb, f: f64) -> Rgb {
    // Values stay within 0..=255, so the casts cannot truncate.
    let s = |v: u8| (f64::from(v) * f).round().clamp(0.0, 255.0) as u8;
    [s(c[0]), s(c[1]), s(c[2])]
}

fn mix_with_white(c: Rgb, amount: f64) -> Rgb {
    let m = |v: u8| {
        (f64::from(v) * amount + 255.0 * (1.0 - amount))
            .round()
            .clamp(0.0, 255.0) as u8
    };
    [m(c[0]), m(c[1]), m(c[2])]
}

/// Darkens `c` until white text on it (and it as text on white) passes WCAG AA (4.5:1).
fn accessible_on_white(c: Rgb) -> Rgb {
    let mut out = c;
    let mut f = 1.0;
    while contrast_with_white(out) < 4.6 && f > 0.0 {
        f -= 0.02;
        out = scale(c, f);
    }
    out
}

fn theme_css(primary: Rgb, brand: Rgb) -> String {
    format!(
        ":root{{--primary:{};--primary-dark:{};--primary-tint:{};--brand:{}}}\n",
        hex(primary),
        hex(scale(primary, 0.78)),
        hex(mix_with_white(primary, 0.1)),
        hex(brand)
    )
}

// --- Sample contexts ---------------------------------------------------------------------------

/// A QR-like placeholder in the format the `qrcode` crate writes (not scannable).
fn sample_qr_svg() -> String {
    const N: u32 = 25;
    const Q: u32 = 4;
    let size = N + 2 * Q;
    let mut d = String::new();
    let finder = |x: u32, y: u32| -> Option<bool> {
        for (fx, fy) in [(0, 0), (N - 7, 0), (0, N - 7)] {
            if (fx..fx + 8).contains(&x) && (fy..fy + 8).contains(&y) {
                let (dx, dy) = (x.wrapping_sub(fx), y.wrapping_sub(fy));
                if dx == 7 || dy == 7 {
                    return Some(false);
                }
                let ring = dx.min(dy).min(6 - dx.min(6)).min(6 - dy.min(6));
                return Some(ring != 1);
            }
        }
        None
    };
    let mut seed: u32 = 0x2545_f491;
    for y in 0..N {
        for x in 0..N {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let dark = finder(x, y).unwrap_or(seed % 5 < 2);
            if dark {
                let _ = write!(d, "M{} {}h1v1H{}V{}", x + Q, y + Q, x + Q, y + Q);
            }
        }
    }
    format!(
        r##"<?xml version="1.0" standalone="yes"?><svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{size}" height="{size}" viewBox="0 0 {size} {size}" shape-rendering="crispEdges"><rect x="0" y="0" width="{size}" height="{size}" fill="#fff"/><path fill="#000" d="{d}"/></svg>"##
    )
}

/// A representative page-specific context for each page and mail (`mail/<name>`;
/// `reset` returns the union of the page and the mail context).
pub fn sample_context(name: &str) -> Value {
    let p = "/_riegel";
    match name {
        "login" => context! {
            action => format!("{p}/login?rd=%2Fmieter%2Fuebersicht"),
            username => "mieter@example.at",
            error => (),
            notice => (),
            forgot_url => format!("{p}/forgot"),
            csrf => "c3JmLXRva2VuLXNhbXBsZQ",
        },
        "setup" => context! {
            qr_svg => sample_qr_svg(),
            secret_grouped => "JBSW Y3DP EHPK 3PXP JBSW Y3DP EHPK 3PXP",
            otpauth_uri => "otpauth://totp/IMMO%20PRO:mieter?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=IMMO%20PRO",
            continue_url => format!("{p}/setup/confirm"),
        },
        "setup_confirm" => context! {
            action => format!("{p}/setup/confirm"),
            csrf => "c3JmLXRva2VuLXNhbXBsZQ",
            error => (),
            back_url => format!("{p}/setup"),
        },
        "activated" => context! {
            recovery_codes => vec!["k7d2m-x9q4t", "p3w8n-c6r1z", "h5v2b-y8m3k", "t4q9x-d2n7w", "r8c1p-m5z6h", "w2y7k-b9t3q", "n6m4d-x1r8c", "z3h5t-q7p2y"],
            continue_url => "/mieter/uebersicht",
        },
        "verify" => context! {
            action => format!("{p}/verify"),
            csrf => "c3JmLXRva2VuLXNhbXBsZQ",
            error => (),
            recovery_url => format!("{p}/verify?recovery=1"),
        },
        "recovery" => context! {
            action => format!("{p}/verify?recovery=1"),
            csrf => "c3JmLXRva2VuLXNhbXBsZQ",
            error => (),
            back_url => format!("{p}/verify"),
        },
        "forgot" => context! {
            action => format!("{p}/forgot"),
            csrf => "c3JmLXRva2VuLXNhbXBsZQ",
            error => (),
            username => "",
            back_url => format!("{p}/login"),
        },
        "forgot_sent" => context! { back_url => format!("{p}/login"), minutes => 30 },
        "reset" => overlay(&[
            sample_context("mail/reset"),
            context! {
                action => format!("{p}/reset/dG9rZW4"),
                csrf => "c3JmLXRva2VuLXNhbXBsZQ",
                error => (),
                min_length => 10,
            },
        ]),
        "reset_done" => context! { login_url => format!("{p}/login") },
        "logout" => context! { action => format!("{p}/logout"), csrf => "c3JmLXRva2VuLXNhbXBsZQ" },
        "logged_out" => context! { login_url => format!("{p}/login") },
        "error" => context! {
            status => 404,
            title_key => "error_404_title",
            message_key => "error_404_text",
            home_url => "/",
        },
        "mail/reset" => context! {
            link => "https://portal.example.at/_riegel/reset/dG9rZW4tc2FtcGxl",
            minutes => 30,
            name => "Maria Muster",
        },
        "mail/password_changed" | "password_changed" => context! {
            name => "Maria Muster",
            time => "07.11.2024 14:05",
        },
        "mail/recovery_used" | "recovery_used" => context! {
            name => "Maria Muster",
            time => "07.11.2024 14:05",
            remaining => 7,
        },
        _ => context! {},
    }
}

/// The sample context plus every error/notice key the handlers may pass.
fn sample_variants(name: &str) -> Vec<Value> {
    let base = sample_context(name);
    let with = |extra: Value| overlay(&[base.clone(), extra]);
    let errors: &[&str] = match name {
        "login" => &["err_login_failed", "err_banned", "err_csrf", "err_required"],
        "setup_confirm" | "verify" => &[
            "err_csrf",
            "err_required",
            "err_code_format",
            "err_code_invalid",
            "err_banned",
        ],
        "recovery" => &[
            "err_csrf",
            "err_required",
            "err_code_format",
            "err_recovery_invalid",
            "err_banned",
        ],
        "forgot" => &["err_csrf", "err_required", "err_banned"],
        "reset" => &[
            "err_csrf",
            "err_required",
            "err_password_short",
            "err_password_long",
            "err_password_mismatch",
            "err_password_is_name",
        ],
        _ => &[],
    };
    let mut out = vec![base.clone()];
    out.extend(
        errors
            .iter()
            .map(|e| with(context! { error => *e, minutes => 15 })),
    );
    if name == "login" {
        for n in [
            "notice_logged_out",
            "notice_password_changed",
            "notice_login_expired",
        ] {
            out.push(with(context! { notice => n, username => "" }));
        }
    }
    if name == "error" {
        for code in [
            "400",
            "403",
            "404",
            "413",
            "429",
            "500",
            "502",
            "503",
            "504",
            "reset_invalid",
        ] {
            let status = code.parse::<u16>().unwrap_or(410);
            out.push(context! {
                status => status,
                title_key => format!("error_{code}_title"),
                message_key => format!("error_{code}_text"),
                minutes => 15,
                retry_url => "/_riegel/login",
                home_url => "/",
            });
        }
        out.push(context! { status => 500, title_key => "error_500_title", message_key => "error_500_text" });
    }
    out
}

fn mail_sample_variants(name: &str) -> Vec<Value> {
    let base = sample_context(&format!("mail/{name}"));
    if name == "recovery_used" {
        [0, 1, 7]
            .iter()
            .map(|r| overlay(&[base.clone(), context! { remaining => *r }]))
            .collect()
    } else {
        vec![base]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn branding() -> BrandingConfig {
        BrandingConfig {
            company: "IMMO PRO Immobilien GmbH".into(),
            portal_name: "Portal".into(),
            language: Language::De,
            logo_file: None,
            primary_color: "#5a9e1b".into(),
            imprint_url: Some("https://www.immopro.at/impressum".into()),
            privacy_url: Some("https://www.immopro.at/datenschutz".into()),
            pages_dir: None,
            texts: BTreeMap::new(),
        }
    }

    fn pages() -> Pages {
        match Pages::load(&branding(), "/_riegel") {
            Ok(p) => p,
            Err(errs) => panic!("load failed: {errs:#?}"),
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("riegel-pages-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
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
        let de = parse_texts(BUILTIN_TEXTS[0].2).unwrap();
        let en = parse_texts(BUILTIN_TEXTS[1].2).unwrap();
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
        let de = parse_texts(BUILTIN_TEXTS[0].2).unwrap();
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
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        for c in ["400", "403", "404", "413", "429", "500", "502", "503", "504"] {
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
            html.contains("aria-invalid=\"true\"")
                && html.contains("aria-describedby=\"login-error\"")
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
        assert!(html.contains("Fehler 429") && html.contains("5 Minuten"));
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

    #[test]
    fn overrides_are_picked_up() {
        let dir = temp_dir("ok");
        std::fs::create_dir_all(dir.join("templates")).unwrap();
        std::fs::create_dir_all(dir.join("i18n")).unwrap();
        std::fs::create_dir_all(dir.join("static")).unwrap();
        let login = BUILTIN_TEMPLATES
            .iter()
            .find(|t| t.0 == "login.html")
            .unwrap()
            .2;
        std::fs::write(
            dir.join("templates/login.html"),
            login.replace(
                "{% block content %}",
                "{% block content %}<p class=\"custom-banner\">{{ t.login_title }}</p>",
            ),
        )
        .unwrap();
        std::fs::write(dir.join("i18n/en.yaml"), "login_submit: \"Sign in\"\n").unwrap();
        std::fs::write(dir.join("static/extra.png"), b"\x89PNG").unwrap();
        let logo = dir.join("logo.png");
        std::fs::write(&logo, b"\x89PNG\r\n\x1a\nlogo").unwrap();
        let mut b = branding();
        b.pages_dir = Some(dir.clone());
        b.logo_file = Some(logo);
        b.primary_color = "#0055aa".into();
        b.texts.insert(
            "de".into(),
            BTreeMap::from([("login_submit".to_string(), "Anmelden".to_string())]),
        );
        let p = Pages::load(&b, "/_riegel/").unwrap();
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
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn broken_overrides_fail_at_load() {
        let dir = temp_dir("bad");
        std::fs::create_dir_all(dir.join("templates")).unwrap();
        std::fs::create_dir_all(dir.join("mail")).unwrap();
        std::fs::write(
            dir.join("templates/login.html"),
            "{% extends \"base.html\" %}{% block content %}{{ oops ",
        )
        .unwrap();
        std::fs::write(dir.join("templates/lgoin.html"), "x").unwrap();
        std::fs::write(dir.join("mail/reset.txt"), "{{ t.mail_greeting }}").unwrap(); // placeholder not filled
        let mut b = branding();
        b.pages_dir = Some(dir.clone());
        b.texts.insert(
            "de".into(),
            BTreeMap::from([("login_submt".to_string(), "x".to_string())]),
        );
        b.texts.insert("fr".into(), BTreeMap::new());
        b.logo_file = Some(dir.join("missing.png"));
        let errs = match Pages::load(&b, "/_riegel") {
            Ok(_) => panic!("broken overrides must fail"),
            Err(e) => e.iter().map(ToString::to_string).collect::<Vec<_>>(),
        };
        let all = errs.join("\n");
        assert!(all.contains("login.html:"), "{all}");
        assert!(all.contains("lgoin.html: unknown template name"), "{all}");
        assert!(all.contains("unknown text key 'login_submt'"), "{all}");
        assert!(all.contains("unknown language 'fr'"), "{all}");
        assert!(all.contains("missing.png"), "{all}");

        // With syntax fine but a text placeholder left unfilled, the start-up render catches it.
        let dir2 = temp_dir("bad2");
        std::fs::create_dir_all(dir2.join("mail")).unwrap();
        std::fs::write(
            dir2.join("mail/reset.txt"),
            "{{ t.mail_greeting }} {{ link }}",
        )
        .unwrap();
        let mut b = branding();
        b.pages_dir = Some(dir2.clone());
        let errs = Pages::load(&b, "/_riegel").err().unwrap();
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
        assert!(Pages::load(&b, "/_riegel").is_err());

        // A template that references a missing variable fails at load, not at request time.
        let dir3 = temp_dir("bad3");
        std::fs::create_dir_all(dir3.join("templates")).unwrap();
        std::fs::write(
            dir3.join("templates/logout.html"),
            "{% extends \"base.html\" %}{% block content %}{{ nothere }}{% endblock %}",
        )
        .unwrap();
        let mut b = branding();
        b.pages_dir = Some(dir3.clone());
        assert!(Pages::load(&b, "/_riegel").is_err());
        for d in [dir, dir2, dir3] {
            let _ = std::fs::remove_dir_all(d);
        }
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
}
