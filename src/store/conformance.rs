//! Behaviour every backend must have, as one test suite that each
//! backend's tests run against a fresh, empty store.

use std::sync::Arc;

use super::*;

fn new(name: &str, email: Option<&str>) -> NewUser {
    NewUser { username: name.into(), email: email.map(Into::into), display_name: name.into(), password_hash: None }
}

fn rec(uid: u64, sid: u8, stamp: u64) -> SessionRecord {
    SessionRecord {
        uid,
        sid: vec![sid; 16],
        stage: Stage::Full,
        created_at: 1,
        last_seen: 1,
        expires_at: 100,
        username: "u".into(),
        email: None,
        display_name: "U".into(),
        rd: None,
        stamp,
        user_agent: Some("UA".into()),
        ip: Some("203.0.113.9".into()),
        device_proof: false,
        portal_jar: None,
    }
}

pub(crate) async fn run_all(s: Arc<dyn Store>) {
    users_by_name_and_email_case_insensitive(&*s).await;
    batch_insert_is_all_or_nothing(&*s).await;
    email_change_moves_the_index(&*s).await;
    sessions_end_per_user(&*s).await;
    counters_are_exact_and_reservations_atomic(s.clone()).await;
    user_updates_are_compare_and_set(s.clone()).await;
    tokens_are_typed(&*s).await;
    mail_is_claimed_once(s.clone()).await;
    deleting_a_user_removes_its_sessions_and_tokens(&*s).await;
}

async fn users_by_name_and_email_case_insensitive(s: &dyn Store) {
    let u = s.insert_user(new("Anna", Some("Anna@Example.at")), 1).await.expect("insert");
    assert_eq!(s.find_user("anna").await.expect("find").map(|x| x.id), Some(u.id));
    assert_eq!(s.find_user(" ANNA@example.AT ").await.expect("find").map(|x| x.id), Some(u.id));
    assert!(s.find_user("bob").await.expect("find").is_none());
    assert!(matches!(s.insert_user(new("anna", None), 1).await, Err(StoreError::Conflict { field: "username", .. })));
    assert!(matches!(s.insert_user(new("bob", Some("anna@example.at")), 1).await, Err(StoreError::Conflict { field: "e-mail", .. })));
    assert!(matches!(s.insert_user(new("a@b", None), 1).await, Err(StoreError::Conflict { .. })));
    assert!(matches!(s.insert_user(new("a b", None), 1).await, Err(StoreError::Conflict { .. })));
    assert_eq!(u.stamp, 0);
    assert_eq!(u.next_authenticator_id, 1);
}

async fn batch_insert_is_all_or_nothing(s: &dyn Store) {
    s.insert_user(new("taken", None), 1).await.expect("insert");
    assert!(s.insert_users(vec![new("fresh", None), new("taken", None)], 1).await.is_err());
    assert!(s.find_user("fresh").await.expect("find").is_none());
    let two = s.insert_users(vec![new("one", None), new("two", Some("two@x.at"))], 1).await.expect("insert");
    assert_eq!(two.len(), 2);
    assert_ne!(two[0].id, two[1].id);
}

async fn email_change_moves_the_index(s: &dyn Store) {
    let u = s.insert_user(new("carla", Some("a@x.at")), 1).await.expect("insert");
    s.insert_user(new("dora", Some("b@x.at")), 1).await.expect("insert");
    let r = s
        .update_user(u.id, &mut |u| {
            u.email = Some("b@x.at".into());
            Update::Commit
        })
        .await;
    assert!(matches!(r, Err(StoreError::Conflict { .. })));
    // The failed change left everything as it was.
    assert_eq!(s.find_user("a@x.at").await.expect("find").map(|x| x.id), Some(u.id));
    s.update_user(u.id, &mut |u| {
        u.email = Some("new@x.at".into());
        u.username = "renamed".into();
        Update::Commit
    })
    .await
    .expect("update");
    assert!(s.find_user("a@x.at").await.expect("find").is_none());
    // The username never changes through an update.
    assert_eq!(s.find_user("carla").await.expect("find").map(|x| x.username), Some("carla".to_string()));
    s.update_user(u.id, &mut |u| {
        u.email = Some("New@X.at".into());
        Update::Commit
    })
    .await
    .expect("update");
    assert_eq!(s.find_user("new@x.at").await.expect("find").map(|x| x.id), Some(u.id));
    let aborted = s
        .update_user(u.id, &mut |u| {
            u.display_name = "never".into();
            Update::Abort
        })
        .await
        .expect("update");
    assert!(aborted.is_none());
    assert_ne!(s.user(u.id).await.expect("user").map(|u| u.display_name), Some("never".to_string()));
    assert!(matches!(s.update_user(u64::MAX - 1, &mut |_| Update::Commit).await, Err(StoreError::NoSuchUser)));
}

