//! A connection's lifecycle as a state machine with no I/O.
//!
//! The driver feeds it what happened (the requests handles posted, a read's outcome, bytes
//! written, the clock) and asks it what to do next, one [`Action`] at a time: announce an event,
//! send FIN, wait for some I/O until a deadline, or end with a reason. Every rule about a
//! connection's fate lives here: the lifetime rule, the start of a graceful close, the order of
//! its events, the read pause of a full write queue, the watermarks and the timeouts. The driver
//! only performs what it is told, so these rules are unit-tested below without a socket.
//!
//! Phases: `Starting { step, deadline }` (the PROXY header, the TLS handshake) → `Open` →
//! `Closing { reason, deadline }` (queued data flushed, FIN sent, the peer's FIN awaited) →
//! `Ended(reason)`. An abort, an error, a reset or a timeout goes straight to `Ended`.
//!
//! ## How a connection ends
//! The lifecycle alone decides a connection's [`ClosureReason`], once, from its inputs; the
//! driver publishes the decision to handles from one place (its `publish`, with the lifecycle's
//! [`Snapshot`]) and no other code writes a reason. Each row is a unit test in
//! `tests/reasons.rs`.
//!
//! | reason | inputs that produce it |
//! |---|---|
//! | `PeerClosed` | the peer's FIN read ([`ReadOutcome::Eof`]), then ours sent: the lifetime rule found nothing left to do, or the write side was shut; or the peer closed before a step was done ([`StartFailure::PeerClosed`]) |
//! | `PeerReset` | [`IoError::Reset`] on a read, a write or a step; [`IoError::BrokenPipe`] after the peer's FIN and before ours |
//! | `LocalClose`, `Application(code)`, `Decode`, `FrameTooLong`, `PartialFrame` | a close asked for with that reason ([`Requests::close`]; the frame layer asks for the last three), then both FINs |
//! | `LocalAbort`, `AbortAll`, `ShutdownForced` | an abort asked for with that reason ([`Requests::abort`], [`Lifecycle::on_abort`]) |
//! | `Unreferenced` | the lifetime rule: nothing pending and no handle ([`Lifecycle::on_unreferenced`]), then both FINs |
//! | `ReadError`, `WriteError` | [`IoError::Other`] and the application's answer "not fatal: no" ([`Lifecycle::on_error_answer`]); a read error before establishment. (A read error while closing ends the close with its own reason.) |
//! | `CloseTimedOut` | the close timeout, with queued data or the FIN not sent, or not acknowledged by the peer |
//! | `CallbackPanic` | [`Lifecycle::on_callback_panic`] before anything else ended it |
//! | `TlsError`, `TlsAlert` | [`IoError::Tls`] (ours, the peer's alert), in the handshake or after |
//! | `HandshakeTimedOut` | the handshake's deadline ([`Step::Handshake`], or [`Step::FirstByte`] when the first-byte timeout is not the shorter) |
//! | `HandshakeLimit` | no handshake slot ([`StartFailure::NoHandshakeSlot`]) |
//! | `HandshakeEvicted` | the slot went to a newer connection before the first byte ([`StartFailure::Evicted`]) |
//! | `ProxyProtocol` | a refused header ([`StartFailure::HeaderRefused`]) or the header's deadline ([`Step::ProxyHeader`]) |
//! | `PerIpLimit` | the client's address at its cap, at admission or once a PROXY header named it ([`StartFailure::PerIpLimit`]) |
//! | `FirstByteTimedOut` | the open phase's first-byte deadline ([`Lifecycle::on_deadline`]); or [`Step::FirstByte`]'s, when the first-byte timeout is the shorter |
//! | `IdleTimedOut` | the idle deadline ([`Lifecycle::on_deadline`]), announced ([`Event::IdleTimeout`]), then the application's answer ([`Lifecycle::on_idle_answer`]): a reset, or a close followed by both FINs |
//! | `ReadTimedOut`, `HalfClosedTimedOut`, `SlowConsumer` | the open phase's deadlines ([`Lifecycle::on_deadline`]) |
//! | `DiscardLimit` | more than the discard limit read while closing |
//!
//! Two rules sit on top of the table:
//! - **The lingering close keeps its reason.** A close whose data and FIN the peer acknowledged
//!   (the driver asks the kernel: `SIOCOUTQ` on Linux; elsewhere the answer is no), and whose
//!   peer keeps its end open past the close timeout, ends with the reason decided before; the
//!   peer is reported beside it ([`Lifecycle::peer_lingered`]: a counter in the stats and
//!   metrics), never instead of it.
//! - **Abort wins until the end is published.** The mailbox counts an abort (for abort-all's
//!   report) only until the driver has published the end; an abort counted before that
//!   replaces the reason decided, so that what abort-all counted and what the connection reports
//!   agree. Between aborts, the first wins; after the end nothing changes it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::closure::ClosureReason;
use crate::timeouts::{IdleAction, Timeouts};

