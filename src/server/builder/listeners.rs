//! The builder's settings for listeners, TLS and the handshake, and the per-peer limits.

use std::net::ToSocketAddrs;
use std::time::Duration;

use super::ServerBuilder;
use crate::server::listen::Listener;
use crate::tls::TlsAcceptor;

// Named in the docs' links.
#[cfg(doc)]
use crate::server::{callbacks::Callbacks, Server};

/// Listeners, TLS and the handshake.
impl<S> ServerBuilder<S> {
    /// Adds a listener on `address` (port 0 picks a free port; read it back with
    /// [`Server::local_addrs`]). A name is resolved now and the first address it resolves to is
    /// used; call `bind` again for more listeners. Without any `bind` the server only makes
    /// outgoing connections.
    ///
    /// One listener serves one address family. An IPv6 listener, `[::]` included, takes IPv6
    /// clients only: it is `IPV6_V6ONLY` on every platform, so that it behaves the same
    /// everywhere (Linux would otherwise also take IPv4 clients on `[::]`, as `::ffff:a.b.c.d`;
    /// Windows and the BSDs would not). A server for both families binds both, on one port:
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), switchboard::Error> {
    /// # struct App;
    /// # impl switchboard::Callbacks for App {}
    /// let server = switchboard::Server::builder()
    ///     .bind("0.0.0.0:7000") // IPv4 clients
    ///     .bind("[::]:7000") // IPv6 clients
    ///     .start(App)
    ///     .await?;
    /// # server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn bind(self, address: impl ToSocketAddrs) -> Self {
        self.listen(Listener::bind(address))
    }

    /// Adds a TLS listener on `address` whose connections negotiate with `acceptor`, whatever
    /// [`tls`](ServerBuilder::tls) says. See [`bind`](ServerBuilder::bind) for the address.
    pub fn bind_tls(self, address: impl ToSocketAddrs, acceptor: impl Into<TlsAcceptor>) -> Self {
        self.listen(Listener::bind(address).tls(acceptor))
    }

    /// Adds a listener created elsewhere: a socket that systemd or another supervisor passed in
    /// (socket activation; the `listenfd` crate takes it from the environment), or one inherited
    /// from the process this one replaces (see
    /// [`Server::listeners`](crate::Server::listeners) for the hand-off). It must already be
    /// bound and listening; the server sets it non-blocking and accepts from it like a listener
    /// it bound, plain TCP unless [`tls`](ServerBuilder::tls) says otherwise. Its address is in
    /// [`Server::local_addrs`], in the order the listeners were added. The builder's socket
    /// options ([`backlog`](ServerBuilder::backlog),
    /// [`reuse_address`](ServerBuilder::reuse_address), `reuse_port`) are not applied: whoever
    /// made the socket chose them. [`Listener::adopt`] does the same with settings of its own.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), switchboard::Error> {
    /// struct Nothing;
    /// impl switchboard::Callbacks for Nothing {}
    ///
    /// // Here made in place; usually `listenfd::ListenFd::from_env().take_tcp_listener(0)`.
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let address = listener.local_addr()?;
    /// let server = switchboard::Server::builder()
    ///     .adopt_listener(listener)
    ///     .start(Nothing)
    ///     .await?;
    /// assert_eq!(server.local_addr(), Some(address));
    /// server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn adopt_listener(self, listener: std::net::TcpListener) -> Self {
        self.listen(Listener::adopt(listener))
    }

    /// [`adopt_listener`](ServerBuilder::adopt_listener) for a TLS listener whose connections
    /// negotiate with `acceptor`, whatever [`tls`](ServerBuilder::tls) says.
    pub fn adopt_listener_tls(
        self,
        listener: std::net::TcpListener,
        acceptor: impl Into<TlsAcceptor>,
    ) -> Self {
        self.listen(Listener::adopt(listener).tls(acceptor))
    }

    /// Adds a listener with settings of its own: TLS, a [PROXY protocol](crate::proxy) header
    /// before each connection. See [`Listener`].
    pub fn listen(mut self, listen: Listener) -> Self {
        self.binds.push(listen);
        self
    }

    /// Makes every listener added with [`bind`](ServerBuilder::bind) or
    /// [`adopt_listener`](ServerBuilder::adopt_listener) (before or after this call), and every
    /// [`Listener`] without an acceptor of its own,
    /// speak TLS with `acceptor`; see [`tls`](crate::tls) for the events and the protocol
    /// versions, and [`tls::acceptor_from_pem`](crate::tls::acceptor_from_pem) for building one
    /// (a [`TlsAcceptor`], which negotiates TLS 1.3 where the platform has it). A
    /// [`native_tls::TlsAcceptor`] is taken too, and negotiates what native-tls does (TLS 1.2 only
    /// on OpenSSL). Default: plain TCP.
    pub fn tls(mut self, acceptor: impl Into<TlsAcceptor>) -> Self {
        self.tls = Some(acceptor.into());
        self
    }

    /// How long a TLS handshake may take, from accept (or connect; or, on a listener that reads
    /// [PROXY headers](crate::proxy), the end of the header) to negotiated, before the
    /// connection is reset with [`ClosureReason::HandshakeTimedOut`](crate::ClosureReason::HandshakeTimedOut).
    /// Until an accepted client's first byte, a shorter
    /// [first-byte timeout](ServerBuilder::first_byte_timeout) bounds it too. Default: 10 s, as
    /// Netty's `SslHandler`.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// At most `max` TLS handshakes of accepted connections in progress at once, so stalled
    /// handshakes can never hold more than `max` slots of the connection limit. Outgoing
    /// connections are not counted. Default: 512: a busy 2-core server completes a few thousand
    /// handshakes a second, so 512 in progress is far more than honest clients need, while a
    /// flood of clients that connect and stall holds at most that many slots. Must be above zero.
    ///
    /// A connection holds its slot from the start of its handshake (after the
    /// [PROXY header](crate::proxy), on a listener that reads one) to its end. When all `max` are
    /// taken, a new connection takes the slot of the oldest connection that has not sent a byte
    /// yet, which is reset with
    /// [`ClosureReason::HandshakeEvicted`](crate::ClosureReason::HandshakeEvicted): a client
    /// that connects and says nothing cannot keep one that speaks out, however many addresses
    /// it comes from. A connection that has begun its handshake is never evicted. Only if every
    /// slot is held by one that has is the new connection reset at once, with
    /// [`ClosureReason::HandshakeLimit`](crate::ClosureReason::HandshakeLimit). One source's
    /// share of the slots is [`max_handshakes_per_source`](ServerBuilder::max_handshakes_per_source).
    /// Both reasons are counted in [`Stats::closures`](crate::Stats::closures) and the
    /// `switchboard_connections_closed_total` metric.
    pub fn max_concurrent_handshakes(mut self, max: usize) -> Self {
        self.config.max_concurrent_handshakes = max;
        self
    }

    /// At most `max` of the [concurrent handshakes](ServerBuilder::max_concurrent_handshakes)
    /// from one source: one IPv4 address, or the IPv6 addresses of one
    /// [prefix](ServerBuilder::ipv6_source_prefix), as the peer's address says, or, on a
    /// listener that reads [PROXY headers](crate::proxy), the client's address the header names.
    /// A connection from a source that holds `max` is reset at once with
    /// [`ClosureReason::HandshakeLimit`](crate::ClosureReason::HandshakeLimit), and takes no
    /// other connection's slot. Default: half the cap, at least 1 (256 of the default 512): one
    /// source alone holds half the cap at most, and the other half stays for everyone else. It
    /// is not smaller because honest clients share addresses and open connections in bursts (a
    /// NAT gateway, a proxy without the PROXY protocol, a connection pool warming up, a load test
    /// from one host: `echo_client --conns 200 --tls` failed 135 of its 200 handshakes with an
    /// eighth).
    /// A value at or above the cap turns the share off: set it so for a plain listener behind a
    /// load balancer that does not send PROXY headers, where every client has the balancer's
    /// address. Must be above zero.
    ///
    /// ```
    /// let builder = switchboard::Server::builder()
    ///     .max_concurrent_handshakes(1_024)
    ///     .max_handshakes_per_source(32);
    /// # let _ = builder;
    /// ```
    pub fn max_handshakes_per_source(mut self, max: usize) -> Self {
        self.config.max_handshakes_per_source = Some(max);
        self
    }
}

