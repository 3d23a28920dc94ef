//! The handle users hold: read, write, close, abort, user data.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::task::AtomicWaker;
use tokio::sync::Notify;

use crate::stats::{ConnectionCounters, ConnectionStats};
use crate::{ClosureReason, Error, TlsInfo, UserData};

/// A connection's number, unique within its server for the server's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(pub(crate) u64);

impl ConnectionId {
    /// The number itself.
    ///
    /// ```
    /// # fn show(connection: &switchboard::Connection) {
    /// println!("connection {} is number {}", connection.id(), connection.id().get());
    /// # }
    /// ```
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Accepted by one of the server's listeners.
    Inbound,
    /// Opened by [`Server::connect`](crate::Server::connect) or
    /// [`Server::spawn_connect`](crate::Server::spawn_connect).
    Outbound,
}

/// What a connection's handles ask of its driver, and what the driver tells them back.
/// Guarded by one mutex, held only for a few field updates at a time.
pub(crate) struct State {
    /// The application wants the next `on_read_completed`.
    pub(crate) read_requested: bool,
    /// Buffers written by the application that the driver has not yet taken.
    pub(crate) queue: VecDeque<Bytes>,
    /// Bytes in `queue` plus those the driver holds and has not yet handed to the kernel.
    pub(crate) queued_bytes: usize,
    /// `shutdown_write` was called.
    pub(crate) shutdown_write_requested: bool,
    /// `close` was called.
    pub(crate) close_requested: bool,
    /// An abort was asked for (by the application, abort-all or a forced shutdown).
    pub(crate) abort_requested: Option<ClosureReason>,
    /// The manager's shutdown has started and this connection has not been told yet.
    pub(crate) shutdown_notice: bool,
    /// The peer's FIN was seen: reads cannot complete any more.
    pub(crate) read_closed: bool,
    /// The connection is closing or closed: no more writes or reads are taken.
    pub(crate) closing: bool,
    /// The driver has left its I/O loop: the socket is closed, only the final callbacks remain.
    pub(crate) ended: bool,
    /// Something changed since the driver last read the state.
    pub(crate) dirty: bool,
    /// The queue went above the high watermark and has not yet drained to the low one.
    pub(crate) above_high: bool,
    /// The connection's timeouts, as the application last set them.
    pub(crate) timeouts: Timeouts,
    /// The application wants the next urgent byte ([`Connection::read_oob`]).
    pub(crate) oob_requested: bool,
    /// Urgent bytes to send ([`Connection::send_urgent`]).
    pub(crate) urgent: Vec<u8>,
}

impl State {
    /// Closing, closed, or about to be aborted: no more reads or writes are taken.
    fn is_closing(&self) -> bool {
        self.closing || self.abort_requested.is_some()
    }

    /// Why a write would be refused whatever the queue holds, if it would.
    fn write_refusal(&self) -> Option<Error> {
        if self.is_closing() {
            Some(Error::ConnectionClosed)
        } else if self.shutdown_write_requested {
            Some(Error::WriteShutdown)
        } else {
            None
        }
    }
}

/// Write queue bounds of one connection, fixed when it is created.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteLimits {
    /// Writes are refused while the queue holds this much.
    pub(crate) limit: usize,
    /// Above this, the queue is "high": `on_write_buffer_high`, `writable()` waits.
    pub(crate) high: usize,
    /// Back at or below this, the queue is no longer high: `on_write_buffer_low`.
    pub(crate) low: usize,
}

