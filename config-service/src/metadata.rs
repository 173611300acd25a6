//! TUF 1.0 metadata documents: building root and targets roles and signing them.
//!
//! The schema types and the signing come from `tough`: a role is serialised to canonical
//! JSON by `Role::canonical_form` and signed by `tough::sign::Sign`, so this module only
//! decides *what* goes into a document, never how bytes are signed or encoded.

use std::collections::HashMap;
use std::num::NonZeroU64;

use aws_lc_rs::rand::SystemRandom;
use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256, Sha512};
use tough::TargetName;
use tough::schema::{Hashes, Role, RoleKeys, RoleType, Root, Signature, Signed, Target, Targets};

use crate::keys::SigningKey;

/// The TUF specification version written into every document.
pub const SPEC_VERSION: &str = "1.0.0";

/// Key of the config version inside a target's `custom` object.
pub const CUSTOM_VERSION: &str = "v";
/// Key of the opaque state the client echoes back as `backend_client_state`.
pub const OPAQUE_BACKEND_STATE: &str = "opaque_backend_state";
/// Key of the poll interval (seconds) the service suggests to its clients.
pub const REFRESH_INTERVAL: &str = "agent_refresh_interval";

/// Errors from building or signing a document.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("cannot serialise the {role} role to canonical JSON: {reason}")]
    Canonical { role: RoleType, reason: String },
    #[error("key {key} failed to sign the {role} role: {reason}")]
    Sign { role: RoleType, key: String, reason: String },
    #[error("{path:?} is not a valid TUF target path: {reason}")]
    TargetName { path: String, reason: String },
    #[error("version overflow while bumping the {role} role")]
    Version { role: RoleType },
}

/// The four top-level roles. The protocol only uses root and targets, but the TUF
/// specification (and python-tuf) requires all four in a root; snapshot and timestamp are
/// assigned the targets keys and never signed.
const TOP_LEVEL_ROLES: [RoleType; 4] =
    [RoleType::Root, RoleType::Targets, RoleType::Snapshot, RoleType::Timestamp];

/// Builds a root listing `root_keys` for the root role and `targets_keys` for the others.
pub fn new_root(
    version: NonZeroU64,
    expires: jiff::Timestamp,
    root_keys: &[&SigningKey],
    targets_keys: &[&SigningKey],
) -> Root {
    let mut keys = HashMap::new();
    for key in root_keys.iter().chain(targets_keys) {
        keys.insert(key.key_id.clone(), key.pair.tuf_key());
    }
    let role_keys = |signers: &[&SigningKey]| RoleKeys {
        keyids: signers.iter().map(|k| k.key_id.clone()).collect(),
        threshold: NonZeroU64::MIN,
        _extra: HashMap::new(),
    };
    let roles = TOP_LEVEL_ROLES
        .iter()
        .map(|role| {
            let signers = if *role == RoleType::Root { root_keys } else { targets_keys };
            (*role, role_keys(signers))
        })
        .collect();
    Root {
        spec_version: SPEC_VERSION.to_owned(),
        consistent_snapshot: false,
        version,
        expires,
        keys,
        roles,
        _extra: HashMap::new(),
    }
}

/// Replaces the root role's keys with `new_root_key`, dropping the old root keys from the
/// key list when no other role uses them.
pub fn rotate_root_key(
    old: &Root,
    version: NonZeroU64,
    expires: jiff::Timestamp,
    new_root_key: &SigningKey,
) -> Root {
    let mut root = old.clone();
    root.version = version;
    root.expires = expires;
    if let Some(role) = root.roles.get_mut(&RoleType::Root) {
        role.keyids = vec![new_root_key.key_id.clone()];
    }
    root.keys.insert(new_root_key.key_id.clone(), new_root_key.pair.tuf_key());
    let in_use: Vec<_> = root.roles.values().flat_map(|r| r.keyids.iter().cloned()).collect();
    root.keys.retain(|id, _| in_use.contains(id));
    root
}

/// A new, empty targets role (no delegations: the protocol has none).
pub fn empty_targets(version: NonZeroU64, expires: jiff::Timestamp) -> Targets {
    let mut targets = Targets::new(SPEC_VERSION.to_owned(), version, expires);
    targets.delegations = None;
    targets
}

/// Describes one config file as a target: length, sha256 + sha512, and `custom.v`.
pub fn target_for(content: &[u8], config_version: u64) -> Target {
    let sha512 = hex::encode(Sha512::digest(content));
    Target {
        length: content.len() as u64,
        hashes: Hashes {
            sha256: Sha256::digest(content).to_vec().into(),
            _extra: HashMap::from([("sha512".to_owned(), Value::String(sha512))]),
        },
        custom: HashMap::from([(CUSTOM_VERSION.to_owned(), json!(config_version))]),
        _extra: HashMap::new(),
    }
}

/// Parses a config path into a TUF target name.
pub fn target_name(path: &str) -> Result<TargetName, MetadataError> {
    TargetName::new(path)
        .map_err(|e| MetadataError::TargetName { path: path.to_owned(), reason: e.to_string() })
}

/// The config version (`custom.v`) of a target, if present and an integer.
pub fn config_version(target: &Target) -> Option<u64> {
    target.custom.get(CUSTOM_VERSION).and_then(Value::as_u64)
}

