//! Remote config reaching the loader: prints figures, asserts nothing.
//!
//! ```text
//! cargo build --release --workspace --bins     # the binaries measured
//! cargo run --release -p e2e-tests --example bench_config_apply
//! ```
//! Runs as root (the loader; the controller is started as uid 65534). `BENCH_ROUNDS`
//! (default 50) publishes for the first figure, `BENCH_APPLY_ROUNDS` (default 30) calls
//! per size for the second.
//!
//! 1. publish → applied in the loader: a `LOADER_LOG` config published at the real
//!    service, verified by the real controller (1 s poll), pushed, re-verified and applied
//!    by the real loader; the clock stops when the loader's `GetConfig` shows the new
//!    version (target ≤ poll interval + 100 ms);
//! 2. `ApplyConfig` for 1 and for 100 configs over the real socket: the loader's
//!    verification (signatures, hashes of every config), schema and allow-list checks and
//!    the live apply of the log filter, plus the gRPC round trip (target ≤ 20 ms for 100).
#![allow(clippy::unwrap_used)]

#[path = "../tests/remote_config/harness.rs"]
mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use e2e_tests::loader::{LoaderOptions, LoaderProcess, grpc_client};
use harness::*;
use shared_proto::loader::v1 as pb;
use shared_proto::loader::v1::loader_client::LoaderClient;
use tonic::transport::Channel;
use trust::test_repo::{self, File};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn print_latencies(what: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    println!(
        "{what}: n={} min={:?} p50={:?} p90={:?} p99={:?} max={:?}",
        samples.len(),
        samples[0],
        at(0.5),
        at(0.9),
        at(0.99),
        samples[samples.len() - 1]
    );
}

fn loader_with_root(root: &Path, socket: Option<&Path>) -> LoaderProcess {
    let toml = format!(
        "[conntrack]\nenabled = false\n[lockstats]\nenabled = false\n[remote_config]\nroot_file = {:?}\n",
        path_str(root)
    );
    let loader = LoaderProcess::start(LoaderOptions {
        extra_toml: &toml,
        socket,
        allowed_uids: &[NOBODY],
        ..Default::default()
    });
    loader.open_socket_to_all();
    loader
}

/// The version of `path` the loader has applied (0: none).
async fn applied_version(loader: &mut LoaderClient<Channel>, path: &str) -> u64 {
    let config = loader.get_config(pb::GetConfigRequest {}).await.unwrap().into_inner();
    config
        .remote_configs
        .iter()
        .find(|r| r.path == path && r.state == pb::ConfigApplyState::Applied as i32)
        .map_or(0, |r| r.version)
}

async fn publish_to_applied(rounds: u64) {
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    let service = Service::start(work.path(), &repo, &[]);
    let socket = work.path().join("loader-run/loader.sock");
    let _loader = loader_with_root(&repo.root_file(1), Some(&socket));
    let link = format!("\n[loader]\nsocket = {:?}\n[metrics]\nlisten = \"\"\n", path_str(&socket));
    let _controller = Controller::start_with(work.path(), &service.endpoint(), &repo.root_file(1), &link);
    let mut loader = grpc_client(&socket).await;
    let path = "2/LOADER_LOG/bench/config.json";
    let mut samples = Vec::new();
    for round in 1..=rounds {
        let filter = if round.is_multiple_of(2) { "info" } else { "info,h2=warn" };
        repo.publish_product("LOADER_LOG", "bench", &format!(r#"{{"filter": "{filter}"}}"#));
        let published = Instant::now();
        while applied_version(&mut loader, path).await < round {
            assert!(published.elapsed() < Duration::from_secs(30), "round {round} never applied");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples.push(published.elapsed());
    }
    print_latencies("publish -> applied in the loader (1 s poll)", samples);
}

/// A request carrying `n` LOADER_LOG configs under targets `version`.
fn request(repo: &test_repo::Repo, version: u64, n: usize) -> pb::ApplyConfigRequest {
    let filter = if version.is_multiple_of(2) { "info" } else { "info,h2=warn" };
    let raw = format!(r#"{{"filter": "{filter}"}}"#).into_bytes();
    let paths: Vec<String> = (0..n).map(|i| format!("2/LOADER_LOG/c{i:03}/config.json")).collect();
    let files: Vec<File<'_>> = paths.iter().map(|p| File { path: p, raw: &raw, v: Some(version) }).collect();
    pb::ApplyConfigRequest {
        roots: vec![],
        targets: repo.targets(version, &files),
        products: vec!["LOADER_LOG".into()],
        configs: paths.iter().map(|p| pb::RemoteConfigFile { path: p.clone(), raw: raw.clone() }).collect(),
    }
}

async fn apply_cost(rounds: u64) {
    let dir = tempfile::tempdir().unwrap();
    let repo = test_repo::Repo::new();
    let root = dir.path().join("root.json");
    std::fs::write(&root, &repo.root_v1).unwrap();
    let loader = loader_with_root(&root, None);
    let mut api = grpc_client(&loader.socket).await;
    let mut version = 0;
    for n in [1usize, 100] {
        let mut samples = Vec::new();
        for _ in 0..rounds {
            version += 1;
            let request = request(&repo, version, n);
            let started = Instant::now();
            let answer = api.apply_config(request).await.unwrap().into_inner();
            samples.push(started.elapsed());
            assert!(answer.results.iter().all(|r| r.state == pb::ConfigApplyState::Applied as i32));
        }
        print_latencies(&format!("ApplyConfig with {n} config(s), over the socket"), samples);
    }
}

#[tokio::main]
async fn main() {
    publish_to_applied(env_u64("BENCH_ROUNDS", 50)).await;
    apply_cost(env_u64("BENCH_APPLY_ROUNDS", 30)).await;
}
