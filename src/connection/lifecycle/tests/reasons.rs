//! The reason table of the module docs, one row a test: every [`ClosureReason`] and the inputs
//! that produce it, without a socket (guarantee 16, docs/guarantees.md). The last tests check
//! that every reason has its row and that nothing after the decision replaces it, but an abort
//! counted before the end was published.

use super::*;

const SECOND: Duration = Duration::from_secs(1);

/// Drives `life` as a driver would (FIN sent, the lifetime rule confirmed) and returns the
/// reason it ended with, if it has.
fn ended(life: &mut Lifecycle, now: Instant) -> Option<ClosureReason> {
    match run(life, now).1 {
        Action::End(reason) => Some(reason),
        _ => None,
    }
}

/// A connection that asked to close with `reason`, whose FIN went out and whose peer then sent
/// its own FIN.
fn closed_with(reason: ClosureReason) -> Option<ClosureReason> {
    let t0 = Instant::now();
    let mut life = open(t0);
    life.on_requests(requests(|r| r.close = Some(reason)), t0);
    assert_eq!(ended(&mut life, t0), None, "waits for the peer's FIN");
    assert_eq!(life.on_read(ReadOutcome::Eof, t0), ReadVerdict::Discard);
    ended(&mut life, t0)
}

fn aborted_with(reason: ClosureReason) -> Option<ClosureReason> {
    let t0 = Instant::now();
    let mut life = open(t0);
    life.on_requests(requests(|r| r.abort = Some(reason)), t0);
    ended(&mut life, t0)
}

/// A connection open with `timeouts` (and `slow_consumer`), driven as `drive` says from `t0`,
/// whose timer fires `after` `t0`.
fn timed_out(
    timeouts: Timeouts,
    slow_consumer: Option<Duration>,
    drive: impl FnOnce(&mut Lifecycle, Instant),
    after: Duration,
) -> Option<ClosureReason> {
    let t0 = Instant::now();
    let mut life = Lifecycle::new(
        LifecycleConfig {
            slow_consumer_timeout: slow_consumer,
            ..config(timeouts)
        },
        t0,
    );
    life.on_requests(requests(|r| r.read = true), t0);
    drive(&mut life, t0);
    life.on_deadline(t0 + after, || true);
    ended(&mut life, t0 + after)
}

/// A connection before establishment, in `step`, fed `fail`.
fn starting(
    step: Option<Step>,
    fail: impl FnOnce(&mut Lifecycle, Instant),
) -> Option<ClosureReason> {
    let t0 = Instant::now();
    let mut life = Lifecycle::starting(config(Timeouts::default()), t0);
    if let Some(step) = step {
        life.begin_step(step, 10 * SECOND, t0);
    }
    fail(&mut life, t0);
    life.ended_with()
}

/// Asks the application about an I/O error of `op` and gets `keep` as its answer.
fn asked(op: Op, keep: bool) -> Option<ClosureReason> {
    let t0 = Instant::now();
    let mut life = open(t0);
    life.on_requests(requests(|r| r.queued = 10), t0);
    wait(&mut life, t0);
    assert_eq!(life.on_io_error(op, IoError::Other), IoVerdict::Ask);
    life.on_error_answer(op, keep);
    life.ended_with()
}

#[test]
fn peer_closed_the_peers_fin_then_ours() {
    let t0 = Instant::now();
    let mut life = open(t0);
    wait(&mut life, t0);
    assert_eq!(life.on_read(ReadOutcome::Eof, t0), ReadVerdict::ClientClose);
    // The application holds nothing and queued nothing: FIN goes out, and that is the end.
    assert_eq!(ended(&mut life, t0), Some(ClosureReason::PeerClosed));
    // Before establishment: the peer closed during the header or the handshake.
    assert_eq!(
        starting(Some(Step::Handshake), |life, _| life
            .on_start_failed(StartFailure::PeerClosed)),
        Some(ClosureReason::PeerClosed)
    );
}

