//! What names a connection: its number and which side opened it.

use std::fmt;

/// A connection's number, unique within its server for the server's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(pub(crate) u64);

impl ConnectionId {
    /// The number itself.
    ///
    /// ```
    /// # fn show(connection: &switchboard::Connection) {
    /// println!("connection {} is number {}", connection.id(), connection.id().get());
    /// # }
    /// ```
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Accepted by one of the server's listeners.
    Inbound,
    /// Opened by [`Server::connect`](crate::Server::connect).
    Outbound,
}
