//! The handle users hold: read, write, close, abort, user data; and beneath it what a
//! connection is made of: its mailbox, its lifecycle, its weak handle and its user data.

pub(crate) mod closing_hooks;
pub(crate) mod lifecycle;
pub(crate) mod mailbox;
pub(crate) mod read_sink;
pub(crate) mod user_data;
pub(crate) mod weak;

use std::fmt;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use once_cell::race::OnceBox;

use self::closing_hooks::ClosingHooks;
use crate::closure::ClosureReason;
use crate::connection::mailbox::Mailbox;
use crate::connection::user_data::{Slot, UserData};
use crate::error::Error;
use crate::ids::{ConnectionId, Direction};
use crate::proxy::ProxyHeader;
use crate::stats::{ConnectionCounters, ConnectionStats};
use crate::timeouts::Timeouts;
use crate::tls::TlsInfo;

/// The part of a connection shared by its driver, its handles and the server's registry.
///
/// In declaration order (`repr(C)`): the counters and the mailbox's hot part, which every
/// message touches, lead, so that they share the allocation's first cache lines.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Shared {
    pub(crate) counters: ConnectionCounters,
    pub(crate) mailbox: Mailbox,
    pub(crate) id: ConnectionId,
    /// The socket's peer (for a PROXY protocol listener, the balancer) and its local address.
    pub(crate) addresses: SocketAddresses,
    pub(crate) user_data: UserData,
    /// What the PROXY header and the TLS handshake told, once either did (boxed, one pointer for
    /// both: most connections have neither).
    pub(crate) told: OnceBox<Told>,
    /// Who is told when it starts closing (the [groups](crate::ConnectionGroup) it joined,
    /// which it leaves then).
    pub(crate) closing_hooks: ClosingHooks,
    /// The index of the frame layer's user data slot, once it was marked
    /// ([`Shared::mark_frame_slot`]; `u32::MAX` before), found without locking the
    /// application's slots, which may be held (in `with`) by the very callback that broadcasts
    /// to a group. Kept here, not in [`UserData`], where it would take a word of its own: beside
    /// the two flags it fits in what would be padding.
    pub(crate) frame_slot: AtomicU32,
    pub(crate) direction: Direction,
    /// Whether this is a TLS connection (negotiated or not yet).
    pub(crate) is_tls: bool,
}

/// A socket's two addresses, stored compactly: two IPv4 addresses (most connections) take 12
/// bytes in place, where two `SocketAddr`s take 64; any other pair is boxed.
#[derive(Debug)]
pub(crate) enum SocketAddresses {
    V4 {
        peer: SocketAddrV4,
        local: SocketAddrV4,
    },
    Other(Box<[SocketAddr; 2]>),
}

impl SocketAddresses {
    pub(crate) fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        match (peer, local) {
            (SocketAddr::V4(peer), SocketAddr::V4(local)) => SocketAddresses::V4 { peer, local },
            _ => SocketAddresses::Other(Box::new([peer, local])),
        }
    }

    /// The socket's remote address.
    pub(crate) fn peer(&self) -> SocketAddr {
        match self {
            SocketAddresses::V4 { peer, .. } => SocketAddr::V4(*peer),
            SocketAddresses::Other(both) => both[0],
        }
    }

    pub(crate) fn local(&self) -> SocketAddr {
        match self {
            SocketAddresses::V4 { local, .. } => SocketAddr::V4(*local),
            SocketAddresses::Other(both) => both[1],
        }
    }
}

/// What a connection learns before it is established, from its driver, each part set once.
#[derive(Debug, Default)]
pub(crate) struct Told {
    /// The PROXY protocol header, once read.
    pub(crate) proxy: OnceLock<ProxyHeader>,
    /// What the TLS handshake negotiated, once it has.
    pub(crate) tls: OnceLock<TlsInfo>,
}