#[test]
fn peer_reset_a_reset_read_or_written_or_during_a_step() {
    for op in [Op::Read, Op::Write] {
        let t0 = Instant::now();
        let mut life = open(t0);
        life.on_requests(requests(|r| r.queued = 10), t0);
        wait(&mut life, t0);
        assert_eq!(
            life.on_io_error(op, IoError::Reset),
            IoVerdict::AnnounceReset
        );
        assert_eq!(life.ended_with(), Some(ClosureReason::PeerReset));
    }
    // EPIPE after the peer's FIN and before ours is the peer's reset.
    let t0 = Instant::now();
    let mut life = open(t0);
    life.on_requests(requests(|r| r.handles = 1), t0);
    wait(&mut life, t0);
    life.on_read(ReadOutcome::Eof, t0);
    life.on_requests(
        requests(|r| {
            r.queued = 10;
            r.handles = 1;
        }),
        t0,
    );
    assert_eq!(
        life.on_io_error(Op::Write, IoError::BrokenPipe),
        IoVerdict::AnnounceReset
    );
    assert_eq!(life.ended_with(), Some(ClosureReason::PeerReset));
    assert_eq!(
        starting(Some(Step::ProxyHeader), |life, _| {
            life.on_io_error(Op::Read, IoError::Reset);
        }),
        Some(ClosureReason::PeerReset)
    );
}

#[test]
fn local_close_application_and_the_frame_layers_reasons_a_close_asked_for() {
    for reason in [
        ClosureReason::LocalClose,
        ClosureReason::Application(4001),
        ClosureReason::Decode,
        ClosureReason::FrameTooLong,
        ClosureReason::PartialFrame,
    ] {
        assert_eq!(closed_with(reason), Some(reason));
    }
}

#[test]
fn local_abort_abort_all_and_shutdown_forced_an_abort_asked_for() {
    for reason in [
        ClosureReason::LocalAbort,
        ClosureReason::AbortAll,
        ClosureReason::ShutdownForced,
    ] {
        assert_eq!(aborted_with(reason), Some(reason));
    }
}

#[test]
fn unreferenced_nothing_keeps_it_open() {
    let t0 = Instant::now();
    let mut life = Lifecycle::new(config(Timeouts::default()), t0);
    assert_eq!(life.next(t0), Action::ConfirmUnreferenced);
    life.on_unreferenced(t0);
    assert_eq!(ended(&mut life, t0), None);
    life.on_read(ReadOutcome::Eof, t0);
    assert_eq!(ended(&mut life, t0), Some(ClosureReason::Unreferenced));
}

#[test]
fn read_error_and_write_error_the_application_did_not_keep_it() {
    assert_eq!(asked(Op::Read, false), Some(ClosureReason::ReadError));
    assert_eq!(asked(Op::Write, false), Some(ClosureReason::WriteError));
    assert_eq!(asked(Op::Read, true), None, "kept: it goes on");
    assert_eq!(asked(Op::Write, true), None);
    // Before establishment nobody is asked.
    assert_eq!(
        starting(Some(Step::ProxyHeader), |life, _| {
            life.on_io_error(Op::Read, IoError::Other);
        }),
        Some(ClosureReason::ReadError)
    );
}

#[test]
fn close_timed_out_a_close_that_could_not_send_everything() {
    let t0 = Instant::now();
    let mut life = closing_with(10, ClosureReason::LocalClose, t0);
    wait(&mut life, t0);
    life.on_deadline(t0 + CLOSE, || true);
    assert_eq!(ended(&mut life, t0), Some(ClosureReason::CloseTimedOut));
    assert!(!life.peer_lingered());
    // Everything sent, FIN too, but the peer acknowledged nothing (it reads nothing).
    let mut life = open(t0);
    life.on_requests(requests(|r| r.close = Some(ClosureReason::LocalClose)), t0);
    run(&mut life, t0);
    assert!(life.fin_sent());
    life.on_deadline(t0 + CLOSE, || false);
    assert_eq!(ended(&mut life, t0), Some(ClosureReason::CloseTimedOut));
    assert!(!life.peer_lingered());
}

