//! The controller's gate for the `BTF` product: this node takes only its own kernel's
//! BTF (config id `<arch>-<release>`, the path layout of `trust::products::BTF`), and
//! only within `remote_config.max_btf_bytes`.
//!
//! The limit is checked first against the length the signed targets give the file (the
//! file is neither decoded nor decompressed when that is over), then while decoding:
//! base64 is bounded by its length, xz through a reader that stops one byte past the
//! limit, so a compression bomb costs the controller at most `limit` bytes. A refused
//! config is an `error` reported to the service and is never pushed to the loader.
use std::collections::BTreeSet;

use trust::products::{BTF, Payload, kernel_key};
use trust::{ApplyState, ConfigEntry, TrustedState};

/// Slack for the JSON around the base64 data (release, arch, `uname -v`, keys).
const ENVELOPE_BYTES: u64 = 4096;

pub struct BtfGate {
    key: String,
    limit: u64,
}

impl BtfGate {
    /// The gate of the running kernel (when its release cannot be read, the key is
    /// `<arch>-`, which no published BTF has: every BTF config is refused).
    pub fn current(limit: u64) -> Self {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Self::for_kernel(std::env::consts::ARCH, release.trim(), limit)
    }

    pub fn for_kernel(arch: &str, release: &str, limit: u64) -> Self {
        Self { key: kernel_key(arch, release), limit }
    }

    /// This node's key, as the service is told it (`kernel:<key>` in the client's tags).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Marks every not-yet-answered BTF config of `state` that this node must not take as
    /// an error, with the reason; returns `(path, version)` of every BTF config refused
    /// (now or before), which the caller keeps from the loader.
    pub fn check(&self, state: &mut TrustedState) -> BTreeSet<(String, u64)> {
        let mut refused = BTreeSet::new();
        let verdicts: Vec<(String, u64, Option<String>)> = state
            .configs()
            .values()
            .filter(|c| c.parsed.product == BTF)
            .map(|c| match c.apply_state {
                ApplyState::Unacknowledged => (c.path.clone(), c.version, self.refusal(c)),
                ApplyState::Error if c.apply_error.starts_with(REFUSED) => {
                    (c.path.clone(), c.version, Some(c.apply_error.clone()))
                }
                _ => (c.path.clone(), c.version, None),
            })
            .collect();
        for (path, version, reason) in verdicts {
            let Some(reason) = reason else { continue };
            tracing::warn!(%path, version, %reason, "BTF config refused by the controller");
            state.set_apply_state(&path, ApplyState::Error, reason);
            refused.insert((path, version));
        }
        refused
    }

    /// Why this node must not take `config`, or `None`.
    fn refusal(&self, config: &ConfigEntry) -> Option<String> {
        let refuse = |why: String| Some(format!("{REFUSED}{why}"));
        if config.parsed.config_id != self.key {
            return refuse(format!(
                "it is published for kernel {:?}, this node runs {:?} (publish under {})",
                config.parsed.config_id, self.key, self.key
            ));
        }
        let encoded_limit = self.limit.saturating_mul(4) / 3 + ENVELOPE_BYTES;
        if config.length > encoded_limit {
            return refuse(format!(
                "its signed length {} is over this node's limit for {} bytes of BTF (remote_config.max_btf_bytes); not decoded",
                config.length, self.limit
            ));
        }
        let payload = match Payload::parse(BTF, &config.raw) {
            Ok(Payload::Btf(p)) => p,
            Ok(_) => return refuse("not a BTF payload".into()),
            Err(e) => return refuse(e.to_string()),
        };
        payload.decode(self.limit).err().and_then(|e| refuse(e.to_string()))
    }
}

/// How the controller's own refusals start, to tell them from the loader's.
const REFUSED: &str = "refused by the controller: ";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashMap;

    use super::*;
    use trust::products::BtfPayload;
    use trust::test_repo::{File, Repo};
    use trust::{Applied, ExpiryCheck, Update, apply_update};

    fn btf(extra: usize) -> Vec<u8> {
        let mut b = vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0];
        b.resize(24 + extra, 0);
        b
    }

    fn state_with(files: &[(&str, Vec<u8>)]) -> TrustedState {
        let repo = Repo::new();
        let pinned = TrustedState::from_pinned_root(&repo.root_v1).unwrap();
        let listed: Vec<File<'_>> = files.iter().map(|(p, raw)| File { path: p, raw, v: Some(1) }).collect();
        let t = repo.targets(1, &listed);
        let update = Update {
            roots: vec![],
            targets: &t,
            target_files: files.iter().map(|(p, raw)| (*p, raw.as_slice())).collect::<HashMap<_, _>>(),
            client_configs: files.iter().map(|(p, _)| *p).collect(),
        };
        let expiry = ExpiryCheck::At { now_unix: jiff::Timestamp::now().as_second(), clock_skew_secs: 0 };
        match apply_update(&pinned, &update, expiry).unwrap() {
            Applied::Changed { state, .. } => state,
            Applied::Unchanged => panic!("expected a change"),
        }
    }

    fn payload(release: &str, body: &[u8], compress: bool) -> Vec<u8> {
        serde_json::to_vec(&BtfPayload::encode(release, "x86_64", None, body, compress).unwrap()).unwrap()
    }

    #[test]
    fn only_this_kernels_btf_within_the_limit_passes() {
        let gate = BtfGate::for_kernel("x86_64", "6.18.0", 1 << 20);
        let ok = "2/BTF/x86_64-6.18.0/btf.json";
        let other = "2/BTF/x86_64-6.1.0/btf.json";
        let mut state = state_with(&[
            (ok, payload("6.18.0", &btf(100), true)),
            (other, payload("6.1.0", &btf(1), false)),
        ]);
        let refused = gate.check(&mut state);
        assert_eq!(refused, BTreeSet::from([(other.to_string(), 1)]));
        let entry = &state.configs()[other];
        assert_eq!(entry.apply_state, ApplyState::Error);
        assert!(entry.apply_error.contains("\"x86_64-6.1.0\""), "{}", entry.apply_error);
        assert_eq!(state.configs()[ok].apply_state, ApplyState::Unacknowledged, "left to the loader");
        assert_eq!(gate.check(&mut state), refused, "a refusal stays a refusal at the next poll");
    }

    #[test]
    fn oversized_bombs_and_non_btf_are_refused_naming_why() {
        let gate = BtfGate::for_kernel("x86_64", "6.18.0", 1 << 20);
        let path = "2/BTF/x86_64-6.18.0/btf.json";
        for (raw, says) in [
            (payload("6.18.0", &btf(64 << 20), true), "decompressed"),
            (payload("6.18.0", &btf(2 << 20), false), "signed length"),
            (payload("6.18.0", b"not btf at all, just text", false), "not BTF"),
            (b"{\"release\": 1}".to_vec(), "schema"),
        ] {
            let mut state = state_with(&[(path, raw)]);
            assert_eq!(gate.check(&mut state).len(), 1);
            let error = &state.configs()[path].apply_error;
            assert!(error.contains(says), "{says}: {error}");
        }
    }
}
