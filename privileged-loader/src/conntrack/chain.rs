//! The conntracker chain: which implementation runs, in which order they are tried, and
//! why each one before the chosen one was skipped.
//!
//! `conntrack.strategies` is an ordered list of allowed strategies (default `core,
//! prebuilt, netlink`); a list of one pins that strategy. Forms: TOML
//! `strategies = ["prebuilt", "netlink"]`, environment
//! `LOADER_CONNTRACK__STRATEGIES=prebuilt,netlink`, flag
//! `--conntrack-strategies prebuilt` (the daemon's `run` command). Every attempt lands in
//! the status registry (module `conntrack`) as `core: <why>`, `prebuilt: <why>`, ….
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio_util::sync::CancellationToken;

use super::{ConntrackConfig, RunningConntracker, netlink_tracker, prebuilt};
use crate::asset::AssetLoader;
use crate::status::{ModuleRecord, ModuleState, Registry, StrategyAttempt};

/// Registry module the chain (and every strategy in it) records into.
pub use super::core::MODULE;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// The CO-RE eBPF conntracker (needs kernel BTF).
    Core,
    /// The prebuilt eBPF conntracker with guessed offsets (no BTF).
    Prebuilt,
    /// ctnetlink dump and events, no eBPF at all.
    Netlink,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Core => "core",
            Strategy::Prebuilt => "prebuilt",
            Strategy::Netlink => "netlink",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = StrategiesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "core" => Ok(Strategy::Core),
            "prebuilt" => Ok(Strategy::Prebuilt),
            "netlink" => Ok(Strategy::Netlink),
            other => Err(StrategiesError::Unknown(other.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StrategiesError {
    #[error("conntrack.strategies: unknown strategy {0:?}; use core, prebuilt or netlink")]
    Unknown(String),
    #[error("conntrack.strategies: {0} is listed twice")]
    Duplicate(&'static str),
    #[error(
        "conntrack.strategies is empty; list at least one of core, prebuilt, netlink (or set conntrack.enabled = false)"
    )]
    Empty,
}

/// The ordered, duplicate-free, non-empty list of strategies to try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Strategies(Vec<Strategy>);

impl Default for Strategies {
    fn default() -> Self {
        Strategies(vec![Strategy::Core, Strategy::Prebuilt, Strategy::Netlink])
    }
}

impl Strategies {
    pub fn new(list: Vec<Strategy>) -> Result<Self, StrategiesError> {
        if list.is_empty() {
            return Err(StrategiesError::Empty);
        }
        for (i, s) in list.iter().enumerate() {
            if list[..i].contains(s) {
                return Err(StrategiesError::Duplicate(s.name()));
            }
        }
        Ok(Strategies(list))
    }

    /// Exactly one strategy: no fallback.
    pub fn pinned(strategy: Strategy) -> Self {
        Strategies(vec![strategy])
    }

    pub fn iter(&self) -> impl Iterator<Item = Strategy> + '_ {
        self.0.iter().copied()
    }
}

impl FromStr for Strategies {
    type Err = StrategiesError;

    /// `"prebuilt,netlink"`, and the bracketed `"[prebuilt, netlink]"` too.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let inner = s.trim().trim_start_matches('[').trim_end_matches(']');
        let names = inner.split(',').map(|n| n.trim().trim_matches('"')).filter(|n| !n.is_empty());
        Strategies::new(names.map(Strategy::from_str).collect::<Result<_, _>>()?)
    }
}

impl Serialize for Strategies {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|s| s.name()))
    }
}

