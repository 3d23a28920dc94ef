//! TCP urgent data (`MSG_OOB`): the bytes to send, and the watcher that tells when one arrived.
//!
//! tokio's `TcpStream` cannot wait for priority readiness while its reads and writes are
//! polled, so the watcher is a second descriptor for the socket, registered for priority
//! readiness only. It exists only while the application asks for urgent data (it costs a
//! descriptor), and is dropped for good once the socket reports its read side closed or an
//! error: no urgent byte can follow, and tokio keeps a closed readiness set, so waiting on it
//! again would return at once, forever (the busy loop this module once had).

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU16};

use socket2::SockRef;
use tokio::net::TcpStream;

/// What the watcher saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
pub(super) enum Watched {
    /// Priority readiness: an urgent byte may be there.
    Urgent,
    /// The socket's read side closed or it failed: the watcher is gone for good.
    Closed,
}

/// See the module docs. Boxed, and only once the application uses urgent data: most
/// connections never do, and should not carry its state.
#[derive(Debug, Default)]
pub(super) struct Urgent(Option<Box<State>>);

#[derive(Debug, Default)]
struct State {
    /// Bytes the application asked to send that the socket did not take yet.
    to_send: Vec<u8>,
    /// The application asked for urgent data once: reads go on past urgent marks.
    aware: bool,
    /// The socket can bring no more urgent data.
    finished: bool,
    /// What reads know of the urgent mark.
    at_mark: AtMark,
    #[cfg(any(target_os = "linux", target_os = "android"))]
    watch: Option<tokio::io::unix::AsyncFd<socket2::Socket>>,
}

impl Urgent {
    /// Whether the application never used urgent data on this connection (so no second
    /// descriptor exists).
    pub(super) fn is_unused(&self) -> bool {
        self.0.is_none()
    }

    pub(super) fn has_pending(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|state| !state.to_send.is_empty())
    }

    /// What reads need to go on past urgent marks, once the application asked for urgent data.
    pub(super) fn at_mark(&self) -> Option<&AtMark> {
        self.0
            .as_ref()
            .filter(|state| state.aware)
            .map(|state| &state.at_mark)
    }

    /// Where newly posted urgent bytes go.
    pub(super) fn queue(&mut self) -> &mut Vec<u8> {
        &mut self.0.get_or_insert_with(Box::default).to_send
    }

    /// Sends what it can of the urgent bytes; the rest waits for room. A failure drops them: the
    /// connection is failing, and its reads and writes will say how.
    pub(super) fn send(&mut self, tcp: Option<&TcpStream>) {
        let Some(state) = self.0.as_mut() else {
            return;
        };
        let Some(tcp) = tcp else {
            state.to_send.clear();
            return;
        };
        let socket = SockRef::from(tcp);
        let mut sent = 0;
        for byte in &state.to_send {
            // Through `try_io`, so that a full socket clears tokio's write readiness: the driver
            // then waits for room instead of retrying at once.
            let send = || socket.send_out_of_band(std::slice::from_ref(byte));
            match tcp.try_io(tokio::io::Interest::WRITABLE, send) {
                Ok(_) => sent += 1,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    tracing::debug!(%error, "urgent byte not sent");
                    sent = state.to_send.len();
                    break;
                }
            }
        }
        state.to_send.drain(..sent);
    }

    /// Whether a wait for urgent data would do anything; creates or drops the watcher to match
    /// `wanted`. The socket is asked for (`tcp`) only then: most waits need none of this.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[inline]
    pub(super) fn watch<'a>(
        &mut self,
        wanted: bool,
        tcp: impl FnOnce() -> Option<&'a TcpStream>,
    ) -> bool {
        if !wanted && self.0.as_ref().map_or(true, |state| state.watch.is_none()) {
            return false;
        }
        self.watch_slow(wanted, tcp())
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn watch_slow(&mut self, wanted: bool, tcp: Option<&TcpStream>) -> bool {
        let state = self.0.get_or_insert_with(Box::default);
        if !wanted || state.finished {
            state.watch = None;
            return wanted && state.at_mark.is_held();
        }
        state.aware = true;
        if state.watch.is_none() {
            state.watch = tcp
                .and_then(|tcp| SockRef::from(tcp).try_clone().ok())
                .and_then(register_priority);
        }
        state.watch.is_some() || state.at_mark.is_held()
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub(super) fn watch<'a>(
        &mut self,
        _wanted: bool,
        _tcp: impl FnOnce() -> Option<&'a TcpStream>,
    ) -> bool {
        false
    }

    /// Keeps `byte`, taken by the watcher, until the application asks for urgent data; reads
    /// go on past its mark.
    pub(super) fn hold(&mut self, byte: u8) {
        let at_mark = &self.0.get_or_insert_with(Box::default).at_mark;
        at_mark.hold(byte);
    }

    /// Notes that the watcher took an urgent byte: reads go on past its mark.
    pub(super) fn taken(&mut self) {
        let at_mark = &self.0.get_or_insert_with(Box::default).at_mark;
        at_mark.passing.store(true, Relaxed);
    }

    /// The byte held for the application, if any.
    pub(super) fn take_held(&mut self) -> Option<u8> {
        let held = self.0.as_ref()?.at_mark.held.swap(0, Relaxed);
        (held != 0).then_some(held as u8)
    }

    /// Waits for the watcher (never, without one).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(super) async fn watched(&self) -> Watched {
        let Some(watch) = self.0.as_ref().and_then(|state| state.watch.as_ref()) else {
            return std::future::pending().await;
        };
        match watch.ready(tokio::io::Interest::PRIORITY).await {
            Ok(mut guard) => {
                let ready = guard.ready();
                guard.clear_ready();
                if ready.is_read_closed() || ready.is_error() {
                    Watched::Closed
                } else {
                    Watched::Urgent
                }
            }
            Err(error) => {
                tracing::debug!(%error, "urgent data watch failed");
                Watched::Closed
            }
        }
    }

    /// The watcher saw the socket close: no more watching.
    pub(super) fn finish(&mut self) {
        let state = self.0.get_or_insert_with(Box::default);
        state.finished = true;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            state.watch = None;
        }
    }
}

