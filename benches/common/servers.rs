//! The servers the benchmarks compare, each on one thread of its own: switchboard's echo, a
//! minimal raw tokio echo (plain or over tokio-native-tls) and a bare mio loop (the floor); and
//! what their clients share (the test PKI, source addresses across 127.0.0.0/8, descriptor
//! limits). `benches/echo.rs`'s docs describe each server. Included by the benches that run
//! them with `#[path]`; not a bench itself.

use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;
use switchboard::socket2::{Domain, Socket, Type};
use switchboard::{async_trait, native_tls, BytesMut, Callbacks, Connection, Server, UserData};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::Notify;
use tokio_native_tls::TlsAcceptor;

use crate::common::{server_thread, SERVER_THREAD};

/// The test PKI (see `tests/certs/make.sh`): the CA the clients trust, and the server's
/// `localhost` certificate and key.
pub(crate) const CA_PEM: &[u8] = include_bytes!("../../tests/certs/ca.pem");
pub(crate) const SERVER_PEM: &[u8] = include_bytes!("../../tests/certs/server.pem");
pub(crate) const SERVER_KEY: &[u8] = include_bytes!("../../tests/certs/server.key");
/// The name the clients verify the server's certificate against (and send as SNI).
pub(crate) const TLS_DOMAIN: &str = "localhost";

/// Every server's listen backlog: switchboard's default. The raw tokio and mio servers set it
/// themselves, as `TcpListener::bind` of tokio and of mio (since 1.0) asks for the standard
/// library's 128, which a burst of connects overflows (SYNs dropped, retried a second later).
pub(crate) const LISTEN_BACKLOG: i32 = 1024;

// ---------------------------------------------------------------------------------------------
// The two servers
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Switchboard,
    Raw,
    /// The bare mio loop: plain TCP only.
    Mio,
}

/// The kinds that serve plain TCP, in the order of a round that starts with the baseline.
pub(crate) const PLAIN_KINDS: [Kind; 3] = [Kind::Raw, Kind::Switchboard, Kind::Mio];
/// The kinds that serve TLS.
pub(crate) const TLS_KINDS: [Kind; 2] = [Kind::Raw, Kind::Switchboard];

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Switchboard => "switchboard",
            Kind::Raw => "raw",
            Kind::Mio => "mio",
        }
    }

    /// The kind's column in a bench's table of results.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl std::str::FromStr for Kind {
    type Err = ();

    fn from_str(name: &str) -> Result<Kind, ()> {
        match name {
            "switchboard" => Ok(Kind::Switchboard),
            "raw" => Ok(Kind::Raw),
            "mio" => Ok(Kind::Mio),
            _ => Err(()),
        }
    }
}

/// A server's connection counts, and when a foreground server (`--echo-server`) is done.
pub(crate) struct Tally {
    /// Connections held now, by a raw tokio or mio server (switchboard counts its own).
    pub(crate) live: AtomicUsize,
    /// Connections that have ended so far, on any kind of server.
    pub(crate) ended: AtomicUsize,
    /// The number of ended connections after which the server stops; 0 for never.
    pub(crate) stop_after: usize,
    /// Woken once `stop_after` connections have ended.
    pub(crate) done: Notify,
}

impl Tally {
    pub(crate) fn new(stop_after: usize) -> Arc<Tally> {
        Arc::new(Tally {
            live: AtomicUsize::new(0),
            ended: AtomicUsize::new(0),
            stop_after,
            done: Notify::new(),
        })
    }

    pub(crate) fn opened(&self) {
        self.live.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closed(&self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.ended();
    }

    pub(crate) fn ended(&self) {
        if self.ended.fetch_add(1, Ordering::Relaxed) + 1 == self.stop_after {
            // Stores a permit if nobody waits yet.
            self.done.notify_one();
        }
    }

    pub(crate) fn finished(&self) -> bool {
        self.stop_after != 0 && self.ended.load(Ordering::Relaxed) >= self.stop_after
    }
}

/// The switchboard echo server: read, write the same buffer back, read again.
struct Echo {
    /// Told of every released connection, for a foreground server's end.
    tally: Arc<Tally>,
}

#[async_trait]
impl Callbacks for Echo {
    async fn on_connection_established(&self, connection: &Connection, _peer: &SocketAddr) {
        connection.read();
    }

    async fn on_read_completed(&self, connection: &Connection, data: BytesMut) {
        if connection.write(data.freeze()).is_ok() {
            connection.read();
        }
    }

