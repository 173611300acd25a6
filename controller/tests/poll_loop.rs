//! The real `controller` binary against an in-test config service on 127.0.0.1 (the
//! protocol peer: real gRPC over a real socket). Each test owns its service, its temp
//! directory and its process, so they run in parallel and clean up on failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::process::{Controller, Workspace};
use support::repo::{File, Repo};
use support::service::{Published, TestService};
use tonic::Code;

const PATH: &str = "2/CONNTRACK/cfg1/config.json";
const WAIT: Duration = Duration::from_secs(15);

fn published(repo: &Repo, version: u64, files: &[(&str, &[u8], u64)]) -> Published {
    let tuf_files: Vec<File<'_>> =
        files.iter().map(|(p, raw, v)| File { path: p, raw, v: Some(*v) }).collect();
    Published {
        roots: vec![repo.root_v1.clone()],
        targets: repo.targets(version, &tuf_files),
        targets_version: version,
        files: files.iter().map(|(p, raw, _)| ((*p).to_owned(), raw.to_vec())).collect(),
    }
}

async fn service_with(published: Published) -> (TestService, String) {
    let service = TestService::default();
    service.publish(published);
    let addr = service.clone().start().await;
    (service, format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_configs_reach_the_listener_and_verdicts_go_back() {
    let repo = Repo::new();
    let (service, endpoint) =
        service_with(published(&repo, 1, &[(PATH, b"{\"max_entries\":4096}", 1)])).await;
    let ws = Workspace::new(&repo.root_v1, "token-a");
    let _controller = Controller::start(&ws, &ws.config(&endpoint, 1));

    let status = ws.wait_status(WAIT, |s| s.targets_version == 1).await;
    assert_eq!(status.configs.len(), 1);
    assert_eq!(
        (status.configs[0].version, status.configs[0].apply_state),
        (1, 2),
        "a CONNTRACK payload that fits the schema is acknowledged"
    );
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_controller"))
        .args(["status", "--state-dir"])
        .arg(ws.state_dir())
        .output()
        .unwrap();
    let printed = String::from_utf8(printed.stdout).unwrap();
    assert!(printed.contains(&format!("{PATH} v1 (20 bytes) acknowledged")), "{printed}");

    // Republish: v2 of the config, which is not a CONNTRACK payload: the verify-only
    // listener (no loader configured) rejects it with the schema's reason.
    service.publish(published(&repo, 2, &[(PATH, b"not json", 2)]));
    let status = ws.wait_status(WAIT, |s| s.targets_version == 2).await;
    assert_eq!((status.configs[0].version, status.configs[0].apply_state), (2, 3));
    assert!(status.configs[0].apply_error.contains("CONNTRACK payload does not fit its schema"));

    // The verdict is reported to the service on a following request.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let reported = service.seen().iter().any(|s| {
            let st = s.request.client.as_ref().unwrap().state.as_ref().unwrap();
            st.targets_version == 2 && st.config_states.iter().any(|c| c.version == 2 && c.apply_state == 3)
        });
        if reported {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "apply error never reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Steady state: the cached file is announced with its hash, never re-sent.
    let last = service.seen().last().cloned().unwrap();
    assert_eq!(last.request.cached_target_files[0].path, PATH);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_token_file_is_used_by_the_next_request() {
    let repo = Repo::new();
    let (service, endpoint) = service_with(published(&repo, 1, &[])).await;
    let ws = Workspace::new(&repo.root_v1, "first-s3cret-token");
    let _controller = Controller::start(&ws, &ws.config(&endpoint, 1));
    ws.wait_status(WAIT, |s| s.polls_ok >= 1).await;

    ws.write("token", b"second-s3cret-token\n");
    let rotated_at = service.seen().len();
    let polls = ws.status().unwrap().polls_ok;
    ws.wait_status(WAIT, |s| s.polls_ok >= polls + 2).await;

    let seen = service.seen();
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer first-s3cret-token"));
    let after: Vec<_> = seen[rotated_at + 1..].iter().map(|s| s.authorization.clone().unwrap()).collect();
    assert!(!after.is_empty() && after.iter().all(|a| a == "Bearer second-s3cret-token"), "{after:?}");
    let log = ws.log();
    assert!(!log.contains("s3cret"), "a token leaked into the logs:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_token_is_a_clear_error_with_growing_backoff() {
    let repo = Repo::new();
    let (service, endpoint) = service_with(published(&repo, 1, &[])).await;
    service.require_token("the-right-one");
    let ws = Workspace::new(&repo.root_v1, "the-wrong-one");
    let _controller = Controller::start(&ws, &ws.config(&endpoint, 1));

    let status = ws.wait_status(Duration::from_secs(25), |s| s.recent_retry_delays_ms.len() >= 4).await;
    assert_eq!(status.polls_ok, 0);
    let error = status.last_error.unwrap();
    assert!(error.contains("Unauthenticated"), "{error}");
    let delays: Vec<u64> = status.recent_retry_delays_ms.iter().copied().collect();
    assert!(delays.windows(2).all(|w| w[1] >= w[0]), "delays shrank: {delays:?}");
    assert!(delays[3] > delays[0] + 1000, "delays did not grow: {delays:?}");
    assert!(!ws.log().contains("the-wrong-one"), "the token leaked into the logs");
    assert!(service.seen().len() >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unimplemented_disables_the_client_and_stops_polling() {
    let repo = Repo::new();
    let (service, endpoint) = service_with(published(&repo, 1, &[])).await;
    service.fail_with(Some(Code::Unimplemented));
    let ws = Workspace::new(&repo.root_v1, "t");
    let mut controller = Controller::start(&ws, &ws.config(&endpoint, 1));

    let status = ws.wait_status(WAIT, |s| s.disabled).await;
    assert!(status.disabled_reason.contains("UNIMPLEMENTED"), "{}", status.disabled_reason);
    let calls = service.seen().len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(service.seen().len(), calls, "polling continued after UNIMPLEMENTED");
    assert_eq!(calls, 1);
    assert!(controller.is_running(), "the process stays up (status remains readable)");
    assert_eq!(ws.log().matches("remote configuration is disabled").count(), 1, "said once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reloads_the_state_and_still_refuses_rollback() {
    let repo = Repo::new();
    let (service, endpoint) =
        service_with(published(&repo, 3, &[(PATH, b"{\"sweep_interval_secs\":3}", 3)])).await;
    let ws = Workspace::new(&repo.root_v1, "t");
    let config = ws.config(&endpoint, 1);
    let first = Controller::start(&ws, &config);
    ws.wait_status(WAIT, |s| s.targets_version == 3).await;
    first.stop();

    // The service now offers an older (validly signed) targets document.
    service.publish(published(&repo, 2, &[(PATH, b"{\"sweep_interval_secs\":2}", 2)]));
    let before_restart = service.seen().len();
    std::fs::remove_file(ws.state_dir().join("status.json")).unwrap();
    let _second = Controller::start(&ws, &config);
    let status = ws.wait_status(WAIT, |s| s.polls_failed >= 2).await;

    let first_request = &service.seen()[before_restart].request;
    let state = first_request.client.as_ref().unwrap().state.as_ref().unwrap();
    assert_eq!(state.targets_version, 3, "state was reloaded from disk");
    assert_eq!(first_request.cached_target_files.len(), 1);
    assert!(status.last_error.as_deref().unwrap().contains("rollback"), "{:?}", status.last_error);
    assert_eq!(status.targets_version, 3);
    assert_eq!((status.configs[0].version, status.configs[0].apply_state), (3, 2), "v3 still held");
    let reported = service.seen().iter().skip(before_restart + 1).any(|s| {
        let st = s.request.client.as_ref().unwrap().state.as_ref().unwrap();
        st.has_error && st.error.contains("rollback")
    });
    assert!(reported, "the rejection is reported on the next request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_state_is_quarantined_and_never_used() {
    let repo = Repo::new();
    let (_service, endpoint) = service_with(published(&repo, 1, &[(PATH, b"{}", 1)])).await;
    let ws = Workspace::new(&repo.root_v1, "t");
    std::fs::write(ws.state_dir().join("state.json"), b"{\"format\":1,\"roots\":[\"zz\"]").unwrap();
    let _controller = Controller::start(&ws, &ws.config(&endpoint, 1));
    ws.wait_status(WAIT, |s| s.targets_version == 1).await;
    let names: Vec<String> = std::fs::read_dir(ws.state_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("state.json.corrupt-")), "{names:?}");
    assert!(ws.log().contains("quarantined"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_service_is_retried_every_second_until_it_answers() {
    let repo = Repo::new();
    // Reserve a port, then free it: nothing listens there until the service starts.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ws = Workspace::new(&repo.root_v1, "t");
    let _controller = Controller::start(&ws, &ws.config(&format!("http://127.0.0.1:{port}"), 5));
    let status = ws.wait_status(WAIT, |s| s.polls_failed >= 3).await;
    assert!(status.recent_retry_delays_ms.iter().all(|d| *d == 1000), "{:?}", status.recent_retry_delays_ms);
    assert!(ws.log().contains("INFO"), "early failures are logged at info level");

    let service = TestService::default();
    service.publish(published(&repo, 1, &[(PATH, b"{}", 1)]));
    service.start_on(format!("127.0.0.1:{port}").parse().unwrap()).await;
    let status = ws.wait_status(Duration::from_secs(3), |s| s.targets_version == 1).await;
    assert_eq!(status.consecutive_errors, 0);
    assert_eq!(status.next_poll_delay_ms / 1000, 5, "back to the poll interval once it answered");
}

#[test]
fn refuses_plaintext_to_a_non_loopback_endpoint() {
    let repo = Repo::new();
    let ws = Workspace::new(&repo.root_v1, "t");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_controller"))
        .args(["run", "--config"])
        .arg(ws.config("http://192.0.2.1:7443", 5))
        .env("CONTROLLER_ALLOW_ROOT", "true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("only allowed to a loopback address"), "{stderr}");
}

#[test]
fn refuses_plaintext_to_loopback_without_the_development_switch() {
    let repo = Repo::new();
    let ws = Workspace::new(&repo.root_v1, "t");
    let config = ws.config("http://127.0.0.1:7443", 5);
    let toml = std::fs::read_to_string(&config).unwrap();
    let production = toml.replace("plaintext_for_development = true", "plaintext_for_development = false");
    assert_ne!(toml, production, "the test config sets the switch for http:// endpoints");
    std::fs::write(&config, production).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_controller"))
        .args(["run", "--config"])
        .arg(&config)
        .env("CONTROLLER_ALLOW_ROOT", "true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("plaintext http:// is for development only"), "{stderr}");
    assert!(stderr.contains("plaintext_for_development = true"), "{stderr}");
}

#[test]
fn refuses_to_run_as_root_without_the_override() {
    if !support::process::is_root() {
        return; // the property is about uid 0; CI runs as root
    }
    let repo = Repo::new();
    let ws = Workspace::new(&repo.root_v1, "t");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_controller"))
        .args(["run", "--config"])
        .arg(ws.config("http://127.0.0.1:1", 5))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow_root = true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_root_rotation_and_keeps_it_across_restarts() {
    use support::repo::{TestKey, expires_in_days, root, sign};
    let repo = Repo::new();
    let (service, endpoint) = service_with(published(&repo, 1, &[(PATH, b"{}", 1)])).await;
    let ws = Workspace::new(&repo.root_v1, "t");
    let config = ws.config(&endpoint, 1);
    let first = Controller::start(&ws, &config);
    ws.wait_status(WAIT, |s| s.targets_version == 1).await;

    // Root v2 replaces the root key; signed by the old and the new key, as rotation requires.
    let new_root_key = TestKey::generate();
    let v2 = root(2, expires_in_days(30), &[&new_root_key], 1, &[&repo.targets_key], 1);
    let mut next = published(&repo, 2, &[(PATH, b"{\"sweep_interval_secs\":2}", 2)]);
    next.roots.push(sign(&v2, &[&repo.root_key, &new_root_key]));
    service.publish(next);
    let status = ws.wait_status(WAIT, |s| s.root_version == 2 && s.targets_version == 2).await;
    assert_eq!(status.configs[0].version, 2);
    first.stop();

    // After a restart the rotated root is re-walked from the pinned v1 and still trusted.
    let before = service.seen().len();
    std::fs::remove_file(ws.state_dir().join("status.json")).unwrap();
    let _second = Controller::start(&ws, &config);
    ws.wait_status(WAIT, |s| s.polls_ok >= 1 && s.root_version == 2).await;
    let state = service.seen()[before].request.client.clone().unwrap().state.unwrap();
    assert_eq!((state.root_version, state.targets_version), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_above_the_receive_limit_are_refused() {
    let repo = Repo::new();
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(8192));
    let (_service, endpoint) = service_with(published(&repo, 1, &[(PATH, big.as_bytes(), 1)])).await;
    let ws = Workspace::new(&repo.root_v1, "t");
    let config = ws.config(&endpoint, 1);
    let _controller =
        Controller::start_with_env(&ws, &config, &[("CONTROLLER_REMOTE_CONFIG__MAX_MESSAGE_BYTES", "4096")]);
    let status = ws.wait_status(WAIT, |s| s.polls_failed >= 1).await;
    assert_eq!(status.targets_version, 0);
    let error = status.last_error.unwrap();
    assert!(error.contains("OutOfRange") || error.contains("too large"), "{error}");
}
