//! Remote configuration on the loader's side: `ApplyConfig` re-verifies the controller's
//! proof against the loader's own pinned root ([`proof`]), checks every payload against
//! the product schemas and the local allow-list ([`allow`]), resolves precedence over the
//! file baseline ([`effective`]) and applies the products it sets live, all or nothing.
//! See docs/remote-config.md.
pub mod allow;
pub mod btf;
pub mod effective;
mod live;
pub mod proof;
mod state;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use allow::AllowRules;
pub use effective::{Effective, Settings, Source};
pub use live::{BoxFuture, LiveApply, LogReload, RunningLoader};
pub use state::{ApplyError, ConfigRecord, Outcome, RecordState, RemoteConfigs, Snapshot};

/// Section `[remote_config]` of the loader's configuration.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteConfigSettings {
    /// The pinned root.json every proof is verified against (the same repository the
    /// controller pins). Unset: `ApplyConfig` is refused with FAILED_PRECONDITION.
    pub root_file: Option<PathBuf>,
    /// Allowed clock skew when checking metadata expiry.
    pub clock_skew_secs: u64,
    /// `[remote_config.allow]`: what remote configuration may change on this node.
    pub allow: AllowRules,
}

impl Default for RemoteConfigSettings {
    fn default() -> Self {
        Self { root_file: None, clock_skew_secs: 60, allow: AllowRules::default() }
    }
}
