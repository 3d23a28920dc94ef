//! Where reads land: a chunk of memory per runtime thread, that each read is split off.
//!
//! A read goes straight into the spare room of this thread's chunk, and [`BytesMut::split`]
//! hands exactly the bytes read over to the application: no allocation and no copy per read.
//! The parts handed out share the chunk's allocation (a reference count), so a chunk is given
//! back to the allocator only once every part of it was dropped. When the chunk has too little
//! room left for the next read, the arena takes the whole chunk back if every part handed out
//! was dropped (as a steady echo does), or else starts a new one and leaves the old one to the
//! parts still alive.
//!
//! The cost of that: a part kept by the application keeps its whole chunk allocated
//! ([`CHUNK`] bytes, or twice the read size if that is larger), however few bytes it holds.
//! An idle connection holds no chunk: a read takes one only while it runs, within one poll.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncRead;

/// The size of a chunk: 64 KiB, eight reads of the default read buffer size (8 KiB), and the
/// most a kept buffer pins. Small enough that the allocator serves it from its heap (glibc maps
/// 128 KiB and more apart), large enough that a chunk serves hundreds of small reads before it
/// is taken back.
pub(crate) const CHUNK: usize = 64 * 1024;

thread_local! {
    /// This thread's chunk: empty, its spare room is where the next read lands (what was handed
    /// out lies before it). Taken out for a read and put back within the same call, never held
    /// across an `.await`.
    static ARENA: Cell<Option<BytesMut>> = const { Cell::new(None) };
}

/// Runs `read` on this thread's chunk, empty and with room for at least `size` bytes, and
/// hands over what `read` appended to it: exactly those bytes, split off the chunk (an empty
/// buffer that holds no memory when `read` appended nothing: the end of the stream). `read`
/// appends at most `size` bytes ([`poll_read_into`] and [`read_initialized`] keep to that).
pub(crate) fn read_with(
    size: usize,
    read: impl FnOnce(&mut BytesMut) -> Poll<io::Result<()>>,
) -> Poll<io::Result<BytesMut>> {
    let mut chunk = ARENA.take().unwrap_or_default();
    if chunk.capacity() < size {
        renew(&mut chunk, size);
    }
    let result = match read(&mut chunk) {
        Poll::Ready(Ok(())) if !chunk.is_empty() => Poll::Ready(Ok(chunk.split())),
        Poll::Ready(Ok(())) => Poll::Ready(Ok(BytesMut::new())),
        Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
        Poll::Pending => Poll::Pending,
    };
    // Nothing stays in the chunk but what was handed out: a reader that failed or parked
    // leaves no bytes counted as read.
    chunk.clear();
    ARENA.set(Some(chunk));
    result
}

/// A `read` for [`read_with`]: polls `stream` for up to `size` bytes, read straight into the
/// chunk's uninitialized room (tokio-util's `poll_read_buf`, which sets the chunk's length to
/// what tokio's `ReadBuf` says was filled).
pub(crate) fn poll_read_into<S: AsyncRead + ?Sized>(
    stream: Pin<&mut S>,
    cx: &mut Context<'_>,
    room: &mut BytesMut,
    size: usize,
) -> Poll<io::Result<()>> {
    let mut room = room.limit(size);
    tokio_util::io::poll_read_buf(stream, cx, &mut room).map_ok(drop)
}

/// A `read` for [`read_with`], for readers that want initialized memory (a plain `&mut [u8]`):
/// `read` gets `size` zeroed bytes and returns how many it filled. Nothing is appended unless
/// it returns `Ready(Ok(..))`.
pub(crate) fn read_initialized(
    room: &mut BytesMut,
    size: usize,
    read: impl FnOnce(&mut [u8]) -> Poll<io::Result<usize>>,
) -> Poll<io::Result<()>> {
    room.resize(size, 0);
    match read(&mut room[..]) {
        Poll::Ready(Ok(filled)) => {
            room.truncate(filled);
            Poll::Ready(Ok(()))
        }
        other => {
            room.clear();
            other.map_ok(drop)
        }
    }
}

