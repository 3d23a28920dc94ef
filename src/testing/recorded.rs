//! [`Recorded`]: callbacks that log every event, in order, before passing it on.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use socket2::SockRef;
use tokio::sync::Notify;

use crate::closure::ClosureReason;
use crate::connection::user_data::{ConnectArgument, UserData};
use crate::connection::Connection;
use crate::error::Error;
use crate::ids::{ConnectionId, Direction};
use crate::server::callbacks::Callbacks;
use crate::server::Server;
use crate::shutdown_report::ShutdownReport;
use crate::timeouts::IdleAction;
use crate::tls::TlsInfo;

/// How long [`Events::wait_for`] waits before it panics: long for a test on a real clock, and
/// nothing on tokio's paused clock, which jumps to it as soon as the runtime has nothing to do.
pub const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// One callback, as [`Recorded`] saw it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// `on_server_started`.
    ServerStarted,
    /// `on_start_accepting_connections`.
    StartAccepting,
    /// `on_stop_accepting_connections`.
    StopAccepting,
    /// `on_accept_error`, with the error's kind.
    AcceptError(io::ErrorKind),
    /// `on_pre_outgoing_connect`, with the address.
    PreOutgoingConnect(SocketAddr),
    /// `on_outgoing_connection_failed`, with the address and the error's text.
    OutgoingConnectionFailed(SocketAddr, String),
    /// `on_connection_established`, with the peer's address.
    Established(ConnectionId, SocketAddr),
    /// `on_read_completed`, with the data.
    Read(ConnectionId, Bytes),
    /// [`FrameHandler::on_frame`](crate::codec::FrameHandler::on_frame), with the item's `Debug`
    /// text ([`Event::frame`] makes one to compare with).
    Frame(ConnectionId, String),
    /// [`FrameHandler::on_decode_error`](crate::codec::FrameHandler::on_decode_error), with the
    /// error's text.
    DecodeError(ConnectionId, String),
    /// `on_read_error_may_not_be_fatal`, with the error's kind and what the callbacks answered.
    ReadErrorMayNotBeFatal(ConnectionId, io::ErrorKind, bool),
    /// `on_read_completion_error`, with the error's kind.
    ReadError(ConnectionId, io::ErrorKind),
    /// `on_write_completed`, with the length of the buffer written.
    Written(ConnectionId, usize),
    /// `on_write_error_may_not_be_fatal`, with the error's kind and what the callbacks answered.
    WriteErrorMayNotBeFatal(ConnectionId, io::ErrorKind, bool),
    /// `on_write_completion_error`, with the error's kind.
    WriteError(ConnectionId, io::ErrorKind),
    /// `on_write_buffer_high`, with the bytes queued then.
    WriteBufferHigh(ConnectionId, usize),
    /// `on_write_buffer_low`, with the bytes queued then.
    WriteBufferLow(ConnectionId, usize),
    /// `on_read_oob_completed`, with the urgent data.
    ReadOob(ConnectionId, Bytes),
    /// `on_connection_client_close`: the peer's FIN.
    ClientClose(ConnectionId),
    /// `on_connection_reset`, with the error's kind.
    Reset(ConnectionId, io::ErrorKind),
    /// `on_shutdown_requested`.
    ShutdownRequested(ConnectionId),
    /// `on_idle_timeout`, with what the callbacks answered.
    IdleTimeout(ConnectionId, IdleAction),
    /// `on_connection_closure`, with the reason.
    Closure(ConnectionId, ClosureReason),
    /// `on_connection_closed`.
    Closed(ConnectionId),
    /// `on_socket_released`: the connection it ran for (`None` for a failed outgoing connect).
    Released(Option<ConnectionId>),
    /// `on_secure_connection_established`.
    SecureEstablished(ConnectionId),
    /// `on_negotiation_complete`.
    Negotiated(ConnectionId),
    /// `on_fatal_error`, with the error's text.
    FatalError(ConnectionId, String),
    /// `on_remote_fatal_error`, with the error's text.
    RemoteFatalError(ConnectionId, String),
    /// `on_secure_socket_released`.
    SecureReleased(ConnectionId),
    /// `on_maximum_connections`.
    MaximumConnections,
    /// `on_all_connections_aborted`, with the count.
    AllConnectionsAborted(usize),
    /// `on_shutdown_initiated`.
    ShutdownInitiated,
    /// `on_shutdown_complete`, with the report.
    ShutdownComplete(ShutdownReport),
    /// `on_error`, with the error's text.
    Error(String),
}

