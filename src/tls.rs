//! TLS through `native-tls` (OpenSSL on Linux and other Unix systems, SChannel on Windows,
//! Security.framework on Apple platforms), and, where native-tls is OpenSSL, OpenSSL directly for
//! accepted connections.
//!
//! A listener becomes TLS with [`ServerBuilder::tls`](crate::ServerBuilder::tls),
//! [`ServerBuilder::bind_tls`](crate::ServerBuilder::bind_tls) or
//! [`Listener::tls`](crate::Listener::tls), given a [`TlsAcceptor`]: the crate's own (built by
//! [`acceptor_from_pem`], [`acceptor_from_pkcs12`] or a [`TlsAcceptorBuilder`]), a
//! [`native_tls::TlsAcceptor`], or, where native-tls is OpenSSL, an application's own
//! `openssl::ssl::SslAcceptor` ([`TlsAcceptor`] shows one). An outgoing connection becomes TLS
//! with [`ConnectBuilder::tls`](crate::ConnectBuilder::tls) and a [`TlsConnect`].
//!
//! The handshake runs on the connection's own task, after
//! [`on_socket_created`](crate::Callbacks::on_socket_created), bounded by the
//! [handshake timeout](crate::ServerBuilder::handshake_timeout). Its outcome is
//! [`on_negotiation_complete`](crate::Callbacks::on_negotiation_complete) with a [`TlsInfo`], then
//! [`on_secure_connection_established`](crate::Callbacks::on_secure_connection_established) and
//! [`on_connection_established`](crate::Callbacks::on_connection_established); or, if it fails,
//! [`on_fatal_error`](crate::Callbacks::on_fatal_error) or
//! [`on_remote_fatal_error`](crate::Callbacks::on_remote_fatal_error) and the closing events.
//!
//! # Protocol versions, per platform
//! TLS 1.3 is negotiated wherever the platform's TLS library has it, except through a
//! `native_tls::TlsAcceptor` on OpenSSL:
//!
//! | platform | accepted, crate's acceptor | accepted, a `native_tls::TlsAcceptor` | outgoing ([`TlsConnect`]) |
//! |---|---|---|---|
//! | Linux and other Unix (OpenSSL) | TLS 1.3 and 1.2 | TLS 1.2 only | TLS 1.3 and 1.2 |
//! | Windows (SChannel) | TLS 1.2, and 1.3 where SChannel has it | the same | the same |
//! | macOS, iOS (Security.framework) | TLS 1.2 only | TLS 1.2 only | TLS 1.2 only |
//!
//! Why, from native-tls's sources (0.2.18):
//! - **OpenSSL**: native-tls builds its acceptor on OpenSSL's `mozilla_intermediate` settings,
//!   which set `SSL_OP_NO_TLSv1_3`, and nothing in its API clears that option (its
//!   `max_protocol_version` does not). So the crate's acceptor is OpenSSL's own, through
//!   `tokio-openssl`, with Mozilla's "intermediate" settings of version 5: TLS 1.3 and 1.2,
//!   forward-secret AEAD ciphers. native-tls's connector does not set the option: outgoing
//!   connections negotiate TLS 1.3.
//! - **SChannel**: native-tls enables TLS 1.2 and 1.3 (its default minimum 1.2, no maximum), and
//!   the `schannel` crate asks for them through `SCH_CREDENTIALS`, the interface that has TLS 1.3,
//!   from Windows 10 build 17763 on. SChannel itself has TLS 1.3 from Windows 11 and Windows
//!   Server 2022; older Windows negotiate TLS 1.2.
//! - **Security.framework**: native-tls uses Secure Transport, which has no TLS 1.3 (native-tls
//!   documents `Protocol::Tlsv13` as unsupported there, and its connector falls back to 1.2 when
//!   1.3 is allowed but not required). Its acceptor there takes no ALPN list either:
//!   [`TlsAcceptorBuilder::alpn`] is not used.
//!
//! [`TlsInfo::protocol_version`] tells the version negotiated on connections accepted through
//! OpenSSL; native-tls does not tell it.
//!
//! TLS 1.3 moves some events after the handshake, which the callbacks show:
//! - A server that rejects a client's certificate does so after the client's side of the handshake
//!   is complete: an outgoing connection with a client certificate the server refuses is
//!   established, then ends with the server's alert on its first read
//!   ([`on_remote_fatal_error`](crate::Callbacks::on_remote_fatal_error)).
//! - An OpenSSL server sends session tickets right after the handshake. A client that closes
//!   without ever reading leaves them unread, and its TCP stack then resets the connection
//!   rather than closing it: the server sees
//!   [`ClosureReason::PeerReset`](crate::ClosureReason::PeerReset). An application that would
//!   rather send none (and give up session resumption) builds its own `SslAcceptor` with
//!   `set_num_tickets(0)`.
//!
//! # Telling a peer's alert from a local failure
//! `native-tls` and OpenSSL report both as one error type. switchboard calls a failure the peer's
//! when the TLS library names a received alert (OpenSSL's `sslv3 alert …`, `tlsv1 alert …`,
//! `tlsv13 alert …` reasons). That is exact with OpenSSL; with SChannel and Security.framework
//! every failure is reported as local.
//!
//! # End of stream
//! A peer that closes TCP without sending `close_notify` first is taken as having closed its side
//! (like a FIN on a plain connection), as most TLS servers do. An application protocol that must
//! detect truncation frames its own messages.

