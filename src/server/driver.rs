//! The per-connection task: a thin pump around the [`Lifecycle`].
//!
//! The driver owns the socket ([`Transport`]), the lifecycle and the write queue. Each turn it
//! takes what handles posted to the connection's mailbox, asks the lifecycle for the next
//! [`Action`] and performs it: run an event's callback, send FIN, or wait for I/O (a read, room
//! to write, urgent data, a deadline, or a new request) and feed back what happened. It decides
//! nothing about the connection's fate: the lifecycle does, from what the driver feeds it, and the
//! driver publishes the lifecycle's [`Snapshot`] to handles from one place
//! ([`Driver::publish`]). It sees the server only through its [`Context`] (the callbacks and the
//! settings it needs) and its [`Registration`], whose drop deregisters the connection.
//!
//! Files by job: this one pumps; `wait` polls what a wait waits for (in priority order) and
//! tries a reply's write before it; `write` keeps the write queue, `urgent` the urgent data,
//! `timer` the one timer, `proxy` the PROXY header, `handshake` the TLS negotiation, `failures`
//! feeds failed reads and writes to the lifecycle and runs the callbacks of its verdict,
//! `closing` the closing events, `transport` the byte stream (plain, TLS, or another kind),
//! `wake` what ended a wait and what is left to await after it.

pub(crate) mod arena;
mod closing;
mod failures;
mod handshake;
mod proxy;
mod throttle;
mod timer;
pub(crate) mod transport;
mod urgent;
mod wait;
mod wake;
mod write;

use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures::task::noop_waker_ref;
use tokio::time::Instant;

use crate::closure::ClosureReason;
use crate::connection::lifecycle::{
    Action, Event, Fate, LazyNow, Lifecycle, LifecycleConfig, ReadOutcome, ReadVerdict, Snapshot,
    StartFailure, BUFFER_OVERHEAD,
};
use crate::connection::mailbox::Taken;
use crate::connection::read_sink::ReadSink;
use crate::connection::{Connection, Shared};
use crate::rate::{ReadRate, TokenBucket};
use crate::server::handshake_slots::HandshakeSlots;
use crate::server::invoke::Invoker;
use crate::server::registry::Registration;
use crate::stats::{ConnectionCounters, Count, Counters};
use crate::tls::Secure;

use timer::Timer;
use transport::Transport;
use urgent::Urgent;
use wake::{Next, Wake};
use write::WriteQueue;

pub(crate) use proxy::Proxied;

/// How a connection begins and where its reads go, beyond what every connection has.
#[derive(Debug, Default)]
pub(crate) struct Setup {
    /// The PROXY header to read first, on a listener that requires one.
    pub(crate) proxied: Option<Proxied>,
    /// The TLS handshake to run.
    pub(crate) secure: Option<Secure>,
    /// Where reads and the peer's FIN go instead of to the callbacks (an awaited client's
    /// channel).
    pub(crate) sink: Option<Box<dyn ReadSink>>,
}

/// What a connection's driver needs of its server.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) invoker: Invoker,
    /// The server's counters and metrics.
    pub(crate) counters: Arc<Counters>,
    pub(crate) read_buffer_size: usize,
    /// How fast each connection is read, if limited.
    pub(crate) read_rate: Option<ReadRate>,
    pub(crate) handshake_timeout: Duration,
    /// Slots for the TLS handshakes of accepted connections.
    pub(crate) handshake_slots: Arc<HandshakeSlots>,
    pub(crate) lifecycle: Arc<LifecycleConfig>,
}

impl Context {
    /// Records a successful TLS handshake's duration, from its start on the connection's task to
    /// negotiated (`switchboard_tls_handshake_duration_seconds`).
    pub(crate) fn record_tls_handshake_duration(&self, took: Duration) {
        self.counters.metrics().tls_handshake(took);
    }

    /// Records how long a PROXY protocol header took to read
    /// (`switchboard_proxy_header_duration_seconds`), once per connection whose header was read
    /// and accepted, from the start of the read to the end of the header. A header that fails
    /// (timeout, malformed, untrusted) is not recorded here: it is counted by its closure reason.
    pub(crate) fn record_proxy_header_duration(&self, took: Duration) {
        self.counters.metrics().proxy_header(took);
    }
}