mod messages;
mod settings;
mod times;

pub(crate) use messages::*;
pub(crate) use settings::*;
pub(crate) use times::Stamp;
use times::Times;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Not yet established: the PROXY header and the TLS handshake, each until its deadline.
    Starting {
        step: Option<Step>,
        deadline: Option<Stamp>,
    },
    Open,
    /// Flushing the queue, sending FIN and waiting for the peer's, until `deadline`.
    Closing {
        reason: ClosureReason,
        deadline: Stamp,
    },
    /// Nothing more happens on the socket; the closing events follow.
    Ended(ClosureReason),
}

/// Whether the FIN is still to send, on its way (TLS `close_notify` pending), or sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fin {
    NotSent,
    Sending,
    Sent,
}

/// One connection's lifecycle. See the module docs.
///
/// In declaration order (`repr(C)`): what a steady message reads and writes (the phase, the
/// settings, the queue, the handles and the flags) in the first 64 bytes; the clock, which only
/// a connection with a timeout in force touches per message, after them.
#[derive(Debug)]
#[cfg_attr(test, derive(Clone))]
#[repr(C)]
pub(crate) struct Lifecycle {
    phase: Phase,
    /// Shared by every connection of a server.
    config: Arc<LifecycleConfig>,
    /// Bytes the driver holds that are not yet handed to the kernel.
    queued: usize,
    handles: usize,
    /// Some timeout of the open phase is on: only then are its deadlines computed, and only
    /// then does the clock hold anything that changes (`clock.read_since` is `None` while this
    /// is false).
    timed: bool,
    read_requested: bool,
    /// The peer's FIN was read.
    read_closed: bool,
    fin: Fin,
    shutdown_write: bool,
    urgent_pending: bool,
    urgent_wanted: bool,
    /// The queue is high, as last announced.
    high: bool,
    /// A handle saw the queue reach the high mark since the last announcement.
    crossed_high: bool,
    /// Whether a shutdown notice has arrived and whether it was announced.
    shutdown_notice: bool,
    told_shutdown: bool,
    /// The close timeout passed after our FIN was sent, without the peer's FIN: the peer keeps
    /// its end open. Reported beside the closure reason, never instead of it.
    lingered: bool,
    /// An abort ended the connection.
    aborted: bool,
    /// The idle deadline passed: the application is to be asked what to do
    /// ([`Event::IdleTimeout`]).
    idle_expired: bool,
    first_byte_seen: bool,
    /// The application's own timeouts for this connection, when it changed them (boxed: most
    /// connections keep the server's).
    timeouts: Option<Box<Timeouts>>,
    /// The reason of the graceful close begun, if one was: a connection that ends with it
    /// closed with FIN, whatever the reason.
    closing_with: Option<ClosureReason>,
    /// Bytes read and dropped while closing.
    discarded: usize,
    clock: Times,
}

impl Lifecycle {
    /// A connection established at `now`.
    pub(crate) fn new(config: impl Into<Arc<LifecycleConfig>>, now: Instant) -> Self {
        let config = config.into();
        Lifecycle {
            timeouts: None,
            timed: timed(&config, &config.timeouts),
            config,
            phase: Phase::Open,
            read_requested: false,
            read_closed: false,
            fin: Fin::NotSent,
            shutdown_write: false,
            queued: 0,
            discarded: 0,
            urgent_pending: false,
            urgent_wanted: false,
            handles: 0,
            high: false,
            crossed_high: false,
            shutdown_notice: false,
            told_shutdown: false,
            lingered: false,
            aborted: false,
            idle_expired: false,
            closing_with: None,
            first_byte_seen: false,
            clock: Times::new(now),
        }
    }

