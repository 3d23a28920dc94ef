//! The wake-up from handles to a connection's driver, and the count of the application's
//! handles, in one atomic word.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

/// The wake-up from handles to the driver, the requests cheap enough to post without the inbox
/// lock, and the count of the application's handles (in the same word, see below).
///
/// Invariant: a request posted before [`Signal::notify`] is seen by the driver's next
/// [`Mailbox::take_posted`](super::Mailbox::take_posted) after `notify` returns. The driver takes
/// the inbox at the top of every turn, clearing `PENDING` first ([`Signal::consume`]), so a
/// request posted after the take sets it again. While the driver runs (`PARKED` clear) a notify
/// only sets `PENDING` and costs no task wake-up; once it has a waker registered and has set
/// `PARKED` (in [`Signal::poll`], which only parks with `PENDING` clear), the first notify wakes
/// it.
///
/// The same word counts the application's handles (above [`HANDLE_SHIFT`]) and says whether
/// weak handles may still be upgraded ([`SEALED`]) and whether the write queue is high
/// ([`HIGH`]). The lifetime rule closes a connection when no
/// handle is left and nothing is pending; a [`WeakConnection`](crate::WeakConnection) upgraded
/// at that moment must not get a handle to a connection the rule is closing. So the driver
/// confirms the rule's decision by sealing the word only if it holds no handle and no untaken
/// post ([`Signal::seal_unreferenced`]), and an upgrade adds a handle only if the word is not
/// sealed ([`Signal::try_upgrade`]): both are one compare-and-swap on the one word, so exactly
/// one of them wins. A post made between the driver's take and its seal (a handle that wrote
/// or asked for a read, then dropped) sets `PENDING`, so the seal fails and the driver takes it.
#[derive(Debug)]
pub(super) struct Signal {
    state: AtomicUsize,
    waker: AtomicWaker,
}

/// Something was posted since the driver last took the inbox.
const PENDING: usize = 1;
/// The driver is waiting: a post must wake it.
const PARKED: usize = 2;
/// A read was requested (posted without the inbox lock).
pub(super) const READ: usize = 4;
/// The inbox has something to take.
pub(super) const INBOX: usize = 8;
/// Weak handles can no longer be upgraded: the connection is not established yet, or it is
/// closing (for any reason, the lifetime rule included).
const SEALED: usize = 16;
/// The write queue is high (announced, not yet drained to the low mark); written only by the
/// driver, read by writers deciding whether to wait for room. Here rather than in a word of its
/// own because every connection carries this word anyway.
const HIGH: usize = 32;
/// Writes are shut down ([`Mailbox::shutdown_write`](super::Mailbox::shutdown_write)): set
/// once, never cleared. Kept here so that a write can be refused without the inbox lock's help
/// (see [`Signal::admits_own_write`]).
const WRITE_SHUT: usize = 64;
/// The application's counted handles are `state >> HANDLE_SHIFT`.
const HANDLE_SHIFT: u32 = 7;
/// One counted handle.
const ONE_HANDLE: usize = 1 << HANDLE_SHIFT;
/// A request posted and not yet taken.
const UNTAKEN: usize = PENDING | READ | INBOX;

impl Signal {
    /// Sealed until the connection is established: weak handles made before (from a handle
    /// [`Server::connect`](crate::Server::connect) returns) cannot be upgraded yet.
    pub(super) fn sealed() -> Self {
        Signal {
            state: AtomicUsize::new(SEALED),
            waker: AtomicWaker::new(),
        }
    }

    pub(super) fn notify(&self, post: usize) {
        // Already marked (the driver has not taken since): nothing to add, and no wake-up is
        // owed, so one load instead of a read-modify-write (a broadcast's lines after the first
        // in a turn). Still within the invariant: the take that clears these marks comes after
        // this load in the word's order, so its inbox lock comes after the caller's post (had it
        // come before, this load would see the marks it cleared).
        let marks = PENDING | post;
        if self.state.load(Ordering::Acquire) & marks == marks {
            return;
        }
        let before = self.state.fetch_or(PENDING | post, Ordering::AcqRel);
        if before & (PARKED | PENDING) == PARKED {
            self.waker.wake();
        }
    }

