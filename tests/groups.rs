//! Weak handles, connection groups, broadcast and finding connections (issue 9), on the embedded
//! connection of `switchboard::testing` under the paused clock (concurrent broadcasts, on
//! several threads, over real loopback sockets): a weak handle keeps nothing open and upgrades only while its connection
//! is; members leave their groups by themselves before `on_connection_closure`, whatever ends
//! them, and a half-closed member closes by itself; a broadcast says per member what happened
//! (sent, queue full, closed) and applies the group's policy to a member whose queue is full;
//! concurrent broadcasts reach every member in one order; `Server::connection` and
//! `Server::connections` find the open connections. Every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
// These tests' embedded server (no listener: connect with `server.connect`).
use common::start_recorded_embedded as start_embedded;
use switchboard::testing::{EmbeddedPeer, EmbeddedServer};
use switchboard::{
    Bytes, ClosureReason, Connection, ConnectionGroup, ConnectionId, Delivery, FullQueuePolicy,
    Server, ServerBuilder, WeakConnection,
};
use tokio::io::AsyncReadExt;

const LOCAL: &str = "127.0.0.1:0";
const KIB: usize = 1024;
/// The write queue limit of the broadcast tests: small, so that a member that stops reading
/// fills it soon.
const LIMIT: usize = 8 * KIB;
/// The receive window of the stalled peers in those tests.
const SMALL_BUFFER: usize = 4 * KIB;
/// How long to watch for something that must not happen.
const QUIET: Duration = Duration::from_millis(300);

async fn start(
    behavior: Behavior,
    hooks: Hooks,
    configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
) -> (Server, Recorder, SocketAddr) {
    let mut builder = Server::builder();
    let recorder = Recorder::with_hooks(&mut builder, behavior, hooks);
    let server = configure(builder.bind(LOCAL))
        .start(recorder.clone())
        .await
        .unwrap();
    let address = server.local_addr().unwrap();
    (server, recorder, address)
}

/// Hooks that insert every established connection into `group`.
fn joining(group: &ConnectionGroup) -> Hooks {
    let group = group.clone();
    Hooks {
        established: Some(Box::new(move |connection: &Connection| {
            assert!(group.insert(connection), "a new connection joins");
        })),
        ..Hooks::default()
    }
}

/// A server for the broadcast tests: every connection reads (so that only the group's weak
/// handle and the pending read hold it) and joins `group`; small queues. A stalled member is a
/// peer with a small receive window ([`stalled_peer`]).
async fn start_broadcasting_embedded(group: &ConnectionGroup) -> (EmbeddedServer, Recorder) {
    start_embedded(Behavior::collect(), joining(group), |builder| {
        builder
            .write_queue_limit(LIMIT)
            .write_watermarks(LIMIT, LIMIT / 2)
    })
    .await
}

/// A peer that never reads, holding at most a socket buffer's worth of what it is sent.
async fn stalled_peer(server: &EmbeddedServer, n: u16) -> EmbeddedPeer {
    let peer = server.accept(peer_addr(n)).await.unwrap();
    peer.set_receive_window(SMALL_BUFFER);
    peer
}

/// A task that reads everything `peer` receives until its end, and returns it.
fn read_all_peer(mut peer: EmbeddedPeer) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let (data, end) = peer_read_to_end(&mut peer).await;
        end.expect("a clean end");
        data
    })
}

/// Message `seq` of the policy tests: 1 KiB, numbered in its first four bytes.
fn numbered(seq: u32) -> Bytes {
    let mut message = pattern(u64::from(seq), KIB);
    message[..4].copy_from_slice(&seq.to_be_bytes());
    Bytes::from(message)
}

/// Asserts that `data` is messages 0, 1, 2… (the last one possibly cut short); returns how many
/// whole ones.
fn assert_gapless(data: &[u8]) -> usize {
    for (seq, chunk) in data.chunks(KIB).enumerate() {
        let expected = numbered(seq as u32);
        assert_eq!(
            chunk,
            &expected[..chunk.len()],
            "message {seq} is not the next one"
        );
    }
    data.len() / KIB
}

#[test]
fn groups_and_weak_handles_are_shared_across_threads() {
    fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
    assert_send_sync_clone::<ConnectionGroup>();
    assert_send_sync_clone::<WeakConnection>();
}

