//! Running the project's Pod manifest under podman (`podman kube play`), with the
//! project's own containers.conf (runc, ulimits this machine allows) and seccomp profiles.
//!
//! [`PlayedPod`] tears everything it made down on `Drop`: the pod, the volumes podman made
//! for its emptyDir/ConfigMap/Secret volumes, and the podman secret.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `podman` with `CONTAINERS_CONF` pointing at `deploy/podman/containers.conf`.
pub fn podman() -> Command {
    let mut command = Command::new("podman");
    command.env("CONTAINERS_CONF", repo_root().join("deploy/podman/containers.conf"));
    command
}

/// Runs podman with `args`, panicking with its stderr on failure.
pub fn podman_ok(args: &[&str]) -> Output {
    let out = podman().args(args).output().unwrap_or_else(|e| panic!("cannot run podman {args:?}: {e}"));
    assert!(out.status.success(), "podman {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Why podman cannot run containers here, if it cannot (`podman info` fails).
pub fn unavailable() -> Option<String> {
    match podman().arg("info").output() {
        Err(e) => Some(format!("podman is not installed ({e}): deploy/install-deps.sh installs it")),
        Ok(out) if !out.status.success() => {
            Some(format!("`podman info` failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
        Ok(_) => None,
    }
}

/// Builds both images from the binaries `cargo build` made (deploy/images/build.sh).
pub fn build_images() {
    let out = Command::new("bash")
        .arg(repo_root().join("deploy/images/build.sh"))
        .args(["--profile", "debug"])
        .output()
        .expect("run deploy/images/build.sh");
    assert!(
        out.status.success(),
        "building the images failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What to play: the manifest and the ConfigMaps podman takes with `--configmap`.
pub struct PlaySpec<'a> {
    pub pod_name: &'a str,
    pub manifest: &'a Path,
    pub configmaps: &'a [PathBuf],
    /// Volume names the pod uses (removed before and after, so each run starts empty).
    pub volumes: &'a [&'a str],
    /// A podman secret to create from a Kubernetes Secret document, and its name.
    pub secret: Option<(&'a str, &'a Path)>,
    /// A volume the root container must own: podman chowns a new named volume to the
    /// first container that mounts it, and the non-root controller may win that race.
    pub root_owned_volume: Option<(&'a str, &'a str)>,
}

/// A pod started by `podman kube play`.
pub struct PlayedPod {
    name: String,
    volumes: Vec<String>,
    secret: Option<String>,
}

impl PlayedPod {
    pub fn play(spec: PlaySpec<'_>) -> Self {
        let pod = Self {
            name: spec.pod_name.to_string(),
            volumes: spec.volumes.iter().map(|v| v.to_string()).collect(),
            secret: spec.secret.map(|(name, _)| name.to_string()),
        };
        pod.remove();
        if let Some((name, file)) = spec.secret {
            podman_ok(&["secret", "create", name, &file.to_string_lossy()]);
        }
        if let Some((volume, image)) = spec.root_owned_volume {
            podman_ok(&["volume", "create", volume]);
            podman_ok(&["run", "--rm", "--network=none", "-v", &format!("{volume}:/v"), image, "--version"]);
        }
        let profiles = repo_root().join("deploy/seccomp");
        let mut args = vec!["kube".to_string(), "play".to_string(), "--seccomp-profile-root".to_string()];
        args.push(profiles.to_string_lossy().into_owned());
        for configmap in spec.configmaps {
            args.push("--configmap".into());
            args.push(configmap.to_string_lossy().into_owned());
        }
        args.push(spec.manifest.to_string_lossy().into_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        podman_ok(&args);
        pod
    }

    /// `podman kube play` names containers `<pod>-<container>`.
    pub fn container(&self, name: &str) -> String {
        format!("{}-{name}", self.name)
    }

    /// Runs `args` inside container `name` (with its security context).
    pub fn exec(&self, name: &str, args: &[&str]) -> Output {
        podman().arg("exec").arg(self.container(name)).args(args).output().expect("run podman exec")
    }

    pub fn logs(&self, name: &str) -> String {
        podman()
            .args(["logs", &self.container(name)])
            .output()
            .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
            .unwrap_or_default()
    }

    /// Where a named volume lives on the host.
    pub fn volume_path(&self, volume: &str) -> PathBuf {
        let out = podman_ok(&["volume", "inspect", "--format", "{{.Mountpoint}}", volume]);
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    }

    fn remove(&self) {
        let quiet = |args: &[&str]| {
            let _ = podman().args(args).output();
        };
        // A test that failed with a container paused leaves it so; unpaused, it stops at once.
        quiet(&["pod", "unpause", &self.name]);
        quiet(&["pod", "rm", "--force", "--time", "5", &self.name]);
        for volume in &self.volumes {
            quiet(&["volume", "rm", "--force", volume]);
        }
        if let Some(secret) = &self.secret {
            quiet(&["secret", "rm", secret]);
        }
    }
}

impl Drop for PlayedPod {
    fn drop(&mut self) {
        self.remove();
    }
}
