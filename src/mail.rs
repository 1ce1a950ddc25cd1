//! Outgoing mail — the only module of riegel that knows `lettre`.
//!
//! Request handlers hold a [`MailQueue`]. [`MailQueue::send`] checks and
//! seals the mail, writes it to the store's mail spool and waits until the
//! store says it is durable: a mail riegel has acknowledged to a user
//! ("Sie erhalten eine E-Mail …") survives a restart or a crash. It never
//! waits for the network.
//!
//! [`Mailer`] owns one background thread (with its own current-thread
//! tokio runtime) that claims due mails from the spool (a lease, so that of
//! several instances on one database each mail goes out once), delivers
//! them over SMTP or into an outbox directory (lettre's file transport, one
//! `.eml` file per mail), and retries failures with exponential backoff
//! until `mail.max_attempts` is used up. Subjects and bodies are never
//! logged: they carry password-reset links. In the store they are sealed
//! (the [`Sealer`] comes from the layer that holds the storage key).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use crate::clock::{Clock, UnixTime};
use crate::config::{MailConfig, MailTransport, SmtpConfig, SmtpTls};
use crate::store::{QueuedMail, Store, StoreError};

/// Delay before the first retry; doubled for every further one.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Upper bound of the retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Deliveries that talk to the SMTP server at the same time (and pooled connections).
const MAX_PARALLEL: usize = 4;
/// lettre only bounds the TCP connect by the configured timeout, not the SMTP
/// dialogue; one whole delivery attempt is bounded by this many timeouts.
const ATTEMPT_TIMEOUT_FACTOR: u32 = 3;
/// How often the worker looks at the spool when nobody wakes it (mails
/// due for a retry, mails accepted by another instance).
const POLL: Duration = Duration::from_secs(1);

/// One mail to send. `text` is the plain-text body, `html` an optional HTML alternative.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

/// Redacts subject and bodies (they carry reset links), so a stray `{:?}` cannot leak them.
impl fmt::Debug for Mail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mail")
            .field("to", &self.to)
            .field("subject", &format_args!("<{} bytes>", self.subject.len()))
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .field("html", &self.html.as_ref().map(|h| format!("<{} bytes>", h.len())))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("mail queue is full")]
    QueueFull,
    #[error("mailer has stopped")]
    Closed,
    #[error("invalid mail: {0}")]
    Invalid(String),
    #[error("mail transport: {0}")]
    Transport(String),
    #[error("mail spool: {0}")]
    Store(#[from] StoreError),
}

/// What request handlers hold. `send` returns once the mail is durable;
/// it never waits for the network.
#[async_trait]
pub trait MailQueue: Send + Sync + 'static {
    async fn send(&self, mail: Mail) -> Result<(), MailError>;
}

/// Seals and opens spooled mails (the storage key lives above this module).
pub trait Sealer: Send + Sync + 'static {
    fn seal(&self, plain: &[u8]) -> Vec<u8>;
    fn open(&self, sealed: &[u8]) -> Option<Vec<u8>>;
}

/// Counters since start. `retried` counts retry attempts (not mails).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailStats {
    pub queued: u64,
    pub sent: u64,
    pub failed: u64,
    pub dropped: u64,
    pub retried: u64,
}

#[derive(Default)]
struct Counts {
    queued: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retried: AtomicU64,
}

/// State shared by the handle and the worker thread.
struct Shared {
    store: Arc<dyn Store>,
    sealer: Arc<dyn Sealer>,
    clock: Arc<dyn Clock>,
    counts: Counts,
    wake: Notify,
    stop: AtomicBool,
    /// Mails being delivered by this process right now.
    in_flight: Mutex<usize>,
    max_attempts: u32,
    /// How long a claimed mail is left alone by others.
    lease: i64,
    from: Mailbox,
    /// Domain part of the generated `Message-ID`s (the sender's domain).
    id_domain: String,
}

