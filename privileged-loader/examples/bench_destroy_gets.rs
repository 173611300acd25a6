//! The DESTROY listener's one ctnetlink GET per destroyed connection (run as root):
//!
//! ```text
//! cargo run --release -p privileged-loader --example bench_destroy_gets
//! ```
//!
//! The CO-RE conntracker runs in a throwaway namespace whose UDP conntrack timeout is 1 s,
//! so NAT'd UDP flows made there at a steady rate are destroyed at that rate a second
//! later: a connection churn of that many destroys per second. For each rate, over 10 s:
//! the DESTROY events the listener read, the GETs it made (one per destroyed connection
//! still in the map, to tell a reused tuple's new entry from the destroyed one), their
//! mean round trip, and the share of one core they took. Rates at or above the storm
//! threshold (5,000/s by default) shed the subscription after 3 s: no events, no GETs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark program: a panic is its report

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use e2e_tests::{L4, NatLab};

#[path = "../tests/conntrack_support/mod.rs"]
mod conntrack_support;
use conntrack_support::{Pinned, udp_flows};

const SECS: u32 = 10;

fn main() {
    for rate in [1_000u32, 2_000, 4_000] {
        let lab = NatLab::new(&format!("bdg-{rate}")).expect("run as root");
        let sysctl =
            ["netns", "exec", lab.netns.name(), "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=1"];
        let status = std::process::Command::new("ip").args(sysctl).status().unwrap();
        assert!(status.success(), "setting the UDP conntrack timeout");
        let tracker = Pinned::start(&lab.netns, "core");
        let stats = tracker.stats.clone();
        let read = || {
            (
                stats.destroy_events.load(Ordering::Relaxed),
                stats.destroy_gets.load(Ordering::Relaxed),
                stats.destroy_get_ns.load(Ordering::Relaxed),
            )
        };
        let (events0, gets0, ns0) = read();
        let t0 = Instant::now();
        let sent = udp_flows(&lab.netns, lab.front(L4::Udp, false), rate, SECS);
        let took = t0.elapsed();
        // The last flows' destroys: their timeout, and the kernel's lazy expiry.
        std::thread::sleep(Duration::from_secs(3));
        let (events, gets, ns) = read();
        let (events, gets, ns) = (events - events0, gets - gets0, ns - ns0);
        let mean_us = ns as f64 / gets.max(1) as f64 / 1000.0;
        let core = ns as f64 / took.as_nanos() as f64 * 100.0;
        println!(
            "{rate}/s: {sent} flows in {:.1} s; DESTROY events {events}, GETs {gets} ({:.0} % of events), mean GET {mean_us:.1} µs, {core:.2} % of a core over the run",
            took.as_secs_f64(),
            gets as f64 * 100.0 / events.max(1) as f64,
        );
    }
}
