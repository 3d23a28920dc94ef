//! Guarantee 5 (docs/guarantees.md): the connection limit, over real loopback connections.
//!
//! The limit is never exceeded, also under concurrent connects; at the limit the server either
//! stops accepting (clients wait) or accepts and closes at once; `on_maximum_connections` fires;
//! accepting resumes when a slot frees; a limiter can be shared by servers and counts outgoing
//! connections too.

mod common;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use switchboard::{
    async_trait, BytesMut, Callbacks, ClosureReason, Connection, ConnectionLimiter, Direction,
    Error, LimitPolicy, Server, UserData,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a client that must not be served is watched for a reply. Only ever used to show
/// that something does *not* happen, so a loaded machine cannot make it fail spuriously.
const QUIET: Duration = Duration::from_millis(300);

/// Asserts that nothing arrives on `stream` for [`QUIET`]: the server has not served it.
async fn assert_not_served(stream: &mut TcpStream) {
    let mut buffer = [0_u8; 64];
    match tokio::time::timeout(QUIET, stream.read(&mut buffer)).await {
        Err(_) => {}
        Ok(result) => panic!("a client over the limit got an answer: {result:?}"),
    }
}

/// The accepting events, in order, as `true` for start and `false` for stop.
fn accepting_events(events: &[Event]) -> Vec<bool> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::StartAccepting => Some(true),
            Event::StopAccepting => Some(false),
            _ => None,
        })
        .collect()
}

