//! What ended a connection's wait, and what the pump has left to await after it.

use std::io;

use bytes::BytesMut;

use super::urgent::Watched;

/// What ended a wait.
pub(super) enum Wake {
    /// A handle posted something.
    Posted,
    Read(io::Result<BytesMut>),
    Wrote(io::Result<usize>),
    FinSent(io::Result<()>),
    /// The socket has room for urgent bytes that were waiting.
    UrgentRoom,
    /// The urgent-data watcher woke (only Linux and Android watch).
    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
    Urgent(Watched),
    /// A read of a connection that takes urgent data found the urgent byte first.
    UrgentByte(u8),
    Deadline,
}

/// What is left to await after a wake ([`Driver::woke`](super::Driver::woke)).
pub(super) enum Next {
    /// Deliver the data read to `on_read_completed`.
    Deliver(BytesMut),
    /// Complete the buffers sent in full ([`Driver::written`](super::Driver::written) counted them in
    /// [`Driver::to_complete`](super::Driver::to_complete)).
    Written,
    /// The rest, with their callbacks ([`Driver::woken`](super::Driver::woken)).
    Woken(Wake),
    Done,
}

impl Next {
    /// The data of a [`Next::Deliver`], taken with `self` whole (see the pump's use).
    #[inline(always)]
    pub(super) fn into_data(self) -> BytesMut {
        match self {
            Next::Deliver(data) => data,
            _ => unreachable!("only a delivery has data"),
        }
    }

    /// The wake of a [`Next::Woken`], taken with `self` whole (see the pump's use).
    #[inline(always)]
    pub(super) fn into_wake(self) -> Wake {
        match self {
            Next::Woken(wake) => wake,
            _ => unreachable!("only the rest have a wake"),
        }
    }
}
