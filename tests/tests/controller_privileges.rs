//! The controller holds no privilege: it refuses to start as root or with a capability,
//! naming it, and `controller audit` passes every rule against a running controller.
#[path = "remote_config/harness.rs"]
mod harness;

use std::process::{Command, Output};
use std::time::Duration;

use harness::{Controller, NOBODY, Repo, Service, bin, path_str, scratch_dir};

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs `controller run` with its config through `setpriv` (util-linux) options.
fn run_with(setpriv: &[&str], config: &std::path::Path) -> Output {
    Command::new("setpriv")
        .args(setpriv)
        .arg(bin("controller"))
        .args(["run", "--config", path_str(config)])
        .output()
        .expect("run setpriv")
}

#[test]
fn the_controller_refuses_root_and_any_capability_by_name() {
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    let service = Service::start(work.path(), &repo, &[]);
    let mut controller = Controller::start(work.path(), &service.endpoint(), &repo.root_file(1));
    controller.process.kill();

    let as_root = run_with(&[], &controller.config_file);
    assert!(!as_root.status.success());
    assert!(text(&as_root).contains("refusing to run as uid 0"), "{}", text(&as_root));

    let nobody = NOBODY.to_string();
    let ids = ["--reuid", &nobody, "--regid", &nobody, "--clear-groups"];
    let with_cap = run_with(
        &[&ids[..], &["--inh-caps", "+net_raw", "--ambient-caps", "+net_raw"]].concat(),
        &controller.config_file,
    );
    assert!(!with_cap.status.success());
    let said = text(&with_cap);
    assert!(said.contains("refusing to run holding CAP_NET_RAW") && said.contains("(ambient)"), "{said}");
}

#[test]
fn controller_audit_passes_against_a_running_controller_and_health_follows_the_loop() {
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    let service = Service::start(work.path(), &repo, &[]);
    let mut controller = Controller::start(work.path(), &service.endpoint(), &repo.root_file(1));
    controller.wait_status(Duration::from_secs(20), "a first poll", |s| s["polls_ok"].as_u64() >= Some(1));

    let pid = controller.process.pid().to_string();
    let mut audit = Command::new(bin("controller"));
    std::os::unix::process::CommandExt::uid(&mut audit, NOBODY);
    let out = audit.args(["audit", "--pid", &pid]).output().expect("run controller audit");
    let report = text(&out);
    assert!(out.status.success(), "audit failed:\n{report}");
    for rule in ["C1", "C2", "C3", "C4"] {
        assert!(report.contains(&format!("PASS {rule}")), "{rule} missing:\n{report}");
    }

    let health = |max_age: &str| {
        Command::new(bin("controller"))
            .args(["health", "--state-dir", path_str(&controller.state_dir), "--max-age-secs", max_age])
            .output()
            .expect("run controller health")
    };
    assert!(health("30").status.success(), "{}", text(&health("30")));
    controller.process.kill();
    std::thread::sleep(Duration::from_millis(1100));
    let stale = health("1");
    assert!(!stale.status.success() && text(&stale).contains("looks stuck"), "{}", text(&stale));
}