/// Start and stop strictly alternate, beginning with a start.
fn assert_alternating(events: &[Event]) {
    let accepting = accepting_events(events);
    for (i, start) in accepting.iter().enumerate() {
        assert_eq!(
            *start,
            i % 2 == 0,
            "start/stop accepting must alternate, starting with start: {accepting:?}\n{events:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_accepting_at_limit_holds_the_next_client_until_a_slot_frees() {
    let mut builder = Server::builder()
        .bind("127.0.0.1:0")
        .max_connections(2)
        .at_limit(LimitPolicy::StopAccepting);
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    let address = server.local_addr().unwrap();

    let mut first = client(address).await;
    let mut second = client(address).await;
    assert_eq!(echo_round_trip(&mut first, b"one").await, b"one");
    assert_eq!(echo_round_trip(&mut second, b"two").await, b"two");
    assert_eq!(server.limiter().active(), 2);

    // The third connects at the TCP level (backlog or held by the accept loop) but is not served.
    let mut third = client(address).await;
    third.write_all(b"three").await.unwrap();
    recorder
        .wait_count("maximum connections", 1, |e| {
            matches!(e, Event::MaximumConnections)
        })
        .await;
    recorder
        .wait_count("stop accepting", 1, |e| matches!(e, Event::StopAccepting))
        .await;
    assert_not_served(&mut third).await;
    assert_eq!(recorder.established().len(), 2);
    assert_eq!(server.active_connections(), 2);
    assert_eq!(server.limiter().active(), 2);
    let events = recorder.events();
    assert!(
        position(&events, |e| *e == Event::MaximumConnections)
            < position(&events, |e| *e == Event::StopAccepting),
        "on_maximum_connections precedes on_stop_accepting_connections: {events:#?}"
    );

    // One of the two ends: the waiting client is taken and its early bytes are echoed.
    let first_id = recorder.id_of(&first).await;
    drop(first);
    let mut reply = [0_u8; 5];
    tokio::time::timeout(WAIT, third.read_exact(&mut reply))
        .await
        .expect("the waiting client was not served after a slot freed")
        .unwrap();
    assert_eq!(&reply, b"three");
    recorder
        .wait_count("start accepting again", 2, |e| {
            matches!(e, Event::StartAccepting)
        })
        .await;
    assert_eq!(recorder.established().len(), 3);
    recorder.wait_released(1).await;
    assert_lifecycle(&recorder.events_of(first_id));
    assert!(server.limiter().active() <= 2);

    // Taking the waiting client reached the limit again: accepting stopped again at once.
    recorder
        .wait_count("stop at the limit again", 2, |e| {
            matches!(e, Event::StopAccepting)
        })
        .await;
    let events = recorder.events();
    assert_alternating(&events);
    assert_eq!(accepting_events(&events), vec![true, false, true, false]);
    assert_eq!(
        recorder.count(|e| matches!(e, Event::MaximumConnections)),
        2
    );

    drop(second);
    drop(third);
    let report = tokio::time::timeout(WAIT, server.shutdown()).await.unwrap();
    assert_eq!(report.forced, 0);
    assert_alternating(&recorder.events());
    assert_eq!(server.stats().accepted, 3);
    assert_eq!(server.limiter().active(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_and_close_refuses_over_limit_clients_at_once() {
    if skip_under_wine(&WINE_RESET_READ_AS_EOF) {
        return;
    }
    let mut builder = Server::builder()
        .bind("127.0.0.1:0")
        .max_connections(1)
        .at_limit(LimitPolicy::AcceptAndClose);
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    let address = server.local_addr().unwrap();

    let mut first = client(address).await;
    assert_eq!(echo_round_trip(&mut first, b"in").await, b"in");

    for refused in 1..=2_u64 {
        // Refused at once with a reset (every refusal is an RST): seen by the connect itself
        // when it comes first, or by the first read; never an answer, never a clean end.
        let connected = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(address))
            .await
            .expect("connect timed out");
        let end = match connected {
            Ok(mut over) => {
                let (data, end) = read_to_end(&mut over).await;
                assert!(data.is_empty(), "a refused client got data");
                end
            }
            Err(error) => Err(error),
        };
        let error = end.expect_err("a refused client saw a clean end instead of a reset");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
        eventually("refused_at_limit to count", || {
            server.stats().refused_at_limit == refused
        })
        .await;
    }
    // Documented: fires on the first refusal after a connection was taken, not on every one.
    assert_eq!(
        recorder.count(|e| matches!(e, Event::MaximumConnections)),
        1
    );
    assert_eq!(recorder.established().len(), 1);
    assert_eq!(server.stats().accepted, 1);
    // The server kept accepting throughout.
    assert_eq!(accepting_events(&recorder.events()), vec![true]);

    // Free the slot: new clients are served again.
    drop(first);
    recorder.wait_released(1).await;
    eventually("the slot to free", || server.limiter().active() == 0).await;
    let mut next = client(address).await;
    assert_eq!(echo_round_trip(&mut next, b"again").await, b"again");
    assert_eq!(recorder.established().len(), 2);
    let stats = server.stats();
    assert_eq!(stats.accepted, 2);
    assert_eq!(stats.refused_at_limit, 2);

    drop(next);
    let report = tokio::time::timeout(WAIT, server.shutdown()).await.unwrap();
    assert_eq!(report.forced, 0);
}

/// Counts connections between establishment and release; remembers the most seen at once.
#[derive(Default)]
struct Concurrency {
    current: AtomicUsize,
    max: AtomicUsize,
    established: AtomicUsize,
    released: AtomicUsize,
    maximum_events: AtomicUsize,
    served: AtomicUsize,
}

#[derive(Clone, Default)]
struct Counting(Arc<Concurrency>);

#[async_trait]
impl Callbacks for Counting {
    async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
        let now = self.0.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.max.fetch_max(now, Ordering::SeqCst);
        self.0.established.fetch_add(1, Ordering::SeqCst);
        // Hold the slot a moment so that connections overlap and the limit is really hit.
        tokio::time::sleep(Duration::from_millis(20)).await;
        connection.read();
    }

    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        if connection.write(data.freeze()).is_ok() {
            self.0.served.fetch_add(1, Ordering::SeqCst);
            connection.read();
        }
    }

    async fn on_maximum_connections(&self) {
        self.0.maximum_events.fetch_add(1, Ordering::SeqCst);
    }

    async fn on_socket_released(&self, _: UserData) {
        self.0.released.fetch_add(1, Ordering::SeqCst);
        self.0.current.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limit_is_never_exceeded_under_concurrent_connects() {
    const LIMIT: usize = 10;
    const CLIENTS: usize = 100;
    let counting = Counting::default();
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .max_connections(LIMIT)
        .at_limit(LimitPolicy::StopAccepting)
        .start(counting.clone())
        .await
        .unwrap();
    let address = server.local_addr().unwrap();

    // Sample the limiter from outside as well, while the clients run.
    let limiter = server.limiter().clone();
    let sampled_max = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let sampled_max = sampled_max.clone();
        tokio::spawn(async move {
            loop {
                sampled_max.fetch_max(limiter.active(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(async move {
                let mut stream = client(address).await;
                let message = format!("client {i:03}");
                let reply = echo_round_trip(&mut stream, message.as_bytes()).await;
                assert_eq!(reply, message.as_bytes());
                stream.shutdown().await.unwrap();
                let (rest, end) = read_to_end(&mut stream).await;
                assert!(rest.is_empty());
                end.unwrap();
            })
        })
        .collect();
    for joined in futures::future::join_all(clients).await {
        joined.expect("a client failed");
    }
    eventually("every connection to be released", || {
        counting.0.released.load(Ordering::SeqCst) == CLIENTS
    })
    .await;
    sampler.abort();

    let seen = counting.0.max.load(Ordering::SeqCst);
    assert!(seen <= LIMIT, "{seen} connections were live at once");
    assert!(seen >= 1);
    assert!(sampled_max.load(Ordering::SeqCst) <= LIMIT);
    assert_eq!(counting.0.established.load(Ordering::SeqCst), CLIENTS);
    assert_eq!(counting.0.served.load(Ordering::SeqCst), CLIENTS);
    assert!(
        counting.0.maximum_events.load(Ordering::SeqCst) >= 1,
        "100 clients against a limit of 10 never reached it"
    );
    eventually("the limiter to empty", || server.limiter().active() == 0).await;
    let stats = server.stats();
    assert_eq!(stats.accepted, CLIENTS as u64);
    assert_eq!(stats.refused_at_limit, 0);
    assert_eq!(stats.total_closures(), CLIENTS as u64);
    assert_eq!(stats.closures(ClosureReason::PeerClosed), CLIENTS as u64);
    assert_eq!(stats.active, 0);

    let report = tokio::time::timeout(WAIT, server.shutdown()).await.unwrap();
    assert_eq!((report.graceful, report.forced), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limiter_shared_by_two_servers_counts_both() {
    let limiter = ConnectionLimiter::new(2);
    let mut builder_a = Server::builder()
        .bind("127.0.0.1:0")
        .limiter(limiter.clone());
    let recorder_a = Recorder::new(&mut builder_a);
    let server_a = builder_a.start(recorder_a.clone()).await.unwrap();
    let mut builder_b = Server::builder()
        .bind("127.0.0.1:0")
        .limiter(limiter.clone());
    let recorder_b = Recorder::new(&mut builder_b);
    let server_b = builder_b.start(recorder_b.clone()).await.unwrap();
    let (address_a, address_b) = (
        server_a.local_addr().unwrap(),
        server_b.local_addr().unwrap(),
    );

    let mut a1 = client(address_a).await;
    assert_eq!(echo_round_trip(&mut a1, b"a1").await, b"a1");
    let mut b1 = client(address_b).await;
    assert_eq!(echo_round_trip(&mut b1, b"b1").await, b"b1");
    assert_eq!(limiter.active(), 2);
    assert_eq!(server_a.limiter().active(), 2);
    assert_eq!(server_b.limiter().active(), 2);
    assert_eq!(server_a.active_connections(), 1);
    assert_eq!(server_b.active_connections(), 1);

    // A third, to A, waits although A itself has only one connection.
    let mut a2 = client(address_a).await;
    a2.write_all(b"a2").await.unwrap();
    recorder_a
        .wait_count("A at the limit", 1, |e| {
            matches!(e, Event::MaximumConnections)
        })
        .await;
    assert_not_served(&mut a2).await;
    assert_eq!(recorder_a.established().len(), 1);

    // B's connection ends: its slot goes to A's waiting client.
    drop(b1);
    let mut reply = [0_u8; 2];
    tokio::time::timeout(WAIT, a2.read_exact(&mut reply))
        .await
        .expect("A's waiting client was not served when B freed a slot")
        .unwrap();
    assert_eq!(&reply, b"a2");
    recorder_b.wait_released(1).await;
    assert_eq!(recorder_a.established().len(), 2);
    eventually("A to hold both slots", || {
        limiter.active() == 2 && server_b.active_connections() == 0
    })
    .await;

    // Now a client of B waits, and gets A's slot when one of A's connections ends.
    let mut b2 = client(address_b).await;
    b2.write_all(b"b2").await.unwrap();
    recorder_b
        .wait_count("B at the limit", 1, |e| {
            matches!(e, Event::MaximumConnections)
        })
        .await;
    assert_not_served(&mut b2).await;
    assert_eq!(recorder_b.established().len(), 1);
    drop(a1);
    tokio::time::timeout(WAIT, b2.read_exact(&mut reply))
        .await
        .expect("B's waiting client was not served when A freed a slot")
        .unwrap();
    assert_eq!(&reply, b"b2");
    assert_eq!(recorder_b.established().len(), 2);
    eventually("one slot each", || {
        limiter.active() == 2
            && server_a.active_connections() == 1
            && server_b.active_connections() == 1
    })
    .await;
    assert_alternating(&recorder_a.events());
    assert_alternating(&recorder_b.events());

    drop(a2);
    drop(b2);
    tokio::time::timeout(WAIT, server_a.shutdown())
        .await
        .unwrap();
    tokio::time::timeout(WAIT, server_b.shutdown())
        .await
        .unwrap();
    assert_eq!(limiter.active(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_connections_count_against_the_limiter() {
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_address = target.local_addr().unwrap();
    let mut builder = Server::builder().bind("127.0.0.1:0").max_connections(1);
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    let address = server.local_addr().unwrap();

    // An inbound connection holds the only slot: an outgoing connect is refused at once.
    let mut inbound = client(address).await;
    assert_eq!(echo_round_trip(&mut inbound, b"in").await, b"in");
    let refused = tokio::time::timeout(WAIT, server.connect(target_address))
        .await
        .expect("connect at the limit did not return");
    match refused {
        Err(Error::ConnectionLimitReached { limit }) => assert_eq!(limit, 1),
        other => panic!("expected ConnectionLimitReached, got {other:?}"),
    }
    assert_eq!(server.stats().connect_failures, 1);
    assert_eq!(server.stats().connected, 0);
    assert_eq!(
        recorder.count(|e| matches!(e, Event::SocketCreated(Direction::Outbound))),
        0,
        "no socket is created for a connect refused by the limiter"
    );
    // Its user data is still released (with no connection id).
    recorder
        .wait_count("release of the refused connect", 1, |e| {
            matches!(e, Event::Released(None, _))
        })
        .await;
    assert_eq!(server.limiter().active(), 1);

    // Free the slot; now the outgoing connection takes it and an inbound client must wait.
    drop(inbound);
    recorder
        .wait_count("inbound release", 1, |e| {
            matches!(e, Event::Released(Some(_), _))
        })
        .await;
    eventually("the slot to free", || server.limiter().active() == 0).await;
    let outgoing = tokio::time::timeout(WAIT, server.connect(target_address))
        .await
        .unwrap()
        .expect("connect with a free slot");
    let (mut peer, _) = tokio::time::timeout(WAIT, target.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(server.limiter().active(), 1);
    assert_eq!(server.stats().connected, 1);

    let mut waiting = client(address).await;
    waiting.write_all(b"wait").await.unwrap();
    recorder
        .wait_count("maximum connections", 1, |e| {
            matches!(e, Event::MaximumConnections)
        })
        .await;
    assert_not_served(&mut waiting).await;

    // Close the outgoing connection (the target closes its side when it sees our FIN).
    let peer_task = tokio::spawn(async move {
        let (data, end) = read_to_end(&mut peer).await;
        end.map(|()| data)
    });
    outgoing.close();
    drop(outgoing);
    let mut reply = [0_u8; 4];
    tokio::time::timeout(WAIT, waiting.read_exact(&mut reply))
        .await
        .expect("the inbound client was not served after the outgoing connection ended")
        .unwrap();
    assert_eq!(&reply, b"wait");
    assert!(peer_task.await.unwrap().unwrap().is_empty());
    assert_eq!(server.stats().closures(ClosureReason::LocalClose), 1);

    drop(waiting);
    tokio::time::timeout(WAIT, server.shutdown()).await.unwrap();
    assert_eq!(server.limiter().active(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_start_accepting_hold_clients_in_the_backlog() {
    let mut builder = Server::builder().bind("127.0.0.1:0");
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    let address = server.local_addr().unwrap();
    recorder
        .wait_count("start accepting", 1, |e| matches!(e, Event::StartAccepting))
        .await;

    server.stop_accepting();
    recorder
        .wait_count("stop accepting", 1, |e| matches!(e, Event::StopAccepting))
        .await;
    // Stopping again changes nothing and fires nothing.
    server.stop_accepting();

    let mut waiting = client(address).await;
    waiting.write_all(b"queued").await.unwrap();
    assert_not_served(&mut waiting).await;
    assert!(recorder.established().is_empty());
    assert_eq!(server.stats().accepted, 0);

    server.start_accepting();
    let mut reply = [0_u8; 6];
    tokio::time::timeout(WAIT, waiting.read_exact(&mut reply))
        .await
        .expect("the waiting client was not served after start_accepting")
        .unwrap();
    assert_eq!(&reply, b"queued");
    recorder
        .wait_count("start accepting again", 2, |e| {
            matches!(e, Event::StartAccepting)
        })
        .await;
    assert_eq!(
        accepting_events(&recorder.events()),
        vec![true, false, true]
    );
    assert_eq!(recorder.established().len(), 1);

    // Live connections are unaffected by stop_accepting.
    server.stop_accepting();
    recorder
        .wait_count("stop accepting again", 2, |e| {
            matches!(e, Event::StopAccepting)
        })
        .await;
    assert_eq!(echo_round_trip(&mut waiting, b"still").await, b"still");

    drop(waiting);
    tokio::time::timeout(WAIT, server.shutdown()).await.unwrap();
    // Shutting down while stopped fires no second stop.
    let events = recorder.events();
    assert_alternating(&events);
    assert_eq!(accepting_events(&events), vec![true, false, true, false]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_not_accepting_accepts_after_start_accepting() {
    let mut builder = Server::builder().bind("127.0.0.1:0").accepting(false);
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    let mut waiting = client(server.local_addr().unwrap()).await;
    waiting.write_all(b"hi").await.unwrap();
    assert_not_served(&mut waiting).await;
    assert!(accepting_events(&recorder.events()).is_empty());

    server.start_accepting();
    let mut reply = [0_u8; 2];
    tokio::time::timeout(WAIT, waiting.read_exact(&mut reply))
        .await
        .expect("not served after start_accepting")
        .unwrap();
    assert_eq!(&reply, b"hi");
    assert_eq!(accepting_events(&recorder.events()), vec![true]);

    drop(waiting);
    tokio::time::timeout(WAIT, server.shutdown()).await.unwrap();
    assert_eq!(accepting_events(&recorder.events()), vec![true, false]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_accepting_while_at_the_limit_keeps_events_alternating() {
    let mut builder = Server::builder().bind("127.0.0.1:0").max_connections(1);
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    let address = server.local_addr().unwrap();

    let mut first = client(address).await;
    assert_eq!(echo_round_trip(&mut first, b"1").await, b"1");
    let mut held = client(address).await;
    held.write_all(b"2").await.unwrap();
    recorder
        .wait_count("stop at the limit", 1, |e| {
            matches!(e, Event::StopAccepting)
        })
        .await;

    // Explicitly stopped as well: freeing the slot must not resume accepting.
    server.stop_accepting();
    drop(first);
    recorder.wait_released(1).await;
    eventually("the slot to free", || server.limiter().active() == 0).await;
    assert_not_served(&mut held).await;
    assert_eq!(recorder.established().len(), 1);

    server.start_accepting();
    let mut reply = [0_u8; 1];
    tokio::time::timeout(WAIT, held.read_exact(&mut reply))
        .await
        .expect("the held client was not served after start_accepting")
        .unwrap();
    assert_eq!(&reply, b"2");
    recorder
        .wait_count("start again", 2, |e| matches!(e, Event::StartAccepting))
        .await;

    // Serving it reached the limit again; its end frees the slot and accepting resumes.
    drop(held);
    recorder
        .wait_count("start after the held one ends", 3, |e| {
            matches!(e, Event::StartAccepting)
        })
        .await;
    tokio::time::timeout(WAIT, server.shutdown()).await.unwrap();
    let events = recorder.events();
    assert_alternating(&events);
    assert_eq!(
        accepting_events(&events),
        vec![true, false, true, false, true, false]
    );
}

/// With `StopAccepting`, a client waiting at the limit is never accepted without a slot: a
/// shutdown then leaves it to the kernel (the listener closes), and the application sees exactly
/// the sockets it was given, each with all its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_at_the_limit_is_not_accepted_and_dropped_by_a_shutdown() {
    let mut builder = Server::builder()
        .bind("127.0.0.1:0")
        .max_connections(1)
        .at_limit(LimitPolicy::StopAccepting)
        // The served client keeps its side open: the drain ends by the clock.
        .shutdown_timeout(Duration::from_millis(300));
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    let address = server.local_addr().unwrap();

    let mut first = client(address).await;
    assert_eq!(echo_round_trip(&mut first, b"1").await, b"1");
    recorder
        .wait_count("stop at the limit", 1, |e| {
            matches!(e, Event::StopAccepting)
        })
        .await;
    let mut waiting = client(address).await;
    waiting.write_all(b"2").await.unwrap();
    assert_not_served(&mut waiting).await;

    let report = tokio::time::timeout(WAIT, server.shutdown()).await.unwrap();
    assert_eq!(report.graceful + report.forced + report.other, 1);
    let events = recorder.events();
    assert_eq!(
        recorder.count(|e| matches!(e, Event::SocketCreated(_))),
        1,
        "only the served client's socket was ever created: {events:#?}"
    );
    assert_eq!(recorder.count(|e| matches!(e, Event::Released(..))), 1);
    // The waiting client never got an answer: the kernel resets it with the listener.
    let (data, _) = read_to_end(&mut waiting).await;
    assert!(data.is_empty());
    assert_eq!(server.stats().accepted, 1);
    drop(first);
}
