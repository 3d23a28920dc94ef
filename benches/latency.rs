//! Open-loop latency benchmark: switchboard beside raw tokio, a second raw tokio (the noise band)
//! and the bare mio loop, 64 B echoes sent at a fixed rate whatever the replies do.
//!
//! ```text
//! cargo bench --bench latency
//! cargo bench --bench latency -- --quick
//! cargo bench --bench latency -- --loads 50 --rounds 7
//! cargo bench --bench latency -- --together --loads 50
//! cargo bench --bench latency -- --together --loads 50 --compare ../other/target/release/deps/latency-HASH
//! ```
//!
//! The full run takes 5–7 minutes on a 2-core machine, `--quick` about one (fewer connections,
//! shorter rounds: its numbers are only indicative). Linux only.
//!
//! # Why open loop
//! A closed-loop client (send, wait for the reply, send again) stops sending while the server
//! stalls, so a stall delays one message per connection and the messages that would have arrived
//! meanwhile are never sent: the percentiles hide it (coordinated omission). Here each connection
//! has a fixed schedule, and each reply's latency runs from the time its message was *due*, not
//! from when it went out: a stall shows as the whole queue of messages late behind it, as users
//! would see it.
//!
//! # What is measured
//! The servers are those of `benches/echo.rs` (its docs describe them), each in a child process
//! of its own (this executable, `--server KIND [--tls]`), on one thread, and pinned to the last
//! core; the load generator runs in this process, pinned to the other cores. Child processes let
//! the client and the server each hold one descriptor per connection within the same
//! `ulimit -n`, which the bench raises to the hard limit.
//!
//! The load generator has two threads over non-blocking sockets:
//! - a sender, which sends message `i` (64 B) at `start + i / rate` on connection `i mod N`, so
//!   every connection sends at `rate / N` and the sends are spread evenly; it sleeps to each due
//!   time with a timer slack of 1 ns, and when it is late it sends everything due at once;
//! - a receiver, one `epoll` loop (mio) reading every connection. Echo keeps order, so the `k`th
//!   reply of connection `c` answers message `k × N + c`, and its latency is the time it was
//!   complete minus that message's due time, recorded into an HDR histogram (`hdrhistogram`, 3
//!   significant digits).
//!
//! The sender's own lateness (`send lag`, from the due time to the `write`) is part of every
//! latency, the same for every server; the table shows its p99 as the client's floor.
//!
//! Each round: connect (from source addresses spread over 127.0.0.0/8, so ephemeral ports do not
//! run out), a warm-up at the rate (0.5 s; 0.2 s with `--quick`), the measurement window (2 s;
//! 0.5 s with `--quick`), then sending stops, the receiver waits for the replies due (at most
//! 2 s; any still missing are counted as lost and recorded with their age then), and the
//! connections close. Only messages due in the window are recorded.
//!
//! Scenarios: 64 B echo at 1,000 connections and at 19,000 (as many as `ulimit -n` allows; 200
//! and 2,000 with `--quick`), and over TLS at 1,000 (100) against the TLS servers of
//! `benches/echo.rs` (native-tls on both sides, TLS 1.2; handshakes happen while connecting).
//! Each runs at 50% and at 90% (`--loads 50,90`) of raw tokio's closed-loop maximum, measured
//! first on the same number of connections by a closed loop of the same client (each reply
//! answered at once by the next message; 1 s after a 0.3 s warm-up; the median of 3 such
//! probes).
//!
//! # Noise
//! Two raw tokio servers run (`raw` and `raw B`, the same code), so each run measures raw tokio
//! against itself: `raw B ÷ raw` is this machine's noise at that point. Rounds alternate between
//! the servers (the order rotates by one each round), 3 rounds (2 with `--quick`, `--rounds N` to
//! choose), and every figure is the median of the rounds' figures. The reading says where
//! switchboard is above raw tokio beyond the noise band (its ratio above
//! `max(raw B ÷ raw, raw ÷ raw B)`).
//!
//! Server CPU per message is the server process's time on a CPU in the window, as the scheduler
//! counts it (the sum over its threads of `/proc/PID/task/TID/schedstat`, in nanoseconds; where
//! the kernel has no schedstat, user + system time from `/proc/PID/stat`, in 10 ms ticks),
//! divided by the messages due in it.
//!
//! # Together (`--together`)
//! Rounds that take turns measure each server at a different moment, and on a shared machine
//! the same server's CPU per message moves by 10–35% from one moment to the next: more than the
//! differences to measure. With `--together` every server of the scenario runs in each round,
//! all at once on the server core: the sender's messages go to the servers in turn (message `i`
//! to server `i mod S`, the order rotating by one each round), each server gets `rate / S`, and
//! the core's load is the given load as before. Whatever the machine does during a round (the
//! hypervisor's steal, a neighbour's cache traffic) it does to every server alike, so the
//! rounds' own ratios (`the median of the rounds' own ratios`) hold still where the ratios of
//! separate rounds do not: raw tokio B ÷ raw tokio within 1–2% per round.
//!
//! A together round also runs the **API floor** (`benches/api_floor`, plain TCP): raw tokio
//! paying what switchboard's callback API costs by its shape (an owned read buffer, a boxed
//! future per callback, a handle with a write queue) and nothing of its engine. Its ratio to raw
//! tokio is what any engine offering these callbacks pays at least; switchboard ÷ the API floor
//! is the engine's own cost.
//!
//! `--compare PATH` runs one more server: switchboard from `PATH`, this bench built from another
//! commit (`cargo bench --bench latency --no-run` there prints the executable). Together, the
//! line `this switchboard ÷ the compared build's` is then a change of the engine measured in the
//! same rounds, which resolves about a percent: each run starts new server processes, and a
//! process keeps a CPU bias of its own of 1–2% for its life, so ratios from different runs do
//! not.
//!
//! Together, the client holds every server's connections, so the scenario's connections to each
//! server are at most a quarter of what the descriptor limit allows (19,000 becomes about 4,900
//! under a limit of 20,000), and the latencies include the time each message waits while the
//! core serves the other servers: compare them with each other, not with a round of one server.
//!
//! The output is a Markdown table per scenario and load, each server's client send lag per
//! round (a round whose send lag is near its p99 measured a stall of the machine, which a median
//! over few rounds would take as the server's), the time the hypervisor took from the servers'
//! core in each round (the `steal` column of `/proc/stat`: a stall of the server that the
//! client's lag does not show), and one `latency ratio` line per scenario, load
//! and percentile (switchboard ÷ raw tokio, with the noise band).

// This bench measures the servers' CPU from their processes, and runs the servers without the
// parts that only echo.rs uses.
#[cfg(target_os = "linux")]
#[allow(dead_code)]
#[path = "common/mod.rs"]
mod common;
#[cfg(target_os = "linux")]
#[allow(dead_code)]
#[path = "common/servers.rs"]
mod servers;

