//! The per-connection task: I/O, the lifetime rule, event order and the closure reason.
//!
//! One driver owns one socket. It takes requests from the connection's [`State`] (filled by
//! [`Connection`] handles), performs them, and invokes the connection's callbacks one at a time.
//! It never reaches back into the server; the manager only asks it to abort or to hear of a
//! shutdown through the same state.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use socket2::SockRef;
use tokio::io::{AsyncReadExt, Interest, Ready};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::connection::Shared;
use crate::limit::Permit;
use crate::manager::{LiveGuard, Manager};
use crate::stats::ConnectionCounters;
use crate::{ClosureReason, Connection};

/// Most buffers handed to one `writev`; Linux's `IOV_MAX` is 1024, but a few dozen already cover
/// every queue the default 64 KiB limit can hold with ordinary message sizes.
const MAX_IO_SLICES: usize = 64;

/// What the driver will wait for next, decided under the state lock.
struct Plan {
    read: bool,
    tell_shutdown: bool,
    send_fin: bool,
}

/// What woke a parked driver.
enum Wake {
    Requests,
    Socket(io::Result<Ready>),
    CloseDeadline,
}

pub(crate) struct Driver {
    manager: Arc<Manager>,
    shared: Arc<Shared>,
    /// The uncounted handle lent to callbacks.
    connection: Connection,
    stream: TcpStream,
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
    permit: Permit,
    live: LiveGuard,
}

impl Driver {
    pub(crate) fn new(
        manager: Arc<Manager>,
        shared: Arc<Shared>,
        stream: TcpStream,
        permit: Permit,
        live: LiveGuard,
    ) -> Self {
        Driver {
            connection: Connection::uncounted(shared.clone()),
            manager,
            shared,
            stream,
            in_flight: VecDeque::new(),
            offset: 0,
            read_closed: false,
            write_closed: false,
            told_shutdown: false,
            closing: None,
            close_deadline: None,
            permit,
            live,
        }
    }

