//! `on_write_completed` for every buffer written, whatever callbacks a server runs. Callbacks
//! that keep the trait's default are not called for each buffer: the engine drops the buffer, as
//! the default does. Callbacks of their own, and callbacks that pass the event on to others that
//! keep the default, get every buffer, also where a server with the default runs on the same
//! thread, and also shared through an `Arc`.
//!
//! With the default, a write that leaves the connection steady goes on to wait in the same turn
//! of the connection's task: echoes one by one and in a burst, the queue's high and low marks, a
//! close after a reply, and another task's writes while it waits, all as with any callbacks.
//! Over real loopback TCP; waits bounded by [`WAIT`].

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use switchboard::{async_trait, Bytes, Callbacks, Connection, Server, UserData};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// How many buffers each connection writes.
const BUFFERS: usize = 300;
/// The size of each.
const SIZE: usize = 16;

/// Callbacks that keep every default but write [`BUFFERS`] buffers when a connection is
/// established; with nothing else pending, the connection then closes by itself.
struct Writer;

#[async_trait]
impl Callbacks for Writer {
    async fn on_connection_established(&self, connection: &Connection, _peer: &SocketAddr) {
        for index in 0..BUFFERS {
            connection
                .write(Bytes::from(vec![index as u8; SIZE]))
                .expect("the queue takes the writes");
        }
    }
}

/// Callbacks that pass everything on to a [`Writer`] (whose `on_write_completed` is the
/// default) and count the write completions they get.
struct Counting {
    inner: Writer,
    completed: Arc<AtomicUsize>,
    released: Arc<Notify>,
}

#[async_trait]
impl Callbacks for Counting {
    async fn on_connection_established(&self, connection: &Connection, peer: &SocketAddr) {
        self.inner.on_connection_established(connection, peer).await;
    }

    async fn on_write_completed(&self, connection: &Connection, data: Bytes) {
        self.inner.on_write_completed(connection, data).await;
        self.completed.fetch_add(1, Ordering::SeqCst);
    }

    async fn on_socket_released(&self, _user_data: UserData) {
        self.released.notify_one();
    }
}

/// Connects to `server` and reads everything it sends until its FIN.
async fn received(server: &Server) -> Vec<u8> {
    let address = server.local_addrs()[0];
    let mut stream = bounded("connect", TcpStream::connect(address))
        .await
        .expect("connected");
    let mut received = Vec::new();
    bounded("the writes and FIN", stream.read_to_end(&mut received))
        .await
        .expect("a graceful close");
    received
}

fn expected() -> Vec<u8> {
    (0..BUFFERS).flat_map(|index| [index as u8; SIZE]).collect()
}

#[tokio::test]
async fn callbacks_that_pass_write_completed_on_get_every_buffer_beside_a_server_with_the_default()
{
    // A server whose callbacks keep the default, first: its connections learn that it does.
    let quiet = Server::builder()
        .bind("127.0.0.1:0")
        .start(Writer)
        .await
        .unwrap();
    for _ in 0..2 {
        assert!(received(&quiet).await == expected());
    }
    eventually("the default's connections ended", || {
        quiet.stats().active == 0
    })
    .await;
    let stats = quiet.stats();
    assert_eq!(stats.bytes_written, (2 * BUFFERS * SIZE) as u64);

    // Then, on the same thread, callbacks of another type whose `on_write_completed` runs that
    // same default inside their own.
    let completed = Arc::new(AtomicUsize::new(0));
    let released = Arc::new(Notify::new());
    let counting = Server::builder()
        .bind("127.0.0.1:0")
        .start(Counting {
            inner: Writer,
            completed: completed.clone(),
            released: released.clone(),
        })
        .await
        .unwrap();
    for round in 1..=2 {
        assert!(received(&counting).await == expected());
        bounded("released", released.notified()).await;
        assert_eq!(
            completed.load(Ordering::SeqCst),
            round * BUFFERS,
            "every buffer written was handed to on_write_completed"
        );
    }
    // The server with the default writes on as before.
    assert!(received(&quiet).await == expected());
    counting.shutdown().await;
    quiet.shutdown().await;
}

