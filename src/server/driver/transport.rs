//! The byte stream under a connection: plain TCP or TLS over TCP (or, for `testing`, memory).
//!
//! The driver sees one interface: poll for a read buffer, poll a write of some buffers, poll the
//! sending of TLS `close_notify`. Plain TCP keeps tokio's readiness model (no read buffer exists
//! until the socket is readable); TLS goes through `tokio-native-tls` or `tokio-openssl`
//! ([`TlsStream`]), which drive the TLS library over the same socket.

use std::io::{self, IoSlice, Read};
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::arena;
use super::urgent::{recv_urgent_byte, AtMark};
use crate::tls::TlsStream;

/// The largest TLS record's plaintext: small buffers are gathered up to this much per write, so
/// that many small writes do not each become a record of their own.
const TLS_RECORD: usize = 16 * 1024;

/// A connection's byte stream that is not a socket: what the driver needs of it, as it gets it
/// from a TCP socket.
#[cfg(feature = "testing")]
pub(crate) trait ByteStream: Send + Sync + std::fmt::Debug {
    /// Polls for data: up to `size` bytes, empty at the end of the stream.
    fn poll_read(&mut self, cx: &mut Context<'_>, size: usize) -> Poll<io::Result<BytesMut>>;

    /// Polls a write of the front of `buffers`; returns how many bytes were taken.
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buffers: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>>;

    /// Sends FIN.
    fn shutdown_write(&self);

    /// Whether the other end has taken everything written and the FIN.
    fn all_acknowledged(&self) -> bool;

    /// Makes the close that dropping the stream does a reset: unsent data is dropped.
    fn reset_on_close(&self);
}

#[derive(Debug)]
pub(crate) enum Transport {
    Plain(TcpStream),
    /// Boxed: a plain connection's driver should not carry a TLS connection's state.
    Tls(Box<Tls>),
    /// A byte stream of another kind ([`ByteStream`]): the in-memory stream of the `testing`
    /// feature, whose other end a test drives.
    #[cfg(feature = "testing")]
    Stream(Box<dyn ByteStream>),
    /// The socket was handed to a handshake that failed; it is closed.
    Gone,
}

/// A TLS stream and the buffer its writes are gathered in.
#[derive(Debug)]
pub(crate) struct Tls {
    stream: TlsStream,
    /// Where small buffers are gathered into one record.
    gather: Vec<u8>,
}

impl Transport {
    pub(crate) fn tls(stream: TlsStream) -> Self {
        Transport::Tls(Box::new(Tls {
            stream,
            gather: Vec::new(),
        }))
    }

