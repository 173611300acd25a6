//! Pushing verified configs to the privileged loader.
//!
//! The poll loop publishes what is in force ([`Desired`]: the proof and the loader
//! products' configs) on a watch channel; the [`pusher`] task compares it with what the
//! loader reports it runs (`GetConfig`) and sends `ApplyConfig` per product that differs.
//! Verdicts come back as [`Verdict`]s, which the poll loop writes to disk before the next
//! request reports them. The loader being down is not a config error: the pusher retries,
//! and a new (empty) loader process is noticed by its instance id and converges with no
//! new publish. A config the loader refused is pushed again only when it changes or the
//! loader restarts.
mod client;
pub mod pusher;

pub(crate) use client::connect;

use std::sync::Arc;

use trust::{ApplyState, TrustedState};

pub use pusher::{Pusher, PusherHandle};

/// A config in force for a loader product, with the bytes the targets sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredConfig {
    pub path: String,
    pub product: String,
    pub version: u64,
    pub sha256: String,
    pub raw: Arc<[u8]>,
}

/// Everything the loader needs to re-verify and apply what is in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub roots: Vec<Arc<[u8]>>,
    pub targets: Arc<[u8]>,
    pub configs: Vec<DesiredConfig>,
}

impl Desired {
    /// The loader products' configs of `state` (nothing before the first targets).
    pub fn from_state(state: &TrustedState) -> Self {
        let Some(targets) = state.targets() else {
            return Self::default();
        };
        let configs = state
            .configs()
            .values()
            .filter(|c| trust::products::Payload::is_known(&c.parsed.product))
            .map(|c| DesiredConfig {
                path: c.path.clone(),
                product: c.parsed.product.clone(),
                version: c.version,
                sha256: c.sha256().to_owned(),
                raw: c.raw.clone(),
            })
            .collect();
        Self { roots: state.roots_raw().to_vec(), targets: targets.raw.clone(), configs }
    }

    pub fn product(&self, product: &str) -> impl Iterator<Item = &DesiredConfig> {
        self.configs.iter().filter(move |c| c.product == product)
    }
}

/// The loader's answer about one config version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub path: String,
    pub version: u64,
    pub state: ApplyState,
    pub error: String,
}
