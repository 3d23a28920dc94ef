//! The mailbox's rules: wake-ups, refusals, the queue level, aborts and the end.

use super::*;
use std::task::Wake;

struct Count(AtomicUsize);
impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn new_mailbox() -> Mailbox {
    Mailbox::new(Arc::new(LifecycleConfig::for_tests()))
}

#[test]
fn posts_while_running_do_not_wake_and_a_parked_driver_is_woken_once() {
    let mailbox = new_mailbox();
    let count = Arc::new(Count(AtomicUsize::new(0)));
    let waker = std::task::Waker::from(count.clone());
    let mut cx = Context::from_waker(&waker);
    // Running: a post sets PENDING only.
    mailbox.request_read();
    assert_eq!(count.0.load(Ordering::SeqCst), 0);
    assert!(mailbox.poll_posted(&mut cx).is_ready());
    let taken = mailbox.take_posted(&mut VecDeque::new());
    assert_eq!(taken, Taken::Read);
    assert_eq!(mailbox.take_posted(&mut VecDeque::new()), Taken::Nothing);
    // Parked: the first post wakes, the second does not wake again.
    assert!(mailbox.poll_posted(&mut cx).is_pending());
    mailbox.request_read();
    mailbox.request_read();
    assert_eq!(count.0.load(Ordering::SeqCst), 1);
    mailbox.unpark();
    assert!(
        mailbox.poll_posted(&mut cx).is_ready(),
        "the mark stays until the take"
    );
    assert_eq!(mailbox.take_posted(&mut VecDeque::new()), Taken::Read);
    // The wake took the waker: the next park registers it again, and a post wakes again.
    assert!(mailbox.poll_posted(&mut cx).is_pending());
    mailbox.write(Bytes::from_static(b"x")).unwrap();
    assert_eq!(count.0.load(Ordering::SeqCst), 2);
    // A wake by the socket: parking again, a post still wakes.
    mailbox.unpark();
    assert_eq!(
        mailbox
            .take_posted(&mut VecDeque::new())
            .into_requests(0)
            .map(|r| r.queued),
        Some(queued_cost(1))
    );
    assert!(mailbox.poll_posted(&mut cx).is_pending());
    mailbox.unpark();
    assert!(mailbox.poll_posted(&mut cx).is_pending());
    mailbox.close(ClosureReason::LocalClose);
    assert_eq!(count.0.load(Ordering::SeqCst), 3);
}

#[test]
fn the_handshake_looking_at_posts_leaves_their_requests_for_the_take() {
    let mailbox = new_mailbox();
    mailbox.request_read();
    mailbox.write(Bytes::from_static(b"early")).unwrap();
    assert_eq!(mailbox.pending_abort(), None);
    // Requests noted but not taken do not keep the handshake awake.
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(mailbox.poll_posted(&mut cx).is_pending());
    mailbox.unpark();
    let mut writes = VecDeque::new();
    let taken = mailbox
        .take_posted(&mut writes)
        .into_requests(0)
        .expect("the posts are still there");
    assert!(taken.read);
    assert_eq!(writes.len(), 1);
}

#[test]
fn a_refused_write_gives_its_bytes_back() {
    let mailbox = new_mailbox();
    mailbox.write(Bytes::from(vec![0; 100])).unwrap();
    let (error, data) = mailbox.write(Bytes::from_static(b"more")).unwrap_err();
    assert!(matches!(error, Error::WriteQueueFull { queued, .. } if queued == queued_cost(100)));
    assert_eq!(&data[..], b"more");
    mailbox.close(ClosureReason::LocalClose);
    let (error, _) = mailbox.write(Bytes::from_static(b"x")).unwrap_err();
    assert!(matches!(error, Error::ConnectionClosed));
}

#[test]
fn a_goodbye_goes_past_the_limit_and_closes_with_it() {
    let mailbox = new_mailbox();
    mailbox.write(Bytes::from(vec![0; 100])).unwrap();
    assert!(mailbox.write(Bytes::from_static(b"more")).is_err());
    mailbox
        .goodbye(Bytes::from_static(b"bye"), ClosureReason::LocalClose)
        .unwrap();
    let (error, data) = mailbox
        .goodbye(Bytes::from_static(b"again"), ClosureReason::LocalClose)
        .unwrap_err();
    assert!(matches!(error, Error::ConnectionClosed), "one last word");
    assert_eq!(&data[..], b"again");
    assert!(mailbox.write(Bytes::from_static(b"x")).is_err());
    let mut writes = VecDeque::new();
    let taken = mailbox.take(&mut writes);
    assert_eq!(taken.queued, queued_cost(100) + queued_cost(3));
    assert_eq!(taken.close, Some(ClosureReason::LocalClose));
    assert_eq!(
        &writes.back().unwrap()[..],
        b"bye",
        "after what was queued before"
    );
}

