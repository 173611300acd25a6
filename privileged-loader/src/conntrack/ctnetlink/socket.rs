//! A ctnetlink socket: table dumps and conntrack events, async over tokio.
//!
//! A netlink socket belongs to the network namespace of the thread that created it, and
//! only sees that namespace's conntrack table and events. [`CtNetlink`] records that
//! namespace's inode at creation so the entries it returns carry it.
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind,
    recvmsg, send, setsockopt, sockopt,
};
use tokio::io::unix::AsyncFd;

use super::nsid::{self, NsidResolver};
use super::wire::{self, Kind, Message, WireError};
use crate::conntrack::{Entry, Tuple};

/// `NFNLGRP_CONNTRACK_NEW` and `NFNLGRP_CONNTRACK_DESTROY` (uapi nfnetlink.h).
const NFNLGRP_CONNTRACK_NEW: u32 = 1;
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
/// Largest datagram the kernel sends on a ctnetlink socket (dumps use up to 32 KiB).
const RECV_BUFFER: usize = 64 * 1024;
/// Receive queue for event sockets: bursts of destroys (a flushed table) must fit, or
/// the kernel drops them and reports ENOBUFS.
const EVENT_RCVBUF: usize = 8 * 1024 * 1024;
/// Most datagrams (one event each) [`CtNetlink::next_events`] takes in one call.
const EVENT_BATCH: usize = 1024;

/// A conntrack event, with the inode of its namespace in the entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    New(Entry),
    Destroy(Entry),
}

/// Event groups to subscribe to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Groups {
    /// Only DESTROY: what the eBPF conntracker needs to drop entries.
    Destroy,
    /// NEW and DESTROY: what a netlink-only conntracker needs.
    NewAndDestroy,
}

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a ctnetlink socket ({step}): {errno}; the loader needs CAP_NET_ADMIN")]
    Open { step: &'static str, errno: Errno },
    #[error("reading the network namespace of the ctnetlink socket ({path}): {source}")]
    Netns { path: &'static str, source: std::io::Error },
    #[error("ctnetlink {op}: {errno}")]
    Io { op: &'static str, errno: Errno },
    #[error("ctnetlink: the kernel dropped events (ENOBUFS); the map must be resynchronised")]
    Overrun,
    #[error("ctnetlink request failed: kernel error {errno}")]
    Kernel { errno: Errno },
    #[error("ctnetlink: malformed message: {0}")]
    Wire(#[from] WireError),
}

/// Which namespaces an event socket hears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coverage {
    /// Why it hears only its own namespace; `None` when it hears every namespace with an
    /// id in its own (`NETLINK_LISTEN_ALL_NSID`).
    pub own_only: Option<String>,
    /// Namespace ids resolved so far, with their inodes.
    pub known: Vec<(i32, u32)>,
    /// Events dropped because their namespace id named no namespace the loader can see.
    pub unresolved_events: u64,
}

/// Prefix of the status note [`Coverage::describe`] writes.
pub const EVENTS_NOTE_PREFIX: &str = "conntrack events of the loader's network namespace";

impl Coverage {
    /// One line for status: which namespaces' events are heard, and which are not.
    pub fn describe(&self) -> String {
        if let Some(why) = &self.own_only {
            return format!("{EVENTS_NOTE_PREFIX} only: {why}");
        }
        let known: Vec<String> = self.known.iter().map(|(id, inode)| format!("{id}={inode}")).collect();
        format!(
            "{EVENTS_NOTE_PREFIX} and of every namespace with a namespace id in it (ids known now: [{}]); namespaces without an id are not heard, \
             their entries leave by the sweep (dumped if the loader entered them, else by \
             its age rule) or the LRU",
            known.join(", ")
        )
    }
}

/// One received datagram: its messages with their sequence numbers, and the id of the
/// namespace it came from (`None`: the socket's own).
struct Datagram {
    nsid: Option<i32>,
    messages: Vec<(u32, Message)>,
}

/// A dump socket outside any async runtime: opened on a thread that entered another
/// namespace (`reach.rs`), or kept between two uses. [`CtNetlink::unpark`] takes it in.
#[derive(Debug)]
pub struct Parked {
    fd: OwnedFd,
    netns: u32,
    seq: u32,
    unfinished_dump: Option<u32>,
}

impl Parked {
    /// A ctnetlink socket in the calling thread's network namespace, bound to `groups`;
    /// no async runtime needed (a thread that entered a namespace with setns has none).
    pub fn open(groups: u32) -> Result<Self, NetlinkError> {
        let fd = nix::sys::socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(|errno| NetlinkError::Open { step: "socket", errno })?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))
            .map_err(|errno| NetlinkError::Open { step: "bind", errno })?;
        Ok(Self { fd, netns: current_netns()?, seq: 0, unfinished_dump: None })
    }

    /// Inode of the network namespace the socket belongs to.
    pub fn netns(&self) -> u32 {
        self.netns
    }
}

