//! The embedded connection (`switchboard::testing`): the real driver over an in-memory stream,
//! under tokio's paused clock. Each test proves one thing the peer can do or observe; the event
//! order rules themselves are the lifecycle's unit tests and tests/lifecycle.rs.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchboard::testing::{EmbeddedServer, Event, Events, Recorded};
use switchboard::{
    async_trait, Bytes, BytesMut, Callbacks, ClosureReason, Connection, Server, ServerBuilder,
    Slot, UserData,
};
use tokio::time::Instant;

/// Reads and echoes; writes `greeting` first, closes on "close", aborts on "abort".
#[derive(Default)]
struct Echo {
    greeting: Option<Bytes>,
}

#[async_trait]
impl Callbacks for Echo {
    async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
        if let Some(greeting) = &self.greeting {
            let _ = connection.write(greeting.clone());
        }
        connection.read();
    }

    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        match &data[..] {
            b"close" => connection.close(),
            b"abort" => connection.abort(),
            _ => {
                let _ = connection.write(data.freeze());
                connection.read();
            }
        }
    }

    async fn on_connection_client_close(&self, connection: &Connection) {
        // Half-closed: the application may still write.
        let _ = connection.write("bye");
        connection.close();
    }
}

fn address(n: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, n], 40000))
}

async fn start(builder: ServerBuilder, echo: Echo) -> (EmbeddedServer, Events) {
    let (callbacks, events) = Recorded::new(echo);
    let server = builder.embedded().start(callbacks).await.expect("starts");
    (server, events)
}

