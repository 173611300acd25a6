//! Finding the project's binaries and running them as child processes that are always
//! stopped, even when a test fails.
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The unprivileged uid/gid production runs the controller as (`nobody`).
pub const NOBODY: u32 = 65534;

/// Whether the tests run as root (then children can be started as [`NOBODY`]).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// The directory of the workspace's built binaries (`cargo build --bins` must have run:
/// the test command does it): `E2E_BIN_DIR` if set, else `$CARGO_TARGET_DIR/<profile>`
/// (`<workspace>/target` without it). Tests run from the debug profile, benchmarks
/// built with `--release` from the release one; `E2E_PROFILE` (e.g. `release`) names
/// another.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("E2E_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let built = if cfg!(debug_assertions) { "debug" } else { "release" };
    target.join(std::env::var("E2E_PROFILE").unwrap_or_else(|_| built.into()))
}

/// Path of one of the workspace's binaries, with the command to build it when missing.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build {}--workspace --bins` before the tests (or set E2E_BIN_DIR)",
        path.display(),
        if cfg!(debug_assertions) { "" } else { "--release " }
    );
    path
}

/// A child process killed (SIGTERM, then SIGKILL after 5 s) when dropped. Started with
/// [`ChildGuard::spawn_logged`], its output goes to a log file whose last lines are
/// printed when a failing test drops it.
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
    pub log: Option<PathBuf>,
}

impl ChildGuard {
    pub fn spawn(name: &str, command: &mut Command) -> Self {
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self { child, name: name.to_string(), log: None }
    }

    /// Starts `command` with stdout and stderr in `log` (and no stdin).
    pub fn spawn_logged(name: &str, command: &mut Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = out.try_clone().unwrap_or_else(|e| panic!("cloning the log handle: {e}"));
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let mut guard = Self::spawn(name, command);
        guard.log = Some(log);
        guard
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; returns whether it exited.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        // SAFETY: kill(2) on our own child's pid, no memory involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Kills (SIGKILL) and reaps the process now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What it wrote so far (empty without a log file).
    pub fn log_text(&self) -> String {
        self.log.as_ref().and_then(|log| std::fs::read_to_string(log).ok()).unwrap_or_default()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.running() && !self.terminate(Duration::from_secs(5)) {
            self.kill();
        }
        if let Some(log) = self.log.as_ref().filter(|_| std::thread::panicking()) {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("---- last lines of {} log {} ----", self.name, log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Polls `probe` every 20 ms until it returns `Some`, panicking with `what` after `timeout`
/// (times [`time_scale`]).
pub fn wait_for<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let timeout = timeout * time_scale();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many times slower than this host the machine running the tests is:
/// `E2E_TIME_SCALE` (the qemu matrix's guests, emulated by TCG, set it), else 1. Only
/// [`wait_for`]'s deadlines scale (a wait that passes costs nothing more).
pub fn time_scale() -> u32 {
    std::env::var("E2E_TIME_SCALE").ok().and_then(|s| s.parse().ok()).filter(|&n| n >= 1).unwrap_or(1)
}

/// Polls `ready` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
