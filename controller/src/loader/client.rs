//! A `loader.v1.Loader` client on the loader's unix socket.
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use shared_proto::loader::v1::loader_client::LoaderClient;
use tonic::transport::{Channel, Endpoint};

/// A lazily connecting channel: a loader that is down (or not there yet) makes calls fail
/// with UNAVAILABLE, which the pusher retries, instead of failing here.
pub fn connect(socket: &Path) -> LoaderClient<Channel> {
    let path: PathBuf = socket.to_path_buf();
    // The URI is required by the API but unused: every connection goes to the socket.
    let channel = Endpoint::from_static("http://loader.invalid").connect_with_connector_lazy(
        tower::service_fn(move |_| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
        }),
    );
    LoaderClient::new(channel)
}
