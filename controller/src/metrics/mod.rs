//! Prometheus metrics, served over HTTP by the controller (the loader has no network
//! listener: its figures are read over its socket, cached, see [`loader`]).
//!
//! Series (docs/remote-config.md lists them with their meaning):
//! `controller_polls_total{outcome}`, `controller_poll_duration_seconds`,
//! `controller_verification_failures_total{reason}`, `controller_config_apply_states{product,state}`,
//! `controller_targets_age_seconds`, `controller_backoff_level`, `loader_up`,
//! `loader_module_state{module,state}`, `loader_conntrack_entries{map}`,
//! `loader_conntrack_max_entries{map}`, `loader_lock_contended_total{map,lock_type}`,
//! `loader_lock_wait_seconds_total{map,lock_type}`.
pub mod loader;
mod serve;

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use trust::{ApplyState, TrustedState};

pub use serve::serve;

/// The `[metrics]` table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the `/metrics` HTTP listener. Empty: no listener.
    pub listen: String,
    /// How long the loader's figures are reused between scrapes.
    pub loader_cache_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:9464".into(), loader_cache_secs: 5 }
    }
}

impl MetricsConfig {
    pub fn loader_cache(&self) -> Duration {
        Duration::from_secs(self.loader_cache_secs)
    }
}

type Labels = Vec<(String, String)>;

/// The controller's own series; the poll loop updates them.
pub struct Metrics {
    pub(crate) registry: Registry,
    polls: Family<Labels, Counter>,
    poll_seconds: Histogram,
    verification_failures: Family<Labels, Counter>,
    apply_states: Family<Labels, Gauge>,
    backoff_level: Gauge,
    targets_verified_unix: AtomicI64,
    targets_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub(crate) loader: loader::LoaderSeries,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let polls = Family::<Labels, Counter>::default();
        registry.register("controller_polls", "Remote-config polls by outcome (ok, error)", polls.clone());
        let poll_seconds = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]);
        registry.register(
            "controller_poll_duration_seconds",
            "Time of one poll (request, verify, store)",
            poll_seconds.clone(),
        );
        let verification_failures = Family::<Labels, Counter>::default();
        registry.register(
            "controller_verification_failures",
            "Responses rejected by TUF verification, by reason",
            verification_failures.clone(),
        );
        // Every reason from the start, so that a scrape shows the series at 0.
        for reason in trust::VerifyError::REASONS {
            verification_failures.get_or_create_owned(&vec![("reason".into(), reason.into())]);
        }
        let apply_states = Family::<Labels, Gauge>::default();
        registry.register(
            "controller_config_apply_states",
            "Configs held, by product and apply state (unacknowledged, acknowledged, error)",
            apply_states.clone(),
        );
        let backoff_level = Gauge::default();
        registry.register(
            "controller_backoff_level",
            "Backoff level of the poll loop (0: none)",
            backoff_level.clone(),
        );
        let targets_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "controller_targets_age_seconds",
            "Seconds since the newest targets were verified (-1: none yet)",
            targets_age.clone(),
        );
        let loader = loader::LoaderSeries::register(&mut registry);
        Self {
            registry,
            polls,
            poll_seconds,
            verification_failures,
            apply_states,
            backoff_level,
            targets_verified_unix: AtomicI64::new(-1),
            targets_age,
            loader,
        }
    }
}

impl Metrics {
    pub fn poll(&self, ok: bool, took: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.polls.get_or_create(&vec![("outcome".into(), outcome.into())]).inc();
        self.poll_seconds.observe(took.as_secs_f64());
    }

    pub fn verification_failure(&self, reason: &str) {
        self.verification_failures.get_or_create(&vec![("reason".into(), reason.into())]).inc();
    }

    pub fn backoff(&self, level: u32) {
        self.backoff_level.set(i64::from(level));
    }

    /// A targets document was verified (a new one, or the stored one at start).
    pub fn targets_verified(&self) {
        self.targets_verified_unix.store(now_unix(), Ordering::Relaxed);
    }

    /// The apply states of `state`'s configs of `products`, counted per product and state.
    pub fn apply_states(&self, state: &TrustedState, products: &[String]) {
        self.apply_states.clear();
        for product in products {
            for s in [ApplyState::Unacknowledged, ApplyState::Acknowledged, ApplyState::Error] {
                let n = state.product_configs(product).filter(|c| c.apply_state == s).count();
                let labels =
                    vec![("product".into(), product.clone()), ("state".into(), state_name(s).into())];
                self.apply_states.get_or_create(&labels).set(n as i64);
            }
        }
    }

    /// Renders every series as Prometheus text (version 0.0.4).
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let verified = self.targets_verified_unix.load(Ordering::Relaxed);
        self.targets_age.set(if verified < 0 { -1.0 } else { (now_unix() - verified) as f64 });
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

fn state_name(s: ApplyState) -> &'static str {
    match s {
        ApplyState::Unknown => "unknown",
        ApplyState::Unacknowledged => "unacknowledged",
        ApplyState::Acknowledged => "acknowledged",
        ApplyState::Error => "error",
    }
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
