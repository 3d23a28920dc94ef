//! The driver's side of the write queue: buffers taken from the mailbox, written with one
//! `write` (one buffer, or small buffers copied into one) or `writev` (several) per turn.

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;

use super::transport::Transport;
use crate::connection::lifecycle::{queued_cost, Lifecycle};
use crate::connection::mailbox::Mailbox;
use crate::server::invoke::Guarded;

/// Most pieces handed to one `writev`; Linux's `IOV_MAX` is 1024, but a few dozen already cover
/// every queue the default 64 KiB limit can hold with ordinary message sizes (and small buffers
/// are gathered into one piece).
const MAX_IO_SLICES: usize = 64;

/// Queued buffers shorter than this are copied into one piece rather than handed to `writev`
/// one iovec each: the kernel's cost per iovec is more than a copy of a short buffer.
/// `cargo bench --bench gather` (a loopback connection, the writing thread's CPU per KiB sent,
/// 2 to 64 buffers per call) found copying cheaper by 15–55% for buffers up to 256 B, by up to
/// 20% from 512 B to 1 KiB, about even at 2 KiB, and dearer by 20–55% at 4 KiB.
const GATHER_BELOW: usize = 1024;

/// Most bytes gathered for one write: the default queue limit, so that a queue of small buffers
/// goes out in one system call. A partial write copies what it left again next time.
const GATHER_MAX: usize = 64 * 1024;

/// Most buffers one write can send in full: those gathered (none is empty, so at most one per
/// byte gathered) and a whole buffer in every other piece.
pub(super) const MOST_BUFFERS_PER_WRITE: usize = GATHER_MAX + MAX_IO_SLICES;

