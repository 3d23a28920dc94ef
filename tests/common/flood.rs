//! A silent flood ([`SilentFlood`]): connections that never send a byte, each opened again as soon
//! as the server closes it, as an attacker holding a server's slots would. It raises the soft
//! descriptor limit it needs (children started afterwards inherit it).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::{eventually, WAIT};

/// `count` connections to one address that say nothing and read until the server closes them,
/// then connect again, until dropped.
pub struct SilentFlood {
    count: usize,
    counts: Arc<FloodCounts>,
    _tasks: JoinSet<()>,
}

#[derive(Default)]
struct FloodCounts {
    /// Connected now (the kernel completed the handshake; the server may not have accepted yet).
    open: AtomicUsize,
    /// Connects that succeeded, in all.
    connects: AtomicU64,
    /// Connections the server ended (FIN or reset).
    ended: AtomicU64,
}

impl SilentFlood {
    /// Starts `count` silent connections to `address`, after raising the soft descriptor limit to
    /// leave room for them (and for a server started after this, which inherits it).
    pub fn start(address: SocketAddr, count: usize) -> SilentFlood {
        ensure_descriptors(count * 2 + 256);
        let counts = Arc::new(FloodCounts::default());
        let mut tasks = JoinSet::new();
        for _ in 0..count {
            let counts = counts.clone();
            tasks.spawn(async move {
                loop {
                    let stream = tokio::time::timeout(WAIT, TcpStream::connect(address)).await;
                    let Ok(Ok(mut stream)) = stream else {
                        // Refused or timed out (a full backlog drops SYNs): try again soon.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    counts.connects.fetch_add(1, Ordering::Relaxed);
                    counts.open.fetch_add(1, Ordering::Relaxed);
                    let mut buffer = [0; 512];
                    while let Ok(read) = stream.read(&mut buffer).await {
                        if read == 0 {
                            break;
                        }
                    }
                    counts.open.fetch_sub(1, Ordering::Relaxed);
                    counts.ended.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        SilentFlood {
            count,
            counts,
            _tasks: tasks,
        }
    }

    /// Waits (bounded) until the flood has connected as many times as it has connections: each
    /// has been opened (and, if the server closed it at once, opened again).
    pub async fn until_connected(&self) {
        eventually("the flood's connections to open", || {
            self.connects() >= self.count as u64
        })
        .await;
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts.open.load(Ordering::Relaxed)
    }

    /// Connects that succeeded so far.
    pub fn connects(&self) -> u64 {
        self.counts.connects.load(Ordering::Relaxed)
    }

    /// Connections the server has ended so far.
    pub fn ended(&self) -> u64 {
        self.counts.ended.load(Ordering::Relaxed)
    }
}

/// Raises this process's soft limit on open descriptors to at least `needed` (within the hard
/// limit); panics, saying so, if the hard limit is lower.
pub fn ensure_descriptors(needed: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which outlives the call.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(got, 0, "getrlimit: {}", std::io::Error::last_os_error());
    let needed = libc::rlim_t::try_from(needed).unwrap_or(libc::rlim_t::MAX);
    if limit.rlim_cur >= needed {
        return;
    }
    assert!(
        limit.rlim_max >= needed,
        "this test needs {needed} descriptors and the hard limit (ulimit -Hn) is {}",
        limit.rlim_max
    );
    limit.rlim_cur = needed;
    // SAFETY: setrlimit only reads the struct it is given.
    let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(set, 0, "setrlimit: {}", std::io::Error::last_os_error());
}
