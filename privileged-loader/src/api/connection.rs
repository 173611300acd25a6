//! Accepting connections on the socket within the limits: at most `max_connections` at
//! once (more are closed at accept and counted, never retried in a loop), an idle timeout,
//! a short life for peers the allow-list refuses, a forced close once the shutdown grace
//! period is over, and a pause when accept itself fails (at the file-descriptor limit a
//! retry at once would spin a core).
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::auth::AllowList;
use super::authority::AuthorityRewriter;
use super::limits::Limits;
use super::peer::Peer;
use super::quiet_log::QuietLog;

/// A refused peer keeps its connection this long: time to read why it was refused.
const REFUSED_PEER_LIFETIME: Duration = Duration::from_secs(1);
/// How long to wait before accepting again after accept failed (EMFILE, ENFILE, ENOMEM).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How long the socket must have had no connection before the heap is trimmed.
const TRIM_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

static OVER_LIMIT: QuietLog = QuietLog::new();
static ACCEPT_FAILED: QuietLog = QuietLog::new();

/// Counters of the accept loop, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    pub refused_over_limit: AtomicU64,
    pub accept_errors: AtomicU64,
}

/// The stream of accepted connections handed to the gRPC server.
pub struct Incoming {
    listener: UnixListener,
    slots: Arc<Semaphore>,
    limits: Limits,
    allow: AllowList,
    force_close: CancellationToken,
    stats: Arc<ConnectionStats>,
    pause: Option<Pin<Box<Sleep>>>,
    /// Told when a connection closes.
    closed: Arc<Notify>,
}

impl Incoming {
    pub fn new(
        listener: UnixListener,
        limits: Limits,
        allow: AllowList,
        force_close: CancellationToken,
        stats: Arc<ConnectionStats>,
    ) -> Self {
        let capacity = limits.max_connections.max(1);
        let slots = Arc::new(Semaphore::new(capacity));
        let closed = Arc::new(Notify::new());
        tokio::spawn(trim_when_idle(slots.clone(), capacity, closed.clone()));
        Self { listener, slots, limits, allow, force_close, stats, pause: None, closed }
    }

    fn admit(&self, stream: UnixStream) -> Option<Connection> {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            let refused = self.stats.refused_over_limit.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(suppressed) = OVER_LIMIT.admit() {
                tracing::warn!(
                    limit = self.limits.max_connections,
                    refused,
                    suppressed,
                    "refused a connection: api.limits.max_connections are open"
                );
            }
            return None;
        };
        let peer = match Peer::of(&stream) {
            Ok(peer) => peer,
            Err(err) => {
                tracing::debug!(%err, "dropped a connection whose peer credentials cannot be read");
                return None;
            }
        };
        let refused = !self.allow.permits(&peer);
        let lifetime = if refused { REFUSED_PEER_LIFETIME } else { self.limits.idle_timeout() };
        Some(Connection {
            io: stream,
            peer,
            _slot: Slot { _permit: permit, closed: self.closed.clone() },
            idle: Box::pin(tokio::time::sleep(lifetime)),
            idle_timeout: (!refused).then_some(lifetime),
            closing: Box::pin(self.force_close.clone().cancelled_owned()),
            rewriter: AuthorityRewriter::default(),
            ready: Vec::new(),
            ready_pos: 0,
        })
    }

    fn accept_failed(&mut self, err: &io::Error) {
        let failures = self.stats.accept_errors.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(suppressed) = ACCEPT_FAILED.admit() {
            tracing::error!(%err, failures, suppressed, "accepting a connection failed; pausing accepts briefly");
        }
        self.pause = Some(Box::pin(tokio::time::sleep(ACCEPT_ERROR_PAUSE)));
    }
}

impl Stream for Incoming {
    type Item = io::Result<Connection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(pause) = self.pause.as_mut() {
                ready!(pause.as_mut().poll(cx));
                self.pause = None;
            }
            match ready!(self.listener.poll_accept(cx)) {
                Ok((stream, _)) => {
                    if let Some(connection) = self.admit(stream) {
                        return Poll::Ready(Some(Ok(connection)));
                    }
                }
                Err(err) => self.accept_failed(&err),
            }
        }
    }
}

/// A connection's place under `max_connections`; its close wakes [`trim_when_idle`].
struct Slot {
    _permit: OwnedSemaphorePermit,
    closed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.closed.notify_one();
    }
}

/// After a burst of connections the heap holds their freed buffers in small chunks that
/// stay resident: once the socket has had no connection for [`TRIM_WHEN_IDLE_FOR`], give
/// them back (the RSS returns near its idle level; docs/benchmarks.md).
/// Every permit back (`capacity`) means no connection is open.
async fn trim_when_idle(slots: Arc<Semaphore>, capacity: usize, closed: Arc<Notify>) {
    loop {
        closed.notified().await;
        tokio::time::sleep(TRIM_WHEN_IDLE_FOR).await;
        if slots.available_permits() == capacity {
            let _ = tokio::task::spawn_blocking(crate::heap::release_free_memory).await;
        }
    }
}

/// One accepted connection: the socket, its peer, its slot, its deadlines.
pub struct Connection {
    io: UnixStream,
    peer: Peer,
    _slot: Slot,
    idle: Pin<Box<Sleep>>,
    /// `None` for a refused peer: its deadline is fixed, traffic does not extend it.
    idle_timeout: Option<Duration>,
    closing: Pin<Box<WaitForCancellationFutureOwned>>,
    rewriter: AuthorityRewriter,
    /// Rewritten bytes not yet handed to the HTTP/2 layer.
    ready: Vec<u8>,
    ready_pos: usize,
}

impl Connection {
    fn touch(&mut self) {
        if let Some(timeout) = self.idle_timeout {
            self.idle.as_mut().reset(Instant::now() + timeout);
        }
    }

    /// An error once the connection must end (idle, refused peer's time up, shutdown).
    fn poll_deadlines(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.closing.as_mut().poll(cx).is_ready() {
            return Poll::Ready(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the loader is shutting down",
            ));
        }
        if self.idle.as_mut().poll(cx).is_ready() {
            return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
        }
        Poll::Pending
    }

    fn take_ready(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.ready.len() - self.ready_pos);
        buf.put_slice(&self.ready[self.ready_pos..self.ready_pos + n]);
        self.ready_pos += n;
        if self.ready_pos == self.ready.len() {
            self.ready.clear();
            self.ready_pos = 0;
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Poll::Ready(err) = this.poll_deadlines(cx) {
            return Poll::Ready(Err(err));
        }
        loop {
            if this.ready_pos < this.ready.len() {
                this.take_ready(buf);
                return Poll::Ready(Ok(()));
            }
            let mut raw = [0u8; 16 * 1024];
            let mut raw_buf = ReadBuf::new(&mut raw);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut raw_buf))?;
            let read = raw_buf.filled();
            if read.is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.touch();
            this.rewriter
                .feed(read, &mut this.ready)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.io).poll_write(cx, buf))?;
        self.touch();
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}
