//! Section `[api.limits]`: how much of the loader one caller, or all of them, may hold.
//! The socket is the privileged process's only door; each bound keeps a misbehaving or
//! hostile peer from starving the readiness probe and the controller.
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connections served at once; past it a new connection is closed at accept and counted.
    pub max_connections: usize,
    /// A connection with no traffic either way for this long is closed.
    pub idle_timeout_secs: u64,
    /// HTTP/2 streams (calls) in flight on one connection.
    pub max_streams_per_connection: u32,
    /// Largest request message accepted, in bytes (RESOURCE_EXHAUSTED beyond).
    pub max_message_bytes: usize,
    /// After SIGTERM, connections still open after this long are closed.
    pub shutdown_grace_secs: u64,
    /// Calls that walk a whole map (GetStatus fill levels, ListConntrack) running at once;
    /// one walker thread each, never above normal priority (`SCHED_OTHER`); more wait for a turn, never on the async
    /// workers.
    pub max_concurrent_map_walks: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            idle_timeout_secs: 60,
            max_streams_per_connection: 64,
            max_message_bytes: 4 * 1024 * 1024,
            shutdown_grace_secs: 5,
            max_concurrent_map_walks: 2,
        }
    }
}

impl Limits {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}
