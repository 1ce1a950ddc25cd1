//! A small, fixed pool of threads for password hashing. argon2 is CPU- and
//! memory-heavy (19 MiB, ~15 ms per hash): running it on a few dedicated
//! threads at the lowest scheduling class keeps a login storm from starving
//! proxied requests, and keeps the 19 MiB buffers on a few threads instead
//! of spreading them over every blocking thread of the runtime. At most one
//! job per thread is handed over at a time; further callers wait their
//! turn asynchronously, for at most the queue timeout
//! (`password.hash_queue_timeout`), and then get [`PoolError::Busy`].
//!
//! Lowest class: `SCHED_IDLE` on Linux. A merely nice thread still keeps
//! the CPU for its time slice (milliseconds) when a proxy thread wakes up;
//! an idle-class thread gives it up at once, so proxied requests do not
//! wait behind an argon2 hash. Should the class be refused, the thread
//! stays at nice 19. And each thread rests after a hash as long as the
//! hash took (`REST_PER_WORK`).
//!
//! Every thread waits for work on its own, with its own timeout (one
//! multi-consumer channel, no lock around the receiver): a thread that has
//! had nothing to do for [`KEEP_MEMORY`] calls the idle hook, which gives
//! argon2's working memory back (`auth::password::release_scratch`), then
//! sleeps until the next job. The pool runs closures and knows nothing of
//! argon2; `app` starts it and hands it to `web::Services`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use tokio::sync::{oneshot, Semaphore};

use crate::sched;

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the password hashing pool has stopped")]
    Stopped,
    #[error("no hashing thread became free within {0:?}")]
    Busy(Duration),
    #[error("cannot start a hashing thread: {0}")]
    Start(#[from] std::io::Error),
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
pub const KEEP_MEMORY: Duration = Duration::from_millis(100);

/// How nice the hashing threads are (0 = normal, 19 = lowest).
const NICENESS: i32 = 19;

fn lower_this_threads_priority() {
    if !sched::set_this_thread_nice(NICENESS) {
        tracing::debug!("nice {NICENESS} refused for password hashing");
    }
    if !sched::set_this_thread(sched::Policy::Idle) {
        tracing::debug!("SCHED_IDLE refused; password hashing stays at nice {NICENESS}");
    }
}

/// What the pool is started with.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Hashing threads (at least one).
    pub threads: usize,
    /// The longest a caller waits for a free thread.
    pub queue_timeout: Duration,
    /// Called on a thread that has had no work for [`KEEP_MEMORY`].
    pub on_idle: fn(),
}

pub struct HashPool {
    tx: Sender<Job>,
    /// One permit per thread: a caller holds one from handing its job over
    /// until the result is back.
    slots: Semaphore,
    /// Callers waiting for a permit (shared with [`HashPool::depth`]).
    waiting: Arc<AtomicUsize>,
    queue_timeout: Duration,
}

impl std::fmt::Debug for HashPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashPool")
            .field("free", &self.slots.available_permits())
            .field("waiting", &self.waiting())
            .field("queue_timeout", &self.queue_timeout)
            .finish()
    }
}

/// How many callers wait for a hashing thread now.
#[derive(Debug, Clone)]
pub struct Depth(Arc<AtomicUsize>);

impl Depth {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts a caller in [`HashPool::waiting`] for as long as it lives (also
/// when the caller's future is dropped while it waits).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HashPool {
    /// Starts `settings.threads` threads (at least one), `riegel-hash-N`,
    /// each at nice 19 in `SCHED_IDLE`. The threads end when the pool is
    /// dropped.
    pub fn start(settings: Settings) -> Result<Self, PoolError> {
        let threads = settings.threads.max(1);
        // Room for the jobs that hold a permit; more wait on the semaphore.
        let (tx, rx) = bounded::<Job>(threads);
        for i in 0..threads {
            let rx = rx.clone();
            let on_idle = settings.on_idle;
            std::thread::Builder::new().name(format!("riegel-hash-{i}")).spawn(move || {
                lower_this_threads_priority();
                work(&rx, on_idle);
            })?;
        }
        Ok(Self { tx, slots: Semaphore::new(threads), waiting: Arc::new(AtomicUsize::new(0)), queue_timeout: settings.queue_timeout })
    }

    /// Runs `f` on a hashing thread and waits for it without blocking the
    /// executor; [`PoolError::Busy`] when no thread became free within the
    /// queue timeout.
    pub async fn run<T, F>(&self, f: F) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let _permit = {
            let _waiting = Waiting::new(&self.waiting);
            match tokio::time::timeout(self.queue_timeout, self.slots.acquire()).await {
                Ok(permit) => permit.map_err(|_| PoolError::Stopped)?,
                Err(_) => return Err(PoolError::Busy(self.queue_timeout)),
            }
        };
        let (done_tx, done_rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done_tx.send(f());
        });
        // A permit guarantees a free place in the channel: this never blocks.
        self.tx.try_send(job).map_err(|_| PoolError::Stopped)?;
        done_rx.await.map_err(|_| PoolError::Stopped)
    }

    /// How many callers wait for a free hashing thread now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// A reader of [`HashPool::waiting`] that outlives whoever owns the
    /// pool (the metrics read it).
    pub fn depth(&self) -> Depth {
        Depth(self.waiting.clone())
    }
}

