//! An echo server on switchboard: every byte comes back; after the client's FIN the server
//! finishes echoing and closes. SIGINT or SIGTERM starts the ordered shutdown, and a second one
//! forces it (the connections left are reset at once); on unix, SIGUSR2 replaces the process
//! with a fresh copy without losing a connection (below), and SIGHUP reloads the TLS certificate.
//!
//! ```text
//! cargo run --release --example echo_server -- [--listen ADDR] [--threads N]
//!     [--max-connections N] [--at-limit stop|reject] [--shutdown-timeout SECS]
//!     [--drain-accepting SECS] [--events]
//!     [--tls-cert PEM --tls-key PEM] [--idle-timeout SECS] [--first-byte-timeout SECS]
//!     [--write-limit BYTES] [--max-per-ip N] [--urgent] [--proxy-protocol] [--metrics ADDR]
//!     [--reuse-port] [--upgrade-timeout SECS]
//! ```
//! The first line on stdout is `listening on <address>` (one such line per listener). With
//! `--events`, every callback prints one line `event <callback name without on_> key=value ...`;
//! the last one, `event shutdown_complete graceful=N forced=N other=N`, is printed at the end of
//! every shutdown, with or without `--events`.
//!
//! **A drain that loses nothing.** On shutdown each connection is told (`shutdown_requested`) and
//! simply goes on being served: its read stays requested, so every byte its client sends is
//! echoed, until the client closes (or the drain time, `--shutdown-timeout`, runs out and the
//! rest are reset). The library's default would `close()` it, which stops reading: a client
//! whose request had not been read yet would get FIN instead of its echo.
//!
//! **A drain window.** With `--drain-accepting SECS` the server goes on accepting (and serving)
//! for that long after SIGINT or SIGTERM, then closes its listener and drains as above: for
//! balancers that do not retry, such as a Kubernetes Service, which go on sending clients for a
//! few seconds after the stop. With `--metrics`, `GET /ready` answers 503 from the signal on
//! (the README's "Running on Kubernetes" shows the probe).
//!
//! **Certificate reload (unix).** On SIGHUP the server reads `--tls-cert` and `--tls-key` again
//! and, if they make a valid acceptor, new handshakes use it (connections already established
//! keep theirs); it prints `tls reloaded`. If not (a missing file, a key that does not match),
//! it prints `tls reload failed: ...; keeping the old certificate` and serves on with the old one.
//!
//! **Listeners from elsewhere.** When `LISTEN_FDS` is set (systemd socket activation, or the
//! hand-off below), the server adopts descriptors 3, 4, ... (through the `listenfd` crate) in
//! place of `--listen`. `--reuse-port` sets `SO_REUSEPORT` on the listener it binds (unix), so
//! several instances can listen on one port; note that an instance that closes its listener
//! resets the connections still queued on it.
//!
//! **Hand-off restart (unix).** On SIGUSR2 the server starts the same executable (as found at
//! start-up, so a new build at that path is what starts) with the same arguments, its output
//! to the same stdout and stderr, and the listening socket inherited as descriptor 3 with
//! `LISTEN_FDS=1`. It prints `upgrade started pid=N` and keeps accepting until the new process,
//! which prints `listening on` with the same address, says it is serving; then
//! `upgrade ready pid=N`, and the old process stops accepting, drains as above, prints
//! `event shutdown_complete ...` and exits 0. If the new process fails or is not ready within
//! `--upgrade-timeout` (default 10 s) it is killed, `upgrade failed: ...` is printed and the old
//! one keeps serving. The listening socket is never closed in between, so no client that
//! connects meanwhile is refused or lost. With `--tls-cert` (a PEM
//! certificate chain, leaf first) and `--tls-key` (its PEM PKCS#8 key) the server speaks TLS; the
//! guide's TLS chapter shows how to make a test certificate with `openssl`. `--idle-timeout` and
//! `--first-byte-timeout` end connections that stay silent; `--write-limit` bounds each
//! connection's write queue (its watermarks follow: high at the limit, low at half);
//! `--max-per-ip` caps concurrent connections from one IP address. With `--urgent` every plain
//! connection also asks for TCP urgent data (Linux), so an urgent byte shows as an
//! `event read_oob_completed` line and is echoed back as urgent data. It is off by default because
//! watching for urgent data costs a second descriptor per connection (`ulimit -n` must then allow
//! two per connection) and a second wait on every connection's task, which a plain echo server
//! does not need. With `--proxy-protocol` every connection must begin with a PROXY protocol
//! header (version 1 or 2, as HAProxy's `send-proxy` / `send-proxy-v2` sends) from 127.0.0.0/8
//! or ::1, and the addresses printed are the client's from the header.
//!
//! With `--metrics ADDR` the server's metrics (see the crate docs) are served as Prometheus text
//! at `http://ADDR/metrics`, through `metrics-exporter-prometheus`'s recorder, and the second line
//! on stdout, after the `listening on` lines, is `metrics on <address>`. The endpoint is a second
//! switchboard server in this process: one small HTTP/1.x request per connection (its head read
//! up to the blank line, at most 8 KiB), `GET /metrics` answered 200, `GET /ready` 200 while the
//! echo server serves and 503 once its shutdown has begun (drain window included), anything else
//! 404, then the connection closes. Connections that say nothing cannot keep scrapes out: at most 128 wait for
//! their request at once, one more pushes out (resets) the oldest, and a request head must be
//! complete 2 s after its connection was accepted (a silent one is reset after 1 s). Each server
//! labels its series: `server="echo"` for the echo server, `server="metrics"` for the endpoint
//! itself.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use switchboard::proxy::ProxyProtocol;
use switchboard::socket2::SockRef;
use switchboard::tls;
use switchboard::{
    async_trait, Bytes, BytesMut, Callbacks, ClosureReason, Connection, ConnectionId, Direction,
    Error, Listener, Server, ServerBuilder, ShutdownReport, Slot, TlsInfo, UserData,
};

