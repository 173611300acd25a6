//! The conntracker chain: which implementation runs, in which order they are tried, and
//! why each one before the chosen one was skipped.
//!
//! It tries the implementations `conntrack.strategies` allows (`implementation.rs`), in
//! order. Every attempt lands in the status registry (module `conntrack`) as
//! `core: <why>`, `prebuilt: <why>`, ….
use tokio_util::sync::CancellationToken;

use super::{ConntrackConfig, RunningConntracker, netlink_tracker, prebuilt};
use crate::asset::AssetLoader;
use crate::status::{ModuleRecord, ModuleState, Registry};

/// Registry module the chain (and every strategy in it) records into.
pub use super::MODULE;
pub use super::implementation::{Strategies, StrategiesError, Strategy};

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("no conntracker could start; {}", reasons.join("; "))]
    Exhausted { reasons: Vec<String> },
}

/// Tries each configured strategy in order and returns the first that starts, recording
/// every attempt (with its reason when it failed) in the registry module `conntrack`.
pub async fn start(
    cfg: &ConntrackConfig,
    assets: &AssetLoader,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<RunningConntracker, ChainError> {
    let mut reasons = Vec::new();
    registry.update_module(MODULE, ModuleRecord::begin_attempt);
    for strategy in cfg.strategies.iter() {
        let started = std::time::Instant::now();
        // An earlier strategy's error is its attempt's reason; a warning the chosen one
        // records while starting (a degraded mode) must survive, so clear before, not after.
        registry.update_module(MODULE, |m| m.last_error = None);
        let result = match strategy {
            Strategy::Core => {
                super::start(cfg, assets, registry, shutdown.clone()).await.map_err(|e| e.to_string())
            }
            Strategy::Prebuilt => {
                prebuilt::start(cfg, assets, registry, shutdown.clone()).await.map_err(|e| e.to_string())
            }
            Strategy::Netlink => {
                netlink_tracker::start(cfg, registry, shutdown.clone()).await.map_err(|e| e.to_string())
            }
        };
        match result {
            Ok(running) => {
                let detail = running.tracker.strategy();
                registry.update_module(MODULE, |m| {
                    m.finish_attempt(strategy.name(), Ok(()));
                    m.state = ModuleState::Running;
                    m.strategy = detail;
                    m.load_time = started.elapsed();
                });
                return Ok(running);
            }
            Err(reason) => {
                tracing::warn!(%strategy, %reason, "conntracker strategy skipped");
                registry.update_module(MODULE, |m| m.finish_attempt(strategy.name(), Err(reason.clone())));
                reasons.push(format!("{strategy}: {reason}"));
            }
        }
    }
    Err(ChainError::Exhausted { reasons })
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
