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
    #[error(
        "product {product:?} is not one the loader accepts: use CONNTRACK, LOCK_STATS, LOADER_LOG or BTF"
    )]
    UnknownProduct { product: String },
    #[error("config {path} is of product {product}, which the request's products do not list")]
    ProductNotListed { path: String, product: String },
    #[error(
        "product BTF is applied alone (it may reload the conntracker): send it in a request of its own, not with {other}"
    )]
    BtfNotAlone { other: String },
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
        self.apply_live(&inner.effective.settings, &effective.settings).await.map_err(
            |(product, reason)| {
                // Blamed on a config of the product that failed (the others are innocent).
                let culprit =
                    verified.configs.iter().find(|c| c.product == product).or(verified.configs.first());
                (culprit.map(|c| c.path.clone()).unwrap_or_default(), reason)
            },
        )?;
        for config in &verified.configs {
            inner.refused.remove(&config.path);
        }
        inner.in_force = next;
        inner.effective = effective;
        Ok(verified.configs.iter().map(|c| record(c, RecordState::Applied, String::new(), now_ms)).collect())
    }

    /// Applies what differs between `old` and `new`; on a failure, what was already
    /// changed is put back, so the loader runs `old` again. `Err` names the product.
    async fn apply_live(&self, old: &Settings, new: &Settings) -> Result<(), (&'static str, String)> {
        use trust::products::{BTF, CONNTRACK, LOADER_LOG, LOCK_STATS};
        if old.btf != new.btf {
            // Alone in its request (check_products): nothing else to put back.
            return self.live.btf(&new.btf).await.map_err(|e| (BTF, e));
        }
        if old.conntrack != new.conntrack {
            self.live.conntrack(&new.conntrack).await.map_err(|e| (CONNTRACK, e))?;
        }
        if old.lockstats != new.lockstats
            && let Err(reason) = self.live.lockstats(&new.lockstats).await
        {
            self.undo_conntrack(old, new).await;
            return Err((LOCK_STATS, reason));
        }
        if old.log_filter != new.log_filter
            && let Err(reason) = self.live.log_filter(&new.log_filter)
        {
            self.undo_conntrack(old, new).await;
            if old.lockstats != new.lockstats
                && let Err(err) = self.live.lockstats(&old.lockstats).await
            {
                tracing::error!(%err, "could not put the previous lockstats settings back");
            }
            return Err((LOADER_LOG, reason));
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
    // A BTF change may reload the conntracker; undoing it when a later product fails
    // would reload it back, so it is never mixed with other products (the controller
    // pushes one product per request anyway).
    if products.iter().any(|p| p == trust::products::BTF)
        && let Some(other) = products.iter().find(|p| *p != trust::products::BTF)
    {
        return Err(ApplyError::BtfNotAlone { other: other.clone() });
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Mutex;

    use trust::test_repo::{File, Repo};

    use super::*;
    use crate::conntrack::ConntrackConfig;
    use crate::lockstats::LockStatsConfig;
    use crate::remote_config::Source;
    use crate::remote_config::btf::BtfSetting;
    use crate::remote_config::live::BoxFuture;

    /// Stands in for the running modules: a lock-statistics reload that fails on demand
    /// cannot be provoked in the real kernel from a unit test (the e2e tests apply for real).
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
        fail_lockstats: bool,
    }

    impl LiveApply for Recorder {
        fn conntrack<'a>(&'a self, c: &'a ConntrackConfig) -> BoxFuture<'a, Result<(), String>> {
            self.calls.lock().unwrap().push(format!("conntrack udpv6={}", c.udpv6_enabled));
            Box::pin(async { Ok(()) })
        }
        fn lockstats<'a>(&'a self, _: &'a LockStatsConfig) -> BoxFuture<'a, Result<(), String>> {
            self.calls.lock().unwrap().push("lockstats".into());
            let fail = self.fail_lockstats;
            Box::pin(async move { if fail { Err("the kernel said no".into()) } else { Ok(()) } })
        }
        fn log_filter(&self, f: &str) -> Result<(), String> {
            self.calls.lock().unwrap().push(format!("log {f}"));
            Ok(())
        }
        fn btf<'a>(&'a self, _: &'a BtfSetting) -> BoxFuture<'a, Result<(), String>> {
            self.calls.lock().unwrap().push("btf".into());
            Box::pin(async { Ok(()) })
        }
    }

    fn configs(repo: &Repo, recorder: Arc<Recorder>) -> RemoteConfigs {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root.json");
        std::fs::write(&root, &repo.root_v1).unwrap();
        let settings = RemoteConfigSettings { root_file: Some(root), ..Default::default() };
        let baseline = Settings {
            conntrack: ConntrackConfig::default(),
            lockstats: LockStatsConfig::default(),
            log_filter: "info".into(),
            btf: Default::default(),
        };
        RemoteConfigs::new(&settings, baseline, recorder)
    }

    const CT: &str = "2/CONNTRACK/a/config.json";
    const LS: &str = "2/LOCK_STATS/a/config.json";

    #[tokio::test]
    async fn a_failed_live_step_puts_back_what_was_changed_and_answers_error_for_all() {
        let repo = Repo::new();
        let recorder = Arc::new(Recorder { fail_lockstats: true, ..Default::default() });
        let rc = configs(&repo, recorder.clone());
        let (ct, ls) = (br#"{"udpv6_enabled": false}"#, br#"{"max_ranges": 100}"#);
        let t = repo
            .targets(1, &[File { path: CT, raw: ct, v: Some(1) }, File { path: LS, raw: ls, v: Some(1) }]);
        let proof = Proof { roots: vec![], targets: &t, configs: vec![(CT, ct), (LS, ls)] };
        let products = ["CONNTRACK".to_string(), "LOCK_STATS".to_string()];
        let outcome = rc.apply(&products, &proof, jiff::Timestamp::now().as_second()).await.unwrap();
        assert!(outcome.results.iter().all(|r| r.state == RecordState::Error), "{outcome:?}");
        let culprit = outcome.results.iter().find(|r| r.path == LS).unwrap();
        assert_eq!(culprit.error, "the kernel said no", "the failing product's config carries the reason");
        assert_eq!(
            *recorder.calls.lock().unwrap(),
            ["conntrack udpv6=false", "lockstats", "conntrack udpv6=true"],
            "the conntracker is put back"
        );
        let snapshot = rc.snapshot().await;
        assert_eq!(snapshot.targets_version, 0, "nothing applied: the floor stays");
        assert!(snapshot.effective.settings.conntrack.udpv6_enabled);
    }

    #[tokio::test]
    async fn an_unchanged_set_applies_nothing_live_and_an_empty_one_returns_to_the_file() {
        let repo = Repo::new();
        let recorder = Arc::new(Recorder::default());
        let rc = configs(&repo, recorder.clone());
        let now = jiff::Timestamp::now().as_second();
        let ct = br#"{"udpv6_enabled": false}"#;
        let t1 = repo.targets(1, &[File { path: CT, raw: ct, v: Some(1) }]);
        let products = ["CONNTRACK".to_string()];
        let proof = Proof { roots: vec![], targets: &t1, configs: vec![(CT, ct)] };
        rc.apply(&products, &proof, now).await.unwrap();
        rc.apply(&products, &proof, now).await.unwrap();
        let t2 = repo.targets(2, &[]);
        let removal = Proof { roots: vec![], targets: &t2, configs: vec![] };
        rc.apply(&products, &removal, now).await.unwrap();
        assert_eq!(*recorder.calls.lock().unwrap(), ["conntrack udpv6=false", "conntrack udpv6=true"]);
        let snapshot = rc.snapshot().await;
        assert!(snapshot.records.is_empty() && snapshot.targets_version == 2);
        assert_eq!(snapshot.effective.sources["conntrack.udpv6_enabled"].1, Source::File);
    }
}
