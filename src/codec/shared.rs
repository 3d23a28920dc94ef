//! `FrameHandler` for `Arc<H>`: a framed server runs a handler that the application also holds,
//! to look at its state from a test or from other tasks without a side handle.

use std::sync::Arc;

use async_trait::async_trait;

use super::{DecodeError, FrameError, FrameHandler, FramedConnection, Item};
use crate::connection::Connection;

/// The handler `H` behind an [`Arc`], shared with the application:
/// `Framing::new(handler.clone())` gives the server one clone, the application keeps another.
/// Its [`Callbacks`](crate::Callbacks) are `Arc<H>`'s too.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use switchboard::codec::{FrameHandler, FramedConnection, Framing};
/// use switchboard::tokio_util::codec::LinesCodec;
/// use switchboard::{async_trait, Callbacks, Connection, Server};
///
/// #[derive(Default)]
/// struct CountLines {
///     lines: AtomicUsize,
/// }
///
/// impl Callbacks for CountLines {}
///
/// #[async_trait]
/// impl FrameHandler for CountLines {
///     type Codec = LinesCodec;
///     fn new_codec(&self, _: &Connection) -> LinesCodec {
///         LinesCodec::new()
///     }
///     async fn on_frame(&self, _: &FramedConnection<'_, LinesCodec>, _: String) {
///         self.lines.fetch_add(1, Ordering::Relaxed);
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), switchboard::Error> {
/// let handler = Arc::new(CountLines::default());
/// let server = Server::builder()
///     .bind("127.0.0.1:0")
///     .start(Framing::new(handler.clone()))
///     .await?;
/// assert_eq!(handler.lines.load(Ordering::Relaxed), 0);
/// # server.shutdown().await;
/// # Ok(()) }
/// ```
#[async_trait]
impl<H: FrameHandler + ?Sized> FrameHandler for Arc<H> {
    type Codec = H::Codec;

    fn new_codec(&self, connection: &Connection) -> Self::Codec {
        (**self).new_codec(connection)
    }

    async fn on_frame(&self, connection: &FramedConnection<'_, Self::Codec>, frame: Item<Self>) {
        (**self).on_frame(connection, frame).await;
    }

    async fn on_decode_error(
        &self,
        connection: &FramedConnection<'_, Self::Codec>,
        error: &FrameError<DecodeError<Self>>,
    ) {
        (**self).on_decode_error(connection, error).await;
    }
}
