//! `conntrack -L` as the oracle: what the kernel's conntrack table holds, read by a tool
//! this project did not write (conntrack-tools), parsed into plain values.
use std::fmt;
use std::net::IpAddr;

use crate::{HarnessError, Netns};

/// Transport protocol of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4 {
    Tcp,
    Udp,
}

/// One direction of a connection, as `conntrack -L` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    pub protocol: L4,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

/// A conntrack entry: its original and reply tuples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entry {
    pub original: Tuple,
    pub reply: Tuple,
}

impl Entry {
    /// True when NAT rewrote the reply: it is not the original turned around.
    pub fn is_nat(&self) -> bool {
        let (o, r) = (&self.original, &self.reply);
        !(o.src == r.dst && o.dst == r.src && o.sport == r.dport && o.dport == r.sport)
    }
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {} {} -> {} {}", self.protocol, self.src, self.sport, self.dst, self.dport)
    }
}

/// Every TCP/UDP entry (IPv4 and IPv6) of the namespace's conntrack table.
pub fn entries(netns: &Netns) -> Result<Vec<Entry>, HarnessError> {
    let mut all = Vec::new();
    for family in ["ipv4", "ipv6"] {
        let mut cmd = netns.command("conntrack");
        cmd.args(["-L", "-o", "extended", "-f", family]);
        let output = crate::netns::run(&mut cmd)?;
        all.extend(parse_listing(&String::from_utf8_lossy(&output.stdout))?);
    }
    Ok(all)
}

/// The NAT'd entries only (what a conntracker must report).
pub fn nat_entries(netns: &Netns) -> Result<Vec<Entry>, HarnessError> {
    Ok(entries(netns)?.into_iter().filter(Entry::is_nat).collect())
}

/// Deletes the entry whose original tuple is `original` (`conntrack -D`).
pub fn delete(netns: &Netns, original: &Tuple) -> Result<(), HarnessError> {
    let family = if original.src.is_ipv4() { "ipv4" } else { "ipv6" };
    let protocol = match original.protocol {
        L4::Tcp => "tcp",
        L4::Udp => "udp",
    };
    let mut cmd = netns.command("conntrack");
    cmd.args(["-D", "-f", family, "-p", protocol])
        .args(["--orig-src", &original.src.to_string(), "--orig-dst", &original.dst.to_string()])
        .args([
            "--orig-port-src",
            &original.sport.to_string(),
            "--orig-port-dst",
            &original.dport.to_string(),
        ]);
    crate::netns::run(&mut cmd).map(drop)
}

/// Parses `conntrack -L -o extended` output; lines of other protocols are skipped.
///
/// A line reads `ipv4 2 tcp 6 431999 ESTABLISHED src=.. dst=.. sport=.. dport=..
/// src=.. dst=.. sport=.. dport=.. [ASSURED] mark=0 use=1`: the first
/// src/dst/sport/dport group is the original tuple, the second the reply.
pub fn parse_listing(text: &str) -> Result<Vec<Entry>, HarnessError> {
    let mut entries = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(entry) = parse_line(line)? {
            entries.push(entry);
        }
    }
    Ok(entries)
}

fn parse_line(line: &str) -> Result<Option<Entry>, HarnessError> {
    let bad = |reason: &str| HarnessError::Oracle { line: line.to_string(), reason: reason.to_string() };
    let protocol = match line.split_whitespace().nth(2) {
        Some("tcp") => L4::Tcp,
        Some("udp") => L4::Udp,
        Some(_) => return Ok(None),
        None => return Err(bad("too few fields")),
    };
    let mut groups: Vec<[Option<&str>; 4]> = vec![[None; 4]];
    for (key, value) in line.split_whitespace().filter_map(|token| token.split_once('=')) {
        let slot = match key {
            "src" => 0,
            "dst" => 1,
            "sport" => 2,
            "dport" => 3,
            _ => continue,
        };
        if groups.last().is_some_and(|g| g[slot].is_some()) {
            groups.push([None; 4]);
        }
        if let Some(group) = groups.last_mut() {
            group[slot] = Some(value);
        }
    }
    let tuple = |group: &[Option<&str>; 4]| -> Result<Tuple, HarnessError> {
        let field = |i: usize| group[i].ok_or_else(|| bad("incomplete tuple"));
        Ok(Tuple {
            protocol,
            src: field(0)?.parse().map_err(|_| bad("bad source address"))?,
            dst: field(1)?.parse().map_err(|_| bad("bad destination address"))?,
            sport: field(2)?.parse().map_err(|_| bad("bad source port"))?,
            dport: field(3)?.parse().map_err(|_| bad("bad destination port"))?,
        })
    };
    match groups.as_slice() {
        [original, reply, ..] => Ok(Some(Entry { original: tuple(original)?, reply: tuple(reply)? })),
        _ => Err(bad("expected an original and a reply tuple")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    const LISTING: &str = "\
ipv4     2 tcp      6 431999 ESTABLISHED src=10.99.0.1 dst=10.99.0.1 sport=49180 dport=80 src=127.0.0.1 dst=10.99.0.1 sport=8080 dport=49180 [ASSURED] mark=0 use=1
ipv6     10 udp      17 29 src=fd99::1 dst=fd99::1 sport=40000 dport=53 [UNREPLIED] src=::1 dst=fd99::1 sport=5353 dport=40000 mark=0 use=1
ipv4     2 udp      17 20 src=127.0.0.1 dst=127.0.0.1 sport=5000 dport=6000 src=127.0.0.1 dst=127.0.0.1 sport=6000 dport=5000 mark=0 use=1
ipv4     2 icmp     1 29 src=127.0.0.1 dst=127.0.0.1 type=8 code=0 id=1 src=127.0.0.1 dst=127.0.0.1 type=0 code=0 id=1 mark=0 use=1
";

    #[test]
    fn parses_both_tuples_of_tcp_and_udp_lines_and_skips_icmp() {
        let entries = parse_listing(LISTING).unwrap();
        assert_eq!(entries.len(), 3);
        let tcp = entries[0];
        assert_eq!(tcp.original.protocol, L4::Tcp);
        assert_eq!((tcp.original.sport, tcp.original.dport), (49180, 80));
        assert_eq!(tcp.reply.src, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(tcp.reply.sport, 8080);
        let udp6 = entries[1];
        assert_eq!(udp6.reply.src, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(udp6.reply.dport, 40000);
    }

    #[test]
    fn nat_is_a_rewritten_reply() {
        let entries = parse_listing(LISTING).unwrap();
        assert_eq!(entries.iter().map(Entry::is_nat).collect::<Vec<_>>(), vec![true, true, false]);
    }

    #[test]
    fn a_truncated_line_is_an_error() {
        assert!(parse_listing("ipv4 2 tcp 6 1 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=1").is_err());
    }
}
