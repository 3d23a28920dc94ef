//! The connection manager: registry, limiter use, abort-all, the shutdown sequence and outgoing
//! connects.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use socket2::SockRef;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::connection::{Shared, WriteLimits};
use crate::driver::{Driver, Secure};
use crate::limit::Permit;
use crate::per_ip::PerIpLimit;
use crate::stats::{ConnectionStats, Counters};
use crate::user_data::UserDataLayout;
use crate::{
    AtLimit, Callbacks, ClosureReason, ConnectArgument, Connection, ConnectionId,
    ConnectionLimiter, Direction, Error, Stats, Timeouts, TlsConnect, UserData,
};

/// Settings fixed when the server starts.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) nodelay: bool,
    pub(crate) read_buffer_size: usize,
    pub(crate) write_queue_limit: usize,
    pub(crate) write_high_watermark: usize,
    pub(crate) write_low_watermark: usize,
    pub(crate) slow_consumer_timeout: Option<Duration>,
    pub(crate) timeouts: Timeouts,
    pub(crate) at_limit: AtLimit,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_concurrent_handshakes: usize,
    /// Live accepted connections allowed per peer address; `None`: no cap.
    pub(crate) max_connections_per_ip: Option<usize>,
}

/// What the accept loop should be doing; changed by the server's handle and by shutdown.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Control {
    pub(crate) accepting: bool,
    pub(crate) shutdown: bool,
}

/// How a shutdown went, returned by [`Server::shutdown`](crate::Server::shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Connections live when the shutdown began that ended gracefully (FIN, every queued byte
    /// delivered) within the drain time.
    pub graceful: usize,
    /// Connections still open when the drain time ran out, reset with
    /// [`ClosureReason::ShutdownForced`].
    pub forced: usize,
    /// Connections live when the shutdown began that ended otherwise during the drain time: peer
    /// reset, error, close timeout, callback panic, abort.
    pub other: usize,
}

/// How the connections live at a shutdown's start ended, counted as they end.
#[derive(Default)]
struct ShutdownEnds {
    graceful: AtomicUsize,
    forced: AtomicUsize,
    other: AtomicUsize,
}

struct Registry {
    connections: HashMap<ConnectionId, Arc<Shared>>,
    /// Connections plus outgoing connects in progress: what a shutdown waits for.
    live: usize,
    /// A shutdown has begun: no new connection or connect is taken.
    closed: bool,
}

pub(crate) struct Manager {
    pub(crate) callbacks: Box<dyn Callbacks>,
    pub(crate) config: Config,
    pub(crate) limiter: ConnectionLimiter,
    pub(crate) layout: UserDataLayout,
    pub(crate) counters: Counters,
    pub(crate) control: watch::Sender<Control>,
    registry: Mutex<Registry>,
    /// Signalled whenever `live` drops to zero.
    drained: Notify,
    next_id: AtomicU64,
    shutdown_started: AtomicBool,
    shutdown_report: watch::Sender<Option<ShutdownReport>>,
    shutdown_ends: ShutdownEnds,
    /// Abort-alls (explicit or the shutdown's) whose `on_all_connections_aborted` has not returned
    /// yet; the connections they aborted hold their closing events until it is back to zero.
    announcing_aborts: watch::Sender<usize>,
    pub(crate) accept_task: Mutex<Option<JoinHandle<()>>>,
    /// Slots for TLS handshakes of accepted connections in progress.
    pub(crate) handshakes: Semaphore,
    /// Live accepted connections per peer address, when they are capped.
    pub(crate) per_ip: Option<Arc<PerIpLimit>>,
}

/// Keeps a connection or a connect attempt counted as live until dropped.
pub(crate) struct LiveGuard {
    manager: Arc<Manager>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut registry = self.manager.registry();
        registry.live -= 1;
        if registry.live == 0 {
            self.manager.drained.notify_waiters();
        }
    }
}

