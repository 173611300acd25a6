//! The sweeper task: periodically (and after a DESTROY event overrun) reconciles the map
//! with a fresh conntrack dump, by the plan of `sweep.rs`.
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::config::ConntrackConfig;
use super::ctnetlink::CtNetlink;
use super::map::CtKey;
use super::map_tracker::{CoreConntracker, monotonic_ns};
use super::sweep::{self, SweepPolicy};
use super::{ConntrackStats, MODULE};

/// Bound on one sweep's conntrack dump.
const SWEEP_DUMP_TIMEOUT: Duration = Duration::from_secs(10);

/// Periodically (and after an event overrun) reconciles the map with a fresh dump.
pub(crate) struct Sweeper {
    pub(crate) tracker: Arc<CoreConntracker>,
    pub(crate) stats: Arc<ConntrackStats>,
    pub(crate) policy: SweepPolicy,
    pub(crate) resync: Arc<Notify>,
    /// Decides which dumped entries belong in the map (the families the program records).
    pub(crate) cfg: ConntrackConfig,
    /// Own-namespace connections the last dump did not list (see `sweep.rs`).
    pub(crate) suspects: HashSet<CtKey>,
}

impl Sweeper {
    pub(crate) async fn run(
        mut self,
        mut dump: CtNetlink,
        interval: Option<Duration>,
        shutdown: CancellationToken,
    ) {
        let mut ticker = interval.map(|every| {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker
        });
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.resync.notified() => {}
                () = next_tick(&mut ticker) => {}
            }
            self.sweep_once(&mut dump).await;
        }
    }

    async fn sweep_once(&mut self, dump: &mut CtNetlink) {
        let started_ns = monotonic_ns();
        let entries = match tokio::time::timeout(SWEEP_DUMP_TIMEOUT, dump.dump()).await {
            Ok(Ok(entries)) => Some(entries.into_iter().filter(|e| self.cfg.records(e)).collect::<Vec<_>>()),
            Ok(Err(e)) => {
                tracing::warn!(module = MODULE, error = %e, "sweep: conntrack dump failed; own namespace not checked");
                None
            }
            Err(_) => {
                tracing::warn!(module = MODULE, "sweep: conntrack dump timed out; own namespace not checked");
                None
            }
        };
        let slots = match self.tracker.snapshot() {
            Ok(slots) => slots,
            Err(e) => {
                tracing::warn!(module = MODULE, error = %e, "sweep: cannot read the map");
                return;
            }
        };
        if entries.is_some() && self.stats.resync_after_shed.swap(false, Ordering::Relaxed) {
            // Every DESTROY of the storm was missed: one miss is enough this time (each
            // deletion is still confirmed with the kernel below).
            let own = slots.iter().filter(|(k, _)| k.netns == self.policy.own_netns).map(|(k, _)| *k);
            self.suspects.extend(own);
        }
        let mut plan = sweep::plan(&slots, entries.as_deref(), &self.policy, started_ns, &self.suspects);
        let held = self.held_by_kernel(dump, &sweep::own_deletions(&plan, &slots, &self.policy)).await;
        sweep::spare(&mut plan, &slots, &held);
        self.suspects = std::mem::take(&mut plan.suspects);
        let deleted = self.tracker.remove_keys(&plan.delete);
        let now = monotonic_ns();
        let inserted = plan.insert.iter().filter(|e| self.tracker.insert(e, now)).count();
        self.stats.sweeps.fetch_add(1, Ordering::Relaxed);
        self.stats.swept_slots.fetch_add(deleted as u64, Ordering::Relaxed);
        tracing::debug!(module = MODULE, deleted, inserted, slots = slots.len(), "conntrack sweep done");
    }

    /// Which of the own-namespace `originals` the kernel still holds, asked one by one:
    /// the dumps that missed them can skip entries. An entry that cannot be asked about
    /// counts as held (deleting a live entry is the worse error).
    async fn held_by_kernel(&self, dump: &mut CtNetlink, originals: &[CtKey]) -> HashSet<CtKey> {
        let mut held = HashSet::new();
        for key in originals {
            let Ok(tuple) = key.to_tuple() else { continue };
            match dump.get(&tuple).await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    held.insert(*key);
                }
                Err(e) => {
                    tracing::debug!(module = MODULE, error = %e, ?tuple, "sweep: cannot ask the kernel; keeping");
                    held.insert(*key);
                }
            }
        }
        held
    }
}

async fn next_tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}
