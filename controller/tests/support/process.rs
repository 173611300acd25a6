//! The real `controller` binary, run as uid/gid 65534 (nobody) like in production, in a
//! temporary directory it owns. Killed and cleaned up on drop, even if the test fails.

use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use controller::status::Status;
pub use e2e_tests::process::{ChildGuard, NOBODY, is_root};

/// A controller's files: config, token, pinned root, state dir, log.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new(root_v1: &[u8], token: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ws = Self { dir };
        ws.write("root.json", root_v1);
        ws.write("token", token.as_bytes());
        std::fs::create_dir(ws.state_dir()).unwrap();
        ws.give_to_nobody(&ws.state_dir());
        ws.give_to_nobody(ws.dir.path());
        ws
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    /// Writes a file readable by the controller; replaced by rename, as secret mounts do.
    pub fn write(&self, name: &str, bytes: &[u8]) {
        let tmp = self.path(&format!(".{name}.new"));
        std::fs::write(&tmp, bytes).unwrap();
        self.give_to_nobody(&tmp);
        std::fs::rename(&tmp, self.path(name)).unwrap();
    }

    fn give_to_nobody(&self, path: &Path) {
        if is_root() {
            chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }

    pub fn config(&self, endpoint: &str, poll_interval_secs: u64) -> PathBuf {
        let toml = format!(
            "state_dir = {state:?}\n[remote_config]\nendpoint = {endpoint:?}\ntoken_file = {token:?}\n\
             root_file = {root:?}\npoll_interval_secs = {poll_interval_secs}\nmax_backoff_secs = 30\n\
             plaintext_for_development = {plaintext}\n[loader]\nsocket = \"\"\n",
            // The test services listen on loopback without TLS (tls.rs covers https). No
            // loader: verify-only mode, whose listener acknowledges schema-valid payloads.
            plaintext = endpoint.starts_with("http://"),
            state = self.state_dir(),
            token = self.path("token"),
            root = self.path("root.json"),
        );
        self.write("controller.toml", toml.as_bytes());
        self.path("controller.toml")
    }

    pub fn status(&self) -> Option<Status> {
        Status::read(&self.state_dir()).ok()
    }

    /// Waits (up to `timeout`) for a status satisfying `pred`.
    pub async fn wait_status(&self, timeout: Duration, pred: impl Fn(&Status) -> bool) -> Status {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status().filter(|s| pred(s)) {
                return s;
            }
            assert!(Instant::now() < deadline, "timed out; last status: {:#?}", self.status());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("controller.log")).unwrap_or_default()
    }
}

/// A running controller; stopped on drop.
pub struct Controller {
    process: ChildGuard,
}

impl Controller {
    pub fn start(ws: &Workspace, config: &Path) -> Self {
        Self::start_with_env(ws, config, &[])
    }

    /// Starts with extra `CONTROLLER_*` environment settings.
    pub fn start_with_env(ws: &Workspace, config: &Path, env: &[(&str, &str)]) -> Self {
        let log = std::fs::File::create(ws.path("controller.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_controller"));
        cmd.arg("run").arg("--config").arg(config).stdout(Stdio::null()).stderr(log);
        cmd.env("RUST_LOG", "info").env_remove("CONTROLLER_STATE_DIR").envs(env.iter().copied());
        if is_root() {
            cmd.uid(NOBODY).gid(NOBODY);
        }
        Self { process: ChildGuard::spawn("controller", &mut cmd) }
    }

    pub fn stop(mut self) {
        self.process.kill();
    }

    pub fn is_running(&mut self) -> bool {
        self.process.running()
    }
}
