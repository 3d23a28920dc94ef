//! What the examples' `main`s do alike: parse the options, print a line at once, and run the
//! program on a runtime of the size asked for; the [`line`] where connections wait until they
//! show they are real; and the [`metrics`] endpoint. Included by each example with `#[path]`; not an example itself.
// Each example uses only some of it.
#![allow(dead_code)]

pub(crate) mod line;
pub(crate) mod metrics;

use std::fmt;
use std::future::Future;
use std::io::Write;
use std::process::ExitCode;

/// Prints one line on stdout and flushes it, so that a script or a test reading the output sees
/// it at once.
pub(crate) fn say(line: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A whole `main`: the options `parse` makes of the command line (on a usage error, its message
/// on stderr and exit status 2), then `program` with them, [`run`] on the runtime size `threads`
/// reads from them.
pub(crate) fn main<O, E: fmt::Display, F: Future<Output = Result<(), E>>>(
    name: &str,
    parse: impl FnOnce() -> Result<O, String>,
    threads: impl FnOnce(&O) -> Option<usize>,
    program: impl FnOnce(O) -> F,
) -> ExitCode {
    match parse() {
        Ok(options) => run(name, threads(&options), program(options)),
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}

/// Runs `program` on a tokio runtime with `threads` worker threads (one: a current-thread
/// runtime; `None`: tokio's default), and gives the exit status: 0, or 1 after printing
/// `name: error` on stderr.
pub(crate) fn run<E: fmt::Display>(
    name: &str,
    threads: Option<usize>,
    program: impl Future<Output = Result<(), E>>,
) -> ExitCode {
    let runtime = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(threads) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{name}: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(program) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error}");
            ExitCode::FAILURE
        }
    }
}
