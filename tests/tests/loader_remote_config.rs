//! Remote configuration reaching the loader, end to end: the real `config-service`, the
//! real `controller` (as uid 65534) and the real `privileged-loader` over its real unix
//! socket. A config published at the service is verified by the controller, re-verified
//! by the loader against its own pinned root, checked against its allow-list, applied
//! live, and its state travels back to the service.
//!
//! Before running: `cargo build --workspace --bins` and the python packages of
//! tests/python/requirements.txt. Runs as root (the loader; the controller drops to 65534).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "remote_config/harness.rs"]
mod harness;

#[path = "remote_config/btf.rs"]
mod btf;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e_tests::compare::{assert_matches_kernel, kernel_nat, listed};
use e2e_tests::loader::{LoaderOptions, LoaderProcess, grpc_client, loaderctl};
use e2e_tests::traffic::Connection;
use e2e_tests::{L4, NatLab, Tuple};
use harness::*;
use serde_json::Value;
use shared_proto::loader::v1 as pb;
use trust::test_repo::{self, File, TestKey, expires_in_days, sign};

const SYNC: Duration = Duration::from_secs(20);
/// The node's cap on `conntrack.max_entries` (its allow-list).
const CAP: u32 = 65_536;
const LOG_PATH: &str = "2/LOADER_LOG/log/config.json";

/// The loader's file: the pinned root and the allow-list; the modules off unless a test
/// is about the data path or the loader's figures (`modules`).
fn loader_toml(root: Option<&Path>, modules: bool) -> String {
    let root = root.map(|r| format!("root_file = {:?}\n", path_str(r))).unwrap_or_default();
    format!(
        "[conntrack]\nenabled = {modules}\n[lockstats]\nenabled = {modules}\n[remote_config]\n{root}\
         [remote_config.allow]\nmax_conntrack_entries = {CAP}\n"
    )
}

fn start_loader(toml: &str, socket: Option<&Path>, api_toml: &str) -> LoaderProcess {
    start_loader_in(None, toml, socket, api_toml)
}

fn start_loader_in(netns: Option<&str>, toml: &str, socket: Option<&Path>, api_toml: &str) -> LoaderProcess {
    let loader = LoaderProcess::start(LoaderOptions {
        extra_toml: toml,
        netns,
        socket,
        allowed_uids: &[NOBODY],
        api_toml,
        ..Default::default()
    });
    loader.open_socket_to_all();
    loader
}

/// A service, a loader and a controller pushing to it, all sharing one pinned root.
struct Node {
    repo: Repo,
    service: Service,
    loader: LoaderProcess,
    controller: Controller,
    socket: PathBuf,
    toml: String,
    metrics_url: String,
    // Dropped last: the processes' logs, printed when a test fails, live in it.
    work: tempfile::TempDir,
}

impl Node {
    fn start() -> Self {
        Self::start_in(None)
    }

    /// With `lab`, the loader runs its conntracker in the lab's namespace.
    fn start_in(lab: Option<&NatLab>) -> Self {
        Self::start_with(lab, |_| String::new())
    }

    /// Like [`Self::start_in`], with more of the loader's file, made from the work dir.
    fn start_with(lab: Option<&NatLab>, extra_toml: impl Fn(&Path) -> String) -> Self {
        let work = scratch_dir();
        let repo = Repo::init(work.path());
        let service = Service::start(work.path(), &repo, &[]);
        let socket = work.path().join("loader-run/loader.sock");
        let toml = loader_toml(Some(&repo.root_file(1)), lab.is_some()) + &extra_toml(work.path());
        let loader = start_loader_in(lab.map(|l| l.netns.name()), &toml, Some(&socket), "");
        let port = free_port();
        let link = format!(
            "\n[loader]\nsocket = {:?}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            path_str(&socket)
        );
        let controller = Controller::start_with(work.path(), &service.endpoint(), &repo.root_file(1), &link);
        let metrics_url = format!("http://127.0.0.1:{port}/metrics");
        Self { repo, service, loader, controller, socket, toml, metrics_url, work }
    }

