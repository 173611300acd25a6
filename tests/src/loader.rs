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
    /// Extra lines of the `[api]` section (e.g. `read_only_gids = [65534]`).
    pub api_toml: &'a str,
    /// Serve on this socket instead of one in the loader's temp dir (a restarted loader
    /// takes its predecessor's place).
    pub socket: Option<&'a Path>,
    /// A command the loader is started through, e.g. `["setpriv", "--bounding-set=-net_admin", "--"]`.
    pub wrapper: &'a [&'a str],
}

impl LoaderProcess {
    /// Starts the loader and waits (up to 20 s) until its socket answers.
    pub fn start(options: LoaderOptions<'_>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = options.socket.map_or_else(|| dir.path().join("run/loader.sock"), Path::to_path_buf);
        let log = dir.path().join("loader.log");
        let mut uids = vec![0];
        uids.extend_from_slice(options.allowed_uids);
        let config = format!(
            "[api]\nsocket = {:?}\nallowed_uids = {:?}\n{}\n\n{}\n",
            socket.display().to_string(),
            uids,
            options.api_toml,
            options.extra_toml
        );
        let config_path = dir.path().join("loader.toml");
        std::fs::write(&config_path, config).expect("write loader config");
        let mut argv: Vec<std::ffi::OsString> = match options.netns {
            Some(ns) => ["ip", "netns", "exec", ns].map(Into::into).to_vec(),
            None => Vec::new(),
        };
        argv.extend(options.wrapper.iter().map(Into::into));
        argv.push(binary("privileged-loader").into());
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
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

    /// Opens the socket's directories and file to everyone, as a deployment would for the
    /// controller's group, so that only SO_PEERCRED stands between a caller and the API.
    pub fn open_socket_to_all(&self) {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.socket.parent().expect("socket dir");
        for (path, mode) in [(self.dir.path(), 0o755), (dir, 0o755), (self.socket.as_path(), 0o666)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
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
