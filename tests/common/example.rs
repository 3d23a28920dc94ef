//! The `echo_server` example as a child process: started from the binary `cargo test` builds next
//! to the test binaries, its stdout collected line by line, stopped with SIGTERM (unix) or killed
//! however the test ends.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{ChildLog, WAIT};

/// The example's executable: `target/<profile>/examples/NAME`, beside `target/<profile>/deps`
/// where this test binary runs from. `cargo test` builds the examples before it runs the tests;
/// `cargo test --test X` does not, hence the hint.
pub fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = profile
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo test` (which builds the examples) or `cargo build --examples`",
        path.display()
    );
    path
}

/// A running example; killed and reaped when dropped.
pub struct Example {
    child: Child,
    pub log: ChildLog,
}

impl Example {
    /// Starts example `name` with `args`, its stdout collected in [`Example::log`].
    pub fn start(name: &str, args: &[&str]) -> Example {
        let mut child = Command::new(example_path(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {name}: {error}"));
        let log = ChildLog::default();
        log.collect(child.stdout.take().expect("piped stdout"));
        Example { child, log }
    }

    /// The value of the first line starting with `prefix`, waiting for it (at most [`WAIT`]).
    pub fn line_value(&self, prefix: &str) -> String {
        self.log.wait(&format!("a line {prefix:?}"), |log| {
            log.lines().iter().any(|line| line.starts_with(prefix))
        });
        self.log
            .lines()
            .iter()
            .find_map(|line| line.strip_prefix(prefix).map(str::to_string))
            .expect("the line waited for")
    }

    /// Sends SIGTERM and waits (at most [`WAIT`]) for the exit.
    #[cfg(unix)]
    pub fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the example") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the example did not exit after SIGTERM; it said: {:?}",
                self.log.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
