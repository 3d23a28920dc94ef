//! Guarantees 6 and 7 (docs/guarantees.md): abort-all and the ordered, idempotent shutdown, over
//! real loopback connections where the listener is part of it (accepting stops, connects are
//! refused) and over the embedded connection of `switchboard::testing` elsewhere (on tokio's paused
//! clock unless the test is about parallel tasks).

mod common;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use switchboard::testing::{EmbeddedPeer, EmbeddedServer};
use switchboard::{
    async_trait, BytesMut, Callbacks, ClosureReason, Connection, ConnectionId, Error, Server,
    ShutdownReport, UserData,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How long to keep watching for events that must not happen. Only used to show that something
/// does *not* happen, so a loaded machine cannot make it fail spuriously.
const QUIET: Duration = Duration::from_millis(200);

/// Connects `n` clients and makes one echo round trip on each, so all are established.
async fn echoing_clients(address: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut stream = client(address).await;
        let message = format!("hello {i}");
        assert_eq!(
            echo_round_trip(&mut stream, message.as_bytes()).await,
            message.as_bytes()
        );
        clients.push(stream);
    }
    clients
}

/// The peer address of the `i`th embedded connection.
fn peer_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], 40000 + i as u16))
}

/// [`echoing_clients`] over the embedded connection (`switchboard::testing`).
async fn echoing_peers(server: &EmbeddedServer, n: usize) -> Vec<EmbeddedPeer> {
    let mut peers = Vec::with_capacity(n);
    for i in 0..n {
        let mut peer = server.accept(peer_addr(i)).await.expect("embedded connect");
        let message = format!("hello {i}");
        peer.send(&message).unwrap();
        assert_eq!(peer.read_exact(message.len()).await.unwrap(), message);
        peers.push(peer);
    }
    peers
}

/// [`until_closed`] for embedded peers.
fn until_peers_closed(peers: Vec<EmbeddedPeer>) -> Vec<JoinHandle<io::Result<Vec<u8>>>> {
    peers
        .into_iter()
        .map(|mut peer| {
            tokio::spawn(async move {
                let end = peer.read_to_end().await.map(|data| data.to_vec());
                drop(peer);
                end
            })
        })
        .collect()
}

/// Lets each client read until the server ends the connection, then drop it (sending our FIN
/// if the server closed gracefully). Each task returns how the stream ended.
fn until_closed(clients: Vec<TcpStream>) -> Vec<JoinHandle<io::Result<Vec<u8>>>> {
    clients
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let (data, end) = read_to_end(&mut stream).await;
                end.map(|()| data)
            })
        })
        .collect()
}

async fn endings(tasks: Vec<JoinHandle<io::Result<Vec<u8>>>>) -> Vec<io::Result<Vec<u8>>> {
    let mut endings = Vec::with_capacity(tasks.len());
    for task in tasks {
        endings.push(task.await.expect("client task"));
    }
    endings
}

fn assert_reset(ending: &io::Result<Vec<u8>>) {
    match ending {
        Err(error) => assert_eq!(
            error.kind(),
            io::ErrorKind::ConnectionReset,
            "expected a reset, got {error}"
        ),
        Ok(data) => panic!("expected a reset, got a clean EOF after {data:?}"),
    }
}

/// Positions of every event matching `wanted`.
fn positions(events: &[Event], wanted: impl Fn(&Event) -> bool) -> Vec<usize> {
    events
        .iter()
        .enumerate()
        .filter(|(_, event)| wanted(event))
        .map(|(i, _)| i)
        .collect()
}

/// Connecting to `address` is refused: the listener is closed.
async fn assert_connect_refused(address: SocketAddr) {
    let result = tokio::time::timeout(WAIT, TcpStream::connect(address))
        .await
        .expect("connect after shutdown timed out");
    match result {
        Err(error) => assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused, "{error}"),
        Ok(_) => panic!("a connect after shutdown succeeded"),
    }
}

/// Waits a little and checks that no event was recorded after the shutdown completed.
async fn assert_nothing_after_complete(recorder: &Recorder) {
    tokio::time::sleep(QUIET).await;
    let events = recorder.events();
    assert!(
        matches!(events.last(), Some(Event::ShutdownComplete(_))),
        "on_shutdown_complete must be the last event: {events:#?}"
    );
    assert_eq!(
        recorder.count(|e| matches!(e, Event::ShutdownComplete(_))),
        1,
        "{events:#?}"
    );
}

