//! [`EmbeddedPeer`]: the test's end of an embedded connection.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::WAIT_LIMIT;
use crate::ids::ConnectionId;
use crate::testing::memory::{Pipe, DEFAULT_WINDOW};

/// The peer of an embedded connection: the test acts as the client through it.
///
/// Every wait ends after its [wait limit](EmbeddedPeer::set_wait_limit) of tokio's clock (by
/// default [`WAIT_LIMIT`]) with an [`io::ErrorKind::TimedOut`] error. Dropping the peer closes
/// its end as a socket's `close` would: FIN, unless it was [reset](EmbeddedPeer::reset).
#[derive(Debug)]
pub struct EmbeddedPeer {
    id: ConnectionId,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
    pub(super) pipe: Pipe,
    /// Read from the stream and not yet returned (by [`EmbeddedPeer::read_exact`], or not yet
    /// decoded by a [`FramedPeer`](super::FramedPeer)).
    pub(super) pending: BytesMut,
    wait_limit: Duration,
}

impl EmbeddedPeer {
    pub(super) fn new(
        id: ConnectionId,
        peer_addr: SocketAddr,
        local_addr: SocketAddr,
        pipe: Pipe,
    ) -> Self {
        EmbeddedPeer {
            id,
            peer_addr,
            local_addr,
            pipe,
            pending: BytesMut::new(),
            wait_limit: WAIT_LIMIT,
        }
    }

    /// The server's id of this connection: the one its callbacks see. For a client refused at
    /// the connection limit, which never became a connection, 0, which no connection has.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The peer's (this end's) address, as the server sees it.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The server's address of this connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How long each wait of this peer may take, on tokio's clock.
    pub fn set_wait_limit(&mut self, limit: Duration) {
        self.wait_limit = limit;
    }

    /// Sends `data` to the server as one chunk: the server reads it in one
    /// [`on_read_completed`](crate::Callbacks::on_read_completed), or in pieces of its
    /// [read buffer size](crate::ServerBuilder::read_buffer_size) if it is larger, never merged
    /// with another chunk. Does not wait: the server's receive buffer has no limit unless
    /// [`set_send_window`](Self::set_send_window) set one.
    ///
    /// # Errors
    /// [`io::ErrorKind::ConnectionReset`] once either side reset the connection or the server's
    /// end is closed; [`io::ErrorKind::BrokenPipe`] after [`shutdown_write`](Self::shutdown_write);
    /// [`io::ErrorKind::WouldBlock`] if a send window is set and `data` does not fit in what is
    /// left of it (nothing is sent then).
    pub fn send(&self, data: impl AsRef<[u8]>) -> io::Result<()> {
        self.pipe.send(Bytes::copy_from_slice(data.as_ref()))
    }

    /// Sends all of `data`, waiting while the [send window](Self::set_send_window) is full, as a
    /// socket's write waits for a server that stops reading. Each wait for room sends what fits
    /// as one chunk, so the server may read `data` in several.
    ///
    /// # Errors
    /// As [`send`](Self::send) (but never `WouldBlock`); [`io::ErrorKind::TimedOut`] after the
    /// wait limit, with part of `data` perhaps sent.
    ///
    /// # Cancel safety
    /// Not cancel safe: what was sent before the future is dropped stays sent.
    pub async fn send_all(&self, data: impl AsRef<[u8]>) -> io::Result<()> {
        send_all(&self.pipe, self.wait_limit, data.as_ref()).await
    }

    /// Sets how many bytes this peer may have sent that the server has not read (the server's
    /// receive buffer): a server that stops reading then holds up [`send_all`](Self::send_all).
    /// No limit by default.
    pub fn set_send_window(&self, bytes: usize) {
        self.pipe.set_receive_buffer(bytes);
    }

    /// A handle that sends on this connection from another task while the test reads here (as a
    /// socket's write half would).
    pub fn sender(&self) -> EmbeddedSender {
        EmbeddedSender {
            pipe: self.pipe.clone(),
            wait_limit: self.wait_limit,
        }
    }

    /// Waits for data from the server and returns all that arrived (at least one byte), or an
    /// empty buffer once the server's FIN was read.
    ///
    /// # Errors
    /// [`io::ErrorKind::ConnectionReset`] if the connection was reset (by the server's abort, or
    /// by [`reset`](Self::reset)); [`io::ErrorKind::TimedOut`] after the wait limit.
    pub async fn read(&mut self) -> io::Result<Bytes> {
        if !self.pending.is_empty() {
            return Ok(self.pending.split().freeze());
        }
        self.bounded(poll_fn(|cx| self.pipe.poll_recv(cx))).await?
    }

    /// Waits for exactly `len` bytes from the server.
    ///
    /// # Errors
    /// As [`read`](Self::read); [`io::ErrorKind::UnexpectedEof`] if the server's FIN came first.
    pub async fn read_exact(&mut self, len: usize) -> io::Result<Bytes> {
        while self.pending.len() < len {
            let data = self
                .bounded(poll_fn(|cx| self.pipe.poll_recv(cx)))
                .await??;
            if data.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.pending.extend_from_slice(&data);
        }
        Ok(self.pending.split_to(len).freeze())
    }

