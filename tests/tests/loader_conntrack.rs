//! The loader binary against the kernel's own conntrack table: every NAT translation that
//! `conntrack -L` shows must come back from `loaderctl conntrack list --json` with the same
//! reply tuple, and nothing else may. Each test builds a throwaway network namespace with
//! DNAT rules (TCP/UDP, IPv4/IPv6) and runs the loader inside it, so that its ctnetlink
//! dump and destroy events cover the namespace's entries.
use std::net::IpAddr;
use std::time::{Duration, Instant};

use e2e_tests::compare::{assert_matches_kernel, kernel_nat, listed, tuple};
use e2e_tests::loader::{LoaderOptions, LoaderProcess};
use e2e_tests::{L4, NatLab, Tuple, oracle};

fn in_lab<'a>(lab: &'a NatLab, extra_toml: &'a str) -> LoaderOptions<'a> {
    LoaderOptions { netns: Some(lab.netns.name()), extra_toml, ..Default::default() }
}

#[test]
fn every_nat_entry_is_listed_with_its_reply_tuple_and_nothing_else() {
    let lab = NatLab::new("ldr-live").expect("lab");
    let loader = LoaderProcess::start(in_lab(&lab, ""));
    let _connections = lab.connect_all().expect("connections");
    assert_matches_kernel(&loader, &lab, |_| true);
}

#[test]
fn entries_that_existed_before_the_loader_started_are_listed() {
    let lab = NatLab::new("ldr-dump").expect("lab");
    let _connections = lab.connect_all().expect("connections");
    let loader = LoaderProcess::start(in_lab(&lab, ""));
    assert_matches_kernel(&loader, &lab, |_| true);
}

#[test]
fn with_udpv6_disabled_no_ipv6_udp_entry_is_listed() {
    let lab = NatLab::new("ldr-noudp6").expect("lab");
    let before = lab.connect_all().expect("connections before start");
    let loader = LoaderProcess::start(in_lab(&lab, "[conntrack]\nudpv6_enabled = false\n"));
    let after = lab.connect_all().expect("connections after start");
    let udp6 = |t: &Tuple| t.protocol == L4::Udp && t.src.is_ipv6();
    assert!(kernel_nat(&lab).iter().any(|(o, _)| udp6(o)), "the kernel must have IPv6 UDP NAT entries");
    assert_matches_kernel(&loader, &lab, |t| !udp6(t));
    drop((before, after));
}

#[test]
fn an_entry_deleted_with_conntrack_d_disappears_within_two_seconds() {
    let lab = NatLab::new("ldr-del").expect("lab");
    let loader = LoaderProcess::start(in_lab(&lab, ""));
    let _connection = lab.tcp_connect_v4().expect("connection");
    assert_matches_kernel(&loader, &lab, |_| true);
    let (original, _) = kernel_nat(&lab).into_iter().next().expect("an entry");
    let deleted_at = Instant::now();
    oracle::delete(&lab.netns, &original).expect("conntrack -D");
    while listed(&loader, &lab).iter().any(|(o, _)| *o == original) {
        assert!(
            deleted_at.elapsed() < Duration::from_secs(2),
            "{original} still listed 2 s after conntrack -D"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("entry gone from the loader {:?} after conntrack -D", deleted_at.elapsed());
}

#[test]
fn lookup_translates_both_directions_over_the_socket() {
    let lab = NatLab::new("ldr-lookup").expect("lab");
    let loader = LoaderProcess::start(in_lab(&lab, ""));
    let _connection = lab.tcp_connect_v4().expect("connection");
    assert_matches_kernel(&loader, &lab, |_| true);
    let (original, reply) = kernel_nat(&lab).into_iter().next().expect("an entry");
    let netns = lab.netns.inode().expect("inode").to_string();
    let endpoint = |ip: IpAddr, port: u16| match ip {
        IpAddr::V4(ip) => format!("{ip}:{port}"),
        IpAddr::V6(ip) => format!("[{ip}]:{port}"),
    };
    for (ask, want) in [(original, reply), (reply, original)] {
        let answer = loader.ctl_json(&[
            "conntrack",
            "lookup",
            "tcp",
            &endpoint(ask.src, ask.sport),
            &endpoint(ask.dst, ask.dport),
            "--netns",
            &netns,
        ]);
        assert_eq!(answer["found"], true, "{ask} not found: {answer:#}");
        assert_eq!(tuple(&answer["translated"]), want);
    }
    let miss =
        loader.ctl_json(&["conntrack", "lookup", "tcp", "192.0.2.1:1", "192.0.2.2:2", "--netns", &netns]);
    assert_eq!(miss["found"], false);
}