use std::fmt;
use std::io;

use crate::error::Error;
use crate::ids::Direction;

mod acceptor;
mod stream;

pub(crate) use acceptor::AcceptorCell;
pub use acceptor::{TlsAcceptor, TlsAcceptorBuilder};
pub(crate) use stream::TlsStream;

/// What a TLS handshake negotiated, passed to
/// [`Callbacks::on_negotiation_complete`](crate::Callbacks::on_negotiation_complete) and kept by
/// the connection ([`Connection::tls_info`](crate::Connection::tls_info)).
#[derive(Clone)]
pub struct TlsInfo {
    side: Direction,
    alpn: Option<Vec<u8>>,
    peer_certificate: Option<native_tls::Certificate>,
    protocol_version: Option<ProtocolVersion>,
}

impl TlsInfo {
    /// From a stream native-tls negotiated, which does not tell the protocol version.
    pub(crate) fn from_native<S>(side: Direction, stream: &native_tls::TlsStream<S>) -> Self
    where
        S: io::Read + io::Write,
    {
        TlsInfo {
            side,
            alpn: stream.negotiated_alpn().ok().flatten(),
            peer_certificate: stream.peer_certificate().ok().flatten(),
            protocol_version: None,
        }
    }

    /// From a session OpenSSL negotiated directly.
    #[cfg(not(any(windows, target_vendor = "apple")))]
    pub(crate) fn from_openssl(side: Direction, ssl: &openssl::ssl::SslRef) -> Self {
        use openssl::ssl::SslVersion;
        let protocol_version = ssl.version2().and_then(|version| {
            Some(match version {
                SslVersion::TLS1_3 => ProtocolVersion::Tls13,
                SslVersion::TLS1_2 => ProtocolVersion::Tls12,
                SslVersion::TLS1_1 => ProtocolVersion::Tls11,
                SslVersion::TLS1 => ProtocolVersion::Tls10,
                SslVersion::SSL3 => ProtocolVersion::Ssl3,
                _ => return None,
            })
        });
        TlsInfo {
            side,
            alpn: ssl.selected_alpn_protocol().map(<[u8]>::to_vec),
            // Through DER, the form both libraries share: native-tls's certificate type is the
            // one this API has always given.
            peer_certificate: ssl
                .peer_certificate()
                .and_then(|certificate| certificate.to_der().ok())
                .and_then(|der| native_tls::Certificate::from_der(&der).ok()),
            protocol_version,
        }
    }

    /// Which side of the handshake we were: [`Direction::Inbound`] for the server side of an
    /// accepted connection, [`Direction::Outbound`] for the client side of an outgoing one.
    pub fn side(&self) -> Direction {
        self.side
    }

    /// The application protocol agreed through ALPN, if both sides offered one (for example
    /// `b"h2"`).
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.alpn.as_deref()
    }

    /// The certificate the peer presented: always there on an outgoing connection; on an
    /// accepted one only when the acceptor asked for client certificates and the client sent one.
    pub fn peer_certificate(&self) -> Option<&native_tls::Certificate> {
        self.peer_certificate.as_ref()
    }

    /// The protocol version negotiated, where the TLS library tells it: on connections accepted
    /// through OpenSSL directly (see [`TlsAcceptor`]). native-tls does not tell it, so it is
    /// `None` on outgoing connections and on connections accepted with a
    /// [`native_tls::TlsAcceptor`].
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.protocol_version
    }
}

