//! TLS: real OpenSSL (through native-tls) on both ends of loopback connections. Event order for
//! accepted and outgoing TLS connections, certificate and host-name failures, plain text and
//! garbage on a TLS port, handshake timeout and cap, peer alerts, close_notify, the lifecycle
//! guarantees (abort-all, shutdown, callback panics, half-close, the lifetime rule) over TLS, a
//! 200-connection echo, and `openssl s_client` against a switchboard server.
//!
//! The certificates are in `tests/certs` (see `make.sh` there): `ca.pem` is the test CA,
//! `server.pem` a leaf for localhost and 127.0.0.1 signed by it; `other.pem` a leaf from a CA
//! that nothing trusts.

mod common;

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use common::*;
use switchboard::native_tls;
use switchboard::socket2::SockRef;
use switchboard::tls::{TlsAcceptor, TlsConnect};
use switchboard::{
    Bytes, ClosureReason, ConnectionId, Direction, Error, Server, ServerBuilder, TlsInfo,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_native_tls::TlsStream;

// ---------------------------------------------------------------------------------------------
// Event-order checks
// ---------------------------------------------------------------------------------------------

/// The closing events of one TLS connection: exactly one closure (with `reason`), closed,
/// released (with its id) and secure-released, as the last four events, in that order.
fn assert_tls_ending(events: &[Event], id: ConnectionId, reason: ClosureReason) {
    let n = events.len();
    assert!(n >= 4, "too few events for {id}: {events:#?}");
    assert_eq!(
        events[n - 4],
        Event::Closure(id, reason),
        "closure: {events:#?}"
    );
    assert_eq!(events[n - 3], Event::Closed(id), "closed: {events:#?}");
    assert!(
        matches!(events[n - 2], Event::Released(Some(released), _) if released == id),
        "released before secure-released: {events:#?}"
    );
    assert_eq!(
        events[n - 1],
        Event::SecureReleased(id),
        "secure-released last: {events:#?}"
    );
    let closures = events
        .iter()
        .filter(|e| matches!(e, Event::Closure(..)))
        .count();
    assert_eq!(closures, 1, "exactly one closure: {events:#?}");
    let ends = events
        .iter()
        .filter(|e| matches!(e, Event::ClientClose(..) | Event::Reset(..)))
        .count();
    assert!(ends <= 1, "at most one client close or reset: {events:#?}");
}

/// One established TLS connection: negotiation, secure, established first; no TLS failure; then
/// its ending with `reason`.
fn assert_established_tls(
    events: &[Event],
    id: ConnectionId,
    side: Direction,
    reason: ClosureReason,
) {
    assert!(
        matches!(&events[0], Event::Negotiated { id: got, side: s, .. } if *got == id && *s == side),
        "negotiation first: {events:#?}"
    );
    assert!(
        matches!(events[1], Event::Secure(got, _) if got == id),
        "secure second: {events:#?}"
    );
    assert!(
        matches!(events[2], Event::Established(got, _, Some(s)) if got == id && s == side),
        "established third: {events:#?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Fatal { .. } | Event::RemoteFatal { .. })),
        "no TLS failure: {events:#?}"
    );
    assert_tls_ending(events, id, reason);
}

/// A TLS connection that never got established: only `prefix` (its failure callback, if any)
/// then the closing events with `reason`.
fn assert_not_established(
    events: &[Event],
    id: ConnectionId,
    prefix: &[Event],
    reason: ClosureReason,
) {
    assert_eq!(
        events.len(),
        prefix.len() + 4,
        "events of {id}: {events:#?}"
    );
    assert_eq!(
        &events[..prefix.len()],
        prefix,
        "events of {id}: {events:#?}"
    );
    assert_tls_ending(events, id, reason);
}

fn sum_of(events: &[Event], pick: impl Fn(&Event) -> Option<usize>) -> usize {
    events.iter().filter_map(pick).sum()
}

fn bytes_read(events: &[Event]) -> usize {
    sum_of(events, |e| match e {
        Event::Read(_, n) => Some(*n),
        _ => None,
    })
}

fn bytes_written(events: &[Event]) -> usize {
    sum_of(events, |e| match e {
        Event::Written(_, n) => Some(*n),
        _ => None,
    })
}

// ---------------------------------------------------------------------------------------------
// Certificates, servers and clients
// ---------------------------------------------------------------------------------------------

/// The DER of a PEM certificate file, to compare with `TlsInfo::peer_certificate`.
fn der_of(name: &str) -> Vec<u8> {
    native_tls::Certificate::from_pem(&cert_file(name))
        .unwrap()
        .to_der()
        .unwrap()
}

/// The acceptor with the leaf from the CA nobody trusts.
fn untrusted_acceptor() -> TlsAcceptor {
    acceptor_of("other")
}

/// switchboard's outgoing TLS settings: trusts the test CA only, verifies `domain`.
fn tls_connect(domain: &str) -> TlsConnect {
    TlsConnect::with_connector(connector_trusting("ca.pem"), domain)
}

/// A recorder with `behavior` that names every connection in its release, also those that never
/// got established (failed or refused handshakes).
fn tls_recorder(builder: &mut ServerBuilder, behavior: Behavior) -> Recorder {
    Recorder::with_behavior(
        builder,
        Behavior {
            name_every_release: true,
            ..behavior
        },
    )
}

/// Starts a server with a TLS listener on loopback for `acceptor` (none if `None`: a server that
/// only connects out), recording with `behavior`; `configure` sets the rest.
async fn start(
    acceptor: Option<TlsAcceptor>,
    behavior: Behavior,
    configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
) -> (Server, Recorder, SocketAddr) {
    let mut builder = Server::builder();
    let recorder = tls_recorder(&mut builder, behavior);
    if let Some(acceptor) = acceptor {
        builder = builder.bind_tls("127.0.0.1:0", acceptor);
    }
    let server = configure(builder).start(recorder.clone()).await.unwrap();
    let address = server
        .local_addr()
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    (server, recorder, address)
}

/// Waits until the server has deregistered every connection (just after its last event).
async fn no_live_connections(server: &Server) {
    eventually("no live connections", || server.active_connections() == 0).await;
}

type Client = TlsStream<TcpStream>;

/// A raw tokio-native-tls client handshake with `connector` for `domain`. Fails if either the
/// TCP connect (a server that resets at once can beat it) or the handshake does.
async fn try_tls_client(
    address: SocketAddr,
    connector: native_tls::TlsConnector,
    domain: &str,
) -> Result<Client, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = bounded("tcp connect", TcpStream::connect(address)).await?;
    let connector = tokio_native_tls::TlsConnector::from(connector);
    Ok(bounded("client handshake", connector.connect(domain, tcp)).await?)
}

/// A raw tokio-native-tls client that trusts the test CA and verifies "localhost".
async fn tls_client(address: SocketAddr) -> Client {
    try_tls_client(address, connector_trusting("ca.pem"), "localhost")
        .await
        .expect("client handshake")
}

/// The TCP socket under a client's TLS stream.
fn tcp_of(client: &Client) -> &TcpStream {
    client.get_ref().get_ref().get_ref()
}

/// A well-behaved client's goodbye: close_notify and FIN, then the server's close_notify.
async fn finish(mut client: Client) {
    bounded("client close_notify", client.shutdown())
        .await
        .expect("client close_notify");
    SockRef::from(tcp_of(&client))
        .shutdown(Shutdown::Write)
        .expect("client FIN");
    let (rest, end) = read_to_end(&mut client).await;
    assert!(rest.is_empty(), "unexpected data at the end");
    end.expect("the server ends the session with close_notify");
}

/// Whether a raw TCP read ended with a reset.
fn is_reset(result: &io::Result<()>) -> bool {
    matches!(result, Err(e) if e.kind() == io::ErrorKind::ConnectionReset)
}

