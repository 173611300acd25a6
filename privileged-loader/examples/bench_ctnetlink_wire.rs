//! What the ctnetlink wire code costs (run as root, release build):
//!
//! ```text
//! cargo run --release -p privileged-loader --example bench_ctnetlink_wire [entries]
//! ```
//!
//! - parse: `wire::parse_sequenced` over the kernel captures of `ctnetlink/fixtures/`
//!   (a two-entry dump ending in DONE, one DESTROY event), per message;
//! - build: `wire::dump_request` and `wire::get_request`, per request;
//! - dump: `CtNetlink::dump` of a throwaway namespace holding `entries` (default 20,000)
//!   NAT'd UDP entries, made by sending one datagram from each of as many source ports
//!   through the namespace's DNAT rule; the best and the median of 5 dumps.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark program: a panic is its report

use std::hint::black_box;
use std::time::{Duration, Instant};

use e2e_tests::{L4, NatLab};
use privileged_loader::conntrack::ctnetlink::wire;
use privileged_loader::conntrack::{Protocol, Tuple};

#[path = "../tests/conntrack_support/mod.rs"]
mod conntrack_support;

const DUMP: &[u8] = include_bytes!("../src/conntrack/ctnetlink/fixtures/dump.bin");
const DESTROY: &[u8] = include_bytes!("../src/conntrack/ctnetlink/fixtures/destroy.bin");
const ROUNDS: u32 = 200_000;

fn main() {
    let entries: u32 = std::env::args().nth(1).map_or(20_000, |a| a.parse().expect("entries: a number"));
    for (name, bytes) in [("dump.bin (2 entries + DONE)", DUMP), ("destroy.bin (1 DESTROY)", DESTROY)] {
        let messages = wire::parse_sequenced(bytes).unwrap().len() as u32;
        let per = time_per(ROUNDS, || {
            black_box(wire::parse_sequenced(black_box(bytes)).unwrap());
        });
        println!("parse {name}: {per:?} per datagram, {:?} per message", per / messages);
    }
    let tuple = Tuple {
        src: "10.99.0.1".parse().unwrap(),
        src_port: 49180,
        dst: "10.99.0.1".parse().unwrap(),
        dst_port: 80,
        protocol: Protocol::Tcp,
    };
    let per = time_per(ROUNDS, || {
        black_box(wire::dump_request(black_box(7)));
    });
    println!("build dump_request: {per:?}");
    let per = time_per(ROUNDS, || {
        black_box(wire::get_request(black_box(7), black_box(&tuple)));
    });
    println!("build get_request: {per:?}");

    if entries == 0 {
        return;
    }
    let lab = NatLab::new("wirebench").expect("create the bench namespace (run as root)");
    let to = lab.front(L4::Udp, false);
    lab.netns
        .run(move || {
            // One source port each (20000 up): distinct tuples, one socket open at a time.
            for i in 0..entries {
                let port = u16::try_from(20_000 + i).expect("at most 45,535 entries");
                let socket = std::net::UdpSocket::bind(("0.0.0.0", port)).unwrap();
                socket.send_to(b"x", to).unwrap();
            }
        })
        .unwrap();
    let mut times: Vec<Duration> = Vec::new();
    let mut listed = 0;
    for _ in 0..5 {
        let (n, t) = conntrack_support::timed_dump(&lab.netns);
        listed = n;
        times.push(t);
    }
    times.sort();
    println!("dump of {listed} entries: best {:?}, median {:?} (5 dumps)", times[0], times[2]);
}

fn time_per(rounds: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..rounds / 10 {
        f();
    }
    let t0 = Instant::now();
    for _ in 0..rounds {
        f();
    }
    t0.elapsed() / rounds
}