#[tokio::test(start_paused = true)]
async fn a_weak_handle_keeps_nothing_open_and_upgrades_only_while_open() {
    let kept: Arc<Mutex<Option<WeakConnection>>> = Arc::default();
    let hooks = Hooks {
        established: Some(Box::new({
            let kept = kept.clone();
            move |connection: &Connection| {
                *kept.lock().unwrap() = Some(connection.downgrade());
            }
        })),
        ..Hooks::default()
    };
    let (server, recorder) = start_embedded(Behavior::collect(), hooks, |builder| builder).await;
    let mut client = server.accept(peer_addr(1)).await.unwrap();
    let id = recorder.id_of_peer(&client).await;
    let weak = kept.lock().unwrap().clone().expect("downgraded");
    assert_eq!(weak.id(), id);
    assert_eq!(weak.peer_addr(), client.peer_addr());
    assert!(!weak.is_closing());

    // Upgraded for a moment, it writes like any handle.
    weak.upgrade().expect("open").write("hello").unwrap();
    let greeting = client.read_exact(5).await.unwrap();
    assert_eq!(greeting, "hello");

    // The client half-closes: its read is used up and no counted handle is left, so the
    // connection closes by itself although the weak handle is still held.
    client.shutdown_write();
    assert_eq!(recorder.wait_closure(id).await.0, ClosureReason::PeerClosed);
    assert!(weak.upgrade().is_none());
    assert!(weak.is_closing());
    let (rest, end) = peer_read_to_end(&mut client).await;
    assert!(rest.is_empty() && end.is_ok());
    assert_eq!(weak.id(), id, "the cheap reads outlive the connection");
    server.shutdown().await;
    recorder.assert_no_errors();
}

#[tokio::test(start_paused = true)]
async fn the_server_finds_its_open_connections() {
    let (server, recorder) =
        start_embedded(Behavior::collect(), Hooks::default(), |builder| builder).await;
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    for n in 0..3 {
        let client = server.accept(peer_addr(n)).await.unwrap();
        ids.push(recorder.id_of_peer(&client).await);
        clients.push(client);
    }
    let listed = server.connections();
    assert_eq!(
        listed.iter().map(WeakConnection::id).collect::<Vec<_>>(),
        ids,
        "every open connection, in order of ids"
    );
    for (client, weak) in clients.iter().zip(&listed) {
        assert_eq!(weak.peer_addr(), client.peer_addr());
    }

    // A handle found by id writes...
    server
        .connection(ids[0])
        .expect("open")
        .write("by id")
        .unwrap();
    let reply = clients[0].read_exact(5).await.unwrap();
    assert_eq!(reply, "by id");

    // ...and, being counted, keeps its connection open while held, like any clone.
    let held = server.connection(ids[1]).expect("open");
    clients[1].shutdown_write();
    recorder
        .wait_for("the client's FIN", |event| {
            *event == Event::ClientClose(ids[1])
        })
        .await;
    tokio::time::sleep(QUIET).await;
    recorder.assert_open(ids[1], "a handle from Server::connection is held");
    drop(held);
    assert_eq!(
        recorder.wait_closure(ids[1]).await.0,
        ClosureReason::PeerClosed
    );

    // Closed: neither found nor listed; a weak handle listed before no longer upgrades.
    assert!(server.connection(ids[1]).is_none());
    assert_eq!(
        server
            .connections()
            .iter()
            .map(WeakConnection::id)
            .collect::<Vec<_>>(),
        vec![ids[0], ids[2]]
    );
    assert!(listed[1].upgrade().is_none());
    assert!(listed[2].upgrade().is_some());
    drop(clients);
    server.shutdown().await;
    recorder.assert_no_errors();
}

