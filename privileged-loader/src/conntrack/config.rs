//! `[conntrack]`: the CO-RE conntracker's configuration section.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::hook::Strategy;
use super::{Entry, Protocol};

/// Settings of the conntracker. Every key has a default; `docs/conntrack.md` explains the
/// stale-entry policy the last three keys tune.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConntrackConfig {
    /// Load the conntracker at all.
    pub enabled: bool,
    /// Record IPv6 TCP entries (the `tcpv6_enabled` constant of the eBPF object).
    pub tcpv6_enabled: bool,
    /// Record IPv6 UDP entries (the `udpv6_enabled` constant).
    pub udpv6_enabled: bool,
    /// Size of the LRU map. Each connection takes two slots (one key per direction), so
    /// this holds `max_entries / 2` connections before the least recently used go.
    pub max_entries: u32,
    /// Bound on the ctnetlink dump of entries that existed before the loader started.
    pub initial_dump_timeout_secs: u64,
    /// Subscribe to ctnetlink DESTROY events, so that destroyed entries leave the map at
    /// once. Off: they leave by the sweep (two missed dumps) and the LRU, and the kernel
    /// neither tags every new entry with the event extension nor builds a message per
    /// destroyed one (measurable under connection storms: docs/benchmarks.md).
    pub destroy_events: bool,
    /// New conntrack entries per second (as the eBPF hook counts them) above which the
    /// DESTROY subscription is dropped, once that rate held for `storm_sustain_secs` (at
    /// once when the event queue overruns); it is taken again (with a resynchronisation
    /// sweep) after three times as long below half of it. 0: never.
    pub storm_shed_above_per_sec: u64,
    /// Seconds a rate must hold before the subscription is shed (restoring waits three
    /// times as long).
    pub storm_sustain_secs: u32,
    /// How often the sweep rechecks the map against a fresh conntrack dump. 0 disables it.
    pub sweep_interval_secs: u64,
    /// Entries of *other* network namespaces not seen for this long are dropped by the
    /// sweep (their destroy events are invisible to the loader). 0 disables that rule.
    pub stale_after_secs: u64,
    /// Attach strategies the CO-RE conntracker may use, among `fentry`, `kprobe`,
    /// `kprobe_confirm`, `tp_btf`, `raw_tracepoint`. They are always tried in that order; leaving one out
    /// skips it (e.g. to avoid the per-packet `tp_btf` hook, or to test a fallback).
    pub attach_strategies: Vec<Strategy>,
    /// Conntrackers to try, in order (`conntrack::chain`): `core`, `prebuilt`, `netlink`.
    /// One name pins that conntracker.
    pub strategies: super::implementation::Strategies,
    /// `[conntrack.offsetguess]`: bounds of offset guessing for the prebuilt conntracker.
    pub offsetguess: crate::offsetguess::OffsetGuessConfig,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tcpv6_enabled: true,
            udpv6_enabled: true,
            max_entries: 131_072,
            initial_dump_timeout_secs: 10,
            destroy_events: true,
            storm_shed_above_per_sec: DEFAULT_STORM_SHED_ABOVE_PER_SEC,
            storm_sustain_secs: 1,
            sweep_interval_secs: 60,
            stale_after_secs: 3600,
            attach_strategies: Strategy::ORDER.to_vec(),
            strategies: Default::default(),
            offsetguess: Default::default(),
        }
    }
}

/// Default `storm_shed_above_per_sec` (docs/conntrack.md, "Connection storms"): the
/// subscription cost ~0.2 of a core at 27,000 connections/s (~7 µs each), so at 5,000/s
/// it costs under 4 % of one core and is kept; a storm well above it is shed.
pub const DEFAULT_STORM_SHED_ABOVE_PER_SEC: u64 = 5_000;

/// A configuration value that cannot work, named by its key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConntrackConfigError {
    #[error("conntrack.max_entries = {0}: must be at least 2 (one slot per direction)")]
    MaxEntries(u32),
    #[error("conntrack.attach_strategies is empty: allow at least one attach strategy")]
    NoStrategy,
}

impl ConntrackConfig {
    /// Checks the values a typo could make unusable.
    pub fn validate(&self) -> Result<(), ConntrackConfigError> {
        if self.max_entries < 2 {
            return Err(ConntrackConfigError::MaxEntries(self.max_entries));
        }
        if self.attach_strategies.is_empty() {
            return Err(ConntrackConfigError::NoStrategy);
        }
        Ok(())
    }

