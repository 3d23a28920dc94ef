//! An in-memory byte stream in place of a socket, for [`testing`](crate::testing): the server's
//! end is a [`ByteStream`] under the connection's driver, the peer's end is driven by the test.
//!
//! It behaves as a TCP connection does where the driver can tell: each direction holds bytes in
//! flight up to a limit (the peer's receive window: a peer that stops reading fills it, and then
//! the server's write queue; and, if the test sets one, the server's receive buffer, which a
//! server that stops reading fills), either side can send FIN, and either can reset (RST), after which
//! the other's reads and writes fail with `ECONNRESET`. What the peer sends keeps its chunks: one
//! `send` is at most one read on the server (split only by the read buffer size), so a test
//! chooses exactly how the stream is cut.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};

use crate::server::driver::arena;
use crate::server::driver::transport::ByteStream;

/// Bytes in flight towards the peer before the server's writes block, unless the test sets
/// another window: in the range of a loopback socket's send buffer, and well above the default
/// write queue limit, so that the queue fills only when the test stops reading.
pub(crate) const DEFAULT_WINDOW: usize = 256 * 1024;

/// One direction of the stream.
#[derive(Debug, Default)]
struct Flow {
    /// What was sent and not yet read, in the chunks it was sent in.
    chunks: VecDeque<Bytes>,
    /// Bytes in `chunks`.
    queued: usize,
    /// The sender sent FIN.
    fin: bool,
    /// The reader waits for data.
    reader: Option<Waker>,
    /// The sender waits for room.
    writer: Option<Waker>,
}

impl Flow {
    fn wake_reader(&mut self) {
        if let Some(waker) = self.reader.take() {
            waker.wake();
        }
    }

    fn wake_writer(&mut self) {
        if let Some(waker) = self.writer.take() {
            waker.wake();
        }
    }

    /// Takes up to `size` bytes of the front chunk.
    fn take(&mut self, size: usize) -> Option<Bytes> {
        let front = self.chunks.front_mut()?;
        let data = if front.len() <= size {
            self.chunks.pop_front().unwrap_or_default()
        } else {
            front.split_to(size)
        };
        self.queued -= data.len();
        self.wake_writer();
        Some(data)
    }
}

#[derive(Debug)]
struct State {
    /// From the peer to the server.
    inbound: Flow,
    /// From the server to the peer.
    outbound: Flow,
    /// Most bytes `outbound` holds: the peer's receive window.
    window: usize,
    /// Most bytes `inbound` holds: the server's receive buffer (no limit unless the test sets
    /// one).
    receive_buffer: usize,
    /// The peer reset the connection.
    peer_reset: bool,
    /// The server reset the connection (an abort).
    server_reset: bool,
    /// The server's end was dropped: the connection is closed on its side.
    server_closed: bool,
    /// Someone waits for the server's end to close.
    closed_waiter: Option<Waker>,
}

/// The shared stream; both ends hold it.
#[derive(Debug, Clone)]
pub(crate) struct Pipe(Arc<Mutex<State>>);