async fn sessions_end_per_user(s: &dyn Store) {
    for (uid, sid) in [(1, 1), (1, 2), (1, 3), (2, 4), (256, 5)] {
        s.put_session(&rec(uid, sid, 3)).await.expect("put");
    }
    assert_eq!(s.session(1, &[1; 16]).await.expect("get"), Some(rec(1, 1, 3)));
    assert_eq!(s.sessions_of(1).await.expect("of").len(), 3);
    // uid 1's sessions are not uid 256's (whose key starts with other bytes).
    assert_eq!(s.sessions_of(256).await.expect("of").len(), 1);
    assert_eq!(s.delete_sessions_of(1, Some(&[2; 16])).await.expect("del").len(), 2);
    assert!(s.session(1, &[2; 16]).await.expect("get").is_some());
    assert!(s.session(1, &[1; 16]).await.expect("get").is_none());
    assert!(s.session(2, &[4; 16]).await.expect("get").is_some());
    // Touching or filling the jar of a deleted session does not bring it back.
    s.touch_session(1, &[1; 16], 50).await.expect("touch");
    assert!(s.session(1, &[1; 16]).await.expect("get").is_none());
    assert!(!s.set_portal_jar(1, &[1; 16], Some(vec![1])).await.expect("jar"));
    assert!(s.session(1, &[1; 16]).await.expect("get").is_none());
    s.touch_session(1, &[2; 16], 50).await.expect("touch");
    assert!(s.set_portal_jar(1, &[2; 16], Some(vec![7, 8])).await.expect("jar"));
    let r = s.session(1, &[2; 16]).await.expect("get").expect("there");
    assert_eq!((r.last_seen, r.portal_jar), (50, Some(vec![7, 8])));
    // Never backwards.
    s.touch_session(1, &[2; 16], 40).await.expect("touch");
    assert_eq!(s.session(1, &[2; 16]).await.expect("get").map(|r| r.last_seen), Some(50));
    assert_eq!(s.delete_session(2, &[4; 16]).await.expect("del").map(|r| r.uid), Some(2));
    assert_eq!(s.delete_session(2, &[4; 16]).await.expect("del"), None);
    // Purge: expires_at 100, idle 10.
    assert_eq!(s.purge_sessions(55, 10).await.expect("purge").len(), 1); // uid 256, last seen 1
    assert_eq!(s.purge_sessions(100, 1000).await.expect("purge").len(), 1); // uid 1 sid 2, expired
    assert_eq!(s.count_sessions().await.expect("count"), 0);
}

async fn counters_are_exact_and_reservations_atomic(s: Arc<dyn Store>) {
    let bump = |n: u32| {
        move |c: &mut [Counter]| {
            for x in c.iter_mut() {
                x.consecutive += n;
            }
            Update::Commit
        }
    };
    let keys = [CounterKey::Account(1), CounterKey::Account(10), CounterKey::Account(19), CounterKey::login("anna"), CounterKey::login("annalena")];
    s.update_counters(&keys, &mut bump(1)).await.expect("update");
    assert!(s.delete_counter(&CounterKey::Account(1)).await.expect("delete"));
    assert!(!s.delete_counter(&CounterKey::Account(1)).await.expect("delete"));
    assert!(s.delete_counter(&CounterKey::login("anna")).await.expect("delete"));
    assert_eq!(s.counter(&CounterKey::Account(1)).await.expect("get"), Counter::default());
    for k in [CounterKey::Account(10), CounterKey::Account(19), CounterKey::login("annalena")] {
        assert_eq!(s.counter(&k).await.expect("get").consecutive, 1, "{k} was cleared with another key");
    }
    // A counter back at zero is removed, an abort changes nothing.
    let zero = s
        .update_counters(&[CounterKey::Account(10)], &mut |c| {
            c[0] = Counter::default();
            Update::Commit
        })
        .await
        .expect("update");
    assert_eq!(zero, Some(vec![Counter::default()]));
    assert!(!s.delete_counter(&CounterKey::Account(10)).await.expect("delete"));
    assert_eq!(s.update_counters(&[CounterKey::Account(19)], &mut |_| Update::Abort).await.expect("update"), None);
    // 50 concurrent reservations of at most 3 over two keys: exactly 3 commit,
    // and both keys saw exactly the same 3.
    let two = [CounterKey::Account(77), CounterKey::address("2001:db8::7".parse().expect("ip"))];
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let s = s.clone();
        let two = two.clone();
        tasks.push(tokio::spawn(async move {
            s.update_counters(&two, &mut |c| {
                if c[0].failures >= 3 {
                    return Update::Abort;
                }
                for x in c.iter_mut() {
                    x.failures += 1;
                }
                Update::Commit
            })
            .await
            .expect("reserve")
            .is_some()
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.expect("task"));
    }
    assert_eq!(admitted, 3);
    assert_eq!(s.counter(&two[0]).await.expect("get").failures, 3);
    assert_eq!(s.counter(&two[1]).await.expect("get").failures, 3);
    s.update_counters(&[CounterKey::Account(5)], &mut |c| {
        c[0].banned_until = 1_000;
        Update::Commit
    })
    .await
    .expect("ban");
    assert_eq!(s.count_bans(999).await.expect("bans"), 1);
    assert_eq!(s.count_bans(1_000).await.expect("bans"), 0);
}

async fn user_updates_are_compare_and_set(s: Arc<dyn Store>) {
    let u = s.insert_user(new("erich", None), 1).await.expect("insert");
    // 50 concurrent submissions of the same TOTP step: exactly one records it.
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.update_user(u.id, &mut |u| {
                if u.recovery_codes.iter().any(|c| c == "step-9") {
                    return Update::Abort;
                }
                u.recovery_codes.push("step-9".into());
                Update::Commit
            })
            .await
            .expect("update")
            .is_some()
        }));
    }
    let mut committed = 0;
    for t in tasks {
        committed += usize::from(t.await.expect("task"));
    }
    assert_eq!(committed, 1);
    assert_eq!(s.user(u.id).await.expect("user").map(|u| u.recovery_codes.len()), Some(1));
}

