//! Handshake slots (guarantee 20, docs/guarantees.md;
//! `ServerBuilder::max_concurrent_handshakes`, `max_handshakes_per_source`,
//! `ipv6_source_prefix`): floods of connections that connect and say nothing, or start a
//! handshake and stall it, from many loopback addresses (each client binds its own source
//! address in 127.0.0.0/8) or from many addresses of one IPv6 /64 named by PROXY headers,
//! reconnecting as soon as they are closed, while real TLS clients handshake in a loop; which
//! connection gives its slot up; one source's share; and the first-byte timeout before a TLS
//! client's first byte. Real sockets and real TLS (OpenSSL on both ends). Waits are bounded by
//! [`WAIT`]; nothing asserts how long anything took. (The per-address cap over an IPv6 /64 is in
//! `tests/proxy.rs`.)

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ppp::v2::Command;
use switchboard::proxy::ProxyProtocol;
use switchboard::{ClosureReason, Listener, Server, ServerBuilder};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The concurrent-handshake cap of the flood tests: small, so that a flood fills it at once.
const CAP: usize = 64;

/// The first bytes of a TLS ClientHello (a handshake record's header): a client that sent them
/// has begun its handshake.
const HELLO_START: &[u8] = b"\x16\x03\x01";

/// Starts a recording echo server with one TLS listener on 127.0.0.1, configured by `configure`.
async fn start_tls(configure: impl FnOnce(ServerBuilder) -> ServerBuilder) -> (Server, Recorder) {
    start_with(
        Listener::bind("127.0.0.1:0").tls(server_acceptor()),
        configure,
    )
    .await
}

/// Starts a recording echo server with `listen`, configured by `configure`.
async fn start_with(
    listen: Listener,
    configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
) -> (Server, Recorder) {
    let mut builder = Server::builder();
    let recorder = Recorder::with_behavior(
        &mut builder,
        Behavior {
            name_every_release: true,
            ..Behavior::echo()
        },
    );
    let server = configure(builder.listen(listen))
        .start(recorder.clone())
        .await
        .unwrap();
    (server, recorder)
}

/// A PROXY protocol listener on 127.0.0.1 that trusts loopback.
fn proxied() -> Listener {
    Listener::bind("127.0.0.1:0")
        .proxy_protocol(ProxyProtocol::new().trust("127.0.0.0/8".parse().unwrap()))
}

/// The address the PROXY headers of the IPv6 tests say the clients connected to (a header's
/// two addresses are of one family).
const SERVED_AT: &str = "[2001:db8:ffff::1]:443";

/// Connects to `address` and sends a PROXY v2 header naming `client`, then `then`.
async fn connect_as(
    address: SocketAddr,
    client: SocketAddr,
    then: &[u8],
) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(address).await?;
    let header = v2_header(Command::Proxy, &client.to_string(), SERVED_AT, &[]);
    stream.write_all(&header).await?;
    stream.write_all(then).await?;
    Ok(stream)
}

/// Runs `work` on a thread of its own, with a runtime of its own: clients are other programs,
/// which the server's runtime does not schedule (in the server's runtime, a flood's tasks would
/// hold up the honest clients' own sends, which no real flood can do).
fn on_own_thread<T: Send + 'static>(
    name: &str,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(work)
        })
        .unwrap()
}

/// Waits (bounded) for a thread of [`on_own_thread`] to finish.
async fn joined<T: Send + 'static>(what: &str, thread: std::thread::JoinHandle<T>) -> T {
    bounded(what, tokio::task::spawn_blocking(move || thread.join()))
        .await
        .unwrap()
        .unwrap_or_else(|_| panic!("{what} panicked"))
}

/// Connections that each connect (as `connect` does, which may also send a first few bytes)
/// and then say nothing more, reconnecting as soon as the server closes them, until stopped.
/// They run on a thread of their own.
struct Flood {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
    /// Connections made, over all tasks.
    connections: Arc<AtomicU64>,
}

