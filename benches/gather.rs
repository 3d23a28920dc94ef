//! Where copying small buffers into one beats handing them to `writev`: the cut-over behind
//! the driver's gathering of small queued buffers (`GATHER_BELOW` in
//! `src/server/driver/write.rs`).
//!
//! ```text
//! cargo bench --bench gather
//! cargo bench --bench gather -- --quick
//! ```
//!
//! A loopback TCP connection, its reader draining on a thread of its own. The writer sends
//! `count` buffers of `size` bytes per call, two ways: one `writev` with an iovec per buffer,
//! or the buffers copied into one reused `Vec` and sent with one `write`. Each way sends the
//! same bytes (8 MiB per measurement; 2 MiB with `--quick`), and the writing thread's CPU time
//! (user and system: on loopback the kernel's receive work mostly runs in the sender's system
//! call too) is what is compared, ways alternated, the median of 5 rounds (3 with `--quick`).
//! Printed: CPU per KiB sent each way, and copy ÷ writev (below 1: copying is cheaper).

#[cfg(unix)]
fn main() {
    unix::main();
}

#[cfg(not(unix))]
fn main() {
    eprintln!("the gather bench measures thread CPU time, which it reads on Unix only");
}

#[cfg(unix)]
mod unix {
    use std::io::{IoSlice, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    const SIZES: [usize; 7] = [16, 64, 256, 512, 1024, 2048, 4096];
    const COUNTS: [usize; 4] = [2, 4, 16, 64];

    /// The calling thread's CPU time, in seconds.
    fn thread_cpu() -> f64 {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `clock_gettime` writes one `timespec` through its second argument, which
        // points to `now`, a live, aligned, writable `timespec` for the whole call.
        #[allow(unsafe_code)]
        let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
        assert_eq!(result, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
        now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
    }

    fn median(values: &mut [f64]) -> f64 {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    }

    /// Sends `total` bytes as calls of `count` buffers of `size`; returns the CPU seconds.
    fn send(stream: &mut TcpStream, size: usize, count: usize, total: usize, copy: bool) -> f64 {
        let buffers: Vec<Vec<u8>> = (0..count).map(|i| vec![i as u8; size]).collect();
        let mut gathered = Vec::with_capacity(size * count);
        let calls = total / (size * count);
        let start = thread_cpu();
        for _ in 0..calls {
            if copy {
                gathered.clear();
                for buffer in &buffers {
                    gathered.extend_from_slice(buffer);
                }
                stream.write_all(&gathered).expect("write");
            } else {
                write_all_vectored(stream, &buffers);
            }
        }
        thread_cpu() - start
    }

    /// All of `buffers`, with `writev` (again for the rest after a short write).
    fn write_all_vectored(stream: &mut TcpStream, buffers: &[Vec<u8>]) {
        let total: usize = buffers.iter().map(Vec::len).sum();
        let mut sent = 0;
        while sent < total {
            let mut slices = Vec::with_capacity(buffers.len());
            let mut start = 0;
            for buffer in buffers {
                let end = start + buffer.len();
                if end > sent {
                    slices.push(IoSlice::new(&buffer[sent.saturating_sub(start)..]));
                }
                start = end;
            }
            sent += stream.write_vectored(&slices).expect("writev");
        }
    }

    pub(super) fn main() {
        let quick = std::env::args().any(|arg| arg == "--quick");
        let (rounds, total) = if quick { (3, 2 << 20) } else { (5, 8 << 20) };
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut stream =
            TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (mut reader, _) = listener.accept().expect("accept");
        std::thread::spawn(move || {
            let mut buffer = vec![0; 256 * 1024];
            while matches!(reader.read(&mut buffer), Ok(n) if n > 0) {}
        });
        std::thread::sleep(Duration::from_millis(50));
        println!(
            "{:>6} {:>6} {:>14} {:>14} {:>12}",
            "size", "count", "writev ns/KiB", "copy ns/KiB", "copy/writev"
        );
        for size in SIZES {
            for count in COUNTS {
                let (mut writev, mut copy) = (Vec::new(), Vec::new());
                for round in 0..rounds {
                    for way in 0..2 {
                        // Alternating which way goes first.
                        let copying = (round + way) % 2 == 1;
                        let seconds = send(&mut stream, size, count, total, copying);
                        let per_kib = seconds * 1e9 / (total as f64 / 1024.0);
                        if copying {
                            copy.push(per_kib);
                        } else {
                            writev.push(per_kib);
                        }
                    }
                }
                let (writev, copy) = (median(&mut writev), median(&mut copy));
                println!(
                    "{size:>6} {count:>6} {writev:>14.0} {copy:>14.0} {:>12.2}",
                    copy / writev
                );
            }
        }
    }
}
