//! Peer limits: the per-address connection cap (`ServerBuilder::max_connections_per_ip`) and the
//! accept loop's spare descriptor, which refuses pending clients promptly when the process runs
//! out of descriptors. Over real loopback TCP where the accept loop or the socket is part of it;
//! the slot freed by a panic, by abort-all and a forced shutdown, and refusals holding a limiter
//! slot run on the embedded connection of `switchboard::testing` on the paused clock. Waits are
//! bounded by [`WAIT`] and nothing asserts how long anything took.
//!
//! Linux's whole 127.0.0.0/8 is loopback, so clients bind 127.0.0.2, 127.0.0.3, … as their source
//! address to come from different peers.

mod common;

use std::collections::HashMap;
#[cfg(target_os = "linux")]
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
#[cfg(target_os = "linux")]
use std::time::Instant;

use common::*;
use switchboard::testing::{EmbeddedPeer, EmbeddedServer};
use switchboard::{
    Callbacks, ClosureReason, ConnectionId, Direction, Error, Server, ServerBuilder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// [`try_client_from`] for a client that is served.
async fn client_from(source: IpAddr, address: SocketAddr) -> TcpStream {
    try_client_from(source, address)
        .await
        .expect("connect failed")
}

/// Connects from `source` and checks that the server resets the connection at once: during the
/// connect or as the first thing the client reads.
async fn refused_client_from(source: IpAddr, address: SocketAddr) {
    match try_client_from(source, address).await {
        Ok(mut stream) => {
            let (data, end) = read_to_end(&mut stream).await;
            assert!(data.is_empty(), "a refused client got data");
            let error = end.expect_err("a refused connection is reset");
            assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
        }
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset),
    }
}

/// Starts a recording echo server on loopback configured by `configure`.
async fn start(configure: impl FnOnce(ServerBuilder) -> ServerBuilder) -> (Server, Recorder) {
    let mut builder = Server::builder().bind("127.0.0.1:0");
    let recorder = Recorder::new(&mut builder);
    let server = configure(builder).start(recorder.clone()).await.unwrap();
    (server, recorder)
}

/// [`start`], embedded (`switchboard::testing`): no listener; connect with `server.connect`.
async fn start_embedded(
    configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
) -> (EmbeddedServer, Recorder) {
    let mut builder = Server::builder();
    let recorder = Recorder::new(&mut builder);
    let server = configure(builder)
        .embedded()
        .start(recorder.clone())
        .await
        .unwrap();
    (server, recorder)
}

/// An embedded peer from `ip` (the server sees each one's own port).
async fn peer_from(server: &EmbeddedServer, ip: IpAddr) -> EmbeddedPeer {
    use std::sync::atomic::{AtomicU16, Ordering};
    static PORT: AtomicU16 = AtomicU16::new(40000);
    let port = PORT.fetch_add(1, Ordering::Relaxed);
    server
        .accept(SocketAddr::new(ip, port))
        .await
        .expect("embedded connect")
}

/// [`refused_client_from`] for an embedded peer: the server resets it at once, with no data.
async fn refused_peer_from(server: &EmbeddedServer, ip: IpAddr) {
    let mut peer = peer_from(server, ip).await;
    let (data, end) = peer_read_to_end(&mut peer).await;
    assert!(data.is_empty(), "a refused client got data");
    let error = end.expect_err("a refused connection is reset");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
}

