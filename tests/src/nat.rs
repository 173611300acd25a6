//! [`NatLab`]: a namespace with DNAT rules for TCP and UDP, IPv4 and IPv6, and backends.
//!
//! Clients in the namespace connect to a "front" address that exists only on its `lo`;
//! the nft `nat` output chain rewrites the destination to a backend on the loopback
//! address of the same family, so every connection makes a NAT'd conntrack entry.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::oracle::L4;
use crate::traffic::{Backend, Connection};
use crate::{HarnessError, Netns};

/// The addresses clients connect to (on the namespace's `lo`).
pub const FRONT_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const FRONT_V6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 1);
/// Front ports, and the backend ports they are rewritten to.
pub const FRONT_TCP_PORT: u16 = 80;
pub const FRONT_UDP_PORT: u16 = 53;
pub const BACKEND_TCP_PORT: u16 = 8080;
pub const BACKEND_UDP_PORT: u16 = 5353;

/// One DNAT rule: traffic of `protocol` to `from` goes to `to` instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dnat {
    pub protocol: L4,
    pub from: SocketAddr,
    pub to: SocketAddr,
}

impl Dnat {
    /// The nft rule (in an `inet` table's chain).
    pub fn nft_rule(&self) -> String {
        let (family, to) = match self.to {
            SocketAddr::V4(to) => ("ip", to.to_string()),
            SocketAddr::V6(to) => ("ip6", to.to_string()),
        };
        let protocol = match self.protocol {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
        };
        format!(
            "{family} daddr {} {protocol} dport {} dnat {family} to {to}",
            self.from.ip(),
            self.from.port()
        )
    }
}

/// An nft ruleset with `rules` in the `nat` output chain (locally generated traffic).
pub fn nft_ruleset(rules: &[Dnat]) -> String {
    let mut text = String::from(
        "table inet e2e_nat {\n  chain output {\n    type nat hook output priority -100; policy accept;\n",
    );
    for rule in rules {
        text.push_str("    ");
        text.push_str(&rule.nft_rule());
        text.push('\n');
    }
    text.push_str("  }\n}\n");
    text
}

/// A namespace with front addresses, DNAT rules for TCP/UDP over IPv4/IPv6, and running
/// backends. Dropping it stops the backends and deletes the namespace.
pub struct NatLab {
    // Field order matters: backends close their sockets before the namespace goes.
    _backends: Vec<Backend>,
    pub netns: Netns,
}

impl NatLab {
    pub fn new(tag: &str) -> Result<Self, HarnessError> {
        let netns = Netns::new(tag)?;
        netns.add_address(&format!("{FRONT_V4}/32"))?;
        netns.add_address(&format!("{FRONT_V6}/128"))?;
        let rules = default_rules();
        netns.apply_nft(&nft_ruleset(&rules))?;
        let backends =
            rules.iter().map(|r| Backend::start(&netns, r.protocol, r.to)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { _backends: backends, netns })
    }

    /// The front address clients use for `protocol` over IPv4 or IPv6.
    pub fn front(&self, protocol: L4, ipv6: bool) -> SocketAddr {
        let ip: IpAddr = if ipv6 { FRONT_V6.into() } else { FRONT_V4.into() };
        let port = match protocol {
            L4::Tcp => FRONT_TCP_PORT,
            L4::Udp => FRONT_UDP_PORT,
        };
        SocketAddr::new(ip, port)
    }

    /// Opens one NAT'd connection of `protocol` over IPv4 or IPv6.
    pub fn connect(&self, protocol: L4, ipv6: bool) -> Result<Connection, HarnessError> {
        Connection::open(&self.netns, protocol, self.front(protocol, ipv6))
    }

    /// A connection storm, on a thread in the lab: a new NAT'd UDP flow (each from a new
    /// port) every 0.5 ms for `duration`. The caller joins it.
    pub fn udp_storm(&self, duration: Duration) -> Result<JoinHandle<()>, HarnessError> {
        self.udp_storm_until(Arc::new(AtomicBool::new(false)), duration)
    }

    /// A new NAT'd UDP flow (from a new port) every 0.5 ms until `stop` is set or `longest`
    /// has passed: a slow machine (an emulated guest) needs longer than a fast one to
    /// reach a given rate of new connections.
    pub fn udp_storm_until(
        &self,
        stop: Arc<AtomicBool>,
        longest: Duration,
    ) -> Result<JoinHandle<()>, HarnessError> {
        let front = self.front(L4::Udp, false);
        self.netns.spawn(move || {
            let until = Instant::now() + longest;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind a UDP socket in the lab");
                socket.send_to(b"x", front).expect("send to the lab's front address");
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    }

    pub fn tcp_connect_v4(&self) -> Result<Connection, HarnessError> {
        self.connect(L4::Tcp, false)
    }

    /// One connection of each kind: TCP/UDP × IPv4/IPv6.
    pub fn connect_all(&self) -> Result<Vec<Connection>, HarnessError> {
        [(L4::Tcp, false), (L4::Udp, false), (L4::Tcp, true), (L4::Udp, true)]
            .into_iter()
            .map(|(protocol, ipv6)| self.connect(protocol, ipv6))
            .collect()
    }
}

fn default_rules() -> Vec<Dnat> {
    let rule = |protocol, front: IpAddr, fport, back: IpAddr, bport| Dnat {
        protocol,
        from: SocketAddr::new(front, fport),
        to: SocketAddr::new(back, bport),
    };
    let (v4, v6) = (IpAddr::V4(FRONT_V4), IpAddr::V6(FRONT_V6));
    let (lo4, lo6) = (IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST));
    vec![
        rule(L4::Tcp, v4, FRONT_TCP_PORT, lo4, BACKEND_TCP_PORT),
        rule(L4::Udp, v4, FRONT_UDP_PORT, lo4, BACKEND_UDP_PORT),
        rule(L4::Tcp, v6, FRONT_TCP_PORT, lo6, BACKEND_TCP_PORT),
        rule(L4::Udp, v6, FRONT_UDP_PORT, lo6, BACKEND_UDP_PORT),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_use_the_family_of_their_target() {
        let rules = default_rules();
        assert_eq!(rules[0].nft_rule(), "ip daddr 10.99.0.1 tcp dport 80 dnat ip to 127.0.0.1:8080");
        assert_eq!(rules[3].nft_rule(), "ip6 daddr fd99::1 udp dport 53 dnat ip6 to [::1]:5353");
        let ruleset = nft_ruleset(&rules);
        assert!(ruleset.contains("type nat hook output priority -100"));
        assert_eq!(ruleset.matches("dnat").count(), 4);
    }
}
