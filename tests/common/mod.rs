//! Shared test helpers, one copy each: the recording callbacks ([`Recorder`]), bounded waits,
//! client helpers (and their kin for the embedded connection's peer), the test certificates,
//! the child-process server for descriptor exhaustion, CPU-time readings, a recorder for the `metrics` facade ([`MetricsRecorder`]), the
//! `echo_server` example as a child process ([`EchoServer`]: spawn, its stdout lines, signals,
//! hand-off restarts), echo load against it ([`EchoLoad`]), a silent flood
//! ([`SilentFlood`]), and what Wine lacks ([`skip_under_wine`]).
//!
//! Files directly in `tests/` are test binaries, so the parts live under `tests/common/`. Each
//! binary uses only some of them, hence `dead_code` is allowed here.
#![allow(dead_code, unreachable_pub)]

mod certs;
// A child under `ulimit -n`, watched through /proc: Linux's descriptor limits and CPU accounting.
#[cfg(target_os = "linux")]
mod child;
#[cfg(target_os = "linux")]
mod cpu;
mod embedded;
#[cfg(target_os = "linux")]
mod example;
// Silent connections that reconnect, as an attacker holding a server's slots (Linux: rlimits).
#[cfg(target_os = "linux")]
mod flood;
mod load;
mod metrics_recorder;
mod recorder;
mod wine;

// Re-exported for `use common::*`; a binary that needs none of a part would warn otherwise.
#[cfg(target_os = "linux")]
#[allow(unused_imports)]
pub use example::*;
#[allow(unused_imports)]
pub use {certs::*, embedded::*, load::*, metrics_recorder::*, recorder::*, wine::*};
#[cfg(target_os = "linux")]
#[allow(unused_imports)]
pub use {child::*, cpu::*, flood::*};

use std::future::IntoFuture;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use switchboard::socket2::SockRef;
use switchboard::ClosureReason;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for any wait in a test: generous for a loaded 2-core machine, short enough that a
/// broken guarantee fails the test instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(20);

/// Awaits `future`, at most [`WAIT`].
pub async fn bounded<T>(what: &str, future: impl IntoFuture<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Polls `done` every 5 ms until it holds, at most [`WAIT`].
pub async fn eventually(what: &str, done: impl Fn() -> bool) {
    bounded(what, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// Position of the first event matching `wanted`; panics with the events if there is none.
pub fn position(events: &[Event], wanted: impl Fn(&Event) -> bool) -> usize {
    events
        .iter()
        .position(wanted)
        .unwrap_or_else(|| panic!("event missing: {events:#?}"))
}

/// Checks guarantee 1 (docs/guarantees.md) for one established connection's events: established
/// first, at most one client close or reset, then exactly one closure, closed, released, in that
/// order, and nothing after the release.
pub fn assert_lifecycle(events: &[Event]) {
    assert!(
        matches!(events.first(), Some(Event::Established(..))),
        "first event must be established: {events:#?}"
    );
    let position = |f: &dyn Fn(&Event) -> bool| {
        let found: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| f(e))
            .map(|(i, _)| i)
            .collect();
        found
    };
    let closures = position(&|e| matches!(e, Event::Closure(..)));
    let closed = position(&|e| matches!(e, Event::Closed(..)));
    let released = position(&|e| matches!(e, Event::Released(..)));
    let ends = position(&|e| matches!(e, Event::ClientClose(..) | Event::Reset(..)));
    assert_eq!(closures.len(), 1, "exactly one closure: {events:#?}");
    assert_eq!(closed.len(), 1, "exactly one closed: {events:#?}");
    assert_eq!(released.len(), 1, "exactly one released: {events:#?}");
    assert!(
        ends.len() <= 1,
        "at most one client close or reset: {events:#?}"
    );
    let n = events.len();
    assert_eq!(released[0], n - 1, "released must be last: {events:#?}");
    assert_eq!(
        closed[0],
        n - 2,
        "closed right before released: {events:#?}"
    );
    assert_eq!(
        closures[0],
        n - 3,
        "closure right before closed: {events:#?}"
    );
}

/// The closure reason a connection ended with.
pub fn closure_reason(events: &[Event]) -> Option<ClosureReason> {
    events.iter().find_map(|event| match event {
        Event::Closure(_, reason) => Some(*reason),
        _ => None,
    })
}

/// Connects a plain tokio client to `address`, bounded by [`WAIT`].
pub async fn client(address: SocketAddr) -> TcpStream {
    bounded("connect", TcpStream::connect(address))
        .await
        .expect("connect failed")
}

/// The loopback address 127.0.0.`n`: Linux's whole 127.0.0.0/8 is loopback, so clients that
/// bind 127.0.0.2, 127.0.0.3, … as their source address come from different peers.
pub fn loopback(n: u8) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, n))
}