async fn shut_down(server: &Server) -> ShutdownReport {
    tokio::time::timeout(WAIT, server.shutdown())
        .await
        .expect("shutdown did not complete")
}

#[tokio::test(start_paused = true)]
async fn abort_all_resets_every_live_connection_and_reports_the_count() {
    const K: usize = 3;
    let mut builder = Server::builder();
    let recorder = Recorder::new(&mut builder);
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let clients = echoing_peers(&server, K).await;
    assert_eq!(server.active_connections(), K);

    let aborted = tokio::time::timeout(WAIT, server.abort_all_connections())
        .await
        .expect("abort_all_connections did not return");
    assert_eq!(aborted, K);
    // Documented: the callback has run by the time abort_all_connections returns.
    assert_eq!(
        recorder.count(|e| *e == Event::AllConnectionsAborted(K)),
        1,
        "{:#?}",
        recorder.events()
    );

    for ending in endings(until_peers_closed(clients)).await {
        assert_reset(&ending);
    }
    recorder.wait_released(K).await;
    let events = recorder.events();
    let announced = position(&events, |e| *e == Event::AllConnectionsAborted(K));
    assert!(
        positions(&events, |e| matches!(e, Event::Closure(..)))
            .iter()
            .all(|&c| c > announced),
        "on_all_connections_aborted precedes the closures it caused: {events:#?}"
    );
    let ids = recorder.established();
    assert_eq!(ids.len(), K);
    for id in ids {
        let events = recorder.events_of(id);
        assert_lifecycle(&events);
        assert_eq!(closure_reason(&events), Some(ClosureReason::AbortAll));
    }
    eventually("the connections to deregister", || {
        server.active_connections() == 0
    })
    .await;
    let stats = server.stats();
    assert_eq!(stats.closures(ClosureReason::AbortAll), K as u64);
    assert_eq!(stats.total_closures(), K as u64);
    assert_eq!(stats.active, 0);
    assert_eq!(stats.accepted, K as u64);

    // The server goes on accepting; an abort-all with nothing live reports zero.
    let mut later = server.accept(peer_addr(K)).await.unwrap();
    later.send(b"after").unwrap();
    assert_eq!(later.read_exact(5).await.unwrap(), "after");
    assert_eq!(server.stats().accepted, K as u64 + 1);
    drop(later);
    recorder.wait_released(K + 1).await;
    eventually("the last connection to deregister", || {
        server.active_connections() == 0
    })
    .await;
    assert_eq!(server.abort_all_connections().await, 0);
    assert_eq!(recorder.count(|e| *e == Event::AllConnectionsAborted(0)), 1);
    let report = shut_down(server.server()).await;
    assert_eq!((report.graceful, report.forced), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_runs_in_order_and_reports_every_connection_graceful() {
    const K: usize = 3;
    let mut builder = Server::builder().bind("127.0.0.1:0").shutdown_timeout(WAIT);
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    let address = server.local_addr().unwrap();
    let clients = echoing_clients(address, K).await;
    let tasks = until_closed(clients);

    let report = shut_down(&server).await;
    assert_eq!((report.graceful, report.forced), (K, 0));
    assert!(server.is_shutting_down());

    // Every client saw a clean end of stream (our FIN after the queue), not a reset.
    for ending in endings(tasks).await {
        assert_eq!(ending.expect("a clean end of stream"), b"");
    }

    let events = recorder.events();
    // on_shutdown_initiated comes first: before it, only the echoes' own events (a write
    // completion may still be reported after the client saw its echo).
    let initiated = position(&events, |e| *e == Event::ShutdownInitiated);
    assert!(
        events[..initiated].iter().all(|e| matches!(
            e,
            Event::StartAccepting
                | Event::SocketCreated(_)
                | Event::Established(..)
                | Event::Read(..)
                | Event::Written(..)
        )),
        "on_shutdown_initiated comes first: {events:#?}"
    );
    let stop = position(&events, |e| matches!(e, Event::StopAccepting));
    assert!(initiated < stop, "{events:#?}");
    let requested = positions(&events, |e| matches!(e, Event::ShutdownRequested(_)));
    assert_eq!(requested.len(), K, "{events:#?}");
    assert!(
        requested.iter().all(|&r| r > stop),
        "accepting stops before connections are told: {events:#?}"
    );
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::AllConnectionsAborted(_))));
    let complete = position(&events, |e| matches!(e, Event::ShutdownComplete(_)));
    assert_eq!(complete, events.len() - 1, "{events:#?}");
    for id in recorder.established() {
        let own = recorder.events_of(id);
        assert_lifecycle(&own);
        assert_eq!(closure_reason(&own), Some(ClosureReason::LocalClose));
        let told = position(&own, |e| *e == Event::ShutdownRequested(id));
        let closure = position(&own, |e| matches!(e, Event::Closure(..)));
        assert!(told < closure, "told before it closes: {own:#?}");
    }
    let stats = server.stats();
    assert_eq!(stats.closures(ClosureReason::LocalClose), K as u64);
    assert_eq!(stats.active, 0);
    assert_eq!(server.limiter().active(), 0);

    assert_nothing_after_complete(&recorder).await;
    assert_connect_refused(address).await;
    assert_nothing_after_complete(&recorder).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_resets_connections_that_outlive_the_drain_time() {
    if skip_under_wine(&WINE_RESET_READ_AS_EOF) {
        return;
    }
    const K: usize = 3;
    let mut builder = Server::builder()
        .bind("127.0.0.1:0")
        .shutdown_timeout(Duration::from_millis(300));
    let recorder = Recorder::with_behavior(
        &mut builder,
        Behavior {
            close_on_shutdown_request: false,
            ..Behavior::default()
        },
    );
    let server = builder.start(recorder.clone()).await.unwrap();
    let address = server.local_addr().unwrap();
    let tasks = until_closed(echoing_clients(address, K).await);

    let report = shut_down(&server).await;
    assert_eq!((report.graceful, report.forced), (0, K));
    for ending in endings(tasks).await {
        assert_reset(&ending);
    }

    let events = recorder.events();
    let initiated = position(&events, |e| *e == Event::ShutdownInitiated);
    let aborted = positions(&events, |e| matches!(e, Event::AllConnectionsAborted(_)));
    assert_eq!(aborted.len(), 1, "{events:#?}");
    assert_eq!(events[aborted[0]], Event::AllConnectionsAborted(K));
    assert!(initiated < aborted[0]);
    let requested = positions(&events, |e| matches!(e, Event::ShutdownRequested(_)));
    assert_eq!(requested.len(), K);
    assert!(requested.iter().all(|&r| r < aborted[0]), "{events:#?}");
    let closing = positions(&events, |e| {
        matches!(
            e,
            Event::Closure(..) | Event::Closed(_) | Event::Released(..)
        )
    });
    assert_eq!(closing.len(), 3 * K);
    assert!(
        closing.iter().all(|&c| c > aborted[0]),
        "the aborted connections' closing events follow on_all_connections_aborted: {events:#?}"
    );
    assert!(
        matches!(events.last(), Some(Event::ShutdownComplete(_))),
        "{events:#?}"
    );
    for id in recorder.established() {
        let own = recorder.events_of(id);
        assert_lifecycle(&own);
        assert_eq!(closure_reason(&own), Some(ClosureReason::ShutdownForced));
    }
    assert_eq!(
        server.stats().closures(ClosureReason::ShutdownForced),
        K as u64
    );
    assert_nothing_after_complete(&recorder).await;
    assert_connect_refused(address).await;
}

