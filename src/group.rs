//! Connection groups: weak members that leave by themselves when they close, and a broadcast
//! that never waits for a slow member.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Encoder;

use crate::codec::{self, Queued};
use crate::connection::closing_hooks::ClosingHook;
use crate::connection::weak::WeakConnection;
use crate::connection::{Connection, Shared};
use crate::error::Error;
use crate::ids::ConnectionId;

/// What a broadcast does to a member whose write queue is full (holds the
/// [write queue limit](crate::ServerBuilder::write_queue_limit)): a peer that reads more slowly
/// than the group talks.
///
/// Whatever the choice, the broadcast itself never waits: the member gets
/// [`Delivery::QueueFull`] for that message, and the others are served at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum FullQueuePolicy {
    /// The member misses this message and stays in the group (it gets the next ones once its
    /// queue has room). Right when messages may be lost (a status feed, the latest price).
    #[default]
    Skip,
    /// The member is closed gracefully ([`Connection::close`]): what it has queued is still
    /// sent, then FIN, so it has every message up to a point and nothing after, never one
    /// missing in between. Right for a conversation (a chat), where a gap would mislead.
    Close,
    /// The member is reset at once ([`Connection::abort`]), its queue dropped: the slow peer
    /// costs no more memory or time.
    Abort,
}

/// What happened to one member in a broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Delivery {
    /// Queued for the member (a [`Bytes`] clone: the data itself is shared, not copied).
    Sent,
    /// The member's write queue was full: not queued, and the group's [`FullQueuePolicy`] was applied.
    QueueFull,
    /// The member is closing or closed (or shut its write side down), so nothing was queued.
    /// A member that closes leaves its groups by itself; until its connection's task has taken
    /// the close, a broadcast can still meet it.
    Closed,
    /// An item broadcast ([`broadcast_item`](ConnectionGroup::broadcast_item)) met a member that
    /// is not framed with the codec named (a connection of a server without frames, or with
    /// another codec): nothing was queued.
    NotFramed,
    /// The member's encoder refused the item
    /// ([`broadcast_item`](ConnectionGroup::broadcast_item)): nothing was queued.
    EncodeFailed,
}

/// What a broadcast did, member by member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BroadcastReport {
    deliveries: Vec<(ConnectionId, Delivery)>,
    sent: usize,
    high: usize,
    queue_full: usize,
    closed: usize,
    not_encoded: usize,
}

impl BroadcastReport {
    fn with_capacity(members: usize) -> Self {
        BroadcastReport {
            deliveries: Vec::with_capacity(members),
            ..BroadcastReport::default()
        }
    }

    fn push(&mut self, id: ConnectionId, delivery: Delivery) {
        match delivery {
            Delivery::Sent => self.sent += 1,
            Delivery::QueueFull => self.queue_full += 1,
            Delivery::Closed => self.closed += 1,
            Delivery::NotFramed | Delivery::EncodeFailed => self.not_encoded += 1,
        }
        self.deliveries.push((id, delivery));
    }

    /// Each member the broadcast was for, with what happened to it (in no particular order).
    pub fn deliveries(&self) -> &[(ConnectionId, Delivery)] {
        &self.deliveries
    }

    /// What happened to member `id`; `None` if the broadcast was not for it (not a member, or
    /// the one left out by [`broadcast_except`](ConnectionGroup::broadcast_except)).
    pub fn delivery(&self, id: ConnectionId) -> Option<Delivery> {
        self.deliveries
            .iter()
            .find(|(member, _)| *member == id)
            .map(|(_, delivery)| *delivery)
    }

    /// The members that got `delivery`.
    pub fn with(&self, delivery: Delivery) -> impl Iterator<Item = ConnectionId> + '_ {
        self.deliveries
            .iter()
            .filter(move |(_, got)| *got == delivery)
            .map(|(id, _)| *id)
    }

    /// How many members it was queued for.
    pub fn sent(&self) -> usize {
        self.sent
    }

    /// How many of the members it was queued for had a write queue at or above its high
    /// watermark after it: a sender that paces itself to its slowest readers waits for
    /// [`ConnectionGroup::writable`] before it goes on.
    pub fn high(&self) -> usize {
        self.high
    }

    /// How many members had a full queue.
    pub fn queue_full(&self) -> usize {
        self.queue_full
    }

    /// How many members were closing or closed.
    pub fn closed(&self) -> usize {
        self.closed
    }

    /// How many members an item broadcast could not encode the item for
    /// ([`Delivery::NotFramed`] and [`Delivery::EncodeFailed`]).
    pub fn not_encoded(&self) -> usize {
        self.not_encoded
    }
}

