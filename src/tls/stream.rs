//! A negotiated TLS stream over TCP, from whichever library negotiated it: native-tls (outgoing
//! connections, and accepted ones on an application's `native_tls::TlsAcceptor`) or OpenSSL
//! directly (accepted connections on the crate's own acceptor, where native-tls is OpenSSL).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::TlsInfo;
use crate::ids::Direction;

#[derive(Debug)]
pub(crate) enum TlsStream {
    Native(tokio_native_tls::TlsStream<TcpStream>),
    #[cfg(not(any(windows, target_vendor = "apple")))]
    OpenSsl(tokio_openssl::SslStream<TcpStream>),
}

impl TlsStream {
    /// The TCP socket under the TLS session.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            TlsStream::Native(stream) => stream.get_ref().get_ref().get_ref(),
            #[cfg(not(any(windows, target_vendor = "apple")))]
            TlsStream::OpenSsl(stream) => stream.get_ref(),
        }
    }

    /// Whether its reads fill the unfilled part of the buffer they are given, on every poll,
    /// before they read into it (tokio-native-tls does; tokio-openssl reads into it as it is).
    pub(crate) fn fills_unfilled_room(&self) -> bool {
        matches!(self, TlsStream::Native(_))
    }

    /// What the handshake negotiated, `side` being ours.
    pub(crate) fn info(&self, side: Direction) -> TlsInfo {
        match self {
            TlsStream::Native(stream) => TlsInfo::from_native(side, stream.get_ref()),
            #[cfg(not(any(windows, target_vendor = "apple")))]
            TlsStream::OpenSsl(stream) => TlsInfo::from_openssl(side, stream.ssl()),
        }
    }
}

// Both are `Unpin` (over a `TcpStream`), so each poll pins the one inside in place.
impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsStream::Native(stream) => Pin::new(stream).poll_read(cx, buf),
            #[cfg(not(any(windows, target_vendor = "apple")))]
            TlsStream::OpenSsl(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TlsStream::Native(stream) => Pin::new(stream).poll_write(cx, buf),
            #[cfg(not(any(windows, target_vendor = "apple")))]
            TlsStream::OpenSsl(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsStream::Native(stream) => Pin::new(stream).poll_flush(cx),
            #[cfg(not(any(windows, target_vendor = "apple")))]
            TlsStream::OpenSsl(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    /// Sends `close_notify`. tokio-openssl's also shuts down the socket's write side once it is
    /// out; the driver sends that FIN right after `close_notify` on either stream anyway.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsStream::Native(stream) => Pin::new(stream).poll_shutdown(cx),
            #[cfg(not(any(windows, target_vendor = "apple")))]
            TlsStream::OpenSsl(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}