// ---------------------------------------------------------------------------------------------
// 1. Event order, accepted connection
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_tls_events_come_in_order_around_an_echo() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (server, recorder, address) = start(Some(server_acceptor()), Behavior::echo(), |b| b).await;
    let mut client = tls_client(address).await;
    let client_address = tcp_of(&client).local_addr().unwrap();
    let message = pattern(1, 3000);
    echo(&mut client, &message).await;
    echo(&mut client, b"second message").await;
    finish(client).await;
    recorder.wait_secure_released(1).await;

    // Besides the connection's own events, only the listener's start (on the accept loop's
    // event task, so in no fixed order with the connection's) and the socket's creation.
    let events = recorder.events();
    assert_eq!(
        events
            .iter()
            .filter(|event| **event == Event::StartAccepting)
            .count(),
        1
    );
    let events: Vec<Event> = events
        .into_iter()
        .filter(|event| *event != Event::StartAccepting)
        .collect();
    assert_eq!(events[0], Event::SocketCreated(Direction::Inbound));
    let id = recorder.established()[0];
    let own = recorder.events_of(id);
    assert_eq!(events.len(), own.len() + 1, "{events:#?}");
    assert_eq!(
        own[0],
        Event::Negotiated {
            id,
            side: Direction::Inbound,
            alpn: None,
            // The acceptor asks for no client certificate.
            peer_cert: None,
        }
    );
    assert_eq!(own[1], Event::Secure(id, client_address));
    assert_eq!(
        own[2],
        Event::Established(id, client_address, Some(Direction::Inbound))
    );
    assert_established_tls(&own, id, Direction::Inbound, ClosureReason::PeerClosed);
    let total = message.len() + b"second message".len();
    assert_eq!(bytes_read(&own), total);
    assert_eq!(bytes_written(&own), total);
    // Reads and writes sit between established and the client's close.
    let client_close = position(&own, |e| *e == Event::ClientClose(id));
    assert_eq!(client_close, own.len() - 5, "{own:#?}");
    assert!(own[3..client_close]
        .iter()
        .all(|e| matches!(e, Event::Read(..) | Event::Written(..))));

    let stats = server.stats();
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.closures(ClosureReason::PeerClosed), 1);
    assert_eq!(stats.bytes_read, total as u64);
    assert_eq!(stats.bytes_written, total as u64);
    no_live_connections(&server).await;
    bounded("shutdown", server.shutdown()).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Event order, outgoing connections
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tls_negotiates_as_the_outbound_side_and_sees_the_server_certificate() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (a, a_recorder, address) = start(Some(server_acceptor()), Behavior::echo(), |b| b).await;
    let (b, b_recorder, _) = start(None, Behavior::collect(), |b| b).await;

    let connection = bounded(
        "connect_tls",
        b.connect(address)
            .tls(tls_connect("localhost"))
            .argument("outbound-1".to_string()),
    )
    .await
    .expect("connect_tls");
    assert_eq!(connection.direction(), Direction::Outbound);
    let id = connection.id();
    // Written right away, most likely before the handshake has finished: sent once secure.
    connection
        .write(Bytes::from_static(b"early bytes"))
        .unwrap();
    b_recorder
        .wait_until("the echo", |events| bytes_read(events) >= 11)
        .await;
    assert_eq!(b_recorder.received(id), b"early bytes");
    assert_eq!(
        connection.tls_info().map(TlsInfo::side),
        Some(Direction::Outbound)
    );
    connection.close();
    drop(connection);
    b_recorder.wait_secure_released(1).await;
    a_recorder.wait_secure_released(1).await;

    let events = b_recorder.events();
    assert_eq!(
        events[0],
        Event::PreOutgoingConnect(address, Some("outbound-1".to_string()))
    );
    assert_eq!(events[1], Event::SocketCreated(Direction::Outbound));
    let own = b_recorder.events_of(id);
    assert_eq!(events.len(), own.len() + 2, "{events:#?}");
    assert_eq!(
        own[0],
        Event::Negotiated {
            id,
            side: Direction::Outbound,
            alpn: None,
            peer_cert: Some(der_of(&leaf_certificate("server"))),
        }
    );
    assert_eq!(own[1], Event::Secure(id, address));
    assert_established_tls(&own, id, Direction::Outbound, ClosureReason::LocalClose);
    assert_eq!(
        own.last(),
        Some(&Event::SecureReleased(id)),
        "secure release last"
    );
    assert!(own.contains(&Event::Released(Some(id), Some("outbound-1".to_string()))));
    assert_eq!(bytes_written(&own), 11);

    let a_id = a_recorder.established()[0];
    let a_own = a_recorder.events_of(a_id);
    assert_established_tls(&a_own, a_id, Direction::Inbound, ClosureReason::PeerClosed);
    assert!(a_own.contains(&Event::ClientClose(a_id)));
    assert_eq!(b.stats().connected, 1);
    no_live_connections(&b).await;
    no_live_connections(&a).await;
    bounded("shutdown", b.shutdown()).await;
    bounded("shutdown", a.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_connect_tls_to_a_raw_tls_server_negotiates_alpn_in_order() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let identity = identity("server");
    let acceptor = native_tls::TlsAcceptor::builder(identity)
        .accept_alpn(&["h2"])
        .build()
        .unwrap();
    let greeting = b"hello raw server".to_vec();
    let greeting_len = greeting.len();
    let raw_server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = tokio_native_tls::TlsAcceptor::from(acceptor)
            .accept(tcp)
            .await
            .expect("raw server handshake");
        let alpn = tls.get_ref().negotiated_alpn().unwrap();
        let mut got = vec![0; greeting_len];
        tls.read_exact(&mut got).await.unwrap();
        tls.write_all(b"reply from the raw server").await.unwrap();
        tls.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let end = tls.read_to_end(&mut rest).await.map(|_| ());
        (alpn, got, rest, end)
    });

    let (b, recorder, _) = start(
        None,
        Behavior {
            collect: true,
            greeting: Some(Bytes::from(greeting.clone())),
            ..Behavior::quiet()
        },
        |b| b,
    )
    .await;
    let mut connector = connector_builder("ca.pem");
    connector.request_alpns(&["h2", "http/1.1"]);
    b.connect(address)
        .tls(TlsConnect::with_connector(
            connector.build().unwrap(),
            "localhost",
        ))
        .argument("spawned".to_string())
        .spawn()
        .unwrap();

    let (alpn, got, rest, end) = bounded("raw server", raw_server).await.unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(got, greeting);
    assert!(rest.is_empty());
    end.expect("switchboard ends the session with close_notify");
    recorder.wait_secure_released(1).await;

    let events = recorder.events();
    assert_eq!(
        events[0],
        Event::PreOutgoingConnect(address, Some("spawned".to_string()))
    );
    assert_eq!(events[1], Event::SocketCreated(Direction::Outbound));
    let id = recorder.established()[0];
    let own = recorder.events_of(id);
    assert_eq!(events.len(), own.len() + 2, "{events:#?}");
    assert_eq!(
        own[0],
        Event::Negotiated {
            id,
            side: Direction::Outbound,
            alpn: Some(b"h2".to_vec()),
            peer_cert: Some(der_of(&leaf_certificate("server"))),
        }
    );
    assert_established_tls(&own, id, Direction::Outbound, ClosureReason::PeerClosed);
    assert!(own.contains(&Event::Released(Some(id), Some("spawned".to_string()))));
    assert!(own.contains(&Event::ClientClose(id)));
    assert_eq!(bytes_written(&own), greeting_len);
    assert_eq!(recorder.received(id), b"reply from the raw server");
    assert_eq!(
        recorder.count(|e| matches!(e, Event::OutgoingFailed(..))),
        0
    );
    no_live_connections(&b).await;
    bounded("shutdown", b.shutdown()).await;
}