    /// Runs the connection from establishment to release.
    pub(crate) async fn run(mut self) {
        let peer = self.shared.peer_addr;
        let callbacks = &self.manager.callbacks;
        let reason = if self
            .call(
                "on_connection_established",
                callbacks.on_connection_established(&self.connection, &peer),
            )
            .await
        {
            self.io_loop().await
        } else {
            ClosureReason::CallbackPanic
        };
        self.finish(reason).await;
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
            let nothing_pending =
                !state.read_requested && self.in_flight.is_empty() && self.shared.handles() == 0;
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
        }
        let read = if self.closing.is_some() {
            // Reading on while closing drains what the peer still sends, so that closing the
            // socket with unread data does not turn our FIN into a reset.
            !self.read_closed
        } else {
            // Reads pause while the write queue is at its limit: a peer that sends without reading
            // our replies is held back by TCP flow control instead of growing the queue.
            state.read_requested && state.queued_bytes < self.shared.write_queue_limit
        };
        let send_fin = !self.write_closed
            && self.in_flight.is_empty()
            && (self.closing.is_some() || state.shutdown_write_requested);
        Ok(Plan {
            read,
            tell_shutdown,
            send_fin,
        })
    }

    async fn io_loop(&mut self) -> ClosureReason {
        loop {
            let plan = match self.plan() {
                Ok(plan) => plan,
                Err(abort) => return abort,
            };
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
                // Errors here mean the peer is gone already; the read side will tell how.
                let _ = SockRef::from(&self.stream).shutdown(Shutdown::Write);
                self.write_closed = true;
            }
            if let Some(reason) = self.closing {
                if self.write_closed && self.read_closed {
                    return reason;
                }
            }
            if !self.in_flight.is_empty() {
                match self.write_ready().await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(reason) => return reason,
                }
            }

            // Park until a handle asks for something, the socket is ready, or a close times out.
            if !self.shared.park() {
                continue;
            }
            let mut interest: Option<Interest> = None;
            if plan.read {
                interest = Some(Interest::READABLE);
            }
            if !self.in_flight.is_empty() {
                interest = Some(match interest {
                    Some(read) => read | Interest::WRITABLE,
                    None => Interest::WRITABLE,
                });
            }
            let deadline = self.close_deadline;
            let wake = tokio::select! {
                biased;
                _ = std::future::poll_fn(|cx| self.shared.poll_woken(cx)) => Wake::Requests,
                ready = self.stream.ready(interest.unwrap_or(Interest::READABLE)), if interest.is_some() => {
                    Wake::Socket(ready)
                }
                _ = sleep_until(deadline), if deadline.is_some() => Wake::CloseDeadline,
            };
            self.shared.unpark();
            match wake {
                Wake::Requests => {}
                Wake::CloseDeadline => return ClosureReason::CloseTimedOut,
                Wake::Socket(Err(error)) => {
                    return self
                        .read_failed(error)
                        .await
                        .unwrap_or(ClosureReason::ReadError)
                }
                Wake::Socket(Ok(ready)) => {
                    if plan.read && (ready.is_readable() || ready.is_read_closed()) {
                        if let Some(reason) = self.read_ready().await {
                            return reason;
                        }
                    }
                    // Writable: the next turn of the loop writes.
                }
            }
        }
    }

    /// Reads once after readiness. `Some` ends the connection.
    async fn read_ready(&mut self) -> Option<ClosureReason> {
        if let Some(reason) = self.closing {
            return self.discard_ready(reason);
        }
        let mut data = BytesMut::with_capacity(self.manager.config.read_buffer_size);
        // One poll of `read_buf` rather than `try_read_buf`: tokio's `poll_read` clears the
        // socket's readiness after a short read (the kernel buffer is then empty), so the next
        // turn parks at once instead of paying a `recv` that returns EAGAIN. Polled with a no-op
        // waker: the driver waits for readiness through `ready()` below, never through this.
        let outcome = AsyncReadExt::read_buf(&mut self.stream, &mut data)
            .now_or_never()
            .unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into()));
        match outcome {
            Ok(0) => {
                self.read_closed = true;
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
                None
            }
            Ok(read) => {
                self.shared.state().read_requested = false;
                let counters = &self.shared.counters;
                ConnectionCounters::add(&counters.bytes_read, read as u64);
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
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => None,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => None,
            Err(error) => self.read_failed(error).await,
        }
    }

    /// Reads and drops what the peer sends while we close, until its FIN.
    fn discard_ready(&mut self, reason: ClosureReason) -> Option<ClosureReason> {
        let mut scratch = [0_u8; 4096];
        loop {
            match self.stream.try_read(&mut scratch) {
                Ok(0) => {
                    self.read_closed = true;
                    return None;
                }
                Ok(_) => continue,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return None,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                // The peer reset while we were closing: what we had queued is lost.
                Err(error) if is_reset(&error) => return Some(ClosureReason::PeerReset),
                Err(_) => return Some(reason),
            }
        }
    }

    /// A read failed: reset, or an error the application may choose to survive.
    async fn read_failed(&mut self, error: io::Error) -> Option<ClosureReason> {
        let callbacks = &self.manager.callbacks;
        if is_reset(&error) {
            self.call(
                "on_connection_reset",
                callbacks.on_connection_reset(&self.connection, &error),
            )
            .await;
            return Some(ClosureReason::PeerReset);
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

    /// Hands as much of the in-flight queue to the kernel as it takes, then reports the buffers
    /// that were sent in full. `Ok(true)` if anything was written (try again), `Ok(false)` if the
    /// socket is full, `Err` to end the connection.
    async fn write_ready(&mut self) -> Result<bool, ClosureReason> {
        let mut completed = 0;
        let mut written = 0;
        let mut failure = None;
        while completed < self.in_flight.len() {
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
            match self.stream.try_write_vectored(&slices[..count]) {
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
            self.shared.state().queued_bytes -= written;
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
            Some(error) => self.write_failed(error).await.map(|()| true),
        }
    }

    async fn write_failed(&mut self, error: io::Error) -> Result<(), ClosureReason> {
        let callbacks = &self.manager.callbacks;
        if is_reset(&error) {
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
                self.shared.state().queued_bytes -= unsent;
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
            stream,
            permit,
            live,
            ..
        } = self;
        if !reason.is_graceful() {
            // SO_LINGER 0 makes close() send RST and drop unsent data: the meaning of an abort.
            let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
        drop(stream);
        let told_of_shutdown = {
            let mut state = shared.state();
            state.closing = true;
            state.ended = true;
            state.read_requested = false;
            state.queue.clear();
            state.queued_bytes = 0;
            state.shutdown_notice
        };
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
        manager.deregister(&shared);
        // The slot frees after the release event, then the shutdown learns this one is gone.
        drop(permit);
        drop(live);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
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
