//! Harness for the remote-config end-to-end tests: the real `config-service` and the real
//! `controller` binaries as child processes, talking gRPC over loopback TCP.
//!
//! Binaries: cargo does not expose another crate's binaries to this crate's tests
//! (`CARGO_BIN_EXE_*` is per-crate), so build them first —
//! `cargo build -p config-service -p controller` — and they are found where
//! [`e2e_tests::process::bin_dir`] says (`E2E_BIN_DIR` overrides the directory).
//!
//! Every process and directory is owned by a guard whose `Drop` kills/removes it, and on a
//! failing test the guards print the processes' logs.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use e2e_tests::process::{ChildGuard as Process, NOBODY, binary as bin, wait_for as wait_until};
/// The product every test publishes under.
/// (A controller without a loader schema-checks it: contents must be CONNTRACK payloads.)
pub const PRODUCT: &str = "CONNTRACK";
/// The token the controller presents, and its name in the service's tokens file.
pub const TOKEN: &str = "tok-primary-0123456789";
pub const TOKEN_NAME: &str = "primary";
pub const SECOND_TOKEN: &str = "tok-second-9876543210";
pub const SECOND_TOKEN_NAME: &str = "second";

/// Path of a script in `tests/python`.
pub fn python_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python").join(name)
}

/// A free loopback port (bound, then released for the service to take).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener.local_addr().expect("local addr").port()
}

/// A temporary directory that `nobody` can traverse (tempfile makes 0700 ones).
pub fn scratch_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("rc-e2e-").tempdir().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
    dir
}

/// Writes `content` atomically (temp + rename) owned by `owner` with `mode`.
pub fn write_file_as(path: &Path, content: &[u8], owner: Option<u32>, mode: u32) {
    let tmp = path.with_extension("tmp-write");
    fs::write(&tmp, content).expect("write temp file");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).expect("chmod");
    if let Some(uid) = owner {
        chown(&tmp, Some(uid), Some(uid)).expect("chown");
    }
    fs::rename(&tmp, path).expect("rename into place");
}

/// Runs `config-service` with `args` and returns its output.
pub fn config_service(args: &[&str]) -> Output {
    Command::new(bin("config-service")).args(args).output().expect("run config-service")
}

/// Runs `config-service` and asserts success.
pub fn config_service_ok(args: &[&str]) -> String {
    let out = config_service(args);
    assert!(out.status.success(), "config-service {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A repository made with `config-service init`.
pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    pub fn init(parent: &Path) -> Self {
        let dir = parent.join("repo");
        config_service_ok(&["init", "--repo", path_str(&dir)]);
        Self { dir }
    }

    /// Publishes `content` as `2/CONNTRACK/<config_id>/config.json`.
    pub fn publish(&self, config_id: &str, content: &str) {
        self.publish_product(PRODUCT, config_id, content);
    }

    /// Publishes `content` as `2/<product>/<config_id>/config.json`.
    pub fn publish_product(&self, product: &str, config_id: &str, content: &str) {
        let file = self.dir.join(format!("input-{product}-{config_id}.json"));
        fs::write(&file, content).expect("write config input");
        config_service_ok(&["publish", "--repo", path_str(&self.dir), product, config_id, path_str(&file)]);
    }

    pub fn remove(&self, config_id: &str) {
        self.remove_product(PRODUCT, config_id);
    }

    pub fn remove_product(&self, product: &str, config_id: &str) {
        config_service_ok(&["remove", "--repo", path_str(&self.dir), product, config_id]);
    }

    pub fn rotate_root(&self) {
        config_service_ok(&["rotate-root", "--repo", path_str(&self.dir)]);
    }

    /// An empty layout (metadata/, targets/) to be filled by `install`.
    pub fn empty(parent: &Path) -> Self {
        let dir = parent.join("repo");
        fs::create_dir_all(dir.join("metadata")).expect("create metadata dir");
        fs::create_dir_all(dir.join("targets")).expect("create targets dir");
        Self { dir }
    }

    pub fn root_file(&self, version: u64) -> PathBuf {
        self.dir.join("metadata").join(format!("{version}.root.json"))
    }

    /// The signed targets document's `signed` part.
    pub fn targets(&self) -> Value {
        let raw = fs::read(self.dir.join("metadata/targets.json")).expect("read targets.json");
        serde_json::from_slice::<Value>(&raw).expect("targets.json is JSON")["signed"].clone()
    }

    /// Replaces the served metadata and files with those of another repository layout
    /// (e.g. a python-tuf-made case): files first, then metadata, each by rename, so the
    /// service never sees targets naming a file that is not there yet.
    pub fn install(&self, from: &Path) {
        copy_tree(&from.join("targets"), &self.dir.join("targets"));
        let meta = self.dir.join("metadata");
        for entry in fs::read_dir(&meta).expect("read metadata dir") {
            let path = entry.expect("entry").path();
            let name = path.file_name().expect("name").to_owned();
            if !from.join("metadata").join(&name).exists() {
                fs::remove_file(&path).expect("remove stale metadata");
            }
        }
        for entry in fs::read_dir(from.join("metadata")).expect("read source metadata") {
            let src = entry.expect("entry").path();
            let name = src.file_name().expect("name").to_string_lossy().into_owned();
            let tmp = meta.join(format!(".{name}.installing"));
            fs::copy(&src, &tmp).expect("copy metadata");
            fs::rename(&tmp, meta.join(&name)).expect("rename metadata");
        }
    }
}

/// Copies a directory tree, each file by temp + rename.
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create dir");
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            let tmp = target.with_extension("installing");
            fs::copy(entry.path(), &tmp).expect("copy file");
            fs::rename(&tmp, &target).expect("rename file");
        }
    }
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// A running `config-service serve` on a loopback port.
pub struct Service {
    pub process: Process,
    pub port: u16,
    pub request_log: PathBuf,
    pub tokens_file: PathBuf,
}

