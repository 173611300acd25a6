//! Namespace ids: which network namespace a conntrack event of another namespace is from.
//!
//! An event socket with `NETLINK_LISTEN_ALL_NSID` also receives the events of every
//! namespace that has an *id* (nsid) in the socket's namespace, each datagram tagged with
//! that id in a control message (no tag: the socket's own namespace). Container runtimes
//! give an id to each namespace joined to the host by a veth pair; a namespace without one
//! is not heard at all (the kernel's rule, `do_one_broadcast`).
//!
//! The map and the API key entries by the namespace's *inode*, which the id does not
//! carry, and rtnetlink answers only the other way round (`RTM_GETNSID`: namespace → id).
//! So [`NsidResolver`] resolves lazily: an unknown id triggers a scan of the namespaces
//! the loader can name (`/run/netns` bind mounts, `/proc/<pid>/ns/net`), asking the
//! kernel for each one's id. Ids are recycled when a namespace goes, so the resolver
//! listens to `RTNLGRP_NSID` and forgets an id the moment it is deleted or reassigned.
//! Lazy beats mirroring every `RTM_NEWNSID`: the notification names the id, not the
//! namespace, so a scan is needed either way, and only namespaces that produce conntrack
//! events cost one.
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send, setsockopt,
    socket, sockopt,
};
use nix::sys::time::TimeVal;

use super::wire::{self, NLM_F_REQUEST, NLMSG_ERROR, NLMSG_HDRLEN, WireError};

/// `SOL_NETLINK` and `NETLINK_LISTEN_ALL_NSID` (uapi netlink.h).
pub(super) const SOL_NETLINK: libc::c_int = 270;
pub(super) const NETLINK_LISTEN_ALL_NSID: libc::c_int = 8;
pub(super) const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
pub(super) const NETLINK_DROP_MEMBERSHIP: libc::c_int = 2;
/// rtnetlink namespace-id messages and attributes (uapi rtnetlink.h, net_namespace.h).
const RTM_NEWNSID: u16 = 88;
const RTM_DELNSID: u16 = 89;
const RTM_GETNSID: u16 = 90;
const NETNSA_NSID: u16 = 1;
const NETNSA_PID: u16 = 2;
const NETNSA_FD: u16 = 3;
const RTNLGRP_NSID: u32 = 28;
/// `struct rtgenmsg`, padded to 4 bytes.
const RTGENMSG_LEN: usize = 4;
/// An unknown id triggers at most one scan per this period, unless a namespace id was
/// assigned since the last scan (then at once).
const RESCAN_PERIOD: Duration = Duration::from_secs(1);
/// A kernel that does not answer `RTM_GETNSID` must not stall the event task.
const QUERY_TIMEOUT: TimeVal = TimeVal::new(0, 200_000);

/// Subscribes `fd` (a netlink socket) to the events of every namespace with an id.
/// Needs CAP_NET_BROADCAST (checked here, and against the socket's opener per event).
pub(super) fn listen_all_namespaces(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    netlink_option(fd, NETLINK_LISTEN_ALL_NSID, 1)
}

/// Sets a `SOL_NETLINK` option with an int value (nix has no typed option for these).
pub(super) fn netlink_option(
    fd: BorrowedFd<'_>,
    option: libc::c_int,
    value: libc::c_int,
) -> Result<(), Errno> {
    // SAFETY: a valid fd, and a pointer to a c_int with its exact length.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_NETLINK,
            option,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(Errno::last()) }
}

/// How `RTM_GETNSID` names the namespace asked about.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// The namespace of a process.
    Pid(i32),
    /// An open namespace file (`/run/netns/<name>`).
    Fd(BorrowedFd<'a>),
}

/// `RTM_GETNSID` for `target`: its id in the socket's namespace.
pub fn getnsid_request(seq: u32, target: Target<'_>) -> Vec<u8> {
    let mut attrs = Vec::new();
    match target {
        Target::Pid(pid) => wire::put_attr(&mut attrs, NETNSA_PID, &pid.to_ne_bytes()),
        Target::Fd(fd) => wire::put_attr(&mut attrs, NETNSA_FD, &fd.as_raw_fd().to_ne_bytes()),
    }
    let len = (NLMSG_HDRLEN + RTGENMSG_LEN + attrs.len()) as u32;
    let mut msg = Vec::with_capacity(len as usize);
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&RTM_GETNSID.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    msg.extend_from_slice(&attrs);
    msg
}

/// One rtnetlink namespace-id message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsidMessage {
    /// An id assigned (a reply to `RTM_GETNSID`, or a notification); negative: none.
    New {
        seq: u32,
        nsid: i32,
    },
    /// An id deleted (its namespace went).
    Deleted {
        nsid: i32,
    },
    /// An error (nonzero) or acknowledgement for request `seq`.
    Error {
        seq: u32,
        errno: i32,
    },
    Other,
}

