//! Guarantee 11 (docs/guarantees.md) for the urgent-data watcher (issue 7): a connection that asked
//! for urgent data (`Connection::read_oob`, Linux) watches its socket through a second descriptor
//! registered for priority readiness. When the peer resets the connection and no read is pending,
//! that watcher wakes on the socket's error, finds no urgent byte, and the driver must not go back
//! to the same wait: it has to end the connection (the reset is what a read would report) instead
//! of spinning a worker at 100% CPU forever.
//!
//! The server of each test runs on a runtime of its own whose two worker threads carry a name of
//! their own, so the CPU time of exactly the threads that run the server can be read from
//! `/proc/self/task`, whatever else runs in this process; a spinning worker uses about a whole
//! core. The test itself (its clients, its bounded waits) runs on another runtime, on the test's
//! thread, so that nothing it waits for depends on the server's runtime: a driver that spins
//! within one poll never gives its worker back (with the test on the same runtime, even the
//! test's timers stopped firing, and it hung instead of failing). Every wait is bounded, and so
//! is the server runtime's teardown (a spinning worker is left behind until the process exits).
#![cfg(target_os = "linux")]

mod common;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use common::*;
use switchboard::{ClosureReason, Server};
use tokio::io::AsyncWriteExt;
use tokio::runtime::Handle;
use tokio::time::{sleep, timeout};

/// How long a reset connection may take to end: generous for a loaded 2-core machine, far below
/// "never".
const ENDS_WITHIN: Duration = Duration::from_secs(5);
/// How long the workers' CPU time is watched.
const WINDOW: Duration = Duration::from_millis(500);
/// Most of a core the workers may use over [`WINDOW`] while nothing happens: an idle runtime
/// uses next to nothing, a spinning worker about 1.0.
const IDLE_SHARE: f64 = 0.5;
/// Bound for a whole test.
const TEST_BOUND: Duration = Duration::from_secs(60);

/// Runs `test` on a current-thread runtime, handing it a multi-thread runtime with two workers
/// named `workers` (at most 15 bytes: Linux keeps no more of a thread's name) for the server;
/// bounded by [`TEST_BOUND`]. The server's runtime is shut down within 5 s however the test ended.
fn run<T: Future<Output = ()>>(workers: &str, test: impl FnOnce(Handle) -> T) {
    assert!(workers.len() <= 15, "thread name {workers:?} is too long");
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(workers)
        .enable_all()
        .build()
        .unwrap();
    let test_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = server_runtime.handle().clone();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        test_runtime.block_on(async {
            timeout(TEST_BOUND, test(handle))
                .await
                .expect("the test did not finish in time")
        })
    }));
    drop(test_runtime);
    server_runtime.shutdown_timeout(Duration::from_secs(5));
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Runs `future` on the server's runtime and waits for it (at most [`WAIT`]).
async fn on_server<T: Send + 'static>(
    server_runtime: &Handle,
    what: &str,
    future: impl Future<Output = T> + Send + 'static,
) -> T {
    bounded(what, server_runtime.spawn(future))
        .await
        .expect("the server-side task")
}

/// The share of one core the threads named `workers` used over the next [`WINDOW`].
async fn busy_share(workers: &str) -> f64 {
    let before = thread_cpu_ticks(workers);
    let start = std::time::Instant::now();
    sleep(WINDOW).await;
    core_share(thread_cpu_ticks(workers) - before, start.elapsed())
}

/// Starts a plain server on loopback, on the server's runtime, recording with `behavior`.
async fn start(server_runtime: &Handle, behavior: Behavior) -> (Server, Recorder) {
    on_server(server_runtime, "start", async move {
        let mut builder = Server::builder().bind("127.0.0.1:0");
        let recorder = Recorder::with_behavior(&mut builder, behavior);
        let server = builder.start(recorder.clone()).await.unwrap();
        (server, recorder)
    })
    .await
}

/// Shuts `server` down on its runtime.
async fn shut_down(server_runtime: &Handle, server: Server) {
    on_server(server_runtime, "shutdown", async move {
        server.shutdown().await;
    })
    .await;
}

