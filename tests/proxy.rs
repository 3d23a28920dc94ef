//! The PROXY protocol on a listener (`Listener::proxy_protocol`): headers of both versions over real
//! loopback TCP, the addresses and TLVs they carry, every way a header is refused, TLS after the
//! header, and the per-address cap counting the client the header names (an IPv6 client by its
//! /64). Waits are bounded by [`WAIT`]; nothing asserts how long anything took.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ppp::v2::{self, Builder, Command, Protocol, Version};
use switchboard::proxy::{ProxyHeader, ProxyProtocol};
use switchboard::{ClosureReason, Connection, Error, Listener, Server};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What `on_connection_established` saw of one connection.
#[derive(Debug, Clone)]
struct Seen {
    peer: SocketAddr,
    transport_peer: SocketAddr,
    local: SocketAddr,
    header: Option<ProxyHeader>,
}

type SeenLog = Arc<Mutex<Vec<Seen>>>;

fn trusting_loopback() -> ProxyProtocol {
    ProxyProtocol::new().trust("127.0.0.0/8".parse().unwrap())
}

/// A recording echo server with one PROXY protocol listener set up by `settings`, and the builder
/// changed by `configure`.
async fn start(
    settings: ProxyProtocol,
    configure: impl FnOnce(Listener) -> Listener,
    builder: impl FnOnce(switchboard::ServerBuilder) -> switchboard::ServerBuilder,
) -> (Server, Recorder, SeenLog) {
    let seen = SeenLog::default();
    let log = seen.clone();
    let hooks = Hooks {
        established: Some(Box::new(move |connection: &Connection| {
            log.lock().unwrap().push(Seen {
                peer: connection.peer_addr(),
                transport_peer: connection.transport_peer_addr(),
                local: connection.local_addr(),
                header: connection.proxy_header().cloned(),
            });
        })),
        ..Hooks::default()
    };
    let mut builder = builder(Server::builder().listen(configure(
        Listener::bind("127.0.0.1:0").proxy_protocol(settings),
    )));
    let recorder = Recorder::with_hooks(&mut builder, Behavior::echo(), hooks);
    let server = builder.start(recorder.clone()).await.unwrap();
    (server, recorder, seen)
}

async fn send(stream: &mut TcpStream, bytes: &[u8]) {
    bounded("client write", stream.write_all(bytes))
        .await
        .expect("client write");
}

/// Expects the server to reset `stream` without sending anything.
async fn expect_reset(stream: &mut TcpStream) {
    let (data, end) = read_to_end(stream).await;
    assert!(data.is_empty(), "a refused client got data");
    assert_eq!(
        end.expect_err("a refused connection is reset").kind(),
        std::io::ErrorKind::ConnectionReset
    );
}

