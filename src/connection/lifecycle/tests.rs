//! The lifecycle's rules, without a socket: every path of guarantee 1 (docs/guarantees.md),
//! the lifetime rule, the watermarks and the timeouts.
use super::*;

mod closing;
mod reasons;
mod timeouts;

pub(super) const LIMITS: WriteLimits = WriteLimits {
    limit: 100,
    high: 80,
    low: 40,
};
pub(super) const CLOSE: Duration = Duration::from_secs(5);
pub(super) const DISCARD: usize = 1000;

pub(super) fn config(timeouts: Timeouts) -> LifecycleConfig {
    LifecycleConfig {
        limits: LIMITS,
        timeouts,
        close_timeout: CLOSE,
        close_discard_limit: DISCARD,
        slow_consumer_timeout: None,
    }
}

/// A connection whose application holds a handle and asked for a read, as an echo server's
/// does after `on_connection_established`.
pub(super) fn open(t0: Instant) -> Lifecycle {
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

/// A connection with these timeouts that asked for a read at `t0`.
pub(super) fn reading_with(timeouts: Timeouts, t0: Instant) -> Lifecycle {
    let mut life = Lifecycle::new(config(timeouts), t0);
    life.on_requests(requests(|r| r.read = true), t0);
    life
}

pub(super) fn wait(life: &mut Lifecycle, now: Instant) -> Interest {
    match life.next(now) {
        Action::Wait(interest) => interest,
        other => panic!("expected a wait, got {other:?}"),
    }
}

/// Performs the actions a driver would until a wait or the end; returns the events announced
/// and FINs sent, in order, and the last action. The lifetime rule's decisions are confirmed, as
/// when no weak handle is upgraded meanwhile, and the idle timeout gets the default callback's
/// answer (a reset).
pub(super) fn run(life: &mut Lifecycle, now: Instant) -> (Vec<Action>, Action) {
    let mut done = Vec::new();
    for _ in 0..16 {
        match life.next(now) {
            Action::SendFin => {
                done.push(Action::SendFin);
                life.on_fin_sent();
            }
            Action::ConfirmUnreferenced => life.on_unreferenced(now),
            Action::Announce(event) => {
                if event == Event::IdleTimeout {
                    life.on_idle_answer(IdleAction::Reset, now);
                }
                done.push(Action::Announce(event));
            }
            last => return (done, last),
        }
    }
    panic!("no wait or end after 16 actions: {done:?}");
}

/// An [`open`] connection that asked to close with `reason`, with `queued` bytes still to send.
pub(super) fn closing_with(queued: usize, reason: ClosureReason, t0: Instant) -> Lifecycle {
    let mut life = open(t0);
    life.on_requests(
        requests(|r| {
            r.queued = queued;
            r.close = Some(reason);
        }),
        t0,
    );
    life
}

pub(super) fn requests(change: impl FnOnce(&mut Requests)) -> Requests {
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

/// A read whose reader is gone (`cancel_read`: an awaited client was dropped) keeps nothing open.
#[test]
fn a_cancelled_read_no_longer_keeps_the_connection_open() {
    let t0 = Instant::now();
    let mut life = open(t0);
    assert!(wait(&mut life, t0).read, "the read keeps it open");
    life.cancel_read();
    assert_eq!(life.next(t0), Action::ConfirmUnreferenced);
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
    assert_eq!(life.next(t0), Action::ConfirmUnreferenced);
    life.on_unreferenced(t0);
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
    assert_eq!(life.next(t0), Action::ConfirmUnreferenced);
    assert_eq!(life.phase(), Phase::Open, "not before the driver confirms");
    life.on_unreferenced(t0);
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
fn an_unconfirmed_lifetime_decision_leaves_it_open() {
    // The driver could not confirm (a weak handle was upgraded meanwhile): it takes again and
    // finds the new handle, so the connection stays open; its drop asks again.
    let t0 = Instant::now();
    let mut life = Lifecycle::new(config(Timeouts::default()), t0);
    life.on_requests(requests(|r| r.handles = 0), t0);
    assert_eq!(life.next(t0), Action::ConfirmUnreferenced);
    life.on_requests(requests(|r| r.handles = 1), t0);
    wait(&mut life, t0);
    assert_eq!(life.phase(), Phase::Open);
    // What the upgraded handle asked for before it was dropped is taken with the drop.
    life.on_requests(
        requests(|r| {
            r.read = true;
            r.handles = 0;
        }),
        t0,
    );
    assert!(wait(&mut life, t0).read);
    assert_eq!(life.on_read(ReadOutcome::Eof, t0), ReadVerdict::ClientClose);
    // After the peer's FIN: the rule asks again, and its reason is the peer's close.
    assert_eq!(life.next(t0), Action::ConfirmUnreferenced);
    life.on_unreferenced(t0);
    assert!(matches!(
        life.phase(),
        Phase::Closing {
            reason: ClosureReason::PeerClosed,
            ..
        }
    ));
    // Confirming again, or late, changes nothing.
    life.on_unreferenced(t0);
    assert_eq!(life.next(t0), Action::SendFin);
}

#[test]
fn peer_fin_then_writes_still_go_out_then_closes_as_peer_closed() {
    let t0 = Instant::now();
    let mut life = open(t0);
    wait(&mut life, t0);
    assert_eq!(life.on_read(ReadOutcome::Eof, t0), ReadVerdict::ClientClose);
    // Half-close: the application writes after the FIN (guarantee 3, docs/guarantees.md).
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
fn a_reset_is_announced_while_open_and_silent_while_closing() {
    let t0 = Instant::now();
    let mut life = open(t0);
    wait(&mut life, t0);
    assert_eq!(
        life.on_io_error(Op::Read, IoError::Reset),
        IoVerdict::AnnounceReset
    );
    assert_eq!(life.next(t0), Action::End(ClosureReason::PeerReset));

    let mut life = open(t0);
    life.on_requests(requests(|r| r.close = Some(ClosureReason::LocalClose)), t0);
    run(&mut life, t0);
    assert_eq!(life.on_io_error(Op::Read, IoError::Reset), IoVerdict::Ended);
    assert_eq!(life.next(t0), Action::End(ClosureReason::PeerReset));

    let mut life = open(t0);
    life.on_requests(requests(|r| r.queued = 10), t0);
    assert_eq!(
        life.on_io_error(Op::Write, IoError::Reset),
        IoVerdict::AnnounceReset,
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
    life.on_requests(requests(|r| r.close = Some(ClosureReason::LocalClose)), t0);
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
    assert_eq!(life.next(t0), Action::ConfirmUnreferenced);
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
fn a_crossing_seen_by_a_handle_is_announced_even_if_already_sent() {
    // A writer saw the queue reach the high mark and waits for the low one; by the time the
    // driver looks, it has sent enough to be below high. High and low are still announced, so
    // the writer is woken.
    let t0 = Instant::now();
    let mut life = open(t0);
    life.on_requests(
        requests(|r| {
            r.queued = 10;
            r.crossed_high = true;
        }),
        t0,
    );
    assert_eq!(life.next(t0), Action::Announce(Event::WriteBufferHigh));
    assert_eq!(life.next(t0), Action::Announce(Event::WriteBufferLow));
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
fn urgent_interest_follows_the_request_and_ends_with_the_open_phase() {
    let t0 = Instant::now();
    let mut life = open(t0);
    life.on_requests(requests(|r| r.urgent_wanted = true), t0);
    assert!(wait(&mut life, t0).urgent);
    life.on_urgent_delivered();
    assert!(!wait(&mut life, t0).urgent, "one request, one byte");
    life.on_requests(requests(|r| r.urgent_wanted = true), t0);
    life.on_requests(requests(|r| r.close = Some(ClosureReason::LocalClose)), t0);
    assert!(!life.urgent_wanted());
}

#[test]
fn tls_close_notify_that_blocks_is_polled() {
    let t0 = Instant::now();
    let mut life = open(t0);
    life.on_requests(requests(|r| r.close = Some(ClosureReason::LocalClose)), t0);
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
                    if let Action::Wait(Interest { read: true, .. }) = life.next(t0) {
                        match input {
                            Data => drop(life.on_read(ReadOutcome::Data(1), t0)),
                            Eof => drop(life.on_read(ReadOutcome::Eof, t0)),
                            _ => drop(life.on_io_error(Op::Read, IoError::Reset)),
                        }
                    }
                }
                Close => life.on_requests(
                    requests(|r| {
                        r.close = Some(ClosureReason::LocalClose);
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
                    // As the driver reports it: nothing was posted, the count moved.
                    life.on_quiet(0, false);
                }
                Deadline => life.on_deadline(late, || true),
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
                life.on_deadline(late, || true);
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

/// A turn with nothing posted (`on_quiet`) changes the lifecycle exactly as taking an empty set
/// of requests would, whatever state it is in.
#[test]
fn a_quiet_turn_is_an_empty_take() {
    let t0 = Instant::now();
    let states: [fn(&mut Lifecycle, Instant); 5] = [
        |_, _| {},
        |life, t0| life.on_requests(requests(|r| r.queued = 90), t0),
        |life, t0| life.on_requests(requests(|r| r.close = Some(ClosureReason::LocalClose)), t0),
        |life, t0| {
            let _ = life.on_read(ReadOutcome::Eof, t0);
        },
        |life, t0| life.on_requests(requests(|r| r.abort = Some(ClosureReason::LocalAbort)), t0),
    ];
    for (i, state) in states.iter().enumerate() {
        for (handles, urgent_pending) in [(0, false), (1, false), (2, true)] {
            let mut quiet = open(t0);
            let mut taken = open(t0);
            state(&mut quiet, t0);
            state(&mut taken, t0);
            quiet.on_quiet(handles, urgent_pending);
            taken.on_requests(
                requests(|r| {
                    r.handles = handles;
                    r.urgent_pending = urgent_pending;
                }),
                t0,
            );
            assert_eq!(format!("{quiet:?}"), format!("{taken:?}"), "state {i}");
            assert_eq!(quiet.next(t0), taken.next(t0), "state {i}");
        }
    }
}

/// `next`'s answer for a steady connection (its common turn, decided without the rules) is the
/// one every rule gives, and leaves the lifecycle as they would; so is `steady_after_write`'s
/// after such a wait and bytes written, which answers nothing where the rules would not give a
/// steady wait: checked on every state that sequences of three inputs reach, each followed by
/// what a driver does until it waits.
#[test]
fn the_steady_turn_decides_as_every_rule_does() {
    #[derive(Debug, Clone, Copy)]
    enum Input {
        Data,
        Eof,
        ReadRequest,
        Queue(usize),
        Written,
        Handles(usize),
        Notice,
        Close,
        ShutdownWrite,
        ReadTimeout(bool),
        Urgent,
        Deadline,
    }
    use Input::*;
    let inputs = [
        Data,
        Eof,
        ReadRequest,
        Queue(10),
        Queue(60),
        Written,
        Handles(0),
        Handles(1),
        Notice,
        Close,
        ShutdownWrite,
        ReadTimeout(true),
        ReadTimeout(false),
        Urgent,
        Deadline,
    ];
    let t0 = Instant::now();
    let later = t0 + Duration::from_secs(1);
    let check = |life: &mut Lifecycle,
                 now: Instant,
                 sequence: &[Input],
                 steady: &mut usize,
                 after_writes: &mut usize| {
        let mut by_the_rules = life.clone();
        let expected = by_the_rules.next_by_the_rules(now);
        *steady += usize::from(life.is_steady());
        // What the driver asks after a wait given to a steady connection and a write of all or
        // part of the queue: the wait `next` gives then, or nothing (the lifecycle untouched)
        // where `next` would answer otherwise.
        if let Action::Wait(Interest { steady: true, .. }) = expected {
            let queued = life.queued;
            for sent in [queued, queued / 2] {
                let mut wrote = life.clone();
                let _ = wrote.next(now);
                wrote.on_written(sent, now);
                let mut asked = wrote.clone();
                let mut rules = wrote.clone();
                let by_the_rules = rules.next_by_the_rules(now);
                match asked.steady_after_write() {
                    Some(interest) => {
                        assert_eq!(Action::Wait(interest), by_the_rules, "{sequence:?}");
                        assert_eq!(format!("{asked:?}"), format!("{rules:?}"), "{sequence:?}");
                    }
                    None => {
                        assert!(
                            !matches!(by_the_rules, Action::Wait(Interest { steady: true, .. })),
                            "{sequence:?}"
                        );
                        assert_eq!(format!("{asked:?}"), format!("{wrote:?}"), "{sequence:?}");
                    }
                }
                *after_writes += 1;
            }
        }
        assert_eq!(life.next(now), expected, "{sequence:?}");
        assert_eq!(
            format!("{life:?}"),
            format!("{by_the_rules:?}"),
            "{sequence:?}"
        );
    };
    let mut steady = 0;
    let mut after_writes = 0;
    let n = inputs.len();
    for code in 0..n.pow(3) {
        let sequence: Vec<Input> = (0..3).map(|i| inputs[(code / n.pow(i)) % n]).collect();
        let mut life = open(t0);
        let mut queued = 0;
        for input in &sequence {
            match *input {
                Data | Eof => {
                    if let Action::Wait(Interest { read: true, .. }) = life.next(t0) {
                        let outcome = match input {
                            Data => ReadOutcome::Data(1),
                            _ => ReadOutcome::Eof,
                        };
                        let _ = life.on_read(outcome, t0);
                    }
                }
                ReadRequest => life.on_requests(requests(|r| r.read = true), t0),
                Queue(bytes) => {
                    queued += bytes;
                    life.on_requests(requests(|r| r.queued = bytes), t0);
                }
                Written => {
                    life.on_written(queued, t0);
                    queued = 0;
                }
                Handles(handles) => life.on_quiet(handles, false),
                Notice => life.on_requests(requests(|r| r.shutdown_notice = true), t0),
                Close => {
                    life.on_requests(requests(|r| r.close = Some(ClosureReason::LocalClose)), t0);
                }
                ShutdownWrite => life.on_requests(requests(|r| r.shutdown_write = true), t0),
                ReadTimeout(on) => {
                    let timeouts = Timeouts {
                        read: on.then_some(Duration::from_secs(10)),
                        ..Timeouts::default()
                    };
                    life.on_requests(requests(|r| r.timeouts = Some(Box::new(timeouts))), t0);
                }
                Urgent => life.on_requests(requests(|r| r.urgent_wanted = true), t0),
                Deadline => life.on_deadline(later, || true),
            }
            check(&mut life, later, &sequence, &mut steady, &mut after_writes);
            let _ = run(&mut life, later);
            check(&mut life, later, &sequence, &mut steady, &mut after_writes);
        }
    }
    assert!(steady > 1000, "steady states were reached {steady} times");
    assert!(
        after_writes > 1000,
        "writes after a steady wait were checked {after_writes} times"
    );
}