    /// The TCP socket, for socket options and `shutdown`.
    pub(crate) fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Transport::Plain(stream) => Some(stream),
            Transport::Tls(tls) => Some(tls.stream.tcp()),
            #[cfg(feature = "testing")]
            Transport::Stream(_) => None,
            Transport::Gone => None,
        }
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Polls for data: a buffer of up to `size` bytes, empty at the end of the stream.
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        size: usize,
    ) -> Poll<io::Result<BytesMut>> {
        // Every read lands in this thread's arena (see `arena`): the bytes read are handed over
        // split off its chunk, without an allocation or a copy of their own, and an idle
        // connection holds no buffer.
        match self {
            // `poll_read` (unlike `try_read`) clears the readiness after a short read, so the
            // next poll parks without a `recv` that would return EAGAIN.
            Transport::Plain(stream) => arena::read_with(size, |room| {
                arena::poll_read_into(Pin::new(stream), cx, room, size)
            }),
            // OpenSSL may hold decrypted bytes that no socket readiness announces: a TLS read is
            // polled with room ready every time, which the arena has. tokio-native-tls fills the
            // unfilled part of the buffer it is given on every poll: it gets room zeroed once per
            // poll instead (no more than the buffer it fills).
            Transport::Tls(tls) if tls.stream.fills_unfilled_room() => {
                arena::read_with(size, |room| {
                    arena::read_initialized(room, size, |bytes| {
                        let mut filled = ReadBuf::new(bytes);
                        ready!(Pin::new(&mut tls.stream).poll_read(cx, &mut filled))?;
                        Poll::Ready(Ok(filled.filled().len()))
                    })
                })
            }
            Transport::Tls(tls) => arena::read_with(size, |room| {
                arena::poll_read_into(Pin::new(&mut tls.stream), cx, room, size)
            }),
            #[cfg(feature = "testing")]
            Transport::Stream(stream) => stream.poll_read(cx, size),
            Transport::Gone => Poll::Ready(Ok(BytesMut::new())),
        }
    }

    /// [`Transport::poll_read`] for a connection that takes urgent data: the urgent byte
    /// waiting at the mark, if any, comes first, and reads go on past urgent marks.
    ///
    /// Linux forgets an urgent byte that an ordinary read steps over before `recv(MSG_OOB)` took
    /// it: a read that starts at the urgent mark skips the byte and clears it. So:
    /// - every read is preceded by a `recv(MSG_OOB)` (one more system call per read, on such
    ///   connections only);
    /// - a read runs only on fresh readiness (tokio's `poll_read`, which clears the readiness
    ///   after a short read). Fresh readiness means ordinary data came, and TCP delivers in
    ///   order: an urgent byte ahead of that data arrived before it, so the `recv(MSG_OOB)` just
    ///   before the read finds it. (A read on readiness left over from a read that filled the
    ///   whole buffer is the exception: it reads on while data is there.)
    /// - a read that ended short may have ended at an urgent mark, with data queued behind it
    ///   and no new readiness to come: the byte at the mark is taken at once (into
    ///   `at_mark`), and until the reads have gone past the mark they run without waiting for
    ///   readiness, until the socket says it is drained.
    pub(crate) fn poll_read_taking_urgent(
        &mut self,
        cx: &mut Context<'_>,
        size: usize,
        at_mark: &AtMark,
    ) -> Poll<io::Result<Received>> {
        let Transport::Plain(stream) = self else {
            return self.poll_read(cx, size).map_ok(Received::Data);
        };
        if let Ok(Some(byte)) = recv_urgent_byte(stream) {
            at_mark.passing.store(true, Relaxed);
            return Poll::Ready(Ok(Received::Urgent(byte)));
        }
        arena::read_with(size, |room| {
            if at_mark.passing.load(Relaxed) {
                // Past tokio's readiness: the data behind the mark brings none.
                let read = arena::read_initialized(room, size, |bytes| {
                    Poll::Ready((&*SockRef::from(&*stream)).read(bytes))
                });
                match read {
                    Poll::Ready(Err(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                        at_mark.passing.store(false, Relaxed);
                    }
                    result => return result,
                }
            }
            ready!(arena::poll_read_into(
                Pin::new(&mut *stream),
                cx,
                room,
                size
            ))?;
            let read = room.len();
            if 0 < read && read < size {
                if let Ok(Some(byte)) = recv_urgent_byte(stream) {
                    at_mark.hold(byte);
                }
            }
            Poll::Ready(Ok(()))
        })
        .map_ok(Received::Data)
    }

    /// Polls a write of the front of `buffers`; returns how many bytes were taken.
    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buffers: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self {
            // One buffer goes out with `send`, as tokio's own `write` does; several with `writev`.
            Transport::Plain(stream) if buffers.len() == 1 => {
                Pin::new(stream).poll_write(cx, &buffers[0])
            }
            Transport::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, buffers),
            Transport::Tls(tls) => {
                let Tls { stream, gather, .. } = &mut **tls;
                let first = buffers.first().map_or(&[][..], |buffer| &buffer[..]);
                if buffers.len() == 1 || first.len() >= TLS_RECORD / 2 {
                    return Pin::new(stream).poll_write(cx, first);
                }
                // The front of the queue does not change until it is written, so a retry after
                // `Pending` gathers the same bytes first, as OpenSSL requires.
                gather.clear();
                for buffer in buffers {
                    let room = TLS_RECORD - gather.len();
                    if room == 0 {
                        break;
                    }
                    gather.extend_from_slice(&buffer[..buffer.len().min(room)]);
                }
                Pin::new(stream).poll_write(cx, gather)
            }
            #[cfg(feature = "testing")]
            Transport::Stream(stream) => stream.poll_write(cx, buffers),
            Transport::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    /// Ready once a write may go through: on plain TCP when the socket has room (as far as
    /// tokio knows: a write may still find none, and then waits again); at once otherwise.
    pub(crate) fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Plain(stream) => stream.poll_write_ready(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    /// Polls the sending of TLS `close_notify`; nothing to do on plain TCP.
    pub(crate) fn poll_close_notify(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Tls(tls) => Pin::new(&mut tls.stream).poll_shutdown(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    /// Whether the peer acknowledged everything written, the FIN included: `Some(true)` once the
    /// kernel holds nothing unacknowledged, `None` where the platform does not tell (only Linux
    /// and Android do, here).
    pub(crate) fn all_acknowledged(&self) -> Option<bool> {
        #[cfg(feature = "testing")]
        if let Transport::Stream(stream) = self {
            return Some(stream.all_acknowledged());
        }
        self.tcp()
            .and_then(|tcp| unacknowledged(tcp).ok())
            .map(|bytes| bytes == 0)
    }

    /// Sends FIN (after `close_notify`, for TLS). Errors mean the peer is gone already.
    pub(crate) fn shutdown_write(&self) {
        #[cfg(feature = "testing")]
        if let Transport::Stream(stream) = self {
            return stream.shutdown_write();
        }
        if let Some(tcp) = self.tcp() {
            let _ = SockRef::from(tcp).shutdown(Shutdown::Write);
        }
    }

    /// Makes the close that dropping this transport does a reset: `SO_LINGER` 0 makes `close()`
    /// send RST and drop unsent data, the meaning of an abort.
    pub(crate) fn reset_on_close(&self) {
        #[cfg(feature = "testing")]
        if let Transport::Stream(stream) = self {
            return stream.reset_on_close();
        }
        if let Some(tcp) = self.tcp() {
            let _ = SockRef::from(tcp).set_linger(Some(Duration::ZERO));
        }
    }
}

/// What a read of a connection that takes urgent data brought.
#[derive(Debug)]
pub(crate) enum Received {
    /// Ordinary data, empty at the end of the stream.
    Data(BytesMut),
    /// The urgent byte.
    Urgent(u8),
}

/// The bytes of `tcp`'s send queue the peer has not acknowledged (`SIOCOUTQ`): what was
/// written and not yet acknowledged, plus one for a FIN not yet acknowledged.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[allow(unsafe_code)]
fn unacknowledged(tcp: &TcpStream) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut bytes: libc::c_int = 0;
    // SAFETY: `ioctl(SIOCOUTQ)` on a socket reads no memory of ours and writes one `int` through
    // its third argument, which points to `bytes`, a live, aligned, writable `c_int` for the
    // whole call. The descriptor is `tcp`'s, open while `tcp` is borrowed.
    let result = unsafe { libc::ioctl(tcp.as_raw_fd(), libc::TIOCOUTQ, &mut bytes) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(bytes).unwrap_or(0))
}

/// No way to ask here: treated as not acknowledged.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn unacknowledged(_tcp: &TcpStream) -> io::Result<usize> {
    Err(io::ErrorKind::Unsupported.into())
}
