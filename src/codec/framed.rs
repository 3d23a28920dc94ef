//! Sending items: a connection seen through its codec.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use tokio_util::codec::Encoder;

use super::state::FrameState;
use crate::connection::user_data::Slot;
use crate::connection::{Connection, Shared, WriteError};
use crate::error::Error;

/// A [`Connection`] of a framed server, seen through its codec: everything a `Connection` does
/// (it dereferences to one), and sending items through the codec's
/// [`Encoder`](tokio_util::codec::Encoder).
///
/// [`FrameHandler::on_frame`](super::FrameHandler::on_frame) gets one; any other callback, or a
/// task of its own holding a `Connection` clone, gets one with [`FramedConnection::of`]. It is
/// a borrow: it does not keep the connection open (the `Connection` it borrows may).
///
/// Encoded items are staged on the connection until they are flushed, as one write, into its
/// write queue: [`send`](FramedConnection::send) flushes at once,
/// [`feed`](FramedConnection::feed) leaves it to [`flush`](FramedConnection::flush) or to the
/// frame layer, which flushes after delivering each read's items. A fed item is in the
/// connection's one order of bytes from the moment it is fed: a write, a goodbye, a close or a
/// group's broadcast posted after it goes out after it.
/// [`close`](Connection::close) (through the `Deref`) is graceful as ever: what was fed goes out
/// before the FIN, past the queue's limit, as everything posted before a close does.
pub struct FramedConnection<'a, C> {
    connection: &'a Connection,
    slot: Slot<FrameState<C>>,
}

