//! The one seam between remote configuration and the running loader: applying resolved
//! settings to the modules (through their lifecycle's reload) and to the log filter.
use std::future::Future;
use std::pin::Pin;

use super::btf::{self, BtfCache, BtfSetting, KernelIdentity, RemoteBtf};
use crate::btf::{BtfConfig, FoundBtf};
use crate::conntrack::ConntrackConfig;
use crate::lockstats::LockStatsConfig;
use crate::modules::Modules;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Applies one part of the settings to what runs. Each call leaves the running state as
/// it was when it fails, and says why in a sentence a person can act on.
pub trait LiveApply: Send + Sync {
    fn conntrack<'a>(&'a self, config: &'a ConntrackConfig) -> BoxFuture<'a, Result<(), String>>;
    fn lockstats<'a>(&'a self, config: &'a LockStatsConfig) -> BoxFuture<'a, Result<(), String>>;
    fn log_filter(&self, filter: &str) -> Result<(), String>;
    /// Uses the remote BTF in force (or none): checks it, adopts it (reloading a
    /// conntracker that fell back for lack of BTF), keeps it in the cache.
    fn btf<'a>(&'a self, setting: &'a BtfSetting) -> BoxFuture<'a, Result<(), String>>;
}

/// Replaces the log filter of the running process.
pub type LogReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The running loader, as remote configuration changes it: the modules through their
/// lifecycle (a failed reload leaves the running instance as it was), the log filter
/// through the subscriber's reload handle.
pub struct RunningLoader {
    pub modules: Modules,
    pub log: LogReload,
    /// `[btf]`: the cache directory and the size limit of remote BTF.
    pub btf: BtfConfig,
}

impl RunningLoader {
    /// Checks `remote` against the running kernel, has the modules adopt it, and keeps it
    /// in the cache for the next start. The cache is written only once the adoption
    /// worked, so a BTF that does not fit never survives a restart.
    async fn adopt(&self, remote: &RemoteBtf) -> Result<String, String> {
        let kernel = KernelIdentity::current()?;
        kernel.check(remote)?;
        let (bytes, (parsed, relocation)) = btf::parse(remote, self.btf.max_remote_bytes)?;
        let cache = BtfCache::new(&self.btf.cache_dir);
        let key = kernel.key();
        let found = FoundBtf {
            source: crate::status::BtfSource::RemoteConfig,
            path: cache.path_of(&key),
            btf: parsed,
            relocation,
            origin: Some(btf::origin(&remote.path, remote.version)),
        };
        let mut note = self.modules.adopt_btf(found).await.map_err(|e| e.to_string())?;
        if let Err(e) = cache.store(&key, &remote.path, remote.version, &bytes) {
            note.push_str(&format!("; not kept for the next start: {e}"));
        }
        Ok(note)
    }
}

impl LiveApply for RunningLoader {
    fn conntrack<'a>(&'a self, config: &'a ConntrackConfig) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let report = self.modules.reload_conntrack(config.clone()).await.map_err(|e| e.to_string())?;
            tracing::info!(action = report.action.as_str(), changed = ?report.changed, "conntrack reloaded by remote config");
            Ok(())
        })
    }

    fn lockstats<'a>(&'a self, config: &'a LockStatsConfig) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let report = self.modules.reload_lockstats(config.clone()).await.map_err(|e| e.to_string())?;
            tracing::info!(action = report.action.as_str(), changed = ?report.changed, "lockstats reloaded by remote config");
            Ok(())
        })
    }

    fn log_filter(&self, filter: &str) -> Result<(), String> {
        (self.log)(filter)
    }

    fn btf<'a>(&'a self, setting: &'a BtfSetting) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let note = match (&setting.ignored_because, &setting.remote) {
                (Some(why), _) => format!("the BTF product is ignored here: {why}"),
                (None, None) => {
                    // Removed at the service: what runs keeps running; the next start
                    // goes without it.
                    BtfCache::new(&self.btf.cache_dir).clear();
                    "no remote BTF in force: the cache is cleared".to_string()
                }
                (None, Some(remote)) => self.adopt(remote).await?,
            };
            tracing::info!(%note, "remote BTF applied");
            Ok(())
        })
    }
}
