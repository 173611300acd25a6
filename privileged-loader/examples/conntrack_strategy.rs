//! Which attach strategy the CO-RE conntracker picks on this kernel, and why the others
//! were not used: loads it with the default configuration, prints the status records,
//! and exits. Run as root:
//!
//! ```text
//! cargo run --release -p privileged-loader --example conntrack_strategy
//! ```
//!
//! Also useful on other kernels (e.g. a Debian 6.1 kernel under qemu, where nf_conntrack
//! is a module and kprobes exist) to check that the object loads there. With
//! `--hold SECS` it keeps the conntracker attached that long (make NAT'd connections
//! meanwhile) and then prints the entries it recorded; `--strategies kprobe_confirm,tp_btf`
//! restricts the strategies tried (names as in `[conntrack] attach_strategies`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a diagnostic program: a panic is its report

use privileged_loader::asset::AssetLoader;
use privileged_loader::btf::{self, BtfConfig};
use privileged_loader::conntrack::{ConntrackConfig, start};
use privileged_loader::status::Registry;
use tokio_util::sync::CancellationToken;

fn main() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel {}", release.trim());
    let registry = Registry::default();
    let assets = AssetLoader::new(btf::discover(&BtfConfig::default()), None, registry.clone());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let shutdown = CancellationToken::new();
    let mut cfg = ConntrackConfig::default();
    if let Some(names) = std::env::args().skip_while(|a| a != "--strategies").nth(1) {
        let quoted: Vec<String> = names.split(',').map(|n| format!("{n:?}")).collect();
        cfg.attach_strategies =
            serde_json::from_str(&format!("[{}]", quoted.join(","))).expect("known strategy names");
    }
    let result = runtime.block_on(start(&cfg, &assets, &registry, shutdown.clone()));

    for asset in registry.assets() {
        println!("asset {}: {:?} in {:?} {}", asset.asset, asset.outcome, asset.load_time, asset.detail);
    }
    for module in registry.modules() {
        println!("module {}: {:?}, strategy {:?}", module.name, module.state, module.strategy);
        let verdict = |ok: bool| if ok { "yes" } else { "no " };
        for attempt in &module.attempts {
            println!("  {} {:<42} {}", verdict(attempt.ok), attempt.implementation, attempt.reason);
            for hook in &attempt.hooks {
                println!("    {} {:<40} {}", verdict(hook.ok), hook.hook, hook.reason);
            }
        }
        if let Some(error) = &module.last_error {
            println!("  last error: {error}");
        }
    }
    match result {
        Ok(running) => {
            let hold = std::env::args().skip_while(|a| a != "--hold").nth(1).and_then(|s| s.parse().ok());
            if let Some(secs) = hold {
                println!("holding for {secs} s");
                runtime.block_on(async { tokio::time::sleep(std::time::Duration::from_secs(secs)).await });
                for entry in running.tracker.entries().unwrap_or_default() {
                    println!("  entry {entry:?}");
                }
            }
            let entries = running.tracker.entries().map(|e| e.len());
            println!("conntracker running: {entries:?} entries, tables {:?}", running.tracker.tables());
            shutdown.cancel();
        }
        Err(e) => {
            println!("conntracker not started: {e}");
            std::process::exit(1);
        }
    }
}
