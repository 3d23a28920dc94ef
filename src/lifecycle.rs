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

use std::time::Duration;

use tokio::time::Instant;

use crate::{ClosureReason, Timeouts};

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
    pub(crate) slow_consumer_timeout: Option<Duration>,
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
    /// Leave the I/O loop; the closing events follow with this reason.
    End(ClosureReason),
}

/// What handles posted since the driver last looked (see `mailbox`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Requests {
    pub(crate) read: bool,
    /// Bytes newly queued for writing.
    pub(crate) queued: usize,
    /// Urgent bytes are waiting to be sent.
    pub(crate) urgent_pending: bool,
    /// The application wants the next urgent byte.
    pub(crate) urgent_wanted: bool,
    pub(crate) shutdown_write: bool,
    pub(crate) close: bool,
    pub(crate) abort: Option<ClosureReason>,
    pub(crate) shutdown_notice: bool,
    /// The application changed the timeouts.
    pub(crate) timeouts: Option<Timeouts>,
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
struct Clock {
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
    config: LifecycleConfig,
    timeouts: Timeouts,
    phase: Phase,
    read_requested: bool,
    /// The peer's FIN was read.
    read_closed: bool,
    fin: Fin,
    shutdown_write: bool,
    /// Bytes the driver holds that are not yet handed to the kernel.
    queued: usize,
    urgent_pending: bool,
    urgent_wanted: bool,
    handles: usize,
    /// The queue is high, as last announced.
    high: bool,
    /// Whether a shutdown notice has arrived and whether it was announced.
    shutdown_notice: bool,
    told_shutdown: bool,
    clock: Clock,
}