/// The strict order, repeated on a multi-threaded runtime where the connections' tasks run in
/// parallel with the manager's: `on_all_connections_aborted` precedes the closing events of every
/// connection it aborted, for a shutdown's forced aborts and for an explicit abort-all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_connections_aborted_precedes_the_closures_it_caused() {
    const K: usize = 4;
    for round in 0..20 {
        let mut builder = Server::builder().shutdown_timeout(Duration::from_millis(20));
        let recorder = Recorder::with_behavior(
            &mut builder,
            Behavior {
                close_on_shutdown_request: false,
                ..Behavior::default()
            },
        );
        let server = builder.embedded().start(recorder.clone()).await.unwrap();
        let tasks = until_peers_closed(echoing_peers(&server, K).await);
        let report = shut_down(server.server()).await;
        assert_eq!((report.graceful, report.forced), (0, K));
        endings(tasks).await.iter().for_each(assert_reset);
        let events = recorder.events();
        let aborted = position(&events, |e| *e == Event::AllConnectionsAborted(K));
        let first_closure = position(&events, |e| matches!(e, Event::Closure(..)));
        assert!(
            aborted < first_closure,
            "shutdown, round {round}: {events:#?}"
        );
        assert_eq!(events.last(), Some(&Event::ShutdownComplete(report)));

        let mut builder = Server::builder();
        let recorder = Recorder::new(&mut builder);
        let server = builder.embedded().start(recorder.clone()).await.unwrap();
        let tasks = until_peers_closed(echoing_peers(&server, K).await);
        assert_eq!(server.abort_all_connections().await, K);
        endings(tasks).await.iter().for_each(assert_reset);
        recorder.wait_released(K).await;
        let events = recorder.events();
        let aborted = position(&events, |e| *e == Event::AllConnectionsAborted(K));
        let first_closure = position(&events, |e| matches!(e, Event::Closure(..)));
        assert!(
            aborted < first_closure,
            "abort-all, round {round}: {events:#?}"
        );
        shut_down(server.server()).await;
    }
}