/// How a wait before establishment ended.
enum Before<T> {
    Done(T),
    /// The time allowed ran out.
    TimedOut,
    /// An abort was posted (abort-all, a shutdown's end): its reason.
    Aborted(ClosureReason),
}

/// Runs one of the connection's callbacks, `$method` of [`Callbacks`](crate::Callbacks) with the
/// connection's handle and `$arg`s: publishes the lifecycle's snapshot first, so that the
/// callback's handles see the connection as it is (`@published` where it is published already),
/// and catches a panic, which ends the connection ([`Driver::panicked`]). `Some` with the
/// callback's value if it returned.
macro_rules! callback {
    ($driver:ident, $name:literal, $method:ident($($arg:expr),* $(,)?)) => {{
        $driver.publish();
        callback!(@published $driver, $name, $method($($arg),*))
    }};
    // Where the snapshot was published since the lifecycle last changed it (the pump's turn
    // publishes after its `next`, and a read delivered or a write completed changes neither the
    // fate nor the high mark): the comparison is not made again for every message.
    (@published $driver:ident, $name:literal, $method:ident($($arg:expr),* $(,)?)) => {'callback: {
        debug_assert!($driver.life.snapshot() == $driver.published, "published before");
        let callbacks = $driver.context.invoker.callbacks();
        // A statement of its own: the callback's result (a panic's payload) ends with it, and is
        // not kept in the task across the panic's await below (as a `match` scrutinee would be).
        let polled = crate::server::driver::write::Polled {
            future: crate::server::invoke::Guarded(callbacks.$method(&$driver.connection $(, $arg)*)),
            mailbox: &$driver.connection.shared().mailbox,
            writes: &mut $driver.writes,
            life: &mut $driver.life,
        };
        let payload = match polled.await {
            Ok(value) => break 'callback Some(value),
            Err(payload) => payload,
        };
        // Boxed: the panic path is rare, and its state would otherwise be part of every
        // connection's task.
        Box::pin($driver.panicked($name, payload)).await;
        None
    }};
}
pub(crate) use callback;

/// Drives `future` (the PROXY header read, the TLS handshake) until it completes, `deadline`
/// passes or an abort is posted: before a connection is established, an abort is all its handles
/// can post, and nothing else may cut the wait short.
async fn before_established<F: std::future::Future>(
    mailbox: &crate::connection::mailbox::Mailbox,
    future: F,
    deadline: Instant,
) -> Before<F::Output> {
    tokio::pin!(future);
    let timeout = tokio::time::sleep_until(deadline);
    tokio::pin!(timeout);
    loop {
        if let Some(reason) = mailbox.pending_abort() {
            return Before::Aborted(reason);
        }
        let woken = tokio::select! {
            biased;
            () = poll_fn(|cx| mailbox.poll_posted(cx)) => None,
            output = &mut future => Some(Before::Done(output)),
            () = &mut timeout => Some(Before::TimedOut),
        };
        mailbox.unpark();
        if let Some(ended) = woken {
            return ended;
        }
    }
}

/// What few connections use, behind one pointer in the driver: every connection's task carries
/// the driver, and most connections have none of this.
struct Rare {
    /// The PROXY header still to read, on a listener that requires one.
    proxied: Option<Proxied>,
    /// The TLS handshake still to run.
    secure: Option<Secure>,
    /// Where reads go instead of to the callbacks, if anywhere.
    sink: Option<Box<dyn ReadSink>>,
    /// The read rate limit's bucket, on a server that limits it.
    rate: Option<TokenBucket>,
    /// Under a rate limit, the most the next read takes.
    read_size: usize,
}

impl Rare {
    /// Whether nothing is left that the connection still uses (the box can go).
    fn is_spent(&self) -> bool {
        self.proxied.is_none()
            && self.secure.is_none()
            && self.sink.is_none()
            && self.rate.is_none()
    }
}

