//! Length-prefixed request/response through awaitable client connections: each client task
//! opens a [`Client`](switchboard::Client) through a switchboard manager, sends a request, awaits
//! its reply and verifies it, in a loop, while the manager counts, limits and finally shuts the
//! connections down.
//!
//! ```text
//! cargo run --release --example rpc_client -- [--connect ADDR] [--clients N] [--requests N]
//!     [--size BYTES] [--threads N]
//! ```
//! Every message is a frame of a 4-byte big-endian length and its bytes (tokio-util's
//! `LengthDelimitedCodec`). A request is an 8-byte id and a payload; the reply is the same id and
//! the payload reversed. Without `--connect` the example first starts its own server of that
//! protocol on 127.0.0.1 (on switchboard's frame layer) and prints `listening on ADDR`; with it, it
//! talks to one already running (`rpc_client --serve-only` starts just the server and prints its
//! address; it shuts down in order on SIGINT/SIGTERM).
//!
//! The last line is `requests=N verified=N failed=N seconds=S per_second=R`; the exit status is 0
//! only if every reply was verified.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::{SinkExt, StreamExt};
use switchboard::codec::{FrameHandler, FramedConnection, Framing};
use switchboard::tokio_util::codec::LengthDelimitedCodec;
use switchboard::{async_trait, Bytes, BytesMut, Callbacks, Connection, Error, Server};

#[path = "common/mod.rs"]
mod common;

use common::say;

/// Largest frame either side takes.
const MAX_FRAME: usize = 1024 * 1024;

struct Options {
    connect: Option<String>,
    serve_only: bool,
    clients: usize,
    requests: u64,
    size: usize,
    threads: Option<usize>,
}

const USAGE: &str = "usage: rpc_client [--connect ADDR | --serve-only] [--clients N] \
                     [--requests N] [--size BYTES] [--threads N]";

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        connect: None,
        serve_only: false,
        clients: 16,
        requests: 1000,
        size: 64,
        threads: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |text: String| {
            text.parse::<u64>()
                .map_err(|_| format!("{flag} takes a whole number, not {text}"))
        };
        match flag.as_str() {
            "--connect" => options.connect = Some(value()?),
            "--serve-only" => options.serve_only = true,
            "--clients" => options.clients = number(value()?)?.max(1) as usize,
            "--requests" => options.requests = number(value()?)?,
            "--size" => options.size = number(value()?)? as usize,
            "--threads" => options.threads = Some(number(value()?)?.max(1) as usize),
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    if options.size + 8 > MAX_FRAME {
        return Err(format!("--size is at most {}", MAX_FRAME - 8));
    }
    Ok(options)
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// The server side: answers each request with its id and its payload reversed.
struct Reverse;

impl Callbacks for Reverse {}

#[async_trait]
impl FrameHandler for Reverse {
    type Codec = LengthDelimitedCodec;

    fn new_codec(&self, _connection: &Connection) -> LengthDelimitedCodec {
        codec()
    }

    async fn on_frame(&self, connection: &FramedConnection<'_, Self::Codec>, request: BytesMut) {
        if request.len() < 8 {
            connection.close();
            return;
        }
        let mut reply = BytesMut::with_capacity(request.len());
        reply.extend_from_slice(&request[..8]);
        reply.extend(request[8..].iter().rev());
        // `feed`: the replies to one read's requests go out as one write.
        if connection.feed(reply.freeze()).is_err() {
            connection.close();
        }
    }
}

/// The request `number` of client `client`: its id, then a payload of `size` bytes that
/// differs from request to request.
fn request(client: usize, number: u64, size: usize) -> (u64, Bytes) {
    let id = ((client as u64) << 40) | number;
    let mut frame = BytesMut::with_capacity(8 + size);
    frame.extend_from_slice(&id.to_be_bytes());
    let mut state = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    frame.extend((0..size).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    }));
    (id, frame.freeze())
}

