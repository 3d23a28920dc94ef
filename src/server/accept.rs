//! The accept loop and its error policy.
//!
//! One task per server accepts from all of its listeners, so the accepting state (and the
//! start/stop events) belong to the server as a whole. It runs no application `async` code: the
//! accepting events (`on_start_accepting_connections`, `on_stop_accepting_connections`,
//! `on_maximum_connections`, `on_accept_error`) go, in order, to a task of their own, so one slow
//! callback never stalls the listeners. Only `on_socket_created`, which is synchronous, runs here.
//!
//! With [`LimitPolicy::StopAccepting`] the loop accepts no client without a slot: at the limit it
//! stops (the limiter tells it when another server or a connect took the last shared slot) and
//! resumes when one frees. Every refusal is an RST, but at the limit with a refusal message (the
//! message, then FIN).
//!
//! A shutdown stops the loop, which closes the listeners; with a drain window the loop first
//! accepts through the window, and at its end takes the clients already queued, so that only
//! clients arriving after the window are refused.
//!
//! Failed accepts fall in two groups:
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

use tokio::sync::mpsc;

use crate::ids::Direction;
use crate::proxy::ProxyProtocol;
use crate::server::driver::transport::Transport;
use crate::server::driver::{self, Proxied};
use crate::server::limit::{LimitPolicy, Permit};
use crate::server::manager::{AcceptTasks, Addresses, Admitted, Manager};
use crate::server::reserve::{is_out_of_descriptors, Reserve};
use crate::server::shutdown::Phase;
use crate::stats::Count;
use crate::tls::{AcceptorCell, Secure, TlsAcceptor};

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

/// A bound listener; for a TLS one, the acceptor its connections negotiate with (replaceable
/// while it runs); for a PROXY protocol one, its settings.
pub(crate) struct Listener {
    /// Shared only with the weak references of the server's handle, which duplicates it for a
    /// hand-off: the listener closes when this loop ends.
    pub(crate) listener: Arc<TcpListener>,
    pub(crate) tls: Option<Arc<AcceptorCell>>,
    pub(crate) proxy: Option<Arc<ProxyProtocol>>,
    /// The local address of every connection it accepts, when that is known without asking the
    /// socket (`getsockname`, a system call per connection): the listener's own, for one bound to
    /// a specific address.
    pub(crate) accepts_on: Option<SocketAddr>,
}

/// An accepted socket on its way to becoming a connection.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    /// Its local address, if the listener knows it.
    local: Option<SocketAddr>,
    tls: Option<TlsAcceptor>,
    proxy: Option<Arc<ProxyProtocol>>,
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
                    local: listener.accepts_on,
                    tls: listener.tls.as_deref().map(AcceptorCell::current),
                    proxy: listener.proxy.clone(),
                }));
            }
        }
        Poll::Pending
    })
    .await
}

/// A callback about accepting, run in order on a task of its own so that a slow callback never
/// stalls the listeners.
#[derive(Debug)]
enum AcceptEvent {
    Start,
    Stop,
    MaximumConnections,
    Error(io::Error),
}

/// Starts the accept loop and the task that runs its callbacks.
pub(crate) fn start(manager: Arc<Manager>, listeners: Vec<Listener>) -> AcceptTasks {
    let (sender, receiver) = mpsc::unbounded_channel();
    let events = tokio::spawn(run_events(manager.context().clone(), receiver));
    let accept = tokio::spawn(accept_loop(manager, listeners, Events { sender }));
    AcceptTasks { accept, events }
}

/// Runs the accept loop's callbacks in the order they were sent; ends when the loop does.
async fn run_events(
    context: Arc<driver::Context>,
    mut receiver: mpsc::UnboundedReceiver<AcceptEvent>,
) {
    let invoker = &context.invoker;
    let callbacks = invoker.callbacks();
    while let Some(event) = receiver.recv().await {
        match event {
            AcceptEvent::Start => {
                let future = callbacks.on_start_accepting_connections();
                invoker
                    .call("on_start_accepting_connections", None, future)
                    .await
            }
            AcceptEvent::Stop => {
                let future = callbacks.on_stop_accepting_connections();
                invoker
                    .call("on_stop_accepting_connections", None, future)
                    .await
            }
            AcceptEvent::MaximumConnections => {
                let future = callbacks.on_maximum_connections();
                invoker.call("on_maximum_connections", None, future).await
            }
            AcceptEvent::Error(error) => {
                let future = callbacks.on_accept_error(&error);
                invoker.call("on_accept_error", None, future).await
            }
        };
    }
}

/// The accept loop's side of the events, and the accepting state the callbacks were told of, so
/// start and stop always alternate.
struct Events {
    sender: mpsc::UnboundedSender<AcceptEvent>,
}

impl Events {
    fn send(&self, event: AcceptEvent) {
        // The receiving task ends only after this loop does.
        let _ = self.sender.send(event);
    }
}

struct Announced {
    accepting: bool,
}

