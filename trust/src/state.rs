//! The trusted remote-config state: the newest verified root, the verified targets and the
//! config files they sign. Values of this type only ever come out of verification
//! ([`TrustedState::from_pinned_root`], [`crate::apply_update`]), so holding one means
//! every byte in it was checked.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use tough::schema::{Root, Signed, Targets};

use crate::{ConfigPath, VerifyError};

/// How far a product listener got with a config. Reported back to the service per config
/// on the next request; the numbers are the wire values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "u64", try_from = "u64")]
pub enum ApplyState {
    Unknown = 0,
    Unacknowledged = 1,
    Acknowledged = 2,
    Error = 3,
}

impl From<ApplyState> for u64 {
    fn from(state: ApplyState) -> u64 {
        state as u64
    }
}

impl TryFrom<u64> for ApplyState {
    type Error = String;
    fn try_from(value: u64) -> Result<Self, String> {
        match value {
            0 => Ok(Self::Unknown),
            1 => Ok(Self::Unacknowledged),
            2 => Ok(Self::Acknowledged),
            3 => Ok(Self::Error),
            other => Err(format!("unknown apply state {other}")),
        }
    }
}

/// A verified targets document, kept with the exact bytes it arrived as (for the store).
#[derive(Debug, Clone)]
pub struct TargetsMeta {
    pub signed: Arc<Signed<Targets>>,
    pub raw: Arc<[u8]>,
}

impl TargetsMeta {
    pub fn version(&self) -> u64 {
        self.signed.signed.version.get()
    }

    /// The document-level `custom` object of the signed targets, if any.
    fn custom(&self) -> Option<&serde_json::Map<String, Value>> {
        self.signed.signed._extra.get("custom").and_then(Value::as_object)
    }
}

/// One config this client holds: its verified content and what the listener made of it.
#[derive(Debug, Clone)]
pub struct ConfigEntry {
    pub path: String,
    pub parsed: ConfigPath,
    /// `custom.v` from the signed targets.
    pub version: u64,
    pub length: u64,
    /// Algorithm → lower-case hex, exactly the hashes the signed targets list.
    pub hashes: BTreeMap<String, String>,
    pub raw: Arc<[u8]>,
    pub apply_state: ApplyState,
    pub apply_error: String,
}

impl ConfigEntry {
    pub fn sha256(&self) -> &str {
        self.hashes.get("sha256").map(String::as_str).unwrap_or_default()
    }
}

/// The whole trusted state. Cloning is cheap (documents and files are shared).
#[derive(Debug, Clone)]
pub struct TrustedState {
    pub(super) pinned_root_version: u64,
    pub(super) root: Arc<Signed<Root>>,
    /// Raw roots newer than the pinned one, oldest first: the chain the store persists so
    /// that a restart can re-walk it from the pinned root.
    pub(super) roots_raw: Vec<Arc<[u8]>>,
    pub(super) targets: Option<TargetsMeta>,
    pub(super) configs: BTreeMap<String, ConfigEntry>,
}

impl TrustedState {
    /// Starts from the operator-pinned root, which must be signed by a threshold of its
    /// own root keys (its expiry is checked with every update, like any newest root).
    pub fn from_pinned_root(raw: &[u8]) -> Result<Self, VerifyError> {
        let root: Signed<Root> = serde_json::from_slice(raw)
            .map_err(|e| VerifyError::PinnedRootParse { reason: e.to_string() })?;
        let version = root.signed.version.get();
        root.signed
            .verify_role(&root)
            .map_err(|e| VerifyError::RootNotSelfSigned { version, reason: e.to_string() })?;
        Ok(Self {
            pinned_root_version: version,
            root: Arc::new(root),
            roots_raw: Vec::new(),
            targets: None,
            configs: BTreeMap::new(),
        })
    }

    pub fn root_version(&self) -> u64 {
        self.root.signed.version.get()
    }

    pub fn pinned_root_version(&self) -> u64 {
        self.pinned_root_version
    }

    /// 0 until a targets document has been accepted.
    pub fn targets_version(&self) -> u64 {
        self.targets.as_ref().map_or(0, TargetsMeta::version)
    }

    pub fn targets(&self) -> Option<&TargetsMeta> {
        self.targets.as_ref()
    }

    pub fn roots_raw(&self) -> &[Arc<[u8]>] {
        &self.roots_raw
    }

    pub fn configs(&self) -> &BTreeMap<String, ConfigEntry> {
        &self.configs
    }

    /// The targets' `custom.opaque_backend_state` (a string), echoed back to the service
    /// as `backend_client_state`; empty when absent.
    pub fn opaque_backend_state(&self) -> Vec<u8> {
        self.targets
            .as_ref()
            .and_then(TargetsMeta::custom)
            .and_then(|c| c.get("opaque_backend_state"))
            .and_then(Value::as_str)
            .map(|s| s.as_bytes().to_vec())
            .unwrap_or_default()
    }

    /// The poll interval the service suggests in the targets' `custom.agent_refresh_interval`
    /// (whole seconds). Unbounded here: the poll loop decides whether to honour it.
    pub fn suggested_interval_secs(&self) -> Option<u64> {
        self.targets
            .as_ref()
            .and_then(TargetsMeta::custom)
            .and_then(|c| c.get("agent_refresh_interval"))
            .and_then(Value::as_u64)
    }

    /// Records a listener's verdict on one config; unknown paths are ignored (the config
    /// was replaced in the meantime).
    pub fn set_apply_state(&mut self, path: &str, state: ApplyState, error: String) {
        if let Some(entry) = self.configs.get_mut(path) {
            entry.apply_state = state;
            entry.apply_error = error;
        }
    }

    /// The configs of one product, in path order.
    pub fn product_configs<'a>(&'a self, product: &'a str) -> impl Iterator<Item = &'a ConfigEntry> + 'a {
        self.configs.values().filter(move |c| c.parsed.product == product)
    }
}
