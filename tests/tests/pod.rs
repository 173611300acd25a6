//! The shipped Pod (`deploy/kubernetes/pod.yaml`) run for real: both images built FROM
//! scratch here (`deploy/images/build.sh`, from the debug binaries `cargo build` already
//! made, so CI does not build everything a second time in release), started by podman
//! with runc, the shipped ConfigMaps and seccomp profiles. Checked from outside the
//! containers: the loader serves through the shared socket volume, lists the node's NAT
//! translations exactly as `conntrack -L` does, the controller polls the reference
//! service and pushes the published config to the loader, which applies it, and both
//! audits pass inside their containers.
//!
//! What the test changes in the shipped manifests, and why: the TUF state hostPath points
//! at a temporary directory (not the machine's /var/lib), the controller's endpoint is the
//! test's plaintext loopback service (the node's loopback: hostNetwork), and the root and
//! token are the test repository's.
#[path = "remote_config/harness.rs"]
mod harness;

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e_tests::NatLab;
use e2e_tests::compare::assert_matches_kernel;
use e2e_tests::loader::{LoaderHandle, loaderctl};
use e2e_tests::podman::{self, PlaySpec, PlayedPod, repo_root};
use harness::{Repo, Service, TOKEN, scratch_dir, wait_until};

const POD: &str = "ebpf-agent";
const LOADER: &str = "privileged-loader";
const CONTROLLER: &str = "controller";
const CONTROLLER_UID: u32 = 65532;
const LOG_PATH: &str = "2/LOADER_LOG/log/config.json";
const VOLUMES: &[&str] = &[
    "loader-socket",
    "ebpf-loader-config",
    "ebpf-controller-config",
    "remote-config-root",
    "remote-config-token",
];

/// The loader in the pod, reached through the socket volume on the host.
struct PodLoader<'a> {
    pod: &'a PlayedPod,
    socket: PathBuf,
}

impl LoaderHandle for PodLoader<'_> {
    fn socket(&self) -> &Path {
        &self.socket
    }

    fn log_text(&self) -> String {
        self.pod.logs(LOADER)
    }
}

#[test]
fn the_shipped_pod_runs_under_podman_and_passes_its_audits() {
    if let Some(why) = podman::unavailable() {
        eprintln!("SKIPPED the pod test: podman cannot run containers here: {why}");
        return;
    }
    podman::build_images();
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    repo.publish_product("LOADER_LOG", "log", r#"{"filter": "info"}"#);
    let service = Service::start(work.path(), &repo, &[]);
    let pod = play(work.path(), &repo, &service);

    let loader = wait_for_loader(&pod);
    let lab = NatLab::new("pod-nat").expect("lab");
    let _connections = lab.connect_all().expect("NAT'd connections");
    assert_matches_kernel(&loader, &lab, |_| true);

    // The controller polls the service, verifies, pushes to the loader over the shared
    // socket, and the loader (re-verifying against its own pinned root) applies it.
    let applied = wait_until(Duration::from_secs(60), "the published config applied in the loader", || {
        let config = loader.ctl_json(&["config"]);
        let records = config["remote_configs"].as_array()?;
        records.iter().any(|r| r["path"] == LOG_PATH && r["state"] == "applied").then_some(config)
    });
    assert_eq!(applied["remote_config_enabled"], true, "the loader pins the shipped root: {applied:#}");
    let state = work.path().join("state");
    let status: serde_json::Value =
        serde_json::from_slice(&fs::read(state.join("status.json")).expect("status.json")).expect("JSON");
    assert!(status["polls_ok"].as_u64() >= Some(1), "{status:#}");

    assert_audit_passes(&pod, LOADER, &["/loaderctl", "--socket", "/run/ebpf-loader/loader.sock", "audit"]);
    assert_audit_passes(&pod, CONTROLLER, &["/controller", "audit", "--pid", "1"]);
}

/// Plays the shipped pod with the test's ConfigMaps and Secret.
fn play(work: &Path, repo: &Repo, service: &Service) -> PlayedPod {
    let state = work.join("state");
    fs::create_dir(&state).expect("state dir");
    chown(&state, Some(CONTROLLER_UID), Some(CONTROLLER_UID)).expect("chown state dir");
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).expect("chmod state dir");
    let kube = repo_root().join("deploy/kubernetes");
    let pod_yaml = read(&kube.join("pod.yaml"))
        .replace("path: /var/lib/ebpf-agent/controller", &format!("path: {}", state.display()));
    let manifest = write(work, "pod.yaml", &pod_yaml);

    let shipped = read(&kube.join("config.yaml"));
    let docs: Vec<&str> = shipped.split("\n---\n").collect();
    let doc = |name: &str| {
        docs.iter().find(|d| d.contains(&format!("name: {name}\n"))).unwrap_or_else(|| panic!("no {name}"))
    };
    let controller_config = doc("ebpf-controller-config")
        .replace(
            "endpoint = \"https://remote-config.example.com:443\"",
            // The reference service listens on the node's loopback without TLS here, which
            // the shipped config refuses: the development switch says so explicitly.
            &format!("endpoint = {:?}\n    plaintext_for_development = true", service.endpoint()),
        )
        .replace("root_file = ", "poll_interval_secs = 1\n    root_file = ");
    assert!(controller_config.contains(&service.endpoint()), "the shipped endpoint line changed:\n{shipped}");
    let root = read(&repo.dir.join("metadata/1.root.json"));
    let root_config = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: remote-config-root, namespace: ebpf-agent}}\n\
         immutable: true\ndata:\n  root.json: {}\n",
        serde_json::to_string(&root).expect("root as a JSON string")
    );
    let configmaps = [
        write(work, "loader-config.yaml", doc("ebpf-loader-config")),
        write(work, "controller-config.yaml", &controller_config),
        write(work, "root.yaml", &root_config),
    ];
    // podman 4.3 copies a Secret's `data` values verbatim (no base64 decoding) and ignores
    // `stringData`: the token goes in raw. This document is only podman's, never shipped.
    let secret = write(
        work,
        "secret.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: remote-config-token}}\ndata: {{token: {TOKEN}}}\n"
        ),
    );
    PlayedPod::play(PlaySpec {
        pod_name: POD,
        manifest: &manifest,
        configmaps: &configmaps,
        volumes: VOLUMES,
        secret: Some(("remote-config-token", &secret)),
        root_owned_volume: Some(("loader-socket", "localhost/ebpf-agent/privileged-loader:0.1.0")),
    })
}

/// Waits (up to 60 s) until the loader answers `loaderctl health` through the volume.
fn wait_for_loader(pod: &PlayedPod) -> PodLoader<'_> {
    let socket = pod.volume_path("loader-socket").join("loader.sock");
    let up = e2e_tests::process::wait_until(Duration::from_secs(60), || {
        socket.exists() && loaderctl(&socket, &["health"], None).status.success()
    });
    assert!(up, "the loader in the pod did not serve on {}:\n{}", socket.display(), pod.logs(LOADER));
    PodLoader { pod, socket }
}

/// Runs an audit command inside `container`; every rule must pass.
fn assert_audit_passes(pod: &PlayedPod, container: &str, command: &[&str]) {
    let out = pod.exec(container, command);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.contains("PASS") && !report.contains("FAIL"),
        "{container} audit failed:\n{report}{}\n{container} log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        pod.logs(container)
    );
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}