/// A connection's timeouts; `None` turns one off. Each ends the connection (with a reset) with a
/// closure reason of its own. The server's settings
/// ([`ServerBuilder::idle_timeout`](crate::ServerBuilder::idle_timeout) and its neighbours) are
/// every connection's starting point; [`Connection::set_timeouts`] changes one connection's.
///
/// ```
/// # fn example(connection: &switchboard::Connection) {
/// use std::time::Duration;
/// let mut timeouts = connection.timeouts();
/// timeouts.idle = Some(Duration::from_secs(300)); // a long-poll client may sit quietly
/// connection.set_timeouts(timeouts);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// No byte read or written for this long:
    /// [`ClosureReason::IdleTimedOut`].
    pub idle: Option<Duration>,
    /// A requested read got no data for this long (time spent with reads paused by a full write
    /// queue does not count): [`ClosureReason::ReadTimedOut`].
    pub read: Option<Duration>,
    /// The peer sent FIN and the connection is still open this long after:
    /// [`ClosureReason::HalfClosedTimedOut`].
    pub half_closed: Option<Duration>,
    /// No byte arrived this long after the connection was established (for TLS, after the
    /// handshake): [`ClosureReason::FirstByteTimedOut`].
    /// The defence against clients that connect and say nothing (slowloris).
    pub first_byte: Option<Duration>,
}

