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
#[derive(Debug)]
pub(crate) struct Mailbox {
    /// Made by the first post that needs it (most idle connections have had none: a read request
    /// is posted in [`Signal`] alone), or by the driver when it publishes that the connection is
    /// closing or ended, so that a handle posting after that finds the fate published. Before
    /// it is made, it holds what a new [`Inbox`] holds.
    inbox: OnceBox<Mutex<Inbox>>,
    /// The driver's task (see [`Mailbox::set_task`]).
    task: OnceLock<tokio::task::Id>,
    signal: Signal,
    /// Total bytes ever queued: grown by handles with one compare-and-swap per post
    /// ([`Mailbox::reserve`]), under the inbox lock or, for the connection's own callbacks'
    /// writes, without it (see `own`); set back to `sent` by the driver when the connection
    /// ends.
    posted: AtomicUsize,
    /// Bytes the driver has taken off the queue (written or dropped); written only by it.
    sent: AtomicUsize,
    /// The length of the inbox's staged bytes, mirrored whenever they change (under the inbox
    /// lock), so that a frame layer can ask before it encodes without taking the lock.
    staged_len: AtomicUsize,
    /// Writers waiting for room: signalled when the queue drains to the low mark or below the
    /// limit, and when the connection closes. Made by the first writer that waits (most
    /// connections never have one).
    room: OnceBox<Notify>,
    /// The server's settings: the queue bounds and the default timeouts.
    config: Arc<LifecycleConfig>,
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

    /// Queues `data`, or gives it back with the reason it was refused.
    pub(crate) fn write(&self, data: Bytes) -> Result<(), (Error, Bytes)> {
        match self.queue_own(data) {
            Ok(_) => Ok(()),
            Err(data) => self.queue(data, None).map(drop),
        }
    }

    /// As [`Mailbox::write`]; queued, says whether the queue is then at or above its high mark.
    pub(crate) fn write_is_high(&self, data: Bytes) -> Result<bool, (Error, Bytes)> {
        let level = match self.queue_own(data) {
            Ok(level) => level,
            Err(data) => self.queue(data, None)?,
        };
        Ok(level >= self.config.limits.high)
    }

    /// Runs `poll` (one poll of one of this connection's callbacks, on its driver's task) so
    /// that what it writes to this connection is appended to `queue` (the driver's) without the
    /// inbox lock where the order allows (see `own`); returns `poll`'s result and what those
    /// writes count for in the queue, which the driver's lifecycle must learn.
    ///
    /// Such a write is not counted as crossing the high mark: the driver sends nothing while it
    /// polls, so its lifecycle finds the queue at the mark itself when it next looks.
    #[inline(always)]
    pub(crate) fn own_writes<R>(
        &self,
        queue: &mut VecDeque<Bytes>,
        poll: impl FnOnce() -> R,
    ) -> (R, usize) {
        own::run(self, queue, poll)
    }

    /// Queues `data` on the list of this connection's own writes, if one of its callbacks is
    /// being polled on this thread and nothing needs the inbox: returns what the queue then
    /// holds, or gives `data` back for the inbox to decide (a refusal included).
    #[inline]
    fn queue_own(&self, data: Bytes) -> Result<usize, Bytes> {
        // Staged bytes go first, and only the inbox moves them.
        if !own::is_current(self)
            || data.is_empty()
            || !self.signal.admits_own_write()
            || self.staged_len.load(Ordering::Relaxed) != 0
        {
            return Err(data);
        }
        let cost = queued_cost(data.len());
        let Ok(before) = self.reserve_below(cost, Some(self.config.limits.limit)) else {
            return Err(data);
        };
        match own::push(data, cost) {
            Ok(()) => Ok(before + cost),
            Err(data) => {
                // Not appended after all: the reservation is given back (the inbox reserves
                // again).
                self.posted.fetch_sub(cost, Ordering::SeqCst);
                Err(data)
            }
        }
    }

