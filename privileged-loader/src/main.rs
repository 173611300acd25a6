//! `privileged-loader`: `run` starts the daemon, `probe` prints the kernel report.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use privileged_loader::config::LoaderConfig;
mod daemon;

#[derive(Parser)]
#[command(
    name = "privileged-loader",
    version,
    about = "Loads and owns the agent's eBPF objects; serves the loader API"
)]
struct Cli {
    /// TOML configuration file (see docs/configuration.md).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Read eBPF objects from this directory instead of the embedded ones.
    #[arg(long, global = true)]
    bpf_dir: Option<PathBuf>,
    /// Use this BTF file (tried before every other source).
    #[arg(long, global = true)]
    btf_file: Option<PathBuf>,
    /// A directory in BTFHub layout: <os-id>/<os-version>/<arch>/<release>.btf[.tar.xz].
    #[arg(long, global = true)]
    btf_hub_dir: Option<PathBuf>,
    /// Ignore /sys/kernel/btf/vmlinux (forces the external BTF sources).
    #[arg(long, global = true)]
    no_sysfs_btf: bool,
    /// Conntracker strategies to try, in order (conntrack.strategies), e.g. `prebuilt,netlink`;
    /// one name pins that strategy.
    #[arg(long, global = true)]
    conntrack_strategies: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the daemon: load every module, drop privileges, serve the API socket.
    Run {
        /// The API socket path (api.socket).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Print the OCI seccomp profile for the loader's container (deploy/seccomp/).
    SeccompProfile,
    /// Probe the kernel (BTF, attach kinds, conntrack, lock tracepoints), print, exit.
    Probe {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the embedded eBPF objects to a directory as `<asset>.bpf.o` (what
    /// `config-service publish-btf` minimizes a kernel's BTF for).
    Objects {
        #[arg(long)]
        out: PathBuf,
    },
}

impl Cli {
    /// The flags given, as a partial configuration document (absent flags leave the
    /// file and environment values alone).
    fn overrides(&self) -> serde_json::Value {
        let mut doc = serde_json::json!({});
        let mut set = |path: &[&str], value: serde_json::Value| {
            let mut node = &mut doc;
            for key in &path[..path.len() - 1] {
                node = node
                    .as_object_mut()
                    .map(|o| o.entry(key.to_string()).or_insert_with(|| serde_json::json!({})))
                    .expect("override document nodes are objects");
            }
            node[path[path.len() - 1]] = value;
        };
        if let Some(dir) = &self.bpf_dir {
            set(&["bpf_dir"], dir.to_string_lossy().into());
        }
        if let Some(file) = &self.btf_file {
            set(&["btf", "file"], file.to_string_lossy().into());
        }
        if let Some(dir) = &self.btf_hub_dir {
            set(&["btf", "hub_dir"], dir.to_string_lossy().into());
        }
        if self.no_sysfs_btf {
            set(&["btf", "no_sysfs"], true.into());
        }
        if let Some(strategies) = &self.conntrack_strategies {
            set(&["conntrack", "strategies"], strategies.as_str().into());
        }
        if let Command::Run { socket: Some(socket) } = &self.command {
            set(&["api", "socket"], socket.to_string_lossy().into());
        }
        doc
    }
}

fn main() -> ExitCode {
    let exec = Instant::now();
    privileged_loader::heap::return_freed_buffers_to_the_kernel();
    let cli = Cli::parse();
    let config = match LoaderConfig::load(cli.config.as_deref(), cli.overrides()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("privileged-loader: {err}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Probe { json } => daemon::probe_command(&config, json),
        Command::SeccompProfile => {
            println!("{:#}", privileged_loader::seccomp::POLICY.container_profile());
            Ok(())
        }
        Command::Run { .. } => daemon::run_command(config, exec),
        Command::Objects { out } => write_objects(&out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("privileged-loader: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes every embedded object to `dir` (created if needed).
fn write_objects(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for name in privileged_loader::objects::names() {
        let path = dir.join(format!("{name}.bpf.o"));
        let bytes = privileged_loader::objects::embedded(name).unwrap_or_default();
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        writeln!(std::io::stdout(), "{}", path.display()).context("writing to stdout")?;
    }
    Ok(())
}
