//! Benchmark: the cost of one poll, printed as figures (not asserted).
//!
//! - a response carrying 1,000 configs: TUF verification + durable commit (target ≤ 50 ms);
//! - a response changing one config out of 1,000 (the usual publish);
//! - the steady-state poll (empty response), in-process and over real loopback gRPC.
//!
//! Run: `cargo run --release -p controller --example bench_verify`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use trust::test_repo as repo;
#[path = "../tests/support/service.rs"]
mod service;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use controller::remote::fetch::{FetchSettings, Fetcher};
use controller::remote::request::{ClientIdentity, build_request};
use controller::store::Store;
use trust::{Applied, ExpiryCheck, TrustedState, Update, apply_update};

const CONFIGS: usize = 1000;
const RUNS: usize = 30;

fn now() -> ExpiryCheck {
    ExpiryCheck::At { now_unix: jiff::Timestamp::now().as_second(), clock_skew_secs: 60 }
}

fn content(i: usize, generation: u64) -> Vec<u8> {
    format!("{{\"id\":{i},\"generation\":{generation},\"rules\":[\"allow tcp 10.0.0.0/8\",\"deny udp any\"],\"pad\":\"{}\"}}", "x".repeat(120))
        .into_bytes()
}

fn paths() -> Vec<String> {
    (0..CONFIGS).map(|i| format!("2/CONNTRACK/cfg{i}/config.json")).collect()
}

fn signed_targets(repo: &repo::Repo, version: u64, contents: &[Vec<u8>], paths: &[String]) -> Vec<u8> {
    let files: Vec<repo::File<'_>> =
        paths.iter().zip(contents).map(|(p, c)| repo::File { path: p, raw: c, v: Some(version) }).collect();
    repo.targets(version, &files)
}

fn changed(state: &TrustedState, update: &Update<'_>) -> TrustedState {
    match apply_update(state, update, now()).unwrap() {
        Applied::Changed { state, .. } => state,
        Applied::Unchanged => panic!("expected a change"),
    }
}

/// CPU time of this thread: the cost itself, unaffected by other processes competing for
/// the cores (wall-clock figures on a busy machine include waiting for a core).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `f` `runs` times; returns (wall, cpu) samples.
fn measure(runs: usize, mut f: impl FnMut()) -> (Vec<Duration>, Vec<Duration>) {
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (w0, c0) = (Instant::now(), thread_cpu());
        f();
        cpu.push(thread_cpu() - c0);
        wall.push(w0.elapsed());
    }
    (wall, cpu)
}

fn report2(name: &str, (wall, cpu): (Vec<Duration>, Vec<Duration>)) {
    report(&format!("{name} [wall]"), wall);
    report(&format!("{name} [cpu]"), cpu);
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<66} median {:>8.3} ms   min {:>8.3} ms   max {:>8.3} ms   (n={})",
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
        samples.len()
    );
}

