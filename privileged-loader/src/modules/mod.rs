//! Module lifecycle: start, stop and reload the conntracker and the lock-statistics
//! collector while the API serves.
//!
//! [`Modules`] is the one handle to the running modules: the API reads the current
//! instances through it, and a configuration change (a controller push, an operator)
//! goes through [`Modules::reload_conntrack`] / [`Modules::reload_lockstats`]. A change
//! that needs a new eBPF object is made before the old one is broken: the new object is
//! loaded and attached, the translations the old one knows are handed to it, the API is
//! switched over, and only then is the old one detached. A change that needs no new
//! object is applied to the running one. A reload that fails leaves the running instance
//! as it was and lists the failed attempt, with its reason, in the module's status.
//!
//! Netlink sockets belong to the network namespace of the thread that opens them: run
//! the lifecycle calls on a thread of the namespace whose conntrack table is followed.
mod change;
mod conntrack;
mod lockstats;

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::asset::AssetLoader;
use crate::conntrack::handover::HandedOver;
use crate::conntrack::{ConntrackConfig, Conntracker};
use crate::lockstats::{LockStatsCollector, LockStatsConfig};
use crate::status::{FailedReload, ModuleRecord, ModuleState, Registry, now_unix_ms};

pub use change::changed_keys;

/// What a successful start, stop or reload did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// `conntrack` or `lockstats`.
    pub module: &'static str,
    pub action: ReloadAction,
    /// Top-level keys of the section that changed (every key at a first start).
    pub changed: Vec<String>,
    /// The generation now running (0 when stopped).
    pub generation: u64,
    /// The implementation now running, e.g. `core/tp_btf` (empty when stopped).
    pub implementation: String,
    /// Translations handed from the replaced conntracker to its successor.
    pub handed_over: Option<HandedOver>,
    /// Wall time of the whole operation.
    pub took: Duration,
    /// Anything an operator should know that did not fail the reload.
    pub notes: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReloadAction {
    /// Nothing ran; an instance was started.
    Started,
    /// The configuration is the running one: nothing was done.
    Unchanged,
    /// The running object was kept; its tasks were restarted with the new settings.
    InPlace,
    /// A new object replaced the running one (make-before-break).
    Replaced,
    /// The module was stopped (by `stop_*`, or by `enabled = false`).
    Stopped,
}

impl ReloadAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadAction::Started => "started",
            ReloadAction::Unchanged => "unchanged",
            ReloadAction::InPlace => "in place",
            ReloadAction::Replaced => "replaced",
            ReloadAction::Stopped => "stopped",
        }
    }
}

