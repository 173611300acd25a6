//! The two commands' orchestration: `probe` and `run` (start-up order, privilege drop,
//! serving, shutdown). Every module failure becomes a status line, never a crash: the API
//! keeps serving so an operator can ask why.
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use privileged_loader::api::{self, LoaderApi};
use privileged_loader::asset::AssetLoader;
use privileged_loader::config::{LoaderConfig, LogFormat};
use privileged_loader::modules::{Modules, ReloadAction};
use privileged_loader::remote_config::btf::{BtfCache, BtfSetting, SOURCE_OFF};
use privileged_loader::remote_config::{LogReload, RemoteConfigs, RunningLoader, Settings};
use privileged_loader::status::Registry;
use privileged_loader::{btf, lockstats, privileges, probe, seccomp};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::{EnvFilter, fmt, reload};

pub fn probe_command(config: &LoaderConfig, json: bool) -> Result<()> {
    let assets = AssetLoader::new(btf::discover(&config.btf), config.bpf_dir.clone(), Registry::default());
    let report = probe::probe(&assets);
    if json {
        println!("{}", serde_json::to_string_pretty(&report).context("encoding the report as JSON")?);
    } else {
        print!("{report}");
    }
    Ok(())
}

/// How long an idle blocking-pool thread lives.
const BLOCKING_THREAD_KEEP_ALIVE: Duration = Duration::from_secs(1);

pub fn run_command(config: LoaderConfig, exec: Instant) -> Result<()> {
    let log = init_tracing(&config.log_format);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // Blocking-pool threads a burst of calls started go after 1 s idle (tokio's default
    // is 10 s), and their stacks with them: the RSS returns to its idle level soon after.
    builder.worker_threads(2).thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE).enable_all();
    if config.privileges.drop {
        // Capabilities are per thread. Loading runs on this (main) thread; every runtime
        // thread drops to the steady-state set the moment it starts, so no worker or
        // blocking-pool thread ever serves a call with more. The main thread drops once
        // loading is done (in `run`).
        let keep = privileges::parse_caps(&config.privileges.keep)?;
        builder.on_thread_start(move || {
            if let Err(err) = privileges::drop_to(&keep) {
                // Fail closed: a thread that kept its privileges must not serve.
                eprintln!("privileged-loader: a runtime thread could not drop privileges: {err}");
                std::process::abort();
            }
        });
    }
    let runtime = builder.build().context("starting the async runtime")?;
    runtime.block_on(run(config, exec, log))
}

/// The log filter in force at start (`RUST_LOG`, else `info`): the baseline of `LOADER_LOG`.
fn baseline_log_filter() -> String {
    std::env::var("RUST_LOG").ok().filter(|f| EnvFilter::try_new(f).is_ok()).unwrap_or_else(|| "info".into())
}

/// Installs the subscriber; the filter sits behind a reload handle so that a `LOADER_LOG`
/// remote config changes it live.
fn init_tracing(format: &LogFormat) -> LogReload {
    use tracing_subscriber::prelude::*;
    let (filter, handle) = reload::Layer::new(EnvFilter::new(baseline_log_filter()));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let json = *format == LogFormat::Json;
    let text_layer = (!json).then(|| fmt::layer().with_writer(std::io::stderr).with_ansi(ansi));
    let json_layer = json.then(|| fmt::layer().json().with_writer(std::io::stderr));
    tracing_subscriber::registry().with(filter).with(text_layer).with(json_layer).init();
    Box::new(move |directives: &str| {
        let filter = EnvFilter::try_new(directives).map_err(|e| format!("filter {directives:?}: {e}"))?;
        handle.reload(filter).map_err(|e| format!("the log filter could not be replaced: {e}"))
    })
}

