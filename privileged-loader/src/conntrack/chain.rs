//! The conntracker chain: which implementation runs, in which order they are tried, and
//! why each one before the chosen one was skipped.
//!
//! It tries the implementations `conntrack.strategies` allows (`implementation.rs`), in
//! order. Every attempt lands in the status registry (module `conntrack`) as
//! `core: <why>`, `prebuilt: <why>`, ….
use std::fmt;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::config::ConntrackConfigError;
use super::netlink_tracker::{self, NetlinkTrackerError};
use super::prebuilt::{self, PrebuiltError, PrebuiltSettings};
use super::serve::serve_loaded;
use super::storm::SHED_NOTE;
use super::{ConntrackConfig, ConntrackError, RunningConntracker, core};
use crate::asset::{AssetError, AssetLoader};
use crate::status::{HookAttempt, ModuleRecord, ModuleState, Registry};

/// Registry module the chain (and every strategy in it) records into.
pub use super::MODULE;
pub use super::implementation::{Strategies, StrategiesError, Strategy};

/// Why one implementation did not start, typed until the chain writes it to the status.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Core(#[from] AssetError),
    #[error(transparent)]
    Prebuilt(#[from] PrebuiltError),
    #[error(transparent)]
    Netlink(#[from] NetlinkTrackerError),
    /// The object loaded and attached, but its map could not be served.
    #[error(transparent)]
    Serve(#[from] ConntrackError),
}

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("the conntracker is disabled by configuration (conntrack.enabled = false)")]
    Disabled,
    #[error(transparent)]
    Config(#[from] ConntrackConfigError),
    #[error("no conntracker could start; {}", Failures(.failures))]
    Exhausted { failures: Vec<(Strategy, StartError)> },
}

/// `core: <why>; prebuilt: <why>; …`
struct Failures<'a>(&'a [(Strategy, StartError)]);

impl fmt::Display for Failures<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (strategy, error)) in self.0.iter().enumerate() {
            let separator = if i == 0 { "" } else { "; " };
            write!(f, "{separator}{strategy}: {error}")?;
        }
        Ok(())
    }
}

/// The chain's writer for what a running instance learns after it started: its tasks
/// (the DESTROY listener, the netlink follower) get this, never the registry, so the
/// module's status record keeps one writer and every runtime note has one shape.
#[derive(Clone)]
pub struct RunningStatus {
    registry: Registry,
}

impl RunningStatus {
    /// The writer of the conntrack module's record in `registry`.
    pub fn new(registry: &Registry) -> Self {
        Self { registry: registry.clone() }
    }

    /// The DESTROY subscription was shed in a connection storm: `note` says so until
    /// [`RunningStatus::storm_passed`].
    pub(crate) fn storm_shed(&self, note: String) {
        self.registry.update_module(MODULE, |m| {
            m.notes.retain(|n| !n.starts_with(SHED_NOTE));
            m.notes.push(note);
        });
    }

    /// The subscription is back: the shed note goes.
    pub(crate) fn storm_passed(&self) {
        self.registry.update_module(MODULE, |m| m.notes.retain(|n| !n.starts_with(SHED_NOTE)));
    }

    /// Which namespaces are covered changed: the note starting with `prefix` becomes
    /// `note` ([`record_coverage`]).
    pub(crate) fn coverage(&self, prefix: &str, note: String) {
        record_coverage(&self.registry, prefix, note);
    }

    /// Something the running instance had to recover from (events lost, a failed
    /// resync): the module's last error, while it keeps running.
    pub(crate) fn warn(&self, message: String) {
        self.registry.update_module(MODULE, |m| m.last_error = Some(message));
    }
}

