//! Testing your callbacks without sockets: an embedded connection (feature `testing`).
//!
//! [`ServerBuilder::embedded`](crate::ServerBuilder::embedded) makes `start` start a server with
//! every setting of the builder (limits, timeouts, queue sizes, user data slots) but no
//! listener. [`EmbeddedServer::accept`] opens a connection to it over an in-memory stream and
//! hands the test its other end, an [`EmbeddedPeer`]; [`EmbeddedServer::connect`] opens
//! an outgoing one, whose peer plays the remote server. The connection runs the same engine a
//! socket's does (the same driver task, lifecycle rules, registry, limiter and shutdown); only
//! the bytes travel through memory. From the peer the test sends bytes in the chunks it chooses,
//! reads what the handler wrote, half-closes, resets, or stops reading so that the write queue
//! fills; with a [send window](EmbeddedPeer::set_send_window) a server that stops reading holds
//! the peer's sends up in turn. [`Recorded`] wraps the callbacks and logs every event in order in [`Events`].
//!
//! For a [frame handler](crate::codec::FrameHandler) (started with
//! [`embedded().start(..)`](crate::ServerBuilder::embedded)): [`Recorded`] wraps it
//! too and logs its items ([`Event::Frame`]); [`EmbeddedPeer::framed`] turns the peer into a
//! [`FramedPeer`] that sends and receives items through a codec; and a handler in an
//! [`Arc`] is one too, so the test keeps a clone to look at its state.
//!
//! Nothing waits on the network, so under tokio's paused clock
//! (`#[tokio::test(start_paused = true)]`, tokio's `test-util` feature) the timeouts and the
//! shutdown's drain time pass at once and in a fixed order: a test of a 30 s idle timeout takes
//! microseconds.
//!
//! Enable it for tests only:
//! ```toml
//! [dev-dependencies]
//! switchboard = { version = "0.1", features = ["testing"] }
//! tokio = { version = "1", features = ["macros", "rt", "test-util"] }
//! ```
//!
//! What it does not model: TLS, the PROXY protocol and urgent data (they need a socket),
//! [`on_socket_created`](crate::Callbacks::on_socket_created) (there is no socket), the accept
//! loop's events ([`on_start_accepting_connections`](crate::Callbacks::on_start_accepting_connections)
//! and its kin: there is no listener), and the kernel's own timing.
//!
//! # An echo handler
//! ```
//! use std::net::SocketAddr;
//! use switchboard::testing::{Event, Recorded};
//! use switchboard::{async_trait, BytesMut, Callbacks, ClosureReason, Connection, Server};
//!
//! struct Echo;
//!
//! #[async_trait]
//! impl Callbacks for Echo {
//!     async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
//!         connection.read();
//!     }
//!     async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
//!         let _ = connection.write(data.freeze());
//!         connection.read();
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (callbacks, events) = Recorded::new(Echo);
//! let server = Server::builder().embedded().start(callbacks).await?;
//! let mut peer = server.accept("192.0.2.7:50000".parse()?).await?;
//! peer.send("hello")?;
//! assert_eq!(peer.read().await?, "hello");
//! peer.shutdown_write();
//! assert_eq!(peer.read().await?, ""); // the server's FIN
//! assert_eq!(events.wait_for_release(peer.id()).await, ClosureReason::PeerClosed);
//! assert_eq!(events.of(peer.id())[0], Event::Established(peer.id(), peer.peer_addr()));
//! # Ok(()) }
//! ```
//!
//! # A line protocol, split across reads
//! The peer decides where the stream is cut: each `send` is one read on the server.
//! ```
//! use std::net::SocketAddr;
//! use std::sync::Mutex;
//! use switchboard::testing::Recorded;
//! use switchboard::{async_trait, BytesMut, Callbacks, Connection, Server};
//!
//! /// Answers each line with its length; keeps a partial line until its end comes.
//! #[derive(Default)]
//! struct LineLengths {
//!     partial: Mutex<Vec<u8>>,
//! }
//!
//! #[async_trait]
//! impl Callbacks for LineLengths {
//!     async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
//!         connection.read();
//!     }
//!     async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
//!         let mut partial = self.partial.lock().unwrap();
//!         for byte in data {
//!             if byte == b'\n' {
//!                 let _ = connection.write(format!("{}\n", partial.len()));
//!                 partial.clear();
//!             } else {
//!                 partial.push(byte);
//!             }
//!         }
//!         connection.read();
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (callbacks, _events) = Recorded::new(LineLengths::default());
//! let server = Server::builder().embedded().start(callbacks).await?;
//! let mut peer = server.accept("192.0.2.7:50000".parse()?).await?;
//! for chunk in ["he", "llo\nwor", "ld", "!\n"] {
//!     peer.send(chunk)?;
//! }
//! assert_eq!(peer.read_exact(4).await?, "5\n6\n");
//! # Ok(()) }
//! ```
//!
//! # A handler that must close on a timeout
//! With the paused clock the 30 s pass as soon as nothing else is left to do.
//! ```
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use switchboard::testing::Recorded;
//! use switchboard::{async_trait, Callbacks, ClosureReason, Connection, Server};
//!
//! struct Silent;
//!
//! #[async_trait]
//! impl Callbacks for Silent {
//!     async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
//!         connection.read();
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (callbacks, events) = Recorded::new(Silent);
//! let server = Server::builder()
//!     .idle_timeout(Some(Duration::from_secs(30)))
//!     .embedded().start(callbacks)
//!     .await?;
//! let mut peer = server.accept("192.0.2.7:50000".parse()?).await?;
//! let started = tokio::time::Instant::now();
//! // A timeout aborts: the peer sees a reset.
//! let error = peer.read().await.unwrap_err();
//! assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
//! assert_eq!(events.wait_for_release(peer.id()).await, ClosureReason::IdleTimedOut);
//! assert!(started.elapsed() >= Duration::from_secs(30));
//! # Ok(()) }
//! ```
//!
//! # A handler that must survive a reset mid-write
//! The peer stops reading, the handler's reply fills the queue, then the peer resets.
//! ```
//! use std::net::SocketAddr;
//! use switchboard::testing::{Event, Recorded};
//! use switchboard::{async_trait, Bytes, Callbacks, ClosureReason, Connection, Server};
//!
//! struct Flood;
//!
//! #[async_trait]
//! impl Callbacks for Flood {
//!     async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
//!         let _ = connection.write(Bytes::from(vec![b'x'; 40_000]));
//!         connection.read();
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (callbacks, events) = Recorded::new(Flood);
//! let server = Server::builder()
//!     .write_watermarks(16_000, 8_000)
//!     .embedded().start(callbacks)
//!     .await?;
//! let first = server.accept("192.0.2.7:50000".parse()?).await?;
//! first.set_receive_window(1000);
//! events.wait_for(|event| matches!(event, Event::WriteBufferHigh(..))).await;
//! first.reset();
//! let reason = events.wait_for_release(first.id()).await;
//! assert_eq!(reason, ClosureReason::PeerReset);
//! assert_eq!(events.count(|event| matches!(event, Event::Reset(..))), 1);
//!
//! // The server goes on serving.
//! let mut second = server.accept("192.0.2.8:50000".parse()?).await?;
//! assert_eq!(second.read_exact(40_000).await?.len(), 40_000);
//! # Ok(()) }
//! ```