/// Makes room for a read of `size` bytes: the chunk's whole allocation back when no part of it
/// is alive any more, or else a new chunk.
///
/// A chunk is grown from empty rather than allocated at its size: `bytes` gives a part that
/// must grow (`reserve`, `extend_from_slice` on a read's buffer) at least the capacity its
/// original buffer was created with (up to 64 KiB), and a buffer that starts empty records
/// none, so a grown read costs what it costs on a buffer of its own size.
fn renew(chunk: &mut BytesMut, size: usize) {
    let wanted = size.max(CHUNK).max(size.saturating_mul(2));
    if !chunk.try_reclaim(wanted) {
        *chunk = BytesMut::new();
        chunk.reserve(wanted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each test starts with no chunk, whichever thread runs it.
    fn fresh() {
        ARENA.set(None);
    }

    fn read(size: usize, bytes: &[u8]) -> BytesMut {
        match read_with(size, |room| {
            room.extend_from_slice(bytes);
            Poll::Ready(Ok(()))
        }) {
            Poll::Ready(Ok(data)) => data,
            other => panic!("{other:?}"),
        }
    }

    fn room_left() -> usize {
        let chunk = ARENA.take();
        let left = chunk.as_ref().map_or(0, BytesMut::capacity);
        ARENA.set(chunk);
        left
    }

    #[test]
    fn a_read_hands_over_exactly_what_was_read() {
        fresh();
        let data = read(8192, b"hello");
        assert_eq!(&data[..], b"hello");
        assert_eq!(data.capacity(), 5);
        let end = read(8192, b"");
        assert!(end.is_empty());
        assert_eq!(end.capacity(), 0);
    }

    #[test]
    fn a_read_into_initialized_memory_hands_over_what_it_filled() {
        fresh();
        let data = read_with(100, |room| {
            read_initialized(room, 100, |bytes| {
                assert_eq!(bytes.len(), 100);
                bytes[..3].copy_from_slice(b"abc");
                Poll::Ready(Ok(3))
            })
        });
        assert!(matches!(data, Poll::Ready(Ok(data)) if &data[..] == b"abc"));
        let parked = read_with(100, |room| read_initialized(room, 100, |_| Poll::Pending));
        assert!(parked.is_pending());
        assert_eq!(
            &read(100, b"next")[..],
            b"next",
            "nothing left from the parked read"
        );
    }

    #[test]
    fn a_chunk_whose_parts_were_dropped_is_taken_back_whole() {
        fresh();
        let first = read(8192, b"x");
        let start = first.as_ptr();
        drop(first);
        // Use up the chunk: every part dropped at once, as an echo does.
        while room_left() >= 8192 {
            drop(read(8192, &[7; 1000]));
        }
        let again = read(8192, b"y");
        assert_eq!(again.as_ptr(), start, "the same allocation, from its start");
    }

    #[test]
    fn a_kept_part_keeps_its_chunk_and_a_new_one_is_started() {
        fresh();
        let kept = read(8192, b"kept");
        while room_left() >= 8192 {
            drop(read(8192, &[7; 1000]));
        }
        let next = read(8192, b"next");
        let kept_at = kept.as_ptr() as usize;
        let next_at = next.as_ptr() as usize;
        assert!(
            next_at < kept_at || next_at >= kept_at + CHUNK,
            "a new chunk, not the one still in use"
        );
        assert_eq!(&kept[..], b"kept");
    }

    #[test]
    fn growing_a_read_does_not_allocate_a_chunk() {
        fresh();
        let mut data = read(8192, b"0123456789");
        data.reserve(4);
        assert!(data.capacity() < 1024, "grew to {}", data.capacity());
        assert_eq!(&data[..10], b"0123456789");
    }

    #[test]
    fn reads_larger_than_a_chunk_get_a_chunk_of_twice_their_size() {
        fresh();
        let size = 3 * CHUNK;
        let data = read(size, &vec![1; size]);
        assert_eq!(data.len(), size);
        assert!(room_left() >= size);
    }
}
