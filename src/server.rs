//! The builder, the listeners and the handle that controls a running server.

use std::any::Any;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use crate::accept::{accept_loop, Listener};
use crate::manager::{Config, Manager, ShutdownReport};
use crate::user_data::{Slot, UserDataLayout};
use crate::{
    Callbacks, ConnectArgument, Connection, ConnectionLimiter, Error, Stats, Timeouts, TlsConnect,
};

/// Listen backlog: Linux's `somaxconn` default since 5.4 and what nginx and Go ask for on Linux.
pub const DEFAULT_BACKLOG: u32 = 1024;
/// Read buffer size: tokio's and most echo servers' usual 8 KiB, allocated only when data is
/// there to read.
pub const DEFAULT_READ_BUFFER_SIZE: usize = 8 * 1024;
/// Write queue limit: Netty's default high watermark (64 KiB).
pub const DEFAULT_WRITE_QUEUE_LIMIT: usize = 64 * 1024;
/// Write queue high watermark: Netty's default (64 KiB). At or above it a connection's queue is
/// "high": [`Callbacks::on_write_buffer_high`], and
/// [`Connection::writable`] waits.
pub const DEFAULT_WRITE_HIGH_WATERMARK: usize = 64 * 1024;
/// Write queue low watermark: Netty's default (32 KiB). A high queue that drains to it is no
/// longer high: [`Callbacks::on_write_buffer_low`].
pub const DEFAULT_WRITE_LOW_WATERMARK: usize = 32 * 1024;
/// Drain time at shutdown before the remaining connections are reset: Kubernetes' default
/// termination grace period.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful close waits for the flush and the peer's FIN: nginx's `lingering_timeout`.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Outgoing connect timeout: long enough for a retransmitted SYN (1 s, then 3 s), short enough
/// that a dead host is reported promptly.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take, from accept (or connect) to negotiated: the design's
/// default, as in Netty's `SslHandler` (10 s).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes of accepted connections in progress at once. A busy 2-core server completes a
/// few thousand handshakes a second, so 512 in progress is far more than honest clients need,
/// while a flood of clients that connect and stall holds at most this many connection slots
/// (until the handshake timeout ends them).
pub const DEFAULT_MAX_CONCURRENT_HANDSHAKES: usize = 512;

/// What a server does with new connections when its [`ConnectionLimiter`] is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AtLimit {
    /// Stop accepting until a slot frees: new clients wait in the listen backlog (the C++
    /// framework's behaviour). The default.
    #[default]
    StopAccepting,
    /// Keep accepting, and close each connection over the limit at once, so clients learn
    /// promptly instead of waiting.
    AcceptAndClose,
}

