//! An echo server on switchboard: every byte comes back; after the client's FIN the server
//! finishes echoing and closes. SIGINT or SIGTERM starts the ordered shutdown.
//!
//! ```text
//! cargo run --release --example echo_server -- [--listen ADDR] [--threads N]
//!     [--max-connections N] [--at-limit stop|reject] [--shutdown-timeout SECS] [--events]
//!     [--tls-cert PEM --tls-key PEM] [--idle-timeout SECS] [--first-byte-timeout SECS]
//!     [--write-limit BYTES] [--max-per-ip N] [--urgent] [--proxy-protocol] [--metrics ADDR]
//! ```
//! The first line on stdout is `listening on <address>`. With `--events`, every callback prints
//! one line `event <callback name without on_> key=value ...`. With `--tls-cert` (a PEM
//! certificate chain, leaf first) and `--tls-key` (its PEM PKCS#8 key) the server speaks TLS; the
//! README shows how to make a test certificate with `openssl`. `--idle-timeout` and
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
//! on stdout is `metrics on <address>`. The endpoint is a second switchboard server in this
//! process: one small HTTP/1.x request per connection (its head read up to the blank line, at
//! most 8 KiB), `GET /metrics` answered 200, anything else 404, then the connection closes. Each
//! server labels its series: `server="echo"` for the echo server, `server="metrics"` for the
//! endpoint itself.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use switchboard::proxy::ProxyProtocol;
use switchboard::socket2::SockRef;
use switchboard::tls;
use switchboard::{
    async_trait, AtLimit, Bytes, BytesMut, Callbacks, ClosureReason, Connection, ConnectionId,
    Direction, Error, Listen, Server, ShutdownReport, Slot, TlsInfo, UserData,
};

struct Options {
    listen: String,
    threads: Option<usize>,
    max_connections: Option<usize>,
    at_limit: AtLimit,
    shutdown_timeout: Option<Duration>,
    events: bool,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    idle_timeout: Option<Duration>,
    first_byte_timeout: Option<Duration>,
    write_limit: Option<usize>,
    max_per_ip: Option<usize>,
    urgent: bool,
    proxy_protocol: bool,
    metrics: Option<String>,
}

const USAGE: &str = "usage: echo_server [--listen ADDR] [--threads N] [--max-connections N] \
                     [--at-limit stop|reject] [--shutdown-timeout SECS] [--events] \
                     [--tls-cert PEM --tls-key PEM] [--idle-timeout SECS] \
                     [--first-byte-timeout SECS] [--write-limit BYTES] [--max-per-ip N] \
                     [--urgent] [--proxy-protocol] [--metrics ADDR]";

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        listen: "127.0.0.1:5050".into(),
        threads: None,
        max_connections: None,
        at_limit: AtLimit::StopAccepting,
        shutdown_timeout: None,
        events: false,
        tls_cert: None,
        tls_key: None,
        idle_timeout: None,
        first_byte_timeout: None,
        write_limit: None,
        max_per_ip: None,
        urgent: false,
        proxy_protocol: false,
        metrics: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => options.listen = value()?,
            "--threads" => options.threads = Some(number(&flag, &value()?)?),
            "--max-connections" => options.max_connections = Some(number(&flag, &value()?)?),
            "--at-limit" => {
                options.at_limit = match value()?.as_str() {
                    "stop" => AtLimit::StopAccepting,
                    "reject" => AtLimit::AcceptAndClose,
                    other => return Err(format!("--at-limit takes stop or reject, not {other}")),
                }
            }
            "--shutdown-timeout" => {
                let seconds: f64 = value()?
                    .parse()
                    .map_err(|_| "--shutdown-timeout takes seconds".to_string())?;
                options.shutdown_timeout = Some(
                    Duration::try_from_secs_f64(seconds)
                        .map_err(|_| "--shutdown-timeout takes non-negative seconds")?,
                );
            }
            "--events" => options.events = true,
            "--tls-cert" => options.tls_cert = Some(value()?),
            "--tls-key" => options.tls_key = Some(value()?),
            "--idle-timeout" => options.idle_timeout = Some(seconds(&flag, &value()?)?),
            "--first-byte-timeout" => options.first_byte_timeout = Some(seconds(&flag, &value()?)?),
            "--write-limit" => options.write_limit = Some(number(&flag, &value()?)?),
            "--max-per-ip" => options.max_per_ip = Some(number(&flag, &value()?)?),
            "--urgent" => options.urgent = true,
            "--proxy-protocol" => options.proxy_protocol = true,
            "--metrics" => options.metrics = Some(value()?),
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    Ok(options)
}

fn seconds(flag: &str, value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("{flag} takes non-negative seconds, not {value}"))
}

fn number(flag: &str, value: &str) -> Result<usize, String> {
    value
        .parse()
        .map_err(|_| format!("{flag} takes a whole number, not {value}"))
}

/// Prints one flushed line per event when enabled.
struct Events {
    enabled: bool,
}

impl Events {
    fn print(&self, line: std::fmt::Arguments<'_>) {
        if self.enabled {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "event {line}");
            let _ = out.flush();
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
        connection.close();
    }

