//! The TLS handshake, on the connection's own task, before `on_connection_established`.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use socket2::SockRef;

use super::transport::Transport;
use super::{before_established, Before, Driver};
use crate::closure::ClosureReason;
use crate::ids::Direction;
use crate::tls::{self, Secure, TlsInfo};

impl Driver {
    /// Runs the TLS handshake, bounded by the handshake timeout and cut short by an abort, then
    /// the negotiation events. `Err` carries the closure reason of a failure, after its
    /// `on_fatal_error` / `on_remote_fatal_error`.
    pub(super) async fn handshake(&mut self, secure: Secure) -> Result<(), ClosureReason> {
        // Only accepted connections count against the cap: it guards against floods from
        // outside, and an outgoing connect is the application's own doing.
        let _slot = match &secure {
            Secure::Accept { slots, .. } => match slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => return Err(ClosureReason::HandshakeLimit),
            },
            Secure::Connect(_) => None,
        };
        let started = Instant::now();
        let Transport::Plain(tcp) = std::mem::replace(&mut self.transport, Transport::Gone) else {
            unreachable!("a handshake starts on the plain socket");
        };
        // The handshake owns the socket. A second descriptor for it lets a handshake cut short
        // (abort, timeout) end with RST like any abort, while a failed one closes with FIN so
        // that the alert OpenSSL wrote still reaches the peer.
        let socket = SockRef::from(&tcp).try_clone().ok();
        let reset = |reason| {
            if let Some(socket) = &socket {
                let _ = socket.set_linger(Some(Duration::ZERO));
            }
            Err(reason)
        };
        let (side, negotiation): (_, Pin<Box<dyn Future<Output = _> + Send>>) = match secure {
            Secure::Accept { acceptor, .. } => (
                Direction::Inbound,
                Box::pin(async move { acceptor.accept(tcp).await }),
            ),
            Secure::Connect(tls) => (
                Direction::Outbound,
                Box::pin(async move { tls.connector.connect(&tls.domain, tcp).await }),
            ),
        };
        let outcome = match before_established(
            &self.shared.mailbox,
            negotiation,
            self.context.handshake_timeout,
        )
        .await
        {
            Before::Done(outcome) => outcome,
            Before::TimedOut => return reset(ClosureReason::HandshakeTimedOut),
            Before::Aborted(reason) => return reset(reason),
        };
        drop(socket);
        let stream = match outcome {
            Ok(stream) => stream,
            Err(error) => {
                // A peer that resets or just closes during the handshake (a port scanner, a
                // client that gave up) ended the connection; that is not a TLS failure.
                match tls::handshake_ended_by_peer(&error) {
                    Some(true) => return Err(ClosureReason::PeerReset),
                    Some(false) => return Err(ClosureReason::PeerClosed),
                    None => {}
                }
                return Err(self.tls_failed(error).await);
            }
        };
        self.context
            .record_tls_handshake_duration(started.elapsed());
        let info = TlsInfo::from_stream(side, stream.get_ref());
        self.transport = Transport::tls(stream);
        let info = self.shared.told().tls.get_or_init(|| info);
        let callbacks = self.context.invoker.callbacks();
        if !self
            .call(
                "on_negotiation_complete",
                callbacks.on_negotiation_complete(&self.connection, info),
            )
            .await
        {
            return Err(ClosureReason::CallbackPanic);
        }
        let peer = self.shared.peer();
        if !self
            .call(
                "on_secure_connection_established",
                callbacks.on_secure_connection_established(&self.connection, &peer),
            )
            .await
        {
            return Err(ClosureReason::CallbackPanic);
        }
        Ok(())
    }
}