#[test]
fn the_first_close_asked_for_keeps_its_reason() {
    let mailbox = new_mailbox();
    mailbox.close(ClosureReason::Application(9));
    mailbox.close(ClosureReason::LocalClose);
    assert_eq!(
        mailbox.take(&mut VecDeque::new()).close,
        Some(ClosureReason::Application(9))
    );
}

#[test]
fn the_level_is_posted_minus_sent() {
    let mailbox = new_mailbox();
    // 20 bytes count for 84 (with the buffer's overhead): at or above high (80).
    mailbox.write(Bytes::from(vec![0; 20])).unwrap();
    let mut writes = VecDeque::new();
    assert_eq!(mailbox.take(&mut writes).queued, queued_cost(20));
    assert_eq!(writes.len(), 1);
    assert!(!mailbox.has_room().unwrap(), "at or above high");
    mailbox.publish(Snapshot {
        fate: Fate::Open,
        high: true,
    });
    mailbox.publish_sent(30);
    assert_eq!(mailbox.queued_bytes(), 54);
    assert!(!mailbox.has_room().unwrap(), "high until it drains to low");
    mailbox.publish_sent(14);
    mailbox.publish(Snapshot {
        fate: Fate::Open,
        high: false,
    });
    assert!(mailbox.has_room().unwrap());
}

fn ended() -> Snapshot {
    Snapshot {
        fate: Fate::Ended,
        high: false,
    }
}

#[test]
fn an_abort_after_the_end_is_not_counted_and_one_before_is_handed_back() {
    let mailbox = new_mailbox();
    assert!(mailbox.abort(ClosureReason::AbortAll));
    assert!(!mailbox.abort(ClosureReason::LocalAbort), "asked before");
    assert_eq!(mailbox.publish(ended()), Some(ClosureReason::AbortAll));
    let mailbox = new_mailbox();
    assert_eq!(mailbox.publish(ended()), None);
    assert!(!mailbox.abort(ClosureReason::AbortAll));
    // Published as ended before the abort-all (a reset being announced): not counted.
    let mailbox = new_mailbox();
    assert_eq!(mailbox.publish(ended()), None);
    assert!(!mailbox.abort(ClosureReason::AbortAll));
    assert_eq!(mailbox.publish(ended()), None);
    // Closing is not ended: an abort is still counted.
    let mailbox = new_mailbox();
    mailbox.publish(Snapshot {
        fate: Fate::Closing,
        high: false,
    });
    assert!(mailbox.abort(ClosureReason::AbortAll));
    assert_eq!(mailbox.publish(ended()), Some(ClosureReason::AbortAll));
}

#[test]
fn small_buffers_count_their_overhead_against_the_limit() {
    // The limit is 100: one byte counts for 65, so a third one-byte write is refused.
    let mailbox = new_mailbox();
    mailbox.write(Bytes::from_static(b"a")).unwrap();
    mailbox.write(Bytes::from_static(b"b")).unwrap();
    let (error, data) = mailbox.write(Bytes::from_static(b"c")).unwrap_err();
    assert!(
        matches!(error, Error::WriteQueueFull { queued, limit: 100 } if queued == 2 * queued_cost(1))
    );
    assert_eq!(&data[..], b"c");
}

#[test]
fn staging_is_refused_once_queue_and_staged_bytes_reach_the_limit() {
    let mailbox = new_mailbox();
    mailbox
        .stage(|staged| staged.extend_from_slice(&[0; 30]))
        .unwrap();
    assert!(mailbox.has_room().unwrap(), "the queue itself is empty");
    assert!(
        !mailbox.has_room_to_stage().unwrap(),
        "30 staged bytes count for 94, above the high mark (80)"
    );
    // Below the limit (100), one more piece is taken, and then nothing.
    assert!(mailbox.full_for_staging().is_none());
    mailbox
        .stage(|staged| staged.extend_from_slice(&[0; 10]))
        .unwrap();
    assert!(
        matches!(mailbox.full_for_staging(), Some(Error::WriteQueueFull { queued, .. }) if queued == queued_cost(40)),
        "the check without the lock finds what the staging would"
    );
    let error = mailbox.stage(|_| unreachable!("not run")).unwrap_err();
    assert!(
        matches!(error, Error::WriteQueueFull { queued, limit: 100 } if queued == queued_cost(40))
    );
    // Queued, they count as they did staged.
    mailbox.flush_staged(false).unwrap();
    assert_eq!(mailbox.queued_bytes(), queued_cost(40));
    assert!(
        mailbox.full_for_staging().is_some(),
        "queued, they count the same"
    );
    assert!(mailbox.stage(|_| ()).is_err());
}

