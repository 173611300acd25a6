//! Every conntracker and other network namespaces, on the real kernel.
//!
//! The conntracker runs on a thread inside a "host" namespace (standing in for the
//! node's); NAT'd traffic runs in a second namespace joined to it by a veth pair, which
//! gives the second one a namespace id in the host's, as container runtimes do. The
//! oracle is `conntrack -L`/`-D` run *in the second namespace*. Needs root.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::time::Duration;

use e2e_tests::{NatLab, Netns, oracle};

#[path = "conntrack_support/mod.rs"]
mod conntrack_support;
use conntrack_support::{Pinned, eventually, expected, join_by_veth, tuple};

/// Traffic in the second namespace is listed with its inode, exactly as `conntrack -L`
/// there shows it; `conntrack -D` there removes an entry within 2 s.
fn covers_the_second_namespace(strategy: &str, lab: &NatLab, tracker: &Pinned) {
    let _connections = lab.connect_all().unwrap();
    let netns = lab.netns.inode().unwrap();
    let want = expected(lab);
    assert_eq!(want.len(), 4, "TCP/UDP over IPv4/IPv6 in conntrack -L: {want:#?}");
    let listed = eventually(Duration::from_secs(2), || tracker.entries_in(netns) == want);
    assert!(listed, "{strategy}: listed {:#?}\nconntrack -L {want:#?}", tracker.entries_in(netns));

    let victim = oracle::nat_entries(&lab.netns).unwrap()[0];
    oracle::delete(&lab.netns, &victim.original).unwrap();
    let original = tuple(&victim.original);
    let gone = eventually(Duration::from_secs(2), || {
        tracker.entries_in(netns).iter().all(|e| e.original != original)
    });
    assert!(gone, "{strategy}: {original:?} deleted in the second namespace is still listed after 2 s");
    assert_eq!(tracker.entries_in(netns).len(), 3, "{strategy}: only the deleted entry went");
}

fn a_second_namespace_with_an_id_is_covered(strategy: &str) {
    let host = Netns::new(&format!("ns-host-{strategy}")).unwrap();
    let lab = NatLab::new(&format!("ns-pod-{strategy}")).unwrap();
    join_by_veth(&host, &lab);
    let tracker = Pinned::start(&host, strategy);
    covers_the_second_namespace(strategy, &lab, &tracker);
    let notes = tracker.notes();
    assert!(
        notes.iter().any(|n| n.contains("every namespace with a namespace id")),
        "{strategy}: status says which namespaces are heard: {notes:#?}"
    );
}

#[test]
fn core_covers_a_second_namespace_joined_by_veth() {
    a_second_namespace_with_an_id_is_covered("core");
}

#[test]
fn prebuilt_covers_a_second_namespace_joined_by_veth() {
    a_second_namespace_with_an_id_is_covered("prebuilt");
}

#[test]
fn netlink_covers_a_second_namespace_joined_by_veth() {
    a_second_namespace_with_an_id_is_covered("netlink");
}

#[test]
fn a_namespace_created_after_start_is_covered() {
    let host = Netns::new("ns-late-host").unwrap();
    let core = Pinned::start(&host, "core");
    let netlink = Pinned::start(&host, "netlink");
    let lab = NatLab::new("ns-late-pod").unwrap();
    join_by_veth(&host, &lab);
    covers_the_second_namespace("core", &lab, &core);
    // Same lab: the deleted entry is gone from the kernel, so 3 of the first 4 remain;
    // a fresh lab gives the netlink conntracker the same 4-entry check.
    drop(lab);
    let lab = NatLab::new("ns-late-pod2").unwrap();
    join_by_veth(&host, &lab);
    covers_the_second_namespace("netlink", &lab, &netlink);
}

/// docs/conntrack.md: a namespace without an id in the loader's is not heard. The eBPF
/// conntrackers still list its translations (the hook sees every namespace) but its
/// DESTROY events never come (entries leave by the sweep's age rule or the LRU); the
/// netlink conntracker lists nothing of it.
#[test]
fn a_namespace_without_an_id_is_not_heard_as_documented() {
    let host = Netns::new("ns-noid-host").unwrap();
    let lab = NatLab::new("ns-noid-pod").unwrap();
    let core = Pinned::start(&host, "core");
    let netlink = Pinned::start(&host, "netlink");
    let _connections = lab.connect_all().unwrap();
    let netns = lab.netns.inode().unwrap();
    let want = expected(&lab);
    assert!(eventually(Duration::from_secs(2), || core.entries_in(netns) == want), "the hook lists them");
    let victim = oracle::nat_entries(&lab.netns).unwrap()[0];
    oracle::delete(&lab.netns, &victim.original).unwrap();
    let original = tuple(&victim.original);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        core.entries_in(netns).iter().any(|e| e.original == original),
        "no DESTROY event is heard from a namespace without an id"
    );
    assert!(netlink.entries_in(netns).is_empty(), "the netlink conntracker hears nothing of it");
}
