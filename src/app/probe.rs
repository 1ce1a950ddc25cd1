//! The metrics' gauges that need the store or the hashing threads
//! ([`crate::metrics::Probe`]): read when scraped, on a thread of their own
//! (`riegel-metrics`, with its own small runtime), each figure within the
//! scrape's bound. Nothing runs between scrapes.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::metrics::{Probe, State};
use crate::store::prelude::*;
use crate::web::Services;

/// A scrape's question: where to send the answer.
type Ask = Sender<State>;

pub struct StoreProbe {
    ask: Sender<Ask>,
    services: Weak<Services>,
}

impl StoreProbe {
    /// Starts the thread; it ends when the services are gone.
    pub fn start(services: &Arc<Services>) -> Self {
        let (ask, asked) = crossbeam_channel::bounded::<Ask>(16);
        let weak = Arc::downgrade(services);
        let for_thread = weak.clone();
        let started = std::thread::Builder::new().name("riegel-metrics".into()).spawn(move || answer(asked, for_thread));
        if let Err(e) = started {
            tracing::warn!(error = %e, "metrics: no thread for the store's figures; the gauges that need the store stay at 0");
        }
        Self { ask, services: weak }
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

fn answer(asked: Receiver<Ask>, services: Weak<Services>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: no runtime for the store's figures");
            return;
        }
    };
    while let Ok(reply) = asked.recv() {
        let Some(s) = services.upgrade() else { return };
        let bound = crate::metrics::PROBE_BOUND;
        let state = rt.block_on(async {
            let now = s.now();
            State {
                sessions: figure(tokio::time::timeout(bound, s.store.count_sessions()).await),
                bans: figure(tokio::time::timeout(bound, s.store.count_bans(now)).await),
                mail_queue: figure(tokio::time::timeout(bound, s.store.mail_queue_depth()).await),
                hash_queue: i64::try_from(s.hash_queue_depth()).ok(),
            }
        });
        drop(s);
        // The scrape may have stopped waiting.
        let _ = reply.send(state);
    }
}

impl Probe for StoreProbe {
    fn read(&self, bound: Duration) -> State {
        let hash_queue = self.services.upgrade().and_then(|s| i64::try_from(s.hash_queue_depth()).ok());
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
