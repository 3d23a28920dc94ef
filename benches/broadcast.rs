//! Chat broadcast benchmark: one speaker, 1,000 listening members, switchboard's
//! [`ConnectionGroup::broadcast_batch_except`] beside a raw tokio room built on
//! `tokio::sync::broadcast`, in the same run.
//!
//! ```text
//! cargo bench --bench broadcast
//! cargo bench --bench broadcast -- --quick
//! cargo bench --bench broadcast -- --members 1000 --size 64 --window 32
//! cargo bench --bench broadcast -- --per-line
//! cargo bench --bench broadcast -- --quick --warmup-ms 100 --measure-ms 3000 --only switchboard
//! ```
//!
//! # What is measured
//! Two chat rooms, each on `127.0.0.1:0` and each on one thread of its own (a current-thread
//! tokio runtime, as in `benches/echo.rs`). Every connection is a member; every line a member
//! sends goes to every other member:
//! - **switchboard**: members join a [`ConnectionGroup`] when established and read; each read is
//!   cut into lines (the unfinished rest kept in a user data slot), and the lines are
//!   `broadcast_batch_except` to the others (posted to each member once per read; with
//!   `--per-line`, each line is `broadcast_except` on its own), the read buffer itself shared by
//!   every member (zero copy). A member's task writes what is queued for it with one `write`
//!   (small lines gathered into one buffer) or `writev`.
//! - **raw tokio**: the idiom of tokio's chat example with the channel made for this,
//!   `tokio::sync::broadcast` (`(sender, Bytes)` items, capacity 1,024): a task per member
//!   that `select!`s between reading lines (each one `send` to the channel) and receiving from
//!   its subscription; on a message it also takes every one already waiting (`try_recv`),
//!   copies those not its own into one buffer and `write_all`s it (one `write` per wake, as
//!   switchboard's `writev`).
//!
//! The load: `--members` (1,000) listening connections and one speaker. The speaker writes
//! `--size`-byte lines (64), keeping at most `--window` (32) lines ahead of what every member has
//! received on average, so that no queue grows without bound and nothing is dropped (a room
//! that falls behind is slowed down, not flooded). The listeners read everything and count it.
//! After a warm-up (0.5 s; 0.2 s with `--quick`), deliveries (lines received by a member) are
//! counted over a window (2 s; 0.8 s), with the server thread's CPU time (user + system, from
//! `/proc/self/task/*/stat`, 10 ms ticks) over the same window. The two rooms alternate, 5
//! rounds (2 with `--quick`), and the medians are compared: deliveries per second, and server
//! CPU per delivery, which is what to trust on a shared machine.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::{
    async_trait, Bytes, BytesMut, Callbacks, Connection, ConnectionGroup, Server, Slot,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinSet;

#[path = "common/mod.rs"]
mod common;

use common::{median, server_cpu_seconds, server_thread, thousands};

const LOCALHOST: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
/// The raw room's channel: far more than the window, so that no member lags behind it.
const CHANNEL_CAPACITY: usize = 1024;

struct Settings {
    rounds: usize,
    warmup: Duration,
    measure: Duration,
    members: usize,
    size: usize,
    window: u64,
}