impl Lifecycle {
    /// A connection established at `now`.
    pub(crate) fn new(config: LifecycleConfig, now: Instant) -> Self {
        Lifecycle {
            timeouts: config.timeouts,
            config,
            phase: Phase::Open,
            read_requested: false,
            read_closed: false,
            fin: Fin::NotSent,
            shutdown_write: false,
            queued: 0,
            urgent_pending: false,
            urgent_wanted: false,
            handles: 0,
            high: false,
            shutdown_notice: false,
            told_shutdown: false,
            clock: Clock {
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

    /// Whether the application's urgent-data request is still open.
    pub(crate) fn urgent_wanted(&self) -> bool {
        self.urgent_wanted && self.phase == Phase::Open
    }

    /// Takes what handles posted.
    pub(crate) fn on_requests(&mut self, requests: Requests, now: Instant) {
        self.handles = requests.handles;
        self.queued += requests.queued;
        self.urgent_pending = requests.urgent_pending;
        if let Some(reason) = requests.abort {
            // An abort cuts a graceful close short too: the connection is still live.
            self.end(reason);
        }
        if self.is_ended() {
            return;
        }
        if let Some(timeouts) = requests.timeouts {
            if self.timeouts.idle.is_none() && timeouts.idle.is_some() {
                // The last byte is not tracked while the idle timeout is off: count from now.
                self.clock.last_activity = now;
            }
            self.timeouts = timeouts;
        }
        self.shutdown_notice |= requests.shutdown_notice;
        self.shutdown_write |= requests.shutdown_write;
        if self.phase == Phase::Open {
            self.read_requested |= requests.read && !self.read_closed;
            self.urgent_wanted |= requests.urgent_wanted;
            if requests.close {
                self.begin_close(ClosureReason::LocalClose, now);
            }
        }
    }

    /// The next thing to do. Call again after doing it (and after taking new requests).
    pub(crate) fn next(&mut self, now: Instant) -> Action {
        if let Phase::Ended(reason) = self.phase {
            return Action::End(reason);
        }
        let high = if self.high {
            self.queued > self.config.limits.low
        } else {
            self.queued >= self.config.limits.high
        };
        if high != self.high {
            self.high = high;
            self.clock.high_since = high.then_some(now);
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
            if nothing_pending || nothing_possible {
                let reason = if self.read_closed {
                    ClosureReason::PeerClosed
                } else {
                    ClosureReason::Unreferenced
                };
                self.begin_close(reason, now);
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
            // Reading on while closing drains what the peer still sends, so that closing the
            // socket with unread data does not turn our FIN into a reset.
            !self.read_closed
        } else {
            // Reads pause while the write queue is at its limit: a peer that sends without
            // reading our replies is held back by TCP flow control instead of growing the queue.
            self.read_requested && self.queued < self.config.limits.limit
        };
        if self.timeouts.read.is_some() && read && !closing {
            self.clock.read_since.get_or_insert(now);
        } else {
            self.clock.read_since = None;
        }
        Action::Wait(Interest {
            read,
            write: self.queued > 0,
            fin: self.fin == Fin::Sending,
            urgent: self.urgent_wanted(),
            deadline: self.deadline().map(|(at, _)| at),
        })
    }

    /// The outcome of a read polled because [`Interest::read`] asked for it.
    pub(crate) fn on_read(&mut self, outcome: ReadOutcome, now: Instant) -> ReadVerdict {
        match (self.phase, outcome) {
            (Phase::Ended(_), _) => ReadVerdict::Ended,
            (Phase::Closing { .. }, ReadOutcome::Reset) => {
                self.end(ClosureReason::PeerReset);
                ReadVerdict::Ended
            }
            (Phase::Closing { .. }, outcome) => {
                if outcome == ReadOutcome::Eof {
                    self.read_closed = true;
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
                self.clock.read_closed_at = Some(now);
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
    pub(crate) fn on_written(&mut self, bytes: usize, now: Instant) {
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

    fn begin_close(&mut self, reason: ClosureReason, now: Instant) {
        self.phase = Phase::Closing {
            reason,
            deadline: now + self.config.close_timeout,
        };
        self.read_requested = false;
        self.urgent_wanted = false;
    }

    fn activity(&mut self, now: Instant) {
        if self.timeouts.idle.is_some() {
            self.clock.last_activity = now;
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
            Phase::Open => {}
        }
        let clock = &self.clock;
        let timeouts = &self.timeouts;
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: WriteLimits = WriteLimits {
        limit: 100,
        high: 80,
        low: 40,
    };
    const CLOSE: Duration = Duration::from_secs(5);

    fn config(timeouts: Timeouts) -> LifecycleConfig {
        LifecycleConfig {
            limits: LIMITS,
            timeouts,
            close_timeout: CLOSE,
            slow_consumer_timeout: None,
        }
    }

    /// A connection whose application holds a handle and asked for a read, as an echo server's
    /// does after `on_connection_established`.
    fn open(t0: Instant) -> Lifecycle {
        let mut life = Lifecycle::new(config(Timeouts::default()), t0);
        life.on_requests(
            Requests {
                read: true,
                ..Requests::default()
            },
            t0,
        );
        life
    }

    fn wait(life: &mut Lifecycle, now: Instant) -> Interest {
        match life.next(now) {
            Action::Wait(interest) => interest,
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    /// Performs the actions a driver would until a wait or the end; returns the events announced
    /// and FINs sent, in order, and the last action.
    fn run(life: &mut Lifecycle, now: Instant) -> (Vec<Action>, Action) {
        let mut done = Vec::new();
        for _ in 0..16 {
            match life.next(now) {
                Action::SendFin => {
                    done.push(Action::SendFin);
                    life.on_fin_sent();
                }
                Action::Announce(event) => done.push(Action::Announce(event)),
                last => return (done, last),
            }
        }
        panic!("no wait or end after 16 actions: {done:?}");
    }

    fn requests(change: impl FnOnce(&mut Requests)) -> Requests {
        let mut requests = Requests::default();
        change(&mut requests);
        requests
    }

    #[test]
    fn a_pending_read_keeps_the_connection_open_and_is_used_up_by_data() {
        let t0 = Instant::now();
        let mut life = open(t0);
        assert!(wait(&mut life, t0).read);
        assert_eq!(
            life.on_read(ReadOutcome::Data(10), t0),
            ReadVerdict::Deliver
        );
        // No read, no write, no handle: the lifetime rule closes it gracefully.
        let (done, last) = run(&mut life, t0);
        assert_eq!(done, vec![Action::SendFin]);
        let Action::Wait(interest) = last else {
            panic!("closing waits for the peer's FIN")
        };
        assert!(interest.read, "closing drains what the peer still sends");
        assert_eq!(interest.deadline, Some(t0 + CLOSE));
        assert_eq!(life.on_read(ReadOutcome::Eof, t0), ReadVerdict::Discard);
        assert_eq!(
            life.next(t0),
            Action::End(ClosureReason::Unreferenced),
            "ends once both FINs are through"
        );
    }

    #[test]
    fn each_thing_pending_keeps_it_open_by_itself() {
        let t0 = Instant::now();
        for keep in 0..4 {
            let mut life = Lifecycle::new(config(Timeouts::default()), t0);
            life.on_requests(
                requests(|r| match keep {
                    0 => r.read = true,
                    1 => r.queued = 5,
                    2 => r.urgent_pending = true,
                    _ => r.handles = 1,
                }),
                t0,
            );
            assert!(
                matches!(life.next(t0), Action::Wait(_)),
                "case {keep} closed"
            );
            assert_eq!(life.phase(), Phase::Open);
        }
        // Asking for urgent data alone does not keep a connection open.
        let mut life = Lifecycle::new(config(Timeouts::default()), t0);
        life.on_requests(requests(|r| r.urgent_wanted = true), t0);
        assert_eq!(life.next(t0), Action::SendFin);
    }

    #[test]
    fn the_last_handle_dropped_closes_it() {
        let t0 = Instant::now();
        let mut life = Lifecycle::new(config(Timeouts::default()), t0);
        life.on_requests(requests(|r| r.handles = 2), t0);
        wait(&mut life, t0);
        life.on_requests(requests(|r| r.handles = 1), t0);
        wait(&mut life, t0);
        life.on_requests(requests(|r| r.handles = 0), t0);
        assert_eq!(life.next(t0), Action::SendFin);
        assert!(matches!(
            life.phase(),
            Phase::Closing {
                reason: ClosureReason::Unreferenced,
                ..
            }
        ));
    }

    #[test]
    fn peer_fin_then_writes_still_go_out_then_closes_as_peer_closed() {
        let t0 = Instant::now();
        let mut life = open(t0);
        wait(&mut life, t0);
        assert_eq!(life.on_read(ReadOutcome::Eof, t0), ReadVerdict::ClientClose);
        // Half-close: the application writes after the FIN (guarantee 3).
        life.on_requests(requests(|r| r.queued = 30), t0);
        let interest = wait(&mut life, t0);
        assert!(interest.write && !interest.read);
        life.on_written(30, t0);
        let (done, last) = run(&mut life, t0);
        assert_eq!(done, vec![Action::SendFin]);
        assert_eq!(last, Action::End(ClosureReason::PeerClosed));
    }

    #[test]
    fn both_fins_end_it_even_with_a_handle_held() {
        let t0 = Instant::now();
        let mut life = open(t0);
        life.on_requests(
            requests(|r| {
                r.handles = 1;
                r.shutdown_write = true;
            }),
            t0,
        );
        assert_eq!(life.next(t0), Action::SendFin);
        life.on_fin_sent();
        wait(&mut life, t0);
        assert_eq!(life.on_read(ReadOutcome::Eof, t0), ReadVerdict::ClientClose);
        let (_, last) = run(&mut life, t0);
        assert_eq!(last, Action::End(ClosureReason::PeerClosed));
    }

    #[test]
    fn close_flushes_the_queue_before_fin_and_refuses_reads() {
        let t0 = Instant::now();
        let mut life = open(t0);
        life.on_requests(
            requests(|r| {
                r.queued = 50;
                r.close = true;
                r.read = true;
                r.handles = 1;
            }),
            t0,
        );
        assert!(life.is_closing());
        let interest = wait(&mut life, t0);
        assert!(
            interest.write && !interest.fin,
            "no FIN before the queue is sent"
        );
        life.on_written(20, t0);
        wait(&mut life, t0);
        life.on_written(30, t0);
        assert_eq!(life.next(t0), Action::SendFin);
        life.on_fin_sent();
        assert_eq!(life.on_read(ReadOutcome::Data(7), t0), ReadVerdict::Discard);
        wait(&mut life, t0);
        life.on_read(ReadOutcome::Eof, t0);
        assert_eq!(life.next(t0), Action::End(ClosureReason::LocalClose));
    }

    #[test]
    fn a_close_that_does_not_finish_times_out() {
        let t0 = Instant::now();
        let mut life = open(t0);
        life.on_requests(requests(|r| r.close = true), t0);
        let (_, last) = run(&mut life, t0);
        let Action::Wait(interest) = last else {
            panic!()
        };
        assert_eq!(interest.deadline, Some(t0 + CLOSE));
        life.on_deadline(t0 + CLOSE - Duration::from_millis(1));
        assert!(!life.is_ended(), "an early timer changes nothing");
        life.on_deadline(t0 + CLOSE);
        assert_eq!(life.next(t0), Action::End(ClosureReason::CloseTimedOut));
    }

    #[test]
    fn abort_wins_over_a_close_in_progress_and_over_everything_after() {
        let t0 = Instant::now();
        let mut life = open(t0);
        life.on_requests(
            requests(|r| {
                r.queued = 10;
                r.close = true;
            }),
            t0,
        );
        life.on_requests(requests(|r| r.abort = Some(ClosureReason::AbortAll)), t0);
        assert_eq!(life.next(t0), Action::End(ClosureReason::AbortAll));
        // Nothing moves an ended connection.
        life.on_requests(requests(|r| r.abort = Some(ClosureReason::LocalAbort)), t0);
        life.end(ClosureReason::CallbackPanic);
        assert_eq!(life.on_read(ReadOutcome::Eof, t0), ReadVerdict::Ended);
        assert_eq!(life.next(t0), Action::End(ClosureReason::AbortAll));
    }

    #[test]
    fn a_reset_is_announced_while_open_and_silent_while_closing() {
        let t0 = Instant::now();
        let mut life = open(t0);
        wait(&mut life, t0);
        assert_eq!(
            life.on_read(ReadOutcome::Reset, t0),
            ReadVerdict::AnnounceReset
        );
        assert_eq!(life.next(t0), Action::End(ClosureReason::PeerReset));

        let mut life = open(t0);
        life.on_requests(requests(|r| r.close = true), t0);
        run(&mut life, t0);
        assert_eq!(life.on_read(ReadOutcome::Reset, t0), ReadVerdict::Ended);
        assert_eq!(life.next(t0), Action::End(ClosureReason::PeerReset));

        let mut life = open(t0);
        life.on_requests(requests(|r| r.queued = 10), t0);
        assert!(
            life.on_write_reset(),
            "a write's reset is announced while open"
        );
        assert_eq!(life.next(t0), Action::End(ClosureReason::PeerReset));
    }

    #[test]
    fn at_most_one_client_close() {
        let t0 = Instant::now();
        let mut life = open(t0);
        life.on_requests(requests(|r| r.handles = 1), t0);
        assert_eq!(life.on_read(ReadOutcome::Eof, t0), ReadVerdict::ClientClose);
        life.on_requests(
            requests(|r| {
                r.read = true;
                r.handles = 1;
            }),
            t0,
        );
        assert!(
            !wait(&mut life, t0).read,
            "a read after the FIN is not polled"
        );
    }

    #[test]
    fn shutdown_notice_is_announced_once_and_not_while_closing() {
        let t0 = Instant::now();
        let mut life = open(t0);
        life.on_requests(requests(|r| r.shutdown_notice = true), t0);
        assert_eq!(life.next(t0), Action::Announce(Event::ShutdownRequested));
        life.on_requests(requests(|r| r.shutdown_notice = true), t0);
        assert!(matches!(life.next(t0), Action::Wait(_)));

        let mut life = open(t0);
        life.on_requests(requests(|r| r.close = true), t0);
        life.on_requests(requests(|r| r.shutdown_notice = true), t0);
        assert_eq!(life.next(t0), Action::SendFin);
    }

    #[test]
    fn the_notice_is_told_before_the_lifetime_rule_closes() {
        // The shutdown notice and the last handle's drop arrive together: the application hears
        // of the shutdown first.
        let t0 = Instant::now();
        let mut life = Lifecycle::new(config(Timeouts::default()), t0);
        life.on_requests(requests(|r| r.shutdown_notice = true), t0);
        assert_eq!(life.next(t0), Action::Announce(Event::ShutdownRequested));
        assert_eq!(life.next(t0), Action::SendFin);
    }

    #[test]
    fn watermarks_announce_high_then_low_with_hysteresis() {
        let t0 = Instant::now();
        let mut life = open(t0);
        life.on_requests(requests(|r| r.queued = 80), t0);
        assert_eq!(life.next(t0), Action::Announce(Event::WriteBufferHigh));
        assert!(life.is_high());
        life.on_written(30, t0); // 50: between the marks, still high
        assert!(matches!(life.next(t0), Action::Wait(_)));
        assert!(life.is_high());
        life.on_written(10, t0); // 40: at the low mark
        assert_eq!(life.next(t0), Action::Announce(Event::WriteBufferLow));
        assert!(!life.is_high());
        life.on_requests(requests(|r| r.queued = 39), t0); // 79: below high
        assert!(matches!(life.next(t0), Action::Wait(_)));
    }

    #[test]
    fn a_full_queue_pauses_reads_until_it_drains_below_the_limit() {
        let t0 = Instant::now();
        let mut life = open(t0);
        life.on_requests(requests(|r| r.queued = 100), t0);
        assert_eq!(life.next(t0), Action::Announce(Event::WriteBufferHigh));
        let interest = wait(&mut life, t0);
        assert!(!interest.read && interest.write);
        life.on_written(1, t0);
        assert!(wait(&mut life, t0).read);
    }

    #[test]
    fn a_slow_consumer_is_cut_off_after_its_timeout() {
        let t0 = Instant::now();
        let mut life = Lifecycle::new(
            LifecycleConfig {
                slow_consumer_timeout: Some(Duration::from_secs(3)),
                ..config(Timeouts::default())
            },
            t0,
        );
        life.on_requests(requests(|r| r.queued = 90), t0);
        assert_eq!(life.next(t0), Action::Announce(Event::WriteBufferHigh));
        let interest = wait(&mut life, t0);
        assert_eq!(interest.deadline, Some(t0 + Duration::from_secs(3)));
        life.on_deadline(t0 + Duration::from_secs(3));
        assert_eq!(life.next(t0), Action::End(ClosureReason::SlowConsumer));
    }

    #[test]
    fn each_timeout_ends_with_its_own_reason() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let cases: [(Timeouts, ClosureReason); 4] = [
            (
                Timeouts {
                    idle: Some(second),
                    ..Timeouts::default()
                },
                ClosureReason::IdleTimedOut,
            ),
            (
                Timeouts {
                    read: Some(second),
                    ..Timeouts::default()
                },
                ClosureReason::ReadTimedOut,
            ),
            (
                Timeouts {
                    first_byte: Some(second),
                    ..Timeouts::default()
                },
                ClosureReason::FirstByteTimedOut,
            ),
            (
                Timeouts {
                    half_closed: Some(second),
                    ..Timeouts::default()
                },
                ClosureReason::HalfClosedTimedOut,
            ),
        ];
        for (timeouts, reason) in cases {
            let mut life = Lifecycle::new(config(timeouts), t0);
            life.on_requests(
                requests(|r| {
                    r.read = true;
                    r.handles = 1;
                }),
                t0,
            );
            if reason == ClosureReason::HalfClosedTimedOut {
                wait(&mut life, t0);
                life.on_read(ReadOutcome::Eof, t0);
            }
            let interest = wait(&mut life, t0);
            assert_eq!(interest.deadline, Some(t0 + second), "{reason}");
            life.on_deadline(t0 + second);
            assert_eq!(life.next(t0), Action::End(reason));
        }
    }

    #[test]
    fn traffic_moves_the_idle_and_first_byte_deadlines() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut life = Lifecycle::new(
            config(Timeouts {
                idle: Some(second),
                first_byte: Some(second),
                ..Timeouts::default()
            }),
            t0,
        );
        life.on_requests(requests(|r| r.read = true), t0);
        wait(&mut life, t0);
        let t1 = t0 + second / 2;
        life.on_read(ReadOutcome::Data(1), t1);
        life.on_requests(requests(|r| r.read = true), t1);
        assert_eq!(wait(&mut life, t1).deadline, Some(t1 + second));
        life.on_deadline(t0 + second);
        assert!(
            !life.is_ended(),
            "the first byte came, the idle clock moved"
        );
    }

    #[test]
    fn each_read_request_gets_the_whole_read_timeout() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut life = Lifecycle::new(
            config(Timeouts {
                read: Some(second),
                ..Timeouts::default()
            }),
            t0,
        );
        life.on_requests(requests(|r| r.read = true), t0);
        assert_eq!(wait(&mut life, t0).deadline, Some(t0 + second));
        let t1 = t0 + second / 2;
        life.on_read(ReadOutcome::Data(1), t1);
        life.on_requests(requests(|r| r.read = true), t1);
        assert_eq!(wait(&mut life, t1).deadline, Some(t1 + second));
    }

    #[test]
    fn a_read_paused_by_a_full_queue_does_not_count_toward_the_read_timeout() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut life = Lifecycle::new(
            config(Timeouts {
                read: Some(second),
                ..Timeouts::default()
            }),
            t0,
        );
        life.on_requests(requests(|r| r.read = true), t0);
        assert_eq!(wait(&mut life, t0).deadline, Some(t0 + second));
        life.on_requests(requests(|r| r.queued = 100), t0);
        let _ = life.next(t0); // high
        let interest = wait(&mut life, t0);
        assert!(!interest.read);
        assert_eq!(interest.deadline, None);
        let t1 = t0 + 2 * second;
        life.on_written(100, t1);
        let _ = life.next(t1); // low
        assert_eq!(wait(&mut life, t1).deadline, Some(t1 + second));
    }

    #[test]
    fn turning_the_idle_timeout_on_counts_from_then() {
        let t0 = Instant::now();
        let mut life = open(t0);
        let t1 = t0 + Duration::from_secs(10);
        life.on_requests(
            requests(|r| {
                r.timeouts = Some(Timeouts {
                    idle: Some(Duration::from_secs(1)),
                    ..Timeouts::default()
                })
            }),
            t1,
        );
        assert_eq!(
            wait(&mut life, t1).deadline,
            Some(t1 + Duration::from_secs(1))
        );
    }

    #[test]
    fn urgent_interest_follows_the_request_and_ends_with_the_open_phase() {
        let t0 = Instant::now();
        let mut life = open(t0);
        life.on_requests(requests(|r| r.urgent_wanted = true), t0);
        assert!(wait(&mut life, t0).urgent);
        life.on_urgent_delivered();
        assert!(!wait(&mut life, t0).urgent, "one request, one byte");
        life.on_requests(requests(|r| r.urgent_wanted = true), t0);
        life.on_requests(requests(|r| r.close = true), t0);
        assert!(!life.urgent_wanted());
    }

    #[test]
    fn tls_close_notify_that_blocks_is_polled() {
        let t0 = Instant::now();
        let mut life = open(t0);
        life.on_requests(requests(|r| r.close = true), t0);
        assert_eq!(life.next(t0), Action::SendFin);
        life.on_fin_blocked();
        let interest = wait(&mut life, t0);
        assert!(interest.fin);
        life.on_fin_sent();
        assert!(!wait(&mut life, t0).fin);
        assert!(life.fin_sent());
    }

    /// Every order of a set of inputs ends in exactly one `End`, after which the lifecycle never
    /// acts again, and a connection that nothing keeps open never waits forever.
    #[test]
    fn every_order_of_inputs_ends_once() {
        #[derive(Debug, Clone, Copy)]
        enum Input {
            Data,
            Eof,
            Reset,
            Close,
            Abort,
            Notice,
            Queue,
            Written,
            DropHandle,
            Deadline,
        }
        use Input::*;
        let inputs = [
            Data, Eof, Reset, Close, Abort, Notice, Queue, Written, DropHandle, Deadline,
        ];
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(3600);
        // Every sequence of four inputs (10^4 orders), each driven to its end.
        for n in 0..10_000_usize {
            let sequence: Vec<Input> = (0..4).map(|i| inputs[(n / 10_usize.pow(i)) % 10]).collect();
            let mut life = open(t0);
            let mut handles = 1;
            life.on_requests(requests(|r| r.handles = 1), t0);
            let mut queued = 0;
            let mut ends = 0;
            for input in &sequence {
                match input {
                    Data | Eof | Reset => {
                        let outcome = match input {
                            Data => ReadOutcome::Data(1),
                            Eof => ReadOutcome::Eof,
                            _ => ReadOutcome::Reset,
                        };
                        if let Action::Wait(Interest { read: true, .. }) = life.next(t0) {
                            life.on_read(outcome, t0);
                        }
                    }
                    Close => life.on_requests(
                        requests(|r| {
                            r.close = true;
                            r.handles = handles;
                        }),
                        t0,
                    ),
                    Abort => life.on_requests(
                        requests(|r| {
                            r.abort = Some(ClosureReason::LocalAbort);
                            r.handles = handles;
                        }),
                        t0,
                    ),
                    Notice => life.on_requests(
                        requests(|r| {
                            r.shutdown_notice = true;
                            r.handles = handles;
                        }),
                        t0,
                    ),
                    Queue => {
                        if !life.is_closing() {
                            queued += 10;
                            life.on_requests(
                                requests(|r| {
                                    r.queued = 10;
                                    r.handles = handles;
                                }),
                                t0,
                            );
                        }
                    }
                    Written => {
                        life.on_written(queued, t0);
                        queued = 0;
                    }
                    DropHandle => {
                        handles = 0;
                        life.on_requests(requests(|r| r.handles = 0), t0);
                    }
                    Deadline => life.on_deadline(late),
                }
                if let (_, Action::End(_)) = run(&mut life, t0) {
                    ends += 1;
                }
            }
            // Let the peer finish and everything drain: the connection must end.
            life.on_written(queued, t0);
            handles = 0;
            life.on_requests(requests(|r| r.handles = handles), t0);
            let _ = life.on_read(ReadOutcome::Eof, t0);
            let (_, last) = run(&mut life, t0);
            let last = match last {
                Action::Wait(_) => {
                    life.on_deadline(late);
                    run(&mut life, t0).1
                }
                last => last,
            };
            let Action::End(reason) = last else {
                panic!("{sequence:?} never ended: {last:?}");
            };
            assert!(life.is_ended());
            assert_eq!(life.next(late), Action::End(reason), "{sequence:?}");
            let _ = ends;
        }
    }
}