#[tokio::test(start_paused = true)]
async fn members_leave_their_groups_before_on_connection_closure() {
    let group = ConnectionGroup::new();
    // At each closure: the id, whether the group still has it, its size, and whether it could
    // be inserted again.
    type Row = (ConnectionId, bool, usize, bool);
    let seen: Arc<Mutex<Vec<Row>>> = Arc::default();
    let hooks = Hooks {
        closure: Some(Box::new({
            let (group, seen) = (group.clone(), seen.clone());
            move |connection: &Connection, _| {
                let id = connection.id();
                let row = (
                    id,
                    group.contains(id),
                    group.len(),
                    group.insert(connection),
                );
                seen.lock().unwrap().push(row);
            }
        })),
        ..joining(&group)
    };
    let (server, recorder) = start_embedded(Behavior::collect(), hooks, |builder| builder).await;
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    for n in 0..4 {
        let client = server.accept(peer_addr(n)).await.unwrap();
        ids.push(recorder.id_of_peer(&client).await);
        clients.push(Some(client));
    }
    assert_eq!(group.len(), 4);
    let members: Vec<ConnectionId> = group.members().iter().map(WeakConnection::id).collect();
    assert_eq!(members, ids);

    // Four ways to end, none with code of the application's in the closing callbacks.
    let client = clients[0].take().unwrap();
    client.shutdown_write(); // the client's FIN, then the lifetime rule
    assert_eq!(
        recorder.wait_closure(ids[0]).await.0,
        ClosureReason::PeerClosed
    );
    clients[1].take().unwrap().reset(); // the client's reset
    assert_eq!(
        recorder.wait_closure(ids[1]).await.0,
        ClosureReason::PeerReset
    );
    group.get(ids[2]).expect("a member").close(); // the server closes
    let closing = read_all_peer(clients[2].take().unwrap());
    assert_eq!(
        recorder.wait_closure(ids[2]).await.0,
        ClosureReason::LocalClose
    );
    server.connection(ids[3]).expect("open").abort(); // the server resets
    assert_eq!(
        recorder.wait_closure(ids[3]).await.0,
        ClosureReason::LocalAbort
    );

    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (ids[0], false, 3, false),
            (ids[1], false, 2, false),
            (ids[2], false, 1, false),
            (ids[3], false, 0, false),
        ],
        "each had left before its closure, and a closing connection cannot join"
    );
    assert!(group.is_empty());
    assert!(group.broadcast("anyone?").deliveries().is_empty());
    bounded("the closed client", closing).await.unwrap();
    server.shutdown().await;
    recorder.assert_no_errors();
}

