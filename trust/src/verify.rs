//! `apply_update`: the one door through which a response becomes trusted state.
//!
//! Steps, each on data derived from (never mutating) the current state:
//! 1. walk the new roots N+1…M, each signed by a threshold of the previous root's root
//!    keys and of its own;
//! 2. verify the targets against the newest root's targets keys and threshold, refuse
//!    expired metadata, rollback, and a reused version with different content;
//! 3. match every path in `client_configs` to a signed target and a file (sent, or cached
//!    with equal hashes), checking length, every hash and `custom.v`.
//!
//! Only if all of it holds is a new [`TrustedState`] returned; the caller commits it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};
use tough::schema::{Root, Signed, Target, Targets};

use crate::state::{ApplyState, ConfigEntry, TargetsMeta, TrustedState};
use crate::{ConfigPath, VerifyError};

/// One response, as borrowed views of its fields.
#[derive(Debug, Default)]
pub struct Update<'a> {
    pub roots: Vec<&'a [u8]>,
    /// Empty when the service has nothing newer than the client's targets version.
    pub targets: &'a [u8],
    pub target_files: HashMap<&'a str, &'a [u8]>,
    pub client_configs: Vec<&'a str>,
}

/// Whether (and against which clock) metadata expiry is enforced.
#[derive(Debug, Clone, Copy)]
pub enum ExpiryCheck {
    /// Metadata is expired once `now_unix` is past `expires + clock_skew_secs`.
    At { now_unix: i64, clock_skew_secs: i64 },
    /// Only for re-verifying the state already on disk at start: its signatures, hashes
    /// and chain are checked, and freshness is enforced at the first poll.
    Skip,
}

/// The result of an accepted update.
#[derive(Debug)]
pub enum Applied {
    /// Nothing new: the current state stays as it is.
    Unchanged,
    /// A new state to commit; `changed_products` lists the products whose configs differ.
    Changed { state: TrustedState, changed_products: BTreeSet<String> },
}

/// Verifies `update` against `current`; see the module documentation for the rules.
pub fn apply_update(
    current: &TrustedState,
    update: &Update<'_>,
    expiry: ExpiryCheck,
) -> Result<Applied, VerifyError> {
    let new_roots = walk_roots(&current.root, &update.roots)?;
    let root = new_roots.last().map_or(&*current.root, |(r, _)| r);
    check_expiry(root.signed.expires, expiry)
        .map_err(|expires| VerifyError::RootExpired { version: root.signed.version.get(), expires })?;
    let new_targets = match update.targets.is_empty() {
        true => None,
        false => Some(verify_targets(root, update.targets, current.targets.as_ref())?),
    };
    if new_targets.is_none() {
        recheck_trusted_targets(current, root, !new_roots.is_empty(), expiry)?;
        if new_roots.is_empty() {
            return Ok(Applied::Unchanged);
        }
    }
    let mut state = current.clone();
    for (root, raw) in new_roots {
        state.root = Arc::new(root);
        state.roots_raw.push(Arc::from(raw));
    }
    if let Some(targets) = new_targets {
        check_expiry(targets.signed.signed.expires, expiry)
            .map_err(|expires| VerifyError::TargetsExpired { version: targets.version(), expires })?;
        state.configs = collect_configs(current, &targets.signed, update)?;
        state.targets = Some(targets);
    }
    let changed_products = changed_products(&current.configs, &state.configs);
    Ok(Applied::Changed { state, changed_products })
}

/// The `signed.version` of a raw root document, read without verifying it: only to skip
/// roots at or below a pinned version (which the pin supersedes) before walking a chain.
pub fn root_version(raw: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Doc {
        signed: Version,
    }
    #[derive(serde::Deserialize)]
    struct Version {
        version: u64,
    }
    serde_json::from_slice::<Doc>(raw).ok().map(|d| d.signed.version)
}

/// A verified root and the bytes it arrived as.
type WalkedRoot<'a> = (Signed<Root>, &'a [u8]);

