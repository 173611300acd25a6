//! The one seam between remote configuration and the running loader: applying resolved
//! settings to the modules (through their lifecycle's reload) and to the log filter.
use std::future::Future;
use std::pin::Pin;

use crate::conntrack::ConntrackConfig;
use crate::lockstats::LockStatsConfig;

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

/// The running loader, as remote configuration changes it.
pub struct RunningLoader {
    pub log: LogReload,
}

impl LiveApply for RunningLoader {
    fn conntrack<'a>(&'a self, _config: &'a ConntrackConfig) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async {
            Err("this loader build cannot reload the conntracker while it runs (the module lifecycle is not in it): \
                 change [conntrack] in its file and restart it"
                .to_string())
        })
    }

    fn lockstats<'a>(&'a self, _config: &'a LockStatsConfig) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async {
            Err("this loader build cannot reload the lock-statistics collector while it runs (the module lifecycle is not in it): \
                 change [lockstats] in its file and restart it"
                .to_string())
        })
    }

    fn log_filter(&self, filter: &str) -> Result<(), String> {
        (self.log)(filter)
    }
}
