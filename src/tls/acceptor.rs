//! The TLS side of a listener: [`TlsAcceptor`], built by [`TlsAcceptorBuilder`] or from an
//! acceptor of the TLS library's own.

use std::fmt;
use std::sync::{Arc, RwLock};

use tokio::net::TcpStream;

use super::stream::TlsStream;
use super::{local, HandshakeFailure};
use crate::error::Error;

/// How a TLS listener's connections negotiate: its certificate, key and settings, given to
/// [`ServerBuilder::tls`](crate::ServerBuilder::tls),
/// [`bind_tls`](crate::ServerBuilder::bind_tls) or [`Listener::tls`](crate::Listener::tls).
///
/// Three ways to get one:
/// - [`TlsAcceptorBuilder`] (or its shorthands [`acceptor_from_pem`](super::acceptor_from_pem) and
///   [`acceptor_from_pkcs12`](super::acceptor_from_pkcs12)): the crate's own, which negotiates
///   TLS 1.3 and 1.2 where native-tls is OpenSSL (see [the module docs](super) for each
///   platform);
/// - a [`native_tls::TlsAcceptor`], converted with `From`: what native-tls negotiates, which on
///   OpenSSL is TLS 1.2 only;
/// - where native-tls is OpenSSL (not Windows, not Apple platforms), an
///   [`openssl::ssl::SslAcceptor`] the application built itself, converted with `From`: every
///   setting OpenSSL has, client certificates included.
///
/// Cloning is cheap (a reference count): every connection of a listener takes a clone.
///
/// ```
/// use switchboard::tls::TlsAcceptor;
///
/// # fn main() -> Result<(), switchboard::Error> {
/// # let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/certs");
/// # let cert = std::fs::read(format!("{dir}/server.pem"))?;
/// # let key = std::fs::read(format!("{dir}/server.key"))?;
/// # #[cfg(not(windows))] {
/// let acceptor: TlsAcceptor = switchboard::tls::acceptor_from_pem(&cert, &key)?;
/// let builder = switchboard::Server::builder()
///     .bind("127.0.0.1:0")
///     .tls(acceptor);
/// # }
/// # Ok(()) }
/// ```
///
/// An OpenSSL acceptor of the application's own, here one that asks clients for a certificate
/// signed by its CA (OpenSSL platforms only; `switchboard::openssl` is the crate's own
/// `openssl`, so the types match):
///
/// ```
/// # #[cfg(not(any(windows, target_vendor = "apple")))]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use switchboard::openssl::ssl::{SslAcceptor, SslFiletype, SslMethod, SslVerifyMode};
///
/// # let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/certs");
/// # let (cert, key, ca) = (format!("{dir}/server.pem"), format!("{dir}/server.key"), format!("{dir}/ca.pem"));
/// // TLS 1.2 and 1.3, Mozilla's "intermediate" ciphers.
/// let mut openssl = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())?;
/// openssl.set_certificate_chain_file(&cert)?;
/// openssl.set_private_key_file(&key, SslFiletype::PEM)?;
/// openssl.check_private_key()?;
/// openssl.set_ca_file(&ca)?;
/// openssl.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
/// let builder = switchboard::Server::builder()
///     .bind("127.0.0.1:0")
///     .tls(openssl.build());
/// # Ok(()) }
/// # #[cfg(any(windows, target_vendor = "apple"))]
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct TlsAcceptor {
    /// Behind one reference count, so that the acceptor a listener hands each connection is one
    /// increment, whichever library's it is.
    kind: Arc<Kind>,
}

enum Kind {
    Native(tokio_native_tls::TlsAcceptor),
    #[cfg(not(any(windows, target_vendor = "apple")))]
    OpenSsl(openssl::ssl::SslAcceptor),
}

impl TlsAcceptor {
    /// Runs the server side of a handshake on `tcp`.
    pub(crate) async fn accept(&self, tcp: TcpStream) -> Result<TlsStream, HandshakeFailure> {
        match &*self.kind {
            Kind::Native(acceptor) => Ok(TlsStream::Native(acceptor.accept(tcp).await?)),
            #[cfg(not(any(windows, target_vendor = "apple")))]
            Kind::OpenSsl(acceptor) => {
                let ssl = openssl::ssl::Ssl::new(acceptor.context())?;
                let mut stream = tokio_openssl::SslStream::new(ssl, tcp)?;
                std::pin::Pin::new(&mut stream).accept().await?;
                Ok(TlsStream::OpenSsl(stream))
            }
        }
    }
}

