//! Benchmarks of the loader's socket under load (issue 13). Run as root:
//!   cargo build --release --bins && E2E_PROFILE=release cargo run --release -p e2e-tests --example bench_socket
//! Prints, for docs/benchmarks.md:
//! - `GetStatus` p50/p99 with an empty and a full map (131,072 slots), sequential calls,
//!   and how the fill level was counted
//! - health-check p50/p99 (fresh connection each, every 20 ms) while 32 callers loop
//!   `GetStatus`, and while 20 callers loop `ListConntrack` on the full map
//! - mixed throughput: 100 clients × 1,000 calls (lookups, 1 in 50 `GetStatus`)
//! - loader RSS idle, after 20,000 connections came and went, and its high-water mark
//!
//! `BENCH_SECS` sets each loop phase's length (default 10).
use std::path::Path;
use std::time::{Duration, Instant};

use e2e_tests::api_load::{self, HealthProbe, LoaderClient};
use e2e_tests::loader::{LoaderOptions, LoaderProcess};
use e2e_tests::map_fill;
use shared_proto::loader::v1 as pb;

const SLOTS: u32 = 131_072;

fn main() -> anyhow::Result<()> {
    let secs = std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let loop_for = Duration::from_secs(secs);
    let loader = LoaderProcess::start(LoaderOptions::default());
    let pid = loader.process.pid();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        println!("loader RSS idle: {:.1} MB", api_load::rss_mb(pid).0);
        let failed = churn_connections(&loader.socket, 20_000).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!(
            "loader RSS after 20,000 connections came and went: {:.1} MB ({failed} calls failed)",
            api_load::rss_mb(pid).0
        );

        let mut client = api_load::client(&loader.socket).await?;
        status_latency("empty map", &mut client).await?;
        map_fill::fill(map_fill::conntrack_map_id(pid)?, SLOTS / 2)?;
        status_latency("full map", &mut client).await?;

        health_while("32 callers loop GetStatus", &loader.socket, 32, loop_for, |mut c| async move {
            c.get_status(pb::GetStatusRequest {}).await.map(|_| ())
        })
        .await?;
        health_while("20 callers loop ListConntrack (full map)", &loader.socket, 20, loop_for, |mut c| async move {
            api_load::list_all(&mut c).await.map(|_| ())
        })
        .await?;

        let report = api_load::mixed(&loader.socket, 100, 1_000, SLOTS / 2).await;
        println!(
            "mixed, 100 clients x 1,000 calls, full map: {:.0} calls/s ({} calls in {:.2} s, {} errors, {} wrong answers)",
            report.calls as f64 / report.elapsed.as_secs_f64(),
            report.calls,
            report.elapsed.as_secs_f64(),
            report.errors.len(),
            report.wrong_answers
        );
        let (rss, peak) = api_load::rss_mb(pid);
        println!("loader RSS at the end: {rss:.1} MB, high-water mark {peak:.1} MB");
        anyhow::Ok(())
    })
}

/// `n` connections, 100 at a time, each making one `GetStatus` call and closing; returns
/// how many failed (refused past `api.limits.max_connections` while closed ones drain).
async fn churn_connections(socket: &Path, n: usize) -> anyhow::Result<usize> {
    let mut failed = 0;
    for _ in 0..n / 100 {
        let mut wave = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let socket = socket.to_path_buf();
            wave.spawn(async move {
                let mut client = api_load::client(&socket).await?;
                client.get_status(pb::GetStatusRequest {}).await?;
                anyhow::Ok(())
            });
        }
        while let Some(done) = wave.join_next().await {
            if done?.is_err() {
                failed += 1;
            }
        }
    }
    Ok(failed)
}

/// p50/p99 of 200 sequential `GetStatus` calls, and how the fill level was counted (the
/// kernel's element counter from Linux 6.6: every call is exact; before, a walk shared
/// for 10 s).
async fn status_latency(label: &str, client: &mut LoaderClient) -> anyhow::Result<()> {
    let mut latencies = Vec::new();
    let mut counted_by = String::new();
    for _ in 0..200 {
        let start = Instant::now();
        let status = client.get_status(pb::GetStatusRequest {}).await?.into_inner();
        latencies.push(start.elapsed());
        let maps = status.modules.iter().flat_map(|m| m.maps.iter());
        if let Some(map) = maps.into_iter().next() {
            counted_by = format!("{} entries, counted by {}", map.entries, map.counted_by);
        }
    }
    println!(
        "GetStatus, {label}: p50 {:.2} ms, p99 {:.2} ms (200 calls; {counted_by})",
        api_load::percentile_ms(&mut latencies, 50.0),
        api_load::percentile_ms(&mut latencies, 99.0),
    );
    Ok(())
}

/// Health-check latencies while `callers` clients loop `call` for `duration`.
async fn health_while<F, Fut>(
    label: &str,
    socket: &Path,
    callers: usize,
    duration: Duration,
    call: F,
) -> anyhow::Result<()>
where
    F: Fn(LoaderClient) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let probe = HealthProbe::start(socket, Duration::from_millis(20));
    let deadline = Instant::now() + duration;
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let (socket, call) = (socket.to_path_buf(), call.clone());
        loops.spawn(async move {
            let client = api_load::client(&socket).await?;
            let mut calls = 0u64;
            while Instant::now() < deadline {
                call(client.clone()).await?;
                calls += 1;
            }
            anyhow::Ok(calls)
        });
    }
    let mut calls = 0;
    while let Some(done) = loops.join_next().await {
        calls += done??;
    }
    let (mut latencies, missed) = probe.stop().await;
    println!(
        "health while {label}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} checks, {missed} over 1 s or failed; {calls} calls made)",
        api_load::percentile_ms(&mut latencies, 50.0),
        api_load::percentile_ms(&mut latencies, 99.0),
        api_load::percentile_ms(&mut latencies, 100.0),
        latencies.len()
    );
    Ok(())
}
