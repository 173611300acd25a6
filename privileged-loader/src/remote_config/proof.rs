//! Re-verification of what the controller hands over, against the loader's own pinned
//! root: the controller is not trusted to have checked anything. The TUF rules are the
//! `trust` crate's (root chain, signatures and thresholds, expiry, lengths and hashes);
//! this adds the loader's floor: a targets version never below the last one applied in
//! this process's life, and never the same version with other content.
use sha2::{Digest, Sha256};
use trust::{Applied, ExpiryCheck, TrustedState, Update, VerifyError, apply_update};

/// A request's proof, as borrowed views.
pub struct Proof<'a> {
    pub roots: Vec<&'a [u8]>,
    pub targets: &'a [u8],
    pub configs: Vec<(&'a str, &'a [u8])>,
}

/// A config whose bytes the signed targets vouch for.
#[derive(Clone, Debug)]
pub struct VerifiedConfig {
    pub path: String,
    pub product: String,
    pub version: u64,
    pub sha256: String,
    pub raw: Vec<u8>,
}

#[derive(Debug)]
pub struct Verified {
    pub targets_version: u64,
    targets_sha256: [u8; 32],
    pub configs: Vec<VerifiedConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("the request carries no signed targets document: send the targets that list the configs")]
    NoTargets,
    #[error("the proof does not verify against the loader's pinned root: {0}")]
    Verify(#[from] VerifyError),
    #[error(
        "targets version {offered} is older than version {floor}, which this loader already applied: rollback refused"
    )]
    Rollback { offered: u64, floor: u64 },
    #[error(
        "targets version {version} differs from the document of that version this loader applied: refused"
    )]
    Reused { version: u64 },
}

/// The pinned root and the floor.
pub struct Verifier {
    pinned: TrustedState,
    clock_skew_secs: i64,
    floor: Option<(u64, [u8; 32])>,
}

impl Verifier {
    pub fn new(pinned: TrustedState, clock_skew_secs: i64) -> Self {
        Self { pinned, clock_skew_secs, floor: None }
    }

    /// The newest targets version applied (0: none yet).
    pub fn floor(&self) -> u64 {
        self.floor.map_or(0, |(v, _)| v)
    }

    /// Verifies `proof` at `now_unix`; nothing changes until [`Self::raise_floor`].
    pub fn verify(&self, proof: &Proof<'_>, now_unix: i64) -> Result<Verified, ProofError> {
        if proof.targets.is_empty() {
            return Err(ProofError::NoTargets);
        }
        let pinned_version = self.pinned.root_version();
        let update = Update {
            // Roots the pin already supersedes are skipped; the rest must chain from it.
            roots: proof
                .roots
                .iter()
                .copied()
                .filter(|r| trust::root_version(r).is_none_or(|v| v > pinned_version))
                .collect(),
            targets: proof.targets,
            target_files: proof.configs.iter().copied().collect(),
            client_configs: proof.configs.iter().map(|(path, _)| *path).collect(),
        };
        let expiry = ExpiryCheck::At { now_unix, clock_skew_secs: self.clock_skew_secs };
        let state = match apply_update(&self.pinned, &update, expiry)? {
            Applied::Changed { state, .. } => state,
            Applied::Unchanged => return Err(ProofError::NoTargets),
        };
        let verified = Verified {
            targets_version: state.targets_version(),
            targets_sha256: Sha256::digest(proof.targets).into(),
            configs: state
                .configs()
                .values()
                .map(|c| VerifiedConfig {
                    path: c.path.clone(),
                    product: c.parsed.product.clone(),
                    version: c.version,
                    sha256: c.sha256().to_owned(),
                    raw: c.raw.to_vec(),
                })
                .collect(),
        };
        self.check_floor(&verified)?;
        Ok(verified)
    }

    fn check_floor(&self, verified: &Verified) -> Result<(), ProofError> {
        let Some((floor, digest)) = self.floor else {
            return Ok(());
        };
        let offered = verified.targets_version;
        if offered < floor {
            return Err(ProofError::Rollback { offered, floor });
        }
        if offered == floor && verified.targets_sha256 != digest {
            return Err(ProofError::Reused { version: offered });
        }
        Ok(())
    }

    /// Called once `verified` was applied: older targets are refused from now on.
    pub fn raise_floor(&mut self, verified: &Verified) {
        if verified.targets_version >= self.floor() {
            self.floor = Some((verified.targets_version, verified.targets_sha256));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use trust::test_repo::{File, Repo, expires_in_days, sign, targets};

    const PATH: &str = "2/CONNTRACK/a/config.json";

    fn now() -> i64 {
        jiff::Timestamp::now().as_second()
    }

    fn proof<'a>(t: &'a [u8], raw: &'a [u8]) -> Proof<'a> {
        Proof { roots: vec![], targets: t, configs: vec![(PATH, raw)] }
    }

    #[test]
    fn accepts_a_signed_proof_then_refuses_older_and_reused_versions() {
        let repo = Repo::new();
        let mut v = Verifier::new(TrustedState::from_pinned_root(&repo.root_v1).unwrap(), 60);
        let raw = br#"{"udpv6_enabled":false}"#;
        let t5 = repo.targets(5, &[File { path: PATH, raw, v: Some(2) }]);
        let ok = v.verify(&proof(&t5, raw), now()).unwrap();
        assert_eq!(
            (ok.targets_version, ok.configs[0].version, ok.configs[0].product.as_str()),
            (5, 2, "CONNTRACK")
        );
        v.raise_floor(&ok);
        assert!(v.verify(&proof(&t5, raw), now()).is_ok(), "the same document again is fine");
        let t4 = repo.targets(4, &[File { path: PATH, raw, v: Some(2) }]);
        assert!(matches!(
            v.verify(&proof(&t4, raw), now()),
            Err(ProofError::Rollback { offered: 4, floor: 5 })
        ));
        let other = repo.targets(5, &[File { path: PATH, raw, v: Some(3) }]);
        assert!(matches!(v.verify(&proof(&other, raw), now()), Err(ProofError::Reused { version: 5 })));
    }

    #[test]
    fn refuses_altered_bytes_expired_targets_and_another_repository() {
        let repo = Repo::new();
        let v = Verifier::new(TrustedState::from_pinned_root(&repo.root_v1).unwrap(), 60);
        let raw = br#"{"max_entries":4096}"#;
        let t = repo.targets(1, &[File { path: PATH, raw, v: Some(1) }]);
        assert!(v.verify(&proof(&t, br#"{"max_entries":9999}"#), now()).is_err());
        let expired = sign(
            &targets(1, expires_in_days(-1), &[File { path: PATH, raw, v: Some(1) }], None),
            &[&repo.targets_key],
        );
        assert!(matches!(
            v.verify(&proof(&expired, raw), now()),
            Err(ProofError::Verify(VerifyError::TargetsExpired { .. }))
        ));
        let foreign = Repo::new().targets(1, &[File { path: PATH, raw, v: Some(1) }]);
        assert!(v.verify(&proof(&foreign, raw), now()).is_err());
        assert!(matches!(v.verify(&proof(b"", raw), now()), Err(ProofError::NoTargets)));
    }
}