/// Closes on the shutdown notice only the connections it was told to; records the rest.
#[derive(Default)]
struct MixedState {
    established: Mutex<Vec<ConnectionId>>,
    closers: Mutex<HashSet<ConnectionId>>,
    told: Mutex<Vec<ConnectionId>>,
    reasons: Mutex<HashMap<ConnectionId, ClosureReason>>,
    released: AtomicUsize,
    complete: Mutex<Vec<ShutdownReport>>,
}

#[derive(Clone, Default)]
struct Mixed(Arc<MixedState>);

#[async_trait]
impl Callbacks for Mixed {
    async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
        let mut established = self.0.established.lock().unwrap();
        // Every other connection closes when told; the others ignore the notice.
        if established.len() % 2 == 0 {
            self.0.closers.lock().unwrap().insert(connection.id());
        }
        established.push(connection.id());
        connection.read();
    }

    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        if connection.write(data.freeze()).is_ok() {
            connection.read();
        }
    }

    async fn on_shutdown_requested(&self, connection: &Connection) {
        self.0.told.lock().unwrap().push(connection.id());
        if self.0.closers.lock().unwrap().contains(&connection.id()) {
            connection.close();
        }
    }

    async fn on_connection_closure(&self, connection: &Connection, reason: ClosureReason) {
        let previous = self
            .0
            .reasons
            .lock()
            .unwrap()
            .insert(connection.id(), reason);
        assert!(previous.is_none(), "two closures for one connection");
    }

    async fn on_socket_released(&self, _: UserData) {
        self.0.released.fetch_add(1, Ordering::SeqCst);
    }

    async fn on_shutdown_complete(&self, report: ShutdownReport) {
        self.0.complete.lock().unwrap().push(report);
    }
}

