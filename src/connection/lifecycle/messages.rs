//! What the driver and the lifecycle tell each other: the inputs (requests, read outcomes, I/O
//! errors, failed steps) and the outputs (actions, events, verdicts, the snapshot handles see).

use tokio::time::Instant;

use crate::closure::ClosureReason;
use crate::timeouts::Timeouts;

/// A step before establishment, each with a deadline of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Reading the PROXY protocol header.
    ProxyHeader,
    /// An accepted connection's TLS handshake, waiting for the peer's first byte: the
    /// first-byte timeout bounds it too, when it is the shorter ([`Lifecycle::begin_step`]).
    FirstByte,
    /// The TLS handshake.
    Handshake,
}

/// Why a step before establishment failed, beyond an I/O error ([`Lifecycle::on_io_error`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartFailure {
    /// The PROXY header came from outside the trusted networks, or was malformed.
    HeaderRefused,
    /// The peer closed before the step was done.
    PeerClosed,
    /// No handshake slot was free.
    NoHandshakeSlot,
    /// The connection's handshake slot went to a newer connection before its first byte.
    Evicted,
    /// The client is at its address's cap: refused at admission, or the client a PROXY header
    /// named.
    PerIpLimit,
}

/// Which way a failed I/O operation went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Read,
    Write,
}

/// A failed read or write (or handshake), as far as the lifecycle cares. `WouldBlock` and
/// `Interrupted` are not failures and never come here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IoError {
    /// `ECONNRESET` or `ECONNABORTED`: the peer reset the connection.
    Reset,
    /// `EPIPE`: the peer's reset once its FIN was read and ours was not sent yet (Linux reports
    /// it so to a write); our own doing once our FIN was sent.
    BrokenPipe,
    /// The TLS layer failed: an alert from the peer, or a failure of ours.
    Tls { from_peer: bool },
    /// Anything else: the application may decide (`on_*_error_may_not_be_fatal`).
    Other,
}

/// What the driver does after a failed I/O operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IoVerdict {
    /// The connection has ended (or is ending) without more events.
    Ended,
    /// `on_connection_reset`; the connection has ended.
    AnnounceReset,
    /// `on_remote_fatal_error` (from the peer) or `on_fatal_error`; the connection has ended.
    AnnounceTls { from_peer: bool },
    /// Ask `on_read_error_may_not_be_fatal` / `on_write_error_may_not_be_fatal`, and report
    /// its answer with [`Lifecycle::on_error_answer`].
    Ask,
}

/// What handles may know of a connection's fate, as the driver publishes it to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) fate: Fate,
    /// The write queue is high (between `on_write_buffer_high` and `on_write_buffer_low`).
    pub(crate) high: bool,
}

/// The part of the phase handles see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Fate {
    /// Starting or open: writes are taken.
    #[default]
    Open,
    /// Closing: no more writes; weak handles are not upgraded.
    Closing,
    /// Decided: the closing events follow; an abort is no longer counted.
    Ended,
}

/// A connection event the lifecycle decides on (the I/O completions are the driver's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// `on_write_buffer_high`.
    WriteBufferHigh,
    /// `on_write_buffer_low`.
    WriteBufferLow,
    /// `on_shutdown_requested`.
    ShutdownRequested,
    /// `on_idle_timeout`, whose answer goes to [`Lifecycle::on_idle_answer`].
    IdleTimeout,
}

/// What the driver waits for when there is nothing else to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Interest {
    /// Poll for data (or the end of the stream).
    pub(crate) read: bool,
    /// Poll the write of the queue.
    pub(crate) write: bool,
    /// Poll the sending of FIN (TLS `close_notify` first, which may have to wait for room).
    pub(crate) fin: bool,
    /// Watch for urgent data.
    pub(crate) urgent: bool,
    /// Wake no later than this.
    pub(crate) deadline: Option<Instant>,
    /// The connection was steady when the lifecycle answered (see `Lifecycle::is_steady`): after
    /// bytes written and nothing else, [`Lifecycle::steady_after_write`](super::Lifecycle::steady_after_write)
    /// gives the next wait.
    pub(crate) steady: bool,
}

/// The next thing the driver must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Run this event's callback, then ask again.
    Announce(Event),
    /// Start sending FIN (after TLS `close_notify`), then report with
    /// [`Lifecycle::on_fin_sent`] (or [`Lifecycle::on_fin_blocked`]).
    SendFin,
    /// Wait for any of these, or a request from a handle.
    Wait(Interest),
    /// The lifetime rule found nothing keeping the connection open but handles, and none
    /// counted: confirm, atomically with refusing every upgrade of a weak handle from now on,
    /// that none is left and nothing was posted since the take
    /// ([`Mailbox::seal_unreferenced`](crate::connection::mailbox::Mailbox::seal_unreferenced)), then
    /// report with [`Lifecycle::on_unreferenced`]. If the confirmation fails (an upgrade or a
    /// post came in), take the requests again before asking again.
    ConfirmUnreferenced,
    /// Leave the I/O loop; the closing events follow with this reason.
    End(ClosureReason),
}

/// What handles posted since the driver last looked (see `mailbox`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Requests {
    pub(crate) read: bool,
    /// Bytes newly queued for writing.
    pub(crate) queued: usize,
    /// A write took the queue to the high mark (as handles saw it).
    pub(crate) crossed_high: bool,
    /// Urgent bytes are waiting to be sent.
    pub(crate) urgent_pending: bool,
    /// Urgent bytes were posted (the driver takes them from the mailbox).
    pub(crate) urgent_posted: bool,
    /// The application wants the next urgent byte.
    pub(crate) urgent_wanted: bool,
    pub(crate) shutdown_write: bool,
    /// A graceful close, with the reason to report.
    pub(crate) close: Option<ClosureReason>,
    pub(crate) abort: Option<ClosureReason>,
    pub(crate) shutdown_notice: bool,
    /// The application changed the timeouts (boxed: rare, and it keeps this small, as it is
    /// taken twice per message).
    pub(crate) timeouts: Option<Box<Timeouts>>,
    /// Counted [`Connection`](crate::Connection) handles the application holds.
    pub(crate) handles: usize,
}

/// How a read the driver polled turned out, as far as the lifecycle cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// `len` bytes arrived.
    Data(usize),
    /// The peer's FIN.
    Eof,
}

/// What the driver does with a read's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadVerdict {
    /// `on_read_completed` with the data.
    Deliver,
    /// `on_connection_client_close`.
    ClientClose,
    /// Closing: what the peer still sends is dropped.
    Discard,
    /// The connection ends without more events (it went over the discard limit while closing).
    Ended,
}
