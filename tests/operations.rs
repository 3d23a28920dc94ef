//! The `echo_server` example as an orchestrator runs it (Linux): a drain window across SIGTERM
//! while a client connects in a tight loop without retrying, with the readiness endpoint; a
//! second SIGTERM that forces the shutdown; and the certificate reloaded on SIGHUP while TLS
//! clients handshake in a loop. See `tests/common/example.rs` for how the example is run.
#![cfg(target_os = "linux")]

mod common;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use switchboard::native_tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The drain window the server is started with: the figure.
const WINDOW: Duration = Duration::from_secs(2);

/// The end of the window that the test does not count on: a connect's clock reading and its SYN
/// can be a scheduling delay apart on a loaded machine. (The server's window opens only once it
/// has the signal, later than the test's clock says, which adds to this.)
const MARGIN: Duration = Duration::from_millis(500);

/// Most connects the loop makes: a few thousand, so that the `TIME_WAIT` they leave on the
/// client side stays small. The loop ends sooner, at the first refusal after the window.
const MAX_CONNECTS: usize = 4000;

/// The least time between two connects of the drain window's loop (tokio's timer resolution):
/// back to back but for that, so that the loop cannot spend [`MAX_CONNECTS`] before the window
/// ends (at most 2,000 fit in it), however fast the machine.
const PACE: Duration = Duration::from_millis(1);