// The API floor of `benches/echo.rs`'s instruction counts, run here in `--together` rounds; it
// finds the raw server's accept and the tally as `super::`.
#[cfg(target_os = "linux")]
#[path = "api_floor/mod.rs"]
mod api_floor;
#[cfg(target_os = "linux")]
use servers::{raw_accept, Tally};

#[cfg(target_os = "linux")]
fn main() {
    open_loop::main();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("the latency bench runs on Linux only");
}

#[cfg(target_os = "linux")]
mod open_loop {
    use std::io::{self, BufRead, BufReader, Read, Write};
    use std::net::SocketAddr;
    use std::os::fd::AsRawFd;
    use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use hdrhistogram::Histogram;
    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};
    use switchboard::native_tls;
    use switchboard::socket2::{Domain, Socket, Type};

    use crate::common::{median, server_thread, thousands};
    use crate::servers::{
        descriptor_limits, native_tls_connector, raise_descriptor_limit, source_address,
        std_listener, system_descriptor_ceiling, Kind, Running, Tally, DESCRIPTOR_RESERVE,
        SERVER_KEY, SERVER_PEM, TLS_DOMAIN,
    };

    /// Every message and reply: 64 B.
    const MESSAGE: usize = 64;
    /// How long the receiver waits, once sending has stopped, for the replies still due.
    const DRAIN: Duration = Duration::from_secs(2);
    /// The largest latency the histograms hold (ns); larger ones are recorded as this.
    const HIGHEST_LATENCY: u64 = 60_000_000_000;
    /// Connects the client may be ahead of the server's accepts: well under every server's
    /// backlog (1,024), so no SYN is dropped and retried a second later.
    const ACCEPT_WINDOW: usize = 512;
    /// How long to wait for a server to close every connection of a round.
    const SETTLE: Duration = Duration::from_secs(20);

    struct Settings {
        quick: bool,
        /// `--together`: the servers share each round rather than taking turns.
        together: bool,
        /// `--compare PATH`: this bench built from another commit, whose switchboard runs
        /// beside this one's.
        compare: Option<std::path::PathBuf>,
        rounds: usize,
        warmup: Duration,
        measure: Duration,
        probe_warmup: Duration,
        probe: Duration,
        small: usize,
        large: usize,
        tls: usize,
    }

    impl Settings {
        fn new(quick: bool) -> Settings {
            if quick {
                Settings {
                    quick,
                    together: false,
                    compare: None,
                    rounds: 2,
                    warmup: Duration::from_millis(200),
                    measure: Duration::from_millis(500),
                    probe_warmup: Duration::from_millis(100),
                    probe: Duration::from_millis(400),
                    small: 200,
                    large: 2_000,
                    tls: 100,
                }
            } else {
                Settings {
                    quick,
                    together: false,
                    compare: None,
                    rounds: 3,
                    warmup: Duration::from_millis(500),
                    measure: Duration::from_secs(2),
                    probe_warmup: Duration::from_millis(300),
                    probe: Duration::from_secs(1),
                    small: 1_000,
                    large: 19_000,
                    tls: 1_000,
                }
            }
        }
    }

    /// The loads, as fractions of raw tokio's closed-loop maximum (`--loads` to choose).
    const LOADS: [f64; 2] = [0.5, 0.9];
    /// Closed-loop probes of raw tokio per scenario: the maximum is their median, as one probe
    /// on a shared machine can land in a busy moment (runs gave 17,909 to 27,134 msgs/s at
    /// 1,000 connections).
    const PROBES: usize = 3;

    // -----------------------------------------------------------------------------------------
    // Cores
    // -----------------------------------------------------------------------------------------

    /// The cores this process may run on (before any pinning).
    fn cores() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// Pins the calling thread, and the threads it starts afterwards, to `cores`.
    fn pin(cores: impl Iterator<Item = usize>) {
        // SAFETY: `cpu_set_t` is a plain bit array, valid when zeroed; CPU_ZERO and CPU_SET only
        // write into the set they are given, for cores below CPU_SETSIZE (checked); and
        // sched_setaffinity only reads the set, of the size given.
        let result = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_ZERO(&mut set);
            for core in cores.filter(|&core| core < libc::CPU_SETSIZE as usize) {
                libc::CPU_SET(core, &mut set);
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if result != 0 {
            eprintln!("  could not pin to cores: {}", io::Error::last_os_error());
        }
    }

    /// Puts the calling thread, and the threads it starts afterwards, in the real-time
    /// first-in-first-out class at the lowest priority: among servers sharing a core, the one
    /// woken first runs first, whatever CPU time each used before. In the default class, the
    /// kernel's fair share would make a server that used more CPU wait longer for its turn, and
    /// its latencies would measure that, not the server. Needs `CAP_SYS_NICE` (root); without it
    /// the bench says so and goes on in the default class.
    fn first_in_first_out() {
        let parameters = libc::sched_param { sched_priority: 1 };
        // SAFETY: sched_setscheduler reads the parameters given, and changes only this thread.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &parameters) } != 0 {
            eprintln!(
                "  could not enter SCHED_FIFO (latencies keep the fair share's bias): {}",
                io::Error::last_os_error()
            );
        }
    }

    /// Lets the calling thread's sleeps end when asked, rather than up to 50 µs later (the
    /// default timer slack, which would be part of every latency).
    fn precise_sleeps() {
        // SAFETY: PR_SET_TIMERSLACK takes a plain integer and changes only this thread's slack.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Server processes
    // -----------------------------------------------------------------------------------------

    /// A server of this bench: a kind of `benches/echo.rs`, or the API floor of its
    /// instruction counts (`benches/api_floor`: raw tokio paying what switchboard's callback API
    /// costs by its shape; plain TCP only).
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Served {
        Kind(Kind),
        ApiFloor,
    }

    impl Served {
        fn name(self) -> &'static str {
            match self {
                Served::Kind(kind) => kind.name(),
                Served::ApiFloor => "api",
            }
        }

        fn parse(name: &str) -> Option<Served> {
            match name {
                "api" => Some(Served::ApiFloor),
                kind => kind.parse().ok().map(Served::Kind),
            }
        }
    }

    /// `--server KIND [--tls] [--core N]`: one server of `kind`, on core `N` if given,
    /// announced as `READY port`; answers each `LIVE` line on stdin with the connections it
    /// holds; exits when stdin closes.
    fn serve(served: Served, tls: bool, core: Option<usize>, fifo: bool) {
        if let Some(core) = core {
            pin(std::iter::once(core));
        }
        if fifo {
            first_in_first_out();
        }
        let acceptor = tls.then(tls_acceptor);
        let (port, live): (u16, Box<dyn Fn() -> usize>) = match served {
            Served::Kind(kind) => {
                let server = Running::start(kind, acceptor.as_ref());
                (server.address.port(), Box::new(move || server.live()))
            }
            Served::ApiFloor => {
                assert!(!tls, "the API floor speaks plain TCP only");
                let runtime = server_thread();
                let listener = {
                    let _context = runtime.enter();
                    tokio::net::TcpListener::from_std(std_listener()).expect("the floor's listener")
                };
                let port = listener.local_addr().expect("the floor listens").port();
                let tally = Tally::new(0);
                runtime.spawn(crate::api_floor::accept_loop(listener, tally.clone(), true));
                (port, Box::new(move || tally.live.load(Ordering::Relaxed)))
            }
        };
        let mut stdout = io::stdout().lock();
        let _ = writeln!(stdout, "READY {port}");
        let _ = stdout.flush();
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if line.trim() == "LIVE" {
                let _ = writeln!(stdout, "{}", live());
                let _ = stdout.flush();
            }
        }
        // Exit at once: the runtime's teardown is not measured.
        std::process::exit(0);
    }

    fn tls_acceptor() -> native_tls::TlsAcceptor {
        native_tls::Identity::from_pkcs8(SERVER_PEM, SERVER_KEY)
            .and_then(native_tls::TlsAcceptor::new)
            .expect("build the TLS acceptor from tests/certs")
    }

    /// A server in a child process.
    struct ServerProcess {
        label: &'static str,
        /// The core it is pinned to, if any.
        core: Option<usize>,
        child: Child,
        to_child: ChildStdin,
        from_child: BufReader<ChildStdout>,
        address: SocketAddr,
    }

    impl ServerProcess {
        fn start(
            label: &'static str,
            kind: Served,
            tls: bool,
            core: Option<usize>,
            fifo: bool,
            executable: Option<&std::path::Path>,
        ) -> io::Result<ServerProcess> {
            let mut command = match executable {
                Some(executable) => Command::new(executable),
                None => Command::new(std::env::current_exe()?),
            };
            command.args(["--server", kind.name()]);
            if tls {
                command.arg("--tls");
            }
            if let Some(core) = core {
                command.args(["--core", &core.to_string()]);
            }
            if fifo {
                command.arg("--fifo");
            }
            let mut child = command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            let to_child = child.stdin.take().expect("piped stdin");
            let mut from_child = BufReader::new(child.stdout.take().expect("piped stdout"));
            let mut line = String::new();
            from_child.read_line(&mut line)?;
            let port: u16 = line
                .strip_prefix("READY ")
                .and_then(|port| port.trim().parse().ok())
                .ok_or_else(|| io::Error::other(format!("{label} server said {line:?}")))?;
            Ok(ServerProcess {
                label,
                core,
                child,
                to_child,
                from_child,
                address: SocketAddr::from(([127, 0, 0, 1], port)),
            })
        }

        /// Connections the server holds now.
        fn live(&mut self) -> io::Result<usize> {
            writeln!(self.to_child, "LIVE")?;
            self.to_child.flush()?;
            let mut line = String::new();
            self.from_child.read_line(&mut line)?;
            line.trim()
                .parse()
                .map_err(|_| io::Error::other(format!("{} server said {line:?}", self.label)))
        }

        /// Waits (up to [`SETTLE`]) until the server holds no connection.
        fn settle(&mut self) {
            let began = Instant::now();
            while began.elapsed() < SETTLE {
                match self.live() {
                    Ok(0) | Err(_) => return,
                    Ok(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            eprintln!(
                "  warning: the {} server still holds connections",
                self.label
            );
        }

        /// CPU time the server process used so far, in seconds: the sum of its threads' time
        /// on a CPU as the scheduler counts it (`/proc/PID/task/*/schedstat`, in nanoseconds),
        /// or where the kernel has no schedstat, user + system time in 10 ms ticks
        /// (`/proc/PID/stat`).
        fn cpu_seconds(&self) -> f64 {
            self.scheduled_seconds()
                .unwrap_or_else(|| self.ticked_seconds())
        }

        fn scheduled_seconds(&self) -> Option<f64> {
            let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).ok()?;
            let mut nanos = 0_u64;
            for task in tasks {
                let schedstat =
                    std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
                nanos += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
            }
            Some(nanos as f64 / 1e9)
        }

        fn ticked_seconds(&self) -> f64 {
            const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            else {
                return 0.0;
            };
            let Some(close) = stat.rfind(')') else {
                return 0.0;
            };
            // After the name: utime is field 14, stime field 15.
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let field = |index: usize| fields.get(index).and_then(|f| f.parse::<u64>().ok());
            (field(11).unwrap_or(0) + field(12).unwrap_or(0)) as f64 / CLOCK_TICKS_PER_SECOND
        }

        /// The time the hypervisor has taken from the server's core so far (the `steal` column
        /// of its line in `/proc/stat`), in seconds; 0 where the server is not pinned or the
        /// kernel does not tell.
        fn core_steal_seconds(&self) -> f64 {
            const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
            let Some(core) = self.core else {
                return 0.0;
            };
            let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
                return 0.0;
            };
            let name = format!("cpu{core}");
            stat.lines()
                .find_map(|line| {
                    let mut fields = line.split_whitespace();
                    (fields.next() == Some(name.as_str())).then(|| {
                        // user nice system idle iowait irq softirq steal
                        fields.nth(7).and_then(|steal| steal.parse::<u64>().ok())
                    })?
                })
                .map_or(0.0, |ticks| ticks as f64 / CLOCK_TICKS_PER_SECOND)
        }
    }

    impl Drop for ServerProcess {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    // -----------------------------------------------------------------------------------------
    // Client connections
    // -----------------------------------------------------------------------------------------

    /// One client connection, usable from the sender and the receiver thread at once.
    enum Wire {
        Plain(std::net::TcpStream),
        /// OpenSSL's stream needs `&mut` for both directions, so the two threads share it
        /// through a lock (uncontended but for the moments both act on the same connection).
        Tls(Mutex<native_tls::TlsStream<std::net::TcpStream>>),
    }

    impl Wire {
        fn write(&self, data: &[u8]) -> io::Result<usize> {
            match self {
                Wire::Plain(stream) => (&*stream).write(data),
                Wire::Tls(stream) => lock(stream).write(data),
            }
        }

        fn read(&self, buffer: &mut [u8]) -> io::Result<usize> {
            match self {
                Wire::Plain(stream) => (&*stream).read(buffer),
                Wire::Tls(stream) => lock(stream).read(buffer),
            }
        }

        fn socket(&self) -> i32 {
            match self {
                Wire::Plain(stream) => stream.as_raw_fd(),
                Wire::Tls(stream) => lock(stream).get_ref().as_raw_fd(),
            }
        }
    }

    fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        mutex
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A blocking connection to `address` from [`source_address`]`(index)`, `TCP_NODELAY` on.
    fn connect_from(address: SocketAddr, index: usize) -> io::Result<std::net::TcpStream> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.bind(&source_address(index).into())?;
        socket.connect(&address.into())?;
        socket.set_tcp_nodelay(true)?;
        Ok(socket.into())
    }

    /// `count` non-blocking connections to `server` (TLS ones, handshake done, if given a
    /// connector), never more than [`ACCEPT_WINDOW`] ahead of the server's accepts.
    fn connect_all(
        server: &mut ServerProcess,
        count: usize,
        tls: Option<&native_tls::TlsConnector>,
    ) -> io::Result<Vec<Wire>> {
        let mut wires = Vec::with_capacity(count);
        let mut accepted = 0;
        for index in 0..count {
            let began = Instant::now();
            while index >= accepted + ACCEPT_WINDOW {
                accepted = server.live()?;
                if began.elapsed() > SETTLE {
                    return Err(io::Error::other(format!(
                        "the {} server accepted only {accepted} of {index} connections",
                        server.label
                    )));
                }
                if index >= accepted + ACCEPT_WINDOW {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let stream = connect_from(server.address, index)?;
            let wire = match tls {
                None => {
                    stream.set_nonblocking(true)?;
                    Wire::Plain(stream)
                }
                Some(connector) => {
                    let stream = connector
                        .connect(TLS_DOMAIN, stream)
                        .map_err(io::Error::other)?;
                    stream.get_ref().set_nonblocking(true)?;
                    Wire::Tls(Mutex::new(stream))
                }
            };
            wires.push(wire);
        }
        Ok(wires)
    }

    /// A new latency histogram: 1 ns to [`HIGHEST_LATENCY`], 3 significant digits.
    fn histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, HIGHEST_LATENCY, 3).expect("valid histogram bounds")
    }

    fn nanos(duration: Duration) -> u64 {
        u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
    }

    // -----------------------------------------------------------------------------------------
    // The open loop
    // -----------------------------------------------------------------------------------------

    /// The schedule of one round: message `i` is due at `start + i × period`, on connection
    /// `i mod connections`; those due in `[measured, end)` are recorded. Where several servers
    /// share the round (`--together`), connection `c` is one of server `c mod servers`'s, so
    /// consecutive messages go to the servers in turn.
    #[derive(Clone, Copy)]
    struct Schedule {
        start: Instant,
        period_nanos: f64,
        /// Every server's connections, interleaved.
        connections: usize,
        servers: usize,
        measured: Instant,
        end: Instant,
    }

    impl Schedule {
        fn due(&self, message: u64) -> Instant {
            self.start + Duration::from_nanos((message as f64 * self.period_nanos) as u64)
        }

        fn recorded(&self, due: Instant) -> bool {
            due >= self.measured && due < self.end
        }

        /// The server (its place in the round) that connection `connection` goes to.
        fn server(&self, connection: usize) -> usize {
            connection % self.servers
        }
    }

    /// What the sender reports.
    struct Sent {
        lag: Histogram<u64>,
        /// Per server.
        failed: Vec<u64>,
    }

    /// The sender thread's loop: every message at its due time, until [`Schedule::end`].
    fn send(wires: &[Wire], schedule: Schedule, done: &AtomicBool, total: &AtomicU64) -> Sent {
        precise_sleeps();
        let message = [0xA5_u8; MESSAGE];
        let mut lag = histogram();
        // Bytes a connection could not take at once, sent before anything else on it.
        let mut unsent: Vec<Vec<u8>> = vec![Vec::new(); wires.len()];
        let mut blocked: Vec<usize> = Vec::new();
        let mut broken = vec![false; wires.len()];
        let mut failed = vec![0; schedule.servers];
        let mut index = 0_u64;
        loop {
            let due = schedule.due(index);
            if due >= schedule.end {
                break;
            }
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            blocked.retain(|&connection| {
                flush(
                    &wires[connection],
                    &mut unsent[connection],
                    &mut broken[connection],
                )
            });
            let connection = (index % schedule.connections as u64) as usize;
            if !broken[connection] {
                if unsent[connection].is_empty() {
                    match wires[connection].write(&message) {
                        Ok(written) if written == MESSAGE => {}
                        Ok(written) => {
                            unsent[connection].extend_from_slice(&message[written..]);
                            blocked.push(connection);
                        }
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                            unsent[connection].extend_from_slice(&message);
                            blocked.push(connection);
                        }
                        Err(_) => broken[connection] = true,
                    }
                } else {
                    unsent[connection].extend_from_slice(&message);
                }
            }
            if broken[connection] {
                failed[schedule.server(connection)] += 1;
            }
            if schedule.recorded(due) {
                lag.saturating_record(nanos(due.elapsed()).max(1));
            }
            index += 1;
            total.store(index, Ordering::Release);
        }
        // What the sockets would not take yet still goes out (the receiver waits for it).
        let until = Instant::now() + DRAIN;
        while !blocked.is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_micros(100));
            blocked.retain(|&connection| {
                flush(
                    &wires[connection],
                    &mut unsent[connection],
                    &mut broken[connection],
                )
            });
        }
        done.store(true, Ordering::Release);
        Sent { lag, failed }
    }

    /// Writes what `unsent` holds; true while some of it is left.
    fn flush(wire: &Wire, unsent: &mut Vec<u8>, broken: &mut bool) -> bool {
        while !unsent.is_empty() {
            match wire.write(unsent) {
                Ok(written) => {
                    unsent.drain(..written);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return true,
                Err(_) => {
                    *broken = true;
                    unsent.clear();
                }
            }
        }
        false
    }

    /// What the receiver reports.
    struct Received {
        /// Per server.
        latency: Vec<Histogram<u64>>,
        /// Messages due in the window that got no reply within [`DRAIN`], per server.
        lost: Vec<u64>,
    }

    /// The receiver thread's loop: reads every reply, records the latency of those due in the
    /// window, until every message sent has its reply or [`DRAIN`] after sending stopped.
    fn receive(
        wires: &[Wire],
        poll: &mut Poll,
        schedule: Schedule,
        done: &AtomicBool,
        total: &AtomicU64,
    ) -> Received {
        let mut latency: Vec<_> = (0..schedule.servers).map(|_| histogram()).collect();
        let mut events = Events::with_capacity(1024);
        let mut buffer = [0_u8; 16 * 1024];
        let mut bytes = vec![0_u64; wires.len()];
        let mut replies = vec![0_u64; wires.len()];
        let mut all_replies = 0_u64;
        let mut sending_ended = None;
        let connections = schedule.connections as u64;
        loop {
            let _ = poll.poll(&mut events, Some(Duration::from_millis(10)));
            for event in events.iter() {
                let connection = event.token().0;
                let wire = &wires[connection];
                loop {
                    match wire.read(&mut buffer) {
                        Ok(0) => break,
                        Ok(read) => {
                            let now = Instant::now();
                            bytes[connection] += read as u64;
                            while bytes[connection] >= (replies[connection] + 1) * MESSAGE as u64 {
                                let message = replies[connection] * connections + connection as u64;
                                let due = schedule.due(message);
                                if schedule.recorded(due) {
                                    latency[schedule.server(connection)].saturating_record(
                                        nanos(now.saturating_duration_since(due)).max(1),
                                    );
                                }
                                replies[connection] += 1;
                                all_replies += 1;
                            }
                        }
                        Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            }
            if done.load(Ordering::Acquire) {
                let ended = *sending_ended.get_or_insert_with(Instant::now);
                if all_replies >= total.load(Ordering::Acquire) || ended.elapsed() > DRAIN {
                    break;
                }
            }
        }
        // Messages due in the window without a reply: recorded with their age now.
        let sent = total.load(Ordering::Acquire);
        let now = Instant::now();
        let mut lost = vec![0; schedule.servers];
        for connection in 0..wires.len() as u64 {
            let mut message = replies[connection as usize] * connections + connection;
            let server = schedule.server(connection as usize);
            while message < sent {
                let due = schedule.due(message);
                if schedule.recorded(due) {
                    lost[server] += 1;
                    latency[server]
                        .saturating_record(nanos(now.saturating_duration_since(due)).max(1));
                }
                message += connections;
            }
        }
        Received { latency, lost }
    }

    /// Registers every connection with a new poll, its index as its token.
    fn poll_for(wires: &[Wire]) -> io::Result<Poll> {
        let poll = Poll::new()?;
        for (index, wire) in wires.iter().enumerate() {
            poll.registry().register(
                &mut SourceFd(&wire.socket()),
                Token(index),
                Interest::READABLE,
            )?;
        }
        Ok(poll)
    }

    /// One round's figures for one server.
    #[derive(Clone, Copy)]
    struct Figures {
        /// p50, p99, p99.9 and max, in µs.
        percentiles: [f64; 4],
        cpu_micros: f64,
        send_lag_p99: f64,
        /// Milliseconds the hypervisor took from the server's core in the window: a round with
        /// some measured the machine, whatever its client send lag.
        steal_millis: f64,
        lost: u64,
        failed: u64,
    }

    impl Figures {
        /// Percentile `index` ([`COLUMNS`]), or the CPU per message after them.
        fn column(&self, index: usize) -> f64 {
            self.percentiles
                .get(index)
                .copied()
                .unwrap_or(self.cpu_micros)
        }
    }

    const QUANTILES: [f64; 3] = [0.50, 0.99, 0.999];

    /// One open-loop round against the servers `order` names, at `rate` messages per second in
    /// all (each server `rate / order.len()`), `connections` to each; their figures in `order`'s
    /// order. With more than one server (`--together`) they share the round: each message due
    /// goes to the next server in `order`, so whatever the machine does in the window it does
    /// to all of them alike.
    fn open_loop_round(
        processes: &mut [ServerProcess],
        order: &[usize],
        connections: usize,
        tls: Option<&native_tls::TlsConnector>,
        rate: f64,
        settings: &Settings,
    ) -> io::Result<Vec<Figures>> {
        let mut each = Vec::with_capacity(order.len());
        for &index in order {
            each.push(connect_all(&mut processes[index], connections, tls)?);
        }
        // Connection `c × servers + s` is server `s`'s `c`th.
        let mut each: Vec<_> = each.into_iter().map(Vec::into_iter).collect();
        let wires: Vec<Wire> = (0..connections)
            .flat_map(|_| {
                each.iter_mut()
                    .filter_map(Iterator::next)
                    .collect::<Vec<_>>()
            })
            .collect();
        let wires = Arc::new(wires);
        let mut poll = poll_for(&wires)?;
        let start = Instant::now() + Duration::from_millis(10);
        let schedule = Schedule {
            start,
            period_nanos: 1e9 / rate,
            connections: wires.len(),
            servers: order.len(),
            measured: start + settings.warmup,
            end: start + settings.warmup + settings.measure,
        };
        let done = Arc::new(AtomicBool::new(false));
        let total = Arc::new(AtomicU64::new(0));
        let sender = {
            let (wires, done, total) = (wires.clone(), done.clone(), total.clone());
            std::thread::Builder::new()
                .name("sender".into())
                .spawn(move || send(&wires, schedule, &done, &total))?
        };
        let receiver = {
            let (wires, done, total) = (wires.clone(), done.clone(), total.clone());
            std::thread::Builder::new()
                .name("receiver".into())
                .spawn(move || receive(&wires, &mut poll, schedule, &done, &total))?
        };
        let cpu = |processes: &[ServerProcess]| -> Vec<f64> {
            order.iter().map(|&i| processes[i].cpu_seconds()).collect()
        };
        let first = &processes[order[0]];
        sleep_until(schedule.measured);
        let (cpu_before, steal_before) = (cpu(processes), first.core_steal_seconds());
        sleep_until(schedule.end);
        let (cpu_after, steal_after) = (cpu(processes), first.core_steal_seconds());
        let sent = sender.join().expect("the sender thread");
        let received = receiver.join().expect("the receiver thread");
        drop(wires);
        for &index in order {
            processes[index].settle();
        }
        let in_window = settings.measure.as_secs_f64() * rate / order.len() as f64;
        let micros = |nanos: u64| nanos as f64 / 1e3;
        Ok((0..order.len())
            .map(|slot| {
                let latency = &received.latency[slot];
                Figures {
                    percentiles: [
                        micros(latency.value_at_quantile(QUANTILES[0])),
                        micros(latency.value_at_quantile(QUANTILES[1])),
                        micros(latency.value_at_quantile(QUANTILES[2])),
                        micros(latency.max()),
                    ],
                    cpu_micros: (cpu_after[slot] - cpu_before[slot]) * 1e6 / in_window.max(1.0),
                    send_lag_p99: micros(sent.lag.value_at_quantile(0.99)),
                    steal_millis: (steal_after - steal_before) * 1e3,
                    lost: received.lost[slot],
                    failed: sent.failed[slot],
                }
            })
            .collect())
    }

    fn sleep_until(instant: Instant) {
        let now = Instant::now();
        if instant > now {
            std::thread::sleep(instant - now);
        }
    }

    /// The closed-loop maximum: every connection sends its next message as soon as the reply
    /// to the last one is complete; replies per second over [`Settings::probe`].
    fn closed_loop_rate(
        server: &mut ServerProcess,
        connections: usize,
        tls: Option<&native_tls::TlsConnector>,
        settings: &Settings,
    ) -> io::Result<f64> {
        let wires = connect_all(server, connections, tls)?;
        let mut poll = poll_for(&wires)?;
        let message = [0xA5_u8; MESSAGE];
        for wire in &wires {
            wire.write(&message)?;
        }
        let mut events = Events::with_capacity(1024);
        let mut buffer = [0_u8; 16 * 1024];
        let mut pending = vec![0_usize; wires.len()];
        let start = Instant::now();
        let (measured, end) = (
            start + settings.probe_warmup,
            start + settings.probe_warmup + settings.probe,
        );
        let mut completed = 0_u64;
        while Instant::now() < end {
            poll.poll(&mut events, Some(Duration::from_millis(10)))?;
            for event in events.iter() {
                let connection = event.token().0;
                let wire = &wires[connection];
                loop {
                    match wire.read(&mut buffer) {
                        Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                        Ok(read) => {
                            pending[connection] += read;
                            while pending[connection] >= MESSAGE {
                                pending[connection] -= MESSAGE;
                                if Instant::now() >= measured {
                                    completed += 1;
                                }
                                // 64 B to a socket whose last 64 B were just echoed: taken
                                // whole (a refusal ends the probe with its error).
                                if wire.write(&message)? != MESSAGE {
                                    return Err(io::Error::other("a short write"));
                                }
                            }
                        }
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                        Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                        Err(error) => return Err(error),
                    }
                }
            }
        }
        let rate = completed as f64 / end.duration_since(measured).as_secs_f64();
        drop(wires);
        server.settle();
        Ok(rate)
    }

    // -----------------------------------------------------------------------------------------
    // Scenarios and reporting
    // -----------------------------------------------------------------------------------------

    /// The servers of one protocol: `raw` first (the baseline), `raw B` (the noise band).
    struct Servers {
        processes: Vec<ServerProcess>,
        tls: Option<native_tls::TlsConnector>,
    }

    /// The most servers of a `--together` round: raw tokio, switchboard, raw tokio B and the API
    /// floor (and one more with `--compare`).
    const TOGETHER: usize = 4;

    const RAW: &str = "raw tokio";
    const RAW_B: &str = "raw tokio B";
    const SWITCHBOARD: &str = "switchboard";
    const MIO: &str = "mio";
    const API_FLOOR: &str = "API floor";
    /// `--compare`'s server: switchboard from another build of this bench.
    const COMPARED: &str = "compared";

    impl Servers {
        /// Raw tokio, switchboard, raw tokio B, and over plain TCP the mio floor, or in
        /// `--together` rounds the API floor; with `--compare`, the other build's switchboard.
        fn start(tls: bool, settings: &Settings, core: Option<usize>) -> io::Result<Servers> {
            let together = settings.together;
            let mut kinds = vec![
                (RAW, Served::Kind(Kind::Raw)),
                (SWITCHBOARD, Served::Kind(Kind::Switchboard)),
                (RAW_B, Served::Kind(Kind::Raw)),
            ];
            match (tls, together) {
                (true, _) => {}
                (false, false) => kinds.push((MIO, Served::Kind(Kind::Mio))),
                (false, true) => kinds.push((API_FLOOR, Served::ApiFloor)),
            }
            let mut processes = kinds
                .into_iter()
                .map(|(label, kind)| ServerProcess::start(label, kind, tls, core, together, None))
                .collect::<io::Result<Vec<_>>>()?;
            if let Some(other) = &settings.compare {
                let kind = Served::Kind(Kind::Switchboard);
                let other = Some(other.as_path());
                processes.push(ServerProcess::start(
                    COMPARED, kind, tls, core, together, other,
                )?);
            }
            Ok(Servers {
                processes,
                tls: tls.then(native_tls_connector),
            })
        }
    }

    /// One scenario at one load: each server's rounds.
    struct Point {
        name: String,
        rate: f64,
        rounds: Vec<(&'static str, Vec<Figures>)>,
        failures: Vec<String>,
    }

    impl Point {
        fn figures(&self, label: &str) -> &[Figures] {
            self.rounds
                .iter()
                .find_map(|(l, figures)| (*l == label).then_some(figures.as_slice()))
                .unwrap_or(&[])
        }

        /// The median over rounds of `pick` for `label`; NaN if it has no round.
        fn median(&self, label: &str, pick: impl Fn(&Figures) -> f64) -> f64 {
            let values: Vec<f64> = self.figures(label).iter().map(pick).collect();
            if values.is_empty() {
                f64::NAN
            } else {
                median(&values)
            }
        }
    }

    fn run_point(
        servers: &mut Servers,
        name: String,
        connections: usize,
        rate: f64,
        settings: &Settings,
    ) -> Point {
        let mut point = Point {
            name,
            rate,
            rounds: servers
                .processes
                .iter()
                .map(|p| (p.label, Vec::new()))
                .collect(),
            failures: Vec::new(),
        };
        let count = servers.processes.len();
        for round in 0..settings.rounds {
            // The order rotates by one each round: alone, who goes first; together, whose
            // message comes first of each turn.
            let order: Vec<usize> = (0..count).map(|slot| (slot + round) % count).collect();
            let turns: Vec<&[usize]> = if settings.together {
                vec![&order]
            } else {
                order.chunks(1).collect()
            };
            for turn in turns {
                let result = open_loop_round(
                    &mut servers.processes,
                    turn,
                    connections,
                    servers.tls.as_ref(),
                    rate,
                    settings,
                );
                match result {
                    Ok(figures) => {
                        for (&index, figures) in turn.iter().zip(figures) {
                            report_round(
                                &point.name,
                                round,
                                servers.processes[index].label,
                                &figures,
                            );
                            point.rounds[index].1.push(figures);
                        }
                    }
                    Err(error) => {
                        for &index in turn {
                            let server = &mut servers.processes[index];
                            eprintln!(
                                "  {:<28} round {round} {:<12} FAILED: {error}",
                                point.name, server.label
                            );
                            point.failures.push(format!("{}: {error}", server.label));
                            server.settle();
                        }
                    }
                }
            }
        }
        point
    }

    /// One server's figures of one round, as a line on stderr.
    fn report_round(point: &str, round: usize, label: &str, figures: &Figures) {
        let [p50, p99, p999, max] = figures.percentiles;
        eprintln!(
            "  {point:<28} round {round} {label:<12} p50 {p50:>8.1} p99 {p99:>8.1} \
             p99.9 {p999:>8.1} max {max:>9.1} µs, {:.3} server µs/msg, \
             send lag p99 {:.1} µs, server core stolen {:.0} ms{}",
            figures.cpu_micros,
            figures.send_lag_p99,
            figures.steal_millis,
            if figures.lost + figures.failed > 0 {
                format!(", {} lost, {} failed sends", figures.lost, figures.failed)
            } else {
                String::new()
            }
        );
    }

    const COLUMNS: [&str; 4] = ["p50", "p99", "p99.9", "max"];

    /// The noise band of column `column`: how far apart the two raw tokio servers were, as a
    /// ratio of at least 1.
    fn noise(point: &Point, pick: impl Fn(&Figures) -> f64 + Copy) -> f64 {
        let ratio = point.median(RAW_B, pick) / point.median(RAW, pick);
        ratio.max(1.0 / ratio)
    }

    fn print_point(point: &Point) {
        println!();
        println!(
            "{} at {} msgs/s ({} rounds each, medians):",
            point.name,
            thousands(point.rate),
            point.figures(RAW).len()
        );
        println!();
        println!(
            "| server | p50 µs | p99 µs | p99.9 µs | max µs | server CPU µs/msg | \
             p50 ÷ raw | p99 ÷ raw | p99.9 ÷ raw | max ÷ raw | CPU ÷ raw |"
        );
        println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for (label, _) in &point.rounds {
            let mut line = format!("| {label} ");
            for column in 0..4 {
                line += &format!("| {:.1} ", point.median(label, |f| f.percentiles[column]));
            }
            line += &format!("| {:.2} ", point.median(label, |f| f.cpu_micros));
            for column in 0..4 {
                let pick = |f: &Figures| f.percentiles[column];
                line += &format!("| {} ", ratio(point, label, pick));
            }
            line += &format!("| {} |", ratio(point, label, |f| f.cpu_micros));
            println!("{line}");
        }
        let lag = point
            .rounds
            .iter()
            .flat_map(|(_, figures)| figures.iter().map(|f| f.send_lag_p99))
            .fold(0.0, f64::max);
        let lost: u64 = point
            .rounds
            .iter()
            .flat_map(|(_, figures)| figures.iter().map(|f| f.lost + f.failed))
            .sum();
        println!();
        println!(
            "Client send lag p99 (the client's own floor, in every latency): at most {lag:.1} µs. \
             Lost replies or failed sends: {lost}."
        );
        // Per round, for each server: a tail of its own shows with a low lag beside it, a stall
        // of the whole machine with a lag as long as the tail (a median over few rounds takes
        // either as the server's).
        println!(
            "Client send lag p99 by round, µs (a round whose lag is near its p99 measured the \
             machine's stall, not the server): {}.",
            by_round(point, |f| f.send_lag_p99)
        );
        // The server's own core: time the hypervisor took from it stalls the server without
        // showing in the client's lag.
        println!(
            "Time taken from the servers' core by the hypervisor (steal) by round, ms (a round \
             with some stalled the server itself): {}.",
            by_round(point, |f| f.steal_millis)
        );
        for failure in &point.failures {
            println!("Failed round: {failure}");
        }
        let mut above = Vec::new();
        let mut below = Vec::new();
        for (index, column) in COLUMNS.iter().chain(&["CPU"]).enumerate() {
            let pick = |f: &Figures| f.column(index);
            let band = noise(point, pick);
            let ratio = point.median(SWITCHBOARD, pick) / point.median(RAW, pick);
            let reading = format!("{column} {ratio:.2} (noise band {band:.2})");
            // Compared as printed, to two decimals: a ratio equal to its band there is within it.
            let hundredths = |value: f64| (value * 100.0).round();
            if hundredths(ratio) > hundredths(band) {
                above.push(reading);
            } else if hundredths(ratio) < hundredths(1.0 / band) {
                below.push(reading);
            }
            println!(
                "latency ratio {} {column}: {ratio:.2} noise {band:.2}",
                point.name
            );
        }
        // Each round runs the servers one after the other: the medians of the rounds' own
        // ratios let slow drifts of the machine cancel, which the ratio of medians does not.
        let cpu = |f: &Figures| f.cpu_micros;
        let others: Vec<String> = point
            .rounds
            .iter()
            .filter(|(label, _)| *label != RAW)
            .map(|(label, _)| format!("{label} {:.3}", round_ratio(point, label, RAW, cpu)))
            .collect();
        println!(
            "Server CPU per message ÷ raw tokio's, the median of the rounds' own ratios: {}.",
            others.join(", ")
        );
        if !point.figures(COMPARED).is_empty() {
            let ratios: Vec<f64> = point
                .figures(SWITCHBOARD)
                .iter()
                .zip(point.figures(COMPARED))
                .map(|(this, other)| this.cpu_micros / other.cpu_micros)
                .collect();
            println!(
                "Server CPU per message, this switchboard ÷ the compared build's, the median of \
                 the rounds' own ratios: {:.3} ({} of {} rounds below 1).",
                round_ratio(point, SWITCHBOARD, COMPARED, cpu),
                ratios.iter().filter(|ratio| **ratio < 1.0).count(),
                ratios.len()
            );
        }
        if !point.figures(API_FLOOR).is_empty() {
            println!(
                "Server CPU per message, switchboard ÷ the API floor, the median of the rounds' \
                 own ratios (the engine's own cost): {:.3}.",
                round_ratio(point, SWITCHBOARD, API_FLOOR, cpu)
            );
        }
        println!(
            "Reading: switchboard above raw tokio beyond the noise band: {}; below it beyond the \
             band: {}.",
            if above.is_empty() {
                "none".to_string()
            } else {
                above.join(", ")
            },
            if below.is_empty() {
                "none".to_string()
            } else {
                below.join(", ")
            }
        );
    }

    /// `pick` of each server's rounds, as `label a / b / c; label …`, rounded.
    fn by_round(point: &Point, pick: impl Fn(&Figures) -> f64) -> String {
        let servers: Vec<String> = point
            .rounds
            .iter()
            .map(|(label, figures)| {
                let rounds: Vec<String> =
                    figures.iter().map(|f| format!("{:.0}", pick(f))).collect();
                format!("{label} {}", rounds.join(" / "))
            })
            .collect();
        servers.join("; ")
    }

    /// The median over rounds of `label`'s `pick` ÷ `base`'s in the same round; NaN if a round
    /// failed.
    fn round_ratio(point: &Point, label: &str, base: &str, pick: impl Fn(&Figures) -> f64) -> f64 {
        let (side, raw) = (point.figures(label), point.figures(base));
        // A failed round leaves a server short, and its rounds would no longer pair up.
        if side.is_empty() || side.len() != raw.len() || !point.failures.is_empty() {
            return f64::NAN;
        }
        let ratios: Vec<f64> = side
            .iter()
            .zip(raw)
            .map(|(s, r)| pick(s) / pick(r))
            .collect();
        median(&ratios)
    }

    /// `label`'s median ÷ raw tokio's median of `pick`, as printed.
    fn ratio(point: &Point, label: &str, pick: impl Fn(&Figures) -> f64 + Copy) -> String {
        let ratio = point.median(label, pick) / point.median(RAW, pick);
        if ratio.is_nan() {
            "-".to_string()
        } else {
            format!("{ratio:.2}")
        }
    }

    /// Raises the soft descriptor limit to the hard one; returns the connections a scenario may
    /// hold (this process and the server each need one descriptor per connection).
    fn connection_room() -> usize {
        let Some((soft, hard)) = descriptor_limits() else {
            return 1_000;
        };
        let wanted = hard.min(system_descriptor_ceiling());
        let soft = if soft < wanted {
            match raise_descriptor_limit(wanted) {
                Ok(()) => wanted,
                Err(error) => {
                    eprintln!("  could not raise the open files limit: {error}");
                    soft
                }
            }
        } else {
            soft
        };
        // The bench's own descriptors: its server processes' pipes, the poll, a connection
        // being opened.
        soft.saturating_sub(DESCRIPTOR_RESERVE)
    }

    /// Ends the process with `message` and the usage.
    fn usage_error(message: &str) -> ! {
        eprintln!("latency: {message}\n{USAGE}");
        std::process::exit(2)
    }

    const USAGE: &str = "\
usage: latency [--quick] [--together] [--compare PATH] [--rounds N] [--loads PERCENT,...]
                the benchmark (cargo bench --bench latency -- ...); --together: the servers
                share each round (with the API floor); --compare: this bench built from
                another commit, whose switchboard runs beside this one's; --rounds: per server
                and point (3, or 2 with --quick; together 10, or 3 with --quick); --loads: of
                raw tokio's closed-loop maximum (50,90)
       latency --server switchboard|raw|mio|api [--tls] [--core N] [--fifo]
                one server (started by the benchmark)";

    pub(crate) fn main() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.iter().any(|arg| arg == "--help" || arg == "-h") {
            println!("{USAGE}");
            return;
        }
        if let Some(position) = args.iter().position(|arg| arg == "--server") {
            let kind = args.get(position + 1).and_then(|kind| Served::parse(kind));
            let Some(kind) = kind else {
                eprintln!("latency: --server needs a server kind\n{USAGE}");
                std::process::exit(2);
            };
            let core = args
                .iter()
                .position(|arg| arg == "--core")
                .and_then(|position| args.get(position + 1)?.parse().ok());
            let flag = |name: &str| args.iter().any(|arg| arg == name);
            serve(kind, flag("--tls"), core, flag("--fifo"));
            return;
        }
        let mut settings = Settings::new(args.iter().any(|arg| arg == "--quick"));
        let mut loads = LOADS.to_vec();
        let mut rest = args.iter();
        let mut rounds_given = false;
        while let Some(arg) = rest.next() {
            match arg.as_str() {
                "--quick" | "--bench" => {}
                "--together" => {
                    settings.together = true;
                    if !rounds_given {
                        settings.rounds = if settings.quick { 3 } else { 10 };
                    }
                }
                "--compare" => match rest.next() {
                    Some(path) => settings.compare = Some(path.into()),
                    None => usage_error("--compare needs the path of another build of this bench"),
                },
                "--rounds" => match rest.next().and_then(|n| n.parse().ok()) {
                    Some(rounds @ 1..) => {
                        settings.rounds = rounds;
                        rounds_given = true;
                    }
                    _ => usage_error("--rounds needs a count of at least 1"),
                },
                "--loads" => {
                    let percents: Option<Vec<f64>> = rest.next().and_then(|list| {
                        list.split(',')
                            .map(|percent| percent.parse::<f64>().ok())
                            .map(|percent| percent.filter(|p| *p > 0.0 && *p <= 100.0))
                            .collect()
                    });
                    match percents {
                        Some(percents) => loads = percents.iter().map(|p| p / 100.0).collect(),
                        None => usage_error("--loads needs percents from 1 to 100, as 50,90"),
                    }
                }
                unknown => usage_error(&format!("unknown argument {unknown}")),
            }
        }
        let began = Instant::now();
        let room = connection_room();
        // The servers on the last core, the client on the others; nothing pinned on one core.
        let cores = cores();
        let server_core = (cores >= 2).then(|| cores - 1);
        if let Some(server_core) = server_core {
            pin((0..cores).filter(|&core| core != server_core));
        }
        // Together, this process holds every server's connections.
        let room = if settings.together {
            room / (TOGETHER + usize::from(settings.compare.is_some()))
        } else {
            room
        };
        let large =
            if settings.large > room {
                eprintln!(
                "  open files limit: {} connections {}instead of {} (the server and this process \
                 each need one descriptor per connection)",
                thousands(room as f64),
                if settings.together { "to each server " } else { "" },
                thousands(settings.large as f64)
            );
                room
            } else {
                settings.large
            };
        eprintln!(
            "latency bench{}: {} cores, servers on core {}, {} rounds of {:?} (+{:?} warm-up)",
            if settings.quick { " (--quick)" } else { "" },
            cores,
            server_core.map_or("(not pinned)".to_string(), |c| c.to_string()),
            settings.rounds,
            settings.measure,
            settings.warmup,
        );

        let mut points = Vec::new();
        let scenarios = [
            (false, settings.small),
            (false, large),
            (true, settings.tls),
        ];
        for (tls, connections) in scenarios {
            let mut servers = match Servers::start(tls, &settings, server_core) {
                Ok(servers) => servers,
                Err(error) => {
                    eprintln!("  could not start the servers: {error}");
                    continue;
                }
            };
            let label = format!(
                "{}64B x{}",
                if tls { "TLS " } else { "" },
                thousands(connections as f64)
            );
            let tls_connector = servers.tls.clone();
            let mut probes = Vec::new();
            for _ in 0..PROBES {
                match closed_loop_rate(
                    &mut servers.processes[0],
                    connections,
                    tls_connector.as_ref(),
                    &settings,
                ) {
                    Ok(rate) => probes.push(rate),
                    Err(error) => eprintln!("  {label}: a closed-loop probe failed: {error}"),
                }
            }
            if probes.is_empty() {
                continue;
            }
            let maximum = median(&probes);
            eprintln!(
                "  {label}: raw tokio's closed-loop maximum {} msgs/s (median of {})",
                thousands(maximum),
                probes
                    .iter()
                    .map(|rate| thousands(*rate))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for &load in &loads {
                let name = format!("{label} at {:.0}%", load * 100.0);
                points.push(run_point(
                    &mut servers,
                    name,
                    connections,
                    maximum * load,
                    &settings,
                ));
            }
        }

        println!();
        println!(
            "Open-loop latency, 64 B echo (each reply timed from its message's due time; \
             medians over rounds; \"raw tokio B\" is raw tokio again, its ratio the noise band):"
        );
        for point in &points {
            print_point(point);
        }
        eprintln!("\nfinished in {:.1} s", began.elapsed().as_secs_f64());
    }
}
