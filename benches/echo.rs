//! Echo benchmark: switchboard beside a minimal raw tokio echo server and a bare mio (epoll) loop,
//! in the same run.
//!
//! Run the full benchmark (about 6 minutes) or the short one (about a minute, numbers only
//! indicative; CI only needs the bench to build), or only some scenarios, or more rounds:
//!
//! ```text
//! cargo bench --bench echo
//! cargo bench --bench echo -- --quick
//! cargo bench --bench echo -- --only echo,churn,tls,idle,max-connections
//! cargo bench --bench echo -- --only max-connections --max-connections 100000
//! cargo bench --bench echo -- --only echo,churn --rounds 15
//! ```
//!
//! # What is measured
//! Seven echo servers, each on `127.0.0.1:0` and each on one thread of its own, four plain and
//! three TLS:
//! - **switchboard**: a [`Callbacks`] impl that requests a read when the connection is established
//!   and, in `on_read_completed`, writes the very buffer it was given (`data.freeze()`, zero copy)
//!   and reads again. Server defaults otherwise (8 KiB read buffer, `TCP_NODELAY` on).
//! - **raw tokio**: an accept loop and one task per connection holding `vec![0; 8192]`, reading
//!   then `write_all`-ing what it read, with `TCP_NODELAY` on like switchboard's default.
//! - **mio**: the floor, what the kernel work of an echo costs with next to nothing on top: mio
//!   used directly, one `epoll` loop, connections in a slab indexed by their tokens, each with a
//!   fixed 8 KiB buffer. Edge-triggered: on readiness it writes back any unsent tail, then reads
//!   and writes back until a read would block; a tail the kernel does not take waits, reading
//!   paused, for a WRITABLE event (registered only then). `TCP_NODELAY` on. Plain TCP only.
//! - **switchboard TLS**: the same callbacks on a listener made TLS with
//!   [`ServerBuilder::tls`](switchboard::ServerBuilder::tls) (handshake on the connection's task,
//!   `close_notify` before its FIN).
//! - **raw tokio-native-tls**: the raw tokio server with [`tokio_native_tls::TlsAcceptor::accept`]
//!   on the connection's task before its read/`write_all` loop; at the end of the stream it drops
//!   the stream (FIN, no `close_notify`), as minimal code does.
//! - **raw tokio B**, plain and TLS, in the throughput, churn and TLS scenarios (1. to 3.): a
//!   second raw tokio server, the same code. Its ratio to raw tokio (`B/raw`) is this run's
//!   noise in that scenario: a ratio of switchboard's to raw tokio within `max(B/raw, raw/B)`
//!   of 1 is not a difference this run can show.
//!
//! Both TLS servers share one [`native_tls::TlsAcceptor`] built from the test certificate in
//! `tests/certs` (ECDSA P-256 for `localhost`), so that both run the same TLS code: native-tls's
//! acceptor, which on OpenSSL negotiates TLS 1.2 (AES-GCM). switchboard's own acceptor
//! ([`switchboard::tls::acceptor_from_pem`], TLS 1.3 through tokio-openssl) is not what is
//! compared here. The TLS clients are `tokio-native-tls` connectors that trust the test
//! CA and verify `localhost`; they keep no session cache, so every handshake is a full one.
//!
//! Scenarios, each reported as the switchboard/raw ratio of the medians and, for the plain ones,
//! the switchboard/mio ratio too (higher is better for throughput and churn, lower is better for
//! memory and CPU):
//! 1. **Throughput** — 64 B × 50 connections, 4 KiB × 50 connections, 64 B × 1000 connections.
//!    Every client connection runs a closed loop: write one message, `read_exact` the reply,
//!    repeat. Connections are opened first, warmed up, then messages completed during the
//!    measurement window (2 s; 0.8 s with `--quick`) are counted (msgs/s).
//! 2. **Connection churn** — 50 concurrent churners, each looping: connect, one 64 B echo,
//!    half-close, wait for the server's FIN, drop. The whole life of a connection on the server,
//!    teardown included, is inside the loop (connections/s). Clients close first, so their
//!    sockets sit in `TIME_WAIT`; Linux reuses those for loopback connects
//!    (`net.ipv4.tcp_tw_reuse = 2`, the default), so ports do not run out.
//! 3. **TLS** — against the two TLS servers:
//!    - *TLS echo*: 4 KiB × 50 connections, the closed loop of 1. over TLS (handshakes happen
//!      while connecting, before the warm-up; msgs/s).
//!    - *TLS churn*: 50 concurrent churners, each looping: connect, full TLS handshake, one 64 B
//!      echo, `close_notify` and half-close, wait for the server's end of stream (its
//!      `close_notify` or its FIN), drop (connections/s). The handshake's public-key work (ECDHE,
//!      ECDSA signing) is most of the server's cost here.
//! 4. **Idle memory per connection** — 10,000 idle plain connections (2,000 with `--quick`) to a
//!    fresh server process. Each server runs in a child process of this bench (the same
//!    executable, started with `--memory-server KIND`), which reports the growth of its own
//!    resident set (`VmRSS` from `/proc/self/status`) and of its live heap bytes (counted by a
//!    global allocator that is switched on only in the child) between before the first connection
//!    and after the last one is established, divided by the count. Connections are idle and
//!    waiting for data: switchboard with a read requested (its buffer is allocated only when data
//!    is readable), raw tokio with its 8 KiB buffer allocated before its first read, as typical
//!    code does, and mio with its fixed buffer allocated at accept. The client side lives in
//!    this (parent) process, so the numbers are the server's own cost; this also keeps both
//!    processes within the `ulimit -n` (a single process would need two descriptors per
//!    connection). Heap bytes are exact; the resident set counts only pages touched, so an
//!    allocated but never written buffer may show up there only in part.
//! 5. **Max connections** — as many idle plain connections as the descriptor limits allow, once
//!    per server kind, measured as in 4. (the same child process and code): connections held,
//!    resident set and heap bytes per connection held, and the time from the first connect to
//!    the server holding the last one. The count is `--max-connections N` (2,000 with `--quick`),
//!    or by default as many as the limits allow; the soft `ulimit -n` is raised toward the hard
//!    one if that helps (the child inherits it), and a count beyond the limits is scaled down to
//!    them, with a message (4. is scaled the same way). Each process needs one descriptor per
//!    connection plus 64, so with the hard limit of 20,000 of the machine this was written for,
//!    that is 19,936 connections.
//!
//! In 4. and 5. the client binds each socket to its own source address before connecting,
//! cycling through 127.0.0.1 to 127.0.255.254 (Linux routes all of 127.0.0.0/8 to loopback),
//! so the count is not bounded by one source address's ~28,000 ephemeral ports: with a higher
//! hard limit (and `fs.nr_open`) the same scenario holds 100,000 connections and more. The
//! client connects from one thread, at most 128 connects in flight and at most 512 ahead of
//! what the server has accepted (the child reports its count as it grows), so a server that
//! falls behind for a moment never overflows its backlog: the time to accept them all is the
//! server's, not the SYN retransmission timeout's. Every server listens with switchboard's
//! backlog, 1024 (tokio's and mio's own `bind` ask for 128).
//!
//! For 1., 2. and 3. the bench also reports the CPU time the server threads used per message or
//! connection (user + system, from `/proc/self/task/*/stat`, 10 ms ticks). On a shared machine
//! this is steadier than the rates, which move with whatever else runs: trust it over them.
//!
//! # Instructions per message
//! `benches/instructions.sh` counts the user-space instructions each plain server runs per
//! echoed 64 B message, with valgrind's cachegrind (valgrind must be installed; a few minutes):
//!
//! ```text
//! benches/instructions.sh
//! MESSAGES=20000 RUNS=2 CONNECTIONS="50 1000" KINDS="raw api switchboard" benches/instructions.sh
//! ```
//!
//! It builds this bench in release, then for each kind and for 50 and 1,000 connections runs the
//! server alone under `valgrind --tool=cachegrind --cache-sim=no`, on one thread
//! (`echo --echo-server KIND --connections C`: the server exits by itself once C connections
//! have come and gone, so cachegrind writes its total), and drives it from this executable
//! outside valgrind (`echo --echo-client ADDRESS --connections C --messages M`: C connections
//! opened first, then M messages of 64 B in closed loops, then each half-closed). Each count is
//! taken with M messages (200,000 by default) and with none, and the difference divided by M is
//! the cost per message, so start-up, accepting and closing cancel out. It prints instructions
//! per message for each kind and their ratio to raw tokio (`instructions ratio switchboard/raw
//! x50: …`). Kernel work is not counted (the server CPU per message above includes it).
//!
//! Two more servers run only there: the API floor (`--echo-server api`, `benches/api_floor`),
//! raw tokio paying what switchboard's callback API costs by its shape (an owned buffer per read,
//! split off a per-thread chunk as switchboard's are, a boxed `async-trait` future per callback under `catch_unwind`, a handle's mutex-guarded write
//! queue) and nothing of its engine; and the same with the callbacks as native `async fn`s in a
//! trait called with static dispatch (`api-static`: no boxed futures, which is not switchboard's
//! API). The script prints switchboard's ratio to the floor as well (`instructions ratio
//! switchboard/api x50: …`): what the engine costs above the API.
//!
//! Under valgrind the tokio-based servers are the slow side, so every `epoll_wait` finds all
//! connections ready, as on a saturated server, and their counts repeat to within 0.1–2%. The
//! mio server keeps pace with the client even there, so how many connections each wait finds
//! ready varies, and with it the share of the wait in each message: its count moves by up to
//! about 8% between runs (`RUNS=3` gives a median). That is a few instructions per message,
//! against the thousands that separate the others.
//!
//! # Soak
//! Not a benchmark but run beside it, by hand (never by CI): `tests/flow.rs`'s `soak` holds
//! 10,000 concurrent connections (scaled to `ulimit -n`) for 60 s with random resets,
//! half-closes and slow readers, then shuts down, and checks that nothing panicked, no count
//! leaked and every connection was released:
//!
//! ```text
//! cargo test --release --test flow soak -- --ignored --nocapture
//! SWITCHBOARD_SOAK_SECS=5 SWITCHBOARD_SOAK_CONNECTIONS=2000 cargo test --test flow soak -- --ignored --nocapture
//! ```
//!
//! # Fairness and noise
//! Every server runs on one thread of its own: a current-thread tokio runtime (I/O driver,
//! timers and every task on that thread), so server CPU per operation is one core's work for
//! each, and a server that needs a second thread would show it. The load generator runs in a
//! multi-thread runtime with 2 workers (the machine this was written for has 2 cores).
//! Measurements alternate between the servers (the order rotates by one each round, raw tokio
//! first in round 0), 5 rounds each (2 with `--quick`, `--rounds N` to choose), and the median of
//! each side is compared, so slow drifts of a shared machine hit all sides alike. Each measurement is preceded by a
//! warm-up on the same connections (0.5 s; 0.2 s with `--quick`), and waits for the server to
//! have closed every connection of the previous one. Idle memory is measured 3 times per server
//! (once with `--quick`); it hardly varies.
//!
//! The output is a table per kind of measure (columns switchboard, raw tokio, mio, sb/raw,
//! sb/mio, B/raw), then one line per scenario such as
//! `ratio echo 64B x50: 0.97 noise 1.02 (by round: 0.98, raw B 1.01)` (switchboard / raw tokio,
//! the noise band `max(B/raw, raw/B)`, and the medians of each round's own switchboard / raw
//! tokio and raw tokio B / raw tokio, whose servers ran one after the other),
//! `ratio vs mio echo 64B x50: 0.80` (switchboard / mio, plain scenarios), and the same with
//! `cpu ratio` for the CPU measure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::io::{self, BufRead, BufReader, Write as _};
use std::net::{Shutdown, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::native_tls;
use switchboard::socket2::SockRef;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

mod api_floor;
#[path = "common/mod.rs"]
mod common;
#[path = "common/servers.rs"]
mod servers;

use common::{median, server_cpu_seconds, thousands};
use servers::{
    descriptor_limits, mio_listener, mio_serve, raise_descriptor_limit, raw_accept,
    raw_accept_loop, runtime, source_address, start_switchboard, std_listener,
    system_descriptor_ceiling, Kind, Running, Tally, DESCRIPTOR_RESERVE, PLAIN_KINDS, SERVER_KEY,
    SERVER_PEM, TLS_DOMAIN, TLS_KINDS,
};
use tokio_native_tls::{TlsConnector, TlsStream};

// ---------------------------------------------------------------------------------------------
// Heap accounting (on only in the memory child process)
// ---------------------------------------------------------------------------------------------

/// The system allocator, counting live heap bytes while [`COUNTING`] is on. While it is off, the
/// only cost is one relaxed load of a never-written flag per call.
struct CountingAllocator;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE_HEAP: AtomicIsize = AtomicIsize::new(0);

fn count(delta: isize) {
    if COUNTING.load(Ordering::Relaxed) {
        LIVE_HEAP.fetch_add(delta, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the wrapper only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            count(layout.size() as isize);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            count(layout.size() as isize);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` came from this allocator, that is from `System`, with `layout`.
        unsafe { System.dealloc(pointer, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and the caller upholds `realloc`'s contract.
        let new = unsafe { System.realloc(pointer, layout, new_size) };
        if !new.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

struct Settings {
    quick: bool,
    rounds: usize,
    warmup: Duration,
    measure: Duration,
    idle_connections: usize,
    memory_rounds: usize,
    /// Connections asked for in the max-connections scenario, before the limits scale it down;
    /// `None` for as many as the limits allow.
    max_connections: Option<usize>,
    /// The scenarios to run ([`SCENARIOS`]); all of them if empty.
    only: Vec<String>,
}

/// The scenario groups `--only` can pick.
const SCENARIOS: [&str; 5] = ["echo", "churn", "tls", "idle", "max-connections"];

/// Connections the max-connections scenario holds with `--quick` when no count is given.
const QUICK_MAX_CONNECTIONS: usize = 2_000;

impl Settings {
    /// The settings from the command line (`--quick`, `--only`, `--max-connections`,
    /// `--rounds`).
    fn from_args(args: &[String]) -> Self {
        let quick = args.iter().any(|arg| arg == "--quick");
        let only: Vec<String> = option::<String>(args, "--only")
            .map(|list| list.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        if let Some(unknown) = only.iter().find(|name| !SCENARIOS.contains(&name.as_str())) {
            usage_error(&format!("unknown scenario {unknown}"));
        }
        let max_connections =
            option(args, "--max-connections").or(quick.then_some(QUICK_MAX_CONNECTIONS));
        let rounds: Option<usize> = option(args, "--rounds");
        if rounds == Some(0) {
            usage_error("--rounds needs at least 1");
        }
        let mut settings = Settings::defaults(quick, max_connections, only);
        settings.rounds = rounds.unwrap_or(settings.rounds);
        settings
    }

    /// The settings of a full run, or of a `--quick` one.
    fn defaults(quick: bool, max_connections: Option<usize>, only: Vec<String>) -> Self {
        if quick {
            Settings {
                quick,
                rounds: 2,
                warmup: Duration::from_millis(200),
                measure: Duration::from_millis(800),
                idle_connections: 2_000,
                memory_rounds: 1,
                max_connections,
                only,
            }
        } else {
            Settings {
                quick,
                rounds: 5,
                warmup: Duration::from_millis(500),
                measure: Duration::from_secs(2),
                idle_connections: 10_000,
                memory_rounds: 3,
                max_connections,
                only,
            }
        }
    }

    /// Whether scenario group `name` runs.
    fn runs(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|only| only == name)
    }
}

const CHURNERS: usize = 50;
/// Message size and connection count of the TLS echo scenario.
const TLS_ECHO_SIZE: usize = 4096;
const TLS_ECHO_CONNECTIONS: usize = 50;

/// Connects in flight at once while opening many connections: well under every server's
/// backlog ([`LISTEN_BACKLOG`]), so no SYN is dropped and retransmitted a second later.
const CONNECT_CONCURRENCY: usize = 128;
/// Connects the idle scenarios' client may be ahead of the server's accepts: with
/// [`CONNECT_CONCURRENCY`] more in flight, still well under [`LISTEN_BACKLOG`].
const ACCEPT_WINDOW: usize = 512;

// ---------------------------------------------------------------------------------------------
// Load generation
// ---------------------------------------------------------------------------------------------

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

async fn connect(address: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The client side of TLS: a connector that trusts the test CA (and nothing else).
fn tls_connector() -> TlsConnector {
    servers::native_tls_connector().into()
}

/// Connects to `address` and runs a full TLS handshake, verifying [`TLS_DOMAIN`].
async fn connect_tls(
    address: SocketAddr,
    connector: &TlsConnector,
) -> io::Result<TlsStream<TcpStream>> {
    let stream = connect(address).await?;
    connector
        .connect(TLS_DOMAIN, stream)
        .await
        .map_err(io::Error::other)
}

/// Whether a TLS read error is the peer's FIN without `close_notify` (OpenSSL 3 reports it as
/// an error; the raw TLS server closes that way).
fn is_eof_without_close_notify(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::UnexpectedEof
        || error
            .to_string()
            .to_ascii_lowercase()
            .contains("unexpected eof")
}

/// Connects to `address` from [`source_address`]`(index)`.
async fn connect_from(address: SocketAddr, index: usize) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(source_address(index))?;
    let stream = socket.connect(address).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens `count` connections with `open(index)`, at most [`CONNECT_CONCURRENCY`] at a time.
async fn connect_many<S, F, O>(count: usize, open: F) -> io::Result<Vec<S>>
where
    S: Send + 'static,
    F: Fn(usize) -> O,
    O: Future<Output = io::Result<S>> + Send + 'static,
{
    connect_paced(count, open, None).await
}

/// [`connect_many`], and if given `accepted` (the connections the server has taken so far),
/// never more than [`ACCEPT_WINDOW`] connects ahead of the server. A connect completes in the
/// kernel whether or not the server has called `accept`, so without this a server that falls
/// behind for a moment (on a busy machine) has its backlog overflow, and SYNs dropped then come
/// back only after a second. Stops early, with the connections made so far, once the server has
/// taken none for [`ACCEPT_STALL`] while the window is full (say at its descriptor limit).
async fn connect_paced<S, F, O>(
    count: usize,
    open: F,
    accepted: Option<&AtomicUsize>,
) -> io::Result<Vec<S>>
where
    S: Send + 'static,
    F: Fn(usize) -> O,
    O: Future<Output = io::Result<S>> + Send + 'static,
{
    let mut streams = Vec::with_capacity(count);
    let mut pending = JoinSet::new();
    let mut started = 0;
    let mut window_full_since = None;
    while streams.len() < count {
        let allowed = accepted.map_or(count, |accepted| {
            (accepted.load(Ordering::Relaxed) + ACCEPT_WINDOW).min(count)
        });
        while started < allowed && pending.len() < CONNECT_CONCURRENCY {
            pending.spawn(open(started));
            started += 1;
        }
        match pending.join_next().await {
            Some(joined) => {
                streams.push(joined.expect("connect task")?);
                window_full_since = None;
            }
            None => {
                let since = *window_full_since.get_or_insert_with(Instant::now);
                if since.elapsed() > ACCEPT_STALL {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    Ok(streams)
}

/// What one measurement window saw.
struct Window {
    length: Duration,
    /// CPU seconds the server runtime's threads used during the window.
    server_cpu: f64,
}

/// Runs the phases: warm-up, then the measurement window, then stop.
async fn run_phases(phase: &AtomicU8, warmup: Duration, measure: Duration) -> Window {
    tokio::time::sleep(warmup).await;
    let cpu_before = server_cpu_seconds();
    phase.store(MEASURE, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(measure).await;
    phase.store(STOP, Ordering::Relaxed);
    let length = start.elapsed();
    Window {
        length,
        server_cpu: server_cpu_seconds() - cpu_before,
    }
}

/// The result of one load run: operations per second and server CPU microseconds per operation.
struct Rate {
    per_second: f64,
    cpu_micros: f64,
}

impl Rate {
    fn new(operations: u64, window: &Window) -> Rate {
        Rate {
            per_second: operations as f64 / window.length.as_secs_f64(),
            cpu_micros: window.server_cpu * 1e6 / operations.max(1) as f64,
        }
    }
}

/// How the load generator talks to a server: plain TCP, or TLS through a connector.
#[derive(Clone)]
enum Client {
    Plain,
    Tls(TlsConnector),
}

/// Closed-loop ping-pong on `connections` connections with `size`-byte messages: msgs/s.
async fn echo_load(
    client: &Client,
    address: SocketAddr,
    connections: usize,
    size: usize,
    settings: &Settings,
) -> io::Result<Rate> {
    match client {
        Client::Plain => {
            let streams = connect_many(connections, |_| connect(address)).await?;
            echo_streams(streams, size, settings).await
        }
        Client::Tls(connector) => {
            let streams = connect_many(connections, |_| {
                let connector = connector.clone();
                async move { connect_tls(address, &connector).await }
            })
            .await?;
            echo_streams(streams, size, settings).await
        }
    }
}

/// The closed loops of [`echo_load`] on connections already open.
async fn echo_streams<S>(streams: Vec<S>, size: usize, settings: &Settings) -> io::Result<Rate>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let mut clients = JoinSet::new();
    for mut stream in streams {
        let phase = phase.clone();
        clients.spawn(async move {
            let message = vec![0xA5_u8; size];
            let mut reply = vec![0_u8; size];
            let mut completed = 0_u64;
            loop {
                let started_in = phase.load(Ordering::Relaxed);
                if started_in == STOP {
                    break;
                }
                stream.write_all(&message).await?;
                stream.read_exact(&mut reply).await?;
                if started_in == MEASURE && phase.load(Ordering::Relaxed) == MEASURE {
                    completed += 1;
                }
            }
            Ok::<u64, io::Error>(completed)
        });
    }
    let window = run_phases(&phase, settings.warmup, settings.measure).await;
    let mut total = 0;
    while let Some(joined) = clients.join_next().await {
        total += joined.expect("client task")?;
    }
    Ok(Rate::new(total, &window))
}

fn data_after_the_echo() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "data after the echo")
}

/// One connection's life: connect, one 64 B echo, half-close, wait for the server's FIN.
async fn churn_once(address: SocketAddr) -> io::Result<()> {
    let message = [0x5A_u8; 64];
    let mut reply = [0_u8; 64];
    let mut stream = connect(address).await?;
    stream.write_all(&message).await?;
    stream.read_exact(&mut reply).await?;
    stream.shutdown().await?;
    let mut rest = [0_u8; 16];
    match stream.read(&mut rest).await? {
        0 => Ok(()),
        _ => Err(data_after_the_echo()),
    }
}

/// One TLS connection's life: connect, full handshake, one 64 B echo, `close_notify` and
/// half-close, wait for the server's end of stream (`close_notify`, or a bare FIN).
async fn tls_churn_once(address: SocketAddr, connector: &TlsConnector) -> io::Result<()> {
    let message = [0x5A_u8; 64];
    let mut reply = [0_u8; 64];
    let mut stream = connect_tls(address, connector).await?;
    stream.write_all(&message).await?;
    stream.read_exact(&mut reply).await?;
    // `close_notify` only: tokio-native-tls leaves the socket open.
    stream.shutdown().await?;
    SockRef::from(stream.get_ref().get_ref().get_ref()).shutdown(Shutdown::Write)?;
    let mut rest = [0_u8; 16];
    match stream.read(&mut rest).await {
        Ok(0) => Ok(()),
        Ok(_) => Err(data_after_the_echo()),
        Err(error) if is_eof_without_close_notify(&error) => Ok(()),
        Err(error) => Err(error),
    }
}

/// [`CHURNERS`] concurrent loops of [`churn_once`] or [`tls_churn_once`]: connections/s, and the
/// number of failures.
async fn churn_load(client: &Client, address: SocketAddr, settings: &Settings) -> (Rate, u64) {
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let failures = Arc::new(AtomicU64::new(0));
    let mut churners = JoinSet::new();
    for _ in 0..CHURNERS {
        let phase = phase.clone();
        let failures = failures.clone();
        let client = client.clone();
        churners.spawn(async move {
            let mut completed = 0_u64;
            loop {
                let started_in = phase.load(Ordering::Relaxed);
                if started_in == STOP {
                    break;
                }
                let outcome = match &client {
                    Client::Plain => churn_once(address).await,
                    Client::Tls(connector) => tls_churn_once(address, connector).await,
                };
                match outcome {
                    Ok(()) => {
                        if started_in == MEASURE && phase.load(Ordering::Relaxed) == MEASURE {
                            completed += 1;
                        }
                    }
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            completed
        });
    }
    let window = run_phases(&phase, settings.warmup, settings.measure).await;
    let mut total = 0;
    while let Some(joined) = churners.join_next().await {
        total += joined.expect("churn task");
    }
    (Rate::new(total, &window), failures.load(Ordering::Relaxed))
}

// ---------------------------------------------------------------------------------------------
// Idle memory
// ---------------------------------------------------------------------------------------------

/// This process's resident set in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .expect("VmRSS in /proc/self/status")
}

/// How many idle connections `scenario` can hold when it wants `wanted` (`None`: as many as
/// possible). The server child and this process each hold one descriptor per connection plus
/// [`DESCRIPTOR_RESERVE`]; the soft limit is raised toward the hard one if that helps (the child
/// inherits it), and the count is scaled down to what the limits allow, with a message.
fn connections_within_limits(scenario: &str, wanted: Option<usize>) -> usize {
    let Some((soft, hard)) = descriptor_limits() else {
        return wanted.unwrap_or(QUICK_MAX_CONNECTIONS);
    };
    let needed = wanted.map_or(usize::MAX, |n| n.saturating_add(DESCRIPTOR_RESERVE));
    let mut soft = soft;
    if soft < needed && soft < hard {
        let raised = needed.min(hard).min(system_descriptor_ceiling());
        match raise_descriptor_limit(raised) {
            Ok(()) => {
                eprintln!("  {scenario}: raised the soft open files limit from {soft} to {raised}");
                soft = raised;
            }
            Err(error) => eprintln!("  {scenario}: could not raise the open files limit: {error}"),
        }
    }
    let room = soft.saturating_sub(DESCRIPTOR_RESERVE);
    match wanted {
        Some(wanted) if wanted <= room => wanted,
        Some(wanted) => {
            eprintln!(
                "  {scenario}: open files limit {soft} (hard {hard}): scaling {} connections \
                 down to {} (the server and the client process each need one descriptor per \
                 connection; more needs a higher hard limit)",
                thousands(wanted as f64),
                thousands(room as f64)
            );
            room
        }
        None => {
            eprintln!(
                "  {scenario}: open files limit {soft} (hard {hard}): as many connections as it allows, {}",
                thousands(room as f64)
            );
            room
        }
    }
}

/// How long the memory child waits, once the count it holds stops growing, before it reports
/// fewer connections than asked for.
const ACCEPT_STALL: Duration = Duration::from_secs(5);

/// The memory child: runs one server, reports its growth over `MEASURE n` connections.
///
/// Protocol on stdin/stdout: prints `READY port`; reads `MEASURE n` (sent before the parent starts
/// connecting); waits until the server holds `n` connections, or until the count has not grown
/// for [`ACCEPT_STALL`], printing `HELD count` as it grows (the parent paces its connects by it);
/// prints `RESULT held rss_delta heap_delta accept_micros`, where `accept_micros` runs from
/// `MEASURE` to the last connection taken; exits when stdin closes.
fn memory_server(kind: Kind) {
    COUNTING.store(true, Ordering::Relaxed);
    let server = Running::start(kind, None);
    std::thread::sleep(Duration::from_millis(100));
    let base_rss = rss_bytes();
    let base_heap = LIVE_HEAP.load(Ordering::Relaxed);
    let mut stdout = io::stdout();
    writeln!(stdout, "READY {}", server.address.port()).expect("write to the parent");
    stdout.flush().expect("flush to the parent");

    let mut stdin = io::stdin().lock();
    let mut line = String::new();
    stdin.read_line(&mut line).expect("read from the parent");
    let count: usize = line
        .strip_prefix("MEASURE ")
        .and_then(|n| n.trim().parse().ok())
        .expect("MEASURE n from the parent");
    let began = Instant::now();
    let (mut held, mut last_change) = (server.live(), began);
    while held != count && last_change.elapsed() < ACCEPT_STALL {
        std::thread::sleep(Duration::from_millis(1));
        let now = server.live();
        if now != held {
            (held, last_change) = (now, Instant::now());
            writeln!(stdout, "HELD {held}").expect("write to the parent");
            stdout.flush().expect("flush to the parent");
        }
    }
    let accept_micros = (last_change - began).as_micros();
    // Let the last callbacks run and the server thread go idle.
    std::thread::sleep(Duration::from_millis(200));
    let rss = rss_bytes() as i64 - base_rss as i64;
    let heap = LIVE_HEAP.load(Ordering::Relaxed) - base_heap;
    writeln!(stdout, "RESULT {held} {rss} {heap} {accept_micros}").expect("write to the parent");
    stdout.flush().expect("flush to the parent");
    line.clear();
    while stdin.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
        line.clear();
    }
    // Exit at once: the runtime's teardown is not part of any measurement.
    std::process::exit(0);
}

/// What one fresh server process showed for its idle connections.
struct Idle {
    /// Connections the server held.
    held: usize,
    /// Growth of the resident set per connection held, in bytes.
    rss: f64,
    /// Growth of the live heap per connection held, in bytes.
    heap: f64,
    /// From the first connect to the server holding the last connection it took.
    accept: Duration,
}

/// `connections` idle connections to one fresh server process of `kind`, from
/// [`source_address`]es: what the server held and what that cost it.
///
/// The connects run on a current-thread runtime, one core's worth, and are paced by the
/// server's accepts ([`connect_paced`]): on loopback a connect does the whole handshake in the
/// client's system call, so a client on both cores of a 2-core machine outruns a server's accept
/// loop, and the time to accept them all would be SYN retransmission timeouts.
fn memory_round(kind: Kind, connections: usize) -> Result<Idle, String> {
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("client runtime: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut child = Command::new(exe)
        .args(["--memory-server", kind.name()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn the memory server: {e}"))?;
    let result = (|| {
        let mut to_child = child.stdin.take().expect("piped stdin");
        let mut from_child = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        from_child.read_line(&mut line).map_err(|e| e.to_string())?;
        let port: u16 = line
            .strip_prefix("READY ")
            .and_then(|port| port.trim().parse().ok())
            .ok_or_else(|| format!("unexpected from the memory server: {line:?}"))?;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        // From here on the child's lines are read by a thread: `HELD` ones update `held`, which
        // paces the connects, and the first other one is the result.
        let held = Arc::new(AtomicUsize::new(0));
        let (result_sender, result) = std::sync::mpsc::channel();
        let progress = held.clone();
        std::thread::spawn(move || {
            for line in from_child.lines().map_while(Result::ok) {
                match line.strip_prefix("HELD ").and_then(|n| n.parse().ok()) {
                    Some(count) => progress.store(count, Ordering::Relaxed),
                    None => {
                        let _ = result_sender.send(line);
                        break;
                    }
                }
            }
        });
        // The child's clock for accepting starts here.
        writeln!(to_child, "MEASURE {connections}").map_err(|e| e.to_string())?;
        to_child.flush().map_err(|e| e.to_string())?;
        let streams = client
            .block_on(connect_paced(
                connections,
                |index| connect_from(address, index),
                Some(&held),
            ))
            .map_err(|e| format!("opening {connections} connections: {e}"))?;
        let line = result
            .recv()
            .map_err(|_| "the memory server ended without a result".to_string())?;
        let fields: Vec<f64> = line
            .strip_prefix("RESULT ")
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|f| f.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let &[held, rss, heap, accept_micros] = fields.as_slice() else {
            return Err(format!("unexpected from the memory server: {line:?}"));
        };
        {
            let _context = client.enter();
            drop(streams);
        }
        drop(to_child);
        let per_connection = held.max(1.0);
        Ok(Idle {
            held: held as usize,
            rss: rss / per_connection,
            heap: heap / per_connection,
            accept: Duration::from_micros(accept_micros as u64),
        })
    })();
    if result.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    result
}

// ---------------------------------------------------------------------------------------------
// Instruction counts: one server in the foreground, driven by a client process
// ---------------------------------------------------------------------------------------------

/// A server the instruction count can run in the foreground: a kind of the benchmark, or the
/// API floor (`api`, or `api-static` without boxed callback futures; see `benches/api_floor`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Foreground {
    Kind(Kind),
    ApiFloor { boxed: bool },
}

/// `--echo-server KIND --connections C`: one plain server of `kind` on this (main) thread alone,
/// announced on stdout as `listening on ADDRESS`, until `connections` connections have come and
/// gone. Then it returns, so the process exits normally and a tool it runs under (cachegrind)
/// writes its totals; no signal handling is needed, and the end comes at the same point of the
/// work in every run.
fn foreground_server(kind: Foreground, connections: usize) {
    let tally = Tally::new(connections);
    let announce = |address: SocketAddr| {
        let mut stdout = io::stdout().lock();
        writeln!(stdout, "listening on {address}").expect("write to stdout");
        stdout.flush().expect("flush stdout");
    };
    if kind == Foreground::Kind(Kind::Mio) {
        let listener = mio_listener();
        announce(listener.local_addr().expect("mio listens"));
        mio_serve(listener, &tally).expect("the mio server's poll");
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build the server runtime");
    runtime.block_on(async {
        match kind {
            Foreground::Kind(Kind::Switchboard) => {
                let server = start_switchboard(None, tally.clone())
                    .await
                    .expect("start the switchboard server");
                announce(server.local_addr().expect("switchboard listens"));
                tally.done.notified().await;
                server.shutdown().await;
            }
            Foreground::Kind(Kind::Raw) | Foreground::ApiFloor { .. } => {
                let listener =
                    TcpListener::from_std(std_listener()).expect("the raw tokio listener");
                announce(listener.local_addr().expect("raw tokio listens"));
                let accept = match kind {
                    Foreground::ApiFloor { boxed } => {
                        tokio::spawn(api_floor::accept_loop(listener, tally.clone(), boxed))
                    }
                    _ => tokio::spawn(raw_accept_loop(listener, tally.clone())),
                };
                tally.done.notified().await;
                accept.abort();
            }
            Foreground::Kind(Kind::Mio) => unreachable!("served above"),
        }
    });
}

/// `--echo-client ADDRESS --connections C --messages M [--size BYTES]`: opens C connections,
/// then echoes M messages in all over them (each a closed loop: write one, read the reply; the
/// messages spread evenly), then half-closes each and waits for the server's FIN, so the server
/// is done with every connection when this returns.
fn foreground_client(
    address: SocketAddr,
    connections: usize,
    messages: u64,
    size: usize,
) -> io::Result<()> {
    let runtime = runtime("client");
    runtime.block_on(async {
        let streams = connect_many(connections, |_| connect(address)).await?;
        let began = Instant::now();
        let mut clients = JoinSet::new();
        let (each, rest) = (messages / connections as u64, messages % connections as u64);
        for (index, mut stream) in streams.into_iter().enumerate() {
            let share = each + u64::from((index as u64) < rest);
            clients.spawn(async move {
                let message = vec![0xA5_u8; size];
                let mut reply = vec![0_u8; size];
                for _ in 0..share {
                    stream.write_all(&message).await?;
                    stream.read_exact(&mut reply).await?;
                }
                stream.shutdown().await?;
                let mut after = [0_u8; 16];
                match stream.read(&mut after).await? {
                    0 => Ok(()),
                    _ => Err(data_after_the_echo()),
                }
            });
        }
        while let Some(joined) = clients.join_next().await {
            joined.expect("client task")?;
        }
        eprintln!(
            "echoed {messages} messages of {size} B on {connections} connections in {:.2} s",
            began.elapsed().as_secs_f64()
        );
        Ok(())
    })
}

/// `--echo-client ADDRESS --connections C --churn`: C connections one after another, each living
/// as in the churn scenario ([`churn_once`]), so the server is done with every connection when
/// this returns. One at a time, so that a count of the server's instructions per connection
/// (`CHURN=1 benches/instructions.sh`) does not depend on how connections overlap.
fn foreground_churn(address: SocketAddr, connections: usize) -> io::Result<()> {
    let runtime = runtime("client");
    runtime.block_on(async {
        let began = Instant::now();
        for _ in 0..connections {
            churn_once(address).await?;
        }
        eprintln!(
            "churned {connections} connections in {:.2} s",
            began.elapsed().as_secs_f64()
        );
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

const USAGE: &str = "\
usage: echo [--quick] [--only SCENARIO,...] [--max-connections N] [--rounds N]
                the benchmark (cargo bench --bench echo -- ...); scenarios: echo, churn, tls,
                idle, max-connections (all by default); --rounds: of the echo, churn and tls
                scenarios (5, or 2 with --quick)
       echo --echo-server switchboard|raw|mio|api|api-static --connections C
       echo --echo-client ADDRESS --connections C --messages M [--size BYTES]
       echo --echo-client ADDRESS --connections C --churn
       echo --memory-server switchboard|raw|mio     (started by the benchmark itself)";

/// Ends the process with `message` and the usage.
fn usage_error(message: &str) -> ! {
    eprintln!("echo: {message}\n{USAGE}");
    std::process::exit(2)
}

/// The value after `flag` in `args`, parsed; `None` if the flag is absent. A missing or
/// malformed value ends the process with the usage.
fn option<T: std::str::FromStr>(args: &[String], flag: &str) -> Option<T> {
    let position = args.iter().position(|arg| arg == flag)?;
    match args.get(position + 1).map(|value| value.parse()) {
        Some(Ok(value)) => Some(value),
        _ => usage_error(&format!("{flag} needs a valid value")),
    }
}

/// The value of `flag`, which `mode` needs.
fn required<T: std::str::FromStr>(args: &[String], flag: &str, mode: &str) -> T {
    option(args, flag).unwrap_or_else(|| usage_error(&format!("{mode} needs {flag}")))
}

// ---------------------------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------------------------

/// A column of the tables: a server kind, or raw tokio's second server (the noise band).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Kind(Kind),
    /// A second raw tokio server, the same code as [`Kind::Raw`]'s: its ratio to raw tokio is
    /// the machine's noise in that scenario.
    RawB,
}

impl Side {
    /// The kind of server this side runs.
    fn kind(self) -> Kind {
        match self {
            Side::Kind(kind) => kind,
            Side::RawB => Kind::Raw,
        }
    }

    fn index(self) -> usize {
        match self {
            Side::Kind(kind) => kind.index(),
            Side::RawB => 3,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Side::Kind(kind) => kind.name(),
            Side::RawB => "raw B",
        }
    }
}

impl From<Kind> for Side {
    fn from(kind: Kind) -> Side {
        Side::Kind(kind)
    }
}

/// One scenario's results, per round, for each side (indexed by [`Side::index`]).
struct Row {
    name: String,
    unit: &'static str,
    values: [Vec<f64>; 4],
    /// Decimals shown: 0 prints thousands separators instead.
    decimals: usize,
    note: String,
}

impl Row {
    fn new(name: impl Into<String>, unit: &'static str) -> Row {
        Row {
            name: name.into(),
            unit,
            values: Default::default(),
            decimals: 0,
            note: String::new(),
        }
    }

    fn with_decimals(mut self, decimals: usize) -> Row {
        self.decimals = decimals;
        self
    }

    fn format(&self, value: f64) -> String {
        if self.decimals == 0 {
            thousands(value)
        } else {
            format!("{value:.*}", self.decimals)
        }
    }

    fn push(&mut self, side: impl Into<Side>, value: f64) {
        self.values[side.into().index()].push(value);
    }

    fn median(&self, side: impl Into<Side>) -> Option<f64> {
        let values = &self.values[side.into().index()];
        (!values.is_empty()).then(|| median(values))
    }

    /// median(switchboard) / median(`baseline`); NaN where either is missing.
    fn ratio(&self, baseline: impl Into<Side>) -> f64 {
        self.ratio_of(Kind::Switchboard, baseline)
    }

    /// median(`side`) / median(`baseline`); NaN where either is missing.
    fn ratio_of(&self, side: impl Into<Side>, baseline: impl Into<Side>) -> f64 {
        match (self.median(side), self.median(baseline)) {
            (Some(side), Some(baseline)) => side / baseline,
            _ => f64::NAN,
        }
    }

    /// The median over rounds of `side`'s value ÷ `baseline`'s in the same round (measured one
    /// after the other, so slow drifts of the machine cancel); NaN unless both have every round.
    fn round_ratio(&self, side: impl Into<Side>, baseline: impl Into<Side>) -> f64 {
        let (side, baseline) = (
            &self.values[side.into().index()],
            &self.values[baseline.into().index()],
        );
        // A failed round leaves a side short, and its rounds would no longer pair up.
        let rounds = self.values.iter().map(Vec::len).max().unwrap_or(0);
        if side.is_empty() || side.len() != rounds || baseline.len() != rounds {
            return f64::NAN;
        }
        let ratios: Vec<f64> = side.iter().zip(baseline).map(|(s, b)| s / b).collect();
        median(&ratios)
    }

    /// The noise band: how far apart the two raw tokio servers' medians were, as a ratio of at
    /// least 1; NaN where raw tokio B did not run.
    fn noise(&self) -> f64 {
        let ratio = self.ratio_of(Side::RawB, Kind::Raw);
        ratio.max(1.0 / ratio)
    }
}

fn rounds_list(row: &Row, values: &[f64]) -> String {
    values
        .iter()
        .map(|v| row.format(*v))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A ratio as printed: `-` where a side is missing.
fn format_ratio(ratio: f64) -> String {
    if ratio.is_nan() {
        "-".to_string()
    } else {
        format!("{ratio:.3}")
    }
}

fn print_table(title: &str, rows: &[Row]) {
    println!();
    println!("{title}");
    println!(
        "{:<22} {:>13} {:>13} {:>13} {:>7} {:>7} {:>7}  {:<14} rounds: switchboard | raw | mio | raw B",
        "scenario", "switchboard", "raw tokio", "mio", "sb/raw", "sb/mio", "B/raw", "unit"
    );
    println!("{}", "-".repeat(138));
    for row in rows {
        let median = |kind: Kind| {
            row.median(kind)
                .map_or("n/a".to_string(), |v| row.format(v))
        };
        let rounds = |side: Side| match &row.values[side.index()] {
            values if values.is_empty() => "-".to_string(),
            values => rounds_list(row, values),
        };
        println!(
            "{:<22} {:>13} {:>13} {:>13} {:>7} {:>7} {:>7}  {:<14} {} | {} | {} | {}{}",
            row.name,
            median(Kind::Switchboard),
            median(Kind::Raw),
            median(Kind::Mio),
            format_ratio(row.ratio(Kind::Raw)),
            format_ratio(row.ratio(Kind::Mio)),
            format_ratio(row.ratio_of(Side::RawB, Kind::Raw)),
            row.unit,
            rounds(Kind::Switchboard.into()),
            rounds(Kind::Raw.into()),
            rounds(Kind::Mio.into()),
            rounds(Side::RawB),
            row.note
        );
    }
}

/// The order of `sides` in round `round`: rotated by one each round, so each side takes each
/// place in turn (with two sides, they alternate which goes first).
fn order<T: Copy>(round: usize, sides: &[T]) -> Vec<T> {
    let mut sides = sides.to_vec();
    let len = sides.len();
    sides.rotate_left(round % len);
    sides
}

/// The servers of one protocol, and how clients reach them.
struct Servers {
    running: Vec<(Side, Running)>,
    client: Client,
}

impl Servers {
    /// One server of each of `kinds`, and raw tokio B, TLS ones if given an acceptor.
    fn start(kinds: &[Kind], tls: Option<&native_tls::TlsAcceptor>, client: Client) -> Servers {
        let sides = kinds
            .iter()
            .map(|&kind| Side::from(kind))
            .chain([Side::RawB]);
        Servers {
            running: sides
                .map(|side| (side, Running::start(side.kind(), tls)))
                .collect(),
            client,
        }
    }

    fn sides(&self) -> Vec<Side> {
        self.running.iter().map(|(side, _)| *side).collect()
    }

    fn get(&self, side: impl Into<Side>) -> &Running {
        let side = side.into();
        self.running
            .iter()
            .find_map(|(s, running)| (*s == side).then_some(running))
            .expect("a server of each side asked for")
    }
}

/// After a measurement: waits until the server has closed every connection of it.
fn settle(running: &Running, side: Side) {
    if !running.wait_for_live(0, Duration::from_secs(10)) {
        eprintln!(
            "  warning: {} still holds {} connections",
            side.name(),
            running.live()
        );
    }
}

/// The throughput scenario `name` against every server of `servers`, in interleaved rounds:
/// rows of msgs/s and of server µs/msg.
fn throughput(
    client_runtime: &Runtime,
    servers: &Servers,
    name: &str,
    size: usize,
    connections: usize,
    settings: &Settings,
) -> (Row, Row) {
    let mut row = Row::new(name, "msgs/s");
    let mut cpu_row = Row::new(name, "server µs/msg").with_decimals(2);
    for round in 0..settings.rounds {
        for side in order(round, &servers.sides()) {
            let running = servers.get(side);
            let result = client_runtime.block_on(echo_load(
                &servers.client,
                running.address,
                connections,
                size,
                settings,
            ));
            match result {
                Ok(rate) => {
                    eprintln!(
                        "  {name:<18} round {round} {:<11} {:>12} msgs/s  {:>6.2} server µs/msg",
                        side.name(),
                        thousands(rate.per_second),
                        rate.cpu_micros
                    );
                    row.push(side, rate.per_second);
                    cpu_row.push(side, rate.cpu_micros);
                }
                Err(error) => {
                    eprintln!(
                        "  {name:<18} round {round} {:<11} FAILED: {error}",
                        side.name()
                    );
                    row.note = format!("  ({} failed: {error})", side.name());
                }
            }
            settle(running, side);
        }
    }
    (row, cpu_row)
}

/// The churn scenario `name` against every server of `servers`, in interleaved rounds: rows of
/// conns/s and of server µs/conn.
fn churn(
    client_runtime: &Runtime,
    servers: &Servers,
    name: &str,
    settings: &Settings,
) -> (Row, Row) {
    let mut row = Row::new(name, "conns/s");
    let mut cpu_row = Row::new(name, "server µs/conn").with_decimals(2);
    let mut failures = [0_u64; 4];
    for round in 0..settings.rounds {
        for side in order(round, &servers.sides()) {
            let running = servers.get(side);
            let (rate, failed) =
                client_runtime.block_on(churn_load(&servers.client, running.address, settings));
            eprintln!(
                "  {name:<18} round {round} {:<11} {:>12} conns/s {:>6.2} server µs/conn ({failed} failed)",
                side.name(),
                thousands(rate.per_second),
                rate.cpu_micros
            );
            failures[side.index()] += failed;
            row.push(side, rate.per_second);
            cpu_row.push(side, rate.cpu_micros);
            settle(running, side);
        }
    }
    if failures.iter().any(|&failed| failed > 0) {
        row.note = format!(
            "  (failed connects: switchboard {}, raw {}, mio {}, raw B {})",
            failures[Kind::Switchboard.index()],
            failures[Kind::Raw.index()],
            failures[Kind::Mio.index()],
            failures[Side::RawB.index()]
        );
    }
    (row, cpu_row)
}

/// Scenario 4: idle memory per connection, [`Settings::idle_connections`] to a fresh server
/// process per round and kind: rows of resident set and heap bytes per connection.
fn idle_memory(settings: &Settings) -> [Row; 2] {
    let connections = connections_within_limits("idle", Some(settings.idle_connections));
    let mut rss_row = Row::new(format!("idle RSS x{connections}"), "bytes/conn");
    let mut heap_row = Row::new(format!("idle heap x{connections}"), "bytes/conn");
    for round in 0..settings.memory_rounds {
        for kind in order(round, &PLAIN_KINDS) {
            match memory_round(kind, connections) {
                Ok(idle) if idle.held == connections => {
                    eprintln!(
                        "  idle x{connections:<10} round {round} {:<11} {:>8} B/conn RSS, {:>8} B/conn heap",
                        kind.name(),
                        thousands(idle.rss),
                        thousands(idle.heap)
                    );
                    rss_row.push(kind, idle.rss);
                    heap_row.push(kind, idle.heap);
                }
                outcome => {
                    let error = match outcome {
                        Ok(idle) => format!("held {} of {connections}", idle.held),
                        Err(error) => error,
                    };
                    eprintln!("  idle round {round} {} FAILED: {error}", kind.name());
                    rss_row.note = format!("  ({} failed: {error})", kind.name());
                }
            }
        }
    }
    [rss_row, heap_row]
}

/// Scenario 5: as many idle connections as the limits allow (or `--max-connections`), once per
/// kind, each to a fresh server process: rows of connections held, resident set and heap bytes
/// per connection held, and the time to accept them all.
fn max_connections(settings: &Settings) -> [Row; 4] {
    let connections = connections_within_limits("max-connections", settings.max_connections);
    let label = thousands(connections as f64);
    let mut held_row = Row::new(format!("max held x{label}"), "connections");
    let mut rss_row = Row::new(format!("max RSS x{label}"), "bytes/conn");
    let mut heap_row = Row::new(format!("max heap x{label}"), "bytes/conn");
    let mut accept_row =
        Row::new(format!("max accept x{label}"), "s to accept all").with_decimals(2);
    for kind in PLAIN_KINDS {
        match memory_round(kind, connections) {
            Ok(idle) => {
                eprintln!(
                    "  max x{label:<11} {:<11} held {:>7}, {:>6} B/conn RSS, {:>6} B/conn heap, all accepted in {:.2} s",
                    kind.name(),
                    thousands(idle.held as f64),
                    thousands(idle.rss),
                    thousands(idle.heap),
                    idle.accept.as_secs_f64()
                );
                if idle.held < connections {
                    held_row.note = format!(
                        "  ({} held {} of {label})",
                        kind.name(),
                        thousands(idle.held as f64)
                    );
                }
                held_row.push(kind, idle.held as f64);
                rss_row.push(kind, idle.rss);
                heap_row.push(kind, idle.heap);
                accept_row.push(kind, idle.accept.as_secs_f64());
            }
            Err(error) => {
                eprintln!("  max x{label} {} FAILED: {error}", kind.name());
                held_row.note = format!("  ({} failed: {error})", kind.name());
            }
        }
    }
    [held_row, rss_row, heap_row, accept_row]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--help" || arg == "-h") {
        println!("{USAGE}");
        return;
    }
    if let Some(kind) = option(&args, "--memory-server") {
        memory_server(kind);
        return;
    }
    if let Some(kind) = option::<String>(&args, "--echo-server") {
        let connections: usize = required(&args, "--connections", "--echo-server");
        if connections == 0 {
            usage_error("--connections must be at least 1");
        }
        match kind.as_str() {
            "api" => foreground_server(Foreground::ApiFloor { boxed: true }, connections),
            "api-static" => foreground_server(Foreground::ApiFloor { boxed: false }, connections),
            kind => match kind.parse() {
                Ok(kind) => foreground_server(Foreground::Kind(kind), connections),
                Err(()) => usage_error(&format!("unknown server kind {kind:?}")),
            },
        }
        return;
    }
    if let Some(address) = option(&args, "--echo-client") {
        let connections: usize = required(&args, "--connections", "--echo-client");
        if connections == 0 {
            usage_error("--connections must be at least 1");
        }
        if args.iter().any(|arg| arg == "--churn") {
            if let Err(error) = foreground_churn(address, connections) {
                eprintln!("echo client: {error}");
                std::process::exit(1);
            }
            return;
        }
        let messages = required(&args, "--messages", "--echo-client");
        let size = option(&args, "--size").unwrap_or(64);
        if let Err(error) = foreground_client(address, connections, messages, size) {
            eprintln!("echo client: {error}");
            std::process::exit(1);
        }
        return;
    }
    let settings = Settings::from_args(&args);
    let began = Instant::now();

    let limits = descriptor_limits();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    eprintln!(
        "echo bench{}: {} cores, open files limit {}, {} rounds of {:?} (+{:?} warm-up)",
        if settings.quick { " (--quick)" } else { "" },
        cores,
        limits.map_or("unknown".to_string(), |(soft, hard)| format!(
            "{soft} (hard {hard})"
        )),
        settings.rounds,
        settings.measure,
        settings.warmup,
    );

    let client_runtime = runtime("client");
    let plain = (settings.runs("echo") || settings.runs("churn"))
        .then(|| Servers::start(&PLAIN_KINDS, None, Client::Plain));
    let tls = settings.runs("tls").then(|| {
        let acceptor = native_tls::Identity::from_pkcs8(SERVER_PEM, SERVER_KEY)
            .and_then(native_tls::TlsAcceptor::new)
            .expect("build the TLS acceptor from tests/certs");
        Servers::start(&TLS_KINDS, Some(&acceptor), Client::Tls(tls_connector()))
    });

    let mut rows = Vec::new();
    let mut cpu_rows = Vec::new();

    if let Some(plain) = &plain {
        // 1. Throughput.
        if settings.runs("echo") {
            let scenarios = [
                ("echo 64B x50", 64, 50),
                ("echo 4KiB x50", 4096, 50),
                ("echo 64B x1000", 64, 1000),
            ];
            for (name, size, connections) in scenarios {
                let (row, cpu_row) =
                    throughput(&client_runtime, plain, name, size, connections, &settings);
                rows.push(row);
                cpu_rows.push(cpu_row);
            }
        }

        // 2. Connection churn.
        if settings.runs("churn") {
            let name = format!("churn x{CHURNERS}");
            let (row, cpu_row) = churn(&client_runtime, plain, &name, &settings);
            rows.push(row);
            cpu_rows.push(cpu_row);
        }
    }

    // 3. TLS: echo, then churn.
    if let Some(tls) = &tls {
        let name = format!(
            "tls echo {}KiB x{TLS_ECHO_CONNECTIONS}",
            TLS_ECHO_SIZE / 1024
        );
        let (row, cpu_row) = throughput(
            &client_runtime,
            tls,
            &name,
            TLS_ECHO_SIZE,
            TLS_ECHO_CONNECTIONS,
            &settings,
        );
        rows.push(row);
        cpu_rows.push(cpu_row);
        let name = format!("tls churn x{CHURNERS}");
        let (row, cpu_row) = churn(&client_runtime, tls, &name, &settings);
        rows.push(row);
        cpu_rows.push(cpu_row);
    }

    // 4. Idle memory, in child processes.
    if settings.runs("idle") {
        rows.extend(idle_memory(&settings));
    }

    // 5. As many idle connections as the limits allow, in child processes.
    if settings.runs("max-connections") {
        rows.extend(max_connections(&settings));
    }

    print_table("Throughput, churn and memory (median of each side):", &rows);
    if !cpu_rows.is_empty() {
        print_table(
            "Server CPU per operation (server threads, /proc; less sensitive to a noisy neighbour):",
            &cpu_rows,
        );
    }
    println!();
    println!(
        "sb/raw = median(switchboard) / median(raw tokio), sb/mio = median(switchboard) / median(mio),"
    );
    println!(
        "B/raw = median(raw tokio B) / median(raw tokio): the same server twice, this run's noise."
    );
    println!(
        "Higher is better for msgs/s and conns/s (target >= 0.90 of raw tokio); lower is better for"
    );
    println!(
        "bytes/conn (target <= 1.00) and for server CPU per op (target <= 1.00 of raw tokio). mio is"
    );
    println!("the floor: what the kernel work alone costs on one thread.");
    println!();
    // With the noise band where raw tokio B ran: switchboard's ratio is beyond the noise when it
    // is above the band or below its inverse.
    // And the medians of the rounds' own ratios (each round's servers run one after the
    // other): steadier where the machine drifts between rounds.
    let noise = |row: &Row| match row.noise() {
        band if band.is_nan() => String::new(),
        band => format!(
            " noise {band:.2} (by round: {:.2}, raw B {:.2})",
            row.round_ratio(Kind::Switchboard, Kind::Raw),
            row.round_ratio(Side::RawB, Kind::Raw)
        ),
    };
    for row in &rows {
        println!(
            "ratio {}: {:.2}{}",
            row.name,
            row.ratio(Kind::Raw),
            noise(row)
        );
    }
    for row in &rows {
        if row.median(Kind::Mio).is_some() {
            println!("ratio vs mio {}: {:.2}", row.name, row.ratio(Kind::Mio));
        }
    }
    for row in &cpu_rows {
        println!(
            "cpu ratio {}: {:.2}{}",
            row.name,
            row.ratio(Kind::Raw),
            noise(row)
        );
    }
    for row in &cpu_rows {
        if row.median(Kind::Mio).is_some() {
            println!("cpu ratio vs mio {}: {:.2}", row.name, row.ratio(Kind::Mio));
        }
    }
    eprintln!("\nfinished in {:.1} s", began.elapsed().as_secs_f64());

    for servers in plain.iter().chain(&tls) {
        let running = servers.get(Kind::Switchboard);
        if let (Some(switchboard), Some(runtime)) = (&running.switchboard, &running.runtime) {
            runtime.block_on(switchboard.shutdown());
        }
    }
    client_runtime.shutdown_background();
}
