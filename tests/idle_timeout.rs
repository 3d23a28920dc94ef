//! The idle timeout's two endings (guarantee 23, docs/guarantees.md): by default a reset; with
//! `on_idle_timeout` answering `IdleAction::Close`, a last message and FIN. The closure reason
//! is `IdleTimedOut` either way. On the embedded connection (tokio's paused clock: the timeout
//! costs no real time), for plain and framed handlers, and over a real loopback socket. Every
//! wait is bounded; the socket test only checks what arrives, not when.

mod common;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{read_to_end, skip_under_wine, WAIT, WINE_RESET_READ_AS_EOF};
use switchboard::codec::{FrameHandler, FramedConnection, Framing};
use switchboard::testing::{Event, Recorded};
use switchboard::tokio_util::codec::LinesCodec;
use switchboard::{
    async_trait, BytesMut, Callbacks, ClosureReason, Connection, IdleAction, Server,
};
use tokio::io::AsyncWriteExt;

const IDLE: Duration = Duration::from_secs(30);
const PEER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
    40000,
);

/// An echo server whose idle connections get `ERR idle` and FIN, when `graceful`.
struct Echo {
    graceful: bool,
}

#[async_trait]
impl Callbacks for Echo {
    async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
        connection.read();
    }
    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        let _ = connection.write(data.freeze());
        connection.read();
    }
    async fn on_idle_timeout(&self, connection: &Connection) -> IdleAction {
        if self.graceful {
            let _ = connection.write("ERR idle\n");
            IdleAction::Close
        } else {
            IdleAction::Reset
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_can_get_a_last_line_and_fin() {
    let (callbacks, events) = Recorded::new(Echo { graceful: true });
    let server = Server::builder()
        .idle_timeout(Some(IDLE))
        .embedded()
        .start(callbacks)
        .await
        .unwrap();
    let mut peer = server.accept(PEER).await.unwrap();
    peer.send("hi").unwrap();
    assert_eq!(peer.read().await.unwrap(), "hi");
    let quiet = tokio::time::Instant::now();
    assert_eq!(peer.read_to_end().await.unwrap(), "ERR idle\n");
    assert!(quiet.elapsed() >= IDLE, "not before the timeout");
    assert!(!peer.was_reset_by_server());
    // The server waits for our FIN, as any graceful close does.
    peer.shutdown_write();
    assert_eq!(
        events.wait_for_release(peer.id()).await,
        ClosureReason::IdleTimedOut
    );
    assert_eq!(
        events.count(|event| *event == Event::IdleTimeout(peer.id(), IdleAction::Close)),
        1
    );
    assert_eq!(server.stats().closures(ClosureReason::IdleTimedOut), 1);
}

#[tokio::test(start_paused = true)]
async fn by_default_an_idle_connection_is_reset() {
    let (callbacks, events) = Recorded::new(Echo { graceful: false });
    let server = Server::builder()
        .idle_timeout(Some(IDLE))
        .embedded()
        .start(callbacks)
        .await
        .unwrap();
    let mut peer = server.accept(PEER).await.unwrap();
    let error = peer.read().await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(
        events.wait_for_release(peer.id()).await,
        ClosureReason::IdleTimedOut
    );
    let events = events.of(peer.id());
    let asked = events
        .iter()
        .position(|event| matches!(event, Event::IdleTimeout(_, IdleAction::Reset)))
        .expect("on_idle_timeout ran");
    let closure = events
        .iter()
        .position(|event| matches!(event, Event::Closure(..)))
        .unwrap();
    assert!(asked < closure, "{events:#?}");
}

/// A peer that never reads the last line: the graceful close is bounded by the close timeout,
/// then reset.
#[tokio::test(start_paused = true)]
async fn a_graceful_idle_close_to_a_peer_that_never_reads_is_bounded() {
    let (callbacks, events) = Recorded::new(Echo { graceful: true });
    let server = Server::builder()
        .idle_timeout(Some(IDLE))
        .close_timeout(Duration::from_secs(5))
        .embedded()
        .start(callbacks)
        .await
        .unwrap();
    let peer = server.accept(PEER).await.unwrap();
    peer.set_receive_window(0);
    assert_eq!(
        events.wait_for_release(peer.id()).await,
        ClosureReason::CloseTimedOut
    );
    assert!(peer.was_reset_by_server());
}

/// A framed handler feeds its last item through the codec.
struct Lines;

impl Callbacks for Lines {}

#[async_trait]
impl FrameHandler for Lines {
    type Codec = LinesCodec;
    fn new_codec(&self, _: &Connection) -> LinesCodec {
        LinesCodec::new()
    }
    async fn on_frame(&self, connection: &FramedConnection<'_, LinesCodec>, line: String) {
        let _ = connection.send(format!("OK {line}"));
    }
}

/// `Callbacks::on_idle_timeout` of a framed handler: the frame layer flushes what it fed.
struct IdleLines;

#[async_trait]
impl Callbacks for IdleLines {
    async fn on_idle_timeout(&self, connection: &Connection) -> IdleAction {
        if let Some(framed) = FramedConnection::<LinesCodec>::of(connection) {
            let _ = framed.feed("ERR idle");
        }
        IdleAction::Close
    }
}

#[async_trait]
impl FrameHandler for IdleLines {
    type Codec = LinesCodec;
    fn new_codec(&self, connection: &Connection) -> LinesCodec {
        Lines.new_codec(connection)
    }
    async fn on_frame(&self, connection: &FramedConnection<'_, LinesCodec>, line: String) {
        Lines.on_frame(connection, line).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_framed_handler_sends_its_last_item_through_the_codec() {
    let server = Server::builder()
        .idle_timeout(Some(IDLE))
        .embedded()
        .start(Framing::new(Arc::new(IdleLines)))
        .await
        .unwrap();
    let mut peer = server.accept(PEER).await.unwrap();
    peer.send("a\n").unwrap();
    assert_eq!(peer.read_to_end().await.unwrap(), "OK a\nERR idle\n");
}

/// Over a real socket: the client reads the last line, then a clean end of stream (FIN, not a
/// reset), and the server reports `IdleTimedOut`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_socket_the_client_reads_the_last_line_then_fin() {
    let (callbacks, events) = Recorded::new(Echo { graceful: true });
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .idle_timeout(Some(Duration::from_millis(200)))
        .start(callbacks)
        .await
        .unwrap();
    let mut client = tokio::net::TcpStream::connect(server.local_addr().unwrap())
        .await
        .unwrap();
    client.write_all(b"ping").await.unwrap();
    let (data, end) = read_to_end(&mut client).await;
    end.expect("a clean end of stream, not a reset");
    assert_eq!(data, b"pingERR idle\n");
    drop(client);
    let closure = tokio::time::timeout(
        WAIT,
        events.wait_for(|event| matches!(event, Event::Closure(..))),
    )
    .await
    .expect("the closure");
    assert!(
        matches!(closure, Event::Closure(_, ClosureReason::IdleTimedOut)),
        "{closure:?}"
    );
    server.shutdown().await;
}

/// And by default, over a socket, the client sees a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_socket_the_default_is_a_reset() {
    if skip_under_wine(&WINE_RESET_READ_AS_EOF) {
        return;
    }
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .idle_timeout(Some(Duration::from_millis(200)))
        .start(Echo { graceful: false })
        .await
        .unwrap();
    let mut client = tokio::net::TcpStream::connect(server.local_addr().unwrap())
        .await
        .unwrap();
    let (data, end) = read_to_end(&mut client).await;
    assert!(data.is_empty());
    assert_eq!(
        end.expect_err("a reset").kind(),
        io::ErrorKind::ConnectionReset
    );
    server.shutdown().await;
}