/// What the reads of a connection that takes urgent data know of the urgent mark (see
/// [`Transport::poll_read_taking_urgent`](super::transport::Transport::poll_read_taking_urgent)).
/// Atomics, not cells: a wait holds a shared borrow of it beside the watcher's.
#[derive(Debug, Default)]
pub(crate) struct AtMark {
    /// An urgent byte taken before the application asked for one (`0x100 | byte`), or 0.
    held: AtomicU16,
    /// An urgent byte was taken and the reads may not be past its mark yet: they go on without
    /// waiting for readiness until the socket is drained.
    pub(super) passing: AtomicBool,
}

impl AtMark {
    /// Keeps `byte` for the application (TCP keeps one urgent byte: a newer one replaces it);
    /// the reads go on past its mark.
    pub(super) fn hold(&self, byte: u8) {
        self.held.store(0x100 | u16::from(byte), Relaxed);
        self.passing.store(true, Relaxed);
    }

    // Asked only where a watcher exists (Linux and Android).
    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
    fn is_held(&self) -> bool {
        self.held.load(Relaxed) != 0
    }
}

/// Takes the socket's urgent byte (`recv` with `MSG_OOB`), if there is one.
#[allow(unsafe_code)]
pub(super) fn recv_urgent_byte(tcp: &TcpStream) -> io::Result<Option<u8>> {
    let mut byte = [std::mem::MaybeUninit::new(0_u8)];
    match SockRef::from(tcp).recv_out_of_band(&mut byte) {
        // SAFETY: the element was initialized (to 0) when the array was made, and
        // `recv_out_of_band` (recv(2) with MSG_OOB) only ever stores initialized bytes into the
        // buffer, so it is initialized whether or not the call wrote to it.
        Ok(1) => Ok(Some(unsafe { byte[0].assume_init() })),
        Ok(_) => Ok(None),
        // EINVAL: no urgent byte is pending; EAGAIN: it has not arrived yet.
        Err(error)
            if error.kind() == io::ErrorKind::WouldBlock
                || error.kind() == io::ErrorKind::InvalidInput =>
        {
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// Registers `socket` with tokio's reactor for priority (urgent data) readiness only.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[allow(unsafe_code)]
fn register_priority(socket: socket2::Socket) -> Option<tokio::io::unix::AsyncFd<socket2::Socket>> {
    // SAFETY: `register_with_interest` requires that the descriptor `socket.as_raw_fd()` stays
    // open, refers to the same open file description and is what `as_raw_fd` returns for as long
    // as the `AsyncFd` owns it. A `socket2::Socket` owns its descriptor (it closes it only when
    // dropped) and always returns that same one; it moves into the `AsyncFd`, which never hands
    // it out mutably and is never `into_inner`ed or forgotten here.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(socket, tokio::io::Interest::PRIORITY)
    };
    match registered {
        Ok(watch) => Some(watch),
        Err(error) => {
            tracing::debug!(%error, "cannot watch for urgent data");
            None
        }
    }
}
