//! One lazily armed timer for every deadline of a connection.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// A timer that may fire early: the lifecycle then finds no deadline passed and the next wait
/// re-arms it. A timer already set for an earlier moment is left alone, so a busy connection whose
/// idle deadline moves with every message does not reset it per message. A disarmed timer is
/// never polled, so a fired one cannot wake the driver again and again. Whether it is armed is
/// the driver's flag (see [`Timer::arm`]), kept beside its other small fields rather than in
/// padding here.
#[derive(Debug, Default)]
pub(super) struct Timer {
    /// Boxed: only connections with a deadline pay for a timer entry.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Timer {
    /// Sets the timer for `deadline`, if there is one; returns whether it is armed, which the
    /// wait gives [`Timer::poll`]. Inlined for the common wait, which has no deadline.
    #[inline]
    pub(super) fn arm(&mut self, deadline: Option<Instant>) -> bool {
        match deadline {
            None => false,
            Some(at) => {
                self.arm_at(at);
                true
            }
        }
    }

    fn arm_at(&mut self, at: Instant) {
        match self.sleep.as_mut() {
            Some(sleep) if sleep.deadline() <= at && !sleep.is_elapsed() => {}
            Some(sleep) => sleep.as_mut().reset(at),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Ready once the deadline passed, if the timer is `armed`; never otherwise.
    #[inline]
    pub(super) fn poll(&mut self, armed: bool, cx: &mut Context<'_>) -> Poll<()> {
        match self.sleep.as_mut() {
            Some(sleep) if armed => sleep.as_mut().poll(cx),
            _ => Poll::Pending,
        }
    }
}
