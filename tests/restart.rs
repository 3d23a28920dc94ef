//! Zero-downtime restarts of the `echo_server` example (Linux): the hand-off on SIGUSR2 under
//! load, failed hand-offs, and socket activation. The example binary is the one `cargo test`
//! builds; see `tests/common/example.rs` for how it is run and its processes reaped.
#![cfg(target_os = "linux")]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
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
    println!("{CLIENTS} clients, 3 hand-offs: {report}");
    report.assert_lossless(CLIENTS, 1024, &"three hand-offs");
    assert_eq!(
        status.code(),
        Some(0),
        "the last process exited with {status:?}"
    );
    // Not asserted, as it is up to the scheduler: how many connections each old process had
    // in hand when it began to drain (typically about a hundred).
    println!("connections drained by the old processes: {drained:?}");
}

/// Puts a shell script with `body` at `path` (a new file: the running program's file, if one
/// was there, stays as it is for the process running it).
/// Puts a new file at `path`, a copy of `source` made by `cp`, so that no process of this test
/// ever holds the file open for writing. If one did, another test thread forking at that moment
/// would hand its child that descriptor until the child's `exec`, and executing the file
/// meanwhile would fail with `ETXTBSY` ("Text file busy", seen in CI).
fn install_copy(source: &Path, path: &Path) {
    let _ = std::fs::remove_file(path);
    let status = std::process::Command::new("cp")
        .arg(source)
        .arg(path)
        .status()
        .expect("run cp");
    assert!(status.success(), "cp {source:?} {path:?}: {status}");
}

/// Puts a shell script with `body` at `path` (through [`install_copy`]).
fn install_script(path: &Path, body: &str) {
    let staging = path.with_extension("script");
    std::fs::write(&staging, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755)).unwrap();
    install_copy(&staging, path);
}

#[tokio::test]
async fn failed_hand_offs_leave_the_old_process_serving() {
    // The server runs from a copy of the binary, so the test can put a broken "new build" at its
    // path: one that exits at once, then one that never gets ready. Each is reported, the old
    // process serves on, and a good build at the path then takes over.
    let directory =
        std::env::temp_dir().join(format!("switchboard-restart-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let binary = directory.join("echo_server");
    install_copy(&example_binary("echo_server"), &binary);
    let mut command = std::process::Command::new(&binary);
    command.args(["--listen", "127.0.0.1:0", "--upgrade-timeout", "1"]);
    let mut server = EchoServer::spawn(command);
    let pid = server.pid();
    let failed = |server: &EchoServer, n: usize| {
        let log = server.log.clone();
        blocking(move || {
            log.wait("a failed upgrade", |log| {
                log.after("upgrade failed: ").len() >= n
            });
            log.after("upgrade failed: ")[n - 1].clone()
        })
    };

    install_script(&binary, "exit 3");
    server.signal(libc::SIGUSR2);
    let failure = failed(&server, 1).await;
    assert!(
        failure.contains("ended before it was ready") && failure.ends_with("still serving"),
        "{failure}"
    );
    let mut stream = client(server.address).await;
    echo(&mut stream, &pattern(7, 1024)).await;

    install_script(&binary, "exec sleep 30");
    server.signal(libc::SIGUSR2);
    let failure = failed(&server, 2).await;
    assert!(
        failure.contains("not ready within") && failure.ends_with("still serving"),
        "{failure}"
    );
    // The connection made before the failed upgrades is still served.
    echo(&mut stream, &pattern(8, 1024)).await;
    drop(stream);
    assert_eq!(server.pid(), pid);
    assert!(server.log.after("upgrade ready").is_empty());

    install_copy(&example_binary("echo_server"), &binary);
    let (mut server, hand_off) = blocking(move || {
        let hand_off = server.hand_off();
        (server, hand_off)
    })
    .await;
    assert_eq!(hand_off.old_status.code(), Some(0), "{hand_off:?}");
    assert_eq!(hand_off.address, server.address);
    let mut stream = client(server.address).await;
    echo(&mut stream, &pattern(9, 1024)).await;
    drop(stream);
    let status = blocking(move || server.stop()).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    let _ = std::fs::remove_dir_all(&directory);
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
