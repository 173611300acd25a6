//! `serve`: the `ClientGetConfigs` gRPC endpoint.
//!
//! Each call: check the bearer token, read the repository snapshot (reloaded if changed on
//! disk), decide what the client lacks (`answer`), read just those files, answer, and
//! append one line to the request log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shared_proto::remoteconfig::v1::config_service_server::{ConfigService, ConfigServiceServer};
use shared_proto::remoteconfig::v1::{ClientGetConfigsRequest, ClientGetConfigsResponse, ConfigStatus, File};
use tonic::metadata::MetadataMap;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};

use crate::answer::{self, ClientHolds};
use crate::repo::Layout;
use crate::request_log::{AnswerLine, Line, RequestLog};
use crate::snapshot::SnapshotCache;
use crate::tokens::TokenStore;

/// Largest request accepted: a client lists at most a few thousand cached files.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Errors that stop `serve` from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to serve plaintext on {addr}: plaintext is allowed on loopback only; pass \
         --tls-cert and --tls-key, or listen on 127.0.0.1 / ::1"
    )]
    PlaintextNotLoopback { addr: SocketAddr },
    #[error("cannot read TLS file {path}: {source}")]
    TlsFile { path: PathBuf, source: std::io::Error },
    #[error("--tls-cert and --tls-key go together: give both or neither")]
    TlsHalf,
    #[error("cannot set up the gRPC server on {addr}: {source}")]
    Transport { addr: SocketAddr, source: tonic::transport::Error },
}

/// Everything `serve` needs.
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub disabled: bool,
}

/// The service state shared by every call.
pub struct RemoteConfigService {
    snapshots: SnapshotCache,
    tokens: TokenStore,
    log: Option<RequestLog>,
    disabled: bool,
}

impl RemoteConfigService {
    pub fn new(layout: Layout, tokens: TokenStore, log: Option<RequestLog>, disabled: bool) -> Self {
        Self { snapshots: SnapshotCache::new(layout), tokens, log, disabled }
    }

    fn record(
        &self,
        request: &ClientGetConfigsRequest,
        token_name: Option<String>,
        code: Code,
        answer: Option<AnswerLine>,
    ) {
        if let Some(log) = &self.log {
            let mut line = Line::new(request, token_name, code_name(code));
            line.answer = answer;
            log.append(&line);
        }
    }

    /// Who is calling: the name of the token presented, or UNAUTHENTICATED.
    fn authenticate(&self, metadata: &MetadataMap) -> Result<String, Status> {
        let Some(token) = bearer_token(metadata) else {
            return Err(Status::unauthenticated("missing `authorization: Bearer <token>` metadata"));
        };
        match self.tokens.authenticate(token.as_bytes()) {
            Ok(Some(name)) => Ok(name),
            Ok(None) => Err(Status::unauthenticated("bearer token not accepted by this service")),
            Err(e) => {
                tracing::error!(error = %e, "tokens file unusable; refusing every client");
                Err(Status::unauthenticated("the service cannot check tokens right now"))
            }
        }
    }

    /// Builds the answer: only what the client lacks.
    fn answer(
        &self,
        request: &ClientGetConfigsRequest,
    ) -> Result<(ClientGetConfigsResponse, AnswerLine), Status> {
        let snapshot = self.snapshots.get().map_err(|e| {
            tracing::error!(error = %e, "repository unreadable");
            // Paths and parse details stay in the service's log, not in the answer.
            Status::unavailable("the service cannot read its repository; retry later")
        })?;
        let expired = snapshot.expired_at(jiff::Timestamp::now());
        let plan = answer::plan(&snapshot.served, &client_holds(request), expired);
        let roots = snapshot
            .roots
            .iter()
            .filter(|(v, _)| plan.roots.contains(v))
            .map(|(_, raw)| raw.clone())
            .collect();
        let targets = if plan.send_targets { snapshot.targets_raw.clone() } else { Vec::new() };
        let target_files = plan.files.iter().filter_map(|path| self.read_file(path)).collect();
        let config_status = if plan.expired { ConfigStatus::Expired } else { ConfigStatus::Ok };
        let response = ClientGetConfigsResponse {
            roots,
            targets,
            target_files,
            client_configs: plan.client_configs,
            config_status: config_status.into(),
        };
        let summary = AnswerLine {
            roots: response.roots.len(),
            targets_version: plan.send_targets.then_some(snapshot.served.targets_version),
            target_files: response.target_files.len(),
            client_configs: response.client_configs.len(),
        };
        Ok((response, summary))
    }

    /// A config file's bytes as stored; a missing file is left out (the client then
    /// rejects the update, which is the honest outcome) and logged.
    fn read_file(&self, path: &str) -> Option<File> {
        let file = self.snapshots.layout().target_file(path)?;
        match std::fs::read(&file) {
            Ok(raw) => Some(File { path: path.to_owned(), raw }),
            Err(e) => {
                tracing::error!(path = %file.display(), error = %e, "config file named in targets is unreadable");
                None
            }
        }
    }
}