/// The trap: a stored strong clone kept a half-closed client open forever; a group
/// member closes by itself.
#[tokio::test(start_paused = true)]
async fn a_half_closed_member_closes_by_itself() {
    let group = ConnectionGroup::new();
    let (server, recorder) =
        start_embedded(Behavior::collect(), joining(&group), |builder| builder).await;
    let mut client = server.accept(peer_addr(1)).await.unwrap();
    let id = recorder.id_of_peer(&client).await;
    assert!(group.contains(id));
    client.send(b"bye").unwrap();
    client.shutdown_write();
    // The server reads the rest and the FIN; nothing then keeps the connection open.
    let (rest, end) = peer_read_to_end(&mut client).await;
    assert!(rest.is_empty() && end.is_ok(), "the server closes: {end:?}");
    assert_eq!(recorder.wait_closure(id).await.0, ClosureReason::PeerClosed);
    assert_eq!(recorder.received(id), b"bye");
    assert!(group.is_empty());
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_broadcast_says_per_member_what_happened() {
    let group = ConnectionGroup::new();
    assert_eq!(group.when_full(), FullQueuePolicy::Skip);
    let (server, recorder) = start_broadcasting_embedded(&group).await;
    let reader = server.accept(peer_addr(1)).await.unwrap();
    let reader_id = recorder.id_of_peer(&reader).await;
    let stalled = stalled_peer(&server, 2).await; // never reads
    let stalled_id = recorder.id_of_peer(&stalled).await;
    let closing = server.accept(peer_addr(3)).await.unwrap();
    let closing_id = recorder.id_of_peer(&closing).await;
    let reading = read_all_peer(reader);
    let message = Bytes::from(vec![b'm'; KIB]);

    // A member closed just before: its task has not taken the close yet (this test runs on one
    // thread, and nothing awaits in between), but it can no longer be written to.
    group.get(closing_id).expect("a member").close();
    let report = group.broadcast(message.clone());
    assert_eq!(report.delivery(reader_id), Some(Delivery::Sent));
    assert_eq!(report.delivery(stalled_id), Some(Delivery::Sent));
    assert_eq!(report.delivery(closing_id), Some(Delivery::Closed));
    assert_eq!(
        (report.sent(), report.queue_full(), report.closed()),
        (2, 0, 1)
    );
    let mut to_reader = 1;
    let closed = read_all_peer(closing);

    // Until the stalled member's queue is full; the reader gets every one.
    let full = loop {
        assert!(to_reader < 1000, "the stalled member's queue never filled");
        // Time for the connections' tasks to write and the reader to read.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let report = group.broadcast(message.clone());
        assert_eq!(report.delivery(reader_id), Some(Delivery::Sent));
        to_reader += 1;
        match report.delivery(stalled_id) {
            Some(Delivery::Sent) => continue,
            Some(Delivery::QueueFull) => break report,
            other => panic!("the stalled member: {other:?}"),
        }
    };
    assert_eq!(
        full.with(Delivery::QueueFull).collect::<Vec<_>>(),
        [stalled_id]
    );
    assert_eq!(
        full.sent() + full.queue_full() + full.closed(),
        full.deliveries().len()
    );
    assert_eq!(
        recorder.wait_closure(closing_id).await.0,
        ClosureReason::LocalClose
    );
    assert!(
        !group.contains(closing_id),
        "the closed member left by itself"
    );

    // `Skip`: the stalled member stays, open, and keeps being refused while full.
    tokio::time::sleep(QUIET).await;
    recorder.assert_open(stalled_id, "skipped, not closed");
    assert!(group.contains(stalled_id));
    // Everyone but the reader (the stalled member may have found room meanwhile, as TCP moves
    // a little more into a client's buffer as it grows).
    let report = group.broadcast_except(message.clone(), reader_id);
    assert_eq!(report.delivery(reader_id), None);
    assert_eq!(report.deliveries().len(), 1);
    assert!(matches!(
        report.delivery(stalled_id),
        Some(Delivery::QueueFull | Delivery::Sent)
    ));

    // The reader got each message sent to it, whole.
    group.get(reader_id).expect("open").close();
    let received = bounded("the reader", reading).await.unwrap();
    assert_eq!(received.len(), to_reader * KIB);
    assert!(received.iter().all(|&byte| byte == b'm'));
    bounded("the closed client", closed).await.unwrap();
    drop(stalled);
    server.shutdown().await;
    recorder.assert_no_errors();
}

/// `Close` gives a slow member what it has queued, then FIN: messages 0 to n without a gap.
/// `Abort` resets it at once. Either way it leaves the group and the others go on.
#[tokio::test(start_paused = true)]
async fn the_full_member_policy_closes_or_resets_the_slow_member() {
    for policy in [FullQueuePolicy::Close, FullQueuePolicy::Abort] {
        let group = ConnectionGroup::with_when_full(policy);
        let (server, recorder) = start_broadcasting_embedded(&group).await;
        let reader = server.accept(peer_addr(1)).await.unwrap();
        let reader_id = recorder.id_of_peer(&reader).await;
        let mut stalled = stalled_peer(&server, 2).await;
        let stalled_id = recorder.id_of_peer(&stalled).await;
        let reading = read_all_peer(reader);

        let mut seq = 0;
        let mut to_stalled = 0;
        loop {
            assert!(
                seq < 1000,
                "{policy:?}: the stalled member's queue never filled"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
            let report = group.broadcast(numbered(seq));
            seq += 1;
            assert_eq!(report.delivery(reader_id), Some(Delivery::Sent));
            match report.delivery(stalled_id) {
                Some(Delivery::Sent) => to_stalled += 1,
                Some(Delivery::QueueFull) => break,
                other => panic!("{policy:?}: the stalled member: {other:?}"),
            }
        }
        // From the policy on, the slow member gets nothing more.
        let report = group.broadcast(numbered(seq));
        seq += 1;
        assert!(matches!(
            report.delivery(stalled_id),
            None | Some(Delivery::Closed)
        ));

        // What the slow client then reads.
        // It reads now: its window no longer holds anything back.
        stalled.set_receive_window(usize::MAX);
        let (data, end) = peer_read_to_end(&mut stalled).await;
        let whole = assert_gapless(&data);
        let expected = match policy {
            FullQueuePolicy::Close => {
                end.expect("a clean end after what was queued");
                assert_eq!(whole, to_stalled, "every message queued for it, then FIN");
                assert_eq!(data.len(), to_stalled * KIB);
                ClosureReason::LocalClose
            }
            _ => {
                let error = end.expect_err("a reset");
                assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
                assert!(whole <= to_stalled);
                ClosureReason::LocalAbort
            }
        };
        drop(stalled);
        assert_eq!(
            recorder.wait_closure(stalled_id).await.0,
            expected,
            "{policy:?}"
        );
        assert!(!group.contains(stalled_id));
        assert_eq!(group.len(), 1);

        // The reader was not held back and got every message.
        let report = group.broadcast(numbered(seq));
        seq += 1;
        assert_eq!(report.deliveries(), [(reader_id, Delivery::Sent)]);
        group.get(reader_id).expect("open").close();
        let received = bounded("the reader", reading).await.unwrap();
        assert_eq!(assert_gapless(&received), seq as usize);
        assert_eq!(received.len(), seq as usize * KIB);
        server.shutdown().await;
        recorder.assert_no_errors();
    }
}

/// A batch reaches every member in order; a member whose queue fills partway gets the batch up
/// to there and no gap (then, with `Close`, FIN).
#[tokio::test(start_paused = true)]
async fn a_batch_broadcast_gives_a_full_member_a_gapless_prefix() {
    const BATCH: u32 = 3;
    let group = ConnectionGroup::with_when_full(FullQueuePolicy::Close);
    let (server, recorder) = start_broadcasting_embedded(&group).await;
    let reader = server.accept(peer_addr(1)).await.unwrap();
    let reader_id = recorder.id_of_peer(&reader).await;
    let mut stalled = stalled_peer(&server, 2).await;
    let stalled_id = recorder.id_of_peer(&stalled).await;
    let reading = read_all_peer(reader);

    let mut seq = 0;
    // Messages in the batches queued whole for the stalled member.
    let mut to_stalled = 0;
    loop {
        assert!(seq < 3000, "the stalled member's queue never filled");
        tokio::time::sleep(Duration::from_millis(1)).await;
        let batch: Vec<Bytes> = (seq..seq + BATCH).map(numbered).collect();
        let report = group.broadcast_batch(&batch);
        seq += BATCH;
        assert_eq!(report.delivery(reader_id), Some(Delivery::Sent));
        match report.delivery(stalled_id) {
            Some(Delivery::Sent) => to_stalled += BATCH as usize,
            Some(Delivery::QueueFull) => break,
            other => panic!("the stalled member: {other:?}"),
        }
    }
    stalled.set_receive_window(usize::MAX);
    let (data, end) = peer_read_to_end(&mut stalled).await;
    end.expect("a clean end after what was queued");
    let whole = assert_gapless(&data);
    assert_eq!(data.len(), whole * KIB, "whole messages only");
    assert!(
        (to_stalled..to_stalled + BATCH as usize).contains(&whole),
        "the batches before, and a part of the last: {whole} of {to_stalled}+{BATCH}"
    );
    drop(stalled);
    assert_eq!(
        recorder.wait_closure(stalled_id).await.0,
        ClosureReason::LocalClose
    );

    group.get(reader_id).expect("open").close();
    let received = bounded("the reader", reading).await.unwrap();
    assert_eq!(assert_gapless(&received), seq as usize);
    assert_eq!(received.len(), seq as usize * KIB);
    server.shutdown().await;
    recorder.assert_no_errors();
}

/// Broadcasts from several tasks at once reach every member in one and the same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_broadcasts_reach_every_member_in_one_order() {
    const EACH: usize = 300;
    const MEMBERS: usize = 3;
    let group = ConnectionGroup::new();
    let (server, recorder, address) =
        start(Behavior::collect(), joining(&group), |builder| builder).await;
    let mut readers = Vec::new();
    for _ in 0..MEMBERS {
        let client = client(address).await;
        recorder.id_of(&client).await;
        readers.push(client);
    }
    let senders: Vec<_> = ["A", "B"]
        .into_iter()
        .map(|name| {
            let group = group.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    let report = group.broadcast(format!("{name}:{i:05}\n"));
                    assert_eq!(report.sent(), MEMBERS);
                    if i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for sender in senders {
        bounded("a sender", sender).await.unwrap();
    }
    let mut orders = Vec::new();
    for mut reader in readers {
        let mut data = vec![0; 2 * EACH * 8];
        bounded("a member's messages", reader.read_exact(&mut data))
            .await
            .unwrap();
        orders.push(String::from_utf8(data).unwrap());
    }
    for order in &orders[1..] {
        assert!(order == &orders[0], "members saw different orders");
    }
    // Each sender's messages in its own order.
    for name in ["A:", "B:"] {
        let mine: Vec<usize> = orders[0]
            .lines()
            .filter_map(|line| line.strip_prefix(name))
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(mine, (0..EACH).collect::<Vec<_>>());
    }
    server.shutdown().await;
    recorder.assert_no_errors();
}

#[tokio::test(start_paused = true)]
async fn clones_of_a_group_are_the_same_group() {
    let group = ConnectionGroup::new();
    let clone = group.clone();
    let (server, recorder) =
        start_embedded(Behavior::collect(), joining(&clone), |builder| builder).await;
    let client = server.accept(peer_addr(1)).await.unwrap();
    let id = recorder.id_of_peer(&client).await;
    assert!(group.contains(id));
    let member = group.get(id).expect("open");
    assert!(!group.insert(&member), "already a member");
    assert!(group.members()[0].is(&member));
    drop(member);
    assert!(clone.remove(id));
    assert!(!group.contains(id) && !group.remove(id));
    // Removed, it is an ordinary connection again: still open (it has a read pending).
    recorder.assert_open(id, "removed from the group");
    drop(client);
    recorder.wait_closure(id).await;
    server.shutdown().await;
}

/// A framed pub/sub handler: `join` inserts the connection into the group and feeds a reply;
/// any other line is broadcast to the group.
struct PubSub {
    group: ConnectionGroup,
}

#[switchboard::async_trait]
impl switchboard::Callbacks for PubSub {}

#[switchboard::async_trait]
impl switchboard::codec::FrameHandler for PubSub {
    type Codec = switchboard::tokio_util::codec::LinesCodec;

    fn new_codec(&self, _connection: &Connection) -> Self::Codec {
        switchboard::tokio_util::codec::LinesCodec::new()
    }

    async fn on_frame(
        &self,
        connection: &switchboard::codec::FramedConnection<'_, Self::Codec>,
        line: String,
    ) {
        if line == "join" {
            self.group.insert(connection);
            let _ = connection.feed("joined");
        } else {
            self.group.broadcast(format!("{line}\n"));
        }
    }
}

/// Guarantee 15 (docs/guarantees.md): a reply the frame layer was fed before a broadcast reaches
/// the same member is received before it. Both lines arrive in one read, so the fed reply is
/// still unflushed when the second line's broadcast is posted.
#[tokio::test(start_paused = true)]
async fn a_broadcast_comes_after_the_members_fed_reply() {
    let group = ConnectionGroup::new();
    let server = Server::builder()
        .embedded()
        .start(switchboard::codec::Framing::new(PubSub {
            group: group.clone(),
        }))
        .await
        .unwrap();
    let mut peer = server.accept(peer_addr(1)).await.unwrap();
    peer.send(b"join\nhello\n").unwrap();
    let received = bounded("both lines", peer.read_exact(b"joined\nhello\n".len()))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&received),
        "joined\nhello\n",
        "the fed reply first, then the broadcast posted after it"
    );
    drop(peer);
    server.shutdown().await;
}

/// A sender paced by `BroadcastReport::high` and `ConnectionGroup::writable` gets no member
/// closed as a slow consumer: it waits while a member catches up, then goes on.
#[tokio::test]
async fn a_sender_that_waits_for_room_never_fills_a_slow_members_queue() {
    let group = ConnectionGroup::with_when_full(FullQueuePolicy::Close);
    let (server, recorder) = start_embedded(Behavior::collect(), joining(&group), |builder| {
        builder
            .write_queue_limit(LIMIT)
            .write_watermarks(LIMIT / 2, LIMIT / 4)
    })
    .await;
    let reader = server.accept(peer_addr(1)).await.unwrap();
    let slow = stalled_peer(&server, 2).await;
    let slow_id = recorder.id_of_peer(&slow).await;
    let reading = read_all_peer(reader);

    // Until the slow member is high, with nothing read from it.
    let mut seq = 0;
    loop {
        assert!(seq < 1000, "the slow member's queue never went high");
        let report = group.broadcast(numbered(seq));
        seq += 1;
        assert_eq!(report.queue_full(), 0);
        if report.high() > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let waiting = tokio::spawn({
        let group = group.clone();
        async move { group.writable().await }
    });
    tokio::time::sleep(QUIET).await;
    assert!(!waiting.is_finished(), "the slow member is still high");

    // It reads: the sender may go on, and sends the rest paced the same way.
    slow.set_receive_window(usize::MAX);
    let slow_reading = read_all_peer(slow);
    bounded("room in the group", waiting).await.unwrap();
    for _ in 0..200 {
        let report = group.broadcast(numbered(seq));
        seq += 1;
        assert_eq!(report.queue_full(), 0, "nobody was ever full");
        if report.high() > 0 {
            bounded("room in the group", group.writable()).await;
        }
    }
    assert_eq!(group.len(), 2, "nobody was closed");
    for member in group.members() {
        member.upgrade().expect("open").close();
    }
    let received = bounded("the reader", reading).await.unwrap();
    assert_eq!(assert_gapless(&received), seq as usize);
    let slow_received = bounded("the slow member", slow_reading).await.unwrap();
    assert_eq!(assert_gapless(&slow_received), seq as usize);
    assert_eq!(
        recorder.wait_closure(slow_id).await.0,
        ClosureReason::LocalClose
    );
    server.shutdown().await;
}
