//! Remote config end to end: the real `config-service` and the real `controller` as
//! processes over loopback gRPC, with python-tuf (the TUF reference implementation) on
//! the other side of the interop checks.
//!
//! Before running: `cargo build -p config-service -p controller` and
//! `python3 -m pip install tuf==6.0.0 'securesystemslib[crypto]==1.6.0'`. The controller
//! runs as uid 65534, so these tests run as root (as CI does).
#![allow(clippy::unwrap_used)]

#[path = "remote_config/harness.rs"]
mod harness;

#[path = "remote_config/full_state_dir.rs"]
mod full_state_dir;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::*;
use serde_json::Value;
use shared_proto::remoteconfig::v1::config_service_client::ConfigServiceClient;
use shared_proto::remoteconfig::v1::{
    Client, ClientGetConfigsRequest, ClientGetConfigsResponse, ClientState, ConfigStatus, TargetFileHash,
    TargetFileMeta,
};
use tonic::Code;

const SYNC: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// The service alone (a tonic client stands in for the controller).
// ---------------------------------------------------------------------------------------

fn request(root: u64, targets: u64, cached: &[(&str, &str)]) -> ClientGetConfigsRequest {
    ClientGetConfigsRequest {
        client: Some(Client {
            state: Some(ClientState { root_version: root, targets_version: targets, ..Default::default() }),
            id: "test-client".into(),
            products: vec![PRODUCT.into()],
            ..Default::default()
        }),
        cached_target_files: cached
            .iter()
            .map(|(path, sha)| TargetFileMeta {
                path: (*path).into(),
                length: 0,
                hashes: vec![TargetFileHash { algorithm: "sha256".into(), hash: (*sha).into() }],
            })
            .collect(),
    }
}

fn call(
    service: &Service,
    token: Option<&str>,
    req: ClientGetConfigsRequest,
) -> Result<ClientGetConfigsResponse, tonic::Status> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut client = ConfigServiceClient::connect(service.endpoint()).await.unwrap();
        let mut req = tonic::Request::new(req);
        if let Some(token) = token {
            req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        client.client_get_configs(req).await.map(tonic::Response::into_inner)
    })
}

fn sha256_of(targets: &Value, config_id: &str) -> String {
    let path = format!("2/{PRODUCT}/{config_id}/config.json");
    targets["targets"][&path]["hashes"]["sha256"].as_str().unwrap().to_owned()
}

