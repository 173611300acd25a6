//! The conntracker chain through the real loader binary, checked with the conntrack
//! helper's harness (`e2e-tests`: throwaway namespace with DNAT rules, `conntrack -L`
//! oracle) exactly as the CO-RE conntracker is in `tests/tests/loader_conntrack.rs`:
//! every NAT entry the kernel shows is listed by `loaderctl conntrack list --json` with the
//! same reply tuple, and nothing else. Needs root and `cargo build --workspace --bins`.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]
use e2e_tests::NatLab;
use e2e_tests::loader::{LoaderOptions, LoaderProcess};

/// The loader's list for the lab's namespace equals the kernel's NAT'd entries there.
fn assert_matches_kernel(loader: &LoaderProcess, lab: &NatLab) {
    e2e_tests::compare::assert_matches_kernel(loader, lab, |_| true);
}

/// (name, ok, reason) of every implementation attempt of module `conntrack`, each
/// followed by its hook attempts named `implementation/hook`.
fn attempts(loader: &LoaderProcess) -> Vec<(String, bool, String)> {
    let module = loader.module("conntrack");
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let mut all = Vec::new();
    for a in module["attempts"].as_array().expect("attempts") {
        let implementation = text(a, "implementation");
        all.push((implementation.clone(), a["ok"] == true, text(a, "reason")));
        for h in a["hooks"].as_array().expect("hooks") {
            all.push((format!("{implementation}/{}", text(h, "hook")), h["ok"] == true, text(h, "reason")));
        }
    }
    all
}

#[test]
fn with_btf_hidden_the_loader_runs_the_prebuilt_conntracker_and_matches_conntrack() {
    let lab = NatLab::new("pb-e2e").expect("lab");
    let _before = lab.connect_all().expect("connections before start");
    let loader = LoaderProcess::start(LoaderOptions {
        netns: Some(lab.netns.name()),
        args: &["--no-sysfs-btf"],
        ..Default::default()
    });
    let module = loader.module("conntrack");
    assert_eq!(module["strategy"], "prebuilt/raw_tracepoint", "{module:#}");
    let tried = attempts(&loader);
    assert!(tried.iter().any(|(s, ok, why)| s == "core" && !ok && why.contains("BTF")), "{tried:#?}");
    assert!(
        tried.iter().any(|(s, ok, why)| s == "prebuilt/offsetguess" && *ok && why.contains("sk_buff._nfct="))
    );
    let _after = lab.connect_all().expect("connections after start");
    assert_matches_kernel(&loader, &lab);
}

#[test]
fn with_ebpf_strategies_disabled_the_netlink_conntracker_matches_conntrack() {
    let lab = NatLab::new("nl-e2e").expect("lab");
    let _before = lab.connect_all().expect("connections before start");
    let loader = LoaderProcess::start(LoaderOptions {
        netns: Some(lab.netns.name()),
        args: &["--conntrack-strategies", "netlink"],
        ..Default::default()
    });
    assert_eq!(loader.module("conntrack")["strategy"], "netlink");
    let _after = lab.connect_all().expect("connections after start");
    assert_matches_kernel(&loader, &lab);
}

#[test]
fn a_guessing_overflow_moves_the_loader_to_netlink_and_says_why() {
    let lab = NatLab::new("ovf-e2e").expect("lab");
    let loader = LoaderProcess::start(LoaderOptions {
        netns: Some(lab.netns.name()),
        extra_toml: "[conntrack]\nstrategies = [\"prebuilt\", \"netlink\"]\n\n[conntrack.offsetguess]\nthreshold = 8\n",
        ..Default::default()
    });
    assert_eq!(loader.module("conntrack")["strategy"], "netlink");
    let tried = attempts(&loader);
    assert!(
        tried.iter().any(|(s, ok, why)| s == "prebuilt"
            && !ok
            && why.contains("offset guessing overflow on sk_buff._nfct at 8")),
        "{tried:#?}"
    );
    let _connections = lab.connect_all().expect("connections");
    assert_matches_kernel(&loader, &lab);
}