    /// Reads until the server's FIN and returns everything read.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub async fn read_to_end(&mut self) -> io::Result<Bytes> {
        let mut all = self.pending.split();
        loop {
            let data = self
                .bounded(poll_fn(|cx| self.pipe.poll_recv(cx)))
                .await??;
            if data.is_empty() {
                return Ok(all.freeze());
            }
            all.extend_from_slice(&data);
        }
    }

    /// Sends FIN: the server reads the end of the stream
    /// ([`on_connection_client_close`](crate::Callbacks::on_connection_client_close)) and may
    /// still write.
    pub fn shutdown_write(&self) {
        self.pipe.shutdown_write();
    }

    /// Resets the connection (RST): what either side had in flight is dropped, and the server's
    /// next read or write fails with `ECONNRESET`
    /// ([`on_connection_reset`](crate::Callbacks::on_connection_reset)).
    pub fn reset(&self) {
        self.pipe.reset();
    }

    /// Shuts the server's end for writing behind its driver's back, as `shutdown(SHUT_WR)` on a
    /// duplicate of a socket would: this peer reads FIN after what the server already sent, and
    /// the server's next write fails with `EPIPE` ([`io::ErrorKind::BrokenPipe`]), for a test of
    /// [`on_write_error_may_not_be_fatal`](crate::Callbacks::on_write_error_may_not_be_fatal)
    /// and [`on_write_completion_error`](crate::Callbacks::on_write_completion_error).
    pub fn shutdown_server_write(&self) {
        self.pipe.shutdown_server_write();
    }

    /// Sets how many bytes the server may have sent that this peer has not read (its receive
    /// window; `0` stops the server's writes). While the window is full the server's write queue
    /// grows, up to its [limit](crate::ServerBuilder::write_queue_limit). The default is 256 KiB.
    pub fn set_receive_window(&self, bytes: usize) {
        self.pipe.set_window(bytes);
    }

    /// The receive window a new peer starts with.
    pub const DEFAULT_RECEIVE_WINDOW: usize = DEFAULT_WINDOW;

    /// Bytes the server sent that this peer has not read yet.
    pub fn unread(&self) -> usize {
        self.pipe.unread() + self.pending.len()
    }

    /// Waits until the server's end is closed: its connection ended (before its closing
    /// callbacks run).
    ///
    /// # Errors
    /// [`io::ErrorKind::TimedOut`] after the wait limit.
    pub async fn closed(&self) -> io::Result<()> {
        self.bounded(poll_fn(|cx| self.pipe.poll_server_closed(cx)))
            .await
    }

    /// Whether the server reset the connection (aborted it) rather than closing it with FIN.
    pub fn was_reset_by_server(&self) -> bool {
        self.pipe.server_reset()
    }

    /// This peer seen through `codec`: it sends and receives items instead of bytes, as a
    /// client on tokio-util's `Framed` would. What was read and not yet returned is decoded
    /// first.
    pub fn framed<C>(self, codec: C) -> super::FramedPeer<C> {
        super::FramedPeer::new(self, codec)
    }

    pub(super) async fn bounded<T>(
        &self,
        wait: impl std::future::Future<Output = T>,
    ) -> io::Result<T> {
        tokio::time::timeout(self.wait_limit, wait)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "embedded peer: wait limit"))
    }
}

/// Sends on an embedded connection from a task of its own: from [`EmbeddedPeer::sender`]. Its
/// waits have the peer's wait limit of when it was made. Dropping it does nothing; dropping the
/// peer sends FIN, after which its sends fail.
#[derive(Debug, Clone)]
pub struct EmbeddedSender {
    pipe: Pipe,
    wait_limit: Duration,
}

impl EmbeddedSender {
    /// [`EmbeddedPeer::send`].
    ///
    /// # Errors
    /// As [`EmbeddedPeer::send`].
    pub fn send(&self, data: impl AsRef<[u8]>) -> io::Result<()> {
        self.pipe.send(Bytes::copy_from_slice(data.as_ref()))
    }

    /// [`EmbeddedPeer::send_all`].
    ///
    /// # Errors
    /// As [`EmbeddedPeer::send_all`].
    ///
    /// # Cancel safety
    /// As [`EmbeddedPeer::send_all`].
    pub async fn send_all(&self, data: impl AsRef<[u8]>) -> io::Result<()> {
        send_all(&self.pipe, self.wait_limit, data.as_ref()).await
    }

    /// [`EmbeddedPeer::shutdown_write`].
    pub fn shutdown_write(&self) {
        self.pipe.shutdown_write();
    }
}

async fn send_all(pipe: &Pipe, wait_limit: Duration, data: &[u8]) -> io::Result<()> {
    let mut data = Bytes::copy_from_slice(data);
    let sending = poll_fn(|cx| loop {
        match pipe.poll_send(cx, &mut data) {
            Poll::Ready(Ok(())) if !data.is_empty() => continue,
            done => return done,
        }
    });
    tokio::time::timeout(wait_limit, sending)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "embedded peer: wait limit"))?
}

impl Drop for EmbeddedPeer {
    fn drop(&mut self) {
        self.pipe.shutdown_write();
    }
}
