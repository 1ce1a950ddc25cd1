//! riegel's Prometheus metrics: counters, gauges and a histogram in the
//! `prometheus` crate's default registry (the one Pingora's metrics
//! service, `pingora-prometheus`, serves), so other parts can register
//! their own there too. This module only counts: plain atomics, no I/O, no
//! knowledge of the layers above. The listener is `proxy`'s
//! (`metrics.listen`, never the public port).
//!
//! Who counts what (nothing in `web` or `auth` does):
//! - `proxy`: every request by what became of it ([`request`]) and the
//!   portal's answer time ([`upstream_duration`]), from the `web::Outcome`
//!   it gets and the head it refuses.
//! - `audit`: logins by stage and result ([`login`]), from the security
//!   events `web` sends to the audit log: one source for both.
//! - `mail`: each mail's fate ([`mail`]).
//! - Gauges that need the store (sessions, bans, the mail spool) or the
//!   hashing threads are read at scrape time through a [`Probe`] the app
//!   installs ([`set_probe`]), within [`PROBE_BOUND`]; past it a scrape
//!   shows the last values read.
//!
//! The metrics are the process's: several gateways in one process (the
//! tests) share them.

use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};

/// What became of a request (`riegel_requests_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Sent on to the portal (with a session, or a public path).
    Forwarded,
    /// A portal path without a session: sent to the login page.
    LoginRedirect,
    /// Answered by riegel's own pages and routes (`/_riegel/...`).
    OwnPage,
    /// A head or body riegel refuses (400, 408, 413).
    Refused,
}

impl RequestOutcome {
    pub const ALL: [RequestOutcome; 4] = [Self::Forwarded, Self::LoginRedirect, Self::OwnPage, Self::Refused];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::LoginRedirect => "login_redirect",
            Self::OwnPage => "own_page",
            Self::Refused => "refused",
        }
    }
}

/// The step of a login (`riegel_logins_total{stage}`; the audit log's
/// `stage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginStage {
    Password,
    SecondFactor,
    RecoveryCode,
}

impl LoginStage {
    pub const ALL: [LoginStage; 3] = [Self::Password, Self::SecondFactor, Self::RecoveryCode];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::SecondFactor => "second_factor",
            Self::RecoveryCode => "recovery_code",
        }
    }
}

/// How a login step ended (`riegel_logins_total{result}`; the audit
/// log's `result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginResult {
    Success,
    Failure,
    /// Refused unchecked: the account or the client network is banned.
    Banned,
}

impl LoginResult {
    pub const ALL: [LoginResult; 3] = [Self::Success, Self::Failure, Self::Banned];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Banned => "banned",
        }
    }
}

/// A mail's fate (`riegel_mail_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailResult {
    /// Accepted into the spool.
    Queued,
    /// Delivered (to the SMTP server or the outbox).
    Sent,
    /// Another delivery attempt after a failed one.
    Retried,
    /// Given up after the last attempt, or undeliverable.
    Failed,
    /// Refused because the spool was full.
    Dropped,
}

impl MailResult {
    pub const ALL: [MailResult; 5] = [Self::Queued, Self::Sent, Self::Retried, Self::Failed, Self::Dropped];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::Retried => "retried",
            Self::Failed => "failed",
            Self::Dropped => "dropped",
        }
    }
}

/// The portal's answer times: from a few milliseconds to the default
/// read timeout and beyond.
const UPSTREAM_BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The counters, each label set resolved once (a request's count is one
/// atomic add, no label lookup).
struct Counters {
    requests: [IntCounter; 4],
    logins: [[IntCounter; 3]; 3],
    mail: [IntCounter; 5],
    upstream: Histogram,
    audit_errors: IntCounter,
}

/// Registers `c` in the default registry. A second registration of the
/// same name (a second copy of this module cannot exist; another part
/// that took the name) is logged, and the metric counts unserved.
fn register<C: Collector + Clone + 'static>(c: C) -> C {
    if let Err(e) = prometheus::register(Box::new(c.clone())) {
        tracing::warn!(error = %e, "a metric could not be registered");
    }
    c
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> Option<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels).ok().map(register)
}