fn main() {
    let repo = repo::Repo::new();
    let pinned = TrustedState::from_pinned_root(&repo.root_v1).unwrap();
    let paths = paths();
    let contents: Vec<Vec<u8>> = (0..CONFIGS).map(|i| content(i, 1)).collect();
    let targets = signed_targets(&repo, 1, &contents, &paths);
    let full = Update {
        roots: vec![],
        targets: &targets,
        target_files: paths.iter().map(String::as_str).zip(contents.iter().map(Vec::as_slice)).collect(),
        client_configs: paths.iter().map(String::as_str).collect(),
    };
    println!("response with {CONFIGS} configs: targets document {} bytes", targets.len());

    // Where verification time goes: tough's parse, then its canonical-JSON signature check.
    type SignedTargets = tough::schema::Signed<tough::schema::Targets>;
    report2(
        "  of which: parse targets into tough's schema",
        measure(RUNS, || {
            drop(serde_json::from_slice::<SignedTargets>(&targets).unwrap());
        }),
    );
    let parsed: SignedTargets = serde_json::from_slice(&targets).unwrap();
    let root: tough::schema::Signed<tough::schema::Root> = serde_json::from_slice(&repo.root_v1).unwrap();
    report2(
        "  of which: canonical form + ed25519 threshold check",
        measure(RUNS, || {
            root.signed.verify_role(&parsed).unwrap();
        }),
    );

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Duration::from_secs(5)).unwrap();
    report2("1,000 configs: TUF verification", measure(RUNS, || drop(changed(&pinned, &full))));
    let state = changed(&pinned, &full);
    let encoded = Store::encode(&state).unwrap();
    println!("state file: {} bytes", encoded.len());
    report2("1,000 configs: encode the state", measure(RUNS, || drop(Store::encode(&state).unwrap())));
    report2(
        "1,000 configs: write + fsync + rename + fsync dir",
        measure(RUNS, || store.write(&encoded).unwrap()),
    );
    report2(
        "1,000 configs: verification + commit (target <= 50 ms)",
        measure(RUNS, || {
            let next = changed(&pinned, &full);
            store.write(&Store::encode(&next).unwrap()).unwrap();
        }),
    );

    let mut one_changed = contents.clone();
    one_changed[7] = content(7, 2);
    let targets2 = signed_targets(&repo, 2, &one_changed, &paths);
    let incremental = Update {
        roots: vec![],
        targets: &targets2,
        target_files: HashMap::from([(paths[7].as_str(), one_changed[7].as_slice())]),
        client_configs: paths.iter().map(String::as_str).collect(),
    };
    report2(
        "1 of 1,000 configs changed: verification + commit",
        measure(RUNS, || {
            let next = changed(&state, &incremental);
            store.write(&Store::encode(&next).unwrap()).unwrap();
        }),
    );

    let identity =
        ClientIdentity { id: "bench".into(), products: vec!["CONNTRACK".into()], kernel_key: String::new() };
    report2(
        "steady state, in process: build request + verify empty",
        measure(RUNS * 10, || {
            let request = build_request(&identity, &state, None);
            assert!(matches!(apply_update(&state, &Update::default(), now()).unwrap(), Applied::Unchanged));
            std::hint::black_box(request);
        }),
    );

    steady_state_over_grpc(&repo, &state, &identity, &targets, &paths, &contents);
}

/// The full steady-state poll over loopback gRPC against the in-test service.
fn steady_state_over_grpc(
    repo: &repo::Repo,
    state: &TrustedState,
    identity: &ClientIdentity,
    targets: &[u8],
    paths: &[String],
    contents: &[Vec<u8>],
) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let service = service::TestService::default();
        service.publish(service::Published {
            roots: vec![repo.root_v1.clone()],
            targets: targets.to_vec(),
            targets_version: 1,
            files: paths.iter().cloned().zip(contents.iter().cloned()).collect(),
        });
        let addr = service.clone().start().await;
        let token = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(token.path(), "bench-token").unwrap();
        let mut fetcher = Fetcher::new(FetchSettings {
            endpoint: format!("http://{addr}"),
            plaintext_for_development: true,
            token_file: token.path().to_owned(),
            ca_file: None,
            max_message_bytes: 16 << 20,
            request_timeout: Duration::from_secs(10),
        })
        .unwrap();
        let mut samples = Vec::new();
        for i in 0..RUNS * 5 {
            let t0 = Instant::now();
            let response = fetcher.get_configs(build_request(identity, state, None)).await.unwrap();
            let update = Update {
                roots: response.roots.iter().map(Vec::as_slice).collect(),
                targets: &response.targets,
                ..Default::default()
            };
            assert!(matches!(apply_update(state, &update, now()).unwrap(), Applied::Unchanged));
            if i > 0 {
                samples.push(t0.elapsed()); // the first call also dials the connection
            }
        }
        report("steady state over loopback gRPC (1,000 cached configs)", samples);
    });
}
