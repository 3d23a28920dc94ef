//! What every handle of a running server shares: the connection context, the registry, the
//! limiter, the accepting switch and the shutdown phase; and the one place a socket becomes a
//! connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::closure::ClosureReason;
use crate::connection::lifecycle::{LifecycleConfig, WriteLimits};
use crate::connection::mailbox::Mailbox;
use crate::connection::user_data::UserData;
use crate::connection::user_data::UserDataLayout;
use crate::connection::Connection;
use crate::connection::Shared;
use crate::error::Error;
use crate::ids::{ConnectionId, Direction};
use crate::server::builder::Config;
use crate::server::driver::transport::Transport;
use crate::server::driver::{Context, Driver, Setup};
use crate::server::invoke::Invoker;
use crate::server::limit::ConnectionLimiter;
use crate::server::limit::Permit;
use crate::server::per_ip::PerIpLimit;
use crate::server::registry::{Live, Registry};
use crate::server::shutdown::Shutdown;
use crate::stats::Stats;
use crate::stats::{ConnectionCounters, Count, Counters};

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
    pub(crate) context: Arc<Context>,
    pub(crate) config: Config,
    pub(crate) registry: Arc<Registry>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) limiter: ConnectionLimiter,
    pub(crate) layout: UserDataLayout,
    /// Whether the listeners should accept (the application's start/stop).
    pub(crate) accepting: watch::Sender<bool>,
    pub(crate) shutdown: Shutdown,
    pub(crate) accept_tasks: Mutex<Option<AcceptTasks>>,
    /// Slots for TLS handshakes of accepted connections in progress.
    pub(crate) handshakes: Arc<Semaphore>,
    /// Live accepted connections per peer address, when they are capped.
    pub(crate) per_ip: Option<Arc<PerIpLimit>>,
}

impl Config {
    /// What the drivers of a server with these settings need of it.
    pub(crate) fn context(&self, invoker: Invoker, counters: &Arc<Counters>) -> Context {
        Context {
            invoker,
            counters: counters.clone(),
            read_buffer_size: self.read_buffer_size,
            handshake_timeout: self.handshake_timeout,
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
    /// Registers a connection over `transport` (a socket, TLS over it, or memory) and starts its
    /// driver; returns its id, and a counted handle when asked for one (it exists before the
    /// driver runs, so the lifetime rule cannot close the connection first). A `refuse`d
    /// connection is registered and runs only its closing events, with that reason. On failure
    /// the user data comes back for release.
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
        refuse: Option<ClosureReason>,
    ) -> Result<(ConnectionId, Option<Connection>), (UserData, Error)> {
        let Addresses {
            peer: peer_addr,
            local: local_addr,
        } = addresses;
        let lifecycle = &self.context.lifecycle;
        let shared = Arc::new(Shared {
            id: self.registry.next_id(),
            peer_addr,
            local_addr,
            direction,
            user_data,
            counters: ConnectionCounters::default(),
            mailbox: Mailbox::new(lifecycle.clone()),
            told: std::sync::OnceLock::new(),
            is_tls: setup.secure.is_some(),
            groups: Default::default(),
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
        tokio::spawn(driver.run(refuse));
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
        let (active, live) = self.registry.live_bytes();
        self.counters.snapshot(active, live)
    }
}
