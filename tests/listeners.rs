//! Listeners made elsewhere and handed over: adopting a `std` listener (plain and TLS),
//! `SO_REUSEPORT`, and `Server::listeners` duplicates that keep the accept queue, and every
//! connection waiting in it, alive while the server that made them shuts down. And one listener
//! per address family: a `[::]` listener takes no IPv4 client, and a server binds both.

mod common;

use std::net::SocketAddr;

use common::*;
#[cfg(any(target_os = "linux", target_os = "android"))]
use switchboard::socket2::{Domain, Socket, Type};
#[cfg(unix)]
use switchboard::Error;
use switchboard::{Server, ServerBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Starts an echoing server with the listeners (and settings) `configure` adds.
async fn echo_server(configure: impl FnOnce(ServerBuilder) -> ServerBuilder) -> (Server, Recorder) {
    let mut builder = Server::builder();
    let recorder = Recorder::new(&mut builder);
    let server = configure(builder)
        .start(recorder.clone())
        .await
        .expect("server start");
    (server, recorder)
}

/// Connects, echoes a message and closes.
async fn echo_once(address: SocketAddr, seed: u64) {
    let mut stream = client(address).await;
    echo(&mut stream, &pattern(seed, 1024)).await;
}

#[tokio::test]
async fn an_adopted_listener_serves_and_is_made_non_blocking() {
    // A blocking listener, as `std` makes it (and as a parent process may pass one).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (server, recorder) = echo_server(|b| b.adopt_listener(listener)).await;
    assert_eq!(server.local_addrs(), [address]);
    // Windows has no way to read a socket's blocking mode back (FIONBIO only sets it).
    #[cfg(unix)]
    {
        let duplicate = server.listeners().unwrap().remove(0);
        assert!(
            switchboard::socket2::SockRef::from(&duplicate)
                .nonblocking()
                .unwrap(),
            "the adopted socket must have been set non-blocking"
        );
    }
    echo_once(address, 1).await;
    recorder.wait_released(1).await;
    shut_down(&server).await;
    // The server owned the adopted socket: it is closed now.
    let refused = TcpStream::connect(address).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn adopted_listeners_keep_their_order_beside_bound_ones() {
    let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let third = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (first_address, third_address) = (first.local_addr().unwrap(), third.local_addr().unwrap());
    let (server, recorder) = echo_server(|b| {
        b.adopt_listener(first)
            .bind("127.0.0.1:0")
            .adopt_listener(third)
    })
    .await;
    let addresses = server.local_addrs().to_vec();
    assert_eq!(addresses.len(), 3);
    assert_eq!(addresses[0], first_address);
    assert_eq!(addresses[2], third_address);
    for (seed, address) in addresses.iter().enumerate() {
        echo_once(*address, seed as u64).await;
    }
    recorder.wait_released(3).await;
    shut_down(&server).await;
}

#[cfg(any(target_os = "linux", target_os = "android"))]
#[tokio::test]
async fn adopting_a_socket_that_does_not_listen_fails_at_start() {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let bound_only: std::net::TcpListener = socket.into();
    let address = bound_only.local_addr().unwrap();
    let started = Server::builder()
        .adopt_listener(bound_only)
        .start(switchboard_nothing())
        .await;
    match started {
        Err(Error::Bind {
            address: described,
            source,
        }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::InvalidInput);
            assert!(
                described.contains(&address.to_string()),
                "the error names the socket: {described}"
            );
        }
        other => panic!("expected Error::Bind, got {other:?}"),
    }
}

/// Callbacks that do nothing.
#[cfg(unix)]
fn switchboard_nothing() -> impl switchboard::Callbacks {
    struct Nothing;
    impl switchboard::Callbacks for Nothing {}
    Nothing
}

#[tokio::test]
async fn adopted_tls_listeners_negotiate() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    // One with its own acceptor, one through the builder's `tls`.
    let own = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let through_builder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (server, recorder) = echo_server(|b| {
        b.adopt_listener_tls(own, server_acceptor())
            .adopt_listener(through_builder)
            .tls(server_acceptor())
    })
    .await;
    for (seed, address) in server.local_addrs().iter().enumerate() {
        let tcp = client(*address).await;
        let mut tls = bounded("TLS handshake", tls_connector().connect("localhost", tcp))
            .await
            .expect("TLS handshake");
        echo(&mut tls, &pattern(seed as u64, 1024)).await;
        let _ = bounded("TLS shutdown", tls.shutdown()).await;
    }
    recorder.wait_secure_released(2).await;
    assert_eq!(
        recorder.count(|event| matches!(event, Event::Negotiated { .. })),
        2
    );
    shut_down(&server).await;
}

