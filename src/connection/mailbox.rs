//! What a connection's handles post to its driver, what the driver publishes back, and the
//! wake-up between them.
//!
//! One writer per fact:
//! - handles write the [`Inbox`] (requests: read, writes, close, abort…); the driver only takes
//!   from it;
//! - the driver writes what handles read back: the bytes it has taken off the queue
//!   ([`Mailbox::sent`]), whether the queue is high, whether the connection is closing, and
//!   whether it has ended (after which an abort is refused, so abort-all counts exactly what it
//!   aborted).
//!
//! The queue level is `posted - sent`: `posted` grows with each write queued (one
//! compare-and-swap that checks the limit, [`Mailbox::reserve`]), `sent` grows only in the
//! driver, so neither side ever subtracts what the other added. Both count what buffers cost
//! ([`queued_cost`]: their bytes and a fixed overhead each), not only bytes.
//!
//! A write that the connection's own callback makes while the driver polls it goes straight to
//! the driver's queue, without the inbox, where the order allows (see `own`): the common case of
//! a reply written from `on_read_completed` takes no lock and wakes nothing.
//!
//! Files by job: this one holds the inbox, the driver's side and the requests other than writes;
//! `writes` queues writes (the level, the limit, the staged bytes), `own` the connection's own
//! callbacks' writes, `signal` the wake-up word.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use once_cell::race::OnceBox;
use tokio::sync::Notify;

use crate::closure::ClosureReason;
use crate::connection::lifecycle::{
    queued_cost, Fate, LifecycleConfig, Requests, Snapshot, WriteLimits,
};
use crate::error::Error;
use crate::timeouts::Timeouts;

mod own;
mod signal;
mod writes;

use signal::{Signal, INBOX, READ};

/// Requests posted by handles since the driver last took them.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    /// Bytes staged for the connection (a frame layer's encoded items, see
    /// [`Mailbox::stage`]): queued as one write ahead of the next write of any path, or by
    /// [`Mailbox::flush_staged`]. They are part of the connection's one order of bytes from the
    /// moment they are staged.
    staged: BytesMut,
    writes: Vec<Bytes>,
    /// What `writes` count for in the queue ([`queued_cost`]).
    writes_len: usize,
    /// A write took the queue to the high mark: the driver announces it even if it has sent
    /// enough to be below the mark by the time it looks, so a writer waiting in `writable()`
    /// always gets the low mark's wake-up.
    crossed_high: bool,
    /// Boxed (a `Vec` is three words inline; this is one): most connections never send urgent
    /// data.
    #[allow(clippy::box_collection)]
    urgent: Option<Box<Vec<u8>>>,
    urgent_wanted: bool,
    shutdown_write: bool,
    /// A graceful close was asked for, with the reason to report.
    close: Option<ClosureReason>,
    abort: Option<ClosureReason>,
    shutdown_notice: bool,
    /// The timeouts as the application last set them (boxed: most connections keep the
    /// server's), and whether the driver has seen them.
    timeouts: Option<Box<Timeouts>>,
    timeouts_changed: bool,
    /// The connection's fate as the driver last published it: closing (a handle's own `close`
    /// also refuses writes at once, through `close`), or ended (decided; nothing is taken any
    /// more, and an abort is no longer counted).
    fate: Fate,
}

/// What [`Mailbox::take_posted`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// Nothing was posted but, perhaps, a change of the handle count.
    Nothing,
    /// A read was requested, and nothing else.
    Read,
    /// Requests from the inbox (and a read request, if one was posted).
    Requests(Requests),
}

impl Taken {
    /// What was taken as [`Requests`], `None` if nothing was: `handles` is the handle count.
    pub(crate) fn into_requests(self, handles: usize) -> Option<Requests> {
        match self {
            Taken::Nothing => None,
            Taken::Read => Some(Requests {
                read: true,
                handles,
                ..Requests::default()
            }),
            Taken::Requests(requests) => Some(requests),
        }
    }
}

/// Locks `inbox`. Nothing panics while this lock is held, but a poisoned lock must not turn one
/// connection's trouble into a panic in every handle, so the guard is recovered.
fn lock(inbox: &Mutex<Inbox>) -> MutexGuard<'_, Inbox> {
    inbox
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the staged bytes will count for once queued (as one buffer).
fn staged_cost(inbox: &Inbox) -> usize {
    if inbox.staged.is_empty() {
        0
    } else {
        queued_cost(inbox.staged.len())
    }
}

