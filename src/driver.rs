//! The per-connection task: I/O, the lifetime rule, event order and the closure reason.
//!
//! One driver owns one socket. It takes requests from the connection's `State` (filled by
//! [`Connection`] handles), performs them, and invokes the connection's callbacks one at a time.
//! It never reaches back into the server; the manager only asks it to abort or to hear of a
//! shutdown through the same state.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::task::noop_waker_ref;
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::connection::Shared;
use crate::limit::Permit;
use crate::manager::{LiveGuard, Manager};
use crate::stats::ConnectionCounters;
use crate::tls::{self, TlsConnect, TlsInfo};
use crate::transport::Transport;
use crate::{ClosureReason, Connection, Direction, Error, Timeouts};

/// Most buffers handed to one `writev`; Linux's `IOV_MAX` is 1024, but a few dozen already cover
/// every queue the default 64 KiB limit can hold with ordinary message sizes.
const MAX_IO_SLICES: usize = 64;

/// What the driver will wait for next, decided under the state lock.
struct Plan {
    read: bool,
    tell_shutdown: bool,
    send_fin: bool,
    /// The queue crossed a watermark since the last announcement: `Some(true)` high,
    /// `Some(false)` low.
    watermark: Option<bool>,
    /// Wait for urgent data (only Linux and Android can).
    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
    oob: bool,
    /// Urgent bytes to send now.
    urgent: Vec<u8>,
}

/// What woke a parked driver.
enum Wake {
    Requests,
    Read(io::Result<BytesMut>),
    /// Urgent data is readable (only Linux and Android can tell).
    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
    Urgent,
    Wrote(io::Result<usize>),
    CloseNotifySent(io::Result<()>),
    Deadline,
}

/// The TLS side a connection takes in its handshake.
pub(crate) enum Secure {
    Accept(tokio_native_tls::TlsAcceptor),
    Connect(TlsConnect),
}

pub(crate) struct Driver {
    manager: Arc<Manager>,
    shared: Arc<Shared>,
    /// The uncounted handle lent to callbacks.
    connection: Connection,
    transport: Transport,
    /// The handshake still to run, for a TLS connection.
    secure: Option<Secure>,
    /// Buffers taken from the queue, oldest first; `offset` bytes of the front one are sent.
    in_flight: VecDeque<Bytes>,
    offset: usize,
    /// The peer's FIN was read.
    read_closed: bool,
    /// Our FIN was sent.
    write_closed: bool,
    told_shutdown: bool,
    /// Set once the connection is closing gracefully, with the reason it will end with.
    closing: Option<ClosureReason>,
    close_deadline: Option<Instant>,
    /// One timer for every deadline, set lazily: it may fire early, and is then re-armed for the
    /// deadline that moved (see [`Driver::next_deadline`]).
    timer: Option<Pin<Box<Sleep>>>,
    clock: Clock,
    /// The queue is high, as last announced to the callbacks.
    announced_high: bool,
    /// Urgent bytes the socket did not take yet.
    urgent: Vec<u8>,
    /// The application asked for urgent data: reads must go on past urgent marks.
    urgent_aware: bool,
    /// Watches the socket for urgent data, once the application asked for it.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    oob: Option<tokio::io::unix::AsyncFd<socket2::Socket>>,
    permit: Permit,
    live: LiveGuard,
}

/// When the things the timeouts measure last happened.
struct Clock {
    timeouts: Timeouts,
    established: Instant,
    first_byte_seen: bool,
    /// Last byte read or written (kept only with an idle timeout).
    last_activity: Instant,
    /// Since when a read has been requested and polled without data.
    read_since: Option<Instant>,
    /// When the peer's FIN was read.
    read_closed_at: Option<Instant>,
    /// Since when the write queue has been high.
    high_since: Option<Instant>,
}

impl Driver {
    pub(crate) fn new(
        manager: Arc<Manager>,
        shared: Arc<Shared>,
        stream: TcpStream,
        secure: Option<Secure>,
        permit: Permit,
        live: LiveGuard,
    ) -> Self {
        Driver {
            connection: Connection::uncounted(shared.clone()),
            manager,
            shared,
            transport: Transport::Plain(stream),
            secure,
            in_flight: VecDeque::new(),
            offset: 0,
            read_closed: false,
            write_closed: false,
            told_shutdown: false,
            closing: None,
            close_deadline: None,
            timer: None,
            clock: Clock {
                timeouts: Timeouts::default(),
                established: Instant::now(),
                first_byte_seen: false,
                last_activity: Instant::now(),
                read_since: None,
                read_closed_at: None,
                high_since: None,
            },
            announced_high: false,
            urgent: Vec::new(),
            urgent_aware: false,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            oob: None,
            permit,
            live,
        }
    }

