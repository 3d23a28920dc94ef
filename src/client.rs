//! Awaitable client connections: an outgoing connection that the task which opened it drives
//! itself (send, then await the reply), still counted, limited, reported and shut down by the
//! server like any other.
//!
//! [`server.connect(address).client()`](crate::ConnectBuilder::client) opens one. Its reads and the peer's
//! FIN go to the [`Client`], not to the callbacks; every other event of the connection runs as
//! for any outgoing connection: `on_pre_outgoing_connect` (with the builder's argument, none unless set),
//! `on_socket_created`, `on_connection_established`, the TLS events, and at the end
//! `on_connection_closure`, `on_connection_closed`, `on_socket_released`. The client's own state
//! lives in the task that holds it, typed, instead of in a type-erased connect argument.
//!
//! The [`Client`] holds a counted handle, so the connection stays open while it exists; dropping
//! it lets the lifetime rule close the connection gracefully (a read it left pending, or one the
//! callbacks asked for, no longer counts once it is gone). A shutdown tells the connection
//! like any other (`on_shutdown_requested`, whose default closes it), and its drain time bounds
//! it.
//!
//! [`Client::framed`] puts a tokio-util codec on top: a [`FramedClient`] is a `Stream` of
//! decoded items and a `Sink` of items to send, with a read timeout of its own.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures::{Sink, Stream};
use tokio::sync::mpsc;
use tokio::time::Sleep;
use tokio_util::codec::{Decoder, Encoder};

use crate::closure::ClosureReason;
use crate::connection::read_sink::ReadSink;
use crate::connection::Connection;
use crate::error::Error;
use crate::server::connect_builder::ConnectBuilder;

/// Clients: connections whose reads an awaiting task takes.
impl ConnectBuilder {
    /// Connects and returns a [`Client`] that the calling task drives: it sends, then awaits
    /// what the peer sends (see [`client`](crate::client)). The connection's reads and the
    /// peer's FIN go to the client; every other event runs as for a connect that is awaited
    /// (with the builder's [`argument`](ConnectBuilder::argument), none unless set, for
    /// `on_pre_outgoing_connect`).
    ///
    /// # Errors
    /// As for a connect that is awaited: [`Error::Connect`], [`Error::ConnectTimedOut`],
    /// [`Error::ConnectionLimitReached`], [`Error::ShuttingDown`], or [`Error::CallbackPanic`]
    /// if a pre-connect callback panicked.
    ///
    /// # Cancel safety
    /// As for a connect that is awaited: the attempt runs on a task of its own.
    ///
    /// ```no_run
    /// # async fn example(server: switchboard::Server) -> Result<(), switchboard::Error> {
    /// let mut client = server.connect("127.0.0.1:6379".parse().unwrap()).client().await?;
    /// client.send("PING\r\n").await?;
    /// let reply = client.recv().await?;
    /// # Ok(()) }
    /// ```
    pub async fn client(self) -> Result<Client, Error> {
        let (sink, receiver) = channel();
        let connection = self.attempt(Some(Box::new(sink))).await?;
        Ok(Client::new(connection, receiver))
    }
}

/// What the driver tells an awaiting client.
#[derive(Debug)]
enum Arrival {
    Data(BytesMut),
    /// The peer's FIN.
    PeerClosed,
    /// The connection ended, for this reason; nothing follows.
    Ended(ClosureReason),
}

/// The driver's side of a client's channel.
#[derive(Debug)]
pub(crate) struct ClientSink(mpsc::UnboundedSender<Arrival>);

impl ReadSink for ClientSink {
    /// A read's data. The channel holds at most what reads the client asked for delivered.
    fn deliver(&self, data: BytesMut) {
        // A client that is gone wants nothing more; its connection closes by the lifetime rule.
        let _ = self.0.send(Arrival::Data(data));
    }

    fn peer_closed(&self) {
        let _ = self.0.send(Arrival::PeerClosed);
    }

    fn ended(&self, reason: ClosureReason) {
        let _ = self.0.send(Arrival::Ended(reason));
    }