mod framed_peer;
mod memory;
mod peer;
mod recorded;

use std::any::Any;
use std::future::{Future, IntoFuture};
use std::io::{self, IoSlice};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

pub use framed_peer::FramedPeer;
pub use peer::{EmbeddedPeer, EmbeddedSender};
pub use recorded::{Event, Events, Recorded, WAIT_LIMIT};

use bytes::Bytes;
use futures::task::noop_waker_ref;

use self::memory::Pipe;
use crate::client::Client;
use crate::connection::user_data::ConnectArgument;
use crate::connection::weak::WeakConnection;
use crate::connection::Connection;
use crate::error::Error;
use crate::ids::{ConnectionId, Direction};
use crate::server::builder::ServerBuilder;
use crate::server::connect::{self, Dial};
use crate::server::driver::transport::{ByteStream, Transport};
use crate::server::driver::Setup;
use crate::server::into_callbacks::IntoCallbacks;
use crate::server::limit::ConnectionLimiter;
use crate::server::manager::{Addresses, Admitted, Manager};
use crate::server::{Server, WeakServer};
use crate::shutdown_report::ShutdownReport;
use crate::stats::Stats;

/// The server's address of embedded connections, unless the test names another.
const DEFAULT_LOCAL_ADDR: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(Ipv4Addr::LOCALHOST),
    7000, // any port: nothing listens
);