impl Pipe {
    pub(crate) fn new() -> (Pipe, MemoryStream) {
        let pipe = Pipe(Arc::new(Mutex::new(State {
            inbound: Flow::default(),
            outbound: Flow::default(),
            window: DEFAULT_WINDOW,
            receive_buffer: usize::MAX,
            peer_reset: false,
            server_reset: false,
            server_closed: false,
            closed_waiter: None,
        })));
        let server = MemoryStream(pipe.clone());
        (pipe, server)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-changed in a way that
        // matters to a test that goes on.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The peer sends `data` as one chunk; `WouldBlock` if the server's receive buffer has no
    /// room for all of it.
    pub(crate) fn send(&self, data: Bytes) -> io::Result<()> {
        let mut state = self.lock();
        can_send(&state)?;
        if data.len() > state.receive_buffer.saturating_sub(state.inbound.queued) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if !data.is_empty() {
            state.inbound.queued += data.len();
            state.inbound.chunks.push_back(data);
            state.inbound.wake_reader();
        }
        Ok(())
    }

    /// The peer sends what of `data` the server's receive buffer has room for, in one chunk, and
    /// takes it off `data`; pending while there is no room and `data` is not empty.
    pub(crate) fn poll_send(&self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<()>> {
        let mut state = self.lock();
        if let Err(error) = can_send(&state) {
            return Poll::Ready(Err(error));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let room = state.receive_buffer.saturating_sub(state.inbound.queued);
        if room == 0 {
            state.inbound.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let piece = data.split_to(room.min(data.len()));
        state.inbound.queued += piece.len();
        state.inbound.chunks.push_back(piece);
        state.inbound.wake_reader();
        Poll::Ready(Ok(()))
    }

    /// Sets the server's receive buffer: the most bytes sent that the server has not read.
    pub(crate) fn set_receive_buffer(&self, bytes: usize) {
        let mut state = self.lock();
        state.receive_buffer = bytes;
        state.inbound.wake_writer();
    }

    /// The peer's read: what the server sent so far (all of it), empty at the server's FIN.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
        let mut state = self.lock();
        if state.server_reset || state.peer_reset {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        if state.outbound.queued > 0 {
            let mut all = BytesMut::with_capacity(state.outbound.queued);
            while let Some(chunk) = state.outbound.take(usize::MAX) {
                all.extend_from_slice(&chunk);
            }
            return Poll::Ready(Ok(all.freeze()));
        }
        if state.outbound.fin || state.server_closed {
            return Poll::Ready(Ok(Bytes::new()));
        }
        state.outbound.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The peer sends FIN.
    pub(crate) fn shutdown_write(&self) {
        let mut state = self.lock();
        state.inbound.fin = true;
        state.inbound.wake_reader();
    }

    /// The server's end is shut for writing behind the driver's back: the peer reads FIN after
    /// what was sent, and the server's next write fails with `EPIPE`.
    pub(crate) fn shutdown_server_write(&self) {
        let mut state = self.lock();
        state.outbound.fin = true;
        state.outbound.wake_reader();
        state.outbound.wake_writer();
    }

    /// The peer resets the connection: what either side had in flight is dropped.
    pub(crate) fn reset(&self) {
        let mut state = self.lock();
        state.peer_reset = true;
        drop_in_flight(&mut state);
    }

    /// Sets the peer's receive window.
    pub(crate) fn set_window(&self, bytes: usize) {
        let mut state = self.lock();
        state.window = bytes;
        state.outbound.wake_writer();
    }

    /// Bytes the server sent that the peer has not read.
    pub(crate) fn unread(&self) -> usize {
        self.lock().outbound.queued
    }

    /// Whether the server reset the connection.
    pub(crate) fn server_reset(&self) -> bool {
        self.lock().server_reset
    }

    /// Whether the server's end is closed (its socket would be): after the connection ended.
    pub(crate) fn poll_server_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if state.server_closed {
            return Poll::Ready(());
        }
        state.closed_waiter = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Whether the peer may send: not after a reset, its own FIN or the server's close.
fn can_send(state: &State) -> io::Result<()> {
    if state.peer_reset || state.server_reset {
        return Err(io::ErrorKind::ConnectionReset.into());
    }
    if state.inbound.fin {
        return Err(io::ErrorKind::BrokenPipe.into());
    }
    if state.server_closed {
        // A real stack would answer with RST; the data is lost either way.
        return Err(io::ErrorKind::ConnectionReset.into());
    }
    Ok(())
}

fn drop_in_flight(state: &mut State) {
    for flow in [&mut state.inbound, &mut state.outbound] {
        flow.chunks.clear();
        flow.queued = 0;
        flow.wake_reader();
        flow.wake_writer();
    }
}

/// The server's end.
#[derive(Debug)]
pub(crate) struct MemoryStream(Pipe);

impl ByteStream for MemoryStream {
    fn poll_read(&mut self, cx: &mut Context<'_>, size: usize) -> Poll<io::Result<BytesMut>> {
        let mut state = self.0.lock();
        if state.peer_reset {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        if let Some(data) = state.inbound.take(size.max(1)) {
            // Into the thread's read arena, as a socket's read lands: a buffer the application
            // keeps holds its chunk here too.
            return arena::read_with(data.len(), |room| {
                room.extend_from_slice(&data);
                Poll::Ready(Ok(()))
            });
        }
        if state.inbound.fin {
            return Poll::Ready(Ok(BytesMut::new()));
        }
        state.inbound.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buffers: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.0.lock();
        if state.peer_reset {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        if state.outbound.fin {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let room = state.window.saturating_sub(state.outbound.queued);
        if room == 0 {
            state.outbound.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut taken = BytesMut::new();
        for buffer in buffers {
            let left = room - taken.len();
            if left == 0 {
                break;
            }
            taken.extend_from_slice(&buffer[..buffer.len().min(left)]);
        }
        let written = taken.len();
        if written > 0 {
            state.outbound.queued += written;
            state.outbound.chunks.push_back(taken.freeze());
            state.outbound.wake_reader();
        }
        Poll::Ready(Ok(written))
    }

    /// FIN.
    fn shutdown_write(&self) {
        let mut state = self.0.lock();
        state.outbound.fin = true;
        state.outbound.wake_reader();
    }

    /// Everything the server sent was read by the peer (the FIN too, once sent).
    fn all_acknowledged(&self) -> bool {
        self.0.lock().outbound.queued == 0
    }

    /// The close that follows will be a reset (`SO_LINGER` 0): unsent data is dropped.
    fn reset_on_close(&self) {
        let mut state = self.0.lock();
        state.server_reset = true;
        drop_in_flight(&mut state);
    }
}

impl Drop for MemoryStream {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.server_closed = true;
        state.outbound.wake_reader();
        state.inbound.wake_writer();
        if let Some(waker) = state.closed_waiter.take() {
            waker.wake();
        }
    }
}