/// Every namespace-id message in one rtnetlink datagram.
pub fn parse_nsid_messages(buf: &[u8]) -> Result<Vec<NsidMessage>, WireError> {
    let mut messages = Vec::new();
    let mut offset = 0;
    while buf.len() - offset >= NLMSG_HDRLEN {
        let rest = &buf[offset..];
        let len = u32::from_ne_bytes(wire::fixed::<4>(&rest[..4], "nlmsg_len")?) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(WireError::MessageLength { offset, len, available: rest.len() });
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let seq = u32::from_ne_bytes(wire::fixed::<4>(&rest[8..12], "nlmsg_seq")?);
        let payload = &rest[NLMSG_HDRLEN..len];
        messages.push(match kind {
            NLMSG_ERROR => {
                let code = wire::fixed::<4>(payload.get(..4).unwrap_or_default(), "nlmsgerr")?;
                NsidMessage::Error { seq, errno: -i32::from_ne_bytes(code) }
            }
            RTM_NEWNSID => NsidMessage::New { seq, nsid: nsid_attribute(payload)? },
            RTM_DELNSID => NsidMessage::Deleted { nsid: nsid_attribute(payload)? },
            _ => NsidMessage::Other,
        });
        offset += wire::align4(len).min(rest.len());
    }
    Ok(messages)
}

fn nsid_attribute(payload: &[u8]) -> Result<i32, WireError> {
    for attr in wire::attributes(payload.get(RTGENMSG_LEN..).unwrap_or_default()) {
        if let (NETNSA_NSID, value) = attr? {
            return Ok(i32::from_ne_bytes(wire::fixed::<4>(value, "NETNSA_NSID")?));
        }
    }
    Err(WireError::Missing("NETNSA_NSID"))
}

/// Resolves namespace ids (of the namespace it was created in) to namespace inodes.
pub struct NsidResolver {
    /// Asks `RTM_GETNSID` (blocking, with a timeout).
    query: OwnedFd,
    /// Subscribed to `RTNLGRP_NSID`: ids assigned and deleted (non-blocking).
    changes: OwnedFd,
    ids: HashMap<i32, u32>,
    last_scan: Option<Instant>,
    /// An id was assigned since the last scan: the next miss scans at once.
    assigned_since_scan: bool,
    seq: u32,
    /// Events dropped because their namespace could not be named.
    unresolved: u64,
    buf: Vec<u8>,
}

