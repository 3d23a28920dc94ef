//! The end of a connection: the socket closed (RST for an abort), then its closing events in
//! order, then its registration dropped.

use std::sync::Arc;

use super::{Context, Driver};
use crate::closure::ClosureReason;
use crate::connection::Connection;
use crate::server::registry::Registration;
use crate::stats::Count;

impl Driver {
    /// Closes the socket and runs the closing events: closure, closed, released, in that order,
    /// with the reason the lifecycle decided.
    ///
    /// Not an `async fn`: the future keeps only what the closing events need (the driver's
    /// other parts, its write queue with what it still held among them, are dropped here, before
    /// the events run), so that it stays small. An `async fn` would hold the whole driver, twice
    /// (as its argument and as the body's local): over a kilobyte, allocated and copied for every
    /// connection, past the allocator's per-thread cache.
    #[allow(clippy::manual_async_fn)]
    pub(super) fn finish(mut self) -> impl std::future::Future<Output = ()> + Send {
        // The end is published (if it was not yet): an abort counted before it takes its place.
        self.publish();
        let Some(reason) = self.life.ended_with() else {
            unreachable!("the driver finishes once the lifecycle has ended");
        };
        let lingered = self.life.peer_lingered();
        let reset = self.life.resets_on_close();
        let Driver {
            context,
            connection,
            transport,
            registration,
            rare,
            ..
        } = self;
        if let Some(sink) = rare.and_then(|rare| rare.sink) {
            // The awaiting task learns how it ended before the closing events run.
            sink.ended(reason);
        }
        if reset {
            transport.reset_on_close();
        }
        drop(transport);
        closing_events(context, connection, registration, reason, lingered)
    }
}

/// The closing events of [`Driver::finish`], once the socket is closed.
async fn closing_events(
    context: Arc<Context>,
    connection: Connection,
    mut registration: Registration,
    reason: ClosureReason,
    lingered: bool,
) {
    if matches!(
        reason,
        ClosureReason::AbortAll | ClosureReason::ShutdownForced
    ) {
        // `on_all_connections_aborted` comes before the closing events of what it aborted.
        registration.aborts_announced().await;
    }
    registration.ended(reason);
    if lingered {
        context.counters.count(Count::LingeringPeer);
    }
    let shared = connection.shared();
    let invoker = &context.invoker;
    let callbacks = invoker.callbacks();
    let id = Some(shared.id);
    invoker
        .call(
            "on_connection_closure",
            id,
            callbacks.on_connection_closure(&connection, reason),
        )
        .await;
    invoker
        .call(
            "on_connection_closed",
            id,
            callbacks.on_connection_closed(&connection),
        )
        .await;
    let user_data = shared.user_data.take_all();
    invoker
        .call(
            "on_socket_released",
            id,
            callbacks.on_socket_released(user_data),
        )
        .await;
    if shared.is_tls {
        invoker
            .call(
                "on_secure_socket_released",
                id,
                callbacks.on_secure_socket_released(shared.id),
            )
            .await;
    }
    drop(registration);
}