/// One netlink socket of the NETLINK_NETFILTER family.
pub struct CtNetlink {
    fd: AsyncFd<OwnedFd>,
    netns: u32,
    /// Event sockets of every namespace: resolves the id each datagram carries.
    nsids: Result<NsidResolver, String>,
    seq: u32,
    /// Sequence number of a dump whose end has not been read yet.
    unfinished_dump: Option<u32>,
    buf: Vec<u8>,
}

impl CtNetlink {
    /// A socket for table dumps, in the calling thread's network namespace.
    pub fn dump_socket() -> Result<Self, NetlinkError> {
        Self::open(0)
    }

    /// A socket subscribed to `groups` events of the calling thread's namespace and of
    /// every namespace with an id in it (when CAP_NET_BROADCAST allows; otherwise of its
    /// own only, and [`CtNetlink::coverage`] says why).
    pub fn event_socket(groups: Groups) -> Result<Self, NetlinkError> {
        let bit = |group: u32| 1 << (group - 1);
        let mask = match groups {
            Groups::Destroy => bit(NFNLGRP_CONNTRACK_DESTROY),
            Groups::NewAndDestroy => bit(NFNLGRP_CONNTRACK_NEW) | bit(NFNLGRP_CONNTRACK_DESTROY),
        };
        let mut socket = Self::open(mask)?;
        socket.nsids = nsid::listen_all_namespaces(socket.fd.get_ref().as_fd())
            .map_err(|errno| {
                format!("NETLINK_LISTEN_ALL_NSID refused ({errno}): CAP_NET_BROADCAST is needed")
            })
            .and_then(|()| {
                NsidResolver::new().map_err(|errno| format!("rtnetlink namespace-id socket: {errno}"))
            });
        if let Err(why) = &socket.nsids {
            tracing::warn!(why, "conntrack events of other network namespaces are not received");
        }
        // Best effort: without CAP_NET_ADMIN the default queue stays, and overruns are
        // still detected (ENOBUFS) and resynchronised.
        if let Err(errno) = setsockopt(socket.fd.get_ref(), sockopt::RcvBufForce, &EVENT_RCVBUF) {
            tracing::debug!(%errno, "ctnetlink: cannot enlarge the event receive queue");
        }
        Ok(socket)
    }

    fn open(groups: u32) -> Result<Self, NetlinkError> {
        Self::unpark(Parked::open(groups)?)
    }

