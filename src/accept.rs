//! The accept loop and its error policy.
//!
//! One task per server accepts from all of its listeners, so the accepting state (and the
//! start/stop events) belong to the server as a whole. Failed accepts fall in two groups:
//! - per-connection failures: the client went away between SYN and `accept` (ECONNABORTED,
//!   ECONNRESET), a firewall said no (EPERM), or the network under it hiccuped (ENETDOWN…). The
//!   next connection is unaffected, so the loop retries at once;
//! - everything else, chiefly resource shortages (EMFILE, ENFILE, ENOBUFS, ENOMEM): retrying at
//!   once would fail the same way and spin a core, so the loop backs off, 5 ms doubling to 1 s,
//!   and resets the backoff on the first success. Pending clients wait in the backlog meanwhile.
//!
//! Running out of descriptors (EMFILE, ENFILE) gets one more step, on unix: the loop keeps a
//! spare descriptor ([`Reserve`]) and, when an accept fails for want of one, frees it, accepts
//! and resets (RST) every connection pending on the listeners, then takes the spare back (as
//! libuv and Twisted do). Clients learn at once instead of hanging in the backlog, and the
//! listeners' readiness is used up, so the loop then waits for the next client instead of
//! backing off: a client arriving while descriptors are still short is refused as it comes.
//! These refusals run no callback (they never become connections) and are counted in
//! [`Stats::refused_no_descriptors`](crate::Stats::refused_no_descriptors); the failed accept
//! itself is counted and reported like any other. When the reserve cannot help (the spare could
//! not be taken back, or the accept failed again), the loop backs off as above. Accepting
//! resumes normally as soon as an accept succeeds.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_native_tls::TlsAcceptor;

use crate::driver::Secure;
use crate::limit::Permit;
use crate::manager::Manager;
use crate::reserve::{is_out_of_descriptors, Reserve};
use crate::stats::Counters;
use crate::{AtLimit, ClosureReason, Direction, UserData};

/// First pause after a resource-shortage accept error (the design's default, after libuv and
/// Go's net/http, which both start in the low milliseconds).
const MIN_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause: long enough not to spin, short enough that recovery is prompt once
/// descriptors free up.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most this many `on_accept_error` reports per second; every failure is still counted.
const REPORTS_PER_SECOND: u32 = 10;
/// Most connections refused from one listener in one round when out of descriptors: a default
/// backlog's worth, so a flood arriving as fast as it is refused cannot hold the accept task;
/// the next round follows at once.
const REFUSE_BATCH: usize = 1024;

/// Whether a failed accept concerned only the connection being accepted.
fn is_per_connection(error: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted
            | ConnectionReset
            | ConnectionRefused
            | Interrupted
            | WouldBlock
            | PermissionDenied
            | NetworkDown
            | NetworkUnreachable
            | HostUnreachable
    )
}

/// Rate-limits error reports without losing count of them.
struct Reporter {
    window_start: Instant,
    reported: u32,
    suppressed: u64,
}

impl Reporter {
    fn new() -> Self {
        Reporter {
            window_start: Instant::now(),
            reported: 0,
            suppressed: 0,
        }
    }

    /// Whether this error should be reported.
    fn admit(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                tracing::warn!(
                    suppressed = self.suppressed,
                    "accept errors not reported individually in the last second"
                );
            }
            self.window_start = now;
            self.reported = 0;
            self.suppressed = 0;
        }
        if self.reported < REPORTS_PER_SECOND {
            self.reported += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// A bound listener and, for a TLS one, the acceptor its connections negotiate with.
pub(crate) struct Listener {
    pub(crate) listener: TcpListener,
    pub(crate) tls: Option<TlsAcceptor>,
}

/// An accepted socket on its way to becoming a connection.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
}

/// Accepts from any listener, starting after the one that accepted last so none is starved.
async fn accept_any(listeners: &[Listener], next: &mut usize) -> io::Result<Accepted> {
    poll_fn(|cx| {
        let count = listeners.len();
        for i in 0..count {
            let index = (*next + i) % count;
            let listener = &listeners[index];
            if let Poll::Ready(result) = listener.listener.poll_accept(cx) {
                *next = (index + 1) % count;
                return Poll::Ready(result.map(|(stream, peer)| Accepted {
                    stream,
                    peer,
                    tls: listener.tls.clone(),
                }));
            }
        }
        Poll::Pending
    })
    .await
}

/// Tracks the accepting state the callbacks were told of, so start and stop always alternate.
struct Announced {
    accepting: bool,
}

