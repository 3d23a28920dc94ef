//! What a connection tells, when it starts closing, to whoever asked: the hook an add-on (a
//! connection group) uses to forget a connection without the engine knowing what it is.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use once_cell::race::OnceBox;

use super::Shared;

/// Told once when a connection it was [registered](ClosingHooks::register) with starts closing
/// (or ends before it was established), on the connection's task, after the connection was
/// sealed: no weak handle is upgraded any more and no group may take it in.
pub(crate) trait ClosingHook: Send + Sync {
    fn connection_closing(&self, connection: &Arc<Shared>);
}

/// The hooks of one connection, made by the first registration (most connections have none).
/// Held weakly: a hook whose owner was dropped is forgotten.
#[derive(Default)]
pub(crate) struct ClosingHooks(OnceBox<Mutex<Registered>>);

type Registered = Vec<Weak<dyn ClosingHook>>;

impl ClosingHooks {
    fn list(list: &Mutex<Registered>) -> MutexGuard<'_, Registered> {
        list.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `hook`, once however often it is registered. Hooks dropped meanwhile are
    /// forgotten here, so the list stays as long as the number of hooks alive.
    ///
    /// A registration that races with the connection's closing is either in the list the
    /// closing takes, or made after the connection was sealed: whoever registers checks the
    /// seal after registering (as [`ConnectionGroup::insert`](crate::ConnectionGroup::insert)
    /// does).
    pub(crate) fn register(&self, hook: Weak<dyn ClosingHook>) {
        let mut list = Self::list(self.0.get_or_init(Box::default));
        list.retain(|registered| registered.strong_count() > 0);
        if !list
            .iter()
            .any(|registered| Weak::ptr_eq(registered, &hook))
        {
            list.push(hook);
        }
    }

    /// Tells every hook registered that `connection` is closing, and forgets them.
    pub(crate) fn run(&self, connection: &Arc<Shared>) {
        let Some(list) = self.0.get() else {
            return;
        };
        let registered = std::mem::take(&mut *Self::list(list));
        for hook in registered.iter().filter_map(Weak::upgrade) {
            hook.connection_closing(connection);
        }
    }

    /// How many hooks are registered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.get().map_or(0, |list| Self::list(list).len())
    }
}

impl fmt::Debug for ClosingHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClosingHooks").finish_non_exhaustive()
    }
}
