//! Per-connection user data slots (the C++ framework's `RequestUserDataSlot`).

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

static NEXT_LAYOUT: AtomicU64 = AtomicU64::new(1);

/// A typed key into every connection's [`UserData`], handed out by
/// [`ServerBuilder::request_user_data_slot`](crate::ServerBuilder::request_user_data_slot) before the
/// server starts.
///
/// A slot is a small `Copy` index: access is O(1). It only fits the user data of the server whose
/// builder issued it.
pub struct Slot<T> {
    index: usize,
    layout: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Slot<T> {}

impl<T> Slot<T> {
    /// Where the slot is in each connection's user data.
    pub(crate) fn index(self) -> usize {
        self.index
    }
}

impl<T> fmt::Debug for Slot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("index", &self.index)
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

/// The set of slots one server's connections carry.
#[derive(Debug)]
pub(crate) struct UserDataLayout {
    id: u64,
    count: usize,
}

impl UserDataLayout {
    pub(crate) fn new() -> Self {
        UserDataLayout {
            id: NEXT_LAYOUT.fetch_add(1, Ordering::Relaxed),
            count: 0,
        }
    }

    pub(crate) fn request<T>(&mut self) -> Slot<T> {
        let slot = Slot {
            index: self.count,
            layout: self.id,
            _type: PhantomData,
        };
        self.count += 1;
        slot
    }
}

type Value = Box<dyn Any + Send>;

/// Per-connection storage with one value per requested [`Slot`].
///
/// Reachable from [`Connection::user_data`](crate::Connection::user_data) during the connection's
/// life, from [`Callbacks::on_pre_outgoing_connect`](crate::Callbacks::on_pre_outgoing_connect)
/// before an outgoing connect, and handed back by value in
/// [`Callbacks::on_socket_released`](crate::Callbacks::on_socket_released) for final clean-up.
/// Every method takes `&self`; each slot has its own lock, held only for the call.
///
/// ```
/// use switchboard::Server;
///
/// let mut builder = Server::builder();
/// let name = builder.request_user_data_slot::<String>();
/// let requests = builder.request_user_data_slot::<u64>();
/// # let _ = (name, requests);
/// // Later, in a callback:
/// // connection.user_data().set(name, "alice".to_string());
/// // connection.user_data().with(requests, |n| *n.get_or_insert(0) += 1);
/// ```
pub struct UserData {
    layout: u64,
    slots: Box<[Mutex<Option<Value>>]>,
}

impl UserData {
    pub(crate) fn new(layout: &UserDataLayout) -> Self {
        UserData {
            layout: layout.id,
            slots: (0..layout.count).map(|_| Mutex::new(None)).collect(),
        }
    }

    fn lock<T>(&self, slot: Slot<T>) -> MutexGuard<'_, Option<Value>> {
        assert_eq!(
            slot.layout, self.layout,
            "switchboard: a user data slot was used with the user data of another server"
        );
        // A panic while the lock was held (in `with`) leaves a value that is still a whole value
        // of the slot's type, so poisoning carries no information worth failing over.
        self.slots[slot.index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores `value`, returning the previous one.
    ///
    /// # Panics
    /// If `slot` was issued by another server's builder.
    pub fn set<T: Send + 'static>(&self, slot: Slot<T>, value: T) -> Option<T> {
        let previous = self.lock(slot).replace(Box::new(value));
        previous.and_then(downcast)
    }

    /// A clone of the stored value.
    ///
    /// # Panics
    /// If `slot` was issued by another server's builder.
    pub fn get<T: Clone + Send + 'static>(&self, slot: Slot<T>) -> Option<T> {
        self.lock(slot)
            .as_ref()
            .and_then(|value| value.downcast_ref::<T>())
            .cloned()
    }

    /// Removes and returns the stored value.
    ///
    /// # Panics
    /// If `slot` was issued by another server's builder.
    pub fn take<T: Send + 'static>(&self, slot: Slot<T>) -> Option<T> {
        self.lock(slot).take().and_then(downcast)
    }

    /// Runs `f` on the slot's value in place; `f` may insert, change or remove it. The slot's lock
    /// is held while `f` runs, so `f` must not use the same slot again.
    ///
    /// # Panics
    /// If `slot` was issued by another server's builder, or if `f` panics.
    pub fn with<T: Send + 'static, R>(
        &self,
        slot: Slot<T>,
        f: impl FnOnce(&mut Option<T>) -> R,
    ) -> R {
        let mut guard = self.lock(slot);
        let mut value = guard.take().and_then(downcast::<T>);
        let result = f(&mut value);
        *guard = value.map(|v| Box::new(v) as Value);
        result
    }

    /// Runs `f` on the slot's value in place, without moving it out of its box (the frame layer's
    /// per-read access: [`with`](UserData::with) re-boxes the value on every call).
    pub(crate) fn with_value<T: Send + 'static, R>(
        &self,
        slot: Slot<T>,
        f: impl FnOnce(Option<&mut T>) -> R,
    ) -> R {
        let mut guard = self.lock(slot);
        f(guard.as_mut().and_then(|value| value.downcast_mut::<T>()))
    }

    /// The slot at `index` (the frame layer's, see `Shared::frame_slot`), if it holds a value of
    /// type `T`; only that slot's lock is taken.
    pub(crate) fn slot_holding<T: 'static>(&self, index: usize) -> Option<Slot<T>> {
        let held = self
            .slots
            .get(index)?
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .is_some_and(|value| value.is::<T>());
        held.then_some(Slot {
            index,
            layout: self.layout,
            _type: PhantomData,
        })
    }

    /// Moves every value out into a new `UserData`, leaving this one empty.
    pub(crate) fn take_all(&self) -> UserData {
        UserData {
            layout: self.layout,
            slots: self
                .slots
                .iter()
                .map(|slot| {
                    let value = slot
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .take();
                    Mutex::new(value)
                })
                .collect(),
        }
    }
}

