//! What the loader holds of remote configuration, and the all-or-nothing apply.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use trust::TrustedState;
use trust::products::Payload;

use super::effective::{Effective, RemoteValue, Settings, resolve};
use super::live::LiveApply;
use super::proof::{Proof, ProofError, Verified, VerifiedConfig, Verifier};
use super::{AllowRules, RemoteConfigSettings};

/// Why a whole request was refused (nothing was looked at further, nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "remote configuration is not enabled on this loader: set remote_config.root_file in its configuration to the repository's pinned root.json"
    )]
    NoRoot,
    #[error("remote configuration is off on this loader: the pinned root {0}")]
    BadRoot(String),
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error("product {product:?} is not one the loader accepts: use CONNTRACK, LOCK_STATS or LOADER_LOG")]
    UnknownProduct { product: String },
    #[error("config {path} is of product {product}, which the request's products do not list")]
    ProductNotListed { path: String, product: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordState {
    Applied,
    Error,
}

/// A remote config the loader applied or refused.
#[derive(Clone, Debug)]
pub struct ConfigRecord {
    pub path: String,
    pub product: String,
    pub version: u64,
    pub sha256: String,
    pub state: RecordState,
    pub error: String,
    pub at_unix_ms: i64,
}

/// The answer to one request: a record per config it carried.
#[derive(Debug)]
pub struct Outcome {
    pub results: Vec<ConfigRecord>,
    pub targets_version: u64,
}

/// What `GetConfig` shows.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub enabled: bool,
    pub targets_version: u64,
    pub effective: Effective,
    pub records: Vec<ConfigRecord>,
}

struct Inner {
    verifier: Result<Verifier, ApplyError>,
    in_force: BTreeMap<String, Vec<(RemoteValue, ConfigRecord)>>,
    refused: BTreeMap<String, ConfigRecord>,
    effective: Effective,
}

/// The loader's remote-config state; requests are applied one at a time.
pub struct RemoteConfigs {
    baseline: Settings,
    allow: AllowRules,
    live: Arc<dyn LiveApply>,
    inner: tokio::sync::Mutex<Inner>,
}

impl RemoteConfigs {
    /// `baseline` is the file configuration; the pinned root is read now, once.
    pub fn new(settings: &RemoteConfigSettings, baseline: Settings, live: Arc<dyn LiveApply>) -> Self {
        let skew = i64::try_from(settings.clock_skew_secs).unwrap_or(i64::MAX);
        let verifier = match &settings.root_file {
            None => Err(ApplyError::NoRoot),
            Some(path) => std::fs::read(path)
                .map_err(|e| format!("{} cannot be read: {e}", path.display()))
                .and_then(|raw| {
                    TrustedState::from_pinned_root(&raw)
                        .map_err(|e| format!("{} is not trusted: {e}", path.display()))
                })
                .map(|pinned| Verifier::new(pinned, skew))
                .map_err(ApplyError::BadRoot),
        };
        if let Err(err) = &verifier {
            tracing::warn!(%err, "remote configuration is off");
        }
        let effective = resolve(&baseline, &BTreeMap::new(), &settings.allow)
            .unwrap_or_else(|_| Effective { settings: baseline.clone(), sources: BTreeMap::new() });
        let inner = Inner { verifier, in_force: BTreeMap::new(), refused: BTreeMap::new(), effective };
        Self { baseline, allow: settings.allow.clone(), live, inner: tokio::sync::Mutex::new(inner) }
    }

    pub async fn snapshot(&self) -> Snapshot {
        let inner = self.inner.lock().await;
        let records =
            inner.in_force.values().flatten().map(|(_, r)| r.clone()).chain(inner.refused.values().cloned());
        Snapshot {
            enabled: inner.verifier.is_ok(),
            targets_version: inner.verifier.as_ref().map_or(0, Verifier::floor),
            effective: inner.effective.clone(),
            records: records.collect(),
        }
    }

    /// Verifies `proof`, then sets each product of `products` to exactly its configs in
    /// the proof, or changes nothing. `Err` refuses the request as a whole; `Ok` carries a
    /// state per config (all applied, or all in error with the reason on the culprit).
    pub async fn apply(
        &self,
        products: &[String],
        proof: &Proof<'_>,
        now_unix: i64,
    ) -> Result<Outcome, ApplyError> {
        let mut inner = self.inner.lock().await;
        let verifier = inner.verifier.as_ref().map_err(|e| match e {
            ApplyError::BadRoot(reason) => ApplyError::BadRoot(reason.clone()),
            _ => ApplyError::NoRoot,
        })?;
        let verified = verifier.verify(proof, now_unix)?;
        check_products(products, &verified.configs)?;
        let now_ms = now_unix.saturating_mul(1000);
        let outcome = match self.change(&mut inner, products, &verified, now_ms).await {
            Ok(records) => {
                if let Ok(v) = inner.verifier.as_mut() {
                    v.raise_floor(&verified);
                }
                records
            }
            Err((culprit, reason)) => refuse_all(&mut inner, &verified.configs, &culprit, &reason, now_ms),
        };
        let targets_version = inner.verifier.as_ref().map_or(0, Verifier::floor);
        Ok(Outcome { results: outcome, targets_version })
    }