#[path = "../common/mod.rs"]
mod common;
mod options;

use common::metrics::{start_metrics, Readiness};
use common::say;
use options::{parse_options, Options};

/// Prints one flushed line per event when enabled.
struct Events {
    enabled: bool,
}

impl Events {
    fn print(&self, line: std::fmt::Arguments<'_>) {
        if self.enabled {
            say(format_args!("event {line}"));
        }
    }
}

struct Echo {
    events: Events,
    id: Slot<ConnectionId>,
    /// Whether every connection also watches for urgent data (`--urgent`).
    urgent: bool,
}

fn direction(direction: Direction) -> &'static str {
    match direction {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    }
}

/// An error as a single `key=value` token: its kind and OS code.
fn error_fields(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(code) => format!("kind={:?} code={code}", error.kind()),
        None => format!("kind={:?}", error.kind()),
    }
}

#[async_trait]
impl Callbacks for Echo {
    async fn on_start_accepting_connections(&self) {
        self.events
            .print(format_args!("start_accepting_connections"));
    }

    async fn on_stop_accepting_connections(&self) {
        self.events
            .print(format_args!("stop_accepting_connections"));
    }

    async fn on_accept_error(&self, error: &io::Error) {
        self.events
            .print(format_args!("accept_error {}", error_fields(error)));
    }

    fn on_socket_created(&self, _socket: SockRef<'_>, side: Direction) {
        self.events
            .print(format_args!("socket_created direction={}", direction(side)));
    }

    async fn on_connection_established(&self, connection: &Connection, address: &SocketAddr) {
        connection.user_data().set(self.id, connection.id());
        self.events.print(format_args!(
            "connection_established conn={} peer={address}",
            connection.id()
        ));
        connection.read();
        if self.urgent {
            // Urgent data is plain TCP on Linux only; elsewhere the request is refused and skipped.
            let _ = connection.read_oob();
        }
    }

    async fn on_read_oob_completed(&self, connection: &Connection, data: BytesMut) {
        self.events.print(format_args!(
            "read_oob_completed conn={} byte={}",
            connection.id(),
            data.first().copied().unwrap_or_default()
        ));
        if let Some(&byte) = data.first() {
            let _ = connection.send_urgent(byte);
        }
        let _ = connection.read_oob();
    }

    async fn on_write_buffer_high(&self, connection: &Connection) {
        self.events.print(format_args!(
            "write_buffer_high conn={} queued={}",
            connection.id(),
            connection.queued_write_bytes()
        ));
    }

