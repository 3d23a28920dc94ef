//! Faults (guarantees in docs/guarantees.md): panics in callbacks (guarantee 9), accept errors
//! under descriptor exhaustion (guarantee 8), write errors, invalid settings and bind failures, and
//! a peer that never reads (guarantee 10). Over real loopback TCP, except where the socket is not
//! the point: the panics in a connection's callbacks and the pre-connect one, the write errors, and
//! the queue limit and the paused echo against a peer that never reads run on the embedded
//! connection of `switchboard::testing` (small send and receive windows for small socket buffers),
//! on the paused clock.

mod common;

#[cfg(target_os = "linux")]
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use switchboard::testing::{EmbeddedPeer, EmbeddedServer};
use switchboard::{
    async_trait, BytesMut, Callbacks, ClosureReason, Connection, Direction, Error, Server, UserData,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

fn errors(recorder: &Recorder) -> Vec<String> {
    recorder
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Error(message) => Some(message),
            _ => None,
        })
        .collect()
}

/// Starts an echo server whose recorder panics in `callback`.
async fn panicking_server(callback: &'static str) -> (Server, Recorder) {
    let mut builder = Server::builder().bind("127.0.0.1:0");
    let recorder = Recorder::with_behavior(
        &mut builder,
        Behavior {
            panic_in: Some(callback),
            ..Behavior::default()
        },
    );
    let server = builder.start(recorder.clone()).await.unwrap();
    (server, recorder)
}

/// [`panicking_server`], embedded (`switchboard::testing`): no listener.
async fn panicking_embedded(callback: &'static str) -> (EmbeddedServer, Recorder) {
    let mut builder = Server::builder();
    let recorder = Recorder::with_behavior(
        &mut builder,
        Behavior {
            panic_in: Some(callback),
            ..Behavior::default()
        },
    );
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    (server, recorder)
}

/// [`assert_still_serving`] for an embedded server.
async fn assert_still_serving_embedded(server: &EmbeddedServer, recorder: &Recorder) {
    recorder.set_behavior(|b| b.panic_in = None);
    let mut peer = server.accept(peer_addr(100)).await.unwrap();
    echo_peer(&mut peer, b"still here").await;
}

/// Stops the panics and checks that a new client is served (guarantee 9, docs/guarantees.md:
/// the server keeps serving).
async fn assert_still_serving(server: &Server, recorder: &Recorder) {
    recorder.set_behavior(|b| b.panic_in = None);
    let mut stream = client(server.local_addr().unwrap()).await;
    assert_eq!(
        echo_round_trip(&mut stream, b"still here").await,
        b"still here"
    );
}

