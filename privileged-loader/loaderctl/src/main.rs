//! `loaderctl`: the unprivileged command-line client of the privileged loader.
//!
//! It talks gRPC over the loader's unix socket and links no eBPF code: a caller needs only
//! to be on the loader's allow-list, never any capability.
mod client;
mod config_view;
mod render;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use shared_proto::loader::v1 as pb;

#[derive(Parser)]
#[command(name = "loaderctl", version, about = "Query the privileged eBPF loader over its unix socket")]
struct Cli {
    /// The loader's API socket.
    #[arg(long, global = true, env = "LOADERCTL_SOCKET", default_value = "/run/ebpf-loader/loader.sock")]
    socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Kernel report, modules, attach strategies and asset results.
    Status,
    /// NAT translations held by the conntracker.
    #[command(subcommand)]
    Conntrack(ConntrackCommand),
    /// Lock contention inside BPF maps, most total wait first (like `perf lock contention`).
    Lockstats,
    /// The loader's privileges as it holds them now (every thread's capability sets,
    /// no_new_privs, seccomp, its socket, its listening sockets) and one PASS/FAIL line per
    /// rule of docs/privilege-audit.md; exits non-zero when a rule fails.
    Audit,
    /// The effective configuration, where each value came from (file, or remote path and
    /// version), and every remote config with its version, state and time applied.
    Config,
    /// Exit 0 when the loader's API is serving (the gRPC health check; cheap enough for a
    /// readiness probe, unlike `status`, which counts every conntrack entry).
    Health,
}

#[derive(Subcommand)]
enum ConntrackCommand {
    /// Every NAT'd connection: original and reply tuple.
    List {
        /// Only this network namespace inode.
        #[arg(long, default_value_t = 0)]
        netns: u32,
    },
    /// The translation of one connection, e.g. `lookup tcp 10.0.0.1:40000 10.99.0.1:80`.
    Lookup {
        /// tcp or udp.
        protocol: String,
        /// Source address and port: 10.0.0.1:40000 or [fd00::1]:40000.
        source: SocketAddr,
        /// Destination address and port.
        destination: SocketAddr,
        /// Network namespace inode to look in after the root namespace.
        #[arg(long, default_value_t = 0)]
        netns: u32,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loaderctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let channel = client::channel(&cli.socket).await?;
    if let Command::Health = cli.command {
        return health(channel, cli.json).await;
    }
    let mut client = client::loader(channel);
    match cli.command {
        Command::Health => Ok(()),
        Command::Status => {
            let status =
                client.get_status(pb::GetStatusRequest {}).await.map_err(client::explain)?.into_inner();
            print(cli.json, render::status_json(&status), || render::status_text(&status))
        }
        Command::Config => {
            let config =
                client.get_config(pb::GetConfigRequest {}).await.map_err(client::explain)?.into_inner();
            print(cli.json, config_view::json(&config), || config_view::text(&config))
        }
        Command::Lockstats => {
            let stats = client
                .get_lock_stats(pb::GetLockStatsRequest {})
                .await
                .map_err(client::explain)?
                .into_inner();
            print(cli.json, render::lockstats_json(&stats), || render::lockstats_text(&stats))
        }
        Command::Audit => {
            let answer =
                client.get_audit(pb::GetAuditRequest {}).await.map_err(client::explain)?.into_inner();
            audit(cli.json, &answer)
        }
        Command::Conntrack(ConntrackCommand::List { netns }) => {
            let mut stream = client
                .list_conntrack(pb::ListConntrackRequest { netns })
                .await
                .map_err(client::explain)?
                .into_inner();
            let mut entries = Vec::new();
            while let Some(batch) = stream.message().await.map_err(client::explain)? {
                entries.extend(batch.entries);
            }
            print(cli.json, render::entries_json(&entries), || render::entries_text(&entries))
        }
        Command::Conntrack(ConntrackCommand::Lookup { protocol, source, destination, netns }) => {
            let tuple = pb::Tuple {
                src_addr: source.ip().to_string(),
                src_port: source.port().into(),
                dst_addr: destination.ip().to_string(),
                dst_port: destination.port().into(),
                protocol: parse_protocol(&protocol)?.into(),
            };
            let answer = client
                .lookup_translation(pb::LookupTranslationRequest { tuple: Some(tuple), netns })
                .await
                .map_err(client::explain)?
                .into_inner();
            print(cli.json, render::lookup_json(&answer), || render::lookup_text(&answer))
        }
    }
}

/// `grpc.health.v1.Health/Check` of the loader service: SERVING or an error.
async fn health(channel: tonic::transport::Channel, json: bool) -> Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let request = tonic_health::pb::HealthCheckRequest { service: "loader.v1.Loader".into() };
    let answer = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(request)
        .await
        .map_err(client::explain)?
        .into_inner();
    let status = ServingStatus::try_from(answer.status).unwrap_or(ServingStatus::Unknown);
    if json {
        println!("{}", serde_json::json!({ "service": "loader.v1.Loader", "status": status.as_str_name() }));
    } else {
        println!("loader.v1.Loader: {}", status.as_str_name());
    }
    if status != ServingStatus::Serving {
        bail!("the loader is not serving ({})", status.as_str_name());
    }
    Ok(())
}

fn parse_protocol(name: &str) -> Result<pb::Protocol> {
    match name.to_ascii_lowercase().as_str() {
        "tcp" => Ok(pb::Protocol::Tcp),
        "udp" => Ok(pb::Protocol::Udp),
        other => bail!("unknown protocol {other:?}: use tcp or udp"),
    }
}

/// Checks the loader's answer against the rules. The loader reports only facts read from
/// its /proc entries; the rules are this binary's, so they match the document it ships with.
fn audit(json: bool, answer: &pb::GetAuditResponse) -> Result<()> {
    let facts = hardening::wire::from_response(answer);
    let verdict = hardening::rules::loader(&facts, answer.kept_capabilities);
    let value = serde_json::json!({
        "audit": facts, "checks": verdict.checks, "startup_capabilities": answer.startup_capabilities,
    });
    print(json, value, || {
        let uses: String =
            answer.startup_capabilities.iter().map(|u| format!("start-up only: {u}\n")).collect();
        format!("{uses}{}", hardening::rules::render(&facts, &verdict))
    })?;
    if !verdict.all_pass() {
        bail!(
            "audit rule(s) {} failed (docs/privilege-audit.md says what each requires)",
            verdict.failed().join(", ")
        );
    }
    Ok(())
}

fn print(json: bool, value: serde_json::Value, text: impl FnOnce() -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&value).context("encoding JSON")?);
    } else {
        print!("{}", text());
    }
    Ok(())
}
