//! Frames instead of bytes: a connection's reads go through a tokio-util [`Decoder`], the
//! application gets whole items, and sends items through the codec's [`Encoder`].
//!
//! [`Encoder`]: tokio_util::codec::Encoder
//!
//! A [`FrameHandler`] is a [`Callbacks`] implementation with one more event,
//! [`on_frame`](FrameHandler::on_frame), and a codec: [`new_codec`](FrameHandler::new_codec)
//! makes one for each connection (accepted or outgoing), so a codec may keep per-connection
//! state. [`ServerBuilder::start`](crate::ServerBuilder::start) starts a server with it, in a
//! [`Framing`] (which also holds the frame layer's settings):
//!
//! - **Reading is the frame layer's.** It requests a read as soon as a connection is
//!   established, decodes each read and requests the next one once every whole item of it was
//!   delivered: that pending read keeps the connection open, as the lifetime rule says, until
//!   the peer's FIN or a close. The application does not call [`Connection::read`] and gets no
//!   [`on_read_completed`](Callbacks::on_read_completed); every other callback of [`Callbacks`]
//!   reaches it as usual.
//! - **Items arrive whole, in order, one at a time** (guarantee 13 in docs/guarantees.md):
//!   `on_frame` runs on the connection's task, and the next item is decoded only once it has
//!   returned.
//! - **Write backpressure reaches the decoder.** While the connection's write queue is
//!   [high](crate::ServerBuilder::write_watermarks), no item is delivered and nothing more is
//!   read; delivery resumes once the queue drains. A client that pipelines requests faster than
//!   it reads the replies is held back by TCP, and the server's memory stays bounded.
//! - **Errors end the connection with reasons of their own**, after the items decoded before
//!   them were delivered, and after [`on_decode_error`](FrameHandler::on_decode_error) (where a
//!   last reply may be sent): a decoder's error ends it with [`ClosureReason::Decode`]; more
//!   than the [maximum frame length](Framing::max_frame_length) read without a whole item, or a
//!   decoder's own "too long" (tokio-util's `LinesCodec`, `AnyDelimiterCodec` and
//!   `LengthDelimitedCodec` limits), with [`ClosureReason::FrameTooLong`]; and the peer's FIN in
//!   the middle of an item with [`ClosureReason::PartialFrame`]. Each closes gracefully: the
//!   replies already queued are sent, then FIN. What the peer sends after the error is not
//!   decoded.
//! - **At the peer's FIN** the codec's [`decode_eof`](Decoder::decode_eof) finishes what it can
//!   (a last line without its newline), those items are delivered, then
//!   [`on_connection_client_close`](Callbacks::on_connection_client_close) runs as usual.
//! - **Sending**: [`FramedConnection::send`] encodes an item and queues it;
//!   [`feed`](FramedConnection::feed) only encodes it, and [`flush`](FramedConnection::flush)
//!   queues everything fed as one write. The frame layer flushes after the items of each read,
//!   so `feed` in `on_frame` answers a pipelined batch with one write.
//! - **One order**: everything posted to a connection reaches the peer in the order it was
//!   posted, whatever the path: items fed or sent, [`Connection::write`]s, a goodbye, a group's
//!   broadcast of bytes or of items (through each member's codec:
//!   [`broadcast_item`](crate::ConnectionGroup::broadcast_item)). An item fed and not flushed
//!   yet is in that order from the moment it is fed.
//! - **TLS** is below all this: a framed server with [`tls`](crate::ServerBuilder::tls) decodes
//!   the decrypted stream.
//!
//! # What it costs
//! No copy of the bytes beyond the decoder's own: a read whose items are all whole becomes the
//! decoding buffer as it is, and each item is split off it (for `Bytes` items, without a copy).
//! Only a read that ends in the middle of an item leaves a remainder, and the next read is
//! appended to it (one copy of that read; a long item cut into many reads is copied about twice
//! in all, as the buffer doubles). An idle connection holds no buffer. Each access to a
//! connection's frame state takes one uncontended lock, and each item costs one boxed future
//! for `on_frame` (`async-trait`).
//!
//! # Example: a line echo
//! ```no_run
//! use switchboard::codec::{FrameHandler, FramedConnection, Framing};
//! use switchboard::tokio_util::codec::LinesCodec;
//! use switchboard::{async_trait, Callbacks, Connection, Server};
//!
//! struct Echo;
//!
//! impl Callbacks for Echo {}
//!
//! #[async_trait]
//! impl FrameHandler for Echo {
//!     type Codec = LinesCodec;
//!
//!     fn new_codec(&self, _connection: &Connection) -> LinesCodec {
//!         LinesCodec::new_with_max_length(1024)
//!     }
//!
//!     async fn on_frame(&self, connection: &FramedConnection<'_, LinesCodec>, line: String) {
//!         if line == "bye" {
//!             connection.close();
//!         } else if let Err(error) = connection.send(line) {
//!             eprintln!("connection {}: {error}", connection.id());
//!         }
//!     }
//! }
//!
//! # async fn run() -> Result<(), switchboard::Error> {
//! let server = Server::builder()
//!     .bind("127.0.0.1:0")
//!     .start(Framing::new(Echo))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Example: length-delimited messages
//! ```
//! use switchboard::codec::{FrameHandler, FramedConnection, Framing};
//! use switchboard::tokio_util::codec::LengthDelimitedCodec;
//! use switchboard::{async_trait, Bytes, BytesMut, Callbacks, Connection, Server};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! /// Answers each message with its bytes reversed, in a frame of its own.
//! struct Reverse;
//!
//! impl Callbacks for Reverse {}
//!
//! #[async_trait]
//! impl FrameHandler for Reverse {
//!     type Codec = LengthDelimitedCodec;
//!
//!     fn new_codec(&self, _connection: &Connection) -> LengthDelimitedCodec {
//!         LengthDelimitedCodec::builder().max_frame_length(64 * 1024).new_codec()
//!     }
//!
//!     async fn on_frame(&self, connection: &FramedConnection<'_, Self::Codec>, message: BytesMut) {
//!         let reversed: Vec<u8> = message.iter().rev().copied().collect();
//!         // `feed`: the replies to one read's messages go out as one write.
//!         let _ = connection.feed(Bytes::from(reversed));
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder()
//!     .bind("127.0.0.1:0")
//!     .start(Framing::new(Reverse).max_frame_length(64 * 1024))
//!     .await?;
//! let mut client = tokio::net::TcpStream::connect(server.local_addr().unwrap()).await?;
//! client.write_all(b"\0\0\0\x03abc\0\0\0\x02xy").await?;
//! let mut replies = [0; 13];
//! client.read_exact(&mut replies).await?;
//! assert_eq!(&replies, b"\0\0\0\x03cba\0\0\0\x02yx");
//! drop(client);
//! server.shutdown().await;
//! # Ok(()) }
//! ```

