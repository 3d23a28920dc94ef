//! `Server::stats()` taken while connections end: every byte is counted once, whether the
//! connection that moved it is live or has ended at the moment of the snapshot. (Before the
//! snapshot read the ended connections' bytes under the registry's lock, a connection ending
//! between the two reads was counted twice, and the next snapshot went down again.)

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use common::*;
use switchboard::{Callbacks, Connection, Server};
use tokio::io::AsyncWriteExt;

/// Echoes; a connection closes when its client does.
struct Echo;

#[async_trait]
impl Callbacks for Echo {
    async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
        connection.read();
    }
    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        let _ = connection.write(data);
        connection.read();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_are_counted_once_while_connections_end() {
    const CONNECTIONS: u64 = 3_000;
    const MESSAGE: &[u8] = &[7; 100];
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .start(Echo)
        .await
        .unwrap();
    let address = server.local_addr().unwrap();
    // Bytes the clients have started to send: what the server has read is never more.
    let sent = Arc::new(AtomicU64::new(0));
    let clients = tokio::spawn({
        let sent = sent.clone();
        async move {
            let mut running = tokio::task::JoinSet::new();
            for _ in 0..CONNECTIONS {
                let sent = sent.clone();
                running.spawn(async move {
                    let mut stream = client(address).await;
                    sent.fetch_add(MESSAGE.len() as u64, Ordering::SeqCst);
                    stream.write_all(MESSAGE).await.unwrap();
                    stream.shutdown().await.unwrap();
                    let (echoed, ended) = read_to_end(&mut stream).await;
                    ended.unwrap();
                    assert_eq!(echoed, MESSAGE);
                });
                // A few at a time, so that ends keep coming while the snapshots are taken.
                while running.len() >= 8 {
                    running.join_next().await.unwrap().unwrap();
                }
            }
            while let Some(ended) = running.join_next().await {
                ended.unwrap();
            }
        }
    });
    let mut snapshots = 0u64;
    let mut last = (0, 0);
    let deadline = std::time::Instant::now() + 3 * WAIT;
    while !clients.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the clients took too long"
        );
        let stats = server.stats();
        let now = (stats.bytes_read, stats.bytes_written);
        // Read after the snapshot: what the server read or echoed was sent before it.
        let most = sent.load(Ordering::SeqCst);
        assert!(
            now.0 <= most && now.1 <= most,
            "snapshot {snapshots}: {now:?} bytes read and written, but only {most} sent"
        );
        assert!(
            now.0 >= last.0 && now.1 >= last.1,
            "snapshot {snapshots}: {now:?} bytes read and written after {last:?}"
        );
        last = now;
        snapshots += 1;
        tokio::task::yield_now().await;
    }
    bounded("the clients", clients).await.unwrap();
    let total = CONNECTIONS * MESSAGE.len() as u64;
    eventually("every connection ended", || server.stats().active == 0).await;
    assert_eq!(
        server.stats().bytes_read,
        total,
        "after {snapshots} snapshots"
    );
}
