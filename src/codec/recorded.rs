//! `FrameHandler` for [`Recorded`]: a framed handler whose events, its items included, are
//! logged (feature `testing`). Here rather than in `testing`, which the codec module depends on.

use std::fmt;

use async_trait::async_trait;

use super::{DecodeError, FrameError, FrameHandler, FramedConnection, Item};
use crate::connection::Connection;
use crate::testing::{Event, Recorded};

#[async_trait]
impl<H> FrameHandler for Recorded<H>
where
    H: FrameHandler,
    Item<H>: fmt::Debug,
{
    type Codec = H::Codec;

    fn new_codec(&self, connection: &Connection) -> Self::Codec {
        self.inner().new_codec(connection)
    }

    async fn on_frame(&self, connection: &FramedConnection<'_, Self::Codec>, frame: Item<Self>) {
        self.record(Event::frame(connection.id(), &frame));
        self.inner().on_frame(connection, frame).await;
    }

    async fn on_decode_error(
        &self,
        connection: &FramedConnection<'_, Self::Codec>,
        error: &FrameError<DecodeError<Self>>,
    ) {
        self.record(Event::DecodeError(connection.id(), error.to_string()));
        self.inner().on_decode_error(connection, error).await;
    }
}
