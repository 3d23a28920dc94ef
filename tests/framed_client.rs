//! `FramedClient` composes: a `Stream` of items and a `Sink` of items, driven with `select!`,
//! `StreamExt::next`, `SinkExt::send`/`feed`/`close` and `StreamExt::split`, with a read timeout
//! instead of timeouts by hand, and a sink that waits for room in the write queue. Over real
//! loopback sockets, against a framed line server of the same manager or a slow reading peer.
//! Every wait is bounded.

mod common;

use std::io;
use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use switchboard::codec::{FrameHandler, FramedConnection, Framing};
use switchboard::tokio_util::codec::{LinesCodec, LinesCodecError};
use switchboard::{async_trait, Callbacks, Connection, FramedClient, Server};

/// Echoes every line but those that start with `quiet`; answers the client's FIN with `bye`
/// and closes.
struct Lines;

#[async_trait]
impl Callbacks for Lines {
    async fn on_connection_client_close(&self, connection: &Connection) {
        if let Some(framed) = FramedConnection::<LinesCodec>::of(connection) {
            let _ = framed.send("bye");
        }
        connection.close();
    }
}

#[async_trait]
impl FrameHandler for Lines {
    type Codec = LinesCodec;

    fn new_codec(&self, _: &Connection) -> LinesCodec {
        LinesCodec::new_with_max_length(1024)
    }

    async fn on_frame(&self, connection: &FramedConnection<'_, LinesCodec>, line: String) {
        if !line.starts_with("quiet") {
            let _ = connection.feed(line);
        }
    }
}

/// A line server on loopback and a framed client of its manager connected to it.
async fn start() -> (Server, FramedClient<LinesCodec>) {
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .start(Framing::new(Lines))
        .await
        .unwrap();
    let client = bounded(
        "connect",
        server.connect(server.local_addr().unwrap()).client(),
    )
    .await
    .unwrap()
    .framed(LinesCodec::new());
    (server, client)
}

/// The next item, which must be a line.
async fn next_line(
    lines: &mut (impl futures::Stream<Item = Result<String, LinesCodecError>> + Unpin),
) -> String {
    bounded("a line", lines.next())
        .await
        .expect("a line, not the end")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framed_client_composes_with_select_next_send_and_split() {
    let (server, mut lines) = start().await;
    // SinkExt::send flushes each item; feed leaves them for one write at the flush.
    bounded("send", lines.send("one")).await.unwrap();
    bounded("feed", lines.feed("two")).await.unwrap();
    bounded("feed", lines.feed("three".to_owned()))
        .await
        .unwrap();
    // (The sink takes every item type the codec encodes: name one to flush.)
    bounded("flush", SinkExt::<&str>::flush(&mut lines))
        .await
        .unwrap();
    for expected in ["one", "two", "three"] {
        assert_eq!(next_line(&mut lines).await, expected);
    }

    // select!: requests from a channel go out while replies come in; a `next()` that loses
    // the race is dropped, and nothing it had received is lost.
    let (requests, mut to_send) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..50 {
        requests.send(format!("request {i}")).unwrap();
    }
    drop(requests);
    let mut replies = Vec::new();
    let mut sending = true;
    bounded("the select loop", async {
        while replies.len() < 50 {
            tokio::select! {
                request = to_send.recv(), if sending => match request {
                    Some(request) => lines.send(request).await.unwrap(),
                    None => sending = false,
                },
                reply = lines.next() => replies.push(reply.expect("not the end").unwrap()),
            }
        }
    })
    .await;
    let expected: Vec<String> = (0..50).map(|i| format!("request {i}")).collect();
    assert_eq!(replies, expected);

    // Split: one task writes, another reads; closing the writing half half-closes, and the
    // reading half still gets the server's last line, then the end.
    let (mut sink, mut stream) = lines.split();
    let writer = tokio::spawn(async move {
        for i in 0..200 {
            sink.feed(format!("line {i}")).await.unwrap();
        }
        sink.close().await.unwrap();
    });
    for i in 0..200 {
        assert_eq!(next_line(&mut stream).await, format!("line {i}"));
    }
    assert_eq!(next_line(&mut stream).await, "bye");
    assert!(bounded("the end", stream.next()).await.is_none());
    assert!(stream.next().await.is_none(), "ended for good");
    bounded("the writer", writer).await.unwrap();
    bounded("the shutdown", server.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_timeout_says_timed_out_and_the_client_reads_on() {
    let (server, lines) = start().await;
    let mut lines = lines.read_timeout(Duration::from_millis(100));
    bounded("send", lines.send("quiet, please")).await.unwrap();
    match bounded("the timeout", lines.next()).await {
        Some(Err(LinesCodecError::Io(error))) => {
            assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    // Not the end: the next line is read as usual, and again after a second timeout.
    bounded("send", lines.send("still here")).await.unwrap();
    assert_eq!(next_line(&mut lines).await, "still here");
    assert!(matches!(
        bounded("the timeout", lines.next()).await,
        Some(Err(LinesCodecError::Io(error))) if error.kind() == io::ErrorKind::TimedOut
    ));
    // Without the timeout, a wait is only as long as the peer takes.
    lines.set_read_timeout(None);
    bounded("send", lines.send("last")).await.unwrap();
    assert_eq!(next_line(&mut lines).await, "last");
    drop(lines);
    bounded("the shutdown", server.shutdown()).await;
}

/// The connections of the sink test's manager: no callbacks of their own.
struct Quiet;

impl Callbacks for Quiet {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_waits_for_room_in_the_write_queue_and_loses_nothing() {
    const LIMIT: usize = 16 * 1024;
    const LINES: usize = 1500;
    let manager = Server::builder()
        .write_queue_limit(LIMIT)
        .write_watermarks(LIMIT, LIMIT / 2)
        .start(Quiet)
        .await
        .unwrap();
    // A peer with a small receive window that reads slowly: the client's queue fills.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let address = listener.local_addr().unwrap();
    let reader = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut lines = switchboard::tokio_util::codec::FramedRead::new(stream, LinesCodec::new());
        for i in 0..LINES {
            let line = lines.next().await.expect("a line").unwrap();
            assert!(
                line.starts_with(&format!("{i:06} ")),
                "line {i}: {line:.10}"
            );
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let mut lines = bounded("connect", manager.connect(address).client())
        .await
        .unwrap()
        .framed(LinesCodec::new());
    let filler = "x".repeat(1000);
    let mut most = 0;
    bounded("the sends", async {
        for i in 0..LINES {
            lines.send(format!("{i:06} {filler}")).await.unwrap();
            most = most.max(lines.connection().queued_write_bytes());
        }
    })
    .await;
    bounded("the reader", reader).await.unwrap();
    // Waited for room rather than failing: the queue reached its high mark and never went past
    // the limit and one line.
    assert!(
        most >= LIMIT,
        "the queue never reached its high mark: {most}"
    );
    assert!(most <= LIMIT + 1100, "{most}");
    drop(lines);
    bounded("the shutdown", manager.shutdown()).await;
}
