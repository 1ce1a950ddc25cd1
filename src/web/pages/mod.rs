//! The user-facing pages and mails: templates, texts (i18n) and static assets.
//!
//! Everything built in is compiled into the binary (`builtin`: all of
//! `pages/` in the source tree), then overridden from `branding.pages_dir`
//! (same layout: `templates/`, `mail/`, `static/`, `i18n/`; read by the edge,
//! `crate::assets`, and handed in as [`OverrideFiles`]) and `branding.texts`.
//! Every problem with an override is reported by [`Pages::new`], which also
//! renders every page and mail once per language with the sample contexts
//! (`samples`), so a broken override fails at start-up and never at a
//! user's request.
//!
//! Texts are flat maps key -> text (`texts`). Placeholders such as
//! `{minutes}` are filled by the `fill` filter from its keyword arguments or
//! the render context.

mod builtin;
mod overrides;
mod render;
mod samples;
mod statics;
mod texts;
mod theme;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use minijinja::value::Value;
use minijinja::{context, Environment};

use crate::config::{BrandingConfig, Language};
use render::{describe, optional_defaults, origin_or, overlay, tag};
use samples::{mail_sample_variants, sample_variants};
use statics::{asset, content_type_for};
use texts::{fill_placeholders, lang_index, leftover_placeholder, TextMap, LANGUAGES};
use theme::{accessible_on_white, hex, parse_hex_color, theme_css, DEFAULT_PRIMARY};

pub use overrides::{Content, OverrideDir, OverrideEntry, OverrideFiles, OVERRIDE_DIRS};
pub use samples::sample_context;
pub use statics::StaticAsset;

#[derive(Debug, thiserror::Error)]
pub enum PagesError {
    #[error("{file}: {message}")]
    Template { file: String, message: String },
    #[error("{file}: {message}")]
    Texts { file: String, message: String },
    #[error("{0}")]
    Io(String),
}

/// The pages a handler may render (template `<name>.html`).
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
    "account",
    "account_add",
    "account_codes",
    "recovery_done",
    "new_device",
    "new_device_open",
];

/// The mails (templates `mail/<name>.txt` and `.html`, subject text
/// `mail_<name>_subject`).
const MAIL_NAMES: &[&str] = &[
    "reset",
    "password_changed",
    "recovery_used",
    "new_device",
    "authenticator_added",
    "authenticator_removed",
    "recovery_codes_new",
    "sessions_ended",
];

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

impl Pages {
    /// Compiles the built-in templates/CSS/texts, applies the overrides
    /// `files` (what `branding.pages_dir` and `branding.logo_file` held) and
    /// `branding.texts`, and renders every page and mail once per language.
    /// Returns every problem found.
    pub fn new(
        branding: &BrandingConfig,
        prefix: &str,
        mut files: OverrideFiles,
    ) -> Result<Pages, Vec<PagesError>> {
        let mut errors = Vec::new();
        let prefix = prefix.trim_end_matches('/').to_string();
        let builtin = builtin::load(&mut errors);
        let known_templates: BTreeSet<&str> = builtin
            .templates
            .iter()
            .map(|(n, _, _)| n.as_str())
            .collect();
        let logo = files.logo.take();
        let overrides = overrides::sort(files, &known_templates, &mut errors);

        // --- Texts ---------------------------------------------------------
        let texts = texts::assemble(
            &builtin.texts,
            &overrides.texts,
            &branding.texts,
            &mut errors,
        );

        // --- Templates --------------------------------------------------------
        let mut env = render::environment();
        let mut origins = BTreeMap::new();
        for (name, path, src) in &builtin.templates {
            let (origin, source) = match overrides.templates.get(name) {
                Some((file, text)) => (file.clone(), text.clone()),
                None => (format!("built-in pages/{path}"), src.clone()),
            };
            if let Err(e) = env.add_template_owned(name.clone(), source) {
                errors.push(PagesError::Template {
                    file: origin.clone(),
                    message: describe(&e),
                });
            }
            origins.insert(name.clone(), origin);
        }

        // --- Static assets ---------------------------------------------------
        let mut assets = BTreeMap::new();
        for (name, body) in &builtin.statics {
            match content_type_for(name) {
                Some(ct) => {
                    assets.insert(name.clone(), asset(ct, body.to_vec()));
                }
                None => errors.push(PagesError::Io(format!(
                    "built-in pages/static/{name}: no content type for this file name"
                ))),
            }
        }
        for (name, (ct, body)) in overrides.statics {
            assets.insert(name, asset(ct, body));
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
                match (ct, logo) {
                    (Some(ct), Some(Ok(body))) if ct.starts_with("image/") => {
                        assets.insert("logo".into(), asset(ct, body));
                    }
                    (_, Some(Err(e))) => errors.push(PagesError::Io(format!(
                        "branding.logo_file {}: cannot read: {e}",
                        path.display()
                    ))),
                    (_, None) => errors.push(PagesError::Io(format!(
                        "branding.logo_file {}: not read (the caller handed in no logo)",
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
        // How to reach the operator (`branding.contact`); `contact_tel` is
        // the phone number for a tel: link (digits and a leading +).
        common.insert("contact_phone", opt(&branding.contact.phone));
        common.insert("contact_email", opt(&branding.contact.email));
        let tel = branding.contact.phone.as_ref().map(|p| {
            p.chars()
                .enumerate()
                .filter(|(i, c)| c.is_ascii_digit() || (*i == 0 && *c == '+'))
                .map(|(_, c)| c)
                .collect::<String>()
        });
        common.insert("contact_tel", opt(&tel));

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
        let defaults = overlay(&[context! { lang_links => Vec::<Value>::new() }, optional_defaults(name)]);
        let full = self.full_context(lang, ctx, defaults);
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
        let full = self.full_context(lang, ctx, context! { lang_links => Vec::<Value>::new() });
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