/// Checks a refused connection's events: closure with [`ClosureReason::PerIpLimit`], closed, then
/// a release without the id (it was never established, so the recorder never stored one), and
/// nothing else but, on a TLS listener, the secure release.
fn assert_refused(recorder: &Recorder, id: ConnectionId, tls: bool) {
    let mut expected = vec![
        Event::Closure(id, ClosureReason::PerIpLimit),
        Event::Closed(id),
    ];
    if tls {
        expected.push(Event::SecureReleased(id));
    }
    assert_eq!(recorder.events_of(id), expected);
    let all = recorder.events();
    let closed = all.iter().position(|e| *e == Event::Closed(id)).unwrap();
    assert!(
        all[closed + 1..].contains(&Event::Released(None, None)),
        "a release follows the refused connection's closed event: {all:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_cap_is_refused_with_its_own_reason_until_a_slot_frees() {
    if skip_under_wine(&WINE_RESET_READ_AS_EOF) {
        return;
    }
    let (server, recorder) = start(|b| b.max_connections_per_ip(2)).await;
    let address = server.local_addr().unwrap();
    assert_eq!(server.connections_from_ip(LOCALHOST), Some(0));

    let mut first = client(address).await;
    assert_eq!(echo_round_trip(&mut first, b"one").await, b"one");
    let mut second = client(address).await;
    assert_eq!(echo_round_trip(&mut second, b"two").await, b"two");
    assert_eq!(server.connections_from_ip(LOCALHOST), Some(2));

    // The third is accepted, so its client is not left waiting, and reset at once.
    refused_client_from(LOCALHOST, address).await;
    recorder
        .wait_count("the refusal's release", 1, |e| {
            *e == Event::Released(None, None)
        })
        .await;
    let refused = recorder.ended_with(ClosureReason::PerIpLimit);
    assert_eq!(refused.len(), 1, "{:#?}", recorder.events());
    assert_refused(&recorder, refused[0], false);
    assert_eq!(
        recorder.count(|e| *e == Event::SocketCreated(Direction::Inbound)),
        3,
        "the refused socket was created like any other"
    );
    assert_eq!(recorder.established().len(), 2);
    // The refusal took no slot, and the two served connections go on.
    assert_eq!(server.connections_from_ip(LOCALHOST), Some(2));
    assert_eq!(echo_round_trip(&mut second, b"still").await, b"still");

    let stats = server.stats();
    assert_eq!(stats.refused_per_ip, 1);
    assert_eq!(stats.closures(ClosureReason::PerIpLimit), 1);
    assert_eq!(stats.accepted, 3);

    // One ends: its slot frees once its release events are done, and the next client is served.
    let first_id = recorder.established()[0];
    drop(first);
    recorder
        .wait_count("the first release", 1, |e| {
            *e == Event::Released(Some(first_id), None)
        })
        .await;
    eventually("the first connection's slot to free", || {
        server.connections_from_ip(LOCALHOST) == Some(1)
    })
    .await;
    let mut fourth = client(address).await;
    assert_eq!(echo_round_trip(&mut fourth, b"four").await, b"four");
    assert_eq!(server.connections_from_ip(LOCALHOST), Some(2));

    drop((second, fourth));
    recorder.wait_released(4).await;
    eventually("every slot to free", || {
        server.connections_from_ip(LOCALHOST) == Some(0)
    })
    .await;
    for id in recorder.established() {
        let events = recorder.events_of(id);
        assert_lifecycle(&events);
        assert_eq!(closure_reason(&events), Some(ClosureReason::PeerClosed));
    }
    let stats = server.stats();
    assert_eq!(stats.refused_per_ip, 1);
    assert_eq!(stats.accepted, 4);
    server.shutdown().await;
    assert_eq!(server.connections_from_ip(LOCALHOST), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_address_has_its_own_count_across_all_listeners() {
    if skip_under_wine(&WINE_RESET_READ_AS_EOF) {
        return;
    }
    let mut builder = Server::builder()
        .bind("127.0.0.1:0")
        .bind("127.0.0.1:0")
        .max_connections_per_ip(1);
    let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    if ipv6 {
        builder = builder.bind("[::1]:0");
    }
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    let addresses = server.local_addrs().to_vec();

    // One connection from each of three addresses, all served.
    let mut held = Vec::new();
    for n in 1..=3 {
        let mut stream = client_from(loopback(n), addresses[0]).await;
        assert_eq!(echo_round_trip(&mut stream, b"hi").await, b"hi");
        held.push(stream);
    }
    for n in 1..=3 {
        assert_eq!(server.connections_from_ip(loopback(n)), Some(1));
    }
    assert_eq!(server.connections_from_ip(loopback(4)), Some(0));

    // A second from 127.0.0.2, through the other listener: the cap is the server's, not the
    // listener's.
    refused_client_from(loopback(2), addresses[1]).await;
    recorder
        .wait_count("the refusal", 1, |e| {
            matches!(e, Event::Closure(_, ClosureReason::PerIpLimit))
        })
        .await;

    if ipv6 {
        // ::1 is an address of its own.
        let mut v6 = client_from(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), addresses[2]).await;
        assert_eq!(echo_round_trip(&mut v6, b"v6").await, b"v6");
        assert_eq!(
            server.connections_from_ip(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
            Some(1)
        );
        held.push(v6);
    }
    // An IPv4-mapped address is looked up as the IPv4 address.
    let mapped = IpAddr::V6(Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped());
    assert_eq!(server.connections_from_ip(mapped), Some(1));

    assert_eq!(server.stats().refused_per_ip, 1);
    let served = held.len();
    drop(held);
    recorder.wait_released(served + 1).await;
    for n in 1..=3 {
        eventually("the slots to free", || {
            server.connections_from_ip(loopback(n)) == Some(0)
        })
        .await;
    }
    server.shutdown().await;
}

/// What one churning client saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Served,
    Refused,
}

/// Connects from `source`, asks for an echo and ends with FIN or RST.
async fn churn_once(source: IpAddr, address: SocketAddr, reset_at_end: bool) -> Outcome {
    let Ok(mut stream) = try_client_from(source, address).await else {
        return Outcome::Refused;
    };
    // A refused connection may already be reset when this writes.
    let _ = stream.write_all(b"ping").await;
    let mut reply = [0u8; 4];
    let outcome = match tokio::time::timeout(WAIT, stream.read_exact(&mut reply))
        .await
        .expect("neither served nor refused")
    {
        Ok(_) => {
            assert_eq!(&reply, b"ping");
            Outcome::Served
        }
        Err(error) => {
            assert!(
                matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
                ),
                "{error:?}"
            );
            Outcome::Refused
        }
    };
    if reset_at_end {
        reset(stream);
    }
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_stay_exact_under_concurrent_churn() {
    const CAP: usize = 3;
    const ADDRESSES: u8 = 4;
    const BURST: usize = 10;
    const CLIENTS_PER_ADDRESS: usize = 60;
    let (server, recorder) = start(|b| b.max_connections_per_ip(CAP)).await;
    let address = server.local_addr().unwrap();

    // Each address at its cap: a concurrent burst from every address is refused entirely.
    let mut held = Vec::new();
    for n in 1..=ADDRESSES {
        for _ in 0..CAP {
            let mut stream = client_from(loopback(n), address).await;
            assert_eq!(echo_round_trip(&mut stream, b"held").await, b"held");
            held.push(stream);
        }
    }
    let burst: Vec<_> = (1..=ADDRESSES)
        .flat_map(|n| (0..BURST).map(move |i| (n, i)))
        .map(|(n, i)| tokio::spawn(churn_once(loopback(n), address, i % 2 == 0)))
        .collect();
    for task in burst {
        assert_eq!(task.await.unwrap(), Outcome::Refused);
    }
    let burst_total = ADDRESSES as usize * BURST;
    recorder
        .wait_count("the burst's releases", burst_total, |e| {
            *e == Event::Released(None, None)
        })
        .await;
    assert_eq!(server.stats().refused_per_ip, burst_total as u64);
    drop(held);

    // Free-for-all: many concurrent clients per address, ending with FIN or RST.
    let churn: Vec<_> = (1..=ADDRESSES)
        .flat_map(|n| (0..CLIENTS_PER_ADDRESS).map(move |i| (n, i)))
        .map(|(n, i)| tokio::spawn(churn_once(loopback(n), address, i % 3 == 0)))
        .collect();
    let mut refused_by_clients = burst_total;
    for task in churn {
        if task.await.unwrap() == Outcome::Refused {
            refused_by_clients += 1;
        }
    }
    let total = ADDRESSES as usize * (CAP + BURST + CLIENTS_PER_ADDRESS);
    recorder.wait_released(total).await;
    for n in 1..=ADDRESSES {
        eventually("every slot to free", || {
            server.connections_from_ip(loopback(n)) == Some(0)
        })
        .await;
    }

    // Every refusal the clients saw is one the server counted, and the other way round.
    let stats = server.stats();
    assert_eq!(stats.refused_per_ip, refused_by_clients as u64);
    assert_eq!(
        stats.closures(ClosureReason::PerIpLimit),
        stats.refused_per_ip
    );
    assert_eq!(
        recorder.ended_with(ClosureReason::PerIpLimit).len(),
        refused_by_clients
    );
    assert_eq!(stats.accepted, total as u64);
    assert_eq!(recorder.established().len(), total - refused_by_clients);

    // At no point did one address have more than CAP connections established and not yet
    // released: a connection counts from before its establishment to after its release.
    let mut address_of = HashMap::new();
    let mut live: HashMap<IpAddr, usize> = HashMap::new();
    for event in recorder.events() {
        match event {
            Event::Established(id, peer, _) => {
                address_of.insert(id, peer.ip());
                let count = live.entry(peer.ip()).or_default();
                *count += 1;
                assert!(*count <= CAP, "{} over the cap", peer.ip());
            }
            Event::Released(Some(id), _) => {
                *live.get_mut(&address_of[&id]).unwrap() -= 1;
            }
            _ => {}
        }
    }
    assert!(live.values().all(|&n| n == 0));
    for id in recorder.established() {
        assert_lifecycle(&recorder.events_of(id));
    }
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_a_callback_frees_the_slot() {
    let mut builder = Server::builder().max_connections_per_ip(1);
    let recorder = Recorder::with_behavior(
        &mut builder,
        Behavior {
            panic_in: Some("on_read_completed"),
            ..Behavior::default()
        },
    );
    let server = builder.embedded().start(recorder.clone()).await.unwrap();
    let stream = peer_from(&server, LOCALHOST).await;
    stream.send(b"boom").unwrap();
    recorder.wait_released(1).await;
    assert_eq!(
        closure_reason(&recorder.events_of(recorder.established()[0])),
        Some(ClosureReason::CallbackPanic)
    );
    eventually("the slot to free", || {
        server.connections_from_ip(LOCALHOST) == Some(0)
    })
    .await;
    recorder.set_behavior(|b| b.panic_in = None);
    let mut next = peer_from(&server, LOCALHOST).await;
    echo_peer(&mut next, b"next").await;
    assert_eq!(server.stats().refused_per_ip, 0);
    drop((stream, next));
    server.shutdown().await;
    assert_eq!(server.connections_from_ip(LOCALHOST), Some(0));
}

#[tokio::test(start_paused = true)]
async fn abort_all_and_a_forced_shutdown_free_every_slot() {
    let (server, recorder) = start_embedded(|b| {
        b.max_connections_per_ip(2)
            .shutdown_timeout(Duration::from_millis(100))
    })
    .await;
    recorder.set_behavior(|b| b.close_on_shutdown_request = false);
    let mut clients = Vec::new();
    for n in 1..=2 {
        for _ in 0..2 {
            let mut stream = peer_from(&server, loopback(n)).await;
            echo_peer(&mut stream, b"x").await;
            clients.push(stream);
        }
    }
    assert_eq!(server.abort_all_connections().await, 4);
    recorder.wait_released(4).await;
    for n in 1..=2 {
        eventually("the aborted connections' slots to free", || {
            server.connections_from_ip(loopback(n)) == Some(0)
        })
        .await;
    }
    for stream in &mut clients {
        let (_, end) = peer_read_to_end(stream).await;
        assert!(end.is_err(), "aborted connections are reset");
    }

    // Full again, then a shutdown whose drain time runs out.
    let mut again = Vec::new();
    for n in 1..=2 {
        for _ in 0..2 {
            let mut stream = peer_from(&server, loopback(n)).await;
            echo_peer(&mut stream, b"y").await;
            again.push(stream);
        }
    }
    let report = server.shutdown().await;
    assert_eq!(report.forced, 4);
    // The shutdown completes after every connection's slot was given back.
    for n in 1..=2 {
        assert_eq!(server.connections_from_ip(loopback(n)), Some(0));
    }
    assert_eq!(recorder.ended_with(ClosureReason::ShutdownForced).len(), 4);
    assert_eq!(server.stats().refused_per_ip, 0);
}

#[tokio::test(start_paused = true)]
async fn refused_connections_count_against_the_connection_limit_until_released() {
    // A refusal is an accepted connection: it holds a limiter slot for its closing events, so
    // the limit holds, and frees it after.
    let (server, recorder) =
        start_embedded(|b| b.max_connections(2).max_connections_per_ip(1)).await;
    let mut first = peer_from(&server, LOCALHOST).await;
    echo_peer(&mut first, b"a").await;
    for refused in 1..=5 {
        refused_peer_from(&server, LOCALHOST).await;
        // Its slot is held until its closing events are done: a socket's client would wait in
        // the backlog until then.
        recorder
            .wait_count("the refusal", refused, |e| {
                *e == Event::Released(None, None)
            })
            .await;
        eventually("the refusal's limiter slot to free", || {
            server.limiter().active() == 1
        })
        .await;
    }
    recorder
        .wait_count("the refusals", 5, |e| *e == Event::Released(None, None))
        .await;
    eventually("the refusals' limiter slots to free", || {
        server.limiter().active() == 1
    })
    .await;
    let mut other = peer_from(&server, loopback(2)).await;
    echo_peer(&mut other, b"b").await;
    assert_eq!(server.stats().refused_per_ip, 5);
    drop((first, other));
    recorder.wait_released(7).await;
    server.shutdown().await;
    assert_eq!(server.limiter().active(), 0);
}

#[tokio::test]
async fn the_cap_is_off_by_default_and_zero_is_refused() {
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .start(NoCallbacks)
        .await
        .unwrap();
    assert_eq!(server.connections_from_ip(LOCALHOST), None);
    assert_eq!(server.stats().refused_per_ip, 0);
    server.shutdown().await;

    let error = Server::builder()
        .bind("127.0.0.1:0")
        .max_connections_per_ip(0)
        .start(NoCallbacks)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::InvalidSetting {
                setting: "max_connections_per_ip",
                ..
            }
        ),
        "{error:?}"
    );
}

struct NoCallbacks;
impl Callbacks for NoCallbacks {}

// ---------------------------------------------------------------------------------------------
// The cap on a TLS listener
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_tls_listener_a_refused_connection_gets_no_handshake_and_failures_free_slots() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let mut builder = Server::builder()
        .bind_tls("127.0.0.1:0", server_acceptor())
        .max_connections_per_ip(1);
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    let address = server.local_addr().unwrap();
    let connector = tls_connector();

    let tcp = client(address).await;
    let mut served = tokio::time::timeout(WAIT, connector.connect("localhost", tcp))
        .await
        .expect("handshake timed out")
        .expect("handshake");
    served.write_all(b"secure").await.unwrap();
    let mut reply = [0u8; 6];
    served.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"secure");
    assert_eq!(server.connections_from_ip(LOCALHOST), Some(1));

    // Over the cap: reset before any handshake, so the client's handshake fails.
    if let Ok(tcp) = try_client_from(LOCALHOST, address).await {
        let refused = tokio::time::timeout(WAIT, connector.connect("localhost", tcp))
            .await
            .expect("handshake timed out");
        assert!(refused.is_err(), "the refused client's handshake failed");
    }
    recorder
        .wait_count("the refusal", 1, |e| *e == Event::Released(None, None))
        .await;
    let ids = recorder.ended_with(ClosureReason::PerIpLimit);
    assert_eq!(ids.len(), 1);
    assert_refused(&recorder, ids[0], true);
    assert_eq!(server.stats().closures(ClosureReason::TlsError), 0);

    // A failed handshake frees its slot too: garbage instead of a ClientHello.
    let served_id = recorder.established()[0];
    drop(served);
    recorder
        .wait_count("the served release", 1, |e| {
            *e == Event::Released(Some(served_id), None)
        })
        .await;
    eventually("the slot to free", || {
        server.connections_from_ip(LOCALHOST) == Some(0)
    })
    .await;
    let mut garbage = client(address).await;
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let _ = read_to_end(&mut garbage).await;
    eventually("the failed handshake's slot to free", || {
        server.stats().closures(ClosureReason::TlsError) == 1
            && server.connections_from_ip(LOCALHOST) == Some(0)
    })
    .await;

    let tcp = client(address).await;
    let mut again = tokio::time::timeout(WAIT, connector.connect("localhost", tcp))
        .await
        .expect("handshake timed out")
        .expect("served again after the failure");
    again.write_all(b"again").await.unwrap();
    let mut reply = [0u8; 5];
    again.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"again");
    drop(again);
    server.shutdown().await;
    assert_eq!(server.connections_from_ip(LOCALHOST), Some(0));
    assert_eq!(server.stats().refused_per_ip, 1);
}