#[test]
fn a_batch_queues_as_its_writes_one_by_one_would_with_one_wake() {
    let buffers = [
        Bytes::from_static(b"a"),
        Bytes::new(),
        Bytes::from_static(b"b"),
        Bytes::from_static(b"c"),
    ];
    // One by one: each write until the queue is at its limit.
    let one_by_one = new_mailbox();
    let refusals: Vec<bool> = buffers
        .iter()
        .map(|data| one_by_one.write(data.clone()).is_err())
        .collect();
    assert_eq!(refusals, [false, false, false, true]);

    let batched = new_mailbox();
    let count = Arc::new(Count(AtomicUsize::new(0)));
    let waker = std::task::Waker::from(count.clone());
    assert!(batched
        .poll_posted(&mut Context::from_waker(&waker))
        .is_pending());
    let (error, queued) = batched.write_batch(&buffers).unwrap_err();
    assert_eq!(queued, 3, "refused at the fourth, the first three queued");
    assert!(
        matches!(error, Error::WriteQueueFull { queued, limit: 100 } if queued == 2 * queued_cost(1))
    );
    assert_eq!(count.0.load(Ordering::SeqCst), 1, "one wake for the batch");
    assert_eq!(batched.queued_bytes(), one_by_one.queued_bytes());

    let (mut expected, mut writes) = (VecDeque::new(), VecDeque::new());
    let taken = one_by_one.take(&mut expected);
    let batch = batched.take(&mut writes);
    assert_eq!(writes, expected);
    assert_eq!(writes, [Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
    assert_eq!(batch.queued, taken.queued);
    assert!(batch.crossed_high && taken.crossed_high);

    // Staged bytes go first, and count.
    let staged = new_mailbox();
    staged
        .stage(|staged| staged.extend_from_slice(b"s"))
        .unwrap();
    assert!(matches!(staged.write_batch(&buffers), Err((_, 1))));
    let mut writes = VecDeque::new();
    staged.take(&mut writes);
    assert_eq!(writes, [Bytes::from_static(b"s"), Bytes::from_static(b"a")]);
}

#[test]
fn takes_append_in_order_to_an_empty_queue_and_to_a_non_empty_one() {
    let mailbox = open_mailbox(1000);
    let mut queue = VecDeque::new();
    // Several writes for an empty queue: the two swap their storage.
    write(&mailbox, b"a");
    write(&mailbox, b"b");
    write(&mailbox, b"c");
    assert_eq!(mailbox.take(&mut queue).queued, 3 * queued_cost(1));
    assert_eq!(bytes_of(&queue), b"abc");
    // The inbox, now holding the queue's old storage, takes the next posts; a queue with
    // something unsent gets them after it.
    mailbox
        .write_batch(&[Bytes::from_static(b"d"), Bytes::from_static(b"e")])
        .unwrap();
    mailbox.take(&mut queue);
    assert_eq!(bytes_of(&queue), b"abcde");
    queue.clear();
    write(&mailbox, b"f");
    write(&mailbox, b"g");
    mailbox.take(&mut queue);
    assert_eq!(bytes_of(&queue), b"fg");
    assert_eq!(mailbox.take(&mut queue).queued, 0, "nothing is taken twice");
    assert_eq!(bytes_of(&queue), b"fg");
}

#[test]
fn a_batch_says_whether_the_queue_is_high_and_is_refused_whole_when_closed() {
    let mailbox = new_mailbox();
    assert!(matches!(
        mailbox.write_batch(&[Bytes::from_static(b"a")]),
        Ok(false)
    ));
    assert!(
        matches!(mailbox.write_batch(&[Bytes::from_static(b"b")]), Ok(true)),
        "130 queued, the high mark is 80"
    );
    assert!(matches!(
        mailbox.write_batch(&[Bytes::from_static(b"c")]),
        Err((Error::WriteQueueFull { .. }, 0))
    ));
    mailbox.close(ClosureReason::LocalClose);
    assert!(matches!(
        mailbox.write_batch(&[Bytes::from_static(b"d")]),
        Err((Error::ConnectionClosed, 0))
    ));
}

/// An established connection's mailbox (writes without the inbox lock need one) with a queue
/// limit of `limit`.
fn open_mailbox(limit: usize) -> Mailbox {
    let mut config = LifecycleConfig::for_tests();
    config.limits = WriteLimits {
        limit,
        high: limit * 4 / 5,
        low: limit * 2 / 5,
    };
    let mailbox = Mailbox::new(Arc::new(config));
    mailbox.open_for_upgrades();
    mailbox
}

fn bytes_of(queue: &VecDeque<Bytes>) -> Vec<u8> {
    queue.iter().flat_map(|data| data.iter().copied()).collect()
}

fn write(mailbox: &Mailbox, data: &'static [u8]) {
    mailbox.write(Bytes::from_static(data)).unwrap();
}

#[test]
fn a_callbacks_own_writes_go_straight_to_the_drivers_queue() {
    let mailbox = open_mailbox(1000);
    let mut queue = VecDeque::new();
    let ((), cost) = mailbox.own_writes(&mut queue, || {
        write(&mailbox, b"a");
        assert!(!mailbox.write_is_high(Bytes::from_static(b"b")).unwrap());
    });
    assert_eq!(bytes_of(&queue), b"ab");
    assert_eq!(cost, 2 * queued_cost(1));
    assert_eq!(
        mailbox.queued_bytes(),
        cost,
        "counted in the level handles see"
    );
    assert_eq!(
        mailbox.take_posted(&mut queue),
        Taken::Nothing,
        "nothing posted"
    );
    assert!(mailbox.inbox.get().is_none(), "no inbox was made");
    // Outside a poll, through the inbox.
    write(&mailbox, b"c");
    let taken = mailbox.take_posted(&mut queue).into_requests(0).unwrap();
    assert_eq!(taken.queued, queued_cost(1));
    assert_eq!(bytes_of(&queue), b"abc");
}

#[test]
fn an_own_write_behind_an_untaken_post_goes_through_the_inbox_after_it() {
    let mailbox = open_mailbox(1000);
    let mut queue = VecDeque::new();
    // Another task's write, not taken yet.
    write(&mailbox, b"x");
    let ((), cost) = mailbox.own_writes(&mut queue, || write(&mailbox, b"y"));
    assert_eq!(cost, 0);
    assert!(queue.is_empty());
    let taken = mailbox.take_posted(&mut queue).into_requests(0).unwrap();
    assert_eq!(taken.queued, 2 * queued_cost(1));
    assert_eq!(bytes_of(&queue), b"xy");
    // Once the driver took them, an own write goes straight behind them.
    let ((), cost) = mailbox.own_writes(&mut queue, || write(&mailbox, b"z"));
    assert_eq!(cost, queued_cost(1));
    assert_eq!(bytes_of(&queue), b"xyz");
}

#[test]
fn staged_bytes_go_out_before_an_own_write() {
    let mailbox = open_mailbox(1000);
    let mut queue = VecDeque::new();
    let ((), cost) = mailbox.own_writes(&mut queue, || {
        mailbox
            .stage(|staged| staged.extend_from_slice(b"s"))
            .unwrap();
        write(&mailbox, b"w");
    });
    assert_eq!(cost, 0, "through the inbox, behind the staged bytes");
    let _ = mailbox.take_posted(&mut queue);
    assert_eq!(bytes_of(&queue), b"sw");
}

#[test]
fn own_writes_are_refused_as_writes_through_the_inbox_are() {
    // At the limit: refused with the level, the bytes given back.
    let mailbox = open_mailbox(100);
    let mut queue = VecDeque::new();
    mailbox.own_writes(&mut queue, || {
        write(&mailbox, b"a");
        write(&mailbox, b"b");
        let (error, data) = mailbox.write(Bytes::from_static(b"c")).unwrap_err();
        assert!(
            matches!(error, Error::WriteQueueFull { queued, limit: 100 } if queued == 2 * queued_cost(1))
        );
        assert_eq!(&data[..], b"c");
    });
    assert_eq!(bytes_of(&queue), b"ab");
    let refused = |mailbox: &Mailbox| {
        mailbox
            .own_writes(&mut VecDeque::new(), || {
                mailbox.write(Bytes::from_static(b"late")).unwrap_err().0
            })
            .0
    };
    // A close asked for by the callback itself.
    let mailbox = open_mailbox(1000);
    let error = mailbox
        .own_writes(&mut VecDeque::new(), || {
            mailbox.close(ClosureReason::LocalClose);
            mailbox.write(Bytes::from_static(b"late")).unwrap_err().0
        })
        .0;
    assert!(matches!(error, Error::ConnectionClosed));
    // Writes shut down, and the shutdown taken by the driver since (the inbox has nothing to
    // take any more).
    let mailbox = open_mailbox(1000);
    mailbox.shutdown_write();
    let _ = mailbox.take_posted(&mut VecDeque::new());
    assert!(matches!(refused(&mailbox), Error::WriteShutdown));
    // Closing, as the driver published it.
    let mailbox = open_mailbox(1000);
    mailbox.publish_closing();
    assert!(matches!(refused(&mailbox), Error::ConnectionClosed));
    // Not established yet: the inbox decides (and takes it).
    let mailbox = new_mailbox();
    let mut queue = VecDeque::new();
    let ((), cost) = mailbox.own_writes(&mut queue, || write(&mailbox, b"early"));
    assert_eq!(cost, 0);
    assert!(queue.is_empty());
}

#[test]
fn a_write_to_another_connection_in_a_poll_goes_through_its_inbox() {
    let (a, b) = (open_mailbox(1000), open_mailbox(1000));
    let mut queue = VecDeque::new();
    let ((), cost) = a.own_writes(&mut queue, || {
        write(&b, b"b");
        // A poll inside another's takes no part of the thread.
        let mut inner = VecDeque::new();
        let ((), inner_cost) = b.own_writes(&mut inner, || write(&b, b"c"));
        assert_eq!(inner_cost, 0);
        assert!(inner.is_empty());
    });
    assert_eq!(cost, 0);
    assert!(queue.is_empty());
    let mut taken = VecDeque::new();
    let requests = b.take_posted(&mut taken).into_requests(0).unwrap();
    assert_eq!(requests.queued, 2 * queued_cost(1));
    assert_eq!(bytes_of(&taken), b"bc");
    // After the poll, the thread's part is free again.
    let ((), cost) = b.own_writes(&mut taken, || write(&b, b"d"));
    assert_eq!(cost, queued_cost(1));
    assert_eq!(bytes_of(&taken), b"bcd");
}

#[test]
fn a_poll_that_unwinds_hands_the_threads_part_back() {
    let mailbox = open_mailbox(1000);
    let mut queue = VecDeque::new();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        mailbox.own_writes(&mut queue, || {
            write(&mailbox, b"a");
            panic!("a callback's panic, not caught inside");
        })
    }));
    assert!(unwound.is_err());
    assert_eq!(bytes_of(&queue), b"a", "what it wrote first is queued");
    // Outside a poll again: through the inbox.
    write(&mailbox, b"b");
    let _ = mailbox.take_posted(&mut queue);
    // The next poll takes the thread's part, and counts only its own writes.
    let ((), cost) = mailbox.own_writes(&mut queue, || write(&mailbox, b"c"));
    assert_eq!(cost, queued_cost(1));
    assert_eq!(bytes_of(&queue), b"abc");
}

