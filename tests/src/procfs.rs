//! What `/proc` says about a process: its CPU time and memory figures. Benchmarks read
//! them (loader, controller, the reload benchmark); one parser, so they agree.
use std::io;

/// User + system CPU time of process `pid` so far, in ns (`/proc/<pid>/stat`, in clock
/// ticks of `sysconf(_SC_CLK_TCK)`, not an assumed USER_HZ).
pub fn cpu_ns(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces) start after its ')'.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat(5): 11 and 12 after the ')'.
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok((ticks(11) + ticks(12)) * 1_000_000_000 / hz)
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
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(30) {}
        assert!(cpu_ns(pid).expect("stat") > 0);
    }
}
