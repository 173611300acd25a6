//! Precedence: the file configuration is the baseline, applied remote configs override it
//! (within the allow-list), and every value remembers where it came from. Pure: the live
//! apply is the caller's.
use std::collections::BTreeMap;

use serde::Serialize;
use trust::products::{BtfPayload, ConntrackPayload, LoaderLogPayload, LockStatsPayload, Payload};

use super::allow::AllowRules;
use super::btf::{BtfSetting, RemoteBtf};
use crate::conntrack::ConntrackConfig;
use crate::conntrack::chain::Strategies;
use crate::lockstats::LockStatsConfig;

/// The settings remote configuration can change, as the loader runs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub conntrack: ConntrackConfig,
    pub lockstats: LockStatsConfig,
    /// The log filter in `RUST_LOG` syntax.
    pub log_filter: String,
    /// The remote BTF in force, or why the product is ignored on this node.
    pub btf: BtfSetting,
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    File,
    Remote { path: String, version: u64 },
}

/// One verified, schema-checked remote config in force (or being applied).
#[derive(Clone, Debug)]
pub struct RemoteValue {
    pub path: String,
    pub version: u64,
    pub payload: Payload,
}

/// The settings with the source of every remote-changeable key (`conntrack.max_entries`…).
#[derive(Clone, Debug)]
pub struct Effective {
    pub settings: Settings,
    pub sources: BTreeMap<&'static str, (String, Source)>,
}

/// A config that cannot be applied, and why (a sentence a person can act on).
pub type Refusal = (String, String);

/// Overlays `remote` (per product, configs in path order, later paths win key by key) on
/// `baseline`. Every config is checked against `allow` and the loader's own value checks;
/// any refusal fails the whole computation (all or nothing).
pub fn resolve(
    baseline: &Settings,
    remote: &BTreeMap<String, Vec<RemoteValue>>,
    allow: &AllowRules,
) -> Result<Effective, Refusal> {
    let mut out = Overlay { settings: baseline.clone(), sources: BTreeMap::new() };
    out.record_file_sources();
    for (product, configs) in remote {
        for config in configs {
            let refuse = |reason: String| (config.path.clone(), reason);
            allow.product(product).map_err(refuse)?;
            out.apply(config, allow).map_err(refuse)?;
        }
    }
    out.settings.conntrack.validate().map_err(|e| last_conntrack_path(remote, e.to_string()))?;
    Ok(Effective { settings: out.settings, sources: out.sources })
}

/// A refusal of the combined conntrack settings is blamed on the newest conntrack config.
fn last_conntrack_path(remote: &BTreeMap<String, Vec<RemoteValue>>, reason: String) -> Refusal {
    let path = remote.get(trust::products::CONNTRACK).and_then(|c| c.last()).map(|c| c.path.clone());
    (path.unwrap_or_default(), reason)
}

struct Overlay {
    settings: Settings,
    sources: BTreeMap<&'static str, (String, Source)>,
}

/// Sets `$target` from `$value` when present and records its source under `$key`.
macro_rules! overlay {
    ($self:ident, $source:expr, $key:literal, $value:expr => $target:expr) => {
        if let Some(v) = $value {
            $target = v.clone();
            $self.sources.insert($key, (json(&v), $source.clone()));
        }
    };
}

