//! The edge step before `web::Pages`: reads what `branding.pages_dir` and
//! `branding.logo_file` hold from disk and hands the bytes to
//! [`Pages::new`], which decides what each file is and reports every one
//! that does not fit. `web` itself reads no files.

use std::path::{Path, PathBuf};

use crate::config::BrandingConfig;
use crate::web::pages::{
    Content, OverrideDir, OverrideEntry, OverrideFiles, PagesError, OVERRIDE_DIRS,
};
use crate::web::Pages;

/// The pages with `branding`'s overrides from disk; every problem found,
/// each with its file name.
pub fn load_pages(branding: &BrandingConfig, prefix: &str) -> Result<Pages, Vec<PagesError>> {
    Pages::new(branding, prefix, read_overrides(branding))
}

/// Reads `branding.pages_dir` (the directories in it, and the files of
/// those named in [`OVERRIDE_DIRS`]) and `branding.logo_file`. What cannot
/// be read is recorded, with its path, for [`Pages::new`] to report.
pub fn read_overrides(branding: &BrandingConfig) -> OverrideFiles {
    let mut files = OverrideFiles::default();
    if let Some(dir) = &branding.pages_dir {
        for (name, path, is_dir) in list_dir(dir, &mut files.problems) {
            if !is_dir {
                continue; // README and the like
            }
            let entries = OVERRIDE_DIRS.contains(&name.as_str()).then(|| {
                list_dir(&path, &mut files.problems)
                    .into_iter()
                    .map(|(name, path, is_dir)| OverrideEntry {
                        content: if is_dir {
                            Content::Dir
                        } else {
                            match std::fs::read(&path) {
                                Ok(bytes) => Content::File(bytes),
                                Err(e) => Content::Unreadable(e.to_string()),
                            }
                        },
                        name,
                        path: path.display().to_string(),
                    })
                    .collect()
            });
            files.dirs.push(OverrideDir {
                name,
                path: path.display().to_string(),
                entries,
            });
        }
    }
    files.logo = branding
        .logo_file
        .as_ref()
        .map(|path| std::fs::read(path).map_err(|e| e.to_string()));
    files
}