#[test]
fn callback_panic_ends_it_unless_it_has_ended() {
    let t0 = Instant::now();
    let mut life = open(t0);
    life.on_callback_panic();
    assert_eq!(ended(&mut life, t0), Some(ClosureReason::CallbackPanic));
    // A panic in `on_connection_reset` keeps the reset.
    let mut life = open(t0);
    wait(&mut life, t0);
    life.on_io_error(Op::Read, IoError::Reset);
    life.on_callback_panic();
    assert_eq!(life.ended_with(), Some(ClosureReason::PeerReset));
}

#[test]
fn tls_error_and_tls_alert_a_failure_of_ours_or_the_peers_alert() {
    for (from_peer, reason) in [
        (false, ClosureReason::TlsError),
        (true, ClosureReason::TlsAlert),
    ] {
        let t0 = Instant::now();
        let mut life = open(t0);
        wait(&mut life, t0);
        assert_eq!(
            life.on_io_error(Op::Read, IoError::Tls { from_peer }),
            IoVerdict::AnnounceTls { from_peer }
        );
        assert_eq!(life.ended_with(), Some(reason));
        // During the handshake too.
        assert_eq!(
            starting(Some(Step::Handshake), |life, _| {
                life.on_io_error(Op::Read, IoError::Tls { from_peer });
            }),
            Some(reason)
        );
    }
}

#[test]
fn handshake_timed_out_and_handshake_limit() {
    assert_eq!(
        starting(Some(Step::Handshake), |life, t0| {
            life.on_deadline(t0 + 10 * SECOND - Duration::from_millis(1), || true);
            assert!(!life.is_ended(), "an early timer changes nothing");
            life.on_deadline(t0 + 10 * SECOND, || true);
        }),
        Some(ClosureReason::HandshakeTimedOut)
    );
    assert_eq!(
        starting(None, |life, _| life
            .on_start_failed(StartFailure::NoHandshakeSlot)),
        Some(ClosureReason::HandshakeLimit)
    );
    // Waiting for the first byte, with no first-byte timeout shorter than the handshake's, the
    // handshake's deadline is the one.
    for first_byte in [None, Some(10 * SECOND), Some(20 * SECOND)] {
        assert_eq!(
            first_byte_step(first_byte, |life, t0| {
                assert_eq!(life.step_deadline(), Some(t0 + 10 * SECOND));
                life.on_deadline(t0 + 10 * SECOND, || true);
            }),
            Some(ClosureReason::HandshakeTimedOut),
            "first-byte timeout {first_byte:?}"
        );
    }
}

/// An accepted TLS connection waiting for its first byte ([`Step::FirstByte`], with a handshake
/// timeout of 10 s) under a first-byte timeout of `first_byte`, fed `fail`.
fn first_byte_step(
    first_byte: Option<Duration>,
    fail: impl FnOnce(&mut Lifecycle, Instant),
) -> Option<ClosureReason> {
    let t0 = Instant::now();
    let timeouts = Timeouts {
        first_byte,
        ..Timeouts::default()
    };
    let mut life = Lifecycle::starting(config(timeouts), t0);
    life.begin_step(Step::FirstByte, 10 * SECOND, t0);
    fail(&mut life, t0);
    life.ended_with()
}

#[test]
fn handshake_evicted_its_slot_went_to_a_newer_connection_before_its_first_byte() {
    assert_eq!(
        first_byte_step(Some(SECOND), |life, _| life
            .on_start_failed(StartFailure::Evicted)),
        Some(ClosureReason::HandshakeEvicted)
    );
    // Nothing but the lifecycle's own inputs end it after that.
    let t0 = Instant::now();
    let mut life = Lifecycle::starting(config(Timeouts::default()), t0);
    life.begin_step(Step::FirstByte, 10 * SECOND, t0);
    life.on_start_failed(StartFailure::Evicted);
    life.on_deadline(t0 + 10 * SECOND, || true);
    life.on_io_error(Op::Read, IoError::Reset);
    assert_eq!(life.ended_with(), Some(ClosureReason::HandshakeEvicted));
}

