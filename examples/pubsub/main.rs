//! A publish/subscribe server of lines on switchboard: the shape of a first real server, with a
//! frame handler, a topic per group, a connection limit with a refusal, an idle timeout with a
//! last word, metrics, and an ordered shutdown with a goodbye.
//!
//! ```text
//! cargo run --release --example pubsub -- [--listen ADDR] [--max-clients N]
//!     [--idle-timeout SECS] [--metrics ADDR]
//! ```
//! `--listen` defaults to 127.0.0.1:6060 (port 0 picks one), `--max-clients` to 10,000 and
//! `--idle-timeout` to 300 seconds. The first line on stdout is `listening on <address>`; with
//! `--metrics ADDR` the next is `metrics on <address>`, where `GET /metrics` answers with the
//! server's metrics as Prometheus text and `GET /ready` with 200 while it serves, 503 once its
//! shutdown has begun.
//!
//! The protocol, one line at a time (ending in `\n`; a `\r\n` is taken too), as `nc` speaks it:
//! - `SUB topic` subscribes to `topic`, answered `OK SUB topic`;
//! - `UNSUB topic` unsubscribes, answered `OK UNSUB topic`;
//! - `PUB topic message` sends `topic: message` to every subscriber of `topic` (the sender too,
//!   if it is subscribed), and is answered `OK PUB topic N`, where N is how many were sent it;
//! - anything else is answered `ERR ...`, and the connection goes on.
//!
//! Everything posted to a connection reaches it in the order it was posted, so a client that
//! sends `SUB a` and `PUB a x` in one write reads `OK SUB a`, then `a: x`, then `OK PUB a 1`.
//!
//! A topic is a name of 1 to 256 bytes without spaces or control characters; a client holds at
//! most 1,024 subscriptions, and a line is at most 64 KiB (a longer one is answered
//! `ERR line too long` and the connection closed). A subscriber that reads slower than its topics
//! are published fills its write queue (64 KiB) and is closed after what it was sent, never left
//! with a gap. A client that connects while `--max-clients` are connected reads
//! `ERR server full`, then the server's FIN; one that sends nothing for `--idle-timeout` seconds
//! reads `ERR idle`, then FIN. On SIGINT or SIGTERM (Ctrl-C on Windows) every client reads `bye`
//! and FIN; the process prints `shutdown complete graceful=N forced=N other=N` once every
//! connection has ended (a client that keeps its socket open after `bye` counts as graceful; those
//! still open after the drain time, 30 s, are reset and count as forced), and exits 0. A second
//! SIGINT or SIGTERM forces the shutdown at once.

use std::process::ExitCode;
use std::time::Duration;

use switchboard::codec::Framing;
use switchboard::{Error, LimitPolicy, Server};

#[path = "../common/mod.rs"]
mod common;
mod handler;

use common::metrics::{start_metrics, Readiness};
use common::say;
use handler::{PubSub, SERVER_FULL};

const USAGE: &str = "usage: pubsub [--listen ADDR] [--max-clients N] [--idle-timeout SECS] \
                     [--metrics ADDR]";

/// The command line.
struct Options {
    listen: String,
    max_clients: usize,
    idle_timeout: Duration,
    metrics: Option<String>,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        listen: "127.0.0.1:6060".into(),
        max_clients: 10_000,
        idle_timeout: Duration::from_secs(300),
        metrics: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let above_zero = |text: String| match text.parse::<usize>() {
            Ok(0) => Err(format!("{flag} must be above zero")),
            Ok(number) => Ok(number),
            Err(_) => Err(format!("{flag}: not a number: {text}")),
        };
        match flag.as_str() {
            "--listen" => options.listen = value()?,
            "--max-clients" => options.max_clients = above_zero(value()?)?,
            "--idle-timeout" => {
                options.idle_timeout = Duration::from_secs(above_zero(value()?)? as u64);
            }
            "--metrics" => options.metrics = Some(value()?),
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    Ok(options)
}

async fn run(options: Options) -> Result<(), Error> {
    // The recorder goes in before the server starts: the server takes its metric handles then.
    let readiness = Readiness::default();
    let metrics = match &options.metrics {
        Some(address) => Some(start_metrics(address, readiness.clone()).await?),
        None => None,
    };
    let mut builder = Server::builder();
    let subscriptions = builder.request_user_data_slot();
    let server = builder
        .bind(options.listen.as_str())
        .max_connections(options.max_clients)
        .at_limit(LimitPolicy::AcceptAndClose)
        .refusal_message(SERVER_FULL)
        .idle_timeout(Some(options.idle_timeout))
        .metrics_labels([("server", "pubsub")])
        .start(Framing::new(PubSub::new(subscriptions)))
        .await?;
    let _ = readiness.set(server.downgrade());
    // Before the listening line, so that no signal meets a process without its handler.
    let stopped = server.shutdown_on_signal()?;
    for address in server.local_addrs() {
        say(format_args!("listening on {address}"));
    }
    if let Some(address) = metrics.as_ref().and_then(Server::local_addr) {
        say(format_args!("metrics on {address}"));
    }
    let report = stopped.await;
    say(format_args!(
        "shutdown complete graceful={} forced={} other={}",
        report.graceful, report.forced, report.other
    ));
    if let Some(metrics) = metrics {
        metrics.shutdown().await;
    }
    Ok(())
}

fn main() -> ExitCode {
    common::main("pubsub", parse_options, |_| None, run)
}