// ---------------------------------------------------------------------------------------------
// 3, 4, 8. Certificate failures and peer alerts
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_certificate_is_a_fatal_error_and_the_server_gets_the_alert() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (a, a_recorder, address) = start(Some(untrusted_acceptor()), Behavior::echo(), |b| b).await;
    let (b, b_recorder, _) = start(None, Behavior::collect(), |b| b).await;

    // connect_tls returns once TCP is connected; the handshake fails on the connection's task.
    let connection = bounded(
        "connect_tls",
        b.connect(address)
            .tls(tls_connect("localhost"))
            .argument("untrusted".to_string()),
    )
    .await
    .expect("the TCP connect succeeds");
    let id = connection.id();
    b_recorder.wait_secure_released(1).await;
    assert!(connection.is_closing());
    assert!(matches!(
        connection
            .write(Bytes::from_static(b"x"))
            .map_err(Error::from),
        Err(Error::ConnectionClosed)
    ));
    assert!(connection.tls_info().is_none());
    drop(connection);

    // The same through spawn_connect_tls: a failed handshake is no failed connect.
    b.connect(address)
        .tls(tls_connect("localhost"))
        .argument("spawned".to_string())
        .spawn()
        .unwrap();
    b_recorder.wait_secure_released(2).await;
    a_recorder.wait_secure_released(2).await;

    let ended = b_recorder.ended();
    assert_eq!(ended.len(), 2);
    assert_eq!(ended[0], id);
    for (id, argument) in ended.iter().zip(["untrusted", "spawned"]) {
        let own = b_recorder.events_of(*id);
        assert_not_established(
            &own,
            *id,
            &[Event::Fatal {
                id: *id,
                tls: Some(false),
                tls_info: false,
            }],
            ClosureReason::TlsError,
        );
        assert_eq!(
            own[3],
            Event::Released(Some(*id), Some(argument.to_string()))
        );
    }
    let events = b_recorder.events();
    assert_eq!(
        events[0],
        Event::PreOutgoingConnect(address, Some("untrusted".to_string()))
    );
    assert_eq!(events[1], Event::SocketCreated(Direction::Outbound));
    assert!(!events.iter().any(|e| matches!(
        e,
        Event::Negotiated { .. }
            | Event::Secure(..)
            | Event::Established(..)
            | Event::OutgoingFailed(..)
            | Event::RemoteFatal { .. }
            | Event::Error(..)
    )));
    for message in b_recorder.messages() {
        assert!(
            message.to_lowercase().contains("certificate verify failed"),
            "{message}"
        );
    }

    // The server heard the client's alert.
    for id in a_recorder.ended() {
        let own = a_recorder.events_of(id);
        assert_not_established(
            &own,
            id,
            &[Event::RemoteFatal {
                id,
                tls: Some(true),
            }],
            ClosureReason::TlsAlert,
        );
    }
    for message in a_recorder.messages() {
        assert!(message.to_lowercase().contains("alert"), "{message}");
    }
    assert_eq!(b.stats().closures(ClosureReason::TlsError), 2);
    assert_eq!(a.stats().closures(ClosureReason::TlsAlert), 2);
    no_live_connections(&b).await;
    no_live_connections(&a).await;
    bounded("shutdown", b.shutdown()).await;
    bounded("shutdown", a.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_host_name_is_a_fatal_error() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (a, a_recorder, address) = start(Some(server_acceptor()), Behavior::echo(), |b| b).await;
    let (b, b_recorder, _) = start(None, Behavior::collect(), |b| b).await;
    let connection = bounded(
        "connect_tls",
        b.connect(address).tls(tls_connect("wrong.example")),
    )
    .await
    .expect("the TCP connect succeeds");
    let id = connection.id();
    drop(connection);
    b_recorder.wait_secure_released(1).await;
    a_recorder.wait_secure_released(1).await;

    assert_not_established(
        &b_recorder.events_of(id),
        id,
        &[Event::Fatal {
            id,
            tls: Some(false),
            tls_info: false,
        }],
        ClosureReason::TlsError,
    );
    let messages = b_recorder.messages();
    assert!(
        messages[0].to_lowercase().contains("hostname mismatch"),
        "{messages:?}"
    );
    let a_id = a_recorder.ended()[0];
    assert_not_established(
        &a_recorder.events_of(a_id),
        a_id,
        &[Event::RemoteFatal {
            id: a_id,
            tls: Some(true),
        }],
        ClosureReason::TlsAlert,
    );
    bounded("shutdown", b.shutdown()).await;
    bounded("shutdown", a.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_client_that_rejects_the_certificate_is_a_remote_fatal_error() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (server, recorder, address) = start(Some(server_acceptor()), Behavior::echo(), |b| b).await;
    // This client trusts only the other CA.
    let result = try_tls_client(address, connector_trusting("other-ca.pem"), "localhost").await;
    let Err(error) = result else {
        panic!("the client must reject the certificate");
    };
    assert!(
        error.to_string().contains("certificate verify failed"),
        "{error}"
    );
    recorder.wait_secure_released(1).await;
    let id = recorder.ended()[0];
    assert_not_established(
        &recorder.events_of(id),
        id,
        &[Event::RemoteFatal {
            id,
            tls: Some(true),
        }],
        ClosureReason::TlsAlert,
    );
    assert!(
        recorder.messages()[0].contains("unknown ca"),
        "{:?}",
        recorder.messages()
    );

    // The server goes on serving.
    let mut client = tls_client(address).await;
    echo(&mut client, b"still serving").await;
    finish(client).await;
    recorder.wait_secure_released(2).await;
    no_live_connections(&server).await;
    bounded("shutdown", server.shutdown()).await;
}

// ---------------------------------------------------------------------------------------------
// 5. Plain text and garbage
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_and_garbage_on_a_tls_port_are_fatal_errors_and_the_server_goes_on() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (server, recorder, address) = start(Some(server_acceptor()), Behavior::echo(), |b| {
        b.handshake_timeout(Duration::from_secs(10))
    })
    .await;
    let mut bogus_handshake = vec![0x16, 0x03, 0x01, 0x00, 0x40];
    bogus_handshake.extend(pattern(7, 0x40));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "plain HTTP",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        ("random bytes", pattern(42, 4096)),
        ("random bytes, another seed", pattern(4242, 512)),
        ("a handshake record of junk", bogus_handshake),
    ];
    for (i, (name, bytes)) in cases.iter().enumerate() {
        let mut tcp = client(address).await;
        // The server may have given up before everything is written.
        let _ = bounded("bad client write", tcp.write_all(bytes)).await;
        // The server ends the connection by itself (with an alert, FIN or RST): no hang.
        let _ = read_to_end(&mut tcp).await;
        recorder.wait_secure_released(2 * i + 1).await;
        let id = *recorder.ended().last().unwrap();
        assert_not_established(
            &recorder.events_of(id),
            id,
            &[Event::Fatal {
                id,
                tls: Some(false),
                tls_info: false,
            }],
            ClosureReason::TlsError,
        );
        println!("{name}: {}", recorder.messages().last().unwrap());

        // A real client is served right after.
        let mut client = tls_client(address).await;
        echo(&mut client, name.as_bytes()).await;
        finish(client).await;
        recorder.wait_secure_released(2 * i + 2).await;
        let id = *recorder.ended().last().unwrap();
        assert_established_tls(
            &recorder.events_of(id),
            id,
            Direction::Inbound,
            ClosureReason::PeerClosed,
        );
    }
    assert_eq!(recorder.count(|e| matches!(e, Event::Error(..))), 0);
    let stats = server.stats();
    assert_eq!(stats.closures(ClosureReason::TlsError), cases.len() as u64);
    assert_eq!(
        stats.closures(ClosureReason::PeerClosed),
        cases.len() as u64
    );
    assert_eq!(stats.callback_panics, 0);
    no_live_connections(&server).await;
    bounded("shutdown", server.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_does_not_decrypt_is_a_fatal_error() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (server, recorder, address) = start(Some(server_acceptor()), Behavior::echo(), |b| b).await;
    let mut client = tls_client(address).await;
    echo(&mut client, b"before the junk").await;
    // An application-data record header and junk, written under the TLS layer.
    let mut junk = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    junk.extend(pattern(9, 0x40));
    bounded(
        "junk",
        client.get_mut().get_mut().get_mut().write_all(&junk),
    )
    .await
    .unwrap();
    let _ = read_to_end(&mut client).await;
    recorder.wait_secure_released(1).await;
    let id = recorder.established()[0];
    let own = recorder.events_of(id);
    assert_eq!(
        own[own.len() - 5],
        Event::Fatal {
            id,
            tls: Some(false),
            tls_info: true,
        },
        "{own:#?}"
    );
    assert_tls_ending(&own, id, ClosureReason::TlsError);
    assert!(matches!(own[0], Event::Negotiated { .. }));
    assert!(matches!(
        own[2],
        Event::Established(got, _, Some(Direction::Inbound)) if got == id
    ));
    assert!(
        recorder.messages()[0].contains("bad record mac"),
        "{:?}",
        recorder.messages()
    );
    no_live_connections(&server).await;
    bounded("shutdown", server.shutdown()).await;
}

