//! How a connection ends when the application decides: closing with a code of its own, a goodbye
//! delivered past a full write queue before FIN, a close that reads and drops only so much of
//! what the peer goes on sending, the message a client refused at the limit gets, and the server
//! handle callbacks get at start. Over real loopback TCP where the listener is part of it (the
//! refusal at the limit, the server handle at start), the rest on the embedded connection of
//! `switchboard::testing` on the paused clock; waits bounded by [`WAIT`].

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
// These tests' embedded server (no listener: connect with `server.connect`).
use common::start_recorded_embedded as start_embedded;
use switchboard::{
    async_trait, Callbacks, ClosureReason, Connection, LimitPolicy, Server, ServerBuilder,
    WeakServer,
};
use tokio::io::AsyncReadExt;

async fn start(
    behavior: Behavior,
    hooks: Hooks,
    configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
) -> (Server, Recorder) {
    let mut builder = Server::builder().bind("127.0.0.1:0");
    let recorder = Recorder::with_hooks(&mut builder, behavior, hooks);
    let server = configure(builder).start(recorder.clone()).await.unwrap();
    (server, recorder)
}

#[tokio::test(start_paused = true)]
async fn close_with_reports_the_applications_code_and_closes_gracefully() {
    let hooks = Hooks {
        read: Some(Box::new(|connection: &Connection| {
            connection.write("bye").unwrap();
            connection.close_with(4001);
            // The first close asked for keeps its reason.
            connection.close();
        })),
        ..Hooks::default()
    };
    let (server, recorder) = start_embedded(Behavior::collect(), hooks, |b| b).await;
    let mut stream = server.accept(peer_addr(1)).await.unwrap();
    // What was written before the close still arrives, then FIN.
    let (reply, end) = {
        stream.send(b"last").unwrap();
        peer_read_to_end(&mut stream).await
    };
    assert_eq!(reply, b"bye");
    end.expect("a graceful close: FIN, not a reset");
    drop(stream);
    recorder.wait_released(1).await;
    let id = recorder.established()[0];
    assert_eq!(recorder.closure(id), Some(ClosureReason::Application(4001)));
    assert_lifecycle(&recorder.events_of(id));
    let stats = server.stats();
    assert_eq!(stats.closures(ClosureReason::Application(0)), 1);
    assert_eq!(ClosureReason::Application(4001).to_string(), "application");
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_goodbye_goes_out_past_a_full_queue_after_what_was_queued_and_before_fin() {
    let filled = Arc::new(Mutex::new(None));
    let seen = filled.clone();
    let hooks = Hooks {
        established: Some(Box::new(move |connection: &Connection| {
            let mut accepted = 0;
            let refusal = loop {
                match connection.write(vec![b'f'; 1024]) {
                    Ok(()) => accepted += 1024,
                    Err(refused) => break refused,
                }
            };
            let goodbye = connection.goodbye("bye\n");
            let again = connection.goodbye("again\n").is_err();
            *seen.lock().unwrap() = Some((accepted, refusal.to_string(), goodbye.is_ok(), again));
        })),
        ..Hooks::default()
    };
    let (server, recorder) =
        start_embedded(Behavior::quiet(), hooks, |b| b.write_queue_limit(8 * 1024)).await;
    let mut stream = server.accept(peer_addr(1)).await.unwrap();
    // A small window, as small socket buffers would be.
    stream.set_receive_window(4096);
    let (data, end) = peer_read_to_end(&mut stream).await;
    end.expect("FIN after the goodbye");
    // Our FIN in turn, which the graceful close waits for.
    drop(stream);
    let (accepted, refusal, goodbye_ok, second_refused) = filled.lock().unwrap().clone().unwrap();
    assert!(refusal.contains("full"), "{refusal}");
    assert!(goodbye_ok, "the goodbye is taken past the limit");
    assert!(second_refused, "one last word only");
    assert_eq!(data.len(), accepted + 4);
    assert!(data[..accepted].iter().all(|&b| b == b'f'));
    assert_eq!(&data[accepted..], b"bye\n");
    recorder.wait_released(1).await;
    let id = recorder.established()[0];
    assert_eq!(recorder.closure(id), Some(ClosureReason::LocalClose));
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_close_drops_at_most_the_discard_limit_of_a_streaming_peer_then_resets() {
    // The close timeout is long: it is the byte bound that ends the connection.
    let behavior = Behavior {
        close_after_greeting: true,
        ..Behavior::quiet()
    };
    let (server, recorder) = start_embedded(behavior, Hooks::default(), |b| {
        b.close_discard_limit(16 * 1024)
            .close_timeout(Duration::from_secs(3600))
    })
    .await;
    let stream = server.accept(peer_addr(1)).await.unwrap();
    let chunk = vec![b's'; 4096];
    let mut sent = 0usize;
    let ended = bounded("the server to cut the stream off", async {
        loop {
            match stream.send(&chunk) {
                Ok(()) => sent += chunk.len(),
                Err(error) => return error,
            }
            // The server's turn to read (and the paused clock's, so the bound holds).
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(
        matches!(
            ended.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{ended:?}"
    );
    recorder.wait_released(1).await;
    let id = recorder.established()[0];
    assert_eq!(recorder.closure(id), Some(ClosureReason::DiscardLimit));
    // Far less than the gigabytes a peer could stream during the close timeout: the discard
    // limit plus what was in flight.
    assert!(
        sent < 64 * 1024 * 1024,
        "{sent} bytes went in before the reset"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refused_at_the_limit_gets_the_message_and_fin_and_no_callback() {
    let (server, recorder) = start(Behavior::echo(), Hooks::default(), |b| {
        b.max_connections(1)
            .at_limit(LimitPolicy::AcceptAndClose)
            .refusal_message("server full\r\n")
    })
    .await;
    let address = server.local_addr().unwrap();
    let mut served = client(address).await;
    echo(&mut served, b"in").await;

    let mut refused = client(address).await;
    let (data, end) = read_to_end(&mut refused).await;
    assert_eq!(data, b"server full\r\n");
    end.expect("the message, then FIN");
    recorder
        .wait_for("on_maximum_connections", |e| {
            *e == Event::MaximumConnections
        })
        .await;
    let stats = server.stats();
    assert_eq!((stats.accepted, stats.refused_at_limit), (1, 1));
    // The refused client never became a connection: the served one's events and the limit's.
    assert_eq!(
        recorder.count(|e| matches!(e, Event::SocketCreated(_))),
        1,
        "{:#?}",
        recorder.events()
    );
    assert_eq!(recorder.established().len(), 1);
    drop(served);
    recorder.wait_released(1).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_refusal_message_longer_than_a_socket_buffer_is_refused() {
    let result = Server::builder()
        .bind("127.0.0.1:0")
        .refusal_message(vec![b'x'; switchboard::MAX_REFUSAL_MESSAGE + 1])
        .start(Recorder::new(&mut Server::builder()))
        .await;
    assert!(matches!(
        result,
        Err(switchboard::Error::InvalidSetting {
            setting: "refusal_message",
            ..
        })
    ));
}

/// Keeps a weak handle to its server, and what it saw of it first.
#[derive(Default)]
struct Started {
    server: OnceLock<WeakServer>,
    /// The order of the events: "started", then "accepting".
    order: Mutex<Vec<&'static str>>,
}

#[async_trait]
impl Callbacks for Started {
    async fn on_server_started(&self, server: &Server) {
        self.order.lock().unwrap().push("started");
        assert!(server.local_addr().is_some(), "the listeners are bound");
        let _ = self.server.set(server.downgrade());
    }

    async fn on_start_accepting_connections(&self) {
        self.order.lock().unwrap().push("accepting");
    }

    async fn on_connection_established(
        &self,
        connection: &Connection,
        _peer: &std::net::SocketAddr,
    ) {
        // A callback reaches its server: here, its stats.
        let server = self.server.get().and_then(WeakServer::upgrade).unwrap();
        let accepted = server.stats().accepted;
        let _ = connection.write(format!("you are number {accepted}\n"));
        connection.close();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_get_their_server_first_and_a_weak_handle_does_not_keep_it() {
    let callbacks = Arc::new(Started::default());
    struct Shared(Arc<Started>);
    #[async_trait]
    impl Callbacks for Shared {
        async fn on_server_started(&self, server: &Server) {
            self.0.on_server_started(server).await
        }
        async fn on_start_accepting_connections(&self) {
            self.0.on_start_accepting_connections().await
        }
        async fn on_connection_established(
            &self,
            connection: &Connection,
            peer: &std::net::SocketAddr,
        ) {
            self.0.on_connection_established(connection, peer).await
        }
    }
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .start(Shared(callbacks.clone()))
        .await
        .unwrap();
    let mut stream = client(server.local_addr().unwrap()).await;
    let mut reply = String::new();
    bounded("the reply", stream.read_to_string(&mut reply))
        .await
        .unwrap();
    assert_eq!(reply, "you are number 1\n");
    drop(stream);
    eventually("accepting to be announced", || {
        callbacks.order.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(*callbacks.order.lock().unwrap(), ["started", "accepting"]);
    server.shutdown().await;
    drop(server);
    let weak = callbacks.server.get().unwrap().clone();
    eventually("the server's state to be freed", || {
        weak.upgrade().is_none()
    })
    .await;
}

/// Guarantee 16 (docs/guarantees.md): the application's reason stays when the peer reads our
/// data and our FIN but keeps its own end open past the close timeout. What the peer did after
/// is reported beside the reason, not instead of it.
#[tokio::test(start_paused = true)]
async fn a_lingering_peer_keeps_the_applications_reason() {
    let hooks = Hooks {
        read: Some(Box::new(|connection: &Connection| {
            let _ = connection.write("ERR go away\n");
            connection.close_with(4001);
        })),
        ..Hooks::default()
    };
    let close_timeout = Duration::from_secs(5);
    let (server, recorder) = start_embedded(Behavior::collect(), hooks, |b| {
        b.close_timeout(close_timeout)
    })
    .await;
    let mut peer = server.accept(peer_addr(1)).await.unwrap();
    peer.send(b"hello").unwrap();
    let (reply, end) = peer_read_to_end(&mut peer).await;
    assert_eq!(reply, b"ERR go away\n");
    end.expect("our FIN after the data");
    // The peer keeps its end open past the close timeout.
    tokio::time::sleep(close_timeout * 2).await;
    recorder.wait_released(1).await;
    let id = recorder.established()[0];
    assert_eq!(recorder.closure(id), Some(ClosureReason::Application(4001)));
    assert_lifecycle(&recorder.events_of(id));
    let stats = server.stats();
    assert_eq!(stats.closures(ClosureReason::CloseTimedOut), 0);
    assert_eq!(
        stats.lingering_peers, 1,
        "the lingering peer, counted beside the reason"
    );
    assert!(
        !peer.was_reset_by_server(),
        "all was delivered: the socket is closed, not reset"
    );
    drop(peer);
    server.shutdown().await;
}

/// A framed handler that answers `go` through every path that posts bytes, in this order: a
/// fed item, a plain write, another fed item, a broadcast to a group the connection is in, a
/// sent item, and a goodbye.
struct EveryPath {
    group: switchboard::ConnectionGroup,
}

#[async_trait]
impl Callbacks for EveryPath {}

#[async_trait]
impl switchboard::codec::FrameHandler for EveryPath {
    type Codec = switchboard::tokio_util::codec::LinesCodec;

    fn new_codec(&self, connection: &Connection) -> Self::Codec {
        self.group.insert(connection);
        switchboard::tokio_util::codec::LinesCodec::new()
    }

    async fn on_frame(
        &self,
        connection: &switchboard::codec::FramedConnection<'_, Self::Codec>,
        _line: String,
    ) {
        connection.feed("1 fed").unwrap();
        connection.write("2 written\n").unwrap();
        connection.feed("3 fed").unwrap();
        self.group.broadcast("4 broadcast\n");
        connection.send("5 sent").unwrap();
        connection.goodbye("6 goodbye\n").unwrap();
    }
}

/// Guarantee 15 (docs/guarantees.md): whatever path posts bytes to a connection, the peer
/// receives them in the order they were posted, then FIN.
#[tokio::test(start_paused = true)]
async fn writes_feeds_and_goodbyes_arrive_in_posting_order() {
    let server = Server::builder()
        .embedded()
        .start(switchboard::codec::Framing::new(EveryPath {
            group: switchboard::ConnectionGroup::new(),
        }))
        .await
        .unwrap();
    let mut peer = server.accept(peer_addr(1)).await.unwrap();
    peer.send(b"go\n").unwrap();
    let (reply, end) = peer_read_to_end(&mut peer).await;
    end.expect("FIN after the goodbye");
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "1 fed\n2 written\n3 fed\n4 broadcast\n5 sent\n6 goodbye\n"
    );
    drop(peer);
    server.shutdown().await;
}

/// Hooks that answer a connection's first bytes with `reply` and close with code 7.
fn answer_and_close(reply: usize) -> Hooks {
    Hooks {
        established: Some(Box::new(move |connection: &Connection| {
            let _ = connection.write(vec![b'r'; reply]);
            connection.close_with(7);
        })),
        ..Hooks::default()
    }
}

/// Over real TCP, where the kernel says what the peer acknowledged: a client that reads the
/// reply and our FIN but keeps its socket open lingers, and the close keeps its reason; one
/// that reads nothing, so that the reply never gets through, is reset with `CloseTimedOut`
/// although everything went to the kernel and FIN was sent after it. Linux only: elsewhere the
/// kernel is not asked, and every close the peer did not finish ends with `CloseTimedOut`.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[tokio::test]
async fn over_tcp_only_a_peer_that_took_everything_lingers() {
    let close_timeout = Duration::from_millis(300);
    for reads in [true, false] {
        // Far more than the reading-nothing client's window: most of it stays in our kernel.
        let reply = 512 * 1024;
        let (server, recorder) = start(Behavior::quiet(), answer_and_close(reply), |b| {
            b.close_timeout(close_timeout)
                .write_queue_limit(2 * reply)
                .write_watermarks(2 * reply, reply)
        })
        .await;
        let address = server.local_addrs()[0];
        let mut client = if reads {
            client(address).await
        } else {
            small_buffer_client(address, 4096).await
        };
        if reads {
            let mut received = Vec::new();
            bounded("the reply and FIN", client.read_to_end(&mut received))
                .await
                .unwrap();
            assert_eq!(received.len(), reply);
        }
        // The client keeps its socket open past the close timeout.
        recorder.wait_released(1).await;
        let id = recorder.established()[0];
        let stats = server.stats();
        if reads {
            assert_eq!(recorder.closure(id), Some(ClosureReason::Application(7)));
            assert_eq!(stats.lingering_peers, 1);
        } else {
            assert_eq!(recorder.closure(id), Some(ClosureReason::CloseTimedOut));
            assert_eq!(stats.lingering_peers, 0);
            let mut rest = Vec::new();
            let end = bounded("the reset", client.read_to_end(&mut rest)).await;
            assert!(
                end.is_err(),
                "reset, not closed: {} bytes then {end:?}",
                rest.len()
            );
        }
        drop(client);
        server.shutdown().await;
    }
}

/// The embedded connection's peer that reads nothing: the same `CloseTimedOut`.
#[tokio::test(start_paused = true)]
async fn a_close_whose_data_the_peer_never_reads_times_out() {
    let (server, recorder) = start_embedded(Behavior::quiet(), answer_and_close(64 * 1024), |b| {
        b.close_timeout(Duration::from_secs(5))
    })
    .await;
    let peer = server.accept(peer_addr(1)).await.unwrap();
    peer.set_receive_window(4096);
    recorder.wait_released(1).await;
    let id = recorder.established()[0];
    assert_eq!(recorder.closure(id), Some(ClosureReason::CloseTimedOut));
    assert_eq!(server.stats().lingering_peers, 0);
    assert!(peer.was_reset_by_server());
    server.shutdown().await;
}

/// Writes from the connection's own callback (which go straight to its queue) and from other
/// tasks (through its mailbox), each made after the one before it had returned.
struct Relay;

#[async_trait]
impl Callbacks for Relay {
    async fn on_connection_established(
        &self,
        connection: &Connection,
        _peer: &std::net::SocketAddr,
    ) {
        connection.read();
    }

    async fn on_read_completed(&self, connection: &Connection, _data: switchboard::BytesMut) {
        connection.write("1 callback\n").unwrap();
        // Another task's write, while the callback waits for it.
        let other = connection.clone();
        tokio::spawn(async move { other.write("2 other task\n").unwrap() })
            .await
            .unwrap();
        connection.write("3 callback\n").unwrap();
        // The callback waits with nothing posted meanwhile, and goes on writing.
        tokio::task::yield_now().await;
        connection.write("4 callback\n").unwrap();
        let other = connection.clone();
        tokio::spawn(async move {
            other.write("5 other task\n").unwrap();
            other.goodbye("6 goodbye\n").unwrap();
        })
        .await
        .unwrap();
        // Refused: the goodbye came first.
        assert!(connection.write("7 too late\n").is_err());
    }
}

/// Guarantee 15 over real TCP, across the two ways a write is queued: the connection's own
/// callback's, and another task's through the mailbox. Each was made after the one before had
/// returned, and the peer receives them in that order, then FIN.
#[tokio::test]
async fn a_callbacks_writes_and_another_tasks_arrive_in_posting_order() {
    for _ in 0..20 {
        let server = Server::builder()
            .bind("127.0.0.1:0")
            .start(Relay)
            .await
            .unwrap();
        let mut stream = client(server.local_addr().unwrap()).await;
        bounded(
            "the request",
            tokio::io::AsyncWriteExt::write_all(&mut stream, b"go\n"),
        )
        .await
        .unwrap();
        let (reply, end) = read_to_end(&mut stream).await;
        end.expect("FIN after the goodbye");
        assert_eq!(
            String::from_utf8_lossy(&reply),
            "1 callback\n2 other task\n3 callback\n4 callback\n5 other task\n6 goodbye\n"
        );
        drop(stream);
        server.shutdown().await;
    }
}