    /// The client was dropped: nothing reads what arrives any more.
    fn is_gone(&self) -> bool {
        self.0.is_closed()
    }
}

/// The awaiting task's side, until its connection exists.
#[derive(Debug)]
pub(crate) struct ClientReceiver(mpsc::UnboundedReceiver<Arrival>);

/// Makes a client's two ends.
pub(crate) fn channel() -> (ClientSink, ClientReceiver) {
    let (sink, receiver) = mpsc::unbounded_channel();
    (ClientSink(sink), ClientReceiver(receiver))
}

/// An outgoing connection driven by the task that holds it: write to it, then
/// [`recv`](Client::recv) what the peer sends. From
/// [`ConnectBuilder::client`](crate::ConnectBuilder::client).
///
/// ```no_run
/// # async fn example(server: switchboard::Server, address: std::net::SocketAddr) -> Result<(), switchboard::Error> {
/// let mut client = server.connect(address).client().await?;
/// client.send("PING\r\n").await?;
/// while let Some(data) = client.recv().await? {
///     if data.ends_with(b"\r\n") {
///         break;
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Client {
    connection: Connection,
    arrivals: mpsc::UnboundedReceiver<Arrival>,
    /// The peer's FIN arrived: every later `recv` says so.
    peer_closed: bool,
    /// A read was asked for and its data has not arrived yet: a poll asks for no other.
    reading: bool,
    ended: Option<ClosureReason>,
}

impl Drop for Client {
    fn drop(&mut self) {
        // Before the handle goes (the fields drop after this): when the last handle's drop wakes
        // the driver, it must already see that no one reads, or a read the client left pending
        // (a `recv` given up on, or one asked for after the callbacks' read delivered first)
        // would keep the connection open.
        self.arrivals.close();
    }
}

impl Client {
    pub(crate) fn new(connection: Connection, receiver: ClientReceiver) -> Self {
        Client {
            connection,
            arrivals: receiver.0,
            peer_closed: false,
            reading: false,
            ended: None,
        }
    }

    /// The connection: its addresses, stats, user data, `close`, `abort`, timeouts.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Queues `data` once the write queue has room ([`Connection::write_all`]).
    ///
    /// # Errors
    /// As [`Connection::write_all`]: the connection is closing or closed, or write-shut.
    pub async fn send(&self, data: impl Into<bytes::Bytes>) -> Result<(), Error> {
        self.connection.write_all(data).await
    }

    /// The next data the peer sent (up to the read buffer size, as the peer's segments
    /// arrived), asking for a read if none is pending; `None` once the peer has sent FIN (our
    /// side can still send until it closes).
    ///
    /// # Errors
    /// [`Error::ConnectionClosed`] once the connection has ended any other way;
    /// [`closure`](Client::closure) then says why.
    ///
    /// # Cancel safety
    /// Cancel safe: data that arrives after the future is dropped waits for the next call.
    pub async fn recv(&mut self) -> Result<Option<BytesMut>, Error> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`recv`](Client::recv) as a poll: asks for a read if none is pending, and registers
    /// `cx` to be woken when something arrives.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<BytesMut>, Error>> {
        if self.peer_closed {
            return Poll::Ready(Ok(None));
        }
        if self.ended.is_some() {
            return Poll::Ready(Err(Error::ConnectionClosed));
        }
        if !self.reading {
            self.connection.read();
            self.reading = true;
        }
        Poll::Ready(match ready!(self.arrivals.poll_recv(cx)) {
            Some(Arrival::Data(data)) => {
                self.reading = false;
                Ok(Some(data))
            }
            Some(Arrival::PeerClosed) => {
                self.peer_closed = true;
                Ok(None)
            }
            Some(Arrival::Ended(reason)) => {
                self.ended = Some(reason);
                Err(Error::ConnectionClosed)
            }
            // The driver is gone without a word only if the runtime is shutting down.
            None => Err(Error::ConnectionClosed),
        })
    }

    /// Why the connection ended, once [`recv`](Client::recv) has seen it end.
    pub fn closure(&self) -> Option<ClosureReason> {
        self.ended
    }

    /// Puts `codec` on the connection: a [`FramedClient`], a [`Stream`] of decoded items and a
    /// [`Sink`] of items to encode.
    pub fn framed<C>(self, codec: C) -> FramedClient<C> {
        FramedClient {
            client: self,
            codec,
            buffer: BytesMut::new(),
            out: BytesMut::new(),
            eof: false,
            finished: false,
            read_timeout: None,
            deadline: None,
            waiting: None,
        }
    }
}

