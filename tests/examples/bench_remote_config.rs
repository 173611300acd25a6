//! Remote-config benchmark: prints figures, asserts nothing.
//!
//! ```text
//! cargo build --release -p config-service -p controller   # the binaries measured
//! cargo run --release -p e2e-tests --example bench_remote_config
//! ```
//! Runs as root (the controller is started as uid 65534). Environment knobs:
//! `BENCH_IDLE_SECS` (default 60), `BENCH_ROUNDS` (default 10), `BENCH_CONFIGS` (default 1000).
//!
//! Measures, with the real release binaries over loopback gRPC:
//! 1. publish → the controller holds the new version (poll interval 1 s; target ≤ 1.1 s);
//! 2. the service's cost of a steady-state (empty) poll: client latency and server CPU;
//! 3. the controller's RSS after a minute of idle polling (target ≤ 20 MB);
//! 4. the service's cost of a full answer for `BENCH_CONFIGS` configs, the time until the
//!    controller holds all of them, and the controller's RSS then.
#![allow(clippy::unwrap_used)]

#[path = "../tests/remote_config/harness.rs"]
mod harness;

use std::fs;
use std::time::{Duration, Instant};

use e2e_tests::procfs;
use harness::*;
use shared_proto::remoteconfig::v1::config_service_client::ConfigServiceClient;
use shared_proto::remoteconfig::v1::{
    Client, ClientGetConfigsRequest, ClientState, TargetFileHash, TargetFileMeta,
};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// utime + stime of a process, in milliseconds.
fn cpu_ms(pid: u32) -> u64 {
    procfs::cpu_ns(pid).unwrap() / 1_000_000
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

fn print_latencies(what: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    println!(
        "{what}: n={} min={:?} median={:?} p90={:?} max={:?}",
        samples.len(),
        samples[0],
        percentile(&samples, 0.5),
        percentile(&samples, 0.9),
        samples[samples.len() - 1]
    );
}

/// The steady-state request of a client holding everything the repository serves.
fn steady_request(repo: &Repo) -> ClientGetConfigsRequest {
    let targets = repo.targets();
    let cached = targets["targets"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(path, t)| TargetFileMeta {
            path: path.clone(),
            length: t["length"].as_i64().unwrap(),
            hashes: vec![TargetFileHash {
                algorithm: "sha256".into(),
                hash: t["hashes"]["sha256"].as_str().unwrap().into(),
            }],
        })
        .collect();
    let roots = fs::read_dir(repo.dir.join("metadata")).unwrap().count() as u64 - 1;
    ClientGetConfigsRequest {
        client: Some(Client {
            state: Some(ClientState {
                root_version: roots,
                targets_version: targets["version"].as_u64().unwrap(),
                ..Default::default()
            }),
            id: "bench".into(),
            products: vec![PRODUCT.into()],
            ..Default::default()
        }),
        cached_target_files: cached,
    }
}

/// Sends `request` `n` times; returns per-call latencies and the answer's size.
fn hammer(service: &Service, request: &ClientGetConfigsRequest, n: usize) -> (Vec<Duration>, usize) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut client = ConfigServiceClient::connect(service.endpoint())
            .await
            .unwrap()
            .max_decoding_message_size(64 << 20);
        let mut latencies = Vec::with_capacity(n);
        let mut size = 0;
        for _ in 0..n {
            let mut req = tonic::Request::new(request.clone());
            req.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
            let start = Instant::now();
            let answer = client.client_get_configs(req).await.unwrap().into_inner();
            latencies.push(start.elapsed());
            size = prost::Message::encoded_len(&answer);
        }
        (latencies, size)
    })
}