impl<'a, C: Send + 'static> FramedConnection<'a, C> {
    pub(crate) fn new(connection: &'a Connection, slot: Slot<FrameState<C>>) -> Self {
        FramedConnection { connection, slot }
    }

    /// `connection` seen through its codec, if it belongs to a server started with
    /// [`start`](crate::ServerBuilder::start)ed with a [`Framing`](crate::codec::Framing) whose
    /// codec is `C`, from its
    /// [`on_connection_established`](crate::Callbacks::on_connection_established) until its
    /// release (`None` before and after, as in the TLS negotiation's callbacks).
    ///
    /// ```
    /// # use switchboard::codec::FramedConnection;
    /// # use switchboard::tokio_util::codec::LinesCodec;
    /// // In `on_connection_established`, or on a task holding a clone of the connection:
    /// fn greet(connection: &switchboard::Connection) {
    ///     if let Some(framed) = FramedConnection::<LinesCodec>::of(connection) {
    ///         let _ = framed.send("welcome");
    ///     }
    /// }
    /// ```
    pub fn of(connection: &'a Connection) -> Option<Self> {
        let slot = connection.shared().frame_slot::<FrameState<C>>()?;
        Some(FramedConnection { connection, slot })
    }

    /// The connection itself.
    pub fn connection(&self) -> &'a Connection {
        self.connection
    }

    /// Encodes `item` and stages it on the connection, without queueing it: a later
    /// [`flush`](FramedConnection::flush) or [`send`](FramedConnection::send) queues it, and
    /// so does the frame layer after the items of the current read (when called from
    /// [`on_frame`](super::FrameHandler::on_frame) or
    /// [`on_decode_error`](super::FrameHandler::on_decode_error)), and after any other callback
    /// of the connection returns. Whatever is posted to the connection after it (a write, a
    /// goodbye, a close, a broadcast) goes out after it.
    ///
    /// What is fed counts against the write queue's
    /// [limit](crate::ServerBuilder::write_queue_limit) as if it were queued: once the queue and
    /// the fed items reach it, the next item is refused before it is encoded, so a reply fed
    /// item by item never takes more memory than the limit and one item. The frame layer
    /// delivers an item only while the queue and what was fed are below the high watermark, but
    /// that does not promise room for the reply: writes from other tasks (a group's broadcasts
    /// above all) can fill the queue while [`on_frame`](super::FrameHandler::on_frame) runs, so
    /// a reply fed there can be refused too; handle the error. A reply cut short that way leaves
    /// the peer with part of it; a protocol that cannot resume one closes the connection.
    ///
    /// # Errors
    /// [`SendError::Encode`] if the encoder failed (nothing of the item is kept);
    /// [`SendError::Write`] with [`Error::WriteQueueFull`] and no bytes when the queue and what
    /// was fed are at the limit (the item was not encoded); [`SendError::Write`] with the encoded
    /// bytes once the connection takes no more writes ([`Error::ConnectionClosed`],
    /// [`Error::WriteShutdown`]).
    pub fn feed<I>(&self, item: I) -> Result<(), SendError<<C as Encoder<I>>::Error>>
    where
        C: Encoder<I>,
    {
        let fed = self.with_state(|state| {
            // Refused before it is encoded: an item over the limit takes no memory.
            if let Err(error) = self.connection.may_stage() {
                return Err(SendError::Write(WriteError::new(error, Bytes::new())));
            }
            state.scratch.clear();
            if let Err(error) = state.codec.encode(item, &mut state.scratch) {
                state.scratch.clear();
                return Err(SendError::Encode(error));
            }
            let encoded = state.scratch.len();
            match self.connection.stage(&mut state.scratch) {
                Ok(()) => {
                    state.unflushed += encoded;
                    Ok(())
                }
                Err(error) => Err(SendError::Write(WriteError::new(
                    error,
                    std::mem::take(&mut state.scratch).freeze(),
                ))),
            }
        });
        fed.unwrap_or_else(|| Err(SendError::Write(released())))
    }

    /// Queues everything [fed](FramedConnection::feed) so far as one write. Nothing fed, nothing
    /// written.
    ///
    /// # Errors
    /// As for [`Connection::write`] (the queue is at its limit, the write side was shut, the
    /// connection is closing): the refused bytes are given back and are no longer staged.
    pub fn flush(&self) -> Result<(), WriteError> {
        self.with_state(|state| flush(self.connection, state, false))
            .unwrap_or_else(|| Err(released()))
    }

    /// Encodes `item` and queues it, with whatever was [fed](FramedConnection::feed) before it,
    /// as one write.
    ///
    /// # Errors
    /// As for [`feed`](FramedConnection::feed) and [`flush`](FramedConnection::flush). A write
    /// refused because the queue is full says so ([`Error::WriteQueueFull`]); from a task of
    /// its own, [`Connection::writable`] waits for room first. An item is delivered to
    /// [`on_frame`](super::FrameHandler::on_frame) only while the queue, with what was fed, is
    /// below its high watermark; but writes from other tasks (a group's broadcasts) can fill it
    /// during the callback, so a reply there can be refused too.
    ///
    /// ```
    /// # use switchboard::codec::{FramedConnection, SendError};
    /// # use switchboard::tokio_util::codec::LinesCodec;
    /// # use switchboard::Error;
    /// # fn reply(connection: &FramedConnection<'_, LinesCodec>) {
    /// match connection.send("PONG") {
    ///     Ok(()) => {}
    ///     Err(SendError::Write(refused)) if matches!(refused.error(), Error::WriteQueueFull { .. }) => {
    ///         // The peer does not read: give up on it.
    ///         connection.abort();
    ///     }
    ///     Err(error) => eprintln!("not sent: {error}"),
    /// }
    /// # }
    /// ```
    pub fn send<I>(&self, item: I) -> Result<(), SendError<<C as Encoder<I>>::Error>>
    where
        C: Encoder<I>,
    {
        self.feed(item)?;
        self.flush().map_err(SendError::Write)
    }

    /// Runs `f` on the connection's frame state; `None` once the connection has been released.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut FrameState<C>) -> R) -> Option<R> {
        self.connection
            .user_data()
            .with_value(self.slot, |state| state.map(f))
    }
}