/// Tries each configured strategy in order and returns the first that starts. The chain
/// is the one writer of the module's status record while it starts: every attempt (its
/// hooks, and its reason when it failed), the state, the implementation in use, its notes
/// and a degraded mode's warning.
pub async fn start(
    cfg: &ConntrackConfig,
    assets: &AssetLoader,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<RunningConntracker, ChainError> {
    registry.update_module(MODULE, ModuleRecord::begin_attempt);
    if !cfg.enabled {
        registry.update_module(MODULE, |m| m.state = ModuleState::Disabled);
        return Err(ChainError::Disabled);
    }
    if let Err(e) = cfg.validate() {
        record_failure(registry, &e.to_string());
        return Err(e.into());
    }
    let mut failures = Vec::new();
    let status = RunningStatus::new(registry);
    for strategy in cfg.strategies.iter() {
        let started = Instant::now();
        let mut hooks = Vec::new();
        let result = start_one(strategy, cfg, assets, &status, &mut hooks, shutdown.clone()).await;
        record_attempt(registry, strategy, hooks, &result, started.elapsed());
        match result {
            Ok(running) => return Ok(running),
            Err(e) => {
                tracing::warn!(%strategy, reason = %e, "conntracker strategy skipped");
                failures.push((strategy, e));
            }
        }
    }
    let error = ChainError::Exhausted { failures };
    record_failure(registry, &error.to_string());
    Err(error)
}

/// The CO-RE conntracker alone, without fallback: the chain pinned to `core`.
pub async fn start_core(
    cfg: &ConntrackConfig,
    assets: &AssetLoader,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<RunningConntracker, ChainError> {
    let pinned = ConntrackConfig { strategies: Strategies::pinned(Strategy::Core), ..cfg.clone() };
    start(&pinned, assets, registry, shutdown).await
}

/// Loads, attaches and serves one implementation; appends the hooks it tried to `hooks`.
async fn start_one(
    strategy: Strategy,
    cfg: &ConntrackConfig,
    assets: &AssetLoader,
    status: &RunningStatus,
    hooks: &mut Vec<HookAttempt>,
    shutdown: CancellationToken,
) -> Result<RunningConntracker, StartError> {
    match strategy {
        Strategy::Core => {
            let (ebpf, hook) = core::load(cfg, assets, hooks)?;
            Ok(serve_loaded(ebpf, hook, cfg, status, shutdown).await?)
        }
        Strategy::Prebuilt => {
            let loaded = prebuilt::load(&PrebuiltSettings::from(cfg), assets, hooks)?;
            Ok(serve_loaded(loaded.ebpf, loaded.hook, cfg, status, shutdown).await?)
        }
        Strategy::Netlink => Ok(netlink_tracker::start(cfg, status, shutdown).await?),
    }
}

/// Writes one attempt: its hooks, its verdict, and for the one that started, the state,
/// the implementation, the load time, its notes and its degraded mode's warning.
fn record_attempt(
    registry: &Registry,
    strategy: Strategy,
    hooks: Vec<HookAttempt>,
    result: &Result<RunningConntracker, StartError>,
    took: Duration,
) {
    registry.update_module(MODULE, |m| {
        for hook in hooks {
            m.record_hook(strategy.name(), hook);
        }
        match result {
            Ok(running) => {
                m.finish_attempt(strategy.name(), Ok(()));
                m.state = ModuleState::Running;
                m.strategy = running.tracker.strategy();
                m.load_time = took;
                m.notes.extend(running.notes.iter().cloned());
                m.last_error = running.degraded.clone();
            }
            Err(e) => m.finish_attempt(strategy.name(), Err(e.to_string())),
        }
    });
}

/// Records the notes and degraded-mode warning of a running instance whose tasks were
/// restarted in place (same object, new settings).
pub fn record_serving(registry: &Registry, running: &RunningConntracker) {
    registry.update_module(MODULE, |m| {
        for note in &running.notes {
            // A coverage note replaces the predecessor's; any other is added once.
            let kind = COVERAGE_NOTES.iter().find(|prefix| note.starts_with(*prefix));
            let old = m.notes.iter_mut().find(|n| *n == note || kind.is_some_and(|p| n.starts_with(p)));
            match old {
                Some(old) => *old = note.clone(),
                None => m.notes.push(note.clone()),
            }
        }
        m.last_error = running.degraded.clone();
    });
}

/// Prefixes of the notes that say which namespaces are covered (one of each at a time).
const COVERAGE_NOTES: [&str; 2] = [super::reach::NOTE_PREFIX, super::ctnetlink::EVENTS_NOTE_PREFIX];

/// Replaces the module's note that starts with `prefix` by `note` (which namespaces are
/// covered changes while it runs): the one writer of those notes after start.
pub fn record_coverage(registry: &Registry, prefix: &str, note: String) {
    registry.update_module(MODULE, |m| match m.notes.iter_mut().find(|n| n.starts_with(prefix)) {
        Some(old) => *old = note,
        None => m.notes.push(note),
    });
}

fn record_failure(registry: &Registry, reason: &str) {
    registry.update_module(MODULE, |m| {
        m.state = ModuleState::Failed;
        m.last_error = Some(reason.to_string());
    });
}

/// The attempts of the chain itself (`core`, `prebuilt`, `netlink`), as "name: reason"
/// lines, from a registry snapshot: what `GetStatus` shows as the fallback story.
pub fn skipped_reasons(registry: &Registry) -> Vec<String> {
    registry
        .module(MODULE)
        .into_iter()
        .flat_map(|m| m.attempts)
        .filter(|a| !a.ok)
        .map(|a| format!("{}: {}", a.implementation, a.reason))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]
mod tests {
    use super::*;
    use crate::status::HookAttempt;

    #[test]
    #[allow(clippy::result_large_err, reason = "figment::Jail fixes the closure's error type")]
    fn the_environment_form_reaches_the_conntrack_section() {
        use figment::providers::{Env, Serialized};
        figment::Jail::expect_with(|jail| {
            jail.set_env("LOADER_CONNTRACK__STRATEGIES", "prebuilt,netlink");
            jail.set_env("LOADER_CONNTRACK__OFFSETGUESS__THRESHOLD", "8");
            #[derive(serde::Deserialize)]
            struct Doc {
                conntrack: ConntrackConfig,
            }
            let doc: Doc = figment::Figment::from(Serialized::defaults(serde_json::json!({"conntrack": {}})))
                .merge(Env::prefixed("LOADER_").split("__"))
                .extract()
                .expect("valid environment");
            let want = Strategies::new(vec![Strategy::Prebuilt, Strategy::Netlink]).expect("valid list");
            assert_eq!(doc.conntrack.strategies, want);
            assert_eq!(doc.conntrack.offsetguess.threshold, 8);
            Ok(())
        });
    }

    #[test]
    fn skipped_reasons_lists_only_the_chains_failures() {
        let registry = Registry::default();
        registry.update_module(MODULE, |m| {
            m.record_hook("core", HookAttempt::failed("fentry", "EPERM"));
            m.finish_attempt("core", Err("BTF not found".into()));
            m.finish_attempt("prebuilt", Ok(()));
        });
        assert_eq!(skipped_reasons(&registry), vec!["core: BTF not found".to_string()]);
    }
}