/// In declaration order (`repr(C)`): what a message touches first, in the first two cache lines
/// of the task's state; the lifecycle, whose steady part leads it, next; the registration, which
/// only the connection's end touches, last. A wake-up in an open loop finds all of this cold,
/// and each line more is a cache miss per message.
#[repr(C)]
pub(crate) struct Driver {
    transport: Transport,
    writes: WriteQueue,
    /// The uncounted handle lent to callbacks; the driver reaches the shared state through it
    /// (a pointer of its own would be one more per connection's task).
    connection: Connection,
    context: Arc<Context>,
    /// The PROXY header and the handshake still to run, the read sink and the read rate limit,
    /// if the connection has any of them.
    rare: Option<Box<Rare>>,
    urgent: Urgent,
    timer: Timer,
    /// Buffers sent in full whose `on_write_completed` is still to run. At most what one write
    /// was handed ([`write::MOST_BUFFERS_PER_WRITE`]), so a `u32`: it fits beside `published`.
    to_complete: u32,
    /// What handles were last told of the connection's fate ([`Driver::publish`]).
    published: Snapshot,
    /// Whether the timer is armed for the current wait ([`Timer::arm`]).
    timer_armed: bool,
    life: Lifecycle,
    registration: Registration,
}

impl Driver {
    pub(crate) fn new(
        context: Arc<Context>,
        shared: Arc<Shared>,
        transport: Transport,
        setup: Setup,
        registration: Registration,
    ) -> Self {
        let rare = Rare {
            proxied: setup.proxied,
            secure: setup.secure,
            sink: setup.sink,
            rate: context
                .read_rate
                .map(|rate| TokenBucket::new(rate, Instant::now())),
            read_size: context.read_buffer_size,
        };
        Driver {
            connection: Connection::uncounted(shared),
            life: Lifecycle::starting(context.lifecycle.clone(), Instant::now()),
            rare: (!rare.is_spent()).then(|| Box::new(rare)),
            context,
            transport,
            writes: WriteQueue::default(),
            urgent: Urgent::default(),
            timer: Timer::default(),
            published: Snapshot {
                fate: Fate::Open,
                high: false,
            },
            to_complete: 0,
            timer_armed: false,
            registration,
        }
    }

    /// Runs the connection from establishment to release. A connection `refuse`d by the accept
    /// loop (the per-address cap) gets only its closing events, with that reason.
    ///
    /// Not an `async fn`: its argument would be stored twice in the task (once as the argument,
    /// once moved into the body), while an `async move` block uses the driver in place.
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn run(
        mut self,
        over_peer_cap: bool,
    ) -> impl std::future::Future<Output = ()> + Send {
        async move {
            self.connection.shared().mailbox.set_task(tokio::task::id());
            if over_peer_cap {
                self.life.on_start_failed(StartFailure::PerIpLimit);
            } else {
                // Awaited one after the other here, so that the pump's state does not carry the
                // start's locals; the start boxed, like the finish: it runs once, and its state
                // (the peer's address, lent to `on_connection_established`) is larger than the
                // pump's.
                if Box::pin(self.start()).await {
                    self.pump().await;
                }
            }
            // Boxed, like the handshake: a connection's task is as large as its largest await,
            // and these run once, so they should not make every idle connection pay for their
            // state.
            Box::pin(self.finish()).await;
        }
    }

    /// From the PROXY header and the handshake (for TLS) to establishment: `true` once
    /// established (the pump runs next), `false` if the lifecycle ended the connection before.
    async fn start(&mut self) -> bool {
        let proxied = self.rare.as_mut().and_then(|rare| rare.proxied.take());
        if let Some(proxied) = proxied {
            // Boxed, like the handshake: it runs once.
            Box::pin(self.proxy_header(proxied)).await;
        }
        let secure = self.rare.as_mut().and_then(|rare| rare.secure.take());
        if self.rare.as_ref().is_some_and(|rare| rare.is_spent()) {
            self.rare = None;
        }
        if let Some(secure) = secure {
            if !self.life.is_ended() {
                Box::pin(self.handshake(secure)).await;
            }
        }
        if self.life.is_ended() {
            return false;
        }
        let peer = self.connection.shared().peer();
        // Weak handles (and groups) can take this connection from now until it closes.
        self.connection.shared().mailbox.open_for_upgrades();
        callback!(
            self,
            "on_connection_established",
            on_connection_established(&peer)
        );
        self.life.on_established(Instant::now());
        true
    }

