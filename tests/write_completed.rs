//! `on_write_completed` for every buffer written, whatever callbacks a server runs. Callbacks
//! that keep the trait's default are not called for each buffer: the engine drops the buffer, as
//! the default does. Callbacks of their own, and callbacks that pass the event on to others that
//! keep the default, get every buffer, also where a server with the default runs on the same
//! thread, and also shared through an `Arc`. Over real loopback TCP; waits bounded by [`WAIT`].

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use switchboard::{async_trait, Bytes, Callbacks, Connection, Server, UserData};
use tokio::io::AsyncReadExt;
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
