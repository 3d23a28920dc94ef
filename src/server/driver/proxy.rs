//! The PROXY protocol header, on the connection's own task, before the TLS handshake and
//! `on_connection_established`.

use std::io;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::transport::Transport;
use super::{before_established, Before, Driver};
use crate::closure::ClosureReason;
use crate::proxy::{HeaderError, HeaderReader, ProxyHeader, ProxyProtocol, Step, PEEK};
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
    /// client it names the connection's peer. `Err` carries the closure reason.
    pub(super) async fn proxy_header(&mut self, proxied: Proxied) -> Result<(), ClosureReason> {
        let transport_peer = self.shared.peer_addr;
        if !proxied.settings.trusts(transport_peer.ip()) {
            tracing::debug!(
                peer = %transport_peer,
                "PROXY protocol: connection from outside the trusted networks refused"
            );
            return Err(ClosureReason::ProxyProtocol);
        }
        let started = Instant::now();
        let Transport::Plain(tcp) = &mut self.transport else {
            unreachable!("the header comes before any TLS");
        };
        let outcome = before_established(
            &self.shared.mailbox,
            read_header(tcp),
            proxied.settings.timeout(),
        )
        .await;
        let header = match outcome {
            Before::Aborted(reason) => return Err(reason),
            Before::Done(Ok(header)) => header,
            Before::Done(Err(Failure::Header(error))) => {
                tracing::debug!(peer = %transport_peer, %error, "PROXY protocol: header refused");
                return Err(ClosureReason::ProxyProtocol);
            }
            Before::Done(Err(Failure::Closed)) => return Err(ClosureReason::PeerClosed),
            Before::Done(Err(Failure::Io(error))) => {
                tracing::debug!(peer = %transport_peer, %error, "PROXY protocol: read failed");
                return Err(match error.kind() {
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                        ClosureReason::PeerReset
                    }
                    _ => ClosureReason::ReadError,
                });
            }
            Before::TimedOut => {
                tracing::debug!(peer = %transport_peer, "PROXY protocol: no header in time");
                return Err(ClosureReason::ProxyProtocol);
            }
        };
        self.context.record_proxy_header_duration(started.elapsed());
        let client = header.source().unwrap_or(transport_peer);
        let _ = self.shared.told().proxy.set(header);
        if let Some(limit) = &proxied.per_ip {
            if !self.registration.take_peer_slot(limit, client.ip()) {
                return Err(ClosureReason::PerIpLimit);
            }
        }
        Ok(())
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
            Step::More => (count, None),
            Step::Done { consume, header } => (consume, Some(header)),
            Step::Refuse(error) => return Err(Failure::Header(error)),
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