impl Event {
    /// The [`Event::Frame`] that the item `item` of connection `id` is recorded as.
    ///
    /// ```
    /// # use switchboard::testing::Event;
    /// # fn check(events: &[Event], id: switchboard::ConnectionId) {
    /// assert!(events.contains(&Event::frame(id, &"hello")));
    /// # }
    /// ```
    pub fn frame(id: ConnectionId, item: &impl fmt::Debug) -> Event {
        Event::Frame(id, format!("{item:?}"))
    }

    /// The connection the event belongs to, for a connection's event.
    pub fn connection(&self) -> Option<ConnectionId> {
        match self {
            Event::Established(id, _)
            | Event::Read(id, _)
            | Event::Frame(id, _)
            | Event::DecodeError(id, _)
            | Event::ReadErrorMayNotBeFatal(id, ..)
            | Event::ReadError(id, _)
            | Event::Written(id, _)
            | Event::WriteErrorMayNotBeFatal(id, ..)
            | Event::WriteError(id, _)
            | Event::WriteBufferHigh(id, _)
            | Event::WriteBufferLow(id, _)
            | Event::ReadOob(id, _)
            | Event::ClientClose(id)
            | Event::Reset(id, _)
            | Event::ShutdownRequested(id)
            | Event::IdleTimeout(id, _)
            | Event::Closure(id, _)
            | Event::Closed(id)
            | Event::SecureEstablished(id)
            | Event::Negotiated(id)
            | Event::FatalError(id, _)
            | Event::RemoteFatalError(id, _)
            | Event::SecureReleased(id) => Some(*id),
            Event::Released(id) => *id,
            _ => None,
        }
    }
}

/// The log [`Recorded`] writes; cloning it shares it.
#[derive(Debug, Clone, Default)]
pub struct Events(Arc<Log>);

#[derive(Debug, Default)]
struct Log {
    events: Mutex<Vec<Event>>,
    added: Notify,
}

impl Events {
    fn lock(&self) -> MutexGuard<'_, Vec<Event>> {
        self.0
            .events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, event: Event) {
        self.lock().push(event);
        self.0.added.notify_waiters();
    }

    /// Every event so far, in order.
    pub fn all(&self) -> Vec<Event> {
        self.lock().clone()
    }

    /// The events of one connection so far, in order.
    pub fn of(&self, id: ConnectionId) -> Vec<Event> {
        self.lock()
            .iter()
            .filter(|event| event.connection() == Some(id))
            .cloned()
            .collect()
    }

    /// How many events so far match `matches`.
    pub fn count(&self, matches: impl Fn(&Event) -> bool) -> usize {
        self.lock().iter().filter(|event| matches(event)).count()
    }

    /// Waits for the first event that matches `matches` (it may have been recorded already) and
    /// returns it.
    ///
    /// # Panics
    /// After [`WAIT_LIMIT`] of tokio's clock without one, with the events so far in the message.
    pub async fn wait_for(&self, matches: impl Fn(&Event) -> bool) -> Event {
        let found = tokio::time::timeout(WAIT_LIMIT, async {
            loop {
                let added = self.0.added.notified();
                tokio::pin!(added);
                added.as_mut().enable();
                if let Some(event) = self.lock().iter().find(|event| matches(event)) {
                    return event.clone();
                }
                added.await;
            }
        })
        .await;
        match found {
            Ok(event) => event,
            Err(_) => panic!(
                "no matching event within {WAIT_LIMIT:?}; recorded: {:#?}",
                self.all()
            ),
        }
    }

    /// Waits for the connection's [`on_socket_released`](Callbacks::on_socket_released), its last
    /// event, and returns its closure reason.
    ///
    /// # Panics
    /// As [`wait_for`](Events::wait_for).
    pub async fn wait_for_release(&self, id: ConnectionId) -> ClosureReason {
        self.wait_for(|event| *event == Event::Released(Some(id)))
            .await;
        self.of(id)
            .into_iter()
            .find_map(|event| match event {
                Event::Closure(_, reason) => Some(reason),
                _ => None,
            })
            .expect("on_connection_closure comes before on_socket_released")
    }
}

