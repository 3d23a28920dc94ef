//! Echo load for restart tests: client tasks that each connect, echo a message of
//! pseudo-random bytes, verify it and close, in a loop, counting every connection and every
//! failure by kind.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;

use super::{bounded, pattern};

/// How long one step of a client (connect, the echo, the close) may take before the
/// connection counts as failed: far beyond a loaded machine's latency, short of [`super::WAIT`].
const STEP: Duration = Duration::from_secs(10);

/// Failure messages kept for the report (every failure is counted).
const KEPT_FAILURES: usize = 20;

/// What the clients did.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Connections whose echo was verified and that ended cleanly (the server's FIN).
    pub completed: u64,
    /// Connections that failed in any way.
    pub failed: u64,
    pub refused: u64,
    pub reset: u64,
    /// Echoes that came back short (end of stream) or different.
    pub truncated_or_wrong: u64,
    pub timed_out: u64,
    /// Echoed bytes compared equal to what was sent.
    pub bytes_verified: u64,
    /// The first failures, described.
    pub failures: Vec<String>,
    /// The client address (source address and port) of every completed connection, as the
    /// server should see it: through a PROXY protocol balancer too.
    pub sources: Vec<SocketAddr>,
}

impl std::fmt::Display for LoadReport {
    /// The figures a closing note quotes: connections made, completed, failed by kind, bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connections made, {} completed, {} failed (refused {}, reset {}, truncated or \
             wrong {}, timed out {}), {} bytes verified",
            self.completed + self.failed,
            self.completed,
            self.failed,
            self.refused,
            self.reset,
            self.truncated_or_wrong,
            self.timed_out,
            self.bytes_verified
        )
    }
}

impl LoadReport {
    /// Asserts that no connection failed, every echoed byte was verified (`size` per
    /// connection) and each of `clients` completed at least one connection; `context` is shown
    /// with a failure.
    pub fn assert_lossless(&self, clients: usize, size: usize, context: &dyn std::fmt::Debug) {
        assert_eq!(
            self.failed, 0,
            "no connection may fail: {:#?}\n{context:#?}",
            self.failures
        );
        assert_eq!(self.bytes_verified, self.completed * size as u64);
        assert!(
            self.completed >= clients as u64,
            "every client completed connections: {self}"
        );
    }
}

/// Runs a blocking step of a harness (waits on a child's lines and exit) off the runtime's
/// worker threads, which the load's clients need.
pub async fn blocking<T: Send + 'static>(step: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(step)
        .await
        .expect("harness step")
}

#[derive(Default)]
struct Counters {
    completed: AtomicU64,
    refused: AtomicU64,
    reset: AtomicU64,
    truncated_or_wrong: AtomicU64,
    timed_out: AtomicU64,
    other: AtomicU64,
    bytes_verified: AtomicU64,
    failures: Mutex<Vec<String>>,
    /// The client address (source address and port) of every completed connection.
    sources: Mutex<Vec<SocketAddr>>,
}

/// Clients running against one address until [`EchoLoad::stop`].
pub struct EchoLoad {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    tasks: Vec<JoinHandle<()>>,
}

/// How one connection failed.
enum Failure {
    Refused,
    Reset,
    TruncatedOrWrong,
    TimedOut,
    Other,
}

