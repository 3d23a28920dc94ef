//! The callback trait: one method per event of a connection's life and of the manager's.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use socket2::SockRef;

use crate::closure::ClosureReason;
use crate::connection::user_data::{ConnectArgument, UserData};
use crate::connection::Connection;
use crate::error::Error;
use crate::ids::{ConnectionId, Direction};
use crate::server::Server;
use crate::shutdown_report::ShutdownReport;
use crate::timeouts::IdleAction;
use crate::tls::TlsInfo;

mod shared;

/// The events of a server, one method each, after the C++ framework's
/// `IStreamSocketServerCallback`. Every method has a default, so an implementation overrides only
/// what it needs.
///
/// # Where and in what order callbacks run
/// A connection's events run on that connection's own task, strictly one at a time, in this order:
///
/// ```text
/// on_socket_created → on_connection_established
///   → on_read_completed / on_write_completed / error callbacks (as the application asks)
///   → at most one of on_connection_client_close (FIN) or on_connection_reset (RST)
///   → on_connection_closure(reason) → on_connection_closed → on_socket_released   (last)
/// ```
///
/// A TLS connection (see [`tls`](crate::tls)) negotiates between the first two steps and has one
/// more event at the end:
///
/// ```text
/// on_socket_created → handshake → on_negotiation_complete → on_secure_connection_established
///   → on_connection_established → … → on_connection_closure → on_connection_closed
///   → on_socket_released → on_secure_socket_released   (last)
/// ```
///
/// A TLS handshake that fails runs [`on_fatal_error`](Callbacks::on_fatal_error) (our side
/// detected it) or [`on_remote_fatal_error`](Callbacks::on_remote_fatal_error) (the peer sent an
/// alert), then the closing events; one that times out, is refused at the handshake cap or gives
/// its slot up there (it had sent nothing), is aborted, or that the peer resets or closes goes
/// straight to the closing events. Neither gets `on_connection_established`.
///
/// An outgoing connection first runs [`on_pre_outgoing_connect`](Callbacks::on_pre_outgoing_connect);
/// if its connect fails, [`on_outgoing_connection_failed`](Callbacks::on_outgoing_connection_failed)
/// (for [`ConnectBuilder::spawn`](crate::ConnectBuilder::spawn)) and then
/// [`on_socket_released`](Callbacks::on_socket_released) are its last events.
///
/// Manager events (accepting, limits, abort-all, shutdown, errors) run on the manager's tasks or on
/// the task that called the [`Server`](crate::Server) method that caused them. Callbacks of
/// different connections run concurrently, so an implementation is `Send + Sync` and shares its state
/// through atomics or locks.
///
/// A callback that panics is caught: the panic is reported through
/// [`on_error`](Callbacks::on_error) and, if it belonged to a connection, that connection is reset
/// with [`ClosureReason::CallbackPanic`] and still gets its closing events. A callback that never
/// returns stalls its connection (and a shutdown waiting for it), so long work belongs on tasks of
/// its own, holding a [`Connection`] clone.
///
/// # Example
/// ```no_run
/// use std::net::SocketAddr;
/// use switchboard::{async_trait, BytesMut, Callbacks, ClosureReason, Connection};
///
/// struct Echo;
///
/// #[async_trait]
/// impl Callbacks for Echo {
///     async fn on_connection_established(&self, connection: &Connection, _peer: &SocketAddr) {
///         connection.read();
///     }
///
///     async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
///         if connection.write(data.freeze()).is_ok() {
///             connection.read();
///         }
///     }
///
///     async fn on_connection_closure(&self, connection: &Connection, reason: ClosureReason) {
///         println!("connection {} ended: {reason}", connection.id());
///     }
/// }
/// ```
// A method added here must also be passed on by the frame layer (src/codec/adapter.rs), by
// `Arc<C>`'s impl (callbacks/shared.rs) and by `testing::Recorded`, or they swallow it.
#[async_trait]
pub trait Callbacks: Send + Sync + 'static {
    /// The server has started: its listeners are bound, and this runs before anything else of
    /// it (before [`on_start_accepting_connections`](Callbacks::on_start_accepting_connections)
    /// and before any connection), once, inside [`ServerBuilder::start`](crate::ServerBuilder::start).
    /// (Not in the C++ interface.) It is how callbacks reach their server, to connect out, read
    /// its stats or start its shutdown: keep a [`WeakServer`](crate::WeakServer)
    /// ([`Server::downgrade`]), not a `Server`, since a `Server` kept in its own callbacks is a
    /// cycle that is never freed.
    ///
    /// Default: does nothing.
    ///
    /// ```
    /// use std::sync::OnceLock;
    /// use switchboard::{async_trait, Callbacks, Connection, Server, WeakServer};
    ///
    /// #[derive(Default)]
    /// struct App {
    ///     server: OnceLock<WeakServer>,
    /// }
    ///
    /// #[async_trait]
    /// impl Callbacks for App {
    ///     async fn on_server_started(&self, server: &Server) {
    ///         let _ = self.server.set(server.downgrade());
    ///     }
    ///
    ///     async fn on_read_completed(&self, connection: &Connection, data: switchboard::BytesMut) {
    ///         if &data[..] == b"shutdown\n" {
    ///             if let Some(server) = self.server.get().and_then(WeakServer::upgrade) {
    ///                 // On a task of its own: a callback must not wait for the shutdown it starts.
    ///                 tokio::spawn(async move { server.shutdown().await });
    ///             }
    ///         }
    ///         connection.read();
    ///     }
    /// }
    /// ```
    async fn on_server_started(&self, server: &Server) {
        let _ = server;
    }

    /// The listeners started accepting: at start-up, after an explicit
    /// [`Server::start_accepting`](crate::Server::start_accepting), and when a slot frees after the
    /// limit stopped them. Always alternates with
    /// [`on_stop_accepting_connections`](Callbacks::on_stop_accepting_connections), starting with
    /// this one. Not called for a server without listeners.
    ///
    /// Default: does nothing.
    async fn on_start_accepting_connections(&self) {}

    /// The listeners stopped accepting: the connection limit was reached (with
    /// [`LimitPolicy::StopAccepting`](crate::LimitPolicy::StopAccepting)), an explicit
    /// [`Server::stop_accepting`](crate::Server::stop_accepting), or shutdown.
    ///
    /// Default: does nothing.
    async fn on_stop_accepting_connections(&self) {}

    /// An `accept` call failed. Per-connection failures (the client gave up) are retried at once;
    /// resource shortages (`EMFILE`, `ENFILE`, `ENOBUFS`…) and unknown errors back off from 5 ms,
    /// doubling to 1 s, until an accept succeeds. Reports are rate-limited to 10 a second;
    /// [`Stats::accept_errors`](crate::Stats::accept_errors) counts every failure.
    ///
    /// Default: logs the error with `tracing` at warn level.
    async fn on_accept_error(&self, error: &io::Error) {
        tracing::warn!(%error, "accept failed");
    }

    /// A socket was created: accepted, or about to connect out. The server's own options
    /// ([`nodelay`](crate::ServerBuilder::nodelay)) are already set, so options set here win.
    /// Runs synchronously, before anything else happens on the socket.
    ///
    /// Default: does nothing.
    fn on_socket_created(&self, socket: SockRef<'_>, direction: Direction) {
        let _ = (socket, direction);
    }

    /// An outgoing connect is about to start. `user_data` is the new connection's, empty;
    /// `argument` is what the call site gave [`ConnectBuilder::argument`](crate::ConnectBuilder::argument)
    /// (none unless it did), usually moved into a user data slot
    /// here so that later callbacks, [`on_outgoing_connection_failed`](Callbacks::on_outgoing_connection_failed)
    /// and [`on_socket_released`](Callbacks::on_socket_released) can see it.
    /// Followed by [`on_socket_created`](Callbacks::on_socket_created).
    ///
    /// Default: drops the argument.
    async fn on_pre_outgoing_connect(
        &self,
        user_data: &UserData,
        address: &SocketAddr,
        argument: ConnectArgument,
    ) {
        let _ = (user_data, address, argument);
    }

    /// The first event of every connection (after the socket's creation). `address` is the peer's.
    /// Issue the first [`read`](Connection::read) or [`write`](Connection::write) here, or keep a
    /// clone of the handle: otherwise the connection closes by itself right after this returns.
    ///
    /// Default: does nothing, so the connection closes with [`ClosureReason::Unreferenced`].
    async fn on_connection_established(&self, connection: &Connection, address: &SocketAddr) {
        let _ = (connection, address);
    }

    /// An outgoing connect made with [`ConnectBuilder::spawn`](crate::ConnectBuilder::spawn) failed:
    /// refused, unreachable, timed out, the limiter was full, or the server is shutting down.
    /// [`on_socket_released`](Callbacks::on_socket_released) follows with the same user data.
    /// (A connect that is awaited returns the error instead.)
    ///
    /// Default: does nothing.
    async fn on_outgoing_connection_failed(
        &self,
        user_data: &UserData,
        address: &SocketAddr,
        error: &Error,
    ) {
        let _ = (user_data, address, error);
    }

    /// Data arrived for a requested read. Request the next read here (or later) to go on reading.
    ///
    /// `data` holds exactly the bytes read. It shares its memory with the reads around it: kept
    /// for long, it keeps up to 64 KiB allocated (see
    /// [`read_buffer_size`](crate::ServerBuilder::read_buffer_size)); copy out what you keep.
    ///
    /// Default: drops the data.
    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        let _ = (connection, data);
    }

    /// A read failed with something other than a reset. Return `true` to keep the connection (the
    /// read request is used up; request another), `false` to end it: then
    /// [`on_read_completion_error`](Callbacks::on_read_completion_error) follows and the connection
    /// is reset with [`ClosureReason::ReadError`].
    ///
    /// Default: `false`.
    async fn on_read_error_may_not_be_fatal(
        &self,
        connection: &Connection,
        error: &io::Error,
    ) -> bool {
        let _ = (connection, error);
        false
    }

    /// A read failed and the connection is ending; its closure follows.
    ///
    /// Default: does nothing.
    async fn on_read_completion_error(&self, connection: &Connection, error: &io::Error) {
        let _ = (connection, error);
    }

    /// A buffer passed to [`Connection::write`] was handed to the kernel in full. That is all it
    /// means: the peer may not have received it yet.
    ///
    /// Default: drops the buffer. A server whose callbacks keep this default learns so at its
    /// first call, and from then on drops the buffers it writes without calling it: this event
    /// comes once per buffer written, and most applications do not override it. So does a
    /// server of an `Arc` of such callbacks. Callbacks that pass the event on to others (a
    /// wrapper around another type's callbacks) are called for every buffer, whatever the others
    /// do with it.
    ///
    /// (The default is written out as `#[async_trait]` expands an `async fn`, so that it can
    /// return a future that needs no allocation. Implement it with `async fn` as any other.)
    fn on_write_completed<'life0, 'life1, 'async_trait>(
        &'life0 self,
        connection: &'life1 Connection,
        data: Bytes,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        let _ = (connection, data);
        // Lets the driver learn that these callbacks keep this default, and drop the buffers it
        // writes from then on without the call.
        crate::server::invoke::default_write_completed_ran::<Self>();
        Box::pin(Done)
    }

    /// A write failed with something other than a reset. Return `true` to keep the connection (the
    /// unsent data is dropped), `false` to end it: then
    /// [`on_write_completion_error`](Callbacks::on_write_completion_error) follows and the
    /// connection is reset with [`ClosureReason::WriteError`].
    ///
    /// Default: `false`.
    async fn on_write_error_may_not_be_fatal(
        &self,
        connection: &Connection,
        error: &io::Error,
    ) -> bool {
        let _ = (connection, error);
        false
    }

    /// A write failed and the connection is ending; its closure follows.
    ///
    /// Default: does nothing.
    async fn on_write_completion_error(&self, connection: &Connection, error: &io::Error) {
        let _ = (connection, error);
    }

    /// The connection limit was reached. With [`LimitPolicy::StopAccepting`](crate::LimitPolicy::StopAccepting)
    /// this precedes [`on_stop_accepting_connections`](Callbacks::on_stop_accepting_connections);
    /// with [`LimitPolicy::AcceptAndClose`](crate::LimitPolicy::AcceptAndClose) it fires on the first
    /// refusal after a connection was taken.
    ///
    /// Default: does nothing.
    async fn on_maximum_connections(&self) {}

    /// [`Server::abort_all_connections`](crate::Server::abort_all_connections), or the end of a
    /// shutdown's drain time, reset `count` live connections. Their closing events follow on their
    /// own tasks once this returns, so it must not wait for those connections to end.
    ///
    /// Default: does nothing.
    async fn on_all_connections_aborted(&self, count: usize) {
        let _ = count;
    }

    /// The first event of a shutdown. Accepting stops next, or at the end of the
    /// [drain window](crate::ServerBuilder::drain_window) if one is set.
    ///
    /// Default: does nothing.
    async fn on_shutdown_initiated(&self) {}

    /// A shutdown has started while this connection is live; it has the
    /// [drain time](crate::ServerBuilder::shutdown_timeout) to end before it is reset with
    /// [`ClosureReason::ShutdownForced`]. Runs on the connection's task. (Not in the C++ interface,
    /// where connections are told through the framework; it is how a switchboard application
    /// finishes its work in hand.) With a [drain window](crate::ServerBuilder::drain_window) it
    /// comes when the window ends and the listeners close, to every live connection, those
    /// accepted in the window included; a [forced](crate::Server::force_shutdown) shutdown
    /// resets the connections not yet told without it.
    ///
    /// Default: [`Connection::close`], which sends what is queued and closes gracefully. It also
    /// stops reading: whatever the peer has sent that the application has not read yet (a
    /// request in flight, still in the socket's buffer) is discarded, and the peer gets FIN
    /// without an answer. That is right for a protocol whose peer retries on a closed
    /// connection, and loses requests otherwise.
    ///
    /// A drain that loses nothing (guarantee 14 in the repository's `docs/guarantees.md`) keeps
    /// reading and answering instead, and closes only where nothing the peer sent is left
    /// unanswered: for a request/response protocol, after the reply to the request in hand
    /// (and, if the protocol can say so, with a "closing" mark in it, as HTTP's
    /// `Connection: close`); for a stream like an echo, when the peer closes. The
    /// [drain time](crate::ServerBuilder::shutdown_timeout) bounds it: connections still open
    /// then are reset. An echo server that serves each connection until its client closes:
    ///
    /// ```
    /// # use switchboard::{async_trait, BytesMut, Callbacks, Connection};
    /// # use std::net::SocketAddr;
    /// struct Echo;
    ///
    /// #[async_trait]
    /// impl Callbacks for Echo {
    ///     async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
    ///         connection.read();
    ///     }
    ///
    ///     async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
    ///         if connection.write(data.freeze()).is_ok() {
    ///             connection.read();
    ///         }
    ///     }
    ///
    ///     async fn on_shutdown_requested(&self, _connection: &Connection) {
    ///         // Not `close()`: the read in progress stays requested, so every byte the client
    ///         // sends is echoed until it closes (or the drain time runs out).
    ///     }
    /// }
    /// ```
    async fn on_shutdown_requested(&self, connection: &Connection) {
        connection.close();
    }

    /// The last event of a shutdown: every connection has been released; no callback follows.
    /// `report` says how many connections ended by themselves during the drain time and how many
    /// were reset; [`Server::shutdown`](crate::Server::shutdown) returns the same report.
    ///
    /// Default: does nothing.
    async fn on_shutdown_complete(&self, report: ShutdownReport) {
        let _ = report;
    }

    /// The peer sent FIN: no more data will arrive, but writes are still allowed and queued writes
    /// are delivered. The pending read is used up by this; the connection then closes by itself
    /// when nothing else keeps it open.
    ///
    /// Default: does nothing.
    ///
    /// (Written out as `#[async_trait]` expands an `async fn`, so that the default needs no
    /// allocation, as [`on_write_completed`](Callbacks::on_write_completed)'s; implement it with
    /// `async fn` as any other.)
    fn on_connection_client_close<'life0, 'life1, 'async_trait>(
        &'life0 self,
        connection: &'life1 Connection,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        let _ = connection;
        Box::pin(Done)
    }

    /// The peer reset the connection (RST), seen by a read or a write. Queued writes are lost; the
    /// closure with [`ClosureReason::PeerReset`] follows.
    ///
    /// Default: does nothing.
    async fn on_connection_reset(&self, connection: &Connection, error: &io::Error) {
        let _ = (connection, error);
    }

    /// The connection's [idle timeout](crate::Timeouts::idle) passed: no byte was read or
    /// written for that long. The answer decides how it ends, with
    /// [`ClosureReason::IdleTimedOut`] either way: [`IdleAction::Reset`] resets it (what is
    /// queued is dropped); [`IdleAction::Close`] closes it gracefully, so that a last message
    /// written here reaches the peer before FIN. Runs on the connection's task; the connection
    /// still takes writes while it runs. (Not in the C++ interface.)
    ///
    /// Default: [`IdleAction::Reset`].
    ///
    /// ```
    /// use switchboard::{async_trait, Callbacks, Connection, IdleAction};
    ///
    /// struct Lines;
    ///
    /// #[async_trait]
    /// impl Callbacks for Lines {
    ///     async fn on_idle_timeout(&self, connection: &Connection) -> IdleAction {
    ///         let _ = connection.write("ERR idle\n");
    ///         IdleAction::Close
    ///     }
    /// }
    /// ```
    async fn on_idle_timeout(&self, connection: &Connection) -> IdleAction {
        let _ = connection;
        IdleAction::Reset
    }

    /// The connection has ended, for `reason`: exactly once per established connection. The socket
    /// is closed; [`on_connection_closed`](Callbacks::on_connection_closed) follows.
    ///
    /// Default: does nothing.
    ///
    /// (Written out as `#[async_trait]` expands an `async fn`, so that the default needs no
    /// allocation, as [`on_write_completed`](Callbacks::on_write_completed)'s; implement it with
    /// `async fn` as any other.)
    fn on_connection_closure<'life0, 'life1, 'async_trait>(
        &'life0 self,
        connection: &'life1 Connection,
        reason: ClosureReason,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        let _ = (connection, reason);
        Box::pin(Done)
    }

    /// Right after [`on_connection_closure`](Callbacks::on_connection_closure), without a reason
    /// (kept for parity with the C++ interface). [`on_socket_released`](Callbacks::on_socket_released)
    /// follows.
    ///
    /// Default: does nothing.
    ///
    /// (Written out as `#[async_trait]` expands an `async fn`, so that the default needs no
    /// allocation, as [`on_write_completed`](Callbacks::on_write_completed)'s; implement it with
    /// `async fn` as any other.)
    fn on_connection_closed<'life0, 'life1, 'async_trait>(
        &'life0 self,
        connection: &'life1 Connection,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        let _ = connection;
        Box::pin(Done)
    }

    /// The very last event of a connection (or of a failed outgoing connect), with its user data by
    /// value for final clean-up; for a TLS connection only
    /// [`on_secure_socket_released`](Callbacks::on_secure_socket_released) comes after it. The
    /// connection's limiter slot is freed once both have returned.
    ///
    /// Default: drops the user data.
    ///
    /// (Written out as `#[async_trait]` expands an `async fn`, so that the default needs no
    /// allocation, as [`on_write_completed`](Callbacks::on_write_completed)'s; implement it with
    /// `async fn` as any other.)
    fn on_socket_released<'life0, 'async_trait>(
        &'life0 self,
        user_data: UserData,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let _ = user_data;
        Box::pin(Done)
    }

    /// The connection's write queue reached the
    /// [high watermark](crate::ServerBuilder::write_watermarks): the peer reads more slowly than
    /// the application writes. A producer should pause until
    /// [`on_write_buffer_low`](Callbacks::on_write_buffer_low) (or wait in
    /// [`Connection::writable`] on a task of its own). Announced on the connection's task before
    /// the queue is written out, so a burst that crosses the watermark is always announced, and
    /// always followed by `on_write_buffer_low` once the queue drains (unless the connection ends
    /// first).
    ///
    /// Default: does nothing.
    async fn on_write_buffer_high(&self, connection: &Connection) {
        let _ = connection;
    }

    /// A write queue that was high drained to the low watermark: writing may resume.
    ///
    /// Default: does nothing.
    async fn on_write_buffer_low(&self, connection: &Connection) {
        let _ = connection;
    }

    /// TCP urgent data (`MSG_OOB`) arrived for a [`Connection::read_oob`] request: `data` holds
    /// the one urgent byte. Linux and Android only; plain TCP only.
    ///
    /// Default: does nothing.
    async fn on_read_oob_completed(&self, connection: &Connection, data: BytesMut) {
        let _ = (connection, data);
    }

    /// A TLS handshake finished: `info` says which side we were, the ALPN protocol agreed and the
    /// peer's certificate. Comes after [`on_socket_created`](Callbacks::on_socket_created) and
    /// before [`on_secure_connection_established`](Callbacks::on_secure_connection_established).
    /// The C++ interface has one overload per side; [`TlsInfo::side`] tells them apart here.
    ///
    /// Default: does nothing.
    ///
    /// (Written out as `#[async_trait]` expands an `async fn`, so that the default needs no
    /// allocation, as [`on_write_completed`](Callbacks::on_write_completed)'s; implement it with
    /// `async fn` as any other.)
    fn on_negotiation_complete<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        connection: &'life1 Connection,
        info: &'life2 TlsInfo,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        let _ = (connection, info);
        Box::pin(Done)
    }

    /// A TLS connection is secure and about to be established: comes after
    /// [`on_negotiation_complete`](Callbacks::on_negotiation_complete) and right before
    /// [`on_connection_established`](Callbacks::on_connection_established), for set-up that only
    /// secure connections need. `address` is the peer's.
    ///
    /// Default: does nothing.
    ///
    /// (Written out as `#[async_trait]` expands an `async fn`, so that the default needs no
    /// allocation, as [`on_write_completed`](Callbacks::on_write_completed)'s; implement it with
    /// `async fn` as any other.)
    fn on_secure_connection_established<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        connection: &'life1 Connection,
        address: &'life2 SocketAddr,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        let _ = (connection, address);
        Box::pin(Done)
    }

    /// Our side of a TLS connection failed: the handshake could not be negotiated (an untrusted
    /// or mismatched certificate, no common protocol version, plain text or garbage where TLS
    /// records belong) or a record did not decrypt. `error` is [`Error::Tls`]. The connection then
    /// ends with [`ClosureReason::TlsError`]: closure, closed and the release events follow.
    ///
    /// Default: logs the error with `tracing` at debug level (peers that fail handshakes are
    /// common on the internet and not the server's fault).
    async fn on_fatal_error(&self, connection: &Connection, error: &Error) {
        tracing::debug!(id = %connection.id(), %error, "TLS failure");
    }

    /// The peer ended the TLS session with a fatal alert (for example, it did not trust our
    /// certificate). `error` is [`Error::Tls`] naming the alert. The connection then ends with
    /// [`ClosureReason::TlsAlert`]: closure, closed and the release events follow.
    ///
    /// Default: logs the error with `tracing` at debug level.
    async fn on_remote_fatal_error(&self, connection: &Connection, error: &Error) {
        tracing::debug!(id = %connection.id(), %error, "TLS alert from the peer");
    }

    /// The last event of a TLS connection, right after
    /// [`on_socket_released`](Callbacks::on_socket_released), for clean-up that only secure
    /// connections need. The user data was handed to `on_socket_released`; `id` says which
    /// connection this was.
    ///
    /// Default: does nothing.
    ///
    /// (Written out as `#[async_trait]` expands an `async fn`, so that the default needs no
    /// allocation, as [`on_write_completed`](Callbacks::on_write_completed)'s; implement it with
    /// `async fn` as any other.)
    fn on_secure_socket_released<'life0, 'async_trait>(
        &'life0 self,
        id: ConnectionId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let _ = id;
        Box::pin(Done)
    }

    /// An error tied to no connection, including a panic caught in any callback
    /// ([`Error::CallbackPanic`]).
    ///
    /// Default: logs the error with `tracing` at error level.
    async fn on_error(&self, error: &Error) {
        tracing::error!(%error, "switchboard error");
    }
}

/// A future that is ready at once and holds nothing, so boxing it allocates nothing (a `Box` of a
/// zero-sized value is a dangling, never-freed pointer): the default of a callback that comes
/// once per message.
struct Done;

impl Future for Done {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}
