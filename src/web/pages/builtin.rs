//! The built-in pages: `pages/` of the source tree, compiled into the
//! binary (rust-embed, with `debug-embed` so that debug builds and tests
//! embed them too rather than read them at run time). Every file there
//! counts; nothing lists them by hand.

use std::borrow::Cow;

use rust_embed::Embed;

use super::texts::{lang_from_code, parse_texts, TextFile};
use super::PagesError;

#[derive(Embed)]
#[folder = "pages/"]
struct Files;

/// `pages/`, sorted into what it holds.
#[derive(Default)]
pub(super) struct Builtin {
    /// (name in the environment, path under pages/, source): `templates/x`
    /// is `x`, `mail/x` is `mail/x`.
    pub templates: Vec<(String, String, String)>,
    /// (file name under static/, bytes).
    pub statics: Vec<(String, Cow<'static, [u8]>)>,
    /// `i18n/<language code>.yaml`, parsed.
    pub texts: Vec<TextFile>,
}

/// The built-in files; a file that does not fit the layout (or is not
/// UTF-8 where text is expected) is an error, found by the tests before
/// any release.
pub(super) fn load(errors: &mut Vec<PagesError>) -> Builtin {
    let mut b = Builtin::default();
    let mut paths: Vec<Cow<'static, str>> = Files::iter().collect();
    paths.sort();
    for path in paths {
        let Some(file) = Files::get(&path) else {
            continue;
        };
        let origin = format!("built-in pages/{path}");
        let text = || {
            String::from_utf8(file.data.to_vec()).map_err(|_| PagesError::Template {
                file: origin.clone(),
                message: "not UTF-8 text".into(),
            })
        };
        match path.split_once('/') {
            Some(("templates", name)) if !name.contains('/') => match text() {
                Ok(src) => b.templates.push((name.to_string(), path.to_string(), src)),
                Err(e) => errors.push(e),
            },
            Some(("mail", name)) if !name.contains('/') => match text() {
                Ok(src) => b.templates.push((path.to_string(), path.to_string(), src)),
                Err(e) => errors.push(e),
            },
            Some(("static", name)) if !name.contains('/') => {
                b.statics.push((name.to_string(), file.data.clone()))
            }
            Some(("i18n", name)) => {
                let lang = name.strip_suffix(".yaml").and_then(lang_from_code);
                match (lang, text()) {
                    (Some(lang), Ok(src)) => match parse_texts(&src) {
                        Ok(map) => b.texts.push((lang, path.to_string(), map)),
                        Err(message) => errors.push(PagesError::Texts {
                            file: path.to_string(),
                            message,
                        }),
                    },
                    (None, _) => errors.push(PagesError::Texts {
                        file: origin,
                        message: "unknown text file".into(),
                    }),
                    (_, Err(e)) => errors.push(e),
                }
            }
            _ => errors.push(PagesError::Template {
                file: origin,
                message: "not part of the layout (templates/, mail/, static/, i18n/)".into(),
            }),
        }
    }
    b
}
