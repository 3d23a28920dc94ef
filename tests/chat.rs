//! The `chat` example as a child process, over loopback (Linux): 50 clients join, talk at once
//! and hear each other exactly once and in order per sender, leaves are announced, a client
//! over `--max-clients` is told `server full`, and SIGTERM (or SIGINT) gives every client
//! `server shutting down` then EOF, and the process exits 0. Against abuse: two clients join and
//! talk while 1,000 silent connections (reconnecting as they are closed) are held against a server
//! of 10 clients, a connection without a `NICK` in time is told and closed, a taken name is
//! refused, and control characters are stripped from lines and names. Every wait is bounded.
#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// A chat client: its lines, and its writing side.
struct ChatClient {
    name: String,
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl ChatClient {
    async fn connect(address: SocketAddr, name: &str) -> ChatClient {
        let (reader, writer) = client(address).await.into_split();
        ChatClient {
            name: name.to_owned(),
            lines: BufReader::new(reader).lines(),
            writer,
        }
    }

    /// [`join`](ChatClient::join)s with a 4 KiB receive buffer: the kernel holds little of what
    /// it is sent, as over a slow link, so the server's queue for it is what fills.
    async fn join_with_small_window(address: SocketAddr, name: &str) -> ChatClient {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let (reader, writer) = bounded("a connect", socket.connect(address))
            .await
            .unwrap()
            .into_split();
        let mut client = ChatClient {
            name: name.to_owned(),
            lines: BufReader::new(reader).lines(),
            writer,
        };
        client.send(&format!("NICK {name}")).await;
        client
    }

    /// Connects and sends `NICK name`.
    async fn join(address: SocketAddr, name: &str) -> ChatClient {
        let mut client = ChatClient::connect(address, name).await;
        client.send(&format!("NICK {name}")).await;
        client
    }

    async fn send(&mut self, line: &str) {
        send_line(&mut self.writer, line).await;
    }

    /// The next line, or `None` at the end of the stream.
    async fn line(&mut self) -> Option<String> {
        read_line(&mut self.lines, &self.name).await
    }

    async fn expect(&mut self, expected: &str) {
        assert_eq!(
            self.line().await.as_deref(),
            Some(expected),
            "what {} read",
            self.name
        );
    }

    async fn expect_end(&mut self) {
        assert_eq!(self.line().await, None, "{} expected the end", self.name);
    }
}

async fn send_line(writer: &mut OwnedWriteHalf, line: &str) {
    bounded(
        "a client's write",
        writer.write_all(format!("{line}\n").as_bytes()),
    )
    .await
    .expect("a client's write");
}

async fn read_line(lines: &mut Lines<BufReader<OwnedReadHalf>>, name: &str) -> Option<String> {
    bounded("a chat line", lines.next_line())
        .await
        .unwrap_or_else(|error| panic!("{name}'s read: {error}"))
}

/// Two clients that have joined, `first` and `second` (whose `NICK` line ends in `\r\n`, as
/// telnet's do), with nothing left unread.
///
/// Which of the two `NICK`s the server takes first is not known: each connection has a task of
/// its own, on either of the server's threads. So one of the two hears of the other, or both do
/// when their joins overlap (each enters the room before the other announces itself). Once
/// either has heard, both are in the room; each then says `ready`, which reaches the other after
/// its own join line if that was sent (a client's lines go out in order), so reading up to it
/// drains what the first wait did not.
async fn joined_pair(address: SocketAddr, first: &str, second: &str) -> Vec<ChatClient> {
    let mut one = ChatClient::join(address, first).await;
    let mut two = ChatClient::connect(address, second).await;
    let nick = format!("NICK {second}\r\n");
    bounded("a client's write", two.writer.write_all(nick.as_bytes()))
        .await
        .unwrap();
    tokio::select! {
        heard = one.line() => assert_eq!(heard, Some(format!("* {second} joined"))),
        heard = two.line() => assert_eq!(heard, Some(format!("* {first} joined"))),
    }
    one.send("ready").await;
    two.send("ready").await;
    for (client, other) in [(&mut one, second), (&mut two, first)] {
        let mut line = client.line().await;
        if line == Some(format!("* {other} joined")) {
            line = client.line().await;
        }
        assert_eq!(
            line,
            Some(format!("{other}: ready")),
            "what {} read",
            client.name
        );
    }
    vec![one, two]
}

const CLIENTS: usize = 50;
const MESSAGES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_chat_then_the_server_says_goodbye() {
    let max = CLIENTS.to_string();
    let mut server = EchoServer::start_example(
        "chat",
        &[
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--max-clients",
            &max,
        ],
    );
    let address = server.address;

    // They join one after the other; each earlier client hears of each later one, in order.
    let mut clients = joined_pair(address, "user0", "user1").await;
    for i in 2..CLIENTS {
        let name = format!("user{i}");
        let client = ChatClient::join(address, &name).await;
        for earlier in &mut clients {
            earlier.expect(&format!("* {name} joined")).await;
        }
        clients.push(client);
    }

    // One more is one too many.
    let mut refused = ChatClient::connect(address, "refused").await;
    refused.expect("server full").await;
    refused.expect_end().await;
    drop(refused);

    // Everyone talks at once; each hears every other exactly once, in each sender's order,
    // and never itself.
    let mut talking = tokio::task::JoinSet::new();
    for (index, client) in clients.into_iter().enumerate() {
        talking.spawn(async move {
            let ChatClient {
                name,
                mut lines,
                mut writer,
            } = client;
            let reading = tokio::spawn({
                let name = name.clone();
                async move {
                    let mut heard = Vec::new();
                    for _ in 0..(CLIENTS - 1) * MESSAGES {
                        let line = read_line(&mut lines, &name).await;
                        heard.push(line.unwrap_or_else(|| panic!("{name}: the end, early")));
                    }
                    (lines, heard)
                }
            });
            for k in 0..MESSAGES {
                send_line(&mut writer, &format!("message {k} from {name}")).await;
            }
            let (lines, heard) = bounded("a client's reading", reading).await.unwrap();
            (
                index,
                ChatClient {
                    name,
                    lines,
                    writer,
                },
                heard,
            )
        });
    }
    let mut clients: Vec<Option<ChatClient>> = (0..CLIENTS).map(|_| None).collect();
    while let Some(done) = bounded("the talking", talking.join_next()).await {
        let (index, client, heard) = done.expect("a client failed");
        for sender in (0..CLIENTS).filter(|&sender| sender != index) {
            let prefix = format!("user{sender}: ");
            let from_sender: Vec<&str> = heard
                .iter()
                .filter_map(|line| line.strip_prefix(&prefix))
                .collect();
            let expected: Vec<String> = (0..MESSAGES)
                .map(|k| format!("message {k} from user{sender}"))
                .collect();
            assert_eq!(
                from_sender, expected,
                "what user{index} heard from user{sender}"
            );
        }
        clients[index] = Some(client);
    }
    let mut clients: Vec<ChatClient> = clients.into_iter().map(Option::unwrap).collect();

    // Two leave, one closing and one resetting: the others hear it, and the room goes on.
    let mut leaving = clients.pop().unwrap();
    leaving.writer.shutdown().await.unwrap();
    leaving.expect_end().await;
    let resetting = clients.pop().unwrap();
    let stream = resetting
        .lines
        .into_inner()
        .into_inner()
        .reunite(resetting.writer)
        .unwrap();
    reset(stream);
    for client in &mut clients {
        // In either order: each is announced at its own connection's closure.
        let mut left = [client.line().await, client.line().await];
        left.sort();
        let expected = [CLIENTS - 2, CLIENTS - 1].map(|i| Some(format!("* user{i} left")));
        assert_eq!(left, expected, "what {} read", client.name);
    }
    clients[0].send("still here").await;
    for client in &mut clients[1..] {
        client.expect("user0: still here").await;
    }

    // SIGTERM: every client reads the goodbye, then the end, and closes; the server exits 0. (No
    // second signal: it would force the shutdown.)
    let mut ending = tokio::task::JoinSet::new();
    for mut client in clients {
        ending.spawn(async move {
            client.expect("server shutting down").await;
            client.expect_end().await;
        });
    }
    server.signal(libc::SIGTERM);
    while let Some(ended) = bounded("the goodbyes", ending.join_next()).await {
        ended.expect("a client failed");
    }
    let status = tokio::task::block_in_place(|| server.wait_for_exit());
    assert!(status.success(), "the chat server exited with {status}");
    let remaining = CLIENTS - 2;
    assert_eq!(
        server.log.after("shutdown complete "),
        [format!("graceful={remaining} forced=0 other=0")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_first_crlf_lines_and_a_line_too_long() {
    let mut server =
        EchoServer::start_example("chat", &["--listen", "127.0.0.1:0", "--threads", "1"]);
    let address = server.address;
    let mut stranger = ChatClient::connect(address, "stranger").await;
    for line in ["hello?", "NICK two words", "NICK ", "NICK"] {
        stranger.send(line).await;
        stranger.expect("* send NICK name first").await;
    }
    drop(stranger); // never named: nobody hears of it
                    // `\r\n` works as well as `\n` (bob's `NICK`), and a second NICK is just text.
    let mut pair = joined_pair(address, "ann", "bob").await;
    let (mut bob, mut ann) = (pair.pop().unwrap(), pair.pop().unwrap());
    bob.writer
        .write_all(b"hi ann\r\nNICK robert\n")
        .await
        .unwrap();
    ann.expect("bob: hi ann").await;
    ann.expect("bob: NICK robert").await;
    // A line too long closes its sender, who is announced as having left.
    let long = "x".repeat(5000);
    bob.send(&long).await;
    bob.expect("* line too long").await;
    bob.expect_end().await;
    drop(bob);
    ann.expect("* bob left").await;
    // SIGINT as well as SIGTERM.
    let goodbye = tokio::spawn(async move {
        ann.expect("server shutting down").await;
        ann.expect_end().await;
    });
    server.signal(libc::SIGINT);
    bounded("the goodbye", goodbye).await.unwrap();
    let status = tokio::task::block_in_place(|| server.wait_for_exit());
    assert!(status.success(), "the chat server exited with {status}");
}

/// Silent connections held against the server in the flood test: far more than its
/// `--max-clients`.
const FLOOD: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_join_and_talk_while_a_thousand_silent_connections_are_held() {
    // Before the server starts, so that it inherits the limit too.
    ensure_descriptors(2 * FLOOD + 256);
    let mut server = EchoServer::start_example(
        "chat",
        &[
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--max-clients",
            "10",
        ],
    );
    let address = server.address;
    let flood = SilentFlood::start(address, FLOOD);
    flood.until_connected().await;

    // Two real clients get in, hear each other join and talk, while the flood goes on.
    let mut pair = joined_pair(address, "ann", "bob").await;
    let (mut bob, mut ann) = (pair.pop().unwrap(), pair.pop().unwrap());
    ann.send("hello bob").await;
    bob.expect("ann: hello bob").await;
    bob.send("hello ann").await;
    ann.expect("bob: hello ann").await;
    println!(
        "during the flood: {} silent connections open, {} connects, {} ended by the server",
        flood.open(),
        flood.connects(),
        flood.ended()
    );

    drop(flood);
    let goodbyes = tokio::spawn(async move {
        for client in [&mut ann, &mut bob] {
            client.expect("server shutting down").await;
            client.expect_end().await;
        }
    });
    server.signal(libc::SIGTERM);
    bounded("the goodbyes", goodbyes).await.unwrap();
    let status = tokio::task::block_in_place(|| server.wait_for_exit());
    assert!(status.success(), "the chat server exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_no_nick_in_time_is_told_and_closed() {
    let mut server = EchoServer::start_example(
        "chat",
        &[
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--nick-timeout",
            "1",
        ],
    );
    let address = server.address;
    let mut ann = ChatClient::join(address, "ann").await;
    // Talking is not naming: the deadline stands.
    let mut stranger = ChatClient::connect(address, "stranger").await;
    stranger.send("hello?").await;
    stranger.expect("* send NICK name first").await;
    stranger.expect("* no NICK within 1 s").await;
    stranger.expect_end().await;
    // A silent one is closed the same way.
    let mut silent = ChatClient::connect(address, "silent").await;
    silent.expect("* no NICK within 1 s").await;
    silent.expect_end().await;
    // Nobody heard of either, and ann, named in time, is still in the room past her deadline.
    let mut bob = ChatClient::join(address, "bob").await;
    ann.expect("* bob joined").await;
    ann.send("still here").await;
    bob.expect("ann: still here").await;
    let status = tokio::task::block_in_place(|| server.stop());
    assert!(status.success(), "the chat server exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_name_is_refused_and_the_client_may_try_another() {
    let mut server =
        EchoServer::start_example("chat", &["--listen", "127.0.0.1:0", "--threads", "1"]);
    let address = server.address;
    let mut ann = ChatClient::join(address, "ann").await;
    // Names are compared without case: `ANN` is ann too.
    let mut other = ChatClient::connect(address, "other").await;
    bounded(
        "a client's write",
        other
            .writer
            .write_all(b"NICK ann\nNICK ANN\nhi\nNICK ann2\n"),
    )
    .await
    .unwrap();
    // The first ann hears of nobody but ann2.
    ann.expect("* ann2 joined").await;
    other.expect("* name taken").await;
    other.expect("* name taken").await;
    other.expect("* send NICK name first").await;
    ann.send("hi ann2").await;
    other.expect("ann: hi ann2").await;
    // A name is free again once its client has left.
    ann.writer.shutdown().await.unwrap();
    ann.expect_end().await;
    other.expect("* ann left").await;
    let _again = ChatClient::join(address, "Ann").await;
    other.expect("* Ann joined").await;
    let status = tokio::task::block_in_place(|| server.stop());
    assert!(status.success(), "the chat server exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_are_stripped_from_lines_and_names() {
    let mut server =
        EchoServer::start_example("chat", &["--listen", "127.0.0.1:0", "--threads", "1"]);
    let address = server.address;
    let mut pair = joined_pair(address, "ann", "bob").await;
    let (mut bob, mut ann) = (pair.pop().unwrap(), pair.pop().unwrap());
    // A carriage return that would start the terminal's line again, an escape sequence that
    // would clear the screen, a bell, the one-byte CSI (C1, as UTF-8), DEL and NUL: all gone.
    // The tab stays.
    let spoof = "one\rann: forged\x1b[2J\x07\ttab \u{9b}31m\x7f\0end\r\n";
    bounded("a client's write", bob.writer.write_all(spoof.as_bytes()))
        .await
        .unwrap();
    ann.expect("bob: oneann: forged[2J\ttab 31mend").await;
    // In a name too.
    let mut carol = ChatClient::connect(address, "carol").await;
    carol.send("NICK \x1bca\rrol\x07").await;
    ann.expect("* carol joined").await;
    bob.expect("* carol joined").await;
    carol.send("hi").await;
    ann.expect("carol: hi").await;
    let status = tokio::task::block_in_place(|| server.stop());
    assert!(status.success(), "the chat server exited with {status}");
}

/// A member of the flood test: reads every line, at once (`pause` zero) or a bufferful every
/// `pause` (a person's terminal), until it has seen the flooder's `end`; returns how many lines
/// it heard from the flooder, or the line where it was closed.
async fn member(mut client: ChatClient, pause: std::time::Duration) -> Result<usize, String> {
    let mut heard = 0;
    loop {
        if !pause.is_zero() && client.lines.get_ref().buffer().is_empty() {
            tokio::time::sleep(pause).await;
        }
        match client.line().await {
            Some(line) if line == "flooder: end" => return Ok(heard),
            Some(line) if line.starts_with("flooder: ") => heard += 1,
            Some(_) => {}
            None => return Err(format!("{} was closed after {heard} lines", client.name)),
        }
    }
}

/// The outside test's flood: one client sends 100,000 empty lines at once, while 5 members read
/// fast and 5 read a bufferful every 100 ms. Before, every fast reader and 4 of the idle
/// members were closed as slow consumers; now the sender is paced (its read rate, and the room
/// catching up) and every member hears every line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_senders_burst_closes_none_of_the_other_members() {
    const LINES: usize = 100_000;
    let mut server =
        EchoServer::start_example("chat", &["--listen", "127.0.0.1:0", "--threads", "2"]);
    let address = server.address;
    // Each one joins once the one before is known to be in the room (see `joined_pair`).
    let mut pair = joined_pair(address, "flooder", "member0").await;
    let mut members = vec![pair.pop().unwrap()];
    let mut flooder = pair.pop().unwrap();
    for i in 1..10 {
        let name = format!("member{i}");
        let mut client = ChatClient::join_with_small_window(address, &name).await;
        flooder.expect(&format!("* {name} joined")).await;
        for earlier in &mut members {
            let earlier: &mut ChatClient = earlier;
            earlier.expect(&format!("* {name} joined")).await;
        }
        client.send("ready").await;
        flooder.expect(&format!("{name}: ready")).await;
        for earlier in &mut members {
            let earlier: &mut ChatClient = earlier;
            earlier.expect(&format!("{name}: ready")).await;
        }
        members.push(client);
    }
    let listening: Vec<_> = members
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let pause = if i < 5 {
                std::time::Duration::ZERO
            } else {
                std::time::Duration::from_millis(100)
            };
            tokio::spawn(member(client, pause))
        })
        .collect();
    // The flooder never reads what the others say meanwhile (there is nothing), and sends its
    // burst and an end in one write.
    let mut burst = "\n".repeat(LINES);
    burst.push_str("end\n");
    let sending = tokio::spawn(async move {
        flooder.writer.write_all(burst.as_bytes()).await.unwrap();
        flooder
    });
    // Alone this takes about 10 s here (the slow members read 1 MB a bufferful per 100 ms); run
    // after other tests of this file it has taken over 60 s, so the bound is generous.
    for (i, listening) in listening.into_iter().enumerate() {
        let heard = tokio::time::timeout(std::time::Duration::from_secs(180), listening)
            .await
            .unwrap_or_else(|_| panic!("member{i} heard the end in time"))
            .unwrap();
        assert_eq!(heard, Ok(LINES), "member{i}");
    }
    let flooder = bounded("the flooder's write", sending).await.unwrap();
    drop(flooder);
    let status = tokio::task::block_in_place(|| server.stop());
    assert!(status.success(), "{status:?}");
}
