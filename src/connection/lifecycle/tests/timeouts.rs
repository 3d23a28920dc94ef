//! The timeouts: the slow consumer's, each phase's own, the idle timeout and its answer, and
//! what moves their deadlines.
use super::*;

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
    life.on_deadline(t0 + Duration::from_secs(3), || true);
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
        life.on_deadline(t0 + second, || true);
        assert_eq!(run(&mut life, t0).1, Action::End(reason));
        assert!(life.resets_on_close(), "{reason}");
    }
}

/// An idle connection is announced first; the application's answer decides how it ends, with
/// the idle reason either way.
#[test]
fn the_idle_timeout_asks_and_resets_by_default() {
    let t0 = Instant::now();
    let second = Duration::from_secs(1);
    let mut life = reading_with(
        Timeouts {
            idle: Some(second),
            ..Timeouts::default()
        },
        t0,
    );
    assert_eq!(wait(&mut life, t0).deadline, Some(t0 + second));
    life.on_deadline(t0 + second, || true);
    assert!(!life.is_ended(), "not before the application answered");
    assert_eq!(life.next(t0), Action::Announce(Event::IdleTimeout));
    life.on_idle_answer(IdleAction::Reset, t0 + second);
    assert_eq!(life.next(t0), Action::End(ClosureReason::IdleTimedOut));
    assert!(life.resets_on_close());
}

#[test]
fn an_idle_connection_closed_gracefully_sends_its_last_words_then_fin() {
    let t0 = Instant::now();
    let second = Duration::from_secs(1);
    let t1 = t0 + second;
    let mut life = reading_with(
        Timeouts {
            idle: Some(second),
            ..Timeouts::default()
        },
        t0,
    );
    wait(&mut life, t0);
    life.on_deadline(t1, || true);
    assert_eq!(life.next(t1), Action::Announce(Event::IdleTimeout));
    // The callback writes a last line before it answers: taken after its answer.
    life.on_idle_answer(IdleAction::Close, t1);
    life.on_requests(requests(|r| r.queued = 10), t1);
    assert_eq!(life.snapshot().fate, Fate::Closing);
    let interest = wait(&mut life, t1);
    assert!(interest.write && !interest.fin, "the last words before FIN");
    assert_eq!(
        interest.deadline,
        Some(t1 + CLOSE),
        "bounded by the close timeout"
    );
    life.on_written(10, t1);
    let (done, last) = run(&mut life, t1);
    assert_eq!(done, vec![Action::SendFin]);
    assert!(matches!(last, Action::Wait(_)), "waits for the peer's FIN");
    assert_eq!(life.on_read(ReadOutcome::Eof, t1), ReadVerdict::Discard);
    assert_eq!(life.next(t1), Action::End(ClosureReason::IdleTimedOut));
    assert!(!life.resets_on_close(), "closed with FIN");
}

#[test]
fn a_graceful_idle_close_that_times_out_or_is_aborted_resets() {
    let t0 = Instant::now();
    let second = Duration::from_secs(1);
    let idle = Timeouts {
        idle: Some(second),
        ..Timeouts::default()
    };
    let closing = |t1| {
        let mut life = reading_with(idle, t0);
        wait(&mut life, t0);
        life.on_deadline(t1, || true);
        assert_eq!(life.next(t1), Action::Announce(Event::IdleTimeout));
        life.on_idle_answer(IdleAction::Close, t1);
        life
    };
    let t1 = t0 + second;
    // The peer never reads: the last words stay queued past the close timeout.
    let mut life = closing(t1);
    life.on_requests(requests(|r| r.queued = 10), t1);
    wait(&mut life, t1);
    life.on_deadline(t1 + CLOSE, || false);
    assert_eq!(life.next(t1), Action::End(ClosureReason::CloseTimedOut));
    assert!(life.resets_on_close());
    // An abort-all meanwhile.
    let mut life = closing(t1);
    life.on_abort(ClosureReason::AbortAll);
    assert_eq!(life.next(t1), Action::End(ClosureReason::AbortAll));
    assert!(life.resets_on_close());
}

/// What ended or closed the connection before the answer came keeps its reason.
#[test]
fn an_idle_answer_after_the_end_changes_nothing() {
    let t0 = Instant::now();
    let mut life = closing_with(0, ClosureReason::LocalClose, t0);
    life.on_idle_answer(IdleAction::Reset, t0);
    life.on_idle_answer(IdleAction::Close, t0);
    assert_eq!(life.snapshot().fate, Fate::Closing);
    life.on_fin_sent();
    life.on_read(ReadOutcome::Eof, t0);
    assert_eq!(life.next(t0), Action::End(ClosureReason::LocalClose));
    assert!(!life.resets_on_close());
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
    life.on_deadline(t0 + second, || true);
    assert!(
        !life.is_ended(),
        "the first byte came, the idle clock moved"
    );
}

#[test]
fn each_read_request_gets_the_whole_read_timeout() {
    let t0 = Instant::now();
    let second = Duration::from_secs(1);
    let mut life = waiting_for_a_read_timed(second, t0);
    let t1 = t0 + second / 2;
    life.on_read(ReadOutcome::Data(1), t1);
    life.on_requests(requests(|r| r.read = true), t1);
    assert_eq!(wait(&mut life, t1).deadline, Some(t1 + second));
}

#[test]
fn a_read_paused_by_a_full_queue_does_not_count_toward_the_read_timeout() {
    let t0 = Instant::now();
    let second = Duration::from_secs(1);
    let mut life = waiting_for_a_read_timed(second, t0);
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
            r.timeouts = Some(Box::new(Timeouts {
                idle: Some(Duration::from_secs(1)),
                ..Timeouts::default()
            }))
        }),
        t1,
    );
    assert_eq!(
        wait(&mut life, t1).deadline,
        Some(t1 + Duration::from_secs(1))
    );
}

/// A read timeout turned off while a read waits takes its deadline with it, and the connection
/// is steady again: the wait after a write comes from the steady path, with no deadline.
#[test]
fn turning_the_read_timeout_off_while_a_read_waits_leaves_no_deadline() {
    let t0 = Instant::now();
    let second = Duration::from_secs(1);
    let mut life = waiting_for_a_read_timed(second, t0);
    let t1 = t0 + second / 2;
    life.on_requests(
        requests(|r| r.timeouts = Some(Box::new(Timeouts::default()))),
        t1,
    );
    life.on_requests(requests(|r| r.queued = 10), t1);
    life.on_written(10, t1);
    let interest = life
        .steady_after_write()
        .expect("untimed, reading, nothing to announce: steady");
    assert_eq!(interest.deadline, None);
    assert!(interest.read);
    assert_eq!(wait(&mut life, t1 + 2 * second).deadline, None);
    assert!(!life.is_ended(), "no read timeout is left to end it");
}

/// A connection reading under a read timeout of `timeout`, waiting since `t0` with that
/// deadline.
fn waiting_for_a_read_timed(timeout: Duration, t0: Instant) -> Lifecycle {
    let mut life = reading_with(
        Timeouts {
            read: Some(timeout),
            ..Timeouts::default()
        },
        t0,
    );
    assert_eq!(wait(&mut life, t0).deadline, Some(t0 + timeout));
    life
}