    /// Runs the connection from establishment to release. A connection `refuse`d by the accept
    /// loop (the per-address cap) gets only its closing events, with that reason.
    pub(crate) async fn run(mut self, refuse: Option<ClosureReason>) {
        let _ = self.shared.task.set(tokio::task::id());
        let reason = match refuse {
            Some(reason) => reason,
            None => self.live().await,
        };
        // Boxed, like the handshake: a connection's task is as large as its largest await, and
        // these run once, so they should not make every idle connection pay for their state.
        Box::pin(self.finish(reason)).await;
    }

    /// From the handshake (for TLS) to the end of the I/O loop; returns the closure reason.
    async fn live(&mut self) -> ClosureReason {
        if let Some(secure) = self.secure.take() {
            if let Err(reason) = Box::pin(self.handshake(secure)).await {
                return reason;
            }
        }
        let peer = self.shared.peer_addr;
        let callbacks = &self.manager.callbacks;
        if !self
            .call(
                "on_connection_established",
                callbacks.on_connection_established(&self.connection, &peer),
            )
            .await
        {
            return ClosureReason::CallbackPanic;
        }
        let now = Instant::now();
        self.clock.established = now;
        self.clock.last_activity = now;
        self.io_loop().await
    }

    /// Runs the TLS handshake on this task, bounded by the handshake timeout and cut short by an
    /// abort, then the negotiation events. `Err` carries the closure reason of a failure, after
    /// its `on_fatal_error` / `on_remote_fatal_error`.
    async fn handshake(&mut self, secure: Secure) -> Result<(), ClosureReason> {
        let manager = self.manager.clone();
        // Only accepted connections count against the cap: it guards against floods from
        // outside, and an outgoing connect is the application's own doing.
        let _slot = match secure {
            Secure::Accept(_) => match manager.handshakes.try_acquire() {
                Ok(slot) => Some(slot),
                Err(_) => return Err(ClosureReason::HandshakeLimit),
            },
            Secure::Connect(_) => None,
        };
        let Transport::Plain(tcp) = std::mem::replace(&mut self.transport, Transport::Gone) else {
            unreachable!("a handshake starts on the plain socket");
        };
        // The handshake owns the socket. A second descriptor for it lets a handshake cut short
        // (abort, timeout) end with RST like any abort, while a failed one closes with FIN so
        // that the alert OpenSSL wrote still reaches the peer.
        let socket = SockRef::from(&tcp).try_clone().ok();
        let reset = |reason| {
            if let Some(socket) = &socket {
                let _ = socket.set_linger(Some(Duration::ZERO));
            }
            Err(reason)
        };
        let (side, mut negotiation): (_, Pin<Box<dyn Future<Output = _> + Send>>) = match secure {
            Secure::Accept(acceptor) => (
                Direction::Inbound,
                Box::pin(async move { acceptor.accept(tcp).await }),
            ),
            Secure::Connect(tls) => (
                Direction::Outbound,
                Box::pin(async move { tls.connector.connect(&tls.domain, tcp).await }),
            ),
        };
        let timeout = tokio::time::sleep(manager.config.handshake_timeout);
        tokio::pin!(timeout);
        let outcome = loop {
            {
                let mut state = self.shared.state();
                state.dirty = false;
                if let Some(reason) = state.abort_requested {
                    return reset(reason);
                }
            }
            if !self.shared.park() {
                continue;
            }
            let woken = tokio::select! {
                biased;
                _ = poll_fn(|cx| self.shared.poll_woken(cx)) => None,
                outcome = &mut negotiation => Some(Some(outcome)),
                _ = &mut timeout => Some(None),
            };
            self.shared.unpark();
            match woken {
                None => continue,
                Some(None) => return reset(ClosureReason::HandshakeTimedOut),
                Some(Some(outcome)) => break outcome,
            }
        };
        drop(socket);
        let stream = match outcome {
            Ok(stream) => stream,
            Err(error) => {
                // A peer that resets or just closes during the handshake (a port scanner, a
                // client that gave up) ended the connection; that is not a TLS failure.
                match tls::handshake_ended_by_peer(&error) {
                    Some(true) => return Err(ClosureReason::PeerReset),
                    Some(false) => return Err(ClosureReason::PeerClosed),
                    None => {}
                }
                return Err(self.tls_failed(error).await);
            }
        };
        let info = TlsInfo::from_stream(side, stream.get_ref());
        self.transport = Transport::tls(stream);
        let info = self.shared.tls.get_or_init(|| info);
        let callbacks = &manager.callbacks;
        if !self
            .call(
                "on_negotiation_complete",
                callbacks.on_negotiation_complete(&self.connection, info),
            )
            .await
        {
            return Err(ClosureReason::CallbackPanic);
        }
        let peer = self.shared.peer_addr;
        if !self
            .call(
                "on_secure_connection_established",
                callbacks.on_secure_connection_established(&self.connection, &peer),
            )
            .await
        {
            return Err(ClosureReason::CallbackPanic);
        }
        Ok(())
    }