#[tokio::test]
async fn shared_callbacks_get_every_buffer_when_theirs_do_and_write_on_when_they_keep_the_default()
{
    // An `Arc` of callbacks that keep the default keeps it too.
    let quiet = Server::builder()
        .bind("127.0.0.1:0")
        .start(Arc::new(Writer))
        .await
        .unwrap();
    for _ in 0..2 {
        assert!(received(&quiet).await == expected());
    }

    // An `Arc` of callbacks with an `on_write_completed` of their own.
    let completed = Arc::new(AtomicUsize::new(0));
    let released = Arc::new(Notify::new());
    let callbacks = Arc::new(Counting {
        inner: Writer,
        completed: completed.clone(),
        released: released.clone(),
    });
    let counting = Server::builder()
        .bind("127.0.0.1:0")
        .start(callbacks.clone())
        .await
        .unwrap();
    for round in 1..=2 {
        assert!(received(&counting).await == expected());
        bounded("released", released.notified()).await;
        assert_eq!(completed.load(Ordering::SeqCst), round * BUFFERS);
    }
    counting.shutdown().await;
    quiet.shutdown().await;
}

/// What the callbacks below saw, in order.
#[derive(Default)]
struct Seen {
    events: Mutex<Vec<&'static str>>,
    handle: Mutex<Option<Connection>>,
    released: Notify,
}

impl Seen {
    fn push(&self, event: &'static str) {
        self.events.lock().unwrap().push(event);
    }

    fn events(&self) -> Vec<&'static str> {
        self.events.lock().unwrap().clone()
    }
}

/// Echo callbacks that keep the default `on_write_completed`; with `close_after_reply`, each
/// reply is followed by a close; with `keep_handle`, the established connection's handle is kept
/// in [`Seen`] for another task.
struct Echo {
    seen: Arc<Seen>,
    close_after_reply: bool,
    keep_handle: bool,
    /// Written when the connection is established, before the first read.
    greeting: usize,
}

#[async_trait]
impl Callbacks for Echo {
    async fn on_connection_established(&self, connection: &Connection, _peer: &SocketAddr) {
        if self.keep_handle {
            *self.seen.handle.lock().unwrap() = Some(connection.clone());
        }
        for _ in 0..self.greeting {
            connection
                .write(Bytes::from(vec![b'g'; 16 * 1024]))
                .expect("the queue takes the greeting");
        }
        connection.read();
    }

    async fn on_read_completed(&self, connection: &Connection, data: switchboard::BytesMut) {
        if connection.write(data.freeze()).is_err() {
            self.seen.push("refused");
        }
        if self.close_after_reply {
            connection.close();
        } else {
            connection.read();
        }
    }

    async fn on_write_buffer_high(&self, _connection: &Connection) {
        self.seen.push("high");
    }

    async fn on_write_buffer_low(&self, _connection: &Connection) {
        self.seen.push("low");
    }

    async fn on_socket_released(&self, _user_data: UserData) {
        self.seen.push("released");
        self.seen.released.notify_one();
    }
}

async fn start_echo(
    configure: impl FnOnce(switchboard::ServerBuilder) -> switchboard::ServerBuilder,
    echo: impl FnOnce(Arc<Seen>) -> Echo,
) -> (Server, Arc<Seen>, TcpStream) {
    let seen = Arc::new(Seen::default());
    let server = configure(Server::builder().bind("127.0.0.1:0"))
        .start(echo(seen.clone()))
        .await
        .unwrap();
    let stream = bounded("connect", TcpStream::connect(server.local_addrs()[0]))
        .await
        .expect("connected");
    (server, seen, stream)
}

/// Sends `message` and reads the next `message.len()` bytes, which must be `expected`.
async fn exchange(stream: &mut TcpStream, message: &[u8], expected: &[u8]) {
    stream.write_all(message).await.unwrap();
    let mut reply = vec![0; expected.len()];
    bounded("a reply", stream.read_exact(&mut reply))
        .await
        .unwrap();
    assert_eq!(reply, expected);
}