impl Shared {
    /// The client: the source a PROXY header named, or else the socket's peer.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.proxy_header()
            .and_then(|header| header.source())
            .unwrap_or_else(|| self.addresses.peer())
    }

    /// Where the driver records what the PROXY header and the handshake told.
    pub(crate) fn told(&self) -> &Told {
        self.told.get_or_init(Box::default)
    }

    pub(crate) fn proxy_header(&self) -> Option<&ProxyHeader> {
        self.told.get()?.proxy.get()
    }

    pub(crate) fn tls_info(&self) -> Option<&TlsInfo> {
        self.told.get()?.tls.get()
    }

    /// Marks `slot` as the one [`Shared::frame_slot`] finds: the frame layer's, whose value type
    /// the application cannot name (so never holds its lock). A slot index past `u32::MAX`
    /// cannot be (each slot takes at least 24 bytes of every connection) and is not marked.
    pub(crate) fn mark_frame_slot<T: 'static>(&self, slot: Slot<T>) {
        if let Ok(index) = u32::try_from(slot.index()) {
            self.frame_slot.store(index, Ordering::Release);
        }
    }

    /// The [marked](Shared::mark_frame_slot) slot, if it holds a value of type `T`.
    pub(crate) fn frame_slot<T: 'static>(&self) -> Option<Slot<T>> {
        let index = self.frame_slot.load(Ordering::Acquire);
        if index == u32::MAX {
            return None;
        }
        self.user_data.slot_holding(index as usize)
    }
}

/// A handle to one connection: cheap to clone, usable from any task.
///
/// The handles given to callbacks are borrowed from the connection's own task. Cloning one
/// keeps the connection open (the C++ framework's reference count): a connection stays open while
/// a read is requested, a write is queued or in flight, or the application holds a clone; when
/// none is left it closes gracefully by itself with [`ClosureReason::Unreferenced`] (or
/// [`ClosureReason::PeerClosed`] after the peer's FIN). To remember a connection without
/// keeping it open (in a table of the application's), keep a
/// [`WeakConnection`](crate::WeakConnection) ([`downgrade`](Connection::downgrade)), or put it
/// in a [`ConnectionGroup`](crate::ConnectionGroup).
///
/// Requests made through a handle (`read`, `write`, `close`…) are carried out by the connection's
/// task, in order, after the current callback returns.
///
/// ```no_run
/// use switchboard::{async_trait, BytesMut, Callbacks, Connection};
/// use std::net::SocketAddr;
///
/// struct Echo;
///
/// #[async_trait]
/// impl Callbacks for Echo {
///     async fn on_connection_established(&self, connection: &Connection, _peer: &SocketAddr) {
///         connection.read();
///     }
///     async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
///         // Zero-copy: the buffer read is the buffer written.
///         if connection.write(data.freeze()).is_ok() {
///             connection.read();
///         }
///     }
/// }
/// ```
pub struct Connection {
    shared: Arc<Shared>,
    /// Whether this handle counts toward the lifetime rule (every clone does; the driver's own
    /// handle, lent to callbacks, does not).
    counted: bool,
}

impl Connection {
    /// The driver's own handle, which does not keep the connection open.
    pub(crate) fn uncounted(shared: Arc<Shared>) -> Self {
        Connection {
            shared,
            counted: false,
        }
    }

    /// A handle made from a weak one, already counted.
    pub(crate) fn counted(shared: Arc<Shared>) -> Self {
        Connection {
            shared,
            counted: true,
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The connection's number.
    pub fn id(&self) -> ConnectionId {
        self.shared.id
    }

    /// The remote address: the client's. On a [PROXY protocol](crate::proxy) listener that is
    /// the source the header named (once read: it is, before any callback of the connection
    /// but [`on_socket_created`](crate::Callbacks::on_socket_created)), and the socket's peer for a
    /// `LOCAL` or `UNKNOWN` header.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer()
    }

    /// The socket's own remote address: on a [PROXY protocol](crate::proxy) listener, the load
    /// balancer's; otherwise the same as [`peer_addr`](Connection::peer_addr).
    pub fn transport_peer_addr(&self) -> SocketAddr {
        self.shared.addresses.peer()
    }

    /// The PROXY protocol header the connection began with, on a listener that
    /// [requires one](crate::Listener::proxy_protocol): the addresses it relayed, and for version
    /// 2 its TLVs. `None` on other connections.
    ///
    /// ```
    /// # fn show(connection: &switchboard::Connection) {
    /// if let Some(header) = connection.proxy_header() {
    ///     println!("via {}: client {:?}, SNI {:?}", connection.transport_peer_addr(),
    ///         header.source(), header.authority());
    /// }
    /// # }
    /// ```
    pub fn proxy_header(&self) -> Option<&ProxyHeader> {
        self.shared.proxy_header()
    }

    /// The local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.addresses.local()
    }