/// How much a [`FramedClient`] holds encoded before [`Sink::poll_ready`] queues it: items fed
/// with `SinkExt::feed` go out together up to this size (tokio-util's `FramedWrite` boundary).
const SINK_BOUNDARY: usize = 8 * 1024;

/// An awaited client connection with a codec: a [`Stream`] of the items decoded from what the
/// peer sends, and a [`Sink`] of items to encode and send. From [`Client::framed`].
///
/// It composes as tokio-util's `Framed` does: `StreamExt::next` and `SinkExt::send` from
/// `futures`, `tokio::select!` over `next()` and other futures, and
/// [`StreamExt::split`](futures::StreamExt::split) into a reading half and a writing half for two
/// tasks. A [read timeout](FramedClient::read_timeout) bounds the wait for each item.
///
/// - **The stream** yields `Ok(item)` for each whole item, in order; ends (`None`) after the
///   peer's FIN once every whole item before it was yielded (what is left then goes to the
///   codec's `decode_eof`, whose default refuses a partial item with an error); and ends after
///   an error of the codec, or an [`io::Error`] converted into the codec's error type when the
///   connection ended otherwise than by the peer's FIN (`ConnectionAborted`, from
///   [`Error::ConnectionClosed`]; [`Client::closure`] then says why). A read timeout is an
///   [`io::ErrorKind::TimedOut`] error that does not end it.
/// - **The sink** encodes each item into a buffer; `poll_flush` queues the buffer as one write
///   once the connection's write queue has room (as [`Connection::write_all`] waits), and
///   `poll_close` flushes, then shuts the write side down ([`Connection::shutdown_write`]: FIN
///   once sent, and reading goes on). `SinkExt::send` flushes each item; `SinkExt::feed` leaves
///   up to 8 KiB together for one write. An error is the codec's, or an [`io::Error`]
///   (converted) once the connection takes no more writes.
///
/// ```no_run
/// use std::time::Duration;
/// use futures::{SinkExt, StreamExt};
/// use switchboard::tokio_util::codec::LinesCodec;
/// # async fn example(server: switchboard::Server, address: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
/// let mut lines = server
///     .connect(address)
///     .client()
///     .await?
///     .framed(LinesCodec::new())
///     .read_timeout(Duration::from_secs(5));
/// lines.send("NICK ada").await?;
/// let mut tick = tokio::time::interval(Duration::from_secs(1));
/// loop {
///     tokio::select! {
///         line = lines.next() => match line {
///             Some(line) => println!("the server said {}", line?),
///             None => break,
///         },
///         _ = tick.tick() => lines.send("PING").await?,
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FramedClient<C> {
    client: Client,
    codec: C,
    /// Received bytes not decoded yet.
    buffer: BytesMut,
    /// Items encoded and not yet queued.
    out: BytesMut,
    eof: bool,
    /// The stream has ended: it yields nothing more.
    finished: bool,
    read_timeout: Option<Duration>,
    /// When the wait for the current item times out: set at the first poll that waits, cleared
    /// when an item (or the timeout) is yielded.
    deadline: Option<Pin<Box<Sleep>>>,
    /// A flush waiting for room in the write queue.
    waiting: Option<Writable>,
}

/// A wait for room in a connection's write queue, holding a handle of its own.
struct Writable(Pin<Box<dyn Future<Output = Result<(), Error>> + Send + Sync>>);

impl std::fmt::Debug for Writable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writable")
    }
}

impl<C> FramedClient<C> {
    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The connection.
    pub fn connection(&self) -> &Connection {
        self.client.connection()
    }