    /// Whether an entry from ctnetlink (dump or sweep) belongs in the map: the same rule
    /// the eBPF program applies — NAT'd, and IPv6 only when enabled for its protocol.
    pub fn records(&self, entry: &Entry) -> bool {
        let o = &entry.original;
        let family_enabled = o.src.is_ipv4()
            || match o.protocol {
                Protocol::Tcp => self.tcpv6_enabled,
                Protocol::Udp => self.udpv6_enabled,
            };
        entry.is_nat() && family_enabled
    }

    pub fn initial_dump_timeout(&self) -> Duration {
        Duration::from_secs(self.initial_dump_timeout_secs)
    }

    /// `None` when the periodic sweep is disabled.
    pub fn sweep_interval(&self) -> Option<Duration> {
        (self.sweep_interval_secs > 0).then(|| Duration::from_secs(self.sweep_interval_secs))
    }

    /// `None` when the DESTROY subscription is never shed.
    pub fn storm_policy(&self) -> Option<super::storm::StormPolicy> {
        (self.storm_shed_above_per_sec > 0).then_some(super::storm::StormPolicy {
            shed_above_per_sec: self.storm_shed_above_per_sec,
            sustain: self.storm_sustain_secs,
        })
    }

    /// `None` when entries of other namespaces never expire by age (only by LRU).
    pub fn stale_after(&self) -> Option<Duration> {
        (self.stale_after_secs > 0).then(|| Duration::from_secs(self.stale_after_secs))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_ones() {
        let cfg = ConntrackConfig::default();
        assert!(cfg.enabled && cfg.tcpv6_enabled && cfg.udpv6_enabled);
        assert_eq!(cfg.max_entries, 131_072);
        assert_eq!(cfg.initial_dump_timeout(), Duration::from_secs(10));
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn zero_disables_sweep_and_age_rule() {
        let cfg = ConntrackConfig { sweep_interval_secs: 0, stale_after_secs: 0, ..Default::default() };
        assert_eq!(cfg.sweep_interval(), None);
        assert_eq!(cfg.stale_after(), None);
    }

    fn entry(src: &str, dst: &str, backend: &str, protocol: Protocol) -> Entry {
        let t = |src: &str, sp, dst: &str, dp| super::super::Tuple {
            src: src.parse().unwrap(),
            src_port: sp,
            dst: dst.parse().unwrap(),
            dst_port: dp,
            protocol,
        };
        Entry { original: t(src, 40000, dst, 80), reply: t(backend, 8080, src, 40000), netns: 1 }
    }

    #[test]
    fn records_only_nat_entries_of_enabled_families() {
        let cfg = ConntrackConfig { udpv6_enabled: false, ..Default::default() };
        assert!(cfg.records(&entry("10.0.0.1", "10.0.0.9", "127.0.0.1", Protocol::Udp)));
        assert!(cfg.records(&entry("fd99::1", "fd99::1", "::1", Protocol::Tcp)));
        assert!(!cfg.records(&entry("fd99::1", "fd99::1", "::1", Protocol::Udp)));
        let mut plain = entry("10.0.0.1", "10.0.0.9", "10.0.0.9", Protocol::Tcp);
        plain.reply.src_port = 80;
        assert!(!cfg.records(&plain), "a reply that is the original turned around is not NAT");
    }

    #[test]
    fn strategies_are_named_as_in_the_docs_and_cannot_all_be_removed() {
        let names: Vec<String> = Strategy::ORDER
            .iter()
            .map(|s| serde_json::to_value(s).unwrap().as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["fentry", "kprobe", "kprobe_confirm", "tp_btf", "raw_tracepoint"]);
        let cfg = ConntrackConfig { attach_strategies: Vec::new(), ..Default::default() };
        assert_eq!(cfg.validate(), Err(ConntrackConfigError::NoStrategy));
    }

    #[test]
    fn a_map_too_small_for_one_connection_is_refused() {
        let cfg = ConntrackConfig { max_entries: 1, ..Default::default() };
        assert_eq!(cfg.validate(), Err(ConntrackConfigError::MaxEntries(1)));
    }
}
