//! The handle that controls a running server, and the server's engine beneath it: the builder,
//! the shared state, the accept loop, outgoing connects, the shutdown and the connections' tasks.

pub(crate) mod accept;
pub(crate) mod builder;
pub(crate) mod callbacks;
pub(crate) mod connect;
pub(crate) mod connect_builder;
pub(crate) mod driver;
pub(crate) mod handshake_slots;
pub(crate) mod into_callbacks;
pub(crate) mod invoke;
pub(crate) mod limit;
pub(crate) mod listen;
pub(crate) mod manager;
pub(crate) mod open;
pub(crate) mod per_ip;
pub(crate) mod registry;
pub(crate) mod reserve;
pub(crate) mod shutdown;
pub(crate) mod source;

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};

use socket2::SockRef;
use tokio::net::TcpListener;

use crate::closure::ClosureReason;
use crate::connection::weak::WeakConnection;
use crate::connection::Connection;
use crate::error::Error;
use crate::ids::ConnectionId;
use crate::server::builder::ServerBuilder;
use crate::server::connect_builder::ConnectBuilder;
use crate::server::limit::ConnectionLimiter;
use crate::server::manager::Manager;
use crate::shutdown_report::ShutdownReport;
use crate::stats::Stats;
use crate::tls::{AcceptorCell, TlsAcceptor};

/// A running server: its listeners, its connections and its callbacks. Cheap to clone; every
/// clone controls the same server, from any task.
///
/// Dropping the handles does not stop the server: call [`Server::shutdown`].
#[derive(Clone)]
#[must_use = "a server runs until `shutdown`; dropping every handle only loses control of it"]
pub struct Server {
    manager: Arc<Manager>,
    local_addrs: Arc<[SocketAddr]>,
    /// The accept loop's listeners, in `local_addrs` order; gone once it has ended.
    listeners: Arc<[Weak<TcpListener>]>,
    /// Each listener's TLS acceptor, in `local_addrs` order (`None` for a plain one).
    acceptors: Arc<[Option<Arc<AcceptorCell>>]>,
}

/// A [`Server`] handle that does not keep the server's state alive: what callbacks keep of their
/// own server. From [`Server::downgrade`].
#[derive(Clone)]
pub struct WeakServer {
    manager: Weak<Manager>,
    local_addrs: Arc<[SocketAddr]>,
    listeners: Arc<[Weak<TcpListener>]>,
    acceptors: Arc<[Option<Arc<AcceptorCell>>]>,
}

impl WeakServer {
    /// The server, unless every [`Server`] handle is gone (its state is then freed).
    pub fn upgrade(&self) -> Option<Server> {
        Some(Server {
            manager: self.manager.upgrade()?,
            local_addrs: self.local_addrs.clone(),
            listeners: self.listeners.clone(),
            acceptors: self.acceptors.clone(),
        })
    }
}

impl fmt::Debug for WeakServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakServer")
            .field("local_addrs", &self.local_addrs)
            .finish_non_exhaustive()
    }
}

/// The signals that tell the process to stop, registered (from then on they no longer end the
/// process by themselves).
#[cfg(unix)]
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl StopSignals {
    fn register() -> io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves at the next SIGINT or SIGTERM.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// The signals that tell the process to stop, registered (from then on they no longer end the
/// process by themselves).
#[cfg(windows)]
struct StopSignals {
    interrupt: tokio::signal::windows::CtrlC,
    brk: tokio::signal::windows::CtrlBreak,
}

#[cfg(windows)]
impl StopSignals {
    fn register() -> io::Result<Self> {
        use tokio::signal::windows::{ctrl_break, ctrl_c};
        Ok(StopSignals {
            interrupt: ctrl_c()?,
            brk: ctrl_break()?,
        })
    }

    /// Resolves at the next Ctrl-C or Ctrl-Break.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.brk.recv() => {}
        }
    }
}