impl NsidResolver {
    /// A resolver for the calling thread's namespace, with a first scan done.
    pub fn new() -> Result<Self, Errno> {
        let open = |flags| socket(AddressFamily::Netlink, SockType::Raw, flags, SockProtocol::NetlinkRoute);
        let query = open(SockFlag::SOCK_CLOEXEC)?;
        bind(query.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        setsockopt(&query, sockopt::ReceiveTimeout, &QUERY_TIMEOUT)?;
        let changes = open(SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)?;
        bind(changes.as_raw_fd(), &NetlinkAddr::new(0, 1 << (RTNLGRP_NSID - 1)))?;
        let mut resolver = Self {
            query,
            changes,
            ids: HashMap::new(),
            last_scan: None,
            assigned_since_scan: false,
            seq: 0,
            unresolved: 0,
            buf: vec![0; 8192],
        };
        resolver.scan();
        Ok(resolver)
    }

    /// The inode of the namespace with id `nsid`, scanning when it is not known yet;
    /// `None` (and counted) when no namespace the loader can name has it.
    pub fn resolve(&mut self, nsid: i32) -> Option<u32> {
        self.apply_changes();
        if let Some(inode) = self.ids.get(&nsid) {
            return Some(*inode);
        }
        let due = self.last_scan.is_none_or(|at| at.elapsed() >= RESCAN_PERIOD);
        if due || self.assigned_since_scan {
            self.scan();
        }
        let found = self.ids.get(&nsid).copied();
        if found.is_none() {
            self.unresolved += 1;
        }
        found
    }

    /// Ids known now, with their namespace inodes, by id.
    pub fn known(&self) -> Vec<(i32, u32)> {
        let mut known: Vec<_> = self.ids.iter().map(|(id, inode)| (*id, *inode)).collect();
        known.sort_unstable();
        known
    }

    /// Events dropped so far because their namespace id could not be resolved.
    pub fn unresolved(&self) -> u64 {
        self.unresolved
    }

    /// Forgets ids deleted or (re)assigned since the last call: a recycled id must not
    /// keep naming the namespace that had it before.
    fn apply_changes(&mut self) {
        while let Ok(len) = recv(self.changes.as_raw_fd(), &mut self.buf, MsgFlags::MSG_DONTWAIT) {
            for message in parse_nsid_messages(&self.buf[..len]).unwrap_or_default() {
                match message {
                    NsidMessage::New { nsid, .. } => {
                        self.ids.remove(&nsid);
                        self.assigned_since_scan = true;
                    }
                    NsidMessage::Deleted { nsid } => {
                        self.ids.remove(&nsid);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Asks the id of every namespace the loader can name now.
    fn scan(&mut self) {
        self.last_scan = Some(Instant::now());
        self.assigned_since_scan = false;
        let mut ids = HashMap::new();
        for (inode, source) in namespaces() {
            let nsid = match &source {
                Source::Pid(pid) => self.nsid_of(Target::Pid(*pid)),
                Source::File(file) => self.nsid_of(Target::Fd(file.as_fd())),
            };
            match nsid {
                Ok(Some(nsid)) => {
                    ids.insert(nsid, inode);
                }
                Ok(None) => {}
                Err(errno) => tracing::debug!(%errno, inode, "RTM_GETNSID failed"),
            }
        }
        self.ids = ids;
    }

    /// The id of `target` in the resolver's namespace; `None` when it has none.
    fn nsid_of(&mut self, target: Target<'_>) -> Result<Option<i32>, Errno> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        send(self.query.as_raw_fd(), &getnsid_request(seq, target), MsgFlags::empty())?;
        loop {
            let len = recv(self.query.as_raw_fd(), &mut self.buf, MsgFlags::empty())?;
            for message in parse_nsid_messages(&self.buf[..len]).map_err(|_| Errno::EBADMSG)? {
                match message {
                    NsidMessage::New { seq: s, nsid } if s == seq => return Ok((nsid >= 0).then_some(nsid)),
                    NsidMessage::Error { seq: s, errno } if s == seq && errno != 0 => {
                        return Err(Errno::from_raw(errno));
                    }
                    _ => {}
                }
            }
        }
    }
}

/// How a namespace found by [`namespaces`] is named to the kernel.
enum Source {
    Pid(i32),
    File(std::fs::File),
}

/// One handle per distinct namespace the loader can name (`reach.rs` finds them): a bind
/// mount (readable after the privilege drop), else a process (`/proc/<pid>/ns/net` needs
/// ptrace access to it, which the loader loses with its capabilities for most of them).
fn namespaces() -> Vec<(u32, Source)> {
    let mut handles = Vec::new();
    for (inode, found) in crate::conntrack::reach::visible_namespaces() {
        let file = found.mounts.iter().find_map(|path| std::fs::File::open(path).ok());
        match (file, found.pids.first()) {
            (Some(file), _) => handles.push((inode, Source::File(file))),
            (None, Some(pid)) => handles.push((inode, Source::Pid(*pid))),
            (None, None) => {}
        }
    }
    handles
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut msg = ((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes().to_vec();
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&[0, 0]);
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&[0; 4]);
        msg.extend_from_slice(payload);
        msg
    }

    fn nsid_payload(nsid: i32) -> Vec<u8> {
        let mut payload = vec![0u8; RTGENMSG_LEN];
        wire::put_attr(&mut payload, NETNSA_NSID, &nsid.to_ne_bytes());
        payload
    }

    #[test]
    fn a_getnsid_request_names_the_process() {
        let msg = getnsid_request(7, Target::Pid(42));
        assert_eq!(msg.len(), NLMSG_HDRLEN + RTGENMSG_LEN + 8);
        assert_eq!(u16::from_ne_bytes([msg[4], msg[5]]), RTM_GETNSID);
        assert_eq!(u16::from_ne_bytes([msg[22], msg[23]]), NETNSA_PID);
        assert_eq!(i32::from_ne_bytes([msg[24], msg[25], msg[26], msg[27]]), 42);
    }

    #[test]
    fn replies_notifications_and_errors_are_told_apart() {
        let mut datagram = message(RTM_NEWNSID, 3, &nsid_payload(5));
        datagram.extend(message(RTM_DELNSID, 0, &nsid_payload(2)));
        datagram.extend(message(NLMSG_ERROR, 4, &(-libc::ENOENT).to_ne_bytes()));
        datagram.extend(message(RTM_NEWNSID, 5, &nsid_payload(-1)));
        assert_eq!(
            parse_nsid_messages(&datagram).unwrap(),
            vec![
                NsidMessage::New { seq: 3, nsid: 5 },
                NsidMessage::Deleted { nsid: 2 },
                NsidMessage::Error { seq: 4, errno: libc::ENOENT },
                NsidMessage::New { seq: 5, nsid: -1 },
            ]
        );
    }

    #[test]
    fn a_message_without_its_id_is_an_error_not_a_guess() {
        let datagram = message(RTM_NEWNSID, 1, &[0; RTGENMSG_LEN]);
        assert_eq!(parse_nsid_messages(&datagram), Err(WireError::Missing("NETNSA_NSID")));
    }
}
