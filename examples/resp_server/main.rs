//! A Redis-protocol server on switchboard's frame layer: a subset of redis-server's commands
//! (PING, ECHO, SET, GET, DEL, INCR, DECR, INCRBY, DECRBY, EXISTS, MGET, DBSIZE, QUIT, and an
//! INFO of its own; every other one gets redis-server's `-ERR unknown command ...`), over one
//! in-memory map, for any Redis client (`redis-cli`, `redis-benchmark`, client libraries).
//! Requests may be arrays of bulk strings or inline commands (with redis-server's quoting:
//! `SET k "a b"`); pipelined requests are answered in order, with one write per read.
//!
//! ```text
//! cargo run --release --example resp_server -- [--listen ADDR] [--threads N]
//!     [--max-bulk BYTES] [--max-reply BYTES] [--idle-timeout SECS] [--max-clients N]
//! redis-cli -p 6380 SET greeting hello
//! redis-benchmark -p 6380 -t ping,set,get -n 100000 -c 50 -P 16
//! ```
//! - `--listen` defaults to 127.0.0.1:6380 (port 0 picks one).
//! - `--threads 1` runs on a current-thread runtime, `--threads N` on N worker threads
//!   (default: one per core).
//! - `--max-bulk` (default 16 MiB): the longest bulk string a request may carry (redis-server's
//!   `proto-max-bulk-len`, 512 MB there); a longer one gets `-ERR Protocol error: invalid bulk
//!   length` and the connection is closed. A request is at most this plus 64 KiB in all.
//! - `--max-reply` (default 32 MiB, at least one bulk string of `--max-bulk`): the longest
//!   reply. An MGET whose reply would be longer (its size is known from the values' lengths)
//!   gets `-ERR reply of N bytes is above the maximum of M (--max-reply)` instead, and no memory
//!   is taken for it.
//! - `--idle-timeout` (default 300; 0 turns it off): a connection on which no byte moves either
//!   way for this many seconds is reset (redis-server's `timeout`, off there by default).
//! - `--max-clients` (default 10000, redis-server's `maxclients`): a client over it gets
//!   `-ERR max number of clients reached` and is closed, as redis-server does.
//!
//! The first line on stdout is `listening on ADDR`. SIGINT or SIGTERM shuts down in order:
//! accepting stops, each connection is closed once the replies queued for it are sent, and the
//! process prints `shutdown complete graceful=N forced=N other=N` and exits 0.
//!
//! A request that breaks the protocol gets redis-server's error reply (`-ERR Protocol error:
//! ...`) and the connection is closed, as redis-server does. INFO gives only the decoders'
//! counters: the bytes of the requests decoded, and the bytes looked at to decode them.
//!
//! What one client can make the server hold is bounded: a request by `--max-bulk` (and the
//! frame layer's maximum frame length), a reply by `--max-reply`, and a client that does not
//! read its replies by the write queue: the frame layer delivers no more requests while the
//! queue is high (64 KiB). A reply is fed whole within one request's callback, while the queue
//! cannot drain, so the queue's limit is `--max-reply` and 64 KiB: what a client that never
//! reads holds at most. An array reply is fed element by element, so a frame layer that refuses
//! a feed (its write queue at the limit) stops it mid-way: a cut reply cannot be completed, so
//! the connection is then closed, as redis-server closes a client over its output buffer limit.
//! A client that holds a partial request or an unread reply gives the memory back within
//! `--idle-timeout` of its last byte; `--max-clients` bounds how many do at once.

use std::io;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use switchboard::codec::{
    DecodeError, FrameError, FrameHandler, FramedConnection, Framing, SendError,
};
use switchboard::{async_trait, Callbacks, Connection, Error, LimitPolicy, Server};

#[path = "../common/mod.rs"]
mod common;

use common::say;

mod resp;
mod store;

use resp::{bulk_reply_len, ArrayHeader, Command, DecoderStats, Reply, Resp};
use store::{After, Store};

/// Default longest bulk string, far below redis-server's `proto-max-bulk-len` (512 MB): a
/// client may hold about twice this in a partial request (the buffer doubles as it fills), and
/// at 16 MiB a score of such clients fit in a 1 GiB address space with room to spare.
const DEFAULT_MAX_BULK: usize = 16 * 1024 * 1024;
/// Default longest reply: two bulk strings of the longest kind. A client that does not read
/// holds one such reply (the frame layer delivers nothing more to it while its write queue is
/// high), and encoding it may take about twice as much for a moment (the staging buffer grows
/// by doubling).
const DEFAULT_MAX_REPLY: usize = 32 * 1024 * 1024;
/// What a request holds beyond its longest bulk string, for the frame layer's maximum: headers
/// and the other arguments (redis-server's longest inline request or header line).
const REQUEST_OVERHEAD: usize = 64 * 1024;
/// Default idle timeout, in seconds: five minutes. redis-server's `timeout` is off by default;
/// on here, so that a client holding a partial request or an unread reply gives its memory
/// back by itself.
const DEFAULT_IDLE_TIMEOUT: u64 = 300;
/// Default cap on clients: redis-server's `maxclients`.
const DEFAULT_MAX_CLIENTS: usize = 10_000;
/// What a client over the cap gets before FIN: redis-server's text.
const MAX_CLIENTS_REPLY: &str = "-ERR max number of clients reached\r\n";

