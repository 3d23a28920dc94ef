//! The server's settings and their defaults; starting with them is in `start`.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use crate::connection::user_data::{Slot, UserDataLayout};
use crate::defaults::*;
use crate::rate::ReadRate;
use crate::server::limit::{ConnectionLimiter, LimitPolicy};
use crate::server::listen::Listener;
use crate::timeouts::Timeouts;
use crate::tls::TlsAcceptor;

use crate::server::Server;

// Named in the docs' links.
#[cfg(doc)]
use crate::server::callbacks::Callbacks;

mod listeners;
mod start;

/// Settings fixed when the server starts.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) nodelay: bool,
    pub(crate) read_buffer_size: usize,
    pub(crate) read_rate: Option<ReadRate>,
    pub(crate) write_queue_limit: usize,
    pub(crate) write_high_watermark: usize,
    pub(crate) write_low_watermark: usize,
    pub(crate) slow_consumer_timeout: Option<Duration>,
    pub(crate) timeouts: Timeouts,
    pub(crate) at_limit: LimitPolicy,
    pub(crate) shutdown_timeout: Duration,
    /// How long a shutdown keeps accepting before it closes the listeners.
    pub(crate) drain_window: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) close_discard_limit: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_concurrent_handshakes: usize,
    /// Handshake slots one source may hold; `None`: the cap's default share.
    pub(crate) max_handshakes_per_source: Option<usize>,
    /// The IPv6 prefix length whose addresses are one source.
    pub(crate) ipv6_source_prefix: u8,
    /// Written to clients refused at the connection limit, before FIN; `None`: they are reset.
    pub(crate) refusal_message: Option<bytes::Bytes>,
    /// Live accepted connections allowed per peer address; `None`: no cap.
    pub(crate) max_connections_per_ip: Option<usize>,
}

impl Config {
    /// The handshake slots one source may hold: as set, or the cap's default share.
    pub(crate) fn handshakes_per_source(&self) -> usize {
        self.max_handshakes_per_source
            .unwrap_or((self.max_concurrent_handshakes / DEFAULT_SOURCES_TO_FILL_HANDSHAKES).max(1))
    }
}

/// Configures and starts a [`Server`]. Every setting has a documented default.
///
/// [`start`](ServerBuilder::start) is the one way to start, whatever runs the connections: a
/// [`Callbacks`] implementation, or a [`codec::FrameHandler`](crate::codec::FrameHandler) in a
/// [`codec::Framing`](crate::codec::Framing) (both are [`IntoCallbacks`](crate::IntoCallbacks)).
/// The type parameter `S` is the kind of server `start` returns: [`Server`], listening on
/// sockets, unless `embedded()` (feature `testing`) made it a `testing::EmbeddedServer`,
/// whose connections run over memory.
///
/// ```
/// use std::time::Duration;
/// use switchboard::{LimitPolicy, Callbacks, Server};
///
/// struct Nothing;
/// impl Callbacks for Nothing {}
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), switchboard::Error> {
/// let server = Server::builder()
///     .bind("127.0.0.1:0")
///     .max_connections(10_000)
///     .at_limit(LimitPolicy::StopAccepting)
///     .shutdown_timeout(Duration::from_secs(5))
///     .start(Nothing)
///     .await?;
/// println!("listening on {}", server.local_addr().unwrap());
/// server.shutdown().await;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `start`"]
pub struct ServerBuilder<S = Server> {
    binds: Vec<Listener>,
    /// The acceptor for listeners added with `bind`.
    tls: Option<TlsAcceptor>,
    backlog: u32,
    reuse_address: bool,
    reuse_port: bool,
    config: Config,
    limiter: ConnectionLimiter,
    accepting: bool,
    layout: UserDataLayout,
    /// Labels added to every metric of this server.
    metrics_labels: Vec<(String, String)>,
    /// What `start` returns; `fn() -> S` so that the builder is `Send` and `Sync` whatever `S`.
    starts: PhantomData<fn() -> S>,
}

impl ServerBuilder {
    pub(crate) fn new() -> Self {
        ServerBuilder {
            binds: Vec::new(),
            tls: None,
            backlog: DEFAULT_BACKLOG,
            reuse_address: true,
            reuse_port: false,
            config: Config {
                nodelay: true,
                read_buffer_size: DEFAULT_READ_BUFFER_SIZE,
                read_rate: None,
                write_queue_limit: DEFAULT_WRITE_QUEUE_LIMIT,
                write_high_watermark: DEFAULT_WRITE_HIGH_WATERMARK,
                write_low_watermark: DEFAULT_WRITE_LOW_WATERMARK,
                slow_consumer_timeout: None,
                timeouts: Timeouts::default(),
                at_limit: LimitPolicy::StopAccepting,
                shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
                drain_window: Duration::ZERO,
                close_timeout: DEFAULT_CLOSE_TIMEOUT,
                close_discard_limit: DEFAULT_CLOSE_DISCARD_LIMIT,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
                max_concurrent_handshakes: DEFAULT_MAX_CONCURRENT_HANDSHAKES,
                max_handshakes_per_source: None,
                ipv6_source_prefix: DEFAULT_IPV6_SOURCE_PREFIX,
                max_connections_per_ip: None,
                refusal_message: None,
            },
            limiter: ConnectionLimiter::unlimited(),
            accepting: true,
            layout: UserDataLayout::new(),
            metrics_labels: Vec::new(),
            starts: PhantomData,
        }
    }
}

impl<S> ServerBuilder<S> {
    /// The same settings, for starting a server of another kind.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn into_kind<T>(self) -> ServerBuilder<T> {
        ServerBuilder {
            binds: self.binds,
            tls: self.tls,
            backlog: self.backlog,
            reuse_address: self.reuse_address,
            reuse_port: self.reuse_port,
            config: self.config,
            limiter: self.limiter,
            accepting: self.accepting,
            layout: self.layout,
            metrics_labels: self.metrics_labels,
            starts: PhantomData,
        }
    }
}