impl Manager {
    pub(crate) fn new(
        callbacks: Box<dyn Callbacks>,
        config: Config,
        limiter: ConnectionLimiter,
        layout: UserDataLayout,
        accepting: bool,
    ) -> Self {
        let handshakes =
            Semaphore::new(config.max_concurrent_handshakes.min(Semaphore::MAX_PERMITS));
        Manager {
            handshakes,
            per_ip: config.max_connections_per_ip.map(PerIpLimit::new),
            callbacks,
            config,
            limiter,
            layout,
            counters: Counters::default(),
            control: watch::Sender::new(Control {
                accepting,
                shutdown: false,
            }),
            registry: Mutex::new(Registry {
                connections: HashMap::new(),
                live: 0,
                closed: false,
            }),
            drained: Notify::new(),
            next_id: AtomicU64::new(1),
            shutdown_started: AtomicBool::new(false),
            shutdown_report: watch::Sender::new(None),
            shutdown_ends: ShutdownEnds::default(),
            announcing_aborts: watch::Sender::new(0),
            accept_task: Mutex::new(None),
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // The registry is only changed by short, non-panicking sections; recover from poison.
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a new connection or connect attempt as live, unless a shutdown has begun.
    pub(crate) fn begin(self: &Arc<Self>) -> Result<LiveGuard, Error> {
        let mut registry = self.registry();
        if registry.closed {
            return Err(Error::ShuttingDown);
        }
        registry.live += 1;
        Ok(LiveGuard {
            manager: self.clone(),
        })
    }

    /// Runs a callback, catching a panic and reporting it through `on_error`. `None` if it panicked.
    pub(crate) async fn guard<T>(
        &self,
        callback: &'static str,
        connection: Option<ConnectionId>,
        future: impl Future<Output = T>,
    ) -> Option<T> {
        match AssertUnwindSafe(future).catch_unwind().await {
            Ok(value) => Some(value),
            Err(payload) => {
                // Boxed: the panic path is rare, and its state would otherwise be part of every
                // callback's await, and so of every connection's task.
                Box::pin(self.report_panic(callback, connection, payload)).await;
                None
            }
        }
    }

    /// Runs a synchronous callback, catching a panic as [`Manager::guard`] does.
    pub(crate) async fn guard_sync<T>(
        &self,
        callback: &'static str,
        connection: Option<ConnectionId>,
        f: impl FnOnce() -> T,
    ) -> Option<T> {
        match std::panic::catch_unwind(AssertUnwindSafe(f)) {
            Ok(value) => Some(value),
            Err(payload) => {
                // Boxed: the panic path is rare, and its state would otherwise be part of every
                // callback's await, and so of every connection's task.
                Box::pin(self.report_panic(callback, connection, payload)).await;
                None
            }
        }
    }

    async fn report_panic(
        &self,
        callback: &'static str,
        connection: Option<ConnectionId>,
        payload: Box<dyn Any + Send>,
    ) {
        Counters::count(&self.counters.callback_panics);
        let error = Error::CallbackPanic {
            callback,
            connection,
            message: panic_message(payload.as_ref()),
        };
        tracing::error!(%error, "callback panicked");
        let reported = AssertUnwindSafe(self.callbacks.on_error(&error))
            .catch_unwind()
            .await;
        if reported.is_err() {
            Counters::count(&self.counters.callback_panics);
            tracing::error!(%error, "on_error panicked while reporting a panic");
        }
    }

    /// Registers a connected socket and starts its driver. Returns a counted handle when asked
    /// for one (it exists before the driver runs, so the lifetime rule cannot close the
    /// connection first). A `refuse`d connection is registered and runs only its closing events,
    /// with that reason. On failure the user data comes back for release.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn establish(
        self: &Arc<Self>,
        stream: TcpStream,
        peer_addr: SocketAddr,
        direction: Direction,
        user_data: UserData,
        secure: Option<Secure>,
        permit: Permit,
        live: LiveGuard,
        want_handle: bool,
        refuse: Option<ClosureReason>,
    ) -> Result<Option<Connection>, (UserData, Error)> {
        let local_addr = match stream.local_addr() {
            Ok(address) => address,
            Err(error) => return Err((user_data, Error::Io(error))),
        };
        let id = ConnectionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let shared = Arc::new(Shared::new(
            id,
            peer_addr,
            local_addr,
            direction,
            WriteLimits {
                limit: self.config.write_queue_limit,
                high: self.config.write_high_watermark,
                low: self.config.write_low_watermark,
            },
            self.config.timeouts,
            secure.is_some(),
            user_data,
        ));
        {
            let mut registry = self.registry();
            if registry.closed {
                drop(registry);
                return Err((shared.user_data.take_all(), Error::ShuttingDown));
            }
            registry.connections.insert(id, shared.clone());
        }
        Counters::count(match direction {
            Direction::Inbound => &self.counters.accepted,
            Direction::Outbound => &self.counters.connected,
        });
        let handle = want_handle.then(|| Connection::uncounted(shared.clone()).clone());
        let span = tracing::info_span!("connection", id = id.0, peer = %peer_addr, ?direction);
        let driver = Driver::new(self.clone(), shared, stream, secure, permit, live);
        tokio::spawn(driver.run(refuse).instrument(span));
        Ok(handle)
    }

    /// Removes an ended connection, folding its byte counts into the totals.
    pub(crate) fn deregister(&self, shared: &Shared) {
        let mut registry = self.registry();
        registry.connections.remove(&shared.id);
        self.counters.record_bytes(&shared.counters.snapshot());
    }

    /// Counts how a connection that was live when the shutdown began ended.
    pub(crate) fn record_shutdown_end(&self, reason: ClosureReason) {
        let ends = &self.shutdown_ends;
        let counter = match reason {
            ClosureReason::ShutdownForced => &ends.forced,
            reason if reason.is_graceful() => &ends.graceful,
            _ => &ends.other,
        };
        counter.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn stats(&self) -> Stats {
        let registry = self.registry();
        let mut live = ConnectionStats::default();
        for shared in registry.connections.values() {
            let connection = shared.counters.snapshot();
            live.bytes_read += connection.bytes_read;
            live.bytes_written += connection.bytes_written;
        }
        self.counters.snapshot(registry.connections.len(), live)
    }

    pub(crate) fn active(&self) -> usize {
        self.registry().connections.len()
    }

    /// Asks every live connection to abort with `reason`; returns how many were live.
    fn abort_live(&self, reason: ClosureReason) -> usize {
        let registry = self.registry();
        registry
            .connections
            .values()
            .filter(|shared| shared.request_abort(reason))
            .count()
    }

    pub(crate) async fn abort_all_connections(&self) -> usize {
        self.abort_and_announce(ClosureReason::AbortAll).await
    }

    /// Aborts every live connection with `reason` and runs `on_all_connections_aborted`; the
    /// aborted connections' closing events wait until it has returned (guarantee 7's order).
    async fn abort_and_announce(&self, reason: ClosureReason) -> usize {
        /// Ends the announcement even if the caller stops waiting or the callback panics.
        struct Announcing<'a>(&'a watch::Sender<usize>);
        impl Drop for Announcing<'_> {
            fn drop(&mut self) {
                self.0.send_modify(|count| *count -= 1);
            }
        }
        self.announcing_aborts.send_modify(|count| *count += 1);
        let _announcing = Announcing(&self.announcing_aborts);
        let count = self.abort_live(reason);
        self.guard(
            "on_all_connections_aborted",
            None,
            self.callbacks.on_all_connections_aborted(count),
        )
        .await;
        count
    }

