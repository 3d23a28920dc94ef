//! Calling the application's callbacks: a panic is caught and reported, never unwound into the
//! engine.

use std::any::{Any, TypeId};
use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::FutureExt;

use crate::error::Error;
use crate::ids::ConnectionId;
use crate::server::callbacks::Callbacks;
use crate::stats::{Count, Counters};

/// A callback's future, polled with its panics caught: `Err` carries the panic's payload.
///
/// A plain struct rather than an `async fn`, so that a connection's task, which is as large as
/// its largest await, carries only the callback's boxed future here.
#[derive(Debug)]
pub(crate) struct Guarded<F>(pub(crate) F);

impl<F: Future + Unpin> Future for Guarded<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = &mut self.get_mut().0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(future).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// The application's callbacks and the one way the engine calls them.
pub(crate) struct Invoker {
    callbacks: Box<dyn Callbacks>,
    /// Where panics are counted (and `on_error`s that panicked while reporting one).
    counters: Arc<Counters>,
    /// The type in `callbacks`, if the callbacks are the application's own (not the frame
    /// layer's, which passes every event on).
    callbacks_type: Option<TypeId>,
    /// What is known of `on_write_completed`: [`UNKNOWN`], [`DEFAULT`] or [`OVERRIDDEN`].
    write_completed: AtomicU8,
}

/// Not learned yet: the next call of `on_write_completed` tells.
const UNKNOWN: u8 = 0;
/// The callbacks keep the trait's `on_write_completed`, which drops the buffer and does nothing
/// else: a written buffer is dropped without the call.
const DEFAULT: u8 = 1;
/// The callbacks have an `on_write_completed` of their own (or pass it on to other callbacks):
/// every written buffer is handed to it.
const OVERRIDDEN: u8 = 2;

thread_local! {
    /// The type whose default `on_write_completed` ran last on this thread: see
    /// [`Invoker::skips_write_completed`].
    static DEFAULT_WRITE_COMPLETED: Cell<Option<TypeId>> = const { Cell::new(None) };
}

/// Called by the trait's default `on_write_completed` for callbacks of type `T`, when it runs.
pub(crate) fn default_write_completed_ran<T: ?Sized + 'static>() {
    DEFAULT_WRITE_COMPLETED.set(Some(TypeId::of::<T>()));
}

/// Called by callbacks of type `Outer` right after their `on_write_completed` called `Inner`'s
/// and did nothing else: if that was `Inner`'s default, `Outer`'s is as good as the default.
pub(crate) fn default_write_completed_passed_on<Inner, Outer>()
where
    Inner: ?Sized + 'static,
    Outer: ?Sized + 'static,
{
    if DEFAULT_WRITE_COMPLETED.get() == Some(TypeId::of::<Inner>()) {
        default_write_completed_ran::<Outer>();
    }
}

impl fmt::Debug for Invoker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invoker").finish_non_exhaustive()
    }
}

impl Invoker {
    /// `callbacks_type` is the type in `callbacks` if they are the application's own, `None` if
    /// they wrap others.
    pub(crate) fn new(
        callbacks: Box<dyn Callbacks>,
        callbacks_type: Option<TypeId>,
        counters: Arc<Counters>,
    ) -> Self {
        Invoker {
            callbacks,
            counters,
            callbacks_type,
            write_completed: AtomicU8::new(UNKNOWN),
        }
    }

    /// Whether a written buffer is dropped without calling `on_write_completed`: `true` once the
    /// callbacks are known to keep the trait's default, which does nothing else. Until that is
    /// known, the next call is watched: call [`Invoker::learn_write_completed`] after it.
    ///
    /// The trait's default notes that it ran, and for which type. That type is the server's own
    /// callbacks' only if they kept the default: an `on_write_completed` of their own replaces
    /// the default for their type, and a default that runs inside it is another type's (callbacks
    /// that wrap others). Other connections' calls on this thread, even while the call watched
    /// awaits, note another type or the same answer.
    #[inline]
    pub(crate) fn skips_write_completed(&self) -> bool {
        match self.write_completed.load(Ordering::Relaxed) {
            DEFAULT => true,
            OVERRIDDEN => false,
            _ => {
                DEFAULT_WRITE_COMPLETED.set(None);
                false
            }
        }
    }

    /// After a call of `on_write_completed` that [`Invoker::skips_write_completed`] watched:
    /// learns whether it was the trait's default.
    #[inline]
    pub(crate) fn learn_write_completed(&self) {
        if self.write_completed.load(Ordering::Relaxed) != UNKNOWN {
            return;
        }
        let ran = DEFAULT_WRITE_COMPLETED.get();
        let known = if ran.is_some() && ran == self.callbacks_type {
            DEFAULT
        } else {
            OVERRIDDEN
        };
        self.write_completed.store(known, Ordering::Relaxed);
    }

    /// The callbacks, to build the future of the one to call.
    pub(crate) fn callbacks(&self) -> &dyn Callbacks {
        self.callbacks.as_ref()
    }

