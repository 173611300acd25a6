//! Remote BTF: prints figures, asserts nothing.
//!
//! ```text
//! cargo build --release --workspace --bins     # the binaries measured
//! cargo run --release -p e2e-tests --example bench_remote_btf
//! ```
//! Runs as root (the loader; the controller is started as uid 65534). `BENCH_ROUNDS`
//! (default 10).
//!
//! 1. sizes: this kernel's full BTF, and `config-service publish-btf`'s minimized BTF for
//!    the conntracker alone and for every embedded object, raw and as published (xz, base64,
//!    JSON);
//! 2. publish → conntracker on CO-RE: per round a fresh service, loader (its kernel BTF
//!    hidden with `btf.no_sysfs`, so its conntracker runs prebuilt) and controller (1 s
//!    poll); the clock starts when `publish-btf` returns and stops when the loader's status
//!    shows `core/raw_tracepoint`.
#![allow(clippy::unwrap_used)]

#[path = "../tests/remote_config/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e_tests::loader::{LoaderOptions, LoaderProcess};
use harness::*;

fn objects(work: &Path) -> PathBuf {
    let dir = work.join("objects");
    let out = std::process::Command::new(bin("privileged-loader"))
        .args(["objects", "--out", path_str(&dir)])
        .output()
        .unwrap();
    assert!(out.status.success());
    dir
}

fn sizes(objects: &Path) {
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    let all: Vec<String> =
        std::fs::read_dir(objects).unwrap().map(|e| e.unwrap().path().display().to_string()).collect();
    let conntrack = objects.join("conntrack.bpf.o").display().to_string();
    for (what, objs) in [("conntracker object", vec![conntrack]), ("every embedded object", all)] {
        let mut args = vec!["publish-btf", "--repo", path_str(&repo.dir)];
        for o in &objs {
            args.extend(["--object", o.as_str()]);
        }
        println!("minimized for the {what}: {}", config_service_ok(&args).trim());
    }
    let full = ["publish-btf", "--repo", path_str(&repo.dir), "--full"];
    println!("full, not minimized: {}", config_service_ok(&full).trim());
}

fn strategy(loader: &LoaderProcess) -> String {
    loader.module("conntrack")["strategy"].as_str().unwrap_or_default().to_string()
}

fn one_round(objects: &Path) -> Duration {
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    let service = Service::start(work.path(), &repo, &[]);
    let socket = work.path().join("loader-run/loader.sock");
    let toml = format!(
        "[lockstats]\nenabled = false\n[remote_config]\nroot_file = {:?}\n[btf]\nno_sysfs = true\ncache_dir = {:?}\n",
        path_str(&repo.root_file(1)),
        path_str(&work.path().join("btf-cache"))
    );
    let loader = LoaderProcess::start(LoaderOptions {
        extra_toml: &toml,
        socket: Some(&socket),
        allowed_uids: &[NOBODY],
        ..Default::default()
    });
    loader.open_socket_to_all();
    assert_eq!(strategy(&loader), "prebuilt/raw_tracepoint");
    let link = format!("\n[loader]\nsocket = {:?}\n[metrics]\nlisten = \"\"\n", path_str(&socket));
    let _controller = Controller::start_with(work.path(), &service.endpoint(), &repo.root_file(1), &link);
    let object = objects.join("conntrack.bpf.o");
    config_service_ok(&["publish-btf", "--repo", path_str(&repo.dir), "--object", path_str(&object)]);
    let published = Instant::now();
    while strategy(&loader) != "core/raw_tracepoint" {
        assert!(published.elapsed() < Duration::from_secs(30), "never moved onto CO-RE");
        std::thread::sleep(Duration::from_millis(10));
    }
    published.elapsed()
}

fn main() {
    let work = scratch_dir();
    let objects = objects(work.path());
    sizes(&objects);
    let rounds = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let mut samples: Vec<Duration> = (0..rounds).map(|_| one_round(&objects)).collect();
    samples.sort_unstable();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    println!(
        "publish -> conntracker on CO-RE with the remote BTF (1 s poll): n={} min={:?} p50={:?} p90={:?} max={:?}",
        samples.len(),
        samples[0],
        at(0.5),
        at(0.9),
        samples[samples.len() - 1]
    );
}