    async fn on_socket_released(&self, _user_data: UserData) {
        self.tally.ended();
    }
}

/// The raw servers' accept: the next connection with `TCP_NODELAY` on, waiting out errors.
pub(crate) async fn raw_accept(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// The raw servers' connection loop: read into `buffer`, `write_all` what was read, until the end
/// of the stream or an error.
async fn raw_echo<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, buffer: &mut [u8]) {
    loop {
        let read = match stream.read(buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if stream.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
}

/// The raw tokio echo server's accept loop. `tally` counts connection tasks that hold their
/// buffer.
pub(crate) async fn raw_accept_loop(listener: TcpListener, tally: Arc<Tally>) {
    loop {
        let mut stream = raw_accept(&listener).await;
        let tally = tally.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0_u8; 8192];
            tally.opened();
            raw_echo(&mut stream, &mut buffer).await;
            tally.closed();
        });
    }
}

/// The raw tokio-native-tls echo server's accept loop: the handshake on the connection's task,
/// then the raw echo loop. `tally` counts connection tasks, handshaking ones included.
pub(crate) async fn raw_tls_accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tally: Arc<Tally>,
) {
    loop {
        let stream = raw_accept(&listener).await;
        let acceptor = acceptor.clone();
        let tally = tally.clone();
        tally.opened();
        tokio::spawn(async move {
            if let Ok(mut stream) = acceptor.accept(stream).await {
                let mut buffer = vec![0_u8; 8192];
                raw_echo(&mut stream, &mut buffer).await;
            }
            tally.closed();
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The bare mio echo server (the floor)
// ---------------------------------------------------------------------------------------------

/// The listener's token; connections use their slab keys, which stay far below it.
const MIO_LISTENER: Token = Token(usize::MAX);
/// Each mio connection's buffer: the size of switchboard's default read buffer and of raw tokio's.
const MIO_BUFFER: usize = 8192;
/// Readiness events taken per `epoll_wait`: as many as tokio's I/O driver takes.
const MIO_EVENTS: usize = 1024;
/// The pause before accepting again after a resource error (EMFILE, ENFILE, ENOBUFS): the first
/// step of switchboard's accept backoff.
const MIO_ACCEPT_RETRY: Duration = Duration::from_millis(5);

/// One connection of the mio server: its socket, its fixed buffer, and the part of the buffer
/// read but not yet written back.
struct MioConnection {
    stream: mio::net::TcpStream,
    buffer: Box<[u8]>,
    /// `buffer[sent..filled]` is still to be written back.
    sent: usize,
    filled: usize,
    /// Whether the registration includes WRITABLE: only while an unsent tail waits for room.
    wants_writable: bool,
}

impl MioConnection {
    fn new(stream: mio::net::TcpStream) -> MioConnection {
        MioConnection {
            stream,
            buffer: vec![0; MIO_BUFFER].into_boxed_slice(),
            sent: 0,
            filled: 0,
            wants_writable: false,
        }
    }

    /// Echoes until the socket would block; false when the connection is over (end of stream or
    /// an error). mio is edge-triggered: a readiness is reported once, so reads go on until
    /// `WouldBlock`, and a tail the kernel would not take waits, with reading paused, for a
    /// WRITABLE event. The buffer is read into again only once all of it went back.
    fn echo(&mut self, registry: &Registry, token: Token) -> bool {
        loop {
            while self.sent < self.filled {
                match self.stream.write(&self.buffer[self.sent..self.filled]) {
                    Ok(0) => return false,
                    Ok(written) => self.sent += written,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        if self.wants_writable {
                            return true;
                        }
                        // Re-registering reports a readiness that is already there, so no
                        // edge is lost between the failed write and this call.
                        self.wants_writable = true;
                        let interest = Interest::READABLE | Interest::WRITABLE;
                        return registry
                            .reregister(&mut self.stream, token, interest)
                            .is_ok();
                    }
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            if self.wants_writable {
                self.wants_writable = false;
                if registry
                    .reregister(&mut self.stream, token, Interest::READABLE)
                    .is_err()
                {
                    return false;
                }
            }
            match self.stream.read(&mut self.buffer) {
                Ok(0) => return false,
                Ok(read) => {
                    self.sent = 0;
                    self.filled = read;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return true,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

/// The mio echo server: one thread, one `epoll` (through [`mio::Poll`]), the connections in a
/// slab indexed by their tokens, each with a fixed [`MIO_BUFFER`]. Runs on the calling thread
/// until `tally` says to stop (for good in the bench); `tally` counts its connections.
pub(crate) fn mio_serve(mut listener: mio::net::TcpListener, tally: &Tally) -> io::Result<()> {
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, MIO_LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(MIO_EVENTS);
    let mut connections = Slab::<MioConnection>::new();
    let mut accept_blocked = false;
    loop {
        if let Err(error) = poll.poll(&mut events, accept_blocked.then_some(MIO_ACCEPT_RETRY)) {
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        // Accepting comes after the batch, so a key freed in it is not reused for a new
        // connection while the batch may still name it.
        let mut accept = accept_blocked;
        for event in events.iter() {
            let token = event.token();
            if token == MIO_LISTENER {
                accept = true;
                continue;
            }
            let Some(connection) = connections.get_mut(token.0) else {
                continue;
            };
            if !connection.echo(poll.registry(), token) {
                // Closing the only descriptor of the socket takes it out of the epoll set, so
                // no deregister call is needed (the FIN goes out with the close).
                drop(connections.remove(token.0));
                tally.closed();
            }
        }
        if tally.finished() {
            return Ok(());
        }
        if accept {
            accept_blocked = mio_accept(&listener, poll.registry(), &mut connections, tally);
        }
    }
}

/// Accepts every pending connection (mio's listener is edge-triggered too). Returns true if a
/// resource error (EMFILE and the like) stopped it, so the caller tries again after
/// [`MIO_ACCEPT_RETRY`]; per-connection errors just skip that connection.
fn mio_accept(
    listener: &mio::net::TcpListener,
    registry: &Registry,
    connections: &mut Slab<MioConnection>,
    tally: &Tally,
) -> bool {
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let _ = stream.set_nodelay(true);
                let entry = connections.vacant_entry();
                let token = Token(entry.key());
                // A connection readable already is reported at once after registering.
                if registry
                    .register(&mut stream, token, Interest::READABLE)
                    .is_ok()
                {
                    entry.insert(MioConnection::new(stream));
                    tally.opened();
                }
            }
            Err(error) => match error.kind() {
                io::ErrorKind::WouldBlock => return false,
                io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::Interrupted => {}
                _ => return true,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running servers
// ---------------------------------------------------------------------------------------------

/// One running server of any kind, on a thread of its own.
pub(crate) struct Running {
    pub(crate) address: SocketAddr,
    /// The runtime of the server's thread (none for the mio server, which has no runtime).
    pub(crate) runtime: Option<Handle>,
    pub(crate) switchboard: Option<Server>,
    pub(crate) tally: Arc<Tally>,
}

impl Running {
    /// Starts a server of `kind` on a new thread, a TLS one if given an acceptor (not for mio).
    pub(crate) fn start(kind: Kind, tls: Option<&native_tls::TlsAcceptor>) -> Running {
        if kind == Kind::Mio {
            assert!(tls.is_none(), "the mio server speaks plain TCP only");
            let listener = mio_listener();
            let address = listener.local_addr().expect("mio listens");
            let tally = Tally::new(0);
            let counts = tally.clone();
            std::thread::Builder::new()
                .name(SERVER_THREAD.into())
                .spawn(move || mio_serve(listener, &counts).expect("the mio server's poll"))
                .expect("spawn the mio server thread");
            return Running {
                address,
                runtime: None,
                switchboard: None,
                tally,
            };
        }
        let runtime = server_thread();
        let tally = Tally::new(0);
        match kind {
            Kind::Switchboard => {
                let server = runtime
                    .block_on(start_switchboard(tls, tally.clone()))
                    .expect("start the switchboard server");
                Running {
                    address: server.local_addr().expect("switchboard listens"),
                    runtime: Some(runtime),
                    switchboard: Some(server),
                    tally,
                }
            }
            Kind::Raw => {
                let listener = {
                    let _context = runtime.enter();
                    TcpListener::from_std(std_listener()).expect("the raw tokio listener")
                };
                let address = listener.local_addr().expect("raw tokio listens");
                match tls {
                    Some(acceptor) => runtime.spawn(raw_tls_accept_loop(
                        listener,
                        acceptor.clone().into(),
                        tally.clone(),
                    )),
                    None => runtime.spawn(raw_accept_loop(listener, tally.clone())),
                };
                Running {
                    address,
                    runtime: Some(runtime),
                    switchboard: None,
                    tally,
                }
            }
            Kind::Mio => unreachable!("started above"),
        }
    }

    /// Connections the server holds now.
    pub(crate) fn live(&self) -> usize {
        match &self.switchboard {
            Some(server) => server.active_connections(),
            None => self.tally.live.load(Ordering::Relaxed),
        }
    }

    /// Waits (up to `limit`) until the server holds exactly `count` connections.
    pub(crate) fn wait_for_live(&self, count: usize, limit: Duration) -> bool {
        let start = Instant::now();
        while self.live() != count {
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

/// Where every server listens (on a port of its choosing).
pub(crate) const LOCALHOST: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// A switchboard echo server with default settings, TLS if given an acceptor.
pub(crate) async fn start_switchboard(
    tls: Option<&native_tls::TlsAcceptor>,
    tally: Arc<Tally>,
) -> Result<Server, switchboard::Error> {
    let mut builder = Server::builder().bind(LOCALHOST);
    if let Some(acceptor) = tls {
        builder = builder.tls(acceptor.clone());
    }
    builder.start(Echo { tally }).await
}

/// The client side of the benches' TLS: a connector that trusts the test CA (and nothing else).
pub(crate) fn native_tls_connector() -> native_tls::TlsConnector {
    let ca = native_tls::Certificate::from_pem(CA_PEM).expect("parse the test CA");
    native_tls::TlsConnector::builder()
        .disable_built_in_roots(true)
        .add_root_certificate(ca)
        .build()
        .expect("build the TLS connector")
}

/// A non-blocking listener on [`LOCALHOST`] with switchboard's backlog ([`LISTEN_BACKLOG`]),
/// for the raw tokio and mio servers.
pub(crate) fn std_listener() -> std::net::TcpListener {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a listening socket");
    socket
        .set_reuse_address(true)
        .expect("SO_REUSEADDR on the listener");
    socket
        .bind(&LOCALHOST.into())
        .expect("bind a raw tokio or mio server");
    socket.listen(LISTEN_BACKLOG).expect("listen");
    socket
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    socket.into()
}

/// The mio server's listener.
pub(crate) fn mio_listener() -> mio::net::TcpListener {
    mio::net::TcpListener::from_std(std_listener())
}

/// The load generator's runtime.
pub(crate) fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

/// The client source address of connection `index` in the idle scenarios: `127.0.y.z`, cycling
/// through 127.0.0.1 to 127.0.255.254. Linux routes all of 127.0.0.0/8 to the loopback
/// interface, and each source address has its own ephemeral ports (about 28,000 in the default
/// `ip_local_port_range`), so the connection count is not bounded by one address's ports.
pub(crate) fn source_address(index: usize) -> SocketAddr {
    const HOSTS: usize = 254;
    let host = index % (256 * HOSTS);
    let (y, z) = ((host / HOSTS) as u8, (host % HOSTS + 1) as u8);
    SocketAddr::from(([127, 0, y, z], 0))
}

/// Descriptors each process keeps beside its connections: runtimes, listeners, pipes, and in
/// the parent the in-process servers.
pub(crate) const DESCRIPTOR_RESERVE: usize = 64;

/// This process's (soft, hard) limits on open descriptors (`ulimit -Sn`, `ulimit -Hn`).
#[cfg(unix)]
pub(crate) fn descriptor_limits() -> Option<(usize, usize)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let size = |value: libc::rlim_t| usize::try_from(value).unwrap_or(usize::MAX);
    Some((size(limit.rlim_cur), size(limit.rlim_max)))
}

#[cfg(not(unix))]
pub(crate) fn descriptor_limits() -> Option<(usize, usize)> {
    None
}

/// Raises this process's soft descriptor limit to `soft` (at most the hard limit); the memory
/// children inherit it.
#[cfg(unix)]
pub(crate) fn raise_descriptor_limit(soft: usize) -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as in `descriptor_limits`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    limit.rlim_cur = libc::rlim_t::try_from(soft)
        .unwrap_or(libc::rlim_t::MAX)
        .min(limit.rlim_max);
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(unix))]
pub(crate) fn raise_descriptor_limit(_soft: usize) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// The most descriptors a process may have on Linux whatever its hard limit (`fs.nr_open`).
pub(crate) fn system_descriptor_ceiling() -> usize {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(usize::MAX)
}
