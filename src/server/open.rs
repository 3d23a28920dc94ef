//! Opening the listening sockets: binding an address with the builder's socket options, or
//! adopting a listener made elsewhere (socket activation, a parent process handing its
//! listeners over).

use std::net::{SocketAddr, ToSocketAddrs};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use crate::error::Error;

/// Where a listener comes from.
#[derive(Debug)]
pub(crate) enum ListenOn {
    /// Bound by the builder; the address or why it could not be resolved.
    Address(Result<SocketAddr, Error>),
    /// Made elsewhere and handed to the builder.
    Adopted(std::net::TcpListener),
}

/// The socket options the builder sets on the listeners it binds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenOptions {
    pub(crate) backlog: u32,
    pub(crate) reuse_address: bool,
    pub(crate) reuse_port: bool,
}

/// Resolves a listen address to its first socket address.
pub(crate) fn resolve(address: impl ToSocketAddrs) -> Result<SocketAddr, Error> {
    match address.to_socket_addrs() {
        Ok(mut addresses) => addresses.next().ok_or_else(|| Error::Bind {
            address: "(name with no addresses)".into(),
            source: std::io::Error::from(std::io::ErrorKind::AddrNotAvailable),
        }),
        Err(source) => Err(Error::Bind {
            address: "(unresolvable name)".into(),
            source,
        }),
    }
}

/// Opens one listener, registered with the current tokio runtime; returns it with its address.
pub(crate) fn open(
    on: ListenOn,
    options: &ListenOptions,
) -> Result<(TcpListener, SocketAddr), Error> {
    let (listener, described) = match on {
        ListenOn::Address(address) => {
            let address = address?;
            (bind(address, options)?, address.to_string())
        }
        ListenOn::Adopted(listener) => adopt(listener)?,
    };
    let local_addr = listener.local_addr().map_err(|source| Error::Bind {
        address: described,
        source,
    })?;
    Ok((listener, local_addr))
}

fn bind(address: SocketAddr, options: &ListenOptions) -> Result<TcpListener, Error> {
    let bind_error = |source| Error::Bind {
        address: address.to_string(),
        source,
    };
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(bind_error)?;
    if address.is_ipv6() {
        // One listener per address family, as on every platform's default but Linux's.
        socket.set_only_v6(true).map_err(bind_error)?;
    }
    socket
        .set_reuse_address(options.reuse_address)
        .map_err(bind_error)?;
    if options.reuse_port {
        set_reuse_port(&socket).map_err(bind_error)?;
    }
    socket.set_nonblocking(true).map_err(bind_error)?;
    socket.bind(&address.into()).map_err(bind_error)?;
    socket.listen(options.backlog as i32).map_err(bind_error)?;
    TcpListener::from_std(socket.into()).map_err(bind_error)
}

/// `SO_REUSEPORT`, where socket2 has it (the platforms
/// [`ServerBuilder::reuse_port`](crate::ServerBuilder::reuse_port) exists on).
#[cfg(all(
    unix,
    not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
))]
fn set_reuse_port(socket: &Socket) -> std::io::Result<()> {
    socket.set_reuse_port(true)
}

/// Elsewhere the builder has no way to ask for it.
#[cfg(not(all(
    unix,
    not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
)))]
fn set_reuse_port(_: &Socket) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Takes a listener made elsewhere: non-blocking (tokio needs it), and, where the platform can
/// tell, refused unless `listen` was called on it, as accepting from it would fail forever.
/// Returns it with how to name it in an error.
fn adopt(listener: std::net::TcpListener) -> Result<(TcpListener, String), Error> {
    let described = match listener.local_addr() {
        Ok(address) => format!("adopted listener {address}"),
        Err(_) => "adopted listener".to_string(),
    };
    let adopt_error = |source| Error::Bind {
        address: described.clone(),
        source,
    };
    #[cfg(any(
        target_os = "android",
        target_os = "freebsd",
        target_os = "fuchsia",
        target_os = "linux"
    ))]
    if !socket2::SockRef::from(&listener)
        .is_listener()
        .map_err(adopt_error)?
    {
        return Err(adopt_error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the socket is not listening (listen was never called on it)",
        )));
    }
    listener.set_nonblocking(true).map_err(adopt_error)?;
    let listener = TcpListener::from_std(listener).map_err(adopt_error)?;
    Ok((listener, described))
}
