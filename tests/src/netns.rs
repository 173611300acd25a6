//! [`Netns`]: a named network namespace (`ip netns add`) deleted on drop.
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

use crate::HarnessError;

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A throwaway network namespace with `lo` up. The name is unique per process and call
/// (`e2e-<tag>-<pid>-<n>`), so tests can run in parallel. Deleted when dropped; sockets
/// still open inside it keep the kernel object alive until they close, as usual.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and brings its loopback up. `tag` names the test in the
    /// namespace name, which helps when one is left behind by a killed test run.
    pub fn new(tag: &str) -> Result<Self, HarnessError> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("e2e-{tag}-{}-{id}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the namespace's bind mount (what `setns` opens).
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// The namespace's inode number: the `netns` the kernel (and the loader) report.
    pub fn inode(&self) -> Result<u32, HarnessError> {
        let meta = std::fs::metadata(self.path()).map_err(|source| self.io("stat", source))?;
        Ok(meta.ino() as u32)
    }

    /// `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<Output, HarnessError> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Adds `cidr` to `lo` (IPv6 without duplicate address detection, so it is usable at once).
    pub fn add_address(&self, cidr: &str) -> Result<(), HarnessError> {
        let mut args = vec!["addr", "add", cidr, "dev", "lo"];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(&args).map(drop)
    }

    /// Loads an nft ruleset (`nft -f -`) inside the namespace.
    pub fn apply_nft(&self, ruleset: &str) -> Result<(), HarnessError> {
        let mut cmd = self.command("nft");
        cmd.args(["-f", "-"]);
        run_with_stdin(&mut cmd, ruleset)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`): for
    /// processes such as the loader binary or `conntrack`.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `f` on a new thread that first enters the namespace: sockets it creates
    /// belong to the namespace (and stay there when handed back to the caller).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, HarnessError> {
        let handle = self.spawn(f)?;
        handle
            .join()
            .map_err(|_| HarnessError::Enter { netns: self.name.clone(), reason: "thread panicked".into() })
    }

    /// Like [`Netns::run`], without waiting: the thread lives in the namespace until `f`
    /// returns. The caller joins it.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<T>, HarnessError> {
        let file = std::fs::File::open(self.path()).map_err(|source| self.io("open", source))?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            // setns affects only this thread: the test's other threads stay where they are.
            let entered = setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string());
            let ok = entered.is_ok();
            let _ = ready_tx.send(entered);
            assert!(ok, "setns failed");
            f()
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(reason)) => Err(HarnessError::Enter { netns: self.name.clone(), reason }),
            Err(_) => Err(HarnessError::Enter { netns: self.name.clone(), reason: "thread died".into() }),
        }
    }

    fn io(&self, what: &str, source: std::io::Error) -> HarnessError {
        HarnessError::Io { what: what.into(), netns: self.name.clone(), source }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("warning: cannot delete network namespace {}: {e}", self.name);
        }
    }
}

/// Runs a command to completion; an error names it and carries its stderr.
pub fn run(cmd: &mut Command) -> Result<Output, HarnessError> {
    let output = cmd.output().map_err(|source| HarnessError::Spawn { command: describe(cmd), source })?;
    check(cmd, output)
}

fn run_with_stdin(cmd: &mut Command, input: &str) -> Result<(), HarnessError> {
    use std::io::Write;
    use std::process::Stdio;
    let command = describe(cmd);
    let spawn_error = |source| HarnessError::Spawn { command: command.clone(), source };
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(spawn_error)?;
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    check(cmd, output).map(drop)
}

fn check(cmd: &Command, output: Output) -> Result<Output, HarnessError> {
    if output.status.success() {
        return Ok(output);
    }
    Err(HarnessError::Command {
        command: describe(cmd),
        status: output.status.to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })
}

fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}