/// Whether a `BTF` remote config will be used here, and why not; prepares the cache
/// directory while `mkdir` is still allowed.
fn remote_btf_setting(cfg: &btf::BtfConfig, found: &Result<btf::FoundBtf, btf::BtfError>) -> BtfSetting {
    use privileged_loader::status::BtfSource;
    if !cfg.remote_config {
        return BtfSetting { ignored_because: Some(SOURCE_OFF.to_string()), source_off: true, remote: None };
    }
    let ignored_because = match found {
        Ok(f) if f.source != BtfSource::RemoteConfig => {
            Some(format!("this node has its own: {}", f.describe()))
        }
        _ => {
            // Without the directory (a read-only root filesystem) a remote BTF is still
            // used, only not kept for the next start; each apply says so.
            if let Err(err) = BtfCache::new(&cfg.cache_dir).prepare() {
                warn!(%err, "remote BTF will not be cached across restarts");
            }
            None
        }
    };
    BtfSetting { ignored_because, source_off: false, remote: None }
}

async fn run(config: LoaderConfig, exec: Instant, log: LogReload) -> Result<()> {
    let sys_admin_held = privileges::holds_sys_admin();
    if sys_admin_held && !config.lockstats.track_all_maps {
        info!("{}", privileges::SYS_ADMIN_WITHOUT_MAPS);
    }
    let registry = Registry::default();
    let started_at_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    // The shared aya loader's constructor parses the kernel BTF too: beside discovery.
    if let Err(err) = privileged_loader::asset::construct_ahead() {
        warn!(%err, "the aya loader will be constructed at the first load instead");
    }
    let found_btf = btf::discover(&config.btf);
    match &found_btf {
        Ok(found) => info!(
            source = found.source.as_str(),
            path = %found.path.display(),
            relocation_types = found.relocation.as_ref().map(|r| r.types),
            "kernel BTF found"
        ),
        Err(err) => warn!(%err, "no kernel BTF: CO-RE objects cannot load"),
    }
    let remote_btf = remote_btf_setting(&config.btf, &found_btf);
    let assets = Arc::new(AssetLoader::new(found_btf, config.bpf_dir.clone(), registry.clone()));
    let probing = beside_the_conntracker("kernel-probe", &assets, probe::probe_holding)?;
    // What the lock statistics load ahead (their map iterator, the costliest of their
    // loads) does not depend on the conntracker either; handed to their start below.
    let prefetching = config
        .lockstats
        .enabled
        .then(|| beside_the_conntracker("kernel-symbols", &assets, lockstats::prefetch_kernel_symbols))
        .transpose()?;
    // Bind before dropping privileges: the socket directory may need root to create.
    let listener = api::bind(&config.api.socket, config.api.socket_group)
        .with_context(|| format!("serving the API on {}", config.api.socket.display()))?;

    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let modules = Modules::new(assets, registry.clone(), shutdown.clone());
    start_conntrack(&config, &modules).await;
    // The probe's own object is gone once it returns (only its tracepoint link is held,
    // below): the lock statistics' map walk must not find (and hold) its transient maps.
    let (kernel, probe_held) =
        probing.join().map_err(|_| anyhow::anyhow!("the kernel probe thread panicked"))?;
    info!(release = %kernel.release, took_us = kernel.took_us, "kernel probed");
    let prefetched = prefetching
        .map(|thread| thread.join())
        .transpose()
        .map_err(|_| anyhow::anyhow!("the kernel symbol lookup thread panicked"))?;
    // Post-register: once every module is loaded, and while walking other maps by id is
    // still allowed (CAP_SYS_ADMIN), before the drop.
    if let Err(err) = modules.start_lockstats_prefetched(config.lockstats.clone(), prefetched).await {
        warn!(%err, "the lock-statistics collector did not start; see GetStatus (module \"lockstats\")");
    }

    // Every start-up attach is done: the probe's tracepoint may go now (its detach waits
    // for an RCU grace period; a blocking-pool thread waits it, not the start).
    tokio::task::spawn_blocking(move || drop(probe_held));
    privileged_loader::asset::settle_constructed_ahead();
    if config.privileges.drop {
        let keep = privileges::parse_caps(&config.privileges.keep)?;
        privileges::drop_to(&keep).context("dropping to the steady-state capability set")?;
        info!(kept = ?privileges::effective(), "privileges dropped");
    }
    // Its threads leave a real-time policy the loader may have as they start: before the
    // seccomp filter, which does not allow that call.
    let walks = api::MapWalks::new(config.api.limits.max_concurrent_map_walks)
        .context("starting the map-walk threads")?;
    if config.privileges.seccomp {
        install_seccomp()?;
    }

    let startup = Arc::new(OnceLock::new());
    let baseline = Settings {
        conntrack: config.conntrack.clone(),
        lockstats: config.lockstats.clone(),
        log_filter: baseline_log_filter(),
        btf: remote_btf,
    };
    let remote = RemoteConfigs::new(
        &config.remote_config,
        baseline,
        Arc::new(RunningLoader { modules: modules.clone(), log, btf: config.btf.clone() }),
    );
    let audit = api::AuditContext {
        socket: config.api.socket.clone(),
        kept: privileges::mask(&privileges::parse_caps(&config.privileges.keep)?),
        startup: privileges::startup_uses(
            config.api.socket_group,
            config.lockstats.track_all_maps,
            sys_admin_held,
        ),
    };
    let loader_api = LoaderApi {
        registry,
        kernel: api::kernel_report(&kernel),
        modules: modules.clone(),
        started_at_unix_ms,
        startup: startup.clone(),
        walks,
        remote: Arc::new(remote),
        access: config.api.access(),
        instance: format!("{}-{started_at_unix_ms}", std::process::id()),
        audit,
    };
    tasks.spawn(cancel_on_signal(shutdown.clone()));
    let elapsed = exec.elapsed();
    let _ = startup.set(elapsed);
    info!(socket = %config.api.socket.display(), startup_ms = elapsed.as_secs_f64() * 1000.0, "serving the loader API");
    let served = api::serve(
        loader_api,
        listener,
        config.api.allow_list(),
        config.api.limits.clone(),
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    modules.stop_all().await;
    while tasks.join_next().await.is_some() {}
    if let Err(err) = std::fs::remove_file(&config.api.socket) {
        warn!(%err, socket = %config.api.socket.display(), "could not remove the API socket");
    }
    served.context("serving the loader API")?;
    info!("stopped");
    Ok(())
}

/// Runs `work` on a thread of its own while the conntracker loads: start-up work the
/// conntracker does not depend on (the kernel probe, whose report is what `GetStatus`
/// shows; the lock statistics' kernel symbol lookup). A thread spawned from this (main)
/// thread holds its capabilities; the caller joins it before dropping them, so no
/// privileged thread outlives start-up.
fn beside_the_conntracker<T: Send + 'static>(
    name: &str,
    assets: &Arc<AssetLoader>,
    work: fn(&AssetLoader) -> T,
) -> Result<std::thread::JoinHandle<T>> {
    let assets = assets.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || work(&assets))
        .with_context(|| format!("starting the {name} thread"))
}

