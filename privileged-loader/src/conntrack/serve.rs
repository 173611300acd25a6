//! Serving the map of a loaded object, CO-RE or prebuilt: seeding it from ctnetlink dumps
//! of the entries that existed before the program was attached (the own namespace's
//! here, the other reachable ones' by the sweeper as it starts), and starting the tasks
//! that keep it clean (the DESTROY listener and the sweeper).
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use aya::Ebpf;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::chain::RunningStatus;
use super::config::ConntrackConfig;
use super::ctnetlink::{CtNetlink, Groups, NetlinkError};
use super::destroy_listener::DestroyListener;
use super::hook::Strategy;
use super::map_tracker::{CoreConntracker, monotonic_ns};
use super::reach::Reach;
use super::storm::StormGuard;
use super::sweep::SweepPolicy;
use super::sweeper::Sweeper;
use super::{ConntrackError, ConntrackStats, Conntracker, MODULE};

/// A started conntracker: its read side and the tasks keeping it up to date.
pub struct RunningConntracker {
    pub tracker: Arc<dyn Conntracker>,
    /// The destroy-event listener and the sweep; they end when `shutdown` is cancelled.
    pub tasks: JoinSet<()>,
    pub stats: Arc<ConntrackStats>,
    /// The eBPF map behind `tracker` (CO-RE and prebuilt), for handing its translations
    /// to a successor at a reload; `None` for a userspace table.
    pub map: Option<Arc<CoreConntracker>>,
    /// What an operator should know about this instance (a stand-in it had to take); the
    /// chain writes them to the module's notes.
    pub notes: Vec<String>,
    /// Why it runs degraded (no seeding, no cleanup but LRU eviction); the chain writes it
    /// to the module's last error.
    pub degraded: Option<String>,
}

/// Serves the map of a loaded and attached object, CO-RE or prebuilt (both maps have the
/// same layout): seeding, destroy events and sweep. What it learns while starting goes
/// into the returned instance's `notes`/`degraded`, which the chain records; `status`
/// is the chain's writer for the running DESTROY listener (connection-storm shedding).
///
/// The netlink sockets belong to the network namespace of the *calling thread*: that is
/// the namespace whose existing entries are loaded and whose destroy events are seen.
pub async fn serve_loaded(
    ebpf: Ebpf,
    strategy: Strategy,
    cfg: &ConntrackConfig,
    status: &RunningStatus,
    shutdown: CancellationToken,
) -> Result<RunningConntracker, ConntrackError> {
    let tracker = Arc::new(CoreConntracker::from_loaded(ebpf, strategy, cfg.max_entries)?);
    Ok(serve(tracker, cfg, status, shutdown).await)
}

/// Starts the map runtime (seeding, destroy listener, sweep) for a loaded object. A
/// reload that changes only runtime settings calls it again on the same object.
///
/// `status` goes only to the DESTROY listener, for the one note that changes while the
/// instance runs (the subscription shed in a storm, and gone when restored); everything
/// known at start is returned in [`RunningConntracker`] for the chain to record.
pub(crate) async fn serve(
    tracker: Arc<CoreConntracker>,
    cfg: &ConntrackConfig,
    status: &RunningStatus,
    shutdown: CancellationToken,
) -> RunningConntracker {
    let strategy = tracker.strategy;
    let mut notes: Vec<String> = tracker.root_netns_note.iter().cloned().collect();
    let mut degraded = None;
    let stats = Arc::new(ConntrackStats::default());
    let mut tasks = JoinSet::new();
    match open_netlink(cfg.destroy_events) {
        Ok((events, query, mut dump)) => {
            let seeded = seed(&tracker, &mut dump, cfg).await;
            stats.initial_entries.store(seeded as u64, Ordering::Relaxed);
            let resync = Arc::new(Notify::new());
            let policy = SweepPolicy {
                own_netns: dump.netns(),
                stale_after_ns: cfg
                    .stale_after()
                    .filter(|_| strategy.refreshes_last_seen())
                    .map(|d| d.as_nanos() as u64),
            };
            let reach = Reach::of_current_namespace().await;
            notes.push(reach.describe());
            if let Some(events) = events {
                let coverage_note = events.coverage().describe();
                notes.push(coverage_note.clone());
                let listener = DestroyListener {
                    tracker: tracker.clone(),
                    stats: stats.clone(),
                    resync: resync.clone(),
                    query,
                    cfg: cfg.clone(),
                    storm: cfg.storm_policy().map(StormGuard::new),
                    status: status.clone(),
                    coverage_note,
                };
                tasks.spawn(listener.run(events, shutdown.clone()));
            } else {
                tracing::info!(
                    module = MODULE,
                    "conntrack.destroy_events is off: destroyed entries leave by the sweep and the LRU"
                );
            }
            let sweeper = Sweeper {
                tracker: tracker.clone(),
                stats: stats.clone(),
                policy,
                resync,
                cfg: cfg.clone(),
                suspects: HashSet::new(),
                reach,
                status: status.clone(),
            };
            tasks.spawn(sweeper.run(dump, cfg.sweep_interval(), shutdown));
        }
        Err(e) => {
            // The map still fills from the kernel; only the cleanup and the seeding are lost.
            let message = format!(
                "{e}: entries that existed before start are not loaded and destroyed entries \
                 leave only by LRU eviction"
            );
            tracing::warn!(module = MODULE, "{message}");
            degraded = Some(message);
        }
    }
    let map = Some(tracker.clone());
    let tracker: Arc<dyn Conntracker> = tracker;
    RunningConntracker { tracker, tasks, stats, map, notes, degraded }
}

/// The DESTROY event socket first, then the query and dump sockets: an entry destroyed
/// between the dump and the subscription would otherwise stay in the map until the next
/// sweep. The query socket asks the kernel, for each DESTROY, whether a newer entry with
/// the same tuple exists (it must not be on the event socket, whose events it would eat).
/// No event socket when `conntrack.destroy_events` is off.
fn open_netlink(destroy_events: bool) -> Result<(Option<CtNetlink>, CtNetlink, CtNetlink), NetlinkError> {
    let events = if destroy_events { Some(CtNetlink::event_socket(Groups::Destroy)?) } else { None };
    let query = CtNetlink::dump_socket()?;
    let dump = CtNetlink::dump_socket()?;
    Ok((events, query, dump))
}

/// Inserts the entries of a dump of the own namespace that the configuration records
/// (NAT'd, enabled families); returns how many.
async fn seed(tracker: &CoreConntracker, dump: &mut CtNetlink, cfg: &ConntrackConfig) -> usize {
    let timeout = cfg.initial_dump_timeout();
    match tokio::time::timeout(timeout, dump.dump()).await {
        Ok(Ok(entries)) => {
            let now = monotonic_ns();
            entries.iter().filter(|e| cfg.records(e)).filter(|e| tracker.insert(e, now)).count()
        }
        Ok(Err(e)) => {
            tracing::warn!(module = MODULE, error = %e, "initial conntrack dump failed; continuing without it");
            0
        }
        Err(_) => {
            tracing::warn!(
                module = MODULE,
                ?timeout,
                "initial conntrack dump timed out; continuing without it"
            );
            0
        }
    }
}
