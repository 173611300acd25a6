//! The loader's status registry: what every module and asset did, as data.
//!
//! Modules record here; the `GetStatus` RPC reads a snapshot. Status is data, not log
//! lines: every fallback and every asset load ends in an enumerated, counted result.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

/// Where the BTF used for a CO-RE load came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BtfSource {
    /// A file the user named (`btf.file`).
    UserFile,
    /// `/sys/kernel/btf/vmlinux`.
    Sysfs,
    /// A directory in BTFHub layout (`btf.hub_dir`).
    Btfhub,
    /// A `BTF` remote config (kept in `btf.cache_dir`).
    RemoteConfig,
}

impl BtfSource {
    pub fn as_str(self) -> &'static str {
        match self {
            BtfSource::UserFile => "user-file",
            BtfSource::Sysfs => "sysfs",
            BtfSource::Btfhub => "btfhub",
            BtfSource::RemoteConfig => "remote-config",
        }
    }
}

/// How one attempt to load an asset ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum AssetOutcome {
    Loaded { btf_source: Option<BtfSource> },
    BtfNotFound,
    AssetReadError,
    VerifierError,
    AttachError,
}

/// The last result recorded for one asset, and how many times each was seen.
#[derive(Clone, Debug, Serialize)]
pub struct AssetRecord {
    pub asset: String,
    pub outcome: AssetOutcome,
    /// The error; for verifier errors, the tail of the verifier log.
    pub detail: String,
    pub load_time: Duration,
    pub count: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModuleState {
    Loading,
    Running,
    Failed,
    Disabled,
    /// Stopped while the loader runs (it can be started again).
    Stopped,
}

/// One hook (or step, like offset guessing) an implementation tried while it started,
/// and why it was or was not used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HookAttempt {
    /// e.g. `fentry/__nf_conntrack_hash_insert`, `raw_tracepoint/net_dev_queue`, `offsetguess`.
    pub hook: String,
    pub ok: bool,
    pub reason: String,
}

impl HookAttempt {
    pub fn ok(hook: impl Into<String>) -> Self {
        Self { hook: hook.into(), ok: true, reason: String::new() }
    }
    pub fn failed(hook: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { hook: hook.into(), ok: false, reason: reason.into() }
    }
}

/// One implementation a module tried, in order (e.g. `core`, `prebuilt`, `netlink`), why
/// it was or was not used, and the hooks it tried inside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImplementationAttempt {
    pub implementation: String,
    pub ok: bool,
    pub reason: String,
    pub hooks: Vec<HookAttempt>,
    /// Still starting: hooks recorded now belong to it.
    #[serde(skip)]
    pub in_progress: bool,
}

/// How many failed reloads a module record keeps (the newest).
pub const FAILED_RELOADS_KEPT: usize = 8;

/// A reload that took effect: when, and which configuration keys it changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReloadRecord {
    pub at_unix_ms: i64,
    /// Top-level keys of the module's configuration section that changed.
    pub changed: Vec<String>,
    /// Whether the running object was kept (`in place`) or replaced (`replaced`).
    pub how: String,
}

/// A reload that did not take effect; the previous instance kept running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailedReload {
    pub at_unix_ms: i64,
    pub changed: Vec<String>,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModuleRecord {
    pub name: String,
    pub state: ModuleState,
    /// The implementation in use, e.g. `core/tp_btf`.
    pub strategy: String,
    pub attempts: Vec<ImplementationAttempt>,
    pub last_error: Option<String>,
    pub load_time: Duration,
    /// Things an operator should know about a running module (a fallback it took).
    pub notes: Vec<String>,
    /// The running instance: 1 for the first start, +1 for every start or reload that
    /// replaced or changed it; 0 before any start.
    pub generation: u64,
    /// When the running instance was (re)loaded, Unix milliseconds; 0 before any start.
    pub loaded_at_unix_ms: i64,
    /// What the last successful reload changed.
    pub last_reload: Option<ReloadRecord>,
    /// The newest reloads that failed (at most [`FAILED_RELOADS_KEPT`]), oldest first.
    pub failed_reloads: Vec<FailedReload>,
}

