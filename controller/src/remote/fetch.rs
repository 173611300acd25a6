//! The fetcher: one gRPC channel to the config service, and a bearer token read from its
//! file for every single call.
//!
//! The token is re-read on every request and every retry because the file is rotated by
//! something else (a secrets mount) at any time; caching it would turn every rotation into
//! an outage. The token never appears in logs or errors: only the file's path does.
//!
//! Transport policy: `https://` uses rustls with the configured CA bundle (or the system
//! roots when none is given). Plaintext `http://` is refused unless the configuration
//! says `plaintext_for_development = true`, and even then only to a loopback address: the
//! token would otherwise cross a network in clear, and on a `hostNetwork` pod the node's
//! loopback is shared with every other process of the node.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shared_proto::remoteconfig::v1::config_service_client::ConfigServiceClient;
use shared_proto::remoteconfig::v1::{ClientGetConfigsRequest, ClientGetConfigsResponse};
use tonic::Code;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Uri};

/// What the fetcher needs from the configuration.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    pub endpoint: String,
    /// Accept `http://` to loopback (development only).
    pub plaintext_for_development: bool,
    pub token_file: PathBuf,
    /// PEM CA bundle for TLS; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    pub max_message_bytes: usize,
    pub request_timeout: Duration,
}

/// A failed fetch, with the object that failed and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("remote_config.endpoint {endpoint:?} is not a usable URL: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    #[error(
        "remote_config.endpoint {endpoint:?}: plaintext http:// is only allowed to a loopback address (the bearer token would travel in clear); use https://"
    )]
    PlaintextNotLoopback { endpoint: String },
    #[error(
        "remote_config.endpoint {endpoint:?}: plaintext http:// is for development only; use https:// (with remote_config.ca_file for a private CA), or set remote_config.plaintext_for_development = true (flag --plaintext-for-development) on a development machine"
    )]
    PlaintextNotEnabled { endpoint: String },
    #[error("cannot read the CA bundle remote_config.ca_file {path}: {source}")]
    CaFile { path: PathBuf, source: std::io::Error },
    #[error("cannot set up TLS for {endpoint}: {source}")]
    Tls { endpoint: String, source: tonic::transport::Error },
    #[error(
        "cannot read the bearer token file {path}: {source} (check remote_config.token_file and its permissions)"
    )]
    TokenRead { path: PathBuf, source: std::io::Error },
    #[error("the bearer token file {path} is empty")]
    TokenEmpty { path: PathBuf },
    #[error("the bearer token in {path} contains characters that cannot go in an HTTP header")]
    TokenInvalid { path: PathBuf },
    #[error("ClientGetConfigs to {endpoint} failed: {code:?}: {message}")]
    Status { endpoint: String, code: Code, message: String },
}

/// How the poll loop should treat a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The service says remote config is off (`UNIMPLEMENTED`): stop polling.
    Disabled,
    /// The service could not be reached or is overloaded: transient, retry.
    Unreachable,
    /// The service answered with an error, or local setup (token) failed: retry with backoff.
    Rejected,
}

impl FetchError {
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Status { code: Code::Unimplemented, .. } => FailureKind::Disabled,
            Self::Status { code: Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled, .. } => {
                FailureKind::Unreachable
            }
            _ => FailureKind::Rejected,
        }
    }
}

/// A client for `ConfigService`, connected lazily (the first call dials).
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: ConfigServiceClient<Channel>,
    settings: FetchSettings,
}

impl Fetcher {
    /// Checks the endpoint against the transport policy and prepares the channel.
    pub fn new(settings: FetchSettings) -> Result<Self, FetchError> {
        let endpoint = endpoint(&settings)?;
        let channel = endpoint.connect_lazy();
        let client = ConfigServiceClient::new(channel)
            .max_decoding_message_size(settings.max_message_bytes)
            .max_encoding_message_size(settings.max_message_bytes);
        Ok(Self { client, settings })
    }

    /// One `ClientGetConfigs` call, with a token read afresh from its file.
    pub async fn get_configs(
        &mut self,
        request: ClientGetConfigsRequest,
    ) -> Result<ClientGetConfigsResponse, FetchError> {
        let authorization = bearer(&self.settings.token_file)?;
        let mut call = tonic::Request::new(request);
        call.metadata_mut().insert("authorization", authorization);
        call.set_timeout(self.settings.request_timeout);
        match self.client.client_get_configs(call).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => {
                let mut message = describe(&status);
                if matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied) {
                    let path = self.settings.token_file.display();
                    message.push_str(&format!(" (the service refused the bearer token read from {path})"));
                }
                Err(FetchError::Status {
                    endpoint: self.settings.endpoint.clone(),
                    code: status.code(),
                    message,
                })
            }
        }
    }
}

