//! The regulation as the handlers use it: one [`Attempt`] per password,
//! code or recovery-code check, reserved against the account's and the
//! client network's counters in one store transaction before the check
//! runs, then settled as a failure or a success (`auth::regulation` has
//! the rules).

use crate::store::prelude::*;
use std::net::IpAddr;

use super::{Request, Services, WebError};
use crate::audit::{Event, Kind};
use crate::auth::regulation::{self, minutes_left, Limits, LOCKED};
use crate::store::{Counter, CounterKey, Update, User};

/// One attempt against a set of counters.
pub(super) struct Attempt {
    keys: Vec<CounterKey>,
    limits: Vec<Limits>,
    /// Which keys a success forgives entirely (the account); the others
    /// get their attempt back (the address).
    forgives: Vec<bool>,
    /// The account's name, for the audit log's `ban` event.
    user: Option<String>,
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
    pub(super) fn login(s: &Services, user: Option<&User>, login: &str, ip: IpAddr) -> Self {
        let account = match user {
            Some(u) => CounterKey::Account(u.id),
            None => CounterKey::login(login),
        };
        Self {
            keys: vec![account, CounterKey::address(ip)],
            limits: vec![s.account_limits, s.address_limits],
            forgives: vec![true, false],
            user: user.map(|u| u.username.clone()),
        }
    }

    /// A second-factor attempt of a known account.
    pub(super) fn user(s: &Services, user: &User, ip: IpAddr) -> Self {
        Self::login(s, Some(user), "", ip)
    }

    /// A reset request from a client network (every request counts).
    pub(super) fn reset_request(s: &Services, ip: IpAddr) -> Self {
        Self { keys: vec![CounterKey::reset_address(ip)], limits: vec![s.address_limits], forgives: vec![false], user: None }
    }

    /// A reset mail to an account (every mail counts).
    pub(super) fn reset_mail(s: &Services, user: &User) -> Self {
        Self { keys: vec![CounterKey::ResetAccount(user.id)], limits: vec![s.account_limits], forgives: vec![false], user: Some(user.username.clone()) }
    }

    /// Reserves the attempt on every counter at once, or on none.
    pub(super) async fn reserve(&self, s: &Services) -> Result<Result<(), Refused>, WebError> {
        self.take(s, None).await
    }

    /// Counts a request that is limited by number, not by failure (reset
    /// requests and mails): reserved and settled as a failure at once, so
    /// the limit bans for `ban_time` when reached.
    pub(super) async fn charge(&self, s: &Services, req: &Request<'_>) -> Result<Result<(), Refused>, WebError> {
        self.take(s, Some(req)).await
    }

    /// Reserves; with `settled` (a charge) also counts the attempt as a
    /// failure at once.
    async fn take(&self, s: &Services, settled: Option<&Request<'_>>) -> Result<Result<(), Refused>, WebError> {
        let now = s.now();
        let mut refused_until = None;
        let mut banned = Vec::new();
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
                if settled.is_some() {
                    banned = settle_failure(counters, &self.limits, now);
                }
                Update::Commit
            })
            .await?;
        if let (Some(req), Some(_)) = (settled, &committed) {
            self.audit_bans(s, req, &banned);
        }
        match (committed, refused_until) {
            (Some(_), _) => Ok(Ok(())),
            (None, Some(until)) => Ok(Err(Refused { minutes: minutes_left(until, now) })),
            (None, None) => Err(WebError::Internal("regulation update aborted".into())),
        }
    }

    /// The reserved attempt failed: bans where due, then holds the answer
    /// back by the regulation's progressive delay.
    pub(super) async fn failed(&self, s: &Services, req: &Request<'_>) -> Result<(), WebError> {
        let now = s.now();
        let mut banned = Vec::new();
        let committed = s
            .store
            .update_counters(&self.keys, &mut |counters: &mut [Counter]| {
                banned = settle_failure(counters, &self.limits, now);
                Update::Commit
            })
            .await?;
        if committed.is_some() {
            self.audit_bans(s, req, &banned);
        }
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

    /// One `ban` line for each counter this attempt banned.
    fn audit_bans(&self, s: &Services, req: &Request<'_>, banned: &[(usize, i64)]) {
        for &(i, until) in banned {
            let Some(key) = self.keys.get(i) else { continue };
            let (scope, account, network) = match key {
                CounterKey::Account(_) => ("account", true, None),
                // The name typed is not written: it may be a password.
                CounterKey::UnknownLogin(_) => ("unknown_login", false, None),
                CounterKey::Address(n) => ("network", false, Some(n)),
                CounterKey::ResetAccount(_) => ("reset_mails", true, None),
                CounterKey::ResetAddress(n) => ("reset_requests", false, Some(n)),
            };
            let mut e = Event::new(Kind::Ban).field("scope", scope);
            if let (true, Some(u)) = (account, &self.user) {
                e = e.user(u);
            }
            if let Some(n) = network {
                e = e.field("network", n.to_string());
            }
            e = if until == LOCKED {
                e.field("until", "locked")
            } else {
                e.field("until", jiff::Timestamp::from_second(until).map(|t| t.to_string()).unwrap_or_default()).field("minutes", minutes_left(until, s.now()))
            };
            s.audit(req, e);
        }
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

/// Counts a failure on every counter; returns which counters this
/// failure banned (their index and the ban's end).
fn settle_failure(counters: &mut [Counter], limits: &[Limits], now: crate::store::UnixTime) -> Vec<(usize, i64)> {
    let mut banned = Vec::new();
    for (i, (c, l)) in counters.iter_mut().zip(limits).enumerate() {
        let was = c.banned_until > now;
        regulation::confirm_failure(c, now, l);
        if !was && c.banned_until > now {
            banned.push((i, c.banned_until));
        }
    }
    banned
}