/// A connection that asked for urgent data and has no read pending (the recorder holds its
/// handle, which keeps it open) is reset by the peer: it ends with `PeerReset`, and the
/// runtime is idle afterwards.
#[test]
fn a_reset_with_urgent_data_requested_and_no_read_pending_ends_without_spinning() {
    reset_ends_without_spinning(
        "rst-no-read",
        Behavior {
            oob: true,
            keep_handles: true,
            ..Behavior::quiet()
        },
        "no read pending",
    );
}

/// The same with a read pending: the read sees the reset.
#[test]
fn a_reset_with_urgent_data_requested_and_a_read_pending_ends_without_spinning() {
    reset_ends_without_spinning(
        "rst-read",
        Behavior {
            oob: true,
            collect: true,
            ..Behavior::quiet()
        },
        "a read pending",
    );
}

/// Starts a server whose connections behave as `behavior`, resets a client, and asserts that
/// its connection ends with `PeerReset` and that the server's workers (named `workers`) are
/// idle afterwards.
fn reset_ends_without_spinning(workers: &'static str, behavior: Behavior, case: &'static str) {
    run(workers, |server_runtime| async move {
        let (server, recorder) = start(&server_runtime, behavior).await;
        let client = client(server.local_addr().unwrap()).await;
        let id = recorder.id_of(&client).await;
        // Lets the driver park with its urgent-data watcher (not needed for the bug: a watcher
        // registered after the reset reports the error as well).
        sleep(Duration::from_millis(100)).await;

        reset(client);
        let ended = timeout(ENDS_WITHIN, recorder.wait_closure(id)).await;
        let share = busy_share(workers).await;
        let reason = ended.ok().map(|(reason, _)| reason);
        assert!(
            reason == Some(ClosureReason::PeerReset) && share < IDLE_SHARE,
            "after the peer's reset, with urgent data requested and {case}: closure \
             {reason:?} within {ENDS_WITHIN:?} (PeerReset expected), and the server's workers \
             then used {share:.2} of a core over {WINDOW:?} (below {IDLE_SHARE} expected); \
             events: {:#?}",
            recorder.events_of(id)
        );
        recorder.wait_release_of(id).await;
        assert_lifecycle(&recorder.events_of(id));
        shut_down(&server_runtime, server).await;
    });
}

/// The peer half-closes (FIN) a connection that asked for urgent data and has no read pending:
/// nothing wakes the driver in a loop, the connection stays open (its handle is held, and
/// without a read the driver has not seen the FIN yet), and the next read reports the FIN.
#[test]
fn a_fin_with_urgent_data_requested_and_no_read_pending_does_not_spin() {
    const WORKERS: &str = "fin-no-read";
    run(WORKERS, |server_runtime| async move {
        let (server, recorder) = start(
            &server_runtime,
            Behavior {
                oob: true,
                keep_handles: true,
                ..Behavior::quiet()
            },
        )
        .await;
        let mut client = client(server.local_addr().unwrap()).await;
        let id = recorder.id_of(&client).await;
        sleep(Duration::from_millis(100)).await;

        bounded("the client's FIN", client.shutdown())
            .await
            .expect("client shutdown");
        // Time for the FIN to arrive (loopback: at once) and for a spin to show.
        sleep(Duration::from_millis(200)).await;
        let share = busy_share(WORKERS).await;
        assert!(
            share < IDLE_SHARE,
            "after the peer's FIN, with urgent data requested and no read pending, the server's \
             workers used {share:.2} of a core over {WINDOW:?} (below {IDLE_SHARE} expected); \
             events: {:#?}",
            recorder.events_of(id)
        );
        recorder.assert_open(id, "after the peer's FIN with no read pending");

        let handle = recorder.handle(id);
        handle.read();
        recorder
            .wait_for("the FIN, once a read is pending", |event| {
                *event == Event::ClientClose(id)
            })
            .await;
        drop(handle);
        recorder.release_handle(id);
        let (reason, _) = recorder.wait_closure(id).await;
        assert_eq!(reason, ClosureReason::PeerClosed);
        drop(client);
        recorder.wait_release_of(id).await;
        assert_lifecycle(&recorder.events_of(id));
        shut_down(&server_runtime, server).await;
    });
}
