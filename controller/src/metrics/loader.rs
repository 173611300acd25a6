//! The loader's figures in the metrics: module states, conntrack map fill, lock contention
//! per map. Read over the loader's socket at most once per `loader_cache_secs`, however
//! often the controller is scraped (a status read counts every conntrack entry).
use std::path::Path;
use std::time::{Duration, Instant};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shared_proto::loader::v1 as pb;
use shared_proto::loader::v1::loader_client::LoaderClient;
use tonic::transport::Channel;

use super::Labels;

/// The loader series, refreshed from the socket.
pub struct LoaderSeries {
    up: Gauge,
    module_state: Family<Labels, Gauge>,
    entries: Family<Labels, Gauge>,
    max_entries: Family<Labels, Gauge>,
    contended: Family<Labels, Gauge>,
    wait_seconds: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl LoaderSeries {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let series = Self {
            up: Gauge::default(),
            module_state: Family::default(),
            entries: Family::default(),
            max_entries: Family::default(),
            contended: Family::default(),
            wait_seconds: Family::default(),
        };
        registry.register(
            "loader_up",
            "1 when the loader answered the last read over its socket",
            series.up.clone(),
        );
        registry.register(
            "loader_module_state",
            "1 for each loader module's current state",
            series.module_state.clone(),
        );
        registry.register(
            "loader_conntrack_entries",
            "Entries in the conntracker's maps",
            series.entries.clone(),
        );
        registry.register(
            "loader_conntrack_max_entries",
            "Size of the conntracker's maps",
            series.max_entries.clone(),
        );
        registry.register(
            "loader_lock_contended",
            "Contended lock acquisitions inside BPF maps since the collector started, per map and lock type",
            series.contended.clone(),
        );
        registry.register(
            "loader_lock_wait_seconds",
            "Total time waited on contended locks inside BPF maps, per map and lock type",
            series.wait_seconds.clone(),
        );
        series
    }

    fn fill(&self, status: Option<&pb::GetStatusResponse>, locks: Option<&pb::GetLockStatsResponse>) {
        self.up.set(i64::from(status.is_some()));
        for family in [&self.module_state, &self.entries, &self.max_entries, &self.contended] {
            family.clear();
        }
        self.wait_seconds.clear();
        for m in status.map(|s| s.modules.as_slice()).unwrap_or_default() {
            let state = pb::ModuleState::try_from(m.state)
                .map_or("unknown".to_string(), |s| s.as_str_name().to_lowercase());
            self.module_state
                .get_or_create(&vec![("module".into(), m.name.clone()), ("state".into(), state)])
                .set(1);
            for map in &m.maps {
                let labels = vec![("map".into(), map.name.clone())];
                self.entries.get_or_create(&labels).set(map.entries as i64);
                self.max_entries.get_or_create(&labels).set(map.max_entries as i64);
            }
        }
        for map in locks.map(|l| l.maps.as_slice()).unwrap_or_default() {
            for lock in &map.locks {
                let labels =
                    vec![("map".into(), map.name.clone()), ("lock_type".into(), lock.lock_type.clone())];
                self.contended.get_or_create(&labels).set(lock.contended_count as i64);
                self.wait_seconds.get_or_create(&labels).set(lock.total_wait_ns as f64 / 1e9);
            }
        }
    }
}

/// Reads the loader at most once per `ttl`.
pub struct LoaderReader {
    client: LoaderClient<Channel>,
    ttl: Duration,
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl LoaderReader {
    pub fn new(socket: &Path, ttl: Duration) -> Self {
        Self { client: crate::loader::connect(socket), ttl, last: tokio::sync::Mutex::new(None) }
    }

    /// Refreshes `series` unless it was refreshed within the TTL. Concurrent scrapes wait
    /// for the one read in flight instead of making their own.
    pub async fn refresh(&self, series: &LoaderSeries) {
        let mut last = self.last.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.ttl) {
            return;
        }
        let mut client = self.client.clone();
        let timeout = Duration::from_secs(2);
        let status = tokio::time::timeout(timeout, client.get_status(pb::GetStatusRequest {})).await;
        let status = status.ok().and_then(Result::ok).map(tonic::Response::into_inner);
        let locks = match status {
            Some(_) => tokio::time::timeout(timeout, client.get_lock_stats(pb::GetLockStatsRequest {}))
                .await
                .ok()
                .and_then(Result::ok)
                .map(tonic::Response::into_inner),
            None => None,
        };
        series.fill(status.as_ref(), locks.as_ref());
        *last = Some(Instant::now());
    }
}
