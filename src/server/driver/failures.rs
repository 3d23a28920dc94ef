//! What a failed read or write, or a woken urgent-data watcher, means for the connection:
//! the peer's reset, a TLS failure, or an error the application may choose to survive.

use std::io;

use bytes::BytesMut;

use super::urgent::{self, Watched};
use super::{is_reset, Driver};
use crate::closure::ClosureReason;
use crate::connection::lifecycle::{LazyNow, Phase, ReadOutcome, ReadVerdict};
use crate::error::Error;
use crate::tls;

impl Driver {
    /// A read failed: reset, a TLS failure, or an error the application may choose to survive.
    pub(super) async fn read_failed(&mut self, error: io::Error) {
        if matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        ) {
            return;
        }
        if self.transport.is_tls() && tls::is_unexpected_eof(&error) {
            // TCP closed without close_notify: taken as the peer's FIN.
            return self.read_completed(BytesMut::new()).await;
        }
        if self.is_peer_reset(&error) {
            if self.life.on_read(ReadOutcome::Reset, &LazyNow::default())
                == ReadVerdict::AnnounceReset
            {
                self.announce_reset(&error).await;
            }
            return;
        }
        if let Phase::Closing { reason, .. } = self.life.phase() {
            // The peer's side failed while we were finishing ours.
            return self.life.end(reason);
        }
        if self.transport.is_tls() && tls::is_tls_failure(&error) {
            let reason = self.tls_failed(error).await;
            return self.life.end(reason);
        }
        self.life.on_read_failed();
        let callbacks = self.context.invoker.callbacks();
        let keep = self
            .context
            .invoker
            .call(
                "on_read_error_may_not_be_fatal",
                Some(self.shared.id),
                callbacks.on_read_error_may_not_be_fatal(&self.connection, &error),
            )
            .await;
        match keep {
            None => self.life.end(ClosureReason::CallbackPanic),
            Some(true) => {}
            Some(false) => {
                self.shared.mailbox.mark_ended();
                self.call(
                    "on_read_completion_error",
                    callbacks.on_read_completion_error(&self.connection, &error),
                )
                .await;
                self.life.end(ClosureReason::ReadError);
            }
        }
    }

    pub(super) async fn announce_reset(&mut self, error: &io::Error) {
        // Decided: an abort-all from now on does not count this connection.
        self.shared.mailbox.mark_ended();
        let callbacks = self.context.invoker.callbacks();
        self.call(
            "on_connection_reset",
            callbacks.on_connection_reset(&self.connection, error),
        )
        .await;
    }

    pub(super) async fn write_failed(&mut self, error: io::Error) {
        if self.transport.is_tls() && tls::is_tls_failure(&error) {
            let reason = self.tls_failed(error).await;
            return self.life.end(reason);
        }
        if self.is_peer_reset(&error) {
            if self.life.on_write_reset() {
                self.announce_reset(&error).await;
            }
            return;
        }
        let callbacks = self.context.invoker.callbacks();
        let keep = self
            .context
            .invoker
            .call(
                "on_write_error_may_not_be_fatal",
                Some(self.shared.id),
                callbacks.on_write_error_may_not_be_fatal(&self.connection, &error),
            )
            .await;
        match keep {
            None => self.life.end(ClosureReason::CallbackPanic),
            Some(true) => {
                // The unsent data is dropped; the connection goes on.
                let unsent = self.writes.clear();
                self.life.on_dropped(unsent);
                self.shared.mailbox.publish_sent(unsent);
            }
            Some(false) => {
                self.shared.mailbox.mark_ended();
                self.call(
                    "on_write_completion_error",
                    callbacks.on_write_completion_error(&self.connection, &error),
                )
                .await;
                self.life.end(ClosureReason::WriteError);
            }
        }
    }

    /// Whether a failed read or write means the peer reset the connection. Besides ECONNRESET:
    /// once the peer's FIN was read, Linux reports its later RST to a write as EPIPE, which then
    /// means a reset as long as our own FIN has not been sent (after it, EPIPE is our doing).
    pub(super) fn is_peer_reset(&self, error: &io::Error) -> bool {
        is_reset(error)
            || (error.kind() == io::ErrorKind::BrokenPipe
                && self.life.read_closed()
                && !self.life.fin_sent())
    }

    /// Reports a TLS failure (the TLS library's error) to the callback for its side (a peer's
    /// alert, or ours) and gives the closure reason.
    pub(super) async fn tls_failed(
        &mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> ClosureReason {
        self.shared.mailbox.mark_ended();
        let callbacks = self.context.invoker.callbacks();
        let from_peer = tls::is_peer_alert(&source);
        let error = Error::Tls {
            from_peer,
            source: Box::new(source),
        };
        tracing::debug!(connection = %self.shared.id, %error, "TLS failure");
        if from_peer {
            self.call(
                "on_remote_fatal_error",
                callbacks.on_remote_fatal_error(&self.connection, &error),
            )
            .await;
            ClosureReason::TlsAlert
        } else {
            self.call(
                "on_fatal_error",
                callbacks.on_fatal_error(&self.connection, &error),
            )
            .await;
            ClosureReason::TlsError
        }
    }

    /// The urgent-data watcher woke: deliver the byte, or end a failed socket, or stop watching.
    /// Either way the same readiness is never waited on again without a change (guarantee 11).
    pub(super) async fn urgent_watched(&mut self, watched: Watched) {
        let Some(tcp) = self.transport.tcp() else {
            return self.urgent.finish();
        };
        match urgent::recv_urgent_byte(tcp) {
            Ok(Some(byte)) => {
                self.life.on_urgent_delivered();
                let callbacks = self.context.invoker.callbacks();
                let data = BytesMut::from(&[byte][..]);
                if !self
                    .call(
                        "on_read_oob_completed",
                        callbacks.on_read_oob_completed(&self.connection, data),
                    )
                    .await
                {
                    self.life.end(ClosureReason::CallbackPanic);
                }
            }
            result => {
                // No urgent byte. A pending socket error is the peer's reset (on a reset socket
                // `recv(MSG_OOB)` only says EINVAL), whatever the application asked for; a
                // closed read side brings no more urgent data. Either way the watcher is dropped
                // for good, so its readiness is never waited on again.
                let error = match result {
                    Err(error) => Some(error),
                    Ok(_) => tcp.take_error().ok().flatten(),
                };
                if error.is_none() && watched == Watched::Urgent {
                    // Taken already, or not there yet: the readiness was cleared.
                    return;
                }
                self.urgent.finish();
                if let Some(error) = error {
                    if self.life.on_read(ReadOutcome::Reset, &LazyNow::default())
                        == ReadVerdict::AnnounceReset
                    {
                        self.announce_reset(&error).await;
                    }
                }
            }
        }
    }
}