#[test]
fn service_metadata_verifies_under_python_tuf() {
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    repo.publish("cfg1", r#"{"max_entries":4096}"#);
    repo.publish("cfg1", r#"{"max_entries":8192}"#);
    repo.publish("cfg2", r#"{"sweep_interval_secs":30}"#);
    repo.rotate_root();
    repo.rotate_root();
    repo.publish("cfg2", r#"{"sweep_interval_secs":60}"#);
    repo.remove("cfg1");
    let targets = repo.targets();
    assert_eq!(targets["targets"]["2/CONNTRACK/cfg2/config.json"]["custom"]["v"], 2);
    let out = Command::new("python3")
        .arg(python_script("verify_service_repo.py"))
        .args([path_str(&repo.dir), "3", "6"])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python-tuf rejected our metadata:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("root v3: signed by root v2 and by itself"), "{stdout}");
}

#[test]
fn service_answers_only_what_the_client_lacks() {
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    repo.publish("cfg1", r#"{"max_entries":4096}"#);
    repo.publish("cfg2", r#"{"sweep_interval_secs":30}"#);
    let service = Service::start(work.path(), &repo, &[]);
    let targets = repo.targets();
    let version = targets["version"].as_u64().unwrap();
    let (p1, p2) = ("2/CONNTRACK/cfg1/config.json", "2/CONNTRACK/cfg2/config.json");
    let (h1, h2) = (sha256_of(&targets, "cfg1"), sha256_of(&targets, "cfg2"));

    // A new client: targets, both files, both paths; no roots (it pins root 1).
    let full = call(&service, Some(TOKEN), request(1, 0, &[])).unwrap();
    assert!(full.roots.is_empty());
    assert_eq!(full.targets, fs::read(repo.dir.join("metadata/targets.json")).unwrap());
    assert_eq!(full.client_configs, vec![p1, p2]);
    let mut files: Vec<_> = full.target_files.iter().map(|f| f.path.as_str()).collect();
    files.sort_unstable();
    assert_eq!(files, vec![p1, p2]);
    assert_eq!(
        full.target_files[0].raw,
        fs::read(repo.dir.join("targets").join(&full.target_files[0].path)).unwrap()
    );

    // The steady state: nothing at all.
    let steady = call(&service, Some(TOKEN), request(1, version, &[(p1, &h1), (p2, &h2)])).unwrap();
    assert_eq!(steady, ClientGetConfigsResponse::default());

    // A republish is visible at the next request, and only the changed file is sent.
    repo.publish("cfg2", r#"{"sweep_interval_secs":60}"#);
    let update = call(&service, Some(TOKEN), request(1, version, &[(p1, &h1), (p2, &h2)])).unwrap();
    assert!(!update.targets.is_empty());
    assert_eq!(update.target_files.len(), 1);
    assert_eq!(update.target_files[0].path, p2);
    assert_eq!(update.target_files[0].raw, br#"{"sweep_interval_secs":60}"#);

    // Root rotations: every root newer than the client's, oldest first.
    repo.rotate_root();
    repo.rotate_root();
    let version = repo.targets()["version"].as_u64().unwrap();
    let roots = call(&service, Some(TOKEN), request(1, version, &[])).unwrap().roots;
    assert_eq!(roots, vec![fs::read(repo.root_file(2)).unwrap(), fs::read(repo.root_file(3)).unwrap()]);

    let log = service.requests();
    assert_eq!(log.len(), 4);
    assert!(
        log.iter()
            .all(|l| l["status"] == "ok" && l["token_name"] == TOKEN_NAME && l["client_id"] == "test-client")
    );
    assert_eq!(log[1]["cached_files"], 2);
}

#[test]
fn service_checks_bearer_tokens_and_rereads_the_tokens_file() {
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    let service = Service::start(work.path(), &repo, &[]);
    assert_eq!(call(&service, None, request(1, 0, &[])).unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(
        call(&service, Some("wrong-token"), request(1, 0, &[])).unwrap_err().code(),
        Code::Unauthenticated
    );
    assert!(call(&service, Some(SECOND_TOKEN), request(1, 0, &[])).is_ok());

    // Rotate the service's tokens: the old token is refused from the next request on.
    write_file_as(&service.tokens_file, b"rotated:tok-rotated-42\n", None, 0o600);
    assert_eq!(call(&service, Some(TOKEN), request(1, 0, &[])).unwrap_err().code(), Code::Unauthenticated);
    assert!(call(&service, Some("tok-rotated-42"), request(1, 0, &[])).is_ok());

    let log = service.requests();
    let statuses: Vec<_> =
        log.iter().map(|l| (l["status"].as_str().unwrap(), l["token_name"].clone())).collect();
    assert_eq!(
        statuses,
        vec![
            ("unauthenticated", Value::Null),
            ("unauthenticated", Value::Null),
            ("ok", Value::from(SECOND_TOKEN_NAME)),
            ("unauthenticated", Value::Null),
            ("ok", Value::from("rotated")),
        ]
    );
    let text = fs::read_to_string(&service.request_log).unwrap() + &service.process.log_text();
    for secret in [TOKEN, SECOND_TOKEN, "wrong-token", "tok-rotated-42"] {
        assert!(!text.contains(secret), "a token leaked into the logs");
    }
}

#[test]
fn disabled_service_answers_unimplemented() {
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    let service = Service::start(work.path(), &repo, &["--disable-remote-config"]);
    assert_eq!(call(&service, Some(TOKEN), request(1, 0, &[])).unwrap_err().code(), Code::Unimplemented);
    assert_eq!(service.requests()[0]["status"], "unimplemented");
}

#[test]
fn expired_targets_are_served_with_status_expired() {
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    let file = work.path().join("c.json");
    fs::write(&file, "{}").unwrap();
    config_service_ok(&[
        "publish",
        "--repo",
        path_str(&repo.dir),
        PRODUCT,
        "c",
        path_str(&file),
        "--expires-days",
        "0",
    ]);
    let service = Service::start(work.path(), &repo, &[]);
    let answer = call(&service, Some(TOKEN), request(1, 0, &[])).unwrap();
    assert_eq!(answer.config_status, i32::from(ConfigStatus::Expired));
    assert!(!answer.targets.is_empty(), "expired targets are still served; the client decides");
}

#[test]
fn service_refuses_readable_keys_and_plaintext_off_loopback() {
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    let key = repo.dir.join("keys/targets-v1.pem");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let file = work.path().join("c.json");
    fs::write(&file, "{}").unwrap();
    let out = config_service(&["publish", "--repo", path_str(&repo.dir), PRODUCT, "c", path_str(&file)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("targets-v1.pem") && err.contains("chmod 600"), "{err}");

    let tokens = work.path().join("tokens");
    fs::write(&tokens, "a:b\n").unwrap();
    // Refused before anything is bound: no traffic leaves loopback.
    let out = config_service(&[
        "serve",
        "--repo",
        path_str(&repo.dir),
        "--listen",
        "0.0.0.0:1",
        "--tokens-file",
        path_str(&tokens),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("plaintext is allowed on loopback only"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Service + controller.
// ---------------------------------------------------------------------------------------

/// Request-log lines after the first `skip`.
fn requests_after(service: &Service, skip: usize) -> Vec<Value> {
    service.requests().into_iter().skip(skip).collect()
}

/// Waits until a request after the first `skip` satisfies `pred`; returns it.
fn wait_request(service: &Service, skip: usize, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_until(SYNC, what, || requests_after(service, skip).into_iter().find(&pred))
}

#[test]
fn published_configs_reach_the_controller_and_removal_removes_them() {
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    repo.publish("cfg1", r#"{"sweep_interval_secs": 10}"#);
    let service = Service::start(work.path(), &repo, &[]);
    let mut controller = Controller::start(work.path(), &service.endpoint(), &repo.root_file(1));

    let status = controller.wait_status(SYNC, "cfg1 v1 acknowledged", |s| holds(s, "cfg1", 1));
    assert_eq!(status["root_version"], 1);
    assert_eq!(status["targets_version"], repo.targets()["version"]);
    assert_eq!(config_in(&status, "cfg1").unwrap()["sha256"], sha256_of(&repo.targets(), "cfg1"));
    assert_eq!(config_in(&status, "cfg1").unwrap()["path"], "2/CONNTRACK/cfg1/config.json");
    // The acknowledgement travels back to the service on the next request.
    wait_request(&service, 0, "cfg1 v1 reported acknowledged", |r| {
        reported_state(r, "cfg1").is_some_and(|c| c["version"] == 1 && c["apply_state"] == 2)
    });

    repo.publish("cfg1", r#"{"sweep_interval_secs": 20}"#);
    controller.wait_status(SYNC, "cfg1 v2 acknowledged", |s| holds(s, "cfg1", 2));

    // Content the listener cannot parse: held with apply_state error, reported back.
    repo.publish("cfg2", "not json at all");
    let status = controller.wait_status(SYNC, "cfg2 in error", |s| {
        config_in(s, "cfg2").is_some_and(|c| c["apply_state"] == 3 && c["apply_error"] != "")
    });
    assert!(holds(&status, "cfg1", 2), "a bad sibling must not disturb cfg1");
    wait_request(&service, 0, "cfg2 error reported", |r| {
        reported_state(r, "cfg2").is_some_and(|c| c["apply_state"] == 3 && c["apply_error"] != "")
    });

    repo.remove("cfg1");
    let status = controller.wait_status(SYNC, "cfg1 gone", |s| config_in(s, "cfg1").is_none());
    assert!(config_in(&status, "cfg2").is_some());
    assert_eq!(status["targets_version"], repo.targets()["version"]);
}

#[test]
fn root_rotation_is_followed() {
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    repo.publish("cfg1", r#"{"sweep_interval_secs": 10}"#);
    let service = Service::start(work.path(), &repo, &[]);
    let mut controller = Controller::start(work.path(), &service.endpoint(), &repo.root_file(1));
    controller.wait_status(SYNC, "cfg1 v1", |s| holds(s, "cfg1", 1) && s["root_version"] == 1);

    repo.rotate_root();
    controller.wait_status(SYNC, "root v2", |s| s["root_version"] == 2);
    // Two rotations at once arrive oldest first and are walked in order.
    repo.rotate_root();
    repo.rotate_root();
    repo.publish("cfg1", r#"{"sweep_interval_secs": 20}"#);
    let status = controller
        .wait_status(SYNC, "root v4 and cfg1 v2", |s| s["root_version"] == 4 && holds(s, "cfg1", 2));
    assert_eq!(status["last_error"], Value::Null);
}

#[test]
fn python_tuf_metadata_is_accepted_by_the_controller() {
    let work = scratch_dir();
    let sets = python_sets(work.path());
    let repo = Repo::empty(work.path());
    repo.install(&sets.join("good"));
    let service = Service::start(work.path(), &repo, &[]);
    let mut controller =
        Controller::start(work.path(), &service.endpoint(), &sets.join("good/metadata/1.root.json"));
    let status = controller.wait_status(SYNC, "python-made cfg1 v3", |s| holds(s, "cfg1", 3));
    assert_eq!(status["root_version"], 2, "python-made root rotation 1 -> 2 followed");
    assert_eq!(status["targets_version"], 5);
}

/// Serves python-tuf's good set, lets the controller accept it, then serves `case` and
/// checks: rejected, state unchanged, error reported on the next request.
fn rejection_case(case: &str) {
    let work = scratch_dir();
    let sets = python_sets(work.path());
    let repo = Repo::empty(work.path());
    repo.install(&sets.join("good"));
    let service = Service::start(work.path(), &repo, &[]);
    let mut controller =
        Controller::start(work.path(), &service.endpoint(), &sets.join("good/metadata/1.root.json"));
    let before = controller.wait_status(SYNC, "good set accepted", |s| {
        holds(s, "cfg1", 3) && s["root_version"] == 2 && s["targets_version"] == 5
    });
    let seen = service.requests().len();

    repo.install(&sets.join(case));
    // The request that received the defective update, then the one right after it: the
    // rejection must be reported on that very next request.
    let (delivered, reported) = wait_until(SYNC, "the defective update and the next request", || {
        let after = requests_after(&service, seen);
        let index = after.iter().position(|r| {
            r["answer"]["targets_version"].is_u64() || r["answer"]["roots"].as_u64().is_some_and(|n| n > 0)
        })?;
        Some((after[index].clone(), after.get(index + 1)?.clone()))
    });
    assert_eq!(delivered["has_error"], false, "{case}: error reported before the update arrived");
    assert_eq!(reported["has_error"], true, "{case}: rejection not reported on the next request");
    assert!(reported["error"].as_str().is_some_and(|e| !e.is_empty()), "{case}: empty error");
    assert_eq!(reported["targets_version"], 5, "the request after the rejection still reports v5");
    assert_eq!(reported["root_version"], 2);
    let after = controller.status().unwrap();
    assert_eq!(after["targets_version"], 5, "{case}: targets version changed");
    assert_eq!(after["root_version"], 2, "{case}: root version changed");
    assert_eq!(after["configs"], before["configs"], "{case}: configs changed");
    let cfg_reported = reported_state(&reported, "cfg1").unwrap();
    assert_eq!(cfg_reported["version"], 3, "{case}: the reported config version changed");
}

macro_rules! rejection_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                rejection_case(stringify!($name));
            }
        )*
    };
}

mod rejected {
    use super::rejection_case;
    rejection_tests!(
        bad_signature,
        below_threshold,
        expired_targets,
        targets_rollback,
        wrong_hash,
        wrong_length,
        missing_custom_v,
        root_not_signed_by_previous,
    );
}

/// Delays chosen after the current run of failures, oldest first.
fn failure_delays(status: &Value) -> Vec<u64> {
    let delays: Vec<u64> =
        status["recent_retry_delays_ms"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
    let run = status["consecutive_errors"].as_u64().unwrap() as usize;
    delays[delays.len().saturating_sub(run)..].to_vec()
}

fn assert_growing(delays: &[u64]) {
    assert!(delays.len() >= 3, "need at least 3 delays, got {delays:?}");
    assert!(delays.last() > delays.first(), "backoff does not grow: {delays:?}");
    assert!(delays.windows(2).all(|w| w[1] * 10 >= w[0] * 9), "backoff shrinks during failures: {delays:?}");
}

#[test]
fn token_rotation_is_used_and_a_refused_token_backs_off() {
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    repo.publish("cfg1", "{}");
    let service = Service::start(work.path(), &repo, &[]);
    let mut controller = Controller::start(work.path(), &service.endpoint(), &repo.root_file(1));
    controller.wait_status(SYNC, "cfg1 v1", |s| holds(s, "cfg1", 1));

    // Rotated between polls: the next requests carry the new token, and only it.
    controller.rotate_token(SECOND_TOKEN);
    let seen = service.requests().len();
    let first_new = wait_request(&service, seen, "a request with the rotated token", |r| {
        r["token_name"] == SECOND_TOKEN_NAME
    });
    let seen = service.requests().iter().position(|r| *r == first_new).unwrap() + 1;
    wait_until(SYNC, "two more polls", || (requests_after(&service, seen).len() >= 2).then_some(()));
    assert!(requests_after(&service, seen).iter().all(|r| r["token_name"] == SECOND_TOKEN_NAME));

    // A token the service refuses: a clear error and a growing backoff.
    controller.rotate_token("tok-not-known-to-the-service");
    let status = controller.wait_status(Duration::from_secs(30), "3 consecutive auth failures", |s| {
        s["consecutive_errors"].as_u64().is_some_and(|n| n >= 3)
    });
    let error = status["last_error"].as_str().unwrap_or_default().to_lowercase();
    assert!(error.contains("unauthenticated") || error.contains("token"), "unclear error: {error}");
    assert_growing(&failure_delays(&status));
    assert!(service.requests().iter().any(|r| r["status"] == "unauthenticated"));

    controller.rotate_token(TOKEN);
    controller
        .wait_status(Duration::from_secs(30), "recovery with a good token", |s| s["consecutive_errors"] == 0);
}

#[test]
fn outage_backs_off_then_recovers_on_the_first_poll_after_return() {
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    repo.publish("cfg1", "{}");
    let mut service = Service::start(work.path(), &repo, &[]);
    let mut controller = Controller::start(work.path(), &service.endpoint(), &repo.root_file(1));
    controller.wait_status(SYNC, "cfg1 v1", |s| holds(s, "cfg1", 1));
    let polls_ok = controller.status().unwrap()["polls_ok"].as_u64().unwrap();

    service.process.kill();
    let down = controller.wait_status(Duration::from_secs(30), "3 failed polls", |s| {
        s["consecutive_errors"].as_u64().is_some_and(|n| n >= 3)
    });
    assert_growing(&failure_delays(&down));

    let seen = service.requests().len();
    let (port, tokens) = (service.port, service.tokens_file.clone());
    let restarted = Instant::now();
    let waiting_ms = controller.status().unwrap()["next_poll_delay_ms"].as_u64().unwrap();
    let service = Service::start_on(work.path(), &repo, port, &tokens, &[]);
    let up = controller
        .wait_status(Duration::from_millis(waiting_ms + 5_000), "recovery", |s| s["consecutive_errors"] == 0);
    assert!(up["polls_ok"].as_u64().unwrap() > polls_ok);
    assert!(
        restarted.elapsed() <= Duration::from_millis(waiting_ms + 3_000),
        "recovered after {:?}, the pending delay was {waiting_ms} ms",
        restarted.elapsed()
    );
    let after = requests_after(&service, seen);
    assert_eq!(after[0]["status"], "ok", "the first poll after the return must succeed");
    assert!(holds(&up, "cfg1", 1));
}

#[test]
fn unimplemented_stops_the_controller_polling() {
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    let service = Service::start(work.path(), &repo, &["--disable-remote-config"]);
    let mut controller = Controller::start(work.path(), &service.endpoint(), &repo.root_file(1));
    let status = controller.wait_status(SYNC, "disabled", |s| s["disabled"] == true);
    assert_ne!(status["disabled_reason"], "");
    let calls = service.requests().len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(service.requests().len(), calls, "the controller kept polling after UNIMPLEMENTED");
    assert!(calls <= 2, "{calls} calls before stopping");
}

#[test]
fn restart_reloads_state_and_still_rejects_rollback() {
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    repo.publish("cfg1", r#"{"sweep_interval_secs": 10}"#);
    // Keep a validly signed older repository to replay later.
    let old = work.path().join("old-repo");
    copy_tree(&repo.dir.join("metadata"), &old.join("metadata"));
    copy_tree(&repo.dir.join("targets"), &old.join("targets"));
    repo.publish("cfg1", r#"{"sweep_interval_secs": 20}"#);
    let newest = repo.targets()["version"].as_u64().unwrap();

    let service = Service::start(work.path(), &repo, &[]);
    let mut controller = Controller::start(work.path(), &service.endpoint(), &repo.root_file(1));
    controller.wait_status(SYNC, "cfg1 v2", |s| holds(s, "cfg1", 2) && s["targets_version"] == newest);

    controller.process.kill();
    repo.install(&old);
    let seen = service.requests().len();
    controller.restart(work.path());

    let first = wait_request(&service, seen, "the restarted controller's first request", |_| true);
    assert_eq!(first["targets_version"], newest, "state not reloaded from disk");
    assert_eq!(reported_state(&first, "cfg1").unwrap()["version"], 2);
    wait_request(&service, seen, "the rollback rejected and reported", |r| r["has_error"] == true);
    let status = controller.status().unwrap();
    assert_eq!(status["targets_version"], newest);
    assert!(holds(&status, "cfg1", 2), "rolled back: {status:#?}");
}

/// A CA and a leaf for `localhost`/127.0.0.1, made with the openssl CLI.
fn make_tls(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=rc-e2e-ca"],
    ]
    .concat());
    run(&[&["req"][..], &ec, &["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost"]].concat());
    fs::write(dir.join("leaf.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
        .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    fs::set_permissions(dir.join("ca.pem"), fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn controller_syncs_over_tls() {
    let work = scratch_dir();
    make_tls(work.path());
    let repo = Repo::init(work.path());
    repo.publish("cfg1", "{}");
    let (cert, key) = (work.path().join("leaf.pem"), work.path().join("leaf.key"));
    let service =
        Service::start(work.path(), &repo, &["--tls-cert", path_str(&cert), "--tls-key", path_str(&key)]);
    let endpoint = format!("https://localhost:{}", service.port);
    let ca = format!("ca_file = {:?}", path_str(&work.path().join("ca.pem")));
    let mut controller = Controller::start_with(work.path(), &endpoint, &repo.root_file(1), &ca);
    controller.wait_status(SYNC, "cfg1 over TLS", |s| holds(s, "cfg1", 1));
    assert!(service.requests().iter().all(|r| r["status"] == "ok"));
}

#[test]
fn suggested_interval_is_bounded_and_backend_state_is_echoed() {
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    let file = work.path().join("c.json");
    fs::write(&file, "{}").unwrap();
    let publish = |id: &str, secs: &str| {
        config_service_ok(&[
            "publish",
            "--repo",
            path_str(&repo.dir),
            PRODUCT,
            id,
            path_str(&file),
            "--refresh-interval-secs",
            secs,
        ]);
    };
    publish("cfg1", "3");
    let service = Service::start(work.path(), &repo, &[]);
    let mut controller = Controller::start(work.path(), &service.endpoint(), &repo.root_file(1));
    let status = controller.wait_status(SYNC, "cfg1 with a 3 s suggestion", |s| {
        holds(s, "cfg1", 1)
            && s["consecutive_errors"] == 0
            && s["next_poll_delay_ms"].as_u64().is_some_and(|d| d >= 2_900)
    });
    assert!(status["next_poll_delay_ms"].as_u64().unwrap() <= 3_500, "{status:#?}");

    // The opaque state from the targets' custom is echoed back as backend_client_state.
    let opaque = repo.targets()["custom"]["opaque_backend_state"].as_str().unwrap().len();
    wait_request(&service, 0, "backend state echoed", |r| r["backend_client_state_len"] == opaque);

    // A suggestion outside the controller's [1 s, 60 s] bounds is not honoured.
    publish("cfg2", "600");
    let status = controller.wait_status(SYNC, "cfg2 with a 600 s suggestion", |s| holds(s, "cfg2", 1));
    let delay = status["next_poll_delay_ms"].as_u64().unwrap();
    assert!(delay <= 60_000, "a 600 s suggestion was honoured: {delay} ms");
}