/// Reads until the stream ends, whether by FIN or by RST.
async fn until_ended(stream: &mut TcpStream) {
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buffer))
            .await
            .expect("the connection did not end")
        {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn panic_in_on_read_completed_aborts_only_that_connection() {
    let (server, recorder) = panicking_embedded("on_read_completed").await;
    let mut stream = server.accept(peer_addr(1)).await.unwrap();
    stream.send(b"boom").unwrap();
    recorder.wait_released(1).await;
    let id = recorder.established()[0];
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    assert_eq!(closure_reason(&events), Some(ClosureReason::CallbackPanic));
    assert!(events.contains(&Event::Read(id, 4)));
    // The panicking callback did not echo.
    assert!(!events.iter().any(|e| matches!(e, Event::Written(..))));

    let errors = errors(&recorder);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0],
        format!(
            "callback on_read_completed panicked on connection {id}: test panic in on_read_completed"
        )
    );
    // on_error comes before the connection's closing events.
    let all = recorder.events();
    let error_at = all
        .iter()
        .position(|e| matches!(e, Event::Error(_)))
        .unwrap();
    let closure_at = all
        .iter()
        .position(|e| matches!(e, Event::Closure(..)))
        .unwrap();
    assert!(error_at < closure_at);

    // The connection was reset.
    let read = stream.read().await;
    assert_eq!(
        read.expect_err("a panic resets the connection").kind(),
        std::io::ErrorKind::ConnectionReset
    );

    let stats = server.stats();
    assert_eq!(stats.callback_panics, 1);
    assert_eq!(stats.closures(ClosureReason::CallbackPanic), 1);
    eventually("no active connection", || server.active_connections() == 0).await;
    assert_eq!(server.limiter().active(), 0);

    assert_still_serving_embedded(&server, &recorder).await;
    assert_eq!(server.stats().callback_panics, 1);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn error_reported_for_a_panic_is_a_callback_panic_value() {
    // A custom on_error that checks the variant itself, not only its message.
    #[derive(Default)]
    struct Checker {
        seen: Mutex<Vec<(&'static str, Option<u64>, String)>>,
        released: AtomicUsize,
    }
    struct Panicky(Arc<Checker>);
    #[async_trait]
    impl Callbacks for Panicky {
        async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
            connection.read();
        }
        async fn on_read_completed(&self, _: &Connection, _: BytesMut) {
            panic!("custom payload {}", 42);
        }
        async fn on_socket_released(&self, _: UserData) {
            self.0.released.fetch_add(1, Ordering::SeqCst);
        }
        async fn on_error(&self, error: &Error) {
            if let Error::CallbackPanic {
                callback,
                connection,
                message,
            } = error
            {
                self.0.seen.lock().unwrap().push((
                    callback,
                    connection.map(|id| id.get()),
                    message.clone(),
                ));
            }
        }
    }
    let checker = Arc::new(Checker::default());
    let server = Server::builder()
        .embedded()
        .start(Panicky(checker.clone()))
        .await
        .unwrap();
    let stream = server.accept(peer_addr(1)).await.unwrap();
    stream.send(b"x").unwrap();
    eventually("release", || checker.released.load(Ordering::SeqCst) == 1).await;
    let seen = checker.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "on_read_completed");
    assert_eq!(seen[0].1, Some(1), "the first connection's id");
    assert_eq!(seen[0].2, "custom payload 42");
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn panic_in_on_connection_established_still_runs_the_closing_events() {
    let (server, recorder) = panicking_embedded("on_connection_established").await;
    let mut stream = server.accept(peer_addr(1)).await.unwrap();
    recorder.wait_released(1).await;
    let id = recorder.established()[0];
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    assert_eq!(events.len(), 4, "{events:#?}");
    assert_eq!(closure_reason(&events), Some(ClosureReason::CallbackPanic));
    let errors = errors(&recorder);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("on_connection_established"));
    assert!(errors[0].contains(&format!("connection {id}")));
    until_peer_ended(&mut stream).await;
    assert_eq!(server.stats().callback_panics, 1);
    eventually("no active connection", || server.active_connections() == 0).await;
    assert_still_serving_embedded(&server, &recorder).await;
    server.shutdown().await;
}

