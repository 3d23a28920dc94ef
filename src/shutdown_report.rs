//! How a shutdown went.

/// How a shutdown went, returned by [`Server::shutdown`](crate::Server::shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Connections live when the shutdown began that ended gracefully (FIN, every queued byte
    /// delivered) within the drain time, whether or not the peer then closed its own end.
    pub graceful: usize,
    /// Connections still open when the drain time ran out, reset with
    /// [`ClosureReason::ShutdownForced`](crate::ClosureReason::ShutdownForced).
    pub forced: usize,
    /// Connections live when the shutdown began that ended otherwise during the drain time: peer
    /// reset, error, a close that could not send everything in time, callback panic, abort.
    pub other: usize,
}
