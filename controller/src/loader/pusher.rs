//! The task that makes the loader run what is in force (see the module above for the rules).
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use shared_proto::loader::v1 as pb;
use shared_proto::loader::v1::loader_client::LoaderClient;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{debug, info, warn};
use trust::ApplyState;

use super::{Desired, DesiredConfig, Verdict, client};

/// How often the loader is asked what it runs: bounds how long a restarted loader waits
/// for its configs (a `GetConfig` reads no map, so this costs the loader next to nothing).
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// What identifies a product's config set: (path, version, sha256) in path order.
type Fingerprint = Vec<(String, u64, String)>;

/// The poll loop's ends of the channels.
pub struct PusherHandle {
    pub desired: watch::Sender<Arc<Desired>>,
    pub verdicts: mpsc::UnboundedReceiver<Vec<Verdict>>,
}

pub struct Pusher {
    client: LoaderClient<Channel>,
    desired: watch::Receiver<Arc<Desired>>,
    verdicts: mpsc::UnboundedSender<Vec<Verdict>>,
    /// The loader process last seen; a new one runs nothing remote yet.
    instance: String,
    /// Per product: the set the loader refused (not pushed again until it changes).
    refused: HashMap<String, Fingerprint>,
    /// Per product: the set whose acknowledgement was already handed to the poll loop.
    reported: HashMap<String, Fingerprint>,
    down_since_logged: bool,
}

impl Pusher {
    pub fn new(socket: &Path) -> (Self, PusherHandle) {
        let (desired_tx, desired_rx) = watch::channel(Arc::new(Desired::default()));
        let (verdict_tx, verdict_rx) = mpsc::unbounded_channel();
        let pusher = Self {
            client: client::connect(socket),
            desired: desired_rx,
            verdicts: verdict_tx,
            instance: String::new(),
            refused: HashMap::new(),
            reported: HashMap::new(),
            down_since_logged: false,
        };
        (pusher, PusherHandle { desired: desired_tx, verdicts: verdict_rx })
    }

    /// Converges the loader until `cancel` fires: on every change of what is in force,
    /// and every [`CHECK_EVERY`] (to notice a restarted loader).
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            match self.round().await {
                Ok(()) => self.down_since_logged = false,
                Err(status) if !self.down_since_logged => {
                    self.down_since_logged = true;
                    info!(code = ?status.code(), message = status.message(), "the loader is not answering; will retry");
                }
                Err(status) => debug!(code = ?status.code(), "the loader is still not answering"),
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                changed = self.desired.changed() => if changed.is_err() { break },
                () = tokio::time::sleep(CHECK_EVERY) => {}
            }
        }
    }

    /// One comparison of what is in force with what the loader runs, and the pushes.
    async fn round(&mut self) -> Result<(), tonic::Status> {
        let desired = self.desired.borrow_and_update().clone();
        let loader = self.client.get_config(pb::GetConfigRequest {}).await?.into_inner();
        if loader.instance != self.instance {
            if !self.instance.is_empty() {
                info!(instance = %loader.instance, "a new loader process: pushing what is in force");
            }
            self.instance = loader.instance.clone();
            self.refused.clear();
        }
        for product in trust::products::ALL {
            self.converge(product, &desired, &loader).await?;
        }
        Ok(())
    }

    async fn converge(
        &mut self,
        product: &str,
        desired: &Desired,
        loader: &pb::GetConfigResponse,
    ) -> Result<(), tonic::Status> {
        let want: Fingerprint = desired.product(product).map(fingerprint).collect();
        let have = applied(loader, product);
        if want == have {
            if self.reported.get(product) != Some(&want) {
                let verdicts = want.iter().map(|(p, v, _)| acknowledged(p, *v)).collect();
                self.send(product, &want, verdicts);
            }
            return Ok(());
        }
        if desired.targets.is_empty() || self.refused.get(product) == Some(&want) {
            return Ok(());
        }
        let configs: Vec<&DesiredConfig> = desired.product(product).collect();
        let verdicts = self.push(product, desired, &configs).await?;
        if verdicts.iter().any(|v| v.state == ApplyState::Error) {
            self.refused.insert(product.to_owned(), want.clone());
        }
        self.send(product, &want, verdicts);
        Ok(())
    }

    /// `ApplyConfig` for one product. A refusal of the whole request is a verdict on every
    /// config in it; anything else (loader down, restarting) is returned for a retry.
    async fn push(
        &mut self,
        product: &str,
        desired: &Desired,
        configs: &[&DesiredConfig],
    ) -> Result<Vec<Verdict>, tonic::Status> {
        let request = pb::ApplyConfigRequest {
            roots: desired.roots.iter().map(|r| r.to_vec()).collect(),
            targets: desired.targets.to_vec(),
            products: vec![product.to_owned()],
            configs: configs
                .iter()
                .map(|c| pb::RemoteConfigFile { path: c.path.clone(), raw: c.raw.to_vec() })
                .collect(),
        };
        match self.client.apply_config(request).await {
            Ok(response) => Ok(response.into_inner().results.iter().map(verdict).collect()),
            Err(status) if is_refusal(&status) => {
                warn!(product, error = status.message(), "the loader refused the configs");
                if configs.is_empty() {
                    self.refused.insert(product.to_owned(), Vec::new());
                }
                let error = format!("the loader refused them: {}", status.message());
                Ok(configs.iter().map(|c| refused(&c.path, c.version, &error)).collect())
            }
            Err(status) => Err(status),
        }
    }

    fn send(&mut self, product: &str, want: &Fingerprint, verdicts: Vec<Verdict>) {
        if verdicts.iter().all(|v| v.state == ApplyState::Acknowledged) {
            self.reported.insert(product.to_owned(), want.clone());
        } else {
            self.reported.remove(product);
        }
        if !verdicts.is_empty() {
            // The poll loop owns the receiver for the whole run; a send only fails at shutdown.
            let _ = self.verdicts.send(verdicts);
        }
    }
}

/// Codes by which the loader refuses a request itself; every other one is transient.
fn is_refusal(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(status.code(), InvalidArgument | FailedPrecondition | PermissionDenied | Unimplemented)
}

fn fingerprint(c: &DesiredConfig) -> (String, u64, String) {
    (c.path.clone(), c.version, c.sha256.clone())
}

/// The product's configs the loader runs, as a fingerprint.
fn applied(loader: &pb::GetConfigResponse, product: &str) -> Fingerprint {
    let mut have: Fingerprint = loader
        .remote_configs
        .iter()
        .filter(|r| r.product == product && r.state == pb::ConfigApplyState::Applied as i32)
        .map(|r| (r.path.clone(), r.version, r.sha256.clone()))
        .collect();
    have.sort();
    have
}

fn acknowledged(path: &str, version: u64) -> Verdict {
    Verdict { path: path.to_owned(), version, state: ApplyState::Acknowledged, error: String::new() }
}

fn refused(path: &str, version: u64, error: &str) -> Verdict {
    Verdict { path: path.to_owned(), version, state: ApplyState::Error, error: error.to_owned() }
}

fn verdict(r: &pb::ConfigResult) -> Verdict {
    match r.state == pb::ConfigApplyState::Applied as i32 {
        true => acknowledged(&r.path, r.version),
        false => refused(&r.path, r.version, &r.error),
    }
}
