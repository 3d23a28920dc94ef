//! Testing frame handlers without sockets (`switchboard::testing`): `Recorded` around a
//! `FrameHandler` logs its items, a `FramedPeer` speaks items through a codec, a handler in an
//! `Arc` stays in the test's hands, and a client refused at the connection limit is seen as a
//! socket client sees it. On tokio's paused clock; every wait is bounded by the peer's and the
//! log's wait limits.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use switchboard::codec::{FrameHandler, FramedConnection, Framing};
use switchboard::testing::{Event, Recorded};
use switchboard::tokio_util::codec::{LinesCodec, LinesCodecError};
use switchboard::{
    async_trait, BytesMut, Callbacks, ClosureReason, Connection, Error, LimitPolicy, Server,
};

fn address(last: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, last], 40000))
}

/// Answers `PING` with `PONG` and anything else with `ERR`; keeps every line it got.
#[derive(Default)]
struct Pinger {
    lines: Mutex<Vec<String>>,
}

impl Callbacks for Pinger {}

#[async_trait]
impl FrameHandler for Pinger {
    type Codec = LinesCodec;

    fn new_codec(&self, _: &Connection) -> LinesCodec {
        LinesCodec::new_with_max_length(64)
    }

    async fn on_frame(&self, connection: &FramedConnection<'_, LinesCodec>, line: String) {
        let reply = if line == "PING" { "PONG" } else { "ERR" };
        self.lines.lock().unwrap().push(line);
        let _ = connection.send(reply);
    }
}

#[tokio::test(start_paused = true)]
async fn recorded_logs_a_frame_handlers_items_and_its_decode_error_in_order() {
    let (handler, events) = Recorded::new(Pinger::default());
    let server = Server::builder()
        .embedded()
        .start(Framing::new(handler))
        .await
        .unwrap();
    let peer = server.accept(address(1)).await.unwrap();
    let id = peer.id();
    let mut peer = peer.framed(LinesCodec::new());
    peer.send("PING").unwrap();
    peer.send("what").unwrap();
    assert_eq!(peer.next().await.unwrap().unwrap(), "PONG");
    assert_eq!(peer.next().await.unwrap().unwrap(), "ERR");
    peer.send("x".repeat(100)).unwrap();
    assert!(peer.next().await.is_none(), "FIN after the error");
    assert_eq!(
        events.wait_for_release(id).await,
        ClosureReason::FrameTooLong
    );
    let log: Vec<Event> = events
        .of(id)
        .into_iter()
        .filter(|event| !matches!(event, Event::Written(..)))
        .collect();
    assert_eq!(log[0], Event::Established(id, address(1)));
    assert_eq!(log[1], Event::frame(id, &"PING"));
    assert_eq!(log[2], Event::frame(id, &"what"));
    assert!(
        matches!(&log[3], Event::DecodeError(_, text) if text.contains("max line length")),
        "{log:#?}"
    );
    assert_eq!(log[4], Event::Closure(id, ClosureReason::FrameTooLong));
    assert_eq!(events.count(|event| matches!(event, Event::Read(..))), 0);
}

#[tokio::test(start_paused = true)]
async fn a_handler_in_an_arc_stays_in_the_tests_hands() {
    let handler = Arc::new(Pinger::default());
    let (recorded, events) = Recorded::new(handler.clone());
    let server = Server::builder()
        .embedded()
        .start(Framing::new(recorded))
        .await
        .unwrap();
    let mut peer = server
        .accept(address(1))
        .await
        .unwrap()
        .framed(LinesCodec::new());
    peer.send("PING").unwrap();
    peer.send("PING").unwrap();
    for _ in 0..2 {
        assert_eq!(peer.next().await.unwrap().unwrap(), "PONG");
    }
    assert_eq!(*handler.lines.lock().unwrap(), ["PING", "PING"]);
    assert_eq!(events.count(|event| matches!(event, Event::Frame(..))), 2);
}

/// Plain callbacks in an `Arc`: every event reaches them (a default in the `Arc`'s impl would
/// swallow it).
#[tokio::test(start_paused = true)]
async fn plain_callbacks_in_an_arc_get_every_event() {
    #[derive(Default)]
    struct Echo {
        closures: Mutex<Vec<ClosureReason>>,
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
        async fn on_connection_closure(&self, _: &Connection, reason: ClosureReason) {
            self.closures.lock().unwrap().push(reason);
        }
    }

    let echo = Arc::new(Echo::default());
    let (callbacks, events) = Recorded::new(echo.clone());
    let server = Server::builder().embedded().start(callbacks).await.unwrap();
    let mut peer = server.accept(address(1)).await.unwrap();
    peer.send("hello").unwrap();
    assert_eq!(peer.read().await.unwrap(), "hello");
    peer.shutdown_write();
    assert_eq!(peer.read().await.unwrap(), "");
    events.wait_for_release(peer.id()).await;
    assert_eq!(*echo.closures.lock().unwrap(), [ClosureReason::PeerClosed]);
}

