//! One lazily armed timer for every deadline of a connection.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// A timer that may fire early: the lifecycle then finds no deadline passed and the next wait
/// re-arms it. A timer already set for an earlier moment is left alone, so a busy connection whose
/// idle deadline moves with every message does not reset it per message. A disarmed timer is
/// never polled, so a fired one cannot wake the driver again and again.
#[derive(Debug, Default)]
pub(super) struct Timer {
    /// Boxed: only connections with a deadline pay for a timer entry.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Timer {
    /// Inlined for the common wait, which has no deadline.
    #[inline]
    pub(super) fn arm(&mut self, deadline: Option<Instant>) {
        match deadline {
            None => self.armed = false,
            Some(at) => self.arm_at(at),
        }
    }

    fn arm_at(&mut self, at: Instant) {
        self.armed = true;
        match self.sleep.as_mut() {
            Some(sleep) if sleep.deadline() <= at && !sleep.is_elapsed() => {}
            Some(sleep) => sleep.as_mut().reset(at),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    #[inline]
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.sleep.as_mut() {
            Some(sleep) if self.armed => sleep.as_mut().poll(cx),
            _ => Poll::Pending,
        }
    }
}