thread_local! {
    /// Where small buffers are gathered: one per runtime thread (not per connection, so that an
    /// idle connection keeps none), of [`GATHER_MAX`] bytes.
    static GATHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One piece of a write: a run of small buffers copied into the gather buffer, or a buffer of
/// the queue written as it is.
#[derive(Clone, Copy, Debug)]
enum Piece {
    Gathered { start: usize, end: usize },
    Buffer(usize),
}

/// Buffers to send, oldest first; `offset` bytes of the front one are sent.
#[derive(Debug, Default)]
pub(super) struct WriteQueue {
    buffers: VecDeque<Bytes>,
    offset: usize,
}

impl WriteQueue {
    /// Where the mailbox appends newly taken writes (its own buffer keeps its capacity).
    pub(super) fn tail(&mut self) -> &mut VecDeque<Bytes> {
        &mut self.buffers
    }

    /// Polls one write of the queue: its front, as it stands, in order.
    ///
    /// Small buffers ([`GATHER_BELOW`]) next to each other are copied into the thread's gather
    /// buffer and go out as one piece. The bytes written are the queue's front all the same, so
    /// [`WriteQueue::advance`] counts a partial write exactly: it completes only the buffers
    /// it covers in full. TLS gathers small buffers into records itself.
    pub(super) fn poll_write(
        &self,
        cx: &mut Context<'_>,
        transport: &mut Transport,
    ) -> Poll<io::Result<usize>> {
        let front = &self.buffers[0][self.offset..];
        if self.buffers.len() == 1 {
            return transport.poll_write(cx, &[IoSlice::new(front)]);
        }
        if transport.is_tls() {
            return self.poll_writev(cx, transport);
        }
        // Room first: a socket that is full must not cost a copy per wake.
        ready!(transport.poll_write_ready(cx))?;
        GATHER.with(|gather| {
            let mut gather = gather.borrow_mut();
            gather.clear();
            // Its full size at once, so that it never grows past it.
            gather.reserve_exact(GATHER_MAX);
            if self.gather_front(&mut gather) {
                return transport.poll_write(cx, &[IoSlice::new(&gather)]);
            }
            gather.clear();
            let mut pieces = [Piece::Buffer(0); MAX_IO_SLICES];
            let count = self.gather(&mut gather, &mut pieces);
            let mut slices = [IoSlice::new(&[]); MAX_IO_SLICES];
            for (slice, piece) in slices.iter_mut().zip(&pieces[..count]) {
                *slice = IoSlice::new(match *piece {
                    Piece::Gathered { start, end } => &gather[start..end],
                    Piece::Buffer(0) => front,
                    Piece::Buffer(index) => &self.buffers[index][..],
                });
            }
            transport.poll_write(cx, &slices[..count])
        })
    }

    /// Copies the run of small buffers at the queue's front into `gather`: `true` if that is the
    /// whole write (the run reaches the queue's end or fills `gather`), `false` if a large buffer
    /// follows it (then [`WriteQueue::gather`] makes the pieces). What a queue of small buffers
    /// (a chat's lines) writes, without the pieces.
    fn gather_front(&self, gather: &mut Vec<u8>) -> bool {
        for (index, buffer) in self.buffers.iter().enumerate() {
            let bytes = if index == 0 {
                &buffer[self.offset..]
            } else {
                &buffer[..]
            };
            if bytes.len() >= GATHER_BELOW {
                return false;
            }
            if gather.len() + bytes.len() > GATHER_MAX {
                return true;
            }
            gather.extend_from_slice(bytes);
        }
        true
    }

    /// Splits the queue's front into at most [`MAX_IO_SLICES`] pieces, copying runs of small
    /// buffers into `gather` (up to [`GATHER_MAX`] bytes); returns how many pieces it made.
    fn gather(&self, gather: &mut Vec<u8>, pieces: &mut [Piece; MAX_IO_SLICES]) -> usize {
        let mut count = 0;
        // Where the run of small buffers being gathered (the last piece) starts, if one is.
        let mut run: Option<usize> = None;
        for (index, buffer) in self.buffers.iter().enumerate() {
            let bytes = if index == 0 {
                &buffer[self.offset..]
            } else {
                &buffer[..]
            };
            if bytes.len() < GATHER_BELOW && gather.len() + bytes.len() <= GATHER_MAX {
                if run.is_none() {
                    if count == MAX_IO_SLICES {
                        break;
                    }
                    run = Some(gather.len());
                    count += 1;
                }
                gather.extend_from_slice(bytes);
                continue;
            }
            // A large buffer, or a small one the gather buffer has no room for: a piece of its
            // own, after the run before it.
            if let Some(start) = run.take() {
                pieces[count - 1] = Piece::Gathered {
                    start,
                    end: gather.len(),
                };
            }
            if count == MAX_IO_SLICES {
                break;
            }
            pieces[count] = Piece::Buffer(index);
            count += 1;
        }
        if let Some(start) = run {
            pieces[count - 1] = Piece::Gathered {
                start,
                end: gather.len(),
            };
        }
        count
    }

    /// One `writev` of the queue's front, an iovec per buffer.
    fn poll_writev(
        &self,
        cx: &mut Context<'_>,
        transport: &mut Transport,
    ) -> Poll<io::Result<usize>> {
        let mut slices = [IoSlice::new(&[]); MAX_IO_SLICES];
        let mut count = 0;
        for (i, buffer) in self.buffers.iter().take(MAX_IO_SLICES).enumerate() {
            let start = if i == 0 { self.offset } else { 0 };
            slices[i] = IoSlice::new(&buffer[start..]);
            count += 1;
        }
        transport.poll_write(cx, &slices[..count])
    }

    /// Notes that `sent` bytes were written; returns how many buffers at the front are now sent
    /// in full (take them with [`WriteQueue::pop_sent`]).
    pub(super) fn advance(&mut self, mut sent: usize) -> usize {
        let mut completed = 0;
        while sent > 0 {
            let remaining = self.buffers[completed].len() - self.offset;
            if sent >= remaining {
                sent -= remaining;
                completed += 1;
                self.offset = 0;
            } else {
                self.offset += sent;
                sent = 0;
            }
        }
        completed
    }

    /// The front buffer, sent in full.
    pub(super) fn pop_sent(&mut self) -> Bytes {
        self.buffers
            .pop_front()
            .expect("sent buffers are at the front of the queue")
    }

    /// Drops the `count` buffers at the front, sent in full.
    #[inline]
    pub(super) fn drop_sent(&mut self, count: usize) {
        debug_assert!(count <= self.buffers.len(), "sent buffers are in the queue");
        // The one buffer of an echo by `pop_front`, inlined: `clear` costs about 40 instructions
        // more for one, and less than a loop of `pop_front` for a broadcast's many.
        if count == 1 {
            self.buffers.pop_front();
        } else {
            self.drop_many(count);
        }
    }

    /// [`WriteQueue::drop_sent`] for more than one buffer, apart: inlined, its code would push
    /// other calls of the pump out of line.
    #[inline(never)]
    fn drop_many(&mut self, count: usize) {
        if count == self.buffers.len() {
            self.buffers.clear();
        } else {
            self.buffers.drain(..count);
        }
    }

    /// Drops everything unsent; returns what that counted for in the queue (its bytes, and each
    /// buffer's overhead: see [`queued_cost`]).
    pub(super) fn clear(&mut self) -> usize {
        let unsent = self
            .buffers
            .iter()
            .map(|buffer| queued_cost(buffer.len()))
            .sum::<usize>()
            - self.offset;
        self.buffers.clear();
        self.offset = 0;
        unsent
    }
}

/// A callback's future (boxed, as `async-trait` returns it), polled with its panics caught
/// ([`Guarded`]) and so that the writes the connection's own callback makes go straight to the
/// write queue where the order allows ([`Mailbox::own_writes`]); the lifecycle counts them at
/// once, as it counts writes taken from the inbox.
pub(super) struct Polled<'a, 'f, T> {
    pub(super) future: Guarded<Pin<Box<dyn Future<Output = T> + Send + 'f>>>,
    pub(super) mailbox: &'a Mailbox,
    pub(super) writes: &'a mut WriteQueue,
    pub(super) life: &'a mut Lifecycle,
}

impl<T> Future for Polled<'_, '_, T> {
    type Output = Result<T, Box<dyn Any + Send>>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let future = &mut this.future;
        // A future with no state holds no handle to write with (the default callbacks' are
        // such): polled as it is. Any write it makes still goes through the inbox.
        if std::mem::size_of_val(&*future.0) == 0 {
            return Pin::new(future).poll(cx);
        }
        let (polled, cost) = this
            .mailbox
            .own_writes(&mut this.writes.buffers, || Pin::new(future).poll(cx));
        if cost > 0 {
            this.life.on_queued(cost);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_writes_keep_their_place_and_complete_whole_buffers() {
        let mut queue = WriteQueue::default();
        queue.tail().extend([
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"de"),
            Bytes::from_static(b"f"),
        ]);
        assert_eq!(queue.advance(2), 0);
        assert_eq!(queue.advance(2), 1);
        assert_eq!(&queue.pop_sent()[..], b"abc");
        assert_eq!(queue.offset, 1);
        assert_eq!(
            queue.clear(),
            queued_cost(1) + queued_cost(1),
            "'e' and 'f' were unsent"
        );
    }

    /// The bytes a write of `queue`'s pieces would send.
    fn gathered(queue: &WriteQueue) -> Vec<u8> {
        let mut gather = Vec::new();
        let mut pieces = [Piece::Buffer(0); MAX_IO_SLICES];
        let count = queue.gather(&mut gather, &mut pieces);
        let mut sent = Vec::new();
        for piece in &pieces[..count] {
            match *piece {
                Piece::Gathered { start, end } => sent.extend_from_slice(&gather[start..end]),
                Piece::Buffer(0) => sent.extend_from_slice(&queue.buffers[0][queue.offset..]),
                Piece::Buffer(index) => sent.extend_from_slice(&queue.buffers[index]),
            }
        }
        sent
    }

    #[test]
    fn sent_buffers_are_dropped_from_the_front_one_some_or_all() {
        let mut queue = WriteQueue::default();
        queue.tail().extend(
            [&b"a"[..], b"b", b"c", b"d", b"e"]
                .into_iter()
                .map(Bytes::from_static),
        );
        queue.drop_sent(1);
        assert_eq!(queue.buffers, [&b"b"[..], b"c", b"d", b"e"]);
        queue.drop_sent(2);
        assert_eq!(queue.buffers, [&b"d"[..], b"e"]);
        queue.drop_sent(2);
        assert!(queue.buffers.is_empty());
    }

    #[test]
    fn a_run_of_small_buffers_at_the_front_is_the_whole_write_unless_a_large_one_follows() {
        let mut queue = WriteQueue::default();
        queue.tail().extend([
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"de"),
            Bytes::from_static(b"f"),
        ]);
        queue.offset = 1;
        let mut gather = Vec::new();
        assert!(queue.gather_front(&mut gather));
        assert_eq!(gather, b"bcdef", "from the front's offset, in order");

        // Up to the gather buffer's size: the write is the run that fits.
        let line = Bytes::from(vec![b'x'; GATHER_BELOW - 1]);
        let fits = GATHER_MAX / line.len();
        let mut queue = WriteQueue::default();
        queue
            .tail()
            .extend(std::iter::repeat(line.clone()).take(fits + 2));
        let mut gather = Vec::new();
        assert!(queue.gather_front(&mut gather));
        assert_eq!(gather.len(), fits * line.len());

        // A large buffer after the run: the pieces are made instead.
        queue.tail().clear();
        queue
            .tail()
            .extend([line, Bytes::from(vec![b'L'; GATHER_BELOW])]);
        gather.clear();
        assert!(!queue.gather_front(&mut gather));
    }

    #[test]
    fn small_buffers_are_gathered_in_order_around_large_ones() {
        let large = Bytes::from(vec![b'L'; GATHER_BELOW]);
        let mut queue = WriteQueue::default();
        queue.tail().extend([
            Bytes::from_static(b"abc"),
            large.clone(),
            Bytes::from_static(b"de"),
            Bytes::from_static(b"f"),
        ]);
        queue.offset = 1;
        let mut gather = Vec::new();
        let mut pieces = [Piece::Buffer(0); MAX_IO_SLICES];
        let count = queue.gather(&mut gather, &mut pieces);
        assert_eq!(count, 3, "{:?}", &pieces[..count]);
        assert!(matches!(pieces[1], Piece::Buffer(1)));
        assert_eq!(gather, b"bcdef");
        let mut expected = b"bc".to_vec();
        expected.extend_from_slice(&large);
        expected.extend_from_slice(b"def");
        assert_eq!(gathered(&queue), expected);
    }

    #[test]
    fn a_partial_write_of_gathered_buffers_completes_only_those_covered() {
        let mut queue = WriteQueue::default();
        let lines: Vec<Bytes> = (0..200_u8)
            .map(|i| Bytes::from(vec![i; 1 + usize::from(i) * 7]))
            .collect();
        queue.tail().extend(lines.iter().cloned());
        let all: Vec<u8> = lines.iter().flat_map(|line| line.iter().copied()).collect();
        let ends: Vec<usize> = lines
            .iter()
            .scan(0, |end, line| {
                *end += line.len();
                Some(*end)
            })
            .collect();
        let (mut sent, mut completed) = (0, 0);
        // Writes of odd sizes, then of all that is offered, until the queue is empty.
        let mut steps = [1, 5, 300, 4096, 333, 70_000].into_iter();
        while !queue.buffers.is_empty() {
            let front = gathered(&queue);
            assert_eq!(
                front,
                all[sent..sent + front.len()],
                "the queue's front, in order"
            );
            let written = steps.next().unwrap_or(usize::MAX).min(front.len());
            for _ in 0..queue.advance(written) {
                assert_eq!(queue.pop_sent(), lines[completed], "completed in order");
                completed += 1;
            }
            sent += written;
            let covered = ends.iter().take_while(|&&end| end <= sent).count();
            assert_eq!(
                completed, covered,
                "exactly the buffers sent in full complete"
            );
        }
        assert_eq!(sent, all.len());
    }

    #[test]
    fn gathering_stops_at_its_bound() {
        let mut queue = WriteQueue::default();
        let line = Bytes::from(vec![b'x'; 1000]);
        queue.tail().extend(std::iter::repeat(line).take(100));
        let mut gather = Vec::new();
        let mut pieces = [Piece::Buffer(0); MAX_IO_SLICES];
        let count = queue.gather(&mut gather, &mut pieces);
        assert!(gather.len() <= GATHER_MAX);
        assert!(matches!(pieces[0], Piece::Gathered { start: 0, end } if end == 65 * 1000));
        assert_eq!(count, 1 + (100 - 65), "the rest, an iovec each");
    }
}
