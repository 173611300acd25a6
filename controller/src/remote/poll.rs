//! The poll loop: started once, in its own task, until its cancellation token fires.
//!
//! Each tick builds a request from the trusted state, fetches, verifies and commits the
//! response, tells the listeners of changed products, and writes `status.json`. Timing:
//! - first poll immediately;
//! - then as [`Schedule`] decides: every second while a never-reached service is starting,
//!   otherwise `interval + backoff` (jittered, ×2, capped, stepping down on success);
//! - failures are logged at info level at first, then as rate-limited errors;
//! - `UNIMPLEMENTED` means remote config is off on the service: said once, recorded in
//!   the status as `disabled`, and polling stops.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shared_proto::remoteconfig::v1::ClientGetConfigsResponse;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::btf_gate::BtfGate;
use super::fetch::{FailureKind, FetchError, FetchSettings, Fetcher};
use super::request::{ClientIdentity, build_request};
use super::schedule::{SUGGESTED_BOUNDS_SECS, Schedule};
use crate::config::Config;
use crate::listeners::Listeners;
use crate::loader::{Desired, Pusher, PusherHandle, Verdict};
use crate::metrics::Metrics;
use crate::status::Status;
use crate::store::{Store, StoreError};
use trust::{Applied, ExpiryCheck, TrustedState, Update, VerifyError, apply_update};

