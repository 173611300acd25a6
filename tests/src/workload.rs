//! The data-path workload the benchmarks share: a TCP sink behind a DNAT rule, one
//! connection pushing bytes, a loop of new connections, and the kernel's own statistics
//! of a loaded eBPF program. Benchmarks only: nothing here asserts.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Instant;

/// A TCP sink on `addr` that accepts every connection and drains it, one thread each.
/// Its threads live until the process exits (benchmarks are short-lived programs).
pub fn start_sink(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    Ok(())
}

/// MB/s pushed through one connection to `to` for `secs`, in 64 KiB writes.
pub fn throughput(to: SocketAddr, secs: f64) -> std::io::Result<f64> {
    let mut stream = TcpStream::connect(to)?;
    let chunk = vec![7u8; 1 << 16];
    let (t0, mut sent) = (Instant::now(), 0usize);
    while t0.elapsed().as_secs_f64() < secs {
        stream.write_all(&chunk)?;
        sent += chunk.len();
    }
    Ok(sent as f64 / t0.elapsed().as_secs_f64() / 1e6)
}

/// New connections per second to `to`, connect + close, for `secs`.
pub fn connection_rate(to: SocketAddr, secs: f64) -> std::io::Result<f64> {
    let (t0, mut n) = (Instant::now(), 0u64);
    while t0.elapsed().as_secs_f64() < secs {
        drop(TcpStream::connect(to)?);
        n += 1;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// `(run_cnt, run_time_ns)` of the newest loaded program named `name`, from `bpftool
/// prog show` (needs kernel.bpf_stats_enabled = 1 to count). bpftool shows the full BTF
/// name; the kernel's own is truncated to 15 characters, so both are matched.
pub fn program_stats(name: &str) -> Option<(u64, u64)> {
    let out = Command::new("bpftool").args(["prog", "show", "-j"]).output().ok()?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let short = &name[..name.len().min(15)];
    let prog = progs
        .as_array()?
        .iter()
        .rev()
        .find(|p| matches!(p["name"].as_str(), Some(n) if n == name || n == short))?;
    Some((prog["run_cnt"].as_u64()?, prog["run_time_ns"].as_u64()?))
}
