//! The frame layer (guarantee 13, docs/guarantees.md): items whole and in order however the bytes
//! are cut, errors after the items before them, over-long and partial frames, TLS, the write
//! queue's backpressure reaching the decoder, and every other callback still reaching the handler.
//! On the embedded connection of `switchboard::testing` (`embedded().start(Framing::new(..))`, the paused clock)
//! where the socket is not the point; TLS, a pipelined burst and a sending task over real loopback
//! sockets.

mod common;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use switchboard::codec::{
    DecodeError, FrameError, FrameHandler, FramedConnection, Framing, SendError,
};
use switchboard::socket2::SockRef;
use switchboard::testing::EmbeddedServer;
use switchboard::tokio_util::codec::{Decoder, LengthDelimitedCodec, LinesCodec};
use switchboard::{
    async_trait, Bytes, BytesMut, Callbacks, ClosureReason, Connection, ConnectionId, Direction,
    Error, Server, ServerBuilder, ShutdownReport, TlsInfo, UserData,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the probe does with an item, besides recording it.
type Reply<C> = fn(&FramedConnection<'_, C>, &<C as Decoder>::Item);

/// A frame handler that records its items and decode errors, answers through `reply`, and
/// passes every connection event to a quiet [`Recorder`] (which neither reads nor writes).
struct Probe<C: Decoder> {
    recorder: Recorder,
    codec: fn() -> C,
    reply: Reply<C>,
    frames: Arc<Mutex<Vec<(ConnectionId, String)>>>,
    errors: Arc<Mutex<Vec<(ConnectionId, String, ClosureReason)>>>,
    /// Run in `on_decode_error`: a protocol's last word.
    last_word: Option<fn(&FramedConnection<'_, C>)>,
}

/// What a test reads from a running probe.
struct Seen {
    recorder: Recorder,
    frames: Arc<Mutex<Vec<(ConnectionId, String)>>>,
    errors: Arc<Mutex<Vec<(ConnectionId, String, ClosureReason)>>>,
}

impl Seen {
    fn frames(&self) -> Vec<String> {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .map(|(_, item)| item.clone())
            .collect()
    }

    fn errors(&self) -> Vec<(String, ClosureReason)> {
        self.errors
            .lock()
            .unwrap()
            .iter()
            .map(|(_, text, reason)| (text.clone(), *reason))
            .collect()
    }
}

/// Starts `builder` framed with a probe; returns the server and what the test reads.
async fn start<C>(
    mut builder: ServerBuilder,
    codec: fn() -> C,
    reply: Reply<C>,
    change: impl FnOnce(&mut Probe<C>),
    framing: impl FnOnce(Framing<Probe<C>>) -> Framing<Probe<C>>,
) -> (Server, Seen)
where
    Probe<C>: FrameHandler,
    C: Decoder,
{
    let (probe, seen) = probe(&mut builder, codec, reply, change);
    let server = builder
        .bind("127.0.0.1:0")
        .start(framing(Framing::new(probe)))
        .await
        .expect("start");
    (server, seen)
}

/// [`start`], embedded (`switchboard::testing`): no listener; connect with `server.connect`.
async fn start_embedded<C>(
    mut builder: ServerBuilder,
    codec: fn() -> C,
    reply: Reply<C>,
    change: impl FnOnce(&mut Probe<C>),
    framing: impl FnOnce(Framing<Probe<C>>) -> Framing<Probe<C>>,
) -> (EmbeddedServer, Seen)
where
    Probe<C>: FrameHandler,
    C: Decoder,
{
    let (probe, seen) = probe(&mut builder, codec, reply, change);
    let server = builder
        .embedded()
        .start(framing(Framing::new(probe)))
        .await
        .expect("start");
    (server, seen)
}

/// A probe whose recorder's slots come from `builder`, and what the test reads of it.
fn probe<C: Decoder>(
    builder: &mut ServerBuilder,
    codec: fn() -> C,
    reply: Reply<C>,
    change: impl FnOnce(&mut Probe<C>),
) -> (Probe<C>, Seen) {
    let recorder = Recorder::with_behavior(builder, Behavior::quiet());
    let mut probe = Probe {
        recorder: recorder.clone(),
        codec,
        reply,
        frames: Arc::default(),
        errors: Arc::default(),
        last_word: None,
    };
    change(&mut probe);
    let seen = Seen {
        recorder,
        frames: probe.frames.clone(),
        errors: probe.errors.clone(),
    };
    (probe, seen)
}

fn echo_line(connection: &FramedConnection<'_, LinesCodec>, line: &String) {
    connection.feed(format!("<{line}>")).expect("feed");
}

fn echo_length(connection: &FramedConnection<'_, LengthDelimitedCodec>, item: &BytesMut) {
    connection.send(item.clone().freeze()).expect("send");
}

#[async_trait]
impl<C> FrameHandler for Probe<C>
where
    C: Decoder<Item: std::fmt::Debug + Send, Error: std::fmt::Display + Send + Sync + 'static>
        + Send
        + 'static,
{
    type Codec = C;

    fn new_codec(&self, _: &Connection) -> C {
        (self.codec)()
    }

    async fn on_frame(&self, connection: &FramedConnection<'_, C>, frame: C::Item) {
        (self.reply)(connection, &frame);
        let text = format!("{frame:?}");
        let text = text.trim_matches('"').trim_start_matches("b\"").to_string();
        self.frames.lock().unwrap().push((connection.id(), text));
    }

    async fn on_decode_error(
        &self,
        connection: &FramedConnection<'_, C>,
        error: &FrameError<DecodeError<Self>>,
    ) {
        if let Some(last_word) = self.last_word {
            last_word(connection);
        }
        self.errors.lock().unwrap().push((
            connection.id(),
            error.to_string(),
            error.closure_reason(),
        ));
    }
}

/// Passes the connection events to the recorder.
#[async_trait]
impl<C: Decoder + Send + 'static> Callbacks for Probe<C> {
    async fn on_connection_established(&self, connection: &Connection, address: &SocketAddr) {
        self.recorder
            .on_connection_established(connection, address)
            .await;
    }
    async fn on_read_completed(&self, _: &Connection, _: BytesMut) {
        panic!("the frame layer reads: on_read_completed must not reach the handler");
    }
    fn on_socket_created(&self, socket: SockRef<'_>, direction: Direction) {
        self.recorder.on_socket_created(socket, direction);
    }
    async fn on_write_completed(&self, connection: &Connection, data: Bytes) {
        self.recorder.on_write_completed(connection, data).await;
    }
    async fn on_write_buffer_high(&self, connection: &Connection) {
        self.recorder.on_write_buffer_high(connection).await;
    }
    async fn on_write_buffer_low(&self, connection: &Connection) {
        self.recorder.on_write_buffer_low(connection).await;
    }
    async fn on_shutdown_requested(&self, connection: &Connection) {
        self.recorder.on_shutdown_requested(connection).await;
    }
    async fn on_shutdown_complete(&self, report: ShutdownReport) {
        self.recorder.on_shutdown_complete(report).await;
    }
    async fn on_connection_client_close(&self, connection: &Connection) {
        self.recorder.on_connection_client_close(connection).await;
    }
    async fn on_connection_reset(&self, connection: &Connection, error: &io::Error) {
        self.recorder.on_connection_reset(connection, error).await;
    }
    async fn on_connection_closure(&self, connection: &Connection, reason: ClosureReason) {
        self.recorder
            .on_connection_closure(connection, reason)
            .await;
    }
    async fn on_connection_closed(&self, connection: &Connection) {
        self.recorder.on_connection_closed(connection).await;
    }
    async fn on_socket_released(&self, user_data: UserData) {
        self.recorder.on_socket_released(user_data).await;
    }
    async fn on_negotiation_complete(&self, connection: &Connection, info: &TlsInfo) {
        self.recorder
            .on_negotiation_complete(connection, info)
            .await;
    }
    async fn on_secure_connection_established(
        &self,
        connection: &Connection,
        address: &SocketAddr,
    ) {
        self.recorder
            .on_secure_connection_established(connection, address)
            .await;
    }
    async fn on_secure_socket_released(&self, id: ConnectionId) {
        self.recorder.on_secure_socket_released(id).await;
    }
    async fn on_error(&self, error: &Error) {
        self.recorder.on_error(error).await;
    }
}

/// Writes `data`, then reads until the server closes; returns what came back.
async fn exchange(address: SocketAddr, data: &[u8], half_close: bool) -> Vec<u8> {
    let mut client = client(address).await;
    bounded("write", client.write_all(data)).await.unwrap();
    if half_close {
        client.shutdown().await.unwrap();
    }
    let (reply, ended) = read_to_end(&mut client).await;
    ended.expect("a clean end");
    reply
}

/// [`exchange`] with an embedded server: `data` in one chunk.
async fn exchange_embedded(server: &EmbeddedServer, data: &[u8], half_close: bool) -> Vec<u8> {
    let mut peer = server.accept(peer_addr(1)).await.unwrap();
    peer.send(data).unwrap();
    if half_close {
        peer.shutdown_write();
    }
    let (reply, ended) = peer_read_to_end(&mut peer).await;
    ended.expect("a clean end");
    reply
}

#[tokio::test(start_paused = true)]
async fn items_arrive_whole_and_in_order_with_the_bytes_cut_at_every_byte() {
    // A read buffer of one byte: every read is one byte, so every item is cut at every byte.
    let builder = Server::builder().read_buffer_size(1);
    let (server, seen) = start_embedded(builder, LinesCodec::new, echo_line, |_| {}, |f| f).await;
    let reply = exchange_embedded(&server, b"first line\nsecond\r\n\nthird\n", true).await;
    assert_eq!(reply, b"<first line>\n<second>\n<>\n<third>\n");
    assert_eq!(seen.frames(), ["first line", "second", "", "third"]);
    seen.recorder.wait_released(1).await;
    let events = seen.recorder.events_of(seen.recorder.established()[0]);
    assert_lifecycle(&events);
    assert_eq!(closure_reason(&events), Some(ClosureReason::PeerClosed));
    server.shutdown().await;
}

#[tokio::test]
async fn a_pipelined_burst_is_answered_in_order() {
    let (server, seen) = start(Server::builder(), LinesCodec::new, echo_line, |_| {}, |f| f).await;
    let address = server.local_addr().unwrap();
    let mut request = String::new();
    let mut expected = String::new();
    for i in 0..5_000 {
        request.push_str(&format!("item {i}\n"));
        expected.push_str(&format!("<item {i}>\n"));
    }
    let reply = exchange(address, request.as_bytes(), true).await;
    assert!(reply == expected.as_bytes(), "{} bytes back", reply.len());
    assert_eq!(seen.frames().len(), 5_000);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_decode_error_ends_the_connection_after_the_items_before_it() {
    let (server, seen) = start_embedded(
        Server::builder(),
        LinesCodec::new,
        echo_line,
        |probe| {
            probe.last_word = Some(|connection| connection.feed("ERR bad input").expect("feed"))
        },
        |f| f,
    )
    .await;
    // Invalid UTF-8 on the third line: LinesCodec's decode error.
    let reply = exchange_embedded(&server, b"one\ntwo\n\xff\xfe\nthree\n", false).await;
    assert_eq!(reply, b"<one>\n<two>\nERR bad input\n");
    assert_eq!(seen.frames(), ["one", "two"], "nothing after the error");
    let errors = seen.errors();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].1, ClosureReason::Decode);
    seen.recorder.wait_released(1).await;
    let id = seen.recorder.established()[0];
    assert_eq!(seen.recorder.closure(id), Some(ClosureReason::Decode));
    assert_lifecycle(&seen.recorder.events_of(id));
    assert_eq!(server.stats().closures(ClosureReason::Decode), 1);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_decoders_own_limit_and_the_frame_layers_end_it_as_too_long() {
    // LinesCodec's own maximum.
    let (server, seen) = start_embedded(
        Server::builder(),
        || LinesCodec::new_with_max_length(8),
        echo_line,
        |_| {},
        |f| f,
    )
    .await;
    let reply =
        exchange_embedded(&server, b"short\nthis line is far too long\nnever\n", false).await;
    assert_eq!(reply, b"<short>\n");
    assert_eq!(seen.frames(), ["short"]);
    assert_eq!(seen.errors()[0].1, ClosureReason::FrameTooLong);
    seen.recorder.wait_released(1).await;
    assert_eq!(server.stats().closures(ClosureReason::FrameTooLong), 1);
    server.shutdown().await;

    // The frame layer's maximum, with a codec that has none: 100 bytes, then one more.
    let (server, seen) = start_embedded(
        Server::builder(),
        LinesCodec::new,
        echo_line,
        |_| {},
        |f| f.max_frame_length(100),
    )
    .await;
    let mut request = b"fine\n".to_vec();
    request.extend_from_slice(&[b'x'; 5_000]);
    let reply = exchange_embedded(&server, &request, false).await;
    assert_eq!(reply, b"<fine>\n");
    let errors = seen.errors();
    assert!(
        errors[0].0.starts_with("frame too long") && errors[0].0.contains("at most 100"),
        "{errors:?}"
    );
    assert_eq!(errors[0].1, ClosureReason::FrameTooLong);
    seen.recorder.wait_released(1).await;
    let id = seen.recorder.established()[0];
    assert_eq!(seen.recorder.closure(id), Some(ClosureReason::FrameTooLong));
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_partial_frame_at_the_peers_fin_is_reported() {
    let (server, seen) = start_embedded(
        Server::builder(),
        LengthDelimitedCodec::new,
        echo_length,
        |_| {},
        |f| f,
    )
    .await;
    // One whole frame, then 3 of a frame's 10 bytes, then FIN.
    let request = b"\0\0\0\x02hi\0\0\0\x0aabc";
    let reply = exchange_embedded(&server, request, true).await;
    assert_eq!(reply, b"\0\0\0\x02hi", "the whole frame was answered");
    assert_eq!(seen.frames(), ["hi"]);
    assert_eq!(
        seen.errors(),
        [(
            "the stream ended 7 bytes into a frame".to_string(),
            ClosureReason::PartialFrame
        )]
    );
    seen.recorder.wait_released(1).await;
    let id = seen.recorder.established()[0];
    let events = seen.recorder.events_of(id);
    assert_lifecycle(&events);
    assert!(events.iter().any(|e| matches!(e, Event::ClientClose(_))));
    assert_eq!(closure_reason(&events), Some(ClosureReason::PartialFrame));
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_last_line_without_its_newline_is_finished_at_fin() {
    let (server, seen) =
        start_embedded(Server::builder(), LinesCodec::new, echo_line, |_| {}, |f| f).await;
    let reply = exchange_embedded(&server, b"one\nlast", true).await;
    assert_eq!(reply, b"<one>\n<last>\n");
    assert!(seen.errors().is_empty());
    seen.recorder.wait_released(1).await;
    let id = seen.recorder.established()[0];
    assert_eq!(seen.recorder.closure(id), Some(ClosureReason::PeerClosed));
    server.shutdown().await;
}

#[tokio::test]
async fn items_over_tls() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let builder = Server::builder().tls(server_acceptor()).read_buffer_size(7);
    let (server, seen) = start(builder, LinesCodec::new, echo_line, |_| {}, |f| f).await;
    let tcp = client(server.local_addr().unwrap()).await;
    let mut tls = bounded("handshake", tls_connector().connect("localhost", tcp))
        .await
        .expect("handshake");
    for piece in ["hel", "lo\nwor", "ld\n", "\n"] {
        bounded("write", tls.write_all(piece.as_bytes()))
            .await
            .unwrap();
        tls.flush().await.unwrap();
    }
    let mut reply = vec![0; "<hello>\n<world>\n<>\n".len()];
    bounded("replies", tls.read_exact(&mut reply))
        .await
        .unwrap();
    assert_eq!(reply, b"<hello>\n<world>\n<>\n");
    bounded("close", tls.shutdown()).await.unwrap();
    let (_, ended) = read_to_end(&mut tls).await;
    ended.expect("close_notify, then FIN");
    seen.recorder.wait_secure_released(1).await;
    assert_eq!(seen.frames(), ["hello", "world", ""]);
    let id = seen.recorder.established()[0];
    let events = seen.recorder.events();
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Secure(i, _) if *i == id)));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::SecureReleased(i) if *i == id)));
    server.shutdown().await;
}

