//! The `rpc_client` example: client tasks on awaitable client connections send length-prefixed
//! requests and verify every reply, against the example's own server on the frame layer, and
//! against a separate `rpc_client --serve-only` process. Bounded waits; the example binary is the
//! one `cargo test` builds.
#![cfg(target_os = "linux")]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs `rpc_client` with `args` to its end (at most [`WAIT`] × 3) and returns its last line
/// and whether it exited 0.
fn run(args: &[&str]) -> (String, bool) {
    let mut child = Command::new(example_binary("rpc_client"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start rpc_client");
    let log = ChildLog::collect(child.stdout.take().unwrap());
    let deadline = Instant::now() + WAIT * 3;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("rpc_client did not finish; it said {:?}", log.lines());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    log.wait("the summary", |log| {
        log.lines().iter().any(|line| line.starts_with("requests="))
    });
    let last = log.lines().last().cloned().unwrap();
    (last, status.success())
}

#[test]
fn every_reply_is_verified_against_the_examples_own_server() {
    let (summary, success) = run(&["--clients", "20", "--requests", "300", "--size", "100"]);
    assert!(
        summary.starts_with("requests=6000 verified=6000 failed=0 "),
        "{summary}"
    );
    assert!(success);
}

#[test]
fn every_reply_is_verified_against_a_server_in_another_process() {
    let mut server = EchoServer::start_example("rpc_client", &["--serve-only"]);
    let address = server.address.to_string();
    let (summary, success) = run(&[
        "--connect",
        &address,
        "--clients",
        "8",
        "--requests",
        "200",
        "--size",
        "5000",
    ]);
    assert!(
        summary.starts_with("requests=1600 verified=1600 failed=0 "),
        "{summary}"
    );
    assert!(success);
    let status = server.stop();
    assert_eq!(status.code(), Some(0));
}
