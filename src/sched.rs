//! The scheduling class and nice value of riegel's own threads (Linux).
//!
//! - Password hashing runs in `SCHED_IDLE` ([`Policy::Idle`]): any other
//!   thread that wakes up takes the CPU from it at once.
//! - A proxy shard switches between `SCHED_OTHER` ([`Policy::Normal`]) and
//!   `SCHED_BATCH` ([`Policy::Batch`]) by what it did over the last
//!   interval ([`ShardRule`]). A normal thread that wakes up (data from
//!   a client or the portal) takes the CPU from whatever runs there, often
//!   the very process that just sent it the data, which then has to be
//!   switched back in to send the next request: under load a context
//!   switch for almost every request. A batch thread waits until the
//!   running task blocks or its time slice ends, then serves everything
//!   that has arrived meanwhile in one go. That only pays when there is
//!   something to batch; with little to do per wake-up it would only add
//!   latency (up to a scheduler tick, when CPU-bound processes share the
//!   machine), so a shard is batch only while it is busy *and* finds
//!   several requests per wake-up.

use std::time::Duration;

/// A Linux scheduling policy for one thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// `SCHED_OTHER`, the default.
    Normal,
    /// `SCHED_BATCH`: no preemption of others on wake-up.
    Batch,
    /// `SCHED_IDLE`: runs only when nothing else wants the CPU.
    Idle,
}

impl Policy {
    fn linux(self) -> libc::c_int {
        match self {
            Policy::Normal => libc::SCHED_OTHER,
            Policy::Batch => libc::SCHED_BATCH,
            Policy::Idle => libc::SCHED_IDLE,
        }
    }
}

// The system calls go through `libc`. `rustix` would spare the `unsafe`
// but has no `sched_setscheduler` (it lists it among the calls it does not
// implement), and one crate for the three calls riegel makes itself (these
// two and `umask` in `admin`) is simpler than two.

/// Gives the calling thread `policy`; false when the system refuses.
pub fn set_this_thread(policy: Policy) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread (a policy belongs to the thread on
    // Linux); `param` points to a live sched_param.
    unsafe { libc::sched_setscheduler(0, policy.linux(), &param) == 0 }
}

/// Gives the calling thread the nice value `nice` (0 normal, 19 lowest);
/// false when the system refuses.
pub fn set_this_thread_nice(nice: i32) -> bool {
    // On Linux the nice value belongs to the thread: PRIO_PROCESS with
    // who 0 is the calling thread.
    // SAFETY: the call only changes this thread's nice value.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) == 0 }
}

/// What a shard did over one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub interval: Duration,
    /// Times the shard's runtime parked (waited for I/O or a timer).
    pub parks: u64,
    /// Request heads read.
    pub requests: u64,
}

/// How often a shard looks at what it did.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Requests per wake-up from which a normal shard turns batch ...
const ENTER_PER_PARK: f64 = 1.8;
/// ... and below which a batch shard turns normal again. Batching usually
/// raises the figure (on the benchmark machine: 2.1 normal, 5.1 batch at
/// 25 connections per shard; 0.5, two waits per request, at one).
const LEAVE_PER_PARK: f64 = 1.3;
/// Requests per second on the shard from which it may turn batch ...
const ENTER_RATE: f64 = 1000.0;
/// ... and below which it turns normal again.
const LEAVE_RATE: f64 = 500.0;
/// Samples in a row that must qualify before a shard turns batch, at first
/// (and again after a batch period that paid).
const ENTER_SAMPLES: u32 = 1;
/// A batch period shorter than this many samples did not pay (batching
/// lowered the requests per wake-up: seen at about 10 connections per
/// shard): the next one needs twice as many qualifying samples in a row,
/// up to [`MAX_ENTER_SAMPLES`] (6.4 s); a longer one resets that.
const SHORT_BATCH: u32 = 10;
const MAX_ENTER_SAMPLES: u32 = 64;
/// After this many samples in batch (5 s) a shard turns normal for a fresh
/// look of one sample: a batch thread that waits behind CPU-bound
/// neighbours also finds several requests per wake-up, because it was kept
/// waiting; only a normal thread's figure tells whether there is a batch
/// to serve.
const RECHECK_AFTER: u32 = 50;

