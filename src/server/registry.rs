//! The live connections of a server: registration, abort-all, and the count a shutdown drains.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{watch, Notify};

use crate::closure::ClosureReason;
use crate::connection::weak::WeakConnection;
use crate::connection::Shared;
use crate::error::Error;
use crate::ids::ConnectionId;
use crate::server::invoke::Invoker;
use crate::server::limit::Permit;
use crate::server::per_ip::PerIpLimit;
use crate::shutdown_report::ShutdownReport;
use crate::stats::{ConnectionStats, Counters};

#[derive(Debug, Default)]
struct Inner {
    connections: HashMap<ConnectionId, Arc<Shared>>,
    /// Connections plus outgoing connects in progress: what a shutdown waits for.
    live: usize,
    /// Closed by the shutdown once the accept loop has stopped (not when the shutdown began:
    /// that is the shutdown's phase): no new connection or connect is taken, and every
    /// connection that ends from now on counts in the report. Kept under this lock, so that a
    /// registration and the close never cross.
    closed: bool,
}

/// How the connections live at a shutdown's start ended, counted as they end.
#[derive(Debug, Default)]
struct Ends {
    graceful: AtomicUsize,
    forced: AtomicUsize,
    other: AtomicUsize,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    /// Signalled whenever `live` drops to zero.
    drained: Notify,
    next_id: AtomicU64,
    ends: Ends,
    /// Abort-alls (explicit or the shutdown's) whose `on_all_connections_aborted` has not returned
    /// yet; the connections they aborted hold their closing events until it is back to zero.
    announcing_aborts: watch::Sender<usize>,
    counters: Arc<Counters>,
}

/// Keeps a connection or a connect attempt counted as live until dropped.
#[derive(Debug)]
pub(crate) struct Live {
    registry: Arc<Registry>,
}

impl Drop for Live {
    fn drop(&mut self) {
        let mut inner = self.registry.inner();
        inner.live -= 1;
        if inner.live == 0 {
            self.registry.drained.notify_waiters();
        }
    }
}

/// A registered connection. Dropped when its driver is done: it deregisters the connection,
/// counts how it ended for a shutdown's report, then frees its limiter slot and its live count,
/// in that order.
#[derive(Debug)]
pub(crate) struct Registration {
    shared: Arc<Shared>,
    reason: Option<ClosureReason>,
    // Dropped after the deregistration, in this order: the slot frees after the release events,
    // then the shutdown learns this one is gone.
    permit: Option<Permit>,
    live: Option<Live>,
}

impl Registration {
    /// Records how the connection ended, for the counters and a shutdown's report.
    pub(crate) fn ended(&mut self, reason: ClosureReason) {
        self.reason = Some(reason);
        self.live
            .as_ref()
            .expect("live until dropped")
            .registry
            .counters
            .record_closure(reason);
    }

    /// Counts the connection against its client's address in `limit` (the client a PROXY header
    /// named, known only now); `false`, counted as a refusal, if the address is at its cap.
    pub(crate) fn take_peer_slot(&mut self, limit: &Arc<PerIpLimit>, address: IpAddr) -> bool {
        let registry = &self.live.as_ref().expect("live until dropped").registry;
        match limit.admit(address, &registry.counters) {
            Some(slot) => {
                self.permit = self.permit.take().map(|permit| permit.with_peer_slot(slot));
                true
            }
            None => false,
        }
    }