impl Service {
    /// Writes a tokens file with both test tokens and starts serving `repo`.
    pub fn start(work: &Path, repo: &Repo, extra: &[&str]) -> Self {
        let tokens_file = work.join("service-tokens");
        write_file_as(
            &tokens_file,
            format!("{TOKEN_NAME}:{TOKEN}\n{SECOND_TOKEN_NAME}:{SECOND_TOKEN}\n").as_bytes(),
            None,
            0o600,
        );
        Self::start_on(work, repo, free_port(), &tokens_file, extra)
    }

    /// Starts serving on a given port (e.g. to restart after a simulated outage).
    pub fn start_on(work: &Path, repo: &Repo, port: u16, tokens_file: &Path, extra: &[&str]) -> Self {
        let request_log = work.join("requests.jsonl");
        let listen = format!("127.0.0.1:{port}");
        let mut command = Command::new(bin("config-service"));
        command
            .args(["serve", "--repo", path_str(&repo.dir), "--listen", &listen])
            .args(["--tokens-file", path_str(tokens_file), "--request-log", path_str(&request_log)])
            .args(extra)
            .env("RUST_LOG", "info");
        let log = work.join(format!("service-{port}-{}.log", unique_suffix()));
        let mut process = Process::spawn_logged("config-service", &mut command, log);
        wait_until(Duration::from_secs(15), "config-service to listen", || {
            assert!(process.running(), "config-service exited: {}", process.log_text());
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Self { process, port, request_log, tokens_file: tokens_file.to_owned() }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request logged so far, oldest first.
    pub fn requests(&self) -> Vec<Value> {
        read_json_lines(&self.request_log)
    }
}

fn unique_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// Parses a JSON-lines file; a missing file is empty; a torn last line is skipped.
pub fn read_json_lines(path: &Path) -> Vec<Value> {
    let Ok(file) = fs::File::open(path) else { return Vec::new() };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str(&line).ok())
        .collect()
}

/// A running `controller run`, as uid 65534, with its own state dir and token file.
pub struct Controller {
    pub process: Process,
    pub state_dir: PathBuf,
    pub token_file: PathBuf,
    pub config_file: PathBuf,
}

impl Controller {
    /// Prepares the state dir, token file and config, and starts the controller.
    pub fn start(work: &Path, endpoint: &str, root_file: &Path) -> Self {
        Self::start_with(work, endpoint, root_file, "")
    }

    /// Like `start`, with extra lines for the `[remote_config]` table (e.g. `ca_file`).
    pub fn start_with(work: &Path, endpoint: &str, root_file: &Path, extra_remote_config: &str) -> Self {
        let state_dir = work.join("controller-state");
        fs::create_dir_all(&state_dir).expect("create state dir");
        chown(&state_dir, Some(NOBODY), Some(NOBODY)).expect("chown state dir");
        fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o700)).expect("chmod state dir");
        let pinned = work.join("pinned-root.json");
        fs::copy(root_file, &pinned).expect("copy pinned root");
        fs::set_permissions(&pinned, fs::Permissions::from_mode(0o644)).expect("chmod root");
        let token_file = work.join("controller-token");
        write_file_as(&token_file, TOKEN.as_bytes(), Some(NOBODY), 0o600);
        let config_file = work.join("controller.toml");
        let config = format!(
            "state_dir = {state:?}\n[remote_config]\nendpoint = {endpoint:?}\ntoken_file = {token:?}\n\
             root_file = {root:?}\npoll_interval_secs = 1\nmax_backoff_secs = 16\n\
             plaintext_for_development = {plaintext}\n{extra_remote_config}\n{verify_only}",
            // The reference service runs on loopback without TLS unless a test gives it a
            // certificate (then the endpoint is https:// and the switch stays off).
            plaintext = endpoint.starts_with("http://"),
            // Without a `[loader]` table of the test's own, the controller runs verify-only
            // (the default socket path belongs to a real installation, not to a test).
            verify_only =
                if extra_remote_config.contains("[loader]") { "" } else { "[loader]\nsocket = \"\"\n" },
            state = path_str(&state_dir),
            token = path_str(&token_file),
            root = path_str(&pinned),
        );
        fs::write(&config_file, config).expect("write controller config");
        fs::set_permissions(&config_file, fs::Permissions::from_mode(0o644)).expect("chmod config");
        let process = spawn_controller(work, &config_file);
        Self { process, state_dir, token_file, config_file }
    }