/// A set of connections to talk to together (a chat room, the subscribers of a topic), keyed
/// by [`ConnectionId`]. Cheap to clone (every clone is the same group), `Send + Sync`.
///
/// **Members do not stay open because of the group.** Like a [`WeakConnection`], the group's
/// hold on a member is not a handle the lifetime rule counts, so the rule goes on as if the
/// group did not exist: a member that half-closes and is no longer read from, or that the
/// application has finished with, closes by itself.
///
/// **Members leave by themselves.** A member leaves every group when its connection starts
/// closing, whatever the reason (`close()`, `abort()`, the lifetime rule, the peer's reset, an
/// error, a timeout, a shutdown), on the connection's own task, and always before its
/// [`on_connection_closure`](crate::Callbacks::on_connection_closure): from that callback on,
/// [`contains`](ConnectionGroup::contains) is `false` and [`len`](ConnectionGroup::len) no
/// longer counts it, with no code of the application's. Earlier still, from the moment the
/// connection is closing or has decided to end (`close()` or `abort()` called, a reset or a
/// fatal error seen), it takes no more data: a broadcast reports it
/// [`Closed`](Delivery::Closed) and [`get`](ConnectionGroup::get) returns `None`, even while
/// it is still counted (in [`on_connection_reset`](crate::Callbacks::on_connection_reset), or
/// between a `close()` and its task's next turn).
///
/// **A broadcast never waits.** It queues one shared buffer for every member and returns what
/// happened to each ([`BroadcastReport`]); a member whose queue is full is dealt with as the
/// group's [`FullQueuePolicy`] says. Broadcasts to one group run one at a time, so every member gets
/// them in the same order.
///
/// **Items too.** On a framed server (see [`codec`](crate::codec)),
/// [`broadcast_item`](ConnectionGroup::broadcast_item) sends an item through each member's own
/// codec, and [`broadcast_encoded`](ConnectionGroup::broadcast_encoded) encodes it once for
/// every member that has the same codec: no encoding by hand. [`GroupMap`](crate::GroupMap)
/// keeps a group per key (the subscribers of each topic) and drops the groups that empty.
///
/// **One order.** For each member, a broadcast is posted like any write: everything posted to
/// one connection, by any path (its own writes, a frame layer's fed or sent items, a goodbye,
/// broadcasts of bytes or items, from its callbacks or from other tasks), reaches the peer in
/// the order it was posted. A reply a member's `on_frame` fed before a broadcast that reaches
/// it goes out first, even though it was not flushed yet (guarantee 15 in docs/guarantees.md).
///
/// Connection ids are unique within one server: keep one server's connections in a group.
///
/// ```
/// use std::net::SocketAddr;
/// use switchboard::{async_trait, BytesMut, Callbacks, Connection, ConnectionGroup, FullQueuePolicy};
///
/// struct Room {
///     everyone: ConnectionGroup,
/// }
///
/// #[async_trait]
/// impl Callbacks for Room {
///     async fn on_connection_established(&self, connection: &Connection, _: &SocketAddr) {
///         self.everyone.insert(connection);
///         connection.read();
///     }
///
///     async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
///         // Everyone else gets the same bytes: one buffer, no copy per member.
///         let report = self.everyone.broadcast_except(data.freeze(), connection.id());
///         if report.queue_full() > 0 {
///             eprintln!("{} slow members closed", report.queue_full());
///         }
///         connection.read();
///     }
///     // No `on_connection_closure` needed: members leave by themselves.
/// }
///
/// let room = Room { everyone: ConnectionGroup::with_when_full(FullQueuePolicy::Close) };
/// ```
#[derive(Clone, Default)]
pub struct ConnectionGroup {
    inner: Arc<GroupInner>,
}

