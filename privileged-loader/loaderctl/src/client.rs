//! Connecting to the loader's unix socket, and turning gRPC failures into advice.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use hyper_util::rt::TokioIo;
use shared_proto::loader::v1::loader_client::LoaderClient;
use tonic::transport::{Channel, Endpoint};

/// A channel to the loader's socket.
pub async fn channel(socket: &Path) -> Result<Channel> {
    let path: PathBuf = socket.to_path_buf();
    // The URI is required by the API but unused: every connection goes to the socket.
    let channel = Endpoint::from_static("http://loader.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .with_context(|| {
            format!(
                "cannot connect to the loader at {}: is `privileged-loader run` running, and may you open the socket (group/permissions)? Use --socket to point elsewhere",
                socket.display()
            )
        })?;
    Ok(channel)
}

/// A `loader.v1.Loader` client on `channel`.
pub fn loader(channel: Channel) -> LoaderClient<Channel> {
    LoaderClient::new(channel).max_decoding_message_size(64 << 20)
}

pub fn explain(status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::PermissionDenied => anyhow!("the loader refused this caller: {}", status.message()),
        tonic::Code::Unavailable => anyhow!("the loader cannot answer this now: {}", status.message()),
        tonic::Code::InvalidArgument => anyhow!("invalid request: {}", status.message()),
        _ => anyhow!("the loader answered {:?}: {}", status.code(), status.message()),
    }
}
