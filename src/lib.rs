//! # switchboard
//!
//! A callback-driven TCP connection manager for tokio, after the connection-manager model of
//! JetByte's C++ *The Server Framework*. You implement one async trait, [`Callbacks`]; switchboard
//! runs the listeners, the accept loop, one task per connection, the connection limit, abort-all
//! and an ordered shutdown, and calls you at each event of every connection's life, in a
//! guaranteed order.
//!
//! The entry point is [`Server::builder`].
//!
//! ## A connection's life
//! ```text
//!  accept / connect ─► on_socket_created ─► on_connection_established
//!                                              │
//!              ┌───────────────────────────────┘   read() / write() / clones of the handle
//!              ▼                                   keep the connection open
//!   on_read_completed, on_write_completed, error callbacks   (one at a time, on its own task)
//!              │
//!              ├─ peer FIN ─► on_connection_client_close   (writes still allowed)
//!              ├─ peer RST ─► on_connection_reset
//!              ▼
//!   nothing left to do, close(), abort(), abort-all, shutdown, error, panic
//!              ▼
//!   on_connection_closure(reason) ─► on_connection_closed ─► on_socket_released(user data)  [last]
//! ```
//! The lifetime rule is the C++ framework's: a connection stays open while a read is requested, a
//! write is queued or in flight, or the application holds a [`Connection`] clone. When none is left
//! it closes gracefully by itself.
//! Every guarantee the crate makes is numbered, with the tests that show it, in the repository's
//! `docs/guarantees.md`.
//!
//! ## Beyond plain TCP
//! - **TLS** ([`tls`]): a listener or an outgoing connection negotiates on the connection's own
//!   task; `on_negotiation_complete` and `on_secure_connection_established` come before
//!   `on_connection_established`, and `on_secure_socket_released` after `on_socket_released`.
//! - **Flow control**: each write queue has a hard limit and high/low watermarks
//!   (`on_write_buffer_high` / `on_write_buffer_low`, [`Connection::writable`]); a peer that stops
//!   reading can be cut off after a [slow-consumer timeout](ServerBuilder::slow_consumer_timeout).
//! - **Timeouts** ([`Timeouts`]): idle, read, half-closed and first-byte, per server and per
//!   connection, each with its own [`ClosureReason`].
//! - **Groups and weak handles**: a [`WeakConnection`] ([`Connection::downgrade`]) does not keep
//!   its connection open; nor does a [`ConnectionGroup`], which forgets members as they close
//!   and [broadcasts](ConnectionGroup::broadcast) without waiting for a slow member (bytes, or
//!   [items through each member's codec](ConnectionGroup::broadcast_item)); a [`GroupMap`]
//!   keeps a group per key and drops the groups that empty.
//!   [`Server::connection`] and [`Server::connections`] find live connections.
//! - **Urgent data** (Linux): [`Connection::read_oob`], [`Connection::send_urgent`] and
//!   `on_read_oob_completed`.
//! - **Frames** ([`codec`]): [`ServerBuilder::start`] with a [`codec::Framing`] runs a
//!   [`codec::FrameHandler`], whose connections are decoded by a tokio-util codec into whole items, delivered in order one
//!   at a time; items are sent through the codec's encoder.
//! - **Restarts that lose no connection**: [`ServerBuilder::adopt_listener`] starts from a
//!   listening socket made elsewhere (systemd's socket activation, or the process being
//!   replaced), and [`Server::listeners`] duplicates a running server's listening sockets for the
//!   process that replaces it; `on_shutdown_requested` says how to drain without dropping a
//!   request.
//! - **Balancers that do not retry** (Kubernetes, cloud load balancers): a
//!   [drain window](ServerBuilder::drain_window) keeps accepting for a while after the shutdown
//!   begins, with [`Server::is_shutting_down`] as the readiness check;
//!   [`Server::set_tls_acceptor`] renews a certificate without a restart; a second stop signal
//!   [forces](Server::force_shutdown) the shutdown.
//!
//! ## Metrics
//! Every server exports its counts through the [`metrics`](https://docs.rs/metrics/0.24) facade,
//! to whatever recorder the application installs (Prometheus, StatsD, OpenTelemetry…); each
//! count moves with its twin in [`Server::stats`]. The guide's [metrics](guide::metrics) chapter
//! lists the series.
//!
//! ## The guide
//! The [`guide`] is the manual, a module per chapter: [handlers](guide::handlers),
//! [TLS](guide::tls), [ending on purpose](guide::ending), [clients](guide::clients),
//! [groups](guide::groups), [hostile peers](guide::hostile_peers), [frames](guide::frames),
//! [load balancers](guide::load_balancers), [testing](guide::testing),
//! [metrics](guide::metrics), [defaults](guide::defaults) and [the engine](guide::engine).
//!
//! ## Example: an echo server
//! ```no_run
//! use std::net::SocketAddr;
//! use switchboard::{async_trait, BytesMut, Callbacks, Connection, Server};
//!
//! struct Echo;
//!
//! #[async_trait]
//! impl Callbacks for Echo {
//!     async fn on_connection_established(&self, connection: &Connection, _peer: &SocketAddr) {
//!         connection.read();
//!     }
//!
//!     async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
//!         if connection.write(data.freeze()).is_ok() {
//!             connection.read();
//!         }
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), switchboard::Error> {
//!     let server = Server::builder()
//!         .bind("127.0.0.1:5050")
//!         .max_connections(10_000)
//!         .start(Echo)
//!         .await?;
//!     tokio::signal::ctrl_c().await?;
//!     let report = server.shutdown().await;
//!     println!("{} connections closed gracefully, {} were reset", report.graceful, report.forced);
//!     Ok(())
//! }
//! ```
// Four `unsafe` blocks in the crate, each with its proof: two in `server/driver/urgent.rs` for
// urgent data (reading the byte, registering the watcher), one in `server/driver/transport.rs`
// asking the kernel what a closing connection's peer has not acknowledged, and one in
// `connection/mailbox/own.rs` appending a callback's own write to its driver's queue.
#![deny(unsafe_code)]

// The layers, from the bottom: value types that import nothing of the engine; the connection
// (its handles, mailbox and lifecycle); the server (its handle, builder, shared state, accept
// loop, connects, shutdown and the connections' tasks); then the add-ons built on them.
mod closure;
mod defaults;
mod error;
mod ids;
mod metrics;
pub mod proxy;
mod rate;
mod shutdown_report;
mod stats;
mod timeouts;
pub mod tls;

mod connection;

mod server;

pub mod client;
pub mod codec;
mod group;
#[cfg(feature = "testing")]
pub mod testing;

// The guide: documentation only, a module per chapter (docs/guide/).
pub mod guide;

pub use async_trait::async_trait;
pub use bytes::{Bytes, BytesMut};
pub use native_tls;
/// The `openssl` crate switchboard accepts TLS connections through where native-tls is OpenSSL,
/// for an application that builds its own `SslAcceptor` (see [`tls::TlsAcceptor`]).
#[cfg(not(any(windows, target_vendor = "apple")))]
pub use openssl;
pub use socket2;
pub use tokio_util;

pub use client::{Client, FramedClient};
pub use closure::ClosureReason;
pub use connection::user_data::{ConnectArgument, Slot, UserData};
pub use connection::weak::WeakConnection;
pub use connection::{Connection, WriteError};
pub use defaults::MAX_REFUSAL_MESSAGE;
pub use error::Error;
pub use group::{BroadcastReport, ConnectionGroup, Delivery, FullQueuePolicy, GroupMap};
pub use ids::{ConnectionId, Direction};
pub use rate::ReadRate;
pub use server::builder::ServerBuilder;
pub use server::callbacks::Callbacks;
pub use server::connect_builder::ConnectBuilder;
pub use server::into_callbacks::IntoCallbacks;
pub use server::limit::{ConnectionLimiter, LimitPolicy};
pub use server::listen::Listener;
pub use server::{Server, WeakServer};
pub use shutdown_report::ShutdownReport;
pub use stats::{ConnectionStats, Stats};
pub use timeouts::{IdleAction, Timeouts};
pub use tls::{TlsConnect, TlsInfo};

/// Compiles and runs the README's examples as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
