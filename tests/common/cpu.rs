//! CPU time from `/proc` (Linux), to tell an idle process or thread from a spinning one.

use std::time::Duration;

/// Clock ticks per second of the CPU times in `/proc` (`USER_HZ`, 100 on Linux).
pub const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system time, in clock ticks, from the text of a `/proc/.../stat` file.
fn ticks_of_stat(stat: &str) -> u64 {
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after "pid (comm)".
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// CPU time (user + system, in clock ticks) process `pid` has used.
pub fn cpu_ticks(pid: u32) -> u64 {
    ticks_of_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap())
}

/// CPU time (user + system, in clock ticks) this process's threads named `name` have used
/// (Linux keeps the first 15 bytes of a thread's name).
pub fn thread_cpu_ticks(name: &str) -> u64 {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path();
        // A thread may end between the listing and the reads.
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if comm.trim_end() != name {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(path.join("stat")) {
            ticks += ticks_of_stat(&stat);
        }
    }
    ticks
}

/// The share of one core that `ticks` of CPU time over `elapsed` wall time is.
pub fn core_share(ticks: u64, elapsed: Duration) -> f64 {
    ticks as f64 / TICKS_PER_SECOND / elapsed.as_secs_f64()
}
