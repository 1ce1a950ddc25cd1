//! Brute-force regulation: failures are counted per account and per client
//! address. Past `delay_after` failures in the window each answer is slowed
//! down; `max_failures` within `find_time` bans for `ban_time`; and
//! `max_consecutive` failures on one account without a success lock it until
//! an operator unbans it or the password is reset (NIST SP 800-63B allows at
//! most 100). Password and TOTP failures share these counters.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::clock::UnixTime;
use crate::config::RegulationConfig;

/// Banned "forever" (until an operator or a password reset lifts it).
pub const LOCKED: UnixTime = i64::MAX;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// Failures in the current window.
    pub failures: u32,
    pub window_start: UnixTime,
    /// Failures since the last success.
    pub consecutive: u32,
    pub banned_until: UnixTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Banned { until: UnixTime },
}

#[derive(Debug, Clone, Copy)]
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

impl Counter {
    pub fn check(&self, now: UnixTime) -> Decision {
        if now < self.banned_until {
            Decision::Banned { until: self.banned_until }
        } else {
            Decision::Allowed
        }
    }

    /// Records one failure; returns the updated counter.
    pub fn fail(mut self, now: UnixTime, l: &Limits) -> Self {
        if now - self.window_start >= l.find_time || self.window_start == 0 {
            self.window_start = now;
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        self.consecutive = self.consecutive.saturating_add(1);
        if self.consecutive >= l.max_consecutive {
            self.banned_until = LOCKED;
        } else if self.failures >= l.max_failures {
            self.banned_until = now.saturating_add(l.ban_time);
            self.failures = 0;
            self.window_start = 0;
        }
        self
    }

    /// A success clears the counter.
    pub fn succeed(self) -> Self {
        Counter::default()
    }

    /// How long to hold back the answer to a failed attempt.
    pub fn delay(&self, l: &Limits) -> Duration {
        if self.failures > l.delay_after {
            let n = self.failures - l.delay_after;
            (l.delay_step * n).min(Duration::from_secs(5))
        } else {
            Duration::ZERO
        }
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

    #[test]
    fn ban_after_max_failures_in_window_and_lift_after_ban_time() {
        let l = limits();
        let mut c = Counter::default();
        let t0 = 1_000_000;
        for i in 0..4 {
            c = c.fail(t0 + i, &l);
            assert_eq!(c.check(t0 + i), Decision::Allowed);
        }
        c = c.fail(t0 + 4, &l);
        assert_eq!(c.check(t0 + 5), Decision::Banned { until: t0 + 4 + 900 });
        assert_eq!(c.check(t0 + 4 + 899), Decision::Banned { until: t0 + 4 + 900 });
        assert_eq!(c.check(t0 + 4 + 900), Decision::Allowed);
    }

    #[test]
    fn failures_outside_window_do_not_add_up() {
        let l = limits();
        let mut c = Counter::default();
        for i in 0..20 {
            c = c.fail(1_000_000 + i * 601, &l);
            assert_eq!(c.check(1_000_000 + i * 601), Decision::Allowed);
        }
    }

    #[test]
    fn progressive_delay() {
        let l = limits();
        let mut c = Counter::default();
        let mut delays = vec![];
        for i in 0..4 {
            c = c.fail(1_000 + i, &l);
            delays.push(c.delay(&l));
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
            if let Decision::Banned { until } = c.check(t) {
                if until == LOCKED {
                    break;
                }
                t = until;
                continue;
            }
            c = c.fail(t, &l);
            attempts += 1;
            t += 200;
            assert!(attempts <= 100, "more than 100 consecutive failures allowed");
        }
        assert_eq!(attempts, 100);
        assert_eq!(c.clone().succeed().check(t), Decision::Allowed);
    }

    #[test]
    fn success_resets() {
        let l = limits();
        let c = Counter::default().fail(1, &l).fail(2, &l).succeed();
        assert_eq!(c, Counter::default());
    }

    #[test]
    fn minutes_rounding() {
        assert_eq!(minutes_left(1060, 1000), 1);
        assert_eq!(minutes_left(1061, 1000), 2);
        assert_eq!(minutes_left(900, 1000), 0);
    }
}
