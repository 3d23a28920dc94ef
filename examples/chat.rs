//! A line-based chat server on switchboard: one room, a [`ConnectionGroup`] of the clients that
//! have a name.
//!
//! ```text
//! cargo run --release --example chat -- [--listen ADDR] [--threads N] [--max-clients N]
//!     [--max-unnamed N] [--nick-timeout SECS] [--read-rate BYTES]
//! ```
//! `--listen` defaults to 127.0.0.1:7070 (port 0 picks one), `--threads` to one per core,
//! `--max-clients` to 1000, `--max-unnamed` to 256, `--nick-timeout` to 10 seconds and `--read-rate` (bytes a second read
//! from each client, after a burst of four times as many) to 16384. The first
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
//! # Senders and slow readers
//!
//! A sender is paced by the room. Each client is read at most at `--read-rate` bytes a second
//! (after a burst: [`ReadRate`]), so a client that pastes a flood gets it read at that pace, and
//! TCP holds it back meanwhile. And a line that leaves any member's write queue above 32 KiB
//! (its high watermark: [`BroadcastReport::high`](switchboard::BroadcastReport::high)) stops
//! the reading of the sender's next lines until the room has caught up
//! ([`ConnectionGroup::writable`]): one sender's burst slows that sender, never the others'
//! reception. A member still above the mark after [`PATIENCE`] (it does not read) is closed
//! gracefully then, as is one whose queue (64 KiB) is full when a message comes: it gets every
//! message up to that point and then FIN, never a conversation with a gap in it
//! ([`FullQueuePolicy::Close`]).
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
//! The server's own connection limit (with [`LimitPolicy::StopAccepting`]: clients past it wait in
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
    async_trait, Bytes, BytesMut, Callbacks, ClosureReason, Connection, ConnectionGroup, Error,
    FullQueuePolicy, LimitPolicy, ReadRate, Server, ShutdownReport, Slot, WeakConnection,
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
/// A member's write queue high watermark: a line that leaves a member at or above it holds the
/// sender's next lines back until the room has caught up. Half the queue's limit (64 KiB), so
/// that the lines of several senders in flight at once still fit.
const HIGH_WATERMARK: usize = 32 * 1024;
/// How long a sender waits for the room to catch up before the members still behind are closed.
const PATIENCE: Duration = Duration::from_secs(2);

const USAGE: &str = "usage: chat [--listen ADDR] [--threads N] [--max-clients N] \
                     [--max-unnamed N] [--nick-timeout SECS] [--read-rate BYTES]";

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
    /// Bytes a second read from each client.
    read_rate: u64,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        listen: "127.0.0.1:7070".into(),
        threads: None,
        limits: Limits {
            max_clients: 1000,
            max_unnamed: 256,
            nick_timeout: Duration::from_secs(10),
            read_rate: 16 * 1024,
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
            "--read-rate" => options.limits.read_rate = above_zero(number(value()?)?)? as u64,
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

/// The server's callbacks; its state is shared with the tasks that resume a paced sender.
struct Chat(Arc<Room>);

struct Room {
    room: ConnectionGroup,
    client: Slot<Client>,
    lobby: Arc<Mutex<Lobby>>,
    limits: Limits,
    shutting_down: AtomicBool,
}

impl std::ops::Deref for Chat {
    type Target = Room;

    fn deref(&self) -> &Room {
        &self.0
    }
}

impl Room {
    fn lobby(&self) -> MutexGuard<'_, Lobby> {
        self.lobby
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What the next whole line in `client`'s buffer says; `None` while there is none.
    fn take_line(&self, client: &mut Client) -> Option<Said> {
        let line = match next_line(&mut client.pending) {
            Ok(line) => line?,
            Err(LineTooLong) => return Some(Said::Refuse("* line too long\n")),
        };
        let text = printable(&line);
        let Some(name) = &client.name else {
            return Some(match text.strip_prefix("NICK ").map(str::trim) {
                Some(name) if valid_name(name) => {
                    let naming = self
                        .lobby()
                        .name(client.place, name, self.limits.max_clients);
                    match naming {
                        Naming::Named => {
                            client.name = Some(name.to_owned());
                            Said::Joined(name.to_owned())
                        }
                        Naming::Taken => Said::Reply("* name taken\n"),
                        Naming::Full => Said::Refuse("server full\n"),
                        Naming::Gone => Said::Gone,
                    }
                }
                _ => Said::Reply("* send NICK name first\n"),
            });
        };
        Some(Said::Message(Bytes::from(format!("{name}: {text}\n"))))
    }

    /// Does what the client's whole lines say, one at a time, then asks for its next read; or,
    /// when a line left a member behind, hands the rest to a task that waits for the room to
    /// catch up first (so that the sender's lines wait, and TCP holds it back).
    fn serve(self: &Arc<Self>, connection: &Connection) {
        loop {
            let said = connection.user_data().with(self.client, |client| {
                client.as_mut().map(|c| self.take_line(c))
            });
            // Without a state it was refused at arrival, or has ended: nothing to do.
            let Some(said) = said else { return };
            let report = match said {
                None => break,
                Some(Said::Joined(name)) => {
                    // It hears every message from now on; the others hear of it before any
                    // message of its own (they come later, from this same task).
                    self.room.insert(connection);
                    let joined = format!("* {name} joined\n");
                    self.room.broadcast_except(joined, connection.id())
                }
                Some(Said::Message(message)) => {
                    self.room.broadcast_except(message, connection.id())
                }
                Some(Said::Reply(reply)) => {
                    let _ = connection.write(reply);
                    continue;
                }
                Some(Said::Refuse(reply)) => {
                    let _ = connection.write(reply);
                    connection.close();
                    return;
                }
                Some(Said::Gone) => return,
            };
            if report.high() > 0 {
                let room = self.clone();
                let connection = connection.clone();
                tokio::spawn(async move {
                    room.catch_up().await;
                    room.serve(&connection);
                });
                return;
            }
        }
        connection.read();
    }

    /// Waits for every member to be below the high watermark, for [`PATIENCE`] at most; closes
    /// the members still behind then.
    async fn catch_up(&self) {
        if tokio::time::timeout(PATIENCE, self.room.writable())
            .await
            .is_ok()
        {
            return;
        }
        for member in self.room.members() {
            if let Some(member) = member.upgrade() {
                if member.queued_write_bytes() >= HIGH_WATERMARK {
                    member.close();
                }
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
        connection.user_data().with(self.client, |client| {
            if let Some(client) = client {
                client.pending.unsplit(data);
            }
        });
        self.0.serve(connection);
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
    let chat = Chat(Arc::new(Room {
        room: ConnectionGroup::with_when_full(FullQueuePolicy::Close),
        client,
        lobby: lobby.clone(),
        limits,
        shutting_down: AtomicBool::new(false),
    }));
    // Room for the named clients, the line of unnamed ones, and as many again that the line has
    // just closed (see the module docs); past it, clients wait in the backlog.
    let max_connections = limits
        .max_clients
        .saturating_add(limits.max_unnamed.saturating_mul(2));
    let server = builder
        .bind(options.listen.as_str())
        .max_connections(max_connections)
        .at_limit(LimitPolicy::StopAccepting)
        .write_watermarks(HIGH_WATERMARK, HIGH_WATERMARK / 2)
        .read_rate_limit(Some(ReadRate::new(limits.read_rate, 4 * limits.read_rate)))
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
