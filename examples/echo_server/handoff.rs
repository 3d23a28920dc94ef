//! The hand-off restart (unix): on `SIGUSR2` the running server starts a fresh copy of itself
//! that inherits the listening sockets, waits until the copy says it is serving, and only then
//! stops accepting and drains, as nginx's binary upgrade and Cloudflare's `shellflip` do.
//!
//! - The listening sockets go to the new process as descriptors 3, 4, ... with `LISTEN_FDS` set
//!   to their number: the socket activation convention, so the new process adopts them through
//!   the same `listenfd` path as under systemd. `LISTEN_PID` is left out, which `listenfd`
//!   accepts (systemd sets it to the new process's id, which the old one cannot know before
//!   the exec without work the child side of a fork may not do).
//! - The new process's stdin is one end of a socket pair whose other end the old process
//!   reads; `ECHO_SERVER_HANDOFF` in its environment tells it so. Once its server has started
//!   it writes one byte there. Passing the channel as stdin needs no descriptor number in the
//!   environment and no `unsafe` to take it over on the new side; an echo server reads nothing
//!   from stdin. If the new process exits first, the old one reads end-of-file at once.
//! - Until then the old process accepts as before, and a new process that fails (exits, or is
//!   not ready within the upgrade timeout) is killed while the old one keeps serving: a failed
//!   upgrade never takes the service down.
//! - The socket itself is never closed (the new process holds it before the old one lets go of
//!   its own descriptor), so a client that connects at any moment waits in the one accept queue
//!   for whichever process accepts first.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use switchboard::Server;
use tokio::io::AsyncReadExt;

use crate::say;

/// Set in the new process's environment: its stdin is the channel to the old process.
pub(crate) const HANDOFF_ENV: &str = "ECHO_SERVER_HANDOFF";

/// The first descriptor of socket activation (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// Most listeners handed over: the descriptors travel into the forked child in a fixed array,
/// as the code that runs there may not allocate.
const MAX_LISTENERS: usize = 16;

/// Starts a copy of this program (`exe`, this process's arguments) with the server's listeners
/// and waits, at most `timeout`, until its server has started; returns its process id. The
/// server keeps accepting meanwhile. On any failure the new process, if it was started, is
/// killed and reaped.
///
/// # Cancel safety
/// Dropping the future kills the new process unless it was ready.
pub(crate) async fn hand_off(server: &Server, exe: &Path, timeout: Duration) -> io::Result<u32> {
    let listeners = server.listeners()?;
    if listeners.is_empty() || listeners.len() > MAX_LISTENERS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} listeners; a hand-off takes 1 to {MAX_LISTENERS}",
                listeners.len()
            ),
        ));
    }
    let count = listeners.len();
    let mut sources = [-1; MAX_LISTENERS];
    for (source, listener) in sources.iter_mut().zip(&listeners) {
        *source = listener.as_raw_fd();
    }
    let (ours, theirs) = UnixStream::pair()?;
    let mut command = Command::new(exe);
    command
        .args(std::env::args_os().skip(1))
        .env("LISTEN_FDS", count.to_string())
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("LISTEN_FDS_FIRST_FD")
        .env(HANDOFF_ENV, "1")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    // SAFETY: the closure runs in the forked child between `fork` and `exec`, where only
    // async-signal-safe functions may be called and nothing may allocate (another thread of
    // this multi-threaded process may have held the allocator's lock at the fork).
    // `place_listeners` calls only `fcntl` and `dup2`, both async-signal-safe in POSIX, reads
    // `errno` on failure (`io::Error::last_os_error` builds an error from the number without
    // allocating), and touches nothing but the closure's own captures: a fixed array of
    // descriptor numbers and a count, plain integers copied into it, and a stack array. The
    // descriptors are valid in the child: `listeners` keeps them open in this process until
    // after `spawn` returns, and the fork copies the descriptor table.
    unsafe {
        command.pre_exec(move || place_listeners(&sources[..count]));
    }
    let child = command.spawn()?;
    // The parent's copies: the listeners (the new process has its own now) and the new
    // process's end of the channel, so that its exit shows here as end-of-file.
    drop(command);
    drop(listeners);
    let child = KillUnlessReady(Some(child));
    let pid = child.id();
    say(format_args!("upgrade started pid={pid}"));
    ours.set_nonblocking(true)?;
    let mut ours = tokio::net::UnixStream::from_std(ours)?;
    let mut byte = [0; 1];
    match tokio::time::timeout(timeout, ours.read(&mut byte)).await {
        Ok(Ok(1)) => {
            child.ready();
            Ok(pid)
        }
        Ok(Ok(_)) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the new process (pid {pid}) ended before it was ready"),
        )),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the new process (pid {pid}) was not ready within {timeout:?}; killed"),
        )),
    }
}

/// In the forked child: puts `sources` at descriptors 3, 4, ... without close-on-exec. Each is
/// first copied above that range, so that placing one never overwrites another still to be
/// placed (a source may already sit at 3 or 4); those copies are close-on-exec and vanish at
/// the exec. `dup2` onto a different number clears close-on-exec on the new descriptor, which
/// `dup2` onto the same number (a source already at its place) would not do: the copy above
/// the range avoids that case too.
fn place_listeners(sources: &[RawFd]) -> io::Result<()> {
    let above = FIRST_FD + sources.len() as RawFd;
    let mut copies = [-1; MAX_LISTENERS];
    for (copy, &source) in copies.iter_mut().zip(sources) {
        // SAFETY: `fcntl` on a descriptor number; no memory is passed.
        *copy = unsafe { libc::fcntl(source, libc::F_DUPFD_CLOEXEC, above) };
        if *copy == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    for (target, &copy) in (FIRST_FD..).zip(&copies[..sources.len()]) {
        // SAFETY: `dup2` on descriptor numbers; no memory is passed.
        if unsafe { libc::dup2(copy, target) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The new process, killed and reaped when dropped unless it said it was ready.
struct KillUnlessReady(Option<Child>);

impl KillUnlessReady {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// It serves: from now on it lives on its own (it outlives this process).
    fn ready(mut self) {
        self.0 = None;
    }
}

impl Drop for KillUnlessReady {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// In a process started by [`hand_off`] (`ECHO_SERVER_HANDOFF` set): tells the old process
/// that this one's server has started, by writing one byte to the channel that is its stdin.
pub(crate) fn tell_old_process_ready() -> io::Result<()> {
    let channel = io::stdin().as_fd().try_clone_to_owned()?;
    UnixStream::from(channel).write_all(b"R")
}
