//! A server in a child process short of descriptors (guarantee 8, docs/guarantees.md): the test
//! binary re-executes itself under `ulimit -n`, running only an ignored test that calls
//! [`run_child_server`]; the child prints its events on stdout, which the parent reads through
//! [`ChildServer`].

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use switchboard::{async_trait, BytesMut, Callbacks, Connection, Server, UserData};

use super::WAIT;

/// Set in the child's environment: only then does [`run_child_server`] run.
const CHILD_ENV: &str = "SWITCHBOARD_TEST_CHILD";
/// The child's descriptor limit.
pub const CHILD_NOFILE: usize = 64;

/// Echoes and prints one line per event of interest.
struct Printer;

#[async_trait]
impl Callbacks for Printer {
    async fn on_accept_error(&self, error: &std::io::Error) {
        println!("accept_error {}", error.raw_os_error().unwrap_or(-1));
    }
    async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
        println!("established");
        connection.read();
    }
    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        if connection.write(data.freeze()).is_ok() {
            connection.read();
        }
    }
    async fn on_socket_released(&self, _: UserData) {
        println!("released");
    }
}

/// What the child does with its descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descriptors {
    /// Holds every free descriptor but the listener's while its server starts, so the accept
    /// loop gets no spare descriptor (src/reserve.rs) and none for a connection either; gives
    /// them back (and prints "freed") when the parent calls [`ChildServer::free_descriptors`].
    Hoard,
    /// Leaves them to the server.
    Leave,
}

/// The child's side: starts an echo server, prints "port N", then "stats E R A" (accept errors,
/// refused for lack of descriptors, accepted) every 50 ms, and an "established" or "released"
/// line per connection. Returns at once unless this process is a child started by
/// [`ChildServer::start`].
pub async fn run_child_server(descriptors: Descriptors) {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let mut hoard = Vec::new();
    if descriptors == Descriptors::Hoard {
        let exhausted = loop {
            match std::fs::File::open("/") {
                Ok(file) => hoard.push(file),
                Err(error) => break error,
            }
        };
        assert_eq!(exhausted.raw_os_error(), Some(24), "EMFILE expected");
        // One for the listener.
        hoard.pop();
    }
    let server = Server::builder()
        .bind("127.0.0.1:0")
        .start(Printer)
        .await
        .unwrap();
    let (free, freed) = tokio::sync::oneshot::channel();
    if descriptors == Descriptors::Hoard {
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_line(&mut String::new());
            let _ = free.send(());
        });
    }
    // The test harness has printed "test <name> ... " without a newline.
    println!("\nport {}", server.local_addr().unwrap().port());
    let reporter = {
        let server = server.clone();
        tokio::spawn(async move {
            loop {
                let stats = server.stats();
                println!(
                    "stats {} {} {}",
                    stats.accept_errors, stats.refused_no_descriptors, stats.accepted
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // The parent kills this process; the bounds only guard against an orphan.
    tokio::select! {
        Ok(()) = freed => {
            drop(hoard);
            println!("freed");
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        _ = tokio::time::sleep(Duration::from_secs(60)) => {}
    }
    reporter.abort();
}

/// The child's counters, from its last `stats` line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChildStats {
    pub accept_errors: u64,
    pub refused_no_descriptors: u64,
    pub accepted: u64,
}

/// A child's stdout, collected by a thread.
#[derive(Clone, Default)]
pub struct ChildLog(Arc<(Mutex<Collected>, Condvar)>);

/// What the collecting thread has read so far.
#[derive(Default)]
struct Collected {
    lines: Vec<String>,
    /// The output ended: every process holding it closed it (or it failed).
    ended: bool,
}

impl ChildLog {
    /// Collects the lines of `output` on a thread of its own until it ends.
    pub fn collect(output: impl Read + Send + 'static) -> ChildLog {
        let log = ChildLog::default();
        let collector = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines() {
                match line {
                    Ok(line) => collector.push(line),
                    Err(_) => break,
                }
            }
            collector.0 .0.lock().unwrap().ended = true;
            collector.0 .1.notify_all();
        });
        log
    }

    fn push(&self, line: String) {
        self.0 .0.lock().unwrap().lines.push(line);
        self.0 .1.notify_all();
    }

    pub fn lines(&self) -> Vec<String> {
        self.0 .0.lock().unwrap().lines.clone()
    }

    /// The rest of every line that starts with `prefix`, in order.
    pub fn after(&self, prefix: &str) -> Vec<String> {
        self.lines()
            .iter()
            .filter_map(|line| line.strip_prefix(prefix).map(str::to_string))
            .collect()
    }

    /// How many lines are exactly `exact`.
    pub fn count(&self, exact: &str) -> usize {
        self.lines().iter().filter(|l| *l == exact).count()
    }

    /// The child's last reported counters.
    pub fn stats(&self) -> ChildStats {
        self.lines()
            .iter()
            .rev()
            .find_map(|line| {
                let mut fields = line
                    .strip_prefix("stats ")?
                    .split(' ')
                    .map(|n| n.parse::<u64>().ok());
                Some(ChildStats {
                    accept_errors: fields.next()??,
                    refused_no_descriptors: fields.next()??,
                    accepted: fields.next()??,
                })
            })
            .unwrap_or_default()
    }

    /// Whether the output ended: every line the child wrote is in the log.
    pub fn ended(&self) -> bool {
        self.0 .0.lock().unwrap().ended
    }

    /// Waits (at most [`WAIT`]) for `done`; panics with the log if it never holds.
    pub fn wait(&self, what: &str, done: impl Fn(&ChildLog) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; child said: {:?}, last {:?}",
                self.lines()
                    .iter()
                    .filter(|l| !l.starts_with("stats "))
                    .collect::<Vec<_>>(),
                self.stats()
            );
            let lines = self.0 .0.lock().unwrap();
            let _ = self
                .0
                 .1
                .wait_timeout(lines, left.min(Duration::from_millis(50)))
                .unwrap();
        }
    }
}

/// The parent's side: the running child, killed and reaped however the test ends.
pub struct ChildServer {
    child: Child,
    stdin: Option<ChildStdin>,
    pub log: ChildLog,
    pub address: SocketAddr,
}

impl ChildServer {
    /// Re-executes this test binary under `ulimit -n` [`CHILD_NOFILE`], running only the ignored
    /// test `test` (which calls [`run_child_server`]), and waits for its port.
    pub fn start(test: &str) -> ChildServer {
        let exe = std::env::current_exe().unwrap();
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {CHILD_NOFILE} && exec \"$0\" \"$@\""))
            .arg(&exe)
            .args([
                "--exact",
                test,
                "--nocapture",
                "--include-ignored",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start the child");
        let mut server = ChildServer {
            child,
            stdin: None,
            log: ChildLog::default(),
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        server.stdin = server.child.stdin.take();
        server.log = ChildLog::collect(server.child.stdout.take().unwrap());
        server.log.wait("the child's port", |log| {
            log.lines().iter().any(|l| l.starts_with("port "))
        });
        let port: u16 = server
            .log
            .lines()
            .iter()
            .find_map(|l| l.strip_prefix("port ")?.parse().ok())
            .unwrap();
        server.address.set_port(port);
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tells a [`Descriptors::Hoard`] child to give its descriptors back.
    pub fn free_descriptors(&mut self) {
        let stdin = self.stdin.as_mut().expect("the child's stdin");
        stdin.write_all(b"free\n").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
