//! The shutdown, as one phase value that the accept loop, outgoing connects and the server's
//! handle watch: running → initiating → accepting (the drain window, if one is set) → draining
//! (until a deadline) → forcing → complete, with its report. Whether a shutdown has begun is this
//! value and nothing else, and only [`Shutdown`] writes it. A forced shutdown (a second stop
//! signal) cuts the window and the drain short: it goes to forcing as soon as the listeners are
//! closed.

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
    /// `on_shutdown_initiated` has run and the drain window is open: the listeners still accept,
    /// until `until`, so that a balancer still routing here loses nothing while it learns (from
    /// the readiness check) that this server is going.
    Accepting {
        until: Instant,
    },
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
        !matches!(
            self,
            Phase::Running | Phase::Initiating | Phase::Accepting { .. }
        )
    }
}

/// The phase, its one writer.
#[derive(Debug)]
pub(crate) struct Shutdown {
    phase: watch::Sender<Phase>,
    /// Set once the shutdown is to be forced: no more drain window or drain time.
    forced: watch::Sender<bool>,
}

impl Shutdown {
    pub(crate) fn new() -> Self {
        Shutdown {
            phase: watch::Sender::new(Phase::Running),
            forced: watch::Sender::new(false),
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

    /// Asks the shutdown (begun or about to be) to cut its drain window and drain time short.
    pub(crate) fn force(&self) {
        self.forced.send_replace(true);
    }

    fn is_forced(&self) -> bool {
        *self.forced.borrow()
    }

    /// Waits until the shutdown is to be forced.
    async fn forced(&self) {
        let mut forced = self.forced.subscribe();
        // The sender lives as long as `self`.
        let _ = forced.wait_for(|forced| *forced).await;
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
    let window = manager.config().drain_window;
    if !window.is_zero() {
        // The drain window (guarantee 21): everything goes on as before, accepting included.
        let until = Instant::now() + window;
        shutdown.set(Phase::Accepting { until });
        tokio::select! {
            () = tokio::time::sleep_until(until) => {}
            () = shutdown.forced() => {}
        }
    }
    let deadline = Instant::now() + manager.config().shutdown_timeout;
    shutdown.set(Phase::Draining { deadline });
    // The accept loop stops, and its task of accepting events runs `on_stop_accepting_connections`,
    // before any connection hears of the shutdown.
    manager.accepting_stopped().await;
    let registry = manager.registry();
    registry.close(!shutdown.is_forced());
    let drained = tokio::select! {
        // Biased: a drain already done is not forced.
        biased;
        drained = tokio::time::timeout_at(deadline, registry.drained()) => drained.is_ok(),
        () = shutdown.forced() => false,
    };
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
