//! The netlink conntracker: no eBPF at all. A ctnetlink dump at start, then the kernel's
//! NEW and DESTROY conntrack events, keep a bounded userspace table of NAT'd entries that
//! answers like the eBPF map.
//!
//! Events can be lost: when the socket's receive buffer overflows the kernel drops them
//! and the next read fails with ENOBUFS. The tracker counts that, says so (log, status
//! `last_error`, [`NetlinkStats`]) and resyncs the table from a fresh dump, so a loss
//! costs a dump, not wrong answers for the life of the process.
//!
//! Scope: the events of the namespace of the thread that starts it and of every
//! namespace with an id in it (`NETLINK_LISTEN_ALL_NSID`, see `ctnetlink/nsid.rs`); the
//! dumps (start and resync) cover the own namespace and every other one the loader
//! reached (`reach.rs`), and each replaces only its own namespace's entries. The sockets and the message parsing are the conntrack module's
//! ([`CtNetlink`]), shared with the CO-RE conntracker; this file owns the table policy.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::ConntrackStats;
use super::chain::RunningStatus;
use super::ctnetlink::{CtNetlink, Event, Groups, NetlinkError};
use super::nat_table::NatTable;
use super::reach::{self, NOTE_PREFIX, Reach};
use super::{ConntrackConfig, ConntrackError, Conntracker, Entry, RunningConntracker, TableFill, Tuple};

/// Strategy name reported by this conntracker.
pub const STRATEGY: &str = "netlink";
/// Pause after an unexpected socket error, so a broken socket cannot spin a core.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum NetlinkTrackerError {
    #[error("netlink conntracker: {0}")]
    Netlink(#[from] NetlinkError),
    #[error(
        "netlink conntracker: the initial ctnetlink dump did not finish within {0:?}; raise conntrack.initial_dump_timeout_secs"
    )]
    DumpTimeout(Duration),
    #[error("netlink conntracker: {0}")]
    Config(#[from] super::config::ConntrackConfigError),
}

/// Counters a user (and the benchmark) can read: events applied, times the kernel dropped
/// events (ENOBUFS), resyncs that followed, connections evicted because the table was full.
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
    /// Which namespaces' events its socket hears.
    coverage: String,
}

impl NetlinkConntracker {
    fn table(&self) -> MutexGuard<'_, NatTable> {
        // A poisoned table still holds valid entries: keep answering.
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn stats(&self) -> &NetlinkStats {
        &self.stats
    }

    /// Connections dropped because the table was full.
    pub fn evicted(&self) -> u64 {
        self.table().evicted()
    }

    fn apply(&self, event: &Event) {
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        let mut table = self.table();
        match event {
            Event::New(entry) if entry.is_nat() => table.insert(*entry),
            Event::Destroy(entry) => table.remove(&entry.original, entry.netns),
            Event::New(_) => {}
        }
    }

    /// Replaces the own namespace's part of the table with a fresh dump's NAT'd entries,
    /// then each other reached namespace's part with its own (one that fails is logged
    /// and keeps its entries).
    async fn resync(
        &self,
        dump: &mut CtNetlink,
        reach: &Reach,
        timeout: Duration,
    ) -> Result<(), NetlinkTrackerError> {
        self.resync_one(dump, timeout).await?;
        for mut borrowed in reach.borrow_all().await {
            let netns = borrowed.netns();
            let Some(socket) = borrowed.socket() else { continue };
            if let Err(e) = self.resync_one(socket, timeout).await {
                tracing::warn!(netns, error = %e, "netlink conntracker: dump of another namespace failed");
            }
        }
        Ok(())
    }

    async fn resync_one(&self, dump: &mut CtNetlink, timeout: Duration) -> Result<(), NetlinkTrackerError> {
        let entries = tokio::time::timeout(timeout, dump.dump())
            .await
            .map_err(|_| NetlinkTrackerError::DumpTimeout(timeout))??;
        self.table().replace_namespace(dump.netns(), entries.into_iter().filter(Entry::is_nat));
        Ok(())
    }
}

impl Conntracker for NetlinkConntracker {
    fn strategy(&self) -> String {
        STRATEGY.to_string()
    }

    fn entries(&self) -> Result<Vec<Entry>, ConntrackError> {
        Ok(self.table().entries())
    }

