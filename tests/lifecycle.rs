//! Guarantees 1–4 and 10 (docs/guarantees.md), per connection, over real loopback TCP (and, where
//! the socket is not the point, over the embedded connection of `switchboard::testing`): the event
//! order on every path (peer close, peer reset, local close and abort, the lifetime rule), the
//! lifetime rule itself, half-close both ways, `close()` losing nothing and `abort()` dropping the
//! queue, `write()`'s errors, user data, `on_socket_created`, `on_write_completed` and the stats,
//! bounded reads, and a thousand echo connections with every byte checked.

mod common;

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use switchboard::socket2::TcpKeepalive;
use switchboard::testing::EmbeddedPeer;
use switchboard::{Bytes, ClosureReason, Connection, ConnectionId, Direction, Error, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const LOCAL: &str = "127.0.0.1:0";
/// The peer of embedded connections.
const PEER: std::net::SocketAddr = std::net::SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
    40000,
);
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// How long to watch for something that must *not* happen (a closure, a delivery). Never used to
/// wait for something that must happen, so a loaded machine cannot make a test fail spuriously.
const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// Harness: the shared `Recorder` (with `Hooks` where a test needs them).

/// A recorder that does not read but keeps every connection's handle for the test.
fn held() -> Behavior {
    Behavior {
        keep_handles: true,
        ..Behavior::quiet()
    }
}

/// The handle the recorder kept (`keep_handles`) for the next established connection.
async fn kept_handle(recorder: &Recorder) -> Connection {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(handle) = recorder.take_handles().pop() {
            return handle;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no connection was established; events: {:#?}",
            recorder.events()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn lengths_written(events: &[Event]) -> Vec<usize> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Written(_, n) => Some(*n),
            _ => None,
        })
        .collect()
}

fn lengths_read(events: &[Event]) -> Vec<usize> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Read(_, n) => Some(*n),
            _ => None,
        })
        .collect()
}

fn has_client_close_or_reset(events: &[Event]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::ClientClose(_) | Event::Reset(_)))
}

/// [`read_to_end`] for an embedded peer: the bytes, and how the stream ended.
async fn read_to_end_embedded(peer: &mut EmbeddedPeer) -> (Vec<u8>, io::Result<()>) {
    match peer.read_to_end().await {
        Ok(data) => (data.to_vec(), Ok(())),
        Err(error) => (Vec::new(), Err(error)),
    }
}

/// Reads until the stream fails or ends, bounded by [`WAIT`]; returns the bytes and the error
/// (`None` for a clean EOF).
async fn read_until_error(stream: &mut TcpStream) -> (Vec<u8>, Option<io::Error>) {
    let mut data = Vec::new();
    let mut buffer = vec![0u8; 256 * KIB];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buffer))
            .await
            .expect("the stream neither ended nor failed")
        {
            Ok(0) => return (data, None),
            Ok(n) => data.extend_from_slice(&buffer[..n]),
            Err(error) => return (data, Some(error)),
        }
    }
}

/// Waits until the server stops handing data on (the socket, or an embedded peer's window, is
/// full because the client does not read); returns the bytes handed over so far.
async fn wait_for_stall(handle: &Connection) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = u64::MAX;
    let mut steady = 0;
    while steady < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server's writes never stalled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = handle.stats().bytes_written;
        steady = if now == last && now > 0 {
            steady + 1
        } else {
            0
        };
        last = now;
    }
    last
}

// ---------------------------------------------------------------------------------------------
// Guarantee 1 (docs/guarantees.md): event order on every per-connection path.

// Where the socket is not the point, over the embedded connection (`switchboard::testing`): the
// same driver and lifecycle, with memory for the socket and tokio's paused clock.

