//! The TLS handshake, on the connection's own task, before `on_connection_established`; first,
//! for an accepted connection, its handshake slot and the wait for the client's first byte
//! (`first_byte`).

mod first_byte;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use socket2::SockRef;

use super::transport::Transport;
use tokio::time::Instant;

use super::{before_established, callback, Before, Driver};
use crate::connection::lifecycle::{IoError, Op, StartFailure, Step};
use crate::ids::Direction;
use crate::tls::{self, HandshakeFailure, Secure, TlsStream};

impl Driver {
    /// Runs the TLS handshake, bounded by the handshake timeout and cut short by an abort, then
    /// the negotiation events. How it fails is the lifecycle's to decide: this feeds it what
    /// happened (and runs `on_fatal_error` / `on_remote_fatal_error` for a TLS failure).
    pub(super) async fn handshake(&mut self, secure: Secure) {
        let started = std::time::Instant::now();
        let begun = Instant::now();
        // Only accepted connections count against the cap: it guards against floods from
        // outside, and an outgoing connect is the application's own doing.
        let _slot = match &secure {
            Secure::Accept { .. } => match self.handshake_slot(begun).await {
                Some(slot) => Some(slot),
                // The lifecycle has ended the connection.
                None => return,
            },
            Secure::Connect(_) => None,
        };
        self.life
            .begin_step(Step::Handshake, self.context.handshake_timeout, begun);
        let Transport::Plain(tcp) = std::mem::replace(&mut self.transport, Transport::Gone) else {
            unreachable!("a handshake starts on the plain socket");
        };
        // The handshake owns the socket. A second descriptor for it lets a handshake cut short
        // (abort, timeout) end with RST like any abort, while a failed one closes with FIN so
        // that the alert OpenSSL wrote still reaches the peer.
        let socket = SockRef::from(&tcp).try_clone().ok();
        let (side, negotiation): (_, Pin<Box<dyn Future<Output = _> + Send>>) = match secure {
            Secure::Accept { acceptor, .. } => (
                Direction::Inbound,
                Box::pin(async move { acceptor.accept(tcp).await }),
            ),
            Secure::Connect(tls) => (
                Direction::Outbound,
                Box::pin(async move {
                    match tls.connector.connect(&tls.domain, tcp).await {
                        Ok(stream) => Ok(TlsStream::Native(stream)),
                        Err(error) => Err(HandshakeFailure::from(error)),
                    }
                }),
            ),
        };
        let deadline = self.life.step_deadline().unwrap_or_else(Instant::now);
        let outcome = match before_established(
            &self.connection.shared().mailbox,
            negotiation,
            deadline,
        )
        .await
        {
            Before::Done(outcome) => outcome,
            cut_short => {
                match cut_short {
                    Before::Aborted(reason) => self.life.on_abort(reason),
                    _ => self.life.on_step_timed_out(),
                }
                if let Some(socket) = &socket {
                    let _ = socket.set_linger(Some(Duration::ZERO));
                }
                return;
            }
        };
        drop(socket);
        let stream = match outcome {
            Ok(stream) => stream,
            Err(error) => {
                // A peer that resets or just closes during the handshake (a port scanner, a
                // client that gave up) ended the connection; that is not a TLS failure.
                match tls::handshake_ended_by_peer(&*error) {
                    Some(true) => {
                        self.life.on_io_error(Op::Read, IoError::Reset);
                    }
                    Some(false) => self.life.on_start_failed(StartFailure::PeerClosed),
                    None => {
                        let from_peer = tls::is_peer_alert(&*error);
                        self.life.on_io_error(Op::Read, IoError::Tls { from_peer });
                        self.announce_tls_failure(from_peer, error).await;
                    }
                }
                return;
            }
        };
        self.life.on_step_done();
        self.context
            .record_tls_handshake_duration(started.elapsed());
        let info = stream.info(side);
        self.transport = Transport::tls(stream);
        // Through a clone of the shared state, which the callback borrows from while the driver
        // publishes.
        let shared = self.connection.shared().clone();
        let info = shared.told().tls.get_or_init(|| info);
        if callback!(
            self,
            "on_negotiation_complete",
            on_negotiation_complete(info)
        )
        .is_none()
        {
            return;
        }
        let peer = self.connection.shared().peer();
        callback!(
            self,
            "on_secure_connection_established",
            on_secure_connection_established(&peer)
        );
    }
}
