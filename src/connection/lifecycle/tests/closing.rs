//! The graceful close: what it flushes, the reason it ends with, the discard limit, its timeout,
//! and an abort cutting it short.
use super::*;

#[test]
fn close_flushes_the_queue_before_fin_and_refuses_reads() {
    let t0 = Instant::now();
    let mut life = open(t0);
    life.on_requests(
        requests(|r| {
            r.queued = 50;
            r.close = Some(ClosureReason::LocalClose);
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
fn a_close_with_the_applications_code_ends_with_it() {
    let t0 = Instant::now();
    let mut life = open(t0);
    life.on_requests(
        requests(|r| r.close = Some(ClosureReason::Application(4001))),
        t0,
    );
    // A later close asked for changes nothing: the first close's reason stands.
    life.on_requests(requests(|r| r.close = Some(ClosureReason::LocalClose)), t0);
    assert_eq!(life.next(t0), Action::SendFin);
    life.on_fin_sent();
    wait(&mut life, t0);
    life.on_read(ReadOutcome::Eof, t0);
    assert_eq!(life.next(t0), Action::End(ClosureReason::Application(4001)));
}

#[test]
fn a_closing_connection_drops_at_most_the_discard_limit_then_resets() {
    let t0 = Instant::now();
    let mut life = open(t0);
    life.on_requests(requests(|r| r.close = Some(ClosureReason::LocalClose)), t0);
    assert_eq!(life.next(t0), Action::SendFin);
    life.on_fin_sent();
    let Action::Wait(interest) = life.next(t0) else {
        panic!("a closing connection waits")
    };
    assert!(interest.read, "it reads on, to drain what the peer sends");
    assert_eq!(
        life.on_read(ReadOutcome::Data(DISCARD), t0),
        ReadVerdict::Discard
    );
    assert_eq!(life.on_read(ReadOutcome::Data(1), t0), ReadVerdict::Ended);
    assert_eq!(life.next(t0), Action::End(ClosureReason::DiscardLimit));
    assert!(
        !ClosureReason::DiscardLimit.is_graceful(),
        "it ends with a reset"
    );
}

#[test]
fn a_close_with_a_reason_ends_with_it_and_flushes_as_close_does() {
    let t0 = Instant::now();
    let mut life = closing_with(10, ClosureReason::Decode, t0);
    assert!(wait(&mut life, t0).write, "the queue is sent first");
    life.on_written(10, t0);
    assert_eq!(life.next(t0), Action::SendFin);
    life.on_fin_sent();
    life.on_read(ReadOutcome::Eof, t0);
    assert_eq!(life.next(t0), Action::End(ClosureReason::Decode));
}

#[test]
fn a_close_whose_peer_never_closes_keeps_its_reason_and_is_marked_lingering() {
    let t0 = Instant::now();
    let mut life = open(t0);
    life.on_requests(requests(|r| r.close = Some(ClosureReason::LocalClose)), t0);
    let (_, last) = run(&mut life, t0);
    let Action::Wait(interest) = last else {
        panic!()
    };
    assert!(life.fin_sent(), "everything went out, FIN too");
    assert_eq!(interest.deadline, Some(t0 + CLOSE));
    life.on_deadline(t0 + CLOSE - Duration::from_millis(1), || true);
    assert!(!life.is_ended(), "an early timer changes nothing");
    assert!(!life.peer_lingered());
    life.on_deadline(t0 + CLOSE, || true);
    assert_eq!(life.next(t0), Action::End(ClosureReason::LocalClose));
    assert!(life.peer_lingered(), "reported beside the reason");
}

#[test]
fn abort_wins_over_a_close_in_progress_and_over_everything_after() {
    let t0 = Instant::now();
    let mut life = closing_with(10, ClosureReason::LocalClose, t0);
    life.on_requests(requests(|r| r.abort = Some(ClosureReason::AbortAll)), t0);
    assert_eq!(life.next(t0), Action::End(ClosureReason::AbortAll));
    // Nothing moves an ended connection.
    life.on_requests(requests(|r| r.abort = Some(ClosureReason::LocalAbort)), t0);
    life.on_callback_panic();
    assert_eq!(life.on_read(ReadOutcome::Eof, t0), ReadVerdict::Ended);
    assert_eq!(life.next(t0), Action::End(ClosureReason::AbortAll));
}

/// `ends_with_fin` (the driver then lets the socket's close send FIN) holds exactly when the next
/// step after FIN is the end, whatever arrives in between.
#[test]
fn a_fin_that_ends_the_connection_is_known_before_it_is_sent() {
    let t0 = Instant::now();
    // The peer's FIN first, then the close: the FIN ends it.
    let mut life = open(t0);
    life.on_read(ReadOutcome::Eof, t0);
    life.on_requests(requests(|r| r.close = Some(ClosureReason::LocalClose)), t0);
    assert_eq!(life.next(t0), Action::SendFin);
    assert!(life.ends_with_fin());
    life.on_fin_sent();
    // A shutdown notice or a dropped handle in between changes nothing.
    life.on_requests(requests(|r| r.shutdown_notice = true), t0);
    life.on_quiet(0, false);
    assert_eq!(life.next(t0), Action::End(ClosureReason::LocalClose));

    // A close before the peer's FIN: the connection waits for it after ours.
    let mut life = open(t0);
    life.on_requests(requests(|r| r.close = Some(ClosureReason::LocalClose)), t0);
    assert_eq!(life.next(t0), Action::SendFin);
    assert!(!life.ends_with_fin());

    // An open connection whose application shut its side down after the peer's FIN: it could
    // still announce (a shutdown notice) before it ends, so it sends FIN itself.
    let mut life = open(t0);
    life.on_requests(requests(|r| r.handles = 1), t0);
    life.on_read(ReadOutcome::Eof, t0);
    life.on_requests(
        requests(|r| {
            r.shutdown_write = true;
            r.handles = 1;
        }),
        t0,
    );
    assert_eq!(life.next(t0), Action::SendFin);
    assert!(!life.ends_with_fin());
}

/// A write taken after the FIN was asked for and before it went out (a broadcast that met the
/// connection still open, taken once the driver published the close) is sent before the FIN.
#[test]
fn a_write_taken_after_fin_was_asked_for_goes_out_first() {
    let t0 = Instant::now();
    let mut life = open(t0);
    life.on_requests(requests(|r| r.close = Some(ClosureReason::LocalClose)), t0);
    assert_eq!(life.next(t0), Action::SendFin);
    life.on_requests(requests(|r| r.queued = 10), t0);
    assert!(life.has_queued());
    let interest = wait(&mut life, t0);
    assert!(interest.write && interest.fin, "the write, then the FIN");
    life.on_written(10, t0);
    let interest = wait(&mut life, t0);
    assert!(!interest.write && interest.fin);
    life.on_fin_sent();
    life.on_read(ReadOutcome::Eof, t0);
    assert_eq!(life.next(t0), Action::End(ClosureReason::LocalClose));
}