    /// Whether the connection was accepted or opened by this side.
    pub fn direction(&self) -> Direction {
        self.shared.direction
    }

    /// The connection's user data slots.
    pub fn user_data(&self) -> &UserData {
        &self.shared.user_data
    }

    /// What the TLS handshake negotiated: `None` on a plain connection, and on a TLS connection
    /// before [`on_negotiation_complete`](crate::Callbacks::on_negotiation_complete) (that is,
    /// only in the failure callbacks of a handshake that did not finish).
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.shared.tls_info()
    }

    /// This connection's byte and operation counts so far.
    pub fn stats(&self) -> ConnectionStats {
        self.shared.counters.snapshot()
    }

    /// What the write queue holds, as it counts against its
    /// [limit](crate::ServerBuilder::write_queue_limit): the bytes written by the application and
    /// not yet handed to the kernel, and 64 for each buffer they are in.
    pub fn queued_write_bytes(&self) -> usize {
        self.shared.mailbox.queued_bytes()
    }

    /// Whether the connection is closing or closed (after `close`, `abort`, the peer's reset, or the
    /// lifetime rule). A closing connection takes no more reads or writes.
    pub fn is_closing(&self) -> bool {
        self.shared.mailbox.is_closing()
    }

    /// Requests one read: when data arrives, [`Callbacks::on_read_completed`](crate::Callbacks::on_read_completed)
    /// gets it, in a buffer of up to the [read buffer size](crate::ServerBuilder::read_buffer_size).
    /// Nothing is allocated for a pending read: the data lands, when it is there, in memory the
    /// runtime thread's reads share (what keeping the buffer costs is in the read buffer size's
    /// docs).
    ///
    /// At most one read is outstanding; requesting again before it completes changes nothing.
    /// A pending read keeps the connection open. After the peer's FIN, or once the connection is
    /// closing, a request is ignored: the events already tell why no data will come.
    pub fn read(&self) {
        self.shared.mailbox.request_read();
    }

    /// Queues `data` to be sent. Once it has been handed to the kernel,
    /// [`Callbacks::on_write_completed`](crate::Callbacks::on_write_completed) gets the same buffer back.
    /// A queued write keeps the connection open until it is sent.
    ///
    /// One order: the peer receives what is posted to a connection in the order it was posted,
    /// whatever the path (a write, a [`goodbye`](Connection::goodbye), a frame layer's
    /// [`feed`](crate::codec::FramedConnection::feed) or
    /// [`send`](crate::codec::FramedConnection::send), a group's
    /// [`broadcast`](crate::ConnectionGroup::broadcast) of bytes or
    /// [of items](crate::ConnectionGroup::broadcast_item)), from the connection's callbacks or
    /// from other tasks: what a frame layer fed and did not flush yet goes out before this write.
    ///
    /// # Errors
    /// A refused write gives its buffer back in the [`WriteError`], with the reason:
    /// - [`Error::WriteQueueFull`] if the queue already holds the
    ///   [write queue limit](crate::ServerBuilder::write_queue_limit) or more. A write is taken
    ///   whenever the queue is below the limit, so the queue never exceeds the limit plus one write
    ///   (and what a frame layer fed before it, which goes out first).
    /// - [`Error::WriteShutdown`] after [`Connection::shutdown_write`].
    /// - [`Error::ConnectionClosed`] once the connection is closing or closed.
    ///
    /// ```
    /// # fn example(connection: &switchboard::Connection) {
    /// if let Err(refused) = connection.write("hello") {
    ///     let (error, data) = refused.into_parts();
    ///     eprintln!("{} bytes not queued: {error}", data.len());
    /// }
    /// # }
    /// ```
    pub fn write(&self, data: impl Into<Bytes>) -> Result<(), WriteError> {
        self.shared
            .mailbox
            .write(data.into())
            .map_err(|(error, data)| WriteError { error, data })
    }

    /// Half-close: once the queued writes are sent, sends FIN. Reads go on; writes are refused from
    /// now on with [`Error::WriteShutdown`].
    pub fn shutdown_write(&self) {
        self.shared.mailbox.shutdown_write();
    }

    /// Graceful close: stops delivering reads, sends every queued write (and what a frame layer
    /// fed before the call), sends FIN, then waits (up to the
    /// [close timeout](crate::ServerBuilder::close_timeout)) for the peer's FIN so that no data
    /// of ours is lost to a reset. Ends with [`ClosureReason::LocalClose`], also when the peer
    /// keeps its end open past the close timeout after it acknowledged everything. Writes are refused
    /// from this call on.
    ///
    /// Data the peer sent that was not read yet, and whatever it still sends, is read and
    /// dropped (reading it is what keeps the kernel from answering our FIN with a reset), but
    /// only up to the [close discard limit](crate::ServerBuilder::close_discard_limit): a peer
    /// that goes on sending past it is reset with [`ClosureReason::DiscardLimit`]. To answer
    /// what the peer already sent before closing (a drain that loses nothing), keep reading
    /// until the protocol is at a point where nothing is left unanswered, then close.
    pub fn close(&self) {
        self.shared.mailbox.close(ClosureReason::LocalClose);
    }

    /// [`close`](Connection::close), reported with the application's own `code`:
    /// [`ClosureReason::Application`]`(code)` (a protocol error, a kick, an idle client the
    /// application dropped). If a close was asked for already, the first one's reason stands.
    ///
    /// ```
    /// # fn kick(connection: &switchboard::Connection) {
    /// const KICKED: u32 = 4001;
    /// connection.close_with(KICKED);
    /// # }
    /// ```
    pub fn close_with(&self, code: u32) {
        self.shared.mailbox.close(ClosureReason::Application(code));
    }

    /// The last word: queues `data` even if the write queue is at its
    /// [limit](crate::ServerBuilder::write_queue_limit), then closes gracefully (as
    /// [`close`](Connection::close)), so `data` goes out after everything queued before it and
    /// before FIN. For the goodbye at shutdown (in
    /// [`on_shutdown_requested`](crate::Callbacks::on_shutdown_requested)), a "server full", an
    /// error reply before hanging up. Ends with [`ClosureReason::LocalClose`] (call
    /// [`close_with`](Connection::close_with) first to report a code of your own instead).
    /// Like every path that posts bytes, it keeps the connection's one order (see
    /// [`write`](Connection::write)).
    ///
    /// The close timeout still bounds how long the delivery may take: a peer that reads nothing
    /// is reset with [`ClosureReason::CloseTimedOut`] and the goodbye is lost with it. A peer
    /// that acknowledged it and our FIN but keeps its own end open does not change the reason.
    ///
    /// # Errors
    /// [`Error::ConnectionClosed`] if the connection is closing or closed (the goodbye comes
    /// back in the [`WriteError`]), [`Error::WriteShutdown`] after
    /// [`shutdown_write`](Connection::shutdown_write).
    ///
    /// ```
    /// # fn at_shutdown(connection: &switchboard::Connection) {
    /// let _ = connection.goodbye("server shutting down\n");
    /// # }
    /// ```
    pub fn goodbye(&self, data: impl Into<Bytes>) -> Result<(), WriteError> {
        self.shared
            .mailbox
            .goodbye(data.into(), ClosureReason::LocalClose)
            .map_err(|(error, data)| WriteError { error, data })
    }

    /// [`close`](Connection::close), ending with `reason` instead of
    /// [`ClosureReason::LocalClose`] (the frame layer's decode errors and partial frames).
    pub(crate) fn close_because(&self, reason: ClosureReason) {
        self.shared.mailbox.close(reason);
    }

    /// Stages the bytes in `encoded` (leaving it empty): they go out ahead of the next write of
    /// any path, or with [`Connection::flush_staged`], as one write, in the connection's one
    /// order of bytes. The frame layer's `feed` stages each encoded item. Refused once the
    /// connection takes no more writes, or while the queue and the staged bytes are at the
    /// queue's limit (the bytes are left in `encoded`).
    pub(crate) fn stage(&self, encoded: &mut BytesMut) -> Result<(), Error> {
        self.shared.mailbox.stage(|staged| {
            if staged.is_empty() {
                // The first item of a batch: the buffer itself, without a copy.
                std::mem::swap(staged, encoded);
            } else {
                staged.extend_from_slice(encoded);
                encoded.clear();
            }
        })
    }

    /// Whether [`Connection::stage`] would refuse bytes now for the queue's limit: the frame
    /// layer asks before it encodes, so that an item refused at the limit takes no memory. (A
    /// closing connection is found out by `stage`, which gives the encoded bytes back.)
    pub(crate) fn may_stage(&self) -> Result<(), Error> {
        match self.shared.mailbox.full_for_staging() {
            Some(full) => Err(full),
            None => Ok(()),
        }
    }

    /// Queues the staged bytes as one write. At the queue's limit they stay staged if `keep`,
    /// and are taken back (and returned in the refusal) otherwise.
    pub(crate) fn flush_staged(&self, keep: bool) -> Result<(), WriteError> {
        self.shared
            .mailbox
            .flush_staged(keep)
            .map_err(|(error, data)| WriteError { error, data })
    }

    /// `Ok(true)` while the write queue, counting the staged bytes, has room (below the high
    /// watermark and the limit), `Ok(false)` while it is high, or why no write will be taken
    /// (the frame layer's check before delivering an item).
    pub(crate) fn has_room_to_stage(&self) -> Result<bool, Error> {
        self.shared.mailbox.has_room_to_stage()
    }

    /// Hard close: drops the queued writes and resets the connection (RST, through `SO_LINGER` 0).
    /// Ends with [`ClosureReason::LocalAbort`]. Overrides a `close` in progress.
    pub fn abort(&self) {
        self.shared.mailbox.abort(ClosureReason::LocalAbort);
    }

    /// Waits until the write queue has room: returns at once unless the queue went above the
    /// [high watermark](crate::ServerBuilder::write_watermarks) (or holds the
    /// [limit](crate::ServerBuilder::write_queue_limit)), and then once it has drained to the low
    /// watermark. This is how a producer on a task of its own follows a slow peer without
    /// polling or dropping data.
    ///
    /// # Errors
    /// - [`Error::ConnectionClosed`] once the connection is closing or closed (also while waiting);
    ///   [`Error::WriteShutdown`] after [`Connection::shutdown_write`].
    /// - [`Error::WriteQueueFull`] when called on the connection's own task (from one of its
    ///   callbacks) while the queue is high: the queue only drains after the callback returns,
    ///   so waiting there would never end.
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits, so dropping the future loses nothing.
    pub async fn writable(&self) -> Result<(), Error> {
        let mailbox = &self.shared.mailbox;
        loop {
            let notified = mailbox.room().notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if mailbox.has_room()? {
                return Ok(());
            }
            if mailbox.on_own_task() {
                return Err(Error::WriteQueueFull {
                    queued: mailbox.queued_bytes(),
                    limit: mailbox.limits().limit,
                });
            }
            notified.await;
        }
    }

    /// [`writable`](Connection::writable), then [`write`](Connection::write): queues `data`
    /// once the queue has room.
    ///
    /// # Errors
    /// As for [`writable`](Connection::writable) and [`write`](Connection::write); the data of a
    /// write that was refused is dropped (use `writable` and `write` to keep it).
    ///
    /// # Cancel safety
    /// Cancel safe in that `data` is either queued whole or not at all: dropping the future
    /// before it returns leaves nothing half-written (the data is then not sent).
    pub async fn write_all(&self, data: impl Into<Bytes>) -> Result<(), Error> {
        let mut data = data.into();
        loop {
            self.writable().await?;
            match self.write(data) {
                Ok(()) => return Ok(()),
                // Another writer took the room first: wait again.
                Err(WriteError {
                    error: Error::WriteQueueFull { .. },
                    data: refused,
                }) => data = refused,
                Err(refused) => return Err(refused.error),
            }
        }
    }

    /// This connection's timeouts (the server's settings until changed).
    pub fn timeouts(&self) -> Timeouts {
        self.shared.mailbox.timeouts()
    }

    /// Changes this connection's timeouts; the connection's task takes the change right after
    /// the current callback (or at once, if it is waiting). The first-byte and half-closed
    /// timeouts always count from their event (establishment, the peer's FIN). The idle and read
    /// timeouts are only tracked while on: turned on, they count from the moment the task takes
    /// the change; changed in length, from their event (the last byte, the read request).
    pub fn set_timeouts(&self, timeouts: Timeouts) {
        self.shared.mailbox.set_timeouts(timeouts);
    }

    /// Requests the next TCP urgent byte: when one arrives,
    /// [`Callbacks::on_read_oob_completed`](crate::Callbacks::on_read_oob_completed) gets it. One
    /// request, one byte, as for [`read`](Connection::read). Urgent data that arrived before the
    /// request is delivered at once (TCP keeps only the latest urgent byte).
    ///
    /// Asking also makes the connection's reads go on past urgent marks. Linux ends a read at
    /// the mark with data still queued behind it, and no readiness event follows; by default a
    /// short read clears the socket's readiness (as tokio's own reads do, saving a `recv` per
    /// message), so on a connection that never asked, the bytes behind an urgent byte wait for
    /// the peer's next segment. Call this once on connections whose peers send urgent data.
    ///
    /// # Errors
    /// [`Error::Unsupported`] on a TLS connection (urgent data bypasses TLS) and on platforms
    /// other than Linux and Android (which have no readiness event for it in tokio).
    pub fn read_oob(&self) -> Result<(), Error> {
        self.oob_supported()?;
        self.shared.mailbox.request_urgent();
        Ok(())
    }

    /// Sends `byte` as TCP urgent data (`MSG_OOB`), ahead of what is still in the write queue.
    /// A peer that does not ask for urgent data never sees it.
    ///
    /// # Errors
    /// [`Error::Unsupported`] as for [`read_oob`](Connection::read_oob);
    /// [`Error::ConnectionClosed`] and [`Error::WriteShutdown`] as for [`write`](Connection::write).
    pub fn send_urgent(&self, byte: u8) -> Result<(), Error> {
        self.oob_supported()?;
        self.shared.mailbox.send_urgent(byte)
    }

    fn oob_supported(&self) -> Result<(), Error> {
        if !cfg!(any(target_os = "linux", target_os = "android")) {
            return Err(Error::Unsupported(
                "urgent data needs Linux or Android (tokio's PRIORITY readiness)",
            ));
        }
        if self.shared.is_tls {
            return Err(Error::Unsupported("urgent data on a TLS connection"));
        }
        Ok(())
    }
}

impl Clone for Connection {
    fn clone(&self) -> Self {
        self.shared.mailbox.add_handle();
        Connection {
            shared: self.shared.clone(),
            counted: true,
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.counted {
            self.shared.mailbox.drop_handle();
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.shared.id)
            .field("peer_addr", &self.shared.peer())
            .field("local_addr", &self.shared.addresses.local())
            .field("direction", &self.shared.direction)
            .finish()
    }
}

/// A write [`Connection::write`] refused: why, and the buffer it did not take (as tokio's
/// `SendError<T>` gives back its value).
#[derive(Debug)]
pub struct WriteError {
    error: Error,
    data: Bytes,
}

impl WriteError {
    /// A refusal of `data` (the frame layer's, for a connection already released).
    pub(crate) fn new(error: Error, data: Bytes) -> Self {
        WriteError { error, data }
    }

    /// Why the write was refused.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The buffer that was not queued.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The reason and the buffer.
    pub fn into_parts(self) -> (Error, Bytes) {
        (self.error, self.data)
    }
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "write of {} bytes refused: {}",
            self.data.len(),
            self.error
        )
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<WriteError> for Error {
    fn from(refused: WriteError) -> Self {
        refused.error
    }
}
