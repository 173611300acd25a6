//! Builds a `ClientGetConfigsRequest` from the trusted state: what this client holds
//! (root and targets versions, cached files with their hashes) and how its listeners
//! fared (per-config apply state, and the error of the last update, if it failed).

use shared_proto::remoteconfig::v1::{
    Client, ClientAgent, ClientGetConfigsRequest, ClientState, ConfigState, TargetFileHash, TargetFileMeta,
};

use trust::{ConfigEntry, TrustedState};

/// The tag that names the client's kernel, as the service reads it.
pub const KERNEL_TAG: &str = "kernel:";

/// Who is asking: fixed for the life of the process.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub id: String,
    pub products: Vec<String>,
    /// `<arch>-<release>` of this node's kernel: the service sends only its BTF.
    pub kernel_key: String,
}

/// The request for the next poll. `last_update_error` is the reason the previous update
/// was rejected (reported once, then cleared by the caller after a success).
pub fn build_request(
    identity: &ClientIdentity,
    state: &TrustedState,
    last_update_error: Option<&str>,
) -> ClientGetConfigsRequest {
    let configs = state.configs().values();
    let client_state = ClientState {
        root_version: state.root_version(),
        targets_version: state.targets_version(),
        config_states: configs.clone().map(config_state).collect(),
        has_error: last_update_error.is_some(),
        error: last_update_error.unwrap_or_default().to_owned(),
        backend_client_state: state.opaque_backend_state(),
    };
    ClientGetConfigsRequest {
        client: Some(Client {
            state: Some(client_state),
            id: identity.id.clone(),
            products: identity.products.clone(),
            client_agent: Some(ClientAgent {
                name: env!("CARGO_PKG_NAME").to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                tags: vec![format!("{KERNEL_TAG}{}", identity.kernel_key)],
                ..Default::default()
            }),
            ..Default::default()
        }),
        cached_target_files: configs.map(cached_file).collect(),
    }
}

fn config_state(entry: &ConfigEntry) -> ConfigState {
    ConfigState {
        id: entry.parsed.config_id.clone(),
        version: entry.version,
        product: entry.parsed.product.clone(),
        apply_state: entry.apply_state.into(),
        apply_error: entry.apply_error.clone(),
    }
}

fn cached_file(entry: &ConfigEntry) -> TargetFileMeta {
    TargetFileMeta {
        path: entry.path.clone(),
        length: i64::try_from(entry.length).unwrap_or(i64::MAX),
        hashes: entry
            .hashes
            .iter()
            .map(|(algorithm, hash)| TargetFileHash { algorithm: algorithm.clone(), hash: hash.clone() })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashMap;

    use serde_json::json;
    use sha2::{Digest, Sha256};

    use super::*;
    use trust::{Applied, ApplyState, ExpiryCheck, Update, apply_update};

    const PATH: &str = "2/LOADER_CONFIG/cfg1/config.json";

    fn identity() -> ClientIdentity {
        ClientIdentity {
            id: "client-1".into(),
            products: vec!["LOADER_CONFIG".into()],
            kernel_key: "x86_64-6.18.0".into(),
        }
    }

    fn state_with_config() -> TrustedState {
        let repo = trust::test_repo::Repo::new();
        let pinned = TrustedState::from_pinned_root(&repo.root_v1).unwrap();
        let custom = json!({"opaque_backend_state": "opaque-xyz"});
        let files = [trust::test_repo::File { path: PATH, raw: b"{\"a\":1}", v: Some(4) }];
        let t = trust::test_repo::sign(
            &trust::test_repo::targets(3, trust::test_repo::expires_in_days(1), &files, Some(custom)),
            &[&repo.targets_key],
        );
        let update = Update {
            roots: vec![],
            targets: &t,
            target_files: HashMap::from([(PATH, &b"{\"a\":1}"[..])]),
            client_configs: vec![PATH],
        };
        let expiry = ExpiryCheck::At { now_unix: jiff::Timestamp::now().as_second(), clock_skew_secs: 0 };
        match apply_update(&pinned, &update, expiry).unwrap() {
            Applied::Changed { state, .. } => state,
            Applied::Unchanged => panic!("expected a change"),
        }
    }

    #[test]
    fn fresh_client_reports_the_pinned_root_and_nothing_else() {
        let repo = trust::test_repo::Repo::new();
        let pinned = TrustedState::from_pinned_root(&repo.root_v1).unwrap();
        let req = build_request(&identity(), &pinned, None);
        let client = req.client.unwrap();
        let state = client.state.unwrap();
        assert_eq!(
            (client.id.as_str(), client.products.as_slice()),
            ("client-1", &["LOADER_CONFIG".to_owned()][..])
        );
        assert_eq!((state.root_version, state.targets_version), (1, 0));
        assert_eq!(client.client_agent.unwrap().tags, ["kernel:x86_64-6.18.0"], "scopes the BTF product");
        assert!(state.config_states.is_empty() && req.cached_target_files.is_empty());
        assert!(!state.has_error && state.error.is_empty() && state.backend_client_state.is_empty());
    }

    #[test]
    fn reports_configs_cache_apply_state_and_backend_state() {
        let mut trusted = state_with_config();
        trusted.set_apply_state(PATH, ApplyState::Error, "bad json".into());
        let req = build_request(&identity(), &trusted, None);
        let state = req.client.as_ref().unwrap().state.as_ref().unwrap();
        assert_eq!(state.targets_version, 3);
        assert_eq!(state.backend_client_state, b"opaque-xyz");
        let cs = &state.config_states[0];
        assert_eq!((cs.id.as_str(), cs.product.as_str(), cs.version), ("cfg1", "LOADER_CONFIG", 4));
        assert_eq!((cs.apply_state, cs.apply_error.as_str()), (3, "bad json"));
        let cached = &req.cached_target_files[0];
        assert_eq!((cached.path.as_str(), cached.length), (PATH, 7));
        assert_eq!(cached.hashes[0].algorithm, "sha256");
        assert_eq!(cached.hashes[0].hash, hex::encode(Sha256::digest(b"{\"a\":1}")));
    }

    #[test]
    fn reports_the_last_update_error() {
        let trusted = state_with_config();
        let req = build_request(&identity(), &trusted, Some("targets version 2 is older than 3"));
        let state = req.client.unwrap().state.unwrap();
        assert!(state.has_error);
        assert_eq!(state.error, "targets version 2 is older than 3");
    }
}
