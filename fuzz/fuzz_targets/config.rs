//! The config loader (`Config::parse`) from YAML bytes: never a panic;
//! every error says something (and, past the YAML, where).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use riegel::config::{Config, Env};

/// An environment with one variable, for `${...}`-style references.
struct FixedEnv;

impl Env for FixedEnv {
    fn var(&self, name: &str) -> Option<String> {
        (name == "RIEGEL_FUZZ").then(|| "value".to_string())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // A base directory that does not exist: relative files are not found.
    match Config::parse(text, Path::new("/nonexistent/riegel-fuzz"), &FixedEnv) {
        Ok(c) => {
            let _ = (c.cookie_name(), c.csrf_cookie_name());
        }
        Err(errs) => {
            assert!(!errs.0.is_empty(), "an error without a message");
            for e in &errs.0 {
                assert!(!e.message.is_empty(), "an empty message at {:?}", e.path);
            }
            let _ = errs.to_string();
        }
    }
});
