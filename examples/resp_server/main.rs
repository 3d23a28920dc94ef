//! A Redis-protocol server on switchboard's frame layer: a subset of redis-server's commands
//! (PING, ECHO, SET, GET, DEL, INCR, DECR, INCRBY, DECRBY, EXISTS, MGET, DBSIZE, QUIT, and an
//! INFO of its own; every other one gets redis-server's `-ERR unknown command ...`), over one
//! in-memory map, for any Redis client (`redis-cli`, `redis-benchmark`, client libraries).
//! Requests may be arrays of bulk strings or inline commands (with redis-server's quoting:
//! `SET k "a b"`); pipelined requests are answered in order, with one write per read.
//!
//! ```text
//! cargo run --release --example resp_server -- [--listen ADDR] [--threads N]
//! redis-cli -p 6380 SET greeting hello
//! redis-benchmark -p 6380 -t ping,set,get -n 100000 -c 50 -P 16
//! ```
//! `--listen` defaults to 127.0.0.1:6380 (port 0 picks one); `--threads 1` runs on a
//! current-thread runtime, `--threads N` on N worker threads (default: one per core). The first
//! line on stdout is `listening on ADDR`. SIGINT or SIGTERM shuts down in order: accepting
//! stops, each connection is closed once the replies queued for it are sent, and the process
//! prints `shutdown complete graceful=N forced=N other=N` and exits 0.
//!
//! A request that breaks the protocol gets redis-server's error reply (`-ERR Protocol error:
//! ...`) and the connection is closed, as redis-server does. INFO gives only the decoders'
//! counters: the bytes of the requests decoded, and the bytes looked at to decode them.

use std::process::ExitCode;
use std::sync::Arc;

use switchboard::codec::{DecodeError, FrameError, FrameHandler, FramedConnection, Framing};
use switchboard::{async_trait, Callbacks, Connection, Error, Server};

#[path = "../common/mod.rs"]
mod common;

use common::say;

mod resp;
mod store;

use resp::{Command, DecoderStats, Reply, Resp};
use store::{After, Store};

/// Longest bulk string (redis-server's `proto-max-bulk-len` is 512 MB; a smaller bound suits an
/// example), and so the longest request the frame layer waits for.
const MAX_BULK: usize = 64 * 1024 * 1024;

struct Redis {
    store: Arc<Store>,
    stats: Arc<DecoderStats>,
}

impl Callbacks for Redis {}

#[async_trait]
impl FrameHandler for Redis {
    type Codec = Resp;

    fn new_codec(&self, _connection: &Connection) -> Resp {
        Resp::new(MAX_BULK, self.stats.clone())
    }

    async fn on_frame(&self, connection: &FramedConnection<'_, Resp>, command: Command) {
        if command.len() == 0 {
            return;
        }
        let (reply, after) = self.store.execute(&command);
        // `feed`: the replies to one read's requests go out together, after the last of them.
        if connection.feed(reply).is_err() {
            return;
        }
        if after == After::Close {
            connection.close();
        }
    }

    async fn on_decode_error(
        &self,
        connection: &FramedConnection<'_, Resp>,
        error: &FrameError<DecodeError<Self>>,
    ) {
        // redis-server's last word on a broken request; the frame layer then closes.
        if let FrameError::Decode(error) = error {
            let _ = connection.feed(Reply::Error(format!("ERR {error}")));
        }
    }
}

struct Options {
    listen: String,
    threads: Option<usize>,
}

const USAGE: &str = "usage: resp_server [--listen ADDR] [--threads N]";

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        listen: "127.0.0.1:6380".into(),
        threads: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => options.listen = value()?,
            "--threads" => {
                let threads = value()?;
                options.threads = Some(
                    threads
                        .parse()
                        .ok()
                        .filter(|&n: &usize| n > 0)
                        .ok_or_else(|| {
                            format!("--threads takes a number above 0, not {threads}")
                        })?,
                );
            }
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    Ok(options)
}

async fn run(options: Options) -> Result<(), Error> {
    let stats = Arc::new(DecoderStats::default());
    let redis = Redis {
        store: Arc::new(Store::new(stats.clone())),
        stats,
    };
    let server = Server::builder()
        .bind(options.listen.as_str())
        .start_framed(Framing::new(redis).max_frame_length(MAX_BULK + 64 * 1024))
        .await?;
    // Before the address is printed, so that no signal meets the process without its handler.
    let stopped = server.shutdown_on_signal()?;
    let address = server.local_addr().expect("one listener");
    say(format_args!("listening on {address}"));
    let report = stopped.await;
    say(format_args!(
        "shutdown complete graceful={} forced={} other={}",
        report.graceful, report.forced, report.other
    ));
    Ok(())
}

fn main() -> ExitCode {
    common::main("resp_server", parse_options, |options| options.threads, run)
}
