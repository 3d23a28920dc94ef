//! The connection limiter, shareable between servers and outgoing connections.

use std::fmt;
use std::sync::Arc;

use tokio::sync::{Notify, Semaphore};

use crate::server::per_ip::PeerSlot;

/// Caps the number of live connections across every server and outgoing connection that share it.
///
/// A limiter is a counting semaphore: each connection holds one slot from the moment it is
/// accepted (or its outgoing connect starts) until just after its
/// [`on_socket_released`](crate::Callbacks::on_socket_released) returns. Slots are taken atomically,
/// so the limit is never exceeded, even when several servers accept at once. Cloning a limiter
/// gives another handle to the same count; pass a clone to each
/// [`ServerBuilder::limiter`](crate::ServerBuilder::limiter) that should share it.
///
/// ```
/// use switchboard::ConnectionLimiter;
///
/// let limiter = ConnectionLimiter::new(100);
/// assert_eq!(limiter.max(), Some(100));
/// assert_eq!(limiter.active(), 0);
/// assert_eq!(ConnectionLimiter::unlimited().max(), None);
/// ```
#[derive(Clone)]
#[must_use]
pub struct ConnectionLimiter {
    semaphore: Arc<Semaphore>,
    /// Signalled whenever a slot taken through this limiter (or a clone) leaves none free, so an
    /// accept loop waiting for a client stops accepting when another server or an outgoing
    /// connect took the last shared slot.
    full: Arc<Notify>,
    max: Option<usize>,
}

/// One connection's slot in a [`ConnectionLimiter`] and, for an accepted connection under a
/// [per-address cap](crate::ServerBuilder::max_connections_per_ip), its place in its address's
/// count; both freed on drop.
#[derive(Debug)]
pub(crate) struct Permit {
    /// The semaphore the slot was taken from, with the slot forgotten: dropping the permit hands
    /// it back. Kept as the semaphore alone, not tokio's owned permit (which adds its count):
    /// every connection's task carries its permit.
    semaphore: Arc<Semaphore>,
    /// Boxed: only servers with a per-address cap have one, and every connection's task carries
    /// its permit.
    _peer: Option<Box<PeerSlot>>,
}

impl Permit {
    /// A slot taken from `semaphore` (its permit forgotten), handed back when the `Permit` drops.
    fn new(semaphore: Arc<Semaphore>) -> Self {
        Permit {
            semaphore,
            _peer: None,
        }
    }

    /// Makes the connection's place in its address's count last as long as this permit.
    pub(crate) fn with_peer_slot(mut self, slot: PeerSlot) -> Self {
        self._peer = Some(Box::new(slot));
        self
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.semaphore.add_permits(1);
    }
}

impl ConnectionLimiter {
    /// The largest limit a limiter can hold (tokio's semaphore maximum).
    pub const MAX: usize = Semaphore::MAX_PERMITS;

    /// A limiter that allows at most `max` live connections.
    ///
    /// A `max` of 0 refuses every connection. Values above [`ConnectionLimiter::MAX`] are clamped
    /// to it.
    pub fn new(max: usize) -> Self {
        let max = max.min(Self::MAX);
        ConnectionLimiter {
            semaphore: Arc::new(Semaphore::new(max)),
            full: Arc::default(),
            max: Some(max),
        }
    }

    /// A limiter without a limit; it still counts live connections.
    pub fn unlimited() -> Self {
        ConnectionLimiter {
            semaphore: Arc::new(Semaphore::new(Self::MAX)),
            full: Arc::default(),
            max: None,
        }
    }

    /// The limit, or `None` for an unlimited limiter.
    pub fn max(&self) -> Option<usize> {
        self.max
    }

    /// How many slots are in use right now.
    pub fn active(&self) -> usize {
        self.max.unwrap_or(Self::MAX) - self.semaphore.available_permits()
    }

    /// The limit as a number, [`ConnectionLimiter::MAX`] when unlimited.
    pub(crate) fn capacity(&self) -> usize {
        self.max.unwrap_or(Self::MAX)
    }