    /// (Re)starts the process with the same state dir, config and token file.
    pub fn restart(&mut self, work: &Path) {
        self.process.kill();
        self.process = spawn_controller(work, &self.config_file);
    }

    /// Replaces the token file atomically (as an operator's secret rotation would).
    pub fn rotate_token(&self, token: &str) {
        write_file_as(&self.token_file, token.as_bytes(), Some(NOBODY), 0o600);
    }

    /// The current `status.json`, if written and complete.
    pub fn status(&self) -> Option<Value> {
        let raw = fs::read(self.state_dir.join("status.json")).ok()?;
        serde_json::from_slice(&raw).ok()
    }

    /// Waits until `status.json` satisfies `pred`; returns it.
    pub fn wait_status(&mut self, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut last = None;
        let start = Instant::now();
        loop {
            assert!(self.process.running(), "controller exited while waiting for {what}");
            if let Some(status) = self.status() {
                if pred(&status) {
                    return status;
                }
                last = Some(status);
            }
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}; last status: {last:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `controller run` with `config_file`, as `nobody`, logging to a new file in `work`.
fn spawn_controller(work: &Path, config_file: &Path) -> Process {
    let mut command = Command::new(bin("controller"));
    command.args(["run", "--config", path_str(config_file)]).env("RUST_LOG", "info").uid(NOBODY).gid(NOBODY);
    let log = work.join(format!("controller-{}.log", unique_suffix()));
    Process::spawn_logged("controller", &mut command, log)
}

/// The state a request reported for `config_id`, if any.
pub fn reported_state<'r>(request: &'r Value, config_id: &str) -> Option<&'r Value> {
    request["config_states"].as_array()?.iter().find(|c| c["id"] == config_id)
}

/// The config entry for `config_id` in a status, if the listeners hold it.
pub fn config_in<'s>(status: &'s Value, config_id: &str) -> Option<&'s Value> {
    status["configs"].as_array()?.iter().find(|c| c["id"] == config_id)
}

/// The `2/CONNTRACK/<id>/config.json` config held at `version` and acknowledged.
pub fn holds(status: &Value, config_id: &str, version: u64) -> bool {
    config_in(status, config_id).is_some_and(|c| c["version"] == version && c["apply_state"] == 2)
}

/// Runs `make_rejection_sets.py` into `work/pysets` and returns that directory.
pub fn python_sets(work: &Path) -> PathBuf {
    let out = work.join("pysets");
    let status = Command::new("python3")
        .arg(python_script("make_rejection_sets.py"))
        .arg(&out)
        .status()
        .expect("run python3 (install: pip install tuf==6.0.0 'securesystemslib[crypto]')");
    assert!(
        status.success(),
        "make_rejection_sets.py failed; is python-tuf installed? \
         python3 -m pip install tuf==6.0.0 'securesystemslib[crypto]==1.6.0'"
    );
    out
}
