//! The `echo_server` example (or another one, [`EchoServer::start_example`]) as a child process
//! (Linux): the built binary, its stdout lines with bounded waits, signals, and its hand-off
//! restarts. After a hand-off the serving process
//! is a descendant, not a child, of the test: [`EchoServer::start`] makes the test process a
//! child subreaper, so each old process's exit status can still be collected here.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{ChildLog, WAIT};

/// The path of an example built for this test run: `cargo test` builds the examples next to the
/// test binaries (`target/<profile>/deps/<test>` → `target/<profile>/examples/<name>`).
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds it (`cargo build --examples` does too)",
        path.display()
    );
    path
}

/// Sends `signal` (e.g. `libc::SIGTERM`) to process `pid`.
pub fn send_signal(pid: u32, signal: libc::c_int) {
    // SAFETY: `kill` takes two integers and touches no memory of ours.
    let result = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(
        result,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

/// Makes this process the reaper of its orphaned descendants (Linux's
/// `PR_SET_CHILD_SUBREAPER`), so that a process started by a child that has exited becomes this
/// process's child and can be waited for. Idempotent.
pub fn become_subreaper() {
    // SAFETY: `prctl` with integer arguments only; this option touches no memory of ours.
    let result = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(
        result,
        0,
        "PR_SET_CHILD_SUBREAPER: {}",
        std::io::Error::last_os_error()
    );
}

/// Waits (at most [`WAIT`]) for process `pid`, a child of this one or an orphan it reaps (see
/// [`become_subreaper`]), to exit; reaps it and returns how it ended. A descendant whose parent
/// still runs is not ours to wait for yet: the wait goes on until it is.
pub fn wait_for_exit(pid: u32) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut status = 0;
        // SAFETY: `waitpid` writes the status into the local integer it is given.
        let result = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
        if result == pid as libc::pid_t {
            return ExitStatus::from_raw(status);
        }
        let error = std::io::Error::last_os_error();
        assert!(
            result == 0 || error.raw_os_error() == Some(libc::ECHILD),
            "waitpid({pid}): {error}"
        );
        assert!(
            Instant::now() < deadline,
            "process {pid} did not exit within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running `echo_server` and the processes that replaced it by hand-off. Whatever the test
/// does, every process it started is killed and reaped when this is dropped.
pub struct EchoServer {
    /// The process the test started.
    first: Option<Child>,
    /// Its stdout, shared by every process that replaced it.
    pub log: ChildLog,
    /// The first listener's address, as the first `listening on` line says.
    pub address: SocketAddr,
    /// The process that serves now.
    pid: u32,
}

/// What a hand-off did.
#[derive(Debug)]
pub struct HandOff {
    pub old_pid: u32,
    pub new_pid: u32,
    /// How the old process ended.
    pub old_status: ExitStatus,
    /// The new process's `listening on` address.
    pub address: SocketAddr,
    /// The old process's `event shutdown_complete ...` line, after the event name.
    pub shutdown_report: String,
}

impl EchoServer {
    /// A command for the built `echo_server` with `args`.
    pub fn command(args: &[&str]) -> Command {
        Self::example_command("echo_server", args)
    }

    /// A command for the built example `name` with `args`.
    pub fn example_command(name: &str, args: &[&str]) -> Command {
        let mut command = Command::new(example_binary(name));
        command.args(args);
        command
    }

    /// A command for the built example `name` with `args`, run with its address space limited to
    /// `bytes` (`ulimit -v`): a shell sets the limit and then becomes the example (`exec`), so
    /// the process started is the example itself, and an allocation past the limit fails in it.
    pub fn example_command_with_address_space(name: &str, args: &[&str], bytes: u64) -> Command {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -v {} && exec \"$0\" \"$@\"", bytes / 1024))
            .arg(example_binary(name))
            .args(args);
        command
    }

    /// Starts `echo_server` with `args` and waits for its `listening on` line.
    pub fn start(args: &[&str]) -> EchoServer {
        Self::spawn(Self::command(args))
    }

    /// Starts the example `name` (a server that prints `listening on ADDR` first, as
    /// `echo_server` does) with `args` and waits for that line.
    pub fn start_example(name: &str, args: &[&str]) -> EchoServer {
        Self::spawn(Self::example_command(name, args))
    }

    /// Starts `echo_server` with `args` as systemd's socket activation would: `listener` at
    /// descriptor 3, `LISTEN_FDS=1`.
    pub fn start_activated(args: &[&str], listener: &std::net::TcpListener) -> EchoServer {
        let mut command = Self::command(args);
        command.env("LISTEN_FDS", "1").env_remove("LISTEN_PID");
        let source: RawFd = listener.as_raw_fd();
        // SAFETY: the closure runs in the forked child before `exec`, where only
        // async-signal-safe calls are allowed and nothing may allocate: it calls `fcntl` and
        // `dup2` on integers it captured by copy, and builds an error from `errno` without
        // allocating. `listener` is open in this process until `spawn` returns, so the fork's
        // copy of the descriptor is valid. The copy above 3 keeps `dup2` from being asked to
        // place a descriptor onto itself, which would leave it close-on-exec.
        unsafe {
            command.pre_exec(move || {
                let above = libc::fcntl(source, libc::F_DUPFD_CLOEXEC, 4);
                if above == -1 || libc::dup2(above, 3) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self::spawn(command)
    }

    /// Starts `command` (an `echo_server`, or another example that prints `listening on`
    /// first), collecting its stdout, and waits for its `listening on` line.
    pub fn spawn(mut command: Command) -> EchoServer {
        become_subreaper();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start the example");
        let log = ChildLog::collect(child.stdout.take().unwrap());
        let pid = child.id();
        let mut server = EchoServer {
            first: Some(child),
            log,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid,
        };
        server.log.wait("the example's listening line", |log| {
            !log.after("listening on ").is_empty()
        });
        server.address = server.listening_on()[0];
        server
    }

    /// Every address of every `listening on` line so far, in order.
    pub fn listening_on(&self) -> Vec<SocketAddr> {
        self.log
            .after("listening on ")
            .iter()
            .map(|address| address.parse().expect("an address"))
            .collect()
    }

    /// The process that serves now.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` to the process that serves now.
    pub fn signal(&self, signal: libc::c_int) {
        send_signal(self.pid, signal);
    }

    /// Waits for `process` (the first one or one started by a hand-off) to exit and reaps it.
    fn reap(&mut self, process: u32) -> ExitStatus {
        if let Some(first) = self.first.as_mut().filter(|first| first.id() == process) {
            let deadline = Instant::now() + WAIT;
            loop {
                if let Some(status) = first.try_wait().expect("try_wait") {
                    self.first = None;
                    // Its last lines may still be on their way to the log: with no process
                    // started by a hand-off sharing its output, the output ends with it.
                    if self.log.after("upgrade started pid=").is_empty() {
                        self.log
                            .wait("the end of the example's output", ChildLog::ended);
                    }
                    return status;
                }
                assert!(
                    Instant::now() < deadline,
                    "echo_server {process} did not exit within {WAIT:?}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        wait_for_exit(process)
    }

    /// Restarts by hand-off: SIGUSR2 to the serving process, then waits for the new process to
    /// serve (the old one's `upgrade ready pid=N`, the new one's `listening on`) and for the
    /// old one to drain and exit.
    pub fn hand_off(&mut self) -> HandOff {
        let old_pid = self.pid;
        let ready_before = self.log.after("upgrade ready pid=").len();
        let listening_before = self.listening_on().len();
        let reports_before = self.log.after("event shutdown_complete ").len();
        self.signal(libc::SIGUSR2);
        self.log.wait("upgrade ready", |log| {
            log.after("upgrade ready pid=").len() > ready_before
        });
        let new_pid: u32 = self.log.after("upgrade ready pid=")[ready_before]
            .parse()
            .expect("a pid");
        self.pid = new_pid;
        // The new process prints its address before it tells the old one it is ready.
        let address = *self
            .listening_on()
            .get(listening_before)
            .expect("the new process's listening line");
        let old_status = self.reap(old_pid);
        self.log.wait("the old process's shutdown report", |log| {
            log.after("event shutdown_complete ").len() > reports_before
        });
        let shutdown_report = self.log.after("event shutdown_complete ")[reports_before].clone();
        HandOff {
            old_pid,
            new_pid,
            old_status,
            address,
            shutdown_report,
        }
    }

    /// SIGTERM to the serving process; waits for it to exit and returns how it ended.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.reap(self.pid)
    }

    /// Waits for the serving process to exit (told to by the test already) and returns how it
    /// ended.
    pub fn wait_for_exit(&mut self) -> ExitStatus {
        self.reap(self.pid)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(mut first) = self.first.take() {
            let _ = first.kill();
            let _ = first.wait();
        }
        // Every process a hand-off started (`upgrade started` names each, ready or not), oldest
        // first: once one is killed and reaped, the processes it started are this process's
        // children, killed in turn.
        for pid in self.log.after("upgrade started pid=") {
            if let Ok(pid) = pid.parse() {
                kill_if_child(pid);
            }
        }
    }
}

/// Kills and reaps `pid` if it is a running child of this process. Only a child is touched: its
/// pid cannot have been reused, as it stays taken until the child is reaped.
fn kill_if_child(pid: u32) {
    let pid = pid as libc::pid_t;
    let mut status = 0;
    // SAFETY: as in `wait_for_exit`.
    if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == 0 {
        // SAFETY: as in `send_signal`; then as in `wait_for_exit`.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut status, 0);
        }
    }
}