/// Callbacks that record every event in [`Events`], then pass it on to the application's.
///
/// Connection events are recorded before the application's callback runs, in the order the
/// connection's task runs them; what the callback answers (for the `_may_not_be_fatal` pair and
/// `on_idle_timeout`) is part of the event.
///
/// It wraps a [`FrameHandler`](crate::codec::FrameHandler) too (whose items are `Debug`): then
/// it is one, started with [`Framing::new`](crate::codec::Framing::new), and records each item
/// as [`Event::Frame`] with its `Debug` text and each decoding failure as
/// [`Event::DecodeError`] (the frame layer reads for the handler, so no [`Event::Read`]).
///
/// ```
/// use switchboard::codec::{FrameHandler, FramedConnection, Framing};
/// use switchboard::testing::{Event, Recorded};
/// use switchboard::tokio_util::codec::LinesCodec;
/// use switchboard::{async_trait, Callbacks, ClosureReason, Connection, Server};
///
/// struct Shout;
///
/// impl Callbacks for Shout {}
///
/// #[async_trait]
/// impl FrameHandler for Shout {
///     type Codec = LinesCodec;
///     fn new_codec(&self, _: &Connection) -> LinesCodec {
///         LinesCodec::new_with_max_length(16)
///     }
///     async fn on_frame(&self, connection: &FramedConnection<'_, LinesCodec>, line: String) {
///         let _ = connection.send(line.to_uppercase());
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (handler, events) = Recorded::new(Shout);
/// let server = Server::builder()
///     .embedded().start(Framing::new(handler))
///     .await?;
/// let mut peer = server.accept("192.0.2.7:50000".parse()?).await?;
/// peer.send("hi\n")?;
/// assert_eq!(peer.read().await?, "HI\n");
/// peer.send("far too long for the codec\n")?;
/// assert_eq!(peer.read_to_end().await?, "");
/// assert_eq!(events.wait_for_release(peer.id()).await, ClosureReason::FrameTooLong);
/// let id = peer.id();
/// assert!(events.of(id).contains(&Event::frame(id, &"hi")));
/// let error = events.wait_for(|event| matches!(event, Event::DecodeError(..))).await;
/// assert!(matches!(error, Event::DecodeError(_, text) if text.contains("max line length")));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Recorded<C> {
    inner: C,
    events: Events,
    /// The connection whose closing events a task is running: `on_socket_released` gets no
    /// connection, but runs on the same task right after `on_connection_closed`.
    releasing: Mutex<HashMap<tokio::task::Id, ConnectionId>>,
}

impl<C: Callbacks> Recorded<C> {
    /// Wraps `callbacks`; returns them with the log they write.
    pub fn new(callbacks: C) -> (Self, Events) {
        let events = Events::default();
        let recorded = Recorded {
            inner: callbacks,
            events: events.clone(),
            releasing: Mutex::new(HashMap::new()),
        };
        (recorded, events)
    }

    /// The callbacks it wraps.
    pub(crate) fn inner(&self) -> &C {
        &self.inner
    }