/// Configures and starts a [`Server`]. Every setting has a documented default.
///
/// ```
/// use std::time::Duration;
/// use switchboard::{AtLimit, Callbacks, Server};
///
/// struct Nothing;
/// impl Callbacks for Nothing {}
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), switchboard::Error> {
/// let server = Server::builder()
///     .bind("127.0.0.1:0")
///     .max_connections(10_000)
///     .at_limit(AtLimit::StopAccepting)
///     .shutdown_timeout(Duration::from_secs(5))
///     .start(Nothing)
///     .await?;
/// println!("listening on {}", server.local_addr().unwrap());
/// server.shutdown().await;
/// # Ok(()) }
/// ```
pub struct ServerBuilder {
    binds: Vec<Bind>,
    /// The acceptor for listeners added with `bind`.
    tls: Option<native_tls::TlsAcceptor>,
    backlog: u32,
    reuse_address: bool,
    config: Config,
    limiter: ConnectionLimiter,
    accepting: bool,
    layout: UserDataLayout,
}

/// One listener to open.
struct Bind {
    address: Result<SocketAddr, Error>,
    /// Its own acceptor (from `bind_tls`); otherwise the builder's, if any.
    tls: Option<native_tls::TlsAcceptor>,
}

impl ServerBuilder {
    fn new() -> Self {
        ServerBuilder {
            binds: Vec::new(),
            tls: None,
            backlog: DEFAULT_BACKLOG,
            reuse_address: true,
            config: Config {
                nodelay: true,
                read_buffer_size: DEFAULT_READ_BUFFER_SIZE,
                write_queue_limit: DEFAULT_WRITE_QUEUE_LIMIT,
                write_high_watermark: DEFAULT_WRITE_HIGH_WATERMARK,
                write_low_watermark: DEFAULT_WRITE_LOW_WATERMARK,
                slow_consumer_timeout: None,
                timeouts: Timeouts::default(),
                at_limit: AtLimit::StopAccepting,
                shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
                close_timeout: DEFAULT_CLOSE_TIMEOUT,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
                max_concurrent_handshakes: DEFAULT_MAX_CONCURRENT_HANDSHAKES,
                max_connections_per_ip: None,
            },
            limiter: ConnectionLimiter::unlimited(),
            accepting: true,
            layout: UserDataLayout::new(),
        }
    }

    /// Adds a listener on `address` (port 0 picks a free port; read it back with
    /// [`Server::local_addrs`]). A name is resolved now and the first address it resolves to is
    /// used; call `bind` again for more listeners. Without any `bind` the server only makes
    /// outgoing connections.
    pub fn bind(mut self, address: impl ToSocketAddrs) -> Self {
        let address = resolve(address);
        self.binds.push(Bind { address, tls: None });
        self
    }

    /// Adds a TLS listener on `address` whose connections negotiate with `acceptor`, whatever
    /// [`tls`](ServerBuilder::tls) says. See [`bind`](ServerBuilder::bind) for the address.
    pub fn bind_tls(
        mut self,
        address: impl ToSocketAddrs,
        acceptor: native_tls::TlsAcceptor,
    ) -> Self {
        let address = resolve(address);
        self.binds.push(Bind {
            address,
            tls: Some(acceptor),
        });
        self
    }

    /// Makes every listener added with [`bind`](ServerBuilder::bind) (before or after this call)
    /// speak TLS with `acceptor`; see [`tls`](crate::tls) for the events and
    /// [`tls::acceptor_from_pem`](crate::tls::acceptor_from_pem) for building one. Default: plain
    /// TCP.
    pub fn tls(mut self, acceptor: native_tls::TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    /// How long a TLS handshake may take, from accept (or connect) to negotiated, before the
    /// connection is reset with [`ClosureReason::HandshakeTimedOut`](crate::ClosureReason::HandshakeTimedOut).
    /// Default: [`DEFAULT_HANDSHAKE_TIMEOUT`] (10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// At most `max` TLS handshakes of accepted connections in progress at once; a connection
    /// accepted while that many are running is reset at once with
    /// [`ClosureReason::HandshakeLimit`](crate::ClosureReason::HandshakeLimit), so stalled
    /// handshakes can never hold more than `max` slots of the connection limit. Outgoing
    /// connections are not counted. Default: [`DEFAULT_MAX_CONCURRENT_HANDSHAKES`] (512). Must be
    /// above zero.
    pub fn max_concurrent_handshakes(mut self, max: usize) -> Self {
        self.config.max_concurrent_handshakes = max;
        self
    }
}

/// Resolves a listen address to its first socket address.
fn resolve(address: impl ToSocketAddrs) -> Result<SocketAddr, Error> {
    match address.to_socket_addrs() {
        Ok(mut addresses) => addresses.next().ok_or_else(|| Error::Bind {
            address: "(name with no addresses)".into(),
            source: std::io::Error::from(std::io::ErrorKind::AddrNotAvailable),
        }),
        Err(source) => Err(Error::Bind {
            address: "(unresolvable name)".into(),
            source,
        }),
    }
}

/// Per-peer limits.
impl ServerBuilder {
    /// At most `max` live accepted connections from one peer IP address, across all of this
    /// server's listeners; an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) counts as the IPv4
    /// address. Outgoing connections are not counted. Default: no cap. Must be above zero.
    ///
    /// A connection over the cap is still accepted, so its client learns at once instead of
    /// waiting in the backlog: it gets [`on_socket_created`](Callbacks::on_socket_created), then
    /// is reset (RST) with no TLS handshake and no
    /// [`on_connection_established`](Callbacks::on_connection_established):
    /// [`on_connection_closure`](Callbacks::on_connection_closure) with
    /// [`ClosureReason::PerIpLimit`](crate::ClosureReason::PerIpLimit),
    /// [`on_connection_closed`](Callbacks::on_connection_closed),
    /// [`on_socket_released`](Callbacks::on_socket_released) (and
    /// [`on_secure_socket_released`](Callbacks::on_secure_socket_released) on a TLS listener).
    /// It is counted in [`Stats::refused_per_ip`] and holds a slot of the connection limit until
    /// those events are done. A connection counts against its address from its accept until just
    /// after its `on_socket_released` returns, whichever way it ends; see
    /// [`Server::connections_from_ip`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), switchboard::Error> {
    /// struct Nothing;
    /// impl switchboard::Callbacks for Nothing {}
    ///
    /// let server = switchboard::Server::builder()
    ///     .bind("127.0.0.1:0")
    ///     .max_connections_per_ip(16)
    ///     .start(Nothing)
    ///     .await?;
    /// assert_eq!(server.connections_from_ip([127, 0, 0, 1].into()), Some(0));
    /// server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn max_connections_per_ip(mut self, max: usize) -> Self {
        self.config.max_connections_per_ip = Some(max);
        self
    }
}

impl ServerBuilder {
    /// Listen backlog. Default: [`DEFAULT_BACKLOG`] (1024); the kernel caps it at `somaxconn`.
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }

    /// `SO_REUSEADDR` on the listeners, so a restarted server can bind while old connections sit
    /// in `TIME_WAIT`. Default: on.
    pub fn reuse_address(mut self, on: bool) -> Self {
        self.reuse_address = on;
        self
    }

    /// `TCP_NODELAY` on every connection (Nagle's algorithm off). Default: on, as request/response
    /// protocols want; [`Callbacks::on_socket_created`] can change it per socket.
    pub fn nodelay(mut self, on: bool) -> Self {
        self.config.nodelay = on;
        self
    }

    /// Largest buffer one read delivers. Default: [`DEFAULT_READ_BUFFER_SIZE`] (8 KiB). Must be
    /// above zero.
    pub fn read_buffer_size(mut self, bytes: usize) -> Self {
        self.config.read_buffer_size = bytes;
        self
    }

    /// Bytes a connection's write queue may hold: [`Connection::write`] is refused once the
    /// queue holds this much, and reads pause (so a peer that does not read our replies is held
    /// back by TCP flow control) until the queue drains below it. Default:
    /// [`DEFAULT_WRITE_QUEUE_LIMIT`] (64 KiB). Must be above zero.
    pub fn write_queue_limit(mut self, bytes: usize) -> Self {
        self.config.write_queue_limit = bytes;
        self
    }

    /// The write queue's watermarks: a queue that reaches `high` bytes is high
    /// ([`Callbacks::on_write_buffer_high`];
    /// [`Connection::writable`] waits) until it drains to `low`
    /// ([`Callbacks::on_write_buffer_low`]). Defaults:
    /// [`DEFAULT_WRITE_HIGH_WATERMARK`] (64 KiB) and [`DEFAULT_WRITE_LOW_WATERMARK`] (32 KiB).
    /// `low` must be below `high`. The hard bound stays the
    /// [write queue limit](ServerBuilder::write_queue_limit).
    pub fn write_watermarks(mut self, high: usize, low: usize) -> Self {
        self.config.write_high_watermark = high;
        self.config.write_low_watermark = low;
        self
    }

    /// What to do about a peer that stops reading: with `Some(time)`, a connection whose write
    /// queue stays high (above the high watermark, not yet drained to the low one) for `time` is
    /// reset with [`ClosureReason::SlowConsumer`](crate::ClosureReason::SlowConsumer); with
    /// `None` it waits for as long as the peer keeps the connection open. Either way the queue
    /// never grows past the [write queue limit](ServerBuilder::write_queue_limit), so a peer that
    /// never reads cannot grow server memory. Default: `None`.
    pub fn slow_consumer_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.slow_consumer_timeout = timeout;
        self
    }

    /// Every connection's [idle timeout](Timeouts::idle): no byte either way for this long ends
    /// it. Default: off. [`Connection::set_timeouts`](crate::Connection::set_timeouts) changes one
    /// connection's.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.timeouts.idle = timeout;
        self
    }

    /// Every connection's [read timeout](Timeouts::read): a requested read with no data for this
    /// long ends it. Default: off.
    pub fn read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.timeouts.read = timeout;
        self
    }

    /// Every connection's [half-closed timeout](Timeouts::half_closed): how long a connection
    /// may stay open after the peer's FIN. Default: off.
    pub fn half_closed_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.timeouts.half_closed = timeout;
        self
    }

    /// Every connection's [first-byte timeout](Timeouts::first_byte): a connection that sends
    /// nothing for this long after it was established (after the TLS handshake, for TLS) ends.
    /// With it, clients that connect and stay silent (slowloris) hold a connection slot for at
    /// most this long. Default: off.
    pub fn first_byte_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.timeouts.first_byte = timeout;
        self
    }

    /// At most `max` live connections (inbound and outbound) for this server, through a limiter
    /// of its own. Replaces an earlier [`limiter`](ServerBuilder::limiter). Default: unlimited.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.limiter = ConnectionLimiter::new(max);
        self
    }

    /// Counts this server's connections in `limiter`, which other servers and their outgoing
    /// connections may share. Replaces an earlier [`max_connections`](ServerBuilder::max_connections).
    pub fn limiter(mut self, limiter: ConnectionLimiter) -> Self {
        self.limiter = limiter;
        self
    }

    /// What to do with new connections when the limiter is full. Default:
    /// [`AtLimit::StopAccepting`].
    pub fn at_limit(mut self, policy: AtLimit) -> Self {
        self.config.at_limit = policy;
        self
    }

    /// Drain time: how long a shutdown waits for live connections to end by themselves before it
    /// resets the rest. Default: [`DEFAULT_SHUTDOWN_TIMEOUT`] (30 s).
    pub fn shutdown_timeout(mut self, drain: Duration) -> Self {
        self.config.shutdown_timeout = drain;
        self
    }

    /// How long a graceful close may take to send the queue, send FIN and see the peer's FIN
    /// before the connection is reset with [`ClosureReason::CloseTimedOut`](crate::ClosureReason::CloseTimedOut).
    /// Default: [`DEFAULT_CLOSE_TIMEOUT`] (5 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.config.close_timeout = timeout;
        self
    }

    /// How long an outgoing connect may take. Default: [`DEFAULT_CONNECT_TIMEOUT`] (10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Whether the listeners accept as soon as the server starts. Default: `true`; with `false`,
    /// call [`Server::start_accepting`] later (connects still work).
    pub fn accepting(mut self, on: bool) -> Self {
        self.accepting = on;
        self
    }

    /// Reserves a typed slot in every connection's [`UserData`](crate::UserData) (the C++
    /// framework's `RequestUserDataSlot`). Slots are requested before the server starts; the
    /// returned key is `Copy` and gives O(1) access.
    ///
    /// ```
    /// let mut builder = switchboard::Server::builder();
    /// let session = builder.request_user_data_slot::<String>();
    /// let builder = builder.bind("127.0.0.1:0");
    /// # let _ = (session, builder);
    /// ```
    pub fn request_user_data_slot<T: Send + 'static>(&mut self) -> Slot<T> {
        self.layout.request()
    }

    fn validate(&self) -> Result<(), Error> {
        let invalid = |setting: &'static str, reason: &str| {
            Err(Error::InvalidSetting {
                setting,
                reason: reason.into(),
            })
        };
        if self.config.read_buffer_size == 0 {
            return invalid("read_buffer_size", "must be above zero");
        }
        if self.config.max_concurrent_handshakes == 0 {
            return invalid("max_concurrent_handshakes", "must be above zero");
        }
        if self.config.write_low_watermark >= self.config.write_high_watermark {
            return invalid("write_watermarks", "low must be below high");
        }
        if self.config.max_connections_per_ip == Some(0) {
            return invalid("max_connections_per_ip", "must be above zero");
        }
        if self.config.write_queue_limit == 0 {
            return invalid("write_queue_limit", "must be above zero");
        }
        if self.backlog == 0 || self.backlog > i32::MAX as u32 {
            return invalid("backlog", "must be between 1 and 2^31 - 1");
        }
        Ok(())
    }

    fn listen(&self, address: SocketAddr) -> Result<TcpListener, Error> {
        let bind_error = |source| Error::Bind {
            address: address.to_string(),
            source,
        };
        let socket = Socket::new(
            Domain::for_address(address),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .map_err(bind_error)?;
        if address.is_ipv6() {
            // One listener per address family, as on every platform's default but Linux's.
            socket.set_only_v6(true).map_err(bind_error)?;
        }
        socket
            .set_reuse_address(self.reuse_address)
            .map_err(bind_error)?;
        socket.set_nonblocking(true).map_err(bind_error)?;
        socket.bind(&address.into()).map_err(bind_error)?;
        socket.listen(self.backlog as i32).map_err(bind_error)?;
        TcpListener::from_std(socket.into()).map_err(bind_error)
    }

    /// Validates the settings, binds the listeners and starts accepting (unless
    /// [`accepting(false)`](ServerBuilder::accepting)). Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] naming the setting, or [`Error::Bind`] for an address that could
    /// not be resolved or bound.
    pub async fn start(mut self, callbacks: impl Callbacks) -> Result<Server, Error> {
        self.validate()?;
        let binds = std::mem::take(&mut self.binds);
        let mut listeners = Vec::with_capacity(binds.len());
        let mut local_addrs = Vec::with_capacity(binds.len());
        for bind in binds {
            let address = bind.address?;
            let listener = self.listen(address)?;
            local_addrs.push(listener.local_addr().map_err(|source| Error::Bind {
                address: address.to_string(),
                source,
            })?);
            let tls = bind.tls.or_else(|| self.tls.clone()).map(Into::into);
            listeners.push(Listener { listener, tls });
        }
        let manager = Arc::new(Manager::new(
            Box::new(callbacks),
            self.config,
            self.limiter,
            self.layout,
            self.accepting,
        ));
        if !listeners.is_empty() {
            let task = tokio::spawn(accept_loop(manager.clone(), listeners));
            *manager
                .accept_task
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(task);
        }
        tracing::info!(addresses = ?local_addrs, "server started");
        Ok(Server {
            manager,
            local_addrs: local_addrs.into(),
        })
    }
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field(
                "binds",
                &self
                    .binds
                    .iter()
                    .map(|bind| (&bind.address, bind.tls.is_some()))
                    .collect::<Vec<_>>(),
            )
            .field("tls", &self.tls.is_some())
            .field("backlog", &self.backlog)
            .field("reuse_address", &self.reuse_address)
            .field("config", &self.config)
            .field("limiter", &self.limiter)
            .field("accepting", &self.accepting)
            .finish()
    }
}

