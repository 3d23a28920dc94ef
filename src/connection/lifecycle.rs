//! A connection's lifecycle as a state machine with no I/O.
//!
//! The driver feeds it what happened (the requests handles posted, a read's outcome, bytes
//! written, the clock) and asks it what to do next, one [`Action`] at a time: announce an event,
//! send FIN, wait for some I/O until a deadline, or end with a reason. Every rule about a
//! connection's fate lives here: the lifetime rule, the start of a graceful close, the order of
//! its events, the read pause of a full write queue, the watermarks and the timeouts. The driver
//! only performs what it is told, so these rules are unit-tested below without a socket.
//!
//! Phases: `Open` → `Closing { reason, deadline }` (queued data flushed, FIN sent, the peer's FIN
//! awaited) → `Ended(reason)`. An abort, an error, a reset or a timeout goes straight to `Ended`.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::closure::ClosureReason;
use crate::timeouts::Timeouts;

/// Where the lifecycle reads the time from: an `Instant` given outright, or the driver's
/// [`LazyNow`], which reads the clock only if a rule needs it (most turns of a connection without
/// timeouts need none).
pub(crate) trait Clock: Copy {
    fn now(self) -> Instant;
}

impl Clock for Instant {
    fn now(self) -> Instant {
        self
    }
}

/// The time of one turn of the driver, read at most once and only when asked for.
#[derive(Debug, Default)]
pub(crate) struct LazyNow(Cell<Option<Instant>>);

impl Clock for &LazyNow {
    fn now(self) -> Instant {
        match self.0.get() {
            Some(now) => now,
            None => {
                let now = Instant::now();
                self.0.set(Some(now));
                now
            }
        }
    }
}

/// Write queue bounds of one connection, fixed when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriteLimits {
    /// Writes are refused, and reads pause, while the queue holds this much.
    pub(crate) limit: usize,
    /// At or above this, the queue is "high": `on_write_buffer_high`, `writable()` waits.
    pub(crate) high: usize,
    /// Back at or below this, the queue is no longer high: `on_write_buffer_low`.
    pub(crate) low: usize,
}

/// The settings the lifecycle needs, fixed for a server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LifecycleConfig {
    pub(crate) limits: WriteLimits,
    pub(crate) timeouts: Timeouts,
    pub(crate) close_timeout: Duration,
    /// Most bytes a closing connection reads and drops before it is reset instead.
    pub(crate) close_discard_limit: usize,
    pub(crate) slow_consumer_timeout: Option<Duration>,
}

#[cfg(test)]
impl LifecycleConfig {
    /// The settings the crate's unit tests use: a 100-byte queue (high at 80, low at 40), no
    /// timeouts, a 5 s close timeout, a 1000-byte discard limit.
    pub(crate) fn for_tests() -> Self {
        LifecycleConfig {
            limits: WriteLimits {
                limit: 100,
                high: 80,
                low: 40,
            },
            timeouts: Timeouts::default(),
            close_timeout: Duration::from_secs(5),
            close_discard_limit: 1000,
            slow_consumer_timeout: None,
        }
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Open,
    /// Flushing the queue, sending FIN and waiting for the peer's, until `deadline`.
    Closing {
        reason: ClosureReason,
        deadline: Instant,
    },
    /// Nothing more happens on the socket; the closing events follow.
    Ended(ClosureReason),
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
    /// The peer reset the connection.
    Reset,
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
    /// `on_connection_reset`, then the connection ends (already decided).
    AnnounceReset,
    /// The connection ends without more events (a reset while closing: what we queued is lost).
    Ended,
}

/// Whether the FIN is still to send, on its way (TLS `close_notify` pending), or sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fin {
    NotSent,
    Sending,
    Sent,
}