struct Redis {
    store: Arc<Store>,
    stats: Arc<DecoderStats>,
    max_bulk: usize,
}

impl Callbacks for Redis {}

#[async_trait]
impl FrameHandler for Redis {
    type Codec = Resp;

    fn new_codec(&self, _connection: &Connection) -> Resp {
        Resp::new(self.max_bulk, self.stats.clone())
    }

    async fn on_frame(&self, connection: &FramedConnection<'_, Resp>, command: Command) {
        if command.len() == 0 {
            return;
        }
        let (reply, after) = self.store.execute(&command);
        // A refused feed leaves the reply cut (or not sent at all): whatever followed on the
        // connection would be read as the rest of it, so the connection cannot go on. Closing
        // sends what was queued before, then FIN; the close timeout bounds a client that does
        // not read.
        if feed(connection, reply).is_err() || after == After::Close {
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

/// Feeds `reply` to the frame layer: an array as its header and then each element, so that a
/// frame layer that refuses a feed (its write queue full) does so before the rest is encoded.
fn feed(connection: &FramedConnection<'_, Resp>, reply: Reply) -> Result<(), SendError<io::Error>> {
    match reply {
        Reply::Array(items) => {
            connection.feed(ArrayHeader(items.len()))?;
            items
                .into_iter()
                .try_for_each(|item| connection.feed(Reply::Bulk(item)))
        }
        // `feed`: the replies to one read's requests go out together, after the last of them.
        reply => connection.feed(reply),
    }
}

struct Options {
    listen: String,
    threads: Option<usize>,
    max_bulk: usize,
    max_reply: usize,
    /// `None`: off.
    idle_timeout: Option<Duration>,
    max_clients: usize,
}

const USAGE: &str = "usage: resp_server [--listen ADDR] [--threads N] [--max-bulk BYTES] \
                     [--max-reply BYTES] [--idle-timeout SECS] [--max-clients N]";

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        listen: "127.0.0.1:6380".into(),
        threads: None,
        max_bulk: DEFAULT_MAX_BULK,
        max_reply: DEFAULT_MAX_REPLY,
        idle_timeout: Some(Duration::from_secs(DEFAULT_IDLE_TIMEOUT)),
        max_clients: DEFAULT_MAX_CLIENTS,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let mut number = |least: u64| -> Result<u64, String> {
            let text = value()?;
            text.parse()
                .ok()
                .filter(|&n: &u64| n >= least)
                .ok_or_else(|| format!("{flag} takes a number of at least {least}, not {text}"))
        };
        let size = |n: u64| usize::try_from(n).map_err(|_| format!("{flag}: {n} is too large"));
        match flag.as_str() {
            "--listen" => options.listen = value()?,
            "--threads" => options.threads = Some(size(number(1)?)?),
            "--max-bulk" => options.max_bulk = size(number(1)?)?,
            "--max-reply" => options.max_reply = size(number(1)?)?,
            "--idle-timeout" => {
                options.idle_timeout = Some(number(0)?)
                    .filter(|&seconds| seconds > 0)
                    .map(Duration::from_secs);
            }
            "--max-clients" => options.max_clients = size(number(1)?)?,
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    // A GET of the longest value must fit in a reply.
    let longest = bulk_reply_len(Some(options.max_bulk));
    if options.max_reply < longest {
        return Err(format!(
            "--max-reply must be at least {longest}, the reply of one bulk string of --max-bulk \
             {} bytes",
            options.max_bulk
        ));
    }
    Ok(options)
}

async fn run(options: Options) -> Result<(), Error> {
    let stats = Arc::new(DecoderStats::default());
    let redis = Redis {
        store: Arc::new(Store::new(options.max_reply, stats.clone())),
        stats,
        max_bulk: options.max_bulk,
    };
    let server = Server::builder()
        .bind(options.listen.as_str())
        .idle_timeout(options.idle_timeout)
        // A whole reply is fed in the request's callback, above what was queued before it (the
        // frame layer delivers a request only below the 64 KiB high watermark).
        .write_queue_limit(options.max_reply.saturating_add(64 * 1024))
        .max_connections(options.max_clients)
        .at_limit(LimitPolicy::AcceptAndClose)
        .refusal_message(MAX_CLIENTS_REPLY)
        .start(
            Framing::new(redis).max_frame_length(options.max_bulk.saturating_add(REQUEST_OVERHEAD)),
        )
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
