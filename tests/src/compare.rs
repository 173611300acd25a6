//! The comparison every conntracker test makes: what the loader lists for a lab's
//! namespace (`loaderctl conntrack list --netns <inode> --json`) against the NAT'd entries
//! the kernel holds there (`conntrack -L`).
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::loader::LoaderHandle;
use crate::{L4, NatLab, Tuple, oracle};

/// One connection: its original and reply tuples.
pub type Pair = (Tuple, Tuple);

/// A tuple as `loaderctl --json` prints it.
pub fn tuple(v: &Value) -> Tuple {
    let protocol = match v["proto"].as_str() {
        Some("tcp") => L4::Tcp,
        Some("udp") => L4::Udp,
        other => panic!("unexpected protocol {other:?} in {v}"),
    };
    let addr = |k: &str| v[k].as_str().and_then(|s| s.parse::<IpAddr>().ok()).expect("address");
    let port = |k: &str| v[k].as_u64().and_then(|p| u16::try_from(p).ok()).expect("port");
    Tuple { protocol, src: addr("src"), sport: port("sport"), dst: addr("dst"), dport: port("dport") }
}

/// What the loader lists for the lab's namespace. The eBPF hooks see every namespace on
/// the host (tests run in parallel, all with the same addresses), so the comparison with
/// the lab's own `conntrack -L` is per namespace.
pub fn listed(loader: &impl LoaderHandle, lab: &NatLab) -> BTreeSet<Pair> {
    let netns = lab.netns.inode().expect("inode").to_string();
    let list = loader.ctl_json(&["conntrack", "list", "--netns", &netns]);
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|e| (tuple(&e["original"]), tuple(&e["reply"])))
        .collect()
}

/// The NAT'd entries the kernel holds in the lab's namespace.
pub fn kernel_nat(lab: &NatLab) -> BTreeSet<Pair> {
    oracle::nat_entries(&lab.netns)
        .expect("conntrack -L")
        .into_iter()
        .map(|e| (e.original, e.reply))
        .collect()
}

/// Waits up to 2 s for the loader's list to equal the kernel's NAT'd entries for which
/// `keep(original)` holds, then asserts it, naming what is missing and what is extra.
pub fn assert_matches_kernel(loader: &impl LoaderHandle, lab: &NatLab, keep: impl Fn(&Tuple) -> bool) {
    let expected: BTreeSet<Pair> = kernel_nat(lab).into_iter().filter(|(o, _)| keep(o)).collect();
    assert!(!expected.is_empty(), "the test made no NAT'd connection");
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut got = listed(loader, lab);
    while got != expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        got = listed(loader, lab);
    }
    let missing: Vec<_> = expected.difference(&got).collect();
    let extra: Vec<_> = got.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "loader vs conntrack -L: missing {missing:#?}\nextra {extra:#?}\nloader log:\n{}",
        loader.log_text()
    );
}
