//! The sweeper task: periodically (and after a DESTROY event overrun or a storm) reconciles
//! the map with fresh conntrack dumps of every namespace it reached, by the plan of
//! `sweep.rs`; between sweeps it keeps that reach current (`reach.rs`).
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::chain::RunningStatus;
use super::config::ConntrackConfig;
use super::ctnetlink::CtNetlink;
use super::map::CtKey;
use super::map_tracker::{CoreConntracker, monotonic_ns};
use super::reach::{self, Borrowed, Reach};
use super::sweep::{self, Dumps, SweepPolicy};
use super::{ConntrackStats, Entry, MODULE};

/// Bound on one sweep's conntrack dump.
const SWEEP_DUMP_TIMEOUT: Duration = Duration::from_secs(10);

/// Periodically (and after an event overrun) reconciles the map with fresh dumps of the
/// own namespace and of every other one it reached.
pub(crate) struct Sweeper {
    pub(crate) tracker: Arc<CoreConntracker>,
    pub(crate) stats: Arc<ConntrackStats>,
    pub(crate) policy: SweepPolicy,
    pub(crate) resync: Arc<Notify>,
    /// Decides which dumped entries belong in the map (the families the program records).
    pub(crate) cfg: ConntrackConfig,
    /// Connections the last dumps did not list (see `sweep.rs`).
    pub(crate) suspects: HashSet<CtKey>,
    /// The dump sockets of the other namespaces.
    pub(crate) reach: Arc<Reach>,
    /// Where the coverage note is kept current.
    pub(crate) status: RunningStatus,
}

impl Sweeper {
    pub(crate) async fn run(
        mut self,
        mut dump: CtNetlink,
        interval: Option<Duration>,
        shutdown: CancellationToken,
    ) {
        // The initial dump of the other namespaces: here, so start-up does not wait for it.
        self.seed_others().await;
        let mut ticker = interval.map(|every| {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker
        });
        let mut refresh = tokio::time::interval_at(
            tokio::time::Instant::now() + reach::REFRESH_PERIOD,
            reach::REFRESH_PERIOD,
        );
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.resync.notified() => {}
                () = next_tick(&mut ticker) => {}
                _ = refresh.tick() => {
                    if !self.refresh_reach().await {
                        continue;
                    }
                }
            }
            self.sweep_once(&mut dump).await;
        }
    }

    /// Lets go of namespaces that went and enters new ones; true when new ones were
    /// entered (their tables are then read at once).
    async fn refresh_reach(&self) -> bool {
        let refreshed = self.reach.refresh().await;
        if refreshed.changed {
            self.status.coverage(reach::NOTE_PREFIX, self.reach.describe());
        }
        refreshed.entered > 0
    }

    /// Inserts what the other namespaces' tables hold now.
    async fn seed_others(&mut self) {
        let mut others = self.reach.borrow_all().await;
        let mut seeded = 0;
        for borrowed in &mut others {
            let Some(socket) = borrowed.socket() else { continue };
            let Some(entries) = self.dump_one(socket).await else { continue };
            let now = monotonic_ns();
            seeded += entries.iter().filter(|e| self.tracker.insert(e, now)).count();
        }
        self.stats.initial_entries.fetch_add(seeded as u64, Ordering::Relaxed);
    }

    async fn sweep_once(&mut self, dump: &mut CtNetlink) {
        let started_ns = monotonic_ns();
        // The map before the dumps: a connection the DESTROY listener removes while the
        // dumps run is then in neither the snapshot's "missing" set nor re-inserted from
        // a dump that still listed it (a snapshot taken after would miss it, and the plan
        // would insert it again, stale).
        let slots = match self.tracker.snapshot() {
            Ok(slots) => slots,
            Err(e) => {
                tracing::warn!(module = MODULE, error = %e, "sweep: cannot read the map");
                return;
            }
        };
        let mut others = self.reach.borrow_all().await;
        let mut dumps = Dumps::new();
        if let Some(entries) = self.dump_one(dump).await {
            dumps.insert(dump.netns(), entries);
        }
        for borrowed in &mut others {
            let netns = borrowed.netns();
            let Some(socket) = borrowed.socket() else { continue };
            if let Some(entries) = self.dump_one(socket).await {
                dumps.insert(netns, entries);
            }
        }
        if !dumps.is_empty() && self.stats.resync_after_shed.swap(false, Ordering::Relaxed) {
            // Every DESTROY of the storm was missed: one miss is enough this time (each
            // deletion is still confirmed with the kernel below).
            let dumped = slots.iter().filter(|(k, _)| dumps.contains_key(&k.netns)).map(|(k, _)| *k);
            self.suspects.extend(dumped);
        }
        let mut plan = sweep::plan(&slots, &dumps, &self.policy, started_ns, &self.suspects);
        let asked = sweep::dumped_deletions(&plan, &slots, &dumps);
        let held = held_by_kernel(dump, &mut others, &asked).await;
        drop(others);
        sweep::spare(&mut plan, &slots, &held);
        self.suspects = std::mem::take(&mut plan.suspects);
        let deleted = self.tracker.remove_keys(&plan.delete);
        let now = monotonic_ns();
        let inserted = plan.insert.iter().filter(|e| self.tracker.insert(e, now)).count();
        self.stats.sweeps.fetch_add(1, Ordering::Relaxed);
        self.stats.swept_slots.fetch_add(deleted as u64, Ordering::Relaxed);
        tracing::debug!(
            module = MODULE,
            deleted,
            inserted,
            slots = slots.len(),
            namespaces = dumps.len(),
            "conntrack sweep done"
        );
    }

    /// The recordable entries of one namespace's table, or `None` (logged) when the
    /// dump failed: that namespace is then not checked this time.
    async fn dump_one(&self, socket: &mut CtNetlink) -> Option<Vec<Entry>> {
        let netns = socket.netns();
        match tokio::time::timeout(SWEEP_DUMP_TIMEOUT, socket.dump()).await {
            Ok(Ok(entries)) => Some(entries.into_iter().filter(|e| self.cfg.records(e)).collect()),
            Ok(Err(e)) => {
                tracing::warn!(module = MODULE, netns, error = %e, "sweep: conntrack dump failed; namespace not checked");
                None
            }
            Err(_) => {
                tracing::warn!(
                    module = MODULE,
                    netns,
                    "sweep: conntrack dump timed out; namespace not checked"
                );
                None
            }
        }
    }
}

/// Which of `originals` the kernel still holds, each asked in its own namespace: the
/// dumps that missed them can skip entries. An entry that cannot be asked about counts
/// as held (deleting a live entry is the worse error).
async fn held_by_kernel(own: &mut CtNetlink, others: &mut [Borrowed], originals: &[CtKey]) -> HashSet<CtKey> {
    let mut held = HashSet::new();
    for key in originals {
        let Ok(tuple) = key.to_tuple() else { continue };
        let socket = if key.netns == own.netns() {
            Some(&mut *own)
        } else {
            others.iter_mut().find(|b| b.netns() == key.netns).and_then(Borrowed::socket)
        };
        let answer = match socket {
            Some(socket) => socket.get(&tuple).await,
            None => {
                held.insert(*key);
                continue;
            }
        };
        match answer {
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

async fn next_tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}
