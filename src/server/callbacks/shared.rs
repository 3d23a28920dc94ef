//! `Callbacks` for `Arc<C>`: a server runs callbacks that the application also holds, to look at
//! their state from a test or from other tasks without a side handle.
//!
//! Every method is passed on; a default here would swallow the event.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use socket2::SockRef;

use super::Callbacks;
use crate::closure::ClosureReason;
use crate::connection::user_data::{ConnectArgument, UserData};
use crate::connection::Connection;
use crate::error::Error;
use crate::ids::{ConnectionId, Direction};
use crate::server::Server;
use crate::shutdown_report::ShutdownReport;
use crate::timeouts::IdleAction;
use crate::tls::TlsInfo;

/// The callbacks `C` behind an [`Arc`], shared with the application: the server gets one clone,
/// the application keeps another.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use std::net::SocketAddr;
/// use switchboard::{async_trait, Callbacks, Connection, Server};
///
/// #[derive(Default)]
/// struct Counting {
///     established: AtomicUsize,
/// }
///
/// #[async_trait]
/// impl Callbacks for Counting {
///     async fn on_connection_established(&self, _: &Connection, _: &SocketAddr) {
///         self.established.fetch_add(1, Ordering::Relaxed);
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), switchboard::Error> {
/// let callbacks = Arc::new(Counting::default());
/// let server = Server::builder().bind("127.0.0.1:0").start(callbacks.clone()).await?;
/// assert_eq!(callbacks.established.load(Ordering::Relaxed), 0);
/// # server.shutdown().await;
/// # Ok(()) }
/// ```
#[async_trait]
impl<C: Callbacks + ?Sized> Callbacks for Arc<C> {
    async fn on_server_started(&self, server: &Server) {
        (**self).on_server_started(server).await;
    }
    async fn on_start_accepting_connections(&self) {
        (**self).on_start_accepting_connections().await;
    }
    async fn on_stop_accepting_connections(&self) {
        (**self).on_stop_accepting_connections().await;
    }
    async fn on_accept_error(&self, error: &io::Error) {
        (**self).on_accept_error(error).await;
    }
    fn on_socket_created(&self, socket: SockRef<'_>, direction: Direction) {
        (**self).on_socket_created(socket, direction);
    }
    async fn on_pre_outgoing_connect(
        &self,
        user_data: &UserData,
        address: &SocketAddr,
        argument: ConnectArgument,
    ) {
        (**self)
            .on_pre_outgoing_connect(user_data, address, argument)
            .await;
    }
    async fn on_connection_established(&self, connection: &Connection, address: &SocketAddr) {
        (**self)
            .on_connection_established(connection, address)
            .await;
    }
    async fn on_outgoing_connection_failed(
        &self,
        user_data: &UserData,
        address: &SocketAddr,
        error: &Error,
    ) {
        (**self)
            .on_outgoing_connection_failed(user_data, address, error)
            .await;
    }
    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        (**self).on_read_completed(connection, data).await;
    }
    async fn on_read_error_may_not_be_fatal(
        &self,
        connection: &Connection,
        error: &io::Error,
    ) -> bool {
        (**self)
            .on_read_error_may_not_be_fatal(connection, error)
            .await
    }
    async fn on_read_completion_error(&self, connection: &Connection, error: &io::Error) {
        (**self).on_read_completion_error(connection, error).await;
    }
    // The inner future as it is: no second box for an event that comes once per buffer. An
    // `Arc` of callbacks that keep the default keeps it too: the server skips the call.
    fn on_write_completed<'life0, 'life1, 'async_trait>(
        &'life0 self,
        connection: &'life1 Connection,
        data: Bytes,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        let future = (**self).on_write_completed(connection, data);
        crate::server::invoke::default_write_completed_passed_on::<C, Self>();
        future
    }
    async fn on_write_error_may_not_be_fatal(
        &self,
        connection: &Connection,
        error: &io::Error,
    ) -> bool {
        (**self)
            .on_write_error_may_not_be_fatal(connection, error)
            .await
    }
    async fn on_write_completion_error(&self, connection: &Connection, error: &io::Error) {
        (**self).on_write_completion_error(connection, error).await;
    }
    async fn on_maximum_connections(&self) {
        (**self).on_maximum_connections().await;
    }
    async fn on_all_connections_aborted(&self, count: usize) {
        (**self).on_all_connections_aborted(count).await;
    }
    async fn on_shutdown_initiated(&self) {
        (**self).on_shutdown_initiated().await;
    }
    async fn on_shutdown_requested(&self, connection: &Connection) {
        (**self).on_shutdown_requested(connection).await;
    }
    async fn on_shutdown_complete(&self, report: ShutdownReport) {
        (**self).on_shutdown_complete(report).await;
    }
    async fn on_connection_client_close(&self, connection: &Connection) {
        (**self).on_connection_client_close(connection).await;
    }
    async fn on_connection_reset(&self, connection: &Connection, error: &io::Error) {
        (**self).on_connection_reset(connection, error).await;
    }
    async fn on_idle_timeout(&self, connection: &Connection) -> IdleAction {
        (**self).on_idle_timeout(connection).await
    }
    async fn on_connection_closure(&self, connection: &Connection, reason: ClosureReason) {
        (**self).on_connection_closure(connection, reason).await;
    }
    async fn on_connection_closed(&self, connection: &Connection) {
        (**self).on_connection_closed(connection).await;
    }
    async fn on_socket_released(&self, user_data: UserData) {
        (**self).on_socket_released(user_data).await;
    }
    async fn on_write_buffer_high(&self, connection: &Connection) {
        (**self).on_write_buffer_high(connection).await;
    }
    async fn on_write_buffer_low(&self, connection: &Connection) {
        (**self).on_write_buffer_low(connection).await;
    }
    async fn on_read_oob_completed(&self, connection: &Connection, data: BytesMut) {
        (**self).on_read_oob_completed(connection, data).await;
    }
    async fn on_negotiation_complete(&self, connection: &Connection, info: &TlsInfo) {
        (**self).on_negotiation_complete(connection, info).await;
    }
    async fn on_secure_connection_established(
        &self,
        connection: &Connection,
        address: &SocketAddr,
    ) {
        (**self)
            .on_secure_connection_established(connection, address)
            .await;
    }
    async fn on_fatal_error(&self, connection: &Connection, error: &Error) {
        (**self).on_fatal_error(connection, error).await;
    }
    async fn on_remote_fatal_error(&self, connection: &Connection, error: &Error) {
        (**self).on_remote_fatal_error(connection, error).await;
    }
    async fn on_secure_socket_released(&self, id: ConnectionId) {
        (**self).on_secure_socket_released(id).await;
    }
    async fn on_error(&self, error: &Error) {
        (**self).on_error(error).await;
    }
}
