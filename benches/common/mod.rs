//! What the benchmarks share: the server thread each server runs on, the CPU time it used, and
//! the medians and number formats they report with.
//! Included by each bench with `#[path]`; not a bench itself.

use tokio::runtime::Handle;

/// Name of every server thread: [`server_cpu_seconds`] counts the CPU time of these.
pub(crate) const SERVER_THREAD: &str = "server";

/// A new thread named [`SERVER_THREAD`] that drives a current-thread tokio runtime for good, and
/// that runtime's handle: one server's whole runtime (I/O driver, timers, every task) on one
/// thread, like the mio server, so server CPU per operation compares one core's work each.
/// Futures given to [`Handle::block_on`] from other threads run there, while the tasks they
/// spawn run on the server thread.
pub(crate) fn server_thread() -> Handle {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(SERVER_THREAD.into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build a server runtime");
            sender
                .send(runtime.handle().clone())
                .expect("hand over the runtime");
            runtime.block_on(std::future::pending::<()>());
        })
        .expect("spawn a server thread");
    receiver.recv().expect("the server thread's runtime")
}

/// CPU time (user + system) used so far by this process's threads named `server` (the server
/// runtime's workers), from `/proc/self/task/*/stat`, in seconds. The kernel counts it in clock
/// ticks of 10 ms (`CLK_TCK` is 100 on Linux), so a 2 s window resolves to about 0.5 %.
pub(crate) fn server_cpu_seconds() -> f64 {
    const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ticks = 0_u64;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: the name may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if &stat[open + 1..close] != SERVER_THREAD {
            continue;
        }
        // After the name: state is field 3, utime field 14, stime field 15.
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |index: usize| fields.get(index).and_then(|f| f.parse::<u64>().ok());
        ticks += field(11).unwrap_or(0) + field(12).unwrap_or(0);
    }
    ticks as f64 / CLOCK_TICKS_PER_SECOND
}

/// The median of `values` (the mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 0 {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

/// `value` rounded to a whole number, with thousands separated by commas.
pub(crate) fn thousands(value: f64) -> String {
    let digits = format!("{value:.0}");
    let (sign, digits) = match digits.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", digits.as_str()),
    };
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    format!("{sign}{out}")
}
