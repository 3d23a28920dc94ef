//! The recording callbacks every test file uses: each callback becomes an [`Event`] (with the
//! time it ran), and a [`Behavior`] plus optional [`Hooks`] say what the application does besides.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use switchboard::socket2::SockRef;
use switchboard::{
    async_trait, Bytes, BytesMut, Callbacks, ClosureReason, ConnectArgument, Connection,
    ConnectionId, Direction, Error, ServerBuilder, ShutdownReport, Slot, TlsInfo, UserData,
};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::WAIT;

/// One recorded callback (or a probe made inside one).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    StartAccepting,
    StopAccepting,
    AcceptError(io::ErrorKind),
    SocketCreated(Direction),
    PreOutgoingConnect(SocketAddr, Option<String>),
    /// `on_negotiation_complete`: side, ALPN protocol, the peer certificate's DER.
    Negotiated {
        id: ConnectionId,
        side: Direction,
        alpn: Option<Vec<u8>>,
        peer_cert: Option<Vec<u8>>,
    },
    /// `on_secure_connection_established`, with the peer's address.
    Secure(ConnectionId, SocketAddr),
    /// `on_connection_established`: the peer's address, and the side `Connection::tls_info`
    /// reports then (`None` for plain TCP).
    Established(ConnectionId, SocketAddr, Option<Direction>),
    /// `on_outgoing_connection_failed`: the address, the error's text and the connect argument
    /// if one was stored.
    OutgoingFailed(SocketAddr, String, Option<String>),
    Read(ConnectionId, usize),
    ReadErrorMayNotBeFatal(ConnectionId),
    ReadCompletionError(ConnectionId),
    Written(ConnectionId, usize),
    WriteErrorMayNotBeFatal(ConnectionId),
    WriteCompletionError(ConnectionId),
    /// `on_write_buffer_high`, with the queued bytes then.
    WriteBufferHigh(ConnectionId, usize),
    /// `on_write_buffer_low`, with the queued bytes then.
    WriteBufferLow(ConnectionId, usize),
    /// `on_read_oob_completed`, with the urgent data.
    ReadOob(ConnectionId, Vec<u8>),
    MaximumConnections,
    AllConnectionsAborted(usize),
    ShutdownInitiated,
    ShutdownRequested(ConnectionId),
    ShutdownComplete(ShutdownReport),
    ClientClose(ConnectionId),
    Reset(ConnectionId),
    /// `on_fatal_error`: `tls` is `Some(from_peer)` for an `Error::Tls`, `None` for any other
    /// error; `tls_info` whether the connection had TLS info then.
    Fatal {
        id: ConnectionId,
        tls: Option<bool>,
        tls_info: bool,
    },
    /// `on_remote_fatal_error`, as for `Fatal`.
    RemoteFatal {
        id: ConnectionId,
        tls: Option<bool>,
    },
    Closure(ConnectionId, ClosureReason),
    Closed(ConnectionId),
    /// `on_socket_released`, with the connection id kept in user data (None for a failed connect,
    /// and for a connection never established unless [`Behavior::name_every_release`]) and the
    /// connect argument if one was stored.
    Released(Option<ConnectionId>, Option<String>),
    SecureReleased(ConnectionId),
    Error(String),
    /// [`Behavior::fill`]: bytes `write` took before refusing, the queue then, and the refusal.
    Filled {
        id: ConnectionId,
        accepted: usize,
        queued: usize,
        refusal: Outcome,
    },
    /// What `writable()` returned inside the named callback.
    WritableIn(ConnectionId, &'static str, Outcome),
    /// What `read_oob()` and `send_urgent()` returned in `on_connection_established`.
    OobCalls(ConnectionId, Outcome, Outcome),
}

