//! Push back on the sender (guarantee 19, docs/guarantees.md): under a read rate limit, a peer
//! that sends faster than its rate is read at its rate, after one burst, and slows only itself;
//! over real loopback sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::{async_trait, BytesMut, Callbacks, Connection, Error, ReadRate, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RATE: u64 = 256 * 1024;
const BURST: u64 = 64 * 1024;

/// Counts what it reads; answers `ping` with `pong`.
struct Counting {
    read: Arc<AtomicUsize>,
}

#[async_trait]
impl Callbacks for Counting {
    async fn on_connection_established(&self, connection: &Connection, _peer: &SocketAddr) {
        connection.read();
    }

    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        if data.starts_with(b"ping") {
            let _ = connection.write(&b"pong"[..]);
        } else {
            self.read.fetch_add(data.len(), Ordering::SeqCst);
        }
        connection.read();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_read_at_its_rate_and_slows_only_itself() {
    let read = Arc::new(AtomicUsize::new(0));
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .read_rate_limit(Some(ReadRate::new(RATE, BURST)))
        .start(Counting { read: read.clone() })
        .await
        .unwrap();
    let address = server.local_addr().unwrap();

    // 1 MiB at once: a burst, then four seconds' worth at the rate.
    const SENT: usize = 1024 * 1024;
    let mut flooder = TcpStream::connect(address).await.unwrap();
    let started = Instant::now();
    let sending = tokio::spawn(async move {
        flooder.write_all(&vec![b'x'; SENT]).await.unwrap();
        flooder
    });
    let mut other = TcpStream::connect(address).await.unwrap();
    let mut checks = 0;
    while read.load(Ordering::SeqCst) < SENT {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the flood was read"
        );
        // Never more than the burst and what the rate earned since the start (a slow machine
        // only reads less).
        let taken = read.load(Ordering::SeqCst) as f64;
        let allowed = BURST as f64 + RATE as f64 * started.elapsed().as_secs_f64();
        assert!(taken <= allowed, "{taken} bytes read, {allowed} allowed");
        // Meanwhile another peer of the same server is answered at once (a few round trips per
        // check, bounded in time).
        other.write_all(b"ping").await.unwrap();
        let mut pong = [0; 4];
        tokio::time::timeout(Duration::from_secs(5), other.read_exact(&mut pong))
            .await
            .expect("the other peer was answered while the flooder waited")
            .unwrap();
        assert_eq!(&pong, b"pong");
        checks += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs_f64((SENT as u64 - BURST) as f64 / RATE as f64 * 0.9),
        "1 MiB read in {took:?}, faster than the rate"
    );
    println!("read in {took:?}, {checks} checks");
    assert!(checks > 10, "{checks} round trips of the other peer");
    drop(bounded_join(sending).await);
    drop(other);
    server.shutdown().await;
}

async fn bounded_join<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the task ended")
        .unwrap()
}

#[tokio::test]
async fn a_rate_or_burst_of_zero_is_refused() {
    for rate in [ReadRate::new(0, 1), ReadRate::new(1, 0)] {
        let started = Server::builder()
            .bind("127.0.0.1:0")
            .read_rate_limit(Some(rate))
            .start(Counting {
                read: Arc::default(),
            })
            .await;
        assert!(
            matches!(started, Err(Error::InvalidSetting { .. })),
            "{rate:?}"
        );
    }
}