/// Embedded servers.
impl ServerBuilder {
    /// Makes [`start`](ServerBuilder::<EmbeddedServer>::start) start an [`EmbeddedServer`]
    /// (feature `testing`): a server with every setting of the builder (limits, timeouts, queue
    /// sizes, user data slots) but no listener, for [embedded connections](EmbeddedServer::accept)
    /// only. The builder's listeners and socket options are not used.
    ///
    /// ```
    /// use switchboard::codec::{FrameHandler, FramedConnection, Framing};
    /// use switchboard::tokio_util::codec::LinesCodec;
    /// use switchboard::{async_trait, Callbacks, Connection, Server};
    ///
    /// /// Answers each line in capitals.
    /// struct Shout;
    ///
    /// impl Callbacks for Shout {}
    ///
    /// #[async_trait]
    /// impl FrameHandler for Shout {
    ///     type Codec = LinesCodec;
    ///     fn new_codec(&self, _: &Connection) -> LinesCodec {
    ///         LinesCodec::new()
    ///     }
    ///     async fn on_frame(&self, connection: &FramedConnection<'_, LinesCodec>, line: String) {
    ///         let _ = connection.send(line.to_uppercase());
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = Server::builder().embedded().start(Framing::new(Shout)).await?;
    /// let mut peer = server.accept("192.0.2.7:50000".parse()?).await?;
    /// // The line arrives cut in two; the handler sees it whole.
    /// peer.send("hel")?;
    /// peer.send("lo\n")?;
    /// assert_eq!(peer.read_exact(6).await?, "HELLO\n");
    /// # Ok(()) }
    /// ```
    pub fn embedded(self) -> ServerBuilder<EmbeddedServer> {
        self.into_kind()
    }
}

/// An embedded server.
impl ServerBuilder<EmbeddedServer> {
    /// Validates the settings and starts the server with no listener (see
    /// [`embedded`](ServerBuilder::embedded)), with `callbacks` running the connections, as
    /// [`ServerBuilder::start`] for a server on sockets. Runs
    /// [`on_server_started`](crate::Callbacks::on_server_started).
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] naming the setting.
    pub async fn start(self, callbacks: impl IntoCallbacks) -> Result<EmbeddedServer, Error> {
        let (manager, _) = self.into_manager(callbacks)?;
        let server = Server::started(manager, Arc::new([]), Arc::new([]), Arc::new([])).await;
        Ok(EmbeddedServer {
            server,
            local_addr: DEFAULT_LOCAL_ADDR,
            at_limit: AtomicBool::new(false),
        })
    }
}

/// A server with no listener whose connections run over memory (feature `testing`): from
/// [`ServerBuilder::embedded`]. [`accept`](Self::accept) takes a connection in from a test's
/// peer; [`connect`](Self::connect) makes one out to a test's peer. It controls its server as a
/// [`Server`] handle does (stats, abort-all, shutdown...): the methods below forward to
/// [`server`](Self::server), which has the rest.
#[derive(Debug)]
pub struct EmbeddedServer {
    server: Server,
    local_addr: SocketAddr,
    /// The connection limit was reached and reported, and not left since.
    at_limit: AtomicBool,
}

/// What a [`Server`] handle does.
impl EmbeddedServer {
    /// The server's handle: its [`Server`] methods all work on an embedded server, those of the
    /// listeners aside (it has none).
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The server's address of its connections, 127.0.0.1:7000, unless
    /// [`accept_on`](Self::accept_on) names another (nothing listens there). Not
    /// [`Server::local_addr`], which is `None`: an embedded server has no listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// [`Server::stats`].
    pub fn stats(&self) -> Stats {
        self.server.stats()
    }

    /// [`Server::shutdown`].
    ///
    /// # Cancel safety
    /// As [`Server::shutdown`]'s: the shutdown runs on a task of its own.
    pub async fn shutdown(&self) -> ShutdownReport {
        self.server.shutdown().await
    }

    /// [`Server::is_shutting_down`].
    pub fn is_shutting_down(&self) -> bool {
        self.server.is_shutting_down()
    }