    /// Reports a TLS failure (the TLS library's error) to the callback for its side (a peer's
    /// alert, or ours) and gives the closure reason.
    async fn tls_failed(
        &mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> ClosureReason {
        let callbacks = &self.manager.callbacks;
        let from_peer = tls::is_peer_alert(&source);
        let error = Error::Tls {
            from_peer,
            source: Box::new(source),
        };
        tracing::debug!(%error, "TLS failure");
        if from_peer {
            self.call(
                "on_remote_fatal_error",
                callbacks.on_remote_fatal_error(&self.connection, &error),
            )
            .await;
            ClosureReason::TlsAlert
        } else {
            self.call(
                "on_fatal_error",
                callbacks.on_fatal_error(&self.connection, &error),
            )
            .await;
            ClosureReason::TlsError
        }
    }

    /// Invokes a callback of this connection; `false` if it panicked (already reported).
    async fn call(
        &self,
        name: &'static str,
        callback: impl std::future::Future<Output = ()>,
    ) -> bool {
        self.manager
            .guard(name, Some(self.shared.id), callback)
            .await
            .is_some()
    }

    /// Reads requests from the state: aborts, closes, queued writes, the shutdown notice, and the
    /// lifetime rule. `Err` carries the reason of an abort.
    fn plan(&mut self) -> Result<Plan, ClosureReason> {
        let close_timeout = self.manager.config.close_timeout;
        let mut state = self.shared.state();
        state.dirty = false;
        if let Some(reason) = state.abort_requested {
            return Err(reason);
        }
        let mut begin_close = None;
        if self.closing.is_none() && state.close_requested {
            begin_close = Some(ClosureReason::LocalClose);
        }
        if !state.queue.is_empty() {
            self.in_flight.append(&mut state.queue);
        }
        let tell_shutdown = state.shutdown_notice && !self.told_shutdown && self.closing.is_none();
        if self.closing.is_none() && begin_close.is_none() && !tell_shutdown {
            let nothing_pending = !state.read_requested
                && self.in_flight.is_empty()
                && state.urgent.is_empty()
                && self.urgent.is_empty()
                && self.shared.handles() == 0;
            let nothing_possible = self.read_closed && self.write_closed;
            if nothing_pending || nothing_possible {
                begin_close = Some(if self.read_closed {
                    ClosureReason::PeerClosed
                } else {
                    ClosureReason::Unreferenced
                });
            }
        }
        if let Some(reason) = begin_close {
            self.closing = Some(reason);
            self.close_deadline = Some(Instant::now() + close_timeout);
            state.closing = true;
            state.read_requested = false;
            state.oob_requested = false;
        }
        if self.clock.timeouts != state.timeouts {
            let timeouts = state.timeouts;
            if self.clock.timeouts.idle.is_none() && timeouts.idle.is_some() {
                // The last byte is not tracked while the idle timeout is off: count from now.
                self.clock.last_activity = Instant::now();
            }
            self.clock.timeouts = timeouts;
        }
        let watermark = (state.above_high != self.announced_high).then_some(state.above_high);
        let urgent = std::mem::take(&mut state.urgent);
        let oob = state.oob_requested && self.closing.is_none();
        self.urgent_aware |= oob;
        let read = if self.closing.is_some() {
            // Reading on while closing drains what the peer still sends, so that closing the
            // socket with unread data does not turn our FIN into a reset.
            !self.read_closed
        } else {
            // Reads pause while the write queue is at its limit: a peer that sends without reading
            // our replies is held back by TCP flow control instead of growing the queue.
            state.read_requested && state.queued_bytes < self.shared.write_limits.limit
        };
        let send_fin = !self.write_closed
            && self.in_flight.is_empty()
            && (self.closing.is_some() || state.shutdown_write_requested);
        Ok(Plan {
            read,
            tell_shutdown,
            send_fin,
            watermark,
            oob,
            urgent,
        })
    }

    async fn io_loop(&mut self) -> ClosureReason {
        loop {
            let plan = match self.plan() {
                Ok(plan) => plan,
                Err(abort) => return abort,
            };
            if !plan.urgent.is_empty() {
                self.send_urgent(&plan.urgent);
            }
            if let Some(high) = plan.watermark {
                if let Err(reason) = self.announce_watermark(high).await {
                    return reason;
                }
            }
            if plan.tell_shutdown {
                self.told_shutdown = true;
                let callbacks = &self.manager.callbacks;
                if !self
                    .call(
                        "on_shutdown_requested",
                        callbacks.on_shutdown_requested(&self.connection),
                    )
                    .await
                {
                    return ClosureReason::CallbackPanic;
                }
                continue;
            }
            if plan.send_fin {
                if let Poll::Ready(sent) = self.try_close_notify() {
                    self.send_fin(sent);
                }
            }
            if let Some(reason) = self.closing {
                if self.write_closed && self.read_closed {
                    return reason;
                }
            }
            if !self.in_flight.is_empty() {
                match self.write_ready(None).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(reason) => return reason,
                }
            }

            // Park until a handle asks for something, the socket has data, room or urgent data,
            // or a deadline passes.
            if !self.shared.park() {
                continue;
            }
            self.arm_timer(plan.read);
            let notify = plan.send_fin && !self.write_closed;
            #[cfg(any(target_os = "linux", target_os = "android"))]
            let wake = if plan.oob {
                // Boxed: only connections that asked for urgent data carry this wait's state.
                Box::pin(self.wait_with_urgent(plan.read, notify)).await
            } else {
                poll_fn(|cx| self.poll_wake(cx, plan.read, notify)).await
            };
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            let wake = poll_fn(|cx| self.poll_wake(cx, plan.read, notify)).await;
            self.shared.unpark();
            match wake {
                Wake::Requests => {}
                Wake::Deadline => match self.next_deadline() {
                    Some((at, reason)) if at <= Instant::now() => return reason,
                    Some((at, _)) => {
                        if let Some(timer) = self.timer.as_mut() {
                            timer.as_mut().reset(at);
                        }
                    }
                    None => self.timer = None,
                },
                Wake::Read(Ok(data)) => {
                    if let Some(reason) = self.read_completed(data).await {
                        return reason;
                    }
                }
                Wake::Read(Err(error)) => {
                    // Boxed, as error paths are: their state would otherwise be part of every
                    // connection's task.
                    if let Some(reason) = Box::pin(self.read_failed(error)).await {
                        return reason;
                    }
                }
                Wake::Urgent => {
                    if let Some(reason) = self.urgent_arrived().await {
                        return reason;
                    }
                }
                Wake::Wrote(result) => {
                    if let Err(reason) = self.write_ready(Some(result)).await {
                        return reason;
                    }
                }
                Wake::CloseNotifySent(sent) => self.send_fin(sent),
            }
        }
    }

