//! Memory bounded as documented (guarantee 10, docs/guarantees.md): members of a group that never
//! read, flooded with tiny broadcast lines, hold no more heap than the write queue's limit
//! allows; and an idle connection holds no more than its measured figure. Counted by this test
//! binary's own allocator over real loopback sockets.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard::socket2::SockRef;
use switchboard::{
    async_trait, Callbacks, Connection, ConnectionGroup, Direction, FullQueuePolicy, Server,
};
use tokio::net::TcpStream;

/// The write queue limit these servers run with: the default (64 KiB, as
/// `ServerBuilder::write_queue_limit` documents).
const DEFAULT_WRITE_QUEUE_LIMIT: usize = 64 * 1024;

/// The system allocator, counting the bytes it has handed out and not yet taken back.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged, with the caller's layout; the
// count beside it is only arithmetic on an atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc`, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MEMBERS: usize = 100;

/// Taken by each test for its whole run: the count is the binary's, and another test's
/// allocations must not land in it.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every connection joins the room; nothing is read.
struct Room {
    room: ConnectionGroup,
    /// A handle on each member keeps it open: no read is pending.
    held: Arc<Mutex<Vec<Connection>>>,
}

#[async_trait]
impl Callbacks for Room {
    fn on_socket_created(&self, socket: SockRef<'_>, _direction: Direction) {
        // A small kernel send buffer, so that the queues fill after a few thousand lines.
        let _ = socket.set_send_buffer_size(4096);
    }

