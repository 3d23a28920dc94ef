//! Why a connection ended.

use std::fmt;

/// Why a connection ended, passed to
/// [`Callbacks::on_connection_closure`](crate::Callbacks::on_connection_closure) exactly once per
/// connection and counted in [`Stats::closures`](crate::Stats::closures).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClosureReason {
    /// The peer sent FIN and the connection then closed gracefully: our queued writes were
    /// delivered and our FIN sent.
    PeerClosed,
    /// The peer reset the connection (RST); see
    /// [`Callbacks::on_connection_reset`](crate::Callbacks::on_connection_reset).
    PeerReset,
    /// [`Connection::close`](crate::Connection::close) was called: queued writes were flushed,
    /// then FIN was sent.
    LocalClose,
    /// [`Connection::abort`](crate::Connection::abort) was called: the queue was dropped and RST
    /// sent.
    LocalAbort,
    /// The lifetime rule closed it: no read was requested, no write was queued and the
    /// application held no [`Connection`](crate::Connection) handle. It closed gracefully.
    Unreferenced,
    /// A read failed and the application did not keep the connection
    /// ([`Callbacks::on_read_error_may_not_be_fatal`](crate::Callbacks::on_read_error_may_not_be_fatal)
    /// returned `false`).
    ReadError,
    /// A write failed and the application did not keep the connection.
    WriteError,
    /// A graceful close could not get everything queued, and its FIN, to the peer (sent and
    /// acknowledged) within the [close timeout](crate::ServerBuilder::close_timeout); the
    /// connection was reset. (A close whose peer acknowledged everything keeps its own reason
    /// when the peer then keeps its end open: that peer is counted in
    /// [`Stats::lingering_peers`](crate::Stats), beside the reason.)
    CloseTimedOut,
    /// A callback for this connection panicked; the connection was reset.
    CallbackPanic,
    /// [`Server::abort_all_connections`](crate::Server::abort_all_connections) reset it.
    AbortAll,
    /// It was still open when the shutdown's drain time ran out and was reset.
    ShutdownForced,
    /// A TLS failure detected on our side: a handshake that could not be negotiated (bad
    /// certificate, no common protocol, plain text or garbage where a TLS record belongs) or a
    /// record that did not decrypt; see [`Callbacks::on_fatal_error`](crate::Callbacks::on_fatal_error).
    /// A failed handshake closes with FIN, so that the alert the TLS library sent reaches the
    /// peer; a failure after the handshake resets the connection. Queued data is lost either way.
    TlsError,
    /// The peer ended the TLS session with a fatal alert (for example, it did not trust our
    /// certificate); see [`Callbacks::on_remote_fatal_error`](crate::Callbacks::on_remote_fatal_error).
    /// Closed as for [`TlsError`](ClosureReason::TlsError).
    TlsAlert,
    /// The TLS handshake did not finish within the
    /// [handshake timeout](crate::ServerBuilder::handshake_timeout); the connection was reset.
    HandshakeTimedOut,
    /// The connection was accepted while the
    /// [maximum of concurrent TLS handshakes](crate::ServerBuilder::max_concurrent_handshakes) were
    /// already running, none of them by a connection that had yet to send a byte, or while its
    /// source held its [share](crate::ServerBuilder::max_handshakes_per_source) of them; it was
    /// reset without a handshake.
    HandshakeLimit,
    /// No byte was read or written for the [idle timeout](crate::Timeouts::idle); reset, or
    /// closed gracefully (queued data, then FIN) if
    /// [`on_idle_timeout`](crate::Callbacks::on_idle_timeout) answered
    /// [`IdleAction::Close`](crate::IdleAction::Close).
    IdleTimedOut,
    /// A requested read got no data within the [read timeout](crate::Timeouts::read); reset.
    ReadTimedOut,
    /// The peer sent FIN and the connection was still open after the
    /// [half-closed timeout](crate::Timeouts::half_closed); reset.
    HalfClosedTimedOut,
    /// No byte arrived within the [first-byte timeout](crate::Timeouts::first_byte) after the
    /// connection was established, or, on an accepted TLS connection, after its handshake began;
    /// reset.
    FirstByteTimedOut,
    /// The write queue stayed above its high watermark for longer than the
    /// [slow-consumer timeout](crate::ServerBuilder::slow_consumer_timeout): the peer does not
    /// read what it is sent. Reset, the queue dropped.
    SlowConsumer,
    /// The connection was accepted from a peer address that already had the
    /// [maximum of live connections per address](crate::ServerBuilder::max_connections_per_ip),
    /// and was reset at once: after `on_socket_created`, with no TLS handshake and no
    /// `on_connection_established`.
    PerIpLimit,
    /// The connection came to a [PROXY protocol](crate::proxy) listener and did not begin with a
    /// valid header in time: it came from outside the trusted networks, or its header was
    /// malformed, truncated, too long or late. Reset before it was established, after
    /// `on_socket_created` only.
    ProxyProtocol,
    /// The application closed it with a code of its own,
    /// [`Connection::close_with`](crate::Connection::close_with) (a protocol error, a kick, a
    /// goodbye): queued writes were flushed, then FIN was sent, as for
    /// [`LocalClose`](ClosureReason::LocalClose). Every code counts as one reason in
    /// [`Stats::closures`](crate::Stats::closures) and the metrics (`application`); the code is
    /// in the value, and in its `Debug`.
    Application(u32),
    /// A graceful close read and dropped more than the
    /// [close discard limit](crate::ServerBuilder::close_discard_limit) of what the peer went on
    /// sending, and was reset: a closing connection does not read on without bound.
    DiscardLimit,
    /// The connection's [decoder](crate::codec) failed on what the peer sent. The items decoded
    /// before the error were delivered; then the connection closed gracefully (the replies
    /// queued so far were sent, then FIN).
    Decode,
    /// The peer sent more than the [maximum frame length](crate::codec::Framing::max_frame_length)
    /// without completing a frame (or the decoder said a frame was too long). Closed as for
    /// [`Decode`](ClosureReason::Decode).
    FrameTooLong,
    /// The peer sent FIN in the middle of a frame: the bytes of an incomplete item were left
    /// when the stream ended. The items before it were delivered and the replies queued were
    /// sent before our FIN.
    PartialFrame,
    /// An accepted TLS connection had not sent a byte of its handshake when the
    /// [maximum of concurrent TLS handshakes](crate::ServerBuilder::max_concurrent_handshakes) was
    /// reached and a newer connection needed a slot: as the oldest such connection, it gave its
    /// slot up and was reset, before any handshake and after `on_socket_created` only. Many of
    /// these mean clients that connect and say nothing are holding slots (a flood, or a scan).
    HandshakeEvicted,
}