    /// Waits until no `on_all_connections_aborted` is running: a connection aborted by an
    /// abort-all calls this before its closing events.
    pub(crate) async fn aborts_announced(&self) {
        let mut announcing = self.announcing_aborts.subscribe();
        // The sender lives in the manager, which the caller keeps alive.
        let _ = announcing.wait_for(|count| *count == 0).await;
    }

    async fn wait_drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.registry().live == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Starts the shutdown once (on a task of its own, so a caller that gives up waiting does not
    /// stop it) and waits for its report.
    pub(crate) async fn shutdown(self: &Arc<Self>) -> ShutdownReport {
        let mut report = self.shutdown_report.subscribe();
        if !self.shutdown_started.swap(true, Ordering::AcqRel) {
            let manager = self.clone();
            tokio::spawn(async move { manager.run_shutdown().await });
        }
        // The sender lives in the manager, which `self` keeps alive, so waiting cannot fail.
        let result = match report.wait_for(Option::is_some).await {
            Ok(report) => report.unwrap_or_default(),
            Err(_) => ShutdownReport::default(),
        };
        result
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown_started.load(Ordering::Acquire)
    }

    async fn run_shutdown(self: Arc<Self>) {
        self.guard(
            "on_shutdown_initiated",
            None,
            self.callbacks.on_shutdown_initiated(),
        )
        .await;
        self.control.send_modify(|control| control.shutdown = true);
        let accept_task = self
            .accept_task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(task) = accept_task {
            // The accept loop reports its own stop; a panic there was already reported.
            let _ = task.await;
        }
        let live: Vec<Arc<Shared>> = {
            let mut registry = self.registry();
            registry.closed = true;
            registry.connections.values().cloned().collect()
        };
        for shared in &live {
            shared.notify_shutdown();
        }
        drop(live);
        let drained = tokio::time::timeout(self.config.shutdown_timeout, self.wait_drained())
            .await
            .is_ok();
        if !drained {
            self.abort_and_announce(ClosureReason::ShutdownForced).await;
        }
        self.wait_drained().await;
        let ends = &self.shutdown_ends;
        let report = ShutdownReport {
            graceful: ends.graceful.load(Ordering::Acquire),
            forced: ends.forced.load(Ordering::Acquire),
            other: ends.other.load(Ordering::Acquire),
        };
        self.guard(
            "on_shutdown_complete",
            None,
            self.callbacks.on_shutdown_complete(report),
        )
        .await;
        tracing::info!(
            report.graceful,
            report.forced,
            report.other,
            "shutdown complete"
        );
        self.shutdown_report.send_replace(Some(report));
    }

    /// Waits until a shutdown begins.
    pub(crate) async fn shutdown_signal(&self) {
        let mut control = self.control.subscribe();
        let _ = control.wait_for(|control| control.shutdown).await;
    }

    /// An outgoing connect, from the pre-connect event to an established connection or a failure.
    /// With `report`, a failure goes to `on_outgoing_connection_failed`; either way the user data
    /// is released.
    pub(crate) async fn connect(
        self: Arc<Self>,
        live: LiveGuard,
        address: SocketAddr,
        tls: Option<TlsConnect>,
        argument: ConnectArgument,
        report: bool,
    ) -> Result<Connection, Error> {
        let user_data = UserData::new(&self.layout);
        let prepared = self
            .guard(
                "on_pre_outgoing_connect",
                None,
                self.callbacks
                    .on_pre_outgoing_connect(&user_data, &address, argument),
            )
            .await;
        let attempt = match prepared {
            Some(()) => self.open(address).await,
            None => Err(Error::CallbackPanic {
                callback: "on_pre_outgoing_connect",
                connection: None,
                message: "see on_error".into(),
            }),
        };
        let (user_data, error) = match attempt {
            Ok((stream, permit)) => {
                match self.establish(
                    stream,
                    address,
                    Direction::Outbound,
                    user_data,
                    tls.map(Secure::Connect),
                    permit,
                    live,
                    true,
                    None,
                ) {
                    Ok(handle) => {
                        return Ok(handle.expect("establish was asked for a handle"));
                    }
                    Err(failed) => failed,
                }
            }
            Err(error) => (user_data, error),
        };
        Counters::count(&self.counters.connect_failures);
        if report {
            self.guard(
                "on_outgoing_connection_failed",
                None,
                self.callbacks
                    .on_outgoing_connection_failed(&user_data, &address, &error),
            )
            .await;
        }
        self.guard(
            "on_socket_released",
            None,
            self.callbacks.on_socket_released(user_data),
        )
        .await;
        Err(error)
    }

    /// Takes a limiter slot, creates the socket (running `on_socket_created`) and connects it.
    async fn open(&self, address: SocketAddr) -> Result<(TcpStream, Permit), Error> {
        let permit = self
            .limiter
            .try_acquire()
            .ok_or(Error::ConnectionLimitReached {
                limit: self.limiter.capacity(),
            })?;
        let socket = if address.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_nodelay(self.config.nodelay)?;
        let created = self
            .guard_sync("on_socket_created", None, || {
                self.callbacks
                    .on_socket_created(SockRef::from(&socket), Direction::Outbound)
            })
            .await;
        if created.is_none() {
            return Err(Error::CallbackPanic {
                callback: "on_socket_created",
                connection: None,
                message: "see on_error".into(),
            });
        }
        let timeout = self.config.connect_timeout;
        let stream = tokio::select! {
            connected = tokio::time::timeout(timeout, socket.connect(address)) => match connected {
                Ok(Ok(stream)) => stream,
                Ok(Err(source)) => return Err(Error::Connect { address, source }),
                Err(_) => return Err(Error::ConnectTimedOut { address, timeout }),
            },
            _ = self.shutdown_signal() => return Err(Error::ShuttingDown),
        };
        Ok((stream, permit))
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