    /// Queues clones of `buffers`, in order, each as [`Mailbox::write`] would (refused once the
    /// queue holds its limit), with one lock and one wake-up for all of them: a broadcast of a
    /// batch posts once per member, not once per buffer. Returns whether the queue is then at or
    /// above its high mark, or the refusal with how many buffers were queued before it.
    pub(crate) fn write_batch(&self, buffers: &[Bytes]) -> Result<bool, (Error, usize)> {
        let mut inbox = self.inbox();
        if let Some(refused) = inbox.write_refusal() {
            return Err((refused, 0));
        }
        let limit = self.config.limits.limit;
        // The staged bytes go first, as ahead of any write.
        let staged = staged_cost(&inbox);
        let start = inbox.writes.len();
        // One pass: the buffers the level takes are appended as they are counted, and the cost
        // is reserved after, with one compare-and-swap from the level they were counted on. If
        // an own write of the connection moved it meanwhile, they are taken out and counted
        // again (under the lock, nothing else sees them in between).
        let sent = self.sent.load(Ordering::SeqCst);
        let mut posted = self.posted.load(Ordering::SeqCst);
        let (before, level, taken) = loop {
            let before = posted - sent;
            if before >= limit {
                return Err((self.full(before), 0));
            }
            let mut level = before + staged;
            let mut taken = buffers.len();
            for (index, data) in buffers.iter().enumerate() {
                if index > 0 && level >= limit {
                    taken = index;
                    break;
                }
                if !data.is_empty() {
                    level += queued_cost(data.len());
                    inbox.writes.push(data.clone());
                }
            }
            match self.posted.compare_exchange(
                posted,
                posted + (level - before),
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break (before, level, taken),
                Err(now) => {
                    inbox.writes.truncate(start);
                    posted = now;
                }
            }
        };
        if staged > 0 {
            let staged = std::mem::take(&mut inbox.staged).freeze();
            inbox.writes.insert(start, staged);
            self.staged_len.store(0, Ordering::Relaxed);
        }
        self.add_to_inbox(&mut inbox, before, level - before);
        drop(inbox);
        if level != before {
            self.signal.notify(INBOX);
        }
        if taken < buffers.len() {
            return Err((self.full(level), taken));
        }
        Ok(level >= self.config.limits.high)
    }

    /// Queues `data` whatever the queue holds and asks for a graceful close with `reason`, or
    /// gives `data` back if the connection takes no more writes: the last word, delivered before
    /// FIN.
    pub(crate) fn goodbye(&self, data: Bytes, reason: ClosureReason) -> Result<(), (Error, Bytes)> {
        let result = self.queue(data, Some(reason));
        self.notify_room();
        result.map(drop)
    }

    /// Queues `data`, after the staged bytes, through the inbox; with a close `reason`, past the
    /// limit too, and the close is asked for in the same step. Returns what the queue then
    /// holds.
    fn queue(&self, data: Bytes, close: Option<ClosureReason>) -> Result<usize, (Error, Bytes)> {
        let mut inbox = self.inbox();
        if let Some(refused) = inbox.write_refusal() {
            return Err((refused, data));
        }
        let limit = if close.is_some() {
            // A close, as `close` asks it: weak handles are refused from now on.
            self.signal.seal();
            inbox.close = close;
            None
        } else {
            Some(self.config.limits.limit)
        };
        let written = if data.is_empty() {
            0
        } else {
            queued_cost(data.len())
        };
        let cost = staged_cost(&inbox) + written;
        let before = match self.reserve_below(cost, limit) {
            Ok(before) => before,
            Err(level) => return Err((self.full(level), data)),
        };
        if Self::append_staged(&mut inbox) {
            self.staged_len.store(0, Ordering::Relaxed);
        }
        if written > 0 {
            inbox.writes.push(data);
        }
        self.add_to_inbox(&mut inbox, before, cost);
        drop(inbox);
        if close.is_some() || cost > 0 {
            self.signal.notify(INBOX);
        }
        Ok(before + cost)
    }

    /// The refusal of a write to a queue that holds `queued` bytes, at or past its limit.
    fn full(&self, queued: usize) -> Error {
        Error::WriteQueueFull {
            queued,
            limit: self.config.limits.limit,
        }
    }

    /// [`Mailbox::reserve`] of a fixed `cost`, refused if the queue holds `limit` or more.
    fn reserve_below(&self, cost: usize, limit: Option<usize>) -> Result<usize, usize> {
        self.reserve(|level| match limit {
            Some(limit) if level >= limit => Err(level),
            _ => Ok((cost, ())),
        })
        .map(|(before, _)| before)
    }

    /// Adds to what was posted the cost that `take` decides from the queue's level (`Err`
    /// refuses, with the level, and adds nothing); returns the level before and what `take`
    /// returned with the cost.
    ///
    /// One compare-and-swap: writes posted at once through the inbox (under its lock) and by the
    /// connection's own callbacks (without it, see `own`) never both pass a check of the same
    /// level, so the queue never exceeds its limit by more than one write. `take` runs again if
    /// another write moved the level meanwhile.
    fn reserve<T>(
        &self,
        mut take: impl FnMut(usize) -> Result<(usize, T), usize>,
    ) -> Result<(usize, (usize, T)), usize> {
        // `sent` first: `posted` read after it is at least as large, so the level is only ever
        // too high.
        let sent = self.sent.load(Ordering::SeqCst);
        let mut posted = self.posted.load(Ordering::SeqCst);
        loop {
            let level = posted - sent;
            let (cost, taken) = take(level)?;
            if cost == 0 {
                return Ok((level, (cost, taken)));
            }
            match self.posted.compare_exchange_weak(
                posted,
                posted + cost,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Ok((level, (cost, taken))),
                Err(now) => posted = now,
            }
        }
    }

