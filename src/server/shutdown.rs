//! The shutdown, as one phase value that the accept loop, outgoing connects and the server's
//! handle watch: running → draining (until a deadline) → forcing → complete, with its report.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::closure::ClosureReason;
use crate::server::manager::Manager;
use crate::shutdown_report::ShutdownReport;

/// Where a server's shutdown is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
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

/// The phase and who started it.
#[derive(Debug)]
pub(crate) struct Shutdown {
    phase: watch::Sender<Phase>,
    started: AtomicBool,
}

impl Shutdown {
    pub(crate) fn new() -> Self {
        Shutdown {
            phase: watch::Sender::new(Phase::Running),
            started: AtomicBool::new(false),
        }
    }

    pub(crate) fn watch(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    pub(crate) fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// `true` for the one caller that starts the shutdown.
    pub(crate) fn start(&self) -> bool {
        !self.started.swap(true, Ordering::AcqRel)
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
        let _ = phase.wait_for(|phase| *phase != Phase::Running).await;
    }
}

/// The whole sequence (guarantee 7), run once on a task of its own.
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