    async fn on_write_buffer_low(&self, connection: &Connection) {
        self.events.print(format_args!(
            "write_buffer_low conn={} queued={}",
            connection.id(),
            connection.queued_write_bytes()
        ));
    }

    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        self.events.print(format_args!(
            "read_completed conn={} bytes={}",
            connection.id(),
            data.len()
        ));
        // Reads pause by themselves while the write queue is at its limit, so this write is
        // always taken while the connection is open.
        if connection.write(data.freeze()).is_ok() {
            connection.read();
        }
    }

    async fn on_read_completion_error(&self, connection: &Connection, error: &io::Error) {
        self.events.print(format_args!(
            "read_completion_error conn={} {}",
            connection.id(),
            error_fields(error)
        ));
    }

    async fn on_write_completed(&self, connection: &Connection, data: Bytes) {
        self.events.print(format_args!(
            "write_completed conn={} bytes={}",
            connection.id(),
            data.len()
        ));
    }

    async fn on_write_completion_error(&self, connection: &Connection, error: &io::Error) {
        self.events.print(format_args!(
            "write_completion_error conn={} {}",
            connection.id(),
            error_fields(error)
        ));
    }

    async fn on_maximum_connections(&self) {
        self.events.print(format_args!("maximum_connections"));
    }

    async fn on_all_connections_aborted(&self, count: usize) {
        self.events
            .print(format_args!("all_connections_aborted count={count}"));
    }

    async fn on_shutdown_initiated(&self) {
        self.events.print(format_args!("shutdown_initiated"));
    }

    async fn on_shutdown_requested(&self, connection: &Connection) {
        self.events
            .print(format_args!("shutdown_requested conn={}", connection.id()));
        // Not `close()` (the library's default), which stops reading and would leave a request
        // already sent unanswered: the read stays requested, so the connection is served until
        // its client closes, or until the drain time runs out and it is reset.
    }

    async fn on_shutdown_complete(&self, report: ShutdownReport) {
        // Printed with or without `--events`: how the drain went, as the process's last word.
        say(format_args!(
            "event shutdown_complete graceful={} forced={} other={}",
            report.graceful, report.forced, report.other
        ));
    }

    async fn on_connection_client_close(&self, connection: &Connection) {
        self.events.print(format_args!(
            "connection_client_close conn={}",
            connection.id()
        ));
    }

    async fn on_connection_reset(&self, connection: &Connection, error: &io::Error) {
        self.events.print(format_args!(
            "connection_reset conn={} {}",
            connection.id(),
            error_fields(error)
        ));
    }

    async fn on_connection_closure(&self, connection: &Connection, reason: ClosureReason) {
        self.events.print(format_args!(
            "connection_closure conn={} reason={reason}",
            connection.id()
        ));
    }

    async fn on_connection_closed(&self, connection: &Connection) {
        self.events
            .print(format_args!("connection_closed conn={}", connection.id()));
    }

    async fn on_socket_released(&self, user_data: UserData) {
        match user_data.take(self.id) {
            Some(id) => self.events.print(format_args!("socket_released conn={id}")),
            None => self.events.print(format_args!("socket_released")),
        }
    }

    async fn on_negotiation_complete(&self, connection: &Connection, info: &TlsInfo) {
        let alpn = info.alpn_protocol().map_or_else(
            || "-".to_string(),
            |p| String::from_utf8_lossy(p).into_owned(),
        );
        self.events.print(format_args!(
            "negotiation_complete conn={} side={} alpn={alpn} peer_certificate={}",
            connection.id(),
            direction(info.side()),
            info.peer_certificate().is_some()
        ));
    }

    async fn on_secure_connection_established(
        &self,
        connection: &Connection,
        address: &SocketAddr,
    ) {
        self.events.print(format_args!(
            "secure_connection_established conn={} peer={address}",
            connection.id()
        ));
    }

    async fn on_fatal_error(&self, connection: &Connection, error: &Error) {
        self.events.print(format_args!(
            "fatal_error conn={} message={:?}",
            connection.id(),
            error.to_string()
        ));
    }

    async fn on_remote_fatal_error(&self, connection: &Connection, error: &Error) {
        self.events.print(format_args!(
            "remote_fatal_error conn={} message={:?}",
            connection.id(),
            error.to_string()
        ));
    }

    async fn on_secure_socket_released(&self, id: ConnectionId) {
        self.events
            .print(format_args!("secure_socket_released conn={id}"));
    }

    async fn on_error(&self, error: &Error) {
        // The message is free text: quoted, as the last field.
        self.events
            .print(format_args!("error message={:?}", error.to_string()));
    }
}

/// What `main` found before the runtime started.
struct Startup {
    /// Listeners passed in by socket activation (`LISTEN_FDS`), to use in place of `--listen`.
    adopted: Vec<std::net::TcpListener>,
    /// This executable as found at start-up, for the hand-off restart.
    exe: Option<PathBuf>,
    /// Started by a hand-off: stdin is the channel to the old process.
    #[cfg(unix)]
    handed_over: bool,
}

