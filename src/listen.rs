//! One listener's settings: where it listens and how its connections begin.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use crate::proxy::ProxyProtocol;
use crate::Error;

/// A listener to open, for [`ServerBuilder::listen`](crate::ServerBuilder::listen): its address,
/// and whether its connections speak TLS or begin with a [PROXY protocol](crate::proxy) header.
/// [`ServerBuilder::bind`](crate::ServerBuilder::bind) and
/// [`bind_tls`](crate::ServerBuilder::bind_tls) are shorthands for the usual cases.
///
/// ```
/// use switchboard::proxy::ProxyProtocol;
/// use switchboard::{Callbacks, Listen, Server};
///
/// struct Nothing;
/// impl Callbacks for Nothing {}
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Server::builder()
///     // Clients through the load balancer, which says who they are.
///     .listen(
///         Listen::bind("127.0.0.1:0")
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
pub struct Listen {
    pub(crate) address: Result<SocketAddr, Error>,
    /// Its own acceptor; otherwise the builder's, if any.
    pub(crate) tls: Option<native_tls::TlsAcceptor>,
    pub(crate) proxy: Option<Arc<ProxyProtocol>>,
}

impl Listen {
    /// A listener on `address` (port 0 picks a free port; read it back with
    /// [`Server::local_addrs`](crate::Server::local_addrs)). A name is resolved now and the first
    /// address it resolves to is used.
    pub fn bind(address: impl ToSocketAddrs) -> Self {
        Listen {
            address: resolve(address),
            tls: None,
            proxy: None,
        }
    }

    /// Its connections negotiate TLS with `acceptor`, whatever
    /// [`ServerBuilder::tls`](crate::ServerBuilder::tls) says.
    pub fn tls(mut self, acceptor: native_tls::TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
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

impl fmt::Debug for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listen")
            .field("address", &self.address)
            .field("tls", &self.tls.is_some())
            .field("proxy", &self.proxy)
            .finish()
    }
}

/// Resolves a listen address to its first socket address.
fn resolve(address: impl ToSocketAddrs) -> Result<SocketAddr, Error> {
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
