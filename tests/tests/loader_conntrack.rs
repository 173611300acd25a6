//! The loader binary against the kernel's own conntrack table: every NAT translation that
//! `conntrack -L` shows must come back from `loaderctl conntrack list --json` with the same
//! reply tuple, and nothing else may. Each test builds a throwaway network namespace with
//! DNAT rules (TCP/UDP, IPv4/IPv6) and runs the loader inside it, so that its ctnetlink
//! dump and destroy events cover the namespace's entries.
use std::net::IpAddr;
use std::time::{Duration, Instant};

use e2e_tests::compare::{assert_matches_kernel, kernel_nat, listed, tuple};
use e2e_tests::loader::{LoaderOptions, LoaderProcess};
use e2e_tests::process::wait_until;
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

/// What the running conntracker learns after it started reaches `GetStatus` through the
/// chain's writer: a connection storm sheds the DESTROY subscription (a module note),
/// and the note goes when the storm ends.
#[test]
fn a_storm_shed_note_reaches_get_status_and_goes_with_the_storm() {
    const SHED: &str = "DESTROY subscription shed (connection storm)";
    let lab = NatLab::new("ldr-storm").expect("lab");
    let loader = LoaderProcess::start(in_lab(
        &lab,
        "[conntrack]\nstorm_shed_above_per_sec = 100\nstorm_sustain_secs = 1\nsweep_interval_secs = 0\n",
    ));
    let storm = lab.udp_storm(Duration::from_secs(3)).expect("storm thread");
    let noted = |loader: &LoaderProcess| {
        let module = loader.module("conntrack");
        let notes = module["notes"].as_array().cloned().unwrap_or_default();
        notes.iter().any(|n| n.as_str().is_some_and(|n| n.starts_with(SHED)))
    };
    let shed = wait_until(Duration::from_secs(4), || noted(&loader));
    storm.join().expect("storm");
    assert!(shed, "no shed note in GetStatus: {:#}", loader.module("conntrack"));
    let calm = wait_until(Duration::from_secs(8), || !noted(&loader));
    assert!(calm, "the note stays after the storm: {:#}", loader.module("conntrack"));
}

/// The netlink conntracker's event queue overflows while the loader is stopped
/// (SIGSTOP); when it runs again it reads ENOBUFS, resyncs, and `GetStatus` says so in
/// the module's last error, through the chain's writer.
#[test]
fn lost_netlink_events_reach_get_status() {
    let lab = NatLab::new("ldr-enobufs").expect("lab");
    let loader = LoaderProcess::start(in_lab(
        &lab,
        "[conntrack]\nstrategies = [\"netlink\"]\nsweep_interval_secs = 0\n",
    ));
    let pid = loader.process.pid() as i32;
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    // 40,000 new entries: more NEW events than the event socket's queue holds.
    lab.netns
        .run(|| {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            for port in 1..=40_000u16 {
                let _ = socket.send_to(b"x", ("127.0.0.1", port));
            }
        })
        .expect("flows in the lab");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let said = wait_until(Duration::from_secs(20), || {
        loader.module("conntrack")["last_error"].as_str().is_some_and(|e| e.contains("ENOBUFS"))
    });
    let module = loader.module("conntrack");
    assert!(said, "no lost-events warning in GetStatus: {module:#}");
    assert_eq!(module["state"], "running", "{module:#}");
}
