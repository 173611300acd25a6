//! Test-only TUF repository: ed25519 keys (ring), roots and targets built from `tough`'s
//! schema types, signed over `tough`'s canonical form. Shared (feature `test-repo`) by the
//! unit, integration and end-to-end tests and the benchmarks so every test signs the same way.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::new_without_default)]

use std::collections::HashMap;
use std::num::NonZeroU64;

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tough::TargetName;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::{Ed25519Key, Ed25519Scheme, Key};
use tough::schema::{Hashes, Role, RoleKeys, RoleType, Root, Signature, Signed, Target, Targets};

/// An ed25519 signing key with its TUF key id.
pub struct TestKey {
    pair: Ed25519KeyPair,
    pub key: Key,
    pub id: Decoded<Hex>,
}

impl TestKey {
    pub fn generate() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let key = Key::Ed25519 {
            keyval: Ed25519Key { public: pair.public_key().as_ref().to_vec().into(), _extra: HashMap::new() },
            scheme: Ed25519Scheme::Ed25519,
            _extra: HashMap::new(),
        };
        let id = key.key_id().unwrap();
        Self { pair, key, id }
    }

    pub fn sign<T: Role>(&self, role: &T) -> Signature {
        let sig = self.pair.sign(&role.canonical_form().unwrap());
        Signature { keyid: self.id.clone(), sig: sig.as_ref().to_vec().into() }
    }
}

/// An RFC 3339 time `days` from now (negative: in the past).
pub fn expires_in_days(days: i64) -> jiff::Timestamp {
    let now = jiff::Timestamp::now().as_second();
    jiff::Timestamp::from_second(now + days * 86_400).unwrap()
}

/// A root with the given root and targets keys/thresholds (snapshot and timestamp roles
/// reuse the targets keys, so the document has every top-level role the spec requires).
pub fn root(
    version: u64,
    expires: jiff::Timestamp,
    root_keys: &[&TestKey],
    root_threshold: u64,
    targets_keys: &[&TestKey],
    targets_threshold: u64,
) -> Root {
    let mut keys = HashMap::new();
    for k in root_keys.iter().chain(targets_keys) {
        keys.insert(k.id.clone(), k.key.clone());
    }
    let role = |ks: &[&TestKey], threshold: u64| RoleKeys {
        keyids: ks.iter().map(|k| k.id.clone()).collect(),
        threshold: NonZeroU64::new(threshold).unwrap(),
        _extra: HashMap::new(),
    };
    let roles = HashMap::from([
        (RoleType::Root, role(root_keys, root_threshold)),
        (RoleType::Targets, role(targets_keys, targets_threshold)),
        (RoleType::Snapshot, role(targets_keys, targets_threshold)),
        (RoleType::Timestamp, role(targets_keys, targets_threshold)),
    ]);
    Root {
        spec_version: "1.0.0".into(),
        consistent_snapshot: false,
        version: NonZeroU64::new(version).unwrap(),
        expires,
        keys,
        roles,
        _extra: HashMap::new(),
    }
}

/// A config file to put in targets: path, content and `custom.v` (None: no `v`).
pub struct File<'a> {
    pub path: &'a str,
    pub raw: &'a [u8],
    pub v: Option<u64>,
}

pub fn target_for(raw: &[u8], v: Option<u64>) -> Target {
    let mut custom = HashMap::new();
    if let Some(v) = v {
        custom.insert("v".to_owned(), json!(v));
    }
    Target {
        length: raw.len() as u64,
        hashes: Hashes { sha256: Sha256::digest(raw).to_vec().into(), _extra: HashMap::new() },
        custom,
        _extra: HashMap::new(),
    }
}

/// Targets listing `files`, with an optional document-level `custom` object.
pub fn targets(version: u64, expires: jiff::Timestamp, files: &[File<'_>], custom: Option<Value>) -> Targets {
    let mut t = Targets {
        spec_version: "1.0.0".into(),
        version: NonZeroU64::new(version).unwrap(),
        expires,
        targets: HashMap::new(),
        delegations: None,
        _extra: HashMap::new(),
    };
    for f in files {
        t.targets.insert(TargetName::new(f.path).unwrap(), target_for(f.raw, f.v));
    }
    if let Some(custom) = custom {
        t._extra.insert("custom".into(), custom);
    }
    t
}

/// Signs `role` with every key in `keys` and returns the JSON document.
pub fn sign<T: Role + serde::Serialize + Clone>(role: &T, keys: &[&TestKey]) -> Vec<u8> {
    let signed = Signed { signed: role.clone(), signatures: keys.iter().map(|k| k.sign(role)).collect() };
    serde_json::to_vec(&signed).unwrap()
}

/// A one-key-per-role repository, the common case in tests.
pub struct Repo {
    pub root_key: TestKey,
    pub targets_key: TestKey,
    pub root_v1: Vec<u8>,
}

impl Repo {
    pub fn new() -> Self {
        let root_key = TestKey::generate();
        let targets_key = TestKey::generate();
        let r = root(1, expires_in_days(365), &[&root_key], 1, &[&targets_key], 1);
        let root_v1 = sign(&r, &[&root_key]);
        Self { root_key, targets_key, root_v1 }
    }

    /// Signed targets of `version` listing `files`, expiring in a year.
    pub fn targets(&self, version: u64, files: &[File<'_>]) -> Vec<u8> {
        sign(&targets(version, expires_in_days(365), files, None), &[&self.targets_key])
    }
}