    /// The table holds one namespace (the tracker's); a lookup naming another falls back
    /// to it, as the eBPF conntrackers look in the root namespace first.
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

/// Prefix of the netlink conntracker's events coverage note.
const NETLINK_EVENTS_NOTE: &str = "netlink: conntrack events";

/// The status note of which namespaces' events `events` hears.
fn events_note(events: &CtNetlink) -> String {
    format!("netlink: {}", events.coverage().describe())
}

/// Starts the netlink conntracker: subscribes to NEW and DESTROY first (so nothing
/// between the dump and the subscription is missed), dumps, then follows events and
/// resyncs every `sweep_interval_secs` until `shutdown`.
pub async fn start(
    cfg: &ConntrackConfig,
    status: &RunningStatus,
    shutdown: CancellationToken,
) -> Result<RunningConntracker, NetlinkTrackerError> {
    let (tracker, tasks) = start_tracker(cfg, status, shutdown).await?;
    let stats = Arc::new(ConntrackStats::default());
    // Known at start: the chain records it with the instance.
    let notes = vec![format!("netlink: {}", tracker.coverage)];
    Ok(RunningConntracker { tracker, tasks, stats, map: None, notes, degraded: None })
}

/// [`start`], returning the concrete tracker (for its [`NetlinkStats`]).
pub async fn start_tracker(
    cfg: &ConntrackConfig,
    status: &RunningStatus,
    shutdown: CancellationToken,
) -> Result<(Arc<NetlinkConntracker>, JoinSet<()>), NetlinkTrackerError> {
    cfg.validate()?;
    let events = CtNetlink::event_socket(Groups::NewAndDestroy)?;
    let coverage = events.coverage().describe();
    let mut dump = CtNetlink::dump_socket()?;
    let reach = Reach::of_current_namespace().await;
    status.coverage(NOTE_PREFIX, reach.describe());
    let timeout = cfg.initial_dump_timeout();
    let tracker = Arc::new(NetlinkConntracker {
        // Two map slots per connection in the eBPF conntrackers: the same number of
        // connections fits here.
        table: Mutex::new(NatTable::new((cfg.max_entries / 2).max(1) as usize)),
        netns: dump.netns(),
        stats: NetlinkStats::default(),
        coverage,
    });
    tracker.resync(&mut dump, &reach, timeout).await?;
    let follower = Follower { tracker: tracker.clone(), status: status.clone(), dump, reach, timeout };
    let mut tasks = JoinSet::new();
    tasks.spawn(follower.run(events, cfg.sweep_interval(), shutdown));
    Ok((tracker, tasks))
}

/// The task that applies events, and resyncs on loss and on the sweep period.
struct Follower {
    tracker: Arc<NetlinkConntracker>,
    status: RunningStatus,
    dump: CtNetlink,
    /// The dump sockets of the other namespaces.
    reach: Arc<Reach>,
    timeout: Duration,
}

impl Follower {
    async fn run(mut self, mut events: CtNetlink, sweep: Option<Duration>, shutdown: CancellationToken) {
        // Entries made before the subscription carry no event extension in the kernel, so
        // their DESTROY never comes: the periodic resync removes them.
        let period = sweep.unwrap_or(Duration::MAX / 4);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut refresh = tokio::time::interval_at(
            tokio::time::Instant::now() + reach::REFRESH_PERIOD,
            reach::REFRESH_PERIOD,
        );
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick(), if sweep.is_some() => self.resync("sweep").await,
                _ = refresh.tick() => {
                    self.status.coverage(NETLINK_EVENTS_NOTE, events_note(&events));
                    self.refresh_reach().await;
                }
                batch = events.next_events() => match batch {
                    Ok(batch) => batch.iter().for_each(|e| self.tracker.apply(e)),
                    Err(NetlinkError::Overrun) => self.on_lost_events(&mut events).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "ctnetlink event socket error; retrying");
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                },
            }
        }
    }

    /// Lets go of namespaces that went and enters new ones (whose tables are read at once).
    async fn refresh_reach(&mut self) {
        let refreshed = self.reach.refresh().await;
        if refreshed.changed {
            self.status.coverage(NOTE_PREFIX, self.reach.describe());
        }
        if refreshed.entered > 0 {
            self.resync("namespaces entered").await;
        }
    }

    /// ENOBUFS: the kernel dropped events. Count it, say so, rebuild from a dump.
    /// The events still queued are older than the dump: they are dropped first, so
    /// that none is applied on top of it.
    async fn on_lost_events(&mut self, events: &mut CtNetlink) {
        let lost = self.tracker.stats.enobufs.fetch_add(1, Ordering::Relaxed) + 1;
        let stale = events.discard_queued().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ctnetlink event socket error while dropping stale events");
            0
        });
        tracing::warn!(
            times = lost,
            stale_datagrams = stale,
            "ctnetlink events lost (ENOBUFS); resyncing the table from a dump"
        );
        self.resync("events lost (ENOBUFS)").await;
        let resyncs = self.tracker.stats.resyncs.load(Ordering::Relaxed);
        let message = format!(
            "netlink: events lost {lost} time(s) (ENOBUFS); table resynced from a dump {resyncs} time(s)"
        );
        self.status.warn(message);
    }

    async fn resync(&mut self, why: &str) {
        match self.tracker.resync(&mut self.dump, &self.reach, self.timeout).await {
            Ok(()) => {
                self.tracker.stats.resyncs.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, why, "netlink conntracker resync failed; keeping the current table");
                let message = format!("netlink: resync after {why} failed: {e}");
                self.status.warn(message);
            }
        }
    }
}
