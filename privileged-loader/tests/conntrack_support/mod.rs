//! Shared by the conntracker tests: `conntrack -L` entries in the loader's representation,
//! and polling for a condition with a deadline.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use e2e_tests::{L4, NatLab, oracle};
use privileged_loader::conntrack::{Entry, Protocol, Tuple};

pub fn tuple(t: &oracle::Tuple) -> Tuple {
    let protocol = match t.protocol {
        L4::Tcp => Protocol::Tcp,
        L4::Udp => Protocol::Udp,
    };
    Tuple { src: t.src, src_port: t.sport, dst: t.dst, dst_port: t.dport, protocol }
}

/// The oracle's NAT'd entries of `lab`'s namespace, keyed by its inode.
#[allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]
pub fn expected(lab: &NatLab) -> BTreeSet<Entry> {
    let netns = lab.netns.inode().unwrap();
    oracle::nat_entries(&lab.netns)
        .unwrap()
        .iter()
        .map(|e| Entry { original: tuple(&e.original), reply: tuple(&e.reply), netns })
        .collect()
}

/// Polls `check` until it holds or `within` passes; returns whether it held.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
