//! Shared test helpers: a callback implementation that records every event, and bounded waits.
#![allow(dead_code)]

mod child;
mod cpu;

// Re-exported for `use common::*`; a binary that needs none of a part would warn otherwise.
#[allow(unused_imports)]
pub use {child::*, cpu::*};

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard::socket2::SockRef;
use switchboard::{
    async_trait, Bytes, BytesMut, Callbacks, ClosureReason, ConnectArgument, Connection,
    ConnectionId, Direction, Error, ServerBuilder, ShutdownReport, Slot, UserData,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Upper bound for any wait in a test: generous for a loaded 2-core machine, short enough that a
/// broken guarantee fails the test instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(20);

/// One recorded callback.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    StartAccepting,
    StopAccepting,
    AcceptError(io::ErrorKind),
    SocketCreated(Direction),
    PreOutgoingConnect(SocketAddr, Option<String>),
    Established(ConnectionId, SocketAddr),
    OutgoingFailed(SocketAddr, String, Option<String>),
    Read(ConnectionId, usize),
    ReadErrorMayNotBeFatal(ConnectionId),
    ReadCompletionError(ConnectionId),
    Written(ConnectionId, usize),
    WriteErrorMayNotBeFatal(ConnectionId),
    WriteCompletionError(ConnectionId),
    MaximumConnections,
    AllConnectionsAborted(usize),
    ShutdownInitiated,
    ShutdownRequested(ConnectionId),
    ShutdownComplete,
    ClientClose(ConnectionId),
    Reset(ConnectionId),
    Closure(ConnectionId, ClosureReason),
    Closed(ConnectionId),
    /// `on_socket_released`, with the connection id kept in user data (None for a failed connect)
    /// and the connect argument if one was stored.
    Released(Option<ConnectionId>, Option<String>),
    Error(String),
}

impl Event {
    /// The connection an event belongs to, if any.
    pub fn connection(&self) -> Option<ConnectionId> {
        match self {
            Event::Established(id, _)
            | Event::Read(id, _)
            | Event::ReadErrorMayNotBeFatal(id)
            | Event::ReadCompletionError(id)
            | Event::Written(id, _)
            | Event::WriteErrorMayNotBeFatal(id)
            | Event::WriteCompletionError(id)
            | Event::ShutdownRequested(id)
            | Event::ClientClose(id)
            | Event::Reset(id)
            | Event::Closure(id, _)
            | Event::Closed(id) => Some(*id),
            Event::Released(id, _) => *id,
            _ => None,
        }
    }
}

/// What the recorder does besides recording. Tests change it through [`Recorder::behavior`].
#[derive(Debug, Clone)]
pub struct Behavior {
    /// Issue a read in `on_connection_established` and echo every read back, reading again.
    pub echo: bool,
    /// Close the connection in `on_shutdown_requested` (the default); if false, ignore the notice.
    pub close_on_shutdown_request: bool,
    /// Panic in the named callback (e.g. "on_read_completed").
    pub panic_in: Option<&'static str>,
    /// Keep (a clone of) every established connection's handle in [`Recorder::handles`].
    pub keep_handles: bool,
    /// Value returned by the "may not be fatal" callbacks.
    pub errors_not_fatal: bool,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            echo: true,
            close_on_shutdown_request: true,
            panic_in: None,
            keep_handles: false,
            errors_not_fatal: false,
        }
    }
}

struct Inner {
    events: Mutex<Vec<Event>>,
    changed: Notify,
    behavior: Mutex<Behavior>,
    handles: Mutex<Vec<Connection>>,
    id_slot: Slot<ConnectionId>,
    argument_slot: Slot<String>,
    /// A duplicate of each created socket's descriptor, for tests that poke at sockets directly.
    sockets: Mutex<Vec<socket2::Socket>>,
    keep_sockets: AtomicBool,
}

/// Records every callback as an [`Event`], in order, and optionally echoes.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

impl Recorder {
    /// A recorder whose user data slots are requested from `builder`.
    pub fn new(builder: &mut ServerBuilder) -> Self {
        Self::with_behavior(builder, Behavior::default())
    }

    pub fn with_behavior(builder: &mut ServerBuilder, behavior: Behavior) -> Self {
        Recorder {
            inner: Arc::new(Inner {
                events: Mutex::new(Vec::new()),
                changed: Notify::new(),
                behavior: Mutex::new(behavior),
                handles: Mutex::new(Vec::new()),
                id_slot: builder.request_user_data_slot(),
                argument_slot: builder.request_user_data_slot(),
                sockets: Mutex::new(Vec::new()),
                keep_sockets: AtomicBool::new(false),
            }),
        }
    }

    pub fn behavior(&self) -> Behavior {
        self.inner.behavior.lock().unwrap().clone()
    }

    pub fn set_behavior(&self, change: impl FnOnce(&mut Behavior)) {
        change(&mut self.inner.behavior.lock().unwrap());
    }

