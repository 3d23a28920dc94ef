//! The race between the lifetime rule and upgrading a weak handle, without a socket: the
//! mailbox's handle count and seal with the lifecycle, in every order of their steps, and then
//! on real threads.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use crate::closure::ClosureReason;
use crate::connection::lifecycle::{Action, Interest, Lifecycle, LifecycleConfig, Phase, Requests};
use crate::connection::mailbox::Mailbox;

fn config() -> Arc<LifecycleConfig> {
    Arc::new(LifecycleConfig::for_tests())
}

#[test]
fn upgrades_are_refused_before_establishment_and_from_a_close_on() {
    let mailbox = Mailbox::new(config());
    assert!(!mailbox.try_upgrade(), "not established yet");
    mailbox.open_for_upgrades();
    assert!(mailbox.try_upgrade());
    assert_eq!(mailbox.handles(), 1);
    assert!(!mailbox.seal_unreferenced(), "a handle is counted");
    mailbox.drop_handle();
    assert!(!mailbox.seal_unreferenced(), "the drop is not taken yet");
    let _ = mailbox.take_posted(&mut VecDeque::new());
    assert!(mailbox.seal_unreferenced());
    assert!(!mailbox.try_upgrade(), "sealed by the lifetime rule");
    assert_eq!(mailbox.handles(), 0);

    let mailbox = Mailbox::new(config());
    mailbox.open_for_upgrades();
    mailbox.close(ClosureReason::LocalClose);
    assert!(!mailbox.try_upgrade(), "closing");
    let mailbox = Mailbox::new(config());
    mailbox.open_for_upgrades();
    mailbox.abort(ClosureReason::LocalAbort);
    assert!(!mailbox.try_upgrade(), "aborted");
    let mailbox = Mailbox::new(config());
    mailbox.open_for_upgrades();
    mailbox.mark_ended();
    assert!(!mailbox.try_upgrade(), "a reset or an error seen");
    let mailbox = Mailbox::new(config());
    mailbox.open_for_upgrades();
    mailbox.publish_closing();
    assert!(!mailbox.try_upgrade(), "closing for any other reason");
}

/// What the application does with the weak handle once upgraded, before dropping it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Usage {
    Read,
    Write,
}

/// The connection's task, one step at a time, as `driver::Driver::pump` runs it: a take (with
/// the lifecycle's next action), then, if the lifetime rule asked, the confirming seal.
struct Model {
    mailbox: Mailbox,
    life: Lifecycle,
    writes: VecDeque<Bytes>,
    asked_to_confirm: bool,
    now: Instant,
}

impl Model {
    fn new(strong_handles: usize) -> Model {
        let now = Instant::now();
        let mailbox = Mailbox::new(config());
        for _ in 0..strong_handles {
            mailbox.add_handle();
        }
        mailbox.open_for_upgrades();
        Model {
            mailbox,
            life: Lifecycle::new(config(), now),
            writes: VecDeque::new(),
            asked_to_confirm: false,
            now,
        }
    }

    fn take(&mut self) {
        let requests = self
            .mailbox
            .take_posted(&mut self.writes)
            .into_requests(self.mailbox.handles())
            .unwrap_or(Requests {
                handles: self.mailbox.handles(),
                ..Requests::default()
            });
        self.life.on_requests(requests, self.now);
        self.asked_to_confirm = self.life.next(self.now) == Action::ConfirmUnreferenced;
        self.publish();
    }

    fn confirm(&mut self) {
        if std::mem::take(&mut self.asked_to_confirm) && self.mailbox.seal_unreferenced() {
            self.life.on_unreferenced(self.now);
        }
        self.publish();
    }

    fn publish(&self) {
        if self.life.is_closing() {
            self.mailbox.publish_closing();
        }
    }

