//! The one way to make an outgoing connection: [`Server::connect`] and how it ends.

use std::any::Any;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use crate::connection::read_sink::ReadSink;
use crate::connection::user_data::ConnectArgument;
use crate::connection::Connection;
use crate::error::Error;
use crate::server::connect::{self, Dial};
use crate::server::manager::Manager;
use crate::tls::TlsConnect;

// Named in the docs' links.
#[cfg(doc)]
use crate::server::Server;

/// An outgoing connection to make, from [`Server::connect`]: set [`tls`](Self::tls) and the
/// [`argument`](Self::argument) for `on_pre_outgoing_connect`, then end it one of three ways:
///
/// - **`.await`** connects and returns a [`Connection`] handle once connected, like the C++
///   framework's throwing `Connect`: a failure is returned, not reported through
///   [`on_outgoing_connection_failed`](crate::Callbacks::on_outgoing_connection_failed). The
///   connection's reads go to the callbacks.
/// - **[`client`](Self::client)** connects and returns a [`Client`](crate::Client) that the
///   calling task drives: the connection's reads go to it, not to the callbacks.
/// - **[`spawn`](Self::spawn)** connects on a task of its own, like the C++ framework's
///   `AsyncConnect`: the outcome goes to the callbacks.
///
/// Every way goes through the server's manager and limiter, and the connection then has the
/// lifecycle of an accepted one: `on_pre_outgoing_connect` (with the argument),
/// `on_socket_created`, then its events from
/// [`on_connection_established`](crate::Callbacks::on_connection_established) on, on its own
/// task; [`on_socket_released`](crate::Callbacks::on_socket_released) runs for the user data
/// whatever the outcome.
///
/// ```no_run
/// # async fn example(server: switchboard::Server, tls: switchboard::TlsConnect) -> Result<(), switchboard::Error> {
/// let address = "127.0.0.1:6379".parse().unwrap();
/// // A handle; the callbacks get its events.
/// let connection = server.connect(address).argument("session 1").await?;
/// // A client the calling task drives.
/// let mut client = server.connect(address).tls(tls).client().await?;
/// client.send("PING\r\n").await?;
/// let reply = client.recv().await?;
/// // On a task of its own; a failure runs `on_outgoing_connection_failed`.
/// server.connect(address).spawn()?;
/// # Ok(()) }
/// ```
///
/// # Cancel safety
/// The attempt runs on a task of its own: dropping the future of `.await` or of
/// [`client`](Self::client) stops the waiting, not the attempt, whose events (up to the
/// release) still run; a connection it establishes then closes by itself unless a callback
/// keeps it.
#[must_use = "nothing connects until the builder is awaited, or `client` or `spawn` is called"]
pub struct ConnectBuilder {
    manager: Arc<Manager>,
    address: SocketAddr,
    tls: Option<TlsConnect>,
    argument: ConnectArgument,
}

impl ConnectBuilder {
    pub(crate) fn new(manager: Arc<Manager>, address: SocketAddr) -> Self {
        ConnectBuilder {
            manager,
            address,
            tls: None,
            argument: ConnectArgument::empty(),
        }
    }

    /// Negotiates TLS once the TCP connect succeeds, verifying the server's certificate as `tls`
    /// says. The connection is returned (or established, for [`spawn`](Self::spawn)) at the TCP
    /// connect and negotiates on its own task; writes made meanwhile are sent once it is
    /// secure. A failed negotiation is not the connect's error: it runs
    /// [`on_fatal_error`](crate::Callbacks::on_fatal_error) (or
    /// [`on_remote_fatal_error`](crate::Callbacks::on_remote_fatal_error)) and the closing
    /// events, as the C++ framework does (a [`Client`](crate::Client)'s
    /// [`recv`](crate::Client::recv) then fails and [`Client::closure`](crate::Client::closure)
    /// says why). Default: plain TCP.
    pub fn tls(mut self, tls: TlsConnect) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The value [`on_pre_outgoing_connect`](crate::Callbacks::on_pre_outgoing_connect) gets
    /// in its [`ConnectArgument`]. Default: none ([`ConnectArgument::empty`]).
    pub fn argument(mut self, argument: impl Any + Send) -> Self {
        self.argument = ConnectArgument::new(argument);
        self
    }

    /// Connects on a task of its own: success is
    /// [`on_connection_established`](crate::Callbacks::on_connection_established), failure is
    /// [`on_outgoing_connection_failed`](crate::Callbacks::on_outgoing_connection_failed), then
    /// [`on_socket_released`](crate::Callbacks::on_socket_released). A shutdown waits for the
    /// attempt.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`] at once, with no callback, once a shutdown has closed the
    /// listeners (during a [drain window](crate::ServerBuilder::drain_window) connects still go
    /// out, as accepts still come in).
    pub fn spawn(self) -> Result<(), Error> {
        let live = self.manager.begin()?;
        tokio::spawn(async move {
            // The outcome is reported through the callbacks.
            let _ = connect::connect(
                self.manager,
                live,
                self.address,
                Dial::Socket(self.tls),
                self.argument,
                true,
                None,
            )
            .await;
        });
        Ok(())
    }

    /// Connects on a task of its own and waits for the outcome; with a `sink`, the
    /// connection's reads go there.
    pub(crate) async fn attempt(
        self,
        sink: Option<Box<dyn ReadSink>>,
    ) -> Result<Connection, Error> {
        let live = self.manager.begin()?;
        let attempt = connect::connect(
            self.manager,
            live,
            self.address,
            Dial::Socket(self.tls),
            self.argument,
            false,
            sink,
        );
        match tokio::spawn(attempt).await {
            Ok(result) => result,
            // Callbacks are guarded, so the task only fails when the runtime is shutting down.
            Err(_) => Err(Error::ShuttingDown),
        }
    }
}

/// Connects and returns the connection's handle once connected; the returned handle keeps the
/// connection open until dropped.
///
/// # Errors
/// [`Error::Connect`], [`Error::ConnectTimedOut`], [`Error::ConnectionLimitReached`],
/// [`Error::ShuttingDown`] (once a shutdown has closed the listeners), or
/// [`Error::CallbackPanic`] if a pre-connect callback panicked.
impl IntoFuture for ConnectBuilder {
    type Output = Result<Connection, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<Connection, Error>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.attempt(None))
    }
}

impl fmt::Debug for ConnectBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectBuilder")
            .field("address", &self.address)
            .field("tls", &self.tls.is_some())
            .field("argument", &self.argument)
            .finish_non_exhaustive()
    }
}
