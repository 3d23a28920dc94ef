//! What every handle of a running server shares: the connection context, the registry, the
//! limiter, the accepting switch and the shutdown phase; and the one place a socket becomes a
//! connection.

use std::any::TypeId;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::connection::lifecycle::{LifecycleConfig, WriteLimits};
use crate::connection::mailbox::Mailbox;
use crate::connection::user_data::{UserData, UserDataLayout};
use crate::connection::{Connection, Shared, SocketAddresses};
use crate::error::Error;
use crate::ids::{ConnectionId, Direction};
use crate::server::builder::Config;
use crate::server::callbacks::Callbacks;
use crate::server::driver::transport::Transport;
use crate::server::driver::{Context, Driver, Setup};
use crate::server::handshake_slots::HandshakeSlots;
use crate::server::invoke::Invoker;
use crate::server::limit::{ConnectionLimiter, Permit};
use crate::server::per_ip::PerIpLimit;
use crate::server::registry::{Live, Registry};
use crate::server::shutdown::Shutdown;
use crate::stats::{ConnectionCounters, Count, Counters, Stats};

mod admission;

pub(crate) use admission::Admitted;

/// A connection's two ends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Addresses {
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
}

/// The accept loop's task and the task that runs its callbacks, in order.
#[derive(Debug)]
pub(crate) struct AcceptTasks {
    pub(crate) accept: JoinHandle<()>,
    pub(crate) events: JoinHandle<()>,
}

#[derive(Debug)]
pub(crate) struct Manager {
    context: Arc<Context>,
    config: Config,
    registry: Arc<Registry>,
    counters: Arc<Counters>,
    limiter: ConnectionLimiter,
    layout: UserDataLayout,
    /// Whether the listeners should accept (the application's start/stop).
    accepting: watch::Sender<bool>,
    shutdown: Shutdown,
    accept_tasks: Mutex<Option<AcceptTasks>>,
    /// Live accepted connections per peer address, when they are capped.
    per_ip: Option<Arc<PerIpLimit>>,
}

impl Config {
    /// What the drivers of a server with these settings need of it.
    pub(crate) fn context(&self, invoker: Invoker, counters: &Arc<Counters>) -> Context {
        Context {
            invoker,
            counters: counters.clone(),
            read_buffer_size: self.read_buffer_size,
            read_rate: self.read_rate,
            handshake_timeout: self.handshake_timeout,
            handshake_slots: HandshakeSlots::new(
                self.max_concurrent_handshakes,
                self.handshakes_per_source(),
                self.ipv6_source_prefix,
            ),
            lifecycle: Arc::new(LifecycleConfig {
                limits: WriteLimits {
                    limit: self.write_queue_limit,
                    high: self.write_high_watermark,
                    low: self.write_low_watermark,
                },
                timeouts: self.timeouts,
                close_timeout: self.close_timeout,
                close_discard_limit: self.close_discard_limit,
                slow_consumer_timeout: self.slow_consumer_timeout,
            }),
        }
    }
}

impl Manager {
    /// A server's shared state, with its callbacks (and their type, if they are the
    /// application's own), before anything runs.
    pub(crate) fn new(
        config: Config,
        (callbacks, callbacks_type): (Box<dyn Callbacks>, Option<TypeId>),
        counters: Arc<Counters>,
        limiter: ConnectionLimiter,
        layout: UserDataLayout,
        accepting: bool,
    ) -> Self {
        let context = config.context(
            Invoker::new(callbacks, callbacks_type, counters.clone()),
            &counters,
        );
        Manager {
            context: Arc::new(context),
            registry: Arc::new(Registry::new(counters.clone())),
            counters,
            per_ip: config
                .max_connections_per_ip
                .map(|max| PerIpLimit::new(max, config.ipv6_source_prefix)),
            config,
            limiter,
            layout,
            accepting: watch::Sender::new(accepting),
            shutdown: Shutdown::new(),
            accept_tasks: Mutex::new(None),
        }
    }

    /// What the server's connection tasks share.
    pub(crate) fn context(&self) -> &Arc<Context> {
        &self.context
    }