/// Answers each line with 1 KiB; items come only while the queue is below its high watermark.
fn kilobyte(connection: &FramedConnection<'_, LinesCodec>, _: &String) {
    let queued = connection.queued_write_bytes();
    assert!(
        queued < 8 * 1024,
        "an item delivered with {queued} bytes queued"
    );
    connection.feed("k".repeat(1023)).expect("feed");
}

#[tokio::test(start_paused = true)]
async fn a_high_write_queue_pauses_delivery_until_it_drains() {
    const LINES: usize = 20_000;
    let builder = Server::builder()
        .write_queue_limit(8 * 1024)
        .write_watermarks(8 * 1024, 4 * 1024);
    let (server, seen) = start_embedded(builder, LinesCodec::new, kilobyte, |_| {}, |f| f).await;
    // Windows of a socket buffer's size both ways, so that what is held on the way is small
    // beside what is sent: 2 MB of requests, 20 MB of replies.
    let mut reader = server.accept(peer_addr(1)).await.unwrap();
    reader.set_send_window(65536);
    reader.set_receive_window(65536);
    let writer = reader.sender();
    // Every request, with no reply read: the server stops taking items once its queue is high,
    // then the send window fills and this write stalls.
    let sender = tokio::spawn(async move {
        let line = format!("{}\n", "x".repeat(99));
        writer
            .send_all(line.repeat(LINES).as_bytes())
            .await
            .unwrap();
        writer.shutdown_write();
        writer
    });
    eventually("the queue goes high", || {
        seen.recorder
            .count(|e| matches!(e, Event::WriteBufferHigh(..)))
            > 0
    })
    .await;
    // Delivery stalls well short of every item while nothing is read.
    let mut delivered = 0;
    bounded("delivery stalls", async {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let now = seen.frames.lock().unwrap().len();
            if now == delivered {
                break;
            }
            delivered = now;
        }
    })
    .await;
    assert!(
        delivered < LINES,
        "{delivered} items delivered, no reply read"
    );
    assert!(
        !sender.is_finished(),
        "every request taken with no reply read"
    );
    // The queue never held more than its limit, the output flushed at once (16 KiB) and a
    // reply.
    let most_queued = seen
        .recorder
        .events()
        .iter()
        .filter_map(|event| match event {
            Event::WriteBufferHigh(_, queued) => Some(*queued),
            _ => None,
        })
        .max()
        .unwrap();
    assert!(most_queued <= (8 + 16 + 1) * 1024, "{most_queued} queued");
    // Then every reply comes, in full, in order, once the client reads.
    let (reply, end) = peer_read_to_end(&mut reader).await;
    end.unwrap();
    assert_eq!(reply.len(), LINES * 1024);
    assert!(reply.chunks(1024).all(|chunk| chunk.ends_with(b"kk\n")));
    let _writer = bounded("the requests", sender).await.unwrap();
    assert_eq!(seen.frames().len(), LINES);
    let highs = seen
        .recorder
        .count(|e| matches!(e, Event::WriteBufferHigh(..)));
    let lows = seen
        .recorder
        .count(|e| matches!(e, Event::WriteBufferLow(..)));
    assert!(highs >= 1 && lows >= 1, "{highs} highs, {lows} lows");
    server.shutdown().await;
}