    /// Ready once something was posted (the mark stays until [`Signal::consume`]); otherwise
    /// parks until then.
    pub(super) fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.state.load(Ordering::Acquire) & PENDING != 0 {
            return Poll::Ready(());
        }
        // Registered on every park: a notify's wake takes the waker out, and `AtomicWaker` skips
        // the clone when the waker is the one it holds.
        self.waker.register(cx.waker());
        // Park unless a post came in meanwhile. Requests already noted (`READ`, `INBOX` without
        // `PENDING`, as the handshake leaves them) do not keep the driver awake.
        let parked = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                (state & PENDING == 0).then_some(state | PARKED)
            });
        match parked {
            Ok(_) => Poll::Pending,
            Err(_) => Poll::Ready(()),
        }
    }

    /// What was posted since the last call (`PENDING` and the request bits, with the rest of
    /// the word as it was); clears those, so a post made after this call sets them again (and
    /// wakes a parked driver).
    pub(super) fn consume(&self) -> usize {
        self.state.fetch_and(!UNTAKEN, Ordering::AcqRel)
    }

    /// Clears `PENDING` only: the posts were looked at, and their requests (`READ`, `INBOX`)
    /// stay for the next [`Signal::consume`].
    pub(super) fn acknowledge(&self) {
        self.state.fetch_and(!PENDING, Ordering::AcqRel);
    }

    /// Whether something was posted since the last [`Signal::consume`].
    pub(super) fn is_pending(&self) -> bool {
        self.state.load(Ordering::Acquire) & PENDING != 0
    }

    /// The driver runs again (whatever woke it): posts need not wake it until it parks again.
    pub(super) fn unpark(&self) {
        // Only the driver sets `PARKED`, so if it reads clear here it is clear: a wait that
        // ended without parking costs a load, not a read-modify-write.
        if self.state.load(Ordering::Relaxed) & PARKED != 0 {
            self.state.fetch_and(!PARKED, Ordering::AcqRel);
        }
    }

    pub(super) fn handles(&self) -> usize {
        self.state.load(Ordering::Acquire) >> HANDLE_SHIFT
    }

    /// A handle was cloned from a counted or borrowed one (never refused: the connection is
    /// referenced already, or a callback of it is running).
    pub(super) fn add_handle(&self) {
        self.state.fetch_add(ONE_HANDLE, Ordering::AcqRel);
    }

    /// A handle was dropped; wakes the driver if it was the last one, to apply the lifetime rule.
    pub(super) fn drop_handle(&self) {
        if self.state.fetch_sub(ONE_HANDLE, Ordering::AcqRel) >> HANDLE_SHIFT == 1 {
            self.notify(0);
        }
    }

    /// Adds a handle unless the word is sealed.
    pub(super) fn try_upgrade(&self) -> bool {
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                (state & SEALED == 0).then(|| state + ONE_HANDLE)
            })
            .is_ok()
    }

    /// Seals the word if no handle is counted and nothing was posted since the last take.
    pub(super) fn seal_unreferenced(&self) -> bool {
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                (state & (UNTAKEN | !(ONE_HANDLE - 1)) == 0).then_some(state | SEALED)
            })
            .is_ok()
    }

    pub(super) fn seal(&self) {
        self.state.fetch_or(SEALED, Ordering::AcqRel);
    }

    pub(super) fn unseal(&self) {
        self.state.fetch_and(!SEALED, Ordering::AcqRel);
    }

    pub(super) fn set_high(&self, high: bool) {
        if high {
            self.state.fetch_or(HIGH, Ordering::AcqRel);
        } else {
            self.state.fetch_and(!HIGH, Ordering::AcqRel);
        }
    }

    pub(super) fn is_high(&self) -> bool {
        self.state.load(Ordering::Acquire) & HIGH != 0
    }

    /// Marks writes as shut down, for [`Signal::admits_own_write`].
    pub(super) fn shut_write(&self) {
        self.state.fetch_or(WRITE_SHUT, Ordering::AcqRel);
    }

    /// Whether a write posted without the inbox lock may be taken (see
    /// [`Mailbox::queue_own`](super::Mailbox::queue_own)): the connection is not sealed (sealed,
    /// it is closing, or a close or abort was asked for, or it is not established yet), writes
    /// are not shut down, and the inbox has nothing untaken that a write would have to follow.
    /// Otherwise the inbox decides, under its lock.
    pub(super) fn admits_own_write(&self) -> bool {
        self.state.load(Ordering::Acquire) & (SEALED | INBOX | WRITE_SHUT) == 0
    }

    pub(super) fn is_sealed(&self) -> bool {
        self.state.load(Ordering::Acquire) & SEALED != 0
    }
}
