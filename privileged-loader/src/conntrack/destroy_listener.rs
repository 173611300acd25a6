//! The DESTROY event listener: drops the map slots of conntrack entries the kernel
//! destroyed in the own namespace and in every namespace with an id in it
//! (`docs/conntrack.md` states the policy).
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::chain::RunningStatus;
use super::config::ConntrackConfig;
use super::ctnetlink::{CtNetlink, EVENTS_NOTE_PREFIX, Event, NetlinkError};
use super::map::{self, CtKey};
use super::map_tracker::{CoreConntracker, monotonic_ns};
use super::storm::{SHED_NOTE, StormGuard, Verdict};
use super::{ConntrackStats, Entry, MODULE};

/// Pause after an unexpected netlink error, so a broken socket cannot spin a core.
const NETLINK_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// How long the destroy listener lets events queue after handling a batch. Deletions are
/// at most this much later; the 8 MiB event queue holds ~25,000 events, far more than
/// arrive in this time even in the benchmark's connection storm.
const EVENT_COALESCE: Duration = Duration::from_millis(10);

/// How often the rate of recorded connections is sampled for the storm guard.
const STORM_SAMPLE: Duration = Duration::from_secs(1);

/// Drops the map slots of destroyed entries of the own namespace and of every namespace
/// with an id in it.
pub(crate) struct DestroyListener {
    pub(crate) tracker: Arc<CoreConntracker>,
    pub(crate) stats: Arc<ConntrackStats>,
    pub(crate) resync: Arc<Notify>,
    /// Asks the kernel whether a destroyed tuple already belongs to a newer entry.
    pub(crate) query: CtNetlink,
    /// Decides whether such a newer entry belongs in the map.
    pub(crate) cfg: ConntrackConfig,
    /// Sheds the subscription in connection storms; `None` when configured off.
    pub(crate) storm: Option<StormGuard>,
    /// The chain's writer: the shed state (a module note while shed) and which
    /// namespaces' events are heard.
    pub(crate) status: RunningStatus,
    /// The events coverage note as last written, rewritten when it changes.
    pub(crate) coverage_note: String,
}

/// What woke the listener.
enum Wake {
    Events(Result<Vec<Event>, NetlinkError>),
    Sample,
}

/// The shortest span a connection rate is measured over. Shorter ones turn a handful of
/// connections into a storm: the first sample comes right after start (tokio's interval
/// ticks at once), and 20 connections made in those 4 ms read as 5,000/s — which shed
/// the subscription of a loader that had just started (found by a flaky test).
const MIN_RATE_WINDOW: Duration = Duration::from_millis(500);

/// New connections per second between the counter readings `last` and `now`; `None`
/// without a reading before, or when it is less than [`MIN_RATE_WINDOW`] old.
fn rate_since(last: Option<(u64, Instant)>, now: (u64, Instant)) -> Option<u64> {
    let (before, at) = last?;
    let window = now.1.saturating_duration_since(at);
    if window < MIN_RATE_WINDOW {
        return None;
    }
    Some((now.0.wrapping_sub(before) as f64 / window.as_secs_f64()) as u64)
}