/// A group's state, shared by its clones and known (weakly) to its members' connections.
///
/// Members are held by their shared state, not by a counted handle: the lifetime rule does not
/// see the group. That the state is held strongly costs nothing after a member closes, as it
/// leaves then (only a runtime dropped with its connections' tasks unfinished leaves members
/// behind, until the group is dropped), and spares a broadcast the upgrade of a weak pointer per
/// member.
#[derive(Default)]
pub(crate) struct GroupInner {
    members: Mutex<HashMap<ConnectionId, Arc<Shared>>>,
    when_full: FullQueuePolicy,
    /// A [`GroupMap`](crate::GroupMap)'s group: told, without the members' lock, when a member's
    /// leave (its close, or a [`remove`](ConnectionGroup::remove)) leaves the group empty.
    emptied: Option<Emptied>,
}

/// What a [`GroupMap`](crate::GroupMap)'s group calls when a leave empties it.
pub(crate) type Emptied = Box<dyn Fn(&GroupInner) + Send + Sync>;

impl GroupInner {
    fn members(&self) -> MutexGuard<'_, HashMap<ConnectionId, Arc<Shared>>> {
        // No code that can panic runs under this lock; recover from poison anyway.
        self.members
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Removes member `id` if it is the connection `shared` (and not another server's
    /// connection with the same number); `true` if that left the group empty.
    fn remove_member(&self, id: ConnectionId, shared: &Arc<Shared>) -> bool {
        let mut members = self.members();
        if members
            .get(&id)
            .is_some_and(|member| Arc::ptr_eq(member, shared))
        {
            members.remove(&id);
            return members.is_empty();
        }
        false
    }

    /// Tells the group's map, if it has one, that a leave emptied it.
    fn emptied(&self) {
        if let Some(emptied) = &self.emptied {
            emptied(self);
        }
    }

    /// Whether there are no members.
    pub(crate) fn is_empty(&self) -> bool {
        self.members().is_empty()
    }
}

impl ConnectionGroup {
    /// An empty group whose broadcasts skip members with a full queue ([`FullQueuePolicy::Skip`]).
    pub fn new() -> Self {
        ConnectionGroup::default()
    }

    /// An empty group whose broadcasts treat members with a full queue as `when_full` says.
    pub fn with_when_full(when_full: FullQueuePolicy) -> Self {
        ConnectionGroup {
            inner: Arc::new(GroupInner {
                members: Mutex::default(),
                when_full,
                emptied: None,
            }),
        }
    }

    /// A [`GroupMap`](crate::GroupMap)'s group, which tells `emptied` when a leave empties it.
    pub(crate) fn of_map(when_full: FullQueuePolicy, emptied: Emptied) -> Self {
        ConnectionGroup {
            inner: Arc::new(GroupInner {
                members: Mutex::default(),
                when_full,
                emptied: Some(emptied),
            }),
        }
    }

    /// Whether `inner` is this group's state.
    pub(crate) fn is(&self, inner: &GroupInner) -> bool {
        std::ptr::eq(Arc::as_ptr(&self.inner), inner)
    }

    /// What broadcasts do to a member whose queue is full.
    pub fn when_full(&self) -> FullQueuePolicy {
        self.inner.when_full
    }

    /// Adds `connection`, without keeping it open; `true` if it was added, `false` if it is a
    /// member already or it is closing (or not yet established: a handle from
    /// [`Server::connect`](crate::Server::connect) before its
    /// [`on_connection_established`](crate::Callbacks::on_connection_established)).
    pub fn insert(&self, connection: &Connection) -> bool {
        let shared = connection.shared();
        if shared.mailbox.is_sealed() || !self.add(shared) {
            return false;
        }
        let hook: Weak<GroupInner> = Arc::downgrade(&self.inner);
        shared.closing_hooks.register(hook as Weak<dyn ClosingHook>);
        self.kept(shared)
    }

    /// The first step of an insert: into the members, unless there already.
    fn add(&self, shared: &Arc<Shared>) -> bool {
        let mut members = self.inner.members();
        if members.contains_key(&shared.id) {
            return false;
        }
        members.insert(shared.id, shared.clone());
        true
    }

    /// The last step of an insert, after the group registered its closing hook with the
    /// connection: whether the member stays. The connection's task seals the connection before
    /// it runs its closing hooks, so if the seal is not visible here, the hooks it runs include
    /// this group's. If it is, they may have run before the registration: the insert is undone.
    fn kept(&self, shared: &Arc<Shared>) -> bool {
        if shared.mailbox.is_sealed() {
            self.inner.remove_member(shared.id, shared);
            return false;
        }
        true
    }

