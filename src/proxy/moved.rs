//! A client connection moved to the shard that serves it.
//!
//! Pingora accepts on the listener thread, and the socket it hands over is
//! registered with that thread's reactor: every time the client sends, the
//! listener thread would be woken first and would then wake the shard (an
//! eventfd write and a third thread on the CPU per request). So a plain TCP
//! connection is detached from Pingora's stream (a duplicate of its socket,
//! the original dropped and so deregistered) and attached again inside the
//! shard, whose reactor then watches it. TLS connections keep Pingora's
//! stream: their state lives in the TLS session, not only in the socket.

use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use async_trait::async_trait;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};
use tokio::net::TcpStream;

/// Bytes gathered before a write reaches the socket: a response header and
/// a small body leave in one segment.
const WRITE_BUFFER: usize = 1460;

/// Writes at least this long skip the buffer when it is empty: the short
/// way writes a whole answer at once, and copying it into the buffer first
/// gains nothing. (Pingora's framework writes a head and then its body;
/// heads this long are rare, and one then leaves in a segment of its own.)
const DIRECT_WRITE: usize = 1024;

/// Takes the socket out of a plain TCP stream that nothing has read from
/// yet; hands a TLS stream (or anything else) back unchanged.
pub(super) fn detach(stream: Stream) -> Result<OwnedFd, Stream> {
    let Some(l4) = stream.as_any().downcast_ref::<L4Stream>() else {
        return Err(stream);
    };
    // SAFETY: the descriptor belongs to `l4`, which is alive (borrowed from
    // `stream`) for as long as the borrowed descriptor is used: only to
    // duplicate it, right here.
    let fd = unsafe { BorrowedFd::borrow_raw(l4.as_raw_fd()) };
    match fd.try_clone_to_owned() {
        // Dropping Pingora's stream deregisters it from the listener's
        // reactor and closes its descriptor; the duplicate keeps the
        // connection open.
        Ok(owned) => Ok(owned),
        Err(e) => {
            tracing::debug!(error = %e, "could not duplicate a client socket; it stays where it was accepted");
            Err(stream)
        }
    }
}

/// Registers a detached socket with the current (the shard's) reactor.
pub(super) fn attach(fd: OwnedFd) -> std::io::Result<Stream> {
    let std = std::net::TcpStream::from(fd);
    std.set_nonblocking(true)?;
    let digest = Arc::new(SocketDigest::from_raw_fd(std.as_raw_fd()));
    let tcp = TcpStream::from_std(std)?;
    Ok(Box::new(Moved { io: BufWriter::with_capacity(WRITE_BUFFER, tcp), digest, established: SystemTime::now() }))
}

/// A client connection on its shard's reactor, with a small write buffer
/// (like Pingora's own stream) and no read buffer: riegel reads request
/// heads into its own buffer.
struct Moved {
    io: BufWriter<TcpStream>,
    digest: Arc<SocketDigest>,
    established: SystemTime,
}

impl fmt::Debug for Moved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Moved").field("fd", &self.io.get_ref().as_raw_fd()).finish()
    }
}

impl AsyncRead for Moved {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Moved {
    /// Whether a write of `len` bytes goes straight to the socket: a whole
    /// answer (the short way writes head and body at once) gains nothing
    /// from the buffer's copy; only an empty buffer keeps the order.
    fn skips_buffer(&self, len: usize) -> bool {
        len >= DIRECT_WRITE && self.io.buffer().is_empty()
    }
}

impl AsyncWrite for Moved {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.skips_buffer(buf.len()) {
            return Pin::new(self.io.get_mut()).poll_write(cx, buf);
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        if self.skips_buffer(bufs.iter().map(|b| b.len()).sum()) {
            return Pin::new(self.io.get_mut()).poll_write_vectored(cx, bufs);
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Moved {
    async fn shutdown(&mut self) {
        if let Err(e) = AsyncWriteExt::shutdown(&mut self.io).await {
            tracing::debug!(error = %e, "could not shut a client connection down");
        }
    }
}

impl UniqueID for Moved {
    fn id(&self) -> UniqueIDType {
        self.io.get_ref().as_raw_fd()
    }
}

impl Ssl for Moved {}

#[async_trait]
impl Peek for Moved {}

impl GetTimingDigest for Moved {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        vec![Some(TimingDigest { established_ts: self.established, establishment_duration: None, offload_wait_duration: None })]
    }
}

impl GetProxyDigest for Moved {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for Moved {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        Some(self.digest.clone())
    }
}