/// The scheduling rule of one shard: see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRule {
    policy: Policy,
    /// Qualifying samples in a row (normal).
    streak: u32,
    /// Samples in a row needed to turn batch.
    need: u32,
    /// Samples since the shard turned batch.
    batched: u32,
}

impl Default for ShardRule {
    fn default() -> Self {
        Self { policy: Policy::Normal, streak: 0, need: ENTER_SAMPLES, batched: 0 }
    }
}

impl ShardRule {
    /// The policy the shard has.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Takes one sample; the policy to switch to, if it changes.
    pub fn next(&mut self, s: &Sample) -> Option<Policy> {
        let secs = s.interval.as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        let rate = s.requests as f64 / secs;
        // A shard that never parked had work waiting all the time.
        let per_park = if s.parks == 0 { f64::INFINITY } else { s.requests as f64 / s.parks as f64 };
        match self.policy {
            Policy::Normal => {
                if rate >= ENTER_RATE && per_park >= ENTER_PER_PARK {
                    self.streak += 1;
                } else {
                    self.streak = 0;
                }
                if self.streak < self.need {
                    return None;
                }
                self.streak = 0;
                self.batched = 0;
                self.policy = Policy::Batch;
            }
            Policy::Batch => {
                self.batched += 1;
                let recheck = self.batched >= RECHECK_AFTER;
                if !recheck && rate >= LEAVE_RATE && per_park >= LEAVE_PER_PARK {
                    return None;
                }
                self.need = if self.batched < SHORT_BATCH { (self.need * 2).min(MAX_ENTER_SAMPLES) } else { ENTER_SAMPLES };
                self.policy = Policy::Normal;
            }
            Policy::Idle => return None,
        }
        Some(self.policy)
    }

