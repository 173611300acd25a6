//! `config-service`: the reference remote-config service.
//!
//! A publisher side (`init`, `publish`, `remove`, `rotate-root`) that keeps a TUF 1.0
//! repository on disk, and a `serve` side that answers `ClientGetConfigs` from it.

// Tests may unwrap: a panic there is a failed test, not a user-facing crash.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod answer;
mod btf_publish;
mod kernel_banner;
mod keys;
mod metadata;
mod repo;
mod request_log;
mod serve;
mod snapshot;
mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use repo::{ConfigRef, Layout};

#[derive(Parser)]
#[command(version, about = "Reference remote-config service: publish signed TUF configs and serve them")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a repository: root and targets keys (0600), 1.root.json, empty targets.json.
    Init {
        #[arg(long)]
        repo: PathBuf,
        /// Validity of the signed metadata, in days.
        #[arg(long, default_value_t = 365)]
        expires_days: u32,
    },
    /// Add or update a config: bumps its `custom.v` and re-signs targets (version + 1).
    Publish {
        #[arg(long)]
        repo: PathBuf,
        product: String,
        config_id: String,
        file: PathBuf,
        #[arg(long, default_value = "2")]
        org_id: String,
        #[arg(long, default_value = "config.json")]
        name: String,
        #[arg(long, default_value_t = 365)]
        expires_days: u32,
        /// Poll interval (seconds) suggested to clients in the targets' `custom`.
        #[arg(long)]
        refresh_interval_secs: Option<u64>,
    },
    /// Publish a kernel's BTF (product BTF, config id `<arch>-<release>`), minimized with
    /// `bpftool gen min_core_btf` to what the given eBPF objects relocate against.
    PublishBtf {
        #[arg(long)]
        repo: PathBuf,
        /// The project's eBPF objects (`privileged-loader objects --out DIR` writes them).
        #[arg(long = "object", required_unless_present = "full")]
        objects: Vec<PathBuf>,
        /// A kernel's vmlinux ELF or raw BTF file; default: the running kernel's
        /// /sys/kernel/btf/vmlinux.
        #[arg(long)]
        vmlinux: Option<PathBuf>,
        /// That kernel's `uname -r` (with --vmlinux: from a vmlinux's banner, else required).
        #[arg(long)]
        release: Option<String>,
        /// That kernel's `uname -m` (required with --vmlinux).
        #[arg(long)]
        arch: Option<String>,
        /// That kernel's `uname -v` (with --vmlinux: from a vmlinux's banner), checked by the
        /// loader when known.
        #[arg(long)]
        kernel_version: Option<String>,
        /// Publish the whole BTF, not minimized.
        #[arg(long)]
        full: bool,
        /// Do not xz-compress the BTF.
        #[arg(long)]
        no_compress: bool,
        #[arg(long, default_value = "2")]
        org_id: String,
        #[arg(long, default_value_t = 365)]
        expires_days: u32,
    },
    /// Remove a config and re-sign targets.
    Remove {
        #[arg(long)]
        repo: PathBuf,
        product: String,
        config_id: String,
        #[arg(long, default_value = "2")]
        org_id: String,
        #[arg(long, default_value_t = 365)]
        expires_days: u32,
    },
    /// Replace the root key: writes <N+1>.root.json signed by the old and the new root keys.
    RotateRoot {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long, default_value_t = 365)]
        expires_days: u32,
    },
    /// Serve ClientGetConfigs over gRPC (TLS, or plaintext on loopback only).
    Serve {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long)]
        listen: SocketAddr,
        /// One `name:token` per line; re-read when it changes.
        #[arg(long)]
        tokens_file: PathBuf,
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Append one JSON line per request to this file.
        #[arg(long)]
        request_log: Option<PathBuf>,
        /// Answer every call UNIMPLEMENTED ("remote config is disabled here").
        #[arg(long)]
        disable_remote_config: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Init { repo, expires_days } => {
            repo::init(&Layout::new(&repo), expires_days).await?;
            println!("initialised repository {}", repo.display());
        }
        Command::Publish {
            repo,
            product,
            config_id,
            file,
            org_id,
            name,
            expires_days,
            refresh_interval_secs,
        } => {
            let content = std::fs::read(&file)
                .with_context(|| format!("cannot read config file {}", file.display()))?;
            let config = ConfigRef { org_id: &org_id, product: &product, config_id: &config_id, name: &name };
            let layout = Layout::new(&repo);
            let version =
                repo::publish(&layout, &config, &content, expires_days, refresh_interval_secs).await?;
            println!("published {} version {version}", config.path()?);
        }
        Command::PublishBtf {
            repo,
            objects,
            vmlinux,
            release,
            arch,
            kernel_version,
            full,
            no_compress,
            org_id,
            expires_days,
        } => {
            let kernel = btf_publish::KernelBtf { vmlinux, release, arch, kernel_version };
            let prepared = btf_publish::prepare(&kernel, &objects, full, !no_compress)?;
            let config = ConfigRef {
                org_id: &org_id,
                product: btf_publish::PRODUCT,
                config_id: &prepared.config_id,
                name: "btf.json",
            };
            let version =
                repo::publish(&Layout::new(&repo), &config, &prepared.content, expires_days, None).await?;
            println!(
                "published {} version {version}: BTF {} bytes (full BTF {} bytes), payload {} bytes",
                config.path()?,
                prepared.btf_bytes,
                prepared.full_bytes,
                prepared.content.len()
            );
        }
        Command::Remove { repo, product, config_id, org_id, expires_days } => {
            let removed =
                repo::remove(&Layout::new(&repo), &org_id, &product, &config_id, expires_days).await?;
            println!("removed {}", removed.join(", "));
        }
        Command::RotateRoot { repo, expires_days } => {
            let version = repo::rotate_root(&Layout::new(&repo), expires_days).await?;
            println!("rotated root to version {version}");
        }
        Command::Serve {
            repo,
            listen,
            tokens_file,
            tls_cert,
            tls_key,
            request_log,
            disable_remote_config,
        } => {
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => return Err(serve::ServeError::TlsHalf.into()),
            };
            let options = serve::ServeOptions { listen, tls, disabled: disable_remote_config };
            serve::check_listen(&options)?;
            let tokens = tokens::TokenStore::open(&tokens_file)?;
            let log = request_log.as_deref().map(request_log::RequestLog::open).transpose()?;
            let service =
                serve::RemoteConfigService::new(Layout::new(&repo), tokens, log, disable_remote_config);
            serve::run(service, options, shutdown_signal()).await?;
        }
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM, so `serve` stops cleanly under a supervisor.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
