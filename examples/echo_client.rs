//! Drives outgoing connections through a switchboard manager against an echo server and checks
//! every echoed byte.
//!
//! ```text
//! cargo run --release --example echo_client -- --connect ADDR [--conns N] [--messages M] [--size S]
//!     [--tls [--tls-ca PEM] [--tls-domain NAME]]
//! ```
//! With `--tls` the connections speak TLS, verifying the server's certificate against the
//! platform's roots, or only against the CA in `--tls-ca`, for the name `--tls-domain` (default
//! `localhost`).
//! Each of the N connections sends M messages of S bytes, one at a time, each with content unique
//! to its connection and position, and checks the echo byte by byte before sending the next.
//! Prints a summary; exits 1 if any connection failed or any byte differed.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::{
    async_trait, native_tls, BytesMut, Callbacks, ClosureReason, ConnectArgument, Connection,
    Error, Server, Slot, TlsConnect, UserData,
};
use tokio::sync::Notify;

struct Options {
    connect: SocketAddr,
    conns: usize,
    messages: usize,
    size: usize,
    tls: bool,
    tls_ca: Option<String>,
    tls_domain: String,
}

const USAGE: &str = "usage: echo_client --connect ADDR [--conns N] [--messages M] [--size BYTES] \
                     [--tls [--tls-ca PEM] [--tls-domain NAME]]";

fn parse_options() -> Result<Options, String> {
    let mut connect = None;
    let (mut conns, mut messages, mut size) = (1, 1, 64);
    let (mut tls, mut tls_ca, mut tls_domain) = (false, None, "localhost".to_string());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--connect" => {
                let text = value()?;
                connect = Some(
                    text.parse()
                        .map_err(|_| format!("--connect takes IP:PORT, not {text}"))?,
                );
            }
            "--conns" => conns = number(&flag, &value()?)?,
            "--messages" => messages = number(&flag, &value()?)?,
            "--size" => size = number(&flag, &value()?)?,
            "--tls" => tls = true,
            "--tls-ca" => tls_ca = Some(value()?),
            "--tls-domain" => tls_domain = value()?,
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    if size == 0 {
        return Err("--size must be above zero".into());
    }
    Ok(Options {
        connect: connect.ok_or_else(|| format!("--connect is required\n{USAGE}"))?,
        conns,
        messages,
        size,
        tls: tls || tls_ca.is_some(),
        tls_ca,
        tls_domain,
    })
}

/// The TLS settings for `--tls`: full verification, against `--tls-ca` alone when given.
fn tls_settings(options: &Options) -> Result<TlsConnect, Error> {
    let Some(path) = &options.tls_ca else {
        return TlsConnect::new(options.tls_domain.clone());
    };
    let tls_error = |source: native_tls::Error| Error::Tls {
        from_peer: false,
        source: Box::new(source),
    };
    let pem = std::fs::read(path).map_err(|source| {
        Error::Io(io::Error::new(
            source.kind(),
            format!("cannot read {path}: {source}"),
        ))
    })?;
    let ca = native_tls::Certificate::from_pem(&pem).map_err(tls_error)?;
    let connector = native_tls::TlsConnector::builder()
        .add_root_certificate(ca)
        .disable_built_in_roots(true)
        .build()
        .map_err(tls_error)?;
    Ok(TlsConnect::with_connector(
        connector,
        options.tls_domain.clone(),
    ))
}

fn number(flag: &str, value: &str) -> Result<usize, String> {
    value
        .parse()
        .map_err(|_| format!("{flag} takes a whole number, not {value}"))
}

/// The byte at `offset` of message `message` on connection `index`.
fn pattern(index: usize, message: usize, offset: usize) -> u8 {
    (index.wrapping_mul(131) ^ message.wrapping_mul(31) ^ offset) as u8
}

fn message(index: usize, message: usize, size: usize) -> Vec<u8> {
    (0..size)
        .map(|offset| pattern(index, message, offset))
        .collect()
}

/// One connection's progress, kept in its user data.
struct Progress {
    index: usize,
    /// Bytes echoed back so far, over all messages.
    received: usize,
    sent_messages: usize,
}

#[derive(Default)]
struct Totals {
    finished: AtomicU64,
    failed: AtomicU64,
    mismatched: AtomicU64,
    bytes: AtomicU64,
    released: AtomicU64,
    all_released: Notify,
}

struct Client {
    progress: Slot<Progress>,
    messages: usize,
    size: usize,
    conns: u64,
    totals: Arc<Totals>,
}

impl Client {
    fn send_next(&self, connection: &Connection, progress: &mut Progress) {
        let data = message(progress.index, progress.sent_messages, self.size);
        progress.sent_messages += 1;
        if connection.write(data).is_err() {
            self.totals.failed.fetch_add(1, Ordering::Relaxed);
            connection.abort();
        }
    }
}

