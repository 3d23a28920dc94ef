//! Fair turns (guarantee 18, docs/guarantees.md): a connection whose one read holds thousands
//! of items yields its worker to the other connections every so often, over real loopback
//! sockets on a server with one worker thread.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use switchboard::codec::{FrameHandler, FramedConnection, Framing};
use switchboard::tokio_util::codec::LinesCodec;
use switchboard::{async_trait, Callbacks, Connection, Server};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Lines of the burst: 30,000 two-byte lines, 60,000 bytes, which one read takes whole.
const BURST: usize = 30_000;

/// Counts the burst's items; when the other client's line comes, notes how many were in.
struct Counting {
    burst_items: Arc<AtomicUsize>,
    /// Told once, at the burst's first item: the test then sends the other client's line.
    first: Mutex<Option<mpsc::Sender<()>>>,
    /// How many of the burst's items had been delivered when the other line was.
    seen_at_other: Arc<Mutex<Option<usize>>>,
}

#[async_trait]
impl Callbacks for Counting {}

#[async_trait]
impl FrameHandler for Counting {
    type Codec = LinesCodec;

    fn new_codec(&self, _connection: &Connection) -> LinesCodec {
        LinesCodec::new()
    }

    async fn on_frame(&self, _connection: &FramedConnection<'_, LinesCodec>, line: String) {
        if line == "other" {
            *self.seen_at_other.lock().unwrap() = Some(self.burst_items.load(Ordering::SeqCst));
            return;
        }
        if self.burst_items.fetch_add(1, Ordering::SeqCst) == 0 {
            if let Some(first) = self.first.lock().unwrap().take() {
                let _ = first.send(());
                // The one worker is held here on purpose, once, so that the other line is in
                // the kernel before the burst's delivery goes on.
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

#[test]
fn a_read_of_thousands_of_items_lets_another_connection_in() {
    let burst_items = Arc::new(AtomicUsize::new(0));
    let seen_at_other = Arc::new(Mutex::new(None));
    let (first_tx, first_rx) = mpsc::channel();
    let (address_tx, address_rx) = mpsc::channel::<SocketAddr>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handler = Counting {
        burst_items: burst_items.clone(),
        first: Mutex::new(Some(first_tx)),
        seen_at_other: seen_at_other.clone(),
    };
    // The server on a runtime of its own, one thread: the test's clients never share it.
    let server_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let server = Server::builder()
                .bind("127.0.0.1:0")
                .read_buffer_size(256 * 1024)
                .start(Framing::new(handler))
                .await
                .unwrap();
            address_tx.send(server.local_addr().unwrap()).unwrap();
            let _ = stop_rx.await;
            server.shutdown().await;
        });
    });
    let address = address_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the server started");

    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    client.block_on(async move {
        let mut other = TcpStream::connect(address).await.unwrap();
        let mut flooding = TcpStream::connect(address).await.unwrap();
        let burst = "x\n".repeat(BURST);
        tokio::time::timeout(
            Duration::from_secs(10),
            flooding.write_all(burst.as_bytes()),
        )
        .await
        .expect("the burst was sent")
        .unwrap();
        tokio::task::spawn_blocking(move || first_rx.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("the burst's first item arrived");
        other.write_all(b"other\n").await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while seen_at_other.lock().unwrap().is_none() || burst_items.load(Ordering::SeqCst) < BURST
        {
            assert!(tokio::time::Instant::now() < deadline, "delivery stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let at_other = seen_at_other.lock().unwrap().unwrap();
        assert!(
            at_other < BURST,
            "the other connection's line waited for all {BURST} items of one read"
        );
        drop((other, flooding));
    });
    let _ = stop_tx.send(());
    server_thread.join().unwrap();
}