impl Event {
    /// The connection an event belongs to, if any.
    pub fn connection(&self) -> Option<ConnectionId> {
        match self {
            Event::Negotiated { id, .. }
            | Event::Secure(id, _)
            | Event::Established(id, ..)
            | Event::Read(id, _)
            | Event::ReadErrorMayNotBeFatal(id)
            | Event::ReadCompletionError(id)
            | Event::Written(id, _)
            | Event::WriteErrorMayNotBeFatal(id)
            | Event::WriteCompletionError(id)
            | Event::WriteBufferHigh(id, _)
            | Event::WriteBufferLow(id, _)
            | Event::ReadOob(id, _)
            | Event::ShutdownRequested(id)
            | Event::ClientClose(id)
            | Event::Reset(id)
            | Event::Fatal { id, .. }
            | Event::RemoteFatal { id, .. }
            | Event::Closure(id, _)
            | Event::Closed(id)
            | Event::SecureReleased(id)
            | Event::Filled { id, .. }
            | Event::WritableIn(id, ..)
            | Event::OobCalls(id, ..) => Some(*id),
            Event::Released(id, _) => *id,
            _ => None,
        }
    }
}

/// What a call made inside a callback (or by a producer) returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok,
    QueueFull {
        queued: usize,
        limit: usize,
    },
    Closed,
    WriteShutdown,
    Unsupported,
    /// Still waiting after [`WAIT`]: what `writable()` must never do inside a callback.
    Hung,
    Other(String),
}

pub fn outcome(result: Result<(), Error>) -> Outcome {
    match result {
        Ok(()) => Outcome::Ok,
        Err(Error::WriteQueueFull { queued, limit }) => Outcome::QueueFull { queued, limit },
        Err(Error::ConnectionClosed) => Outcome::Closed,
        Err(Error::WriteShutdown) => Outcome::WriteShutdown,
        Err(Error::Unsupported(_)) => Outcome::Unsupported,
        Err(other) => Outcome::Other(other.to_string()),
    }
}

/// What the recorder does besides recording. Tests change it through [`Recorder::set_behavior`].
/// The default echoes; [`Behavior::quiet`] does nothing by itself.
#[derive(Debug, Clone)]
pub struct Behavior {
    /// Issue a read in `on_connection_established` and echo every read back, reading again.
    pub echo: bool,
    /// Issue a read in `on_connection_established` and read again after every read, without
    /// echoing (what arrives is kept in [`Recorder::received`] either way).
    pub collect: bool,
    /// With `echo` or `collect`, leave the first read request to the test (through a kept
    /// handle).
    pub first_read_later: bool,
    /// Close the connection in `on_shutdown_requested` (the default); if false, ignore the notice.
    pub close_on_shutdown_request: bool,
    /// Panic in the named callback (e.g. "on_read_completed").
    pub panic_in: Option<&'static str>,
    /// Keep (a clone of) every established connection's handle until its release (see
    /// [`Recorder::handle`] and [`Recorder::take_handles`]).
    pub keep_handles: bool,
    /// Value returned by the "may not be fatal" callbacks.
    pub errors_not_fatal: bool,
    /// Store the connection id in user data from the first callback of a connection (TLS
    /// negotiation or failure, closure), so that connections never established are named in
    /// [`Event::Released`] too.
    pub name_every_release: bool,
    /// Written in `on_connection_established`.
    pub greeting: Option<Bytes>,
    /// `shutdown_write()` right after the greeting (and read on).
    pub shutdown_write_after_greeting: bool,
    /// `close()` right after the greeting, instead of reading.
    pub close_after_greeting: bool,
    /// Written in `on_connection_client_close` (half-close).
    pub reply_on_client_close: Option<Bytes>,
    /// Request urgent data when established and after every urgent byte.
    pub oob: bool,
    /// Call `read_oob()` and `send_urgent()` when established and record what they return.
    pub probe_oob: bool,
    /// When established, `write` buffers of this size until refused, then call `writable()`.
    pub fill: Option<usize>,
    /// Call `writable()` in `on_write_buffer_high`.
    pub probe_writable_when_high: bool,
    /// `SO_SNDBUF` and `SO_RCVBUF` of the server's sockets, set in `on_socket_created`.
    pub server_buffers: Option<usize>,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            echo: true,
            ..Behavior::quiet()
        }
    }
}

impl Behavior {
    /// An application that does nothing by itself: no reads, no handles kept.
    pub fn quiet() -> Self {
        Behavior {
            echo: false,
            collect: false,
            first_read_later: false,
            close_on_shutdown_request: true,
            panic_in: None,
            keep_handles: false,
            errors_not_fatal: false,
            name_every_release: false,
            greeting: None,
            shutdown_write_after_greeting: false,
            close_after_greeting: false,
            reply_on_client_close: None,
            oob: false,
            probe_oob: false,
            fill: None,
            probe_writable_when_high: false,
            server_buffers: None,
        }
    }