impl Server {
    /// A builder with every setting at its default.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::new()
    }

    /// The handle of a server just made, after its
    /// [`on_server_started`](crate::Callbacks::on_server_started) ran, before anything else of it.
    pub(crate) async fn started(
        manager: Arc<Manager>,
        local_addrs: Arc<[SocketAddr]>,
        listeners: Arc<[Weak<TcpListener>]>,
        acceptors: Arc<[Option<Arc<AcceptorCell>>]>,
    ) -> Self {
        let server = Server {
            manager,
            local_addrs,
            listeners,
            acceptors,
        };
        let invoker = server.manager.invoker();
        invoker
            .call(
                "on_server_started",
                None,
                invoker.callbacks().on_server_started(&server),
            )
            .await;
        server
    }

    /// The server's shared state.
    #[cfg(feature = "testing")]
    pub(crate) fn manager(&self) -> &Arc<Manager> {
        &self.manager
    }

    /// The bound address of each listener, in `bind` order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The bound address of the first listener, if there is one.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addrs.first().copied()
    }

    /// Duplicates of every listening socket (`dup` on unix, `WSADuplicateSocket` on Windows), in
    /// [`local_addrs`](Server::local_addrs) order, for handing them to another process or
    /// server. A duplicate is a second descriptor of the same socket: the same accept queue,
    /// open until the last descriptor closes. This server keeps accepting from its own (call it
    /// at any time before a shutdown closes the listeners); the duplicates are non-blocking, as
    /// the originals, whose mode they share, so do not make them blocking while this server
    /// runs. On unix they are close-on-exec: a child process inherits one only where it is
    /// placed on purpose (e.g. `dup2` onto descriptor 3 for socket activation, which clears the
    /// flag).
    ///
    /// This is how a restart on one host loses no connection, as nginx's binary upgrade and
    /// Cloudflare's `shellflip` do it: the old process starts the new one with the listening
    /// socket inherited (in the [socket activation](ServerBuilder::adopt_listener) convention,
    /// `LISTEN_FDS`), and keeps accepting until the new one says it is ready; only then does it
    /// stop accepting and [shut down](Server::shutdown), draining its own connections. The
    /// listening socket is never closed, so nothing queued in its backlog is lost: clients that
    /// connect in between wait there for whichever process accepts first. (Binding a fresh socket
    /// with [`reuse_port`](ServerBuilder::reuse_port) instead resets what was queued on the old
    /// one when it closes.) The `echo_server` example does this on `SIGUSR2`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), switchboard::Error> {
    /// struct Nothing;
    /// impl switchboard::Callbacks for Nothing {}
    ///
    /// let old = switchboard::Server::builder().bind("127.0.0.1:0").start(Nothing).await?;
    /// let sockets = old.listeners()?;
    /// // (In a real hand-off the new process inherits `sockets` and starts from them.)
    /// let mut builder = switchboard::Server::builder();
    /// for socket in sockets {
    ///     builder = builder.adopt_listener(socket);
    /// }
    /// let new = builder.start(Nothing).await?;
    /// assert_eq!(new.local_addrs(), old.local_addrs());
    /// old.shutdown().await; // the socket stays open: `new` still holds it
    /// # new.shutdown().await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The duplication's error (e.g. out of descriptors), or [`io::ErrorKind::NotConnected`] once
    /// the listeners are closed: a shutdown has stopped the accept loop.
    pub fn listeners(&self) -> io::Result<Vec<std::net::TcpListener>> {
        self.listeners
            .iter()
            .map(|listener| {
                let listener = listener.upgrade().ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotConnected,
                        "the listeners are closed: the server has shut down",
                    )
                })?;
                let duplicate = SockRef::from(&*listener).try_clone()?;
                Ok(duplicate.into())
            })
            .collect()
    }

    /// Resumes accepting after [`Server::stop_accepting`];
    /// [`on_start_accepting_connections`](crate::Callbacks::on_start_accepting_connections) follows (unless the
    /// connection limit holds accepting off, in which case it follows when a slot frees).
    pub fn start_accepting(&self) {
        self.manager.set_accepting(true);
    }

    /// Stops accepting; the listeners stay bound, so new clients wait in the backlog.
    /// [`on_stop_accepting_connections`](crate::Callbacks::on_stop_accepting_connections) follows.
    /// Live connections are not affected.
    pub fn stop_accepting(&self) {
        self.manager.set_accepting(false);
    }

    /// Resets every live connection (RST) and returns how many it aborted;
    /// [`on_all_connections_aborted`](crate::Callbacks::on_all_connections_aborted) runs with that count
    /// before this returns. Each connection then ends with
    /// [`ClosureReason::AbortAll`](crate::ClosureReason::AbortAll) on its own task, and only
    /// those are counted: a connection that had already decided how it ends (its closing events
    /// under way) keeps its own reason and is not counted.
    ///
    /// # Cancel safety
    /// The connections are aborted before the first await; dropping the future before it
    /// returns may skip or cut short `on_all_connections_aborted`, and the aborted connections'
    /// closing events then run at once.
    pub async fn abort_all_connections(&self) -> usize {
        let invoker = self.manager.invoker();
        self.manager
            .registry()
            .abort_all(ClosureReason::AbortAll, invoker)
            .await
    }

    /// Shuts the server down and waits until it is done; calling it again (or from several
    /// tasks) waits for the same shutdown and returns the same report.
    ///
    /// The order: [`on_shutdown_initiated`](crate::Callbacks::on_shutdown_initiated) → the
    /// [drain window](ServerBuilder::drain_window), if one is set, during which the server goes on
    /// accepting and serving as before → accepting stops and
    /// the listeners close (duplicates from [`listeners`](Server::listeners) stay open) → each live connection gets
    /// [`on_shutdown_requested`](crate::Callbacks::on_shutdown_requested) and the
    /// [drain time](ServerBuilder::shutdown_timeout) to end → those left are reset
    /// ([`on_all_connections_aborted`](crate::Callbacks::on_all_connections_aborted)) → every connection's
    /// closing events, up to [`on_socket_released`](crate::Callbacks::on_socket_released) →
    /// [`on_shutdown_complete`](crate::Callbacks::on_shutdown_complete), after which no callback runs.
    ///
    /// [`force_shutdown`](Server::force_shutdown) cuts the window and the drain time short.
    ///
    /// # Cancel safety
    /// The shutdown runs on a task of its own: dropping this future stops the waiting, not the
    /// shutdown.
    pub async fn shutdown(&self) -> ShutdownReport {
        let shutdown = self.manager.shutdown();
        if shutdown.start() {
            let manager = self.manager.clone();
            tokio::spawn(async move { crate::server::shutdown::run(&manager).await });
        }
        shutdown.complete().await
    }

    /// Shuts down at once, as a second Ctrl-C does: begins the [shutdown](Server::shutdown) if
    /// none has begun, or cuts short the one under way, and waits for it. The
    /// [drain window](ServerBuilder::drain_window) and the drain time end now: the listeners
    /// close and every live connection is reset as when the drain time runs out
    /// ([`on_all_connections_aborted`](crate::Callbacks::on_all_connections_aborted), each ending
    /// with [`ClosureReason::ShutdownForced`] and counted in the report's `forced`). Connections
    /// not yet told of the shutdown (it was forced before its drain began, as in the window) are
    /// reset without [`on_shutdown_requested`](crate::Callbacks::on_shutdown_requested). Every
    /// connection's closing events still run, then
    /// [`on_shutdown_complete`](crate::Callbacks::on_shutdown_complete), in the order
    /// [`shutdown`](Server::shutdown) gives; a connection that already ended keeps its own
    /// reason, and if none is live the shutdown completes without a reset. A callback still
    /// running (such as `on_shutdown_initiated`) is waited for, not cut short.
    ///
    /// # Cancel safety
    /// As for [`shutdown`](Server::shutdown): dropping this future stops the waiting; the
    /// shutdown goes on, forced.
    pub async fn force_shutdown(&self) -> ShutdownReport {
        self.manager.shutdown().force();
        self.shutdown().await
    }

    /// Registers for the process being told to stop (SIGINT or SIGTERM on unix; Ctrl-C or
    /// Ctrl-Break on Windows), at once, and returns a future that waits for it, or for a shutdown
    /// begun elsewhere, then [shuts down](Server::shutdown) and gives the report: the `select!`
    /// every server's `main` would otherwise write. From this call on those signals no longer
    /// end the process by themselves, so nothing is lost to a signal that comes early.
    ///
    /// One more such signal while the shutdown runs [forces](Server::force_shutdown) it, as
    /// most servers do: the drain window and the drain time end at once, the connections left
    /// are reset (counted as forced), and the future still returns once every closing event
    /// has run.
    ///
    /// # Errors
    /// A signal handler could not be registered.
    ///
    /// ```no_run
    /// # struct App;
    /// # impl switchboard::Callbacks for App {}
    /// #[tokio::main]
    /// async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     let server = switchboard::Server::builder().bind("0.0.0.0:5050").start(App).await?;
    ///     let stopped = server.shutdown_on_signal()?;
    ///     println!("listening on {}", server.local_addr().unwrap());
    ///     let report = stopped.await;
    ///     println!("{} connections ended by themselves, {} were reset", report.graceful, report.forced);
    ///     Ok(())
    /// }
    /// ```
    pub fn shutdown_on_signal(
        &self,
    ) -> io::Result<impl std::future::Future<Output = ShutdownReport> + Send + 'static> {
        let mut stop = StopSignals::register()?;
        let server = self.clone();
        Ok(async move {
            let mut phase = server.manager.shutdown().watch();
            tokio::select! {
                () = stop.recv() => {}
                // The sender lives as long as the manager this handle holds.
                _ = phase.wait_for(|phase| *phase != crate::server::shutdown::Phase::Running) => {}
            }
            let shutdown = server.shutdown();
            tokio::pin!(shutdown);
            tokio::select! {
                report = &mut shutdown => report,
                () = stop.recv() => {
                    tracing::warn!("stop signal during the shutdown: forcing it");
                    server.force_shutdown().await
                }
            }
        })
    }

    /// A handle that does not keep the server's state alive, for keeping in its own callbacks
    /// (see [`Callbacks::on_server_started`](crate::Callbacks::on_server_started)).
    pub fn downgrade(&self) -> WeakServer {
        WeakServer {
            manager: Arc::downgrade(&self.manager),
            local_addrs: self.local_addrs.clone(),
            listeners: self.listeners.clone(),
            acceptors: self.acceptors.clone(),
        }
    }

    /// Whether a shutdown has begun: the readiness check for a health endpoint (ready while
    /// `false`). It turns `true` the moment [`shutdown`](Server::shutdown) is called (or a
    /// stop signal reaches [`shutdown_on_signal`](Server::shutdown_on_signal)), before
    /// [`on_shutdown_initiated`](crate::Callbacks::on_shutdown_initiated) runs, and stays `true`
    /// through the [drain window](ServerBuilder::drain_window), while the listeners still accept,
    /// so a balancer that polls it stops sending clients here while those it still sends are
    /// served.
    pub fn is_shutting_down(&self) -> bool {
        self.manager.shutdown().is_started()
    }

    /// An outgoing connection to `address`, through this server's manager and limiter: set its
    /// [`tls`](ConnectBuilder::tls) and [`argument`](ConnectBuilder::argument), then `.await` it
    /// for a [`Connection`] handle, or end it with [`client`](ConnectBuilder::client) for an
    /// awaitable [`Client`](crate::Client) or [`spawn`](ConnectBuilder::spawn) for a connect
    /// whose outcome goes to the callbacks. See [`ConnectBuilder`].
    ///
    /// ```no_run
    /// # async fn example(server: switchboard::Server) -> Result<(), switchboard::Error> {
    /// let connection = server.connect("127.0.0.1:6379".parse().unwrap()).await?;
    /// let _ = connection.write("PING\r\n");
    /// # Ok(()) }
    /// ```
    pub fn connect(&self, address: SocketAddr) -> ConnectBuilder {
        ConnectBuilder::new(self.manager.clone(), address)
    }

    /// Replaces the TLS acceptor (certificate, key, settings) of every TLS listener, while the
    /// server runs: for a renewed certificate without a restart. Handshakes of connections
    /// accepted from now on use `acceptor`; a connection accepted before keeps the acceptor it
    /// was accepted with, during its handshake and after. Each listener switches at once, so a
    /// new connection negotiates with either the old acceptor or the new one, never with a mix.
    /// Plain listeners are left alone. For listeners with acceptors of their own
    /// ([`bind_tls`](ServerBuilder::bind_tls)), replace one at a time with
    /// [`set_tls_acceptor_at`](Server::set_tls_acceptor_at).
    ///
    /// ```
    /// # #[cfg(not(windows))]
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), switchboard::Error> {
    /// # struct App;
    /// # impl switchboard::Callbacks for App {}
    /// # let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/certs");
    /// # let read = |name: &str| std::fs::read(format!("{dir}/{name}"));
    /// let acceptor = switchboard::tls::acceptor_from_pem(&read("server.pem")?, &read("server.key")?)?;
    /// let server = switchboard::Server::builder()
    ///     .bind("127.0.0.1:0")
    ///     .tls(acceptor)
    ///     .start(App)
    ///     .await?;
    /// // Later, when the certificate has been renewed (on SIGHUP, say):
    /// let renewed = switchboard::tls::acceptor_from_pem(&read("other.pem")?, &read("other.key")?)?;
    /// server.set_tls_acceptor(renewed)?;
    /// # server.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(windows)] fn main() {}
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] if the server has no TLS listener (nothing was replaced).
    pub fn set_tls_acceptor(&self, acceptor: impl Into<TlsAcceptor>) -> Result<(), Error> {
        let acceptor = acceptor.into();
        let mut replaced = false;
        for cell in self.acceptors.iter().flatten() {
            cell.replace(acceptor.clone());
            replaced = true;
        }
        if replaced {
            tracing::info!("TLS acceptor replaced");
            Ok(())
        } else {
            Err(Error::InvalidSetting {
                setting: "set_tls_acceptor",
                reason: "the server has no TLS listener".into(),
            })
        }
    }

    /// [`set_tls_acceptor`](Server::set_tls_acceptor) for the one TLS listener bound to
    /// `address`, as [`local_addrs`](Server::local_addrs) gives it.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] if no TLS listener of this server has that address.
    pub fn set_tls_acceptor_at(
        &self,
        address: SocketAddr,
        acceptor: impl Into<TlsAcceptor>,
    ) -> Result<(), Error> {
        let cell = self
            .local_addrs
            .iter()
            .zip(self.acceptors.iter())
            .find_map(|(local, cell)| cell.as_ref().filter(|_| *local == address));
        match cell {
            Some(cell) => {
                cell.replace(acceptor.into());
                tracing::info!(%address, "TLS acceptor replaced");
                Ok(())
            }
            None => Err(Error::InvalidSetting {
                setting: "set_tls_acceptor_at",
                reason: format!("no TLS listener on {address}"),
            }),
        }
    }

    /// A snapshot of the server's counters.
    pub fn stats(&self) -> Stats {
        self.manager.stats()
    }

    /// Live accepted connections from `ip`'s source (an IPv4-mapped IPv6 address counts as the
    /// IPv4 address; an IPv6 address as its whole
    /// [prefix](ServerBuilder::ipv6_source_prefix), a /64 by default), as counted against the
    /// [per-address cap](ServerBuilder::max_connections_per_ip); `None` if the server has no
    /// such cap, as nothing is counted then. A connection counts from its accept until just after
    /// its [`on_socket_released`](crate::Callbacks::on_socket_released) returns; refused ones never
    /// count.
    pub fn connections_from_ip(&self, ip: IpAddr) -> Option<usize> {
        self.manager.per_ip().map(|limit| limit.count(ip))
    }

    /// Live connections of this server (established and not yet released).
    pub fn active_connections(&self) -> usize {
        self.manager.registry().active()
    }

    /// A counted handle to live connection `id`, from any task; `None` if there is none by that
    /// number, or it is not established yet, or it is closing. Like any [`Connection`] clone it
    /// keeps the connection open while held (and never revives one that the lifetime rule is
    /// closing: see [`WeakConnection::upgrade`]), so use it and drop it; to remember a
    /// connection, keep its [`downgrade`](Connection::downgrade).
    ///
    /// ```
    /// # async fn example(server: &switchboard::Server, id: switchboard::ConnectionId) {
    /// if let Some(connection) = server.connection(id) {
    ///     let _ = connection.write("a message from the operator\n");
    /// } // dropped: the connection's own rules decide when it closes
    /// # }
    /// ```
    #[must_use = "the handle keeps the connection open only while it is held"]
    pub fn connection(&self, id: ConnectionId) -> Option<Connection> {
        let shared = self.manager.registry().find(id)?;
        shared
            .mailbox
            .try_upgrade()
            .then(|| Connection::counted(shared))
    }

    /// Weak handles to every open connection now (established and not closing), in order of
    /// their ids: a snapshot, which keeps none of them open. Connections established after the
    /// call are not in it; those that close after it are still listed, and their
    /// [`upgrade`](WeakConnection::upgrade) returns `None`.
    ///
    /// ```
    /// # fn example(server: &switchboard::Server) {
    /// for weak in server.connections() {
    ///     if let Some(connection) = weak.upgrade() {
    ///         println!("{} from {}: {:?}", connection.id(), weak.peer_addr(), connection.stats());
    ///     }
    /// }
    /// # }
    /// ```
    pub fn connections(&self) -> Vec<WeakConnection> {
        let mut connections = self.manager.registry().open_connections();
        connections.sort_unstable_by_key(WeakConnection::id);
        connections
    }

    /// The limiter this server's connections count against.
    pub fn limiter(&self) -> &ConnectionLimiter {
        self.manager.limiter()
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