    /// A callback of this connection panicked: the lifecycle ends the connection, handles learn
    /// it (an abort-all from now on does not count it), and the panic is reported.
    async fn panicked(&mut self, name: &'static str, payload: Box<dyn std::any::Any + Send>) {
        self.life.on_callback_panic();
        self.publish();
        let invoker = &self.context.invoker;
        invoker
            .report_panic(name, Some(self.connection.shared().id), payload)
            .await;
    }

    /// Publishes the lifecycle's [`Snapshot`] to the connection's handles if it changed since
    /// the last time (`true` then): the one place that tells handles a connection's fate. A
    /// connection that starts closing runs its closing hooks (a group it joined forgets it); one
    /// whose end is published takes an abort counted before it as its reason.
    #[inline]
    fn publish(&mut self) -> bool {
        let snapshot = self.life.snapshot();
        let changed = snapshot != self.published;
        if changed {
            self.publish_changed(snapshot);
        }
        changed
    }

    fn publish_changed(&mut self, snapshot: Snapshot) {
        self.published = snapshot;
        if let Some(abort) = self.connection.shared().mailbox.publish(snapshot) {
            self.life.on_abort(abort);
        }
        if snapshot.fate != Fate::Open {
            let shared = self.connection.shared();
            shared.closing_hooks.run(shared);
        }
    }