/// The status code of `GET path` on the example's metrics endpoint at `address`.
async fn http_status(address: SocketAddr, path: &str) -> u16 {
    let mut stream = client(address).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    bounded("the request", stream.write_all(request.as_bytes()))
        .await
        .unwrap();
    let (response, end) = read_to_end(&mut stream).await;
    end.expect("the endpoint closes after its answer");
    let response = String::from_utf8_lossy(&response);
    response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// One connect of the loop: connect, echo 64 bytes, FIN, and the server's FIN.
async fn round(address: SocketAddr, n: u64) -> io::Result<()> {
    let mut stream = TcpStream::connect(address).await?;
    let message = pattern(n, 64);
    stream.write_all(&message).await?;
    let mut back = vec![0; message.len()];
    stream.read_exact(&mut back).await?;
    if back != message {
        return Err(io::Error::other("the echo differs"));
    }
    stream.shutdown().await?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await?;
    Ok(())
}

/// A connect of the loop: when it started, and how it went.
struct Attempt {
    started: Instant,
    outcome: io::Result<()>,
}

/// Issue 21, guarantee 21 (docs/guarantees.md): with `--drain-accepting 2`, a client connecting
/// in a tight loop straight to the server, never retrying, is neither refused nor reset until the
/// window ends, across SIGTERM; every connection accepted in the window is served; `/ready`
/// answers 503 from the signal on, while the server still accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_window_refuses_no_connect_until_it_ends() {
    let window = WINDOW.as_secs().to_string();
    let mut server = EchoServer::start(&[
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--drain-accepting",
        &window,
        "--shutdown-timeout",
        "10",
    ]);
    let address = server.address;
    let metrics: SocketAddr = {
        let log = server.log.clone();
        blocking(move || {
            log.wait("the metrics line", |log| {
                !log.after("metrics on ").is_empty()
            });
            log.after("metrics on ")[0].parse().expect("an address")
        })
        .await
    };
    assert_eq!(http_status(metrics, "/ready").await, 200);

    let made = Arc::new(AtomicUsize::new(0));
    let give_up = Arc::new(AtomicBool::new(false));
    let connects = tokio::spawn({
        let (made, give_up) = (made.clone(), give_up.clone());
        async move {
            let mut attempts = Vec::new();
            let mut pace = tokio::time::interval(PACE);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 0..MAX_CONNECTS as u64 {
                if give_up.load(Ordering::Relaxed) {
                    break;
                }
                pace.tick().await;
                let started = Instant::now();
                let outcome = tokio::time::timeout(WAIT, round(address, n))
                    .await
                    .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()));
                let failed = outcome.is_err();
                attempts.push(Attempt { started, outcome });
                made.fetch_add(1, Ordering::Relaxed);
                if failed {
                    break;
                }
            }
            attempts
        }
    });
    eventually("the loop to get going", || {
        made.load(Ordering::Relaxed) >= 50
    })
    .await;

    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    bounded("/ready to answer 503", async {
        while http_status(metrics, "/ready").await != 503 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let not_ready = Instant::now();
    assert_eq!(
        http_status(metrics, "/metrics").await,
        200,
        "/metrics is served as before"
    );
    // The loop ends at its first failure, which should be the listener's close after the window.
    let stop_by = signalled + WINDOW + WAIT;
    let watchdog = tokio::spawn({
        let give_up = give_up.clone();
        async move {
            tokio::time::sleep_until(stop_by.into()).await;
            give_up.store(true, Ordering::Relaxed);
        }
    });
    let attempts = bounded("the connect loop", connects).await.unwrap();
    watchdog.abort();
    let status = blocking(move || {
        let status = server.wait_for_exit();
        (status, server.log.after("event shutdown_complete "))
    })
    .await;

    let window_end = signalled + WINDOW - MARGIN;
    let in_window: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.started >= signalled && a.started < window_end)
        .collect();
    let failed_before_end: Vec<String> = attempts
        .iter()
        .filter(|a| a.started < window_end)
        .filter_map(|a| a.outcome.as_ref().err())
        .map(|error| format!("{:?}: {error}", error.kind()))
        .collect();
    let served_after_not_ready = attempts
        .iter()
        .filter(|a| a.started > not_ready && a.outcome.is_ok())
        .count();
    let last = attempts.last().expect("connects were made");
    let whole_window = |a: &&Attempt| a.started >= signalled && a.started < signalled + WINDOW;
    println!(
        "{} connects: {} before SIGTERM, {} in the window's first {:?} (refused or reset: {}), \
         {} in the whole window (refused or reset: {}); /ready said 503 {:?} after the signal; \
         the loop ended with {:?} {:?} after the signal",
        attempts.len(),
        attempts.iter().filter(|a| a.started < signalled).count(),
        in_window.len(),
        WINDOW - MARGIN,
        failed_before_end.len(),
        attempts.iter().filter(whole_window).count(),
        attempts
            .iter()
            .filter(whole_window)
            .filter(|a| a.outcome.is_err())
            .count(),
        not_ready - signalled,
        last.outcome.as_ref().map_err(io::Error::kind),
        last.started - signalled,
    );
    assert!(
        failed_before_end.is_empty(),
        "connects refused or reset before the window ended: {failed_before_end:?}"
    );
    assert!(
        !in_window.is_empty(),
        "the loop made no connect in the window"
    );
    assert!(
        served_after_not_ready > 0,
        "clients were still served after /ready said 503"
    );
    assert!(
        last.outcome.is_err(),
        "the listener closed after the window (raise MAX_CONNECTS if the loop ran out first)"
    );
    let (status, report) = status;
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(report[0].contains(" forced=0 "), "{report:?}");
}

/// Issue 18: a second SIGTERM during the ordered shutdown (here in a long drain window) forces
/// it: the server resets what is left, reports it as forced and exits, all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_forces_the_shutdown_of_the_example() {
    let mut server = EchoServer::start(&[
        "--listen",
        "127.0.0.1:0",
        "--events",
        "--drain-accepting",
        "3600",
        "--shutdown-timeout",
        "3600",
    ]);
    let mut before = client(server.address).await;
    echo(&mut before, b"before").await;
    server.signal(libc::SIGTERM);
    let log = server.log.clone();
    blocking(move || {
        log.wait("shutdown_initiated", |log| {
            log.count("event shutdown_initiated") == 1
        })
    })
    .await;
    // In the window: still served, old and new.
    let mut during = client(server.address).await;
    echo(&mut during, b"during").await;
    echo(&mut before, b"still").await;

    server.signal(libc::SIGTERM);
    let (status, lines) = blocking(move || {
        let status = server.wait_for_exit();
        (status, server.log.lines())
    })
    .await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        lines
            .iter()
            .any(|line| line == "stop signal during the shutdown: forcing it"),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line == "event all_connections_aborted count=2"),
        "{lines:#?}"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("event shutdown_complete graceful=0 forced=2 other=0"),
        "{lines:#?}"
    );
    for mut stream in [before, during] {
        let (_, end) = read_to_end(&mut stream).await;
        assert_eq!(
            end.map_err(|error| error.kind()),
            Err(io::ErrorKind::ConnectionReset)
        );
    }
}

