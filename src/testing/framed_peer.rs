//! [`FramedPeer`]: the test's end of an embedded connection, through a codec.

use std::future::poll_fn;

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::EmbeddedPeer;
use crate::ids::ConnectionId;

/// An [`EmbeddedPeer`] that sends and receives items through a tokio-util codec: from
/// [`EmbeddedPeer::framed`]. Each [`send`](FramedPeer::send) is one chunk, read by the server in
/// one read (unless it is larger than the server's read buffer), so a test that wants an item
/// cut in two sends bytes through [`peer`](FramedPeer::peer) instead.
///
/// Every wait ends after the peer's [wait limit](EmbeddedPeer::set_wait_limit) with an
/// [`std::io::ErrorKind::TimedOut`] error, in the codec's error type.
///
/// ```
/// use switchboard::codec::{FrameHandler, FramedConnection, Framing};
/// use switchboard::tokio_util::codec::LinesCodec;
/// use switchboard::{async_trait, Callbacks, Connection, Server};
///
/// /// Answers each line with its length.
/// struct Lengths;
///
/// impl Callbacks for Lengths {}
///
/// #[async_trait]
/// impl FrameHandler for Lengths {
///     type Codec = LinesCodec;
///     fn new_codec(&self, _: &Connection) -> LinesCodec {
///         LinesCodec::new()
///     }
///     async fn on_frame(&self, connection: &FramedConnection<'_, LinesCodec>, line: String) {
///         let _ = connection.send(line.len().to_string());
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Server::builder()
///     .embedded().start(Framing::new(Lengths))
///     .await?;
/// let peer = server.accept("192.0.2.7:50000".parse()?).await?;
/// let mut peer = peer.framed(LinesCodec::new());
/// peer.send("hello")?;
/// assert_eq!(peer.next().await.transpose()?.as_deref(), Some("5"));
/// peer.peer().shutdown_write();
/// assert!(peer.next().await.is_none(), "the server's FIN");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FramedPeer<C> {
    peer: EmbeddedPeer,
    codec: C,
    /// The server's FIN was read.
    eof: bool,
    /// Where items are encoded.
    encoded: BytesMut,
}

impl<C> FramedPeer<C> {
    pub(super) fn new(peer: EmbeddedPeer, codec: C) -> Self {
        FramedPeer {
            peer,
            codec,
            eof: false,
            encoded: BytesMut::new(),
        }
    }

    /// The server's id of this connection.
    pub fn id(&self) -> ConnectionId {
        self.peer.id()
    }

    /// The peer underneath, to half-close, reset, set windows or send raw bytes.
    pub fn peer(&self) -> &EmbeddedPeer {
        &self.peer
    }

    /// The peer underneath, mutably: reading from it takes bytes this peer has not decoded.
    pub fn peer_mut(&mut self) -> &mut EmbeddedPeer {
        &mut self.peer
    }

    /// The codec.
    pub fn codec(&self) -> &C {
        &self.codec
    }

    /// The peer and the codec; bytes read and not decoded stay with the peer.
    pub fn into_parts(self) -> (EmbeddedPeer, C) {
        (self.peer, self.codec)
    }

    /// Encodes `item` and sends it to the server as one chunk (as
    /// [`EmbeddedPeer::send`]).
    ///
    /// # Errors
    /// The encoder's error (nothing is sent), or [`EmbeddedPeer::send`]'s, converted.
    pub fn send<I>(&mut self, item: I) -> Result<(), C::Error>
    where
        C: Encoder<I>,
    {
        self.encoded.clear();
        self.codec.encode(item, &mut self.encoded)?;
        self.peer.send(&self.encoded)?;
        Ok(())
    }

    /// Waits for the next item from the server: `None` once the server's FIN was read and
    /// every item before it returned (a last item without its delimiter is finished by the
    /// codec's [`decode_eof`](Decoder::decode_eof)).
    ///
    /// # Errors
    /// The decoder's error; [`std::io::ErrorKind::ConnectionReset`] if the connection was reset,
    /// and [`std::io::ErrorKind::TimedOut`] after the wait limit, converted.
    ///
    /// # Cancel safety
    /// Cancel safe: bytes read are kept for the next call.
    pub async fn next(&mut self) -> Option<Result<C::Item, C::Error>>
    where
        C: Decoder,
    {
        loop {
            if self.eof {
                return self.codec.decode_eof(&mut self.peer.pending).transpose();
            }
            match self.codec.decode(&mut self.peer.pending) {
                Ok(Some(item)) => return Some(Ok(item)),
                Ok(None) => {}
                Err(error) => return Some(Err(error)),
            }
            let peer = &self.peer;
            let read = peer.bounded(poll_fn(|cx| peer.pipe.poll_recv(cx))).await;
            match read.and_then(|read| read) {
                Ok(data) if data.is_empty() => self.eof = true,
                Ok(data) => self.peer.pending.extend_from_slice(&data),
                Err(error) => return Some(Err(error.into())),
            }
        }
    }
}
