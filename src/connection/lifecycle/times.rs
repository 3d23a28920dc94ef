//! When the things the timeouts measure happened, kept small: one base instant, and the moments
//! that change at most a few times in a connection's life as nanoseconds after it (8 bytes, where
//! an `Instant` takes 16). Every connection's task carries its lifecycle, so these bytes count per
//! idle connection. The two that may change with every message, under an idle or a read timeout,
//! stay `Instant`s: a stamp costs a subtraction and a conversion to make, and an addition to read.

use std::num::NonZeroU64;
use std::time::Duration;

use tokio::time::Instant;

/// A moment as the nanoseconds after the base instant of its [`Times`], plus one: the zero left
/// free makes an `Option<Stamp>` 8 bytes too.
///
/// Exact to the nanosecond (an `Instant` counts no finer) up to 584 years after the base. A
/// moment later than that is kept as that (a deadline that far away cannot pass while the
/// process runs; tokio's timer caps a sleep at about two years anyway); one before the base (the
/// lifecycle is never told of one: the base is the moment it was made) is kept as the base. Never
/// wraps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp(NonZeroU64);

/// When the things the timeouts measure last happened: the rare ones a [`Stamp`] after `base`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Times {
    /// When the lifecycle was made: what every stamp counts from.
    base: Instant,
    pub(super) established: Stamp,
    /// Last byte read or written (kept only while an idle timeout is on): per message.
    pub(super) last_activity: Instant,
    /// Since when a read has been requested and waited for without data: per message, under a
    /// read timeout.
    pub(super) read_since: Option<Instant>,
    /// When the peer's FIN was read.
    pub(super) read_closed_at: Option<Stamp>,
    /// Since when the write queue has been high.
    pub(super) high_since: Option<Stamp>,
}

impl Times {
    /// Everything at `now`, the base.
    pub(super) fn new(now: Instant) -> Self {
        let base = Stamp(NonZeroU64::MIN);
        Times {
            base: now,
            established: base,
            last_activity: now,
            read_since: None,
            read_closed_at: None,
            high_since: None,
        }
    }

    /// `at` as a stamp.
    pub(super) fn stamp(&self, at: Instant) -> Stamp {
        let nanos = at.saturating_duration_since(self.base).as_nanos();
        Stamp(NonZeroU64::MIN.saturating_add(u64::try_from(nanos).unwrap_or(u64::MAX)))
    }

    /// The instant `stamp` stands for.
    pub(super) fn at(&self, stamp: Stamp) -> Instant {
        self.base + Duration::from_nanos(stamp.0.get() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_is_exact_to_the_nanosecond() {
        let t0 = Instant::now();
        let times = Times::new(t0);
        for after in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_nanos(999_999_999),
            Duration::from_secs(1),
            Duration::new(3_600 * 24 * 365, 123_456_789),
        ] {
            let at = t0 + after;
            assert_eq!(times.at(times.stamp(at)), at, "{after:?}");
        }
        assert_eq!(std::mem::size_of::<Option<Stamp>>(), 8);
    }

    #[test]
    fn a_stamp_saturates() {
        let t0 = Instant::now();
        let times = Times::new(t0);
        let most = Duration::from_nanos(u64::MAX - 1);
        assert_eq!(times.at(times.stamp(t0 + most)), t0 + most);
        let beyond = t0 + most + Duration::from_secs(1);
        assert_eq!(
            times.at(times.stamp(beyond)),
            t0 + most,
            "kept as the last one"
        );
        let later = Times::new(t0 + Duration::from_secs(1));
        assert_eq!(
            later.at(later.stamp(t0)),
            t0 + Duration::from_secs(1),
            "before the base: the base"
        );
    }
}
