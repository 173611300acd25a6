//! The gRPC API, served only on a unix socket: `loader.v1.Loader`, `grpc.health.v1` and
//! server reflection, every call checked against the peer-credential allow-list.
mod audit;
mod auth;
mod convert;
mod remote;
mod service;
mod socket;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use shared_proto::loader::v1 as pb;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;

pub use audit::AuditContext;
pub use auth::{AllowList, Role};
pub use convert::kernel as kernel_report;
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
    /// Peer gids allowed to call.
    pub allowed_gids: Vec<u32>,
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

/// Serves the API on `listener` until `shutdown` is cancelled.
pub async fn serve(
    api: LoaderApi,
    listener: tokio::net::UnixListener,
    allow: AllowList,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<pb::loader_server::LoaderServer<LoaderApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    tonic::transport::Server::builder()
        .layer(tonic::service::InterceptorLayer::new(move |request| allow.check(request)))
        .add_service(pb::loader_server::LoaderServer::new(api))
        .add_service(health_service)
        .add_service(reflection)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown.cancelled())
        .await?;
    Ok(())
}