// ---------------------------------------------------------------------------------------------
// Out of descriptors: the spare descriptor refuses pending clients at once (src/reserve.rs).
// The server runs in a child process (tests/common/child.rs), as in tests/faults.rs.
// Linux only: the child runs under `ulimit -n` and its CPU time is read from /proc.
// ---------------------------------------------------------------------------------------------

/// Clients the parent opens at once: more than the child has descriptors.
#[cfg(target_os = "linux")]
const RESERVE_CLIENTS: usize = 80;

/// The server half of `out_of_descriptors_pending_clients_are_refused_at_once_and_serving_recovers`;
/// runs only when re-executed by it.
#[cfg(target_os = "linux")]
#[tokio::test]
#[ignore = "runs only as the child of out_of_descriptors_pending_clients_are_refused_at_once_and_serving_recovers"]
async fn reserve_child() {
    run_child_server(Descriptors::Leave).await;
}

/// How a client that wrote one byte was answered.
#[cfg(target_os = "linux")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Echoed,
    Refused,
}

/// Connects to `address`; `None` if the server's reset beat the connect's completion.
#[cfg(target_os = "linux")]
fn connect(address: SocketAddr) -> Option<std::net::TcpStream> {
    match std::net::TcpStream::connect_timeout(&address, WAIT) {
        Ok(stream) => Some(stream),
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => None,
        Err(error) => panic!("connect: {error:?}"),
    }
}