/// Whether `reply` answers `request`.
fn verified(request: &[u8], reply: &[u8]) -> bool {
    reply.len() == request.len()
        && reply[..8] == request[..8]
        && reply[8..].iter().eq(request[8..].iter().rev())
}

#[derive(Default)]
struct Tally {
    verified: AtomicU64,
    failed: AtomicU64,
}

/// One client task: connect, then request → await → verify, `requests` times.
async fn client(
    manager: Server,
    address: std::net::SocketAddr,
    index: usize,
    options: Arc<Options>,
    tally: Arc<Tally>,
) {
    let mut rpc = match manager.connect(address).client().await {
        Ok(client) => client.framed(codec()),
        Err(error) => {
            eprintln!("client {index}: {error}");
            tally.failed.fetch_add(options.requests, Ordering::Relaxed);
            return;
        }
    };
    for number in 0..options.requests {
        let (id, frame) = request(index, number, options.size);
        let outcome = match rpc.send(frame.clone()).await {
            Ok(()) => rpc.next().await.transpose(),
            Err(error) => Err(error),
        };
        match outcome {
            Ok(Some(reply)) if verified(&frame, &reply) => {
                tally.verified.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(_)) => {
                eprintln!("client {index}: request {id:#x}: a wrong reply");
                tally.failed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(None) | Err(_) => {
                eprintln!("client {index}: request {id:#x}: the connection ended: {outcome:?}");
                tally
                    .failed
                    .fetch_add(options.requests - number, Ordering::Relaxed);
                return;
            }
        }
    }
}

async fn serve() -> Result<Server, Error> {
    Server::builder()
        .bind("127.0.0.1:0")
        .start(Framing::new(Reverse).max_frame_length(MAX_FRAME))
        .await
}

async fn run(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    let own_server = match &options.connect {
        Some(_) => None,
        None => {
            let server = serve().await?;
            let address = server.local_addr().expect("one listener");
            say(format_args!("listening on {address}"));
            Some(server)
        }
    };
    if options.serve_only {
        let server = own_server.expect("--serve-only serves");
        let report = server.shutdown_on_signal()?.await;
        say(format_args!(
            "shutdown complete graceful={} forced={} other={}",
            report.graceful, report.forced, report.other
        ));
        return Ok(());
    }
    let address = match (&options.connect, &own_server) {
        (Some(address), _) => address.parse().map_err(|_| Error::InvalidSetting {
            setting: "--connect",
            reason: format!("not an address: {address}"),
        })?,
        (None, Some(server)) => server.local_addr().expect("one listener"),
        (None, None) => unreachable!("a server was started"),
    };
    // The clients' manager: no listener, only outgoing connections, each counted and shut down
    // in order.
    let manager = Server::builder()
        .max_connections(options.clients)
        .start(Quiet)
        .await?;
    let options = Arc::new(options);
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let tasks: Vec<_> = (0..options.clients)
        .map(|index| {
            tokio::spawn(client(
                manager.clone(),
                address,
                index,
                options.clone(),
                tally.clone(),
            ))
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let seconds = started.elapsed().as_secs_f64().max(f64::EPSILON);
    manager.shutdown().await;
    if let Some(server) = own_server {
        server.shutdown().await;
    }
    let verified = tally.verified.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let requests = options.requests * options.clients as u64;
    say(format_args!(
        "requests={requests} verified={verified} failed={failed} seconds={seconds:.3} \
         per_second={:.0}",
        verified as f64 / seconds
    ));
    if failed == 0 && verified == requests {
        Ok(())
    } else {
        Err(format!(
            "{} of {requests} requests were not answered right",
            requests - verified
        )
        .into())
    }
}

/// The clients' manager needs no callbacks: the client tasks drive their connections.
struct Quiet;

impl Callbacks for Quiet {}

fn main() -> ExitCode {
    common::main("rpc_client", parse_options, |options| options.threads, run)
}
