//! The local allow-list: what remote configuration may change on this node. It lives in
//! the loader's own file (`[remote_config.allow]`) and nothing remote can change it, so a
//! compromised service or controller is bounded by it even with valid signatures.
use serde::{Deserialize, Serialize};
use trust::products::{self, ConntrackPayload, LockStatsPayload};

use crate::lockstats::DEFAULT_MAX_RANGES;

/// Section `[remote_config.allow]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AllowRules {
    /// Products remote configuration may set.
    pub products: Vec<String>,
    /// The largest `conntrack.max_entries` a remote config may ask for.
    pub max_conntrack_entries: u32,
    /// The conntracker strategies a remote config may list.
    pub conntrack_strategies: Vec<String>,
    /// Whether a remote config may turn `lockstats.track_all_maps` on.
    pub track_all_maps: bool,
    /// The largest `lockstats.max_ranges` a remote config may ask for.
    pub max_lock_ranges: u32,
    /// The lowest `conntrack.storm_shed_above_per_sec` a remote config may set (0, never
    /// shedding, is always allowed): a lower one would shed the DESTROY subscription on
    /// ordinary traffic, leaving destroyed entries to the sweep.
    pub min_storm_shed_above_per_sec: u64,
}

impl Default for AllowRules {
    fn default() -> Self {
        Self {
            products: products::ALL.iter().map(|p| p.to_string()).collect(),
            max_conntrack_entries: 1 << 20,
            conntrack_strategies: ["core", "prebuilt", "netlink"].map(String::from).to_vec(),
            track_all_maps: false,
            max_lock_ranges: DEFAULT_MAX_RANGES,
            min_storm_shed_above_per_sec: 1_000,
        }
    }
}

impl AllowRules {
    pub fn product(&self, product: &str) -> Result<(), String> {
        if self.products.iter().any(|p| p == product) {
            return Ok(());
        }
        Err(format!(
            "product {product} is not allowed on this node (the loader's remote_config.allow.products is {:?}): an operator must add it there",
            self.products
        ))
    }

    pub fn conntrack(&self, payload: &ConntrackPayload) -> Result<(), String> {
        if let Some(max) = payload.max_entries
            && max > self.max_conntrack_entries
        {
            return Err(format!(
                "max_entries = {max} is above this node's cap of {} (remote_config.allow.max_conntrack_entries): publish at most the cap",
                self.max_conntrack_entries
            ));
        }
        if let Some(rate) = payload.storm_shed_above_per_sec
            && rate > 0
            && rate < self.min_storm_shed_above_per_sec
        {
            return Err(format!(
                "storm_shed_above_per_sec = {rate} is below this node's floor of {} \
                 (remote_config.allow.min_storm_shed_above_per_sec): publish at least the floor, or 0 to never shed",
                self.min_storm_shed_above_per_sec
            ));
        }
        for name in payload.strategies.iter().flatten() {
            if !self.conntrack_strategies.contains(name) {
                return Err(format!(
                    "strategy {name:?} is not allowed on this node (remote_config.allow.conntrack_strategies is {:?})",
                    self.conntrack_strategies
                ));
            }
        }
        Ok(())
    }

    pub fn lockstats(&self, payload: &LockStatsPayload) -> Result<(), String> {
        if payload.track_all_maps == Some(true) && !self.track_all_maps {
            return Err(
                "track_all_maps = true is not allowed on this node (remote_config.allow.track_all_maps = false)"
                    .to_string(),
            );
        }
        if let Some(max) = payload.max_ranges
            && max > self.max_lock_ranges
        {
            return Err(format!(
                "max_ranges = {max} is above this node's cap of {} (remote_config.allow.max_lock_ranges)",
                self.max_lock_ranges
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_lists_bound_what_a_payload_may_ask() {
        let rules = AllowRules { max_conntrack_entries: 4096, ..Default::default() };
        let big = ConntrackPayload { max_entries: Some(8192), ..Default::default() };
        let err = rules.conntrack(&big).expect_err("above the cap");
        assert!(err.contains("4096") && err.contains("max_conntrack_entries"), "{err}");
        assert!(rules.conntrack(&ConntrackPayload { max_entries: Some(4096), ..Default::default() }).is_ok());
        let shed = |rate| ConntrackPayload { storm_shed_above_per_sec: Some(rate), ..Default::default() };
        let err = rules.conntrack(&shed(10)).expect_err("below the floor");
        assert!(err.contains("1000") && err.contains("min_storm_shed_above_per_sec"), "{err}");
        assert!(rules.conntrack(&shed(0)).is_ok() && rules.conntrack(&shed(1_000)).is_ok());
        let odd = ConntrackPayload { strategies: Some(vec!["bogus".into()]), ..Default::default() };
        assert!(rules.conntrack(&odd).is_err());
        let all = LockStatsPayload { track_all_maps: Some(true), ..Default::default() };
        assert!(rules.lockstats(&all).is_err());
        let only = AllowRules { products: vec!["LOADER_LOG".into()], ..Default::default() };
        assert!(only.product("CONNTRACK").is_err() && only.product("LOADER_LOG").is_ok());
    }
}