    /// Removes member `id`; `true` if it was one.
    pub fn remove(&self, id: ConnectionId) -> bool {
        let (removed, empty) = {
            let mut members = self.inner.members();
            (members.remove(&id).is_some(), members.is_empty())
        };
        if removed && empty {
            self.inner.emptied();
        }
        removed
    }

    /// Whether `id` is a member.
    pub fn contains(&self, id: ConnectionId) -> bool {
        self.inner.members().contains_key(&id)
    }

    /// A counted handle to member `id` (see [`WeakConnection::upgrade`]); `None` if it is not a
    /// member or is closing.
    #[must_use = "the handle keeps the connection open only while it is held"]
    pub fn get(&self, id: ConnectionId) -> Option<Connection> {
        let member = self.inner.members().get(&id)?.clone();
        member
            .mailbox
            .try_upgrade()
            .then(|| Connection::counted(member))
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.inner.members().len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.inner.members().is_empty()
    }

    /// Weak handles to the members now, in order of their ids.
    pub fn members(&self) -> Vec<WeakConnection> {
        let mut members: Vec<WeakConnection> = self
            .inner
            .members()
            .values()
            .map(WeakConnection::new)
            .collect();
        members.sort_unstable_by_key(WeakConnection::id);
        members
    }

    /// Waits until no member's write queue is high (at or above its high watermark, until it
    /// drains to its low one); members closing or closed do not count. A sender that broadcasts
    /// faster than members read waits here when a [`BroadcastReport::high`] says so, and so is
    /// paced by its slowest readers instead of getting them closed as slow consumers. A member
    /// that never reads keeps this waiting until it is closed: bound the wait (a timeout, or
    /// the server's [`slow_consumer_timeout`](crate::ServerBuilder::slow_consumer_timeout)).
    ///
    /// ```
    /// # async fn example(room: &switchboard::ConnectionGroup, sender: &switchboard::Connection) {
    /// use std::time::Duration;
    ///
    /// let report = room.broadcast_except("a line\n", sender.id());
    /// if report.high() > 0 {
    ///     // Read no more from the sender until the room has caught up (or a second passed).
    ///     let _ = tokio::time::timeout(Duration::from_secs(1), room.writable()).await;
    /// }
    /// sender.read();
    /// # }
    /// ```
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits.
    pub async fn writable(&self) {
        let members: Vec<Arc<Shared>> = self.inner.members().values().cloned().collect();
        for member in members {
            let mailbox = &member.mailbox;
            loop {
                let notified = mailbox.room().notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                if !matches!(mailbox.has_room(), Ok(false)) {
                    break;
                }
                notified.await;
            }
        }
    }

    /// Queues `data` for every member, without waiting for any; see [`BroadcastReport`] for
    /// what happened to each, and [`FullQueuePolicy`] for members whose queue is full. Each member
    /// gets a clone of the same [`Bytes`], which its
    /// [`on_write_completed`](crate::Callbacks::on_write_completed) gets back when sent.
    ///
    /// For each member the broadcast is a write like any other, in its one order (see
    /// [`Connection::write`]): it reaches the member after everything posted to it before,
    /// a frame layer's fed and unflushed items included.
    pub fn broadcast(&self, data: impl Into<Bytes>) -> BroadcastReport {
        self.send(data.into(), None)
    }

    /// [`broadcast`](ConnectionGroup::broadcast) to every member but `except` (typically the
    /// sender, so that it does not hear its own message).
    pub fn broadcast_except(
        &self,
        data: impl Into<Bytes>,
        except: ConnectionId,
    ) -> BroadcastReport {
        self.send(data.into(), Some(except))
    }

    /// Queues `buffers`, in order, for every member, as many
    /// [`broadcast`](ConnectionGroup::broadcast)s would, but posting to each member once for
    /// all of them: one lock of its queue and one wake-up per member, not one per buffer. Worth
    /// it whenever there is more than one buffer to send at once (the lines of one read in a
    /// chat room).
    ///
    /// A member gets the buffers from the first on, in order, and no gap: if its queue fills
    /// (holds the [write queue limit](crate::ServerBuilder::write_queue_limit)) partway, the
    /// rest is not queued for it, it is reported [`Delivery::QueueFull`] and the group's
    /// [`FullQueuePolicy`] applies. [`Delivery::Sent`] means every buffer was queued, and
    /// [`BroadcastReport::high`] counts the members at or above their high watermark after
    /// the last.
    ///
    /// ```
    /// use switchboard::{Bytes, ConnectionGroup, ConnectionId};
    ///
    /// fn relay(room: &ConnectionGroup, lines: &[Bytes], from: ConnectionId) -> usize {
    ///     room.broadcast_batch_except(lines, from).sent()
    /// }
    /// ```
    pub fn broadcast_batch(&self, buffers: &[Bytes]) -> BroadcastReport {
        self.send_batch(buffers, None)
    }