impl Inbox {
    /// Why a write would be refused whatever the queue holds, if it would.
    fn write_refusal(&self) -> Option<Error> {
        if self.fate != Fate::Open || self.close.is_some() || self.abort.is_some() {
            Some(Error::ConnectionClosed)
        } else if self.shutdown_write {
            Some(Error::WriteShutdown)
        } else {
            None
        }
    }
}

/// A connection's mailbox; see the module docs.
///
/// In declaration order (`repr(C)`): what a message touches (the signal, the queue level's two
/// counters, the settings, the inbox's pointer, the staged length) first, next to the
/// connection's counters in [`Shared`](crate::connection::Shared).
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Mailbox {
    signal: Signal,
    /// Total bytes ever queued: grown by handles with one compare-and-swap per post
    /// ([`Mailbox::reserve`]), under the inbox lock or, for the connection's own callbacks'
    /// writes, without it (see `own`); set back to `sent` by the driver when the connection
    /// ends.
    posted: AtomicUsize,
    /// Bytes the driver has taken off the queue (written or dropped); written only by it.
    sent: AtomicUsize,
    /// The server's settings: the queue bounds and the default timeouts.
    config: Arc<LifecycleConfig>,
    /// Made by the first post that needs it (most idle connections have had none: a read request
    /// is posted in [`Signal`] alone), or by the driver when it publishes that the connection is
    /// closing or ended, so that a handle posting after that finds the fate published. Before
    /// it is made, it holds what a new [`Inbox`] holds.
    inbox: OnceBox<Mutex<Inbox>>,
    /// The length of the inbox's staged bytes, mirrored whenever they change (under the inbox
    /// lock), so that a frame layer can ask before it encodes without taking the lock.
    staged_len: AtomicUsize,
    /// The driver's task (see [`Mailbox::set_task`]).
    task: OnceLock<tokio::task::Id>,
    /// Writers waiting for room: signalled when the queue drains to the low mark or below the
    /// limit, and when the connection closes. Made by the first writer that waits (most
    /// connections never have one).
    room: OnceBox<Notify>,
}

impl Mailbox {
    pub(crate) fn new(config: Arc<LifecycleConfig>) -> Self {
        Mailbox {
            inbox: OnceBox::new(),
            task: OnceLock::new(),
            // Sealed until the connection is established (see `Signal`).
            signal: Signal::sealed(),
            posted: AtomicUsize::new(0),
            sent: AtomicUsize::new(0),
            staged_len: AtomicUsize::new(0),
            room: OnceBox::new(),
            config,
        }
    }

