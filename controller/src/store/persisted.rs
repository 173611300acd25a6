//! The state file's format, and its re-verification from the pinned root.
//!
//! Only raw, signed material is stored (roots, targets, config bytes), plus the listener
//! verdicts. Decoding replays it through [`apply_update`] exactly like a response, so a
//! tampered file fails verification like a tampered response would.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::CorruptState;
use trust::{Applied, ApplyState, ExpiryCheck, TrustedState, Update, apply_update};

const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct PersistedState {
    format: u32,
    /// Hex of the raw roots newer than the pinned root, oldest first.
    roots: Vec<String>,
    /// Hex of the raw signed targets.
    targets: Option<String>,
    configs: Vec<PersistedConfig>,
    /// The paths of `configs`, listed apart: a config removed from `configs` by hand is
    /// then seen as missing (the file is refused and the state fetched again) instead of
    /// silently loading without it. Absent in files written before it existed.
    #[serde(default)]
    config_paths: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize)]
struct PersistedConfig {
    path: String,
    content: String,
    apply_state: ApplyState,
    apply_error: String,
}

pub(super) fn encode(state: &TrustedState) -> Result<Vec<u8>, serde_json::Error> {
    let persisted = PersistedState {
        format: FORMAT,
        roots: state.roots_raw().iter().map(hex::encode).collect(),
        targets: state.targets().map(|t| hex::encode(&t.raw)),
        configs: state
            .configs()
            .values()
            .map(|c| PersistedConfig {
                path: c.path.clone(),
                content: hex::encode(&c.raw),
                apply_state: c.apply_state,
                apply_error: c.apply_error.clone(),
            })
            .collect(),
        config_paths: Some(state.configs().values().map(|c| c.path.clone()).collect()),
    };
    serde_json::to_vec(&persisted)
}

pub(super) fn decode(bytes: &[u8], pinned: &TrustedState) -> Result<TrustedState, CorruptState> {
    let p: PersistedState = serde_json::from_slice(bytes).map_err(|e| CorruptState::Format(e.to_string()))?;
    if p.format != FORMAT {
        return Err(CorruptState::Format(format!("format {} (expected {FORMAT})", p.format)));
    }
    if let Some(paths) = &p.config_paths
        && let Some(missing) = paths.iter().find(|path| !p.configs.iter().any(|c| &c.path == *path))
    {
        return Err(CorruptState::Format(format!("config {missing} is listed but its content is missing")));
    }
    let unhex = |s: &String| hex::decode(s).map_err(|e| CorruptState::Format(e.to_string()));
    let roots = p.roots.iter().map(unhex).collect::<Result<Vec<_>, _>>()?;
    // Roots at or below the pinned version were superseded by the operator's pin.
    let roots: Vec<&[u8]> = roots
        .iter()
        .filter(|raw| trust::root_version(raw).is_none_or(|v| v > pinned.root_version()))
        .map(Vec::as_slice)
        .collect();
    let targets = p.targets.as_ref().map(unhex).transpose()?.unwrap_or_default();
    let contents = p.configs.iter().map(|c| unhex(&c.content)).collect::<Result<Vec<_>, _>>()?;
    let update = Update {
        roots,
        targets: &targets,
        target_files: p
            .configs
            .iter()
            .zip(&contents)
            .map(|(c, raw)| (c.path.as_str(), raw.as_slice()))
            .collect::<HashMap<_, _>>(),
        client_configs: p.configs.iter().map(|c| c.path.as_str()).collect(),
    };
    let mut state = match apply_update(pinned, &update, ExpiryCheck::Skip)? {
        Applied::Changed { state, .. } => state,
        Applied::Unchanged => pinned.clone(),
    };
    for c in &p.configs {
        state.set_apply_state(&c.path, c.apply_state, c.apply_error.clone());
    }
    Ok(state)
}
