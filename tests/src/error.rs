//! Errors of the harness: which command or namespace operation failed, and its output.
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("running `{command}`: {source} (is it installed? apt-get install iproute2 nftables conntrack)")]
    Spawn { command: String, source: io::Error },
    #[error("`{command}` exited with {status}: {stderr}")]
    Command { command: String, status: String, stderr: String },
    #[error("entering network namespace {netns}: {reason}")]
    Enter { netns: String, reason: String },
    #[error("{what} in network namespace {netns}: {source}")]
    Io { what: String, netns: String, source: io::Error },
    #[error("{what}: {source}")]
    Bpf { what: String, source: io::Error },
    #[error("cannot parse `conntrack -L` line {line:?}: {reason}")]
    Oracle { line: String, reason: String },
}