mod adapter;
mod framed;
#[cfg(feature = "testing")]
mod recorded;
mod shared;
mod state;

use std::fmt;

use async_trait::async_trait;
use tokio_util::codec::Decoder;

use crate::closure::ClosureReason;
use crate::connection::Connection;
use crate::error::Error;
use crate::server::callbacks::Callbacks;
use crate::server::into_callbacks::sealed::{Layout, Sealed};
use crate::server::into_callbacks::IntoCallbacks;

pub(crate) use framed::{is_framed_with, queue_item, Queued};
pub use framed::{FramedConnection, SendError};

/// The default [maximum frame length](Framing::max_frame_length): 8 MiB, tokio-util's
/// `LengthDelimitedCodec` default.
const DEFAULT_MAX_FRAME_LENGTH: usize = 8 * 1024 * 1024;

/// The decoded item of a handler's codec.
pub type Item<H> = <<H as FrameHandler>::Codec as Decoder>::Item;

/// The decoder error of a handler's codec.
pub type DecodeError<H> = <<H as FrameHandler>::Codec as Decoder>::Error;

/// A [`Callbacks`] implementation that takes whole items instead of bytes; see the
/// [module docs](self). Started with [`ServerBuilder::start`](crate::ServerBuilder::start).
#[async_trait]
pub trait FrameHandler: Callbacks {
    /// The connections' codec: its [`Decoder`] cuts what is read into items, its
    /// [`Encoder`](tokio_util::codec::Encoder)s turn what [`FramedConnection::send`] is given
    /// into bytes.
    type Codec: Decoder<Item: Send, Error: fmt::Display + Send + Sync + 'static> + Send + 'static;

    /// Makes the codec of a new connection, before its
    /// [`on_connection_established`](Callbacks::on_connection_established).
    fn new_codec(&self, connection: &Connection) -> Self::Codec;

