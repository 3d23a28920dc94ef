//! Where a connection's reads go when not to the callbacks: the hook an add-on (an awaited
//! client) uses to take a connection's data without the engine knowing what it is.

use std::fmt;

use bytes::BytesMut;

use crate::closure::ClosureReason;

/// Takes a connection's reads instead of `on_read_completed`, and the peer's FIN instead of
/// `on_connection_client_close`, on the connection's task. The other callbacks run as usual.
pub(crate) trait ReadSink: Send + Sync + fmt::Debug {
    /// A read's data, delivered where `on_read_completed` would have run.
    fn deliver(&self, data: BytesMut);

    /// The peer's FIN, where `on_connection_client_close` would have run.
    fn peer_closed(&self);

    /// The connection ended with `reason`; told before its closing events run, and last.
    fn ended(&self, reason: ClosureReason);

    /// Whoever the reads were for is gone: a read still requested no longer keeps the connection
    /// open.
    fn is_gone(&self) -> bool;
}