fn build() -> Option<Counters> {
    let requests = counter_vec("riegel_requests_total", "Requests by what became of them.", &["outcome"])?;
    let logins = counter_vec("riegel_logins_total", "Login steps by stage and result.", &["stage", "result"])?;
    let mail = counter_vec("riegel_mail_total", "Mails by what became of them.", &["result"])?;
    let upstream = register(
        Histogram::with_opts(
            HistogramOpts::new("riegel_upstream_duration_seconds", "Time from a request's head going to the portal to the portal's answer head.")
                .buckets(UPSTREAM_BUCKETS.to_vec()),
        )
        .ok()?,
    );
    let audit_errors = register(IntCounter::new("riegel_audit_write_errors_total", "Audit log lines that could not be written.").ok()?);
    // Every label set exists from the start (a scrape shows zeros, and
    // `rate()` sees the first event).
    let requests = RequestOutcome::ALL.map(|o| requests.with_label_values(&[o.as_str()]));
    let logins = LoginStage::ALL.map(|s| LoginResult::ALL.map(|r| logins.with_label_values(&[s.as_str(), r.as_str()])));
    let mail = MailResult::ALL.map(|r| mail.with_label_values(&[r.as_str()]));
    Some(Counters { requests, logins, mail, upstream, audit_errors })
}

static COUNTERS: LazyLock<Option<Counters>> = LazyLock::new(build);

/// Makes every metric exist (zeros) before the first event: called when
/// the metrics listener starts.
pub fn init() {
    LazyLock::force(&COUNTERS);
    LazyLock::force(&STATE);
}

/// Counts one request.
#[inline]
pub fn request(o: RequestOutcome) {
    if let Some(c) = &*COUNTERS {
        c.requests[o as usize].inc();
    }
}

/// Counts one login step.
pub fn login(stage: LoginStage, result: LoginResult) {
    if let Some(c) = &*COUNTERS {
        c.logins[stage as usize][result as usize].inc();
    }
}

/// Counts one mail event.
pub fn mail(r: MailResult) {
    if let Some(c) = &*COUNTERS {
        c.mail[r as usize].inc();
    }
}

/// Records the portal's answer time for one request.
#[inline]
pub fn upstream_duration(d: Duration) {
    if let Some(c) = &*COUNTERS {
        c.upstream.observe(d.as_secs_f64());
    }
}

/// Counts an audit line that could not be written.
pub fn audit_write_error() {
    if let Some(c) = &*COUNTERS {
        c.audit_errors.inc();
    }
}

/// What the gauges show; `None` when it could not be read (the gauge keeps
/// its last value).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    /// Session records in the store (password-stage ones included; expired
    /// ones until the clean-up removes them, within 5 minutes).
    pub sessions: Option<i64>,
    /// Regulation counters banned now (accounts, unknown login names,
    /// client networks, reset limits).
    pub bans: Option<i64>,
    /// Mails in the spool, waiting or in delivery.
    pub mail_queue: Option<i64>,
    /// Logins waiting for a free hashing thread.
    pub hash_queue: Option<i64>,
}

/// Reads the [`State`] for a scrape; must return within [`PROBE_BOUND`]
/// (or its answer is not waited for).
pub trait Probe: Send + Sync {
    fn read(&self, bound: Duration) -> State;
}

/// How long a scrape waits for the store's figures.
pub const PROBE_BOUND: Duration = Duration::from_secs(2);

/// The gauges, read through the probe when scraped.
#[derive(Clone)]
struct StateGauges {
    sessions: IntGauge,
    bans: IntGauge,
    mail_queue: IntGauge,
    hash_queue: IntGauge,
    probe: Arc<RwLock<Option<Arc<dyn Probe>>>>,
}

impl StateGauges {
    fn gauges(&self) -> [&IntGauge; 4] {
        [&self.sessions, &self.bans, &self.mail_queue, &self.hash_queue]
    }
}

