//! The netlink conntracker: no eBPF at all. A ctnetlink dump at start, then the kernel's
//! NEW and DESTROY conntrack events, keep a bounded userspace table of NAT'd entries that
//! answers like the eBPF map.
//!
//! Events can be lost: when the socket's receive buffer overflows the kernel drops them
//! and the next read fails with ENOBUFS. The tracker counts that, says so (log, status
//! `last_error`, [`NetlinkStats`]) and resyncs the table from a fresh dump, so a loss
//! costs a dump, not wrong answers for the life of the process.
//!
//! Scope: the loader's own network namespace (ctnetlink sockets see only their own).
//! Message parsing is the conntrack module's (`ctnetlink::wire`), shared with the CO-RE
//! conntracker's dump; this file owns only the sockets and the table policy.
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send, setsockopt,
    socket, sockopt,
};
use tokio::io::unix::AsyncFd;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::ctnetlink::wire::{self, Kind, Message};
use super::nat_table::NatTable;
use super::{ConntrackConfig, ConntrackError, Conntracker, Entry, RunningConntracker, TableFill, Tuple};
use crate::status::Registry;

/// Strategy name reported by this conntracker.
pub const STRATEGY: &str = "netlink";
/// `NFNLGRP_CONNTRACK_NEW` and `NFNLGRP_CONNTRACK_DESTROY` as `nl_groups` bits.
const EVENT_GROUPS: u32 = (1 << (1 - 1)) | (1 << (3 - 1));
/// Receive buffer of the event socket. Bigger absorbs longer bursts before ENOBUFS.
pub const EVENT_BUFFER_BYTES: usize = 4 << 20;
const READ_BUFFER_BYTES: usize = 1 << 16;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error(
        "netlink conntracker: {what}: {errno}; the loader needs CAP_NET_ADMIN and ctnetlink (CONFIG_NF_CT_NETLINK)"
    )]
    Socket { what: &'static str, errno: Errno },
    #[error(
        "netlink conntracker: ctnetlink dump did not finish within {0:?}; raise conntrack.initial_dump_timeout_secs"
    )]
    DumpTimeout(Duration),
    #[error("netlink conntracker: malformed ctnetlink message: {0}")]
    Wire(#[from] wire::WireError),
    #[error("netlink conntracker: the kernel refused the dump: errno {0}")]
    Refused(i32),
    #[error("netlink conntracker: reading the loader's network namespace: {0}")]
    Netns(io::Error),
}

/// Counters a user (and the benchmark) can read: how many events were applied, how
/// often the kernel dropped events (ENOBUFS), how many resyncs followed.
#[derive(Debug, Default)]
pub struct NetlinkStats {
    pub events: AtomicU64,
    pub enobufs: AtomicU64,
    pub resyncs: AtomicU64,
}

pub struct NetlinkConntracker {
    table: Mutex<NatTable>,
    netns: u32,
    stats: NetlinkStats,
}

impl NetlinkConntracker {
    fn table(&self) -> MutexGuard<'_, NatTable> {
        // A poisoned table still holds valid entries: keep answering.
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn stats(&self) -> &NetlinkStats {
        &self.stats
    }

    /// Applies one decoded message; returns true when it was a conntrack event.
    fn apply(&self, message: &Message) -> bool {
        let Message::Conntrack { kind, flow } = message else { return false };
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        let Some(flow) = flow.filter(|f| f.is_nat()) else { return true };
        let mut table = self.table();
        match kind {
            Kind::New => table.insert(flow.into_entry(self.netns)),
            Kind::Destroy => table.remove(&flow.original, self.netns),
        }
        true
    }
}

impl Conntracker for NetlinkConntracker {
    fn strategy(&self) -> String {
        STRATEGY.to_string()
    }

    fn entries(&self) -> Result<Vec<Entry>, ConntrackError> {
        Ok(self.table().entries())
    }

    /// The table holds one namespace, the loader's; a lookup in another falls back to it
    /// (the root-namespace-first rule of the eBPF conntrackers, with one namespace).
    fn lookup(&self, tuple: &Tuple, netns: u32) -> Result<Option<(Tuple, u32)>, ConntrackError> {
        let table = self.table();
        Ok([self.netns, netns].into_iter().find_map(|ns| table.translate(tuple, ns).map(|t| (t, ns))))
    }

    fn tables(&self) -> Vec<TableFill> {
        let table = self.table();
        vec![TableFill {
            name: STRATEGY.into(),
            entries: table.len() as u64,
            max_entries: table.capacity() as u64,
        }]
    }
}

/// Starts the netlink conntracker: subscribes to events first (so nothing between the
/// dump and the subscription is missed), dumps, then applies events until `shutdown`.
pub async fn start(
    cfg: &ConntrackConfig,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<RunningConntracker, NetlinkError> {
    let (tracker, tasks) = start_tracker(cfg, registry, shutdown).await?;
    Ok(RunningConntracker { tracker, tasks })
}

/// [`start`], returning the concrete tracker (its [`NetlinkStats`]).
pub async fn start_tracker(
    cfg: &ConntrackConfig,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<(Arc<NetlinkConntracker>, JoinSet<()>), NetlinkError> {
    let netns = std::fs::metadata("/proc/thread-self/ns/net").map_err(NetlinkError::Netns)?.ino() as u32;
    let events = register(open(EVENT_GROUPS)?, "register the event socket")?;
    let timeout = Duration::from_secs(cfg.initial_dump_timeout_secs);
    let tracker = Arc::new(NetlinkConntracker {
        table: Mutex::new(NatTable::new(cfg.max_entries as usize / 2)),
        netns,
        stats: NetlinkStats::default(),
    });
    resync(&tracker, timeout).await?;
    let mut tasks = JoinSet::new();
    let (task_tracker, task_registry, stop) = (tracker.clone(), registry.clone(), shutdown.clone());
    tasks.spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = follow_events(events, task_tracker, task_registry, timeout) => {}
        }
    });
    if let Some(every) = cfg.sweep_interval() {
        let (task_tracker, task_registry) = (tracker.clone(), registry.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = sweep(task_tracker, task_registry, every, timeout) => {}
            }
        });
    }
    Ok((tracker, tasks))
}