    /// Takes a socket opened by [`Parked::open`] (possibly on another thread, in another
    /// namespace) into the calling thread's async runtime.
    pub fn unpark(parked: Parked) -> Result<Self, NetlinkError> {
        let Parked { fd, netns, seq, unfinished_dump } = parked;
        // SAFETY: `fd` is an open OwnedFd that the AsyncFd owns from here on, so the
        // descriptor stays valid and unchanged for the AsyncFd's whole lifetime.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| NetlinkError::Open {
            step: "register with tokio",
            errno: io_errno(&std::io::Error::from(e)),
        })?;
        let nsids = Err("a dump socket: no events".to_string());
        Ok(Self { fd, netns, nsids, seq, unfinished_dump, buf: vec![0; RECV_BUFFER] })
    }

    /// Leaves the async runtime, keeping the socket and where its requests stand, so
    /// another task (or runtime) can [`CtNetlink::unpark`] it later. For dump sockets.
    pub fn park(self) -> Parked {
        Parked {
            fd: self.fd.into_inner(),
            netns: self.netns,
            seq: self.seq,
            unfinished_dump: self.unfinished_dump,
        }
    }

    /// Sets the kernel receive queue of this socket to about `bytes` (the kernel doubles
    /// it for bookkeeping). Event sockets get [`EVENT_RCVBUF`] already; a smaller queue
    /// overruns sooner, which is how the tests provoke [`NetlinkError::Overrun`].
    pub fn set_receive_buffer(&self, bytes: usize) -> Result<(), NetlinkError> {
        setsockopt(self.fd.get_ref(), sockopt::RcvBufForce, &bytes)
            .map_err(|errno| NetlinkError::Io { op: "set receive buffer", errno })
    }

    /// Inode of the network namespace this socket belongs to.
    pub fn netns(&self) -> u32 {
        self.netns
    }

    /// Joins (`true`) or leaves the DESTROY event group on this socket, keeping the socket
    /// (and its `NETLINK_LISTEN_ALL_NSID`, granted when it was opened). Leaving removes the
    /// kernel's per-connection price of a listener when no other one exists; joining
    /// again needs CAP_NET_ADMIN, which the loader keeps.
    pub fn set_destroy_subscription(&self, on: bool) -> Result<(), NetlinkError> {
        let option = if on { nsid::NETLINK_ADD_MEMBERSHIP } else { nsid::NETLINK_DROP_MEMBERSHIP };
        nsid::netlink_option(self.fd.get_ref().as_fd(), option, NFNLGRP_CONNTRACK_DESTROY as libc::c_int)
            .map_err(|errno| NetlinkError::Io {
                op: if on { "join DESTROY group" } else { "leave DESTROY group" },
                errno,
            })
    }

    /// Which namespaces' events this socket hears.
    pub fn coverage(&self) -> Coverage {
        match &self.nsids {
            Ok(resolver) => {
                Coverage { own_only: None, known: resolver.known(), unresolved_events: resolver.unresolved() }
            }
            Err(why) => Coverage { own_only: Some(why.clone()), known: Vec::new(), unresolved_events: 0 },
        }
    }

    /// Every TCP/UDP entry of the namespace's conntrack table (NAT'd or not).
    ///
    /// Safe to call again after a dump was abandoned midway (its future dropped, e.g. by
    /// a timeout): the kernel refuses a new dump (EBUSY) while one is unfinished on the
    /// socket, so the rest of the old one is read and discarded first.
    pub async fn dump(&mut self) -> Result<Vec<Entry>, NetlinkError> {
        if let Some(old) = self.unfinished_dump {
            self.read_dump(old, |_| {}).await?;
        }
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        send(self.fd.as_raw_fd(), &wire::dump_request(seq), MsgFlags::empty())
            .map_err(|errno| NetlinkError::Io { op: "send dump request", errno })?;
        self.unfinished_dump = Some(seq);
        let mut entries = Vec::new();
        let netns = self.netns;
        self.read_dump(seq, |flow| entries.push(flow.into_entry(netns))).await?;
        Ok(entries)
    }

    /// Reads the replies to dump request `seq` until its end, handing each flow to `each`.
    async fn read_dump(&mut self, seq: u32, mut each: impl FnMut(wire::Flow)) -> Result<(), NetlinkError> {
        loop {
            let datagram = self.next_datagram().await?;
            for message in datagram.messages.into_iter().filter(|(s, _)| *s == seq).map(|(_, m)| m) {
                match message {
                    Message::Conntrack { flow: Some(flow), .. } => each(flow),
                    Message::Done => {
                        self.unfinished_dump = None;
                        return Ok(());
                    }
                    Message::Error { errno } if errno != 0 => {
                        self.unfinished_dump = None;
                        return Err(NetlinkError::Kernel { errno: Errno::from_raw(errno) });
                    }
                    _ => {}
                }
            }
        }
    }

    /// The live entry the kernel holds now for the original tuple `original` in this
    /// socket's namespace, or `None` if it holds none (or only one it is destroying).
    ///
    /// A DESTROY event is read after the fact: by then a new entry with the same tuples
    /// (a reused port) may exist. Its `CTA_ID` does not tell it apart — the kernel derives
    /// the id from the entry's address and tuples, and the new entry usually takes the
    /// freed memory of the old one — but the destroyed one is marked `IPS_DYING` before
    /// its event is sent, so a live entry found here is another one.
    ///
    /// Not to be called on an event socket (its events would be read and dropped).
    pub async fn get(&mut self, original: &Tuple) -> Result<Option<Entry>, NetlinkError> {
        if let Some(old) = self.unfinished_dump {
            self.read_dump(old, |_| {}).await?;
        }
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        send(self.fd.as_raw_fd(), &wire::get_request(seq, original), MsgFlags::empty())
            .map_err(|errno| NetlinkError::Io { op: "send get request", errno })?;
        let netns = self.netns;
        loop {
            let datagram = self.next_datagram().await?;
            for message in datagram.messages.into_iter().filter(|(s, _)| *s == seq).map(|(_, m)| m) {
                match message {
                    Message::Conntrack { flow: Some(flow), dying: false, .. } => {
                        return Ok(Some(flow.into_entry(netns)));
                    }
                    Message::Conntrack { .. } => return Ok(None),
                    Message::Error { errno } if errno == libc::ENOENT => return Ok(None),
                    Message::Error { errno } if errno != 0 => {
                        return Err(NetlinkError::Kernel { errno: Errno::from_raw(errno) });
                    }
                    _ => {}
                }
            }
        }
    }

    /// The events of every datagram queued now (waiting for the first, then taking up to
    /// [`EVENT_BATCH`] datagrams without waiting): one wake-up for a burst, not one per
    /// event. [`NetlinkError::Overrun`] means events were lost: the caller must
    /// resynchronise (e.g. with a fresh [`CtNetlink::dump`]).
    pub async fn next_events(&mut self) -> Result<Vec<Event>, NetlinkError> {
        let first = self.next_datagram().await?;
        let mut events = Vec::new();
        self.collect_events(first, &mut events);
        for _ in 1..EVENT_BATCH {
            match self.try_datagram()? {
                Some(more) => self.collect_events(more, &mut events),
                None => break,
            }
        }
        Ok(events)
    }

    /// Throws away every datagram queued now, returning how many. After an overrun the
    /// queue still holds events older than the dump the caller is about to take; applied
    /// after it, a stale NEW would bring back an entry whose DESTROY was among the lost.
    pub fn discard_queued(&mut self) -> Result<usize, NetlinkError> {
        let mut discarded = 0;
        loop {
            match self.try_datagram() {
                Ok(Some(_)) => discarded += 1,
                Ok(None) => return Ok(discarded),
                // Lost again while draining: the dump that follows covers those too.
                Err(NetlinkError::Overrun) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Appends the conntrack events of `datagram`, with their namespace's inode; drops
    /// them when the namespace id names no namespace the resolver can find.
    fn collect_events(&mut self, datagram: Datagram, events: &mut Vec<Event>) {
        let netns = match (datagram.nsid, &mut self.nsids) {
            (None, _) => self.netns,
            (Some(id), Ok(resolver)) => match resolver.resolve(id) {
                Some(inode) => inode,
                None => return,
            },
            (Some(_), Err(_)) => return,
        };
        events.extend(datagram.messages.into_iter().filter_map(|(_, message)| match message {
            Message::Conntrack { kind: Kind::New, flow: Some(flow), .. } => {
                Some(Event::New(flow.into_entry(netns)))
            }
            Message::Conntrack { kind: Kind::Destroy, flow: Some(flow), .. } => {
                Some(Event::Destroy(flow.into_entry(netns)))
            }
            _ => None,
        }));
    }

    /// The next datagram if one is queued now; `None` if none is.
    fn try_datagram(&mut self) -> Result<Option<Datagram>, NetlinkError> {
        receive(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_DONTWAIT)
    }

    async fn next_datagram(&mut self) -> Result<Datagram, NetlinkError> {
        // The kernel answers a request before `send` returns, and events may be queued
        // already: try first, and sleep on the reactor only when nothing is there (each
        // trip through it is a task switch, which dominated the loader's CPU under load).
        if let Some(datagram) = self.try_datagram()? {
            return Ok(datagram);
        }
        loop {
            let mut ready =
                self.fd.readable().await.map_err(|e| NetlinkError::Io { op: "poll", errno: io_errno(&e) })?;
            let fd = ready.get_inner().as_fd().as_raw_fd();
            match receive(fd, &mut self.buf, MsgFlags::empty())? {
                Some(datagram) => return Ok(datagram),
                None => ready.clear_ready(),
            }
        }
    }
}

/// Receives one datagram from the non-blocking socket `fd` into `buf`, with the
/// namespace id of the control message `NETLINK_LISTEN_ALL_NSID` adds (none for the
/// socket's own namespace); `None` when nothing is queued.
fn receive(fd: RawFd, buf: &mut [u8], flags: MsgFlags) -> Result<Option<Datagram>, NetlinkError> {
    let mut space = nix::cmsg_space!(libc::c_int);
    let (len, nsid) = loop {
        let mut iov = [std::io::IoSliceMut::new(buf)];
        match recvmsg::<NetlinkAddr>(fd, &mut iov, Some(&mut space), flags) {
            Ok(msg) => break (msg.bytes, nsid_of(&msg)),
            Err(Errno::EAGAIN) => return Ok(None),
            Err(Errno::EINTR) => {}
            Err(Errno::ENOBUFS) => return Err(NetlinkError::Overrun),
            Err(errno) => return Err(NetlinkError::Io { op: "recv", errno }),
        }
    };
    Ok(Some(Datagram { nsid, messages: wire::parse_sequenced(&buf[..len])? }))
}

fn nsid_of(msg: &nix::sys::socket::RecvMsg<'_, '_, NetlinkAddr>) -> Option<i32> {
    msg.cmsgs().ok()?.find_map(|cmsg| match cmsg {
        ControlMessageOwned::Unknown(raw)
            if raw.cmsg_header.cmsg_level == nsid::SOL_NETLINK
                && raw.cmsg_header.cmsg_type == nsid::NETLINK_LISTEN_ALL_NSID =>
        {
            raw.data_bytes.get(..4).and_then(|b| b.try_into().ok()).map(i32::from_ne_bytes)
        }
        _ => None,
    })
}

/// Asks ctnetlink for its global statistics over a blocking socket, waiting at most
/// `timeout`: `Ok` when it answers (the conntracker's dump and events will work), the
/// kernel's refusal or the socket error otherwise. For the start-up probe, which runs
/// outside any async runtime.
pub fn ask_stats(timeout: std::time::Duration) -> Result<(), NetlinkError> {
    let fd = nix::sys::socket::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(|errno| NetlinkError::Open { step: "socket", errno })?;
    let wait = nix::sys::time::TimeVal::new(timeout.as_secs() as _, timeout.subsec_micros() as _);
    setsockopt(&fd, sockopt::ReceiveTimeout, &wait)
        .map_err(|errno| NetlinkError::Open { step: "timeout", errno })?;
    const SEQ: u32 = 1;
    send(fd.as_raw_fd(), &wire::stats_request(SEQ), MsgFlags::empty())
        .map_err(|errno| NetlinkError::Io { op: "send stats request", errno })?;
    let mut buf = vec![0u8; 4096];
    loop {
        let datagram = receive(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?
            .ok_or(NetlinkError::Io { op: "recv stats reply", errno: Errno::ETIMEDOUT })?;
        for (seq, message) in datagram.messages {
            match message {
                Message::Error { errno } if seq == SEQ && errno != 0 => {
                    return Err(NetlinkError::Kernel { errno: Errno::from_raw(errno) });
                }
                _ if seq == SEQ => return Ok(()),
                _ => {}
            }
        }
    }
}

/// The inode of the calling *thread's* network namespace (`/proc/self` would name the
/// main thread's, which differs when a thread entered another namespace with setns).
pub fn current_netns() -> Result<u32, NetlinkError> {
    const PATH: &str = "/proc/thread-self/ns/net";
    let meta = std::fs::metadata(PATH).map_err(|source| NetlinkError::Netns { path: PATH, source })?;
    // Namespace inodes are 32-bit (proc_inum allocation), as in the eBPF map key.
    Ok(meta.ino() as u32)
}

fn io_errno(err: &std::io::Error) -> Errno {
    Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    //! Needs root: runs against the kernel in a throwaway namespace.
    use super::*;
    use e2e_tests::{L4, NatLab};

    #[test]
    fn the_kernel_answers_the_stats_probe() {
        ask_stats(std::time::Duration::from_millis(500)).unwrap();
    }

    #[test]
    fn leftovers_of_an_abandoned_dump_are_skipped() {
        let lab = NatLab::new("nl-leftover").unwrap();
        let _flows: Vec<_> = (0..50).map(|_| lab.connect(L4::Udp, false).unwrap()).collect();
        let (recovered, after) = lab
            .netns
            .run(|| {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    let mut socket = CtNetlink::dump_socket().unwrap();
                    // Abandoned midway: one datagram of the reply read, the rest left.
                    socket.seq = 41;
                    send(socket.fd.as_raw_fd(), &wire::dump_request(41), MsgFlags::empty()).unwrap();
                    socket.unfinished_dump = Some(41);
                    let first = socket.next_datagram().await.unwrap();
                    assert!(first.messages.iter().all(|(seq, _)| *seq == 41));
                    let recovered = socket.dump().await.unwrap();
                    (recovered, socket.dump().await.unwrap().len())
                })
            })
            .unwrap();
        assert_eq!(recovered.len(), 50, "no EBUSY, no leftovers of request 41, nothing missing");
        assert_eq!(after, 50, "and the socket keeps working");
    }
}
