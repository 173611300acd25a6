//! `BTF` configs a node must refuse, end to end (the real service, controller and loader):
//! the loader's own switches (`btf.remote_config`, the allow-list), the controller's size
//! limit, and payloads that are not BTF. Each is an `error` the service hears, and the
//! node keeps running what it ran: the conntracker on its fallback, nothing cached.
use std::path::Path;
use std::time::Duration;

use e2e_tests::NatLab;
use serde_json::Value;
use trust::products::BtfPayload;

use super::super::Node;
use super::super::harness::*;
use super::{btf_line, conntrack_strategy, hidden_btf, kernel_key, objects, publish_btf};

/// The files in the node's remote-BTF cache (none when it was never created).
fn cached_files(node: &Node) -> usize {
    std::fs::read_dir(node.work.path().join("btf-cache")).map_or(0, |d| d.count())
}

/// What a refused BTF leaves as it was: the conntracker on `fallback`, nothing cached,
/// `btf.remote` still the file's; returns `loaderctl config`.
fn assert_nothing_changed(node: &Node, fallback: &str) -> Value {
    assert_eq!(conntrack_strategy(node), fallback, "the conntracker keeps its fallback");
    assert_eq!(cached_files(node), 0, "a refused BTF is not kept for the next start");
    let config = node.config();
    assert_eq!(btf_line(&config)["source"], "file", "{config:#}");
    config
}

/// The loader's record of the config at `path` in `loaderctl config`, if it has one.
fn loader_record<'c>(config: &'c Value, path: &str) -> Option<&'c Value> {
    config["remote_configs"].as_array()?.iter().find(|r| r["path"] == path)
}

/// A `BTF` config for this node's kernel carrying `bytes` as they are (no compression),
/// published at the service as it would be by hand: correctly signed, whatever it holds.
fn publish_bytes_as_btf(node: &Node, key: &str, bytes: &[u8]) {
    let release = key.split_once('-').expect("key").1;
    let payload = BtfPayload::encode(release, std::env::consts::ARCH, None, bytes, false).expect("encode");
    node.repo.publish_product("BTF", key, &serde_json::to_string(&payload).expect("payload JSON"));
}

/// A node running its conntracker on the fallback (its kernel's BTF hidden), with
/// `allow` added to the loader's `[remote_config.allow]` and `btf` to its `[btf]`.
fn node_on_fallback(lab: &NatLab, allow: &str, btf: &str) -> (Node, String) {
    let node = Node::start_with(Some(lab), |work| format!("{allow}{}{btf}", hidden_btf(work)));
    let fallback = conntrack_strategy(&node);
    assert!(fallback.starts_with("prebuilt/"), "without BTF: offset guessing, not {fallback}");
    (node, fallback)
}

/// Publishes this kernel's minimized BTF and returns the error the service hears for it.
fn refusal_of_this_kernels_btf(node: &Node) -> String {
    publish_btf(node, &objects(node.work.path()).join("conntrack.bpf.o"), &[]);
    let error = node.wait_reported(&kernel_key(), 1, 3);
    error["apply_error"].as_str().unwrap_or_default().to_string()
}

#[test]
fn with_the_remote_btf_source_off_a_published_btf_is_an_error_naming_the_setting() {
    let lab = NatLab::new("rc-btf-off").expect("lab");
    let (node, fallback) = node_on_fallback(&lab, "", "remote_config = false\n");
    let message = refusal_of_this_kernels_btf(&node);
    assert!(
        message.contains("btf.remote_config = false") && message.contains("set btf.remote_config = true"),
        "{message}"
    );
    let config = assert_nothing_changed(&node, &fallback);
    let line = btf_line(&config)["value"].as_str().unwrap_or_default();
    assert!(line.contains("the remote BTF source is off"), "{config:#}");
    let path = format!("2/BTF/{}/btf.json", kernel_key());
    let record = loader_record(&config, &path).expect("the loader records the refused config");
    assert_eq!(record["state"], "error", "{record:#}");
}

#[test]
fn an_allow_list_without_the_btf_product_refuses_it_naming_the_key() {
    let lab = NatLab::new("rc-btf-deny").expect("lab");
    let allow = "products = [\"CONNTRACK\", \"LOCK_STATS\", \"LOADER_LOG\"]\n";
    let (node, fallback) = node_on_fallback(&lab, allow, "");
    let message = refusal_of_this_kernels_btf(&node);
    assert!(
        message.contains("product BTF is not allowed") && message.contains("remote_config.allow.products"),
        "{message}"
    );
    assert_nothing_changed(&node, &fallback);
}