impl Settings {
    fn from_args() -> Settings {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let option = |flag: &str| {
            args.iter()
                .position(|arg| arg == flag)
                .and_then(|at| args.get(at + 1))
                .map(|value| {
                    value.parse::<u64>().unwrap_or_else(|_| {
                        eprintln!("{flag}: not a number: {value}");
                        std::process::exit(2)
                    })
                })
        };
        let quick = args.iter().any(|arg| arg == "--quick");
        let millis =
            |flag: &str, default: u64| Duration::from_millis(option(flag).unwrap_or(default));
        let size = option("--size").unwrap_or(64) as usize;
        if size < 2 {
            eprintln!("--size: a line needs at least 2 bytes");
            std::process::exit(2);
        }
        Settings {
            rounds: option("--rounds")
                .map_or(if quick { 2 } else { 5 }, |rounds| rounds.max(1) as usize),
            warmup: millis("--warmup-ms", if quick { 200 } else { 500 }),
            measure: millis("--measure-ms", if quick { 800 } else { 2000 }),
            members: option("--members").unwrap_or(1000).max(1) as usize,
            size,
            window: option("--window").unwrap_or(32).max(1),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The two rooms
// ---------------------------------------------------------------------------------------------

/// The switchboard room.
struct Room {
    members: ConnectionGroup,
    /// The unfinished line of a member's last read.
    pending: Slot<BytesMut>,
    /// `--per-line`: a `broadcast_except` per line rather than one `broadcast_batch_except` per
    /// read.
    per_line: bool,
}

#[async_trait]
impl Callbacks for Room {
    async fn on_connection_established(&self, connection: &Connection, _peer: &SocketAddr) {
        self.members.insert(connection);
        connection.read();
    }

    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        let lines = connection.user_data().with(self.pending, |pending| {
            let pending = pending.get_or_insert_with(BytesMut::new);
            pending.unsplit(data);
            cut_lines(pending)
        });
        if self.per_line {
            for line in lines {
                self.members.broadcast_except(line, connection.id());
            }
        } else {
            self.members.broadcast_batch_except(&lines, connection.id());
        }
        connection.read();
    }
}

/// The whole lines at the front of `pending`, each with its `\n`, sharing its buffer.
fn cut_lines(pending: &mut BytesMut) -> Vec<Bytes> {
    let mut lines = Vec::new();
    while let Some(end) = pending.iter().position(|&byte| byte == b'\n') {
        lines.push(pending.split_to(end + 1).freeze());
    }
    lines
}

/// The raw tokio room's accept loop.
async fn raw_room(listener: TcpListener, live: Arc<AtomicUsize>) {
    let (sender, _) = broadcast::channel::<(u64, Bytes)>(CHANNEL_CAPACITY);
    for id in 0.. {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (sender, receiver) = (sender.clone(), sender.subscribe());
        live.fetch_add(1, Ordering::Relaxed);
        let live = live.clone();
        tokio::spawn(async move {
            raw_member(stream, id, sender, receiver).await;
            live.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// One member of the raw room: its lines to the channel, the others' lines to its socket.
async fn raw_member(
    mut stream: TcpStream,
    id: u64,
    sender: broadcast::Sender<(u64, Bytes)>,
    mut receiver: broadcast::Receiver<(u64, Bytes)>,
) {
    let mut pending = BytesMut::with_capacity(8192);
    let mut out = Vec::with_capacity(8192);
    loop {
        tokio::select! {
            read = stream.read_buf(&mut pending) => {
                if !matches!(read, Ok(n) if n > 0) {
                    return;
                }
                for line in cut_lines(&mut pending) {
                    let _ = sender.send((id, line));
                }
                if pending.capacity() == 0 {
                    pending.reserve(8192);
                }
            }
            message = receiver.recv() => {
                let mut next = message;
                loop {
                    match next {
                        Ok((from, line)) if from != id => out.extend_from_slice(&line),
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                    next = match receiver.try_recv() {
                        Ok(message) => Ok(message),
                        Err(broadcast::error::TryRecvError::Lagged(n)) => {
                            Err(broadcast::error::RecvError::Lagged(n))
                        }
                        Err(_) => break,
                    };
                }
                if !out.is_empty() {
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Switchboard,
    Raw,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Switchboard => "switchboard",
            Kind::Raw => "raw tokio",
        }
    }
}

/// A room running on a server thread of its own.
struct Running {
    address: SocketAddr,
    /// Connections the room holds now.
    live: Box<dyn Fn() -> usize>,
    server: Option<(Server, Handle)>,
}

impl Running {
    fn start(kind: Kind) -> Running {
        let handle = server_thread();
        match kind {
            Kind::Switchboard => {
                let server = handle.block_on(async {
                    let mut builder = Server::builder();
                    let pending = builder.request_user_data_slot();
                    let room = Room {
                        members: ConnectionGroup::new(),
                        pending,
                        per_line: std::env::args().any(|arg| arg == "--per-line"),
                    };
                    builder.bind(LOCALHOST).start(room).await
                });
                let server = server.expect("start the switchboard room");
                let probe = server.clone();
                Running {
                    address: server.local_addr().expect("a listener"),
                    live: Box::new(move || probe.active_connections()),
                    server: Some((server, handle)),
                }
            }
            Kind::Raw => {
                let listener = handle
                    .block_on(TcpListener::bind(LOCALHOST))
                    .expect("bind the raw room");
                let address = listener.local_addr().expect("its address");
                let live = Arc::new(AtomicUsize::new(0));
                handle.spawn(raw_room(listener, live.clone()));
                Running {
                    address,
                    live: Box::new(move || live.load(Ordering::Relaxed)),
                    server: None,
                }
            }
        }
    }

    /// Waits (at most 10 s) until the room holds no connection.
    fn settle(&self, kind: Kind) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while (self.live)() > 0 {
            if Instant::now() > deadline {
                eprintln!("  warning: {} still holds {}", kind.name(), (self.live)());
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The load
// ---------------------------------------------------------------------------------------------

/// What one measurement saw.
struct Rate {
    deliveries_per_second: f64,
    cpu_nanos_per_delivery: f64,
}

/// Opens the members and the speaker, warms up, measures, closes everything.
async fn measure(address: SocketAddr, settings: &Settings) -> io::Result<Rate> {
    let received = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    let mut listeners = JoinSet::new();
    for _ in 0..settings.members {
        let mut stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (received, progress) = (received.clone(), progress.clone());
        listeners.spawn(async move {
            let mut buffer = vec![0; 64 * 1024];
            while let Ok(read) = stream.read(&mut buffer).await {
                if read == 0 {
                    break;
                }
                received.fetch_add(read as u64, Ordering::Relaxed);
                progress.notify_one();
            }
        });
    }
    let mut speaker = TcpStream::connect(address).await?;
    speaker.set_nodelay(true)?;
    let size = settings.size as u64;
    let members = settings.members as u64;
    let delivered = || received.load(Ordering::Relaxed) / size;
    // A first line, until every member has it: then all are in the room.
    let mut line = vec![b'x'; settings.size];
    *line.last_mut().unwrap() = b'\n';
    speaker.write_all(&line).await?;
    let synced = tokio::time::timeout(Duration::from_secs(20), async {
        while delivered() < members {
            progress.notified().await;
        }
    });
    synced
        .await
        .map_err(|_| io::Error::other("the members never all got the first line"))?;
    let batch: Vec<u8> = line.repeat(settings.window as usize);

    let speaking = {
        let (stop, progress, received) = (stop.clone(), progress.clone(), received.clone());
        let window = settings.window;
        async move {
            let mut sent = 1_u64;
            while !stop.load(Ordering::Relaxed) {
                let done = received.load(Ordering::Relaxed) / size / members;
                let allowed = done + window;
                if sent < allowed {
                    let lines = (allowed - sent) as usize;
                    speaker.write_all(&batch[..lines * line.len()]).await?;
                    sent = allowed;
                } else {
                    progress.notified().await;
                }
            }
            Ok::<TcpStream, io::Error>(speaker)
        }
    };
    let timing = async {
        tokio::time::sleep(settings.warmup).await;
        let (before, cpu_before, start) = (delivered(), server_cpu_seconds(), Instant::now());
        tokio::time::sleep(settings.measure).await;
        let (after, cpu_after, length) = (delivered(), server_cpu_seconds(), start.elapsed());
        stop.store(true, Ordering::Relaxed);
        progress.notify_one();
        let deliveries = (after - before).max(1) as f64;
        Rate {
            deliveries_per_second: deliveries / length.as_secs_f64(),
            cpu_nanos_per_delivery: (cpu_after - cpu_before) * 1e9 / deliveries,
        }
    };
    let (speaker, rate) = tokio::join!(speaking, timing);
    drop(speaker?);
    // Every delivery of the round, the first line's and the warm-up's included: what an
    // instruction count of the whole run divides by.
    eprintln!("  delivered in all: {}", delivered());
    listeners.shutdown().await;
    Ok(rate)
}

fn main() {
    let settings = Settings::from_args();
    let began = Instant::now();
    eprintln!(
        "broadcast bench: {} members, {} B lines, window {}, {} rounds of {:?} (+{:?} warm-up)",
        settings.members,
        settings.size,
        settings.window,
        settings.rounds,
        settings.measure,
        settings.warmup
    );
    let client: Runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client")
        .enable_all()
        .build()
        .expect("the load generator's runtime");
    let kinds = [Kind::Raw, Kind::Switchboard];
    let rooms: Vec<Running> = kinds.iter().map(|&kind| Running::start(kind)).collect();
    // `--only raw` or `--only switchboard`: one room alone, for a profiler.
    let only: Option<String> = std::env::args().skip_while(|arg| arg != "--only").nth(1);
    let mut rates: [Vec<f64>; 2] = Default::default();
    let mut cpu: [Vec<f64>; 2] = Default::default();
    for round in 0..settings.rounds {
        for offset in 0..kinds.len() {
            // Alternating which room goes first.
            let index = (round + offset) % kinds.len();
            let (kind, room) = (kinds[index], &rooms[index]);
            if only
                .as_ref()
                .is_some_and(|only| !kind.name().starts_with(only.as_str()))
            {
                continue;
            }
            match client.block_on(measure(room.address, &settings)) {
                Ok(rate) => {
                    eprintln!(
                        "  round {round} {:<11} {:>12} deliveries/s {:>8.1} ns/delivery",
                        kind.name(),
                        thousands(rate.deliveries_per_second),
                        rate.cpu_nanos_per_delivery
                    );
                    rates[index].push(rate.deliveries_per_second);
                    cpu[index].push(rate.cpu_nanos_per_delivery);
                }
                Err(error) => eprintln!("  round {round} {} FAILED: {error}", kind.name()),
            }
            room.settle(kind);
        }
    }
    let name = format!("broadcast {}B x{}", settings.size, settings.members);
    let (raw, sb) = (0, 1);
    if rates[raw].is_empty() || rates[sb].is_empty() {
        eprintln!("not both rooms measured");
        return;
    }
    println!();
    println!(
        "{:<26} {:>14} {:>14} {:>7}  rounds: switchboard | raw tokio",
        "scenario (median)", "switchboard", "raw tokio", "sb/raw"
    );
    let list = |values: &[f64], format: &dyn Fn(f64) -> String| {
        values
            .iter()
            .map(|v| format(*v))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let per_second = |v: f64| thousands(v);
    let nanos = |v: f64| format!("{v:.1}");
    println!(
        "{:<26} {:>14} {:>14} {:>7.3}  {} | {}",
        format!("{name} deliveries/s"),
        thousands(median(&rates[sb])),
        thousands(median(&rates[raw])),
        median(&rates[sb]) / median(&rates[raw]),
        list(&rates[sb], &per_second),
        list(&rates[raw], &per_second),
    );
    println!(
        "{:<26} {:>14.1} {:>14.1} {:>7.3}  {} | {}",
        format!("{name} server ns/dlv"),
        median(&cpu[sb]),
        median(&cpu[raw]),
        median(&cpu[sb]) / median(&cpu[raw]),
        list(&cpu[sb], &nanos),
        list(&cpu[raw], &nanos),
    );
    println!();
    println!(
        "ratio {name}: {:.2}",
        median(&rates[sb]) / median(&rates[raw])
    );
    println!(
        "cpu ratio {name}: {:.2}",
        median(&cpu[sb]) / median(&cpu[raw])
    );
    eprintln!("\nfinished in {:.1} s", began.elapsed().as_secs_f64());
    for room in &rooms {
        if let Some((server, handle)) = &room.server {
            handle.block_on(server.shutdown());
        }
    }
    client.shutdown_background();
}
