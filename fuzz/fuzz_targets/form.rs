//! The urlencoded form parser (`web::Form`): never a panic on any body;
//! a field riegel's forms read comes back as it was encoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use riegel::web::Form;

/// Fields riegel's own forms read.
const NAMES: [&str; 8] = ["username", "password", "code", "csrf", "rd", "email", "new_password", "recovery"];

fuzz_target!(|data: &[u8]| {
    let f = Form::parse(data);
    for n in NAMES {
        let _ = f.get(n);
    }
    // Any text as the value of a field, among others: read back as it was.
    let value = String::from_utf8_lossy(data);
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("x", "1")
        .append_pair("password", &value)
        .append_pair("password", "second")
        .finish();
    let f = Form::parse(body.as_bytes());
    assert_eq!(f.get("password"), value, "the first value of a field");
    assert_eq!(f.get("x"), "1");
    assert_eq!(f.get("absent"), "");
    // Raw bytes after a valid field do not change it.
    let mut raw = b"username=anna&".to_vec();
    raw.extend_from_slice(data);
    let f = Form::parse(&raw);
    assert_eq!(f.get("username"), "anna");
});