#[tokio::test(start_paused = true)]
async fn mixed_shutdown_counts_graceful_and_forced_connections() {
    const K: usize = 5;
    let mixed = Mixed::default();
    let server = Server::builder()
        .shutdown_timeout(Duration::from_millis(500))
        .embedded()
        .start(mixed.clone())
        .await
        .unwrap();
    let tasks = until_peers_closed(echoing_peers(&server, K).await);
    eventually("every connection established", || {
        mixed.0.established.lock().unwrap().len() == K
    })
    .await;
    let closers = mixed.0.closers.lock().unwrap().clone();
    let graceful = closers.len();
    assert_eq!(graceful, K.div_ceil(2));

    let report = shut_down(server.server()).await;
    assert_eq!((report.graceful, report.forced), (graceful, K - graceful));
    assert_eq!(*mixed.0.complete.lock().unwrap(), vec![report]);
    assert_eq!(mixed.0.told.lock().unwrap().len(), K);
    assert_eq!(mixed.0.released.load(Ordering::SeqCst), K);
    let reasons = mixed.0.reasons.lock().unwrap().clone();
    assert_eq!(reasons.len(), K);
    for (id, reason) in &reasons {
        let expected = if closers.contains(id) {
            ClosureReason::LocalClose
        } else {
            ClosureReason::ShutdownForced
        };
        assert_eq!(*reason, expected, "connection {id:?}");
    }
    let endings = endings(tasks).await;
    let clean = endings.iter().filter(|ending| ending.is_ok()).count();
    assert_eq!(clean, graceful, "{endings:?}");
    endings
        .iter()
        .filter(|ending| ending.is_err())
        .for_each(assert_reset);
    let stats = server.stats();
    assert_eq!(stats.closures(ClosureReason::LocalClose), graceful as u64);
    assert_eq!(
        stats.closures(ClosureReason::ShutdownForced),
        (K - graceful) as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_idempotent_and_awaitable() {
    const K: usize = 2;
    let mut builder = Server::builder().bind("127.0.0.1:0");
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    let tasks = until_closed(echoing_clients(server.local_addr().unwrap(), K).await);

    // A caller that stops waiting at once does not stop the shutdown it started.
    let _ = tokio::time::timeout(Duration::ZERO, server.shutdown()).await;
    assert!(server.is_shutting_down());
    let other = server.clone();
    let (first, second) = tokio::time::timeout(WAIT, async {
        tokio::join!(server.shutdown(), other.shutdown())
    })
    .await
    .expect("concurrent shutdowns did not complete");
    assert_eq!((first.graceful, first.forced), (K, 0));
    assert_eq!(first, second);
    let third = shut_down(&server).await;
    assert_eq!(third, first);
    endings(tasks).await.into_iter().for_each(|ending| {
        ending.expect("a clean end of stream");
    });

    assert_eq!(recorder.count(|e| matches!(e, Event::ShutdownInitiated)), 1);
    assert_eq!(recorder.count(|e| matches!(e, Event::StopAccepting)), 1);
    assert_nothing_after_complete(&recorder).await;
    assert_eq!(shut_down(&server).await, first);
    assert_nothing_after_complete(&recorder).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_no_connections() {
    let mut builder = Server::builder().bind("127.0.0.1:0");
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    let address = server.local_addr().unwrap();
    recorder
        .wait_count("start accepting", 1, |e| matches!(e, Event::StartAccepting))
        .await;
    let report = shut_down(&server).await;
    assert_eq!((report.graceful, report.forced), (0, 0));
    assert_eq!(
        recorder.events(),
        vec![
            Event::StartAccepting,
            Event::ShutdownInitiated,
            Event::StopAccepting,
            Event::ShutdownComplete(report),
        ]
    );
    assert_nothing_after_complete(&recorder).await;
    assert_connect_refused(address).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_of_a_server_without_listeners() {
    let mut builder = Server::builder();
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    assert!(server.local_addrs().is_empty());
    let report = shut_down(&server).await;
    assert_eq!((report.graceful, report.forced), (0, 0));
    // No listeners: no accepting events, just the shutdown's first and last.
    assert_eq!(
        recorder.events(),
        vec![Event::ShutdownInitiated, Event::ShutdownComplete(report)]
    );
    assert_nothing_after_complete(&recorder).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_outgoing_connections_too() {
    let target = SocketAddr::from(([198, 51, 100, 1], 6000));
    let mut builder = Server::builder();
    let recorder = Recorder::new(&mut builder);
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let (outgoing, peer) = server.connect(target).await.expect("connect");
    let tasks = until_peers_closed(vec![peer]);
    // The application still holds the handle: the shutdown notice closes it all the same.
    let report = shut_down(server.server()).await;
    assert_eq!((report.graceful, report.forced), (1, 0));
    assert_eq!(endings(tasks).await[0].as_ref().unwrap(), b"");
    let id = outgoing.id();
    let own = recorder.events_of(id);
    assert_lifecycle(&own);
    assert_eq!(closure_reason(&own), Some(ClosureReason::LocalClose));
    assert_nothing_after_complete(&recorder).await;
    drop(outgoing);
    assert_nothing_after_complete(&recorder).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_after_shutdown_are_refused_with_shutting_down() {
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_address = target.local_addr().unwrap();
    let mut builder = Server::builder().bind("127.0.0.1:0");
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    shut_down(&server).await;
    let before = recorder.events();

    let connected = tokio::time::timeout(WAIT, server.connect(target_address))
        .await
        .expect("connect after shutdown did not return");
    assert!(
        matches!(connected, Err(Error::ShuttingDown)),
        "expected ShuttingDown, got {connected:?}"
    );
    let spawned = server.connect(target_address).spawn();
    assert!(
        matches!(spawned, Err(Error::ShuttingDown)),
        "expected ShuttingDown, got {spawned:?}"
    );
    // Neither reached the target nor ran a callback.
    assert!(
        tokio::time::timeout(QUIET, target.accept()).await.is_err(),
        "a connect after shutdown reached its target"
    );
    assert_eq!(recorder.events(), before);
    assert_eq!(server.stats().connected, 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_report_counts_connections_that_ended_otherwise_during_the_drain() {
    const K: usize = 3;
    let mut builder = Server::builder().shutdown_timeout(Duration::from_millis(1500));
    let recorder = Recorder::with_behavior(
        &mut builder,
        Behavior {
            close_on_shutdown_request: false,
            ..Behavior::default()
        },
    );
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let mut clients = echoing_peers(&server, K).await;
    let shutdown = tokio::spawn({
        let server = server.server().clone();
        async move { server.shutdown().await }
    });
    recorder
        .wait_count("every connection told", K, |e| {
            matches!(e, Event::ShutdownRequested(_))
        })
        .await;
    // One peer resets during the drain: neither graceful nor forced.
    clients.remove(0).reset();
    let report = tokio::time::timeout(WAIT, shutdown).await.unwrap().unwrap();
    assert_eq!(
        (report.graceful, report.forced, report.other),
        (0, K - 1, 1)
    );
    let stats = server.stats();
    assert_eq!(stats.closures(ClosureReason::PeerReset), 1);
    assert_eq!(
        stats.closures(ClosureReason::ShutdownForced),
        (K - 1) as u64
    );
}

/// Guarantee 14 (docs/guarantees.md): a connection told of the shutdown that keeps reading (the
/// application's choice in `on_shutdown_requested`, instead of the default `close()`) answers
/// everything its peer sends, before and after the notice, and ends gracefully when the peer
/// closes. The default, for contrast, discards what arrives after the notice: the peer gets FIN and
/// no answer.
#[tokio::test(start_paused = true)]
async fn a_drain_that_keeps_reading_loses_nothing_the_peer_sent() {
    for keep_reading in [true, false] {
        let mut builder = Server::builder().shutdown_timeout(WAIT);
        let recorder = Recorder::with_behavior(
            &mut builder,
            Behavior {
                close_on_shutdown_request: !keep_reading,
                ..Behavior::echo()
            },
        );
        let server = builder.embedded().start(recorder.clone()).await.unwrap();
        let mut stream = server.accept(peer_addr(0)).await.unwrap();
        let greeting = pattern(1, 1024);
        stream.send(&greeting).unwrap();
        assert!(stream.read_exact(1024).await.unwrap() == greeting);
        // A request on its way while the shutdown begins, and one sent after the notice.
        let in_flight = pattern(2, 1024);
        stream.send(&in_flight).unwrap();
        let shutdown = {
            let server = server.server().clone();
            tokio::spawn(async move { server.shutdown().await })
        };
        recorder
            .wait_for("the notice", |e| matches!(e, Event::ShutdownRequested(_)))
            .await;
        let after_notice = pattern(3, 1024);
        stream.send(&after_notice).unwrap();
        if keep_reading {
            let echoed = stream
                .read_exact(2048)
                .await
                .expect("both requests answered");
            assert!(
                echoed[..1024] == in_flight[..],
                "the in-flight request's echo"
            );
            assert!(
                echoed[1024..] == after_notice[..],
                "the later request's echo"
            );
            // Our FIN ends it: no more to read, then the server's FIN.
            stream.shutdown_write();
            let end = stream.read_to_end().await;
            let rest = end.as_ref().map(|rest| rest.to_vec()).unwrap_or_default();
            assert!(rest.is_empty() && end.is_ok(), "a clean end: {end:?}");
        } else {
            // Whatever of the in-flight request was read before the notice is echoed; what
            // came after it is not.
            let end = stream.read_to_end().await;
            let answered = end.as_ref().map(|rest| rest.to_vec()).unwrap_or_default();
            assert!(end.is_ok(), "closed with FIN, not reset: {end:?}");
            assert!(
                answered.len() < 2048 && answered[..] == in_flight[..answered.len()],
                "close() answers nothing that arrived after the notice ({} bytes came back)",
                answered.len()
            );
        }
        drop(stream);
        let report = bounded("shutdown", shutdown).await.unwrap();
        assert_eq!((report.graceful, report.forced, report.other), (1, 0, 0));
    }
}

/// Says goodbye when told of the shutdown, as a server that tells its clients why it closes.
struct Goodbye;

#[async_trait]
impl Callbacks for Goodbye {
    async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
        connection.read();
    }

    async fn on_shutdown_requested(&self, connection: &Connection) {
        let _ = connection.goodbye("bye\n");
    }
}

/// Guarantee 16 (docs/guarantees.md): a client that read the shutdown's goodbye and our FIN but
/// keeps its end open (as `nc` does) ended gracefully: everything was delivered. The report
/// counts it so, whatever the close timeout saw afterwards.
#[tokio::test(start_paused = true)]
async fn a_goodbye_to_a_lingering_peer_counts_as_graceful() {
    let server = Server::builder()
        .close_timeout(Duration::from_secs(5))
        .shutdown_timeout(Duration::from_secs(60))
        .embedded()
        .start(Goodbye)
        .await
        .unwrap();
    let mut peer = server.accept(peer_addr(0)).await.unwrap();
    let shutdown = {
        let server = server.server().clone();
        tokio::spawn(async move { server.shutdown().await })
    };
    let (said, end) = peer_read_to_end(&mut peer).await;
    assert_eq!(said, b"bye\n");
    end.expect("FIN after the goodbye");
    // The peer never closes its end.
    let report = bounded("shutdown", shutdown).await.unwrap();
    assert_eq!((report.graceful, report.forced, report.other), (1, 0, 0));
    drop(peer);
}

/// Guarantee 21 (docs/guarantees.md): with a drain window the server is not ready from the
/// shutdown's first moment, yet accepts and serves through the window; when it ends, every
/// connection, those accepted in the window included, is told and drains as without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_window_accepts_and_serves_then_drains_every_connection() {
    let mut builder = Server::builder()
        .bind("127.0.0.1:0")
        .drain_window(Duration::from_secs(2))
        .shutdown_timeout(WAIT);
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    let address = server.local_addr().unwrap();
    let mut before = echoing_clients(address, 1).await;
    assert!(!server.is_shutting_down());

    let shutdown = {
        let server = server.clone();
        tokio::spawn(async move { server.shutdown().await })
    };
    eventually("the shutdown to begin", || server.is_shutting_down()).await;
    recorder
        .wait_for("on_shutdown_initiated", |e| *e == Event::ShutdownInitiated)
        .await;
    // In the window: a new client is accepted and served, and the one from before still is,
    // untold.
    let during = echoing_clients(address, 1).await;
    echo(&mut before[0], b"still served").await;
    assert!(
        !recorder.has(|e| matches!(e, Event::ShutdownRequested(_) | Event::StopAccepting)),
        "nothing of the drain before the window ends: {:#?}",
        recorder.events()
    );
    assert!(server.is_shutting_down());

    let tasks = until_closed(before.into_iter().chain(during).collect());
    let report = bounded("the shutdown", shutdown).await.unwrap();
    assert_eq!((report.graceful, report.forced, report.other), (2, 0, 0));
    for ending in endings(tasks).await {
        ending.expect("each client saw the server's FIN");
    }
    let events = recorder.events();
    let stopped = position(&events, |e| *e == Event::StopAccepting);
    let requested = positions(&events, |e| matches!(e, Event::ShutdownRequested(_)));
    assert_eq!(requested.len(), 2, "{events:#?}");
    assert!(
        requested.iter().all(|&r| r > stopped),
        "told after the listeners closed: {events:#?}"
    );
    for id in recorder.established() {
        assert_lifecycle(&recorder.events_of(id));
    }
    assert_nothing_after_complete(&recorder).await;
    assert_connect_refused(address).await;
}

/// Issue 18's forced shutdown: `force_shutdown` during the drain window ends the window and the
/// drain at once; the connections left are reset as when the drain time runs out, counted as
/// forced, and every closing event still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_shutdown_cuts_the_drain_window_and_the_drain_time_short() {
    if skip_under_wine(&WINE_RESET_READ_AS_EOF) {
        return;
    }
    // Far longer than any wait of the test: only the forcing can end them.
    let long = Duration::from_secs(3600);
    let mut builder = Server::builder()
        .bind("127.0.0.1:0")
        .drain_window(long)
        .shutdown_timeout(long);
    let recorder = Recorder::with_behavior(
        &mut builder,
        Behavior {
            close_on_shutdown_request: false,
            ..Behavior::default()
        },
    );
    let server = builder.start(recorder.clone()).await.unwrap();
    let address = server.local_addr().unwrap();
    let tasks = until_closed(echoing_clients(address, 2).await);
    let shutdown = {
        let server = server.clone();
        tokio::spawn(async move { server.shutdown().await })
    };
    recorder
        .wait_for("on_shutdown_initiated", |e| *e == Event::ShutdownInitiated)
        .await;

    let report = bounded("the forced shutdown", server.force_shutdown()).await;
    assert_eq!((report.graceful, report.forced, report.other), (0, 2, 0));
    assert_eq!(
        bounded("the first shutdown call", shutdown).await.unwrap(),
        report
    );
    for ending in endings(tasks).await {
        assert_reset(&ending);
    }
    // Forced in the window, before the drain: the listeners close, and the connections, never
    // told, are reset.
    let events = recorder.events();
    let stopped = position(&events, |e| *e == Event::StopAccepting);
    let aborted = position(&events, |e| *e == Event::AllConnectionsAborted(2));
    assert!(stopped < aborted, "{events:#?}");
    assert!(
        !recorder.has(|e| matches!(e, Event::ShutdownRequested(_))),
        "{events:#?}"
    );
    for id in recorder.established() {
        let own = recorder.events_of(id);
        assert_lifecycle(&own);
        assert_eq!(closure_reason(&own), Some(ClosureReason::ShutdownForced));
    }
    assert_nothing_after_complete(&recorder).await;
    assert_connect_refused(address).await;
}

/// `force_shutdown` during the drain (no window) resets what is left at once; with nothing
/// left, or before any shutdown began, it is an ordinary shutdown that forces nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_shutdown_during_the_drain_resets_the_rest_at_once() {
    if skip_under_wine(&WINE_RESET_READ_AS_EOF) {
        return;
    }
    let mut builder = Server::builder()
        .bind("127.0.0.1:0")
        .shutdown_timeout(Duration::from_secs(3600));
    let recorder = Recorder::with_behavior(
        &mut builder,
        Behavior {
            close_on_shutdown_request: false,
            ..Behavior::default()
        },
    );
    let server = builder.start(recorder.clone()).await.unwrap();
    let tasks = until_closed(echoing_clients(server.local_addr().unwrap(), 1).await);
    let shutdown = {
        let server = server.clone();
        tokio::spawn(async move { server.shutdown().await })
    };
    recorder
        .wait_for("on_shutdown_requested", |e| {
            matches!(e, Event::ShutdownRequested(_))
        })
        .await;
    let report = bounded("the forced shutdown", server.force_shutdown()).await;
    assert_eq!((report.graceful, report.forced, report.other), (0, 1, 0));
    assert_eq!(
        bounded("the first shutdown call", shutdown).await.unwrap(),
        report
    );
    for ending in endings(tasks).await {
        assert_reset(&ending);
    }
    assert_nothing_after_complete(&recorder).await;

    let idle = Server::builder()
        .bind("127.0.0.1:0")
        .drain_window(Duration::from_secs(3600))
        .start(Recorder::new(&mut Server::builder()))
        .await
        .unwrap();
    let report = bounded("a forced shutdown of an idle server", idle.force_shutdown()).await;
    assert_eq!((report.graceful, report.forced, report.other), (0, 0, 0));
}