/// Own writes (without the lock) and writes and batches of another thread (through the inbox)
/// racing for the last room below the limit never both pass: the queue never holds more than
/// the limit plus one write.
#[test]
fn own_writes_and_inbox_writes_racing_exceed_the_limit_by_one_write_at_most() {
    let limit = 10 * queued_cost(1);
    for _ in 0..200 {
        let mailbox = Arc::new(open_mailbox(limit));
        let start = Arc::new(std::sync::Barrier::new(2));
        let other = std::thread::spawn({
            let (mailbox, start) = (mailbox.clone(), start.clone());
            move || {
                start.wait();
                // Single writes and batches, which reserve their cost after counting it.
                let batch = [Bytes::from_static(b"j"), Bytes::from_static(b"k")];
                for turn in 0.. {
                    let queued = if turn % 2 == 0 {
                        mailbox.write(Bytes::from_static(b"i")).is_ok()
                    } else {
                        mailbox.write_batch(&batch).is_ok()
                    };
                    if !queued {
                        break;
                    }
                }
            }
        });
        let mut queue = VecDeque::new();
        mailbox.own_writes(&mut queue, || {
            start.wait();
            while mailbox.write(Bytes::from_static(b"o")).is_ok() {}
        });
        other.join().unwrap();
        let level = mailbox.queued_bytes();
        assert!(level >= limit, "both stopped at the limit: {level}");
        assert!(
            level < limit + queued_cost(1),
            "{level} is past the limit ({limit}) by more than one write"
        );
        let _ = mailbox.take_posted(&mut queue);
        assert_eq!(queue.len() * queued_cost(1), level, "every write counted");
    }
}