    /// Whether every slot is taken.
    pub(crate) fn is_full(&self) -> bool {
        self.semaphore.available_permits() == 0
    }

    /// Returns once every slot is taken.
    pub(crate) async fn until_full(&self) {
        loop {
            let notified = self.full.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_full() {
                return;
            }
            notified.await;
        }
    }

    /// Takes a slot if one is free, without waiting.
    pub(crate) fn try_acquire(&self) -> Option<Permit> {
        self.semaphore.try_acquire().ok()?.forget();
        if self.is_full() {
            self.full.notify_waiters();
        }
        Some(Permit::new(self.semaphore.clone()))
    }

    /// Waits for a free slot. Waiters are served first come, first served.
    pub(crate) async fn acquire(&self) -> Permit {
        self.semaphore
            .acquire()
            .await
            .expect("switchboard never closes a limiter's semaphore")
            .forget();
        if self.is_full() {
            self.full.notify_waiters();
        }
        Permit::new(self.semaphore.clone())
    }
}

impl Default for ConnectionLimiter {
    fn default() -> Self {
        Self::unlimited()
    }
}

impl fmt::Debug for ConnectionLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionLimiter")
            .field("max", &self.max)
            .field("active", &self.active())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectionLimiter;

    #[test]
    fn slots_are_counted_and_freed_on_drop() {
        let limiter = ConnectionLimiter::new(2);
        let a = limiter.try_acquire().expect("first slot");
        let shared = limiter.clone();
        let b = shared.try_acquire().expect("second slot");
        assert_eq!(limiter.active(), 2);
        assert!(limiter.try_acquire().is_none());
        drop(a);
        assert_eq!(shared.active(), 1);
        assert!(limiter.try_acquire().is_some());
        drop(b);
        assert_eq!(limiter.active(), 0);
    }

    #[test]
    fn zero_refuses_everything_and_unlimited_counts() {
        assert!(ConnectionLimiter::new(0).try_acquire().is_none());
        let unlimited = ConnectionLimiter::unlimited();
        let _slot = unlimited.try_acquire().unwrap();
        assert_eq!(unlimited.active(), 1);
    }
}

/// What a server does with new connections when its [`ConnectionLimiter`] is full.
///
/// A client refused at the limit gets the [refusal message](crate::ServerBuilder::refusal_message)
/// and FIN, if one is set. Without one, and for every other refusal (the
/// [per-address cap](crate::ServerBuilder::max_connections_per_ip), a process out of
/// descriptors), the client is reset (RST): it learns at once that it was refused rather than
/// served, and no `TIME_WAIT` is left on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LimitPolicy {
    /// Stop accepting as soon as the limit is reached (by this server, another one sharing the
    /// limiter, or an outgoing connect): [`Callbacks::on_maximum_connections`](crate::Callbacks::on_maximum_connections), then
    /// [`Callbacks::on_stop_accepting_connections`](crate::Callbacks::on_stop_accepting_connections); new clients wait in the listen backlog (the
    /// C++ framework's behaviour) until a slot frees, then
    /// [`Callbacks::on_start_accepting_connections`](crate::Callbacks::on_start_accepting_connections). No client is accepted without a slot; one
    /// accepted in the very instant another server or a connect took the last shared slot is
    /// refused, and counted in [`Stats::refused_at_limit`](crate::Stats::refused_at_limit). The
    /// default.
    #[default]
    StopAccepting,
    /// Keep accepting, and refuse each connection over the limit at once, so clients learn
    /// promptly instead of waiting: a reset, or the
    /// [refusal message](crate::ServerBuilder::refusal_message) and FIN. A refused client never
    /// becomes a connection: no callback runs for it, not even `on_socket_created`; only
    /// [`Callbacks::on_maximum_connections`](crate::Callbacks::on_maximum_connections) runs, on
    /// the first refusal after a connection was taken. Each is counted in
    /// [`Stats::refused_at_limit`](crate::Stats::refused_at_limit).
    AcceptAndClose,
}
