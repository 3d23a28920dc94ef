//! The settings' defaults, each with the reason for its value.

use std::time::Duration;

/// Listen backlog: Linux's `somaxconn` default since 5.4 and what nginx and Go ask for on Linux.
pub(crate) const DEFAULT_BACKLOG: u32 = 1024;
/// Read buffer size: tokio's and most echo servers' usual 8 KiB. A plain read lands in a buffer of
/// this size kept per runtime thread and is handed over in one of exactly the size read, so an
/// idle connection holds no read buffer.
pub(crate) const DEFAULT_READ_BUFFER_SIZE: usize = 8 * 1024;
/// Write queue limit: Netty's default high watermark (64 KiB).
pub(crate) const DEFAULT_WRITE_QUEUE_LIMIT: usize = 64 * 1024;
/// Write queue high watermark: Netty's default (64 KiB). At or above it a connection's queue is
/// "high": [`Callbacks::on_write_buffer_high`](crate::Callbacks::on_write_buffer_high), and
/// [`Connection::writable`](crate::Connection::writable) waits.
pub(crate) const DEFAULT_WRITE_HIGH_WATERMARK: usize = 64 * 1024;
/// Write queue low watermark: Netty's default (32 KiB). A high queue that drains to it is no
/// longer high: [`Callbacks::on_write_buffer_low`](crate::Callbacks::on_write_buffer_low).
pub(crate) const DEFAULT_WRITE_LOW_WATERMARK: usize = 32 * 1024;
/// Drain time at shutdown before the remaining connections are reset: Kubernetes' default
/// termination grace period.
pub(crate) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful close waits for the flush and the peer's FIN: nginx's `lingering_timeout`.
pub(crate) const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// What a graceful close reads and drops of the peer's data before resetting instead: a few
/// round trips' worth of what a peer may have had in flight when the close began (the write queue
/// limit's default), far below what a peer streaming for the whole close timeout could push.
pub(crate) const DEFAULT_CLOSE_DISCARD_LIMIT: usize = 64 * 1024;
/// The longest [refusal message](crate::ServerBuilder::refusal_message): well inside the smallest send
/// buffer a new TCP socket gets (Linux's `tcp_wmem` minimum is 4 KiB, its default 16 KiB).
pub const MAX_REFUSAL_MESSAGE: usize = 1024;
/// Outgoing connect timeout: long enough for a retransmitted SYN (1 s, then 3 s), short enough
/// that a dead host is reported promptly.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take, from accept (or connect) to negotiated: the design's
/// default, as in Netty's `SslHandler` (10 s).
pub(crate) const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes of accepted connections in progress at once. A busy 2-core server completes a
/// few thousand handshakes a second, so 512 in progress is far more than honest clients need,
/// while a flood of clients that connect and stall holds at most this many connection slots
/// (those that say nothing give theirs up to newer connections; those that stall mid-handshake
/// hold theirs until the handshake timeout).
pub(crate) const DEFAULT_MAX_CONCURRENT_HANDSHAKES: usize = 512;
/// How many sources it takes, by default, to fill the concurrent-handshake cap: each
/// [source](crate::ServerBuilder::ipv6_source_prefix) may hold this fraction of it
/// ([`ServerBuilder::max_handshakes_per_source`](crate::ServerBuilder::max_handshakes_per_source)),
/// 256 of the default 512. Connections that say nothing give their slot up to newer ones, so the
/// share bounds the clients that start a handshake and stall it: one address (or one IPv6
/// prefix) alone holds half the cap at most, and the other half stays for everyone else. It is
/// not smaller because honest clients share addresses and open connections in bursts: a NAT
/// gateway, a proxy without the PROXY protocol, a connection pool warming up, a load test from one
/// host (`echo_client --conns 200 --tls` failed 135 of its 200 handshakes with an eighth).
pub(crate) const DEFAULT_SOURCES_TO_FILL_HANDSHAKES: usize = 2;
/// The IPv6 prefix length whose addresses count as one source: a /64, what one subscriber or one
/// host is usually given (RFC 6177; SLAAC fills the low 64 bits with addresses of the host's
/// choosing), so a client can take a fresh address within it for every connection.
pub(crate) const DEFAULT_IPV6_SOURCE_PREFIX: u8 = 64;
