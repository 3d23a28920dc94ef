//! The handle that does not keep its connection open: [`WeakConnection`].

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use crate::connection::{Connection, Shared};
use crate::ids::ConnectionId;

/// A handle to a connection that does not keep it open: the lifetime rule ignores it. Made by
/// [`Connection::downgrade`] (and by [`Server::connections`](crate::Server::connections)); turned
/// back into a [`Connection`] for a moment with [`upgrade`](WeakConnection::upgrade), to write
/// or close. Cheap to clone, `Send + Sync`, usable from any task.
///
/// This is what to keep in a table of your own (a chat room, a subscription list): a stored
/// [`Connection`] clone keeps its connection open, so a client that half-closes (or that the
/// application has finished with) would never close until the table forgets it. Keep a weak
/// handle instead, or a [`ConnectionGroup`](crate::ConnectionGroup), which also forgets its
/// members by itself when they close.
///
/// A weak handle holds none of the connection's memory: once the connection is released and
/// every counted handle is gone, its state is freed, and only the id and peer address kept
/// here remain.
///
/// ```
/// use std::net::SocketAddr;
/// use std::sync::Mutex;
/// use switchboard::{async_trait, Callbacks, Connection, WeakConnection};
///
/// #[derive(Default)]
/// struct LastClient(Mutex<Option<WeakConnection>>);
///
/// #[async_trait]
/// impl Callbacks for LastClient {
///     async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
///         // Greet the previous client, if it is still there, then remember this one without
///         // keeping it open.
///         let previous = self.0.lock().unwrap().replace(connection.downgrade());
///         if let Some(previous) = previous.and_then(|weak| weak.upgrade()) {
///             let _ = previous.write(format!("client {} arrived\n", connection.id()));
///         } // the counted handle drops here: the previous client is not kept open
///         connection.read();
///     }
/// }
/// ```
#[derive(Clone)]
pub struct WeakConnection {
    id: ConnectionId,
    peer_addr: SocketAddr,
    shared: Weak<Shared>,
}

impl WeakConnection {
    pub(crate) fn new(shared: &Arc<Shared>) -> Self {
        WeakConnection {
            id: shared.id,
            peer_addr: shared.peer(),
            shared: Arc::downgrade(shared),
        }
    }

    /// The connection's number.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The client's address, as [`Connection::peer_addr`] gave it when this handle was made.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// A counted handle, which keeps the connection open until dropped; `None` once the
    /// connection is closing or closed (`close()` or `abort()` was called, the lifetime rule
    /// closed it, the peer reset it, a timeout or a shutdown ended it…), and before it is
    /// established.
    ///
    /// Upgrading never revives a connection the lifetime rule has decided to close: the
    /// connection's task confirms that decision and refuses upgrades from then on in one atomic
    /// step, so either the upgrade comes first (and the connection stays open while the
    /// handle is held) or the decision does (and the upgrade returns `None`).
    ///
    /// Hold the handle only as long as needed: while it is held, the connection stays open.
    #[must_use = "the handle keeps the connection open only while it is held"]
    pub fn upgrade(&self) -> Option<Connection> {
        let shared = self.shared.upgrade()?;
        shared
            .mailbox
            .try_upgrade()
            .then(|| Connection::counted(shared))
    }

    /// Whether the connection is closing or gone: an [`upgrade`](WeakConnection::upgrade) would
    /// return `None`. (`false` can be out of date the moment it is returned; `true` is final.)
    pub fn is_closing(&self) -> bool {
        self.shared
            .upgrade()
            .map_or(true, |shared| shared.mailbox.is_sealed())
    }

    /// Whether this is a handle to `connection` (ids are unique only within one server).
    pub fn is(&self, connection: &Connection) -> bool {
        self.is_shared(connection.shared())
    }

    pub(crate) fn is_shared(&self, shared: &Arc<Shared>) -> bool {
        std::ptr::eq(self.shared.as_ptr(), Arc::as_ptr(shared))
    }
}

impl Connection {
    /// A handle to this connection that does not keep it open (see [`WeakConnection`]).
    ///
    /// ```
    /// # fn example(connection: &switchboard::Connection) {
    /// let weak = connection.downgrade();
    /// assert_eq!(weak.id(), connection.id());
    /// # }
    /// ```
    #[must_use]
    pub fn downgrade(&self) -> WeakConnection {
        WeakConnection::new(self.shared())
    }
}

impl fmt::Debug for WeakConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakConnection")
            .field("id", &self.id)
            .field("peer_addr", &self.peer_addr)
            .field("closing", &self.is_closing())
            .finish()
    }
}

#[cfg(test)]
mod tests;
