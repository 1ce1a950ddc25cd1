//! The metrics' gauges that need the store or the hashing threads
//! ([`crate::metrics::Probe`]): read when scraped, on a thread of their own
//! (`riegel-metrics`, with its own small runtime), each figure within the
//! scrape's bound. Nothing runs between scrapes. The probe holds the store,
//! the clock and the hash queue's counter, not the services, so a reloaded
//! configuration (new services) does not stop it.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::clock::Clock;
use crate::hashpool::Depth;
use crate::metrics::{Probe, State};
use crate::store::prelude::*;
use crate::store::CachedStore;

/// A scrape's question: where to send the answer.
type Ask = Sender<State>;

pub struct StoreProbe {
    ask: Sender<Ask>,
    hash_queue: Depth,
}

impl StoreProbe {
    /// Starts the thread; it ends with the probe.
    pub fn start(store: Arc<CachedStore>, clock: Arc<dyn Clock>, hash_queue: Depth) -> Self {
        let (ask, asked) = crossbeam_channel::bounded::<Ask>(16);
        let started = std::thread::Builder::new().name("riegel-metrics".into()).spawn(move || answer(asked, store, clock));
        if let Err(e) = started {
            tracing::warn!(error = %e, "metrics: no thread for the store's figures; the gauges that need the store stay at 0");
        }
        Self { ask, hash_queue }
    }

    fn hash_queue(&self) -> Option<i64> {
        i64::try_from(self.hash_queue.get()).ok()
    }
}

fn figure(r: Result<Result<usize, crate::store::StoreError>, tokio::time::error::Elapsed>) -> Option<i64> {
    match r {
        Ok(Ok(n)) => i64::try_from(n).ok(),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "metrics: a store figure could not be read");
            None
        }
        Err(_) => None,
    }
}

fn answer(asked: Receiver<Ask>, store: Arc<CachedStore>, clock: Arc<dyn Clock>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: no runtime for the store's figures");
            return;
        }
    };
    let bound = crate::metrics::PROBE_BOUND;
    while let Ok(reply) = asked.recv() {
        let state = rt.block_on(async {
            State {
                sessions: figure(tokio::time::timeout(bound, store.count_sessions()).await),
                bans: figure(tokio::time::timeout(bound, store.count_bans(clock.now())).await),
                mail_queue: figure(tokio::time::timeout(bound, store.mail_queue_depth()).await),
                hash_queue: None,
            }
        });
        // The scrape may have stopped waiting.
        let _ = reply.send(state);
    }
}

impl Probe for StoreProbe {
    fn read(&self, bound: Duration) -> State {
        let hash_queue = self.hash_queue();
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.ask.try_send(tx).is_err() {
            return State { hash_queue, ..State::default() };
        }
        match rx.recv_timeout(bound) {
            Ok(s) => State { hash_queue, ..s },
            Err(_) => {
                tracing::debug!("metrics: the store's figures took longer than the scrape's bound");
                State { hash_queue, ..State::default() }
            }
        }
    }
}