#[tokio::test(start_paused = true)]
async fn echo_then_peer_close_runs_every_event_in_order() {
    let mut builder = Server::builder();
    let recorder = Recorder::new(&mut builder);
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let mut peer = server.accept(PEER).await.unwrap();
    peer.send(b"hello").unwrap();
    assert_eq!(peer.read_exact(5).await.unwrap(), "hello");
    peer.shutdown_write();
    assert!(peer.read_to_end().await.unwrap().is_empty());
    recorder.wait_released(1).await;
    let id = recorder.established()[0];
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    assert_eq!(closure_reason(&events), Some(ClosureReason::PeerClosed));
    assert!(events.contains(&Event::ClientClose(id)));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_reset_reports_the_error_then_closes_with_peer_reset() {
    if skip_under_wine(&WINE_RESET_READ_AS_EOF) {
        return;
    }
    let mut builder = Server::builder().bind(LOCAL);
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    let mut stream = client(server.local_addr().unwrap()).await;
    assert_eq!(echo_round_trip(&mut stream, b"before").await, b"before");
    let id = recorder.established()[0];

    // SO_LINGER 0 and close: the server's pending read sees RST, not FIN.
    reset(stream);
    recorder.wait_released(1).await;
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    assert_eq!(closure_reason(&events), Some(ClosureReason::PeerReset));
    assert_eq!(
        events.iter().filter(|e| **e == Event::Reset(id)).count(),
        1,
        "{events:#?}"
    );
    assert!(!events.contains(&Event::ClientClose(id)), "{events:#?}");
    let reset_at = events.iter().position(|e| *e == Event::Reset(id)).unwrap();
    let closure_at = events
        .iter()
        .position(|e| matches!(e, Event::Closure(..)))
        .unwrap();
    assert!(reset_at < closure_at, "{events:#?}");
    // The error handed to on_connection_reset is the reset itself.
    assert_eq!(
        recorder.resets(),
        vec![(id, io::ErrorKind::ConnectionReset)]
    );
    let stats = server.stats();
    assert_eq!(stats.closures(ClosureReason::PeerReset), 1);
    assert_eq!(stats.total_closures(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_reset_seen_by_a_pending_write_closes_with_peer_reset() {
    let mut builder = Server::builder().bind(LOCAL).write_queue_limit(64 * MIB);
    let recorder = Recorder::with_behavior(&mut builder, held());
    let server = builder.start(recorder.clone()).await.unwrap();
    let stream = client(server.local_addr().unwrap()).await;
    let handle = kept_handle(&recorder).await;
    let id = handle.id();

    // No read is pending: only the write can notice the reset.
    handle.write(vec![0x33u8; 32 * MIB]).unwrap();
    wait_for_stall(&handle).await;
    assert!(handle.queued_write_bytes() > 0);
    reset(stream);

    recorder.wait_released(1).await;
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    assert_eq!(closure_reason(&events), Some(ClosureReason::PeerReset));
    assert!(events.contains(&Event::Reset(id)), "{events:#?}");
    assert!(!events.contains(&Event::ClientClose(id)), "{events:#?}");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::WriteCompletionError(_) | Event::Written(..))),
        "a reset is not a write error and the unsent buffer is not completed: {events:#?}"
    );
    assert_eq!(
        recorder.resets(),
        vec![(id, io::ErrorKind::ConnectionReset)]
    );
    assert_eq!(handle.queued_write_bytes(), 0, "the queue is dropped");
    assert!(matches!(
        handle.write(&b"late"[..]).map_err(Error::from),
        Err(Error::ConnectionClosed)
    ));
    drop(handle);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Guarantee 4 (docs/guarantees.md): close() loses no queued data; abort() sends RST and drops
// the queue.

#[tokio::test(start_paused = true)]
async fn close_delivers_every_queued_byte_before_the_fin() {
    let mut builder = Server::builder().write_queue_limit(2 * MIB);
    let recorder = Recorder::with_behavior(&mut builder, held());
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let mut stream = server.accept(PEER).await.unwrap();
    let handle = kept_handle(&recorder).await;
    let id = handle.id();

    let data = pattern(1, MIB);
    const CHUNK: usize = 64 * KIB;
    for chunk in data.chunks(CHUNK) {
        handle.write(Bytes::copy_from_slice(chunk)).unwrap();
    }
    // This runtime has one thread and the test has not yielded: all of it is still queued (its
    // bytes, and 64 for each buffer).
    assert_eq!(handle.queued_write_bytes(), MIB + MIB / CHUNK * 64);
    handle.close();
    drop(handle);

    let (received, end) = read_to_end_embedded(&mut stream).await;
    end.expect("a graceful close ends with FIN, not RST");
    assert_eq!(received.len(), MIB);
    assert!(received == data, "the data arrived altered or out of order");
    drop(stream);

    recorder.wait_released(1).await;
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    assert_eq!(closure_reason(&events), Some(ClosureReason::LocalClose));
    assert!(!has_client_close_or_reset(&events), "{events:#?}");
    assert_eq!(lengths_written(&events), vec![CHUNK; MIB / CHUNK]);
    let stats = server.stats();
    assert_eq!(stats.bytes_written, MIB as u64);
    assert_eq!(stats.closures(ClosureReason::LocalClose), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn abort_resets_the_peer_and_drops_the_queue() {
    if skip_under_wine(&WINE_RESET_READ_AS_EOF) {
        return;
    }
    let mut builder = Server::builder().bind(LOCAL).write_queue_limit(64 * MIB);
    let recorder = Recorder::with_behavior(&mut builder, held());
    let server = builder.start(recorder.clone()).await.unwrap();
    let mut stream = client(server.local_addr().unwrap()).await;
    let handle = kept_handle(&recorder).await;
    let id = handle.id();

    // Far more than the kernel buffers hold while the client does not read.
    const TOTAL: usize = 32 * MIB;
    const CHUNK: usize = MIB;
    let data = pattern(2, TOTAL);
    for chunk in data.chunks(CHUNK) {
        handle.write(Bytes::copy_from_slice(chunk)).unwrap();
    }
    let handed_over = wait_for_stall(&handle).await;
    assert!(handle.queued_write_bytes() > 0);
    handle.abort();
    assert!(handle.is_closing());
    assert!(matches!(
        handle.write(&b"after abort"[..]).map_err(Error::from),
        Err(Error::ConnectionClosed)
    ));

    let (received, error) = read_until_error(&mut stream).await;
    let error = error.expect("an abort ends with RST, not a clean EOF");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
    assert!(
        received.len() < TOTAL,
        "all {TOTAL} bytes arrived: the queue was not dropped"
    );
    assert!(received.len() as u64 <= handed_over);
    assert!(
        received == data[..received.len()],
        "what did arrive is not a prefix of what was written"
    );

    recorder.wait_released(1).await;
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    assert_eq!(closure_reason(&events), Some(ClosureReason::LocalAbort));
    assert!(!has_client_close_or_reset(&events), "{events:#?}");
    // Buffers that never reached the kernel are not reported as written.
    assert!(
        lengths_written(&events).len() < TOTAL / CHUNK,
        "{events:#?}"
    );
    assert_eq!(handle.queued_write_bytes(), 0);
    let stats = server.stats();
    assert!(stats.bytes_written < TOTAL as u64);
    assert_eq!(stats.closures(ClosureReason::LocalAbort), 1);
    drop(handle);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn abort_cuts_short_a_close_in_progress_and_ends_once() {
    let mut builder = Server::builder()
        .write_queue_limit(64 * MIB)
        .close_timeout(Duration::from_secs(60));
    let recorder = Recorder::with_behavior(&mut builder, held());
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let mut stream = server.accept(PEER).await.unwrap();
    // A small receive window, as a socket's buffers would be.
    stream.set_receive_window(256 * KIB);
    let handle = kept_handle(&recorder).await;
    let id = handle.id();

    // A close that cannot finish: the client does not read what is queued.
    handle.write(vec![0x44u8; 32 * MIB]).unwrap();
    wait_for_stall(&handle).await;
    handle.close();
    handle.close();
    eventually("the close to begin", || handle.is_closing()).await;
    tokio::time::sleep(QUIET).await;
    recorder.assert_open(id, "while its close waits for the peer to read");

    handle.abort();
    handle.abort();
    handle.close();
    let (_, error) = read_to_end_embedded(&mut stream).await;
    let error = error.expect_err("the abort must reset the connection");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
    recorder.wait_released(1).await;
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    assert_eq!(closure_reason(&events), Some(ClosureReason::LocalAbort));
    assert_eq!(server.stats().total_closures(), 1);
    drop(handle);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Guarantee 2 (docs/guarantees.md): the lifetime rule.

#[tokio::test(start_paused = true)]
async fn a_connection_nothing_keeps_closes_by_itself_gracefully() {
    let mut builder = Server::builder();
    let recorder = Recorder::with_behavior(&mut builder, Behavior::quiet());
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let mut peer = server.accept(PEER).await.unwrap();

    // No read, no write, no handle: the server sends FIN at once, by itself.
    let received = peer
        .read_to_end()
        .await
        .expect("the lifetime rule closes gracefully (FIN), not with RST");
    assert!(received.is_empty());
    drop(peer);

    recorder.wait_released(1).await;
    let id = recorder.established()[0];
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    assert_eq!(closure_reason(&events), Some(ClosureReason::Unreferenced));
    assert!(!has_client_close_or_reset(&events), "{events:#?}");
    assert_eq!(server.stats().closures(ClosureReason::Unreferenced), 1);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_pending_read_keeps_an_idle_connection_open() {
    let mut builder = Server::builder();
    let recorder = Recorder::new(&mut builder);
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let mut peer = server.accept(PEER).await.unwrap();
    recorder
        .wait_count("established", 1, |e| matches!(e, Event::Established(..)))
        .await;
    let id = recorder.established()[0];

    tokio::time::sleep(QUIET).await;
    recorder.assert_open(id, "with a read pending");
    peer.send(b"still there").unwrap();
    assert_eq!(peer.read_exact(11).await.unwrap(), "still there");
    assert_eq!(server.active_connections(), 1);

    peer.shutdown_write();
    peer.read_to_end().await.unwrap();
    recorder.wait_released(1).await;
    assert_lifecycle(&recorder.events_of(id));
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_held_handle_keeps_a_connection_open_and_dropping_it_closes() {
    let mut builder = Server::builder();
    let recorder = Recorder::with_behavior(&mut builder, held());
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let mut stream = server.accept(PEER).await.unwrap();
    let handle = kept_handle(&recorder).await;
    let id = handle.id();

    // No read and no write: only the handle keeps it open.
    tokio::time::sleep(QUIET).await;
    recorder.assert_open(id, "while only a handle held it");
    assert!(!handle.is_closing());
    stream.set_wait_limit(Duration::from_millis(50));
    let probe = stream.read().await;
    stream.set_wait_limit(WAIT);
    assert!(
        matches!(&probe, Err(error) if error.kind() == io::ErrorKind::TimedOut),
        "the client saw the connection end while a handle was held"
    );

    // A round trip through the handle.
    stream.send(b"ping").unwrap();
    handle.read();
    recorder
        .wait_count("the read", 1, |e| matches!(e, Event::Read(..)))
        .await;
    assert_eq!(recorder.received(id), b"ping");
    handle.write(&b"pong"[..]).unwrap();
    let reply = stream.read_exact(4).await.expect("no reply");
    assert_eq!(reply, "pong");
    recorder
        .wait_count("the write", 1, |e| matches!(e, Event::Written(..)))
        .await;
    tokio::time::sleep(QUIET).await;
    recorder.assert_open(id, "while only a handle held it, after a write");

    // A clone of the clone counts the same; dropping every clone closes.
    let second = handle.clone();
    drop(handle);
    tokio::time::sleep(QUIET).await;
    recorder.assert_open(id, "with a clone of the handle left");
    drop(second);
    let (rest, end) = read_to_end_embedded(&mut stream).await;
    end.expect("graceful close");
    assert!(rest.is_empty());
    drop(stream);
    recorder.wait_released(1).await;
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    assert_eq!(closure_reason(&events), Some(ClosureReason::Unreferenced));
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_pending_write_keeps_the_connection_open_until_delivered() {
    const TOTAL: usize = 16 * MIB;
    const TRAILER: &[u8] = b"trailer";
    let data = Bytes::from(pattern(3, TOTAL));
    let trailer_written: Arc<Mutex<Option<Result<(), Error>>>> = Arc::default();
    let mut builder = Server::builder();
    let hooks = Hooks {
        // One write and nothing else: no read, no handle kept.
        established: Some(Box::new({
            let data = data.clone();
            move |connection| connection.write(data.clone()).unwrap()
        })),
        // When it completes, the connection is still open, not closing: a write chained from
        // on_write_completed is taken.
        written: Some(Box::new({
            let trailer_written = trailer_written.clone();
            move |connection, data| {
                if data.len() == TOTAL {
                    *trailer_written.lock().unwrap() =
                        Some(connection.write(TRAILER).map_err(Error::from));
                }
            }
        })),
        ..Hooks::default()
    };
    let recorder = Recorder::with_hooks(&mut builder, Behavior::quiet(), hooks);
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let mut stream = server.accept(PEER).await.unwrap();
    stream.set_receive_window(0);
    recorder
        .wait_count("established", 1, |e| matches!(e, Event::Established(..)))
        .await;
    let id = recorder.established()[0];

    // The client does not read: the write stays in flight and the connection open.
    tokio::time::sleep(QUIET).await;
    recorder.assert_open(id, "with a write in flight");
    assert!(server.stats().bytes_written < TOTAL as u64);
    assert_eq!(server.active_connections(), 1);

    stream.set_receive_window(EmbeddedPeer::DEFAULT_RECEIVE_WINDOW);
    let (received, end) = read_to_end_embedded(&mut stream).await;
    end.expect("graceful close after the write");
    let taken = trailer_written.lock().unwrap().take();
    assert!(
        matches!(taken, Some(Ok(()))),
        "a write from on_write_completed was refused: {taken:?}"
    );
    assert_eq!(received.len(), TOTAL + TRAILER.len());
    assert!(received[..TOTAL] == data, "the data arrived altered");
    assert_eq!(&received[TOTAL..], TRAILER);
    drop(stream);
    recorder.wait_released(1).await;
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    assert_eq!(closure_reason(&events), Some(ClosureReason::Unreferenced));
    assert_eq!(lengths_written(&events), vec![TOTAL, TRAILER.len()]);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Guarantee 3 (docs/guarantees.md): half-close, both ways.

#[tokio::test(start_paused = true)]
async fn after_the_peers_fin_writes_are_still_delivered() {
    const PART: usize = 100 * KIB;
    let first = pattern(4, 3 * PART);
    let second = pattern(5, 2 * PART);
    let mut builder = Server::builder().write_queue_limit(4 * MIB);
    let hooks = Hooks {
        // Written from on_connection_client_close itself, in three writes.
        client_close: Some(Box::new({
            let first = first.clone();
            move |connection| {
                for chunk in first.chunks(PART) {
                    connection.write(Bytes::copy_from_slice(chunk)).unwrap();
                }
            }
        })),
        ..Hooks::default()
    };
    let behavior = Behavior {
        keep_handles: true,
        ..Behavior::default()
    };
    let recorder = Recorder::with_hooks(&mut builder, behavior, hooks);
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let mut stream = server.accept(PEER).await.unwrap();
    let handle = kept_handle(&recorder).await;
    let id = handle.id();

    stream.send(b"request").unwrap();
    stream.shutdown_write();
    recorder
        .wait_count("client close", 1, |e| *e == Event::ClientClose(id))
        .await;
    // And from another task, through a handle, after the FIN was seen.
    for chunk in second.chunks(PART) {
        handle.write(Bytes::copy_from_slice(chunk)).unwrap();
    }
    drop(handle);

    let (received, end) = read_to_end_embedded(&mut stream).await;
    end.expect("graceful close");
    let mut expected = b"request".to_vec();
    expected.extend_from_slice(&first);
    expected.extend_from_slice(&second);
    assert_eq!(received.len(), expected.len());
    assert!(
        received == expected,
        "the data arrived altered or out of order"
    );
    drop(stream);

    recorder.wait_released(1).await;
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    assert_eq!(closure_reason(&events), Some(ClosureReason::PeerClosed));
    assert_eq!(
        events
            .iter()
            .filter(|e| **e == Event::ClientClose(id))
            .count(),
        1
    );
    assert!(!events.contains(&Event::Reset(id)));
    assert_eq!(
        lengths_written(&events).iter().sum::<usize>(),
        expected.len()
    );
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_write_sends_fin_and_reading_goes_on() {
    let mut builder = Server::builder();
    let recorder = Recorder::with_behavior(&mut builder, held());
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let mut stream = server.accept(PEER).await.unwrap();
    let handle = kept_handle(&recorder).await;
    let id = handle.id();

    handle.write(&b"last words"[..]).unwrap();
    handle.shutdown_write();
    let refused = handle.write(&b"more"[..]).map_err(Error::from);
    assert!(matches!(refused, Err(Error::WriteShutdown)), "{refused:?}");

    // The client gets what was queued, then EOF.
    let received = stream
        .read_to_end()
        .await
        .expect("a FIN after shutdown_write, not RST");
    assert_eq!(received, &b"last words"[..]);
    assert!(!handle.is_closing());

    // The client's direction is still open: the server reads everything it sends, in several
    // reads.
    let message = pattern(6, 40 * KIB);
    // In pieces, as a socket would deliver them.
    for piece in message.chunks(8 * KIB) {
        stream.send(piece).unwrap();
    }
    while recorder.received(id).len() < message.len() {
        let reads = recorder.count(|e| matches!(e, Event::Read(i, _) if *i == id));
        handle.read();
        recorder
            .wait_count(
                "a read after shutdown_write",
                reads + 1,
                |e| matches!(e, Event::Read(i, _) if *i == id),
            )
            .await;
    }
    assert!(recorder.received(id) == message, "the data arrived altered");
    recorder.assert_open(id, "after shutdown_write, with reads pending");

    // Then the client's FIN: with both directions shut, the connection ends although the handle
    // is still held.
    stream.shutdown_write();
    handle.read();
    recorder.wait_released(1).await;
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    assert_eq!(closure_reason(&events), Some(ClosureReason::PeerClosed));
    assert!(events.contains(&Event::ClientClose(id)));
    let refused = handle.write(&b"too late"[..]).map_err(Error::from);
    assert!(
        matches!(refused, Err(Error::ConnectionClosed)),
        "{refused:?}"
    );
    drop(handle);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// write()'s errors: each a clear error, never a panic.

/// `close()` takes effect in the handle at once, like `abort()` and `shutdown_write()`: a write
/// right after it is refused and not sent, even before the connection's task has run (this
/// runtime has one thread and the test does not yield in between).
#[tokio::test(start_paused = true)]
async fn write_right_after_close_is_refused_as_closed() {
    let mut builder = Server::builder();
    let recorder = Recorder::with_behavior(&mut builder, held());
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let mut stream = server.accept(PEER).await.unwrap();
    let handle = kept_handle(&recorder).await;
    let id = handle.id();

    handle.write(&b"queued before close"[..]).unwrap();
    handle.close();
    assert!(
        handle.is_closing(),
        "is_closing is documented as true after close()"
    );
    let refused = handle.write(&b"after close"[..]).map_err(Error::from);
    assert!(
        matches!(refused, Err(Error::ConnectionClosed)),
        "a write after close() must be refused, got {refused:?}"
    );
    let (received, end) = read_to_end_embedded(&mut stream).await;
    end.unwrap();
    assert_eq!(received, b"queued before close");
    drop(stream);
    drop(handle);
    recorder.wait_released(1).await;
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    assert_eq!(closure_reason(&events), Some(ClosureReason::LocalClose));
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn write_after_a_close_took_effect_is_refused_as_closed() {
    let mut builder = Server::builder();
    let recorder = Recorder::with_behavior(&mut builder, held());
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let mut stream = server.accept(PEER).await.unwrap();
    let handle = kept_handle(&recorder).await;
    let id = handle.id();

    handle.write(&b"bye"[..]).unwrap();
    handle.close();
    let (received, end) = read_to_end_embedded(&mut stream).await;
    end.unwrap();
    assert_eq!(received, b"bye");
    // The close is under way (FIN sent, waiting for the client's): writes are refused.
    assert!(handle.is_closing());
    let refused = handle.write(&b"during close"[..]).map_err(Error::from);
    assert!(
        matches!(refused, Err(Error::ConnectionClosed)),
        "{refused:?}"
    );
    assert_eq!(refused.unwrap_err().to_string(), "the connection is closed");
    // A read request is ignored, and does not keep the connection open.
    handle.read();
    drop(stream);
    recorder.wait_released(1).await;
    assert_eq!(
        closure_reason(&recorder.events_of(id)),
        Some(ClosureReason::LocalClose)
    );
    // And after the end, too.
    assert!(matches!(
        handle.write(&b"after release"[..]).map_err(Error::from),
        Err(Error::ConnectionClosed)
    ));
    handle.shutdown_write();
    handle.close();
    handle.abort();
    drop(handle);
    assert_eq!(server.stats().total_closures(), 1);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn write_beyond_the_queue_limit_is_refused_as_full() {
    const LIMIT: usize = 64 * KIB;
    const CHUNK: usize = 16 * KIB;
    let mut builder = Server::builder().write_queue_limit(LIMIT);
    let recorder = Recorder::with_behavior(&mut builder, held());
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let mut stream = server.accept(PEER).await.unwrap();
    let handle = kept_handle(&recorder).await;

    // One thread, no yield: the driver cannot drain the queue between these writes.
    let data = pattern(7, LIMIT);
    for chunk in data.chunks(CHUNK) {
        handle.write(Bytes::copy_from_slice(chunk)).unwrap();
    }
    // Its bytes, and 64 for each of the four buffers.
    const QUEUED: usize = LIMIT + 4 * 64;
    assert_eq!(handle.queued_write_bytes(), QUEUED);
    match handle.write(vec![0u8; CHUNK]).map_err(Error::from) {
        Err(error @ Error::WriteQueueFull { queued, limit }) => {
            assert_eq!((queued, limit), (QUEUED, LIMIT));
            assert_eq!(
                error.to_string(),
                format!("write queue full ({QUEUED} bytes queued, limit {LIMIT})")
            );
        }
        other => panic!("expected WriteQueueFull, got {other:?}"),
    }
    assert_eq!(
        handle.queued_write_bytes(),
        QUEUED,
        "the refused write was queued"
    );
    assert!(
        !handle.is_closing(),
        "a full queue does not end the connection"
    );

    // Only what was taken arrives; once it drains, writes are taken again.
    let received = stream
        .read_exact(LIMIT)
        .await
        .expect("the queued data did not arrive");
    assert!(received == data);
    eventually("the queue to drain", || handle.queued_write_bytes() == 0).await;
    handle.write(&b"again"[..]).unwrap();
    drop(handle);
    let (rest, end) = read_to_end_embedded(&mut stream).await;
    end.unwrap();
    assert_eq!(rest, b"again");
    drop(stream);
    recorder.wait_released(1).await;
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// User data.

/// Deliberately neither `Clone` nor `Copy`: it can only reach `on_socket_released` by move.
#[derive(Debug, PartialEq)]
struct Session {
    name: String,
    reads: usize,
}

#[tokio::test(start_paused = true)]
async fn user_data_reaches_on_socket_released_by_value() {
    let mut builder = Server::builder();
    let slot = builder.request_user_data_slot::<Session>();
    let released: Arc<Mutex<Vec<Option<Session>>>> = Arc::default();
    let hooks = Hooks {
        established: Some(Box::new(move |connection| {
            let previous = connection.user_data().set(
                slot,
                Session {
                    name: format!("session {}", connection.id()),
                    reads: 0,
                },
            );
            assert!(previous.is_none());
        })),
        read: Some(Box::new(move |connection| {
            connection
                .user_data()
                .with(slot, |session| session.as_mut().unwrap().reads += 1);
        })),
        released: Some(Box::new({
            let released = released.clone();
            move |user_data| released.lock().unwrap().push(user_data.take(slot))
        })),
        ..Hooks::default()
    };
    let behavior = Behavior {
        keep_handles: true,
        ..Behavior::default()
    };
    let recorder = Recorder::with_hooks(&mut builder, behavior, hooks);
    let server = builder.embedded().start(recorder.clone()).await.unwrap();

    let mut one = server.accept(peer_addr(1)).await.unwrap();
    let first = kept_handle(&recorder).await;
    let mut two = server.accept(peer_addr(2)).await.unwrap();
    let second = kept_handle(&recorder).await;
    for round in 0..3 {
        let message = format!("round {round}");
        echo_peer(&mut one, message.as_bytes()).await;
    }
    echo_peer(&mut two, b"once").await;

    // Each connection has its own slot value, reachable through the handle while it lives.
    let name_of = |handle: &Connection| {
        handle
            .user_data()
            .with(slot, |s| s.as_ref().map(|s| s.name.clone()))
    };
    assert_eq!(name_of(&first), Some(format!("session {}", first.id())));
    assert_eq!(name_of(&second), Some(format!("session {}", second.id())));

    // End both; the handles outlive the connections.
    one.shutdown_write();
    first.close();
    read_to_end_embedded(&mut one).await.1.unwrap();
    second.abort();
    drop(two);
    recorder.wait_released(2).await;

    let mut released = std::mem::take(&mut *released.lock().unwrap());
    released.sort_by(|a, b| {
        a.as_ref()
            .map(|s| &s.name)
            .cmp(&b.as_ref().map(|s| &s.name))
    });
    let mut expected = vec![
        Some(Session {
            name: format!("session {}", first.id()),
            reads: 3,
        }),
        Some(Session {
            name: format!("session {}", second.id()),
            reads: 1,
        }),
    ];
    expected.sort_by(|a, b| {
        a.as_ref()
            .map(|s| &s.name)
            .cmp(&b.as_ref().map(|s| &s.name))
    });
    assert_eq!(released, expected);
    // Moved out, not copied: the connections' own user data is empty now.
    assert_eq!(first.user_data().take(slot), None);
    assert_eq!(second.user_data().take(slot), None);
    // The recorder's slots travelled the same way (its Released events carry the id it stored).
    for handle in [&first, &second] {
        let events = recorder.events_of(handle.id());
        assert_lifecycle(&events);
        assert_eq!(
            events.last(),
            Some(&Event::Released(Some(handle.id()), None))
        );
    }
    drop((first, second));
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// on_socket_created.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_socket_created_comes_first_for_inbound_sockets_with_nodelay_on() {
    let mut builder = Server::builder().bind(LOCAL);
    let recorder = Recorder::new(&mut builder);
    recorder.keep_sockets();
    let server = builder.start(recorder.clone()).await.unwrap();
    let mut stream = client(server.local_addr().unwrap()).await;
    assert_eq!(echo_round_trip(&mut stream, b"hi").await, b"hi");

    let events = recorder.events();
    let created: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Event::SocketCreated(_)))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(created.len(), 1, "{events:#?}");
    assert_eq!(events[created[0]], Event::SocketCreated(Direction::Inbound));
    let established = events
        .iter()
        .position(|e| matches!(e, Event::Established(..)))
        .unwrap();
    assert!(created[0] < established, "{events:#?}");

    let socket = recorder.take_sockets().pop().unwrap();
    assert!(
        socket.tcp_nodelay().unwrap(),
        "TCP_NODELAY is on by default"
    );
    // It is the accepted socket: its peer is the client.
    assert_eq!(
        socket.peer_addr().unwrap().as_socket(),
        Some(stream.local_addr().unwrap())
    );
    drop(socket);
    drop(stream);
    recorder.wait_released(1).await;
    server.shutdown().await;

    // The check above can tell: with nodelay(false) the accepted socket keeps Nagle on.
    let mut builder = Server::builder().bind(LOCAL).nodelay(false);
    let recorder = Recorder::new(&mut builder);
    recorder.keep_sockets();
    let server = builder.start(recorder.clone()).await.unwrap();
    let mut stream = client(server.local_addr().unwrap()).await;
    assert_eq!(echo_round_trip(&mut stream, b"hi").await, b"hi");
    let socket = recorder.take_sockets().pop().unwrap();
    assert!(!socket.tcp_nodelay().unwrap());
    drop(socket);
    drop(stream);
    recorder.wait_released(1).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_set_in_on_socket_created_are_applied() {
    let directions: Arc<Mutex<Vec<Direction>>> = Arc::default();
    let mut builder = Server::builder().bind(LOCAL);
    let hooks = Hooks {
        created: Some(Box::new({
            let directions = directions.clone();
            move |socket, direction| {
                directions.lock().unwrap().push(direction);
                // The server set TCP_NODELAY before this hook: the hook's choice wins.
                assert!(socket.tcp_nodelay().unwrap());
                socket.set_tcp_nodelay(false).unwrap();
                socket
                    .set_tcp_keepalive(&TcpKeepalive::new().with_time(Duration::from_secs(77)))
                    .unwrap();
            }
        })),
        ..Hooks::default()
    };
    let recorder = Recorder::with_hooks(&mut builder, Behavior::default(), hooks);
    recorder.keep_sockets();
    let server = builder.start(recorder.clone()).await.unwrap();
    let mut stream = client(server.local_addr().unwrap()).await;
    assert_eq!(echo_round_trip(&mut stream, b"opts").await, b"opts");

    assert_eq!(*directions.lock().unwrap(), vec![Direction::Inbound]);
    // Read back from the live connection's socket, after establishment and traffic.
    let socket = recorder.take_sockets().pop().unwrap();
    assert!(!socket.tcp_nodelay().unwrap());
    assert!(socket.keepalive().unwrap());
    // Windows sets keepalive times through SIO_KEEPALIVE_VALS, which cannot be read back.
    #[cfg(not(windows))]
    assert_eq!(
        socket.tcp_keepalive_time().unwrap(),
        Duration::from_secs(77)
    );
    drop(socket);
    drop(stream);
    recorder.wait_released(1).await;
    assert!(errors_free(&recorder));
    server.shutdown().await;
}

fn errors_free(recorder: &Recorder) -> bool {
    !recorder
        .events()
        .iter()
        .any(|e| matches!(e, Event::Error(_)))
}

// ---------------------------------------------------------------------------------------------
// on_write_completed and the stats.

#[tokio::test(start_paused = true)]
async fn write_completed_reports_each_buffer_and_stats_add_up() {
    let mut builder = Server::builder().write_queue_limit(MIB);
    let recorder = Recorder::with_behavior(&mut builder, held());
    let server = builder.embedded().start(recorder.clone()).await.unwrap();

    // Connection 1: writes of assorted sizes through a handle, and reads of what the client sends.
    let mut stream = server.accept(PEER).await.unwrap();
    let handle = kept_handle(&recorder).await;
    let id = handle.id();
    let sizes = [1, 10, 1_000, 4_096, 100_000];
    let total: usize = sizes.iter().sum();
    let data = pattern(8, total);
    let mut at = 0;
    for size in sizes {
        handle
            .write(Bytes::copy_from_slice(&data[at..at + size]))
            .unwrap();
        at += size;
    }
    let received = stream
        .read_exact(total)
        .await
        .expect("the writes did not arrive");
    assert!(received == data);
    recorder
        .wait_count(
            "every write completed",
            sizes.len(),
            |e| matches!(e, Event::Written(i, _) if *i == id),
        )
        .await;
    assert_eq!(lengths_written(&recorder.events_of(id)), sizes.to_vec());
    let connection_stats = handle.stats();
    assert_eq!(connection_stats.writes, sizes.len() as u64);
    assert_eq!(connection_stats.bytes_written, total as u64);
    // A live connection's bytes are in the server's totals already.
    assert_eq!(server.stats().bytes_written, total as u64);

    let upload = pattern(9, 3_000);
    stream.send(&upload).unwrap();
    while recorder.received(id).len() < upload.len() {
        let reads = recorder.count(|e| matches!(e, Event::Read(i, _) if *i == id));
        handle.read();
        recorder
            .wait_count(
                "a read",
                reads + 1,
                |e| matches!(e, Event::Read(i, _) if *i == id),
            )
            .await;
    }
    assert!(recorder.received(id) == upload);
    assert_eq!(handle.stats().bytes_read, upload.len() as u64);
    assert_eq!(
        handle.stats().reads,
        lengths_read(&recorder.events_of(id)).len() as u64
    );
    let stats = server.stats();
    assert_eq!(stats.bytes_read, upload.len() as u64);
    assert_eq!(stats.active, 1);
    assert_eq!(stats.total_closures(), 0);
    drop(handle);
    read_to_end_embedded(&mut stream).await.1.unwrap();
    drop(stream);
    recorder.wait_released(1).await;

    // Connections 2 and 3 echo: each echoed buffer is reported with its length; one is reset,
    // one closed by the client.
    recorder.set_behavior(|b| {
        b.echo = true;
        b.keep_handles = false;
    });
    let mut reset_client = server.accept(PEER).await.unwrap();
    let small = pattern(10, 500);
    reset_client.send(&small).unwrap();
    assert!(reset_client.read_exact(small.len()).await.unwrap() == small);
    let mut closing_client = server.accept(PEER).await.unwrap();
    let large = pattern(11, 70_000);
    closing_client.send(&large).unwrap();
    assert!(closing_client.read_exact(large.len()).await.unwrap() == large);
    reset_client.reset();
    drop(reset_client);
    closing_client.shutdown_write();
    read_to_end_embedded(&mut closing_client).await.1.unwrap();
    drop(closing_client);
    recorder.wait_released(3).await;
    eventually("every connection to be deregistered", || {
        server.active_connections() == 0
    })
    .await;

    let ids = recorder.established();
    assert_eq!(ids.len(), 3);
    for &echo_id in &ids[1..] {
        let events = recorder.events_of(echo_id);
        assert_lifecycle(&events);
        // Echo writes the very buffer it read: the same lengths, in the same order.
        assert_eq!(lengths_written(&events), lengths_read(&events));
    }
    assert_eq!(
        lengths_written(&recorder.events_of(ids[2]))
            .iter()
            .sum::<usize>(),
        large.len()
    );

    let stats = server.stats();
    assert_eq!(stats.active, 0);
    assert_eq!(stats.accepted, 3);
    assert_eq!(
        stats.bytes_read,
        (upload.len() + small.len() + large.len()) as u64
    );
    assert_eq!(
        stats.bytes_written,
        (total + small.len() + large.len()) as u64
    );
    assert_eq!(stats.closures(ClosureReason::Unreferenced), 1);
    assert_eq!(stats.closures(ClosureReason::PeerReset), 1);
    assert_eq!(stats.closures(ClosureReason::PeerClosed), 1);
    assert_eq!(stats.total_closures(), 3);
    assert_eq!(stats.callback_panics, 0);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Guarantee 10 (docs/guarantees.md): a read delivers at most the configured buffer size.

#[tokio::test(start_paused = true)]
async fn reads_never_exceed_the_read_buffer_size() {
    const BUFFER: usize = 100;
    let mut builder = Server::builder().read_buffer_size(BUFFER);
    let recorder = Recorder::new(&mut builder);
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let mut peer = server.accept(PEER).await.unwrap();
    let message = pattern(12, 20 * KIB);
    // As a socket might deliver it: in chunks of every size around the buffer's.
    let mut rest = &message[..];
    for size in (1..).map(|n| n % (2 * BUFFER) + 1) {
        let (chunk, after) = rest.split_at(size.min(rest.len()));
        peer.send(chunk).unwrap();
        rest = after;
        if rest.is_empty() {
            break;
        }
    }
    assert!(peer.read_exact(message.len()).await.unwrap() == message);
    let id = recorder.established()[0];
    let reads = lengths_read(&recorder.events_of(id));
    assert!(reads.iter().all(|&n| n <= BUFFER), "{reads:?}");
    assert_eq!(reads.iter().sum::<usize>(), message.len());
    assert!(reads.len() >= message.len() / BUFFER);
    drop(peer);
    recorder.wait_released(1).await;
    server.shutdown().await;
}

/// The same over a real socket, for read sizes that fit the per-thread read chunk (64 KiB) many
/// times, a few times, and not at all (the chunk is then twice the read size): every byte comes
/// back, in order, and no read is larger than the buffer size.
#[tokio::test]
async fn socket_reads_never_exceed_the_read_buffer_size_whatever_it_is_to_the_read_chunk() {
    for buffer in [100, 8 * KIB, 8 * KIB + 1, 64 * KIB, 64 * KIB + 1, 200 * KIB] {
        let mut builder = Server::builder().bind(LOCAL).read_buffer_size(buffer);
        let recorder = Recorder::new(&mut builder);
        let server = builder.start(recorder.clone()).await.unwrap();
        let mut stream = client(server.local_addr().unwrap()).await;
        let message = pattern(buffer as u64, 256 * KIB);
        let reply = echo_round_trip(&mut stream, &message).await;
        assert!(reply == message, "buffer {buffer}: other bytes came back");
        drop(stream);
        recorder.wait_released(1).await;
        let id = recorder.established()[0];
        let reads = lengths_read(&recorder.events_of(id));
        assert!(
            reads.iter().all(|&n| n <= buffer),
            "buffer {buffer}: {reads:?}"
        );
        assert_eq!(
            reads.iter().sum::<usize>(),
            message.len(),
            "buffer {buffer}"
        );
        server.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// A thousand connections.

/// Clients run concurrently, at most this many at a time: 2 descriptors each (client and server
/// side) keeps the test under the common default soft limit of 1024 open files.
const CONCURRENT_CLIENTS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_echo_connections_return_every_byte() {
    const CLIENTS: usize = 1_000;
    const SIZE: usize = 4 * KIB;
    let mut builder = Server::builder().bind(LOCAL);
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    let address = server.local_addr().unwrap();

    let run = |i: usize| async move {
        let mut stream = client(address).await;
        let mut message = pattern(i as u64, SIZE);
        message[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let reply = echo_round_trip(&mut stream, &message).await;
        assert!(reply == message, "client {i} got other bytes back");
        stream.shutdown().await.unwrap();
        let (rest, end) = read_to_end(&mut stream).await;
        assert!(rest.is_empty(), "client {i} got more than its echo");
        end.unwrap_or_else(|error| panic!("client {i} ended with {error}"));
    };
    let mut clients = JoinSet::new();
    let mut finished = 0;
    for i in 0..CLIENTS {
        if clients.len() == CONCURRENT_CLIENTS {
            clients.join_next().await.unwrap().expect("a client failed");
            finished += 1;
        }
        clients.spawn(run(i));
    }
    while let Some(joined) = clients.join_next().await {
        joined.expect("a client failed");
        finished += 1;
    }
    assert_eq!(finished, CLIENTS);

    recorder.wait_released(CLIENTS).await;
    eventually("every connection to be deregistered", || {
        server.active_connections() == 0
    })
    .await;
    let mut by_connection: HashMap<ConnectionId, Vec<Event>> = HashMap::new();
    for event in recorder.events() {
        if let Some(id) = event.connection() {
            by_connection.entry(id).or_default().push(event);
        }
    }
    assert_eq!(by_connection.len(), CLIENTS);
    for events in by_connection.values() {
        assert_lifecycle(events);
        assert_eq!(closure_reason(events), Some(ClosureReason::PeerClosed));
        assert_eq!(lengths_read(events).iter().sum::<usize>(), SIZE);
        assert_eq!(lengths_written(events).iter().sum::<usize>(), SIZE);
    }
    let stats = server.stats();
    assert_eq!(stats.active, 0);
    assert_eq!(stats.accepted, CLIENTS as u64);
    assert_eq!(stats.bytes_read, (CLIENTS * SIZE) as u64);
    assert_eq!(stats.bytes_written, (CLIENTS * SIZE) as u64);
    assert_eq!(stats.closures(ClosureReason::PeerClosed), CLIENTS as u64);
    assert_eq!(stats.total_closures(), CLIENTS as u64);
    assert!(errors_free(&recorder));
    let report = tokio::time::timeout(WAIT, server.shutdown()).await.unwrap();
    assert_eq!((report.graceful, report.forced), (0, 0));
}