#[tokio::test]
async fn panic_in_on_socket_created_drops_the_socket_and_the_server_goes_on() {
    let (server, recorder) = panicking_server("on_socket_created").await;
    let mut stream = client(server.local_addr().unwrap()).await;
    recorder
        .wait_count("error", 1, |e| matches!(e, Event::Error(_)))
        .await;
    until_ended(&mut stream).await;
    let events = recorder.events();
    assert_eq!(
        events
            .iter()
            .filter(|e| !matches!(e, Event::StartAccepting))
            .cloned()
            .collect::<Vec<_>>(),
        vec![
            Event::SocketCreated(Direction::Inbound),
            Event::Error(
                "callback on_socket_created panicked: test panic in on_socket_created".into()
            ),
        ]
    );
    let stats = server.stats();
    assert_eq!(stats.callback_panics, 1);
    assert_eq!(stats.accepted, 0);
    assert_eq!(server.active_connections(), 0);
    assert_eq!(server.limiter().active(), 0);
    assert_still_serving(&server, &recorder).await;
    assert_eq!(server.stats().accepted, 1);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn panic_in_on_connection_closure_still_releases() {
    let (server, recorder) = panicking_embedded("on_connection_closure").await;
    let mut stream = server.accept(peer_addr(1)).await.unwrap();
    echo_peer(&mut stream, b"hi").await;
    stream.shutdown_write();
    until_peer_ended(&mut stream).await;
    recorder.wait_released(1).await;
    let id = recorder.established()[0];
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    // The connection had already ended gracefully when the closure callback panicked.
    assert_eq!(closure_reason(&events), Some(ClosureReason::PeerClosed));
    let all = recorder.events();
    let closure = all.iter().position(|e| matches!(e, Event::Closure(..)));
    let error = all.iter().position(|e| matches!(e, Event::Error(_)));
    let closed = all.iter().position(|e| matches!(e, Event::Closed(..)));
    assert!(closure < error && error < closed, "{all:#?}");
    assert!(errors(&recorder)[0].contains("on_connection_closure"));
    assert_eq!(server.stats().callback_panics, 1);
    eventually("no active connection", || server.active_connections() == 0).await;
    assert_still_serving_embedded(&server, &recorder).await;
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn panic_in_on_write_completed_aborts_the_connection() {
    let (server, recorder) = panicking_embedded("on_write_completed").await;
    let mut stream = server.accept(peer_addr(1)).await.unwrap();
    stream.send(b"data").unwrap();
    recorder.wait_released(1).await;
    let id = recorder.established()[0];
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    assert_eq!(closure_reason(&events), Some(ClosureReason::CallbackPanic));
    assert!(errors(&recorder)[0].contains("on_write_completed"));
    until_peer_ended(&mut stream).await;
    assert_eq!(server.stats().callback_panics, 1);
    assert_still_serving_embedded(&server, &recorder).await;
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn panic_in_on_pre_outgoing_connect_fails_the_connect_and_still_releases() {
    let address = peer_addr(9);
    let mut builder = Server::builder();
    let recorder = Recorder::with_behavior(
        &mut builder,
        Behavior {
            panic_in: Some("on_pre_outgoing_connect"),
            ..Behavior::default()
        },
    );
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    match server.connect(address).argument("arg".to_string()).await {
        Err(Error::CallbackPanic {
            callback,
            connection,
            ..
        }) => {
            assert_eq!(callback, "on_pre_outgoing_connect");
            assert_eq!(connection, None);
        }
        other => panic!("expected Error::CallbackPanic, got {other:?}"),
    }
    let events = recorder.events();
    assert_eq!(events.len(), 3, "{events:#?}");
    assert_eq!(
        events[0],
        Event::PreOutgoingConnect(address, Some("arg".into()))
    );
    assert!(matches!(&events[1], Event::Error(m) if m.contains("on_pre_outgoing_connect")));
    // No socket was created; the argument stored before the panic reaches the release.
    assert_eq!(events[2], Event::Released(None, Some("arg".into())));
    let stats = server.stats();
    assert_eq!(stats.callback_panics, 1);
    assert_eq!(stats.connect_failures, 1);
    assert_eq!(server.active_connections(), 0);
    assert_eq!(server.limiter().active(), 0);

    // The manager goes on connecting.
    recorder.set_behavior(|b| b.panic_in = None);
    let (connection, peer) = server.connect(address).await.unwrap();
    assert_eq!(connection.direction(), Direction::Outbound);
    drop(peer);
    drop(connection);
    recorder.wait_released(2).await;
    server.shutdown().await;
}

#[tokio::test]
async fn panic_in_outgoing_on_socket_created_fails_the_connect() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut builder = Server::builder();
    let recorder = Recorder::with_behavior(
        &mut builder,
        Behavior {
            panic_in: Some("on_socket_created"),
            ..Behavior::default()
        },
    );
    let server = builder.start(recorder.clone()).await.unwrap();
    server
        .connect(address)
        .argument("arg".to_string())
        .spawn()
        .unwrap();
    recorder.wait_released(1).await;
    let events = recorder.events();
    assert_eq!(events.len(), 5, "{events:#?}");
    assert_eq!(events[1], Event::SocketCreated(Direction::Outbound));
    assert!(matches!(&events[2], Event::Error(m) if m.contains("on_socket_created")));
    assert!(
        matches!(&events[3], Event::OutgoingFailed(a, m, Some(arg)) if *a == address && m.contains("on_socket_created") && arg == "arg")
    );
    assert_eq!(events[4], Event::Released(None, Some("arg".into())));
    assert_eq!(server.stats().callback_panics, 1);
    assert_eq!(server.limiter().active(), 0);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Invalid settings and bind failures.

#[tokio::test]
async fn invalid_settings_are_refused_naming_the_setting() {
    struct Nothing;
    impl Callbacks for Nothing {}
    let cases = [
        ("read_buffer_size", Server::builder().read_buffer_size(0)),
        ("write_queue_limit", Server::builder().write_queue_limit(0)),
        ("backlog", Server::builder().backlog(0)),
    ];
    for (name, builder) in cases {
        match builder.bind("127.0.0.1:0").start(Nothing).await {
            Err(Error::InvalidSetting { setting, reason }) => {
                assert_eq!(setting, name);
                assert!(!reason.is_empty());
            }
            other => panic!("{name}: expected InvalidSetting, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn bind_failures_are_reported() {
    struct Nothing;
    impl Callbacks for Nothing {}
    let first = Server::builder()
        .bind("127.0.0.1:0")
        .reuse_address(false)
        .start(Nothing)
        .await
        .unwrap();
    let address = first.local_addr().unwrap();
    match Server::builder()
        .bind(address)
        .reuse_address(false)
        .start(Nothing)
        .await
    {
        Err(Error::Bind {
            address: failed,
            source,
        }) => {
            assert_eq!(failed, address.to_string());
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
        }
        other => panic!("expected Error::Bind, got {other:?}"),
    }
    // `.invalid` is reserved and never resolves; a missing port fails without any lookup.
    for name in ["no-such-host.invalid:80", "127.0.0.1"] {
        match Server::builder().bind(name).start(Nothing).await {
            Err(error @ Error::Bind { .. }) => assert!(error.io_error().is_some()),
            other => panic!("{name}: expected Error::Bind, got {other:?}"),
        }
    }
    first.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Write errors.

/// A server whose recorder keeps handles and does not read, on the embedded connection
/// (`switchboard::testing`); returns the server side's handle and the peer, whose
/// [`EmbeddedPeer::shutdown_server_write`] shuts the server's write side behind the driver's
/// back (as `shutdown(SHUT_WR)` on a duplicate of its socket would).
async fn held_embedded(
    errors_not_fatal: bool,
) -> (EmbeddedServer, Recorder, Connection, EmbeddedPeer) {
    let mut builder = Server::builder();
    let recorder = Recorder::with_behavior(
        &mut builder,
        Behavior {
            echo: false,
            keep_handles: true,
            errors_not_fatal,
            ..Behavior::default()
        },
    );
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let peer = server.accept(peer_addr(1)).await.unwrap();
    recorder
        .wait_count("established", 1, |e| matches!(e, Event::Established(..)))
        .await;
    let handle = recorder.take_handles().pop().unwrap();
    (server, recorder, handle, peer)
}

#[tokio::test(start_paused = true)]
async fn write_error_ends_the_connection_by_default() {
    let (server, recorder, handle, mut stream) = held_embedded(false).await;
    let id = handle.id();
    // Shut the server's write side behind the driver's back: the next write fails with EPIPE.
    stream.shutdown_server_write();
    handle.write(&b"doomed"[..]).unwrap();
    recorder.wait_released(1).await;
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    let may = events
        .iter()
        .position(|e| *e == Event::WriteErrorMayNotBeFatal(id))
        .expect("on_write_error_may_not_be_fatal");
    let fatal = events
        .iter()
        .position(|e| *e == Event::WriteCompletionError(id))
        .expect("on_write_completion_error");
    assert!(may < fatal);
    assert_eq!(closure_reason(&events), Some(ClosureReason::WriteError));
    assert!(!events.iter().any(|e| matches!(e, Event::Written(..))));
    assert!(handle.is_closing());
    assert!(matches!(
        handle.write(&b"more"[..]).map_err(Error::from),
        Err(Error::ConnectionClosed)
    ));
    until_peer_ended(&mut stream).await;
    assert_eq!(server.stats().closures(ClosureReason::WriteError), 1);
    drop(handle);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn write_error_may_be_survived() {
    let (server, recorder, handle, mut stream) = held_embedded(true).await;
    let id = handle.id();
    stream.shutdown_server_write();
    handle.write(&b"lost"[..]).unwrap();
    recorder
        .wait_count("write error", 1, |e| {
            *e == Event::WriteErrorMayNotBeFatal(id)
        })
        .await;
    eventually("unsent data dropped", || handle.queued_write_bytes() == 0).await;
    assert!(!handle.is_closing());
    // The connection is alive: it still reads.
    handle.read();
    stream.send(b"ping").unwrap();
    recorder
        .wait_count("read after the write error", 1, |e| {
            *e == Event::Read(id, 4)
        })
        .await;
    let events = recorder.events_of(id);
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::WriteCompletionError(_) | Event::Closure(..))));
    // The client saw our FIN (the shut-down write side) and no data.
    let (received, end) = peer_read_to_end(&mut stream).await;
    end.unwrap();
    assert!(received.is_empty());
    drop(stream);
    drop(handle);
    recorder.wait_released(1).await;
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    // No read was pending when the client left, so the lifetime rule closed it.
    assert_eq!(closure_reason(&events), Some(ClosureReason::Unreferenced));
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Guarantee 10 (docs/guarantees.md): bounded memory against a peer that does not read.

const LIMIT: usize = 64 * 1024;

#[tokio::test(start_paused = true)]
async fn writes_to_a_peer_that_never_reads_stop_at_the_queue_limit() {
    let mut builder = Server::builder().write_queue_limit(LIMIT);
    let recorder = Recorder::with_behavior(
        &mut builder,
        Behavior {
            echo: false,
            keep_handles: true,
            ..Behavior::default()
        },
    );
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let mut stream = server.accept(peer_addr(1)).await.unwrap();
    // A small receive window, as a socket's buffers would be.
    stream.set_receive_window(32 * 1024);
    recorder
        .wait_count("established", 1, |e| matches!(e, Event::Established(..)))
        .await;
    let handle = recorder.take_handles().pop().unwrap();

    const CHUNK: usize = 16 * 1024;
    let chunk = switchboard::Bytes::from(vec![7u8; CHUNK]);
    let mut accepted = 0usize;
    let mut refusals = 0;
    let deadline = Instant::now() + WAIT;
    // Write until the queue is full and nothing more moves to the peer (its window is full too,
    // since it does not read).
    loop {
        assert!(Instant::now() < deadline, "the write queue never filled");
        match handle.write(chunk.clone()).map_err(Error::from) {
            Ok(()) => {
                accepted += CHUNK;
                let queued = handle.queued_write_bytes();
                assert!(queued <= LIMIT + CHUNK + 64, "queue grew to {queued}");
                // Let the driver hand what it can to the peer.
                tokio::task::yield_now().await;
                continue;
            }
            Err(Error::WriteQueueFull { queued, limit }) => {
                refusals += 1;
                assert_eq!(limit, LIMIT);
                assert!((LIMIT..=LIMIT + CHUNK + 64).contains(&queued), "{queued}");
            }
            Err(other) => panic!("expected WriteQueueFull, got {other:?}"),
        }
        let written = handle.stats().bytes_written;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if handle.stats().bytes_written == written && handle.queued_write_bytes() >= LIMIT {
            break;
        }
    }
    assert!(refusals > 0);
    // What is queued counts its bytes and 64 for each buffer they are in (whole chunks, and
    // one partly written).
    let unsent = accepted - handle.stats().bytes_written as usize;
    assert_eq!(
        handle.queued_write_bytes(),
        unsent + 64 * unsent.div_ceil(CHUNK)
    );
    // The peer still does not read: the queue stays bounded and writes stay refused.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let queued = handle.queued_write_bytes();
        assert!(queued <= LIMIT + CHUNK + 64, "queue grew to {queued}");
        assert!(matches!(
            handle.write(chunk.clone()).map_err(Error::from),
            Err(Error::WriteQueueFull { .. })
        ));
    }
    assert!(!handle.is_closing());

    // Once the peer reads, everything that was taken arrives and the queue empties.
    let received = stream
        .read_exact(accepted)
        .await
        .expect("the queued data did not arrive");
    assert!(received.iter().all(|&b| b == 7));
    eventually("queue drained", || handle.queued_write_bytes() == 0).await;
    handle.write(chunk.clone()).expect("writes are taken again");
    drop(handle);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn echo_to_a_peer_that_never_reads_pauses_reading_and_resumes() {
    let mut builder = Server::builder().write_queue_limit(LIMIT);
    let recorder = Recorder::with_behavior(
        &mut builder,
        Behavior {
            keep_handles: true,
            ..Behavior::default()
        },
    );
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let mut reader = server.accept(peer_addr(1)).await.unwrap();
    // Small windows both ways, as small socket buffers would be, so the stall comes soon.
    reader.set_receive_window(16 * 1024);
    reader.set_send_window(16 * 1024);
    recorder
        .wait_count("established", 1, |e| matches!(e, Event::Established(..)))
        .await;
    let handle = recorder.take_handles().pop().unwrap();
    let writer = reader.sender();

    // The client sends far more than every buffer on the way can hold, and does not read.
    const TOTAL: usize = 16 * 1024 * 1024;
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let block = vec![0x5au8; 64 * 1024];
            while sent.load(Ordering::SeqCst) < TOTAL {
                writer.send_all(&block).await.unwrap();
                sent.fetch_add(block.len(), Ordering::SeqCst);
            }
            writer
        })
    };

    // Wait until the client's sending stalls: the server has stopped reading.
    let deadline = Instant::now() + WAIT;
    let mut last = usize::MAX;
    let mut steady = 0;
    while steady < 5 {
        assert!(Instant::now() < deadline, "the sender never stalled");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = sent.load(Ordering::SeqCst);
        steady = if now == last { steady + 1 } else { 0 };
        last = now;
    }
    assert!(last < TOTAL, "everything was sent without the peer reading");
    // Server memory for the connection is bounded by the queue limit plus one read buffer.
    // The default read buffer size, as `ServerBuilder::read_buffer_size` documents.
    let bound = LIMIT + 8 * 1024;
    for _ in 0..10 {
        let queued = handle.queued_write_bytes();
        assert!(queued <= bound, "queue grew to {queued}");
        let stats = handle.stats();
        let held = (stats.bytes_read - stats.bytes_written) as usize;
        assert!(held <= bound, "server holds {held} bytes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The client starts reading: the echo resumes and every byte comes back.
    let mut echoed = 0usize;
    while echoed < TOTAL {
        let data = reader.read().await.expect("the echo did not resume");
        assert!(!data.is_empty(), "the server closed early");
        assert!(data.iter().all(|&b| b == 0x5a));
        echoed += data.len();
    }
    assert_eq!(echoed, TOTAL);
    let writer = tokio::time::timeout(WAIT, sender)
        .await
        .expect("the sender did not finish")
        .unwrap();
    let stats = handle.stats();
    assert_eq!(stats.bytes_read, TOTAL as u64);
    assert_eq!(stats.bytes_written, TOTAL as u64);
    drop(writer);
    drop(reader);
    drop(handle);
    recorder.wait_released(1).await;
    let id = recorder.established()[0];
    assert_lifecycle(&recorder.events_of(id));
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Guarantee 8 (docs/guarantees.md): accept errors under descriptor exhaustion. The server runs
// in a child process (this test binary, re-executed under `ulimit -n`), which prints its events
// on stdout.
//
// The child holds every descriptor it can get while its server starts, so the accept loop has no
// spare descriptor (src/reserve.rs) and cannot refuse pending clients either: this test sees the
// backoff path. tests/peer_limits.rs has the spare's prompt refusals.
// Linux only: the child runs under `ulimit -n` and its CPU time is read from /proc.

/// Clients the parent opens while the child has no descriptor to accept them into.
#[cfg(target_os = "linux")]
const EMFILE_CLIENTS: usize = 20;

/// The server half of `accept_errors_back_off_without_spinning_and_recover`; runs only when
/// re-executed by it.
#[cfg(target_os = "linux")]
#[tokio::test]
#[ignore = "runs only as the child of accept_errors_back_off_without_spinning_and_recover"]
async fn emfile_child() {
    run_child_server(Descriptors::Hoard).await;
}

#[cfg(target_os = "linux")]
#[test]
fn accept_errors_back_off_without_spinning_and_recover() {
    let mut child = ChildServer::start("emfile_child");
    let pid = child.pid();
    let log = child.log.clone();
    let address = child.address;

    // The kernel completes every handshake (the backlog is 1024); the child cannot accept any.
    let mut clients: Vec<std::net::TcpStream> = (0..EMFILE_CLIENTS)
        .map(|_| std::net::TcpStream::connect_timeout(&address, WAIT).expect("connect"))
        .collect();
    log.wait("an accept error", |log| {
        log.lines().iter().any(|l| l.starts_with("accept_error "))
    });
    for line in log.lines() {
        if let Some(errno) = line.strip_prefix("accept_error ") {
            assert_eq!(errno, "24", "EMFILE expected: {line}");
        }
    }

    // Out of descriptors, the child backs off instead of spinning.
    std::thread::sleep(Duration::from_millis(300));
    let errors_before = log.stats().accept_errors;
    let ticks_before = cpu_ticks(pid);
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let ticks = cpu_ticks(pid) - ticks_before;
    let elapsed = window.elapsed();
    let errors = log.stats().accept_errors - errors_before;
    let reports = log
        .lines()
        .iter()
        .filter(|l| l.starts_with("accept_error "))
        .count();
    eprintln!(
        "out of descriptors for {elapsed:?}: {ticks} CPU ticks, {errors} failed accepts, \
         {reports} reported so far"
    );
    // A spinning accept loop would be near one full core.
    let core_share = core_share(ticks, elapsed);
    assert!(
        core_share < 0.3,
        "the child used {core_share:.2} of a core while out of descriptors"
    );
    assert!(
        errors < 20,
        "{errors} failed accepts in about a second: no backoff"
    );
    assert!(
        reports < 40,
        "{reports} accept errors reported: not rate limited"
    );

    // Nobody was accepted, and with no spare descriptor nobody was refused either: the clients
    // wait in the backlog.
    assert_eq!(log.count("established"), 0);
    for stream in &mut clients {
        stream.write_all(b"a").unwrap();
        stream.set_nonblocking(true).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    for stream in &mut clients {
        let mut byte = [0u8; 1];
        let read = stream.read(&mut byte);
        assert!(
            matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a waiting client was served or refused: {read:?}"
        );
    }

    // Free the descriptors: every waiting client is accepted and echoed; the server recovered.
    child.free_descriptors();
    log.wait("the descriptors freed", |log| {
        log.lines().iter().any(|l| l == "freed")
    });
    for stream in &mut clients {
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .expect("a waiting client was not served after descriptors freed up");
        assert_eq!(&byte, b"a");
        stream.write_all(b"again").unwrap();
        let mut reply = [0u8; 5];
        stream.read_exact(&mut reply).expect("echo after recovery");
        assert_eq!(&reply, b"again");
    }
    assert_eq!(log.count("established"), EMFILE_CLIENTS);
    for stream in &clients {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    drop(clients);
    drop(child);
}