/// Step 1: the chain of new roots, each checked against its predecessor and itself.
fn walk_roots<'a>(trusted: &Signed<Root>, raws: &[&'a [u8]]) -> Result<Vec<WalkedRoot<'a>>, VerifyError> {
    let mut walked: Vec<WalkedRoot<'a>> = Vec::with_capacity(raws.len());
    for (index, raw) in raws.iter().enumerate() {
        let next: Signed<Root> = serde_json::from_slice(raw)
            .map_err(|e| VerifyError::RootParse { index, reason: e.to_string() })?;
        let previous = walked.last().map_or(trusted, |(r, _)| r);
        let (prev_v, next_v) = (previous.signed.version.get(), next.signed.version.get());
        if next_v != prev_v + 1 {
            return Err(VerifyError::RootVersionGap { trusted: prev_v, found: next_v });
        }
        previous.signed.verify_role(&next).map_err(|e| VerifyError::RootNotSignedByPrevious {
            version: next_v,
            previous: prev_v,
            reason: e.to_string(),
        })?;
        next.signed
            .verify_role(&next)
            .map_err(|e| VerifyError::RootNotSelfSigned { version: next_v, reason: e.to_string() })?;
        walked.push((next, raw));
    }
    Ok(walked)
}

/// Step 2: signature against the newest root, then version rules against the trusted copy.
fn verify_targets(
    root: &Signed<Root>,
    raw: &[u8],
    trusted: Option<&TargetsMeta>,
) -> Result<TargetsMeta, VerifyError> {
    let signed: Signed<Targets> =
        serde_json::from_slice(raw).map_err(|e| VerifyError::TargetsParse { reason: e.to_string() })?;
    let version = signed.signed.version.get();
    root.signed.verify_role(&signed).map_err(|e| VerifyError::TargetsSignature {
        version,
        root_version: root.signed.version.get(),
        reason: e.to_string(),
    })?;
    if let Some(trusted) = trusted {
        if version < trusted.version() {
            return Err(VerifyError::TargetsRollback { trusted: trusted.version(), offered: version });
        }
        if version == trusted.version() && signed.signed != trusted.signed.signed {
            return Err(VerifyError::TargetsVersionReused { version });
        }
    }
    Ok(TargetsMeta { signed: Arc::new(signed), raw: Arc::from(raw) })
}

/// Without new targets, the trusted ones must still be fresh and, after a root rotation,
/// still signed by the new root's targets keys.
fn recheck_trusted_targets(
    current: &TrustedState,
    root: &Signed<Root>,
    root_rotated: bool,
    expiry: ExpiryCheck,
) -> Result<(), VerifyError> {
    let Some(trusted) = &current.targets else {
        return Ok(());
    };
    if root_rotated && root.signed.verify_role(&trusted.signed).is_err() {
        return Err(VerifyError::TargetsNotResigned {
            version: trusted.version(),
            root_version: root.signed.version.get(),
        });
    }
    check_expiry(trusted.signed.signed.expires, expiry)
        .map_err(|expires| VerifyError::TargetsExpired { version: trusted.version(), expires })
}

/// `Err(expires as text)` when the metadata is past its expiry plus the allowed skew.
fn check_expiry(expires: jiff::Timestamp, check: ExpiryCheck) -> Result<(), String> {
    match check {
        ExpiryCheck::At { now_unix, clock_skew_secs }
            if now_unix.saturating_sub(clock_skew_secs) > expires.as_second() =>
        {
            Err(expires.to_string())
        }
        _ => Ok(()),
    }
}

/// Step 3: every listed config, matched to its signed target and verified content.
fn collect_configs(
    current: &TrustedState,
    targets: &Signed<Targets>,
    update: &Update<'_>,
) -> Result<BTreeMap<String, ConfigEntry>, VerifyError> {
    let index: HashMap<&str, &Target> = targets.signed.targets.iter().map(|(n, t)| (n.raw(), t)).collect();
    let mut configs = BTreeMap::new();
    for path in &update.client_configs {
        let entry = verify_config(current, &index, update, path)?;
        configs.insert((*path).to_owned(), entry);
    }
    Ok(configs)
}

