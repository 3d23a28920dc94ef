//! A connection's read rate limit: how fast the server reads what a peer sends.

use std::time::Duration;

use tokio::time::Instant;

/// How fast a connection's data is read: on average `bytes_per_second`, with bursts of up to
/// `burst` bytes read at once after a quiet spell (a token bucket, as Netty's traffic shaping).
///
/// While a peer is over its rate the server does not read from it: its data waits in the
/// kernel, whose receive window then fills, so TCP slows the sender down and only it. Set it
/// with [`ServerBuilder::read_rate_limit`](crate::ServerBuilder::read_rate_limit).
///
/// ```
/// use switchboard::ReadRate;
///
/// // 16 KiB a second on average, up to 64 KiB at once.
/// let rate = ReadRate::new(16 * 1024, 64 * 1024);
/// assert_eq!(rate.bytes_per_second(), 16 * 1024);
/// assert_eq!(rate.burst(), 64 * 1024);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRate {
    bytes_per_second: u64,
    burst: u64,
}

impl ReadRate {
    /// `bytes_per_second` on average, bursts of up to `burst` bytes. Both must be above zero
    /// (checked when the server starts).
    pub const fn new(bytes_per_second: u64, burst: u64) -> Self {
        ReadRate {
            bytes_per_second,
            burst,
        }
    }

    /// The average rate, in bytes per second.
    pub const fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second
    }

    /// The most read at once.
    pub const fn burst(&self) -> u64 {
        self.burst
    }
}

/// The smallest read the bucket waits to fill for, once empty: reads of a few bytes each would
/// cost a wake-up and a system call per few bytes.
const MIN_READ: u64 = 1024;

/// A connection's token bucket: how many bytes it may read now.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: ReadRate,
    /// Bytes that may be read as of `at`.
    tokens: u64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket: a new connection may send a burst at once.
    pub(crate) fn new(rate: ReadRate, now: Instant) -> Self {
        TokenBucket {
            rate,
            tokens: rate.burst,
            at: now,
        }
    }

    /// Bytes that may be read at `now` (at most the burst).
    pub(crate) fn available(&mut self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.at);
        let earned = (elapsed.as_nanos() * u128::from(self.rate.bytes_per_second) / 1_000_000_000)
            .min(u128::from(self.rate.burst)) as u64;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(self.rate.burst);
            // The time the earned bytes took, so that no fraction of a byte is lost.
            let spent = Duration::from_nanos(
                (u128::from(earned) * 1_000_000_000 / u128::from(self.rate.bytes_per_second))
                    as u64,
            );
            self.at = if self.tokens == self.rate.burst {
                now
            } else {
                self.at + spent
            };
        }
        self.tokens
    }

    /// `bytes` were read at `now` (brought up to date first: what a full bucket would have
    /// earned while the read was awaited is not counted).
    pub(crate) fn take(&mut self, bytes: usize, now: Instant) {
        self.available(now);
        self.tokens = self.tokens.saturating_sub(bytes as u64);
    }

    /// When an empty bucket holds enough for a read worth its wake-up.
    pub(crate) fn refilled_at(&self) -> Instant {
        let wanted = MIN_READ.min(self.rate.burst).saturating_sub(self.tokens);
        let nanos = u128::from(wanted) * 1_000_000_000 / u128::from(self.rate.bytes_per_second);
        self.at + Duration::from_nanos(nanos as u64 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_at_once_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(ReadRate::new(1024, 4096), t0);
        assert_eq!(bucket.available(t0), 4096);
        bucket.take(4096, t0);
        assert_eq!(bucket.available(t0), 0);
        // Waits for a read worth a wake-up (1 KiB), one second here.
        let refilled = bucket.refilled_at();
        assert!(refilled > t0 + Duration::from_millis(999));
        assert!(refilled <= t0 + Duration::from_millis(1001));
        assert_eq!(bucket.available(t0 + Duration::from_millis(500)), 512);
        assert_eq!(bucket.available(refilled), 1024);
        // Never more than the burst, however long it was quiet.
        assert_eq!(bucket.available(t0 + Duration::from_secs(3600)), 4096);
    }

    #[test]
    fn fractions_of_a_byte_are_not_lost_between_looks() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(ReadRate::new(3, 100), t0);
        bucket.take(100, t0);
        // Looked at every 100 ms for 10 s: 30 bytes, as if looked at once.
        for tenth in 1..=100 {
            bucket.available(t0 + Duration::from_millis(100 * tenth));
        }
        assert_eq!(bucket.available(t0 + Duration::from_secs(10)), 30);
    }

    #[test]
    fn a_full_bucket_earns_nothing_while_a_read_is_awaited() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(ReadRate::new(1000, 4000), t0);
        assert_eq!(bucket.available(t0), 4000);
        // The peer sends its burst ten seconds later: that is all it gets at once.
        bucket.take(4000, t0 + Duration::from_secs(10));
        assert_eq!(bucket.available(t0 + Duration::from_secs(10)), 0);
    }

    #[test]
    fn a_read_past_the_tokens_leaves_the_bucket_empty() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(ReadRate::new(10, 10), t0);
        bucket.take(50, t0);
        assert_eq!(bucket.available(t0), 0);
        // A burst below the smallest read worth a wake-up waits for the burst.
        assert_eq!(
            bucket.refilled_at(),
            t0 + Duration::from_nanos(1_000_000_001)
        );
    }
}