    /// `loaderctl config --json`.
    fn config(&self) -> Value {
        let out = loaderctl(&self.socket, &["--json", "config"], None);
        assert!(out.status.success(), "loaderctl config: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("loaderctl config prints JSON")
    }

    fn wait_config(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_until(SYNC, what, || Some(self.config()).filter(|c| pred(c)))
    }

    /// Waits until the service hears `apply_state` for `config_id` at `version`.
    fn wait_reported(&self, config_id: &str, version: u64, apply_state: u64) -> Value {
        let what = format!("the service to hear apply_state {apply_state} for {config_id} v{version}");
        wait_until(SYNC, &what, || {
            self.service.requests().into_iter().rev().find_map(|r| {
                reported_state(&r, config_id)
                    .filter(|c| c["version"] == version && c["apply_state"] == apply_state)
                    .cloned()
            })
        })
    }
}

/// Whether `key` comes from the remote config at `path` and `version`.
fn from_remote(config: &Value, key: &str, path: &str, version: u64) -> bool {
    let v = &config["values"][key];
    v["source"] == "remote" && v["path"] == path && v["version"] == version
}

#[test]
fn publishing_udpv6_off_changes_what_the_conntracker_records_and_is_acknowledged() {
    const CT_PATH: &str = "2/CONNTRACK/ct/config.json";
    let lab = NatLab::new("rc-udp6").expect("lab");
    let node = Node::start_in(Some(&lab));
    let udp6 = |t: &Tuple| t.protocol == L4::Udp && t.src.is_ipv6();
    let _before = lab.connect_all().expect("connections");
    assert!(kernel_nat(&lab).iter().any(|(o, _)| udp6(o)), "the kernel must have IPv6 UDP NAT entries");
    assert_matches_kernel(&node.loader, &lab, |_| true);

    let published = Instant::now();
    node.repo.publish_product("CONNTRACK", "ct", r#"{"udpv6_enabled": false, "max_entries": 32768}"#);
    let config = node.wait_config("udpv6_enabled from the remote config", |c| {
        from_remote(c, "conntrack.udpv6_enabled", CT_PATH, 1)
    });
    println!("publish -> applied in the loader: {:?}", published.elapsed());
    assert_eq!(config["values"]["conntrack.udpv6_enabled"]["value"], false);
    assert!(from_remote(&config, "conntrack.max_entries", CT_PATH, 1));
    assert_eq!(config["values"]["conntrack.tcpv6_enabled"]["source"], "file");
    node.wait_reported("ct", 1, 2);
    // New connections: every kind is recorded but IPv6 UDP. (Translations the replaced
    // conntracker held are handed over as they were.)
    let after = lab.connect_all().expect("connections after the change");
    assert_new_recorded(&node.loader, &lab, &after, |t| !udp6(t));
    let maps = &node.loader.module("conntrack")["maps"];
    assert!(maps.as_array().unwrap().iter().any(|m| m["max_entries"] == 32768), "the new map size: {maps:#}");

    // And back: IPv6 UDP entries are recorded again.
    node.repo.publish_product("CONNTRACK", "ct", r#"{"udpv6_enabled": true}"#);
    node.wait_config("udpv6_enabled back on", |c| from_remote(c, "conntrack.udpv6_enabled", CT_PATH, 2));
    node.wait_reported("ct", 2, 2);
    let again = lab.connect_all().expect("connections after the second change");
    assert_new_recorded(&node.loader, &lab, &again, |_| true);
}

#[test]
fn published_storm_keys_apply_in_place_and_a_rate_below_the_nodes_floor_is_refused() {
    const CT_PATH: &str = "2/CONNTRACK/storm/config.json";
    let lab = NatLab::new("rc-storm").expect("lab");
    let node = Node::start_in(Some(&lab));
    let before = node.loader.module("conntrack");
    node.repo.publish_product(
        "CONNTRACK",
        "storm",
        r#"{"storm_shed_above_per_sec": 8000, "storm_sustain_secs": 5}"#,
    );
    let config = node.wait_config("the storm keys from the remote config", |c| {
        from_remote(c, "conntrack.storm_shed_above_per_sec", CT_PATH, 1)
    });
    assert_eq!(config["values"]["conntrack.storm_shed_above_per_sec"]["value"], 8000);
    assert!(from_remote(&config, "conntrack.storm_sustain_secs", CT_PATH, 1));
    assert_eq!(config["values"]["conntrack.storm_sustain_secs"]["value"], 5);
    node.wait_reported("storm", 1, 2);
    // In place: the same object keeps serving, only its userspace tasks restarted.
    let after = node.loader.module("conntrack");
    assert_eq!(after["last_reload"]["how"], "in place", "{after:#}");
    let changed = after["last_reload"]["changed"].as_array().unwrap();
    assert_eq!(changed.len(), 2, "only the storm keys changed: {changed:?}");
    assert_eq!(after["generation"], before["generation"], "no new object");
    assert_eq!(after["loaded_at_unix_ms"], before["loaded_at_unix_ms"], "no new object");

    // Below the node's floor (remote_config.allow.min_storm_shed_above_per_sec, 1,000 by
    // default): refused by name, and the keys in force stay.
    node.repo.publish_product("CONNTRACK", "storm", r#"{"storm_shed_above_per_sec": 10}"#);
    let state = node.wait_reported("storm", 2, 3);
    let error = state["apply_error"].as_str().unwrap();
    assert!(error.contains("min_storm_shed_above_per_sec") && error.contains("1000"), "{error}");
    let config = node.config();
    assert_eq!(config["values"]["conntrack.storm_shed_above_per_sec"]["value"], 8000);
    assert_eq!(config["values"]["conntrack.storm_sustain_secs"]["value"], 5);
}

/// Each of `connections` is listed by the loader exactly when `recorded` says so (waiting
/// up to 2 s for the listed ones to show up).
fn assert_new_recorded(
    loader: &LoaderProcess,
    lab: &NatLab,
    connections: &[Connection],
    recorded: impl Fn(&Tuple) -> bool,
) {
    let originals: Vec<Tuple> = connections.iter().map(|c| c.original_tuple().expect("tuple")).collect();
    let expected: Vec<&Tuple> = originals.iter().filter(|t| recorded(t)).collect();
    let all_there = || {
        let listed: Vec<Tuple> = listed(loader, lab).into_iter().map(|(o, _)| o).collect();
        expected.iter().all(|t| listed.contains(t)).then_some(listed)
    };
    let listed = wait_until(Duration::from_secs(2), "the new connections to be listed", all_there);
    for t in originals.iter().filter(|t| !recorded(t)) {
        assert!(!listed.contains(t), "{t} is listed but the config says it is not recorded");
    }
}

/// `/metrics`, parsed by prometheus_client (the Prometheus project's Python client).
fn scrape(url: &str) -> Value {
    let out = std::process::Command::new("python3")
        .arg(python_script("scrape_metrics.py"))
        .arg(url)
        .output()
        .expect("python3");
    assert!(out.status.success(), "scrape_metrics.py: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(scraped: &Value, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scraped["samples"].as_array().unwrap().iter().find_map(|s| {
        let matches = s[0] == name && labels.iter().all(|(k, v)| s[1][k] == *v);
        matches.then(|| s[2].as_f64().unwrap())
    })
}

#[test]
fn metrics_parse_as_prometheus_text_and_follow_polls_applies_and_the_loader() {
    let lab = NatLab::new("rc-metrics").expect("lab");
    let node = Node::start_in(Some(&lab));
    let _connections = lab.connect_all().expect("connections");
    node.repo.publish_product("LOADER_LOG", "log", r#"{"filter": "info"}"#);
    node.wait_reported("log", 1, 2);
    let first = wait_until(SYNC, "acknowledged in the metrics", || {
        let s = scrape(&node.metrics_url);
        (sample(
            &s,
            "controller_config_apply_states",
            &[("product", "LOADER_LOG"), ("state", "acknowledged")],
        ) == Some(1.0))
        .then_some(s)
    });
    assert!(first["content_type"].as_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let families: Vec<&str> =
        first["families"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    for name in [
        "controller_polls",
        "controller_poll_duration_seconds",
        "controller_verification_failures",
        "controller_config_apply_states",
        "controller_targets_age_seconds",
        "controller_backoff_level",
        "loader_up",
        "loader_module_state",
        "loader_conntrack_entries",
        "loader_conntrack_max_entries",
        "loader_lock_contended",
        "loader_lock_wait_seconds",
    ] {
        assert!(families.contains(&name), "{name} missing from {families:?}");
    }
    assert_eq!(sample(&first, "loader_up", &[]), Some(1.0));
    assert_eq!(
        sample(&first, "loader_module_state", &[("module", "conntrack"), ("state", "module_state_running")]),
        Some(1.0)
    );
    // The loader shares its fill level for up to 10 s and the controller caches the
    // loader's figures for `loader_cache_secs`: the lab's entries show up within both.
    wait_until(SYNC, "the lab's NAT entries in loader_conntrack_entries", || {
        sample(&scrape(&node.metrics_url), "loader_conntrack_entries", &[]).filter(|n| *n >= 1.0)
    });
    assert!(sample(&first, "controller_targets_age_seconds", &[]).is_some_and(|a| a >= 0.0));
    let polls = |s: &Value| sample(s, "controller_polls_total", &[("outcome", "ok")]).unwrap_or(0.0);
    let bad_signatures =
        |s: &Value| sample(s, "controller_verification_failures_total", &[("reason", "targets_signature")]);
    assert_eq!(bad_signatures(&first), Some(0.0));

    // Targets altered after signing, served as they are: the controller refuses them.
    let targets_file = node.repo.dir.join("metadata/targets.json");
    let mut targets: Value = serde_json::from_slice(&std::fs::read(&targets_file).unwrap()).unwrap();
    targets["signed"]["version"] = (targets["signed"]["version"].as_u64().unwrap() + 1).into();
    std::fs::write(&targets_file, serde_json::to_vec(&targets).unwrap()).unwrap();
    wait_until(SYNC, "a signature failure counted", || {
        bad_signatures(&scrape(&node.metrics_url)).filter(|n| *n >= 1.0)
    });

    // A refused config moves the apply states; polls keep counting.
    node.repo.publish_product("CONNTRACK", "big", &format!(r#"{{"max_entries": {}}}"#, CAP * 4));
    node.wait_reported("big", 1, 3);
    let later = wait_until(SYNC, "the error in the metrics", || {
        let s = scrape(&node.metrics_url);
        (sample(&s, "controller_config_apply_states", &[("product", "CONNTRACK"), ("state", "error")])
            == Some(1.0))
        .then_some(s)
    });
    assert!(polls(&later) > polls(&first), "controller_polls_total grows");
}

#[test]
fn a_published_log_filter_applies_live_is_acknowledged_and_its_removal_restores_the_file() {
    let node = Node::start();
    assert!(!node.loader.log_text().contains("DEBUG"), "the file baseline logs at info");
    node.repo.publish_product("LOADER_LOG", "log", r#"{"filter": "debug"}"#);

    let config =
        node.wait_config("log.filter from the remote config", |c| from_remote(c, "log.filter", LOG_PATH, 1));
    assert_eq!(config["values"]["log.filter"]["value"], "debug");
    let record = config["remote_configs"].as_array().unwrap().iter().find(|r| r["path"] == LOG_PATH).cloned();
    assert_eq!(record.expect("the record")["state"], "applied");
    node.wait_reported("log", 1, 2);
    // Applied live: the running loader now logs at debug level.
    wait_until(SYNC, "debug lines in the loader's log", || {
        node.loader.log_text().contains("DEBUG").then_some(())
    });

    node.repo.remove_product("LOADER_LOG", "log");
    let config =
        node.wait_config("log.filter back to the file", |c| c["values"]["log.filter"]["source"] == "file");
    assert_eq!(config["values"]["log.filter"]["value"], "info");
}

#[test]
fn a_config_the_allow_list_forbids_reaches_the_service_as_an_error_and_changes_nothing() {
    let mut node = Node::start();
    let before = node.config();
    node.repo.publish_product("CONNTRACK", "big", &format!(r#"{{"max_entries": {}}}"#, CAP * 4));

    let state = node.wait_reported("big", 1, 3);
    let error = state["apply_error"].as_str().unwrap();
    assert!(error.contains("max_conntrack_entries") && error.contains(&CAP.to_string()), "{error}");
    let status = node
        .controller
        .wait_status(SYNC, "big in error", |s| config_in(s, "big").is_some_and(|c| c["apply_state"] == 3));
    assert!(
        config_in(&status, "big").unwrap()["apply_error"].as_str().unwrap().contains("max_conntrack_entries")
    );
    let after = node.config();
    assert_eq!(after["values"], before["values"], "the loader keeps running what it ran");

    // Refused once, not again and again: the same version is not pushed in a loop.
    std::thread::sleep(Duration::from_secs(3));
    let refusals = node.loader.log_text().matches("remote config refused").count();
    assert_eq!(refusals, 1, "pushed {refusals} times:\n{}", node.loader.log_text());
}

#[test]
fn a_new_loader_process_gets_what_is_in_force_with_no_new_publish() {
    let mut node = Node::start();
    node.repo.publish_product("LOADER_LOG", "log", r#"{"filter": "info,h2=warn"}"#);
    node.wait_config("the config applied", |c| from_remote(c, "log.filter", LOG_PATH, 1));

    node.loader.process.child.kill().expect("SIGKILL the loader");
    let _ = node.loader.process.child.wait();
    node.loader = start_loader(&node.toml, Some(&node.socket), "");
    let serving = Instant::now();
    node.wait_config("the config in force again", |c| from_remote(c, "log.filter", LOG_PATH, 1));
    let took = serving.elapsed();
    assert!(took <= Duration::from_secs(2), "the new loader converged {took:?} after serving (limit 2 s)");
    assert!(node.controller.process.running());
}

#[test]
fn a_controller_restarted_with_the_service_down_leaves_the_loader_alone() {
    let mut node = Node::start();
    node.repo.publish_product("LOADER_LOG", "log", r#"{"filter": "info,h2=warn"}"#);
    node.wait_reported("log", 1, 2);
    let applied = node.wait_config("applied", |c| from_remote(c, "log.filter", LOG_PATH, 1));

    node.service.process.kill();
    node.controller.restart(node.work.path());
    std::thread::sleep(Duration::from_secs(3));
    let after = node.config();
    assert_eq!(after["remote_configs"], applied["remote_configs"], "nothing rolled back or re-applied");
    assert_eq!(after["values"], applied["values"]);
    let status = node.controller.wait_status(SYNC, "the held config", |s| config_in(s, "log").is_some());
    assert_eq!(config_in(&status, "log").unwrap()["apply_state"], 2, "still acknowledged");
}

// ---- ApplyConfig straight to the socket, as a compromised controller would ----

fn request(roots: Vec<Vec<u8>>, targets: Vec<u8>, path: &str, raw: &[u8]) -> pb::ApplyConfigRequest {
    let product = path.split('/').nth(1).unwrap().to_string();
    pb::ApplyConfigRequest {
        roots,
        targets,
        products: vec![product],
        configs: vec![pb::RemoteConfigFile { path: path.into(), raw: raw.to_vec() }],
    }
}

fn log_config(targets_version: u64, raw: &[u8], expires: jiff::Timestamp, key: &TestKey) -> Vec<u8> {
    let files = [File { path: LOG_PATH, raw, v: Some(targets_version) }];
    sign(&test_repo::targets(targets_version, expires, &files, None), &[key])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_config_refuses_every_proof_a_compromised_controller_could_forge() {
    let dir = tempfile::tempdir().unwrap();
    let repo = test_repo::Repo::new();
    let root = dir.path().join("root.json");
    std::fs::write(&root, &repo.root_v1).unwrap();
    let loader = start_loader(&loader_toml(Some(&root), false), None, "");
    let mut loader_api = grpc_client(&loader.socket).await;
    let good = br#"{"filter": "info,h2=warn"}"#;
    let year = expires_in_days(365);
    let v5 = log_config(5, good, year, &repo.targets_key);
    let applied = loader_api.apply_config(request(vec![], v5, LOG_PATH, good)).await.unwrap().into_inner();
    assert_eq!(applied.results[0].state, pb::ConfigApplyState::Applied as i32, "{applied:?}");

    let skipping_root = {
        let r3 = test_repo::root(3, year, &[&repo.root_key], 1, &[&repo.targets_key], 1);
        sign(&r3, &[&repo.root_key])
    };
    let evil = br#"{"filter": "trace"}"#;
    let cases: [(&str, pb::ApplyConfigRequest); 5] = [
        (
            "bytes altered after signing",
            request(vec![], log_config(6, good, year, &repo.targets_key), LOG_PATH, evil),
        ),
        (
            "an older targets version",
            request(vec![], log_config(4, evil, year, &repo.targets_key), LOG_PATH, evil),
        ),
        (
            "expired targets",
            request(vec![], log_config(6, evil, expires_in_days(-1), &repo.targets_key), LOG_PATH, evil),
        ),
        (
            "a root chain that skips a version",
            request(vec![skipping_root], log_config(6, evil, year, &repo.targets_key), LOG_PATH, evil),
        ),
        (
            "another repository's signature",
            request(vec![], log_config(6, evil, year, &TestKey::generate()), LOG_PATH, evil),
        ),
    ];
    for (what, bad) in cases {
        let status = loader_api.apply_config(bad).await.expect_err(what);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}: {status:?}");
        let config = loader_api.get_config(pb::GetConfigRequest {}).await.unwrap().into_inner();
        let filter = config.values.iter().find(|v| v.key == "log.filter").unwrap();
        assert_eq!(
            (filter.value.as_str(), filter.version),
            ("\"info,h2=warn\"", 5),
            "{what} changed the loader"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_config_accepts_a_valid_proof_made_by_python_tuf() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("python3")
        .arg(python_script("make_loader_proof.py"))
        .arg(dir.path())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "make_loader_proof.py (pip install -r tests/python/requirements.txt): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    let path = String::from_utf8(read("path")).unwrap();
    let loader = start_loader(&loader_toml(Some(&dir.path().join("root.json")), false), None, "");
    let answer = grpc_client(&loader.socket)
        .await
        .apply_config(request(vec![], read("targets.json"), &path, &read("config.json")))
        .await
        .expect("python-tuf's proof is valid")
        .into_inner();
    assert_eq!(answer.results[0].state, pb::ConfigApplyState::Applied as i32, "{answer:?}");
    assert_eq!((answer.results[0].version, answer.targets_version), (1, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_pinned_root_apply_config_is_a_failed_precondition_naming_the_key() {
    let loader = start_loader(&loader_toml(None, false), None, "");
    let repo = test_repo::Repo::new();
    let raw = br#"{"filter": "debug"}"#;
    let t = log_config(1, raw, expires_in_days(1), &repo.targets_key);
    let status =
        grpc_client(&loader.socket).await.apply_config(request(vec![], t, LOG_PATH, raw)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("remote_config.root_file"), "{}", status.message());
}

#[test]
fn a_read_only_caller_may_read_but_not_apply_and_others_get_nothing() {
    let loader = start_loader(&loader_toml(None, false), None, "read_only_gids = [65533]");
    let reader = Some((65533, 65533));
    let out = loaderctl(&loader.socket, &["--json", "config"], reader);
    assert!(out.status.success(), "a reader may read: {}", String::from_utf8_lossy(&out.stderr));
    // A real process of the reader's uid/gid: this test binary again, running only the
    // helper below.
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", "apply_config_as_this_process", "--ignored", "--nocapture"]);
    command.env("APPLY_CONFIG_SOCKET", &loader.socket);
    std::os::unix::process::CommandExt::uid(&mut command, 65533);
    std::os::unix::process::CommandExt::gid(&mut command, 65533);
    let out = command.output().expect("run the helper");
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.contains("ANSWER PermissionDenied") && answer.contains("read-only"), "{answer}");
    let status = loaderctl(&loader.socket, &["--json", "status"], None);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["access"]["read_only_gids"], serde_json::json!([65533]), "roles are shown in status");
    let stranger = loaderctl(&loader.socket, &["status"], Some((65532, 65532)));
    assert!(!stranger.status.success(), "a caller with no role gets nothing");
}

/// Helper of the test above, run in a process of another uid/gid: prints the code
/// `ApplyConfig` answers (an empty request: the role is checked before anything else).
#[tokio::test]
#[ignore = "run by a_read_only_caller_may_read_but_not_apply_and_others_get_nothing as another user"]
async fn apply_config_as_this_process() {
    let socket = PathBuf::from(std::env::var_os("APPLY_CONFIG_SOCKET").expect("APPLY_CONFIG_SOCKET"));
    let answer = grpc_client(&socket).await.apply_config(pb::ApplyConfigRequest::default()).await;
    match answer {
        Ok(_) => println!("ANSWER Ok"),
        Err(status) => println!("ANSWER {:?}: {}", status.code(), status.message()),
    }
}
