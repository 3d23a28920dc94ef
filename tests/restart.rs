//! Zero-downtime restarts of the `echo_server` example (Linux): the hand-off on SIGUSR2 under
//! load, a failed hand-off, and socket activation. The example binary is the one `cargo test`
//! builds; see `tests/common/example.rs` for how it is run and its processes reaped.
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Concurrent client tasks during the rolling hand-off: the figure. On the 2-core
/// development machine the test process (clients) and the server share the cores, and each
/// round trip takes a few milliseconds, so 200 loop fine.
const CLIENTS: usize = 200;

/// How long the load runs between hand-offs: long enough that many connections are in flight
/// at every hand-off, short enough that the test stays within about 15 s.
const BETWEEN: Duration = Duration::from_secs(2);

/// The `graceful=N forced=N other=N` of a shutdown report line, as numbers.
fn report_fields(line: &str) -> (u64, u64, u64) {
    let field = |name: &str| -> u64 {
        line.split(' ')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    (field("graceful"), field("forced"), field("other"))
}

/// Runs a blocking step of the harness (waits on the child's lines and exit) off the runtime's
/// worker threads, which the load's clients need.
async fn blocking<T: Send + 'static>(step: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(step)
        .await
        .expect("harness step")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hand_offs_under_load_lose_no_connection() {
    let mut server = EchoServer::start(&["--listen", "127.0.0.1:0", "--shutdown-timeout", "10"]);
    let address = server.address;
    let load = EchoLoad::start(address, CLIENTS, 1024);
    let mut drained = Vec::new();
    for round in 1..=3 {
        tokio::time::sleep(BETWEEN).await;
        let before = load.completed();
        let (back, hand_off) = blocking(move || {
            let hand_off = server.hand_off();
            (server, hand_off)
        })
        .await;
        server = back;
        let after = load.completed();
        assert_eq!(
            hand_off.old_status.code(),
            Some(0),
            "round {round}: the old process {} exited with {:?}",
            hand_off.old_pid,
            hand_off.old_status
        );
        assert_eq!(hand_off.address, address, "round {round}: the same address");
        let (graceful, forced, other) = report_fields(&hand_off.shutdown_report);
        assert_eq!(
            (forced, other),
            (0, 0),
            "round {round}: the old process drained every connection gracefully: {}",
            hand_off.shutdown_report
        );
        assert!(
            after > before,
            "round {round}: connections went on completing during the hand-off"
        );
        drained.push(graceful);
        println!(
            "hand-off {round}: pid {} -> {}; the old process drained {graceful} connections; \
             {} connections completed during the hand-off",
            hand_off.old_pid,
            hand_off.new_pid,
            after - before
        );
    }
    tokio::time::sleep(BETWEEN).await;
    let report = load.stop().await;
    let status = blocking(move || server.stop()).await;
    println!(
        "{CLIENTS} clients, 3 hand-offs: {} connections made, {} completed, {} failed \
         (refused {}, reset {}, truncated or wrong {}, timed out {}), {} bytes verified",
        report.completed + report.failed,
        report.completed,
        report.failed,
        report.refused,
        report.reset,
        report.truncated_or_wrong,
        report.timed_out,
        report.bytes_verified
    );
    assert_eq!(
        report.failed, 0,
        "no connection may fail: {:#?}",
        report.failures
    );
    assert_eq!(report.bytes_verified, report.completed * 1024);
    assert!(
        report.completed >= CLIENTS as u64,
        "every client completed connections: {report:?}"
    );
    assert_eq!(
        status.code(),
        Some(0),
        "the last process exited with {status:?}"
    );
    assert!(
        drained.iter().all(|&n| n > 0),
        "each old process had connections to drain: {drained:?}"
    );
}

#[tokio::test]
async fn a_failed_hand_off_leaves_the_old_process_serving() {
    // A new process that cannot be ready in time (a microsecond) is killed; the old one goes on.
    let mut server =
        EchoServer::start(&["--listen", "127.0.0.1:0", "--upgrade-timeout", "0.000001"]);
    let pid = server.pid();
    server.signal(libc::SIGUSR2);
    let log = server.log.clone();
    blocking(move || {
        log.wait("the failed upgrade", |log| {
            !log.after("upgrade failed: ").is_empty()
        })
    })
    .await;
    let failure = &server.log.after("upgrade failed: ")[0];
    assert!(failure.ends_with("still serving"), "{failure}");
    assert!(server.log.after("upgrade ready").is_empty());
    let mut stream = client(server.address).await;
    echo(&mut stream, &pattern(7, 1024)).await;
    drop(stream);
    assert_eq!(server.pid(), pid);
    let status = blocking(move || server.stop()).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test]
async fn socket_activation_adopts_descriptor_3_in_place_of_listen() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    // `--listen` names a port that is taken: it must not be used.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_address = taken.local_addr().unwrap().to_string();
    let mut server = EchoServer::start_activated(&["--listen", &taken_address], &listener);
    drop(listener);
    assert_eq!(server.listening_on(), [address]);
    let mut stream = client(address).await;
    echo(&mut stream, &pattern(8, 1024)).await;
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    bounded("the server's FIN", stream.read_to_end(&mut rest))
        .await
        .unwrap();
    let status = blocking(move || server.stop()).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    drop(taken);
}
