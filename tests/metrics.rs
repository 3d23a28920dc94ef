//! The metrics a server exports through the `metrics` facade, read exactly from a recorder of the
//! test's own ([`MetricsRecorder`]), over the embedded connection of `switchboard::testing` (real
//! loopback connections for outgoing connects, TLS, the PROXY protocol and labels): every count moves with its
//! twin in `Server::stats()`, every closure reason and refusal cause has its series, the TLS
//! handshake is timed, the application's labels tell servers apart.

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::*;
use metrics::Unit;
use switchboard::proxy::ProxyProtocol;
use switchboard::{
    Callbacks, ClosureReason, Error, LimitPolicy, Listener, Server, ServerBuilder, Stats,
};
use tokio::io::AsyncWriteExt;

const ACTIVE: &str = "switchboard_connections_active";
const ACCEPTED: &str = "switchboard_connections_accepted_total";
const CONNECTED: &str = "switchboard_connections_connected_total";
const CONNECT_FAILURES: &str = "switchboard_connect_failures_total";
const REFUSED: &str = "switchboard_connections_refused_total";
const CLOSED: &str = "switchboard_connections_closed_total";
const BYTES_READ: &str = "switchboard_bytes_read_total";
const BYTES_WRITTEN: &str = "switchboard_bytes_written_total";
const ACCEPT_ERRORS: &str = "switchboard_accept_errors_total";
const CALLBACK_PANICS: &str = "switchboard_callback_panics_total";
const WRITE_QUEUE_HIGH: &str = "switchboard_write_queue_high_total";
const LINGERING_PEERS: &str = "switchboard_lingering_peers_total";
const TLS_HANDSHAKE: &str = "switchboard_tls_handshake_duration_seconds";
const PROXY_HEADER: &str = "switchboard_proxy_header_duration_seconds";

/// The label every server of these tests is started with.
const SERVER: (&str, &str) = ("server", "test");

fn labelled(builder: ServerBuilder) -> ServerBuilder {
    builder.metrics_labels([SERVER])
}

/// A counter of the test server, with one more label if given; panics if it is not registered.
fn counter(metrics: &MetricsRecorder, name: &str, extra: Option<(&str, &str)>) -> u64 {
    let labels: Vec<(&str, &str)> = std::iter::once(SERVER).chain(extra).collect();
    metrics
        .counter(name, &labels)
        .unwrap_or_else(|| panic!("{name} {labels:?} not registered: {:?}", metrics.series()))
}

fn active(metrics: &MetricsRecorder) -> f64 {
    metrics
        .gauge(ACTIVE, &[SERVER])
        .expect("the active gauge is registered")
}

/// Asserts that every metric says what `stats` says (taken while nothing moves).
fn assert_metrics_match(metrics: &MetricsRecorder, stats: &Stats) {
    let pairs = [
        (ACCEPTED, None, stats.accepted),
        (CONNECTED, None, stats.connected),
        (CONNECT_FAILURES, None, stats.connect_failures),
        (REFUSED, Some(("cause", "at_limit")), stats.refused_at_limit),
        (REFUSED, Some(("cause", "per_ip")), stats.refused_per_ip),
        (
            REFUSED,
            Some(("cause", "no_descriptors")),
            stats.refused_no_descriptors,
        ),
        (BYTES_READ, None, stats.bytes_read),
        (BYTES_WRITTEN, None, stats.bytes_written),
        (ACCEPT_ERRORS, None, stats.accept_errors),
        (CALLBACK_PANICS, None, stats.callback_panics),
        (WRITE_QUEUE_HIGH, None, stats.write_queue_high),
        (LINGERING_PEERS, None, stats.lingering_peers),
    ];
    for (name, extra, expected) in pairs {
        assert_eq!(
            counter(metrics, name, extra),
            expected,
            "{name} {extra:?} against {stats:?}"
        );
    }
    for &reason in ClosureReason::ALL {
        let reason_label = reason.to_string();
        assert_eq!(
            counter(metrics, CLOSED, Some(("reason", &reason_label))),
            stats.closures(reason),
            "{CLOSED} for {reason}"
        );
    }
    assert_eq!(active(metrics), stats.active as f64, "{ACTIVE}");
}

/// Waits until no connection of `server` is live (deregistered, not only released).
async fn until_idle(server: &Server) {
    eventually("no live connection", || server.stats().active == 0).await;
}