    /// Waits until no `on_all_connections_aborted` is running: a connection aborted by an
    /// abort-all calls this before its closing events.
    pub(crate) async fn aborts_announced(&self) {
        let registry = &self.live.as_ref().expect("live until dropped").registry;
        let mut announcing = registry.announcing_aborts.subscribe();
        // The sender lives in the registry, which this registration keeps alive.
        let _ = announcing.wait_for(|count| *count == 0).await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let live = self.live.take().expect("live until dropped");
        let registry = &live.registry;
        {
            let mut inner = registry.inner();
            inner.connections.remove(&self.shared.id);
            registry.counters.connection_deregistered();
            registry
                .counters
                .record_bytes(&self.shared.counters.snapshot());
            if inner.closed {
                if let Some(reason) = self.reason {
                    let ends = &registry.ends;
                    let counter = match reason {
                        ClosureReason::ShutdownForced => &ends.forced,
                        reason if reason.is_graceful() => &ends.graceful,
                        _ => &ends.other,
                    };
                    counter.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        drop(self.permit.take());
        drop(live);
    }
}

impl Registry {
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        Registry {
            inner: Mutex::default(),
            drained: Notify::new(),
            next_id: AtomicU64::new(1),
            ends: Ends::default(),
            announcing_aborts: watch::Sender::new(0),
            counters,
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Only changed by short, non-panicking sections; recover from poison.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn next_id(&self) -> ConnectionId {
        ConnectionId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Counts a new connection or connect attempt as live, unless the registry is closed (by a
    /// shutdown, once its accept loop has stopped).
    pub(crate) fn begin(self: &Arc<Self>) -> Result<Live, Error> {
        let mut inner = self.inner();
        if inner.closed {
            return Err(Error::ShuttingDown);
        }
        inner.live += 1;
        Ok(Live {
            registry: self.clone(),
        })
    }

    /// Registers a connection; refused once the registry is closed.
    pub(crate) fn register(
        &self,
        shared: &Arc<Shared>,
        permit: Permit,
        live: Live,
    ) -> Result<Registration, Error> {
        let mut inner = self.inner();
        if inner.closed {
            return Err(Error::ShuttingDown);
        }
        inner.connections.insert(shared.id, shared.clone());
        self.counters.connection_registered();
        Ok(Registration {
            shared: shared.clone(),
            reason: None,
            permit: Some(permit),
            live: Some(live),
        })
    }

    /// Live connections of this server.
    pub(crate) fn active(&self) -> usize {
        self.inner().connections.len()
    }

    /// The live connection numbered `id`.
    pub(crate) fn find(&self, id: ConnectionId) -> Option<Arc<Shared>> {
        self.inner().connections.get(&id).cloned()
    }

    /// Weak handles to the live connections that are open (established and not closing).
    pub(crate) fn open_connections(&self) -> Vec<WeakConnection> {
        self.inner()
            .connections
            .values()
            .filter(|shared| !shared.mailbox.is_sealed())
            .map(WeakConnection::new)
            .collect()
    }

    /// The live connections' count, and the bytes of every connection: the live ones' summed
    /// with the ended ones'. Both are read under the lock a connection's end folds its bytes in
    /// under, so no connection is counted as both live and ended, or as neither.
    pub(crate) fn connection_bytes(&self) -> (usize, ConnectionStats) {
        let inner = self.inner();
        let mut bytes = self.counters.ended_bytes();
        for shared in inner.connections.values() {
            let connection = shared.counters.snapshot();
            bytes.bytes_read += connection.bytes_read;
            bytes.bytes_written += connection.bytes_written;
        }
        (inner.connections.len(), bytes)
    }

    /// Aborts every live connection with `reason` and runs `on_all_connections_aborted` with the
    /// count; the aborted connections' closing events wait until it has returned (the order of
    /// guarantee 7, docs/guarantees.md). Counts only connections that had not yet decided how
    /// they end.
    pub(crate) async fn abort_all(&self, reason: ClosureReason, invoker: &Invoker) -> usize {
        /// Ends the announcement even if the caller stops waiting or the callback panics.
        struct Announcing<'a>(&'a watch::Sender<usize>);
        impl Drop for Announcing<'_> {
            fn drop(&mut self) {
                self.0.send_modify(|count| *count -= 1);
            }
        }
        self.announcing_aborts.send_modify(|count| *count += 1);
        let _announcing = Announcing(&self.announcing_aborts);
        let count = self
            .inner()
            .connections
            .values()
            .filter(|shared| shared.mailbox.abort(reason))
            .count();
        let announce = invoker.callbacks().on_all_connections_aborted(count);
        invoker
            .call("on_all_connections_aborted", None, announce)
            .await;
        count
    }

    /// Takes no more connections, and, if `tell`, tells every live one that a shutdown has begun
    /// (not when the shutdown is forced: they are reset at once instead).
    pub(crate) fn close(&self, tell: bool) {
        let live: Vec<Arc<Shared>> = {
            let mut inner = self.inner();
            inner.closed = true;
            if !tell {
                return;
            }
            inner.connections.values().cloned().collect()
        };
        for shared in live {
            shared.mailbox.notify_shutdown();
        }
    }

    /// Waits until nothing is live.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner().live == 0 {
                return;
            }
            notified.await;
        }
    }

    /// How the connections live at the shutdown's start ended.
    pub(crate) fn report(&self) -> ShutdownReport {
        let ends = &self.ends;
        ShutdownReport {
            graceful: ends.graceful.load(Ordering::Acquire),
            forced: ends.forced.load(Ordering::Acquire),
            other: ends.other.load(Ordering::Acquire),
        }
    }
}
