//! An accepted TLS connection's handshake slot, and the wait for the client's first byte, which
//! the slot may be evicted during (`server/handshake_slots.rs`).

use std::io;
use std::mem::MaybeUninit;

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::connection::lifecycle::{StartFailure, Step};
use crate::server::driver::transport::Transport;
use crate::server::driver::{before_established, Before, Driver};
use crate::server::handshake_slots::HandshakeSlot;

impl Driver {
    /// Takes the handshake slot of an accepted connection whose handshake began at `begun`, for
    /// the client's source (the PROXY header's, where there was one). A client that has not sent
    /// a byte yet is then waited for, without taking the byte, bounded by the handshake deadline
    /// and the first-byte timeout and cut short by an abort or by the slot's eviction. `None` if
    /// the connection ended; how is the lifecycle's to decide.
    pub(super) async fn handshake_slot(&mut self, begun: Instant) -> Option<HandshakeSlot> {
        let Transport::Plain(tcp) = &self.transport else {
            unreachable!("a handshake starts on the plain socket");
        };
        let spoke = sent(tcp) != Sent::Nothing;
        let client = self.connection.shared().peer().ip();
        let Some(mut slot) = self.context.handshake_slots.take(client, spoke) else {
            self.life.on_start_failed(StartFailure::NoHandshakeSlot);
            return None;
        };
        if spoke {
            return Some(slot);
        }
        self.life
            .begin_step(Step::FirstByte, self.context.handshake_timeout, begun);
        let deadline = self.life.step_deadline().unwrap_or(begun);
        let waited = before_established(
            &self.connection.shared().mailbox,
            first_byte(tcp, &slot),
            deadline,
        )
        .await;
        match waited {
            Before::Done(()) if slot.spoke() => {
                self.life.on_step_done();
                Some(slot)
            }
            Before::Done(()) => {
                // Evicted. A client whose first byte came before the eviction, unseen so far
                // (its wake-up was still on its way), is not silent: it takes a slot again, as
                // one mid-handshake, which evicts the oldest silent slot if the cap is full. One
                // that closed or reset meanwhile just ends.
                drop(slot);
                let slots = &self.context.handshake_slots;
                let data = sent(tcp) == Sent::Data;
                match data.then(|| slots.take(client, true)).flatten() {
                    Some(slot) => {
                        self.life.on_step_done();
                        Some(slot)
                    }
                    None => {
                        self.life.on_start_failed(StartFailure::Evicted);
                        None
                    }
                }
            }
            Before::Aborted(reason) => {
                self.life.on_abort(reason);
                None
            }
            Before::TimedOut => {
                self.life.on_step_timed_out();
                None
            }
        }
    }
}

/// What a client has sent so far.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Nothing,
    /// A byte at least is waiting.
    Data,
    /// Its FIN, or the socket failed (a reset): the handshake will meet it at once.
    EndOrError,
}

/// What the client has sent so far, asked of the kernel without waiting and without taking it
/// (one `recv` with `MSG_PEEK` on the non-blocking socket): most clients send their hello right
/// after connecting, so theirs is there before the slot is taken, and their slot is never one
/// to evict.
fn sent(tcp: &TcpStream) -> Sent {
    let mut byte = [MaybeUninit::uninit()];
    match SockRef::from(tcp).peek(&mut byte) {
        Ok(0) => Sent::EndOrError,
        Ok(_) => Sent::Data,
        Err(error)
            if matches!(
                error.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Sent::Nothing
        }
        Err(_) => Sent::EndOrError,
    }
}

/// Waits until the client sends something (a byte, its FIN, a reset: the handshake takes it
/// from there) or `slot` is evicted, whichever comes first; the slot's state tells which.
async fn first_byte(tcp: &TcpStream, slot: &HandshakeSlot) {
    let mut byte = [0; 1];
    tokio::select! {
        biased;
        () = slot.evicted() => {}
        _ = tcp.peek(&mut byte) => {}
    }
}