/// Metrics.
impl<S> ServerBuilder<S> {
    /// Adds `labels` to every metric this server exports, so that the servers of one process can
    /// be told apart (for example `[("server", "public")]`). Default: none; servers with the same
    /// labels (or none) add up in the same series.
    ///
    /// The server exports its metrics (listed in the [crate docs](crate#metrics)) through the
    /// [`metrics`](https://docs.rs/metrics/0.24) facade, and takes its handles from the recorder
    /// installed when [`start`](ServerBuilder::start) runs: install the recorder (for example
    /// `metrics-exporter-prometheus`'s) before starting the server. A server started with no
    /// recorder installed exports nothing, at no cost.
    ///
    /// Label names must be Prometheus label names (letters, digits and `_`, not starting with a
    /// digit or `__`), each given once, and neither `cause` nor `reason`, which the server's own
    /// labels use; [`start`](ServerBuilder::start) checks them.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), switchboard::Error> {
    /// struct Nothing;
    /// impl switchboard::Callbacks for Nothing {}
    ///
    /// let server = switchboard::Server::builder()
    ///     .bind("127.0.0.1:0")
    ///     .metrics_labels([("server", "public")])
    ///     .start(Nothing)
    ///     .await?;
    /// server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn metrics_labels<K, V>(mut self, labels: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.metrics_labels.extend(
            labels
                .into_iter()
                .map(|(key, value)| (key.into(), value.into())),
        );
        self
    }
}

impl<S> ServerBuilder<S> {
    /// Listen backlog. Default: 1024, Linux's `somaxconn` default since 5.4 and what nginx and Go
    /// ask for on Linux; the kernel caps it at `somaxconn`.
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