    async fn on_shutdown_complete(&self, report: ShutdownReport) {
        self.events.print(format_args!(
            "shutdown_complete graceful={} forced={} other={}",
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

/// Longest HTTP request head the metrics endpoint reads; a longer one is answered 431.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Upper bounds of the buckets of the `_seconds` histograms (TLS handshake, PROXY header): from
/// half a millisecond on loopback to the 10 s of the default handshake timeout.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `--metrics` endpoint: answers one HTTP/1.x request per connection, then closes.
struct MetricsEndpoint {
    prometheus: PrometheusHandle,
    /// The request head read so far.
    head: Slot<Vec<u8>>,
}

/// How far a connection's request has come.
enum Request {
    /// The head is not complete yet.
    Incomplete,
    /// The head, up to its blank line.
    Head(Vec<u8>),
    TooLarge,
}

impl MetricsEndpoint {
    /// The response to a complete request head.
    fn respond(&self, head: &[u8]) -> String {
        let request_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
        let mut parts = request_line.split(|&b| b == b' ');
        let (method, target) = (parts.next(), parts.next());
        let is_metrics =
            matches!(target, Some(t) if t == b"/metrics" || t.starts_with(b"/metrics?"));
        if method == Some(b"GET") && is_metrics {
            response(
                "200 OK",
                "text/plain; version=0.0.4",
                &self.prometheus.render(),
            )
        } else {
            response("404 Not Found", "text/plain", "not found\n")
        }
    }
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

#[async_trait]
impl Callbacks for MetricsEndpoint {
    async fn on_connection_established(&self, connection: &Connection, _address: &SocketAddr) {
        connection.read();
    }

    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        let request = connection.user_data().with(self.head, |head| {
            let head = head.get_or_insert_with(Vec::new);
            head.extend_from_slice(&data);
            match head.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(end) => Request::Head(head[..end].to_vec()),
                None if head.len() > MAX_REQUEST_HEAD => Request::TooLarge,
                None => Request::Incomplete,
            }
        });
        let answer = match request {
            Request::Incomplete => return connection.read(),
            Request::Head(head) => self.respond(&head),
            Request::TooLarge => response(
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too large\n",
            ),
        };
        // The only write on this connection, so the queue has room.
        let _ = connection.write(answer);
        connection.close();
    }
}

/// Installs the Prometheus recorder (before the echo server starts, which takes its metric
/// handles from it) and starts the endpoint that serves it on `address`.
async fn start_metrics(address: &str) -> Result<Server, Error> {
    let failed = |error: BuildError| {
        Error::Io(io::Error::other(format!(
            "cannot install the metrics recorder: {error}"
        )))
    };
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .map_err(failed)?
        .install_recorder()
        .map_err(failed)?;
    // The recorder keeps histogram samples until upkeep folds them in: every few seconds, so
    // memory stays bounded between scrapes.
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let mut builder = Server::builder();
    let head = builder.request_user_data_slot();
    builder
        .bind(address)
        .metrics_labels([("server", "metrics")])
        .max_connections(64)
        // A scraper that connects and says nothing holds its slot this long at most.
        .read_timeout(Some(Duration::from_secs(10)))
        .start(MetricsEndpoint { prometheus, head })
        .await
}

async fn run(options: Options) -> Result<(), Error> {
    let metrics = match &options.metrics {
        Some(address) => Some(start_metrics(address).await?),
        None => None,
    };
    let mut builder = Server::builder();
    let id = builder.request_user_data_slot();
    let mut listen = Listen::bind(options.listen.as_str());
    if options.proxy_protocol {
        // The balancer runs on this host.
        let loopback = ["127.0.0.0/8", "::1"].map(|network| network.parse().expect("a network"));
        listen = listen.proxy_protocol(ProxyProtocol::new().trust(loopback[0]).trust(loopback[1]));
    }
    let mut builder = builder
        .listen(listen)
        .at_limit(options.at_limit)
        .metrics_labels([("server", "echo")]);
    if let Some(max) = options.max_connections {
        builder = builder.max_connections(max);
    }
    if let Some(drain) = options.shutdown_timeout {
        builder = builder.shutdown_timeout(drain);
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
        (Some(cert), Some(key)) => {
            let read = |path: &str| {
                std::fs::read(path).map_err(|source| {
                    Error::Io(io::Error::new(
                        source.kind(),
                        format!("cannot read {path}: {source}"),
                    ))
                })
            };
            builder = builder.tls(tls::acceptor_from_pem(&read(cert)?, &read(key)?)?);
        }
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
    let server = builder.start(callbacks).await?;
    {
        let mut out = io::stdout().lock();
        let _ = writeln!(
            out,
            "listening on {}",
            server.local_addr().expect("one listener")
        );
        if let Some(metrics) = &metrics {
            let address = metrics.local_addr().expect("one listener");
            let _ = writeln!(out, "metrics on {address}");
        }
        let _ = out.flush();
    }
    wait_for_signal().await?;
    server.shutdown().await;
    // Last, so that the echo server's drain can be watched.
    if let Some(metrics) = metrics {
        metrics.shutdown().await;
    }
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signal() -> io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> io::Result<()> {
    tokio::signal::ctrl_c().await
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = options.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("echo_server: {error}");
            ExitCode::FAILURE
        }
    }
}