/// Per-peer limits.
impl<S> ServerBuilder<S> {
    /// At most `max` live accepted connections from one source, across all of this server's
    /// listeners: one IPv4 address (an IPv4-mapped IPv6 address, `::ffff:a.b.c.d`, counts as the
    /// IPv4 address), or the IPv6 addresses of one [prefix](ServerBuilder::ipv6_source_prefix),
    /// a /64 by default. Outgoing connections are not counted. Default: no cap. Must be above
    /// zero.
    ///
    /// A connection over the cap is still accepted, so its client learns at once instead of
    /// waiting in the backlog: it gets [`on_socket_created`](Callbacks::on_socket_created), then
    /// is reset (RST) with no TLS handshake and no
    /// [`on_connection_established`](Callbacks::on_connection_established):
    /// [`on_connection_closure`](Callbacks::on_connection_closure) with
    /// [`ClosureReason::PerIpLimit`](crate::ClosureReason::PerIpLimit),
    /// [`on_connection_closed`](Callbacks::on_connection_closed),
    /// [`on_socket_released`](Callbacks::on_socket_released) (and
    /// [`on_secure_socket_released`](Callbacks::on_secure_socket_released) on a TLS listener).
    /// It is counted in [`Stats::refused_per_ip`](crate::Stats::refused_per_ip) and holds a slot of the connection limit until
    /// those events are done. A connection counts against its address from its accept until just
    /// after its `on_socket_released` returns, whichever way it ends; see
    /// [`Server::connections_from_ip`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), switchboard::Error> {
    /// struct Nothing;
    /// impl switchboard::Callbacks for Nothing {}
    ///
    /// let server = switchboard::Server::builder()
    ///     .bind("127.0.0.1:0")
    ///     .max_connections_per_ip(16)
    ///     .start(Nothing)
    ///     .await?;
    /// assert_eq!(server.connections_from_ip([127, 0, 0, 1].into()), Some(0));
    /// server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn max_connections_per_ip(mut self, max: usize) -> Self {
        self.config.max_connections_per_ip = Some(max);
        self
    }

    /// How many leading bits of an IPv6 address name its source, for the
    /// [per-address cap](ServerBuilder::max_connections_per_ip) and the
    /// [handshake share](ServerBuilder::max_handshakes_per_source): the addresses that agree on
    /// them are one peer. Default: 64, since one subscriber or
    /// host is usually given a whole /64 and can take a new address within it for every
    /// connection; counted one by one, its addresses would each get a share of their own. 128
    /// counts every address on its own; a shorter prefix (a /56 or /48, what some providers give
    /// a site) groups more. IPv4 addresses, and IPv4-mapped IPv6 ones, are always counted one by
    /// one. Must be at most 128.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), switchboard::Error> {
    /// struct Nothing;
    /// impl switchboard::Callbacks for Nothing {}
    ///
    /// let server = switchboard::Server::builder()
    ///     .bind("127.0.0.1:0")
    ///     .max_connections_per_ip(4)
    ///     .ipv6_source_prefix(56)
    ///     .start(Nothing)
    ///     .await?;
    /// // Any address of a /56 reads its whole /56's count.
    /// assert_eq!(server.connections_from_ip("2001:db8:0:ff::1".parse().unwrap()), Some(0));
    /// server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn ipv6_source_prefix(mut self, len: u8) -> Self {
        self.config.ipv6_source_prefix = len;
        self
    }
}