// ---------------------------------------------------------------------------------------------
// 6, 7. Handshake timeout and cap
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_times_out_without_holding_up_others() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    // Short, yet long enough for a few handshakes on a loaded machine.
    let (server, recorder, address) = start(Some(server_acceptor()), Behavior::echo(), |b| {
        b.handshake_timeout(Duration::from_secs(2))
    })
    .await;
    // Connects and sends nothing.
    let mut stalled = client(address).await;
    recorder
        .wait_count("the stalled socket", 1, |e| {
            matches!(e, Event::SocketCreated(_))
        })
        .await;
    // Meanwhile other clients are accepted and negotiate: the handshake is not on the accept
    // loop (were it there, they would wait for the stalled one's timeout).
    let clients: Vec<_> = (0..3u64)
        .map(|i| {
            tokio::spawn(async move {
                let mut client = tls_client(address).await;
                echo(&mut client, &pattern(i, 100)).await;
                client
            })
        })
        .collect();
    let mut served = Vec::new();
    for client in clients {
        served.push(bounded("client", client).await.unwrap());
    }
    assert!(
        recorder
            .ended_with(ClosureReason::HandshakeTimedOut)
            .is_empty(),
        "the others were served while the stalled handshake waited"
    );
    for client in served {
        finish(client).await;
    }
    let (rest, end) = read_to_end(&mut stalled).await;
    assert!(rest.is_empty());
    assert!(is_reset(&end), "the stalled client sees a reset: {end:?}");
    recorder.wait_secure_released(4).await;

    let timed_out = recorder.ended_with(ClosureReason::HandshakeTimedOut);
    assert_eq!(timed_out.len(), 1);
    let stalled_id = timed_out[0];
    assert_not_established(
        &recorder.events_of(stalled_id),
        stalled_id,
        &[],
        ClosureReason::HandshakeTimedOut,
    );
    let established = recorder.established();
    assert_eq!(established.len(), 3);
    for id in established {
        assert_established_tls(
            &recorder.events_of(id),
            id,
            Direction::Inbound,
            ClosureReason::PeerClosed,
        );
    }
    assert_eq!(server.stats().closures(ClosureReason::HandshakeTimedOut), 1);
    no_live_connections(&server).await;
    bounded("shutdown", server.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outgoing_handshake_that_stalls_times_out() {
    if skip_under_wine(&WINE_RESET_READ_AS_EOF) {
        return;
    }
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = silent.local_addr().unwrap();
    let (b, recorder, _) = start(None, Behavior::collect(), |b| {
        b.handshake_timeout(Duration::from_millis(300))
    })
    .await;
    let connection = bounded(
        "connect_tls",
        b.connect(address).tls(tls_connect("localhost")),
    )
    .await
    .unwrap();
    let id = connection.id();
    let (mut peer, _) = bounded("accept", silent.accept()).await.unwrap();
    // The peer reads the ClientHello and answers nothing.
    let (hello, end) = read_to_end(&mut peer).await;
    assert_eq!(hello.first(), Some(&0x16), "a TLS handshake record");
    assert!(is_reset(&end), "the silent peer sees a reset: {end:?}");
    recorder.wait_secure_released(1).await;
    assert_not_established(
        &recorder.events_of(id),
        id,
        &[],
        ClosureReason::HandshakeTimedOut,
    );
    drop(connection);
    bounded("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_cap_refuses_at_once_and_frees_when_stalled_handshakes_end() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (server, recorder, address) = start(Some(server_acceptor()), Behavior::echo(), |b| {
        // One source may hold both slots (its default share of a cap of 2 is 1).
        b.max_concurrent_handshakes(2)
            .max_handshakes_per_source(2)
            .handshake_timeout(Duration::from_secs(2))
    })
    .await;
    // Both begin a ClientHello and stall: mid-handshake, their slots are not given up to a newer
    // connection, as those of connections that say nothing are (tests/handshake_slots.rs).
    let mut stalled = vec![client(address).await, client(address).await];
    for stream in &mut stalled {
        stream.write_all(b"\x16\x03\x01").await.unwrap();
    }
    recorder
        .wait_count("the stalled sockets", 2, |e| {
            matches!(e, Event::SocketCreated(_))
        })
        .await;
    // Let both connections' tasks start their handshakes (a settling pause, not a timing
    // assertion: there is no event for "handshake started").
    tokio::time::sleep(Duration::from_millis(200)).await;

    let refused = try_tls_client(address, connector_trusting("ca.pem"), "localhost").await;
    assert!(refused.is_err(), "a third handshake is refused");
    recorder
        .wait_count("the refusal", 1, |e| matches!(e, Event::SecureReleased(_)))
        .await;
    let refused_ids = recorder.ended_with(ClosureReason::HandshakeLimit);
    assert_eq!(refused_ids.len(), 1, "{:#?}", recorder.events());
    let refused_id = refused_ids[0];
    assert_not_established(
        &recorder.events_of(refused_id),
        refused_id,
        &[],
        ClosureReason::HandshakeLimit,
    );
    // At once: while the two stalled handshakes still hold the slots.
    assert!(recorder
        .ended_with(ClosureReason::HandshakeTimedOut)
        .is_empty());

    for stream in &mut stalled {
        let (_, end) = read_to_end(stream).await;
        assert!(is_reset(&end), "{end:?}");
    }
    recorder.wait_secure_released(3).await;
    let timed_out = recorder.ended_with(ClosureReason::HandshakeTimedOut);
    assert_eq!(timed_out.len(), 2);
    for id in timed_out {
        assert_not_established(
            &recorder.events_of(id),
            id,
            &[],
            ClosureReason::HandshakeTimedOut,
        );
    }
    // The slots are free again.
    let mut client = tls_client(address).await;
    echo(&mut client, b"after the cap").await;
    finish(client).await;
    recorder.wait_secure_released(4).await;
    let stats = server.stats();
    assert_eq!(stats.closures(ClosureReason::HandshakeLimit), 1);
    assert_eq!(stats.closures(ClosureReason::HandshakeTimedOut), 2);
    assert_eq!(stats.closures(ClosureReason::PeerClosed), 1);
    no_live_connections(&server).await;
    bounded("shutdown", server.shutdown()).await;
}

// ---------------------------------------------------------------------------------------------
// 9. close_notify on close()
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_flushes_then_sends_close_notify() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let payload = pattern(3, 200 * 1024);
    let (server, recorder, address) = start(
        Some(server_acceptor()),
        Behavior {
            greeting: Some(Bytes::from(payload.clone())),
            close_after_greeting: true,
            ..Behavior::quiet()
        },
        |b| b,
    )
    .await;
    let mut client = tls_client(address).await;
    let (data, end) = read_to_end(&mut client).await;
    assert_eq!(data.len(), payload.len());
    assert!(data == payload, "the payload arrives intact");
    // Ok(0) from OpenSSL: close_notify arrived (a bare FIN is an "unexpected eof" error).
    end.expect("a clean TLS end");
    drop(client);
    recorder.wait_secure_released(1).await;
    let id = recorder.established()[0];
    let own = recorder.events_of(id);
    assert_established_tls(&own, id, Direction::Inbound, ClosureReason::LocalClose);
    assert!(own.contains(&Event::Written(id, payload.len())));
    no_live_connections(&server).await;
    bounded("shutdown", server.shutdown()).await;
}

