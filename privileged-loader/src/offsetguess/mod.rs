//! Offset guessing: finds, on a kernel without BTF, where the fields the prebuilt
//! conntracker reads sit in `struct sk_buff`, `struct nf_conn` and `struct net`.
//!
//! The method is experiment, not lookup: a thread moves into a private network namespace,
//! installs a DNAT rule, and sends UDP datagrams whose conntrack entry it can predict
//! (addresses, ports, status bits, namespace inode). For each field in turn it asks the
//! kernel side (`bpf/offsetguess.bpf.c`) to read the bytes at a candidate offset, and
//! walks the candidates until those bytes are the expected ones ([`machine`]). Every walk
//! is bounded by a threshold (the largest offset tried), a retry budget for datagrams the
//! kernel did not see, and a total timeout; the error names the field that failed.
//!
//! A successful result is cached for the life of the process ([`guess_cached`]): struct
//! layouts do not change while the kernel runs.
pub mod fields;
mod kernel;
pub mod machine;
mod traffic;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::asset::{AssetError, AssetLoader};
pub use fields::Field;
pub use kernel::ASSET;
pub use machine::{Limits, MachineError, Offsets};

/// The largest threshold accepted: beyond it a "match" is more likely chance than layout.
pub const MAX_THRESHOLD: u32 = 3000;

/// Section `[conntrack.offsetguess]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct OffsetGuessConfig {
    /// The largest offset, in bytes, tried for any field (1..=3000).
    pub threshold: u32,
    /// Checks the kernel may leave unanswered before the run fails.
    pub retries: u32,
    /// Wall-clock bound of one run, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for OffsetGuessConfig {
    fn default() -> Self {
        Self { threshold: 400, retries: 20, timeout_ms: 5000 }
    }
}

impl OffsetGuessConfig {
    pub fn limits(&self) -> Result<Limits, GuessError> {
        if !(1..=MAX_THRESHOLD).contains(&self.threshold) {
            return Err(GuessError::Threshold(self.threshold));
        }
        Ok(Limits { threshold: self.threshold, retries: self.retries })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GuessError {
    #[error("conntrack.offsetguess.threshold {0} is out of range: use 1..=3000 (default 400)")]
    Threshold(u32),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("offset guessing: loading asset {ASSET}: {0}")]
    Asset(#[from] AssetError),
    #[error("offset guessing: preparing the private network namespace failed at {step}: {reason}")]
    Netns { step: &'static str, reason: String },
    #[error("offset guessing: sending the known datagram failed: {0}")]
    Traffic(String),
    #[error("offset guessing: map guess_status of asset {ASSET}: {0}")]
    Map(String),
    #[error(
        "offset guessing timed out after {timeout:?} while guessing {field}; raise conntrack.offsetguess.timeout_ms"
    )]
    Timeout { field: Field, timeout: Duration },
    #[error("offset guessing thread failed: {0}")]
    Thread(String),
}

impl GuessError {
    /// The field being guessed when the run failed, if it got that far.
    pub fn field(&self) -> Option<Field> {
        match self {
            GuessError::Machine(e) => Some(e.field()),
            GuessError::Timeout { field, .. } => Some(*field),
            _ => None,
        }
    }
}

/// The result of one run: every offset, what it cost, and whether it came from the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GuessReport {
    pub offsets: Offsets,
    pub elapsed: Duration,
    /// Checks (datagrams answered by the kernel) the run needed.
    pub checks: u32,
    pub cached: bool,
}

impl std::fmt::Display for GuessReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let origin = if self.cached { ", cached" } else { "" };
        write!(f, "offsets guessed in {:?} ({} checks{origin}): {}", self.elapsed, self.checks, self.offsets)
    }
}

static CACHE: Mutex<Option<GuessReport>> = Mutex::new(None);

/// [`guess`], once per process: later calls return the first success (marked `cached`).
/// Failures are not cached, so a corrected configuration is tried again. A later call
/// with a threshold below a cached offset fails as a fresh run would: overflow on the
/// first such field.
pub fn guess_cached(cfg: &OffsetGuessConfig, assets: &AssetLoader) -> Result<GuessReport, GuessError> {
    let limits = cfg.limits()?;
    let mut cache = CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(report) = *cache {
        return from_cache(report, limits);
    }
    let report = guess(cfg, assets)?;
    *cache = Some(report);
    Ok(report)
}

fn from_cache(report: GuessReport, limits: Limits) -> Result<GuessReport, GuessError> {
    let beyond = Field::ALL.into_iter().find(|&field| report.offsets.get(field) > limits.threshold);
    match beyond {
        Some(field) => Err(MachineError::Overflow { field, threshold: limits.threshold }.into()),
        None => Ok(GuessReport { cached: true, ..report }),
    }
}

/// One guessing run (no cache). The object's load is recorded as asset `offsetguess`
/// (once per run); a failure of the guessing itself is the caller's to record.
pub fn guess(cfg: &OffsetGuessConfig, assets: &AssetLoader) -> Result<GuessReport, GuessError> {
    let started = Instant::now();
    let (offsets, checks) = run(cfg, assets)?;
    let elapsed = started.elapsed();
    tracing::info!(%offsets, ?elapsed, checks, "offset guessing done");
    Ok(GuessReport { offsets, elapsed, checks, cached: false })
}

fn run(cfg: &OffsetGuessConfig, assets: &AssetLoader) -> Result<(Offsets, u32), GuessError> {
    let limits = cfg.limits()?;
    let timeout = Duration::from_millis(cfg.timeout_ms);
    // The namespace change must not leak into the caller's thread (a tokio worker, say):
    // all of it happens on a thread of its own, which takes the namespace with it.
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("offsetguess".into())
            .spawn_scoped(scope, move || {
                let mut guesser = kernel::GuessObject::load(assets)?;
                let inum = traffic::enter_private_netns()?;
                let conn = traffic::known_connection(inum)?;
                let machine = machine::Machine::new(conn.expected, limits)?;
                guesser.run(machine, &conn, timeout)
            })
            .map_err(|e| GuessError::Thread(e.to_string()))?
            .join()
            .map_err(|_| GuessError::Thread("the guessing thread panicked".into()))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_result_obeys_a_lower_threshold_like_a_fresh_run() {
        let offsets =
            Offsets { skb_nfct: 104, origin: 32, reply: 88, status: 128, netns: 136, netns_inum: 176 };
        let report = GuessReport { offsets, elapsed: Duration::from_millis(90), checks: 75, cached: false };
        let hit = from_cache(report, Limits { threshold: 400, retries: 1 }).expect("within 400");
        assert!(hit.cached);
        let err = from_cache(report, Limits { threshold: 8, retries: 1 }).expect_err("104 > 8");
        assert!(err.to_string().contains("offset guessing overflow on sk_buff._nfct at 8"), "{err}");
        let err = from_cache(report, Limits { threshold: 170, retries: 1 }).expect_err("176 > 170");
        assert_eq!(err.field(), Some(Field::NetnsInum));
    }
}