/// Sets the targets-level `custom` object: the opaque state clients echo back, and the
/// suggested poll interval when one is configured.
pub fn set_targets_custom(targets: &mut Targets, refresh_interval_secs: Option<u64>) {
    let state = json!({ "targets_version": targets.version.get() }).to_string();
    let mut custom = serde_json::Map::new();
    custom.insert(
        OPAQUE_BACKEND_STATE.to_owned(),
        Value::String(base64::engine::general_purpose::STANDARD.encode(state)),
    );
    if let Some(secs) = refresh_interval_secs {
        custom.insert(REFRESH_INTERVAL.to_owned(), json!(secs));
    }
    targets._extra.insert("custom".to_owned(), Value::Object(custom));
}

/// The suggested poll interval stored in a targets role, if any.
pub fn refresh_interval(targets: &Targets) -> Option<u64> {
    targets._extra.get("custom")?.get(REFRESH_INTERVAL)?.as_u64()
}

/// Signs `role` with every key in `signers` (one signature each).
pub async fn sign<T: Role>(role: T, signers: &[&SigningKey]) -> Result<Signed<T>, MetadataError> {
    let canonical = role
        .canonical_form()
        .map_err(|e| MetadataError::Canonical { role: T::TYPE, reason: e.to_string() })?;
    let rng = SystemRandom::new();
    let mut signatures = Vec::with_capacity(signers.len());
    for key in signers {
        let sig = key.pair.sign(&canonical, &rng).await.map_err(|e| MetadataError::Sign {
            role: T::TYPE,
            key: key.path.display().to_string(),
            reason: e.to_string(),
        })?;
        signatures.push(Signature { keyid: key.key_id.clone(), sig: sig.into() });
    }
    Ok(Signed { signed: role, signatures })
}

/// `version + 1`, for a role being re-signed.
pub fn next_version(version: NonZeroU64, role: RoleType) -> Result<NonZeroU64, MetadataError> {
    version.checked_add(1).ok_or(MetadataError::Version { role })
}

/// An expiry `days` from now, in whole seconds: python-tuf (and the TUF spec's examples)
/// accept only `YYYY-MM-DDTHH:MM:SSZ`, without fractional seconds.
pub fn expiry_in_days(days: u32) -> jiff::Timestamp {
    let now = jiff::Timestamp::now().as_second();
    let secs = now.saturating_add(i64::from(days) * 86_400);
    jiff::Timestamp::from_second(secs).unwrap_or(jiff::Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;

    fn key(dir: &std::path::Path, name: &str) -> SigningKey {
        keys::generate(&dir.join(name)).unwrap()
    }

    #[tokio::test]
    async fn signed_root_verifies_and_tampering_breaks_it() {
        let dir = tempfile::tempdir().unwrap();
        let (root_key, targets_key) = (key(dir.path(), "r.pem"), key(dir.path(), "t.pem"));
        let root = new_root(NonZeroU64::MIN, expiry_in_days(1), &[&root_key], &[&targets_key]);
        let signed = sign(root.clone(), &[&root_key]).await.unwrap();
        root.verify_role(&signed).unwrap();

        let mut tampered = signed.clone();
        tampered.signed.consistent_snapshot = true;
        assert!(root.verify_role(&tampered).is_err());
    }

    #[tokio::test]
    async fn targets_signed_by_the_wrong_key_do_not_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (root_key, targets_key) = (key(dir.path(), "r.pem"), key(dir.path(), "t.pem"));
        let root = new_root(NonZeroU64::MIN, expiry_in_days(1), &[&root_key], &[&targets_key]);
        let targets = empty_targets(NonZeroU64::MIN, expiry_in_days(1));
        root.verify_role(&sign(targets.clone(), &[&targets_key]).await.unwrap()).unwrap();
        assert!(root.verify_role(&sign(targets, &[&root_key]).await.unwrap()).is_err());
    }

    #[tokio::test]
    async fn rotated_root_drops_the_old_root_key() {
        let dir = tempfile::tempdir().unwrap();
        let (r1, t, r2) = (key(dir.path(), "r1.pem"), key(dir.path(), "t.pem"), key(dir.path(), "r2.pem"));
        let root = new_root(NonZeroU64::MIN, expiry_in_days(1), &[&r1], &[&t]);
        let next = rotate_root_key(&root, NonZeroU64::new(2).unwrap(), expiry_in_days(1), &r2);
        assert!(!next.keys.contains_key(&r1.key_id));
        assert!(next.keys.contains_key(&t.key_id));
        assert_eq!(next.roles[&RoleType::Root].keyids, vec![r2.key_id.clone()]);
    }

    #[test]
    fn target_carries_length_hashes_and_version() {
        let target = target_for(b"{}", 7);
        assert_eq!(target.length, 2);
        assert_eq!(
            hex::encode(&target.hashes.sha256),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert!(target.hashes._extra.contains_key("sha512"));
        assert_eq!(config_version(&target), Some(7));
    }

    #[test]
    fn expiry_has_whole_seconds() {
        let text = serde_json::to_value(empty_targets(NonZeroU64::MIN, expiry_in_days(3))).unwrap();
        let expires = text["expires"].as_str().unwrap();
        assert_eq!(expires.len(), "2026-01-01T00:00:00Z".len(), "{expires}");
    }
}