    /// [`Driver::poll_wake`], and urgent data too.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    async fn wait_with_urgent(&mut self, read: bool, notify: bool) -> Wake {
        let oob = self.oob_watch();
        let wake = tokio::select! {
            biased;
            wake = poll_fn(|cx| self.poll_wake(cx, read, notify)) => wake,
            () = urgent_ready(oob.as_ref()) => Wake::Urgent,
        };
        if oob.is_some() {
            self.oob = oob;
        }
        wake
    }

    /// What a parked driver waits for, in priority order: requests from handles, data, room for
    /// queued writes (or for `close_notify`, or for urgent bytes), the timer.
    fn poll_wake(&mut self, cx: &mut Context<'_>, read: bool, notify: bool) -> Poll<Wake> {
        if self.shared.poll_woken(cx).is_ready() {
            return Poll::Ready(Wake::Requests);
        }
        if read {
            let size = self.manager.config.read_buffer_size;
            if let Poll::Ready(result) = self.transport.poll_read(cx, size, self.urgent_aware) {
                return Poll::Ready(Wake::Read(result));
            }
        }
        if !self.in_flight.is_empty() {
            if let Poll::Ready(result) = self.poll_write_from(cx, 0) {
                return Poll::Ready(Wake::Wrote(result));
            }
        } else if notify {
            if let Poll::Ready(result) = self.transport.poll_close_notify(cx) {
                return Poll::Ready(Wake::CloseNotifySent(result));
            }
        }
        if !self.urgent.is_empty() {
            if let Some(tcp) = self.transport.tcp() {
                if tcp.poll_write_ready(cx).is_ready() {
                    return Poll::Ready(Wake::Requests);
                }
            }
        }
        if let Some(timer) = self.timer.as_mut() {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Deadline);
            }
        }
        Poll::Pending
    }

    /// The earliest deadline in force and the reason it ends the connection with. Closing, only
    /// the close timeout counts.
    fn next_deadline(&self) -> Option<(Instant, ClosureReason)> {
        if let Some(at) = self.close_deadline {
            return Some((at, ClosureReason::CloseTimedOut));
        }
        let clock = &self.clock;
        let timeouts = &clock.timeouts;
        let candidates = [
            (
                self.manager
                    .config
                    .slow_consumer_timeout
                    .zip(clock.high_since)
                    .map(|(timeout, since)| since + timeout),
                ClosureReason::SlowConsumer,
            ),
            (
                timeouts.idle.map(|timeout| clock.last_activity + timeout),
                ClosureReason::IdleTimedOut,
            ),
            (
                timeouts
                    .read
                    .zip(clock.read_since)
                    .map(|(timeout, since)| since + timeout),
                ClosureReason::ReadTimedOut,
            ),
            (
                timeouts
                    .first_byte
                    .filter(|_| !clock.first_byte_seen)
                    .map(|timeout| clock.established + timeout),
                ClosureReason::FirstByteTimedOut,
            ),
            (
                timeouts
                    .half_closed
                    .zip(clock.read_closed_at)
                    .map(|(timeout, since)| since + timeout),
                ClosureReason::HalfClosedTimedOut,
            ),
        ];
        candidates
            .into_iter()
            .filter_map(|(at, reason)| at.map(|at| (at, reason)))
            .min_by_key(|(at, _)| *at)
    }

    /// Notes when a read started waiting, then makes sure the timer fires no later than the next
    /// deadline. A timer set for an earlier moment is left alone: it fires, the deadline is
    /// recomputed, and the timer re-armed (so a busy connection does not reset it per message).
    fn arm_timer(&mut self, reading: bool) {
        if self.clock.timeouts.read.is_some() && reading && self.closing.is_none() {
            self.clock.read_since.get_or_insert_with(Instant::now);
        } else {
            self.clock.read_since = None;
        }
        let Some((at, _)) = self.next_deadline() else {
            return;
        };
        match self.timer.as_mut() {
            Some(timer) if timer.deadline() <= at => {}
            Some(timer) => timer.as_mut().reset(at),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Whether a failed read or write means the peer reset the connection. Besides ECONNRESET:
    /// once the peer's FIN was read, Linux reports its later RST to a write as EPIPE, which then
    /// means a reset as long as our own FIN has not been sent (after it, EPIPE is our doing).
    fn is_peer_reset(&self, error: &io::Error) -> bool {
        is_reset(error)
            || (error.kind() == io::ErrorKind::BrokenPipe && self.read_closed && !self.write_closed)
    }

    /// Tells the application that the write queue went high or drained to low.
    async fn announce_watermark(&mut self, high: bool) -> Result<(), ClosureReason> {
        self.announced_high = high;
        self.clock.high_since = high.then(Instant::now);
        let callbacks = &self.manager.callbacks;
        let survived = if high {
            self.call(
                "on_write_buffer_high",
                callbacks.on_write_buffer_high(&self.connection),
            )
            .await
        } else {
            self.call(
                "on_write_buffer_low",
                callbacks.on_write_buffer_low(&self.connection),
            )
            .await
        };
        if survived {
            Ok(())
        } else {
            Err(ClosureReason::CallbackPanic)
        }
    }

    /// Sends urgent bytes (those the socket does not take now wait for the next turn).
    fn send_urgent(&mut self, bytes: &[u8]) {
        self.urgent.extend_from_slice(bytes);
        let Some(tcp) = self.transport.tcp() else {
            self.urgent.clear();
            return;
        };
        let socket = SockRef::from(tcp);
        let mut sent = 0;
        for byte in &self.urgent {
            match socket.send_out_of_band(std::slice::from_ref(byte)) {
                Ok(_) => sent += 1,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    // The connection is failing; its reads and writes will say how.
                    tracing::debug!(%error, "urgent byte not sent");
                    sent = self.urgent.len();
                    break;
                }
            }
        }
        self.urgent.drain(..sent);
    }

    /// The urgent-data watcher, created at the first request: a second descriptor for the
    /// socket, registered for priority readiness only (tokio's `TcpStream` cannot wait for it
    /// while its reads and writes are polled).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn oob_watch(&mut self) -> Option<tokio::io::unix::AsyncFd<socket2::Socket>> {
        if let Some(watch) = self.oob.take() {
            return Some(watch);
        }
        let socket = SockRef::from(self.transport.tcp()?).try_clone().ok()?;
        register_priority(socket)
    }

    /// Reads the urgent byte the socket announced and delivers it.
    async fn urgent_arrived(&mut self) -> Option<ClosureReason> {
        let byte = match self.transport.tcp().map(recv_urgent_byte) {
            Some(Ok(Some(byte))) => byte,
            // No urgent byte after all (taken already, or the socket is failing: its reads
            // will say how).
            _ => return None,
        };
        self.shared.state().oob_requested = false;
        let callbacks = &self.manager.callbacks;
        let data = BytesMut::from(&[byte][..]);
        if !self
            .call(
                "on_read_oob_completed",
                callbacks.on_read_oob_completed(&self.connection, data),
            )
            .await
        {
            return Some(ClosureReason::CallbackPanic);
        }
        None
    }

    /// Attempts to send TLS `close_notify` without waiting.
    fn try_close_notify(&mut self) -> Poll<io::Result<()>> {
        let mut cx = Context::from_waker(noop_waker_ref());
        self.transport.poll_close_notify(&mut cx)
    }

    /// Sends FIN once TLS `close_notify` went out (or at once on plain TCP). Errors mean the peer
    /// is gone already; the read side will tell how.
    fn send_fin(&mut self, close_notify: io::Result<()>) {
        if let Err(error) = close_notify {
            tracing::debug!(%error, "close_notify not sent");
        }
        if let Some(tcp) = self.transport.tcp() {
            let _ = SockRef::from(tcp).shutdown(Shutdown::Write);
        }
        self.write_closed = true;
    }

    /// Data (or the end of the stream, as an empty buffer) arrived for a requested read, or
    /// while closing.
    async fn read_completed(&mut self, data: BytesMut) -> Option<ClosureReason> {
        if self.closing.is_some() {
            // Closing: what the peer still sends is dropped until its FIN.
            if data.is_empty() {
                self.read_closed = true;
            }
            return None;
        }
        if data.is_empty() {
            self.read_closed = true;
            self.clock.read_closed_at = Some(Instant::now());
            self.clock.read_since = None;
            {
                let mut state = self.shared.state();
                state.read_closed = true;
                state.read_requested = false;
            }
            let callbacks = &self.manager.callbacks;
            if !self
                .call(
                    "on_connection_client_close",
                    callbacks.on_connection_client_close(&self.connection),
                )
                .await
            {
                return Some(ClosureReason::CallbackPanic);
            }
            return None;
        }
        self.shared.state().read_requested = false;
        self.clock.first_byte_seen = true;
        self.clock.read_since = None;
        if self.clock.timeouts.idle.is_some() {
            self.clock.last_activity = Instant::now();
        }
        let counters = &self.shared.counters;
        ConnectionCounters::add(&counters.bytes_read, data.len() as u64);
        ConnectionCounters::add(&counters.reads, 1);
        let callbacks = &self.manager.callbacks;
        if !self
            .call(
                "on_read_completed",
                callbacks.on_read_completed(&self.connection, data),
            )
            .await
        {
            return Some(ClosureReason::CallbackPanic);
        }
        None
    }

    /// A read failed: reset, a TLS failure, or an error the application may choose to survive.
    async fn read_failed(&mut self, error: io::Error) -> Option<ClosureReason> {
        if matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        ) {
            return None;
        }
        if self.transport.is_tls() && tls::is_unexpected_eof(&error) {
            // TCP closed without close_notify: taken as the peer's FIN.
            return self.read_completed(BytesMut::new()).await;
        }
        let callbacks = &self.manager.callbacks;
        if self.is_peer_reset(&error) {
            if self.closing.is_none() {
                self.call(
                    "on_connection_reset",
                    callbacks.on_connection_reset(&self.connection, &error),
                )
                .await;
            }
            // While closing, a reset means what we had queued is lost.
            return Some(ClosureReason::PeerReset);
        }
        if let Some(reason) = self.closing {
            return Some(reason);
        }
        if self.transport.is_tls() && tls::is_tls_failure(&error) {
            return Some(self.tls_failed(error).await);
        }
        self.shared.state().read_requested = false;
        let keep = self
            .manager
            .guard(
                "on_read_error_may_not_be_fatal",
                Some(self.shared.id),
                callbacks.on_read_error_may_not_be_fatal(&self.connection, &error),
            )
            .await;
        match keep {
            None => Some(ClosureReason::CallbackPanic),
            Some(true) => None,
            Some(false) => {
                self.call(
                    "on_read_completion_error",
                    callbacks.on_read_completion_error(&self.connection, &error),
                )
                .await;
                Some(ClosureReason::ReadError)
            }
        }
    }

    /// Attempts a write without waiting: a full socket is `Pending` (and the driver then waits
    /// for room in [`Driver::poll_wake`], which registers the real waker).
    fn try_write_from(&mut self, completed: usize) -> Poll<io::Result<usize>> {
        let mut cx = Context::from_waker(noop_waker_ref());
        self.poll_write_from(&mut cx, completed)
    }

    /// Polls one write of the in-flight buffers after the first `completed` ones.
    fn poll_write_from(
        &mut self,
        cx: &mut Context<'_>,
        completed: usize,
    ) -> Poll<io::Result<usize>> {
        let mut slices = [IoSlice::new(&[]); MAX_IO_SLICES];
        let mut count = 0;
        for (i, buffer) in self.in_flight.iter().skip(completed).enumerate() {
            if count == MAX_IO_SLICES {
                break;
            }
            let start = if i == 0 { self.offset } else { 0 };
            slices[count] = IoSlice::new(&buffer[start..]);
            count += 1;
        }
        self.transport.poll_write(cx, &slices[..count])
    }

    /// Hands as much of the in-flight queue to the kernel as it takes (starting with the outcome
    /// of a write already made, if any), then reports the buffers that were sent in full.
    /// `Ok(true)` if anything was written (try again), `Ok(false)` if the socket is full, `Err`
    /// to end the connection.
    async fn write_ready(
        &mut self,
        mut first: Option<io::Result<usize>>,
    ) -> Result<bool, ClosureReason> {
        let mut completed = 0;
        let mut written = 0;
        let mut failure = None;
        while completed < self.in_flight.len() {
            let result = match first.take() {
                Some(result) => result,
                None => match self.try_write_from(completed) {
                    Poll::Ready(result) => result,
                    Poll::Pending => break,
                },
            };
            match result {
                Ok(0) => {
                    failure = Some(io::Error::from(io::ErrorKind::WriteZero));
                    break;
                }
                Ok(mut sent) => {
                    written += sent;
                    while sent > 0 {
                        let remaining = self.in_flight[completed].len() - self.offset;
                        if sent >= remaining {
                            sent -= remaining;
                            completed += 1;
                            self.offset = 0;
                        } else {
                            self.offset += sent;
                            sent = 0;
                        }
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        if written > 0 {
            self.dequeued(written);
            if self.clock.timeouts.idle.is_some() {
                self.clock.last_activity = Instant::now();
            }
            let counters = &self.shared.counters;
            ConnectionCounters::add(&counters.bytes_written, written as u64);
            ConnectionCounters::add(&counters.writes, completed as u64);
        }
        let callbacks = &self.manager.callbacks;
        for _ in 0..completed {
            let data = self
                .in_flight
                .pop_front()
                .expect("completed buffers are at the front of the queue");
            if !self
                .call(
                    "on_write_completed",
                    callbacks.on_write_completed(&self.connection, data),
                )
                .await
            {
                return Err(ClosureReason::CallbackPanic);
            }
        }
        match failure {
            None => Ok(written > 0),
            Some(error) => Box::pin(self.write_failed(error)).await.map(|()| true),
        }
    }

    /// Takes `bytes` off the queue's count; wakes writers waiting for room when the queue
    /// drains to the low watermark or below the limit.
    fn dequeued(&self, bytes: usize) {
        let limits = self.shared.write_limits;
        let mut state = self.shared.state();
        let before = state.queued_bytes;
        state.queued_bytes -= bytes;
        let drained = state.above_high && state.queued_bytes <= limits.low;
        if drained {
            state.above_high = false;
        }
        let below_limit = before >= limits.limit && state.queued_bytes < limits.limit;
        drop(state);
        if drained || below_limit {
            self.shared.room.notify_waiters();
        }
    }

    async fn write_failed(&mut self, error: io::Error) -> Result<(), ClosureReason> {
        if self.transport.is_tls() && tls::is_tls_failure(&error) {
            return Err(self.tls_failed(error).await);
        }
        let callbacks = &self.manager.callbacks;
        if self.is_peer_reset(&error) {
            self.call(
                "on_connection_reset",
                callbacks.on_connection_reset(&self.connection, &error),
            )
            .await;
            return Err(ClosureReason::PeerReset);
        }
        let keep = self
            .manager
            .guard(
                "on_write_error_may_not_be_fatal",
                Some(self.shared.id),
                callbacks.on_write_error_may_not_be_fatal(&self.connection, &error),
            )
            .await;
        match keep {
            None => Err(ClosureReason::CallbackPanic),
            Some(true) => {
                // The unsent data is dropped; the connection goes on.
                let unsent: usize =
                    self.in_flight.iter().map(Bytes::len).sum::<usize>() - self.offset;
                self.in_flight.clear();
                self.offset = 0;
                self.dequeued(unsent);
                Ok(())
            }
            Some(false) => {
                self.call(
                    "on_write_completion_error",
                    callbacks.on_write_completion_error(&self.connection, &error),
                )
                .await;
                Err(ClosureReason::WriteError)
            }
        }
    }

    /// Closes the socket and runs the closing events: closure, closed, released, in that order.
    async fn finish(self, reason: ClosureReason) {
        let Driver {
            manager,
            shared,
            connection,
            transport,
            permit,
            live,
            ..
        } = self;
        if !reason.is_graceful() {
            if let Some(tcp) = transport.tcp() {
                // SO_LINGER 0 makes close() send RST and drop unsent data: the meaning of an
                // abort.
                let _ = SockRef::from(tcp).set_linger(Some(Duration::ZERO));
            }
        }
        drop(transport);
        let told_of_shutdown = {
            let mut state = shared.state();
            state.closing = true;
            state.ended = true;
            state.read_requested = false;
            state.queue.clear();
            state.queued_bytes = 0;
            state.above_high = false;
            state.shutdown_notice
        };
        // Writers waiting for room learn that none will come.
        shared.room.notify_waiters();
        if told_of_shutdown {
            manager.record_shutdown_end(reason);
        }
        if matches!(
            reason,
            ClosureReason::AbortAll | ClosureReason::ShutdownForced
        ) {
            // `on_all_connections_aborted` comes before the closing events of what it aborted.
            manager.aborts_announced().await;
        }
        manager.counters.record_closure(reason);
        let callbacks = &manager.callbacks;
        let id = Some(shared.id);
        manager
            .guard(
                "on_connection_closure",
                id,
                callbacks.on_connection_closure(&connection, reason),
            )
            .await;
        manager
            .guard(
                "on_connection_closed",
                id,
                callbacks.on_connection_closed(&connection),
            )
            .await;
        let user_data = shared.user_data.take_all();
        manager
            .guard(
                "on_socket_released",
                id,
                callbacks.on_socket_released(user_data),
            )
            .await;
        if shared.is_tls {
            manager
                .guard(
                    "on_secure_socket_released",
                    id,
                    callbacks.on_secure_socket_released(shared.id),
                )
                .await;
        }
        manager.deregister(&shared);
        // The slot frees after the release event, then the shutdown learns this one is gone.
        drop(permit);
        drop(live);
    }
}

/// Whether an error means the peer reset the connection. `EPIPE` is not counted: after a reset
/// the first failing call reports `ECONNRESET`; a later `EPIPE` comes from our own shut-down side.
pub(crate) fn is_reset(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}

/// Takes the socket's urgent byte (`recv` with `MSG_OOB`), if there is one.
#[allow(unsafe_code)]
fn recv_urgent_byte(tcp: &TcpStream) -> io::Result<Option<u8>> {
    let mut byte = [std::mem::MaybeUninit::new(0_u8)];
    match SockRef::from(tcp).recv_out_of_band(&mut byte) {
        // SAFETY: the element was initialized (to 0) when the array was made, and
        // `recv_out_of_band` (recv(2) with MSG_OOB) only ever stores initialized bytes into the
        // buffer, so it is initialized whether or not the call wrote to it.
        Ok(1) => Ok(Some(unsafe { byte[0].assume_init() })),
        Ok(_) => Ok(None),
        // EINVAL: no urgent byte is pending; EAGAIN: it has not arrived yet.
        Err(error)
            if error.kind() == io::ErrorKind::WouldBlock
                || error.kind() == io::ErrorKind::InvalidInput =>
        {
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// Registers `socket` with tokio's reactor for priority (urgent data) readiness only.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[allow(unsafe_code)]
fn register_priority(socket: socket2::Socket) -> Option<tokio::io::unix::AsyncFd<socket2::Socket>> {
    // SAFETY: `register_with_interest` requires that the descriptor `socket.as_raw_fd()` stays
    // open, refers to the same open file description and is what `as_raw_fd` returns for as long
    // as the `AsyncFd` owns it. A `socket2::Socket` owns its descriptor (it closes it only when
    // dropped) and always returns that same one; it moves into the `AsyncFd`, which never hands
    // it out mutably and is never `into_inner`ed or forgotten here.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(socket, tokio::io::Interest::PRIORITY)
    };
    match registered {
        Ok(watch) => Some(watch),
        Err(error) => {
            tracing::debug!(%error, "cannot watch for urgent data");
            None
        }
    }
}

/// Waits until `watch` reports urgent data (clearing the readiness, so the next wait needs a
/// new urgent byte); never, without a watcher.
#[cfg(any(target_os = "linux", target_os = "android"))]
async fn urgent_ready(watch: Option<&tokio::io::unix::AsyncFd<socket2::Socket>>) {
    let Some(watch) = watch else {
        return std::future::pending().await;
    };
    match watch.ready(tokio::io::Interest::PRIORITY).await {
        Ok(mut guard) => guard.clear_ready(),
        Err(error) => {
            tracing::debug!(%error, "urgent data watch failed");
            std::future::pending().await
        }
    }
}
