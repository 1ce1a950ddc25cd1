//! The short way to the portal for what most clicks are: a GET or HEAD
//! without a body or an upgrade (chosen by [`super::front`]). riegel writes
//! the request to a pooled upstream connection with Pingora's HTTP/1 client
//! session and copies the answer back itself, instead of going through
//! Pingora's proxy framework (two halves joined by a channel, a header copy
//! and an idle-watcher task per request). Errors carry Pingora's error
//! types, so [`super::Core::fail`] answers 502/504 exactly as for the
//! framework's way.

use std::cell::RefCell;
use std::future::Future;
use std::task::{Context, Waker};
use std::time::Instant;

use pingora::connectors::TransportConnector;
use pingora::http::RequestHeader;
use pingora::protocols::http::v1::client::HttpSession as ClientSession;
use pingora::protocols::Stream;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::upstreams::peer::HttpPeer;
use pingora::Result;
use thread_local::ThreadLocal;
use tokio::io::AsyncReadExt;

/// Idle upstream connections kept per thread.
const POOL_PER_THREAD: usize = 64;

/// Informational answers (103 Early Hints …) skipped before the real one.
const MAX_INFORMATIONAL: usize = 8;

pub(super) struct Direct {
    connector: TransportConnector,
    /// The portal; its options carry the read, write and idle timeouts.
    peer: HttpPeer,
    /// Per thread, so that a connection is taken and given back without a
    /// lock; with one shard per thread it never changes threads.
    pool: ThreadLocal<RefCell<Vec<(Stream, Instant)>>>,
}

impl Direct {
    pub(super) fn new(peer: HttpPeer) -> Self {
        Self { connector: TransportConnector::new(None), peer, pool: ThreadLocal::new() }
    }

    /// A live pooled connection, or a new one.
    async fn checkout(&self) -> Result<Stream> {
        let pool = self.pool.get_or(|| RefCell::new(Vec::new()));
        loop {
            let taken = pool.borrow_mut().pop();
            let Some((mut stream, since)) = taken else { break };
            if self.peer.options.idle_timeout.is_some_and(|t| since.elapsed() >= t) {
                continue;
            }
            // An idle connection must have nothing to read: EOF means the
            // portal closed it, data means it is out of step. Unconstrained:
            // with the task's co-operative budget spent, tokio would answer
            // Pending even for a closed connection.
            let mut probe = [0u8; 1];
            let idle = {
                let mut read = std::pin::pin!(tokio::task::unconstrained(stream.read(&mut probe)));
                read.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending()
            };
            if idle {
                return Ok(stream);
            }
        }
        self.connector.new_stream(&self.peer).await.map_err(|e| e.into_up())
    }

    fn checkin(&self, stream: Stream) {
        let mut pool = self.pool.get_or(|| RefCell::new(Vec::new())).borrow_mut();
        if pool.len() < POOL_PER_THREAD {
            pool.push((stream, Instant::now()));
        }
    }

    /// Sends `req` upstream and copies the answer to `session`: the header
    /// together with the first piece of the body, then the rest.
    pub(super) async fn forward(&self, session: &mut ServerSession, req: RequestHeader) -> Result<()> {
        let stream = self.checkout().await?;
        let mut up = ClientSession::new(stream);
        up.read_timeout = self.peer.options.read_timeout;
        up.write_timeout = self.peer.options.write_timeout;
        up.write_request_header(Box::new(req)).await.map_err(|e| e.into_up())?;
        let mut informational = 0;
        loop {
            up.read_response().await.map_err(|e| e.into_up())?;
            match up.get_status() {
                Some(s) if s.is_informational() && informational < MAX_INFORMATIONAL => informational += 1,
                _ => break,
            }
        }
        up.respect_keepalive();
        let Some(resp) = up.resp_header().cloned() else {
            return pingora::Error::e_explain(pingora::ErrorType::InvalidHTTPHeader, "no response header").map_err(|e| e.into_up());
        };
        let first = up.read_body_bytes().await.map_err(|e| e.into_up())?;
        let mut end = first.is_none() || up.is_body_done();
        session
            .response_duplex_vec(vec![HttpTask::Header(Box::new(resp), false), HttpTask::Body(first, end)])
            .await
            .map_err(|e| e.into_down())?;
        while !end {
            let chunk = up.read_body_bytes().await.map_err(|e| e.into_up())?;
            end = chunk.is_none() || up.is_body_done();
            session.write_response_body(chunk.unwrap_or_default(), end).await.map_err(|e| e.into_down())?;
        }
        if let Some(stream) = up.reuse().await {
            self.checkin(stream);
        }
        Ok(())
    }
}