    async fn on_connection_established(&self, connection: &Connection, _peer: &SocketAddr) {
        self.room.insert(connection);
        self.held.lock().unwrap().push(connection.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_that_never_read_hold_at_most_their_queue_limit_of_tiny_lines() {
    let _serial = SERIAL.lock().await;
    let room = ConnectionGroup::with_when_full(FullQueuePolicy::Skip);
    let held = Arc::new(Mutex::new(Vec::new()));
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .start(Room {
            room: room.clone(),
            held: held.clone(),
        })
        .await
        .unwrap();
    let address = server.local_addr().unwrap();
    let mut members = Vec::new();
    for _ in 0..MEMBERS {
        let member = TcpStream::connect(address).await.unwrap();
        SockRef::from(&member).set_recv_buffer_size(4096).unwrap();
        members.push(member);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while held.lock().unwrap().len() < MEMBERS {
        assert!(tokio::time::Instant::now() < deadline, "members joined");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(room.len(), MEMBERS);
    let before = LIVE.load(Ordering::SeqCst);

    // Four-byte lines until every member's queue refuses them, and some more.
    let line = switchboard::Bytes::from_static(b"hi!\n");
    let mut full_rounds = 0;
    let mut sent = 0usize;
    while full_rounds < 100 {
        assert!(tokio::time::Instant::now() < deadline, "the queues filled");
        let report = room.broadcast(line.clone());
        sent += report.sent();
        if report.queue_full() == MEMBERS {
            full_rounds += 1;
        } else if sent % 1024 == 0 {
            // Lets the drivers hand what they can to the kernel.
            tokio::task::yield_now().await;
        }
    }
    // The drivers take what was posted before the last refusals.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let grown = LIVE.load(Ordering::SeqCst).saturating_sub(before);
    let per_member = grown / MEMBERS;
    println!(
        "{sent} lines queued, {per_member} bytes of heap per member (limit {DEFAULT_WRITE_QUEUE_LIMIT})"
    );
    assert!(
        per_member <= 2 * DEFAULT_WRITE_QUEUE_LIMIT,
        "each member holds {per_member} bytes of heap, more than twice its queue's limit"
    );
    held.lock().unwrap().clear();
    drop(members);
    server.shutdown().await;
}

/// On `flood`, feeds 10 KiB lines until the frame layer refuses one; records how many it took
/// and the refusal.
struct Flooding {
    outcome: Arc<Mutex<Option<(usize, String, usize)>>>,
}

#[async_trait]
impl Callbacks for Flooding {}

#[async_trait]
impl switchboard::codec::FrameHandler for Flooding {
    type Codec = switchboard::tokio_util::codec::LinesCodec;

    fn new_codec(&self, _connection: &Connection) -> Self::Codec {
        Self::Codec::new()
    }

    async fn on_frame(
        &self,
        connection: &switchboard::codec::FramedConnection<'_, Self::Codec>,
        _line: String,
    ) {
        let line = "x".repeat(10 * 1024);
        let mut fed = 0;
        let refusal = loop {
            match connection.feed(line.as_str()) {
                Ok(()) => fed += 1,
                Err(switchboard::codec::SendError::Write(refused)) => {
                    break (refused.error().to_string(), refused.data().len())
                }
                Err(other) => break (other.to_string(), 0),
            }
            assert!(fed < 1_000, "the feeds were never refused");
        };
        *self.outcome.lock().unwrap() = Some((fed, refusal.0, refusal.1));
    }
}

#[tokio::test]
async fn a_reply_fed_past_the_queue_limit_is_refused_before_it_is_encoded() {
    let _serial = SERIAL.lock().await;
    let outcome = Arc::new(Mutex::new(None));
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .start(switchboard::codec::Framing::new(Flooding {
            outcome: outcome.clone(),
        }))
        .await
        .unwrap();
    let mut client = TcpStream::connect(server.local_addr().unwrap())
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut client, b"flood\n")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (fed, error, refused_bytes) = loop {
        if let Some(outcome) = outcome.lock().unwrap().take() {
            break outcome;
        }
        assert!(tokio::time::Instant::now() < deadline, "on_frame ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // Each line is 10 KiB and its newline: the feeds stop at the limit, one line past it at most.
    assert_eq!(fed, DEFAULT_WRITE_QUEUE_LIMIT.div_ceil(10 * 1024 + 1));
    assert!(error.contains("write queue"), "refused as full: {error}");
    assert_eq!(refused_bytes, 0, "the refused line was never encoded");
    drop(client);
    server.shutdown().await;
}

/// Counts the lines it is given: those from the connections that wait, and the filler's.
struct LineCounter {
    waiting: Arc<AtomicUsize>,
    filler: Arc<AtomicUsize>,
}

#[async_trait]
impl Callbacks for LineCounter {}

#[async_trait]
impl switchboard::codec::FrameHandler for LineCounter {
    type Codec = switchboard::tokio_util::codec::LinesCodec;

    fn new_codec(&self, _connection: &Connection) -> Self::Codec {
        Self::Codec::new()
    }

    async fn on_frame(
        &self,
        _connection: &switchboard::codec::FramedConnection<'_, Self::Codec>,
        line: String,
    ) {
        let count = if line.starts_with('w') {
            &self.waiting
        } else {
            &self.filler
        };
        count.fetch_add(1, Ordering::SeqCst);
    }
}

/// Waits until `count` reaches `target`, within `deadline`.
async fn reach(count: &AtomicUsize, target: usize, deadline: tokio::time::Instant, what: &str) {
    while count.load(Ordering::SeqCst) < target {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Reads land in a chunk of memory shared with the reads around them, which a kept buffer keeps
/// whole (`ServerBuilder::read_buffer_size`'s docs): the frame layer must not keep one for the
/// start of a line while its connection waits for the rest. Each waiting connection's partial
/// line is read amid more than a chunk of other reads (the filler's), so each would otherwise
/// keep a chunk of its own. One runtime thread, so that all reads share one arena.
#[tokio::test]
async fn connections_waiting_for_the_rest_of_a_line_keep_no_read_chunk() {
    const WAITING: usize = 50;
    let _serial = SERIAL.lock().await;
    let waiting = Arc::new(AtomicUsize::new(0));
    let filler = Arc::new(AtomicUsize::new(0));
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .start(switchboard::codec::Framing::new(LineCounter {
            waiting: waiting.clone(),
            filler: filler.clone(),
        }))
        .await
        .unwrap();
    let address = server.local_addr().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut filling = TcpStream::connect(address).await.unwrap();
    let mut clients = Vec::new();
    for _ in 0..WAITING {
        clients.push(TcpStream::connect(address).await.unwrap());
    }
    // Nine lines of 8,000 bytes: more than one 64 KiB chunk of reads.
    let mut fill = vec![b'f'; 9 * 8000];
    for line in fill.chunks_mut(8000) {
        line[7999] = b'\n';
    }
    let mut filled = 0;
    // A first round, so that what the server allocates once (its arena's chunk, the filler's
    // buffers) is there before the count starts.
    tokio::io::AsyncWriteExt::write_all(&mut filling, &fill)
        .await
        .unwrap();
    filled += 9;
    reach(&filler, filled, deadline, "the filler's first lines").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = LIVE.load(Ordering::SeqCst);

    for (index, client) in clients.iter_mut().enumerate() {
        // A whole line, which says the read happened, and the start of the next in one segment.
        tokio::io::AsyncWriteExt::write_all(client, b"w\npart")
            .await
            .unwrap();
        reach(&waiting, index + 1, deadline, "a waiting connection's line").await;
        tokio::io::AsyncWriteExt::write_all(&mut filling, &fill)
            .await
            .unwrap();
        filled += 9;
        reach(&filler, filled, deadline, "the filler's lines").await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let grown = LIVE.load(Ordering::SeqCst).saturating_sub(before);
    let per_connection = grown / WAITING;
    println!("{per_connection} bytes of heap per connection waiting for the rest of a line");
    assert!(
        per_connection < 4096,
        "each waiting connection holds {per_connection} bytes of heap: a read's chunk"
    );
    drop(clients);
    drop(filling);
    server.shutdown().await;
}

/// The most heap an idle plain connection may hold (a read requested, nothing queued), in bytes:
/// its task, its shared state, tokio's readiness slot for the socket and its share of the
/// registry's map (`BENCHMARKS.md`, "Bytes per idle connection", has the breakdown; the echo
/// bench measures the same). The promise is 1 KiB where it is measured, on Linux: 1,012 B,
/// optimised or not (the task's 128-byte step is the same in both builds, 512 B); a task that
/// takes the next step, or an inbox made before the first post, fails this. On Windows mio keeps
/// a state of its own per socket for IOCP (a boxed registration holding an `Arc<Mutex<_>>` with
/// the AFD poll request and its status block): 1,172 B measured under Wine.
const IDLE_CONNECTION_HEAP: usize = if cfg!(windows) { 1_200 } else { 1_024 };

const IDLE_CONNECTIONS: usize = 1_500;

/// Requests a read on each connection, and counts them.
struct Idle {
    established: Arc<AtomicUsize>,
}

#[async_trait]
impl Callbacks for Idle {
    async fn on_connection_established(&self, connection: &Connection, _peer: &SocketAddr) {
        connection.read();
        self.established.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn an_idle_connection_holds_at_most_its_bound_of_heap() {
    let _serial = SERIAL.lock().await;
    let established = Arc::new(AtomicUsize::new(0));
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .start(Idle {
            established: established.clone(),
        })
        .await
        .unwrap();
    let address = server.local_addr().unwrap();
    // A first connection, not counted: its read makes the runtime thread's read chunk (64 KiB,
    // one per thread, not per connection) and warms the registry.
    let first = std::net::TcpStream::connect(address).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while established.load(Ordering::SeqCst) < 1 {
        assert!(tokio::time::Instant::now() < deadline, "first connection");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = LIVE.load(Ordering::SeqCst);
    // Blocking clients on a thread of their own: their sockets take no heap of this process.
    let clients = tokio::task::spawn_blocking(move || {
        (0..IDLE_CONNECTIONS)
            .map(|_| std::net::TcpStream::connect(address).unwrap())
            .collect::<Vec<_>>()
    });
    while established.load(Ordering::SeqCst) < IDLE_CONNECTIONS + 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections established"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let clients = clients.await.unwrap();
    // The last reads are requested once their callbacks return.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let per_connection = LIVE.load(Ordering::SeqCst).saturating_sub(before) / IDLE_CONNECTIONS;
    println!("{per_connection} bytes of heap per idle connection (bound {IDLE_CONNECTION_HEAP})");
    assert!(
        per_connection <= IDLE_CONNECTION_HEAP,
        "an idle connection holds {per_connection} bytes of heap, over {IDLE_CONNECTION_HEAP}"
    );
    drop(clients);
    drop(first);
    server.shutdown().await;
}
