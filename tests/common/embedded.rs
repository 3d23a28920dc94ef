//! Helpers for tests on the embedded connection (`switchboard::testing`): the peer's side of the
//! socket helpers in `mod.rs`.

use std::io;
use std::net::SocketAddr;

use switchboard::testing::{EmbeddedPeer, EmbeddedServer};
use switchboard::{ConnectionId, Server, ServerBuilder};

use super::{Behavior, Event, Hooks, Recorder};

/// An embedded server (`switchboard::testing`: no listener, no sockets; connect with
/// `server.connect`) whose callbacks are a [`Recorder`] with `behavior` and `hooks`, with the
/// settings `configure` makes.
pub async fn start_recorded_embedded(
    behavior: Behavior,
    hooks: Hooks,
    configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
) -> (EmbeddedServer, Recorder) {
    let mut builder = Server::builder();
    let recorder = Recorder::with_hooks(&mut builder, behavior, hooks);
    let server = configure(builder)
        .embedded()
        .start(recorder.clone())
        .await
        .unwrap();
    (server, recorder)
}

/// A distinct address for embedded peer `n` (TEST-NET-1, nothing real).
pub fn peer_addr(n: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, (n % 250 + 1) as u8], 40000 + n))
}

/// Sends `message` and reads back exactly as many bytes; asserts they are the same.
pub async fn echo_peer(peer: &mut EmbeddedPeer, message: &[u8]) {
    peer.send(message).expect("peer send");
    let reply = peer.read_exact(message.len()).await.expect("peer read");
    assert!(
        reply == message,
        "the echo of {} bytes differs (starting {:?})",
        message.len(),
        String::from_utf8_lossy(&reply[..reply.len().min(64)])
    );
}

/// Reads until the stream fails; asserts that it failed with a reset, not a clean end.
/// Returns the bytes read before.
pub async fn expect_peer_reset(peer: &mut EmbeddedPeer) -> usize {
    let mut drained = 0;
    loop {
        match peer.read().await {
            Ok(data) if data.is_empty() => {
                panic!("clean end of stream where a reset was expected ({drained} bytes)")
            }
            Ok(data) => drained += data.len(),
            Err(error) => {
                assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
                return drained;
            }
        }
    }
}

/// Reads until the end of the stream; returns the bytes and how it ended.
pub async fn peer_read_to_end(peer: &mut EmbeddedPeer) -> (Vec<u8>, io::Result<()>) {
    let mut data = Vec::new();
    loop {
        match peer.read().await {
            Ok(chunk) if chunk.is_empty() => return (data, Ok(())),
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(error) => return (data, Err(error)),
        }
    }
}

impl Recorder {
    /// The id of `peer`'s connection, once established.
    pub async fn id_of_peer(&self, peer: &EmbeddedPeer) -> ConnectionId {
        let id = peer.id();
        self.wait_for(
            "the connection to be established",
            |event| matches!(event, Event::Established(of, ..) if *of == id),
        )
        .await;
        id
    }
}

/// Reads until the stream ends, whether by FIN or by RST; panics if it does not end within the
/// peer's wait limit.
pub async fn until_peer_ended(peer: &mut EmbeddedPeer) {
    if let (_, Err(error)) = peer_read_to_end(peer).await {
        assert_ne!(
            error.kind(),
            io::ErrorKind::TimedOut,
            "the connection did not end"
        );
    }
}