impl Overlay {
    fn record_file_sources(&mut self) {
        let (c, l) = (&self.settings.conntrack, &self.settings.lockstats);
        let file: [(&'static str, String); 14] = [
            ("conntrack.enabled", json(&c.enabled)),
            ("conntrack.tcpv6_enabled", json(&c.tcpv6_enabled)),
            ("conntrack.udpv6_enabled", json(&c.udpv6_enabled)),
            ("conntrack.max_entries", json(&c.max_entries)),
            ("conntrack.strategies", json(&c.strategies)),
            ("conntrack.destroy_events", json(&c.destroy_events)),
            ("conntrack.sweep_interval_secs", json(&c.sweep_interval_secs)),
            ("conntrack.storm_shed_above_per_sec", json(&c.storm_shed_above_per_sec)),
            ("conntrack.storm_sustain_secs", json(&c.storm_sustain_secs)),
            ("lockstats.enabled", json(&l.enabled)),
            ("lockstats.track_all_maps", json(&l.track_all_maps)),
            ("lockstats.max_ranges", json(&l.max_ranges)),
            ("log.filter", json(&self.settings.log_filter)),
            ("btf.remote", btf_value(&self.settings.btf, None)),
        ];
        self.sources = file.into_iter().map(|(k, v)| (k, (v, Source::File))).collect();
    }

    fn apply(&mut self, config: &RemoteValue, allow: &AllowRules) -> Result<(), String> {
        let source = Source::Remote { path: config.path.clone(), version: config.version };
        match &config.payload {
            Payload::Conntrack(p) => self.conntrack(p, allow, &source),
            Payload::LockStats(p) => self.lockstats(p, allow, &source),
            Payload::LoaderLog(p) => self.log(p, &source),
            Payload::Btf(p) => self.btf(config, p, &source),
        }
    }

    /// One BTF config (this node runs one kernel; which one fits is checked when it is
    /// applied). Recorded even when ignored, so `loaderctl config` says it arrived;
    /// refused when the node turned the source off.
    fn btf(&mut self, config: &RemoteValue, p: &BtfPayload, source: &Source) -> Result<(), String> {
        if self.settings.btf.source_off {
            return Err(super::btf::refused_source_off(&config.path));
        }
        let remote = RemoteBtf { path: config.path.clone(), version: config.version, payload: p.clone() };
        self.sources.insert("btf.remote", (btf_value(&self.settings.btf, Some(&remote)), source.clone()));
        self.settings.btf.remote = Some(remote);
        Ok(())
    }

    fn conntrack(&mut self, p: &ConntrackPayload, allow: &AllowRules, source: &Source) -> Result<(), String> {
        allow.conntrack(p)?;
        let c = &mut self.settings.conntrack;
        let strategies: Option<Strategies> = match &p.strategies {
            Some(names) => Some(names.join(",").parse().map_err(|e| format!("{e}"))?),
            None => None,
        };
        overlay!(self, source, "conntrack.enabled", p.enabled => c.enabled);
        overlay!(self, source, "conntrack.tcpv6_enabled", p.tcpv6_enabled => c.tcpv6_enabled);
        overlay!(self, source, "conntrack.udpv6_enabled", p.udpv6_enabled => c.udpv6_enabled);
        overlay!(self, source, "conntrack.max_entries", p.max_entries => c.max_entries);
        overlay!(self, source, "conntrack.strategies", strategies => c.strategies);
        overlay!(self, source, "conntrack.destroy_events", p.destroy_events => c.destroy_events);
        overlay!(self, source, "conntrack.sweep_interval_secs", p.sweep_interval_secs => c.sweep_interval_secs);
        overlay!(self, source, "conntrack.storm_shed_above_per_sec", p.storm_shed_above_per_sec => c.storm_shed_above_per_sec);
        overlay!(self, source, "conntrack.storm_sustain_secs", p.storm_sustain_secs => c.storm_sustain_secs);
        Ok(())
    }

    fn lockstats(&mut self, p: &LockStatsPayload, allow: &AllowRules, source: &Source) -> Result<(), String> {
        allow.lockstats(p)?;
        let l = &mut self.settings.lockstats;
        overlay!(self, source, "lockstats.enabled", p.enabled => l.enabled);
        overlay!(self, source, "lockstats.track_all_maps", p.track_all_maps => l.track_all_maps);
        overlay!(self, source, "lockstats.max_ranges", p.max_ranges => l.max_ranges);
        Ok(())
    }

    fn log(&mut self, p: &LoaderLogPayload, source: &Source) -> Result<(), String> {
        tracing_subscriber::EnvFilter::try_new(&p.filter)
            .map_err(|e| format!("filter {:?} is not valid RUST_LOG syntax: {e}", p.filter))?;
        let filter = Some(&p.filter);
        overlay!(self, source, "log.filter", filter => self.settings.log_filter);
        Ok(())
    }
}

/// The `btf.remote` line: which kernel's BTF is in force, or why the product is ignored.
fn btf_value(setting: &BtfSetting, remote: Option<&RemoteBtf>) -> String {
    match (remote, &setting.ignored_because) {
        (None, Some(why)) => format!("not used: {why}"),
        (None, None) => "none".to_string(),
        (Some(r), Some(why)) => format!("{} ignored: {why}", r.payload.key()),
        (Some(r), None) => format!("{} ({} bytes encoded)", r.payload.key(), r.payload.data.len()),
    }
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use trust::products::CONNTRACK;

    fn baseline() -> Settings {
        Settings {
            conntrack: ConntrackConfig::default(),
            lockstats: LockStatsConfig::default(),
            log_filter: "info".into(),
            btf: BtfSetting::default(),
        }
    }

    fn conntrack(path: &str, version: u64, p: ConntrackPayload) -> RemoteValue {
        RemoteValue { path: path.into(), version, payload: Payload::Conntrack(p) }
    }

    #[test]
    fn remote_overrides_the_file_per_key_with_its_source() {
        let p = ConntrackPayload { udpv6_enabled: Some(false), ..Default::default() };
        let remote = BTreeMap::from([(CONNTRACK.to_string(), vec![conntrack("2/CONNTRACK/a/c", 3, p)])]);
        let e = resolve(&baseline(), &remote, &AllowRules::default()).expect("allowed");
        assert!(!e.settings.conntrack.udpv6_enabled);
        let remote_source = Source::Remote { path: "2/CONNTRACK/a/c".into(), version: 3 };
        assert_eq!(e.sources["conntrack.udpv6_enabled"], ("false".to_string(), remote_source));
        assert_eq!(e.sources["conntrack.max_entries"].1, Source::File);
    }

    #[test]
    fn no_remote_config_is_the_baseline() {
        let e = resolve(&baseline(), &BTreeMap::new(), &AllowRules::default()).expect("baseline");
        assert_eq!(e.settings, baseline());
        assert!(e.sources.values().all(|(_, s)| *s == Source::File));
    }

    #[test]
    fn one_refused_config_refuses_the_whole_set_naming_it() {
        let ok = conntrack(
            "2/CONNTRACK/a/c",
            1,
            ConntrackPayload { udpv6_enabled: Some(false), ..Default::default() },
        );
        let big = conntrack(
            "2/CONNTRACK/b/c",
            1,
            ConntrackPayload { max_entries: Some(u32::MAX), ..Default::default() },
        );
        let remote = BTreeMap::from([(CONNTRACK.to_string(), vec![ok, big])]);
        let (path, reason) = resolve(&baseline(), &remote, &AllowRules::default()).expect_err("cap");
        assert_eq!(path, "2/CONNTRACK/b/c");
        assert!(reason.contains("max_conntrack_entries"), "{reason}");
        let tiny =
            conntrack("2/CONNTRACK/c/c", 1, ConntrackPayload { max_entries: Some(1), ..Default::default() });
        let remote = BTreeMap::from([(CONNTRACK.to_string(), vec![tiny])]);
        assert!(resolve(&baseline(), &remote, &AllowRules::default()).is_err(), "the loader's own checks");
    }

    #[test]
    fn a_btf_config_is_refused_naming_the_setting_when_the_source_is_off() {
        let payload = BtfPayload::encode("6.18.0", "x86_64", None, &[0x9f, 0xeb], false).expect("encode");
        let path = "2/BTF/x86_64-6.18.0/btf.json";
        let btf = RemoteValue { path: path.into(), version: 1, payload: Payload::Btf(payload) };
        let remote = BTreeMap::from([(trust::products::BTF.to_string(), vec![btf])]);
        let mut off = baseline();
        off.btf = BtfSetting {
            ignored_because: Some(super::super::btf::SOURCE_OFF.into()),
            source_off: true,
            remote: None,
        };
        let (culprit, reason) = resolve(&off, &remote, &AllowRules::default()).expect_err("source off");
        assert_eq!(culprit, path);
        assert!(reason.contains("set btf.remote_config = true"), "{reason}");
        let on = resolve(&baseline(), &remote, &AllowRules::default()).expect("source on");
        assert_eq!(on.settings.btf.remote.map(|r| r.path), Some(path.to_string()));
    }

    #[test]
    fn a_bad_log_filter_is_refused() {
        let bad = RemoteValue {
            path: "2/LOADER_LOG/a/c".into(),
            version: 1,
            payload: Payload::LoaderLog(LoaderLogPayload { filter: "info,[[[".into() }),
        };
        let remote = BTreeMap::from([("LOADER_LOG".to_string(), vec![bad])]);
        assert!(resolve(&baseline(), &remote, &AllowRules::default()).is_err());
    }
}