/// The entries of `dir` but hidden ones, sorted: (name, path, is a directory).
fn list_dir(dir: &Path, problems: &mut Vec<String>) -> Vec<(String, PathBuf, bool)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(format!("{}: cannot read directory: {e}", dir.display()));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => {
                let path = entry.path();
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    problems.push(format!("{}: file name is not UTF-8", path.display()));
                    continue;
                };
                if name.starts_with('.') {
                    continue;
                }
                let is_dir = path.is_dir();
                out.push((name, path, is_dir));
            }
            Err(e) => problems.push(format!("{}: {e}", dir.display())),
        }
    }
    out.sort();
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::web::pages::tests::{
        branding, check_overrides_applied, overriding_branding, sample_overrides, SAMPLE_LOGO,
    };

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("riegel-pages-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn without_overrides_nothing_is_read() {
        let files = read_overrides(&branding());
        assert!(files.dirs.is_empty() && files.logo.is_none() && files.problems.is_empty());
        assert!(load_pages(&branding(), "/_riegel").is_ok());
    }

    #[test]
    fn overrides_are_picked_up() {
        let dir = temp_dir("ok");
        for (d, name, bytes) in sample_overrides() {
            std::fs::create_dir_all(dir.join(d)).unwrap();
            std::fs::write(dir.join(d).join(name), bytes).unwrap();
        }
        std::fs::write(dir.join("README.md"), "not read").unwrap();
        std::fs::write(dir.join("templates/.login.html.swp"), "hidden, not read").unwrap();
        let logo = dir.join("logo.png");
        std::fs::write(&logo, SAMPLE_LOGO).unwrap();
        let b = overriding_branding(dir.to_str().unwrap(), logo.to_str().unwrap());
        check_overrides_applied(&load_pages(&b, "/_riegel/").unwrap());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A pages_dir in a fresh temporary directory holding `files` (path
    /// under it, contents).
    fn pages_dir(tag: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = temp_dir(tag);
        for (rel, text) in files {
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    #[test]
    fn broken_overrides_fail_at_load() {
        let dir = pages_dir(
            "bad",
            &[
                ("templates/login.html", "{% extends \"base.html\" %}{% block content %}{{ oops "),
                ("templates/lgoin.html", "x"),
                ("mail/reset.txt", "{{ t.mail_greeting }}"), // placeholder not filled
            ],
        );
        let mut b = branding();
        b.pages_dir = Some(dir.clone());
        b.texts.insert(
            "de".into(),
            BTreeMap::from([("login_submt".to_string(), "x".to_string())]),
        );
        b.texts.insert("fr".into(), BTreeMap::new());
        b.logo_file = Some(dir.join("missing.png"));
        let errs = match load_pages(&b, "/_riegel") {
            Ok(_) => panic!("broken overrides must fail"),
            Err(e) => e.iter().map(ToString::to_string).collect::<Vec<_>>(),
        };
        let all = errs.join("\n");
        assert!(all.contains("login.html:"), "{all}");
        assert!(all.contains("lgoin.html: unknown template name"), "{all}");
        assert!(all.contains("unknown text key 'login_submt'"), "{all}");
        assert!(all.contains("unknown language 'fr'"), "{all}");
        assert!(all.contains("missing.png"), "{all}");

        // Files read from disk go through the start-up render check: a text
        // placeholder left unfilled, a variable the page does not have (the
        // same without disk, and texts from branding.texts: web::pages' tests).
        for (tag, file, text, wanted) in [
            ("bad2", "mail/reset.txt", "{{ t.mail_greeting }} {{ link }}", "{name}"),
            (
                "bad3",
                "templates/logout.html",
                "{% extends \"base.html\" %}{% block content %}{{ nothere }}{% endblock %}",
                "logout.html: [de]",
            ),
        ] {
            let dir = pages_dir(tag, &[(file, text)]);
            let mut b = branding();
            b.pages_dir = Some(dir.clone());
            let errs = load_pages(&b, "/_riegel").err().unwrap();
            assert!(errs.iter().any(|e| e.to_string().contains(wanted)), "{errs:?}");
            let _ = std::fs::remove_dir_all(dir);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn files_that_cannot_be_read_are_all_reported_by_name() {
        use std::os::unix::ffi::OsStrExt;
        let dir = temp_dir("unreadable");
        for d in ["templates", "i18n", "static", "img"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        // A link to nowhere where a template should be, a directory where a
        // text file should be, a file name that is not UTF-8, a directory
        // that is not part of the layout, a template that is not UTF-8.
        std::os::unix::fs::symlink(dir.join("nowhere"), dir.join("templates/login.html")).unwrap();
        std::fs::write(dir.join("templates/logout.html"), b"\xff\xfe{{ x }}").unwrap();
        std::fs::create_dir_all(dir.join("i18n/de.yaml")).unwrap();
        std::fs::write(
            dir.join("static")
                .join(std::ffi::OsStr::from_bytes(b"logo-\xff.png")),
            b"x",
        )
        .unwrap();
        std::fs::write(dir.join("img/big.bin"), b"never read").unwrap();
        let mut b = branding();
        b.pages_dir = Some(dir.clone());
        b.logo_file = Some(dir.join("static"));
        let files = read_overrides(&b);
        let img = files.dirs.iter().find(|d| d.name == "img").unwrap();
        assert!(
            img.entries.is_none(),
            "a directory outside the layout is not read"
        );
        let errs = load_pages(&b, "/_riegel").err().unwrap();
        let all = errs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        let p = |rel: &str| dir.join(rel).display().to_string();
        for expected in [
            format!(
                "{}: cannot read: No such file or directory",
                p("templates/login.html")
            ),
            format!(
                "{}: cannot read: not UTF-8 text",
                p("templates/logout.html")
            ),
            format!("{}: cannot read: is a directory", p("i18n/de.yaml")),
            format!("{}: file name is not UTF-8", p("static/logo-\u{fffd}.png")),
            format!("{}: unknown directory in pages_dir", p("img")),
            format!("branding.logo_file {}: cannot read:", p("static")),
        ] {
            assert!(all.contains(&expected), "missing {expected:?} in\n{all}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_missing_pages_dir_is_reported() {
        let mut b = branding();
        b.pages_dir =
            Some(std::env::temp_dir().join(format!("riegel-pages-none-{}", std::process::id())));
        let errs = load_pages(&b, "/_riegel").err().unwrap();
        assert!(
            errs.iter()
                .any(|e| e.to_string().contains("cannot read directory")),
            "{errs:?}"
        );
    }
}
