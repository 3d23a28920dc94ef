//! `Server::shutdown_on_signal`: SIGTERM to the process shuts the server down in order; a
//! shutdown begun elsewhere ends the wait too. In a test binary of its own, since once tokio
//! handles SIGTERM the process no longer ends on it.
#![cfg(unix)]

mod common;

use common::*;
use switchboard::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_the_server_down_and_returns_the_report() {
    let mut builder = Server::builder().bind("127.0.0.1:0");
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder.clone()).await.unwrap();
    let mut stream = client(server.local_addr().unwrap()).await;
    echo(&mut stream, b"before").await;
    // The client closes when the server does.
    let client_side = tokio::spawn(async move { read_to_end(&mut stream).await });

    // Registered at once: the signal may come before the wait begins.
    let waiting = server.shutdown_on_signal().expect("handlers registered");
    // SAFETY: kill with this process's own id and a valid signal number has no memory effects.
    let sent = unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    assert_eq!(sent, 0);
    let report = bounded("the shutdown", waiting).await;
    // The client's connection was told (the recorder closes it) and ended gracefully.
    assert_eq!((report.graceful, report.forced, report.other), (1, 0, 0));
    let (_, end) = client_side.await.unwrap();
    end.expect("the client saw FIN");
    recorder
        .wait_for("on_shutdown_complete", |e| {
            matches!(e, Event::ShutdownComplete(_))
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_begun_elsewhere_ends_the_wait() {
    let mut builder = Server::builder().bind("127.0.0.1:0");
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder).await.unwrap();
    let waiting = tokio::spawn(server.shutdown_on_signal().expect("handlers registered"));
    let report = server.shutdown().await;
    let waited = bounded("the waiting task", waiting).await.unwrap();
    assert_eq!(waited, report);
}
