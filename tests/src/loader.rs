//! Running the real `privileged-loader` and querying it with the real `loaderctl`.
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::process::{ChildGuard, binary, wait_until};

/// A loader process with its own socket and config in a private temp dir.
pub struct LoaderProcess {
    pub socket: PathBuf,
    pub log: PathBuf,
    // Drop order: the process first, then its directory.
    pub process: ChildGuard,
    pub dir: tempfile::TempDir,
}

/// How to start one loader.
#[derive(Default)]
pub struct LoaderOptions<'a> {
    /// Extra TOML appended to the generated config (sections other than [api]).
    pub extra_toml: &'a str,
    /// Run the loader inside this network namespace (`ip netns exec`).
    pub netns: Option<&'a str>,
    /// Extra command-line flags after `run`.
    pub args: &'a [&'a str],
    /// Peer uids allowed on the API (root is always allowed).
    pub allowed_uids: &'a [u32],
    /// Peer gids (primary or supplementary) allowed on the API.
    pub allowed_gids: &'a [u32],
}

impl LoaderProcess {
    /// Starts the loader and waits (up to 20 s) until its socket answers.
    pub fn start(options: LoaderOptions<'_>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("run/loader.sock");
        let log = dir.path().join("loader.log");
        let mut uids = vec![0];
        uids.extend_from_slice(options.allowed_uids);
        let config = format!(
            "[api]\nsocket = {:?}\nallowed_uids = {:?}\nallowed_gids = {:?}\n\n{}\n",
            socket.display().to_string(),
            uids,
            options.allowed_gids,
            options.extra_toml
        );
        let config_path = dir.path().join("loader.toml");
        std::fs::write(&config_path, config).expect("write loader config");
        let mut command = match options.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary("privileged-loader"));
                c
            }
            None => Command::new(binary("privileged-loader")),
        };
        command
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(options.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let process = ChildGuard::spawn("privileged-loader", &mut command);
        let mut loader = Self { socket, log, process, dir };
        // The socket is bound before the modules load (binding may need privileges the
        // loader drops); it serves once loading is done, so wait for a real answer.
        let up = wait_until(Duration::from_secs(20), || {
            loader.socket.exists() && loaderctl(&loader.socket, &["status"], None).status.success()
        });
        assert!(up && loader.process.running(), "the loader did not start serving:\n{}", loader.log_text());
        loader
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `loaderctl --socket <socket> <args>` as root.
    pub fn ctl(&self, args: &[&str]) -> Output {
        loaderctl(&self.socket, args, None)
    }

    /// Runs `loaderctl ... --json` and parses its output, failing with its stderr.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ctl(&all);
        assert!(
            out.status.success(),
            "loaderctl {args:?} failed: {}\nloader log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        serde_json::from_slice(&out.stdout).expect("loaderctl printed JSON")
    }

    /// `loaderctl status --json`.
    pub fn status(&self) -> serde_json::Value {
        self.ctl_json(&["status"])
    }

    /// The status of module `name`.
    pub fn module(&self, name: &str) -> serde_json::Value {
        let status = self.status();
        status["modules"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no module {name} in status: {status:#}"))
    }
}

/// Runs loaderctl against `socket`, optionally as another uid/gid.
pub fn loaderctl(socket: &Path, args: &[&str], as_user: Option<(u32, u32)>) -> Output {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(binary("loaderctl"));
    command.arg("--socket").arg(socket).args(args);
    if let Some((uid, gid)) = as_user {
        command.uid(uid).gid(gid);
    }
    command.output().expect("run loaderctl")
}
