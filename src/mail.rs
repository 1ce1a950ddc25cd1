//! TEMPORARY STUB (replaced by the real mail module).
use crate::config::MailConfig;
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail { pub to: String, pub subject: String, pub text: String, pub html: Option<String> }
#[derive(Debug, thiserror::Error)]
pub enum MailError { #[error("mail queue is full")] QueueFull, #[error("mailer has stopped")] Closed, #[error("invalid mail: {0}")] Invalid(String), #[error("mail transport: {0}")] Transport(String) }
pub trait MailQueue: Send + Sync + 'static { fn send(&self, mail: Mail) -> Result<(), MailError>; }
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailStats { pub queued: u64, pub sent: u64, pub failed: u64, pub dropped: u64, pub retried: u64 }
pub struct Mailer;
impl Mailer {
    pub fn start(_cfg: &MailConfig) -> Result<Mailer, MailError> { Ok(Mailer) }
    pub fn stats(&self) -> MailStats { MailStats::default() }
    pub fn drain(&self, _t: std::time::Duration) -> bool { true }
}
impl MailQueue for Mailer { fn send(&self, _m: Mail) -> Result<(), MailError> { Ok(()) } }