/// The mail spool's sender and its delivery thread. Dropping it stops the
/// thread after the deliveries in progress; what is left in the spool goes
/// out at the next start (or from another instance).
pub struct Mailer {
    shared: Arc<Shared>,
    queue_size: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer").field("from", &self.shared.from.to_string()).field("stats", &self.stats()).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Mailer {
    /// Validates `from` and the transport, starts the delivery thread and
    /// returns at once. Mails already in the spool are delivered too.
    pub fn start(cfg: &MailConfig, store: Arc<dyn Store>, sealer: Arc<dyn Sealer>, clock: Arc<dyn Clock>) -> Result<Mailer, MailError> {
        let from: Mailbox = cfg.from.parse().map_err(|e| MailError::Invalid(format!("sender address {:?}: {e}", cfg.from)))?;
        if cfg.queue_size == 0 {
            return Err(MailError::Invalid("queue_size must be at least 1".into()));
        }
        let (plan, attempt) = match &cfg.transport {
            MailTransport::Smtp(smtp) => (Plan::Smtp(smtp_builder(smtp)?), attempt_timeout(smtp)),
            MailTransport::Outbox(dir) => {
                prepare_outbox(dir)?;
                (Plan::Outbox(dir.clone()), Duration::from_secs(10))
            }
        };
        let shared = Arc::new(Shared {
            store,
            sealer,
            clock,
            counts: Counts::default(),
            wake: Notify::new(),
            stop: AtomicBool::new(false),
            in_flight: Mutex::new(0),
            max_attempts: cfg.max_attempts.max(1),
            lease: i64::try_from(attempt.as_secs()).unwrap_or(i64::MAX).saturating_mul(2).saturating_add(60),
            id_domain: from.email.domain().to_owned(),
            from,
        });
        // The runtime is created (and later dropped) on the mail thread itself, so
        // `start` may be called from inside another runtime without trouble.
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("riegel-mail".into())
            .spawn(move || worker_main(plan, attempt, worker, ready_tx))
            .map_err(|e| MailError::Transport(format!("cannot start the mail thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(MailError::Closed),
        }
        tracing::info!(transport = %describe(&cfg.transport), "mailer started");
        Ok(Mailer { shared, queue_size: cfg.queue_size, thread: Some(thread) })
    }

    pub fn stats(&self) -> MailStats {
        let c = &self.shared.counts;
        MailStats {
            queued: c.queued.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
        }
    }

    /// Mails in the spool (of every instance on the store), waiting or in delivery.
    pub async fn queue_depth(&self) -> Result<usize, MailError> {
        Ok(self.shared.store.mail_queue_depth().await?)
    }

    /// Waits until the spool is empty and nothing is in flight, at most
    /// `timeout`; true if it got there. For tests and shutdown.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            self.shared.wake.notify_one();
            let idle = *lock(&self.shared.in_flight) == 0;
            if idle && matches!(self.shared.store.mail_queue_depth().await, Ok(0)) {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Mailer {
    /// Stops the delivery thread after the deliveries in progress, as
    /// dropping does, without waiting: a reload that replaced the mail
    /// settings stops the old mailer this way (the spool stays, the new
    /// mailer sends what is in it). Mails sent to a stopped mailer are
    /// refused ([`MailError::Closed`]).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }

    /// Whether the delivery thread has ended.
    pub fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for Mailer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            // Deliveries in progress are bounded by the attempt timeout.
            let _ = t.join();
        }
    }
}

#[async_trait]
impl MailQueue for Mailer {
    async fn send(&self, mail: Mail) -> Result<(), MailError> {
        let shared = &self.shared;
        if shared.stop.load(Ordering::Acquire) {
            return Err(MailError::Closed);
        }
        // Checked now, so that a mail that can never be sent is refused at once.
        let (_, to_domain) = build_message(&shared.from, &shared.id_domain, mail.clone())?;
        if shared.store.mail_queue_depth().await? >= self.queue_size {
            shared.counts.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::mail(crate::metrics::MailResult::Dropped);
            tracing::warn!(to_domain = %to_domain, "mail queue is full, mail refused");
            return Err(MailError::QueueFull);
        }
        let plain = serde_json::to_vec(&mail).map_err(|e| MailError::Invalid(e.to_string()))?;
        let sealed = shared.sealer.seal(&plain);
        let id = shared.store.enqueue_mail(sealed, &to_domain, shared.clock.now()).await?;
        shared.store.flush().await?;
        shared.counts.queued.fetch_add(1, Ordering::Relaxed);
        crate::metrics::mail(crate::metrics::MailResult::Queued);
        shared.wake.notify_one();
        tracing::debug!(mail_id = id, "mail queued");
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Building messages

static MESSAGE_SEQ: AtomicU64 = AtomicU64::new(0);

fn build_message(from: &Mailbox, id_domain: &str, mail: Mail) -> Result<(Message, String), MailError> {
    let to: Mailbox = mail.to.parse().map_err(|e| MailError::Invalid(format!("recipient address: {e}")))?;
    if mail.subject.contains(['\r', '\n']) {
        return Err(MailError::Invalid("line break in the subject".into()));
    }
    let to_domain = to.email.domain().to_owned();
    let builder = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(mail.subject)
        .message_id(Some(message_id(id_domain)))
        .date_now();
    let message = match mail.html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(mail.text, html)),
        // `singlepart` (unlike `body`) also sets `MIME-Version: 1.0`.
        None => builder.singlepart(SinglePart::plain(mail.text)),
    }
    .map_err(|e| MailError::Invalid(e.to_string()))?;
    Ok((message, to_domain))
}

/// `<nanos.seq.pid@domain>`: unique per process and time, no randomness needed.
fn message_id(domain: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let seq = MESSAGE_SEQ.fetch_add(1, Ordering::Relaxed);
    format!("<{nanos}.{seq}.{}@{domain}>", std::process::id())
}

// ---------------------------------------------------------------------------
// Transports

/// What the worker thread builds its transport from.
enum Plan {
    Smtp(lettre::transport::smtp::AsyncSmtpTransportBuilder),
    Outbox(PathBuf),
}

fn describe(t: &MailTransport) -> String {
    match t {
        MailTransport::Smtp(s) => format!("smtp://{}:{} ({:?})", s.host, s.port, s.tls),
        MailTransport::Outbox(dir) => format!("outbox {}", dir.display()),
    }
}

fn attempt_timeout(smtp: &SmtpConfig) -> Duration {
    smtp.timeout.saturating_mul(ATTEMPT_TIMEOUT_FACTOR).max(Duration::from_secs(1))
}

fn smtp_builder(smtp: &SmtpConfig) -> Result<lettre::transport::smtp::AsyncSmtpTransportBuilder, MailError> {
    if smtp.host.trim().is_empty() {
        return Err(MailError::Invalid("SMTP host is empty".into()));
    }
    let tls_error = |e: lettre::transport::smtp::Error| MailError::Transport(format!("SMTP TLS setup for {}: {e}", smtp.host));
    let builder = match smtp.tls {
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str()),
        SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host).map_err(tls_error)?,
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host).map_err(tls_error)?,
    };
    let builder = builder.port(smtp.port).timeout(Some(smtp.timeout)).pool_config(PoolConfig::new().max_size(MAX_PARALLEL as u32));
    match (&smtp.username, &smtp.password) {
        (Some(user), Some(password)) => Ok(builder.credentials(Credentials::new(user.clone(), password.clone()))),
        (None, None) => Ok(builder),
        _ => Err(MailError::Invalid("SMTP username and password must be given together".into())),
    }
}