    /// The application's callbacks, with their panics caught.
    pub(crate) fn invoker(&self) -> &Invoker {
        &self.context.invoker
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The live connections.
    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub(crate) fn limiter(&self) -> &ConnectionLimiter {
        &self.limiter
    }

    pub(crate) fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Counts an event of the server's in its stats and metrics.
    pub(crate) fn count(&self, count: Count) {
        self.counters.count(count);
    }

    /// Counts `n` events of one kind.
    pub(crate) fn count_many(&self, count: Count, n: u64) {
        self.counters.add(count, n);
    }

    /// Empty user data of this server's layout, for a new connection.
    pub(crate) fn new_user_data(&self) -> UserData {
        UserData::new(&self.layout)
    }

    /// Counts a new connection or connect attempt as live, unless a shutdown has begun.
    pub(crate) fn begin(&self) -> Result<Live, Error> {
        self.registry.begin()
    }

    /// The application's start/stop of accepting.
    pub(crate) fn set_accepting(&self, accepting: bool) {
        self.accepting.send_replace(accepting);
    }

    /// Whether the application has accepting on (the embedded transport's check).
    #[cfg(feature = "testing")]
    pub(crate) fn is_accepting(&self) -> bool {
        *self.accepting.borrow()
    }

    pub(crate) fn watch_accepting(&self) -> watch::Receiver<bool> {
        self.accepting.subscribe()
    }

    /// The per-address cap, if there is one.
    pub(crate) fn per_ip(&self) -> Option<&Arc<PerIpLimit>> {
        self.per_ip.as_ref()
    }

    /// Keeps the accept loop's tasks, for [`accepting_stopped`](Self::accepting_stopped).
    pub(crate) fn accept_started(&self, tasks: AcceptTasks) {
        *self
            .accept_tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(tasks);
    }

    /// Registers a connection over `transport` (a socket, TLS over it, or memory) and starts its
    /// driver; returns its id, and a counted handle when asked for one (it exists before the
    /// driver runs, so the lifetime rule cannot close the connection first). A connection
    /// `over_peer_cap` (its address at the per-address cap) is registered and runs only its
    /// closing events. On failure the user data comes back for release.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn register(
        &self,
        transport: Transport,
        addresses: Addresses,
        direction: Direction,
        user_data: UserData,
        setup: Setup,
        permit: Permit,
        live: Live,
        want_handle: bool,
        over_peer_cap: bool,
    ) -> Result<(ConnectionId, Option<Connection>), (UserData, Error)> {
        let lifecycle = &self.context.lifecycle;
        let shared = Arc::new(Shared {
            id: self.registry.next_id(),
            addresses: SocketAddresses::new(addresses.peer, addresses.local),
            direction,
            user_data,
            counters: ConnectionCounters::default(),
            mailbox: Mailbox::new(lifecycle.clone()),
            told: once_cell::race::OnceBox::new(),
            is_tls: setup.secure.is_some(),
            frame_slot: std::sync::atomic::AtomicU32::new(u32::MAX),
            closing_hooks: Default::default(),
        });
        let registration = match self.registry.register(&shared, permit, live) {
            Ok(registration) => registration,
            Err(error) => return Err((shared.user_data.take_all(), error)),
        };
        self.counters.count(match direction {
            Direction::Inbound => Count::Accepted,
            Direction::Outbound => Count::Connected,
        });
        let handle = want_handle.then(|| Connection::uncounted(shared.clone()).clone());
        let id = shared.id;
        let driver = Driver::new(self.context.clone(), shared, transport, setup, registration);
        tokio::spawn(driver.run(over_peer_cap));
        Ok((id, handle))
    }

    /// Waits until the accept loop has stopped and its callbacks (the last being
    /// `on_stop_accepting_connections`) have run.
    pub(crate) async fn accepting_stopped(&self) {
        let tasks = self
            .accept_tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(tasks) = tasks {
            // A panic in either was already reported through `on_error`.
            let _ = tasks.accept.await;
            let _ = tasks.events.await;
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let (active, bytes) = self.registry.connection_bytes();
        self.counters.snapshot(active, bytes)
    }
}