    /// With a read timeout: the stream yields an [`io::ErrorKind::TimedOut`] error (converted
    /// into the codec's error type) when no item arrived within `timeout` of the first poll
    /// that waited for it. The wait is for a whole item: a peer that trickles the bytes of one
    /// item slowly times out too. The timeout does not end the stream or the connection: poll
    /// again to wait again, or drop the client (which closes the connection). No timeout by
    /// default.
    #[must_use]
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.set_read_timeout(Some(timeout));
        self
    }

    /// Sets or clears (`None`) the [read timeout](FramedClient::read_timeout); a wait under way
    /// starts again with the new one.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
        self.deadline = None;
    }

    /// The codec, and the bytes received but not decoded yet. Items fed to the sink and not
    /// flushed are dropped.
    pub fn into_parts(self) -> (Client, C, BytesMut) {
        (self.client, self.codec, self.buffer)
    }

    /// Queues the encoded items once the write queue has room.
    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.out.is_empty() {
                return Poll::Ready(Ok(()));
            }
            if let Some(waiting) = &mut self.waiting {
                let room = ready!(waiting.0.as_mut().poll(cx));
                self.waiting = None;
                room?;
            }
            let connection = self.client.connection();
            match connection.shared().mailbox.has_room() {
                Ok(true) => {}
                Ok(false) => {
                    let connection = connection.clone();
                    self.waiting = Some(Writable(Box::pin(
                        async move { connection.writable().await },
                    )));
                    continue;
                }
                Err(error) => return Poll::Ready(Err(error.into())),
            }
            let data = self.out.split().freeze();
            match connection.write(data) {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(refused) => match refused.into_parts() {
                    // Another writer took the room first: wait again.
                    (Error::WriteQueueFull { .. }, data) => {
                        self.out = data
                            .try_into_mut()
                            .unwrap_or_else(|data| BytesMut::from(&data[..]));
                    }
                    (error, _) => return Poll::Ready(Err(error.into())),
                },
            }
        }
    }
}

impl<C: Decoder + Unpin> Stream for FramedClient<C> {
    type Item = Result<C::Item, C::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            let decoded = if this.eof {
                this.codec.decode_eof(&mut this.buffer)
            } else {
                this.codec.decode(&mut this.buffer)
            };
            match decoded {
                Ok(Some(item)) => {
                    this.deadline = None;
                    return Poll::Ready(Some(Ok(item)));
                }
                Ok(None) if this.eof => {
                    this.finished = true;
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(error) => {
                    this.finished = true;
                    return Poll::Ready(Some(Err(error)));
                }
            }
            match this.client.poll_recv(cx) {
                Poll::Ready(Ok(Some(data))) if this.buffer.is_empty() => this.buffer = data,
                Poll::Ready(Ok(Some(data))) => this.buffer.extend_from_slice(&data),
                Poll::Ready(Ok(None)) => this.eof = true,
                Poll::Ready(Err(error)) => {
                    this.finished = true;
                    return Poll::Ready(Some(Err(io::Error::from(error).into())));
                }
                Poll::Pending => return this.poll_timeout(cx),
            }
        }
    }
}

impl<C: Decoder> FramedClient<C> {
    /// Nothing arrived: pending, or the read timeout's error if it has passed.
    fn poll_timeout(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<C::Item, C::Error>>> {
        let Some(timeout) = self.read_timeout else {
            return Poll::Pending;
        };
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(deadline.as_mut().poll(cx));
        self.deadline = None;
        let timed_out = io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no item within the read timeout of {timeout:?}"),
        );
        Poll::Ready(Some(Err(timed_out.into())))
    }
}

impl<C: Encoder<I> + Unpin, I> Sink<I> for FramedClient<C> {
    type Error = C::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        if this.out.len() >= SINK_BOUNDARY {
            ready!(this.poll_flush_out(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, item: I) -> Result<(), Self::Error> {
        let this = self.get_mut();
        this.codec.encode(item, &mut this.out)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(ready!(self.get_mut().poll_flush_out(cx)).map_err(Into::into))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        ready!(this.poll_flush_out(cx))?;
        this.client.connection().shutdown_write();
        Poll::Ready(Ok(()))
    }
}
