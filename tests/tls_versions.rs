//! Which TLS versions accepted connections negotiate where native-tls is OpenSSL: the crate's
//! acceptor (`acceptor_from_pem`, `acceptor_from_pkcs12`, `TlsAcceptorBuilder`) TLS 1.3 and 1.2,
//! a `native_tls::TlsAcceptor` TLS 1.2 only, an application's own `SslAcceptor` what it sets.
//! Real OpenSSL on both ends: `openssl s_client`, and native-tls clients.
//!
//! OpenSSL platforms only (native-tls's own cfg): elsewhere the crate's acceptor is native-tls's.
#![cfg(not(any(windows, target_vendor = "apple")))]

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use common::*;
use switchboard::openssl::ssl::{SslAcceptor, SslFiletype, SslMethod, SslVerifyMode};
use switchboard::tls::{
    acceptor_from_pem, acceptor_from_pkcs12, ProtocolVersion, TlsAcceptor, TlsAcceptorBuilder,
    TlsConnect, TlsInfo,
};
use switchboard::{native_tls, Bytes, ClosureReason, Connection, Error, Server};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// A TLS echo server on loopback, and what each of its connections negotiated.
struct Echo {
    server: Server,
    recorder: Recorder,
    address: SocketAddr,
    negotiated: Arc<Mutex<Vec<TlsInfo>>>,
}

impl Echo {
    async fn start(acceptor: impl Into<TlsAcceptor>) -> Echo {
        let negotiated = Arc::new(Mutex::new(Vec::new()));
        let seen = negotiated.clone();
        let mut builder = Server::builder();
        let recorder = Recorder::with_hooks(
            &mut builder,
            Behavior {
                name_every_release: true,
                ..Behavior::echo()
            },
            Hooks {
                established: Some(Box::new(move |connection: &Connection| {
                    let info = connection.tls_info().expect("a TLS connection").clone();
                    seen.lock().unwrap().push(info);
                })),
                ..Hooks::default()
            },
        );
        let server = builder
            .bind_tls("127.0.0.1:0", acceptor)
            .start(recorder.clone())
            .await
            .unwrap();
        let address = server.local_addr().unwrap();
        Echo {
            server,
            recorder,
            address,
            negotiated,
        }
    }

    /// What the `n`th connection (from 1) negotiated, once it is established.
    async fn negotiated(&self, n: usize) -> TlsInfo {
        let negotiated = &self.negotiated;
        eventually("the connection established", || {
            negotiated.lock().unwrap().len() >= n
        })
        .await;
        negotiated.lock().unwrap()[n - 1].clone()
    }

    async fn shutdown(self) {
        bounded("shutdown", self.server.shutdown()).await;
    }
}

/// What an `openssl s_client` session printed.
struct SClient {
    /// The first line it wrote to stdout: the server's echo of the line sent.
    echo: String,
    /// Its `-brief` summary (`Protocol version: TLSv1.3`...) and its errors.
    stderr: String,
    /// Whether it exited with success: the handshake succeeded and the session ended cleanly.
    success: bool,
}

impl SClient {
    /// The protocol version in the `-brief` summary.
    fn protocol(&self) -> Option<&str> {
        self.stderr
            .lines()
            .find_map(|line| line.strip_prefix("Protocol version: "))
    }
}