    /// The inbox, locked; made first if nothing made it yet.
    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        lock(self.inbox.get_or_init(Box::default))
    }

    /// The inbox, locked, if it was made: a reader that finds none knows what a new one holds.
    fn made_inbox(&self) -> Option<MutexGuard<'_, Inbox>> {
        self.inbox.get().map(lock)
    }

    /// Applies `change` to the inbox and wakes the driver.
    fn post<T>(&self, change: impl FnOnce(&mut Inbox) -> T) -> T {
        let result = change(&mut self.inbox());
        self.signal.notify(INBOX);
        result
    }

    /// Wakes writers waiting for room, if any ever waited. The fence pairs with the one in
    /// [`Mailbox::room`]: either this sees the room a first writer made, or that writer sees the
    /// state this call publishes (a store-then-load on both sides needs both fences).
    fn notify_room(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if let Some(room) = self.room.get() {
            room.notify_waiters();
        }
    }

    /// What a writer waiting for room waits on (see [`Mailbox::notify_room`] for the fence).
    pub(crate) fn room(&self) -> &Notify {
        let room = self.room.get_or_init(Box::default);
        std::sync::atomic::fence(Ordering::SeqCst);
        room
    }

    /// The connection's own task, set once by its driver: waiting for room there would never end.
    pub(crate) fn set_task(&self, task: tokio::task::Id) {
        // Set once, by the driver before its first callback; a second call changes nothing.
        let _ = self.task.set(task);
    }

    /// Whether the caller runs on the connection's own task.
    pub(crate) fn on_own_task(&self) -> bool {
        let current = tokio::task::try_id();
        current.is_some() && current == self.task.get().copied()
    }

    /// Bytes queued and not yet written. `sent` is read first and only grows, and `posted` read
    /// after it is at least as large as it was then, so the level can only be too high, never
    /// too low (under the inbox lock `posted` still moves with the connection's own writes, see
    /// `own`).
    fn level(&self, _locked: &Inbox) -> usize {
        let sent = self.sent.load(Ordering::SeqCst);
        self.posted.load(Ordering::SeqCst) - sent
    }

    pub(crate) fn request_read(&self) {
        self.signal.notify(READ);
    }

    pub(crate) fn send_urgent(&self, byte: u8) -> Result<(), Error> {
        self.post(|inbox| match inbox.write_refusal() {
            Some(refused) => Err(refused),
            None => {
                inbox.urgent.get_or_insert_with(Box::default).push(byte);
                Ok(())
            }
        })
    }

    pub(crate) fn request_urgent(&self) {
        self.post(|inbox| inbox.urgent_wanted = true);
    }

    /// Half-closes: the staged bytes are queued (past the limit, as the last word is), then
    /// writes are refused.
    pub(crate) fn shutdown_write(&self) {
        self.post(|inbox| {
            if inbox.write_refusal().is_none() {
                // Past the limit: nothing is refused without a limit.
                let _ = self.queue_staged(inbox, None);
            }
            inbox.shutdown_write = true;
            // Under the lock, before the post's wake-up: a write that finds the mark clear
            // (and no other) comes before this in the queue.
            self.signal.shut_write();
        });
        self.notify_room();
    }

    /// Asks for a graceful close reported with `reason` (the first close asked for wins). The
    /// staged bytes are queued first (past the limit, as a goodbye is): they were posted before.
    pub(crate) fn close(&self, reason: ClosureReason) {
        // Weak handles are refused from now on, as they will be once the driver takes this.
        self.signal.seal();
        self.post(|inbox| {
            if inbox.write_refusal().is_none() {
                // Past the limit: nothing is refused without a limit.
                let _ = self.queue_staged(inbox, None);
            }
            inbox.close.get_or_insert(reason);
        });
        self.notify_room();
    }

    /// Asks the driver to abort with `reason`; `true` unless the connection already decided how
    /// it ends (or an abort was asked before), so a caller counts only what it really aborted.
    pub(crate) fn abort(&self, reason: ClosureReason) -> bool {
        self.signal.seal();
        let requested = self.post(|inbox| {
            let take = inbox.fate != Fate::Ended && inbox.abort.is_none();
            if take {
                inbox.abort = Some(reason);
            }
            take
        });
        // Writers waiting for room learn at once that none will come.
        self.notify_room();
        requested
    }

    pub(crate) fn notify_shutdown(&self) {
        self.post(|inbox| inbox.shutdown_notice = true);
    }

    pub(crate) fn set_timeouts(&self, timeouts: Timeouts) {
        self.post(|inbox| {
            inbox.timeouts = Some(Box::new(timeouts));
            inbox.timeouts_changed = true;
        });
    }

    pub(crate) fn timeouts(&self) -> Timeouts {
        match self
            .made_inbox()
            .as_ref()
            .and_then(|inbox| inbox.timeouts.as_ref())
        {
            Some(timeouts) => **timeouts,
            None => self.config.timeouts,
        }
    }

    pub(crate) fn queued_bytes(&self) -> usize {
        // Under the lock, if there is one, so that a write in flight through the inbox is
        // counted whole; the connection's own writes need none (see `own`).
        let _inbox = self.made_inbox();
        let sent = self.sent.load(Ordering::SeqCst);
        self.posted.load(Ordering::SeqCst) - sent
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.made_inbox().is_some_and(|inbox| {
            inbox.fate != Fate::Open || inbox.close.is_some() || inbox.abort.is_some()
        })
    }

    /// `Ok(true)` if a writer may go on, `Ok(false)` if it must wait for room, or why it never
    /// will.
    pub(crate) fn has_room(&self) -> Result<bool, Error> {
        self.room_for(false)
    }

    /// As [`Mailbox::has_room`], counting the staged bytes as queued: whether a frame layer may
    /// deliver another item, whose reply it would stage. `Ok(false)` while they are staged
    /// leaves the caller to queue them ([`Mailbox::flush_staged`]), after which the queue's own
    /// drain announces room.
    pub(crate) fn has_room_to_stage(&self) -> Result<bool, Error> {
        self.room_for(true)
    }

    /// The rule of both: below the high mark (or back at the low one) and the limit, counting
    /// the staged bytes if `with_staged`.
    fn room_for(&self, with_staged: bool) -> Result<bool, Error> {
        let inbox = self.inbox();
        if let Some(refused) = inbox.write_refusal() {
            return Err(refused);
        }
        let staged = if with_staged { staged_cost(&inbox) } else { 0 };
        let queued = self.level(&inbox) + staged;
        let limits = &self.config.limits;
        Ok(!limits.is_high(queued, self.signal.is_high()) && queued < limits.limit)
    }

    pub(crate) fn limits(&self) -> WriteLimits {
        self.config.limits
    }

    pub(crate) fn add_handle(&self) {
        self.signal.add_handle();
    }

    pub(crate) fn drop_handle(&self) {
        // The last handle gone wakes the driver, to re-check the lifetime rule.
        self.signal.drop_handle();
    }

    /// Counts a handle made from a weak one: `false` (nothing counted) before the connection is
    /// established and once it is closing, including when the lifetime rule closed it.
    pub(crate) fn try_upgrade(&self) -> bool {
        self.signal.try_upgrade()
    }

    /// Whether weak handles can no longer be upgraded.
    pub(crate) fn is_sealed(&self) -> bool {
        self.signal.is_sealed()
    }

    // The driver's side.

    /// Takes what was posted since the last take (one atomic operation when nothing but a read
    /// request was: inlined into the driver's turn, which most often finds no more).
    #[inline]
    pub(crate) fn take_posted(&self, writes: &mut VecDeque<Bytes>) -> Taken {
        let posted = self.signal.consume();
        if posted & INBOX != 0 {
            return Taken::Requests(self.take_requests(posted, writes));
        }
        if posted & READ != 0 {
            Taken::Read
        } else {
            // Nothing, or a handle dropped: only the handle count can have moved.
            Taken::Nothing
        }
    }

    /// What [`Mailbox::take_posted`] takes when the inbox was `posted` to (kept out of line).
    #[inline(never)]
    fn take_requests(&self, posted: usize, writes: &mut VecDeque<Bytes>) -> Requests {
        let mut requests = self.take(writes);
        requests.read = posted & READ != 0;
        requests
    }

    /// Takes the urgent bytes posted (after a take that said there were some).
    pub(crate) fn take_urgent(&self, urgent: &mut Vec<u8>) {
        if let Some(posted) = self
            .made_inbox()
            .as_mut()
            .and_then(|inbox| inbox.urgent.as_mut())
        {
            urgent.append(posted);
        }
    }

    pub(crate) fn handles(&self) -> usize {
        self.signal.handles()
    }

    /// The connection is established: weak handles can be upgraded from now until it closes.
    pub(crate) fn open_for_upgrades(&self) {
        self.signal.unseal();
    }

    /// Confirms the lifetime rule's decision that nothing keeps the connection open: `true`, and
    /// no weak handle can be upgraded any more, if no handle is counted and nothing was posted
    /// since the last take; `false` if something changed meanwhile (take again).
    pub(crate) fn seal_unreferenced(&self) -> bool {
        self.signal.seal_unreferenced()
    }

    /// Takes every request posted so far, appending the writes to the driver's queue (the inbox
    /// keeps its buffer's capacity for the next posts); urgent bytes are left for
    /// [`Mailbox::take_urgent`].
    fn take(&self, writes: &mut VecDeque<Bytes>) -> Requests {
        let mut inbox = self.inbox();
        let timeouts = std::mem::take(&mut inbox.timeouts_changed)
            .then(|| inbox.timeouts.clone())
            .flatten();
        let queued = std::mem::take(&mut inbox.writes_len);
        if let [_] = inbox.writes[..] {
            // The one buffer a turn usually takes, without a drain.
            if let Some(data) = inbox.writes.pop() {
                writes.push_back(data);
            }
        } else if queued > 0 && writes.is_empty() {
            // Several buffers for an empty queue (a broadcast's lines): the two swap their
            // storage, and the inbox keeps the queue's capacity for the next posts.
            let empty = Vec::from(std::mem::take(writes));
            *writes = VecDeque::from(std::mem::replace(&mut inbox.writes, empty));
        } else if queued > 0 {
            // A loop: `extend` reserves first, which costs more for the one buffer a turn
            // usually takes.
            for data in inbox.writes.drain(..) {
                writes.push_back(data);
            }
        }
        Requests {
            read: false,
            queued,
            crossed_high: std::mem::take(&mut inbox.crossed_high),
            urgent_pending: false,
            urgent_posted: inbox
                .urgent
                .as_ref()
                .is_some_and(|urgent| !urgent.is_empty()),
            urgent_wanted: std::mem::take(&mut inbox.urgent_wanted),
            shutdown_write: inbox.shutdown_write,
            close: inbox.close,
            abort: inbox.abort,
            shutdown_notice: std::mem::take(&mut inbox.shutdown_notice),
            timeouts,
            handles: self.handles(),
        }
    }

    /// The abort asked for, if any (the handshake's check, before the lifecycle runs). Marks
    /// what was posted as seen; the rest stays in the inbox for the lifecycle.
    pub(crate) fn pending_abort(&self) -> Option<ClosureReason> {
        self.signal.acknowledge();
        self.made_inbox().and_then(|inbox| inbox.abort)
    }

    /// Whether a request arrived since the last take (without registering a waker).
    pub(crate) fn has_posted(&self) -> bool {
        self.signal.is_pending()
    }

    /// Whether a request arrived since the last take; registers the driver's waker if not.
    pub(crate) fn poll_posted(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.signal.poll(cx)
    }

    /// The driver runs again after a wait.
    pub(crate) fn unpark(&self) {
        self.signal.unpark();
    }

    /// `bytes` of the queue were written or dropped; wakes writers waiting for room when the
    /// queue drains below the limit.
    pub(crate) fn publish_sent(&self, bytes: usize) {
        let sent = self.sent.fetch_add(bytes, Ordering::SeqCst) + bytes;
        // `posted` is read after `sent` moved: a writer refused before saw a level no higher than
        // `before`, so a crossing below the limit that it waits for is never missed.
        let after = self.posted.load(Ordering::SeqCst) - sent;
        if after < self.config.limits.limit && after + bytes >= self.config.limits.limit {
            self.notify_room();
        }
    }

    /// Publishes what handles may know of the connection's fate: closing (writes refused, weak
    /// handles not upgraded), ended (nothing is taken any more, an abort is no longer counted,
    /// and the queue is dropped), and whether the queue is high. Only the driver calls this,
    /// from one place, whenever the lifecycle's [`Snapshot`] changes.
    ///
    /// Returns the abort counted before the end was published, if there was one: the lifecycle
    /// lets it win over the reason it decided (abort-all counted it as aborted).
    pub(crate) fn publish(&self, snapshot: Snapshot) -> Option<ClosureReason> {
        let mut counted_abort = None;
        match snapshot.fate {
            Fate::Open => {}
            Fate::Closing => {
                self.signal.seal();
                self.inbox().fate = Fate::Closing;
            }
            Fate::Ended => {
                self.signal.seal();
                let mut inbox = self.inbox();
                inbox.fate = Fate::Ended;
                inbox.writes.clear();
                inbox.writes_len = 0;
                inbox.staged = BytesMut::new();
                self.staged_len.store(0, Ordering::Relaxed);
                // The untaken writes and the driver's own queue are dropped: nothing is queued
                // any more.
                self.posted
                    .store(self.sent.load(Ordering::SeqCst), Ordering::SeqCst);
                counted_abort = inbox.abort;
            }
        }
        let high = snapshot.high && snapshot.fate != Fate::Ended;
        self.signal.set_high(high);
        if !high || snapshot.fate != Fate::Open {
            self.notify_room();
        }
        counted_abort
    }

    /// Publishes the connection as closing, as the driver does (for the tests of what relies on
    /// it).
    #[cfg(test)]
    pub(crate) fn publish_closing(&self) {
        self.publish(Snapshot {
            fate: Fate::Closing,
            high: false,
        });
    }

    /// Publishes the connection's end, as the driver does.
    #[cfg(test)]
    pub(crate) fn mark_ended(&self) {
        self.publish(Snapshot {
            fate: Fate::Ended,
            high: false,
        });
    }
}

#[cfg(test)]
mod tests;