#[async_trait]
impl Callbacks for Client {
    async fn on_pre_outgoing_connect(
        &self,
        user_data: &UserData,
        _address: &SocketAddr,
        mut argument: ConnectArgument,
    ) {
        if let Some(index) = argument.take::<usize>() {
            user_data.set(
                self.progress,
                Progress {
                    index,
                    received: 0,
                    sent_messages: 0,
                },
            );
        }
    }

    async fn on_connection_established(&self, connection: &Connection, _address: &SocketAddr) {
        if self.messages == 0 {
            self.totals.finished.fetch_add(1, Ordering::Relaxed);
            return;
        }
        connection.user_data().with(self.progress, |progress| {
            if let Some(progress) = progress {
                self.send_next(connection, progress);
            }
        });
        connection.read();
    }

    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        self.totals
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let total = self.messages * self.size;
        connection.user_data().with(self.progress, |progress| {
            let Some(progress) = progress else { return };
            for &byte in data.iter() {
                let position = progress.received;
                if position >= total
                    || byte != pattern(progress.index, position / self.size, position % self.size)
                {
                    self.totals.mismatched.fetch_add(1, Ordering::Relaxed);
                    connection.abort();
                    return;
                }
                progress.received += 1;
            }
            if progress.received == total {
                self.totals.finished.fetch_add(1, Ordering::Relaxed);
                connection.close();
            } else {
                if progress.received == progress.sent_messages * self.size {
                    self.send_next(connection, progress);
                }
                connection.read();
            }
        });
    }

    async fn on_outgoing_connection_failed(
        &self,
        _user_data: &UserData,
        address: &SocketAddr,
        error: &Error,
    ) {
        eprintln!("connect to {address} failed: {error}");
        self.totals.failed.fetch_add(1, Ordering::Relaxed);
    }

    async fn on_fatal_error(&self, connection: &Connection, error: &Error) {
        eprintln!("connection {}: {error}", connection.id());
    }

    async fn on_remote_fatal_error(&self, connection: &Connection, error: &Error) {
        eprintln!("connection {}: {error}", connection.id());
    }

    async fn on_connection_client_close(&self, connection: &Connection) {
        let complete = connection.user_data().with(self.progress, |progress| {
            progress
                .as_ref()
                .is_some_and(|p| p.received == self.messages * self.size)
        });
        if !complete {
            eprintln!("connection {} closed by the server early", connection.id());
            self.totals.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn on_connection_closure(&self, connection: &Connection, reason: ClosureReason) {
        if !reason.is_graceful() && reason != ClosureReason::LocalAbort {
            eprintln!("connection {} ended: {reason}", connection.id());
            self.totals.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn on_socket_released(&self, _user_data: UserData) {
        if self.totals.released.fetch_add(1, Ordering::AcqRel) + 1 == self.conns {
            self.totals.all_released.notify_one();
        }
    }
}

async fn run(options: Options) -> Result<bool, Error> {
    let totals = Arc::new(Totals::default());
    let mut builder = Server::builder();
    let progress = builder.request_user_data_slot();
    let client = builder
        .start(Client {
            progress,
            messages: options.messages,
            size: options.size,
            conns: options.conns as u64,
            totals: totals.clone(),
        })
        .await?;
    let tls = if options.tls {
        Some(tls_settings(&options)?)
    } else {
        None
    };
    let started = Instant::now();
    for index in 0..options.conns {
        match &tls {
            Some(tls) => client
                .connect(options.connect)
                .tls(tls.clone())
                .argument(index)
                .spawn()?,
            None => client.connect(options.connect).argument(index).spawn()?,
        }
    }
    if options.conns > 0 {
        totals.all_released.notified().await;
    }
    let elapsed = started.elapsed();
    client.shutdown().await;
    let finished = totals.finished.load(Ordering::Relaxed);
    let failed = totals.failed.load(Ordering::Relaxed);
    let mismatched = totals.mismatched.load(Ordering::Relaxed);
    let bytes = totals.bytes.load(Ordering::Relaxed);
    let messages = finished * options.messages as u64;
    let rate = messages as f64 / elapsed.max(Duration::from_micros(1)).as_secs_f64();
    let mut out = io::stdout().lock();
    let _ = writeln!(
        out,
        "conns={} finished={finished} failed={failed} mismatched={mismatched} messages={messages} \
         bytes={bytes} seconds={:.3} msgs_per_sec={rate:.0}",
        options.conns,
        elapsed.as_secs_f64()
    );
    let _ = out.flush();
    Ok(finished == options.conns as u64 && failed == 0 && mismatched == 0)
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("echo_client: {error}");
            ExitCode::FAILURE
        }
    }
}