/// A pooled SMTP transport or the outbox. When an SMTP attempt runs into
/// the overall timeout its connection is in an unknown state; the whole
/// pool is then replaced so that the connection is never reused.
enum Transport {
    Smtp {
        builder: lettre::transport::smtp::AsyncSmtpTransportBuilder,
        current: Mutex<AsyncSmtpTransport<Tokio1Executor>>,
    },
    Outbox { files: AsyncFileTransport<Tokio1Executor>, dir: PathBuf },
}

/// A failed delivery attempt. `permanent`: the server rejected the mail (5xx); retrying is useless.
struct Failure {
    error: String,
    permanent: bool,
}

impl Failure {
    fn transient(error: impl Into<String>) -> Failure {
        Failure { error: error.into(), permanent: false }
    }
}

impl Transport {
    /// Must run inside the worker's runtime: the lettre pool spawns its housekeeping task.
    fn build(plan: Plan) -> Transport {
        match plan {
            Plan::Smtp(builder) => Transport::Smtp { current: Mutex::new(builder.clone().build()), builder },
            Plan::Outbox(dir) => Transport::Outbox { files: AsyncFileTransport::new(&dir), dir },
        }
    }

    async fn deliver(&self, message: &Message, attempt: Duration) -> Result<(), Failure> {
        let formatted = message.formatted();
        match self {
            Transport::Smtp { builder, current } => {
                let transport = lock(current).clone();
                match tokio::time::timeout(attempt, transport.send_raw(message.envelope(), &formatted)).await {
                    Ok(Ok(_response)) => Ok(()),
                    Ok(Err(e)) => Err(Failure { error: e.to_string(), permanent: e.is_permanent() }),
                    Err(_elapsed) => {
                        let old = std::mem::replace(&mut *lock(current), builder.clone().build());
                        drop(old);
                        Err(Failure::transient(format!("SMTP server did not complete the delivery within {attempt:?}")))
                    }
                }
            }
            Transport::Outbox { files, dir } => match tokio::time::timeout(attempt, files.send_raw(message.envelope(), &formatted)).await {
                Ok(Ok(id)) => {
                    // Only the owner may read a mail (it may carry a reset link).
                    use std::os::unix::fs::PermissionsExt;
                    let path = dir.join(format!("{id}.eml"));
                    tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                        .await
                        .map_err(|e| Failure::transient(format!("outbox {}: {e}", path.display())))
                }
                Ok(Err(e)) => Err(Failure::transient(format!("outbox: {e}"))),
                Err(_elapsed) => Err(Failure::transient("outbox write timed out")),
            },
        }
    }
}

