//! The known connection the guesser observes: a UDP flow inside a private network
//! namespace, destination-NAT'd by an nftables rule so that its conntrack entry has a
//! reply tuple and status bits we can predict.
//!
//! Everything here runs on the guessing thread after it left the host's network
//! namespace (`unshare(CLONE_NEWNET)` changes only the calling thread). The namespace,
//! its rule and sockets disappear with the thread: nothing to clean up on any path.
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use super::GuessError;
use super::fields::{DNAT_CONFIRMED_STATUS, Expected, IP_CT_NEW, KnownTuple};

/// The address the datagrams are sent to; the rule rewrites it to the listener.
const NAT_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const NAT_PORT: u16 = 9;

pub struct KnownConnection {
    client: UdpSocket,
    /// Kept open so the datagrams are delivered (no ICMP errors changing the entry).
    _listener: UdpSocket,
    pub expected: Expected,
}

/// Moves the calling thread into a fresh network namespace with loopback up and returns
/// the namespace's inode number.
pub fn enter_private_netns() -> Result<u32, GuessError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| GuessError::Netns { step: "unshare(CLONE_NEWNET)", reason: e.to_string() })?;
    run("ip", &["link", "set", "lo", "up"], None)?;
    let meta = std::fs::metadata("/proc/thread-self/ns/net")
        .map_err(|e| GuessError::Netns { step: "stat /proc/thread-self/ns/net", reason: e.to_string() })?;
    u32::try_from(meta.ino()).map_err(|_| GuessError::Netns {
        step: "namespace inode",
        reason: format!("{} exceeds 32 bits", meta.ino()),
    })
}

/// Opens the listener, installs the DNAT rule towards it and connects the client.
pub fn known_connection(netns_inum: u32) -> Result<KnownConnection, GuessError> {
    let io = |step: &'static str| move |e: std::io::Error| GuessError::Netns { step, reason: e.to_string() };
    let listener = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io("bind the listener"))?;
    let listen_port = listener.local_addr().map_err(io("listener address"))?.port();
    let rules = format!(
        "table ip loader_offsetguess {{\n  chain output {{\n    type nat hook output priority -100;\n    \
         ip daddr {NAT_ADDR} udp dport {NAT_PORT} dnat to 127.0.0.1:{listen_port}\n  }}\n}}\n"
    );
    run("nft", &["-f", "-"], Some(&rules))?;
    let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io("bind the client"))?;
    client.connect(SocketAddrV4::new(NAT_ADDR, NAT_PORT)).map_err(io("connect the client"))?;
    let client_port = client.local_addr().map_err(io("client address"))?.port();
    let lo = Ipv4Addr::LOCALHOST;
    let expected = Expected {
        origin: KnownTuple { src: lo, src_port: client_port, dst: NAT_ADDR, dst_port: NAT_PORT, dir: 0 },
        reply: KnownTuple { src: lo, src_port: listen_port, dst: lo, dst_port: client_port, dir: 1 },
        status: DNAT_CONFIRMED_STATUS,
        ctinfo: IP_CT_NEW,
        netns_inum,
    };
    Ok(KnownConnection { client, _listener: listener, expected })
}

impl KnownConnection {
    /// Sends one datagram; the kernel side sees it on net_dev_queue, on this thread.
    pub fn send(&self) -> Result<(), GuessError> {
        self.client.send(b"offsetguess").map(|_| ()).map_err(|e| GuessError::Traffic(e.to_string()))
    }
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), GuessError> {
    let step = |reason: String| GuessError::Netns {
        step: "running a helper program",
        reason: format!("{program} {}: {reason}", args.join(" ")),
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| step(format!("{e} (is {program} installed?)")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(|e| step(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| step(e.to_string()))?;
    if !out.status.success() {
        return Err(step(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}