#[tokio::test(start_paused = true)]
async fn a_framed_peer_finishes_a_last_item_at_fin_and_reports_a_reset() {
    /// Sends two lines, the second without its newline, then closes.
    struct Two;

    impl Callbacks for Two {}

    #[async_trait]
    impl FrameHandler for Two {
        type Codec = LinesCodec;
        fn new_codec(&self, _: &Connection) -> LinesCodec {
            LinesCodec::new()
        }
        async fn on_frame(&self, connection: &FramedConnection<'_, LinesCodec>, line: String) {
            if line == "two" {
                let _ = connection.write("one\ntwo");
                connection.close();
            } else {
                connection.abort();
            }
        }
    }

    let server = Server::builder()
        .embedded()
        .start(Framing::new(Two))
        .await
        .unwrap();
    let mut peer = server
        .accept(address(1))
        .await
        .unwrap()
        .framed(LinesCodec::new());
    peer.send("two").unwrap();
    assert_eq!(peer.next().await.unwrap().unwrap(), "one");
    assert_eq!(peer.next().await.unwrap().unwrap(), "two", "decode_eof");
    assert!(peer.next().await.is_none());
    assert!(peer.next().await.is_none(), "and stays ended");

    let mut peer = server
        .accept(address(2))
        .await
        .unwrap()
        .framed(LinesCodec::new());
    peer.send("abort").unwrap();
    match peer.next().await {
        Some(Err(LinesCodecError::Io(error))) => {
            assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
        }
        other => panic!("expected a reset, got {other:?}"),
    }
}

/// With `LimitPolicy::AcceptAndClose` and a refusal message, a refused embedded client reads the
/// message and FIN, as a socket client does; no callback but `on_maximum_connections` runs for
/// it.
#[tokio::test(start_paused = true)]
async fn a_client_refused_at_the_limit_reads_the_refusal_message_then_fin() {
    let (handler, events) = Recorded::new(Pinger::default());
    let server = Server::builder()
        .max_connections(1)
        .at_limit(LimitPolicy::AcceptAndClose)
        .refusal_message("ERR server full\n")
        .embedded()
        .start(Framing::new(handler))
        .await
        .unwrap();
    let mut served = server
        .accept(address(1))
        .await
        .unwrap()
        .framed(LinesCodec::new());
    served.send("PING").unwrap();
    assert_eq!(served.next().await.unwrap().unwrap(), "PONG");

    let mut refused = server
        .accept(address(2))
        .await
        .unwrap()
        .framed(LinesCodec::new());
    assert_eq!(refused.next().await.unwrap().unwrap(), "ERR server full");
    assert!(refused.next().await.is_none(), "FIN");
    assert!(!refused.peer().was_reset_by_server());
    assert_eq!(refused.id().get(), 0, "never a connection");
    // Again: counted each time, reported once.
    let mut again = server.accept(address(3)).await.unwrap();
    assert_eq!(again.read_to_end().await.unwrap(), "ERR server full\n");
    assert_eq!(events.count(|event| *event == Event::MaximumConnections), 1);
    assert_eq!(
        events.count(|event| matches!(event, Event::Established(..))),
        1
    );
    let stats = server.stats();
    assert_eq!((stats.accepted, stats.refused_at_limit), (1, 2));

    // A slot frees: the next client is served.
    let id = served.id();
    drop(served);
    events.wait_for_release(id).await;
    let mut next = server
        .accept(address(4))
        .await
        .unwrap()
        .framed(LinesCodec::new());
    next.send("PING").unwrap();
    assert_eq!(next.next().await.unwrap().unwrap(), "PONG");
}

#[tokio::test(start_paused = true)]
async fn without_a_message_a_refused_client_is_reset_and_with_stop_accepting_held_back() {
    let server = Server::builder()
        .max_connections(1)
        .at_limit(LimitPolicy::AcceptAndClose)
        .embedded()
        .start(Framing::new(Pinger::default()))
        .await
        .unwrap();
    let _served = server.accept(address(1)).await.unwrap();
    let mut refused = server.accept(address(2)).await.unwrap();
    assert_eq!(
        refused.read().await.unwrap_err().kind(),
        io::ErrorKind::ConnectionReset
    );
    assert!(refused.was_reset_by_server());

    let server = Server::builder()
        .max_connections(1)
        .refusal_message("ERR server full\n")
        .embedded()
        .start(Framing::new(Pinger::default()))
        .await
        .unwrap();
    let _served = server.accept(address(1)).await.unwrap();
    assert!(matches!(
        server.accept(address(2)).await,
        Err(Error::ConnectionLimitReached { limit: 1 })
    ));
    assert_eq!(server.stats().refused_at_limit, 0);
}
