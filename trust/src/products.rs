//! The config products the loader accepts, and their payload schemas.
//!
//! A payload is a JSON object; every key is optional (an absent key leaves the loader's
//! baseline value) and an unknown key is refused by name. The controller checks a payload
//! with [`Payload::parse`] before it forwards it, and the loader checks it again before
//! its allow-list and its own value checks: one schema, two users.
//! `docs/remote-config.md` documents each product with an example.

use serde::{Deserialize, Serialize};

pub use crate::btf::{BTF, BtfCompression, BtfPayload, BtfPayloadError, kernel_key};

/// The conntracker's settings, applied through its reload.
pub const CONNTRACK: &str = "CONNTRACK";
/// The lock-contention collector's settings.
pub const LOCK_STATS: &str = "LOCK_STATS";
/// The loader's log filter, applied live.
pub const LOADER_LOG: &str = "LOADER_LOG";
/// Every product the loader accepts, in the order it applies them.
pub const ALL: [&str; 4] = [CONNTRACK, LOCK_STATS, LOADER_LOG, BTF];

/// `CONNTRACK`: the keys of the loader's `[conntrack]` section that may change remotely.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackPayload {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcpv6_enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udpv6_enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<u32>,
    /// Conntrackers to try, in order, among `core`, `prebuilt`, `netlink`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategies: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destroy_events: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep_interval_secs: Option<u64>,
    /// New connections per second above which the DESTROY subscription is shed; 0: never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm_shed_above_per_sec: Option<u64>,
    /// Seconds the rate must hold before a shed (and below half of it before a restore).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm_sustain_secs: Option<u32>,
}

/// `LOCK_STATS`: the keys of the loader's `[lockstats]` section that may change remotely.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockStatsPayload {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track_all_maps: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ranges: Option<u32>,
}

/// `LOADER_LOG`: the loader's log filter, in `RUST_LOG` syntax (e.g. `info,privileged_loader=debug`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderLogPayload {
    pub filter: String,
}

/// One product's payload, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    Conntrack(ConntrackPayload),
    LockStats(LockStatsPayload),
    LoaderLog(LoaderLogPayload),
    /// Checked for its schema only: the BTF inside is decoded by its user, within the
    /// user's size limit ([`BtfPayload::decode`]).
    Btf(BtfPayload),
}

/// A payload that does not fit its product's schema.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error(
        "product {product:?} is not one the loader accepts: publish CONNTRACK, LOCK_STATS, LOADER_LOG or BTF"
    )]
    UnknownProduct { product: String },
    #[error("{product} payload does not fit its schema (docs/remote-config.md): {reason}")]
    Schema { product: String, reason: String },
}

impl Payload {
    /// Parses `raw` as the payload of `product`; unknown keys are refused by name.
    pub fn parse(product: &str, raw: &[u8]) -> Result<Self, PayloadError> {
        let schema = |e: serde_json::Error| PayloadError::Schema {
            product: product.to_owned(),
            reason: e.to_string(),
        };
        match product {
            CONNTRACK => serde_json::from_slice(raw).map(Self::Conntrack).map_err(schema),
            LOCK_STATS => serde_json::from_slice(raw).map(Self::LockStats).map_err(schema),
            LOADER_LOG => serde_json::from_slice(raw).map(Self::LoaderLog).map_err(schema),
            BTF => serde_json::from_slice(raw).map(Self::Btf).map_err(schema),
            other => Err(PayloadError::UnknownProduct { product: other.to_owned() }),
        }
    }

    /// Whether `product` is one the loader accepts.
    pub fn is_known(product: &str) -> bool {
        ALL.contains(&product)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_each_product_and_leaves_absent_keys_unset() {
        let c = Payload::parse(CONNTRACK, br#"{"udpv6_enabled":false,"max_entries":4096}"#).unwrap();
        let expected =
            ConntrackPayload { udpv6_enabled: Some(false), max_entries: Some(4096), ..Default::default() };
        assert_eq!(c, Payload::Conntrack(expected));
        let l = Payload::parse(LOCK_STATS, br#"{"track_all_maps":true}"#).unwrap();
        assert_eq!(
            l,
            Payload::LockStats(LockStatsPayload { track_all_maps: Some(true), ..Default::default() })
        );
        let g = Payload::parse(LOADER_LOG, br#"{"filter":"debug"}"#).unwrap();
        assert_eq!(g, Payload::LoaderLog(LoaderLogPayload { filter: "debug".into() }));
    }

    #[test]
    fn the_storm_keys_are_part_of_the_conntrack_schema() {
        let c = Payload::parse(CONNTRACK, br#"{"storm_shed_above_per_sec":8000,"storm_sustain_secs":5}"#)
            .unwrap();
        let expected = ConntrackPayload {
            storm_shed_above_per_sec: Some(8000),
            storm_sustain_secs: Some(5),
            ..Default::default()
        };
        assert_eq!(c, Payload::Conntrack(expected));
        let err = Payload::parse(CONNTRACK, br#"{"storm_sustain_secs":-1}"#).unwrap_err();
        assert!(err.to_string().contains("storm_sustain_secs") || err.to_string().contains("-1"), "{err}");
    }

    #[test]
    fn unknown_keys_and_products_are_named() {
        let err = Payload::parse(CONNTRACK, br#"{"max_entrys":1}"#).unwrap_err();
        assert!(err.to_string().contains("max_entrys"), "{err}");
        let err = Payload::parse("LOADER_CONFIG", b"{}").unwrap_err();
        assert!(matches!(err, PayloadError::UnknownProduct { .. }), "{err}");
        assert!(Payload::parse(LOADER_LOG, b"{}").is_err(), "the filter is required");
        assert!(Payload::parse(CONNTRACK, b"not json").is_err());
    }
}