#[tokio::test(start_paused = true)]
async fn chunks_arrive_as_sent_and_the_closing_events_come_in_order() {
    let (server, events) = start(Server::builder(), Echo::default()).await;
    let mut peer = server.accept(address(1)).await.unwrap();
    let id = peer.id();
    for chunk in ["a", "bc", "def"] {
        peer.send(chunk).unwrap();
        assert_eq!(peer.read().await.unwrap(), chunk);
    }
    peer.shutdown_write();
    assert_eq!(peer.read_to_end().await.unwrap(), "bye");
    assert_eq!(events.wait_for_release(id).await, ClosureReason::LocalClose);
    let of = events.of(id);
    assert_eq!(of[0], Event::Established(id, address(1)));
    let reads: Vec<_> = of
        .iter()
        .filter_map(|event| match event {
            Event::Read(_, data) => Some(data.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(reads, ["a", "bc", "def"]);
    let tail = &of[of.len() - 4..];
    assert_eq!(
        tail,
        [
            Event::Written(id, 3),
            Event::Closure(id, ClosureReason::LocalClose),
            Event::Closed(id),
            Event::Released(Some(id)),
        ]
    );
    assert!(of.contains(&Event::ClientClose(id)));
}

#[tokio::test(start_paused = true)]
async fn a_chunk_larger_than_the_read_buffer_is_read_in_pieces() {
    let (server, events) = start(Server::builder().read_buffer_size(4), Echo::default()).await;
    let mut peer = server.accept(address(1)).await.unwrap();
    peer.send("0123456789").unwrap();
    assert_eq!(peer.read_exact(10).await.unwrap(), "0123456789");
    let sizes: Vec<_> = events
        .of(peer.id())
        .iter()
        .filter_map(|event| match event {
            Event::Read(_, data) => Some(data.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, [4, 4, 2]);
}

#[tokio::test(start_paused = true)]
async fn close_delivers_the_queue_and_abort_resets() {
    let (server, events) = start(Server::builder(), Echo::default()).await;
    let mut closing = server.accept(address(1)).await.unwrap();
    closing.send("close").unwrap();
    assert_eq!(closing.read().await.unwrap(), "");
    assert!(!closing.was_reset_by_server());
    let mut aborting = server.accept(address(2)).await.unwrap();
    aborting.send("abort").unwrap();
    let error = aborting.read().await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    assert!(aborting.was_reset_by_server());
    assert_eq!(
        events.wait_for_release(aborting.id()).await,
        ClosureReason::LocalAbort
    );
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_stops_reading_fills_the_queue_and_a_reset_ends_it() {
    let echo = Echo {
        greeting: Some(Bytes::from(vec![b'x'; 30_000])),
    };
    let (server, events) = start(Server::builder().write_watermarks(20_000, 5_000), echo).await;
    let mut peer = server.accept(address(1)).await.unwrap();
    peer.set_receive_window(0);
    let id = peer.id();
    // Nothing can be sent: the whole greeting stays queued, over the high watermark (its
    // bytes, and 64 for the buffer).
    events
        .wait_for(|event| *event == Event::WriteBufferHigh(id, 30_000 + 64))
        .await;
    peer.set_receive_window(1_000);
    assert_eq!(peer.read_exact(1_000).await.unwrap().len(), 1_000);
    peer.set_receive_window(usize::MAX);
    events
        .wait_for(|event| matches!(event, Event::WriteBufferLow(i, _) if *i == id))
        .await;
    assert_eq!(peer.read_exact(29_000).await.unwrap().len(), 29_000);

    // A second connection: reset while its greeting is stuck.
    let stuck = server.accept(address(2)).await.unwrap();
    stuck.set_receive_window(100);
    events
        .wait_for(|event| *event == Event::WriteBufferHigh(stuck.id(), 30_000 + 64))
        .await;
    stuck.reset();
    assert_eq!(
        events.wait_for_release(stuck.id()).await,
        ClosureReason::PeerReset
    );
    assert!(events
        .of(stuck.id())
        .contains(&Event::Reset(stuck.id(), io::ErrorKind::ConnectionReset)));
    // The greeting never completed.
    assert!(!events
        .of(stuck.id())
        .iter()
        .any(|event| matches!(event, Event::Written(..))));
}

#[tokio::test(start_paused = true)]
async fn timeouts_fire_on_the_paused_clock() {
    let builder = Server::builder()
        .first_byte_timeout(Some(Duration::from_secs(5)))
        .idle_timeout(Some(Duration::from_secs(30)));
    let (server, events) = start(builder, Echo::default()).await;
    let started = Instant::now();
    let silent = server.accept(address(1)).await.unwrap();
    assert_eq!(
        events.wait_for_release(silent.id()).await,
        ClosureReason::FirstByteTimedOut
    );
    assert!(started.elapsed() >= Duration::from_secs(5));

    let mut talker = server.accept(address(2)).await.unwrap();
    talker.send("hi").unwrap();
    assert_eq!(talker.read().await.unwrap(), "hi");
    let spoke = Instant::now();
    assert_eq!(
        events.wait_for_release(talker.id()).await,
        ClosureReason::IdleTimedOut
    );
    assert!(spoke.elapsed() >= Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn the_limit_refuses_and_abort_all_counts_the_live_ones() {
    let builder = Server::builder()
        .max_connections(2)
        .at_limit(switchboard::LimitPolicy::AcceptAndClose);
    let (server, events) = start(builder, Echo::default()).await;
    let first = server.accept(address(1)).await.unwrap();
    let second = server.accept(address(2)).await.unwrap();
    // Refused as a socket is: without a refusal message, a reset.
    let mut refused = server.accept(address(3)).await.unwrap();
    assert_eq!(
        refused.read().await.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionReset
    );
    assert_eq!(events.count(|event| *event == Event::MaximumConnections), 1);
    assert_eq!(server.stats().refused_at_limit, 1);
    assert_eq!(server.abort_all_connections().await, 2);
    for id in [first.id(), second.id()] {
        assert_eq!(events.wait_for_release(id).await, ClosureReason::AbortAll);
    }
    events
        .wait_for(|event| *event == Event::AllConnectionsAborted(2))
        .await;
    // A slot is free again.
    server.accept(address(3)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_per_address_cap_refuses_with_closing_events_only() {
    let builder = Server::builder().max_connections_per_ip(1);
    let (server, events) = start(builder, Echo::default()).await;
    let _first = server.accept(address(1)).await.unwrap();
    let mut over = server.accept(address(1)).await.unwrap();
    assert_eq!(
        events.wait_for_release(over.id()).await,
        ClosureReason::PerIpLimit
    );
    assert!(!events
        .of(over.id())
        .iter()
        .any(|event| matches!(event, Event::Established(..))));
    assert!(over.read().await.is_err());
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_then_forces_and_reports() {
    /// Ignores the shutdown request: the drain time must pass.
    struct Stubborn;
    #[async_trait]
    impl Callbacks for Stubborn {
        async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
            connection.read();
        }
        async fn on_shutdown_requested(&self, _: &Connection) {}
    }
    let (callbacks, events) = Recorded::new(Stubborn);
    let server = Server::builder()
        .shutdown_timeout(Duration::from_secs(10))
        .embedded()
        .start(callbacks)
        .await
        .unwrap();
    let peer_one = server.accept(address(1)).await.unwrap();
    let started = Instant::now();
    let report = server.shutdown().await;
    assert!(started.elapsed() >= Duration::from_secs(10));
    assert_eq!((report.graceful, report.forced, report.other), (0, 1, 0));
    let all = events.all();
    assert_eq!(all[1], Event::Established(peer_one.id(), address(1)));
    assert_eq!(all[2], Event::ShutdownInitiated);
    assert_eq!(all.last(), Some(&Event::ShutdownComplete(report)));
    assert!(matches!(
        server.accept(address(2)).await,
        Err(switchboard::Error::ShuttingDown)
    ));
}

#[tokio::test(start_paused = true)]
async fn user_data_and_stats_are_the_servers() {
    let mut builder = Server::builder();
    let slot = builder.request_user_data_slot::<u32>();
    /// Hands the slot's value back at release.
    struct Release(Slot<u32>, Arc<std::sync::Mutex<Option<u32>>>);
    #[async_trait]
    impl Callbacks for Release {
        async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
            connection.user_data().set(self.0, 7);
            connection.read();
        }
        async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
            let _ = connection.write(data.freeze());
            connection.close();
        }
        async fn on_socket_released(&self, user_data: UserData) {
            *self.1.lock().unwrap() = user_data.take(self.0);
        }
    }
    let released = Arc::new(std::sync::Mutex::new(None));
    let (callbacks, events) = Recorded::new(Release(slot, released.clone()));
    let server = builder.embedded().start(callbacks).await.unwrap();
    let mut peer = server.accept(address(1)).await.unwrap();
    peer.send("12345").unwrap();
    assert_eq!(peer.read_to_end().await.unwrap(), "12345");
    events.wait_for_release(peer.id()).await;
    assert_eq!(*released.lock().unwrap(), Some(7));
    let stats = server.stats();
    assert_eq!(
        (stats.accepted, stats.bytes_read, stats.bytes_written),
        (1, 5, 5)
    );
    assert_eq!(stats.active, 0);
}

#[tokio::test(start_paused = true)]
async fn an_outgoing_connection_runs_the_outgoing_path_over_memory() {
    let (server, events) = start(Server::builder().max_connections(1), Echo::default()).await;
    let remote = address(9);
    let (connection, mut peer) = server.connect(remote).argument("arg").await.unwrap();
    let id = connection.id();
    assert_eq!(peer.id(), id);
    assert_eq!(connection.direction(), switchboard::Direction::Outbound);
    assert_eq!(connection.peer_addr(), remote);
    // The limiter counts it: no inbound connection and no second outgoing one fits.
    assert!(matches!(
        server.connect(remote).await,
        Err(switchboard::Error::ConnectionLimitReached { limit: 1 })
    ));
    peer.send("ping").unwrap();
    assert_eq!(peer.read().await.unwrap(), "ping");
    drop(connection);
    peer.shutdown_write();
    assert_eq!(peer.read_to_end().await.unwrap(), "bye");
    assert_eq!(events.wait_for_release(id).await, ClosureReason::LocalClose);
    let all = events.all();
    assert_eq!(all[1], Event::PreOutgoingConnect(remote));
    assert_eq!(all[2], Event::Established(id, remote));
    // The failed second attempt: its pre-connect event and its user data's release.
    assert_eq!(all[3], Event::PreOutgoingConnect(remote));
    assert_eq!(all[4], Event::Released(None));
    assert_eq!(events.of(id).last(), Some(&Event::Released(Some(id))));
    let stats = server.stats();
    assert_eq!(
        (stats.connected, stats.accepted, stats.connect_failures),
        (1, 0, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn an_outgoing_client_reads_what_the_peer_sends() {
    let (server, events) = start(Server::builder(), Echo::default()).await;
    let (mut client, mut peer) = server.connect(address(9)).client().await.unwrap();
    client.send("GET\n").await.unwrap();
    assert_eq!(peer.read().await.unwrap(), "GET\n");
    peer.send("VALUE\n").unwrap();
    assert_eq!(&client.recv().await.unwrap().unwrap()[..], b"VALUE\n");
    peer.shutdown_write();
    assert_eq!(client.recv().await.unwrap(), None);
    let id = client.connection().id();
    drop(client);
    assert_eq!(events.wait_for_release(id).await, ClosureReason::PeerClosed);
}

#[tokio::test(start_paused = true)]
async fn a_server_that_stopped_accepting_accepts_nothing_until_it_starts_again() {
    let (server, events) = start(Server::builder().accepting(false), Echo::default()).await;
    let refused = server.accept(address(1)).await.unwrap_err();
    assert_eq!(
        refused.io_error().map(io::Error::kind),
        Some(io::ErrorKind::WouldBlock)
    );
    assert_eq!(events.all(), [Event::ServerStarted]);
    assert_eq!(server.stats().accepted, 0);
    server.start_accepting();
    let mut peer = server.accept(address(1)).await.unwrap();
    server.stop_accepting();
    assert!(server.accept(address(2)).await.is_err());
    // A live connection is not affected, and outgoing connects still work.
    peer.send("still").unwrap();
    assert_eq!(peer.read().await.unwrap(), "still");
    server.connect(address(9)).await.unwrap();
    assert_eq!(server.stats().accepted, 1);
}

#[tokio::test(start_paused = true)]
async fn at_the_limit_with_stop_accepting_a_client_is_held_back_not_refused() {
    let (server, events) = start(Server::builder().max_connections(1), Echo::default()).await;
    let first = server.accept(address(1)).await.unwrap();
    for _ in 0..2 {
        assert!(matches!(
            server.accept(address(2)).await,
            Err(switchboard::Error::ConnectionLimitReached { limit: 1 })
        ));
    }
    assert_eq!(events.count(|event| *event == Event::MaximumConnections), 1);
    // A real client would wait in the backlog: nothing is refused.
    assert_eq!(server.stats().refused_at_limit, 0);
    first.reset();
    events.wait_for_release(first.id()).await;
    server.accept(address(2)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_send_window_holds_the_peer_up_until_the_server_reads() {
    /// Keeps each connection's handle and reads only once the test asks it to.
    struct Deaf(Arc<std::sync::Mutex<Option<Connection>>>);
    #[async_trait]
    impl Callbacks for Deaf {
        async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
            *self.0.lock().unwrap() = Some(connection.clone());
        }
        async fn on_read_completed(&self, connection: &Connection, _: BytesMut) {
            connection.read();
        }
    }
    let kept = Arc::default();
    let (callbacks, events) = Recorded::new(Deaf(Arc::clone(&kept)));
    let server = Server::builder().embedded().start(callbacks).await.unwrap();
    let peer = server.accept(address(1)).await.unwrap();
    peer.set_send_window(4);
    let refused = peer.send("12345").unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::WouldBlock);
    peer.send("1234").unwrap();
    let sender = peer.sender();
    let sending = tokio::spawn(async move { sender.send_all("abcdef").await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!sending.is_finished(), "the window is full");

    let connection = kept.lock().unwrap().take().expect("established");
    connection.read();
    sending.await.unwrap().unwrap();
    events
        .wait_for(|event| matches!(event, Event::Read(_, data) if data.ends_with(b"ef")))
        .await;
    let read: Vec<u8> = events
        .of(peer.id())
        .iter()
        .filter_map(|event| match event {
            Event::Read(_, data) => Some(data.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(read, b"1234abcdef");
}