fn downcast<T: 'static>(value: Value) -> Option<T> {
    value.downcast::<T>().ok().map(|boxed| *boxed)
}

impl fmt::Debug for UserData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserData")
            .field("slots", &self.slots.len())
            .finish()
    }
}

/// The argument given at an outgoing connect's call site, handed to
/// [`Callbacks::on_pre_outgoing_connect`](crate::Callbacks::on_pre_outgoing_connect), usually to be
/// moved into the connection's [`UserData`].
///
/// ```
/// # use switchboard::ConnectArgument;
/// let mut argument = ConnectArgument::new(42_u32);
/// assert!(argument.is::<u32>());
/// assert_eq!(argument.take::<String>(), None);
/// assert_eq!(argument.take::<u32>(), Some(42));
/// assert_eq!(argument.take::<u32>(), None);
/// ```
pub struct ConnectArgument(Option<Value>);

impl ConnectArgument {
    /// Wraps a call site's argument.
    pub fn new<T: Send + 'static>(value: T) -> Self {
        ConnectArgument(Some(Box::new(value)))
    }

    /// No argument: what a connect passes unless given one with
    /// [`ConnectBuilder::argument`](crate::ConnectBuilder::argument).
    pub fn empty() -> Self {
        ConnectArgument(None)
    }

    /// Whether the argument is there and of type `T`.
    pub fn is<T: 'static>(&self) -> bool {
        self.0.as_ref().is_some_and(|value| value.is::<T>())
    }

    /// Moves the argument out if it is of type `T`; otherwise leaves it in place.
    pub fn take<T: 'static>(&mut self) -> Option<T> {
        if self.is::<T>() {
            self.0.take().and_then(downcast)
        } else {
            None
        }
    }
}

impl fmt::Debug for ConnectArgument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectArgument")
            .field("present", &self.0.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_hold_typed_values() {
        let mut layout = UserDataLayout::new();
        let name = layout.request::<String>();
        let count = layout.request::<u32>();
        let data = UserData::new(&layout);
        assert_eq!(data.get(name), None);
        assert_eq!(data.set(name, "a".to_string()), None);
        assert_eq!(data.set(name, "b".to_string()), Some("a".to_string()));
        data.with(count, |n| *n.get_or_insert(0) += 5);
        data.with(count, |n| *n.get_or_insert(0) += 1);
        assert_eq!(data.get(count), Some(6));
        let moved = data.take_all();
        assert_eq!(data.get(name), None);
        assert_eq!(moved.take(name), Some("b".to_string()));
        assert_eq!(moved.get(count), Some(6));
    }

    #[test]
    fn a_value_is_reached_in_place_and_a_slot_found_by_index_and_type() {
        let mut layout = UserDataLayout::new();
        let name = layout.request::<String>();
        let count = layout.request::<u32>();
        let data = UserData::new(&layout);
        assert!(
            data.slot_holding::<u32>(count.index()).is_none(),
            "nothing stored yet"
        );
        assert!(data.slot_holding::<u32>(7).is_none(), "no such slot");
        data.set(count, 1);
        data.with_value(count, |n| *n.expect("stored") += 1);
        assert_eq!(data.get(count), Some(2));
        assert!(data.with_value(name, |n: Option<&mut String>| n.is_none()));
        assert!(
            data.slot_holding::<String>(count.index()).is_none(),
            "another type"
        );
        // Found while another slot is in use on this thread (`with` holds its lock).
        data.with(name, |_| {
            let found = data
                .slot_holding::<u32>(count.index())
                .expect("the slot holding a u32");
            assert_eq!(data.get(found), Some(2));
        });
    }

    #[test]
    #[should_panic(expected = "another server")]
    fn a_slot_from_another_layout_is_refused() {
        let mut first = UserDataLayout::new();
        let mut second = UserDataLayout::new();
        let _ = first.request::<u8>();
        let foreign = second.request::<u8>();
        UserData::new(&first).get(foreign);
    }
}