/// On "flood": a task of its own sends 1 KiB items until one is refused, then waits for room
/// and sends "done".
fn flood(connection: &FramedConnection<'_, LinesCodec>, line: &String) {
    if line != "flood" {
        return;
    }
    let connection = connection.connection().clone();
    tokio::spawn(async move {
        let framed = FramedConnection::<LinesCodec>::of(&connection).expect("framed");
        let mut sent = 0;
        let refused = loop {
            match framed.send("f".repeat(1023)) {
                Ok(()) => sent += 1,
                Err(refused) => break refused,
            }
        };
        let SendError::Write(refused) = refused else {
            panic!("not a write refusal: {refused}");
        };
        assert!(matches!(refused.error(), Error::WriteQueueFull { .. }));
        assert!(
            refused.data().is_empty(),
            "refused at the limit before it was encoded"
        );
        framed.writable().await.expect("room");
        framed.send(format!("done after {sent}")).expect("send");
    });
}

#[tokio::test]
async fn a_task_of_its_own_sends_items_and_sees_the_queue_full() {
    let builder = Server::builder()
        .write_queue_limit(16 * 1024)
        .write_watermarks(16 * 1024, 8 * 1024);
    let (server, seen) = start(builder, LinesCodec::new, flood, |_| {}, |f| f).await;
    let mut client = client(server.local_addr().unwrap()).await;
    bounded("write", client.write_all(b"flood\n"))
        .await
        .unwrap();
    let mut reply = Vec::new();
    bounded("the flood and its end", async {
        while !reply.ends_with(b"\n") || !String::from_utf8_lossy(&reply).contains("done") {
            let mut chunk = [0; 4096];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early");
            reply.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let text = String::from_utf8(reply).unwrap();
    let last = text.lines().last().unwrap();
    let sent: usize = last.strip_prefix("done after ").unwrap().parse().unwrap();
    assert!(sent >= 16, "{sent} sent before the queue was full");
    assert_eq!(text.lines().count(), sent + 1);
    drop(client);
    seen.recorder.wait_released(1).await;
    server.shutdown().await;
}

/// Greets in `on_connection_established` through [`FramedConnection::of`].
struct Greeter;

#[async_trait]
impl Callbacks for Greeter {
    async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
        let framed = FramedConnection::<LinesCodec>::of(connection).expect("framed");
        framed.feed("hello").expect("feed");
        assert!(
            FramedConnection::<LengthDelimitedCodec>::of(connection).is_none(),
            "another codec is not found"
        );
    }

    async fn on_shutdown_requested(&self, connection: &Connection) {
        let framed = FramedConnection::<LinesCodec>::of(connection).expect("framed");
        framed.feed("goodbye").expect("feed");
        // Flushes, then closes (`connection.close()` would drop what was fed).
        framed.close();
    }
}

#[async_trait]
impl FrameHandler for Greeter {
    type Codec = LinesCodec;

    fn new_codec(&self, _: &Connection) -> LinesCodec {
        LinesCodec::new()
    }

    async fn on_frame(&self, connection: &FramedConnection<'_, LinesCodec>, line: String) {
        connection.feed(line.to_uppercase()).expect("feed");
    }
}

#[tokio::test(start_paused = true)]
async fn what_other_callbacks_feed_is_flushed_when_they_return() {
    let server = Server::builder()
        .embedded()
        .start(Framing::new(Greeter))
        .await
        .unwrap();
    let mut client = server.accept(peer_addr(1)).await.unwrap();
    let greeting = client.read_exact(6).await.unwrap();
    assert_eq!(greeting, "hello\n");
    client.send(b"abc\n").unwrap();
    assert_eq!(client.read_exact(4).await.unwrap(), "ABC\n");
    let shutdown = {
        let server = server.server().clone();
        tokio::spawn(async move { server.shutdown().await })
    };
    let (rest, ended) = peer_read_to_end(&mut client).await;
    assert_eq!(rest, b"goodbye\n");
    ended.expect("FIN");
    drop(client);
    let report = bounded("shutdown", shutdown).await.unwrap();
    assert_eq!(report.forced, 0);
}

#[tokio::test]
async fn a_maximum_frame_length_of_zero_is_refused() {
    let result = Server::builder()
        .bind("127.0.0.1:0")
        .start(Framing::new(Greeter).max_frame_length(0))
        .await;
    assert!(matches!(
        result,
        Err(Error::InvalidSetting {
            setting: "max_frame_length",
            ..
        })
    ));
}