/// A plain client connecting to `address` from `source` (any free port), bounded by [`WAIT`];
/// `Err` if the connect failed, which a server that resets at once can cause: the reset can
/// reach the client before its connect has completed.
pub async fn try_client_from(
    source: std::net::IpAddr,
    address: SocketAddr,
) -> io::Result<TcpStream> {
    let socket = match source {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    tokio::time::timeout(WAIT, socket.connect(address))
        .await
        .expect("connect timed out")
}

/// A PROXY protocol version 2 header (`command`, TCP) from `source` to `destination` (socket
/// addresses, as text), with `tlvs`.
pub fn v2_header(
    command: ppp::v2::Command,
    source: &str,
    destination: &str,
    tlvs: &[(u8, &[u8])],
) -> Vec<u8> {
    use ppp::v2::{Builder, Protocol, Version};
    let addresses: (SocketAddr, SocketAddr) =
        (source.parse().unwrap(), destination.parse().unwrap());
    let mut builder = Builder::with_addresses(Version::Two | command, Protocol::Stream, addresses);
    for (kind, value) in tlvs {
        builder = builder.write_tlv(*kind, value).unwrap();
    }
    builder.build().unwrap()
}

/// Connects a client whose socket buffers are set to `size` before it connects (the window it
/// advertises is small from the start): one that stops reading holds little of what the server
/// sends, so the server's write queue fills soon. Linux doubles the value and keeps a floor of
/// a few KiB.
pub async fn small_buffer_client(address: SocketAddr, size: u32) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(size).unwrap();
    socket.set_send_buffer_size(size).unwrap();
    bounded("connect", socket.connect(address))
        .await
        .expect("connect failed")
}

/// Writes `message` and reads back exactly as many bytes, bounded by [`WAIT`].
pub async fn echo_round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    message: &[u8],
) -> Vec<u8> {
    bounded("client write", stream.write_all(message))
        .await
        .expect("client write");
    let mut reply = vec![0; message.len()];
    bounded("echo", stream.read_exact(&mut reply))
        .await
        .expect("client read");
    reply
}

/// Writes `message` and reads back as many bytes; asserts they are the same.
pub async fn echo<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, message: &[u8]) {
    let reply = echo_round_trip(stream, message).await;
    assert!(
        reply == message,
        "the echo of {} bytes differs (starting {:?})",
        message.len(),
        String::from_utf8_lossy(&reply[..reply.len().min(64)])
    );
}

/// Reads until the end of the stream (bounded by [`WAIT`]); returns the bytes and how it ended
/// (over TLS, `Ok` only for a clean end: OpenSSL reports TCP closed without close_notify as an
/// "unexpected eof" error).
pub async fn read_to_end<S: AsyncRead + Unpin>(stream: &mut S) -> (Vec<u8>, io::Result<()>) {
    let mut data = Vec::new();
    let result = bounded("read to end", stream.read_to_end(&mut data))
        .await
        .map(|_| ());
    (data, result)
}

/// Closes a client with RST (SO_LINGER 0).
pub fn reset(stream: TcpStream) {
    SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("set linger");
    drop(stream);
}

/// A loopback address with nothing listening on it (bound then closed).
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// `len` distinct, reproducible bytes for `seed`, so that a lost, repeated or reordered chunk
/// shows.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