/// How a group's item broadcast went for one member (see [`queue_item`]).
#[derive(Debug)]
pub(crate) enum Queued<E> {
    /// Queued; whether the queue is then at or above its high watermark.
    Sent { high: bool },
    /// The connection's frame state does not hold a codec of this type (another server's
    /// codec, a server without frames, or a connection released).
    NotFramed,
    /// The member's encoder refused the item.
    Encode(E),
    /// The write queue, with what was fed, is at its limit: not encoded.
    Full,
    /// The connection takes no more writes.
    Closed,
}

/// Encodes `item` with the member `shared`'s own codec and queues it as one write, after what
/// was fed and not flushed: a group's broadcast of an item, for one member. Refused before it is
/// encoded when the queue is at its limit, as [`FramedConnection::feed`] refuses.
pub(crate) fn queue_item<C, I>(shared: &Shared, item: I) -> Queued<<C as Encoder<I>>::Error>
where
    C: Encoder<I> + Send + 'static,
{
    let Some(slot) = shared.frame_slot::<FrameState<C>>() else {
        return Queued::NotFramed;
    };
    let queued = shared.user_data.with_value(slot, |state| {
        let state = state?;
        if let Some(refusal) = shared.mailbox.full_for_staging() {
            return Some(refused(refusal));
        }
        state.scratch.clear();
        if let Err(error) = state.codec.encode(item, &mut state.scratch) {
            state.scratch.clear();
            return Some(Queued::Encode(error));
        }
        let encoded = state.scratch.split().freeze();
        Some(match shared.mailbox.write_is_high(encoded) {
            Ok(high) => Queued::Sent { high },
            Err((refusal, _)) => refused(refusal),
        })
    });
    queued.unwrap_or(Queued::NotFramed)
}

/// Whether the member `shared` is framed with a codec of type `C`.
pub(crate) fn is_framed_with<C: Send + 'static>(shared: &Shared) -> bool {
    shared.frame_slot::<FrameState<C>>().is_some()
}

fn refused<E>(refusal: Error) -> Queued<E> {
    match refusal {
        Error::WriteQueueFull { .. } => Queued::Full,
        _ => Queued::Closed,
    }
}

/// Queues what was fed on `connection` as one write (see [`Connection::flush_staged`]): at the
/// queue's limit it stays staged if `keep`.
pub(crate) fn flush<C>(
    connection: &Connection,
    state: &mut FrameState<C>,
    keep: bool,
) -> Result<(), WriteError> {
    if state.unflushed == 0 {
        return Ok(());
    }
    let flushed = connection.flush_staged(keep);
    let kept = keep
        && matches!(&flushed, Err(refused) if matches!(refused.error(), Error::WriteQueueFull { .. }));
    if !kept {
        state.unflushed = 0;
    }
    flushed
}

/// The refusal of a connection whose frame state is gone: it has been released.
fn released() -> WriteError {
    WriteError::new(Error::ConnectionClosed, Bytes::new())
}

impl<C> Clone for FramedConnection<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for FramedConnection<'_, C> {}

impl<C> Deref for FramedConnection<'_, C> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.connection
    }
}

impl<C> fmt::Debug for FramedConnection<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FramedConnection")
            .field("connection", self.connection)
            .field("codec", &std::any::type_name::<C>())
            .finish()
    }
}

/// An item [`FramedConnection::send`] or [`FramedConnection::feed`] did not queue.
#[derive(Debug)]
pub enum SendError<E> {
    /// The encoder failed; nothing of the item was kept.
    Encode(E),
    /// The connection refused the write: why, and the encoded bytes it did not take.
    Write(WriteError),
}

impl<E: fmt::Display> fmt::Display for SendError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Encode(error) => write!(f, "encode error: {error}"),
            SendError::Write(refused) => refused.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for SendError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Encode(error) => Some(error),
            SendError::Write(refused) => Some(refused),
        }
    }
}
