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

/// Write queue bounds of one connection, fixed when it is created.
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