// ---------------------------------------------------------------------------------------------
// 10. Lifecycle guarantees over TLS
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_all_resets_connections_during_and_after_the_handshake() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (server, recorder, address) = start(Some(server_acceptor()), Behavior::echo(), |b| b).await;
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_address = silent.local_addr().unwrap();

    let mut stalled = client(address).await;
    let mut clients = Vec::new();
    for i in 0..2u64 {
        let mut client = tls_client(address).await;
        echo(&mut client, &pattern(i, 64)).await;
        clients.push(client);
    }
    let outgoing = bounded(
        "connect_tls",
        server
            .connect(silent_address)
            .tls(tls_connect("localhost"))
            .argument("out".to_string()),
    )
    .await
    .unwrap();
    let (mut peer, _) = bounded("accept", silent.accept()).await.unwrap();
    eventually("four live connections", || server.active_connections() == 4).await;

    let count = bounded("abort all", server.abort_all_connections()).await;
    assert_eq!(count, 4);
    recorder.wait_secure_released(4).await;

    for client in &mut clients {
        let (_, end) = read_to_end(client).await;
        assert!(end.is_err(), "an aborted TLS client sees no clean end");
    }
    let (_, end) = read_to_end(&mut stalled).await;
    assert!(is_reset(&end), "{end:?}");
    let (_, end) = read_to_end(&mut peer).await;
    assert!(is_reset(&end), "{end:?}");
    assert!(matches!(
        outgoing
            .write(Bytes::from_static(b"x"))
            .map_err(Error::from),
        Err(Error::ConnectionClosed)
    ));

    let events = recorder.events();
    let announced = position(&events, |e| *e == Event::AllConnectionsAborted(4));
    let ended = recorder.ended();
    assert_eq!(ended.len(), 4);
    for id in &ended {
        let closure = position(&events, |e| {
            *e == Event::Closure(*id, ClosureReason::AbortAll)
        });
        assert!(
            announced < closure,
            "announced before the closures: {events:#?}"
        );
    }
    let established = recorder.established();
    assert_eq!(established.len(), 2);
    for id in &ended {
        let own = recorder.events_of(*id);
        if established.contains(id) {
            assert_established_tls(&own, *id, Direction::Inbound, ClosureReason::AbortAll);
        } else {
            assert_not_established(&own, *id, &[], ClosureReason::AbortAll);
        }
    }
    assert!(recorder.events_of(outgoing.id()).contains(&Event::Released(
        Some(outgoing.id()),
        Some("out".to_string())
    )));
    assert_eq!(server.stats().closures(ClosureReason::AbortAll), 4);
    no_live_connections(&server).await;
    drop(outgoing);
    bounded("shutdown", server.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_a_cooperating_tls_connection_gracefully() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (server, recorder, address) = start(Some(server_acceptor()), Behavior::echo(), |b| {
        b.shutdown_timeout(Duration::from_secs(10))
    })
    .await;
    let mut client = tls_client(address).await;
    echo(&mut client, b"before the shutdown").await;
    let shutdown = tokio::spawn({
        let server = server.clone();
        async move { server.shutdown().await }
    });
    // The server's close: close_notify, then the client closes its side too.
    let (rest, end) = read_to_end(&mut client).await;
    assert!(rest.is_empty());
    end.expect("close_notify from the server");
    bounded("client close_notify", client.shutdown())
        .await
        .unwrap();
    drop(client);
    let report = bounded("shutdown", shutdown).await.unwrap();
    assert_eq!((report.graceful, report.forced, report.other), (1, 0, 0));

    let events = recorder.events();
    let id = recorder.established()[0];
    assert_eq!(
        events.last(),
        Some(&Event::ShutdownComplete(report)),
        "{events:#?}"
    );
    assert!(
        position(&events, |e| *e == Event::ShutdownInitiated)
            < position(&events, |e| *e == Event::ShutdownRequested(id))
    );
    let own = recorder.events_of(id);
    assert_established_tls(&own, id, Direction::Inbound, ClosureReason::LocalClose);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_forces_tls_connections_that_do_not_end() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (server, recorder, address) = start(
        Some(server_acceptor()),
        Behavior {
            echo: true,
            close_on_shutdown_request: false,
            ..Behavior::quiet()
        },
        |b| b.shutdown_timeout(Duration::from_millis(300)),
    )
    .await;
    let mut client = tls_client(address).await;
    echo(&mut client, b"stays open").await;
    let mut stalled = common::client(address).await;
    eventually("two live connections", || server.active_connections() == 2).await;

    let report = bounded("shutdown", server.shutdown()).await;
    assert_eq!((report.graceful, report.forced, report.other), (0, 2, 0));
    let (_, end) = read_to_end(&mut client).await;
    assert!(end.is_err(), "a forced TLS client sees no clean end");
    let (_, end) = read_to_end(&mut stalled).await;
    assert!(is_reset(&end), "{end:?}");

    let events = recorder.events();
    assert_eq!(events.last(), Some(&Event::ShutdownComplete(report)));
    let announced = position(&events, |e| *e == Event::AllConnectionsAborted(2));
    let id = recorder.established()[0];
    for ended in recorder.ended() {
        let closure = position(&events, |e| {
            *e == Event::Closure(ended, ClosureReason::ShutdownForced)
        });
        assert!(announced < closure);
        let own = recorder.events_of(ended);
        if ended == id {
            assert!(own.contains(&Event::ShutdownRequested(id)));
            assert_established_tls(&own, id, Direction::Inbound, ClosureReason::ShutdownForced);
        } else {
            // Still negotiating: not established, so not asked to finish its work.
            assert_not_established(&own, ended, &[], ClosureReason::ShutdownForced);
        }
    }
    assert_eq!(recorder.ended().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_negotiation_callback_is_caught_and_the_connection_still_released() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    for callback in [
        "on_negotiation_complete",
        "on_secure_connection_established",
    ] {
        let (server, recorder, address) = start(
            Some(server_acceptor()),
            Behavior {
                echo: true,
                panic_in: Some(callback),
                ..Behavior::quiet()
            },
            |b| b,
        )
        .await;
        let mut client = tls_client(address).await;
        let (_, end) = read_to_end(&mut client).await;
        assert!(end.is_err(), "{callback}: the connection is reset");
        recorder.wait_secure_released(1).await;

        let id = recorder.ended()[0];
        let own = recorder.events_of(id);
        let mut expected = vec![Event::Negotiated {
            id,
            side: Direction::Inbound,
            alpn: None,
            peer_cert: None,
        }];
        if callback == "on_secure_connection_established" {
            expected.push(Event::Secure(id, tcp_of(&client).local_addr().unwrap()));
        }
        assert_not_established(&own, id, &expected, ClosureReason::CallbackPanic);
        let events = recorder.events();
        let error = position(
            &events,
            |e| matches!(e, Event::Error(message) if message.contains(callback)),
        );
        assert!(error < position(&events, |e| matches!(e, Event::Closure(..))));
        assert_eq!(server.stats().callback_panics, 1);
        assert_eq!(server.stats().closures(ClosureReason::CallbackPanic), 1);
        drop(client);

        // The server goes on.
        recorder.set_behavior(|b| b.panic_in = None);
        let mut client = tls_client(address).await;
        echo(&mut client, callback.as_bytes()).await;
        finish(client).await;
        recorder.wait_secure_released(2).await;
        no_live_connections(&server).await;
        bounded("shutdown", server.shutdown()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_peer_closes_its_side_the_server_can_still_write() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let reply = b"written after the client's close_notify and FIN";
    let (server, recorder, address) = start(
        Some(server_acceptor()),
        Behavior {
            echo: true,
            reply_on_client_close: Some(Bytes::from_static(reply)),
            ..Behavior::quiet()
        },
        |b| b,
    )
    .await;
    let mut client = tls_client(address).await;
    echo(&mut client, b"request").await;
    // Half-close: close_notify and FIN, then go on reading.
    bounded("client close_notify", client.shutdown())
        .await
        .unwrap();
    SockRef::from(tcp_of(&client))
        .shutdown(Shutdown::Write)
        .unwrap();
    let (rest, end) = read_to_end(&mut client).await;
    assert_eq!(rest, reply);
    end.expect("the server ends the session with close_notify");
    recorder.wait_secure_released(1).await;
    let id = recorder.established()[0];
    let own = recorder.events_of(id);
    assert_established_tls(&own, id, Direction::Inbound, ClosureReason::PeerClosed);
    let client_close = position(&own, |e| *e == Event::ClientClose(id));
    let reply_written = position(&own, |e| *e == Event::Written(id, reply.len()));
    assert!(client_close < reply_written, "{own:#?}");
    no_live_connections(&server).await;
    bounded("shutdown", server.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreferenced_tls_connection_closes_by_itself_with_close_notify() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (server, recorder, address) =
        start(Some(server_acceptor()), Behavior::quiet(), |b| b).await;
    let mut client = tls_client(address).await;
    let (rest, end) = read_to_end(&mut client).await;
    assert!(rest.is_empty());
    end.expect("close_notify");
    drop(client);
    recorder.wait_secure_released(1).await;
    let id = recorder.established()[0];
    let own = recorder.events_of(id);
    assert_eq!(own.len(), 7, "{own:#?}");
    assert_established_tls(&own, id, Direction::Inbound, ClosureReason::Unreferenced);
    no_live_connections(&server).await;
    bounded("shutdown", server.shutdown()).await;
}

// ---------------------------------------------------------------------------------------------
// 11. Many connections
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_tls_echoes_are_byte_exact() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    const CLIENTS: u64 = 200;
    // Every client comes from 127.0.0.1, which would hold one source's share of the handshakes
    // (256 of 512): the share is tests/handshake_slots.rs's, not this test's.
    let (server, recorder, address) = start(Some(server_acceptor()), Behavior::echo(), |b| {
        b.max_handshakes_per_source(CLIENTS as usize)
    })
    .await;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(async move {
                let data = pattern(1000 + i, 2048 + (i as usize * 97) % 4096);
                let mut client = tls_client(address).await;
                let (mut reader, mut writer) = tokio::io::split(&mut client);
                let write = async {
                    for chunk in data.chunks(1500) {
                        writer.write_all(chunk).await.unwrap();
                    }
                };
                let mut reply = vec![0; data.len()];
                let read = reader.read_exact(&mut reply);
                let ((), read) = tokio::join!(write, read);
                read.unwrap();
                assert!(reply == data, "client {i}: echo differs");
                finish(client).await;
                data.len()
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += bounded("client", task).await.unwrap();
    }
    recorder.wait_secure_released(CLIENTS as usize).await;

    let established = recorder.established();
    assert_eq!(established.len(), CLIENTS as usize);
    for id in established {
        assert_established_tls(
            &recorder.events_of(id),
            id,
            Direction::Inbound,
            ClosureReason::PeerClosed,
        );
    }
    let stats = server.stats();
    assert_eq!(stats.accepted, CLIENTS);
    assert_eq!(stats.closures(ClosureReason::PeerClosed), CLIENTS);
    assert_eq!(stats.total_closures(), CLIENTS);
    assert_eq!(stats.bytes_read, total as u64);
    assert_eq!(stats.bytes_written, total as u64);
    no_live_connections(&server).await;
    bounded("shutdown", server.shutdown()).await;
}

// ---------------------------------------------------------------------------------------------
// 12. openssl s_client
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_talks_to_a_switchboard_tls_echo_server() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    if let Err(error) = std::process::Command::new("openssl")
        .arg("version")
        .output()
    {
        if error.kind() == io::ErrorKind::NotFound {
            println!("skipped: no `openssl` binary");
            return;
        }
        panic!("openssl version: {error}");
    }
    let (server, recorder, address) = start(Some(server_acceptor()), Behavior::echo(), |b| b).await;
    let mut child = tokio::process::Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(address.to_string())
        .arg("-CAfile")
        .arg(cert_path("ca.pem"))
        .args(["-servername", "localhost"])
        .args(["-verify_hostname", "localhost"])
        .arg("-verify_return_error")
        .arg("-quiet")
        // -quiet implies -ign_eof; this makes the end of stdin end the session.
        .arg("-no_ign_eof")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn openssl s_client");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    bounded("s_client stdin", stdin.write_all(b"hello from s_client\n"))
        .await
        .unwrap();
    let mut line = String::new();
    bounded("s_client's echo", stdout.read_line(&mut line))
        .await
        .unwrap();
    assert_eq!(line, "hello from s_client\n");
    drop(stdin);
    let status = bounded("s_client exit", child.wait()).await.unwrap();
    assert!(status.success(), "s_client: {status}");

    recorder.wait_secure_released(1).await;
    let id = recorder.established()[0];
    let own = recorder.events_of(id);
    assert_established_tls(&own, id, Direction::Inbound, ClosureReason::PeerClosed);
    assert_eq!(bytes_read(&own), "hello from s_client\n".len());
    no_live_connections(&server).await;
    bounded("shutdown", server.shutdown()).await;
}

// ---------------------------------------------------------------------------------------------
// More: ends of stream, alerts toward an outgoing connection, ALPN, TLS 1.2, flow control
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_fin_without_close_notify_counts_as_the_peer_closing() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (server, recorder, address) = start(Some(server_acceptor()), Behavior::echo(), |b| b).await;
    let mut client = tls_client(address).await;
    echo(&mut client, b"then a FIN without close_notify").await;
    SockRef::from(tcp_of(&client))
        .shutdown(Shutdown::Write)
        .unwrap();
    let (rest, end) = read_to_end(&mut client).await;
    assert!(rest.is_empty());
    end.expect("the server still ends its side with close_notify");
    recorder.wait_secure_released(1).await;
    let id = recorder.established()[0];
    let own = recorder.events_of(id);
    assert_established_tls(&own, id, Direction::Inbound, ClosureReason::PeerClosed);
    assert!(own.contains(&Event::ClientClose(id)));
    no_live_connections(&server).await;
    bounded("shutdown", server.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_reset_on_an_established_tls_connection_is_a_reset() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (server, recorder, address) = start(Some(server_acceptor()), Behavior::echo(), |b| b).await;
    let client = tls_client(address).await;
    let mut client = client;
    echo(&mut client, b"then RST").await;
    SockRef::from(tcp_of(&client))
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    recorder.wait_secure_released(1).await;
    let id = recorder.established()[0];
    let own = recorder.events_of(id);
    assert_established_tls(&own, id, Direction::Inbound, ClosureReason::PeerReset);
    assert_eq!(own[own.len() - 5], Event::Reset(id), "{own:#?}");
    no_live_connections(&server).await;
    bounded("shutdown", server.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_from_the_server_is_a_remote_fatal_error_on_the_outgoing_side() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    // The server insists on TLS 1.3, the client offers at most TLS 1.2: the server refuses with
    // a protocol_version alert.
    let identity = identity("server");
    let acceptor = native_tls::TlsAcceptor::builder(identity)
        .min_protocol_version(Some(native_tls::Protocol::Tlsv13))
        .build()
        .unwrap();
    let (a, a_recorder, address) = start(Some(acceptor.into()), Behavior::echo(), |b| b).await;
    let (b, b_recorder, _) = start(None, Behavior::collect(), |b| b).await;
    let mut connector = connector_builder("ca.pem");
    connector.max_protocol_version(Some(native_tls::Protocol::Tlsv12));
    let tls = TlsConnect::with_connector(connector.build().unwrap(), "localhost");
    let connection = bounded("connect_tls", b.connect(address).tls(tls))
        .await
        .unwrap();
    let id = connection.id();
    drop(connection);
    b_recorder.wait_secure_released(1).await;
    a_recorder.wait_secure_released(1).await;

    assert_not_established(
        &b_recorder.events_of(id),
        id,
        &[Event::RemoteFatal {
            id,
            tls: Some(true),
        }],
        ClosureReason::TlsAlert,
    );
    assert!(
        b_recorder.messages()[0].contains("protocol version"),
        "{:?}",
        b_recorder.messages()
    );
    let a_id = a_recorder.ended()[0];
    assert_not_established(
        &a_recorder.events_of(a_id),
        a_id,
        &[Event::Fatal {
            id: a_id,
            tls: Some(false),
            tls_info: false,
        }],
        ClosureReason::TlsError,
    );
    bounded("shutdown", b.shutdown()).await;
    bounded("shutdown", a.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_is_reported_on_both_sides() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let identity = identity("server");
    let acceptor = native_tls::TlsAcceptor::builder(identity)
        .accept_alpn(&["h2", "http/1.1"])
        .build()
        .unwrap();
    let (a, a_recorder, address) = start(Some(acceptor.into()), Behavior::echo(), |b| b).await;
    let (b, b_recorder, _) = start(None, Behavior::collect(), |b| b).await;
    let mut connector = connector_builder("ca.pem");
    connector.request_alpns(&["http/1.1"]);
    let tls = TlsConnect::with_connector(connector.build().unwrap(), "localhost");
    let connection = bounded("connect_tls", b.connect(address).tls(tls))
        .await
        .unwrap();
    connection.write(Bytes::from_static(b"GET /")).unwrap();
    let id = connection.id();
    b_recorder
        .wait_count("the echo", 1, |e| matches!(e, Event::Read(..)))
        .await;
    assert_eq!(
        connection
            .tls_info()
            .and_then(TlsInfo::alpn_protocol)
            .map(<[u8]>::to_vec),
        Some(b"http/1.1".to_vec())
    );
    connection.close();
    drop(connection);
    b_recorder.wait_secure_released(1).await;
    a_recorder.wait_secure_released(1).await;
    assert!(matches!(
        &b_recorder.events_of(id)[0],
        Event::Negotiated { side: Direction::Outbound, alpn: Some(alpn), .. } if alpn == b"http/1.1"
    ));
    let a_id = a_recorder.established()[0];
    assert!(matches!(
        &a_recorder.events_of(a_id)[0],
        Event::Negotiated { side: Direction::Inbound, alpn: Some(alpn), peer_cert: None, .. }
            if alpn == b"http/1.1"
    ));
    bounded("shutdown", b.shutdown()).await;
    bounded("shutdown", a.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_2_client_gets_the_same_events_and_half_close() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let reply = b"reply after a TLS 1.2 close_notify";
    let (server, recorder, address) = start(
        Some(server_acceptor()),
        Behavior {
            echo: true,
            reply_on_client_close: Some(Bytes::from_static(reply)),
            ..Behavior::quiet()
        },
        |b| b,
    )
    .await;
    let mut connector = connector_builder("ca.pem");
    connector.max_protocol_version(Some(native_tls::Protocol::Tlsv12));
    let mut client = try_tls_client(address, connector.build().unwrap(), "localhost")
        .await
        .expect("TLS 1.2 handshake");
    echo(&mut client, &pattern(12, 20_000)).await;
    bounded("close_notify", client.shutdown()).await.unwrap();
    SockRef::from(tcp_of(&client))
        .shutdown(Shutdown::Write)
        .unwrap();
    let (rest, end) = read_to_end(&mut client).await;
    assert_eq!(rest, reply);
    end.expect("close_notify from the server");
    recorder.wait_secure_released(1).await;
    let id = recorder.established()[0];
    let own = recorder.events_of(id);
    assert_established_tls(&own, id, Direction::Inbound, ClosureReason::PeerClosed);
    assert_eq!(bytes_read(&own), 20_000);
    no_live_connections(&server).await;
    bounded("shutdown", server.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_write_sends_close_notify_and_reading_goes_on() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (server, recorder, address) = start(
        Some(server_acceptor()),
        Behavior {
            collect: true,
            greeting: Some(Bytes::from_static(b"greeting, then close_notify")),
            shutdown_write_after_greeting: true,
            ..Behavior::quiet()
        },
        |b| b,
    )
    .await;
    let mut client = tls_client(address).await;
    let (data, end) = read_to_end(&mut client).await;
    assert_eq!(data, b"greeting, then close_notify");
    end.expect("close_notify after the greeting");
    // The server's side is closed; ours is not.
    bounded(
        "write after the server's close_notify",
        client.write_all(b"still talking"),
    )
    .await
    .unwrap();
    bounded("flush", client.flush()).await.unwrap();
    recorder
        .wait_until("the late data", |events| {
            bytes_read(events) >= b"still talking".len()
        })
        .await;
    bounded("close_notify", client.shutdown()).await.unwrap();
    drop(client);
    recorder.wait_secure_released(1).await;
    let id = recorder.established()[0];
    assert_eq!(recorder.received(id), b"still talking");
    let own = recorder.events_of(id);
    assert_established_tls(&own, id, Direction::Inbound, ClosureReason::PeerClosed);
    no_live_connections(&server).await;
    bounded("shutdown", server.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_and_abort_asked_for_during_an_outgoing_handshake() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    // close(): what was written during the handshake is still sent, then close_notify.
    let (a, a_recorder, address) = start(
        Some(server_acceptor()),
        Behavior {
            collect: true,
            ..Behavior::quiet()
        },
        |b| b,
    )
    .await;
    let (b, b_recorder, _) = start(None, Behavior::collect(), |b| b).await;
    let connection = bounded(
        "connect_tls",
        b.connect(address).tls(tls_connect("localhost")),
    )
    .await
    .unwrap();
    connection
        .write(Bytes::from_static(
            b"written, then closed, before negotiating",
        ))
        .unwrap();
    connection.close();
    let id = connection.id();
    drop(connection);
    b_recorder.wait_secure_released(1).await;
    a_recorder.wait_secure_released(1).await;
    let a_id = a_recorder.established()[0];
    assert_eq!(
        a_recorder.received(a_id),
        b"written, then closed, before negotiating"
    );
    assert_established_tls(
        &a_recorder.events_of(a_id),
        a_id,
        Direction::Inbound,
        ClosureReason::PeerClosed,
    );
    assert_established_tls(
        &b_recorder.events_of(id),
        id,
        Direction::Outbound,
        ClosureReason::LocalClose,
    );

    // abort(): no handshake, a reset.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connection = bounded(
        "connect_tls",
        b.connect(silent.local_addr().unwrap())
            .tls(tls_connect("localhost")),
    )
    .await
    .unwrap();
    let (mut peer, _) = bounded("accept", silent.accept()).await.unwrap();
    connection.abort();
    let id = connection.id();
    let (_, end) = read_to_end(&mut peer).await;
    assert!(is_reset(&end), "{end:?}");
    b_recorder.wait_secure_released(2).await;
    assert_not_established(
        &b_recorder.events_of(id),
        id,
        &[],
        ClosureReason::LocalAbort,
    );
    drop(connection);
    no_live_connections(&b).await;
    bounded("shutdown", b.shutdown()).await;
    bounded("shutdown", a.shutdown()).await;
}

/// Echoes `data` through a TLS client whose socket has a receive buffer of `receive_buffer`
/// bytes (if any), writing and reading at once; asserts the echo and the server's events.
async fn large_echo(
    data: &[u8],
    receive_buffer: Option<u32>,
    configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
) {
    let (server, recorder, address) =
        start(Some(server_acceptor()), Behavior::echo(), configure).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let tcp = bounded("connect", socket.connect(address)).await.unwrap();
    let connector = tokio_native_tls::TlsConnector::from(connector_trusting("ca.pem"));
    let mut client = bounded("handshake", connector.connect("localhost", tcp))
        .await
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(&mut client);
    let write = async {
        for chunk in data.chunks(7000) {
            writer.write_all(chunk).await.unwrap();
        }
    };
    let mut reply = vec![0; data.len()];
    let read = reader.read_exact(&mut reply);
    let ((), read) = bounded("large echo", async { tokio::join!(write, read) }).await;
    read.unwrap();
    assert!(reply == data, "the echo differs");
    finish(client).await;
    recorder.wait_secure_released(1).await;
    let id = recorder.established()[0];
    let own = recorder.events_of(id);
    assert_established_tls(&own, id, Direction::Inbound, ClosureReason::PeerClosed);
    assert_eq!(bytes_read(&own), data.len());
    assert_eq!(bytes_written(&own), data.len());
    no_live_connections(&server).await;
    bounded("shutdown", server.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_tls_echo_through_a_small_write_queue_is_byte_exact() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    large_echo(&pattern(77, 2 * 1024 * 1024), None, |b| {
        b.write_queue_limit(16 * 1024).read_buffer_size(3000)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_echo_to_a_client_with_a_tiny_receive_buffer_is_byte_exact() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    // Many small buffers queued while the socket is full: TLS writes are retried after
    // "would block" with more buffers gathered behind the same front.
    large_echo(&pattern(78, 512 * 1024), Some(4096), |b| {
        b.write_queue_limit(8 * 1024).read_buffer_size(700)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_tcp_connect_for_tls_ends_with_on_socket_released() {
    // Nothing listens there: the connection never exists, so (as documented for failed
    // connects) on_socket_released is the last event and no TLS event runs.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let (b, recorder, _) = start(None, Behavior::collect(), |b| b).await;
    let result = b
        .connect(closed)
        .tls(tls_connect("localhost"))
        .argument("refused".to_string())
        .await;
    assert!(matches!(result, Err(Error::Connect { .. })), "{result:?}");
    b.connect(closed)
        .tls(tls_connect("localhost"))
        .argument("spawned".to_string())
        .spawn()
        .unwrap();
    recorder
        .wait_count("two releases", 2, |e| matches!(e, Event::Released(..)))
        .await;
    let events = recorder.events();
    assert_eq!(events.len(), 7, "{events:#?}");
    assert_eq!(
        events[..5],
        [
            Event::PreOutgoingConnect(closed, Some("refused".to_string())),
            Event::SocketCreated(Direction::Outbound),
            Event::Released(None, Some("refused".to_string())),
            Event::PreOutgoingConnect(closed, Some("spawned".to_string())),
            Event::SocketCreated(Direction::Outbound),
        ]
    );
    assert!(
        matches!(&events[5], Event::OutgoingFailed(address, _, _) if *address == closed),
        "{events:#?}"
    );
    assert_eq!(
        events[6],
        Event::Released(None, Some("spawned".to_string()))
    );
    assert_eq!(b.stats().connect_failures, 2);
    bounded("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_tls_listeners_side_by_side() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    // `tls` applies to listeners added with `bind` before it too.
    let mut builder = Server::builder();
    let recorder = tls_recorder(&mut builder, Behavior::echo());
    let server = builder
        .bind("127.0.0.1:0")
        .tls(server_acceptor())
        .start(recorder.clone())
        .await
        .unwrap();
    let mut client = tls_client(server.local_addr().unwrap()).await;
    echo(&mut client, b"tls set after bind").await;
    finish(client).await;
    recorder.wait_secure_released(1).await;
    bounded("shutdown", server.shutdown()).await;

    // A plain listener beside a TLS one: only the TLS connection has TLS events.
    let mut builder = Server::builder();
    let recorder = tls_recorder(&mut builder, Behavior::echo());
    let server = builder
        .bind("127.0.0.1:0")
        .bind_tls("127.0.0.1:0", server_acceptor())
        .start(recorder.clone())
        .await
        .unwrap();
    let [plain_address, tls_address] = server.local_addrs() else {
        panic!("two listeners");
    };
    let mut plain = common::client(*plain_address).await;
    bounded("plain write", plain.write_all(b"plain"))
        .await
        .unwrap();
    let mut reply = [0; 5];
    bounded("plain echo", plain.read_exact(&mut reply))
        .await
        .unwrap();
    assert_eq!(&reply, b"plain");
    bounded("plain FIN", plain.shutdown()).await.unwrap();
    let (rest, end) = read_to_end(&mut plain).await;
    assert!(rest.is_empty());
    end.unwrap();
    recorder
        .wait_count("the plain release", 1, |e| matches!(e, Event::Released(..)))
        .await;
    let plain_id = recorder.established()[0];
    let own = recorder.events_of(plain_id);
    assert!(
        matches!(own[0], Event::Established(id, _, None) if id == plain_id),
        "{own:#?}"
    );
    assert!(matches!(own.last(), Some(Event::Released(Some(id), _)) if *id == plain_id));
    assert!(!own.iter().any(|e| matches!(
        e,
        Event::Negotiated { .. } | Event::Secure(..) | Event::SecureReleased(..)
    )));

    let mut client = tls_client(*tls_address).await;
    echo(&mut client, b"tls beside plain").await;
    finish(client).await;
    recorder.wait_secure_released(1).await;
    let tls_id = recorder.established()[1];
    assert_established_tls(
        &recorder.events_of(tls_id),
        tls_id,
        Direction::Inbound,
        ClosureReason::PeerClosed,
    );
    no_live_connections(&server).await;
    bounded("shutdown", server.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_closes_or_resets_during_the_handshake_is_no_tls_failure() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (server, recorder, address) = start(Some(server_acceptor()), Behavior::echo(), |b| b).await;
    // Connects and closes (a port scanner, a health check): the peer closed.
    let closing = client(address).await;
    recorder
        .wait_count("the closing socket", 1, |e| {
            matches!(e, Event::SocketCreated(_))
        })
        .await;
    drop(closing);
    recorder.wait_secure_released(1).await;
    // Sends half a ClientHello, then resets: the peer reset.
    let mut resetting = client(address).await;
    resetting
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
        .await
        .unwrap();
    recorder
        .wait_count("the resetting socket", 2, |e| {
            matches!(e, Event::SocketCreated(_))
        })
        .await;
    SockRef::from(&resetting)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(resetting);
    recorder.wait_secure_released(2).await;

    let closed = recorder.ended_with(ClosureReason::PeerClosed);
    let reset = recorder.ended_with(ClosureReason::PeerReset);
    assert_eq!(closed.len(), 1, "{:#?}", recorder.events());
    assert_eq!(reset.len(), 1, "{:#?}", recorder.events());
    for (id, reason) in [
        (closed[0], ClosureReason::PeerClosed),
        (reset[0], ClosureReason::PeerReset),
    ] {
        assert_not_established(&recorder.events_of(id), id, &[], reason);
    }
    no_live_connections(&server).await;
    bounded("shutdown", server.shutdown()).await;
}

// ---------------------------------------------------------------------------------------------
// 13. Replacing a listener's acceptor (certificate reload)
// ---------------------------------------------------------------------------------------------

/// The DER of the certificate a client's server presented.
fn presented(client: &Client) -> Vec<u8> {
    client
        .get_ref()
        .peer_certificate()
        .unwrap()
        .expect("a server certificate")
        .to_der()
        .unwrap()
}

/// Guarantee 22 (docs/guarantees.md): a replaced acceptor serves the handshakes that follow, on
/// the listeners it was given to; connections established before keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_acceptor_serves_new_handshakes_and_leaves_established_ones_alone() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let (server, _recorder, first) = start(Some(server_acceptor()), Behavior::echo(), |builder| {
        builder
            .bind_tls("127.0.0.1:0", server_acceptor())
            .bind("127.0.0.1:0")
    })
    .await;
    let [_, second, plain] = server.local_addrs() else {
        panic!("three listeners: {:?}", server.local_addrs());
    };
    let (second, plain) = (*second, *plain);
    let server_der = der_of(&leaf_certificate("server"));
    let other_der = der_of(&leaf_certificate("other"));
    let mut established = tls_client(first).await;
    echo(&mut established, b"before").await;
    assert_eq!(presented(&established), server_der);

    // One listener.
    server
        .set_tls_acceptor_at(second, acceptor_of("other"))
        .expect("a TLS listener there");
    let mut client = try_tls_client(second, connector_trusting("other-ca.pem"), "localhost")
        .await
        .expect("a handshake with the new certificate");
    assert_eq!(presented(&client), other_der);
    echo(&mut client, b"new").await;
    let client = tls_client(first).await;
    assert_eq!(
        presented(&client),
        server_der,
        "the other listener kept its own"
    );
    drop(client);

    // Every TLS listener.
    server
        .set_tls_acceptor(acceptor_of("other"))
        .expect("TLS listeners");
    let client = try_tls_client(first, connector_trusting("other-ca.pem"), "localhost")
        .await
        .expect("a handshake with the new certificate");
    assert_eq!(presented(&client), other_der);
    drop(client);
    echo(&mut established, b"still served").await;
    assert_eq!(presented(&established), server_der);

    // Nothing to replace: an error, and nothing changes.
    let error = server
        .set_tls_acceptor_at(plain, server_acceptor())
        .unwrap_err();
    assert!(matches!(error, Error::InvalidSetting { .. }), "{error}");
    let plain_only = Server::builder()
        .bind("127.0.0.1:0")
        .start(Recorder::new(&mut Server::builder()))
        .await
        .unwrap();
    let error = plain_only.set_tls_acceptor(server_acceptor()).unwrap_err();
    assert!(matches!(error, Error::InvalidSetting { .. }), "{error}");
    plain_only.shutdown().await;
    finish(established).await;
    server.shutdown().await;
}
