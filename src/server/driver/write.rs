//! The driver's side of the write queue: buffers taken from the mailbox, written with one
//! `write` (one buffer) or `writev` (several) per turn.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::task::{Context, Poll};

use bytes::Bytes;

use super::transport::Transport;
use crate::connection::lifecycle::queued_cost;

/// Most buffers handed to one `writev`; Linux's `IOV_MAX` is 1024, but a few dozen already cover
/// every queue the default 64 KiB limit can hold with ordinary message sizes.
const MAX_IO_SLICES: usize = 64;

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

    /// Polls one write of the queue.
    pub(super) fn poll_write(
        &self,
        cx: &mut Context<'_>,
        transport: &mut Transport,
    ) -> Poll<io::Result<usize>> {
        if self.buffers.len() == 1 {
            return transport.poll_write(cx, &[IoSlice::new(&self.buffers[0][self.offset..])]);
        }
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
}
