//! What [`ServerBuilder::start`](crate::ServerBuilder::start) takes: anything that becomes the
//! server's callbacks.

use crate::connection::user_data::UserDataLayout;
use crate::error::Error;
use crate::server::callbacks::Callbacks;

/// What runs a server's connections, given to [`ServerBuilder::start`](crate::ServerBuilder::start):
/// any [`Callbacks`] implementation, which gets the connections' bytes, or a
/// [`codec::Framing`](crate::codec::Framing), whose [`FrameHandler`](crate::codec::FrameHandler)
/// gets them decoded into items. One `start` serves both, so a server changes from bytes to
/// frames without changing how it starts.
///
/// A bare `FrameHandler` is not one: every `FrameHandler` is also a `Callbacks` (its byte
/// callbacks would run, not its frames), so it goes in a `Framing`, which also carries the frame
/// layer's settings.
///
/// Sealed: switchboard implements it, and applications implement [`Callbacks`] or
/// `FrameHandler` instead.
///
/// ```
/// use switchboard::codec::{FrameHandler, FramedConnection, Framing};
/// use switchboard::tokio_util::codec::LinesCodec;
/// use switchboard::{async_trait, Callbacks, Connection, Server};
///
/// struct Bytes;
/// impl Callbacks for Bytes {}
///
/// struct Lines;
/// impl Callbacks for Lines {}
/// #[async_trait]
/// impl FrameHandler for Lines {
///     type Codec = LinesCodec;
///     fn new_codec(&self, _: &Connection) -> LinesCodec {
///         LinesCodec::new()
///     }
///     async fn on_frame(&self, _: &FramedConnection<'_, LinesCodec>, _: String) {}
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), switchboard::Error> {
/// let bytes = Server::builder().bind("127.0.0.1:0").start(Bytes).await?;
/// let lines = Server::builder().bind("127.0.0.1:0").start(Framing::new(Lines)).await?;
/// bytes.shutdown().await;
/// lines.shutdown().await;
/// # Ok(()) }
/// ```
pub trait IntoCallbacks: sealed::Sealed {}

impl<C: Callbacks> IntoCallbacks for C {}

pub(crate) mod sealed {
    use std::any::TypeId;

    use super::*;

    /// The conversion itself, out of the applications' reach.
    pub trait Sealed {
        /// The callbacks, with the user data slots they need taken from `layout`.
        ///
        /// # Errors
        /// [`Error::InvalidSetting`] for a setting of its own that cannot be used.
        fn into_callbacks(self, layout: Layout<'_>) -> Result<Box<dyn Callbacks>, Error>;

        /// The type of the callbacks [`Sealed::into_callbacks`] makes, if they are the
        /// application's own; `None` for callbacks that wrap others.
        fn callbacks_type(&self) -> Option<TypeId> {
            None
        }
    }

    /// The builder's user data layout, in a type outside code can name no more than `Sealed`.
    #[derive(Debug)]
    pub struct Layout<'a>(pub(crate) &'a mut UserDataLayout);

    impl<C: Callbacks> Sealed for C {
        fn into_callbacks(self, _: Layout<'_>) -> Result<Box<dyn Callbacks>, Error> {
            Ok(Box::new(self))
        }

        fn callbacks_type(&self) -> Option<TypeId> {
            Some(TypeId::of::<C>())
        }
    }
}
