//! `Server::shutdown_on_signal`: SIGTERM to the process shuts the server down in order; a
//! second one forces it; a shutdown begun elsewhere ends the wait too. In a test binary of its
//! own, since once tokio handles SIGTERM the process no longer ends on it.
#![cfg(unix)]

mod common;

use std::time::Duration;

use common::*;
use switchboard::{ClosureReason, Server};

/// Every test here takes it: a signal goes to the whole process, so to every test's handlers.
static SIGNALS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// SIGTERM to this process.
fn sigterm() {
    // SAFETY: kill with this process's own id and a valid signal number has no memory effects.
    let sent = unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    assert_eq!(sent, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_the_server_down_and_returns_the_report() {
    let _alone = SIGNALS.lock().await;
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
    let _alone = SIGNALS.lock().await;
    let mut builder = Server::builder().bind("127.0.0.1:0");
    let recorder = Recorder::new(&mut builder);
    let server = builder.start(recorder).await.unwrap();
    let waiting = tokio::spawn(server.shutdown_on_signal().expect("handlers registered"));
    let report = server.shutdown().await;
    let waited = bounded("the waiting task", waiting).await.unwrap();
    assert_eq!(waited, report);
}

/// Issue 18: a second SIGTERM during the ordered shutdown (here in its drain window) forces it:
/// the window and the drain end at once, the connection left is reset and counted as forced, and
/// the report still comes after every closing event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_forces_the_shutdown() {
    let _alone = SIGNALS.lock().await;
    // Far longer than any wait of the test: only the forcing can end them.
    let long = Duration::from_secs(3600);
    let mut builder = Server::builder()
        .bind("127.0.0.1:0")
        .drain_window(long)
        .shutdown_timeout(long);
    let recorder = Recorder::with_behavior(
        &mut builder,
        Behavior {
            close_on_shutdown_request: false,
            ..Behavior::default()
        },
    );
    let server = builder.start(recorder.clone()).await.unwrap();
    let mut stream = client(server.local_addr().unwrap()).await;
    echo(&mut stream, b"before").await;
    let client_side = tokio::spawn(async move { read_to_end(&mut stream).await });
    let waiting = tokio::spawn(server.shutdown_on_signal().expect("handlers registered"));

    sigterm();
    recorder
        .wait_for("on_shutdown_initiated", |e| *e == Event::ShutdownInitiated)
        .await;
    assert!(server.is_shutting_down());
    sigterm();
    let report = bounded("the forced shutdown", waiting).await.unwrap();
    assert_eq!((report.graceful, report.forced, report.other), (0, 1, 0));
    let (_, end) = client_side.await.unwrap();
    assert!(end.is_err(), "the client was reset: {end:?}");
    let id = recorder.established()[0];
    let own = recorder.events_of(id);
    assert_lifecycle(&own);
    assert_eq!(closure_reason(&own), Some(ClosureReason::ShutdownForced));
    recorder
        .wait_for("on_shutdown_complete", |e| {
            matches!(e, Event::ShutdownComplete(_))
        })
        .await;
}
