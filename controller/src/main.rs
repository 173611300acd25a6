//! `controller`: run the remote-config client, or print its status.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use controller::config::{Config, Overrides, RemoteOverrides};
use controller::metrics::{self, loader::LoaderReader};
use controller::privileges;
use controller::remote::poll::Poller;
use controller::status::Status;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(version, about = "The unprivileged controller: remote-config client with TUF verification")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Poll the remote-config service until SIGTERM/SIGINT.
    Run(RunArgs),
    /// Audit a running controller's privileges (default: pid 1, the controller in its
    /// container): ids, every thread's capability sets, no_new_privs, seccomp, listening
    /// sockets, and one PASS/FAIL line per rule of docs/privilege-audit.md; exits
    /// non-zero when a rule fails.
    Audit {
        #[arg(long, default_value_t = 1)]
        pid: u32,
    },
    /// Liveness: exit 0 when the poll loop wrote status.json within --max-age-secs.
    Health {
        #[arg(long, default_value = "/var/lib/ebpf-controller")]
        state_dir: PathBuf,
        /// Longer than the longest retry backoff (remote_config.max_backoff_secs).
        #[arg(long, default_value_t = 300)]
        max_age_secs: u64,
    },
    /// Print the OCI seccomp profile for the controller's container (deploy/seccomp/).
    SeccompProfile,
    /// Print the status the running (or last) controller wrote to its state directory.
    Status {
        #[arg(long)]
        state_dir: PathBuf,
        /// Print the raw status.json document.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// TOML configuration file (then CONTROLLER_* environment variables, then these flags).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    #[arg(long)]
    endpoint: Option<String>,
    /// Development only: allow a plaintext http:// endpoint on loopback.
    #[arg(long)]
    plaintext_for_development: bool,
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[arg(long)]
    root_file: Option<PathBuf>,
    #[arg(long)]
    poll_interval_secs: Option<u64>,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl RunArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            state_dir: self.state_dir.clone(),
            remote_config: RemoteOverrides {
                endpoint: self.endpoint.clone(),
                plaintext_for_development: self.plaintext_for_development.then_some(true),
                token_file: self.token_file.clone(),
                root_file: self.root_file.clone(),
                poll_interval_secs: self.poll_interval_secs,
            },
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(&args),
        Command::Status { state_dir, json } => print_status(&state_dir, json),
        Command::Audit { pid } => audit(pid),
        Command::Health { state_dir, max_age_secs } => {
            controller::health::check(&state_dir, std::time::Duration::from_secs(max_age_secs))
                .map(|age| println!("healthy: status.json written {:.1} s ago", age.as_secs_f64()))
                .map_err(Into::into)
        }
        Command::SeccompProfile => {
            println!("{:#}", privileges::SECCOMP.container_profile());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &RunArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format);
    let config = Config::load(args.config.as_deref(), &args.overrides())?;
    refuse_privileges(&config)?;
    // One thread is plenty for one poll loop, and keeps the resident set small.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let poller = Poller::prepare(&config)?;
    if config.seccomp {
        // After start-up (files opened, state loaded), before the first poll.
        privileges::SECCOMP.install().context("installing the controller's seccomp filter")?;
        info!("seccomp filter installed on every thread");
    }
    let cancel = CancellationToken::new();
    let metrics = start_metrics(&config, &poller, &cancel).await;
    let poll = tokio::spawn(poller.run(cancel.clone()));
    shutdown_signal().await?;
    info!("shutting down");
    cancel.cancel();
    poll.await.context("the poll loop panicked")?;
    if let Some(metrics) = metrics {
        metrics.await.context("the metrics listener panicked")?;
    }
    Ok(())
}

/// Starts the `/metrics` listener. One that cannot bind is reported and left out: the
/// poll loop, which is what the node needs, runs on.
async fn start_metrics(
    config: &Config,
    poller: &Poller,
    cancel: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let listen = &config.metrics.listen;
    if listen.is_empty() {
        return None;
    }
    let listener = match tokio::net::TcpListener::bind(listen.as_str()).await {
        Ok(listener) => listener,
        Err(e) => {
            error!(listen = %listen, error = %e, "cannot serve metrics: change metrics.listen (or set it empty to turn them off)");
            return None;
        }
    };
    let loader = config
        .loader
        .socket()
        .map(|s| std::sync::Arc::new(LoaderReader::new(s, config.metrics.loader_cache())));
    Some(tokio::spawn(metrics::serve(listener, poller.metrics(), loader, cancel.clone())))
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// The controller talks to the network; it must not also hold root's powers or any
/// capability. Sets no_new_privs before any thread starts, so every thread has it.
fn refuse_privileges(config: &Config) -> anyhow::Result<()> {
    let me = hardening::ProcessAudit::read(None).context("reading this process's privileges")?;
    match privileges::refuse_privileges(&me) {
        Ok(()) => {}
        Err(err) if config.allow_root => {
            warn!(%err, "continuing because allow_root = true: development only")
        }
        Err(err) => return Err(err.into()),
    }
    privileges::set_no_new_privs()?;
    Ok(())
}

/// Audits process `pid` against the controller's rules.
fn audit(pid: u32) -> anyhow::Result<()> {
    let facts = hardening::ProcessAudit::read(Some(pid))?;
    let verdict = hardening::rules::controller(&facts);
    print!("{}", hardening::rules::render(&facts, &verdict));
    if !verdict.all_pass() {
        bail!(
            "audit rule(s) {} failed (docs/privilege-audit.md says what each requires)",
            verdict.failed().join(", ")
        );
    }
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn print_status(state_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let status = Status::read(state_dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(())
}
