//! Logins while every hashing thread is taken: a bounded wait for a free
//! one (`password.hash_queue_timeout`), then the "please try again" page.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{Options, Riegel};

#[test]
fn a_login_that_finds_no_free_hashing_thread_is_asked_to_try_again() {
    let r = Riegel::start_with(Options { password_yaml: "  hash_queue_timeout: 300ms\n".into(), ..Options::default() });
    r.add_user("greta", Some("greta@example.at"), Some("Winter-2024!"));

    // Take all four hashing threads (TEST_ARGON) with jobs that last until released.
    let started = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(AtomicBool::new(false));
    let blockers = {
        let (s, started, release) = (r.services.clone(), started.clone(), release.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_time().build().expect("runtime");
            rt.block_on(async move {
                let jobs: Vec<_> = (0..4)
                    .map(|_| {
                        let (s, started, release) = (s.clone(), started.clone(), release.clone());
                        tokio::spawn(async move {
                            s.blocking_hash(move |_| {
                                started.fetch_add(1, Ordering::SeqCst);
                                let t = Instant::now();
                                while !release.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(30) {
                                    std::thread::sleep(Duration::from_millis(5));
                                }
                            })
                            .await
                        })
                    })
                    .collect();
                for j in jobs {
                    j.await.expect("task").expect("blocking job");
                }
            });
        })
    };
    let t = Instant::now();
    while started.load(Ordering::SeqCst) < 4 {
        assert!(t.elapsed() < Duration::from_secs(10), "the blocking jobs did not start");
        std::thread::sleep(Duration::from_millis(5));
    }

    let mut c = r.client();
    let busy = c.login("greta", "Winter-2024!");
    assert_eq!(busy.status, 503, "{}", busy.body);
    assert!(!busy.body.contains("Fehler 503"), "no status code as a heading: {}", busy.body);
    assert!(busy.body.contains("Bitte versuchen Sie es gleich noch einmal."), "{}", busy.body);
    assert!(busy.body.contains("href=\"/_riegel/login\""), "a way back to the login: {}", busy.body);
    assert!(!busy.session_cookie_set());
    assert_eq!(r.services.hash_queue_depth(), 0);

    // Once the threads are free the same login goes through: being turned
    // away counted as no failure.
    release.store(true, Ordering::SeqCst);
    blockers.join().expect("blockers");
    let ok = c.login("greta", "Winter-2024!");
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert_eq!(ok.location(), "/_riegel/setup");
}