/// Every series exists from the start, at zero: one per closure reason (named by its `Display`,
/// so a reason added later is covered), one per refusal cause; with Prometheus units.
#[tokio::test(start_paused = true)]
async fn every_series_is_registered_at_start_with_its_unit() {
    let metrics = MetricsRecorder::default();
    let mut builder = labelled(Server::builder());
    let recorder = Recorder::new(&mut builder);
    let server = metrics.start_embedded(builder, recorder).await.unwrap();
    assert_metrics_match(&metrics, &server.stats());
    let series = metrics.series();
    assert_eq!(
        series.iter().filter(|s| s.starts_with(CLOSED)).count(),
        ClosureReason::ALL.len(),
        "{series:#?}"
    );
    for histogram in [TLS_HANDSHAKE, PROXY_HEADER] {
        assert_eq!(metrics.histogram(histogram, &[SERVER]), Some(vec![]));
        assert_eq!(metrics.unit(histogram), Some(Some(Unit::Seconds)));
    }
    for bytes in [BYTES_READ, BYTES_WRITTEN] {
        assert_eq!(metrics.unit(bytes), Some(Some(Unit::Bytes)));
    }
    assert_eq!(metrics.unit(ACCEPTED), Some(Some(Unit::Count)));
    server.shutdown().await;
}

/// Known load: five connections, four of which echo three messages each and close; the counts,
/// the bytes, the gauge and the closures by reason follow, and equal the stats at every step.
#[tokio::test(start_paused = true)]
async fn connections_bytes_and_closures_are_counted_as_the_stats_count_them() {
    const CLIENTS: u64 = 4;
    const MESSAGES: u64 = 3;
    const SIZE: usize = 100;
    let metrics = MetricsRecorder::default();
    let mut builder = labelled(Server::builder());
    let recorder = Recorder::new(&mut builder);
    let server = metrics
        .start_embedded(builder, recorder.clone())
        .await
        .unwrap();

    let held = server.accept(peer_addr(0)).await.unwrap();
    recorder.id_of_peer(&held).await;
    assert_eq!(active(&metrics), 1.0);
    for client_number in 0..CLIENTS {
        let mut stream = server
            .accept(peer_addr(1 + client_number as u16))
            .await
            .unwrap();
        for message in 0..MESSAGES {
            echo_peer(&mut stream, &pattern(client_number * 10 + message, SIZE)).await;
        }
        stream.shutdown_write();
        let (rest, ended) = peer_read_to_end(&mut stream).await;
        assert!(rest.is_empty() && ended.is_ok(), "{ended:?}");
    }
    recorder.wait_released(CLIENTS as usize).await;
    eventually("one live connection", || server.stats().active == 1).await;

    let stats = server.stats();
    let echoed = CLIENTS * MESSAGES * SIZE as u64;
    assert_eq!(stats.accepted, CLIENTS + 1);
    assert_eq!(stats.closures(ClosureReason::PeerClosed), CLIENTS);
    assert_eq!((stats.bytes_read, stats.bytes_written), (echoed, echoed));
    assert_metrics_match(&metrics, &stats);
    assert_eq!(counter(&metrics, ACCEPTED, None), CLIENTS + 1);
    assert_eq!(
        counter(&metrics, CLOSED, Some(("reason", "peer_closed"))),
        CLIENTS
    );
    assert_eq!(counter(&metrics, BYTES_READ, None), echoed);
    assert_eq!(active(&metrics), 1.0);

    held.reset();
    until_idle(server.server()).await;
    let stats = server.stats();
    assert_eq!(stats.closures(ClosureReason::PeerReset), 1);
    assert_metrics_match(&metrics, &stats);
    assert_eq!(active(&metrics), 0.0);
    recorder.assert_no_errors();
    server.shutdown().await;
}

/// Outgoing connections: an established one counts as connected (and, here, accepted by the
/// same server), a refused connect as a connect failure.
#[tokio::test]
async fn outgoing_connects_and_their_failures_are_counted() {
    let metrics = MetricsRecorder::default();
    let mut builder = labelled(Server::builder().bind("127.0.0.1:0"));
    let recorder = Recorder::new(&mut builder);
    let server = metrics.start(builder, recorder.clone()).await.unwrap();
    let address = server.local_addr().unwrap();

    let connection = bounded("connect", server.connect(address)).await.unwrap();
    recorder
        .wait_count("both ends established", 2, |e| {
            matches!(e, Event::Established(..))
        })
        .await;
    let failed = bounded("failed connect", server.connect(closed_port())).await;
    assert!(matches!(failed, Err(Error::Connect { .. })), "{failed:?}");
    let stats = server.stats();
    assert_eq!((stats.connected, stats.accepted), (1, 1));
    assert_eq!(stats.connect_failures, 1);
    assert_metrics_match(&metrics, &stats);
    assert_eq!(active(&metrics), 2.0);

    connection.abort();
    drop(connection);
    until_idle(&server).await;
    assert_metrics_match(&metrics, &server.stats());
    server.shutdown().await;
}