/// When the things the timeouts measure last happened.
#[derive(Debug, Clone, Copy)]
struct Times {
    established: Instant,
    first_byte_seen: bool,
    /// Last byte read or written (kept only while an idle timeout is on).
    last_activity: Instant,
    /// Since when a read has been requested and waited for without data.
    read_since: Option<Instant>,
    /// When the peer's FIN was read.
    read_closed_at: Option<Instant>,
    /// Since when the write queue has been high.
    high_since: Option<Instant>,
}

/// One connection's lifecycle. See the module docs.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    /// Shared by every connection of a server.
    config: Arc<LifecycleConfig>,
    /// The application's own timeouts for this connection, when it changed them (boxed: most
    /// connections keep the server's).
    timeouts: Option<Box<Timeouts>>,
    /// Some timeout of the open phase is on: only then are its deadlines computed.
    timed: bool,
    phase: Phase,
    read_requested: bool,
    /// The peer's FIN was read.
    read_closed: bool,
    fin: Fin,
    shutdown_write: bool,
    /// Bytes the driver holds that are not yet handed to the kernel.
    queued: usize,
    /// Bytes read and dropped while closing.
    discarded: usize,
    urgent_pending: bool,
    urgent_wanted: bool,
    handles: usize,
    /// The queue is high, as last announced.
    high: bool,
    /// A handle saw the queue reach the high mark since the last announcement.
    crossed_high: bool,
    /// Whether a shutdown notice has arrived and whether it was announced.
    shutdown_notice: bool,
    told_shutdown: bool,
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
            clock: Times {
                established: now,
                first_byte_seen: false,
                last_activity: now,
                read_since: None,
                read_closed_at: None,
                high_since: None,
            },
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// The timeouts in force.
    fn timeouts(&self) -> &Timeouts {
        self.timeouts.as_deref().unwrap_or(&self.config.timeouts)
    }

    /// Whether the application's urgent-data request is still open.
    pub(crate) fn urgent_wanted(&self) -> bool {
        self.urgent_wanted && self.phase == Phase::Open
    }

    /// Takes what handles posted.
    pub(crate) fn on_requests(&mut self, requests: Requests, now: impl Clock) {
        self.handles = requests.handles;
        self.queued += requests.queued;
        self.crossed_high |= requests.crossed_high;
        self.urgent_pending = requests.urgent_pending;
        if let Some(reason) = requests.abort {
            // An abort cuts a graceful close short too: the connection is still live.
            self.end(reason);
        }
        if self.is_ended() {
            return;
        }
        if let Some(timeouts) = requests.timeouts {
            if self.timeouts().idle.is_none() && timeouts.idle.is_some() {
                // The last byte is not tracked while the idle timeout is off: count from now.
                self.clock.last_activity = now.now();
            }
            self.timed = timed(&self.config, &timeouts);
            self.timeouts = (*timeouts != self.config.timeouts).then_some(timeouts);
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

    /// What [`Lifecycle::on_requests`] does when nothing was posted: the handle count and the
    /// urgent bytes still waiting are all that can have changed (the common turn, made cheap).
    pub(crate) fn on_quiet(&mut self, handles: usize, urgent_pending: bool) {
        self.handles = handles;
        self.urgent_pending = urgent_pending;
    }

    /// The next thing to do. Call again after doing it (and after taking new requests).
    pub(crate) fn next(&mut self, now: impl Clock) -> Action {
        if let Phase::Ended(reason) = self.phase {
            return Action::End(reason);
        }
        let high = if self.high {
            self.queued > self.config.limits.low
        } else {
            self.queued >= self.config.limits.high || self.crossed_high
        };
        self.crossed_high = false;
        if high != self.high {
            self.high = high;
            self.clock.high_since =
                (high && self.config.slow_consumer_timeout.is_some()).then(|| now.now());
            return Action::Announce(if high {
                Event::WriteBufferHigh
            } else {
                Event::WriteBufferLow
            });
        }
        if self.phase == Phase::Open {
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
    pub(crate) fn on_read(&mut self, outcome: ReadOutcome, now: impl Clock) -> ReadVerdict {
        match (self.phase, outcome) {
            (Phase::Ended(_), _) => ReadVerdict::Ended,
            (Phase::Closing { .. }, ReadOutcome::Reset) => {
                self.end(ClosureReason::PeerReset);
                ReadVerdict::Ended
            }
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
            (Phase::Open, ReadOutcome::Reset) => {
                self.end(ClosureReason::PeerReset);
                ReadVerdict::AnnounceReset
            }
            (Phase::Open, ReadOutcome::Eof) => {
                self.read_closed = true;
                self.read_requested = false;
                self.clock.read_since = None;
                self.clock.read_closed_at = Some(now.now());
                ReadVerdict::ClientClose
            }
            (Phase::Open, ReadOutcome::Data(_)) => {
                self.read_requested = false;
                self.clock.read_since = None;
                self.clock.first_byte_seen = true;
                self.activity(now);
                ReadVerdict::Deliver
            }
        }
    }

    /// A read failed in a way the application decides on (`on_read_error_may_not_be_fatal`):
    /// the request is used up either way.
    pub(crate) fn on_read_failed(&mut self) {
        self.read_requested = false;
    }

    /// A write failed with a reset: `true` if `on_connection_reset` should run (the connection
    /// was open; while closing a reset just means what we queued is lost).
    pub(crate) fn on_write_reset(&mut self) -> bool {
        let announce = self.phase == Phase::Open;
        self.end(ClosureReason::PeerReset);
        announce
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

    /// The FIN has been sent, so a later `EPIPE` is our own doing rather than the peer's reset.
    pub(crate) fn fin_sent(&self) -> bool {
        self.fin == Fin::Sent
    }

    pub(crate) fn read_closed(&self) -> bool {
        self.read_closed
    }

    /// The clock passed [`Interest::deadline`]: ends the connection if a deadline really passed
    /// (the timer may fire early for a deadline that moved).
    pub(crate) fn on_deadline(&mut self, now: Instant) {
        if let Some((at, reason)) = self.deadline() {
            if at <= now {
                self.end(reason);
            }
        }
    }

    /// Ends the connection with `reason` (an error, a panic, an abort), unless it has ended.
    pub(crate) fn end(&mut self, reason: ClosureReason) {
        if !self.is_ended() {
            self.phase = Phase::Ended(reason);
        }
    }

    pub(crate) fn is_ended(&self) -> bool {
        matches!(self.phase, Phase::Ended(_))
    }

    /// Whether the connection takes no more reads or writes.
    pub(crate) fn is_closing(&self) -> bool {
        self.phase != Phase::Open
    }

    #[cfg(test)]
    fn is_high(&self) -> bool {
        self.high
    }

    fn begin_close(&mut self, reason: ClosureReason, now: impl Clock) {
        self.phase = Phase::Closing {
            reason,
            deadline: now.now() + self.config.close_timeout,
        };
        self.read_requested = false;
        self.urgent_wanted = false;
    }

    fn activity(&mut self, now: impl Clock) {
        if self.timeouts().idle.is_some() {
            self.clock.last_activity = now.now();
        }
    }

    /// The earliest deadline in force and the reason it ends the connection with. Closing, only
    /// the close timeout counts.
    fn deadline(&self) -> Option<(Instant, ClosureReason)> {
        match self.phase {
            Phase::Ended(_) => return None,
            Phase::Closing { deadline, .. } => {
                return Some((deadline, ClosureReason::CloseTimedOut))
            }
            Phase::Open if !self.timed => return None,
            Phase::Open => {}
        }
        let clock = &self.clock;
        let timeouts = self.timeouts();
        let since = |timeout: Option<Duration>, at: Option<Instant>| Some(at? + timeout?);
        [
            (
                since(self.config.slow_consumer_timeout, clock.high_since),
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
                since(
                    timeouts.first_byte,
                    (!clock.first_byte_seen).then_some(clock.established),
                ),
                ClosureReason::FirstByteTimedOut,
            ),
            (
                since(timeouts.half_closed, clock.read_closed_at),
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