/// Installs the loader's own seccomp filter on every thread; with the tests' switch set,
/// then tries a call it forbids and logs the outcome.
fn install_seccomp() -> Result<()> {
    seccomp::POLICY.install().context("installing the loader's seccomp filter")?;
    info!("seccomp filter installed on every thread");
    if std::env::var_os(seccomp::TEST_FORBIDDEN_CALL_ENV).is_some() {
        match seccomp::try_forbidden_call() {
            Err(err) => warn!(%err, "test switch: socket(AF_INET) was refused under the seccomp filter"),
            Ok(()) => error!("test switch: socket(AF_INET) was ALLOWED under the seccomp filter"),
        }
    }
    Ok(())
}

/// Starts the conntracker; a failure is a status line, and the API serves without it.
async fn start_conntrack(config: &LoaderConfig, modules: &Modules) {
    match modules.start_conntrack(config.conntrack.clone()).await {
        Ok(report) if report.action == ReloadAction::Stopped => {
            info!("the conntracker is disabled by configuration (conntrack.enabled = false)")
        }
        Ok(report) => info!(implementation = %report.implementation, "conntracker started"),
        Err(err) => error!(%err, "the conntracker did not start; the API keeps serving without it"),
    }
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        error!("cannot install signal handlers: stop the loader with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
        _ = shutdown.cancelled() => {}
    }
    shutdown.cancel();
}
