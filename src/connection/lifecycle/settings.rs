//! What the lifecycle is given once: the clock it reads, the write queue's bounds and the
//! server's settings.

use std::cell::Cell;
use std::time::Duration;

use tokio::time::Instant;

use crate::timeouts::Timeouts;

/// Where the lifecycle reads the time from: an `Instant` given outright, or the driver's
/// [`LazyNow`], which reads the clock only if a rule needs it (most turns of a connection without
/// timeouts need none).
pub(crate) trait Clock: Copy {
    fn now(self) -> Instant;
}

impl Clock for Instant {
    fn now(self) -> Instant {
        self
    }
}

/// The time of one turn of the driver, read at most once and only when asked for.
#[derive(Debug, Default)]
pub(crate) struct LazyNow(Cell<Option<Instant>>);

impl Clock for &LazyNow {
    fn now(self) -> Instant {
        match self.0.get() {
            Some(now) => now,
            None => {
                let now = Instant::now();
                self.0.set(Some(now));
                now
            }
        }
    }
}

/// What a queued buffer counts for against the write queue's limit and watermarks besides its
/// bytes: on 64-bit platforms, its `Bytes` handle in the queue (32 bytes), the allocator's
/// smallest chunk for a small buffer of its own (32 bytes), and room for the queue's growth.
/// Counting it bounds what a queue of many small buffers holds in memory, not only in payload
/// (Netty counts a fixed overhead per queued message for the same reason).
pub(crate) const BUFFER_OVERHEAD: usize = 64;

/// What a buffer of `len` bytes counts for in the write queue.
pub(crate) const fn queued_cost(len: usize) -> usize {
    len + BUFFER_OVERHEAD
}

/// Write queue bounds of one connection, fixed when it is created. The queue's level is what its
/// buffers count for ([`queued_cost`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriteLimits {
    /// Writes are refused, and reads pause, while the queue holds this much.
    pub(crate) limit: usize,
    /// At or above this, the queue is "high": `on_write_buffer_high`, `writable()` waits.
    pub(crate) high: usize,
    /// Back at or below this, the queue is no longer high: `on_write_buffer_low`.
    pub(crate) low: usize,
}

impl WriteLimits {
    /// The queue's high/low rule, for the lifecycle and for handles alike: a queue of `queued`
    /// bytes is high from the high mark up, and stays high, once it `was_high`, until it drains
    /// to the low mark.
    pub(crate) fn is_high(&self, queued: usize, was_high: bool) -> bool {
        if was_high {
            queued > self.low
        } else {
            queued >= self.high
        }
    }
}

/// The settings the lifecycle needs, fixed for a server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LifecycleConfig {
    pub(crate) limits: WriteLimits,
    pub(crate) timeouts: Timeouts,
    pub(crate) close_timeout: Duration,
    /// Most bytes a closing connection reads and drops before it is reset instead.
    pub(crate) close_discard_limit: usize,
    pub(crate) slow_consumer_timeout: Option<Duration>,
}

#[cfg(test)]
impl LifecycleConfig {
    /// The settings the crate's unit tests use: a 100-byte queue (high at 80, low at 40), no
    /// timeouts, a 5 s close timeout, a 1000-byte discard limit.
    pub(crate) fn for_tests() -> Self {
        LifecycleConfig {
            limits: WriteLimits {
                limit: 100,
                high: 80,
                low: 40,
            },
            timeouts: Timeouts::default(),
            close_timeout: Duration::from_secs(5),
            close_discard_limit: 1000,
            slow_consumer_timeout: None,
        }
    }
}
