//! A failed read or write, or a woken urgent-data watcher: classified and fed to the lifecycle,
//! which decides what it means (the peer's reset, a TLS failure, or an error the application
//! may choose to survive); then the callbacks of its verdict.

use std::io;

use bytes::BytesMut;

use super::urgent::{self, Watched};
use super::{callback, Driver};
use crate::connection::lifecycle::{IoError, IoVerdict, Op};
use crate::error::Error;
use crate::tls;

impl Driver {
    /// What `error`, from a read or write of this connection's transport, is to the lifecycle;
    /// `None` for the errors that are no failure (`WouldBlock`, `Interrupted`).
    pub(super) fn classify(&self, error: &io::Error) -> Option<IoError> {
        Some(match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => return None,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => IoError::Reset,
            io::ErrorKind::BrokenPipe => IoError::BrokenPipe,
            _ if self.transport.is_tls() && tls::is_tls_failure(error) => IoError::Tls {
                from_peer: tls::is_peer_alert(error),
            },
            _ => IoError::Other,
        })
    }

    /// A read failed: the lifecycle decides what it means, and the driver runs the callbacks
    /// that go with its verdict.
    pub(super) async fn read_failed(&mut self, error: io::Error) {
        if self.transport.is_tls() && tls::is_unexpected_eof(&error) {
            // TCP closed without close_notify: taken as the peer's FIN.
            return self.peer_finished().await;
        }
        self.io_failed(Op::Read, error).await;
    }

    pub(super) async fn write_failed(&mut self, error: io::Error) {
        self.io_failed(Op::Write, error).await;
    }

    /// Feeds a failed `op` to the lifecycle and carries out its verdict.
    async fn io_failed(&mut self, op: Op, error: io::Error) {
        let Some(class) = self.classify(&error) else {
            return;
        };
        match self.life.on_io_error(op, class) {
            IoVerdict::Ended => {}
            IoVerdict::AnnounceReset => self.announce_reset(&error).await,
            IoVerdict::AnnounceTls { from_peer } => {
                self.announce_tls_failure(from_peer, error).await
            }
            IoVerdict::Ask => {
                let keep = match op {
                    Op::Read => callback!(
                        self,
                        "on_read_error_may_not_be_fatal",
                        on_read_error_may_not_be_fatal(&error)
                    ),
                    Op::Write => callback!(
                        self,
                        "on_write_error_may_not_be_fatal",
                        on_write_error_may_not_be_fatal(&error)
                    ),
                };
                // A panic has ended the connection already.
                let Some(keep) = keep else { return };
                self.life.on_error_answer(op, keep);
                match (op, keep) {
                    (Op::Write, true) => {
                        // The unsent data is dropped; the connection goes on.
                        let unsent = self.writes.clear();
                        self.life.on_dropped(unsent);
                        self.connection.shared().mailbox.publish_sent(unsent);
                    }
                    (Op::Read, true) => {}
                    (Op::Read, false) => {
                        callback!(
                            self,
                            "on_read_completion_error",
                            on_read_completion_error(&error)
                        );
                    }
                    (Op::Write, false) => {
                        callback!(
                            self,
                            "on_write_completion_error",
                            on_write_completion_error(&error)
                        );
                    }
                }
            }
        }
    }

    pub(super) async fn announce_reset(&mut self, error: &io::Error) {
        callback!(self, "on_connection_reset", on_connection_reset(error));
    }

    /// Reports a TLS failure (the TLS library's error, ending the connection as the lifecycle
    /// decided) to the callback for its side: a peer's alert, or ours.
    pub(super) async fn announce_tls_failure(
        &mut self,
        from_peer: bool,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) {
        let error = Error::Tls {
            from_peer,
            source: source.into(),
        };
        tracing::debug!(connection = %self.connection.shared().id, %error, "TLS failure");
        if from_peer {
            callback!(self, "on_remote_fatal_error", on_remote_fatal_error(&error));
        } else {
            callback!(self, "on_fatal_error", on_fatal_error(&error));
        }
    }

    /// An urgent byte was taken from the socket: delivered if the application asked for one,
    /// held until it does otherwise (TCP keeps one urgent byte: a newer one replaces it).
    pub(super) async fn urgent_received(&mut self, byte: u8) {
        if !self.life.urgent_wanted() {
            return self.urgent.hold(byte);
        }
        self.life.on_urgent_delivered();
        let data = BytesMut::from(&[byte][..]);
        callback!(self, "on_read_oob_completed", on_read_oob_completed(data));
    }

    /// The urgent-data watcher woke: deliver the byte, or end a failed socket, or stop watching.
    /// Either way the same readiness is never waited on again without a change (guarantee 11,
    /// docs/guarantees.md).
    pub(super) async fn urgent_watched(&mut self, watched: Watched) {
        let Some(tcp) = self.transport.tcp() else {
            return self.urgent.finish();
        };
        match urgent::recv_urgent_byte(tcp) {
            Ok(Some(byte)) => {
                self.urgent.taken();
                self.urgent_received(byte).await;
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
                    if self.life.on_io_error(Op::Read, IoError::Reset) == IoVerdict::AnnounceReset {
                        self.announce_reset(&error).await;
                    }
                }
            }
        }
    }
}