/// Runs `openssl` with `args` (split at spaces) in `directory`; panics with its output if it
/// fails.
fn openssl(directory: &Path, args: &str) {
    let output = Command::new("openssl")
        .args(args.split(' '))
        .current_dir(directory)
        .output()
        .expect("run openssl (installed by .ci/run)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The serial of the certificate `openssl s_client` is shown at `address`, as
/// `openssl x509 -serial` prints it (`serial=...`).
fn s_client_serial(address: SocketAddr) -> String {
    let s_client = Command::new("openssl")
        .args(["s_client", "-connect", &address.to_string()])
        .args(["-servername", "localhost"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl x509");
    use std::io::Write;
    x509.stdin
        .take()
        .unwrap()
        .write_all(&s_client.stdout)
        .unwrap();
    let output = x509.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "no certificate in s_client's output: {}",
        String::from_utf8_lossy(&s_client.stdout)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Puts `contents` at `path` in one step (a rename), as a deployment tool replaces a file.
fn replace_file(path: &Path, contents: &[u8]) {
    let staging = path.with_extension("new");
    std::fs::write(&staging, contents).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

/// How the loop's handshakes went: which certificate each saw, and how many failed.
#[derive(Default)]
struct Handshakes {
    /// For each handshake in order, whether it saw the new certificate.
    saw_new: Vec<bool>,
    failed: Vec<String>,
}

/// Issue 21, guarantee 22 (docs/guarantees.md): on SIGHUP the example reads its certificate and
/// key again; TLS clients handshaking in a loop meanwhile all succeed, first with the old
/// certificate, then with the new one; a bad file is reported and changes nothing; and
/// `openssl s_client` sees the new certificate's serial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_no_handshake_fails() {
    const SERIAL: &str = "5EED0022";
    let directory = std::env::temp_dir().join(format!("switchboard-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    // A second CA and a localhost leaf from it with a serial of our choosing.
    std::fs::write(
        directory.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &directory,
        "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
         -subj /CN=switchboard-reload-test-CA -keyout new-ca.key -out new-ca.pem \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
    );
    openssl(
        &directory,
        "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
         -keyout new.key -out new.csr",
    );
    openssl(
        &directory,
        &format!(
            "x509 -req -in new.csr -CA new-ca.pem -CAkey new-ca.key -set_serial 0x{SERIAL} \
             -days 2 -extfile leaf.ext -out new.pem"
        ),
    );
    let (cert, key) = (directory.join("cert.pem"), directory.join("key.pem"));
    std::fs::write(&cert, cert_file("server.pem")).unwrap();
    std::fs::write(&key, cert_file("server.key")).unwrap();
    let read = |name: &str| std::fs::read(directory.join(name)).unwrap();
    let new_der = native_tls::Certificate::from_pem(&read("new.pem"))
        .unwrap()
        .to_der()
        .unwrap();

    let mut server = EchoServer::start(&[
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let address = server.address;
    let old_serial = blocking(move || s_client_serial(address)).await;
    assert_ne!(old_serial, format!("serial={SERIAL}"));

    // Clients that trust both CAs, handshaking one after another.
    let mut trusting = connector_builder("ca.pem");
    trusting.add_root_certificate(native_tls::Certificate::from_pem(&read("new-ca.pem")).unwrap());
    let connector = tokio_native_tls::TlsConnector::from(trusting.build().unwrap());
    let handshakes = Arc::new(Mutex::new(Handshakes::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let looping = tokio::spawn({
        let (handshakes, stop) = (handshakes.clone(), stop.clone());
        async move {
            for n in 0..MAX_CONNECTS as u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let attempt = async {
                    let tcp = TcpStream::connect(address).await?;
                    let mut tls = connector.connect("localhost", tcp).await?;
                    let message = pattern(n, 32);
                    tls.write_all(&message).await?;
                    let mut back = vec![0; message.len()];
                    tls.read_exact(&mut back).await?;
                    if back != message {
                        return Err("the echo differs".into());
                    }
                    let der = tls.get_ref().peer_certificate()?.map(|c| c.to_der());
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(match der {
                        Some(der) => der? == new_der,
                        None => false,
                    })
                };
                let outcome = tokio::time::timeout(WAIT, attempt).await;
                let mut handshakes = handshakes.lock().unwrap();
                match outcome {
                    Ok(Ok(saw_new)) => handshakes.saw_new.push(saw_new),
                    Ok(Err(error)) => handshakes.failed.push(error.to_string()),
                    Err(_) => handshakes.failed.push("timed out".into()),
                }
            }
        }
    });
    let count = |handshakes: &Arc<Mutex<Handshakes>>| handshakes.lock().unwrap().saw_new.len();
    eventually("handshakes before the reload", || count(&handshakes) >= 20).await;

    // A bad certificate file: reported, and the old certificate stays.
    replace_file(&cert, b"not a certificate\n");
    server.signal(libc::SIGHUP);
    let log = server.log.clone();
    let failure = blocking(move || {
        log.wait("the failed reload", |log| {
            !log.after("tls reload failed: ").is_empty()
        });
        log.after("tls reload failed: ")[0].clone()
    })
    .await;
    assert!(
        failure.ends_with("keeping the old certificate"),
        "{failure}"
    );
    let before = count(&handshakes);
    eventually("handshakes after the failed reload", || {
        count(&handshakes) >= before + 20
    })
    .await;

    // The renewed pair: the key first, as a deployment tool would, then the certificate.
    replace_file(&key, &read("new.key"));
    replace_file(&cert, &read("new.pem"));
    server.signal(libc::SIGHUP);
    let log = server.log.clone();
    blocking(move || {
        log.wait("the reload", |log| !log.after("tls reloaded").is_empty());
    })
    .await;
    let new_count = |handshakes: &Arc<Mutex<Handshakes>>| {
        handshakes
            .lock()
            .unwrap()
            .saw_new
            .iter()
            .filter(|&&new| new)
            .count()
    };
    eventually("handshakes with the new certificate", || {
        new_count(&handshakes) >= 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    bounded("the handshake loop", looping).await.unwrap();

    let serial = blocking(move || s_client_serial(address)).await;
    let handshakes = std::mem::take(&mut *handshakes.lock().unwrap());
    let old = handshakes.saw_new.iter().filter(|&&new| !new).count();
    let new = handshakes.saw_new.len() - old;
    println!(
        "handshakes during the reloads: {} ({old} with the old certificate, {new} with the new \
         one), failed: {}; s_client after the reload: {serial}",
        handshakes.saw_new.len() + handshakes.failed.len(),
        handshakes.failed.len()
    );
    assert!(
        handshakes.failed.is_empty(),
        "handshakes failed: {:?}",
        handshakes.failed
    );
    let first_new = handshakes.saw_new.iter().position(|&new| new).unwrap();
    assert!(
        handshakes.saw_new[first_new..].iter().all(|&new| new),
        "once the new certificate is served, every later handshake gets it"
    );
    assert!(old >= 40, "{old} handshakes with the old certificate");
    assert_eq!(serial, format!("serial={SERIAL}"));
    let status = blocking(move || server.stop()).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    let _ = std::fs::remove_dir_all(&directory);
}
