//! The data-path workload the benchmarks share: a TCP sink behind a DNAT rule, one
//! connection pushing bytes, a loop of new connections, and the kernel's own statistics
//! of a loaded eBPF program. Benchmarks only: nothing here asserts.
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;

/// A TCP sink on `addr` that accepts every connection and drains it: one thread with a
/// single-threaded tokio runtime, a task per connection, and a deep accept queue. (A
/// thread per connection could not accept as fast as a connect loop opens them: every
/// accept-queue overflow cost the client a 1 s SYN retransmission, and the connection
/// rate measured those stalls instead of the data path.) Lives until the process exits
/// (benchmarks are short-lived programs).
pub fn start_sink(addr: SocketAddr) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    let listener = {
        let _entered = runtime.enter();
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(4096)?
    };
    std::thread::spawn(move || {
        runtime.block_on(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1 << 16];
                    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        })
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
    let prog = newest_program(name)?;
    Some((prog["run_cnt"].as_u64()?, prog["run_time_ns"].as_u64()?))
}

/// The id of the newest loaded program named `name`: taken right after a loader starts,
/// it names that loader's program even when other loaders on the machine load theirs
/// later (their hooks see every namespace's packets too).
pub fn newest_program_id(name: &str) -> Option<u64> {
    newest_program(name)?["id"].as_u64()
}

/// `(run_cnt, run_time_ns)` of the program with kernel id `id` (see [`program_stats`]).
pub fn program_stats_by_id(id: u64) -> Option<(u64, u64)> {
    let out = Command::new("bpftool").args(["prog", "show", "id", &id.to_string(), "-j"]).output().ok()?;
    let prog: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some((prog["run_cnt"].as_u64().unwrap_or(0), prog["run_time_ns"].as_u64().unwrap_or(0)))
}

fn newest_program(name: &str) -> Option<serde_json::Value> {
    let out = Command::new("bpftool").args(["prog", "show", "-j"]).output().ok()?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let short = &name[..name.len().min(15)];
    progs
        .as_array()?
        .iter()
        .rev()
        .find(|p| matches!(p["name"].as_str(), Some(n) if n == name || n == short))
        .cloned()
}
