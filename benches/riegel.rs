//! Micro-benchmarks of riegel's per-request and per-login work.
//!
//! ```sh
//! cargo bench --bench riegel                      # everything
//! cargo bench --bench riegel -- session           # one group (filter by name)
//! cargo bench --bench riegel -- --quick           # a fast, rougher pass
//! ```
//!
//! Groups:
//! - `session`: cookie sign (`encode`) and verify (`decode`) with 1 and 3 keys;
//!   with 3 keys the cookie is signed by the *last* key (worst case,
//!   although `decode` tries every key anyway, in constant time).
//! - `totp`: `totp::verify` with a right code, a wrong code and a replay.
//! - `routes`: the per-request rules: `is_public`, `safe_redirect`,
//!   `find_cookie`, `strip_cookie`, and the short way's head work (parse,
//!   header policy, the portal's head: `short_head`).
//! - `pages`: `assets::load_pages` and `render("login", ..)` with the context
//!   `web::login::render_login` builds.
//! - `argon2`: `Hasher::verify` with the default parameters
//!   (argon2id m=19456 KiB, t=2, p=1): one password login.
//! - `metrics`: what a request adds for the metrics: the request counter,
//!   and for a forwarded one the upstream histogram with its clock read
//!   (`forwarded_request`: counter, `Instant::now`, elapsed, observe);
//!   also with two threads counting at once (the two shards of a
//!   2-core machine).
//!
//! The config structs are built directly, so these benches need no files and
//! no keys on disk.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

use riegel::auth::password::{Hasher, Verified};
use riegel::auth::redirect::safe_redirect;
use riegel::auth::session::{find_cookie, strip_cookie, SessionClaims, SessionCodec, Stage};
use riegel::auth::totp;
use riegel::auth::OsRandom;
use riegel::config::{Argon2Params, BrandingConfig, Language};
use riegel::proxy::ShortHeadBench;
use riegel::web::paths::is_public;

/// A fixed "now" so that every run verifies the same thing.
const NOW: i64 = 1_764_000_000;

fn claims() -> SessionClaims {
    SessionClaims {
        sid: [7; 16],
        uid: 42,
        stage: Stage::Full,
        issued_at: NOW - 600,
        expires_at: NOW + 12 * 3600,
    }
}

fn key(b: u8) -> Vec<u8> {
    // 32 bytes, as `openssl rand -hex 32` gives 64 hex characters; the
    // length of the master key does not change the per-cookie cost (the MAC
    // key is derived once in `SessionCodec::new`).
    (0..64u8).map(|i| b.wrapping_add(i)).collect()
}

fn bench_session(c: &mut Criterion) {
    let mut g = c.benchmark_group("session");
    let one = SessionCodec::new(&[key(1)]);
    let three = SessionCodec::new(&[key(1), key(2), key(3)]);
    // A cookie signed by the last (oldest) key of three.
    let by_last = SessionCodec::new(&[key(3)]).encode(&claims());
    let by_first = one.encode(&claims());
    assert!(three.decode(&by_last, NOW).is_ok(), "3-key codec must accept a cookie of its last key");
    assert!(one.decode(&by_first, NOW).is_ok());

    g.bench_function("encode/1key", |b| b.iter(|| one.encode(black_box(&claims()))));
    g.bench_function("encode/3keys", |b| b.iter(|| three.encode(black_box(&claims()))));
    g.bench_function("decode/1key", |b| b.iter(|| one.decode(black_box(&by_first), black_box(NOW))));
    g.bench_function("decode/3keys_last", |b| b.iter(|| three.decode(black_box(&by_last), black_box(NOW))));
    // A forged cookie of the right shape: full MAC work, then refused.
    let mut forged = by_first.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ascii");
    g.bench_function("decode/3keys_forged", |b| b.iter(|| three.decode(black_box(&forged), black_box(NOW))));
    g.bench_function("new/3keys", |b| b.iter(|| SessionCodec::new(black_box(&[key(1), key(2), key(3)]))));
    g.finish();
}

fn bench_totp(c: &mut Criterion) {
    let mut g = c.benchmark_group("totp");
    let secret: [u8; totp::SECRET_LEN] = *b"12345678901234567890";
    let step = totp::step_of(NOW);
    let right = totp::code_for_step(&secret, step);
    let wrong = if right == "000000" { "000001".to_string() } else { "000000".to_string() };
    assert_eq!(totp::verify(&secret, &right, NOW, None), Ok(step));
    g.bench_function("verify/right", |b| {
        b.iter(|| totp::verify(black_box(&secret), black_box(&right), black_box(NOW), black_box(Some(step - 5))))
    });
    g.bench_function("verify/wrong", |b| {
        b.iter(|| totp::verify(black_box(&secret), black_box(&wrong), black_box(NOW), black_box(None)))
    });
    g.bench_function("verify/replayed", |b| {
        b.iter(|| totp::verify(black_box(&secret), black_box(&right), black_box(NOW), black_box(Some(step))))
    });
    g.finish();
}

