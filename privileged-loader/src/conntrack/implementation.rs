//! The conntracker implementations (`core`, `prebuilt`, `netlink`) and the ordered list
//! of those allowed, `conntrack.strategies` (default `core, prebuilt, netlink`); a list of
//! one pins that implementation. Forms: TOML `strategies = ["prebuilt", "netlink"]`,
//! environment `LOADER_CONNTRACK__STRATEGIES=prebuilt,netlink`, flag
//! `--conntrack-strategies prebuilt` (the daemon's `run` command). `chain.rs` tries them.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
}
