//! A connection's timeouts.

use std::time::Duration;

/// A connection's timeouts; `None` turns one off. Each ends the connection (with a reset) with a
/// closure reason of its own; the idle timeout may close gracefully instead, as
/// [`Callbacks::on_idle_timeout`](crate::Callbacks::on_idle_timeout) decides. The server's settings
/// ([`ServerBuilder::idle_timeout`](crate::ServerBuilder::idle_timeout) and its neighbours) are
/// every connection's starting point; [`Connection::set_timeouts`](crate::Connection::set_timeouts) changes one connection's.
///
/// ```
/// # fn example(connection: &switchboard::Connection) {
/// use std::time::Duration;
/// let mut timeouts = connection.timeouts();
/// timeouts.idle = Some(Duration::from_secs(300)); // a long-poll client may sit quietly
/// connection.set_timeouts(timeouts);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// No byte read or written for this long:
    /// [`Callbacks::on_idle_timeout`](crate::Callbacks::on_idle_timeout) runs, then the
    /// connection ends with [`ClosureReason::IdleTimedOut`](crate::ClosureReason::IdleTimedOut),
    /// reset or closed gracefully as it answered.
    pub idle: Option<Duration>,
    /// A requested read got no data for this long (time spent with reads paused by a full write
    /// queue does not count): [`ClosureReason::ReadTimedOut`](crate::ClosureReason::ReadTimedOut).
    pub read: Option<Duration>,
    /// The peer sent FIN and the connection is still open this long after:
    /// [`ClosureReason::HalfClosedTimedOut`](crate::ClosureReason::HalfClosedTimedOut).
    pub half_closed: Option<Duration>,
    /// No byte arrived this long after the connection was established (for TLS, after the
    /// handshake): [`ClosureReason::FirstByteTimedOut`](crate::ClosureReason::FirstByteTimedOut).
    /// The defence against clients that connect and say nothing (slowloris). The server's
    /// setting ([`ServerBuilder::first_byte_timeout`](crate::ServerBuilder::first_byte_timeout))
    /// also bounds an accepted TLS client's first byte of the handshake, counted from the
    /// handshake's start, when it is shorter than the handshake timeout: a client that says
    /// nothing at all is the same slowloris whether the server speaks TLS or not.
    pub first_byte: Option<Duration>,
}

/// How a connection whose [idle timeout](Timeouts::idle) passed ends: the answer of
/// [`Callbacks::on_idle_timeout`](crate::Callbacks::on_idle_timeout). Either way its closure
/// reason is [`ClosureReason::IdleTimedOut`](crate::ClosureReason::IdleTimedOut).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum IdleAction {
    /// Reset the connection (RST): what is queued is dropped. The default.
    #[default]
    Reset,
    /// Close it gracefully, as [`Connection::close`](crate::Connection::close) does: what is
    /// queued (a last message written in the callback) is sent, then FIN; the peer's FIN is
    /// awaited up to the [close timeout](crate::ServerBuilder::close_timeout).
    Close,
}