/// Refusals by cause: a client over the per-address cap (accepted, then closed with
/// `per_ip_limit`), and one over the connection limit (reset at once).
#[tokio::test(start_paused = true)]
async fn refusals_are_counted_by_cause() {
    let metrics = MetricsRecorder::default();
    let mut builder = labelled(
        Server::builder()
            .max_connections(2)
            .at_limit(LimitPolicy::AcceptAndClose)
            .max_connections_per_ip(1),
    );
    let recorder = Recorder::new(&mut builder);
    let server = metrics
        .start_embedded(builder, recorder.clone())
        .await
        .unwrap();
    let from = |last: u8| SocketAddr::from(([127, 0, 0, last], 40000));

    let first = server.accept(from(1)).await.unwrap();
    recorder.id_of_peer(&first).await;
    let mut over_cap = server.accept(from(1)).await.unwrap();
    let (data, _) = peer_read_to_end(&mut over_cap).await;
    assert!(data.is_empty());
    eventually("the refused one deregistered", || {
        let stats = server.stats();
        stats.closures(ClosureReason::PerIpLimit) == 1 && stats.active == 1
    })
    .await;
    let third = server.accept(from(2)).await.unwrap();
    recorder.id_of_peer(&third).await;
    // Refused as a socket is: a reset, without a refusal message.
    let mut at_limit = server.accept(from(3)).await.unwrap();
    let (data, end) = peer_read_to_end(&mut at_limit).await;
    assert!(data.is_empty());
    assert_eq!(end.unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);
    eventually("the refusal at the limit", || {
        server.stats().refused_at_limit == 1
    })
    .await;

    let stats = server.stats();
    assert_eq!((stats.refused_per_ip, stats.refused_at_limit), (1, 1));
    // The one over the per-address cap was accepted (and closed); the one over the limit not.
    assert_eq!((stats.accepted, stats.active), (3, 2));
    assert_metrics_match(&metrics, &stats);
    assert_eq!(counter(&metrics, REFUSED, Some(("cause", "per_ip"))), 1);
    assert_eq!(counter(&metrics, REFUSED, Some(("cause", "at_limit"))), 1);
    assert_eq!(
        counter(&metrics, CLOSED, Some(("reason", "per_ip_limit"))),
        1
    );
    drop((first, third));
    until_idle(server.server()).await;
    assert_metrics_match(&metrics, &server.stats());
    server.shutdown().await;
}

/// A write queue that reaches its high watermark, and a callback that panics.
#[tokio::test(start_paused = true)]
async fn write_queue_highs_and_callback_panics_are_counted() {
    let metrics = MetricsRecorder::default();
    let mut builder = labelled(Server::builder());
    let recorder = Recorder::with_behavior(
        &mut builder,
        Behavior {
            keep_handles: true,
            fill: Some(10_000),
            ..Behavior::quiet()
        },
    );
    let server = metrics
        .start_embedded(builder, recorder.clone())
        .await
        .unwrap();

    let filled = server.accept(peer_addr(1)).await.unwrap();
    filled.set_receive_window(0);
    let id = recorder.id_of_peer(&filled).await;
    recorder
        .wait_for(
            "the write queue high",
            |event| matches!(event, Event::WriteBufferHigh(of, _) if *of == id),
        )
        .await;
    recorder.handle(id).abort();
    recorder.wait_release_of(id).await;
    drop(filled);

    recorder.set_behavior(|behavior| {
        *behavior = Behavior {
            panic_in: Some("on_read_completed"),
            ..Behavior::echo()
        }
    });
    let mut panicking = server.accept(peer_addr(2)).await.unwrap();
    panicking.send(b"boom").unwrap();
    let _ = peer_read_to_end(&mut panicking).await;
    until_idle(server.server()).await;

    let stats = server.stats();
    assert!(stats.write_queue_high >= 1, "{stats:?}");
    assert_eq!(stats.callback_panics, 1);
    assert_eq!(stats.closures(ClosureReason::CallbackPanic), 1);
    assert_metrics_match(&metrics, &stats);
    server.shutdown().await;
}