/// A TLS listener's acceptor, which [`Server::set_tls_acceptor`](crate::Server::set_tls_acceptor)
/// can replace while the listener runs. The accept loop takes a clone for each connection it
/// accepts (one read lock, one reference count), so a replacement is atomic for new handshakes
/// and never reaches a connection already accepted: it negotiates, and lives, with the acceptor
/// it was given.
#[derive(Debug)]
pub(crate) struct AcceptorCell(RwLock<TlsAcceptor>);

impl AcceptorCell {
    pub(crate) fn new(acceptor: TlsAcceptor) -> Self {
        AcceptorCell(RwLock::new(acceptor))
    }

    /// The acceptor for a connection accepted now.
    pub(crate) fn current(&self) -> TlsAcceptor {
        // A clone cannot panic while the lock is held, so a poisoned lock still holds an acceptor.
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Makes `acceptor` the one for connections accepted from now on.
    pub(crate) fn replace(&self, acceptor: TlsAcceptor) {
        let old = std::mem::replace(
            &mut *self
                .0
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            acceptor,
        );
        // Freed (if no connection holds it) outside the lock.
        drop(old);
    }
}

/// What native-tls negotiates with it: on OpenSSL, TLS 1.2 only (its acceptor turns TLS 1.3 off).
impl From<native_tls::TlsAcceptor> for TlsAcceptor {
    fn from(acceptor: native_tls::TlsAcceptor) -> Self {
        TlsAcceptor {
            kind: Arc::new(Kind::Native(acceptor.into())),
        }
    }
}

/// Negotiates as the application configured it: the protocol versions, ciphers, ALPN selection,
/// client certificate verification… of its `SslAcceptor`.
#[cfg(not(any(windows, target_vendor = "apple")))]
impl From<openssl::ssl::SslAcceptor> for TlsAcceptor {
    fn from(acceptor: openssl::ssl::SslAcceptor) -> Self {
        TlsAcceptor {
            kind: Arc::new(Kind::OpenSsl(acceptor)),
        }
    }
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let library = match &*self.kind {
            Kind::Native(_) => "native-tls",
            #[cfg(not(any(windows, target_vendor = "apple")))]
            Kind::OpenSsl(_) => "OpenSSL",
        };
        f.debug_struct("TlsAcceptor")
            .field("library", &library)
            .finish_non_exhaustive()
    }
}

/// Builds the crate's [`TlsAcceptor`] from a certificate chain and its key, and the application
/// protocols it agrees to through ALPN.
///
/// Where native-tls is OpenSSL the acceptor is OpenSSL's with Mozilla's "intermediate" settings
/// (version 5): TLS 1.3 and TLS 1.2, forward-secret AEAD ciphers. On Windows and Apple platforms
/// it is a native-tls acceptor; [the module docs](super) say what each negotiates.
///
/// ```
/// use switchboard::tls::TlsAcceptorBuilder;
///
/// # fn main() -> Result<(), switchboard::Error> {
/// # let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/certs");
/// # let cert = std::fs::read(format!("{dir}/server.pem"))?;
/// # let key = std::fs::read(format!("{dir}/server.key"))?;
/// # #[cfg(not(windows))] {
/// let acceptor = TlsAcceptorBuilder::from_pem(&cert, &key)?
///     .alpn(&["h2", "http/1.1"])
///     .build()?;
/// # }
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `build`"]
pub struct TlsAcceptorBuilder {
    identity: Identity,
    /// In order of preference.
    alpn: Vec<String>,
}

/// A certificate chain (leaf first) and the leaf's private key.
#[cfg(not(any(windows, target_vendor = "apple")))]
struct Identity {
    key: openssl::pkey::PKey<openssl::pkey::Private>,
    leaf: openssl::x509::X509,
    chain: Vec<openssl::x509::X509>,
}

#[cfg(any(windows, target_vendor = "apple"))]
struct Identity(native_tls::Identity);

