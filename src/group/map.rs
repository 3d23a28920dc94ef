//! Groups by key: the subscribers of each topic, the members of each room.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::{ConnectionGroup, FullQueuePolicy, GroupInner};
use crate::connection::Connection;
use crate::ids::ConnectionId;

/// [`ConnectionGroup`]s by key (a topic, a room, a channel name), with no empty group kept: a
/// key is there while its group has members. Cheap to clone (every clone is the same map),
/// `Send + Sync`.
///
/// **Empty groups go at once.** A key is dropped as soon as its group's last member leaves:
/// by [`leave`](GroupMap::leave), and also when that member's connection starts closing, on the
/// connection's own task, before its
/// [`on_connection_closure`](crate::Callbacks::on_connection_closure) (members leave their
/// groups by themselves, see [`ConnectionGroup`]). So the map holds only keys with members: it
/// does not grow with keys that were used once, and the application needs no cleanup of its
/// own.
///
/// Each group is a [`ConnectionGroup`] with the map's [`FullQueuePolicy`]: broadcast to a key's group
/// with [`get`](GroupMap::get) and the group's methods (bytes, or items through each member's
/// codec with [`broadcast_item`](ConnectionGroup::broadcast_item)). Join through the map: a
/// group taken with `get` and kept is dropped from the map when it empties, and a member
/// inserted into it directly then is not in the map.
///
/// ```
/// use switchboard::tokio_util::codec::LinesCodec;
/// use switchboard::{Connection, GroupMap};
///
/// fn subscribe(topics: &GroupMap<String>, connection: &Connection, topic: &str) {
///     topics.join(topic.to_owned(), connection);
/// }
///
/// /// How many subscribers got the line.
/// fn publish(topics: &GroupMap<String>, topic: &str, message: &str) -> usize {
///     let line = format!("{topic}: {message}");
///     topics
///         .get(topic)
///         .map_or(0, |group| group.broadcast_item::<LinesCodec, _>(line.as_str()).sent())
/// }
/// ```
pub struct GroupMap<K> {
    inner: Arc<MapInner<K>>,
}

struct MapInner<K> {
    groups: Mutex<HashMap<K, ConnectionGroup>>,
    when_full: FullQueuePolicy,
}

impl<K> MapInner<K> {
    fn groups(&self) -> MutexGuard<'_, HashMap<K, ConnectionGroup>> {
        // No code that can panic runs under this lock; recover from poison anyway.
        self.groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<K: Eq + Hash> MapInner<K> {
    /// Drops `key` if its group is still `group` and still empty. Lock order: the map, then a
    /// group's members (as [`GroupMap::join`] takes them); a group tells the map it emptied
    /// without holding its own lock.
    fn drop_if_empty(&self, key: &K, group: &GroupInner) {
        let mut groups = self.groups();
        if groups
            .get(key)
            .is_some_and(|kept| kept.is(group) && group.is_empty())
        {
            groups.remove(key);
        }
    }
}

impl<K: Eq + Hash + Clone + Send + Sync + 'static> GroupMap<K> {
    /// An empty map whose groups skip members with a full queue ([`FullQueuePolicy::Skip`]).
    pub fn new() -> Self {
        GroupMap::with_when_full(FullQueuePolicy::default())
    }

    /// An empty map whose groups treat members with a full queue as `when_full` says.
    pub fn with_when_full(when_full: FullQueuePolicy) -> Self {
        GroupMap {
            inner: Arc::new(MapInner {
                groups: Mutex::default(),
                when_full,
            }),
        }
    }

    /// What the groups' broadcasts do to a member whose queue is full.
    pub fn when_full(&self) -> FullQueuePolicy {
        self.inner.when_full
    }

    /// Adds `connection` to `key`'s group, made if there is none; as
    /// [`ConnectionGroup::insert`]: `true` if it was added, `false` if it is a member already
    /// or it is closing (then no empty group is left behind).
    pub fn join(&self, key: K, connection: &Connection) -> bool {
        let mut groups = self.inner.groups();
        let group = match groups.get(&key) {
            Some(group) => group.clone(),
            None => {
                let map = Arc::downgrade(&self.inner);
                let group = ConnectionGroup::of_map(
                    self.inner.when_full,
                    Box::new(emptied(map, key.clone())),
                );
                groups.insert(key.clone(), group.clone());
                group
            }
        };
        let joined = group.insert(connection);
        if !joined && group.is_empty() {
            groups.remove(&key);
        }
        joined
    }

    /// Removes member `id` from `key`'s group, and the key if that empties it; `true` if it was
    /// a member.
    pub fn leave<Q>(&self, key: &Q, id: ConnectionId) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // Not under the map's lock: the group tells the map if it is emptied.
        self.get(key).is_some_and(|group| group.remove(id))
    }

    /// `key`'s group (a clone: the same group), if it has members.
    pub fn get<Q>(&self, key: &Q) -> Option<ConnectionGroup>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.groups().get(key).cloned()
    }

    /// Whether `key` has a group (with members).
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.groups().contains_key(key)
    }

    /// The keys with groups now, in no particular order.
    pub fn keys(&self) -> Vec<K> {
        self.inner.groups().keys().cloned().collect()
    }

    /// How many keys have groups.
    pub fn len(&self) -> usize {
        self.inner.groups().len()
    }

    /// Whether no key has a group.
    pub fn is_empty(&self) -> bool {
        self.inner.groups().is_empty()
    }
}

/// What `key`'s group calls when a leave empties it: drops the key from the map, if the map is
/// still there.
fn emptied<K: Eq + Hash + Send + Sync + 'static>(
    map: Weak<MapInner<K>>,
    key: K,
) -> impl Fn(&GroupInner) + Send + Sync {
    move |group| {
        if let Some(map) = map.upgrade() {
            map.drop_if_empty(&key, group);
        }
    }
}

impl<K: Eq + Hash + Clone + Send + Sync + 'static> Default for GroupMap<K> {
    fn default() -> Self {
        GroupMap::new()
    }
}

impl<K> Clone for GroupMap<K> {
    fn clone(&self) -> Self {
        GroupMap {
            inner: self.inner.clone(),
        }
    }
}

impl<K> fmt::Debug for GroupMap<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupMap")
            .field("len", &self.inner.groups().len())
            .field("when_full", &self.inner.when_full)
            .finish()
    }
}