fn echo(seen: Arc<Seen>) -> Echo {
    Echo {
        seen,
        close_after_reply: false,
        keep_handle: false,
        greeting: 0,
    }
}

#[tokio::test]
async fn echoes_one_by_one_and_in_a_burst_where_each_write_goes_on_to_wait() {
    let (server, seen, mut stream) = start_echo(|b| b, echo).await;
    // One by one: each reply's write leaves a read pending, and the wait goes on.
    for index in 0..300u32 {
        let message = index.to_be_bytes();
        exchange(&mut stream, &message, &message).await;
    }
    // A burst: partial writes, and reads that find several messages.
    let burst: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
    let (mut reader, mut writer) = stream.into_split();
    let sender = tokio::spawn(async move {
        writer.write_all(&burst).await.unwrap();
        writer.shutdown().await.unwrap();
        burst
    });
    let mut received = Vec::new();
    bounded(
        "the burst echoed and FIN",
        reader.read_to_end(&mut received),
    )
    .await
    .unwrap();
    let burst = bounded("sent", sender).await.unwrap();
    assert!(received == burst, "the burst came back whole, in order");
    bounded("released", seen.released.notified()).await;
    assert_eq!(seen.events(), ["released"]);
    server.shutdown().await;
}

#[tokio::test]
async fn the_queues_high_and_low_marks_are_announced_around_writes_that_go_on_to_wait() {
    // 64 KiB of greeting over a limit of 48 KiB: high at once, low once the client reads.
    let (server, seen, mut stream) = start_echo(
        |b| {
            b.write_queue_limit(1 << 20)
                .write_watermarks(48 * 1024, 8 * 1024)
        },
        |seen| Echo {
            greeting: 4,
            ..echo(seen)
        },
    )
    .await;
    let mut greeting = vec![0; 4 * 16 * 1024];
    bounded("the greeting", stream.read_exact(&mut greeting))
        .await
        .unwrap();
    assert!(greeting.iter().all(|&byte| byte == b'g'));
    // Then echoes as usual: the connection is steady again.
    for _ in 0..50 {
        exchange(&mut stream, b"ping", b"ping").await;
    }
    eventually("low announced", || seen.events().contains(&"low")).await;
    assert_eq!(seen.events(), ["high", "low"]);
    drop(stream);
    bounded("released", seen.released.notified()).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_close_after_a_reply_sends_the_reply_then_fin() {
    let (server, seen, mut stream) = start_echo(
        |b| b,
        |seen| Echo {
            close_after_reply: true,
            ..echo(seen)
        },
    )
    .await;
    stream.write_all(b"last").await.unwrap();
    let mut received = Vec::new();
    bounded("the reply and FIN", stream.read_to_end(&mut received))
        .await
        .expect("a graceful close");
    assert_eq!(received, b"last");
    bounded("released", seen.released.notified()).await;
    server.shutdown().await;
}

#[tokio::test]
async fn another_tasks_writes_while_the_connection_waits_go_out_in_order() {
    let (server, seen, mut stream) = start_echo(
        |b| b,
        |seen| Echo {
            keep_handle: true,
            ..echo(seen)
        },
    )
    .await;
    eventually("established", || seen.handle.lock().unwrap().is_some()).await;
    let handle = seen.handle.lock().unwrap().take().unwrap();
    // Echoes and another task's writes interleaved: each reply's write goes on to wait, and the
    // wait finds the other task's posts.
    for index in 0..200u32 {
        let message = index.to_be_bytes();
        exchange(&mut stream, &message, &message).await;
        let pushed = (1_000_000 + index).to_be_bytes();
        handle.write(Bytes::copy_from_slice(&pushed)).unwrap();
        exchange(&mut stream, b"", &pushed).await;
    }
    drop(handle);
    drop(stream);
    bounded("released", seen.released.notified()).await;
    assert_eq!(seen.events(), ["released"]);
    server.shutdown().await;
}