#[test]
fn first_byte_timed_out_open_or_waiting_for_the_first_handshake_byte() {
    let first_byte = Timeouts {
        first_byte: Some(SECOND),
        ..Timeouts::default()
    };
    assert_eq!(
        timed_out(first_byte, None, |_, _| {}, SECOND),
        Some(ClosureReason::FirstByteTimedOut)
    );
    // Before a TLS client's first byte: the first-byte timeout, shorter than the handshake's,
    // bounds the wait.
    assert_eq!(
        first_byte_step(Some(SECOND), |life, t0| {
            assert_eq!(life.step_deadline(), Some(t0 + SECOND));
            life.on_deadline(t0 + SECOND - Duration::from_millis(1), || true);
            assert!(!life.is_ended(), "an early timer changes nothing");
            life.on_deadline(t0 + SECOND, || true);
        }),
        Some(ClosureReason::FirstByteTimedOut)
    );
    // Once the byte came, the handshake has the rest of its own time, from its start.
    assert_eq!(
        first_byte_step(Some(SECOND), |life, t0| {
            life.on_step_done();
            life.begin_step(Step::Handshake, 10 * SECOND, t0);
            life.on_deadline(t0 + 2 * SECOND, || true);
            assert!(!life.is_ended(), "the first-byte deadline is over");
            life.on_deadline(t0 + 10 * SECOND, || true);
        }),
        Some(ClosureReason::HandshakeTimedOut)
    );
}

#[test]
fn proxy_protocol_a_refused_or_late_header() {
    assert_eq!(
        starting(None, |life, _| life
            .on_start_failed(StartFailure::HeaderRefused)),
        Some(ClosureReason::ProxyProtocol)
    );
    assert_eq!(
        starting(Some(Step::ProxyHeader), |life, t0| life
            .on_deadline(t0 + 10 * SECOND, || true)),
        Some(ClosureReason::ProxyProtocol)
    );
}

#[test]
fn per_ip_limit_refused_at_admission_or_for_the_client_a_header_named() {
    assert_eq!(
        starting(None, |life, _| life
            .on_start_failed(StartFailure::PerIpLimit)),
        Some(ClosureReason::PerIpLimit)
    );
    assert_eq!(
        starting(Some(Step::ProxyHeader), |life, _| {
            life.on_step_done();
            life.on_start_failed(StartFailure::PerIpLimit);
        }),
        Some(ClosureReason::PerIpLimit)
    );
}

#[test]
fn the_open_phases_timeouts() {
    let idle = Timeouts {
        idle: Some(SECOND),
        ..Timeouts::default()
    };
    assert_eq!(
        timed_out(idle, None, |_, _| {}, SECOND),
        Some(ClosureReason::IdleTimedOut)
    );
    let read = Timeouts {
        read: Some(SECOND),
        ..Timeouts::default()
    };
    assert_eq!(
        timed_out(
            read,
            None,
            |life, t0| {
                wait(life, t0);
            },
            SECOND
        ),
        Some(ClosureReason::ReadTimedOut)
    );
    let half_closed = Timeouts {
        half_closed: Some(SECOND),
        ..Timeouts::default()
    };
    let peer_fin_held_open = |life: &mut Lifecycle, t0| {
        life.on_requests(requests(|r| r.handles = 1), t0);
        wait(life, t0);
        life.on_read(ReadOutcome::Eof, t0);
    };
    assert_eq!(
        timed_out(half_closed, None, peer_fin_held_open, SECOND),
        Some(ClosureReason::HalfClosedTimedOut)
    );
    let queue_held_high = |life: &mut Lifecycle, t0| {
        life.on_requests(requests(|r| r.queued = LIMITS.high), t0);
        assert_eq!(
            life.next(t0),
            Action::Announce(Event::WriteBufferHigh),
            "high from now"
        );
    };
    assert_eq!(
        timed_out(Timeouts::default(), Some(SECOND), queue_held_high, SECOND),
        Some(ClosureReason::SlowConsumer)
    );
}

#[test]
fn discard_limit_a_peer_that_streams_on_while_we_close() {
    let t0 = Instant::now();
    let mut life = open(t0);
    life.on_requests(requests(|r| r.close = Some(ClosureReason::LocalClose)), t0);
    run(&mut life, t0);
    assert_eq!(
        life.on_read(ReadOutcome::Data(DISCARD), t0),
        ReadVerdict::Discard
    );
    assert_eq!(life.on_read(ReadOutcome::Data(1), t0), ReadVerdict::Ended);
    assert_eq!(life.ended_with(), Some(ClosureReason::DiscardLimit));
}