/// The part of a connection shared by its driver, its handles and the manager's registry.
pub(crate) struct Shared {
    pub(crate) id: ConnectionId,
    pub(crate) peer_addr: SocketAddr,
    pub(crate) local_addr: SocketAddr,
    pub(crate) direction: Direction,
    pub(crate) write_limits: WriteLimits,
    pub(crate) user_data: UserData,
    pub(crate) counters: ConnectionCounters,
    state: Mutex<State>,
    /// The driver is parked (or about to park) and must be woken for any change. Set under the
    /// state lock, so a change made under that lock either is seen before parking or wakes.
    parked: AtomicBool,
    /// Set with a wake-up; cleared by the driver when it sees it.
    woken: AtomicBool,
    waker: AtomicWaker,
    /// Counted [`Connection`] handles held by the application.
    handles: AtomicUsize,
    /// What the TLS handshake negotiated, once it has.
    pub(crate) tls: OnceLock<TlsInfo>,
    /// Whether this is a TLS connection (negotiated or not yet).
    pub(crate) is_tls: bool,
    /// Signalled when the queue drains to the low watermark, and when the connection ends.
    pub(crate) room: Notify,
    /// The driver's task, on which waiting for room would never end.
    pub(crate) task: OnceLock<tokio::task::Id>,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: ConnectionId,
        peer_addr: SocketAddr,
        local_addr: SocketAddr,
        direction: Direction,
        write_limits: WriteLimits,
        timeouts: Timeouts,
        is_tls: bool,
        user_data: UserData,
    ) -> Self {
        Shared {
            id,
            peer_addr,
            local_addr,
            direction,
            write_limits,
            user_data,
            counters: ConnectionCounters::default(),
            state: Mutex::new(State {
                read_requested: false,
                queue: VecDeque::new(),
                queued_bytes: 0,
                shutdown_write_requested: false,
                close_requested: false,
                abort_requested: None,
                shutdown_notice: false,
                read_closed: false,
                closing: false,
                ended: false,
                dirty: false,
                above_high: false,
                timeouts,
                oob_requested: false,
                urgent: Vec::new(),
            }),
            parked: AtomicBool::new(false),
            woken: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            handles: AtomicUsize::new(0),
            tls: OnceLock::new(),
            is_tls,
            room: Notify::new(),
            task: OnceLock::new(),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while this lock is held, but a poisoned lock must not turn one
        // connection's trouble into a panic in every handle, so the guard is recovered.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn handles(&self) -> usize {
        self.handles.load(Ordering::Acquire)
    }

    /// Applies `change` to the state and wakes the driver if it is parked.
    fn update(&self, change: impl FnOnce(&mut State)) {
        let mut state = self.state();
        change(&mut state);
        state.dirty = true;
        let wake = self.parked.load(Ordering::Relaxed);
        drop(state);
        if wake {
            self.woken.store(true, Ordering::Release);
            self.waker.wake();
        }
    }

    /// Parks the driver unless something changed since its last look at the state (`false`).
    /// Changes made from now on wake it through [`Shared::poll_woken`].
    pub(crate) fn park(&self) -> bool {
        let state = self.state();
        if state.dirty {
            return false;
        }
        self.parked.store(true, Ordering::Relaxed);
        true
    }

    /// Called by the driver when it wakes, for whatever reason: changes made while it runs are
    /// seen on its next look at the state, so they need not wake it.
    pub(crate) fn unpark(&self) {
        self.parked.store(false, Ordering::Relaxed);
    }

    /// Ready once a handle changed the state while the driver was parked.
    pub(crate) fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.woken.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.woken.swap(false, Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Asks the driver to abort with `reason` unless it is already ending. Returns whether this
    /// call was the one that ended it.
    pub(crate) fn request_abort(&self, reason: ClosureReason) -> bool {
        let mut requested = false;
        self.update(|state| {
            // A graceful close in progress is cut short too: the connection is still live.
            if state.abort_requested.is_none() && !state.ended {
                state.abort_requested = Some(reason);
                requested = true;
            }
        });
        // Writers waiting for room learn at once that none will come.
        self.room.notify_waiters();
        requested
    }

    pub(crate) fn notify_shutdown(&self) {
        self.update(|state| state.shutdown_notice = true);
    }
}

/// A handle to one connection: cheap to clone, usable from any task.
///
/// The handles given to callbacks are borrowed from the connection's own task. Cloning one
/// keeps the connection open (the C++ framework's reference count): a connection stays open while
/// a read is requested, a write is queued or in flight, or the application holds a clone; when
/// none is left it closes gracefully by itself with [`ClosureReason::Unreferenced`] (or
/// [`ClosureReason::PeerClosed`] after the peer's FIN).
///
/// Requests made through a handle (`read`, `write`, `close`…) are carried out by the connection's
/// task, in order, after the current callback returns.
///
/// ```no_run
/// use switchboard::{async_trait, Callbacks, Connection};
/// use bytes::BytesMut;
/// use std::net::SocketAddr;
///
/// struct Echo;
///
/// #[async_trait]
/// impl Callbacks for Echo {
///     async fn on_connection_established(&self, connection: &Connection, _peer: &SocketAddr) {
///         connection.read();
///     }
///     async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
///         // Zero-copy: the buffer read is the buffer written.
///         if connection.write(data.freeze()).is_ok() {
///             connection.read();
///         }
///     }
/// }
/// ```
pub struct Connection {
    shared: Arc<Shared>,
    /// Whether this handle counts toward the lifetime rule (every clone does; the driver's own
    /// handle, lent to callbacks, does not).
    counted: bool,
}

impl Connection {
    /// The driver's own handle, which does not keep the connection open.
    pub(crate) fn uncounted(shared: Arc<Shared>) -> Self {
        Connection {
            shared,
            counted: false,
        }
    }

    /// The connection's number.
    pub fn id(&self) -> ConnectionId {
        self.shared.id
    }

    /// The remote address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer_addr
    }

    /// The local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Whether the connection was accepted or opened by this side.
    pub fn direction(&self) -> Direction {
        self.shared.direction
    }

    /// The connection's user data slots.
    pub fn user_data(&self) -> &UserData {
        &self.shared.user_data
    }

    /// What the TLS handshake negotiated: `None` on a plain connection, and on a TLS connection
    /// before [`on_negotiation_complete`](crate::Callbacks::on_negotiation_complete) (that is,
    /// only in the failure callbacks of a handshake that did not finish).
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.shared.tls.get()
    }

    /// This connection's byte and operation counts so far.
    pub fn stats(&self) -> ConnectionStats {
        self.shared.counters.snapshot()
    }

    /// Bytes written by the application and not yet handed to the kernel.
    pub fn queued_write_bytes(&self) -> usize {
        self.shared.state().queued_bytes
    }

    /// Whether the connection is closing or closed (after `close`, `abort`, the peer's reset, or the
    /// lifetime rule). A closing connection takes no more reads or writes.
    pub fn is_closing(&self) -> bool {
        let state = self.shared.state();
        state.is_closing()
    }

    /// Requests one read: when data arrives, [`Callbacks::on_read_completed`](crate::Callbacks::on_read_completed)
    /// gets it, in a buffer of up to the [read buffer size](crate::ServerBuilder::read_buffer_size).
    /// The buffer is allocated only when data is there to read.
    ///
    /// At most one read is outstanding; requesting again before it completes changes nothing.
    /// A pending read keeps the connection open. After the peer's FIN, or once the connection is
    /// closing, a request is ignored: the events already tell why no data will come.
    pub fn read(&self) {
        self.shared.update(|state| {
            if !state.read_closed && !state.closing {
                state.read_requested = true;
            }
        });
    }

    /// Queues `data` to be sent. Once it has been handed to the kernel,
    /// [`Callbacks::on_write_completed`](crate::Callbacks::on_write_completed) gets the same buffer back.
    /// A queued write keeps the connection open until it is sent.
    ///
    /// # Errors
    /// - [`Error::WriteQueueFull`] if the queue already holds the
    ///   [write queue limit](crate::ServerBuilder::write_queue_limit) or more. A write is taken
    ///   whenever the queue is below the limit, so the queue never exceeds the limit plus one write.
    /// - [`Error::WriteShutdown`] after [`Connection::shutdown_write`].
    /// - [`Error::ConnectionClosed`] once the connection is closing or closed.
    pub fn write(&self, data: impl Into<Bytes>) -> Result<(), Error> {
        let data = data.into();
        let mut result = Ok(());
        self.shared.update(|state| {
            if let Some(refused) = state.write_refusal() {
                result = Err(refused);
            } else if state.queued_bytes >= self.shared.write_limits.limit {
                result = Err(Error::WriteQueueFull {
                    queued: state.queued_bytes,
                    limit: self.shared.write_limits.limit,
                });
            } else if !data.is_empty() {
                state.queued_bytes += data.len();
                if state.queued_bytes >= self.shared.write_limits.high {
                    state.above_high = true;
                }
                state.queue.push_back(data);
            }
        });
        result
    }

    /// Half-close: once the queued writes are sent, sends FIN. Reads go on; writes are refused from
    /// now on with [`Error::WriteShutdown`].
    pub fn shutdown_write(&self) {
        self.shared
            .update(|state| state.shutdown_write_requested = true);
        self.shared.room.notify_waiters();
    }

    /// Graceful close: stops reading, sends every queued write, sends FIN, then waits (up to the
    /// [close timeout](crate::ServerBuilder::close_timeout)) for the peer's FIN so that no data of
    /// ours is lost to a reset. Ends with [`ClosureReason::LocalClose`].
    pub fn close(&self) {
        self.shared.update(|state| {
            state.close_requested = true;
            // From now on writes and reads are refused, even before the driver gets to it.
            state.closing = true;
        });
        self.shared.room.notify_waiters();
    }

    /// Hard close: drops the queued writes and resets the connection (RST, through `SO_LINGER` 0).
    /// Ends with [`ClosureReason::LocalAbort`]. Overrides a `close` in progress.
    pub fn abort(&self) {
        self.shared.request_abort(ClosureReason::LocalAbort);
    }

    /// Waits until the write queue has room: returns at once unless the queue went above the
    /// [high watermark](crate::ServerBuilder::write_watermarks) (or holds the
    /// [limit](crate::ServerBuilder::write_queue_limit)), and then once it has drained to the low
    /// watermark. This is how a producer on a task of its own follows a slow peer without
    /// polling or dropping data.
    ///
    /// # Errors
    /// - [`Error::ConnectionClosed`] once the connection is closing or closed (also while waiting);
    ///   [`Error::WriteShutdown`] after [`Connection::shutdown_write`].
    /// - [`Error::WriteQueueFull`] when called on the connection's own task (from one of its
    ///   callbacks) while the queue is high: the queue only drains after the callback returns,
    ///   so waiting there would never end.
    pub async fn writable(&self) -> Result<(), Error> {
        loop {
            let notified = self.shared.room.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.shared.state();
                if let Some(refused) = state.write_refusal() {
                    return Err(refused);
                }
                let limits = self.shared.write_limits;
                if !state.above_high && state.queued_bytes < limits.limit {
                    return Ok(());
                }
                if tokio::task::try_id().is_some()
                    && tokio::task::try_id() == self.shared.task.get().copied()
                {
                    return Err(Error::WriteQueueFull {
                        queued: state.queued_bytes,
                        limit: limits.limit,
                    });
                }
            }
            notified.await;
        }
    }

    /// [`writable`](Connection::writable), then [`write`](Connection::write): queues `data`
    /// once the queue has room.
    ///
    /// # Errors
    /// As for [`writable`](Connection::writable) and [`write`](Connection::write).
    pub async fn write_all(&self, data: impl Into<Bytes>) -> Result<(), Error> {
        let data = data.into();
        loop {
            self.writable().await?;
            match self.write(data.clone()) {
                // Another writer took the room first: wait again.
                Err(Error::WriteQueueFull { .. }) => continue,
                result => return result,
            }
        }
    }

    /// This connection's timeouts (the server's settings until changed).
    pub fn timeouts(&self) -> Timeouts {
        self.shared.state().timeouts
    }

    /// Changes this connection's timeouts; the connection's task takes the change right after
    /// the current callback (or at once, if it is waiting). The first-byte and half-closed
    /// timeouts always count from their event (establishment, the peer's FIN). The idle and read
    /// timeouts are only tracked while on: turned on, they count from the moment the task takes
    /// the change; changed in length, from their event (the last byte, the read request).
    pub fn set_timeouts(&self, timeouts: Timeouts) {
        self.shared.update(|state| state.timeouts = timeouts);
    }

    /// Requests the next TCP urgent byte: when one arrives,
    /// [`Callbacks::on_read_oob_completed`](crate::Callbacks::on_read_oob_completed) gets it. One
    /// request, one byte, as for [`read`](Connection::read). Urgent data that arrived before the
    /// request is delivered at once (TCP keeps only the latest urgent byte).
    ///
    /// Asking also makes the connection's reads go on past urgent marks. Linux ends a read at
    /// the mark with data still queued behind it, and no readiness event follows; by default a
    /// short read clears the socket's readiness (as tokio's own reads do, saving a `recv` per
    /// message), so on a connection that never asked, the bytes behind an urgent byte wait for
    /// the peer's next segment. Call this once on connections whose peers send urgent data.
    ///
    /// # Errors
    /// [`Error::Unsupported`] on a TLS connection (urgent data bypasses TLS) and on platforms
    /// other than Linux and Android (which have no readiness event for it in tokio).
    pub fn read_oob(&self) -> Result<(), Error> {
        self.oob_supported()?;
        self.shared.update(|state| {
            if !state.closing {
                state.oob_requested = true;
            }
        });
        Ok(())
    }

    /// Sends `byte` as TCP urgent data (`MSG_OOB`), ahead of what is still in the write queue.
    /// A peer that does not ask for urgent data never sees it.
    ///
    /// # Errors
    /// [`Error::Unsupported`] as for [`read_oob`](Connection::read_oob);
    /// [`Error::ConnectionClosed`] and [`Error::WriteShutdown`] as for [`write`](Connection::write).
    pub fn send_urgent(&self, byte: u8) -> Result<(), Error> {
        self.oob_supported()?;
        let mut result = Ok(());
        self.shared.update(|state| match state.write_refusal() {
            Some(refused) => result = Err(refused),
            None => state.urgent.push(byte),
        });
        result
    }

    fn oob_supported(&self) -> Result<(), Error> {
        if !cfg!(any(target_os = "linux", target_os = "android")) {
            return Err(Error::Unsupported(
                "urgent data needs Linux or Android (tokio's PRIORITY readiness)",
            ));
        }
        if self.shared.is_tls {
            return Err(Error::Unsupported("urgent data on a TLS connection"));
        }
        Ok(())
    }
}

impl Clone for Connection {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::AcqRel);
        Connection {
            shared: self.shared.clone(),
            counted: true,
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.counted && self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last handle is gone: the driver re-checks the lifetime rule.
            self.shared.update(|_| {});
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.shared.id)
            .field("peer_addr", &self.shared.peer_addr)
            .field("local_addr", &self.shared.local_addr)
            .field("direction", &self.shared.direction)
            .finish()
    }
}