/// Writes a byte and waits (at most [`WAIT`]) for the echo or the end of the stream. A client
/// left waiting in the backlog fails the test: the read times out.
#[cfg(target_os = "linux")]
fn answer(stream: &mut Option<std::net::TcpStream>) -> Answer {
    let Some(stream) = stream else {
        return Answer::Refused;
    };
    stream.set_read_timeout(Some(WAIT)).unwrap();
    // A refused client may be reset already.
    let _ = stream.write_all(b"a");
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(1) => {
            assert_eq!(&byte, b"a");
            Answer::Echoed
        }
        Ok(_) => Answer::Refused,
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => Answer::Refused,
        Err(error) => panic!("a client was neither served nor refused: {error:?}"),
    }
}

#[cfg(target_os = "linux")]
#[test]
fn out_of_descriptors_pending_clients_are_refused_at_once_and_serving_recovers() {
    let child = ChildServer::start("reserve_child");
    let pid = child.pid();
    let log = child.log.clone();
    let address = child.address;

    // More clients than the child has descriptors: the kernel completes every handshake (the
    // backlog is 1024); the child accepts until it runs out, then refuses the rest.
    let mut clients: Vec<Option<std::net::TcpStream>> =
        (0..RESERVE_CLIENTS).map(|_| connect(address)).collect();
    log.wait("an accept error", |log| {
        log.lines().iter().any(|l| l.starts_with("accept_error "))
    });
    for line in log.lines() {
        if let Some(errno) = line.strip_prefix("accept_error ") {
            assert_eq!(errno, "24", "EMFILE expected: {line}");
        }
    }

    // Every client is answered: echoed, or refused at once. None is left waiting.
    let answers: Vec<Answer> = clients.iter_mut().map(answer).collect();
    let echoed = answers.iter().filter(|a| **a == Answer::Echoed).count();
    let refused = RESERVE_CLIENTS - echoed;
    eprintln!("{echoed} clients served, {refused} refused");
    assert!(
        echoed > 0 && refused > 0,
        "{echoed} served, {refused} refused"
    );
    log.wait("the child's counts", |log| {
        let stats = log.stats();
        stats.refused_no_descriptors == refused as u64 && stats.accepted == echoed as u64
    });
    assert_eq!(log.count("established"), echoed);

    // Still out of descriptors: the refusals used up the listener's readiness, so the child
    // waits for the next client instead of failing accepts over and over (or backing off and
    // retrying).
    let before = log.stats();
    let ticks_before = cpu_ticks(pid);
    let window = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let ticks = cpu_ticks(pid) - ticks_before;
    let core_share = core_share(ticks, window.elapsed());
    assert!(
        core_share < 0.3,
        "the child used {core_share:.2} of a core while out of descriptors"
    );
    assert_eq!(
        log.stats().accept_errors,
        before.accept_errors,
        "accepts failed with nobody waiting"
    );

    // A client arriving while descriptors are still short is refused as it comes.
    assert_eq!(answer(&mut connect(address)), Answer::Refused);
    log.wait("the late refusal counted", |log| {
        log.stats().refused_no_descriptors == refused as u64 + 1
    });

    // Descriptors free up: close all but three of the served clients; new clients are served.
    let mut served: Vec<Option<std::net::TcpStream>> = clients
        .into_iter()
        .zip(&answers)
        .filter(|(_, a)| **a == Answer::Echoed)
        .map(|(stream, _)| stream)
        .collect();
    let closed: Vec<_> = served.drain(3..).collect();
    let closed_count = closed.len();
    drop(closed);
    log.wait("the closed clients released", |log| {
        log.count("released") >= closed_count
    });
    let fresh_count = closed_count.min(10);
    let mut fresh: Vec<Option<std::net::TcpStream>> =
        (0..fresh_count).map(|_| connect(address)).collect();
    for stream in fresh.iter_mut() {
        assert_eq!(answer(stream), Answer::Echoed, "served after recovery");
    }
    for stream in served.iter_mut() {
        assert_eq!(answer(stream), Answer::Echoed, "still served");
    }
    log.wait("the recovered counts", |log| {
        log.stats().accepted == (echoed + fresh_count) as u64
    });
    assert_eq!(
        log.stats().refused_no_descriptors,
        refused as u64 + 1,
        "nothing refused once descriptors were free"
    );
    drop(child);
}