    /// [`broadcast_batch`](ConnectionGroup::broadcast_batch) to every member but `except`.
    pub fn broadcast_batch_except(
        &self,
        buffers: &[Bytes],
        except: ConnectionId,
    ) -> BroadcastReport {
        self.send_batch(buffers, Some(except))
    }

    /// Queues `item` for every member framed with codec `C`, each encoding it with its own
    /// codec (the one [`new_codec`](crate::codec::FrameHandler::new_codec) made for it), so a
    /// codec with per-connection state (a sequence number, a compression context) encodes it
    /// as that connection's next item. Otherwise as [`broadcast`](ConnectionGroup::broadcast):
    /// it never waits, reports each member ([`BroadcastReport`]), applies the group's
    /// [`FullQueuePolicy`], and keeps each member's one order (the item goes out after everything
    /// posted to the member before, fed items included). A member not framed with `C` is reported [`Delivery::NotFramed`], one whose
    /// encoder fails [`Delivery::EncodeFailed`]; neither gets anything.
    ///
    /// Each member encodes a clone of `item` (borrow it, as `&str` for `LinesCodec`, where the
    /// codec takes references). For a codec whose bytes do not depend on the connection,
    /// [`broadcast_encoded`](ConnectionGroup::broadcast_encoded) encodes once for all.
    ///
    /// ```
    /// use switchboard::tokio_util::codec::LinesCodec;
    /// use switchboard::ConnectionGroup;
    ///
    /// fn publish(topic: &ConnectionGroup, line: &str) -> usize {
    ///     topic.broadcast_item::<LinesCodec, _>(line).sent()
    /// }
    /// ```
    pub fn broadcast_item<C, I>(&self, item: I) -> BroadcastReport
    where
        C: Encoder<I> + Send + 'static,
        I: Clone,
    {
        self.send_with(None, |member| {
            codec::queue_item::<C, I>(member, item.clone())
        })
    }

    /// [`broadcast_item`](ConnectionGroup::broadcast_item) to every member but `except`.
    pub fn broadcast_item_except<C, I>(&self, item: I, except: ConnectionId) -> BroadcastReport
    where
        C: Encoder<I> + Send + 'static,
        I: Clone,
    {
        self.send_with(Some(except), |member| {
            codec::queue_item::<C, I>(member, item.clone())
        })
    }

    /// Encodes `item` once, with `encoder`, and queues the same [`Bytes`] for every member
    /// framed with a codec of the same type `C` (others are reported [`Delivery::NotFramed`]);
    /// otherwise as [`broadcast_item`](ConnectionGroup::broadcast_item). For a codec whose bytes
    /// do not depend on the connection (tokio-util's `LinesCodec`, `BytesCodec`, or a
    /// `LengthDelimitedCodec` with the members' settings): one encoding and one buffer for the
    /// whole group, as [`broadcast`](ConnectionGroup::broadcast) has, without encoding by hand.
    ///
    /// ```
    /// use switchboard::tokio_util::codec::LinesCodec;
    /// use switchboard::ConnectionGroup;
    ///
    /// # fn example(room: &ConnectionGroup) {
    /// match room.broadcast_encoded(&mut LinesCodec::new(), "the server restarts at noon") {
    ///     Ok(report) => println!("{} members got it", report.sent()),
    ///     Err(error) => eprintln!("not sent: {error}"),
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    /// The encoder's error; nothing was queued for anyone.
    pub fn broadcast_encoded<C, I>(
        &self,
        encoder: &mut C,
        item: I,
    ) -> Result<BroadcastReport, <C as Encoder<I>>::Error>
    where
        C: Encoder<I> + Send + 'static,
    {
        self.send_encoded(encoder, item, None)
    }

    /// [`broadcast_encoded`](ConnectionGroup::broadcast_encoded) to every member but `except`.
    ///
    /// # Errors
    /// As for [`broadcast_encoded`](ConnectionGroup::broadcast_encoded).
    pub fn broadcast_encoded_except<C, I>(
        &self,
        encoder: &mut C,
        item: I,
        except: ConnectionId,
    ) -> Result<BroadcastReport, <C as Encoder<I>>::Error>
    where
        C: Encoder<I> + Send + 'static,
    {
        self.send_encoded(encoder, item, Some(except))
    }