impl Collector for StateGauges {
    fn desc(&self) -> Vec<&Desc> {
        self.gauges().into_iter().flat_map(|g| g.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let probe = self.probe.read().ok().and_then(|p| p.clone());
        if let Some(p) = probe {
            let s = p.read(PROBE_BOUND);
            for (g, v) in self.gauges().into_iter().zip([s.sessions, s.bans, s.mail_queue, s.hash_queue]) {
                if let Some(v) = v {
                    g.set(v);
                }
            }
        }
        self.gauges().into_iter().flat_map(|g| g.collect()).collect()
    }
}

fn build_state() -> Option<StateGauges> {
    let g = |name: &str, help: &str| IntGauge::new(name, help).ok();
    let s = StateGauges {
        sessions: g("riegel_active_sessions", "Session records in the store (expired ones until the next clean-up).")?,
        bans: g("riegel_bans_active", "Regulation counters banned now (accounts, login names, client networks, reset limits).")?,
        mail_queue: g("riegel_mail_queue_depth", "Mails in the spool, waiting or in delivery.")?,
        hash_queue: g("riegel_hash_queue_depth", "Logins waiting for a free password-hashing thread.")?,
        probe: Arc::new(RwLock::new(None)),
    };
    Some(register(s))
}

static STATE: LazyLock<Option<StateGauges>> = LazyLock::new(build_state);

/// Installs the probe the gauges are read through (the last one installed
/// wins).
pub fn set_probe(p: Arc<dyn Probe>) {
    if let Some(s) = &*STATE {
        if let Ok(mut slot) = s.probe.write() {
            *slot = Some(p);
        }
    }
}

/// The default registry's metrics in the text format, as the metrics
/// listener serves them (for tests and `riegel` itself).
pub fn text() -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&prometheus::gather(), &mut buf) {
        tracing::warn!(error = %e, "metrics could not be encoded");
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(State);
    impl Probe for Fixed {
        fn read(&self, _bound: Duration) -> State {
            self.0
        }
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
    }

    #[test]
    fn every_label_set_is_there_and_counts() {
        init();
        let t = text();
        for o in RequestOutcome::ALL {
            assert!(value(&t, &format!("riegel_requests_total{{outcome=\"{}\"}}", o.as_str())).is_some(), "{t}");
        }
        for s in LoginStage::ALL {
            for r in LoginResult::ALL {
                assert!(value(&t, &format!("riegel_logins_total{{result=\"{}\",stage=\"{}\"}}", r.as_str(), s.as_str())).is_some(), "{t}");
            }
        }
        let series = "riegel_logins_total{result=\"banned\",stage=\"recovery_code\"}";
        let before = value(&t, series).unwrap_or(-1.0);
        login(LoginStage::RecoveryCode, LoginResult::Banned);
        assert!(value(&text(), series).unwrap_or(-1.0) >= before + 1.0);
        upstream_duration(Duration::from_millis(3));
        assert!(value(&text(), "riegel_upstream_duration_seconds_count").unwrap_or(0.0) >= 1.0);
    }

    #[test]
    fn gauges_are_read_at_scrape_time_and_keep_unknown_values() {
        init();
        set_probe(Arc::new(Fixed(State { sessions: Some(7), bans: Some(2), mail_queue: Some(1), hash_queue: Some(3) })));
        let t = text();
        assert_eq!(value(&t, "riegel_active_sessions"), Some(7.0), "{t}");
        assert_eq!(value(&t, "riegel_bans_active"), Some(2.0));
        assert_eq!(value(&t, "riegel_mail_queue_depth"), Some(1.0));
        assert_eq!(value(&t, "riegel_hash_queue_depth"), Some(3.0));
        set_probe(Arc::new(Fixed(State { sessions: None, bans: Some(0), mail_queue: None, hash_queue: None })));
        let t = text();
        assert_eq!(value(&t, "riegel_active_sessions"), Some(7.0), "an unread figure keeps its last value");
        assert_eq!(value(&t, "riegel_bans_active"), Some(0.0));
    }
}