    /// The system refused the switch [`ShardRule::next`] asked for: the
    /// thread keeps `policy`.
    pub fn refused(&mut self, policy: Policy) {
        self.policy = policy;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(parks: u64, requests: u64) -> Sample {
        Sample { interval: SAMPLE_EVERY, parks, requests }
    }

    /// Feeds `n` copies of `s`; the policy changes seen, in order.
    fn feed(rule: &mut ShardRule, n: usize, s: Sample) -> Vec<Policy> {
        (0..n).filter_map(|_| rule.next(&s)).collect()
    }

    // Figures seen on the benchmark machine (per 100 ms and shard).
    const BUSY_NORMAL: (u64, u64) = (822, 1883); // 25 connections
    const BUSY_BATCH: (u64, u64) = (405, 2127); // the same, batched
    const TEN: (u64, u64) = (1453, 1558); // 10 connections
    const ONE: (u64, u64) = (1176, 586); // 1 connection

    fn s((parks, requests): (u64, u64)) -> Sample {
        sample(parks, requests)
    }

    #[test]
    fn a_busy_shard_turns_batch_and_stays() {
        let mut r = ShardRule::default();
        assert_eq!(feed(&mut r, 1, s(BUSY_NORMAL)), vec![Policy::Batch]);
        assert_eq!(r.policy(), Policy::Batch);
        assert_eq!(feed(&mut r, 49, s(BUSY_BATCH)), vec![]);
        // Every 5 s a fresh look as a normal thread; busy still: batch again.
        assert_eq!(feed(&mut r, 1, s(BUSY_BATCH)), vec![Policy::Normal]);
        assert_eq!(feed(&mut r, 1, s(BUSY_NORMAL)), vec![Policy::Batch]);
        // Busy no longer: normal after the fresh look.
        assert_eq!(feed(&mut r, 50, s(BUSY_BATCH)), vec![Policy::Normal]);
        assert_eq!(feed(&mut r, 10, s(TEN)), vec![]);
    }

    #[test]
    fn little_concurrency_or_traffic_stays_normal() {
        let mut r = ShardRule::default();
        assert_eq!(feed(&mut r, 100, s(TEN)), vec![]);
        assert_eq!(feed(&mut r, 100, s(ONE)), vec![]);
        // Bursty but little traffic: several per wake-up, too few a second.
        assert_eq!(feed(&mut r, 100, sample(20, 60)), vec![]);
        assert_eq!(r.policy(), Policy::Normal);
    }

    #[test]
    fn a_batch_shard_turns_normal_when_the_batch_goes() {
        for after in [s(TEN), s(ONE), sample(10, 40), sample(0, 0)] {
            let mut r = ShardRule::default();
            feed(&mut r, 3, s(BUSY_NORMAL));
            assert_eq!(feed(&mut r, 20, s(BUSY_BATCH)), vec![]);
            assert_eq!(r.next(&after), Some(Policy::Normal), "{after:?}");
        }
        // Between the thresholds a batch shard stays batch.
        let mut r = ShardRule::default();
        feed(&mut r, 3, s(BUSY_NORMAL));
        assert_eq!(feed(&mut r, 20, sample(1000, 1500)), vec![]);
        assert_eq!(feed(&mut r, 20, sample(30, 70)), vec![], "700 a second");
    }

    #[test]
    fn batching_that_does_not_pay_backs_off() {
        // Normal finds a batch, batch loses it (about 10 connections per
        // shard): each short batch period doubles the wait for the next.
        let mut r = ShardRule::default();
        let mut entries = 0;
        for _ in 0..600 {
            let sample = if r.policy() == Policy::Normal { s(BUSY_NORMAL) } else { s(TEN) };
            if r.next(&sample) == Some(Policy::Batch) {
                entries += 1;
            }
        }
        // 1 + 2 + 4 + ... + 64 + 64 + ... samples in a row before each entry.
        assert!((12..=16).contains(&entries), "{entries} entries in 60 s");
    }

    #[test]
    fn a_batch_period_that_pays_resets_the_back_off() {
        let mut r = ShardRule { need: MAX_ENTER_SAMPLES, ..ShardRule::default() };
        assert_eq!(feed(&mut r, 63, s(BUSY_NORMAL)), vec![]);
        assert_eq!(feed(&mut r, 1, s(BUSY_NORMAL)), vec![Policy::Batch]);
        assert_eq!(feed(&mut r, 20, s(BUSY_BATCH)), vec![]);
        assert_eq!(r.next(&s(ONE)), Some(Policy::Normal));
        assert_eq!(feed(&mut r, 1, s(BUSY_NORMAL)), vec![Policy::Batch]);
    }

    #[test]
    fn a_thread_gets_the_policy_it_asks_for() {
        std::thread::spawn(|| {
            // SAFETY: reads the calling thread's policy.
            let now = || unsafe { libc::sched_getscheduler(0) };
            for (p, linux) in [(Policy::Batch, 3), (Policy::Normal, 0), (Policy::Idle, 5)] {
                assert!(set_this_thread(p), "{p:?}");
                assert_eq!(now(), linux, "{p:?}");
            }
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn a_thread_can_lower_its_nice_value() {
        std::thread::spawn(|| {
            assert!(set_this_thread_nice(19));
            // SAFETY: reads the calling thread's nice value.
            assert_eq!(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }, 19);
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn edge_cases() {
        let mut r = ShardRule::default();
        // Never parked: work was waiting all the time.
        assert_eq!(feed(&mut r, 3, sample(0, 5000)), vec![Policy::Batch]);
        // A zero interval changes nothing.
        assert_eq!(r.next(&Sample { interval: Duration::ZERO, parks: 1, requests: 0 }), None);
        assert_eq!(r.policy(), Policy::Batch);
        // A refused switch leaves the rule where the thread is.
        r.refused(Policy::Batch);
        assert_eq!(r.next(&s(ONE)), Some(Policy::Normal));
        r.refused(Policy::Batch);
        assert_eq!(r.policy(), Policy::Batch);
        let mut idle = ShardRule { policy: Policy::Idle, ..ShardRule::default() };
        assert_eq!(feed(&mut idle, 10, sample(0, 5000)), vec![]);
    }
}