    /// [`Server::abort_all_connections`].
    ///
    /// # Cancel safety
    /// As [`Server::abort_all_connections`]'s.
    pub async fn abort_all_connections(&self) -> usize {
        self.server.abort_all_connections().await
    }

    /// [`Server::start_accepting`]: [`accept`](Self::accept) takes connections again.
    pub fn start_accepting(&self) {
        self.server.start_accepting();
    }

    /// [`Server::stop_accepting`]: [`accept`](Self::accept) takes no connection until
    /// [`start_accepting`](Self::start_accepting).
    pub fn stop_accepting(&self) {
        self.server.stop_accepting();
    }

    /// [`Server::active_connections`].
    pub fn active_connections(&self) -> usize {
        self.server.active_connections()
    }

    /// [`Server::connection`].
    #[must_use = "the handle keeps the connection open only while it is held"]
    pub fn connection(&self, id: ConnectionId) -> Option<Connection> {
        self.server.connection(id)
    }

    /// [`Server::connections`].
    pub fn connections(&self) -> Vec<WeakConnection> {
        self.server.connections()
    }

    /// [`Server::connections_from_ip`].
    pub fn connections_from_ip(&self, ip: IpAddr) -> Option<usize> {
        self.server.connections_from_ip(ip)
    }

    /// [`Server::limiter`].
    pub fn limiter(&self) -> &ConnectionLimiter {
        self.server.limiter()
    }

    /// [`Server::downgrade`].
    pub fn downgrade(&self) -> WeakServer {
        self.server.downgrade()
    }
}

/// Connections in and out.
impl EmbeddedServer {
    /// Accepts a connection from `peer_addr`, as the accept loop would a socket: it takes a slot
    /// of the limiter, counts against the per-address cap, and runs in its own task from
    /// [`on_connection_established`](crate::Callbacks::on_connection_established) on. Returns the
    /// test's end of it.
    ///
    /// Over the [per-address cap](ServerBuilder::max_connections_per_ip) the connection is
    /// refused as a socket's would be: it runs only its closing events (reason
    /// [`ClosureReason::PerIpLimit`](crate::ClosureReason::PerIpLimit)) and the peer sees a reset.
    ///
    /// At the connection limit it is not accepted, and
    /// [`on_maximum_connections`](crate::Callbacks::on_maximum_connections) runs (once, until a
    /// connection is accepted again); no other callback runs for it. With
    /// [`LimitPolicy::AcceptAndClose`](crate::LimitPolicy::AcceptAndClose) it is refused as the accept
    /// loop refuses a socket: counted in
    /// [`Stats::refused_at_limit`](crate::Stats::refused_at_limit), and the returned peer reads
    /// the [refusal message](ServerBuilder::refusal_message) then FIN, or, without a message,
    /// a reset. Such a peer never became a connection: its [`id`](EmbeddedPeer::id) is 0,
    /// which no connection has. With the default
    /// [`LimitPolicy::StopAccepting`](crate::LimitPolicy::StopAccepting) a real client would wait in the
    /// backlog instead: nothing is counted, and this returns
    /// [`Error::ConnectionLimitReached`]. Once the server
    /// [stopped accepting](Server::stop_accepting) (or was started with
    /// [`accepting(false)`](ServerBuilder::accepting)) nothing is accepted and no callback runs: a
    /// real client would wait in the backlog until [`start_accepting`](Server::start_accepting).
    ///
    /// # Errors
    /// [`Error::ShuttingDown`] once a shutdown began; [`Error::ConnectionLimitReached`] at the
    /// connection limit with [`LimitPolicy::StopAccepting`](crate::LimitPolicy::StopAccepting);
    /// [`Error::Io`] of kind [`WouldBlock`](std::io::ErrorKind::WouldBlock)
    /// while the server is not accepting.
    pub async fn accept(&self, peer_addr: SocketAddr) -> Result<EmbeddedPeer, Error> {
        self.accept_on(peer_addr, self.local_addr).await
    }