/// Takes the listeners of socket activation, if `LISTEN_FDS` names any. Runs before any other
/// thread exists: `listenfd` removes the variables from the environment, so that a process this
/// one starts does not take them for its own.
fn activated_listeners() -> Result<Vec<std::net::TcpListener>, String> {
    let mut passed = listenfd::ListenFd::from_env();
    let mut listeners = Vec::with_capacity(passed.len());
    for index in 0..passed.len() {
        match passed.take_tcp_listener(index) {
            Ok(Some(listener)) => listeners.push(listener),
            Ok(None) => {}
            Err(error) => return Err(format!("LISTEN_FDS: descriptor {}: {error}", 3 + index)),
        }
    }
    Ok(listeners)
}

async fn run(options: Options, startup: Startup) -> Result<(), Error> {
    let readiness = Readiness::default();
    let metrics = match &options.metrics {
        Some(address) => Some(start_metrics(address, readiness.clone()).await?),
        None => None,
    };
    let mut builder = Server::builder();
    let id = builder.request_user_data_slot();
    let mut builder = builder
        .at_limit(options.at_limit)
        .metrics_labels([("server", "echo")]);
    let listens: Vec<Listener> = if startup.adopted.is_empty() {
        if options.reuse_port {
            builder = reuse_port(builder)?;
        }
        vec![Listener::bind(options.listen.as_str())]
    } else {
        startup.adopted.into_iter().map(Listener::adopt).collect()
    };
    for mut listen in listens {
        if options.proxy_protocol {
            // The balancer runs on this host.
            let trusted = ProxyProtocol::new()
                .trust("127.0.0.0/8".parse().expect("a network"))
                .trust("::1".parse().expect("a network"));
            listen = listen.proxy_protocol(trusted);
        }
        builder = builder.listen(listen);
    }
    if let Some(max) = options.max_connections {
        builder = builder.max_connections(max);
    }
    if let Some(drain) = options.shutdown_timeout {
        builder = builder.shutdown_timeout(drain);
    }
    if let Some(window) = options.drain_accepting {
        builder = builder.drain_window(window);
    }
    builder = builder
        .idle_timeout(options.idle_timeout)
        .first_byte_timeout(options.first_byte_timeout);
    if let Some(max) = options.max_per_ip {
        builder = builder.max_connections_per_ip(max);
    }
    if let Some(limit) = options.write_limit {
        if limit < 2 {
            return Err(Error::InvalidSetting {
                setting: "--write-limit",
                reason: "must be at least 2 bytes".into(),
            });
        }
        builder = builder
            .write_queue_limit(limit)
            .write_watermarks(limit, limit / 2);
    }
    match (&options.tls_cert, &options.tls_key) {
        (Some(cert), Some(key)) => builder = builder.tls(read_acceptor(cert, key)?),
        (None, None) => {}
        _ => {
            return Err(Error::InvalidSetting {
                setting: "--tls-cert/--tls-key",
                reason: "give both or neither".into(),
            })
        }
    }
    let callbacks = Echo {
        events: Events {
            enabled: options.events,
        },
        id,
        urgent: options.urgent,
    };
    // Before the server starts, so that no signal meets a process without its handler (whose
    // default would end it).
    let mut signals = Signals::register()?;
    let server = builder.start(callbacks).await?;
    let _ = readiness.set(server.downgrade());
    for address in server.local_addrs() {
        say(format_args!("listening on {address}"));
    }
    if let Some(metrics) = &metrics {
        let address = metrics.local_addr().expect("one listener");
        say(format_args!("metrics on {address}"));
    }
    #[cfg(unix)]
    if startup.handed_over {
        if let Err(error) = handoff::tell_old_process_ready() {
            // The old process gives up on this one and kills it after its timeout.
            eprintln!("echo_server: cannot tell the old process we serve: {error}");
        }
    }
    serve_until_stopped(&server, &options, startup.exe, &mut signals).await?;
    // One more stop signal during the shutdown forces it.
    let shutdown = server.shutdown();
    tokio::pin!(shutdown);
    tokio::select! {
        _ = &mut shutdown => {}
        () = signals.stop() => {
            say(format_args!("stop signal during the shutdown: forcing it"));
            server.force_shutdown().await;
        }
    }
    // Last, so that the echo server's drain can be watched.
    if let Some(metrics) = metrics {
        metrics.shutdown().await;
    }
    Ok(())
}

