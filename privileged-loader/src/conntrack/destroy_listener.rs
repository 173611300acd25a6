//! The DESTROY event listener: drops the map slots of conntrack entries the kernel
//! destroyed in the own namespace (`docs/conntrack.md` states the policy).
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::config::ConntrackConfig;
use super::ctnetlink::{CtNetlink, Event, NetlinkError};
use super::map::{self, CtKey};
use super::map_tracker::{CoreConntracker, monotonic_ns};
use super::{ConntrackStats, Entry, MODULE};

/// Pause after an unexpected netlink error, so a broken socket cannot spin a core.
const NETLINK_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// How long the destroy listener lets events queue after handling a batch. Deletions are
/// at most this much later; the 8 MiB event queue holds ~25,000 events, far more than
/// arrive in this time even in the benchmark's connection storm.
const EVENT_COALESCE: Duration = Duration::from_millis(10);

/// Drops the map slots of destroyed entries of the own namespace.
pub(crate) struct DestroyListener {
    pub(crate) tracker: Arc<CoreConntracker>,
    pub(crate) stats: Arc<ConntrackStats>,
    pub(crate) resync: Arc<Notify>,
    /// Asks the kernel whether a destroyed tuple already belongs to a newer entry.
    pub(crate) query: CtNetlink,
    /// Decides whether such a newer entry belongs in the map.
    pub(crate) cfg: ConntrackConfig,
}

impl DestroyListener {
    pub(crate) async fn run(mut self, mut socket: CtNetlink, shutdown: CancellationToken) {
        loop {
            let batch = tokio::select! {
                () = shutdown.cancelled() => return,
                batch = socket.next_events() => batch,
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
                    tracing::warn!(
                        module = MODULE,
                        "conntrack destroy events were lost (ENOBUFS); resynchronising"
                    );
                    self.resync.notify_one();
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

    async fn apply(&mut self, events: &[Event]) {
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
        match self.query.get(&entry.original).await {
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