    /// [`accept`](Self::accept), on the server's address `local_addr`.
    ///
    /// # Errors
    /// As [`accept`](Self::accept).
    pub async fn accept_on(
        &self,
        peer_addr: SocketAddr,
        local_addr: SocketAddr,
    ) -> Result<EmbeddedPeer, Error> {
        let manager = self.server.manager();
        let live = manager.begin()?;
        if !manager.is_accepting() {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the server is not accepting: a client would wait in the backlog",
            )));
        }
        // As the accept loop would: with `LimitPolicy::StopAccepting` at the limit it accepts no
        // one (a real client waits in the backlog, and no refusal is counted).
        let held_back = manager.holds_clients_back();
        let admitted = if held_back { None } else { manager.admit() };
        let Some(permit) = admitted else {
            // Reported inline: there is no accept loop whose events task would run it, and the
            // test awaiting this call expects it to have run.
            if !self.at_limit.swap(true, Ordering::Relaxed) {
                let invoker = manager.invoker();
                let future = invoker.callbacks().on_maximum_connections();
                invoker.call("on_maximum_connections", None, future).await;
            }
            if held_back {
                return Err(Error::ConnectionLimitReached {
                    limit: manager.limiter().capacity(),
                });
            }
            let pipe = refused(manager.config().refusal_message.as_ref());
            return Ok(EmbeddedPeer::new(
                ConnectionId(0),
                peer_addr,
                local_addr,
                pipe,
            ));
        };
        self.at_limit.store(false, Ordering::Relaxed);
        let Admitted {
            permit,
            over_peer_cap,
        } = manager.admit_peer(permit, peer_addr.ip());
        let (pipe, stream) = Pipe::new();
        let transport = Transport::Stream(Box::new(stream));
        if over_peer_cap {
            transport.reset_on_close();
        }
        let (id, _) = register(
            manager,
            transport,
            peer_addr,
            local_addr,
            permit,
            live,
            over_peer_cap,
        )?;
        Ok(EmbeddedPeer::new(id, peer_addr, local_addr, pipe))
    }
}

impl EmbeddedServer {
    /// [`Server::connect`] over an in-memory stream: an outgoing connection to `remote`, whose
    /// other end, the remote server, the test plays through the [`EmbeddedPeer`] it returns
    /// with the connection. Set the [`argument`](EmbeddedConnect::argument), then `.await` it
    /// for a [`Connection`] handle or end it with [`client`](EmbeddedConnect::client) for an
    /// awaitable [`Client`], as with [`ConnectBuilder`](crate::ConnectBuilder). It takes the
    /// same path as a socket's connect:
    /// [`on_pre_outgoing_connect`](crate::Callbacks::on_pre_outgoing_connect) with the
    /// argument, a slot of the limiter, then the connection's events on its own task from
    /// [`on_connection_established`](crate::Callbacks::on_connection_established) on
    /// ([`Direction::Outbound`], counted in [`Stats::connected`](crate::Stats::connected)). No
    /// socket is created, so [`on_socket_created`](crate::Callbacks::on_socket_created) does not
    /// run, and the connect itself cannot fail: use a real address with [`Server::connect`] to
    /// test a refused or timed-out connect. The connection's local address is the server's
    /// [`local_addr`](Self::local_addr).
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use switchboard::testing::{Event, Recorded};
    /// use switchboard::{async_trait, BytesMut, Callbacks, Connection, Direction, Server};
    ///
    /// /// Sends a greeting when it connects and records what comes back.
    /// struct Greeter;
    ///
    /// #[async_trait]
    /// impl Callbacks for Greeter {
    ///     async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
    ///         let _ = connection.write("HELLO\r\n");
    ///         connection.read();
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (callbacks, events) = Recorded::new(Greeter);
    /// let server = Server::builder().embedded().start(callbacks).await?;
    /// let remote: SocketAddr = "198.51.100.1:6379".parse()?;
    /// let (connection, mut peer) = server.connect(remote).argument("session-1").await?;
    /// assert_eq!(connection.direction(), Direction::Outbound);
    /// assert_eq!(peer.read().await?, "HELLO\r\n");
    /// peer.send("+OK\r\n")?;
    /// events.wait_for(|event| matches!(event, Event::Read(..))).await;
    /// assert_eq!(events.all()[1], Event::PreOutgoingConnect(remote));
    /// assert_eq!(events.all()[2], Event::Established(connection.id(), remote));
    /// # Ok(()) }
    /// ```
    pub fn connect(&self, remote: SocketAddr) -> EmbeddedConnect {
        EmbeddedConnect {
            server: self.server.clone(),
            local_addr: self.local_addr,
            remote,
            argument: ConnectArgument::empty(),
        }
    }
}

