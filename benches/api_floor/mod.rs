//! The API floor (`echo --echo-server api`): raw tokio paying what switchboard's callback API
//! costs by its shape, and nothing of its engine.
//!
//! Any engine that offers these callbacks pays at least this per message, whatever its rules:
//! - each read is a [`BytesMut`] that the callback owns: it lands in a chunk kept per thread and
//!   is split off it, with no allocation and no copy of its own, as switchboard's reads do (so an
//!   idle connection holds no buffer);
//! - callbacks are `#[async_trait]` methods called through an `Arc<dyn …>`: one boxed future per
//!   call, polled under `catch_unwind` (a panicking callback must not take the server down);
//! - `on_write_completed`'s default returns a boxed zero-sized future (no allocation), as
//!   switchboard's does;
//! - the handle is an `Arc` shared with the connection's task: writes go to a mutex-guarded
//!   `Vec<Bytes>` with an atomic queue level, a read request is an atomic flag;
//! - the task swaps the queued buffers out (keeping both vectors' capacity), `write_all`s each,
//!   hands it to `on_write_completed`, which drops it.
//!
//! `--echo-server api-static` runs the same loop with the callbacks as native `async fn`s in a
//! trait, called with static dispatch (no boxed future): what the API would cost without
//! `async-trait`'s boxing, which switchboard's design card fixes.
//!
//! It has none of the lifetime rule, closure reasons, timeouts, watermarks, flow control,
//! counters, abort, shutdown or wake-ups from other tasks. What switchboard costs above this is
//! its engine; what this costs above raw tokio is the API. Used by the instruction count only
//! (`benches/instructions.sh`): its server CPU is within this machine's noise of raw tokio's.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::BufMut as _;
use futures::FutureExt as _;
use switchboard::{async_trait, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::{raw_accept, Tally};

/// What a handle shares with its connection's task.
struct Shared {
    writes: Mutex<Vec<Bytes>>,
    /// Bytes queued and not yet written.
    queued: AtomicUsize,
    read_requested: AtomicBool,
}

/// The handle the callbacks get.
struct Handle(Arc<Shared>);

impl Handle {
    fn write(&self, data: Bytes) {
        self.0.queued.fetch_add(data.len(), Ordering::AcqRel);
        self.0
            .writes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(data);
    }

    fn read(&self) {
        self.0.read_requested.store(true, Ordering::Release);
    }
}

type Callback<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

#[async_trait]
trait Callbacks: Send + Sync + 'static {
    async fn on_read_completed(&self, handle: &Handle, data: BytesMut);

    /// Written out as `#[async_trait]` would expand it, returning a zero-sized future:
    /// switchboard's default does the same.
    fn on_write_completed<'a, 'b, 'c>(&'a self, _handle: &'b Handle, _data: Bytes) -> Callback<'c>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        Box::pin(Done)
    }
}

/// A future that is ready at once and holds nothing: boxing it allocates nothing (unlike
/// `std::future::Ready<()>`, which holds an `Option<()>`).
struct Done;

impl Future for Done {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::task::Poll::Ready(())
    }
}

/// The same callbacks as native `async fn`s in a trait, called with static dispatch: no boxed
/// future (`--echo-server api-static`). Not switchboard's API (its design card has
/// `async-trait` and one `dyn` trait); measured to show what that choice costs.
trait StaticCallbacks: Send + Sync + 'static {
    fn on_read_completed<'a>(
        &'a self,
        handle: &'a Handle,
        data: BytesMut,
    ) -> impl Future<Output = ()> + Send + 'a;

    fn on_write_completed<'a>(
        &'a self,
        _handle: &'a Handle,
        _data: Bytes,
    ) -> impl Future<Output = ()> + Send + 'a {
        async {}
    }
}

/// The `async-trait` callbacks behind the static interface: each call returns the boxed
/// future, as switchboard's engine gets it.
struct Boxed(Arc<dyn Callbacks>);

