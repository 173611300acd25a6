//! Figures for every conntracker and a second network namespace (run as root):
//!
//! ```text
//! cargo run --release -p privileged-loader --example bench_namespaces
//! ```
//!
//! For each of core, prebuilt and netlink, pinned and running inside a "host" namespace,
//! with NAT'd traffic in a second namespace joined to it by a veth pair (so it has a
//! namespace id in the host's, as a pod's has):
//! - completeness: 2,000 new NAT'd UDP flows per second for 10 s in the second namespace,
//!   then the conntracker's entries of that namespace versus `conntrack -L` there;
//! - removal latency: `conntrack -D` of 200 of them, one at a time, in the second
//!   namespace; time from the command's exit until the conntracker no longer translates
//!   the tuple (polled every 0.5 ms), p50/p99/max.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark program: a panic is its report

use std::time::{Duration, Instant};

use e2e_tests::{L4, NatLab, Netns, oracle};

#[path = "../tests/conntrack_support/mod.rs"]
mod conntrack_support;
use conntrack_support::{Pinned, expected, join_by_veth, tuple, udp_flows};

const FLOWS_PER_SEC: u32 = 2000;
const FLOW_SECS: u32 = 10;
const DELETIONS: usize = 200;

fn main() {
    for strategy in ["core", "prebuilt", "netlink"] {
        let host = Netns::new(&format!("bns-host-{strategy}")).expect("run as root");
        let lab = NatLab::new(&format!("bns-pod-{strategy}")).unwrap();
        join_by_veth(&host, &lab);
        let tracker = Pinned::start(&host, strategy);
        let netns = lab.netns.inode().unwrap();

        let sent = udp_flows(&lab.netns, lab.front(L4::Udp, false), FLOWS_PER_SEC, FLOW_SECS);
        std::thread::sleep(Duration::from_secs(2));
        let want = expected(&lab);
        let got = tracker.entries_in(netns);
        let found = want.intersection(&got).count();
        println!(
            "{strategy}: {sent} flows in {FLOW_SECS} s in the second namespace; conntrack -L there lists {} NAT'd; listed {found} ({:.2} %), false {}",
            want.len(),
            found as f64 * 100.0 / want.len().max(1) as f64,
            got.difference(&want).count()
        );

        let mut latencies = Vec::new();
        let victims: Vec<_> = oracle::nat_entries(&lab.netns).unwrap().into_iter().take(DELETIONS).collect();
        for victim in &victims {
            let original = tuple(&victim.original);
            oracle::delete(&lab.netns, &victim.original).unwrap();
            let t0 = Instant::now();
            let deadline = t0 + Duration::from_secs(5);
            while tracker.tracker.lookup(&original, netns).unwrap().is_some_and(|(_, ns)| ns == netns)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_micros(500));
            }
            latencies.push(t0.elapsed());
        }
        latencies.sort();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        println!(
            "{strategy}: conntrack -D in the second namespace -> gone from the conntracker ({} deletions): p50 {:?}, p99 {:?}, max {:?}",
            latencies.len(),
            at(0.5),
            at(0.99),
            latencies.last().unwrap()
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at the end: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
}