/// Entries that existed before the event subscription carry no event extension in the
/// kernel, so their DESTROY is never sent: a periodic resync (`sweep_interval_secs`)
/// removes them, and repairs anything else events missed.
async fn sweep(tracker: Arc<NetlinkConntracker>, registry: Registry, every: Duration, timeout: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticks.tick().await;
        if let Err(e) = resync(&tracker, timeout).await {
            tracing::warn!(%e, "netlink conntracker sweep failed; keeping the current table");
            registry
                .update_module(super::chain::MODULE, |m| m.last_error = Some(format!("netlink: sweep: {e}")));
        }
    }
}

/// Replaces the table with a fresh dump of NAT'd entries.
async fn resync(tracker: &NetlinkConntracker, timeout: Duration) -> Result<(), NetlinkError> {
    let entries = tokio::time::timeout(timeout, dump(tracker.netns))
        .await
        .map_err(|_| NetlinkError::DumpTimeout(timeout))??;
    tracker.table().replace_all(entries);
    Ok(())
}

async fn dump(netns: u32) -> Result<Vec<Entry>, NetlinkError> {
    let socket = register(open(0)?, "register the dump socket")?;
    send(socket.get_ref().as_raw_fd(), &wire::dump_request(1), MsgFlags::empty())
        .map_err(|errno| NetlinkError::Socket { what: "send the dump request", errno })?;
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let mut entries = Vec::new();
    loop {
        let n = read(&socket, &mut buf)
            .await
            .map_err(|errno| NetlinkError::Socket { what: "read the dump", errno })?;
        for message in wire::parse(&buf[..n])? {
            match message {
                Message::Conntrack { flow: Some(flow), .. } if flow.is_nat() => {
                    entries.push(flow.into_entry(netns))
                }
                Message::Done => return Ok(entries),
                Message::Error { errno } if errno != 0 => return Err(NetlinkError::Refused(errno)),
                _ => {}
            }
        }
    }
}

async fn follow_events(
    socket: AsyncFd<OwnedFd>,
    tracker: Arc<NetlinkConntracker>,
    registry: Registry,
    timeout: Duration,
) {
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    loop {
        match read(&socket, &mut buf).await {
            Ok(n) => match wire::parse(&buf[..n]) {
                Ok(messages) => messages.iter().for_each(|m| {
                    tracker.apply(m);
                }),
                Err(e) => tracing::warn!(%e, "skipping a malformed ctnetlink event datagram"),
            },
            Err(Errno::ENOBUFS) => on_lost_events(&tracker, &registry, timeout).await,
            Err(errno) => {
                tracing::error!(%errno, "ctnetlink event socket failed; the netlink conntracker stops following");
                registry.update_module(super::chain::MODULE, |m| {
                    m.last_error = Some(format!("netlink: event socket failed: {errno}"))
                });
                return;
            }
        }
    }
}

/// ENOBUFS: the kernel dropped events. Count it, say so, and rebuild from a dump.
async fn on_lost_events(tracker: &NetlinkConntracker, registry: &Registry, timeout: Duration) {
    let lost = tracker.stats.enobufs.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::warn!(times = lost, "ctnetlink events lost (ENOBUFS); resyncing the table from a dump");
    let outcome = match resync(tracker, timeout).await {
        Ok(()) => {
            let resyncs = tracker.stats.resyncs.fetch_add(1, Ordering::Relaxed) + 1;
            format!("netlink: events lost {lost} time(s) (ENOBUFS); {resyncs} resync(s) from a dump")
        }
        Err(e) => format!("netlink: events lost {lost} time(s) (ENOBUFS) and the resync failed: {e}"),
    };
    registry.update_module(super::chain::MODULE, |m| m.last_error = Some(outcome));
}

/// One datagram from a non-blocking netlink socket.
async fn read(socket: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> Result<usize, Errno> {
    loop {
        let mut guard =
            socket.readable().await.map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
        match recv(socket.get_ref().as_raw_fd(), buf, MsgFlags::empty()) {
            Err(Errno::EAGAIN) => guard.clear_ready(),
            other => return other,
        }
    }
}

/// A non-blocking NETLINK_NETFILTER socket bound to `groups`.
fn open(groups: u32) -> Result<OwnedFd, NetlinkError> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(|errno| NetlinkError::Socket { what: "open a NETLINK_NETFILTER socket", errno })?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))
        .map_err(|errno| NetlinkError::Socket { what: "bind the ctnetlink socket", errno })?;
    if groups != 0 {
        // Root may exceed net.core.rmem_max; otherwise take what the sysctl allows.
        if setsockopt(&fd, sockopt::RcvBufForce, &EVENT_BUFFER_BYTES).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &EVENT_BUFFER_BYTES);
        }
    }
    Ok(fd)
}

fn register(fd: OwnedFd, what: &'static str) -> Result<AsyncFd<OwnedFd>, NetlinkError> {
    // SAFETY: an OwnedFd is a valid open descriptor, owned by the AsyncFd until it is
    // dropped, and its as_raw_fd() always returns that same descriptor.
    unsafe { AsyncFd::register(fd) }.map_err(|e| io_error(what, io::Error::from(e)))
}

fn io_error(what: &'static str, e: io::Error) -> NetlinkError {
    NetlinkError::Socket { what, errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)) }
}