fn bench_routes(c: &mut Criterion) {
    let mut g = c.benchmark_group("routes");

    // public_paths: the default, and a longer realistic list.
    let default_public = vec!["/favicon.ico".to_string()];
    let many_public: Vec<String> = ["/favicon.ico", "/robots.txt", "/assets/*", "/static/*", "/health", "/.well-known/*"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    g.bench_function("is_public/default_miss", |b| {
        b.iter(|| is_public(black_box(&default_public), black_box("/portal/dashboard/overview")))
    });
    g.bench_function("is_public/6paths_miss", |b| {
        b.iter(|| is_public(black_box(&many_public), black_box("/portal/dashboard/overview")))
    });
    g.bench_function("is_public/6paths_prefix_hit", |b| {
        b.iter(|| is_public(black_box(&many_public), black_box("/static/js/app.3f2a.js")))
    });

    g.bench_function("safe_redirect/plain", |b| {
        b.iter(|| safe_redirect(black_box("/portal/objekte?id=4711&tab=dokumente")))
    });
    g.bench_function("safe_redirect/encoded", |b| {
        b.iter(|| safe_redirect(black_box("/portal/suche?q=Wohnung%20Wien%201010&sort=preis%3Aasc")))
    });
    g.bench_function("safe_redirect/hostile", |b| b.iter(|| safe_redirect(black_box("/%2F%2Fevil.example/%2e%2e"))));

    let session_value = SessionCodec::new(&[key(1)]).encode(&claims());
    let heads = ShortHeadBench::new(["Remote-User", "Remote-Email", "Remote-Name"], ["riegel_session", "riegel_csrf"]);
    // A typical browser request: 12 headers, Connection: keep-alive.
    let browser = format!(
        "GET /portal/dashboard/overview?tab=2 HTTP/1.1\r\nHost: portal.example.at\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\nAccept: text/html,application/xhtml+xml\r\nAccept-Language: de-AT,de;q=0.8\r\nAccept-Encoding: gzip, deflate, br\r\nReferer: https://portal.example.at/portal\r\nCookie: portal_lang=de; riegel_session={session_value}\r\nConnection: keep-alive\r\nUpgrade-Insecure-Requests: 1\r\nSec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Site: same-origin\r\n\r\n"
    );
    assert!(heads.short_head(browser.as_bytes()) > 0);
    g.bench_function("short_head/browser", |b| b.iter(|| heads.short_head(black_box(browser.as_bytes()))));
    // A hostile request: spoofed identity headers in odd spellings and
    // names listed in Connection.
    let hostile = "GET /portal HTTP/1.1\r\nHost: portal.example.at\r\nUser-Agent: x\r\nAccept: */*\r\nCookie: a=1\r\nConnection: keep-alive, x-custom, remote_user\r\nremote-user: admin\r\nREMOTE_EMAIL: a@b\r\nRemote_Name: x\r\nx-forwarded-for: 1.2.3.4\r\nx-custom: 1\r\n\r\n";
    assert!(heads.short_head(hostile.as_bytes()) > 0);
    g.bench_function("short_head/hostile", |b| b.iter(|| heads.short_head(black_box(hostile.as_bytes()))));

    let cookie_header = format!(
        "_ga=GA1.2.1234567890.1700000000; portal_lang=de; riegel_csrf=Zm9vYmFyYmF6cXV4; riegel_session={session_value}; PHPSESSID=abcdef0123456789abcdef0123"
    );
    g.bench_function("find_cookie/5cookies", |b| {
        b.iter(|| find_cookie(black_box(cookie_header.as_bytes()), black_box("riegel_session")))
    });
    let mut out = Vec::with_capacity(512);
    g.bench_function("strip_cookie/5cookies", |b| {
        b.iter(|| {
            out.clear();
            strip_cookie(black_box(cookie_header.as_bytes()), black_box(&["riegel_session", "riegel_csrf"]), &mut out)
        })
    });
    let only_ours = format!("riegel_session={session_value}");
    g.bench_function("strip_cookie/only_ours", |b| {
        b.iter(|| {
            out.clear();
            strip_cookie(black_box(only_ours.as_bytes()), black_box(&["riegel_session", "riegel_csrf"]), &mut out)
        })
    });
    g.finish();
}

fn branding() -> BrandingConfig {
    BrandingConfig {
        company: "IMMO PRO Immobilien GmbH".to_string(),
        portal_name: "Portal".to_string(),
        language: Language::De,
        languages: vec![Language::De],
        timezone: "Europe/Vienna".to_string(),
        contact: Default::default(),
        logo_file: None,
        primary_color: "#3d7d16".to_string(),
        imprint_url: Some("https://www.example.at/impressum".to_string()),
        privacy_url: Some("https://www.example.at/datenschutz".to_string()),
        pages_dir: None,
        texts: BTreeMap::new(),
    }
}

/// The context `web::login::render_login` builds for `GET /_riegel/login?rd=...`.
fn login_context(error: Option<&str>) -> minijinja::Value {
    minijinja::context! {
        action => "/_riegel/login?rd=%2Fportal%2Fobjekte%3Fid%3D4711",
        forgot_url => "/_riegel/forgot",
        username => "",
        error => error,
        notice => None::<&str>,
        minutes => 0i64,
        csrf => "q1W2e3R4t5Y6u7I8o9P0a1S2d3F4g5H6j7K8l9Z0x1C",
    }
}

fn bench_pages(c: &mut Criterion) {
    let mut g = c.benchmark_group("pages");
    let b_cfg = branding();
    let pages = match riegel::assets::load_pages(&b_cfg, "/_riegel") {
        Ok(p) => p,
        Err(errs) => panic!("load_pages failed: {errs:?}"),
    };
    let html = pages.render("login", login_context(None)).expect("login renders");
    eprintln!("pages: rendered login page is {} bytes", html.len());
    g.bench_function("load", |b| b.iter(|| riegel::assets::load_pages(black_box(&b_cfg), black_box("/_riegel")).is_ok()));
    g.bench_function("render/login", |b| {
        b.iter_batched(|| login_context(None), |ctx| pages.render("login", ctx), BatchSize::SmallInput)
    });
    g.bench_function("render/login_error", |b| {
        b.iter_batched(
            || login_context(Some("err_login_failed")),
            |ctx| pages.render("login", ctx),
            BatchSize::SmallInput,
        )
    });
    // Context construction included, as in the request path.
    g.bench_function("render/login_with_ctx", |b| b.iter(|| pages.render("login", login_context(None))));
    g.finish();
}

fn bench_argon2(c: &mut Criterion) {
    let mut g = c.benchmark_group("argon2");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_millis(500));
    // The defaults of config::Config (password.argon2).
    let params = Argon2Params { memory_kib: 19456, iterations: 2, parallelism: 1 };
    let hasher = Hasher::new(&params).expect("default argon2 params are valid");
    let stored = hasher.hash("correct horse battery staple", &OsRandom).expect("hash");
    assert!(matches!(hasher.verify(&stored, "correct horse battery staple"), Ok(Verified::Right { upgrade: false })));
    g.bench_function("verify/default_right", |b| {
        b.iter(|| hasher.verify(black_box(&stored), black_box("correct horse battery staple")))
    });
    g.bench_function("verify/default_wrong", |b| b.iter(|| hasher.verify(black_box(&stored), black_box("wrong password!"))));
    g.finish();
}

fn bench_metrics(c: &mut Criterion) {
    use riegel::metrics::{self, RequestOutcome};
    metrics::init();
    let mut g = c.benchmark_group("metrics");
    g.bench_function("request_counter", |b| b.iter(|| metrics::request(black_box(RequestOutcome::Forwarded))));
    g.bench_function("forwarded_request", |b| {
        b.iter(|| {
            let start = std::time::Instant::now();
            metrics::request(black_box(RequestOutcome::Forwarded));
            metrics::upstream_duration(black_box(start).elapsed());
        })
    });
    // A second thread counting all the time: the same cache lines from
    // two cores, as with two busy shards.
    g.bench_function("forwarded_request_contended", |b| {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let other = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let start = std::time::Instant::now();
                    metrics::request(RequestOutcome::Forwarded);
                    metrics::upstream_duration(start.elapsed());
                }
            })
        };
        b.iter(|| {
            let start = std::time::Instant::now();
            metrics::request(black_box(RequestOutcome::Forwarded));
            metrics::upstream_duration(black_box(start).elapsed());
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = other.join();
    });
    g.finish();
}

criterion_group!(benches, bench_session, bench_totp, bench_routes, bench_pages, bench_argon2, bench_metrics);
criterion_main!(benches);
