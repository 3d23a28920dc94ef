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
//! [`Client::framed`] puts a tokio-util codec on top: send items, await decoded items.

use std::io;

use bytes::BytesMut;
use tokio::sync::mpsc;
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
enum Delivery {
    Data(BytesMut),
    /// The peer's FIN.
    PeerClosed,
    /// The connection ended, for this reason; nothing follows.
    Ended(ClosureReason),
}

/// The driver's side of a client's channel.
#[derive(Debug)]
pub(crate) struct ClientSink(mpsc::UnboundedSender<Delivery>);

impl ReadSink for ClientSink {
    /// A read's data. The channel holds at most what reads the client asked for delivered.
    fn deliver(&self, data: BytesMut) {
        // A client that is gone wants nothing more; its connection closes by the lifetime rule.
        let _ = self.0.send(Delivery::Data(data));
    }

    fn peer_closed(&self) {
        let _ = self.0.send(Delivery::PeerClosed);
    }

    fn ended(&self, reason: ClosureReason) {
        let _ = self.0.send(Delivery::Ended(reason));
    }

    /// The client was dropped: nothing reads what arrives any more.
    fn is_gone(&self) -> bool {
        self.0.is_closed()
    }
}

/// The awaiting task's side, until its connection exists.
#[derive(Debug)]
pub(crate) struct ClientReceiver(mpsc::UnboundedReceiver<Delivery>);

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
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    /// The peer's FIN arrived: every later `recv` says so.
    peer_closed: bool,
    ended: Option<ClosureReason>,
}

impl Drop for Client {
    fn drop(&mut self) {
        // Before the handle goes (the fields drop after this): when the last handle's drop wakes
        // the driver, it must already see that no one reads, or a read the client left pending
        // (a `recv` given up on, or one asked for after the callbacks' read delivered first)
        // would keep the connection open.
        self.deliveries.close();
    }
}

impl Client {
    pub(crate) fn new(connection: Connection, receiver: ClientReceiver) -> Self {
        Client {
            connection,
            deliveries: receiver.0,
            peer_closed: false,
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
        if self.peer_closed {
            return Ok(None);
        }
        if self.ended.is_some() {
            return Err(Error::ConnectionClosed);
        }
        self.connection.read();
        match self.deliveries.recv().await {
            Some(Delivery::Data(data)) => Ok(Some(data)),
            Some(Delivery::PeerClosed) => {
                self.peer_closed = true;
                Ok(None)
            }
            Some(Delivery::Ended(reason)) => {
                self.ended = Some(reason);
                Err(Error::ConnectionClosed)
            }
            // The driver is gone without a word only if the runtime is shutting down.
            None => Err(Error::ConnectionClosed),
        }
    }

    /// Why the connection ended, once [`recv`](Client::recv) has seen it end.
    pub fn closure(&self) -> Option<ClosureReason> {
        self.ended
    }

    /// Puts `codec` on the connection: [`FramedClient::send`] encodes items,
    /// [`FramedClient::next`] awaits decoded ones.
    pub fn framed<C>(self, codec: C) -> FramedClient<C> {
        FramedClient {
            client: self,
            codec,
            buffer: BytesMut::new(),
            out: BytesMut::new(),
            eof: false,
        }
    }
}

/// An awaited client connection with a codec: items in, items out. From [`Client::framed`].
///
/// ```no_run
/// use switchboard::tokio_util::codec::LinesCodec;
/// # async fn example(server: switchboard::Server, address: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
/// let mut lines = server.connect(address).client().await?.framed(LinesCodec::new());
/// lines.send("NICK ada").await?;
/// if let Some(line) = lines.next().await? {
///     println!("the server said {line}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FramedClient<C> {
    client: Client,
    codec: C,
    /// Received bytes not decoded yet.
    buffer: BytesMut,
    /// Encoding space, reused.
    out: BytesMut,
    eof: bool,
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

    /// The codec, and the bytes received but not decoded yet.
    pub fn into_parts(self) -> (Client, C, BytesMut) {
        (self.client, self.codec, self.buffer)
    }
}

impl<C: Decoder> FramedClient<C> {
    /// The next decoded item; `None` once the peer has sent FIN and every whole item before it
    /// was returned (what is left then goes to the codec's `decode_eof`, whose default refuses a
    /// partial item with an error).
    ///
    /// # Errors
    /// The codec's error for bytes it cannot decode; an [`io::Error`] (converted into the
    /// codec's error type) when the connection ended otherwise than by the peer's FIN.
    ///
    /// # Cancel safety
    /// Cancel safe: bytes received are kept for the next call.
    pub async fn next(&mut self) -> Result<Option<C::Item>, C::Error> {
        loop {
            if self.eof {
                return self.codec.decode_eof(&mut self.buffer);
            }
            if let Some(item) = self.codec.decode(&mut self.buffer)? {
                return Ok(Some(item));
            }
            match self.client.recv().await {
                Ok(Some(data)) if self.buffer.is_empty() => self.buffer = data,
                Ok(Some(data)) => self.buffer.extend_from_slice(&data),
                Ok(None) => self.eof = true,
                Err(error) => return Err(io::Error::from(error).into()),
            }
        }
    }
}

impl<C> FramedClient<C> {
    /// Encodes `item` and queues it once the write queue has room.
    ///
    /// # Errors
    /// The codec's error, or an [`io::Error`] (converted) if the connection takes no more writes.
    pub async fn send<I>(&mut self, item: I) -> Result<(), <C as Encoder<I>>::Error>
    where
        C: Encoder<I>,
    {
        self.codec.encode(item, &mut self.out)?;
        let bytes = self.out.split().freeze();
        self.client
            .send(bytes)
            .await
            .map_err(|error| io::Error::from(error).into())
    }
}