    /// A connection accepted or connected at `now`, not yet established: the steps before
    /// establishment run first ([`Lifecycle::begin_step`]), then [`Lifecycle::on_established`].
    pub(crate) fn starting(config: impl Into<Arc<LifecycleConfig>>, now: Instant) -> Self {
        let mut life = Lifecycle::new(config, now);
        life.phase = Phase::Starting {
            step: None,
            deadline: None,
        };
        life
    }

    #[cfg(test)]
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// What the driver publishes to handles.
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            fate: match self.phase {
                Phase::Starting { .. } | Phase::Open => Fate::Open,
                Phase::Closing { .. } => Fate::Closing,
                Phase::Ended(_) => Fate::Ended,
            },
            high: self.high,
        }
    }

    /// The reason the connection ended with, once it has.
    pub(crate) fn ended_with(&self) -> Option<ClosureReason> {
        match self.phase {
            Phase::Ended(reason) => Some(reason),
            _ => None,
        }
    }

    /// Whether the connection, once ended, is reset (RST) when its socket is closed: an abort,
    /// an error or a timeout that ended it at once; not a graceful close, which ends with the
    /// reason it began with once both FINs went through (or the peer lingered).
    pub(crate) fn resets_on_close(&self) -> bool {
        match self.phase {
            Phase::Ended(reason) => {
                !(reason.is_graceful() || (!self.aborted && self.closing_with == Some(reason)))
            }
            _ => false,
        }
    }

    /// Whether the peer kept its end open past the close timeout after our FIN.
    pub(crate) fn peer_lingered(&self) -> bool {
        self.lingered
    }

    /// A step before establishment begins at `now` and may take `timeout`. The wait for a TLS
    /// client's first byte ([`Step::FirstByte`]) may take the first-byte timeout instead, if
    /// that is shorter, and ends with its reason then; otherwise it is the handshake's.
    pub(crate) fn begin_step(&mut self, step: Step, timeout: Duration, now: Instant) {
        let (step, timeout) = match (step, self.timeouts().first_byte) {
            (Step::FirstByte, Some(first_byte)) if first_byte < timeout => {
                (Step::FirstByte, first_byte)
            }
            (Step::FirstByte, _) => (Step::Handshake, timeout),
            (step, _) => (step, timeout),
        };
        if let Phase::Starting { .. } = self.phase {
            self.phase = Phase::Starting {
                step: Some(step),
                deadline: Some(self.clock.stamp(now + timeout)),
            };
        }
    }

    /// When the step in progress times out.
    pub(crate) fn step_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Starting { deadline, .. } => deadline.map(|at| self.clock.at(at)),
            _ => None,
        }
    }

    /// The step in progress ran out of time ([`Lifecycle::step_deadline`]).
    pub(crate) fn on_step_timed_out(&mut self) {
        if let Phase::Starting {
            step: Some(step), ..
        } = self.phase
        {
            self.end(match step {
                Step::ProxyHeader => ClosureReason::ProxyProtocol,
                Step::FirstByte => ClosureReason::FirstByteTimedOut,
                Step::Handshake => ClosureReason::HandshakeTimedOut,
            });
        }
    }

    /// The step in progress is done.
    pub(crate) fn on_step_done(&mut self) {
        if let Phase::Starting { .. } = self.phase {
            self.phase = Phase::Starting {
                step: None,
                deadline: None,
            };
        }
    }

    /// A step before establishment failed.
    pub(crate) fn on_start_failed(&mut self, failure: StartFailure) {
        if let Phase::Starting { .. } = self.phase {
            self.end(match failure {
                StartFailure::HeaderRefused => ClosureReason::ProxyProtocol,
                StartFailure::PeerClosed => ClosureReason::PeerClosed,
                StartFailure::NoHandshakeSlot => ClosureReason::HandshakeLimit,
                StartFailure::Evicted => ClosureReason::HandshakeEvicted,
                StartFailure::PerIpLimit => ClosureReason::PerIpLimit,
            });
        }
    }

    /// The steps are done and `on_connection_established` returned at `now`: the connection is
    /// open, and its timeouts count from now.
    pub(crate) fn on_established(&mut self, now: Instant) {
        if let Phase::Starting { .. } = self.phase {
            self.phase = Phase::Open;
            self.clock.established = self.clock.stamp(now);
            self.clock.last_activity = now;
        }
    }

    /// An abort the mailbox counted: ends the connection with its reason. It wins over a reason
    /// decided before it but not yet published: the mailbox counts no abort once the end is
    /// published, so an abort that comes here was counted (by abort-all, say) while the
    /// connection was still live to handles.
    /// Between aborts, the first wins (the mailbox keeps only the first).
    pub(crate) fn on_abort(&mut self, reason: ClosureReason) {
        if !self.aborted {
            self.aborted = true;
            // Reset: whatever the peer did after a close it no longer waits for.
            self.lingered = false;
            self.phase = Phase::Ended(reason);
        }
    }

    /// A callback of the connection panicked: it ends with [`ClosureReason::CallbackPanic`],
    /// unless it has ended already (a panic in `on_connection_reset` keeps the reset).
    pub(crate) fn on_callback_panic(&mut self) {
        self.end(ClosureReason::CallbackPanic);
    }

    /// A read or write (or, before establishment, the handshake) failed with `error`.
    pub(crate) fn on_io_error(&mut self, op: Op, error: IoError) -> IoVerdict {
        let error = match error {
            // Once the peer's FIN was read and before ours was sent, Linux reports the peer's
            // RST to a write as EPIPE.
            IoError::BrokenPipe if self.read_closed && self.fin != Fin::Sent => IoError::Reset,
            IoError::BrokenPipe => IoError::Other,
            error => error,
        };
        match (self.phase, error) {
            (Phase::Ended(_), _) => IoVerdict::Ended,
            (_, IoError::Reset) => {
                let announce = self.phase == Phase::Open;
                self.end(ClosureReason::PeerReset);
                if announce {
                    IoVerdict::AnnounceReset
                } else {
                    IoVerdict::Ended
                }
            }
            // The peer's side failed while we were finishing ours: the close keeps its reason.
            (Phase::Closing { reason, .. }, _) if op == Op::Read => {
                self.end(reason);
                IoVerdict::Ended
            }
            (_, IoError::Tls { from_peer }) => {
                self.end(if from_peer {
                    ClosureReason::TlsAlert
                } else {
                    ClosureReason::TlsError
                });
                IoVerdict::AnnounceTls { from_peer }
            }
            (Phase::Starting { .. }, _) => {
                self.end(ClosureReason::ReadError);
                IoVerdict::Ended
            }
            (_, _) => {
                if op == Op::Read {
                    // The request is used up whatever the application answers.
                    self.read_requested = false;
                }
                IoVerdict::Ask
            }
        }
    }

    /// The application's answer to [`IoVerdict::Ask`]: `keep` the connection, or end it with
    /// [`ClosureReason::ReadError`] / [`ClosureReason::WriteError`] (whose completion-error
    /// callback the driver runs next).
    pub(crate) fn on_error_answer(&mut self, op: Op, keep: bool) {
        if !keep {
            self.end(match op {
                Op::Read => ClosureReason::ReadError,
                Op::Write => ClosureReason::WriteError,
            });
        }
    }

    /// The timeouts in force.
    fn timeouts(&self) -> &Timeouts {
        self.timeouts.as_deref().unwrap_or(&self.config.timeouts)
    }

    /// Whether the application's urgent-data request is still open.
    pub(crate) fn urgent_wanted(&self) -> bool {
        self.urgent_wanted && self.phase == Phase::Open
    }

    /// Takes what handles posted. Inlined: the driver takes requests at most turns.
    #[inline]
    pub(crate) fn on_requests(&mut self, requests: Requests, now: impl Clock) {
        self.handles = requests.handles;
        self.queued += requests.queued;
        self.crossed_high |= requests.crossed_high;
        self.urgent_pending = requests.urgent_pending;
        if let Some(reason) = requests.abort {
            // An abort cuts a graceful close short too: the connection is still live.
            self.on_abort(reason);
        }
        if self.is_ended() {
            return;
        }
        if let Some(timeouts) = requests.timeouts {
            self.set_timeouts(timeouts, now);
        }
        self.shutdown_notice |= requests.shutdown_notice;
        self.shutdown_write |= requests.shutdown_write;
        if self.phase == Phase::Open {
            self.read_requested |= requests.read && !self.read_closed;
            self.urgent_wanted |= requests.urgent_wanted;
            if let Some(reason) = requests.close {
                self.begin_close(reason, now);
            }
        }
    }

    /// The application changed the connection's timeouts. Kept out of line, like
    /// [`Lifecycle::begin_close`]: it is rare, and [`Lifecycle::on_requests`], taken at every
    /// turn something was posted, stays small enough to be inlined.
    #[cold]
    #[inline(never)]
    fn set_timeouts(&mut self, timeouts: Box<Timeouts>, now: impl Clock) {
        if self.timeouts().idle.is_none() && timeouts.idle.is_some() {
            // The last byte is not tracked while the idle timeout is off: count from now.
            self.clock.last_activity = now.now();
        }
        self.timed = timed(&self.config, &timeouts);
        if !self.timed {
            // Kept only while a timeout is on (see `timed`).
            self.clock.read_since = None;
        }
        self.timeouts = (*timeouts != self.config.timeouts).then_some(timeouts);
    }

    /// The connection's own callbacks queued writes that count for `cost` straight into the
    /// driver's queue (as [`Lifecycle::on_requests`] counts those taken from the inbox).
    #[inline]
    pub(crate) fn on_queued(&mut self, cost: usize) {
        self.queued += cost;
    }

    /// A read was requested, and nothing else was posted: what [`Lifecycle::on_requests`] does
    /// with such requests, made cheap (the common turn after a message's callback).
    #[inline]
    pub(crate) fn on_read_requested(&mut self, handles: usize) {
        self.handles = handles;
        self.urgent_pending = false;
        if !self.is_ended() && self.phase == Phase::Open {
            self.read_requested |= !self.read_closed;
        }
    }

    /// What [`Lifecycle::on_requests`] does when nothing was posted: the handle count and the
    /// urgent bytes still waiting are all that can have changed (the common turn, made cheap).
    pub(crate) fn on_quiet(&mut self, handles: usize, urgent_pending: bool) {
        self.handles = handles;
        self.urgent_pending = urgent_pending;
    }

    /// The next thing to do. Call again after doing it (and after taking new requests).
    ///
    /// A steady connection ([`Lifecycle::is_steady`]), the driver's common turn, is answered
    /// without going through every rule: the rules below would give the same wait and change
    /// nothing (a unit test compares the two on every state it reaches).
    #[inline]
    pub(crate) fn next(&mut self, now: impl Clock) -> Action {
        if self.is_steady() {
            return Action::Wait(self.steady_interest());
        }
        self.next_by_the_rules(now)
    }

    /// What [`Lifecycle::next`] would answer after a wait it gave a steady connection
    /// ([`Interest::steady`]) and then only bytes written ([`Lifecycle::on_written`]); `None`
    /// where `next` must be asked. The driver asks this after a write that leaves nothing to
    /// announce, to go on waiting without a turn of its own.
    ///
    /// Bytes written only lower the queue (and move the last activity, which no steady
    /// connection has a timeout on): every condition of [`Lifecycle::is_steady`] still holds but
    /// the last, something pending, which the queue may have been.
    #[inline]
    pub(crate) fn steady_after_write(&mut self) -> Option<Interest> {
        let pending =
            self.read_requested || self.queued > 0 || self.urgent_pending || self.handles > 0;
        debug_assert_eq!(pending, self.is_steady(), "steady but for what is pending");
        pending.then(|| self.steady_interest())
    }

    /// A steady connection's wait (see [`Lifecycle::is_steady`]).
    #[inline]
    fn steady_interest(&mut self) -> Interest {
        // Steady means no timeout in force, so the clock has nothing to reset.
        debug_assert!(!self.timed && self.clock.read_since.is_none());
        Interest {
            read: self.read_requested && self.queued < self.config.limits.limit,
            write: self.queued > 0,
            fin: false,
            urgent: self.urgent_wanted,
            deadline: None,
            steady: true,
        }
    }

    /// Whether [`Lifecycle::next`] can only be a wait without a deadline that changes nothing:
    /// open with no timeout in force, the queue below its high mark and not announced high,
    /// nothing to announce, no FIN read, sent or asked for, and something pending, so that the
    /// lifetime rule keeps the connection open.
    #[inline]
    fn is_steady(&self) -> bool {
        matches!(self.phase, Phase::Open)
            && !self.timed
            && !self.high
            && !self.crossed_high
            && self.queued < self.config.limits.high
            && !self.idle_expired
            && (!self.shutdown_notice || self.told_shutdown)
            && !self.read_closed
            && self.fin == Fin::NotSent
            && !self.shutdown_write
            && (self.read_requested || self.queued > 0 || self.urgent_pending || self.handles > 0)
    }

    /// [`Lifecycle::next`] by every rule.
    fn next_by_the_rules(&mut self, now: impl Clock) -> Action {
        if let Phase::Ended(reason) = self.phase {
            return Action::End(reason);
        }
        // A handle that saw the queue cross the high mark gets its announcement even if the
        // queue drained below it since.
        let high =
            self.config.limits.is_high(self.queued, self.high) || (!self.high && self.crossed_high);
        self.crossed_high = false;
        if high != self.high {
            self.high = high;
            self.clock.high_since = (high && self.config.slow_consumer_timeout.is_some())
                .then(|| self.clock.stamp(now.now()));
            return Action::Announce(if high {
                Event::WriteBufferHigh
            } else {
                Event::WriteBufferLow
            });
        }
        if self.phase == Phase::Open {
            if self.idle_expired {
                self.idle_expired = false;
                return Action::Announce(Event::IdleTimeout);
            }
            if self.shutdown_notice && !self.told_shutdown {
                self.told_shutdown = true;
                return Action::Announce(Event::ShutdownRequested);
            }
            // The lifetime rule.
            let nothing_pending = !self.read_requested
                && self.queued == 0
                && !self.urgent_pending
                && self.handles == 0;
            let nothing_possible = self.read_closed && self.fin == Fin::Sent;
            if nothing_possible {
                self.begin_close(ClosureReason::PeerClosed, now);
            } else if nothing_pending {
                return Action::ConfirmUnreferenced;
            }
        }
        let closing = matches!(self.phase, Phase::Closing { .. });
        if self.fin == Fin::NotSent && self.queued == 0 && (closing || self.shutdown_write) {
            self.fin = Fin::Sending;
            return Action::SendFin;
        }
        if let Phase::Closing { reason, .. } = self.phase {
            if self.fin == Fin::Sent && self.read_closed {
                self.phase = Phase::Ended(reason);
                return Action::End(reason);
            }
        }
        let read = if closing {
            // Reading on while closing drains what the peer still sends (up to the discard
            // limit), so that closing the socket with unread data does not turn our FIN into a
            // reset.
            !self.read_closed
        } else {
            // Reads pause while the write queue is at its limit: a peer that sends without
            // reading our replies is held back by TCP flow control instead of growing the queue.
            self.read_requested && self.queued < self.config.limits.limit
        };
        if self.timeouts().read.is_some() && read && !closing {
            self.clock.read_since.get_or_insert_with(|| now.now());
        } else {
            self.clock.read_since = None;
        }
        Action::Wait(Interest {
            read,
            write: self.queued > 0,
            fin: self.fin == Fin::Sending,
            urgent: self.urgent_wanted(),
            deadline: if closing || self.timed {
                self.deadline().map(|(at, _)| at)
            } else {
                None
            },
            steady: self.is_steady(),
        })
    }

    /// Whoever the reads were for is gone (an awaited client was dropped): a read request left
    /// pending no longer counts, so the lifetime rule can close the connection.
    pub(crate) fn cancel_read(&mut self) {
        self.read_requested = false;
    }

    /// The driver confirmed [`Action::ConfirmUnreferenced`]: no handle is left and none can be
    /// made, so the connection closes gracefully by itself.
    pub(crate) fn on_unreferenced(&mut self, now: impl Clock) {
        if self.phase == Phase::Open {
            let reason = if self.read_closed {
                ClosureReason::PeerClosed
            } else {
                ClosureReason::Unreferenced
            };
            self.begin_close(reason, now);
        }
    }

    /// The outcome of a read polled because [`Interest::read`] asked for it.
    #[inline]
    pub(crate) fn on_read(&mut self, outcome: ReadOutcome, now: impl Clock) -> ReadVerdict {
        match (self.phase, outcome) {
            (Phase::Ended(_) | Phase::Starting { .. }, _) => ReadVerdict::Ended,
            (Phase::Closing { .. }, ReadOutcome::Eof) => {
                self.read_closed = true;
                ReadVerdict::Discard
            }
            (Phase::Closing { .. }, ReadOutcome::Data(len)) => {
                self.discarded = self.discarded.saturating_add(len);
                if self.discarded > self.config.close_discard_limit {
                    self.end(ClosureReason::DiscardLimit);
                    return ReadVerdict::Ended;
                }
                ReadVerdict::Discard
            }
            (Phase::Open, ReadOutcome::Eof) => {
                self.read_closed = true;
                self.read_requested = false;
                self.clock.read_since = None;
                self.clock.read_closed_at = Some(self.clock.stamp(now.now()));
                ReadVerdict::ClientClose
            }
            (Phase::Open, ReadOutcome::Data(_)) => {
                self.read_requested = false;
                if self.timed {
                    // Untimed, it is `None` already, and the clock's cache line stays untouched.
                    self.clock.read_since = None;
                }
                self.first_byte_seen = true;
                self.activity(now);
                ReadVerdict::Deliver
            }
        }
    }

    /// `bytes` of the queue were handed to the kernel.
    pub(crate) fn on_written(&mut self, bytes: usize, now: impl Clock) {
        self.queued -= bytes;
        if bytes > 0 {
            self.activity(now);
        }
    }

    /// `bytes` of the queue were dropped unsent (a write error the application survived).
    pub(crate) fn on_dropped(&mut self, bytes: usize) {
        self.queued -= bytes;
    }

    /// The urgent byte the application asked for was delivered: one request, one byte.
    pub(crate) fn on_urgent_delivered(&mut self) {
        self.urgent_wanted = false;
    }

    pub(crate) fn on_fin_sent(&mut self) {
        self.fin = Fin::Sent;
    }

    /// Whether bytes are queued and not yet handed to the kernel.
    pub(crate) fn has_queued(&self) -> bool {
        self.queued > 0
    }

    /// Whether sending FIN now ends the connection at the very next [`Lifecycle::next`]: it is
    /// closing and the peer's FIN came already (nothing can be announced in between: the queue is
    /// empty when FIN is sent, and a closing connection takes no writes).
    pub(crate) fn ends_with_fin(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. }) && self.read_closed
    }

    /// FIN could not be sent yet (TLS `close_notify` waits for room): [`Interest::fin`] polls it.
    pub(crate) fn on_fin_blocked(&mut self) {
        self.fin = Fin::Sending;
    }

    /// Whether our FIN has been sent.
    #[cfg(test)]
    pub(crate) fn fin_sent(&self) -> bool {
        self.fin == Fin::Sent
    }

    /// The clock passed [`Interest::deadline`]: ends the connection if a deadline really passed
    /// (the timer may fire early for a deadline that moved).
    ///
    /// A close whose data and FIN the peer `acknowledged` (asked only then: the driver asks the
    /// kernel), and that only waits for the peer's FIN, keeps its reason: the peer
    /// [lingered](Lifecycle::peer_lingered). One whose data or FIN did not get through ends
    /// with [`ClosureReason::CloseTimedOut`] (and is reset).
    pub(crate) fn on_deadline(&mut self, now: Instant, acknowledged: impl FnOnce() -> bool) {
        match self.phase {
            Phase::Starting {
                deadline: Some(at), ..
            } if self.clock.at(at) <= now => self.on_step_timed_out(),
            Phase::Closing { reason, deadline } if self.clock.at(deadline) <= now => {
                if self.fin == Fin::Sent && acknowledged() {
                    self.lingered = true;
                    self.end(reason);
                } else {
                    self.end(ClosureReason::CloseTimedOut);
                }
            }
            Phase::Open => match self.deadline() {
                // The application decides how an idle connection ends: asked next.
                Some((at, ClosureReason::IdleTimedOut)) if at <= now => self.idle_expired = true,
                Some((at, reason)) if at <= now => self.end(reason),
                _ => {}
            },
            _ => {}
        }
    }

    /// The application's answer to [`Event::IdleTimeout`]: reset the connection, or close it
    /// gracefully (what it queued, then FIN); either way with [`ClosureReason::IdleTimedOut`].
    /// Anything that ended or closed the connection meanwhile keeps its reason.
    pub(crate) fn on_idle_answer(&mut self, action: IdleAction, now: impl Clock) {
        if self.phase != Phase::Open {
            return;
        }
        match action {
            IdleAction::Close => self.begin_close(ClosureReason::IdleTimedOut, now),
            IdleAction::Reset => self.end(ClosureReason::IdleTimedOut),
        }
    }

    /// Ends the connection with `reason`, unless it has ended.
    fn end(&mut self, reason: ClosureReason) {
        if !self.is_ended() {
            self.phase = Phase::Ended(reason);
        }
    }

    pub(crate) fn is_ended(&self) -> bool {
        matches!(self.phase, Phase::Ended(_))
    }

    /// Whether the connection takes no more reads or writes.
    #[cfg(test)]
    pub(crate) fn is_closing(&self) -> bool {
        self.phase != Phase::Open
    }

    #[cfg(test)]
    fn is_high(&self) -> bool {
        self.high
    }

    /// Once per connection at most: out of line (see [`Lifecycle::set_timeouts`]).
    #[inline(never)]
    fn begin_close(&mut self, reason: ClosureReason, now: impl Clock) {
        self.closing_with = Some(reason);
        self.phase = Phase::Closing {
            reason,
            deadline: self.clock.stamp(now.now() + self.config.close_timeout),
        };
        self.read_requested = false;
        self.urgent_wanted = false;
    }

    #[inline]
    fn activity(&mut self, now: impl Clock) {
        // An idle timeout makes the connection timed: an untimed one reads no more.
        if self.timed && self.timeouts().idle.is_some() {
            self.clock.last_activity = now.now();
        }
    }

    /// The earliest deadline in force and the reason it ends the connection with. Closing, only
    /// the close timeout counts.
    fn deadline(&self) -> Option<(Instant, ClosureReason)> {
        match self.phase {
            Phase::Ended(_) | Phase::Starting { .. } => return None,
            Phase::Closing { deadline, .. } => {
                return Some((self.clock.at(deadline), ClosureReason::CloseTimedOut))
            }
            Phase::Open if !self.timed => return None,
            Phase::Open => {}
        }
        let clock = &self.clock;
        let timeouts = self.timeouts();
        let since = |timeout: Option<Duration>, at: Option<Instant>| Some(at? + timeout?);
        let since_stamp = |timeout: Option<Duration>, at: Option<Stamp>| {
            since(timeout, at.map(|at| clock.at(at)))
        };
        [
            (
                since_stamp(self.config.slow_consumer_timeout, clock.high_since),
                ClosureReason::SlowConsumer,
            ),
            (
                since(timeouts.idle, Some(clock.last_activity)),
                ClosureReason::IdleTimedOut,
            ),
            (
                since(timeouts.read, clock.read_since),
                ClosureReason::ReadTimedOut,
            ),
            (
                since_stamp(
                    timeouts.first_byte,
                    (!self.first_byte_seen).then_some(clock.established),
                ),
                ClosureReason::FirstByteTimedOut,
            ),
            (
                since_stamp(timeouts.half_closed, clock.read_closed_at),
                ClosureReason::HalfClosedTimedOut,
            ),
        ]
        .into_iter()
        .filter_map(|(at, reason)| Some((at?, reason)))
        .min_by_key(|(at, _)| *at)
    }
}

/// Whether any deadline of the open phase can be in force.
fn timed(config: &LifecycleConfig, timeouts: &Timeouts) -> bool {
    config.slow_consumer_timeout.is_some() || *timeouts != Timeouts::default()
}

#[cfg(test)]
mod tests;