async fn tokens_are_typed(s: &dyn Store) {
    s.put_token("aa11", TokenKind::Reset, 5).await.expect("put");
    assert_eq!(s.token("aa11", TokenKind::Reset).await.expect("get"), Some(5));
    assert_eq!(s.token("aa11", TokenKind::NewDevice).await.expect("get"), None);
    assert_eq!(s.token("aa1", TokenKind::Reset).await.expect("get"), None);
    s.delete_token("aa11").await.expect("delete");
    assert_eq!(s.token("aa11", TokenKind::Reset).await.expect("get"), None);
}

async fn mail_is_claimed_once(s: Arc<dyn Store>) {
    let a = s.enqueue_mail(b"first".to_vec(), "example.at", 100).await.expect("enqueue");
    let b = s.enqueue_mail(b"second".to_vec(), "example.at", 100).await.expect("enqueue");
    assert_eq!(s.mail_queue_depth().await.expect("depth"), 2);
    // Not due yet.
    assert!(s.claim_mails(99, 200, 10).await.expect("claim").is_empty());
    // Two claimers at once: each mail goes to exactly one.
    let (x, y) = tokio::join!(s.claim_mails(100, 200, 10), s.claim_mails(100, 200, 10));
    let mut got: Vec<u64> = x.expect("claim").into_iter().chain(y.expect("claim")).map(|m| m.id).collect();
    got.sort();
    assert_eq!(got, vec![a, b]);
    // Leased until 200.
    assert!(s.claim_mails(150, 300, 10).await.expect("claim").is_empty());
    s.retry_mail(a, 1, 160).await.expect("retry");
    let again = s.claim_mails(160, 400, 10).await.expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempts, again[0].sealed.as_slice()), (a, 1, &b"first"[..]));
    s.finish_mail(a).await.expect("finish");
    // The lease of b ended at 200.
    let late = s.claim_mails(200, 500, 10).await.expect("claim");
    assert_eq!(late.iter().map(|m| m.id).collect::<Vec<_>>(), vec![b]);
    s.finish_mail(b).await.expect("finish");
    assert_eq!(s.mail_queue_depth().await.expect("depth"), 0);
}

async fn deleting_a_user_removes_its_sessions_and_tokens(s: &dyn Store) {
    let u = s.insert_user(new("franz", Some("franz@x.at")), 1).await.expect("insert");
    s.update_user(u.id, &mut |u| {
        u.reset = Some(OneTimeToken { token_hash: "bb22".into(), expires_at: 10, sid: None });
        Update::Commit
    })
    .await
    .expect("update");
    s.put_token("bb22", TokenKind::Reset, u.id).await.expect("token");
    s.put_session(&rec(u.id, 9, 0)).await.expect("session");
    assert!(s.delete_user(u.id).await.expect("delete"));
    assert!(!s.delete_user(u.id).await.expect("delete"));
    assert!(s.find_user("franz").await.expect("find").is_none());
    assert!(s.find_user("franz@x.at").await.expect("find").is_none());
    assert!(s.sessions_of(u.id).await.expect("of").is_empty());
    assert_eq!(s.token("bb22", TokenKind::Reset).await.expect("token"), None);
    // The name is free again.
    s.insert_user(new("franz", Some("franz@x.at")), 1).await.expect("insert again");
    s.healthy().await.expect("healthy");
    s.flush().await.expect("flush");
}