impl Flood {
    /// `tasks` flooding tasks; task `i` connects with `connect(i)`.
    fn start<F, Fut>(tasks: usize, connect: F) -> Flood
    where
        F: Fn(usize) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::io::Result<TcpStream>> + Send,
    {
        let (stop, stopped) = watch::channel(false);
        let connections = Arc::new(AtomicU64::new(0));
        let made = connections.clone();
        let thread = on_own_thread("flood", async move {
            let connect = Arc::new(connect);
            let tasks: Vec<JoinHandle<()>> = (0..tasks)
                .map(|i| {
                    let connect = connect.clone();
                    let connections = made.clone();
                    let mut stopped = stopped.clone();
                    tokio::spawn(async move {
                        while !*stopped.borrow() {
                            let held = async {
                                match connect(i).await {
                                    Ok(mut stream) => {
                                        connections.fetch_add(1, Ordering::Relaxed);
                                        // Until the server closes it (a reset, or a close after
                                        // a timeout).
                                        let _ = read_to_end(&mut stream).await;
                                    }
                                    // Refused during the connect: try again after a breath, so
                                    // that a refusing server is not spun on.
                                    Err(_) => tokio::task::yield_now().await,
                                }
                            };
                            tokio::select! {
                                () = held => {}
                                _ = stopped.changed() => {}
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
        Flood {
            stop,
            thread,
            connections,
        }
    }

    /// Waits until the flood has made `n` connections.
    async fn made(&self, n: u64) {
        let connections = self.connections.clone();
        eventually("the flood to connect", move || {
            connections.load(Ordering::Relaxed) >= n
        })
        .await;
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        joined("the flood", self.thread).await;
    }
}

/// `rounds` TLS handshakes, one after the other, each followed by an echo and a clean close;
/// returns the failures (which round, and how it failed). Each connection sends `header` first
/// (a PROXY header, or nothing).
async fn handshakes(address: SocketAddr, rounds: usize, header: Vec<u8>) -> Vec<(usize, String)> {
    let connector = tokio_native_tls::TlsConnector::from(connector_trusting("ca.pem"));
    let mut failures = Vec::new();
    for round in 0..rounds {
        let attempt = async {
            let mut tcp = TcpStream::connect(address).await?;
            tcp.write_all(&header).await?;
            let mut tls = connector
                .connect("localhost", tcp)
                .await
                .map_err(std::io::Error::other)?;
            let message = pattern(round as u64, 64);
            echo(&mut tls, &message).await;
            tls.shutdown().await
        };
        if let Err(error) = bounded("a legitimate handshake", attempt).await {
            failures.push((round, error.to_string()));
        }
    }
    failures
}

/// The outside report: silent connections from many 127/8 addresses, reconnecting as they are
/// closed, held every handshake slot for the whole handshake timeout, and legitimate handshakes
/// were reset. Every one must succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_flood_from_many_addresses_leaves_every_real_handshake_a_slot() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (server, _recorder) = start_tls(|b| b.max_concurrent_handshakes(CAP)).await;
    let address = server.local_addr().unwrap();
    // 256 silent connections from 128 addresses, 127.0.0.2 to 127.0.0.129; the legitimate
    // client comes from 127.0.0.1.
    let flood = Flood::start(4 * CAP, move |i| {
        try_client_from(loopback(2 + (i % 128) as u8), address)
    });
    flood.made(4 * CAP as u64).await;
    let failures = joined(
        "the legitimate clients",
        on_own_thread("legitimate", handshakes(address, 30, Vec::new())),
    )
    .await;
    flood.stop().await;
    assert_all_served(&server, &failures, 30);
    // The flood did fill the cap: its connections gave their slots up.
    assert!(server.stats().closures(ClosureReason::HandshakeEvicted) > 0);
    bounded("shutdown", server.shutdown()).await;
}

/// Checks that no legitimate handshake of `rounds` failed.
fn assert_all_served(server: &Server, failures: &[(usize, String)], rounds: usize) {
    assert!(
        failures.is_empty(),
        "{} of {rounds} legitimate handshakes failed: {failures:?}; closures: {:?}",
        failures.len(),
        server
            .stats()
            .closure_counts()
            .filter(|(_, count)| *count > 0)
            .collect::<Vec<_>>()
    );
}

/// The same from many addresses of one IPv6 /64, which loopback cannot give a client: they come
/// through a PROXY listener, whose headers name them. Half the flood says nothing after the
/// header; the other half begins a ClientHello and stalls, which no eviction takes a slot from:
/// only the /64 counted as one source, holding its share, leaves the rest of the cap to others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_ipv6_prefix_named_by_proxy_headers_holds_one_share() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (server, _recorder) = start_with(proxied().tls(server_acceptor()), |b| {
        b.max_concurrent_handshakes(CAP)
    })
    .await;
    let address = server.local_addr().unwrap();
    let next = Arc::new(AtomicU64::new(1));
    let flood = Flood::start(4 * CAP, move |i| {
        // A new address of 2001:db8:0:1::/64 for every connection.
        let n = next.fetch_add(1, Ordering::Relaxed);
        let client = SocketAddr::new(
            IpAddr::V6(std::net::Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                1,
                (n >> 48) as u16,
                (n >> 32) as u16,
                (n >> 16) as u16,
                n as u16,
            )),
            40_000,
        );
        let then = if i % 2 == 0 { &b""[..] } else { HELLO_START };
        connect_as(address, client, then)
    });
    flood.made(4 * CAP as u64).await;
    // The legitimate client is in another /64.
    let header = v2_header(Command::Proxy, "[2001:db8:0:2::1]:5000", SERVED_AT, &[]);
    let failures = joined(
        "the legitimate clients",
        on_own_thread("legitimate", handshakes(address, 30, header)),
    )
    .await;
    flood.stop().await;
    assert_all_served(&server, &failures, 30);
    let stats = server.stats();
    assert!(
        stats.closures(ClosureReason::HandshakeLimit) > 0,
        "the /64 was held to its share"
    );
    bounded("shutdown", server.shutdown()).await;
}

/// Whether the server has closed `stream` yet, without waiting: `false` while nothing has come.
fn is_closed(stream: &TcpStream) -> bool {
    let mut byte = [0; 1];
    !matches!(stream.try_read(&mut byte), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock)
}

/// Expects the server to reset `stream` with nothing sent.
async fn expect_reset(stream: &mut TcpStream) {
    let (data, end) = read_to_end(stream).await;
    assert!(data.is_empty(), "a reset connection got data");
    let error = end.expect_err("the server resets the connection");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
}

/// Connects from `source`; with `hello`, sends the first bytes of a ClientHello and stalls (mid
/// handshake), otherwise says nothing (silent). Waits until the server has taken the connection
/// (`on_socket_created`, the `n`th) and lets its task start the handshake.
async fn stalled_from(
    recorder: &Recorder,
    n: usize,
    source: u8,
    address: SocketAddr,
    hello: bool,
) -> TcpStream {
    let mut stream = try_client_from(loopback(source), address).await.unwrap();
    if hello {
        stream.write_all(HELLO_START).await.unwrap();
    }
    recorder
        .wait_count("the server to take the connection", n, |e| {
            matches!(e, Event::SocketCreated(_))
        })
        .await;
    // A settling pause, not a timing assertion: there is no event for "slot taken" or "first
    // byte seen", and the order of the slots is what this test is about.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream
}

/// When the cap is full, the oldest connection that has said nothing gives its slot up; one
/// mid-handshake never does; with none silent left, the new connection is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_the_oldest_silent_connection_gives_its_slot_up_and_none_mid_handshake_does() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (server, recorder) = start_tls(|b| b.max_concurrent_handshakes(3)).await;
    let address = server.local_addr().unwrap();
    // Each from an address of its own: with a cap of 3, one source's default share is 1.
    let mid = stalled_from(&recorder, 1, 2, address, true).await;
    let mut older = stalled_from(&recorder, 2, 3, address, false).await;
    let mut newer = stalled_from(&recorder, 3, 4, address, false).await;
    assert!(!is_closed(&mid) && !is_closed(&older) && !is_closed(&newer));

    // A fourth connection, mid-handshake, takes the oldest silent one's slot.
    let first = stalled_from(&recorder, 4, 5, address, true).await;
    expect_reset(&mut older).await;
    assert!(
        !is_closed(&newer),
        "only the oldest silent one gave its slot up"
    );
    // A fifth takes the other silent one's.
    let second = stalled_from(&recorder, 5, 6, address, true).await;
    expect_reset(&mut newer).await;
    recorder.wait_secure_released(2).await;
    let evicted = recorder.ended_with(ClosureReason::HandshakeEvicted);
    assert_eq!(evicted.len(), 2, "{:#?}", recorder.events());
    for id in evicted {
        let events = recorder.events_of(id);
        assert_eq!(
            events.len(),
            4,
            "the closing events only, no handshake: {events:#?}"
        );
        assert_eq!(
            events[0],
            Event::Closure(id, ClosureReason::HandshakeEvicted)
        );
    }

    // All three slots are held mid-handshake: a sixth connection is refused, even one that
    // speaks at once.
    let refused = try_tls_from(7, address).await;
    assert!(refused.is_err(), "refused at the cap");
    recorder.wait_secure_released(3).await;
    assert_eq!(recorder.ended_with(ClosureReason::HandshakeLimit).len(), 1);
    assert!(!is_closed(&mid) && !is_closed(&first) && !is_closed(&second));
    let stats = server.stats();
    assert_eq!(stats.closures(ClosureReason::HandshakeEvicted), 2);
    assert_eq!(stats.closures(ClosureReason::HandshakeLimit), 1);

    // The stalled clients leave; the slots are free again.
    drop((mid, first, second));
    recorder.wait_secure_released(6).await;
    let mut client = try_tls_from(8, address).await.expect("a slot is free");
    echo(&mut client, b"after the flood").await;
    drop(client);
    recorder.wait_secure_released(7).await;
    bounded("shutdown", server.shutdown()).await;
}

/// A TLS client from 127.0.0.`source` that handshakes at once.
async fn try_tls_from(
    source: u8,
    address: SocketAddr,
) -> Result<tokio_native_tls::TlsStream<TcpStream>, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = try_client_from(loopback(source), address).await?;
    let connector = tokio_native_tls::TlsConnector::from(connector_trusting("ca.pem"));
    Ok(bounded("client handshake", connector.connect("localhost", tcp)).await?)
}

/// One source holds at most its share of the slots, whatever the cap has free; other sources
/// are served meanwhile, and the source is again once its stalled handshake ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_holds_at_most_its_share_of_the_handshakes() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (server, recorder) = start_tls(|b| b.max_handshakes_per_source(1)).await;
    let address = server.local_addr().unwrap();
    let stalled = stalled_from(&recorder, 1, 2, address, true).await;
    let refused = try_tls_from(2, address).await;
    assert!(refused.is_err(), "the source's one slot is held");
    recorder.wait_secure_released(1).await;
    assert_eq!(recorder.ended_with(ClosureReason::HandshakeLimit).len(), 1);
    let mut other = try_tls_from(3, address).await.expect("another source");
    echo(&mut other, b"another source").await;
    drop(stalled);
    recorder.wait_secure_released(2).await;
    let mut again = try_tls_from(2, address)
        .await
        .expect("its slot is free again");
    echo(&mut again, b"again").await;
    drop((other, again));
    recorder.wait_secure_released(4).await;
    bounded("shutdown", server.shutdown()).await;
}