impl Announced {
    async fn set(&mut self, manager: &Manager, accepting: bool) {
        if self.accepting == accepting {
            return;
        }
        self.accepting = accepting;
        if accepting {
            manager
                .guard(
                    "on_start_accepting_connections",
                    None,
                    manager.callbacks.on_start_accepting_connections(),
                )
                .await;
        } else {
            manager
                .guard(
                    "on_stop_accepting_connections",
                    None,
                    manager.callbacks.on_stop_accepting_connections(),
                )
                .await;
        }
    }
}

pub(crate) async fn accept_loop(manager: Arc<Manager>, listeners: Vec<Listener>) {
    let mut control = manager.control.subscribe();
    let mut announced = Announced { accepting: false };
    let mut refusing = false;
    let mut backoff = MIN_BACKOFF;
    let mut reporter = Reporter::new();
    let mut reserve = Reserve::new();
    let mut next = 0;
    // With `AtLimit::StopAccepting`, a connection accepted when no slot was free waits here for
    // one (its client sees a connection that has not answered yet, as in the backlog).
    let mut held: Option<Accepted> = None;
    loop {
        let state = *control.borrow_and_update();
        if state.shutdown {
            announced.set(&manager, false).await;
            return;
        }
        if !state.accepting {
            announced.set(&manager, false).await;
            if control.changed().await.is_err() {
                return;
            }
            continue;
        }
        if let Some(accepted) = held.take() {
            // Biased: a stop or shutdown that is already signalled wins over a slot that freed
            // at the same time, and a slot is only used if accepting is still on once it is
            // ours (the control may change while `acquire` is pending).
            tokio::select! {
                biased;
                changed = control.changed() => {
                    held = Some(accepted);
                    if changed.is_err() {
                        return;
                    }
                }
                permit = manager.limiter.acquire() => {
                    let state = *control.borrow();
                    if state.accepting && !state.shutdown {
                        announced.set(&manager, true).await;
                        take(&manager, accepted, permit).await;
                    } else {
                        drop(permit);
                        held = Some(accepted);
                    }
                }
            }
            continue;
        }
        announced.set(&manager, true).await;
        let accepted = tokio::select! {
            biased;
            changed = control.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            accepted = accept_any(&listeners, &mut next) => accepted,
        };
        match accepted {
            Ok(accepted) => {
                backoff = MIN_BACKOFF;
                // Descriptors are available again: take back a spare spent earlier (a no-op
                // while it is held).
                reserve.restore();
                match manager.limiter.try_acquire() {
                    Some(permit) => {
                        refusing = false;
                        take(&manager, accepted, permit).await;
                    }
                    None => match manager.config.at_limit {
                        AtLimit::StopAccepting => {
                            maximum_connections(&manager).await;
                            announced.set(&manager, false).await;
                            held = Some(accepted);
                        }
                        AtLimit::AcceptAndClose => {
                            Counters::count(&manager.counters.refused_at_limit);
                            drop(accepted);
                            if !refusing {
                                refusing = true;
                                maximum_connections(&manager).await;
                            }
                        }
                    },
                }
            }
            Err(error) => {
                Counters::count(&manager.counters.accept_errors);
                let per_connection = is_per_connection(&error);
                tracing::debug!(%error, per_connection, "accept failed");
                // Refused before the report, which is the application's code and may take a
                // while.
                let refusal = if is_out_of_descriptors(&error) {
                    refuse_pending(&manager, &listeners, &mut reserve).await
                } else {
                    Refusal::Failed
                };
                if reporter.admit() {
                    manager
                        .guard(
                            "on_accept_error",
                            None,
                            manager.callbacks.on_accept_error(&error),
                        )
                        .await;
                }
                match refusal {
                    Refusal::Drained => {}
                    Refusal::BatchFull => tokio::task::yield_now().await,
                    Refusal::Failed if per_connection => {}
                    Refusal::Failed => {
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = control.changed() => {}
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }
}

/// What refusing the pending connections achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Every listener's backlog was emptied and the spare is back: the listeners are no longer
    /// ready, so waiting for the next client cannot spin.
    Drained,
    /// A listener still had clients after [`REFUSE_BATCH`]; the spare is back. Go round again.
    BatchFull,
    /// The reserve could not help (no spare to free, the accept failed again, or the spare could
    /// not be taken back): back off.
    Failed,
}

/// Out of descriptors: frees the spare, accepts and resets what is pending on every listener,
/// and takes the spare back.
async fn refuse_pending(
    manager: &Manager,
    listeners: &[Listener],
    reserve: &mut Reserve,
) -> Refusal {
    if !reserve.release() {
        // Spent earlier and not yet taken back; try now, for the next time.
        reserve.restore();
        return Refusal::Failed;
    }
    // Polled with the accept task's own waker, so a listener left pending is woken as usual.
    let (refused, outcome) = poll_fn(|cx| Poll::Ready(refuse_on_listeners(cx, listeners))).await;
    if refused > 0 {
        manager
            .counters
            .refused_no_descriptors
            .fetch_add(refused, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(
            refused,
            "out of file descriptors: pending connections were reset"
        );
    }
    if !reserve.restore() {
        // Another thread took the freed descriptor.
        return Refusal::Failed;
    }
    outcome
}

/// Accepts into the one free descriptor and resets, until every listener has nothing pending.
fn refuse_on_listeners(cx: &mut Context<'_>, listeners: &[Listener]) -> (u64, Refusal) {
    let mut refused = 0;
    let mut outcome = Refusal::Drained;
    for listener in listeners {
        let mut attempts = 0;
        loop {
            if attempts == REFUSE_BATCH {
                outcome = Refusal::BatchFull;
                break;
            }
            attempts += 1;
            match listener.listener.poll_accept(cx) {
                // The accept would block: the backlog is empty and tokio has cleared the
                // listener's readiness.
                Poll::Pending => break,
                Poll::Ready(Ok((stream, peer))) => {
                    // RST rather than FIN: the client learns it was refused, not served, and no
                    // TIME_WAIT is left behind while the process is short of resources.
                    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    drop(stream);
                    tracing::debug!(%peer, "refused: out of file descriptors");
                    refused += 1;
                }
                Poll::Ready(Err(error)) if is_per_connection(&error) => {}
                Poll::Ready(Err(error)) => {
                    tracing::debug!(%error, "accept failed while refusing pending connections");
                    return (refused, Refusal::Failed);
                }
            }
        }
    }
    (refused, outcome)
}

async fn maximum_connections(manager: &Manager) {
    manager
        .guard(
            "on_maximum_connections",
            None,
            manager.callbacks.on_maximum_connections(),
        )
        .await;
}

/// Turns an accepted socket with a limiter slot into a connection.
async fn take(manager: &Arc<Manager>, accepted: Accepted, permit: Permit) {
    let Accepted { stream, peer, tls } = accepted;
    let Ok(live) = manager.begin() else {
        // A shutdown began after this accept: the client gets a plain close.
        return;
    };
    if manager.config.nodelay {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, %peer, "cannot set TCP_NODELAY");
        }
    }
    let created = manager
        .guard_sync("on_socket_created", None, || {
            manager
                .callbacks
                .on_socket_created(SockRef::from(&stream), Direction::Inbound)
        })
        .await;
    if created.is_none() {
        // The panic was reported; the socket never becomes a connection.
        let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        return;
    }
    // The per-address cap. A connection over it still becomes one, refused from the start: its
    // driver runs only the closing events, so the application sees every accepted socket end
    // with a reason. The address's slot travels with the limiter permit and is freed with it.
    let (permit, refuse) = match &manager.per_ip {
        None => (permit, None),
        Some(limit) => match limit.try_acquire(peer.ip()) {
            Some(slot) => (permit.with_peer_slot(slot), None),
            None => {
                Counters::count(&manager.counters.refused_per_ip);
                (permit, Some(ClosureReason::PerIpLimit))
            }
        },
    };
    let user_data = UserData::new(&manager.layout);
    if let Err((_, error)) = manager.establish(
        stream,
        peer,
        Direction::Inbound,
        user_data,
        tls.map(Secure::Accept),
        permit,
        live,
        false,
        refuse,
    ) {
        tracing::debug!(%error, %peer, "accepted connection not taken");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_shortages_back_off_and_client_failures_do_not() {
        // EMFILE and ENFILE have no stable ErrorKind of their own; they must not count as
        // per-connection.
        assert!(!is_per_connection(&io::Error::from_raw_os_error(24)));
        assert!(!is_per_connection(&io::Error::from_raw_os_error(23)));
        assert!(!is_per_connection(&io::Error::from(
            io::ErrorKind::OutOfMemory
        )));
        assert!(is_per_connection(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
    }

    #[test]
    fn reporter_admits_ten_a_second() {
        let mut reporter = Reporter::new();
        let admitted = (0..100).filter(|_| reporter.admit()).count();
        assert_eq!(admitted, REPORTS_PER_SECOND as usize);
        assert_eq!(reporter.suppressed, 100 - u64::from(REPORTS_PER_SECOND));
    }
}
