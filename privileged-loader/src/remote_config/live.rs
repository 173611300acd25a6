//! The one seam between remote configuration and the running loader: applying resolved
//! settings to the modules (through their lifecycle's reload) and to the log filter.
use std::future::Future;
use std::pin::Pin;

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
}

/// Replaces the log filter of the running process.
pub type LogReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The running loader, as remote configuration changes it: the modules through their
/// lifecycle (a failed reload leaves the running instance as it was), the log filter
/// through the subscriber's reload handle.
pub struct RunningLoader {
    pub modules: Modules,
    pub log: LogReload,
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
}