    /// Keep a duplicate descriptor of every created socket (see [`Recorder::take_sockets`]).
    pub fn keep_sockets(&self) {
        self.inner.keep_sockets.store(true, Ordering::SeqCst);
    }

    pub fn take_sockets(&self) -> Vec<socket2::Socket> {
        std::mem::take(&mut self.inner.sockets.lock().unwrap())
    }

    /// Handles kept with `keep_handles`.
    pub fn take_handles(&self) -> Vec<Connection> {
        std::mem::take(&mut self.inner.handles.lock().unwrap())
    }

    pub fn events(&self) -> Vec<Event> {
        self.inner.events.lock().unwrap().clone()
    }

    /// Events of one connection, in order.
    pub fn events_of(&self, id: ConnectionId) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|event| event.connection() == Some(id))
            .collect()
    }

    /// Ids of established connections, in order of establishment.
    pub fn established(&self) -> Vec<ConnectionId> {
        self.events()
            .iter()
            .filter_map(|event| match event {
                Event::Established(id, _) => Some(*id),
                _ => None,
            })
            .collect()
    }

    pub fn count(&self, matches: impl Fn(&Event) -> bool) -> usize {
        self.events().iter().filter(|event| matches(event)).count()
    }

    fn record(&self, event: Event) {
        self.inner.events.lock().unwrap().push(event);
        self.inner.changed.notify_waiters();
    }

    /// Waits (at most [`WAIT`]) until `done` holds for the events; panics with the events if not.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&[Event]) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&self.inner.events.lock().unwrap()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for {what}; events: {:#?}", self.events());
            }
        }
    }

    /// Waits until `n` events match.
    pub async fn wait_count(&self, what: &str, n: usize, matches: impl Fn(&Event) -> bool) {
        self.wait_until(what, |events| {
            events.iter().filter(|e| matches(e)).count() >= n
        })
        .await
    }

    /// Waits until `n` connections have been released.
    pub async fn wait_released(&self, n: usize) {
        self.wait_count("releases", n, |e| matches!(e, Event::Released(..)))
            .await
    }

    fn panics(&self, callback: &'static str) {
        if self.behavior().panic_in == Some(callback) {
            panic!("test panic in {callback}");
        }
    }
}

/// Checks DESIGN.md guarantee 1 for one established connection's events: established first, at
/// most one client close or reset, then exactly one closure, closed, released, in that order,
/// and nothing after the release.
pub fn assert_lifecycle(events: &[Event]) {
    assert!(
        matches!(events.first(), Some(Event::Established(..))),
        "first event must be established: {events:#?}"
    );
    let position = |f: &dyn Fn(&Event) -> bool| {
        let found: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| f(e))
            .map(|(i, _)| i)
            .collect();
        found
    };
    let closures = position(&|e| matches!(e, Event::Closure(..)));
    let closed = position(&|e| matches!(e, Event::Closed(..)));
    let released = position(&|e| matches!(e, Event::Released(..)));
    let ends = position(&|e| matches!(e, Event::ClientClose(..) | Event::Reset(..)));
    assert_eq!(closures.len(), 1, "exactly one closure: {events:#?}");
    assert_eq!(closed.len(), 1, "exactly one closed: {events:#?}");
    assert_eq!(released.len(), 1, "exactly one released: {events:#?}");
    assert!(
        ends.len() <= 1,
        "at most one client close or reset: {events:#?}"
    );
    let n = events.len();
    assert_eq!(released[0], n - 1, "released must be last: {events:#?}");
    assert_eq!(
        closed[0],
        n - 2,
        "closed right before released: {events:#?}"
    );
    assert_eq!(
        closures[0],
        n - 3,
        "closure right before closed: {events:#?}"
    );
}

/// The closure reason a connection ended with.
pub fn closure_reason(events: &[Event]) -> Option<ClosureReason> {
    events.iter().find_map(|event| match event {
        Event::Closure(_, reason) => Some(*reason),
        _ => None,
    })
}

#[async_trait]
impl Callbacks for Recorder {
    async fn on_start_accepting_connections(&self) {
        self.record(Event::StartAccepting);
    }

    async fn on_stop_accepting_connections(&self) {
        self.record(Event::StopAccepting);
    }

    async fn on_accept_error(&self, error: &io::Error) {
        self.record(Event::AcceptError(error.kind()));
    }

    fn on_socket_created(&self, socket: SockRef<'_>, direction: Direction) {
        if self.inner.keep_sockets.load(Ordering::SeqCst) {
            if let Ok(duplicate) = socket.try_clone() {
                self.inner.sockets.lock().unwrap().push(duplicate);
            }
        }
        self.record(Event::SocketCreated(direction));
        self.panics("on_socket_created");
    }

