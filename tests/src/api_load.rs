//! Load on the loader's socket, shared by the load test and the socket benchmark: gRPC
//! clients over the real unix socket, a health prober that times every readiness check,
//! and a mixed workload (lookups, status, listings) against a filled conntrack map.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use shared_proto::loader::v1 as pb;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::map_fill::FILL_NETNS;

pub type LoaderClient = pb::loader_client::LoaderClient<Channel>;

/// One connection (HTTP/2 channel) to the loader's socket.
pub async fn channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = socket.to_path_buf();
    Endpoint::from_static("http://loader.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
}

pub async fn client(socket: &Path) -> Result<LoaderClient, tonic::transport::Error> {
    Ok(LoaderClient::new(channel(socket).await?))
}

/// Latencies of health checks made every `interval` until stopped, each on a fresh
/// connection with a 1 s deadline (a readiness probe's), and how many missed it.
pub struct HealthProbe {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<Duration>, usize)>,
}

impl HealthProbe {
    pub fn start(socket: &Path, interval: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (socket, flag) = (socket.to_path_buf(), stop.clone());
        let task = tokio::spawn(async move {
            let (mut latencies, mut failures) = (Vec::new(), 0);
            while !flag.load(Ordering::Relaxed) {
                let start = Instant::now();
                match tokio::time::timeout(Duration::from_secs(1), check(&socket)).await {
                    Ok(Ok(())) => latencies.push(start.elapsed()),
                    _ => failures += 1,
                }
                tokio::time::sleep(interval).await;
            }
            (latencies, failures)
        });
        Self { stop, task }
    }

    /// (latencies of the answered checks, checks that failed or took over 1 s).
    pub async fn stop(self) -> (Vec<Duration>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

async fn check(socket: &Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut health = HealthClient::new(channel(socket).await?);
    health.check(HealthCheckRequest { service: "loader.v1.Loader".into() }).await?;
    Ok(())
}

/// What a mixed run did.
#[derive(Debug, Default)]
pub struct MixedReport {
    pub calls: u64,
    pub errors: Vec<String>,
    /// Lookups that came back wrong: a filled connection with the wrong (or no)
    /// translation, or one never filled found.
    pub wrong_answers: u64,
    /// The filled connections (their index in [`crate::map_fill::fill`]) among those.
    pub wrong_filled: Vec<u32>,
    pub elapsed: Duration,
}

/// `clients` connections, each making `calls_each` calls: 1 in 50 a `GetStatus`, the rest
/// `LookupTranslation`s, alternately of a filled connection (`filled` of them, see
/// [`crate::map_fill`]) and of one that does not exist.
pub async fn mixed(socket: &Path, clients: usize, calls_each: usize, filled: u32) -> MixedReport {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let socket: PathBuf = socket.to_path_buf();
        tasks.spawn(async move { one_client(&socket, c, calls_each, filled).await });
    }
    let mut report = MixedReport::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(part) => {
                report.calls += part.calls;
                report.errors.extend(part.errors);
                report.wrong_answers += part.wrong_answers;
                report.wrong_filled.extend(part.wrong_filled);
            }
            Err(e) => report.errors.push(format!("client task: {e}")),
        }
    }
    report.elapsed = start.elapsed();
    report
}

async fn one_client(socket: &Path, c: usize, calls_each: usize, filled: u32) -> MixedReport {
    let mut report = MixedReport::default();
    let mut client = match client(socket).await {
        Ok(client) => client,
        Err(e) => {
            report.errors.push(format!("connect: {e}"));
            return report;
        }
    };
    for i in 0..calls_each {
        report.calls += 1;
        if i % 50 == 0 {
            if let Err(e) = client.get_status(pb::GetStatusRequest {}).await {
                report.errors.push(format!("GetStatus: {e}"));
            }
            continue;
        }
        let n = ((c * calls_each + i) as u32).wrapping_mul(2_654_435_761) % filled.max(1);
        let exists = i % 2 == 0;
        match client.lookup_translation(lookup_request(n, exists)).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                if answer.found != exists
                    || (exists && answer.translated.is_none_or(|t| t.src_addr != "10.244.0.7"))
                {
                    report.wrong_answers += 1;
                    if exists {
                        report.wrong_filled.push(n);
                    }
                }
            }
            Err(e) => report.errors.push(format!("LookupTranslation: {e}")),
        }
    }
    report
}

/// The original tuple of filled connection `n` (or, when `!exists`, one never filled).
fn lookup_request(n: u32, exists: bool) -> pb::LookupTranslationRequest {
    let client = format!("10.{}.{}.{}", if exists { 200 } else { 201 }, (n >> 8) as u8, n as u8);
    pb::LookupTranslationRequest {
        tuple: Some(pb::Tuple {
            src_addr: client,
            src_port: 10_000 + (n >> 16),
            dst_addr: "10.96.0.10".into(),
            dst_port: 80,
            protocol: pb::Protocol::Tcp.into(),
        }),
        netns: FILL_NETNS,
    }
}

/// Entries streamed by one `ListConntrack`.
pub async fn list_all(client: &mut LoaderClient) -> Result<u64, tonic::Status> {
    let mut stream = client.list_conntrack(pb::ListConntrackRequest { netns: 0 }).await?.into_inner();
    let mut n = 0;
    while let Some(batch) = stream.message().await? {
        n += batch.entries.len() as u64;
    }
    Ok(n)
}

/// The `p`-th percentile (0..=100) of `values`, in milliseconds.
pub fn percentile_ms(values: &mut [Duration], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort();
    let idx = ((values.len() - 1) as f64 * p / 100.0).round() as usize;
    values[idx].as_secs_f64() * 1000.0
}

/// The process's resident set and its high-water mark, in MB (NaN when unreadable).
pub fn rss_mb(pid: u32) -> (f64, f64) {
    let mb = |field: &str| crate::procfs::status_kb(pid, field).map_or(f64::NAN, |kb| kb as f64 / 1024.0);
    (mb("VmRSS"), mb("VmHWM"))
}
