//! The frame layer as [`Callbacks`]: it owns reading and decoding, delivers items to the
//! [`FrameHandler`], and passes every other event on to it unchanged.
//!
//! A new method of [`Callbacks`] must be passed on here too; the default would swallow it.

use std::io;
use std::net::SocketAddr;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use socket2::SockRef;

use super::framed::{flush, FramedConnection};
use super::state::{FrameState, Step};
use super::{FrameError, FrameHandler, Item};
use crate::closure::ClosureReason;
use crate::connection::user_data::{ConnectArgument, Slot, UserData};
use crate::connection::Connection;
use crate::error::Error;
use crate::ids::{ConnectionId, Direction};
use crate::server::callbacks::Callbacks;
use crate::server::Server;
use crate::shutdown_report::ShutdownReport;
use crate::timeouts::IdleAction;
use crate::tls::TlsInfo;

/// Output fed during one read's items is queued once it reaches this much, before the next item
/// is delivered, so that the write queue's bounds (and the pause while it is high) see it: a
/// read of pipelined requests whose replies are large never holds more than this beside the
/// queue. Below it, a pipelined batch's replies go out as one write.
const FLUSH_AT: usize = 16 * 1024;

type State<H> = FrameState<<H as FrameHandler>::Codec>;

/// See the module docs.
pub(crate) struct Adapter<H: FrameHandler> {
    handler: H,
    slot: Slot<State<H>>,
    max_frame_length: usize,
}

/// What the delivery loop does next.
enum Next<T, E> {
    Decoded(Step<T, E>),
    /// Every whole item was delivered and the output flushed: read on.
    Read,
    /// The write queue is high: stop until it drains.
    Pause,
    /// The connection is closing or released: nothing more is delivered.
    Stop,
}

impl<H: FrameHandler> Adapter<H> {
    pub(crate) fn new(handler: H, slot: Slot<State<H>>, max_frame_length: usize) -> Self {
        Adapter {
            handler,
            slot,
            max_frame_length,
        }
    }

    fn framed<'a>(&self, connection: &'a Connection) -> FramedConnection<'a, H::Codec> {
        FramedConnection::new(connection, self.slot)
    }

    /// Takes `data` (a read, if any) and delivers the whole items read, one at a time, until
    /// none is left (then flushes and requests the next read), the write queue is high (then
    /// waits for it to drain), or decoding fails (then closes). One lock of the frame state per
    /// item, and one more at the end.
    async fn deliver(&self, connection: &Connection, mut data: Option<BytesMut>) {
        let framed = self.framed(connection);
        let max = self.max_frame_length;
        loop {
            let next = framed.with_state(|state| {
                if let Some(data) = data.take() {
                    state.push(data);
                }
                if state.unflushed >= FLUSH_AT {
                    flush_keeping(connection, state);
                }
                match connection.has_room_to_stage() {
                    // A half-closed (write-shut) connection may still take requests.
                    Ok(true) | Err(Error::WriteShutdown) => match state.next(max) {
                        Step::NeedMore => {
                            flush_keeping(connection, state);
                            // A flush the full queue refused paused the delivery: the next read
                            // waits for the queue to drain.
                            if state.paused {
                                Next::Pause
                            } else {
                                Next::Read
                            }
                        }
                        step => Next::Decoded(step),
                    },
                    Ok(false) => {
                        state.paused = true;
                        flush_keeping(connection, state);
                        Next::Pause
                    }
                    Err(_) => Next::Stop,
                }
            });
            match next.unwrap_or(Next::Stop) {
                Next::Decoded(Step::Frame(item)) => {
                    self.frame(&framed, item).await;
                    // One unit of the task's budget per item: a read holding thousands of
                    // small items yields to the other connections of its worker every so
                    // often (tokio's budget is 128 units per turn), as its reads and writes do.
                    tokio::task::consume_budget().await;
                }
                Next::Decoded(Step::NeedMore) | Next::Read => break,
                Next::Decoded(Step::Failed(error)) => return self.fail(&framed, error).await,
                Next::Pause | Next::Stop => return,
            }
        }
        connection.read();
    }

    async fn frame(&self, framed: &FramedConnection<'_, H::Codec>, item: Item<H>) {
        self.handler.on_frame(framed, item).await;
    }

    /// Reports a decoding failure, sends what was fed, and closes with the failure's reason.
    async fn fail(
        &self,
        framed: &FramedConnection<'_, H::Codec>,
        error: FrameError<super::DecodeError<H>>,
    ) {
        self.handler.on_decode_error(framed, &error).await;
        // What was fed goes out before the FIN: a close queues it.
        framed.close_because(error.closure_reason());
    }

    /// After a callback of the connection: a paused delivery resumes if the queue has room
    /// now; otherwise what the callback fed is queued.
    async fn after(&self, connection: &Connection) {
        let resume = self.framed(connection).with_state(|state| {
            if state.paused {
                state.paused = false;
                true
            } else {
                flush_keeping(connection, state);
                false
            }
        });
        if resume == Some(true) {
            Box::pin(self.deliver(connection, None)).await;
        }
    }

    /// Queues what was fed, keeping it if the queue is full (see [`flush_keeping`]).
    fn flush(&self, connection: &Connection) {
        self.framed(connection)
            .with_state(|state| flush_keeping(connection, state));
    }
}

