//! A line-based chat server on switchboard: one room, a [`ConnectionGroup`] of the clients that
//! have a name.
//!
//! ```text
//! cargo run --release --example chat -- [--listen ADDR] [--threads N] [--max-clients N]
//! ```
//! `--listen` defaults to 127.0.0.1:7070 (port 0 picks one), `--threads` to one per core,
//! `--max-clients` to 1000. The first line on stdout is `listening on <address>`; the last,
//! after SIGINT or SIGTERM (Ctrl-C on Windows) and the ordered shutdown, is
//! `shutdown complete graceful=N forced=N other=N`, and the process exits 0.
//!
//! The protocol, one line at a time (ending in `\n`; a `\r\n` is taken too), as `nc` speaks it:
//! - a client first sends `NICK name` (a name is 1 to 32 characters, without spaces);
//!   anything else before that is answered `* send NICK name first`;
//! - the other named clients then see `* name joined`, and every later line the client sends
//!   reaches each of them as `name: text`, in the order it was sent;
//! - when the client leaves (closes, resets, or is closed), they see `* name left`;
//! - a client beyond `--max-clients` gets `server full` and is closed;
//! - a line longer than 4 KiB gets `* line too long` and the client is closed;
//! - at shutdown every client gets `server shutting down`, then the server's FIN.
//!
//! A client that reads too slowly to keep up (its write queue, 64 KiB, is full when a message
//! comes) is closed gracefully: it gets every message up to that point and then FIN, never a
//! conversation with a gap in it ([`WhenFull::Close`]).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use switchboard::{
    async_trait, AtLimit, Bytes, BytesMut, Callbacks, ClosureReason, Connection, ConnectionGroup,
    Error, Server, ShutdownReport, Slot, WhenFull,
};

#[path = "common/mod.rs"]
mod common;

use common::say;

/// The longest line taken, without its end: a client that sends more without a `\n` is closed,
/// so that its unfinished line cannot grow the server's memory.
const MAX_LINE: usize = 4096;
/// The longest name.
const MAX_NAME: usize = 32;

const USAGE: &str = "usage: chat [--listen ADDR] [--threads N] [--max-clients N]";