impl TlsAcceptorBuilder {
    /// From a PEM certificate chain (leaf first) and a PEM PKCS#8 private key
    /// (`-----BEGIN PRIVATE KEY-----`).
    ///
    /// A test certificate for `localhost` can be made with:
    ///
    /// ```text
    /// openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=localhost \
    ///     -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout key.pem -out cert.pem
    /// ```
    ///
    /// On Windows the key must be RSA: native-tls imports it into SChannel through an RSA-only
    /// provider. [`from_pkcs12`](TlsAcceptorBuilder::from_pkcs12) goes through
    /// `PFXImportCertStore`, which takes ECDSA keys too.
    ///
    /// # Errors
    /// [`Error::Tls`] if the certificate or key cannot be parsed (a key in the older
    /// `BEGIN RSA PRIVATE KEY` form must first be converted with `openssl pkcs8 -topk8 -nocrypt`),
    /// or, on Windows, if the key is not RSA.
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, Error> {
        Ok(TlsAcceptorBuilder {
            identity: Identity::from_pem(cert_chain_pem, key_pem)?,
            alpn: Vec::new(),
        })
    }

    /// From a DER-encoded PKCS#12 archive and its password.
    ///
    /// # Errors
    /// [`Error::Tls`] if the archive cannot be read with `password`, or holds no certificate or
    /// no key.
    pub fn from_pkcs12(der: &[u8], password: &str) -> Result<Self, Error> {
        Ok(TlsAcceptorBuilder {
            identity: Identity::from_pkcs12(der, password)?,
            alpn: Vec::new(),
        })
    }

    /// The application protocols agreed to through ALPN, in order of preference (for example
    /// `["h2", "http/1.1"]`): the first of them that the client offers is chosen. A client that
    /// offers none of them, or no ALPN at all, negotiates without one. Default: none.
    ///
    /// On Apple platforms native-tls's acceptor has no ALPN: the list is not used.
    pub fn alpn(mut self, protocols: &[impl AsRef<str>]) -> Self {
        self.alpn = protocols
            .iter()
            .map(|protocol| protocol.as_ref().to_owned())
            .collect();
        self
    }

    /// Builds the acceptor.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for an ALPN protocol name that is empty or longer than 255
    /// bytes; [`Error::Tls`] if the TLS library refuses the identity (a key that does not match
    /// the certificate, where OpenSSL checks it).
    pub fn build(self) -> Result<TlsAcceptor, Error> {
        if let Some(bad) = self
            .alpn
            .iter()
            .find(|protocol| protocol.is_empty() || protocol.len() > 255)
        {
            return Err(Error::InvalidSetting {
                setting: "alpn",
                reason: format!(
                    "an ALPN protocol name is 1 to 255 bytes, not {} (\"{bad}\")",
                    bad.len()
                ),
            });
        }
        self.identity.acceptor(&self.alpn)
    }
}

impl fmt::Debug for TlsAcceptorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptorBuilder")
            .field("alpn", &self.alpn)
            .finish_non_exhaustive()
    }
}

#[cfg(not(any(windows, target_vendor = "apple")))]
impl Identity {
    fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, Error> {
        // The form native-tls takes on every platform, so that a key that works here works on
        // Windows too.
        if !key_pem
            .trim_ascii_start()
            .starts_with(b"-----BEGIN PRIVATE KEY-----")
        {
            return Err(local(
                "the key is not PEM PKCS#8 (-----BEGIN PRIVATE KEY-----)",
            ));
        }
        let key = openssl::pkey::PKey::private_key_from_pem(key_pem).map_err(local)?;
        let mut chain = openssl::x509::X509::stack_from_pem(cert_chain_pem)
            .map_err(local)?
            .into_iter();
        let leaf = chain
            .next()
            .ok_or_else(|| local("no certificate in the PEM chain"))?;
        Ok(Identity {
            key,
            leaf,
            chain: chain.collect(),
        })
    }

    fn from_pkcs12(der: &[u8], password: &str) -> Result<Self, Error> {
        let parsed = openssl::pkcs12::Pkcs12::from_der(der)
            .and_then(|archive| archive.parse2(password))
            .map_err(local)?;
        Ok(Identity {
            key: parsed
                .pkey
                .ok_or_else(|| local("no private key in the PKCS#12 archive"))?,
            leaf: parsed
                .cert
                .ok_or_else(|| local("no certificate in the PKCS#12 archive"))?,
            // OpenSSL lists the other certificates from the root down (as native-tls reads them
            // too); a server sends them from the leaf's issuer up.
            chain: parsed.ca.into_iter().flatten().rev().collect(),
        })
    }