    /// Not an `async fn`, like [`Driver::run`]: its `self` would be stored twice in the task (the
    /// argument, and its binding in the body).
    #[allow(clippy::manual_async_fn)]
    fn pump(&mut self) -> impl std::future::Future<Output = ()> + Send + '_ {
        async move {
            loop {
                let action = {
                    // The time of this turn, read only if a rule needs it.
                    let now = LazyNow::default();
                    self.take_posted(&now);
                    self.life.next(&now)
                };
                // Matched, not compared: a borrow would keep `action` in the task across every
                // await below.
                if self.publish() && matches!(action, Action::SendFin) && self.late_writes() {
                    continue;
                }
                match action {
                    Action::End(_) => return,
                    Action::ConfirmUnreferenced => {
                        // Otherwise an upgrade or a post came in since the take: take again.
                        if self.connection.shared().mailbox.seal_unreferenced() {
                            self.life.on_unreferenced(&LazyNow::default());
                        }
                    }
                    // Boxed: these events are rare (a queue crossing its marks, a shutdown notice,
                    // an idle timeout), and their state would otherwise be part of every task.
                    Action::Announce(event) => Box::pin(self.announce(event)).await,
                    Action::SendFin => {
                        let mut cx = TaskContext::from_waker(noop_waker_ref());
                        match self.transport.poll_close_notify(&mut cx) {
                            Poll::Ready(sent) => self.fin_sent(sent),
                            Poll::Pending => self.life.on_fin_blocked(),
                        }
                    }
                    Action::Wait(mut interest) => {
                        if interest.read && self.rate().is_some() {
                            interest = self.throttle(interest);
                        }
                        // Waited here rather than in an `async fn`: one state machine less per
                        // wait.
                        self.timer_armed = self.timer.arm(interest.deadline);
                        let next = {
                            let wake = 'wake: {
                                if self.urgent.watch(interest.urgent, || self.transport.tcp()) {
                                    break 'wake match self.urgent.take_held() {
                                        // Taken by a read before it was asked for: delivered now.
                                        Some(byte) => Wake::UrgentByte(byte),
                                        // Boxed: only connections that asked for urgent data carry
                                        // this wait's state.
                                        None => Box::pin(self.wait_with_urgent(interest)).await,
                                    };
                                }
                                // Only what the poll looks at moves in, three flags (the
                                // deadline is the timer's, armed above): borrowed, the interest
                                // would stay in the task across the callbacks' awaits too, and
                                // whole it would make this wait's state the task's largest.
                                let mut wanted = wait::Wanted::of(interest);
                                // A statement of its own: the wake it may give ends with it, and is
                                // not kept in the task across the wait below (as an `else if let`'s
                                // would be, 40 bytes).
                                if let Some(wrote) = self.write_at_once(interest) {
                                    match self.wrote_at_once(wrote, interest) {
                                        Ok(steady) => wanted = steady,
                                        Err(wake) => break 'wake wake,
                                    }
                                }
                                let driver = &mut *self;
                                poll_fn(move |cx| driver.poll_wake(cx, wanted)).await
                            };
                            self.connection.shared().mailbox.unpark();
                            self.woke(wake)
                        };
                        // The wake's scope ended above, and what is left to await was decided by a
                        // plain function: the task carries none of the wake across these awaits.
                        // The two of every message are the callback and the write. Each arm moves
                        // `next` whole before it awaits: taken apart by the patterns, it would stay
                        // in the task, partly moved, across the awaits (40 bytes).
                        match next {
                            Next::Deliver(_) => {
                                let data = next.into_data();
                                callback!(@published self, "on_read_completed", on_read_completed(data));
                            }
                            Next::Written => {
                                // Moved whole, as the other arms do, so that the task does not
                                // keep it across the awaits below; forgotten, as a `Written` holds
                                // nothing to drop (a drop would leave a call to `Next`'s drop glue
                                // in the pump's loop).
                                std::mem::forget(next);
                                // Awaited here rather than in an `async fn`, like the read's callback:
                                // one state machine less in the task. Counted down in the driver
                                // (where it fills padding) rather than in a local, which the task
                                // would keep across the callbacks' awaits.
                                while self.to_complete > 0 {
                                    // Callbacks that keep the trait's default (which drops the
                                    // buffer) are not called for each buffer sent.
                                    let invoker = &self.context.invoker;
                                    if invoker.skips_write_completed() {
                                        self.drop_completed();
                                        break;
                                    }
                                    self.to_complete -= 1;
                                    let data = self.writes.pop_sent();
                                    if callback!(
                                        @published self,
                                        "on_write_completed",
                                        on_write_completed(data)
                                    )
                                    .is_none()
                                    {
                                        self.to_complete = 0;
                                        break;
                                    }
                                    self.context.invoker.learn_write_completed();
                                }
                            }
                            // Boxed: the rest come once per connection (the peer's FIN), or on
                            // errors.
                            Next::Woken(_) => Box::pin(self.woken(next.into_wake())).await,
                            Next::Done => {}
                        }
                    }
                }
            }
        }
    }

    /// Where reads go instead of to the callbacks, if anywhere.
    fn sink(&self) -> Option<&dyn ReadSink> {
        self.rare.as_deref()?.sink.as_deref()
    }

    /// The read rate limit's bucket, on a server that limits it.
    fn rate(&mut self) -> Option<&mut TokenBucket> {
        self.rare.as_deref_mut()?.rate.as_mut()
    }

    /// The most the next read takes: the read buffer size, or less under a rate limit.
    fn read_size(&self) -> usize {
        match self.rare.as_deref() {
            Some(Rare {
                rate: Some(_),
                read_size,
                ..
            }) => *read_size,
            _ => self.context.read_buffer_size,
        }
    }

    /// Feeds the wake to the lifecycle where that needs no callback, and says what is left to
    /// await. Not `async`, so that the pump's task keeps none of its locals.
    #[inline]
    fn woke(&mut self, wake: Wake) -> Next {
        match wake {
            Wake::Read(Ok(data)) if !data.is_empty() => self.arrived(data),
            Wake::Wrote(Ok(sent)) if sent > 0 => {
                self.written(sent);
                Next::Written
            }
            Wake::Posted | Wake::UrgentRoom => Next::Done,
            Wake::Deadline => {
                self.deadline_passed();
                Next::Done
            }
            Wake::FinSent(sent) => {
                self.fin_sent(sent);
                Next::Done
            }
            wake => Next::Woken(wake),
        }
    }

    /// Data read: the lifecycle and the rate limit take note of it, and it goes to the read sink
    /// or is left for `on_read_completed`.
    #[inline]
    fn arrived(&mut self, data: BytesMut) -> Next {
        if let Some(rate) = self.rate() {
            rate.take(data.len(), Instant::now());
        }
        let outcome = ReadOutcome::Data(data.len());
        if self.life.on_read(outcome, &LazyNow::default()) != ReadVerdict::Deliver {
            return Next::Done;
        }
        self.count_read(data.len());
        match self.sink() {
            Some(sink) => {
                sink.deliver(data);
                Next::Done
            }
            None => Next::Deliver(data),
        }
    }

    /// The close was just published, and the FIN is next: a write a handle posted before it
    /// could see the close (a broadcast that met the connection open) goes out before the FIN.
    /// Takes it now; `true` if there is one, which the FIN then waits for. Kept out of line: it
    /// runs once per connection, and the pump's loop stays as small as it was.
    #[cold]
    #[inline(never)]
    fn late_writes(&mut self) -> bool {
        self.take_posted(&LazyNow::default());
        self.life.has_queued()
    }

    /// A deadline passed: the lifecycle decides, asking, for a close that waits for the peer's
    /// FIN, whether the peer acknowledged everything (the kernel tells; where it cannot, the
    /// answer is no).
    fn deadline_passed(&mut self) {
        let transport = &self.transport;
        self.life.on_deadline(Instant::now(), || {
            transport.all_acknowledged() == Some(true)
        });
    }

    /// Takes what handles posted into the lifecycle, the write queue and the urgent bytes.
    #[inline]
    fn take_posted(&mut self, now: &LazyNow) {
        let mailbox = &self.connection.shared().mailbox;
        let taken = mailbox.take_posted(self.writes.tail());
        // On a connection with no urgent bytes and no sink, the common turns, kept inline: only
        // the handle count can have moved, or a read was requested (the turn after a message's
        // callback).
        if !matches!(taken, Taken::Requests(_)) && self.urgent.is_unused() && self.sink().is_none()
        {
            let handles = mailbox.handles();
            match taken {
                Taken::Read => self.life.on_read_requested(handles),
                _ => self.life.on_quiet(handles, false),
            }
            return;
        }
        self.take_requests(taken, now);
    }

    /// [`Driver::take_posted`] beyond its common turns: what was `taken`, the urgent bytes, the
    /// sink.
    #[inline(never)]
    fn take_requests(&mut self, taken: Taken, now: &LazyNow) {
        let mailbox = &self.connection.shared().mailbox;
        let requests = taken.into_requests(mailbox.handles());
        if requests
            .as_ref()
            .is_some_and(|requests| requests.urgent_posted)
        {
            mailbox.take_urgent(self.urgent.queue());
        }
        if self.urgent.has_pending() {
            self.urgent.send(self.transport.tcp());
        }
        let urgent_pending = self.urgent.has_pending();
        match requests {
            Some(mut requests) => {
                requests.urgent_pending = urgent_pending;
                self.life.on_requests(requests, now);
            }
            // Nothing posted since the last take: only the handle count can have moved.
            None => self.life.on_quiet(mailbox.handles(), urgent_pending),
        }
        if self.sink().is_some_and(|sink| sink.is_gone()) {
            self.life.cancel_read();
        }
    }

    async fn announce(&mut self, event: Event) {
        match event {
            Event::WriteBufferHigh => {
                self.context.counters.count(Count::WriteQueueHigh);
                callback!(self, "on_write_buffer_high", on_write_buffer_high());
            }
            Event::WriteBufferLow => {
                callback!(self, "on_write_buffer_low", on_write_buffer_low());
            }
            Event::ShutdownRequested => {
                callback!(self, "on_shutdown_requested", on_shutdown_requested());
            }
            Event::IdleTimeout => {
                // A panic ended the connection already: no answer then.
                if let Some(action) = callback!(self, "on_idle_timeout", on_idle_timeout()) {
                    self.life.on_idle_answer(action, &LazyNow::default());
                }
            }
        }
    }

    /// Feeds what ended a wait back into the lifecycle, with its callbacks: the wakes that
    /// [`Driver::pump`] does not handle itself.
    async fn woken(&mut self, wake: Wake) {
        match wake {
            Wake::Posted | Wake::UrgentRoom => {}
            Wake::Deadline => self.deadline_passed(),
            Wake::Read(Ok(data)) => {
                // Data goes to the pump ([`Driver::woke`]): an empty read is the end of the stream.
                debug_assert!(data.is_empty(), "a read with data is the pump's");
                self.peer_finished().await;
            }
            // Boxed, as error paths are: their state would otherwise be part of every
            // connection's task.
            Wake::Read(Err(error)) => Box::pin(self.read_failed(error)).await,
            Wake::Wrote(Ok(sent)) => {
                // Nothing written: the pump takes any other count ([`Driver::woke`]).
                debug_assert_eq!(sent, 0, "a write that sent bytes is the pump's");
                Box::pin(self.write_failed(io::ErrorKind::WriteZero.into())).await;
            }
            Wake::Wrote(Err(error)) => {
                if !matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    Box::pin(self.write_failed(error)).await;
                }
            }
            Wake::FinSent(sent) => self.fin_sent(sent),
            Wake::Urgent(watched) => Box::pin(self.urgent_watched(watched)).await,
            Wake::UrgentByte(byte) => Box::pin(self.urgent_received(byte)).await,
        }
    }

    /// The peer's FIN arrived (data goes through [`Driver::arrived`]).
    async fn peer_finished(&mut self) {
        if self.life.on_read(ReadOutcome::Eof, &LazyNow::default()) == ReadVerdict::ClientClose {
            match self.sink() {
                Some(sink) => sink.peer_closed(),
                None => {
                    callback!(
                        self,
                        "on_connection_client_close",
                        on_connection_client_close()
                    );
                }
            }
        }
    }

    /// Counts a read of `bytes` about to be delivered: the connection's counters (which
    /// [`Stats`](crate::Stats) sums) and the server's metric.
    fn count_read(&self, bytes: usize) {
        let counters = &self.connection.shared().counters;
        ConnectionCounters::add(&counters.bytes_read, bytes as u64);
        ConnectionCounters::add(&counters.reads, 1);
        self.context.counters.bytes_read(bytes as u64);
    }

    /// `sent` bytes of the queue went to the kernel: the lifecycle, the handles and the counters
    /// learn it, and the buffers sent in full are counted for `on_write_completed`.
    fn written(&mut self, sent: usize) {
        let completed = self.writes.advance(sent);
        // The queue counts buffers at their cost: a buffer's overhead leaves it with its last
        // byte.
        let cost = sent + completed * BUFFER_OVERHEAD;
        self.life.on_written(cost, &LazyNow::default());
        self.connection.shared().mailbox.publish_sent(cost);
        let counters = &self.connection.shared().counters;
        ConnectionCounters::add(&counters.bytes_written, sent as u64);
        ConnectionCounters::add(&counters.writes, completed as u64);
        self.context.counters.bytes_written(sent as u64);
        debug_assert!(completed <= write::MOST_BUFFERS_PER_WRITE);
        self.to_complete = completed as u32;
    }

    /// The buffers [`Driver::written`] counted as sent in full are dropped without a call (the
    /// callbacks keep the default `on_write_completed`).
    #[inline]
    fn drop_completed(&mut self) {
        self.writes.drop_sent(self.to_complete as usize);
        self.to_complete = 0;
    }

    /// Sends FIN once TLS `close_notify` went out (or at once on plain TCP). Errors mean the peer
    /// is gone already; the read side will tell how.
    fn fin_sent(&mut self, close_notify: io::Result<()>) {
        if let Err(error) = close_notify {
            tracing::debug!(connection = %self.connection.shared().id, %error, "close_notify not sent");
        }
        // When the connection ends right after its FIN, on plain TCP the socket's close (done
        // before any closing event) sends it: one system call less per connection. Not when the
        // urgent-data watcher holds a second descriptor, which keeps the socket open.
        let closes_next = self.life.ends_with_fin()
            && matches!(self.transport, Transport::Plain(_))
            && self.urgent.is_unused();
        if !closes_next {
            self.transport.shutdown_write();
        }
        self.life.on_fin_sent();
    }
}
