//! A small, fixed pool of threads for password hashing. argon2 is CPU- and
//! memory-heavy (19 MiB, ~15 ms per hash): running it on a few dedicated
//! threads at the lowest scheduling class keeps a login storm from starving
//! proxied requests, and keeps the 19 MiB buffers on a few threads instead
//! of spreading them over every blocking thread of the runtime. The queue is
//! bounded; jobs wait their turn asynchronously.
//!
//! Lowest class: `SCHED_IDLE` on Linux. A merely nice thread still keeps
//! the CPU for its time slice (milliseconds) when a proxy thread wakes up;
//! an idle-class thread gives it up at once, so proxied requests do not
//! wait behind an argon2 hash. Should the class be refused, the thread
//! stays at nice 19. And each thread rests after a hash as long as the
//! hash took ([`REST_PER_WORK`]).

use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::time::Duration;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::auth::password::Hasher;

type Job = Box<dyn FnOnce(&Hasher) + Send + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the password hashing pool has stopped")]
    Stopped,
}

pub struct HashPool {
    tx: SyncSender<Job>,
    slots: Arc<tokio::sync::Semaphore>,
}

/// After each hash a thread rests this many times as long as the hash took
/// (the answer has gone out already): under a login storm argon2 gets at
/// most half of a core per thread, and the proxy keeps the rest. A single
/// login is not slowed; logins per second are capped at about 1 / (2 x hash
/// time) per thread (some 20/s per thread with the defaults on the
/// benchmark machine). Without the rest, the hashing thread filled every
/// moment the proxy left idle, and proxied p99 doubled during a storm.
const REST_PER_WORK: f32 = 1.0;

/// How long a hashing thread keeps argon2's working memory without work.
const KEEP_MEMORY: Duration = Duration::from_millis(100);

/// How nice the hashing threads are (0 = normal, 19 = lowest).
const NICENESS: i32 = 19;

fn lower_this_threads_priority() {
    if !crate::sched::set_this_thread_nice(NICENESS) {
        tracing::debug!("nice {NICENESS} refused for password hashing");
    }
    if !crate::sched::set_this_thread(crate::sched::Policy::Idle) {
        tracing::debug!("SCHED_IDLE refused; password hashing stays at nice {NICENESS}");
    }
}

impl HashPool {
    pub fn new(hasher: Hasher, threads: usize) -> Result<Self, std::io::Error> {
        let threads = threads.max(1);
        // Room for the jobs that hold a slot; more wait on the semaphore.
        let (tx, rx) = sync_channel::<Job>(threads);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let hasher = hasher.clone();
            std::thread::Builder::new().name(format!("riegel-hash-{i}")).spawn(move || {
                lower_this_threads_priority();
                loop {
                    let job = match rx.lock() {
                        // argon2's working memory stays while logins keep
                        // coming, and goes once the queue has been dry for
                        // a moment.
                        Ok(r) => match r.recv_timeout(KEEP_MEMORY) {
                            Err(RecvTimeoutError::Timeout) => {
                                crate::auth::password::release_scratch();
                                r.recv().map_err(|_| RecvTimeoutError::Disconnected)
                            }
                            other => other,
                        },
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => {
                            let started = std::time::Instant::now();
                            job(&hasher);
                            std::thread::sleep(started.elapsed().mul_f32(REST_PER_WORK));
                        }
                        Err(_) => return,
                    }
                }
            })?;
        }
        Ok(Self { tx, slots: Arc::new(tokio::sync::Semaphore::new(threads)) })
    }

    /// Runs `f` on a hashing thread and waits for it without blocking the executor.
    pub async fn run<T, F>(&self, f: F) -> Result<T, PoolError>
    where
        F: FnOnce(&Hasher) -> T + Send + 'static,
        T: Send + 'static,
    {
        let _permit = self.slots.acquire().await.map_err(|_| PoolError::Stopped)?;
        let (done_tx, done_rx) = oneshot::channel();
        let job: Job = Box::new(move |h| {
            let _ = done_tx.send(f(h));
        });
        // A permit guarantees a free place in the channel: this never blocks.
        self.tx.try_send(job).map_err(|_| PoolError::Stopped)?;
        done_rx.await.map_err(|_| PoolError::Stopped)
    }
}