#[cfg(all(
    unix,
    not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
))]
#[tokio::test]
async fn reuse_port_lets_two_servers_listen_on_one_port() {
    let (first, first_recorder) = echo_server(|b| b.bind("127.0.0.1:0").reuse_port(true)).await;
    let address = first.local_addr().unwrap();
    // Without the option on the newcomer, the port is taken.
    match Server::builder()
        .bind(address)
        .start(switchboard_nothing())
        .await
    {
        Err(Error::Bind { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse)
        }
        other => panic!("expected AddrInUse, got {other:?}"),
    }
    let (second, second_recorder) = echo_server(|b| b.bind(address).reuse_port(true)).await;
    assert_eq!(second.local_addr(), Some(address));
    // The kernel spreads connections over both sockets (by a hash of each connection's
    // addresses): keep connecting until each server has served one. The chance that 200
    // connections all land on one side is 2^-199.
    let mut seed = 0;
    while first_recorder.established().is_empty() || second_recorder.established().is_empty() {
        assert!(seed < 200, "one of the servers never got a connection");
        echo_once(address, seed).await;
        seed += 1;
    }
    shut_down(&first).await;
    shut_down(&second).await;
}

#[tokio::test]
async fn a_duplicate_keeps_every_queued_connection_when_the_original_shuts_down() {
    // The hand-off, in one process: the old server stops accepting, clients keep connecting
    // (and sending) into the accept queue, the old server shuts down, and the new one, started
    // from the duplicates, serves every one of them.
    const QUEUED: usize = 50;
    let (old, old_recorder) = echo_server(|b| b.bind("127.0.0.1:0")).await;
    let address = old.local_addr().unwrap();
    let duplicates = old.listeners().unwrap();
    assert_eq!(duplicates.len(), 1);
    assert_eq!(duplicates[0].local_addr().unwrap(), address);
    old_recorder
        .wait_for("start accepting", |event| *event == Event::StartAccepting)
        .await;
    old.stop_accepting();
    old_recorder
        .wait_for("stop accepting", |event| *event == Event::StopAccepting)
        .await;
    let mut clients = Vec::with_capacity(QUEUED);
    for seed in 0..QUEUED {
        // The kernel completes the handshake and takes the request with nobody accepting.
        let mut stream = client(address).await;
        let message = pattern(seed as u64, 1024);
        bounded("queued write", stream.write_all(&message))
            .await
            .unwrap();
        clients.push((stream, message));
    }
    let report = shut_down(&old).await;
    assert_eq!(report.graceful + report.forced + report.other, 0);
    assert!(old_recorder.established().is_empty());
    let closed = old.listeners().unwrap_err();
    assert_eq!(closed.kind(), std::io::ErrorKind::NotConnected);

    let (new, new_recorder) = echo_server(|mut b| {
        for listener in duplicates {
            b = b.adopt_listener(listener);
        }
        b
    })
    .await;
    assert_eq!(new.local_addr(), Some(address));
    let mut verified = 0;
    for (mut stream, message) in clients {
        let mut echoed = vec![0; message.len()];
        bounded("echo of a queued request", stream.read_exact(&mut echoed))
            .await
            .expect("the queued connection was served");
        assert!(echoed == message, "the echo differs");
        verified += echoed.len();
    }
    assert_eq!(verified, QUEUED * 1024);
    new_recorder.wait_released(QUEUED).await;
    assert_eq!(new_recorder.established().len(), QUEUED);
    shut_down(&new).await;
}

#[tokio::test]
async fn the_original_accepts_on_while_its_duplicate_serves_elsewhere() {
    // Duplicates taken while the old server accepts leave it serving; a new server starts from
    // them, both accept from the one queue, and then the old one shuts down. Not a connection
    // is lost on the way.
    let (old, old_recorder) = echo_server(|b| b.bind("127.0.0.1:0")).await;
    let address = old.local_addr().unwrap();
    let duplicates = old.listeners().unwrap();
    echo_once(address, 0).await;
    old_recorder.wait_released(1).await;
    let (new, new_recorder) = echo_server(|mut b| {
        for listener in duplicates {
            b = b.adopt_listener(listener);
        }
        b
    })
    .await;
    // Which of the two accepts each one is up to the scheduler; every one is served.
    for seed in 1..=20 {
        echo_once(address, seed).await;
    }
    eventually("21 connections served by the two servers", || {
        old_recorder.established().len() + new_recorder.established().len() == 21
    })
    .await;
    shut_down(&old).await;
    let served_before = new_recorder.established().len();
    for seed in 21..=40 {
        echo_once(address, seed).await;
    }
    new_recorder.wait_released(served_before + 20).await;
    shut_down(&new).await;
}