    /// Runs a callback's future, catching a panic and reporting it through `on_error`. `None` if
    /// it panicked.
    pub(crate) async fn call<T>(
        &self,
        callback: &'static str,
        connection: Option<ConnectionId>,
        future: impl Future<Output = T>,
    ) -> Option<T> {
        match AssertUnwindSafe(future).catch_unwind().await {
            Ok(value) => Some(value),
            Err(payload) => {
                // Boxed: the panic path is rare, and its state would otherwise be part of every
                // callback's await, and so of every connection's task.
                Box::pin(self.report_panic(callback, connection, payload)).await;
                None
            }
        }
    }

    /// Runs a synchronous callback, catching a panic as [`Invoker::call`] does.
    pub(crate) async fn call_sync<T>(
        &self,
        callback: &'static str,
        connection: Option<ConnectionId>,
        f: impl FnOnce(&dyn Callbacks) -> T,
    ) -> Option<T> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| f(self.callbacks()))) {
            Ok(value) => Some(value),
            Err(payload) => {
                Box::pin(self.report_panic(callback, connection, payload)).await;
                None
            }
        }
    }

    /// Counts a caught panic and reports it through `on_error`.
    pub(crate) async fn report_panic(
        &self,
        callback: &'static str,
        connection: Option<ConnectionId>,
        payload: Box<dyn Any + Send>,
    ) {
        self.counters.count(Count::CallbackPanic);
        let error = Error::CallbackPanic {
            callback,
            connection,
            message: panic_message(payload.as_ref()),
        };
        tracing::error!(%error, "callback panicked");
        let reported = AssertUnwindSafe(self.callbacks.on_error(&error))
            .catch_unwind()
            .await;
        if reported.is_err() {
            self.counters.count(Count::CallbackPanic);
            tracing::error!(%error, "on_error panicked while reporting a panic");
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    /// Callbacks with every default.
    struct Defaults;

    #[async_trait::async_trait]
    impl Callbacks for Defaults {}

    /// Other callbacks (whose `on_write_completed` could wrap a [`Defaults`]').
    struct Other;

    #[async_trait::async_trait]
    impl Callbacks for Other {}

    fn invoker(callbacks_type: Option<TypeId>) -> Invoker {
        let counters = Arc::new(Counters::new(Metrics::register(&[])));
        Invoker::new(Box::new(Defaults), callbacks_type, counters)
    }

    /// A call of `on_write_completed` watched as the driver watches it; `default_of` runs as the
    /// trait's default for that type would, if set.
    fn call(invoker: &Invoker, default_of: Option<fn()>) -> bool {
        if invoker.skips_write_completed() {
            return true;
        }
        if let Some(default) = default_of {
            default();
        }
        invoker.learn_write_completed();
        false
    }

    #[test]
    fn write_completions_are_skipped_once_the_callbacks_own_default_ran() {
        let invoker = invoker(Some(TypeId::of::<Defaults>()));
        assert!(!call(
            &invoker,
            Some(default_write_completed_ran::<Defaults>)
        ));
        assert!(call(&invoker, None), "learned: the default");
        assert!(call(&invoker, None));
    }

    #[test]
    fn write_completions_go_on_where_another_types_default_or_none_ran() {
        // Callbacks that pass the event on to others which keep the default.
        let wrapping = invoker(Some(TypeId::of::<Other>()));
        assert!(!call(
            &wrapping,
            Some(default_write_completed_ran::<Defaults>)
        ));
        // Learned for good: a default of its own type cannot run later.
        for _ in 0..3 {
            assert!(!call(&wrapping, Some(default_write_completed_ran::<Other>)));
        }

        // Callbacks of their own, after another server's default ran on this thread.
        default_write_completed_ran::<Defaults>();
        let own = invoker(Some(TypeId::of::<Defaults>()));
        assert!(!call(&own, None), "a note left from before the call");
        assert!(!call(&own, Some(default_write_completed_ran::<Defaults>)));

        // An `Arc` of callbacks that keep the default, which passes the call on and does
        // nothing else.
        let shared = invoker(Some(TypeId::of::<Arc<Defaults>>()));
        let passed_on = || {
            default_write_completed_ran::<Defaults>();
            default_write_completed_passed_on::<Defaults, Arc<Defaults>>();
        };
        assert!(!call(&shared, Some(passed_on)));
        assert!(call(&shared, None), "learned: as good as the default");
        // One whose inner callbacks did not run their default in the call (an `async fn` of
        // their own runs when polled, after the `Arc`'s look).
        let shared = invoker(Some(TypeId::of::<Arc<Other>>()));
        let passed_on = || {
            default_write_completed_passed_on::<Other, Arc<Other>>();
            default_write_completed_ran::<Defaults>();
        };
        assert!(!call(&shared, Some(passed_on)));
        assert!(!call(&shared, None));

        // The frame layer's callbacks (no type: they pass every event on).
        let framed = invoker(None);
        default_write_completed_ran::<Defaults>();
        assert!(!call(
            &framed,
            Some(default_write_completed_ran::<Defaults>)
        ));
        assert!(!call(&framed, None));
    }
}
