//! Rendering: the minijinja environment (strict undefined, HTML escaping
//! for `.html` templates, the `fill` filter), layered contexts and how
//! render errors are described.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use minijinja::value::Value;
use minijinja::{context, AutoEscape, Environment, ErrorKind, State, UndefinedBehavior};

use super::texts::fill_filter;
use super::PagesError;
use crate::config::Language;

/// An environment without templates, with riegel's rules.
pub(super) fn environment() -> Environment<'static> {
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
    env
}

/// Optional page variables that default to a value when the handler leaves them out.
pub(super) fn optional_defaults(name: &str) -> Value {
    let none = Value::from(());
    match name {
        "login" => context! { error => none.clone(), notice => none, username => "" },
        "forgot" => context! { error => none, username => "" },
        "setup_confirm" | "verify" | "recovery" | "reset" => context! { error => none },
        "error" => {
            context! { minutes => none.clone(), second_url => none.clone(), second_key => none }
        }
        "account" => context! { notice => none.clone(), error => none.clone(), error_form => "", minutes => none },
        "account_add" => context! { error => none.clone(), minutes => none },
        "new_device" => context! { resent => false, email => none },
        _ => context! {},
    }
}

pub(super) fn origin_or(origins: &BTreeMap<String, String>, name: &str) -> String {
    origins
        .get(name)
        .cloned()
        .unwrap_or_else(|| name.to_string())
}

pub(super) fn tag(e: PagesError, lang: Language) -> PagesError {
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

pub(super) fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let _ = write!(s, ": {inner}");
        src = inner.source();
    }
    s
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
pub(super) fn overlay(layers: &[Value]) -> Value {
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