/// The local address each connection reports, whether its listener was bound to one address
/// (known from the listener, no system call), to every address (asked of the socket), or adopted
/// (asked too: its options are unknown).
#[tokio::test]
async fn connections_know_their_local_address_on_every_kind_of_listener() {
    use std::sync::Mutex;
    use switchboard::{async_trait, Callbacks, Connection};

    #[derive(Clone)]
    struct Locals(std::sync::Arc<Mutex<Vec<SocketAddr>>>);
    #[async_trait]
    impl Callbacks for Locals {
        async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
            self.0.lock().unwrap().push(connection.local_addr());
        }
    }

    let adopted = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let locals = Locals(Default::default());
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .bind("0.0.0.0:0")
        .adopt_listener(adopted)
        .start(locals.clone())
        .await
        .expect("server start");
    let mut expected = Vec::new();
    for address in server.local_addrs() {
        let to = SocketAddr::from(([127, 0, 0, 1], address.port()));
        let _stream = TcpStream::connect(to).await.unwrap();
        expected.push(to);
        eventually("the connection is established", || {
            locals.0.lock().unwrap().len() == expected.len()
        })
        .await;
    }
    assert_eq!(*locals.0.lock().unwrap(), expected);
    shut_down(&server).await;
}

/// Whether this machine has an IPv6 loopback to test with; says so when it has not.
fn has_ipv6_loopback() -> bool {
    let has = std::net::TcpListener::bind("[::1]:0").is_ok();
    if !has {
        eprintln!("skipped: this machine has no IPv6 loopback ([::1] cannot be bound)");
    }
    has
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_listener_takes_only_ipv6_clients_and_a_server_binds_both_families_on_one_port() {
    if !has_ipv6_loopback() {
        return;
    }
    // A port free on IPv4's side, where the kernel knows of every binding (an IPv6 bind to an
    // ephemeral port does not look at IPv4's, and an earlier test's thousands of connections
    // from other loopback addresses leave TIME_WAIT bindings on many ports).
    let port = free_ipv4_port();
    let (six, _) = echo_server(|b| b.bind((std::net::Ipv6Addr::UNSPECIFIED, port))).await;
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    echo_once(v6, 1).await;
    // IPV6_V6ONLY: no IPv4 client reaches it, on Linux as elsewhere.
    let refused = bounded("connect", TcpStream::connect(v4))
        .await
        .expect_err("an IPv4 client must not reach a [::] listener");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    // So the IPv4 side of the port is free for a listener of its own.
    let (four, _) = echo_server(|b| b.bind(v4)).await;
    echo_once(v4, 2).await;
    echo_once(v6, 3).await;
    shut_down(&four).await;
    shut_down(&six).await;

    // One server, both families, one port: the way to serve IPv4 and IPv6 clients alike. On a
    // fresh free port (the one above may have been taken by another test's connection since),
    // tried again on another if it is taken in between.
    let mut attempts = 0;
    let (both, recorder, port) = loop {
        attempts += 1;
        let port = free_ipv4_port();
        let mut builder = Server::builder();
        let recorder = Recorder::new(&mut builder);
        let started = builder
            .bind(("0.0.0.0", port))
            .bind((std::net::Ipv6Addr::UNSPECIFIED, port))
            .start(recorder.clone())
            .await;
        match started {
            Ok(both) => break (both, recorder, port),
            Err(switchboard::Error::Bind { .. }) if attempts < 20 => continue,
            Err(error) => panic!("server start: {error}"),
        }
    };
    let (v4, v6) = (
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    );
    assert_eq!(
        both.local_addrs(),
        [
            SocketAddr::from(([0, 0, 0, 0], port)),
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))
        ]
    );
    echo_once(v4, 4).await;
    echo_once(v6, 5).await;
    recorder.wait_released(2).await;
    shut_down(&both).await;
}

/// A port no IPv4 socket is bound to now, from the kernel.
fn free_ipv4_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn shut_down(server: &Server) -> switchboard::ShutdownReport {
    bounded("shutdown", server.shutdown()).await
}