/// Creates the outbox directory (mode 0700) if it is missing.
fn prepare_outbox(dir: &Path) -> Result<(), MailError> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(MailError::Transport(format!("outbox {} is not a directory", dir.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir).map_err(|e| MailError::Transport(format!("cannot create outbox {}: {e}", dir.display())))
        }
        Err(e) => Err(MailError::Transport(format!("outbox {}: {e}", dir.display()))),
    }
}

// ---------------------------------------------------------------------------
// The worker thread

fn worker_main(plan: Plan, attempt: Duration, shared: Arc<Shared>, ready: std::sync::mpsc::SyncSender<Result<(), MailError>>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(MailError::Transport(format!("cannot start the mail runtime: {e}"))));
            return;
        }
    };
    runtime.block_on(async move {
        let transport = Arc::new(Transport::build(plan));
        let _ = ready.send(Ok(()));
        run(Arc::clone(&transport), shared, attempt).await;
        // Dropped inside the runtime: the lettre pool spawns its shutdown on drop.
        drop(transport);
        tokio::task::yield_now().await;
    });
    tracing::debug!("mail thread stopped");
}

async fn run(transport: Arc<Transport>, shared: Arc<Shared>, attempt: Duration) {
    let parallel = Arc::new(Semaphore::new(MAX_PARALLEL));
    let mut tasks = JoinSet::new();
    while !shared.stop.load(Ordering::Acquire) {
        let free = parallel.available_permits();
        if free > 0 {
            let now = shared.clock.now();
            match shared.store.claim_mails(now, now.saturating_add(shared.lease), free).await {
                Ok(mails) => {
                    for m in mails {
                        let Ok(permit) = Arc::clone(&parallel).acquire_owned().await else { break };
                        *lock(&shared.in_flight) += 1;
                        let (transport, shared) = (Arc::clone(&transport), Arc::clone(&shared));
                        tasks.spawn(async move {
                            deliver_one(&transport, &shared, m, attempt).await;
                            *lock(&shared.in_flight) -= 1;
                            drop(permit);
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "mail spool unavailable"),
            }
        }
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            Some(done) = tasks.join_next(), if !tasks.is_empty() => log_join(done),
        }
    }
    // Stopping: finish what is in flight (each bounded by its attempt timeout).
    while let Some(done) = tasks.join_next().await {
        log_join(done);
    }
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "mail delivery task ended abnormally");
    }
}

/// Delay after the `attempt`-th failed attempt: 1 s, 2 s, 4 s, … capped at 60 s.
fn backoff(attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
    FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

/// What happens to a mail after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    GiveUp,
    RetryAt(UnixTime),
}

fn after_failure(attempts: u32, permanent: bool, max_attempts: u32, now: UnixTime) -> Next {
    if permanent || attempts >= max_attempts {
        Next::GiveUp
    } else {
        let wait = i64::try_from(backoff(attempts).as_secs()).unwrap_or(i64::MAX);
        Next::RetryAt(now.saturating_add(wait))
    }
}

