//! Brute-force regulation: attempts are counted per account and per client
//! network ([`crate::store::CounterKey`]). Past `delay_after` failures in
//! the window each failed answer is slowed down; `max_failures` within
//! `find_time` bans for `ban_time`; and `max_consecutive` failures on one
//! account without a success lock it until an operator unbans it or the
//! password is reset (NIST SP 800-63B allows at most 100). Password, TOTP
//! and recovery-code attempts share these counters.
//!
//! An attempt is **reserved before the work it limits** ([`reserve`]): the
//! counter is raised first, in the same transaction that checks it, and
//! refused over the limit. Then the work (an argon2 hash, a code check)
//! runs; a failure is [`confirm_failure`]d (which may ban), a success
//! clears the account ([`succeed`]) and gives the address its attempt back
//! ([`refund`]). So however many guesses arrive at once, at most
//! `max_failures` of them per window are ever evaluated, and during a ban
//! even the right password is refused.

use std::time::Duration;

use crate::clock::UnixTime;
use crate::config::RegulationConfig;
use crate::store::Counter;

/// Banned "forever" (until an operator or a password reset lifts it).
pub const LOCKED: UnixTime = i64::MAX;

/// How long a refused attempt is told to wait when the limit is taken up
/// by attempts still in progress (no ban is set for those).
pub const IN_PROGRESS_WAIT: i64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Banned { until: UnixTime },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_failures: u32,
    pub find_time: i64,
    pub ban_time: i64,
    pub delay_after: u32,
    pub delay_step: Duration,
    pub max_consecutive: u32,
}

impl Limits {
    pub fn account(c: &RegulationConfig) -> Self {
        Self {
            max_failures: c.max_failures,
            find_time: c.find_time.as_secs() as i64,
            ban_time: c.ban_time.as_secs() as i64,
            delay_after: c.delay_after,
            delay_step: c.delay_step,
            max_consecutive: c.max_consecutive,
        }
    }

    /// Client addresses may stand for many people (an office behind NAT):
    /// four times the account allowance, and no permanent lock.
    pub fn address(c: &RegulationConfig) -> Self {
        Self { max_failures: c.max_failures.saturating_mul(4), max_consecutive: u32::MAX, ..Self::account(c) }
    }
}

/// Whether `c` is banned at `now`.
pub fn check(c: &Counter, now: UnixTime) -> Decision {
    if now < c.banned_until {
        Decision::Banned { until: c.banned_until }
    } else {
        Decision::Allowed
    }
}

/// Reserves one attempt: raises the counter, or refuses with the time
/// until which the caller must wait. Run inside the store's transaction.
pub fn reserve(c: &mut Counter, now: UnixTime, l: &Limits) -> Result<(), UnixTime> {
    if let Decision::Banned { until } = check(c, now) {
        return Err(until);
    }
    if c.window_start == 0 || now - c.window_start >= l.find_time {
        c.window_start = now;
        c.failures = 0;
    }
    // Only attempts still in progress can fill the quota without a ban or
    // lock having been set; they are waited for, not banned.
    if c.failures >= l.max_failures || c.consecutive >= l.max_consecutive {
        return Err(now.saturating_add(IN_PROGRESS_WAIT));
    }
    c.failures += 1;
    c.consecutive = c.consecutive.saturating_add(1);
    Ok(())
}

/// A reserved attempt failed (it is counted already): ban when the window
/// is full, lock when too many failed in a row.
pub fn confirm_failure(c: &mut Counter, now: UnixTime, l: &Limits) {
    if c.consecutive >= l.max_consecutive {
        c.banned_until = LOCKED;
    } else if c.failures >= l.max_failures && c.banned_until < now {
        c.banned_until = now.saturating_add(l.ban_time);
        c.failures = 0;
        c.window_start = 0;
    }
}

/// A reserved attempt succeeded on this account: everything is forgiven.
pub fn succeed(c: &mut Counter) {
    *c = Counter::default();
}

/// A reserved attempt succeeded: the address gets it back (its earlier
/// failures stay).
pub fn refund(c: &mut Counter) {
    c.failures = c.failures.saturating_sub(1);
    c.consecutive = c.consecutive.saturating_sub(1);
    if c.failures == 0 && c.consecutive == 0 && c.banned_until == 0 {
        c.window_start = 0;
    }
}

/// How long to hold back the answer to a failed attempt.
pub fn delay(c: &Counter, l: &Limits) -> Duration {
    if c.failures > l.delay_after {
        let n = c.failures - l.delay_after;
        (l.delay_step * n).min(Duration::from_secs(5))
    } else {
        Duration::ZERO
    }
}