    fn acceptor(self, alpn: &[String]) -> Result<TlsAcceptor, Error> {
        use openssl::ssl::{AlpnError, SslAcceptor, SslMethod};

        // Unlike `mozilla_intermediate`, which native-tls uses, this one leaves TLS 1.3 on.
        let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).map_err(local)?;
        // The certificate first: OpenSSL then checks that the key matches it (the other way
        // round, a certificate that does not match silently drops the key), so a wrong key
        // fails here rather than every handshake.
        builder.set_certificate(&self.leaf).map_err(local)?;
        builder.set_private_key(&self.key).map_err(local)?;
        builder.check_private_key().map_err(local)?;
        for certificate in self.chain {
            builder.add_extra_chain_cert(certificate).map_err(local)?;
        }
        if !alpn.is_empty() {
            let ours = alpn_wire_format(alpn);
            builder.set_alpn_select_callback(move |_, offered| {
                choose_alpn(&ours, offered).ok_or(AlpnError::NOACK)
            });
        }
        Ok(builder.build().into())
    }
}

#[cfg(any(windows, target_vendor = "apple"))]
impl Identity {
    fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, Error> {
        native_tls::Identity::from_pkcs8(cert_chain_pem, key_pem)
            .map(Identity)
            .map_err(local)
    }

    fn from_pkcs12(der: &[u8], password: &str) -> Result<Self, Error> {
        native_tls::Identity::from_pkcs12(der, password)
            .map(Identity)
            .map_err(local)
    }

    fn acceptor(self, alpn: &[String]) -> Result<TlsAcceptor, Error> {
        let mut builder = native_tls::TlsAcceptor::builder(self.0);
        builder.accept_alpn(alpn);
        builder.build().map(TlsAcceptor::from).map_err(local)
    }
}

/// ALPN's wire format: each name preceded by its length in one byte (names checked already to
/// be 1 to 255 bytes).
#[cfg(not(any(windows, target_vendor = "apple")))]
fn alpn_wire_format(protocols: &[String]) -> Vec<u8> {
    let mut wire = Vec::new();
    for protocol in protocols {
        wire.push(u8::try_from(protocol.len()).unwrap_or(u8::MAX));
        wire.extend_from_slice(protocol.as_bytes());
    }
    wire
}

/// The names in an ALPN list (wire format); a list cut short ends at the last whole name.
#[cfg(not(any(windows, target_vendor = "apple")))]
fn alpn_names(mut wire: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (&length, rest) = wire.split_first()?;
        let Some((name, rest)) = rest.split_at_checked(usize::from(length)) else {
            wire = &[];
            return None;
        };
        wire = rest;
        Some(name)
    })
}

/// The first of `ours` (in order of preference) that the client `offered`: the client's copy,
/// since OpenSSL requires the selection to point into the list the client sent.
#[cfg(not(any(windows, target_vendor = "apple")))]
fn choose_alpn<'a>(ours: &[u8], offered: &'a [u8]) -> Option<&'a [u8]> {
    alpn_names(ours).find_map(|wanted| alpn_names(offered).find(|name| *name == wanted))
}

#[cfg(all(test, not(any(windows, target_vendor = "apple"))))]
mod tests {
    use super::*;

    #[test]
    fn alpn_takes_our_first_choice_among_the_offered_and_points_into_the_offer() {
        let ours = alpn_wire_format(&["h2".into(), "http/1.1".into()]);
        let offered = b"\x08http/1.1\x02h2";
        let chosen = choose_alpn(&ours, offered).unwrap();
        assert_eq!(chosen, b"h2");
        assert!(offered.as_ptr_range().contains(&chosen.as_ptr()));
        assert_eq!(choose_alpn(&ours, b"\x08http/1.0"), None);
        assert_eq!(choose_alpn(&ours, b""), None);
        // A list cut short: its whole names still count, the rest is ignored.
        assert_eq!(choose_alpn(&ours, b"\x02h2\x08http"), Some(&b"h2"[..]));
        assert_eq!(choose_alpn(&ours, b"\x09h2"), None);
    }
}
