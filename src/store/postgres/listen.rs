//! The `LISTEN riegel` connection: other processes' changes, passed to the
//! cache in front of the backend. It runs on the store runtime. While it is
//! down the cache is not trusted (every check reads the database); it
//! reconnects with backoff and trusts the cache again (emptied) only once
//! LISTEN is established.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use tokio_postgres::{AsyncMessage, NoTls};

use super::{Health, CHANNEL};
use crate::store::{Invalidate, SessionId};

/// How often the listener asks the server whether it is still there: a
/// connection that died without a word (a cable, a firewall) is noticed
/// within this time plus the call timeout.
const PROBE_EVERY: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Applies one notification's payload (see the module doc of `postgres`).
pub(super) fn apply(payload: &str, t: &dyn Invalidate) {
    let mut parts = payload.split(':');
    let kind = parts.next();
    let uid = parts.next().and_then(|u| u.parse::<u64>().ok());
    let sid = parts.next().map(|h| data_encoding::HEXLOWER_PERMISSIVE.decode(h.as_bytes()).ok().and_then(|v| SessionId::try_from(v).ok()));
    match (kind, uid, sid, parts.next()) {
        (Some("user"), Some(uid), None, None) => t.forget_user(uid),
        (Some("session"), Some(uid), Some(Some(sid)), None) => t.forget_session(uid, &sid),
        (_, Some(uid), _, _) => {
            tracing::warn!(payload, "unknown change notification; forgetting the user's sessions");
            t.forget_user(uid);
        }
        _ => {
            tracing::warn!(payload, "unknown change notification; emptying the session cache");
            // Trusted stays trusted (the listener is up), the cache is emptied.
            t.set_trusted(true);
        }
    }
}

fn untrust(target: &Weak<dyn Invalidate>, health: &Health) {
    health.listening.store(false, Ordering::Release);
    if let Some(t) = target.upgrade() {
        t.set_trusted(false);
    }
}

/// Runs until the cache it serves is gone (or the store runtime stops).
/// `first` hears once when the first LISTEN is established.
pub(super) async fn run(
    pg: tokio_postgres::Config,
    target: Weak<dyn Invalidate>,
    health: Arc<Health>,
    timeout: Duration,
    first: std::sync::mpsc::Sender<()>,
) {
    let mut first = Some(first);
    let mut backoff = BACKOFF_MIN;
    while target.strong_count() > 0 {
        match pg.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let t = target.clone();
                let h = health.clone();
                // Drives the connection and hands each notification over
                // at once; a broken connection makes the cache untrusted
                // right there, before anything else runs.
                let mut driver = tokio::spawn(std::future::poll_fn(move |cx| loop {
                    match connection.poll_message(cx) {
                        Poll::Ready(Some(Ok(AsyncMessage::Notification(n)))) => {
                            if n.channel() == CHANNEL {
                                if let Some(t) = t.upgrade() {
                                    apply(n.payload(), &*t);
                                }
                            }
                        }
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(e))) => {
                            tracing::warn!(error = %e, "the database's change notifications stopped; checking every session in the database");
                            untrust(&t, &h);
                            return Poll::Ready(());
                        }
                        Poll::Ready(None) => {
                            tracing::warn!("the database's change notifications stopped; checking every session in the database");
                            untrust(&t, &h);
                            return Poll::Ready(());
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }));
                let listened = tokio::time::timeout(timeout, client.batch_execute(&format!("LISTEN {CHANNEL}"))).await;
                if matches!(listened, Ok(Ok(()))) && !driver.is_finished() {
                    if let Ok(Ok(row)) = tokio::time::timeout(timeout, client.query_one("SELECT pg_backend_pid()", &[])).await {
                        health.listener_pid.store(row.try_get(0).unwrap_or(0), Ordering::Release);
                    }
                    health.listening.store(true, Ordering::Release);
                    // The database answers again.
                    health.down.store(false, Ordering::Release);
                    if let Some(t) = target.upgrade() {
                        // Empties the cache: what changed while nobody
                        // listened is read from the database again.
                        t.set_trusted(true);
                    }
                    if let Some(f) = first.take() {
                        let _ = f.send(());
                    }
                    tracing::info!("listening for changes made by other riegel instances");
                    backoff = BACKOFF_MIN;
                    loop {
                        tokio::select! {
                            _ = &mut driver => break,
                            () = tokio::time::sleep(PROBE_EVERY) => {
                                if target.strong_count() == 0 {
                                    break;
                                }
                                let probe = tokio::time::timeout(timeout, client.simple_query("SELECT 1")).await;
                                if !matches!(probe, Ok(Ok(_))) {
                                    tracing::warn!("the database's change notifications do not answer; checking every session in the database");
                                    break;
                                }
                            }
                        }
                    }
                }
                driver.abort();
                untrust(&target, &health);
            }
            Err(e) => {
                untrust(&target, &health);
                // Most likely the database is down for every call: say so
                // now (the next call that gets through says otherwise).
                health.set_down(&e.to_string());
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot listen for changes in the database");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);
    impl Invalidate for Log {
        fn forget_user(&self, uid: u64) {
            self.0.lock().expect("log").push(format!("user {uid}"));
        }
        fn forget_session(&self, uid: u64, sid: &SessionId) {
            self.0.lock().expect("log").push(format!("session {uid} {}", sid[0]));
        }
        fn set_trusted(&self, trusted: bool) {
            self.0.lock().expect("log").push(format!("trusted {trusted}"));
        }
    }

    #[test]
    fn payloads_are_applied_and_odd_ones_forget_more_not_less() {
        let l = Log::default();
        let sid = data_encoding::HEXLOWER.encode(&[7; 16]);
        for p in [
            "user:5".to_string(),
            format!("session:6:{sid}"),
            format!("session:6:{}", sid.to_uppercase()),
            // Short sid, unknown kind, extra field: the whole user.
            "session:7:abcd".into(),
            "weird:8".into(),
            format!("session:9:{sid}:x"),
            // No user id at all: everything.
            "".into(),
            "user:".into(),
            "user:-1".into(),
            "\u{0}:\u{ff}".into(),
        ] {
            apply(&p, &l);
        }
        let got = l.0.lock().expect("log").clone();
        assert_eq!(
            got,
            [
                "user 5",
                "session 6 7",
                "session 6 7",
                "user 7",
                "user 8",
                "user 9",
                "trusted true",
                "trusted true",
                "trusted true",
                "trusted true"
            ]
        );
    }
}
