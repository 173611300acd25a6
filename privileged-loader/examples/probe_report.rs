//! Prints the kernel report, human then JSON: the probe without the daemon around it.
//!
//! Used to check the probe on other kernels (e.g. a Debian 6.1 kernel under qemu, see
//! docs/bpf.md), where the full loader and its configuration are not needed.
//! `cargo run --release -p privileged-loader --example probe_report` (root).
use privileged_loader::asset::AssetLoader;
use privileged_loader::btf::{self, BtfConfig};
use privileged_loader::probe::probe;
use privileged_loader::status::Registry;

fn main() -> anyhow::Result<()> {
    let assets = AssetLoader::new(btf::discover(&BtfConfig::default()), None, Registry::default());
    let report = probe(&assets);
    println!("{report}");
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
