//! Outgoing mail — the only module of riegel that knows `lettre`.
//!
//! Request handlers hold a [`MailQueue`]; [`MailQueue::send`] only builds the
//! message and puts it into a bounded queue, it never touches the network.
//! [`Mailer`] owns one background thread (with its own current-thread tokio
//! runtime) that delivers the queue over SMTP or into an outbox directory
//! (one `.eml` file per mail), retrying failures with exponential backoff.
//! Subjects and bodies are never logged: they carry password-reset links.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::config::{MailConfig, MailTransport, SmtpConfig, SmtpTls};

/// Delay before the first retry; doubled for every further one.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Upper bound of the retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Deliveries that talk to the SMTP server at the same time (and pooled connections).
const MAX_PARALLEL: usize = 4;
/// Largest accepted `queue_size` (each queued mail holds a built message in memory).
const MAX_QUEUE_SIZE: usize = 1_000_000;
/// lettre only bounds the TCP connect by the configured timeout, not the SMTP
/// dialogue; one whole delivery attempt is bounded by this many timeouts.
const ATTEMPT_TIMEOUT_FACTOR: u32 = 3;

/// One mail to send. `text` is the plain-text body, `html` an optional HTML alternative.
#[derive(Clone, PartialEq, Eq)]
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
            .field(
                "html",
                &self.html.as_ref().map(|h| format!("<{} bytes>", h.len())),
            )
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
}

/// What request handlers hold. `send` never blocks and never waits for the network.
pub trait MailQueue: Send + Sync + 'static {
    fn send(&self, mail: Mail) -> Result<(), MailError>;
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