    /// Parses, resolves and applies live; `Err((path, reason))` leaves everything as it was.
    async fn change(
        &self,
        inner: &mut Inner,
        products: &[String],
        verified: &Verified,
        now_ms: i64,
    ) -> Result<Vec<ConfigRecord>, (String, String)> {
        let mut next = inner.in_force.clone();
        for product in products {
            next.remove(product);
        }
        for config in &verified.configs {
            let payload = Payload::parse(&config.product, &config.raw)
                .map_err(|e| (config.path.clone(), e.to_string()))?;
            let value = RemoteValue { path: config.path.clone(), version: config.version, payload };
            let record = record(config, RecordState::Applied, String::new(), now_ms);
            next.entry(config.product.clone()).or_default().push((value, record));
        }
        let values: BTreeMap<String, Vec<RemoteValue>> = next
            .iter()
            .map(|(p, v)| (p.clone(), v.iter().map(|(value, _)| value.clone()).collect()))
            .collect();
        let effective = resolve(&self.baseline, &values, &self.allow)?;
        let blame = verified.configs.first().map(|c| c.path.clone()).unwrap_or_default();
        self.apply_live(&inner.effective.settings, &effective.settings)
            .await
            .map_err(|reason| (blame, reason))?;
        for config in &verified.configs {
            inner.refused.remove(&config.path);
        }
        inner.in_force = next;
        inner.effective = effective;
        Ok(verified.configs.iter().map(|c| record(c, RecordState::Applied, String::new(), now_ms)).collect())
    }

    /// Applies what differs between `old` and `new`; on a failure, what was already
    /// changed is put back, so the loader runs `old` again.
    async fn apply_live(&self, old: &Settings, new: &Settings) -> Result<(), String> {
        if old.conntrack != new.conntrack {
            self.live.conntrack(&new.conntrack).await?;
        }
        if old.lockstats != new.lockstats
            && let Err(reason) = self.live.lockstats(&new.lockstats).await
        {
            self.undo_conntrack(old, new).await;
            return Err(reason);
        }
        if old.log_filter != new.log_filter
            && let Err(reason) = self.live.log_filter(&new.log_filter)
        {
            self.undo_conntrack(old, new).await;
            if old.lockstats != new.lockstats {
                let _ = self.live.lockstats(&old.lockstats).await;
            }
            return Err(reason);
        }
        Ok(())
    }

    async fn undo_conntrack(&self, old: &Settings, new: &Settings) {
        if old.conntrack != new.conntrack
            && let Err(err) = self.live.conntrack(&old.conntrack).await
        {
            tracing::error!(%err, "could not put the previous conntrack settings back");
        }
    }
}

fn check_products(products: &[String], configs: &[VerifiedConfig]) -> Result<(), ApplyError> {
    if let Some(unknown) = products.iter().find(|p| !Payload::is_known(p)) {
        return Err(ApplyError::UnknownProduct { product: unknown.clone() });
    }
    let listed: BTreeSet<&String> = products.iter().collect();
    match configs.iter().find(|c| !listed.contains(&c.product)) {
        Some(c) => Err(ApplyError::ProductNotListed { path: c.path.clone(), product: c.product.clone() }),
        None => Ok(()),
    }
}

fn record(config: &VerifiedConfig, state: RecordState, error: String, at_unix_ms: i64) -> ConfigRecord {
    ConfigRecord {
        path: config.path.clone(),
        product: config.product.clone(),
        version: config.version,
        sha256: config.sha256.clone(),
        state,
        error,
        at_unix_ms,
    }
}

/// All or nothing: the culprit gets the reason, the others say why they were not applied.
fn refuse_all(
    inner: &mut Inner,
    configs: &[VerifiedConfig],
    culprit: &str,
    reason: &str,
    now_ms: i64,
) -> Vec<ConfigRecord> {
    tracing::warn!(config = culprit, reason, "remote config refused; the previous configuration stays");
    let records: Vec<ConfigRecord> = configs
        .iter()
        .map(|c| {
            let error = match c.path == culprit {
                true => reason.to_string(),
                false => format!("not applied: {culprit} in the same request was refused ({reason})"),
            };
            record(c, RecordState::Error, error, now_ms)
        })
        .collect();
    for r in &records {
        inner.refused.insert(r.path.clone(), r.clone());
    }
    records
}