/// Minutes until `until`, rounded up, for the "try again in N minutes" text.
pub fn minutes_left(until: UnixTime, now: UnixTime) -> i64 {
    if until == LOCKED {
        return 0;
    }
    ((until - now).max(0) + 59) / 60
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_failures: 5,
            find_time: 600,
            ban_time: 900,
            delay_after: 3,
            delay_step: Duration::from_millis(500),
            max_consecutive: 100,
        }
    }

    /// One attempt that fails.
    fn fail(c: &mut Counter, now: UnixTime, l: &Limits) -> Result<(), UnixTime> {
        reserve(c, now, l)?;
        confirm_failure(c, now, l);
        Ok(())
    }

    #[test]
    fn ban_after_max_failures_in_window_and_lift_after_ban_time() {
        let l = limits();
        let mut c = Counter::default();
        let t0 = 1_000_000;
        for i in 0..4 {
            fail(&mut c, t0 + i, &l).expect("allowed");
            assert_eq!(check(&c, t0 + i), Decision::Allowed);
        }
        fail(&mut c, t0 + 4, &l).expect("allowed");
        assert_eq!(check(&c, t0 + 5), Decision::Banned { until: t0 + 4 + 900 });
        assert_eq!(reserve(&mut c, t0 + 4 + 899, &l), Err(t0 + 4 + 900));
        assert_eq!(check(&c, t0 + 4 + 900), Decision::Allowed);
        assert_eq!(reserve(&mut c, t0 + 4 + 900, &l), Ok(()));
    }

    #[test]
    fn reservations_in_progress_fill_the_quota_without_a_ban() {
        let l = limits();
        let mut c = Counter::default();
        let t = 5_000;
        // Five attempts at once are admitted, the sixth is told to wait …
        for _ in 0..5 {
            reserve(&mut c, t, &l).expect("admitted");
        }
        assert_eq!(reserve(&mut c, t, &l), Err(t + IN_PROGRESS_WAIT));
        assert_eq!(check(&c, t), Decision::Allowed);
        // … and once they have failed, the ban is there.
        for _ in 0..5 {
            confirm_failure(&mut c, t + 1, &l);
        }
        assert_eq!(check(&c, t + 1), Decision::Banned { until: t + 1 + 900 });
    }

    #[test]
    fn a_success_forgives_the_account_and_refunds_the_address() {
        let l = limits();
        let (mut account, mut address) = (Counter::default(), Counter::default());
        for i in 0..3 {
            fail(&mut account, 10 + i, &l).expect("allowed");
            fail(&mut address, 10 + i, &l).expect("allowed");
        }
        reserve(&mut account, 20, &l).expect("admitted");
        reserve(&mut address, 20, &l).expect("admitted");
        succeed(&mut account);
        refund(&mut address);
        assert_eq!(account, Counter::default());
        assert_eq!((address.failures, address.consecutive), (3, 3));
        let mut fresh = Counter::default();
        reserve(&mut fresh, 30, &l).expect("admitted");
        refund(&mut fresh);
        assert_eq!(fresh, Counter::default());
    }

    #[test]
    fn failures_outside_window_do_not_add_up() {
        let l = limits();
        let mut c = Counter::default();
        for i in 0..20 {
            fail(&mut c, 1_000_000 + i * 601, &l).expect("allowed");
            assert_eq!(check(&c, 1_000_000 + i * 601), Decision::Allowed);
        }
    }

    #[test]
    fn progressive_delay() {
        let l = limits();
        let mut c = Counter::default();
        let mut delays = vec![];
        for i in 0..4 {
            fail(&mut c, 1_000 + i, &l).expect("allowed");
            delays.push(delay(&c, &l));
        }
        assert_eq!(delays, vec![Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::from_millis(500)]);
    }

    #[test]
    fn never_more_than_max_consecutive_failures() {
        // A slow attacker who stays under the window limit still hits the hard lock.
        let l = Limits { max_consecutive: 100, ..limits() };
        let mut c = Counter::default();
        let mut t = 1_000_000;
        let mut attempts = 0;
        loop {
            match reserve(&mut c, t, &l) {
                Err(LOCKED) => break,
                Err(until) => {
                    t = until;
                    continue;
                }
                Ok(()) => {}
            }
            confirm_failure(&mut c, t, &l);
            attempts += 1;
            t += 200;
            assert!(attempts <= 100, "more than 100 consecutive failures allowed");
        }
        assert_eq!(attempts, 100);
        succeed(&mut c);
        assert_eq!(check(&c, t), Decision::Allowed);
    }

    #[test]
    fn minutes_rounding() {
        assert_eq!(minutes_left(1060, 1000), 1);
        assert_eq!(minutes_left(1061, 1000), 2);
        assert_eq!(minutes_left(900, 1000), 0);
        assert_eq!(minutes_left(LOCKED, 1000), 0);
    }
}
