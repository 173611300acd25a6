//! What `/proc` says about a process: its CPU time and memory figures, its threads'
//! scheduling policies. Benchmarks read them (loader, controller, the reload benchmark);
//! one parser, so they agree.
use std::io;

/// User + system CPU time of process `pid` so far, in ns (`/proc/<pid>/stat`, in clock
/// ticks of `sysconf(_SC_CLK_TCK)`, not an assumed USER_HZ).
pub fn cpu_ns(pid: u32) -> io::Result<u64> {
    let fields = stat_fields(&format!("/proc/{pid}/stat"))?;
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat(5): 11 and 12 after the ')'.
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok((ticks(11) + ticks(12)) * 1_000_000_000 / hz)
}

/// The fields of a `stat` file after the command name (which may hold spaces): field
/// `n` of stat(5) is at index `n - 3`.
fn stat_fields(path: &str) -> io::Result<Vec<String>> {
    let stat = std::fs::read_to_string(path)?;
    Ok(stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split_whitespace()
        .map(String::from)
        .collect())
}

/// Each thread of process `pid`: its name, scheduling policy (`libc::SCHED_*`, field 41
/// of stat(5)) and nice value (field 19). Threads that end while they are read are left out.
pub fn thread_policies(pid: u32) -> io::Result<Vec<ThreadPriority>> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?.path();
        let (Ok(name), Ok(fields)) =
            (std::fs::read_to_string(task.join("comm")), stat_fields(&task.join("stat").to_string_lossy()))
        else {
            continue;
        };
        let field = |index: usize, what: &str| {
            fields.get(index).and_then(|v| v.parse().ok()).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("no {what} in {}/stat", task.display()))
            })
        };
        threads.push(ThreadPriority {
            name: name.trim_end().to_string(),
            policy: field(38, "policy")?,
            nice: field(16, "nice")?,
        });
    }
    Ok(threads)
}

/// A thread's name, scheduling policy (`SCHED_*`) and nice value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadPriority {
    pub name: String,
    pub policy: i32,
    pub nice: i32,
}

/// A `/proc/<pid>/status` field given in kB, e.g. `VmRSS` or `VmHWM` (without the colon).
pub fn status_kb(pid: u32, field: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|rest| rest.strip_prefix(':')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no {field} in /proc/{pid}/status")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(status_kb(pid, "VmRSS").expect("VmRSS") > 0);
        assert!(status_kb(pid, "VmHWM").expect("VmHWM") >= status_kb(pid, "VmRSS").expect("VmRSS") / 2);
        assert!(status_kb(pid, "NoSuchField").is_err());
        // Burn CPU until a clock tick is charged (on a loaded machine that can take a
        // while of wall time): the figure must then be positive.
        let spin = std::time::Instant::now();
        while cpu_ns(pid).expect("stat") == 0 && spin.elapsed() < std::time::Duration::from_secs(10) {}
        assert!(cpu_ns(pid).expect("stat") > 0, "no CPU time charged after {:?} of spinning", spin.elapsed());
    }
}