    async fn on_pre_outgoing_connect(
        &self,
        user_data: &UserData,
        address: &SocketAddr,
        mut argument: ConnectArgument,
    ) {
        let text = argument.take::<String>();
        if let Some(text) = &text {
            user_data.set(self.inner.argument_slot, text.clone());
        }
        self.record(Event::PreOutgoingConnect(*address, text));
        self.panics("on_pre_outgoing_connect");
    }

    async fn on_connection_established(&self, connection: &Connection, address: &SocketAddr) {
        connection
            .user_data()
            .set(self.inner.id_slot, connection.id());
        self.record(Event::Established(connection.id(), *address));
        let behavior = self.behavior();
        if behavior.keep_handles {
            self.inner.handles.lock().unwrap().push(connection.clone());
        }
        if behavior.echo {
            connection.read();
        }
        self.panics("on_connection_established");
    }

    async fn on_outgoing_connection_failed(
        &self,
        user_data: &UserData,
        address: &SocketAddr,
        error: &Error,
    ) {
        self.record(Event::OutgoingFailed(
            *address,
            error.to_string(),
            user_data.get(self.inner.argument_slot),
        ));
    }

    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        self.record(Event::Read(connection.id(), data.len()));
        self.panics("on_read_completed");
        if self.behavior().echo && connection.write(data.freeze()).is_ok() {
            connection.read();
        }
    }

    async fn on_read_error_may_not_be_fatal(&self, connection: &Connection, _: &io::Error) -> bool {
        self.record(Event::ReadErrorMayNotBeFatal(connection.id()));
        self.behavior().errors_not_fatal
    }

    async fn on_read_completion_error(&self, connection: &Connection, _: &io::Error) {
        self.record(Event::ReadCompletionError(connection.id()));
    }

    async fn on_write_completed(&self, connection: &Connection, data: Bytes) {
        self.record(Event::Written(connection.id(), data.len()));
        self.panics("on_write_completed");
    }

    async fn on_write_error_may_not_be_fatal(
        &self,
        connection: &Connection,
        _: &io::Error,
    ) -> bool {
        self.record(Event::WriteErrorMayNotBeFatal(connection.id()));
        self.behavior().errors_not_fatal
    }

    async fn on_write_completion_error(&self, connection: &Connection, _: &io::Error) {
        self.record(Event::WriteCompletionError(connection.id()));
    }

    async fn on_maximum_connections(&self) {
        self.record(Event::MaximumConnections);
    }

    async fn on_all_connections_aborted(&self, count: usize) {
        self.record(Event::AllConnectionsAborted(count));
    }

    async fn on_shutdown_initiated(&self) {
        self.record(Event::ShutdownInitiated);
    }

    async fn on_shutdown_requested(&self, connection: &Connection) {
        self.record(Event::ShutdownRequested(connection.id()));
        if self.behavior().close_on_shutdown_request {
            connection.close();
        }
    }

    async fn on_shutdown_complete(&self, _report: ShutdownReport) {
        self.record(Event::ShutdownComplete);
    }

    async fn on_connection_client_close(&self, connection: &Connection) {
        self.record(Event::ClientClose(connection.id()));
        self.panics("on_connection_client_close");
    }

    async fn on_connection_reset(&self, connection: &Connection, _: &io::Error) {
        self.record(Event::Reset(connection.id()));
    }

    async fn on_connection_closure(&self, connection: &Connection, reason: ClosureReason) {
        self.record(Event::Closure(connection.id(), reason));
        self.panics("on_connection_closure");
    }

    async fn on_connection_closed(&self, connection: &Connection) {
        self.record(Event::Closed(connection.id()));
    }

    async fn on_socket_released(&self, user_data: UserData) {
        self.record(Event::Released(
            user_data.take(self.inner.id_slot),
            user_data.take(self.inner.argument_slot),
        ));
    }

    async fn on_error(&self, error: &Error) {
        self.record(Event::Error(error.to_string()));
    }
}

/// Connects a plain tokio client to `address`, bounded by [`WAIT`].
pub async fn client(address: SocketAddr) -> TcpStream {
    tokio::time::timeout(WAIT, TcpStream::connect(address))
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

/// Writes `message` and reads back exactly as many bytes, bounded by [`WAIT`].
pub async fn echo_round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).await.expect("client write");
    let mut reply = vec![0; message.len()];
    tokio::time::timeout(WAIT, stream.read_exact(&mut reply))
        .await
        .expect("echo timed out")
        .expect("client read");
    reply
}

/// Reads until EOF (bounded by [`WAIT`]); returns the bytes and how the stream ended.
pub async fn read_to_end(stream: &mut TcpStream) -> (Vec<u8>, io::Result<()>) {
    let mut data = Vec::new();
    let result = tokio::time::timeout(WAIT, stream.read_to_end(&mut data))
        .await
        .expect("read to end timed out")
        .map(|_| ());
    (data, result)
}

/// Closes a client with RST (SO_LINGER 0).
pub fn reset(stream: TcpStream) {
    SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("set linger");
    drop(stream);
}

/// A loopback address with nothing listening on it (bound then closed).
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}