struct Options {
    listen: String,
    threads: Option<usize>,
    max_clients: usize,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        listen: "127.0.0.1:7070".into(),
        threads: None,
        max_clients: 1000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |text: String| {
            text.parse::<usize>()
                .map_err(|_| format!("{flag}: not a number: {text}"))
        };
        match flag.as_str() {
            "--listen" => options.listen = value()?,
            "--threads" => options.threads = Some(number(value()?)?),
            "--max-clients" => options.max_clients = number(value()?)?,
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    Ok(options)
}

/// Cuts the next whole line off the front of `pending`: its text, without the `\n` (or
/// `\r\n`); `Ok(None)` while the line is unfinished. The one place lines are split, so that a
/// codec can take its place.
fn next_line(pending: &mut BytesMut) -> Result<Option<BytesMut>, LineTooLong> {
    match pending.iter().position(|&byte| byte == b'\n') {
        Some(end) if end <= MAX_LINE + 1 => {
            let mut line = pending.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            if line.len() > MAX_LINE {
                return Err(LineTooLong);
            }
            Ok(Some(line))
        }
        Some(_) => Err(LineTooLong),
        None if pending.len() > MAX_LINE + 1 => Err(LineTooLong),
        None => Ok(None),
    }
}

/// A line longer than [`MAX_LINE`].
#[derive(Debug)]
struct LineTooLong;

/// One client's state, in a user data slot.
#[derive(Default)]
struct Client {
    /// What arrived after the last whole line.
    pending: BytesMut,
    /// Set by `NICK`; from then on the client is in the room.
    name: Option<String>,
}

/// What a client's line leads to, done once its state is put back.
enum Said {
    /// Its name is set: in the room, announced to the others.
    Joined(String),
    /// A message to the others.
    Message(Bytes),
    /// A reply to the client alone.
    Reply(&'static str),
    /// A reply, then close.
    Refuse(&'static str),
}

struct Chat {
    room: ConnectionGroup,
    client: Slot<Client>,
    shutting_down: AtomicBool,
}

impl Chat {
    /// What each whole line in `client`'s buffer says, in order (stopping at a refusal).
    fn take_lines(client: &mut Client) -> Vec<Said> {
        let mut said = Vec::new();
        loop {
            let line = match next_line(&mut client.pending) {
                Ok(Some(line)) => line,
                Ok(None) => return said,
                Err(LineTooLong) => {
                    said.push(Said::Refuse("* line too long\n"));
                    return said;
                }
            };
            let text = String::from_utf8_lossy(&line);
            match &client.name {
                Some(name) => said.push(Said::Message(Bytes::from(format!("{name}: {text}\n")))),
                None => match text.strip_prefix("NICK ").map(str::trim) {
                    Some(name) if valid_name(name) => {
                        client.name = Some(name.to_owned());
                        said.push(Said::Joined(name.to_owned()));
                    }
                    _ => said.push(Said::Reply("* send NICK name first\n")),
                },
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.chars().count())
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[async_trait]
impl Callbacks for Chat {
    async fn on_connection_established(&self, connection: &Connection, _peer: &SocketAddr) {
        connection.read();
    }

    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        let said = connection.user_data().with(self.client, |client| {
            let client = client.get_or_insert_with(Client::default);
            client.pending.unsplit(data);
            Chat::take_lines(client)
        });
        for said in said {
            match said {
                Said::Joined(name) => {
                    // It hears every message from now on; the others hear of it before any
                    // message of its own (they come later, from this same task).
                    self.room.insert(connection);
                    let joined = format!("* {name} joined\n");
                    self.room.broadcast_except(joined, connection.id());
                }
                Said::Message(message) => {
                    self.room.broadcast_except(message, connection.id());
                }
                Said::Reply(reply) => {
                    let _ = connection.write(reply);
                }
                Said::Refuse(reply) => {
                    let _ = connection.write(reply);
                    connection.close();
                    return;
                }
            }
        }
        connection.read();
    }

    async fn on_connection_closure(&self, connection: &Connection, _reason: ClosureReason) {
        let client = connection.user_data().take(self.client).unwrap_or_default();
        // It has left the room by now (members leave before their closure), so the others
        // hear it. Not during a shutdown: everyone is leaving, and told so.
        if let Some(name) = client.name {
            if !self.shutting_down.load(Ordering::Acquire) {
                self.room.broadcast(format!("* {name} left\n"));
            }
        }
    }

    async fn on_shutdown_initiated(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    async fn on_shutdown_requested(&self, connection: &Connection) {
        // Delivered even to a client whose queue is full, after what is queued, before FIN.
        let _ = connection.goodbye("server shutting down\n");
    }

    async fn on_shutdown_complete(&self, report: ShutdownReport) {
        say(format_args!(
            "shutdown complete graceful={} forced={} other={}",
            report.graceful, report.forced, report.other
        ));
    }
}

async fn run(options: Options) -> Result<(), Error> {
    let mut builder = Server::builder();
    let client = builder.request_user_data_slot();
    let chat = Chat {
        room: ConnectionGroup::with_when_full(WhenFull::Close),
        client,
        shutting_down: AtomicBool::new(false),
    };
    let server = builder
        .bind(options.listen.as_str())
        // A client past the limit is told, then closed; it never becomes a connection.
        .max_connections(options.max_clients)
        .at_limit(AtLimit::AcceptAndClose)
        .refusal_message("server full\n")
        .start(chat)
        .await?;
    // Before the listening line, so that no signal meets a process without its handler.
    let stopped = server.shutdown_on_signal()?;
    for address in server.local_addrs() {
        say(format_args!("listening on {address}"));
    }
    stopped.await;
    Ok(())
}

fn main() -> ExitCode {
    common::main("chat", parse_options, |options| options.threads, run)
}