/// A TLS protocol version, as [`TlsInfo::protocol_version`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ProtocolVersion {
    /// SSL 3.0.
    Ssl3,
    /// TLS 1.0.
    Tls10,
    /// TLS 1.1.
    Tls11,
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

impl fmt::Display for ProtocolVersion {
    /// The names OpenSSL gives: `TLSv1.3`, `TLSv1.2`…
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProtocolVersion::Ssl3 => "SSLv3",
            ProtocolVersion::Tls10 => "TLSv1",
            ProtocolVersion::Tls11 => "TLSv1.1",
            ProtocolVersion::Tls12 => "TLSv1.2",
            ProtocolVersion::Tls13 => "TLSv1.3",
        })
    }
}

impl fmt::Debug for TlsInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsInfo")
            .field("side", &self.side)
            .field("alpn", &self.alpn.as_deref().map(String::from_utf8_lossy))
            .field("peer_certificate", &self.peer_certificate.is_some())
            .field("protocol_version", &self.protocol_version)
            .finish()
    }
}

/// How an outgoing connection speaks TLS: a connector and the server name it verifies the
/// certificate against (and sends as SNI).
///
/// Certificate and host-name verification are on unless the [`native_tls::TlsConnector`] given to
/// [`TlsConnect::with_connector`] was built with
/// [`danger_accept_invalid_certs`](native_tls::TlsConnectorBuilder::danger_accept_invalid_certs)
/// or
/// [`danger_accept_invalid_hostnames`](native_tls::TlsConnectorBuilder::danger_accept_invalid_hostnames).
/// Those switches make the connection open to anyone on the path; they are for tests against
/// self-signed certificates, never for production.
///
/// Building a connector loads the trusted roots, which costs OpenSSL tens of milliseconds: build
/// one `TlsConnect` and clone it (a cheap reference-counted copy) for every connection.
///
/// ```
/// use switchboard::tls::TlsConnect;
///
/// // The platform's trusted roots, full verification.
/// let tls = TlsConnect::new("example.com").unwrap();
/// assert_eq!(tls.domain(), "example.com");
///
/// // A private CA (a test's, say), still with full verification.
/// # let ca_pem: &[u8] = b"";
/// # if !ca_pem.is_empty() {
/// let ca = switchboard::native_tls::Certificate::from_pem(ca_pem).unwrap();
/// let connector = switchboard::native_tls::TlsConnector::builder()
///     .add_root_certificate(ca)
///     .build()
///     .unwrap();
/// let tls = TlsConnect::with_connector(connector, "localhost");
/// # }
/// ```
#[derive(Clone)]
pub struct TlsConnect {
    pub(crate) connector: tokio_native_tls::TlsConnector,
    pub(crate) domain: String,
}

impl TlsConnect {
    /// Verifies the server's certificate against the platform's trusted roots and `domain`.
    ///
    /// # Errors
    /// [`Error::Tls`] if the TLS library cannot be set up.
    pub fn new(domain: impl Into<String>) -> Result<Self, Error> {
        let connector = native_tls::TlsConnector::new().map_err(local)?;
        Ok(TlsConnect::with_connector(connector, domain))
    }

    /// Uses a connector built by the application (its own roots, client certificate, ALPN
    /// protocols, minimum version…).
    pub fn with_connector(connector: native_tls::TlsConnector, domain: impl Into<String>) -> Self {
        TlsConnect {
            connector: connector.into(),
            domain: domain.into(),
        }
    }

    /// The server name verified and sent.
    pub fn domain(&self) -> &str {
        &self.domain
    }
}

impl fmt::Debug for TlsConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnect")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// Builds the crate's acceptor from a PEM certificate chain (leaf first) and a PEM PKCS#8
/// private key (`-----BEGIN PRIVATE KEY-----`): TLS 1.3 and 1.2 where native-tls is OpenSSL,
/// what native-tls negotiates elsewhere (see [the module docs](self)). The shorthand of
/// [`TlsAcceptorBuilder::from_pem`] (which says how to make a test certificate) without ALPN.
///
/// On Windows the key must be RSA: native-tls imports it into SChannel through an RSA-only
/// provider. [`acceptor_from_pkcs12`] goes through `PFXImportCertStore`, which takes ECDSA keys too.
///
/// # Errors
/// [`Error::Tls`] if the certificate or key cannot be parsed (a key in the older
/// `BEGIN RSA PRIVATE KEY` form must first be converted with `openssl pkcs8 -topk8 -nocrypt`),
/// if the key does not match the certificate (where OpenSSL checks it), or, on Windows, if the
/// key is not RSA.
pub fn acceptor_from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<TlsAcceptor, Error> {
    TlsAcceptorBuilder::from_pem(cert_chain_pem, key_pem)?.build()
}