    /// Logs `event` (the frame layer's events are logged from the codec module).
    pub(crate) fn record(&self, event: Event) {
        self.events.push(event);
    }

    fn releasing(&self) -> MutexGuard<'_, HashMap<tokio::task::Id, ConnectionId>> {
        self.releasing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl<C: Callbacks> Callbacks for Recorded<C> {
    async fn on_server_started(&self, server: &Server) {
        self.record(Event::ServerStarted);
        self.inner.on_server_started(server).await;
    }
    async fn on_start_accepting_connections(&self) {
        self.record(Event::StartAccepting);
        self.inner.on_start_accepting_connections().await;
    }
    async fn on_stop_accepting_connections(&self) {
        self.record(Event::StopAccepting);
        self.inner.on_stop_accepting_connections().await;
    }
    async fn on_accept_error(&self, error: &io::Error) {
        self.record(Event::AcceptError(error.kind()));
        self.inner.on_accept_error(error).await;
    }
    fn on_socket_created(&self, socket: SockRef<'_>, direction: Direction) {
        self.inner.on_socket_created(socket, direction);
    }
    async fn on_pre_outgoing_connect(
        &self,
        user_data: &UserData,
        address: &SocketAddr,
        argument: ConnectArgument,
    ) {
        self.record(Event::PreOutgoingConnect(*address));
        self.inner
            .on_pre_outgoing_connect(user_data, address, argument)
            .await;
    }
    async fn on_connection_established(&self, connection: &Connection, address: &SocketAddr) {
        self.record(Event::Established(connection.id(), *address));
        self.inner
            .on_connection_established(connection, address)
            .await;
    }
    async fn on_outgoing_connection_failed(
        &self,
        user_data: &UserData,
        address: &SocketAddr,
        error: &Error,
    ) {
        self.record(Event::OutgoingConnectionFailed(*address, error.to_string()));
        self.inner
            .on_outgoing_connection_failed(user_data, address, error)
            .await;
    }
    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        let copy = Bytes::copy_from_slice(&data);
        self.record(Event::Read(connection.id(), copy));
        self.inner.on_read_completed(connection, data).await;
    }
    async fn on_read_error_may_not_be_fatal(
        &self,
        connection: &Connection,
        error: &io::Error,
    ) -> bool {
        let keep = self
            .inner
            .on_read_error_may_not_be_fatal(connection, error)
            .await;
        self.record(Event::ReadErrorMayNotBeFatal(
            connection.id(),
            error.kind(),
            keep,
        ));
        keep
    }
    async fn on_read_completion_error(&self, connection: &Connection, error: &io::Error) {
        self.record(Event::ReadError(connection.id(), error.kind()));
        self.inner.on_read_completion_error(connection, error).await;
    }
    async fn on_write_completed(&self, connection: &Connection, data: Bytes) {
        self.record(Event::Written(connection.id(), data.len()));
        self.inner.on_write_completed(connection, data).await;
    }
    async fn on_write_error_may_not_be_fatal(
        &self,
        connection: &Connection,
        error: &io::Error,
    ) -> bool {
        let keep = self
            .inner
            .on_write_error_may_not_be_fatal(connection, error)
            .await;
        self.record(Event::WriteErrorMayNotBeFatal(
            connection.id(),
            error.kind(),
            keep,
        ));
        keep
    }
    async fn on_write_completion_error(&self, connection: &Connection, error: &io::Error) {
        self.record(Event::WriteError(connection.id(), error.kind()));
        self.inner
            .on_write_completion_error(connection, error)
            .await;
    }
    async fn on_maximum_connections(&self) {
        self.record(Event::MaximumConnections);
        self.inner.on_maximum_connections().await;
    }
    async fn on_all_connections_aborted(&self, count: usize) {
        self.record(Event::AllConnectionsAborted(count));
        self.inner.on_all_connections_aborted(count).await;
    }
    async fn on_shutdown_initiated(&self) {
        self.record(Event::ShutdownInitiated);
        self.inner.on_shutdown_initiated().await;
    }
    async fn on_shutdown_requested(&self, connection: &Connection) {
        self.record(Event::ShutdownRequested(connection.id()));
        self.inner.on_shutdown_requested(connection).await;
    }
    async fn on_shutdown_complete(&self, report: ShutdownReport) {
        self.record(Event::ShutdownComplete(report));
        self.inner.on_shutdown_complete(report).await;
    }
    async fn on_connection_client_close(&self, connection: &Connection) {
        self.record(Event::ClientClose(connection.id()));
        self.inner.on_connection_client_close(connection).await;
    }
    async fn on_connection_reset(&self, connection: &Connection, error: &io::Error) {
        self.record(Event::Reset(connection.id(), error.kind()));
        self.inner.on_connection_reset(connection, error).await;
    }
    async fn on_idle_timeout(&self, connection: &Connection) -> IdleAction {
        let action = self.inner.on_idle_timeout(connection).await;
        self.record(Event::IdleTimeout(connection.id(), action));
        action
    }
    async fn on_connection_closure(&self, connection: &Connection, reason: ClosureReason) {
        self.record(Event::Closure(connection.id(), reason));
        self.inner.on_connection_closure(connection, reason).await;
    }
    async fn on_connection_closed(&self, connection: &Connection) {
        if let Some(task) = tokio::task::try_id() {
            self.releasing().insert(task, connection.id());
        }
        self.record(Event::Closed(connection.id()));
        self.inner.on_connection_closed(connection).await;
    }
    async fn on_socket_released(&self, user_data: UserData) {
        let id = tokio::task::try_id().and_then(|task| self.releasing().remove(&task));
        self.record(Event::Released(id));
        self.inner.on_socket_released(user_data).await;
    }
    async fn on_write_buffer_high(&self, connection: &Connection) {
        self.record(Event::WriteBufferHigh(
            connection.id(),
            connection.queued_write_bytes(),
        ));
        self.inner.on_write_buffer_high(connection).await;
    }
    async fn on_write_buffer_low(&self, connection: &Connection) {
        self.record(Event::WriteBufferLow(
            connection.id(),
            connection.queued_write_bytes(),
        ));
        self.inner.on_write_buffer_low(connection).await;
    }
    async fn on_read_oob_completed(&self, connection: &Connection, data: BytesMut) {
        let copy = Bytes::copy_from_slice(&data);
        self.record(Event::ReadOob(connection.id(), copy));
        self.inner.on_read_oob_completed(connection, data).await;
    }
    async fn on_negotiation_complete(&self, connection: &Connection, info: &TlsInfo) {
        self.record(Event::Negotiated(connection.id()));
        self.inner.on_negotiation_complete(connection, info).await;
    }
    async fn on_secure_connection_established(
        &self,
        connection: &Connection,
        address: &SocketAddr,
    ) {
        self.record(Event::SecureEstablished(connection.id()));
        self.inner
            .on_secure_connection_established(connection, address)
            .await;
    }
    async fn on_fatal_error(&self, connection: &Connection, error: &Error) {
        self.record(Event::FatalError(connection.id(), error.to_string()));
        self.inner.on_fatal_error(connection, error).await;
    }
    async fn on_remote_fatal_error(&self, connection: &Connection, error: &Error) {
        self.record(Event::RemoteFatalError(connection.id(), error.to_string()));
        self.inner.on_remote_fatal_error(connection, error).await;
    }
    async fn on_secure_socket_released(&self, id: ConnectionId) {
        self.record(Event::SecureReleased(id));
        self.inner.on_secure_socket_released(id).await;
    }
    async fn on_error(&self, error: &Error) {
        self.record(Event::Error(error.to_string()));
        self.inner.on_error(error).await;
    }
}