/// Failures logged quietly before logs turn to errors.
const QUIET_FAILURES: u64 = 5;
/// At most one error log per this period while failures continue.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// Why the controller could not start polling.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read the pinned root remote_config.root_file {path}: {source}")]
    RootFile { path: PathBuf, source: std::io::Error },
    #[error("the pinned root {path} cannot be trusted: {source}")]
    PinnedRoot { path: PathBuf, source: VerifyError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

/// Why one poll failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("update rejected: {0}")]
    Verify(#[from] VerifyError),
    #[error("update verified but not stored: {0}")]
    Store(#[from] StoreError),
    #[error("the store task stopped: {0}")]
    StoreTask(String),
}

impl PollError {
    fn kind(&self) -> FailureKind {
        match self {
            Self::Fetch(e) => e.kind(),
            _ => FailureKind::Rejected,
        }
    }

    /// Errors about the response itself, which the service should hear about.
    fn is_update_error(&self) -> bool {
        matches!(self, Self::Verify(_) | Self::Store(_) | Self::StoreTask(_))
    }
}

/// Everything the loop owns.
pub struct Poller {
    fetcher: Fetcher,
    store: Store,
    identity: ClientIdentity,
    listeners: Listeners,
    /// Allowed clock skew when checking metadata expiry.
    clock_skew_secs: i64,
    state: TrustedState,
    schedule: Schedule,
    status: Status,
    last_update_error: Option<String>,
    last_error_log: Option<Instant>,
    warned_interval: Option<u64>,
    /// The loader push task (started by [`Self::run`]) and its channels, when configured.
    pusher: Option<Pusher>,
    loader: Option<PusherHandle>,
    metrics: std::sync::Arc<Metrics>,
    /// Which BTF configs this node takes (`btf_gate.rs`), and those it refused.
    btf_gate: BtfGate,
    refused_btf: BTreeSet<(String, u64)>,
}

impl Poller {
    /// Reads the pinned root, loads (and re-verifies) the stored state, and hands what was
    /// loaded to the listeners once, so they start from the last verified configs.
    pub fn prepare(config: &Config) -> Result<Self, StartError> {
        let rc = &config.remote_config;
        let root_raw = std::fs::read(&rc.root_file)
            .map_err(|source| StartError::RootFile { path: rc.root_file.clone(), source })?;
        let pinned = TrustedState::from_pinned_root(&root_raw)
            .map_err(|source| StartError::PinnedRoot { path: rc.root_file.clone(), source })?;
        let store = Store::open(&config.state_dir, Duration::from_secs(rc.store_lock_timeout_secs))?;
        let loaded = store.load(&pinned)?;
        if let Some((aside, reason)) = &loaded.quarantined {
            error!(moved_to = %aside.display(), %reason, "stored remote-config state refused and quarantined; starting from the pinned root");
        }
        let id = match rc.client_id.is_empty() {
            true => store.client_id()?,
            false => rc.client_id.clone(),
        };
        let fetcher = Fetcher::new(FetchSettings {
            endpoint: rc.endpoint.clone(),
            plaintext_for_development: rc.plaintext_for_development,
            token_file: rc.token_file.clone(),
            ca_file: rc.ca_file(),
            max_message_bytes: rc.max_message_bytes,
            request_timeout: Duration::from_secs(30),
        })?;
        let mut state = loaded.state;
        let btf_gate = BtfGate::current(rc.max_btf_bytes);
        let refused_btf = btf_gate.check(&mut state);
        // Every product goes to the loader; without one, configs are verified and
        // schema-checked only (verify-only mode, said once here).
        let (pusher, loader) = config.loader.socket().map(Pusher::new).unzip();
        let mut listeners = match loader {
            Some(_) => Listeners::default(),
            None => {
                warn!(
                    "no loader socket configured ([loader] socket): verify-only mode — configs are verified, \
                     schema-checked and acknowledged, but applied nowhere"
                );
                Listeners::verify_only_for(&rc.products)
            }
        };
        let metrics = std::sync::Arc::new(Metrics::default());
        if state.targets().is_some() {
            metrics.targets_verified();
        }
        let held: BTreeSet<String> = state.configs().values().map(|c| c.parsed.product.clone()).collect();
        listeners.notify(&mut state, &held);
        info!(
            client_id = %id, root_version = state.root_version(), targets_version = state.targets_version(),
            configs = state.configs().len(), endpoint = %rc.endpoint, "remote-config state loaded"
        );
        Ok(Self {
            fetcher,
            store,
            identity: ClientIdentity {
                id: id.clone(),
                products: rc.products.clone(),
                kernel_key: btf_gate.key().to_string(),
            },
            listeners,
            schedule: Schedule::new(rc.poll_interval(), Duration::from_secs(rc.max_backoff_secs)),
            clock_skew_secs: i64::try_from(rc.clock_skew_secs).unwrap_or(i64::MAX),
            state,
            status: Status { client_id: id, ..Status::default() },
            last_update_error: None,
            last_error_log: None,
            warned_interval: None,
            pusher,
            loader,
            metrics,
            btf_gate,
            refused_btf,
        })
    }

    /// The series this loop keeps up to date (served by [`crate::metrics::serve`]).
    pub fn metrics(&self) -> std::sync::Arc<Metrics> {
        self.metrics.clone()
    }

    /// Polls until `cancel` fires or the service disables remote config.
    pub async fn run(mut self, cancel: CancellationToken) {
        let pusher = self.pusher.take().map(|p| tokio::spawn(p.run(cancel.child_token())));
        self.publish_desired();
        loop {
            let span = info_span!("poll", client_id = %self.identity.id, targets_version = self.state.targets_version());
            let started = Instant::now();
            let outcome = tokio::select! {
                () = cancel.cancelled() => break,
                outcome = self.poll_once().instrument(span) => outcome,
            };
            self.metrics.poll(outcome.is_ok(), started.elapsed());
            if let Err(PollError::Verify(e)) = &outcome {
                self.metrics.verification_failure(e.reason());
            }
            let next = self.after_poll(outcome);
            self.metrics.backoff(self.schedule.backoff_level());
            self.write_status();
            let Some(delay) = next else { break };
            if !self.wait_for_next_poll(started + delay, &cancel).await {
                break;
            }
        }
        cancel.cancel();
        if let Some(task) = pusher
            && let Err(e) = task.await
        {
            error!(error = %e, "the loader push task panicked");
        }
    }

    /// Waits until `due` (polls are due an interval after the previous one *started*, so
    /// a slow poll does not push every later one back), storing the loader's verdicts as
    /// they arrive: the next poll reports them without first writing the state. Returns
    /// `false` when cancelled.
    async fn wait_for_next_poll(&mut self, due: Instant, cancel: &CancellationToken) -> bool {
        let due = tokio::time::Instant::from_std(due);
        loop {
            let arrived = tokio::select! {
                () = cancel.cancelled() => return false,
                () = tokio::time::sleep_until(due) => return true,
                arrived = next_verdicts(self.loader.as_mut()) => arrived,
            };
            match arrived {
                // The push task is gone (it stops only with the loop): nothing more will come.
                None => self.loader = None,
                Some(first) => {
                    if let Err(e) = self.take_verdicts(first).await {
                        warn!(error = %e, "cannot store the loader's verdicts; the next poll retries");
                    }
                }
            }
        }
    }

    /// Hands what is in force to the push task (it ignores an unchanged set).
    fn publish_desired(&self) {
        if let Some(loader) = &self.loader {
            let mut desired = Desired::from_state(&self.state);
            desired.configs.retain(|c| !self.refused_btf.contains(&(c.path.clone(), c.version)));
            loader.desired.send_if_modified(|current| {
                let changed = **current != desired;
                if changed {
                    *current = std::sync::Arc::new(desired);
                }
                changed
            });
        }
    }

    /// Records the loader's verdicts (`first`, already received, and any queued) and
    /// stores them before any request reports them.
    async fn take_verdicts(&mut self, first: Vec<Verdict>) -> Result<(), PollError> {
        let Some(loader) = &mut self.loader else { return Ok(()) };
        let mut verdicts = first;
        while let Ok(batch) = loader.verdicts.try_recv() {
            verdicts.extend(batch);
        }
        let mut changed = false;
        for v in verdicts {
            let current =
                self.state.configs().get(&v.path).map(|c| (c.version, c.apply_state, c.apply_error.clone()));
            // A verdict on a version no longer held is stale: drop it.
            if let Some((version, state, error)) = current
                && version == v.version
                && (state, error.as_str()) != (v.state, v.error.as_str())
            {
                info!(path = %v.path, version, state = ?v.state, error = %v.error, "loader verdict");
                self.state.set_apply_state(&v.path, v.state, v.error);
                changed = true;
            }
        }
        if changed {
            let state = self.state.clone();
            self.commit(&state).await?;
        }
        Ok(())
    }

    /// One request/verify/commit/notify round.
    async fn poll_once(&mut self) -> Result<(), PollError> {
        self.take_verdicts(Vec::new()).await?;
        let request = build_request(&self.identity, &self.state, self.last_update_error.as_deref());
        let response = self.fetcher.get_configs(request).await?;
        let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let expiry = ExpiryCheck::At { now_unix, clock_skew_secs: self.clock_skew_secs };
        let (mut state, changed) = match apply_update(&self.state, &update_from(&response), expiry)? {
            Applied::Unchanged => return Ok(()),
            Applied::Changed { state, changed_products } => (state, changed_products),
        };
        self.refused_btf = self.btf_gate.check(&mut state);
        self.commit(&state).await?;
        if state.targets_version() != self.state.targets_version() {
            self.metrics.targets_verified();
        }
        info!(
            root_version = state.root_version(), targets_version = state.targets_version(),
            configs = state.configs().len(), products = ?changed, "remote-config update verified and stored"
        );
        self.state = state;
        self.listeners.notify(&mut self.state, &changed);
        self.publish_desired();
        Ok(())
    }

    /// Writes `state` durably, off the async threads (fsync can take a while).
    async fn commit(&self, state: &TrustedState) -> Result<(), PollError> {
        let encoded = Store::encode(state)?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.write(&encoded))
            .await
            .map_err(|e| PollError::StoreTask(e.to_string()))??;
        Ok(())
    }

    /// Books the outcome and returns the delay before the next poll (`None`: stop).
    fn after_poll(&mut self, outcome: Result<(), PollError>) -> Option<Duration> {
        let delay = match outcome {
            Ok(()) => self.on_success(),
            Err(e) if e.kind() == FailureKind::Disabled => {
                self.on_disabled(&e);
                return None;
            }
            Err(e) => self.on_failure(&e),
        };
        self.status.next_poll_delay_ms = millis(delay);
        Some(delay)
    }

    fn on_success(&mut self) -> Duration {
        if self.status.consecutive_errors > 0 {
            info!(failures = self.status.consecutive_errors, "remote-config poll succeeded again");
        }
        self.last_update_error = None;
        self.last_error_log = None;
        self.status.polls_ok += 1;
        self.status.consecutive_errors = 0;
        self.status.last_error = None;
        self.status.state_dir_error = None;
        self.status.last_success_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, millis);
        let suggested = self.suggested_interval();
        self.schedule.after_success(suggested, rand::random::<f64>())
    }

    fn on_failure(&mut self, e: &PollError) -> Duration {
        self.status.polls_failed += 1;
        self.status.consecutive_errors += 1;
        self.status.last_error = Some(e.to_string());
        if e.is_update_error() {
            self.last_update_error = Some(e.to_string());
        }
        if matches!(e, PollError::Store(_) | PollError::StoreTask(_)) {
            self.status.state_dir_error = Some(e.to_string());
        }
        let suggested = self.suggested_interval();
        let delay = self.schedule.after_failure(e.kind(), suggested, rand::random::<f64>());
        self.log_failure(e, delay);
        self.status.record_retry_delay(millis(delay));
        delay
    }

    fn on_disabled(&mut self, e: &PollError) {
        warn!(error = %e, "remote configuration is disabled on the service (UNIMPLEMENTED): polling stopped");
        self.status.polls_failed += 1;
        self.status.disabled = true;
        self.status.disabled_reason = format!("the service answered UNIMPLEMENTED: {e}");
        self.status.last_error = Some(e.to_string());
        self.status.next_poll_delay_ms = 0;
    }

    /// Quiet for the first failures (they are expected while things start), then errors
    /// at most once per [`ERROR_LOG_EVERY`] so a long outage does not flood the logs.
    fn log_failure(&mut self, e: &PollError, delay: Duration) {
        let n = self.status.consecutive_errors;
        if n <= QUIET_FAILURES {
            match self.schedule.ever_succeeded() {
                false => info!(error = %e, failures = n, retry_in = ?delay, "remote-config poll failed"),
                true => warn!(error = %e, failures = n, retry_in = ?delay, "remote-config poll failed"),
            }
            return;
        }
        if self.last_error_log.is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY) {
            self.last_error_log = Some(Instant::now());
            error!(error = %e, failures = n, retry_in = ?delay, "remote-config polls keep failing");
        } else {
            debug!(error = %e, failures = n, retry_in = ?delay, "remote-config poll failed");
        }
    }

    /// The service's suggested interval; an out-of-bounds one is reported once per value.
    fn suggested_interval(&mut self) -> Option<u64> {
        let suggested = self.state.suggested_interval_secs();
        if let Some(s) = suggested.filter(|s| !SUGGESTED_BOUNDS_SECS.contains(s))
            && self.warned_interval != Some(s)
        {
            self.warned_interval = Some(s);
            warn!(suggested_secs = s, "ignoring the service's suggested poll interval: outside [1, 60] s");
        }
        suggested
    }

    fn write_status(&mut self) {
        let mut products: Vec<String> = self.listeners.products().cloned().collect();
        if self.loader.is_some() {
            products.extend(trust::products::ALL.map(String::from));
        }
        self.status.observe(&self.state, &products);
        self.metrics.apply_states(&self.state, &products);
        if let Err(e) = self.status.write(self.store.dir()) {
            warn!(error = %e, "cannot write status.json");
        }
    }
}

/// Borrowed view of a response, as the verifier takes it.
fn update_from(response: &ClientGetConfigsResponse) -> Update<'_> {
    Update {
        roots: response.roots.iter().map(Vec::as_slice).collect(),
        targets: &response.targets,
        target_files: response.target_files.iter().map(|f| (f.path.as_str(), f.raw.as_slice())).collect(),
        client_configs: response.client_configs.iter().map(String::as_str).collect(),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The next batch of the loader's verdicts; `None` once the push task has gone. Never
/// completes without a push task.
async fn next_verdicts(loader: Option<&mut PusherHandle>) -> Option<Vec<Verdict>> {
    match loader {
        Some(loader) => loader.verdicts.recv().await,
        None => std::future::pending().await,
    }
}