impl Announced {
    fn set(&mut self, events: &Events, accepting: bool) {
        if self.accepting != accepting {
            self.accepting = accepting;
            events.send(if accepting {
                AcceptEvent::Start
            } else {
                AcceptEvent::Stop
            });
        }
    }
}

/// What a wait of the accept loop ended with.
enum Turn<T> {
    /// Accepting was switched, or the shutdown phase moved: look again.
    Changed,
    Ready(T),
}

async fn accept_loop(manager: Arc<Manager>, listeners: Vec<Listener>, events: Events) {
    let mut accepting = manager.watch_accepting();
    let mut phase = manager.shutdown().watch();
    let mut announced = Announced { accepting: false };
    // The limit was reached and reported, and not left since.
    let mut at_limit = false;
    let mut backoff = MIN_BACKOFF;
    let mut reporter = Reporter::new();
    let mut reserve = Reserve::new();
    let mut next = 0;
    // The shutdown's drain window was open while accepting was on.
    let mut in_window = false;
    // Waits for `ready` unless accepting is switched or a shutdown begins first (biased: a stop
    // or shutdown already signalled wins over a client or a slot that came at the same time).
    macro_rules! unless_changed {
        ($ready:expr) => {
            tokio::select! {
                biased;
                _ = accepting.changed() => Turn::Changed,
                _ = phase.changed() => Turn::Changed,
                ready = $ready => Turn::Ready(ready),
            }
        };
    }
    loop {
        let now = *phase.borrow_and_update();
        if now.is_draining() {
            if in_window && *accepting.borrow() {
                take_queued(&manager, &listeners).await;
            }
            announced.set(&events, false);
            return;
        }
        in_window = matches!(now, Phase::Accepting { .. });
        if !*accepting.borrow_and_update() {
            announced.set(&events, false);
            let _ = unless_changed!(std::future::pending::<()>());
            continue;
        }
        // With `LimitPolicy::StopAccepting` no client is accepted without a slot: at the limit the
        // listeners stop, clients wait in the backlog, and accepting resumes when one frees.
        if manager.holds_clients_back() {
            if !at_limit {
                at_limit = true;
                events.send(AcceptEvent::MaximumConnections);
            }
            announced.set(&events, false);
            if let Turn::Ready(permit) = unless_changed!(manager.limiter().acquire()) {
                // Only a sign that a slot is free: the connection takes its own after accept.
                drop(permit);
            }
            continue;
        }
        announced.set(&events, true);
        let stop_at_limit = manager.config().at_limit == LimitPolicy::StopAccepting;
        // The waits on the switch and the shutdown phase are armed once for every client taken
        // until one of them moves, not once per client: arming and disarming both cost about a
        // thousand instructions, a twentieth of a short connection's whole life.
        let changed = async {
            tokio::select! {
                _ = accepting.changed() => (),
                _ = phase.changed() => (),
            }
        };
        tokio::pin!(changed);
        loop {
            let accepted = tokio::select! {
                biased;
                () = &mut changed => break,
                // Another server or an outgoing connect took the last shared slot.
                () = manager.limiter().until_full(), if stop_at_limit => break,
                accepted = accept_any(&listeners, &mut next) => accepted,
            };
            match accepted {
                Ok(accepted) => {
                    backoff = MIN_BACKOFF;
                    // Descriptors are available again: take back a spare spent earlier (a no-op
                    // while it is held).
                    reserve.restore();
                    match manager.admit() {
                        Some(permit) => {
                            at_limit = false;
                            take(&manager, accepted, permit);
                        }
                        // `AcceptAndClose`; or, with `StopAccepting`, a slot taken elsewhere in
                        // the instant between the check above and this accept.
                        None => {
                            refuse_at_limit(
                                &accepted.stream,
                                manager.config().refusal_message.as_ref(),
                            );
                            if !at_limit {
                                at_limit = true;
                                events.send(AcceptEvent::MaximumConnections);
                            }
                        }
                    }
                }
                Err(error) => {
                    manager.count(Count::AcceptError);
                    let per_connection = is_per_connection(&error);
                    tracing::debug!(%error, per_connection, "accept failed");
                    let refusal = if is_out_of_descriptors(&error) {
                        refuse_pending(&manager, &listeners, &mut reserve).await
                    } else {
                        Refusal::Failed
                    };
                    if reporter.admit() {
                        events.send(AcceptEvent::Error(error));
                    }
                    match refusal {
                        Refusal::Drained => {}
                        Refusal::BatchFull => tokio::task::yield_now().await,
                        Refusal::Failed if per_connection => {}
                        Refusal::Failed => {
                            let backoff_over = tokio::select! {
                                biased;
                                () = &mut changed => false,
                                () = tokio::time::sleep(backoff) => true,
                            };
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            if !backoff_over {
                                break;
                            }
                        }
                    }
                }
            }
            // At the limit with `StopAccepting`: the top of the outer loop holds clients back.
            if manager.holds_clients_back() {
                break;
            }
        }
    }
}