fn main() {
    let idle_secs = env_u64("BENCH_IDLE_SECS", 60);
    let rounds = env_u64("BENCH_ROUNDS", 10);
    let configs = env_u64("BENCH_CONFIGS", 1000);
    println!("binaries: {}", e2e_tests::process::bin_dir().display());
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    repo.publish("cfg0", r#"{"round": 0}"#);
    let service = Service::start(work.path(), &repo, &[]);
    let mut controller = Controller::start(work.path(), &service.endpoint(), &repo.root_file(1));
    controller.wait_status(Duration::from_secs(30), "first sync", |s| holds(s, "cfg0", 1));

    // 1. publish -> verified.
    let mut latencies = Vec::new();
    for round in 1..=rounds {
        // Start at a random phase of the poll cycle, as a real publish would.
        std::thread::sleep(Duration::from_millis(137 * round % 1000));
        let start = Instant::now();
        repo.publish("cfg0", &format!(r#"{{"round": {round}}}"#));
        let version = round + 1;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !controller.status().is_some_and(|s| holds(&s, "cfg0", version)) {
            assert!(Instant::now() < deadline, "controller did not pick up round {round}");
            std::thread::sleep(Duration::from_millis(5));
        }
        latencies.push(start.elapsed());
    }
    print_latencies(
        "publish -> controller verified+acknowledged (poll interval 1 s, target <= 1.1 s)",
        latencies,
    );

    // 2. steady-state poll cost on the service side.
    let request = steady_request(&repo);
    let calls = 2000;
    let cpu_before = cpu_ms(service.process.pid());
    let (latencies, size) = hammer(&service, &request, calls);
    let cpu = cpu_ms(service.process.pid()) - cpu_before;
    println!(
        "steady-state poll ({size} B answer): service CPU {:.1} us/call over {calls} calls",
        cpu as f64 * 1000.0 / calls as f64
    );
    print_latencies("steady-state poll client-observed latency", latencies);

    // 3. controller RSS after idle polling, holding one config.
    let pid = controller.process.pid();
    let polls_before = controller.status().unwrap()["polls_ok"].as_u64().unwrap();
    let cpu_before = cpu_ms(pid);
    std::thread::sleep(Duration::from_secs(idle_secs));
    let polls = controller.status().unwrap()["polls_ok"].as_u64().unwrap() - polls_before;
    println!(
        "controller holding 1 config, after {idle_secs} s idle polling ({polls} polls, {} ms CPU): \
         VmRSS {} kB, VmHWM {} kB (target <= 20 MB)",
        cpu_ms(pid) - cpu_before,
        procfs::status_kb(pid, "VmRSS").unwrap(),
        procfs::status_kb(pid, "VmHWM").unwrap()
    );

    // 4. a full answer for many configs.
    let start = Instant::now();
    for i in 1..=configs {
        repo.publish(&format!("bulk{i}"), &format!(r#"{{"id": {i}}}"#));
    }
    let publish_time = start.elapsed();
    let version = repo.targets()["version"].clone();
    let synced = Instant::now();
    controller.wait_status(Duration::from_secs(120), "all configs", |s| {
        s["targets_version"] == version
            && s["configs"].as_array().is_some_and(|c| c.len() as u64 == configs + 1)
    });
    println!(
        "{configs} configs: publishing took {publish_time:?} ({:?}/publish); controller held all \
         {:?} after the last publish (includes up to one 1 s poll interval)",
        publish_time / configs as u32,
        synced.elapsed()
    );
    let mut fresh = steady_request(&repo);
    let state = fresh.client.as_mut().unwrap().state.as_mut().unwrap();
    state.targets_version = 0;
    fresh.cached_target_files.clear();
    let cpu_before = cpu_ms(service.process.pid());
    let (latencies, size) = hammer(&service, &fresh, 50);
    let cpu = cpu_ms(service.process.pid()) - cpu_before;
    println!(
        "full answer for {} configs ({size} B): service CPU {:.2} ms/call over 50 calls",
        configs + 1,
        cpu as f64 / 50.0
    );
    print_latencies("full answer client-observed latency", latencies);
    let steady = steady_request(&repo);
    let cpu_before = cpu_ms(service.process.pid());
    let (latencies, _) = hammer(&service, &steady, 500);
    let cpu = cpu_ms(service.process.pid()) - cpu_before;
    println!(
        "steady-state poll with {} cached files: service CPU {:.1} us/call over 500 calls",
        configs + 1,
        cpu as f64 * 1000.0 / 500.0
    );
    print_latencies("steady-state poll (many cached files) client-observed latency", latencies);

    std::thread::sleep(Duration::from_secs(10));
    println!(
        "controller holding {} configs, after 10 s more polling: VmRSS {} kB, VmHWM {} kB",
        configs + 1,
        procfs::status_kb(pid, "VmRSS").unwrap(),
        procfs::status_kb(pid, "VmHWM").unwrap()
    );
}
