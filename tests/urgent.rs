//! Urgent data that arrives right behind ordinary data (guarantee 17, docs/guarantees.md).
//!
//! Linux keeps one urgent byte out of the stream until `recv(MSG_OOB)` takes it, but an ordinary
//! read that reaches the urgent mark first steps over the byte and forgets it: `recv(MSG_OOB)`
//! then says there is none. A driver whose ordinary read runs on readiness left over from the
//! previous read (a read that ended short, at the mark, must not clear it) reached the mark
//! before the urgent-data watcher was looked at whenever the byte came while a callback was
//! still running: on a fresh server about one connection in three lost its first urgent byte.
//! Over real loopback sockets, since the kernel's urgent-data handling is the point.
#![cfg(any(target_os = "linux", target_os = "android"))]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use switchboard::socket2::SockRef;
use switchboard::{async_trait, Bytes, BytesMut, Callbacks, Connection, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// An echo server that asks for urgent data, as `echo_server --urgent` does, and reports each
/// urgent byte.
struct UrgentEcho {
    urgent: mpsc::UnboundedSender<u8>,
    /// How long `on_write_completed` takes: an application that does some work there.
    write_completed_takes: Duration,
}

#[async_trait]
impl Callbacks for UrgentEcho {
    async fn on_connection_established(&self, connection: &Connection, _peer: &SocketAddr) {
        connection.read();
        connection.read_oob().expect("urgent data on Linux");
    }

    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        if connection.write(data.freeze()).is_ok() {
            connection.read();
        }
    }

    async fn on_write_completed(&self, _connection: &Connection, _data: Bytes) {
        if !self.write_completed_takes.is_zero() {
            tokio::time::sleep(self.write_completed_takes).await;
        }
    }

    async fn on_read_oob_completed(&self, connection: &Connection, data: BytesMut) {
        for &byte in &data[..] {
            let _ = self.urgent.send(byte);
        }
        let _ = connection.read_oob();
    }
}

/// Starts a fresh server, sends `normal`, reads its echo, sends one urgent byte and waits (at
/// most [`WAIT`]) for `on_read_oob_completed`; `false` if it never came.
async fn first_urgent_byte_arrives(write_completed_takes: Duration) -> bool {
    let (urgent, mut urgent_seen) = mpsc::unbounded_channel();
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .start(UrgentEcho {
            urgent,
            write_completed_takes,
        })
        .await
        .expect("server starts");
    let address = server.local_addrs()[0];
    let mut client = bounded("connect", TcpStream::connect(address))
        .await
        .unwrap();
    client.write_all(b"normal").await.unwrap();
    let mut echo = [0; 6];
    bounded("the echo", client.read_exact(&mut echo))
        .await
        .unwrap();
    assert_eq!(&echo, b"normal");
    assert_eq!(SockRef::from(&client).send_out_of_band(b"!").unwrap(), 1);
    let arrived = tokio::time::timeout(WAIT, urgent_seen.recv()).await;
    drop(client);
    bounded("shutdown", server.shutdown()).await;
    match arrived {
        Ok(Some(byte)) => {
            assert_eq!(byte, b'!');
            true
        }
        _ => false,
    }
}

/// The race as it happens: fresh servers, each with one client that sends its urgent byte as
/// soon as the echo arrives. Repeated, since each run only may lose it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_urgent_byte_right_after_the_first_echo_is_never_lost() {
    const RUNS: usize = 30;
    for run in 0..RUNS {
        assert!(
            first_urgent_byte_arrives(Duration::ZERO).await,
            "run {run} of {RUNS}: the urgent byte sent right after the echo never reached \
             on_read_oob_completed"
        );
    }
}

/// The same race made certain: `on_write_completed` is still running when the urgent byte
/// arrives, so the driver's next turn finds the byte waiting behind the ordinary stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_urgent_byte_that_arrives_during_a_callback_is_delivered() {
    for run in 0..3 {
        assert!(
            first_urgent_byte_arrives(Duration::from_millis(100)).await,
            "run {run}: the urgent byte that arrived during on_write_completed was lost"
        );
    }
}