/// Refuses an accepted client: RST rather than FIN, for every refusal (at the limit without a
/// refusal message, over the per-address cap, out of descriptors), so the client learns it was
/// refused, not served, and no `TIME_WAIT` is left behind.
fn refuse(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Refuses a client at the connection limit: with the application's
/// [refusal message](crate::ServerBuilder::refusal_message), writes it and closes with FIN;
/// without one, resets like every other refusal. The write does not wait: a socket just accepted
/// has its whole send buffer free, which the builder made sure the message fits in.
fn refuse_at_limit(stream: &TcpStream, message: Option<&bytes::Bytes>) {
    let Some(message) = message else {
        return refuse(stream);
    };
    match stream.try_write(message) {
        Ok(written) if written == message.len() => {
            let _ = SockRef::from(stream).shutdown(std::net::Shutdown::Write);
        }
        // Not all of it went (the peer is already gone, or a tiny send buffer): a reset says the
        // refusal plainly rather than a message cut short.
        _ => refuse(stream),
    }
}

/// At the end of a drain window, takes every client already queued on the listeners (at most a
/// backlog's worth each), so that closing them resets none that connected while the window was
/// open: those become connections like any other, and drain with the rest.
async fn take_queued(manager: &Manager, listeners: &[Listener]) {
    // Polled with the accept task's own waker, as in `refuse_pending`.
    let queued = poll_fn(|cx| Poll::Ready(accept_queued(cx, listeners))).await;
    if !queued.is_empty() {
        tracing::debug!(
            queued = queued.len(),
            "drain window over: queued clients taken"
        );
    }
    for accepted in queued {
        match manager.admit() {
            Some(permit) => take(manager, accepted, permit),
            None => refuse_at_limit(&accepted.stream, manager.config().refusal_message.as_ref()),
        }
    }
}

/// Accepts from every listener until none has a client pending.
fn accept_queued(cx: &mut Context<'_>, listeners: &[Listener]) -> Vec<Accepted> {
    let mut queued = Vec::new();
    for listener in listeners {
        for _ in 0..REFUSE_BATCH {
            match listener.listener.poll_accept(cx) {
                Poll::Pending => break,
                Poll::Ready(Ok((stream, peer))) => queued.push(Accepted {
                    stream,
                    peer,
                    local: listener.accepts_on,
                    tls: listener.tls.as_deref().map(AcceptorCell::current),
                    proxy: listener.proxy.clone(),
                }),
                Poll::Ready(Err(error)) if is_per_connection(&error) => {}
                Poll::Ready(Err(error)) => {
                    tracing::debug!(%error, "accept failed while taking queued clients");
                    break;
                }
            }
        }
    }
    queued
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
        manager.count_many(Count::RefusedNoDescriptors, refused);
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
                    refuse(&stream);
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

/// Turns an accepted socket with a limiter slot into a connection.
fn take(manager: &Manager, accepted: Accepted, permit: Permit) {
    let Accepted {
        stream,
        peer,
        local,
        tls,
        proxy,
    } = accepted;
    let Ok(live) = manager.begin() else {
        // A shutdown began after this accept.
        return refuse(&stream);
    };
    if manager.config().nodelay {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, %peer, "cannot set TCP_NODELAY");
        }
    }
    let created = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let callbacks = manager.invoker().callbacks();
        callbacks.on_socket_created(SockRef::from(&stream), Direction::Inbound)
    }));
    if let Err(payload) = created {
        // The socket never becomes a connection; the panic is reported on a task of its own, as
        // the accept loop runs no application `async` code.
        refuse(&stream);
        let context = manager.context().clone();
        tokio::spawn(async move {
            let invoker = &context.invoker;
            invoker
                .report_panic("on_socket_created", None, payload)
                .await;
        });
        return;
    }
    // The per-address cap. A connection over it still becomes one, refused from the start: its
    // driver runs only the closing events, so the application sees every accepted socket end
    // with a reason. The address's slot travels with the limiter permit and is freed with it.
    // Behind the PROXY protocol the client is known only once the driver has read the header,
    // so the driver counts it then.
    let proxied = proxy.map(|settings| Proxied {
        settings,
        per_ip: manager.per_ip().cloned(),
    });
    let Admitted {
        permit,
        over_peer_cap,
    } = if proxied.is_some() {
        Admitted {
            permit,
            over_peer_cap: false,
        }
    } else {
        manager.admit_peer(permit, peer.ip())
    };
    let secure = tls.map(|acceptor| Secure::Accept { acceptor });
    // The listener knows it when bound to one address; otherwise the socket is asked.
    let local = match local.map_or_else(|| stream.local_addr(), Ok) {
        Ok(local) => local,
        Err(error) => return tracing::debug!(%error, %peer, "accepted connection not taken"),
    };
    let user_data = manager.new_user_data();
    if let Err((_, error)) = manager.register(
        Transport::Plain(stream),
        Addresses { peer, local },
        Direction::Inbound,
        user_data,
        driver::Setup {
            proxied,
            secure,
            sink: None,
        },
        permit,
        live,
        false,
        over_peer_cap,
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