/// The first-byte timeout bounds the wait for a TLS client's first byte (where the handshake
/// timeout would wait longer), and the wait for its first byte of data once established; a client
/// that began its handshake has the handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_byte_timeout_bounds_a_silent_tls_client_before_and_after_the_handshake() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    // The handshake timeout is long: only the first-byte timeout can end a silent client soon
    // (the test does not measure it: the reason tells which deadline passed).
    let (server, recorder) = start_tls(|b| {
        b.first_byte_timeout(Some(Duration::from_millis(300)))
            .handshake_timeout(Duration::from_secs(3600))
    })
    .await;
    let address = server.local_addr().unwrap();
    let mut silent = client(address).await;
    expect_reset(&mut silent).await;
    recorder.wait_secure_released(1).await;
    let timed_out = recorder.ended_with(ClosureReason::FirstByteTimedOut);
    assert_eq!(timed_out.len(), 1);
    assert_eq!(recorder.events_of(timed_out[0]).len(), 4, "not established");

    // Established, then silent: the first-byte timeout again, for the first byte of data.
    let mut quiet = try_tls_from(1, address).await.expect("handshake");
    let (rest, end) = read_to_end(&mut quiet).await;
    assert!(rest.is_empty());
    assert!(end.is_err(), "reset: {end:?}");
    recorder.wait_secure_released(2).await;
    let timed_out = recorder.ended_with(ClosureReason::FirstByteTimedOut);
    assert_eq!(timed_out.len(), 2);
    assert!(recorder.established().contains(&timed_out[1]));
    bounded("shutdown", server.shutdown()).await;

    // A client that began its handshake is bounded by the handshake timeout alone.
    let (server, recorder) = start_tls(|b| {
        b.first_byte_timeout(Some(Duration::from_millis(100)))
            .handshake_timeout(Duration::from_millis(500))
    })
    .await;
    let mut stalled = client(server.local_addr().unwrap()).await;
    stalled.write_all(HELLO_START).await.unwrap();
    expect_reset(&mut stalled).await;
    recorder.wait_secure_released(1).await;
    assert_eq!(
        recorder.ended_with(ClosureReason::HandshakeTimedOut).len(),
        1
    );
    bounded("shutdown", server.shutdown()).await;
}

#[tokio::test]
async fn a_zero_share_and_a_prefix_over_128_are_refused() {
    for (builder, setting) in [
        (
            Server::builder().max_handshakes_per_source(0),
            "max_handshakes_per_source",
        ),
        (
            Server::builder().ipv6_source_prefix(129),
            "ipv6_source_prefix",
        ),
    ] {
        let result = builder.start(Recorder::new(&mut Server::builder())).await;
        assert!(
            matches!(&result, Err(switchboard::Error::InvalidSetting { setting: s, .. }) if *s == setting),
            "{setting}"
        );
    }
}