    /// Counts `cost`, reserved from a queue that held `before`, as the inbox's untaken writes,
    /// noting a crossing of the high mark.
    fn add_to_inbox(&self, inbox: &mut Inbox, before: usize, cost: usize) {
        let high = self.config.limits.high;
        if before < high && before + cost >= high {
            inbox.crossed_high = true;
        }
        inbox.writes_len += cost;
    }

    /// Moves the staged bytes, if any, into the untaken writes, as one buffer (their cost
    /// reserved by the caller, which also clears `staged_len`); `true` if there were some.
    fn append_staged(inbox: &mut Inbox) -> bool {
        if inbox.staged.is_empty() {
            return false;
        }
        let staged = std::mem::take(&mut inbox.staged).freeze();
        inbox.writes.push(staged);
        true
    }

    /// Queues the staged bytes, if any, as one write through the inbox, refused (and left
    /// staged) if the queue holds `limit` or more; returns the refusal's level.
    fn queue_staged(&self, inbox: &mut Inbox, limit: Option<usize>) -> Result<(), usize> {
        let cost = staged_cost(inbox);
        if cost == 0 {
            return Ok(());
        }
        let before = self.reserve_below(cost, limit)?;
        Self::append_staged(inbox);
        self.staged_len.store(0, Ordering::Relaxed);
        self.add_to_inbox(inbox, before, cost);
        Ok(())
    }

    /// Runs `stage` on the connection's staged bytes: what it appends goes out ahead of the
    /// next write of any path (or with [`Mailbox::flush_staged`]), as part of one write. Refused
    /// (and `stage` not run) once the connection takes no more writes, and while the queue and
    /// the staged bytes together are at the queue's limit: what is staged is bounded as the queue
    /// is, by the limit and the last piece taken below it.
    pub(crate) fn stage<T>(&self, stage: impl FnOnce(&mut BytesMut) -> T) -> Result<T, Error> {
        let mut inbox = self.inbox();
        if let Some(refused) = inbox.write_refusal() {
            return Err(refused);
        }
        let level = self.level(&inbox) + staged_cost(&inbox);
        if level >= self.config.limits.limit {
            return Err(self.full(level));
        }
        let staged = stage(&mut inbox.staged);
        self.staged_len.store(inbox.staged.len(), Ordering::Relaxed);
        Ok(staged)
    }

    /// Whether the queue and the staged bytes are at the queue's limit, as
    /// [`Mailbox::stage`] would find: a frame layer's check before it encodes an item, without
    /// the inbox lock. It can be late by a stage racing it from another task; `stage` itself
    /// checks again, exactly.
    pub(crate) fn full_for_staging(&self) -> Option<Error> {
        // `sent` first: `posted` read after it is at least as large, and only too high.
        let sent = self.sent.load(Ordering::SeqCst);
        let level = self.posted.load(Ordering::SeqCst) - sent;
        let staged = match self.staged_len.load(Ordering::Relaxed) {
            0 => 0,
            len => queued_cost(len),
        };
        (level + staged >= self.config.limits.limit).then(|| self.full(level + staged))
    }

    /// Queues the staged bytes as one write. If the queue is at its limit, they stay staged if
    /// `keep` (the refusal then carries no bytes), and are given back otherwise; a connection
    /// that takes no more writes gives them back.
    pub(crate) fn flush_staged(&self, keep: bool) -> Result<(), (Error, Bytes)> {
        let mut inbox = self.inbox();
        if inbox.staged.is_empty() {
            return Ok(());
        }
        if let Some(refused) = inbox.write_refusal() {
            self.staged_len.store(0, Ordering::Relaxed);
            return Err((refused, std::mem::take(&mut inbox.staged).freeze()));
        }
        if let Err(level) = self.queue_staged(&mut inbox, Some(self.config.limits.limit)) {
            let refused = if keep {
                Bytes::new()
            } else {
                self.staged_len.store(0, Ordering::Relaxed);
                std::mem::take(&mut inbox.staged).freeze()
            };
            return Err((self.full(level), refused));
        }
        drop(inbox);
        self.signal.notify(INBOX);
        Ok(())
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
