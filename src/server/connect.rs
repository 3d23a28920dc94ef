//! Outgoing connections through the server's manager and limiter.

use std::net::SocketAddr;
use std::sync::Arc;

use socket2::SockRef;
use tokio::net::{TcpSocket, TcpStream};

use crate::connection::read_sink::ReadSink;
use crate::connection::user_data::ConnectArgument;
use crate::connection::Connection;
use crate::error::Error;
use crate::ids::Direction;
#[cfg(feature = "testing")]
use crate::server::driver::transport::ByteStream;
use crate::server::driver::transport::Transport;
use crate::server::driver::Setup;
use crate::server::limit::Permit;
use crate::server::manager::{Addresses, Manager};
use crate::server::registry::Live;
use crate::stats::Count;
use crate::tls::{Secure, TlsConnect};

/// How an outgoing connection is opened.
#[derive(Debug)]
pub(crate) enum Dial {
    /// A TCP socket, then TLS if asked for.
    Socket(Option<TlsConnect>),
    /// A byte stream that is connected already (the `testing` feature's in-memory stream, whose
    /// other end a test holds): nothing to connect, so only the limiter and the pre-connect
    /// callback can fail it.
    #[cfg(feature = "testing")]
    Stream {
        stream: Box<dyn ByteStream>,
        local: SocketAddr,
    },
}

/// An outgoing connect, from the pre-connect event to an established connection or a failure.
/// With `report`, a failure goes to `on_outgoing_connection_failed`; either way the user data is
/// released. With a `sink`, the connection's reads go there (an awaiting client's channel).
pub(crate) async fn connect(
    manager: Arc<Manager>,
    live: Live,
    address: SocketAddr,
    dial: Dial,
    argument: ConnectArgument,
    report: bool,
    sink: Option<Box<dyn ReadSink>>,
) -> Result<Connection, Error> {
    let invoker = manager.invoker();
    let user_data = manager.new_user_data();
    let prepared = invoker
        .call(
            "on_pre_outgoing_connect",
            None,
            invoker
                .callbacks()
                .on_pre_outgoing_connect(&user_data, &address, argument),
        )
        .await;
    let attempt = match prepared {
        Some(()) => open(&manager, address, dial).await,
        None => Err(panicked("on_pre_outgoing_connect")),
    };
    let (user_data, error) = match attempt {
        Ok(Opened {
            transport,
            local,
            secure,
            permit,
        }) => {
            match manager.register(
                transport,
                Addresses {
                    peer: address,
                    local,
                },
                Direction::Outbound,
                user_data,
                Setup {
                    proxied: None,
                    secure,
                    sink,
                },
                permit,
                live,
                true,
                false,
            ) {
                Ok((_, handle)) => return Ok(handle.expect("register was asked for a handle")),
                Err(failed) => failed,
            }
        }
        Err(error) => (user_data, error),
    };
    manager.count(Count::ConnectFailure);
    if report {
        invoker
            .call(
                "on_outgoing_connection_failed",
                None,
                invoker
                    .callbacks()
                    .on_outgoing_connection_failed(&user_data, &address, &error),
            )
            .await;
    }
    invoker
        .call(
            "on_socket_released",
            None,
            invoker.callbacks().on_socket_released(user_data),
        )
        .await;
    Err(error)
}

fn panicked(callback: &'static str) -> Error {
    Error::CallbackPanic {
        callback,
        connection: None,
        message: "see on_error".into(),
    }
}

/// A connected stream, ready to become a connection.
struct Opened {
    transport: Transport,
    /// Our end's address.
    local: SocketAddr,
    secure: Option<Secure>,
    permit: Permit,
}

/// Takes a limiter slot and opens the stream as `dial` says.
async fn open(manager: &Manager, address: SocketAddr, dial: Dial) -> Result<Opened, Error> {
    let permit = manager
        .limiter()
        .try_acquire()
        .ok_or(Error::ConnectionLimitReached {
            limit: manager.limiter().capacity(),
        })?;
    match dial {
        Dial::Socket(tls) => {
            let stream = open_socket(manager, address).await?;
            Ok(Opened {
                local: stream.local_addr()?,
                transport: Transport::Plain(stream),
                secure: tls.map(Secure::Connect),
                permit,
            })
        }
        #[cfg(feature = "testing")]
        Dial::Stream { stream, local } => Ok(Opened {
            transport: Transport::Stream(stream),
            local,
            secure: None,
            permit,
        }),
    }
}

/// Creates the socket (running `on_socket_created`) and connects it.
async fn open_socket(manager: &Manager, address: SocketAddr) -> Result<TcpStream, Error> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_nodelay(manager.config().nodelay)?;
    let created = manager
        .invoker()
        .call_sync("on_socket_created", None, |callbacks| {
            callbacks.on_socket_created(SockRef::from(&socket), Direction::Outbound)
        })
        .await;
    if created.is_none() {
        return Err(panicked("on_socket_created"));
    }
    let timeout = manager.config().connect_timeout;
    let stream = tokio::select! {
        connected = tokio::time::timeout(timeout, socket.connect(address)) => match connected {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(Error::Connect { address, source }),
            Err(_) => return Err(Error::ConnectTimedOut { address, timeout }),
        },
        () = manager.shutdown().draining() => return Err(Error::ShuttingDown),
    };
    Ok(stream)
}
