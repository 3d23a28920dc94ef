//! Outgoing connections: `Server::connect`, awaited and spawned, their events, their
//! failures (refused, timed out), the lifetime rule for the returned handle, and how abort-all and
//! shutdown end them. Over real loopback TCP where the socket is part of the point (its creation
//! event, failed connects, a remote switchboard server); the rest run the outgoing path over
//! the embedded connection of `switchboard::testing` (`EmbeddedServer::connect`), on
//! the paused clock.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use switchboard::socket2::{Domain, Socket, Type};
use switchboard::{ClosureReason, Direction, Error, Server};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// The remote end of embedded outgoing connections (TEST-NET-2: nothing is contacted).
const REMOTE: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1)),
    6000,
);

/// A plain tokio listener on loopback, standing in for a remote server.
async fn peer_listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    (listener, address)
}

/// Accepts one connection, bounded by [`WAIT`].
async fn accept(listener: &TcpListener) -> TcpStream {
    tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("accept timed out")
        .expect("accept failed")
        .0
}

fn no_accepting_events(events: &[Event]) -> bool {
    !events
        .iter()
        .any(|e| matches!(e, Event::StartAccepting | Event::StopAccepting))
}

#[tokio::test]
async fn connect_runs_every_event_in_order_and_hands_the_argument_to_release() {
    let (listener, address) = peer_listener().await;
    let mut builder = Server::builder();
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    assert!(server.local_addrs().is_empty());
    assert_eq!(server.local_addr(), None);

    let connection = server
        .connect(address)
        .argument("session-7".to_string())
        .await
        .unwrap();
    assert_eq!(connection.direction(), Direction::Outbound);
    assert_eq!(connection.peer_addr(), address);
    let id = connection.id();
    let mut peer = accept(&listener).await;
    assert_eq!(peer.peer_addr().unwrap(), connection.local_addr());
    assert_eq!(server.active_connections(), 1);

    // The recorder echoes on the outgoing side too: the peer's bytes come back.
    assert_eq!(echo_round_trip(&mut peer, b"hello").await, b"hello");
    peer.shutdown().await.unwrap();
    recorder
        .wait_count("client close", 1, |e| *e == Event::ClientClose(id))
        .await;
    // The returned handle is still held, so the connection stays open after the peer's FIN.
    assert!(recorder
        .events()
        .iter()
        .all(|e| !matches!(e, Event::Closure(..))));
    drop(connection);
    let (rest, end) = read_to_end(&mut peer).await;
    assert!(rest.is_empty());
    end.unwrap();
    recorder.wait_released(1).await;

    let events = recorder.events();
    assert_eq!(
        events[0],
        Event::PreOutgoingConnect(address, Some("session-7".to_string()))
    );
    assert_eq!(events[1], Event::SocketCreated(Direction::Outbound));
    assert_eq!(events[2], Event::Established(id, address, None));
    assert_lifecycle(&events[2..]);
    assert!(events.contains(&Event::Read(id, 5)));
    assert!(events.contains(&Event::Written(id, 5)));
    assert!(
        position(&events, |e| *e == Event::Written(id, 5))
            < position(&events, |e| *e == Event::ClientClose(id))
    );
    assert_eq!(closure_reason(&events), Some(ClosureReason::PeerClosed));
    assert_eq!(
        events.last(),
        Some(&Event::Released(Some(id), Some("session-7".to_string())))
    );
    assert!(no_accepting_events(&events), "{events:#?}");
    let stats = server.stats();
    assert_eq!(stats.connected, 1);
    assert_eq!(stats.accepted, 0);
    assert_eq!(stats.connect_failures, 0);
    assert_eq!(server.active_connections(), 0);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn dropping_the_returned_handle_closes_an_idle_outgoing_connection() {
    let address = REMOTE;
    let mut builder = Server::builder();
    let recorder = Recorder::with_behavior(
        &mut builder,
        Behavior {
            echo: false,
            ..Behavior::default()
        },
    );
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let (connection, mut peer) = server.connect(address).await.unwrap();
    let id = connection.id();
    recorder
        .wait_count("established", 1, |e| matches!(e, Event::Established(..)))
        .await;

    // No read requested, no write queued: only the handle keeps it open.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!connection.is_closing());
    assert_eq!(server.active_connections(), 1);
    assert!(recorder
        .events()
        .iter()
        .all(|e| !matches!(e, Event::Closure(..))));

    drop(connection);
    let (rest, end) = peer_read_to_end(&mut peer).await;
    assert!(rest.is_empty());
    end.expect("the peer sees a graceful FIN, not a reset");
    drop(peer);
    recorder.wait_released(1).await;
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    assert_eq!(closure_reason(&events), Some(ClosureReason::Unreferenced));
    // No argument was a String, so none was stored.
    assert_eq!(events.last(), Some(&Event::Released(Some(id), None)));
    assert_eq!(server.active_connections(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn connect_to_a_closed_port_returns_refused_and_still_releases() {
    let mut builder = Server::builder();
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    let address = closed_port();

    let result = server
        .connect(address)
        .argument("refused-arg".to_string())
        .await;
    match result {
        Err(Error::Connect {
            address: failed,
            source,
        }) => {
            assert_eq!(failed, address);
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("expected Error::Connect, got {other:?}"),
    }
    // The release has already run when connect returns.
    assert_eq!(
        recorder.events(),
        vec![
            Event::PreOutgoingConnect(address, Some("refused-arg".to_string())),
            Event::SocketCreated(Direction::Outbound),
            Event::Released(None, Some("refused-arg".to_string())),
        ]
    );
    assert_eq!(
        recorder.count(|e| matches!(e, Event::OutgoingFailed(..))),
        0
    );
    let stats = server.stats();
    assert_eq!(stats.connect_failures, 1);
    assert_eq!(stats.connected, 0);
    assert_eq!(server.active_connections(), 0);
    assert_eq!(server.limiter().active(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn spawn_connect_failure_is_reported_with_the_argument_then_released() {
    let mut builder = Server::builder();
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    let address = closed_port();

    server
        .connect(address)
        .argument("async-arg".to_string())
        .spawn()
        .unwrap();
    recorder.wait_released(1).await;
    let events = recorder.events();
    assert_eq!(events.len(), 4, "{events:#?}");
    assert_eq!(
        events[0],
        Event::PreOutgoingConnect(address, Some("async-arg".to_string()))
    );
    assert_eq!(events[1], Event::SocketCreated(Direction::Outbound));
    match &events[2] {
        Event::OutgoingFailed(failed, message, argument) => {
            assert_eq!(*failed, address);
            assert!(message.contains("cannot connect"), "{message}");
            assert_eq!(argument.as_deref(), Some("async-arg"));
        }
        other => panic!("expected OutgoingFailed, got {other:?}"),
    }
    assert_eq!(
        events[3],
        Event::Released(None, Some("async-arg".to_string()))
    );
    assert_eq!(server.stats().connect_failures, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn spawn_connect_to_a_live_switchboard_server_establishes() {
    // The remote end is a switchboard echo server of its own.
    let mut remote_builder = Server::builder().bind("127.0.0.1:0");
    let remote_recorder = Recorder::new(&mut remote_builder);
    let remote = remote_builder.start(remote_recorder.clone()).await.unwrap();
    let address = remote.local_addr().unwrap();

    let mut builder = Server::builder();
    let recorder = Recorder::with_behavior(
        &mut builder,
        Behavior {
            echo: false,
            keep_handles: true,
            ..Behavior::default()
        },
    );
    let server = builder.start(recorder.clone()).await.unwrap();
    server
        .connect(address)
        .argument("spawned".to_string())
        .spawn()
        .unwrap();
    recorder
        .wait_count("established", 1, |e| matches!(e, Event::Established(..)))
        .await;
    remote_recorder
        .wait_count("remote established", 1, |e| {
            matches!(e, Event::Established(..))
        })
        .await;
    let events = recorder.events();
    assert_eq!(
        events[0],
        Event::PreOutgoingConnect(address, Some("spawned".to_string()))
    );
    assert_eq!(events[1], Event::SocketCreated(Direction::Outbound));
    assert!(matches!(events[2], Event::Established(_, a, None) if a == address));
    assert_eq!(
        recorder.count(|e| matches!(e, Event::OutgoingFailed(..))),
        0
    );

    // Talk through the kept handle: the remote echoes, our side reads the reply.
    let handle = recorder.take_handles().pop().unwrap();
    assert_eq!(handle.direction(), Direction::Outbound);
    handle.read();
    handle.write(&b"ping"[..]).unwrap();
    recorder
        .wait_count("echo read", 1, |e| matches!(e, Event::Read(_, 4)))
        .await;
    let id = handle.id();
    drop(handle);
    recorder.wait_released(1).await;
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    assert_eq!(
        events.last(),
        Some(&Event::Released(Some(id), Some("spawned".to_string())))
    );
    remote_recorder.wait_released(1).await;
    assert_eq!(server.stats().connected, 1);
    server.shutdown().await;
    remote.shutdown().await;
}

/// A loopback listener whose accept queue is full: with backlog 0 Linux queues one connection
/// and drops further SYNs instead of answering them, so a connect to it never completes. The
/// returned clients (which fill the queue) and the listener must be kept alive.
async fn unanswering_listener() -> (Socket, SocketAddr, Vec<TcpStream>) {
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    listener.listen(0).unwrap();
    let address = listener.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(address)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(error)) => panic!("filling the backlog failed: {error}"),
            // A SYN went unanswered: the queue is full.
            Err(_) => return (listener, address, fillers),
        }
    }
    panic!("the accept queue never filled");
}

#[tokio::test]
async fn connect_to_an_address_that_never_answers_times_out() {
    let (_listener, address, _fillers) = unanswering_listener().await;
    let mut builder = Server::builder().connect_timeout(Duration::from_millis(200));
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();

    let started = std::time::Instant::now();
    let result = tokio::time::timeout(WAIT, server.connect(address).argument("slow".to_string()))
        .await
        .expect("connect must end by its own timeout");
    match result {
        Err(Error::ConnectTimedOut {
            address: failed,
            timeout,
        }) => {
            assert_eq!(failed, address);
            assert_eq!(timeout, Duration::from_millis(200));
        }
        other => panic!("expected Error::ConnectTimedOut, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(
        recorder.events(),
        vec![
            Event::PreOutgoingConnect(address, Some("slow".to_string())),
            Event::SocketCreated(Direction::Outbound),
            Event::Released(None, Some("slow".to_string())),
        ]
    );
    assert_eq!(server.stats().connect_failures, 1);

    // The reporting variant says the same through on_outgoing_connection_failed.
    server
        .connect(address)
        .argument("slow-2".to_string())
        .spawn()
        .unwrap();
    recorder.wait_released(2).await;
    let failed: Vec<Event> = recorder
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::OutgoingFailed(..)))
        .collect();
    assert_eq!(failed.len(), 1);
    match &failed[0] {
        Event::OutgoingFailed(_, message, argument) => {
            assert!(message.contains("timed out"), "{message}");
            assert_eq!(argument.as_deref(), Some("slow-2"));
        }
        _ => unreachable!(),
    }
    assert_eq!(server.stats().connect_failures, 2);
    assert_eq!(server.active_connections(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn outgoing_and_accepted_connections_share_one_manager() {
    let mut builder = Server::builder().bind("127.0.0.1:0");
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    let address = server.local_addr().unwrap();

    // A plain client, and a connection from the server to itself: one outbound, one inbound.
    let mut plain = client(address).await;
    assert_eq!(echo_round_trip(&mut plain, b"plain").await, b"plain");
    let outgoing = server
        .connect(address)
        .argument("self".to_string())
        .await
        .unwrap();
    assert_eq!(outgoing.direction(), Direction::Outbound);
    recorder
        .wait_count("three established", 3, |e| {
            matches!(e, Event::Established(..))
        })
        .await;
    assert_eq!(server.active_connections(), 3);
    let stats = server.stats();
    assert_eq!(stats.active, 3);
    assert_eq!(stats.accepted, 2);
    assert_eq!(stats.connected, 1);
    assert_eq!(
        recorder.count(|e| *e == Event::SocketCreated(Direction::Outbound)),
        1
    );
    assert_eq!(
        recorder.count(|e| *e == Event::SocketCreated(Direction::Inbound)),
        2
    );

    // Shutdown ends them all, the outgoing one included, before on_shutdown_complete.
    let outgoing_id = outgoing.id();
    drop(outgoing);
    let plain_end = tokio::spawn(async move { read_to_end(&mut plain).await });
    let report = tokio::time::timeout(WAIT, server.shutdown())
        .await
        .expect("shutdown timed out");
    assert_eq!(report.graceful, 3, "{report:?}");
    let (_, end) = plain_end.await.unwrap();
    end.unwrap();
    let events = recorder.events();
    assert_eq!(events.last(), Some(&Event::ShutdownComplete(report)));
    for id in recorder.established() {
        let of = recorder.events_of(id);
        assert_lifecycle(&of);
        assert!(of.contains(&Event::ShutdownRequested(id)));
    }
    assert_eq!(
        recorder.events_of(outgoing_id).last(),
        Some(&Event::Released(
            Some(outgoing_id),
            Some("self".to_string())
        ))
    );
    assert_eq!(server.active_connections(), 0);
}

#[tokio::test(start_paused = true)]
async fn abort_all_resets_outgoing_connections() {
    let address = REMOTE;
    let mut builder = Server::builder();
    let recorder = Recorder::new(&mut builder);
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let (first, mut peer_a) = server
        .connect(address)
        .argument("a".to_string())
        .await
        .unwrap();
    let (second, mut peer_b) = server
        .connect(address)
        .argument("b".to_string())
        .await
        .unwrap();
    let ids = [first.id(), second.id()];
    drop(first);
    drop(second);
    // Reads are requested (echo), so both stay open without the handles.
    recorder
        .wait_count("established", 2, |e| matches!(e, Event::Established(..)))
        .await;
    assert_eq!(server.active_connections(), 2);

    assert_eq!(server.abort_all_connections().await, 2);
    recorder.wait_released(2).await;
    let events = recorder.events();
    let announced = position(&events, |e| *e == Event::AllConnectionsAborted(2));
    for id in ids {
        let of = recorder.events_of(id);
        assert_lifecycle(&of);
        assert_eq!(closure_reason(&of), Some(ClosureReason::AbortAll));
        assert!(announced < position(&events, |e| matches!(e, Event::Closure(c, _) if *c == id)));
    }
    for peer in [&mut peer_a, &mut peer_b] {
        let error = peer.read().await.expect_err("the peer sees a reset");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
    }
    assert_eq!(server.stats().closures(ClosureReason::AbortAll), 2);
    assert_eq!(server.active_connections(), 0);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_forces_outgoing_connections_in_order() {
    let address = REMOTE;
    let mut builder = Server::builder().shutdown_timeout(Duration::from_millis(300));
    let recorder = Recorder::with_behavior(
        &mut builder,
        Behavior {
            close_on_shutdown_request: false,
            ..Behavior::default()
        },
    );
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let (connection, mut peer) = server
        .connect(address)
        .argument("forced".to_string())
        .await
        .unwrap();
    let id = connection.id();
    drop(connection);

    let report = tokio::time::timeout(WAIT, server.shutdown())
        .await
        .expect("shutdown timed out");
    assert_eq!(report.forced, 1, "{report:?}");
    assert_eq!(report.graceful, 0, "{report:?}");
    let events = recorder.events();
    let initiated = position(&events, |e| *e == Event::ShutdownInitiated);
    let requested = position(&events, |e| *e == Event::ShutdownRequested(id));
    let aborted = position(&events, |e| *e == Event::AllConnectionsAborted(1));
    let closure = position(&events, |e| {
        *e == Event::Closure(id, ClosureReason::ShutdownForced)
    });
    let released = position(
        &events,
        |e| matches!(e, Event::Released(Some(i), _) if *i == id),
    );
    assert!(initiated < requested && requested < aborted && aborted < closure);
    assert!(closure < released);
    assert_eq!(events.last(), Some(&Event::ShutdownComplete(report)));
    assert_lifecycle(&recorder.events_of(id));
    assert!(no_accepting_events(&events), "{events:#?}");
    let (_, end) = peer_read_to_end(&mut peer).await;
    assert_eq!(
        end.expect_err("a forced end is a reset").kind(),
        std::io::ErrorKind::ConnectionReset
    );

    // No new connects once shut down.
    assert!(matches!(
        server.server().connect(address).await,
        Err(Error::ShuttingDown)
    ));
    assert!(matches!(
        server.server().connect(address).spawn(),
        Err(Error::ShuttingDown)
    ));
    eventually("nothing active", || server.active_connections() == 0).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_outgoing_connections_gracefully_when_the_peer_cooperates() {
    let address = REMOTE;
    let mut builder = Server::builder();
    let recorder = Recorder::new(&mut builder);
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let (connection, mut peer) = server.connect(address).await.unwrap();
    let id = connection.id();
    drop(connection);
    echo_peer(&mut peer, b"before").await;
    // The peer reads to the end and then closes, as a well-behaved server would.
    let peer_end = tokio::spawn(async move { peer_read_to_end(&mut peer).await });

    let report = tokio::time::timeout(WAIT, server.shutdown())
        .await
        .expect("shutdown timed out");
    assert_eq!(report.graceful, 1, "{report:?}");
    let (rest, end) = peer_end.await.unwrap();
    assert!(rest.is_empty());
    end.unwrap();
    let of = recorder.events_of(id);
    assert_lifecycle(&of);
    assert_eq!(closure_reason(&of), Some(ClosureReason::LocalClose));
    assert_eq!(
        recorder.events().last(),
        Some(&Event::ShutdownComplete(report))
    );
}
