//! The PROXY protocol header, on the connection's own task, before the TLS handshake and
//! `on_connection_established`.

use std::io;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::transport::Transport;
use super::{before_established, Before, Driver};
use crate::connection::lifecycle::{IoError, Op, StartFailure, Step};
use crate::proxy::{self, HeaderError, HeaderReader, ProxyHeader, ProxyProtocol, PEEK};
use crate::server::per_ip::PerIpLimit;

/// What an accepted connection on a PROXY protocol listener has to go through first.
#[derive(Debug)]
pub(crate) struct Proxied {
    pub(crate) settings: Arc<ProxyProtocol>,
    /// The per-address cap, which counts the client the header names.
    pub(crate) per_ip: Option<Arc<PerIpLimit>>,
}

/// Why no header came.
enum Failure {
    Header(HeaderError),
    /// The peer closed before sending a byte.
    Closed,
    Io(io::Error),
}

impl Driver {
    /// Reads the header, bounded by the header timeout and cut short by an abort, and makes the
    /// client it names the connection's peer. How it fails is the lifecycle's to decide.
    pub(super) async fn proxy_header(&mut self, proxied: Proxied) {
        let transport_peer = self.connection.shared().addresses.peer();
        if !proxied.settings.trusts(transport_peer.ip()) {
            tracing::debug!(
                peer = %transport_peer,
                "PROXY protocol: connection from outside the trusted networks refused"
            );
            return self.life.on_start_failed(StartFailure::HeaderRefused);
        }
        let started = Instant::now();
        self.life
            .begin_step(Step::ProxyHeader, proxied.settings.timeout(), started);
        let deadline = self.life.step_deadline().unwrap_or(started);
        let Transport::Plain(tcp) = &mut self.transport else {
            unreachable!("the header comes before any TLS");
        };
        let outcome = before_established(
            &self.connection.shared().mailbox,
            read_header(tcp),
            deadline,
        )
        .await;
        let header = match outcome {
            Before::Aborted(reason) => return self.life.on_abort(reason),
            Before::Done(Ok(header)) => header,
            Before::Done(Err(Failure::Header(error))) => {
                tracing::debug!(peer = %transport_peer, %error, "PROXY protocol: header refused");
                return self.life.on_start_failed(StartFailure::HeaderRefused);
            }
            Before::Done(Err(Failure::Closed)) => {
                return self.life.on_start_failed(StartFailure::PeerClosed)
            }
            Before::Done(Err(Failure::Io(error))) => {
                tracing::debug!(peer = %transport_peer, %error, "PROXY protocol: read failed");
                let class = self.classify(&error).unwrap_or(IoError::Other);
                self.life.on_io_error(Op::Read, class);
                return;
            }
            Before::TimedOut => {
                tracing::debug!(peer = %transport_peer, "PROXY protocol: no header in time");
                return self.life.on_step_timed_out();
            }
        };
        self.life.on_step_done();
        self.context.record_proxy_header_duration(started.elapsed());
        let client = header.source().unwrap_or(transport_peer);
        let _ = self.connection.shared().told().proxy.set(header);
        if let Some(limit) = &proxied.per_ip {
            if !self.registration.take_peer_slot(limit, client.ip()) {
                self.life.on_start_failed(StartFailure::PerIpLimit);
            }
        }
    }
}

/// Reads exactly the header: looks at what is waiting (a peek), takes only header bytes, and
/// waits for more only once everything waiting was taken, so a header that trickles in is waited
/// for, not spun on.
async fn read_header(tcp: &mut TcpStream) -> Result<ProxyHeader, Failure> {
    let mut reader = HeaderReader::default();
    let mut waiting = vec![0; PEEK];
    loop {
        let count = tcp.peek(&mut waiting).await.map_err(Failure::Io)?;
        if count == 0 {
            return Err(if reader.is_empty() {
                Failure::Closed
            } else {
                Failure::Header(HeaderError::Truncated)
            });
        }
        let (take, header) = match reader.step(&waiting[..count]) {
            proxy::Step::More => (count, None),
            proxy::Step::Done { consume, header } => (consume, Some(header)),
            proxy::Step::Refuse(error) => return Err(Failure::Header(error)),
        };
        // Already waiting, so this does not block.
        tcp.read_exact(&mut waiting[..take])
            .await
            .map_err(Failure::Io)?;
        if let Some(header) = header {
            return Ok(header);
        }
    }
}
