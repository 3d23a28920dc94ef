//! A line of connections waiting to show they are real (a chat client's name, an HTTP request),
//! so that silent ones cannot keep real ones out: at most so many wait, the oldest is pushed out
//! when one more arrives, and each has a deadline.
//!
//! Under a flood of silent connections the line churns: each newcomer pushes out the oldest. A
//! real client, which speaks at once, leaves the line one round trip after it joined, long before
//! `capacity` newer connections can arrive and push it out.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard::{Connection, WeakConnection};
use tokio::time::Instant;

/// A connection's place in a [`WaitingLine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Place(u64);

/// Connections waiting, oldest first, each until its deadline.
pub(crate) struct WaitingLine {
    waiting: BTreeMap<Place, Waiting>,
    next: u64,
    capacity: usize,
    patience: Duration,
}

struct Waiting {
    deadline: Instant,
    connection: WeakConnection,
}

impl WaitingLine {
    /// A line of at most `capacity` (above zero) connections, each waiting at most `patience`.
    pub(crate) fn new(capacity: usize, patience: Duration) -> Self {
        WaitingLine {
            waiting: BTreeMap::new(),
            next: 0,
            capacity: capacity.max(1),
            patience,
        }
    }

    /// Puts `connection` at the end of the line; returns its place, and the oldest connection if
    /// the line was full: it is out of the line now, and the caller closes it.
    pub(crate) fn join(&mut self, connection: &Connection) -> (Place, Option<WeakConnection>) {
        let place = Place(self.next);
        self.next += 1;
        let waiting = Waiting {
            deadline: Instant::now() + self.patience,
            connection: connection.downgrade(),
        };
        self.waiting.insert(place, waiting);
        let pushed_out = if self.waiting.len() > self.capacity {
            self.waiting
                .pop_first()
                .map(|(_, oldest)| oldest.connection)
        } else {
            None
        };
        (place, pushed_out)
    }

    /// Whether the connection at `place` is still waiting: `false` once it was pushed out or
    /// was late (it is being closed then).
    pub(crate) fn contains(&self, place: Place) -> bool {
        self.waiting.contains_key(&place)
    }

    /// Takes the connection at `place` out of the line; `false` if it was no longer in it.
    pub(crate) fn leave(&mut self, place: Place) -> bool {
        self.waiting.remove(&place).is_some()
    }

    /// Takes the connections whose deadline has passed out of the line; returns them, and the
    /// next deadline if any connection is left.
    fn take_late(&mut self, now: Instant) -> (Vec<WeakConnection>, Option<Instant>) {
        let mut late = Vec::new();
        // Deadlines come in the line's order: each is set when its connection joins, by one
        // clock, with one patience.
        while let Some(first) = self.waiting.first_entry() {
            if first.get().deadline > now {
                return (late, Some(first.get().deadline));
            }
            late.push(first.remove().connection);
        }
        (late, None)
    }
}

/// Closes each connection of the line whose deadline has passed, with `close`, for as long as
/// it runs (abort the task when the server stops); `line` reaches the line in whatever the
/// caller keeps it in. One task for the whole line, however long.
pub(crate) async fn close_the_late<T: Send>(
    lines: Arc<Mutex<T>>,
    line: impl Fn(&mut T) -> &mut WaitingLine,
    close: impl Fn(&Connection),
) {
    loop {
        let (late, next, patience) = {
            let mut lines = lines
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let line = line(&mut lines);
            let (late, next) = line.take_late(Instant::now());
            (late, next, line.patience)
        };
        for connection in late.iter().filter_map(WeakConnection::upgrade) {
            close(&connection);
        }
        // A connection that joins an empty line has its deadline a whole patience from now or
        // later, so the next look comes in time for it.
        match next {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => tokio::time::sleep(patience).await,
        }
    }
}