/// One hashing thread's life: jobs until the pool is dropped.
fn work(rx: &Receiver<Job>, on_idle: fn()) {
    loop {
        let job = match rx.recv_timeout(KEEP_MEMORY) {
            Ok(job) => job,
            // argon2's working memory stays while logins keep coming to
            // this thread, and goes once it has had none for a moment.
            Err(RecvTimeoutError::Timeout) => {
                on_idle();
                match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let started = Instant::now();
        job();
        std::thread::sleep(started.elapsed().mul_f32(REST_PER_WORK));
    }
    on_idle();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::crypto::TestRandom;
    use crate::auth::password::{release_scratch, scratch_bytes, Hasher};
    use crate::config::Argon2Params;
    use std::sync::{Arc, Barrier};

    fn pool(threads: usize, queue_timeout: Duration) -> Arc<HashPool> {
        Arc::new(HashPool::start(Settings { threads, queue_timeout, on_idle: release_scratch }).expect("pool"))
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().expect("runtime")
    }

    /// Polls `f` until it holds, for at most `bound`.
    fn eventually(bound: Duration, f: impl Fn() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < bound {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        f()
    }

    #[test]
    fn every_idle_thread_gives_its_memory_back() {
        // 4 threads, 4 hashes at once (the barrier holds each job until
        // all four run, so each thread maps its own working memory).
        let pool = pool(4, Duration::from_secs(10));
        let hasher = Hasher::new(&Argon2Params { memory_kib: 1024, iterations: 1, parallelism: 1 }).expect("params");
        let barrier = Arc::new(Barrier::new(4));
        let held = Arc::new(AtomicUsize::new(0));
        let rt = runtime();
        rt.block_on(async {
            let jobs: Vec<_> = (0..4)
                .map(|_| {
                    let (pool, hasher, barrier, held) = (pool.clone(), hasher.clone(), barrier.clone(), held.clone());
                    tokio::spawn(async move {
                        pool.run(move || {
                            barrier.wait();
                            let hash = hasher.hash("Sommer 2024!", &TestRandom::default());
                            held.fetch_max(scratch_bytes(), Ordering::Relaxed);
                            barrier.wait();
                            hash
                        })
                        .await
                    })
                })
                .collect();
            for j in jobs {
                assert!(j.await.expect("task").expect("pool").is_ok());
            }
        });
        // All four held their memory at once ...
        assert!(held.load(Ordering::Relaxed) >= 4 * 1024 * 1024, "{} bytes", held.load(Ordering::Relaxed));
        // ... and none is left once the pool has been idle for KEEP_MEMORY
        // (other tests of this process hash too, on their own threads,
        // which release theirs when they end: hence a generous bound).
        assert!(eventually(KEEP_MEMORY + Duration::from_secs(10), || scratch_bytes() == 0), "{} bytes still mapped", scratch_bytes());
        // The threads hash again afterwards.
        let h2 = hasher.clone();
        assert!(rt.block_on(pool.run(move || h2.hash("x", &TestRandom::default()))).expect("pool").is_ok());
    }

    /// Takes the pool's one thread with a job that lasts until the sender
    /// is used (30 s at most); returns once the job runs.
    fn hold(pool: &Arc<HashPool>, rt: &tokio::runtime::Runtime) -> (tokio::task::JoinHandle<Result<u32, PoolError>>, std::sync::mpsc::Sender<()>) {
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let p = pool.clone();
        let long = rt.spawn(async move {
            p.run(move || {
                let _ = started_tx.send(());
                let _ = release_rx.recv_timeout(Duration::from_secs(30));
                1
            })
            .await
        });
        started_rx.recv_timeout(Duration::from_secs(10)).expect("the long job started");
        (long, release_tx)
    }

    #[test]
    fn a_caller_waits_at_most_the_queue_timeout() {
        let pool = pool(1, Duration::from_millis(200));
        let rt = runtime();
        let (long, release) = hold(&pool, &rt);
        // The one thread is taken: the next caller gives up after the
        // timeout with Busy (that it is counted while it waits is
        // a_dropped_caller_stops_counting_as_waiting's part).
        match rt.block_on(pool.run(|| 2)) {
            Err(PoolError::Busy(d)) => assert_eq!(d, Duration::from_millis(200)),
            other => panic!("expected Busy, got {other:?}"),
        }
        assert_eq!(pool.waiting(), 0);
        // Once the thread is free, callers are served again.
        release.send(()).expect("release");
        assert_eq!(rt.block_on(long).expect("task").expect("pool"), 1);
        assert_eq!(rt.block_on(pool.run(|| 3)).expect("pool"), 3);
    }

    #[test]
    fn a_dropped_caller_stops_counting_as_waiting() {
        let pool = pool(1, Duration::from_secs(30));
        let rt = runtime();
        let (long, release) = hold(&pool, &rt);
        let p = pool.clone();
        let waiter = rt.spawn(async move { p.run(|| ()).await });
        assert!(eventually(Duration::from_secs(10), || pool.waiting() == 1), "waiting {}", pool.waiting());
        waiter.abort();
        assert!(eventually(Duration::from_secs(10), || pool.waiting() == 0), "waiting {}", pool.waiting());
        release.send(()).expect("release");
        assert_eq!(rt.block_on(long).expect("task").expect("pool"), 1);
    }

    #[test]
    fn jobs_run_on_idle_class_threads() {
        let pool = pool(2, Duration::from_secs(10));
        let rt = runtime();
        // SAFETY: these read the calling thread's policy and nice value.
        let (policy, nice, name) = rt
            .block_on(pool.run(|| unsafe {
                (libc::sched_getscheduler(0), libc::getpriority(libc::PRIO_PROCESS, 0), std::thread::current().name().map(str::to_string))
            }))
            .expect("pool");
        assert_eq!(policy, libc::SCHED_IDLE);
        assert_eq!(nice, 19);
        assert!(name.is_some_and(|n| n.starts_with("riegel-hash-")));
    }
}
