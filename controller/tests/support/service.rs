//! A small remote-config service for tests. It is the protocol peer, not a mock of the
//! controller: it speaks `ClientGetConfigs` over real gRPC on 127.0.0.1 and answers like
//! the reference service (newer roots, targets when the version differs, only the files
//! the client lacks, empty in the steady state). Tests can also make it answer with a
//! fixed gRPC status, require a token, and inspect every request it received.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use shared_proto::remoteconfig::v1::config_service_server::{ConfigService, ConfigServiceServer};
use shared_proto::remoteconfig::v1::{ClientGetConfigsRequest, ClientGetConfigsResponse, File};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};

/// What the service publishes.
#[derive(Clone, Default)]
pub struct Published {
    /// Raw roots, version 1 first.
    pub roots: Vec<Vec<u8>>,
    pub targets: Vec<u8>,
    pub targets_version: u64,
    /// (path, content) of every config the client should hold.
    pub files: Vec<(String, Vec<u8>)>,
}

/// One request as the service saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub authorization: Option<String>,
    pub request: ClientGetConfigsRequest,
}

#[derive(Default)]
struct Inner {
    published: Published,
    fail_with: Option<Code>,
    required_token: Option<String>,
    seen: Vec<Seen>,
}

#[derive(Clone, Default)]
pub struct TestService {
    inner: Arc<Mutex<Inner>>,
}

impl TestService {
    /// Serves on an ephemeral 127.0.0.1 port until the test's runtime stops.
    pub async fn start(self) -> SocketAddr {
        self.start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Serves TLS with the PEM certificate chain and key on an ephemeral 127.0.0.1 port.
    pub async fn start_tls(self, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> SocketAddr {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
        tokio::spawn(
            tonic::transport::Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(ConfigServiceServer::new(self))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        addr
    }

    /// Serves on `addr` (a loopback address).
    pub async fn start_on(self, addr: SocketAddr) -> SocketAddr {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ConfigServiceServer::new(self))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        addr
    }

    pub fn publish(&self, published: Published) {
        self.inner.lock().unwrap().published = published;
    }

    pub fn fail_with(&self, code: Option<Code>) {
        self.inner.lock().unwrap().fail_with = code;
    }

    pub fn require_token(&self, token: &str) {
        self.inner.lock().unwrap().required_token = Some(token.to_owned());
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    fn answer(published: &Published, req: &ClientGetConfigsRequest) -> ClientGetConfigsResponse {
        let state = req.client.as_ref().and_then(|c| c.state.clone()).unwrap_or_default();
        let roots: Vec<Vec<u8>> = published.roots.iter().skip(state.root_version as usize).cloned().collect();
        if state.targets_version == published.targets_version {
            return ClientGetConfigsResponse { roots, ..Default::default() };
        }
        let cached = |path: &str, raw: &[u8]| {
            let sha = hex::encode(Sha256::digest(raw));
            req.cached_target_files.iter().any(|c| c.path == path && c.hashes.iter().any(|h| h.hash == sha))
        };
        ClientGetConfigsResponse {
            roots,
            targets: published.targets.clone(),
            target_files: published
                .files
                .iter()
                .filter(|(p, raw)| !cached(p, raw))
                .map(|(p, raw)| File { path: p.clone(), raw: raw.clone() })
                .collect(),
            client_configs: published.files.iter().map(|(p, _)| p.clone()).collect(),
            config_status: 0,
        }
    }
}

#[tonic::async_trait]
impl ConfigService for TestService {
    async fn client_get_configs(
        &self,
        request: Request<ClientGetConfigsRequest>,
    ) -> Result<Response<ClientGetConfigsResponse>, Status> {
        let authorization =
            request.metadata().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut inner = self.inner.lock().unwrap();
        inner.seen.push(Seen { authorization: authorization.clone(), request: request.get_ref().clone() });
        if let Some(code) = inner.fail_with {
            return Err(Status::new(code, "test service configured to fail"));
        }
        if let Some(token) = &inner.required_token
            && authorization.as_deref() != Some(&format!("Bearer {token}"))
        {
            return Err(Status::unauthenticated("unknown bearer token"));
        }
        Ok(Response::new(Self::answer(&inner.published, request.get_ref())))
    }
}
