//! Calling the application's callbacks: a panic is caught and reported, never unwound into the
//! engine.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
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
}

impl fmt::Debug for Invoker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invoker").finish_non_exhaustive()
    }
}

impl Invoker {
    pub(crate) fn new(callbacks: Box<dyn Callbacks>, counters: Arc<Counters>) -> Self {
        Invoker {
            callbacks,
            counters,
        }
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
