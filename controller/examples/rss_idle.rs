//! Measures the controller's resident memory while it idle-polls a service that holds
//! 1,000 configs (the controller holds them too). Prints VmRSS and VmHWM (peak).
//!
//! Run after building the binary in the same profile:
//! `cargo build --release -p controller --bin controller &&
//!  cargo run --release -p controller --example rss_idle`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use trust::test_repo as repo;
#[path = "../tests/support/service.rs"]
mod service;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

const CONFIGS: usize = 1000;
const IDLE: Duration = Duration::from_secs(20);

/// `target/<profile>/controller`, next to this example's `examples/` directory.
fn controller_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|examples| examples.parent()).unwrap().join("controller")
}

fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let repo = repo::Repo::new();
    let paths: Vec<String> = (0..CONFIGS).map(|i| format!("2/CONNTRACK/cfg{i}/config.json")).collect();
    let contents: Vec<Vec<u8>> = (0..CONFIGS)
        .map(|i| format!("{{\"id\":{i},\"pad\":\"{}\"}}", "x".repeat(150)).into_bytes())
        .collect();
    let files: Vec<repo::File<'_>> =
        paths.iter().zip(&contents).map(|(p, c)| repo::File { path: p, raw: c, v: Some(1) }).collect();
    let service = service::TestService::default();
    service.publish(service::Published {
        roots: vec![repo.root_v1.clone()],
        targets: repo.targets(1, &files),
        targets_version: 1,
        files: paths.iter().cloned().zip(contents.iter().cloned()).collect(),
    });
    let addr = service.clone().start().await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.json"), &repo.root_v1).unwrap();
    std::fs::write(dir.path().join("token"), "rss-token").unwrap();
    let mut child = Command::new(controller_binary())
        .args([
            "run",
            "--poll-interval-secs",
            "1",
            "--endpoint",
            &format!("http://{addr}"),
            "--plaintext-for-development",
        ])
        .arg("--root-file")
        .arg(dir.path().join("root.json"))
        .arg("--token-file")
        .arg(dir.path().join("token"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("CONTROLLER_ALLOW_ROOT", "true")
        .env("CONTROLLER_LOADER__SOCKET", "") // verify-only: the controller's own memory
        .stderr(Stdio::null())
        .spawn()
        .expect("build the controller binary first (see the header)");
    let pid = child.id();
    tokio::time::sleep(IDLE).await;
    let (rss, hwm) = (proc_status_kb(pid, "VmRSS:"), proc_status_kb(pid, "VmHWM:"));
    child.kill().ok();
    child.wait().ok();
    let polls = service.seen().len();
    println!(
        "controller idle-polling every 1 s for {IDLE:?} ({polls} polls), holding {CONFIGS} configs: \
         VmRSS {:.1} MB, peak VmHWM {:.1} MB (target <= 20 MB)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
}
