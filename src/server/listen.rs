//! One listener's settings: where it listens and how its connections begin.

use std::fmt;
use std::net::ToSocketAddrs;
use std::sync::Arc;

use crate::proxy::ProxyProtocol;
use crate::server::open::{self, ListenOn};
use crate::tls::TlsAcceptor;

/// A listener to open, for [`ServerBuilder::listen`](crate::ServerBuilder::listen): its address,
/// (or the socket it adopts), and whether its connections speak TLS or begin with a [PROXY protocol](crate::proxy) header.
/// A listener serves one address family: a listener on `[::]` takes no IPv4 client (see
/// [`Listener::bind`]).
/// [`ServerBuilder::bind`](crate::ServerBuilder::bind), [`bind_tls`](crate::ServerBuilder::bind_tls),
/// [`adopt_listener`](crate::ServerBuilder::adopt_listener) and
/// [`adopt_listener_tls`](crate::ServerBuilder::adopt_listener_tls) are shorthands for the usual
/// cases.
///
/// ```
/// use switchboard::proxy::ProxyProtocol;
/// use switchboard::{Callbacks, Listener, Server};
///
/// struct Nothing;
/// impl Callbacks for Nothing {}
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Server::builder()
///     // Clients through the load balancer, which says who they are.
///     .listen(
///         Listener::bind("127.0.0.1:0")
///             .proxy_protocol(ProxyProtocol::new().trust("127.0.0.0/8".parse()?)),
///     )
///     // Health checks and operators, straight in.
///     .bind("127.0.0.1:0")
///     .start(Nothing)
///     .await?;
/// assert_eq!(server.local_addrs().len(), 2);
/// server.shutdown().await;
/// # Ok(()) }
/// ```
#[must_use = "a listener is opened only once given to `ServerBuilder::listen`"]
pub struct Listener {
    pub(crate) on: ListenOn,
    /// Its own acceptor; otherwise the builder's, if any.
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) proxy: Option<Arc<ProxyProtocol>>,
}

impl Listener {
    /// A listener on `address` (port 0 picks a free port; read it back with
    /// [`Server::local_addrs`](crate::Server::local_addrs)). A name is resolved now and the first
    /// address it resolves to is used.
    ///
    /// An IPv6 address, `[::]` included, takes IPv6 clients only (`IPV6_V6ONLY`, on every
    /// platform): for IPv4 clients as well, listen on `0.0.0.0` and `[::]` both, as
    /// [`ServerBuilder::bind`](crate::ServerBuilder::bind) shows.
    pub fn bind(address: impl ToSocketAddrs) -> Self {
        Listener::on(ListenOn::Address(open::resolve(address)))
    }

    /// A listener created elsewhere: a socket systemd or another supervisor passed in (socket
    /// activation; the `listenfd` crate takes it from the environment), or one inherited from the
    /// process this one replaces (see [`Server::listeners`](crate::Server::listeners) for the
    /// hand-off). See [`ServerBuilder::adopt_listener`](crate::ServerBuilder::adopt_listener).
    pub fn adopt(listener: std::net::TcpListener) -> Self {
        Listener::on(ListenOn::Adopted(listener))
    }

    fn on(on: ListenOn) -> Self {
        Listener {
            on,
            tls: None,
            proxy: None,
        }
    }

    /// Its connections negotiate TLS with `acceptor`, whatever
    /// [`ServerBuilder::tls`](crate::ServerBuilder::tls) says.
    pub fn tls(mut self, acceptor: impl Into<TlsAcceptor>) -> Self {
        self.tls = Some(acceptor.into());
        self
    }

    /// Every connection must begin with a PROXY protocol header (version 1 or 2) from a peer
    /// `settings` trusts; see [`proxy`](crate::proxy). On a TLS listener the header comes first,
    /// in clear, then the handshake (HAProxy's `send-proxy` to a TLS server).
    pub fn proxy_protocol(mut self, settings: ProxyProtocol) -> Self {
        self.proxy = Some(Arc::new(settings));
        self
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("on", &self.on)
            .field("tls", &self.tls.is_some())
            .field("proxy", &self.proxy)
            .finish()
    }
}
