//! Counters and the snapshots read from them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::closure::ClosureReason;
use crate::metrics::Metrics;

/// A point-in-time snapshot of a server's counters, from [`Server::stats`](crate::Server::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections of this server that are live now (established and not yet released).
    pub active: usize,
    /// Connections accepted by the listeners and handed to the application.
    pub accepted: u64,
    /// Outgoing connections established.
    pub connected: u64,
    /// Outgoing connects that failed (refused, timed out, limit, shutdown).
    pub connect_failures: u64,
    /// Connections accepted and reset at once because the limit was reached (see
    /// [`LimitPolicy`](crate::LimitPolicy)).
    pub refused_at_limit: u64,
    /// Accepted connections refused because their peer address already had the
    /// [maximum per address](crate::ServerBuilder::max_connections_per_ip). Each also ends with
    /// [`ClosureReason::PerIpLimit`] (and counts in [`Stats::accepted`]), unless a shutdown began
    /// before it was registered.
    pub refused_per_ip: u64,
    /// Pending connections accepted and reset at once, with no callback, because the process had
    /// run out of file descriptors (EMFILE or ENFILE; unix only): the accept loop frees a spare
    /// descriptor to take them off the backlog, so that their clients learn at once instead of
    /// hanging. Not counted in [`Stats::accepted`].
    pub refused_no_descriptors: u64,
    /// Failed `accept` calls (each is reported through
    /// [`on_accept_error`](crate::Callbacks::on_accept_error), rate-limited).
    pub accept_errors: u64,
    /// Callbacks that panicked.
    pub callback_panics: u64,
    /// Times a connection's write queue reached its high watermark
    /// ([`on_write_buffer_high`](crate::Callbacks::on_write_buffer_high)).
    pub write_queue_high: u64,
    /// Connections whose peer acknowledged everything and our FIN but kept its end open past the
    /// close timeout (counted where the kernel tells: Linux, and the `testing` connection). Their closure reason is the one decided before (a lingering peer does not change
    /// how a connection ended); this counts them beside it.
    pub lingering_peers: u64,
    /// Bytes read from all connections, live and ended. Each byte counts once, also when its
    /// connection ends while the snapshot is taken: successive snapshots never go down.
    pub bytes_read: u64,
    /// Bytes handed to the kernel for all connections, live and ended (each once, as
    /// [`bytes_read`](Stats::bytes_read)).
    pub bytes_written: u64,
    /// Ended connections by reason, read through [`Stats::closures`]: private, so that a new
    /// [`ClosureReason`] is not a breaking change.
    closures: [u64; REASONS],
}

/// How many closure reasons there are.
const REASONS: usize = ClosureReason::ALL.len();

impl Stats {
    /// How many connections ended for `reason`.
    ///
    /// ```
    /// use switchboard::{ClosureReason, Stats};
    /// assert_eq!(Stats::default().closures(ClosureReason::PeerClosed), 0);
    /// ```
    pub fn closures(&self, reason: ClosureReason) -> u64 {
        self.closures[reason.index()]
    }

    /// How many connections ended, for any reason.
    pub fn total_closures(&self) -> u64 {
        self.closures.iter().sum()
    }

    /// Each reason with how many connections ended for it, including those with none.
    ///
    /// ```
    /// # fn show(server: &switchboard::Server) {
    /// for (reason, count) in server.stats().closure_counts().filter(|(_, count)| *count > 0) {
    ///     println!("{reason}: {count}");
    /// }
    /// # }
    /// ```
    pub fn closure_counts(&self) -> impl Iterator<Item = (ClosureReason, u64)> + '_ {
        ClosureReason::ALL
            .iter()
            .map(|reason| (*reason, self.closures(*reason)))
    }
}

/// One connection's counters, from [`Connection::stats`](crate::Connection::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Bytes delivered to [`on_read_completed`](crate::Callbacks::on_read_completed).
    pub bytes_read: u64,
    /// Bytes handed to the kernel.
    pub bytes_written: u64,
    /// Completed reads.
    pub reads: u64,
    /// Completed writes (buffers passed to [`on_write_completed`](crate::Callbacks::on_write_completed)).
    pub writes: u64,
}

/// The live counters of one connection; written only by its driver.
#[derive(Debug, Default)]
pub(crate) struct ConnectionCounters {
    pub(crate) bytes_read: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) reads: AtomicU64,
    pub(crate) writes: AtomicU64,
}

impl ConnectionCounters {
    pub(crate) fn snapshot(&self) -> ConnectionStats {
        ConnectionStats {
            bytes_read: self.bytes_read.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
            reads: self.reads.load(Relaxed),
            writes: self.writes.load(Relaxed),
        }
    }

    /// Adds `amount` to a counter that only this connection's driver writes: a load and a store
    /// instead of a locked read-modify-write on the hot path.
    pub(crate) fn add(counter: &AtomicU64, amount: u64) {
        counter.store(counter.load(Relaxed) + amount, Relaxed);
    }
}

/// What a count is of: each names a counter of [`Stats`] and its metric, which
/// [`Counters::count`] moves together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    Accepted,
    Connected,
    ConnectFailure,
    RefusedAtLimit,
    RefusedPerIp,
    RefusedNoDescriptors,
    AcceptError,
    CallbackPanic,
    WriteQueueHigh,
    LingeringPeer,
}

