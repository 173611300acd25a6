//! The `loader.v1.Loader` service: status, conntrack listing and lookups, remote config.
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use shared_proto::loader::v1 as pb;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::auth::Role;
use super::map_walks::MapWalks;
use super::{AuditContext, convert, remote};
use crate::conntrack::{Conntracker, Tuple};
use crate::modules::Modules;
use crate::remote_config::RemoteConfigs;
use crate::status::Registry;

/// What the service reads; built once at start-up, shared by every call.
pub struct LoaderApi {
    pub registry: Registry,
    pub kernel: pb::KernelReport,
    /// The running modules; each call reads the instance current at that moment, so a
    /// reload swaps what the next call sees.
    pub modules: Modules,
    pub started_at_unix_ms: i64,
    /// Exec → serving, set once the socket serves.
    pub startup: Arc<OnceLock<Duration>>,
    pub audit: AuditContext,
    /// Turns for calls that walk a whole map (`api.limits.max_concurrent_map_walks`).
    pub walks: MapWalks,
    /// Remote configuration (ApplyConfig, GetConfig).
    pub remote: Arc<RemoteConfigs>,
    /// Who may call what, shown in the status.
    pub access: pb::ApiAccess,
    /// Identifies this process to the controller (a new one is an empty loader).
    pub instance: String,
}

impl LoaderApi {
    fn conntracker(&self) -> Result<Arc<dyn Conntracker>, Status> {
        self.modules.conntracker().ok_or_else(|| {
            Status::unavailable("no conntracker is running: see GetStatus (module \"conntrack\") for why")
        })
    }
}

type EntryStream = Pin<Box<dyn Stream<Item = Result<pb::ConntrackEntries, Status>> + Send>>;

/// Entries per `ListConntrack` message: ~40 KiB of IPv4 entries (~100 KiB of IPv6), far
/// below any client's message limit, and 512 times fewer messages for the async workers
/// to encode and frame than one per entry.
const ENTRIES_PER_MESSAGE: usize = 512;

#[tonic::async_trait]
impl pb::loader_server::Loader for LoaderApi {
    #[tracing::instrument(skip_all, name = "GetStatus")]
    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let fill = self.walks.fill_levels(self.modules.conntracker(), self.modules.assets()).await?;
        let modules = self.registry.modules().iter().map(|m| convert::module(m, &fill)).collect();
        Ok(Response::new(pb::GetStatusResponse {
            kernel: Some(self.kernel.clone()),
            modules,
            assets: self.registry.assets().iter().map(convert::asset).collect(),
            loader_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at_unix_ms: self.started_at_unix_ms,
            startup_us: self.startup.get().map_or(0, |d| d.as_micros() as u64),
            capabilities: crate::privileges::effective(),
            startup_capabilities: self.audit.startup.clone(),
            access: Some(self.access.clone()),
        }))
    }

    #[tracing::instrument(skip_all, name = "ApplyConfig")]
    async fn apply_config(
        &self,
        request: Request<pb::ApplyConfigRequest>,
    ) -> Result<Response<pb::ApplyConfigResponse>, Status> {
        Role::require_apply(&request, "ApplyConfig")?;
        remote::apply(&self.remote, request.into_inner()).await.map(Response::new)
    }

    #[tracing::instrument(skip_all, name = "GetConfig")]
    async fn get_config(
        &self,
        _: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::GetConfigResponse>, Status> {
        Ok(Response::new(remote::config(&self.remote.snapshot().await, &self.instance)))
    }

    type ListConntrackStream = EntryStream;

    #[tracing::instrument(skip_all, name = "ListConntrack")]
    async fn list_conntrack(
        &self,
        request: Request<pb::ListConntrackRequest>,
    ) -> Result<Response<Self::ListConntrackStream>, Status> {
        let netns = request.into_inner().netns;
        let tracker = self.conntracker()?;
        // The walk and the conversion run off the async workers; the batches are streamed.
        let entries = self
            .walks
            .stream(move || {
                let entries = tracker.entries().map_err(|e| Status::internal(e.to_string()))?;
                let mut entries = entries
                    .into_iter()
                    .filter(move |e| netns == 0 || e.netns == netns)
                    .map(|e| convert::entry(&e));
                Ok(std::iter::from_fn(move || {
                    let batch: Vec<_> = entries.by_ref().take(ENTRIES_PER_MESSAGE).collect();
                    (!batch.is_empty()).then_some(pb::ConntrackEntries { entries: batch })
                }))
            })
            .await?;
        Ok(Response::new(Box::pin(entries)))
    }

    #[tracing::instrument(skip_all, name = "GetLockStats")]
    async fn get_lock_stats(
        &self,
        _: Request<pb::GetLockStatsRequest>,
    ) -> Result<Response<pb::GetLockStatsResponse>, Status> {
        let collector = self.modules.lockstats().ok_or_else(|| {
            Status::unavailable(
                "the lock statistics collector was not started: see GetStatus (module \"lockstats\")",
            )
        })?;
        Ok(Response::new((&collector.snapshot()).into()))
    }

    #[tracing::instrument(skip_all, name = "GetAudit")]
    async fn get_audit(
        &self,
        _: Request<pb::GetAuditRequest>,
    ) -> Result<Response<pb::GetAuditResponse>, Status> {
        Ok(Response::new(self.audit.answer()?))
    }

    async fn lookup_translation(
        &self,
        request: Request<pb::LookupTranslationRequest>,
    ) -> Result<Response<pb::LookupTranslationResponse>, Status> {
        let request = request.into_inner();
        let tuple = request.tuple.ok_or_else(|| Status::invalid_argument("tuple is required"))?;
        let tuple =
            Tuple::parse(&tuple.src_addr, tuple.src_port, &tuple.dst_addr, tuple.dst_port, tuple.protocol)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let found =
            self.conntracker()?.lookup(&tuple, request.netns).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(match found {
            Some((translated, netns)) => pb::LookupTranslationResponse {
                found: true,
                translated: Some(convert::tuple(&translated)),
                netns,
            },
            None => pb::LookupTranslationResponse::default(),
        }))
    }
}