    /// Turns until nothing changes; the action the connection then rests on.
    fn settle(&mut self) -> Action {
        for _ in 0..8 {
            self.take();
            self.confirm();
        }
        self.life.next(self.now)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Take,
    Confirm,
    DropStrong,
    Upgrade,
    Use,
    DropWeak,
}

/// Every interleaving of `driver`, `strong` and `weak`, each in its own order.
fn interleavings(lists: [&[Step]; 3]) -> Vec<Vec<Step>> {
    fn go(lists: [&[Step]; 3], prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
        if lists.iter().all(|list| list.is_empty()) {
            out.push(prefix.clone());
            return;
        }
        for i in 0..3 {
            if let Some((first, rest)) = lists[i].split_first() {
                let mut next = lists;
                next[i] = rest;
                prefix.push(*first);
                go(next, prefix, out);
                prefix.pop();
            }
        }
    }
    let mut out = Vec::new();
    go(lists, &mut Vec::new(), &mut out);
    out
}

/// The lifetime rule and an upgrade never both win: in every order of the connection's task
/// (three turns), the drop of the last counted handle and a weak handle's upgrade, use and drop,
/// - while the application holds a handle, the connection is open;
/// - an upgrade refused means the rule had decided to close (and it does close);
/// - an upgrade granted means what the handle asked for is honoured: its read keeps the
///   connection open, its write is taken and goes out before any FIN.
#[test]
fn the_lifetime_rule_and_an_upgrade_never_both_win() {
    use Step::*;
    let driver = [Take, Confirm, Take, Confirm, Take, Confirm];
    let mut orders = 0;
    for strong in [0, 1] {
        let strong_steps: &[Step] = if strong == 1 { &[DropStrong] } else { &[] };
        for usage in [Usage::Read, Usage::Write] {
            for order in interleavings([&driver, strong_steps, &[Upgrade, Use, DropWeak]]) {
                orders += 1;
                let mut model = Model::new(strong);
                let mut strong_held = strong == 1;
                let mut weak_held = false;
                let mut upgraded = false;
                let mut wrote = false;
                for step in &order {
                    match step {
                        Take => model.take(),
                        Confirm => model.confirm(),
                        DropStrong => {
                            strong_held = false;
                            model.mailbox.drop_handle();
                        }
                        Upgrade => {
                            upgraded = model.mailbox.try_upgrade();
                            weak_held = upgraded;
                            if !upgraded {
                                assert!(
                                    model.life.is_closing(),
                                    "{order:?}: refused though the rule had not decided"
                                );
                            }
                        }
                        Use if weak_held => match usage {
                            Usage::Read => model.mailbox.request_read(),
                            Usage::Write => {
                                wrote = model.mailbox.write(Bytes::from_static(b"hi")).is_ok();
                            }
                        },
                        DropWeak if weak_held => {
                            weak_held = false;
                            model.mailbox.drop_handle();
                        }
                        Use | DropWeak => {}
                    }
                    if strong_held || weak_held {
                        assert_eq!(
                            model.life.phase(),
                            Phase::Open,
                            "{order:?}: closed under a held handle"
                        );
                    }
                }
                let rest = model.settle();
                match (upgraded, usage) {
                    (false, _) => assert!(
                        matches!(
                            model.life.phase(),
                            Phase::Closing {
                                reason: ClosureReason::Unreferenced,
                                ..
                            }
                        ),
                        "{order:?}: {:?}",
                        model.life.phase()
                    ),
                    (true, Usage::Read) => {
                        assert!(
                            matches!(rest, Action::Wait(Interest { read: true, .. })),
                            "{order:?}: the upgraded handle's read was lost: {rest:?}"
                        );
                        assert_eq!(model.life.phase(), Phase::Open);
                    }
                    (true, Usage::Write) => {
                        assert!(
                            wrote,
                            "{order:?}: a write through a granted upgrade refused"
                        );
                        assert_eq!(model.writes.len(), 1, "{order:?}: the write was not taken");
                        assert!(
                            matches!(rest, Action::Wait(Interest { write: true, .. })),
                            "{order:?}: the write must go out before any FIN: {rest:?}"
                        );
                    }
                }
            }
        }
    }
    assert_eq!(orders, 2 * (84 + 840), "every order was tried");
}

/// The same race on real threads: while an upgraded handle is held the word is never sealed,
/// and once the seal is in, no upgrade succeeds.
#[test]
fn threads_racing_upgrades_against_the_seal() {
    for _ in 0..200 {
        let mailbox = Arc::new(Mailbox::new(config()));
        mailbox.open_for_upgrades();
        let sealed = Arc::new(AtomicBool::new(false));
        let granted = Arc::new(AtomicUsize::new(0));
        let upgraders: Vec<_> = (0..2)
            .map(|_| {
                let (mailbox, sealed, granted) = (mailbox.clone(), sealed.clone(), granted.clone());
                std::thread::spawn(move || loop {
                    let was_sealed = sealed.load(Ordering::SeqCst);
                    if mailbox.try_upgrade() {
                        assert!(!was_sealed, "upgraded after the seal");
                        assert!(!mailbox.is_sealed(), "sealed under a held handle");
                        granted.fetch_add(1, Ordering::Relaxed);
                        std::hint::spin_loop();
                        assert!(!mailbox.is_sealed(), "sealed under a held handle");
                        mailbox.drop_handle();
                    } else {
                        return;
                    }
                })
            })
            .collect();
        // The driver: take, and confirm whenever no handle is counted.
        loop {
            let _ = mailbox.take_posted(&mut VecDeque::new());
            if mailbox.handles() == 0 && mailbox.seal_unreferenced() {
                sealed.store(true, Ordering::SeqCst);
                break;
            }
            std::hint::spin_loop();
        }
        for upgrader in upgraders {
            upgrader.join().expect("an upgrader failed");
        }
        assert!(!mailbox.try_upgrade());
        assert_eq!(mailbox.handles(), 0);
    }
}
