//! The shutdown, as one phase value that the accept loop, outgoing connects and the server's
//! handle watch: running → initiating → draining (until a deadline) → forcing → complete, with
//! its report. Whether a shutdown has begun is this value and nothing else, and only
//! [`Shutdown`] writes it.

use tokio::sync::watch;
use tokio::time::Instant;

use crate::closure::ClosureReason;
use crate::server::manager::Manager;
use crate::shutdown_report::ShutdownReport;

/// Where a server's shutdown is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    /// A shutdown was asked for and `on_shutdown_initiated` runs; everything else goes on as
    /// before.
    Initiating,
    /// `on_shutdown_initiated` has run: accepting stops, connections are told and may finish
    /// until `deadline`.
    Draining {
        deadline: Instant,
    },
    /// The drain time ran out: the rest are being reset.
    Forcing,
    /// Every connection is released and `on_shutdown_complete` has returned.
    Complete(ShutdownReport),
}

impl Phase {
    /// Whether accepting has stopped for good: the drain, the forcing and after.
    pub(crate) fn is_draining(&self) -> bool {
        !matches!(self, Phase::Running | Phase::Initiating)
    }
}

/// The phase, its one writer.
#[derive(Debug)]
pub(crate) struct Shutdown {
    phase: watch::Sender<Phase>,
}

impl Shutdown {
    pub(crate) fn new() -> Self {
        Shutdown {
            phase: watch::Sender::new(Phase::Running),
        }
    }

    pub(crate) fn watch(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    pub(crate) fn is_started(&self) -> bool {
        *self.phase.borrow() != Phase::Running
    }

    /// `true` for the one caller that starts the shutdown: the phase moves from running to
    /// initiating under the channel's lock, so of several callers exactly one sees it move.
    pub(crate) fn start(&self) -> bool {
        self.phase.send_if_modified(|phase| {
            let starting = *phase == Phase::Running;
            if starting {
                *phase = Phase::Initiating;
            }
            starting
        })
    }

    fn set(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// Waits for the report.
    pub(crate) async fn complete(&self) -> ShutdownReport {
        let mut phase = self.watch();
        // The sender lives as long as `self`.
        let result = phase
            .wait_for(|phase| matches!(phase, Phase::Complete(_)))
            .await;
        match result.as_deref() {
            Ok(Phase::Complete(report)) => *report,
            _ => ShutdownReport::default(),
        }
    }

    /// Waits until a shutdown has begun draining.
    pub(crate) async fn draining(&self) {
        let mut phase = self.watch();
        let _ = phase.wait_for(Phase::is_draining).await;
    }
}

/// The whole sequence (guarantee 7, docs/guarantees.md), run once on a task of its own.
pub(crate) async fn run(manager: &Manager) {
    let invoker = manager.invoker();
    invoker
        .call(
            "on_shutdown_initiated",
            None,
            invoker.callbacks().on_shutdown_initiated(),
        )
        .await;
    let shutdown = manager.shutdown();
    let deadline = Instant::now() + manager.config().shutdown_timeout;
    shutdown.set(Phase::Draining { deadline });
    // The accept loop stops, and its task of accepting events runs `on_stop_accepting_connections`,
    // before any connection hears of the shutdown.
    manager.accepting_stopped().await;
    let registry = manager.registry();
    registry.close();
    let drained = tokio::time::timeout_at(deadline, registry.drained())
        .await
        .is_ok();
    if !drained {
        shutdown.set(Phase::Forcing);
        registry
            .abort_all(ClosureReason::ShutdownForced, invoker)
            .await;
    }
    registry.drained().await;
    let report = registry.report();
    invoker
        .call(
            "on_shutdown_complete",
            None,
            invoker.callbacks().on_shutdown_complete(report),
        )
        .await;
    tracing::info!(
        report.graceful,
        report.forced,
        report.other,
        "shutdown complete"
    );
    shutdown.set(Phase::Complete(report));
}
