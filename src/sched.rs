//! The scheduling class of riegel's own threads (Linux).
//!
//! - Password hashing runs in `SCHED_IDLE` ([`Policy::Idle`]): any other
//!   thread that wakes up takes the CPU from it at once.
//! - A proxy shard switches between `SCHED_OTHER` ([`Policy::Normal`]) and
//!   `SCHED_BATCH` ([`Policy::Batch`]) by what it did over the last
//!   interval ([`shard_policy`]). A normal thread that wakes up (data from
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
    fn linux(self) -> i32 {
        match self {
            Policy::Normal => 0,
            Policy::Batch => 3,
            Policy::Idle => 5,
        }
    }
}

#[repr(C)]
struct SchedParam {
    sched_priority: i32,
}

extern "C" {
    fn sched_setscheduler(pid: i32, policy: i32, param: *const SchedParam) -> i32;
    #[cfg(test)]
    fn sched_getscheduler(pid: i32) -> i32;
}

/// Gives the calling thread `policy`; false when the system refuses.
pub fn set_this_thread(policy: Policy) -> bool {
    // SAFETY: pid 0 is the calling thread (a policy belongs to the thread on
    // Linux); `param` points to a live, properly laid out sched_param.
    unsafe { sched_setscheduler(0, policy.linux(), &SchedParam { sched_priority: 0 }) == 0 }
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
/// ... and below which a batch shard turns normal again. Batching itself
/// raises the figure (on the benchmark machine: 2.1 normal, 5.1 batch at
/// 50 connections; 1.1 both ways at 10 connections; 0.5, two waits per
/// request, at one or two).
const LEAVE_PER_PARK: f64 = 1.3;
/// Below this rate (requests per second on the shard) a shard is normal:
/// too little to batch.
const MIN_RATE: f64 = 1000.0;

/// The policy a shard's thread should have after `s`, given it has
/// `current` (only [`Policy::Normal`] and [`Policy::Batch`] change).
pub fn shard_policy(current: Policy, s: &Sample) -> Policy {
    let secs = s.interval.as_secs_f64();
    if secs <= 0.0 {
        return current;
    }
    let rate = s.requests as f64 / secs;
    // A shard that never parked had work waiting all the time.
    let per_park = if s.parks == 0 { f64::INFINITY } else { s.requests as f64 / s.parks as f64 };
    match current {
        Policy::Normal if rate >= MIN_RATE && per_park >= ENTER_PER_PARK => Policy::Batch,
        Policy::Batch if rate < MIN_RATE || per_park < LEAVE_PER_PARK => Policy::Normal,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(parks: u64, requests: u64) -> Sample {
        Sample { interval: SAMPLE_EVERY, parks, requests }
    }

    #[test]
    fn a_thread_gets_the_policy_it_asks_for() {
        std::thread::spawn(|| {
            // SAFETY: reads the calling thread's policy.
            let now = || unsafe { sched_getscheduler(0) };
            assert_eq!(now(), 0);
            assert!(set_this_thread(Policy::Batch));
            assert_eq!(now(), 3);
            assert!(set_this_thread(Policy::Normal));
            assert_eq!(now(), 0);
            assert!(set_this_thread(Policy::Idle));
            assert_eq!(now(), 5);
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn a_shard_batches_only_while_it_finds_several_requests_per_wake_up() {
        use Policy::*;
        // Figures seen on the benchmark machine (per 100 ms).
        assert_eq!(shard_policy(Normal, &sample(822, 1883)), Batch, "50 connections");
        assert_eq!(shard_policy(Normal, &sample(1453, 1558)), Normal, "10 connections");
        assert_eq!(shard_policy(Normal, &sample(1176, 586)), Normal, "1 connection");
        assert_eq!(shard_policy(Batch, &sample(405, 2127)), Batch, "50 connections, batched");
        assert_eq!(shard_policy(Batch, &sample(1368, 1527)), Normal, "10 connections, batched");
        // Between the two thresholds the policy stays as it is.
        assert_eq!(shard_policy(Normal, &sample(1000, 1500)), Normal);
        assert_eq!(shard_policy(Batch, &sample(1000, 1500)), Batch);
        // Bursty but little traffic: nothing to gain.
        assert_eq!(shard_policy(Normal, &sample(20, 60)), Normal);
        assert_eq!(shard_policy(Batch, &sample(20, 60)), Normal);
        // Never parked: work was waiting all the time.
        assert_eq!(shard_policy(Normal, &sample(0, 5000)), Batch);
        assert_eq!(shard_policy(Normal, &sample(0, 0)), Normal);
        // Idle threads are not shards; a zero interval changes nothing.
        assert_eq!(shard_policy(Idle, &sample(0, 5000)), Idle);
        assert_eq!(shard_policy(Batch, &Sample { interval: Duration::ZERO, parks: 1, requests: 0 }), Batch);
    }
}