    fn send_encoded<C, I>(
        &self,
        encoder: &mut C,
        item: I,
        except: Option<ConnectionId>,
    ) -> Result<BroadcastReport, <C as Encoder<I>>::Error>
    where
        C: Encoder<I> + Send + 'static,
    {
        let mut encoded = BytesMut::new();
        encoder.encode(item, &mut encoded)?;
        let data = encoded.freeze();
        Ok(self.send_with(except, |member| {
            if codec::is_framed_with::<C>(member) {
                written::<()>(member, data.clone())
            } else {
                Queued::NotFramed
            }
        }))
    }

    fn send(&self, data: Bytes, except: Option<ConnectionId>) -> BroadcastReport {
        self.send_with(except, |member| written::<()>(member, data.clone()))
    }

    fn send_batch(&self, buffers: &[Bytes], except: Option<ConnectionId>) -> BroadcastReport {
        self.send_with(except, |member| match member.mailbox.write_batch(buffers) {
            Ok(high) => Queued::<()>::Sent { high },
            Err((Error::WriteQueueFull { .. }, _)) => Queued::Full,
            Err(_) => Queued::Closed,
        })
    }

    /// Runs `deliver` for every member but `except` that is not closing, and reports what it
    /// did.
    fn send_with<E>(
        &self,
        except: Option<ConnectionId>,
        mut deliver: impl FnMut(&Arc<Shared>) -> Queued<E>,
    ) -> BroadcastReport {
        // Held throughout: broadcasts to one group reach every member in the same order. Only
        // non-blocking work runs under it (each member's write is a short lock of its inbox, an
        // item's encoding a short lock of its frame state).
        let members = self.inner.members();
        let mut report = BroadcastReport::with_capacity(members.len());
        for (&id, member) in members.iter() {
            if except == Some(id) {
                continue;
            }
            // Written to directly, as `Connection::write` does, without counting a handle for
            // the moment: the group holds the member's state, and a write the connection's task
            // takes while closing is still sent before its FIN.
            let delivery = if member.mailbox.is_sealed() {
                Delivery::Closed
            } else {
                match deliver(member) {
                    Queued::Sent { high } => {
                        report.high += usize::from(high);
                        Delivery::Sent
                    }
                    Queued::Full => {
                        self.treat_full(member);
                        Delivery::QueueFull
                    }
                    Queued::Closed => Delivery::Closed,
                    Queued::NotFramed => Delivery::NotFramed,
                    Queued::Encode(_) => Delivery::EncodeFailed,
                }
            };
            report.push(id, delivery);
        }
        report
    }
}

/// Queues `data` for `member`, as [`Connection::write`] does.
fn written<E>(member: &Shared, data: Bytes) -> Queued<E> {
    match member.mailbox.write_is_high(data) {
        Ok(high) => Queued::Sent { high },
        Err((Error::WriteQueueFull { .. }, _)) => Queued::Full,
        Err(_) => Queued::Closed,
    }
}

impl ConnectionGroup {
    /// Applies the group's [`FullQueuePolicy`] to `member`, whose queue is full.
    fn treat_full(&self, member: &Arc<Shared>) {
        let close = match self.inner.when_full {
            FullQueuePolicy::Skip => return,
            FullQueuePolicy::Close => Connection::close,
            FullQueuePolicy::Abort => Connection::abort,
        };
        // Through a handle, as the application would: a slow member is rare.
        if member.mailbox.try_upgrade() {
            close(&Connection::counted(member.clone()));
        }
    }
}

impl fmt::Debug for ConnectionGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionGroup")
            .field("len", &self.len())
            .field("when_full", &self.inner.when_full)
            .finish()
    }
}

impl ClosingHook for GroupInner {
    /// A member leaves when its connection starts closing.
    fn connection_closing(&self, connection: &Arc<Shared>) {
        if self.remove_member(connection.id, connection) {
            self.emptied();
        }
    }
}

impl fmt::Debug for GroupInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupInner")
            .field("when_full", &self.when_full)
            .finish_non_exhaustive()
    }
}

mod map;

pub use map::GroupMap;

#[cfg(test)]
mod tests;
