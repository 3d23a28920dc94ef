//! The driver's waits: what one wait polls, in which order, and the write tried before a wait.

use std::future::poll_fn;
use std::task::{Context as TaskContext, Poll};

use futures::task::noop_waker_ref;

use super::timer::Timer;
use super::transport::{Received, Transport};
use super::urgent::AtMark;
use super::write::WriteQueue;
use super::{Driver, Wake};
use crate::connection::lifecycle::Interest;
use crate::connection::Shared;

impl Driver {
    /// A wait that would poll the write first (the wait after a callback queued a reply) tries
    /// the write at once, without the wait: most often the socket takes it, and the turn needs no
    /// poll of anything else. The write is polled with a waker that does nothing; if the socket
    /// does not take it, the wait that follows polls it again with the task's own. A request
    /// posted meanwhile is taken at the next turn, as it would be after the write in the wait.
    #[inline]
    pub(super) fn write_at_once(&mut self, interest: Interest) -> Option<Wake> {
        if !interest.write {
            return None;
        }
        let mut cx = TaskContext::from_waker(noop_waker_ref());
        match self.writes.poll_write(&mut cx, &mut self.transport) {
            Poll::Ready(result) => Some(Wake::Wrote(result)),
            Poll::Pending => None,
        }
    }

    /// A write made before the wait ([`Driver::write_at_once`]): where it leaves nothing to
    /// do but wait on, the wait goes on in this turn with what the lifecycle now wants (`Ok`);
    /// otherwise the wake the pump takes a turn for (`Err`).
    ///
    /// It goes on where the callbacks are not called for the buffers the write completed (they
    /// keep the default `on_write_completed`), there is no read rate limit, and the lifecycle
    /// gave the wait to a steady connection (no deadline, nothing to announce) and still has
    /// one for it (`Lifecycle::steady_after_write`: the same urgent-data watch, no deadline).
    /// Posts are not taken in between: the wait finds them first, and a turn takes them.
    #[inline]
    pub(super) fn wrote_at_once(
        &mut self,
        wrote: Wake,
        interest: Interest,
    ) -> Result<Wanted, Wake> {
        let Wake::Wrote(Ok(sent)) = wrote else {
            return Err(wrote);
        };
        if sent == 0
            || !interest.steady
            || self.rare.is_some()
            || !self.context.invoker.skips_write_completed()
        {
            return Err(Wake::Wrote(Ok(sent)));
        }
        self.written(sent);
        self.drop_completed();
        match self.life.steady_after_write() {
            Some(next) => {
                // Bytes written change neither the fate nor the high mark of a steady
                // connection: nothing to publish.
                debug_assert!(self.life.snapshot() == self.published, "nothing to publish");
                Ok(Wanted::of(next))
            }
            // The lifecycle has more to say: a turn asks it (the write is counted already).
            _ => Err(Wake::Posted),
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(super) async fn wait_with_urgent(&mut self, interest: Interest) -> Wake {
        let read_size = self.read_size();
        let Driver {
            connection,
            transport,
            writes,
            urgent,
            timer,
            timer_armed,
            ..
        } = self;
        let mut waiting = Waiting {
            shared: connection.shared(),
            transport,
            writes,
            urgent_pending: urgent.has_pending(),
            timer,
            timer_armed: *timer_armed,
            read_buffer_size: read_size,
            at_mark: urgent.at_mark(),
        };
        tokio::select! {
            biased;
            wake = poll_fn(|cx| waiting.poll(cx, Wanted::of(interest))) => wake,
            watched = urgent.watched() => Wake::Urgent(watched),
        }
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub(super) async fn wait_with_urgent(&mut self, interest: Interest) -> Wake {
        poll_fn(|cx| self.poll_wake(cx, Wanted::of(interest))).await
    }

    pub(super) fn poll_wake(&mut self, cx: &mut TaskContext<'_>, wanted: Wanted) -> Poll<Wake> {
        let read_size = self.read_size();
        Waiting {
            shared: self.connection.shared(),
            transport: &mut self.transport,
            writes: &mut self.writes,
            urgent_pending: self.urgent.has_pending(),
            timer: &mut self.timer,
            timer_armed: self.timer_armed,
            read_buffer_size: read_size,
            at_mark: self.urgent.at_mark(),
        }
        .poll(cx, wanted)
    }
}

/// What a wait polls for, of its [`Interest`] (the deadline is the timer's, and urgent data has
/// a wait of its own): three flags, so that a poll does not make the whole interest again.
#[derive(Clone, Copy)]
pub(super) struct Wanted {
    pub(super) read: bool,
    pub(super) write: bool,
    pub(super) fin: bool,
}

impl Wanted {
    pub(super) fn of(interest: Interest) -> Self {
        Wanted {
            read: interest.read,
            write: interest.write,
            fin: interest.fin,
        }
    }
}

/// The parts of a driver one wait polls, borrowed apart from the urgent-data watcher (which a
/// `select!` beside it borrows).
struct Waiting<'a> {
    shared: &'a Shared,
    transport: &'a mut Transport,
    writes: &'a mut WriteQueue,
    urgent_pending: bool,
    timer: &'a mut Timer,
    timer_armed: bool,
    read_buffer_size: usize,
    /// Set once the application asked for urgent data: reads then take it first.
    at_mark: Option<&'a AtMark>,
}

impl Waiting<'_> {
    /// In priority order: requests from handles, room for the queue (or for `close_notify`),
    /// data, room for urgent bytes, the timer. Writing first flushes what a callback queued before
    /// more is read (and saves a read poll per message that would find nothing yet).
    ///
    /// The mailbox is looked at first (one atomic load) but its waker is registered last, only
    /// when nothing else is ready: most polls find data or room and need no wake-up from it.
    /// Registering last is as safe as first, since parking re-checks for a post atomically.
    #[inline]
    fn poll(&mut self, cx: &mut TaskContext<'_>, interest: Wanted) -> std::task::Poll<Wake> {
        use std::task::Poll::Ready;
        if self.shared.mailbox.has_posted() {
            return Ready(Wake::Posted);
        }
        if interest.write {
            if let Ready(result) = self.writes.poll_write(cx, self.transport) {
                return Ready(Wake::Wrote(result));
            }
        } else if interest.fin {
            if let Ready(result) = self.transport.poll_close_notify(cx) {
                return Ready(Wake::FinSent(result));
            }
        }
        if interest.read {
            if let Some(at_mark) = self.at_mark {
                if let Ready(result) =
                    self.transport
                        .poll_read_taking_urgent(cx, self.read_buffer_size, at_mark)
                {
                    return Ready(match result {
                        Ok(Received::Urgent(byte)) => Wake::UrgentByte(byte),
                        Ok(Received::Data(data)) => Wake::Read(Ok(data)),
                        Err(error) => Wake::Read(Err(error)),
                    });
                }
            } else if let Ready(result) = self.transport.poll_read(cx, self.read_buffer_size) {
                return Ready(Wake::Read(result));
            }
        }
        if self.urgent_pending {
            if let Some(tcp) = self.transport.tcp() {
                if tcp.poll_write_ready(cx).is_ready() {
                    return Ready(Wake::UrgentRoom);
                }
            }
        }
        if self.timer.poll(self.timer_armed, cx).is_ready() {
            return Ready(Wake::Deadline);
        }
        if self.shared.mailbox.poll_posted(cx).is_ready() {
            return Ready(Wake::Posted);
        }
        std::task::Poll::Pending
    }
}
