//! The request log: one JSON line per `ClientGetConfigs` call, for operators and for the
//! end-to-end tests, which read what the controller reported (errors, apply states, which
//! token it used). It holds the token's *name*, never the token.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use shared_proto::remoteconfig::v1::ClientGetConfigsRequest;

/// One logged request.
#[derive(Debug, Serialize)]
pub struct Line {
    pub unix_ms: u64,
    pub token_name: Option<String>,
    pub client_id: String,
    pub products: Vec<String>,
    pub root_version: u64,
    pub targets_version: u64,
    pub has_error: bool,
    pub error: String,
    pub config_states: Vec<ConfigStateLine>,
    pub cached_files: usize,
    pub backend_client_state_len: usize,
    pub status: &'static str,
    /// What was sent back (absent when the call was refused).
    pub answer: Option<AnswerLine>,
}

/// A summary of an answer, so a reader can tell which request received which update.
#[derive(Debug, Serialize)]
pub struct AnswerLine {
    pub roots: usize,
    /// The served targets version, when the targets document was sent.
    pub targets_version: Option<u64>,
    pub target_files: usize,
    pub client_configs: usize,
}

/// A config state as the client reported it.
#[derive(Debug, Serialize)]
pub struct ConfigStateLine {
    pub id: String,
    pub product: String,
    pub version: u64,
    pub apply_state: u64,
    pub apply_error: String,
}

impl Line {
    /// The logged view of `request`, answered with `status`.
    pub fn new(request: &ClientGetConfigsRequest, token_name: Option<String>, status: &'static str) -> Self {
        let client = request.client.clone().unwrap_or_default();
        let state = client.state.unwrap_or_default();
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            unix_ms,
            token_name,
            client_id: client.id,
            products: client.products,
            root_version: state.root_version,
            targets_version: state.targets_version,
            has_error: state.has_error,
            error: state.error,
            config_states: state
                .config_states
                .into_iter()
                .map(|c| ConfigStateLine {
                    id: c.id,
                    product: c.product,
                    version: c.version,
                    apply_state: c.apply_state,
                    apply_error: c.apply_error,
                })
                .collect(),
            cached_files: request.cached_target_files.len(),
            backend_client_state_len: state.backend_client_state.len(),
            status,
            answer: None,
        }
    }
}

/// Errors from opening the log.
#[derive(Debug, thiserror::Error)]
#[error("cannot open request log {path} for appending: {source}")]
pub struct RequestLogError {
    path: PathBuf,
    source: std::io::Error,
}

/// An append-only JSON-lines file.
pub struct RequestLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl RequestLog {
    pub fn open(path: &Path) -> Result<Self, RequestLogError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| RequestLogError { path: path.to_owned(), source })?;
        Ok(Self { path: path.to_owned(), file: Mutex::new(file) })
    }

    /// Appends one line; a failed write is logged, never fails the request.
    pub fn append(&self, line: &Line) {
        let mut text = match serde_json::to_vec(line) {
            Ok(text) => text,
            Err(e) => return tracing::warn!(error = %e, "cannot encode request log line"),
        };
        text.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = file.write_all(&text) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot append to request log");
        }
    }
}