    /// `SO_REUSEPORT` on the listeners this builder binds, so that several sockets, in this
    /// process or others, can listen on one address and port; the kernel spreads new
    /// connections over them (Linux hashes each connection to one socket). Default: off. Unix
    /// only, where the platform has the option (not Solaris or illumos).
    ///
    /// It lets a new instance start listening beside the old one, but it does not make a restart
    /// lossless on its own: each socket has its own accept queue, and when the old instance
    /// closes its listener, the connections already queued on it (completed handshakes nobody
    /// accepted yet) are reset. A restart on one host should hand the listening socket itself
    /// to the new process instead (see [`Server::listeners`](crate::Server::listeners)), so
    /// that one queue outlives both processes.
    #[cfg(all(
        unix,
        not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
    ))]
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.reuse_port = on;
        self
    }

    /// `TCP_NODELAY` on every connection (Nagle's algorithm off). Default: on, as request/response
    /// protocols want; [`Callbacks::on_socket_created`] can change it per socket.
    pub fn nodelay(mut self, on: bool) -> Self {
        self.config.nodelay = on;
        self
    }

    /// Largest buffer one read delivers. Default: 8 KiB, tokio's and most echo servers' usual
    /// size. Must be above zero.
    ///
    /// Reads land in a chunk of memory kept per runtime thread (64 KiB, or twice this size if
    /// that is larger), and each is handed over split off it: a [`BytesMut`](crate::BytesMut) of
    /// exactly the bytes read, with no allocation and no copy of its own. An idle connection
    /// holds no read buffer. A chunk is reused once every buffer split off it was dropped, as
    /// an application that handles each read and lets it go does.
    ///
    /// **What a kept buffer costs:** every buffer handed out shares its chunk's memory, so one
    /// that the application keeps (or a [`Bytes`](crate::Bytes) frozen from it, or a part split
    /// off it) keeps its whole chunk allocated, up to 64 KiB (or twice this size), however few
    /// bytes it holds. An application that keeps reads for long (a history, a cache) and wants
    /// only their size held should copy them out (`Bytes::copy_from_slice(&data)`). Growing a
    /// read's buffer (`reserve`, `extend_from_slice`) moves its bytes to an allocation of their
    /// own, of the size asked for. The frame layer ([`codec`](crate::codec)) copies the start of
    /// an item that waits for more bytes, so a connection waiting in the middle of an item keeps
    /// only those bytes; the items it decodes are split off the reads, and keep their chunks
    /// while the application keeps them.
    pub fn read_buffer_size(mut self, bytes: usize) -> Self {
        self.config.read_buffer_size = bytes;
        self
    }

    /// How fast each connection is read ([`ReadRate`]: an average rate and a burst), so that a
    /// peer that floods slows only itself: while it is over its rate its data waits in the
    /// kernel, and TCP's flow control holds the sender back. Applies to every connection of the
    /// server, accepted or outgoing. Default: `None` (read as fast as the application asks).
    /// Both numbers must be above zero.
    ///
    /// ```
    /// use switchboard::{ReadRate, Server};
    ///
    /// // A chat line server: 4 KiB a second per client, 16 KiB at once.
    /// let builder = Server::builder().read_rate_limit(Some(ReadRate::new(4096, 16 * 1024)));
    /// # drop(builder);
    /// ```
    pub fn read_rate_limit(mut self, rate: Option<ReadRate>) -> Self {
        self.config.read_rate = rate;
        self
    }

    /// What a connection's write queue may hold: [`Connection::write`](crate::Connection::write)
    /// is refused once the queue holds this much, and reads pause (so a peer that does not read
    /// our replies is held back by TCP flow control) until the queue drains below it. Default:
    /// 64 KiB, Netty's default high watermark. Must be above zero.
    ///
    /// The queue counts each buffer as its length plus 64 bytes, what a queued buffer costs in
    /// memory besides its bytes, so the limit bounds memory whatever the sizes written: a full
    /// queue holds at most the limit and its last write, and its heap (with the queue's own
    /// bookkeeping) stays within twice the limit even for buffers of a few bytes. The frame
    /// layer's unflushed items count too.
    pub fn write_queue_limit(mut self, bytes: usize) -> Self {
        self.config.write_queue_limit = bytes;
        self
    }

    /// The write queue's watermarks, counted as the [limit](ServerBuilder::write_queue_limit) is:
    /// a queue that reaches `high` is high
    /// ([`Callbacks::on_write_buffer_high`];
    /// [`Connection::writable`](crate::Connection::writable) waits) until it drains to `low`
    /// ([`Callbacks::on_write_buffer_low`]). Defaults:
    /// 64 KiB and 32 KiB, Netty's.
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
    /// On an accepted TLS connection it also bounds the wait for the client's first byte of the
    /// handshake, from the handshake's start, where it is shorter than the
    /// [handshake timeout](ServerBuilder::handshake_timeout). With it, clients that connect and
    /// stay silent (slowloris) hold a connection slot, and a handshake slot, for at most this
    /// long. Default: off.
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
    /// [`LimitPolicy::StopAccepting`].
    pub fn at_limit(mut self, policy: LimitPolicy) -> Self {
        self.config.at_limit = policy;
        self
    }

    /// A last message for clients refused at the connection limit (with
    /// [`LimitPolicy::AcceptAndClose`], or accepted with [`LimitPolicy::StopAccepting`] in the instant
    /// another server took the last shared slot), e.g. `"server full\r\n"` or a protocol's own
    /// busy reply. Such a client gets the message and FIN instead of a reset. It never becomes a
    /// connection: no callback runs for it (only
    /// [`on_maximum_connections`](Callbacks::on_maximum_connections), on the first refusal after
    /// a connection was taken), it is counted in
    /// [`Stats::refused_at_limit`](crate::Stats::refused_at_limit), and it leaves the server's
    /// side in `TIME_WAIT` like any connection the server closes first. The message is written
    /// without waiting, so it must fit in a new socket's send buffer: at most
    /// [`MAX_REFUSAL_MESSAGE`] bytes. A client that had already sent data may see the message
    /// followed by a reset (the kernel resets a socket closed with unread data). Default: none,
    /// refused clients are reset.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), switchboard::Error> {
    /// # struct Nothing;
    /// # impl switchboard::Callbacks for Nothing {}
    /// use switchboard::{LimitPolicy, Server};
    /// let server = Server::builder()
    ///     .bind("127.0.0.1:0")
    ///     .max_connections(1_000)
    ///     .at_limit(LimitPolicy::AcceptAndClose)
    ///     .refusal_message("server full\r\n")
    ///     .start(Nothing)
    ///     .await?;
    /// # server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn refusal_message(mut self, message: impl Into<bytes::Bytes>) -> Self {
        self.config.refusal_message = Some(message.into());
        self
    }

    /// Drain time: how long a shutdown waits for live connections to end by themselves before it
    /// resets the rest. Default: 30 s, Kubernetes' default termination grace period.
    pub fn shutdown_timeout(mut self, drain: Duration) -> Self {
        self.config.shutdown_timeout = drain;
        self
    }

    /// The drain window: how long a shutdown goes on accepting, after
    /// [`on_shutdown_initiated`](crate::Callbacks::on_shutdown_initiated), before it closes the
    /// listeners and starts the [drain time](ServerBuilder::shutdown_timeout). For load balancers
    /// that do not retry (Kubernetes Services, most cloud balancers): they go on routing to a
    /// server for a few seconds after it is told to stop, and while the window is open those
    /// clients are accepted and served instead of refused. The readiness check,
    /// [`Server::is_shutting_down`], is `true` from the moment the shutdown begins, so a health
    /// endpoint reports the server as going for the whole window.
    ///
    /// During the window the server runs as before; when it ends, every live connection, those
    /// accepted in the window included, gets
    /// [`on_shutdown_requested`](crate::Callbacks::on_shutdown_requested) and the drain time, as
    /// [`Server::shutdown`] describes. A forced shutdown ([`Server::force_shutdown`], or a second
    /// stop signal to [`Server::shutdown_on_signal`]) ends the window at once.
    /// Default: zero, no window: the listeners close as soon as `on_shutdown_initiated` returns.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # struct App;
    /// # impl switchboard::Callbacks for App {}
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), switchboard::Error> {
    /// let server = switchboard::Server::builder()
    ///     .bind("127.0.0.1:0")
    ///     .drain_window(Duration::from_secs(10))
    ///     .shutdown_timeout(Duration::from_secs(5))
    ///     .start(App)
    ///     .await?;
    /// let address = server.local_addr().unwrap();
    /// let shutdown = tokio::spawn({
    ///     let server = server.clone();
    ///     async move { server.shutdown().await }
    /// });
    /// # tokio::task::yield_now().await;
    /// // Not ready any more, and still accepting for the rest of the window.
    /// assert!(server.is_shutting_down());
    /// let client = tokio::net::TcpStream::connect(address).await?;
    /// # drop(client);
    /// // (A test need not wait for the window: this ends it, and the drain, at once.)
    /// server.force_shutdown().await;
    /// # shutdown.await.unwrap();
    /// # Ok(()) }
    /// ```
    pub fn drain_window(mut self, window: Duration) -> Self {
        self.config.drain_window = window;
        self
    }

    /// How long a graceful close may take to send the queue, send FIN and see the peer's FIN.
    /// A close that could not send everything by then is reset with
    /// [`ClosureReason::CloseTimedOut`](crate::ClosureReason::CloseTimedOut), and so is one whose
    /// data or FIN the peer did not acknowledge. One whose data and FIN the peer acknowledged
    /// (Linux tells), and that only waits for the peer to close its own end, is closed and keeps
    /// the reason it closed with; the peer is counted in
    /// [`Stats::lingering_peers`](crate::Stats).
    /// Default: 5 s, nginx's `lingering_timeout`.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.config.close_timeout = timeout;
        self
    }

    /// How much of what the peer still sends a graceful close reads and drops (while it waits for
    /// the peer's FIN) before it resets the connection instead, with
    /// [`ClosureReason::DiscardLimit`](crate::ClosureReason::DiscardLimit): a client streaming into
    /// a connection the server has closed is cut off after this much, not after the close
    /// timeout's worth. Default: 64 KiB, a few round trips' worth of what a peer may have had in
    /// flight when the close began (the write queue limit's default).
    pub fn close_discard_limit(mut self, bytes: usize) -> Self {
        self.config.close_discard_limit = bytes;
        self
    }

    /// How long an outgoing connect may take. Default: 10 s, long enough for a retransmitted SYN
    /// (1 s, then 3 s), short enough that a dead host is reported promptly.
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
}

impl<S> fmt::Debug for ServerBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field(
                "binds",
                &self
                    .binds
                    .iter()
                    .map(|bind| (&bind.on, bind.tls.is_some(), bind.proxy.is_some()))
                    .collect::<Vec<_>>(),
            )
            .field("tls", &self.tls.is_some())
            .field("backlog", &self.backlog)
            .field("reuse_address", &self.reuse_address)
            .field("reuse_port", &self.reuse_port)
            .field("config", &self.config)
            .field("limiter", &self.limiter)
            .field("accepting", &self.accepting)
            .field("metrics_labels", &self.metrics_labels)
            .finish()
    }
}