impl DestroyListener {
    pub(crate) async fn run(mut self, mut socket: CtNetlink, shutdown: CancellationToken) {
        let mut sampler = tokio::time::interval(STORM_SAMPLE);
        sampler.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = self.tracker.recorded_connections().map(|total| (total, Instant::now()));
        loop {
            let wake = tokio::select! {
                () = shutdown.cancelled() => return,
                batch = socket.next_events() => Wake::Events(batch),
                _ = sampler.tick() => Wake::Sample,
            };
            let batch = match wake {
                Wake::Events(batch) => batch,
                Wake::Sample => {
                    self.refresh_coverage(&socket);
                    if self.storm.is_some() {
                        last = self.sample(&socket, last);
                    }
                    continue;
                }
            };
            match batch {
                Ok(events) => {
                    self.apply(&events).await;
                    // Let the next events queue up for a moment: under a connection storm
                    // one wake-up then takes hundreds of them instead of one each.
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(EVENT_COALESCE) => {}
                    }
                }
                Err(NetlinkError::Overrun) => {
                    self.stats.enobufs.fetch_add(1, Ordering::Relaxed);
                    if !self.shed_on_overrun(&socket, last) {
                        tracing::warn!(
                            module = MODULE,
                            "conntrack destroy events were lost (ENOBUFS); resynchronising"
                        );
                        self.resync.notify_one();
                    }
                }
                Err(e) => {
                    tracing::warn!(module = MODULE, error = %e, "conntrack event socket error");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(NETLINK_RETRY_PAUSE) => {}
                    }
                }
            }
        }
    }

    /// Rewrites the events coverage note when the namespace ids heard changed.
    fn refresh_coverage(&mut self, socket: &CtNetlink) {
        let note = socket.coverage().describe();
        if note != self.coverage_note {
            self.coverage_note = note.clone();
            self.status.coverage(EVENTS_NOTE_PREFIX, note);
        }
    }

    /// One storm-guard sample: the rate since `last`, and a shed or restore if it says so.
    fn sample(&mut self, socket: &CtNetlink, last: Option<(u64, Instant)>) -> Option<(u64, Instant)> {
        let now = (self.tracker.recorded_connections()?, Instant::now());
        // Too soon after the last reading: measure from it at the next tick instead.
        let Some(per_sec) = rate_since(last, now) else { return last.or(Some(now)) };
        self.stats.recorded_per_sec.store(per_sec, Ordering::Relaxed);
        let Some(guard) = self.storm.as_mut() else { return Some(now) };
        let verdict = guard.observe(per_sec);
        self.act(socket, verdict, per_sec);
        Some(now)
    }

    /// After an event overrun: sheds at once when the connection rate since the last
    /// sample is above the threshold (the resync then runs when the storm ends, not in
    /// the middle of it). Returns whether it shed.
    fn shed_on_overrun(&mut self, socket: &CtNetlink, last: Option<(u64, Instant)>) -> bool {
        let Some(guard) = self.storm.as_mut() else { return false };
        if guard.is_shed() {
            // Events queued before the unsubscription: the restore's resync covers them.
            return true;
        }
        let now = self.tracker.recorded_connections().map(|total| (total, Instant::now()));
        let Some(per_sec) = now.and_then(|now| rate_since(last, now)) else { return false };
        let verdict = guard.overrun(per_sec);
        self.act(socket, verdict, per_sec);
        self.storm.as_ref().is_some_and(StormGuard::is_shed)
    }

    /// Carries out a storm-guard verdict on the subscription, in status and the log.
    fn act(&mut self, socket: &CtNetlink, verdict: Verdict, per_sec: u64) {
        let threshold = self.cfg.storm_shed_above_per_sec;
        match verdict {
            Verdict::Keep => {}
            Verdict::Shed => match socket.set_destroy_subscription(false) {
                Ok(()) => {
                    self.stats.destroy_shed.store(true, Ordering::Relaxed);
                    let sheds = self.stats.storm_sheds.fetch_add(1, Ordering::Relaxed) + 1;
                    let note = format!(
                        "{SHED_NOTE}: {per_sec} connections/s > {threshold}/s; destroyed entries leave by the sweep and the LRU until it calms (shed {sheds} time(s))"
                    );
                    tracing::warn!(
                        module = MODULE,
                        per_sec,
                        threshold,
                        "conntrack DESTROY subscription shed (connection storm)"
                    );
                    self.status.storm_shed(note);
                }
                Err(e) => {
                    tracing::warn!(module = MODULE, error = %e, "cannot shed the DESTROY subscription");
                    self.storm.as_mut().map(StormGuard::revert);
                }
            },
            Verdict::Restore => match socket.set_destroy_subscription(true) {
                Ok(()) => {
                    self.stats.destroy_shed.store(false, Ordering::Relaxed);
                    self.stats.resync_after_shed.store(true, Ordering::Relaxed);
                    tracing::info!(
                        module = MODULE,
                        per_sec,
                        "conntrack DESTROY subscription restored; resynchronising"
                    );
                    self.status.storm_passed();
                    self.resync.notify_one();
                }
                Err(e) => {
                    tracing::warn!(module = MODULE, error = %e, "cannot restore the DESTROY subscription")
                }
            },
        }
    }

    async fn apply(&mut self, events: &[Event]) {
        if self.storm.as_ref().is_some_and(StormGuard::is_shed) {
            // Queued before the shed: like every destroy of the storm, left to the
            // resync that follows the restore (a kernel query each would cost the storm).
            return;
        }
        for event in events {
            if let Event::Destroy(entry) = event {
                self.stats.destroy_events.fetch_add(1, Ordering::Relaxed);
                if entry.is_nat() {
                    self.forget(entry).await;
                }
            }
        }
    }

    /// Deletes the slots of the destroyed `entry`, unless they now belong to a newer
    /// entry with the same original tuple.
    ///
    /// The event is read after the fact. When a port is reused (a SYN on a TIME_WAIT or
    /// closed entry, `tcp_tw_reuse`), the kernel destroys the old entry and creates a new
    /// one with the very same tuples in the same instant; the eBPF program has usually
    /// recorded the new one (the same slots) before this event is read, and deleting them
    /// would lose a live connection — for good with fentry/kprobe, until its next packet
    /// with tp_btf. So the kernel is asked what it holds now (`CtNetlink::get`, which
    /// ignores the dying entry itself); a live entry under the tuple keeps the slots,
    /// rewritten to it.
    async fn forget(&mut self, entry: &Entry) {
        let stale = self.tracker.slots_describing(entry);
        if stale.is_empty() {
            return;
        }
        if entry.netns != self.query.netns() {
            // Another namespace's entry (`NETLINK_LISTEN_ALL_NSID`): the query socket
            // would answer about its own namespace's table, not that one. Removed at once;
            // a reused tuple there is recorded again by its next packet (tp_btf, raw
            // tracepoint), or lost until reconnect with the once-per-entry hooks.
            self.tracker.remove_keys(&stale);
            return;
        }
        let asked = Instant::now();
        let answer = self.query.get(&entry.original).await;
        self.stats.destroy_gets.fetch_add(1, Ordering::Relaxed);
        self.stats.destroy_get_ns.fetch_add(asked.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match answer {
            Ok(Some(next)) if next.is_nat() && self.cfg.records(&next) => {
                if next.original == entry.original && next.reply == entry.reply && stale.len() == 2 {
                    // The newer entry has the same tuples both ways (a reused port,
                    // the same NAT mapping): both slots already describe it.
                    return;
                }
                let kept = map::slots_of(&next, 0).map(|(key, _)| key);
                let gone: Vec<CtKey> = stale.into_iter().filter(|k| !kept.contains(k)).collect();
                self.tracker.remove_keys(&gone);
                self.tracker.insert(&next, monotonic_ns());
            }
            Ok(_) => {
                self.tracker.remove_keys(&stale);
            }
            Err(e) => {
                // Unknown: keeping a dead entry until the sweep is better than deleting
                // a live one that nothing would re-record.
                tracing::warn!(module = MODULE, error = %e, ?entry, "cannot ask the kernel about a destroyed entry; resynchronising");
                self.resync.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_read_milliseconds_after_the_last_reading_is_no_rate() {
        let start = Instant::now();
        let after = |ms| start + Duration::from_millis(ms);
        // 20 connections 4 ms after start: 5,000/s if measured, which would shed.
        assert_eq!(rate_since(Some((0, start)), (20, after(4))), None);
        assert_eq!(rate_since(None, (20, after(4))), None, "no reading before");
        assert_eq!(rate_since(Some((0, start)), (20, after(1_000))), Some(20));
        assert_eq!(rate_since(Some((100, start)), (6_100, after(500))), Some(12_000));
    }
}
