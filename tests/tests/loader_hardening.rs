//! The loader under its own seccomp filter and steady-state capabilities: every RPC keeps
//! working, a forbidden call is refused, and `loaderctl audit` passes every rule of
//! docs/privilege-audit.md — and fails when a setting is weakened.
use std::process::Output;

use e2e_tests::NatLab;
use e2e_tests::compare::assert_matches_kernel;
use e2e_tests::loader::{LoaderOptions, LoaderProcess};

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The ids of the rules `loaderctl audit --json` reports as failed.
fn failed_rules(loader: &LoaderProcess) -> Vec<String> {
    let out = loader.ctl(&["audit", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("audit JSON");
    let failed: Vec<String> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["pass"] == false)
        .map(|c| c["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(out.status.success(), failed.is_empty(), "exit status must follow the rules: {}", text(&out));
    failed
}

#[test]
fn every_rpc_works_under_the_seccomp_filter_and_the_audit_passes() {
    let lab = NatLab::new("hard-rpc").expect("lab");
    let loader = LoaderProcess::start(LoaderOptions { netns: Some(lab.netns.name()), ..Default::default() });
    let _connections = lab.connect_all().expect("connections");
    // ListConntrack, against conntrack -L.
    assert_matches_kernel(&loader, &lab, |_| true);
    // GetStatus, GetLockStats, LookupTranslation, health.
    let status = loader.status();
    assert!(status["capabilities"].as_array().is_some_and(|c| c.len() == 3), "{status:#}");
    let lockstats = loader.ctl_json(&["lockstats"]);
    assert!(lockstats.is_object(), "{lockstats:#}");
    for args in [&["conntrack", "lookup", "tcp", "10.0.0.1:40000", "10.99.0.1:80"][..], &["health"][..]] {
        let out = loader.ctl(args);
        assert!(out.status.success(), "loaderctl {args:?}: {}\n{}", text(&out), loader.log_text());
    }
    // GetAudit: all rules pass, and the filter is the loader's own (every thread).
    let out = loader.ctl(&["audit"]);
    assert!(out.status.success(), "audit failed:\n{}", text(&out));
    assert!(text(&out).contains("PASS L5 a seccomp filter is installed"), "{}", text(&out));
    assert!(loader.log_text().contains("seccomp filter installed on every thread"));
}

#[test]
fn a_forbidden_call_made_through_the_test_switch_is_refused() {
    let loader = LoaderProcess::start(LoaderOptions {
        env: &[("PRIVILEGED_LOADER_TEST_FORBIDDEN_CALL", "1")],
        ..Default::default()
    });
    let log = loader.log_text();
    assert!(log.contains("socket(AF_INET) was refused under the seccomp filter"), "{log}");
    assert!(log.contains("Operation not permitted"), "{log}");
    assert!(loader.ctl(&["health"]).status.success(), "the loader keeps serving after the refusal");
}

#[test]
fn a_weakened_setting_fails_the_audit() {
    let no_drop = LoaderProcess::start(LoaderOptions {
        extra_toml: "[privileges]\ndrop = false\n",
        ..Default::default()
    });
    let failed = failed_rules(&no_drop);
    assert!(failed.contains(&"L1".to_string()) && failed.contains(&"L3".to_string()), "{failed:?}");
    drop(no_drop);
    let no_filter = LoaderProcess::start(LoaderOptions {
        extra_toml: "[privileges]\nseccomp = false\n",
        ..Default::default()
    });
    assert_eq!(failed_rules(&no_filter), vec!["L5"]);
}
