//! The test certificates in `tests/certs` (see `make.sh` there) and TLS ends built from them:
//! `ca.pem` is the test CA, `server.pem` a leaf for localhost and 127.0.0.1 signed by it.
//!
//! On Windows the servers' identities are RSA leaves from the same CAs in PKCS#12
//! (`server.p12`, `other.p12`): native-tls's SChannel backend imports a PEM key into an RSA-only
//! CSP, so it cannot take the ECDSA pair; and Wine can import neither the PEM pair nor an ECDSA
//! key in PKCS#12 (`wine.rs`).

use std::path::PathBuf;
use std::sync::Mutex;

use switchboard::native_tls;
#[cfg(not(windows))]
use switchboard::tls::acceptor_from_pem;
#[cfg(windows)]
use switchboard::tls::acceptor_from_pkcs12;
use switchboard::tls::TlsAcceptor;

pub fn cert_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/certs")
        .join(name)
}

pub fn cert_file(name: &str) -> Vec<u8> {
    std::fs::read(cert_path(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

/// The password of the PKCS#12 files (make.sh).
#[cfg(windows)]
const PKCS12_PASSWORD: &str = "switchboard";

/// The certificate file (PEM) of `leaf` ("server" or "other") as this platform's servers present
/// it.
pub fn leaf_certificate(leaf: &str) -> String {
    if cfg!(windows) {
        format!("{leaf}-rsa.pem")
    } else {
        format!("{leaf}.pem")
    }
}

/// The identity of `leaf` ("server" or "other"), for a native-tls acceptor built by hand.
pub fn identity(leaf: &str) -> native_tls::Identity {
    #[cfg(windows)]
    let identity =
        native_tls::Identity::from_pkcs12(&cert_file(&format!("{leaf}.p12")), PKCS12_PASSWORD);
    #[cfg(not(windows))]
    let identity = native_tls::Identity::from_pkcs8(
        &cert_file(&format!("{leaf}.pem")),
        &cert_file(&format!("{leaf}.key")),
    );
    identity.unwrap_or_else(|e| panic!("the {leaf} identity: {e}"))
}

/// The acceptor with the identity of `leaf` ("server" or "other"), through the crate's own
/// constructor for this platform's files (TLS 1.3 and 1.2 where native-tls is OpenSSL).
pub fn acceptor_of(leaf: &str) -> TlsAcceptor {
    #[cfg(windows)]
    let acceptor = acceptor_from_pkcs12(&cert_file(&format!("{leaf}.p12")), PKCS12_PASSWORD);
    #[cfg(not(windows))]
    let acceptor = acceptor_from_pem(
        &cert_file(&format!("{leaf}.pem")),
        &cert_file(&format!("{leaf}.key")),
    );
    acceptor.unwrap_or_else(|e| panic!("the {leaf} acceptor: {e}"))
}

/// The acceptor with the CA-signed localhost leaf.
pub fn server_acceptor() -> TlsAcceptor {
    acceptor_of("server")
}

/// A connector builder that trusts only the CA in `ca_file` (not the system's roots).
pub fn connector_builder(ca_file: &str) -> native_tls::TlsConnectorBuilder {
    let ca = native_tls::Certificate::from_pem(&cert_file(ca_file)).unwrap();
    let mut builder = native_tls::TlsConnector::builder();
    builder
        .disable_built_in_roots(true)
        .add_root_certificate(ca);
    builder
}

/// A connector that trusts only the CA in `ca_file`. Built once per file: building one loads the
/// system's default verify paths, which takes OpenSSL 3 tens of milliseconds of CPU.
pub fn connector_trusting(ca_file: &str) -> native_tls::TlsConnector {
    static CONNECTORS: Mutex<Vec<(String, native_tls::TlsConnector)>> = Mutex::new(Vec::new());
    let mut connectors = CONNECTORS.lock().unwrap();
    if let Some((_, connector)) = connectors.iter().find(|(file, _)| file == ca_file) {
        return connector.clone();
    }
    let connector = connector_builder(ca_file).build().unwrap();
    connectors.push((ca_file.to_string(), connector.clone()));
    connector
}

/// A tokio-native-tls connector that trusts the test CA only.
pub fn tls_connector() -> tokio_native_tls::TlsConnector {
    tokio_native_tls::TlsConnector::from(connector_trusting("ca.pem"))
}
