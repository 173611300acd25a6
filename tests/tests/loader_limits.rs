//! The loader's socket under hostile and careless peers: held and idle connections, too
//! many connections, SIGTERM with clients attached, refused peers that keep calling, bad
//! bytes from a stock grpcio client, callers allowed by a supplementary group. Real binary,
//! real unix socket, real peers (raw sockets, python's grpcio, loaderctl as other uids).
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e_tests::loader::{LoaderOptions, LoaderProcess, loaderctl};
use e2e_tests::procfs;
use serde_json::Value;

const NOBODY: (u32, u32) = (65534, 65534);
const PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// An HTTP/2 client that says hello and then nothing.
fn silent_client(socket: &Path) -> UnixStream {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream.write_all(PREFACE_AND_SETTINGS).expect("preface");
    stream
}

/// A silent client the loader has *accepted*: its first answer (SETTINGS) arrived. The
/// readiness check's own connection (`loaderctl status`) may still hold a slot for a
/// moment after that process exits; a client refused meanwhile is closed at once (a broken
/// pipe or an end of stream here), so it is tried again, for up to 5 s.
fn accepted_silent_client(socket: &Path) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut stream = UnixStream::connect(socket).expect("connect");
        let answered = stream.write_all(PREFACE_AND_SETTINGS).is_ok()
            && stream.set_read_timeout(Some(Duration::from_secs(2))).is_ok()
            && stream.read_exact(&mut [0u8; 1]).is_ok();
        if answered {
            return stream;
        }
        assert!(Instant::now() < deadline, "the loader accepted no connection for 5 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long until the loader closes `stream` (reading and discarding what it sends), or
/// `None` if it is still open after `limit`.
fn closed_within(stream: &mut UnixStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        stream
            .set_read_timeout(Some(limit.saturating_sub(start.elapsed()).max(Duration::from_millis(1))))
            .ok()?;
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// Runs `tests/python/hostile_calls.py` (a stock grpcio channel) and parses its JSON line.
fn hostile_calls(socket: &Path, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/hostile_calls.py");
    let mut command = Command::new("python3");
    command.arg(script).arg(socket).args(args);
    let out = command.output().expect("python3");
    assert!(out.status.success(), "hostile_calls.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

/// CPU time (user + system) the process has used so far.
fn cpu_time(pid: u32) -> Duration {
    Duration::from_nanos(procfs::cpu_ns(pid).expect("/proc/<pid>/stat"))
}

fn open_socket_to_all(loader: &LoaderProcess) {
    let dir = loader.socket.parent().expect("socket dir");
    for (path, mode) in [(loader.dir.path(), 0o755), (dir, 0o755), (loader.socket.as_path(), 0o666)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
}

#[test]
fn sigterm_with_clients_attached_exits_within_the_grace_period() {
    let mut loader = LoaderProcess::start(LoaderOptions {
        extra_toml: "[api.limits]\nshutdown_grace_secs = 1\n",
        ..Default::default()
    });
    // A bare connect that never speaks, and two silent HTTP/2 clients.
    let _bare = UnixStream::connect(&loader.socket).expect("connect");
    let mut held = [silent_client(&loader.socket), silent_client(&loader.socket)];
    // The accept loop must take them first: a SIGTERM before it did finds no connection to
    // wait for (the loader then exits at once, without the grace period this test is about).
    // Its SETTINGS frame on each silent client says it did (accepts are in order, so the
    // bare connection made before them was taken too).
    for client in &mut held {
        client.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut first = [0u8; 1];
        client.read_exact(&mut first).expect("the loader answers the HTTP/2 preface");
    }
    let start = Instant::now();
    assert!(
        loader.process.terminate(Duration::from_secs(10)),
        "the loader outlived its clients' patience:\n{}",
        loader.log_text()
    );
    let took = start.elapsed();
    assert!(took < Duration::from_secs(4), "exit took {took:?} with a 1 s grace period");
    assert!(!loader.socket.exists(), "the socket is removed on the way out");
    assert!(loader.log_text().contains("shutdown grace period"), "{}", loader.log_text());
}

#[test]
fn connections_past_the_limit_are_closed_at_once_and_the_loader_stays_idle_and_serving() {
    let loader = LoaderProcess::start(LoaderOptions {
        extra_toml: "[api.limits]\nmax_connections = 8\n",
        ..Default::default()
    });
    let mut held: Vec<UnixStream> = (0..8).map(|_| accepted_silent_client(&loader.socket)).collect();
    let pid = loader.process.pid();
    let before = cpu_time(pid);
    for _ in 0..50 {
        // The loader may close it before a byte is written: connect only.
        let mut extra = UnixStream::connect(&loader.socket).expect("connect");
        let closed = closed_within(&mut extra, Duration::from_secs(2));
        assert!(closed.is_some(), "a connection past the limit must be closed at once");
    }
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_time(pid) - before;
    assert!(used < Duration::from_millis(500), "refusing 50 connections took {used:?} of CPU: a busy loop?");
    assert!(loader.log_text().contains("max_connections"), "refusals are logged:\n{}", loader.log_text());
    // A slot freed is a slot served.
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(200));
    let out = loader.ctl(&["health"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let loader = LoaderProcess::start(LoaderOptions {
        extra_toml: "[api.limits]\nidle_timeout_secs = 2\n",
        ..Default::default()
    });
    let mut bare = UnixStream::connect(&loader.socket).expect("connect");
    let closed = closed_within(&mut bare, Duration::from_secs(8)).expect("closed by the idle timeout");
    assert!(closed >= Duration::from_millis(1500), "closed after {closed:?}, before the timeout");
    // A client that keeps calling is not idle: loaderctl is served throughout.
    assert!(loader.ctl(&["status"]).status.success());
}

/// Connects to `socket` as `uid`/`gid`: the credentials are changed on a thread of its
/// own with the raw syscalls (per thread on Linux, unlike libc's process-wide wrappers),
/// so SO_PEERCRED names that uid and the test process keeps root.
fn connect_as(socket: &Path, (uid, gid): (u32, u32)) -> UnixStream {
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        // SAFETY: setresgid/setresuid on the calling thread only; no memory is involved.
        let rc = unsafe {
            libc::syscall(libc::SYS_setresgid, gid, gid, gid)
                | libc::syscall(libc::SYS_setresuid, uid, uid, uid)
        };
        assert_eq!(rc, 0, "dropping the thread's credentials");
        UnixStream::connect(&socket).expect("connect as another uid")
    })
    .join()
    .expect("connecting thread")
}

#[test]
fn a_refused_peer_is_disconnected_and_its_calls_are_logged_quietly() {
    let loader = LoaderProcess::start(LoaderOptions::default());
    open_socket_to_all(&loader);
    let mut held = connect_as(&loader.socket, NOBODY);
    held.write_all(PREFACE_AND_SETTINGS).expect("preface");
    let closed = closed_within(&mut held, Duration::from_secs(10));
    assert!(
        closed.is_some_and(|t| t < Duration::from_secs(5)),
        "a refused peer kept its connection: {closed:?}"
    );
    let refusals = || loader.log_text().lines().filter(|l| l.contains("refused a call")).count();
    let before = refusals();
    let calls = 300;
    for _ in 0..calls {
        assert!(!loaderctl(&loader.socket, &["health"], Some(NOBODY)).status.success());
    }
    let lines = refusals() - before;
    assert!(lines <= 15, "{calls} refused calls wrote {lines} log lines");
    assert!(loader.log_text().contains("suppressed"), "the held-back lines are counted");
}

#[test]
fn bad_requests_from_a_stock_grpcio_client_get_standard_codes_and_short_messages() {
    let loader = LoaderProcess::start(LoaderOptions::default());
    let garbage = hostile_calls(&loader.socket, &["garbage"]);
    assert_eq!(garbage["code"], "INVALID_ARGUMENT", "{garbage}");
    let oversized = hostile_calls(&loader.socket, &["oversized"]);
    assert_eq!(oversized["code"], "RESOURCE_EXHAUSTED", "{oversized}");
    let long = hostile_calls(&loader.socket, &["long-address"]);
    assert_eq!(long["code"], "INVALID_ARGUMENT", "{long}");
    let len = long["message_len"].as_u64().expect("length");
    assert!(len < 400, "the error echoed {len} characters of the request");
    // Still serving.
    assert!(loader.ctl(&["health"]).status.success());
}

#[test]
fn a_caller_allowed_by_a_supplementary_group_is_served() {
    let loader =
        LoaderProcess::start(LoaderOptions { api_toml: "allowed_gids = [4242]", ..Default::default() });
    open_socket_to_all(&loader);
    let run_as = |groups: &str| {
        Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--groups", groups, "--"])
            .arg(e2e_tests::process::binary("loaderctl"))
            .arg("--socket")
            .arg(&loader.socket)
            .arg("health")
            .output()
            .expect("setpriv")
    };
    let allowed = run_as("100,4242");
    assert!(allowed.status.success(), "{}", String::from_utf8_lossy(&allowed.stderr));
    let refused = run_as("100");
    assert!(!refused.status.success(), "without group 4242 the caller is refused");
}

/// At the file-descriptor limit accept() fails with EMFILE while connections wait in the
/// backlog: the loader pauses instead of retrying in a loop, says so, and serves again
/// once descriptors are free.
#[test]
fn at_the_file_descriptor_limit_the_loader_pauses_instead_of_spinning() {
    let loader = LoaderProcess::start(LoaderOptions {
        extra_toml: "[api.limits]\nmax_connections = 10000\n",
        ..Default::default()
    });
    let pid = loader.process.pid();
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fds").count();
    let limit = (open_fds + 20).to_string();
    let set = Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nofile={limit}:{limit}"))
        .status();
    assert!(set.expect("prlimit").success());
    let held: Vec<UnixStream> =
        (0..60).map(|_| UnixStream::connect(&loader.socket).expect("connect")).collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_time(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_time(pid) - before;
    assert!(used < Duration::from_millis(400), "{used:?} of CPU in 2 s at the descriptor limit: a busy loop");
    assert!(loader.log_text().contains("accepting a connection failed"), "{}", loader.log_text());
    drop(held);
    let served =
        e2e_tests::process::wait_until(Duration::from_secs(10), || loader.ctl(&["health"]).status.success());
    assert!(served, "the loader must serve again once descriptors are free:\n{}", loader.log_text());
}

#[test]
fn map_walks_run_on_threads_of_their_own_never_above_normal_priority() {
    // Started with a real-time policy (as a benchmark under `chrt -f 1` starts it), the
    // loader's threads inherit it: the walkers must leave it, the async workers keep it.
    set_own_policy(libc::SCHED_FIFO, 1);
    let loader = LoaderProcess::start(LoaderOptions {
        extra_toml: "[api.limits]\nmax_concurrent_map_walks = 3\n",
        ..Default::default()
    });
    set_own_policy(libc::SCHED_OTHER, 0);
    let threads = procfs::thread_policies(loader.process.pid()).expect("the loader's threads");
    let walkers: Vec<_> = threads.iter().filter(|t| t.name.starts_with("map-walk-")).collect();
    assert_eq!(walkers.len(), 3, "one walker thread per turn (max_concurrent_map_walks = 3): {threads:?}");
    assert!(
        walkers.iter().all(|t| t.policy == libc::SCHED_OTHER && t.nice == 0),
        "walker threads must run at SCHED_OTHER ({}) and the loader's nice (0), not lower (listings starve): {walkers:?}",
        libc::SCHED_OTHER
    );
    let workers: Vec<_> = threads.iter().filter(|t| t.name == "tokio-rt-worker").collect();
    assert!(!workers.is_empty(), "no async workers found: {threads:?}");
    assert!(
        workers.iter().all(|t| t.nice == 0),
        "the async workers must keep the loader's own priority: {workers:?}"
    );
    // The listing still completes: the walkers run whenever the CPU is free.
    let listed = loader.ctl(&["conntrack", "list"]);
    assert!(listed.status.success(), "{}\n{}", String::from_utf8_lossy(&listed.stderr), loader.log_text());
}

/// Sets this test thread's scheduling policy (children it starts inherit it).
fn set_own_policy(policy: i32, priority: i32) {
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: sched_setscheduler(2) on the calling thread with a valid parameter (root).
    let set = unsafe { libc::sched_setscheduler(0, policy, &param) };
    assert_eq!(set, 0, "sched_setscheduler: {}", std::io::Error::last_os_error());
}
