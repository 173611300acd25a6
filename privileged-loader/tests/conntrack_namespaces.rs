//! Every conntracker and other network namespaces, on the real kernel.
//!
//! The conntracker runs on a thread inside a "host" namespace (standing in for the
//! node's); NAT'd traffic runs in a second namespace joined to it by a veth pair, which
//! gives the second one a namespace id in the host's, as container runtimes do. The
//! oracle is `conntrack -L`/`-D` run *in the second namespace*. Needs root.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::time::Duration;

use e2e_tests::{L4, NatLab, Netns, oracle};
use privileged_loader::conntrack::reach::{self, Reach};

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
    // Listing is eventual (the 2 s bound below is the issue's, for removal); a loaded CI
    // machine may take longer than 2 s to run four connections through the hook.
    let listed = eventually(Duration::from_secs(5), || tracker.entries_in(netns) == want);
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
    // Two pods, both alive to the end: a namespace deleted meanwhile could hand its inode
    // number to the next one (see docs/conntrack.md on deleted namespaces).
    let (pod_core, pod_netlink) = (NatLab::new("ns-late-pod").unwrap(), NatLab::new("ns-late-pod2").unwrap());
    join_by_veth(&host, &pod_core);
    covers_the_second_namespace("core", &pod_core, &core);
    join_by_veth(&host, &pod_netlink);
    covers_the_second_namespace("netlink", &pod_netlink, &netlink);
}

/// docs/conntrack.md: a namespace without an id in the loader's is not heard. The eBPF
/// conntrackers still list its translations (the hook sees every namespace) but its
/// DESTROY events never come (entries leave by the sweep: not within 2 s); the netlink
/// conntracker lists nothing of it until a sweep dumps it (60 s here).
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

/// A namespace that existed before the conntracker started, with connections made before
/// it started and no namespace id: no event of it is heard, and the idle connections send
/// nothing the hook could see. Its entries are listed right after start all the same (the
/// initial dump, through a socket opened inside it), status names it as covered, and an
/// entry `conntrack -D` deletes there (unheard) is removed by the sweep.
fn a_namespace_reached_at_start_is_dumped_and_swept(strategy: &str) {
    let host = Netns::new(&format!("ns-reach-host-{strategy}")).unwrap();
    let lab = NatLab::new(&format!("ns-reach-pod-{strategy}")).unwrap();
    let _connections = lab.connect_all().unwrap();
    let netns = lab.netns.inode().unwrap();
    let want = expected(&lab);
    assert_eq!(want.len(), 4, "TCP/UDP over IPv4/IPv6 in conntrack -L: {want:#?}");
    let tracker = Pinned::start_with(&host, strategy, |cfg| cfg.sweep_interval_secs = 1);
    let listed = eventually(Duration::from_secs(5), || tracker.entries_in(netns) == want);
    assert!(listed, "{strategy}: listed {:#?}\nconntrack -L {want:#?}", tracker.entries_in(netns));
    assert!(covered_in_status(&tracker).contains(&netns), "{strategy}: {:#?}", tracker.notes());

    // A UDP flow: a TCP connection's next packet (a late ACK on a loaded machine) would
    // make the kernel track it again, under the same tuples.
    let entries = oracle::nat_entries(&lab.netns).unwrap();
    let victim = entries.iter().find(|e| e.original.protocol == L4::Udp).expect("a UDP entry");
    oracle::delete(&lab.netns, &victim.original).unwrap();
    let original = tuple(&victim.original);
    let after = expected(&lab);
    assert!(after.len() == 3 && after.iter().all(|e| e.original != original), "conntrack -D: {after:#?}");
    // Two sweeps must miss it (docs/conntrack.md, "The sweep"): 1 s apart here, but each
    // dumps every namespace of the machine (other tests' too), which takes a while on a
    // loaded one.
    let swept = eventually(Duration::from_secs(20), || tracker.entries_in(netns) == after);
    assert!(
        swept,
        "{strategy}: after conntrack -D of {original:?} there, listed {:#?}",
        tracker.entries_in(netns)
    );
}

#[test]
fn core_dumps_and_sweeps_a_namespace_that_existed_at_start() {
    a_namespace_reached_at_start_is_dumped_and_swept("core");
}

#[test]
fn prebuilt_dumps_and_sweeps_a_namespace_that_existed_at_start() {
    a_namespace_reached_at_start_is_dumped_and_swept("prebuilt");
}

#[test]
fn netlink_dumps_and_sweeps_a_namespace_that_existed_at_start() {
    a_namespace_reached_at_start_is_dumped_and_swept("netlink");
}

/// The other namespaces the status note lists as dumped and swept.
fn covered_in_status(tracker: &Pinned) -> Vec<u32> {
    let notes = tracker.notes();
    let Some(note) = notes.iter().find(|n| n.starts_with(reach::NOTE_PREFIX)) else { return Vec::new() };
    let list = note.split("other(s) [").nth(1).and_then(|rest| rest.split(']').next()).unwrap_or_default();
    list.split(", ").filter_map(|inode| inode.parse().ok()).collect()
}

/// Status follows namespaces as they come and go: one created after start is entered
/// (this test holds CAP_SYS_ADMIN, as a loader does that keeps it) and its entries are
/// read at once; once it is deleted its socket is let go (it would pin the namespace)
/// and status no longer lists it.
#[test]
fn the_coverage_note_follows_namespaces_as_they_come_and_go() {
    let host = Netns::new("ns-cov-host").unwrap();
    let tracker = Pinned::start(&host, "netlink");
    let lab = NatLab::new("ns-cov-pod").unwrap();
    let connections = lab.connect_all().unwrap();
    let netns = lab.netns.inode().unwrap();
    let period = reach::REFRESH_PERIOD * 3;
    assert!(eventually(period, || covered_in_status(&tracker).contains(&netns)), "{:#?}", tracker.notes());
    let want = expected(&lab);
    assert!(eventually(period, || tracker.entries_in(netns) == want), "its entries, without events (no id)");
    drop(connections);
    drop(lab);
    assert!(eventually(period, || !covered_in_status(&tracker).contains(&netns)), "{:#?}", tracker.notes());
}

/// Without CAP_SYS_ADMIN (the shipped pod does not grant it) no other namespace can be
/// entered: each is listed as not covered, and why.
#[test]
fn without_cap_sys_admin_other_namespaces_are_not_covered_and_status_says_why() {
    use caps::{CapSet, Capability};
    let host = Netns::new("ns-nocap-host").unwrap();
    let lab = NatLab::new("ns-nocap-pod").unwrap();
    let netns = lab.netns.inode().unwrap();
    let (covered, why, note) = host
        .run(move || {
            caps::drop(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let reach = runtime.block_on(Reach::of_current_namespace());
            (reach.covered(), reach.why_not_covered(netns), reach.describe())
        })
        .unwrap();
    assert!(covered.is_empty(), "nothing entered without CAP_SYS_ADMIN: {covered:?}");
    let why = why.expect("the namespace is listed as not covered");
    assert!(why.contains("CAP_SYS_ADMIN"), "{why}");
    assert!(note.contains(&why) && note.contains(&netns.to_string()), "{note}");
}
