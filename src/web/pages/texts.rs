//! Texts (i18n): flat maps key -> text per language, the built-in
//! `i18n/de.yaml` and `i18n/en.yaml` overridden key by key from
//! `pages_dir/i18n/` and `branding.texts`; and the `{name}` placeholders in
//! them, filled by the `fill` filter.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value};
use minijinja::{ErrorKind, State};

use super::PagesError;
use crate::config::Language;

pub(super) type TextMap = BTreeMap<String, String>;

pub(super) const LANGUAGES: [Language; 2] = [Language::De, Language::En];

pub(super) fn lang_index(lang: Language) -> usize {
    match lang {
        Language::De => 0,
        Language::En => 1,
    }
}

pub(super) fn lang_from_code(code: &str) -> Option<Language> {
    LANGUAGES.into_iter().find(|l| l.code() == code)
}

pub(super) fn parse_texts(src: &str) -> Result<TextMap, String> {
    let map: Option<TextMap> = serde_yaml::from_str(src).map_err(|e| e.to_string())?;
    Ok(map.unwrap_or_default())
}

/// A text file for one language: (language, file name for errors, texts).
pub(super) type TextFile = (Language, String, TextMap);

/// The texts per language (index: [`lang_index`]): the built-in files,
/// then `overrides` (from `pages_dir/i18n/`), then `branding` (the
/// `branding.texts` map, language code -> key -> text). Only keys the
/// built-in files have may be overridden; both built-in files must have
/// the same keys.
pub(super) fn assemble(
    builtin: &[TextFile],
    overrides: &[TextFile],
    branding: &BTreeMap<String, BTreeMap<String, String>>,
    errors: &mut Vec<PagesError>,
) -> [TextMap; 2] {
    let mut texts: [TextMap; 2] = [TextMap::new(), TextMap::new()];
    for lang in LANGUAGES {
        match builtin.iter().find(|(l, _, _)| *l == lang) {
            Some((_, _, map)) => texts[lang_index(lang)] = map.clone(),
            None => errors.push(PagesError::Texts {
                file: format!("i18n/{}.yaml", lang.code()),
                message: "built-in text file missing".into(),
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
    for (lang, file, map) in overrides {
        apply(&mut texts[lang_index(*lang)], &known, map, file, errors);
    }
    for (code, map) in branding {
        let Some(lang) = lang_from_code(code) else {
            errors.push(PagesError::Texts {
                file: "branding.texts".into(),
                message: format!("unknown language '{code}' (expected de or en)"),
            });
            continue;
        };
        apply(
            &mut texts[lang_index(lang)],
            &known,
            map,
            &format!("branding.texts.{code}"),
            errors,
        );
    }
    texts
}

/// Overrides the known keys of `target` from `map`; an unknown key is an error.
fn apply(
    target: &mut TextMap,
    known: &BTreeSet<String>,
    map: &TextMap,
    file: &str,
    errors: &mut Vec<PagesError>,
) {
    for (k, v) in map {
        if known.contains(k) {
            target.insert(k.clone(), v.clone());
        } else {
            errors.push(PagesError::Texts {
                file: file.to_string(),
                message: format!("unknown text key '{k}'"),
            });
        }
    }
}

// --- Placeholders ---------------------------------------------------------------

/// Replaces `{name}` placeholders (lowercase letters, digits, `_`) using `lookup`.
/// Any other brace is left alone. A placeholder without a value is an error.
pub(super) fn fill_placeholders(
    text: &str,
    lookup: impl Fn(&str) -> Option<Value>,
) -> Result<String, String> {
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
pub(super) fn placeholder_len(s: &str) -> Option<usize> {
    let len = s
        .bytes()
        .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
        .count();
    (len > 0 && s.as_bytes().get(len) == Some(&b'}')).then_some(len)
}

pub(super) fn leftover_placeholder(s: &str) -> Option<String> {
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
pub(super) fn fill_filter(
    state: &State,
    text: String,
    kwargs: Kwargs,
) -> Result<String, minijinja::Error> {
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