/// The TLS acceptor of the certificate chain and key in these PEM files.
fn read_acceptor(cert: &str, key: &str) -> Result<tls::TlsAcceptor, Error> {
    let read = |path: &str| {
        std::fs::read(path).map_err(|source| {
            Error::Io(io::Error::new(
                source.kind(),
                format!("cannot read {path}: {source}"),
            ))
        })
    };
    tls::acceptor_from_pem(&read(cert)?, &read(key)?)
}

/// Reads `--tls-cert` and `--tls-key` again (on SIGHUP) and gives new handshakes the result;
/// on any failure the old certificate stays.
#[cfg(unix)]
fn reload_tls(server: &Server, options: &Options) {
    let (Some(cert), Some(key)) = (&options.tls_cert, &options.tls_key) else {
        return say(format_args!(
            "tls reload failed: no --tls-cert and --tls-key"
        ));
    };
    match read_acceptor(cert, key).and_then(|acceptor| server.set_tls_acceptor(acceptor)) {
        Ok(()) => say(format_args!("tls reloaded from {cert} and {key}")),
        Err(error) => {
            say(format_args!(
                "tls reload failed: {error}; keeping the old certificate"
            ));
            eprintln!("echo_server: tls reload failed: {error}; keeping the old certificate");
        }
    }
}

#[cfg(all(
    unix,
    not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
))]
fn reuse_port(builder: ServerBuilder) -> Result<ServerBuilder, Error> {
    Ok(builder.reuse_port(true))
}

#[cfg(not(all(
    unix,
    not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
)))]
fn reuse_port(_: ServerBuilder) -> Result<ServerBuilder, Error> {
    Err(Error::Unsupported(
        "--reuse-port: no SO_REUSEPORT on this platform",
    ))
}

/// The signals that stop the server (SIGINT, SIGTERM), hand it over (SIGUSR2) or reload its
/// certificate (SIGHUP).
#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    upgrade: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn register() -> io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            upgrade: signal(SignalKind::user_defined2())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next SIGINT or SIGTERM.
    async fn stop(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Ctrl-C, which stops the server.
#[cfg(not(unix))]
struct Signals(tokio::signal::windows::CtrlC);

#[cfg(not(unix))]
impl Signals {
    fn register() -> io::Result<Signals> {
        tokio::signal::windows::ctrl_c().map(Signals)
    }

    /// The next Ctrl-C.
    async fn stop(&mut self) {
        self.0.recv().await;
    }
}

/// Serves until SIGINT or SIGTERM, or until a SIGUSR2 hand-off to a new process succeeded;
/// reloads the certificate on SIGHUP.
#[cfg(unix)]
async fn serve_until_stopped(
    server: &Server,
    options: &Options,
    exe: Option<PathBuf>,
    signals: &mut Signals,
) -> io::Result<()> {
    let Signals {
        interrupt,
        terminate,
        upgrade,
        hangup,
    } = signals;
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = hangup.recv() => {
                reload_tls(server, options);
                continue;
            }
            _ = upgrade.recv() => {}
        }
        let Some(exe) = &exe else {
            say(format_args!(
                "upgrade failed: this executable's path is unknown"
            ));
            continue;
        };
        // A stop signal during the hand-off wins: dropping it kills the new process.
        let handing_off = handoff::hand_off(server, exe, options.upgrade_timeout);
        tokio::select! {
            handed = handing_off => match handed {
                Ok(pid) => {
                    say(format_args!("upgrade ready pid={pid}"));
                    return Ok(());
                }
                Err(error) => say(format_args!("upgrade failed: {error}; still serving")),
            },
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
        }
    }
}

#[cfg(not(unix))]
async fn serve_until_stopped(
    _: &Server,
    _: &Options,
    _: Option<PathBuf>,
    signals: &mut Signals,
) -> io::Result<()> {
    signals.stop().await;
    Ok(())
}

#[cfg(unix)]
mod handoff;

fn main() -> ExitCode {
    let adopted = match activated_listeners() {
        Ok(adopted) => adopted,
        Err(message) => {
            eprintln!("echo_server: {message}");
            return ExitCode::FAILURE;
        }
    };
    let startup = Startup {
        adopted,
        exe: std::env::current_exe().ok(),
        #[cfg(unix)]
        handed_over: std::env::var_os(handoff::HANDOFF_ENV).is_some(),
    };
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    common::run("echo_server", options.threads, run(options, startup))
}