/// Each completed TLS handshake records its duration, in seconds: one value, no longer than the
/// client saw from its connect to the first echo.
#[tokio::test]
async fn tls_handshakes_are_timed_in_seconds() {
    if skip_under_wine(&WINE_NO_TLS_SERVER) {
        return;
    }
    let metrics = MetricsRecorder::default();
    let mut builder = labelled(Server::builder().bind("127.0.0.1:0").tls(server_acceptor()));
    let recorder = Recorder::new(&mut builder);
    let server = metrics.start(builder, recorder.clone()).await.unwrap();
    let address = server.local_addr().unwrap();

    let started = Instant::now();
    let tcp = client(address).await;
    let mut stream = bounded("handshake", tls_connector().connect("localhost", tcp))
        .await
        .unwrap();
    echo(&mut stream, b"secure").await;
    let seen = started.elapsed().as_secs_f64();
    let timings = metrics.histogram(TLS_HANDSHAKE, &[SERVER]).unwrap();
    assert_eq!(timings.len(), 1, "{timings:?}");
    assert!(
        timings[0] > 0.0 && timings[0] <= seen,
        "{timings:?} vs {seen}"
    );
    assert_metrics_match(&metrics, &server.stats());
    drop(stream);
    recorder.wait_secure_released(1).await;
    server.shutdown().await;
}

/// A PROXY protocol header read is timed in seconds; a refused one counts as its closure reason.
#[tokio::test]
async fn proxy_headers_are_timed_and_refusals_counted() {
    let metrics = MetricsRecorder::default();
    let settings = ProxyProtocol::new().trust("127.0.0.0/8".parse().unwrap());
    let mut builder =
        labelled(Server::builder().listen(Listener::bind("127.0.0.1:0").proxy_protocol(settings)));
    let recorder = Recorder::new(&mut builder);
    let server = metrics.start(builder, recorder.clone()).await.unwrap();
    let address = server.local_addr().unwrap();

    let started = Instant::now();
    let mut good = client(address).await;
    good.write_all(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\n")
        .await
        .unwrap();
    echo(&mut good, b"through").await;
    let seen = started.elapsed().as_secs_f64();
    let mut bad = client(address).await;
    bad.write_all(b"PROXY nonsense\r\n").await.unwrap();
    let _ = read_to_end(&mut bad).await;
    recorder.wait_released(1).await;

    let timings = metrics.histogram(PROXY_HEADER, &[SERVER]).unwrap();
    assert_eq!(
        timings.len(),
        1,
        "only the accepted header is timed: {timings:?}"
    );
    assert!(
        timings[0] >= 0.0 && timings[0] <= seen,
        "{timings:?} vs {seen}"
    );
    assert_eq!(
        counter(&metrics, CLOSED, Some(("reason", "proxy_protocol"))),
        1
    );
    assert_metrics_match(&metrics, &server.stats());
    drop(good);
    recorder.wait_released(2).await;
    server.shutdown().await;
}

/// The application's labels tell two servers of one process apart.
#[tokio::test]
async fn labels_tell_servers_apart() {
    let metrics = MetricsRecorder::default();
    let mut servers = Vec::new();
    for name in ["a", "b"] {
        let mut builder = Server::builder()
            .bind("127.0.0.1:0")
            .metrics_labels([("server", name)]);
        let recorder = Recorder::new(&mut builder);
        servers.push((
            metrics.start(builder, recorder.clone()).await.unwrap(),
            recorder,
        ));
    }
    let (a, a_recorder) = &servers[0];
    let mut stream = client(a.local_addr().unwrap()).await;
    echo(&mut stream, b"to a").await;
    drop(stream);
    a_recorder.wait_released(1).await;
    assert_eq!(metrics.counter(ACCEPTED, &[("server", "a")]), Some(1));
    assert_eq!(metrics.counter(ACCEPTED, &[("server", "b")]), Some(0));
    assert_eq!(metrics.counter(BYTES_READ, &[("server", "a")]), Some(4));
    for (server, _) in &servers {
        server.shutdown().await;
    }
}

struct Nothing;
impl Callbacks for Nothing {}

/// Label names are checked at start: Prometheus's syntax, no duplicates, and not the server's
/// own `cause` and `reason`.
#[tokio::test]
async fn bad_label_names_are_refused_at_start() {
    for labels in [
        vec![("reason", "x")],
        vec![("cause", "x")],
        vec![("1st", "x")],
        vec![("with-dash", "x")],
        vec![("__reserved", "x")],
        vec![("", "x")],
        vec![("server", "a"), ("server", "b")],
    ] {
        let started = Server::builder()
            .bind("127.0.0.1:0")
            .metrics_labels(labels.clone())
            .start(Nothing)
            .await;
        assert!(
            matches!(
                started,
                Err(Error::InvalidSetting {
                    setting: "metrics_labels",
                    ..
                })
            ),
            "{labels:?}: {started:?}"
        );
    }
}
