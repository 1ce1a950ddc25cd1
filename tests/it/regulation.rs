//! The regulation under attack: guesses sent all at once are reserved
//! before they are checked (password, TOTP code, recovery code), and
//! clearing one account's counters never clears another's.

use std::sync::{Arc, Barrier};

use riegel::admin::AdminRequest;
use riegel::store::CounterKey;

use crate::harness::*;

const REGULATION: &str = "regulation: { max_failures: 3, find_time: 10m, ban_time: 15m, delay_after: 50 }\n";

/// What became of one request of a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// The guess was checked and found wrong.
    Evaluated,
    /// Refused by the regulation before any check.
    Refused,
    /// The guess was right.
    Accepted,
}

/// One form post of a burst: the client (with its cookies), the path and the fields.
type Post = (Client, String, Vec<(String, String)>);

/// Sends all `posts` at the same moment (one thread each) and sorts the
/// answers. `wrong` is the page text of a checked, wrong guess.
fn burst(posts: Vec<Post>, wrong: &str) -> Vec<Fate> {
    let barrier = Arc::new(Barrier::new(posts.len()));
    let wrong = wrong.to_string();
    let threads: Vec<_> = posts
        .into_iter()
        .map(|(mut c, path, fields)| {
            let (barrier, wrong) = (barrier.clone(), wrong.clone());
            std::thread::spawn(move || {
                let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                barrier.wait();
                let r = c.post(&path, &fields);
                match r.status {
                    429 => Fate::Refused,
                    303 => Fate::Accepted,
                    200 if r.body.contains(&wrong) => Fate::Evaluated,
                    other => panic!("unexpected answer {other}: {}", r.body),
                }
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().expect("thread")).collect()
}

fn count(fates: &[Fate], f: Fate) -> usize {
    fates.iter().filter(|x| **x == f).count()
}

fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A client holding a login page's CSRF cookie, and that page's token.
fn with_token(r: &Riegel, page: &str) -> (Client, String) {
    let mut c = r.client();
    let p = c.get(page);
    let csrf = p.input("csrf").unwrap_or_else(|| panic!("no csrf on {page}: {}", p.body));
    (c, csrf)
}

#[test]
fn fifty_parallel_wrong_passwords_are_at_most_three_checks_and_then_a_ban() {
    let r = Riegel::start_with(Options { extra_yaml: REGULATION.into(), ..Options::default() });
    r.add_user("anna", None, Some("Richtig-2024"));
    let (c, csrf) = with_token(&r, "/_riegel/login");
    let posts = (0..50)
        .map(|i| (c.clone(), "/_riegel/login".to_string(), fields(&[("username", "anna"), ("password", &format!("falsch-{i:04}")), ("csrf", &csrf)])))
        .collect();
    let fates = burst(posts, "nicht korrekt");
    assert!(count(&fates, Fate::Evaluated) <= 3, "{} wrong passwords were checked: {fates:?}", count(&fates, Fate::Evaluated));
    assert_eq!(count(&fates, Fate::Accepted), 0);
    // During the ban the right password is refused too.
    let mut c = r.client();
    let banned = c.login("anna", "Richtig-2024");
    assert_eq!(banned.status, 429, "{}", banned.body);
    assert!(c.session_cookie().is_none());
}

#[test]
fn a_right_password_inside_a_burst_is_checked_only_within_the_allowance() {
    let r = Riegel::start_with(Options { extra_yaml: REGULATION.into(), ..Options::default() });
    r.add_user("bernd", None, Some("Richtig-2024"));
    let (c, csrf) = with_token(&r, "/_riegel/login");
    let mut posts: Vec<_> = (0..30)
        .map(|i| (c.clone(), "/_riegel/login".to_string(), fields(&[("username", "bernd"), ("password", &format!("falsch-{i:04}")), ("csrf", &csrf)])))
        .collect();
    posts.insert(15, (c.clone(), "/_riegel/login".to_string(), fields(&[("username", "bernd"), ("password", "Richtig-2024"), ("csrf", &csrf)])));
    let fates = burst(posts, "nicht korrekt");
    let accepted = count(&fates, Fate::Accepted);
    assert!(accepted <= 1);
    // Guesses checked after a success count from zero again; before it at
    // most three could be in progress: never more than 3 + 3.
    let evaluated = count(&fates, Fate::Evaluated);
    assert!(evaluated <= if accepted == 1 { 6 } else { 3 }, "{evaluated} wrong passwords checked: {fates:?}");
}

/// Logs `user` in with the password: a client at the second factor.
fn at_second_factor(r: &Riegel, user: &str, password: &str) -> Client {
    let mut c = r.client();
    let resp = c.login(user, password);
    assert_eq!(resp.status, 303, "{}", resp.body);
    assert_eq!(resp.location(), "/_riegel/verify");
    c
}

#[test]
fn fifty_parallel_wrong_codes_and_recovery_codes_are_at_most_three_checks() {
    let r = Riegel::start_with(Options { extra_yaml: REGULATION.into(), ..Options::default() });
    r.add_user("clara", None, Some("Richtig-2024"));
    let mut c = r.client();
    let enrolled = login_and_enrol(&r, &mut c, "clara", "Richtig-2024");

    // TOTP codes: one password-stage session, fifty wrong codes at once.
    r.clock.advance(30);
    let c = at_second_factor(&r, "clara", "Richtig-2024");
    let (mut c2, csrf) = (c.clone(), String::new());
    let csrf = c2.get("/_riegel/verify").input("csrf").unwrap_or(csrf);
    let right = totp_code(&enrolled.secret, r.now());
    let posts = (0..50)
        .map(|i| {
            let mut code = format!("{:06}", (i * 7919 + 1) % 1_000_000);
            if code == right {
                code = format!("{:06}", (i * 7919 + 2) % 1_000_000);
            }
            (c2.clone(), "/_riegel/verify".to_string(), fields(&[("code", &code), ("csrf", &csrf)]))
        })
        .collect();
    let fates = burst(posts, "Der Code ist nicht korrekt");
    assert!(count(&fates, Fate::Evaluated) <= 3, "{} wrong codes were checked: {fates:?}", count(&fates, Fate::Evaluated));
    // The right code is refused during the ban.
    let banned = c2.post("/_riegel/verify", &[("code", &right), ("csrf", &csrf)]);
    assert_eq!(banned.status, 429, "{}", banned.body);

    // Recovery codes, after the ban: the same.
    r.clock.advance(16 * 60);
    let c = at_second_factor(&r, "clara", "Richtig-2024");
    let mut c3 = c.clone();
    let csrf = c3.get("/_riegel/recovery").input("csrf").expect("csrf");
    let posts = (0..50)
        .map(|i| (c3.clone(), "/_riegel/recovery".to_string(), fields(&[("code", &format!("abcde-{:05}", i)), ("csrf", &csrf)])))
        .collect();
    let fates = burst(posts, "ungültig oder wurde bereits verwendet");
    assert!(count(&fates, Fate::Evaluated) <= 3, "{} wrong recovery codes were checked: {fates:?}", count(&fates, Fate::Evaluated));
    let banned = c3.post("/_riegel/recovery", &[("code", &enrolled.recovery_codes[0]), ("csrf", &csrf)]);
    assert_eq!(banned.status, 429, "{}", banned.body);
}

/// A client that comes from its own address (through the trusted proxy
/// on loopback), so that only account counters decide.
fn client_from(r: &Riegel, i: usize) -> Client {
    let mut c = r.client();
    c.extra.push(("X-Forwarded-For".into(), format!("198.51.100.{}", i + 1)));
    c
}

fn ban(r: &Riegel, login: &str, i: usize) {
    let mut c = client_from(r, i);
    for _ in 0..3 {
        c.login(login, "falsch-falsch");
    }
    assert_eq!(c.login(login, "falsch-falsch").status, 429, "{login} not banned");
}

fn banned(r: &Riegel, login: &str, i: usize) -> bool {
    client_from(r, i).login(login, "falsch-falsch").status == 429
}

#[test]
fn clearing_one_accounts_counters_never_clears_another_s() {
    let r = Riegel::start_with(Options {
        extra_yaml: REGULATION.into(),
        server_yaml: "  trusted_proxies: [\"127.0.0.1\"]\n".into(),
        ..Options::default()
    });
    // anna gets the lowest id; then enough users for ids 10 to 19.
    r.add_user("anna", Some("anna@example.at"), Some("Richtig-2024"));
    let others: Vec<String> = (0..20).map(|i| format!("nutzer{i:02}")).collect();
    for o in &others {
        r.add_user(o, None, Some("Richtig-2024"));
    }
    let anna_id = r.user("anna").expect("anna").id;
    let ids: Vec<u64> = others.iter().map(|o| r.user(o).expect("user").id).collect();
    assert!(ids.iter().any(|id| id.to_string().starts_with(&anna_id.to_string()) && *id != anna_id), "no id shares anna's digits: {anna_id} {ids:?}");
    let reban = |r: &Riegel| {
        ban(r, "anna", 0);
        for (i, o) in others.iter().enumerate() {
            ban(r, o, i + 1);
        }
        // An unknown name that starts with anna's.
        ban(r, "annalena", 30);
    };
    let all_others_still_banned = |r: &Riegel, how: &str| {
        for (i, o) in others.iter().enumerate() {
            assert!(banned(r, o, i + 1), "{how} of anna lifted the ban of {o} (id {})", ids[i]);
        }
        assert!(banned(r, "annalena", 30), "{how} of anna lifted the ban of the unknown login annalena");
    };

    reban(&r);
    assert!(r.admin(AdminRequest::Unban { user: "anna".into() }).ok);
    assert!(!banned(&r, "anna", 0));
    all_others_still_banned(&r, "unban");

    reban(&r);
    let hash = r.services.hasher.hash("Neues-Passwort-1", &riegel::auth::OsRandom).expect("hash");
    assert!(r.admin(AdminRequest::SetPassword { user: "anna".into(), password_hash: hash }).ok);
    assert_eq!(r.counter(&CounterKey::Account(anna_id)), riegel::store::Counter::default());
    all_others_still_banned(&r, "set-password");

    // anna's own reset link.
    reban(&r);
    let mut c = client_from(&r, 40);
    let sent = c.submit("/_riegel/forgot", "/_riegel/forgot", &[("username", "anna")]);
    assert_eq!(sent.status, 200);
    let mail = r.smtp.wait_for(1, std::time::Duration::from_secs(10)).pop().expect("reset mail");
    let text = mail.plain();
    let link = text.split_whitespace().find(|w| w.contains("/_riegel/reset/")).expect("link");
    let path = &link[link.find("/_riegel/").expect("path")..];
    let done = c.submit(path, path, &[("password", "Ganz-Neu-2024!"), ("password2", "Ganz-Neu-2024!")]);
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(r.counter(&CounterKey::Account(anna_id)), riegel::store::Counter::default());
    all_others_still_banned(&r, "the reset link");
}