impl ClosureReason {
    /// Every reason, [`Application`](ClosureReason::Application) standing for all its codes (as
    /// `Application(0)`). New reasons may be added in a minor release (the enum is
    /// `#[non_exhaustive]`).
    pub const ALL: &'static [ClosureReason] = &[
        ClosureReason::PeerClosed,
        ClosureReason::PeerReset,
        ClosureReason::LocalClose,
        ClosureReason::LocalAbort,
        ClosureReason::Unreferenced,
        ClosureReason::ReadError,
        ClosureReason::WriteError,
        ClosureReason::CloseTimedOut,
        ClosureReason::CallbackPanic,
        ClosureReason::AbortAll,
        ClosureReason::ShutdownForced,
        ClosureReason::TlsError,
        ClosureReason::TlsAlert,
        ClosureReason::HandshakeTimedOut,
        ClosureReason::HandshakeLimit,
        ClosureReason::IdleTimedOut,
        ClosureReason::ReadTimedOut,
        ClosureReason::HalfClosedTimedOut,
        ClosureReason::FirstByteTimedOut,
        ClosureReason::SlowConsumer,
        ClosureReason::PerIpLimit,
        ClosureReason::ProxyProtocol,
        ClosureReason::Application(0),
        ClosureReason::DiscardLimit,
        ClosureReason::Decode,
        ClosureReason::FrameTooLong,
        ClosureReason::PartialFrame,
        ClosureReason::HandshakeEvicted,
    ];

    /// The reason's `snake_case` name, as used in logs and the example's event lines.
    ///
    /// ```
    /// assert_eq!(switchboard::ClosureReason::PeerReset.as_str(), "peer_reset");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            ClosureReason::PeerClosed => "peer_closed",
            ClosureReason::PeerReset => "peer_reset",
            ClosureReason::LocalClose => "local_close",
            ClosureReason::LocalAbort => "local_abort",
            ClosureReason::Unreferenced => "unreferenced",
            ClosureReason::ReadError => "read_error",
            ClosureReason::WriteError => "write_error",
            ClosureReason::CloseTimedOut => "close_timed_out",
            ClosureReason::CallbackPanic => "callback_panic",
            ClosureReason::AbortAll => "abort_all",
            ClosureReason::ShutdownForced => "shutdown_forced",
            ClosureReason::TlsError => "tls_error",
            ClosureReason::TlsAlert => "tls_alert",
            ClosureReason::HandshakeTimedOut => "handshake_timed_out",
            ClosureReason::HandshakeLimit => "handshake_limit",
            ClosureReason::IdleTimedOut => "idle_timed_out",
            ClosureReason::ReadTimedOut => "read_timed_out",
            ClosureReason::HalfClosedTimedOut => "half_closed_timed_out",
            ClosureReason::FirstByteTimedOut => "first_byte_timed_out",
            ClosureReason::SlowConsumer => "slow_consumer",
            ClosureReason::PerIpLimit => "per_ip_limit",
            ClosureReason::ProxyProtocol => "proxy_protocol",
            ClosureReason::Application(_) => "application",
            ClosureReason::DiscardLimit => "discard_limit",
            ClosureReason::Decode => "decode_error",
            ClosureReason::FrameTooLong => "frame_too_long",
            ClosureReason::PartialFrame => "partial_frame",
            ClosureReason::HandshakeEvicted => "handshake_evicted",
        }
    }

    /// Position of this reason in [`ClosureReason::ALL`] (every application code at one).
    pub(crate) fn index(self) -> usize {
        match self {
            ClosureReason::PeerClosed => 0,
            ClosureReason::PeerReset => 1,
            ClosureReason::LocalClose => 2,
            ClosureReason::LocalAbort => 3,
            ClosureReason::Unreferenced => 4,
            ClosureReason::ReadError => 5,
            ClosureReason::WriteError => 6,
            ClosureReason::CloseTimedOut => 7,
            ClosureReason::CallbackPanic => 8,
            ClosureReason::AbortAll => 9,
            ClosureReason::ShutdownForced => 10,
            ClosureReason::TlsError => 11,
            ClosureReason::TlsAlert => 12,
            ClosureReason::HandshakeTimedOut => 13,
            ClosureReason::HandshakeLimit => 14,
            ClosureReason::IdleTimedOut => 15,
            ClosureReason::ReadTimedOut => 16,
            ClosureReason::HalfClosedTimedOut => 17,
            ClosureReason::FirstByteTimedOut => 18,
            ClosureReason::SlowConsumer => 19,
            ClosureReason::PerIpLimit => 20,
            ClosureReason::ProxyProtocol => 21,
            ClosureReason::Application(_) => 22,
            ClosureReason::DiscardLimit => 23,
            ClosureReason::Decode => 24,
            ClosureReason::FrameTooLong => 25,
            ClosureReason::PartialFrame => 26,
            ClosureReason::HandshakeEvicted => 27,
        }
    }

    /// The application's code, for [`Application`](ClosureReason::Application).
    ///
    /// ```
    /// use switchboard::ClosureReason;
    /// assert_eq!(ClosureReason::Application(4000).application_code(), Some(4000));
    /// assert_eq!(ClosureReason::LocalClose.application_code(), None);
    /// ```
    pub fn application_code(self) -> Option<u32> {
        match self {
            ClosureReason::Application(code) => Some(code),
            _ => None,
        }
    }

    /// Whether the connection ended with FIN (all queued data delivered) rather than RST.
    /// ([`IdleTimedOut`](ClosureReason::IdleTimedOut) ends either way, as
    /// [`on_idle_timeout`](crate::Callbacks::on_idle_timeout) answers; it counts as not
    /// graceful here.)
    ///
    /// ```
    /// use switchboard::ClosureReason;
    /// assert!(ClosureReason::LocalClose.is_graceful());
    /// assert!(!ClosureReason::LocalAbort.is_graceful());
    /// ```
    pub fn is_graceful(self) -> bool {
        matches!(
            self,
            ClosureReason::PeerClosed
                | ClosureReason::LocalClose
                | ClosureReason::Unreferenced
                | ClosureReason::Application(_)
                // The frame layer's endings close gracefully too.
                | ClosureReason::Decode
                | ClosureReason::FrameTooLong
                | ClosureReason::PartialFrame
        )
    }
}

impl fmt::Display for ClosureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ClosureReason;

    #[test]
    fn all_is_in_index_order_and_names_are_unique() {
        for (i, reason) in ClosureReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
        assert_eq!(
            ClosureReason::Application(7).index(),
            ClosureReason::Application(0).index()
        );
        let mut names: Vec<_> = ClosureReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ClosureReason::ALL.len());
    }
}
