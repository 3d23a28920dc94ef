//! Awaitable client connections (`server.connect(addr).client()`, `Client`, `FramedClient`): the task
//! that opened the connection sends and awaits replies itself, while the server counts, limits,
//! reports and shuts the connection down. Peers are the test's end of embedded outgoing
//! connections (`switchboard::testing`, on the paused clock) where the socket is not the point,
//! and real loopback sockets elsewhere: a plain tokio listener speaking a framed protocol, a TLS
//! switchboard server. Waits are bounded by [`WAIT`].

mod common;

use std::net::SocketAddr;

use common::*;
use futures::{SinkExt, StreamExt};
use switchboard::testing::EmbeddedServer;
use switchboard::tokio_util::codec::{Framed, LengthDelimitedCodec, LinesCodec};
use switchboard::{ClosureReason, Direction, Error, Server, TlsConnect};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// A server with no listener, recording, to open clients from.
async fn manager() -> (Server, Recorder) {
    let mut builder = Server::builder();
    let recorder = Recorder::with_behavior(&mut builder, Behavior::quiet());
    let server = builder.start(recorder.clone()).await.unwrap();
    (server, recorder)
}

/// [`manager`], embedded (`switchboard::testing`): its clients connect over memory to a peer the
/// test plays (`EmbeddedServer::connect(..).client()`).
async fn embedded_manager() -> (EmbeddedServer, Recorder) {
    let mut builder = Server::builder();
    let recorder = Recorder::with_behavior(&mut builder, Behavior::quiet());
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    (server, recorder)
}

/// The remote end of embedded clients (TEST-NET-2: nothing is contacted).
const REMOTE: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1)),
    6000,
);

async fn peer() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    (listener, address)
}

#[tokio::test(start_paused = true)]
async fn a_client_sends_awaits_the_reply_and_sees_the_peers_fin() {
    let (server, recorder) = embedded_manager().await;
    let (mut client, mut peer) = server.connect(REMOTE).client().await.unwrap();
    assert_eq!(client.connection().direction(), Direction::Outbound);
    client.send("PING").await.unwrap();
    assert_eq!(peer.read_exact(4).await.unwrap(), "PING");
    peer.send("PONG").unwrap();
    peer.shutdown_write();
    let mut reply = Vec::new();
    while let Some(data) = bounded("recv", client.recv()).await.unwrap() {
        reply.extend_from_slice(&data);
    }
    assert_eq!(reply, b"PONG");
    assert_eq!(
        bounded("recv", client.recv()).await.unwrap(),
        None,
        "FIN stays"
    );
    // The client can still send after the peer's FIN.
    client.send("bye").await.unwrap();
    let id = client.connection().id();
    drop(client);
    let (rest, end) = peer_read_to_end(&mut peer).await;
    end.unwrap();
    assert_eq!(rest, b"bye");

    recorder.wait_release_of(id).await;
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    assert_eq!(closure_reason(&events), Some(ClosureReason::PeerClosed));
    // The reads and the FIN went to the client, not to the callbacks.
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Read(..) | Event::ClientClose(..))),
        "{events:#?}"
    );
    assert_eq!(server.stats().connected, 1);
    server.shutdown().await;
}

/// A client given up on while its read was pending (a `recv` timed out), then dropped: nobody
/// takes what arrives any more, so the read no longer keeps the connection open and the lifetime
/// rule closes it.
#[tokio::test(start_paused = true)]
async fn a_client_dropped_while_its_read_is_pending_closes_by_itself() {
    let (server, recorder) = embedded_manager().await;
    let (mut client, mut peer) = server.connect(REMOTE).client().await.unwrap();
    let id = client.connection().id();
    let gave_up = tokio::time::timeout(std::time::Duration::from_secs(1), client.recv()).await;
    assert!(gave_up.is_err(), "nothing was sent: {gave_up:?}");
    drop(client);
    let (_, end) = peer_read_to_end(&mut peer).await;
    end.unwrap();
    peer.shutdown_write();
    recorder.wait_release_of(id).await;
    let events = recorder.events_of(id);
    assert_lifecycle(&events);
    assert_eq!(closure_reason(&events), Some(ClosureReason::Unreferenced));
    server.shutdown().await;
}