impl<'de> Deserialize<'de> for Strategies {
    /// A list of names, or one comma-separated string (the environment form).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            List(Vec<String>),
            Text(String),
        }
        let text = match Form::deserialize(deserializer)? {
            Form::List(names) => names.join(","),
            Form::Text(text) => text,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

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
                // The CO-RE start resets the module record: keep what the chain recorded.
                let earlier = registry.modules().into_iter().find(|m| m.name == MODULE).map(|m| m.attempts);
                let result =
                    super::start(cfg, assets, registry, shutdown.clone()).await.map_err(|e| e.to_string());
                registry.update_module(MODULE, |m| {
                    let mut attempts = earlier.unwrap_or_default();
                    attempts.append(&mut m.attempts);
                    m.attempts = attempts;
                });
                result
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
                    m.attempts.push(StrategyAttempt::ok(strategy.name()));
                    m.state = ModuleState::Running;
                    m.strategy = detail;
                    m.load_time = started.elapsed();
                });
                return Ok(running);
            }
            Err(reason) => {
                tracing::warn!(%strategy, %reason, "conntracker strategy skipped");
                registry.update_module(MODULE, |m| {
                    m.attempts.push(StrategyAttempt::failed(strategy.name(), &reason))
                });
                reasons.push(format!("{strategy}: {reason}"));
            }
        }
    }
    Err(ChainError::Exhausted { reasons })
}

/// The attempts of the chain itself (`core`, `prebuilt`, `netlink`), as "name: reason"
/// lines, from a registry snapshot: what `GetStatus` shows as the fallback story.
pub fn skipped_reasons(registry: &Registry) -> Vec<String> {
    let names = [Strategy::Core, Strategy::Prebuilt, Strategy::Netlink].map(Strategy::name);
    registry
        .modules()
        .into_iter()
        .filter(|m| m.name == MODULE)
        .flat_map(|m| m.attempts)
        .filter(|a| !a.ok && names.contains(&a.strategy.as_str()))
        .map(|a| format!("{}: {}", a.strategy, a.reason))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]
mod tests {
    use super::*;

    #[test]
    fn the_default_order_is_core_prebuilt_netlink() {
        let order: Vec<_> = Strategies::default().iter().collect();
        assert_eq!(order, vec![Strategy::Core, Strategy::Prebuilt, Strategy::Netlink]);
    }

    #[test]
    fn parses_the_environment_and_flag_forms() {
        let want = Strategies::new(vec![Strategy::Prebuilt, Strategy::Netlink]).unwrap();
        assert_eq!("prebuilt,netlink".parse::<Strategies>(), Ok(want.clone()));
        assert_eq!("[prebuilt, netlink]".parse::<Strategies>(), Ok(want.clone()));
        assert_eq!(" PREBUILT , netlink ".parse::<Strategies>(), Ok(want));
        assert_eq!("netlink".parse::<Strategies>(), Ok(Strategies::pinned(Strategy::Netlink)));
    }

    #[test]
    fn refuses_unknown_duplicate_and_empty_lists_by_name() {
        assert_eq!("core,ebpf".parse::<Strategies>(), Err(StrategiesError::Unknown("ebpf".into())));
        assert_eq!("core,core".parse::<Strategies>(), Err(StrategiesError::Duplicate("core")));
        assert_eq!("".parse::<Strategies>(), Err(StrategiesError::Empty));
    }

    #[test]
    fn deserializes_a_list_or_a_string_and_serializes_a_list() {
        let from_list: Strategies = serde_json::from_str(r#"["netlink","core"]"#).unwrap();
        let from_text: Strategies = serde_json::from_str(r#""netlink,core""#).unwrap();
        assert_eq!(from_list, from_text);
        assert_eq!(serde_json::to_string(&from_list).unwrap(), r#"["netlink","core"]"#);
        let err = serde_json::from_str::<Strategies>(r#"["bpf"]"#).unwrap_err();
        assert!(err.to_string().contains("unknown strategy \"bpf\""), "{err}");
    }

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
            m.attempts.push(StrategyAttempt::failed("fentry", "EPERM")); // a hook inside core
            m.attempts.push(StrategyAttempt::failed("core", "BTF not found"));
            m.attempts.push(StrategyAttempt::ok("prebuilt"));
        });
        assert_eq!(skipped_reasons(&registry), vec!["core: BTF not found".to_string()]);
    }
}