    /// A whole item arrived. Items of a connection arrive in order, one at a time: the next one
    /// is decoded once this returns. Reading goes on by itself.
    ///
    /// It runs on the connection's task, which shares a worker thread with other connections:
    /// the frame layer yields the worker every so often between items, but not inside this
    /// call. An item that takes long work (thousands of steps) should `.await`
    /// [`tokio::task::consume_budget`] between steps, or hand CPU-heavy work to
    /// [`tokio::task::spawn_blocking`].
    async fn on_frame(&self, connection: &FramedConnection<'_, Self::Codec>, frame: Item<Self>);

    /// Decoding failed: the connection ends with [`FrameError::closure_reason`] once this
    /// returns (a graceful close: what is queued is sent, then FIN). Every item decoded before
    /// the error was delivered; nothing after it will be. A last reply sent here (a protocol's
    /// error message) goes out before the FIN.
    ///
    /// Default: logs the error with `tracing` at debug level (peers that send garbage are
    /// common on the internet and not the server's fault).
    async fn on_decode_error(
        &self,
        connection: &FramedConnection<'_, Self::Codec>,
        error: &FrameError<DecodeError<Self>>,
    ) {
        tracing::debug!(id = %connection.id(), %error, "frame error");
    }
}

/// Why decoding ended a connection, given to [`FrameHandler::on_decode_error`].
#[derive(Debug)]
#[non_exhaustive]
pub enum FrameError<E> {
    /// The decoder failed ([`ClosureReason::Decode`], or [`ClosureReason::FrameTooLong`] for
    /// tokio-util's own "too long" errors).
    Decode(E),
    /// `buffered` bytes of one item were read without its end: more than the
    /// [maximum frame length](Framing::max_frame_length), `max`
    /// ([`ClosureReason::FrameTooLong`]).
    TooLong {
        /// Bytes of the unfinished item.
        buffered: usize,
        /// The maximum.
        max: usize,
    },
    /// The peer sent FIN with `remaining` bytes of an unfinished item
    /// ([`ClosureReason::PartialFrame`]).
    Partial {
        /// Bytes of the unfinished item.
        remaining: usize,
    },
}

impl<E: 'static> FrameError<E> {
    /// The reason the connection ends with.
    ///
    /// ```
    /// use switchboard::codec::FrameError;
    /// use switchboard::tokio_util::codec::LinesCodecError;
    /// use switchboard::ClosureReason;
    ///
    /// let error = FrameError::Decode(LinesCodecError::MaxLineLengthExceeded);
    /// assert_eq!(error.closure_reason(), ClosureReason::FrameTooLong);
    /// let error = FrameError::<std::io::Error>::Partial { remaining: 3 };
    /// assert_eq!(error.closure_reason(), ClosureReason::PartialFrame);
    /// ```
    pub fn closure_reason(&self) -> ClosureReason {
        match self {
            FrameError::Decode(error) if state::says_too_long(error) => ClosureReason::FrameTooLong,
            FrameError::Decode(_) => ClosureReason::Decode,
            FrameError::TooLong { .. } => ClosureReason::FrameTooLong,
            FrameError::Partial { .. } => ClosureReason::PartialFrame,
        }
    }
}

impl<E: fmt::Display> fmt::Display for FrameError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Decode(error) => write!(f, "decode error: {error}"),
            FrameError::TooLong { buffered, max } => write!(
                f,
                "frame too long: {buffered} bytes without its end, at most {max} allowed"
            ),
            FrameError::Partial { remaining } => {
                write!(f, "the stream ended {remaining} bytes into a frame")
            }
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for FrameError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Decode(error) => Some(error),
            _ => None,
        }
    }
}

/// A [`FrameHandler`] and the frame layer's settings, for [`ServerBuilder::start`](crate::ServerBuilder::start).
///
/// ```no_run
/// # use switchboard::codec::{FrameHandler, FramedConnection, Framing};
/// # use switchboard::tokio_util::codec::BytesCodec;
/// # use switchboard::{async_trait, BytesMut, Callbacks, Connection, Server};
/// # struct Handler;
/// # impl Callbacks for Handler {}
/// # #[async_trait]
/// # impl FrameHandler for Handler {
/// #     type Codec = BytesCodec;
/// #     fn new_codec(&self, _: &Connection) -> BytesCodec { BytesCodec::new() }
/// #     async fn on_frame(&self, _: &FramedConnection<'_, BytesCodec>, _: BytesMut) {}
/// # }
/// # async fn run() -> Result<(), switchboard::Error> {
/// let server = Server::builder()
///     .bind("127.0.0.1:0")
///     .start(Framing::new(Handler).max_frame_length(1024 * 1024))
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use]
pub struct Framing<H> {
    handler: H,
    max_frame_length: usize,
}

impl<H: FrameHandler> Framing<H> {
    /// `handler` with the default settings.
    pub fn new(handler: H) -> Self {
        Framing {
            handler,
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
        }
    }

    /// The most bytes of one item the frame layer holds while waiting for its end; one more
    /// ends the connection with [`ClosureReason::FrameTooLong`]. Bytes the decoder took into
    /// its own state count too (a length field); a decoder that buffers items in a buffer of its
    /// own must bound it itself. Default: 8 MiB, tokio-util's `LengthDelimitedCodec` default. At
    /// least 1.
    pub fn max_frame_length(mut self, bytes: usize) -> Self {
        self.max_frame_length = bytes;
        self
    }
}

impl<H: FrameHandler> IntoCallbacks for Framing<H> {}

impl<H: FrameHandler> Sealed for Framing<H> {
    /// The callbacks that run the handler, with their user data slot.
    fn into_callbacks(self, layout: Layout<'_>) -> Result<Box<dyn Callbacks>, Error> {
        if self.max_frame_length == 0 {
            return Err(Error::InvalidSetting {
                setting: "max_frame_length",
                reason: "must be at least 1".into(),
            });
        }
        let slot = layout.0.request();
        Ok(Box::new(adapter::Adapter::new(
            self.handler,
            slot,
            self.max_frame_length,
        )))
    }
}