/// One attempt at one claimed mail, and what the spool records of it.
async fn deliver_one(transport: &Transport, shared: &Shared, m: QueuedMail, attempt_timeout: Duration) {
    let attempts = m.attempts.saturating_add(1);
    if attempts > 1 {
        shared.counts.retried.fetch_add(1, Ordering::Relaxed);
        crate::metrics::mail(crate::metrics::MailResult::Retried);
    }
    let mail: Option<Mail> = shared.sealer.open(&m.sealed).and_then(|plain| serde_json::from_slice(&plain).ok());
    let result = match mail.map(|mail| build_message(&shared.from, &shared.id_domain, mail)) {
        // A mail sealed under another storage key, or damaged: never sendable.
        None => Err(Failure { error: "the spooled mail cannot be opened".into(), permanent: true }),
        Some(Err(e)) => Err(Failure { error: e.to_string(), permanent: true }),
        Some(Ok((msg, _))) => transport.deliver(&msg, attempt_timeout).await,
    };
    let recorded = match result {
        Ok(()) => {
            shared.counts.sent.fetch_add(1, Ordering::Relaxed);
            crate::metrics::mail(crate::metrics::MailResult::Sent);
            tracing::info!(mail_id = m.id, to_domain = %m.to_domain, attempt = attempts, "mail delivered");
            shared.store.finish_mail(m.id).await
        }
        Err(f) => match after_failure(attempts, f.permanent, shared.max_attempts, shared.clock.now()) {
            Next::GiveUp => {
                shared.counts.failed.fetch_add(1, Ordering::Relaxed);
                crate::metrics::mail(crate::metrics::MailResult::Failed);
                tracing::error!(mail_id = m.id, to_domain = %m.to_domain, attempts, error = %f.error, "mail delivery failed, giving up");
                shared.store.finish_mail(m.id).await
            }
            Next::RetryAt(at) => {
                tracing::warn!(mail_id = m.id, to_domain = %m.to_domain, attempt = attempts, retry_at = at, error = %f.error, "mail delivery failed, will retry");
                shared.store.retry_mail(m.id, attempts, at).await
            }
        },
    };
    if let Err(e) = recorded {
        // The lease runs out and the mail is tried again: at most a duplicate.
        tracing::warn!(mail_id = m.id, error = %e, "could not record a mail delivery in the spool");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let secs: Vec<u64> = (1..=9).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn failures_are_retried_until_the_attempts_are_used_up() {
        assert_eq!(after_failure(1, false, 3, 100), Next::RetryAt(101));
        assert_eq!(after_failure(2, false, 3, 100), Next::RetryAt(102));
        assert_eq!(after_failure(3, false, 3, 100), Next::GiveUp);
        assert_eq!(after_failure(1, true, 3, 100), Next::GiveUp);
    }

    #[test]
    fn debug_output_hides_subject_and_body() {
        let mail = Mail {
            to: "anna@kunde.example".into(),
            subject: "Passwort zurücksetzen".into(),
            text: "https://portal.example.at/_riegel/reset/abc".into(),
            html: Some("<a href=\"https://portal.example.at/_riegel/reset/abc\">x</a>".into()),
        };
        let shown = format!("{mail:?}");
        assert!(shown.contains("anna@kunde.example"));
        assert!(!shown.contains("reset") && !shown.contains("Passwort"), "{shown}");
    }

    #[test]
    fn messages_are_checked_before_they_are_accepted() {
        let from: Mailbox = "Portal <portal@example.at>".parse().expect("from");
        let ok = Mail { to: "Anna Müller <anna@kunde.example>".into(), subject: "Hallo".into(), text: "x".into(), html: None };
        let (msg, domain) = build_message(&from, "example.at", ok.clone()).expect("valid");
        assert_eq!(domain, "kunde.example");
        let raw = String::from_utf8(msg.formatted()).expect("utf8");
        assert!(raw.contains("Message-ID: <") && raw.contains("@example.at>"), "{raw}");
        assert!(raw.is_ascii(), "not 7-bit clean");
        let bad_to = Mail { to: "no-at-sign".into(), ..ok.clone() };
        assert!(matches!(build_message(&from, "example.at", bad_to), Err(MailError::Invalid(_))));
        let injected = Mail { subject: "Hallo\r\nBcc: evil@example.com".into(), ..ok };
        assert!(matches!(build_message(&from, "example.at", injected), Err(MailError::Invalid(_))));
    }
}