impl EchoLoad {
    /// Starts `clients` client tasks against `address`, each sending `size` bytes per
    /// connection. Client `i` connects from its own loopback address (127.1.x.y), so that the
    /// `TIME_WAIT` its closes leave never exhausts the ephemeral ports of one source address.
    pub fn start(address: SocketAddr, clients: usize, size: usize) -> EchoLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let tasks = (0..clients)
            .map(|client| {
                let stop = stop.clone();
                let counters = counters.clone();
                let source = Ipv4Addr::new(127, 1, (client / 250) as u8, (client % 250 + 1) as u8);
                tokio::spawn(async move {
                    let mut round = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let message = pattern(((client as u64) << 32) | round, size);
                        round += 1;
                        match one_connection(source, address, &message).await {
                            Ok(local) => {
                                counters.sources.lock().unwrap().push(local);
                                counters.completed.fetch_add(1, Ordering::Relaxed);
                                counters
                                    .bytes_verified
                                    .fetch_add(message.len() as u64, Ordering::Relaxed);
                            }
                            Err((failure, description)) => {
                                let counter = match failure {
                                    Failure::Refused => &counters.refused,
                                    Failure::Reset => &counters.reset,
                                    Failure::TruncatedOrWrong => &counters.truncated_or_wrong,
                                    Failure::TimedOut => &counters.timed_out,
                                    Failure::Other => &counters.other,
                                };
                                counter.fetch_add(1, Ordering::Relaxed);
                                let mut failures = counters.failures.lock().unwrap();
                                if failures.len() < KEPT_FAILURES {
                                    failures.push(format!("client {client}: {description}"));
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        EchoLoad {
            stop,
            counters,
            tasks,
        }
    }

    /// Connections completed so far.
    pub fn completed(&self) -> u64 {
        self.counters.completed.load(Ordering::Relaxed)
    }

    /// Connections failed so far.
    pub fn failed(&self) -> u64 {
        self.report_now().failed
    }

    fn report_now(&self) -> LoadReport {
        let c = &self.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let report = LoadReport {
            completed: load(&c.completed),
            refused: load(&c.refused),
            reset: load(&c.reset),
            truncated_or_wrong: load(&c.truncated_or_wrong),
            timed_out: load(&c.timed_out),
            bytes_verified: load(&c.bytes_verified),
            failures: c.failures.lock().unwrap().clone(),
            sources: c.sources.lock().unwrap().clone(),
            failed: 0,
        };
        LoadReport {
            failed: report.refused
                + report.reset
                + report.truncated_or_wrong
                + report.timed_out
                + load(&c.other),
            ..report
        }
    }

    /// Lets every client finish the connection in hand, and reports.
    pub async fn stop(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for task in std::mem::take(&mut self.tasks) {
            bounded("a load client to finish", task)
                .await
                .expect("load client task");
        }
        self.report_now()
    }
}

/// Connect, echo `message`, verify, close (our FIN, then the server's): one connection. Returns
/// the client's own address.
async fn one_connection(
    source: Ipv4Addr,
    address: SocketAddr,
    message: &[u8],
) -> Result<SocketAddr, (Failure, String)> {
    let io_failure = |step: &str, error: std::io::Error| {
        use std::io::ErrorKind::*;
        let failure = match error.kind() {
            ConnectionRefused => Failure::Refused,
            ConnectionReset | ConnectionAborted | BrokenPipe => Failure::Reset,
            UnexpectedEof => Failure::TruncatedOrWrong,
            _ => Failure::Other,
        };
        (failure, format!("{step}: {error}"))
    };
    let timed_out = |step: &str| {
        (
            Failure::TimedOut,
            format!("{step}: no progress in {STEP:?}"),
        )
    };
    let socket = TcpSocket::new_v4().map_err(|e| io_failure("socket", e))?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .map_err(|e| io_failure("bind", e))?;
    let mut stream = tokio::time::timeout(STEP, socket.connect(address))
        .await
        .map_err(|_| timed_out("connect"))?
        .map_err(|e| io_failure("connect", e))?;
    let local = stream
        .local_addr()
        .map_err(|e| io_failure("local address", e))?;
    tokio::time::timeout(STEP, stream.write_all(message))
        .await
        .map_err(|_| timed_out("write"))?
        .map_err(|e| io_failure("write", e))?;
    let mut echoed = vec![0; message.len()];
    tokio::time::timeout(STEP, stream.read_exact(&mut echoed))
        .await
        .map_err(|_| timed_out("read"))?
        .map_err(|e| io_failure("read", e))?;
    if echoed != message {
        return Err((Failure::TruncatedOrWrong, "the echo differs".into()));
    }
    tokio::time::timeout(STEP, stream.shutdown())
        .await
        .map_err(|_| timed_out("shutdown"))?
        .map_err(|e| io_failure("shutdown", e))?;
    let mut rest = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut rest))
        .await
        .map_err(|_| timed_out("the server's FIN"))?
        .map_err(|e| io_failure("the server's FIN", e))?;
    if !rest.is_empty() {
        return Err((
            Failure::TruncatedOrWrong,
            format!("{} bytes more than sent", rest.len()),
        ));
    }
    Ok(local)
}