/// An outgoing embedded connection to make, from [`EmbeddedServer::connect`]: `.await` it for
/// the connection's handle and the test's end, or end it with [`client`](Self::client).
///
/// # Errors
/// As a socket's connect: [`Error::ShuttingDown`], [`Error::ConnectionLimitReached`], or
/// [`Error::CallbackPanic`] if the pre-connect callback panicked; after a failure
/// [`on_socket_released`](crate::Callbacks::on_socket_released) has run for the user data.
///
/// # Cancel safety
/// As a socket's connect: the attempt runs on a task of its own.
#[derive(Debug)]
#[must_use = "nothing connects until it is awaited or `client` is called"]
pub struct EmbeddedConnect {
    server: Server,
    local_addr: SocketAddr,
    remote: SocketAddr,
    argument: ConnectArgument,
}

impl EmbeddedConnect {
    /// As [`ConnectBuilder::argument`](crate::ConnectBuilder::argument): the value
    /// [`on_pre_outgoing_connect`](crate::Callbacks::on_pre_outgoing_connect) gets. Default:
    /// none.
    pub fn argument(mut self, argument: impl Any + Send) -> Self {
        self.argument = ConnectArgument::new(argument);
        self
    }

    /// A [`Client`] that the calling task drives, connected as `.await` connects (see
    /// [`ConnectBuilder::client`](crate::ConnectBuilder::client)); the test plays the remote
    /// server through the [`EmbeddedPeer`].
    ///
    /// # Errors
    /// As for `.await` (see [`EmbeddedConnect`]).
    pub async fn client(self) -> Result<(Client, EmbeddedPeer), Error> {
        let (sink, receiver) = crate::client::channel();
        let (connection, peer) = self.dial(Some(Box::new(sink))).await?;
        Ok((Client::new(connection, receiver), peer))
    }

    async fn dial(
        self,
        sink: Option<Box<dyn crate::connection::read_sink::ReadSink>>,
    ) -> Result<(Connection, EmbeddedPeer), Error> {
        let (pipe, stream) = Pipe::new();
        let manager = self.server.manager();
        let live = manager.begin()?;
        let dial = Dial::Stream {
            stream: Box::new(stream),
            local: self.local_addr,
        };
        let attempt = connect::connect(
            manager.clone(),
            live,
            self.remote,
            dial,
            self.argument,
            false,
            sink,
        );
        let connection = match tokio::spawn(attempt).await {
            Ok(result) => result?,
            // Callbacks are guarded, so the task only fails when the runtime is shutting down.
            Err(_) => return Err(Error::ShuttingDown),
        };
        let peer = EmbeddedPeer::new(connection.id(), self.remote, self.local_addr, pipe);
        Ok((connection, peer))
    }
}

/// Connects; the returned handle keeps the connection open until dropped.
impl IntoFuture for EmbeddedConnect {
    type Output = Result<(Connection, EmbeddedPeer), Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.dial(None))
    }
}

/// The peer of a client refused at the connection limit, as the accept loop refuses a socket:
/// the refusal message then FIN, or a reset without one (or if the message did not fit, which
/// the builder's bound on it rules out).
fn refused(message: Option<&Bytes>) -> memory::Pipe {
    let (pipe, mut stream) = Pipe::new();
    let sent = message.is_some_and(|message| {
        let mut cx = TaskContext::from_waker(noop_waker_ref());
        let written = stream.poll_write(&mut cx, &[IoSlice::new(message)]);
        matches!(written, Poll::Ready(Ok(written)) if written == message.len())
    });
    if sent {
        stream.shutdown_write();
    } else {
        stream.reset_on_close();
    }
    pipe
}

fn register(
    manager: &Manager,
    transport: Transport,
    peer: SocketAddr,
    local: SocketAddr,
    permit: crate::server::limit::Permit,
    live: crate::server::registry::Live,
    over_peer_cap: bool,
) -> Result<
    (
        crate::ids::ConnectionId,
        Option<crate::connection::Connection>,
    ),
    Error,
> {
    manager
        .register(
            transport,
            Addresses { peer, local },
            Direction::Inbound,
            manager.new_user_data(),
            Setup::default(),
            permit,
            live,
            false,
            over_peer_cap,
        )
        .map_err(|(_, error)| error)
}