fn verify_config(
    current: &TrustedState,
    index: &HashMap<&str, &Target>,
    update: &Update<'_>,
    path: &str,
) -> Result<ConfigEntry, VerifyError> {
    let parsed = ConfigPath::parse(path)?;
    let target = index.get(path).ok_or_else(|| VerifyError::UnknownTarget { path: path.to_owned() })?;
    let version = target
        .custom
        .get("v")
        .and_then(Value::as_u64)
        .ok_or_else(|| VerifyError::MissingVersion { path: path.to_owned() })?;
    let hashes = signed_hashes(path, target)?;
    let cached = current.configs.get(path);
    let raw: Arc<[u8]> = match update.target_files.get(path) {
        Some(sent) => {
            check_content(path, sent, target.length, &hashes)?;
            Arc::from(*sent)
        }
        None => match cached {
            Some(c) if c.length == target.length && c.hashes == hashes => c.raw.clone(),
            _ => return Err(VerifyError::MissingFile { path: path.to_owned() }),
        },
    };
    let unchanged = cached.filter(|c| c.hashes == hashes && c.version == version);
    Ok(ConfigEntry {
        path: path.to_owned(),
        parsed,
        version,
        length: target.length,
        hashes,
        raw,
        apply_state: unchanged.map_or(ApplyState::Unacknowledged, |c| c.apply_state),
        apply_error: unchanged.map(|c| c.apply_error.clone()).unwrap_or_default(),
    })
}

/// The target's hashes as algorithm → lower-case hex; only algorithms we can check.
fn signed_hashes(path: &str, target: &Target) -> Result<BTreeMap<String, String>, VerifyError> {
    let mut hashes = BTreeMap::from([("sha256".to_owned(), hex::encode(&target.hashes.sha256))]);
    for (algorithm, value) in &target.hashes._extra {
        let supported = algorithm == "sha512";
        match value.as_str() {
            Some(hex_value) if supported => {
                hashes.insert(algorithm.clone(), hex_value.to_ascii_lowercase());
            }
            _ => {
                return Err(VerifyError::UnsupportedHash {
                    path: path.to_owned(),
                    algorithm: algorithm.clone(),
                });
            }
        }
    }
    Ok(hashes)
}

fn check_content(
    path: &str,
    raw: &[u8],
    length: u64,
    hashes: &BTreeMap<String, String>,
) -> Result<(), VerifyError> {
    let actual = raw.len() as u64;
    if actual != length {
        return Err(VerifyError::WrongLength { path: path.to_owned(), expected: length, actual });
    }
    for (algorithm, expected) in hashes {
        let computed = match algorithm.as_str() {
            "sha256" => hex::encode(Sha256::digest(raw)),
            _ => hex::encode(Sha512::digest(raw)),
        };
        if &computed != expected {
            return Err(VerifyError::WrongHash { path: path.to_owned(), algorithm: algorithm.clone() });
        }
    }
    Ok(())
}

/// Products whose set of (path, version, sha256) differs between two config maps.
fn changed_products(
    before: &BTreeMap<String, ConfigEntry>,
    after: &BTreeMap<String, ConfigEntry>,
) -> BTreeSet<String> {
    let fingerprint = |configs: &BTreeMap<String, ConfigEntry>| {
        let mut by_product: BTreeMap<String, BTreeSet<(String, u64, String)>> = BTreeMap::new();
        for c in configs.values() {
            by_product.entry(c.parsed.product.clone()).or_default().insert((
                c.path.clone(),
                c.version,
                c.sha256().to_owned(),
            ));
        }
        by_product
    };
    let (old, new) = (fingerprint(before), fingerprint(after));
    old.keys().chain(new.keys()).filter(|p| old.get(*p) != new.get(*p)).cloned().collect()
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