/// The row (the test above) of each reason: a new [`ClosureReason`] does not compile here until
/// it has one.
fn row(reason: ClosureReason) -> &'static str {
    use ClosureReason::*;
    match reason {
        PeerClosed => "peer_closed_the_peers_fin_then_ours",
        PeerReset => "peer_reset_a_reset_read_or_written_or_during_a_step",
        LocalClose | Application(_) | Decode | FrameTooLong | PartialFrame => {
            "local_close_application_and_the_frame_layers_reasons_a_close_asked_for"
        }
        LocalAbort | AbortAll | ShutdownForced => {
            "local_abort_abort_all_and_shutdown_forced_an_abort_asked_for"
        }
        Unreferenced => "unreferenced_nothing_keeps_it_open",
        ReadError | WriteError => "read_error_and_write_error_the_application_did_not_keep_it",
        CloseTimedOut => "close_timed_out_a_close_that_could_not_send_everything",
        CallbackPanic => "callback_panic_ends_it_unless_it_has_ended",
        TlsError | TlsAlert => "tls_error_and_tls_alert_a_failure_of_ours_or_the_peers_alert",
        HandshakeTimedOut | HandshakeLimit => "handshake_timed_out_and_handshake_limit",
        ProxyProtocol => "proxy_protocol_a_refused_or_late_header",
        PerIpLimit => "per_ip_limit_refused_at_admission_or_for_the_client_a_header_named",
        IdleTimedOut | ReadTimedOut | HalfClosedTimedOut | SlowConsumer => {
            "the_open_phases_timeouts"
        }
        FirstByteTimedOut => "first_byte_timed_out_open_or_waiting_for_the_first_handshake_byte",
        HandshakeEvicted => {
            "handshake_evicted_its_slot_went_to_a_newer_connection_before_its_first_byte"
        }
        DiscardLimit => "discard_limit_a_peer_that_streams_on_while_we_close",
    }
}

#[test]
fn every_reason_has_a_row() {
    let source = include_str!("reasons.rs");
    for &reason in ClosureReason::ALL {
        let test = format!("fn {}()", row(reason));
        assert!(source.contains(&test), "{reason:?}: no test {test}");
    }
}

/// Guarantee 16: a close whose data and FIN went out keeps its reason when the peer never
/// closes its end; the lingering peer is reported beside it.
#[test]
fn a_lingering_peer_keeps_the_reason_decided_before() {
    for reason in [
        ClosureReason::Application(4001),
        ClosureReason::FrameTooLong,
        ClosureReason::Decode,
        ClosureReason::LocalClose,
    ] {
        let t0 = Instant::now();
        let mut life = closing_with(10, reason, t0);
        wait(&mut life, t0);
        life.on_written(10, t0);
        assert_eq!(ended(&mut life, t0), None, "FIN sent, the peer's awaited");
        life.on_deadline(t0 + CLOSE, || true);
        assert_eq!(ended(&mut life, t0), Some(reason));
        assert!(life.peer_lingered());
    }
}

/// An abort counted before the end was published wins over the reason decided; after it,
/// nothing changes the reason.
#[test]
fn an_abort_counted_before_publication_wins_and_nothing_moves_the_end_after() {
    let t0 = Instant::now();
    let mut life = open(t0);
    wait(&mut life, t0);
    life.on_deadline(t0, || true);
    life.on_io_error(Op::Read, IoError::Reset);
    assert_eq!(life.ended_with(), Some(ClosureReason::PeerReset));
    // The driver's publication hands back the abort-all the mailbox counted before it.
    life.on_abort(ClosureReason::AbortAll);
    assert_eq!(life.ended_with(), Some(ClosureReason::AbortAll));
    life.on_abort(ClosureReason::LocalAbort);
    life.on_callback_panic();
    life.on_io_error(Op::Write, IoError::Tls { from_peer: true });
    life.on_deadline(t0 + CLOSE, || true);
    assert_eq!(ended(&mut life, t0), Some(ClosureReason::AbortAll));
}
