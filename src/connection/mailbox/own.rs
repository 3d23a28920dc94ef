//! Writes a connection's own callbacks make, queued without the inbox lock.
//!
//! While the driver polls one of its connection's callbacks ([`Mailbox::own_writes`]), this
//! thread knows that connection and the driver's write queue: a write to it from code running
//! in that poll (the callback itself, or anything it calls) goes straight to the end of that
//! queue after one atomic reservation of its cost, ahead of anything the driver takes from the
//! inbox later. No lock, no wake-up, no inbox, no copy into a list between.
//!
//! Why the order is kept (the one order of bytes [`Connection::write`](crate::Connection::write)
//! promises): such a write is taken only while the inbox holds nothing untaken (no
//! [`INBOX`](super::signal) mark), no staged bytes, and no refusal is possible without the lock
//! (see [`Signal::admits_own_write`](super::signal::Signal::admits_own_write)). Whatever the
//! driver took before the callback is ahead in its queue already; whatever another task posts to
//! the inbox after the check comes after this write, as the driver takes the inbox only after
//! the poll. A write that finds a mark goes through the inbox, behind what is there.

use std::cell::Cell;
use std::collections::VecDeque;
use std::ptr;

use bytes::Bytes;

use super::Mailbox;

/// Which connection's callback this thread is polling, and its driver's queue.
#[derive(Clone, Copy)]
struct Current {
    /// The address of its mailbox, 0 for none: compared, never followed.
    mailbox: usize,
    /// The driver's write queue, null while nothing is polled (and while a write appends to
    /// it): see [`run`] for why following it is sound.
    queue: *mut VecDeque<Bytes>,
}

const NONE: Current = Current {
    mailbox: 0,
    queue: ptr::null_mut(),
};

thread_local! {
    /// Plain values with no destructor, so that reaching them is one access to the thread's
    /// storage.
    static CURRENT: Cell<Current> = const { Cell::new(NONE) };
    /// What the writes appended during the current poll count for in the queue.
    static COST: Cell<usize> = const { Cell::new(0) };
}

/// The thread's part (`LocalKey::get` and `set` of a `Cell` take a slower path that allows for
/// a lazy initial value, which these do not have).
#[inline(always)]
fn current() -> Current {
    CURRENT.with(Cell::get)
}

#[inline(always)]
fn set_current(current: Current) {
    CURRENT.with(|cell| cell.set(current));
}

fn address(mailbox: &Mailbox) -> usize {
    ptr::from_ref(mailbox) as usize
}

/// Whether one of `mailbox`'s callbacks is being polled on this thread (and no write to it is
/// being appended already).
#[inline]
pub(super) fn is_current(mailbox: &Mailbox) -> bool {
    let current = current();
    current.mailbox == address(mailbox) && !current.queue.is_null()
}

/// Appends a write of `cost` to the queue of the connection whose callback is being polled:
/// `Err` gives it back if [`is_current`] does not hold.
#[inline]
#[allow(unsafe_code)]
pub(super) fn push(data: Bytes, cost: usize) -> Result<(), Bytes> {
    let current = current();
    let queue = current.queue;
    if queue.is_null() {
        return Err(data);
    }
    // Taken out while it is followed: a write made meanwhile (by the allocator growing the
    // queue, say) finds none and goes through the inbox, so only one reference to the queue
    // made from the pointer exists at a time.
    set_current(NONE);
    // SAFETY: `queue` is not null, so `run` set it on this thread from the `&mut VecDeque` it
    // holds for the whole poll that is running (it is reset before `run` returns or unwinds),
    // and `run` does not touch that borrow until then: the queue is live and this is the only
    // reference to it (the pointer was taken out of the cell just above).
    unsafe { (*queue).push_back(data) };
    set_current(current);
    COST.with(|total| total.set(total.get() + cost));
    Ok(())
}

/// Runs `poll` with this thread's writes to `mailbox` appended to `queue`, and returns what
/// they count for in it. A poll inside another's (which no driver does) does not take the
/// thread's part: its writes go through the inbox.
///
/// Sound because the pointer to `queue` is only followed by [`push`], on this thread, while
/// `poll` runs: it is set here from the exclusive borrow that this call holds and does not use
/// until `poll` returns, and reset by a drop guard when `poll` returns or unwinds, before the
/// borrow ends.
#[inline(always)]
pub(super) fn run<R>(
    mailbox: &Mailbox,
    queue: &mut VecDeque<Bytes>,
    poll: impl FnOnce() -> R,
) -> (R, usize) {
    if current().mailbox != 0 {
        return (poll(), 0);
    }
    set_current(Current {
        mailbox: address(mailbox),
        queue: ptr::from_mut(queue),
    });
    let leave = Leave;
    let result = poll();
    let cost = COST.with(|total| total.replace(0));
    drop(leave);
    (result, cost)
}

/// Resets the thread's part when `poll` returns or unwinds.
struct Leave;

impl Drop for Leave {
    #[inline(always)]
    fn drop(&mut self) {
        set_current(NONE);
        // Taken already when `poll` returned; if it unwound, no one wants it.
        COST.with(|total| total.set(0));
    }
}