impl StaticCallbacks for Boxed {
    fn on_read_completed<'a>(
        &'a self,
        handle: &'a Handle,
        data: BytesMut,
    ) -> impl Future<Output = ()> + Send + 'a {
        self.0.on_read_completed(handle, data)
    }

    fn on_write_completed<'a>(
        &'a self,
        handle: &'a Handle,
        data: Bytes,
    ) -> impl Future<Output = ()> + Send + 'a {
        self.0.on_write_completed(handle, data)
    }
}

/// The echo of `benches/echo.rs`'s switchboard server: write the buffer back, read again.
struct Echo;

impl Echo {
    fn echo(handle: &Handle, data: BytesMut) {
        handle.write(data.freeze());
        handle.read();
    }
}

#[async_trait]
impl Callbacks for Echo {
    async fn on_read_completed(&self, handle: &Handle, data: BytesMut) {
        Echo::echo(handle, data);
    }
}

impl StaticCallbacks for Echo {
    async fn on_read_completed(&self, handle: &Handle, data: BytesMut) {
        Echo::echo(handle, data);
    }
}

/// Runs one connection until its end of stream, an error or a callback's panic.
async fn serve<C: StaticCallbacks>(mut stream: TcpStream, callbacks: &C) {
    let handle = Handle(Arc::new(Shared {
        writes: Mutex::new(Vec::new()),
        queued: AtomicUsize::new(0),
        read_requested: AtomicBool::new(true),
    }));
    let mut writing = Vec::new();
    loop {
        std::mem::swap(
            &mut writing,
            &mut *handle
                .0
                .writes
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for data in writing.drain(..) {
            if stream.write_all(&data).await.is_err() {
                return;
            }
            handle.0.queued.fetch_sub(data.len(), Ordering::AcqRel);
            let completed = callbacks.on_write_completed(&handle, data);
            if AssertUnwindSafe(completed).catch_unwind().await.is_err() {
                return;
            }
        }
        if !handle.0.read_requested.swap(false, Ordering::AcqRel) {
            return;
        }
        let data = match poll_fn(|cx| poll_read_split(&mut stream, cx)).await {
            Ok(data) if !data.is_empty() => data,
            _ => return,
        };
        let completed = callbacks.on_read_completed(&handle, data);
        if AssertUnwindSafe(completed).catch_unwind().await.is_err() {
            return;
        }
    }
}

/// Largest read, as switchboard's default read buffer size.
const READ_SIZE: usize = 8 * 1024;

/// The size of a thread's chunk, as switchboard's.
const CHUNK: usize = 64 * 1024;

thread_local! {
    /// This thread's chunk, empty: reads land in its spare room.
    static ARENA: Cell<Option<BytesMut>> = const { Cell::new(None) };
}

/// Polls a read of up to [`READ_SIZE`] bytes into this thread's chunk, and hands the bytes read
/// over split off it (empty at the end of the stream). When the room left is too small, the
/// chunk is taken back whole if every part handed out was dropped, or a new one is started.
fn poll_read_split(stream: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<BytesMut>> {
    let mut chunk = ARENA.take().unwrap_or_default();
    if chunk.capacity() < READ_SIZE && !chunk.try_reclaim(CHUNK) {
        chunk = BytesMut::new();
        chunk.reserve(CHUNK);
    }
    let result =
        tokio_util::io::poll_read_buf(Pin::new(stream), cx, &mut (&mut chunk).limit(READ_SIZE))
            .map_ok(|_| chunk.split());
    ARENA.set(Some(chunk));
    result
}

/// The accept loop, as raw tokio's: a task per connection, counted in `tally`. The callbacks are
/// `async-trait`'s boxed ones, or with `boxed` false the static ones.
pub(crate) async fn accept_loop(listener: TcpListener, tally: Arc<Tally>, boxed: bool) {
    let callbacks: Arc<dyn Callbacks> = Arc::new(Echo);
    loop {
        let stream = raw_accept(&listener).await;
        let callbacks = Boxed(callbacks.clone());
        let tally = tally.clone();
        tokio::spawn(async move {
            tally.opened();
            if boxed {
                serve(stream, &callbacks).await;
            } else {
                serve(stream, &Echo).await;
            }
            tally.closed();
        });
    }
}