/// The mail queue and its delivery thread. Dropping it closes the queue; the
/// thread finishes what was accepted (including pending retries) and exits.
pub struct Mailer {
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    from: Mailbox,
    /// Domain part of the generated `Message-ID`s (the sender's domain).
    id_domain: String,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Mailer {
    /// Validates `from` and the transport, starts ONE background std::thread that owns a
    /// current-thread tokio runtime and the transport, and returns at once.
    pub fn start(cfg: &MailConfig) -> Result<Mailer, MailError> {
        let from: Mailbox = cfg
            .from
            .parse()
            .map_err(|e| MailError::Invalid(format!("sender address {:?}: {e}", cfg.from)))?;
        if cfg.queue_size == 0 || cfg.queue_size > MAX_QUEUE_SIZE {
            return Err(MailError::Invalid(format!(
                "queue_size must be between 1 and {MAX_QUEUE_SIZE}, not {}",
                cfg.queue_size
            )));
        }
        let plan = match &cfg.transport {
            MailTransport::Smtp(smtp) => Plan::Smtp(smtp_builder(smtp)?, attempt_timeout(smtp)),
            MailTransport::Outbox(dir) => {
                prepare_outbox(dir)?;
                Plan::Outbox(dir.clone())
            }
        };
        let max_attempts = cfg.max_attempts.max(1);
        let shared = Arc::new(Shared::new(cfg.queue_size));
        let (tx, rx) = mpsc::channel(cfg.queue_size);
        // The runtime is created (and later dropped) on the mail thread itself, so
        // `start` may be called from inside another runtime without trouble.
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let worker_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("riegel-mail".into())
            .spawn(move || worker_main(plan, rx, worker_shared, max_attempts, ready_tx))
            .map_err(|e| MailError::Transport(format!("cannot start the mail thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(MailError::Closed),
        }
        let id_domain = from.email.domain().to_owned();
        tracing::info!(transport = %describe(&cfg.transport), "mailer started");
        Ok(Mailer {
            tx,
            shared,
            from,
            id_domain,
        })
    }

    pub fn stats(&self) -> MailStats {
        let s = &self.shared;
        MailStats {
            queued: s.queued.load(Ordering::Relaxed),
            sent: s.sent.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            retried: s.retried.load(Ordering::Relaxed),
        }
    }

    /// Waits (blocking, bounded by `timeout`) until the queue is empty and nothing is in flight; true if drained. For tests and shutdown.
    pub fn drain(&self, timeout: Duration) -> bool {
        // `None`: the timeout is too large to be a point in time, i.e. wait forever.
        let deadline = Instant::now().checked_add(timeout);
        let mut pending = lock(&self.shared.pending);
        while *pending > 0 {
            let wait = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return false,
                },
                None => Duration::from_secs(3600),
            };
            pending = self
                .shared
                .idle
                .wait_timeout(pending, wait)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
        true
    }
}

impl MailQueue for Mailer {
    fn send(&self, mail: Mail) -> Result<(), MailError> {
        let (message, to_domain) = build_message(&self.from, &self.id_domain, mail)?;
        let shared = &self.shared;
        let Some(ticket) = Ticket::take(shared) else {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(to_domain = %to_domain, "mail queue is full, mail dropped");
            return Err(MailError::QueueFull);
        };
        let id = MAIL_SEQ.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            id,
            queued_at: unix_millis(),
            to_domain,
            message,
            _ticket: ticket,
        };
        // The ticket bounds the queue; the channel has the same capacity, so `Full`
        // cannot really happen. A rejected job drops its ticket and frees the slot.
        match self.tx.try_send(job) {
            Ok(()) => {
                shared.queued.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(mail_id = id, "mail queued");
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(job)) => {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(to_domain = %job.to_domain, "mail queue is full, mail dropped");
                Err(MailError::QueueFull)
            }
            Err(mpsc::error::TrySendError::Closed(job)) => {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(to_domain = %job.to_domain, "mailer has stopped, mail dropped");
                Err(MailError::Closed)
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Shared state between the handle and the worker

struct Shared {
    /// Mails accepted and not yet finished (queued, in flight or waiting for a retry).
    pending: Mutex<usize>,
    idle: Condvar,
    capacity: usize,
    queued: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retried: AtomicU64,
}

impl Shared {
    fn new(capacity: usize) -> Shared {
        Shared {
            pending: Mutex::new(0),
            idle: Condvar::new(),
            capacity,
            queued: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            retried: AtomicU64::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One slot of the bounded queue, held by a mail until it is finished. Freed on drop,
/// whatever happens to the mail (delivered, given up, rejected by the channel, or a
/// task torn down), so `pending` can never leak.
struct Ticket(Arc<Shared>);

impl Ticket {
    fn take(shared: &Arc<Shared>) -> Option<Ticket> {
        let mut pending = lock(&shared.pending);
        if *pending >= shared.capacity {
            return None;
        }
        *pending += 1;
        Some(Ticket(Arc::clone(shared)))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut pending = lock(&self.0.pending);
        *pending = pending.saturating_sub(1);
        if *pending == 0 {
            self.0.idle.notify_all();
        }
    }
}

struct Job {
    /// Unique in the process; names the mail in logs and outbox files.
    id: u64,
    /// Unix millis when the mail was accepted (outbox files sort by it).
    queued_at: u128,
    to_domain: String,
    message: Message,
    _ticket: Ticket,
}

// ---------------------------------------------------------------------------
// Building messages

static MESSAGE_SEQ: AtomicU64 = AtomicU64::new(0);
static MAIL_SEQ: AtomicU64 = AtomicU64::new(1);

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn build_message(
    from: &Mailbox,
    id_domain: &str,
    mail: Mail,
) -> Result<(Message, String), MailError> {
    let to: Mailbox = mail
        .to
        .parse()
        .map_err(|e| MailError::Invalid(format!("recipient address: {e}")))?;
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
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seq = MESSAGE_SEQ.fetch_add(1, Ordering::Relaxed);
    format!("<{nanos}.{seq}.{}@{domain}>", std::process::id())
}

// ---------------------------------------------------------------------------
// Transports

/// What the worker thread builds its transport from.
enum Plan {
    Smtp(lettre::transport::smtp::AsyncSmtpTransportBuilder, Duration),
    Outbox(PathBuf),
}

fn describe(t: &MailTransport) -> String {
    match t {
        MailTransport::Smtp(s) => format!("smtp://{}:{} ({:?})", s.host, s.port, s.tls),
        MailTransport::Outbox(dir) => format!("outbox {}", dir.display()),
    }
}

fn attempt_timeout(smtp: &SmtpConfig) -> Duration {
    smtp.timeout
        .saturating_mul(ATTEMPT_TIMEOUT_FACTOR)
        .max(Duration::from_secs(1))
}

fn smtp_builder(
    smtp: &SmtpConfig,
) -> Result<lettre::transport::smtp::AsyncSmtpTransportBuilder, MailError> {
    if smtp.host.trim().is_empty() {
        return Err(MailError::Invalid("SMTP host is empty".into()));
    }
    let tls_error = |e: lettre::transport::smtp::Error| {
        MailError::Transport(format!("SMTP TLS setup for {}: {e}", smtp.host))
    };
    let builder = match smtp.tls {
        SmtpTls::None => {
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str())
        }
        SmtpTls::StartTls => {
            AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host).map_err(tls_error)?
        }
        SmtpTls::Tls => {
            AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host).map_err(tls_error)?
        }
    };
    let builder = builder
        .port(smtp.port)
        .timeout(Some(smtp.timeout))
        .pool_config(PoolConfig::new().max_size(MAX_PARALLEL as u32));
    match (&smtp.username, &smtp.password) {
        (Some(user), Some(password)) => {
            Ok(builder.credentials(Credentials::new(user.clone(), password.clone())))
        }
        (None, None) => Ok(builder),
        _ => Err(MailError::Invalid(
            "SMTP username and password must be given together".into(),
        )),
    }
}

/// A pooled SMTP transport. When an attempt runs into the overall timeout its
/// connection is in an unknown state; the whole pool is then replaced so that the
/// connection is never reused.
struct Smtp {
    builder: lettre::transport::smtp::AsyncSmtpTransportBuilder,
    current: Mutex<AsyncSmtpTransport<Tokio1Executor>>,
    attempt_timeout: Duration,
}

enum Transport {
    Smtp(Box<Smtp>),
    Outbox(PathBuf),
}

/// A failed delivery attempt. `permanent`: the server rejected the mail (5xx); retrying is useless.
struct Failure {
    error: String,
    permanent: bool,
}

impl Failure {
    fn transient(error: String) -> Failure {
        Failure {
            error,
            permanent: false,
        }
    }
}

impl Transport {
    /// Must run inside the worker's runtime: the lettre pool spawns its housekeeping task.
    fn build(plan: Plan) -> Transport {
        match plan {
            Plan::Smtp(builder, attempt_timeout) => Transport::Smtp(Box::new(Smtp {
                current: Mutex::new(builder.clone().build()),
                builder,
                attempt_timeout,
            })),
            Plan::Outbox(dir) => Transport::Outbox(dir),
        }
    }

    async fn deliver(&self, job: &Job) -> Result<(), Failure> {
        match self {
            Transport::Smtp(smtp) => smtp.deliver(&job.message).await,
            Transport::Outbox(dir) => {
                let dir = dir.clone();
                let bytes = job.message.formatted();
                let stem = format!("{:013}-{:06}", job.queued_at, job.id);
                match tokio::task::spawn_blocking(move || write_eml(&dir, &stem, &bytes)).await {
                    Ok(Ok(_path)) => Ok(()),
                    Ok(Err(e)) => Err(Failure::transient(format!("outbox: {e}"))),
                    Err(e) => Err(Failure::transient(format!("outbox writer: {e}"))),
                }
            }
        }
    }
}

impl Smtp {
    async fn deliver(&self, message: &Message) -> Result<(), Failure> {
        let transport = lock(&self.current).clone();
        let formatted = message.formatted();
        let attempt = transport.send_raw(message.envelope(), &formatted);
        match tokio::time::timeout(self.attempt_timeout, attempt).await {
            Ok(Ok(_response)) => Ok(()),
            Ok(Err(e)) => Err(Failure {
                error: e.to_string(),
                permanent: e.is_permanent(),
            }),
            Err(_elapsed) => {
                let fresh = self.builder.clone().build();
                let old = std::mem::replace(&mut *lock(&self.current), fresh);
                drop(old);
                Err(Failure::transient(format!(
                    "SMTP server did not complete the delivery within {:?}",
                    self.attempt_timeout
                )))
            }
        }
    }
}

/// Creates the outbox directory (mode 0700) if it is missing.
fn prepare_outbox(dir: &Path) -> Result<(), MailError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(MailError::Transport(format!(
            "outbox {} is not a directory",
            dir.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut builder = fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir).map_err(|e| {
                MailError::Transport(format!("cannot create outbox {}: {e}", dir.display()))
            })
        }
        Err(e) => Err(MailError::Transport(format!(
            "outbox {}: {e}",
            dir.display()
        ))),
    }
}

/// Writes one mail as `<stem>.eml` (stem = `<unix-millis>-<seq>` of its acceptance,
/// so files sort in sending order) with mode 0600, atomically: a hidden `.tmp` file
/// in the same directory, synced, then renamed.
fn write_eml(dir: &Path, stem: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    let tmp = dir.join(format!(".{stem}.{}.tmp", std::process::id()));
    let target = dir.join(format!("{stem}.eml"));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    let written = (|| {
        #[cfg(unix)]
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &target)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(target)
}

// ---------------------------------------------------------------------------
// The worker thread

fn worker_main(
    plan: Plan,
    rx: mpsc::Receiver<Job>,
    shared: Arc<Shared>,
    max_attempts: u32,
    ready: std::sync::mpsc::SyncSender<Result<(), MailError>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(MailError::Transport(format!(
                "cannot start the mail runtime: {e}"
            ))));
            return;
        }
    };
    runtime.block_on(async move {
        let transport = Arc::new(Transport::build(plan));
        let _ = ready.send(Ok(()));
        run(rx, Arc::clone(&transport), shared, max_attempts).await;
        // Dropped inside the runtime: the lettre pool spawns its shutdown on drop.
        drop(transport);
        tokio::task::yield_now().await;
    });
    tracing::debug!("mail thread stopped");
}

async fn run(
    mut rx: mpsc::Receiver<Job>,
    transport: Arc<Transport>,
    shared: Arc<Shared>,
    max_attempts: u32,
) {
    let parallel = Arc::new(Semaphore::new(MAX_PARALLEL));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            job = rx.recv() => match job {
                Some(job) => {
                    tasks.spawn(deliver_with_retries(
                        job,
                        Arc::clone(&transport),
                        Arc::clone(&parallel),
                        Arc::clone(&shared),
                        max_attempts,
                    ));
                }
                None => break,
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => log_join(done),
        }
    }
    // The Mailer is gone: finish what was accepted, then stop.
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
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

async fn deliver_with_retries(
    job: Job,
    transport: Arc<Transport>,
    parallel: Arc<Semaphore>,
    shared: Arc<Shared>,
    max_attempts: u32,
) {
    let mut attempt: u32 = 1;
    loop {
        if attempt > 1 {
            shared.retried.fetch_add(1, Ordering::Relaxed);
        }
        let result = {
            let _permit = parallel.acquire().await.ok();
            transport.deliver(&job).await
        };
        match result {
            Ok(()) => {
                shared.sent.fetch_add(1, Ordering::Relaxed);
                tracing::info!(mail_id = job.id, to_domain = %job.to_domain, attempt, "mail delivered");
                return;
            }
            Err(failure) if failure.permanent || attempt >= max_attempts => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    mail_id = job.id,
                    to_domain = %job.to_domain,
                    attempts = attempt,
                    error = %failure.error,
                    "mail delivery failed, giving up"
                );
                return;
            }
            Err(failure) => {
                let delay = backoff(attempt);
                tracing::warn!(
                    mail_id = job.id,
                    to_domain = %job.to_domain,
                    attempt,
                    retry_in = ?delay,
                    error = %failure.error,
                    "mail delivery failed, will retry"
                );
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::{TcpListener, TcpStream};

    const LINK: &str =
        "https://portal.example.at/_riegel/reset/Zq3xV9kPwL2mN8rT4yB6cD1fG7hJ0sA5eU-_QwErTyUiOpAsDfGhJk";
    const SUBJECT: &str = "Passwort zurücksetzen – Portal";

    // ---- an in-process SMTP server -------------------------------------

    #[derive(Debug, Clone, Default)]
    struct Received {
        from: String,
        to: Vec<String>,
        data: Vec<u8>,
    }

    /// Starts a real (minimal, std-only) SMTP server on a free loopback port; lettre
    /// talks the full SMTP dialogue to it over TCP. (`mailin-embedded` 0.8 does not
    /// build without one of its TLS features, so it is not used.)
    fn smtp_server() -> (u16, Arc<Mutex<Vec<Received>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let store = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&store);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let sink = Arc::clone(&sink);
                std::thread::spawn(move || {
                    let _ = smtp_session(conn, &sink);
                });
            }
        });
        (port, store)
    }

    fn between_angles(line: &str) -> String {
        let start = line.find('<').map_or(0, |i| i + 1);
        let end = line[start..].find('>').map_or(line.len(), |i| start + i);
        line[start..end].to_owned()
    }

    fn smtp_session(stream: TcpStream, store: &Mutex<Vec<Received>>) -> io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut out = stream;
        out.write_all(b"220 smtp.test ESMTP test sink\r\n")?;
        let mut current = Received::default();
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                return Ok(());
            }
            let text = String::from_utf8_lossy(&line).trim_end().to_owned();
            let verb = text
                .split([' ', ':'])
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            let reply: &[u8] = match verb.as_str() {
                "EHLO" => b"250-smtp.test\r\n250 8BITMIME\r\n",
                "HELO" | "NOOP" => b"250 OK\r\n",
                "RSET" => {
                    current = Received::default();
                    b"250 OK\r\n"
                }
                "MAIL" => {
                    current = Received {
                        from: between_angles(&text),
                        ..Received::default()
                    };
                    b"250 OK\r\n"
                }
                "RCPT" => {
                    current.to.push(between_angles(&text));
                    b"250 OK\r\n"
                }
                "DATA" => {
                    out.write_all(b"354 end with <CRLF>.<CRLF>\r\n")?;
                    loop {
                        line.clear();
                        if reader.read_until(b'\n', &mut line)? == 0 {
                            return Ok(());
                        }
                        if line == b".\r\n" {
                            break;
                        }
                        let unstuffed = line.strip_prefix(b".").unwrap_or(&line);
                        current.data.extend_from_slice(unstuffed);
                    }
                    store.lock().unwrap().push(std::mem::take(&mut current));
                    b"250 OK queued\r\n"
                }
                "QUIT" => {
                    out.write_all(b"221 bye\r\n")?;
                    return Ok(());
                }
                _ => b"502 command not implemented\r\n",
            };
            out.write_all(reply)?;
        }
    }

    /// A port on which nothing listens.
    fn dead_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    fn smtp_config(port: u16, queue_size: usize, max_attempts: u32) -> MailConfig {
        MailConfig {
            from: "Portal <portal@example.at>".into(),
            transport: MailTransport::Smtp(SmtpConfig {
                host: "127.0.0.1".into(),
                port,
                tls: SmtpTls::None,
                username: None,
                password: None,
                timeout: Duration::from_secs(2),
            }),
            queue_size,
            max_attempts,
        }
    }

    fn reset_mail(to: &str) -> Mail {
        Mail {
            to: to.into(),
            subject: SUBJECT.into(),
            text: format!(
                "Hallo Jürgen,\n\nÖffnen Sie diesen Link, um ein neues Passwort zu setzen:\n{LINK}\n\n\
                 Prüfen Sie bitte auch Ihren Spam-Ordner. Grüße, Ihr Portal-Team\n"
            ),
            html: None,
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        std::env::temp_dir().join(format!("riegel-mail-{name}-{}-{nanos}", std::process::id()))
    }

    // ---- minimal MIME decoding, so the tests check what a mail client shows ----

    fn b64(s: &str) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0u32);
        for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
            let v = ALPHABET.iter().position(|&a| a == c).expect("base64 digit") as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        out
    }

    fn qp(s: &str) -> Vec<u8> {
        let s = s.replace("=\r\n", "").replace("=\n", "");
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'=' && i + 2 < b.len() {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).expect("qp escape"));
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    /// RFC 2047 encoded words (`=?utf-8?b?...?=` / `?q?`).
    fn decode_words(value: &str) -> String {
        let mut out = String::new();
        let mut prev_encoded = false;
        for (i, token) in value.split_whitespace().enumerate() {
            let decoded = token
                .strip_prefix("=?")
                .and_then(|t| t.strip_suffix("?="))
                .map(|inner| {
                    let mut parts = inner.splitn(3, '?');
                    let _charset = parts.next().unwrap();
                    let enc = parts.next().unwrap().to_ascii_lowercase();
                    let text = parts.next().unwrap();
                    let bytes = if enc == "b" {
                        b64(text)
                    } else {
                        qp(&text.replace('_', " "))
                    };
                    String::from_utf8(bytes).unwrap()
                });
            match decoded {
                Some(d) => {
                    if i > 0 && !prev_encoded {
                        out.push(' ');
                    }
                    out.push_str(&d);
                    prev_encoded = true;
                }
                None => {
                    if i > 0 {
                        out.push(' ');
                    }
                    out.push_str(token);
                    prev_encoded = false;
                }
            }
        }
        out
    }

    /// Headers (unfolded, names lowercased) and the raw body of one entity.
    fn split_entity(raw: &str) -> (Vec<(String, String)>, String) {
        let (head, body) = raw.split_once("\r\n\r\n").expect("header/body separator");
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                let last = headers.last_mut().expect("continuation line");
                last.1.push(' ');
                last.1.push_str(line.trim());
            } else if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        (headers, body.to_owned())
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn decode_body(headers: &[(String, String)], body: &str) -> String {
        let bytes = match header(headers, "content-transfer-encoding")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("quoted-printable") => qp(body),
            Some("base64") => b64(body),
            _ => body.as_bytes().to_vec(),
        };
        String::from_utf8(bytes).unwrap().replace("\r\n", "\n")
    }

    /// Decoded parts of a (possibly multipart) message: (content type, text).
    fn parts(raw: &str) -> Vec<(String, String)> {
        let (headers, body) = split_entity(raw);
        let ctype = header(&headers, "content-type")
            .unwrap_or("text/plain")
            .to_owned();
        if !ctype.starts_with("multipart/") {
            return vec![(ctype.clone(), decode_body(&headers, &body))];
        }
        let boundary = ctype
            .split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))
            .unwrap()
            .trim_matches('"')
            .to_owned();
        body.split(&format!("--{boundary}"))
            .skip(1)
            .filter(|p| !p.starts_with("--"))
            .flat_map(|p| parts(p.trim_start_matches("\r\n")))
            .collect()
    }

    fn wait_for(store: &Arc<Mutex<Vec<Received>>>, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = store.lock().unwrap().clone();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    // ---- tests -----------------------------------------------------------

    #[test]
    fn smtp_delivers_utf8_plain_mail() {
        let (port, store) = smtp_server();
        let mailer = Mailer::start(&smtp_config(port, 10, 3)).unwrap();
        mailer
            .send(reset_mail("Anna Müller <anna@kunde.example>"))
            .unwrap();
        assert!(
            mailer.drain(Duration::from_secs(5)),
            "not drained: {:?}",
            mailer.stats()
        );

        let got = wait_for(&store, 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].from, "portal@example.at");
        assert_eq!(got[0].to, vec!["anna@kunde.example".to_string()]);
        let raw = String::from_utf8(got[0].data.clone()).unwrap();
        let (headers, _) = split_entity(&raw);
        assert_eq!(decode_words(header(&headers, "subject").unwrap()), SUBJECT);
        assert!(header(&headers, "from")
            .unwrap()
            .contains("<portal@example.at>"));
        assert!(header(&headers, "to")
            .unwrap()
            .contains("<anna@kunde.example>"));
        let id = header(&headers, "message-id").unwrap();
        assert!(id.starts_with('<') && id.ends_with("@example.at>"), "{id}");
        assert!(header(&headers, "date").is_some());
        assert_eq!(header(&headers, "mime-version"), Some("1.0"));
        // The raw subject must be encoded (7-bit clean header), not raw UTF-8.
        assert!(raw.is_ascii(), "message on the wire is not 7-bit clean");

        let parts = parts(&raw);
        assert_eq!(parts.len(), 1);
        assert!(parts[0]
            .0
            .to_ascii_lowercase()
            .starts_with("text/plain; charset=utf-8"));
        assert!(parts[0].1.contains(LINK), "{}", parts[0].1);
        assert!(parts[0].1.contains("Hallo Jürgen,"));
        assert!(parts[0]
            .1
            .contains("Prüfen Sie bitte auch Ihren Spam-Ordner"));

        let stats = mailer.stats();
        assert_eq!(
            stats,
            MailStats {
                queued: 1,
                sent: 1,
                failed: 0,
                dropped: 0,
                retried: 0
            }
        );
    }

    #[test]
    fn smtp_delivers_plain_and_html_alternative() {
        let (port, store) = smtp_server();
        let mailer = Mailer::start(&smtp_config(port, 10, 3)).unwrap();
        let mut mail = reset_mail("anna@kunde.example");
        mail.html = Some(format!(
            "<p>Hallo Jürgen,</p><p><a href=\"{LINK}\">Passwort ändern</a></p>"
        ));
        mailer.send(mail).unwrap();
        // A second mail reuses the pooled connection.
        mailer.send(reset_mail("bernd@kunde.example")).unwrap();
        assert!(mailer.drain(Duration::from_secs(5)));

        let got = wait_for(&store, 2);
        assert_eq!(got.len(), 2);
        let html_mail = got.iter().find(|r| r.to == ["anna@kunde.example"]).unwrap();
        let raw = String::from_utf8(html_mail.data.clone()).unwrap();
        let (headers, _) = split_entity(&raw);
        assert!(header(&headers, "content-type")
            .unwrap()
            .starts_with("multipart/alternative"));
        assert_eq!(header(&headers, "mime-version"), Some("1.0"));
        let parts = parts(&raw);
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert!(parts[0].0.starts_with("text/plain"));
        assert!(parts[0].1.contains(LINK));
        assert!(parts[1].0.starts_with("text/html"));
        assert!(parts[1]
            .1
            .contains(&format!("<a href=\"{LINK}\">Passwort ändern</a>")));
        assert_eq!(mailer.stats().sent, 2);
    }

    #[test]
    fn outbox_writes_private_eml_files_in_order() {
        use std::os::unix::fs::PermissionsExt;
        let base = temp_dir("outbox");
        let dir = base.join("nested").join("outbox");
        let cfg = MailConfig {
            from: "Portal <portal@example.at>".into(),
            transport: MailTransport::Outbox(dir.clone()),
            queue_size: 10,
            max_attempts: 3,
        };
        let mailer = Mailer::start(&cfg).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for i in 0..3 {
            let mut mail = reset_mail(&format!("user{i}@kunde.example"));
            mail.text = format!("Mail {i}: {LINK}");
            mailer.send(mail).unwrap();
        }
        assert!(mailer.drain(Duration::from_secs(5)));

        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        for (i, name) in names.iter().enumerate() {
            assert!(name.ends_with(".eml"), "{name}");
            let (millis, seq) = name.trim_end_matches(".eml").split_once('-').unwrap();
            assert_eq!(millis.len(), 13);
            assert!(millis
                .bytes()
                .chain(seq.bytes())
                .all(|b| b.is_ascii_digit()));
            let path = dir.join(name);
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            let raw = fs::read_to_string(&path).unwrap();
            let (headers, _) = split_entity(&raw);
            assert_eq!(decode_words(header(&headers, "subject").unwrap()), SUBJECT);
            assert!(header(&headers, "to")
                .unwrap()
                .contains(&format!("user{i}@kunde.example")));
            assert!(header(&headers, "from")
                .unwrap()
                .contains("portal@example.at"));
            assert!(header(&headers, "message-id").is_some());
            assert!(header(&headers, "date").is_some());
            let body = &parts(&raw)[0].1;
            assert_eq!(
                body.trim_end(),
                format!("Mail {i}: {LINK}"),
                "files must sort in sending order"
            );
        }
        assert_eq!(mailer.stats().sent, 3);
        fs::remove_dir_all(&base).unwrap();
    }

    /// Runs `f` on its own thread; `None` when it has not returned within
    /// `limit` (a bound for "never returns", not a speed check).
    fn returns_within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(limit).ok()
    }

    #[test]
    fn dead_server_never_slows_send_and_failures_are_counted() {
        // A server that accepts connections and never says a word: a send
        // that waited for the network would wait for the 30 s attempt
        // timeout. All 100 sends return while nothing has been delivered
        // or given up, so none of them waited for the server.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut cfg = smtp_config(silent.local_addr().unwrap().port(), 200, 1);
        if let MailTransport::Smtp(smtp) = &mut cfg.transport {
            smtp.timeout = Duration::from_secs(10);
        }
        let mailer = Arc::new(Mailer::start(&cfg).unwrap());
        let m = Arc::clone(&mailer);
        let sent = returns_within(Duration::from_secs(20), move || {
            (0..100).map(|i| m.send(reset_mail(&format!("user{i}@kunde.example")))).collect::<Vec<_>>()
        })
        .expect("send waited for the silent server");
        assert!(sent.iter().all(Result::is_ok), "{sent:?}");
        let stats = mailer.stats();
        assert_eq!((stats.queued, stats.sent, stats.failed), (100, 0, 0), "{stats:?}");
        drop(silent);

        // A dead port: every mail fails, is retried once after the 1 s
        // backoff and then counted as failed.
        let mailer = Mailer::start(&smtp_config(dead_port(), 200, 2)).unwrap();
        for i in 0..100 {
            mailer.send(reset_mail(&format!("user{i}@kunde.example"))).unwrap();
        }
        assert!(mailer.drain(Duration::from_secs(30)), "not drained: {:?}", mailer.stats());
        assert_eq!(
            mailer.stats(),
            MailStats {
                queued: 100,
                sent: 0,
                failed: 100,
                dropped: 0,
                retried: 100
            }
        );
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let mailer = Mailer::start(&smtp_config(dead_port(), 2, 2)).unwrap();
        let results: Vec<_> = (0..10)
            .map(|i| mailer.send(reset_mail(&format!("user{i}@kunde.example"))))
            .collect();
        // The two accepted mails stay pending for the 1 s backoff, so the rest is refused.
        assert!(results[..2].iter().all(Result::is_ok), "{results:?}");
        assert!(
            results[2..]
                .iter()
                .all(|r| matches!(r, Err(MailError::QueueFull))),
            "{results:?}"
        );
        let stats = mailer.stats();
        assert_eq!((stats.queued, stats.dropped), (2, 8));
        assert!(mailer.drain(Duration::from_secs(5)));
        assert_eq!(mailer.stats().failed, 2);
        // Space again once drained.
        assert!(mailer.send(reset_mail("late@kunde.example")).is_ok());
    }

    #[test]
    fn silent_server_is_bounded_by_the_attempt_timeout() {
        // Accepts TCP connections (kernel backlog) but never says a word.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut cfg = smtp_config(port, 10, 1);
        if let MailTransport::Smtp(smtp) = &mut cfg.transport {
            // One attempt may take three timeouts: 3 s.
            smtp.timeout = Duration::from_secs(1);
        }
        let mailer = Mailer::start(&cfg).unwrap();
        mailer.send(reset_mail("anna@kunde.example")).unwrap();
        // The attempt is still waiting for the server (it cannot end before
        // its 3 s are up) ...
        assert!(!mailer.drain(Duration::from_millis(100)), "cannot have finished yet");
        assert_eq!((mailer.stats().sent, mailer.stats().failed), (0, 0));
        // ... and is given up once they are, not held for ever.
        assert!(mailer.drain(Duration::from_secs(30)), "{:?}", mailer.stats());
        assert_eq!(mailer.stats().failed, 1);
        drop(listener);
    }

    #[tokio::test]
    async fn start_and_drop_inside_a_runtime() {
        let mailer = Mailer::start(&smtp_config(dead_port(), 10, 1)).unwrap();
        mailer.send(reset_mail("anna@kunde.example")).unwrap();
        drop(mailer);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[test]
    fn invalid_input_is_rejected() {
        let mut cfg = smtp_config(dead_port(), 10, 1);
        cfg.from = "not an address".into();
        assert!(matches!(Mailer::start(&cfg), Err(MailError::Invalid(_))));

        let cfg0 = smtp_config(dead_port(), 0, 1);
        assert!(matches!(Mailer::start(&cfg0), Err(MailError::Invalid(_))));

        let mut half_auth = smtp_config(dead_port(), 10, 1);
        if let MailTransport::Smtp(smtp) = &mut half_auth.transport {
            smtp.username = Some("portal".into());
        }
        assert!(matches!(
            Mailer::start(&half_auth),
            Err(MailError::Invalid(_))
        ));

        let file = temp_dir("notadir");
        fs::write(&file, b"x").unwrap();
        let outbox = MailConfig {
            transport: MailTransport::Outbox(file.clone()),
            ..smtp_config(1, 10, 1)
        };
        assert!(matches!(
            Mailer::start(&outbox),
            Err(MailError::Transport(_))
        ));
        fs::remove_file(&file).unwrap();

        let mailer = Mailer::start(&smtp_config(dead_port(), 10, 1)).unwrap();
        assert!(matches!(
            mailer.send(reset_mail("no-at-sign")),
            Err(MailError::Invalid(_))
        ));
        let mut injected = reset_mail("anna@kunde.example");
        injected.subject = "Hallo\r\nBcc: evil@example.com".into();
        assert!(matches!(mailer.send(injected), Err(MailError::Invalid(_))));
        assert_eq!(mailer.stats(), MailStats::default());
    }

    #[test]
    fn tls_transports_build() {
        for tls in [SmtpTls::StartTls, SmtpTls::Tls] {
            let mut cfg = smtp_config(dead_port(), 10, 1);
            if let MailTransport::Smtp(smtp) = &mut cfg.transport {
                smtp.host = "smtp.example.at".into();
                smtp.tls = tls;
                smtp.username = Some("portal".into());
                smtp.password = Some("secret".into());
            }
            assert!(Mailer::start(&cfg).is_ok());
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let secs: Vec<u64> = (1..=9).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn debug_output_hides_subject_and_body() {
        let mut mail = reset_mail("anna@kunde.example");
        mail.html = Some(format!("<a href=\"{LINK}\">x</a>"));
        let shown = format!("{mail:?}");
        assert!(shown.contains("anna@kunde.example"));
        assert!(
            !shown.contains("reset") && !shown.contains("Passwort"),
            "{shown}"
        );
    }
}
