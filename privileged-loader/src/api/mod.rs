//! The gRPC API, served only on a unix socket: `loader.v1.Loader`, `grpc.health.v1` and
//! server reflection, every call checked against the peer-credential allow-list.
mod audit;
mod auth;
mod authority;
mod connection;
mod convert;
mod grpc_status;
mod limits;
mod map_walks;
mod peer;
mod quiet_log;
mod remote;
mod service;
mod socket;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shared_proto::loader::v1 as pb;
use tokio_util::sync::CancellationToken;

pub use audit::AuditContext;
pub use auth::{AllowList, Role};
pub use authority::{AuthorityRewriter, RewriteError};
pub use connection::ConnectionStats;
pub use convert::kernel as kernel_report;
pub use limits::Limits;
pub use map_walks::MapWalks;
pub use peer::Peer;
pub use service::LoaderApi;
pub use socket::{SocketError, bind};

/// Section `[api]` of the configuration.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Path of the unix socket. Its directory is created 0750, the socket 0660.
    pub socket: PathBuf,
    /// Group owning the socket and its directory (e.g. the controller's gid), if any.
    pub socket_group: Option<u32>,
    /// Peer uids allowed to call (SO_PEERCRED).
    pub allowed_uids: Vec<u32>,
    /// Peer gids allowed to call: the peer's primary gid or any of its supplementary groups.
    pub allowed_gids: Vec<u32>,
    /// `[api.limits]`: connections, idle timeout, streams, message size, shutdown grace.
    pub limits: Limits,
    /// Peer uids allowed to read only (status, config, conntrack, lock stats; never ApplyConfig).
    pub read_only_uids: Vec<u32>,
    /// Peer gids allowed to read only (e.g. a `loaderctl` users' group).
    pub read_only_gids: Vec<u32>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        let allow = AllowList::default();
        Self {
            socket: PathBuf::from("/run/ebpf-loader/loader.sock"),
            socket_group: None,
            allowed_uids: allow.uids,
            allowed_gids: allow.gids,
            limits: Limits::default(),
            read_only_uids: allow.read_only_uids,
            read_only_gids: allow.read_only_gids,
        }
    }
}

impl ApiConfig {
    /// The roles, as `GetStatus` shows them.
    pub fn access(&self) -> pb::ApiAccess {
        pb::ApiAccess {
            apply_uids: self.allowed_uids.clone(),
            apply_gids: self.allowed_gids.clone(),
            read_only_uids: self.read_only_uids.clone(),
            read_only_gids: self.read_only_gids.clone(),
        }
    }

    pub fn allow_list(&self) -> AllowList {
        AllowList {
            uids: self.allowed_uids.clone(),
            gids: self.allowed_gids.clone(),
            read_only_uids: self.read_only_uids.clone(),
            read_only_gids: self.read_only_gids.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("serving the API on its unix socket: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the API on `listener` until `shutdown` is cancelled; connections still open
/// `limits.shutdown_grace_secs` later are closed.
pub async fn serve(
    api: LoaderApi,
    listener: tokio::net::UnixListener,
    allow: AllowList,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<pb::loader_server::LoaderServer<LoaderApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let loader =
        pb::loader_server::LoaderServer::new(api).max_decoding_message_size(limits.max_message_bytes);
    let force_close = CancellationToken::new();
    let incoming = connection::Incoming::new(
        listener,
        limits.clone(),
        allow.clone(),
        force_close.clone(),
        Arc::new(ConnectionStats::default()),
    );
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_streams_per_connection)
        .layer(tower::util::MapResponseLayer::new(
            grpc_status::fix_status::<tonic::service::interceptor::ResponseBody<tonic::body::Body>>,
        ))
        .layer(tonic::service::InterceptorLayer::new(move |request| allow.check(request)))
        .add_service(loader)
        .add_service(health_service)
        .add_service(reflection)
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    let grace = limits.shutdown_grace();
    let close_after_grace = async move {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "closing the connections still open after the shutdown grace period"
        );
        force_close.cancel();
        // Closed connections end their tasks at once; give them a moment, no more.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await
    };
    tokio::select! {
        served = server => served?,
        _ = close_after_grace => {}
    }
    Ok(())
}