/// The server-wide counters, and the [metrics](crate::metrics) beside them: every count goes
/// through here, so [`Server::stats`](crate::Server::stats) and the metrics never disagree.
///
/// Byte counts of ended connections are folded in at release; live connections are summed when a
/// snapshot is taken, so the hot path touches no shared counter (only the byte metrics, which
/// are no-ops without a recorder).
#[derive(Debug)]
pub(crate) struct Counters {
    accepted: AtomicU64,
    connected: AtomicU64,
    connect_failures: AtomicU64,
    refused_at_limit: AtomicU64,
    refused_per_ip: AtomicU64,
    refused_no_descriptors: AtomicU64,
    accept_errors: AtomicU64,
    callback_panics: AtomicU64,
    write_queue_high: AtomicU64,
    lingering_peers: AtomicU64,
    ended_bytes_read: AtomicU64,
    ended_bytes_written: AtomicU64,
    closures: [AtomicU64; REASONS],
    metrics: Metrics,
}

impl Counters {
    pub(crate) fn new(metrics: Metrics) -> Self {
        Counters {
            accepted: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            refused_at_limit: AtomicU64::new(0),
            refused_per_ip: AtomicU64::new(0),
            refused_no_descriptors: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            callback_panics: AtomicU64::new(0),
            write_queue_high: AtomicU64::new(0),
            lingering_peers: AtomicU64::new(0),
            ended_bytes_read: AtomicU64::new(0),
            ended_bytes_written: AtomicU64::new(0),
            closures: std::array::from_fn(|_| AtomicU64::new(0)),
            metrics,
        }
    }

    /// Counts one `what`.
    pub(crate) fn count(&self, what: Count) {
        self.add(what, 1);
    }

    /// Counts `amount` of `what`.
    pub(crate) fn add(&self, what: Count, amount: u64) {
        let metrics = &self.metrics;
        let (counter, metric) = match what {
            Count::Accepted => (&self.accepted, &metrics.accepted),
            Count::Connected => (&self.connected, &metrics.connected),
            Count::ConnectFailure => (&self.connect_failures, &metrics.connect_failures),
            Count::RefusedAtLimit => (&self.refused_at_limit, &metrics.refused_at_limit),
            Count::RefusedPerIp => (&self.refused_per_ip, &metrics.refused_per_ip),
            Count::RefusedNoDescriptors => (
                &self.refused_no_descriptors,
                &metrics.refused_no_descriptors,
            ),
            Count::AcceptError => (&self.accept_errors, &metrics.accept_errors),
            Count::CallbackPanic => (&self.callback_panics, &metrics.callback_panics),
            Count::WriteQueueHigh => (&self.write_queue_high, &metrics.write_queue_high),
            Count::LingeringPeer => (&self.lingering_peers, &metrics.lingering_peers),
        };
        counter.fetch_add(amount, Relaxed);
        metric.increment(amount);
    }

    pub(crate) fn record_closure(&self, reason: ClosureReason) {
        self.closures[reason.index()].fetch_add(1, Relaxed);
        self.metrics.closed(reason).increment(1);
    }

    /// A connection was registered: [`Stats::active`] counts the registry, the gauge follows it.
    /// Called under the registry lock, as is [`Counters::connection_deregistered`], so the gauge
    /// moves in the registry's order.
    pub(crate) fn connection_registered(&self) {
        self.metrics.active.increment(1.0);
    }

    pub(crate) fn connection_deregistered(&self) {
        self.metrics.active.decrement(1.0);
    }

    /// Bytes read by a connection: its own counters hold them for [`Stats`]; here only the metric.
    #[inline]
    pub(crate) fn bytes_read(&self, bytes: u64) {
        self.metrics.bytes_read.increment(bytes);
    }

    /// Bytes written by a connection: as [`Counters::bytes_read`].
    #[inline]
    pub(crate) fn bytes_written(&self, bytes: u64) {
        self.metrics.bytes_written.increment(bytes);
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Folds an ended connection's byte counts into the totals; called under the registry lock, so
    /// a snapshot never counts a connection both as live and as ended.
    pub(crate) fn record_bytes(&self, connection: &ConnectionStats) {
        self.ended_bytes_read
            .fetch_add(connection.bytes_read, Relaxed);
        self.ended_bytes_written
            .fetch_add(connection.bytes_written, Relaxed);
    }

    /// The bytes of the connections that have ended; read under the registry lock, with the live
    /// ones' (see [`Counters::record_bytes`]).
    pub(crate) fn ended_bytes(&self) -> ConnectionStats {
        ConnectionStats {
            bytes_read: self.ended_bytes_read.load(Relaxed),
            bytes_written: self.ended_bytes_written.load(Relaxed),
            ..ConnectionStats::default()
        }
    }

    /// The counters, with the live connections' count and every connection's bytes, as the
    /// registry summed them.
    pub(crate) fn snapshot(&self, active: usize, bytes: ConnectionStats) -> Stats {
        let mut closures = [0; REASONS];
        for (total, counter) in closures.iter_mut().zip(&self.closures) {
            *total = counter.load(Relaxed);
        }
        Stats {
            active,
            accepted: self.accepted.load(Relaxed),
            connected: self.connected.load(Relaxed),
            connect_failures: self.connect_failures.load(Relaxed),
            refused_at_limit: self.refused_at_limit.load(Relaxed),
            refused_per_ip: self.refused_per_ip.load(Relaxed),
            refused_no_descriptors: self.refused_no_descriptors.load(Relaxed),
            accept_errors: self.accept_errors.load(Relaxed),
            callback_panics: self.callback_panics.load(Relaxed),
            write_queue_high: self.write_queue_high.load(Relaxed),
            lingering_peers: self.lingering_peers.load(Relaxed),
            bytes_read: bytes.bytes_read,
            bytes_written: bytes.bytes_written,
            closures,
        }
    }
}
