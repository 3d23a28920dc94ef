//! The crate's error type.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::ids::ConnectionId;

/// Everything that can go wrong in switchboard.
///
/// I/O failures keep their [`io::Error`] (the C++ framework's `lastError`), reachable through
/// [`std::error::Error::source`] and [`Error::io_error`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A builder setting has a value the server cannot run with.
    InvalidSetting {
        /// The builder method that set it, e.g. `"read_buffer_size"`.
        setting: &'static str,
        /// Why the value was refused.
        reason: String,
    },
    /// Resolving or binding a listen address failed, or an adopted listener could not be used.
    Bind {
        /// The address as given to [`ServerBuilder::bind`](crate::ServerBuilder::bind), the
        /// resolved address that failed, or `adopted listener ADDRESS` for one given to
        /// [`ServerBuilder::adopt_listener`](crate::ServerBuilder::adopt_listener).
        address: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// An outgoing connect failed at the socket level (refused, unreachable…).
    Connect {
        /// The address the connect was made to.
        address: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// An outgoing connect did not complete within the configured connect timeout.
    ConnectTimedOut {
        /// The address the connect was made to.
        address: SocketAddr,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The [`ConnectionLimiter`](crate::ConnectionLimiter) had no free slot for a new connection.
    ConnectionLimitReached {
        /// The limiter's maximum.
        limit: usize,
    },
    /// The server is shutting down (or has shut down) and takes no new connections.
    ShuttingDown,
    /// The connection is closing or closed: it takes no more writes.
    ConnectionClosed,
    /// [`Connection::shutdown_write`](crate::Connection::shutdown_write) was called: no more writes.
    WriteShutdown,
    /// The connection's write queue already holds its limit (counted as
    /// [`ServerBuilder::write_queue_limit`](crate::ServerBuilder::write_queue_limit) says: bytes,
    /// and a fixed overhead per buffer).
    WriteQueueFull {
        /// What the queue holds, counted as the limit is.
        queued: usize,
        /// The configured [write queue limit](crate::ServerBuilder::write_queue_limit).
        limit: usize,
    },
    /// A callback panicked. The panic was caught; when the callback belonged to a connection,
    /// that connection was aborted with [`ClosureReason::CallbackPanic`](crate::ClosureReason::CallbackPanic).
    CallbackPanic {
        /// Name of the callback, e.g. `"on_read_completed"`.
        callback: &'static str,
        /// The connection the callback ran for, if any.
        connection: Option<ConnectionId>,
        /// The panic message, when the payload was a string.
        message: String,
    },
    /// A TLS handshake or TLS record failed. Passed to
    /// [`Callbacks::on_fatal_error`](crate::Callbacks::on_fatal_error) and
    /// [`Callbacks::on_remote_fatal_error`](crate::Callbacks::on_remote_fatal_error); also returned
    /// when TLS settings (an identity, a connector) cannot be built.
    Tls {
        /// Whether the peer reported the failure with a TLS alert, rather than our side detecting
        /// it.
        from_peer: bool,
        /// The TLS library's error, which names the OpenSSL (or SChannel, Security.framework)
        /// reason: a [`native_tls::Error`], or, for a handshake accepted through OpenSSL directly
        /// (see [`tls::TlsAcceptor`](crate::tls::TlsAcceptor)), an `openssl::ssl::Error`; after
        /// the handshake, an [`io::Error`] wrapping either.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The operation is not available here (the platform or the kind of connection); the text
    /// says which.
    Unsupported(&'static str),
    /// Any other I/O error.
    Io(io::Error),
}

impl Error {
    /// The underlying operating system error, if this error carries one.
    ///
    /// ```
    /// use std::io;
    /// let error = switchboard::Error::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
    /// assert_eq!(error.io_error().map(io::Error::kind), Some(io::ErrorKind::ConnectionRefused));
    /// ```
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Error::Bind { source, .. } | Error::Connect { source, .. } | Error::Io(source) => {
                Some(source)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidSetting { setting, reason } => {
                write!(f, "invalid setting `{setting}`: {reason}")
            }
            Error::Bind { address, source } => write!(f, "cannot listen on {address}: {source}"),
            Error::Connect { address, source } => {
                write!(f, "cannot connect to {address}: {source}")
            }
            Error::ConnectTimedOut { address, timeout } => {
                write!(f, "connect to {address} timed out after {timeout:?}")
            }
            Error::ConnectionLimitReached { limit } => {
                write!(f, "connection limit of {limit} reached")
            }
            Error::ShuttingDown => f.write_str("the server is shutting down"),
            Error::ConnectionClosed => f.write_str("the connection is closed"),
            Error::WriteShutdown => f.write_str("the connection's write side was shut down"),
            Error::WriteQueueFull { queued, limit } => {
                write!(f, "write queue full ({queued} bytes queued, limit {limit})")
            }
            Error::CallbackPanic {
                callback,
                connection,
                message,
            } => {
                write!(f, "callback {callback} panicked")?;
                if let Some(id) = connection {
                    write!(f, " on connection {id}")?;
                }
                write!(f, ": {message}")
            }
            Error::Tls { from_peer, source } => {
                if *from_peer {
                    write!(f, "the peer ended the TLS session with an alert: {source}")
                } else {
                    write!(f, "TLS failure: {source}")
                }
            }
            Error::Unsupported(what) => write!(f, "not supported: {what}"),
            Error::Io(source) => write!(f, "{source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bind { source, .. } | Error::Connect { source, .. } | Error::Io(source) => {
                Some(source)
            }
            Error::Tls { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(error: io::Error) -> Self {
        Error::Io(error)
    }
}

/// For code that speaks `io::Result`: an [`Error::Io`] gives its own error back; any other error
/// becomes an `io::Error` of the closest kind, with the switchboard error as its inner error.
///
/// ```
/// use std::io;
/// let error: io::Error = switchboard::Error::ConnectionClosed.into();
/// assert_eq!(error.kind(), io::ErrorKind::NotConnected);
/// ```
impl From<Error> for io::Error {
    fn from(error: Error) -> Self {
        if let Error::Io(source) = error {
            return source;
        }
        let kind = match &error {
            Error::Io(source) | Error::Bind { source, .. } | Error::Connect { source, .. } => {
                source.kind()
            }
            Error::InvalidSetting { .. } => io::ErrorKind::InvalidInput,
            Error::ConnectTimedOut { .. } => io::ErrorKind::TimedOut,
            Error::ConnectionClosed => io::ErrorKind::NotConnected,
            Error::WriteShutdown => io::ErrorKind::BrokenPipe,
            Error::WriteQueueFull { .. } => io::ErrorKind::WouldBlock,
            Error::Unsupported(_) => io::ErrorKind::Unsupported,
            Error::ConnectionLimitReached { .. }
            | Error::ShuttingDown
            | Error::CallbackPanic { .. }
            | Error::Tls { .. } => io::ErrorKind::Other,
        };
        io::Error::new(kind, error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_comes_back_as_itself_and_others_keep_their_kind_and_source() {
        let io = io::Error::from(Error::Io(io::Error::from_raw_os_error(104)));
        assert_eq!(io.raw_os_error(), Some(104));
        let closed = io::Error::from(Error::ConnectionClosed);
        assert_eq!(closed.kind(), io::ErrorKind::NotConnected);
        let inner = closed.into_inner().expect("the switchboard error inside");
        assert!(matches!(
            inner.downcast_ref::<Error>(),
            Some(Error::ConnectionClosed)
        ));
    }
}
