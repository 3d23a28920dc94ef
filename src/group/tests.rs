//! A member joining a group while its connection starts closing, on two threads: whichever
//! comes first, the group never keeps a member that has left.

use std::sync::{Arc, Barrier};

use super::*;
use crate::connection::lifecycle::LifecycleConfig;
use crate::connection::mailbox::Mailbox;
use crate::connection::user_data::{UserData, UserDataLayout};
use crate::connection::SocketAddresses;
use crate::ids::Direction;
use crate::stats::ConnectionCounters;

/// A connection's shared state, established (open for upgrades), with no task behind it.
fn established(id: u64) -> Arc<Shared> {
    let config = LifecycleConfig::for_tests();
    let address = "127.0.0.1:1".parse().unwrap();
    let shared = Arc::new(Shared {
        id: ConnectionId(id),
        addresses: SocketAddresses::new(address, address),
        direction: Direction::Inbound,
        user_data: UserData::new(&UserDataLayout::new()),
        counters: ConnectionCounters::default(),
        mailbox: Mailbox::new(Arc::new(config)),
        told: once_cell::race::OnceBox::new(),
        is_tls: false,
        frame_slot: std::sync::atomic::AtomicU32::new(u32::MAX),
        closing_hooks: Default::default(),
    });
    shared.mailbox.open_for_upgrades();
    shared
}

/// What the connection's task does when it starts closing (`Driver::pump`).
fn start_closing(shared: &Arc<Shared>) {
    shared.mailbox.publish_closing();
    shared.closing_hooks.run(shared);
}

/// Every order of an insert's three steps (into the members, the join, the check of the seal)
/// and the closing task's two (the seal, the leave): the group never keeps the member, and the
/// insert says `true` only where the member was in the group until the leave took it out.
#[test]
fn every_order_of_a_join_and_a_leave_ends_without_the_member() {
    #[derive(Debug, Clone, Copy)]
    enum Step {
        Add,
        Join,
        Check,
        Seal,
        Leave,
    }
    use Step::*;
    let mut orders = 0;
    for mask in 0_u32..32 {
        // Positions of the closing task's two steps among five.
        if mask.count_ones() != 2 {
            continue;
        }
        let (mut insert, mut close) = ([Add, Join, Check].into_iter(), [Seal, Leave].into_iter());
        let order: Vec<Step> = (0..5)
            .map(|i| {
                if mask & (1 << i) != 0 {
                    close.next().unwrap()
                } else {
                    insert.next().unwrap()
                }
            })
            .collect();
        orders += 1;
        let group = ConnectionGroup::new();
        let shared = established(1);
        let mut kept = None;
        for step in &order {
            match step {
                Add => assert!(group.add(&shared)),
                Join => shared.closing_hooks.register(Arc::downgrade(&group.inner)
                    as Weak<dyn crate::connection::closing_hooks::ClosingHook>),
                Check => kept = Some(group.kept(&shared)),
                Seal => shared.mailbox.publish_closing(),
                Leave => shared.closing_hooks.run(&shared),
            }
        }
        assert!(
            !group.contains(ConnectionId(1)),
            "{order:?}: the member stayed"
        );
        let sealed_before_check = order.iter().position(|s| matches!(s, Seal))
            < order.iter().position(|s| matches!(s, Check));
        assert_eq!(kept, Some(!sealed_before_check), "{order:?}");
    }
    assert_eq!(orders, 10);
}

#[test]
fn a_member_that_closes_while_joining_never_stays() {
    let mut joined = 0;
    for id in 0..2000 {
        let group = ConnectionGroup::new();
        let shared = established(id);
        let start = Arc::new(Barrier::new(2));
        let closing = std::thread::spawn({
            let (shared, start) = (shared.clone(), start.clone());
            move || {
                start.wait();
                start_closing(&shared);
            }
        });
        start.wait();
        let connection = Connection::uncounted(shared.clone());
        joined += usize::from(group.insert(&connection));
        closing.join().unwrap();
        assert!(
            !group.contains(ConnectionId(id)),
            "a member that left is still in the group"
        );
        assert!(!group.insert(&connection), "a closing connection joined");
    }
    // Both orders happened (on a machine with one core, mostly one of them).
    let _ = joined;
}

#[test]
fn leaving_removes_a_member_from_every_group_and_only_that_connection() {
    let (one, two) = (ConnectionGroup::new(), ConnectionGroup::new());
    let shared = established(7);
    let connection = Connection::uncounted(shared.clone());
    assert!(one.insert(&connection) && two.insert(&connection));
    assert!(!one.insert(&connection), "already a member");
    // Removed and inserted again: listed once in the connection's memberships.
    assert!(one.remove(ConnectionId(7)));
    assert!(one.insert(&connection));
    assert_eq!(shared.closing_hooks.len(), 2);
    // Another server's connection with the same number, in a third group and in `one`'s place.
    let other = established(7);
    let three = ConnectionGroup::new();
    assert!(three.insert(&Connection::uncounted(other.clone())));
    start_closing(&shared);
    assert!(one.is_empty() && two.is_empty());
    assert_eq!(three.len(), 1, "another connection with the same id stays");
    assert!(three.get(ConnectionId(7)).is_some());
    // A dropped group is forgotten at the next join.
    drop(three);
    let four = ConnectionGroup::new();
    let other_connection = Connection::uncounted(other.clone());
    assert!(four.insert(&other_connection));
    assert_eq!(other.closing_hooks.len(), 1);
}

/// A map's join racing the close of the key's last member, on two threads: whichever comes
/// first, the map never keeps a key whose group is empty, and a joined member is in the map's
/// group.
#[test]
fn a_maps_join_racing_the_last_members_close_never_leaves_an_empty_key() {
    let map = GroupMap::new();
    for id in 0..2000 {
        let leaving = established(2 * id);
        let joining = established(2 * id + 1);
        assert!(map.join("topic", &Connection::uncounted(leaving.clone())));
        let start = Arc::new(Barrier::new(2));
        let closing = std::thread::spawn({
            let (leaving, start) = (leaving.clone(), start.clone());
            move || {
                start.wait();
                start_closing(&leaving);
            }
        });
        start.wait();
        let joined = map.join("topic", &Connection::uncounted(joining.clone()));
        closing.join().unwrap();
        assert!(joined, "an open connection joins");
        let group = map.get("topic").expect("the joined member's key stays");
        assert!(group.contains(ConnectionId(2 * id + 1)));
        assert!(!group.contains(ConnectionId(2 * id)));
        start_closing(&joining);
        assert!(map.is_empty(), "the last member's close drops the key");
    }
}