/// Why a start or reload did not take effect. The running instance, if any, is untouched.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{module}: invalid configuration, nothing changed: {reason}")]
    InvalidConfig { module: &'static str, reason: String },
    #[error(
        "{module}: {needed_for} needs {capability}, which this loader dropped at start-up; \
         the running instance is unchanged (keep it in privileges.keep, or restart the loader \
         with the new configuration)"
    )]
    MissingCapability { module: &'static str, capability: &'static str, needed_for: &'static str },
    #[error("conntrack: the new conntracker did not start, the previous one keeps serving: {0}")]
    Conntrack(#[from] crate::conntrack::chain::ChainError),
    #[error("conntrack: the new conntracker was stopped, the previous one keeps serving: {reason}")]
    Handover { reason: String },
    #[error("lockstats: the new collector did not start, the previous one keeps running: {reason}")]
    LockStats { reason: String },
}

/// The running modules, shared by the API and whoever changes the configuration.
#[derive(Clone)]
pub struct Modules {
    inner: Arc<Inner>,
}

struct Inner {
    /// Replaced when a remote BTF is adopted (`adopt_btf`); a reload uses the one
    /// current when it starts.
    assets: RwLock<Arc<AssetLoader>>,
    registry: Registry,
    /// Cancelled at loader shutdown: every instance's tasks stop with it.
    shutdown: CancellationToken,
    /// What the API reads; swapped in one step at a reload.
    published: RwLock<Published>,
    /// One lifecycle operation per module at a time.
    conntrack: tokio::sync::Mutex<Option<conntrack::Instance>>,
    lockstats: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Published {
    conntrack: Option<Arc<dyn Conntracker>>,
    conntrack_config: Option<ConntrackConfig>,
    lockstats: Option<Arc<LockStatsCollector>>,
    lockstats_config: Option<LockStatsConfig>,
}

impl Modules {
    /// No module runs yet; start them with [`Self::start_conntrack`] and
    /// [`Self::start_lockstats`] (in that order: the collector watches the conntracker's map).
    pub fn new(assets: Arc<AssetLoader>, registry: Registry, shutdown: CancellationToken) -> Self {
        let inner = Inner {
            assets: RwLock::new(assets),
            registry,
            shutdown,
            published: RwLock::default(),
            conntrack: tokio::sync::Mutex::new(None),
            lockstats: tokio::sync::Mutex::new(()),
        };
        Self { inner: Arc::new(inner) }
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The asset loader (and with it the BTF) new eBPF objects are loaded with.
    pub fn assets(&self) -> Arc<AssetLoader> {
        Arc::clone(&self.inner.assets.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Makes `btf` the BTF of every later load. A conntracker that runs a fallback
    /// (prebuilt, netlink) although its strategies list `core` is first replaced by the
    /// CO-RE one loaded with `btf` (make-before-break, translations handed over); if
    /// that fails, nothing changes and the error says why. Returns what was done.
    pub async fn adopt_btf(&self, btf: crate::btf::FoundBtf) -> Result<String, ReloadError> {
        let described = btf.describe();
        let assets = Arc::new(self.assets().with_btf(btf));
        let mut slot = self.inner.conntrack.lock().await;
        let report = conntrack::onto_core(self, &mut slot, &assets).await?;
        *self.inner.assets.write().unwrap_or_else(|p| p.into_inner()) = assets;
        drop(slot);
        let Some(report) = report else {
            return Ok(format!("{described} is used by later loads; the conntracker needed no reload"));
        };
        let _one_at_a_time = self.inner.lockstats.lock().await;
        if let Some(Err(e)) = lockstats::replan(self) {
            tracing::warn!(error = %e, "the lock-statistics collector still watches the replaced conntracker's map");
        }
        Ok(format!("{described}: conntracker reloaded onto {}", report.implementation))
    }

    /// The running conntracker, if any.
    pub fn conntracker(&self) -> Option<Arc<dyn Conntracker>> {
        self.read().conntrack.clone()
    }

    /// The running lock-statistics collector, if any.
    pub fn lockstats(&self) -> Option<Arc<LockStatsCollector>> {
        self.read().lockstats.clone()
    }

    /// The conntracker's effective configuration: the last one that took effect.
    pub fn conntrack_config(&self) -> Option<ConntrackConfig> {
        self.read().conntrack_config.clone()
    }

    /// The collector's effective configuration: the last one that took effect.
    pub fn lockstats_config(&self) -> Option<LockStatsConfig> {
        self.read().lockstats_config.clone()
    }

    /// Starts the conntracker (a reload when one runs).
    pub async fn start_conntrack(&self, cfg: ConntrackConfig) -> Result<ReloadReport, ReloadError> {
        self.reload_conntrack(cfg).await
    }

    /// Applies `cfg` to the conntracker: starts, stops (`enabled = false`), changes it in
    /// place or replaces it, whichever the change needs.
    pub async fn reload_conntrack(&self, cfg: ConntrackConfig) -> Result<ReloadReport, ReloadError> {
        let mut slot = self.inner.conntrack.lock().await;
        let mut report = conntrack::apply(self, &mut slot, cfg).await?;
        drop(slot);
        if report.action == ReloadAction::Replaced {
            let _one_at_a_time = self.inner.lockstats.lock().await;
            if let Some(Err(e)) = lockstats::replan(self) {
                report.notes.push(format!(
                    "the lock-statistics collector still watches (and holds) the replaced conntracker's map: {e}"
                ));
            }
        }
        Ok(report)
    }

    /// Stops the conntracker: programs detached, tasks joined, map released.
    pub async fn stop_conntrack(&self) -> ReloadReport {
        let mut slot = self.inner.conntrack.lock().await;
        conntrack::stop(self, &mut slot).await
    }

    /// Starts the lock-statistics collector (a reload when one runs).
    pub async fn start_lockstats(&self, cfg: LockStatsConfig) -> Result<ReloadReport, ReloadError> {
        self.reload_lockstats(cfg).await
    }

    /// [`Self::start_lockstats`] with what start-up loaded ahead for it, if anything
    /// ([`crate::lockstats::prefetch_kernel_symbols`]).
    pub async fn start_lockstats_prefetched(
        &self,
        cfg: LockStatsConfig,
        prefetched: Option<crate::lockstats::Prefetched>,
    ) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.inner.lockstats.lock().await;
        lockstats::apply(self, cfg, prefetched)
    }

    /// Applies `cfg` to the lock-statistics collector (make-before-break: the new one is
    /// attached before the old one is detached).
    pub async fn reload_lockstats(&self, cfg: LockStatsConfig) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.inner.lockstats.lock().await;
        lockstats::apply(self, cfg, None)
    }

    /// Stops the lock-statistics collector: its programs detached, its watched maps released.
    pub async fn stop_lockstats(&self) -> ReloadReport {
        let _one_at_a_time = self.inner.lockstats.lock().await;
        lockstats::stop(self)
    }

    /// Stops every module (loader shutdown).
    pub async fn stop_all(&self) {
        self.stop_lockstats().await;
        self.stop_conntrack().await;
    }

    fn read(&self) -> RwLockReadGuard<'_, Published> {
        // The published pointers stay consistent across a panic elsewhere.
        self.inner.published.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Published> {
        self.inner.published.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The module's record as it was before an attempt, to restore if the attempt fails.
struct Saved(Option<ModuleRecord>);

impl Saved {
    fn take(registry: &Registry, module: &str) -> Self {
        Saved(registry.module(module))
    }

    /// Puts the saved record back and lists the failed attempt on it.
    fn restore_with_failure(self, registry: &Registry, module: &str, changed: &[String], reason: String) {
        let mut record = self.0.unwrap_or_else(|| ModuleRecord::new(module));
        if record.state != ModuleState::Running {
            // Nothing ran before: the start attempts themselves are the story, keep them.
            if let Some(now) = registry.module(module) {
                record.attempts = now.attempts;
                record.load_time = now.load_time;
                record.strategy = now.strategy;
            }
            record.state = ModuleState::Failed;
            record.last_error = Some(reason.clone());
        }
        record.push_failed_reload(FailedReload {
            at_unix_ms: now_unix_ms(),
            changed: changed.to_vec(),
            reason,
        });
        registry.set_module(record);
    }
}

/// Checks that this thread holds `capability` (capabilities are per thread).
fn require_capability(
    module: &'static str,
    capability: caps::Capability,
    name: &'static str,
    needed_for: &'static str,
) -> Result<(), ReloadError> {
    match caps::has_cap(None, caps::CapSet::Effective, capability) {
        Ok(true) => Ok(()),
        _ => Err(ReloadError::MissingCapability { module, capability: name, needed_for }),
    }
}
