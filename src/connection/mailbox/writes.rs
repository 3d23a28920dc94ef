//! Posting writes: the queue's level and limit, the staged bytes, and the two ways a write is
//! queued (through the inbox, or straight to the driver's queue for the connection's own
//! callbacks, see `own`).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use super::signal::INBOX;
use super::{own, staged_cost, Inbox, Mailbox};
use crate::closure::ClosureReason;
use crate::connection::lifecycle::queued_cost;
use crate::error::Error;

impl Mailbox {
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
        let Ok(before) = self.reserve(cost, Some(self.config.limits.limit)) else {
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
        let before = match self.reserve(cost, limit) {
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

    /// Adds `cost` to what was posted, unless the queue holds `limit` or more (whatever it holds
    /// with `None`); returns the level before, or the level that refused it.
    ///
    /// One compare-and-swap: writes posted at once through the inbox (under its lock) and by the
    /// connection's own callbacks (without it, see `own`) never both pass a check of the same
    /// level, so the queue never exceeds its limit by more than one write. The check is made
    /// again if another write moved the level meanwhile. (A batch does the same in its own loop,
    /// [`Mailbox::write_batch`], as it counts the buffers it takes from the level.)
    fn reserve(&self, cost: usize, limit: Option<usize>) -> Result<usize, usize> {
        // `sent` first: `posted` read after it is at least as large, so the level is only ever
        // too high.
        let sent = self.sent.load(Ordering::SeqCst);
        let mut posted = self.posted.load(Ordering::SeqCst);
        loop {
            let level = posted - sent;
            if limit.is_some_and(|limit| level >= limit) {
                return Err(level);
            }
            if cost == 0 {
                return Ok(level);
            }
            match self.posted.compare_exchange_weak(
                posted,
                posted + cost,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Ok(level),
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
    pub(super) fn queue_staged(
        &self,
        inbox: &mut Inbox,
        limit: Option<usize>,
    ) -> Result<(), usize> {
        let cost = staged_cost(inbox);
        if cost == 0 {
            return Ok(());
        }
        let before = self.reserve(cost, limit)?;
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
}