/// Queues what was fed; if the queue is full, keeps it staged and marks the delivery paused, so
/// that the queue's next drain flushes it (nothing the application fed is lost to a full
/// queue). What the connection will never take (closing, write side shut) is dropped.
fn flush_keeping<C>(connection: &Connection, state: &mut FrameState<C>) {
    if let Err(refused) = flush(connection, state, true) {
        if matches!(refused.error(), Error::WriteQueueFull { .. }) {
            state.paused = true;
        }
    }
}

#[async_trait]
impl<H: FrameHandler> Callbacks for Adapter<H> {
    async fn on_connection_established(&self, connection: &Connection, address: &SocketAddr) {
        let codec = self.handler.new_codec(connection);
        let user_data = connection.user_data();
        user_data.set(self.slot, FrameState::new(codec));
        // Found by `FramedConnection::of` and a group's item broadcasts without locking the
        // application's slots.
        connection.shared().mark_frame_slot(self.slot);
        self.handler
            .on_connection_established(connection, address)
            .await;
        self.flush(connection);
        // The frame layer's pending read: it keeps the connection open until the peer's FIN
        // or a close.
        connection.read();
    }

    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        self.deliver(connection, Some(data)).await;
    }

    async fn on_connection_client_close(&self, connection: &Connection) {
        let framed = self.framed(connection);
        let mut failed = None;
        while let Some(step) = framed.with_state(|state| state.next_at_eof()) {
            match step {
                Step::Frame(item) => {
                    self.frame(&framed, item).await;
                    tokio::task::consume_budget().await;
                }
                Step::NeedMore => break,
                Step::Failed(error) => {
                    self.handler.on_decode_error(&framed, &error).await;
                    failed = Some(error.closure_reason());
                    break;
                }
            }
        }
        self.flush(connection);
        self.handler.on_connection_client_close(connection).await;
        self.flush(connection);
        if let Some(reason) = failed {
            connection.close_because(reason);
        }
    }

    async fn on_read_error_may_not_be_fatal(
        &self,
        connection: &Connection,
        error: &io::Error,
    ) -> bool {
        let keep = self
            .handler
            .on_read_error_may_not_be_fatal(connection, error)
            .await;
        if keep {
            // The failed read used up the frame layer's request.
            connection.read();
        }
        keep
    }

    async fn on_write_completed(&self, connection: &Connection, data: Bytes) {
        self.handler.on_write_completed(connection, data).await;
        self.after(connection).await;
    }

    async fn on_write_buffer_high(&self, connection: &Connection) {
        self.handler.on_write_buffer_high(connection).await;
        self.after(connection).await;
    }

    async fn on_write_buffer_low(&self, connection: &Connection) {
        self.handler.on_write_buffer_low(connection).await;
        self.after(connection).await;
    }

    async fn on_shutdown_requested(&self, connection: &Connection) {
        self.handler.on_shutdown_requested(connection).await;
        self.after(connection).await;
    }

    async fn on_read_oob_completed(&self, connection: &Connection, data: BytesMut) {
        self.handler.on_read_oob_completed(connection, data).await;
        self.after(connection).await;
    }

    async fn on_idle_timeout(&self, connection: &Connection) -> IdleAction {
        let action = self.handler.on_idle_timeout(connection).await;
        // A last item fed here goes out before the close's FIN.
        self.flush(connection);
        action
    }

    async fn on_socket_released(&self, user_data: UserData) {
        // The frame state (its buffers and codec) goes first; the handler gets the rest.
        drop(user_data.take(self.slot));
        self.handler.on_socket_released(user_data).await;
    }

    // Passed on unchanged.

    async fn on_server_started(&self, server: &Server) {
        self.handler.on_server_started(server).await;
    }

    async fn on_start_accepting_connections(&self) {
        self.handler.on_start_accepting_connections().await;
    }

    async fn on_stop_accepting_connections(&self) {
        self.handler.on_stop_accepting_connections().await;
    }

    async fn on_accept_error(&self, error: &io::Error) {
        self.handler.on_accept_error(error).await;
    }

    fn on_socket_created(&self, socket: SockRef<'_>, direction: Direction) {
        self.handler.on_socket_created(socket, direction);
    }

    async fn on_pre_outgoing_connect(
        &self,
        user_data: &UserData,
        address: &SocketAddr,
        argument: ConnectArgument,
    ) {
        self.handler
            .on_pre_outgoing_connect(user_data, address, argument)
            .await;
    }

    async fn on_outgoing_connection_failed(
        &self,
        user_data: &UserData,
        address: &SocketAddr,
        error: &Error,
    ) {
        self.handler
            .on_outgoing_connection_failed(user_data, address, error)
            .await;
    }

    async fn on_read_completion_error(&self, connection: &Connection, error: &io::Error) {
        self.handler
            .on_read_completion_error(connection, error)
            .await;
    }

    async fn on_write_error_may_not_be_fatal(
        &self,
        connection: &Connection,
        error: &io::Error,
    ) -> bool {
        self.handler
            .on_write_error_may_not_be_fatal(connection, error)
            .await
    }

    async fn on_write_completion_error(&self, connection: &Connection, error: &io::Error) {
        self.handler
            .on_write_completion_error(connection, error)
            .await;
    }

    async fn on_maximum_connections(&self) {
        self.handler.on_maximum_connections().await;
    }

    async fn on_all_connections_aborted(&self, count: usize) {
        self.handler.on_all_connections_aborted(count).await;
    }

    async fn on_shutdown_initiated(&self) {
        self.handler.on_shutdown_initiated().await;
    }

    async fn on_shutdown_complete(&self, report: ShutdownReport) {
        self.handler.on_shutdown_complete(report).await;
    }

    async fn on_connection_reset(&self, connection: &Connection, error: &io::Error) {
        self.handler.on_connection_reset(connection, error).await;
    }

    async fn on_connection_closure(&self, connection: &Connection, reason: ClosureReason) {
        self.handler.on_connection_closure(connection, reason).await;
    }

    async fn on_connection_closed(&self, connection: &Connection) {
        self.handler.on_connection_closed(connection).await;
    }

    async fn on_negotiation_complete(&self, connection: &Connection, info: &TlsInfo) {
        self.handler.on_negotiation_complete(connection, info).await;
    }

    async fn on_secure_connection_established(
        &self,
        connection: &Connection,
        address: &SocketAddr,
    ) {
        self.handler
            .on_secure_connection_established(connection, address)
            .await;
    }

    async fn on_fatal_error(&self, connection: &Connection, error: &Error) {
        self.handler.on_fatal_error(connection, error).await;
    }

    async fn on_remote_fatal_error(&self, connection: &Connection, error: &Error) {
        self.handler.on_remote_fatal_error(connection, error).await;
    }

    async fn on_secure_socket_released(&self, id: ConnectionId) {
        self.handler.on_secure_socket_released(id).await;
    }

    async fn on_error(&self, error: &Error) {
        self.handler.on_error(error).await;
    }
}