/// Sets the controller's `remote_config.max_btf_bytes` and restarts it on the same state.
fn limit_controller_btf(node: &mut Node, limit: u64) {
    let file = &node.controller.config_file;
    let config = std::fs::read_to_string(file).expect("read the controller's config");
    let limited =
        config.replacen("[remote_config]\n", &format!("[remote_config]\nmax_btf_bytes = {limit}\n"), 1);
    assert_ne!(limited, config, "the controller's config has a [remote_config] table");
    std::fs::write(file, limited).expect("write the controller's config");
    node.controller.restart(node.work.path());
}

/// Target files the service sent in the answers logged after the first `skip` requests.
fn files_sent_since(node: &Node, skip: usize) -> u64 {
    let requests = node.service.requests();
    requests.iter().skip(skip).filter_map(|r| r["answer"]["target_files"].as_u64()).sum()
}

#[test]
fn a_btf_over_the_controllers_limit_is_refused_from_its_signed_length_and_never_reaches_the_loader() {
    let mut node = Node::start_with(None, hidden_btf);
    limit_controller_btf(&mut node, 1 << 20);
    let key = kernel_key();
    let path = format!("2/BTF/{key}/btf.json");
    // The whole BTF of this kernel (5.5 MB), uncompressed: over a 1 MiB limit.
    let before = node.service.requests().len();
    publish_btf(&node, &objects(node.work.path()).join("conntrack.bpf.o"), &["--full", "--no-compress"]);

    let error = node.wait_reported(&key, 1, 3);
    let message = error["apply_error"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("refused by the controller")
            && message.contains("signed length")
            && message.contains("remote_config.max_btf_bytes")
            && message.contains("not decoded"),
        "{error:#}"
    );
    // The wire format sends a config's file in the answer that brings the signed targets
    // naming it, so it arrives once (bounded by max_message_bytes); the controller refuses
    // it from the signed length without decoding it, and later polls do not fetch it again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(files_sent_since(&node, before), 1, "sent once, with its targets");
    let config = node.config();
    assert!(loader_record(&config, &path).is_none(), "never pushed to the loader: {config:#}");
    assert_eq!(btf_line(&config)["source"], "file", "{config:#}");
    let status = node.controller.status().expect("controller status.json");
    assert_eq!(config_in(&status, &key).map(|c| c["apply_state"].clone()), Some(3.into()), "{status:#}");
}

/// This kernel's BTF header (24 bytes) followed by `tail`: BTF on its face.
fn btf_header_then(tail: &[u8]) -> Vec<u8> {
    let own = std::fs::read("/sys/kernel/btf/vmlinux").expect("this kernel's BTF");
    let mut bytes = own[..24].to_vec();
    bytes.extend_from_slice(tail);
    bytes
}

#[test]
fn a_payload_that_is_not_btf_is_refused_by_the_controller_or_the_loaders_parse() {
    let lab = NatLab::new("rc-btf-junk").expect("lab");
    let (node, fallback) = node_on_fallback(&lab, "", "");
    let key = kernel_key();
    let object = objects(node.work.path()).join("conntrack.bpf.o");

    // A JSON document, signed like any config: no BTF header, the controller's gate.
    publish_bytes_as_btf(&node, &key, br#"{"types": ["not", "btf"]}"#);
    let error = node.wait_reported(&key, 1, 3);
    let message = error["apply_error"].as_str().unwrap_or_default();
    assert!(message.starts_with("refused by the controller") && message.contains("not BTF"), "{error:#}");

    // A BTF header in front of an ELF object: past the header check, refused by the
    // loader's parse (the header's sections lie past the end of the data).
    let elf = std::fs::read(Path::new(&object)).expect("the conntracker's object");
    publish_bytes_as_btf(&node, &key, &btf_header_then(&elf[..4096.min(elf.len())]));
    let error = node.wait_reported(&key, 2, 3);
    let message = error["apply_error"].as_str().unwrap_or_default();
    assert!(
        message.contains("not valid BTF") && !message.starts_with("refused by the controller"),
        "{error:#}"
    );
    assert_nothing_changed(&node, &fallback);
}