/// Builds the crate's acceptor from a DER-encoded PKCS#12 archive and its password; the
/// shorthand of [`TlsAcceptorBuilder::from_pkcs12`] without ALPN.
///
/// # Errors
/// [`Error::Tls`] if the archive cannot be read with `password`, or holds no certificate or no
/// key.
pub fn acceptor_from_pkcs12(der: &[u8], password: &str) -> Result<TlsAcceptor, Error> {
    TlsAcceptorBuilder::from_pkcs12(der, password)?.build()
}

/// How a handshake failed: the TLS library's error (native-tls's, or OpenSSL's).
pub(crate) type HandshakeFailure = Box<dyn std::error::Error + Send + Sync>;

/// A failure of our side, in setting TLS up or in a handshake.
fn local(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::Tls {
        from_peer: false,
        source: error.into(),
    }
}

/// The text of an error and all its sources, where TLS libraries put their reasons.
fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        text.push_str(": ");
        text.push_str(&next.to_string());
        source = next.source();
    }
    text.make_ascii_lowercase();
    text
}

/// Whether a TLS failure names an alert received from the peer (OpenSSL's reason strings).
pub(crate) fn is_peer_alert(error: &(dyn std::error::Error + 'static)) -> bool {
    let text = chain_text(error);
    [
        "sslv3 alert",
        "tlsv1 alert",
        "tlsv13 alert",
        "ssl/tls alert",
    ]
    .iter()
    .any(|alert| text.contains(alert))
}

/// Whether a failed handshake was the peer going away rather than a TLS failure: `Some(true)`
/// for a reset, `Some(false)` for the end of the stream, `None` for a TLS failure.
pub(crate) fn handshake_ended_by_peer(error: &(dyn std::error::Error + 'static)) -> Option<bool> {
    let mut source = Some(error);
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<io::Error>() {
            if matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ) {
                return Some(true);
            }
            if io.kind() == io::ErrorKind::UnexpectedEof {
                return Some(false);
            }
        }
        source = current.source();
    }
    let text = chain_text(error);
    if text.contains("connection reset") {
        Some(true)
    } else if text.contains("unexpected eof") {
        Some(false)
    } else {
        None
    }
}

/// Whether a read error from a TLS stream is the peer closing TCP without `close_notify`.
pub(crate) fn is_unexpected_eof(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::UnexpectedEof
        || (error.raw_os_error().is_none() && chain_text(error).contains("unexpected eof"))
}

/// Whether an I/O error from a TLS stream comes from the TLS layer rather than the socket.
pub(crate) fn is_tls_failure(error: &io::Error) -> bool {
    error.raw_os_error().is_none()
        && !matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        )
}

/// The TLS side a connection takes in its handshake.
#[derive(Debug)]
pub(crate) enum Secure {
    /// An accepted connection: the listener's acceptor (the server's handshake slots are in the
    /// driver's context).
    Accept {
        acceptor: TlsAcceptor,
    },
    Connect(TlsConnect),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_are_told_from_local_failures_by_their_reason() {
        let alert =
            io::Error::other("error:0A000418:SSL routines:ssl3_read_bytes:tlsv1 alert unknown ca");
        assert!(is_peer_alert(&alert));
        let local =
            io::Error::other("error:0A00010B:SSL routines:ssl3_get_record:wrong version number");
        assert!(!is_peer_alert(&local));
        let eof = io::Error::other(
            "error:0A000126:SSL routines:ssl3_read_n:unexpected eof while reading",
        );
        assert!(is_unexpected_eof(&eof));
        assert!(!is_unexpected_eof(&io::Error::from_raw_os_error(104)));
        assert!(!is_tls_failure(&io::Error::from_raw_os_error(104)));
        assert!(is_tls_failure(&local));
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(handshake_ended_by_peer(&reset), Some(true));
        assert_eq!(handshake_ended_by_peer(&eof), Some(false));
        assert_eq!(handshake_ended_by_peer(&local), None);
    }
}