/// Runs `openssl s_client` against `address` (verifying the test CA and `localhost`) with `extra`
/// arguments, sends `line`, reads one line back, then ends the session by closing its input.
async fn s_client(address: SocketAddr, extra: &[&str], line: &str) -> SClient {
    let mut child = tokio::process::Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(address.to_string())
        .arg("-CAfile")
        .arg(cert_path("ca.pem"))
        .args(["-servername", "localhost", "-verify_hostname", "localhost"])
        .arg("-verify_return_error")
        // The summary on stderr, no session dump on stdout; the end of stdin ends the session.
        .args(["-brief", "-no_ign_eof"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn openssl s_client (the openssl binary is a test requirement)");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut stderr = child.stderr.take().unwrap();
    // A client that failed its handshake has exited: the write may fail, the echo is empty.
    let _ = bounded("s_client stdin", stdin.write_all(line.as_bytes())).await;
    let mut echo = String::new();
    let _ = bounded("s_client's echo", stdout.read_line(&mut echo)).await;
    drop(stdin);
    let status = bounded("s_client exit", child.wait()).await.unwrap();
    let mut text = String::new();
    bounded("s_client stderr", stderr.read_to_string(&mut text))
        .await
        .unwrap();
    SClient {
        echo,
        stderr: text,
        success: status.success(),
    }
}

/// The crate's acceptor for the CA-signed localhost leaf, from its PEM files.
fn pem_acceptor() -> TlsAcceptor {
    acceptor_from_pem(&cert_file("server.pem"), &cert_file("server.key")).unwrap()
}

/// An s_client session with `extra` arguments echoes through a server on `acceptor`, negotiating
/// `version`; the server's `TlsInfo` and the connection's end agree.
async fn assert_echo_over(
    acceptor: TlsAcceptor,
    extra: &[&str],
    version: &str,
    reported: Option<ProtocolVersion>,
) {
    let echo = Echo::start(acceptor).await;
    let line = format!("hello over {version}\n");
    let client = s_client(echo.address, extra, &line).await;
    assert!(client.success, "s_client failed: {}", client.stderr);
    assert_eq!(client.echo, line);
    assert_eq!(client.protocol(), Some(version), "{}", client.stderr);
    let info = echo.negotiated(1).await;
    assert_eq!(info.protocol_version(), reported);
    echo.recorder.wait_secure_released(1).await;
    let id = echo.recorder.established()[0];
    assert_eq!(echo.recorder.closure(id), Some(ClosureReason::PeerClosed));
    assert_eq!(echo.recorder.received(id), line.as_bytes());
    echo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s_client_tls1_3_gets_an_echo_from_an_acceptor_from_pem() {
    assert_echo_over(
        pem_acceptor(),
        &["-tls1_3"],
        "TLSv1.3",
        Some(ProtocolVersion::Tls13),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_s_client_negotiates_tls_1_3() {
    assert_echo_over(pem_acceptor(), &[], "TLSv1.3", Some(ProtocolVersion::Tls13)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s_client_tls1_2_still_gets_an_echo() {
    assert_echo_over(
        pem_acceptor(),
        &["-tls1_2"],
        "TLSv1.2",
        Some(ProtocolVersion::Tls12),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acceptor_from_pkcs12_negotiates_tls_1_3() {
    // The RSA leaf the Windows tests use, in PKCS#12 (tests/certs/make.sh).
    let acceptor = acceptor_from_pkcs12(&cert_file("server.p12"), "switchboard").unwrap();
    assert_echo_over(acceptor, &[], "TLSv1.3", Some(ProtocolVersion::Tls13)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_is_agreed_over_tls_1_3_in_the_servers_order() {
    let acceptor = TlsAcceptorBuilder::from_pem(&cert_file("server.pem"), &cert_file("server.key"))
        .unwrap()
        .alpn(&["h2", "http/1.1"])
        .build()
        .unwrap();
    let echo = Echo::start(acceptor).await;
    // The client prefers http/1.1; the server's first choice that the client offers wins.
    for (n, (offered, agreed)) in [
        ("http/1.1,h2", Some(&b"h2"[..])),
        ("http/1.1", Some(&b"http/1.1"[..])),
        ("spdy/3", None),
    ]
    .into_iter()
    .enumerate()
    {
        let client = s_client(echo.address, &["-alpn", offered], "alpn\n").await;
        assert!(
            client.success,
            "s_client -alpn {offered}: {}",
            client.stderr
        );
        assert_eq!(client.protocol(), Some("TLSv1.3"));
        let info = echo.negotiated(n + 1).await;
        assert_eq!(info.alpn_protocol(), agreed, "offered {offered}");
        assert_eq!(info.protocol_version(), Some(ProtocolVersion::Tls13));
    }
    echo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_tls_acceptor_still_works_and_negotiates_tls_1_2_only() {
    let native = || native_tls::TlsAcceptor::new(identity("server")).unwrap();
    // What native-tls gives on OpenSSL: TLS 1.2, and no version in `TlsInfo`.
    assert_echo_over(native().into(), &[], "TLSv1.2", None).await;
    let echo = Echo::start(native()).await;
    let client = s_client(echo.address, &["-tls1_3"], "refused\n").await;
    assert!(!client.success, "TLS 1.3 negotiated: {}", client.stderr);
    assert_eq!(client.echo, "");
    echo.recorder.wait_secure_released(1).await;
    let id = echo.recorder.ended()[0];
    assert_eq!(echo.recorder.closure(id), Some(ClosureReason::TlsError));
    echo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crate_acceptor_echoes_to_a_native_tls_client_over_tls_1_3() {
    let echo = Echo::start(pem_acceptor()).await;
    let tcp = bounded("connect", tokio::net::TcpStream::connect(echo.address))
        .await
        .unwrap();
    let mut client = bounded("handshake", tls_connector().connect("localhost", tcp))
        .await
        .unwrap();
    crate::echo(&mut client, b"through native-tls's client").await;
    let info = echo.negotiated(1).await;
    assert_eq!(info.protocol_version(), Some(ProtocolVersion::Tls13));
    assert!(info.peer_certificate().is_none());
    bounded("close_notify", client.shutdown()).await.unwrap();
    echo.recorder.wait_secure_released(1).await;
    let id = echo.recorder.established()[0];
    assert_eq!(echo.recorder.closure(id), Some(ClosureReason::PeerClosed));
    echo.shutdown().await;
}

/// An application's own OpenSSL acceptor that requires a client certificate from the test CA.
fn client_certificate_acceptor() -> SslAcceptor {
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    builder
        .set_certificate_chain_file(cert_path("server.pem"))
        .unwrap();
    builder
        .set_private_key_file(cert_path("server.key"), SslFiletype::PEM)
        .unwrap();
    builder.set_ca_file(cert_path("ca.pem")).unwrap();
    builder.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    builder.build()
}

/// switchboard's outgoing settings with `leaf`'s identity as the client certificate.
fn tls_connect_as(leaf: &str) -> TlsConnect {
    let mut connector = connector_builder("ca.pem");
    connector.identity(identity(leaf));
    TlsConnect::with_connector(connector.build().unwrap(), "localhost")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_openssl_acceptor_reports_the_client_certificate() {
    let echo = Echo::start(client_certificate_acceptor()).await;
    let mut builder = Server::builder();
    let recorder = Recorder::with_behavior(&mut builder, Behavior::collect());
    let client = builder.start(recorder.clone()).await.unwrap();
    let connection = bounded(
        "connect_tls",
        client.connect(echo.address).tls(tls_connect_as("server")),
    )
    .await
    .unwrap();
    connection
        .write(Bytes::from_static(b"with a client certificate"))
        .unwrap();
    let info = echo.negotiated(1).await;
    assert_eq!(info.protocol_version(), Some(ProtocolVersion::Tls13));
    let presented = native_tls::Certificate::from_pem(&cert_file("server.pem")).unwrap();
    assert_eq!(
        info.peer_certificate().map(|c| c.to_der().unwrap()),
        Some(presented.to_der().unwrap())
    );
    let id = connection.id();
    let sent = b"with a client certificate".len();
    recorder
        .wait_until("the echo", |events| {
            let read = events.iter().map(|event| match event {
                Event::Read(of, bytes) if *of == id => *bytes,
                _ => 0,
            });
            read.sum::<usize>() >= sent
        })
        .await;
    assert_eq!(recorder.received(id), b"with a client certificate");
    connection.close();
    drop(connection);
    recorder.wait_secure_released(1).await;
    echo.recorder.wait_secure_released(1).await;
    let server_id = echo.recorder.established()[0];
    assert_eq!(
        echo.recorder.closure(server_id),
        Some(ClosureReason::PeerClosed)
    );
    bounded("shutdown", client.shutdown()).await;
    echo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_client_certificate_ends_the_established_outgoing_connection_with_the_alert() {
    // In TLS 1.3 the client's side of the handshake is complete before the server has checked
    // its certificate: the outgoing connection is established, and its first read brings the
    // server's alert. The server's handshake fails: a failure of its own.
    let echo = Echo::start(client_certificate_acceptor()).await;
    let mut builder = Server::builder();
    let recorder = Recorder::with_behavior(
        &mut builder,
        Behavior {
            name_every_release: true,
            ..Behavior::collect()
        },
    );
    let client = builder.start(recorder.clone()).await.unwrap();
    let connection = bounded(
        "connect_tls",
        client.connect(echo.address).tls(tls_connect_as("other")),
    )
    .await
    .unwrap();
    let id = connection.id();
    drop(connection);
    recorder.wait_secure_released(1).await;
    let events = recorder.events_of(id);
    assert!(events.contains(&Event::Established(
        id,
        echo.address,
        Some(switchboard::Direction::Outbound)
    )));
    assert!(
        events.contains(&Event::RemoteFatal {
            id,
            tls: Some(true)
        }),
        "{events:#?}"
    );
    assert_eq!(recorder.closure(id), Some(ClosureReason::TlsAlert));
    assert!(
        recorder.messages()[0].contains("alert"),
        "{:?}",
        recorder.messages()
    );
    echo.recorder.wait_secure_released(1).await;
    let server_id = echo.recorder.ended()[0];
    assert_eq!(
        echo.recorder.closure(server_id),
        Some(ClosureReason::TlsError)
    );
    assert!(
        echo.recorder.messages()[0].contains("certificate verify failed"),
        "{:?}",
        echo.recorder.messages()
    );
    bounded("shutdown", client.shutdown()).await;
    echo.shutdown().await;
}

#[tokio::test]
async fn bad_identities_and_alpn_names_are_refused_when_built() {
    let tls_error = |result: Result<TlsAcceptor, Error>| match result {
        Err(Error::Tls { from_peer, source }) => {
            assert!(!from_peer);
            source.to_string()
        }
        other => panic!("expected Error::Tls, got {other:?}"),
    };
    // A key that is not the certificate's.
    let mismatched = tls_error(acceptor_from_pem(
        &cert_file("server.pem"),
        &cert_file("other.key"),
    ));
    assert!(mismatched.contains("values mismatch"), "{mismatched}");
    // The older form of an RSA key, which native-tls refuses on every platform.
    let traditional = b"-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n";
    let not_pkcs8 = tls_error(acceptor_from_pem(&cert_file("server.pem"), traditional));
    assert!(not_pkcs8.contains("PKCS#8"), "{not_pkcs8}");
    // No certificate at all.
    tls_error(acceptor_from_pem(b"", &cert_file("server.key")));
    // A wrong PKCS#12 password.
    tls_error(acceptor_from_pkcs12(&cert_file("server.p12"), "wrong"));
    // ALPN names are 1 to 255 bytes.
    for bad in [String::new(), "x".repeat(256)] {
        let built =
            TlsAcceptorBuilder::from_pem(&cert_file("server.pem"), &cert_file("server.key"))
                .unwrap()
                .alpn(&[bad])
                .build();
        assert!(
            matches!(
                built,
                Err(Error::InvalidSetting {
                    setting: "alpn",
                    ..
                })
            ),
            "{built:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_3_client_that_closes_without_reading_the_session_tickets_resets() {
    // OpenSSL's server sends its session tickets right after the handshake. A client that never
    // reads them closes with data unread, which its TCP stack turns into a reset (what the tls
    // module's docs say).
    let echo = Echo::start(pem_acceptor()).await;
    let tcp = bounded("connect", tokio::net::TcpStream::connect(echo.address))
        .await
        .unwrap();
    let client = bounded("handshake", tls_connector().connect("localhost", tcp))
        .await
        .unwrap();
    // The tickets are in the client's receive queue, unread by TLS.
    let mut first = [0; 1];
    let tcp = client.get_ref().get_ref().get_ref();
    bounded("the session tickets", tcp.peek(&mut first))
        .await
        .unwrap();
    assert_eq!(first[0], 23, "a TLS 1.3 record (application_data) first");
    drop(client);
    echo.recorder.wait_secure_released(1).await;
    let id = echo.recorder.established()[0];
    assert_eq!(echo.recorder.closure(id), Some(ClosureReason::PeerReset));
    echo.shutdown().await;
}