/// The status message, plus the transport cause (e.g. "connection refused") if any.
fn describe(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Bearer <token>` from `path`, marked sensitive so tonic/hyper never print it.
fn bearer(path: &Path) -> Result<AsciiMetadataValue, FetchError> {
    let raw = std::fs::read_to_string(path)
        .map_err(|source| FetchError::TokenRead { path: path.to_owned(), source })?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(FetchError::TokenEmpty { path: path.to_owned() });
    }
    let mut value = AsciiMetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| FetchError::TokenInvalid { path: path.to_owned() })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Whether the endpoint is TLS or (loopback-only) plaintext.
#[derive(Debug, PartialEq, Eq)]
enum Transport {
    Tls { host: String },
    Plaintext,
}

/// Applies the transport policy to `endpoint`; pure, so it is unit-tested.
fn transport_for(endpoint: &str, plaintext_for_development: bool) -> Result<Transport, FetchError> {
    let bad =
        |reason: &str| FetchError::BadEndpoint { endpoint: endpoint.to_owned(), reason: reason.to_owned() };
    let uri: Uri =
        endpoint.parse().map_err(|e: tonic::codegen::http::uri::InvalidUri| bad(&e.to_string()))?;
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(Transport::Tls { host: host.trim_matches(['[', ']']).to_owned() }),
        Some("http") if !is_loopback(host) => {
            Err(FetchError::PlaintextNotLoopback { endpoint: endpoint.to_owned() })
        }
        Some("http") if plaintext_for_development => Ok(Transport::Plaintext),
        Some("http") => Err(FetchError::PlaintextNotEnabled { endpoint: endpoint.to_owned() }),
        _ => Err(bad("the scheme must be https://")),
    }
}

/// Loopback IP literals (any of 127/8, ::1) and the name `localhost`.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_matches(['[', ']']);
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Dependencies enable two rustls crypto backends (ring for tonic, aws-lc-rs for tough),
/// and rustls then refuses to guess which one to use: pick ring explicitly, once per
/// process. An error only means a provider is already installed, which is what we need.
fn select_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn endpoint(settings: &FetchSettings) -> Result<Endpoint, FetchError> {
    let transport = transport_for(&settings.endpoint, settings.plaintext_for_development)?;
    let endpoint = Endpoint::from_shared(settings.endpoint.clone())
        .map_err(|e| FetchError::BadEndpoint { endpoint: settings.endpoint.clone(), reason: e.to_string() })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let Transport::Tls { host } = transport else {
        return Ok(endpoint);
    };
    select_crypto_provider();
    let mut tls = ClientTlsConfig::new().domain_name(host);
    tls = match &settings.ca_file {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|source| FetchError::CaFile { path: path.clone(), source })?;
            tls.ca_certificate(Certificate::from_pem(pem))
        }
        None => tls.with_native_roots(),
    };
    endpoint.tls_config(tls).map_err(|source| FetchError::Tls { endpoint: settings.endpoint.clone(), source })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::Write;

    use super::*;

    #[test]
    fn plaintext_only_to_loopback_and_only_when_enabled() {
        for ok in ["http://127.0.0.1:7443", "http://127.9.9.9:1", "http://[::1]:7443", "http://localhost:80"]
        {
            assert_eq!(transport_for(ok, true).unwrap(), Transport::Plaintext, "{ok}");
            let refused = transport_for(ok, false).unwrap_err();
            assert!(matches!(refused, FetchError::PlaintextNotEnabled { .. }), "{ok}");
            assert!(refused.to_string().contains("plaintext_for_development = true"), "{refused}");
        }
        for refused in ["http://10.0.0.1:7443", "http://example.com:7443", "http://[2001:db8::1]:1"] {
            for enabled in [true, false] {
                assert!(
                    matches!(transport_for(refused, enabled), Err(FetchError::PlaintextNotLoopback { .. })),
                    "{refused}"
                );
            }
        }
    }

    #[test]
    fn https_is_tls_with_the_host_as_server_name() {
        assert_eq!(
            transport_for("https://config.example:443", false).unwrap(),
            Transport::Tls { host: "config.example".into() }
        );
        assert!(matches!(transport_for("ftp://x", true), Err(FetchError::BadEndpoint { .. })));
        assert!(matches!(transport_for("not a url", true), Err(FetchError::BadEndpoint { .. })));
    }

    #[test]
    fn token_is_read_trimmed_and_marked_sensitive() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "  s3cret-token  ").unwrap();
        let value = bearer(file.path()).unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer s3cret-token");
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("s3cret"), "Debug must not print the token");
    }

    #[test]
    fn token_errors_name_the_file_and_never_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = bearer(&missing).unwrap_err();
        assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        assert!(matches!(bearer(&empty), Err(FetchError::TokenEmpty { .. })));
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "tok\u{7f}en-secret").unwrap();
        let err = bearer(&bad).unwrap_err();
        assert!(matches!(err, FetchError::TokenInvalid { .. }) && !err.to_string().contains("secret"));
    }

    #[test]
    fn unimplemented_disables_unavailable_retries() {
        let status = |code| FetchError::Status { endpoint: "e".into(), code, message: "m".into() };
        assert_eq!(status(Code::Unimplemented).kind(), FailureKind::Disabled);
        assert_eq!(status(Code::Unavailable).kind(), FailureKind::Unreachable);
        assert_eq!(status(Code::Unauthenticated).kind(), FailureKind::Rejected);
    }
}
