//! What every handle of a running server shares: the connection context, the registry, the
//! limiter, the accepting switch and the shutdown phase; and the one place a socket becomes a
//! connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::builder::Config;
use crate::connection::Shared;
use crate::driver::{Context, Driver, Setup};
use crate::limit::Permit;
use crate::mailbox::Mailbox;
use crate::per_ip::PerIpLimit;
use crate::registry::{Live, Registry};
use crate::shutdown::Shutdown;
use crate::stats::{ConnectionCounters, Count, Counters};
use crate::user_data::UserDataLayout;
use crate::{ClosureReason, Connection, ConnectionLimiter, Direction, Error, Stats, UserData};

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

impl Manager {
    /// Registers a connected socket and starts its driver. Returns a counted handle when asked
    /// for one (it exists before the driver runs, so the lifetime rule cannot close the
    /// connection first). A `refuse`d connection is registered and runs only its closing events,
    /// with that reason. On failure the user data comes back for release.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn establish(
        &self,
        stream: TcpStream,
        peer_addr: SocketAddr,
        direction: Direction,
        user_data: UserData,
        setup: Setup,
        permit: Permit,
        live: Live,
        want_handle: bool,
        refuse: Option<ClosureReason>,
    ) -> Result<Option<Connection>, (UserData, Error)> {
        let local_addr = match stream.local_addr() {
            Ok(address) => address,
            Err(error) => return Err((user_data, Error::Io(error))),
        };
        let lifecycle = &self.context.lifecycle;
        let shared = Arc::new(Shared {
            id: self.registry.next_id(),
            peer_addr,
            local_addr,
            direction,
            user_data,
            counters: ConnectionCounters::default(),
            mailbox: Mailbox::new(lifecycle.clone()),
            tls: std::sync::OnceLock::new(),
            is_tls: setup.secure.is_some(),
            proxy: std::sync::OnceLock::new(),
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
        let driver = Driver::new(self.context.clone(), shared, stream, setup, registration);
        tokio::spawn(driver.run(refuse));
        Ok(handle)
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
