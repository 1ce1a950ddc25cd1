//! The regulation as the handlers use it: one [`Attempt`] per password,
//! code or recovery-code check, reserved against the account's and the
//! client network's counters in one store transaction before the check
//! runs, then settled as a failure or a success (`auth::regulation` has
//! the rules).

use crate::store::prelude::*;
use std::net::IpAddr;

use super::{Services, WebError};
use crate::auth::regulation::{self, minutes_left, Limits};
use crate::store::{Counter, CounterKey, Update};

/// One attempt against a set of counters.
pub(super) struct Attempt {
    keys: Vec<CounterKey>,
    limits: Vec<Limits>,
    /// Which keys a success forgives entirely (the account); the others
    /// get their attempt back (the address).
    forgives: Vec<bool>,
}

/// Why an attempt was not admitted: minutes to wait (0: locked until an
/// operator or a reset lifts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refused {
    pub minutes: i64,
}

impl Attempt {
    /// A password attempt: the account if it exists, else the login name,
    /// and the client network.
    pub(super) fn login(s: &Services, uid: Option<u64>, login: &str, ip: IpAddr) -> Self {
        let account = match uid {
            Some(id) => CounterKey::Account(id),
            None => CounterKey::login(login),
        };
        Self {
            keys: vec![account, CounterKey::address(ip)],
            limits: vec![s.account_limits, s.address_limits],
            forgives: vec![true, false],
        }
    }

    /// A second-factor attempt of a known account.
    pub(super) fn user(s: &Services, uid: u64, ip: IpAddr) -> Self {
        Self::login(s, Some(uid), "", ip)
    }

    /// A reset request from a client network (every request counts).
    pub(super) fn reset_request(s: &Services, ip: IpAddr) -> Self {
        Self { keys: vec![CounterKey::reset_address(ip)], limits: vec![s.address_limits], forgives: vec![false] }
    }

    /// A reset mail to an account (every mail counts).
    pub(super) fn reset_mail(s: &Services, uid: u64) -> Self {
        Self { keys: vec![CounterKey::ResetAccount(uid)], limits: vec![s.account_limits], forgives: vec![false] }
    }

    /// Reserves the attempt on every counter at once, or on none.
    pub(super) async fn reserve(&self, s: &Services) -> Result<Result<(), Refused>, WebError> {
        self.take(s, false).await
    }

    /// Counts a request that is limited by number, not by failure (reset
    /// requests and mails): reserved and settled as a failure at once, so
    /// the limit bans for `ban_time` when reached.
    pub(super) async fn charge(&self, s: &Services) -> Result<Result<(), Refused>, WebError> {
        self.take(s, true).await
    }

    async fn take(&self, s: &Services, settle: bool) -> Result<Result<(), Refused>, WebError> {
        let now = s.now();
        let mut refused_until = None;
        let committed = s
            .store
            .update_counters(&self.keys, &mut |counters: &mut [Counter]| {
                refused_until = None;
                for (c, l) in counters.iter_mut().zip(&self.limits) {
                    if let Err(until) = regulation::reserve(c, now, l) {
                        refused_until = Some(refused_until.map_or(until, |u: i64| u.max(until)));
                    }
                }
                if refused_until.is_some() {
                    return Update::Abort;
                }
                if settle {
                    for (c, l) in counters.iter_mut().zip(&self.limits) {
                        regulation::confirm_failure(c, now, l);
                    }
                }
                Update::Commit
            })
            .await?;
        match (committed, refused_until) {
            (Some(_), _) => Ok(Ok(())),
            (None, Some(until)) => Ok(Err(Refused { minutes: minutes_left(until, now) })),
            (None, None) => Err(WebError::Internal("regulation update aborted".into())),
        }
    }

    /// The reserved attempt failed: bans where due, then holds the answer
    /// back by the regulation's progressive delay.
    pub(super) async fn failed(&self, s: &Services) -> Result<(), WebError> {
        let now = s.now();
        let committed = s
            .store
            .update_counters(&self.keys, &mut |counters: &mut [Counter]| {
                for (c, l) in counters.iter_mut().zip(&self.limits) {
                    regulation::confirm_failure(c, now, l);
                }
                Update::Commit
            })
            .await?;
        let delay = committed
            .iter()
            .flatten()
            .zip(&self.limits)
            .map(|(c, l)| regulation::delay(c, l))
            .max()
            .unwrap_or_default();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }

    /// The reserved attempt could not be checked (the portal did not
    /// answer): every counter gets it back, nothing is forgiven.
    pub(super) async fn released(&self, s: &Services) -> Result<(), WebError> {
        s.store
            .update_counters(&self.keys, &mut |counters: &mut [Counter]| {
                for c in counters.iter_mut() {
                    regulation::refund(c);
                }
                Update::Commit
            })
            .await?;
        Ok(())
    }

    /// The reserved attempt succeeded.
    pub(super) async fn succeeded(&self, s: &Services) -> Result<(), WebError> {
        s.store
            .update_counters(&self.keys, &mut |counters: &mut [Counter]| {
                for (c, forgive) in counters.iter_mut().zip(&self.forgives) {
                    if *forgive {
                        regulation::succeed(c);
                    } else {
                        regulation::refund(c);
                    }
                }
                Update::Commit
            })
            .await?;
        Ok(())
    }
}
