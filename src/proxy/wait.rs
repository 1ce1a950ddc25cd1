//! Time limits on the short way without timer work per request.
//!
//! A fresh `tokio::time::timeout` per wait reads the clock, and when the
//! wait does not end at once it puts a timer into the runtime's wheel and
//! takes it out again afterwards (a lock each time). Per proxied request
//! that was the request head, the portal's answer and each write. Instead:
//! - [`Deadline`] is one timer per connection, moved later before each
//!   wait. Tokio moves a registered timer later without touching the wheel
//!   (it fires at the old time, sees the new one and goes back in), so a
//!   wait costs one clock read.
//! - [`soon`] tries a write first and starts a timer only when the socket
//!   cannot take the bytes at once (a full send buffer: a slow client).

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The wait took longer than its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Elapsed;

impl From<Elapsed> for std::io::Error {
    fn from(_: Elapsed) -> Self {
        std::io::ErrorKind::TimedOut.into()
    }
}

/// One timer for a connection's life; see the module documentation.
pub(super) struct Deadline {
    sleep: Pin<Box<Sleep>>,
}

/// A deadline far enough away not to fire before the first wait sets one.
const UNSET: Duration = Duration::from_secs(365 * 24 * 3600);

impl Deadline {
    pub(super) fn new() -> Self {
        Self { sleep: Box::pin(tokio::time::sleep_until(Instant::now() + UNSET)) }
    }

    /// Runs `f` for at most `limit` from now.
    pub(super) async fn within<F: Future>(&mut self, limit: Duration, f: F) -> Result<F::Output, Elapsed> {
        self.sleep.as_mut().reset(Instant::now() + limit);
        tokio::select! {
            biased;
            out = f => Ok(out),
            _ = self.sleep.as_mut() => Err(Elapsed),
        }
    }

    /// [`Deadline::within`] for I/O, with no limit when `limit` is `None`;
    /// running out of time is a `TimedOut` error.
    pub(super) async fn io<T>(&mut self, limit: Option<Duration>, f: impl Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
        match limit {
            Some(limit) => self.within(limit, f).await?,
            None => f.await,
        }
    }
}

/// Runs `f`, with a `limit` (none when `None`) that starts only if `f`
/// cannot finish at once.
pub(super) async fn soon<T>(limit: Option<Duration>, f: impl Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    let Some(limit) = limit else { return f.await };
    let mut f = std::pin::pin!(f);
    match std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await {
        Poll::Ready(out) => out,
        Poll::Pending => tokio::time::timeout(limit, f).await.map_err(|_| std::io::Error::from(Elapsed))?,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moves_with_each_wait_and_fires_when_a_wait_is_too_long() {
        let mut d = Deadline::new();
        // Each wait gets the whole limit, however long the connection lived.
        for _ in 0..3 {
            let r = d.within(Duration::from_secs(10), tokio::time::sleep(Duration::from_secs(9))).await;
            assert_eq!(r, Ok(()));
        }
        let r = d.within(Duration::from_secs(10), tokio::time::sleep(Duration::from_secs(11))).await;
        assert_eq!(r, Err(Elapsed));
        // Usable again after firing, with a shorter limit than before.
        let r = d.within(Duration::from_secs(2), tokio::time::sleep(Duration::from_secs(1))).await;
        assert_eq!(r, Ok(()));
        let r = d.within(Duration::from_secs(2), std::future::pending::<()>()).await;
        assert_eq!(r, Err(Elapsed));
        let e = d.io(Some(Duration::from_secs(1)), std::future::pending::<std::io::Result<()>>()).await;
        assert_eq!(e.map_err(|e| e.kind()), Err(std::io::ErrorKind::TimedOut));
    }

    #[tokio::test(start_paused = true)]
    async fn soon_limits_only_what_does_not_finish_at_once() {
        assert_eq!(soon(Some(Duration::from_secs(1)), async { Ok(7) }).await.ok(), Some(7));
        // Pending at first, done in time.
        let late = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(8)
        };
        assert_eq!(soon(Some(Duration::from_secs(1)), late).await.ok(), Some(8));
        let never = soon(Some(Duration::from_secs(1)), std::future::pending::<std::io::Result<()>>()).await;
        assert_eq!(never.map_err(|e| e.kind()), Err(std::io::ErrorKind::TimedOut));
    }
}
