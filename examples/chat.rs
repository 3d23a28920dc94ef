//! A line-based chat server on switchboard: one room, a [`ConnectionGroup`] of the clients that
//! have a name.
//!
//! ```text
//! cargo run --release --example chat -- [--listen ADDR] [--threads N] [--max-clients N]
//!     [--max-unnamed N] [--nick-timeout SECS]
//! ```
//! `--listen` defaults to 127.0.0.1:7070 (port 0 picks one), `--threads` to one per core,
//! `--max-clients` to 1000, `--max-unnamed` to 256 and `--nick-timeout` to 10 seconds. The first
//! line on stdout is `listening on <address>`; the last, after SIGINT or SIGTERM (Ctrl-C on
//! Windows) and the ordered shutdown, is `shutdown complete graceful=N forced=N other=N`, and the
//! process exits 0.
//!
//! The protocol, one line at a time (ending in `\n`; a `\r\n` is taken too), as `nc` speaks it:
//! - a client first sends `NICK name` (a name is 1 to 32 characters, without spaces);
//!   anything else before that is answered `* send NICK name first`;
//! - names are unique, compared without case: a name in use is answered `* name taken`, and the
//!   client stays unnamed and may send another;
//! - the other named clients then see `* name joined`, and every later line the client sends
//!   reaches each of them as `name: text`, in the order it was sent;
//! - control characters (C0 and C1, DEL, and so ESC and a lone `\r`) are removed from every line,
//!   names included, before it is read, so that nobody can move another's cursor, clear their
//!   screen or start a forged line on their terminal; a tab is kept;
//! - a client that has not named itself within `--nick-timeout` seconds of connecting gets
//!   `* no NICK within N s` and is closed;
//! - a client that connects, or names itself, while `--max-clients` clients have names gets
//!   `server full` and is closed;
//! - a line longer than 4 KiB gets `* line too long` and the client is closed;
//! - when the client leaves (closes, resets, or is closed), the others see `* name left`;
//! - at shutdown every client gets `server shutting down`, then the server's FIN.
//!
//! A client that reads too slowly to keep up (its write queue, 64 KiB, is full when a message
//! comes) is closed gracefully: it gets every message up to that point and then FIN, never a
//! conversation with a gap in it ([`WhenFull::Close`]).
//!
//! # Connections that never name themselves
//!
//! Only named clients count against `--max-clients`. Connections without a name wait in a line
//! of their own, at most `--max-unnamed` long, oldest first: each one that arrives while the line
//! is full pushes out the oldest, which is reset at once (no goodbye: under a flood, freeing its
//! place matters more). A silent flood, however large and however fast it reconnects, can only
//! churn through that line: it never takes a named client's place, and a client that sends its
//! `NICK` straight away (one round trip after connecting, as any chat client does) is named long
//! before `--max-unnamed` newer connections can push it out. The `NICK` deadline bounds how long
//! anyone stays in the line when there is no flood to push them.
//!
//! The server's own connection limit (with [`AtLimit::StopAccepting`]: clients past it wait in
//! the listen backlog, unrefused) is `--max-clients` plus twice `--max-unnamed`, room for the
//! line and for the connections it has just closed, so that descriptors stay bounded whatever
//! comes. From many addresses the line is the only defence; a server on the internet would also
//! cap connections per address
//! ([`max_connections_per_ip`](switchboard::ServerBuilder::max_connections_per_ip)), which the
//! tests, all on 127.0.0.1, cannot use.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use switchboard::{
    async_trait, AtLimit, Bytes, BytesMut, Callbacks, ClosureReason, Connection, ConnectionGroup,
    Error, Server, ShutdownReport, Slot, WeakConnection, WhenFull,
};

#[path = "common/mod.rs"]
mod common;

use common::line::{close_the_late, Place, WaitingLine};
use common::say;

/// The longest line taken, without its end: a client that sends more without a `\n` is closed,
/// so that its unfinished line cannot grow the server's memory.
const MAX_LINE: usize = 4096;
/// The longest name.
const MAX_NAME: usize = 32;

