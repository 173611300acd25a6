//! The `BTF` product end to end: `config-service publish-btf` (bpftool-minimized BTF of
//! this kernel), the controller, the loader with its own BTF hidden (`btf.no_sysfs`), the
//! conntracker moving from prebuilt onto CO-RE with no translation lost.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e_tests::NatLab;
use e2e_tests::compare::assert_matches_kernel;
use e2e_tests::process::time_scale;
use serde_json::Value;

use super::harness::*;
use super::{Node, SYNC};

#[path = "btf_refused.rs"]
mod refused;

/// The loader's `[btf]`: the kernel's own BTF hidden, the remote-BTF cache in the work dir.
fn hidden_btf(work: &Path) -> String {
    format!("[btf]\nno_sysfs = true\ncache_dir = {:?}\n", path_str(&work.join("btf-cache")))
}

/// This node's key: `<uname -m>-<uname -r>`.
fn kernel_key() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    format!("{}-{}", std::env::consts::ARCH, release.trim())
}

/// The loader's embedded objects, written by `privileged-loader objects`.
fn objects(work: &Path) -> PathBuf {
    let dir = work.join("objects");
    let out = std::process::Command::new(bin("privileged-loader"))
        .args(["objects", "--out", path_str(&dir)])
        .output()
        .expect("run privileged-loader objects");
    assert!(out.status.success(), "privileged-loader objects: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

/// `config-service publish-btf` of this kernel for `object` (a file of [`objects`]).
fn publish_btf(node: &Node, object: &Path, extra: &[&str]) -> String {
    let repo = path_str(&node.repo.dir).to_string();
    let mut args = vec!["publish-btf", "--repo", &repo, "--object", path_str(object)];
    args.extend_from_slice(extra);
    config_service_ok(&args)
}

/// Makes the lab's UDP translations outlive the test (the kernel's default drops an
/// unanswered-again flow after 30 s). Under TCG (the qemu matrix) the switch onto CO-RE
/// takes 15–35 s, and a UDP entry the kernel dropped *during* the switch was seen there
/// still listed by the new conntracker (2026-11-30, 6.1 guest: likely its destroy event
/// fell between the handover and the new listener's start — a question for the
/// make-before-break reload, not for the BTF path). This test is about the handover
/// losing nothing, so nothing expires while it runs.
fn keep_udp_translations(lab: &NatLab) {
    let set = "echo 600 >/proc/sys/net/netfilter/nf_conntrack_udp_timeout && \
               echo 600 >/proc/sys/net/netfilter/nf_conntrack_udp_timeout_stream";
    let out = lab.netns.command("sh").args(["-c", set]).output().expect("run sh in the lab");
    assert!(out.status.success(), "raising the lab's UDP timeouts: {}", String::from_utf8_lossy(&out.stderr));
}

fn conntrack_strategy(node: &Node) -> String {
    node.loader.module("conntrack")["strategy"].as_str().unwrap_or_default().to_string()
}

/// Whether `strategy` is the CO-RE conntracker on BTF the kernel does not have itself: an
/// object relocated against external BTF attaches by kprobe (Debian 6.1 in the qemu
/// matrix) or raw tracepoint (this host, no kprobes); `tp_btf` and `fentry` resolve their
/// targets in the kernel's own BTF.
fn on_external_btf(strategy: &str) -> bool {
    matches!(strategy, "core/kprobe" | "core/raw_tracepoint")
}

/// Waits until the conntracker runs CO-RE on the published BTF and returns its strategy.
/// Fails as soon as the service hears an error for `key`, or after [`SYNC`], with the
/// loader's log (it says which relocation or attach failed).
fn wait_core_on_remote_btf(node: &Node, key: &str) -> String {
    let deadline = Instant::now() + SYNC * time_scale();
    let why = loop {
        let strategy = conntrack_strategy(node);
        if on_external_btf(&strategy) {
            return strategy;
        }
        let requests = node.service.requests();
        let refused =
            requests.iter().rev().find_map(|r| reported_state(r, key).filter(|c| c["apply_state"] == 3));
        if let Some(error) = refused {
            break format!("the BTF was refused: {error:#}");
        }
        if Instant::now() > deadline {
            break format!("still {strategy} after {:?}", SYNC * time_scale());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = node.loader.log_text();
    let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
    panic!(
        "the conntracker did not move onto CO-RE: {why}\n---- loader log (tail) ----\n{}",
        tail.join("\n")
    );
}

fn asset_detail(node: &Node, asset: &str) -> String {
    let status = node.loader.status();
    let assets = status["assets"].as_array().cloned().unwrap_or_default();
    let found = assets.into_iter().find(|a| a["asset"] == asset);
    found.map(|a| a["detail"].as_str().unwrap_or_default().to_string()).unwrap_or_default()
}

fn btf_line(config: &Value) -> &Value {
    &config["values"]["btf.remote"]
}

#[test]
fn published_minimized_btf_moves_the_prebuilt_conntracker_onto_core_keeping_every_translation() {
    let lab = NatLab::new("rc-btf").expect("lab");
    keep_udp_translations(&lab);
    let node = Node::start_with(Some(&lab), hidden_btf);
    let fallback = conntrack_strategy(&node);
    assert!(fallback.starts_with("prebuilt/"), "without BTF: offset guessing, not {fallback}");
    let _before = lab.connect_all().expect("connections");
    assert_matches_kernel(&node.loader, &lab, |_| true);

    let key = kernel_key();
    let path = format!("2/BTF/{key}/btf.json");
    let objects = objects(node.work.path());
    let published = Instant::now();
    let said = publish_btf(&node, &objects.join("conntrack.bpf.o"), &[]);
    assert!(said.contains(&path), "{said}");
    // The sizes (full vs minimized) of this kernel's BTF, for docs/benchmarks.md.
    println!("{}", said.trim());
    let core = wait_core_on_remote_btf(&node, &key);
    let took = published.elapsed();
    println!("publish -> conntracker on CO-RE with remote BTF: {took:?} ({fallback} -> {core})");
    // The translations the prebuilt conntracker held were handed over: nothing lost.
    assert_matches_kernel(&node.loader, &lab, |_| true);
    let detail = asset_detail(&node, "conntrack");
    assert!(detail.contains(&format!("BTF from remote config `{path}` v1")), "{detail}");
    let module = node.loader.module("conntrack");
    assert_eq!(module["last_reload"]["changed"], serde_json::json!(["btf"]), "{module:#}");
    node.wait_reported(&key, 1, 2);
    let config = node.config();
    assert_eq!(btf_line(&config)["source"], "remote", "{config:#}");
    assert_eq!(btf_line(&config)["path"], path.as_str());

    // New connections are recorded by the CO-RE object, checked against conntrack -L.
    let _after = lab.connect_all().expect("connections after the switch");
    assert_matches_kernel(&node.loader, &lab, |_| true);
    let cache = std::fs::read_dir(node.work.path().join("btf-cache")).expect("cache dir").count();
    assert_eq!(cache, 2, "the cache keeps this kernel's BTF and its origin");
    let status = node.controller.status().expect("controller status.json");
    assert!(holds(&status, &key, 1), "{status:#}");
}

#[test]
fn a_restarted_loader_starts_on_core_from_the_cached_remote_btf() {
    let lab = NatLab::new("rc-btf-cache").expect("lab");
    let mut node = Node::start_with(Some(&lab), hidden_btf);
    let key = kernel_key();
    publish_btf(&node, &objects(node.work.path()).join("conntrack.bpf.o"), &[]);
    node.wait_reported(&key, 1, 2);
    node.controller.process.kill();

    // No controller now: the new loader process finds the BTF in its cache.
    node.loader.process.child.kill().expect("SIGKILL the loader");
    let _ = node.loader.process.child.wait();
    node.loader = super::start_loader_in(Some(lab.netns.name()), &node.toml, Some(&node.socket), "");
    let strategy = conntrack_strategy(&node);
    assert!(on_external_btf(&strategy), "started on {strategy}");
    let detail = asset_detail(&node, "conntrack");
    assert!(detail.contains(&format!("BTF from remote config `2/BTF/{key}/btf.json` v1")), "{detail}");
    let _conns = lab.connect_all().expect("connections");
    assert_matches_kernel(&node.loader, &lab, |_| true);
}

#[test]
fn another_kernels_btf_is_not_even_sent_to_this_node() {
    let node = Node::start_with(None, hidden_btf);
    let key = kernel_key();
    let object = objects(node.work.path()).join("conntrack.bpf.o");
    let sysfs = "/sys/kernel/btf/vmlinux";
    let other = ["--vmlinux", sysfs, "--release", "9.9.9-other", "--arch", std::env::consts::ARCH];
    publish_btf(&node, &object, &other);
    publish_btf(&node, &object, &[]);
    node.wait_reported(&key, 1, 2);
    let other_key = format!("{}-9.9.9-other", std::env::consts::ARCH);
    // Both kernels' BTF are in the signed targets; the client is told to hold one config
    // and sent one file: its own kernel's.
    let requests = node.service.requests();
    let newest = node.repo.targets()["version"].clone();
    let last_sent = requests.iter().rev().find(|r| r["answer"]["targets_version"] == newest);
    let last_sent = last_sent.expect("the newest targets were sent");
    assert_eq!(last_sent["answer"]["client_configs"], 1, "{last_sent:#}");
    assert_eq!(last_sent["answer"]["target_files"], 1, "{last_sent:#}");
    let status = node.controller.status().expect("controller status.json");
    assert!(config_in(&status, &other_key).is_none(), "{status:#}");
}

#[test]
fn btf_that_does_not_fit_this_kernel_is_an_error_and_the_fallback_keeps_running() {
    let lab = NatLab::new("rc-btf-bad").expect("lab");
    let node = Node::start_with(Some(&lab), hidden_btf);
    let _conns = lab.connect_all().expect("connections");
    let key = kernel_key();
    let objects = objects(node.work.path());

    // Another build of this release: refused on its identity.
    publish_btf(&node, &objects.join("conntrack.bpf.o"), &["--kernel-version", "#1 SMP another build"]);
    let error = node.wait_reported(&key, 1, 3);
    let message = error["apply_error"].as_str().unwrap_or_default();
    assert!(message.contains("another build") && message.contains("publish this build's BTF"), "{error:#}");

    // This kernel, but minimized for another object: the conntracker's relocations fail.
    publish_btf(&node, &objects.join("lockstat_maps.bpf.o"), &[]);
    let error = node.wait_reported(&key, 2, 3);
    assert!(error["apply_error"].as_str().unwrap_or_default().contains("conntrack"), "{error:#}");
    let strategy = conntrack_strategy(&node);
    assert!(strategy.starts_with("prebuilt/"), "the fallback keeps running, not {strategy}");
    assert_matches_kernel(&node.loader, &lab, |_| true);
    let cache = std::fs::read_dir(node.work.path().join("btf-cache")).expect("cache dir").count();
    assert_eq!(cache, 0, "a BTF that did not fit is not kept for the next start");
}

#[test]
fn a_vmlinux_of_another_build_carries_its_banners_build_and_the_node_refuses_it() {
    let node = Node::start_with(None, hidden_btf);
    let key = kernel_key();
    let release = key.split_once('-').expect("key").1.to_string();
    // This kernel's types in a file whose `Linux version` banner says it is another build
    // of this release: a mislabelled vmlinux whose type names match (the offsets of a
    // real other build would not), which relocations alone would accept.
    let vmlinux = node.work.path().join("vmlinux-of-another-build");
    let mut bytes = std::fs::read("/sys/kernel/btf/vmlinux").expect("this kernel's BTF");
    bytes.extend_from_slice(
        format!("Linux version {release} (builder@elsewhere) (gcc) #9 SMP another build\n").as_bytes(),
    );
    std::fs::write(&vmlinux, bytes).expect("write the vmlinux");
    let object = objects(node.work.path()).join("conntrack.bpf.o");
    let file = path_str(&vmlinux);

    // Published under another release: refused by the publisher, naming the banner's.
    let repo = path_str(&node.repo.dir).to_string();
    let other = ["--release", "9.9.9-other", "--arch", std::env::consts::ARCH];
    let mut args = vec!["publish-btf", "--repo", &repo, "--object", path_str(&object), "--vmlinux", file];
    args.extend_from_slice(&other);
    let out = config_service(&args);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains(&release) && said.contains("banner"), "{said}");

    // Published as what it is: the payload records the banner's build, the node refuses it.
    publish_btf(&node, &object, &["--vmlinux", file, "--arch", std::env::consts::ARCH]);
    let error = node.wait_reported(&key, 1, 3);
    let message = error["apply_error"].as_str().unwrap_or_default();
    assert!(
        message.contains("#9 SMP another build") && message.contains("publish this build's BTF"),
        "{error:#}"
    );
    let config = node.config();
    assert_ne!(btf_line(&config)["source"], "remote", "nothing adopted: {config:#}");
}

#[test]
fn a_node_whose_kernel_has_btf_ignores_the_product_and_says_so() {
    let lab = NatLab::new("rc-btf-own").expect("lab");
    let node = Node::start_with(Some(&lab), |_| String::new());
    assert_eq!(conntrack_strategy(&node), "core/tp_btf");
    let key = kernel_key();
    publish_btf(&node, &objects(node.work.path()).join("conntrack.bpf.o"), &[]);
    node.wait_reported(&key, 1, 2);
    let config = node.config();
    let value = btf_line(&config)["value"].as_str().unwrap_or_default().to_string();
    assert!(value.contains("ignored: this node has its own"), "{config:#}");
    assert_eq!(conntrack_strategy(&node), "core/tp_btf", "nothing reloaded");
}

/// Peak resident memory of process `pid`, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).expect("VmHWM");
    kib.trim().trim_end_matches("kB").trim().parse::<u64>().expect("VmHWM in kB") * 1024
}

#[test]
fn a_btf_compression_bomb_is_refused_by_the_controller_before_it_unpacks_in_full() {
    const UNPACKED: u64 = 256 << 20;
    let node = Node::start_with(None, hidden_btf);
    let key = kernel_key();
    let release = key.split_once('-').expect("key").1.to_string();
    // A BTF header and 256 MiB of zeros, xz'd: a few hundred KiB on the wire.
    let script = format!(
        "(printf '\\237\\353\\001\\000\\030\\000\\000\\000'; head -c {UNPACKED} /dev/zero) | xz -1 | base64 -w0"
    );
    let out = std::process::Command::new("sh").args(["-c", &script]).output().expect("make the bomb");
    assert!(out.status.success(), "xz: {}", String::from_utf8_lossy(&out.stderr));
    let data = String::from_utf8(out.stdout).expect("base64 is text");
    assert!((data.len() as u64) < UNPACKED / 100, "a real bomb: {} bytes", data.len());
    let payload = serde_json::json!({
        "release": release, "arch": std::env::consts::ARCH, "compression": "xz", "data": data
    });
    node.repo.publish_product("BTF", &key, &payload.to_string());

    let error = node.wait_reported(&key, 1, 3);
    let message = error["apply_error"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("refused by the controller") && message.contains("decompressed"),
        "{error:#}"
    );
    let peak = peak_rss(node.controller.process.pid());
    println!("controller peak RSS after the bomb: {} MiB", peak >> 20);
    // The limit (16 MiB) plus the process itself; unpacking in full would take 256 MiB.
    assert!(peak < 96 << 20, "the controller's memory grew to {} MiB", peak >> 20);
    let config = node.config();
    assert_eq!(btf_line(&config)["source"], "file", "never pushed to the loader: {config:#}");
}