    /// Echoes (the default).
    pub fn echo() -> Self {
        Behavior::default()
    }

    /// Reads and keeps what arrives, without echoing.
    pub fn collect() -> Self {
        Behavior {
            collect: true,
            ..Behavior::quiet()
        }
    }
}

pub type ConnectionHook = Box<dyn Fn(&Connection) + Send + Sync>;
pub type CreatedHook = Box<dyn Fn(SockRef<'_>, Direction) + Send + Sync>;
pub type WrittenHook = Box<dyn Fn(&Connection, &Bytes) + Send + Sync>;
pub type ReleasedHook = Box<dyn Fn(&UserData) + Send + Sync>;
pub type ClosureHook = Box<dyn Fn(&Connection, ClosureReason) + Send + Sync>;

/// What a test adds to the recorder's behaviour. Each hook runs *before* the recorder records the
/// event, so a test that has seen the event also sees what the hook did.
#[derive(Default)]
pub struct Hooks {
    pub created: Option<CreatedHook>,
    pub established: Option<ConnectionHook>,
    pub read: Option<ConnectionHook>,
    pub written: Option<WrittenHook>,
    pub client_close: Option<ConnectionHook>,
    pub closure: Option<ClosureHook>,
    pub released: Option<ReleasedHook>,
}

/// The events and when each was recorded (tokio's clock: paused in the timeout tests).
#[derive(Default)]
struct Log {
    events: Vec<Event>,
    times: Vec<Instant>,
}

struct Inner {
    log: Mutex<Log>,
    changed: Notify,
    behavior: Mutex<Behavior>,
    hooks: Hooks,
    handles: Mutex<Vec<Connection>>,
    /// Every byte each connection read.
    received: Mutex<HashMap<ConnectionId, Vec<u8>>>,
    /// The error kind of each `on_connection_reset`.
    resets: Mutex<Vec<(ConnectionId, io::ErrorKind)>>,
    /// Texts of the errors given to the TLS failure callbacks, for assertions and diagnostics.
    messages: Mutex<Vec<String>>,
    id_slot: Slot<ConnectionId>,
    argument_slot: Slot<String>,
    /// A duplicate of each created socket's descriptor, for tests that poke at sockets directly.
    sockets: Mutex<Vec<socket2::Socket>>,
    keep_sockets: AtomicBool,
}

/// Records every callback as an [`Event`], in order, and acts as its [`Behavior`] says.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

impl Recorder {
    /// An echoing recorder whose user data slots are requested from `builder`.
    pub fn new(builder: &mut ServerBuilder) -> Self {
        Self::with_behavior(builder, Behavior::default())
    }

    pub fn with_behavior(builder: &mut ServerBuilder, behavior: Behavior) -> Self {
        Self::with_hooks(builder, behavior, Hooks::default())
    }

    pub fn with_hooks(builder: &mut ServerBuilder, behavior: Behavior, hooks: Hooks) -> Self {
        Recorder {
            inner: Arc::new(Inner {
                log: Mutex::default(),
                changed: Notify::new(),
                behavior: Mutex::new(behavior),
                hooks,
                handles: Mutex::default(),
                received: Mutex::default(),
                resets: Mutex::default(),
                messages: Mutex::default(),
                id_slot: builder.request_user_data_slot(),
                argument_slot: builder.request_user_data_slot(),
                sockets: Mutex::default(),
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

    /// Handles kept with `keep_handles`, in order of establishment.
    pub fn take_handles(&self) -> Vec<Connection> {
        std::mem::take(&mut self.inner.handles.lock().unwrap())
    }

    /// A clone of the handle of `id` kept with `keep_handles`.
    pub fn handle(&self, id: ConnectionId) -> Connection {
        self.inner
            .handles
            .lock()
            .unwrap()
            .iter()
            .find(|handle| handle.id() == id)
            .unwrap_or_else(|| panic!("no handle kept for {id}"))
            .clone()
    }

    /// Drops the handle of `id` kept with `keep_handles`.
    pub fn release_handle(&self, id: ConnectionId) {
        self.inner
            .handles
            .lock()
            .unwrap()
            .retain(|handle| handle.id() != id);
    }

    pub fn events(&self) -> Vec<Event> {
        self.inner.log.lock().unwrap().events.clone()
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
                Event::Established(id, ..) => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// Ids of the connections that ended (had a closure), in closure order.
    pub fn ended(&self) -> Vec<ConnectionId> {
        self.events()
            .iter()
            .filter_map(|event| match event {
                Event::Closure(id, _) => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// Ids of the connections that ended with `reason`, in closure order.
    pub fn ended_with(&self, reason: ClosureReason) -> Vec<ConnectionId> {
        self.events()
            .iter()
            .filter_map(|event| match event {
                Event::Closure(id, r) if *r == reason => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// The closure reason of `id`, if it has ended.
    pub fn closure(&self, id: ConnectionId) -> Option<ClosureReason> {
        self.events().iter().find_map(|event| match event {
            Event::Closure(of, reason) if *of == id => Some(*reason),
            _ => None,
        })
    }

    pub fn count(&self, matches: impl Fn(&Event) -> bool) -> usize {
        self.events().iter().filter(|event| matches(event)).count()
    }

    /// When the first event matching `matches` was recorded.
    pub fn time_of(&self, matches: impl Fn(&Event) -> bool) -> Option<Instant> {
        let log = self.inner.log.lock().unwrap();
        let index = log.events.iter().position(matches)?;
        Some(log.times[index])
    }

    pub fn has(&self, matches: impl Fn(&Event) -> bool) -> bool {
        self.time_of(matches).is_some()
    }

    /// Every byte `id` read.
    pub fn received(&self, id: ConnectionId) -> Vec<u8> {
        self.inner
            .received
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    /// The error kind of each `on_connection_reset`, in order.
    pub fn resets(&self) -> Vec<(ConnectionId, io::ErrorKind)> {
        self.inner.resets.lock().unwrap().clone()
    }

    /// Texts of the errors given to `on_fatal_error` and `on_remote_fatal_error`, in order.
    pub fn messages(&self) -> Vec<String> {
        self.inner.messages.lock().unwrap().clone()
    }

    fn record(&self, event: Event) {
        let mut log = self.inner.log.lock().unwrap();
        log.events.push(event);
        log.times.push(Instant::now());
        drop(log);
        self.inner.changed.notify_waiters();
    }

    /// Waits (at most [`WAIT`]) until `done` holds for the events; panics with the events if not.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&[Event]) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&self.inner.log.lock().unwrap().events) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "timed out waiting for {what}; events: {:#?}; messages: {:#?}",
                    self.events(),
                    self.messages()
                );
            }
        }
    }

    /// Waits (at most [`WAIT`]) until an event matches; returns when the first one was recorded.
    pub async fn wait_for(&self, what: &str, matches: impl Fn(&Event) -> bool) -> Instant {
        self.wait_until(what, |events| events.iter().any(&matches))
            .await;
        self.time_of(matches).unwrap()
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

    /// Waits until `n` TLS connections have had their last event.
    pub async fn wait_secure_released(&self, n: usize) {
        self.wait_count("secure socket releases", n, |e| {
            matches!(e, Event::SecureReleased(..))
        })
        .await
    }

    /// Waits until `id` has been released (its last event, on plain TCP).
    pub async fn wait_release_of(&self, id: ConnectionId) {
        self.wait_for(
            "the release",
            |event| matches!(event, Event::Released(Some(of), _) if *of == id),
        )
        .await;
    }

    /// Waits for `id`'s closure; returns its reason and when it ran.
    pub async fn wait_closure(&self, id: ConnectionId) -> (ClosureReason, Instant) {
        let at = self
            .wait_for(
                "the closure",
                |event| matches!(event, Event::Closure(of, _) if *of == id),
            )
            .await;
        (self.closure(id).unwrap(), at)
    }

    /// The id of the server's side of `client`, once established.
    pub async fn id_of(&self, client: &TcpStream) -> ConnectionId {
        self.id_of_address(client.local_addr().unwrap()).await
    }

    /// The id of the connection whose peer is `address`, once established.
    pub async fn id_of_address(&self, address: SocketAddr) -> ConnectionId {
        self.wait_for(
            "the connection to be established",
            |event| matches!(event, Event::Established(_, peer, _) if *peer == address),
        )
        .await;
        self.events()
            .iter()
            .find_map(|event| match event {
                Event::Established(id, peer, _) if *peer == address => Some(*id),
                _ => None,
            })
            .unwrap()
    }

    /// Asserts that nothing of `id`'s ending has happened yet.
    pub fn assert_open(&self, id: ConnectionId, after: &str) {
        let events = self.events_of(id);
        assert!(
            !events.iter().any(|e| matches!(
                e,
                Event::Closure(..) | Event::Closed(_) | Event::Released(..)
            )),
            "the connection closed {after}: {events:#?}"
        );
    }

    /// Asserts that no `on_error` was reported.
    pub fn assert_no_errors(&self) {
        let errors: Vec<_> = self
            .events()
            .into_iter()
            .filter(|event| matches!(event, Event::Error(_)))
            .collect();
        assert!(errors.is_empty(), "errors reported: {errors:#?}");
    }

    /// Keeps the connection's id in its user data, so that `on_socket_released` can name it.
    fn remember(&self, connection: &Connection) {
        connection
            .user_data()
            .set(self.inner.id_slot, connection.id());
    }

    fn remember_if_asked(&self, connection: &Connection) {
        if self.behavior().name_every_release {
            self.remember(connection);
        }
    }

    fn panics(&self, callback: &'static str) {
        if self.behavior().panic_in == Some(callback) {
            panic!("test panic in {callback}");
        }
    }
}

fn tls_flag(error: &Error) -> Option<bool> {
    match error {
        Error::Tls { from_peer, .. } => Some(*from_peer),
        _ => None,
    }
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
        if let Some(hook) = &self.inner.hooks.created {
            hook(SockRef::from(&*socket), direction);
        }
        if self.inner.keep_sockets.load(Ordering::SeqCst) {
            if let Ok(duplicate) = socket.try_clone() {
                self.inner.sockets.lock().unwrap().push(duplicate);
            }
        }
        if let Some(size) = self.behavior().server_buffers {
            socket.set_send_buffer_size(size).expect("SO_SNDBUF");
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
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

    async fn on_negotiation_complete(&self, connection: &Connection, info: &TlsInfo) {
        self.remember_if_asked(connection);
        self.record(Event::Negotiated {
            id: connection.id(),
            side: info.side(),
            alpn: info.alpn_protocol().map(<[u8]>::to_vec),
            peer_cert: info
                .peer_certificate()
                .map(|certificate| certificate.to_der().unwrap()),
        });
        self.panics("on_negotiation_complete");
    }

    async fn on_secure_connection_established(
        &self,
        connection: &Connection,
        address: &SocketAddr,
    ) {
        self.record(Event::Secure(connection.id(), *address));
        self.panics("on_secure_connection_established");
    }

    async fn on_connection_established(&self, connection: &Connection, address: &SocketAddr) {
        let id = connection.id();
        self.remember(connection);
        if let Some(hook) = &self.inner.hooks.established {
            hook(connection);
        }
        let behavior = self.behavior();
        // Kept before the event is recorded, so a test that saw the event finds the handle.
        if behavior.keep_handles {
            self.inner.handles.lock().unwrap().push(connection.clone());
        }
        self.record(Event::Established(
            id,
            *address,
            connection.tls_info().map(TlsInfo::side),
        ));
        if let Some(greeting) = behavior.greeting {
            connection.write(greeting).expect("greeting");
        }
        if behavior.shutdown_write_after_greeting {
            connection.shutdown_write();
        }
        if behavior.probe_oob {
            let read = outcome(connection.read_oob());
            let send = outcome(connection.send_urgent(b'!'));
            self.record(Event::OobCalls(id, read, send));
        }
        if behavior.oob {
            connection.read_oob().expect("read_oob");
        }
        if let Some(size) = behavior.fill {
            let chunk = Bytes::from(vec![b'f'; size]);
            let mut accepted = 0;
            let refusal = loop {
                match connection.write(chunk.clone()) {
                    Ok(()) => accepted += size,
                    Err(error) => break outcome(Err(error.into())),
                }
            };
            self.record(Event::Filled {
                id,
                accepted,
                queued: connection.queued_write_bytes(),
                refusal,
            });
            let waited = match tokio::time::timeout(WAIT, connection.writable()).await {
                Ok(result) => outcome(result),
                Err(_) => Outcome::Hung,
            };
            self.record(Event::WritableIn(id, "on_connection_established", waited));
        }
        if behavior.close_after_greeting {
            connection.close();
        } else if (behavior.echo || behavior.collect) && !behavior.first_read_later {
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
        self.inner
            .received
            .lock()
            .unwrap()
            .entry(connection.id())
            .or_default()
            .extend_from_slice(&data);
        if let Some(hook) = &self.inner.hooks.read {
            hook(connection);
        }
        self.record(Event::Read(connection.id(), data.len()));
        self.panics("on_read_completed");
        let behavior = self.behavior();
        if behavior.echo {
            if connection.write(data.freeze()).is_ok() {
                connection.read();
            }
        } else if behavior.collect {
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
        if let Some(hook) = &self.inner.hooks.written {
            hook(connection, &data);
        }
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

    async fn on_write_buffer_high(&self, connection: &Connection) {
        let id = connection.id();
        self.record(Event::WriteBufferHigh(id, connection.queued_write_bytes()));
        if self.behavior().probe_writable_when_high {
            let waited = match tokio::time::timeout(WAIT, connection.writable()).await {
                Ok(result) => outcome(result),
                Err(_) => Outcome::Hung,
            };
            self.record(Event::WritableIn(id, "on_write_buffer_high", waited));
        }
    }

    async fn on_write_buffer_low(&self, connection: &Connection) {
        self.record(Event::WriteBufferLow(
            connection.id(),
            connection.queued_write_bytes(),
        ));
    }

    async fn on_read_oob_completed(&self, connection: &Connection, data: BytesMut) {
        self.record(Event::ReadOob(connection.id(), data.to_vec()));
        if self.behavior().oob {
            connection.read_oob().expect("read_oob again");
        }
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

    async fn on_shutdown_complete(&self, report: ShutdownReport) {
        self.record(Event::ShutdownComplete(report));
    }

    async fn on_connection_client_close(&self, connection: &Connection) {
        if let Some(hook) = &self.inner.hooks.client_close {
            hook(connection);
        }
        self.record(Event::ClientClose(connection.id()));
        if let Some(reply) = self.behavior().reply_on_client_close {
            connection
                .write(reply)
                .expect("write after the peer's close");
        }
        self.panics("on_connection_client_close");
    }

    async fn on_connection_reset(&self, connection: &Connection, error: &io::Error) {
        self.inner
            .resets
            .lock()
            .unwrap()
            .push((connection.id(), error.kind()));
        self.record(Event::Reset(connection.id()));
    }

    async fn on_connection_closure(&self, connection: &Connection, reason: ClosureReason) {
        self.remember_if_asked(connection);
        if let Some(hook) = &self.inner.hooks.closure {
            hook(connection, reason);
        }
        self.record(Event::Closure(connection.id(), reason));
        self.panics("on_connection_closure");
    }

    async fn on_connection_closed(&self, connection: &Connection) {
        self.record(Event::Closed(connection.id()));
    }

    async fn on_socket_released(&self, user_data: UserData) {
        if let Some(hook) = &self.inner.hooks.released {
            hook(&user_data);
        }
        let id = user_data.take(self.inner.id_slot);
        if let Some(id) = id {
            // A kept handle must not outlive its connection.
            self.release_handle(id);
        }
        self.record(Event::Released(
            id,
            user_data.take(self.inner.argument_slot),
        ));
    }

    async fn on_fatal_error(&self, connection: &Connection, error: &Error) {
        self.remember_if_asked(connection);
        self.inner.messages.lock().unwrap().push(error.to_string());
        self.record(Event::Fatal {
            id: connection.id(),
            tls: tls_flag(error),
            tls_info: connection.tls_info().is_some(),
        });
    }

    async fn on_remote_fatal_error(&self, connection: &Connection, error: &Error) {
        self.remember_if_asked(connection);
        self.inner.messages.lock().unwrap().push(error.to_string());
        self.record(Event::RemoteFatal {
            id: connection.id(),
            tls: tls_flag(error),
        });
    }

    async fn on_secure_socket_released(&self, id: ConnectionId) {
        self.record(Event::SecureReleased(id));
    }

    async fn on_error(&self, error: &Error) {
        self.record(Event::Error(error.to_string()));
    }
}
