//! Overrides from `branding.pages_dir` (same layout as `pages/`:
//! `templates/`, `mail/`, `static/`, `i18n/`) and `branding.logo_file`.
//! `web` reads no files: the edge (`crate::assets`) reads them into
//! [`OverrideFiles`], and this module decides what each one is and reports
//! every file that does not fit, by its path.

use std::collections::{BTreeMap, BTreeSet};

use super::statics::content_type_for;
use super::texts::{lang_from_code, parse_texts, TextFile};
use super::PagesError;

/// The directories of `pages_dir` whose files are read.
pub const OVERRIDE_DIRS: [&str; 4] = ["templates", "mail", "static", "i18n"];

/// What `branding.pages_dir` and `branding.logo_file` held, as read from
/// disk. Empty (the default) when neither is configured.
#[derive(Default)]
pub struct OverrideFiles {
    /// The directories directly in `pages_dir`, sorted by name (files beside
    /// them, a README say, are not read).
    pub dirs: Vec<OverrideDir>,
    /// The contents of `branding.logo_file`, or why it could not be read.
    pub logo: Option<Result<Vec<u8>, String>>,
    /// Problems met while reading (a directory that cannot be listed, a file
    /// name that is not UTF-8), each naming its path.
    pub problems: Vec<String>,
}

pub struct OverrideDir {
    pub name: String,
    /// The path as shown in errors.
    pub path: String,
    /// The entries, sorted by name (hidden ones left out); `None` for a
    /// directory that is not one of [`OVERRIDE_DIRS`] (not read).
    pub entries: Option<Vec<OverrideEntry>>,
}

pub struct OverrideEntry {
    pub name: String,
    /// The path as shown in errors.
    pub path: String,
    pub content: Content,
}

pub enum Content {
    /// A directory: the layout has none at this depth, so it is not read.
    Dir,
    File(Vec<u8>),
    /// The file could not be read: why.
    Unreadable(String),
}

/// The overrides, by what they override.
#[derive(Default)]
pub(super) struct Sorted {
    /// Environment name -> (file, source).
    pub templates: BTreeMap<String, (String, String)>,
    pub statics: BTreeMap<String, (&'static str, Vec<u8>)>,
    pub texts: Vec<TextFile>,
}

/// Sorts `files` by what each one overrides; `known_templates` are the
/// environment names of the built-in templates (only those may be
/// overridden). Unknown texts keys are reported when the texts are applied.
pub(super) fn sort(
    files: OverrideFiles,
    known_templates: &BTreeSet<&str>,
    errors: &mut Vec<PagesError>,
) -> Sorted {
    let mut o = Sorted::default();
    errors.extend(files.problems.into_iter().map(PagesError::Io));
    for dir in files.dirs {
        let entries = match (dir.name.as_str(), dir.entries) {
            (name, Some(entries)) if OVERRIDE_DIRS.contains(&name) => entries,
            _ => {
                errors.push(PagesError::Io(format!(
                    "{}: unknown directory in pages_dir (expected templates/, mail/, static/, i18n/)",
                    dir.path
                )));
                continue;
            }
        };
        for e in entries {
            match dir.name.as_str() {
                "templates" | "mail" => template(&dir.name, e, known_templates, &mut o, errors),
                "static" => static_file(e, &mut o, errors),
                _ => texts(e, &mut o, errors),
            }
        }
    }
    o
}

fn template(
    dir: &str,
    e: OverrideEntry,
    known_templates: &BTreeSet<&str>,
    o: &mut Sorted,
    errors: &mut Vec<PagesError>,
) {
    let mail = dir == "mail";
    let env_name = if mail {
        format!("mail/{}", e.name)
    } else {
        e.name.clone()
    };
    if matches!(e.content, Content::Dir) || !known_templates.contains(env_name.as_str()) {
        let known: Vec<&str> = known_templates
            .iter()
            .filter(|n| n.starts_with("mail/") == mail)
            .map(|n| n.trim_start_matches("mail/"))
            .collect();
        errors.push(PagesError::Template {
            file: e.path.clone(),
            message: format!("unknown template name (known: {})", known.join(", ")),
        });
        return;
    }
    let path = e.path.clone();
    match text_of(e) {
        Ok(src) => {
            o.templates.insert(env_name, (path, src));
        }
        Err(err) => errors.push(err),
    }
}

fn static_file(e: OverrideEntry, o: &mut Sorted, errors: &mut Vec<PagesError>) {
    let valid_name = e
        .name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    match (content_type_for(&e.name), e.content) {
        (Some(ct), Content::File(body)) if valid_name && e.name != "logo" => {
            o.statics.insert(e.name, (ct, body));
        }
        (Some(_), Content::Unreadable(why)) if valid_name && e.name != "logo" => {
            errors.push(PagesError::Io(format!("{}: cannot read: {why}", e.path)))
        }
        _ => errors.push(PagesError::Io(format!(
            "{}: unsupported static file (use letters, digits, . _ - and one of .css .js .svg .png .jpg .webp .gif .ico .woff2)",
            e.path
        ))),
    }
}

fn texts(e: OverrideEntry, o: &mut Sorted, errors: &mut Vec<PagesError>) {
    let lang = e
        .name
        .strip_suffix(".yaml")
        .or_else(|| e.name.strip_suffix(".yml"))
        .and_then(lang_from_code);
    let Some(lang) = lang else {
        errors.push(PagesError::Texts {
            file: e.path.clone(),
            message: "unknown text file (expected de.yaml or en.yaml)".into(),
        });
        return;
    };
    let path = e.path.clone();
    match text_of(e) {
        Ok(src) => match parse_texts(&src) {
            Ok(map) => o.texts.push((lang, path, map)),
            Err(message) => errors.push(PagesError::Texts {
                file: path,
                message,
            }),
        },
        Err(err) => errors.push(err),
    }
}

/// The entry as text, or the error naming it.
fn text_of(e: OverrideEntry) -> Result<String, PagesError> {
    match e.content {
        Content::File(bytes) => String::from_utf8(bytes)
            .map_err(|_| PagesError::Io(format!("{}: cannot read: not UTF-8 text", e.path))),
        Content::Dir => Err(PagesError::Io(format!(
            "{}: cannot read: is a directory",
            e.path
        ))),
        Content::Unreadable(why) => Err(PagesError::Io(format!("{}: cannot read: {why}", e.path))),
    }
}