/// Checks that the only connection so far ended with `reason` before it was established.
async fn expect_refused(recorder: &Recorder, reason: ClosureReason) {
    recorder.wait_released(1).await;
    assert_eq!(
        recorder.ended_with(reason).len(),
        1,
        "{:#?}",
        recorder.events()
    );
    assert!(
        recorder.established().is_empty(),
        "{:#?}",
        recorder.events()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_header_names_the_client_everywhere_and_what_follows_it_is_data() {
    let (server, recorder, seen) = start(trusting_loopback(), |l| l, |b| b).await;
    let mut stream = client(server.local_addr().unwrap()).await;
    let client_side = stream.local_addr().unwrap();
    // The header and the first data in one segment.
    send(
        &mut stream,
        b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\nhello",
    )
    .await;
    let mut reply = [0; 5];
    bounded(
        "echo",
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut reply),
    )
    .await
    .unwrap();
    assert_eq!(&reply, b"hello");
    echo(&mut stream, b" again").await;

    let client: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let id = recorder.established()[0];
    assert!(recorder
        .events()
        .contains(&Event::Established(id, client, None)));
    let seen = seen.lock().unwrap()[0].clone();
    assert_eq!(seen.peer, client);
    assert_eq!(seen.transport_peer, client_side);
    assert_eq!(seen.local, server.local_addr().unwrap());
    let header = seen.header.unwrap();
    assert_eq!(header.version(), 1);
    assert_eq!(
        header.destination(),
        Some("198.51.100.1:443".parse().unwrap())
    );

    drop(stream);
    recorder.wait_released(1).await;
    assert_lifecycle(&recorder.events_of(id));
    assert_eq!(recorder.closure(id), Some(ClosureReason::PeerClosed));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_2_headers_over_ipv4_and_ipv6_carry_their_tlvs() {
    let (server, recorder, seen) = start(trusting_loopback(), |l| l, |b| b).await;
    let address = server.local_addr().unwrap();
    let mut ssl = vec![0x01, 0, 0, 0, 0];
    ssl.extend_from_slice(&[0x21, 0, 7]);
    ssl.extend_from_slice(b"TLSv1.3");
    let header = v2_header(
        Command::Proxy,
        "192.0.2.7:40000",
        "198.51.100.1:443",
        &[
            (0x01, b"h2"),
            (0x02, b"example.com"),
            (0x05, b"req-1"),
            (0x20, &ssl),
        ],
    );
    let mut first = client(address).await;
    // The header alone, the data in a segment of its own.
    send(&mut first, &header).await;
    echo(&mut first, b"ping").await;

    let ipv6 = v2_header(
        Command::Proxy,
        "[2001:db8::7]:5000",
        "[2001:db8::1]:443",
        &[],
    );
    let mut second = client(address).await;
    let mut with_data = ipv6.clone();
    with_data.extend_from_slice(b"pong");
    send(&mut second, &with_data).await;
    let mut reply = [0; 4];
    bounded(
        "echo",
        tokio::io::AsyncReadExt::read_exact(&mut second, &mut reply),
    )
    .await
    .unwrap();
    assert_eq!(&reply, b"pong");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let v4 = seen[0].header.as_ref().unwrap();
    assert_eq!(seen[0].peer, "192.0.2.7:40000".parse().unwrap());
    assert_eq!(v4.version(), 2);
    assert_eq!(v4.alpn(), Some(&b"h2"[..]));
    assert_eq!(v4.authority(), Some("example.com"));
    assert_eq!(v4.unique_id(), Some(&b"req-1"[..]));
    let tls = v4.ssl().unwrap();
    assert!(tls.is_tls() && tls.verified());
    assert_eq!(tls.version(), Some("TLSv1.3"));
    assert_eq!(seen[1].peer, "[2001:db8::7]:5000".parse().unwrap());
    assert_eq!(seen[1].transport_peer, second.local_addr().unwrap());
    drop((first, second));
    recorder.wait_released(2).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_and_unknown_headers_make_normal_connections_with_the_sockets_addresses() {
    let (server, recorder, seen) = start(trusting_loopback(), |l| l, |b| b).await;
    let address = server.local_addr().unwrap();
    let local = Builder::with_addresses(
        Version::Two | Command::Local,
        Protocol::Unspecified,
        v2::Addresses::Unspecified,
    )
    .build()
    .unwrap();
    for header in [local, b"PROXY UNKNOWN\r\n".to_vec()] {
        let mut stream = client(address).await;
        send(&mut stream, &header).await;
        echo(&mut stream, b"health").await;
        let last = seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last.peer, stream.local_addr().unwrap());
        assert_eq!(last.transport_peer, last.peer);
        assert!(last.header.unwrap().is_local());
    }
    assert_eq!(recorder.established().len(), 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_from_outside_the_trusted_networks_is_reset_unread() {
    if skip_under_wine(&WINE_RESET_READ_AS_EOF) {
        return;
    }
    let settings = ProxyProtocol::new().trust("10.0.0.0/8".parse().unwrap());
    let (server, recorder, _) = start(settings, |l| l, |b| b).await;
    // Reset at once, unread: the reset can even reach the client before its connect completes.
    let connected = bounded("connect", TcpStream::connect(server.local_addr().unwrap())).await;
    if let Ok(mut stream) = connected {
        let _ = stream
            .write_all(b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\r\n")
            .await;
        let (data, end) = read_to_end(&mut stream).await;
        assert!(data.is_empty());
        assert_eq!(end.unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);
    }
    expect_refused(&recorder, ClosureReason::ProxyProtocol).await;
    let id = recorder.ended_with(ClosureReason::ProxyProtocol)[0];
    assert_eq!(
        recorder.events_of(id),
        vec![
            Event::Closure(id, ClosureReason::ProxyProtocol),
            Event::Closed(id)
        ]
    );
    let stats = server.stats();
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.closures(ClosureReason::ProxyProtocol), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_malformed_and_oversized_headers_are_refused_at_once() {
    if skip_under_wine(&WINE_RESET_READ_AS_EOF) {
        return;
    }
    // A long header timeout: every refusal below comes from the data, not the clock.
    let settings = trusting_loopback().header_timeout(Duration::from_secs(3600));
    let (server, recorder, _) = start(settings, |l| l, |b| b).await;
    let address = server.local_addr().unwrap();
    let mut wrong_version = v2_header(Command::Proxy, "192.0.2.7:1", "192.0.2.8:2", &[]);
    wrong_version[12] = 0x31;
    let inputs: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(),
        b"PROXY TCP4 not-an-address 198.51.100.1 1 2\r\n".to_vec(),
        format!("PROXY TCP4 {}", "9".repeat(150)).into_bytes(),
        wrong_version,
    ];
    for (i, input) in inputs.iter().enumerate() {
        let mut stream = client(address).await;
        send(&mut stream, input).await;
        expect_reset(&mut stream).await;
        recorder.wait_released(i + 1).await;
    }
    assert_eq!(
        recorder.ended_with(ClosureReason::ProxyProtocol).len(),
        inputs.len()
    );
    assert!(recorder.established().is_empty());
    assert_eq!(
        server.stats().closures(ClosureReason::ProxyProtocol),
        inputs.len() as u64
    );
    server.shutdown().await;
}

/// A version 2 header from 192.0.2.1:1234 to 198.51.100.1:443 whose one TLV is a CRC32C, the
/// checksum (the last 4 bytes) computed apart from switchboard, by a bit-at-a-time CRC-32C.
const WITH_CRC32C: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x13\xc0\x00\x02\x01\xc6\x33\x64\x01\
\x04\xd2\x01\xbb\x03\x00\x04\x6c\xab\x48\xd5";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_header_with_the_right_crc32c_is_taken_and_with_a_wrong_one_refused() {
    if skip_under_wine(&WINE_RESET_READ_AS_EOF) {
        return;
    }
    let settings = trusting_loopback().header_timeout(Duration::from_secs(3600));
    let (server, recorder, seen) = start(settings, |l| l, |b| b).await;
    let address = server.local_addr().unwrap();
    let mut right = client(address).await;
    send(&mut right, WITH_CRC32C).await;
    echo(&mut right, b"ping").await;
    let peer = seen.lock().unwrap()[0].peer;
    assert_eq!(peer, "192.0.2.1:1234".parse().unwrap());
    drop(right);
    recorder.wait_released(1).await;

    // The same header with one bit of the checksum changed.
    let mut wrong = WITH_CRC32C.to_vec();
    *wrong.last_mut().unwrap() ^= 0x01;
    let mut stream = client(address).await;
    send(&mut stream, &wrong).await;
    expect_reset(&mut stream).await;
    recorder.wait_released(2).await;
    assert_eq!(recorder.established().len(), 1, "{:#?}", recorder.events());
    assert_eq!(recorder.ended_with(ClosureReason::ProxyProtocol).len(), 1);
    assert_eq!(server.stats().closures(ClosureReason::ProxyProtocol), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_that_trickles_in_is_waited_for_and_a_truncated_or_late_one_is_refused() {
    if skip_under_wine(&WINE_RESET_READ_AS_EOF) {
        return;
    }
    // Long enough that the slow header below (six pieces 5 ms apart) arrives in time on a busy
    // machine, short enough for the late one to be waited out.
    let settings = trusting_loopback().header_timeout(Duration::from_secs(1));
    let (server, recorder, seen) = start(settings, |l| l, |b| b).await;
    let address = server.local_addr().unwrap();

    // Truncated: half a header, then FIN.
    let header = v2_header(Command::Proxy, "192.0.2.7:40000", "198.51.100.1:443", &[]);
    let mut truncated = client(address).await;
    send(&mut truncated, &header[..20]).await;
    truncated.shutdown().await.unwrap();
    expect_reset(&mut truncated).await;
    expect_refused(&recorder, ClosureReason::ProxyProtocol).await;

    // Late: half a header, then nothing, past the header timeout.
    let mut late = client(address).await;
    send(&mut late, b"PROXY TCP4 192.0.2.7").await;
    expect_reset(&mut late).await;
    recorder.wait_released(2).await;
    assert_eq!(recorder.ended_with(ClosureReason::ProxyProtocol).len(), 2);

    // A client that closes before sending anything (a TCP health check) is a peer close.
    let silent = client(address).await;
    drop(silent);
    recorder.wait_released(3).await;
    assert_eq!(recorder.ended_with(ClosureReason::PeerClosed).len(), 1);

    // A header sent a few bytes at a time is read in full, not a byte past it.
    let mut slow = client(address).await;
    for chunk in header.chunks(5) {
        send(&mut slow, chunk).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    echo(&mut slow, b"after a slow header").await;
    assert_eq!(
        seen.lock().unwrap()[0].peer,
        "192.0.2.7:40000".parse::<SocketAddr>().unwrap()
    );
    drop(slow);
    recorder.wait_released(4).await;
    assert_eq!(server.stats().closures(ClosureReason::ProxyProtocol), 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_negotiated_after_the_header() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (server, recorder, seen) =
        start(trusting_loopback(), |l| l.tls(server_acceptor()), |b| b).await;
    let mut stream = client(server.local_addr().unwrap()).await;
    send(
        &mut stream,
        b"PROXY TCP6 2001:db8::7 2001:db8::1 5000 443\r\n",
    )
    .await;
    let mut tls = bounded("handshake", tls_connector().connect("localhost", stream))
        .await
        .expect("handshake");
    echo(&mut tls, b"secret").await;
    let client: SocketAddr = "[2001:db8::7]:5000".parse().unwrap();
    assert_eq!(seen.lock().unwrap()[0].peer, client);
    let id = recorder.established()[0];
    assert!(recorder.events().contains(&Event::Secure(id, client)));
    drop(tls);
    recorder.wait_secure_released(1).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_address_cap_counts_the_client_the_header_names() {
    if skip_under_wine(&WINE_RESET_READ_AS_EOF) {
        return;
    }
    let (server, recorder, _) =
        start(trusting_loopback(), |l| l, |b| b.max_connections_per_ip(1)).await;
    let address = server.local_addr().unwrap();
    let from = |ip: &str| format!("PROXY TCP4 {ip} 198.51.100.1 40000 443\r\n").into_bytes();
    let client_ip: IpAddr = "192.0.2.7".parse().unwrap();

    let mut first = client(address).await;
    send(&mut first, &from("192.0.2.7")).await;
    echo(&mut first, b"one").await;
    assert_eq!(server.connections_from_ip(client_ip), Some(1));
    // Every connection comes from 127.0.0.1, which is not what is counted.
    assert_eq!(server.connections_from_ip([127, 0, 0, 1].into()), Some(0));

    let mut second = client(address).await;
    send(&mut second, &from("192.0.2.7")).await;
    expect_reset(&mut second).await;
    recorder.wait_released(1).await;
    assert_eq!(recorder.ended_with(ClosureReason::PerIpLimit).len(), 1);

    let mut third = client(address).await;
    send(&mut third, &from("192.0.2.8")).await;
    echo(&mut third, b"three").await;
    let stats = server.stats();
    assert_eq!(stats.refused_per_ip, 1);
    assert_eq!(stats.closures(ClosureReason::PerIpLimit), 1);

    drop((first, third));
    recorder.wait_released(3).await;
    eventually("every slot to free", || {
        server.connections_from_ip(client_ip) == Some(0)
    })
    .await;
    server.shutdown().await;
}

/// Connects to `address` with a PROXY v2 header naming `client` (an IPv6 socket address) and
/// asks for an echo.
async fn echoed_as(address: SocketAddr, client: &str) -> TcpStream {
    let mut stream = client_as(address, client).await;
    echo(&mut stream, client.as_bytes()).await;
    stream
}

/// Connects to `address` with a PROXY v2 header naming `client` (an IPv6 socket address).
async fn client_as(address: SocketAddr, client: &str) -> TcpStream {
    let mut stream = common::client(address).await;
    send(
        &mut stream,
        &v2_header(Command::Proxy, client, "[2001:db8:ffff::1]:443", &[]),
    )
    .await;
    stream
}

/// The per-address cap counts the addresses of one IPv6 /64 as one source (the headers name
/// them: loopback gives a client one IPv6 address); with a /128 prefix, each counts on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_address_cap_holds_across_the_addresses_of_one_ipv6_prefix() {
    if skip_under_wine(&WINE_RESET_READ_AS_EOF) {
        return;
    }
    let (server, recorder, _) =
        start(trusting_loopback(), |l| l, |b| b.max_connections_per_ip(2)).await;
    let address = server.local_addr().unwrap();
    let first = echoed_as(address, "[2001:db8::1]:1000").await;
    let second = echoed_as(address, "[2001:db8::2]:1000").await;
    let any_of_the_64: IpAddr = "2001:db8::ffff:1".parse().unwrap();
    assert_eq!(server.connections_from_ip(any_of_the_64), Some(2));
    let mut third = client_as(address, "[2001:db8::ffff:3]:1000").await;
    expect_reset(&mut third).await;
    recorder.wait_released(1).await;
    assert_eq!(recorder.ended_with(ClosureReason::PerIpLimit).len(), 1);
    // The next /64 is another source.
    let other = echoed_as(address, "[2001:db8:0:1::1]:1000").await;
    assert_eq!(server.stats().refused_per_ip, 1);
    drop((first, second, other));
    recorder.wait_released(4).await;
    eventually("every slot to free", || {
        server.connections_from_ip(any_of_the_64) == Some(0)
    })
    .await;
    server.shutdown().await;

    // Every address on its own.
    let (server, recorder, _) = start(
        trusting_loopback(),
        |l| l,
        |b| b.max_connections_per_ip(2).ipv6_source_prefix(128),
    )
    .await;
    let address = server.local_addr().unwrap();
    let mut clients = Vec::new();
    for n in 1..=3 {
        clients.push(echoed_as(address, &format!("[2001:db8::{n}]:1000")).await);
    }
    assert_eq!(
        server.connections_from_ip("2001:db8::1".parse().unwrap()),
        Some(1)
    );
    drop(clients);
    recorder.wait_released(3).await;
    assert_eq!(server.stats().refused_per_ip, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_does_not_wait_for_a_header_that_never_comes() {
    if skip_under_wine(&WINE_RESET_READ_AS_EOF) {
        return;
    }
    let settings = trusting_loopback().header_timeout(Duration::from_secs(3600));
    let (server, recorder, _) = start(
        settings,
        |l| l,
        |b| b.shutdown_timeout(Duration::from_millis(200)),
    )
    .await;
    let mut stream = client(server.local_addr().unwrap()).await;
    send(&mut stream, b"PROXY ").await;
    eventually("the connection to register", || server.stats().active == 1).await;
    let report = bounded("shutdown", server.shutdown()).await;
    assert_eq!(report.forced, 1);
    expect_reset(&mut stream).await;
    assert_eq!(recorder.ended_with(ClosureReason::ShutdownForced).len(), 1);
}

#[tokio::test]
async fn a_listener_that_trusts_nobody_is_refused() {
    let result = Server::builder()
        .listen(Listener::bind("127.0.0.1:0").proxy_protocol(ProxyProtocol::new()))
        .start(Recorder::new(&mut Server::builder()))
        .await;
    assert!(matches!(
        result,
        Err(Error::InvalidSetting {
            setting: "proxy_protocol",
            ..
        })
    ));
}