/// The server's callbacks see a client's connection too, and one that reads on every connection
/// it is told of (as an echo server's `on_connection_established` does) gets the reply delivered
/// to the client before the client asks; the client's own read request, made after, must not
/// keep the connection open once the client is dropped.
#[tokio::test(start_paused = true)]
async fn reads_asked_for_by_the_callbacks_do_not_keep_a_dropped_client_open() {
    let mut builder = Server::builder();
    let recorder = Recorder::with_behavior(&mut builder, Behavior::echo());
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let (mut client, mut peer) = server.connect(REMOTE).client().await.unwrap();
    let id = client.connection().id();
    client.send("PING").await.unwrap();
    assert_eq!(peer.read_exact(4).await.unwrap(), "PING");
    peer.send("PONG").unwrap();
    // The callbacks' read takes the reply to the client's channel before the client asks.
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let reply = bounded("recv", client.recv()).await.unwrap();
    assert_eq!(reply.as_deref(), Some(&b"PONG"[..]));
    drop(client);
    let (_, end) = peer_read_to_end(&mut peer).await;
    end.unwrap();
    peer.shutdown_write();
    recorder.wait_release_of(id).await;
    assert_eq!(
        closure_reason(&recorder.events_of(id)),
        Some(ClosureReason::Unreferenced)
    );
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_reset_ends_the_client_with_its_reason() {
    let (server, recorder) = embedded_manager().await;
    let (mut client, peer) = server.connect(REMOTE).client().await.unwrap();
    peer.reset();
    let error = bounded("recv", client.recv()).await.unwrap_err();
    assert!(matches!(error, Error::ConnectionClosed), "{error:?}");
    assert_eq!(client.closure(), Some(ClosureReason::PeerReset));
    assert!(matches!(
        client.send("late").await,
        Err(Error::ConnectionClosed)
    ));
    let id = client.connection().id();
    drop(client);
    recorder.wait_release_of(id).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framed_client_sends_and_awaits_items_and_reports_a_partial_one_at_fin() {
    let (server, _recorder) = manager().await;
    let (listener, address) = peer().await;
    let peer_side = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut frames = Framed::new(stream, LengthDelimitedCodec::new());
        // Echo every frame back, reversed, then end with half a frame.
        for _ in 0..100 {
            let frame = frames.next().await.unwrap().unwrap();
            let mut reply = frame.to_vec();
            reply.reverse();
            frames.send(bytes::Bytes::from(reply)).await.unwrap();
        }
        let mut stream = frames.into_inner();
        stream.write_all(&[0, 0, 0, 9, b'h']).await.unwrap();
    });
    let mut client = bounded("connect", server.connect(address).client())
        .await
        .unwrap()
        .framed(LengthDelimitedCodec::new());
    for i in 0..100u32 {
        let request = pattern(u64::from(i), 1 + i as usize * 37);
        client
            .send(bytes::Bytes::from(request.clone()))
            .await
            .unwrap();
        let reply = bounded("a reply", client.next()).await.unwrap().unwrap();
        let mut expected = request;
        expected.reverse();
        assert_eq!(&reply[..], &expected[..], "reply {i}");
    }
    bounded("the peer", peer_side).await.unwrap();
    let partial = bounded("the end", client.next()).await;
    assert!(
        partial.as_ref().is_some_and(Result::is_err),
        "a partial frame at FIN is an error: {partial:?}"
    );
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn clients_count_against_the_limit_and_the_shutdown_closes_them() {
    let mut builder = Server::builder().max_connections(1);
    let recorder = Recorder::with_behavior(&mut builder, Behavior::quiet());
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let (mut client, mut stream) = server.connect(REMOTE).client().await.unwrap();
    let second = server.connect(REMOTE).client().await.map(|_| ());
    assert!(
        matches!(second, Err(Error::ConnectionLimitReached { limit: 1 })),
        "{second:?}"
    );
    // The shutdown tells the connection (the recorder closes it): the peer sees FIN, closes in
    // turn, and the client learns the close was ours.
    let shutdown = tokio::spawn({
        let server = server.server().clone();
        async move { server.shutdown().await }
    });
    let (data, end) = peer_read_to_end(&mut stream).await;
    assert!(data.is_empty());
    end.unwrap();
    drop(stream);
    let report = bounded("the shutdown", shutdown).await.unwrap();
    assert_eq!(report.graceful, 1);
    assert!(bounded("recv", client.recv()).await.is_err());
    assert_eq!(client.closure(), Some(ClosureReason::LocalClose));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_talks_to_a_tls_server_of_the_same_manager() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let mut builder = Server::builder().bind_tls("127.0.0.1:0", server_acceptor());
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    let tls = TlsConnect::with_connector(connector_trusting("ca.pem"), "localhost");
    let mut client = bounded(
        "connect",
        server
            .connect(server.local_addr().unwrap())
            .tls(tls)
            .client(),
    )
    .await
    .unwrap()
    .framed(LinesCodec::new());
    client.send("secret line").await.unwrap();
    let echoed = bounded("the echo", client.next())
        .await
        .transpose()
        .unwrap();
    assert_eq!(echoed.as_deref(), Some("secret line"));
    drop(client);
    recorder.wait_secure_released(2).await;
    server.shutdown().await;
}
