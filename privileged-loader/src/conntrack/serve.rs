//! Serving the map of a loaded object, CO-RE or prebuilt: seeding it from a ctnetlink dump
//! of the entries that existed before the program was attached, and starting the tasks
//! that keep it clean (the DESTROY listener and the sweeper).
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use aya::Ebpf;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::config::ConntrackConfig;
use super::ctnetlink::{CtNetlink, Groups, NetlinkError};
use super::destroy_listener::DestroyListener;
use super::hook::Strategy;
use super::map_tracker::{CoreConntracker, monotonic_ns};
use super::sweep::SweepPolicy;
use super::sweeper::Sweeper;
use super::{ConntrackError, ConntrackStats, Conntracker, MODULE};
use crate::status::Registry;

/// A started conntracker: its read side and the tasks keeping it up to date.
pub struct RunningConntracker {
    pub tracker: Arc<dyn Conntracker>,
    /// The destroy-event listener and the sweep; they end when `shutdown` is cancelled.
    pub tasks: JoinSet<()>,
    pub stats: Arc<ConntrackStats>,
    /// The eBPF map behind `tracker` (CO-RE and prebuilt), for handing its translations
    /// to a successor at a reload; `None` for a userspace table.
    pub map: Option<Arc<CoreConntracker>>,
}

/// Serves the map of an object loaded and attached elsewhere (the prebuilt conntracker,
/// whose map has this same layout): the same seeding, destroy events and sweep as
/// [`start`]. Records nothing in the module's attempts; the caller does.
pub async fn serve_loaded(
    ebpf: Ebpf,
    strategy: Strategy,
    cfg: &ConntrackConfig,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<RunningConntracker, ConntrackError> {
    cfg.validate()?;
    let tracker = Arc::new(CoreConntracker::from_loaded(ebpf, strategy, cfg.max_entries)?);
    Ok(serve(tracker, cfg, registry, shutdown).await)
}

/// Starts the map runtime (seeding, destroy listener, sweep) for a loaded object. A
/// reload that changes only runtime settings calls it again on the same object.
pub(crate) async fn serve(
    tracker: Arc<CoreConntracker>,
    cfg: &ConntrackConfig,
    registry: &Registry,
    shutdown: CancellationToken,
) -> RunningConntracker {
    let strategy = tracker.strategy;
    if let Some(note) = &tracker.root_netns_note {
        registry.update_module(MODULE, |m| m.notes.push(note.clone()));
    }
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
            if let Some(events) = events {
                let listener = DestroyListener {
                    tracker: tracker.clone(),
                    stats: stats.clone(),
                    resync: resync.clone(),
                    query,
                    cfg: cfg.clone(),
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
            registry.update_module(MODULE, |m| m.last_error = Some(message));
        }
    }
    let map = Some(tracker.clone());
    let tracker: Arc<dyn Conntracker> = tracker;
    RunningConntracker { tracker, tasks, stats, map }
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