/// A running server: its listeners, its connections and its callbacks. Cheap to clone; every
/// clone controls the same server, from any task.
///
/// Dropping the handles does not stop the server: call [`Server::shutdown`].
#[derive(Clone)]
pub struct Server {
    manager: Arc<Manager>,
    local_addrs: Arc<[SocketAddr]>,
}

impl Server {
    /// A builder with every setting at its default.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::new()
    }

    /// The bound address of each listener, in `bind` order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The bound address of the first listener, if there is one.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addrs.first().copied()
    }

    /// Resumes accepting after [`Server::stop_accepting`];
    /// [`on_start_accepting_connections`](Callbacks::on_start_accepting_connections) follows (unless the
    /// connection limit holds accepting off, in which case it follows when a slot frees).
    pub fn start_accepting(&self) {
        self.manager
            .control
            .send_modify(|control| control.accepting = true);
    }

    /// Stops accepting; the listeners stay bound, so new clients wait in the backlog.
    /// [`on_stop_accepting_connections`](Callbacks::on_stop_accepting_connections) follows.
    /// Live connections are not affected.
    pub fn stop_accepting(&self) {
        self.manager
            .control
            .send_modify(|control| control.accepting = false);
    }

    /// Resets every live connection (RST) and returns how many there were;
    /// [`on_all_connections_aborted`](Callbacks::on_all_connections_aborted) runs with that count
    /// before this returns. Each connection then ends with
    /// [`ClosureReason::AbortAll`](crate::ClosureReason::AbortAll) on its own task.
    pub async fn abort_all_connections(&self) -> usize {
        self.manager.abort_all_connections().await
    }

    /// Shuts the server down and waits until it is done; calling it again (or from several
    /// tasks) waits for the same shutdown and returns the same report.
    ///
    /// The order: [`on_shutdown_initiated`](Callbacks::on_shutdown_initiated) → accepting stops and
    /// the listeners close → each live connection gets
    /// [`on_shutdown_requested`](Callbacks::on_shutdown_requested) and the
    /// [drain time](ServerBuilder::shutdown_timeout) to end → those left are reset
    /// ([`on_all_connections_aborted`](Callbacks::on_all_connections_aborted)) → every connection's
    /// closing events, up to [`on_socket_released`](Callbacks::on_socket_released) →
    /// [`on_shutdown_complete`](Callbacks::on_shutdown_complete), after which no callback runs.
    ///
    /// # Cancel safety
    /// The shutdown runs on a task of its own: dropping this future stops the waiting, not the
    /// shutdown.
    pub async fn shutdown(&self) -> ShutdownReport {
        self.manager.shutdown().await
    }

    /// Whether a shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.manager.is_shutting_down()
    }

    /// Connects to `address` through this server's manager and limiter, returning a handle once
    /// connected; the connection then has the lifecycle of an accepted one, starting with
    /// [`on_connection_established`](Callbacks::on_connection_established) on its own task. The
    /// returned handle keeps the connection open until dropped.
    ///
    /// `argument` goes to [`on_pre_outgoing_connect`](Callbacks::on_pre_outgoing_connect). Like the
    /// C++ framework's throwing `Connect`, a failure is returned rather than reported through
    /// [`on_outgoing_connection_failed`](Callbacks::on_outgoing_connection_failed);
    /// [`on_socket_released`](Callbacks::on_socket_released) still runs for the user data.
    ///
    /// # Errors
    /// [`Error::Connect`], [`Error::ConnectTimedOut`], [`Error::ConnectionLimitReached`],
    /// [`Error::ShuttingDown`], or [`Error::CallbackPanic`] if a pre-connect callback panicked.
    ///
    /// # Cancel safety
    /// The attempt runs on a task of its own: dropping this future stops the waiting, not the
    /// attempt, whose events (up to the release) still run; a connection it establishes then
    /// closes by itself unless a callback keeps it.
    pub async fn connect(
        &self,
        address: SocketAddr,
        argument: impl Any + Send,
    ) -> Result<Connection, Error> {
        self.connect_with(address, None, ConnectArgument::new(argument))
            .await
    }

    /// [`connect`](Server::connect) for a TLS connection: once the TCP connect succeeds the
    /// connection is returned and negotiates on its own task, verifying the server's
    /// certificate as `tls` says; writes made meanwhile are sent once it is secure. A failed
    /// negotiation is not this call's error: it runs
    /// [`on_fatal_error`](Callbacks::on_fatal_error) (or
    /// [`on_remote_fatal_error`](Callbacks::on_remote_fatal_error)) and the closing events, as the
    /// C++ framework does.
    ///
    /// # Errors
    /// As for [`connect`](Server::connect).
    pub async fn connect_tls(
        &self,
        address: SocketAddr,
        tls: TlsConnect,
        argument: impl Any + Send,
    ) -> Result<Connection, Error> {
        self.connect_with(address, Some(tls), ConnectArgument::new(argument))
            .await
    }

    async fn connect_with(
        &self,
        address: SocketAddr,
        tls: Option<TlsConnect>,
        argument: ConnectArgument,
    ) -> Result<Connection, Error> {
        let live = self.manager.begin()?;
        let attempt = self
            .manager
            .clone()
            .connect(live, address, tls, argument, false);
        match tokio::spawn(attempt).await {
            Ok(result) => result,
            // Callbacks are guarded, so the task only fails when the runtime is shutting down.
            Err(_) => Err(Error::ShuttingDown),
        }
    }

    /// Starts a connect to `address` on a task of its own, like the C++ framework's
    /// `AsyncConnect`: success is [`on_connection_established`](Callbacks::on_connection_established),
    /// failure is [`on_outgoing_connection_failed`](Callbacks::on_outgoing_connection_failed), then
    /// [`on_socket_released`](Callbacks::on_socket_released). A shutdown waits for the attempt.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`] at once, with no callback, if a shutdown has begun.
    pub fn spawn_connect(
        &self,
        address: SocketAddr,
        argument: impl Any + Send,
    ) -> Result<(), Error> {
        self.spawn_connect_with(address, None, ConnectArgument::new(argument))
    }

    /// [`spawn_connect`](Server::spawn_connect) for a TLS connection, negotiated as
    /// [`connect_tls`](Server::connect_tls) describes.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`] at once, with no callback, if a shutdown has begun.
    pub fn spawn_connect_tls(
        &self,
        address: SocketAddr,
        tls: TlsConnect,
        argument: impl Any + Send,
    ) -> Result<(), Error> {
        self.spawn_connect_with(address, Some(tls), ConnectArgument::new(argument))
    }

    fn spawn_connect_with(
        &self,
        address: SocketAddr,
        tls: Option<TlsConnect>,
        argument: ConnectArgument,
    ) -> Result<(), Error> {
        let live = self.manager.begin()?;
        let manager = self.manager.clone();
        tokio::spawn(async move {
            // The outcome is reported through the callbacks.
            let _ = manager.connect(live, address, tls, argument, true).await;
        });
        Ok(())
    }

    /// A snapshot of the server's counters.
    pub fn stats(&self) -> Stats {
        self.manager.stats()
    }

    /// Live accepted connections from `ip` (an IPv4-mapped IPv6 address counts as the IPv4
    /// address), as counted against the
    /// [per-address cap](ServerBuilder::max_connections_per_ip); `None` if the server has no
    /// such cap, as nothing is counted then. A connection counts from its accept until just after
    /// its [`on_socket_released`](Callbacks::on_socket_released) returns; refused ones never
    /// count.
    pub fn connections_from_ip(&self, ip: IpAddr) -> Option<usize> {
        self.manager.per_ip.as_ref().map(|limit| limit.count(ip))
    }

    /// Live connections of this server (established and not yet released).
    pub fn active_connections(&self) -> usize {
        self.manager.active()
    }

    /// The limiter this server's connections count against.
    pub fn limiter(&self) -> &ConnectionLimiter {
        &self.manager.limiter
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addrs", &self.local_addrs)
            .field("active_connections", &self.active_connections())
            .field("shutting_down", &self.is_shutting_down())
            .finish()
    }
}
