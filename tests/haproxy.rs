//! Behind a real HAProxy (Debian's `haproxy`, started here on loopback ports): three
//! `echo_server --proxy-protocol` instances as its servers, with `send-proxy-v2` (each header
//! carrying its CRC32C checksum, which the servers verify) and health checks that send a PROXY
//! `LOCAL` header (`check-send-proxy`, with its checksum too). 200 clients connect → 1 KiB echo → close
//! in a loop for about 20 s while each instance in turn is replaced by a restarted one (the
//! hand-off on SIGUSR2). Required: no refused, reset or truncated client connection, every byte
//! verified, and every instance's events show the clients' own addresses and ports, not
//! HAProxy's.
//!
//! Without `haproxy` on the PATH the test says so and passes, unless
//! `SWITCHBOARD_REQUIRE_HAPROXY` is set (as `.ci/run` sets it, after installing HAProxy): then it
//! fails.
#![cfg(target_os = "linux")]

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// Concurrent clients, as the issue asks.
const CLIENTS: usize = 200;
/// Load before, between and after the three hand-offs: about 20 s in all.
const BETWEEN: Duration = Duration::from_secs(5);
/// Bytes echoed per connection.
const SIZE: usize = 1024;

/// HAProxy's path, or `None` (after saying why) if it is missing and not required.
fn haproxy() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .map(|directory| directory.join("haproxy"))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("SWITCHBOARD_REQUIRE_HAPROXY").is_none(),
            "haproxy is required (SWITCHBOARD_REQUIRE_HAPROXY is set) but not installed"
        );
        eprintln!("skipped: haproxy is not installed (apt-get install haproxy)");
    }
    found
}

/// A port free on 127.0.0.1 a moment ago, for HAProxy's frontend (HAProxy cannot be asked to
/// pick one and say which).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The configuration the guide shows (docs/guide/load_balancers.md), for `frontend` and the given
/// servers.
fn configuration(frontend: SocketAddr, servers: &[SocketAddr]) -> String {
    let mut text = format!(
        "global
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch

frontend echo
    bind {frontend}
    default_backend echo_servers

backend echo_servers
    balance roundrobin
"
    );
    for (i, server) in servers.iter().enumerate() {
        text.push_str(&format!(
            "    server echo{i} {server} send-proxy-v2 proxy-v2-options crc32c check \
             check-send-proxy inter 500ms\n"
        ));
    }
    text
}

/// A running HAProxy, killed when dropped.
struct HaProxy {
    child: Child,
    log: ChildLog,
}

impl HaProxy {
    fn start(binary: &PathBuf, configuration: &str) -> HaProxy {
        let directory =
            std::env::temp_dir().join(format!("switchboard-haproxy-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("haproxy.cfg");
        std::fs::write(&path, configuration).unwrap();
        // -db: stay in the foreground, log to stderr.
        let mut child = Command::new(binary)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start haproxy");
        let log = ChildLog::collect(child.stderr.take().unwrap());
        HaProxy { child, log }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded) until an echo through `frontend` works: HAProxy listens and has seen a server
/// up.
async fn wait_until_serving(frontend: SocketAddr) {
    bounded("HAProxy to serve", async {
        loop {
            if let Ok(Ok(mut stream)) = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(frontend),
            )
            .await
            {
                let trial = echo_round_trip_within(&mut stream, b"ready?").await;
                if trial.as_deref() == Some(&b"ready?"[..]) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// One echo that may fail (HAProxy may close a connection it has no server for yet).
async fn echo_round_trip_within(
    stream: &mut tokio::net::TcpStream,
    message: &[u8],
) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        stream.write_all(message).await.ok()?;
        let mut reply = vec![0; message.len()];
        stream.read_exact(&mut reply).await.ok()?;
        Some(reply)
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// The peer of every `connection_established` line in `log`.
fn established_peers(log: &ChildLog) -> Vec<SocketAddr> {
    log.after("event connection_established ")
        .iter()
        .map(|fields| {
            let peer = fields
                .split(' ')
                .find_map(|field| field.strip_prefix("peer="))
                .unwrap_or_else(|| panic!("no peer in {fields:?}"));
            peer.parse().expect("a socket address")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restarts_behind_haproxy_lose_nothing_and_servers_see_the_clients() {
    let Some(binary) = haproxy() else { return };
    let arguments = [
        "--listen",
        "127.0.0.1:0",
        "--proxy-protocol",
        "--events",
        "--shutdown-timeout",
        "10",
    ];
    let mut servers: Vec<EchoServer> = (0..3).map(|_| EchoServer::start(&arguments)).collect();
    let addresses: Vec<SocketAddr> = servers.iter().map(|server| server.address).collect();
    let frontend = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = configuration(frontend, &addresses);
    let haproxy = HaProxy::start(&binary, &config);
    wait_until_serving(frontend).await;

    let load = EchoLoad::start(frontend, CLIENTS, SIZE);
    for (i, &address) in addresses.iter().enumerate() {
        tokio::time::sleep(BETWEEN).await;
        let before = load.completed();
        let server = servers.remove(i);
        let (server, hand_off) = blocking(move || {
            let mut server = server;
            let hand_off = server.hand_off();
            (server, hand_off)
        })
        .await;
        servers.insert(i, server);
        assert_eq!(
            hand_off.old_status.code(),
            Some(0),
            "instance {i}: the old process exited with {:?}",
            hand_off.old_status
        );
        assert_eq!(hand_off.address, address, "instance {i}: same address");
        println!(
            "instance {i} replaced: pid {} -> {}, the old one reported {}; {} connections \
             completed meanwhile",
            hand_off.old_pid,
            hand_off.new_pid,
            hand_off.shutdown_report,
            load.completed() - before
        );
    }
    tokio::time::sleep(BETWEEN).await;
    let report = load.stop().await;
    println!("{CLIENTS} clients through HAProxy, 3 rolling hand-offs: {report}");
    report.assert_lossless(CLIENTS, SIZE, &haproxy.log.lines());
    drop(haproxy);

    // Every client connection was established at exactly one instance, under the client's own
    // address and port; every other connection is a health check (a LOCAL header: HAProxy's own
    // address, 127.0.0.1, where no client connects from).
    let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
    let mut health_checks = 0;
    for server in servers {
        let (status, server) = blocking(move || {
            let mut server = server;
            (server.stop(), server)
        })
        .await;
        assert_eq!(status.code(), Some(0), "{status:?}");
        for peer in established_peers(&server.log) {
            if peer.ip() == std::net::Ipv4Addr::LOCALHOST {
                health_checks += 1;
            } else {
                *seen.entry(peer).or_default() += 1;
            }
        }
    }
    let mut expected: HashMap<SocketAddr, usize> = HashMap::new();
    for source in &report.sources {
        *expected.entry(*source).or_default() += 1;
    }
    assert!(health_checks > 0, "the health checks were established too");
    assert_eq!(
        seen.values().sum::<usize>(),
        report.sources.len(),
        "one established connection per client connection"
    );
    assert!(
        seen == expected,
        "every client connection shows the client's own address and port at an instance"
    );
    println!(
        "the instances established {} client connections, each under its client's address \
         and port, and {health_checks} health checks",
        report.sources.len()
    );
}
