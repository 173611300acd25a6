//! The shipped Pod (`deploy/kubernetes/pod.yaml`) run for real: both images built FROM
//! scratch here (`deploy/images/build.sh`, from the debug binaries `cargo build` already
//! made, so CI does not build everything a second time in release), started by podman
//! with runc, the shipped ConfigMaps and seccomp profiles. Checked from outside the
//! containers: the loader serves through the shared socket volume, lists the node's NAT
//! translations exactly as `conntrack -L` does, the controller polls the reference
//! service and pushes the published config to the loader, which applies it, and both
//! audits pass inside their containers.
//!
//! A second test hides the node's BTF from the loader (`btf.no_sysfs`, as on a kernel built
//! without it), publishes this kernel's minimized BTF and checks that the pod's BTF cache
//! volume keeps it: the loader container restarted with the controller paused starts on
//! CO-RE from that volume alone.
//!
//! What the tests change in the shipped manifests, and why: the TUF state hostPath points
//! at a temporary directory (not the machine's /var/lib), the controller's endpoint is the
//! test's plaintext loopback service (the node's loopback: hostNetwork), and the root and
//! token are the test repository's; the BTF-cache test appends `btf.no_sysfs = true` to the
//! shipped loader.toml.
#[path = "remote_config/harness.rs"]
mod harness;

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use e2e_tests::NatLab;
use e2e_tests::compare::assert_matches_kernel;
use e2e_tests::loader::{LoaderHandle, loaderctl};
use e2e_tests::podman::{self, PlaySpec, PlayedPod, repo_root};
use harness::{Repo, Service, TOKEN, bin, config_service_ok, path_str, scratch_dir, wait_until};

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
    "loader-btf-cache",
];
/// One pod at a time: every test plays the same pod and volume names.
static ONE_POD: Mutex<()> = Mutex::new(());

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
    let Some(_one_pod) = pod_ready("the pod test") else { return };
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    repo.publish_product("LOADER_LOG", "log", r#"{"filter": "info"}"#);
    let service = Service::start(work.path(), &repo, &[]);
    let pod = play(work.path(), &repo, &service, "");

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

#[test]
fn a_remote_btf_kept_in_the_pods_cache_volume_survives_a_loader_restart_without_the_controller() {
    let Some(_one_pod) = pod_ready("the pod BTF-cache test") else { return };
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    let service = Service::start(work.path(), &repo, &[]);
    let pod = play(work.path(), &repo, &service, "[btf]\n    no_sysfs = true");
    let loader = wait_for_loader(&pod);
    let fallback = conntrack_strategy(&loader);
    assert!(!fallback.starts_with("core/"), "the node's BTF is hidden: no CO-RE yet, not {fallback}");

    let objects = work.path().join("objects");
    let out = std::process::Command::new(bin("privileged-loader"))
        .args(["objects", "--out", path_str(&objects)])
        .output()
        .expect("run privileged-loader objects");
    assert!(out.status.success(), "privileged-loader objects: {}", String::from_utf8_lossy(&out.stderr));
    let object = objects.join("conntrack.bpf.o");
    config_service_ok(&["publish-btf", "--repo", path_str(&repo.dir), "--object", path_str(&object)]);
    wait_until(Duration::from_secs(60), "the conntracker in the pod to run CO-RE", || {
        Some(()).filter(|_| conntrack_strategy(&loader).starts_with("core/"))
    });
    let release = read(Path::new("/proc/sys/kernel/osrelease"));
    let key = format!("{}-{}", std::env::consts::ARCH, release.trim());
    let cached = pod.volume_path("loader-btf-cache").join(format!("{key}.btf"));
    assert!(cached.is_file(), "the BTF is kept in the volume: no {}\n{}", cached.display(), pod.logs(LOADER));

    // With the controller frozen, only the volume can give the new loader its BTF. Paused,
    // not stopped: the pod's exit policy stops its infra container once no other container
    // runs, and then the loader's cannot start again (it joins the infra's namespaces).
    podman::podman_ok(&["pause", &pod.container(CONTROLLER)]);
    podman::podman_ok(&["restart", &pod.container(LOADER)]);
    let loader = wait_for_loader(&pod);
    let strategy = conntrack_strategy(&loader);
    assert!(strategy.starts_with("core/"), "restarted on {strategy}:\n{}", pod.logs(LOADER));
    let config = loader.ctl_json(&["config"]);
    assert_eq!(config["remote_configs"], serde_json::json!([]), "nothing was pushed: {config:#}");
    let status = loader.ctl_json(&["status"]);
    let assets = status["assets"].as_array().cloned().unwrap_or_default();
    let detail = assets.iter().find(|a| a["asset"] == "conntrack").map(|a| a["detail"].to_string());
    let origin = format!("BTF from remote config `2/BTF/{key}/btf.json` v1");
    assert!(detail.as_deref().unwrap_or_default().contains(&origin), "{status:#}");
    podman::podman_ok(&["unpause", &pod.container(CONTROLLER)]);
}

/// This test's turn to play the pod, with the images built; `None` (the test is skipped,
/// saying so) where podman cannot run containers.
fn pod_ready(test: &str) -> Option<MutexGuard<'static, ()>> {
    if let Some(why) = podman::unavailable() {
        eprintln!("SKIPPED {test}: podman cannot run containers here: {why}");
        return None;
    }
    let turn = ONE_POD.lock().unwrap_or_else(|p| p.into_inner());
    podman::build_images();
    Some(turn)
}

/// The strategy of the running conntracker, from `loaderctl status`.
fn conntrack_strategy(loader: &PodLoader<'_>) -> String {
    let status = loader.ctl_json(&["status"]);
    let modules = status["modules"].as_array().cloned().unwrap_or_default();
    let conntrack = modules.iter().find(|m| m["name"] == "conntrack");
    conntrack.and_then(|m| m["strategy"].as_str()).unwrap_or_default().to_string()
}

/// Plays the shipped pod with the test's ConfigMaps and Secret, `loader_toml` appended to
/// the shipped loader.toml (lines indented for the ConfigMap's block).
fn play(work: &Path, repo: &Repo, service: &Service, loader_toml: &str) -> PlayedPod {
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
        write(work, "loader-config.yaml", &format!("{}\n    {loader_toml}\n", doc("ebpf-loader-config"))),
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