const USAGE: &str = "usage: chat [--listen ADDR] [--threads N] [--max-clients N] \
                     [--max-unnamed N] [--nick-timeout SECS]";

struct Options {
    listen: String,
    threads: Option<usize>,
    limits: Limits,
}

/// How many clients, named and not, and for how long without a name.
#[derive(Clone, Copy)]
struct Limits {
    /// Named clients, in the room.
    max_clients: usize,
    /// Connections without a name yet; one more pushes the oldest out.
    max_unnamed: usize,
    /// How long a connection may take to name itself.
    nick_timeout: Duration,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        listen: "127.0.0.1:7070".into(),
        threads: None,
        limits: Limits {
            max_clients: 1000,
            max_unnamed: 256,
            nick_timeout: Duration::from_secs(10),
        },
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |text: String| {
            text.parse::<usize>()
                .map_err(|_| format!("{flag}: not a number: {text}"))
        };
        let above_zero = |number: usize| match number {
            0 => Err(format!("{flag} must be above zero")),
            number => Ok(number),
        };
        match flag.as_str() {
            "--listen" => options.listen = value()?,
            "--threads" => options.threads = Some(number(value()?)?),
            "--max-clients" => options.limits.max_clients = number(value()?)?,
            "--max-unnamed" => options.limits.max_unnamed = above_zero(number(value()?)?)?,
            "--nick-timeout" => {
                let seconds = above_zero(number(value()?)?)?;
                options.limits.nick_timeout = Duration::from_secs(seconds as u64);
            }
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

/// A line's text without its control characters (C0, DEL and C1: `char::is_control`), but for
/// the tab: what is left cannot move a terminal's cursor or start an escape sequence. Bytes that
/// are not UTF-8 become U+FFFD.
fn printable(line: &[u8]) -> String {
    String::from_utf8_lossy(line)
        .chars()
        .filter(|&c| c == '\t' || !c.is_control())
        .collect()
}

/// One client's state, in a user data slot.
struct Client {
    /// Its place in the line of unnamed connections ([`Lobby::unnamed`]).
    place: Place,
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
    /// It was pushed out of the line or ran out of time while its lines were read, and is being
    /// closed already: nothing more to do.
    Gone,
}

/// The names in the room and the line of connections without one, under one lock, so that a
/// name is checked and taken, and its client leaves the line, in one step.
struct Lobby {
    /// The names in use, lower-cased: names are compared without case.
    names: HashSet<String>,
    /// The connections without a name, oldest first.
    unnamed: WaitingLine,
}

/// What became of a `NICK`.
enum Naming {
    Named,
    Taken,
    Full,
    /// The connection is no longer in the line: it is being closed.
    Gone,
}

impl Lobby {
    /// Puts a connection that has just arrived at the end of the line; returns its place, and the
    /// oldest connection if the line was full and it has to make room. `None`: the room is full.
    fn arrive(
        &mut self,
        connection: &Connection,
        max_clients: usize,
    ) -> Option<(Place, Option<WeakConnection>)> {
        (self.names.len() < max_clients).then(|| self.unnamed.join(connection))
    }

    /// Gives the connection at `place` the name `name`, if it is free and the room has space.
    fn name(&mut self, place: Place, name: &str, max_clients: usize) -> Naming {
        if !self.unnamed.contains(place) {
            return Naming::Gone;
        }
        let key = name.to_lowercase();
        if self.names.len() >= max_clients {
            Naming::Full
        } else if self.names.contains(&key) {
            Naming::Taken
        } else {
            self.unnamed.leave(place);
            self.names.insert(key);
            Naming::Named
        }
    }
}

struct Chat {
    room: ConnectionGroup,
    client: Slot<Client>,
    lobby: Arc<Mutex<Lobby>>,
    limits: Limits,
    shutting_down: AtomicBool,
}

impl Chat {
    fn lobby(&self) -> MutexGuard<'_, Lobby> {
        self.lobby
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What each whole line in `client`'s buffer says, in order (stopping at a refusal).
    fn take_lines(&self, client: &mut Client) -> Vec<Said> {
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
            let text = printable(&line);
            match &client.name {
                Some(name) => said.push(Said::Message(Bytes::from(format!("{name}: {text}\n")))),
                None => match text.strip_prefix("NICK ").map(str::trim) {
                    Some(name) if valid_name(name) => {
                        let naming = self
                            .lobby()
                            .name(client.place, name, self.limits.max_clients);
                        match naming {
                            Naming::Named => {
                                client.name = Some(name.to_owned());
                                said.push(Said::Joined(name.to_owned()));
                            }
                            Naming::Taken => said.push(Said::Reply("* name taken\n")),
                            Naming::Full => {
                                said.push(Said::Refuse("server full\n"));
                                return said;
                            }
                            Naming::Gone => {
                                said.push(Said::Gone);
                                return said;
                            }
                        }
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
        let arrived = self.lobby().arrive(connection, self.limits.max_clients);
        let Some((place, pushed_out)) = arrived else {
            let _ = connection.goodbye("server full\n");
            return;
        };
        connection.user_data().set(
            self.client,
            Client {
                place,
                pending: BytesMut::new(),
                name: None,
            },
        );
        if let Some(oldest) = pushed_out.and_then(|oldest| oldest.upgrade()) {
            oldest.abort();
        }
        connection.read();
    }

    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        let said = connection.user_data().with(self.client, |client| {
            client.as_mut().map(|client| {
                client.pending.unsplit(data);
                self.take_lines(client)
            })
        });
        // Without a state it was refused at arrival, and is closing.
        let Some(said) = said else { return };
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
                Said::Gone => return,
            }
        }
        connection.read();
    }

    async fn on_connection_closure(&self, connection: &Connection, _reason: ClosureReason) {
        let Some(client) = connection.user_data().take(self.client) else {
            return;
        };
        let mut lobby = self.lobby();
        lobby.unnamed.leave(client.place);
        if let Some(name) = client.name {
            // It has left the room by now (members leave before their closure), so the others
            // hear it. Not during a shutdown: everyone is leaving, and told so. Said before the
            // name is free (under the same lock as taking it), so that a client taking the name
            // next is announced after this.
            if !self.shutting_down.load(Ordering::Acquire) {
                self.room.broadcast(format!("* {name} left\n"));
            }
            lobby.names.remove(&name.to_lowercase());
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
    let limits = options.limits;
    let mut builder = Server::builder();
    let client = builder.request_user_data_slot();
    let lobby = Arc::new(Mutex::new(Lobby {
        names: HashSet::new(),
        unnamed: WaitingLine::new(limits.max_unnamed, limits.nick_timeout),
    }));
    let chat = Chat {
        room: ConnectionGroup::with_when_full(WhenFull::Close),
        client,
        lobby: lobby.clone(),
        limits,
        shutting_down: AtomicBool::new(false),
    };
    // Room for the named clients, the line of unnamed ones, and as many again that the line has
    // just closed (see the module docs); past it, clients wait in the backlog.
    let max_connections = limits
        .max_clients
        .saturating_add(limits.max_unnamed.saturating_mul(2));
    let server = builder
        .bind(options.listen.as_str())
        .max_connections(max_connections)
        .at_limit(AtLimit::StopAccepting)
        .start(chat)
        .await?;
    let told = Bytes::from(format!(
        "* no NICK within {} s\n",
        limits.nick_timeout.as_secs()
    ));
    let deadlines = tokio::spawn(close_the_late(
        lobby,
        |lobby| &mut lobby.unnamed,
        move |late| {
            let _ = late.goodbye(told.clone());
        },
    ));
    // Before the listening line, so that no signal meets a process without its handler.
    let stopped = server.shutdown_on_signal()?;
    for address in server.local_addrs() {
        say(format_args!("listening on {address}"));
    }
    stopped.await;
    deadlines.abort();
    Ok(())
}

fn main() -> ExitCode {
    common::main("chat", parse_options, |options| options.threads, run)
}