impl ModuleRecord {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            state: ModuleState::Loading,
            strategy: String::new(),
            attempts: Vec::new(),
            last_error: None,
            load_time: Duration::ZERO,
            notes: Vec::new(),
            generation: 0,
            loaded_at_unix_ms: 0,
            last_reload: None,
            failed_reloads: Vec::new(),
        }
    }

    /// Clears what one start attempt records (state, implementation, attempts, error, notes,
    /// load time) and keeps the lifecycle history (generation, reloads).
    pub fn begin_attempt(&mut self) {
        let fresh = ModuleRecord::new(self.name.clone());
        self.state = fresh.state;
        self.strategy = fresh.strategy;
        self.attempts = fresh.attempts;
        self.last_error = fresh.last_error;
        self.load_time = fresh.load_time;
        self.notes = fresh.notes;
    }

    /// Records `hook` under the attempt of `implementation` in progress (opened if none).
    pub fn record_hook(&mut self, implementation: &str, hook: HookAttempt) {
        self.open_attempt(implementation).hooks.push(hook);
    }

    /// Closes the attempt of `implementation` (opened if none) with its verdict.
    pub fn finish_attempt(&mut self, implementation: &str, verdict: Result<(), String>) {
        let attempt = self.open_attempt(implementation);
        attempt.in_progress = false;
        (attempt.ok, attempt.reason) = match verdict {
            Ok(()) => (true, String::new()),
            Err(reason) => (false, reason),
        };
    }

    fn open_attempt(&mut self, implementation: &str) -> &mut ImplementationAttempt {
        let open = self.attempts.last().is_some_and(|a| a.in_progress && a.implementation == implementation);
        if !open {
            self.attempts.push(ImplementationAttempt {
                implementation: implementation.to_string(),
                ok: false,
                reason: String::new(),
                hooks: Vec::new(),
                in_progress: true,
            });
        }
        let last = self.attempts.len() - 1;
        &mut self.attempts[last]
    }

    /// Lists a failed reload, dropping the oldest beyond [`FAILED_RELOADS_KEPT`].
    pub fn push_failed_reload(&mut self, failed: FailedReload) {
        self.failed_reloads.push(failed);
        let excess = self.failed_reloads.len().saturating_sub(FAILED_RELOADS_KEPT);
        self.failed_reloads.drain(..excess);
    }
}

/// Now, in Unix milliseconds (0 if the clock is before 1970).
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[derive(Default)]
struct Inner {
    assets: BTreeMap<String, AssetRecord>,
    modules: BTreeMap<String, ModuleRecord>,
}

/// Shared, cheap to clone. Locks are held only to copy or update a record.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned registry still holds valid records: keep serving them.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the result of one load attempt of `asset`.
    pub fn record_asset(&self, asset: &str, outcome: AssetOutcome, detail: String, load_time: Duration) {
        let mut inner = self.lock();
        let count = inner.assets.get(asset).map_or(0, |r| r.count) + 1;
        inner.assets.insert(
            asset.to_string(),
            AssetRecord { asset: asset.to_string(), outcome, detail, load_time, count },
        );
    }

    /// Creates or updates the record of module `name`.
    pub fn update_module(&self, name: &str, update: impl FnOnce(&mut ModuleRecord)) {
        let mut inner = self.lock();
        let record = inner.modules.entry(name.to_string()).or_insert_with(|| ModuleRecord::new(name));
        update(record);
    }

    pub fn assets(&self) -> Vec<AssetRecord> {
        self.lock().assets.values().cloned().collect()
    }

    pub fn modules(&self) -> Vec<ModuleRecord> {
        self.lock().modules.values().cloned().collect()
    }

    /// The record of module `name`, if one was written.
    pub fn module(&self, name: &str) -> Option<ModuleRecord> {
        self.lock().modules.get(name).cloned()
    }

    /// Replaces the record of module `name` (a failed reload restores the one it saved).
    pub fn set_module(&self, record: ModuleRecord) {
        self.lock().modules.insert(record.name.clone(), record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_results_are_counted_and_the_last_one_kept() {
        let registry = Registry::default();
        registry.record_asset("conntrack", AssetOutcome::AssetReadError, "bad".into(), Duration::ZERO);
        registry.record_asset(
            "conntrack",
            AssetOutcome::Loaded { btf_source: Some(BtfSource::Sysfs) },
            String::new(),
            Duration::from_millis(3),
        );
        let assets = registry.assets();
        assert_eq!(assets.len(), 1);
        assert_eq!(assets[0].count, 2);
        assert_eq!(assets[0].outcome, AssetOutcome::Loaded { btf_source: Some(BtfSource::Sysfs) });
    }

    #[test]
    fn hooks_nest_under_the_implementation_that_tried_them() {
        let registry = Registry::default();
        registry.update_module("conntrack", |m| {
            m.record_hook("core", HookAttempt::failed("fentry", "EPERM"));
            m.finish_attempt("core", Err("no hook attached".into()));
            m.record_hook("prebuilt", HookAttempt::ok("raw_tracepoint"));
            m.finish_attempt("prebuilt", Ok(()));
        });
        let module = registry.module("conntrack").expect("recorded");
        let summary: Vec<(&str, bool, usize)> =
            module.attempts.iter().map(|a| (a.implementation.as_str(), a.ok, a.hooks.len())).collect();
        assert_eq!(summary, vec![("core", false, 1), ("prebuilt", true, 1)]);
        assert_eq!(module.attempts[0].reason, "no hook attached");
        assert_eq!(module.attempts[0].hooks[0].reason, "EPERM");
    }
}