#[tonic::async_trait]
impl ConfigService for RemoteConfigService {
    async fn client_get_configs(
        &self,
        request: Request<ClientGetConfigsRequest>,
    ) -> Result<Response<ClientGetConfigsResponse>, Status> {
        // Token and repository checks stat/read small files: keep that blocking I/O off
        // the async workers' hot path.
        let auth = if self.disabled {
            None
        } else {
            Some(tokio::task::block_in_place(|| self.authenticate(request.metadata())))
        };
        let body = request.into_inner();
        let client_id = body.client.as_ref().map(|c| c.id.as_str()).unwrap_or_default();
        let span = tracing::info_span!("client_get_configs", client_id);
        let _entered = span.enter();
        let (token_name, result) = match auth {
            None => (None, Err(Status::unimplemented("remote configuration is disabled on this service"))),
            Some(Err(status)) => (None, Err(status)),
            Some(Ok(name)) => (Some(name), tokio::task::block_in_place(|| self.answer(&body))),
        };
        match result {
            Ok((response, summary)) => {
                tracing::debug!(?summary, "answered");
                self.record(&body, token_name, Code::Ok, Some(summary));
                Ok(Response::new(response))
            }
            Err(status) => {
                tracing::info!(code = ?status.code(), message = status.message(), "refused");
                self.record(&body, token_name, status.code(), None);
                Err(status)
            }
        }
    }
}

/// The token in `authorization: Bearer <token>`, if present.
fn bearer_token(metadata: &MetadataMap) -> Option<String> {
    let value = metadata.get("authorization")?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

fn client_holds(request: &ClientGetConfigsRequest) -> ClientHolds<'_> {
    let client = request.client.as_ref();
    let state = client.and_then(|c| c.state.as_ref());
    let cached = request
        .cached_target_files
        .iter()
        .filter_map(|f| {
            let sha = f.hashes.iter().find(|h| h.algorithm.eq_ignore_ascii_case("sha256"))?;
            Some((f.path.as_str(), sha.hash.as_str()))
        })
        .collect();
    ClientHolds {
        root_version: state.map_or(0, |s| s.root_version),
        targets_version: state.map_or(0, |s| s.targets_version),
        products: client.map_or(&[], |c| c.products.as_slice()),
        kernels: client
            .and_then(|c| c.client_agent.as_ref())
            .map(|a| a.tags.iter().filter_map(|t| t.strip_prefix("kernel:")).collect())
            .unwrap_or_default(),
        cached,
    }
}

/// The request log's `status` word for a gRPC code.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Unauthenticated => "unauthenticated",
        Code::Unimplemented => "unimplemented",
        Code::Unavailable => "unavailable",
        Code::InvalidArgument => "invalid_argument",
        _ => "error",
    }
}

/// Plaintext only on loopback: anything else must be TLS.
pub fn check_listen(options: &ServeOptions) -> Result<(), ServeError> {
    if options.tls.is_none() && !options.listen.ip().is_loopback() {
        return Err(ServeError::PlaintextNotLoopback { addr: options.listen });
    }
    Ok(())
}

fn read_tls(path: &Path) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path).map_err(|source| ServeError::TlsFile { path: path.to_owned(), source })
}

/// Runs the server until `shutdown` resolves.
pub async fn run(
    service: RemoteConfigService,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    check_listen(&options)?;
    let addr = options.listen;
    let transport = |source| ServeError::Transport { addr, source };
    let mut builder = Server::builder();
    if let Some((cert, key)) = &options.tls {
        // Two rustls providers are linked (ring via tonic, aws-lc via tough), so rustls
        // cannot pick one itself: choose ring, as tonic's `tls-ring` intends. An error
        // only means one is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let identity = Identity::from_pem(read_tls(cert)?, read_tls(key)?);
        builder = builder.tls_config(ServerTlsConfig::new().identity(identity)).map_err(transport)?;
    }
    let service =
        ConfigServiceServer::from_arc(Arc::new(service)).max_decoding_message_size(MAX_REQUEST_BYTES);
    tracing::info!(%addr, tls = options.tls.is_some(), disabled = options.disabled, "serving ClientGetConfigs");
    builder.add_service(service).serve_with_shutdown(addr, shutdown).await.map_err(transport)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_is_parsed_case_insensitively() {
        let mut md = MetadataMap::new();
        assert_eq!(bearer_token(&md), None);
        md.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&md).as_deref(), Some("abc"));
        md.insert("authorization", "bearer  xyz ".parse().unwrap());
        assert_eq!(bearer_token(&md).as_deref(), Some("xyz"));
        md.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&md), None);
        md.insert("authorization", "Bearer".parse().unwrap());
        assert_eq!(bearer_token(&md), None);
    }

    #[test]
    fn plaintext_is_refused_off_loopback() {
        let opts = |listen: &str, tls| ServeOptions { listen: listen.parse().unwrap(), tls, disabled: false };
        assert!(check_listen(&opts("127.0.0.1:1", None)).is_ok());
        assert!(check_listen(&opts("[::1]:1", None)).is_ok());
        assert!(check_listen(&opts("0.0.0.0:1", None)).is_err());
        assert!(check_listen(&opts("10.0.0.1:1", None)).is_err());
        let tls = Some((PathBuf::from("c"), PathBuf::from("k")));
        assert!(check_listen(&opts("0.0.0.0:1", tls)).is_ok());
    }
}
